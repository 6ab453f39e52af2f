"""Exercise checkers of notebook 06 (classifier-free guidance).

===========================  ==================================================================
checker                      the student's function must return
===========================  ==================================================================
``check_cfg_combine``        ε̃ = ε_∅ + w·(ε_c − ε_∅) (Ho & Salimans 2022, Eq. 6, diffusers' w)
``check_rescale_noise_cfg``  φ·ε̃·s(ε_c)/s(ε̃) + (1 − φ)·ε̃ (Lin et al. 2024, Eq. 15-16)
``check_negative_exponents`` (a, b) = (w, 1 − w): a negative prompt aims at p(z|c)^a·p(z|c_neg)^b (derived)
``check_best_guidance``      the w whose measured value is best (highest, or lowest for FID)
``check_fid_ties``           the scales whose FID is within 2 paired SEs of the lowest (a decision with error bars),
                             optionally predicted for a smaller n (SEs grow as √(n_measured/n_predicted))
``check_latent_std_prediction``  a predicted std of the final latents within ``tolerance`` of the measured one
``check_rescaled_std``       s(ε̃_final) = φ·s(ε_c) + (1 − φ)·s(ε̃): guidance rescale's effect on the std (derived)
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

from diffusion_lab.course.exercises.checking import _as_number, _call, _call_tensor, _check_callable, _kind, _report
from diffusion_lab.maths.guidance import rescale_noise_cfg
from diffusion_lab.utils.errors import check_int, check_number

__all__ = [
    "check_cfg_combine",
    "check_rescale_noise_cfg",
    "check_negative_exponents",
    "check_best_guidance",
    "check_fid_ties",
    "check_latent_std_prediction",
    "check_rescaled_std",
]


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
    φ·ε̃·s(ε_c)/s(ε̃) + (1 − φ)·ε̃, with s the standard deviation of each sample over all its other dimensions."""
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
            hint = "take s per sample (over dims 1, 2, 3, keepdim=True), not over the whole batch"
        elif torch.allclose(got, inverted, atol=1e-5):
            hint = "the ratio is upside down: multiply by s(ε_c)/s(ε̃), which shrinks an inflated ε̃"
        elif torch.allclose(got, (1 - phi) * rescaled + phi * cfg, atol=1e-5) or torch.allclose(
            got, rescaled, atol=1e-5
        ):
            hint = f"wrong for φ = {phi}: φ = 0 must return ε̃ unchanged and φ = 1 the fully rescaled ε̃·s(ε_c)/s(ε̃)"
        else:
            hint = f"wrong for φ = {phi}: rescaled = ε̃·s(ε_c)/s(ε̃) per sample, then φ·rescaled + (1 − φ)·ε̃"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_best_guidance(
    answer, guidance_scales, values, *, lower_is_better: bool = False, other: tuple[str, object] | None = None
) -> bool:
    """``answer`` must be the guidance scale w (from ``guidance_scales``) at which the measured ``values`` are best:
    the highest, or the lowest with ``lower_is_better`` (e.g. FID). ``other`` = (name, values of another measure,
    higher is better, e.g. ("digit adherence", adherence)): an answer at that measure's peak gets a hint naming it."""
    what = "best guidance scale"
    ws, v = _numbers("guidance_scales", guidance_scales), np.asarray(_numbers("values", values, finite=False))
    if len(ws) != len(v) or not len(ws):
        return _report(False, what, "pass the guidance scales and one measured value per scale (two equal lists)")
    other_peak = None
    if other is not None:
        if not isinstance(other, tuple) or len(other) != 2 or not isinstance(other[0], str):
            raise TypeError("other must be a tuple (name, values), e.g. ('digit adherence', adherence)")
        other_values = np.asarray(_numbers("other values", other[1], finite=False))
        if len(other_values) != len(ws):
            raise ValueError(f"other's values must hold one value per scale ({len(ws)}), got {len(other_values)}")
        if not bool(np.isnan(other_values).all()):
            other_peak = (other[0], ws[int(np.nanargmax(other_values))])
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
    if other_peak is not None and np.isclose(answer, other_peak[1]):
        hint = (
            f"that is the {other_peak[0]} peak, not the "
            + ("lowest" if lower_is_better else "highest")
            + " of the values asked for: read off the w of those"
        )
    elif answer == best and answer not in ws:
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
    ε̃_final = (φ·s_c/s̃ + 1 − φ)·ε̃ is a positive multiple of ε̃, so s(ε̃_final) = φ·s_c + (1 − φ)·s̃ (within 0.01:
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
        (std_cond, "that is s(ε_c), the fully rescaled std (φ = 1); the blend keeps (1 − φ) of ε̃"),
        (std_guided, "that is s(ε̃), the std without rescale (φ = 0)"),
        (
            (phi * std_cond**2 + (1 - phi) * std_guided**2) ** 0.5,
            "that blends variances; the two terms are multiples of the same ε̃ (perfectly correlated), "
            "so their stds add: s(a·ε̃ + b·ε̃) = (a + b)·s(ε̃)",
        ),
        ((1 - phi) * std_cond + phi * std_guided, "the weights are swapped: φ multiplies the rescaled part"),
    ]
    for wrong, message in near:
        if abs(got - wrong) <= 0.01:
            return _report(False, what, message)
    return _report(False, what, "write ε̃_final = c·ε̃ with c = φ·s_c/s̃ + (1 − φ); then s(ε̃_final) = c·s̃ (c > 0)")


