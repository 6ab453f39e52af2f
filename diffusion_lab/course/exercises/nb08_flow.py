"""Exercise checkers of notebook 08 (rectified flow and MMDiT).

=============================  =====================================================================
checker                        the student's function must return
=============================  =====================================================================
``check_flow_path``            x_t = (1 − t)·x₀ + t·ε and v = ε − x₀ (Liu et al. 2023, rectified flow)
``check_time_shift``           t' = α·t/(1 + (α − 1)·t) (SD3 §5.3.2)
``check_flow_euler_step``      x_{t_next} = x_t + (t_next − t)·v
``check_velocity_from_eps``    v̂ = (ε̂ − x_t)/(1 − t): the velocity an ε-prediction implies (a derivation)
``check_matched_alpha_bar``    ᾱ = (1 − t)²/((1 − t)² + t²): DDPM's ᾱ at the flow's noise-to-signal ratio
``check_shift_prediction``     a prediction (which timestep shift α gives the best 3-step toy samples), judged against
                               the measurement with its error bar
=============================  =====================================================================

Each checker calls the student's function on seeded cases, compares it with the library's reference (or an
independent formula) and prints one ✅/❌ line with a hint naming the usual mistake; an error raised by the student's
code becomes a ❌, and only a checker's own arguments raise (a non-callable ``fn``: ``TypeError``). Shared
machinery: :mod:`diffusion_lab.course.exercises.checking`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffusion_lab.course.exercises.checking import (
    _as_number,
    _as_tensor,
    _call,
    _call_tensor,
    _check_callable,
    _finite_hint,
    _kind,
    _report,
)

__all__ = [
    "check_flow_path",
    "check_time_shift",
    "check_flow_euler_step",
    "check_velocity_from_eps",
    "check_matched_alpha_bar",
    "check_shift_prediction",
]


def check_flow_path(fn: Callable[..., tuple]) -> bool:
    """``fn(x0, noise, t)`` must return (x_t, v): the straight path x_t = (1 − t)·x₀ + t·ε and its velocity
    v = dx_t/dt = ε − x₀ (t (B,) per sample, 0 = data, 1 = noise)."""
    _check_callable(fn)
    what = "the rectified-flow path and its velocity"
    g = torch.Generator().manual_seed(31)
    x0, noise = torch.randn(2, 5, 4, 7, 7, generator=g).unbind(0)  # (B, L, h, w) each
    t = torch.tensor([0.0, 0.25, 0.5, 0.8, 1.0])
    tb = t[:, None, None, None]
    want_x, want_v = (1 - tb) * x0 + tb * noise, noise - x0
    out, hint = _call(fn, what, x0, noise, t)
    if hint:
        return _report(False, what, hint)
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        return _report(False, what, f"return two tensors: (x_t, v), got {_kind(out)}")
    (got_x, problem_x), (got_v, problem_v) = (_as_tensor(o, x0.dtype) for o in out)
    if problem_x or problem_v:
        return _report(
            False, what, f"return two tensors: (x_t, v); {'x_t' if problem_x else 'v'} {problem_x or problem_v}"
        )
    if got_x.shape != want_x.shape or got_v.shape != want_v.shape:
        return _report(
            False, what, f"both must have x0's shape {tuple(x0.shape)}: broadcast t as t[:, None, None, None]"
        )
    if _finite_hint(got_x, want_x) or _finite_hint(got_v, want_v):
        return _report(False, what, _finite_hint(got_x, want_x) or _finite_hint(got_v, want_v))
    if not torch.allclose(got_x, want_x, atol=1e-5):
        if torch.allclose(got_x, tb * x0 + (1 - tb) * noise, atol=1e-5):
            hint = "x_t is reversed: at t = 0 it must be the data x₀, at t = 1 the noise ε"
        elif torch.allclose(got_x, (1 - tb).sqrt() * x0 + tb.sqrt() * noise, atol=1e-5):
            hint = "no square roots: the rectified-flow path is linear in t, (1 − t)·x₀ + t·ε"
        else:
            hint = "x_t must be (1 − t)·x₀ + t·ε, with t broadcast over (L, h, w)"
        return _report(False, what, hint)
    if not torch.allclose(got_v, want_v, atol=1e-5):
        hint = (
            "the velocity points the wrong way: d/dt [(1 − t)·x₀ + t·ε] = ε − x₀ (from data to noise)"
            if torch.allclose(got_v, x0 - noise, atol=1e-5)
            else "v is the derivative of x_t with respect to t: ε − x₀ (it does not depend on t)"
        )
        return _report(False, what, hint)
    return _report(True, what, "")


def check_time_shift(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> bool:
    """``fn(t, shift)`` must return SD3's shifted time α·t / (1 + (α − 1)·t) (α = shift; 0 and 1 stay put)."""
    _check_callable(fn)
    what = "the timestep shift"
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    for alpha in (3.0, 1.0, 0.5, 6.0):
        want = alpha * t / (1 + (alpha - 1) * t)
        got, hint = _call_tensor(fn, what, want, "return one shifted time per input time, {want}, not {got}", t, alpha)
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-6):
            continue
        if torch.allclose(got, t / (alpha - (alpha - 1) * t), atol=1e-6):
            hint = "that is the inverse shift (it moves t towards 0): use α·t / (1 + (α − 1)·t)"
        elif torch.allclose(got, alpha * t, atol=1e-6):
            hint = "α·t leaves [0, 1]: divide by 1 + (α − 1)·t so that t = 1 stays 1"
        else:
            hint = f"wrong for shift α = {alpha}: α·t / (1 + (α − 1)·t)"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_flow_euler_step(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(x_t, v, t, t_next)`` must return one Euler step of dx/dt = v: x_t + (t_next − t)·v (t_next < t)."""
    _check_callable(fn)
    what = "the Euler step"
    g = torch.Generator().manual_seed(32)
    x, v = torch.randn(2, 3, 4, 7, 7, generator=g).unbind(0)
    for t, t_next in ((1.0, 0.75), (0.4, 0.0), (0.9, 0.85)):
        want = x + (t_next - t) * v
        got, hint = _call_tensor(fn, what, want, "return the next state, shape {want}, not {got}", x, v, t, t_next)
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-5):
            continue
        if torch.allclose(got, x + (t - t_next) * v, atol=1e-5):
            hint = (
                "the step goes the wrong way: sampling runs t → t_next < t, so add (t_next − t)·v, a negative multiple"
            )
        else:
            hint = f"wrong from t = {t} to {t_next}: x_t + (t_next − t)·v"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_velocity_from_eps(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(x_t, eps_hat, t)`` must return the flow velocity v̂ that an ε-prediction ε̂ implies on the straight path
    x_t = (1 − t)·x₀ + t·ε: x̂₀ = (x_t − t·ε̂)/(1 − t), so v̂ = ε̂ − x̂₀ = (ε̂ − x_t)/(1 − t). ``x_t``, ``eps_hat``
    (B, L, h, w); ``t`` (B,) in [0, 1)."""
    _check_callable(fn)
    what = "the velocity from ε̂"
    g = torch.Generator().manual_seed(33)
    x, eps = torch.randn(2, 4, 4, 7, 7, generator=g).unbind(0)  # (B, L, h, w) each
    t = torch.tensor([0.1, 0.3, 0.6, 0.9])
    tb = t[:, None, None, None]
    want = (eps - x) / (1 - tb)
    got, hint = _call_tensor(fn, what, want, "return one velocity per sample, shape {want}, not {got}", x, eps, t)
    if hint:
        return _report(False, what, hint)
    if torch.allclose(got, want, atol=1e-4):
        return _report(True, what, "")
    if torch.allclose(got, -want, atol=1e-4):
        hint = "the sign is flipped: v̂ = ε̂ − x̂₀ points from the data to the noise"
    elif torch.allclose(got, eps - x, atol=1e-4):
        hint = "that is v̂ at t = 0 only: x̂₀ = (x_t − t·ε̂)/(1 − t) is divided by 1 − t, and so is ε̂ − x_t"
    elif torch.allclose(got, eps - (x - tb * eps), atol=1e-4):
        hint = "x̂₀ is not x_t − t·ε̂: solve x_t = (1 − t)·x̂₀ + t·ε̂ for x̂₀ (divide by 1 − t)"
    elif torch.allclose(got, (eps - x) / tb, atol=1e-4):
        hint = "divide by 1 − t (the weight of x₀ on the path), not by t"
    else:
        hint = "write x_t = (1 − t)·x̂₀ + t·ε̂, solve for x̂₀, and take v̂ = ε̂ − x̂₀ (t broadcast as t[:, None, None, None])"
    return _report(False, what, hint)


def check_matched_alpha_bar(fn: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """``fn(t)`` must return, for flow times t (a tensor in [0, 1]), the DDPM ᾱ whose noise-to-signal ratio
    √((1 − ᾱ)/ᾱ) equals the straight path's t/(1 − t): ᾱ = 1/(1 + σ²) = (1 − t)²/((1 − t)² + t²)."""
    _check_callable(fn)
    what = "DDPM's ᾱ at the flow's noise level"
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    want = (1 - t) ** 2 / ((1 - t) ** 2 + t**2)
    got, hint = _call_tensor(fn, what, want, "return one ᾱ per time, shape {want}, not {got}", t)
    if hint:
        return _report(False, what, hint)
    if torch.allclose(got, want, atol=1e-6):
        return _report(True, what, "")
    if torch.allclose(got, (1 - t) ** 2, atol=1e-6):
        hint = (
            "(1 − t)² is the squared weight of x₀, but DDPM's weights satisfy a² + b² = 1 and (1 − t)² + t² < 1: "
            "match the ratio b/a = t/(1 − t) instead"
        )
    elif torch.allclose(got, 1 - t, atol=1e-6):
        hint = "ᾱ = 1 − t gives √((1 − ᾱ)/ᾱ) = √(t/(1 − t)), not t/(1 − t): square the ratio"
    elif torch.allclose(got, t**2 / ((1 - t) ** 2 + t**2), atol=1e-6):
        hint = "that is 1 − ᾱ (the noise's share): ᾱ is the data's share, 1 at t = 0"
    else:
        hint = "set √((1 − ᾱ)/ᾱ) = t/(1 − t) and solve for ᾱ: ᾱ = 1/(1 + σ²)"
    return _report(False, what, hint)


def _numbers(name: str, values: object) -> list[float]:
    """A checker's own list argument (set by the notebook) as finite floats; ``TypeError`` naming ``name`` if not."""
    if isinstance(values, str | bytes | dict | set) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a list of numbers, got {type(values).__name__}")
    out = []
    for i, v in enumerate(values):
        number, problem = _as_number(v)
        if problem:
            raise TypeError(f"{name}[{i}] must be a finite number: {problem}")
        out.append(number)
    return out


def check_shift_prediction(prediction: object, shifts: object, scores: object, errors: object) -> bool:
    """``prediction`` (one of ``shifts``) says which timestep shift α gives the best few-step samples. ``scores`` are
    the measured distances to the data (lower is better), one per shift, and ``errors`` their standard errors: the
    prediction is right if its score is within two standard errors of the difference from the best one."""
    what = "shift prediction"
    if prediction is None:
        return _report(False, what, "not done yet: set your prediction BEFORE you run the experiment")
    alphas, values, ses = _numbers("shifts", shifts), _numbers("scores", scores), _numbers("errors", errors)
    if not alphas or len(values) != len(alphas) or len(ses) != len(alphas):
        raise ValueError(
            f"pass one score and one error per shift: {len(alphas)} shifts, {len(values)} scores, {len(ses)} errors"
        )
    options = ", ".join(f"{a:.3g}" for a in alphas)
    alpha, problem = _as_number(prediction)
    if problem:
        return _report(False, what, f"answer with one number, the shift α itself (one of {options}): {problem}")
    matches = [i for i, a in enumerate(alphas) if abs(alpha - a) <= 0.02 * abs(a)]
    if not matches:
        return _report(False, what, f"choose one of the measured shifts ({options}), got {alpha:g}")
    i, best = matches[0], min(range(len(values)), key=values.__getitem__)
    margin = 2 * (ses[i] ** 2 + ses[best] ** 2) ** 0.5
    if values[i] - values[best] <= margin:
        return _report(True, what, "")
    worst = max(range(len(values)), key=values.__getitem__)
    side = "towards the noise" if alphas[i] > alphas[best] else "towards the data"
    hint = (
        f"α = {alphas[best]:.3g} is best ({values[best]:.3f} ± {ses[best]:.3f}); yours scores {values[i]:.3f} ± "
        f"{ses[i]:.3f}{' (the worst)' if i == worst else ''}: it moves the steps too far {side}"
    )
    return _report(False, what, hint)
