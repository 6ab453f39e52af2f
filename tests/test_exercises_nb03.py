"""The exercise checkers of notebook 03 that need thought: the flow path in DDIM's (σ, x̄) coordinates, the flow time
with DDPM's noise level, the order of DDIM inversion's error and why DDIM's step misses a grid that n does not divide. Each accepts the right answer (in more than one form) and rejects plausible wrong ones with
a hint that names the mistake."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from checker_asserts import accepts as _accepts
from checker_asserts import rejects as _rejects

from diffusion_lab.course.exercises.nb03_samplers import (
    check_flow_sigma,
    check_flow_time,
    check_inversion_order,
    check_skip_reason,
)


def test_flow_sigma_accepts_b_over_a(capsys):
    def by_coefficients(t):
        a, b = 1 - t, t  # x_t = a·x_0 + b·ε on the flow path
        return b / a

    _accepts(check_flow_sigma, by_coefficients, lambda t: t / (1 - t), lambda t: (t / (1 - t)).numpy(), capsys=capsys)


def test_flow_sigma_rejects_plausible_mistakes(capsys):
    _rejects(check_flow_sigma, lambda t: t, "divide", capsys=capsys)  # b_t alone
    _rejects(check_flow_sigma, lambda t: (1 - t) / t, "upside down", capsys=capsys)
    _rejects(check_flow_sigma, lambda t: (t / (1 - t)).sqrt(), "ᾱ = 1 − t", capsys=capsys)  # DDPM's σ, ᾱ = 1 − t
    _rejects(check_flow_sigma, lambda t: t / (1 - t**2).sqrt(), "not variance-preserving", capsys=capsys)
    _rejects(check_flow_sigma, lambda t: (1 - t) / (1 + t), "coefficient of x_0", capsys=capsys)
    _rejects(check_flow_sigma, lambda t: None, "returns None", capsys=capsys)
    _rejects(check_flow_sigma, lambda t: (t / (1 - t))[:3], "shape", capsys=capsys)
    _rejects(check_flow_sigma, lambda t: 1 / 0, "ZeroDivisionError", capsys=capsys)


def test_inversion_order_accepts_two(capsys):
    _accepts(check_inversion_order, 2, 2.0, np.float64(1.9), torch.tensor(2.1), capsys=capsys)


def test_inversion_order_rejects_plausible_mistakes(capsys):
    _rejects(check_inversion_order, 1, "its square", capsys=capsys)  # the order of the error, not of the MSE
    _rejects(check_inversion_order, 4, "first order", capsys=capsys)  # squared twice
    _rejects(check_inversion_order, -2, "positive", capsys=capsys)
    _rejects(check_inversion_order, 0.5, "Euler", capsys=capsys)
    _rejects(check_inversion_order, None, "predicted_p", capsys=capsys)
    _rejects(check_inversion_order, "two", "one number", capsys=capsys)
    _rejects(check_inversion_order, [2, 2], "one number", capsys=capsys)


AB_800 = 0.0931  # ᾱ at DDPM's t = 800 (cosine schedule), as the notebook passes it
SIGMA_800 = ((1 - AB_800) / AB_800) ** 0.5


def test_flow_time_accepts_sigma_over_one_plus_sigma(capsys):
    by_coefficients = (1 - AB_800) ** 0.5 / (AB_800**0.5 + (1 - AB_800) ** 0.5)
    _accepts(check_flow_time, by_coefficients, SIGMA_800 / (1 + SIGMA_800), np.float32(by_coefficients),
             torch.tensor(by_coefficients), capsys=capsys, args=(AB_800,))  # fmt: skip


def test_flow_time_rejects_plausible_mistakes(capsys):
    _rejects(check_flow_time, 0.8, "σ = t/(1 − t)", capsys=capsys, args=(AB_800,))  # the clock 800/1000, not the noise
    _rejects(check_flow_time, SIGMA_800, "σ itself", capsys=capsys, args=(AB_800,))
    _rejects(check_flow_time, (1 - AB_800) ** 0.5, "noise coefficients", capsys=capsys, args=(AB_800,))
    _rejects(check_flow_time, 1 - AB_800, "variance", capsys=capsys, args=(AB_800,))
    _rejects(check_flow_time, 1 - AB_800**0.5, "signal coefficients", capsys=capsys, args=(AB_800,))
    _rejects(check_flow_time, None, "flow_t", capsys=capsys, args=(AB_800,))
    _rejects(check_flow_time, "0.76", "one number", capsys=capsys, args=(AB_800,))


def test_flow_time_own_argument_follows_the_error_convention():
    with pytest.raises(ValueError, match="abar"):
        check_flow_time(0.5, 1.0)
    with pytest.raises(TypeError, match="abar"):
        check_flow_time(0.5, "0.09")


def test_skip_reason_accepts_the_uneven_gaps(capsys):
    _accepts(check_skip_reason, 2, 2.0, np.int64(2), torch.tensor(2), capsys=capsys)


def test_skip_reason_rejects_the_other_reasons(capsys):
    _rejects(check_skip_reason, 1, "gaps", capsys=capsys)
    _rejects(check_skip_reason, 3, "gaps", capsys=capsys)
    _rejects(check_skip_reason, 4, "1, 2, 3", capsys=capsys)
    _rejects(check_skip_reason, "2", "1, 2, 3", capsys=capsys)
    _rejects(check_skip_reason, None, "set why", capsys=capsys)
