"""The denoising loss: the target for each prediction type, optional Min-SNR weighting (Hang et al. 2023).

x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (DDPM Eq. 4); the network learns ε (DDPM Eq. 14), v = √ᾱ_t ε − √(1−ᾱ_t) x_0
(Salimans & Ho 2022, §4) or x_0 itself, the ``prediction_type`` of the scheduler it samples with.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffusion_lab.maths.diffusion import PREDICTION_TYPES, extract, q_sample, velocity
from diffusion_lab.utils.errors import check_choice
from diffusion_lab.utils.torch_utils import randn

__all__ = ["diffusion_loss", "min_snr_weight", "training_target"]


def training_target(
    prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, alphas_cumprod_t: torch.Tensor | float
) -> torch.Tensor:
    """What the network must output for x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, shaped as ``x0`` (B, C, H, W):

    - ``"epsilon"``: ε (DDPM Eq. 14);
    - ``"v_prediction"``: v = √ᾱ_t ε − √(1−ᾱ_t) x_0 (Salimans & Ho 2022, §4; diffusers' ``get_velocity``);
    - ``"sample"``: x_0.

    ``alphas_cumprod_t``: ᾱ_t broadcastable to ``x0``, e.g. (B, 1, 1, 1). Another ``prediction_type``: ValueError.
    """
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return velocity(x0, noise, alphas_cumprod_t)
    return x0


def min_snr_weight(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weight of Min-SNR-γ for the given prediction type (see the module's notation table)."""
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped


def diffusion_loss(
    model: Callable,
    x0: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    *,
    class_labels: torch.Tensor | None = None,
    prediction_type: str = "epsilon",
    min_snr_gamma: float | None = None,
    cond_drop_prob: float = 0.0,
    null_label: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One Monte-Carlo estimate of the training loss on the batch ``x0`` (B, C, H, W).

    1. t ~ U{0..T−1}, ε ~ N(0, I); x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (DDPM Eq. 4).
    2. With probability ``cond_drop_prob`` a label becomes the null label (CFG training).
    3. Target: ε, v = √ᾱ_t ε − √(1−ᾱ_t) x_0, or x_0; per-sample mean squared error, weighted by Min-SNR-γ if set.
    """
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if not 0 <= cond_drop_prob <= 1:
        raise ValueError(f"cond_drop_prob must be in [0, 1], got {cond_drop_prob}")
    if x0.shape[0] == 0:
        raise ValueError("got an empty batch (batch size 0)")
    device, b = x0.device, x0.shape[0]
    ab = alphas_cumprod.to(device)
    t = torch.randint(0, len(ab), (b,), generator=generator).to(device)  # (B,)
    noise = randn(x0.shape, generator, device, x0.dtype)  # (B, C, H, W)
    x_t = q_sample(x0, t, noise, ab)
    if class_labels is not None and cond_drop_prob > 0:
        drop = (torch.rand(b, generator=generator) < cond_drop_prob).to(device)
        null = model.config.num_classes if null_label is None else null_label
        class_labels = torch.where(drop, torch.full_like(class_labels, null), class_labels)
    out = model(x_t, t, class_labels) if class_labels is not None else model(x_t, t)
    ab_t = extract(ab, t, x0.ndim)  # (B, 1, 1, 1)
    target = training_target(prediction_type, x0, noise, ab_t)
    per_sample = (out.float() - target.float()).pow(2).flatten(1).mean(1)  # (B,)
    if min_snr_gamma is not None:
        per_sample = per_sample * min_snr_weight(ab[t] / (1 - ab[t]), min_snr_gamma, prediction_type)
    return per_sample.mean()
