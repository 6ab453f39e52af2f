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

from diffusion_lab.maths.checks import (
    check_alpha_bar,
    check_broadcast,
    check_fraction,
    check_option,
    check_same_shape,
    check_timesteps,
)
from diffusion_lab.utils.errors import check_int, check_number, check_tensor

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
    "check_eta",
    "ddim_sigma",
    "ddim_step",
]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
Scalar = float | torch.Tensor


def extract(table: torch.Tensor, t: torch.Tensor | int, ndim: int) -> torch.Tensor:
    """``table[t]`` shaped (B, 1, ..., 1) with ``ndim`` dimensions in all, to broadcast over a batch.

    ``t`` is an int (same step for the whole batch, returns shape (1, ..., 1)) or a LongTensor of shape (B,).
    """
    check_tensor("table", table, "(T,) of per-step values such as alphas_cumprod")
    if table.ndim != 1 or len(table) == 0:
        raise ValueError(f"table must be 1-D (T,) and not empty, got shape {tuple(table.shape)}")
    ndim = check_int("ndim", ndim)
    if ndim > 64:
        raise ValueError(f"ndim must be the number of dimensions of x (at most 64), got {ndim}")
    t = check_timesteps("t", t, len(table), flow="flow_interpolate").to(table.device).reshape(-1)  # (B,) or (1,)
    return table[t].reshape(-1, *([1] * (ndim - 1)))  # (B, 1, ..., 1)


def q_sample(
    x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """Jump straight to step t: x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε (DDPM Eq. 4, the closed form of q(x_t | x_0)).

    x0, noise: (B, ...); t: int or (B,); alphas_cumprod: (T,). Returns x_t, (B, ...).
    """
    check_same_shape("x0", x0, "noise", noise)
    if not x0.is_floating_point() or x0.ndim == 0:
        raise ValueError(f"x0 must be a float tensor (B, ...), got {x0.dtype} of shape {tuple(x0.shape)}")
    _check_table("alphas_cumprod", alphas_cumprod)
    t = check_timesteps("t", t, len(alphas_cumprod), batch=x0.shape[0], flow="flow_interpolate")
    ab = extract(alphas_cumprod.to(device=x0.device, dtype=x0.dtype), t, x0.ndim)  # (B, 1, ...)
    return ab**0.5 * x0 + (1 - ab) ** 0.5 * noise


def _check_table(name: str, table: object) -> None:
    """A schedule table (T,) of ᾱ values in [0, 1]."""
    check_tensor(name, table, "(T,) of values in [0, 1]")
    if table.ndim != 1:
        raise ValueError(f"{name} must be 1-D (T,), got shape {tuple(table.shape)}")
    check_alpha_bar(name, table)


def q_step(x_prev: torch.Tensor, beta_t: Scalar, noise: torch.Tensor) -> torch.Tensor:
    """One step of the Markov chain: x_t = √(1−β_t)·x_{t−1} + √β_t·ε (DDPM Eq. 2). Shape of x_prev."""
    check_same_shape("x_prev", x_prev, "noise", noise)
    check_fraction("beta_t", beta_t, "β_t, the variance added at this step")
    check_broadcast("beta_t", beta_t, x_prev)
    beta_t = torch.as_tensor(beta_t, dtype=x_prev.dtype, device=x_prev.device)
    return (1 - beta_t) ** 0.5 * x_prev + beta_t**0.5 * noise


def _check_pair(name_a: str, a: object, name_b: str, b: object, ab_t: object) -> None:
    """Two tensors of one shape and ᾱ_t in [0, 1]."""
    check_same_shape(name_a, a, name_b, b)
    check_alpha_bar("ab_t", ab_t, like=a)


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, ab_t: Scalar) -> torch.Tensor:
    """x_0 = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t (DDPM Eq. 4 solved for x_0; DDIM Eq. 12, "predicted x_0")."""
    _check_pair("x_t", x_t, "eps", eps, ab_t)
    return (x_t - (1 - ab_t) ** 0.5 * eps) / ab_t**0.5


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, ab_t: Scalar) -> torch.Tensor:
    """ε = (x_t − √ᾱ_t·x_0) / √(1−ᾱ_t) (DDPM Eq. 4 solved for ε)."""
    _check_pair("x_t", x_t, "x0", x0, ab_t)
    return (x_t - ab_t**0.5 * x0) / (1 - ab_t) ** 0.5


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, ab_t: Scalar) -> torch.Tensor:
    """x_0 = √ᾱ_t·x_t − √(1−ᾱ_t)·v (Progressive Distillation, Appendix D)."""
    _check_pair("x_t", x_t, "v", v, ab_t)
    return ab_t**0.5 * x_t - (1 - ab_t) ** 0.5 * v


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, ab_t: Scalar) -> torch.Tensor:
    """ε = √ᾱ_t·v + √(1−ᾱ_t)·x_t (Progressive Distillation, Appendix D)."""
    _check_pair("x_t", x_t, "v", v, ab_t)
    return ab_t**0.5 * v + (1 - ab_t) ** 0.5 * x_t


