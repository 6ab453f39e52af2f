"""Structure control for the tiny Stable Diffusion: a ControlNet (Zhang, Rao & Agrawala 2023).

Notation
--------
================================  ==============  =====================================================================
code                              symbol          meaning
================================  ==============  =====================================================================
``x``                             z_t             noisy latents (B, L, h, w) = (B, 4, 7, 7) for the tiny SD
``controlnet_cond``               c_i             the control image (B, C_c, H, W) = (B, 1, 28, 28), values in [0, 1]
``controlnet_cond_embedding``     E               the hint network: c_f = E(c_i) (B, C_0, h, w), last conv zero (Eq. 3)
``F``, ``Θ``                      F(·; Θ)         the frozen U-Net's encoder half (its levels and middle block)
``Θ_c``                           Θ_c             the trainable copy of those blocks, initialised from Θ
``controlnet_down_blocks[i]``     Z(·; Θ_z)       a zero convolution: 1×1 conv whose weight and bias start at 0
``down_residuals[i]``             r_i             Z(the copy's skip i), added to the frozen U-Net's skip i (B, C_i, h_i, w_i)
``mid_residual``                  r_mid           Z(the copy's middle-block output), added to the frozen one's
``conditioning_scale``            λ               multiplies every residual (``controlnet_conditioning_scale``); 0 = base
``control_guidance_start, _end``  [s, e]          the share of the sampling steps during which the control acts
``c``, ``pooled``                 c_t, c̄_t        the prompt's token states (B, M, D) and pooled vector (B, D)
================================  ==============  =====================================================================

1. The idea (Zhang et al. 2023, §3.1, Eq. 1-2)
----------------------------------------------
A block of a trained network maps a feature map x to y = F(x; Θ) (Eq. 1). ControlNet locks Θ and adds a trainable
copy Θ_c of the block that also sees the condition c, connected by two zero convolutions Z (Eq. 2):

    y_c = F(x; Θ) + Z(F(x + Z(c; Θ_z1); Θ_c); Θ_z2).

For Stable Diffusion the "block" is the U-Net's whole encoder half and middle block: the copy reads z_t plus the
embedded control image, and each of its skip outputs and its middle-block output goes through its own zero 1×1
convolution and is *added* to the frozen U-Net's matching skip connection (and middle-block output) before the
frozen decoder half reads it. SD 1.5 has 12 skips and one middle block: 13 zero convolutions, a copy of ~360 M
parameters beside the locked 860 M. The tiny U-Net here has one skip per level (one level: one skip) and a middle
block: 2 zero convolutions; the frozen side takes them through :meth:`UNet.forward`'s
``down_block_additional_residuals`` and ``mid_block_additional_residual`` (diffusers' names).

2. Zero convolution
-------------------
Z(x) = W x + b with W = 0 and b = 0 outputs 0 for every x, so at initialisation y_c = y: the ControlNet is an exact
no-op and the first samples are the base model's, bit for bit (x + 0 = x in floating point). Training still moves
it, because the gradients of a zero convolution's *parameters* are not zero:

    ∂L/∂W = (∂L/∂y) xᵀ ≠ 0,   ∂L/∂b = ∂L/∂y ≠ 0,   but   ∂L/∂x = Wᵀ (∂L/∂y) = 0 while W = 0.

So the first optimiser step moves only the output zero convolutions; from the second step on W ≠ 0 and gradients
reach the copy Θ_c, and through it the hint network's zero-initialised last convolution (Z(·; Θ_z1) of Eq. 2), from
the third step the whole hint network. No random noise is ever added to the frozen model's features: the control
grows from zero.

3. The hint network (Eq. 3)
---------------------------
The control image lives in pixel space (28×28, 512×512 for SD) and z_t in latent space (7×7, 64×64). c_f = E(c_i):
a few 3×3 convolutions with SiLU, every second one with stride 2, down to the U-Net's first feature map, the last
convolution zero-initialised (diffusers' ``ControlNetConditioningEmbedding``, same layer names; the paper: four
4×4 stride-2 convolutions with 16, 32, 64, 128 channels). Here channels (16, 32, 64): two stride-2 convolutions,
28 → 14 → 7. c_f is added to the copy's first feature map, conv_in(z_t) + c_f.

4. Training (Eq. 4)
-------------------
The base model's own loss, with the control as an extra input: L = E ‖target − f_θ(z_t, t, c_t, c_f)‖², here the
v target of the tiny model (:func:`diffusion_lab.finetune.denoising_loss`, the same draws of t and ε). Only Θ_c, E
and the zero convolutions train; the U-Net, the autoencoder and the text encoder stay frozen. As in the paper
(§3.3), half of the prompts are replaced by the empty prompt, so the ControlNet learns to read the control map
itself instead of leaning on the prompt.

5. Sampling
-----------
:class:`TinyControlNetPipeline` has the call shape of diffusers' ``StableDiffusionControlNetPipeline``:
``pipe(prompt, image=control, controlnet_conditioning_scale=λ, control_guidance_start=s, control_guidance_end=e)``.
The residuals are multiplied by λ; step i of N is controlled when i/N ≥ s and (i + 1)/N ≤ e (diffusers'
``controlnet_keep``), and the other steps are the base model's. With classifier-free guidance the control goes to
both branches ([uncond; cond] in one batch), as in diffusers; ``guess_mode=True`` gives it to the conditional branch
only and scales the residuals from 0.1 (first skip) to 1.0 (middle block) on a log scale, diffusers' guess mode.

6. Control maps for MNIST
-------------------------
- :func:`edge_map` (the canny ControlNet's analogue): Sobel gradients of the brightness, thinned by non-maximum
  suppression along the gradient direction and thresholded (Canny 1986 without the hysteresis): a 1-pixel outline.
- :func:`coarse_mask` (the "semantic synthesis" ControlNet's analogue, a segmentation map): the digit's silhouette
  at 7×7 (ink share of each 4×4 cell above a threshold), drawn at 28×28: where the digit is, not what it looks like.

Agreement of an output with its control (:func:`edge_f1`, :func:`mask_iou`): compute the same map of the generated
image and compare it with the control map: F1 of the edge pixels, or intersection over union of the masks. Edge
benchmarks (BSDS) match edges within a tolerance of a pixel or two, but at 28×28 that is too lenient (two different
test digits of one class score F1 ≈ 0.78 with one pixel of tolerance, ≈ 0.31 without): the default is exact pixels.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_lab.checkpoint import PretrainedModel
from diffusion_lab.diffusion import q_sample, velocity
from diffusion_lab.pipeline import PipelineOutput, TinyStableDiffusionPipeline
from diffusion_lab.settings import pick
from diffusion_lab.unet import SpatialTransformer, UNet, UNetConfig, timestep_embedding

__all__ = [
    "ENCODER_MODULES",
    "ControlNet",
    "ControlNetConditioningEmbedding",
    "ControlNetConfig",
    "ControlNetOutput",
    "ControlNetTrainConfig",
    "TinyControlNetPipeline",
    "coarse_mask",
    "controlnet_keep",
    "controlnet_loss",
    "edge_f1",
    "edge_map",
    "mask_iou",
    "sobel",
    "train_controlnet",
    "zero_module",
]

# The U-Net's modules that make up its encoder half and middle block: the part the ControlNet copies (same names)
ENCODER_MODULES = (
    "time_mlp",
    "class_embed",
    "pooled_embed",
    "conv_in",
    "down",
    "downsample",
    "mid1",
    "mid_attn",
    "mid2",
)


# ----------------------------------------------------------------------------------------------------------------------
# Control maps and agreement measures (pure functions)
# ----------------------------------------------------------------------------------------------------------------------


def _brightness(images: object, name: str = "images") -> torch.Tensor:
    """Checked images (B, 1, H, W) in [−1, 1] → brightness b = (x + 1)/2 clamped to [0, 1], float."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, 1, H, W) in [-1, 1], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"{name} must have shape (B, 1, H, W) (grey images in [-1, 1]), got {tuple(images.shape)}")
    return ((images.float() + 1) / 2).clamp(0, 1)


