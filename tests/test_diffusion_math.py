"""Closed-form properties of the diffusion maths, and every formula stated in a docstring."""

from __future__ import annotations

import math

import diffusers
import pytest
import torch

from diffusion_lab import DDIMScheduler, DDPMScheduler
from diffusion_lab.maths.diffusion import (
    ddim_sigma,
    ddim_step,
    ddpm_posterior,
    ddpm_step,
    eps_from_v,
    eps_from_x0,
    extract,
    predict_x0_and_eps,
    q_sample,
    q_step,
    velocity,
    x0_from_eps,
    x0_from_v,
)
from diffusion_lab.maths.schedules import (
    alphas_cumprod_from_betas,
    cosine_betas,
    inference_timesteps,
    linear_betas,
    make_betas,
    rescale_zero_terminal_snr,
    scaled_linear_betas,
    snr,
    snr_db,
)

T = 1000


@pytest.fixture(params=["linear", "scaled_linear", "squaredcos_cap_v2"])
def ab(request):
    start, end = (0.00085, 0.012) if request.param == "scaled_linear" else (1e-4, 0.02)
    return alphas_cumprod_from_betas(make_betas(request.param, T, start, end))


def test_reference_values_of_the_linear_schedule():
    ab = alphas_cumprod_from_betas(linear_betas(T))
    assert ab[0].item() == pytest.approx(0.9999, abs=1e-7)
    assert ab[499].item() == pytest.approx(0.078587, abs=1e-6)
    assert ab[999].item() == pytest.approx(4.0358e-05, rel=1e-3)


def test_schedules_are_monotone(ab):
    betas = 1 - torch.cat([ab[:1], ab[1:] / ab[:-1]])
    assert (betas > 0).all() and (betas < 1).all()
    assert (betas[1:] >= betas[:-1] - 1e-7).all()  # noise per step never decreases
    assert (ab[1:] < ab[:-1]).all()  # signal strictly decays
    assert (ab > 0).all() and (ab < 1).all()
    assert (snr(ab)[1:] < snr(ab)[:-1]).all()


def test_schedule_formulas_from_docstrings():
    # scaled_linear: linspace of square roots, squared
    b = scaled_linear_betas(T)
    torch.testing.assert_close(b.sqrt()[[0, -1]], torch.tensor([0.00085**0.5, 0.012**0.5]))
    torch.testing.assert_close(
        b.sqrt().diff(), torch.full((T - 1,), (0.012**0.5 - 0.00085**0.5) / (T - 1)), atol=1e-7, rtol=0
    )
    # cosine: ᾱ_t = f((t+1)/T) / f(0) wherever the 0.999 cap is not active (Improved DDPM Eq. 17)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    ab = alphas_cumprod_from_betas(cosine_betas(T)).double()
    expected = torch.tensor([f((t + 1) / T) / f(0) for t in range(T)], dtype=torch.float64)
    torch.testing.assert_close(ab[:-1], expected[:-1], atol=1e-5, rtol=0)
    assert cosine_betas(T).max().item() == pytest.approx(0.999)
    # SNR = ᾱ/(1−ᾱ); 0 dB where ᾱ = 1/2
    assert snr(torch.tensor(0.8)).item() == pytest.approx(4.0)
    assert snr_db(torch.tensor(0.5)).item() == pytest.approx(0.0, abs=1e-6)
    assert snr_db(torch.tensor(10 / 11)).item() == pytest.approx(10.0, abs=1e-4)


def test_zero_terminal_snr_rescale():
    betas = scaled_linear_betas(T)
    ab, ab2 = alphas_cumprod_from_betas(betas), alphas_cumprod_from_betas(rescale_zero_terminal_snr(betas))
    assert ab2[-1] == 0
    torch.testing.assert_close(ab2[0], ab[0])
    # √ᾱ' is an affine function of √ᾱ
    a, b = ab.sqrt().double(), ab2.sqrt().double()
    slope = (b[0] - b[-1]) / (a[0] - a[-1])
    torch.testing.assert_close(b, slope * (a - a[-1]), atol=1e-6, rtol=0)


def test_inference_timesteps_docstring_examples():
    assert inference_timesteps(5, 1000, "leading", 1).tolist() == [801, 601, 401, 201, 1]
    assert inference_timesteps(5, 1000, "leading").tolist() == [800, 600, 400, 200, 0]
    assert inference_timesteps(5, 1000, "trailing").tolist() == [999, 799, 599, 399, 199]
    assert inference_timesteps(5, 1000, "linspace").tolist() == [999, 749, 500, 250, 0]
    for n in (1, 7, 50, 1000):
        ts = inference_timesteps(n, 1000, "trailing")
        assert ts[0] == 999 and len(ts) == n and (ts[:-1] > ts[1:]).all()


