"""Exercise checkers of notebook 09 (fast sampling: ODE solvers, Karras σ, distillation).

============================  ========================================================================================
checker                       the student's answer must be
============================  ========================================================================================
``check_midpoint_step``       one explicit midpoint step of dx/dσ = (x − D(x; σ))/σ (Karras et al. 2022, App. D.2,
                              α = ½): half an Euler step to σ_m = σ + h/2, then x + h·d(x_m, σ_m); no special last step
``check_dpmpp_2m_step``       DPM-Solver++(2M) in DDPM's scale (Lu et al. 2022b, Alg. 2): x_t = (σ_t/σ_s)·x_s +
                              α_t·(1 − e^{−h})·(D0 + ½·D1), D1 = (x̂₀ − x̂₀^prev)/r, r = h_prev/h; equal to the library's
``check_sampler_prediction``  a prediction (which sampler is best at 4 network evaluations, by number), judged against
                              the measurement with its paired standard errors (the same prompts and noise)
============================  ========================================================================================

Index and shape conventions: σ-scale states x (B, ...) with x = x₀ + σ·ε; DDPM-scale states x_t = α_t·x₀ + σ_t·ε with
α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t). Each checker calls the student's function on seeded cases, compares with an
independent formula (or the library) and prints one ✅/❌ line with a hint naming the usual mistake; an error raised by the student's
code becomes a ❌, and only a checker's own arguments raise (a non-callable ``fn``: ``TypeError``). Shared
machinery: :mod:`diffusion_lab.course.exercises.checking`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from diffusion_lab.course.exercises.checking import _as_number, _call_tensor, _check_callable, _report
from diffusion_lab.course.exercises.nb08_flow import _numbers  # a checker's own list of measured numbers
from diffusion_lab.maths.solvers import dpmpp_second_order_step

__all__ = ["check_midpoint_step", "check_dpmpp_2m_step", "check_sampler_prediction"]

_MU, _S = 1.0, 0.5  # the Gaussian toy of the checks: data N(μ, s²)


def _toy_denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The exact denoiser of N(μ, s²) data: D(x; σ) = (s²·x + σ²·μ)/(s² + σ²)."""
    return (_S**2 * x + sigma**2 * _MU) / (_S**2 + sigma**2)


