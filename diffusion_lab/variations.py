"""Image variations: a denoiser conditioned on an *image embedding*, as unCLIP and Stable unCLIP do, at MNIST scale.

Notation
--------
=========================  =========  ================================================================================
code                       symbol     meaning
=========================  =========  ================================================================================
``images``                 x          reference digits (B, 1, 28, 28) in [−1, 1]
``image_embeds``           f(x)       the image embedding (B, D): the frozen MNIST classifier's penultimate features
                                      (``MnistClassifier.features``, D = 128), standing in for CLIP's image tower
``mean``, ``std``          μ, σ       per-feature mean and standard deviation (1, D) of f over MNIST train
                                      (:class:`EmbeddingNormalizer`, diffusers' ``StableUnCLIPImageNormalizer``)
``noise_level``            k          noise augmentation of the embedding, an integer 0 … K − 1 (K = 1000)
``aug_alphas_cumprod``     ᾱᵃ_k       the augmentation schedule: cosine (``squaredcos_cap_v2``), as SD 2.1 unCLIP's
                                      ``image_noising_scheduler``
``class_labels``           c          (B, 2D) = [f_k ; e(k)], what the U-Net receives (diffusers' argument name)
``latents``                z_t        the diffusion state (B, 4, 7, 7) in the tiny SD autoencoder's latent space
``guidance_scale``         w          ṽ = v_∅ + w·(v_c − v_∅) with c_∅ = 0; w = 1: no guidance, w = 0: unconditional
``num_images_per_prompt``  n          variations per reference image
=========================  =========  ================================================================================

The idea (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with CLIP Latents", unCLIP):
a decoder P(x | z_i) learns to invert an image encoder, z_i = f(x). Decoding the embedding of a *given* image
draws new images that share what the embedding holds (for CLIP: content and style; for our classifier: mostly the
digit and its rough shape) and differ in everything it discarded: these are "variations" (unCLIP §3.1).

The conditioning path (unCLIP §2.1: "projecting and adding CLIP embeddings to the existing timestep embedding";
its Stable Diffusion form is diffusers' ``StableUnCLIPImg2ImgPipeline.noise_image_embeddings``)::

    u   = (f − μ) / σ                                 normalise               (StableUnCLIPImageNormalizer.scale)
    u_k = √ᾱᵃ_k · u + √(1 − ᾱᵃ_k) · ε,  ε ~ N(0, I)  noise augmentation      (DDPM Eq. 4: image_noising_scheduler)
    f_k = σ · u_k + μ                                 un-normalise            (StableUnCLIPImageNormalizer.unscale)
    c   = [f_k ; e(k)]                                append the noise level  (sinusoidal e, get_timestep_embedding)
    emb = MLP(e(t)) + W·c + b                         added to the U-Net's time embedding, read by every ResBlock

The noise augmentation is the "conditioning augmentation" of cascaded diffusion (Ho et al. 2022, "Cascaded
Diffusion Models for High Fidelity Image Generation"): trained on embeddings noised at random levels k (drawn
uniformly from 0 … K − 1, as Stability's ``CLIPEmbeddingNoiseAugmentation``) and told k, the model learns to
trust the embedding less the noisier it is, so k becomes a dial at sampling time: 0 = most faithful, higher = more
varied. Classifier-free guidance (Ho & Salimans 2022, Eq. 6): the whole vector c is replaced by 0 in 10 % of the
training examples (unCLIP §2.1 sets the CLIP embedding to zero 10 % of the time; diffusers' pipeline uses
``torch.zeros_like`` of c as the unconditional input).

Our U-Net's ``pooled_embed`` (``UNetConfig(pooled_dim=2D)``, a zero-initialised Linear added to the time embedding)
is diffusers' ``UNet2DConditionModel(class_embed_type="simple_projection",
projection_class_embeddings_input_dim=2D)``: ``emb = emb + Linear(class_labels)``. Stable unCLIP itself uses
``class_embed_type="projection"``, the same addition through a two-layer MLP (``TimestepEmbedding``: Linear → SiLU
→ Linear); the ResBlocks then apply SiLU and their own Linear to the sum anyway.

The denoiser works on the latents of the shipped tiny SD autoencoder (28×28 → 7×7×4, frozen), with the tiny SD's
schedule (scaled-linear β, v-prediction, DDIM with trailing spacing) and an EMA of its weights.

What differs from Stable unCLIP, besides the scale: no text at all (Stable unCLIP also takes a prompt), and each of
the n variations of a reference draws its *own* embedding noise ε (diffusers noises once per reference and repeats;
at ``noise_level=0`` the noise is negligible either way: √(1 − ᾱᵃ_0) ≈ 0.006).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from diffusion_lab.checkpoint import PretrainedModel, save_tensors_atomic, write_json_atomic
from diffusion_lab.diffusion import PREDICTION_TYPES, q_sample, velocity
from diffusion_lab.metrics import MnistClassifier, classify
from diffusion_lab.pipeline import PipelineOutput
from diffusion_lab.sampling import cfg_combine, drop_condition
from diffusion_lab.schedulers import DDIMScheduler, DDPMScheduler, randn
from diffusion_lab.schedules import check_choice
from diffusion_lab.settings import pick
from diffusion_lab.training import EMA
from diffusion_lab.unet import UNet, UNetConfig, timestep_embedding

__all__ = [
    "AUG_SCHEDULE",
    "NormalizerConfig",
    "EmbeddingNormalizer",
    "image_embedding",
    "noise_embedding",
    "VariationTrainConfig",
    "variation_recipe",
    "VariationTrainResult",
    "train_variations",
    "TinyVariationPipeline",
    "variation_scores",
]

# SD 2.1 unCLIP's image_noising_scheduler: DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
AUG_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")


# ----------------------------------------------------------------------------------------------------------------------
# The embedding and its normaliser
# ----------------------------------------------------------------------------------------------------------------------


def _check_reference_images(images: object, name: str = "image") -> torch.Tensor:
    """A non-empty float tensor (B, 1, 28, 28) with values in [−1, 1], or a ValueError that says what to do."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor (B, 1, 28, 28) in [-1, 1], got {type(images).__name__}")
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        hint = ""
        if images.ndim == 2:
            hint = "; one digit (28, 28): pass image[None, None]"
        elif images.ndim == 3:
            hint = "; one digit (1, 28, 28): pass image[None]"
        elif images.ndim == 4 and images.shape[1] != 1:
            hint = f"; it has {images.shape[1]} channels and MNIST digits have 1 (RGB: average the channels)"
        raise ValueError(f"{name} must have shape (B, 1, 28, 28), got {tuple(images.shape)}{hint}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (B = 0): give at least one reference image")
    if not images.is_floating_point():
        raise ValueError(
            f"{name} must be floating point in [-1, 1], got dtype {images.dtype} "
            "(uint8 pixels: convert with diffusion_lab.data.to_unit_range)"
        )
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or inf values")
    lo, hi = images.min().item(), images.max().item()
    if lo < -1.001 or hi > 1.001:
        raise ValueError(
            f"{name} values must be in [-1, 1], got {lo:.3g} to {hi:.3g} "
            "(0..255 pixels: use diffusion_lab.data.to_unit_range)"
        )
    return images


