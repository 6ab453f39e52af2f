"""DDIM scheduler shaped like diffusers' ``DDIMScheduler`` (Song et al. 2021), on the pure functions of :mod:`diffusion_lab.maths.diffusion`."""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  (diffusers' pipeline loader finds the base class by name in the module that defines the component)

from diffusion_lab.maths.diffusion import (
    check_eta,
    ddim_sigma,
    ddim_step,
    predict_x0_and_eps,
)
from diffusion_lab.schedulers.scheduling_utils import KARRAS_COMPATIBLES, SchedulerOutput, _Scheduler
from diffusion_lab.utils.errors import check_tensor
from diffusion_lab.utils.torch_utils import randn

__all__ = ["DDIMScheduler"]


class DDIMScheduler(_Scheduler):
    """Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models": the step of Eq. 12 with σ_t(η) of Eq. 16.

    η = 0 is deterministic (the same noise always gives the same image; few steps work well); η = 1 adds DDPM's
    posterior variance. As in diffusers, the next timestep is t − ⌊T/n⌋ for every spacing, and below 0 the
    step uses ``final_alpha_cumprod`` (1 with ``set_alpha_to_one=True``, else ᾱ_0). With hand-picked
    ``set_timesteps(timesteps=[...])`` (which diffusers' DDIM lacks) the next timestep is the next one in the list.
    Defaults are diffusers': linear 1e-4 → 0.02, ``clip_sample=True``, ``set_alpha_to_one=True``, ``leading``.
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
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        self._setup()
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]

    def previous_timestep(self, timestep: int | torch.Tensor) -> int:
        """t − ⌊T/n⌋, or the next entry of custom ``timesteps`` (may be negative: then ``final_alpha_cumprod``)."""
        if self.custom_timesteps:
            return self._next_in_schedule(self._index(timestep))
        return self._index(timestep) - self.config.num_train_timesteps // self.num_inference_steps

    def _get_variance(self, timestep: int, prev_timestep: int) -> torch.Tensor:
        """σ_t² at η = 1 between two timesteps (diffusers' name): (1−ᾱ_{t'})/(1−ᾱ_t)·(1 − ᾱ_t/ᾱ_{t'}) (Eq. 16)."""
        ab_t = self.alphas_cumprod[self._index(timestep)]
        ab_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        return ddim_sigma(ab_t, ab_prev, 1.0) ** 2

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One reverse step x_t → x_{t'}: (B, ...) → (B, ...).

        ``timestep`` must be a value of ``timesteps`` (``ValueError`` otherwise, as in :class:`DDPMScheduler`;
        diffusers' DDIM would step to a wrong t' silently); ``eta`` in [0, 1].

        1. t' = t − ⌊T/n⌋; ᾱ_t and ᾱ_{t'} (``final_alpha_cumprod`` when t' < 0).
        2. (x̂_0, ε̂) from the model output; x̂_0 thresholded or clipped if asked (and ε̂ recomputed from it if
           ``use_clipped_model_output``).
        3. σ_t = η·√((1−ᾱ_{t'})/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_{t'}) (Eq. 16).
        4. x_{t'} = √ᾱ_{t'}·x̂_0 + √(1−ᾱ_{t'}−σ_t²)·ε̂ + σ_t·z (Eq. 12); z only when η > 0.
        """
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        eta = check_eta(eta)  # in [0, 1]: above 1 the step would be NaN
        self._check_step_inputs(model_output, sample, generator)
        t = self._index(timestep)
        if not self.custom_timesteps:
            self._position(t)  # a timestep off the schedule (the loop index?) would step to the wrong t'
        prev_t = self.previous_timestep(t)
        ab_t = self.alphas_cumprod[t]
        ab_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        x0, eps = predict_x0_and_eps(model_output, sample, ab_t, self.config.prediction_type)
        x0 = self._clip(x0)
        sigma = ddim_sigma(ab_t, ab_prev, eta)
        if use_clipped_model_output:
            eps = (sample - ab_t**0.5 * x0) / (1 - ab_t) ** 0.5
        noise = None
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("pass either generator or variance_noise, not both")
            if variance_noise is not None:
                check_tensor("variance_noise", variance_noise, "(the shape of sample), the noise z of the step")
            if variance_noise is not None and variance_noise.shape != sample.shape:
                raise ValueError(
                    f"variance_noise must have the shape of sample {tuple(sample.shape)}, got {tuple(variance_noise.shape)}"
                )
            noise = variance_noise
            if noise is None:
                noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
        prev_sample = ddim_step(x0, eps, ab_prev, sigma, noise)
        out = SchedulerOutput(prev_sample, x0)
        return out if return_dict else out.to_tuple()
