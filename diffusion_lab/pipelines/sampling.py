"""Sampling: the reverse process as one short loop over any scheduler (ours or diffusers'), plus guidance.

Notation
--------
=====================  ==========  ==============================================================
code                   symbol      meaning
=====================  ==========  ==============================================================
``guidance_scale``     w           classifier-free guidance weight (Ho & Salimans 2022)
``cond``, ``uncond``   ε_c, ε_∅    network outputs with the label and with the null label
``cfg_combine``        ε̃           ε_∅ + w·(ε_c − ε_∅)   (Ho & Salimans 2022, Eq. 6, with w = 1 + their w)
``guidance_rescale``   φ           blend of ε̃ and ε̃·σ(ε_c)/σ(ε̃)   (Lin et al. 2024, §3.4, Eq. 15-16)
``drop_prob``          p_uncond    share of training examples whose condition is replaced by the null one
=====================  ==========  ==============================================================

w = 1 is the plain conditional model, w = 0 the unconditional one, w > 1 pushes samples towards the label.
With text, the null condition is the empty prompt, and a negative prompt takes its place at sampling time.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from diffusion_lab.maths.diffusion import predict_x0_and_eps
from diffusion_lab.maths.guidance import cfg_combine
from diffusion_lab.utils.errors import check_generator, check_int, check_number, check_tensor
from diffusion_lab.utils.torch_utils import randn

__all__ = ["guided_output", "sample", "SampleOutput", "ddim_invert"]


def guided_output(
    model: Callable,
    x: torch.Tensor,
    t: torch.Tensor,
    class_labels: torch.Tensor | None,
    guidance_scale: float,
    null_label: int | None = None,
) -> torch.Tensor:
    """The network output at (x, t), with classifier-free guidance when ``guidance_scale != 1``.

    Both branches run as one batch of 2B: [x with labels, x with the null label] (the null label defaults to
    ``model.config.num_classes``, the extra row of our U-Net's class embedding).
    """
    if class_labels is None or guidance_scale == 1.0:
        return model(x, t, class_labels) if class_labels is not None else model(x, t)
    if null_label is None:
        null_label = model.config.num_classes
    b = x.shape[0]
    labels = torch.cat([class_labels, torch.full_like(class_labels, null_label)])  # (2B,)
    out = model(torch.cat([x, x]), t, labels)  # (2B, C, H, W)
    return cfg_combine(out[:b], out[b:], guidance_scale)


@dataclass
class SampleOutput:
    """Final images and, if asked, what happened on the way (for strips, animations and widgets)."""

    images: torch.Tensor  # (B, C, H, W), the last x
    timesteps: list[int | float] = field(default_factory=list)  # ints (DDPM, DDIM), floats T·σ (flow)
    intermediates: list[torch.Tensor] = field(default_factory=list)  # x after each step, on the CPU
    pred_x0: list[torch.Tensor] = field(default_factory=list)  # the scheduler's x̂_0 at each step, on the CPU
    network_evaluations: int = 0


def _accepts(fn: Callable, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def _check_sample_inputs(
    model, scheduler, shape, num_inference_steps, class_labels, guidance_scale, eta, generator, callback, latents
):
    """:func:`sample`'s arguments by the error convention; returns (shape, steps, w, eta) as Python values."""
    if not callable(model):
        raise TypeError(f"model must be a network or function model(x, t[, labels]), got {type(model).__name__}")
    missing = [m for m in ("set_timesteps", "step", "scale_model_input") if not hasattr(scheduler, m)]
    if missing:
        raise TypeError(f"scheduler must be a scheduler (ours or diffusers'), got {type(scheduler).__name__} "
                        f"without {missing}")  # fmt: skip
    if isinstance(shape, torch.Size | tuple | list) and len(shape) >= 2:
        shape = tuple(check_int(f"shape[{i}]", v, minimum=None) for i, v in enumerate(shape))
        if min(shape) < 1:
            raise ValueError(f"shape must be (B, C, H, W) with B >= 1, got {shape}")
    elif isinstance(shape, torch.Size | tuple | list):
        raise ValueError(f"shape must be (B, C, H, W) with B >= 1, got {tuple(shape)}")
    else:
        raise TypeError(f"shape must be a tuple (B, C, H, W) of integers, got {type(shape).__name__}")
    steps = check_int("num_inference_steps", num_inference_steps)
    guidance_scale = check_number("guidance_scale", guidance_scale, minimum=0)  # 1 = no guidance
    eta = None if eta is None else check_number("eta", eta, minimum=0)
    check_generator("generator", generator, batch=shape[0])
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a function callback(i, t, x) or None, got {type(callback).__name__}")
    if class_labels is not None:
        check_tensor("class_labels", class_labels, f"of integer labels ({shape[0]},)")
        if class_labels.is_floating_point() or class_labels.dtype == torch.bool:
            raise ValueError(f"class_labels must hold integers, got dtype {class_labels.dtype}: use labels.long()")
    if latents is not None:
        check_tensor("latents", latents, f"of shape {shape}")
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        if not torch.isfinite(latents).all():
            raise ValueError("latents contains NaN or infinite values: pass finite noise, e.g. torch.randn(shape)")
    return shape, steps, guidance_scale, eta


@torch.no_grad()
def sample(
    model: Callable,
    scheduler,
    shape: tuple[int, ...],
    *,
    num_inference_steps: int = 50,
    class_labels: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    eta: float | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    return_intermediates: bool = False,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
    latents: torch.Tensor | None = None,
) -> SampleOutput:
    """Run the reverse process from pure noise: ``shape`` = (B, C, H, W).

    Works with any scheduler that has ``set_timesteps``, ``timesteps``, ``init_noise_sigma``,
    ``scale_model_input`` and ``step(...).prev_sample`` (ours and diffusers'). The device is ``device``, else the
    model's. ``eta`` is passed to schedulers whose ``step`` takes it (DDIM). ``return_intermediates`` keeps x and the
    step's ``pred_original_sample`` x̂_0 (every scheduler of ours has it). ``callback(i, t, x)`` is called after
    every step. ``latents`` replaces the random start x_T (e.g. the output of :func:`ddim_invert`).
    """
    shape, num_inference_steps, guidance_scale, eta = _check_sample_inputs(
        model, scheduler, shape, num_inference_steps, class_labels, guidance_scale, eta, generator, callback, latents
    )
    if device is None:  # the model's device (CPU for plain functions and parameter-free wrappers)
        first = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
        device = first.device if first is not None else torch.device("cpu")
    elif not isinstance(device, torch.device):
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise (TypeError if not isinstance(device, str) else ValueError)(
                f"device must be a torch.device or a name such as 'cpu' or 'cuda', got {device!r}"
            ) from e
    if class_labels is not None:
        class_labels = class_labels.to(device)
    step_kw = {"generator": generator} if _accepts(scheduler.step, "generator") else {}
    if eta is not None and _accepts(scheduler.step, "eta"):
        step_kw["eta"] = eta
    out = SampleOutput(images=torch.empty(0))

    scheduler.set_timesteps(num_inference_steps, device=device)
    if latents is not None:
        x = latents.to(device) * scheduler.init_noise_sigma
    else:
        x = randn(shape, generator, device) * scheduler.init_noise_sigma  # x_T ~ N(0, σ_max² I)
    for i, t in enumerate(scheduler.timesteps):
        net = guided_output(model, scheduler.scale_model_input(x, t), t, class_labels, guidance_scale)
        step = scheduler.step(net, t, x, **step_kw)
        x = step.prev_sample
        out.network_evaluations += 2 if (class_labels is not None and guidance_scale != 1.0) else 1
        if return_intermediates:
            out.timesteps.append(t.item())  # int for DDPM/DDIM, float T·σ for the flow scheduler
            out.intermediates.append(x.cpu())
            out.pred_x0.append(step.pred_original_sample.cpu())
        if callback is not None:
            callback(i, int(t), x)
    out.images = x
    return out


@torch.no_grad()
def ddim_invert(
    model: Callable,
    alphas_cumprod: torch.Tensor,
    x0: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    class_labels: torch.Tensor | None = None,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """Deterministic DDIM run backwards: image x_0 → the noise x_T that DDIM (η = 0) maps back to it.

    ``timesteps`` are the sampler's, in decreasing order (``scheduler.timesteps``). Walking them upwards, each step
    is DDIM Eq. 12 with σ = 0 towards the *next larger* t, using ε̂ at the current point:
    x_{t_next} = √ᾱ_{t_next}·x̂_0 + √(1−ᾱ_{t_next})·ε̂, with x̂_0 = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t (ᾱ = 1 at the start).
    The approximation ε̂(x_t) ≈ ε̂(x_{t_next}) makes it exact only as the steps get small (Song et al. 2021, §4.3;
    Dhariwal & Nichol 2021, Appendix F). ``prediction_type`` is what the model outputs (as in the schedulers).
    x0: (B, C, H, W) → x_T of the same shape.
    """
    check_tensor("x0", x0, "(B, C, H, W): the images to invert")
    if not torch.isfinite(x0).all():
        raise ValueError("x0 contains NaN or infinite values")
    ab = check_tensor("alphas_cumprod", alphas_cumprod, "(T,): scheduler.alphas_cumprod").to(x0.device)
    if timesteps is None or isinstance(timesteps, str):
        raise TypeError(f"timesteps must be the sampler's timesteps (scheduler.timesteps), got {timesteps!r}")
    ts = [int(t) for t in torch.as_tensor(timesteps).reshape(-1).flip(0)]  # increasing
    if not ts or min(ts) < 0 or max(ts) >= len(ab):
        raise ValueError(
            f"timesteps must be a non-empty list of integers in 0..{len(ab) - 1} (scheduler.timesteps after "
            f"set_timesteps), got {ts[::-1]}"
        )
    x = x0
    ab_cur, t_cur = torch.tensor(1.0, device=x0.device), ts[0]  # start: the clean image (ᾱ = 1)
    for t in ts:
        out = model(x, t_cur, class_labels) if class_labels is not None else model(x, t_cur)  # at the current point
        x0_hat, eps = predict_x0_and_eps(out, x, ab_cur, prediction_type)  # x0_hat = x at the start (ᾱ = 1)
        x = ab[t] ** 0.5 * x0_hat + (1 - ab[t]) ** 0.5 * eps  # DDIM Eq. 12, σ = 0, one step *up*
        ab_cur, t_cur = ab[t], t
    return x
