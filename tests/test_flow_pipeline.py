"""The SD3-shaped tiny pipeline (MMDiT + rectified flow) and the flow training recipe."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion_lab.maths.flow import flow_euler_step
from diffusion_lab.maths.guidance import cfg_combine
from diffusion_lab.models.autoencoder import AutoencoderConfig, AutoencoderKL
from diffusion_lab.models.mmdit import MMDiT, MMDiTConfig, pad_to_patch
from diffusion_lab.models.text_encoder import TextEncoder, TextEncoderConfig, WordTokenizer
from diffusion_lab.pipelines.stable_diffusion import TinyStableDiffusionPipeline
from diffusion_lab.pipelines.stable_diffusion_3 import TinySD3Pipeline
from diffusion_lab.schedulers.scheduling_ddim import DDIMScheduler
from diffusion_lab.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from diffusion_lab.training.recipes import LatentFlowTrainConfig, latent_flow_recipe, train_latent_flow
from diffusion_lab.utils.errors import FileError


def _randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.fixture(scope="module")
def pipe() -> TinySD3Pipeline:
    """Random weights everywhere (the zero-initialised adaLN and output layers too, so every part matters)."""
    torch.manual_seed(0)
    tokenizer = WordTokenizer.from_texts([], model_max_length=8)
    text_encoder = TextEncoder(
        TextEncoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_layers=1, num_heads=2, max_position=8)
    ).eval()
    vae = AutoencoderKL(AutoencoderConfig(channels=(8, 8), latent_channels=4, groups=4, scaling_factor=0.5)).eval()
    transformer = MMDiT(
        MMDiTConfig(sample_size=8, patch_size=2, depth=2, hidden_size=32, num_heads=2, joint_attention_dim=16,
                    pooled_projection_dim=16, max_text_tokens=8)
    ).eval()  # fmt: skip
    for i, m in enumerate((text_encoder, vae, transformer)):
        _randomise(m, i)
    return TinySD3Pipeline(vae, text_encoder, tokenizer, transformer, FlowMatchEulerDiscreteScheduler(shift=3.0))


def _run(pipe, prompt="a thick seven", seed=0, **kw):
    kw.setdefault("num_inference_steps", 4)
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **kw)


def test_pad_to_patch_pads_bottom_and_right_with_zeros():
    z = torch.randn(2, 4, 7, 7)
    padded = pad_to_patch(z, 2)
    assert padded.shape == (2, 4, 8, 8)
    torch.testing.assert_close(padded[..., :7, :7], z)
    assert padded[..., 7, :].abs().max() == 0 and padded[..., :, 7].abs().max() == 0
    assert pad_to_patch(torch.randn(1, 4, 8, 8), 2).shape == (1, 4, 8, 8)  # already a multiple: unchanged


def test_pipeline_equals_the_loop_written_out(pipe):
    """The sampler in a few lines (Euler on the velocity, CFG on velocities) gives the pipeline's latents exactly."""
    w, steps = 2.0, 4
    got = _run(pipe, guidance_scale=w, num_inference_steps=steps, output_type="latent").latents
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 7, 7, generator=g)  # z_1 = ε
    with torch.no_grad():
        c, mask, pooled = pipe.encode_prompt(["", "a thick seven"])
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
        sched.set_timesteps(steps)
        for i, t in enumerate(sched.timesteps):
            t01 = torch.full((2,), float(t) / 1000)
            v = pipe.transformer(pad_to_patch(torch.cat([z, z]), 2), t01, c, pooled, mask)[..., :7, :7]
            v_uncond, v_text = v.chunk(2)
            z = flow_euler_step(z, cfg_combine(v_text, v_uncond, w), sched.sigmas[i], sched.sigmas[i + 1])
    torch.testing.assert_close(got, z, atol=1e-5, rtol=0)


def test_text_to_image_shapes_and_prompts(pipe):
    out = _run(pipe, prompt=["a thick seven", "a thin one"], guidance_scale=2.0)
    assert out.images.shape == (2, 1, 28, 28) and out.images.abs().max() <= 1
    assert (out.images[0] - out.images[1]).abs().max() > 1e-3  # the prompt matters
    torch.testing.assert_close(_run(pipe, guidance_scale=2.0).images, _run(pipe, guidance_scale=2.0).images)


def test_img2img_strength_zero_returns_the_image_and_one_ignores_it(pipe):
    image = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        roundtrip = pipe.vae.decode(pipe.vae.encode(image).latent_dist.mode()).sample.clamp(-1, 1)
    torch.testing.assert_close(_run(pipe, image=image, strength=0.0).images, roundtrip)
    text2img = _run(pipe, guidance_scale=2.0).images
    torch.testing.assert_close(_run(pipe, image=image, strength=1.0, guidance_scale=2.0).images, text2img)
    mid_a = _run(pipe, image=image, strength=0.5).latents
    mid_b = _run(pipe, image=-image, strength=0.5).latents
    assert (mid_a - mid_b).abs().max() > 1e-3  # in between, the start image shows through


def test_inpainting_keeps_the_unmasked_region(pipe):
    image = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(6)) * 2 - 1
    mask = torch.zeros(1, 1, 28, 28)
    mask[..., :16] = 1.0  # repaint latent columns 0-3
    out = _run(pipe, image=image, mask_image=mask, guidance_scale=2.0)
    with torch.no_grad():
        known = pipe.vae.encode(image).latent_dist.mode() * pipe.vae.config.scaling_factor
    torch.testing.assert_close(out.latents[..., 4:], known[..., 4:], atol=1e-6, rtol=0)
    assert (out.latents[..., :4] - known[..., :4]).abs().max() > 1e-3


