"""The tiny x4 upscaler (diffusion_lab.pipelines.upscale): resizing, the noise augmentation against diffusers' low-res
scheduler, PSNR, the pipeline's concatenation and checks, training in quick mode, and save / load."""

from __future__ import annotations

import math

import diffusers
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffusion_lab.maths.images import bicubic_upscale, downsample, psnr
from diffusion_lab.mnist.data import load_mnist
from diffusion_lab.models.unet import UNet
from diffusion_lab.pipelines.upscale import LOW_RES_SCHEDULE, TinyUpscalePipeline, low_res_scheduler, noise_augment
from diffusion_lab.schedulers.scheduling_ddpm import DDPMScheduler
from diffusion_lab.training.tiny_sd_io import load_tiny_sd
from diffusion_lab.training.upscaler import UpscalerTrainConfig, train_upscaler, upscaler_recipe, upscaler_schedulers
from diffusion_lab.utils.errors import FileError


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def vae():
    return load_tiny_sd()[0].vae


@pytest.fixture(scope="module")
def digits():
    x, _ = load_mnist("test", limit=4)
    return x  # (4, 1, 28, 28)


@pytest.fixture(scope="module")
def random_pipe(vae):
    """An untrained upscaler with random weights everywhere (its output layer too), built in milliseconds."""
    unet_cfg, _ = upscaler_recipe()
    torch.manual_seed(0)
    unet = UNet(unet_cfg).eval()
    with torch.no_grad():
        unet.conv_out.weight.normal_(0, 0.05)
    return TinyUpscalePipeline(vae, unet, upscaler_schedulers()[1], low_res_scheduler(), max_noise_level=350)


# ----------------------------------------------------------------------------------------------- pure functions


def test_downsample_is_the_mean_of_each_block_and_bicubic_keeps_constants(digits):
    low = downsample(digits, 4)
    assert low.shape == (4, 1, 7, 7)
    by_hand = digits.reshape(4, 1, 7, 4, 7, 4).mean(dim=(3, 5))  # y[i, j] = mean of the 4×4 block (i, j)
    torch.testing.assert_close(low, by_hand)
    torch.testing.assert_close(low, F.interpolate(digits, size=(7, 7), mode="area"))
    up = bicubic_upscale(low, 4)
    assert up.shape == (4, 1, 28, 28) and up.min() >= -1 and up.max() <= 1
    flat = torch.full((1, 1, 7, 7), 0.3)
    torch.testing.assert_close(bicubic_upscale(flat, 4), torch.full((1, 1, 28, 28), 0.3))
    with pytest.raises(ValueError, match="multiples of factor=3"):
        downsample(digits, 3)
    with pytest.raises(ValueError, match="positive integer"):
        bicubic_upscale(low, 0)
    with pytest.raises(ValueError, match=r"pass image\[None\]"):
        downsample(digits[0], 4)
    with pytest.raises(TypeError, match="x must be a tensor"):
        downsample(digits[0].tolist(), 4)


def test_low_res_schedule_is_the_original_training_codes_linear_schedule():
    """The x4 upscaler's noise augmentation was trained with LDM's make_beta_schedule("linear"), linear in √β."""
    ldm_betas = torch.linspace(1e-4**0.5, 0.02**0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(low_res_scheduler().betas, ldm_betas.float(), rtol=1e-6, atol=1e-9)
    ab = low_res_scheduler().alphas_cumprod
    assert abs((1 - ab[20]).sqrt().item() - 0.052) < 1e-3  # the pipeline's default level: noise std ≈ 0.05
    assert abs((1 - ab[350]).sqrt().item() - 0.600) < 1e-3  # max_noise_level: noise std ≈ 0.60


@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "linear"])
def test_noise_augment_equals_diffusers_low_res_scheduler(beta_schedule, digits):
    kw = dict(LOW_RES_SCHEDULE, beta_schedule=beta_schedule)
    theirs = diffusers.DDPMScheduler(**kw)
    low = downsample(digits, 4)
    noise = torch.randn(low.shape, generator=_gen(1))
    for level in (0, 20, 350, torch.tensor([0, 20, 100, 350])):
        k = level if isinstance(level, torch.Tensor) else torch.tensor([level])
        expected = theirs.add_noise(low, noise, k)
        got = noise_augment(low, level, noise=noise, alphas_cumprod=DDPMScheduler(**kw).alphas_cumprod)
        assert (got - expected).abs().max().item() <= 1e-7
    if beta_schedule == "scaled_linear":  # the default schedule, and the noise drawn from the generator
        torch.testing.assert_close(
            noise_augment(low, 20, _gen(1)), theirs.add_noise(low, noise, torch.tensor([20])), rtol=0, atol=1e-7
        )


