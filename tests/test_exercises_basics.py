"""The exercise checks of notebooks 01-04 (forward process, DDPM, DDIM, the latent autoencoder).

Each check must accept at least two right answers written here independently of the library (a vectorised and a
loop version, another algebraic form, float64 or NumPy) and reject the typical wrong ones with a hint that names the
mistake. The references are written out in this file (or taken from diffusers), never from ``diffusion_lab``: a bug
in the library function a check compares with then shows up as a right answer being rejected.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from checker_asserts import accepts as _accepts
from checker_asserts import outcomes as _outcomes
from checker_asserts import rejects as _rejects

from diffusion_lab.course.exercises.nb01_forward_diffusion import (
    check_q_sample,
    check_snr_crossing,
    check_trailing_timesteps,
)
from diffusion_lab.course.exercises.nb02_ddpm import check_ddpm_loss, check_ddpm_step
from diffusion_lab.course.exercises.nb03_samplers import check_ddim_step, check_timesteps_answer
from diffusion_lab.course.exercises.nb04_autoencoder import (
    check_gaussian_kl,
    check_reparameterize,
    check_scaling_factor,
)

# --- references written out here ---------------------------------------------------------------------------------


def _linear_ab64(T: int = 1000) -> np.ndarray:
    """DDPM's linear schedule β = 1e-4 … 0.02, ᾱ_t = Π_{s ≤ t} (1 − β_s), in float64 by a plain loop."""
    betas = [1e-4 + (0.02 - 1e-4) * i / (T - 1) for i in range(T)]
    ab, prod = [], 1.0
    for b in betas:
        prod *= 1 - b
        ab.append(prod)
    return np.array(ab)


def _cosine_ab64(T: int = 1000) -> np.ndarray:
    """Improved DDPM's cosine schedule as diffusers builds it: β_i = min(1 − f((i+1)/T)/f(i/T), 0.999),
    f(u) = cos²((u + 0.008)/1.008 · π/2), then ᾱ = the running product of 1 − β."""
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    ab, prod = [], 1.0
    for i in range(T):
        prod *= 1 - min(1 - f((i + 1) / T) / f(i / T), 0.999)
        ab.append(prod)
    return np.array(ab)


def _first_below_0db(ab: np.ndarray) -> int:
    for t, a in enumerate(ab):
        if a / (1 - a) < 1:
            return t
    raise AssertionError("SNR never drops below 1")


# --- notebook 01: q_sample, the 0 dB crossing, trailing timesteps --------------------------------------------------


