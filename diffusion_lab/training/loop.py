"""Training a diffusion model: the loss, EMA of the weights, and a short loop with checkpoints and callbacks.

Notation
--------
==================  =============  ================================================================
code                symbol         meaning
==================  =============  ================================================================
``prediction_type`` —              what the network predicts: ε (``epsilon``), v (``v_prediction``), x_0 (``sample``)
``snr``             SNR_t          ᾱ_t / (1 − ᾱ_t)
``min_snr_gamma``   γ              Min-SNR-γ weighting (Hang et al. 2023, "Efficient Diffusion Training via
                                   Min-SNR Weighting Strategy"): the x_0-error weight min(SNR_t, γ), i.e. the
                                   ε-loss weight min(SNR_t, γ)/SNR_t and the v-loss weight min(SNR_t, γ)/(SNR_t + 1)
``ema_decay``       β_ema          θ_ema ← β·θ_ema + (1 − β)·θ, with warm-up β_k = min(β_ema, (1 + k)/(10 + k))
``cond_drop_prob``  p_uncond       share of labels replaced by the null label (classifier-free guidance training)
==================  =============  ================================================================

The simplified DDPM objective (Ho et al. 2020, Eq. 14): L = E_{t, x_0, ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t)‖².
All randomness (batches, t, ε, label dropout) comes from one ``torch.Generator``, so a resumed run repeats an
uninterrupted one exactly on the same machine.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from diffusion_lab.maths.diffusion import PREDICTION_TYPES
from diffusion_lab.training.loss import diffusion_loss
from diffusion_lab.utils.checkpoint import load_config, load_training_state, save_checkpoint
from diffusion_lab.utils.errors import check_choice, check_int, check_number
from diffusion_lab.utils.progress import tqdm

__all__ = [
    "EMA",
    "TrainConfig",
    "Trainer",
    "check_config_fields",
    "check_finite_loss",
    "optimizer_step",
    "warmup_cosine",
]


def check_config_fields(
    cfg: object,
    *,
    counts: tuple[str, ...] = (),
    optional_counts: tuple[str, ...] = (),
    indices: tuple[str, ...] = (),
    positive: tuple[str, ...] = (),
    non_negative: tuple[str, ...] = (),
    fractions: tuple[str, ...] = (),
    decays: tuple[str, ...] = (),
) -> None:
    """The error convention for a training config's fields, named by kind: ``counts`` integers >= 1
    (``optional_counts``: or None), ``indices`` integers >= 0, ``positive`` numbers > 0, ``non_negative`` numbers
    >= 0 (or None: off), ``fractions`` numbers in [0, 1], ``decays`` numbers in [0, 1) (an EMA's β). A wrong type
    (a bool or 2.0 for a count, a string for a number) raises TypeError, a wrong value ValueError; both name the
    field."""
    for name in counts + optional_counts:
        value = getattr(cfg, name)
        if value is None and name in optional_counts:
            continue
        check_int(name, value, minimum=None)
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for name in indices:
        check_int(name, getattr(cfg, name), minimum=0)
    for name in positive:
        if not check_number(name, getattr(cfg, name)) > 0:
            raise ValueError(f"{name} must be > 0, got {getattr(cfg, name)!r}")
    for name in non_negative:
        if getattr(cfg, name) is not None:
            check_number(name, getattr(cfg, name), minimum=0.0)
    for name in fractions:
        check_number(name, getattr(cfg, name), minimum=0.0, maximum=1.0)
    for name in decays:
        if not 0 <= check_number(name, getattr(cfg, name)) < 1:
            raise ValueError(f"{name} must be in [0, 1), got {getattr(cfg, name)!r}")


def warmup_cosine(
    step: int, total_steps: int, warmup_steps: int, lr: float, min_factor: float, *, progress: float | None = None
) -> float:
    """The learning rate of step k (0-based): linear warm-up, then cosine decay from lr to ``min_factor``·lr.

    η_k = lr·(k + 1)/W for k < W;  η_k = lr·(f + (1 − f)·½(1 + cos πp)),  p = min(1, (k − W)/max(1, K − W)) after.

    The one convention of every recipe: the first step already trains (lr/W, not 0), the peak is reached at k = W − 1
    and the decay starts from the peak at k = W; p counts from the end of the warm-up and reaches 1 at k = K, so the
    last step taken (K − 1) sits just above f·lr. It is the convention most copies used and the one the shipped
    models and notebook 02's stored check were made with (a recipe that wants f·lr at its last step passes
    ``total_steps = steps − 1``). ``min_factor`` f = 1 gives warm-up then a constant lr. ``progress``: p given
    directly, for the time-budgeted recipes whose number of steps is not known in advance (elapsed / budget).
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if progress is None:
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return lr * (min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def check_finite_loss(loss: torch.Tensor | float, step: int, hint: str = "lower lr") -> None:
    """``FloatingPointError`` naming the step if the loss is NaN or ±inf (before it reaches the weights)."""
    value = loss.item() if isinstance(loss, torch.Tensor) else float(loss)
    if not math.isfinite(value):
        raise FloatingPointError(f"the training loss became {value} at step {step}; {hint}")


def optimizer_step(
    loss: torch.Tensor | None,
    optimizer: torch.optim.Optimizer,
    params,
    *,
    lr: float | None = None,
    max_grad_norm: float | None = None,
    ema: EMA | None = None,
    model: nn.Module | None = None,
    step: int = 0,
    hint: str = "lower lr",
    scaler: torch.amp.GradScaler | None = None,
    clip_grad_norm: Callable | None = None,
) -> torch.Tensor | None:
    """One optimiser step of every training loop; returns the gradient norm before clipping (a 0-d tensor; None
    without clipping).

    1. ``loss`` finite, else ``FloatingPointError`` naming ``step`` (nothing has touched the weights yet);
    2. lr of every parameter group ← ``lr`` (if given);
    3. gradients cleared, then ∇loss; ``loss=None``: the caller has accumulated the gradients already
       (micro-batches, ``accelerator.backward``, a scaled fp16 loss), and they are cleared after the step instead;
    4. the global norm of ``params``' gradients clipped to ``max_grad_norm`` (after unscaling them if a ``scaler``
       (fp16 ``GradScaler``) is given; ``clip_grad_norm``: another clipping function, e.g. the accelerator's);
    5. ``optimizer.step()`` (through the scaler if given);
    6. ``ema.update(model)`` if an EMA is given.
    """
    if loss is not None:
        check_finite_loss(loss, step, hint)
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    if loss is not None:
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler is not None else loss).backward()
    norm = None
    if max_grad_norm:
        if scaler is not None:
            scaler.unscale_(optimizer)
        norm = (clip_grad_norm or nn.utils.clip_grad_norm_)(params, max_grad_norm)  # a tensor: no device sync here
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if loss is None:
        optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update(model)
    return norm


