"""Notebook 08's exercises: the velocity an ε-prediction implies, DDPM's ᾱ at the flow's noise level (derivations),
and the prediction of the best timestep shift for three toy steps (judged against the measurement's error bar).

Each checker accepts the right answer in more than one form and answers the plausible wrong ones with a ❌ and the
hint for that mistake (never an exception)."""

from __future__ import annotations

import pytest
import torch

from diffusion_lab.course.exercises.nb08_flow import (
    check_matched_alpha_bar,
    check_shift_prediction,
    check_velocity_from_eps,
)
from diffusion_lab.maths.flow import flow_predict_x0


def _tb(t):  # (B,) → (B, 1, 1, 1)
    return t[:, None, None, None]


def test_velocity_from_eps_accepts_the_derivation_in_two_forms(capsys):
    assert check_velocity_from_eps(lambda x, e, t: (e - x) / (1 - _tb(t)))

    def via_x0(x, e, t):  # x̂₀ from x_t = (1 − t)·x̂₀ + t·ε̂, then v̂ = ε̂ − x̂₀
        # (checked against the library's inverse, x̂₀ = x_t − t·v̂)
        x0 = (x - _tb(t) * e) / (1 - _tb(t))
        v = e - x0
        torch.testing.assert_close(flow_predict_x0(x, v, t), x0, rtol=0, atol=1e-4)
        return v

    assert check_velocity_from_eps(via_x0)
    assert capsys.readouterr().out.count("✅") == 2


def test_velocity_from_eps_explains_the_usual_mistakes(capsys):
    cases = [
        (lambda x, e, t: (x - e) / (1 - _tb(t)), "sign is flipped"),
        (lambda x, e, t: e - x, "at t = 0 only"),
        (lambda x, e, t: e - (x - _tb(t) * e), "x̂₀ is not x_t − t·ε̂"),
        (lambda x, e, t: (e - x) / _tb(t), "not by t"),
        (lambda x, e, t: e, "solve for x̂₀"),
        (lambda x, e, t: (e - x) / (1 - t), "raised"),  # t not broadcast
        (lambda x, e, t: None, "returns None"),
        (lambda x, e, t: (e - x).mean(0), "shape"),
    ]
    for fn, hint in cases:
        assert check_velocity_from_eps(fn) is False
        out = capsys.readouterr().out
        assert out.startswith("❌") and hint in out, (hint, out)


def test_matched_alpha_bar_accepts_the_derivation_in_two_forms(capsys):
    assert check_matched_alpha_bar(lambda t: (1 - t) ** 2 / ((1 - t) ** 2 + t**2))
    assert check_matched_alpha_bar(lambda t: 1 / (1 + (t / (1 - t)) ** 2))  # 1/(1 + σ²); t = 1 gives 1/inf = 0
    assert capsys.readouterr().out.count("✅") == 2


def test_matched_alpha_bar_explains_the_usual_mistakes(capsys):
    cases = [
        (lambda t: (1 - t) ** 2, "a² + b² = 1"),
        (lambda t: 1 - t, "square the ratio"),
        (lambda t: t**2 / ((1 - t) ** 2 + t**2), "1 − ᾱ"),
        (lambda t: 1 / (1 + t**2), "solve for ᾱ"),
        (lambda t: "0.5", "tensor"),
        (lambda t: t[:3], "shape"),
    ]
    for fn, hint in cases:
        assert check_matched_alpha_bar(fn) is False
        out = capsys.readouterr().out
        assert out.startswith("❌") and hint in out, (hint, out)


_SHIFTS, _SW, _SE = (1 / 3, 1.0, 3.0), [0.327, 0.252, 0.436], [0.023, 0.015, 0.017]  # the toy's measurement


def test_shift_prediction_accepts_the_best_shift_in_any_number_form(capsys):
    for answer in (1, 1.0, torch.tensor(1.0)):
        assert check_shift_prediction(answer, _SHIFTS, _SW, _SE)
    assert check_shift_prediction(0.33, _SHIFTS, [0.26, 0.252, 0.436], _SE)  # 1/3 within the error bar of the best
    assert capsys.readouterr().out.count("✅") == 4


def test_shift_prediction_explains_the_wrong_ones(capsys):
    cases = [
        (None, "not done yet"),
        (1 / 3, "too far towards the data"),
        (3, "(the worst): it moves the steps too far towards the noise"),
        (2, "choose one of the measured shifts (0.333, 1, 3)"),
        ("1", "got a str"),
        (True, "got a bool"),
    ]
    for answer, hint in cases:
        assert check_shift_prediction(answer, _SHIFTS, _SW, _SE) is False
        out = capsys.readouterr().out
        assert out.startswith("❌") and hint in out, (hint, out)


def test_shift_prediction_own_arguments_follow_the_error_convention():
    with pytest.raises(TypeError, match="scores must be a list of numbers"):
        check_shift_prediction(1.0, _SHIFTS, "0.3 0.2", _SE)
    with pytest.raises(ValueError, match="one score and one error per shift"):
        check_shift_prediction(1.0, _SHIFTS, _SW[:2], _SE)
