"""Exercise checkers of notebook 03 (DDIM and samplers).

==========================  ==================================================================================
checker                     the student's function must return
==========================  ==================================================================================
``check_ddim_step``         x_{t'} = √ᾱ_{t'}·x̂₀ + √(1 − ᾱ_{t'} − σ²)·ε̂ (DDIM Eq. 12, without the noise term)
``check_timesteps_answer``  the n timesteps a scheduler with this spacing visits, in order
``check_flow_sigma``        σ(t) = t/(1 − t): the noise-to-signal ratio b_t/a_t of the flow path x_t = (1−t)·x_0 + t·ε
``check_inversion_order``   p = 2 in MSE ∝ n^(−p): DDIM inversion's round trip is first order, its MSE the square
``check_flow_time``         the flow time t = √(1−ᾱ)/(√ᾱ + √(1−ᾱ)) at which the flow path has DDPM's noise level σ
``check_skip_reason``       which reason makes DDIM's step t − ⌊T/n⌋ miss the trailing grid when n does not divide T
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
    _as_number,
    _call_tensor,
    _check_callable,
    _report,
)
from diffusion_lab.maths.diffusion import ddim_sigma, ddim_step
from diffusion_lab.maths.schedules import TIMESTEP_SPACINGS, inference_timesteps, schedule_table
from diffusion_lab.utils.errors import check_choice, check_int, check_number

__all__ = [
    "check_ddim_step",
    "check_flow_sigma",
    "check_flow_time",
    "check_inversion_order",
    "check_skip_reason",
    "check_timesteps_answer",
]


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


def check_flow_sigma(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(t)`` must return σ(t) = t/(1 − t) for t in [0, 1): the flow path x_t = (1 − t)·x_0 + t·ε divided by its
    signal coefficient a_t = 1 − t is x_0 + σ·ε, the coordinates in which DDIM is an Euler step."""
    _check_callable(fn)

    what = "flow path in (σ, x̄) coordinates"
    t = torch.tensor([0.05, 0.1, 0.3, 0.5, 0.7, 0.9])
    want = t / (1 - t)
    shape_hint = "return σ for every t: a tensor of t's shape {want}, got shape {got}"
    got, hint = _call_tensor(fn, what, want, shape_hint, t, none_hint=_NONE_BODY)
    if hint:
        return _report(False, what, hint)
    if torch.allclose(got, want, rtol=1e-4, atol=1e-6):
        return _report(True, what, "")
    near = {
        "t": (t, "that is b_t = t alone: divide by the signal coefficient a_t = 1 − t"),
        "(1-t)/t": ((1 - t) / t, "upside down: σ is noise over signal, b_t/a_t"),
        "sqrt": (
            want.sqrt(),
            "that is DDPM's √((1 − ᾱ)/ᾱ) with ᾱ = 1 − t; on the flow path the signal coefficient itself is a_t = 1 − t",
        ),
        "square": (want**2, "σ is the ratio of standard deviations b_t/a_t, not of variances"),
        "vp": (t / (1 - t**2).sqrt(), "the flow path is not variance-preserving: a_t = 1 − t, b_t = t"),
    }
    for wrong, message in near.values():
        if torch.allclose(got, wrong, rtol=1e-4, atol=1e-6):
            return _report(False, what, message)
    return _report(False, what, "divide x_t = (1 − t)·x_0 + t·ε by the coefficient of x_0; σ is what multiplies ε")


