"""An SD3 stand-in trained on MNIST: the real ``StableDiffusion3Pipeline`` classes at toy size, so ``pipe(prompt)``
draws the digit the prompt names, and dropping T5 has a measured effect.

=========================  ========  ============================================================================
code                       symbol    meaning
=========================  ========  ============================================================================
``canvas``                 x         (B, 3, S, S) in [−1, 1]: an MNIST digit padded from 28² to S² (32), grey in RGB
``vae`` latents            z         (B, 16, S/f, S/f), f = 4: SD3's 16 latent channels at a toy factor (real f = 8)
``shift_factor``, ``s``    μ_z, s    the transformer sees s·(z − μ_z); decode z = ẑ/s + μ_z (SD3's VAE semantics)
``sigma``                  t         flow time in [0, 1]: x_t = (1 − t)·z₀ + t·ε (SD3 §3.1); timestep = 1000·t
``v``                      v         the velocity target ε − z₀ (diffusers' ``FlowMatchEulerDiscreteScheduler.step``
                                     moves x by (t' − t)·v, so the network predicts ε − z₀)
``logit_mean``, ``_std``   m, s      t = sigmoid(u), u ~ N(m, s²) (SD3 §3.1 "logit-normal")
``encoder_drop_prob``      p_drop    each text encoder's input dropped independently (SD3 §5.3: 46.3 %; here 46.4 %): a dropped
                                     CLIP reads "" (the embedding CFG's unconditional branch feeds), a dropped T5
                                     gives zeros (what the pipeline feeds with ``text_encoder_3=None``)
``clip_max_length``        L_clip    CLIP's window in tokens (9 = 7 characters + start/end; real CLIP: 77 BPE)
``t5_max_length``          L_t5      T5's window (32 characters; pass ``max_sequence_length=32`` to the pipeline)
=========================  ========  ============================================================================

What and why:

- Components are the real diffusers/transformers classes of SD3 medium (``SD3Transformer2DModel``, an
  ``AutoencoderKL`` with 16 latent channels and no quant convs, two ``CLIPTextModelWithProjection``, a
  ``T5EncoderModel``, ``FlowMatchEulerDiscreteScheduler(shift=3)``) with the character-level tokenizers of
  :mod:`diffusion_lab.bridge.tiny`; the saved folder loads with ``StableDiffusion3Pipeline.from_pretrained``.
- The VAE is trained first, on the canvases (MSE + a small KL); SD3's ``shift_factor`` and ``scaling_factor`` are
  then the mean and 1/std of the posterior means, so the transformer trains on zero-mean, unit-variance latents.
- Captions are the course's (:func:`diffusion_lab.mnist.captions.captions_for`: "a large thick slanted seven"),
  read character by character. CLIP's window is 9 tokens (7 characters): "a seven" fits; "a large thick slanted
  seven" is cut after "a large t", so CLIP reads the size word and nothing after it. T5 reads the whole caption. So,
  as with real SD3 and prompts longer than CLIP's 77 tokens, the words past CLIP's window reach the model only
  through T5: dropping T5 loses them (the digit name, the thickness and slant words) and keeps the ones inside the
  window (the size word). That is the behaviour measured (:func:`t5_comparison`); a 14-token window (the first
  recipe) kept the attribute words inside CLIP's reach, and dropping T5 then changed attribute adherence by −0.004.
- The text encoders train jointly with the transformer (SD3 freezes pretrained ones; here none exist); the
  embeddings enter exactly as ``StableDiffusion3Pipeline.encode_prompt`` builds them (:func:`sd3_condition`).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import diffusers
import torch
import torch.nn.functional as F
import transformers
from torch import nn

from diffusion_lab.bridge.tiny import _clip_text_config, tiny_clip_tokenizer, tiny_t5_tokenizer
from diffusion_lab.maths.flow import flow_interpolate, flow_velocity, logit_normal_timesteps
from diffusion_lab.mnist.captions import (
    DIGIT_NAMES,
    AttributeBins,
    attribute_adherence,
    attributes,
    fit_bins,
    sample_caption_batch,
)
from diffusion_lab.mnist.data import load_mnist
from diffusion_lab.mnist.metrics import prompt_adherence
from diffusion_lab.training.loop import EMA, check_config_fields, optimizer_step, warmup_cosine
from diffusion_lab.utils.checkpoint import swap_folder, temp_sibling, write_json_atomic
from diffusion_lab.utils.errors import check_int, check_tensor

__all__ = [
    "SD3StandinConfig",
    "build_sd3_standin",
    "to_canvas",
    "from_canvas",
    "vae_loss",
    "flow_loss",
    "encoder_keep_masks",
    "sd3_condition",
    "train_sd3_standin",
    "long_prompts",
    "short_prompts",
    "pipeline_digits",
    "measure_prompts",
    "drop_t5",
    "t5_comparison",
    "save_sd3_standin",
    "load_bins",
]

MNIST_SIZE = 28


@dataclass
class SD3StandinConfig:
    """Sizes and the fixed step counts of :func:`train_sd3_standin` (no seconds: the same steps on any machine)."""

    canvas: int = 32  # S: 28² digits padded to S² (a multiple of f·patch = 8)
    # CLIP's window: 12 characters + start/end (a three-word caption loses its digit). 9 was measured too: T5 then
    # also carries the thickness and slant words (attribute adherence +0.20 with T5 on long prompts) but "a <digit>"
    # fell to 0.92-0.94 (benchmarks/results/standin_sd3.json, "alternatives")
    clip_max_length: int = 9
    t5_max_length: int = 32  # T5's window: the longest caption (24 tokens) fits
    num_images: int = 12_000  # the first N MNIST training images
    bins_images: int = 8_000  # caption bins fitted on the first N
    vae_steps: int = 500
    vae_batch_size: int = 32
    vae_lr: float = 2e-3
    kl_weight: float = 1e-4  # per latent element against the per-pixel MSE
    transformer_layers: int = 2  # MMDiT joint blocks
    transformer_heads: int = 3  # of 32 channels each: hidden 96 (64 was a bottleneck for 2×2×16 = 64-number patches)
    steps: int = 5_000  # transformer + text encoders
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 50
    final_lr_fraction: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    caption_drop_prob: float = 0.25  # each attribute word dropped (the course's recipe): short prompts work too
    uncond_prob: float = 0.05  # the whole caption → "" in all three encoders (CFG's unconditional with T5 kept)
    encoder_drop_prob: float = 0.464  # SD3 §5.3: 46.3 %, each encoder independently (the shipped recipe used 46.4 %)
    logit_mean: float = 0.5  # logit-normal as SD3 (0, 1), shifted to the noisy half as the course's tiny SD3
    logit_std: float = 1.0
    shift: float = 3.0  # the sampling scheduler's shift, as SD3
    token_embedding_std: float = 1.0  # CLIP's token embeddings re-drawn N(0, 1) (the course's finding)
    seed: int = 0

    def __post_init__(self):
        check_config_fields(
            self,
            counts=("canvas", "clip_max_length", "t5_max_length", "num_images", "bins_images", "vae_steps",
                    "vae_batch_size", "transformer_layers", "transformer_heads", "steps", "batch_size"),
            indices=("warmup_steps", "seed"),
            positive=("vae_lr", "lr", "logit_std", "shift", "grad_clip"),
            non_negative=("kl_weight", "token_embedding_std"),
            fractions=("caption_drop_prob", "uncond_prob", "encoder_drop_prob", "final_lr_fraction"),
            decays=("ema_decay",),
        )  # fmt: skip
        if self.canvas % 8 or self.canvas < MNIST_SIZE:
            raise ValueError(f"canvas must be a multiple of 8 (f·patch) and at least 28, got {self.canvas}")

    def to_dict(self) -> dict:
        return asdict(self)


def _seeded(seed: int, build) -> nn.Module:
    torch.manual_seed(seed)
    return build().eval()


def build_sd3_standin(config: SD3StandinConfig | None = None) -> diffusers.StableDiffusion3Pipeline:
    """The untrained stand-in: the real SD3 classes at toy size (0.96 M parameters, 3.9 MB in fp32).

    CLIP-L and CLIP-G stand-ins: 2 layers, hidden 24 and 32 with projections 24 and 32 (pooled 56; SD3: 768 + 1280
    = 2048); T5: 2 layers, d_model 64 = the transformer's ``joint_attention_dim`` (the 56 CLIP features are
    zero-padded to 64, as SD3 pads 768 + 1280 to 4096); MMDiT: ``transformer_layers`` joint blocks (2) of
    ``transformer_heads`` heads of 32 (3: hidden 96), patch 2 on 8×8 latents (16 image tokens); VAE: 3 levels (f = 4), widths 8/16/32, 16 latent channels, no quant convs, SD3's
    scaling and shift factors (set after training)."""
    cfg = config or SD3StandinConfig()
    if not isinstance(cfg, SD3StandinConfig):
        raise TypeError(f"config must be an SD3StandinConfig or None, got {type(config).__name__}")
    seed = cfg.seed
    tok = tiny_clip_tokenizer(cfg.clip_max_length)
    tok3 = tiny_t5_tokenizer(cfg.t5_max_length)
    te1 = _seeded(seed, lambda: transformers.CLIPTextModelWithProjection(_clip_text_config(tok, 24, 2, 24)))
    te2 = _seeded(seed + 1, lambda: transformers.CLIPTextModelWithProjection(_clip_text_config(tok, 32, 2, 32)))
    t5_config = transformers.T5Config(
        vocab_size=len(tok3), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, dropout_rate=0.0,
        feed_forward_proj="gated-gelu", pad_token_id=tok3.pad_token_id, eos_token_id=tok3.eos_token_id,
        decoder_start_token_id=tok3.pad_token_id,
    )  # fmt: skip
    t5 = _seeded(seed + 2, lambda: transformers.T5EncoderModel(t5_config))
    latent = cfg.canvas // 4
    transformer = _seeded(
        seed + 3,
        lambda: diffusers.SD3Transformer2DModel(
            sample_size=latent, patch_size=2, in_channels=16, out_channels=16, num_layers=cfg.transformer_layers,
            attention_head_dim=32, num_attention_heads=cfg.transformer_heads, joint_attention_dim=64,
            caption_projection_dim=32 * cfg.transformer_heads, pooled_projection_dim=56,
            pos_embed_max_size=latent // 2,
        ),
    )  # fmt: skip
    vae = _seeded(
        seed + 4,
        lambda: diffusers.AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
            up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[8, 16, 32], layers_per_block=1,
            latent_channels=16, norm_num_groups=4, sample_size=cfg.canvas, use_quant_conv=False,
            use_post_quant_conv=False, mid_block_add_attention=False, scaling_factor=1.5305, shift_factor=0.0609,
        ),
    )  # fmt: skip
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=cfg.shift),
        vae=vae,
        text_encoder=te1,
        tokenizer=tok,
        text_encoder_2=te2,
        tokenizer_2=tiny_clip_tokenizer(cfg.clip_max_length),
        text_encoder_3=t5,
        tokenizer_3=tok3,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def to_canvas(images: torch.Tensor, canvas: int = 32) -> torch.Tensor:
    """MNIST digits (B, 1, 28, 28) in [−1, 1] → canvases (B, 3, S, S): padded with background (−1), grey in RGB."""
    check_tensor("images", images, "of shape (B, 1, 28, 28)")
    canvas = check_int("canvas", canvas)
    if images.ndim != 4 or images.shape[1:] != (1, MNIST_SIZE, MNIST_SIZE):
        raise ValueError(f"images must have shape (B, 1, 28, 28), got {tuple(images.shape)}")
    if canvas < MNIST_SIZE:
        raise ValueError(f"canvas must be at least 28, got {canvas}")
    lo = (canvas - MNIST_SIZE) // 2
    hi = canvas - MNIST_SIZE - lo
    return F.pad(images, (lo, hi, lo, hi), value=-1.0).expand(-1, 3, -1, -1).contiguous()  # (B, 3, S, S)


def from_canvas(images: torch.Tensor) -> torch.Tensor:
    """Pipeline output (B, 3, S, S) in [0, 1] (``output_type="pt"``) → (B, 1, 28, 28) grey in [−1, 1], the centre
    crop the classifier and the attribute measures read (float32)."""
    check_tensor("images", images, "of shape (B, 3, S, S)")
    if images.ndim != 4 or images.shape[1] != 3 or min(images.shape[-2:]) < MNIST_SIZE:
        raise ValueError(f"images must have shape (B, 3, S, S) with S >= 28, got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    top, left = (h - MNIST_SIZE) // 2, (w - MNIST_SIZE) // 2
    grey = images.float().mean(1, keepdim=True)[..., top : top + MNIST_SIZE, left : left + MNIST_SIZE]
    return (grey * 2 - 1).clamp(-1, 1)  # (B, 1, 28, 28)


def vae_loss(vae: diffusers.AutoencoderKL, x: torch.Tensor, kl_weight: float, generator: torch.Generator):
    """(loss, MSE): E‖D(z) − x‖² per pixel + kl_weight · KL(q(z|x) ‖ N(0, I)) per latent element, z ~ q(z|x)."""
    posterior = vae.encode(x).latent_dist
    z = posterior.sample(generator=generator)  # (B, 16, S/4, S/4)
    recon = vae.decode(z).sample  # (B, 3, S, S)
    mse = (recon - x).pow(2).mean()
    kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
    return mse + kl_weight * kl, mse


def flow_loss(transformer, z0: torch.Tensor, embeds: torch.Tensor, pooled: torch.Tensor, t: torch.Tensor, noise):
    """The rectified-flow loss (SD3 Eq. 1): z_t = (1 − t)·z₀ + t·ε, E‖v_θ(z_t, 1000·t, c) − (ε − z₀)‖².
    z0, noise (B, 16, h, w); t (B,) in (0, 1); embeds (B, L, D), pooled (B, P) as the pipeline builds them."""
    z_t = flow_interpolate(z0, noise, t)
    v = transformer(
        hidden_states=z_t, timestep=t * 1000, encoder_hidden_states=embeds, pooled_projections=pooled,
        return_dict=False,
    )[0]  # fmt: skip
    return (v - flow_velocity(z0, noise)).pow(2).mean()


def encoder_keep_masks(n: int, drop_prob: float, uncond_prob: float, generator: torch.Generator) -> torch.Tensor:
    """(n, 4) bools: keep CLIP-L, keep CLIP-G, keep T5 (each dropped with ``drop_prob``, independently, SD3 §5.3),
    and "not unconditional" (False with ``uncond_prob``: all three read "")."""
    keep = torch.rand(n, 3, generator=generator) >= drop_prob  # (n, 3)
    cond = torch.rand(n, 1, generator=generator) >= uncond_prob  # (n, 1)
    return torch.cat([keep | ~cond, cond], dim=1)


def _clip_states(tokenizer, encoder, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids  # (B, L_clip)
    out = encoder(ids.to(encoder.device), output_hidden_states=True)
    return out.hidden_states[-2], out[0]  # (B, L_clip, D) penultimate layer, (B, P) projected pooled


def sd3_condition(pipe, prompts: list[str], keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``StableDiffusion3Pipeline.encode_prompt`` with gradients and per-encoder dropout: (embeds (B, L_clip +
    L_t5, D), pooled (B, P)). ``keep`` (B, 4) from :func:`encoder_keep_masks` (None: keep all): a dropped CLIP reads
    "", a dropped T5 gives zeros, an unconditional row reads "" everywhere."""
    n = len(prompts)
    keep = torch.ones(n, 4, dtype=torch.bool) if keep is None else keep
    text = [p if c else "" for p, c in zip(prompts, keep[:, 3].tolist(), strict=True)]
    text_l = [t if k else "" for t, k in zip(text, keep[:, 0].tolist(), strict=True)]  # a dropped CLIP-L reads ""
    text_g = [t if k else "" for t, k in zip(text, keep[:, 1].tolist(), strict=True)]
    h1, p1 = _clip_states(pipe.tokenizer, pipe.text_encoder, text_l)
    h2, p2 = _clip_states(pipe.tokenizer_2, pipe.text_encoder_2, text_g)
    ids = pipe.tokenizer_3(
        text, padding="max_length", max_length=pipe.tokenizer_3.model_max_length, truncation=True,
        add_special_tokens=True, return_tensors="pt",
    ).input_ids  # fmt: skip
    t5 = pipe.text_encoder_3(ids.to(h1.device))[0] * keep[:, 2, None, None].to(h1)  # (B, L_t5, D_t5); 0 if dropped
    clip = torch.cat([h1, h2], dim=-1)  # (B, L_clip, 64)
    clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))  # (B, L_clip, D_t5)
    return torch.cat([clip, t5], dim=-2), torch.cat([p1, p2], dim=-1)