def _slope(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return (x - _toy_denoiser(x, sigma)) / sigma  # d = (x − D)/σ


def check_midpoint_step(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(x, sigma, sigma_next, denoise)`` must return one explicit midpoint step from σ to σ_next < σ of the
    probability-flow ODE dx/dσ = (x − D(x; σ))/σ, where ``denoise(x, sigma)`` is D (Karras et al. 2022, App. D.2,
    the second-order family with α = ½): with h = σ_next − σ, half an Euler step to σ_m = σ + h/2,
    x_m = x + (h/2)·d(x, σ), then the whole step with the slope there, x + h·d(x_m, σ_m). σ_m > 0 also on the last
    step (σ_next = 0), so no step is special."""
    _check_callable(fn)
    what = "the midpoint step"
    g = torch.Generator().manual_seed(91)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64) * 3 + _MU  # (B, ...) states at σ
    for sigma, sigma_next in ((2.0, 1.0), (6.0, 3.5), (0.5, 0.0)):
        h = sigma_next - sigma
        sigma_mid = sigma + h / 2
        d = _slope(x, sigma)
        x_mid = x + h / 2 * d
        want = x + h * _slope(x_mid, sigma_mid)
        got, hint = _call_tensor(
            fn, what, want, "return the next state, x's shape {want}, not {got}", x, sigma, sigma_next, _toy_denoiser
        )
        if hint:
            if sigma_next == 0 and "NaN or inf" in hint:
                hint = (
                    "at σ_next = 0 your step divides by zero: the midpoint σ_m = σ + h/2 = σ/2 is not 0 (a geometric "
                    "mean √(σ·σ_next) would be)"
                )
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-6):
            continue
        guess = x + h * d
        if torch.allclose(got, guess, atol=1e-6):
            hint = (
                "at σ_next = 0 too, no step is special: σ_m = σ/2 > 0, so take the midpoint slope as on every step"
                if sigma_next == 0
                else "that is Euler's step: take the slope at the midpoint (x_m, σ_m), not at the start"
            )
        elif sigma_next != 0 and torch.allclose(got, x + h * (d + _slope(guess, sigma_next)) / 2, atol=1e-6):
            hint = "that is Heun's step (the trapezoid): the midpoint rule uses one slope, taken halfway"
        elif torch.allclose(got, x + h * _slope(x_mid, sigma), atol=1e-6):
            hint = "the slope at x_m belongs to σ_m = σ + h/2: compute D(x_m; σ_m) and divide by σ_m"
        elif torch.allclose(got, x + h * _slope(guess, sigma_mid), atol=1e-6):
            hint = "x_m is half an Euler step, x + (h/2)·d, not a whole one"
        elif torch.allclose(got, x_mid + h * _slope(x_mid, sigma_mid), atol=1e-6):
            hint = "take the whole step from x, not from x_m: x + h·d(x_m, σ_m)"
        elif torch.allclose(got, x + h / 2 * _slope(x_mid, sigma_mid), atol=1e-6):
            hint = "the step with the midpoint slope goes the whole way, x + h·d(x_m, σ_m), not h/2"
        elif sigma_next != 0 and torch.allclose(got, x + h * _slope(x_mid, math.sqrt(sigma * sigma_next)), atol=1e-6):
            hint = (
                "σ_m is the midpoint of the step in σ, σ + h/2, not the geometric mean √(σ·σ_next) (0 on the last step)"
            )
        elif torch.allclose(got, x - h * _slope(x - h / 2 * d, sigma - h / 2), atol=1e-6):
            hint = "the step goes the wrong way: h = σ_next − σ is negative when sampling"
        else:
            hint = f"wrong from σ = {sigma} to {sigma_next}: x_m = x + (h/2)·d, σ_m = σ + h/2, then x + h·d(x_m, σ_m)"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_dpmpp_2m_step(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(x_s, x0_hat, x0_prev, alpha_s, sigma_s, alpha_t, sigma_t, h_prev)`` must return one DPM-Solver++(2M) step
    from s to t in DDPM's scale (Lu et al. 2022b, Alg. 2): h = λ_t − λ_s with λ = log(α/σ), r = h_prev/h,
    D0 = x̂₀, D1 = (x̂₀ − x̂₀^prev)/r and x_t = (σ_t/σ_s)·x_s + α_t·(1 − e^{−h})·(D0 + ½·D1). Compared with the
    library's :func:`~diffusion_lab.maths.solvers.dpmpp_second_order_step`."""
    _check_callable(fn)
    what = "DPM-Solver++(2M) in DDPM's scale"
    g = torch.Generator().manual_seed(92)
    x_s, x0, x0_prev = torch.randn(3, 5, 4, 7, 7, generator=g, dtype=torch.float64).unbind(0)  # (B, L, h, w) each
    for ab_s, ab_t, h_prev in ((0.3, 0.6, 0.4), (0.02, 0.2, 0.9), (0.7, 0.99, 0.25)):
        a_s, s_s, a_t, s_t = math.sqrt(ab_s), math.sqrt(1 - ab_s), math.sqrt(ab_t), math.sqrt(1 - ab_t)
        h = math.log(a_t / s_t) - math.log(a_s / s_s)
        want = dpmpp_second_order_step(
            x_s, x0, x0_prev, a_t, s_t, s_s, torch.tensor(h, dtype=torch.float64), torch.tensor(h_prev)
        )
        got, hint = _call_tensor(
            fn, what, want, "return x_t, x_s's shape {want}, not {got}", x_s, x0, x0_prev, a_s, s_s, a_t, s_t, h_prev
        )
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-6):
            continue
        r = h_prev / h
        D1 = (x0 - x0_prev) / r
        w = 1 - math.exp(-h)
        base = (s_t / s_s) * x_s
        wrong = {
            "first order": base + a_t * w * x0,
            "r inverted": base + a_t * w * (x0 + 0.5 * (x0 - x0_prev) * r),
            "no half": base + a_t * w * (x0 + D1),
            "backwards": base + a_t * w * (x0 - 0.5 * D1),
            "heun": base + a_t * w * x0 + a_t * (1 - w / h) * D1,
            "no α_t": base + w * (x0 + 0.5 * D1),
            "e^{+h}": base + a_t * (1 - math.exp(h)) * (x0 + 0.5 * D1),
            "h sign": base + a_t * (1 - math.exp(h)) * (x0 - 0.5 * D1),
            "ratio": (s_s / s_t) * x_s + a_t * w * (x0 + 0.5 * D1),
            "σ-scale": math.exp(-h) * x_s + w * (x0 + 0.5 * D1),
        }
        hints = {
            "first order": "that is the first-order step (DDIM): add the extrapolation of x̂₀ in λ, D1 = (x̂₀ − x̂₀^prev)/r",
            "r inverted": "r = h_prev/h, and D1 = (x̂₀ − x̂₀^prev)/r: divide by r, do not multiply",
            "no half": "Alg. 2 evaluates the line at the step's middle: D0 + ½·D1, not D0 + D1",
            "backwards": "extrapolate forward in λ: D1 = (x̂₀ − x̂₀^prev)/r points from the previous estimate to this one",
            "heun": "that is solver_type='heun' (the exact integral of the line): Alg. 2 (midpoint) is (1 − e^{−h})·(D0 + ½·D1)",
            "no α_t": "in DDPM's scale the x̂₀ terms carry α_t: σ_t·e^{λ_t} = α_t",
            "h sign": "your h has the wrong sign: λ = log(α/σ) (not log(σ/α)) grows towards the clean end, so "
            "h = λ_t − λ_s > 0, the weight of x̂₀ is 1 − e^{−h} > 0 and r = h_prev/h > 0",
            "e^{+h}": "the step in λ is h = λ_t − λ_s > 0 and the weight of x̂₀ is 1 − e^{−h} (between 0 and 1)",
            "ratio": "x_s is scaled by σ_t/σ_s (less noise at t), not σ_s/σ_t",
            "σ-scale": "that is the σ-scale form e^{−h}·x̄ + (1 − e^{−h})·(…) applied to x_s: in DDPM's scale x = α·x̄",
        }
        for key, value in wrong.items():
            if torch.allclose(got, value, atol=1e-6):
                return _report(False, what, hints[key])
        return _report(
            False, what, "x_t/σ_t = x_s/σ_s + ∫ e^{λ}·(D0 + (λ − λ_s)·D1/h) dλ over [λ_s, λ_t], the line at the middle"
        )
    return _report(True, what, "")


def _paired_errors(errors: object, k: int) -> list[list[float]]:
    """The checker's ``errors`` as a k × k table of paired standard errors, SE(score_i − score_j)."""
    if isinstance(errors, torch.Tensor | np.ndarray):
        errors = errors.tolist()
    if isinstance(errors, str | bytes | dict | set) or not hasattr(errors, "__iter__"):
        raise TypeError(f"errors must be a {k} × {k} table of paired standard errors, got {type(errors).__name__}")
    rows = [_numbers(f"errors[{i}]", row) for i, row in enumerate(errors)]
    if len(rows) != k or any(len(row) != k for row in rows):
        raise ValueError(f"errors must be a {k} × {k} table (one row and one column per sampler), got {len(rows)} rows")
    return rows


def check_sampler_prediction(
    prediction: object, labels: object, scores: object, errors: object, higher_is_better: bool = True
) -> bool:
    """``prediction`` is the number (1, 2, …) of the sampler in ``labels`` predicted to be best. ``scores`` are the
    measured values, one per sampler, and ``errors`` the k × k table of *paired* standard errors, ``errors[i][j]`` =
    SE(score_i − score_j) from the same prompts and noise: the prediction is right unless another sampler is better by
    more than two paired standard errors, or it scores worse than a sampler that is itself refuted that way
    (``higher_is_better`` says which way is best). A right answer that is not the
    best point estimate says which one was, and that the experiment cannot separate the two."""
    what = "which sampler wins"
    if isinstance(labels, str | bytes) or not hasattr(labels, "__iter__"):
        raise TypeError(f"labels must be a list of sampler names, got {type(labels).__name__}")
    names = [str(label) for label in labels]
    values = _numbers("scores", scores)
    if not names or len(values) != len(names):
        raise ValueError(f"pass one score per sampler: {len(names)} labels, {len(values)} scores")
    ses = _paired_errors(errors, len(names))
    if not isinstance(higher_is_better, bool):
        raise TypeError(f"higher_is_better must be True or False, got {type(higher_is_better).__name__}")
    options = ", ".join(f"{i + 1} = {name}" for i, name in enumerate(names))
    if prediction is None:
        return _report(False, what, f"not done yet: set your prediction BEFORE you run the experiment ({options})")
    choice, problem = _as_number(prediction, whole=True)
    if problem or not 1 <= choice <= len(names):
        return _report(False, what, f"answer with the sampler's number ({options}): {problem or f'got {choice}'}")
    i = choice - 1
    sign = 1 if higher_is_better else -1
    best = max(range(len(values)), key=lambda k: sign * values[k])
    rank = 1 + sum(sign * values[k] > sign * values[i] for k in range(len(values)))

    def beaten_by(a: int) -> list[tuple[float, int]]:  # (z, j) for every j better than a by more than 2 paired SE
        out = [(sign * (values[j] - values[a]) / ses[a][j], j) for j in range(len(values)) if j != a and ses[a][j] > 0]
        return [(z, j) for z, j in out if z > 2]

    beaten = beaten_by(i)
    if beaten:  # refuted directly; the clearest such sampler is named
        z, j = max(beaten)
        hint = (
            f"{names[best]} has the best point estimate ({values[best]:.4g}); {names[i]} scores {values[i]:.4g}, and "
            f"{names[j]} beats it by {sign * (values[j] - values[i]):.3g} ± {ses[i][j]:.2g} ({z:.1f} paired standard "
            "errors): how many steps does each sampler make with 4 evaluations, and how large is each step in log σ?"
        )
        return _report(False, what, hint)
    # refuted through another: it scores worse than a sampler that is itself clearly beaten (a large paired SE, e.g.
    # from fresh noise that breaks the pairing, must not rescue a sampler ranked below a refuted one)
    worse_than = [j for j in range(len(values)) if sign * (values[j] - values[i]) > 0 and beaten_by(j)]
    if worse_than:
        j = max(worse_than, key=lambda k: sign * values[k])
        z, m = max(beaten_by(j))
        hint = (
            f"{names[best]} has the best point estimate ({values[best]:.4g}); {names[i]} ranks {rank} of "
            f"{len(names)} ({values[i]:.4g}), below {names[j]} ({values[j]:.4g}), which {names[m]} beats by "
            f"{sign * (values[m] - values[j]):.3g} ± {ses[j][m]:.2g} ({z:.1f} paired standard errors). {names[i]} "
            f"escapes a direct refutation only because its paired standard errors are large ("
            f"{ses[i][best]:.2g} against {names[best]}: fresh noise in a sampler breaks the pairing "
            "with the others), not because it is close to the best"
        )
        return _report(False, what, hint)
    if i == best:
        print(f"✅ {what}: correct, {names[i]} has the best point estimate ({values[i]:.4g})")
    else:
        gap = sign * (values[best] - values[i])
        print(
            f"✅ {what}: correct within the error bars: {names[best]} has the best point estimate "
            f"({values[best]:.4g}), {names[i]} ranks {rank} of {len(names)}, {gap:.3g} behind with a paired standard "
            f"error of {ses[i][best]:.2g}, and no sampler beats {names[i]} by more than two paired standard errors: "
            "this experiment cannot separate them"
        )
    return True
