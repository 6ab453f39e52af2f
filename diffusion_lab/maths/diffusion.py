"""The maths of Gaussian diffusion as pure functions: the forward process, predictions, DDPM and DDIM steps.

Notation
--------
=================  ===========  ===============================================================
code               symbol       meaning (paper, equation)
=================  ===========  ===============================================================
``x0``             x_0          clean data
``x_t``/``sample`` x_t          noisy data at step t
``noise``/``eps``  ε            standard Gaussian noise, ε ~ N(0, I)
``ab_t``           ᾱ_t          cumulative signal fraction at t (see :mod:`diffusion_lab.maths.schedules`)
``ab_prev``        ᾱ_{t'}       the same at the step the sampler goes to next (t' < t; 1 past the end)
``v``              v            velocity √ᾱ_t·ε − √(1−ᾱ_t)·x_0 (Salimans & Ho 2022, "Progressive
                                Distillation", §4 and Appendix D)
``sigma``          σ_t          std of the noise a sampler step adds (DDIM Eq. 16)
``eta``            η            0 = deterministic DDIM, 1 = DDPM's posterior variance (DDIM §4.1)
``ratio``, ``s``   p, s         dynamic thresholding: s = clamp(p-quantile of |x̂_0|, 1, s_max) (Imagen §2.3)
=================  ===========  ===============================================================

Indexing convention: code index t = 0..T−1 is the paper's step t+1 (as in diffusers). A sampler may skip
steps: it goes from t to t' < t and every formula below uses ᾱ_t and ᾱ_{t'} directly, so skipping needs
no special case (β_t is replaced by the *effective* β'_t = 1 − ᾱ_t/ᾱ_{t'}).

Shapes: ``x0``, ``x_t``, ``noise``, ``model_output`` are (B, ...) of one shape. Alpha-bar arguments are
Python floats, 0-d tensors, or tensors broadcastable to x (use :func:`extract` for per-sample values).
The operations are written in the same order as diffusers so that results agree to float32 rounding.
"""

from __future__ import annotations

import torch

from diffusion_lab.utils.errors import check_choice

__all__ = [
    "PREDICTION_TYPES",
    "extract",
    "q_sample",
    "q_step",
    "x0_from_eps",
    "eps_from_x0",
    "x0_from_v",
    "eps_from_v",
    "velocity",
    "predict_x0_and_eps",
    "dynamic_threshold",
    "ddpm_posterior",
    "ddpm_step",
    "ddim_sigma",
    "ddim_step",
]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
Scalar = float | torch.Tensor


def extract(table: torch.Tensor, t: torch.Tensor | int, ndim: int) -> torch.Tensor:
    """``table[t]`` shaped (B, 1, ..., 1) with ``ndim`` dimensions in all, to broadcast over a batch.

    ``t`` is an int (same step for the whole batch, returns shape (1, ..., 1)) or a LongTensor of shape (B,).
    """
    t = torch.as_tensor(t, device=table.device).long().reshape(-1)  # (B,) or (1,)
    return table[t].reshape(-1, *([1] * (ndim - 1)))  # (B, 1, ..., 1)


