"""Exercise checkers of notebook 16 (image variations and video).

===============================  ======================================================================================
checker                          the student's answer must be
===============================  ======================================================================================
``check_noise_image_embedding``  unCLIP's noise augmentation of a normalised image embedding at a level (Ramesh et
                                 al. 2022)
``check_half_cosine_level``      the first noise level k at which cos(u_k, u) ≈ √ᾱ_k falls below 1/2 for the cosine
                                 ``image_noising_scheduler``
``check_dial_prediction``        a prediction of the variations' agreement at a noise level between two measured ones,
                                 read off the measured dial (then tested by the notebook's experiment)
===============================  ======================================================================================

Each checker calls the student's function (or reads the student's number), compares it with the library's reference
(or an independent formula) and prints one ✅/❌ line with a hint naming the usual mistake; an error raised by the
student's code becomes a ❌, and only a checker's own arguments raise (a non-callable ``fn``: ``TypeError``). Shared
machinery: :mod:`diffusion_lab.course.exercises.checking`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffusion_lab.course.exercises.checking import _as_number, _call_tensor, _check_callable, _report

__all__ = ["check_noise_image_embedding", "check_half_cosine_level", "check_dial_prediction"]


def check_noise_image_embedding(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(emb, mean, std, noise, alphas_cumprod, level)`` must return Stable unCLIP's noise augmentation of image
    embeddings emb (B, D): normalise e = (emb − mean)/std, noise it to ``level`` as the forward process does,
    e' = √ᾱ_level·e + √(1 − ᾱ_level)·noise, and undo the normalisation, e'·std + mean (diffusers'
    ``StableUnCLIPImageNormalizer.scale`` → ``image_noising_scheduler.add_noise`` → ``unscale``)."""
    _check_callable(fn)
    what = "the image-embedding noise augmentation"
    g = torch.Generator().manual_seed(45)
    ab = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float()
    for b, d, level in ((4, 16, 250), (2, 8, 0), (3, 32, 999)):
        emb = torch.randn(b, d, generator=g) * 3 + 1
        mean, std = torch.randn(d, generator=g), torch.rand(d, generator=g) + 0.5
        noise = torch.randn(b, d, generator=g)
        e = (emb - mean) / std
        want = (ab[level].sqrt() * e + (1 - ab[level]).sqrt() * noise) * std + mean
        got, hint = _call_tensor(fn, what, want, "return one embedding per row, shape {want}, not {got}", emb, mean,
                                 std, noise, ab, level)  # fmt: skip
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-4):
            continue
        if torch.allclose(got, ab[level].sqrt() * emb + (1 - ab[level]).sqrt() * noise, atol=1e-4):
            hint = "normalise first ((emb − mean)/std), noise, then undo it (·std + mean): the noise is in unit scale"
        elif torch.allclose(got, ab[level].sqrt() * e + (1 - ab[level]).sqrt() * noise, atol=1e-4):
            hint = "undo the normalisation at the end: e'·std + mean"
        elif torch.allclose(got, (ab[level].sqrt() * e + (1 - ab[level]).sqrt() * noise) * std, atol=1e-4):
            hint = "undo the normalisation completely: e'·std + mean (the mean is missing)"
        elif torch.allclose(got, (ab[level] * e + (1 - ab[level]) * noise) * std + mean, atol=1e-4):
            hint = "the forward process scales by square roots: √ᾱ and √(1 − ᾱ)"
        elif any(
            torch.allclose(got, (ab[j].sqrt() * e + (1 - ab[j]).sqrt() * noise) * std + mean, atol=1e-4)
            for j in (level - 1, level + 1)
            if 0 <= j < len(ab)
        ):
            hint = f"one level off: use ᾱ = alphas_cumprod[level] itself (level {level}), not its neighbour"
        else:
            hint = f"wrong at level {level}: ᾱ_level = alphas_cumprod[level]"
        return _report(False, what, hint)
    return _report(True, what, "")


def _cosine_alphas_cumprod() -> torch.Tensor:
    """ᾱ_k of the cosine schedule ("squaredcos_cap_v2", 1000 levels, β capped at 0.999), in float64."""

    def f(u: torch.Tensor) -> torch.Tensor:
        return torch.cos((u + 0.008) / 1.008 * torch.pi / 2) ** 2

    k = torch.arange(1000, dtype=torch.float64)
    betas = (1 - f((k + 1) / 1000) / f(k / 1000)).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0)


