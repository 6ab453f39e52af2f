"""Exercise checkers of notebook 11 (Stable Diffusion 3).

==========================  ===========================================================================
checker                     the student's function must return
==========================  ===========================================================================
``check_sd3_joint_text``    [CLIP-L ⊕ CLIP-G, zero-padded to T5's width; T5] → (B, 77 + S, D₅) (SD3 §4)
``check_resolution_shift``  the shift α for a square side, from SD3's α = 3 at 1024² and α ∝ √(pixels) (§5.3.2)
``check_sd3_embeds_shape``  a predicted shape of ``prompt_embeds`` (B, CLIP tokens + T5 tokens, T5 width), against
                            the shape the pipeline's encoders return
==========================  ===========================================================================

Each checker calls the student's function on seeded cases, compares it with the library's reference (or an
independent formula) and prints one ✅/❌ line with a hint naming the usual mistake; an error raised by the student's
code becomes a ❌, and only a checker's own arguments raise (a non-callable ``fn``: ``TypeError``). Shared
machinery: :mod:`diffusion_lab.course.exercises.checking`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffusion_lab.course.exercises.checking import _as_number, _call, _call_tensor, _check_callable, _kind, _report

__all__ = ["check_sd3_joint_text", "check_resolution_shift", "check_sd3_embeds_shape"]


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
    elif torch.allclose(got, torch.cat([torch.nn.functional.pad(torch.cat([clip_l, clip_g], -1), (8, 0)), t5], 1)):
        hint = "pad on the right: CLIP's features keep positions 0 … D_L + D_G − 1, the zeros go after them"
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


def check_sd3_embeds_shape(
    prediction: object, measured_shape: object, clip_tokens: object, t5_tokens: object, clip_width: object
) -> bool:
    """``prediction``: the shape (B, tokens, features) of the ``prompt_embeds`` that SD3's three encoders give for a
    batch, predicted before running them; ``measured_shape`` is the shape they returned. ``clip_tokens`` (CLIP's
    window), ``t5_tokens`` (``max_sequence_length``) and ``clip_width`` (CLIP-L's + CLIP-G's features) name the
    usual mistakes in the hints."""
    what = "the shape of prompt_embeds"
    want, problems = [], []
    for name, value in (("measured_shape", measured_shape), ("clip_tokens", clip_tokens), ("t5_tokens", t5_tokens),
                        ("clip_width", clip_width)):  # fmt: skip
        items = value if name == "measured_shape" and isinstance(value, tuple | list | torch.Size) else [value]
        numbers = [_as_number(v, whole=True) for v in items]
        if any(p for _, p in numbers) or any(n < 1 for n, _ in numbers):
            problems.append(name)
        want.append([n for n, _ in numbers])
    if problems or len(want[0]) != 3:
        raise ValueError(
            f"measured_shape must be 3 whole numbers >= 1 and clip_tokens, t5_tokens, clip_width whole numbers >= 1: "
            f"got {measured_shape!r}, {clip_tokens!r}, {t5_tokens!r}, {clip_width!r}"
        )
    (b, tokens, width), (n_clip,), (n_t5,), (d_clip,) = want
    if prediction is None:
        return _report(False, what, "not done yet: write down your prediction BEFORE you run the encoders")
    if not (isinstance(prediction, tuple | list | torch.Size) and len(prediction) == 3):
        return _report(False, what, f"answer with three whole numbers (B, tokens, features): got {_kind(prediction)}")
    got = []
    for v in prediction:
        n, problem = _as_number(v, whole=True)
        if problem:
            return _report(False, what, f"answer with three whole numbers (B, tokens, features): {problem}")
        got.append(n)
    pb, pt, pw = got
    if (pb, pt, pw) == (b, tokens, width):
        return _report(True, what, "")
    if pb != b:
        hint = f"the first number is the batch: one row of tokens per prompt ({b} prompts here)"
    elif pt == n_t5 or pt == n_clip:
        hint = "the CLIP tokens and T5's tokens are joined along the sequence: both windows count"
    elif pt != tokens:
        hint = "the sequence holds CLIP's window, then T5's max_sequence_length tokens (the call's, not the default)"
    elif pw == d_clip:
        hint = "the CLIP features are zero-padded to T5's width, so the features are T5's width"
    else:
        hint = "the features: CLIP-L ⊕ CLIP-G zero-padded to T5's width, the width the transformer reads"
    return _report(False, what, hint)
