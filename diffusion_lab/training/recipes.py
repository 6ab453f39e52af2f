"""The course's tested training recipes, shared by the notebooks and ``benchmarks/cpu_train.py``: the latent
text-to-image U-Net (tiny SD) and the latent rectified-flow MMDiT (tiny SD3), with their shared training loop.

A recipe is a model config plus a training config plus the scheduler they were trained with; the notebook and the
benchmark call the same function, so the figures in docs/benchmarks.md are the notebook's figures. Loss: the v target
v = √ᾱ_t ε − √(1−ᾱ_t) z_0 (Salimans & Ho 2022, §4) for the U-Net, ε − z_0 on the straight path for the MMDiT (SD3
Eq. 1). The pixel-space MNIST recipe (:mod:`.recipes_pixel`) and saving / loading the shipped models
(:mod:`.tiny_sd_io`) live in their own modules.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from diffusion_lab.maths.diffusion import PREDICTION_TYPES, q_sample
from diffusion_lab.maths.flow import flow_interpolate, flow_velocity, logit_normal_timesteps, shift_sigmas
from diffusion_lab.maths.guidance import drop_condition
from diffusion_lab.mnist.captions import AttributeBins, attributes, captions_for, fit_bins
from diffusion_lab.mnist.data import load_mnist
from diffusion_lab.models.autoencoder import AutoencoderConfig, AutoencoderKL
from diffusion_lab.models.mmdit import MMDiT, MMDiTConfig, pad_to_patch
from diffusion_lab.models.text_encoder import TextEncoder, TextEncoderConfig, WordTokenizer
from diffusion_lab.models.unet import UNet, UNetConfig
from diffusion_lab.pipelines.stable_diffusion import TinyStableDiffusionPipeline
from diffusion_lab.pipelines.stable_diffusion_3 import TinySD3Pipeline
from diffusion_lab.schedulers.scheduling_ddim import DDIMScheduler
from diffusion_lab.schedulers.scheduling_ddpm import DDPMScheduler
from diffusion_lab.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from diffusion_lab.training.autoencoder import train_autoencoder
from diffusion_lab.training.loop import EMA, check_config_fields, optimizer_step, warmup_cosine
from diffusion_lab.training.loss import min_snr_weight, training_target
from diffusion_lab.utils.errors import check_choice
from diffusion_lab.utils.progress import tqdm
from diffusion_lab.utils.settings import pick

__all__ = [
    "flow_matching_loss",
    "LatentTextTrainConfig",
    "latent_text_recipe",
    "train_latent_text2img",
    "LatentFlowTrainConfig",
    "latent_flow_recipe",
    "train_latent_flow",
]

# Why these choices (measured on this 2-thread CPU, November 2026; benchmarks/cpu_train.py --model latent; the A/B
# runs at fixed step counts, n = 1000, DDIM-25, are summarised in benchmarks/results/latent_ablation.md):
# - everything inside the budget: autoencoder 10 s, encoding 8,000 training images and fitting the caption bins
#   ~5 s (encoding all 60,000 would take ~35 s), the denoiser the remaining ~105 s;
# - the autoencoder folds 2×2 pixels into channels first (28×28×1 → 14×14×4), then one stride-2 level of 16
#   channels: 7×7×4 latents, 27 k parameters, ~350 steps of batch 16 in 10 s. Its decoder is Bernoulli (tanh output,
#   binary cross-entropy): MNIST pixels are nearly black or white, and the Gaussian/MSE decoder's blurred strokes
#   scored FID-MNIST ~520 after 15 s (reconstructions of 1,000 test digits) where the Bernoulli one scores ~68 after
#   10 s and ~49 after 20 s. 10 s and ~190 more denoiser steps beat 20 s: the denoiser is the scarcer resource;
# - U-Net on 7×7×4 latents: one level of 64 channels, blocks_per_level=0, so 3 ResBlocks and one SpatialTransformer
#   (self- and cross-attention) in the middle (0.45 M parameters). Attention at the level too (4 transformers) or
#   96 channels cost 2–5× per step, and in 100 s steps count more than width (48 channels: more steps, worse);
# - the pooled text (the <eos> state) is added to the time embedding (SDXL): the digit reaches every ResBlock;
# - word embeddings N(0, 1) instead of CLIP's N(0, 0.02): with the tiny init every prompt's pooled state is nearly
#   the same at the start and the text path learns slowly (digit adherence 0.19 instead of 0.77 at 966 steps);
# - SD's own latent schedule, scaled_linear β from 0.00085 to 0.012: at 900 steps, same seed, n = 500, digit
#   adherence 0.70 / 0.75 at w = 2 / 3 against 0.51 / 0.60 with the cosine schedule (FID alike);
# - the plain v-prediction loss, *no* Min-SNR weighting: Min-SNR-γ (γ = 5) down-weights the noisy timesteps, which
#   are the ones where the prompt decides which digit appears; without it digit adherence at w = 2 rose from 0.77
#   to 0.94 at the same 966 steps (n = 500), FID-MNIST fell from 316 to 147. ε-prediction was far worse (0.36);
# - batch 32 (64 at equal time: about as good; 16: worse), fused AdamW 3e-3 (1.5e-3, 2e-3 and 4.5e-3 worse),
#   cosine decay over the *time* budget to half the peak (to 10 %: worse), EMA 0.99 with warm-up (a run of ~1,100
#   steps; 0.9 and 0.995 alike), 5 % empty captions (10 %: worse adherence, and w ≥ 2 is used anyway), attribute
#   words dropped with p = 0.25 so that "a seven" and "a thick seven" are both captions the model has seen (0.5:
#   fewer attribute-bearing captions, "slanted" learned worse);
# - what limits it: FID. The samples' FID-MNIST cannot go below the autoencoder's own reconstructions (~68 after
#   10 s of training; the target, 3× the floor, is ~51 at n = 1000), and the denoiser is far from converged: 3,000
#   steps (3× the budget) with a 40 s autoencoder reach FID 57 at w = 1.5 (benchmarks/results/latent_ablation.md).
LATENT_SCHEDULE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)  # SD 1.x–2.x, SDXL


@dataclass
class LatentTextTrainConfig:
    """Budgets and optimiser settings of :func:`train_latent_text2img` (the networks' shapes are in their configs).

    Every phase runs inside ``budget_s`` seconds of wall-clock time, counted from the call: the autoencoder gets
    ``ae_seconds``, encoding the training set and writing the captions take what they take (a few seconds), and the
    denoiser (U-Net and text encoder, trained jointly) gets whatever is left.
    """

    budget_s: float = 120.0  # total training wall time: autoencoder + data preparation + diffusion
    num_images: int | None = 8_000  # the first N MNIST training images (None: all 60,000); encoding costs time
    bins_images: int = 8_000  # caption bins fitted on the first N of them
    ae_seconds: float = 10.0
    ae_steps: int | None = None  # also stop the autoencoder after this many steps (reproducible on any machine)
    max_steps: int | None = None  # also stop the denoiser after this many steps; the lr schedule then follows steps
    ae_batch_size: int = 16
    ae_lr: float = 3e-3
    kl_weight: float = 1e-3
    caption_drop_prob: float = 0.25  # each attribute word dropped independently, so short prompts work
    cond_drop_prob: float = 0.05  # whole caption → "" (the unconditional prompt of classifier-free guidance)
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    final_lr_fraction: float = 0.5  # cosine decay over the diffusion phase's *time* to this fraction of lr
    grad_clip: float | None = 1.0
    prediction_type: str = "v_prediction"
    min_snr_gamma: float | None = None  # Min-SNR-γ weighting hurt here (see the notes above the class)
    ema_decay: float = 0.99
    token_embedding_std: float | None = 1.0  # re-initialise the word embeddings N(0, σ²) (None: CLIP's σ = 0.02)
    seed: int = 0

    def __post_init__(self):
        check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        check_config_fields(
            self, counts=("bins_images", "ae_batch_size", "batch_size"),
            optional_counts=("num_images", "ae_steps", "max_steps"), indices=("warmup_steps", "seed"),
            positive=("budget_s", "ae_seconds", "ae_lr", "lr"),
            non_negative=("kl_weight", "weight_decay", "grad_clip", "min_snr_gamma", "token_embedding_std"),
            fractions=("caption_drop_prob", "cond_drop_prob", "final_lr_fraction"),
            decays=("ema_decay",),
        )  # fmt: skip
        if not self.budget_s > self.ae_seconds > 0:
            raise ValueError(f"need budget_s > ae_seconds > 0, got {self.budget_s} and {self.ae_seconds}")

    def to_dict(self) -> dict:
        return asdict(self)

    def lr_at(self, step: int, progress: float | None = None) -> float:
        """Linear warm-up over ``warmup_steps``, then cosine decay to ``final_lr_fraction``·lr (:func:`warmup_cosine`)
        over ``max_steps``, or over the share ``progress`` ∈ [0, 1] of the time budget when it is given."""
        if progress is None and self.max_steps is None:
            raise ValueError("lr_at needs progress (the share of the time budget) when max_steps is None")
        total = self.max_steps or 0  # unused when progress is given
        return warmup_cosine(step, total, self.warmup_steps, self.lr, self.final_lr_fraction, progress=progress)


def latent_text_recipe(
    budget_s: float = 120.0, seed: int = 0
) -> tuple[AutoencoderConfig, TextEncoderConfig, UNetConfig, LatentTextTrainConfig]:
    """The latent text-to-image MNIST model of notebook 07 (the tiny SD): (autoencoder, text encoder, U-Net, training) configs.

    Quick mode (``DIFFUSION_LAB_SMOKE=1``) shrinks data and budgets so that the whole recipe runs in seconds.
    """
    vocab_size = WordTokenizer.from_texts([]).vocab_size  # the caption vocabulary is fixed (text.BASE_WORDS)
    width = 64
    vae = AutoencoderConfig(
        channels=(16,), patch_size=2, squash_output=True, latent_channels=4, extra={"recipe": "latent_text"}
    )  # 28×28 → (2×2 folding) 14×14 → (one stride-2 level) 7×7×4; Bernoulli decoder
    text = TextEncoderConfig(
        vocab_size=vocab_size, hidden_size=width, num_layers=2, num_heads=4, max_position=8,
        extra={"recipe": "latent_text"},
    )  # fmt: skip
    unet = UNetConfig(
        in_channels=4,
        out_channels=4,
        channels=(64,),
        attention_levels=(False,),  # only the middle block attends (self + cross): 3 ResBlocks, 1 SpatialTransformer
        blocks_per_level=0,
        time_embed_dim=128,
        heads=4,
        cross_attention_dim=width,
        pooled_dim=width,
        extra={"recipe": "latent_text", "schedule": LATENT_SCHEDULE},
    )
    train = LatentTextTrainConfig(
        budget_s=pick(budget_s, 4.0),
        num_images=pick(8_000, 1000),
        bins_images=pick(8_000, 1000),
        ae_seconds=pick(10.0, 1.0),
        batch_size=32,
        lr=3e-3,
        warmup_steps=20,
        ema_decay=0.99,
        seed=seed,
    )
    return vae, text, unet, train


def _latent_schedulers(unet_config: UNetConfig, prediction_type: str) -> tuple[DDPMScheduler, DDIMScheduler]:
    kw = dict(unet_config.extra.get("schedule", LATENT_SCHEDULE), prediction_type=prediction_type, clip_sample=False)
    return DDPMScheduler(**kw), DDIMScheduler(timestep_spacing="trailing", **kw)


@torch.no_grad()
def _encode_means(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Posterior means μ (N, L, 7, 7) of ``images`` (N, 1, 28, 28), unscaled."""
    return torch.cat(
        [vae.encode(images[i : i + batch_size]).latent_dist.mode() for i in range(0, len(images), batch_size)]
    )


def train_latent_text2img(
    budget_s: float = 120.0,
    seed: int = 0,
    progress: bool = True,
    *,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    train_config: LatentTextTrainConfig | None = None,
    unet_config: UNetConfig | None = None,
    text_config: TextEncoderConfig | None = None,
    vae_config: AutoencoderConfig | None = None,
    callback: Callable[[int, float], None] | None = None,
    keep_raw: bool = False,
) -> tuple[TinyStableDiffusionPipeline, dict]:
    """Train the tiny Stable Diffusion of :func:`latent_text_recipe` from scratch within ``budget_s`` seconds.

    1. Autoencoder (``ae_seconds``); s = 1/std of the posterior means (:func:`estimate_scaling_factor`).
    2. Data (counted in the budget): the posterior means μ of every training image, times s, encoded once (the
       denoiser learns the distribution of s·μ; the decoder maps μ back to the digit); attributes and caption bins.
    3. Text encoder + U-Net jointly on the rest of the budget: each step draws a batch, writes fresh captions with
       attribute-word dropout, replaces 5 % of them by "" (:func:`drop_condition` on the token ids), and takes one
       AdamW step on the v-prediction loss (Min-SNR-weighted if ``min_snr_gamma``); EMA of both networks.

    Returns the pipeline (EMA weights, eval mode, DDIM with the training schedule) and ``info``: seconds per phase,
    steps, images per second, final loss, parameter counts, the caption ``bins`` (for attribute adherence) and
    the configs. With ``keep_raw``, ``info["raw"]`` is a second pipeline on the same autoencoder with the raw
    weights the optimiser left (no EMA) for the text encoder and U-Net (:func:`diffusion_lab.training.surgery.ema_vs_raw`).
    """

    start = time.perf_counter()
    vae_cfg, text_cfg, unet_cfg, cfg = latent_text_recipe(budget_s, seed)
    vae_cfg, text_cfg, unet_cfg = vae_config or vae_cfg, text_config or text_cfg, unet_config or unet_cfg
    cfg = train_config or cfg
    if not isinstance(cfg, LatentTextTrainConfig):
        raise TypeError(f"train_config must be a LatentTextTrainConfig or None, got {type(train_config).__name__}")
    deadline = start + cfg.budget_s
    if images is None:
        images, labels = load_mnist("train", limit=cfg.num_images)
    elif labels is None:
        raise ValueError("pass labels (N,) with images")
    info: dict = {"load_seconds": time.perf_counter() - start}

    # 1. the autoencoder
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    vae = AutoencoderKL(vae_cfg)
    history = train_autoencoder(
        vae, images, seconds=cfg.ae_seconds, steps=cfg.ae_steps, batch_size=cfg.ae_batch_size, lr=cfg.ae_lr, kl_weight=cfg.kl_weight,
        seed=seed, progress=progress,
    )  # fmt: skip
    info.update(ae_seconds=time.perf_counter() - t0, ae_steps=len(history), ae_recon=history[-1]["recon"])

    # 2. latents, attributes, caption bins, tokenizer
    t0 = time.perf_counter()
    means = _encode_means(vae, images)  # (N, L, 7, 7)
    s = 1.0 / means.double().std().item()  # = estimate_scaling_factor(vae, images, sample_posterior=False)
    vae.config.scaling_factor = s
    latents = means * s
    attrs = attributes(images)
    bins = fit_bins(images[: cfg.bins_images], labels[: cfg.bins_images])
    tokenizer = WordTokenizer.from_texts([], model_max_length=text_cfg.max_position)
    info.update(encode_seconds=time.perf_counter() - t0, scaling_factor=s)

    # 3. text encoder + U-Net, jointly
    t0 = time.perf_counter()
    torch.manual_seed(seed + 1)
    text_encoder, unet = TextEncoder(text_cfg), UNet(unet_cfg)
    ddpm, ddim = _latent_schedulers(unet_cfg, cfg.prediction_type)
    ab = ddpm.alphas_cumprod.float()  # (T,)

    def diffusion_loss(unet: UNet, z0: torch.Tensor, text, mask: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        t = torch.randint(0, len(ab), (len(z0),), generator=g)  # (B,)
        noise = torch.randn(z0.shape, generator=g)
        z_t = q_sample(z0, t, noise, ab)
        out = unet(
            z_t, t, encoder_hidden_states=text.last_hidden_state, encoder_attention_mask=mask,
            pooled_text=text.pooler_output if unet_cfg.pooled_dim else None,
        )  # fmt: skip
        target = training_target(cfg.prediction_type, z0, noise, ab[t][:, None, None, None])
        per_sample = (out - target).pow(2).flatten(1).mean(1)  # (B,)
        if cfg.min_snr_gamma is not None:
            per_sample = per_sample * min_snr_weight(ab[t] / (1 - ab[t]), cfg.min_snr_gamma, cfg.prediction_type)
        return per_sample.mean()

    ema, losses, step = _train_text_denoiser(
        text_encoder, unet, diffusion_loss, latents, labels, attrs, bins, tokenizer, text_cfg.max_position, cfg,
        seed=seed, seconds=max(deadline - time.perf_counter(), 1e-3), progress=progress,
        desc="text encoder + U-Net", callback=callback,
    )  # fmt: skip
    diffusion_seconds = time.perf_counter() - t0
    info.update(
        diffusion_seconds=diffusion_seconds,
        diffusion_steps=step,
        diffusion_steps_per_s=step / diffusion_seconds,
        diffusion_images_per_s=step * cfg.batch_size / diffusion_seconds,
        final_loss=sum(losses[-50:]) / min(50, len(losses)),
        total_seconds=time.perf_counter() - start,
    )
    if keep_raw:  # the modules _train_text_denoiser trained in place: the last iterate θ, not the average θ_ema
        raw_text, raw_unet = text_encoder.eval().requires_grad_(False), unet.eval().requires_grad_(False)
        raw_ddim = _latent_schedulers(unet_cfg, cfg.prediction_type)[1]  # its own scheduler: set_timesteps mutates
        info["raw"] = TinyStableDiffusionPipeline(vae, raw_text, tokenizer, raw_unet, raw_ddim)
    text_encoder = ema.model["text_encoder"].eval()
    unet = ema.model["denoiser"].eval()
    vae.eval().requires_grad_(False)
    pipe = TinyStableDiffusionPipeline(vae, text_encoder, tokenizer, unet, ddim)
    info.update(
        parameters=pipe.num_parameters(),
        bins=bins,
        losses=losses,
        configs={
            "vae": vae.config.to_dict(), "text_encoder": text_cfg.to_dict(), "unet": unet_cfg.to_dict(),
            "train": cfg.to_dict(),
        },
    )  # fmt: skip
    return pipe, info


# Why these choices (A/B runs at a fixed 1,000 steps, n = 1,000 prompts, Euler-8, w = 2; digit / attribute adherence /
# FID-MNIST; the shipped tiny_sd autoencoder; November 2026):
# - SD3's family at depth 2 (hidden 128, 2 heads, 1.3 M parameters), 2×2 patches of the zero-padded 8×8 latents:
#   16 image + 8 text tokens, so a step costs less than the U-Net's; depth 4 at width 128 learned more per step
#   (0.978 / 0.942 / 175) but costs ~1.7× as much per step;
# - logit-normal t (SD3 §3.1) against uniform t: 0.960 / 0.942 / 233 against 0.915 / 0.942 / 328; its mean 0.5
#   (more weight on the noisy half, where the digit is decided; the Min-SNR lesson of the U-Net recipe again)
#   0.976 / 0.965 / 220; std 0.5 (too little weight near t = 0 and 1) 0.900 / 0.875 / 277;
# - lr 3e-3 as the U-Net (1e-3: 0.948 / 0.935 / 296; 6e-3: diverged to 0.46), EMA 0.99 (0.9 alike);
# - sampling shift 1 (shift 3 at 8 steps: adherence +0.01, FID alike; SD3 needs 3 at 1024², our 7×7 latents none).
TIMESTEP_SAMPLING = ("logit_normal", "uniform")


@dataclass
class LatentFlowTrainConfig:
    """Training of :func:`train_latent_flow`: text encoder + MMDiT on the latents of an existing autoencoder.

    The caption, dropout and optimiser fields mean what they mean in :class:`LatentTextTrainConfig` (same values),
    so the only differences from the U-Net recipe are the ones SD3 made: the network, the straight path, the
    velocity target and the timestep density.
    """

    budget_s: float = 105.0  # the U-Net recipe's denoiser time (120 s minus its autoencoder and data steps)
    max_steps: int | None = None  # also stop after this many steps; the lr schedule then follows steps
    num_images: int | None = 8_000
    bins_images: int = 8_000
    caption_drop_prob: float = 0.25
    cond_drop_prob: float = 0.05
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    final_lr_fraction: float = 0.5
    grad_clip: float | None = 1.0
    ema_decay: float = 0.99
    token_embedding_std: float | None = 1.0
    timestep_sampling: str = "logit_normal"  # SD3 §3.1: t = sigmoid(u), u ~ N(m, s²); or "uniform" t ~ U(0, 1)
    logit_mean: float = 0.5  # SD3's best was (0, 1); here 0.5 was better (more weight on the noisy half, see below)
    logit_std: float = 1.0
    shift: float = 1.0  # the sampling scheduler's shift (FlowMatchEulerDiscreteScheduler(shift=...))
    seed: int = 0

    def __post_init__(self):
        check_choice("timestep_sampling", self.timestep_sampling, TIMESTEP_SAMPLING)
        check_config_fields(
            self, counts=("bins_images", "batch_size"), optional_counts=("num_images", "max_steps"),
            indices=("warmup_steps", "seed"), positive=("budget_s", "lr", "logit_std"),
            non_negative=("weight_decay", "grad_clip", "token_embedding_std"),
            fractions=("caption_drop_prob", "cond_drop_prob", "final_lr_fraction"),
            decays=("ema_decay",),
        )  # fmt: skip
        shift_sigmas(0.5, self.shift)  # validates the shift

    def to_dict(self) -> dict:
        return asdict(self)

    lr_at = LatentTextTrainConfig.lr_at

    def sample_t(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n training times (n,) in (0, 1) from the configured density."""
        if self.timestep_sampling == "logit_normal":
            return logit_normal_timesteps(n, self.logit_mean, self.logit_std, generator=generator)
        return torch.rand(n, generator=generator)


def latent_flow_recipe(
    text_config: TextEncoderConfig, latent_channels: int = 4, budget_s: float = 105.0, seed: int = 0
) -> tuple[MMDiTConfig, LatentFlowTrainConfig]:
    """The MMDiT of notebook 08 and its training config, for text states of ``text_config``'s width.

    A member of SD3's family (``MMDiTConfig.from_depth``: hidden size 64·depth, depth heads), 2×2 patches of the
    zero-padded 8×8 latents (16 image tokens + 8 text tokens).
    """
    width = text_config.hidden_size
    model = MMDiTConfig.from_depth(
        2, in_channels=latent_channels, out_channels=latent_channels, sample_size=8, patch_size=2,
        joint_attention_dim=width, pooled_projection_dim=width, max_text_tokens=text_config.max_position,
        extra={"recipe": "latent_flow"},
    )  # fmt: skip
    train = LatentFlowTrainConfig(
        budget_s=pick(budget_s, 3.0), num_images=pick(8_000, 1000), bins_images=pick(8_000, 1000), seed=seed
    )
    return model, train


def flow_matching_loss(
    model: MMDiT,
    z0: torch.Tensor,
    text,
    mask: torch.Tensor,
    g: torch.Generator,
    *,
    sample_t: Callable[[int, torch.Generator], torch.Tensor],
    pooled: bool,
) -> torch.Tensor:
    """The rectified-flow loss of one batch (SD3 Eq. 1 and §3): t ~ ``sample_t``, then ε ~ N(0, I) from ``g``,
    z_t = (1 − t)·z_0 + t·ε, and E‖v_θ(z_t, t, c) − (ε − z_0)‖². z0: (B, L, h, w); ``text``: the text encoder's
    output (``last_hidden_state``, ``pooler_output`` when ``pooled``)."""
    h, w = z0.shape[-2:]
    t = sample_t(len(z0), g)  # (B,) in (0, 1)
    noise = torch.randn(z0.shape, generator=g)
    z_t = flow_interpolate(z0, noise, t)  # (1 − t)·z_0 + t·ε
    v = model(
        pad_to_patch(z_t, model.config.patch_size), t, encoder_hidden_states=text.last_hidden_state,
        encoder_attention_mask=mask, pooled_projections=text.pooler_output if pooled else None,
    )[..., :h, :w]  # fmt: skip
    return (v - flow_velocity(z0, noise)).pow(2).mean()  # target ε − z_0


def train_latent_flow(
    vae: AutoencoderKL,
    budget_s: float = 105.0,
    seed: int = 0,
    progress: bool = True,
    *,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    train_config: LatentFlowTrainConfig | None = None,
    model_config: MMDiTConfig | None = None,
    text_config: TextEncoderConfig | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> tuple[TinySD3Pipeline, dict]:
    """Train a text encoder and an MMDiT with rectified flow on the latents of ``vae`` (SD3's recipe, tiny).

    1. Data: the posterior means of the training images times the autoencoder's ``scaling_factor`` (the same
       latents the U-Net recipe trains on), attributes and caption bins.
    2. Each step: t from the logit-normal density (SD3 §3.1), z_t = (1 − t)·z_0 + t·ε, and the loss
       ‖v_θ(z_t, t, c) − (ε − z_0)‖² (SD3 eq. 1 with the velocity target); the 7×7 latents are zero-padded to 8×8
       for the 2×2 patches and the prediction cropped back. Captions, dropout, optimiser and EMA as the U-Net recipe.

    Returns the pipeline (EMA weights, ``FlowMatchEulerDiscreteScheduler(shift=cfg.shift)``) and ``info`` as
    :func:`train_latent_text2img` does (``diffusion_seconds``, ``diffusion_steps``, ``losses``, ``bins``, …).
    """

    if train_config is not None and not isinstance(train_config, LatentFlowTrainConfig):
        raise TypeError(f"train_config must be a LatentFlowTrainConfig or None, got {type(train_config).__name__}")
    start = time.perf_counter()
    text_cfg = text_config or latent_text_recipe()[1]
    model_cfg, cfg = latent_flow_recipe(text_cfg, vae.config.latent_channels, budget_s, seed)
    model_cfg, cfg = model_config or model_cfg, train_config or cfg
    if images is None:
        images, labels = load_mnist("train", limit=cfg.num_images)
    elif labels is None:
        raise ValueError("pass labels (N,) with images")
    vae = vae.eval().requires_grad_(False)
    latents = _encode_means(vae, images) * vae.config.scaling_factor  # (N, L, 7, 7)
    attrs = attributes(images)
    bins = fit_bins(images[: cfg.bins_images], labels[: cfg.bins_images])
    tokenizer = WordTokenizer.from_texts([], model_max_length=text_cfg.max_position)
    info: dict = {"data_seconds": time.perf_counter() - start}

    t0 = time.perf_counter()
    torch.manual_seed(seed + 1)
    text_encoder, model = TextEncoder(text_cfg), MMDiT(model_cfg)
    flow_loss = functools.partial(
        flow_matching_loss, sample_t=cfg.sample_t, pooled=bool(model_cfg.pooled_projection_dim)
    )

    ema, losses, step = _train_text_denoiser(
        text_encoder, model, flow_loss, latents, labels, attrs, bins, tokenizer, text_cfg.max_position, cfg,
        seed=seed, seconds=cfg.budget_s, progress=progress, desc="text encoder + MMDiT", callback=callback,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    info.update(
        diffusion_seconds=seconds, diffusion_steps=step, diffusion_steps_per_s=step / seconds,
        diffusion_images_per_s=step * cfg.batch_size / seconds, final_loss=sum(losses[-50:]) / min(50, len(losses)),
        total_seconds=time.perf_counter() - start,
    )  # fmt: skip
    pipe = TinySD3Pipeline(
        vae, ema.model["text_encoder"].eval(), tokenizer, ema.model["denoiser"].eval(),
        FlowMatchEulerDiscreteScheduler(shift=cfg.shift),
    )  # fmt: skip
    info.update(
        parameters=pipe.num_parameters(), bins=bins, losses=losses,
        configs={"text_encoder": text_cfg.to_dict(), "transformer": model_cfg.to_dict(), "train": cfg.to_dict()},
    )  # fmt: skip
    return pipe, info


def _train_text_denoiser(
    text_encoder: TextEncoder,
    denoiser: nn.Module,
    loss_fn: Callable,
    latents: torch.Tensor,
    labels: torch.Tensor,
    attrs: dict,
    bins: AttributeBins,
    tokenizer: WordTokenizer,
    max_length: int,
    cfg,
    *,
    seed: int,
    seconds: float,
    progress: bool,
    desc: str,
    callback: Callable[[int, float], None] | None,
) -> tuple[EMA, list[float], int]:
    """The training loop shared by the U-Net and the MMDiT recipes: text encoder and denoiser trained jointly.

    Each step draws a batch of latents z_0 (B, L, h, w), writes fresh captions with attribute-word dropout, replaces
    ``cfg.cond_drop_prob`` of them by "" (:func:`drop_condition`), encodes them and takes one AdamW step on
    ``loss_fn(denoiser, z_0, text_output, mask, generator)``; EMA of both networks (``ema.model["text_encoder"]``,
    ``ema.model["denoiser"]``). Stops after ``seconds`` or ``cfg.max_steps``, whichever comes first; the learning
    rate follows ``cfg.lr_at`` over the steps (with ``max_steps``) or over the time.
    """

    t0 = time.perf_counter()
    null_ids = tokenizer("", max_length=max_length)["input_ids"]  # (1, M): <bos> <eos> <pad>…
    if cfg.token_embedding_std is not None:  # distinct words from the first step: the text encoder trains from scratch
        nn.init.normal_(text_encoder.token_embedding.weight, std=cfg.token_embedding_std)
    both = nn.ModuleDict({"text_encoder": text_encoder, "denoiser": denoiser}).train()
    # fused: one kernel for all tensors (1.7 ms instead of 11 ms a step here, ~10 % of a step)
    optimizer = torch.optim.AdamW(both.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    ema = EMA(both, cfg.ema_decay)
    g = torch.Generator().manual_seed(seed)
    n = len(latents)
    losses: list[float] = []
    step = 0
    bar = tqdm(desc=desc, disable=not progress, mininterval=1.0)
    while True:
        now = time.perf_counter()
        if (now - t0 >= seconds and step > 0) or (cfg.max_steps is not None and step >= cfg.max_steps):
            break
        idx = torch.randint(0, n, (cfg.batch_size,), generator=g)
        z0 = latents[idx]  # (B, L, h, w)
        captions = captions_for(
            labels[idx], None, bins, attrs={k: v[idx] for k, v in attrs.items()}, generator=g,
            drop_prob=cfg.caption_drop_prob,
        )  # fmt: skip
        ids = tokenizer(captions, max_length=max_length)["input_ids"]  # (B, M)
        ids = drop_condition(ids, null_ids, cfg.cond_drop_prob, g)
        mask = ids != tokenizer.pad_token_id  # (B, M)
        text = text_encoder(ids, attention_mask=mask)
        loss = loss_fn(denoiser, z0, text, mask, g)
        lr = cfg.lr_at(step, None if cfg.max_steps else (now - t0) / seconds)  # over the steps, or the time
        optimizer_step(
            loss, optimizer, both.parameters(), lr=lr, max_grad_norm=cfg.grad_clip, ema=ema, model=both, step=step
        )
        step += 1
        losses.append(loss.item())
        bar.update(1)
        if step % 25 == 0:
            bar.set_postfix(loss=f"{sum(losses[-25:]) / 25:.4f}", refresh=False)
        if callback is not None:
            callback(step, losses[-1])
    bar.close()
    return ema, losses, step
