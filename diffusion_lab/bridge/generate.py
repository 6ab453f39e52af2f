"""Driving the real SDXL and SD3 pipelines step by step: text embeddings, the sampling loop, decoding, memory, timing.

===========================  ======  ==============================================================================
code                         symbol  meaning
===========================  ======  ==============================================================================
``prompt_embeds``            c       per-token text states: SDXL CLIP-L ⊕ bigG (B, 77, 2048); SD3 [CLIP ⊕ pad; T5]
``pooled_prompt_embeds``     c̄       pooled text (SDXL bigG 1280; SD3 CLIP-L ⊕ CLIP-G 2048)
``add_time_ids``             —       SDXL micro-conditioning (orig h, w, crop top, left, target h, w) (SDXL §2.2)
``guidance_scale``           w       ε̃ = ε_∅ + w·(ε_c − ε_∅) (SDXL: on ε; SD3: on the velocity v)
``vae_scale_factor``         f       pixels per latent; height and width must be multiples of f (× patch for SD3)
===========================  ======  ==============================================================================

    SDXL (Euler, ε): x ← x + (σ_next − σ)·ε̃;  decode x/s                       (Karras et al. 2022, Alg. 1 step)
    SD3 (flow, v):   x ← x + (t_next − t)·ṽ;  decode x/s + shift               (SD3 §2, rectified flow)

:func:`sdxl_generate` and :func:`sd3_generate` write out ``pipe(prompt)`` for one prompt with the pipeline's own
components and scheduler, so the same seed gives the same image as the pipeline call (tested). :func:`check_size`
refuses sizes the latent grid cannot hold; :func:`measure` times a call and its peak memory; :func:`suggest_on_oom`
re-raises an out-of-memory error with the next knob to try, cheapest first.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor

from diffusion_lab.bridge.hub import COMPONENT_IDS, Environment
from diffusion_lab.maths.guidance import cfg_combine
from diffusion_lab.models.text_encoder import PromptTruncatedWarning
from diffusion_lab.utils.errors import check_choice, check_generator, check_int, check_number, check_tensor

__all__ = [
    "count_parameters",
    "place",
    "measure",
    "Measurement",
    "check_size",
    "sdxl_text_embeddings",
    "sdxl_generate",
    "sd3_text_embeddings",
    "sd3_generate",
    "decode_latents",
    "suggest_on_oom",
]


def place(pipe, env: Environment):
    """Put a pipeline where it runs: on a GPU of 24 GiB or more entirely on the GPU; on a smaller one with
    ``enable_model_cpu_offload()`` (each model visits the GPU only while it runs); on the CPU where it is."""
    if env.device == "cuda":
        if env.small_gpu:
            pipe.enable_model_cpu_offload()
        else:
            pipe.to("cuda")
    return pipe


@dataclass
class Measurement:
    """What :func:`measure` saw: wall seconds (GPU work synchronised), peak GPU memory during the call and the GPU
    memory already allocated when it started (None on the CPU). The peak includes what was resident (another
    pipeline still on the GPU, say): ``peak_gib - resident_gib`` is what the call itself added."""

    seconds: float
    peak_gib: float | None
    resident_gib: float | None = None

    def __str__(self) -> str:
        if self.peak_gib is None:
            return f"{self.seconds:.2f} s"
        resident = f" ({self.resident_gib:.1f} GiB of it resident before the call)" if self.resident_gib else ""
        return f"{self.seconds:.2f} s, peak GPU memory {self.peak_gib:.1f} GiB{resident}"


def measure(fn: Callable[[], object]) -> tuple[object, Measurement]:
    """Run ``fn()`` once and return (its result, :class:`Measurement`). On a GPU the peak-memory counter is reset
    first, the memory already allocated is recorded, and the GPU is synchronised before the clock stops (CUDA calls
    return before the work is done)."""

    cuda = torch.cuda.is_available()
    resident = None
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated() / 2**30
    start = time.perf_counter()
    result = fn()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return result, Measurement(seconds, torch.cuda.max_memory_allocated() / 2**30 if cuda else None, resident)


def count_parameters(module: torch.nn.Module | None) -> int:
    """Number of parameters (0 for a missing component such as a dropped T5)."""
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def check_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """Height and width must be positive multiples of ``factor`` (the VAE's f, times the patch size for an MMDiT).
    NumPy and torch integers are accepted; returns (height, width) as Python ints."""
    factor = check_int("factor", factor)
    sides = []
    for name, value in (("height", height), ("width", width)):
        try:
            side = check_int(name, value, minimum=None)
        except TypeError:
            raise TypeError(
                f"{name} must be a positive integer multiple of {factor}, got {value!r} ({type(value).__name__})"
            ) from None
        if side <= 0 or side % factor:
            fixed = max(factor, round(side / factor) * factor)
            raise ValueError(
                f"{name}={side!r} must be a positive multiple of {factor} (the latent factor of this model); "
                f"try {name}={fixed}"
            )
        sides.append(side)
    return sides[0], sides[1]


def _check_prompt(name: str, prompt: object) -> str:
    """One prompt (these helpers write out the call for a single prompt)."""
    if not isinstance(prompt, str):
        raise TypeError(
            f"{name} must be one string (these helpers generate one image; call pipe(...) for a batch), got "
            f"{type(prompt).__name__}"
        )
    return prompt


def _check_pair(name: str, value: object, minimum: int = 1) -> tuple[int, int]:
    """A (first, second) pair of integers ≥ ``minimum`` as Python ints (``original_size``, crop coordinates...)."""
    if isinstance(value, str) or not isinstance(value, tuple | list) or len(value) != 2:
        kind = "ValueError" if isinstance(value, tuple | list) else "TypeError"
        message = f"{name} must be a pair of integers, e.g. (1024, 1024), got {value!r}"
        raise (ValueError if kind == "ValueError" else TypeError)(message)
    return check_int(f"{name}[0]", value[0], minimum=minimum), check_int(f"{name}[1]", value[1], minimum=minimum)


def _check_generate(pipe, num_inference_steps, guidance_scale, height, width, generator, output_type, factor):
    """The arguments :func:`sdxl_generate` and :func:`sd3_generate` share; returns (steps, w, height, width)."""
    steps = check_int("num_inference_steps", num_inference_steps)
    guidance_scale = check_number("guidance_scale", guidance_scale, minimum=0)  # 1 = no guidance
    check_generator("generator", generator, batch=1)
    check_choice("output_type", output_type, ("pil", "np", "pt", "latent"))
    f = pipe.vae_scale_factor
    default = pipe.default_sample_size * f  # None = the model's default size, as the pipelines
    height, width = check_size(default if height is None else height, default if width is None else width, factor)
    return steps, guidance_scale, height, width


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, h, w) → images (B, 3, f·h, f·w) in [-1, 1], undoing the pipeline's scaling:
    SDXL z/s (or z·std/s + mean when the VAE config has latents statistics), SD3 z/s + shift.

    fp16 NaN guard: SDXL's VAE overflows in fp16 and returns NaN (black images). If the decode is not finite and
    the VAE is not in fp32, it is decoded again in fp32 (with a warning) and put back in its dtype."""
    cfg = vae.config
    check_tensor("latents", latents, "(B, C, h, w) of the pipeline (output_type='latent')")
    channels = getattr(cfg, "latent_channels", None)
    if latents.ndim != 4 or (channels is not None and latents.shape[1] != channels):
        raise ValueError(
            f"latents must have shape (B, {channels or 'C'}, h, w) for this VAE, got {tuple(latents.shape)}"
            + ("; one latent (C, h, w): pass latents[None]" if latents.ndim == 3 else "")
        )
    if not latents.is_floating_point():
        raise ValueError(f"latents must be a float tensor, got dtype {latents.dtype}")
    if not torch.isfinite(latents).all():
        raise ValueError("latents contains NaN or infinite values (the denoiser overflowed? run it in float32)")
    if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
        mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1).to(latents)
        std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1).to(latents)
        z = latents * std / cfg.scaling_factor + mean
    else:
        z = latents / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
    image = vae.decode(z.to(vae.dtype), return_dict=False)[0]  # (B, 3, H, W)
    if not torch.isfinite(image).all() and vae.dtype != torch.float32:
        warnings.warn(
            f"the VAE returned NaN/inf in {vae.dtype}: decoding again in float32 (for SDXL, the fp16-safe VAE "
            f"{COMPONENT_IDS['sdxl-vae-fp16-fix']} avoids this)",
            stacklevel=2,
        )
        dtype = vae.dtype
        vae.to(torch.float32)
        try:
            image = vae.decode(z.float(), return_dict=False)[0]
        finally:
            vae.to(dtype)
    return image