def check_inversion_order(answer) -> bool:
    """``answer`` must be p = 2 (within 0.25) in MSE ∝ n^(−p) for DDIM inversion there and back with n steps: each
    direction is an Euler solve with an error ∝ 1/n that does not cancel, and the MSE squares it."""
    what = "order of the inversion error"
    if answer is None:
        return _report(False, what, "set predicted_p to a number: the p in MSE ∝ n^(−p)")
    p, problem = _as_number(answer)
    if problem:
        return _report(False, what, f"answer with one number p: {problem}")
    if abs(p - 2) <= 0.25:
        return _report(True, what, "")
    if p < 0:
        hint = "more steps means a smaller error: with MSE ∝ n^(−p), p is positive"
    elif abs(p - 1) <= 0.25:
        hint = "that is the order of the error itself (Euler: ∝ 1/n); the MSE is its square"
    elif abs(p - 4) <= 0.5:
        hint = "the error is first order (∝ 1/n), not second: squaring it once gives the MSE's p"
    else:
        hint = "DDIM is an Euler step: what is the error of Euler's method with n steps, and what does squaring do?"
    return _report(False, what, hint)


def check_flow_time(answer, abar) -> bool:
    """``answer`` must be the flow time t whose σ = t/(1 − t) equals DDPM's σ = √((1 − ᾱ)/ᾱ) for the given ᾱ:
    t = σ/(1 + σ) = √(1 − ᾱ)/(√ᾱ + √(1 − ᾱ)) (within 1e-3)."""
    abar = check_number("abar", abar, minimum=0.0, maximum=1.0)
    if not 0 < abar < 1:
        raise ValueError(f"abar must be strictly between 0 and 1, got {abar}")
    what = "flow time with DDPM's noise level"
    if answer is None:
        return _report(False, what, "set flow_t to a number in (0, 1)")
    t, problem = _as_number(answer)
    if problem:
        return _report(False, what, f"answer with one number t: {problem}")
    sigma = ((1 - abar) / abar) ** 0.5
    want = sigma / (1 + sigma)
    if abs(t - want) <= 1e-3:
        return _report(True, what, "")
    near = [
        (sigma, "that is σ itself: solve σ = t/(1 − t) for t"),
        (
            (1 - abar) ** 0.5,
            "that matches the noise coefficients b = t and √(1 − ᾱ); the signal coefficients differ: match σ = b/a",
        ),
        (1 - abar, "that is DDPM's noise variance 1 − ᾱ; the flow's σ = t/(1 − t) must equal DDPM's √((1 − ᾱ)/ᾱ)"),
        (
            1 - abar**0.5,
            "that matches the signal coefficients 1 − t and √ᾱ; the noise coefficients then differ: match σ = b/a",
        ),
    ]
    for wrong, message in near:
        if abs(t - wrong) <= 1e-3:
            return _report(False, what, message)
    return _report(False, what, "equate the flow's σ = t/(1 − t) with DDPM's σ = √((1 − ᾱ)/ᾱ) and solve for t")


SKIP_REASONS = {
    1: "the trailing grid starts at T − 1 = 999, so every step is off by one",
    2: "T/n is not a whole number: the grid rounds T − k·T/n, so its gaps alternate (33 and 34 for n = 30), "
    "while the step always subtracts ⌊T/n⌋ = 33",
    3: "the scheduler drops t = 0, so the last step has nowhere to land",
}


def check_skip_reason(answer) -> bool:
    """``answer`` must be 2 of :data:`SKIP_REASONS`: with n not dividing T the trailing grid's gaps are ⌊T/n⌋ or
    ⌈T/n⌉, and DDIM's step t − ⌊T/n⌋ lands one timestep off the grid wherever the gap is ⌈T/n⌉."""
    what = "why t − ⌊T/n⌋ misses the grid"
    if answer is None:
        return _report(False, what, "set why to 1, 2 or 3")
    choice, problem = _as_number(answer, whole=True)
    if problem or choice not in SKIP_REASONS:
        return _report(False, what, f"answer with one of the numbers 1, 2, 3: {problem or f'got {choice}'}")
    if choice == 2:
        return _report(True, what, "")
    hints = {
        1: "999 is on the grid and 999 − 33 = 966 is too: print the gaps between consecutive grid points",
        3: "the last grid point is t = 32 and the step from it goes to t = −1, treated as ᾱ = 1 by design: "
        "look at the gaps between consecutive grid points instead",
    }
    return _report(False, what, hints[choice])
