"""Unit tests run offline (never the hub, whatever the caller's environment says) and in quick mode by default."""

from __future__ import annotations

import os

import pytest

os.environ.update(
    HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1"
)
os.environ.setdefault("DIFFUSION_LAB_SMOKE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make unit` runs two pytest-xdist workers on a 2-core machine: one thread each, so they do not fight over cores
    # (set before any test module imports torch; subprocesses the tests start inherit it)
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture
def random_tiny_pipe():
    """A randomly initialised tiny text-to-image pipeline (built in a second, no files): prompts, guidance and
    strength all change its pictures, which is what the widget tests need."""
    import torch

    from diffusion_lab.autoencoder import AutoencoderConfig, AutoencoderKL
    from diffusion_lab.pipeline import TinyStableDiffusionPipeline
    from diffusion_lab.schedulers import DDIMScheduler
    from diffusion_lab.text import TextEncoder, TextEncoderConfig, WordTokenizer
    from diffusion_lab.unet import UNet, UNetConfig

    torch.manual_seed(0)
    tokenizer = WordTokenizer.from_texts([], model_max_length=8)
    text_encoder = TextEncoder(
        TextEncoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_layers=1, num_heads=2, max_position=8)
    ).eval()
    vae = AutoencoderKL(AutoencoderConfig(channels=(8, 8), latent_channels=4, groups=4)).eval()
    unet = UNet(
        UNetConfig(
            in_channels=4, out_channels=4, channels=(16,), attention_levels=(True,), cross_attention_dim=16,
            pooled_dim=16, groups=4, time_embed_dim=32, heads=2,
        )
    ).eval()  # fmt: skip
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random weights everywhere (not the zero-initialised output layers)
        for m in (text_encoder, vae, unet):
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return TinyStableDiffusionPipeline(vae, text_encoder, tokenizer, unet, DDIMScheduler(clip_sample=False))
