"""The exercise checks of notebook 04 added for its prediction exercises: decoding samples of the prior N(0, I), and
the β = 0 prediction judged against a measurement.

Each check must accept right answers written here (without the library's helpers) and reject the plausible wrong
ones with a hint that names the mistake; the prediction check must follow the measurement it is given.
"""

from __future__ import annotations

import pytest
import torch

from diffusion_lab.course.exercises.nb04_autoencoder import check_beta_zero, check_decode_prior


def _outcomes(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def _accepts(check, *answers, capsys, args=()) -> None:
    for answer in answers:
        assert check(answer, *args) is True, answer
    lines = _outcomes(capsys)
    assert len(lines) == len(answers) and all(line.startswith("✅") for line in lines), lines


def _rejects(check, answer, *hint_words, capsys, args=()) -> None:
    """``check(answer)`` is False, prints one ❌ line, and its hint contains every one of ``hint_words``."""
    assert check(answer, *args) is False, answer
    lines = _outcomes(capsys)
    assert len(lines) == 1 and lines[0].startswith("❌"), lines
    for word in hint_words:
        assert word in lines[0], (word, lines[0])


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

    def latents_only(vae, n, generator):
        return torch.randn(n, vae.config.latent_channels, 7, 7, generator=generator)

    _rejects(check_decode_prior, four_channels, "raised", capsys=capsys)  # 4 channels into a 3-channel decoder
    _rejects(check_decode_prior, uniform, "uniform", "torch.randn", capsys=capsys)
    _rejects(check_decode_prior, no_generator, "generator", capsys=capsys)
    _rejects(check_decode_prior, latents_only, "vae.decode(z).sample", capsys=capsys)
    _rejects(check_decode_prior, lambda vae, n, g: None, "returns None", capsys=capsys)


# --- the β = 0 prediction -------------------------------------------------------------------------------------------

ZERO = {"mean σ": 0.04, "KL per pixel": 1.41, "reconstruction MSE": 0.0143, "prior samples read": 0.055}
TRAINED = {"mean σ": 0.21, "KL per pixel": 0.42, "reconstruction MSE": 0.0145, "prior samples read": 0.070}
MARGINS = {"mean σ": 0.002, "KL per pixel": 0.01, "reconstruction MSE": 0.0006, "prior samples read": 0.022}
RIGHT = {"mean σ": "lower", "KL per pixel": "higher", "reconstruction MSE": "same", "prior samples read": "same"}


def test_beta_zero_accepts_the_measured_answer(capsys):
    _accepts(check_beta_zero, RIGHT, dict(RIGHT), capsys=capsys, args=(ZERO, TRAINED, MARGINS))
    # a smaller error bar makes the prior difference real: then "lower" is right
    tight = MARGINS | {"prior samples read": 0.005}
    _accepts(check_beta_zero, RIGHT | {"prior samples read": "lower"}, capsys=capsys, args=(ZERO, TRAINED, tight))


def test_beta_zero_rejects_plausible_wrong_predictions(capsys):
    args = (ZERO, TRAINED, MARGINS)
    # the usual intuition: no KL, so sharper reconstructions
    _rejects(
        check_beta_zero, RIGHT | {"reconstruction MSE": "lower"}, "reconstruction MSE is same", capsys=capsys, args=args
    )
    _rejects(check_beta_zero, RIGHT | {"mean σ": "higher"}, "mean σ is lower", "shrinks σ", capsys=capsys, args=args)
    _rejects(check_beta_zero, RIGHT | {"KL per pixel": "lower"}, "KL per pixel is higher", capsys=capsys, args=args)
    _rejects(
        check_beta_zero, RIGHT | {"prior samples read": "lower"}, "prior samples read is same", capsys=capsys, args=args
    )
    _rejects(check_beta_zero, {k: None for k in RIGHT}, "BEFORE you run", capsys=capsys, args=args)
    _rejects(check_beta_zero, None, "BEFORE you run", capsys=capsys, args=args)
    _rejects(check_beta_zero, RIGHT | {"mean σ": "smaller"}, "not readable", capsys=capsys, args=args)
    _rejects(check_beta_zero, ["lower", "higher", "same", "same"], "must be a dict", capsys=capsys, args=args)


def test_beta_zero_own_arguments_follow_the_error_convention():
    with pytest.raises(TypeError, match="measured_zero must be a dict"):
        check_beta_zero(RIGHT, [0.04], TRAINED, MARGINS)
    with pytest.raises(TypeError, match="margins"):
        check_beta_zero(RIGHT, ZERO, TRAINED, MARGINS | {"mean σ": float("nan")})
