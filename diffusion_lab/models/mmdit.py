"""DiT and MMDiT: the transformers that replace the U-Net (Peebles & Xie 2023; Esser et al. 2024, SD3 §4).

Notation
--------
======================  =========  ==================================================================================
code                    symbol     meaning
======================  =========  ==================================================================================
``x``                   x_t        noisy latent (B, C, H, W)
``timestep``            t          flow time in [0, 1] (0 = data, 1 = noise), one per sample (B,)
``p``                   p          patch size: each p×p patch of the latent becomes one token
``N``                   N          image tokens, (H/p)·(W/p)
``M``                   M          text tokens (≤ ``max_text_tokens``)
``D``                   D          hidden size (SD3: 64·depth)
``c``                   c          conditioning vector (B, D): embed(t) + embed(pooled text)
``shift, scale, gate``  β, γ, α    adaLN-Zero modulation, each (B, D), computed from c per block and per stream
======================  =========  ==================================================================================

A DiT block (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers", §3.2, adaLN-Zero):

    h = x + α₁ ⊙ Attn(LN(x) ⊙ (1 + γ₁) + β₁)
    out = h + α₂ ⊙ MLP(LN(h) ⊙ (1 + γ₂) + β₂)        with (β₁, γ₁, α₁, β₂, γ₂, α₂) = Linear(SiLU(c))

The modulation layer starts at zero, so every block starts as the identity ("-Zero"): a deep stack trains stably.

An MMDiT block (SD3 §4, Fig. 2) keeps two streams, image and text tokens, each with its *own* modulation,
LayerNorms, q/k/v, output projection and MLP, joined in one attention over [image; text] (length N + M, text padding
masked out of the keys). SD3's family (§5.3) has D = 64·depth and depth heads of size 64 (:meth:`MMDiTConfig.from_depth`;
SD3-medium: depth 24, 2 B parameters, :func:`sd3_medium_config`); diffusers' ``SD3Transformer2DModel`` names our
``depth`` ``num_layers``, ``hidden_size`` ``num_attention_heads · attention_head_dim`` (``SD3_MEDIUM_DIFFUSERS`` maps
them all, tested), ``max_text_tokens`` is 77 CLIP + 256 T5 tokens. Kept simpler than SD3: every block updates both
streams (SD3's last is ``context_pre_only``), positions are one sin-cos table, no q/k normalisation (SD3.5). The model
takes t ∈ [0, 1] and embeds 1000·t, the value diffusers' SD3 transformer receives.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_lab.models.unet import timestep_embedding
from diffusion_lab.utils.checkpoint import PretrainedModel
from diffusion_lab.utils.errors import check_int, check_number, check_tensor

__all__ = [
    "SD3_MEDIUM_DIFFUSERS",
    "sd3_medium_config",
    "MMDiTConfig",
    "MMDiT",
    "DiTBlock",
    "JointTransformerBlock",
    "pad_to_patch",
    "patchify",
    "unpatchify",
    "sincos_pos_embed_2d",
]


@dataclass
class MMDiTConfig:
    """Everything that defines the transformer (stored as JSON next to its weights)."""

    in_channels: int = 4
    out_channels: int = 4
    sample_size: int = 8  # latent height = width the positional table is built for (larger inputs are refused)
    patch_size: int = 2
    depth: int = 2  # number of blocks
    hidden_size: int = 128  # D; SD3: 64·depth (see from_depth)
    num_heads: int = 2  # SD3: depth
    mlp_ratio: float = 4.0
    joint_attention_dim: int | None = 64  # width of the text tokens; None: a plain DiT (no text stream)
    pooled_projection_dim: int | None = 64  # width of the pooled text vector added to c; None: none
    max_text_tokens: int = 8  # longest text sequence accepted
    extra: dict = field(default_factory=dict)  # free-form notes; not used by the network

    def __post_init__(self):
        for name in ("in_channels", "out_channels", "sample_size", "patch_size", "depth", "hidden_size", "num_heads"):
            value = getattr(self, name)
            setattr(self, name, check_int(name, value, minimum=None))  # np.int64 / torch scalars → int
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.max_text_tokens = check_int("max_text_tokens", self.max_text_tokens)
        for name in ("joint_attention_dim", "pooled_projection_dim"):  # None (or 0): no text stream / no pooled text
            if getattr(self, name) is not None:
                setattr(self, name, check_int(f"{name} (None for none)", getattr(self, name), minimum=0))
        self.mlp_ratio = check_number("mlp_ratio", self.mlp_ratio, minimum=0.0)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        if self.sample_size % self.patch_size:
            raise ValueError(
                f"sample_size {self.sample_size} must be divisible by patch_size {self.patch_size} "
                "(pad the latents, e.g. 7×7 → 8×8, or use patch_size=1)"
            )

    @classmethod
    def from_depth(cls, depth: int, **kw) -> MMDiTConfig:
        """SD3's family: hidden size 64·depth, depth heads of size 64 (SD3-medium: depth 24)."""
        return cls(depth=depth, hidden_size=64 * depth, num_heads=depth, **kw)

    @property
    def num_patches(self) -> int:
        return (self.sample_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


# SD3-medium's transformer in diffusers' names (stabilityai/stable-diffusion-3-medium-diffusers, transformer/config.json)
SD3_MEDIUM_DIFFUSERS = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
    joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=192,
)  # fmt: skip