def sobel(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel derivatives of the brightness, (B, 1, H, W) each: g_u (to the right) and g_v (downwards), zero padding.

    g_u = [[−1, 0, 1], [−2, 0, 2], [−1, 0, 1]] ⋆ b; a black-to-white step gives |g| = 4.
    """
    b = _brightness(images)
    k = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=b.device)
    kernels = torch.stack([k, k.T])[:, None]  # (2, 1, 3, 3): d/du, d/dv
    g = F.conv2d(F.pad(b, (1, 1, 1, 1)), kernels)  # (B, 2, H, W)
    return g[:, :1], g[:, 1:]


def edge_map(images: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """A Canny-like edge map (B, 1, H, W) in {0, 1} of images (B, 1, H, W) in [−1, 1]: the MNIST canny control.

    1. gradient magnitude m = |∇b| / 4 of the brightness b = (x + 1)/2 (:func:`sobel`; 1 at a black-to-white step);
    2. non-maximum suppression: keep a pixel only if m is a maximum among its two neighbours along the gradient
       direction (rounded to 0°, 45°, 90° or 135°; of two equal values the first along that direction is kept),
       which thins the two-pixel-wide gradient band to a 1-pixel outline (Canny 1986);
    3. edges where the kept m > ``threshold`` (one threshold, no hysteresis).
    """
    if not 0.0 <= threshold < 1.5:
        raise ValueError(f"threshold must be in [0, 1.5) (a share of a full black-to-white step), got {threshold!r}")
    gu, gv = sobel(images)
    m = torch.sqrt(gu**2 + gv**2) / 4  # (B, 1, H, W)
    angle = torch.atan2(gv, gu) % math.pi  # direction of the gradient, in [0, π)
    sector = torch.round(angle / (math.pi / 4)).long() % 4  # 0: 0°, 1: 45°, 2: 90°, 3: 135°
    padded = F.pad(m, (1, 1, 1, 1))
    h, w = m.shape[-2:]

    def shifted(du: int, dv: int) -> torch.Tensor:  # m at (u + du, v + dv)
        return padded[..., 1 + dv : 1 + dv + h, 1 + du : 1 + du + w]

    keep = torch.zeros_like(m, dtype=torch.bool)
    for s, (du, dv) in enumerate(((1, 0), (1, 1), (0, 1), (-1, 1))):  # rows go down: 45° points right and down
        is_max = (m >= shifted(du, dv)) & (m > shifted(-du, -dv))  # a tie (a sharp step) keeps one pixel of two
        keep |= (sector == s) & is_max
    return (keep & (m > threshold)).float()


def coarse_mask(images: torch.Tensor, cell: int = 4, threshold: float = 0.2) -> torch.Tensor:
    """The digit's coarse silhouette (B, 1, H, W) in {0, 1}: the "semantic synthesis" control (a segmentation map).

    The mean brightness of each ``cell`` × ``cell`` block (7×7 blocks for 28×28 and cell 4) above ``threshold`` marks
    the block as digit; the blocks are drawn back at full size (nearest neighbour), so the map says where the digit
    is but not how its strokes run.
    """
    b = _brightness(images)
    if not isinstance(cell, int) or cell < 1 or b.shape[-1] % cell or b.shape[-2] % cell:
        raise ValueError(f"cell must be a positive integer dividing the image size {tuple(b.shape[-2:])}, got {cell!r}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1) (a share of ink in a cell), got {threshold!r}")
    low = F.avg_pool2d(b, cell)  # (B, 1, H/cell, W/cell): ink share per block
    return F.interpolate((low > threshold).float(), scale_factor=cell, mode="nearest")  # (B, 1, H, W)


def _binary(maps: object, name: str) -> torch.Tensor:
    if not isinstance(maps, torch.Tensor) or maps.ndim != 4:
        raise ValueError(f"{name} must be a tensor (B, 1, H, W) in [0, 1], got {getattr(maps, 'shape', maps)!r}")
    return maps > 0.5


def edge_f1(edges: torch.Tensor, target: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """F1 of two edge maps (B, 1, H, W) in {0, 1}, per image (B,), with a ``tolerance`` in pixels.

    precision = share of ``edges`` pixels within ``tolerance`` (Chebyshev distance) of a ``target`` edge, recall =
    share of ``target`` pixels within ``tolerance`` of an ``edges`` pixel, F1 = 2PR / (P + R) (0 when either map is
    empty). Edge benchmarks (BSDS, Martin et al. 2004) match within a tolerance; on 28×28 digits exact pixels
    (``tolerance=0``) separate "this outline" from "an outline of the same digit" far better (module docstring, §6).
    """
    a, b = _binary(edges, "edges"), _binary(target, "target")
    if a.shape != b.shape:
        raise ValueError(f"edges and target must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if not isinstance(tolerance, int) or tolerance < 0:
        raise ValueError(f"tolerance must be an integer >= 0 (pixels), got {tolerance!r}")
    k = 2 * tolerance + 1

    def near(m: torch.Tensor) -> torch.Tensor:  # pixels within the tolerance of m
        return F.max_pool2d(m.float(), k, stride=1, padding=tolerance) > 0

    n_a, n_b = a.flatten(1).sum(1).float(), b.flatten(1).sum(1).float()  # (B,)
    precision = (a & near(b)).flatten(1).sum(1) / n_a.clamp_min(1)
    recall = (b & near(a)).flatten(1).sum(1) / n_b.clamp_min(1)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    return torch.where((n_a > 0) & (n_b > 0), f1, torch.zeros_like(f1))


def mask_iou(masks: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Intersection over union of two masks (B, 1, H, W) in {0, 1}, per image (B,) (0 when both are empty)."""
    a, b = _binary(masks, "masks"), _binary(target, "target")
    if a.shape != b.shape:
        raise ValueError(f"masks and target must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    inter, union = (a & b).flatten(1).sum(1).float(), (a | b).flatten(1).sum(1).float()
    return inter / union.clamp_min(1)


# ----------------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------------


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to 0 (in place) and return it: a zero convolution Z (Eq. 2)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


@dataclass
class ControlNetConfig:
    """The shape of a ControlNet: the base U-Net's config (the copy is its encoder half) plus the hint network."""

    unet: UNetConfig = field(default_factory=UNetConfig)  # the base U-Net's shape
    conditioning_channels: int = 1  # C_c: channels of the control image (1 for MNIST edge maps and masks)
    # hint network widths: conv_in → then per step a 3×3 conv and a stride-2 3×3 conv; len − 1 halvings (28 → 7: 3)
    conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 64)
    extra: dict = field(default_factory=dict)  # free-form notes (e.g. the control type); not used by the network

    def __post_init__(self):
        if isinstance(self.unet, dict):  # from JSON
            self.unet = UNetConfig(**self.unet)
        if not isinstance(self.unet, UNetConfig):
            raise TypeError(f"unet must be a UNetConfig (or its dict), got {type(self.unet).__name__}")
        self.conditioning_embedding_out_channels = tuple(int(c) for c in self.conditioning_embedding_out_channels)
        if not self.conditioning_embedding_out_channels or min(self.conditioning_embedding_out_channels) < 1:
            raise ValueError(
                f"conditioning_embedding_out_channels must be positive widths, got {self.conditioning_embedding_out_channels}"
            )
        if not isinstance(self.conditioning_channels, int) or self.conditioning_channels < 1:
            raise ValueError(f"conditioning_channels must be a positive integer, got {self.conditioning_channels!r}")

    @property
    def hint_downsampling(self) -> int:
        """How many control-image pixels per U-Net feature pixel along each side: 2^(stride-2 convolutions)."""
        return 2 ** (len(self.conditioning_embedding_out_channels) - 1)

    def control_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) of the control image for latents of height × width: the U-Net's first feature map (h/p, w/p),
        times the hint network's downsampling (7×7 latents → 28×28 with p = 1 and two halvings)."""
        p, f = self.unet.patch_size, self.hint_downsampling
        return height // p * f, width // p * f

    def to_dict(self) -> dict:
        return asdict(self)