@torch.no_grad()
def _posterior_means(vae, canvases: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    return torch.cat(
        [vae.encode(canvases[i : i + batch_size]).latent_dist.mean for i in range(0, len(canvases), batch_size)]
    )  # (N, 16, S/4, S/4)


def _train_vae(vae, canvases: torch.Tensor, cfg: SD3StandinConfig, g: torch.Generator) -> list[float]:
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    history = []
    for step in range(cfg.vae_steps):
        x = canvases[torch.randint(0, len(canvases), (cfg.vae_batch_size,), generator=g)]
        loss, mse = vae_loss(vae, x, cfg.kl_weight, g)
        lr = warmup_cosine(step, cfg.vae_steps, 20, cfg.vae_lr, 0.1)
        optimizer_step(loss, opt, vae.parameters(), lr=lr, max_grad_norm=1.0, step=step)
        history.append(mse.item())
    return history


def train_sd3_standin(
    config: SD3StandinConfig | None = None, log=None
) -> tuple[diffusers.StableDiffusion3Pipeline, dict]:
    """Train the stand-in with fixed step counts: (pipeline with EMA weights, info).

    1. VAE on the canvases (``vae_steps``); shift_factor = mean, scaling_factor = 1/std of the posterior means.
    2. Latents s·(μ − μ_z) of ``num_images`` digits, attributes and caption bins (``bins`` in info).
    3. The three text encoders and the MMDiT jointly (``steps``): fresh captions per step with attribute-word
       dropout, per-encoder dropout (:func:`encoder_keep_masks`), logit-normal t, the flow loss; EMA of all four.
    ``log(str)`` is called every 250 steps (e.g. ``print``)."""
    cfg = config or SD3StandinConfig()
    pipe = build_sd3_standin(cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    info: dict = {}
    start = time.perf_counter()
    images, labels = load_mnist("train", limit=cfg.num_images)
    canvases = to_canvas(images, cfg.canvas)  # (N, 3, S, S)

    t0 = time.perf_counter()
    history = _train_vae(pipe.vae, canvases, cfg, g)
    info["vae_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pipe.vae.eval().requires_grad_(False)
    means = _posterior_means(pipe.vae, canvases)  # (N, 16, h, w)
    shift, scale = means.mean().item(), 1.0 / means.std().item()
    pipe.vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    latents = (means - shift) * scale
    info.update(encode_seconds=time.perf_counter() - t0, vae_final_mse=sum(history[-50:]) / len(history[-50:]),
                shift_factor=shift, scaling_factor=scale)  # fmt: skip
    if log:
        log(f"vae: {cfg.vae_steps} steps, mse {info['vae_final_mse']:.4f}, {info['vae_seconds']:.0f} s")

    attrs = attributes(images)
    bins = fit_bins(images[: cfg.bins_images], labels[: cfg.bins_images])
    encoders = nn.ModuleDict(
        {"te1": pipe.text_encoder, "te2": pipe.text_encoder_2, "te3": pipe.text_encoder_3, "mmdit": pipe.transformer}
    ).train()
    torch.manual_seed(cfg.seed + 10)
    for te in (pipe.text_encoder, pipe.text_encoder_2):
        nn.init.normal_(te.get_input_embeddings().weight, std=cfg.token_embedding_std)
    opt = torch.optim.AdamW(encoders.parameters(), lr=cfg.lr, weight_decay=0.0)
    ema = EMA(encoders, cfg.ema_decay)
    t0 = time.perf_counter()
    losses = []
    for step in range(cfg.steps):
        idx, captions = sample_caption_batch(labels, attrs, bins, cfg.batch_size, g, drop_prob=cfg.caption_drop_prob)
        keep = encoder_keep_masks(cfg.batch_size, cfg.encoder_drop_prob, cfg.uncond_prob, g)
        embeds, pooled = sd3_condition(pipe, captions, keep)
        t = logit_normal_timesteps(cfg.batch_size, cfg.logit_mean, cfg.logit_std, generator=g)  # (B,)
        noise = torch.randn(latents[idx].shape, generator=g)
        loss = flow_loss(pipe.transformer, latents[idx], embeds, pooled, t, noise)
        lr = warmup_cosine(step, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.final_lr_fraction)
        optimizer_step(loss, opt, encoders.parameters(), lr=lr, max_grad_norm=cfg.grad_clip, ema=ema, model=encoders,
                       step=step)  # fmt: skip
        losses.append(loss.item())
        if log and (step + 1) % 250 == 0:
            log(f"step {step + 1}/{cfg.steps}: loss {sum(losses[-250:]) / 250:.4f}, {time.perf_counter() - t0:.0f} s")
    info.update(transformer_seconds=time.perf_counter() - t0, final_loss=sum(losses[-100:]) / len(losses[-100:]))
    trained = ema.model
    pipe.text_encoder, pipe.text_encoder_2 = trained["te1"].eval(), trained["te2"].eval()
    pipe.text_encoder_3, pipe.transformer = trained["te3"].eval(), trained["mmdit"].eval()
    pipe.register_modules(text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2,
                          text_encoder_3=pipe.text_encoder_3, transformer=pipe.transformer)  # fmt: skip
    for module in pipe.components.values():
        if isinstance(module, nn.Module):
            module.requires_grad_(False)
    info.update(total_seconds=time.perf_counter() - start, bins=bins, losses=losses[::10])
    return pipe, info


def long_prompts(digits: torch.Tensor, generator: torch.Generator) -> list[str]:
    """One three-attribute prompt per digit (B,), e.g. "a large thick slanted seven": every word drawn at random,
    the course's word order. CLIP's 9-token window cuts them after the size word ("a large t")."""
    words = [("small", "large"), ("thin", "thick"), ("upright", "slanted")]
    pick = torch.randint(0, 2, (len(digits), 3), generator=generator)
    return [
        f"a {' '.join(w[int(c)] for w, c in zip(words, row, strict=True))} {DIGIT_NAMES[int(d)]}"
        for d, row in zip(digits.tolist(), pick, strict=True)
    ]


@torch.no_grad()
def pipeline_digits(pipe, prompts: list[str], *, seed: int = 0, batch_size: int = 100, **call) -> torch.Tensor:
    """``pipe(prompts, output_type="pt", **call)`` in batches, one ``torch.Generator`` seeded ``seed``, → (B, 1, 28,
    28) grey in [−1, 1] (:func:`from_canvas`). ``call``: height, width, num_inference_steps, guidance_scale, …"""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(prompts), batch_size):
        images = pipe(prompt=prompts[i : i + batch_size], generator=g, output_type="pt", **call).images
        out.append(from_canvas(images))
    return torch.cat(out)


def measure_prompts(pipe, prompts: list[str], digits: torch.Tensor, classifier, bins: AttributeBins, **kw) -> dict:
    """Digit adherence (the classifier) and attribute adherence (the caption words) of ``pipe`` on ``prompts``."""
    images = pipeline_digits(pipe, prompts, **kw)
    att = attribute_adherence(images, prompts, bins)
    return {
        "n": len(prompts),
        "digit_adherence": prompt_adherence(images, digits, classifier),
        "attribute_adherence": None if math.isnan(att["adherence"]) else att["adherence"],  # no attribute asked: None
        **{f"attribute_{k}": att[k] for k in ("size", "thickness", "slant") if k in att},
    }


def short_prompts(digits: torch.Tensor, generator: torch.Generator) -> list[str]:
    """One one-attribute prompt per digit (B,), e.g. "a thick seven": CLIP's window keeps the attribute word and cuts
    the digit name (9 tokens: "a thick s")."""
    words = ["small", "large", "thin", "thick", "upright", "slanted"]
    pick = torch.randint(0, len(words), (len(digits),), generator=generator)
    return [
        f"{'an' if words[int(w)] == 'upright' else 'a'} {words[int(w)]} {DIGIT_NAMES[int(d)]}"
        for d, w in zip(digits.tolist(), pick, strict=True)
    ]


def drop_t5(pipe) -> diffusers.StableDiffusion3Pipeline:
    """The same pipeline without T5 (the pipeline then feeds zeros for T5's tokens), in the pipeline's dtype."""
    no_t5 = diffusers.StableDiffusion3Pipeline.from_pipe(
        pipe, text_encoder_3=None, tokenizer_3=None, dtype=pipe.transformer.dtype
    )
    no_t5.set_progress_bar_config(disable=True)
    return no_t5


def t5_comparison(pipe, classifier, bins: AttributeBins, *, n: int = 200, seeds=(0, 1), **call) -> dict:
    """T5 kept against T5 dropped, paired (same prompts, same noise), on long prompts (three attribute words: CLIP
    sees them cut) and short ones (one word: CLIP sees them whole), for each seed: digit and attribute adherence,
    the differences kept − dropped, and their mean and half-range over the seeds (the noise estimate)."""
    n = check_int("n", n)
    no_t5 = drop_t5(pipe)
    out: dict = {"n_per_seed": n, "seeds": list(seeds), "call": {k: v for k, v in call.items()}}
    for kind, make in (("long", long_prompts), ("short", short_prompts)):
        runs = []
        for seed in seeds:
            digits = torch.arange(n) % 10
            prompts = make(digits, torch.Generator().manual_seed(1000 + seed))
            kept = measure_prompts(pipe, prompts, digits, classifier, bins, seed=seed, **call)
            dropped = measure_prompts(no_t5, prompts, digits, classifier, bins, seed=seed, **call)
            diff = {k: kept[k] - dropped[k] for k in kept if k != "n"}
            runs.append({"seed": seed, "t5": kept, "no_t5": dropped, "t5_minus_no_t5": diff})
        summary = {}
        for k in runs[0]["t5_minus_no_t5"]:
            vals = [r["t5_minus_no_t5"][k] for r in runs]
            summary[k] = {"mean": sum(vals) / len(vals), "half_range": (max(vals) - min(vals)) / 2}
        out[kind] = {"example_prompt": make(torch.tensor([7]), torch.Generator().manual_seed(0))[0], "runs": runs,
                     "t5_minus_no_t5": summary}  # fmt: skip
    return out


BINS_FILE = "caption_bins.json"
RECIPE_FILE = "recipe.json"


def save_sd3_standin(pipe, bins: AttributeBins, directory: str | os.PathLike, recipe: dict | None = None) -> Path:
    """``save_pretrained`` (safetensors) plus ``caption_bins.json`` and ``recipe.json``, written into a temporary
    sibling folder and swapped into place whole."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(directory)
    pipe.save_pretrained(tmp, safe_serialization=True)
    write_json_atomic(tmp / BINS_FILE, bins.to_dict())
    if recipe is not None:
        write_json_atomic(tmp / RECIPE_FILE, recipe)
    swap_folder(tmp, directory)
    return directory


def load_bins(directory: str | os.PathLike) -> AttributeBins:
    """The caption bins the stand-in in ``directory`` was trained with."""
    return AttributeBins.from_dict(json.loads((Path(directory) / BINS_FILE).read_text()))
