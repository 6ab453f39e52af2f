"""Exercise checkers of notebook 01 (forward diffusion).

============================  =============================================================================
checker                       the student's function must return
============================  =============================================================================
``check_q_sample``            x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε, one t per sample (DDPM Eq. 4)
``check_snr_crossing``        the first t with SNR_t = ᾱ_t/(1 − ᾱ_t) < 1 (0 dB)
``check_trailing_timesteps``  trailing spacing: round(T − k·T/n) − 1, k = 0..n−1
============================  =============================================================================

Each checker calls the student's function on seeded cases, compares it with the library's reference (or an
independent formula) and prints one ✅/❌ line with a hint naming the usual mistake; an error raised by the student's
code becomes a ❌, and only a checker's own arguments raise (a non-callable ``fn``: ``TypeError``). Shared
machinery: :mod:`diffusion_lab.course.exercises.checking`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from diffusion_lab.course.exercises.checking import (
    _as_int_list,
    _as_number,
    _as_tensor,
    _check_callable,
    _finite_hint,
    _report,
)
from diffusion_lab.maths.diffusion import q_sample
from diffusion_lab.maths.schedules import BETA_SCHEDULES, inference_timesteps, schedule_table, snr
from diffusion_lab.utils.errors import check_choice

__all__ = ["check_q_sample", "check_snr_crossing", "check_trailing_timesteps"]


def check_q_sample(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(x0, t, noise, alphas_cumprod)`` must return x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·noise, one t per sample.

    Tried on MNIST-shaped batches (B, 1, 28, 28) and on 2-D points (B, 2).
    """
    _check_callable(fn)
    g = torch.Generator().manual_seed(123)
    ab = schedule_table()["linear"]
    for shape in [(4, 1, 28, 28), (3, 2)]:
        x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        t = torch.randint(0, 1000, (shape[0],), generator=g)
        want = q_sample(x0, t, noise, ab)  # before the student's code runs (it might change x0 in place)
        try:
            got = fn(x0.clone(), t.clone(), noise.clone(), ab.clone())
        except Exception as e:  # the student's code raised: say so instead of failing the whole notebook
            return _report(False, "q_sample", f"your function raised {type(e).__name__}: {e}")
        if got is None:
            return _report(False, "q_sample", "your function returns None: fill in its body and return x_t")
        got, problem = _as_tensor(got, want.dtype)
        if problem:
            return _report(False, "q_sample", f"return x_t as one tensor, {problem}")
        if got.shape != want.shape:
            return _report(
                False,
                "q_sample",
                f"for x0 of shape {shape} return shape {tuple(want.shape)}, not "
                f"{tuple(got.shape)}: reshape ᾱ_t to (B, 1, ..., 1) with x0.ndim "
                "dimensions, e.g. alphas_cumprod[t].reshape(-1, *[1] * (x0.ndim - 1))",
            )
        if _finite_hint(got, want):
            return _report(False, "q_sample", _finite_hint(got, want))
        if not torch.allclose(got, want, atol=1e-5):
            return _report(
                False,
                "q_sample",
                "x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·noise; square roots of ᾱ, not of β, and each sample uses its own t",
            )
    return _report(True, "q_sample", "")


def check_snr_crossing(t_answer, schedule: str = "squaredcos_cap_v2") -> bool:
    """The first t at which SNR_t = ᾱ_t/(1−ᾱ_t) drops below 1 (0 dB) for ``schedule``."""
    check_choice("schedule", schedule, tuple(BETA_SCHEDULES))
    what = f"0 dB crossing of {schedule}"
    want = int(torch.nonzero(snr(schedule_table()[schedule]) < 1)[0])
    if t_answer is None:
        return _report(False, what, "set answer to an integer t")
    answer, problem = _as_number(t_answer, whole=True)  # Python ints, NumPy integers and one-element tensors
    if problem:
        return _report(
            False,
            what,
            f"answer must be one integer t, e.g. int(torch.nonzero(mask)[0]), not a list or a mask: {problem}",
        )
    return _report(
        answer == want, what, "find the first index where snr(alphas_cumprod) < 1, e.g. with torch.nonzero(...)[0]"
    )


def check_trailing_timesteps(fn: Callable[[int, int], np.ndarray]) -> bool:
    """``fn(n, T)`` must return the ``trailing`` timesteps: round(T − k·T/n) − 1 for k = 0..n−1 (ties to even)."""
    _check_callable(fn)
    what = "trailing spacing"
    for n, T in [(1, 1000), (4, 1000), (7, 1000), (50, 1000), (3, 10), (4, 10)]:
        try:
            out = fn(n, T)
        except Exception as e:
            return _report(False, what, f"your function raised {type(e).__name__}: {e}")
        if out is None:
            return _report(False, what, "your function returns None: fill in its body")
        got, problem = _as_int_list(out)
        if problem:
            return _report(False, what, f"return the n timesteps as a list or 1-D array of whole numbers: {problem}")
        want = inference_timesteps(n, T, "trailing").tolist()
        if got != want:
            return _report(
                False,
                what,
                f"for n={n}, T={T} expected {want}, got {got}: start at T−1, step down by "
                "T/n, round halves to even (Python's round and np.round do)",
            )
    return _report(True, what, "")