class ControlNetConditioningEmbedding(nn.Module):
    """E of Eq. 3: control image (B, C_c, H, W) → c_f (B, C_0, H/2^k, W/2^k), last convolution zero-initialised.

    conv_in (3×3) → SiLU → [3×3 conv → SiLU → 3×3 stride-2 conv → SiLU] × k → conv_out (3×3, zero), k = len − 1:
    diffusers' ``ControlNetConditioningEmbedding`` with the same layer names (its state dict loads into ours).
    """

    def __init__(
        self, conditioning_embedding_channels: int, conditioning_channels: int = 1,
        block_out_channels: Sequence[int] = (16, 32, 64),
    ):  # fmt: skip
        super().__init__()
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(block_out_channels[:-1], block_out_channels[1:], strict=True):
            self.blocks.append(nn.Conv2d(c_in, c_in, 3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, 3, padding=1, stride=2))
        self.conv_out = zero_module(nn.Conv2d(block_out_channels[-1], conditioning_embedding_channels, 3, padding=1))

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv_in(conditioning))  # (B, C_h0, H, W)
        for block in self.blocks:
            h = F.silu(block(h))  # halves H and W every second block
        return self.conv_out(h)  # (B, C_0, H/2^k, W/2^k)


class ControlNetOutput(NamedTuple):
    """What :meth:`ControlNet.forward` returns (unpacks as ``down, mid = controlnet(...)``, diffusers' names)."""

    down_block_res_samples: list[torch.Tensor]  # one per skip of the U-Net, (B, C_i, h_i, w_i)
    mid_block_res_sample: torch.Tensor  # (B, C_last, h_last, w_last)


