"""Exercise checkers of notebook 09 (fast sampling: ODE solvers, Karras σ, distillation).

============================  ========================================================================================
checker                       the student's answer must be
============================  ========================================================================================
``check_heun_step``           one Heun step of dx/dσ = (x − D(x; σ))/σ (Karras et al. 2022, Alg. 1): the trapezoid
                              (d + d')/2 with d' at Euler's guess, and a plain Euler step when σ_next = 0
``check_dpm_first_order``     DPM-Solver++(1) in DDPM's scale, x_t = (σ_t/σ_s)·x_s + α_t·(1 − e^{−h})·x̂₀ with
                              h = λ_t − λ_s, λ = log(α/σ) (Lu et al. 2022b): a derivation, compared with DDIM's step
``check_sampler_prediction``  a prediction (which sampler is best at 4 network evaluations, by number), judged against
                              the measurement with its standard errors
============================  ========================================================================================

Index and shape conventions: σ-scale states x (B, ...) with x = x₀ + σ·ε; DDPM-scale states x_t = α_t·x₀ + σ_t·ε with
α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t). Each checker calls the student's function on seeded cases, compares with an
independent formula and prints one ✅/❌ line with a hint naming the usual mistake; an error raised by the student's
code becomes a ❌, and only a checker's own arguments raise (a non-callable ``fn``: ``TypeError``). Shared
machinery: :mod:`diffusion_lab.course.exercises.checking`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from diffusion_lab.course.exercises.checking import _as_number, _call_tensor, _check_callable, _report
from diffusion_lab.course.exercises.nb08_flow import _numbers  # a checker's own list of measured numbers

__all__ = ["check_heun_step", "check_dpm_first_order", "check_sampler_prediction"]

_MU, _S = 1.0, 0.5  # the Gaussian toy of the checks: data N(μ, s²)


def _toy_denoiser(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The exact denoiser of N(μ, s²) data: D(x; σ) = (s²·x + σ²·μ)/(s² + σ²)."""
    return (_S**2 * x + sigma**2 * _MU) / (_S**2 + sigma**2)


