"""Notebook 09's exercises: Heun's corrected step (derive and write), DPM-Solver++(1) in DDPM's scale (a derivation,
compared with DDIM), and the prediction of the best sampler at 4 network evaluations (judged against the measurement's
error bars).

Each checker accepts the right answer in more than one form and answers the plausible wrong ones with a ❌ and the
hint for that mistake (never an exception)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from checker_asserts import accepts, outcomes, rejects

from diffusion_lab.course.exercises import check_dpm_first_order, check_heun_step, check_sampler_prediction
from diffusion_lab.maths.solvers import dpmpp_first_order_step, euler_step, heun_step, ode_derivative

# --- Exercise 1: Heun's step ------------------------------------------------------------------------------------


def _heun_library(x, sigma, sigma_next, denoise):  # the library's pure functions (EDM Alg. 1)
    x0 = denoise(x, sigma)
    guess = euler_step(x, x0, sigma, sigma_next)
    if sigma_next == 0:
        return guess
    d, d_next = ode_derivative(x, x0, sigma), ode_derivative(guess, denoise(guess, sigma_next), sigma_next)
    return heun_step(x, d, d_next, sigma_next - sigma)


def _heun_by_hand(x, sigma, sigma_next, denoise):
    h = sigma_next - sigma
    d = (x - denoise(x, sigma)) / sigma
    guess = x + h * d
    if sigma_next == 0:
        return guess
    return x + h * (d + (guess - denoise(guess, sigma_next)) / sigma_next) / 2


def _heun_numpy(x, sigma, sigma_next, denoise):
    return _heun_by_hand(x, sigma, sigma_next, denoise).numpy()


def test_heun_step_accepts_the_library_and_the_derivation(capsys):
    accepts(check_heun_step, _heun_library, _heun_by_hand, _heun_numpy, capsys=capsys)


def _slope(x, s, denoise):
    return (x - denoise(x, s)) / s


@pytest.mark.parametrize(
    "fn, words",
    [
        (lambda x, s, sn, D: x + (sn - s) * _slope(x, s, D), "Euler's step"),
        (lambda x, s, sn, D: x + (sn - s) * (_slope(x, s, D) + _slope(x, sn, D)) / 2 if sn else x - s * _slope(x, s, D),
         "at the wrong point"),
        (lambda x, s, sn, D: x + (sn - s) * (_slope(x, s, D) + _slope(x + (sn - s) * _slope(x, s, D), s, D)) / 2
         if sn else x - s * _slope(x, s, D), "belongs to σ_next"),
        (lambda x, s, sn, D: x + (sn - s) * _slope(x + (sn - s) * _slope(x, s, D), sn, D) if sn else x - s * _slope(x, s, D),
         "average"),
        (lambda x, s, sn, D: x - (sn - s) * (_slope(x, s, D) + _slope(x + (sn - s) * _slope(x, s, D), sn, D)) / 2
         if sn else x - s * _slope(x, s, D), "wrong way"),
    ],
)  # fmt: skip
def test_heun_step_explains_the_classic_mistakes(fn, words, capsys):
    rejects(check_heun_step, fn, words, capsys=capsys)


def test_heun_step_forgetting_the_last_euler_step_is_named(capsys):
    def no_last_euler(x, s, sn, denoise):  # the trapezoid also at σ_next = 0: divides by zero
        h = sn - s
        d = (x - denoise(x, s)) / s
        guess = x + h * d
        return x + h * (d + (guess - denoise(guess, sn)) / sn) / 2

    rejects(check_heun_step, no_last_euler, "plain Euler", capsys=capsys)

    def midpoint_at_the_end(x, s, sn, denoise):  # right until σ_next = 0, then something else than Euler
        if sn == 0:
            return denoise(x, s) * 0.5 + x * 0.5
        return _heun_by_hand(x, s, sn, denoise)

    rejects(check_heun_step, midpoint_at_the_end, "last step is plain Euler", capsys=capsys)


def test_heun_step_placeholder_and_errors_are_hints(capsys):
    rejects(check_heun_step, lambda x, s, sn, D: None, "returns None", capsys=capsys)
    rejects(check_heun_step, lambda x, s, sn, D: 1 / 0, "raised ZeroDivisionError", capsys=capsys)
    rejects(check_heun_step, lambda x, s, sn, D: x[:2], "shape", capsys=capsys)
    with pytest.raises(TypeError, match="pass your function itself"):
        check_heun_step(None)


# --- Exercise 3: DPM-Solver++(1) = DDIM -------------------------------------------------------------------------


def _dpm1(x_s, x0, a_s, s_s, a_t, s_t):
    h = math.log(a_t / s_t) - math.log(a_s / s_s)
    return (s_t / s_s) * x_s + a_t * (1 - math.exp(-h)) * x0


def _dpm1_library(x_s, x0, a_s, s_s, a_t, s_t):
    h = torch.tensor(math.log(a_t / s_t) - math.log(a_s / s_s), dtype=torch.float64)
    return dpmpp_first_order_step(x_s, x0, a_t, s_t, s_s, h)


def _ddim(x_s, x0, a_s, s_s, a_t, s_t):
    return a_t * x0 + s_t * (x_s - a_s * x0) / s_s


def test_dpm_first_order_accepts_the_derivation_the_library_and_ddim(capsys):
    accepts(check_dpm_first_order, _dpm1, _dpm1_library, _ddim, capsys=capsys)


@pytest.mark.parametrize(
    "fn, words",
    [
        (lambda x, x0, a_s, s_s, a_t, s_t: (s_t / s_s) * x + a_t * (1 - (a_t * s_s) / (s_t * a_s)) * x0, "1 − e^{−h}"),
        (lambda x, x0, a_s, s_s, a_t, s_t: (s_t / s_s) * x + (1 - (s_t * a_s) / (a_t * s_s)) * x0, "carries α_t"),
        (lambda x, x0, a_s, s_s, a_t, s_t: (s_s / s_t) * x + a_t * (1 - (s_t * a_s) / (a_t * s_s)) * x0, "σ_t/σ_s"),
        (lambda x, x0, a_s, s_s, a_t, s_t: (s_t * a_s / (s_s * a_t)) * x + (1 - (s_t * a_s) / (a_t * s_s)) * x0,
         "multiply x̄ by α_t"),
        (lambda x, x0, a_s, s_s, a_t, s_t: (s_t / s_s) * x - a_t * (1 - (s_t * a_s) / (a_t * s_s)) * x0, "sign"),
        (lambda x, x0, a_s, s_s, a_t, s_t: x0, "hold x̂₀ constant"),
        (lambda x, x0, a_s, s_s, a_t, s_t: None, "returns None"),
        (lambda x, x0, a_s, s_s, a_t, s_t: x.mean(0), "shape"),
    ],
)  # fmt: skip
def test_dpm_first_order_explains_the_usual_mistakes(fn, words, capsys):
    rejects(check_dpm_first_order, fn, words, capsys=capsys)


# --- Exercise 2: which sampler wins at 4 NFE ------------------------------------------------------------------------

_LABELS = ("DDIM", "Euler", "Heun", "DPM++ 2M")
_FID, _FID_SE = [400.0, 420.0, 900.0, 300.0], [20.0, 20.0, 30.0, 15.0]  # lower is better: 4 (DPM++ 2M) wins
_ADH, _ADH_SE = [0.90, 0.88, 0.60, 0.91], [0.01, 0.01, 0.02, 0.01]  # higher is better: 1 and 4 within 2 SE


def test_sampler_prediction_accepts_the_best_in_any_number_form(capsys):
    accepts(check_sampler_prediction, 4, 4.0, np.int64(4), torch.tensor(4), capsys=capsys,
            args=(_LABELS, _FID, _FID_SE, False))  # fmt: skip


def test_sampler_prediction_accepts_a_tie_within_two_standard_errors(capsys):
    accepts(check_sampler_prediction, 1, 4, capsys=capsys, args=(_LABELS, _ADH, _ADH_SE, True))


def test_sampler_prediction_rejects_a_loser_with_the_measurement(capsys):
    rejects(check_sampler_prediction, 3, "DPM++ 2M is best", "Heun scores 900", "log σ", capsys=capsys,
            args=(_LABELS, _FID, _FID_SE, False))  # fmt: skip
    rejects(check_sampler_prediction, 3, "Heun scores 0.6", capsys=capsys, args=(_LABELS, _ADH, _ADH_SE, True))


@pytest.mark.parametrize("answer, words", [(None, "BEFORE"), (0, "got 0"), (5, "got 5"), ("DPM++ 2M", "got a str"),
                                           (2.5, "not a whole number"), (float("nan"), "got nan")])  # fmt: skip
def test_sampler_prediction_wrong_kinds_are_hints(answer, words, capsys):
    rejects(check_sampler_prediction, answer, words, capsys=capsys, args=(_LABELS, _FID, _FID_SE, False))


@pytest.mark.parametrize(
    "args, error, match",
    [
        (("DDIM", _FID, _FID_SE), TypeError, "labels must be a list"),
        ((_LABELS, _FID[:3], _FID_SE), ValueError, "one score and one error per sampler"),
        ((_LABELS, [1, "2", 3, 4], _FID_SE), TypeError, r"scores\[1\] must be a finite number"),
        ((_LABELS, _FID, _FID_SE, "yes"), TypeError, "higher_is_better must be True or False"),
    ],
)
def test_sampler_prediction_own_arguments_follow_the_error_convention(args, error, match, capsys):
    with pytest.raises(error, match=match):
        check_sampler_prediction(4, *args)
    assert outcomes(capsys) == []


# --- the notebook's widget: FastSamplerExplorer (sampler × steps × Karras σ) ----------------------------------------


@pytest.fixture(scope="module")
def tiny_sd():
    pytest.importorskip("ipywidgets")
    from diffusion_lab.training.tiny_sd_io import load_tiny_sd

    return load_tiny_sd()[0]


def test_fast_sampler_explorer_draws_every_setting(tiny_sd):
    from diffusion_lab.course.widgets import FastSamplerExplorer

    ex = FastSamplerExplorer(tiny_sd, ["a one", "a seven"], sampler="Euler", steps=1)
    assert ex.image.value[:8] == b"\x89PNG\r\n\x1a\n"  # drawn at construction
    first = ex.image.value
    ex.spacing.value = "Karras σ"  # a control's change redraws
    assert ex.image.value != first
    assert ex.scheduler("Euler", "Karras σ").config["use_karras_sigmas"] is True
    assert ex.scheduler("DPM++ 2M", "as shipped").config["algorithm_type"] == "dpmsolver++"
    assert type(ex.scheduler("DDIM", "Karras σ")).__name__ == "DDIMScheduler"  # DDIM has no Karras option
    images = ex.images("Heun", 2, "as shipped", seed=3)
    assert images.shape == (2, 1, 28, 28) and images.abs().max() <= 1
    assert torch.equal(images, ex.images("Heun", 2, "as shipped", seed=3)), "the same seed draws the same row"
    assert type(tiny_sd.scheduler).__name__ == "DDIMScheduler", "the pipeline's own scheduler is put back"
    assert FastSamplerExplorer.title("Heun", 4, "as shipped") == "Heun, 4 steps = 7 NFE, as shipped"
    assert "no Karras option" in FastSamplerExplorer.title("DDIM", 4, "Karras σ")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"prompts": "a seven"}, TypeError, "prompts must be a non-empty list"),
        ({"prompts": []}, TypeError, "prompts must be a non-empty list"),
        ({"prompts": ["a one", 7]}, TypeError, r"prompts\[1\] must be a string"),
        ({"prompts": ["a one"] * 11}, ValueError, "at most 10 prompts"),
        ({"sampler": "DPM++ 3M"}, ValueError, "sampler must be one of"),
        ({"spacing": "karras"}, ValueError, "spacing must be one of"),
        ({"steps": 3}, ValueError, "slider's values"),
        ({"steps": True}, TypeError, "steps must be an integer"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
        ({"guidance_scale": float("nan")}, ValueError, "guidance_scale must be finite"),
    ],
)
def test_fast_sampler_explorer_refuses_bad_arguments(kwargs, error, match):
    pytest.importorskip("ipywidgets")
    from diffusion_lab.course.widgets import FastSamplerExplorer

    with pytest.raises(error, match=match):
        FastSamplerExplorer(None, **{"prompts": ["a one"], **kwargs})