class ControlNet(PretrainedModel):
    """A trainable copy of a :class:`~diffusion_lab.unet.UNet`'s encoder half and middle block, a hint network and
    zero convolutions: ``controlnet(z_t, t, c, c̄, control) -> (down_residuals, mid_residual)`` for
    ``unet(..., down_block_additional_residuals=down_residuals, mid_block_additional_residual=mid_residual)``.

    Build it with :meth:`from_unet` (weights copied from the base model, as diffusers' ``ControlNetModel.from_unet``).
    """

    config_class = ControlNetConfig

    def __init__(self, config: ControlNetConfig | None = None):
        super().__init__()
        cfg = self.config = config or ControlNetConfig()
        template = UNet(cfg.unet)  # a U-Net of the base model's shape: keep its encoder half, drop the decoder half
        for name in ENCODER_MODULES:
            setattr(self, name, getattr(template, name))  # same names, so the base U-Net's state dicts load
        channels = cfg.unet.channels
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            channels[0], cfg.conditioning_channels, cfg.conditioning_embedding_out_channels
        )
        self.controlnet_down_blocks = nn.ModuleList(zero_module(nn.Conv2d(c, c, 1)) for c in channels)  # Z per skip
        self.controlnet_mid_block = zero_module(nn.Conv2d(channels[-1], channels[-1], 1))

    @classmethod
    def from_unet(
        cls,
        unet: UNet,
        conditioning_channels: int = 1,
        conditioning_embedding_out_channels: Sequence[int] = (16, 32, 64),
        load_weights_from_unet: bool = True,
    ) -> ControlNet:
        """A ControlNet for ``unet``: its config, and (``load_weights_from_unet``) a copy of the weights of every
        module in :data:`ENCODER_MODULES` (time and pooled-text embeddings, conv_in, the down levels, the middle
        block), exactly as diffusers' ``from_unet`` copies ``conv_in``, ``time_embedding``, ``add_embedding``,
        ``down_blocks`` and ``mid_block``. The hint network is random with a zero last layer; the zero convolutions
        are zero. The copy is independent: training it never touches ``unet``."""
        if not isinstance(unet, UNet):
            raise TypeError(f"from_unet needs a diffusion_lab UNet, got {type(unet).__name__}")
        config = ControlNetConfig(
            unet=copy.deepcopy(unet.config), conditioning_channels=conditioning_channels,
            conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
        )  # fmt: skip
        controlnet = cls(config).to(device=unet.device, dtype=unet.dtype)
        if load_weights_from_unet:
            for name in ENCODER_MODULES:
                if getattr(unet, name) is not None:
                    getattr(controlnet, name).load_state_dict(getattr(unet, name).state_dict())
        return controlnet

    def control_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) the control image must have for latents of height × width (:meth:`ControlNetConfig.control_size`)."""
        return self.config.control_size(height, width)

    def embed_control(self, controlnet_cond: torch.Tensor) -> torch.Tensor:
        """c_f = E(c_i) (Eq. 3): control images (B, C_c, H, W) → (B, C_0, h/p, w/p)."""
        return self.controlnet_cond_embedding(controlnet_cond.to(self.dtype))

    def _check_inputs(self, x, context, mask, pooled, cond, scale, class_labels, hint) -> None:
        cfg = self.config.unet
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected x of shape (B, {cfg.in_channels}, h, w), got {getattr(x, 'shape', x)!r}")
        b, (h, w), f = x.shape[0], x.shape[2:], cfg.downsampling
        if b == 0 or h % f or w % f:
            raise ValueError(f"x needs a batch and a height and width that are multiples of {f}, got {tuple(x.shape)}")
        if cond is not None:
            want = (b, self.config.conditioning_channels, *self.control_size(h, w))
            if not isinstance(cond, torch.Tensor) or tuple(cond.shape) != want:
                got = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
                raise ValueError(f"controlnet_cond must have shape {want} (one control image per latent), got {got}")
        else:
            want = (b, cfg.channels[0], h // cfg.patch_size, w // cfg.patch_size)
            if not isinstance(hint, torch.Tensor) or tuple(hint.shape) != want:
                got = tuple(hint.shape) if isinstance(hint, torch.Tensor) else type(hint).__name__
                raise ValueError(
                    f"hint must have shape {want} (embed_control of one control image per latent), got {got}"
                )
        if cfg.cross_attention_dim is not None:
            if not isinstance(context, torch.Tensor) or context.ndim != 3 or context.shape[0] != b:
                got = getattr(context, "shape", context)
                raise ValueError(
                    f"encoder_hidden_states must have shape ({b}, M, {cfg.cross_attention_dim}), got {got}"
                )
            if mask is not None and mask.shape != context.shape[:2]:
                raise ValueError(f"encoder_attention_mask must have shape {tuple(context.shape[:2])}")
        if cfg.pooled_dim is not None and (not isinstance(pooled, torch.Tensor) or pooled.shape != (b, cfg.pooled_dim)):
            raise ValueError(
                f"pooled_text must have shape ({b}, {cfg.pooled_dim}), got {getattr(pooled, 'shape', None)}"
            )
        if class_labels is not None and cfg.num_classes is None:
            raise ValueError("this ControlNet's U-Net is not class-conditional: do not pass class_labels")
        if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
            raise ValueError(f"conditioning_scale must be a finite number >= 0 (0 = no control), got {scale!r}")

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | int | float,
        encoder_hidden_states: torch.Tensor | None = None,
        pooled_text: torch.Tensor | None = None,
        controlnet_cond: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
        *,
        encoder_attention_mask: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        guess_mode: bool = False,
        hint: torch.Tensor | None = None,
    ) -> ControlNetOutput:
        """Residuals for the frozen U-Net: ([λ·Z_i(skip_i) for each skip], λ·Z_mid(middle)), shapes as the U-Net's
        skips (:meth:`UNet.residual_shapes`). ``guess_mode``: λ·w_i with w_i from 0.1 (first skip) to 1 (middle
        block), spaced on a log scale (diffusers' guess mode). ``hint``: c_f = E(c_i) computed beforehand
        (:meth:`embed_control`; it depends on neither z_t nor t, so a sampling loop computes it once), given instead
        of ``controlnet_cond``."""
        if (controlnet_cond is None) == (hint is None):
            raise ValueError(
                "pass the control image as controlnet_cond (or its embedding as hint), exactly one of them"
            )
        self._check_inputs(
            x, encoder_hidden_states, encoder_attention_mask, pooled_text, controlnet_cond, conditioning_scale,
            class_labels, hint,
        )  # fmt: skip
        cfg, b = self.config.unet, x.shape[0]
        context, mask = encoder_hidden_states, encoder_attention_mask
        # the time (+ class, + pooled text) embedding, as the U-Net computes it
        t = torch.as_tensor(t, device=x.device)
        if t.numel() not in (1, b):
            raise ValueError(f"t must be one timestep or one per sample ({b}), got shape {tuple(t.shape)}")
        t = t.reshape(-1).expand(b)  # (B,)
        emb = self.time_mlp(timestep_embedding(t, cfg.channels[0]).to(x.dtype))  # (B, E)
        if self.class_embed is not None:
            if class_labels is None:
                class_labels = torch.full((b,), cfg.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.class_embed(class_labels.long())
        if self.pooled_embed is not None:
            emb = emb + self.pooled_embed(pooled_text.to(x.dtype))

        # Eq. 2: the copy reads x + Z(c; Θ_z1), here conv_in(z_t) + E(c_i), E's last conv being that zero conv
        p = cfg.patch_size
        h = self.conv_in(F.pixel_unshuffle(x, p) if p > 1 else x)  # (B, C_0, h/p, w/p)
        h = h + (self.embed_control(controlnet_cond) if hint is None else hint)  # + c_f (B, C_0, h/p, w/p)
        skips = []
        for level, down in zip(self.down, self.downsample, strict=True):
            h = level(h, emb, context, mask)
            skips.append(h)  # (B, C_i, h_i, w_i)
            h = down(h)
        h = self.mid1(h, emb)
        h = self.mid_attn(h, context, mask) if isinstance(self.mid_attn, SpatialTransformer) else self.mid_attn(h)
        h = self.mid2(h, emb)

        # Eq. 2: the zero convolutions Z(·; Θ_z2), then the scale λ
        down_res = [z(s) for z, s in zip(self.controlnet_down_blocks, skips, strict=True)]
        mid_res = self.controlnet_mid_block(h)
        if guess_mode:
            scales = torch.logspace(-1, 0, len(down_res) + 1, device=x.device) * conditioning_scale  # 0.1 … 1
            return ControlNetOutput([r * s for r, s in zip(down_res, scales, strict=False)], mid_res * scales[-1])
        return ControlNetOutput([r * conditioning_scale for r in down_res], mid_res * conditioning_scale)


def controlnet_keep(num_steps: int, start: float = 0.0, end: float = 1.0) -> list[float]:
    """1.0 for the sampling steps the control acts on, 0.0 for the others (diffusers' ``controlnet_keep``):
    step i of N is kept unless i/N < start or (i + 1)/N > end."""
    return [1.0 - float(i / num_steps < start or (i + 1) / num_steps > end) for i in range(num_steps)]


# ----------------------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class _ControlInputs:
    """The control of one pipeline call (set by ``__call__``, read by ``_predict`` at every step)."""

    image: torch.Tensor  # (B, C_c, H, W)
    hint: torch.Tensor  # c_f = E(image) (B, C_0, h, w), computed once per call
    scale: float
    start: float
    end: float
    guess_mode: bool


class TinyControlNetPipeline(TinyStableDiffusionPipeline):
    """The tiny Stable Diffusion with a ControlNet, diffusers' ``StableDiffusionControlNetPipeline`` call shape:
    ``pipe(prompt, image=control, controlnet_conditioning_scale=1.0, control_guidance_start=0.0,
    control_guidance_end=1.0, guess_mode=False, negative_prompt=None, num_inference_steps=25, guidance_scale=3.0,
    generator=None, ...)`` → :class:`~diffusion_lab.pipeline.PipelineOutput`. ``image`` is the control map
    (B or 1, C_c, H, W) in [0, 1] (:func:`edge_map`, :func:`coarse_mask`), not an image to start from.
    """

    _components = ("vae", "text_encoder", "tokenizer", "unet", "controlnet", "scheduler")

    def __init__(self, vae, text_encoder, tokenizer, unet, controlnet: ControlNet, scheduler):
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler)
        if not isinstance(controlnet, ControlNet):
            raise TypeError(
                f"controlnet must be a ControlNet (ControlNet.from_unet(unet)), got {type(controlnet).__name__}"
            )
        mine, base = controlnet.config.unet, unet.config
        fields = ("in_channels", "channels", "patch_size", "cross_attention_dim", "pooled_dim", "num_classes")
        wrong = [
            f"{f}: {getattr(mine, f)} vs {getattr(base, f)}" for f in fields if getattr(mine, f) != getattr(base, f)
        ]
        if wrong:
            raise ValueError(
                f"the ControlNet was built for another U-Net ({'; '.join(wrong)}): use ControlNet.from_unet"
            )
        f = controlnet.config.hint_downsampling // base.patch_size
        if f != self.vae_scale_factor:
            raise ValueError(
                f"the ControlNet's hint network reduces control images {f}× but the autoencoder's factor is "
                f"{self.vae_scale_factor}: give conditioning_embedding_out_channels "
                f"{int(math.log2(self.vae_scale_factor * base.patch_size)) + 1} entries"
            )
        self.controlnet = controlnet
        self._control: _ControlInputs | None = None

    @classmethod
    def from_pipe(cls, pipe: TinyStableDiffusionPipeline, controlnet: ControlNet) -> TinyControlNetPipeline:
        """A ControlNet pipeline sharing ``pipe``'s components (diffusers' ``from_pipe``): nothing is copied."""
        return cls(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, controlnet, pipe.scheduler)

    def to(self, device) -> TinyControlNetPipeline:
        super().to(device)
        self.controlnet.to(device)
        return self

    def num_parameters(self) -> dict[str, int]:
        return {**super().num_parameters(), "controlnet": self.controlnet.num_parameters()}

    def check_control(
        self, image: object, batch_size: int, height: int, width: int, scale: object, start: object, end: object
    ) -> torch.Tensor:
        """Validate the control arguments; returns the control maps expanded to (batch_size, C_c, H, W)."""
        c = self.controlnet.config.conditioning_channels
        if image is None:
            raise TypeError(f"pass the control map: image=... (a tensor (B or 1, {c}, {height}, {width}) in [0, 1], "
                            "e.g. controlnet.edge_map(images))")  # fmt: skip
        if not isinstance(image, torch.Tensor) or image.ndim != 4:
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(
                f"the control image must be a tensor (B or 1, {c}, {height}, {width}) in [0, 1], got {got}"
            )
        if image.shape[1] != c:
            hint = ": make it grey, e.g. image.mean(dim=1, keepdim=True)" if c == 1 else ""
            raise ValueError(f"the control image must have {c} channel(s) (the ControlNet's conditioning_channels), "
                             f"got {image.shape[1]}{hint}")  # fmt: skip
        if tuple(image.shape[2:]) != (height, width):
            raise ValueError(
                f"the control image must be {height}x{width} like the output, got {image.shape[2]}x{image.shape[3]}: "
                f"resize it with torch.nn.functional.interpolate(image, size=({height}, {width}), mode='bilinear') "
                "(or compute the control map from a 28x28 image)"
            )
        if image.shape[0] not in (1, batch_size):
            raise ValueError(
                f"the control image holds {image.shape[0]} maps; give 1 (for every prompt) or one per prompt "
                f"({batch_size})"
            )
        if not torch.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise ValueError(
                f"control maps take values in [0, 1] (edge_map and coarse_mask make them), got values from "
                f"{image.min().item():.3g} to {image.max().item():.3g}: pass edge_map(images), not the images"
            )
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0):
            raise ValueError(
                f"controlnet_conditioning_scale must be a finite number >= 0 (0 = the base model, 1 = as trained), "
                f"got {scale!r}"
            )
        for name, value in (("control_guidance_start", start), ("control_guidance_end", end)):
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a number in [0, 1] (a share of the sampling steps), got {value!r}")
        if start >= end:
            raise ValueError(
                f"control_guidance_start ({start}) must be smaller than control_guidance_end ({end}): the control "
                "acts on the steps between them (shares of the schedule, 0 = the first step)"
            )
        return image.expand(batch_size, -1, -1, -1)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        image: torch.Tensor | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        generator: torch.Generator | None = None,
        height: int = 28,
        width: int = 28,
        controlnet_conditioning_scale: float = 1.0,
        control_guidance_start: float = 0.0,
        control_guidance_end: float = 1.0,
        guess_mode: bool = False,
        guidance_rescale: float = 0.0,
        eta: float | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pt",
        return_intermediates: bool = False,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> PipelineOutput:
        """Text-to-image with the control map ``image`` (B or 1, C_c, H, W) in [0, 1]; the other arguments as
        :meth:`TinyStableDiffusionPipeline.__call__` (no img2img or inpainting here)."""
        b = len(self._as_prompts(prompt, "prompt"))
        control = self.check_control(
            image, b, height, width, controlnet_conditioning_scale, control_guidance_start, control_guidance_end
        )
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        image = control.to(self.device, self.controlnet.dtype)
        self._control = _ControlInputs(
            image=image,
            hint=self.controlnet.embed_control(image),
            scale=float(controlnet_conditioning_scale),
            start=float(control_guidance_start),
            end=float(control_guidance_end),
            guess_mode=bool(guess_mode),
        )
        try:
            return super().__call__(
                prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale, generator=generator, height=height, width=width,
                guidance_rescale=guidance_rescale, eta=eta, latents=latents, output_type=output_type,
                return_intermediates=return_intermediates, callback=callback,
            )  # fmt: skip
        finally:
            self._control = None

    def _predict(self, z, t, c, mask, pooled, step=0, num_steps=1):
        """The frozen U-Net's prediction with the ControlNet's residuals added (Eq. 2), on the kept steps."""
        ctrl = self._control
        if ctrl is None:
            raise RuntimeError("TinyControlNetPipeline._predict runs inside __call__ only (it needs the control map)")
        scale = ctrl.scale * controlnet_keep(num_steps, ctrl.start, ctrl.end)[step]
        if scale == 0:  # outside [control_guidance_start, control_guidance_end], or λ = 0: the base model, exactly
            return super()._predict(z, t, c, mask, pooled, step, num_steps)
        pooled_in = pooled if self.unet.config.pooled_dim else None
        b = ctrl.image.shape[0]
        if z.shape[0] == 2 * b and ctrl.guess_mode:  # CFG + guess mode: the control for the conditional half only
            down, mid = self.controlnet(
                z[b:], t, c[b:], None if pooled_in is None else pooled_in[b:], None, scale,
                encoder_attention_mask=mask[b:], guess_mode=True, hint=ctrl.hint,
            )  # fmt: skip
            down, mid = [torch.cat([torch.zeros_like(r), r]) for r in down], torch.cat([torch.zeros_like(mid), mid])
        else:
            hint = ctrl.hint.repeat(z.shape[0] // b, 1, 1, 1)  # [uncond; cond] with CFG: both branches
            down, mid = self.controlnet(
                z, t, c, pooled_in, None, scale, encoder_attention_mask=mask, guess_mode=ctrl.guess_mode, hint=hint
            )
        kw = {"pooled_text": pooled} if self.unet.config.pooled_dim else {}
        return self.unet(
            z, t, encoder_hidden_states=c, encoder_attention_mask=mask, down_block_additional_residuals=down,
            mid_block_additional_residual=mid, **kw,
        )  # fmt: skip

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, scheduler=None, device=None) -> TinyControlNetPipeline:
        """Load a folder written by :meth:`save_pretrained` (the tiny SD's folders plus ``controlnet/``)."""
        from diffusion_lab.autoencoder import AutoencoderKL
        from diffusion_lab.pipeline import _load_scheduler
        from diffusion_lab.text import TextEncoder, WordTokenizer

        directory = Path(directory)
        if not (directory / "model_index.json").is_file():
            raise FileNotFoundError(
                f"{directory} holds no model_index.json: is it a folder written by save_pretrained?"
            )
        stored = json.loads((directory / "model_index.json").read_text("utf-8")).get("_class_name")
        if stored != cls.__name__:
            raise ValueError(
                f"{directory} holds a {stored}, not a {cls.__name__}: load it with {stored}.from_pretrained(...) and "
                "add a ControlNet with TinyControlNetPipeline.from_pipe(pipe, ControlNet.from_pretrained(...))"
            )
        return cls(
            AutoencoderKL.from_pretrained(directory / "vae", device=device),
            TextEncoder.from_pretrained(directory / "text_encoder", device=device).eval(),
            WordTokenizer.from_pretrained(directory / "tokenizer"),
            UNet.from_pretrained(directory / "unet", device=device).eval(),
            ControlNet.from_pretrained(directory / "controlnet", device=device).eval(),
            scheduler or _load_scheduler(directory / "scheduler" / "scheduler_config.json"),
        )


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------


def controlnet_loss(
    pipe: TinyStableDiffusionPipeline,
    controlnet: ControlNet,
    latents: torch.Tensor,
    prompts: list[str],
    control: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Eq. 4 with the tiny model's own loss (:func:`diffusion_lab.finetune.denoising_loss`, the same random draws):
    t ~ U{0 … T − 1}, ε ~ N(0, I), z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε, and ‖target − f_θ(z_t, t, c_t, c_f)‖² where the
    frozen U-Net f_θ receives the ControlNet's residuals. latents (B, L, h, w), control (B, C_c, H, W)."""
    if latents.ndim != 4 or len(prompts) != len(latents) or len(control) != len(latents):
        raise ValueError(
            f"need latents (B, L, h, w), one prompt and one control map per latent, got {tuple(latents.shape)}, "
            f"{len(prompts)} prompts and {len(control)} maps"
        )
    ab = pipe.scheduler.alphas_cumprod.float().to(latents.device)  # (T,) ᾱ_t
    b = len(latents)
    t = torch.randint(0, len(ab), (b,), generator=generator).to(latents.device)  # (B,)
    noise = torch.randn(latents.shape, generator=generator).to(latents)  # (B, L, h, w)
    z_t = q_sample(latents, t, noise, ab)
    c, mask, pooled = pipe.encode_prompt(prompts)  # frozen text encoder: no gradient needed
    pooled = pooled if pipe.unet.config.pooled_dim else None
    down, mid = controlnet(z_t, t, c, pooled, control, encoder_attention_mask=mask)
    kw = {"pooled_text": pooled} if pooled is not None else {}
    out = pipe.unet(
        z_t, t, encoder_hidden_states=c, encoder_attention_mask=mask, down_block_additional_residuals=down,
        mid_block_additional_residual=mid, **kw,
    )  # fmt: skip
    ab_t = ab[t][:, None, None, None]  # (B, 1, 1, 1)
    prediction_type = pipe.scheduler.config["prediction_type"]
    target = {"epsilon": noise, "v_prediction": velocity(latents, noise, ab_t), "sample": latents}[prediction_type]
    return (out - target).pow(2).flatten(1).mean(1).mean()  # per example, then the batch (as denoising_loss)


# Why these choices (edge control on the shipped tiny SD; edge F1 of 100-200 test digits, DDIM-25, w = 3; the base model
# scores 0.31, the autoencoder's reconstructions 0.88; 1 CPU thread shared with other jobs, November 2026):
# - lr at 300 steps: 3e-4 → 0.56, 1e-3 → 0.68, 2e-3 → 0.72, 4e-3 → 0.73 (the paper's 1e-5 is for batch 256 and
#   weeks of steps); 1,000 steps: constant 2e-3 → 0.833, 3e-3 with a cosine decay to 10 % → 0.840;
# - half the prompts empty (paper §3.3) against none, at 300 steps: 0.68 against 0.66 (and the ControlNet must
#   then read the edges, not the caption);
# - hint widths (16, 32, 64) against (8, 16, 32): 0.68 against 0.66 at 300 steps, for ~10 % more time per step;
# - cost: a step is ~1.4× a step of the base model's own training (the frozen U-Net still runs forward and
#   backward, to pass gradients to the residuals; the hint network at 28×28 is a third of the ControlNet's cost).
@dataclass
class ControlNetTrainConfig:
    """Training of :func:`train_controlnet` (defaults: the full-mode recipe; quick mode shrinks steps and data)."""

    steps: int = field(default_factory=lambda: pick(1000, 8))
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    final_lr_fraction: float = 0.1  # cosine decay after the warm-up, from lr to this fraction of it
    grad_clip: float | None = 1.0
    num_images: int = field(default_factory=lambda: pick(8000, 256))  # the first N MNIST training images
    empty_prompt_prob: float = 0.5  # Zhang et al. §3.3: half the prompts replaced by "", so the control is read
    caption_drop_prob: float = 0.25  # each attribute word dropped, as the base model's recipe did
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "num_images"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        for name in ("empty_prompt_prob", "caption_drop_prob", "final_lr_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def lr_at(self, step: int) -> float:
        """Linear warm-up over ``warmup_steps``, then cosine decay to ``final_lr_fraction``·lr at the last step."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(self.steps - self.warmup_steps - 1, 1)
        f = self.final_lr_fraction
        return self.lr * (f + (1 - f) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train_controlnet(
    pipe: TinyStableDiffusionPipeline,
    control_fn: Callable[[torch.Tensor], torch.Tensor] = edge_map,
    config: ControlNetTrainConfig | None = None,
    *,
    bins=None,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    controlnet: ControlNet | None = None,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> tuple[TinyControlNetPipeline, dict]:
    """Train a ControlNet for ``pipe`` (the tiny SD, left frozen and unchanged) on MNIST and ``control_fn``'s maps.

    1. Data: z_0 = s·μ(x) of the first ``num_images`` training images (:func:`diffusion_lab.finetune.encode_images`),
       their control maps c_i = control_fn(x) and attributes; captions are drawn each step with
       :func:`diffusion_lab.text.captions_for` (attribute words dropped with ``caption_drop_prob``, as the base model
       was trained), then replaced by "" with ``empty_prompt_prob`` (Zhang et al. §3.3).
    2. ControlNet = :meth:`ControlNet.from_unet` (or ``controlnet``); AdamW on its parameters only, linear warm-up
       then cosine decay (:meth:`ControlNetTrainConfig.lr_at`);
       the U-Net, autoencoder and text encoder are frozen (requires_grad False, eval mode).
    3. Each step: :func:`controlnet_loss` (Eq. 4, the base model's loss with the control).

    ``bins``: the caption bins of the base model (from :func:`diffusion_lab.recipes.load_tiny_sd`); None fits them
    on the training images. Returns the :class:`TinyControlNetPipeline` (sharing ``pipe``'s components) and ``info``:
    ``losses``, ``steps``, ``seconds``, ``steps_per_s``, ``parameters``, ``config``.
    """
    from tqdm.auto import tqdm

    from diffusion_lab.data import load_mnist
    from diffusion_lab.finetune import encode_images
    from diffusion_lab.text import attributes, captions_for, fit_bins

    cfg = config or ControlNetTrainConfig()
    if images is None:
        images, labels = load_mnist("train", limit=cfg.num_images)
    elif labels is None or len(labels) != len(images):
        raise ValueError("pass labels (N,) with images (N, 1, 28, 28)")
    images, labels = images[: cfg.num_images], labels[: cfg.num_images]
    start = time.perf_counter()
    for module in (pipe.vae, pipe.text_encoder, pipe.unet):
        module.eval().requires_grad_(False)
    device = pipe.device
    latents = encode_images(pipe, images)  # (N, L, h, w)
    with torch.no_grad():
        controls = control_fn(images).to(device)  # (N, C_c, H, W)
    attrs = attributes(images)
    bins = bins if bins is not None else fit_bins(images, labels)

    torch.manual_seed(cfg.seed)
    controlnet = controlnet if controlnet is not None else ControlNet.from_unet(pipe.unet, controls.shape[1])
    controlnet.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    for step in tqdm(range(cfg.steps), desc="ControlNet", disable=not progress, mininterval=1.0):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr_at(step)
        idx = torch.randint(0, len(latents), (cfg.batch_size,), generator=g)  # (B,)
        prompts = captions_for(
            labels[idx], None, bins, attrs={k: v[idx] for k, v in attrs.items()}, generator=g,
            drop_prob=cfg.caption_drop_prob,
        )  # fmt: skip
        empty = (torch.rand(cfg.batch_size, generator=g) < cfg.empty_prompt_prob).tolist()
        prompts = ["" if e else p for p, e in zip(prompts, empty, strict=True)]
        loss = controlnet_loss(pipe, controlnet, latents[idx], prompts, controls[idx.to(device)], g)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the ControlNet loss became {loss.item()} at step {step}; lower lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(controlnet.parameters(), cfg.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        if callback is not None:
            callback(step, losses[-1])
    seconds = time.perf_counter() - start
    controlnet.eval().requires_grad_(False)
    controlled = TinyControlNetPipeline.from_pipe(pipe, controlnet)
    info = {
        "losses": losses, "steps": cfg.steps, "seconds": seconds, "steps_per_s": cfg.steps / seconds,
        "parameters": controlled.num_parameters(), "config": cfg.to_dict(),
    }  # fmt: skip
    return controlled, info
