"""Notebook 08's derivation exercises: the velocity an ε-prediction implies, and DDPM's ᾱ at the flow's noise level.

Each checker accepts the right answer in more than one form and answers the plausible wrong ones with a ❌ and the
hint for that mistake (never an exception)."""

from __future__ import annotations

import torch

from diffusion_lab.course.exercises.nb08_flow import check_matched_alpha_bar, check_velocity_from_eps
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
