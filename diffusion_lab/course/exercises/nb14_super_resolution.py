"""Exercise checkers of notebook 14 (super-resolution: the latent x4 upscaler).

=================================  ====================================================================================
checker                            the student's answer must be
=================================  ====================================================================================
``check_psnr``                     10·log₁₀(MAX²/MSE) per image pair, MAX = 2 in [−1, 1]
``check_low_res_snr_crossing``     the first noise level s at which the noised low-res image's SNR ᾱ_s/(1 − ᾱ_s)
                                   falls below 10 (10 dB), for the upscaler's ``low_res_scheduler``
=================================  ====================================================================================

Each checker calls the student's function (or reads the student's number), compares it with an independent formula
and prints one ✅/❌ line with a hint naming the usual mistake; an error raised by the student's code becomes a ❌, and
only a checker's own arguments raise (a non-callable ``fn``: ``TypeError``). Shared machinery:
:mod:`diffusion_lab.course.exercises.checking`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffusion_lab.course.exercises.checking import _as_number, _call_tensor, _check_callable, _report

__all__ = ["check_psnr", "check_low_res_snr_crossing"]


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


def _low_res_alphas_cumprod() -> torch.Tensor:
    """ᾱ_s of the upscaler's ``low_res_scheduler`` (scaled-linear betas 1e-4 … 0.02, 1000 levels), in float64."""
    betas = torch.linspace(1e-4**0.5, 0.02**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def check_low_res_snr_crossing(s_answer) -> bool:
    """The first noise level s at which the noised condition c̃ = √ᾱ_s·c + √(1 − ᾱ_s)·ε has a signal-to-noise ratio
    SNR(s) = ᾱ_s/(1 − ᾱ_s) below 10 (10 dB), for the x4 upscaler's ``low_res_scheduler``. The notebook asks for the
    derivation of SNR(s) and the crossing; the hints name the usual slips (amplitude instead of power, the 0 dB
    crossing, an index one off)."""
    what = "the 10 dB level of the upscaler's noise augmentation"
    snr = (lambda a: a / (1 - a))(_low_res_alphas_cumprod())
    want = int(torch.nonzero(snr < 10)[0])
    if s_answer is None:
        return _report(False, what, "set answer to an integer noise level s")
    answer, problem = _as_number(s_answer, whole=True)
    if problem:
        return _report(False, what, f"answer must be one integer noise level s: {problem}")
    if answer == want:
        return _report(True, what, "")
    hint = "SNR(s) = ᾱ_s/(1 − ᾱ_s) is a ratio of powers; find the first s with SNR(s) < 10"
    if answer == int(torch.nonzero(snr < 100)[0]):
        hint = "√ᾱ_s/√(1 − ᾱ_s) is a ratio of amplitudes; the SNR is a ratio of powers, ᾱ_s/(1 − ᾱ_s)"
    elif answer == int(torch.nonzero(snr < 1)[0]):
        hint = "that is where SNR(s) falls below 1 (0 dB); 10 dB is SNR(s) = 10"
    elif abs(answer - want) == 1:
        hint += "; you are one level off: the first s whose SNR is already below 10"
    return _report(False, what, hint)
