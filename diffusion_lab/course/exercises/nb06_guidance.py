"""Exercise checkers of notebook 06 (classifier-free guidance).

===========================  ==================================================================
checker                      the student's function must return
===========================  ==================================================================
``check_cfg_combine``        ε̃ = ε_∅ + w·(ε_c − ε_∅) (Ho & Salimans 2022, Eq. 6, diffusers' w)
``check_rescale_noise_cfg``  φ·ε̃·σ(ε_c)/σ(ε̃) + (1 − φ)·ε̃ (Lin et al. 2024, Eq. 15-16)
``check_best_guidance``      the w whose measured value is best (highest, or lowest for FID)
``check_rescaled_std``       σ(ε̃_final) = φ·σ(ε_c) + (1 − φ)·σ(ε̃): guidance rescale's effect on the std (derived)
===========================  ==================================================================

Each checker calls the student's function on seeded cases, compares it with the library's reference (or an
independent formula) and prints one ✅/❌ line with a hint naming the usual mistake; an error raised by the student's
code becomes a ❌, and only a checker's own arguments raise (a non-callable ``fn``: ``TypeError``). Shared
machinery: :mod:`diffusion_lab.course.exercises.checking`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from diffusion_lab.course.exercises.checking import _as_number, _call_tensor, _check_callable, _report
from diffusion_lab.maths.guidance import rescale_noise_cfg
from diffusion_lab.utils.errors import check_number

__all__ = ["check_cfg_combine", "check_rescale_noise_cfg", "check_best_guidance", "check_rescaled_std"]


def check_cfg_combine(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(cond, uncond, guidance_scale)`` must return ε̃ = ε_∅ + w·(ε_c − ε_∅) (diffusers' w: 1 = no guidance)."""
    _check_callable(fn)
    what = "classifier-free guidance"
    g = torch.Generator().manual_seed(16)
    cond, uncond = torch.randn(2, 3, 4, 7, 7, generator=g).unbind(0)  # (B, L, h, w) each
    for w in (2.5, 0.0, 1.0, 7.5):  # 2.5 first: it tells the typical mistakes apart
        want = uncond + w * (cond - uncond)
        shape_hint = "return one prediction per sample, shape {want}, not {got}"
        got, hint = _call_tensor(fn, what, want, shape_hint, cond, uncond, w)
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-5):
            continue
        if torch.allclose(got, (1 + w) * cond - w * uncond, atol=1e-5):
            hint = (
                "that is the paper's (1 + w)·ε_c − w·ε_∅; with diffusers' guidance scale, w = 1 must give the "
                "conditional prediction: ε_∅ + w·(ε_c − ε_∅) (the same for velocities: v_∅ + w·(v_c − v_∅))"
            )
        elif torch.allclose(got, cond + w * (uncond - cond), atol=1e-5):
            hint = (
                "cond and uncond are swapped: w = 0 must give the unconditional prediction, w = 1 the conditional one"
            )
        else:
            hint = (
                f"wrong for w = {w}: start at ε_∅ and move w times the difference ε_c − ε_∅ "
                "(ε or v alike: the unconditional prediction plus w times conditional minus unconditional)"
            )
        return _report(False, what, hint)
    return _report(True, what, "")


