"""Training the latent autoencoder: the VAE loss (reconstruction + β·KL, Kingma & Welling 2014) and the latent scaling factor."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from diffusion_lab.models.autoencoder import AutoencoderKL
from diffusion_lab.training.loop import optimizer_step
from diffusion_lab.utils.errors import check_int, check_number
from diffusion_lab.utils.progress import tqdm

__all__ = ["estimate_scaling_factor", "train_autoencoder", "vae_loss"]


def vae_loss(
    model: AutoencoderKL, x: torch.Tensor, kl_weight: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, recon, kl) for the batch x (B, C, H, W), three scalars; ``total`` is what to minimise.

    recon = (1/B) Σ_b ‖x_b − x̂_b‖² / D   (the mean squared error per pixel; Gaussian decoder)
    kl    = (1/B) Σ_b KL(q(z | x_b) ‖ N(0, I)) / D   (per-sample KL sum, per pixel: the same normalisation)
    total = recon + β·kl
    so β weighs one nat of KL against one unit of summed squared error, whatever the image size.

    With ``model.config.squash_output`` the decoder is Bernoulli instead (MNIST pixels are nearly black or white):
    with ℓ = 2·``decode_logits(z)`` the logit of a white pixel and y = (x + 1)/2 ∈ [0, 1] the target,
    recon = (1/(B·D)) Σ −[y·log σ(ℓ) + (1 − y)·log(1 − σ(ℓ))]   (binary cross-entropy, nats per pixel)
    — the exact negative log-likelihood per pixel, so total is then the β-weighted negative ELBO per pixel. The mean
    of a Gaussian decoder is blurred where the strokes are uncertain; the Bernoulli decoder is pushed to commit to
    black or white, and its digits are much sharper after the same training time (``recipes.py`` has the figures).
    """
    if kl_weight < 0:
        raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
    posterior = model.encode(x).latent_dist
    z = posterior.sample(generator)  # (B, L, h, w)
    d = x[0].numel()  # D = C·H·W
    if model.config.squash_output:
        logits = 2.0 * model.decode_logits(z).float()  # (B, C, H, W): P(white) = σ(ℓ) = (tanh(ℓ/2) + 1)/2
        recon = F.binary_cross_entropy_with_logits(logits, (x.float() + 1) / 2)
    else:
        recon = (model.decode(z).sample.float() - x.float()).pow(2).mean()
    kl = posterior.kl().float().mean() / d
    return recon + kl_weight * kl, recon, kl


@torch.no_grad()
def estimate_scaling_factor(
    model: AutoencoderKL,
    images: torch.Tensor,
    *,
    batch_size: int = 512,
    sample_posterior: bool = True,
    generator: torch.Generator | None = None,
) -> float:
    """s = 1 / std(z) over the latents of ``images`` (N, C, H, W): the scale that makes s·z unit-variance.

    The diffusion noise schedules (β_t, ᾱ_t) were designed for data of roughly unit variance, as images in [−1, 1]
    are: at a given t the signal-to-noise ratio ᾱ_t·Var(x_0)/(1 − ᾱ_t) is what the schedule assumes only if
    Var(x_0) ≈ 1. An autoencoder's latents can have any scale, so Latent Diffusion estimates 1/σ̂ from a batch of
    latents z ~ q(z | x) and trains the diffusion model on s·z; for SD 1.x that gave s = 0.18215 (SDXL: 0.13025).
    The standard deviation is taken over all numbers at once (batch, channels, positions), as there.

    Runs in eval mode without gradients (the model's mode is restored). Returns a float; store it with
    ``model.config.scaling_factor = estimate_scaling_factor(model, images)`` before ``save_pretrained``.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty batch (N, C, H, W), got shape {tuple(images.shape)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    was_training = model.training
    model.eval()
    try:
        latents = []
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(model.device, model.dtype)
            posterior = model.encode(x).latent_dist
            z = posterior.sample(generator) if sample_posterior else posterior.mode()  # (b, L, h, w)
            latents.append(z.double().cpu())
    finally:
        model.train(was_training)
    std = torch.cat(latents).std().item()
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"the latents' standard deviation is {std}: cannot scale them (is the model trained?)")
    return 1.0 / std


def train_autoencoder(
    model: AutoencoderKL,
    images: torch.Tensor,
    *,
    steps: int | None = None,
    seconds: float | None = None,
    batch_size: int = 32,
    lr: float = 2e-3,
    kl_weight: float = 1e-2,
    seed: int = 0,
    progress: bool = True,
    callback: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train ``model`` in place on ``images`` (N, C, H, W) in [−1, 1] with Adam on :func:`vae_loss`.

    Stops after ``steps`` steps or ``seconds`` seconds of wall-clock time (callbacks included), whichever comes
    first; give at least one. A time budget makes the run fit any machine (the course's latent text-to-image model
    must train in about two minutes of CPU, ~25 s of it here); a step count makes it repeatable.

    Each step draws a batch of random indices and the posterior noise from one generator seeded with ``seed``, so
    a run is deterministic given ``seed`` and the model's initial weights (seed torch before building the model).
    The learning rate warms up linearly over the first 20 steps and then stays constant (with a time budget the
    number of steps is not known in advance, so there is no decay to schedule). Small batches (32) win on a CPU:
    in a fixed time, more steps on fewer images each reconstruct better than a few large-batch steps.

    ``callback(record)`` is called after every step with the record appended to the history. Returns the
    history: one dict per step with ``step``, ``loss``, ``recon``, ``kl`` (as in :func:`vae_loss`) and
    ``seconds`` (wall-clock time since training started). Leaves the model in eval mode.

    Recipes choose quick settings for tests with ``diffusion_lab.utils.settings.pick(full, quick)``; this function
    reads no environment variable.
    """

    if steps is None and seconds is None:
        raise ValueError("give steps, seconds or both: training stops at whichever comes first")
    if steps is not None:
        check_int("steps", steps)
    if seconds is not None and not check_number("seconds", seconds) > 0:
        raise ValueError(f"seconds must be positive or None, got {seconds!r}")
    check_int("batch_size", batch_size)
    check_int("seed", seed, minimum=0)
    if not check_number("lr", lr) > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    check_number("kl_weight", kl_weight, minimum=0.0)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a tensor (N, C, H, W) in [-1, 1], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty batch (N, C, H, W), got shape {tuple(images.shape)}")
    model._check_images(images[:1])

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    warmup = 20
    device = model.device
    history: list[dict] = []
    model.train()
    bar = tqdm(total=steps, desc="autoencoder", disable=not progress, mininterval=1.0)
    start = time.perf_counter()  # wall clock, callbacks included (as Trainer.run's time_limit_s)
    elapsed = 0.0
    try:
        step = 0
        while (steps is None or step < steps) and (seconds is None or elapsed < seconds):
            idx = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
            x = images[idx].to(device, model.dtype)  # (B, C, H, W)
            loss, recon, kl = vae_loss(model, x, kl_weight, generator=generator)
            lr_k = lr * min(1.0, (step + 1) / warmup)  # warm-up, then constant (no decay: the step count is open)
            optimizer_step(loss, optimizer, model.parameters(), lr=lr_k, step=step)
            step += 1
            record = {
                "step": step,
                "loss": loss.item(),
                "recon": recon.item(),
                "kl": kl.item(),
                "seconds": time.perf_counter() - start,
            }
            history.append(record)
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(recon=f"{record['recon']:.4f}", kl=f"{record['kl']:.3f}", refresh=False)
            if callback is not None:
                callback(record)
            elapsed = time.perf_counter() - start
    finally:
        bar.close()
        model.eval()
    return history
