"""Training the image-variations denoiser (unCLIP-style) on classifier embeddings."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from diffusion_lab.maths.diffusion import PREDICTION_TYPES, q_sample
from diffusion_lab.maths.guidance import drop_condition
from diffusion_lab.mnist.classifier import MnistClassifier
from diffusion_lab.mnist.data import load_mnist
from diffusion_lab.models.image_embedding import (
    EmbeddingNormalizer,
    _check_reference_images,
    image_embedding,
    noise_embedding,
)
from diffusion_lab.models.unet import UNet, UNetConfig
from diffusion_lab.pipelines.variations import TinyVariationPipeline
from diffusion_lab.schedulers.scheduling_ddim import DDIMScheduler
from diffusion_lab.schedulers.scheduling_ddpm import DDPMScheduler
from diffusion_lab.training.loop import EMA, check_config_fields, optimizer_step, warmup_cosine
from diffusion_lab.training.loss import training_target
from diffusion_lab.training.recipes import LATENT_SCHEDULE
from diffusion_lab.utils.errors import check_choice
from diffusion_lab.utils.progress import tqdm
from diffusion_lab.utils.settings import pick

__all__ = ["AUG_SCHEDULE", "VariationTrainConfig", "variation_recipe", "VariationTrainResult", "train_variations"]

# SD 2.1 unCLIP's image_noising_scheduler: DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
AUG_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")


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
        check_config_fields(
            self, counts=("steps", "batch_size", "max_noise_level"), optional_counts=("num_images",),
            indices=("warmup_steps", "seed"), positive=("lr",), non_negative=("weight_decay", "grad_clip"),
            fractions=("cond_drop_prob", "final_lr_fraction"),
            decays=("ema_decay",),
        )  # fmt: skip
        if self.num_images is not None and self.num_images < 2:
            raise ValueError(f"num_images must be an integer >= 2 or None (all), got {self.num_images!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def lr_at(self, step: int) -> float:
        """Linear warm-up over ``warmup_steps``, then cosine decay to ``final_lr_fraction``·lr at ``steps``."""
        return warmup_cosine(step, self.steps, self.warmup_steps, self.lr, self.final_lr_fraction)


def variation_recipe(
    embedding_dim: int = 128, latent_channels: int = 4, *, steps: int | None = None, seed: int = 0
) -> tuple[UNetConfig, VariationTrainConfig]:
    """The U-Net and training configs of the variations model (quick mode: a few seconds of training).

    U-Net on 7×7×4 latents: one level of 64 channels, ``blocks_per_level=0``, so ResBlock → self-attention →
    ResBlock in the middle and one ResBlock up (0.40 M parameters); ``pooled_dim = 2·embedding_dim`` for
    c = [f_k ; e(k)]; no text. The schedule is the tiny SD's (scaled-linear β, v-prediction).
    """

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
        idx = torch.randint(0, len(latents), (cfg.batch_size,), generator=g)
        z0 = latents[idx]  # (B, L, h, w)
        k = torch.randint(0, max_k, (cfg.batch_size,), generator=g)  # (B,) noise levels of the embeddings
        c = noise_embedding(embeds[idx], k, normalizer, ab_aug, generator=g)  # (B, 2D)
        c = drop_condition(c, null, cfg.cond_drop_prob, g)
        t = torch.randint(0, len(ab), (cfg.batch_size,), generator=g)  # (B,)
        noise = torch.randn(z0.shape, generator=g)
        z_t = q_sample(z0, t, noise, ab)
        target = training_target(cfg.prediction_type, z0, noise, ab[t][:, None, None, None])
        loss = (unet(z_t, t, pooled_text=c) - target).pow(2).mean()
        optimizer_step(
            loss, optimizer, unet.parameters(), lr=cfg.lr_at(step), max_grad_norm=cfg.grad_clip, ema=ema, model=unet,
            step=step,
        )  # fmt: skip
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
