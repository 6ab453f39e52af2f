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
``context``        c             text tokens to attend to, ``encoder_hidden_states`` (B, L, D) (Stable Diffusion)
``pooled``         c̄             one vector per prompt, ``pooled_text`` (B, D), added to e(t) as SDXL does
``channels[i]``    C_i           feature channels at level i (resolution H / 2^i)
=================  ============  =====================================================================

Architecture (Ho et al. 2020, Appendix B, scaled down; conditioning as in Dhariwal & Nichol 2021, §3):
``conv_in`` → for each level: ResBlocks (+ self-attention where asked) → Downsample; middle: ResBlock, attention,
ResBlock; then the mirror image, concatenating the skip of each level. Every ResBlock receives the time (and class)
embedding as a per-channel scale and shift ("adaptive group norm"). The output convolution starts at zero, so the
untrained network predicts 0.

Text conditioning (Rombach et al. 2022, §3.3, "Latent Diffusion"): with ``cross_attention_dim`` set, each attention
level holds a :class:`SpatialTransformer` instead of plain self-attention: the feature map becomes a sequence of H·W
tokens that go through self-attention, cross-attention to the text tokens (queries from the image, keys and values
from the text: softmax(Q Kᵀ/√d) V, Eq. 3 there) and a feed-forward layer, each with a residual connection, as in
Stable Diffusion's ``BasicTransformerBlock``. :class:`CrossAttention` keeps its attention probabilities when asked
(:func:`record_attention`), so per-word heat maps over the image can be drawn (as DAAM does for SD).

Extra residuals (ControlNet, Zhang et al. 2023, Eq. 2; diffusers' ``down_block_additional_residuals`` and
``mid_block_additional_residual``): ``forward`` can add one tensor to each skip the down path stores (the output of
each level, before its downsampling: :meth:`UNet.residual_shapes` lists them) before the up path reads it, and one
to the middle block's output. Without them the output is unchanged, bit for bit (see :mod:`diffusion_lab.models.controlnet`).

