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
from tqdm.auto import tqdm

from diffusion_lab.maths.diffusion import PREDICTION_TYPES
from diffusion_lab.training.loss import diffusion_loss
from diffusion_lab.utils.checkpoint import load_config, load_training_state, save_checkpoint
from diffusion_lab.utils.errors import check_choice

__all__ = ["EMA", "TrainConfig", "Trainer"]


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
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got steps={self.steps}, batch_size={self.batch_size}")

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then constant or cosine decay to 10 % (step counts from 0)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return self.lr
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


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
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr_at(self.step)
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
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the loss became {loss.item()} at step {self.step}; training stopped and nothing was saved from this "
                "state (the last good checkpoint, if any, is untouched). Lower lr or enable grad_clip."
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.ema.update(self.model)
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
