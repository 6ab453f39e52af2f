"""Noise schedules: how much noise the forward process adds at each step.

Notation
--------
==================  ===========  ==========================================================
code                symbol       meaning (paper)
==================  ===========  ==========================================================
``T``               T            number of training steps (DDPM, Ho et al. 2020)
``betas[t]``        β_t          variance of the noise added at step t (DDPM Eq. 2)
``alphas[t]``       α_t          1 − β_t
``alphas_cumprod``  ᾱ_t          ∏_{s≤t} α_s; x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε (DDPM Eq. 4)
``snr(ᾱ)``          SNR(t)       ᾱ_t / (1 − ᾱ_t) (Kingma et al. 2021, "Variational Diffusion Models" Eq. 1)
==================  ===========  ==========================================================

Indexing convention
-------------------
Code indices run ``t = 0 .. T-1``; code index ``t`` is the paper's step ``t+1``. So ``alphas_cumprod[0]``
is ᾱ_1 (almost 1: one small step of noise) and ``alphas_cumprod[T-1]`` is ᾱ_T (almost 0). This is the
convention of diffusers and of openai/improved-diffusion. Beware the DDIM paper: its α_t is DDPM's ᾱ_t.

All tables are float32, computed exactly as diffusers computes them, so that our schedulers equal
diffusers' to the last bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from diffusion_lab.maths.checks import check_fraction, check_option
from diffusion_lab.utils.errors import check_int, check_number, check_tensor

__all__ = [
    "USUAL_BETA_RANGES",
    "schedule_table",
    "BETA_SCHEDULES",
    "TIMESTEP_SPACINGS",
    "linear_betas",
    "scaled_linear_betas",
    "cosine_betas",
    "make_betas",
    "alphas_cumprod_from_betas",
    "rescale_zero_terminal_snr",
    "snr",
    "snr_db",
    "inference_timesteps",
    "custom_timesteps",
]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


def _check_range(T: object, beta_start: object, beta_end: object) -> tuple[int, float, float]:
    """T as an int >= 1 and the two β ends as floats in [0, 1] (NumPy / torch scalars accepted)."""
    T = check_int("T", T)
    beta_start = check_number("beta_start", beta_start, minimum=0.0, maximum=1.0)
    beta_end = check_number("beta_end", beta_end, minimum=0.0, maximum=1.0)
    return T, beta_start, beta_end


def _check_count(name: str, value: object, limit: str) -> int:
    """``check_int`` with the allowed range in the TypeError (``limit``, e.g. "between 1 and T=1000")."""
    try:
        return check_int(name, value, minimum=None)
    except TypeError as e:
        raise TypeError(str(e).replace("must be an integer", f"must be an integer {limit}", 1)) from None


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """β_t = linspace(β_start, β_end, T) — DDPM §4 (1e-4 → 0.02 over T = 1000). Shape (T,)."""
    T, beta_start, beta_end = _check_range(T, beta_start, beta_end)
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float32)


def scaled_linear_betas(T: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """β_t = linspace(√β_start, √β_end, T)² — Stable Diffusion / SDXL (0.00085 → 0.012). Shape (T,)."""
    T, beta_start, beta_end = _check_range(T, beta_start, beta_end)
    return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, "Improved DDPM" Eq. 17), diffusers' ``squaredcos_cap_v2``.

    f(u) = cos²((u + s)/(1 + s) · π/2) with u = t/T; β_t = min(1 − f((t+1)/T) / f(t/T), 0.999).
    The cap avoids β = 1 at the very end, where f reaches 0. Shape (T,).
    """
    T = check_int("T", T)
    s = check_number("s", s, minimum=0.0)
    max_beta = check_number("max_beta", max_beta, minimum=0.0, maximum=1.0)

    def f(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(beta_schedule: str, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """β for one of :data:`BETA_SCHEDULES` (``beta_start``/``beta_end`` are ignored by the cosine schedule)."""
    check_option("beta_schedule", beta_schedule, BETA_SCHEDULES)
    T = _check_count("T (num_train_timesteps)", T, ">= 2")
    if T < 2:
        raise ValueError(f"T (num_train_timesteps) must be an integer >= 2, got {T!r}")
    if beta_schedule == "linear":
        return linear_betas(T, beta_start, beta_end)
    if beta_schedule == "scaled_linear":
        return scaled_linear_betas(T, beta_start, beta_end)
    return cosine_betas(T)


def _check_betas(betas: object, minimum_length: int = 1) -> None:
    check_tensor("betas", betas, "(T,) of values in [0, 1]")
    if betas.ndim != 1 or len(betas) < minimum_length:
        raise ValueError(f"betas must be 1-D with at least {minimum_length} values, got shape {tuple(betas.shape)}")
    check_fraction("betas", betas, "β_t, the variance added at each step")


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = ∏_{s≤t} (1 − β_s) (DDPM, just above Eq. 4). Shape (T,)."""
    _check_betas(betas)
    return torch.cumprod(1.0 - betas, dim=0)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale √ᾱ so that ᾱ_T = 0 exactly while ᾱ_1 is unchanged.

    Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1:
    √ᾱ'_t = (√ᾱ_t − √ᾱ_T) · √ᾱ_1 / (√ᾱ_1 − √ᾱ_T). With ᾱ_T = 0 the last training step is pure noise,
    as it is at the start of sampling. Shape (T,) in, (T,) out.
    """
    _check_betas(betas, minimum_length=2)
    sqrt_ab = alphas_cumprod_from_betas(betas).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    ab = sqrt_ab**2
    alphas = torch.cat([ab[0:1], ab[1:] / ab[:-1]])  # undo the cumulative product
    return 1 - alphas


def snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """SNR_t = ᾱ_t / (1 − ᾱ_t): signal power over noise power in x_t (VDM Eq. 1)."""
    check_fraction("alphas_cumprod", alphas_cumprod, "ᾱ, the signal fraction")
    return alphas_cumprod / (1 - alphas_cumprod)


def snr_db(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """SNR in decibels, 10·log10(SNR_t); 0 dB is where signal and noise have equal power."""
    return 10 * torch.log10(torch.as_tensor(snr(alphas_cumprod)))


def inference_timesteps(
    num_inference_steps: int, num_train_timesteps: int = 1000, spacing: str = "leading", steps_offset: int = 0
) -> np.ndarray:
    """Which of the T training steps a sampler visits, in decreasing order (int64, shape (n,)).

    Lin et al. 2024, Table 2 (n steps out of T):

    * ``linspace``: round(linspace(0, T−1, n)), reversed — includes both ends.
    * ``leading``:  k·⌊T/n⌋ for k = 0..n−1, reversed, plus ``steps_offset`` — never reaches T−1:
      with T = 1000 and n = 5 the sampler starts at t = 800 (801 with SD's offset 1), not at pure noise.
    * ``trailing``: round(T − k·T/n) − 1 for k = 0..n−1 — always starts at T−1, the step trained on
      (almost) pure noise. ``steps_offset`` does not apply. Unlike diffusers 0.42, never more than n values
      (diffusers returns n + 1, ending in −1, for n = 61, 103, 121, ... with T = 1000).
    """
    check_option("timestep_spacing", spacing, TIMESTEP_SPACINGS)
    T = check_int("num_train_timesteps", num_train_timesteps)
    steps_offset = check_int("steps_offset", steps_offset, minimum=0)
    n = _check_count("num_inference_steps", num_inference_steps, f"between 1 and num_train_timesteps={T}")
    if n < 1 or n > T:
        raise ValueError(f"num_inference_steps must be an integer between 1 and num_train_timesteps={T}, got {n!r}")
    if spacing == "linspace":
        return np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = T // n
        return (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64) + steps_offset
    # diffusers computes np.round(np.arange(T, 0, -T/n)) - 1. For 62 of the n in 1..1000 (n = 61, 103, 121, ...) the
    # float step makes arange return n + 1 values, the last one rounding to 0, i.e. a timestep of -1 that silently
    # indexes ᾱ[-1]. We keep diffusers' values (same rounding, ties to even) but only the first n of them.
    ratio = T / n
    return np.round(np.arange(T, 0, -ratio)).astype(np.int64)[:n] - 1


def custom_timesteps(timesteps, num_train_timesteps: int = 1000) -> np.ndarray:
    """Timesteps chosen by hand (``set_timesteps(timesteps=[...])``), checked as diffusers checks them: strictly
    decreasing and below T; also integers and ≥ 0 (diffusers lets −1 index ᾱ[−1]). Returns int64, shape (n,)."""
    num_train_timesteps = check_int("num_train_timesteps", num_train_timesteps)
    if not isinstance(timesteps, list | tuple | np.ndarray | torch.Tensor) or getattr(timesteps, "ndim", 1) != 1:
        got = f"shape {tuple(timesteps.shape)}" if hasattr(timesteps, "shape") else type(timesteps).__name__
        raise TypeError(f"timesteps must be a list or 1-D tensor of integer training steps 0..T−1, got {got}")
    if isinstance(timesteps, torch.Tensor):
        if timesteps.is_floating_point():
            raise TypeError(f"timesteps must be integers (training steps 0..T−1), got a {timesteps.dtype} tensor")
        timesteps = timesteps.cpu().tolist()
    values = list(timesteps)
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, np.integer))]
    if bad:
        raise TypeError(f"timesteps must be integers (training steps 0..T−1), got {bad[:3]}")
    if not values:
        raise ValueError("timesteps must not be empty")
    ts = np.asarray(values, dtype=np.int64)
    if ts.ndim != 1 or (len(ts) > 1 and not bool((np.diff(ts) < 0).all())):
        raise ValueError(f"custom timesteps must be in descending order, got {values}")
    if ts[0] >= num_train_timesteps or ts[-1] < 0:
        raise ValueError(
            f"custom timesteps must lie in [0, {num_train_timesteps - 1}] (num_train_timesteps), got {values}"
        )
    return ts


USUAL_BETA_RANGES = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012), "squaredcos_cap_v2": (1e-4, 0.02)}


def schedule_table(T: int = 1000) -> dict[str, torch.Tensor]:
    """ᾱ (T,) for each of :data:`~diffusion_lab.maths.schedules.BETA_SCHEDULES` with its usual β range
    (DDPM's 1e-4 → 0.02 for linear, Stable Diffusion's 0.00085 → 0.012 for scaled_linear)."""
    T = check_int("T", T, minimum=2)
    return {name: alphas_cumprod_from_betas(make_betas(name, T, *USUAL_BETA_RANGES[name])) for name in BETA_SCHEDULES}
