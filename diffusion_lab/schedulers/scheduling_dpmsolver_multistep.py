"""DPM-Solver++ scheduler shaped like diffusers' ``DPMSolverMultistepScheduler`` ("DPM++ 2M", with Karras σ "DPM++ 2M
Karras"; Lu et al. 2022, Algorithms 1-2), on the pure functions of :mod:`diffusion_lab.maths.solvers`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  (diffusers' pipeline loader finds the base class by name in the module that defines the component)

from diffusion_lab.maths.checks import check_option, check_same_shape
from diffusion_lab.maths.diffusion import dynamic_threshold
from diffusion_lab.maths.solvers import (
    SOLVER_TYPES,
    check_steps,
    dpm_lambda,
    dpm_timesteps,
    dpmpp_first_order_step,
    dpmpp_second_order_step,
    karras_sigmas,
    sigma_to_timestep,
    timesteps_to_sigmas,
    vp_alpha_sigma,
    vp_predict_x0,
)
from diffusion_lab.schedulers.scheduling_sigma_utils import _SigmaScheduler
from diffusion_lab.schedulers.scheduling_utils import SchedulerOutput
from diffusion_lab.utils.errors import check_int, check_number, check_tensor

__all__ = ["DPMSolverMultistepScheduler", "DPMSolverSchedulerOutput"]

ALGORITHM_TYPES = ("dpmsolver++",)  # diffusers also has "dpmsolver", "sde-dpmsolver", "sde-dpmsolver++"
SOLVER_ORDERS = (1, 2)  # diffusers also has 3


@dataclass
class DPMSolverSchedulerOutput(SchedulerOutput):
    """What ``step`` returns: x_{t_i} and the data prediction x̂_0 it used (read like diffusers' outputs: ``out[0]``
    is ``prev_sample``; ``return_dict=False`` gives ``(prev_sample,)`` as diffusers)."""

    prev_sample: torch.Tensor  # (B, ...) x_{t_i}
    pred_original_sample: torch.Tensor  # (B, ...) x̂_0 = x_θ(x_{t_{i−1}}, t_{i−1})


class DPMSolverMultistepScheduler(_SigmaScheduler):
    """DPM-Solver++ in data prediction (Lu et al. 2022): the exponential integrator of the probability-flow ODE in
    λ = log(α_t/σ_t), first order (= DDIM) or the second-order multistep 2M, which reuses the previous step's x̂_0:

        h = λ_{t_i} − λ_{t_{i−1}},  r = h_{i−1}/h,  D = x̂_0 + (x̂_0 − x̂_0^{prev})/(2r)
        x_{t_i} = (σ_{t_i}/σ_{t_{i−1}})·x_{t_{i−1}} − α_{t_i}·(e^{−h} − 1)·D          (Alg. 2; order 1: D = x̂_0)

    One network call per step (``order = 1``); the first step is first order (no previous x̂_0), and so is the last
    with ``final_sigmas_type="zero"`` (h = ∞ there) or ``lower_order_final`` below 15 steps. Timesteps are integers
    (DPM spacing, :func:`~diffusion_lab.maths.solvers.dpm_timesteps`), with Karras σ rounded to the nearest training
    step. The sample stays the unscaled x_t: ``init_noise_sigma`` is 1, ``scale_model_input`` the identity.

    ``algorithm_type`` "dpmsolver++" only and ``solver_order`` 1 or 2 (``ValueError`` for the others, naming the
    supported ones); no SDE variants, learned variances, flow σ, Lu lambdas, exponential/beta σ or dynamic shifting.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        solver_order: int = 2,
        prediction_type: Literal["epsilon", "sample", "v_prediction", "flow_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: Literal["dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"] = "dpmsolver++",
        solver_type: Literal["midpoint", "heun"] = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: Literal["learned", "learned_range"] | None = None,
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: Literal["exponential"] = "exponential",
    ) -> None:
        if not isinstance(algorithm_type, str) or algorithm_type not in ALGORITHM_TYPES:
            raise ValueError(
                f"algorithm_type must be one of {list(ALGORITHM_TYPES)} in diffusion_lab's DPMSolverMultistepScheduler, "
                f"got {algorithm_type!r} (diffusers' 'dpmsolver' and the SDE variants are not implemented)"
            )
        if check_int("solver_order", solver_order, minimum=None) not in SOLVER_ORDERS:
            raise ValueError(
                f"solver_order must be one of {list(SOLVER_ORDERS)} (1 = DPM-Solver++(1), i.e. DDIM; 2 = DPM-Solver++(2M)), "
                f"got {solver_order!r} (diffusers' third order is not implemented)"
            )
        check_option("solver_type", solver_type, SOLVER_TYPES)
        self._setup(
            {
                "euler_at_final": euler_at_final,
                "use_exponential_sigmas": use_exponential_sigmas,
                "use_beta_sigmas": use_beta_sigmas,
                "use_lu_lambdas": use_lu_lambdas,
                "use_dynamic_shifting": use_dynamic_shifting,
                "variance_type": variance_type,
            }
        )
        if thresholding:
            dynamic_threshold(torch.zeros(1, 1), dynamic_thresholding_ratio, sample_max_value)  # validates both
        if lambda_min_clipped != -float("inf"):
            check_number("lambda_min_clipped", lambda_min_clipped)
        self.alpha_t = torch.sqrt(self.alphas_cumprod)  # (T,) α_t
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)  # (T,) σ_t
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)  # (T,) λ_t
        self.sigmas = torch.from_numpy(self._train_sigmas())  # (T,) σ_t, increasing, no final 0 (as diffusers)
        self._reset_state()

    def _reset_state(self) -> None:
        self.model_outputs: list[torch.Tensor | None] = [None] * self.config.solver_order  # x̂_0 of recent steps
        self.lower_order_nums = 0  # steps taken so far, up to solver_order

    @property
    def init_noise_sigma(self) -> float:  # type: ignore[override]
        """1: DPM-Solver steps the unscaled x_t, which starts as N(0, I)."""
        return 1.0

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """n integer timesteps (:func:`~diffusion_lab.maths.solvers.dpm_timesteps`; with ``use_karras_sigmas``, Karras
        σ between σ_0 and σ_{T−1} and their timesteps, rounded except for the cosine schedule) and σ, + final σ."""
        c = self.config
        T = c.num_train_timesteps
        n = check_steps(num_inference_steps, T)
        clipped_idx = torch.searchsorted(torch.flip(self.lambda_t, [0]), c.lambda_min_clipped)
        last_timestep = int(T - clipped_idx)
        timesteps = dpm_timesteps(n, T, c.timestep_spacing, c.steps_offset, last_timestep)
        if timesteps.max() >= T:
            raise ValueError(
                f"steps_offset={c.steps_offset} with num_inference_steps={n} puts a timestep at {int(timesteps.max())} "
                f">= num_train_timesteps={T}; use fewer steps or steps_offset=0"
            )
        table = self._train_sigmas()
        if c.use_karras_sigmas:
            sigmas = karras_sigmas(table[0].item(), table[-1].item(), n)
            timesteps = sigma_to_timestep(sigmas, np.log(table))
            if c.beta_schedule != "squaredcos_cap_v2":
                timesteps = timesteps.round()
        else:
            sigmas = timesteps_to_sigmas(timesteps, table)
        self._store(timesteps, sigmas, device, torch.int64)
        self.num_inference_steps = len(timesteps)
        self._reset_state()

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Identity: DPM-Solver feeds the unscaled x_t to the network (kept for pipelines that call it)."""
        return check_tensor("sample", sample, "(B, ...), the current x_t")

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = α_t·x_0 + σ_t·ε at each sample's timestep (DDPM Eq. 4 with α_t = √ᾱ_t). (B, ...) → (B, ...)."""
        check_same_shape("original_samples", original_samples, "noise", noise, "(B, ...), the clean x_0 and ε")
        alpha_t, sigma_t = vp_alpha_sigma(self._sigmas_at(timesteps, original_samples))
        return alpha_t * original_samples + sigma_t * noise

    def convert_model_output(self, model_output: torch.Tensor, *args, sample: torch.Tensor, **kwargs) -> torch.Tensor:
        """The data prediction x̂_0 at the current step (DPM-Solver++ §3.2; thresholded if ``thresholding``)."""
        alpha_t, sigma_t = vp_alpha_sigma(self.sigmas[self._step_index])
        x0 = vp_predict_x0(model_output, sample, alpha_t, sigma_t, self.config.prediction_type)
        if self.config.thresholding:
            x0 = dynamic_threshold(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)
        return x0

    def _alpha_sigma_lambda(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        alpha, sigma = vp_alpha_sigma(self.sigmas[index])
        return alpha, sigma, dpm_lambda(alpha, sigma)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DPMSolverSchedulerOutput | tuple[torch.Tensor]:
        """One DPM-Solver++ step t_{i−1} → t_i: (B, ...) → (B, ...) (float32 inside, the model's dtype out).

        1. x̂_0 = x_θ(x, t_{i−1}) (:meth:`convert_model_output`), pushed onto the last ``solver_order`` x̂_0.
        2. First order (:func:`~diffusion_lab.maths.solvers.dpmpp_first_order_step`) on the first step, with
           ``solver_order=1``, and on the last step when ``final_sigmas_type="zero"`` or ``lower_order_final`` with
           fewer than 15 steps; else 2M (:func:`~diffusion_lab.maths.solvers.dpmpp_second_order_step`).

        ``generator`` and ``variance_noise`` are accepted for the pipelines' sake and unused (no SDE variant).
        """
        self._check_step(model_output, timestep, sample, generator)
        c = self.config
        last = len(self.timesteps) - 1
        lower_order_final = self._step_index == last and (
            (c.lower_order_final and len(self.timesteps) < 15) or c.final_sigmas_type == "zero"
        )
        x0 = self.convert_model_output(model_output, sample=sample)
        self.model_outputs = [*self.model_outputs[1:], x0]
        sample = sample.to(torch.float32)
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(self._step_index + 1)
        _, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(self._step_index)
        h = lambda_t - lambda_s0
        if c.solver_order == 1 or self.lower_order_nums < 1 or lower_order_final:
            prev_sample = dpmpp_first_order_step(sample, x0, alpha_t, sigma_t, sigma_s0, h)
        else:
            _, _, lambda_s1 = self._alpha_sigma_lambda(self._step_index - 1)
            h_0 = lambda_s0 - lambda_s1
            prev_sample = dpmpp_second_order_step(
                sample, x0, self.model_outputs[-2], alpha_t, sigma_t, sigma_s0, h, h_0, c.solver_type
            )
        self.lower_order_nums = min(self.lower_order_nums + 1, c.solver_order)
        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return (prev_sample,)
        return DPMSolverSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