def test_q_sample_check(capsys):
    def vectorised(x0, t, noise, ab):
        a = ab[t].reshape(-1, *[1] * (x0.ndim - 1))  # (B, 1, ..., 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def loop(x0, t, noise, ab):  # one sample at a time, with math.sqrt
        return torch.stack(
            [math.sqrt(ab[ti]) * x0[i] + math.sqrt(1 - ab[ti]) * noise[i] for i, ti in enumerate(t.tolist())]
        )

    def float64(x0, t, noise, ab):
        a = ab.double()[t].reshape(-1, *[1] * (x0.ndim - 1))
        return a.sqrt() * x0.double() + (1 - a).sqrt() * noise.double()

    def in_place(x0, t, noise, ab):  # changes the caller's x0: the check compares with values computed before
        a = ab[t].reshape(-1, *[1] * (x0.ndim - 1))
        return x0.mul_(a.sqrt()).add_((1 - a).sqrt() * noise)

    def numpy_version(x0, t, noise, ab):
        a = ab.numpy()[t.numpy()].reshape(-1, *[1] * (x0.ndim - 1))
        return np.sqrt(a) * x0.numpy() + np.sqrt(1 - a) * noise.numpy()

    _accepts(check_q_sample, vectorised, loop, float64, in_place, numpy_version, capsys=capsys)

    def no_sqrt(x0, t, noise, ab):
        a = ab[t].reshape(-1, *[1] * (x0.ndim - 1))
        return a * x0 + (1 - a) * noise

    def alpha_not_alphabar(x0, t, noise, ab):  # α_t = ᾱ_t/ᾱ_{t−1}: one step's signal, not the product
        a = (ab[t] / torch.cat([torch.ones(1), ab])[t]).reshape(-1, *[1] * (x0.ndim - 1))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def off_by_one(x0, t, noise, ab):  # the paper's t = 1..T read as a code index t − 1
        a = ab[(t - 1).clamp(min=0)].reshape(-1, *[1] * (x0.ndim - 1))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def swapped(x0, t, noise, ab):
        a = ab[t].reshape(-1, *[1] * (x0.ndim - 1))
        return (1 - a).sqrt() * x0 + a.sqrt() * noise

    def one_t_for_all(x0, t, noise, ab):
        a = ab[t[0]]
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def images_only(x0, t, noise, ab):  # (B, 1, 1, 1) hard-coded: right for images, wrong shape for 2-D points
        a = ab[t][:, None, None, None]
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    value_hint = "sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·noise"
    for wrong in (no_sqrt, alpha_not_alphabar, off_by_one, swapped, one_t_for_all):
        _rejects(check_q_sample, wrong, value_hint, capsys=capsys)
    _rejects(check_q_sample, images_only, "return shape (3, 2)", "reshape ᾱ_t", capsys=capsys)
    _rejects(check_q_sample, lambda x0, t, noise, ab: ab[t] * x0 + noise, "raised RuntimeError", capsys=capsys)
    _rejects(check_q_sample, lambda x0, t, noise, ab: None, "returns None", capsys=capsys)


def test_snr_crossing_check(capsys):
    cosine, linear = _cosine_ab64(), _linear_ab64()
    t_cos, t_lin = _first_below_0db(cosine), _first_below_0db(linear)
    # a second reference for the same numbers: diffusers' own schedules, and the crossing by bisection on ᾱ < 1/2
    from diffusers import DDPMScheduler

    for schedule, t_ref in (("squaredcos_cap_v2", t_cos), ("linear", t_lin)):
        ab = DDPMScheduler(beta_schedule=schedule).alphas_cumprod.double().numpy()
        assert int(np.searchsorted(-ab, -0.5, side="right")) == t_ref, schedule
    assert 400 < t_cos < 600 and t_lin < t_cos  # the cosine schedule keeps its signal longer

    _accepts(check_snr_crossing, t_cos, np.int64(t_cos), torch.tensor(t_cos), float(t_cos), capsys=capsys)
    assert check_snr_crossing(t_lin, schedule="linear")
    assert _outcomes(capsys)[0].startswith("✅")

    hint = "first index where snr(alphas_cumprod) < 1"
    _rejects(check_snr_crossing, t_cos - 1, hint, capsys=capsys)  # the last t still above 0 dB
    _rejects(check_snr_crossing, t_cos + 1, hint, capsys=capsys)
    _rejects(check_snr_crossing, t_lin, hint, capsys=capsys)  # the other schedule's answer
    _rejects(check_snr_crossing, 1000 - t_cos, hint, capsys=capsys)  # counted from the noisy end
    _rejects(check_snr_crossing, torch.tensor([t_cos, t_cos + 1]), "one integer t", capsys=capsys)  # forgot [0]
    _rejects(check_snr_crossing, [t_cos], "one integer t", capsys=capsys)
    _rejects(check_snr_crossing, None, "set answer to an integer", capsys=capsys)


