"""Exercise checkers of notebook 13 (model surgery and scaling out).

=============================  ==============================================================
checker                        the student's function must return
=============================  ==============================================================
``check_magnitude_prune``      the ⌊p·N⌋ smallest |w| set to zero (Han et al. 2015), on a copy
``check_bitmask_size_ratio``   the size of a pruned file (bitmask + survivors) over the dense
                               fp32 file: 1 − p + 1/32
``check_int8_error_bound``     the largest int8 rounding error of each output channel, with one
                               scale per channel or one for the whole tensor: s/2, s = max|w|/127
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

__all__ = ["check_magnitude_prune", "check_bitmask_size_ratio", "check_int8_error_bound"]


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
            if k == 0 and "raised" in hint:
                hint += "; at p = 0, k = 0 and there is no k-th smallest |w|: return a copy of w unchanged"
            return _report(False, what, hint)
        if torch.equal(got, want) and p > 0:
            given = w.clone()  # _call_tensor passed a copy; this call watches the tensor the function is given
            try:
                fn(given, p)
            except Exception:  # it ran once above without raising; a second call's failure is not this check's
                pass
            if not torch.equal(given, w):
                return _report(
                    False,
                    what,
                    "return a copy: your function changed the tensor w it was given (use "
                    "w.clone() or torch.where, not an in-place assignment into w)",
                )
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


def check_int8_error_bound(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(channel_max, per_channel)`` must return, for a weight tensor whose output channel c has largest magnitude
    ``channel_max[c]`` = max_j |w_cj| (shape (C,)), the largest possible rounding error |w − ŵ| in each channel (C,)
    under symmetric int8 (q ∈ {−127, …, 127}, ŵ = s·q): s_c/2 with s_c = channel_max[c]/127 when
    ``per_channel`` is True, and the same s/2 with s = max_c channel_max[c]/127 for every channel when it is False."""
    _check_callable(fn)
    what = "the int8 rounding-error bound"
    g = torch.Generator().manual_seed(13)
    cases = [torch.tensor([0.1] * 7 + [5.0]), torch.rand(16, generator=g) + 0.05]
    for channel_max in cases:
        for per_channel in (True, False):
            scale = channel_max / 127 if per_channel else (channel_max.max() / 127).expand_as(channel_max)
            want = scale / 2
            got, hint = _call_tensor(
                fn,
                what,
                want,
                "return one bound per output channel, shape {want}, not {got}",
                channel_max.clone(),
                per_channel,
            )
            if hint:
                return _report(False, what, hint)
            if torch.allclose(got, want, rtol=1e-5, atol=0):
                continue
            other = (channel_max.max() / 127).expand_as(channel_max) / 2 if per_channel else channel_max / 254
            if torch.allclose(got, 2 * want, rtol=1e-5, atol=0):
                hint = "rounding to the nearest code moves a weight by at most HALF a step: s/2, not s"
            elif torch.allclose(got, other, rtol=1e-5, atol=0):
                hint = (
                    "per channel, channel c has its own scale s_c = max_j |w_cj| / 127"
                    if per_channel
                    else "one scale for the whole tensor: s = (the largest |w| of ALL channels) / 127, the same step "
                    "for every channel, so a small channel gets the outlier's step"
                )
            elif any(torch.allclose(got, want * 127 / d, rtol=1e-5, atol=0) for d in (128, 255, 256)):
                hint = "the codes run from −127 to 127, so the step is s = max|w| / 127 and the error at most s/2"
            else:
                mode = "per channel" if per_channel else "per tensor"
                hint = f"wrong {mode}: the step is s = max|w| / 127 (over the channel, or the whole tensor) and rounding moves a weight by at most s/2"
            return _report(False, what, hint)
    return _report(True, what, "")