def check_negative_exponents(fn: Callable[[float], tuple[float, float]]) -> bool:
    """``fn(w)`` must return the exponents (a, b) of the distribution a negative prompt steers towards,
    p̃(z) ∝ p(z|c)^a · p(z|c_neg)^b: the guided prediction ε(c_neg) + w·(ε(c) − ε(c_neg)) = w·ε(c) + (1 − w)·ε(c_neg)
    is, times −1/σ_t, the score w·∇log p(z|c) + (1 − w)·∇log p(z|c_neg), so (a, b) = (w, 1 − w)."""
    _check_callable(fn)
    what = "the negative prompt's target"
    for w in (3.0, 7.5, 1.0, 0.0):  # 3 first: it tells the typical mistakes apart
        out, hint = _call(fn, what, w)
        if hint:
            return _report(False, what, hint)
        if isinstance(out, torch.Tensor | np.ndarray) and getattr(out, "ndim", 0) == 1 and len(out) == 2:
            out = tuple(out)
        if not isinstance(out, tuple | list) or len(out) != 2:
            return _report(
                False, what, f"return two numbers (a, b), the exponents of p(z|c) and p(z|c_neg): got {_kind(out)}"
            )
        (a, problem_a), (b, problem_b) = _as_number(out[0]), _as_number(out[1])
        if problem_a or problem_b:
            return _report(False, what, f"return two numbers (a, b): {problem_a or problem_b}")
        if abs(a - w) < 1e-6 and abs(b - (1 - w)) < 1e-6:
            continue
        if abs(a - (1 + w)) < 1e-6 and abs(b + w) < 1e-6:
            hint = "that is the paper's convention (1 + w, −w); with diffusers' w the weights are w and 1 − w"
        elif abs(a - (1 - w)) < 1e-6 and abs(b - w) < 1e-6:
            hint = "swapped: the prompt c carries w, the negative prompt what is left, 1 − w"
        elif abs(a - w) < 1e-6 and abs(b + w) < 1e-6:
            hint = (
                "ε(c_neg) appears twice in ε(c_neg) + w·(ε(c) − ε(c_neg)): collect its terms, 1 − w, not −w "
                "(the exponents of a product of densities sum to 1 here)"
            )
        elif abs(a + b - 1) > 1e-6:
            hint = f"wrong for w = {w:g}: the two weights of the predictions sum to 1, so must the exponents"
        else:
            hint = (
                f"wrong for w = {w:g}: write ε̃ = a·ε(c) + b·ε(c_neg), then turn each ε into a score "
                "(ε = −σ_t·∇log p) and read the exponents off ∇log p̃ = a·∇log p(z|c) + b·∇log p(z|c_neg)"
            )
        return _report(False, what, hint)
    return _report(True, what, "")


