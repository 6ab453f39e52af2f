"""Euler scheduler shaped like diffusers' ``EulerDiscreteScheduler`` (SDXL's default; Karras et al. 2022, Alg. 1-2
without the Heun correction), on the pure functions of :mod:`diffusion_lab.maths.solvers`."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  (diffusers' pipeline loader finds the base class by name in the module that defines the component)

from diffusion_lab.maths.solvers import churn_gamma, euler_step, sigma_predict_x0
from diffusion_lab.schedulers.scheduling_sigma_utils import _SigmaScheduler
from diffusion_lab.schedulers.scheduling_utils import SchedulerOutput
from diffusion_lab.utils.errors import check_number
from diffusion_lab.utils.torch_utils import randn

__all__ = ["EulerDiscreteScheduler"]


class EulerDiscreteScheduler(_SigmaScheduler):
    """Euler's method on the probability-flow ODE dx/dσ = (x − x̂_0)/σ (EDM Eq. 3), x = x_0 + σ·ε:

        x_{i+1} = x_i + (σ_{i+1} − σ_i)·(x_i − x̂_0)/σ_i

    σ_i = √((1−ᾱ_t)/ᾱ_t) at the spaced timesteps (interpolated between training steps), or Karras σ (EDM Eq. 5,
    ``use_karras_sigmas``), then a final 0 (or σ_0 with ``final_sigmas_type="sigma_min"``). In σ this is DDIM (η = 0).
    ``s_churn`` > 0 adds EDM Alg. 2's noise first. Defaults are diffusers': linear 1e-4 → 0.02, ``linspace``
    spacing (fractional timesteps), ε-prediction. Not implemented (``ValueError``): exponential/beta σ,
    ``interpolation_type="log_linear"``, ``timestep_type="continuous"``, custom timesteps/σ.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        interpolation_type: str = "linear",
        use_karras_sigmas: bool | None = False,
        use_exponential_sigmas: bool | None = False,
        use_beta_sigmas: bool | None = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace",
        timestep_type: Literal["discrete", "continuous"] = "discrete",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
    ) -> None:
        self._setup(
            {
                "use_exponential_sigmas": use_exponential_sigmas,
                "use_beta_sigmas": use_beta_sigmas,
                "interpolation_type='log_linear'": interpolation_type != "linear",
                "timestep_type='continuous'": timestep_type != "discrete",
            }
        )
        for name in ("sigma_min", "sigma_max"):
            if self.config[name] is not None and not check_number(name, self.config[name]) > 0:
                raise ValueError(f"{name} must be > 0 (a noise level σ), got {self.config[name]!r}")
        self.use_karras_sigmas = use_karras_sigmas

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """``num_inference_steps`` timesteps and their σ (+ final σ): see the class docstring. Timesteps are float32
        (fractional with Karras σ or ``linspace``); σ stays on the CPU, as in diffusers."""
        c = self.config
        timesteps, sigmas = self._spaced_sigmas(
            num_inference_steps, bool(c.use_karras_sigmas), c.sigma_min, c.sigma_max
        )
        self.num_inference_steps = len(timesteps)
        self._store(timesteps.astype(np.float32), sigmas, device, torch.float32)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One Euler step σ_i → σ_{i+1}: (B, ...) → (B, ...), computed in float32 and returned in the dtype of
        ``model_output`` (x̂_0 stays float32), as diffusers.

        1. γ = min(s_churn/n, √2 − 1) if s_tmin ≤ σ_i ≤ s_tmax (EDM Alg. 2); σ̂ = (1 + γ)·σ_i and, if γ > 0,
           x ← x + √(σ̂² − σ_i²)·s_noise·z.
        2. x̂_0 from the model output (:func:`~diffusion_lab.maths.solvers.sigma_predict_x0`; ε at σ̂).
        3. x_{i+1} = x + (σ_{i+1} − σ̂)·(x − x̂_0)/σ̂ (:func:`~diffusion_lab.maths.solvers.euler_step`).
        """
        self._check_step(model_output, timestep, sample, generator)
        s_noise = check_number("s_noise", s_noise)
        sample = sample.to(torch.float32)
        sigma = self.sigmas[self._step_index]
        gamma = churn_gamma(s_churn, len(self.sigmas) - 1, float(sigma), s_tmin, s_tmax)
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
            sample = sample + noise * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        pred_sigma = sigma_hat if self.config.prediction_type == "epsilon" else sigma  # as diffusers
        x0 = sigma_predict_x0(model_output, sample, pred_sigma, self.config.prediction_type)
        prev_sample = euler_step(sample, x0, sigma_hat, self.sigmas[self._step_index + 1])
        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index += 1
        out = SchedulerOutput(prev_sample, x0)
        return out if return_dict else out.to_tuple()
