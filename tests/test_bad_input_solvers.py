"""Bad input to the σ-schedulers and their pure functions (issue 25, Deliver 7, library part): a clear error in the
project's convention (TypeError for a wrong type, ValueError for a wrong value, the argument named and what is
allowed), where diffusers raises NotImplementedError, IndexError, an assert, or goes on silently."""

from __future__ import annotations

import diffusers
import pytest
import torch

from diffusion_lab.maths.solvers import (
    dpm_timesteps,
    dpmpp_second_order_step,
    karras_sigmas,
    sigma_predict_x0,
    sigma_timesteps,
    vp_predict_x0,
)
from diffusion_lab.schedulers import (
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers' np.array
SCHEDULERS = [EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, HeunDiscreteScheduler,
              DPMSolverMultistepScheduler]  # fmt: skip
FLOW = "flow-matching model .*FlowMatchEulerDiscreteScheduler"


# --- DPM-Solver: algorithm type and solver order --------------------------------------------------------------


@pytest.mark.parametrize("algorithm_type", ["dpmsolver", "sde-dpmsolver", "sde-dpmsolver++", "deis", "dpm++", 3])
def test_unknown_or_unsupported_algorithm_type(algorithm_type):
    with pytest.raises(ValueError, match=r"algorithm_type must be one of \['dpmsolver\+\+'\].*got"):
        DPMSolverMultistepScheduler(algorithm_type=algorithm_type)


@pytest.mark.parametrize(("order", "error"), [(0, ValueError), (3, ValueError), (-1, ValueError), (2.0, TypeError),
                                              ("2", TypeError), (True, TypeError)])  # fmt: skip
def test_unsupported_solver_order(order, error):
    with pytest.raises(error, match="solver_order must be"):
        DPMSolverMultistepScheduler(solver_order=order)
    if error is ValueError:
        with pytest.raises(ValueError, match=r"one of \[1, 2\]"):
            DPMSolverMultistepScheduler(solver_order=order)


def test_unknown_solver_type_and_unimplemented_options():
    with pytest.raises(ValueError, match=r"solver_type must be one of \['midpoint', 'heun'\]"):
        DPMSolverMultistepScheduler(solver_type="bh2")
    for option in ["euler_at_final", "use_lu_lambdas", "use_exponential_sigmas", "use_dynamic_shifting"]:
        with pytest.raises(
            ValueError, match=f"not implemented in diffusion_lab's DPMSolverMultistepScheduler.*{option}"
        ):
            DPMSolverMultistepScheduler(**{option: True})
    with pytest.raises(ValueError, match="variance_type"):
        DPMSolverMultistepScheduler(variance_type="learned_range")
    with pytest.raises(ValueError, match="not implemented in diffusion_lab's EulerDiscreteScheduler"):
        EulerDiscreteScheduler(interpolation_type="log_linear")
    with pytest.raises(ValueError, match="timestep_type='continuous'"):
        EulerDiscreteScheduler(timestep_type="continuous")
    with pytest.raises(ValueError, match="use_beta_sigmas"):
        HeunDiscreteScheduler(use_beta_sigmas=True)


# --- Karras σ (or any of these σ) with a flow-matching model -------------------------------------------------------


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_karras_sigmas_with_a_flow_prediction(cls):
    kw = {} if cls is EulerAncestralDiscreteScheduler else {"use_karras_sigmas": True}
    with pytest.raises(ValueError, match=f"use_karras_sigmas=True with a {FLOW}" if kw else FLOW):
        cls(prediction_type="flow_prediction", **kw)


def test_karras_sigmas_with_flow_sigmas():
    with pytest.raises(ValueError, match=f"use_karras_sigmas=True with a {FLOW}"):
        DPMSolverMultistepScheduler(use_karras_sigmas=True, use_flow_sigmas=True)
    with pytest.raises(ValueError, match=FLOW):
        DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0)


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_from_config_of_a_flow_scheduler(cls):
    """SD3's scheduler config read by an ᾱ-scheduler: diffusers drops the flow keys and silently builds the default
    β schedule (wrong for the model); ours refuses, with or without Karras σ."""
    config = FlowMatchEulerDiscreteScheduler(shift=3.0).config
    assert type(diffusers.EulerDiscreteScheduler.from_config(config)) is diffusers.EulerDiscreteScheduler  # silent
    with pytest.raises(ValueError, match=FLOW):
        cls.from_config(config)
    with pytest.raises(ValueError, match=f"use_karras_sigmas=True with a {FLOW}"):
        cls.from_config(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).config, use_karras_sigmas=True)


