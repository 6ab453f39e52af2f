"""Classifier-free guidance as two small pure pieces: condition dropout in training, the guided combination at sampling.

=====================  =========  =================================================================================
code                   symbol     meaning
=====================  =========  =================================================================================
``cond``, ``uncond``   ε_c, ε_∅   the model's prediction with the condition and with the null condition ∅
``guidance_scale``     w          diffusers' scale: w = 1 is ε_c (no guidance), w = 0 is ε_∅
``guidance_rescale``   φ          share of the rescaled prediction, 0 = off (the paper uses 0.7)
``drop_prob``          p_uncond   probability that a training row's condition is replaced by ∅
=====================  =========  =================================================================================

    training:  c ← ∅ with probability p_uncond                        (Ho & Salimans 2022, Algorithm 1, line 3)
    sampling:  ε̃ = ε_∅ + w·(ε_c − ε_∅)                                (ibid., Eq. 6, with w = 1 + their w)
    rescale:   ε_r = ε̃·σ(ε_c)/σ(ε̃),  ε = φ·ε_r + (1 − φ)·ε̃             (Lin et al. 2024, Eq. 15-16)

One network learns both ε_c and ε_∅ because some rows see the null condition; at sampling, w > 1 moves the prediction
away from ε_∅, trading diversity for adherence to the condition. Strong w inflates the prediction's standard
deviation (over-exposed images); the rescale brings σ back to that of ε_c. All three are pure tensor functions, the
same numbers as diffusers' (``rescale_noise_cfg`` is diffusers' function of that name).
"""

from __future__ import annotations

import torch

from diffusion_lab.maths.checks import check_broadcast, check_same_shape
from diffusion_lab.utils.errors import check_generator, check_number, check_tensor

__all__ = ["cfg_combine", "drop_condition", "rescale_noise_cfg"]


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """ε̃ = ε_∅ + w·(ε_c − ε_∅): w = 1 gives ε_c, w = 0 gives ε_∅ (classifier-free guidance)."""
    check_tensor("cond", cond, "(the conditional prediction ε_c)")
    check_tensor("uncond", uncond, "(the unconditional prediction ε_∅)")
    if not isinstance(guidance_scale, torch.Tensor) or guidance_scale.ndim == 0:
        try:
            guidance_scale = check_number("guidance_scale", guidance_scale)
        except TypeError:
            raise TypeError(f"guidance_scale must be a number (1 = no guidance), got {guidance_scale!r}") from None
    elif guidance_scale.dtype == torch.bool:
        raise TypeError("guidance_scale must be a number or a float tensor (1 = no guidance), got a bool tensor")
    else:
        check_broadcast("guidance_scale", guidance_scale, cond)
    if cond.shape != uncond.shape:
        raise ValueError(f"cond and uncond must have the same shape, got {tuple(cond.shape)} and {tuple(uncond.shape)}")
    return uncond + guidance_scale * (cond - uncond)


def rescale_noise_cfg(noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor, guidance_rescale: float = 0.0):
    """Guidance rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", §3.4).

    Strong guidance inflates the prediction's standard deviation, which over-exposes images. With σ(·) taken per
    sample over all other dimensions:  ε_rescaled = ε̃ · σ(ε_c) / σ(ε̃)  (Eq. 15), and the result is
    φ·ε_rescaled + (1 − φ)·ε̃  (Eq. 16). φ = 0 changes nothing; the paper uses φ = 0.7. Same as diffusers'
    ``rescale_noise_cfg``.
    """
    check_tensor("noise_cfg", noise_cfg, "(the guided prediction ε̃)")
    check_tensor("noise_pred_text", noise_pred_text, "(the conditional prediction ε_c)")
    check_same_shape("noise_cfg", noise_cfg, "noise_pred_text", noise_pred_text)
    guidance_rescale = check_number("guidance_rescale", guidance_rescale)
    if not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale}")
    dims = list(range(1, noise_pred_text.ndim))
    std_text = noise_pred_text.std(dim=dims, keepdim=True)  # (B, 1, 1, 1)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)
    rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


def drop_condition(
    cond: torch.Tensor, null: torch.Tensor, drop_prob: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Condition dropout for classifier-free guidance training (Ho & Salimans 2022, Algorithm 1, line 3).

    Each row of ``cond`` (B, ...) is replaced by ``null`` (the null condition, broadcastable to one row: the
    null class, or the token ids of the empty prompt) with probability ``drop_prob``; one network then learns
    both ε_c and ε_∅. Returns a new tensor (``cond`` is not changed).
    """
    check_tensor("cond", cond, "(B, ...) of conditions")
    check_tensor("null", null, "(the null condition, broadcastable to one row of cond)")
    drop_prob = check_number("drop_prob", drop_prob)
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob}")
    if cond.ndim == 0 or cond.shape[0] == 0:
        raise ValueError(f"cond must be a tensor (B, ...) with one row per sample, got shape {tuple(cond.shape)}")
    try:
        fits = torch.broadcast_shapes(null.shape, cond.shape) == cond.shape  # what expand_as needs
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"null (shape {tuple(null.shape)}) must broadcast to cond (shape {tuple(cond.shape)}): the null "
            "condition of one sample, shaped like one row of cond"
        )
    if isinstance(check_generator("generator", generator, batch=cond.shape[0]), list):  # one draw per row
        u = torch.cat([torch.rand(1, generator=g) for g in generator]).to(cond.device)  # (B,)
    else:
        u = torch.rand(cond.shape[0], generator=generator).to(cond.device)  # (B,)
    drop = (u < drop_prob).reshape(-1, *([1] * (cond.ndim - 1)))  # (B, 1, ...)
    return torch.where(drop, null.to(cond.device, cond.dtype).expand_as(cond), cond)