def test_diffusers_flow_scheduler_gives_the_same_pictures(pipe):
    import diffusers

    original = pipe.scheduler
    try:
        pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
        theirs = _run(pipe, guidance_scale=2.0).images
    finally:
        pipe.scheduler = original
    torch.testing.assert_close(_run(pipe, guidance_scale=2.0).images, theirs, atol=1e-5, rtol=0)


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "tiny-sd3")
    assert (tmp_path / "tiny-sd3" / "transformer" / "config.json").is_file()
    again = TinySD3Pipeline.from_pretrained(tmp_path / "tiny-sd3")
    assert type(again.scheduler) is FlowMatchEulerDiscreteScheduler and again.scheduler.config.shift == 3.0
    torch.testing.assert_close(_run(again, guidance_scale=2.0).images, _run(pipe, guidance_scale=2.0).images)
    with pytest.raises(
        FileError, match=r"holds a TinySD3Pipeline, not a TinyStableDiffusionPipeline: load it with TinySD3Pipeline"
    ):
        TinyStableDiffusionPipeline.from_pretrained(tmp_path / "tiny-sd3")


def test_bad_components_and_sizes_are_refused(pipe):
    with pytest.raises(ValueError, match="not a flow-matching scheduler"):
        TinySD3Pipeline(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.transformer, DDIMScheduler())
    no_text = MMDiT(MMDiTConfig(sample_size=8, joint_attention_dim=None, pooled_projection_dim=None))
    with pytest.raises(ValueError, match="needs a text stream"):
        TinySD3Pipeline(pipe.vae, pipe.text_encoder, pipe.tokenizer, no_text, pipe.scheduler)
    with pytest.raises(ValueError, match="positive multiples of 4"):
        _run(pipe, height=30)
    with pytest.raises(ValueError, match="exceeds the model's sample_size"):
        _run(pipe, height=36, width=36)  # 9×9 latents → 10×10 padded > 8


def test_flow_train_config_refuses_bad_values():
    with pytest.raises(ValueError, match="timestep_sampling"):
        LatentFlowTrainConfig(timestep_sampling="cosine")
    with pytest.raises(ValueError, match="shift must be a positive number"):
        LatentFlowTrainConfig(shift=0.0)
    with pytest.raises(ValueError, match="max_steps"):
        LatentFlowTrainConfig(max_steps=0)
    g = torch.Generator().manual_seed(0)
    for kind in ("logit_normal", "uniform"):
        t = LatentFlowTrainConfig(timestep_sampling=kind).sample_t(1000, g)
        assert t.shape == (1000,) and 0 < t.min() and t.max() < 1
    cfg = LatentFlowTrainConfig()
    mid = cfg.sample_t(10_000, g)
    # logit-normal: t = sigmoid(u), u ~ N(m, s²), so P(1/4 < t < 3/4) = P(−ln 3 < u < ln 3) = Φ((ln 3 − m)/s) −
    # Φ((−ln 3 − m)/s): 0.670 for the recipe's m = 0.5, s = 1 (uniform: 0.5); the standard error of the share of
    # 10,000 draws is 0.005
    phi = lambda x: (1 + math.erf(x / math.sqrt(2))) / 2  # noqa: E731
    m, sd = cfg.logit_mean, cfg.logit_std
    share = ((mid > 0.25) & (mid < 0.75)).float().mean().item()
    assert share == pytest.approx(phi((math.log(3) - m) / sd) - phi((-math.log(3) - m) / sd), abs=0.02)
    assert (mid > 0.5).float().mean().item() == pytest.approx(1 - phi(-m / sd), abs=0.02)  # 0.69: the noisy half
    flat = LatentFlowTrainConfig(timestep_sampling="uniform").sample_t(10_000, g)
    assert ((flat > 0.25) & (flat < 0.75)).float().mean().item() == pytest.approx(0.5, abs=0.02)


def test_train_latent_flow_runs_and_returns_a_working_pipeline(pipe):
    from diffusion_lab.mnist.data import load_mnist

    images, labels = load_mnist("train", limit=600)
    text_cfg = TextEncoderConfig(vocab_size=pipe.tokenizer.vocab_size, hidden_size=16, num_layers=1, num_heads=2,
                                 max_position=8)  # fmt: skip
    model_cfg, train_cfg = latent_flow_recipe(text_cfg)
    assert model_cfg.hidden_size == 64 * model_cfg.depth and model_cfg.num_heads == model_cfg.depth  # SD3's family
    # stopped by the step count only: a time budget no machine reaches (quick mode's 3 s would make it load-dependent)
    train_cfg.max_steps, train_cfg.bins_images, train_cfg.budget_s = 3, 600, 1e6
    seen = []
    flow_pipe, info = train_latent_flow(
        pipe.vae, images=images, labels=labels, text_config=text_cfg, train_config=train_cfg, progress=False,
        callback=lambda step, loss: seen.append(loss),
    )  # fmt: skip
    assert info["diffusion_steps"] == 3 and seen == info["losses"] and len(seen) == 3
    assert all(torch.isfinite(torch.tensor(seen)))
    assert isinstance(flow_pipe, TinySD3Pipeline) and flow_pipe.transformer.config.sample_size == 8
    out = flow_pipe("a thick seven", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 1, 28, 28) and torch.isfinite(out.images).all()
