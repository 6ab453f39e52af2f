"""Exercise checkers of notebook 02 (DDPM from scratch).

===================  ==================================================================================
checker              the student's function must return
===================  ==================================================================================
``check_ddpm_loss``  L_simple = mean‖ε − ε_θ(x_t, t)‖² (DDPM Eq. 14)
``check_ddpm_step``  x_{t−1} = (x_t − β_t/√(1 − ᾱ_t)·ε̂)/√α_t + σ_t·z, σ_t² = β̃_t (DDPM Alg. 2, Eq. 7)
===================  ==================================================================================

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
    _as_tensor,
    _call_tensor,
    _check_callable,
    _finite_hint,
    _report,
)
from diffusion_lab.maths.diffusion import ddpm_step, q_sample, x0_from_eps
from diffusion_lab.maths.schedules import schedule_table

__all__ = ["check_ddpm_loss", "check_ddpm_step"]


def check_ddpm_loss(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(model, x0, t, noise, alphas_cumprod)`` must return mean((ε − model(x_t, t))²) with x_t from q_sample."""
    _check_callable(fn)
    what = "DDPM loss"
    g = torch.Generator().manual_seed(7)
    ab = schedule_table()["linear"]

    def model(x_t, t):  # a fixed stand-in for a network that depends on x_t and t
        return torch.tanh(x_t) * (t.float().reshape(-1, *[1] * (x_t.ndim - 1)) / 1000)

    x0, noise = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    t = torch.randint(0, 1000, (6,), generator=g)
    want = (noise - model(q_sample(x0, t, noise, ab), t)).pow(2).mean()
    try:
        got = fn(model, x0.clone(), t.clone(), noise.clone(), ab.clone())
    except Exception as e:
        return _report(False, what, f"your function raised {type(e).__name__}: {e}")
    if got is None:
        return _report(False, what, "your function returns None: fill in its body")
    got, problem = _as_tensor(got, want.dtype)
    if problem:
        return _report(False, what, f"return one number (the mean over the batch), {problem}")
    if got.numel() != 1:
        return _report(False, what, f"return one number (the mean over the batch), got shape {tuple(got.shape)}")
    if _finite_hint(got, want):
        return _report(False, what, _finite_hint(got, want))
    return _report(
        bool(torch.allclose(got.reshape(()), want, atol=1e-6)),
        what,
        "x_t = q_sample(x0, t, noise, ᾱ); the target is the noise; average the squared error",
    )


def check_ddpm_step(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(eps_hat, x_t, ab_t, ab_prev, z)`` must return one DDPM step (fixed_small variance, no clipping)."""
    _check_callable(fn)

    what = "DDPM step"
    g = torch.Generator().manual_seed(8)
    ab = schedule_table()["linear"]
    for t, tp in [(999, 998), (500, 499), (10, 9)]:
        eps, x_t, z = (torch.randn(3, 2, generator=g) for _ in range(3))
        want = ddpm_step(x0_from_eps(x_t, eps, ab[t]), x_t, ab[t], ab[tp], z)
        shape_hint = "return x_(t-1) as one tensor of x_t's shape {want}, got shape {got}"
        got, hint = _call_tensor(fn, what, want, shape_hint, eps, x_t, ab[t], ab[tp], z, none_hint=_NONE_BODY)
        if hint:
            return _report(False, what, hint)
        if not torch.allclose(got, want, atol=1e-4):
            return _report(
                False,
                what,
                f"wrong at t={t}: predict x̂_0 from ε̂ first, then the posterior mean of "
                "DDPM Eq. 7 with β'_t = 1 − ᾱ_t/ᾱ_prev, plus sqrt(β̃)·z",
            )
    return _report(True, what, "")
