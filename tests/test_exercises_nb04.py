"""The exercise checks of notebook 04: decoding samples of the prior N(0, I), sampling a Gaussian fitted to the codes
per channel and the prediction of its effect, the β = 0 prediction judged against a measurement, and the timestep at
which latents of the wrong scale reach a given signal-to-noise ratio.

Each check must accept right answers written here (without the library's helpers) and reject the plausible wrong
ones with a hint that names the mistake; the prediction check must follow the measurement it is given.
"""

from __future__ import annotations

import pytest
import torch
from checker_asserts import accepts as _accepts
from checker_asserts import rejects as _rejects

from diffusion_lab.course.exercises.nb04_autoencoder import (
    check_beta_zero,
    check_decode_prior,
    check_fitted_prior,
    check_matching_timestep,
    check_prior_prediction,
    fitted_prior_samples,
)
from diffusion_lab.maths.schedules import schedule_table

# --- decoding the prior ---------------------------------------------------------------------------------------------


def decode_prior(vae, n, generator):
    z = torch.randn(n, vae.config.latent_channels, 7, 7, generator=generator)
    return vae.decode(z).sample


def decode_prior_clamped_numpy(vae, n, generator):
    shape = (n, vae.config.latent_channels, 28 // 4, 28 // 4)
    with torch.no_grad():
        return vae.decode(torch.randn(shape, generator=generator)).sample.clamp(-1, 1).numpy()


def test_decode_prior_accepts_right_answers(capsys):
    _accepts(check_decode_prior, decode_prior, decode_prior_clamped_numpy, capsys=capsys)


def test_decode_prior_rejects_plausible_wrong_answers(capsys):
    def four_channels(vae, n, generator):  # the notebook's shape typed in instead of read from the model
        return vae.decode(torch.randn(n, 4, 7, 7, generator=generator)).sample

    def uniform(vae, n, generator):
        return vae.decode(torch.rand(n, vae.config.latent_channels, 7, 7, generator=generator)).sample

    def no_generator(vae, n, generator):
        return vae.decode(torch.randn(n, vae.config.latent_channels, 7, 7)).sample

    def divided_by_s(vae, n, generator):  # the test model has s = 0.5: dividing by it must not pass
        z = torch.randn(n, vae.config.latent_channels, 7, 7, generator=generator)
        return vae.decode(z / vae.config.scaling_factor).sample

    def times_s(vae, n, generator):
        z = torch.randn(n, vae.config.latent_channels, 7, 7, generator=generator)
        return vae.decode(z * vae.config.scaling_factor).sample

    def latents_only(vae, n, generator):
        return torch.randn(n, vae.config.latent_channels, 7, 7, generator=generator)

    _rejects(check_decode_prior, four_channels, "raised", capsys=capsys)  # 4 channels into a 3-channel decoder
    _rejects(check_decode_prior, uniform, "uniform", "torch.randn", capsys=capsys)
    _rejects(check_decode_prior, no_generator, "generator", capsys=capsys)
    _rejects(check_decode_prior, divided_by_s, "without the scaling factor", capsys=capsys)
    _rejects(check_decode_prior, times_s, "without the scaling factor", capsys=capsys)
    _rejects(check_decode_prior, latents_only, "vae.decode(z).sample", capsys=capsys)
    _rejects(check_decode_prior, lambda vae, n, g: None, "returns None", capsys=capsys)


# --- the β = 0 prediction -------------------------------------------------------------------------------------------

ZERO = {"mean σ": 0.04, "KL per pixel": 1.41, "RMS of μ": 2.22}
TRAINED = {"mean σ": 0.21, "KL per pixel": 0.42, "RMS of μ": 0.89}
MARGINS = {"mean σ": 0.0004, "KL per pixel": 0.003, "RMS of μ": 0.006}
RIGHT = {"mean σ": "lower", "KL per pixel": "higher", "RMS of μ": "higher"}


def test_beta_zero_accepts_the_measured_answer(capsys):
    _accepts(check_beta_zero, RIGHT, dict(RIGHT), capsys=capsys, args=(ZERO, TRAINED, MARGINS))
    # a wide error bar makes the spread difference not significant: then "same" is right
    wide = MARGINS | {"RMS of μ": 2.0}
    _accepts(check_beta_zero, RIGHT | {"RMS of μ": "same"}, capsys=capsys, args=(ZERO, TRAINED, wide))


def test_beta_zero_rejects_plausible_wrong_predictions(capsys):
    args = (ZERO, TRAINED, MARGINS)
    _rejects(check_beta_zero, RIGHT | {"mean σ": "higher"}, "mean σ is lower", "shrinks σ", capsys=capsys, args=args)
    _rejects(check_beta_zero, RIGHT | {"KL per pixel": "lower"}, "KL per pixel is higher", capsys=capsys, args=args)
    _rejects(check_beta_zero, RIGHT | {"RMS of μ": "same"}, "RMS of μ is higher", capsys=capsys, args=args)
    _rejects(check_beta_zero, {k: None for k in RIGHT}, "BEFORE you run", capsys=capsys, args=args)
    _rejects(check_beta_zero, None, "BEFORE you run", capsys=capsys, args=args)
    _rejects(check_beta_zero, RIGHT | {"mean σ": "smaller"}, "not readable", capsys=capsys, args=args)
    _rejects(check_beta_zero, ["lower", "higher", "higher"], "must be a dict", capsys=capsys, args=args)


def test_beta_zero_own_arguments_follow_the_error_convention():
    with pytest.raises(TypeError, match="measured_zero must be a dict"):
        check_beta_zero(RIGHT, [0.04], TRAINED, MARGINS)
    with pytest.raises(TypeError, match="margins"):
        check_beta_zero(RIGHT, ZERO, TRAINED, MARGINS | {"mean σ": float("nan")})


# --- the prior fitted per channel -----------------------------------------------------------------------------------


def fitted_prior(latents, n, generator):
    m, s = latents.mean(dim=(0, 2, 3)), latents.std(dim=(0, 2, 3))
    return m[:, None, None] + s[:, None, None] * torch.randn(n, *latents.shape[1:], generator=generator)


def fitted_prior_loop(latents, n, generator):  # channel by channel, another order of drawing: judged by statistics
    eps = torch.randn(latents.shape[1], n, *latents.shape[2:], generator=generator)
    channels = [latents[:, c].mean() + latents[:, c].std() * eps[c] for c in range(latents.shape[1])]
    return torch.stack(channels, dim=1).numpy()


def test_fitted_prior_accepts_right_answers(capsys):
    _accepts(check_fitted_prior, fitted_prior, fitted_prior_loop, fitted_prior_samples, capsys=capsys)


def test_fitted_prior_rejects_plausible_wrong_answers(capsys):
    def standard_normal(latents, n, generator):
        return torch.randn(n, *latents.shape[1:], generator=generator)

    def one_for_all(latents, n, generator):  # one mean and one std over all numbers: the test channels differ
        return latents.mean() + latents.std() * torch.randn(n, *latents.shape[1:], generator=generator)

    def variance(latents, n, generator):
        m, v = latents.mean(dim=(0, 2, 3)), latents.var(dim=(0, 2, 3))
        return m[:, None, None] + v[:, None, None] * torch.randn(n, *latents.shape[1:], generator=generator)

    def no_mean(latents, n, generator):
        s = latents.std(dim=(0, 2, 3))
        return s[:, None, None] * torch.randn(n, *latents.shape[1:], generator=generator)

    def no_generator(latents, n, generator):
        return fitted_prior(latents, n, None)

    def resampled_codes(latents, n, generator):  # real codes, not samples of a Gaussian: too few of them
        return latents[torch.randint(0, len(latents), (min(n, len(latents)),), generator=generator)]

    _rejects(check_fitted_prior, standard_normal, "N(0, I) samples", capsys=capsys)
    _rejects(check_fitted_prior, one_for_all, "per CHANNEL", capsys=capsys)
    _rejects(check_fitted_prior, variance, "standard deviation", capsys=capsys)
    _rejects(check_fitted_prior, no_mean, "channel means", capsys=capsys)
    _rejects(check_fitted_prior, no_generator, "generator", capsys=capsys)
    _rejects(check_fitted_prior, resampled_codes, "return n samples", capsys=capsys)
    _rejects(check_fitted_prior, lambda latents, n, g: None, "returns None", capsys=capsys)


def _p(word):
    return {"share read confidently": word}


def test_prior_prediction_follows_the_measurement(capsys):
    higher, same, lower = (0.155, 0.064, 0.023), (0.080, 0.064, 0.023), (0.020, 0.064, 0.023)
    _accepts(check_prior_prediction, _p("higher"), capsys=capsys, args=higher)
    _accepts(check_prior_prediction, _p("same"), capsys=capsys, args=same)
    _accepts(check_prior_prediction, _p("lower"), capsys=capsys, args=lower)
    _rejects(check_prior_prediction, _p("same"), "measured higher", "positions", capsys=capsys, args=higher)
    _rejects(check_prior_prediction, _p("lower"), "measured higher", capsys=capsys, args=higher)
    _rejects(check_prior_prediction, _p("higher"), "measured same", capsys=capsys, args=same)
    _rejects(check_prior_prediction, _p(None), "BEFORE you run", capsys=capsys, args=higher)
    _rejects(check_prior_prediction, None, "BEFORE you run", capsys=capsys, args=higher)
    _rejects(check_prior_prediction, _p("better"), "give 'higher'", capsys=capsys, args=higher)
    _rejects(check_prior_prediction, "higher", "must be a dict", capsys=capsys, args=higher)
    with pytest.raises(TypeError, match="margin"):
        check_prior_prediction(_p("higher"), 0.155, 0.064, "0.02")


# --- the timestep of equal SNR --------------------------------------------------------------------------------------


def matching_timestep(alphas_cumprod, t_ref, k):
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return int((k**2 * snr - snr[t_ref]).abs().argmin())


def matching_timestep_by_alpha_bar(alphas_cumprod, t_ref, k):  # ᾱ_t = r / (k² + r), then the nearest step
    r = alphas_cumprod[t_ref] / (1 - alphas_cumprod[t_ref])
    return (alphas_cumprod - r / (k**2 + r)).abs().argmin()


def test_matching_timestep_accepts_right_answers(capsys):
    _accepts(check_matching_timestep, matching_timestep, matching_timestep_by_alpha_bar, capsys=capsys)
    # the notebook's numbers: std 2 moves t = 500 of the linear schedule far towards the noise
    assert 600 < matching_timestep(schedule_table(1000)["linear"], 500, 2.0) < 640


def test_matching_timestep_rejects_plausible_wrong_answers(capsys):
    _rejects(check_matching_timestep, lambda ab, t, k: t, "matching t moves", capsys=capsys)
    _rejects(check_matching_timestep, lambda ab, t, k: matching_timestep(ab, t, k**0.5), "variance std²", capsys=capsys)
    _rejects(
        check_matching_timestep, lambda ab, t, k: matching_timestep(ab, t, 1 / k), "wrong direction", capsys=capsys
    )
    _rejects(check_matching_timestep, lambda ab, t, k: 999, "solve", capsys=capsys)
    _rejects(check_matching_timestep, lambda ab, t, k: "618", "whole number", capsys=capsys)
    _rejects(check_matching_timestep, lambda ab, t, k: None, "returns None", capsys=capsys)
