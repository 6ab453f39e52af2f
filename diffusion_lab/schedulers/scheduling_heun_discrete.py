"""Heun scheduler shaped like diffusers' ``HeunDiscreteScheduler`` (Karras et al. 2022, Algorithm 1), on the pure
functions of :mod:`diffusion_lab.maths.solvers`."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  (diffusers' pipeline loader finds the base class by name in the module that defines the component)

from diffusion_lab.maths.solvers import heun_step, ode_derivative, sigma_predict_x0
from diffusion_lab.schedulers.scheduling_sigma_utils import _SigmaScheduler
from diffusion_lab.schedulers.scheduling_utils import SchedulerOutput
from diffusion_lab.utils.errors import check_number

__all__ = ["HeunDiscreteScheduler"]


class HeunDiscreteScheduler(_SigmaScheduler):
    """Heun's second-order method on the probability-flow ODE (EDM Alg. 1): each step σ_i → σ_{i+1} costs two network
    calls, an Euler predictor and a trapezoidal corrector,

        d_i = (x_i − x̂_0(x_i, σ_i))/σ_i,   x̃ = x_i + (σ_{i+1} − σ_i)·d_i
        d'_i = (x̃ − x̂_0(x̃, σ_{i+1}))/σ_{i+1},   x_{i+1} = x_i + (σ_{i+1} − σ_i)·(d_i + d'_i)/2

    except the last step to σ = 0, which stays Euler. As in diffusers the two calls are two entries of ``timesteps``:
    every timestep after the first appears twice ([t_0, t_1, t_1, t_2, t_2, …]; 2n − 1 entries, ``order = 2``), and
    ``sigmas`` likewise. Defaults are diffusers' (note β from 0.00085 to 0.012 with the ``linear`` schedule).
    ``beta_schedule="exp"`` and exponential/beta σ are not implemented (``ValueError``).
    """

    order = 2

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self._setup({"use_exponential_sigmas": use_exponential_sigmas, "use_beta_sigmas": use_beta_sigmas})
        if clip_sample and not check_number("clip_sample_range", clip_sample_range) > 0:
            raise ValueError(f"clip_sample_range must be > 0, got {clip_sample_range!r}")
        self.use_karras_sigmas = use_karras_sigmas
        self._reset_state()

    def _reset_state(self) -> None:
        self.prev_derivative: torch.Tensor | None = None  # d_i of the predictor, kept for the corrector
        self.dt: torch.Tensor | None = None  # σ_{i+1} − σ_i
        self.sample: torch.Tensor | None = None  # x_i, the start of the step

    @property
    def state_in_first_order(self) -> bool:
        """True when the next ``step`` is a predictor (Euler) call, False when it is the corrector."""
        return self.dt is None

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """n timesteps and σ (Karras σ with ``use_karras_sigmas``), then each entry after the first doubled."""
        timesteps, sigmas = self._spaced_sigmas(num_inference_steps, bool(self.config.use_karras_sigmas))
        self.num_inference_steps = len(timesteps)
        self._store(timesteps, sigmas, device, torch.float32)
        s, t = self.sigmas, self.timesteps
        self.sigmas = torch.cat([s[:1], s[1:-1].repeat_interleave(2), s[-1:]])  # (2n,)
        self.timesteps = torch.cat([t[:1], t[1:].repeat_interleave(2)])  # (2n − 1,)
        self._reset_state()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """The predictor or the corrector half of a Heun step: (B, ...) → (B, ...).

        Predictor (``state_in_first_order``): x̂_0 at σ_i, d_i, and the Euler point x̃ (returned; the pipeline calls
        the model on it next). Corrector: x̂_0 at σ_{i+1} from the output on x̃, d'_i, and x_{i+1} = x_i + (σ_{i+1} −
        σ_i)·(d_i + d'_i)/2 from the stored x_i (:func:`~diffusion_lab.maths.solvers.heun_step`).
        """
        self._check_step(model_output, timestep, sample)
        c = self.config
        first = self.state_in_first_order
        if first:
            sigma, sigma_next = self.sigmas[self._step_index], self.sigmas[self._step_index + 1]
        else:
            sigma, sigma_next = self.sigmas[self._step_index - 1], self.sigmas[self._step_index]
        x0 = sigma_predict_x0(model_output, sample, sigma if first else sigma_next, c.prediction_type)
        if c.clip_sample:
            x0 = x0.clamp(-c.clip_sample_range, c.clip_sample_range)
        if first:
            self.prev_derivative = ode_derivative(sample, x0, sigma)
            self.dt = sigma_next - sigma
            self.sample = sample
            prev_sample = sample + self.prev_derivative * self.dt  # the Euler point x̃ (euler_step)
        else:
            derivative = ode_derivative(sample, x0, sigma_next)
            prev_sample = heun_step(self.sample, self.prev_derivative, derivative, self.dt)
            self._reset_state()
        self._step_index += 1
        out = SchedulerOutput(prev_sample, x0)
        return out if return_dict else out.to_tuple()
