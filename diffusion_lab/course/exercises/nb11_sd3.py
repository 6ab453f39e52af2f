"""Exercise checkers of notebook 11 (Stable Diffusion 3).

==========================  ===========================================================================
checker                     the student's function must return
==========================  ===========================================================================
``check_sd3_joint_text``    [CLIP-L ⊕ CLIP-G, zero-padded to T5's width; T5] → (B, 77 + S, D₅) (SD3 §4)
``check_resolution_shift``  the shift α for a square side, from SD3's α = 3 at 1024² and α ∝ √(pixels) (§5.3.2)
==========================  ===========================================================================

Each checker calls the student's function on seeded cases, compares it with the library's reference (or an
independent formula) and prints one ✅/❌ line with a hint naming the usual mistake; an error raised by the student's
code becomes a ❌, and only a checker's own arguments raise (a non-callable ``fn``: ``TypeError``). Shared
machinery: :mod:`diffusion_lab.course.exercises.checking`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffusion_lab.course.exercises.checking import _as_number, _call, _call_tensor, _check_callable, _report

__all__ = ["check_sd3_joint_text", "check_resolution_shift"]


def check_sd3_joint_text(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(clip_l, clip_g, t5)`` with shapes (B, 77, Dl), (B, 77, Dg), (B, S, D5) must return SD3's text tokens
    (B, 77 + S, D5): CLIP-L and bigG side by side, zero-padded to T5's width, then T5's tokens after them."""
    _check_callable(fn)
    what = "SD3's joint text tokens"
    g = torch.Generator().manual_seed(33)
    clip_l, clip_g, t5 = (
        torch.randn(2, 77, 6, generator=g),
        torch.randn(2, 77, 10, generator=g),
        torch.randn(2, 9, 24, generator=g),
    )
    clip = torch.nn.functional.pad(torch.cat([clip_l, clip_g], dim=-1), (0, 8))
    want = torch.cat([clip, t5], dim=1)  # (2, 86, 24)
    got, hint = _call_tensor(
        fn, what, want, "the result must be (B, 77 + S, D_T5) = {want}, not {got}", clip_l, clip_g, t5
    )
    if hint:
        return _report(False, what, hint)
    if torch.allclose(got, want):
        return _report(True, what, "")
    if torch.allclose(got, torch.cat([t5, clip], dim=1)):
        hint = "the CLIP tokens come first, then T5's"
    elif torch.allclose(got, torch.cat([torch.nn.functional.pad(torch.cat([clip_g, clip_l], -1), (0, 8)), t5], 1)):
        hint = "CLIP-L's features come before bigG's along the last dimension"
    else:
        hint = (
            "the two CLIP outputs side by side along the features, zero-padded to T5's width, then T5's tokens after "
            "them along the sequence"
        )
    return _report(False, what, hint)


def check_resolution_shift(fn: Callable[[int], float]) -> bool:
    """``fn(side)`` must return the timestep shift α for square side × side images, from SD3's α = 3 at 1024² and the
    rule that α grows with the square root of the pixel count (SD3 §5.3.2): α = 3·√(side² / 1024²) = 3·side / 1024."""
    _check_callable(fn)
    what = "the resolution-dependent shift"
    for side in (512, 768, 2048, 256):
        want = 3 * side / 1024
        out, hint = _call(fn, what, side)
        if hint:
            return _report(False, what, hint)
        got, problem = _as_number(out)
        if problem:
            return _report(False, what, f"return one number, the shift α for side {side}: {problem}")
        if abs(got - want) <= 1e-6 * want:
            continue
        if abs(got - 3 * (side / 1024) ** 2) <= 1e-6 * want:
            hint = "α grows with the square root of the pixel count, i.e. in proportion to the side, not its square"
        elif abs(got - 3 * 1024 / side) <= 1e-6 * want:
            hint = "the other way round: fewer pixels are destroyed by less noise, so a smaller image needs a smaller α"
        elif abs(got - side / 1024) <= 1e-6 * want:
            hint = "start from SD3's own α at 1024², which is not 1"
        else:
            hint = f"at side {side} you returned {got:g}: scale SD3's α at 1024² by √(pixels / 1024²)"
        return _report(False, what, hint)
    return _report(True, what, "")