def test_noise_augment_adds_the_schedules_variance_and_checks_its_level():
    low = torch.zeros(1, 1, 64, 64)  # y = 0: what remains is the added noise, std √(1 − ᾱ'_k)
    ab = low_res_scheduler().alphas_cumprod
    for k in (50, 350):
        std = noise_augment(low.repeat(32, 1, 1, 1), k, _gen(k)).std().item()
        assert abs(std / (1 - ab[k]).sqrt().item() - 1) < 0.02
    with pytest.raises(ValueError, match="0..999"):
        noise_augment(low, 1000)
    with pytest.raises(ValueError, match="one integer or one per image"):
        noise_augment(low, 2.5)
    with pytest.raises(ValueError, match="one integer or one per image"):
        noise_augment(low, torch.tensor([1, 2]))


def test_psnr_formula():
    a = torch.zeros(3, 1, 4, 4)
    b = a.clone()
    b[0] += 0.2  # MSE 0.04: PSNR = 10·log10(2² / 0.04) = 20 dB
    b[1, :, :2] += 0.2  # half the pixels: MSE 0.02, PSNR 23.01 dB
    p = psnr(b, a)
    assert p.shape == (3,)
    assert abs(p[0].item() - 20.0) < 1e-4
    assert abs(p[1].item() - 10 * math.log10(4 / 0.02)) < 1e-4
    assert p[2].item() == math.inf  # identical images
    assert abs(psnr(b[:1], a[:1], data_range=1.0).item() - 10 * np.log10(1 / 0.04)) < 1e-4
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, a[:, :, :2])
    with pytest.raises(ValueError, match="data_range"):
        psnr(a, b, data_range=0)


# ------------------------------------------------------------------------------------------------------ pipeline


def test_pipeline_concatenates_the_noised_low_res_image_and_passes_the_level(random_pipe, digits):
    low = downsample(digits, 4)
    seen = []
    hook = random_pipe.unet.register_forward_hook(
        lambda m, args, kwargs, out: seen.append((args[0].clone(), kwargs["class_labels"].clone())), with_kwargs=True
    )
    try:
        out = random_pipe(low, num_inference_steps=3, noise_level=100, generator=_gen(5))
    finally:
        hook.remove()
    assert out.images.shape == (4, 1, 28, 28) and out.latents.shape == (4, 4, 7, 7)
    assert len(seen) == 3
    expected_low = noise_augment(low, 100, _gen(5))  # the augmentation noise is the generator's first draw
    for unet_in, labels in seen:
        assert unet_in.shape == (4, 5, 7, 7)  # [z_t (4 channels) ; ỹ_k (1 channel)]
        torch.testing.assert_close(unet_in[:, 4:], expected_low, rtol=0, atol=1e-6)
        assert labels.tolist() == [100] * 4
    again = random_pipe(low, num_inference_steps=3, noise_level=100, generator=_gen(5)).images
    assert torch.equal(out.images, again)
    other_level = random_pipe(low, num_inference_steps=3, noise_level=0, generator=_gen(5)).images
    assert not torch.equal(out.images, other_level)


