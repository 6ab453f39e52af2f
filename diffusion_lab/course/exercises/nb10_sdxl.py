"""Exercise checkers of notebook 10 (Stable Diffusion XL).

=========================  ==============================================================================
checker                    the student's function (or answer) must return
=========================  ==============================================================================
``check_sdxl_time_ids``    (orig h, orig w, crop top, crop left, target h, target w) (SDXL §2.2)
``check_refiner_split``    the base's and the refiner's timesteps for high_noise_frac (ensemble of experts)
``check_crop_prediction``  a predicted shift of the digit's centroid (rows, columns) for a crop, against the measurement
``check_refiner_frac``     a high_noise_frac that leaves the refiner exactly k of the schedule's timesteps
=========================  ==============================================================================

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
    _call,
    _call_tensor,
    _check_callable,
    _kind,
    _report,
)

__all__ = ["check_sdxl_time_ids", "check_refiner_split", "check_crop_prediction", "check_refiner_frac"]


def check_sdxl_time_ids(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(original_size, crops_coords_top_left, target_size)`` (each an (a, b) pair) must return SDXL's
    micro-conditioning vector, shape (1, 6): (orig h, orig w, crop top, crop left, target h, target w)."""
    _check_callable(fn)
    what = "SDXL's time ids"
    for orig, crop, target in (((512, 768), (0, 0), (1024, 1024)), ((300, 200), (32, 16), (896, 1152))):
        want = torch.tensor([[*orig, *crop, *target]], dtype=torch.float32)
        got, hint = _call_tensor(
            fn, what, want, "return a (1, 6) tensor (one row of six numbers), not {got}", orig, crop, target
        )
        if hint and got is not None and got.numel() == 6:  # the six numbers in another shape
            got, hint = got.reshape(1, 6), ""
            if torch.equal(got, want):
                hint = "the numbers are right; return them as one row: shape (1, 6), e.g. torch.tensor([[...]])"
        if hint:
            return _report(False, what, hint)
        if torch.equal(got, want):
            continue
        if torch.equal(got, torch.tensor([[*target, *crop, *orig]], dtype=torch.float32)):
            hint = "original_size comes first and target_size last (the order SDXL was trained with)"
        elif torch.equal(got, torch.tensor([[*orig[::-1], *crop[::-1], *target[::-1]]], dtype=torch.float32)):
            hint = "each pair is (height, width) / (top, left) as given: do not swap them"
        else:
            hint = "concatenate the three pairs in order: original_size, crops_coords_top_left, target_size"
        return _report(False, what, hint)
    return _report(True, what, "")


def _refiner_split_reference(timesteps: list[int], fraction: float, T: int = 1000) -> tuple[list[int], list[int]]:
    """diffusers' rule: cutoff = round(T − fraction·T); the base runs the timesteps ≥ cutoff, the refiner the rest."""
    cutoff = _cutoff(fraction, T)
    return [t for t in timesteps if t >= cutoff], [t for t in timesteps if t < cutoff]


_EVEN = ((10, 0.8), (25, 0.7), (40, 0.75))  # evenly spaced schedules of n steps, with the fraction


def _cutoff(fraction: float, T: int = 1000) -> int:
    """The cutoff timestep of diffusers' hand-off: round(T − fraction·T)."""
    return int(round(T - fraction * T))


def check_refiner_split(fn: Callable[..., tuple]) -> bool:
    """``fn(timesteps, high_noise_frac)`` (a descending list of integer timesteps out of T = 1000, and the fraction
    of the *noise range* the base model handles) must return (base_timesteps, refiner_timesteps), as diffusers'
    ``denoising_end`` / ``denoising_start`` split them."""
    _check_callable(fn)
    what = "the base/refiner hand-off"
    cases = [(sorted({int(round(x)) for x in np.linspace(999, 0, n)}, reverse=True), f) for n, f in _EVEN]
    cases += [(list(range(950, -1, -50)), 0.8)]  # the cutoff 200 is itself a timestep: it belongs to the base
    cases += [([999, 990, 970, 930, 850, 700, 500, 300, 150, 50], 0.5)]  # uneven (Karras-like): 7 base steps, not 5
    for ts, frac in cases:
        n = len(ts)
        want = _refiner_split_reference(ts, frac)
        out, hint = _call(fn, what, list(ts), frac)
        if hint:
            return _report(False, what, hint)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            return _report(False, what, f"return two lists: (base_timesteps, refiner_timesteps), got {_kind(out)}")
        (base, problem_base), (refiner, problem_refiner) = _as_int_list(out[0]), _as_int_list(out[1])
        if problem_base or problem_refiner:
            problem = f"base: {problem_base}" if problem_base else f"refiner: {problem_refiner}"
            return _report(
                False, what, f"return two lists of timesteps: (base_timesteps, refiner_timesteps); {problem}"
            )
        got = (base, refiner)
        if got == tuple(want):
            continue
        if got == tuple(_refiner_split_reference(ts, 1 - frac)):
            hint = "high_noise_frac is the share of the *noise* range the base handles: the cutoff is T − frac·T"
        elif len(got[0]) in (round(frac * n), int(frac * n)):
            hint = "split by noise level, not by step count: the cutoff timestep is round(T − frac·T)"
        elif got == ([t for t in ts if t > _cutoff(frac)], [t for t in ts if t <= _cutoff(frac)]):
            hint = "the cutoff timestep itself belongs to the base: base = timesteps ≥ cutoff"
        else:
            hint = f"with {n} steps and frac {frac}: base = timesteps ≥ round(1000 − frac·1000), refiner = the rest"
        return _report(False, what, hint)
    return _report(True, what, "")


