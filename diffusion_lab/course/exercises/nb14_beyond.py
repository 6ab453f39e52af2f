"""Exercise checkers of notebook 13 (beyond text-to-image).

===============================  ===========================================================================================
checker                          the student's function must return
===============================  ===========================================================================================
``check_psnr``                   10·log₁₀(MAX²/MSE) per image pair, MAX = 2 in [−1, 1]
``check_control_keep``           1 when i/n ≥ start and (i + 1)/n ≤ end, else 0 (diffusers' controlnet_keep)
``check_noise_image_embedding``  unCLIP's noise augmentation of a normalised image embedding at a level (Ramesh et al. 2022)
===============================  ===========================================================================================

Each checker calls the student's function on seeded cases, compares it with the library's reference (or an
independent formula) and prints one ✅/❌ line with a hint naming the usual mistake; an error raised by the student's
code becomes a ❌, and only a checker's own arguments raise (a non-callable ``fn``: ``TypeError``). Shared
machinery: :mod:`diffusion_lab.course.exercises.checking`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffusion_lab.course.exercises.checking import _as_number, _call, _call_tensor, _check_callable, _report

__all__ = ["check_psnr", "check_control_keep", "check_noise_image_embedding"]


def check_psnr(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(x, y)`` with x, y (B, C, H, W) in [−1, 1] must return the peak signal-to-noise ratio of each image pair in
    decibels, (B,): PSNR = 10·log10(MAX² / MSE) with MAX = 2 (the width of [−1, 1]) and MSE the mean of (x − y)² over
    one image's pixels."""
    _check_callable(fn)
    what = "PSNR"
    g = torch.Generator().manual_seed(44)
    y = torch.rand(5, 1, 28, 28, generator=g) * 2 - 1
    x = (y + torch.randn(5, 1, 1, 1, generator=g).abs() * 0.2 * torch.randn(y.shape, generator=g)).clamp(-1, 1)
    mse = (x - y).pow(2).mean(dim=(1, 2, 3))  # (B,)
    want = 10 * torch.log10(4.0 / mse)
    got, hint = _call_tensor(fn, what, want, "return one PSNR per image, shape {want}, not {got}", x, y)
    if hint:
        return _report(False, what, hint)
    if torch.allclose(got, want, atol=1e-3):
        return _report(True, what, "")
    if torch.allclose(got, want - 10 * torch.log10(torch.tensor(4.0)), atol=1e-3):
        hint = "images in [−1, 1] span MAX = 2, so MAX² = 4 (MAX = 1 is for images in [0, 1])"
    elif torch.allclose(got, 10 * torch.log10(2.0 / mse), atol=1e-3):
        hint = "square the peak: 10·log10(MAX² / MSE) = 20·log10(MAX) − 10·log10(MSE)"
    elif torch.allclose(got, 20 * torch.log10(4.0 / mse), atol=1e-3):
        hint = "PSNR is 10·log10 of a ratio of *powers* (MAX² / MSE); 20·log10 is for amplitudes"
    else:
        hint = "10·log10(MAX² / MSE) with MSE = ((x − y)²).mean over (C, H, W) of each image"
    return _report(False, what, hint)


def _control_keep(i: int, n: int, start: float, end: float) -> float:
    return 1.0 - float(i / n < start or (i + 1) / n > end)


def check_control_keep(fn: Callable[[int, int, float, float], float]) -> bool:
    """``fn(i, n, start, end)`` must return 1.0 when step i (0-based, of n) lies inside the window
    [start, end] of the sampling run and 0.0 otherwise — diffusers' rule for ``control_guidance_start/end``: the
    control is off when i/n < start or (i + 1)/n > end. The ControlNet's residuals are multiplied by it."""
    _check_callable(fn)
    what = "the control-guidance window"
    for n, start, end in ((10, 0.0, 1.0), (10, 0.0, 0.5), (8, 0.25, 1.0), (20, 0.1, 0.75), (7, 0.3, 0.6)):
        got = []
        for i in range(n):
            out, hint = _call(fn, what, i, n, start, end)
            if hint:
                return _report(False, what, hint)
            number, problem = _as_number(out)
            if problem:
                return _report(False, what, f"return a number (1.0 or 0.0), {problem}")
            got.append(number)
        want = [_control_keep(i, n, start, end) for i in range(n)]
        if got == want:
            continue
        if got == [1.0 - float(i / n < start or i / n > end) for i in range(n)]:
            hint = "step i of n covers [i/n, (i + 1)/n]: it must end by `end`, so the test is (i + 1)/n > end"
        else:
            i = next(k for k in range(n) if got[k] != want[k])
            hint = f"step {i} of {n} with the window [{start}, {end}]: expected {want[i]}, got {got[i]}"
        return _report(False, what, hint)
    return _report(True, what, "")


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
        elif torch.allclose(got, (ab[level] * e + (1 - ab[level]) * noise) * std + mean, atol=1e-4):
            hint = "the forward process scales by square roots: √ᾱ and √(1 − ᾱ)"
        else:
            hint = f"wrong at level {level}: ᾱ_level = alphas_cumprod[level]"
        return _report(False, what, hint)
    return _report(True, what, "")
