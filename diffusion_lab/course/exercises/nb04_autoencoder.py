"""Exercise checkers of notebook 04 (latent autoencoder).

========================  ============================================================================
checker                   the student's function must return
========================  ============================================================================
``check_reparameterize``  z = μ + σ·ε, σ = exp(½·log σ²) (Kingma & Welling 2014, §2.4)
``check_gaussian_kl``     KL(N(μ, σ²) ‖ N(0, 1)) = ½Σ(μ² + σ² − 1 − log σ²) per sample (ibid., App. B)
``check_scaling_factor``  s = 1/std(z), so that s·z has unit variance
``check_decode_prior``    decoded samples of the prior: vae.decode(z) with z ~ N(0, I) of the latent shape
``check_beta_zero``       predicted directions (β = 0 against the trained β) compared with the measured ones
========================  ============================================================================

Each checker calls the student's function on seeded cases, compares it with the library's reference (or an
independent formula) and prints one ✅/❌ line with a hint naming the usual mistake; an error raised by the student's
code becomes a ❌, and only a checker's own arguments raise (a non-callable ``fn``: ``TypeError``). Shared
machinery: :mod:`diffusion_lab.course.exercises.checking`.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import torch

from diffusion_lab.course.exercises.checking import (
    _as_number,
    _as_tensor,
    _call,
    _call_tensor,
    _check_callable,
    _finite_hint,
    _kind,
    _report,
)
from diffusion_lab.models.autoencoder import AutoencoderConfig, AutoencoderKL

__all__ = [
    "check_reparameterize",
    "check_gaussian_kl",
    "check_scaling_factor",
    "check_decode_prior",
    "check_beta_zero",
]


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


@functools.cache
def _small_autoencoder() -> AutoencoderKL:
    """An untrained autoencoder with 3 latent channels (not the notebook's 4), built once for every check."""
    with torch.random.fork_rng():  # its weights from a fixed seed, without touching the caller's random state
        torch.manual_seed(14)
        return AutoencoderKL(AutoencoderConfig(latent_channels=3)).eval()


def _decoded(z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return _small_autoencoder().decode(z).sample


def check_decode_prior(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(vae, n, generator)`` must decode n samples of the prior: z = torch.randn(n, C, h, w, generator=generator)
    with (C, h, w) the autoencoder's latent shape, then ``vae.decode(z).sample`` (clamping to [−1, 1] is allowed).

    Tried on a small untrained autoencoder of another latent shape (3 channels, 7×7) than the notebook's, so that the
    shape must be read from the model, not typed in."""
    _check_callable(fn)
    what = "decoded prior samples"
    n, seed = 3, 15
    z = torch.randn(n, 3, 7, 7, generator=torch.Generator().manual_seed(seed))  # (n, C, h, w)
    want = _decoded(z)  # (n, 1, 28, 28)
    with torch.no_grad():  # a copy: the student's code may change the model (train mode, weights) without harm
        got, hint = _call_tensor(
            fn,
            what,
            want,
            "return n decoded images, shape {want}, not {got}: decode z with vae.decode(z).sample",
            copy.deepcopy(_small_autoencoder()),
            n,
            torch.Generator().manual_seed(seed),
        )
    if hint:
        return _report(False, what, hint)
    if torch.allclose(got, want, atol=1e-5) or torch.allclose(got, want.clamp(-1, 1), atol=1e-5):
        return _report(True, what, "")
    uniform = _decoded(torch.rand(n, 3, 7, 7, generator=torch.Generator().manual_seed(seed)))
    if torch.allclose(got, uniform, atol=1e-5) or torch.allclose(got, uniform.clamp(-1, 1), atol=1e-5):
        return _report(False, what, "torch.rand is uniform on [0, 1); the prior is N(0, I): torch.randn")
    return _report(
        False,
        what,
        "draw z = torch.randn(n, vae.config.latent_channels, 7, 7, generator=generator) (one call, that generator) "
        "and return vae.decode(z).sample",
    )


BETA_ZERO_KEYS = ("mean σ", "KL per pixel", "reconstruction MSE", "prior samples read")
_ANSWERS = ("lower", "higher", "same")
_WHY = {
    "mean σ": "with β = 0 nothing rewards noise in the code, so the encoder shrinks σ towards 0",
    "KL per pixel": "σ → 0 makes −log σ² grow and nothing holds μ near 0, so the KL (measured, not trained) grows",
    "reconstruction MSE": "with the same number of steps, does dropping the KL buy sharper reconstructions? Only what was "
    "measured counts",
    "prior samples read": "nothing pulls the codes towards N(0, I); compare with how few the trained β already decodes",
}


def _measured(name: str, value: object) -> dict:
    """The notebook's measurement ``value`` as {key: float} for every key of ``BETA_ZERO_KEYS`` (TypeError if not)."""
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a dict with a number for each of {BETA_ZERO_KEYS}, got {type(value).__name__}")
    out = {}
    for key in BETA_ZERO_KEYS:
        number, problem = _as_number(value.get(key))
        if problem:
            raise TypeError(f"{name}[{key!r}] must be a finite number: {problem}")
        out[key] = number
    return out


def check_beta_zero(prediction: object, measured_zero: dict, measured_trained: dict, margins: dict) -> bool:
    """``prediction`` (a dict: each of ``BETA_ZERO_KEYS`` → "lower", "higher" or "same") says how the autoencoder
    trained with β = 0 compares with the trained one (β = 1e-2, same steps). ``measured_zero`` and
    ``measured_trained`` are the notebook's measurements and ``margins`` the error bar of each difference: a
    difference within its margin is "same", a larger one "lower" or "higher"."""
    what = "β = 0 prediction"
    zero, trained = _measured("measured_zero", measured_zero), _measured("measured_trained", measured_trained)
    margins = _measured("margins", margins)
    if prediction is None or (isinstance(prediction, dict) and all(v is None for v in prediction.values())):
        return _report(
            False, what, "fill in 'lower', 'higher' or 'same' for each quantity BEFORE you run the experiment"
        )
    if not isinstance(prediction, dict):
        return _report(
            False, what, f"prediction must be a dict like {{'mean σ': 'lower', ...}}, got {_kind(prediction)}"
        )
    unreadable = [k for k in BETA_ZERO_KEYS if not isinstance(prediction.get(k), str) or prediction[k] not in _ANSWERS]
    if unreadable:
        return _report(
            False,
            what,
            f"give 'lower', 'higher' or 'same' for each of {list(BETA_ZERO_KEYS)}; not readable: {unreadable}",
        )
    wrong = []
    for k in BETA_ZERO_KEYS:
        diff = zero[k] - trained[k]
        answer = "same" if abs(diff) <= margins[k] else ("higher" if diff > 0 else "lower")
        if prediction[k] != answer:
            wrong.append(
                f"{k} is {answer} (β = 0: {zero[k]:.3g}, β = 1e-2: {trained[k]:.3g}, error bar ±{margins[k]:.2g}): {_WHY[k]}"
            )
    return _report(not wrong, what, "; ".join(wrong))
