"""LoRA on SDXL through diffusers' PEFT integration: the DreamBooth-LoRA-SDXL training loop reduced to its core.

=========================  ======  ================================================================================
code                       symbol  meaning
=========================  ======  ================================================================================
``mean``, ``std``          μ, σ    the VAE posterior of each training image (N, 4, H/8, W/8), computed once
``noise``, ``t``           ε, t    Gaussian noise and timesteps t ~ U{0 … T − 1} of a DDPM scheduler with SDXL's β
``gradient_accumulation``  A       micro-batches per optimiser step (the loss of each is divided by A)
=========================  ======  ================================================================================

z_0 ~ N(μ, σ²), z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε, L = ‖target − ε_θ(z_t, t, c, c_pool, time_ids)‖² with the target of
the scheduler's ``prediction_type`` (:func:`diffusion_lab.training.loss.training_target`). :func:`add_sdxl_lora`
calls ``pipe.unet.add_adapter(LoraConfig(...))``, :func:`train_sdxl_lora` trains it and :func:`save_sdxl_lora`
writes the file ``pipe.load_lora_weights`` reads, so ``set_adapters``, ``fuse_lora`` and ``disable_lora`` work on it
as on any LoRA from the hub. :func:`sdxl_lora_recipe` picks real weights on a GPU when the environment allows it
(fp16 base with fp32 LoRA, precomputed latents and text, the fp16-fix VAE, gradient checkpointing, batch 1 ×
accumulation 4, as diffusers' ``train_dreambooth_lora_sdxl.py``; about 5.2–5.5 GB of weights and optimiser state,
an estimate from parameter counts) and the tiny offline SDXL otherwise; notebook 12 has the memory table.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import diffusers
import torch
from peft import LoraConfig, get_peft_model_state_dict

from diffusion_lab.bridge import hub as bridge
from diffusion_lab.bridge.generate import check_size, sdxl_text_embeddings
from diffusion_lab.bridge.hub import quiet_hf
from diffusion_lab.bridge.lora import _check_alpha, _check_images_prompts, _check_positive, _check_rank, _targeted
from diffusion_lab.training.loop import check_finite_loss, optimizer_step
from diffusion_lab.training.loss import training_target
from diffusion_lab.utils.progress import tqdm
from diffusion_lab.utils.settings import pick

__all__ = ["SDXL_ATTENTION", "add_sdxl_lora", "train_sdxl_lora", "save_sdxl_lora", "sdxl_lora_recipe"]

SDXL_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
"""Every attention projection of a diffusers U-Net (self and cross), the target of diffusers' SDXL LoRA script."""


def add_sdxl_lora(
    pipe,
    rank: int = 4,
    alpha: float | None = None,
    target_modules: Sequence[str] = SDXL_ATTENTION,
    adapter_name: str = "default",
    seed: int | None = None,
):
    """``pipe.unet.add_adapter(LoraConfig(...))``: LoRA on the U-Net's attention projections (diffusers' PEFT
    integration), A ~ N(0, 1/r) and B = 0 (``init_lora_weights="gaussian"``, as the DreamBooth-LoRA-SDXL script),
    every other weight frozen, and the LoRA parameters in fp32 whatever the U-Net's dtype. Returns ``pipe``."""
    unet = pipe.unet
    if adapter_name in getattr(unet, "peft_config", {}):
        raise ValueError(f"the U-Net already has a LoRA adapter named {adapter_name!r}: pass another adapter_name")
    targets = _targeted(unet, target_modules)
    rank = _check_rank(rank, min(min(m.weight.shape[:2]) for m in targets.values()))
    alpha = _check_alpha(alpha, rank)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(target_modules), bias="none"
    )
    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        unet.add_adapter(config, adapter_name=adapter_name)
    for name, p in unet.named_parameters():
        if ".lora_" in name and f".{adapter_name}." in name:
            p.data = p.data.float()  # fp32 LoRA parameters beside an fp16 base (diffusers' cast_training_params)
    return pipe


