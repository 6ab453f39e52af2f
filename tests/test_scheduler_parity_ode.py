"""Our Euler, Euler-ancestral, Heun and DPM-Solver++ schedulers equal diffusers' over a matrix of options.

Each case builds ours and diffusers' from the same arguments and compares, for steps n in {1, 2, 5, 10, 25}:
timesteps (exactly, with their dtype), σ, ``init_noise_sigma``, then a whole sampling loop with a fixed fake model
(a nonlinear function of x and t), each scheduler on its own trajectory: ``scale_model_input``, ``prev_sample`` and
``pred_original_sample`` at every step, and the final sample. Euler-ancestral draws its noise from equally seeded
generators. Tolerance 1e-6 relative to the scale of the values (float32; in practice the results are bit-equal).
Then ``add_noise``, config save/load both ways, ``from_config`` across classes, and the dtype of half-precision steps.
"""

from __future__ import annotations

import itertools
import json

import diffusers
import pytest
import torch

from diffusion_lab import schedulers as ours_mod
from diffusion_lab.maths.diffusion import ddim_step, predict_x0_and_eps
from diffusion_lab.maths.solvers import (
    ancestral_sigmas,
    dpm_lambda,
    dpmpp_first_order_step,
    dpmpp_second_order_step,
    euler_step,
    heun_step,
    karras_sigmas,
    ode_derivative,
    sigma_predict_x0,
    sigma_to_timestep,
    vp_alpha_sigma,
    vp_predict_x0,
    vp_sigmas,
)

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),  # diffusers' np.array(tensor)
]
STEPS = (1, 2, 5, 10, 25)
SPACINGS = ("linspace", "leading", "trailing")
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
ATOL = 1e-6
CLASSES = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
           "DPMSolverMultistepScheduler")  # fmt: skip


def _pair(name: str, **kw):
    return getattr(ours_mod, name)(**kw), getattr(diffusers, name)(**kw)


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """|a − b| <= 1e-6 · max(1, max |b|), NaN where diffusers has NaN."""
    scale = max(1.0, float(b.detach().nan_to_num().abs().max())) if b.numel() else 1.0
    torch.testing.assert_close(a, b, atol=ATOL * scale, rtol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _model(x: torch.Tensor, t) -> torch.Tensor:
    """A fixed stand-in for a network: nonlinear in x, depends on t, mixes the batch statistics."""
    return torch.tanh(0.5 * x) * (1 + 0.001 * float(t)) - 0.1 * x.mean(dim=(1, 2, 3), keepdim=True)


def _compare(name: str, n: int, step_kw_fn=None, begin_index: bool = False, **kw) -> int:
    """Timesteps, σ and a whole loop of n steps, ours against diffusers'; returns the number of steps compared."""
    ours, theirs = _pair(name, **kw)
    ours.set_timesteps(n)
    theirs.set_timesteps(n)
    assert ours.timesteps.dtype == theirs.timesteps.dtype, (ours.timesteps.dtype, theirs.timesteps.dtype)
    assert torch.equal(ours.timesteps, theirs.timesteps), (ours.timesteps, theirs.timesteps)
    _close(ours.sigmas, theirs.sigmas, "sigmas")
    _close(torch.as_tensor(ours.init_noise_sigma), torch.as_tensor(theirs.init_noise_sigma), "init_noise_sigma")
    if begin_index:  # a schedule whose first timestep repeats (see test_dpm_karras_cosine_repeats_the_first_timestep)
        ours.set_begin_index(0)
        theirs.set_begin_index(0)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(n)) * theirs.init_noise_sigma
    y = x.clone()
    g_ours, g_theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for t in theirs.timesteps:
        x_in, y_in = ours.scale_model_input(x, t), theirs.scale_model_input(y, t)
        _close(x_in, y_in, f"scale_model_input at t={float(t)}")
        a_kw, b_kw = step_kw_fn(g_ours, g_theirs) if step_kw_fn else ({}, {})
        a = ours.step(_model(x_in, t), t, x, **a_kw)
        b = theirs.step(_model(y_in, t), t, y, **b_kw)
        _close(a.prev_sample, b.prev_sample, f"prev_sample at t={float(t)}")
        if hasattr(b, "pred_original_sample"):
            _close(a.pred_original_sample, b.pred_original_sample, f"pred_original_sample at t={float(t)}")
        x, y = a.prev_sample, b.prev_sample
    _close(x, y, "final sample")
    return len(theirs.timesteps)