def check_half_cosine_level(k_answer) -> bool:
    """The first noise level k at which the noised normalised embedding keeps less than half its direction:
    cos(u_k, u) ≈ √ᾱ_k < 1/2 (in D dimensions the noise is nearly orthogonal to u and |u|² ≈ |ε|² ≈ D), for the cosine
    ``image_noising_scheduler`` of Stable unCLIP. The hints name the usual slips (ᾱ_k < 1/2 instead of √ᾱ_k < 1/2, an
    index one off)."""
    what = "the level where half the embedding's direction is left"
    ab = _cosine_alphas_cumprod()
    want = int(torch.nonzero(ab.sqrt() < 0.5)[0])
    if k_answer is None:
        return _report(False, what, "set answer to an integer noise level k")
    answer, problem = _as_number(k_answer, whole=True)
    if problem:
        return _report(False, what, f"answer must be one integer noise level k: {problem}")
    if answer == want:
        return _report(True, what, "")
    hint = "u_k = √ᾱ_k u + √(1 − ᾱ_k) ε with |u| ≈ |ε| and u ⟂ ε: cos(u_k, u) ≈ √ᾱ_k; find the first k with √ᾱ_k < 1/2"
    if answer == int(torch.nonzero(ab < 0.5)[0]):
        hint = "the cosine is √ᾱ_k, not ᾱ_k: √ᾱ_k < 1/2 means ᾱ_k < 1/4"
    elif abs(answer - want) == 1:
        hint += "; you are one level off: ᾱ_k = g((k + 1)/T)/g(0) (the index shift of the cosine schedule)"
    elif answer < want:
        hint = (
            f"too low: at k = {answer} √ᾱ_k = {float(ab[min(max(answer, 0), 999)].sqrt()):.2f} is still ≥ 1/2 (§1.1 "
            "printed 0.70 at k = 500); find the first k below 1/2"
        )
    else:
        hint = (
            "too high: √ᾱ_k falls below 1/2 before that (§1.1 printed 0.70 at k = 500 and 0.45 at k = 700); "
            "find the first k"
        )
    return _report(False, what, hint)


def check_dial_prediction(prediction, agreement_by_level, level: int = 664) -> bool:
    """A prediction of the agreement at ``level`` from the measured dial ``agreement_by_level`` ({k: agreement}):
    the agreement falls steadily with k, so a prediction read off the curve lies between the agreements measured at
    the two levels that bracket ``level`` (2 points of slack either side). The measurement itself is the notebook's;
    this checks that the prediction uses the curve."""
    what = f"the predicted agreement at k = {level}"
    if not isinstance(agreement_by_level, dict) or len(agreement_by_level) < 2:
        raise TypeError("agreement_by_level must be a dict {noise level: measured agreement} with at least 2 levels")
    curve = {int(k): float(v) for k, v in agreement_by_level.items()}
    below = [k for k in curve if k <= level]
    above = [k for k in curve if k >= level]
    if not below or not above:
        raise ValueError(f"level {level} must lie between two measured levels, got {sorted(curve)}")
    lo_k, hi_k = max(below), min(above)
    a_lo, a_hi = curve[lo_k], curve[hi_k]  # agreement at the less noisy and at the noisier bracketing level
    if prediction is None:
        return _report(False, what, "set prediction to a number: your predicted agreement, a share between 0 and 1")
    value, problem = _as_number(prediction)
    if problem:
        return _report(False, what, f"prediction must be one number: {problem}")
    if not 0 <= value <= 1:
        return _report(False, what, "the agreement is a share of images: between 0 and 1")
    if value > max(a_lo, a_hi) + 0.02:
        return _report(False, what, f"k = {level} is noisier than k = {lo_k} (agreement {a_lo:.2f}): on the dial the "
                                    "agreement falls as k grows, so predict less")  # fmt: skip
    if value < min(a_lo, a_hi) - 0.02:
        return _report(False, what, f"k = {level} is less noisy than k = {hi_k} (agreement {a_hi:.2f}): predict more")
    print(f"✅ {what}: consistent with the dial, between the measured {a_lo:.2f} (k = {lo_k}) and {a_hi:.2f} "
          f"(k = {hi_k})")  # fmt: skip
    return True
