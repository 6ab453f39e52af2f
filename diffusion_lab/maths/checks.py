"""The input checks of the pure maths (the error convention of :mod:`diffusion_lab.utils.errors`): integer timesteps,
flow times, ᾱ values and same-shape tensors. Each costs one min/max at most, never a Python loop over elements, and
never scans a data tensor (x_0, ε, a model output) for NaN."""

from __future__ import annotations

import numpy as np
import torch

from diffusion_lab.utils.errors import check_choice, check_tensor

__all__ = [
    "check_alpha_bar",
    "check_broadcast",
    "check_flow_time",
    "check_option",
    "check_fraction",
    "check_same_shape",
    "check_timesteps",
]


def _type_name(value: object) -> str:
    return f"a {value.dtype} tensor" if isinstance(value, torch.Tensor) else type(value).__name__


def check_timesteps(
    name: str, t: object, num_train_timesteps: int, batch: int | None = None, flow: str | None = None
) -> torch.Tensor:
    """``t`` as a LongTensor of integer timesteps in 0..T−1: one for the whole batch or one per sample (``batch``).

    Python and NumPy ints, integer arrays and integer tensors are accepted; a float or bool → ``TypeError`` (with
    ``flow``, the name of the function to use for a flow time in [0, 1]); a value outside 0..T−1, an empty ``t`` or
    the wrong count → ``ValueError`` naming ``name`` and T."""
    T = num_train_timesteps
    what = f"integers in [0, {T - 1}] (timesteps 0..T-1, T = num_train_timesteps = {T})"
    if isinstance(t, torch.Tensor):
        tensor = t
    elif isinstance(t, bool | np.bool_) or not isinstance(t, int | np.integer | np.ndarray | list | tuple):
        tensor = None
    else:
        array = np.asarray(t)
        tensor = torch.as_tensor(array) if array.dtype.kind in "iub" else None  # ints (bools refused below)
    if tensor is None or tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        hint = f"; for a flow time in [0, 1] use {flow}" if flow else ""
        raise TypeError(f"{name} must be {what}, got {_type_name(t)} {t!r:.60}{hint}")
    if tensor.numel() == 0:
        raise ValueError(f"{name} must be {what}, got an empty tensor")
    if batch is not None and tensor.numel() not in (1, batch):
        raise ValueError(
            f"{name} must be one timestep or one per sample ({batch}), got {tensor.numel()} (shape {tuple(tensor.shape)})"
        )
    lo, hi = torch.aminmax(tensor.reshape(-1))
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= T:
        got = f"{lo}" if lo == hi else f"values from {lo} to {hi}"
        raise ValueError(f"{name} must be {what}, got {got}")
    return tensor.long()


def check_flow_time(name: str, sigma: object) -> torch.Tensor:
    """``sigma`` as a tensor of flow times in [0, 1] (0 = data, 1 = noise): a number, NumPy scalar/array or tensor.

    A bool or non-number → ``TypeError``; NaN, inf or a value outside [0, 1] → ``ValueError`` (a value above 1 that
    looks like a timestep gets "divide by num_train_timesteps")."""
    if isinstance(sigma, bool | np.bool_) or (isinstance(sigma, torch.Tensor) and sigma.dtype == torch.bool):
        raise TypeError(f"{name} (the flow time t) must be a number or tensor in [0, 1], got a bool {sigma!r}")
    if isinstance(sigma, torch.Tensor):
        s = sigma
    elif isinstance(sigma, int | float | np.integer | np.floating | np.ndarray | list | tuple):
        s = torch.as_tensor(np.asarray(sigma))
    else:
        s = None
    if s is None or s.is_complex():
        raise TypeError(f"{name} (the flow time t) must be a number or tensor in [0, 1], got {_type_name(sigma)}")
    if s.numel() == 0:
        raise ValueError(f"{name} (the flow time t) must not be empty")
    lo, hi = torch.aminmax(s.reshape(-1).double())
    lo, hi = float(lo), float(hi)
    if not (lo >= 0 and hi <= 1):  # also False for NaN
        hint = "; a timestep such as 500? the flow time is timestep / num_train_timesteps" if hi > 1 else ""
        raise ValueError(
            f"{name} (the flow time t) must lie in [0, 1] (0 = data, 1 = noise), got {s.tolist()!r:.80}{hint}"
        )
    return s


def check_fraction(name: str, value: object, what: str, hint: str = "") -> object:
    """``value`` itself if it lies in [0, 1]: a number, NumPy scalar or tensor (one min/max). A bool or non-number →
    ``TypeError``; empty, NaN or a value outside [0, 1] → ``ValueError`` naming ``name`` (``what`` says what it is)."""
    if isinstance(value, bool | np.bool_) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise TypeError(f"{name} ({what}) must be a number or tensor in [0, 1], got a bool")
    if isinstance(value, torch.Tensor):
        if value.numel() == 0:
            raise ValueError(f"{name} ({what}) must not be empty")
        if value.numel() == 1:  # the usual case in a sampler step: one read, no reduction
            lo = hi = float(value)
        else:
            lo, hi = (float(v) for v in torch.aminmax(value.detach().reshape(-1).double()))
    elif isinstance(value, int | float | np.integer | np.floating):
        lo = hi = float(value)
    else:
        raise TypeError(f"{name} ({what}) must be a number or tensor in [0, 1], got {type(value).__name__}")
    if not (lo >= 0 and hi <= 1):  # also False for NaN
        got = f"{lo}" if lo == hi else f"values from {lo} to {hi}"
        raise ValueError(f"{name} ({what}) must lie in [0, 1], got {got}{hint}")
    return value


def check_alpha_bar(name: str, value: object, like: torch.Tensor | None = None) -> object:
    """:func:`check_fraction` for a cumulative signal fraction ᾱ (outside [0, 1], √(1 − ᾱ) or √ᾱ is NaN); a tensor
    must broadcast to ``like`` (:func:`check_broadcast`)."""
    check_fraction(name, value, "ᾱ, the signal fraction", "; pass alphas_cumprod[t], not a timestep or a β")
    return check_broadcast(name, value, like)


def check_broadcast(name: str, value: object, like: torch.Tensor | None) -> object:
    """``value`` itself unless it is a tensor whose shape does not broadcast to ``like``'s (B, ...) without changing
    it: then ``ValueError`` (one value per sample is (B, 1, ..., 1), as ``extract`` returns it)."""
    if like is None or not isinstance(value, torch.Tensor) or value.ndim == 0:
        return value
    try:
        fits = torch.broadcast_shapes(value.shape, like.shape) == like.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"{name} has shape {tuple(value.shape)}, which does not broadcast to {tuple(like.shape)}: give one value, "
            "or one per sample shaped (B, 1, ..., 1) (extract(table, t, x.ndim) does that)"
        )
    return value


def check_option(name: str, value: object, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of the strings ``allowed``: ``TypeError`` for a non-string (an array would make
    ``in`` ambiguous), ``ValueError`` naming the allowed values (:func:`~diffusion_lab.utils.errors.check_choice`)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {list(allowed)} (a str), got {type(value).__name__}")
    check_choice(name, value, allowed)
    return value


def check_same_shape(name_a: str, a: object, name_b: str, b: object, expected: str = "(B, ...)") -> None:
    """``TypeError`` unless both are tensors, ``ValueError`` naming both unless their shapes are equal."""
    check_tensor(name_a, a, expected)
    check_tensor(name_b, b, expected)
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
