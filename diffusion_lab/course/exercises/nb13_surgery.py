"""Exercise checkers of notebook 13 (model surgery and scaling out).

=============================  ==============================================================
checker                        the student's function must return
=============================  ==============================================================
``check_magnitude_prune``      the ⌊p·N⌋ smallest |w| set to zero (Han et al. 2015)
``check_bitmask_size_ratio``   the size of a pruned file (bitmask + survivors) over the dense
                               fp32 file: 1 − p + 1/32
=============================  ==============================================================

Each checker calls the student's function on seeded cases, compares it with an independent formula and prints one
✅/❌ line with a hint naming the usual mistake; an error raised by the student's code becomes a ❌, and only a
checker's own arguments raise (a non-callable ``fn``: ``TypeError``). Shared machinery:
:mod:`diffusion_lab.course.exercises.checking`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffusion_lab.course.exercises.checking import _as_number, _call, _call_tensor, _check_callable, _report

__all__ = ["check_magnitude_prune", "check_bitmask_size_ratio"]


def check_magnitude_prune(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(w, sparsity)`` must return a copy of the tensor w with its k = ⌊p·N⌋ smallest-magnitude entries set to
    zero (N = w.numel(), p = sparsity), the others unchanged (Han et al. 2015)."""
    _check_callable(fn)
    what = "magnitude pruning"
    g = torch.Generator().manual_seed(43)
    w = torch.randn(8, 6, 3, 3, generator=g)  # distinct magnitudes: no ties at the threshold
    for p in (0.5, 0.9, 0.25, 0.0):
        k = int(p * w.numel())
        keep = torch.ones(w.numel(), dtype=torch.bool)
        keep[w.abs().flatten().argsort()[:k]] = False
        want = torch.where(keep.view_as(w), w, torch.zeros_like(w))
        got, hint = _call_tensor(fn, what, want, "return a tensor shaped like w {want}, not {got}", w, p)
        if hint:
            return _report(False, what, hint)
        if torch.equal(got, want):
            continue
        zeros = int((got == 0).sum())
        if zeros != k:
            hint = f"for sparsity {p} exactly ⌊p·N⌋ = {k} of the {w.numel()} weights must be zero, got {zeros}"
        else:
            hint = "rank the weights by |w| (not by w: −3 is a large weight) and zero the k smallest"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_bitmask_size_ratio(fn: Callable[[float], object]) -> bool:
    """``fn(p)`` must return the size of a pruned tensor's exact file over its dense fp32 file at sparsity p: a mask
    of one bit per weight plus 4 bytes per surviving weight, (N/8 + 4(1 − p)N) / 4N = 1 − p + 1/32."""
    _check_callable(fn)
    what = "the pruned file's size ratio"
    for p in (0.5, 0.0, 0.9, 0.25):
        want = 1 - p + 1 / 32
        out, hint = _call(fn, what, p)
        if hint:
            return _report(False, what, hint)
        got, problem = _as_number(out)
        if problem:
            return _report(False, what, f"return one number, the ratio pruned / dense: {problem}")
        if abs(got - want) < 1e-6:
            continue
        if abs(got - (1 - p)) < 1e-6:
            hint = "the mask is stored too: one bit per weight, N/8 bytes against the dense file's 4N"
        elif abs(got - (1 - p + 1 / 4)) < 1e-6:
            hint = "the mask takes one *bit* per weight, not one byte: N/8 bytes, 1/32 of the dense 4N"
        elif abs(got - (p + 1 / 32)) < 1e-6 or abs(got - p) < 1e-6:
            hint = "p is the share set to zero: the survivors are (1 − p)·N"
        elif abs(got - (1 - p + 1 / 8)) < 1e-6:
            hint = "divide by the dense file's 4 bytes per weight: the mask is N/8 bytes of 4N, 1/32"
        else:
            hint = f"wrong at p = {p}: count N/8 mask bytes plus 4 bytes per survivor, over 4N"
        return _report(False, what, hint)
    return _report(True, what, "")
