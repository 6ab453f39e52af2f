"""Training a ControlNet on (image, control map, caption) triples with the frozen denoiser's loss."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from diffusion_lab.maths.diffusion import q_sample
from diffusion_lab.maths.images import edge_map
from diffusion_lab.mnist.captions import attributes, captions_for, fit_bins
from diffusion_lab.mnist.data import load_mnist
from diffusion_lab.models.controlnet import ControlNet
from diffusion_lab.pipelines.controlnet import TinyControlNetPipeline
from diffusion_lab.pipelines.stable_diffusion import TinyStableDiffusionPipeline
from diffusion_lab.training.finetune import encode_images
from diffusion_lab.training.loop import check_config_fields, optimizer_step, warmup_cosine
from diffusion_lab.training.loss import training_target
from diffusion_lab.utils.progress import tqdm
from diffusion_lab.utils.settings import pick

__all__ = ["ControlNetTrainConfig", "controlnet_loss", "train_controlnet"]


def controlnet_loss(
    pipe: TinyStableDiffusionPipeline,
    controlnet: ControlNet,
    latents: torch.Tensor,
    prompts: list[str],
    control: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Eq. 4 with the tiny model's own loss (:func:`diffusion_lab.training.finetune.denoising_loss`, the same random draws):
    t ~ U{0 … T − 1}, ε ~ N(0, I), z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε, and ‖target − f_θ(z_t, t, c_t, c_f)‖² where the
    frozen U-Net f_θ receives the ControlNet's residuals. latents (B, L, h, w), control (B, C_c, H, W)."""
    if latents.ndim != 4 or len(prompts) != len(latents) or len(control) != len(latents):
        raise ValueError(
            f"need latents (B, L, h, w), one prompt and one control map per latent, got {tuple(latents.shape)}, "
            f"{len(prompts)} prompts and {len(control)} maps"
        )
    ab = pipe.scheduler.alphas_cumprod.float().to(latents.device)  # (T,) ᾱ_t
    b = len(latents)
    t = torch.randint(0, len(ab), (b,), generator=generator).to(latents.device)  # (B,)
    noise = torch.randn(latents.shape, generator=generator).to(latents)  # (B, L, h, w)
    z_t = q_sample(latents, t, noise, ab)
    c, mask, pooled = pipe.encode_prompt(prompts)  # frozen text encoder: no gradient needed
    pooled = pooled if pipe.unet.config.pooled_dim else None
    down, mid = controlnet(z_t, t, c, pooled, control, encoder_attention_mask=mask)
    kw = {"pooled_text": pooled} if pooled is not None else {}
    out = pipe.unet(
        z_t, t, encoder_hidden_states=c, encoder_attention_mask=mask, down_block_additional_residuals=down,
        mid_block_additional_residual=mid, **kw,
    )  # fmt: skip
    target = training_target(pipe.scheduler.config["prediction_type"], latents, noise, ab[t][:, None, None, None])
    return (out - target).pow(2).flatten(1).mean(1).mean()  # per example, then the batch (as denoising_loss)


# Why these choices (edge control on the shipped tiny SD; edge F1 of 100-200 test digits, DDIM-25, w = 3; the base model
# scores 0.31, the autoencoder's reconstructions 0.88; 1 CPU thread shared with other jobs, November 2026):
# - lr at 300 steps: 3e-4 → 0.56, 1e-3 → 0.68, 2e-3 → 0.72, 4e-3 → 0.73 (the paper's 1e-5 is for batch 256 and
#   weeks of steps); 1,000 steps: constant 2e-3 → 0.833, 3e-3 with a cosine decay to 10 % → 0.840;
# - half the prompts empty (paper §3.3) against none, at 300 steps: 0.68 against 0.66 (and the ControlNet must
#   then read the edges, not the caption);
# - hint widths (16, 32, 64) against (8, 16, 32): 0.68 against 0.66 at 300 steps, for ~10 % more time per step;
# - cost: a step is ~1.4× a step of the base model's own training (the frozen U-Net still runs forward and
#   backward, to pass gradients to the residuals; the hint network at 28×28 is a third of the ControlNet's cost).
@dataclass
class ControlNetTrainConfig:
    """Training of :func:`train_controlnet` (defaults: the full-mode recipe; quick mode shrinks steps and data)."""

    steps: int = field(default_factory=lambda: pick(1000, 8))
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    final_lr_fraction: float = 0.1  # cosine decay after the warm-up, from lr to this fraction of it
    grad_clip: float | None = 1.0
    num_images: int = field(default_factory=lambda: pick(8000, 256))  # the first N MNIST training images
    empty_prompt_prob: float = 0.5  # Zhang et al. §3.3: half the prompts replaced by "", so the control is read
    caption_drop_prob: float = 0.25  # each attribute word dropped, as the base model's recipe did
    seed: int = 0

    def __post_init__(self):
        check_config_fields(
            self, counts=("steps", "batch_size", "num_images"), indices=("warmup_steps", "seed"), positive=("lr",),
            non_negative=("weight_decay", "grad_clip"),
            fractions=("empty_prompt_prob", "caption_drop_prob", "final_lr_fraction"),
        )  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)

    def lr_at(self, step: int) -> float:
        """Linear warm-up over ``warmup_steps``, then cosine decay to ``final_lr_fraction``·lr, the one convention of
        :func:`~diffusion_lab.training.loop.warmup_cosine` shared by every training loop."""
        return warmup_cosine(step, self.steps, self.warmup_steps, self.lr, self.final_lr_fraction)


