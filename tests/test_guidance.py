"""Classifier-free guidance pieces: rescale equals diffusers', condition dropout, the w = 0 / w = 1 identities."""

from __future__ import annotations

import pytest
import torch

from diffusion_lab.maths.guidance import cfg_combine, drop_condition, rescale_noise_cfg


@pytest.mark.parametrize("phi", [0.0, 0.3, 0.7, 1.0])
def test_rescale_noise_cfg_equals_diffusers(phi):
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg as theirs

    g = torch.Generator().manual_seed(0)
    text, uncond = torch.randn(3, 4, 7, 7, generator=g), torch.randn(3, 4, 7, 7, generator=g)
    guided = cfg_combine(text, uncond, 7.5)
    torch.testing.assert_close(rescale_noise_cfg(guided, text, phi), theirs(guided, text, guidance_rescale=phi))


def test_rescale_restores_the_conditional_std_at_phi_one():
    g = torch.Generator().manual_seed(1)
    text, uncond = torch.randn(2, 4, 7, 7, generator=g), torch.randn(2, 4, 7, 7, generator=g)
    out = rescale_noise_cfg(cfg_combine(text, uncond, 9.0), text, 1.0)
    torch.testing.assert_close(out.std(dim=(1, 2, 3)), text.std(dim=(1, 2, 3)))
    with pytest.raises(ValueError, match=r"guidance_rescale must be in \[0, 1\]"):
        rescale_noise_cfg(out, text, -0.1)


def test_cfg_scale_one_is_conditional_and_zero_unconditional():
    cond, uncond = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(cfg_combine(cond, uncond, 1.0), cond)
    torch.testing.assert_close(cfg_combine(cond, uncond, 0.0), uncond)


def test_drop_condition_replaces_rows_at_the_given_rate():
    ids = torch.arange(1, 9).repeat(4000, 1)  # (4000, 8) token ids
    null = torch.tensor([2, 3, 0, 0, 0, 0, 0, 0])  # <bos> <eos> padding: the empty prompt
    out = drop_condition(ids, null, 0.1, torch.Generator().manual_seed(0))
    dropped = (out == null).all(dim=1)
    kept = (out == ids).all(dim=1)
    assert (dropped | kept).all()
    assert 0.08 < dropped.float().mean() < 0.12
    assert (ids == torch.arange(1, 9)).all()  # the input is not changed
    assert (drop_condition(ids, null, 0.0) == ids).all() and (drop_condition(ids, null, 1.0) == null).all()
    labels = torch.arange(10)
    assert (drop_condition(labels, torch.tensor(10), 1.0) == 10).all()  # class labels: the null class
    with pytest.raises(ValueError, match=r"drop_prob must be in \[0, 1\]"):
        drop_condition(labels, torch.tensor(10), 1.5)