@torch.no_grad()
def _sdxl_inputs(pipe, images, prompts: list[str]):
    """Everything the U-Net needs, computed once: the VAE posterior (mean, std) (N, 4, H/f, W/f) × 2, the text
    states (N, 77, D), pooled vectors (N, P) and the six micro-conditioning numbers (N, 6)."""

    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and vae.config.force_upcast  # SDXL's own VAE overflows in fp16
    dtype = torch.float32 if upcast else vae.dtype
    if upcast:
        with quiet_hf():
            vae.to(torch.float32)
    try:
        dist = vae.encode(images.to(vae.device, dtype)).latent_dist
        mean, std = dist.mean, dist.std  # (N, 4, h, w) each
    finally:
        if upcast:
            with quiet_hf():
                vae.to(torch.float16)
    s = vae.config.scaling_factor

    embeds, pooled = sdxl_text_embeddings(pipe, prompts)  # (N, 77, D), (N, P)
    h, w = images.shape[-2:]
    # micro-conditioning (SDXL paper §2.2): original size, crop top-left, target size; no crops here
    time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32).repeat(len(images), 1)  # (N, 6)
    return mean * s, std * s, embeds, pooled, time_ids


def _adamw(params, lr: float, device: torch.device, use_8bit_adam: bool | None):
    """bitsandbytes' 8-bit AdamW when asked (``True``) or when ``None`` and it is importable on a CUDA device."""
    if use_8bit_adam is not False:
        try:
            import bitsandbytes as bnb  # lazy: optional, GPU only (8-bit AdamW)  # type: ignore[import-not-found]
        except ImportError:
            if use_8bit_adam:
                raise ImportError("use_8bit_adam=True needs bitsandbytes: pip install bitsandbytes") from None
        else:
            if use_8bit_adam or device.type == "cuda":
                return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=1e-4)
    return torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)  # weight decay as diffusers' script (adam_weight_decay)