# --- steps: < 1, > T, not an integer; step before set_timesteps ----------------------------------------------------


@pytest.mark.parametrize("cls", SCHEDULERS)
@pytest.mark.parametrize(("n", "error"), [(0, ValueError), (-3, ValueError), (1001, ValueError), (2.5, TypeError),
                                          (True, TypeError), (None, TypeError)])  # fmt: skip
def test_bad_number_of_inference_steps(cls, n, error):
    with pytest.raises(error, match=r"num_inference_steps must be an integer between 1 and num_train_timesteps=1000"):
        cls().set_timesteps(n)


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_more_steps_than_training_steps_with_a_small_t(cls):
    with pytest.raises(ValueError, match="num_train_timesteps=50, got 51"):
        cls(num_train_timesteps=50).set_timesteps(51)


@pytest.mark.parametrize("cls", [EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, HeunDiscreteScheduler])
def test_steps_offset_past_the_end(cls):
    with pytest.raises(ValueError, match="steps_offset=1 with num_inference_steps"):
        cls(timestep_spacing="leading", steps_offset=1).set_timesteps(1000)


def test_dpm_leading_spacing_with_too_many_steps():
    """DPM-Solver spaces n + 1 points: with n + 1 > T, diffusers returns n copies of steps_offset (h = 0, NaN)."""
    with pytest.raises(ValueError, match="timestep_spacing='leading' with num_inference_steps=1000 needs n"):
        DPMSolverMultistepScheduler(timestep_spacing="leading", steps_offset=1).set_timesteps(1000)
    with pytest.raises(ValueError, match="steps_offset=5 with num_inference_steps=499 puts a timestep at 1003"):
        DPMSolverMultistepScheduler(timestep_spacing="leading", steps_offset=5).set_timesteps(499)


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_step_before_set_timesteps(cls):
    s = cls()
    t = 999 if cls is DPMSolverMultistepScheduler else 999.0
    with pytest.raises(ValueError, match=r"call set_timesteps\(num_inference_steps\) before step\(\)"):
        s.step(torch.zeros(1, 2), t, torch.zeros(1, 2))
    if cls is not DPMSolverMultistepScheduler:  # DPM's scale_model_input is the identity, as diffusers'
        with pytest.raises(ValueError, match="call set_timesteps"):
            s.scale_model_input(torch.zeros(1, 2), t)


# --- timesteps, shapes, generators ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, HeunDiscreteScheduler])
def test_integer_step_number_instead_of_a_timestep(cls):
    s = cls()
    s.set_timesteps(5)
    with pytest.raises(ValueError, match="not an integer step number"):
        s.step(torch.zeros(1, 2), 0, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="not an integer step number"):
        s.step(torch.zeros(1, 2), torch.tensor(3), torch.zeros(1, 2))


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_timestep_not_in_the_schedule_and_finished_schedule(cls):
    s = cls()
    s.set_timesteps(3)
    t = 123 if cls is DPMSolverMultistepScheduler else 123.0
    with pytest.raises(ValueError, match="timestep 123 is not one of this scheduler's timesteps"):
        s.step(torch.zeros(1, 2), t, torch.zeros(1, 2))  # diffusers: IndexError (DPM: silently the last step)
    with pytest.raises(ValueError, match="one value of scheduler.timesteps"):
        s.step(torch.zeros(1, 2), s.timesteps[:2], torch.zeros(1, 2))
    x = torch.zeros(1, 2)
    for t in s.timesteps:
        x = s.step(torch.zeros(1, 2), t, x).prev_sample
    with pytest.raises(ValueError, match="the schedule is finished: call set_timesteps again"):
        s.step(torch.zeros(1, 2), s.timesteps[-1], x)


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_shapes_types_and_generators(cls):
    s = cls()
    s.set_timesteps(3)
    t = s.timesteps[0]
    with pytest.raises(
        ValueError, match=r"model_output and sample must have the same shape, got \(1, 2\) and \(1, 3\)"
    ):
        s.step(torch.zeros(1, 2), t, torch.zeros(1, 3))
    with pytest.raises(TypeError, match="model_output must be a torch.Tensor"):
        s.step([0.0, 0.0], t, torch.zeros(1, 2))
    if cls is not HeunDiscreteScheduler:  # diffusers' Heun.step takes no generator
        with pytest.raises(TypeError, match=r"a seed\? pass torch.Generator\(\).manual_seed\(42\)"):
            s.step(torch.zeros(1, 2), t, torch.zeros(1, 2), generator=42)
    with pytest.raises(ValueError, match="original_samples and noise must have the same shape"):
        s.add_noise(torch.zeros(2, 2), torch.zeros(2, 3), s.timesteps[:2])
    with pytest.raises(ValueError, match="device must name a torch device"):
        s.set_timesteps(3, device="gpu7")


