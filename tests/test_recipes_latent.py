"""The latent text-to-image recipe runs end to end in quick mode and returns a working pipeline and its timings."""

from __future__ import annotations

import pytest
import torch

from diffusion_lab.pipeline import TinyStableDiffusionPipeline
from diffusion_lab.recipes import (
    latent_text_recipe,
    load_tiny_sd,
    pretrained_tiny_sd_path,
    save_tiny_sd,
    train_latent_text2img,
)
from diffusion_lab.text import AttributeBins


def test_train_latent_text2img_quick(monkeypatch):
    monkeypatch.setenv("DIFFUSION_LAB_SMOKE", "1")
    torch.set_num_threads(2)
    _, _, _, train = latent_text_recipe()
    assert train.budget_s <= 10  # quick mode shrinks the budget
    pipe, info = train_latent_text2img(progress=False)
    assert isinstance(pipe, TinyStableDiffusionPipeline)
    for key in ("load_seconds", "ae_seconds", "encode_seconds", "diffusion_seconds", "total_seconds"):
        assert info[key] >= 0
    assert info["diffusion_steps"] >= 1 and info["ae_steps"] >= 1
    assert isinstance(info["bins"], AttributeBins)
    assert pipe.vae.config.scaling_factor == info["scaling_factor"] > 0
    assert pipe.scheduler.config.prediction_type == info["configs"]["train"]["prediction_type"]
    assert not pipe.scheduler.config.clip_sample
    g = torch.Generator().manual_seed(0)
    out = pipe(["a thick seven", "a one"], num_inference_steps=2, guidance_scale=3.0, generator=g)
    assert out.images.shape == (2, 1, 28, 28) and out.latents.shape == (2, 4, 7, 7)
    assert torch.isfinite(out.images).all() and out.images.abs().max() <= 1
    assert not any(m.training for m in (pipe.vae, pipe.text_encoder, pipe.unet))


def test_shipped_tiny_sd_loads_and_round_trips(tmp_path):
    """The checkpoint in data/pretrained/tiny_sd (notebooks 05-07 load it): loads, samples, and saves/reloads exactly."""
    pipe, bins = load_tiny_sd()
    assert isinstance(pipe, TinyStableDiffusionPipeline) and isinstance(bins, AttributeBins)
    assert pretrained_tiny_sd_path().is_dir()
    assert not any(m.training for m in (pipe.vae, pipe.text_encoder, pipe.unet))
    g = torch.Generator().manual_seed(0)
    images = pipe(["a thick seven", ""], num_inference_steps=3, generator=g).images
    assert images.shape == (2, 1, 28, 28) and torch.isfinite(images).all()

    save_tiny_sd(pipe, bins, tmp_path / "copy")
    again, bins_again = load_tiny_sd(tmp_path / "copy")
    assert bins_again.to_dict() == bins.to_dict()
    for name in ("vae", "text_encoder", "unet"):
        before, after = getattr(pipe, name).state_dict(), getattr(again, name).state_dict()
        assert before.keys() == after.keys()
        for k in before:
            assert torch.equal(before[k], after[k]), f"{name}.{k} changed in the round trip"
    with pytest.raises(FileNotFoundError, match="caption_bins.json"):
        load_tiny_sd(tmp_path / "nowhere")


def test_shipped_tiny_sd3_loads_and_shares_tiny_sds_autoencoder():
    """data/pretrained/tiny_sd3 (notebook 08): an SD3-shaped pipeline on the very autoencoder of tiny_sd."""
    from diffusion_lab.flow import FlowMatchEulerDiscreteScheduler
    from diffusion_lab.pipeline import TinySD3Pipeline

    pipe, bins = load_tiny_sd(pretrained_tiny_sd_path("tiny_sd3"))
    unet_pipe, unet_bins = load_tiny_sd()
    assert isinstance(pipe, TinySD3Pipeline) and isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert bins.to_dict() == unet_bins.to_dict()  # the same captions were cut with the same bins
    for k, v in unet_pipe.vae.state_dict().items():
        assert torch.equal(pipe.vae.state_dict()[k], v), f"vae.{k} differs from tiny_sd's"
    assert pipe.vae.config.scaling_factor == unet_pipe.vae.config.scaling_factor
    assert not any(m.training for m in (pipe.vae, pipe.text_encoder, pipe.transformer))
    images = pipe(["a thick seven", ""], num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 1, 28, 28) and torch.isfinite(images).all()