def image_embedding(classifier: MnistClassifier, images: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """f(x): the classifier's penultimate features (B, D) for ``images`` (B, 1, 28, 28) in [−1, 1], on their device.

    The classifier plays CLIP's image tower: frozen, eval mode, no gradients (:func:`diffusion_lab.metrics.classify`).
    """
    images = _check_reference_images(images, "images")
    _, feats = classify(images, classifier, batch_size=batch_size)  # (B, D) float32 on the CPU
    return feats.to(images.device)


@dataclass
class NormalizerConfig:
    embedding_dim: int = 128

    def __post_init__(self):
        if not isinstance(self.embedding_dim, int) or self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be a positive integer, got {self.embedding_dim!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class EmbeddingNormalizer(PretrainedModel):
    """diffusers' ``StableUnCLIPImageNormalizer``: the embedding's per-feature ``mean`` and ``std`` (1, D).

    ``scale(f) = (f − μ) / σ`` and ``unscale(u) = σ·u + μ``. Fit them on data with :meth:`fit`. (Parameters without
    gradients, as diffusers stores them, so that ``save_pretrained`` / ``from_pretrained`` work as for every model.)
    """

    config_class = NormalizerConfig

    def __init__(self, config: NormalizerConfig | None = None):
        super().__init__()
        self.config = config or NormalizerConfig()
        d = self.config.embedding_dim
        self.mean = nn.Parameter(torch.zeros(1, d), requires_grad=False)
        self.std = nn.Parameter(torch.ones(1, d), requires_grad=False)

    @classmethod
    def fit(cls, image_embeds: torch.Tensor) -> EmbeddingNormalizer:
        """μ and σ (unbiased) of ``image_embeds`` (N ≥ 2, D), per feature; σ is floored at 1e-6."""
        if not isinstance(image_embeds, torch.Tensor) or image_embeds.ndim != 2 or image_embeds.shape[0] < 2:
            got = tuple(image_embeds.shape) if isinstance(image_embeds, torch.Tensor) else type(image_embeds).__name__
            raise ValueError(f"fit needs embeddings of shape (N >= 2, D), got {got}")
        norm = cls(NormalizerConfig(embedding_dim=int(image_embeds.shape[1])))
        f = image_embeds.detach().double()
        with torch.no_grad():
            norm.mean.copy_(f.mean(0, keepdim=True).float())
            norm.std.copy_(f.std(0, keepdim=True).clamp_min(1e-6).float())
        return norm.to(image_embeds.device)

    def _check(self, embeds: torch.Tensor) -> None:
        d = self.config.embedding_dim
        if not isinstance(embeds, torch.Tensor) or embeds.ndim != 2 or embeds.shape[1] != d:
            got = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
            raise ValueError(f"embeddings must have shape (B, {d}), got {got}")

    def scale(self, embeds: torch.Tensor) -> torch.Tensor:
        """u = (f − μ) / σ: (B, D) → (B, D)."""
        self._check(embeds)
        return (embeds - self.mean) / self.std

    def unscale(self, embeds: torch.Tensor) -> torch.Tensor:
        """f = σ·u + μ: (B, D) → (B, D)."""
        self._check(embeds)
        return embeds * self.std + self.mean


def _check_noise_level(noise_level: object, num_levels: int) -> None:
    if isinstance(noise_level, torch.Tensor):
        if noise_level.is_floating_point() or noise_level.numel() == 0:
            raise ValueError(f"noise_level must hold integers in [0, {num_levels - 1}], got {noise_level!r}")
        lo, hi = int(noise_level.min()), int(noise_level.max())
    elif isinstance(noise_level, int) and not isinstance(noise_level, bool):
        lo = hi = noise_level
    else:
        raise ValueError(f"noise_level must be an integer in [0, {num_levels - 1}], got {noise_level!r}")
    if lo < 0 or hi >= num_levels:
        raise ValueError(
            f"noise_level must be between 0 and {num_levels - 1} inclusive (the noising schedule has {num_levels} "
            f"levels; 0 = the embedding as it is), got values from {lo} to {hi}"
        )


def noise_embedding(
    image_embeds: torch.Tensor,
    noise_level: int | torch.Tensor,
    normalizer: EmbeddingNormalizer,
    aug_alphas_cumprod: torch.Tensor,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The U-Net's conditioning c = [f_k ; e(k)] (B, 2D) from embeddings f (B, D) at noise level k.

    u = (f − μ)/σ;  u_k = √ᾱᵃ_k·u + √(1 − ᾱᵃ_k)·ε (DDPM Eq. 4);  f_k = σ·u_k + μ;  e(k) the sinusoidal embedding of k
    with D entries (cos first, as diffusers' ``get_timestep_embedding(flip_sin_to_cos=True)``). The same
    computation as diffusers' ``StableUnCLIPImg2ImgPipeline.noise_image_embeddings``. ``noise_level``: one int for
    the batch or a (B,) integer tensor (training draws one per example); ``noise`` (B, D) replaces the draw of ε.
    """
    if not isinstance(image_embeds, torch.Tensor) or image_embeds.ndim != 2 or image_embeds.shape[0] == 0:
        got = tuple(image_embeds.shape) if isinstance(image_embeds, torch.Tensor) else type(image_embeds).__name__
        raise ValueError(f"image_embeds must be a non-empty (B, D) tensor, got {got}")
    b, d = image_embeds.shape
    _check_noise_level(noise_level, len(aug_alphas_cumprod))
    k = torch.as_tensor(noise_level, device=image_embeds.device).long().reshape(-1).expand(b)  # (B,)
    if noise is None:
        noise = randn((b, d), generator, image_embeds.device, image_embeds.dtype)
    elif noise.shape != image_embeds.shape:
        raise ValueError(f"noise must have the shape of image_embeds {(b, d)}, got {tuple(noise.shape)}")
    u = normalizer.scale(image_embeds)  # (B, D)
    u_k = q_sample(u, k, noise.to(u), aug_alphas_cumprod)  # √ᾱᵃ_k·u + √(1 − ᾱᵃ_k)·ε
    f_k = normalizer.unscale(u_k)  # (B, D)
    return torch.cat([f_k, timestep_embedding(k, d).to(f_k.dtype)], dim=1)  # (B, 2D)


# ----------------------------------------------------------------------------------------------------------------------
# The recipe and its training
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class VariationTrainConfig:
    """Training of :func:`train_variations` (the U-Net's shape is its :class:`UNetConfig`)."""

    steps: int = 1600
    batch_size: int = 32
    num_images: int | None = 8_000  # the first N MNIST training images (None: all 60,000); embedding them costs time
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    final_lr_fraction: float = 0.1  # cosine decay to this fraction of lr at the last step
    grad_clip: float | None = 1.0
    prediction_type: str = "v_prediction"
    cond_drop_prob: float = 0.1  # c → 0 (unCLIP §2.1: the CLIP embedding is zeroed 10 % of the time)
    max_noise_level: int = 1000  # training noise levels k ~ U{0 … max_noise_level − 1}
    ema_decay: float = 0.995
    seed: int = 0

    def __post_init__(self):
        check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        for name in ("steps", "batch_size", "max_noise_level"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_images is not None and (not isinstance(self.num_images, int) or self.num_images < 2):
            raise ValueError(f"num_images must be an integer >= 2 or None (all), got {self.num_images!r}")
        if not 0.0 <= self.cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1], got {self.cond_drop_prob!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def lr_at(self, step: int) -> float:
        """Linear warm-up over ``warmup_steps``, then cosine decay to ``final_lr_fraction``·lr at ``steps``."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        f, progress = (
            self.final_lr_fraction,
            min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)),
        )
        return self.lr * (f + (1 - f) * 0.5 * (1 + math.cos(math.pi * progress)))


def variation_recipe(
    embedding_dim: int = 128, latent_channels: int = 4, *, steps: int | None = None, seed: int = 0
) -> tuple[UNetConfig, VariationTrainConfig]:
    """The U-Net and training configs of the variations model (quick mode: a few seconds of training).

    U-Net on 7×7×4 latents: one level of 64 channels, ``blocks_per_level=0``, so ResBlock → self-attention →
    ResBlock in the middle and one ResBlock up (0.40 M parameters); ``pooled_dim = 2·embedding_dim`` for
    c = [f_k ; e(k)]; no text. The schedule is the tiny SD's (scaled-linear β, v-prediction).
    """
    from diffusion_lab.recipes import LATENT_SCHEDULE

    unet = UNetConfig(
        in_channels=latent_channels,
        out_channels=latent_channels,
        channels=(64,),
        attention_levels=(False,),
        blocks_per_level=0,
        time_embed_dim=128,
        heads=4,
        pooled_dim=2 * embedding_dim,
        extra={"recipe": "variations", "schedule": LATENT_SCHEDULE},
    )
    train = VariationTrainConfig(
        steps=pick(1600, 20) if steps is None else steps, num_images=pick(8_000, 500), seed=seed
    )
    return unet, train


def _schedulers(unet_config: UNetConfig, prediction_type: str) -> tuple[DDPMScheduler, DDIMScheduler, DDPMScheduler]:
    """(training DDPM, sampling DDIM with trailing spacing, the embedding's noising scheduler)."""
    from diffusion_lab.recipes import LATENT_SCHEDULE

    kw = dict(unet_config.extra.get("schedule", LATENT_SCHEDULE), prediction_type=prediction_type, clip_sample=False)
    return DDPMScheduler(**kw), DDIMScheduler(timestep_spacing="trailing", **kw), DDPMScheduler(**AUG_SCHEDULE)


@dataclass
class VariationTrainResult:
    pipeline: TinyVariationPipeline  # EMA weights, eval mode
    losses: list[float] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # seconds per phase, steps, configs


def train_variations(
    vae,
    classifier: MnistClassifier,
    *,
    images: torch.Tensor | None = None,
    unet_config: UNetConfig | None = None,
    train_config: VariationTrainConfig | None = None,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> VariationTrainResult:
    """Train a U-Net to generate latents from image embeddings (defaults: :func:`variation_recipe`).

    1. Data, once: f(x) for every training image (the classifier, frozen), the normaliser's μ, σ fitted on them,
       and the latents z_0 = s·E(x) (the autoencoder's posterior means, frozen).
    2. Each step: a batch; k ~ U{0 … K − 1} and c = [f_k ; e(k)] (:func:`noise_embedding`); c → 0 with probability
       ``cond_drop_prob`` (:func:`drop_condition`); t ~ U{0 … T − 1}, z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε (DDPM Eq. 4);
       loss ‖v − v_θ(z_t, t, c)‖², v = √ᾱ_t ε − √(1 − ᾱ_t) z_0; one AdamW step; EMA of the weights.

    ``images`` (N, 1, 28, 28) default to the first ``num_images`` MNIST training images. ``callback(step, loss)``
    runs after every step. Returns the pipeline (EMA U-Net), the losses and ``info``.
    """
    from tqdm.auto import tqdm

    from diffusion_lab.data import load_mnist

    start = time.perf_counter()
    d = classifier.config.feature_dim
    default_unet, default_train = variation_recipe(d, vae.config.latent_channels)
    unet_cfg, cfg = unet_config or default_unet, train_config or default_train
    if unet_cfg.pooled_dim != 2 * d or unet_cfg.cross_attention_dim is not None:
        raise ValueError(
            f"the U-Net needs pooled_dim = 2·{d} = {2 * d} (embedding and noise-level embedding) and no text "
            f"(cross_attention_dim=None), got pooled_dim={unet_cfg.pooled_dim}, "
            f"cross_attention_dim={unet_cfg.cross_attention_dim}"
        )
    if images is None:
        images, _ = load_mnist("train", limit=cfg.num_images)
    images = _check_reference_images(images, "images")
    if len(images) < 2:
        raise ValueError(f"train_variations needs at least 2 images, got {len(images)}")

    # 1. embeddings, their normaliser, latents
    vae = vae.eval().requires_grad_(False)
    embeds = image_embedding(classifier, images)  # (N, D)
    normalizer = EmbeddingNormalizer.fit(embeds)
    with torch.no_grad():
        latents = torch.cat([vae.encode(images[i : i + 1000]).latent_dist.mode() for i in range(0, len(images), 1000)])
    latents = latents * vae.config.scaling_factor  # (N, L, h, w)
    info: dict = {"data_seconds": time.perf_counter() - start, "num_images": len(images)}

    # 2. the denoiser
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    unet = UNet(unet_cfg).train()
    ddpm, ddim, noiser = _schedulers(unet_cfg, cfg.prediction_type)
    ab, ab_aug = ddpm.alphas_cumprod.float(), noiser.alphas_cumprod.float()  # (T,), (K,)
    max_k = min(cfg.max_noise_level, len(ab_aug))
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    ema = EMA(unet, cfg.ema_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    null = torch.zeros(2 * d)  # c_∅
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="variations U-Net", disable=not progress, mininterval=1.0)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_at(step)
        idx = torch.randint(0, len(latents), (cfg.batch_size,), generator=g)
        z0 = latents[idx]  # (B, L, h, w)
        k = torch.randint(0, max_k, (cfg.batch_size,), generator=g)  # (B,) noise levels of the embeddings
        c = noise_embedding(embeds[idx], k, normalizer, ab_aug, generator=g)  # (B, 2D)
        c = drop_condition(c, null, cfg.cond_drop_prob, g)
        t = torch.randint(0, len(ab), (cfg.batch_size,), generator=g)  # (B,)
        noise = torch.randn(z0.shape, generator=g)
        z_t = q_sample(z0, t, noise, ab)
        ab_t = ab[t][:, None, None, None]
        target = {"epsilon": noise, "v_prediction": velocity(z0, noise, ab_t), "sample": z0}[cfg.prediction_type]
        loss = (unet(z_t, t, pooled_text=c) - target).pow(2).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the training loss became {loss.item()} at step {step}; lower lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        optimizer.step()
        ema.update(unet)
        losses.append(loss.item())
        if step % 25 == 24:
            bar.set_postfix(loss=f"{sum(losses[-25:]) / 25:.4f}", refresh=False)
        if callback is not None:
            callback(step + 1, losses[-1])
    seconds = time.perf_counter() - t0
    info.update(
        train_seconds=seconds, steps=cfg.steps, steps_per_s=cfg.steps / seconds,
        total_seconds=time.perf_counter() - start, parameters=ema.model.num_parameters(),
        configs={"unet": unet_cfg.to_dict(), "train": cfg.to_dict()},
    )  # fmt: skip
    pipe = TinyVariationPipeline(vae, classifier.eval(), normalizer.eval(), ema.model.eval(), ddim, noiser)
    return VariationTrainResult(pipe, losses, info)


# ----------------------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------------------

_CLASSIFIER_FILE = "mnist_classifier.safetensors"


class TinyVariationPipeline:
    """``pipe(image, num_inference_steps=25, guidance_scale=2.0, noise_level=0, num_images_per_prompt=1,
    generator=None)`` → :class:`~diffusion_lab.pipeline.PipelineOutput`: n variations of each reference image,
    reference-major (rows 0 … n − 1 are the variations of reference 0), the call shape of diffusers'
    ``StableUnCLIPImg2ImgPipeline`` without the prompt.

    Components as diffusers names them: ``vae`` (frozen autoencoder), ``image_encoder`` (the frozen MNIST classifier),
    ``image_normalizer`` (:class:`EmbeddingNormalizer`), ``unet`` (``pooled_dim = 2D``), ``scheduler`` (sampling),
    ``image_noising_scheduler`` (its ``alphas_cumprod`` noise the embedding).
    """

    _components = ("vae", "image_encoder", "image_normalizer", "unet", "scheduler", "image_noising_scheduler")

    def __init__(self, vae, image_encoder, image_normalizer, unet, scheduler, image_noising_scheduler):
        self.vae, self.image_encoder, self.image_normalizer = vae, image_encoder, image_normalizer
        self.unet, self.scheduler, self.image_noising_scheduler = unet, scheduler, image_noising_scheduler
        d = image_encoder.config.feature_dim
        if image_normalizer.config.embedding_dim != d:
            raise ValueError(
                f"the normaliser holds {image_normalizer.config.embedding_dim} features but the image encoder gives {d}"
            )
        if unet.config.pooled_dim != 2 * d:
            raise ValueError(
                f"the U-Net must take pooled_dim = 2·{d} = {2 * d} (embedding + noise-level embedding), "
                f"got {unet.config.pooled_dim}"
            )
        if unet.config.in_channels != vae.config.latent_channels:
            raise ValueError(
                f"the U-Net reads {unet.config.in_channels} channels but the autoencoder's latents have "
                f"{vae.config.latent_channels}"
            )

    @property
    def components(self) -> dict:
        return {name: getattr(self, name) for name in self._components}

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def embedding_dim(self) -> int:
        return self.image_encoder.config.feature_dim

    @property
    def num_noise_levels(self) -> int:
        """K: valid noise levels are 0 … K − 1."""
        return len(self.image_noising_scheduler.alphas_cumprod)

    def to(self, device) -> TinyVariationPipeline:
        for module in (self.vae, self.image_encoder, self.image_normalizer, self.unet):
            module.to(device)
        return self

    def num_parameters(self) -> dict[str, int]:
        return {n: sum(p.numel() for p in getattr(self, n).parameters()) for n in ("vae", "image_encoder", "unet")}

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """f(x) (B, D) of reference images (B, 1, 28, 28) in [−1, 1]."""
        return image_embedding(self.image_encoder, image.to(self.device))

    def noise_image_embeddings(
        self, image_embeds: torch.Tensor, noise_level: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """c = [f_k ; e(k)] (B, 2D), as diffusers' method of the same name (:func:`noise_embedding`)."""
        ab_aug = self.image_noising_scheduler.alphas_cumprod.to(self.device)
        return noise_embedding(image_embeds, noise_level, self.image_normalizer, ab_aug, generator=generator)

    def check_inputs(self, image, image_embeds, num_inference_steps, guidance_scale, noise_level, n) -> None:
        if (image is None) == (image_embeds is None):
            raise ValueError("give either image (B, 1, 28, 28) or image_embeds (B, D), not both and not neither")
        if image is not None:
            _check_reference_images(image, "image")
        else:
            d = self.embedding_dim
            if not isinstance(image_embeds, torch.Tensor) or image_embeds.ndim != 2 or image_embeds.shape[1] != d:
                got = tuple(image_embeds.shape) if isinstance(image_embeds, torch.Tensor) else type(image_embeds)
                raise ValueError(f"image_embeds must have shape (B, {d}) (pipe.encode_image(image)), got {got}")
            if image_embeds.shape[0] == 0:
                raise ValueError("image_embeds is an empty batch (B = 0): give at least one embedding")
        if not isinstance(num_inference_steps, int) or isinstance(num_inference_steps, bool) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        if not (
            isinstance(guidance_scale, (int, float))
            and not isinstance(guidance_scale, bool)
            and math.isfinite(guidance_scale)
            and guidance_scale >= 0
        ):
            raise ValueError(
                f"guidance_scale must be a finite number >= 0 (0 = ignore the image: the unconditional model, "
                f"1 = no guidance, > 1 = stronger guidance), got {guidance_scale!r}"
            )
        if isinstance(noise_level, torch.Tensor):  # one level per call, as diffusers
            raise ValueError(f"noise_level must be one integer in [0, {self.num_noise_levels - 1}], got a tensor")
        _check_noise_level(noise_level, self.num_noise_levels)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"num_images_per_prompt must be an integer >= 1, got {n!r}")

    @torch.no_grad()
    def __call__(
        self,
        image: torch.Tensor | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 2.0,
        noise_level: int = 0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        *,
        image_embeds: torch.Tensor | None = None,
        eta: float | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pt",
        return_intermediates: bool = False,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> PipelineOutput:
        """Draw ``num_images_per_prompt`` variations of each reference ``image`` (B, 1, 28, 28) in [−1, 1]
        (or of precomputed ``image_embeds`` (B, D)). Returns images (B·n, 1, 28, 28), reference-major.

        1. f = f(x), repeated n times; c = [f_k ; e(k)] with fresh ε per variation (drawn from ``generator``
           first); with guidance the batch is [c_∅ = 0 ; c].
        2. z_T ~ N(0, I) (B·n, 4, 7, 7) (drawn next), or ``latents``; the scheduler's steps on
           ṽ = v_∅ + w·(v_c − v_∅); ``callback(i, t, z)`` after each step.
        3. x = D(z_0 / s). ``output_type``: "pt" (tensor in [−1, 1]), "pil" or "latent".
        """
        n = num_images_per_prompt
        self.check_inputs(image, image_embeds, num_inference_steps, guidance_scale, noise_level, n)
        if output_type not in ("pt", "pil", "latent"):
            raise ValueError(f"output_type must be 'pt', 'pil' or 'latent', got {output_type!r}")
        device, s = self.device, self.vae.config.scaling_factor

        # 1. the conditioning: embed, repeat n times, noise each copy, [c_∅ ; c] for guidance
        f = self.encode_image(image) if image is not None else image_embeds.to(device)  # (B, D)
        f = f.repeat_interleave(n, dim=0)  # (B·n, D), reference-major
        c = self.noise_image_embeddings(f, noise_level, generator)  # (B·n, 2D)
        guided = guidance_scale != 1.0
        if guided:
            c = torch.cat([torch.zeros_like(c), c])  # (2B·n, 2D), unconditional first as diffusers

        # 2. the denoising loop
        h = 28 // self.vae.config.downsampling
        shape = (f.shape[0], self.vae.config.latent_channels, h, h)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        z = (
            randn(shape, generator, device) if latents is None else latents.to(device)
        ) * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        accepts = inspect.signature(self.scheduler.step).parameters
        step_kw = {"generator": generator} if "generator" in accepts else {}
        if eta is not None and "eta" in accepts:
            step_kw["eta"] = eta
        out = PipelineOutput(images=torch.empty(0), latents=torch.empty(0))
        for i, t in enumerate(self.scheduler.timesteps):
            z_in = self.scheduler.scale_model_input(torch.cat([z, z]) if guided else z, t)
            pred = self.unet(z_in, t, pooled_text=c)  # (2B·n or B·n, L, h, w)
            if guided:
                pred_uncond, pred_cond = pred.chunk(2)
                pred = cfg_combine(pred_cond, pred_uncond, guidance_scale)
            z = self.scheduler.step(pred, t, z, **step_kw).prev_sample
            if return_intermediates:
                out.intermediates.append(z.cpu())
                out.timesteps.append(int(t))
            if callback is not None:
                callback(i, int(t), z)

        # 3. decode
        out.latents = z
        if output_type == "latent":
            out.images = z
            return out
        x = self.vae.decode(z / s).sample.clamp(-1, 1)  # (B·n, 1, 28, 28)
        if output_type == "pil":
            from PIL import Image

            arr = ((x + 1) * 127.5).round().to(torch.uint8).cpu()[:, 0].numpy()
            out.images = [Image.fromarray(a) for a in arr]
        else:
            out.images = x
        return out

    # ---------------------------------------------------------------------------------------------- save / load

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """One folder per component (safetensors + JSON) and ``model_index.json`` last, laid out like diffusers'."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.vae.save_pretrained(directory / "vae")
        self.image_normalizer.save_pretrained(directory / "image_normalizer")
        self.unet.save_pretrained(directory / "unet")
        weights = save_tensors_atomic(directory / "image_encoder" / _CLASSIFIER_FILE, self.image_encoder.state_dict())
        meta = {
            "model": "diffusion_lab.metrics.MnistClassifier",
            "config": asdict(self.image_encoder.config),
            "weights_file": _CLASSIFIER_FILE,
            "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        }
        write_json_atomic(weights.with_suffix(".json"), meta)  # the layout load_classifier reads
        for name in ("scheduler", "image_noising_scheduler"):
            sched = getattr(self, name)
            config = {"_class_name": type(sched).__name__, "_module": type(sched).__module__, **dict(sched.config)}
            write_json_atomic(directory / name / "scheduler_config.json", config)
        index = {"_class_name": type(self).__name__}
        index.update(
            {n: [type(getattr(self, n)).__module__, type(getattr(self, n)).__name__] for n in self._components}
        )
        write_json_atomic(directory / "model_index.json", index)
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, scheduler=None, device: str | torch.device | None = None
    ) -> TinyVariationPipeline:
        """Load a folder written by :meth:`save_pretrained` (eval mode); ``scheduler`` replaces the stored one."""
        from diffusion_lab.autoencoder import AutoencoderKL
        from diffusion_lab.metrics import load_classifier
        from diffusion_lab.pipeline import _load_scheduler

        directory = Path(directory)
        index = directory / "model_index.json"
        if not index.is_file():
            raise FileNotFoundError(
                f"{directory} holds no model_index.json: is it a folder written by save_pretrained?"
            )
        stored = json.loads(index.read_text("utf-8")).get("_class_name")
        if stored != cls.__name__:
            raise ValueError(f"{directory} holds a {stored}, not a {cls.__name__}")
        return cls(
            AutoencoderKL.from_pretrained(directory / "vae", device=device).requires_grad_(False),
            load_classifier(directory / "image_encoder" / _CLASSIFIER_FILE, device=device),
            EmbeddingNormalizer.from_pretrained(directory / "image_normalizer", device=device),
            UNet.from_pretrained(directory / "unet", device=device),
            scheduler or _load_scheduler(directory / "scheduler" / "scheduler_config.json"),
            _load_scheduler(directory / "image_noising_scheduler" / "scheduler_config.json"),
        )


# ----------------------------------------------------------------------------------------------------------------------
# Measuring variations
# ----------------------------------------------------------------------------------------------------------------------


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Root-mean-square pixel distance between matching images: (M, 1, 28, 28) × 2 → (M,)."""
    return (a - b).pow(2).flatten(1).mean(1).sqrt()


@torch.no_grad()
def variation_scores(
    references: torch.Tensor,
    variations: torch.Tensor,
    classifier: MnistClassifier,
    normalizer: EmbeddingNormalizer,
    *,
    labels: torch.Tensor | None = None,
) -> dict[str, float]:
    """How faithful and how varied ``variations`` (B·n, 1, 28, 28; reference-major, n per reference) are.

    With r the reference and v one of its n variations, averaged over all B·n pairs:

    - ``agreement``: share of v whose predicted digit is r's (``labels`` (B,) if given, else r's predicted digit);
    - ``cosine``: cos(û(v), û(r)) with û = (f − μ)/σ the normalised embedding (centred: cosines of raw features are
      all close to 1, since every feature vector shares the mean);
    - ``distance``: pixel RMS distance ‖v − r‖ (a copy scores 0);
    - ``spread``: pixel RMS distance between two variations of the same reference (needs n ≥ 2; else NaN).

    Any image set laid out the same way can be scored: samples of the unconditional model (w = 0), or n other real
    digits of r's class — the baselines.
    """
    references = _check_reference_images(references, "references")
    variations = _check_reference_images(variations, "variations")
    b = len(references)
    if len(variations) % b:
        raise ValueError(f"variations must hold n per reference (B·n with B = {b}), got {len(variations)}")
    n = len(variations) // b
    ref_logits, ref_f = classify(references, classifier)
    var_logits, var_f = classify(variations, classifier)
    target = ref_logits.argmax(1) if labels is None else torch.as_tensor(labels).long().cpu()
    if target.shape != (b,):
        raise ValueError(f"labels must have shape ({b},), got {tuple(target.shape)}")
    agree = (var_logits.argmax(1) == target.repeat_interleave(n)).float().mean()
    mean, std = normalizer.mean.detach().cpu(), normalizer.std.detach().cpu()  # (1, D): the caller's module stays put
    u_ref = ((ref_f - mean) / std).repeat_interleave(n, 0)  # (B·n, D)
    cosine = torch.nn.functional.cosine_similarity((var_f - mean) / std, u_ref, dim=1).mean()
    refs = references.cpu().clamp(-1, 1).repeat_interleave(n, 0)
    var = variations.cpu().clamp(-1, 1)
    distance = _rms(var, refs).mean()
    spread = float("nan")
    if n >= 2:
        v = var.reshape(b, n, -1)  # (B, n, P)
        d2 = torch.cdist(v, v).pow(2) / v.shape[-1]  # (B, n, n) mean squared pixel differences
        spread = float(d2.clamp_min(0).sqrt().sum((1, 2)).mean() / (n * (n - 1)))
    return {"agreement": float(agree), "cosine": float(cosine), "distance": float(distance), "spread": spread}