def test_trailing_timesteps_check(capsys):
    def rounded_python(n, T):  # Python's round: ties to even
        return [round(T - k * T / n) - 1 for k in range(n)]

    def numpy_linspace(n, T):  # the n left ends of n equal intervals of [0, T], from the top
        return np.round(np.linspace(T, 0, n + 1)[:-1]).astype(np.int64) - 1

    def fractions(n, T):  # exact rational arithmetic, ties to even written out
        from fractions import Fraction

        out = []
        for k in range(n):
            x = Fraction(T) - Fraction(k * T, n)
            lo = math.floor(x)
            up = x - lo > Fraction(1, 2) or (x - lo == Fraction(1, 2) and lo % 2 == 1)
            out.append(lo + up - 1)
        return out

    _accepts(check_trailing_timesteps, rounded_python, numpy_linspace, fractions, capsys=capsys)
    assert rounded_python(4, 10) == [9, 7, 4, 1]  # 10, 7.5, 5, 2.5 → 10, 8, 5, 2 (ties to even) → minus 1

    _rejects(check_trailing_timesteps, lambda n, T: [round(T - k * T / n) for k in range(n)], "T−1", capsys=capsys)
    _rejects(check_trailing_timesteps, lambda n, T: [int(T - k * T / n + 0.5) - 1 for k in range(n)], "halves to even",
             capsys=capsys)  # fmt: skip
    _rejects(check_trailing_timesteps, lambda n, T: [k * (T // n) for k in range(n)][::-1], "expected", capsys=capsys)
    _rejects(check_trailing_timesteps, lambda n, T: rounded_python(n, T)[::-1], "start at T−1", capsys=capsys)
    _rejects(check_trailing_timesteps, lambda n, T: None, "returns None", capsys=capsys)
    _rejects(check_trailing_timesteps, lambda n, T: 1 / 0, "raised ZeroDivisionError", capsys=capsys)


# --- notebook 02: the DDPM loss and one DDPM step -----------------------------------------------------------------


def test_ddpm_loss_check(capsys):
    def vectorised(model, x0, t, noise, ab):
        a = ab[t].reshape(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return ((noise - model(x_t, t)) ** 2).mean()

    def loop(model, x0, t, noise, ab):  # one example at a time; equal sizes, so the mean of means is the mean
        losses = []
        for i in range(len(x0)):
            a = float(ab[t[i]])
            x_t = math.sqrt(a) * x0[i : i + 1] + math.sqrt(1 - a) * noise[i : i + 1]
            losses.append(torch.nn.functional.mse_loss(model(x_t, t[i : i + 1]), noise[i : i + 1]))
        return sum(losses) / len(losses)

    def as_float(model, x0, t, noise, ab):
        return vectorised(model, x0, t, noise, ab).item()  # a Python float is one number too

    _accepts(check_ddpm_loss, vectorised, loop, as_float, capsys=capsys)

    def variant(target="noise", sqrt=True, t_shift=0, alpha=False, model_input="x_t", reduce="mean"):
        def fn(model, x0, t, noise, ab):
            a = ab[t]
            if alpha:  # α_t = ᾱ_t/ᾱ_{t−1} instead of ᾱ_t
                a = a / torch.cat([torch.ones(1), ab])[t]
            a = a.reshape(-1, 1, 1, 1)
            x_t = (a.sqrt() * x0 + (1 - a).sqrt() * noise) if sqrt else (a * x0 + (1 - a) * noise)
            pred = model(x_t if model_input == "x_t" else x0, (t + t_shift).clamp(0, 999))
            err = ((noise if target == "noise" else x0) - pred) ** 2
            return {"mean": err.mean(), "sum": err.sum(), "none": err.flatten(1).mean(1)}[reduce]

        return fn

    hint = "the target is the noise"
    for wrong in (
        variant(target="x0"),  # wrong prediction target
        variant(sqrt=False),  # x_t without square roots
        variant(t_shift=1),  # the model told t + 1
        variant(alpha=True),  # α_t instead of ᾱ_t
        variant(model_input="x0"),  # the model sees the clean image
        variant(reduce="sum"),  # summed, not averaged
    ):
        _rejects(check_ddpm_loss, wrong, hint, capsys=capsys)
    _rejects(check_ddpm_loss, variant(reduce="none"), "return one number", capsys=capsys)
    _rejects(check_ddpm_loss, lambda *a: None, "returns None", capsys=capsys)
    _rejects(check_ddpm_loss, lambda model, x0, t, noise, ab: model(x0), "raised TypeError", capsys=capsys)


def test_ddpm_step_check(capsys):
    def posterior_mean(eps, x_t, ab_t, ab_prev, z):  # x̂_0 from ε̂, then DDPM Eq. 7 with β' = 1 − ᾱ_t/ᾱ_prev
        beta = 1 - ab_t / ab_prev
        x0 = (x_t - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
        mean = ab_prev.sqrt() * beta / (1 - ab_t) * x0 + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab_t) * x_t
        return mean + ((1 - ab_prev) / (1 - ab_t) * beta).sqrt() * z

    def algorithm_2(eps, x_t, ab_t, ab_prev, z):  # DDPM Algorithm 2: 1/√α·(x_t − β/√(1−ᾱ)·ε̂) + σz, float64
        eps, x_t, z = eps.double(), x_t.double(), z.double()
        ab_t, ab_prev = float(ab_t), float(ab_prev)
        alpha = ab_t / ab_prev
        sigma = math.sqrt((1 - ab_prev) / (1 - ab_t) * (1 - alpha))
        return (x_t - (1 - alpha) / math.sqrt(1 - ab_t) * eps) / math.sqrt(alpha) + sigma * z

    _accepts(check_ddpm_step, posterior_mean, algorithm_2, capsys=capsys)

    def variant(var="small", noise=True, sqrt_z=True, alpha_bar_in_mean=False, sign=1.0, eps_sqrt=True):
        def fn(eps, x_t, ab_t, ab_prev, z):
            alpha = ab_t / ab_prev
            a = ab_t if alpha_bar_in_mean else alpha  # 1/√ᾱ_t where 1/√α_t belongs
            c = (1 - alpha) / ((1 - ab_t).sqrt() if eps_sqrt else (1 - ab_t))
            mean = (x_t - sign * c * eps) / a.sqrt()
            v = (1 - ab_prev) / (1 - ab_t) * (1 - alpha) if var == "small" else 1 - alpha
            return mean + ((v.sqrt() if sqrt_z else v) * z if noise else 0)

        return fn

    assert check_ddpm_step(variant()) and _outcomes(capsys)[0].startswith("✅")  # the helper's right setting
    hint = "predict x̂_0 from ε̂ first"
    for wrong, where in (
        (variant(noise=False), 999),  # forgot σz
        (variant(sqrt_z=False), 999),  # σ² z
        (variant(alpha_bar_in_mean=True), 999),  # ᾱ for α
        (variant(sign=-1.0), 999),  # sign error
        # missing square root on 1 − ᾱ_t: invisible at t = 999 where 1 − ᾱ ≈ 1
        (variant(eps_sqrt=False), 500),
        # σ² = β' (DDPM's "fixed_large") instead of the posterior β̃: equal at t = 999, apart further down
        (variant(var="large"), 500),
    ):
        _rejects(check_ddpm_step, wrong, hint, f"wrong at t={where}:", capsys=capsys)
    _rejects(check_ddpm_step, lambda *a: None, "returns None", capsys=capsys)
    _rejects(check_ddpm_step, lambda eps, x_t, ab_t, ab_prev, z: x_t @ z, "raised RuntimeError", capsys=capsys)


# --- notebook 03: one DDIM step, the timesteps a sampler visits --------------------------------------------------


def test_ddim_step_check(capsys):
    def eq_12(x0, eps, ab_prev, sigma):
        return ab_prev.sqrt() * x0 + (1 - ab_prev - sigma**2).sqrt() * eps

    def elementwise(x0, eps, ab_prev, sigma):  # number by number with math.sqrt
        a, s = float(ab_prev), float(sigma)
        return torch.tensor([[math.sqrt(a) * p + math.sqrt(1 - a - s * s) * e for p, e in zip(rp, re, strict=True)]
                             for rp, re in zip(x0.tolist(), eps.tolist(), strict=True)])  # fmt: skip

    def numpy_version(x0, eps, ab_prev, sigma):
        a, s = np.float64(ab_prev), np.float64(sigma)
        return np.sqrt(a) * x0.numpy() + np.sqrt(1 - a - s**2) * eps.numpy()

    _accepts(check_ddim_step, eq_12, elementwise, numpy_version, capsys=capsys)

    _rejects(check_ddim_step, lambda x0, e, a, s: a.sqrt() * x0 + (1 - a).sqrt() * e, "eta=1.0", "σ²",
             capsys=capsys)  # σ forgotten: right at η = 0 only  # fmt: skip
    _rejects(check_ddim_step, lambda x0, e, a, s: a.sqrt() * x0 + (1 - a - s).sqrt() * e, "eta=1.0", capsys=capsys)
    _rejects(check_ddim_step, lambda x0, e, a, s: a * x0 + (1 - a - s**2).sqrt() * e, "eta=0.0", capsys=capsys)
    _rejects(check_ddim_step, lambda x0, e, a, s: a.sqrt() * e + (1 - a - s**2).sqrt() * x0, "eta=0.0", capsys=capsys)
    _rejects(check_ddim_step, lambda x0, e, a, s: eq_12(x0, e, a, s) + s * torch.randn_like(x0), "eta=1.0",
             capsys=capsys)  # noise added although the exercise asks for the step without it  # fmt: skip
    _rejects(check_ddim_step, lambda *a: None, "returns None", capsys=capsys)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timesteps_answer_check(spacing, capsys):
    from diffusers import DDIMScheduler

    n = 7
    sched = DDIMScheduler(timestep_spacing=spacing)  # the reference: what diffusers' sampler visits
    sched.set_timesteps(n)
    want = sched.timesteps.tolist()
    by_hand = {
        "leading": [k * (1000 // n) for k in range(n)][::-1],
        "trailing": [round(1000 - k * 1000 / n) - 1 for k in range(n)],
        "linspace": [round(999 * k / (n - 1)) for k in range(n)][::-1],
    }[spacing]
    assert by_hand == want
    for answer in (want, by_hand, sched.timesteps, np.array(want), tuple(float(t) for t in want)):
        assert check_timesteps_answer(answer, n, spacing)
    assert all(line.startswith("✅") for line in _outcomes(capsys))

    hint = "call set_timesteps(n)"
    for wrong in (want[::-1], want[1:], [t + 1 for t in want], list(range(999, 0, -1000 // n))[:n]):
        assert not check_timesteps_answer(wrong, n, spacing), wrong
        line = _outcomes(capsys)[0]
        assert line.startswith("❌") and hint in line
    other = "trailing" if spacing == "leading" else "leading"
    other_sched = DDIMScheduler(timestep_spacing=other)
    other_sched.set_timesteps(n)
    _rejects(lambda a: check_timesteps_answer(a, n, spacing), other_sched.timesteps.tolist(), hint, capsys=capsys)
    _rejects(lambda a: check_timesteps_answer(a, n, spacing), None, "list of integers", capsys=capsys)
    _rejects(lambda a: check_timesteps_answer(a, n, spacing), ["a", "b"], "list of integers", capsys=capsys)


# --- notebook 04: the latent autoencoder ---------------------------------------------------------------------------


def test_reparameterize_check(capsys):
    _accepts(
        check_reparameterize,
        lambda m, lv, e: m + torch.exp(0.5 * lv) * e,
        lambda m, lv, e: m + lv.exp().sqrt() * e,  # σ = √(σ²)
        lambda m, lv, e: (m.double() + (0.5 * lv.double()).exp() * e.double()).numpy(),
        capsys=capsys,
    )
    _rejects(check_reparameterize, lambda m, lv, e: m + torch.exp(lv) * e, "exp(logvar) is the variance",
             capsys=capsys)  # fmt: skip
    _rejects(check_reparameterize, lambda m, lv, e: m + 0.5 * torch.exp(lv) * e, "exp(0.5·logvar)", capsys=capsys)
    _rejects(check_reparameterize, lambda m, lv, e: m + lv * e, "exp(0.5·logvar)", capsys=capsys)
    _rejects(check_reparameterize, lambda m, lv, e: m - torch.exp(0.5 * lv) * e + 2 * m, "z = mean", capsys=capsys)
    _rejects(check_reparameterize, lambda m, lv, e: (m + torch.exp(0.5 * lv) * e).mean(0), "one z per input",
             capsys=capsys)  # fmt: skip
    _rejects(check_reparameterize, lambda m, lv, e: None, "returns None", capsys=capsys)
    _rejects(check_reparameterize, lambda m, lv, e: 1 / 0, "ZeroDivisionError", capsys=capsys)


def test_gaussian_kl_check(capsys):
    from torch.distributions import Normal, kl_divergence

    def loop(m, lv):  # one sample at a time, number by number
        return torch.tensor([sum(0.5 * (mu**2 + math.exp(l) - 1 - l) for mu, l in zip(mi.flatten().tolist(),
                             li.flatten().tolist(), strict=True)) for mi, li in zip(m, lv, strict=True)])  # fmt: skip

    _accepts(
        check_gaussian_kl,
        lambda m, lv: 0.5 * (m**2 + lv.exp() - 1 - lv).sum(dim=(1, 2, 3)),
        lambda m, lv: kl_divergence(Normal(m, (0.5 * lv).exp()), Normal(0.0, 1.0)).flatten(1).sum(1),
        loop,
        capsys=capsys,
    )
    _rejects(check_gaussian_kl, lambda m, lv: 0.5 * (m**2 + lv.exp() - 1 - lv).sum(), "one KL per sample",
             capsys=capsys)  # summed over the batch too  # fmt: skip
    formula = "½·Σ(μ² + σ² − 1 − log σ²)"
    for wrong in (
        lambda m, lv: 0.5 * (m**2 + lv.exp() - 1 - lv).mean(dim=(1, 2, 3)),  # averaged, not summed
        lambda m, lv: (m**2 + lv.exp() - 1 - lv).sum(dim=(1, 2, 3)),  # the ½ forgotten
        lambda m, lv: 0.5 * (m**2 + lv.exp() - 1 + lv).sum(dim=(1, 2, 3)),  # sign of log σ²
        lambda m, lv: 0.5 * (m**2 + lv - 1 - lv.log()).sum(dim=(1, 2, 3)),  # logvar read as the variance
    ):
        _rejects(check_gaussian_kl, wrong, formula, capsys=capsys)
    _rejects(check_gaussian_kl, lambda m, lv: 0.5 * (m**2 + lv.exp() - 1 - lv).sum(1), "return shape (5,)",
             capsys=capsys)  # summed over channels only  # fmt: skip
    _rejects(check_gaussian_kl, lambda m, lv: None, "returns None", capsys=capsys)


def test_scaling_factor_check(capsys):
    _accepts(
        check_scaling_factor,
        lambda z: 1 / z.std().item(),
        lambda z: torch.tensor(1.0) / z.std(),
        lambda z: 1 / np.std(z.numpy()),  # ddof = 0: off by 1/(2N) ≈ 4e-5, well inside the tolerance
        lambda z: 1 / math.sqrt(((z - z.mean()) ** 2).sum().item() / (z.numel() - 1)),
        capsys=capsys,
    )
    _rejects(check_scaling_factor, lambda z: z.std().item(), "inverse", capsys=capsys)
    _rejects(check_scaling_factor, lambda z: 1 / z.var().item(), "1 / std over all numbers", capsys=capsys)
    _rejects(check_scaling_factor, lambda z: 1 / z.abs().max().item(), "1 / std over all numbers", capsys=capsys)
    _rejects(check_scaling_factor, lambda z: 1 / z.std(dim=0), "one number", capsys=capsys)  # per position
    _rejects(check_scaling_factor, lambda z: None, "returns None", capsys=capsys)