Input sizes: any H, W divisible by patch_size·2^(levels − 1): 28×28 works directly with 3 levels (28 → 14 → 7), or
with ``patch_size=2`` and 2 levels (28×28×1 → 14×14×4 → 7×7). Folding 2×2 pixels into channels first ("pixel
unshuffle", as simple diffusion and DiT's patches do) is lossless and makes every convolution 4× cheaper.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_lab.utils.checkpoint import PretrainedModel
from diffusion_lab.utils.errors import check_int, check_number, check_tensor

__all__ = ["CrossAttention", "SpatialTransformer", "UNet", "UNetConfig", "record_attention", "timestep_embedding"]


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
    cross_attention_dim: int | None = None  # D of the text tokens; set: attention levels become SpatialTransformers
    pooled_dim: int | None = None  # D of a pooled text vector added to the time embedding (SDXL's text_embeds)
    extra: dict = field(default_factory=dict)  # free-form notes (e.g. the recipe); not used by the network

    def __post_init__(self):
        for name in ("channels", "attention_levels"):
            if isinstance(getattr(self, name), str) or not isinstance(getattr(self, name), Sequence):
                raise TypeError(f"{name} must be a tuple with one entry per level, got {getattr(self, name)!r}")
        self.channels = tuple(check_int(f"channels[{i}]", c) for i, c in enumerate(self.channels))
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        for name in ("in_channels", "out_channels", "time_embed_dim", "groups", "heads", "patch_size"):
            setattr(self, name, check_int(name, getattr(self, name), minimum=None))  # np.int64 / torch scalars → int
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.blocks_per_level = check_int("blocks_per_level", self.blocks_per_level, minimum=0)
        self.dropout = check_number("dropout", self.dropout, minimum=0.0, maximum=1.0)
        if len(self.channels) < 1 or len(self.attention_levels) != len(self.channels):
            raise ValueError(
                f"attention_levels needs one entry per level ({len(self.channels)}), got {len(self.attention_levels)}"
            )
        if any(c % self.groups for c in self.channels):
            raise ValueError(f"every entry of channels {self.channels} must be divisible by groups={self.groups}")
        for name in ("num_classes", "cross_attention_dim", "pooled_dim"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, check_int(name, value, minimum=None))
                if getattr(self, name) < 1:
                    raise ValueError(f"{name} must be None or >= 1, got {value}")

    @property
    def downsampling(self) -> int:
        """Total downsampling factor patch_size·2^(levels − 1): H and W must be multiples of it."""
        return self.patch_size * 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict:
        return asdict(self)


def timesteps_for_batch(t: object, b: int, device: torch.device) -> torch.Tensor:
    """``t`` (a number, a NumPy / torch scalar, or a (B,) tensor) as a (B,) tensor on ``device``. ``TypeError`` for
    a bool, None or a string; ``ValueError`` for a NaN / inf number or a tensor that is neither one nor B values
    (a tensor's values are not scanned: that would cost a device sync each step)."""
    if isinstance(t, torch.Tensor):
        if t.dtype == torch.bool:
            raise TypeError(f"t must be a timestep (a number or a tensor of numbers), got a bool tensor {t!r}")
    else:
        number = check_number("t (the timestep)", t)
        t = int(t) if isinstance(t, numbers.Integral) else number  # ints stay ints: the same tensor as before
    t = torch.as_tensor(t, device=device)
    if t.numel() not in (1, b):
        raise ValueError(f"t must be one timestep or one per sample ({b}), got shape {tuple(t.shape)}")
    return t.reshape(-1).expand(b)  # (B,)


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


class CrossAttention(nn.Module):
    """Multi-head attention of N query tokens x (B, N, C) to M context tokens c (B, M, D), written out.

    Q = x W_q, K = c W_k, V = c W_v (heads of size d = C / heads);  A = softmax(Q Kᵀ / √d) (B, heads, N, M);
    out = concat_heads(A V) W_o.  With ``context=None`` the context is x itself: self-attention.
    ``mask`` (B, M), 1 for real tokens and 0 for padding, removes padded context tokens from the softmax.
    When ``self.record`` is True, the last A is kept in ``self.attention_probs`` (see :func:`record_attention`).
    """

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 4):
        super().__init__()
        if query_dim % heads:
            raise ValueError(f"query_dim ({query_dim}) must be divisible by heads ({heads})")
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_k = nn.Linear(context_dim, query_dim, bias=False)
        self.to_v = nn.Linear(context_dim, query_dim, bias=False)
        self.to_out = nn.Linear(query_dim, query_dim)
        self.record = False
        self.attention_probs: torch.Tensor | None = None

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        context = x if context is None else context
        b, n, c = x.shape
        m, nh = context.shape[1], self.heads
        q = self.to_q(x).reshape(b, n, nh, c // nh).transpose(1, 2)  # (B, nh, N, d)
        k = self.to_k(context).reshape(b, m, nh, c // nh).transpose(1, 2)  # (B, nh, M, d)
        v = self.to_v(context).reshape(b, m, nh, c // nh).transpose(1, 2)  # (B, nh, M, d)
        scores = q @ k.transpose(-1, -2) / math.sqrt(c // nh)  # (B, nh, N, M)
        if mask is not None:
            scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
        probs = scores.softmax(dim=-1)  # A: each query's weights over the context sum to 1
        if self.record:
            self.attention_probs = probs.detach()
        out = (probs @ v).transpose(1, 2).reshape(b, n, c)  # (B, N, C)
        return self.to_out(out)


class FeedForward(nn.Module):
    """Linear → GELU-gated linear unit → Linear, width ×4 (SD's ``FeedForward`` with GEGLU, Shazeer 2020)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.proj_in = nn.Linear(dim, 2 * mult * dim)
        self.proj_out = nn.Linear(mult * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj_in(x).chunk(2, dim=-1)  # (B, N, 4C) each
        return self.proj_out(h * F.gelu(gate))


class SpatialTransformer(nn.Module):
    """Stable Diffusion's ``Transformer2DModel`` with one ``BasicTransformerBlock``, for a feature map (B, C, H, W).

    GN → 1×1 conv → tokens (B, HW, C); then x += SelfAttn(LN(x)); x += CrossAttn(LN(x), text); x += FF(LN(x));
    back to (B, C, H, W) → 1×1 conv (zero-initialised: the block starts as the identity) + the input.
    """

    def __init__(self, channels: int, context_dim: int, heads: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)  # eps as in diffusers' Transformer2DModel
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.norm1 = nn.LayerNorm(channels)
        self.attn1 = CrossAttention(channels, None, heads)  # self-attention over the image tokens
        self.norm2 = nn.LayerNorm(channels)
        self.attn2 = CrossAttention(channels, context_dim, heads)  # image tokens attend to text tokens
        self.norm3 = nn.LayerNorm(channels)
        self.ff = FeedForward(channels)
        self.proj_out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, HW, C)
        tokens = tokens + self.attn1(self.norm1(tokens))
        tokens = tokens + self.attn2(self.norm2(tokens), context, mask)  # context: (B, L, D)
        tokens = tokens + self.ff(self.norm3(tokens))
        out = tokens.transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)
        return x + self.proj_out(out)


@contextmanager
def record_attention(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Keep every cross-attention map computed inside the ``with`` block, for word heat maps (as DAAM does).

    Yields a dict filled as the model runs: module name → the last attention probabilities (B, heads, H·W, L) of
    that text cross-attention (self-attention maps are not kept). Recording stops when the block ends.

    Each forward pass overwrites the entry, so after a whole sampling loop the dict holds the *last* step's maps; to
    aggregate over steps (as DAAM does), read the dict in the pipeline's ``callback`` after every step.
    """
    maps: dict[str, torch.Tensor] = {}
    modules = {name: m for name, m in model.named_modules() if isinstance(m, CrossAttention) and name.endswith("attn2")}
    hooks = []
    for name, module in modules.items():
        module.record = True
        hooks.append(
            module.register_forward_hook(lambda mod, args, out, name=name: maps.__setitem__(name, mod.attention_probs))
        )
    try:
        yield maps
    finally:
        for module in modules.values():
            module.record, module.attention_probs = False, None
        for hook in hooks:
            hook.remove()


class Level(nn.Module):
    """The blocks at one resolution: ResBlocks, each followed by attention if ``attention``: plain self-attention,
    or a :class:`SpatialTransformer` (self- and cross-attention to the text) when the U-Net has a text context."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int, attention: bool, cfg: UNetConfig):
        super().__init__()
        self.res = nn.ModuleList(
            ResBlock(c_in if i == 0 else c_out, c_out, cfg.time_embed_dim, cfg.groups, cfg.dropout)
            for i in range(n_blocks)
        )
        self.attn = nn.ModuleList(_attention(c_out, cfg) if attention else nn.Identity() for _ in range(n_blocks))

    def forward(
        self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        for res, attn in zip(self.res, self.attn, strict=True):
            x = res(x, emb)
            x = attn(x, context, mask) if isinstance(attn, SpatialTransformer) else attn(x)
        return x


def _attention(channels: int, cfg: UNetConfig) -> nn.Module:
    if cfg.cross_attention_dim:
        return SpatialTransformer(channels, cfg.cross_attention_dim, cfg.heads, cfg.groups)
    return SelfAttention(channels, cfg.heads, cfg.groups)


class UNet(PretrainedModel):
    """ε-, v- or x0-prediction network: ``model(x_t, t, class_labels=None) -> (B, out_channels, H, W)``.

    With ``cross_attention_dim`` set: ``model(x_t, t, encoder_hidden_states=c, encoder_attention_mask=m,
    pooled_text=c̄)``, the argument names of diffusers' ``UNet2DConditionModel``; a ControlNet's outputs enter as
    ``down_block_additional_residuals`` (one per skip) and ``mid_block_additional_residual``, as there.
    """

    config_class = UNetConfig

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        cfg = self.config = config or UNetConfig()
        ch = cfg.channels
        E = cfg.time_embed_dim
        self.time_mlp = nn.Sequential(nn.Linear(ch[0], E), nn.SiLU(), nn.Linear(E, E))
        # one extra row: the "null" class used for unconditional predictions (classifier-free guidance)
        self.class_embed = nn.Embedding(cfg.num_classes + 1, E) if cfg.num_classes else None
        # SDXL adds the pooled text embedding to the time embedding ("add_embedding"); zero-initialised
        self.pooled_embed = nn.Linear(cfg.pooled_dim, E) if cfg.pooled_dim else None
        if self.pooled_embed is not None:
            nn.init.zeros_(self.pooled_embed.weight)
            nn.init.zeros_(self.pooled_embed.bias)
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
        self.mid_attn = _attention(ch[-1], cfg)
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

    def _check_inputs(self, x: torch.Tensor, class_labels: torch.Tensor | None) -> None:
        cfg = self.config
        check_tensor("x", x, f"of shape (B, {cfg.in_channels}, H, W)")
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
            check_tensor("class_labels", class_labels, f"of shape ({x.shape[0]},) holding digits")
            if class_labels.shape != (x.shape[0],):
                raise ValueError(f"class_labels must have shape ({x.shape[0]},), got {tuple(class_labels.shape)}")
            if class_labels.min() < 0 or class_labels.max() > cfg.num_classes:
                raise ValueError(
                    f"class_labels must be in 0..{cfg.num_classes - 1} (or {cfg.num_classes} for 'no label'), "
                    f"got values from {int(class_labels.min())} to {int(class_labels.max())}"
                )

    def residual_shapes(self, height: int, width: int) -> tuple[list[tuple[int, int, int]], tuple[int, int, int]]:
        """Shapes (C, h, w) of the skips the down path stores for an input of height × width (one per level: what
        ``down_block_additional_residuals`` must match), and of the middle block's output."""
        cfg, p = self.config, self.config.patch_size
        skips = [(c, height // p // 2**i, width // p // 2**i) for i, c in enumerate(cfg.channels)]
        return skips, skips[-1]

    def _check_residuals(self, x: torch.Tensor, down: Sequence[torch.Tensor] | None, mid: torch.Tensor | None) -> None:
        b = x.shape[0]
        skips, mid_shape = self.residual_shapes(x.shape[2], x.shape[3])
        want = [(b, *s) for s in skips]
        if down is not None:
            if isinstance(down, torch.Tensor) or not isinstance(down, Sequence):
                raise TypeError(
                    f"down_block_additional_residuals must be a list or tuple of {len(want)} tensor(s) {want} (one per "
                    f"skip), got {type(down).__name__}"
                )
            got = [tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__ for r in down]
            if got != want:
                raise ValueError(
                    f"down_block_additional_residuals must hold {len(want)} tensor(s) of shapes {want} (one per skip "
                    f"of this U-Net, for x of shape {tuple(x.shape)}), got {got}"
                )
        if mid is not None and (not isinstance(mid, torch.Tensor) or tuple(mid.shape) != (b, *mid_shape)):
            got = tuple(mid.shape) if isinstance(mid, torch.Tensor) else type(mid).__name__
            raise ValueError(f"mid_block_additional_residual must have shape {(b, *mid_shape)}, got {got}")

    def _check_context(
        self, b: int, context: torch.Tensor | None, mask: torch.Tensor | None, pooled: torch.Tensor | None
    ) -> None:
        cfg = self.config
        if cfg.cross_attention_dim is None:
            if context is not None or mask is not None:
                raise ValueError("this U-Net has no text cross-attention (cross_attention_dim=None): pass no context")
        else:
            if context is None:
                raise ValueError(
                    "this U-Net attends to text: pass encoder_hidden_states (B, L, "
                    f"{cfg.cross_attention_dim}) (the encoding of the empty prompt for unconditional predictions)"
                )
            check_tensor("encoder_hidden_states", context, f"of shape ({b}, L, {cfg.cross_attention_dim})")
            if mask is not None:
                check_tensor("encoder_attention_mask", mask, "of shape (B, L) (or None)")
            if context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.cross_attention_dim:
                raise ValueError(
                    f"encoder_hidden_states must have shape ({b}, L, {cfg.cross_attention_dim}), "
                    f"got {tuple(context.shape)}"
                )
            if mask is not None and mask.shape != context.shape[:2]:
                raise ValueError(
                    f"encoder_attention_mask must have shape {tuple(context.shape[:2])}, got {tuple(mask.shape)}"
                )
        if cfg.pooled_dim is None:
            if pooled is not None:
                raise ValueError("this U-Net takes no pooled text (pooled_dim=None): do not pass pooled_text")
        elif pooled is not None:
            check_tensor("pooled_text", pooled, f"of shape ({b}, {cfg.pooled_dim})")
        if cfg.pooled_dim is not None and (pooled is None or pooled.shape != (b, cfg.pooled_dim)):
            got = None if pooled is None else tuple(pooled.shape)
            raise ValueError(f"pooled_text must have shape ({b}, {cfg.pooled_dim}), got {got}")

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | int | float,
        class_labels: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        pooled_text: torch.Tensor | None = None,
        down_block_additional_residuals: Sequence[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self._check_inputs(x, class_labels)
        self._check_context(x.shape[0], encoder_hidden_states, encoder_attention_mask, pooled_text)
        self._check_residuals(x, down_block_additional_residuals, mid_block_additional_residual)
        context, mask = encoder_hidden_states, encoder_attention_mask
        b = x.shape[0]
        t = timesteps_for_batch(t, b, x.device)  # (B,)
        emb = self.time_mlp(timestep_embedding(t, self.config.channels[0]).to(x.dtype))  # (B, E)
        if self.class_embed is not None:
            if class_labels is None:  # unconditional: the null class
                class_labels = torch.full((b,), self.config.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.class_embed(class_labels.long())
        if self.pooled_embed is not None:
            emb = emb + self.pooled_embed(pooled_text.to(x.dtype))  # (B, E)

        p = self.config.patch_size
        h = self.conv_in(F.pixel_unshuffle(x, p) if p > 1 else x)  # (B, C_0, H/p, W/p)
        skips = []
        for level, down in zip(self.down, self.downsample, strict=True):
            h = level(h, emb, context, mask)
            skips.append(h)  # (B, C_i, H/2^i, W/2^i)
            h = down(h)
        if down_block_additional_residuals is not None:  # ControlNet (Eq. 2): its zero-conv outputs join the skips
            skips = [s + r for s, r in zip(skips, down_block_additional_residuals, strict=True)]
        h = self.mid1(h, emb)
        h = self.mid_attn(h, context, mask) if isinstance(self.mid_attn, SpatialTransformer) else self.mid_attn(h)
        h = self.mid2(h, emb)
        if mid_block_additional_residual is not None:
            h = h + mid_block_additional_residual  # (B, C_last, h, w)
        for level, up in zip(self.up, self.upsample, strict=True):
            h = level(torch.cat([h, skips.pop()], dim=1), emb, context, mask)
            h = up(h)
        out = self.conv_out(F.silu(self.norm_out(h)))  # (B, out_channels·p², H/p, W/p)
        return F.pixel_shuffle(out, p) if p > 1 else out  # (B, out_channels, H, W)
