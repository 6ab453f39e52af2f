"""The self-checks of the exercises of notebooks 14-16 (super-resolution, ControlNet, variations and video) accept
right answers and explain wrong ones."""

from __future__ import annotations

import math

import numpy as np
import torch

from diffusion_lab.course.exercises.nb14_super_resolution import check_averaging_gain, check_low_res_snr_crossing
from diffusion_lab.course.exercises.nb15_controlnet import (
    check_control_keep,
    check_controlled_steps,
    check_hint_init_prediction,
    check_zero_conv_grads,
)
from diffusion_lab.course.exercises.nb16_variations import (
    check_dial_prediction,
    check_half_cosine_level,
    check_noise_image_embedding,
)


def test_averaging_gain_check(capsys):
    assert check_averaging_gain(lambda n: 10 * math.log10(2 * n / (n + 1)))
    assert check_averaging_gain(lambda n: 10 * torch.log10(torch.tensor(2.0)) - 10 * math.log10(1 + 1 / n))
    assert check_averaging_gain(lambda n: 10 * np.log10((2 * n) / (n + 1)))  # a NumPy scalar
    assert capsys.readouterr().out.count("✅") == 3
    assert not check_averaging_gain(lambda n: 10 * math.log10(n))  # the truth taken as the posterior mean
    assert "one more draw" in capsys.readouterr().out
    assert not check_averaging_gain(lambda n: 20 * math.log10(2 * n / (n + 1)))
    assert "ratio of powers" in capsys.readouterr().out
    assert not check_averaging_gain(lambda n: 10 * math.log10(n / (n + 1)))  # MSE₁ = σ² (the truth's d₀ forgotten)
    assert "MSE₁ = 2σ²" in capsys.readouterr().out
    assert not check_averaging_gain(lambda n: 10 * math.log10(2))  # the N → ∞ limit
    assert "limit N → ∞" in capsys.readouterr().out
    assert not check_averaging_gain(lambda n: 10 * math.log10(2 * n / (n + 2)))
    assert "G(1) must be 0 dB" in capsys.readouterr().out
    assert not check_averaging_gain(lambda n: 10 * math.log10(2 * n / (n + 1)) + (n == 8))
    assert "at N = 8" in capsys.readouterr().out
    assert not check_averaging_gain(lambda n: None)
    assert "returns None" in capsys.readouterr().out
    assert not check_averaging_gain(lambda n: "2.5 dB")
    assert "got a str" in capsys.readouterr().out


def test_averaging_gain_is_measured_by_simulation():
    """The formula of the check holds for independent Gaussian draws around a mean (truth included)."""
    g = torch.Generator().manual_seed(0)
    m = torch.randn(1, 2000, generator=g)
    truth = m + torch.randn(500, 2000, generator=g)
    samples = m + torch.randn(8, 500, 2000, generator=g)
    mse_1 = (samples[0] - truth).pow(2).mean()
    for n in (2, 8):
        gain = 10 * torch.log10(mse_1 / (samples[:n].mean(0) - truth).pow(2).mean()).item()
        assert abs(gain - 10 * math.log10(2 * n / (n + 1))) < 0.02


def test_control_keep_check(capsys):
    assert check_control_keep(lambda i, n, s, e: 1.0 - float(i / n < s or (i + 1) / n > e))
    assert check_control_keep(lambda i, n, s, e: float(s <= i / n and (i + 1) / n <= e))
    assert capsys.readouterr().out.count("✅") == 2
    assert not check_control_keep(lambda i, n, s, e: float(s <= i / n <= e))
    assert "(i + 1)/n > end" in capsys.readouterr().out
    assert not check_control_keep(lambda i, n, s, e: float(s < i / n and (i + 1) / n < e))  # strict ends
    assert "step 0 of 10 with the window [0.0, 1.0]: expected 1.0, got 0.0" in capsys.readouterr().out
    assert not check_control_keep(lambda i, n, s, e: 1.0)
    assert "expected 0.0" in capsys.readouterr().out
    assert not check_control_keep(lambda i, n, s, e: "on")
    assert "a number" in capsys.readouterr().out