def check_fid_ties(
    answer, guidance_scales, fid, paired_se, *, n_measured: int | None = None, n_predicted: int | None = None
) -> bool:
    """``answer`` must list the guidance scales whose FID is within 2 standard errors of the lowest one:
    ``fid[i] − min(fid) ≤ 2·paired_se[i]``, with ``paired_se[i]`` the SE of the paired difference FID(w_i) − FID(w_best)
    (0 for the best scale itself, which belongs to the list).

    With ``n_measured`` and ``n_predicted`` (both or neither) the answer is a *prediction* for a run with
    ``n_predicted`` prompts from SEs measured with ``n_measured``: every SE grows by √(n_measured / n_predicted)
    (a standard error shrinks as 1/√n), the FID differences are assumed to stay as measured."""
    what = "scales tied with the lowest FID"
    ws = _numbers("guidance_scales", guidance_scales)
    v = np.asarray(_numbers("fid", fid))
    se = np.asarray(_numbers("paired_se", paired_se))
    if not (len(ws) == len(v) == len(se)) or not len(ws):
        raise ValueError("pass one FID and one paired standard error per guidance scale (three equal lists)")
    if (se < 0).any():
        raise ValueError("standard errors cannot be negative")
    if (n_measured is None) != (n_predicted is None):
        raise ValueError("pass both n_measured and n_predicted (a prediction for another n), or neither")
    growth = 1.0
    if n_measured is not None:
        growth = (
            check_int("n_measured", n_measured, minimum=2) / check_int("n_predicted", n_predicted, minimum=2)
        ) ** 0.5
    best = int(np.argmin(v))
    want = sorted(w for w, f, s in zip(ws, v, se, strict=True) if f - v[best] <= 2 * s * growth)
    unscaled = sorted(w for w, f, s in zip(ws, v, se, strict=True) if f - v[best] <= 2 * s)
    if answer is None:
        return _report(False, what, "set your answer to a list of guidance scales, e.g. [2.0, 3.0]")
    if isinstance(answer, int | float | np.number) and not isinstance(answer, bool):
        answer = [answer]
    if isinstance(answer, torch.Tensor | np.ndarray) and answer.ndim == 1 and not getattr(answer, "is_nested", False):
        answer = list(answer)  # its entries are read one by one below (a meta tensor's say so)
    if not isinstance(answer, list | tuple):
        return _report(False, what, f"answer with a list of guidance scales: got {_kind(answer)}")
    got = []
    for item in answer:
        number, problem = _as_number(item)
        if problem:
            return _report(False, what, f"answer with a list of guidance scales: an entry {problem}")
        got.append(number)
    unknown = [g for g in got if not any(np.isclose(g, w) for w in ws)]
    if unknown:
        return _report(
            False, what, f"{unknown[0]:g} is not one of the measured scales {', '.join(f'{w:g}' for w in ws)}"
        )
    got = sorted({w for w in ws for g in got if np.isclose(g, w)})
    if got == want:
        return _report(True, what, "")
    if ws[best] not in got:
        hint = f"the lowest FID itself (w = {ws[best]:g}) belongs to the list"
    elif growth != 1.0 and got == unscaled:
        hint = (
            f"those are the ties at n = {n_measured}; with {n_predicted} prompts every paired SE is "
            f"√({n_measured}/{n_predicted}) ≈ {growth:.2f} times larger: compare each difference with 2 × its SE × {growth:.2f}"
        )
    elif got == [ws[best]] and len(want) > 1:
        hint = (
            "the lowest alone is too strict: a scale ties with it when FID(w) − FID(best) ≤ 2 × its paired SE; "
            "compare each difference with twice its own SE"
        )
    else:
        extra, missing = sorted(set(got) - set(want)), sorted(set(want) - set(got))
        hint = (
            f"w = {extra[0]:g}: its FID is more than 2 paired SEs above the lowest"
            if extra
            else f"w = {missing[0]:g}: its FID is within 2 paired SEs of the lowest"
        )
    return _report(False, what, hint)


def check_latent_std_prediction(predicted, measured, measured_without_rescale, *, tolerance: float = 0.1) -> bool:
    """``predicted`` (written down before the run) must be within ``tolerance`` of the ``measured`` std of the final
    latents with guidance rescale; ``measured_without_rescale`` (the same run at φ = 0) names the usual mistake."""
    measured = check_number("measured", measured, minimum=0.0)
    plain = check_number("measured_without_rescale", measured_without_rescale, minimum=0.0)
    tolerance = check_number("tolerance", tolerance, minimum=0.0)
    what = "predicted latent std"
    if predicted is None:
        return _report(False, what, "write your prediction (one number) before running the cell")
    got, problem = _as_number(predicted)
    if problem:
        return _report(False, what, f"answer with one number, the std: {problem}")
    if abs(got - measured) <= tolerance:
        return _report(True, what, "")
    if abs(got - plain) <= tolerance and abs(plain - measured) > tolerance:
        hint = "that is about the spread without rescale: rescale shrinks every step's prediction, so the latents spread less"
    elif got > measured:
        hint = f"too high by {got - measured:.2f}: compare the rescaled and plain rows of section 6 at w = 15 and 30"
    else:
        hint = (
            f"too low by {measured - got:.2f}: rescale pulls each step's prediction towards the conditional one's size, "
            "not to zero, and keeps 1 − φ of the guided one"
        )
    return _report(False, what, hint)


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
