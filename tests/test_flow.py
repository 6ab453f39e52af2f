"""Rectified flow: the path, velocity and step formulas of the module docstring, and parity of
FlowMatchEulerDiscreteScheduler with diffusers' (timesteps, sigmas, steps, scale_noise) for shifts 1, 3, 6 and
1, 4, 28 steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler as DiffusersFlow

from diffusion_lab.maths.flow import (
    flow_euler_step,
    flow_interpolate,
    flow_predict_x0,
    flow_velocity,
    logit_normal_timesteps,
    shift_sigmas,
)
from diffusion_lab.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

SHIFTS = (1.0, 3.0, 6.0)
STEPS = (1, 4, 28)


def test_exported_from_the_package():
    import diffusion_lab

    assert diffusion_lab.FlowMatchEulerDiscreteScheduler is FlowMatchEulerDiscreteScheduler


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("steps", STEPS)
def test_timesteps_sigmas_and_steps_equal_diffusers(shift, steps):
    ours, ref = FlowMatchEulerDiscreteScheduler(shift=shift), DiffusersFlow(shift=shift)
    torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=0, atol=1e-6)  # the constructor's (shifted) grid
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    assert ours.timesteps.dtype == ref.timesteps.dtype == torch.float32
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=1e-6 * 1000)  # timesteps = 1000·σ
    torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=0, atol=1e-6)
    assert ours.sigmas[-1] == 0 and len(ours.sigmas) == steps + 1
    g = torch.Generator().manual_seed(0)
    x_ours = x_ref = torch.randn(2, 4, 8, 8, generator=g)
    for t_ours, t_ref in zip(ours.timesteps, ref.timesteps, strict=True):
        v = torch.randn(2, 4, 8, 8, generator=g)  # any "model output"
        x_ours = ours.step(v, t_ours, x_ours).prev_sample
        x_ref = ref.step(v, t_ref, x_ref).prev_sample
        torch.testing.assert_close(x_ours, x_ref, rtol=0, atol=1e-6)


def test_the_double_shift_of_the_shared_notes():
    s = FlowMatchEulerDiscreteScheduler(shift=3.0)
    s.set_timesteps(5)
    np.testing.assert_allclose(s.sigmas.numpy(), [1, 0.90036, 0.75112, 0.50299, 0.00893, 0], atol=1e-5)
    # the same numbers from the rule: the constructor's grid is already shifted, so its smallest σ is shift(1/T),
    # set_timesteps spaces n values between 1 and that and shifts them again, then appends 0
    shift = lambda u: 3 * u / (1 + 2 * u)  # noqa: E731
    twice = [shift(u) for u in np.linspace(1.0, shift(1 / 1000), 5)] + [0.0]
    np.testing.assert_allclose(s.sigmas.numpy(), twice, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shift", SHIFTS)
def test_scale_noise_equals_diffusers(shift):
    ours, ref = FlowMatchEulerDiscreteScheduler(shift=shift), DiffusersFlow(shift=shift)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = ours.timesteps[[2, 5, 9]]
    torch.testing.assert_close(ours.scale_noise(x0, t, noise), ref.scale_noise(x0, ref.timesteps[[2, 5, 9]], noise))
    ours.set_begin_index(4)
    ref.set_begin_index(4)  # img2img: all samples start at the same index
    torch.testing.assert_close(
        ours.scale_noise(x0, ours.timesteps[4:5].repeat(3), noise),
        ref.scale_noise(x0, ref.timesteps[4:5].repeat(3), noise),
    )


def test_from_config_reads_a_diffusers_config():
    ref = DiffusersFlow(shift=3.0)
    ours = FlowMatchEulerDiscreteScheduler.from_config(ref.config)
    assert ours.config.shift == 3.0 and ours.config.num_train_timesteps == 1000
    assert ours.config.get("use_dynamic_shifting") is False  # SD3's pipeline reads it with .get


def test_formulas_of_the_docstring():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 2, 3, 3, generator=g)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    x_t = flow_interpolate(x0, eps, t)
    torch.testing.assert_close(x_t[0], x0[0])  # t = 0: the data
    torch.testing.assert_close(x_t[3], eps[3])  # t = 1: the noise
    torch.testing.assert_close(x_t[1], 0.75 * x0[1] + 0.25 * eps[1])
    v = flow_velocity(x0, eps)
    # dx_t/dt = ε − x₀, by finite differences along the (straight) path
    h = 1e-3
    fd = (flow_interpolate(x0, eps, 0.5 + h) - flow_interpolate(x0, eps, 0.5 - h)) / (2 * h)
    torch.testing.assert_close(fd, v, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(flow_predict_x0(x_t, v, t), x0)  # x̂₀ = x_t − t·v is exact with the true v
    # with the true velocity, one Euler step from t to t' lands exactly on the path: straight lines
    torch.testing.assert_close(flow_euler_step(x_t, v, t, t * 0.3), flow_interpolate(x0, eps, t * 0.3))


def test_shift_formula_and_logit_normal():
    t = torch.linspace(0, 1, 11)
    torch.testing.assert_close(shift_sigmas(t, 1.0), t)
    s3 = shift_sigmas(t, 3.0)
    assert s3[0] == 0 and s3[-1] == 1 and bool((s3[1:-1] > t[1:-1]).all())  # ends fixed, middle towards noise
    torch.testing.assert_close(s3[5], torch.tensor(1.5 / 2.0))  # 3·0.5 / (1 + 2·0.5)
    u = logit_normal_timesteps(100_000, generator=torch.Generator().manual_seed(0))
    assert u.shape == (100_000,) and bool(((u > 0) & (u < 1)).all())
    logit = torch.log(u / (1 - u))
    assert abs(logit.mean()) < 0.02 and abs(logit.std() - 1) < 0.02  # logit(t) ~ N(0, 1)


def test_bad_input_raises_clear_errors():
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="shift must be a positive number"):
            FlowMatchEulerDiscreteScheduler(shift=bad)
    s = FlowMatchEulerDiscreteScheduler(shift=3.0)
    with pytest.raises(ValueError, match="call set_timesteps"):
        s.step(torch.zeros(1, 4), 1000.0, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="num_inference_steps must be an integer >= 1"):
        s.set_timesteps(0)
    for not_a_count in (True, 2.0):
        with pytest.raises(TypeError, match="num_inference_steps must be an integer >= 1"):
            s.set_timesteps(not_a_count)
    s.set_timesteps(4)
    with pytest.raises(ValueError, match="not an integer step number"):
        s.step(torch.zeros(1, 4), 0, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="not one of this scheduler.s timesteps"):
        s.step(torch.zeros(1, 4), 123.4, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="same shape"):
        s.step(torch.zeros(1, 4), s.timesteps[0], torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        flow_interpolate(torch.zeros(2, 3), torch.zeros(2, 3), 1.5)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        s.set_timesteps(sigmas=[1.0, -0.1])
    with pytest.raises(ValueError, match="not implemented"):
        FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="not implemented"):
        FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True)