@pytest.mark.parametrize(
    "cls,kwargs,pattern",
    [
        (EulerAncestralDiscreteScheduler, {"prediction_type": "sample"}, r"prediction_type must be one of \['epsilon', 'v_prediction'\]"),
        (EulerDiscreteScheduler, {"prediction_type": "eps"}, "prediction_type must be one of"),
        (EulerDiscreteScheduler, {"final_sigmas_type": "one"}, r"final_sigmas_type must be one of \['zero', 'sigma_min'\]"),
        (EulerDiscreteScheduler, {"sigma_min": -1.0}, "sigma_min must be > 0"),
        (EulerDiscreteScheduler, {"timestep_spacing": "uniform"}, "timestep_spacing must be one of"),
        (HeunDiscreteScheduler, {"beta_schedule": "exp"}, r"beta_schedule must be one of \['linear'"),
        (HeunDiscreteScheduler, {"clip_sample": True, "clip_sample_range": 0.0}, "clip_sample_range must be > 0"),
        (DPMSolverMultistepScheduler, {"thresholding": True, "dynamic_thresholding_ratio": 1.5}, "dynamic_thresholding_ratio"),
        (DPMSolverMultistepScheduler, {"num_train_timesteps": 1}, "num_train_timesteps must be an integer >= 2"),
        (DPMSolverMultistepScheduler, {"steps_offset": -1}, "steps_offset must be an integer >= 0"),
        (EulerAncestralDiscreteScheduler, {"trained_betas": [0.1, 0.2]}, "trained_betas must be 1000 values"),
    ],
)  # fmt: skip
def test_bad_constructor_arguments(cls, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        cls(**kwargs)


def test_euler_churn_arguments():
    s = EulerDiscreteScheduler()
    s.set_timesteps(3)
    with pytest.raises(ValueError, match="s_churn must be >= 0"):
        s.step(torch.zeros(1, 2), s.timesteps[0], torch.zeros(1, 2), s_churn=-1.0)
    with pytest.raises(TypeError, match="s_noise must be a number"):
        s.step(torch.zeros(1, 2), s.timesteps[0], torch.zeros(1, 2), s_noise="1")


# --- the pure functions ---------------------------------------------------------------------------------------------


def test_pure_function_checks():
    with pytest.raises(ValueError, match="need 0 < sigma_min <= sigma_max"):
        karras_sigmas(80.0, 0.002, 10)
    with pytest.raises(ValueError, match="rho must be > 0"):
        karras_sigmas(0.002, 80.0, 10, rho=0.0)
    with pytest.raises(ValueError, match="num_inference_steps must be >= 1"):
        karras_sigmas(0.002, 80.0, 0)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        sigma_predict_x0(torch.zeros(1), torch.zeros(1), 1.0, "flow_prediction")
    with pytest.raises(ValueError, match="model_output and sample must have the same shape"):
        vp_predict_x0(torch.zeros(2), torch.zeros(3), 0.5, 0.5, "epsilon")
    with pytest.raises(ValueError, match="solver_type must be one of"):
        x = torch.zeros(1)
        dpmpp_second_order_step(x, x, x, 1.0, 0.0, 1.0, torch.tensor(1.0), torch.tensor(1.0), "logrho")
    with pytest.raises(ValueError, match="timestep_spacing must be one of"):
        sigma_timesteps(10, 1000, "uniform")
    with pytest.raises(ValueError, match="num_inference_steps must be an integer between 1 and num_train_timesteps=10"):
        dpm_timesteps(11, 10)
