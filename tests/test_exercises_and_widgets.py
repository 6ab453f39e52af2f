"""Notebook 01's plotting helper and its ForwardProcessExplorer widget (its exercise checks: test_exercises_basics)."""

from __future__ import annotations

import ipywidgets  # noqa: F401  (a pinned requirement: a broken install fails here, it does not skip)
import pytest
import torch

from diffusion_lab.course.plots import image_grid


def test_image_grid_places_each_image_in_its_tile():
    x = torch.linspace(-1, 1, 5 * 28 * 28).reshape(5, 1, 28, 28)
    g = image_grid(x, nrow=4)
    assert g.shape == (2 * 29 - 1, 4 * 29 - 1)  # 2 rows of 4 tiles, 1 px of padding between them
    for i in range(5):  # image i sits at row i // 4, column i % 4, mapped from [−1, 1] to [0, 1]
        r, c = divmod(i, 4)
        torch.testing.assert_close(torch.from_numpy(g[29 * r : 29 * r + 28, 29 * c : 29 * c + 28]), (x[i, 0] + 1) / 2)
    assert (g[28, :] == 1).all() and (g[:, 28] == 1).all()  # the padding is white
    assert (g[29:, 29 * 1 :] == 1).all()  # the three empty tiles of the second row too
    rgb = torch.stack([torch.full((4, 4), v) for v in (-1.0, 0.0, 1.0)])[None].repeat(2, 1, 1, 1)  # (2, 3, 4, 4)
    out = image_grid(rgb)
    assert out.shape == (4, 9, 3)  # channels last for colour
    assert out[0, 0].tolist() == [0.0, 0.5, 1.0] and out[0, 4].tolist() == [1.0, 1.0, 1.0]
    assert image_grid(torch.full((1, 1, 2, 2), 7.0)).tolist() == [[1.0, 1.0], [1.0, 1.0]]  # clamped to [−1, 1]
    with pytest.raises(ValueError, match="expected images of shape"):
        image_grid(torch.zeros(2, 4, 4))


def test_forward_process_explorer_redraws_when_controls_move():
    from diffusion_lab.course.widgets import ForwardProcessExplorer

    ex = ForwardProcessExplorer(torch.zeros(4, 1, 28, 28), t=10)
    first = ex.image.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    ex.t.value = 900
    after_t = ex.image.value
    assert after_t != first
    ex.schedule.value = "squaredcos_cap_v2"
    assert ex.image.value != after_t
    with pytest.raises(ValueError, match="schedule must be one of"):
        ForwardProcessExplorer(torch.zeros(4, 1, 28, 28), schedule="cosine")
    with pytest.raises(ValueError, match="x0 must be a batch of images"):
        ForwardProcessExplorer(torch.zeros(28, 28))