def test_pipeline_takes_diffusers_schedulers(random_pipe, digits):
    low = downsample(digits[:2], 4)
    ours = random_pipe(low, num_inference_steps=4, noise_level=50, generator=_gen(2)).images
    theirs_pipe = TinyUpscalePipeline(
        random_pipe.vae, random_pipe.unet, diffusers.DDIMScheduler.from_config(dict(random_pipe.scheduler.config)),
        diffusers.DDPMScheduler(**LOW_RES_SCHEDULE), max_noise_level=350,
    )  # fmt: skip
    theirs = theirs_pipe(low, num_inference_steps=4, noise_level=50, generator=_gen(2)).images
    assert (ours - theirs).abs().max().item() < 1e-5


def test_pipeline_bad_input(random_pipe, digits):
    low = downsample(digits[:1], 4)
    with pytest.raises(ValueError, match=r"a 14x14 image cannot be upscaled x4 to 28x28: give 7x7 images"):
        random_pipe(downsample(digits[:1], 2))
    with pytest.raises(ValueError, match="image has 3 channels but the autoencoder .* expects 1"):
        random_pipe(low.repeat(1, 3, 1, 1))
    with pytest.raises(ValueError, match=r"pass image\[None\]"):
        random_pipe(low[0])
    with pytest.raises(TypeError, match="image must be a tensor"):
        random_pipe(None)
    for level in (-1, 351):
        with pytest.raises(ValueError, match=r"noise_level must be an integer in \[0, 350\]"):
            random_pipe(low, noise_level=level)
    for level in (2.5, True):
        with pytest.raises(TypeError, match="noise_level must be an integer"):
            random_pipe(low, noise_level=level)
    with pytest.raises(ValueError, match="num_inference_steps must be an integer >= 1, got 0"):
        random_pipe(low, num_inference_steps=0)
    with pytest.raises(TypeError, match="num_inference_steps must be an integer"):
        random_pipe(low, num_inference_steps=True)
    with pytest.raises(ValueError, match="NaN"):
        random_pipe(torch.full_like(low, float("nan")))
    unet_cfg, _ = upscaler_recipe(max_noise_level=100)
    with pytest.raises(ValueError, match="num_classes >= max_noise_level"):
        TinyUpscalePipeline(random_pipe.vae, UNet(unet_cfg), random_pipe.scheduler, low_res_scheduler(), 350)
    with pytest.raises(ValueError, match="max_noise_level"):
        UpscalerTrainConfig(max_noise_level=1000)


# ---------------------------------------------------------------------------------------------- training, saving


def test_quick_training_leaves_the_null_row_alone_and_round_trips(vae, digits, tmp_path):
    images, _ = load_mnist("train", limit=200)
    unet_cfg, cfg = upscaler_recipe()  # quick mode: 30 steps of batch 16
    pipe, losses = train_upscaler(vae, images, config=cfg, progress=False)
    assert len(losses) == cfg.steps and all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) < sum(losses[:5])  # the v-loss starts at ~1 and falls quickly
    torch.manual_seed(cfg.seed)
    initial = UNet(unet_cfg).class_embed.weight.detach()  # (K + 2, E): rows 0..K the levels, row K + 1 the null class
    trained = pipe.unet.class_embed.weight.detach()
    assert torch.equal(trained[-1], initial[-1])  # the null row is never used, so never changed
    assert not torch.equal(trained[:-1], initial[:-1])
    assert all(not p.requires_grad for p in pipe.vae.parameters())

    low = downsample(digits[:2], 4)
    before = pipe(low, num_inference_steps=3, noise_level=20, generator=_gen(3)).images
    pipe.save_pretrained(tmp_path / "upscaler")
    assert (tmp_path / "upscaler" / "unet" / "model.safetensors").is_file()
    loaded = TinyUpscalePipeline.from_pretrained(tmp_path / "upscaler")
    assert loaded.max_noise_level == 350 and _public(loaded.low_res_scheduler.config) == _public(
        low_res_scheduler().config
    )
    after = loaded(low, num_inference_steps=3, noise_level=20, generator=_gen(3)).images
    assert torch.equal(before, after)
    with pytest.raises(FileError, match="model_index.json"):
        TinyUpscalePipeline.from_pretrained(tmp_path)


def _public(config) -> dict:
    """A scheduler config without diffusers' private bookkeeping keys (``_diffusers_version``, ``_use_default_values``)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}
