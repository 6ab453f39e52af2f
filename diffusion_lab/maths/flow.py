"""Rectified flow, as Stable Diffusion 3 trains and samples it: straight paths, velocity targets, the timestep shift.

Notation
--------
=====================  ==========  ===================================================================================
code                   symbol      meaning
=====================  ==========  ===================================================================================
``x0``                 x₀          data (a latent), (B, C, H, W)
``noise``              ε           standard normal noise, same shape
``sigma``              t (σ)       the position on the path, in [0, 1]: 0 = data, 1 = pure noise
``x_t``                x_t         the point (1 − t)·x₀ + t·ε on the straight path
``v``                  v           the velocity dx_t/dt = ε − x₀ (what the network predicts)
``shift``              α           the timestep shift α·t / (1 + (α − 1)·t): α > 1 spends more steps near the noise
``timesteps``          1000·t      what the network is told (diffusers' ``FlowMatchEulerDiscreteScheduler`` convention)
=====================  ==========  ===================================================================================

Indexing convention: continuous time. t = 1 is pure noise and sampling runs from t = 1 down to t = 0, the opposite
direction to DDPM's integer index but the same meaning (larger t, more noise). diffusers calls t "sigma" and feeds
the network ``timestep = 1000·t``; we keep both names.

The maths (Liu et al. 2022, "Flow Straight and Fast"; Esser et al. 2024, "Scaling Rectified Flow Transformers for
High-Resolution Image Synthesis", the SD3 paper, §2–3):

- forward path   x_t = (1 − t)·x₀ + t·ε                          (SD3 §3.1, rectified flow: a_t = 1 − t, b_t = t)
- velocity       v = dx_t/dt = ε − x₀, the regression target:   L = E_{t, x₀, ε} ‖v_θ(x_t, t) − (ε − x₀)‖²
- estimate of x₀ x̂₀ = x_t − t·v_θ   (and of ε: ε̂ = x_t + (1 − t)·v_θ)
- Euler step     x_{t'} = x_t + (t' − t)·v_θ(x_t, t)   for t' < t: along a straight line, one step can be exact
- logit-normal   t = sigmoid(u), u ~ N(m, s²): training time concentrated in the middle (SD3 §3.1, "lognorm(0, 1)")
- shift          t ↦ α·t / (1 + (α − 1)·t): more of the sampling steps at high noise, needed when images have more
                 pixels (SD3 §5.3.2, α = √(m/n) for m pixels against a base of n; SD3 uses α = 3 at 1024²)

Classifier-free guidance is unchanged: it combines velocities exactly as it combines ε (``maths.guidance.cfg_combine``),
since v is an affine function of ε at fixed x_t and t.
"""

from __future__ import annotations

import numpy as np
import torch

from diffusion_lab.maths.checks import check_flow_time, check_same_shape
from diffusion_lab.utils.errors import check_generator, check_int, check_number
from diffusion_lab.utils.torch_utils import randn

__all__ = [
    "flow_interpolate",
    "flow_velocity",
    "flow_predict_x0",
    "flow_euler_step",
    "shift_sigmas",
    "logit_normal_timesteps",
]


def _check_sigma(sigma: torch.Tensor | float, name: str = "sigma") -> None:
    """A flow time (or several) in [0, 1] (:func:`~diffusion_lab.maths.checks.check_flow_time`)."""
    check_flow_time(name, sigma)


def _per_sample(sigma: torch.Tensor | float, like: torch.Tensor, name: str = "sigma") -> torch.Tensor:
    """σ as a tensor broadcastable against ``like`` (B, ...): a scalar, or one value per sample."""
    if not isinstance(sigma, torch.Tensor):
        sigma = np.asarray(sigma)  # NumPy scalars and arrays too
    s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    if s.numel() == 1 and s.ndim <= 1:
        return s.reshape(())
    if s.ndim != 1 or len(s) != like.shape[0]:
        raise ValueError(f"{name} must be one value or one per sample ({like.shape[0]}), got shape {tuple(s.shape)}")
    return s.reshape(-1, *([1] * (like.ndim - 1)))  # (B, 1, 1, 1)


def flow_interpolate(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """x_t = (1 − t)·x₀ + t·ε, the straight path (SD3 §3.1). ``sigma``: a scalar or (B,) in [0, 1]."""
    check_same_shape("x0", x0, "noise", noise)
    _check_sigma(sigma)
    t = _per_sample(sigma, x0)
    return (1 - t) * x0 + t * noise  # (B, C, H, W)


def flow_velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """v = dx_t/dt = ε − x₀: the same at every t, because the path is straight."""
    check_same_shape("x0", x0, "noise", noise)
    return noise - x0


def flow_predict_x0(x_t: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """x̂₀ = x_t − t·v: follow the predicted velocity back to t = 0 in one step."""
    check_same_shape("x_t", x_t, "v", v)
    _check_sigma(sigma)
    return x_t - _per_sample(sigma, x_t) * v


def flow_euler_step(
    x_t: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float
) -> torch.Tensor:
    """x_{t'} = x_t + (t' − t)·v, one Euler step of the ODE dx/dt = v from t to t' (t' < t when sampling)."""
    check_same_shape("x_t", x_t, "v", v)
    _check_sigma(sigma)
    _check_sigma(sigma_next, "sigma_next")
    return x_t + (_per_sample(sigma_next, x_t, "sigma_next") - _per_sample(sigma, x_t)) * v


def shift_sigmas(sigmas: torch.Tensor | np.ndarray | float, shift: float):
    """t ↦ α·t / (1 + (α − 1)·t) (SD3 §5.3.2): 0 and 1 stay put, every t in between moves towards 1 if α > 1.

    Works on floats, numpy arrays and tensors, and keeps their type and dtype (diffusers applies it to float32
    tensors in the constructor and to float64 arrays in ``set_timesteps``; parity needs both)."""
    try:
        shift = check_number("shift", shift)
    except ValueError:  # NaN or inf: the message below says what a shift is
        shift = float("nan")
    if not shift > 0:
        raise ValueError(f"shift must be a positive number (1: no shift; SD3 uses 3.0), got {shift!r}")
    check_flow_time("sigmas", sigmas)
    if isinstance(sigmas, list | tuple):
        sigmas = np.asarray(sigmas, dtype=np.float64)
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def logit_normal_timesteps(
    n: int, mean: float = 0.0, std: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """n training times t = sigmoid(u), u ~ N(mean, std²) (SD3 §3.1, "logit-normal sampling"): (n,) in (0, 1).

    The density peaks in the middle of the path, where the SD3 paper argues the velocity is hardest to predict (near
    t = 1 the best answer is close to ε minus the data mean, near t = 0 close to the noise); its best setting was
    mean 0, std 1."""
    n = check_int("n", n)
    mean = check_number("mean", mean)
    std = check_number("std", std)
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std!r}")
    if isinstance(check_generator("generator", generator, batch=n), list):
        return torch.sigmoid(mean + std * randn((n,), generator))  # one draw per generator
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator))