def test_noise_image_embedding_check(capsys):
    def right(emb, mean, std, noise, ab, level):
        e = (emb - mean) / std
        return (ab[level].sqrt() * e + (1 - ab[level]).sqrt() * noise) * std + mean

    def expanded(emb, mean, std, noise, ab, level):  # multiplied out: √ᾱ·emb + (1 − √ᾱ)·mean + √(1 − ᾱ)·std·noise
        a = float(ab[level])
        return math.sqrt(a) * emb + (1 - math.sqrt(a)) * mean + math.sqrt(1 - a) * std * noise

    def loop(emb, mean, std, noise, ab, level):  # one row at a time in float64
        a = ab.double()[level]
        rows = [((a.sqrt() * (e.double() - mean) / std + (1 - a).sqrt() * n) * std + mean) for e, n in zip(emb, noise,
                strict=True)]  # fmt: skip
        return torch.stack(rows)

    assert check_noise_image_embedding(right)
    assert check_noise_image_embedding(expanded)
    assert check_noise_image_embedding(loop)
    assert capsys.readouterr().out.count("✅") == 3
    assert not check_noise_image_embedding(lambda emb, m, s, n, ab, k: ab[k].sqrt() * emb + (1 - ab[k]).sqrt() * n)
    assert "normalise first" in capsys.readouterr().out
    assert not check_noise_image_embedding(
        lambda emb, m, s, n, ab, k: ab[k].sqrt() * (emb - m) / s + (1 - ab[k]).sqrt() * n
    )
    assert "undo the normalisation" in capsys.readouterr().out
    assert not check_noise_image_embedding(
        lambda emb, m, s, n, ab, k: (ab[k] * (emb - m) / s + (1 - ab[k]) * n) * s + m
    )
    assert "square roots" in capsys.readouterr().out
    assert not check_noise_image_embedding(lambda emb, m, s, n, ab, k: right(emb, m, s, n, ab, k + 1))  # level + 1
    assert "one level off" in capsys.readouterr().out
    assert not check_noise_image_embedding(lambda emb, m, s, n, ab, k: right(emb, m, s, n, ab, max(k - 1, 0)))
    assert "one level off" in capsys.readouterr().out  # level − 1 (level 250 comes first)
    assert not check_noise_image_embedding(lambda emb, m, s, n, ab, k: right(emb, m, s, n, ab, k) - m)  # no "+ mean"
    assert "the mean is missing" in capsys.readouterr().out
    assert not check_noise_image_embedding(lambda emb, m, s, n, ab, k: right(emb, m, s, -n, ab, k))  # sign of ε
    assert "wrong at level 250" in capsys.readouterr().out
    assert not check_noise_image_embedding(lambda emb, m, s, n, ab, k: emb[0])
    assert "one embedding per row" in capsys.readouterr().out


def test_noise_image_embedding_matches_diffusers():
    """The reference of the check is Stable unCLIP's own computation: the normaliser, then DDPM's add_noise."""
    from diffusers import DDPMScheduler
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer

    g = torch.Generator().manual_seed(0)
    emb, noise = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    norm = StableUnCLIPImageNormalizer(embedding_dim=8)
    with torch.no_grad():
        norm.mean.copy_(torch.randn(1, 8, generator=g))
        norm.std.copy_(torch.rand(1, 8, generator=g) + 0.5)
    sched = DDPMScheduler(beta_schedule="linear", num_train_timesteps=1000)
    level = 300
    want = norm.unscale(sched.add_noise(norm.scale(emb), noise, torch.tensor([level] * 3)))
    ab = sched.alphas_cumprod
    e = (emb - norm.mean[0]) / norm.std[0]
    got = (ab[level].sqrt() * e + (1 - ab[level]).sqrt() * noise) * norm.std[0] + norm.mean[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_low_res_snr_crossing_check(capsys):
    """The first level whose SNR ᾱ_s/(1 − ᾱ_s) is below 10, computed with diffusers' own low_res_scheduler."""
    from diffusers import DDPMScheduler

    ab = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=1e-4, beta_end=0.02)
    ab = ab.alphas_cumprod.double()
    snr = ab / (1 - ab)
    right = int(torch.nonzero(snr < 10)[0])
    assert right == 181
    assert check_low_res_snr_crossing(right)
    assert check_low_res_snr_crossing(torch.tensor(181))
    assert capsys.readouterr().out.count("✅") == 2
    assert not check_low_res_snr_crossing(int(torch.nonzero(snr.sqrt() < 10)[0]))  # amplitude ratio
    assert "ratio of amplitudes" in capsys.readouterr().out
    assert not check_low_res_snr_crossing(int(torch.nonzero(snr < 1)[0]))  # the 0 dB crossing, 418
    assert "0 dB" in capsys.readouterr().out
    assert not check_low_res_snr_crossing(right - 1)
    assert "one level off" in capsys.readouterr().out
    assert not check_low_res_snr_crossing(None)
    assert "integer noise level" in capsys.readouterr().out
    assert not check_low_res_snr_crossing(181.5)
    assert "not a whole number" in capsys.readouterr().out
    assert not check_low_res_snr_crossing("181")
    assert "int(...)" in capsys.readouterr().out


