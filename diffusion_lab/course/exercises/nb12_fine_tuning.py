"""Exercise checkers of notebook 12 (fine-tuning and model surgery).

=================================  =======================================================
checker                            the student's function must return
=================================  =======================================================
``check_lora_forward``             h = W·x + (α/r)·B·A·x (Hu et al. 2022, Eq. 3)
``check_prior_preservation_loss``  ‖ε − ε̂‖² + λ·‖ε_pr − ε̂_pr‖² (Ruiz et al. 2023, Eq. 2)
``check_magnitude_prune``          the ⌊p·N⌋ smallest |w| set to zero (Han et al. 2015)
=================================  =======================================================

Each checker calls the student's function on seeded cases, compares it with the library's reference (or an
independent formula) and prints one ✅/❌ line with a hint naming the usual mistake; an error raised by the student's
code becomes a ❌, and only a checker's own arguments raise (a non-callable ``fn``: ``TypeError``). Shared
machinery: :mod:`diffusion_lab.course.exercises.checking`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffusion_lab.course.exercises.checking import _call_tensor, _check_callable, _report

__all__ = ["check_lora_forward", "check_prior_preservation_loss", "check_magnitude_prune"]


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