def check_rescale_noise_cfg(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(noise_cfg, noise_pred_text, guidance_rescale)`` must return guidance rescale (Lin et al. 2024, Eq. 15-16):
    φ·ε̃·σ(ε_c)/σ(ε̃) + (1 − φ)·ε̃, with σ the standard deviation of each sample over all its other dimensions."""
    _check_callable(fn)

    what = "guidance rescale"
    g = torch.Generator().manual_seed(17)
    text = torch.randn(3, 4, 7, 7, generator=g) * torch.tensor([0.5, 1.0, 2.0]).reshape(3, 1, 1, 1)
    cfg = text * torch.tensor([3.0, 1.5, 6.0]).reshape(3, 1, 1, 1) + torch.randn(3, 4, 7, 7, generator=g)
    for phi in (0.7, 0.0, 1.0):
        want = rescale_noise_cfg(cfg, text, phi)
        shape_hint = "return the rescaled prediction, shape {want}, not {got}"
        got, hint = _call_tensor(fn, what, want, shape_hint, cfg, text, phi)
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-5):
            continue
        batch_wide = phi * cfg * text.std() / cfg.std() + (1 - phi) * cfg
        inverted = phi * cfg * cfg.std((1, 2, 3), keepdim=True) / text.std((1, 2, 3), keepdim=True) + (1 - phi) * cfg
        rescaled = cfg * text.std((1, 2, 3), keepdim=True) / cfg.std((1, 2, 3), keepdim=True)
        if torch.allclose(got, batch_wide, atol=1e-5):
            hint = "take σ per sample (over dims 1, 2, 3, keepdim=True), not over the whole batch"
        elif torch.allclose(got, inverted, atol=1e-5):
            hint = "the ratio is upside down: multiply by σ(ε_c)/σ(ε̃), which shrinks an inflated ε̃"
        elif torch.allclose(got, (1 - phi) * rescaled + phi * cfg, atol=1e-5) or torch.allclose(
            got, rescaled, atol=1e-5
        ):
            hint = f"wrong for φ = {phi}: φ = 0 must return ε̃ unchanged and φ = 1 the fully rescaled ε̃·σ(ε_c)/σ(ε̃)"
        else:
            hint = f"wrong for φ = {phi}: rescaled = ε̃·σ(ε_c)/σ(ε̃) per sample, then φ·rescaled + (1 − φ)·ε̃"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_best_guidance(answer, guidance_scales, values, *, lower_is_better: bool = False) -> bool:
    """``answer`` must be the guidance scale w (from ``guidance_scales``) at which the measured ``values`` are best:
    the highest, or the lowest with ``lower_is_better`` (e.g. FID)."""
    what = "best guidance scale"
    ws, v = _numbers("guidance_scales", guidance_scales), np.asarray(_numbers("values", values, finite=False))
    if len(ws) != len(v) or not len(ws):
        return _report(False, what, "pass the guidance scales and one measured value per scale (two equal lists)")
    if answer is None:
        return _report(False, what, "set your answer to a guidance scale w, a number from the list of scales")
    if bool(np.isnan(v).all()):
        raise ValueError("values are all NaN: measure at least one guidance scale")
    answer, problem = _as_number(answer)
    if problem:
        return _report(False, what, f"answer with one number, the guidance scale w itself: {problem}")
    best = int(np.nanargmin(v) if lower_is_better else np.nanargmax(v))
    worst = int(np.nanargmax(v) if lower_is_better else np.nanargmin(v))
    if np.isclose(answer, ws[best]):
        return _report(True, what, "")
    if answer == best and answer not in ws:
        hint = "that is the position in the list; answer the guidance scale w at that position"
    elif np.isclose(answer, ws[worst]):
        hint = (
            "that is the worst one: lower is better here"
            if lower_is_better
            else "that is the worst one: higher is better here"
        )
    else:
        hint = "find the " + ("lowest" if lower_is_better else "highest") + " measured value and read off its w"
    return _report(False, what, hint)


def check_rescaled_std(answer, std_cond, std_guided, phi) -> bool:
    """``answer`` must be the standard deviation of guidance rescale's output (Lin et al. 2024, Eqs. 15-16) for one
    sample whose conditional prediction has std ``std_cond`` and whose guided prediction has std ``std_guided``:
    ε̃_final = (φ·σ_c/σ̃ + 1 − φ)·ε̃ is a positive multiple of ε̃, so σ(ε̃_final) = φ·σ_c + (1 − φ)·σ̃ (within 0.01:
    an answer from the printed two-decimal stds is accepted)."""
    std_cond = check_number("std_cond", std_cond, minimum=0.0)
    std_guided = check_number("std_guided", std_guided, minimum=0.0)
    phi = check_number("phi", phi, minimum=0.0, maximum=1.0)
    if std_cond <= 0 or std_guided <= 0:
        raise ValueError(f"std_cond and std_guided must be positive, got {std_cond} and {std_guided}")
    what = "std after guidance rescale"
    if answer is None:
        return _report(False, what, "set your answer to one number, the std of the rescaled prediction")
    got, problem = _as_number(answer)
    if problem:
        return _report(False, what, f"answer with one number, the std: {problem}")
    want = phi * std_cond + (1 - phi) * std_guided
    if abs(got - want) <= 0.01:
        return _report(True, what, "")
    near = [
        (std_cond, "that is σ(ε_c), the fully rescaled std (φ = 1); the blend keeps (1 − φ) of ε̃"),
        (std_guided, "that is σ(ε̃), the std without rescale (φ = 0)"),
        (
            (phi * std_cond**2 + (1 - phi) * std_guided**2) ** 0.5,
            "that blends variances; the two terms are multiples of the same ε̃ (perfectly correlated), "
            "so their stds add: σ(a·ε̃ + b·ε̃) = (a + b)·σ(ε̃)",
        ),
        ((1 - phi) * std_cond + phi * std_guided, "the weights are swapped: φ multiplies the rescaled part"),
    ]
    for wrong, message in near:
        if abs(got - wrong) <= 0.01:
            return _report(False, what, message)
    return _report(False, what, "write ε̃_final = c·ε̃ with c = φ·σ_c/σ̃ + (1 − φ); then σ(ε̃_final) = c·σ̃ (c > 0)")


def _not_finite(x: object) -> bool:
    try:
        return not isinstance(x, bool) and not math.isfinite(float(x))
    except Exception:  # not a number at all: check_number says so
        return False


def _numbers(name: str, values: object, finite: bool = True) -> list[float]:
    """A checker's own list argument as floats (NaN and inf allowed unless ``finite``: a value not measured, or a
    diverged one); ``TypeError`` naming ``name`` if it is not a list of numbers."""
    if isinstance(values, str | bytes | dict | set) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a list of numbers, got {type(values).__name__}")
    return [
        float(x) if not finite and _not_finite(x) else check_number(f"{name}[{i}]", x) for i, x in enumerate(values)
    ]
