"""What the σ-schedulers (Euler, Euler-ancestral, Heun, DPM-Solver++) share, as a diffusers ``SchedulerMixin`` +
``ConfigMixin`` on the pure functions of :mod:`diffusion_lab.maths.solvers`.

They keep diffusers' ᾱ-schedule (β from ``beta_schedule``, as DDPM/DDIM) but step in the noise level
σ_t = √((1−ᾱ_t)/ᾱ_t): ``sigmas`` holds σ at each inference step with a final 0, and a step index counts the calls of
``step`` (diffusers' ``step_index``; ``set_begin_index`` starts part-way, as img2img does). The loop::

    scheduler.set_timesteps(25)
    x = torch.randn(shape, generator=g) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample

Differences from diffusers 0.42, all errors where diffusers would go on: ``step`` before ``set_timesteps`` (diffusers
steps on the 1000-step training grid), a timestep that is not in ``timesteps`` (diffusers: IndexError, or for
DPM-Solver the last step silently), stepping past the end, a flow-matching config (``from_config`` of SD3's
scheduler would silently build an ᾱ-schedule), and options we do not implement (exponential/beta σ, ``log_linear``
interpolation, ``continuous`` timesteps): a ``ValueError`` naming them.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from diffusion_lab.maths.checks import check_option, check_same_shape
from diffusion_lab.maths.schedules import TIMESTEP_SPACINGS, alphas_cumprod_from_betas
from diffusion_lab.maths.solvers import (
    SIGMA_PREDICTION_TYPES,
    check_steps,
    karras_sigmas,
    sigma_timesteps,
    sigma_to_timestep,
    timesteps_to_sigmas,
    vp_sigmas,
)
from diffusion_lab.schedulers.scheduling_utils import (
    KARRAS_COMPATIBLES,
    StepIndexMixin,
    _Scheduler,
    betas_from_config,
    check_device,
    check_step_inputs,
    compatible_classes,
    config_repr,
    plain_numbers_in_config,
)
from diffusion_lab.utils.errors import check_tensor

__all__ = ["FLOW_CONFIG_MESSAGE"]

FLOW_CONFIG_MESSAGE = (
    "a flow-matching model (SD3, Flux: x_t = (1 − t)·x_0 + t·ε, a velocity prediction) has no ᾱ-schedule, so the "
    "σ = √((1 − ᾱ)/ᾱ) of {cls} (and Karras σ, defined on it) do not apply; sample it with "
    "diffusion_lab.FlowMatchEulerDiscreteScheduler"
)
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")


def _is_flow_config(config: object) -> bool:
    """A config written by a flow-matching scheduler (SD3's ``FlowMatchEulerDiscreteScheduler``, or flow options)."""
    if not hasattr(config, "get"):
        return False
    name = str(config.get("_class_name", ""))
    return (
        name.startswith("FlowMatch")
        or "shift" in config
        or bool(config.get("use_flow_sigmas"))
        or config.get("prediction_type") == "flow_prediction"
    )


class _SigmaScheduler(StepIndexMixin, SchedulerMixin, ConfigMixin):
    """Schedule, σ table, step index, forward process and checks of the four σ-schedulers. Subclasses call
    :meth:`_setup` from their ``@register_to_config`` constructor and implement ``set_timesteps`` and ``step``."""

    _compatibles = KARRAS_COMPATIBLES
    order = 1
    prediction_types: tuple[str, ...] = SIGMA_PREDICTION_TYPES

    # --- construction -----------------------------------------------------------------------------------------

    def _setup(self, not_implemented: dict[str, object] | None = None) -> None:
        """Check the config, build β, ᾱ and the training σ; ``not_implemented``: options that must be off."""
        plain_numbers_in_config(self)
        c = self.config
        if c.get("prediction_type") == "flow_prediction" or c.get("use_flow_sigmas"):
            karras = "use_karras_sigmas=True with " if c.get("use_karras_sigmas") else ""
            raise ValueError(f"{karras}{FLOW_CONFIG_MESSAGE.format(cls=type(self).__name__)}")
        betas = betas_from_config(c)
        check_option("prediction_type", c.prediction_type, self.prediction_types)
        check_option("timestep_spacing", c.timestep_spacing, TIMESTEP_SPACINGS)
        on = [k for k, v in (not_implemented or {}).items() if v]
        if on:
            raise ValueError(f"not implemented in diffusion_lab's {type(self).__name__}: {on}; leave them off")
        if "final_sigmas_type" in c:
            check_option("final_sigmas_type", c.final_sigmas_type, FINAL_SIGMAS_TYPES)
        self.betas = betas  # (T,) β_t
        self.alphas = 1.0 - betas  # (T,) α_t
        self.alphas_cumprod = alphas_cumprod_from_betas(betas)  # (T,) ᾱ_t
        if c.get("rescale_betas_zero_snr", False):
            self.alphas_cumprod[-1] = 2**-24  # as diffusers: σ_T finite (4096) instead of inf
        T = c.num_train_timesteps
        self.timesteps = torch.from_numpy(np.linspace(0, T - 1, T, dtype=np.float32)[::-1].copy())  # (T,) T−1 … 0
        self.sigmas = torch.cat([vp_sigmas(self.alphas_cumprod).flip(0), torch.zeros(1)])  # (T + 1,) σ_{T−1} … σ_0, 0
        self.num_inference_steps: int | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs: bool = False, **kwargs):
        """diffusers' ``from_config``, refusing a flow-matching scheduler's config (SD3's) with a ``ValueError``:
        diffusers would drop its keys and silently build the default ᾱ-schedule."""
        if _is_flow_config(config) or kwargs.get("prediction_type") == "flow_prediction":
            karras = "use_karras_sigmas=True with " if kwargs.get("use_karras_sigmas") else ""
            raise ValueError(f"{karras}{FLOW_CONFIG_MESSAGE.format(cls=cls.__name__)}")
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @classmethod
    def _get_compatibles(cls) -> list[type]:
        """Ours (DDPM, DDIM and the σ-schedulers), then diffusers' classes that read the same config."""
        ours = [*_Scheduler.__subclasses__(), *_SigmaScheduler.__subclasses__()]
        return compatible_classes(ours, super()._get_compatibles())

    def __repr__(self) -> str:
        return config_repr(self)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # --- σ at the inference steps -----------------------------------------------------------------------------

    def _train_sigmas(self) -> np.ndarray:
        """σ_t of the T training steps, (T,) float32, increasing in t (diffusers computes it from ᾱ each time)."""
        return vp_sigmas(self.alphas_cumprod).numpy().copy()

    def _spaced_sigmas(
        self, num_inference_steps: object, karras: bool, sigma_min: float | None = None, sigma_max: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps, σ) of Euler and Heun, both (n,): the spaced timesteps and σ interpolated there, or with
        ``karras`` EDM Eq. 5 between σ at the last and first of them (or ``sigma_min``/``sigma_max``) and the
        timesteps that σ maps to (log-σ interpolation, fractional)."""
        c = self.config
        n = check_steps(num_inference_steps, c.num_train_timesteps)
        timesteps = sigma_timesteps(n, c.num_train_timesteps, c.timestep_spacing, c.steps_offset)
        if timesteps.max() >= c.num_train_timesteps:
            raise ValueError(
                f"steps_offset={c.steps_offset} with num_inference_steps={n} puts a timestep at "
                f"{int(timesteps.max())} >= num_train_timesteps={c.num_train_timesteps}; use fewer steps or steps_offset=0"
            )
        table = self._train_sigmas()
        sigmas = timesteps_to_sigmas(timesteps, table)  # (n,) float64
        if karras:
            lo = sigma_min if sigma_min is not None else sigmas[-1].item()
            hi = sigma_max if sigma_max is not None else sigmas[0].item()
            sigmas = karras_sigmas(lo, hi, n)
            timesteps = sigma_to_timestep(sigmas, np.log(table))
        return timesteps, sigmas

    def _final_sigma(self) -> float:
        """The σ appended after the last step: 0 (``final_sigmas_type="zero"``) or σ_0 of the training schedule."""
        if self.config.get("final_sigmas_type", "zero") == "sigma_min":
            return float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5)
        return 0.0

    def _store(self, timesteps: np.ndarray, sigmas: np.ndarray, device: object, dtype: torch.dtype) -> None:
        """Keep (n,) timesteps on ``device`` and (n + 1,) float32 σ (final σ appended) on the CPU, as diffusers."""
        device = check_device(device)
        sigmas = np.concatenate([sigmas, [self._final_sigma()]]).astype(np.float32)
        self.sigmas = torch.from_numpy(sigmas)
        self.timesteps = torch.from_numpy(np.asarray(timesteps)).to(device=device, dtype=dtype)
        self._step_index = None
        self._begin_index = None

    # --- the step index -----------------------------------------------------------------------------------------

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """The std of x at the first step: σ_max for ``linspace``/``trailing``, √(σ_max² + 1) for ``leading`` (as
        diffusers: leading never starts at t = T−1, and its σ_max is below the training start)."""
        max_sigma = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return max_sigma
        return (max_sigma**2 + 1) ** 0.5

    def _check_ready(self, timestep: object) -> None:
        """``set_timesteps`` was called, a float timestep (integers: the loop index?), the schedule not finished."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step() or scale_model_input()")
        integer = isinstance(timestep, int | np.integer) or (
            isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()
        )
        if integer and self.timesteps.is_floating_point():
            raise ValueError(
                f"pass a value of scheduler.timesteps ({self.timesteps.dtype}), not an integer step number (from "
                f"enumerate(timesteps)), as diffusers' {type(self).__name__} requires"
            )
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._step_index >= len(self.sigmas) - 1:
            raise ValueError(
                "the schedule is finished: call set_timesteps again to sample anew (if the first timestep repeats, as "
                "with Karras σ on the cosine schedule, the first step starts at its second copy, as in diffusers: "
                "call set_begin_index(0) after set_timesteps)"
            )

    # --- model input and the forward process ------------------------------------------------------------------

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """x/√(σ² + 1): the σ-scale sample x = x_0 + σ·ε back to the unit-variance x_t the network was trained on
        (EDM's c_in, Table 1). (B, ...) → (B, ...)."""
        check_tensor("sample", sample, "(B, ...), the current x")
        self._check_ready(timestep)
        sigma = self.sigmas[self._step_index]
        return sample / ((sigma**2 + 1) ** 0.5)

    def _sigmas_at(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """σ at each of ``timesteps`` (values of the schedule, or the step index after ``set_begin_index``), shaped
        (B, 1, ..., 1) for ``like``."""
        check_tensor("timesteps", timesteps, "(B,) values of scheduler.timesteps")
        sigmas = self.sigmas.to(device=like.device, dtype=like.dtype)
        return sigmas[self._indices_of(timesteps)].flatten().reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The forward process in the σ scale: x = x_0 + σ·ε at each sample's timestep. (B, ...) → (B, ...)."""
        check_same_shape("original_samples", original_samples, "noise", noise, "(B, ...), the clean x_0 and ε")
        return original_samples + noise * self._sigmas_at(timesteps, original_samples)

    def _check_step(self, model_output: torch.Tensor, timestep: object, sample: torch.Tensor, generator=None) -> None:
        check_step_inputs(model_output, sample, generator)
        self._check_ready(timestep)
