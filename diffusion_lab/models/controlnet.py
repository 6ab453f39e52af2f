"""Structure control for the tiny Stable Diffusion: a ControlNet (Zhang, Rao & Agrawala 2023).

================================  ==============  =====================================================================
code                              symbol          meaning
================================  ==============  =====================================================================
``x``                             z_t             noisy latents (B, L, h, w) = (B, 4, 7, 7) for the tiny SD
``controlnet_cond``               c_i             the control image (B, C_c, H, W) = (B, 1, 28, 28), values in [0, 1]
``controlnet_cond_embedding``     E               the hint network: c_f = E(c_i) (B, C_0, h, w), last conv zero (Eq. 3)
``F``, ``Θ``                      F(·; Θ)         the frozen U-Net's encoder half (its levels and middle block)
``Θ_c``                           Θ_c             the trainable copy of those blocks, initialised from Θ
``controlnet_down_blocks[i]``     Z(·; Θ_z)       a zero convolution: 1×1 conv whose weight and bias start at 0
``down_residuals[i]``, ``mid``    r_i, r_mid      Z(the copy's skip i / middle output), added to the frozen U-Net's
``conditioning_scale``            λ               multiplies every residual (``controlnet_conditioning_scale``); 0 = base
``c``, ``pooled``                 c_t, c̄_t        the prompt's token states (B, M, D) and pooled vector (B, D)
================================  ==============  =====================================================================

    y = F(x; Θ)                                                   a locked block (Eq. 1)
    y_c = F(x; Θ) + Z(F(x + Z(c; Θ_z1); Θ_c); Θ_z2)               the controlled block (Eq. 2)
    c_f = E(c_i)                                                  pixel-space control → the first feature map (Eq. 3)
    L = E ‖target − f_θ(z_t, t, c_t, c_f)‖²                       the base model's own loss, only Θ_c, E, Z train (Eq. 4)
    ∂L/∂W = (∂L/∂y) xᵀ ≠ 0,  ∂L/∂x = Wᵀ(∂L/∂y) = 0 while W = 0    why zero convolutions still learn (§3.1)

For Stable Diffusion the "block" is the U-Net's whole encoder half and middle block: the copy reads conv_in(z_t) + c_f,
and each of its skip outputs and its middle output goes through its own zero 1×1 convolution and is *added* to the
frozen U-Net's matching skip (SD 1.5: 12 skips + 1 middle = 13 zero convolutions; here one per level + 1), through
:meth:`UNet.forward`'s ``down_block_additional_residuals`` / ``mid_block_additional_residual`` (diffusers' names). At
initialisation every Z outputs exactly 0, so the ControlNet is a no-op and the first samples are the base model's bit
for bit; the first step moves only the output Z, then gradients reach Θ_c and the hint network. E is diffusers'
``ControlNetConditioningEmbedding`` (same layer names): 3×3 convolutions with SiLU, every second one stride 2, here
28 → 14 → 7. Training (:func:`diffusion_lab.training.controlnet.train_controlnet`) replaces half the prompts by the
empty one (§3.3) so the network reads the map itself. Sampling (:class:`~diffusion_lab.pipelines.controlnet.TinyControlNetPipeline`,
diffusers' call shape) scales the residuals by λ on the steps in [control_guidance_start, control_guidance_end] and
feeds both CFG branches (``guess_mode``: the conditional one only, residuals scaled 0.1 → 1 on a log scale). The
MNIST control maps and their agreement measures (edge_map, coarse_mask, edge_f1, mask_iou) are in
:mod:`diffusion_lab.maths.images`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_lab.models.unet import SpatialTransformer, UNet, UNetConfig, timestep_embedding, timesteps_for_batch
from diffusion_lab.utils.checkpoint import PretrainedModel
from diffusion_lab.utils.errors import check_int, check_tensor

__all__ = [
    "ENCODER_MODULES",
    "ControlNet",
    "ControlNetConditioningEmbedding",
    "ControlNetConfig",
    "ControlNetOutput",
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
        widths = self.conditioning_embedding_out_channels
        if isinstance(widths, str) or not isinstance(widths, Sequence):
            raise TypeError(f"conditioning_embedding_out_channels must be a tuple of widths, got {widths!r}")
        self.conditioning_embedding_out_channels = tuple(
            check_int(f"conditioning_embedding_out_channels[{i}]", c, minimum=None) for i, c in enumerate(widths)
        )
        if not self.conditioning_embedding_out_channels or min(self.conditioning_embedding_out_channels) < 1:
            raise ValueError(
                f"conditioning_embedding_out_channels must be positive widths, got {self.conditioning_embedding_out_channels}"
            )
        self.conditioning_channels = check_int("conditioning_channels", self.conditioning_channels, minimum=None)
        if self.conditioning_channels < 1:
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
    """A trainable copy of a :class:`~diffusion_lab.models.unet.UNet`'s encoder half and middle block, a hint network and
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
        check_tensor("x", x, f"of latents (B, {cfg.in_channels}, h, w)")
        for name, value in (
            ("controlnet_cond", cond), ("hint", hint), ("encoder_hidden_states", context),
            ("encoder_attention_mask", mask), ("pooled_text", pooled), ("class_labels", class_labels),
        ):  # fmt: skip
            if value is not None:
                check_tensor(name, value, "(or None)")
        if isinstance(scale, bool) or not isinstance(scale, int | float):
            raise TypeError(f"conditioning_scale must be a number >= 0 (0 = no control), got {scale!r}")
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
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
        t = timesteps_for_batch(t, b, x.device)  # (B,)
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
