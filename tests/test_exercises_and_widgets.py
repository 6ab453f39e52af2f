from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_lab.exercises import check_q_sample, check_snr_crossing, check_trailing_timesteps
from diffusion_lab.plots import image_grid


def test_q_sample_check_accepts_right_and_rejects_wrong(capsys):
    def right(x0, t, noise, ab):
        a = ab[t].reshape(-1, *[1] * (x0.ndim - 1))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def wrong_sqrt(x0, t, noise, ab):
        a = ab[t].reshape(-1, *[1] * (x0.ndim - 1))
        return a * x0 + (1 - a) * noise

    def one_t_for_all(x0, t, noise, ab):
        a = ab[t[0]]
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def crashes(x0, t, noise, ab):
        raise NotImplementedError("write me")

    assert check_q_sample(right)
    assert not check_q_sample(wrong_sqrt)
    assert not check_q_sample(one_t_for_all)
    assert not check_q_sample(crashes)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("✅") and all(line.startswith("❌") for line in out[1:])


def test_snr_and_trailing_checks():
    from diffusion_lab import snr
    from diffusion_lab.schedules import inference_timesteps
    from diffusion_lab.widgets import schedule_table

    cosine_snr = snr(schedule_table()["squaredcos_cap_v2"])
    first_below = next(t for t in range(1000) if cosine_snr[t] < 1)
    assert check_snr_crossing(first_below)
    assert not check_snr_crossing(500)
    assert not check_snr_crossing(None)
    assert not check_trailing_timesteps(lambda n, T: None)
    assert not check_q_sample(lambda x0, t, noise, ab: None)
    assert check_trailing_timesteps(lambda n, T: inference_timesteps(n, T, "trailing"))
    assert not check_trailing_timesteps(lambda n, T: inference_timesteps(n, T, "leading"))
    assert not check_trailing_timesteps(lambda n, T: np.arange(T, 0, -T / n).astype(int))  # forgot the −1


def test_image_grid_shapes():
    x = torch.linspace(-1, 1, 5 * 28 * 28).reshape(5, 1, 28, 28)
    g = image_grid(x, nrow=4)
    assert g.shape == (2 * 29 - 1, 4 * 29 - 1) and g.min() >= 0 and g.max() <= 1
    assert image_grid(torch.zeros(2, 3, 4, 4)).shape == (4, 9, 3)
    with pytest.raises(ValueError, match="expected images of shape"):
        image_grid(torch.zeros(2, 4, 4))


def test_forward_process_explorer_redraws_when_controls_move():
    pytest.importorskip("ipywidgets")
    from diffusion_lab.widgets import ForwardProcessExplorer

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


def test_checks_accept_unusual_right_answers_and_never_crash():
    def float64(x0, t, noise, ab):
        a = ab.double()[t].reshape(-1, *[1] * (x0.ndim - 1))
        return a.sqrt() * x0.double() + (1 - a).sqrt() * noise.double()

    def in_place(x0, t, noise, ab):
        a = ab[t].reshape(-1, *[1] * (x0.ndim - 1))
        return x0.mul_(a.sqrt()).add_((1 - a).sqrt() * noise)

    def numpy_version(x0, t, noise, ab):
        a = ab.numpy()[t.numpy()].reshape(-1, *[1] * (x0.ndim - 1))
        return np.sqrt(a) * x0.numpy() + np.sqrt(1 - a) * noise.numpy()

    assert check_q_sample(float64) and check_q_sample(in_place) and check_q_sample(numpy_version)
    assert check_snr_crossing(torch.tensor(496)) and check_snr_crossing(np.int64(496))
    assert not check_snr_crossing(torch.tensor([496, 497]))  # forgot the [0]: a hint, not a crash
    assert check_trailing_timesteps(lambda n, T: [round(T - k * T / n) - 1 for k in range(n)])
    assert not check_trailing_timesteps(lambda n, T: [int(T - k * T / n + 0.5) - 1 for k in range(n)])  # half up


def test_latent_exercise_checks_accept_right_and_reject_typical_mistakes(capsys):
    from diffusion_lab.exercises import check_gaussian_kl, check_reparameterize, check_scaling_factor

    assert check_reparameterize(lambda m, lv, e: m + torch.exp(0.5 * lv) * e)
    assert check_reparameterize(lambda m, lv, e: (m.double() + (0.5 * lv.double()).exp() * e.double()).numpy())
    assert not check_reparameterize(lambda m, lv, e: m + torch.exp(lv) * e)
    assert "exp(logvar) is the variance" in capsys.readouterr().out
    assert not check_reparameterize(lambda m, lv, e: None)
    assert not check_reparameterize(lambda m, lv, e: 1 / 0)
    assert "ZeroDivisionError" in capsys.readouterr().out

    assert check_gaussian_kl(lambda m, lv: 0.5 * (m**2 + lv.exp() - 1 - lv).sum(dim=(1, 2, 3)))
    assert not check_gaussian_kl(lambda m, lv: 0.5 * (m**2 + lv.exp() - 1 - lv).sum())
    assert "one KL per sample" in capsys.readouterr().out
    assert not check_gaussian_kl(lambda m, lv: 0.5 * (m**2 + lv.exp() - 1 - lv).mean(dim=(1, 2, 3)))

    assert check_scaling_factor(lambda z: 1 / z.std().item())
    assert check_scaling_factor(lambda z: torch.tensor(1.0) / z.std())
    assert not check_scaling_factor(lambda z: z.std().item())
    assert "inverse" in capsys.readouterr().out
    assert not check_scaling_factor(lambda z: 1 / z.std(dim=0))
    assert not check_scaling_factor(lambda z: None)