def test_q_sample_inverts_exactly_with_the_true_noise(ab):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(8, 1, 5, 5, generator=g), torch.randn(8, 1, 5, 5, generator=g)
    t = torch.tensor([0, 1, 10, 100, 400, 700, 900, 990])
    x_t = q_sample(x0, t, eps, ab)
    a = extract(ab, t, 4)
    torch.testing.assert_close(x0_from_eps(x_t, eps, a), x0, atol=2e-3, rtol=0)  # ÷√ᾱ amplifies float32 rounding
    torch.testing.assert_close(eps_from_x0(x_t, x0, a), eps, atol=2e-3, rtol=0)
    v = velocity(x0, eps, a)
    for pred_type, out in [("epsilon", eps), ("sample", x0), ("v_prediction", v)]:
        x0_hat, eps_hat = predict_x0_and_eps(out, x_t, a, pred_type)
        tol = 2e-3 if pred_type == "epsilon" else 2e-5
        torch.testing.assert_close(x0_hat, x0, atol=tol, rtol=0)
        torch.testing.assert_close(eps_hat, eps, atol=2e-3 if pred_type == "sample" else 2e-5, rtol=0)


def test_v_formulas_from_docstrings():
    g = torch.Generator().manual_seed(1)
    x0, eps, a = torch.randn(1000, generator=g).double(), torch.randn(1000, generator=g).double(), 0.3
    x_t = a**0.5 * x0 + (1 - a) ** 0.5 * eps
    v = velocity(x0, eps, a)
    torch.testing.assert_close(v, a**0.5 * eps - (1 - a) ** 0.5 * x0)
    torch.testing.assert_close(x0_from_v(x_t, v, a), x0)
    torch.testing.assert_close(eps_from_v(x_t, v, a), eps)
    # v is the rate of change of x along the circle x = cos φ·x0 + sin φ·ε with ᾱ = cos² φ
    phi = math.acos(a**0.5)
    torch.testing.assert_close(v, -math.sin(phi) * x0 + math.cos(phi) * eps)


def test_q_sample_empirical_mean_and_variance(ab):
    x0 = torch.full((200_000,), 0.7)
    g = torch.Generator().manual_seed(0)
    for t in (0, 250, 999):
        x_t = q_sample(x0, torch.full((1,), t), torch.randn(200_000, generator=g), ab)
        assert x_t.mean().item() == pytest.approx(ab[t].sqrt().item() * 0.7, abs=5e-3)
        assert x_t.var().item() == pytest.approx(1 - ab[t].item(), abs=5e-3)


def test_closed_form_equals_iterating_the_markov_chain():
    betas = linear_betas(T)
    ab = alphas_cumprod_from_betas(betas)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((100_000,), -0.5)
    x = x0.clone()
    for t in range(300):
        x = q_step(x, betas[t], torch.randn(x.shape, generator=g))  # x_{t} from x_{t-1}
    direct = q_sample(x0, 299, torch.randn(x0.shape, generator=g), ab)
    assert x.mean().item() == pytest.approx(direct.mean().item(), abs=1e-2)
    assert x.var().item() == pytest.approx(direct.var().item(), abs=1e-2)
    # and both equal the formula: mean √ᾱ·x0, variance 1 − ᾱ
    assert x.mean().item() == pytest.approx(-0.5 * ab[299].sqrt().item(), abs=1e-2)
    assert x.var().item() == pytest.approx(1 - ab[299].item(), abs=1e-2)


def _bayes_posterior(x0, x_t, ab_t, ab_prev):
    """q(x_{t'} | x_t, x_0) by Bayes' rule for Gaussians, independently of Eq. 7: the prior x_{t'} | x_0 ~
    N(√ᾱ_{t'}·x_0, 1 − ᾱ_{t'}) times the likelihood x_t | x_{t'} ~ N(√α·x_{t'}, 1 − α), α = ᾱ_t/ᾱ_{t'}."""
    alpha = ab_t / ab_prev
    prior_mean, prior_var = ab_prev.sqrt() * x0, 1 - ab_prev
    post_var = 1 / (1 / prior_var + alpha / (1 - alpha))  # precisions add
    post_mean = post_var * (prior_mean / prior_var + alpha.sqrt() * x_t / (1 - alpha))
    return post_mean, post_var


@pytest.mark.parametrize("t, tp", [(500, 499), (1, 0), (999, 979), (100, 50)])
def test_ddpm_posterior_matches_eq7_and_the_true_conditional(t, tp):
    betas = linear_betas(T).double()
    ab = alphas_cumprod_from_betas(betas)
    if tp == t - 1:  # one step: Eq. 7's variance with the schedule's own β_t
        _, var = ddpm_posterior(torch.zeros(1).double(), torch.zeros(1).double(), ab[t], ab[tp])
        assert var.item() == pytest.approx(((1 - ab[tp]) / (1 - ab[t]) * betas[t]).item(), rel=1e-5)
    g = torch.Generator().manual_seed(t)
    x0, x_t = torch.randn(5, generator=g).double(), torch.randn(5, generator=g).double()
    post_mean, post_var = _bayes_posterior(x0, x_t, ab[t], ab[tp])
    mean, var = ddpm_posterior(x0, x_t, ab[t], ab[tp])
    torch.testing.assert_close(mean, post_mean, rtol=1e-4, atol=1e-10)
    torch.testing.assert_close(var, post_var, rtol=1e-4, atol=0)