def _numbers(value: object) -> tuple[list[float] | None, str]:
    """``value`` as a list of finite floats: one number, or a (rows, columns) pair; or None and what is wrong."""
    if isinstance(value, tuple | list):
        out = []
        for v in value:
            x, problem = _as_number(v)
            if problem:
                return None, problem
            out.append(float(x))
        return out, ""
    x, problem = _as_number(value)
    return (None, problem) if problem else ([float(x)], "")


def check_crop_prediction(prediction: object, measured: object, standard_error: object) -> bool:
    """``prediction``: how many pixels the digit's centroid moves *down* (negative: up) when ``crops_coords_top_left``
    goes from (0, 0) to (c, 0) — one number (the rows), or a (rows, columns) pair (columns: negative = left) when
    ``measured`` is a pair. ``measured`` is the shift the notebook measured (mean over images) and ``standard_error``
    its standard error, each one number or a (rows, columns) pair: each part of the prediction is right within
    max(1 px, 3 standard errors)."""
    what = "crop prediction"
    m, problem_m = _numbers(measured)
    se, problem_se = _numbers(standard_error)
    if problem_m or problem_se or len(m) not in (1, 2) or len(se) != len(m) or min(se) < 0:
        raise ValueError(
            f"measured and standard_error must be finite numbers (or (rows, columns) pairs of them), standard_error "
            f">= 0: got {measured!r}, {standard_error!r}"
        )
    if prediction is None:
        return _report(False, what, "not done yet: set your prediction BEFORE you run the experiment")
    pair = len(m) == 2
    shape = "a (rows, columns) pair of numbers, e.g. (-1.5, 2.0)" if pair else "one number, the shift in pixels"
    if pair and not (isinstance(prediction, tuple | list) and len(prediction) == 2):
        return _report(False, what, f"answer with {shape} (negative = up / left): got {_kind(prediction)}")
    got, problem = _numbers(prediction)
    if problem or len(got) != len(m) or (not pair and isinstance(prediction, tuple | list)):
        return _report(False, what, f"answer with {shape} (negative = up / left): {problem or _kind(prediction)}")
    margin = [max(1.0, 3 * e) for e in se]
    if all(abs(g - x) <= t for g, x, t in zip(got, m, margin, strict=True)):
        return _report(True, what, "")
    rows, rows_m, rows_t = got[0], m[0], margin[0]
    if abs(rows - rows_m) > rows_t:  # the rows first: the part the crop's top offset moves
        if abs(rows + rows_m) <= rows_t:
            hint = (
                "rows: right size, wrong direction: a crop window that starts lower in the original picture shows "
                "the content higher up, so the digit moves against the crop"
            )
        elif abs(rows) < 1:
            hint = "rows: the model learned the crop from its training pictures: §3 measured a slope per unit of crop"
        else:
            hint = "rows: §3 measured the shift per unit of crop: multiply it by this crop's top offset (mind the sign)"
    else:
        hint = (
            "columns: the crop's left offset is 0 here, so the window does not move sideways: what does that leave "
            "for the columns?"
        )
    return _report(False, what, hint)


def check_refiner_frac(prediction: object, timesteps: object, k: object) -> bool:
    """``prediction``: a ``high_noise_frac`` in (0, 1) with which the refiner runs exactly ``k`` of ``timesteps`` (the
    descending schedule the base and the refiner share, out of T = 1000), by diffusers' rule for ``denoising_end``
    / ``denoising_start``."""
    what = "the refiner's share"
    ts, problem_ts = _as_int_list(timesteps)
    steps, problem_k = _as_number(k, whole=True)
    if problem_ts or problem_k or not ts or not 0 < steps < len(ts):
        raise ValueError(
            f"timesteps must be a list of whole numbers and 0 < k < len(timesteps): got {timesteps!r}, {k!r}"
        )
    if prediction is None:
        return _report(False, what, "not done yet: set your high_noise_frac BEFORE you run the experiment")
    frac, problem = _as_number(prediction)
    if problem:
        return _report(False, what, f"answer with one number, high_noise_frac between 0 and 1: {problem}")
    if not 0 < frac < 1:
        return _report(False, what, f"high_noise_frac is a share of the noise range: between 0 and 1, got {frac:g}")
    base, refiner = _refiner_split_reference(ts, frac)
    if len(refiner) == steps:
        return _report(True, what, "")
    n = len(ts)
    if len(refiner) == n - steps:
        hint = "high_noise_frac is the BASE's share of the noise range: the refiner gets the rest, 1 − frac"
    elif abs(len(refiner) - steps) == 1:
        hint = (
            f"one step off ({len(refiner)} refiner steps): the hand-off is at a timestep, not a step count; "
            "look at where the timesteps of the schedule fall"
        )
    else:
        hint = (
            f"your value leaves the refiner {len(refiner)} steps: it gets the timesteps below "
            "1000 − frac·1000 (the low-noise end of the schedule)"
        )
    return _report(False, what, hint)
