"""The exercise checkers of notebook 03 that need thought: the flow path in DDIM's (σ, x̄) coordinates and the order
of DDIM inversion's error. Each accepts the right answer (in more than one form) and rejects plausible wrong ones with
a hint that names the mistake."""

from __future__ import annotations

import numpy as np
import torch
from checker_asserts import accepts as _accepts
from checker_asserts import rejects as _rejects

from diffusion_lab.course.exercises.nb03_samplers import check_flow_sigma, check_inversion_order


def test_flow_sigma_accepts_b_over_a(capsys):
    def by_coefficients(t):
        a, b = 1 - t, t  # x_t = a·x_0 + b·ε on the flow path
        return b / a

    _accepts(check_flow_sigma, by_coefficients, lambda t: t / (1 - t), lambda t: (t / (1 - t)).numpy(), capsys=capsys)


def test_flow_sigma_rejects_plausible_mistakes(capsys):
    _rejects(check_flow_sigma, lambda t: t, "divide", capsys=capsys)  # b_t alone
    _rejects(check_flow_sigma, lambda t: (1 - t) / t, "upside down", capsys=capsys)
    _rejects(check_flow_sigma, lambda t: (t / (1 - t)).sqrt(), "not of variances", capsys=capsys)
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