def test_controlled_steps_check(capsys):
    """The closed form ⌊e·n⌋ − ⌈s·n⌉ (at least 0) and the count by diffusers' rule both pass; the usual slips fail."""
    assert check_controlled_steps(lambda n, s, e: max(0, math.floor(e * n) - math.ceil(s * n)))
    assert check_controlled_steps(lambda n, s, e: sum(s <= i / n and (i + 1) / n <= e for i in range(n)))
    assert capsys.readouterr().out.count("✅") == 2
    assert not check_controlled_steps(lambda n, s, e: math.floor(e * n) - math.ceil(s * n))  # negative for (4, .3, .4)
    assert "not -1" in capsys.readouterr().out
    assert not check_controlled_steps(lambda n, s, e: round((e - s) * n))
    out = capsys.readouterr().out
    assert "one step too many" in out and "n = 20" in out and "⌈start·n⌉" in out
    assert "n = 25" not in out  # the exercise's own window (25 steps) is no case: its count is not given away
    assert not check_controlled_steps(lambda n, s, e: max(0, math.floor(e * n) - math.floor(s * n) + 1))
    assert "expected" in capsys.readouterr().out
    assert not check_controlled_steps(lambda n, s, e: max(0, math.floor(e * n) - math.floor(s * n)))
    assert "whole interval" in capsys.readouterr().out
    assert not check_controlled_steps(lambda n, s, e: (e - s) * n)
    assert "whole number" in capsys.readouterr().out
    assert not check_controlled_steps(lambda n, s, e: None)
    assert "returns None" in capsys.readouterr().out


def test_hint_init_prediction_check(capsys):
    """A random hint last layer: the output zero convs at step 1, everything else at step 2 (the notebook measures it)."""
    assert check_hint_init_prediction([1, 2, 2, 2])
    assert check_hint_init_prediction((1, 2, 2, 2))
    assert check_hint_init_prediction(torch.tensor([1, 2, 2, 2]))
    assert capsys.readouterr().out.count("✅") == 3
    assert not check_hint_init_prediction([1, 2, 2, 3])  # the zero last layer's order
    assert "a random last layer passes the gradient on at once" in capsys.readouterr().out
    assert not check_hint_init_prediction([1, 1, 1, 1])
    assert "behind the output zero convolutions" in capsys.readouterr().out
    assert not check_hint_init_prediction([2, 2, 2, 2])
    assert "does not contain W" in capsys.readouterr().out
    assert not check_hint_init_prediction([1, 2, 3, 3])
    assert "as soon as the copy's input" in capsys.readouterr().out
    assert not check_hint_init_prediction([1, 2, 2, 4])
    assert "expected step 2" in capsys.readouterr().out
    assert not check_hint_init_prediction([1, 2, 2])
    assert "four parts" in capsys.readouterr().out
    assert not check_hint_init_prediction(None)
    assert "set answer" in capsys.readouterr().out
    assert not check_hint_init_prediction("1 2 2 2")
    assert "list of four" in capsys.readouterr().out