# --- the matrices ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing,prediction,karras", list(itertools.product(SPACINGS, ["epsilon", "v_prediction", "sample"],
                                                                              [False, True])))  # fmt: skip
def test_euler_matches_diffusers(spacing, prediction, karras):
    kw = dict(SD, timestep_spacing=spacing, prediction_type=prediction, use_karras_sigmas=karras,
              steps_offset=1 if spacing == "leading" else 0)  # fmt: skip
    for n, final in itertools.product(STEPS, ["zero", "sigma_min"]):
        _compare("EulerDiscreteScheduler", n, final_sigmas_type=final, **kw)


@pytest.mark.parametrize("spacing,prediction", list(itertools.product(SPACINGS, ["epsilon", "v_prediction"])))
def test_euler_ancestral_matches_diffusers_with_seeded_noise(spacing, prediction):
    kw = dict(SD, timestep_spacing=spacing, prediction_type=prediction, steps_offset=1 if spacing == "leading" else 0)
    for n in STEPS:
        _compare("EulerAncestralDiscreteScheduler", n, lambda a, b: ({"generator": a}, {"generator": b}), **kw)


@pytest.mark.parametrize("spacing,prediction,karras", list(itertools.product(SPACINGS, ["epsilon", "v_prediction", "sample"],
                                                                              [False, True])))  # fmt: skip
def test_heun_matches_diffusers(spacing, prediction, karras):
    kw = dict(SD, timestep_spacing=spacing, prediction_type=prediction, use_karras_sigmas=karras,
              steps_offset=1 if spacing == "leading" else 0)  # fmt: skip
    for n in STEPS:
        assert _compare("HeunDiscreteScheduler", n, **kw) == 2 * n - 1  # two network calls per step but the last


@pytest.mark.parametrize("spacing,prediction,karras", list(itertools.product(SPACINGS, ["epsilon", "v_prediction", "sample"],
                                                                              [False, True])))  # fmt: skip
def test_dpm_solver_matches_diffusers(spacing, prediction, karras):
    kw = dict(SD, timestep_spacing=spacing, prediction_type=prediction, use_karras_sigmas=karras,
              steps_offset=1 if spacing == "leading" else 0)  # fmt: skip
    options = [(1, True, "zero", "midpoint"), (2, True, "zero", "midpoint"), (2, False, "sigma_min", "midpoint"),
               (2, True, "sigma_min", "heun"), (2, False, "zero", "heun")]  # fmt: skip
    for n, (order, lower_final, final, solver_type) in itertools.product(STEPS, options):
        _compare("DPMSolverMultistepScheduler", n, solver_order=order, lower_order_final=lower_final,
                 final_sigmas_type=final, solver_type=solver_type, **kw)  # fmt: skip


_BETA_CASES = {
    "linear": dict(beta_schedule="linear"),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
    "zero-snr": dict(SD, rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction"),
    "trained-betas": dict(trained_betas=torch.linspace(1e-3, 0.05, 50).tolist(), num_train_timesteps=50),
    "leading-no-offset": dict(SD, timestep_spacing="leading", steps_offset=0),
}


@pytest.mark.parametrize(
    ("name", "kw"),
    [
        pytest.param(name, kw, id=f"{name}-{case}")
        for name in CLASSES
        for case, kw in _BETA_CASES.items()
        # diffusers' Heun has no rescale_betas_zero_snr: nothing to compare with
        if not (name == "HeunDiscreteScheduler" and case == "zero-snr")
    ],
)
def test_beta_schedules_match_diffusers(name, kw):
    ours, theirs = _pair(name, **kw)
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod, atol=0, rtol=0)
    karras = {} if name == "EulerAncestralDiscreteScheduler" else {"use_karras_sigmas": True}
    step_kw = (lambda a, b: ({"generator": a}, {"generator": b})) if "Ancestral" in name else None
    cosine = kw.get("beta_schedule") == "squaredcos_cap_v2"
    for n in (3, 10):
        _compare(name, n, step_kw, **kw)
        _compare(name, n, step_kw, begin_index=cosine, **kw, **karras)