def test_ddim_eta_one_is_the_ddpm_posterior_and_eta_zero_is_deterministic():
    ab = alphas_cumprod_from_betas(linear_betas(T)).double()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, generator=g).double(), torch.randn(4, 3, generator=g).double()
    for t, tp in [(999, 979), (500, 499), (100, 50)]:
        x_t = ab[t].sqrt() * x0 + (1 - ab[t]).sqrt() * eps
        mean, var = _bayes_posterior(x0, x_t, ab[t], ab[tp])
        sigma = ddim_sigma(ab[t], ab[tp], eta=1.0)
        torch.testing.assert_close(sigma**2, var, rtol=1e-8, atol=0)  # σ²(η=1) = β̃
        torch.testing.assert_close(ddim_step(x0, eps, ab[tp], sigma), mean, rtol=0, atol=1e-8)
        torch.testing.assert_close(ddpm_step(x0, x_t, ab[t], ab[tp], None), mean, rtol=0, atol=1e-8)
        z = torch.randn(4, 3, generator=g).double()  # with noise: the mean plus √β̃·z (fixed_small), √β'·z (large)
        torch.testing.assert_close(ddpm_step(x0, x_t, ab[t], ab[tp], z), mean + var.sqrt() * z, rtol=0, atol=1e-8)
        torch.testing.assert_close(ddpm_step(x0, x_t, ab[t], ab[tp], z, variance_type="fixed_large"),
                                   mean + (1 - ab[t] / ab[tp]).sqrt() * z, rtol=0, atol=1e-8)  # fmt: skip
    # the schedulers: η = 0 ignores the generator; η = 1 spreads samples with DDPM's variance
    s = DDIMScheduler(clip_sample=False)
    s.set_timesteps(50)
    x = torch.randn(20_000, generator=g)
    out = torch.zeros_like(x)
    a = s.step(out, 500, x, eta=0.0, generator=torch.Generator().manual_seed(1)).prev_sample
    b = s.step(out, 500, x, eta=0.0, generator=torch.Generator().manual_seed(2)).prev_sample
    assert torch.equal(a, b)
    c = s.step(out, 500, torch.zeros_like(x), eta=1.0, generator=torch.Generator().manual_seed(1)).prev_sample
    expected_var = ddim_sigma(s.alphas_cumprod[500], s.alphas_cumprod[480], 1.0) ** 2
    assert c.var().item() == pytest.approx(expected_var.item(), rel=0.03)


def test_ddpm_adds_no_noise_at_the_last_step_and_uses_the_posterior_variance():
    s = DDPMScheduler(clip_sample=False)
    x = torch.zeros(50_000)
    a = s.step(torch.zeros_like(x), 0, x, generator=torch.Generator().manual_seed(0)).prev_sample
    assert a.abs().max() == 0
    b = s.step(torch.zeros_like(x), 10, x, generator=torch.Generator().manual_seed(0)).prev_sample
    _, var = ddpm_posterior(x[:1], x[:1], s.alphas_cumprod[10], s.alphas_cumprod[9])
    assert b.var().item() == pytest.approx(var.item(), rel=0.03)


def test_scheduler_config_and_output_shape():
    s = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
    assert s.config.get("steps_offset") == 1 and s.config.num_train_timesteps == 1000
    assert s.config.get("use_dynamic_shifting") is None
    assert s.order == 1 and s.init_noise_sigma == 1.0
    foreign = {**s.config, "_class_name": "PNDMScheduler", "skip_prk_steps": True}
    s2 = DDIMScheduler.from_config(foreign)
    assert {k: v for k, v in s2.config.items() if not k.startswith("_")} == {
        k: v for k, v in diffusers.DDIMScheduler.from_config(foreign).config.items() if not k.startswith("_")
    }  # as diffusers: PNDM's skip_prk_steps is kept as a hidden entry, for the way back
    assert all(s2.config[k] == v for k, v in s.config.items() if not k.startswith("_"))
    s.set_timesteps(4)
    theirs = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
    theirs.set_timesteps(4)
    assert s.timesteps.tolist() == theirs.timesteps.tolist() == [751, 501, 251, 1]
    g = torch.Generator().manual_seed(0)
    model_output, sample = torch.randn(2, 2, generator=g), torch.randn(2, 2, generator=g)
    ref = theirs.step(model_output, 751, sample)
    prev, x0 = s.step(model_output, 751, sample)  # unpacks like diffusers' output: (prev_sample, pred_original_sample)
    torch.testing.assert_close(prev, ref.prev_sample)
    torch.testing.assert_close(x0, ref.pred_original_sample)
    as_tuple = s.step(model_output, 751, sample, return_dict=False)
    assert type(as_tuple) is tuple and len(as_tuple) == 2
    torch.testing.assert_close(as_tuple[0], ref.prev_sample)
    x = torch.ones(3, 2)
    assert torch.equal(s.scale_model_input(x, 5), x)
