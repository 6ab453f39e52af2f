"""Exercise checkers of notebook 12 (fine-tuning: textual inversion, LoRA, DreamBooth).

==================================  ================================================================================
checker                             what the student answers
==================================  ================================================================================
``check_lora_break_even``           the rank r* at which a LoRA on a d_out × d_in layer trains as many numbers as the
                                    layer itself: r*(d_in + d_out) = d_in·d_out (Hu et al. 2021)
``check_lora_target_prediction``    a prediction tested by the notebook's experiment: does an adapter on all attention
                                    (self- and cross-) move an untrained prompt more, the same or less than one on the
                                    cross-attention only
``check_concatenated_prior_loss``   the λ and overall factor c for which one MSE over the concatenated subject and
                                    class batches equals c·(L_instance + λ·L_prior) (Ruiz et al. 2023, Eq. 2, with
                                    the course's v-prediction loss)
==================================  ================================================================================

Each checker calls the student's function (or reads the student's answer), compares it with an independent formula
(or with the measurement the notebook passes in) and prints one ✅/❌ line with a hint naming the usual mistake; an
error raised by the student's code becomes a ❌, and only a checker's own arguments raise (a non-callable ``fn``, a
measurement that is not a number: ``TypeError``). Shared machinery: :mod:`diffusion_lab.course.exercises.checking`.
The magnitude-pruning checker of notebook 13 is in :mod:`diffusion_lab.course.exercises.nb13_surgery`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from diffusion_lab.course.exercises.checking import _as_number, _call, _check_callable, _report

__all__ = [
    "check_lora_break_even",
    "check_lora_target_prediction",
    "check_concatenated_prior_loss",
    "TARGET_PREDICTIONS",
]


def check_lora_break_even(fn: Callable[..., object]) -> bool:
    """``fn(d_out, d_in)`` must return r* = d_in·d_out / (d_in + d_out): the rank at which a LoRA's A (r × d_in) and
    B (d_out × r) hold as many numbers as the frozen layer W (d_out × d_in); any rank below r* saves parameters.
    A whole number within 1 of r* (r* rounded up or down) is accepted too."""
    _check_callable(fn)
    what = "the LoRA break-even rank"
    for d_out, d_in in ((64, 64), (1280, 1280), (1280, 2048), (320, 768), (10, 3)):
        want = d_in * d_out / (d_in + d_out)
        out, hint = _call(fn, what, d_out, d_in)
        if hint:
            return _report(False, what, hint)
        got, problem = _as_number(out)
        if problem:
            return _report(False, what, f"return one number, the rank r*: {problem}")
        if abs(got - want) < 1:
            continue
        if d_in != d_out and (abs(got - min(d_in, d_out) / 2) < 1e-6 or abs(got - max(d_in, d_out) / 2) < 1e-6):
            hint = f"d/2 holds only for a square layer; for {d_out} × {d_in} solve r·(d_in + d_out) = d_in·d_out for r"
        elif abs(got - (d_in + d_out) / 2) < 1e-6 and d_in != d_out:
            hint = "not the mean of d_in and d_out: solve r·(d_in + d_out) = d_in·d_out for r"
        elif abs(got - math.sqrt(d_in * d_out)) < 1e-6 or abs(got - d_in * d_out / 2) < 1e-6:
            hint = "count the LoRA's numbers as r·d_in (A) + d_out·r (B) and set that equal to d_in·d_out"
        elif abs(got - (d_in + d_out) / (d_in * d_out)) < 1e-9:
            hint = "upside down: r* = d_in·d_out / (d_in + d_out)"
        else:
            hint = f"wrong for d_out = {d_out}, d_in = {d_in}: want r with r·(d_in + d_out) = d_in·d_out"
        return _report(False, what, hint)
    return _report(True, what, "")


TARGET_PREDICTIONS = {1: "more", 2: "about the same", 3: "less"}


def _measured(name: str, value: object) -> float:
    number, problem = _as_number(value)
    if problem:
        raise TypeError(f"{name} must be a finite number (the notebook's measurement): {problem}")
    return float(number)


def check_lora_target_prediction(prediction: object, change_cross: object, change_all: object, se: object) -> bool:
    """``prediction``, a number of :data:`TARGET_PREDICTIONS`: does an adapter on **all** attention layers (self- and
    cross-) change an untrained prompt's pictures 1 more, 2 about the same or 3 less than an adapter on the
    cross-attention only, both trained alike? ``change_cross`` and ``change_all`` are the measured changes from the
    base model's pictures (same seeds; ≥ 0), ``se`` the standard error of their difference (paired by seed). The
    truth is 1 or 3 when change_all − change_cross is beyond ±2·se, else 2."""
    what = "the LoRA-target prediction"
    cross, every = _measured("change_cross", change_cross), _measured("change_all", change_all)
    err = _measured("se", se)
    if min(cross, every, err) < 0:
        raise ValueError(f"the changes and se must be >= 0, got {cross}, {every}, {err}")
    if prediction is None:
        return _report(False, what, "not done yet: set my_prediction to 1, 2 or 3 BEFORE the experiment")
    said, problem = _as_number(prediction, whole=True)
    if problem or said not in TARGET_PREDICTIONS:
        return _report(
            False,
            what,
            f"answer with one of the numbers 1 (more), 2 (about the same), 3 (less): {problem or f'got {said}'}",
        )
    diff = every - cross
    truth = 1 if diff > 2 * err else 3 if diff < -2 * err else 2
    if said == truth:
        return _report(True, what, "")
    measured = f"measured: cross-attention {cross:.4f}, all attention {every:.4f}, difference {diff:+.4f} ± {err:.4f}"
    if truth == 2:
        hint = f"{measured}, within 2 standard errors: this experiment cannot tell them apart"
    elif truth == 1:
        hint = (
            f"{measured}: the self-attention adapters act on the image features of every prompt, whatever its words "
            "(in the cross-attention only to_k and to_v read the text)"
        )
    else:
        hint = f"{measured}: the all-attention adapter changed the untrained prompt less, beyond 2 standard errors"
    return _report(False, what, hint)


def check_concatenated_prior_loss(fn: Callable[..., object]) -> bool:
    """``fn(n_subject, n_prior)`` must return ``(lam, c)``: concatenating N subject and M class examples into one batch
    and taking one MSE over it gives (N·L_instance + M·L_prior)/(N + M) = c·(L_instance + λ·L_prior) with
    λ = M/N and c = N/(N + M) (each L the mean over its own batch, as the course's loss)."""
    _check_callable(fn)
    what = "the concatenated-batch loss"
    for n, m in ((8, 8), (5, 10), (4, 1), (3, 7)):
        lam, c = m / n, n / (n + m)
        out, hint = _call(fn, what, n, m)
        if hint:
            return _report(False, what, hint)
        if isinstance(out, str | bytes | dict) or not hasattr(out, "__len__") or len(out) != 2:
            return _report(False, what, "return two numbers, (lam, c)")
        (got_lam, p1), (got_c, p2) = _as_number(out[0]), _as_number(out[1])
        if p1 or p2:
            return _report(False, what, f"return two numbers, (lam, c): {p1 or p2}")
        if abs(got_lam - lam) < 1e-6 and abs(got_c - c) < 1e-6:
            continue
        if abs(got_lam - 1) < 1e-6 and abs(got_c - 0.5) < 1e-6:
            hint = f"λ = 1, c = ½ only when both batches have the same size; here N = {n}, M = {m}"
        elif abs(got_lam - n / m) < 1e-6 and n != m:
            hint = "upside down: each class example weighs as much as a subject example, so λ = M/N"
        elif abs(got_lam - lam) < 1e-6:
            hint = f"λ = M/N is right; the mean divides the sum of all N + M squared errors by N + M: c = N/(N + M), not {got_c:g}"
        elif abs(got_lam - m / (n + m)) < 1e-6 or (abs(got_lam * got_c - m / (n + m)) < 1e-6 and abs(got_c - c) > 1e-6):
            hint = "write it as c·(L_instance + λ·L_prior): factor N/(N + M) out of both terms, what is left on L_prior is λ"
        else:
            hint = f"wrong for N = {n}, M = {m}: expand the mean over N + M examples into the two batches' means"
        return _report(False, what, hint)
    return _report(True, what, "")
