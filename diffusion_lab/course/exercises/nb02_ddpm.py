"""Exercise checkers of notebook 02 (DDPM from scratch).

===================  ==================================================================================
checker              the student's function must return
===================  ==================================================================================
``check_ddpm_loss``  L_simple = mean‖ε − ε_θ(x_t, t)‖² (DDPM Eq. 14)
``check_ddpm_step``  x_{t−1} = (x_t − β_t/√(1 − ᾱ_t)·ε̂)/√α_t + σ_t·z, σ_t² = β̃_t (DDPM Alg. 2, Eq. 7)
===================  ==================================================================================

========================  =============================================================================
checker                   the student's function must return
========================  =============================================================================
``check_min_snr_weight``  Min-SNR-γ's weight of an ε loss (min(SNR, γ)/SNR) or a v loss (/(SNR + 1))
========================  =============================================================================

===========================  ==========================================================================
checker                      the student's answer
===========================  ==========================================================================
``check_variance_ratio``     a number: σ_t with β_t over σ_t with β̃_t at the toy's last noisy step
``check_skip_extra_params``  ``fn(c_h, c_skip, c_out)``: the parameters a ResBlock gains from cat(h, skip)
===========================  ==========================================================================

Each checker calls the student's function on seeded cases, compares it with the library's reference (or an
independent formula) and prints one ✅/❌ line with a hint naming the usual mistake; an error raised by the student's
code becomes a ❌, and only a checker's own arguments raise (a non-callable ``fn``: ``TypeError``). Shared
machinery: :mod:`diffusion_lab.course.exercises.checking`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from diffusion_lab.course.exercises.checking import (
    _NONE_BODY,
    _as_number,
    _as_tensor,
    _call,
    _call_tensor,
    _check_callable,
    _finite_hint,
    _report,
)
from diffusion_lab.maths.diffusion import ddpm_step, q_sample, x0_from_eps
from diffusion_lab.maths.schedules import schedule_table

__all__ = [
    "check_ddpm_loss",
    "check_ddpm_step",
    "check_min_snr_weight",
    "check_skip_extra_params",
    "check_variance_ratio",
]


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


def _toy_alphas_cumprod() -> torch.Tensor:
    """ᾱ_t of the notebook's 2-D toy: T = 200, ``squaredcos_cap_v2`` (the cosine schedule of Nichol & Dhariwal)."""
    return schedule_table(200)["squaredcos_cap_v2"]


def check_variance_ratio(answer: object) -> bool:
    """``answer``: how many times larger the noise σ_t of the toy's last noisy step (t = 1 → 0, indices from 0) is
    with σ_t² = β_t than with σ_t² = β̃_t, i.e. √(β_1/β̃_1) = √((1 − ᾱ_1)/(1 − ᾱ_0)) (DDPM Eq. 7)."""
    what = "variance ratio"
    ab = _toy_alphas_cumprod()
    want = float(((1 - ab[1]) / (1 - ab[0])).sqrt())
    if answer is None:
        return _report(False, what, "not done yet: set my_ratio to a number")
    got, problem = _as_number(answer)
    if problem:
        return _report(False, what, f"give one number, {problem}")
    if math.isclose(got, want, rel_tol=0.01):
        return _report(True, what, "")
    for value, hint in [
        (want**2, "that is the ratio of the variances β_1/β̃_1; the noise scales with their square root"),
        (1 / want, "upside down: β_t is the larger of the two, so the ratio is above 1"),
        (1 / want**2, "upside down, and a ratio of variances: σ_large/σ_small = √(β_1/β̃_1) > 1"),
    ]:
        if math.isclose(got, value, rel_tol=0.01):
            return _report(False, what, hint)
    return _report(
        False,
        what,
        "β̃_t/β_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) (Eq. 7): evaluate it at t = 1 with the toy's ᾱ (ab_toy[0], ab_toy[1]), "
        "then take the square root of its inverse",
    )


