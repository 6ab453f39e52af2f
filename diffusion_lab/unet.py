"""A small U-Net for diffusion on small images (MNIST), written block by block.

Notation
--------
=================  ============  =====================================================================
code               symbol        meaning
=================  ============  =====================================================================
``x``              x_t           noisy input (B, C, H, W)
``t``              t             timestep, int or float, shape (B,) or scalar
``emb``            e(t, y)       conditioning vector: time embedding (+ class embedding), (B, E)
``class_labels``   y             digit 0..9, or ``num_classes`` = "no label" (the null class for CFG)
``channels[i]``    C_i           feature channels at level i (resolution H / 2^i)
=================  ============  =====================================================================

Architecture (Ho et al. 2020, Appendix B, scaled down; conditioning as in Dhariwal & Nichol 2021, §3):
``conv_in`` → for each level: ResBlocks (+ self-attention where asked) → Downsample; middle: ResBlock, attention,
ResBlock; then the mirror image, concatenating the skip of each level. Every ResBlock receives the time (and class)
embedding as a per-channel scale and shift ("adaptive group norm"). The output convolution starts at zero, so the
untrained network predicts 0.

Input sizes: any H, W divisible by patch_size·2^(levels − 1): 28×28 works directly with 3 levels (28 → 14 → 7), or
with ``patch_size=2`` and 2 levels (28×28×1 → 14×14×4 → 7×7). Folding 2×2 pixels into channels first ("pixel
unshuffle", as simple diffusion and DiT's patches do) is lossless and makes every convolution 4× cheaper.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNetConfig", "UNet", "timestep_embedding"]


@dataclass
class UNetConfig:
    """Everything that defines the network's shape (stored as JSON next to its weights)."""

    in_channels: int = 1
    out_channels: int = 1
    channels: tuple[int, ...] = (32, 64, 64)  # per level; level i works at resolution H / 2^i
    blocks_per_level: int = 1  # ResBlocks per level on the way down (one more on the way up)
    attention_levels: tuple[bool, ...] = (False, False, True)  # self-attention where the image is small
    num_classes: int | None = None  # None: unconditional; 10 for MNIST digits (+1 null class for CFG)
    time_embed_dim: int = 128
    groups: int = 8  # GroupNorm groups
    heads: int = 4  # attention heads
    dropout: float = 0.0
    patch_size: int = 1  # >1: fold p×p pixel patches into channels first (pixel unshuffle), 4× cheaper per halving
    extra: dict = field(default_factory=dict)  # free-form notes (e.g. the recipe); not used by the network

    def __post_init__(self):
        self.channels = tuple(int(c) for c in self.channels)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        if len(self.channels) < 1 or len(self.attention_levels) != len(self.channels):
            raise ValueError(
                f"attention_levels needs one entry per level ({len(self.channels)}), got {len(self.attention_levels)}"
            )
        if any(c % self.groups for c in self.channels):
            raise ValueError(f"every entry of channels {self.channels} must be divisible by groups={self.groups}")
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes must be None or >= 1, got {self.num_classes}")

    @property
    def downsampling(self) -> int:
        """Total downsampling factor patch_size·2^(levels − 1): H and W must be multiples of it."""
        return self.patch_size * 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict:
        return asdict(self)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in the Transformer and DDPM.

    e(t) = [cos(t·ω_0), …, cos(t·ω_{d/2−1}), sin(t·ω_0), …, sin(t·ω_{d/2−1})] with ω_i = max_period^(−i/(d/2)),
    the layout of diffusers' ``get_timestep_embedding(t, d, flip_sin_to_cos=True, downscale_freq_shift=0)``.
    t: (B,) → (B, dim).
    """
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv → scale/shift by the embedding → SiLU → dropout → conv, plus a skip connection.

    h = conv₂(drop(SiLU(GN(conv₁(SiLU(GN(x)))) · (1 + s) + b))) + skip(x), with (s, b) = Linear(SiLU(emb)).
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # the block starts as the identity (its skip)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # (B, C_out, 1, 1) each
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H·W positions: softmax(QKᵀ/√d)V, with a residual connection."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)  # (B, nh, d, HW)
        out = F.scaled_dot_product_attention(
            q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)
        )  # (B, nh, HW, d)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Level(nn.Module):
    """The blocks at one resolution: ResBlocks, each followed by self-attention if ``attention``."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int, attention: bool, cfg: UNetConfig):
        super().__init__()
        self.res = nn.ModuleList(
            ResBlock(c_in if i == 0 else c_out, c_out, cfg.time_embed_dim, cfg.groups, cfg.dropout)
            for i in range(n_blocks)
        )
        self.attn = nn.ModuleList(
            SelfAttention(c_out, cfg.heads, cfg.groups) if attention else nn.Identity() for _ in range(n_blocks)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for res, attn in zip(self.res, self.attn, strict=True):
            x = attn(res(x, emb))
        return x


class UNet(nn.Module):
    """ε-, v- or x0-prediction network: ``model(x_t, t, class_labels=None) -> (B, out_channels, H, W)``."""

    config_class = UNetConfig

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        cfg = self.config = config or UNetConfig()
        ch = cfg.channels
        E = cfg.time_embed_dim
        self.time_mlp = nn.Sequential(nn.Linear(ch[0], E), nn.SiLU(), nn.Linear(E, E))
        # one extra row: the "null" class used for unconditional predictions (classifier-free guidance)
        self.class_embed = nn.Embedding(cfg.num_classes + 1, E) if cfg.num_classes else None
        p2 = cfg.patch_size**2
        self.conv_in = nn.Conv2d(cfg.in_channels * p2, ch[0], 3, padding=1)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c_prev = ch[0]
        for i, c in enumerate(ch):
            self.down.append(Level(c_prev, c, cfg.blocks_per_level, cfg.attention_levels[i], cfg))
            last = i == len(ch) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1))
            c_prev = c

        self.mid1 = ResBlock(ch[-1], ch[-1], E, cfg.groups, cfg.dropout)
        self.mid_attn = SelfAttention(ch[-1], cfg.heads, cfg.groups)
        self.mid2 = ResBlock(ch[-1], ch[-1], E, cfg.groups, cfg.dropout)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(ch))):
            c_skip, c_out = ch[i], ch[max(i - 1, 0)]
            self.up.append(Level(c_prev + c_skip, ch[i], cfg.blocks_per_level + 1, cfg.attention_levels[i], cfg))
            self.upsample.append(
                nn.Identity()
                if i == 0
                else nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch[i], c_out, 3, padding=1))
            )
            c_prev = ch[i] if i == 0 else c_out

        self.norm_out = nn.GroupNorm(cfg.groups, ch[0])
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels * p2, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory) -> None:
        """Weights (safetensors) and config (JSON) in a folder, written atomically."""
        from diffusion_lab.checkpoint import save_checkpoint

        save_checkpoint(directory, self)

    @classmethod
    def from_pretrained(cls, directory, device=None) -> UNet:
        """Load a folder written by ``save_pretrained`` or ``save_checkpoint`` (EMA weights if present)."""
        from diffusion_lab.checkpoint import load_model

        return load_model(directory, cls, device=device)

    def _check_inputs(self, x: torch.Tensor, class_labels: torch.Tensor | None) -> None:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected x of shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("got an empty batch (batch size 0)")
        f = cfg.downsampling
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(
                f"height and width must be multiples of {f} (patch_size {cfg.patch_size}, then {len(cfg.channels) - 1} halvings), "
                f"got {x.shape[2]}x{x.shape[3]}; pad the images (e.g. 28 -> 32) or use fewer levels"
            )
        if class_labels is not None:
            if cfg.num_classes is None:
                raise ValueError("this U-Net is unconditional (num_classes=None): do not pass class_labels")
            if class_labels.shape != (x.shape[0],):
                raise ValueError(f"class_labels must have shape ({x.shape[0]},), got {tuple(class_labels.shape)}")
            if class_labels.min() < 0 or class_labels.max() > cfg.num_classes:
                raise ValueError(
                    f"class_labels must be in 0..{cfg.num_classes - 1} (or {cfg.num_classes} for 'no label'), "
                    f"got values from {int(class_labels.min())} to {int(class_labels.max())}"
                )

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | int | float, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        self._check_inputs(x, class_labels)
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.numel() not in (1, b):
            raise ValueError(f"t must be one timestep or one per sample ({b}), got shape {tuple(t.shape)}")
        t = t.reshape(-1).expand(b)  # (B,)
        emb = self.time_mlp(timestep_embedding(t, self.config.channels[0]).to(x.dtype))  # (B, E)
        if self.class_embed is not None:
            if class_labels is None:  # unconditional: the null class
                class_labels = torch.full((b,), self.config.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.class_embed(class_labels.long())

        p = self.config.patch_size
        h = self.conv_in(F.pixel_unshuffle(x, p) if p > 1 else x)  # (B, C_0, H/p, W/p)
        skips = []
        for level, down in zip(self.down, self.downsample, strict=True):
            h = level(h, emb)
            skips.append(h)  # (B, C_i, H/2^i, W/2^i)
            h = down(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for level, up in zip(self.up, self.upsample, strict=True):
            h = level(torch.cat([h, skips.pop()], dim=1), emb)
            h = up(h)
        out = self.conv_out(F.silu(self.norm_out(h)))  # (B, out_channels·p², H/p, W/p)
        return F.pixel_shuffle(out, p) if p > 1 else out  # (B, out_channels, H, W)