_OOM_KNOBS = (
    "fp16/bf16 weights (dtype=torch.float16)",
    "pipe.enable_model_cpu_offload() (whole models move to the GPU only while they run)",
    "pipe.vae.enable_tiling() and pipe.vae.enable_slicing() (decode in tiles / one image at a time)",
    "drop T5 for SD3 (text_encoder_3=None, tokenizer_3=None) or load it in 8 bit",
    "pipe.enable_sequential_cpu_offload() (layer by layer: slowest, least memory)",
    "a smaller height/width or batch",
)


@contextlib.contextmanager
def suggest_on_oom(pipe=None) -> Iterator[None]:
    """Turn a CUDA out-of-memory error into one that names the next memory knob to try (in order of cost)."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        tried = []
        if pipe is not None:
            dtypes = {
                p.dtype for m in pipe.components.values() if isinstance(m, torch.nn.Module) for p in m.parameters()
            }
            if dtypes <= {torch.float16, torch.bfloat16}:
                tried.append(0)
            if getattr(pipe, "_offload_gpu_id", None) is not None or getattr(pipe, "_all_hooks", None):
                tried.append(1)
        knobs = [k for i, k in enumerate(_OOM_KNOBS) if i not in tried]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise torch.OutOfMemoryError(
            f"out of GPU memory ({str(exc).splitlines()[0][:120]}). Next knob to try: {knobs[0]}. Then: "
            + "; ".join(knobs[1:])
        ) from exc


def _warn_truncated(tokenizer, prompts: list[str], max_length: int, which: str) -> None:
    """One :class:`PromptTruncatedWarning` naming what ``which`` (an encoder) will not see of each prompt longer than
    ``max_length`` tokens — as diffusers' own ``encode_prompt`` logs it (the ids kept end with the end token)."""
    cut = []
    for i, prompt in enumerate(prompts):
        full = tokenizer(prompt, truncation=False).input_ids
        if len(full) > max_length:
            dropped = tokenizer.decode(full[max_length - 1 : -1], skip_special_tokens=True).strip()
            cut.append(f"prompt {i}: dropped {dropped!r}")
    if cut:
        warnings.warn(
            f"{which} reads at most {max_length} tokens; " + "; ".join(cut) + " (shorten the prompt)",
            PromptTruncatedWarning,
            stacklevel=3,
        )


