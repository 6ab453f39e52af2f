"""The self-checks of notebook 11's exercises accept right answers and explain wrong ones."""

from __future__ import annotations

import torch

from diffusion_lab.exercises import check_lora_forward, check_magnitude_prune, check_prior_preservation_loss


def test_lora_forward_check(capsys):
    assert check_lora_forward(lambda x, W, A, B, a: x @ W.T + (a / A.shape[0]) * (x @ A.T) @ B.T)
    assert check_lora_forward(lambda x, W, A, B, a: torch.nn.functional.linear(x, W + a / len(A) * B @ A))  # merged
    assert capsys.readouterr().out.count("✅") == 2
    assert not check_lora_forward(lambda x, W, A, B, a: x @ W.T + a * x @ A.T @ B.T)
    assert "α/r" in capsys.readouterr().out
    assert not check_lora_forward(lambda x, W, A, B, a: (a / A.shape[0]) * x @ A.T @ B.T)
    assert "frozen layer" in capsys.readouterr().out
    assert not check_lora_forward(lambda x, W, A, B, a: x @ W.T)
    assert not check_lora_forward(lambda x, W, A, B, a: None)
    assert "returns None" in capsys.readouterr().out


def test_prior_preservation_loss_check(capsys):
    mse = lambda a, b: (a - b).pow(2).mean()  # noqa: E731
    assert check_prior_preservation_loss(lambda p, t, pp, tp, lam: mse(p, t) + lam * mse(pp, tp))
    assert "✅" in capsys.readouterr().out
    assert not check_prior_preservation_loss(lambda p, t, pp, tp, lam: mse(p, t) + mse(pp, tp))
    assert "prior_weight" in capsys.readouterr().out
    assert not check_prior_preservation_loss(lambda p, t, pp, tp, lam: mse(p, t))
    assert "add the prior term" in capsys.readouterr().out
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

    assert check_magnitude_prune(prune)
    assert "✅" in capsys.readouterr().out
    assert not check_magnitude_prune(
        lambda w, p: torch.where(w > w.flatten().kthvalue(max(1, int(p * w.numel()))).values, w, 0 * w)
    )
    assert "|w|" in capsys.readouterr().out
    assert not check_magnitude_prune(lambda w, p: w)
    assert "must be zero" in capsys.readouterr().out
    assert not check_magnitude_prune(lambda w, p: w.flatten())
    assert "shaped like w" in capsys.readouterr().out
