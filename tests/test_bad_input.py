"""Bad input gets a ValueError that names the parameter and what is allowed."""

from __future__ import annotations

import pytest
import torch

from diffusion_lab import DDIMScheduler, DDPMScheduler, pick, smoke_mode
from diffusion_lab.maths.diffusion import ddim_sigma, predict_x0_and_eps, q_sample
from diffusion_lab.maths.schedules import inference_timesteps, make_betas

SCHEDULERS = [DDPMScheduler, DDIMScheduler]


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (
            {"beta_schedule": "cosine"},
            r"beta_schedule must be one of \['linear', 'scaled_linear', 'squaredcos_cap_v2'\]",
        ),
        ({"prediction_type": "eps"}, r"prediction_type must be one of \['epsilon', 'sample', 'v_prediction'\]"),
        ({"timestep_spacing": "uniform"}, r"timestep_spacing must be one of \['linspace', 'leading', 'trailing'\]"),
        ({"num_train_timesteps": 1}, "num_train_timesteps must be an integer >= 2"),
        ({"beta_start": 0.5, "beta_end": 0.1}, "beta_start <= beta_end"),
        ({"steps_offset": -1}, "steps_offset must be an integer >= 0"),
        ({"thresholding": True, "dynamic_thresholding_ratio": 1.5}, "dynamic_thresholding_ratio must be in"),
        ({"trained_betas": [0.1, 0.2]}, "trained_betas must be 1000 values"),
    ],
)
def test_bad_constructor_arguments(cls, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        cls(**kwargs)


def test_unknown_variance_type():
    with pytest.raises(ValueError, match=r"variance_type must be one of \['fixed_small', 'fixed_large'\]"):
        DDPMScheduler(variance_type="learned_range")


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize(
    ("n", "error"), [(0, ValueError), (-3, ValueError), (1001, ValueError), (2.5, TypeError), (True, TypeError)]
)
def test_bad_number_of_inference_steps(cls, n, error):
    """A count that is not an integer (a float, True) is a TypeError, an integer out of range a ValueError."""
    with pytest.raises(error, match=r"num_inference_steps must be an integer between 1 and num_train_timesteps=1000"):
        cls().set_timesteps(n)


def test_steps_offset_past_the_end():
    with pytest.raises(ValueError, match="steps_offset=1 with num_inference_steps=1000"):
        DDIMScheduler(steps_offset=1).set_timesteps(1000)


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize(
    ("t", "error"),
    [
        (-1, ValueError),
        (1000, ValueError),
        (5000, ValueError),
        (torch.tensor([1, 2]), ValueError),
        (0.5, TypeError),
        (torch.tensor(3.0), TypeError),
        (True, TypeError),
    ],  # fmt: skip
)
def test_timestep_outside_the_schedule(cls, t, error):
    s = cls()
    s.set_timesteps(10)
    with pytest.raises(error, match=r"timestep must be"):
        s.step(torch.zeros(1, 2), t, torch.zeros(1, 2))


def test_ddpm_timestep_not_in_the_inference_schedule():
    s = DDPMScheduler()
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="timestep 123 is not one of this scheduler's timesteps"):
        s.step(torch.zeros(1, 2), 123, torch.zeros(1, 2))


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_shape_mismatch(cls):
    s = cls()
    s.set_timesteps(10)
    with pytest.raises(
        ValueError, match=r"model_output and sample must have the same shape, got \(1, 2\) and \(1, 3\)"
    ):
        s.step(torch.zeros(1, 2), s.timesteps[0], torch.zeros(1, 3))
    with pytest.raises(ValueError, match="original_samples and noise must have the same shape"):
        s.add_noise(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"timesteps must be integers in \[0, 999\]"):
        s.add_noise(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([1, 1000]))
    with pytest.raises(ValueError, match="one timestep or one per sample"):
        s.add_noise(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([1, 2, 3]))


def test_negative_eta_and_missing_set_timesteps():
    s = DDIMScheduler()
    with pytest.raises(ValueError, match="call set_timesteps"):
        s.step(torch.zeros(1), 10, torch.zeros(1))
    s.set_timesteps(10)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        s.step(torch.zeros(1), s.timesteps[0], torch.zeros(1), eta=-0.1)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        ddim_sigma(0.5, 0.6, -1.0)
    with pytest.raises(ValueError, match="either generator or variance_noise"):
        s.step(
            torch.zeros(1),
            s.timesteps[0],
            torch.zeros(1),
            eta=1.0,
            generator=torch.Generator(),
            variance_noise=torch.zeros(1),
        )


def test_pure_function_checks():
    ab = torch.linspace(0.99, 0.01, 10)
    with pytest.raises(ValueError, match="x0 and noise must have the same shape"):
        q_sample(torch.zeros(2, 3), 1, torch.zeros(2, 4), ab)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        predict_x0_and_eps(torch.zeros(1), torch.zeros(1), 0.5, "x0")
    with pytest.raises(ValueError, match="beta_schedule must be one of"):
        make_betas("sigmoid")
    with pytest.raises(ValueError, match="timestep_spacing must be one of"):
        inference_timesteps(10, 1000, "uniform")


def test_smoke_switch(monkeypatch):
    monkeypatch.setenv("DIFFUSION_LAB_SMOKE", "1")
    assert smoke_mode() and pick(full=100, quick=2) == 2
    monkeypatch.setenv("DIFFUSION_LAB_SMOKE", "0")
    assert not smoke_mode() and pick(full=100, quick=2) == 100
    monkeypatch.delenv("DIFFUSION_LAB_SMOKE")
    assert not smoke_mode()
    monkeypatch.setenv("DIFFUSION_LAB_SMOKE", "maybe")
    with pytest.raises(ValueError, match="DIFFUSION_LAB_SMOKE must be one of"):
        smoke_mode()