def velocity(x0: torch.Tensor, noise: torch.Tensor, ab_t: Scalar) -> torch.Tensor:
    """v = √ᾱ_t·ε − √(1−ᾱ_t)·x_0, the v-prediction target (Progressive Distillation §4)."""
    _check_pair("x0", x0, "noise", noise, ab_t)
    return ab_t**0.5 * noise - (1 - ab_t) ** 0.5 * x0


def predict_x0_and_eps(
    model_output: torch.Tensor, x_t: torch.Tensor, ab_t: Scalar, prediction_type: str = "epsilon"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a network output of any :data:`PREDICTION_TYPES` into the pair (x̂_0, ε̂). Shapes of x_t."""
    check_option("prediction_type", prediction_type, PREDICTION_TYPES)
    check_tensor("model_output", model_output, "(B, ...), the network's output")
    check_tensor("x_t", x_t, "(B, ...), the noisy sample")
    if model_output.shape != x_t.shape:
        raise ValueError(
            f"model_output and x_t (the sample) must have the same shape, got {tuple(model_output.shape)} and {tuple(x_t.shape)}"
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
    check_tensor("x0", x0, "(B, ...), the predicted x_0")
    if x0.ndim == 0 or x0.numel() == 0 or not x0.is_floating_point():
        raise ValueError(f"x0 must be a non-empty float tensor (B, ...), got {x0.dtype} of shape {tuple(x0.shape)}")
    ratio = check_number("dynamic_thresholding_ratio", ratio)
    max_value = check_number("sample_max_value", max_value)
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


def _check_order(ab_t: Scalar, ab_prev: Scalar, like: torch.Tensor | None = None) -> None:
    """ᾱ_t and ᾱ_{t'} in [0, 1] with ᾱ_{t'} ≥ ᾱ_t and ᾱ_t < 1: a reverse step goes towards less noise (else a
    variance is negative or 0/0, and its square root NaN)."""
    check_alpha_bar("ab_t", ab_t, like)
    check_alpha_bar("ab_prev", ab_prev, like)
    if _numel(ab_t) == 1 and _numel(ab_prev) == 1:  # one read each, the usual case in a sampler step
        wrong = float(ab_prev) < float(ab_t) or float(ab_t) >= 1
    else:
        wrong = bool((torch.as_tensor(ab_prev) < torch.as_tensor(ab_t)).any() | (torch.as_tensor(ab_t) >= 1).any())
    if wrong:
        raise ValueError(
            "ab_prev must be >= ab_t and ab_t < 1: a reverse step goes from t to an earlier t' < t, where ᾱ is "
            f"larger; got ab_t={_short(ab_t)}, ab_prev={_short(ab_prev)} (swapped?)"
        )


def _numel(value: Scalar) -> int:
    return value.numel() if isinstance(value, torch.Tensor) else 1


def _short(value: Scalar) -> str:
    return f"{torch.as_tensor(value).tolist()!r:.60}"


def ddpm_posterior(
    x0: torch.Tensor, x_t: torch.Tensor, ab_t: Scalar, ab_prev: Scalar
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_{t'} | x_t, x_0), the true reverse step when x_0 is known (DDPM Eqs. 6-7).

    With the effective β'_t = 1 − ᾱ_t/ᾱ_{t'} and α'_t = 1 − β'_t (equal to β_t, α_t when t' = t−1):

        μ̃ = √ᾱ_{t'}·β'_t / (1−ᾱ_t) · x_0  +  √α'_t·(1−ᾱ_{t'}) / (1−ᾱ_t) · x_t      (Eq. 7)
        β̃ = (1−ᾱ_{t'}) / (1−ᾱ_t) · β'_t                                           (Eq. 7)

    Returns (mean with the shape of x_t, variance as a tensor broadcastable to it).
    """
    check_same_shape("x0", x0, "x_t", x_t)
    _check_order(ab_t, ab_prev, x_t)
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
    check_option("variance_type", variance_type, ("fixed_small", "fixed_large"))
    if noise is not None:
        check_same_shape("noise", noise, "x_t", x_t)
    mean, posterior_var = ddpm_posterior(x0, x_t, ab_t, ab_prev)
    if noise is None:
        return mean
    if variance_type == "fixed_small":
        var = torch.clamp(posterior_var, min=1e-20)
    else:
        var = 1 - torch.as_tensor(ab_t, dtype=x_t.dtype, device=x_t.device) / ab_prev
    return mean + var**0.5 * noise


def check_eta(eta: object) -> float:
    """η as a float in [0, 1]. ``ValueError`` outside it: above 1, σ_t exceeds √(1 − ᾱ_{t'}), more noise than the
    step has room for, and the DDIM step's √(1 − ᾱ_{t'} − σ_t²) is NaN."""
    eta = check_number("eta", eta)
    if not 0 <= eta <= 1:
        raise ValueError(
            f"eta must be >= 0 and <= 1, got {eta}: 0 = deterministic DDIM, 1 = DDPM-like (the posterior variance); "
            "above 1 it asks for more noise than the step has (σ_t > √(1 − ᾱ_prev), NaN samples)"
        )
    return eta


def ddim_sigma(ab_t: Scalar, ab_prev: Scalar, eta: float) -> torch.Tensor:
    """σ_t(η) = η · √((1−ᾱ_{t'}) / (1−ᾱ_t)) · √(1 − ᾱ_t/ᾱ_{t'}) (DDIM Eq. 16).

    σ² at η = 1 is exactly DDPM's posterior variance β̃ (:func:`ddpm_posterior`); η = 0 gives DDIM.
    """
    eta = check_eta(eta)
    _check_order(ab_t, ab_prev)
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
    check_same_shape("x0", x0, "eps", eps)
    if noise is not None:
        check_same_shape("noise", noise, "x0", x0)
    check_alpha_bar("ab_prev", ab_prev, like=x0)
    check_broadcast("sigma", sigma, x0)
    if isinstance(sigma, bool) or not isinstance(sigma, int | float | torch.Tensor) and not hasattr(sigma, "dtype"):
        raise TypeError(f"sigma must be a number or tensor (σ_t of ddim_sigma), got {type(sigma).__name__}")
    ab_prev = torch.as_tensor(ab_prev, dtype=x0.dtype, device=x0.device)
    sigma = torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device)
    room = 1 - ab_prev - sigma**2
    if not bool((room >= 0).all() & (sigma >= 0).all()):  # NaN fails both
        raise ValueError(
            f"sigma must be in [0, √(1 − ab_prev)] (eta <= 1 in ddim_sigma), got sigma={_short(sigma)} with "
            f"ab_prev={_short(ab_prev)}: more noise than the step has"
        )
    direction = room**0.5 * eps
    x_prev = ab_prev**0.5 * x0 + direction
    if noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev
