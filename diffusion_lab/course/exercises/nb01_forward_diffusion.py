"""Exercise checkers of notebook 01 (forward diffusion).

============================  =============================================================================
checker                       the student's function must return
============================  =============================================================================
``check_q_sample``            x_t = √ᾱ_t·x₀ + √(1 − ᾱ_t)·ε, one t per sample (DDPM Eq. 4)
``check_snr_crossing``        the first t with SNR_t = ᾱ_t/(1 − ᾱ_t) < 1 (0 dB)
``check_trailing_timesteps``  trailing spacing: round(T − k·T/n) − 1, k = 0..n−1
``check_leading_within_1db``   the n in 1..50 whose leading start (SD's schedule) is within 1 dB of trailing's
``check_jump_between``        x_t from x_s (s < t): √(ᾱ_t/ᾱ_s)·x_s + √(1 − ᾱ_t/ᾱ_s)·ε, one (s, t) per sample
``check_zero_terminal_snr``   the betas of Lin et al. 2024's Algorithm 1 (diffusers' ``rescale_zero_terminal_snr``)
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
    _call_tensor,
    _check_callable,
    _finite_hint,
    _report,
)
from diffusion_lab.maths.diffusion import q_sample
from diffusion_lab.maths.schedules import (
    BETA_SCHEDULES,
    inference_timesteps,
    linear_betas,
    rescale_zero_terminal_snr,
    scaled_linear_betas,
    schedule_table,
    snr,
)
from diffusion_lab.utils.errors import check_choice

__all__ = [
    "check_q_sample",
    "check_snr_crossing",
    "check_trailing_timesteps",
    "check_leading_within_1db",
    "check_jump_between",
    "check_zero_terminal_snr",
]


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
    """The first t at which SNR_t = ᾱ_t/(1−ᾱ_t) drops below 1 (0 dB) for ``schedule``.

    Notebook 01 asks for it by hand for the cosine schedule (solve f((t+1)/T)/f(0) = 1/2), so the hints name the
    usual slips (the (t+1)/T index shift, rounding the crossing the wrong way) and never the one line of code."""
    check_choice("schedule", schedule, tuple(BETA_SCHEDULES))
    what = f"0 dB crossing of {schedule}"
    want = int(torch.nonzero(snr(schedule_table()[schedule]) < 1)[0])
    if t_answer is None:
        return _report(False, what, "set answer to an integer t")
    answer, problem = _as_number(t_answer, whole=True)  # Python ints, NumPy integers and one-element tensors
    if problem:
        return _report(False, what, f"answer must be one integer t (a timestep), not a list or a mask: {problem}")
    if answer == want:
        return _report(True, what, "")
    hint = "you want the first index where snr(alphas_cumprod) < 1, i.e. the first t with ᾱ_t < 1/2"
    if answer == want + 1 and schedule == "squaredcos_cap_v2":
        hint += "; mind the index shift: ᾱ_t = f((t+1)/T)/f(0), so the crossing u* gives t + 1 = T·u*, not t = T·u*"
    elif answer == want - 1:
        hint += "; you are one step early: the crossing lies between two whole t, and the first t past it is the answer"
    return _report(False, what, hint)


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


def _leading_gaps_db(n_max: int = 50, T: int = 1000) -> dict[int, float]:
    """For SD's schedule: SNR (dB) of leading's first timestep (steps_offset=1) minus trailing's, for n = 1..n_max."""
    snr_db = 10 * torch.log10(snr(schedule_table(T)["scaled_linear"]))
    return {
        n: float(snr_db[inference_timesteps(n, T, "leading", 1)[0]] - snr_db[inference_timesteps(n, T, "trailing")[0]])
        for n in range(1, n_max + 1)
    }


def check_leading_within_1db(answer) -> bool:
    """``answer``: every n in 1..50 (a list, array or 1-D tensor of integers, any order) for which the first timestep
    of ``leading`` spacing (steps_offset=1) has an SNR within 1 dB of trailing's first (t = 999), in Stable Diffusion's
    ``scaled_linear`` schedule with T = 1000. Leading starts at (n − 1)·⌊T/n⌋ + 1, which does not grow steadily with n."""
    what = "leading vs trailing start, n = 1..50"
    gaps = _leading_gaps_db()
    want = sorted(n for n, gap in gaps.items() if gap < 1.0)
    if answer is None:
        return _report(False, what, "set answer to the list of n (1..50) whose leading start is within 1 dB")
    got, problem = _as_int_list(answer)
    if problem:
        return _report(False, what, f"answer must be one flat list of whole numbers n: {problem}")
    if sorted(set(got)) == want and len(got) == len(want):
        return _report(True, what, "")
    outside = [n for n in got if n not in gaps]
    far = [n for n in got if n in gaps and gaps[n] >= 1.0]
    if outside:
        hint = f"every n must be a step count in 1..50, not {outside[0]} (give n, not timesteps)"
    elif far:
        n = far[0]
        first = int(inference_timesteps(n, 1000, "leading", 1)[0])
        hint = (
            f"n = {n} starts at t = {first}, {gaps[n]:.1f} dB above trailing's t = 999: leading's start "
            "(n − 1)·⌊T/n⌋ + 1 jumps around as ⌊T/n⌋ rounds down; compute the gap for every n"
        )
    else:
        hint = "some n are missing: compute the gap snr_db(first leading t) − snr_db(999) for every n = 1..50"
    return _report(False, what, hint)


def check_jump_between(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(x_s, s, t, noise, alphas_cumprod)`` must return a sample of q(x_t | x_s) for s ≤ t (one pair per sample):
    x_t = √(ᾱ_t/ᾱ_s)·x_s + √(1 − ᾱ_t/ᾱ_s)·noise, because the steps s+1..t multiply to ∏ α_r = ᾱ_t/ᾱ_s.

    Tried on MNIST-shaped batches (B, 1, 28, 28) and on 2-D points (B, 2), with s = t in one sample (no steps: x_t = x_s).
    """
    _check_callable(fn)
    what = "jump from x_s to x_t"
    g = torch.Generator().manual_seed(321)
    ab = schedule_table()["linear"]
    for shape in [(5, 1, 28, 28), (4, 2)]:
        x_s, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        s = torch.randint(0, 900, (shape[0],), generator=g)
        t = s + torch.randint(1, 100, (shape[0],), generator=g)
        t[0] = s[0]  # no step at all: x_t must be x_s
        view = (-1, *[1] * (len(shape) - 1))
        ratio = (ab[t] / ab[s]).reshape(view)  # ᾱ_t / ᾱ_s = α_{s+1}···α_t
        want = ratio.sqrt() * x_s + (1 - ratio).sqrt() * noise
        got, hint = _call_tensor(
            fn, what, want, "for x_s of shape {want} return shape {want}, not {got}", x_s, s, t, noise, ab
        )
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-5):
            continue
        ab_t, ab_s = ab[t].reshape(view), ab[s].reshape(view)
        if torch.allclose(got, ab_t.sqrt() * x_s + (1 - ab_t).sqrt() * noise, atol=1e-5):
            hint = "that is q_sample: it treats x_s as clean data; only the steps s+1..t act, so use ᾱ_t/ᾱ_s"
        elif torch.allclose(got, ratio.sqrt() * x_s + (1 - ab_t).sqrt() * noise, atol=1e-5) or torch.allclose(
            got, ratio.sqrt() * x_s + (ab_s - ab_t).sqrt() * noise, atol=1e-5
        ):
            hint = "the mean is right; the noise variance of the jump is 1 − ᾱ_t/ᾱ_s (x_s already holds its own noise)"
        else:
            hint = "unroll the chain from x_s: the signal factors multiply to √(ᾱ_t/ᾱ_s), and the variances add up to 1 − ᾱ_t/ᾱ_s"
        return _report(False, what, hint)
    return _report(True, what, "")


def _diffusers_rescale(betas: torch.Tensor) -> torch.Tensor:
    """diffusers' ``rescale_zero_terminal_snr``; the library's (equal to it) if diffusers is absent."""
    try:
        from diffusers.schedulers import scheduling_ddim  # lazy: diffusers takes seconds to import

        reference = scheduling_ddim.rescale_zero_terminal_snr
    except ImportError:  # the library's function equals it (tests/test_scheduler_parity.py)
        reference = rescale_zero_terminal_snr
    return reference(betas.clone())


def check_zero_terminal_snr(fn: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """``fn(betas)`` (T,) must return the betas of Lin et al. 2024, Algorithm 1: √ᾱ shifted so that its last value is
    0 and scaled so that its first is unchanged, converted back to betas. Compared with ``diffusers``'
    ``rescale_zero_terminal_snr`` on the linear and scaled-linear schedules (T = 1000) and a short one (T = 10)."""
    _check_callable(fn)
    what = "zero terminal SNR rescale"
    for betas in (scaled_linear_betas(1000), linear_betas(1000), scaled_linear_betas(10, 0.01, 0.2)):
        want = _diffusers_rescale(betas)  # (T,), its last value is 1: ᾱ_{T−1} = 0
        got, hint = _call_tensor(fn, what, want, "return one beta per timestep, shape {want}, not {got}", betas)
        if hint:
            return _report(False, what, hint)
        got = got.to(torch.float64)
        if torch.allclose(got, want.double(), rtol=1e-4, atol=1e-6):
            continue
        ab = torch.cumprod(1 - betas.double(), 0)  # the original ᾱ
        ab_got = torch.cumprod(1 - got, 0)
        want_ab = torch.cumprod(1 - want.double(), 0)
        if torch.allclose(got, want_ab, rtol=1e-4, atol=1e-6):
            hint = "you returned ᾱ; convert back to betas: α_t = ᾱ_t/ᾱ_{t−1} (α_0 = ᾱ_0), β_t = 1 − α_t"
        elif torch.allclose(got[:-1], betas[:-1].double(), rtol=1e-4, atol=1e-7) and abs(ab_got[-1]) < 1e-6:
            hint = (
                "you only zeroed the last value (β_{T−1} = 1): ᾱ jumps from its old tiny value to 0 in one step. "
                "Algorithm 1 shifts EVERY √ᾱ_t down by √ᾱ_{T−1}, then scales by √ᾱ_0/(√ᾱ_0 − √ᾱ_{T−1})"
            )
        elif abs(ab_got[-1]) > 1e-6:
            hint = "the last ᾱ must be exactly 0: shift √ᾱ by its last value, √ᾱ_t − √ᾱ_{T−1}"
        elif abs(ab_got[0].sqrt() - ab[0].sqrt()) > 1e-5:
            hint = "the first √ᾱ must be unchanged: after the shift, scale by √ᾱ_0/(√ᾱ_0 − √ᾱ_{T−1})"
        else:
            shifted = (ab - ab[-1]) * ab[0] / (ab[0] - ab[-1])  # the same recipe applied to ᾱ instead of √ᾱ
            if torch.allclose(ab_got, shifted, rtol=1e-4, atol=1e-7):
                hint = "shift and scale √ᾱ, not ᾱ itself (then square it)"
            else:
                hint = "√ᾱ'_t = (√ᾱ_t − √ᾱ_{T−1})·√ᾱ_0/(√ᾱ_0 − √ᾱ_{T−1}); then ᾱ' = (√ᾱ')², α'_t = ᾱ'_t/ᾱ'_{t−1}, β' = 1 − α'"
        return _report(False, what, hint)
    return _report(True, what, "")
