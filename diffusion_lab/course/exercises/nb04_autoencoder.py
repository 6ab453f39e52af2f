"""Exercise checkers of notebook 04 (latent autoencoder).

========================  ============================================================================
checker                   the student's function must return
========================  ============================================================================
``check_reparameterize``  z = μ + σ·ε, σ = exp(½·log σ²) (Kingma & Welling 2014, §2.4)
``check_gaussian_kl``     KL(N(μ, σ²) ‖ N(0, 1)) = ½Σ(μ² + σ² − 1 − log σ²) per sample (ibid., App. B)
``check_scaling_factor``  s = 1/std(z), so that s·z has unit variance
========================  ============================================================================

Each checker calls the student's function on seeded cases, compares it with the library's reference (or an
independent formula) and prints one ✅/❌ line with a hint naming the usual mistake; an error raised by the student's
code becomes a ❌, and only a checker's own arguments raise (a non-callable ``fn``: ``TypeError``). Shared
machinery: :mod:`diffusion_lab.course.exercises.checking`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffusion_lab.course.exercises.checking import (
    _as_number,
    _as_tensor,
    _call,
    _call_tensor,
    _check_callable,
    _finite_hint,
    _report,
)

__all__ = ["check_reparameterize", "check_gaussian_kl", "check_scaling_factor"]


def check_reparameterize(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(mean, logvar, eps)`` must return z = μ + σ·ε with σ = exp(½·log σ²) (the reparameterisation trick)."""
    _check_callable(fn)
    what = "reparameterised sample"
    g = torch.Generator().manual_seed(11)
    mean, logvar, eps = (torch.randn(3, 4, 7, 7, generator=g) for _ in range(3))
    want = mean + torch.exp(0.5 * logvar) * eps
    got, hint = _call_tensor(fn, what, want, "return one z per input, shape {want}, not {got}", mean, logvar, eps)
    if hint:
        return _report(False, what, hint)
    if torch.allclose(got, mean + torch.exp(logvar) * eps, atol=1e-5):
        return _report(False, what, "exp(logvar) is the variance σ²; the sample needs σ = exp(0.5·logvar)")
    return _report(torch.allclose(got.to(want.dtype), want, atol=1e-5), what, "z = mean + exp(0.5·logvar)·eps")


def check_gaussian_kl(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(mean, logvar)`` (B, L, h, w) must return KL(N(μ, σ²) ‖ N(0, 1)) summed over all but the batch: (B,)."""
    _check_callable(fn)
    what = "KL to the standard normal"
    g = torch.Generator().manual_seed(12)
    mean, logvar = torch.randn(5, 4, 7, 7, generator=g), torch.randn(5, 4, 7, 7, generator=g)
    want = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1)
    got, hint = _call(fn, what, mean, logvar)
    if hint:
        return _report(False, what, hint)
    got, problem = _as_tensor(got, want.dtype)
    if problem:
        return _report(False, what, f"return one tensor, one KL per sample, {problem}")
    if got.numel() == 1 and torch.allclose(got.reshape(()).to(want.dtype), want.sum(), rtol=1e-4):
        return _report(False, what, "return one KL per sample (shape (B,)): sum over dims 1.., not over the batch")
    if got.shape != want.shape:
        return _report(False, what, f"return shape {tuple(want.shape)} (one KL per sample), not {tuple(got.shape)}")
    formula = "KL = ½·Σ(μ² + σ² − 1 − log σ²) with σ² = exp(logvar), summed over channels and positions"
    if _finite_hint(got, want):  # e.g. logvar read as the variance: log of a negative number
        return _report(False, what, f"{_finite_hint(got, want)}; {formula}")
    return _report(torch.allclose(got, want, rtol=1e-4, atol=1e-4), what, formula)


def check_scaling_factor(fn: Callable[[torch.Tensor], float]) -> bool:
    """``fn(latents)`` must return s = 1 / std(latents) over all numbers, so that s·latents has unit variance."""
    _check_callable(fn)
    what = "scaling factor"
    g = torch.Generator().manual_seed(13)
    for scale in (0.2, 5.0):
        z = torch.randn(64, 4, 7, 7, generator=g) * scale + 0.3
        want = 1.0 / z.std().item()
        got, hint = _call(fn, what, z)
        if hint:
            return _report(False, what, hint)
        got, problem = _as_number(got)
        if problem:
            return _report(False, what, f"return one number s (a float), e.g. 1 / latents.std().item(): {problem}")
        if abs(got - z.std().item()) < 1e-3 * z.std().item():
            return _report(False, what, "that is the standard deviation itself; the factor is its inverse, 1 / std")
        if abs(got - want) > 1e-3 * want:
            return _report(False, what, "s = 1 / std over all numbers at once (batch, channels, positions)")
    return _report(True, what, "")