def sd3_medium_config() -> MMDiTConfig:
    """Our config with SD3-medium's shape (build it on the meta device: 2 B parameters in float32 are 8 GB)."""
    d = SD3_MEDIUM_DIFFUSERS
    return MMDiTConfig.from_depth(
        d["num_layers"], sample_size=d["sample_size"], patch_size=d["patch_size"], in_channels=d["in_channels"],
        out_channels=d["out_channels"], joint_attention_dim=d["joint_attention_dim"],
        pooled_projection_dim=d["pooled_projection_dim"], max_text_tokens=77 + 256,
        extra={"counterpart": "SD3-medium (stabilityai/stable-diffusion-3-medium-diffusers)"},
    )  # fmt: skip


def pad_to_patch(x: torch.Tensor, p: int) -> torch.Tensor:
    """Zero-pad (B, C, H, W) at the bottom and right to the next multiples of p: (B, C, ⌈H/p⌉·p, ⌈W/p⌉·p).

    Our MNIST latents are 7×7; with 2×2 patches they become 8×8 = 16 tokens. Crop the model's output back with
    ``out[..., :H, :W]`` (the pipeline and the flow recipe do both)."""
    H, W = x.shape[-2:]
    return F.pad(x, (0, -W % p, 0, -H % p))


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) → (B, N, p·p·C) tokens, row by row; N = (H/p)·(W/p)."""
    B, C, H, W = x.shape
    if H % p or W % p:
        raise ValueError(f"latent size {H}x{W} is not divisible by the patch size {p}: pad or crop the latents")
    x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)  # (B, H/p, W/p, p, p, C)
    return x.reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(tokens: torch.Tensor, p: int, C: int, H: int, W: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: (B, N, p·p·C) → (B, C, H, W)."""
    B = tokens.shape[0]
    x = tokens.reshape(B, H // p, W // p, p, p, C).permute(0, 5, 1, 3, 2, 4)  # (B, C, H/p, p, W/p, p)
    return x.reshape(B, C, H, W)


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions (DiT, SD3): (grid·grid, dim); half the channels encode the row, half the
    column, each with the 1-D Transformer embedding [sin(pos·ω_i), cos(pos·ω_i)], ω_i = 10000^(−i/(dim/4))."""
    if dim % 4:
        raise ValueError(f"the hidden size must be divisible by 4 for 2-D sin-cos positions, got {dim}")
    omega = 1.0 / 10_000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (dim/4,)
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")  # (grid, grid) each

    def one_d(p: torch.Tensor) -> torch.Tensor:
        angles = p.reshape(-1, 1) * omega[None]  # (grid², dim/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (grid², dim/2)

    return torch.cat([one_d(cols), one_d(rows)], dim=1).float()  # (grid², dim)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x ⊙ (1 + γ) + β with per-sample (B, D) parameters broadcast over the tokens of x (B, L, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


class _Stream(nn.Module):
    """One stream's weights in a block: adaLN-Zero modulation, two LayerNorms, q/k/v, output projection, MLP."""

    def __init__(self, D: int, mlp_ratio: float):
        super().__init__()
        self.adaLN = nn.Linear(D, 6 * D)  # c → (β₁, γ₁, α₁, β₂, γ₂, α₂)
        nn.init.zeros_(self.adaLN.weight)  # adaLN-Zero: α = 0, so the block starts as the identity
        nn.init.zeros_(self.adaLN.bias)
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(D, 3 * D)
        self.proj = nn.Linear(D, D)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        hidden = int(D * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(D, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, D))


def _heads(t: torch.Tensor, h: int) -> torch.Tensor:
    B, L, D = t.shape
    return t.reshape(B, L, h, D // h).transpose(1, 2)  # (B, h, L, D/h)


class JointTransformerBlock(nn.Module):
    """The MMDiT block: two streams with their own weights, one attention over [image; text] (SD3 Fig. 2)."""

    def __init__(self, D: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads = num_heads
        self.image = _Stream(D, mlp_ratio)
        self.text = _Stream(D, mlp_ratio)

    def forward(
        self, x: torch.Tensor, ctx: torch.Tensor, c: torch.Tensor, text_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, N, D) image tokens, ctx (B, M, D) text tokens, c (B, D); text_mask (B, M) True = real token."""
        N = x.shape[1]
        mod_x = self.image.adaLN(F.silu(c)).chunk(6, dim=1)  # 6 × (B, D)
        mod_c = self.text.adaLN(F.silu(c)).chunk(6, dim=1)
        qkv_x = self.image.qkv(modulate(self.image.norm1(x), mod_x[0], mod_x[1]))  # (B, N, 3D)
        qkv_c = self.text.qkv(modulate(self.text.norm1(ctx), mod_c[0], mod_c[1]))  # (B, M, 3D)
        q, k, v = (
            _heads(torch.cat([a, b], dim=1), self.heads)
            for a, b in zip(qkv_x.chunk(3, -1), qkv_c.chunk(3, -1), strict=True)
        )
        # q, k, v: (B, h, N + M, D/h) — one sequence: image tokens first, then text (as diffusers' SD3)
        mask = None
        if text_mask is not None:
            keep = torch.cat([text_mask.new_ones(x.shape[0], N), text_mask], dim=1)  # (B, N + M)
            mask = keep[:, None, None, :].bool()  # (B, 1, 1, N + M): every query sees the image and real text
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, N + M, D/h)
        out = out.transpose(1, 2).reshape(x.shape[0], -1, x.shape[2])  # (B, N + M, D)
        out_x, out_c = out[:, :N], out[:, N:]
        x = x + mod_x[2][:, None] * self.image.proj(out_x)  # gate α₁
        x = x + mod_x[5][:, None] * self.image.mlp(modulate(self.image.norm2(x), mod_x[3], mod_x[4]))
        ctx = ctx + mod_c[2][:, None] * self.text.proj(out_c)
        ctx = ctx + mod_c[5][:, None] * self.text.mlp(modulate(self.text.norm2(ctx), mod_c[3], mod_c[4]))
        return x, ctx


class DiTBlock(nn.Module):
    """The DiT block: one stream (image tokens), self-attention, adaLN-Zero from c (Peebles & Xie 2023, §3.2)."""

    def __init__(self, D: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads = num_heads
        self.image = _Stream(D, mlp_ratio)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        m = self.image.adaLN(F.silu(c)).chunk(6, dim=1)  # 6 × (B, D)
        q, k, v = (
            _heads(t, self.heads) for t in self.image.qkv(modulate(self.image.norm1(x), m[0], m[1])).chunk(3, -1)
        )
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(x.shape)  # (B, N, D)
        x = x + m[2][:, None] * self.image.proj(out)
        return x + m[5][:, None] * self.image.mlp(modulate(self.image.norm2(x), m[3], m[4]))


class MMDiT(PretrainedModel):
    """Patchify → + positions → blocks (MMDiT blocks with a text stream, DiT blocks without) → adaLN → unpatchify.

    forward(x (B, C, H, W), timestep (B,) in [0, 1], encoder_hidden_states (B, M, joint_attention_dim),
    pooled_projections (B, pooled_projection_dim), encoder_attention_mask (B, M)) → velocity (B, C, H, W).
    """

    config_class = MMDiTConfig

    def __init__(self, config: MMDiTConfig | None = None):
        super().__init__()
        cfg = self.config = config or MMDiTConfig()
        D, p = cfg.hidden_size, cfg.patch_size
        self.patch_embed = nn.Linear(p * p * cfg.in_channels, D)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(D, cfg.sample_size // p), persistent=False)
        self.time_embed = nn.Sequential(nn.Linear(256, D), nn.SiLU(), nn.Linear(D, D))
        self.pooled_embed = (
            nn.Sequential(nn.Linear(cfg.pooled_projection_dim, D), nn.SiLU(), nn.Linear(D, D))
            if cfg.pooled_projection_dim
            else None
        )
        self.context_embed = nn.Linear(cfg.joint_attention_dim, D) if cfg.joint_attention_dim else None
        block = JointTransformerBlock if cfg.joint_attention_dim else DiTBlock
        self.blocks = nn.ModuleList(block(D, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.adaLN_out = nn.Linear(D, 2 * D)  # c → (β, γ) of the final layer
        self.proj_out = nn.Linear(D, p * p * cfg.out_channels)
        for layer in (self.adaLN_out, self.proj_out):  # zero output at the start, as DiT
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _check(self, x, timestep, text, pooled, mask) -> None:
        cfg = self.config
        check_tensor("x", x, f"of latents (B, {cfg.in_channels}, H, W)")
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected latents (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        H, W = x.shape[2:]
        if H % cfg.patch_size or W % cfg.patch_size:
            raise ValueError(
                f"latent size {H}x{W} is not divisible by the patch size {cfg.patch_size}: pad the latents "
                f"(e.g. F.pad(z, (0, 1, 0, 1)) for 7x7 → 8x8) or use a model with patch_size=1"
            )
        if H > cfg.sample_size or W > cfg.sample_size:
            raise ValueError(f"latent size {H}x{W} exceeds the model's sample_size {cfg.sample_size}")
        if not isinstance(timestep, torch.Tensor):  # a number: NumPy / torch scalars accepted, bools and NaN refused
            timestep = check_number("timestep", timestep)
        elif timestep.dtype == torch.bool:
            raise TypeError(f"timestep must be a number or a tensor of flow times in [0, 1], got {timestep!r}")
        t = torch.as_tensor(timestep)
        if t.numel() not in (1, x.shape[0]) or not bool(((t >= 0) & (t <= 1)).all()):
            raise ValueError(
                f"timestep must be the flow time t in [0, 1] (one, or one per sample), got {t.tolist()}; "
                "divide a scheduler's timesteps (0..1000) by num_train_timesteps"
            )
        for name, value in (
            ("encoder_hidden_states", text),
            ("pooled_projections", pooled),
            ("encoder_attention_mask", mask),
        ):
            if value is not None:
                check_tensor(name, value, "(or None)")
        if cfg.joint_attention_dim:
            if text is None or text.ndim != 3 or text.shape[2] != cfg.joint_attention_dim:
                got = None if text is None else tuple(text.shape)
                raise ValueError(f"expected encoder_hidden_states (B, M, {cfg.joint_attention_dim}), got {got}")
            if text.shape[1] > cfg.max_text_tokens:
                raise ValueError(
                    f"{text.shape[1]} text tokens is more than the model's maximum {cfg.max_text_tokens}: "
                    "tokenize with max_length=max_text_tokens (longer prompts are truncated)"
                )
            if mask is not None and mask.shape != text.shape[:2]:
                raise ValueError(f"encoder_attention_mask must be (B, M) = {tuple(text.shape[:2])}")
        if cfg.pooled_projection_dim and (pooled is None or pooled.shape[-1] != cfg.pooled_projection_dim):
            raise ValueError(f"expected pooled_projections (B, {cfg.pooled_projection_dim})")

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor | None = None,
        pooled_projections: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self._check(x, timestep, encoder_hidden_states, pooled_projections, encoder_attention_mask)
        cfg, (B, _, H, W) = self.config, x.shape
        p, g = cfg.patch_size, cfg.sample_size // cfg.patch_size
        tokens = self.patch_embed(patchify(x, p))  # (B, N, D)
        pos = self.pos_embed.reshape(g, g, -1)[: H // p, : W // p].reshape(-1, tokens.shape[2])  # (N, D): top-left crop
        tokens = tokens + pos[None]
        t = torch.as_tensor(timestep, dtype=x.dtype, device=x.device).reshape(-1).expand(B)  # (B,)
        c = self.time_embed(timestep_embedding(1000 * t, 256).to(x.dtype))  # (B, D): embed(1000·t), as SD3
        if self.pooled_embed is not None:
            c = c + self.pooled_embed(pooled_projections)  # + embed(pooled text) (SD3's time_text_embed)
        if self.context_embed is not None:
            ctx = self.context_embed(encoder_hidden_states)  # (B, M, D)
            mask = None if encoder_attention_mask is None else encoder_attention_mask.bool()
            for block in self.blocks:
                tokens, ctx = block(tokens, ctx, c, mask)
        else:
            for block in self.blocks:
                tokens = block(tokens, c)
        shift, scale = self.adaLN_out(F.silu(c)).chunk(2, dim=1)  # (B, D) each
        out = self.proj_out(modulate(self.norm_out(tokens), shift, scale))  # (B, N, p·p·C_out)
        return unpatchify(out, p, cfg.out_channels, H, W)  # (B, C_out, H, W)