def test_euler_churn_sigma_bounds_and_config_sigmas_match_diffusers():
    """EDM Alg. 2's churn (seeded), SVD-like sigma_min/sigma_max with Karras σ."""
    for n in (2, 10):
        churn = lambda a, b: ({"s_churn": 3.0, "s_tmin": 0.5, "s_tmax": 8.0, "s_noise": 1.003, "generator": a},  # noqa: E731
                              {"s_churn": 3.0, "s_tmin": 0.5, "s_tmax": 8.0, "s_noise": 1.003, "generator": b})  # fmt: skip
        _compare("EulerDiscreteScheduler", n, churn, **SD)
        # σ_max = 80 lies above SD's σ_{T−1} ≈ 14.6: the first Karras σ all map to t = 999 (repeats, see below)
        _compare("EulerDiscreteScheduler", n, None, True, use_karras_sigmas=True, sigma_min=0.002, sigma_max=80.0, **SD)


def test_dpm_karras_cosine_repeats_the_first_timestep():
    """diffusers' DPM-Solver with Karras σ on the cosine schedule truncates fractional timesteps, so the first ones
    repeat ([998, 998, 997, ...]); a loop then starts at the second copy and runs off the end (diffusers: IndexError;
    ours: a ValueError saying to call set_begin_index(0), after which both agree)."""
    ours, theirs = _pair("DPMSolverMultistepScheduler", beta_schedule="squaredcos_cap_v2", use_karras_sigmas=True)
    ours.set_timesteps(5)
    theirs.set_timesteps(5)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist() == [998, 998, 997, 937, 0]
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="set_begin_index"):
        for t in ours.timesteps:
            x = ours.step(_model(x, t), t, x).prev_sample
    with pytest.raises(IndexError):
        for t in theirs.timesteps:
            x = theirs.step(_model(x, t), t, x).prev_sample
    _compare("DPMSolverMultistepScheduler", 5, begin_index=True, beta_schedule="squaredcos_cap_v2",
             use_karras_sigmas=True)  # fmt: skip


# --- the pure functions against diffusers' private helpers --------------------------------------------------------


def test_pure_functions_equal_diffusers_helpers():
    theirs = diffusers.EulerDiscreteScheduler(**SD)
    table = vp_sigmas(theirs.alphas_cumprod).numpy()
    assert (table == (((1 - theirs.alphas_cumprod) / theirs.alphas_cumprod) ** 0.5).numpy()).all()
    for n in (1, 2, 7, 25):
        ks = karras_sigmas(float(table[0]), float(table[-1]), n)
        assert (ks == theirs._convert_to_karras(torch.from_numpy(table[::-1].copy()), n)).all()
        ts = sigma_to_timestep(ks, torch.from_numpy(table).log().numpy())
        assert (ts == [theirs._sigma_to_t(s, torch.from_numpy(table).log().numpy()) for s in ks]).all()
    ks = karras_sigmas(0.002, 80.0, 5)
    torch.testing.assert_close(torch.from_numpy(ks[[0, -1]]), torch.tensor([80.0, 0.002], dtype=torch.float64))


