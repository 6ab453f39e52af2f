"""The self-checks of the exercises of notebooks 12 (fine-tuning) and 13 (model surgery) accept right answers and
explain wrong ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusion_lab.course.exercises.nb12_fine_tuning import (
    check_concatenated_prior_loss,
    check_lora_break_even,
    check_lora_target_prediction,
)
from diffusion_lab.course.exercises.nb13_surgery import (
    check_bitmask_size_ratio,
    check_int8_error_bound,
    check_magnitude_prune,
)


def test_magnitude_prune_check(capsys):
    def prune(w, p):
        k = int(p * w.numel())
        if k == 0:
            return w.clone()
        threshold = w.abs().flatten().kthvalue(k).values
        return torch.where(w.abs() > threshold, w, torch.zeros_like(w))

    def prune_by_rank(w, p):  # sort |w| once, zero the first k positions of the order
        k = int(p * w.numel())
        flat = w.flatten().clone()
        flat[flat.abs().argsort()[:k]] = 0
        return flat.view_as(w)

    def prune_largest(w, p):  # zeroes the k largest magnitudes instead of the k smallest
        k = int(p * w.numel())
        flat = w.flatten().clone()
        flat[flat.abs().argsort(descending=True)[:k]] = 0
        return flat.view_as(w)

    def prune_loop(w, p):  # numpy, one weight at a time against the k-th smallest magnitude
        a = w.numpy().copy().ravel()
        k = int(p * a.size)
        cut = np.sort(np.abs(a))[k - 1] if k else -1.0
        return torch.from_numpy(np.array([0.0 if abs(x) <= cut else x for x in a], dtype=np.float32).reshape(w.shape))

    assert check_magnitude_prune(prune)
    assert check_magnitude_prune(prune_by_rank)
    assert check_magnitude_prune(prune_loop)
    assert capsys.readouterr().out.count("✅") == 3
    assert not check_magnitude_prune(
        lambda w, p: torch.where(w > w.flatten().kthvalue(max(1, int(p * w.numel()))).values, w, 0 * w)
    )
    assert "|w|" in capsys.readouterr().out
    assert not check_magnitude_prune(prune_largest)
    assert "rank the weights by |w|" in capsys.readouterr().out
    assert not check_magnitude_prune(lambda w, p: prune(w, min(p + 0.01, 0.99)))  # one weight too many
    assert "exactly ⌊p·N⌋" in capsys.readouterr().out
    assert not check_magnitude_prune(lambda w, p: w)
    assert "must be zero" in capsys.readouterr().out
    assert not check_magnitude_prune(lambda w, p: w.flatten())
    assert "shaped like w" in capsys.readouterr().out

    def prune_in_place(w, p):  # right zeros, but written into the caller's tensor: the spec asks for a copy
        k = int(p * w.numel())
        if k:
            w[w.abs() <= w.abs().flatten().kthvalue(k).values] = 0
        return w

    assert not check_magnitude_prune(prune_in_place)
    assert "return a copy" in capsys.readouterr().out

    def prune_no_zero_case(w, p):  # kthvalue(0) raises: p = 0 leaves no k-th smallest value
        threshold = w.abs().flatten().kthvalue(int(p * w.numel())).values
        return torch.where(w.abs() > threshold, w, torch.zeros_like(w))

    assert not check_magnitude_prune(prune_no_zero_case)
    assert "at p = 0, k = 0" in capsys.readouterr().out


def test_int8_error_bound_check(capsys):
    def bound(m, per_channel):
        return m / 254 if per_channel else (m.max() / 254).expand_as(m)

    def bound_loop(m, per_channel):  # one channel at a time, as a list turned into a tensor
        top = max(m.tolist())
        return torch.tensor([(x if per_channel else top) / 127 / 2 for x in m.tolist()])

    assert check_int8_error_bound(bound)
    assert check_int8_error_bound(bound_loop)
    assert check_int8_error_bound(lambda m, per_channel: (m if per_channel else torch.full_like(m, m.max())) / 254)
    assert capsys.readouterr().out.count("✅") == 3
    assert not check_int8_error_bound(lambda m, per_channel: 2 * bound(m, per_channel))  # a whole step, not half
    assert "HALF a step" in capsys.readouterr().out
    assert not check_int8_error_bound(lambda m, per_channel: m / 254)  # per channel even when asked per tensor
    assert "one scale for the whole tensor" in capsys.readouterr().out
    assert not check_int8_error_bound(lambda m, per_channel: (m.max() / 254).expand_as(m))  # per tensor always
    assert "its own scale" in capsys.readouterr().out
    assert not check_int8_error_bound(lambda m, per_channel: bound(m, per_channel) * 254 / 256)  # 256 codes
    assert "−127 to 127" in capsys.readouterr().out
    assert not check_int8_error_bound(lambda m, per_channel: bound(m, per_channel) * 1.5)
    assert "wrong per channel" in capsys.readouterr().out
    assert not check_int8_error_bound(lambda m, per_channel: bound(m, per_channel).max())  # one number
    assert "one bound per output channel" in capsys.readouterr().out
    assert not check_int8_error_bound(lambda m, per_channel: None)
    assert "returns None" in capsys.readouterr().out


def test_lora_break_even_check(capsys):
    assert check_lora_break_even(lambda d_out, d_in: d_in * d_out / (d_in + d_out))
    assert check_lora_break_even(
        lambda d_out, d_in: math.ceil(d_in * d_out / (d_in + d_out))
    )  # the first rank that saves nothing
    assert check_lora_break_even(lambda d_out, d_in: np.float32(1 / (1 / d_in + 1 / d_out)))  # half the harmonic mean
    assert capsys.readouterr().out.count("✅") == 3
    assert not check_lora_break_even(lambda d_out, d_in: min(d_in, d_out) / 2)  # right for square layers only
    assert "only for a square layer" in capsys.readouterr().out
    assert not check_lora_break_even(lambda d_out, d_in: d_out / 2)
    assert "only for a square layer" in capsys.readouterr().out
    assert not check_lora_break_even(lambda d_out, d_in: math.sqrt(d_in * d_out))
    assert "r·d_in (A) + d_out·r (B)" in capsys.readouterr().out
    assert not check_lora_break_even(lambda d_out, d_in: (d_in + d_out) / (d_in * d_out))
    assert "upside down" in capsys.readouterr().out
    assert not check_lora_break_even(lambda d_out, d_in: d_in * d_out / (d_in + d_out) + 5)
    assert "wrong for d_out = 64" in capsys.readouterr().out
    assert not check_lora_break_even(lambda d_out, d_in: "32")
    assert "one number" in capsys.readouterr().out
    assert not check_lora_break_even(lambda d_out, d_in: None)
    assert "returns None" in capsys.readouterr().out
    assert not check_lora_break_even(lambda d_out, d_in: 1 / 0)
    assert "ZeroDivisionError" in capsys.readouterr().out


def test_lora_target_prediction_check(capsys):
    # all attention changes the untrained prompt by 0.10, the cross-attention by 0.01, SE 0.01: 1 (more)
    assert check_lora_target_prediction(1, 0.01, 0.10, 0.01)
    assert check_lora_target_prediction(np.int64(1), 0.01, 0.10, 0.01)
    assert check_lora_target_prediction(2, 0.01, 0.02, 0.01)  # 0.01 apart, inside 2 SE
    assert check_lora_target_prediction(3.0, 0.10, 0.01, np.float64(0.01))
    assert capsys.readouterr().out.count("✅") == 4
    assert not check_lora_target_prediction(2, 0.01, 0.10, 0.01)
    assert "whatever its words" in capsys.readouterr().out
    assert not check_lora_target_prediction(3, 0.01, 0.10, 0.01)
    assert "+0.0900 ± 0.0100" in capsys.readouterr().out
    assert not check_lora_target_prediction(1, 0.01, 0.02, 0.01)
    assert "cannot tell them apart" in capsys.readouterr().out
    assert not check_lora_target_prediction(1, 0.10, 0.01, 0.01)
    assert "changed the untrained prompt less" in capsys.readouterr().out
    assert not check_lora_target_prediction(None, 0.01, 0.10, 0.01)
    assert "not done yet" in capsys.readouterr().out
    assert not check_lora_target_prediction("more", 0.01, 0.10, 0.01)
    assert "one of the numbers" in capsys.readouterr().out
    assert not check_lora_target_prediction(4, 0.01, 0.10, 0.01)
    assert "got 4" in capsys.readouterr().out
    with pytest.raises(TypeError, match="change_all"):
        check_lora_target_prediction(1, 0.01, "0.1", 0.01)
    with pytest.raises(ValueError, match="must be >= 0"):
        check_lora_target_prediction(1, 0.01, 0.1, -0.01)


def test_concatenated_prior_loss_check(capsys):
    assert check_concatenated_prior_loss(lambda n, m: (m / n, n / (n + m)))
    assert check_concatenated_prior_loss(lambda n, m: [torch.tensor(m / n), np.float64(n) / (n + m)])

    def by_experiment(n, m):  # fit c and λ from two concatenated MSEs: (a, b) = (1, 0) and (0, 1)
        one = torch.ones(1)
        c = torch.nn.functional.mse_loss(torch.cat([one.expand(n), 0 * one.expand(m)]), torch.zeros(n + m))
        c_lam = torch.nn.functional.mse_loss(torch.cat([0 * one.expand(n), one.expand(m)]), torch.zeros(n + m))
        return (c_lam / c).item(), c.item()

    assert check_concatenated_prior_loss(by_experiment)
    assert capsys.readouterr().out.count("✅") == 3
    assert not check_concatenated_prior_loss(lambda n, m: (1.0, 0.5))
    assert "same size" in capsys.readouterr().out
    assert not check_concatenated_prior_loss(lambda n, m: (n / m, n / (n + m)))
    assert "upside down" in capsys.readouterr().out
    assert not check_concatenated_prior_loss(lambda n, m: (m / n, 1.0))
    assert "c = N/(N + M)" in capsys.readouterr().out
    assert not check_concatenated_prior_loss(lambda n, m: (m / (n + m), n / (n + m)))
    assert "factor N/(N + M) out" in capsys.readouterr().out
    assert not check_concatenated_prior_loss(lambda n, m: (2.0, 3.0))
    assert "wrong for N = 8, M = 8" in capsys.readouterr().out
    assert not check_concatenated_prior_loss(lambda n, m: m / n)
    assert "two numbers" in capsys.readouterr().out
    assert not check_concatenated_prior_loss(lambda n, m: ("1", 0.5))
    assert "two numbers" in capsys.readouterr().out
    assert not check_concatenated_prior_loss(lambda n, m: None)
    assert "returns None" in capsys.readouterr().out


def test_bitmask_size_ratio_check(capsys):
    assert check_bitmask_size_ratio(lambda p: 1 - p + 1 / 32)
    assert check_bitmask_size_ratio(lambda p: (4 * (1 - p) + 1 / 8) / 4)
    assert check_bitmask_size_ratio(lambda p: torch.tensor((1 - p) * 32 + 1, dtype=torch.float64) / 32)
    assert capsys.readouterr().out.count("✅") == 3
    assert not check_bitmask_size_ratio(lambda p: 1 - p)
    assert "mask is stored too" in capsys.readouterr().out
    assert not check_bitmask_size_ratio(lambda p: 1 - p + 1 / 4)
    assert "one *bit*" in capsys.readouterr().out
    assert not check_bitmask_size_ratio(lambda p: p + 1 / 32)
    assert "survivors are (1 − p)" in capsys.readouterr().out
    assert not check_bitmask_size_ratio(lambda p: 1 - p + 1 / 8)
    assert "1/32" in capsys.readouterr().out
    assert not check_bitmask_size_ratio(lambda p: 0.5 * (1 - p) + 1 / 32)
    assert "wrong at p = 0.5" in capsys.readouterr().out
    assert not check_bitmask_size_ratio(lambda p: "0.53")
    assert "one number" in capsys.readouterr().out
    assert not check_bitmask_size_ratio(lambda p: None)
    assert "returns None" in capsys.readouterr().out