def train_controlnet(
    pipe: TinyStableDiffusionPipeline,
    control_fn: Callable[[torch.Tensor], torch.Tensor] = edge_map,
    config: ControlNetTrainConfig | None = None,
    *,
    bins=None,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    controlnet: ControlNet | None = None,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> tuple[TinyControlNetPipeline, dict]:
    """Train a ControlNet for ``pipe`` (the tiny SD, left frozen and unchanged) on MNIST and ``control_fn``'s maps.

    1. Data: z_0 = s·μ(x) of the first ``num_images`` training images (:func:`diffusion_lab.training.finetune.encode_images`),
       their control maps c_i = control_fn(x) and attributes; captions are drawn each step with
       :func:`diffusion_lab.mnist.captions.captions_for` (attribute words dropped with ``caption_drop_prob``, as the base model
       was trained), then replaced by "" with ``empty_prompt_prob`` (Zhang et al. §3.3).
    2. ControlNet = :meth:`ControlNet.from_unet` (or ``controlnet``); AdamW on its parameters only, linear warm-up
       then cosine decay (:meth:`ControlNetTrainConfig.lr_at`);
       the U-Net, autoencoder and text encoder are frozen (requires_grad False, eval mode).
    3. Each step: :func:`controlnet_loss` (Eq. 4, the base model's loss with the control).

    ``bins``: the caption bins of the base model (from :func:`diffusion_lab.training.tiny_sd_io.load_tiny_sd`); None fits them
    on the training images. Returns the :class:`TinyControlNetPipeline` (sharing ``pipe``'s components) and ``info``:
    ``losses``, ``steps``, ``seconds``, ``steps_per_s``, ``parameters``, ``config``.
    """

    cfg = config or ControlNetTrainConfig()
    if not isinstance(cfg, ControlNetTrainConfig):
        raise TypeError(f"config must be a ControlNetTrainConfig or None, got {type(config).__name__}")
    if images is None:
        images, labels = load_mnist("train", limit=cfg.num_images)
    elif labels is None or len(labels) != len(images):
        raise ValueError("pass labels (N,) with images (N, 1, 28, 28)")
    images, labels = images[: cfg.num_images], labels[: cfg.num_images]
    start = time.perf_counter()
    for module in (pipe.vae, pipe.text_encoder, pipe.unet):
        module.eval().requires_grad_(False)
    device = pipe.device
    latents = encode_images(pipe, images)  # (N, L, h, w)
    with torch.no_grad():
        controls = control_fn(images).to(device)  # (N, C_c, H, W)
    attrs = attributes(images)
    bins = bins if bins is not None else fit_bins(images, labels)

    torch.manual_seed(cfg.seed)
    controlnet = controlnet if controlnet is not None else ControlNet.from_unet(pipe.unet, controls.shape[1])
    controlnet.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    for step in tqdm(range(cfg.steps), desc="ControlNet", disable=not progress, mininterval=1.0):
        idx = torch.randint(0, len(latents), (cfg.batch_size,), generator=g)  # (B,)
        prompts = captions_for(
            labels[idx], None, bins, attrs={k: v[idx] for k, v in attrs.items()}, generator=g,
            drop_prob=cfg.caption_drop_prob,
        )  # fmt: skip
        empty = (torch.rand(cfg.batch_size, generator=g) < cfg.empty_prompt_prob).tolist()
        prompts = ["" if e else p for p, e in zip(prompts, empty, strict=True)]
        loss = controlnet_loss(pipe, controlnet, latents[idx], prompts, controls[idx.to(device)], g)
        optimizer_step(
            loss, optimizer, controlnet.parameters(), lr=cfg.lr_at(step), max_grad_norm=cfg.grad_clip, step=step
        )
        losses.append(loss.item())
        if callback is not None:
            callback(step, losses[-1])
    seconds = time.perf_counter() - start
    controlnet.eval().requires_grad_(False)
    controlled = TinyControlNetPipeline.from_pipe(pipe, controlnet)
    info = {
        "losses": losses, "steps": cfg.steps, "seconds": seconds, "steps_per_s": cfg.steps / seconds,
        "parameters": controlled.num_parameters(), "config": cfg.to_dict(),
    }  # fmt: skip
    return controlled, info