def _slope(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return (x - _toy_denoiser(x, sigma)) / sigma  # d = (x − D)/σ


def check_heun_step(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(x, sigma, sigma_next, denoise)`` must return one Heun step from σ to σ_next < σ of the probability-flow ODE
    dx/dσ = (x − D(x; σ))/σ, where ``denoise(x, sigma)`` is D: with h = σ_next − σ, d = (x − D(x; σ))/σ, the guess
    x̃ = x + h·d, d' = (x̃ − D(x̃; σ_next))/σ_next and x + h·(d + d')/2; when σ_next = 0, the Euler step x + h·d."""
    _check_callable(fn)
    what = "the Heun step"
    g = torch.Generator().manual_seed(91)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64) * 3 + _MU  # (B, ...) states at σ
    for sigma, sigma_next in ((2.0, 1.0), (6.0, 3.5), (0.5, 0.0)):
        h = sigma_next - sigma
        d = _slope(x, sigma)
        guess = x + h * d
        want = guess if sigma_next == 0 else x + h * (d + _slope(guess, sigma_next)) / 2
        got, hint = _call_tensor(
            fn, what, want, "return the next state, x's shape {want}, not {got}", x, sigma, sigma_next, _toy_denoiser
        )
        if hint:
            if sigma_next == 0 and "NaN or inf" in hint:
                hint = "at σ_next = 0 the second slope divides by zero: make the last step (to σ = 0) plain Euler"
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-6):
            continue
        if sigma_next == 0:
            hint = "at σ_next = 0 there is no second slope: the last step is plain Euler, x + (σ_next − σ)·d"
        elif torch.allclose(got, guess, atol=1e-6):
            hint = "that is Euler's step: correct it with the slope at Euler's guess and average the two slopes"
        elif torch.allclose(got, x + h * (d + _slope(x, sigma_next)) / 2, atol=1e-6):
            hint = "the second slope is taken at the wrong point: evaluate it at Euler's guess x̃ = x + h·d, not at x"
        elif torch.allclose(got, x + h * (d + _slope(guess, sigma)) / 2, atol=1e-6):
            hint = "the second slope belongs to σ_next: compute D(x̃; σ_next) and divide by σ_next"
        elif torch.allclose(got, x + h * _slope(guess, sigma_next), atol=1e-6):
            hint = "use the average (d + d')/2 of the two slopes (the trapezoid), not d' alone"
        elif torch.allclose(got, (x + guess) / 2, atol=1e-6):
            hint = "average the slopes, not the states: x + h·(d + d')/2"
        elif torch.allclose(got, x - h * (d + _slope(guess, sigma_next)) / 2, atol=1e-6):
            hint = "the step goes the wrong way: h = σ_next − σ is negative when sampling"
        else:
            hint = f"wrong from σ = {sigma} to {sigma_next}: x̃ = x + h·d, d' at (x̃, σ_next), then x + h·(d + d')/2"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_dpm_first_order(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(x_s, x0_hat, alpha_s, sigma_s, alpha_t, sigma_t)`` must return DPM-Solver++(1) from s to t in DDPM's
    scale, x_t = (σ_t/σ_s)·x_s + α_t·(1 − e^{−h})·x̂₀ with h = λ_t − λ_s and λ = log(α/σ). The check compares it with
    DDIM's step α_t·x̂₀ + σ_t·ε̂, ε̂ = (x_s − α_s·x̂₀)/σ_s: the two are one formula."""
    _check_callable(fn)
    what = "DPM-Solver++(1) in DDPM's scale"
    g = torch.Generator().manual_seed(92)
    x_s, x0 = torch.randn(2, 5, 4, 7, 7, generator=g, dtype=torch.float64).unbind(0)  # (B, L, h, w) each
    for ab_s, ab_t in ((0.3, 0.6), (0.02, 0.2), (0.7, 0.99)):
        a_s, s_s, a_t, s_t = math.sqrt(ab_s), math.sqrt(1 - ab_s), math.sqrt(ab_t), math.sqrt(1 - ab_t)
        want = a_t * x0 + s_t * (x_s - a_s * x0) / s_s  # DDIM (η = 0)
        got, hint = _call_tensor(
            fn, what, want, "return x_t, x_s's shape {want}, not {got}", x_s, x0, a_s, s_s, a_t, s_t
        )
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-6):
            continue
        h = math.log(a_t / s_t) - math.log(a_s / s_s)
        wrong = {
            "e^{+h}": (s_t / s_s) * x_s + a_t * (1 - math.exp(h)) * x0,
            "no α_t": (s_t / s_s) * x_s + (1 - math.exp(-h)) * x0,
            "ratio": (s_s / s_t) * x_s + a_t * (1 - math.exp(-h)) * x0,
            "σ-scale": (s_t * a_s / (s_s * a_t)) * x_s + (1 - math.exp(-h)) * x0,
            "sign": (s_t / s_s) * x_s - a_t * (1 - math.exp(-h)) * x0,
        }
        hints = {
            "e^{+h}": "the step in λ is h = λ_t − λ_s > 0 and the weight of x̂₀ is 1 − e^{−h} (between 0 and 1)",
            "no α_t": "in DDPM's scale the x̂₀ term carries α_t: σ_t·e^{λ_t} = α_t",
            "ratio": "x_s is scaled by σ_t/σ_s (less noise at t), not σ_s/σ_t",
            "σ-scale": "that is the σ-scale form e^{−h}·x̄ + (1 − e^{−h})·x̂₀ applied to x_t: multiply x̄ by α_t first",
            "sign": "the sign of the x̂₀ term: the integral of e^{λ} over [λ_s, λ_t] is positive",
        }
        for key, value in wrong.items():
            if torch.allclose(got, value, atol=1e-6):
                return _report(False, what, hints[key])
        return _report(
            False, what, "hold x̂₀ constant in x_t/σ_t = x_s/σ_s + ∫ e^{λ}·x̂₀ dλ and integrate from λ_s to λ_t"
        )
    return _report(True, what, "")


def check_sampler_prediction(
    prediction: object, labels: object, scores: object, errors: object, higher_is_better: bool = True
) -> bool:
    """``prediction`` is the number (1, 2, …) of the sampler in ``labels`` predicted to be best. ``scores`` are the
    measured values, one per sampler, and ``errors`` their standard errors: the prediction is right if its score is
    within two standard errors of the difference from the best one (``higher_is_better`` says which way is best)."""
    what = "which sampler wins"
    if isinstance(labels, str | bytes) or not hasattr(labels, "__iter__"):
        raise TypeError(f"labels must be a list of sampler names, got {type(labels).__name__}")
    names = [str(label) for label in labels]
    values, ses = _numbers("scores", scores), _numbers("errors", errors)
    if not names or len(values) != len(names) or len(ses) != len(names):
        raise ValueError(
            f"pass one score and one error per sampler: {len(names)} labels, {len(values)} scores, {len(ses)} errors"
        )
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
    margin = 2 * (ses[i] ** 2 + ses[best] ** 2) ** 0.5
    if sign * (values[best] - values[i]) <= margin:
        return _report(True, what, "")
    hint = (
        f"{names[best]} is best ({values[best]:.3g} ± {ses[best]:.2g}); {names[i]} scores {values[i]:.3g} ± "
        f"{ses[i]:.2g}, more than two standard errors behind: how many steps does each make with 4 evaluations, "
        "and how large is each step in log σ?"
    )
    return _report(False, what, hint)
