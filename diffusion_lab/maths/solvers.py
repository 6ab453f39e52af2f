"""ODE and SDE solvers for diffusion sampling as pure functions: Karras σ, Euler, Heun, Euler-ancestral, DPM-Solver++.

Every ᾱ-schedule (DDPM's, SD's) is also a noise level σ: x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε divided by √ᾱ_t is
x_0 + σ_t·ε with σ_t = √((1−ᾱ_t)/ᾱ_t). In that scale sampling is the probability-flow ODE of Karras et al. 2022
("Elucidating the Design Space of Diffusion-Based Generative Models", EDM), dx/dσ = (x − D(x; σ))/σ (their
Eq. 1 with the score of Eq. 3 and σ(t) = t), where D is the denoiser x̂_0. The Euler and Heun schedulers integrate
it; DDIM is its Euler step. DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models") integrates the same ODE in the unscaled x_t with an exponential integrator in
λ = log(α_t/σ_t), the half log-SNR.

Notation
--------
====================  ===========  ===================================================================================
code                  symbol       meaning (paper, equation)
====================  ===========  ===================================================================================
``sigma``             σ            noise level: x = x_0 + σ·ε (EDM §2); σ_t = √((1−ᾱ_t)/ᾱ_t) for an ᾱ-schedule
``sigma_next``        σ_{i+1}      the noise level the step goes to (σ_{i+1} < σ_i; the last one is 0)
``x0``                D(x; σ)      the denoiser's estimate x̂_0 (EDM Eqs. 2-3), from ε, v or x_0 predictions
``derivative``        d_i          (x_i − D(x_i; σ_i))/σ_i, the ODE's slope dx/dσ (EDM Alg. 1)
``rho``               ρ            Karras spacing exponent, 7 (EDM Eq. 5)
``sigma_up/down``     σ_up, σ_dn   ancestral split: σ_dn² + σ_up² = σ_{i+1}² (k-diffusion ``get_ancestral_step``)
``alpha_t, sigma_t``  α_t, σ_t     the VP pair of DPM-Solver: x_t = α_t·x_0 + σ_t·ε, α_t = 1/√(σ²+1), σ_t = σ·α_t
``lambda``            λ_t          log(α_t/σ_t) = −log σ, the half log-SNR (DPM-Solver, Lu et al. 2022a, §3.1)
``h``                 h_i          λ_{t_i} − λ_{t_{i−1}}, the step in λ (> 0 when sampling)
``r``                 r_i          h_{i−1}/h_i, the ratio of the last two steps (DPM-Solver++ Alg. 2)
====================  ===========  ===================================================================================

Indexing convention: σ-sequences run from noisy to clean, σ_0 > σ_1 > … > σ_{n−1} > σ_n = 0 (the final 0 appended
as diffusers does); step i goes σ_i → σ_{i+1}. Training timesteps are diffusers' integers 0..T−1 (code index t is
the paper's step t+1, see :mod:`diffusion_lab.maths.schedules`), but a σ between two of them maps to a fractional
timestep (log-σ interpolation, :func:`sigma_to_timestep`).

Shapes: ``sample``, ``model_output``, ``x0``, ``noise`` are (B, ...) of one shape; σ, α_t, σ_t, λ, h are Python
floats or 0-d tensors. Schedule arrays (σ tables, timesteps) are NumPy, as in diffusers, and every formula is
written in diffusers' order of operations and dtypes (float32 tables, float64 NumPy intermediates) so that our
schedulers equal diffusers' to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import torch

from diffusion_lab.maths.checks import check_option, check_same_shape
from diffusion_lab.maths.schedules import TIMESTEP_SPACINGS, inference_timesteps
from diffusion_lab.utils.errors import check_int, check_number, check_tensor

__all__ = [
    "SIGMA_PREDICTION_TYPES",
    "SOLVER_TYPES",
    "vp_sigmas",
    "karras_sigmas",
    "sigma_to_timestep",
    "timesteps_to_sigmas",
    "sigma_timesteps",
    "dpm_timesteps",
    "check_steps",
    "sigma_predict_x0",
    "vp_alpha_sigma",
    "vp_predict_x0",
    "ode_derivative",
    "euler_step",
    "heun_step",
    "churn_gamma",
    "ancestral_sigmas",
    "euler_ancestral_step",
    "dpm_lambda",
    "dpmpp_first_order_step",
    "dpmpp_second_order_step",
]

SIGMA_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SOLVER_TYPES = ("midpoint", "heun")  # DPM-Solver++(2M)'s two second-order corrections (diffusers' ``solver_type``)
Scalar = float | torch.Tensor


# --- schedules in σ ---------------------------------------------------------------------------------------------


def vp_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """σ_t = √((1 − ᾱ_t)/ᾱ_t) for every training step (EDM Table 1, the VP column; the σ of DDIM §4.3):
    (T,) float32 → (T,) float32, increasing with t. ᾱ_t = 0 (zero terminal SNR) gives σ = inf."""
    check_tensor("alphas_cumprod", alphas_cumprod, "(T,) of ᾱ values in (0, 1]")
    if alphas_cumprod.ndim != 1 or len(alphas_cumprod) == 0:
        raise ValueError(f"alphas_cumprod must be 1-D (T,), got shape {tuple(alphas_cumprod.shape)}")
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def karras_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int, rho: float = 7.0) -> np.ndarray:
    """EDM Eq. 5: σ_i = (σ_max^{1/ρ} + i/(n−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i = 0 … n−1 (float64, shape (n,)).

    Evenly spaced in σ^{1/ρ}: with ρ = 7 the steps crowd towards σ_min, where the ODE bends most (EDM §3, Fig. 2).
    n = 1 gives [σ_max]. No final 0 (the schedulers append it)."""
    sigma_min = check_number("sigma_min", sigma_min)
    sigma_max = check_number("sigma_max", sigma_max)
    rho = check_number("rho", rho)
    n = check_int("num_inference_steps", num_inference_steps)
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0 (EDM uses 7), got {rho}")
    ramp = np.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def sigma_to_timestep(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """The (fractional) training timestep of each σ, interpolating linearly in log σ between the two neighbouring
    training steps, as diffusers' ``_sigma_to_t`` (and k-diffusion's ``sigma_to_t``).

    ``log_sigmas``: (T,) log σ_t of the training steps, increasing (float32 in diffusers); ``sigmas``: (n,) or a
    scalar. Outside the table the result is clipped to 0 or T−1. Returns float64 of the shape of ``sigmas``."""
    sigmas, log_sigmas = _numpy(sigmas), _numpy(log_sigmas)
    if log_sigmas.ndim != 1 or len(log_sigmas) < 2:
        raise ValueError(f"log_sigmas must be 1-D with at least 2 values, got shape {log_sigmas.shape}")
    log_sigma = np.log(np.maximum(sigmas, 1e-10))  # (n,)
    dists = log_sigma - log_sigmas[:, np.newaxis]  # (T, n)
    low_idx = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)  # (n,)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)  # the weight of the upper neighbour
    t = (1 - w) * low_idx + w * high_idx
    return t.reshape(sigmas.shape)


def timesteps_to_sigmas(timesteps: np.ndarray, sigmas: torch.Tensor | np.ndarray) -> np.ndarray:
    """σ at (possibly fractional) timesteps: linear interpolation in the (T,) table ``sigmas`` (``np.interp``, as
    diffusers' ``interpolation_type="linear"``). (n,) → (n,) float64."""
    table = _numpy(sigmas)
    return np.interp(_numpy(timesteps), np.arange(0, len(table)), table)


def _numpy(values: object) -> np.ndarray:
    """A tensor (moved to the CPU), array, list or number as a NumPy array."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def sigma_timesteps(
    num_inference_steps: int, num_train_timesteps: int = 1000, spacing: str = "linspace", steps_offset: int = 0
) -> np.ndarray:
    """The inference timesteps of diffusers' Euler, Euler-ancestral and Heun schedulers (float32, decreasing, (n,)):
    ``leading`` and ``trailing`` as :func:`~diffusion_lab.maths.schedules.inference_timesteps`, but ``linspace`` is
    *not rounded*: linspace(0, T−1, n) reversed, so its timesteps may be fractional (n = 7: 999, 832.5, …, 0); σ is
    interpolated between training steps (:func:`timesteps_to_sigmas`)."""
    check_option("timestep_spacing", spacing, TIMESTEP_SPACINGS)
    T = check_int("num_train_timesteps", num_train_timesteps, minimum=2)
    n = check_steps(num_inference_steps, T)
    if spacing == "linspace":
        return np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
    return inference_timesteps(n, T, spacing, steps_offset).astype(np.float32)


def dpm_timesteps(
    num_inference_steps: int,
    num_train_timesteps: int = 1000,
    spacing: str = "linspace",
    steps_offset: int = 0,
    last_timestep: int | None = None,
) -> np.ndarray:
    """DPM-Solver's inference timesteps (int64, decreasing, shape (n,)): n + 1 points with the last (t = 0) dropped,
    so unlike :func:`~diffusion_lab.maths.schedules.inference_timesteps` ``linspace`` and ``leading`` never visit 0.

    * ``linspace``: round(linspace(0, L−1, n+1)) reversed, without its last value (0).
    * ``leading``:  k·⌊L/(n+1)⌋ for k = n … 1, plus ``steps_offset``.
    * ``trailing``: round(L − k·T/n) − 1 for k = 0 … n−1 (the same as the other schedulers' when L = T).

    L = ``last_timestep`` (T unless ``lambda_min_clipped`` cuts the noisy end). Unlike diffusers, ``trailing`` never
    returns more than n values (see :func:`~diffusion_lab.maths.schedules.inference_timesteps`)."""
    check_option("timestep_spacing", spacing, TIMESTEP_SPACINGS)
    T = check_int("num_train_timesteps", num_train_timesteps, minimum=2)
    n = check_steps(num_inference_steps, T)
    steps_offset = check_int("steps_offset", steps_offset, minimum=0)
    last = T if last_timestep is None else check_int("last_timestep", last_timestep)
    if spacing == "linspace":
        return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = last // (n + 1)
        if ratio == 0:  # diffusers returns n copies of steps_offset (and the solver divides by h = 0)
            raise ValueError(
                f"timestep_spacing='leading' with num_inference_steps={n} needs n + 1 <= {last} training steps "
                "(DPM-Solver spaces n + 1 points); use fewer steps or 'trailing'"
            )
        return (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + steps_offset
    ratio = T / n
    return np.arange(last, 0, -ratio).round().copy().astype(np.int64)[:n] - 1


def check_steps(num_inference_steps: object, num_train_timesteps: int) -> int:
    """``num_inference_steps`` as an int in 1..T: ``TypeError`` for a non-integer, ``ValueError`` out of range (the
    same message as :func:`~diffusion_lab.maths.schedules.inference_timesteps`)."""
    T = num_train_timesteps
    what = f"num_inference_steps must be an integer between 1 and num_train_timesteps={T}"
    try:
        n = check_int("num_inference_steps", num_inference_steps, minimum=None)
    except TypeError as e:
        raise TypeError(f"{what}, {str(e).split(', ', 1)[-1]}") from None
    if not 1 <= n <= T:
        raise ValueError(f"{what}, got {n!r}")
    return n


# --- the denoiser D(x; σ) from a network output -----------------------------------------------------------------


def sigma_predict_x0(
    model_output: torch.Tensor, sample: torch.Tensor, sigma: Scalar, prediction_type: str = "epsilon"
) -> torch.Tensor:
    """x̂_0 = D(x; σ) for a sample in the σ scale, x = x_0 + σ·ε (what Euler/Heun step), from a network that saw
    x/√(σ²+1) (the unit-variance x_t of its training; ``scale_model_input``):

    * ``epsilon``:      x̂_0 = x − σ·ε̂                                   (EDM Eq. 7, Table 1: c_skip = 1, c_out = −σ)
    * ``v_prediction``: x̂_0 = −σ/√(σ²+1)·v̂ + x/(σ²+1)                  (c_skip = 1/(σ²+1), c_out = −σ/√(σ²+1); Salimans & Ho 2022)
    * ``sample``:       x̂_0 = the output itself.

    (B, ...) → (B, ...); ``sigma`` a float or 0-d tensor."""
    check_option("prediction_type", prediction_type, SIGMA_PREDICTION_TYPES)
    check_same_shape("model_output", model_output, "sample", sample)
    if prediction_type == "epsilon":
        return sample - sigma * model_output
    if prediction_type == "v_prediction":
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
    return model_output


def vp_alpha_sigma(sigma: Scalar) -> tuple[Scalar, Scalar]:
    """(α_t, σ_t) = (1/√(σ²+1), σ/√(σ²+1)) from the σ-scale noise level: the unscaled x_t = α_t·x_0 + σ_t·ε
    (α_t = √ᾱ_t, σ_t = √(1−ᾱ_t); DPM-Solver §2)."""
    alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
    return alpha_t, sigma * alpha_t


def vp_predict_x0(
    model_output: torch.Tensor, sample: torch.Tensor, alpha_t: Scalar, sigma_t: Scalar, prediction_type: str
) -> torch.Tensor:
    """The data prediction x_θ(x_t, t) of DPM-Solver++ (§3.2) from the network output, for the unscaled x_t:

    * ``epsilon``:      x̂_0 = (x_t − σ_t·ε̂)/α_t
    * ``v_prediction``: x̂_0 = α_t·x_t − σ_t·v̂
    * ``sample``:       x̂_0 = the output itself.

    (B, ...) → (B, ...)."""
    check_option("prediction_type", prediction_type, SIGMA_PREDICTION_TYPES)
    check_same_shape("model_output", model_output, "sample", sample)
    if prediction_type == "epsilon":
        return (sample - sigma_t * model_output) / alpha_t
    if prediction_type == "v_prediction":
        return alpha_t * sample - sigma_t * model_output
    return model_output


# --- Euler, Heun, Euler-ancestral (EDM Algorithms 1-2; k-diffusion) -----------------------------------------------


def ode_derivative(sample: torch.Tensor, x0: torch.Tensor, sigma: Scalar) -> torch.Tensor:
    """d = (x − D(x; σ))/σ, the slope dx/dσ of the probability-flow ODE (EDM Eqs. 1 and 3 with σ(t) = t; Alg. 1).
    (B, ...) → (B, ...)."""
    check_same_shape("sample", sample, "x0", x0)
    return (sample - x0) / sigma


def euler_step(sample: torch.Tensor, x0: torch.Tensor, sigma: Scalar, sigma_next: Scalar) -> torch.Tensor:
    """x_{i+1} = x_i + (σ_{i+1} − σ_i)·d_i with d_i = (x_i − x̂_0)/σ_i (EDM Alg. 1, the Euler step).

    With σ_{i+1} = 0 it lands on x̂_0; in σ it is exactly DDIM's η = 0 step (EDM §3). (B, ...) → (B, ...)."""
    derivative = ode_derivative(sample, x0, sigma)
    dt = sigma_next - sigma
    return sample + derivative * dt


def heun_step(
    sample: torch.Tensor, derivative: torch.Tensor, derivative_next: torch.Tensor, dt: Scalar
) -> torch.Tensor:
    """Heun's second-order correction (EDM Alg. 1, taken when σ_{i+1} ≠ 0): from the start x_i of the step, with the slope d_i there
    and d'_i at the Euler point x_{i+1} (evaluated at σ_{i+1}), x_{i+1} = x_i + (σ_{i+1} − σ_i)·(d_i + d'_i)/2.

    The trapezoidal rule: error O(h³) per step against Euler's O(h²), for one more network call. EDM skips it on the
    last step (σ_{i+1} = 0, where d' is undefined): that step stays Euler. (B, ...) → (B, ...)."""
    check_same_shape("derivative", derivative, "derivative_next", derivative_next)
    check_same_shape("sample", sample, "derivative", derivative)
    derivative = (derivative + derivative_next) / 2
    return sample + derivative * dt


def churn_gamma(
    s_churn: float, num_steps: int, sigma: float, s_tmin: float = 0.0, s_tmax: float = float("inf")
) -> float:
    """EDM Alg. 2's γ_i = min(S_churn/N, √2 − 1) if σ_i ∈ [S_tmin, S_tmax], else 0: the step first raises the noise to
    σ̂ = (1 + γ)·σ by adding √(σ̂² − σ²)·ε (diffusers' ``s_churn``; 0 = the deterministic ODE)."""
    s_churn = check_number("s_churn", s_churn, minimum=0.0)
    num_steps = check_int("num_steps", num_steps)
    return min(s_churn / num_steps, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0


def ancestral_sigmas(sigma_from: Scalar, sigma_to: Scalar) -> tuple[Scalar, Scalar]:
    """Split a step σ → σ' into a deterministic part down to σ_down and fresh noise σ_up (k-diffusion
    ``get_ancestral_step`` with η = 1, i.e. DDPM's posterior variance in σ):

        σ_up = √(σ'²·(σ² − σ'²)/σ²),   σ_down = √(σ'² − σ_up²)

    so that σ_down² + σ_up² = σ'²: the noise level after the step is σ' again. σ' = 0 gives (0, 0)."""
    sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_up, sigma_down


def euler_ancestral_step(
    sample: torch.Tensor, x0: torch.Tensor, sigma: Scalar, sigma_down: Scalar, sigma_up: Scalar, noise: torch.Tensor
) -> torch.Tensor:
    """Euler-ancestral (k-diffusion ``sample_euler_ancestral``): an Euler step to σ_down, then σ_up·z:

        x' = x + (σ_down − σ)·(x − x̂_0)/σ + σ_up·z,   z ~ N(0, I)

    The reverse SDE's ancestral sampler (Song et al. 2021): it forgets part of x at every step, so errors of early
    steps are washed out, and it never converges as steps are added. (B, ...) → (B, ...)."""
    check_same_shape("sample", sample, "noise", noise)
    derivative = ode_derivative(sample, x0, sigma)
    dt = sigma_down - sigma
    prev_sample = sample + derivative * dt
    return prev_sample + noise * sigma_up


# --- DPM-Solver++ (Lu et al. 2022, Algorithms 1-2) ----------------------------------------------------------------


def dpm_lambda(alpha_t: Scalar, sigma_t: Scalar) -> torch.Tensor:
    """λ_t = log α_t − log σ_t, the half log-SNR (DPM-Solver §3.1): the time variable of the exponential integrator."""
    return torch.log(torch.as_tensor(alpha_t)) - torch.log(torch.as_tensor(sigma_t))


def dpmpp_first_order_step(
    sample: torch.Tensor, x0: torch.Tensor, alpha_t: Scalar, sigma_t: Scalar, sigma_s: Scalar, h: Scalar
) -> torch.Tensor:
    """DPM-Solver++(1) from s to t (Lu et al. 2022, §4.1: the exact solution with x̂_0 held constant), h = λ_t − λ_s:

        x_t = (σ_t/σ_s)·x_s − α_t·(e^{−h} − 1)·x̂_0

    The exact solution of the ODE if x̂_0 stays constant over the step; it is DDIM (η = 0) written in λ.
    (B, ...) → (B, ...)."""
    check_same_shape("sample", sample, "x0", x0)
    return (sigma_t / sigma_s) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * x0


def dpmpp_second_order_step(
    sample: torch.Tensor,
    x0: torch.Tensor,
    x0_prev: torch.Tensor,
    alpha_t: Scalar,
    sigma_t: Scalar,
    sigma_s0: Scalar,
    h: Scalar,
    h_0: Scalar,
    solver_type: str = "midpoint",
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): a multistep second-order step that reuses the previous step's x̂_0,
    no extra network call. With r = h_{i−1}/h_i, D0 = x̂_0 and D1 = (x̂_0 − x̂_0^{prev})/r (the slope of x̂_0 in λ
    times h):

        midpoint (Alg. 2):  x_t = (σ_t/σ_s)·x_s − α_t(e^{−h} − 1)·D0 − ½·α_t(e^{−h} − 1)·D1
        heun:               x_t = (σ_t/σ_s)·x_s − α_t(e^{−h} − 1)·D0 + α_t((e^{−h} − 1)/h + 1)·D1

    Alg. 2's D_i = (1 + 1/(2r))·x̂_0 − 1/(2r)·x̂_0^{prev} is D0 + ½·D1. (B, ...) → (B, ...)."""
    check_option("solver_type", solver_type, SOLVER_TYPES)
    check_same_shape("x0", x0, "x0_prev", x0_prev)
    check_same_shape("sample", sample, "x0", x0)
    r0 = h_0 / h
    D0, D1 = x0, (1.0 / r0) * (x0 - x0_prev)
    if solver_type == "midpoint":
        return (
            (sigma_t / sigma_s0) * sample
            - (alpha_t * (torch.exp(-h) - 1.0)) * D0
            - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * D1
        )
    return (
        (sigma_t / sigma_s0) * sample
        - (alpha_t * (torch.exp(-h) - 1.0)) * D0
        + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * D1
    )
