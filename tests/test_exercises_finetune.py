"""The self-checks of the exercises of notebooks 12 (fine-tuning) and 13 (model surgery) accept right answers and
explain wrong ones."""

from __future__ import annotations

import numpy as np
import torch

from diffusion_lab.course.exercises.nb12_fine_tuning import (
    check_lora_forward,
    check_lora_parameter_count,
    check_lora_target_choice,
    check_prior_preservation_loss,
)
from diffusion_lab.course.exercises.nb13_surgery import (
    check_bitmask_size_ratio,
    check_int8_error_bound,
    check_magnitude_prune,
)


def test_lora_forward_check(capsys):
    assert check_lora_forward(lambda x, W, A, B, a: x @ W.T + (a / A.shape[0]) * (x @ A.T) @ B.T)
    assert check_lora_forward(lambda x, W, A, B, a: torch.nn.functional.linear(x, W + a / len(A) * B @ A))  # merged
    assert capsys.readouterr().out.count("✅") == 2
    assert not check_lora_forward(lambda x, W, A, B, a: x @ W.T + a * x @ A.T @ B.T)
    assert "α/r" in capsys.readouterr().out
    assert not check_lora_forward(lambda x, W, A, B, a: (a / A.shape[0]) * x @ A.T @ B.T)
    assert "frozen layer" in capsys.readouterr().out
    assert not check_lora_forward(lambda x, W, A, B, a: x @ W.T)
    assert "wrong for r = 2, α = 4.0" in capsys.readouterr().out
    assert not check_lora_forward(lambda x, W, A, B, a: x @ W.T + x @ A.T @ B.T)  # α/r forgotten (α ≠ r)
    assert "scaled by α/r" in capsys.readouterr().out
    assert not check_lora_forward(lambda x, W, A, B, a: (x @ W.T + (a / A.shape[0]) * x @ A.T @ B.T).T)
    assert "return one output row per input" in capsys.readouterr().out
    assert not check_lora_forward(lambda x, W, A, B, a: None)
    assert "returns None" in capsys.readouterr().out


def test_prior_preservation_loss_check(capsys):
    mse = lambda a, b: (a - b).pow(2).mean()  # noqa: E731
    F = torch.nn.functional
    assert check_prior_preservation_loss(lambda p, t, pp, tp, lam: mse(p, t) + lam * mse(pp, tp))
    assert check_prior_preservation_loss(lambda p, t, pp, tp, lam: F.mse_loss(p, t) + lam * F.mse_loss(pp, tp))

    def loop(p, t, pp, tp, lam):  # number by number in Python floats
        def sq(a, b):
            return (
                sum((x - y) ** 2 for x, y in zip(a.flatten().tolist(), b.flatten().tolist(), strict=True)) / a.numel()
            )

        return torch.tensor(sq(p, t) + lam * sq(pp, tp))

    assert check_prior_preservation_loss(loop)
    assert capsys.readouterr().out.count("✅") == 3
    assert not check_prior_preservation_loss(lambda p, t, pp, tp, lam: mse(p, t) + mse(pp, tp))
    assert "prior_weight" in capsys.readouterr().out
    assert not check_prior_preservation_loss(lambda p, t, pp, tp, lam: mse(p, t))
    assert "add the prior term" in capsys.readouterr().out
    assert not check_prior_preservation_loss(
        lambda p, t, pp, tp, lam: (p - t).abs().mean() + lam * (pp - tp).abs().mean()
    )
    assert "*squared* errors" in capsys.readouterr().out
    assert not check_prior_preservation_loss(lambda p, t, pp, tp, lam: mse(p, t) + lam * mse(pp, t))  # wrong target
    assert "wrong for λ = 1.0" in capsys.readouterr().out
    assert not check_prior_preservation_loss(lambda p, t, pp, tp, lam: (p - t).pow(2) + lam * (pp - tp).pow(2))
    assert "0-d" in capsys.readouterr().out
    assert not check_prior_preservation_loss(lambda p, t, pp, tp, lam: 1 / 0)
    assert "ZeroDivisionError" in capsys.readouterr().out


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


def test_lora_parameter_count_check(capsys):
    assert check_lora_parameter_count(lambda shapes, r: sum(r * (i + o) for o, i in shapes))
    assert check_lora_parameter_count(lambda shapes, r: int(torch.tensor(shapes).sum() * r))  # a tensor, summed
    assert check_lora_parameter_count(lambda shapes, r: np.int64(sum(r * o + i * r for o, i in shapes)))
    assert capsys.readouterr().out.count("✅") == 3
    assert not check_lora_parameter_count(lambda shapes, r: sum(i * o for o, i in shapes))
    assert "full layers' size" in capsys.readouterr().out
    assert not check_lora_parameter_count(lambda shapes, r: sum(r * i * o for o, i in shapes))
    assert "do not multiply" in capsys.readouterr().out
    assert not check_lora_parameter_count(lambda shapes, r: r * (shapes[0][0] + shapes[0][1]))
    assert "every layer" in capsys.readouterr().out
    assert not check_lora_parameter_count(lambda shapes, r: sum(r * i for o, i in shapes))
    assert "both factors" in capsys.readouterr().out
    assert not check_lora_parameter_count(lambda shapes, r: sum(r * r * (i + o) for o, i in shapes))
    assert "wrong for shapes" in capsys.readouterr().out
    assert not check_lora_parameter_count(lambda shapes, r: 2.5)
    assert "whole number" in capsys.readouterr().out
    assert not check_lora_parameter_count(lambda shapes, r: None)
    assert "returns None" in capsys.readouterr().out
    assert not check_lora_parameter_count(lambda shapes, r: shapes[5])
    assert "IndexError" in capsys.readouterr().out


def test_lora_target_choice_check(capsys):
    assert check_lora_target_choice(1)
    assert check_lora_target_choice(np.int64(1))
    assert check_lora_target_choice(1.0)
    assert capsys.readouterr().out.count("✅") == 3
    assert not check_lora_target_choice(2)
    assert "self-attention" in capsys.readouterr().out
    assert not check_lora_target_choice(3)
    assert "convolutions" in capsys.readouterr().out
    assert not check_lora_target_choice(None)
    assert "not done yet" in capsys.readouterr().out
    assert not check_lora_target_choice(4)
    assert "got 4" in capsys.readouterr().out
    assert not check_lora_target_choice("cross-attention")
    assert "one of the numbers" in capsys.readouterr().out
    assert not check_lora_target_choice(True)
    assert "one of the numbers" in capsys.readouterr().out


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