def train_sdxl_lora(
    pipe,
    images,
    prompt: str | Sequence[str],
    steps: int | None = None,
    rank: int = 4,
    alpha: float | None = None,
    lr: float = 1e-4,
    batch_size: int = 1,
    gradient_accumulation_steps: int = 4,
    gradient_checkpointing: bool = False,
    offload_encoders: bool = False,
    use_8bit_adam: bool | None = None,
    max_grad_norm: float = 1.0,
    seed: int = 0,
    adapter_name: str = "default",
    progress: bool = True,
) -> list[float]:
    """The DreamBooth-LoRA-SDXL recipe reduced to its core; returns the loss of every optimiser step.

    images: a tensor (N, 3, H, W) in [−1, 1] or a list of PIL images (preprocessed by ``pipe.image_processor``);
    prompt: one for all images or one each. Runs where ``pipe.unet`` is, in its dtype; an adapter named
    ``adapter_name`` is added if missing (:func:`add_sdxl_lora`).

    1. Precompute: latent posteriors (VAE), text states + pooled vectors (both encoders), ``add_time_ids``. With
       ``offload_encoders`` the VAE and text encoders then move to the CPU (move them back before sampling).
    2. Each micro-step: z_0 ~ N(μ, σ²) (the cached posterior), ε ~ N(0, I), t ~ U{0 … T − 1},
       z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε (``DDPMScheduler.from_config(pipe.scheduler.config).add_noise``: SDXL's Euler
       scheduler's own ``add_noise`` works in its σ-space and only at its sampling timesteps, so the training
       scripts build a DDPM scheduler with the same betas), L = ‖ε − ε_θ(z_t, t, c, c_pool, time_ids)‖² (or the v
       target if the scheduler says ``v_prediction``), divided by ``gradient_accumulation_steps``.
    3. Every ``gradient_accumulation_steps`` micro-steps: gradient clipping at ``max_grad_norm``, AdamW step (8-bit
       if ``use_8bit_adam`` and bitsandbytes is there), through a GradScaler when the U-Net is fp16.
    ``steps`` (optimiser steps) defaults to 500 (2 in quick mode).
    """
    if not isinstance(images, torch.Tensor):
        images = list(images)
        if not images:
            raise ValueError("images is empty: pass the 3-5 pictures of the subject to learn")
        images = pipe.image_processor.preprocess(images)  # (N, 3, H, W) in [-1, 1]
    prompts = _check_images_prompts(images, prompt, n_channels=3)
    steps = pick(full=500, quick=2) if steps is None else steps
    for name, value in (("steps", steps), ("batch_size", batch_size), ("gradient_accumulation_steps", gradient_accumulation_steps)):  # fmt: skip
        _check_positive(name, value)
    _check_positive("lr", lr, integer=False)

    check_size(images.shape[-2], images.shape[-1], pipe.vae_scale_factor)

    unet = pipe.unet
    device, dtype = unet.device, unet.dtype
    if adapter_name not in getattr(unet, "peft_config", {}):
        add_sdxl_lora(pipe, rank, alpha, adapter_name=adapter_name, seed=seed)
    params = [p for n, p in unet.named_parameters() if ".lora_" in n and f".{adapter_name}." in n]

    mean, std, embeds, pooled, time_ids = _sdxl_inputs(pipe, images, prompts)  # step 1
    if offload_encoders:
        for module in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            if module is not None:
                module.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    mean, std = mean.to(device, torch.float32), std.to(device, torch.float32)  # (N, 4, h, w)
    embeds, pooled, time_ids = embeds.to(device, dtype), pooled.to(device, dtype), time_ids.to(device, dtype)
    noise_scheduler = diffusers.DDPMScheduler.from_config(pipe.scheduler.config)
    prediction_type = noise_scheduler.config.prediction_type
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(device)  # (T,) ᾱ_t

    optimizer = _adamw(params, lr, device, use_8bit_adam)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    generator = torch.Generator().manual_seed(seed)
    was_training = unet.training
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()  # diffusers checkpoints only in training mode
    losses: list[float] = []
    try:
        for step in tqdm(range(steps), desc="SDXL LoRA", disable=not progress, mininterval=1.0):
            total = 0.0
            for _ in range(gradient_accumulation_steps):
                idx = torch.randint(0, len(mean), (batch_size,), generator=generator).to(device)  # (B,)
                z0 = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=generator).to(device)  # (B, 4, h, w)
                noise = torch.randn(z0.shape, generator=generator).to(device)  # (B, 4, h, w)
                t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
                t = t.to(device)  # (B,)
                z_t = noise_scheduler.add_noise(z0, noise, t)  # √ᾱ_t z_0 + √(1 − ᾱ_t) ε
                target = training_target(prediction_type, z0, noise, alphas_cumprod[t][:, None, None, None])
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    pred = unet(
                        z_t.to(dtype),
                        t,
                        encoder_hidden_states=embeds[idx],
                        added_cond_kwargs={"text_embeds": pooled[idx], "time_ids": time_ids[idx]},
                        return_dict=False,
                    )[0]  # (B, 4, h, w)
                loss = torch.nn.functional.mse_loss(pred.float(), target.float()) / gradient_accumulation_steps
                check_finite_loss(loss, step)
                scaler.scale(loss).backward()
                total += loss.item()
            optimizer_step(None, optimizer, params, max_grad_norm=max_grad_norm, scaler=scaler, step=step)
            losses.append(total)
    finally:
        unet.train(was_training)
        if gradient_checkpointing:
            unet.disable_gradient_checkpointing()
    return losses


def save_sdxl_lora(pipe, directory: str | os.PathLike, adapter_name: str = "default") -> Path:
    """``StableDiffusionXLPipeline.save_lora_weights`` of the U-Net's adapter, with its ``LoraConfig`` in the file's
    metadata (so that ``load_lora_weights`` gets α right when α ≠ r), written to a temporary folder and renamed into
    place. Returns the path of ``pytorch_lora_weights.safetensors``, which ``pipe.load_lora_weights(directory)``
    reads."""

    unet = pipe.unet
    if adapter_name not in getattr(unet, "peft_config", {}):
        raise ValueError(f"the U-Net has no LoRA adapter named {adapter_name!r}: call add_sdxl_lora first")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory))
    try:
        diffusers.StableDiffusionXLPipeline.save_lora_weights(
            tmp,
            unet_lora_layers=get_peft_model_state_dict(unet, adapter_name=adapter_name),
            unet_lora_adapter_metadata=unet.peft_config[adapter_name].to_dict(),
            safe_serialization=True,
        )
        for f in tmp.iterdir():
            os.replace(f, directory / f.name)
    finally:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return directory / "pytorch_lora_weights.safetensors"


