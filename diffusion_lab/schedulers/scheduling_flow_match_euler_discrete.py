"""The flow-matching Euler scheduler shaped like diffusers' ``FlowMatchEulerDiscreteScheduler`` (SD3's), a diffusers
``SchedulerMixin`` + ``ConfigMixin`` on the pure functions of :mod:`diffusion_lab.maths.flow`.

σ ∈ [0, 1] is the flow time (1 = noise), ``timesteps`` = T·σ; each step is x_{σ'} = x_σ + (σ' − σ)·v and reports
x̂_0 = x_σ − σ·v (``pred_original_sample``, which diffusers' output lacks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from diffusion_lab.maths.flow import _check_sigma, flow_predict_x0, shift_sigmas
from diffusion_lab.schedulers.scheduling_utils import SchedulerOutput, StepIndexMixin, check_device, compatible_classes
from diffusion_lab.utils.errors import check_generator, check_int, check_number, check_tensor

__all__ = ["FlowMatchEulerDiscreteScheduler", "FlowMatchSchedulerOutput"]


def _count(num_inference_steps: object) -> int:
    """``num_inference_steps`` as a Python int >= 1 (NumPy / torch integers accepted; bools and floats refused)."""
    try:
        n = check_int("num_inference_steps", num_inference_steps, minimum=None)
    except TypeError as e:
        raise TypeError(str(e).replace("must be an integer", "must be an integer >= 1", 1)) from None
    if n < 1:
        raise ValueError(f"num_inference_steps must be an integer >= 1, got {n!r}")
    return n


@dataclass
class FlowMatchSchedulerOutput(SchedulerOutput):
    """What ``step`` returns: x_{σ'} and x̂_0 (read like diffusers' outputs: ``out[0]`` is ``prev_sample``)."""

    prev_sample: torch.Tensor  # (B, ...) x_{σ'}
    pred_original_sample: torch.Tensor  # (B, ...) x̂_0 = x_σ − σ·v


class FlowMatchEulerDiscreteScheduler(StepIndexMixin, SchedulerMixin, ConfigMixin):
    """Euler sampling of a rectified-flow model, with the arguments and attributes of diffusers'
    ``FlowMatchEulerDiscreteScheduler``: ``set_timesteps``, ``timesteps`` (= 1000·σ, float), ``sigmas`` (with a
    final 0), ``step(...).prev_sample``, ``scale_noise``, ``set_begin_index``. Timesteps, sigmas and steps equal
    diffusers' to 1e-6 (tested).

    The shift is applied twice, as diffusers does: once to the training grid in the constructor (which fixes
    σ_max and σ_min) and again in ``set_timesteps`` to the evenly spaced σ between them. With α = 3 and 5 steps the
    σ are [1, 0.90036, 0.75112, 0.50299, 0.00893, 0]: the last step lands on the shifted-twice σ_min, not on 1/T.
    Every diffusers constructor argument is accepted (so configs round-trip); turning on dynamic (resolution-dependent)
    shifting, Karras/exponential/beta σ, inverted σ, a terminal shift or stochastic sampling raises ``ValueError``.
    """

    _compatibles: list[str] = []  # as diffusers' (no other diffusers scheduler reads this config)
    order = 1
    init_noise_sigma = 1.0  # x_1 = ε: the start needs no scaling

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: float | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        time_shift_type: str = "exponential",
        stochastic_sampling: bool = False,
    ):
        if check_int("num_train_timesteps", num_train_timesteps, minimum=None) < 2:
            raise ValueError(f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")
        shift_sigmas(0.5, shift)  # validates the shift
        plain = {  # NumPy / torch scalars stored as the Python numbers they hold (the config saves as JSON)
            key: value.item()
            for key, value in self.config.items()
            if isinstance(value, np.generic) or (isinstance(value, torch.Tensor) and value.ndim == 0)
        }
        if plain:
            self.register_to_config(**plain)
        num_train_timesteps, shift = self.config.num_train_timesteps, self.config.shift
        if use_dynamic_shifting:
            raise ValueError("use_dynamic_shifting=True (resolution-dependent mu) is not implemented; pass shift=...")
        options = {
            "invert_sigmas": invert_sigmas,
            "shift_terminal": shift_terminal,
            "use_karras_sigmas": use_karras_sigmas,
            "use_exponential_sigmas": use_exponential_sigmas,
            "use_beta_sigmas": use_beta_sigmas,
            "stochastic_sampling": stochastic_sampling,
        }
        on = [k for k, v in options.items() if v]
        if on:
            raise ValueError(f"not implemented in diffusion_lab's flow scheduler: {on}; leave them off")
        T = int(num_train_timesteps)
        # the training grid t = 1/T … 1 (float32, as diffusers), shifted once
        timesteps = torch.from_numpy(np.linspace(1, T, T, dtype=np.float32)[::-1].copy())  # (T,) T … 1
        sigmas = shift_sigmas(timesteps / T, float(shift))  # (T,) float32
        self.timesteps = sigmas * T  # (T,)
        self.sigmas = sigmas
        self.sigma_max, self.sigma_min = sigmas[0].item(), sigmas[-1].item()
        self.num_inference_steps: int | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None

    @classmethod
    def _get_compatibles(cls) -> list[type]:
        """Ours, then diffusers' class of the same name (both read SD3's ``scheduler_config.json``)."""
        return compatible_classes([cls], super()._get_compatibles())

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in self.config.items() if not k.startswith("_"))
        return f"{type(self).__name__}({items})"

    @property
    def shift(self) -> float:
        return self.config.shift

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        sigmas: list[float] | None = None,
    ) -> None:
        """``num_inference_steps`` σ evenly spaced from σ_max to σ_min, shifted (again), then a final 0.

        σ_i = shift(σ_max + i·(σ_min − σ_max)/(n − 1)), i = 0 … n − 1 (float64, then float32), timesteps = T·σ_i.
        Or give the ``sigmas`` yourself (they are shifted too, as in diffusers)."""
        T = self.config.num_train_timesteps
        device = check_device(device)
        if sigmas is not None:
            if isinstance(sigmas, torch.Tensor):
                sigmas = sigmas.detach().cpu().numpy()
            try:
                s = np.asarray(sigmas, dtype=np.float32)
            except (TypeError, ValueError):
                raise TypeError(f"sigmas must be a list of numbers in [0, 1], got {sigmas!r:.80}") from None
            if s.ndim != 1 or len(s) < 1:
                raise ValueError("sigmas must be a non-empty list of numbers in [0, 1]")
            _check_sigma(torch.from_numpy(s), "sigmas")
            if num_inference_steps is not None and _count(num_inference_steps) != len(s):
                raise ValueError(f"num_inference_steps={num_inference_steps} but {len(s)} sigmas were given")
            num_inference_steps = len(s)
        else:
            num_inference_steps = _count(num_inference_steps)
            ts = np.linspace(self.sigma_max * T, self.sigma_min * T, num_inference_steps)  # (n,) float64
            s = ts / T
        s = shift_sigmas(s, self.config.shift)  # the second shift (see the class docstring)
        s = torch.from_numpy(np.asarray(s)).to(dtype=torch.float32, device=device)  # (n,)
        self.num_inference_steps = int(num_inference_steps)
        self.timesteps = s * T  # (n,) float32, decreasing
        self.sigmas = torch.cat([s, torch.zeros(1, device=s.device)])  # (n + 1,): ends at t = 0, the data
        self._step_index = None
        self._begin_index = None

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Identity: flow models see x_t as it is (kept so generic loops can call it)."""
        return check_tensor("sample", sample, "(B, ...), the current x_t")

    def scale_noise(
        self, sample: torch.Tensor, timestep: float | torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The forward process at a schedule timestep: σ·ε + (1 − σ)·x₀ (img2img's starting point)."""
        check_tensor("sample", sample, "(B, ...), the clean x_0")
        check_tensor("noise", noise, "of the shape of sample (scale_noise needs the noise ε)")
        if noise.shape != sample.shape:
            raise ValueError(
                f"scale_noise needs noise of the same shape as sample, got {tuple(noise.shape)} and {tuple(sample.shape)}"
            )
        if not isinstance(timestep, torch.Tensor):
            timestep = check_number("timestep", timestep)
        elif timestep.numel() not in (1, sample.shape[0]):
            raise ValueError(
                f"timestep must be one value or one per sample ({sample.shape[0]}), got {timestep.numel()}"
            )
        sigmas = self.sigmas.to(device=sample.device, dtype=sample.dtype)
        idx = self._indices_of(torch.as_tensor(timestep, device=sample.device))
        sigma = sigmas[idx].flatten()  # (B,) or (1,)
        sigma = sigma.reshape(-1, *([1] * (sample.ndim - 1)))
        return sigma * noise + (1.0 - sigma) * sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        **ignored: object,
    ) -> FlowMatchSchedulerOutput | tuple[torch.Tensor]:
        """One Euler step x_{t'} = x_t + (σ_{i+1} − σ_i)·v (:func:`flow_euler_step`), with x̂_0 = x_t − σ_i·v
        (:func:`flow_predict_x0`) as ``pred_original_sample``; ``timestep`` must be a value of ``self.timesteps``
        (a float), not a step number. ``return_dict=False`` gives ``(prev_sample,)`` as diffusers does."""
        if isinstance(timestep, int | np.integer) or (
            isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()
        ):
            raise ValueError(
                "pass a value of scheduler.timesteps (a float such as 1000.0), not an integer step number "
                "(from enumerate(timesteps)), as diffusers' FlowMatchEulerDiscreteScheduler requires"
            )
        check_tensor("model_output", model_output, "(B, ...), the predicted velocity")
        check_tensor("sample", sample, "(B, ...), the current x_t")
        check_generator("generator", generator)  # unused (Euler steps add no noise), but a seed is still a mistake
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output and sample must have the same shape, got {tuple(model_output.shape)} and "
                f"{tuple(sample.shape)}"
            )
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if self._step_index is None:
            self._init_step_index(timestep)
        if self._step_index >= len(self.sigmas) - 1:
            raise ValueError("the schedule is finished: call set_timesteps again to sample anew")
        sigma, sigma_next = self.sigmas[self._step_index], self.sigmas[self._step_index + 1]
        sample = sample.to(torch.float32)  # upcast, as diffusers
        prev = sample + (sigma_next - sigma) * model_output
        x0 = flow_predict_x0(sample, model_output, sigma)  # (B, ...) x̂_0
        self._step_index += 1
        prev, x0 = prev.to(model_output.dtype), x0.to(model_output.dtype)
        return FlowMatchSchedulerOutput(prev_sample=prev, pred_original_sample=x0) if return_dict else (prev,)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
