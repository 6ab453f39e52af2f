"""Our DDIM/DDPM schedulers replace diffusers' own inside real diffusers pipelines and give the same image.

Everything is tiny, randomly initialised (seeded) and built in memory, so the tests run offline on a CPU in
seconds: a pixel-space ``DDIMPipeline``/``DDPMPipeline`` around a small ``UNet2DModel``, and a Stable
Diffusion 1.5-shaped ``StableDiffusionPipeline`` (UNet, VAE, CLIP text encoder and a character-level CLIP
tokenizer) in the spirit of ``get_dummy_components()`` in diffusers' own fast tests. Each test runs the same
pipeline twice, with diffusers' scheduler and with ours, from the same seed, and compares the images.
"""

from __future__ import annotations

import contextlib

import diffusers
import numpy as np
import pytest
import torch
import transformers

import diffusion_lab
from diffusion_lab.bridge.tiny import tiny_clip_tokenizer  # built in memory, no hub

ATOL = 1e-5  # max |ours − diffusers| over the image in [0, 1]
SD_SCHEDULER_KW = dict(
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    steps_offset=1,
    clip_sample=False,
    set_alpha_to_one=False,
)  # Stable Diffusion 1.5's DDIM configuration
PROMPT = "a photo of an astronaut riding a horse"
SD_SIZE = 32  # image side in pixels; the tiny VAE downsamples by 2, so latents are 16×16


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def _generate(pipe, scheduler, seed: int = 0, **call_kw) -> np.ndarray:
    """Put ``scheduler`` into ``pipe`` and generate one image as a float array in [0, 1]."""
    pipe.scheduler = scheduler
    return pipe(generator=torch.Generator().manual_seed(seed), output_type="np", **call_kw).images


@contextlib.contextmanager
def _no_progress_bars():
    """Silence the save/load progress bars of diffusers and transformers, then restore what was on before."""
    libs = [diffusers.utils.logging, transformers.utils.logging]
    enabled = [lib.is_progress_bar_enabled() for lib in libs]
    for lib in libs:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, on in zip(libs, enabled, strict=True):
            if on:
                lib.enable_progress_bar()


def _assert_not_trivial(image: np.ndarray) -> None:
    """The comparison is meaningful only if the image is finite and not flat."""
    assert np.isfinite(image).all()
    assert image.std() > 1e-3, image.std()


# --- pixel-space DDIM/DDPM pipelines --------------------------------------------------------------------------


def _tiny_unet2d() -> diffusers.UNet2DModel:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        add_attention=False,
    ).eval()


@pytest.fixture(scope="module")
def tiny_unet2d() -> diffusers.UNet2DModel:
    return _tiny_unet2d()


@pytest.mark.parametrize("from_config", [True, False], ids=["from_config", "constructed"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_pipeline_ours_equals_diffusers(tiny_unet2d, eta, from_config):
    theirs = diffusers.DDIMScheduler(num_train_timesteps=1000)  # diffusers' defaults: clip_sample, alpha one
    pipe = diffusers.DDIMPipeline(unet=tiny_unet2d, scheduler=theirs)
    pipe.set_progress_bar_config(disable=True)
    if from_config:
        ours = diffusion_lab.DDIMScheduler.from_config(pipe.scheduler.config)
    else:
        ours = diffusion_lab.DDIMScheduler(num_train_timesteps=1000)
    kw = dict(num_inference_steps=10, eta=eta)
    expected = _generate(pipe, theirs, **kw)
    got = _generate(pipe, ours, **kw)
    _assert_not_trivial(expected)
    assert _max_diff(got, expected) <= ATOL


@pytest.mark.parametrize("from_config", [True, False], ids=["from_config", "constructed"])
def test_ddpm_pipeline_ours_equals_diffusers(tiny_unet2d, from_config):
    theirs = diffusers.DDPMScheduler(num_train_timesteps=1000)
    pipe = diffusers.DDPMPipeline(unet=tiny_unet2d, scheduler=theirs)
    pipe.set_progress_bar_config(disable=True)
    if from_config:
        ours = diffusion_lab.DDPMScheduler.from_config(pipe.scheduler.config)
    else:
        ours = diffusion_lab.DDPMScheduler(num_train_timesteps=1000)
    expected = _generate(pipe, theirs, num_inference_steps=10)
    got = _generate(pipe, ours, num_inference_steps=10)
    _assert_not_trivial(expected)
    assert _max_diff(got, expected) <= ATOL


# --- Stable Diffusion 1.5-shaped text-to-image pipeline -------------------------------------------------------


def build_tiny_sd_pipeline() -> diffusers.StableDiffusionPipeline:
    """A randomly initialised, seeded Stable Diffusion 1.5-shaped pipeline, small enough for CPU tests.

    Components follow ``get_dummy_components()`` of diffusers' ``tests/pipelines/stable_diffusion/
    test_stable_diffusion.py``: a 2-level ``UNet2DConditionModel`` (32/64 channels, cross-attention width 32),
    a 2-level ``AutoencoderKL`` (spatial factor 2, 4 latent channels), a 5-layer ``CLIPTextModel`` of width 32
    and, instead of a tokenizer from the hub, :func:`tiny_clip_tokenizer`. torch is seeded before each
    component, every model is in eval mode, there is no safety checker, and the scheduler is diffusers'
    ``DDIMScheduler`` with SD 1.5's settings (:data:`SD_SCHEDULER_KW`).
    """
    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=32,
    ).eval()
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=SD_SIZE,
    ).eval()
    torch.manual_seed(0)
    text_config = transformers.CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
    )
    text_encoder = transformers.CLIPTextModel(text_config).eval()
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=diffusers.DDIMScheduler(**SD_SCHEDULER_KW),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_sd() -> diffusers.StableDiffusionPipeline:
    return build_tiny_sd_pipeline()