def q_sample(
    x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Jump straight to step t: x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε (DDPM Eq. 4, the closed form of q(x_t | x_0)).

    x0, noise: (B, ...); t: int or (B,); alphas_cumprod: (T,). Returns x_t, (B, ...).
    """
    if x0.shape != noise.shape:
        raise ValueError(f"x0 and noise must have the same shape, got {tuple(x0.shape)} and {tuple(noise.shape)}")
    ab = extract(alphas_cumprod.to(device=x0.device, dtype=x0.dtype), t, x0.ndim)  # (B, 1, ...)
    return ab**0.5 * x0 + (1 - ab) ** 0.5 * noise


def q_step(x_prev: torch.Tensor, beta_t: Scalar, noise: torch.Tensor) -> torch.Tensor:
    """One step of the Markov chain: x_t = √(1−β_t)·x_{t−1} + √β_t·ε (DDPM Eq. 2). Shape of x_prev."""
    beta_t = torch.as_tensor(beta_t, dtype=x_prev.dtype, device=x_prev.device)
    return (1 - beta_t) ** 0.5 * x_prev + beta_t**0.5 * noise


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, ab_t: Scalar) -> torch.Tensor:
    """x_0 = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t (DDPM Eq. 4 solved for x_0; DDIM Eq. 12, "predicted x_0")."""
    return (x_t - (1 - ab_t) ** 0.5 * eps) / ab_t**0.5


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, ab_t: Scalar) -> torch.Tensor:
    """ε = (x_t − √ᾱ_t·x_0) / √(1−ᾱ_t) (DDPM Eq. 4 solved for ε)."""
    return (x_t - ab_t**0.5 * x0) / (1 - ab_t) ** 0.5


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, ab_t: Scalar) -> torch.Tensor:
    """x_0 = √ᾱ_t·x_t − √(1−ᾱ_t)·v (Progressive Distillation, Appendix D)."""
    return ab_t**0.5 * x_t - (1 - ab_t) ** 0.5 * v


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, ab_t: Scalar) -> torch.Tensor:
    """ε = √ᾱ_t·v + √(1−ᾱ_t)·x_t (Progressive Distillation, Appendix D)."""
    return ab_t**0.5 * v + (1 - ab_t) ** 0.5 * x_t


def velocity(x0: torch.Tensor, noise: torch.Tensor, ab_t: Scalar) -> torch.Tensor:
    """v = √ᾱ_t·ε − √(1−ᾱ_t)·x_0, the v-prediction target (Progressive Distillation §4)."""
    return ab_t**0.5 * noise - (1 - ab_t) ** 0.5 * x0


def predict_x0_and_eps(
    model_output: torch.Tensor, x_t: torch.Tensor, ab_t: Scalar, prediction_type: str = "epsilon"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a network output of any :data:`PREDICTION_TYPES` into the pair (x̂_0, ε̂). Shapes of x_t."""
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if model_output.shape != x_t.shape:
        raise ValueError(
            f"model_output and sample must have the same shape, got {tuple(model_output.shape)} and {tuple(x_t.shape)}"
        )
    if prediction_type == "epsilon":
        return x0_from_eps(x_t, model_output, ab_t), model_output
    if prediction_type == "sample":
        return model_output, eps_from_x0(x_t, model_output, ab_t)
    return x0_from_v(x_t, model_output, ab_t), eps_from_v(x_t, model_output, ab_t)


def dynamic_threshold(x0: torch.Tensor, ratio: float = 0.995, max_value: float = 1.0) -> torch.Tensor:
    """Imagen's dynamic thresholding of x̂_0 (Saharia et al. 2022, "Photorealistic Text-to-Image Diffusion Models
    with Deep Language Understanding", §2.3), diffusers' ``_threshold_sample``:

        s = clamp(quantile_p(|x̂_0|), 1, s_max)    per sample, over all its pixels
        x̂_0 ← clamp(x̂_0, −s, s) / s

    With s = 1 (no pixel beyond ±1 at the p-quantile) it is plain clipping to [−1, 1]; otherwise saturated pixels are
    pulled inwards, which keeps large guidance weights from burning the image. s_max < 1 makes s = s_max (as torch's
    clamp does when min > max). Computed in float32 (half precision
    is upcast, as diffusers does) and returned in the dtype of ``x0``. (B, ...) → (B, ...).
    """
    if not 0 < ratio <= 1:
        raise ValueError(
            f"dynamic_thresholding_ratio must be in (0, 1] (the quantile p; Imagen uses 0.995), got {ratio}"
        )
    if not max_value > 0:
        raise ValueError(
            f"sample_max_value must be > 0 (the largest threshold s_max; 1 = plain clipping), got {max_value}"
        )
    dtype, shape = x0.dtype, x0.shape
    x = x0 if dtype in (torch.float32, torch.float64) else x0.float()  # quantile and clamp need float32 on the CPU
    x = x.reshape(shape[0], -1)  # (B, N): one threshold per sample
    s = torch.quantile(x.abs(), ratio, dim=1)  # (B,) the p-quantile of |x̂_0|
    s = torch.clamp(s, min=1, max=max_value).unsqueeze(1)  # (B, 1); s = 1 is plain clipping
    x = torch.clamp(x, -s, s) / s
    return x.reshape(shape).to(dtype)


def ddpm_posterior(
    x0: torch.Tensor, x_t: torch.Tensor, ab_t: Scalar, ab_prev: Scalar
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_{t'} | x_t, x_0), the true reverse step when x_0 is known (DDPM Eqs. 6-7).

    With the effective β'_t = 1 − ᾱ_t/ᾱ_{t'} and α'_t = 1 − β'_t (equal to β_t, α_t when t' = t−1):

        μ̃ = √ᾱ_{t'}·β'_t / (1−ᾱ_t) · x_0  +  √α'_t·(1−ᾱ_{t'}) / (1−ᾱ_t) · x_t      (Eq. 7)
        β̃ = (1−ᾱ_{t'}) / (1−ᾱ_t) · β'_t                                           (Eq. 7)

    Returns (mean with the shape of x_t, variance as a tensor broadcastable to it).
    """
    ab_t = torch.as_tensor(ab_t, dtype=x_t.dtype, device=x_t.device)
    ab_prev = torch.as_tensor(ab_prev, dtype=x_t.dtype, device=x_t.device)
    alpha_t = ab_t / ab_prev  # α'_t
    beta_t = 1 - alpha_t  # β'_t
    coef_x0 = (ab_prev**0.5 * beta_t) / (1 - ab_t)
    coef_xt = alpha_t**0.5 * (1 - ab_prev) / (1 - ab_t)
    mean = coef_x0 * x0 + coef_xt * x_t
    variance = (1 - ab_prev) / (1 - ab_t) * beta_t
    return mean, variance


def ddpm_step(
    x0: torch.Tensor,
    x_t: torch.Tensor,
    ab_t: Scalar,
    ab_prev: Scalar,
    noise: torch.Tensor | None,
    variance_type: str = "fixed_small",
) -> torch.Tensor:
    """Ancestral sampling step x_{t'} = μ̃(x_t, x̂_0) + σ_t·z (DDPM Algorithm 2, with x̂_0 in Eq. 7).

    ``variance_type`` picks σ_t² (DDPM §3.2): ``fixed_small`` = β̃ (the posterior variance, clamped at
    1e-20) or ``fixed_large`` = β'_t; the paper found both give similar samples. ``noise=None`` adds no
    noise (the last step, t = 0, is taken without noise).
    """
    check_choice("variance_type", variance_type, ("fixed_small", "fixed_large"))
    mean, posterior_var = ddpm_posterior(x0, x_t, ab_t, ab_prev)
    if noise is None:
        return mean
    if variance_type == "fixed_small":
        var = torch.clamp(posterior_var, min=1e-20)
    else:
        var = 1 - torch.as_tensor(ab_t, dtype=x_t.dtype, device=x_t.device) / ab_prev
    return mean + var**0.5 * noise


def ddim_sigma(ab_t: Scalar, ab_prev: Scalar, eta: float) -> torch.Tensor:
    """σ_t(η) = η · √((1−ᾱ_{t'}) / (1−ᾱ_t)) · √(1 − ᾱ_t/ᾱ_{t'}) (DDIM Eq. 16).

    σ² at η = 1 is exactly DDPM's posterior variance β̃ (:func:`ddpm_posterior`); η = 0 gives DDIM.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0 (0 = DDIM, 1 = DDPM variance), got {eta}")
    ab_t, ab_prev = torch.as_tensor(ab_t), torch.as_tensor(ab_prev)
    variance = ((1 - ab_prev) / (1 - ab_t)) * (1 - ab_t / ab_prev)
    return eta * variance**0.5


def ddim_step(
    x0: torch.Tensor, eps: torch.Tensor, ab_prev: Scalar, sigma: Scalar = 0.0, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """x_{t'} = √ᾱ_{t'}·x̂_0 + √(1 − ᾱ_{t'} − σ_t²)·ε̂ + σ_t·z (DDIM Eq. 12).

    The first term is "predicted x_0", the second the "direction pointing to x_t", the third random noise
    (omitted when ``noise`` is None or σ = 0). Shapes of x0.
    """
    if x0.shape != eps.shape:
        raise ValueError(f"x0 and eps must have the same shape, got {tuple(x0.shape)} and {tuple(eps.shape)}")
    ab_prev = torch.as_tensor(ab_prev, dtype=x0.dtype, device=x0.device)
    sigma = torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device)
    direction = (1 - ab_prev - sigma**2) ** 0.5 * eps
    x_prev = ab_prev**0.5 * x0 + direction
    if noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev
