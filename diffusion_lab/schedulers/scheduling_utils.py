"""What DDPM and DDIM share, as diffusers' ``SchedulerMixin`` + ``ConfigMixin`` subclass, on the pure functions of
:mod:`diffusion_lab.maths.diffusion`.

A scheduler holds the noise schedule ᾱ_t and takes one reverse step x_t → x_{t'}; it holds no model. The loop::

    scheduler.set_timesteps(50)
    x = torch.randn(shape, generator=g) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x, generator=g).prev_sample

Constructor arguments, attributes and methods are diffusers 0.42's (numbers equal, tested side by side). This
module imports diffusers at module level because our schedulers are diffusers schedulers, so a diffusers pipeline
saves and loads them: ``save_config``/``from_config``/``from_pretrained``/``save_pretrained``/``compatibles`` are
diffusers' own, and ``pipe.save_pretrained`` records the class as ``["diffusion_lab.schedulers.scheduling_ddim",
"DDIMScheduler"]``. Not implemented: learned variances (Improved DDPM; ``ValueError``). Timesteps are integers
0..T−1, as in :mod:`diffusion_lab.maths.schedules`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin

from diffusion_lab.maths.checks import check_option, check_timesteps
from diffusion_lab.maths.diffusion import (
    PREDICTION_TYPES,
    dynamic_threshold,
    extract,
    velocity,
)
from diffusion_lab.maths.schedules import (
    BETA_SCHEDULES,
    TIMESTEP_SPACINGS,
    alphas_cumprod_from_betas,
    custom_timesteps,
    inference_timesteps,
    make_betas,
    rescale_zero_terminal_snr,
)
from diffusion_lab.utils.errors import check_generator, check_int, check_number, check_tensor

__all__ = [
    "SchedulerOutput",
    "StepIndexMixin",
    "betas_from_config",
    "check_step_inputs",
    "config_repr",
    "plain_numbers_in_config",
]

KARRAS_COMPATIBLES = [e.name for e in KarrasDiffusionSchedulers]  # diffusers' ``_compatibles`` of DDPM and DDIM


def check_device(device: object) -> torch.device | None:
    """``device`` for ``set_timesteps``: None, a ``torch.device`` or its name; ``TypeError``/``ValueError`` naming
    ``device`` otherwise (torch's own error is a RuntimeError)."""
    if device is None or isinstance(device, torch.device):
        return device
    if not isinstance(device, str | int) or isinstance(device, bool):
        raise TypeError(f"device must be a torch.device, its name ('cpu', 'cuda') or None, got {type(device).__name__}")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must name a torch device ('cpu', 'cuda', 'cuda:0', 'mps'), got {device!r}") from None


def compatible_classes(ours: list[type], theirs: list[type]) -> list[type]:
    """Our compatible classes, then diffusers' (``SchedulerMixin._get_compatibles``), each class once."""
    return list(dict.fromkeys([*ours, *theirs]))


def plain_numbers_in_config(scheduler: ConfigMixin) -> None:
    """NumPy / torch scalars in the config (``num_train_timesteps=np.int64(1000)``) stored as the Python numbers
    they hold, so the config saves as JSON and equals one built from plain numbers."""
    plain = {
        key: value.item()
        for key, value in scheduler.config.items()
        if isinstance(value, np.generic) or (isinstance(value, torch.Tensor) and value.ndim == 0)
    }
    if plain:
        scheduler.register_to_config(**plain)


def config_repr(scheduler: ConfigMixin) -> str:
    """``ClassName(key=value, ...)`` of the public config entries."""
    items = ", ".join(f"{k}={v!r}" for k, v in scheduler.config.items() if not k.startswith("_"))
    return f"{type(scheduler).__name__}({items})"


def betas_from_config(c) -> torch.Tensor:
    """β_t (T,) float32 from a scheduler config, checked: ``num_train_timesteps`` >= 2, ``steps_offset`` >= 0, then
    ``trained_betas`` (T values in (0, 1)) or ``beta_schedule`` with ``beta_start``/``beta_end``, rescaled to zero
    terminal SNR if ``rescale_betas_zero_snr`` (a config without that key: no rescaling)."""
    T = c.num_train_timesteps
    if check_int("num_train_timesteps", T, minimum=None) < 2:
        raise ValueError(f"num_train_timesteps must be an integer >= 2, got {T!r}")
    if check_int("steps_offset", c.steps_offset, minimum=None) < 0:
        raise ValueError(f"steps_offset must be an integer >= 0, got {c.steps_offset!r}")
    for name in ("beta_start", "beta_end"):
        check_number(name, c[name])
    if c.trained_betas is not None:
        try:
            betas = torch.tensor(c.trained_betas, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"trained_betas must be {T} numbers in (0, 1), got {type(c.trained_betas).__name__}"
            ) from None
        if betas.ndim != 1 or len(betas) != T or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"trained_betas must be {T} values in (0, 1) (num_train_timesteps={T})")
    else:
        check_option("beta_schedule", c.beta_schedule, BETA_SCHEDULES)
        if c.beta_schedule != "squaredcos_cap_v2" and not 0 < c.beta_start <= c.beta_end < 1:
            raise ValueError(
                f"need 0 < beta_start <= beta_end < 1, got beta_start={c.beta_start}, beta_end={c.beta_end}"
            )
        betas = make_betas(c.beta_schedule, int(T), c.beta_start, c.beta_end)
    if c.get("rescale_betas_zero_snr", False):
        betas = rescale_zero_terminal_snr(betas)
    return betas


def check_step_inputs(model_output: torch.Tensor, sample: torch.Tensor, generator: object = None) -> None:
    """The inputs of ``step``: tensors of one shape (not scanned for NaN: that costs a pass over the data, and
    diffusers does not) and a valid ``generator``."""
    check_tensor("model_output", model_output, "(B, ...), the network's output")
    check_tensor("sample", sample, "(B, ...), the current x_t")
    check_generator("generator", generator, batch=sample.shape[0] if sample.ndim else None)
    if model_output.shape != sample.shape:
        raise ValueError(
            f"model_output and sample must have the same shape, got {tuple(model_output.shape)} and "
            f"{tuple(sample.shape)} (a learned-variance model returns 2x the channels: not supported)"
        )


class StepIndexMixin:
    """The step counter of diffusers' σ- and flow-schedulers (``step_index``, ``begin_index``, ``set_begin_index``,
    ``index_for_timestep``): ``step`` finds its place in ``self.timesteps`` once, on the first call, then counts.
    The class sets ``self.timesteps``, ``self._step_index`` and ``self._begin_index``."""

    timesteps: torch.Tensor
    _step_index: int | None
    _begin_index: int | None

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start stepping at this index (pipelines call it; img2img starts part-way down the schedule)."""
        self._begin_index = check_int("begin_index", begin_index, minimum=0)

    def index_for_timestep(self, timestep: float | torch.Tensor, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Position of ``timestep`` in the schedule (as diffusers: the second match if it occurs twice, so that a
        schedule entered at a repeated timestep does not skip a step); ``ValueError`` if it is not there."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                raise ValueError(
                    f"timestep must be one value of scheduler.timesteps, got shape {tuple(timestep.shape)}"
                )
            t = timestep.to(schedule.device)
        else:
            t = check_number("timestep", timestep)
        indices = (schedule == t).nonzero()
        if len(indices) == 0:
            shown = schedule.tolist()
            shown = f"{shown[:6]} … {shown[-2:]}" if len(shown) > 8 else f"{shown}"
            raise ValueError(
                f"timestep {float(t):g} is not one of this scheduler's timesteps {shown} ({len(schedule)} steps); pass "
                "t from scheduler.timesteps (after set_timesteps), not the loop index"
            )
        return int(indices[1 if len(indices) > 1 else 0].item())

    def _init_step_index(self, timestep: float | torch.Tensor) -> None:
        self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index

    def _indices_of(self, timesteps: torch.Tensor) -> list[int]:
        """Schedule positions of a batch of timesteps (``add_noise``): looked up, or, after ``set_begin_index``, the
        current step (the begin index before the first step), as diffusers."""
        timesteps = timesteps.reshape(-1)
        if self._begin_index is None:
            schedule = self.timesteps.to(timesteps.device)
            return [self.index_for_timestep(t, schedule) for t in timesteps]
        return [self._step_index if self._step_index is not None else self._begin_index] * len(timesteps)


@dataclass
class SchedulerOutput:
    """What ``step`` returns: the next sample x_{t'} and the model's estimate of x_0 at this step.

    Read like diffusers' outputs: ``out[0]`` or ``out["prev_sample"]``, ``keys()``/``values()``/``items()``,
    ``to_tuple()``; unpacking gives the tensors: ``prev, x0 = scheduler.step(...)``.
    """

    prev_sample: torch.Tensor  # (B, ...) x_{t'}
    pred_original_sample: torch.Tensor  # (B, ...) x̂_0

    def to_tuple(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.values())

    def keys(self) -> list[str]:
        return [f.name for f in fields(self)]

    def values(self) -> list[torch.Tensor]:
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple[str, torch.Tensor]]:
        return list(zip(self.keys(), self.values(), strict=True))

    def __getitem__(self, i: int | str) -> torch.Tensor:
        return getattr(self, i) if isinstance(i, str) else self.to_tuple()[i]

    def __iter__(self):
        return iter(self.to_tuple())


class _Scheduler(SchedulerMixin, ConfigMixin):
    """What DDPM and DDIM share: the schedule, the inference timesteps, the forward process and checks.

    ``config`` is diffusers' ``FrozenDict`` (``config.x`` and ``config["x"]``), filled by ``@register_to_config``
    on the subclass's ``__init__``."""

    _compatibles = KARRAS_COMPATIBLES
    order = 1  # network calls per step (diffusers' multistep solvers have more)
    init_noise_sigma = 1.0  # x_T ~ N(0, I): the start needs no scaling (Euler-type schedulers differ)

    def _setup(self) -> None:
        plain_numbers_in_config(self)
        c = self.config
        betas = betas_from_config(c)
        check_option("prediction_type", c.prediction_type, PREDICTION_TYPES)
        check_option("timestep_spacing", c.timestep_spacing, TIMESTEP_SPACINGS)
        for name in ("clip_sample_range", "dynamic_thresholding_ratio", "sample_max_value"):
            check_number(name, c[name])
        if c.clip_sample and not c.clip_sample_range > 0:
            raise ValueError(f"clip_sample_range must be > 0, got {c.clip_sample_range!r}")
        if c.thresholding:
            dynamic_threshold(torch.zeros(1, 1), c.dynamic_thresholding_ratio, c.sample_max_value)  # validates both
        self.betas = betas  # (T,) β_t
        self.alphas = 1.0 - betas  # (T,) α_t
        self.alphas_cumprod = alphas_cumprod_from_betas(betas)  # (T,) ᾱ_t
        self.one = torch.tensor(1.0)  # ᾱ past the end of the chain (before step 0)
        self.num_inference_steps: int | None = None
        self.custom_timesteps = False  # True after set_timesteps(timesteps=[...])
        T = c.num_train_timesteps
        self.timesteps = torch.from_numpy(np.arange(0, T)[::-1].copy().astype(np.int64))  # all T steps

    @classmethod
    def _get_compatibles(cls) -> list[type]:
        """Our DDPM and DDIM, then diffusers' classes that read the same config (``from_config`` swaps between them)."""
        return compatible_classes(_Scheduler.__subclasses__(), super()._get_compatibles())

    def __repr__(self) -> str:
        return config_repr(self)

    # --- timesteps -------------------------------------------------------------------------------------------

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Choose the ``num_inference_steps`` timesteps to sample with (see
        :func:`~diffusion_lab.maths.schedules.inference_timesteps`), or give them as ``timesteps`` (descending,
        below T: :func:`~diffusion_lab.maths.schedules.custom_timesteps`); fills ``self.timesteps`` (int64)."""
        c = self.config
        device = check_device(device)
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("pass num_inference_steps or timesteps to set_timesteps, not both")
        if timesteps is not None:
            ts = custom_timesteps(timesteps, c.num_train_timesteps)
            self.custom_timesteps = True
            self.num_inference_steps = len(ts)
            self.timesteps = torch.from_numpy(ts).to(device)
            return
        if num_inference_steps is None:
            raise TypeError("set_timesteps needs num_inference_steps (a count) or timesteps (a list), got neither")
        ts = inference_timesteps(num_inference_steps, c.num_train_timesteps, c.timestep_spacing, c.steps_offset)
        num_inference_steps = len(ts)  # the count as a Python int (np.int64(10) and torch.tensor(10) are 10)
        if ts.max() >= c.num_train_timesteps:
            raise ValueError(
                f"steps_offset={c.steps_offset} with num_inference_steps={num_inference_steps} puts a timestep at "
                f"{int(ts.max())} >= num_train_timesteps={c.num_train_timesteps}; use fewer steps or steps_offset=0"
            )
        self.num_inference_steps = num_inference_steps
        self.custom_timesteps = False
        self.timesteps = torch.from_numpy(ts).to(device)

    def _position(self, t: int) -> int:
        """Where ``t`` is in ``timesteps``; ``ValueError`` naming ``timestep`` if it is not there (the usual cause:
        the loop index of ``enumerate`` passed instead of ``t``)."""
        matches = (self.timesteps.cpu() == t).nonzero(as_tuple=True)[0]
        if len(matches) == 0:
            shown = self.timesteps.tolist()
            shown = f"{shown[:8]} … {shown[-2:]}" if len(shown) > 10 else f"{shown}"
            raise ValueError(
                f"timestep {t} is not one of this scheduler's timesteps {shown} ({len(self.timesteps)} steps); "
                "step with the values of scheduler.timesteps (after set_timesteps): pass t from scheduler.timesteps, "
                "not the loop index (for i, t in enumerate(scheduler.timesteps): step(out, t, x))"
            )
        return int(matches[0])

    def _next_in_schedule(self, t: int) -> int:
        """The entry of ``timesteps`` after ``t`` (−1 after the last one)."""
        i = self._position(t)
        return int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else -1

    def _index(self, timestep: int | torch.Tensor) -> int:
        """A timestep as a Python int, checked to lie in 0..T−1."""
        T = self.config.num_train_timesteps
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                raise ValueError(f"timestep must be one integer in [0, {T - 1}], got tensor {timestep!r}")
            if timestep.is_floating_point() or timestep.dtype == torch.bool:
                raise TypeError(f"timestep must be one integer in [0, {T - 1}], got tensor {timestep!r}")
            timestep = timestep.item()
        if not isinstance(timestep, (int, np.integer)) or isinstance(timestep, bool):
            raise TypeError(f"timestep must be an integer in [0, {T - 1}], got {timestep!r}")
        if not 0 <= timestep < T:
            raise ValueError(f"timestep must be in [0, {T - 1}] (num_train_timesteps={T}), got {timestep}")
        return int(timestep)

    def _check_step_inputs(self, model_output: torch.Tensor, sample: torch.Tensor, generator: object = None) -> None:
        check_step_inputs(model_output, sample, generator)

    def _timesteps_of(self, timesteps: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        t = check_timesteps("timesteps", timesteps, self.config.num_train_timesteps, batch=like.shape[0])
        return t.to(like.device)

    # --- forward process -------------------------------------------------------------------------------------

    def scale_model_input(self, sample: torch.Tensor, timestep: int | torch.Tensor | None = None) -> torch.Tensor:
        """Identity: DDPM/DDIM feed x_t to the network unscaled (kept for pipelines that call it)."""
        return check_tensor("sample", sample, "(B, ...), the current x_t")

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor | int
    ) -> torch.Tensor:
        """The forward process q(x_t | x_0): x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε (DDPM Eq. 4). (B, ...) → (B, ...)."""
        check_tensor("original_samples", original_samples, "(B, ...), the clean x_0")
        check_tensor("noise", noise, "(B, ...), the noise ε")
        if original_samples.shape != noise.shape:
            raise ValueError(
                f"original_samples and noise must have the same shape, got {tuple(original_samples.shape)} "
                f"and {tuple(noise.shape)}"
            )
        t = self._timesteps_of(timesteps, original_samples)
        ab = extract(self.alphas_cumprod.to(original_samples.device, original_samples.dtype), t, original_samples.ndim)
        return ab**0.5 * original_samples + (1 - ab) ** 0.5 * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor | int) -> torch.Tensor:
        """The v-prediction target v = √ᾱ_t·ε − √(1−ᾱ_t)·x_0 for clean ``sample`` x_0. (B, ...) → (B, ...)."""
        check_tensor("sample", sample, "(B, ...), the clean x_0")
        check_tensor("noise", noise, "(B, ...), the noise ε")
        if sample.shape != noise.shape:
            raise ValueError(
                f"sample and noise must have the same shape, got {tuple(sample.shape)} and {tuple(noise.shape)}"
            )
        t = self._timesteps_of(timesteps, sample)
        ab = extract(self.alphas_cumprod.to(sample.device, sample.dtype), t, sample.ndim)
        return velocity(sample, noise, ab)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def _clip(self, x0: torch.Tensor) -> torch.Tensor:
        """x̂_0 dynamically thresholded (``thresholding``), else clipped to ±``clip_sample_range`` (``clip_sample``),
        in diffusers' order of precedence."""
        c = self.config
        if c.thresholding:
            return dynamic_threshold(x0, c.dynamic_thresholding_ratio, c.sample_max_value)
        return x0.clamp(-c.clip_sample_range, c.clip_sample_range) if c.clip_sample else x0