def _encode_clip(tokenizer, encoder, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate hidden states (B, 77, D), the output's first field: pooled/projected (B, D') or last states)."""
    _warn_truncated(tokenizer, prompts, tokenizer.model_max_length, type(encoder).__name__)
    ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)  # (B, 77)
    out = encoder(ids, output_hidden_states=True)
    return out.hidden_states[-2], out[0]  # (B, 77, D), (B, D')


@torch.no_grad()
def sdxl_text_embeddings(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's conditioning: both encoders' penultimate layers side by side (B, 77, D₁ + D₂) and the second
    encoder's projected pooled vector (B, P)."""
    device = pipe._execution_device
    h1, _ = _encode_clip(pipe.tokenizer, pipe.text_encoder, prompts, device)  # (B, 77, 768)
    h2, pooled = _encode_clip(pipe.tokenizer_2, pipe.text_encoder_2, prompts, device)  # (B, 77, 1280), (B, 1280)
    return torch.cat([h1, h2], dim=-1), pooled


@torch.no_grad()
def sdxl_generate(
    pipe,
    prompt: str,
    *,
    num_inference_steps: int = 30,
    guidance_scale: float = 5.0,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    original_size: tuple[int, int] | None = None,
    crops_coords_top_left: tuple[int, int] = (0, 0),
    target_size: tuple[int, int] | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    output_type: str = "pil",
):
    """``StableDiffusionXLPipeline.__call__`` for one prompt, written out (same seed and scheduler → same image)."""
    check_int("num_inference_steps", num_inference_steps)  # first: before the pipeline is touched
    f = pipe.vae_scale_factor
    num_inference_steps, guidance_scale, height, width = _check_generate(
        pipe, num_inference_steps, guidance_scale, height, width, generator, output_type, f
    )
    prompt = _check_prompt("prompt", prompt)
    if negative_prompt is not None:
        negative_prompt = _check_prompt("negative_prompt", negative_prompt)
    original_size = None if original_size is None else _check_pair("original_size", original_size)
    target_size = None if target_size is None else _check_pair("target_size", target_size)
    crops_coords_top_left = _check_pair("crops_coords_top_left", crops_coords_top_left, minimum=0)
    device, dtype = pipe._execution_device, pipe.unet.dtype
    cond, pooled = sdxl_text_embeddings(pipe, [prompt])  # (1, 77, D), (1, P)
    if negative_prompt is None and pipe.config.force_zeros_for_empty_prompt:
        uncond, uncond_pooled = torch.zeros_like(cond), torch.zeros_like(pooled)  # SDXL's "empty" condition
    else:
        uncond, uncond_pooled = sdxl_text_embeddings(pipe, [negative_prompt or ""])
    # micro-conditioning: (orig h, orig w, crop top, crop left, target h, target w)  (SDXL paper §2.2)
    time_ids = torch.tensor(
        [[*(original_size or (height, width)), *crops_coords_top_left, *(target_size or (height, width))]],
        dtype=cond.dtype,
        device=device,
    )  # (1, 6)
    embeds = torch.cat([uncond, cond])  # (2, 77, D): [∅, c]
    added = {"text_embeds": torch.cat([uncond_pooled, pooled]), "time_ids": time_ids.repeat(2, 1)}
    scheduler = pipe.scheduler
    scheduler.set_timesteps(num_inference_steps, device=device)
    shape = (1, pipe.unet.config.in_channels, height // f, width // f)
    latents = randn_tensor(shape, generator=generator, device=device, dtype=cond.dtype) * scheduler.init_noise_sigma
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(torch.cat([latents] * 2), t)  # (2, 4, h, w)
        eps_uncond, eps_cond = pipe.unet(
            x.to(dtype), t, encoder_hidden_states=embeds.to(dtype), added_cond_kwargs=added, return_dict=False
        )[0].chunk(2)
        eps = cfg_combine(eps_cond, eps_uncond, guidance_scale)  # ε_∅ + w·(ε_c − ε_∅)
        latents = scheduler.step(eps, t, latents, return_dict=False)[0]  # z_t → z_{t-1}
    if output_type == "latent":
        return latents
    return pipe.image_processor.postprocess(decode_latents(pipe.vae, latents), output_type=output_type)


@torch.no_grad()
def sd3_text_embeddings(pipe, prompts: list[str], max_sequence_length: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """SD3's conditioning: CLIP-L ⊕ bigG penultimate layers zero-padded to T5's width, then T5's tokens after them
    along the sequence (B, 77 + 256, 4096; zeros when T5 is dropped), and the two pooled vectors side by side."""
    device = pipe._execution_device
    h1, p1 = _encode_clip(pipe.tokenizer, pipe.text_encoder, prompts, device)  # (B, 77, 768), (B, 768)
    h2, p2 = _encode_clip(pipe.tokenizer_2, pipe.text_encoder_2, prompts, device)  # (B, 77, 1280), (B, 1280)
    clip = torch.cat([h1, h2], dim=-1)  # (B, 77, 2048)
    width = pipe.transformer.config.joint_attention_dim
    if pipe.text_encoder_3 is None:
        t5 = torch.zeros(len(prompts), max_sequence_length, width, device=device, dtype=clip.dtype)  # T5 dropped
    else:
        _warn_truncated(pipe.tokenizer_3, prompts, max_sequence_length, "T5 (max_sequence_length)")
        ids = pipe.tokenizer_3(
            prompts,
            padding="max_length",
            max_length=max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        ).input_ids.to(device)  # (B, 256)
        t5 = pipe.text_encoder_3(ids)[0]  # (B, 256, 4096)
    clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))  # (B, 77, 4096)
    return torch.cat([clip, t5.to(clip.dtype)], dim=-2), torch.cat([p1, p2], dim=-1)  # (B, 333, 4096), (B, 2048)


