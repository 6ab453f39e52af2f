"""Exercise checkers of notebook 04 (latent autoencoder).

========================  ============================================================================
checker                   the student's function must return
========================  ============================================================================
``check_reparameterize``  z = μ + σ·ε, σ = exp(½·log σ²) (Kingma & Welling 2014, §2.4)
``check_gaussian_kl``     KL(N(μ, σ²) ‖ N(0, 1)) = ½Σ(μ² + σ² − 1 − log σ²) per sample (ibid., App. B)
``check_scaling_factor``  s = 1/std(z), so that s·z has unit variance
``check_decode_prior``    decoded samples of the prior: vae.decode(z) with z ~ N(0, I) of the latent shape
``check_fitted_prior``    samples of a Gaussian fitted per channel to the codes: z_c = m_c + s_c·ε
``check_prior_prediction``  predicted change in confidently read prior samples against the measured one
``check_beta_zero``       predicted directions (β = 0 against the trained β) compared with the measured ones
``check_matching_timestep``  the t at which data of std k has the SNR that unit-variance data has at t_ref
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
    _direction_answer,
    _finite_hint,
    _kind,
    _report,
)
from diffusion_lab.maths.schedules import schedule_table
from diffusion_lab.models.autoencoder import AutoencoderConfig, AutoencoderKL

__all__ = [
    "check_reparameterize",
    "check_gaussian_kl",
    "check_scaling_factor",
    "check_decode_prior",
    "check_fitted_prior",
    "check_prior_prediction",
    "check_beta_zero",
    "check_matching_timestep",
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
    """An untrained autoencoder with 3 latent channels (not the notebook's 4) and a scaling factor s = 0.5 (not 1),
    built once for every check."""
    with torch.random.fork_rng():  # its weights from a fixed seed, without touching the caller's random state
        torch.manual_seed(14)
        return AutoencoderKL(AutoencoderConfig(latent_channels=3, scaling_factor=0.5)).eval()


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
    rescaled = _decoded(torch.cat([z * 2.0, z * 0.5]))  # z / s and z · s with s = 0.5, decoded in one call
    for wrong in rescaled.split(n):
        if torch.allclose(got, wrong, atol=1e-5) or torch.allclose(got, wrong.clamp(-1, 1), atol=1e-5):
            return _report(
                False,
                what,
                "the prior N(0, I) is the autoencoder's own prior: decode z as drawn, without the scaling factor "
                "(s only rescales latents for the diffusion model)",
            )
    uniform = _decoded(torch.rand(n, 3, 7, 7, generator=torch.Generator().manual_seed(seed)))
    if torch.allclose(got, uniform, atol=1e-5) or torch.allclose(got, uniform.clamp(-1, 1), atol=1e-5):
        return _report(False, what, "torch.rand is uniform on [0, 1); the prior is N(0, I): torch.randn")
    return _report(
        False,
        what,
        "draw z = torch.randn(n, vae.config.latent_channels, 7, 7, generator=generator) (one call, that generator) "
        "and return vae.decode(z).sample",
    )


BETA_ZERO_KEYS = ("mean σ", "KL per pixel", "RMS of μ")
_ANSWERS = ("lower", "higher", "same")
_WHY = {
    "mean σ": "with β = 0 nothing rewards noise in the code, so the encoder shrinks σ towards 0",
    "KL per pixel": "σ → 0 makes −log σ² grow and nothing holds μ near 0, so the KL (measured, not trained) grows",
    "RMS of μ": "nothing holds the means near 0 any more, so the encoder spreads them as widely as it likes",
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


def check_fitted_prior(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(latents, n, generator)`` must return n samples of shape (n, C, h, w) from the Gaussian fitted to the
    latents per channel: z[:, c] = m_c + s_c·ε with m_c and s_c the mean and standard deviation of channel c over the
    batch and all positions, and ε ~ N(0, I) drawn with ``generator``.

    Tried on latents whose channels have different means and scales, so that one mean and one standard deviation for
    all numbers at once fails; judged by the statistics of 4000 samples, so any correct way of drawing them passes."""
    _check_callable(fn)
    what = "fitted prior"
    g = torch.Generator().manual_seed(16)
    scale, shift = torch.tensor([0.3, 1.0, 4.0]), torch.tensor([-1.0, 0.0, 2.0])
    latents = torch.randn(400, 3, 5, 5, generator=g) * scale[:, None, None] + shift[:, None, None]  # (400, 3, 5, 5)
    n = 4000
    want = torch.zeros(n, 3, 5, 5)
    got, hint = _call_tensor(
        fn,
        what,
        want,
        "return n samples shaped like one latent each, {want}, not {got}",
        latents,
        n,
        torch.Generator().manual_seed(17),
    )
    if hint:
        return _report(False, what, hint)
    m, s = latents.mean(dim=(0, 2, 3)), latents.std(dim=(0, 2, 3))  # (3,) each
    got_m, got_s = got.mean(dim=(0, 2, 3)), got.std(dim=(0, 2, 3))
    if torch.allclose(got_s, torch.ones(3), rtol=0.05) and torch.allclose(got_m, torch.zeros(3), atol=0.05):
        return _report(False, what, "these are N(0, I) samples: shift and scale each channel by its own mean and std")
    if (got_s.max() / got_s.min()) < 1.5:
        return _report(False, what, "one mean and one std per CHANNEL (dims 0, 2, 3), not one for all numbers at once")
    if not torch.allclose(got_s, s, rtol=0.08):
        if torch.allclose(got_s, s**2, rtol=0.08):
            return _report(False, what, "the variance is s_c²; the samples need the standard deviation s_c")
        return _report(
            False, what, f"channel stds {got_s.tolist()} should be the latents' {s.tolist()}: z = m_c + s_c·ε"
        )
    if not torch.allclose(got_m, m, atol=0.05 * s.max().item()):
        return _report(False, what, f"channel means {got_m.tolist()} should be the latents' {m.tolist()}")
    again, hint = _call(fn, what, latents, n, torch.Generator().manual_seed(17))
    again, problem = _as_tensor(again, want.dtype) if not hint else (None, hint)
    if problem or again is None or again.shape != got.shape or not torch.equal(again, got):
        return _report(False, what, "draw ε with the generator passed in (torch.randn(..., generator=generator))")
    return _report(True, what, "")


_DIRECTIONS = ("higher", "lower", "same")


PRIOR_KEY = "share read confidently"


def check_prior_prediction(prediction: object, measured_new: object, measured_old: object, margin: object) -> bool:
    """``prediction`` (a dict {"share read confidently": "higher", "lower" or "same"}) says how the share of decoded
    samples read with confidence > 0.9 changes from N(0, I) (``measured_old``) to the fitted prior (``measured_new``);
    ``margin`` is the error bar of the difference: a difference within it is "same"."""
    what = "prior prediction"
    values = []
    for name, value in (("measured_new", measured_new), ("measured_old", measured_old), ("margin", margin)):
        number, problem = _as_number(value)
        if problem:
            raise TypeError(f"{name} must be a finite number: {problem}")
        values.append(number)
    new, old, margin = values
    answer_given, answer, hint = _direction_answer(
        prediction, PRIOR_KEY, _DIRECTIONS, "higher", "lower", new - old, margin
    )
    if hint:
        return _report(False, what, hint)
    if answer_given == answer:
        return _report(True, what, "")
    why = {
        "higher": "N(0, I) gives every channel mean 0 and width 1, the codes' channels have other means and widths; "
        "matching them puts the samples nearer the codes, though it still ignores how the 49 positions of a code "
        "depend on one another",
        "lower": "matching each channel's mean and width moved the samples away from what the decoder reads as digits",
        "same": "matching each channel's mean and width changed too little to show at this sample size",
    }[answer]
    return _report(False, what, f"measured {answer}: {old:.3f} → {new:.3f} (error bar ±{margin:.3f}); {why}")


def fitted_prior_samples(latents: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """The course's answer to the fitted-prior exercise, so that its experiment runs before the student's is done:
    z[:, c] = m_c + s_c·ε, (n, C, h, w), with m_c, s_c the mean and std of channel c of ``latents`` (B, C, h, w)."""
    m, s = latents.mean(dim=(0, 2, 3)), latents.std(dim=(0, 2, 3))  # (C,) each
    eps = torch.randn(n, *latents.shape[1:], generator=generator)  # (n, C, h, w)
    return m[:, None, None] + s[:, None, None] * eps


def _matching_t(alphas_cumprod: torch.Tensor, t_ref: int, data_std: float) -> int:
    ab = alphas_cumprod.double()
    snr = ab / (1 - ab)  # (T,) SNR of unit-variance data
    return int((snr * data_std**2 - snr[t_ref]).abs().argmin())


def check_matching_timestep(fn: Callable[..., int]) -> bool:
    """``fn(alphas_cumprod, t_ref, data_std)`` must return the timestep t at which data of standard deviation
    ``data_std`` has the signal-to-noise ratio ᾱ_t·std² / (1 − ᾱ_t) closest to that of unit-variance data at
    ``t_ref``, ᾱ_ref / (1 − ᾱ_ref) (within one step)."""
    _check_callable(fn)
    what = "matching timestep"
    table = schedule_table(1000)
    for schedule, t_ref, k in (("linear", 500, 2.0), ("linear", 300, 0.5), ("squaredcos_cap_v2", 600, 3.0)):
        ab = table[schedule]
        want = _matching_t(ab, t_ref, k)
        got, hint = _call(fn, what, ab, t_ref, k)
        if hint:
            return _report(False, what, hint)
        got, problem = _as_number(got)
        if problem:
            return _report(False, what, f"return one timestep (a whole number), {problem}")
        if abs(got - want) <= 1:
            continue
        case = f"({schedule} schedule, t_ref = {t_ref}, std = {k:g}: want about {want}, got {got:g})"
        if abs(got - t_ref) <= 1:
            return _report(False, what, f"the data's scale changes the SNR at every t, so the matching t moves {case}")
        if abs(got - _matching_t(ab, t_ref, k**0.5)) <= 1:
            return _report(False, what, f"the SNR scales with the variance std², not with std {case}")
        if abs(got - _matching_t(ab, t_ref, 1 / k)) <= 1:
            return _report(
                False,
                what,
                f"wrong direction: larger data raise the SNR, so the match lies at a noisier, later t {case}",
            )
        return _report(False, what, f"solve ᾱ_t·std² / (1 − ᾱ_t) = ᾱ_ref / (1 − ᾱ_ref) for t {case}")
    return _report(True, what, "")