def check_skip_extra_params(fn: Callable[..., int]) -> bool:
    """``fn(c_h, c_skip, c_out)`` (with c_h = c_out, as in the course's U-Net) must return how many more parameters
    a :class:`~diffusion_lab.models.unet.ResBlock` has when it reads cat(h, skip), c_h + c_skip channels, than when
    it reads h alone: GroupNorm 2·c_s, conv₁ 9·c_s·c_out, and a 1×1 skip convolution (c_h + c_s)·c_out + c_out that
    a block with c_in = c_out does not need."""
    _check_callable(fn)
    from diffusion_lab.models.unet import ResBlock  # lazy: the checkers module stays light

    what = "skip parameters"
    for c_h, c_skip, c_out in [(64, 64, 64), (32, 32, 32), (64, 32, 64), (16, 48, 16)]:

        def count(c_in: int, c_out: int = c_out) -> int:
            return sum(p.numel() for p in ResBlock(c_in, c_out, 128, 8, 0.0).parameters())

        want = count(c_h + c_skip) - count(c_h)
        got, hint = _call(fn, what, c_h, c_skip, c_out, none_hint=_NONE_BODY)
        if hint:
            return _report(False, what, hint)
        got, problem = _as_number(got, whole=True)
        if problem:
            return _report(False, what, f"return one whole number, {problem}")
        if got != want:
            conv_only = 9 * c_skip * c_out
            if got == conv_only or got == conv_only + 2 * c_skip:
                hint = (
                    "the 3×3 convolution (and GroupNorm) are right, but with c_in ≠ c_out the block also needs its "
                    "1×1 skip convolution, (c_h + c_skip)·c_out weights plus c_out biases"
                )
            elif got == conv_only + (c_h + c_skip) * c_out + c_out:
                hint = "almost: the first GroupNorm also grows, by a scale and a shift per new channel (2·c_skip)"
            else:
                hint = (
                    f"wrong for c_h = {c_h}, c_skip = {c_skip}, c_out = {c_out} (want {want:,d}, got {got:,d}): list the "
                    "layers whose shape depends on c_in (norm1, conv1, skip) and count their weights and biases"
                )
            return _report(False, what, hint)
    return _report(True, what, "")


def _min_snr_reference(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """min(SNR, γ)/SNR for an ε loss, min(SNR, γ)/(SNR + 1) for a v loss (written here, independent of the library)."""
    clipped = snr.clamp(max=gamma)
    return clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1)


def check_min_snr_weight(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(snr, gamma, prediction_type)`` must return the per-example weight that turns an ε loss (``"epsilon"``) or a
    v loss (``"v_prediction"``) into Min-SNR-γ's min(SNR, γ)·‖x0 − x̂0‖²: since ‖ε − ε̂‖² = SNR·‖x0 − x̂0‖² and
    ‖v − v̂‖² = (SNR + 1)·‖x0 − x̂0‖² at a fixed x_t, that is min(SNR, γ)/SNR and min(SNR, γ)/(SNR + 1)."""
    _check_callable(fn)
    what = "Min-SNR weight"
    snr = torch.logspace(-3, 3, 25)  # (25,): from nearly pure noise to nearly clean
    for gamma in (5.0, 1.0):
        for prediction_type in ("v_prediction", "epsilon"):
            want = _min_snr_reference(snr, gamma, prediction_type)
            shape_hint = "return one weight per SNR, a tensor of shape {want}, got shape {got}"
            got, hint = _call_tensor(
                fn, what, want, shape_hint, snr.clone(), gamma, prediction_type, none_hint=_NONE_BODY
            )
            if hint:
                return _report(False, what, hint)
            if torch.allclose(got, want, rtol=1e-4, atol=1e-7):
                continue
            clipped = snr.clamp(max=gamma)
            other = "epsilon" if prediction_type == "v_prediction" else "v_prediction"
            if torch.allclose(got, clipped, rtol=1e-4):
                hint = (
                    f"min(SNR, γ) alone weights ‖x0 − x̂0‖²; a {prediction_type} loss is already a multiple of it: "
                    "divide by that multiple"
                )
            elif torch.allclose(got, _min_snr_reference(snr, gamma, other), rtol=1e-4):
                hint = (
                    f"that is the weight of the {other} loss; for {prediction_type} express the error through "
                    "x0 − x̂0 at a fixed x_t"
                )
            elif torch.allclose(got, 1 / want, rtol=1e-4) or torch.allclose(got, clipped**2 / want, rtol=1e-4):
                hint = "upside down: the weight divides by the factor between the loss and ‖x0 − x̂0‖², it does not multiply"
            else:
                hint = (
                    f"wrong for {prediction_type}, γ = {gamma:g}: at a fixed x_t, ‖ε − ε̂‖² = SNR·‖x0 − x̂0‖² and "
                    "v − v̂ = (ε − ε̂)/√ᾱ_t with ᾱ_t = SNR/(SNR + 1)"
                )
            return _report(False, what, hint)
    return _report(True, what, "")
