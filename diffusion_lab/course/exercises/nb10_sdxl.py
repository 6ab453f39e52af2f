"""Exercise checkers of notebook 10 (Stable Diffusion XL).

=======================  ================================================================================
checker                  the student's function must return
=======================  ================================================================================
``check_sdxl_time_ids``  (orig h, orig w, crop top, crop left, target h, target w) (SDXL §2.2)
``check_refiner_split``  the base's and the refiner's timesteps for high_noise_frac (ensemble of experts)
=======================  ================================================================================

Each checker calls the student's function on seeded cases, compares it with the library's reference (or an
independent formula) and prints one ✅/❌ line with a hint naming the usual mistake; an error raised by the student's
code becomes a ❌, and only a checker's own arguments raise (a non-callable ``fn``: ``TypeError``). Shared
machinery: :mod:`diffusion_lab.course.exercises.checking`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from diffusion_lab.course.exercises.checking import _as_int_list, _call, _call_tensor, _check_callable, _kind, _report

__all__ = ["check_sdxl_time_ids", "check_refiner_split"]


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
