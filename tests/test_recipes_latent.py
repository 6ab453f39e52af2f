"""The latent text-to-image recipe runs end to end in quick mode (stopped by step counts) and returns a working pipeline;
the shipped tiny SD and tiny SD3 load, sample and round-trip."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from diffusion_lab.mnist.captions import AttributeBins
from diffusion_lab.mnist.data import load_mnist
from diffusion_lab.pipelines.stable_diffusion import TinyStableDiffusionPipeline
from diffusion_lab.training.recipes import latent_text_recipe, train_latent_text2img
from diffusion_lab.training.tiny_sd_io import load_tiny_sd, pretrained_tiny_sd_path, save_tiny_sd


def test_train_latent_text2img_quick(monkeypatch):
    monkeypatch.setenv("DIFFUSION_LAB_SMOKE", "1")
    _, _, _, train = latent_text_recipe()
    assert (train.budget_s, train.ae_seconds, train.num_images, train.bins_images) == (4.0, 1.0, 1000, 1000)  # quick
    # stopped by step counts only (budgets no machine reaches): the same run on a busy machine as on an idle one
    cfg = dataclasses.replace(train, budget_s=1e6, ae_seconds=1e5, ae_steps=5, max_steps=4)
    seen = []
    pipe, info = train_latent_text2img(progress=False, train_config=cfg, callback=lambda *a: seen.append(a))
    assert isinstance(pipe, TinyStableDiffusionPipeline)
    assert info["ae_steps"] == 5 and info["diffusion_steps"] == 4
    assert [step for step, _ in seen] == [1, 2, 3, 4] and info["losses"] == [loss for _, loss in seen]
    assert isinstance(info["bins"], AttributeBins)
    # s = 1/std of the posterior means of the training images, recomputed here with the returned autoencoder
    images, _ = load_mnist("train", limit=cfg.num_images)
    with torch.no_grad():
        means = pipe.vae.encode(images).latent_dist.mode()
    assert pipe.vae.config.scaling_factor == info["scaling_factor"] == pytest.approx(1 / means.double().std().item())
    assert pipe.scheduler.config.prediction_type == info["configs"]["train"]["prediction_type"] == "v_prediction"
    assert not pipe.scheduler.config.clip_sample
    g = torch.Generator().manual_seed(0)
    out = pipe(["a thick seven", "a one"], num_inference_steps=2, guidance_scale=3.0, generator=g)
    assert out.images.shape == (2, 1, 28, 28) and out.latents.shape == (2, 4, 7, 7)
    assert torch.isfinite(out.images).all() and out.images.abs().max() <= 1
    assert not any(m.training for m in (pipe.vae, pipe.text_encoder, pipe.unet))
    # the same steps give the same weights: nothing depends on the clock or the global RNG
    torch.manual_seed(123)
    again, _ = train_latent_text2img(progress=False, train_config=cfg)
    for name in ("vae", "text_encoder", "unet"):
        a, b = getattr(pipe, name).state_dict(), getattr(again, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_text_recipe_drops_whole_captions_with_cond_drop_prob(monkeypatch):
    """Classifier-free guidance dropout (whole caption → "") uses cfg.cond_drop_prob, not the per-word
    caption_drop_prob: a spy on recipes.drop_condition records the probability of every call and delegates."""
    from diffusion_lab.training import recipes

    monkeypatch.setenv("DIFFUSION_LAB_SMOKE", "1")
    real, seen = recipes.drop_condition, []

    def spy(cond, null, drop_prob, generator=None):
        seen.append(drop_prob)
        return real(cond, null, drop_prob, generator)

    monkeypatch.setattr(recipes, "drop_condition", spy)
    images, labels = load_mnist("train", limit=600)
    _, _, _, train = latent_text_recipe()
    cfg = dataclasses.replace(
        train, budget_s=1e6, ae_seconds=1e5, ae_steps=1, max_steps=2, bins_images=600, batch_size=8,
        cond_drop_prob=0.3, caption_drop_prob=0.6,
    )  # fmt: skip
    assert cfg.cond_drop_prob != cfg.caption_drop_prob
    _, info = train_latent_text2img(progress=False, images=images, labels=labels, train_config=cfg)
    assert info["diffusion_steps"] == 2
    assert seen == [0.3, 0.3], f"drop_condition got {seen}: whole captions must drop with cond_drop_prob = 0.3"


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
    from diffusion_lab.pipelines.stable_diffusion_3 import TinySD3Pipeline
    from diffusion_lab.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

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
