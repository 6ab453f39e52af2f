"""Euler-ancestral scheduler shaped like diffusers' ``EulerAncestralDiscreteScheduler`` (SDXL-Turbo's; k-diffusion's
``sample_euler_ancestral``), on the pure functions of :mod:`diffusion_lab.maths.solvers`."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  (diffusers' pipeline loader finds the base class by name in the module that defines the component)

from diffusion_lab.maths.solvers import ancestral_sigmas, euler_ancestral_step, sigma_predict_x0
from diffusion_lab.schedulers.scheduling_sigma_utils import _SigmaScheduler
from diffusion_lab.schedulers.scheduling_utils import SchedulerOutput
from diffusion_lab.utils.torch_utils import randn

__all__ = ["EulerAncestralDiscreteScheduler"]


class EulerAncestralDiscreteScheduler(_SigmaScheduler):
    """An Euler step to σ_down, then fresh noise σ_up·z, with σ_down² + σ_up² = σ_{i+1}² (the reverse SDE's
    ancestral sampler, DDPM's posterior variance in σ):

        σ_up = √(σ_{i+1}²·(σ_i² − σ_{i+1}²)/σ_i²),  σ_down = √(σ_{i+1}² − σ_up²)
        x_{i+1} = x_i + (σ_down − σ_i)·(x_i − x̂_0)/σ_i + σ_up·z

    σ_i interpolated at the spaced timesteps (diffusers 0.42's Euler-ancestral has no Karras option), final σ 0.
    One ``z`` per step, drawn with ``randn_tensor``'s rules from ``generator`` in the dtype of the model output, so
    a seeded loop equals diffusers'. Prediction types ε and v (diffusers has no ``sample`` here).
    """

    prediction_types = ("epsilon", "v_prediction")

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        self._setup()

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """``num_inference_steps`` float32 timesteps and σ interpolated there, then a final 0."""
        timesteps, sigmas = self._spaced_sigmas(num_inference_steps, karras=False)
        self.num_inference_steps = len(timesteps)
        self._store(timesteps, sigmas, device, torch.float32)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step σ_i → σ_{i+1}: (B, ...) → (B, ...) (float32 inside, the output in the model's dtype).

        1. x̂_0 from the model output at σ_i (:func:`~diffusion_lab.maths.solvers.sigma_predict_x0`).
        2. σ_up, σ_down (:func:`~diffusion_lab.maths.solvers.ancestral_sigmas`).
        3. x_{i+1} = x + (σ_down − σ_i)·(x − x̂_0)/σ_i + σ_up·z, z from ``generator`` (also on the last step, where
           σ_up = 0, so the generator advances as in diffusers).
        """
        self._check_step(model_output, timestep, sample, generator)
        sigma = self.sigmas[self._step_index]
        sample = sample.to(torch.float32)
        x0 = sigma_predict_x0(model_output, sample, sigma, self.config.prediction_type)
        sigma_up, sigma_down = ancestral_sigmas(sigma, self.sigmas[self._step_index + 1])
        noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
        prev_sample = euler_ancestral_step(sample, x0, sigma, sigma_down, sigma_up, noise)
        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index += 1
        out = SchedulerOutput(prev_sample, x0)
        return out if return_dict else out.to_tuple()
