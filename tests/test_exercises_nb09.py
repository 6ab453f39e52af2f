"""Notebook 09's exercises: the explicit midpoint step (write a step not shown in the notebook), DPM-Solver++(2M) in
DDPM's scale (derive and write, equal to the library's step), and the prediction of the best sampler at 4 network
evaluations (judged against the measurement's paired error bars).

Each checker accepts the right answer in more than one form and answers the plausible wrong ones with a ❌ and the
hint for that mistake (never an exception)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from checker_asserts import accepts, outcomes, rejects

from diffusion_lab.course.exercises import check_dpmpp_2m_step, check_midpoint_step, check_sampler_prediction
from diffusion_lab.maths.solvers import dpmpp_first_order_step, dpmpp_second_order_step, euler_step, ode_derivative

# --- Exercise 1: the explicit midpoint step ---------------------------------------------------------------------


def _midpoint_library(x, sigma, sigma_next, denoise):  # the library's pure functions: two Euler steps in σ
    sigma_mid = (sigma + sigma_next) / 2
    x_mid = euler_step(x, denoise(x, sigma), sigma, sigma_mid)
    d_mid = ode_derivative(x_mid, denoise(x_mid, sigma_mid), sigma_mid)
    return x + (sigma_next - sigma) * d_mid


def _midpoint_by_hand(x, sigma, sigma_next, denoise):
    h = sigma_next - sigma
    x_mid = x + h / 2 * (x - denoise(x, sigma)) / sigma
    s_mid = sigma + h / 2
    return x + h * (x_mid - denoise(x_mid, s_mid)) / s_mid


def _midpoint_numpy(x, sigma, sigma_next, denoise):
    return _midpoint_by_hand(x, sigma, sigma_next, denoise).numpy()


def test_midpoint_step_accepts_the_library_and_the_derivation(capsys):
    accepts(check_midpoint_step, _midpoint_library, _midpoint_by_hand, _midpoint_numpy, capsys=capsys)


def _slope(x, s, denoise):
    return (x - denoise(x, s)) / s


def _heun(x, s, sn, D):
    guess = x + (sn - s) * _slope(x, s, D)
    return guess if sn == 0 else x + (sn - s) * (_slope(x, s, D) + _slope(guess, sn, D)) / 2


def _mid_state(x, s, sn, D):
    return x + (sn - s) / 2 * _slope(x, s, D)


@pytest.mark.parametrize(
    "fn, words",
    [
        (lambda x, s, sn, D: x + (sn - s) * _slope(x, s, D), "Euler's step"),
        (_heun, "Heun's step"),
        (lambda x, s, sn, D: x + (sn - s) * _slope(_mid_state(x, s, sn, D), s, D), "belongs to σ_m"),
        (lambda x, s, sn, D: x + (sn - s) * _slope(x + (sn - s) * _slope(x, s, D), (s + sn) / 2, D), "half an Euler step"),
        (lambda x, s, sn, D: _mid_state(x, s, sn, D) + (sn - s) * _slope(_mid_state(x, s, sn, D), (s + sn) / 2, D),
         "not from x_m"),
        (lambda x, s, sn, D: x + (sn - s) / 2 * _slope(_mid_state(x, s, sn, D), (s + sn) / 2, D), "whole way"),
        (lambda x, s, sn, D: x - (sn - s) * _slope(x - (sn - s) / 2 * _slope(x, s, D), s - (sn - s) / 2, D), "wrong way"),
        (lambda x, s, sn, D: x + (sn - s) * _slope(_mid_state(x, s, sn, D), (s * sn) ** 0.5, D), "geometric mean"),
        (lambda x, s, sn, D: x + (sn - s) * _slope(x, s, D) if sn == 0 else _midpoint_by_hand(x, s, sn, D),
         "no step is special"),
    ],
)  # fmt: skip
def test_midpoint_step_explains_the_usual_mistakes(fn, words, capsys):
    rejects(check_midpoint_step, fn, words, capsys=capsys)


def test_midpoint_step_placeholder_and_errors_are_hints(capsys):
    rejects(check_midpoint_step, lambda x, s, sn, D: None, "returns None", capsys=capsys)
    rejects(check_midpoint_step, lambda x, s, sn, D: 1 / 0, "raised ZeroDivisionError", capsys=capsys)
    rejects(check_midpoint_step, lambda x, s, sn, D: x[:2], "shape", capsys=capsys)
    with pytest.raises(TypeError, match="pass your function itself"):
        check_midpoint_step(None)


# --- Exercise 3: DPM-Solver++(2M) in DDPM's scale ---------------------------------------------------------------


def _h(a_s, s_s, a_t, s_t):
    return math.log(a_t / s_t) - math.log(a_s / s_s)


def _dpm2m(x_s, x0, x0_prev, a_s, s_s, a_t, s_t, h_prev):
    h = _h(a_s, s_s, a_t, s_t)
    D1 = (x0 - x0_prev) / (h_prev / h)
    return (s_t / s_s) * x_s + a_t * (1 - math.exp(-h)) * (x0 + 0.5 * D1)


def _dpm2m_library(x_s, x0, x0_prev, a_s, s_s, a_t, s_t, h_prev):
    h = torch.tensor(_h(a_s, s_s, a_t, s_t), dtype=torch.float64)
    return dpmpp_second_order_step(x_s, x0, x0_prev, a_t, s_t, s_s, h, torch.tensor(h_prev, dtype=torch.float64))


def _dpm2m_alg2_weights(x_s, x0, x0_prev, a_s, s_s, a_t, s_t, h_prev):  # Alg. 2's D = (1 + 1/(2r))·x̂₀ − 1/(2r)·x̂₀^prev
    h = _h(a_s, s_s, a_t, s_t)
    r = h_prev / h
    D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
    e = (s_t * a_s) / (a_t * s_s)  # e^{−h} from the α, σ directly
    return (s_t / s_s) * x_s - a_t * (e - 1) * D


def test_dpmpp_2m_step_accepts_the_derivation_the_library_and_alg2(capsys):
    accepts(check_dpmpp_2m_step, _dpm2m, _dpm2m_library, _dpm2m_alg2_weights, capsys=capsys)


def _first(x_s, x0, x0_prev, a_s, s_s, a_t, s_t, h_prev):
    h = torch.tensor(_h(a_s, s_s, a_t, s_t), dtype=torch.float64)
    return dpmpp_first_order_step(x_s, x0, a_t, s_t, s_s, h)


def _variant(kind):
    def fn(x_s, x0, x0_prev, a_s, s_s, a_t, s_t, h_prev):
        h = _h(a_s, s_s, a_t, s_t)
        r, w = h_prev / h, 1 - math.exp(-h)
        D1 = (x0 - x0_prev) / r
        if kind == "r inverted":
            return (s_t / s_s) * x_s + a_t * w * (x0 + 0.5 * (x0 - x0_prev) * r)
        if kind == "no half":
            return (s_t / s_s) * x_s + a_t * w * (x0 + D1)
        if kind == "backwards":
            return (s_t / s_s) * x_s + a_t * w * (x0 + 0.5 * (x0_prev - x0) / r)
        if kind == "heun":
            return (s_t / s_s) * x_s + a_t * w * x0 + a_t * (1 - w / h) * D1
        if kind == "no α_t":
            return (s_t / s_s) * x_s + w * (x0 + 0.5 * D1)
        if kind == "e^{+h}":
            return (s_t / s_s) * x_s + a_t * (1 - math.exp(h)) * (x0 + 0.5 * D1)
        if kind == "ratio":
            return (s_s / s_t) * x_s + a_t * w * (x0 + 0.5 * D1)
        return math.exp(-h) * x_s + w * (x0 + 0.5 * D1)  # the σ-scale form on x_s

    return fn


@pytest.mark.parametrize(
    "fn, words",
    [
        (_first, "first-order step (DDIM)"),
        (_variant("r inverted"), "divide by r"),
        (_variant("no half"), "D0 + ½·D1"),
        (_variant("backwards"), "extrapolate forward"),
        (_variant("heun"), "solver_type='heun'"),
        (_variant("no α_t"), "carry α_t"),
        (_variant("e^{+h}"), "1 − e^{−h}"),
        (_variant("ratio"), "σ_t/σ_s"),
        (_variant("σ-scale"), "x = α·x̄"),
        (lambda x, x0, x0p, a_s, s_s, a_t, s_t, hp: x0, "the line at the middle"),
        (lambda x, x0, x0p, a_s, s_s, a_t, s_t, hp: None, "returns None"),
        (lambda x, x0, x0p, a_s, s_s, a_t, s_t, hp: x.mean(0), "shape"),
    ],
)  # fmt: skip
def test_dpmpp_2m_step_explains_the_usual_mistakes(fn, words, capsys):
    rejects(check_dpmpp_2m_step, fn, words, capsys=capsys)


def test_dpmpp_2m_step_wrong_sign_of_lambda_gets_its_own_hint(capsys):
    def wrong_sign(x_s, x0, x0_prev, a_s, s_s, a_t, s_t, h_prev):  # λ = log(σ/α): h < 0, r < 0
        h = math.log(s_t / a_t) - math.log(s_s / a_s)
        D1 = (x0 - x0_prev) / (h_prev / h)
        return (s_t / s_s) * x_s + a_t * (1 - math.exp(-h)) * (x0 + 0.5 * D1)

    rejects(check_dpmpp_2m_step, wrong_sign, "wrong sign", "log(α/σ)", capsys=capsys)


def test_dpmpp_2m_step_ddim_is_not_enough(capsys):  # DDIM's step is the first-order one: not accepted here
    def ddim(x_s, x0, x0_prev, a_s, s_s, a_t, s_t, h_prev):
        return a_t * x0 + s_t * (x_s - a_s * x0) / s_s

    rejects(check_dpmpp_2m_step, ddim, "first-order step (DDIM)", capsys=capsys)


# --- Exercise 2: which sampler wins at 4 NFE ------------------------------------------------------------------------

_LABELS = ("DDIM", "Euler", "Heun", "DPM++ 2M")
_FID = [400.0, 420.0, 900.0, 300.0]  # lower is better: 4 (DPM++ 2M) has the best point estimate
_FID_SE = [[0.0, 5.0, 30.0, 20.0], [5.0, 0.0, 30.0, 20.0], [30.0, 30.0, 0.0, 30.0], [20.0, 20.0, 30.0, 0.0]]
_ADH = [0.90, 0.88, 0.60, 0.91]  # higher is better: 1 is within 2 paired SE of 4, 2 is not
_ADH_SE = [[0.0, 0.004, 0.02, 0.006], [0.004, 0.0, 0.02, 0.006], [0.02, 0.02, 0.0, 0.02], [0.006, 0.006, 0.02, 0.0]]


def test_sampler_prediction_accepts_the_best_in_any_number_form(capsys):
    accepts(check_sampler_prediction, 4, 4.0, np.int64(4), torch.tensor(4), capsys=capsys,
            args=(_LABELS, _FID, np.array(_FID_SE), False))  # fmt: skip


def test_sampler_prediction_a_tie_is_right_and_says_who_had_the_best_estimate(capsys):
    assert check_sampler_prediction(1, _LABELS, _ADH, _ADH_SE, True) is True
    (line,) = outcomes(capsys)
    assert line.startswith("✅") and "DPM++ 2M has the best point estimate" in line and "cannot separate" in line


def test_sampler_prediction_judges_with_paired_errors(capsys):
    # Euler is 0.03 behind the best: within two unpaired SEs of 0.01 each (2·0.014), but 5 paired SEs (0.006)
    rejects(check_sampler_prediction, 2, "DPM++ 2M has the best point estimate", "paired", capsys=capsys,
            args=(_LABELS, _ADH, _ADH_SE, True))  # fmt: skip
    # DDIM is 100 behind the best (5 paired SEs): refuted by DPM++ 2M
    rejects(check_sampler_prediction, 1, "DPM++ 2M beats it by 100", "5.0 paired standard errors", capsys=capsys,
            args=(_LABELS, _FID, _FID_SE, False))  # fmt: skip


def test_sampler_prediction_is_refuted_by_any_sampler_clearly_better_not_only_the_best(capsys):
    # 3 is within 2 paired SE of the best (1, whose paired SE with 3 is large) but 2 beats it clearly
    labels, fid = ("A", "B", "C"), [100.0, 104.0, 110.0]
    se = [[0.0, 1.0, 20.0], [1.0, 0.0, 2.0], [20.0, 2.0, 0.0]]
    rejects(check_sampler_prediction, 3, "A has the best point estimate", "B beats it by 6", capsys=capsys,
            args=(labels, fid, se, False))  # fmt: skip
    accepts(check_sampler_prediction, 1, capsys=capsys, args=(labels, fid, se, False))
    rejects(check_sampler_prediction, 2, "A beats it by 4", capsys=capsys, args=(labels, fid, se, False))


def test_sampler_prediction_a_large_paired_se_does_not_rescue_a_sampler_below_a_refuted_one(capsys):
    # notebook 09's measurement at 4 NFE: Euler a (192.1) is within 2 paired SE of every sampler (its fresh noise makes
    # its paired SEs ~15) but ranks below DDIM (176.2), which DPM++ 2M beats by 7.1 ± 3.1
    labels = ("DDIM", "Euler", "Heun", "DPM++ 2M", "DPM++ 2M Karras", "Euler a")
    fid = [176.2, 176.3, 333.6, 169.1, 165.6, 192.1]
    se = [[0.0, 0.1, 20.0, 3.1, 6.0, 14.8], [0.1, 0.0, 20.0, 3.1, 6.0, 14.8], [20.0, 20.0, 0.0, 20.0, 20.0, 20.0],
          [3.1, 3.1, 20.0, 0.0, 6.7, 15.0], [6.0, 6.0, 20.0, 6.7, 0.0, 15.0], [14.8, 14.8, 20.0, 15.0, 15.0, 0.0]]  # fmt: skip
    rejects(check_sampler_prediction, 6, "ranks 5 of 6", "below DDIM", "DPM++ 2M beats by 7.1", "15 against DPM++ 2M Karras", "breaks the pairing",
            capsys=capsys, args=(labels, fid, se, False))  # fmt: skip
    accepts(check_sampler_prediction, 4, 5, capsys=capsys, args=(labels, fid, se, False))
    for wrong in (1, 2, 3):
        rejects(
            check_sampler_prediction, wrong, "has the best point estimate", capsys=capsys, args=(labels, fid, se, False)
        )
    check_sampler_prediction(4, labels, fid, se, False)
    (line,) = outcomes(capsys)
    assert "ranks 2 of 6" in line and "cannot separate" in line


def test_sampler_prediction_rejects_a_loser_with_the_measurement(capsys):
    rejects(check_sampler_prediction, 3, "DPM++ 2M has the best point estimate", "Heun scores 900", "log σ", capsys=capsys,
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
        ((_LABELS, _FID[:3], _FID_SE), ValueError, "one score per sampler"),
        ((_LABELS, [1, "2", 3, 4], _FID_SE), TypeError, r"scores\[1\] must be a finite number"),
        ((_LABELS, _FID, [20.0] * 4), TypeError, r"errors\[0\] must be a list"),
        ((_LABELS, _FID, _FID_SE[:3]), ValueError, "4 × 4 table"),
        ((_LABELS, _FID, "big"), TypeError, "table of paired standard errors"),
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