def test_zero_conv_grads_check(capsys):
    def right(x, g):
        return torch.einsum("bohw,bihw->oi", g, x), g.sum(dim=(0, 2, 3)), torch.zeros_like(x)

    def by_reshape(x, g):  # the 1×1 convolution as one matrix product over all pixels
        xs = x.permute(1, 0, 2, 3).flatten(1)  # (C_in, B·H·W)
        gs = g.permute(1, 0, 2, 3).flatten(1)  # (C_out, B·H·W)
        return gs @ xs.T, gs.sum(1), 0 * x

    assert check_zero_conv_grads(right)
    assert check_zero_conv_grads(by_reshape)
    assert capsys.readouterr().out.count("✅") == 2
    assert not check_zero_conv_grads(lambda x, g: (torch.zeros(g.shape[1], x.shape[1]), g.sum((0, 2, 3)), 0 * x))
    assert "does not contain W" in capsys.readouterr().out
    assert not check_zero_conv_grads(lambda x, g: (*right(x, g)[:2], x.sum(1, keepdim=True).expand_as(x)))
    assert "W = 0 at initialisation" in capsys.readouterr().out
    assert not check_zero_conv_grads(lambda x, g: (right(x, g)[0].T, *right(x, g)[1:]))
    assert "not the transpose" in capsys.readouterr().out
    assert not check_zero_conv_grads(lambda x, g: (torch.einsum("bohw,bihw->oi", g, x) / g[:, 0].numel(),
                                                   g.mean(dim=(0, 2, 3)), torch.zeros_like(x)))  # fmt: skip
    assert "sums, not means" in capsys.readouterr().out
    assert not check_zero_conv_grads(lambda x, g: (right(x, g)[0], g.sum((0, 2, 3)) * 2, torch.zeros_like(x)))
    assert "db[o]" in capsys.readouterr().out
    assert not check_zero_conv_grads(lambda x, g: right(x, g)[:2])
    assert "three tensors" in capsys.readouterr().out
    assert not check_zero_conv_grads(lambda x, g: None)
    assert "returns None" in capsys.readouterr().out


def test_half_cosine_level_check(capsys):
    """The first level with √ᾱ_k < 1/2 for diffusers' cosine schedule (Stable unCLIP's image_noising_scheduler)."""
    from diffusers import DDPMScheduler

    ab = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").alphas_cumprod.double()
    right = int(torch.nonzero(ab.sqrt() < 0.5)[0])
    assert right == 664
    assert check_half_cosine_level(right)
    assert check_half_cosine_level(664.0)
    assert capsys.readouterr().out.count("✅") == 2
    assert not check_half_cosine_level(int(torch.nonzero(ab < 0.5)[0]))  # ᾱ_k < 1/2 instead of √ᾱ_k < 1/2
    assert "not ᾱ_k" in capsys.readouterr().out
    assert not check_half_cosine_level(right + 1)
    assert "one level off" in capsys.readouterr().out
    assert not check_half_cosine_level(700)
    assert "too high" in capsys.readouterr().out
    for low in (500, 600, 0):
        assert not check_half_cosine_level(low)
        assert "too low" in capsys.readouterr().out
    assert not check_half_cosine_level(-5)
    assert "too low" in capsys.readouterr().out
    assert not check_half_cosine_level([664])
    assert "one integer" in capsys.readouterr().out


def test_dial_prediction_check(capsys):
    """A prediction of the agreement at k = 664 read off the measured dial lies between the agreements at 500 and 700."""
    dial = {0: 0.973, 250: 0.955, 500: 0.902, 700: 0.733, 850: 0.317, 999: 0.078}
    for right in (0.76, 0.80, 0.902, 0.733, 0.72, torch.tensor(0.78)):  # 0.72: within the 2-point slack
        assert check_dial_prediction(right, dial, level=664)
    out = capsys.readouterr().out
    assert out.count("✅") == 6 and out.count("consistent with the dial") == 6 and "correct" not in out
    assert "between the measured 0.90 (k = 500) and 0.73 (k = 700)" in out
    assert not check_dial_prediction(0.95, dial, level=664)  # the k = 250 value: too faithful
    assert "predict less" in capsys.readouterr().out
    assert not check_dial_prediction(0.5, dial, level=664)  # as if the dial fell linearly from 700 to 850
    assert "predict more" in capsys.readouterr().out
    assert not check_dial_prediction(76, dial, level=664)  # a percentage
    assert "between 0 and 1" in capsys.readouterr().out
    assert not check_dial_prediction(None, dial)
    assert "set prediction" in capsys.readouterr().out
    assert not check_dial_prediction("0.8", dial)
    assert "one number" in capsys.readouterr().out
    assert not check_dial_prediction(float("nan"), dial)
    assert "one number" in capsys.readouterr().out
    assert check_dial_prediction(0.5, {k: v for k, v in dial.items()}, level=800)  # between 0.733 and 0.317