@torch.no_grad()
def sd3_generate(
    pipe,
    prompt: str,
    *,
    num_inference_steps: int = 28,
    guidance_scale: float = 7.0,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str = "",
    generator: torch.Generator | None = None,
    max_sequence_length: int = 256,
    output_type: str = "pil",
):
    """``StableDiffusion3Pipeline.__call__`` for one prompt, written out: flow-match Euler (shift in the scheduler),
    CFG on velocities, decode z/s + shift."""
    check_int("num_inference_steps", num_inference_steps)  # first: before the pipeline is touched
    f = pipe.vae_scale_factor
    num_inference_steps, guidance_scale, height, width = _check_generate(
        pipe, num_inference_steps, guidance_scale, height, width, generator, output_type,
        f * pipe.transformer.config.patch_size,
    )  # fmt: skip
    prompt, negative_prompt = _check_prompt("prompt", prompt), _check_prompt("negative_prompt", negative_prompt)
    max_sequence_length = check_int("max_sequence_length", max_sequence_length)
    if max_sequence_length > 512:
        raise ValueError(
            f"max_sequence_length must be at most 512 (T5's limit, as diffusers), got {max_sequence_length}"
        )
    device, dtype = pipe._execution_device, pipe.transformer.dtype
    cond, pooled = sd3_text_embeddings(pipe, [prompt], max_sequence_length)  # (1, L, D), (1, P)
    uncond, uncond_pooled = sd3_text_embeddings(pipe, [negative_prompt], max_sequence_length)  # SD3 encodes ""
    embeds, pooled = torch.cat([uncond, cond]), torch.cat([uncond_pooled, pooled])  # (2, L, D), (2, P)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(num_inference_steps, device=device)  # σ: shifted, 1 → 0
    shape = (1, pipe.transformer.config.in_channels, height // f, width // f)
    latents = randn_tensor(shape, generator=generator, device=device, dtype=cond.dtype)  # z_1 = ε
    for t in scheduler.timesteps:
        x = torch.cat([latents] * 2)  # (2, 16, h, w)
        v_uncond, v_cond = pipe.transformer(
            hidden_states=x.to(dtype),
            timestep=t.expand(2),
            encoder_hidden_states=embeds.to(dtype),
            pooled_projections=pooled.to(dtype),
            return_dict=False,
        )[0].chunk(2)
        v = cfg_combine(v_cond, v_uncond, guidance_scale)  # CFG on the velocity
        latents = scheduler.step(v, t, latents, return_dict=False)[0]  # z_{t'} = z_t + (t' − t)·v
    if output_type == "latent":
        return latents
    return pipe.image_processor.postprocess(decode_latents(pipe.vae, latents), output_type=output_type)