class EMA:
    """Exponential moving average of a model's weights, with warm-up (the averaged copy is ``ema.model``).

    β_k = min(β, (1 + k)/(10 + k)) after k updates, so early weights (random) are forgotten quickly.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0 <= decay < 1:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.warmup, self.updates = decay, warmup, 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_params, params = list(self.model.parameters()), [p.detach() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise ValueError(f"the model has {len(params)} parameter tensors, its EMA copy {len(ema_params)}")
        torch._foreach_lerp_(ema_params, params, 1 - d)  # θ_ema ← d·θ_ema + (1 − d)·θ, all tensors in one call
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
        self.updates += 1


@dataclass
class TrainConfig:
    """The training recipe (stored in every checkpoint's config.json)."""

    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_schedule: str = "cosine"  # "cosine" decays to 10 % of lr at ``steps``; "constant"
    grad_clip: float | None = 1.0
    prediction_type: str = "epsilon"
    min_snr_gamma: float | None = None
    cond_drop_prob: float = 0.1
    ema_decay: float = 0.999
    ema_warmup: bool = True
    seed: int = 0

    def __post_init__(self):
        check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        check_choice("lr_schedule", self.lr_schedule, ("cosine", "constant"))
        check_config_fields(
            self, counts=("steps", "batch_size"), indices=("warmup_steps", "seed"), positive=("lr",),
            non_negative=("weight_decay", "grad_clip", "min_snr_gamma"), fractions=("cond_drop_prob",),
            decays=("ema_decay",),
        )  # fmt: skip

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then constant or cosine decay to 10 % (:func:`warmup_cosine`; step counts from 0)."""
        final = 1.0 if self.lr_schedule == "constant" else 0.1
        return warmup_cosine(step, self.steps, self.warmup_steps, self.lr, final)


class Trainer:
    """Owns model, optimizer, EMA and random generator; ``run()`` trains, ``save()`` / ``resume()`` checkpoint.

    ``images`` (N, C, H, W) in [−1, 1] and optional ``labels`` (N,) stay where they are; each step draws a batch
    of random indices. ``callbacks`` are called as ``callback(trainer)`` after every step (``trainer.step``,
    ``trainer.losses`` are there to read).
    """

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        alphas_cumprod: torch.Tensor,
        config: TrainConfig,
        *,
        labels: torch.Tensor | None = None,
        callbacks: list[Callable[[Trainer], None]] = (),
        device: torch.device | str | None = None,
    ):
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"images must be a non-empty batch (N, C, H, W), got shape {tuple(images.shape)}")
        if labels is not None and labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device)
        self.images, self.labels, self.alphas_cumprod, self.config = images, labels, alphas_cumprod, config
        self.callbacks = list(callbacks)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.ema = EMA(model, config.ema_decay, config.ema_warmup)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.losses: list[float] = []
        self.train_seconds = 0.0

    def train_step(self) -> float:
        cfg = self.config
        idx = torch.randint(0, self.images.shape[0], (cfg.batch_size,), generator=self.generator)
        x0 = self.images[idx].to(self.device)
        y = self.labels[idx].to(self.device) if self.labels is not None else None
        loss = diffusion_loss(
            self.model,
            x0,
            self.alphas_cumprod,
            class_labels=y,
            prediction_type=cfg.prediction_type,
            min_snr_gamma=cfg.min_snr_gamma,
            cond_drop_prob=cfg.cond_drop_prob if y is not None else 0.0,
            generator=self.generator,
        )
        optimizer_step(
            loss, self.optimizer, self.model.parameters(), lr=cfg.lr_at(self.step), max_grad_norm=cfg.grad_clip,
            ema=self.ema, model=self.model, step=self.step,
            hint="training stopped and nothing was saved from this state (the last good checkpoint, if any, is "
            "untouched). Lower lr or enable grad_clip.",
        )  # fmt: skip
        self.step += 1
        return loss.item()

    def run(
        self,
        steps: int | None = None,
        *,
        time_limit_s: float | None = None,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int | None = None,
        progress: bool = True,
    ) -> Trainer:
        """Train until ``steps`` (default: ``config.steps``) or ``time_limit_s`` seconds, whichever comes first."""

        target = self.config.steps if steps is None else steps
        self.model.train()
        start = time.perf_counter()
        bar = tqdm(total=target, initial=self.step, desc="training", disable=not progress, mininterval=1.0)
        try:
            while self.step < target:
                t0 = time.perf_counter()
                loss = self.train_step()
                self.train_seconds += time.perf_counter() - t0
                self.losses.append(loss)
                bar.update(1)
                if self.step % 25 == 0:
                    bar.set_postfix(loss=f"{sum(self.losses[-25:]) / 25:.4f}", refresh=False)
                for cb in self.callbacks:
                    cb(self)
                if checkpoint_dir is not None and checkpoint_every and self.step % checkpoint_every == 0:
                    self.save(checkpoint_dir)
                if time_limit_s is not None and time.perf_counter() - start >= time_limit_s:
                    break
        finally:
            bar.close()
            self.model.eval()
        return self

    def save(self, directory: str | Path) -> Path:
        """Model, EMA, optimizer, step and random state, enough to resume exactly."""
        return save_checkpoint(
            directory,
            self.model,
            ema_model=self.ema.model,
            optimizer=self.optimizer,
            step=self.step,
            generator=self.generator,
            train_config=asdict(self.config),
            extra={"ema_updates": self.ema.updates, "train_seconds": self.train_seconds, "losses": self.losses},
        )

    def resume(self, directory: str | Path) -> Trainer:
        """Continue from a checkpoint written by :meth:`save` (same model configuration required)."""

        self.step = load_training_state(
            directory, self.model, ema_model=self.ema.model, optimizer=self.optimizer, generator=self.generator
        )
        extra = load_config(directory)["extra"]
        self.ema.updates = int(extra.get("ema_updates", self.step))
        self.train_seconds = float(extra.get("train_seconds", 0.0))
        self.losses = list(extra.get("losses", []))
        return self
