"""Exercise checkers of notebook 12 (fine-tuning: textual inversion, LoRA, DreamBooth).

=================================  =======================================================
checker                            the student's function must return
=================================  =======================================================
``check_lora_forward``             h = W·x + (α/r)·B·A·x (Hu et al. 2022, Eq. 3)
``check_prior_preservation_loss``  ‖ε − ε̂‖² + λ·‖ε_pr − ε̂_pr‖² (Ruiz et al. 2023, Eq. 2)
``check_lora_parameter_count``     Σ r·(d_in + d_out) over the adapted layers' (d_out, d_in) shapes
``check_lora_target_choice``       where a LoRA must sit to change one word only: the cross-attention
=================================  =======================================================

Each checker calls the student's function on seeded cases, compares it with the library's reference (or an
independent formula) and prints one ✅/❌ line with a hint naming the usual mistake; an error raised by the student's
code becomes a ❌, and only a checker's own arguments raise (a non-callable ``fn``: ``TypeError``). Shared
machinery: :mod:`diffusion_lab.course.exercises.checking`. The magnitude-pruning checker of notebook 13 is in
:mod:`diffusion_lab.course.exercises.nb13_surgery`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffusion_lab.course.exercises.checking import _as_number, _call, _call_tensor, _check_callable, _report

__all__ = [
    "check_lora_forward",
    "check_prior_preservation_loss",
    "check_lora_parameter_count",
    "check_lora_target_choice",
]


def check_lora_forward(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(x, W, A, B, alpha)`` with x (N, d_in), W (d_out, d_in), A (r, d_in), B (d_out, r) must return a LoRA
    layer's output h = x Wᵀ + (α/r)·x Aᵀ Bᵀ (N, d_out): the frozen layer plus the scaled low-rank update (Hu et al.
    2021, Eq. 3 and §4.1)."""
    _check_callable(fn)
    what = "the LoRA layer"
    g = torch.Generator().manual_seed(41)
    for n, d_in, d_out, r, alpha in ((5, 8, 6, 2, 4.0), (3, 16, 16, 4, 4.0), (2, 6, 9, 3, 1.0)):
        x, W = torch.randn(n, d_in, generator=g), torch.randn(d_out, d_in, generator=g)
        A, B = torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g)
        want = x @ W.T + (alpha / r) * x @ A.T @ B.T
        got, hint = _call_tensor(
            fn, what, want, "return one output row per input, shape {want}, not {got}", x, W, A, B, alpha
        )
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-4):
            continue
        if torch.allclose(got, x @ W.T + x @ A.T @ B.T, atol=1e-4) and alpha != r:
            hint = "the update is scaled by α/r (alpha divided by the rank r = A.shape[0])"
        elif torch.allclose(got, x @ W.T + alpha * x @ A.T @ B.T, atol=1e-4):
            hint = "scale the update by α/r, not α: r = A.shape[0]"
        elif torch.allclose(got, (alpha / r) * x @ A.T @ B.T, atol=1e-4):
            hint = "the frozen layer's own output x Wᵀ is still there: h = x Wᵀ + (α/r)·x Aᵀ Bᵀ"
        else:
            hint = f"wrong for r = {r}, α = {alpha}: x Aᵀ is (N, r), then Bᵀ maps it to (N, d_out)"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_prior_preservation_loss(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(pred, target, pred_prior, target_prior, prior_weight)`` must return DreamBooth's loss (Ruiz et al. 2023,
    Eq. 2): mean((pred − target)²) + λ·mean((pred_prior − target_prior)²), a scalar."""
    _check_callable(fn)
    what = "the prior-preservation loss"
    g = torch.Generator().manual_seed(42)
    pred, target, pred_prior, target_prior = torch.randn(4, 3, 4, 7, 7, generator=g).unbind(0)
    for lam in (1.0, 0.5, 0.0):
        want = (pred - target).pow(2).mean() + lam * (pred_prior - target_prior).pow(2).mean()
        got, hint = _call_tensor(
            fn,
            what,
            want,
            "return one number (a 0-d tensor), not shape {got}",
            pred,
            target,
            pred_prior,
            target_prior,
            lam,
        )
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-5):
            continue
        instance = (pred - target).pow(2).mean()
        if torch.allclose(got, instance + (pred_prior - target_prior).pow(2).mean(), atol=1e-5):
            hint = "multiply the prior term by prior_weight λ"
        elif torch.allclose(got, instance, atol=1e-5):
            hint = "add the prior term: λ·mean((pred_prior − target_prior)²)"
        elif torch.allclose(
            got, (pred - target).abs().mean() + lam * (pred_prior - target_prior).abs().mean(), atol=1e-5
        ):
            hint = "both terms are mean *squared* errors"
        else:
            hint = f"wrong for λ = {lam}: mean((pred − target)²) + λ·mean((pred_prior − target_prior)²)"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_lora_parameter_count(fn: Callable[..., object]) -> bool:
    """``fn(shapes, r)`` with ``shapes`` a list of (d_out, d_in) weight shapes must return the number of trained
    numbers of a rank-r LoRA on those layers: Σ r·(d_in + d_out) (A is r × d_in, B is d_out × r)."""
    _check_callable(fn)
    what = "the LoRA parameter count"
    for shapes, r in (([(64, 64)] * 4, 4), ([(1280, 1280)], 4), ([(320, 768), (640, 2048)], 8), ([(10, 3)], 2)):
        want = sum(r * (d_in + d_out) for d_out, d_in in shapes)
        out, hint = _call(fn, what, list(shapes), r)
        if hint:
            return _report(False, what, hint)
        got, problem = _as_number(out, whole=True)
        if problem:
            return _report(False, what, f"return one whole number of parameters: {problem}")
        if got == want:
            continue
        if got == sum(d_in * d_out for d_out, d_in in shapes):
            hint = "that is the full layers' size d_in·d_out: LoRA trains only A (r × d_in) and B (d_out × r)"
        elif got == sum(r * d_in * d_out for d_out, d_in in shapes):
            hint = "A is r × d_in and B is d_out × r: add their sizes, r·d_in + d_out·r, do not multiply d_in·d_out"
        elif got == r * (shapes[0][0] + shapes[0][1]) and len(shapes) > 1:
            hint = "sum over every layer in shapes, not only the first"
        elif got in (sum(r * d_in for _, d_in in shapes), sum(r * d_out for d_out, _ in shapes)):
            hint = "count both factors: A (r × d_in) and B (d_out × r)"
        else:
            hint = f"wrong for shapes {shapes} at r = {r}: each layer trains r·(d_in + d_out) numbers"
        return _report(False, what, hint)
    return _report(True, what, "")


LORA_TARGETS = {1: "cross-attention", 2: "all attention", 3: "whole U-Net"}


def check_lora_target_choice(answer: object) -> bool:
    """``answer``: the number in :data:`LORA_TARGETS` of where to put a LoRA that must change how one word is drawn
    ("a three" wider) and leave the other prompts as the base model draws them. Right: 1, the cross-attention, the
    only layers that read the prompt's tokens (notebook 12, §3: "a seven" barely moved)."""
    what = "where the LoRA goes"
    if answer is None:
        return _report(False, what, "not done yet: set my_choice to 1, 2 or 3")
    choice, problem = _as_number(answer, whole=True)
    if problem or choice not in LORA_TARGETS:
        return _report(False, what, f"answer with one of the numbers 1, 2, 3: {problem or f'got {choice}'}")
    if choice == 1:
        return _report(True, what, "")
    hints = {
        2: "self-attention mixes image positions and sees no word: an adapter there changes every prompt's "
        "pictures; which layers read the prompt's tokens?",
        3: "the convolutions and self-attention see no word: a change there reaches every prompt (compare §3's "
        "'a seven', which the cross-attention adapter left almost unchanged)",
    }
    return _report(False, what, hints[choice])
