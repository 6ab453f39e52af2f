"""Exercise checkers of notebook 03 (DDIM and samplers).

==========================  ==================================================================================
checker                     the student's function must return
==========================  ==================================================================================
``check_ddim_step``         x_{t'} = √ᾱ_{t'}·x̂₀ + √(1 − ᾱ_{t'} − σ²)·ε̂ (DDIM Eq. 12, without the noise term)
``check_timesteps_answer``  the n timesteps a scheduler with this spacing visits, in order
==========================  ==================================================================================

Each checker calls the student's function on seeded cases, compares it with the library's reference (or an
independent formula) and prints one ✅/❌ line with a hint naming the usual mistake; an error raised by the student's
code becomes a ❌, and only a checker's own arguments raise (a non-callable ``fn``: ``TypeError``). Shared
machinery: :mod:`diffusion_lab.course.exercises.checking`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffusion_lab.course.exercises.checking import (
    _NONE_BODY,
    _as_int_list,
    _call_tensor,
    _check_callable,
    _report,
)
from diffusion_lab.maths.diffusion import ddim_sigma, ddim_step
from diffusion_lab.maths.schedules import TIMESTEP_SPACINGS, inference_timesteps, schedule_table
from diffusion_lab.utils.errors import check_choice, check_int

__all__ = ["check_ddim_step", "check_timesteps_answer"]


def check_ddim_step(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(x0_hat, eps_hat, ab_prev, sigma)`` must return √ᾱ'·x̂_0 + √(1 − ᾱ' − σ²)·ε̂ (DDIM Eq. 12, no noise)."""
    _check_callable(fn)

    what = "DDIM step"
    g = torch.Generator().manual_seed(9)
    ab = schedule_table()["linear"]
    for t, tp, eta in [(999, 949, 0.0), (500, 450, 1.0), (100, 50, 0.5)]:
        x0, eps = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
        sigma = ddim_sigma(ab[t], ab[tp], eta)
        want = ddim_step(x0, eps, ab[tp], sigma)
        shape_hint = "return x_t' as one tensor of x̂_0's shape {want}, got shape {got}"
        got, hint = _call_tensor(fn, what, want, shape_hint, x0, eps, ab[tp], sigma, none_hint=_NONE_BODY)
        if hint:
            return _report(False, what, hint)
        if not torch.allclose(got, want, atol=1e-5):
            return _report(False, what, f"wrong for eta={eta}: the direction term is sqrt(1 − ᾱ' − σ²)·ε̂")
    return _report(True, what, "")


def check_timesteps_answer(answer, n: int, spacing: str, T: int = 1000) -> bool:
    """``answer`` must be the ``n`` timesteps a sampler with this ``spacing`` visits, in order."""
    n, T = check_int("n", n), check_int("T", T)
    check_choice("spacing", spacing, TIMESTEP_SPACINGS)
    what = f"{spacing} timesteps for n={n}"
    if answer is None:
        return _report(False, what, "set answer to a list of integers")
    got, problem = _as_int_list(answer)
    if problem:
        return _report(False, what, f"answer must be a list of integers, e.g. scheduler.timesteps.tolist(): {problem}")
    return _report(
        got == inference_timesteps(n, T, spacing).tolist(),
        what,
        "call set_timesteps(n) on the scheduler and read .timesteps (in the order it returns them)",
    )
