"""Exercise checkers of notebook 14 (super-resolution: the latent x4 upscaler).

=================================  ====================================================================================
checker                            the student's answer must be
=================================  ====================================================================================
``check_averaging_gain``           the PSNR gain of the mean of N upscalings over one, 10·log₁₀(2N/(N + 1)), when the
                                   samples and the truth are independent draws around the posterior mean
``check_low_res_snr_crossing``     the first noise level s at which the noised low-res image's SNR ᾱ_s/(1 − ᾱ_s)
                                   falls below 10 (10 dB), for the upscaler's ``low_res_scheduler``
=================================  ====================================================================================

Each checker calls the student's function (or reads the student's number), compares it with an independent formula
and prints one ✅/❌ line with a hint naming the usual mistake; an error raised by the student's code becomes a ❌, and
only a checker's own arguments raise (a non-callable ``fn``: ``TypeError``). Shared machinery:
:mod:`diffusion_lab.course.exercises.checking`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from diffusion_lab.course.exercises.checking import _as_number, _call, _check_callable, _report

__all__ = ["check_averaging_gain", "check_low_res_snr_crossing"]


def _averaging_gain_db(n: int) -> float:
    """G(N) = 10·log10(MSE₁ / MSE_N) = 10·log10(2N / (N + 1)): samples x̂ᵢ = m + dᵢ and the truth x = m + d₀ are
    independent draws around the posterior mean m with per-pixel variance σ², so MSE₁ = E|d₁ − d₀|² = 2σ² and
    MSE_N = E|mean(dᵢ) − d₀|² = σ²/N + σ²."""
    return 10 * math.log10(2 * n / (n + 1))


_GAIN_NS = (1, 2, 4, 8, 100)


def check_averaging_gain(fn: Callable[[int], float]) -> bool:
    """``fn(N)`` must return the PSNR gain in dB of the pixel mean of N upscalings over one upscaling, for an ideal
    upscaler whose samples and the true image are independent draws from the same posterior:
    G(N) = 10·log10(2N / (N + 1)) (0 dB at N = 1, 3.01 dB as N → ∞)."""
    _check_callable(fn)
    what = "the PSNR gain of averaging N upscalings"
    got = {}
    for n in _GAIN_NS:
        out, hint = _call(fn, what, n)
        if hint:
            return _report(False, what, hint)
        value, problem = _as_number(out)
        if problem:
            return _report(False, what, f"return one number (dB) for each N: for N = {n} you {problem}")
        got[n] = value
    want = {n: _averaging_gain_db(n) for n in _GAIN_NS}
    if all(abs(got[n] - want[n]) < 1e-3 for n in _GAIN_NS):
        return _report(True, what, "")

    def like(formula) -> bool:
        return all(abs(got[n] - formula(n)) < 1e-3 for n in _GAIN_NS)

    if like(lambda n: 10 * math.log10(n)):
        hint = (
            "10·log10 N would hold if the truth were the posterior mean m itself; it is one more draw x = m + d₀, "
            "and its own deviation d₀ stays in every error: MSE_N = σ²/N + σ²"
        )
    elif like(lambda n: 20 * math.log10(2 * n / (n + 1))):
        hint = "PSNR is 10·log10 of a ratio of powers (MSE₁ / MSE_N); 20·log10 is for amplitudes"
    elif like(lambda n: 10 * math.log10(n / (n + 1))):
        hint = "one sample's error x̂₁ − x = d₁ − d₀ holds two independent deviations: MSE₁ = 2σ², not σ²"
    elif like(lambda n: 10 * math.log10(2)):
        hint = "3.01 dB is the limit N → ∞; a mean of N samples keeps σ²/N of their deviation: MSE_N = σ²/N + σ²"
    elif abs(got[1]) > 1e-3:
        hint = f"the mean of one upscaling is that upscaling: G(1) must be 0 dB, got {got[1]:.3f}"
    else:
        worst = max(_GAIN_NS, key=lambda n: abs(got[n] - want[n]))
        hint = (
            f"at N = {worst} you return {got[worst]:.3f} dB; write MSE₁ and MSE_N with x̂ᵢ = m + dᵢ, x = m + d₀, "
            "then G(N) = 10·log10(MSE₁ / MSE_N)"
        )
    return _report(False, what, hint)


def _low_res_alphas_cumprod() -> torch.Tensor:
    """ᾱ_s of the upscaler's ``low_res_scheduler`` (scaled-linear betas 1e-4 … 0.02, 1000 levels), in float64.

    Hard-coded rather than read from the student's pipeline, so the checker is independent of it. It is the
    schedule of stabilityai/stable-diffusion-x4-upscaler: diffusers' single-file loader builds that model's
    ``low_res_scheduler`` as a DDPMScheduler with ``beta_schedule="scaled_linear"``, ``beta_start=0.0001``,
    ``beta_end=0.02``, 1000 steps (the original training code's ``make_beta_schedule("linear")`` is the same
    ``linspace(√1e-4, √0.02)²``), and the course's stand-in saves the same config
    (:data:`diffusion_lab.pipelines.upscale.LOW_RES_SCHEDULE`, ``data/pretrained/sd_x4_upscaler_mnist``). The hub's
    own ``low_res_scheduler/scheduler_config.json`` could not be read offline.
    """
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
        if isinstance(s_answer, str):
            problem += " (a string: write the number itself, or int(...) of it)"
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
