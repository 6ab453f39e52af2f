"""DDPM scheduler shaped like diffusers' ``DDPMScheduler`` (Ho et al. 2020), on the pure functions of :mod:`diffusion_lab.maths.diffusion`."""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  (diffusers' pipeline loader finds the base class by name in the module that defines the component)

from diffusion_lab.maths.checks import check_option
from diffusion_lab.maths.diffusion import (
    ddpm_posterior,
    ddpm_step,
    predict_x0_and_eps,
)
from diffusion_lab.schedulers.scheduling_utils import KARRAS_COMPATIBLES, SchedulerOutput, _Scheduler
from diffusion_lab.utils.torch_utils import randn

__all__ = ["DDPMScheduler"]


class DDPMScheduler(_Scheduler):
    """Ancestral sampling of Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (Algorithm 2).

    Each step draws x_{t'} ~ N(μ̃(x_t, x̂_0), σ_t²) with the posterior of Eq. 7 (see
    :func:`~diffusion_lab.maths.diffusion.ddpm_step`); with fewer inference steps than T the step goes to the next
    timestep in ``timesteps`` and uses the effective β'_t = 1 − ᾱ_t/ᾱ_{t'}. No noise is added at t = 0.
    Defaults are diffusers': linear 1e-4 → 0.02, ``clip_sample=True``, epsilon, ``leading`` spacing.
    """

    _compatibles = KARRAS_COMPATIBLES

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        check_option("variance_type", variance_type, ("fixed_small", "fixed_large"))
        self._setup()
        self.variance_type = variance_type

    def _previous(self, t: int) -> int:
        """The timestep the sampler goes to from ``t``: the next entry of ``timesteps`` (−1 after the last one),
        or t − 1 before ``set_timesteps`` was called (the full chain)."""
        if self.num_inference_steps is None and not self.custom_timesteps:
            return t - 1
        return self._next_in_schedule(t)

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """:meth:`_previous` typed as diffusers returns it: a 0-d tensor once a schedule is set, else t − 1."""
        t = self._previous(self._index(timestep))
        if self.num_inference_steps is None and not self.custom_timesteps:
            return timestep - 1
        return torch.tensor(t, device=self.timesteps.device)

    def _get_variance(self, t: int) -> torch.Tensor:
        """σ_t² of the step from ``t`` (diffusers' name): β̃ clamped at 1e-20 (``fixed_small``) or β'_t."""
        t = self._index(t)
        prev_t = self._previous(t)
        ab_t, ab_prev = self.alphas_cumprod[t], self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        if self.variance_type == "fixed_large":
            return 1 - ab_t / ab_prev
        _, posterior_var = ddpm_posterior(ab_t, ab_t, ab_t, ab_prev)  # β̃ (Eq. 7); the mean's inputs are unused here
        return torch.clamp(posterior_var, min=1e-20)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One reverse step x_t → x_{t'}: (B, ...) → (B, ...).

        1. ᾱ_t and ᾱ_{t'} (ᾱ = 1 before the first training step).
        2. x̂_0 from the model output (DDPM Eq. 15 for ε; see :func:`predict_x0_and_eps`), thresholded or
           clipped if asked.
        3. Posterior mean μ̃ (Eq. 7) plus σ_t·z, z ~ N(0, I) drawn with ``generator``, except at t = 0.
        """
        self._check_step_inputs(model_output, sample, generator)
        t = self._index(timestep)
        prev_t = self._previous(t)
        ab_t = self.alphas_cumprod[t]
        ab_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        x0, _ = predict_x0_and_eps(model_output, sample, ab_t, self.config.prediction_type)
        x0 = self._clip(x0)
        noise = None
        if t > 0:
            noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
        prev_sample = ddpm_step(x0, sample, ab_t, ab_prev, noise, self.variance_type)
        out = SchedulerOutput(prev_sample, x0)
        return out if return_dict else out.to_tuple()