def _sd_generate(pipe, scheduler, **call_kw) -> np.ndarray:
    kw = dict(num_inference_steps=5, guidance_scale=6.0, height=SD_SIZE, width=SD_SIZE) | call_kw
    return _generate(pipe, scheduler, prompt=PROMPT, **kw)


def test_tiny_clip_tokenizer_round_trip():
    tok = tiny_clip_tokenizer()
    assert tok.eos_token_id == len(tok) - 1 > tok.bos_token_id
    ids = tok("a cat", padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(ids) == 77 and ids[0] == tok.bos_token_id and ids[-1] == tok.pad_token_id
    assert tok.convert_ids_to_tokens(ids[1:5]) == ["a</w>", "c", "a", "t</w>"]


@pytest.mark.parametrize("from_config", [True, False], ids=["from_config", "constructed"])
def test_sd_ddim_ours_equals_diffusers(tiny_sd, from_config):
    theirs = diffusers.DDIMScheduler(**SD_SCHEDULER_KW)
    if from_config:
        ours = diffusion_lab.DDIMScheduler.from_config(theirs.config)
    else:
        ours = diffusion_lab.DDIMScheduler(**SD_SCHEDULER_KW)
    expected = _sd_generate(tiny_sd, theirs)
    got = _sd_generate(tiny_sd, ours)
    assert expected.shape == (1, SD_SIZE, SD_SIZE, 3)
    _assert_not_trivial(expected)
    assert _max_diff(got, expected) <= ATOL


def test_sd_ddim_eta_passed_to_our_step(tiny_sd):
    """The pipeline forwards ``eta`` and ``generator`` only if ``step`` declares them; ours does, so η = 0.5
    (fresh noise at every step) must reproduce diffusers too, and differ from the deterministic η = 0 image."""
    expected = _sd_generate(tiny_sd, diffusers.DDIMScheduler(**SD_SCHEDULER_KW), eta=0.5)
    got = _sd_generate(tiny_sd, diffusion_lab.DDIMScheduler(**SD_SCHEDULER_KW), eta=0.5)
    deterministic = _sd_generate(tiny_sd, diffusion_lab.DDIMScheduler(**SD_SCHEDULER_KW), eta=0.0)
    assert _max_diff(got, expected) <= ATOL
    assert _max_diff(got, deterministic) > 1e-3  # η really reached the step


def test_sd_save_pretrained_round_trip(tiny_sd, tmp_path):
    """``save_pretrained`` → ``from_pretrained`` (the real loading path, offline) gives the same pipeline; our
    scheduler built from the *loaded* scheduler config then reproduces it."""
    expected = _sd_generate(tiny_sd, diffusers.DDIMScheduler(**SD_SCHEDULER_KW))
    with _no_progress_bars():
        tiny_sd.save_pretrained(tmp_path)
        loaded = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path, local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, diffusers.DDIMScheduler)
    assert _max_diff(_sd_generate(loaded, loaded.scheduler), expected) == 0.0
    ours = diffusion_lab.DDIMScheduler.from_config(loaded.scheduler.config)
    assert _max_diff(_sd_generate(loaded, ours), expected) <= ATOL