def test_the_maths_identities():
    """What the notebook will derive: Euler in σ is DDIM (η = 0); DPM-Solver++(1) is DDIM too; Heun is exact on a
    linear ODE where Euler is not; the ancestral split keeps the noise level; 2M midpoint is Alg. 2's D_i; Karras σ
    run from σ_max to σ_min, crowded at the low end."""
    g = torch.Generator().manual_seed(0)
    x_t, eps = (
        torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64),
        torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64),
    )
    ab_t, ab_prev = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    s_t, s_prev = ((1 - ab_t) / ab_t) ** 0.5, ((1 - ab_prev) / ab_prev) ** 0.5
    x0, _ = predict_x0_and_eps(eps, x_t, ab_t, "epsilon")
    ddim = ddim_step(x0, eps, ab_prev)  # DDIM Eq. 12, η = 0
    x = x_t / ab_t**0.5  # the σ-scale sample x_0 + σ·ε
    euler = euler_step(x, sigma_predict_x0(eps, x, s_t), s_t, s_prev)
    torch.testing.assert_close(euler * ab_prev**0.5, ddim)
    a_t, sg_t = vp_alpha_sigma(s_prev)
    a_s, sg_s = vp_alpha_sigma(s_t)
    h = dpm_lambda(a_t, sg_t) - dpm_lambda(a_s, sg_s)
    torch.testing.assert_close(
        dpmpp_first_order_step(x_t, vp_predict_x0(eps, x_t, a_s, sg_s, "epsilon"), a_t, sg_t, sg_s, h), ddim
    )
    # dx/dσ = (x − D)/σ with D = c·x (a linear denoiser) has x(σ) = x_i·(σ/σ_i)^(1−c): halving the step divides
    # one step's error by ~4 for Euler (local error O(h²)) and by ~8 for Heun (O(h³))
    c, s0 = 0.4, torch.tensor(2.0, dtype=torch.float64)

    def errors(h: float) -> tuple[float, float]:
        s1 = s0 - h
        exact = x * (s1 / s0) ** (1 - c)
        x_euler = euler_step(x, c * x, s0, s1)
        x_heun = heun_step(x, ode_derivative(x, c * x, s0), ode_derivative(x_euler, c * x_euler, s1), s1 - s0)
        return float((x_euler - exact).abs().max()), float((x_heun - exact).abs().max())

    (e1, h1), (e2, h2) = errors(0.2), errors(0.1)
    assert 3.5 < e1 / e2 < 4.5 and 7 < h1 / h2 < 9 and h1 < e1 / 10
    s1 = torch.tensor(1.5, dtype=torch.float64)
    up, down = ancestral_sigmas(s0, s1)
    torch.testing.assert_close(up**2 + down**2, s1**2)
    assert 0 < down < s1
    x0_prev, r = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64), 0.8
    two_m = dpmpp_second_order_step(x_t, x0, x0_prev, a_t, sg_t, sg_s, h, r * h)
    D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev  # DPM-Solver++ Alg. 2
    torch.testing.assert_close(two_m, (sg_t / sg_s) * x_t - a_t * (torch.exp(-h) - 1) * D)
    ks = karras_sigmas(0.002, 80.0, 10)
    assert ks[0] == pytest.approx(80.0) and ks[-1] == pytest.approx(0.002) and (ks[:-1] > ks[1:]).all()
    assert (ks[1:] - ks[:-1])[-1] > (ks[1:] - ks[:-1])[0]  # the smallest steps at the low-noise end


# --- add_noise, dtypes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CLASSES)
def test_add_noise_matches_diffusers(name):
    ours, theirs = _pair(name, **SD)
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    t = theirs.timesteps[[0, 3, -1]]
    _close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t), "add_noise")


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_steps_match_diffusers(name, dtype):
    ours, theirs = _pair(name, **SD)
    ours.set_timesteps(4)
    theirs.set_timesteps(4)
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)).to(dtype)
    y = x.clone()
    g_ours, g_theirs = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    kw = ({"generator": g_ours}, {"generator": g_theirs}) if "Ancestral" in name else ({}, {})
    for t in theirs.timesteps:
        a = ours.step(_model(ours.scale_model_input(x, t), t).to(dtype), t, x, **kw[0]).prev_sample
        b = theirs.step(_model(theirs.scale_model_input(y, t), t).to(dtype), t, y, **kw[1]).prev_sample
        assert a.dtype == b.dtype == dtype
        torch.testing.assert_close(a.float(), b.float(), atol=0, rtol=0)
        x, y = a, b


# --- config: save/load, from_config both ways, compatibles ------------------------------------------------------