def _fp16_fix_vae(pipe, hub_timeout: float):
    """The fp16-fix SDXL VAE (same weights scaled so fp16 activations stay finite), loaded with every hub request
    bounded by ``hub_timeout``; if the hub fails, the pipeline's own VAE with a message (diffusers upcasts it to
    fp32 for decoding: ``force_upcast``)."""
    rid = bridge.COMPONENT_IDS["sdxl-vae-fp16-fix"]
    try:
        with bridge.bounded_hub(hub_timeout):
            return diffusers.AutoencoderKL.from_pretrained(rid, dtype=pipe.unet.dtype)
    except Exception as exc:  # noqa: BLE001 - any hub failure keeps the pipeline's VAE, said why
        _, message = bridge.explain_hub_error(exc, rid, hub_timeout) or (None, f"{type(exc).__name__}: {exc}")
        print(f"could not load {rid} ({message[:200]}); keeping the pipeline's VAE (decoded in fp32)")
        return pipe.vae


def sdxl_lora_recipe(
    images,
    prompt: str,
    output_dir: str | os.PathLike,
    env=None,
    steps: int | None = None,
    rank: int = 4,
    lr: float = 1e-4,
    gradient_accumulation_steps: int = 4,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    hub_timeout: float = bridge.HUB_TIMEOUT,
    standin: str = "random",
):
    """The whole recipe, for a notebook: real SDXL on a GPU when ``env.use_real``, the tiny SDXL otherwise.

    1. ``env = bridge.check_environment()`` (if not given); ``pipe = bridge.load_pipeline("sdxl-base", env)``
       (fp16/bf16 weights on a GPU); with real weights the VAE is swapped for the fp16-fix one.
    2. Images resized to the model's size (1024² real, 64² tiny, 32² trained stand-in); the pipeline goes to
       ``env.device``.
    3. :func:`train_sdxl_lora` with the 16 GB knobs (gradient checkpointing, batch 1 × accumulation 4, encoders
       offloaded after the precompute); ``steps`` defaults to 800 real, 2 tiny.
    4. :func:`save_sdxl_lora` into ``output_dir``; the pipeline returns to ``env.device``, ready to sample.
    ``cache_dir``: where the tiny stand-in is kept, ``hub_timeout``: seconds each hub request may take (see
    :func:`diffusion_lab.bridge.hub.load_pipeline`); ``standin``: which tiny SDXL stands in for the real weights,
    ``"random"`` or ``"trained"`` (the stand-in trained on MNIST, 32² images: its pictures are digits). Returns (pipe,
    losses, path of the LoRA file). Only the tiny path runs in this project's tests; the real one is untested here.
    """

    env = env if env is not None else bridge.check_environment()
    pipe = bridge.load_pipeline("sdxl-base", env, cache_dir=cache_dir, hub_timeout=hub_timeout, standin=standin)
    if not bridge.is_tiny(pipe):
        pipe.vae = _fp16_fix_vae(pipe, hub_timeout)
    size = pipe.default_sample_size * pipe.vae_scale_factor  # 1024 real, 64 tiny, 32 trained stand-in
    if not isinstance(images, torch.Tensor):
        images = list(images)
        if not images:
            raise ValueError("images is empty: pass the 3-5 pictures of the subject to learn")
        images = pipe.image_processor.preprocess(images, height=size, width=size)  # (N, 3, size, size)
    if env.device == "cuda":
        pipe.to("cuda")  # fp16: 5.1 GB U-Net + 1.8 GB encoders and VAE (these leave after the precompute)
    if steps is None:
        steps = 800 if not bridge.is_tiny(pipe) else 2
    losses = train_sdxl_lora(
        pipe,
        images,
        prompt,
        steps=steps,
        rank=rank,
        lr=lr,
        batch_size=1,
        gradient_accumulation_steps=gradient_accumulation_steps,
        gradient_checkpointing=True,
        offload_encoders=env.device == "cuda",
        seed=seed,
        progress=progress,
    )
    path = save_sdxl_lora(pipe, output_dir)
    if env.device == "cuda":
        pipe.to("cuda")
    return pipe, losses, path