def _public(config) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


CONFIGS = {
    "EulerDiscreteScheduler": dict(SD, timestep_spacing="leading", steps_offset=1, use_karras_sigmas=True),
    "EulerAncestralDiscreteScheduler": dict(SD, timestep_spacing="trailing", prediction_type="v_prediction"),
    "HeunDiscreteScheduler": dict(SD, use_karras_sigmas=True, clip_sample=True),
    "DPMSolverMultistepScheduler": dict(SD, use_karras_sigmas=True, solver_order=2, final_sigmas_type="sigma_min"),
}


@pytest.mark.parametrize("name", CLASSES)
def test_save_config_writes_what_diffusers_writes(tmp_path, name):
    ours, theirs = _pair(name, **CONFIGS[name])
    ours.save_config(tmp_path / "ours")
    theirs.save_config(tmp_path / "theirs")
    a = json.loads((tmp_path / "ours" / "scheduler_config.json").read_text())
    b = json.loads((tmp_path / "theirs" / "scheduler_config.json").read_text())
    assert a["_class_name"] == b["_class_name"] == name
    assert a == b


def _loop(scheduler, n: int = 6) -> torch.Tensor:
    scheduler.set_timesteps(n)
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
    g = torch.Generator().manual_seed(1)
    for t in scheduler.timesteps:
        kw = {"generator": g} if "Ancestral" in type(scheduler).__name__ else {}
        x = scheduler.step(_model(scheduler.scale_model_input(x, t), t), t, x, **kw).prev_sample
    return x


@pytest.mark.parametrize("name", CLASSES)
def test_from_pretrained_round_trip_both_ways(tmp_path, name):
    ours_cls, their_cls = getattr(ours_mod, name), getattr(diffusers, name)
    ours = ours_cls(**CONFIGS[name])
    ours.save_pretrained(tmp_path / "scheduler")
    again = ours_cls.from_pretrained(tmp_path, subfolder="scheduler")
    assert type(again) is ours_cls and _public(again.config) == _public(ours.config)
    torch.testing.assert_close(_loop(again), _loop(ours), atol=0, rtol=0)
    theirs = their_cls.from_pretrained(tmp_path / "scheduler")  # diffusers reads our folder …
    _close(_loop(theirs), _loop(ours), "diffusers' class from our folder")
    their_cls(**CONFIGS[name]).save_pretrained(tmp_path / "theirs")  # … and we read theirs
    assert _public(ours_cls.from_pretrained(tmp_path / "theirs").config) == _public(ours.config)


@pytest.mark.parametrize("name", CLASSES)
def test_from_config_of_diffusers_and_back(name):
    theirs = getattr(diffusers, name)(**CONFIGS[name])
    ours = getattr(ours_mod, name).from_config(theirs.config)
    assert _public(ours.config) == _public(theirs.config)
    back = getattr(diffusers, name).from_config(ours.config)
    assert _public(back.config) == _public(theirs.config)
    _close(_loop(ours), _loop(getattr(diffusers, name)(**CONFIGS[name])), "from_config")


def test_swap_between_our_schedulers_keeps_the_schedule():
    """SDXL's config (DDIM keys included) read by each of ours: the same ᾱ, and back to our DDIM unchanged."""
    ddim = ours_mod.DDIMScheduler(**SD, timestep_spacing="leading", steps_offset=1, clip_sample=False)
    for name in CLASSES:
        other = getattr(ours_mod, name).from_config(ddim.config)
        assert other.config.timestep_spacing == "leading" and other.config.steps_offset == 1
        torch.testing.assert_close(other.alphas_cumprod, ddim.alphas_cumprod, atol=0, rtol=0)
        assert _public(ours_mod.DDIMScheduler.from_config(other.config).config) == _public(ddim.config)
    compatibles = ours_mod.EulerDiscreteScheduler().compatibles
    assert ours_mod.DPMSolverMultistepScheduler in compatibles and ours_mod.DDIMScheduler in compatibles
    assert set(diffusers.EulerDiscreteScheduler().compatibles) <= set(compatibles)
