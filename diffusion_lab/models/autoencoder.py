"""The latent autoencoder: a small KL-regularised VAE that maps MNIST digits to 7×7×4 latents and back.

Notation
--------
=======================  ============  ===============================================================================
code                     symbol        meaning
=======================  ============  ===============================================================================
``x``                    x             image (B, C, H, W) in [−1, 1]
``z``                    z             latent (B, L, H/f, W/f); L = ``latent_channels``, f = ``downsampling``
``mean``, ``logvar``     μ, log σ²     the encoder's posterior q(z | x) = N(μ, diag σ²), each (B, L, H/f, W/f)
``sample``               x̂             the decoder's reconstruction D(z), (B, C, H, W), not squashed
``kl_weight``            β             weight of the KL term in the loss
``scaling_factor``       s             the diffusion model sees s·z, chosen so that s·z has unit standard deviation
``D``                    D             pixels per image, C·H·W (784 for MNIST)
=======================  ============  ===============================================================================

Why a latent space (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models"): the
diffusion model then works on a smaller array that keeps what the image shows and leaves the pixel-level detail to
the decoder. With two stride-2 levels (f = 4) an MNIST digit of 28×28×1 = 784 pixels becomes a 7×7×4 latent of
196 numbers: 4× fewer numbers, 16× fewer positions for the U-Net's convolutions. Stable Diffusion does the same at
f = 8: 512×512×3 → 64×64×4, 48× fewer numbers. Four channels (as in SD 1–2) keep each latent position
expressive enough to hold a 4×4 patch of strokes.

The model mirrors diffusers' ``AutoencoderKL`` so a notebook reads like the real thing:
``model.encode(x).latent_dist.sample()`` gives z, ``model.decode(z).sample`` gives x̂, and the posterior is a
:class:`DiagonalGaussianDistribution`. Encoder and decoder are written block by block below (ResBlocks of
GroupNorm → SiLU → conv, stride-2 convolutions down, nearest-neighbour upsampling + conv up); as in diffusers,
``quant_conv`` (1×1) maps the encoder's features to (μ, log σ²) and ``post_quant_conv`` (1×1) starts the decoder.

Training objective (β-VAE form of the negative ELBO, Kingma & Welling 2014, Eq. 10; Higgins et al. 2017):
L = (1/D)·(‖x − x̂‖² + β·KL(q(z | x) ‖ N(0, I))) per image, averaged over the batch. Both terms are per-sample
sums divided by the same D, so β is the ratio of the two sums, exactly as ``kl_weight`` in the LDM/SD autoencoder
loss (1e-6 there, with an L1 + perceptual reconstruction term). Read as a likelihood, ‖x − x̂‖² + β·KL is 2σ_x²
times the negative ELBO with a Gaussian decoder N(x̂, σ_x² I) and σ_x² = β/2.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_lab.utils.checkpoint import PretrainedModel
from diffusion_lab.utils.errors import check_int, check_number, check_tensor
from diffusion_lab.utils.torch_utils import randn

__all__ = [
    "AutoencoderConfig",
    "AutoencoderKL",
    "AutoencoderKLOutput",
    "AutoencoderOutput",
    "DecoderOutput",
    "DiagonalGaussianDistribution",
]


@dataclass
class AutoencoderConfig:
    """Everything that defines the autoencoder (stored as JSON next to its weights).

    Every level halves the resolution once, so ``channels=(16, 32)`` gives 28×28 → 14×14 → 7×7 (f = 4).
    (diffusers counts differently: its last ``block_out_channels`` entry has no downsampling, so SD's four
    entries give f = 8.)
    """

    in_channels: int = 1
    latent_channels: int = 4
    channels: tuple[int, ...] = (16, 32)  # level i works at resolution H / 2^i, then halves it
    blocks_per_level: int = 1  # ResBlocks per level, in the encoder and in the decoder
    groups: int = 8  # GroupNorm groups
    patch_size: int = 1  # p: fold p×p pixels into channels before the first conv (lossless; f gains a factor p)
    squash_output: bool = False  # decode → tanh(logits) in (−1, 1), trained with the Bernoulli loss (see vae_loss)
    scaling_factor: float = 1.0  # s: fill in with estimate_scaling_factor() after training (SD 1.x: 0.18215)
    extra: dict = field(default_factory=dict)  # free-form notes (e.g. the recipe); not used by the network

    def __post_init__(self):
        if isinstance(self.channels, str) or not isinstance(self.channels, tuple | list):
            raise TypeError(f"channels must be a tuple with one width per level, e.g. (16, 32), got {self.channels!r}")
        self.channels = tuple(check_int(f"channels[{i}]", c) for i, c in enumerate(self.channels))
        for name in ("in_channels", "latent_channels", "blocks_per_level", "groups"):
            setattr(self, name, check_int(name, getattr(self, name)))  # np.int64 / torch scalars → int
        self.scaling_factor = check_number("scaling_factor", self.scaling_factor)
        if len(self.channels) < 1:
            raise ValueError("channels needs at least one level, e.g. (16, 32)")
        if any(c % self.groups for c in self.channels):
            raise ValueError(f"every entry of channels {self.channels} must be divisible by groups={self.groups}")
        self.patch_size = check_int("patch_size", self.patch_size, minimum=None)
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be a positive integer (1: no folding), got {self.patch_size!r}")
        if self.in_channels < 1 or self.latent_channels < 1 or self.blocks_per_level < 1:
            raise ValueError(
                f"in_channels, latent_channels and blocks_per_level must be >= 1, got {self.in_channels}, "
                f"{self.latent_channels}, {self.blocks_per_level}"
            )
        if not (math.isfinite(self.scaling_factor) and self.scaling_factor > 0):
            raise ValueError(f"scaling_factor must be a positive number, got {self.scaling_factor}")

    @property
    def downsampling(self) -> int:
        """Total downsampling factor f = p·2^levels: H and W must be multiples of it (4 for two levels, or p = 2 and
        one level)."""
        return self.patch_size * 2 ** len(self.channels)

    def to_dict(self) -> dict:
        return asdict(self)


class DiagonalGaussianDistribution:
    """q(z | x) = N(μ, diag σ²) from the encoder's output ``parameters`` (B, 2L, h, w) = [μ, log σ²] along channels.

    As in diffusers and Stability's sgm, log σ² is clamped to [−30, 20] so that σ neither underflows nor overflows.
    """

    def __init__(self, parameters: torch.Tensor):
        check_tensor("parameters", parameters, "(B, 2L, ...) with mean and log-variance stacked along dim 1")
        if parameters.ndim < 2 or parameters.shape[1] % 2:
            raise ValueError(
                f"parameters must be (B, 2L, ...) with mean and log-variance stacked along dim 1, "
                f"got shape {tuple(parameters.shape)}"
            )
        self.parameters = parameters
        mean, logvar = parameters.chunk(2, dim=1)  # (B, L, h, w) each
        self.mean = mean
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)  # σ
        self.var = torch.exp(self.logvar)  # σ²

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = μ + σ ⊙ ε, ε ~ N(0, I): the reparameterisation trick (Kingma & Welling 2014, §2.4).

        z is differentiable in μ and σ, so the encoder learns through the sample. ε is drawn from ``generator`` on
        its own device (a CPU generator gives the same z whether the model runs on CPU or GPU).
        """
        eps = randn(self.mean.shape, generator, self.mean.device, self.mean.dtype)  # (B, L, h, w)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The most likely latent, μ (what to use when no randomness is wanted)."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q(z | x) ‖ N(0, I)) per sample, summed over the latent: (B,).

        KL = ½ Σ_j (μ_j² + σ_j² − 1 − log σ_j²)  (Kingma & Welling 2014, Appendix B).
        """
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).flatten(1).sum(1)

    def __repr__(self) -> str:
        return f"DiagonalGaussianDistribution(mean: {tuple(self.mean.shape)})"


@dataclass
class AutoencoderKLOutput:
    """What ``encode`` returns (as in diffusers): the posterior q(z | x)."""

    latent_dist: DiagonalGaussianDistribution


@dataclass
class DecoderOutput:
    """What ``decode`` returns (as in diffusers): the decoded image x̂ (B, C, H, W)."""

    sample: torch.Tensor


@dataclass
class AutoencoderOutput:
    """What ``forward`` returns: the reconstruction x̂ (B, C, H, W) and the posterior it was decoded from."""

    sample: torch.Tensor
    latent_dist: DiagonalGaussianDistribution


class ResBlock(nn.Module):
    """h = conv₂(SiLU(GN(conv₁(SiLU(GN(x)))))) + skip(x): the U-Net's ResBlock without time conditioning."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class Encoder(nn.Module):
    """x (B, C, H, W) → [μ, log σ²] features (B, 2L, H/f, W/f), before ``quant_conv``."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch = cfg.channels
        self.patch_size = p = cfg.patch_size
        self.conv_in = nn.Conv2d(cfg.in_channels * p * p, ch[0], 3, padding=1)
        self.levels = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c_prev = ch[0]
        for c in ch:
            self.levels.append(
                nn.Sequential(*(ResBlock(c_prev if i == 0 else c, c, cfg.groups) for i in range(cfg.blocks_per_level)))
            )
            self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))  # H → H/2
            c_prev = c
        self.mid = ResBlock(ch[-1], ch[-1], cfg.groups)
        self.norm_out = nn.GroupNorm(cfg.groups, ch[-1])
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.patch_size > 1:
            x = F.pixel_unshuffle(x, self.patch_size)  # (B, C·p², H/p, W/p): each p×p patch → channels
        h = self.conv_in(x)  # (B, C_0, H/p, W/p)
        for level, down in zip(self.levels, self.downsample, strict=True):
            h = down(level(h))  # (B, C_i, H/(p·2^(i+1)), W/(p·2^(i+1)))
        h = self.mid(h)  # (B, C_last, H/f, W/f)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 2L, H/f, W/f)


class Decoder(nn.Module):
    """z (B, L, H/f, W/f) → x̂ (B, C, H, W), the encoder's mirror image, after ``post_quant_conv``."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch = cfg.channels
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[-1], 3, padding=1)
        self.mid = ResBlock(ch[-1], ch[-1], cfg.groups)
        self.upsample = nn.ModuleList()
        self.levels = nn.ModuleList()
        c_prev = ch[-1]
        for c in reversed(ch):
            # nearest-neighbour ×2, then a conv: no checkerboard artefacts from transposed convolutions
            self.upsample.append(
                nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_prev, c, 3, padding=1))
            )
            self.levels.append(nn.Sequential(*(ResBlock(c, c, cfg.groups) for _ in range(cfg.blocks_per_level))))
            c_prev = c
        self.norm_out = nn.GroupNorm(cfg.groups, ch[0])
        self.patch_size = p = cfg.patch_size
        self.conv_out = nn.Conv2d(ch[0], cfg.in_channels * p * p, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))  # (B, C_last, H/f, W/f)
        for up, level in zip(self.upsample, self.levels, strict=True):
            h = level(up(h))  # (B, C_i, H/(p·2^i), W/(p·2^i))
        h = self.conv_out(F.silu(self.norm_out(h)))  # (B, C·p², H/p, W/p)
        if self.patch_size > 1:
            h = F.pixel_shuffle(h, self.patch_size)  # channels → p×p patches
        return h  # (B, C, H, W), not squashed (see AutoencoderKL)


class AutoencoderKL(PretrainedModel):
    """The latent autoencoder, with diffusers' API: ``encode(x).latent_dist``, ``decode(z).sample``, ``forward(x)``.

    By default the decoder's output is not squashed: x̂ is raw, like diffusers' decoders, and the MSE loss alone
    keeps it near [−1, 1]; clamp it when saving or scoring images (the metrics do). With ``squash_output`` the
    decoder outputs tanh(·), a Bernoulli mean for each pixel (see :func:`vae_loss`).
    """

    config_class = AutoencoderConfig

    def __init__(self, config: AutoencoderConfig | None = None):
        super().__init__()
        cfg = self.config = config or AutoencoderConfig()
        L = cfg.latent_channels
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(2 * L, 2 * L, 1)  # features → [μ, log σ²]
        self.post_quant_conv = nn.Conv2d(L, L, 1)
        self.decoder = Decoder(cfg)

    def _check_images(self, x: torch.Tensor) -> None:
        cfg = self.config
        check_tensor("x", x, f"of images (B, {cfg.in_channels}, H, W)")
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            got = tuple(x.shape)
            raise ValueError(f"expected images x of shape (B, {cfg.in_channels}, H, W), got {got}")
        if x.shape[0] == 0:
            raise ValueError("got an empty batch (batch size 0)")
        f = cfg.downsampling
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(
                f"height and width must be multiples of {f} ({len(cfg.channels)} halvings), got "
                f"{x.shape[2]}x{x.shape[3]}; e.g. 28x28, 32x32 are allowed: pad or crop the images"
            )

    def _check_latents(self, z: torch.Tensor) -> None:
        L = self.config.latent_channels
        check_tensor("z", z, f"of latents (B, {L}, h, w): pass encode(x).latent_dist.sample()")
        if z.ndim != 4 or z.shape[1] != L:
            got = tuple(z.shape)
            raise ValueError(
                f"expected latents z of shape (B, {L}, h, w) (latent_channels={L}), got {got}; "
                "pass encode(x).latent_dist.sample(), not the image"
            )
        if z.shape[0] == 0:
            raise ValueError("got an empty batch (batch size 0)")

    def encode(self, x: torch.Tensor) -> AutoencoderKLOutput:
        """x (B, C, H, W) → posterior q(z | x) over latents (B, L, H/f, W/f). Unscaled: multiply z by s yourself."""
        self._check_images(x)
        moments = self.quant_conv(self.encoder(x))  # (B, 2L, H/f, W/f)
        return AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(moments))

    def decode(self, z: torch.Tensor) -> DecoderOutput:
        """z (B, L, h, w) → x̂ (B, C, h·f, w·f). Unscaled: divide the diffusion model's latents by s first."""
        out = self.decode_logits(z)  # (B, C, H, W)
        return DecoderOutput(sample=torch.tanh(out) if self.config.squash_output else out)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's raw output (B, C, H, W) before any squashing (``decode`` = tanh of it if ``squash_output``).
        With ``squash_output`` it is half the logit of a white pixel: P(white) = σ(2·out) = (tanh(out) + 1) / 2."""
        self._check_latents(z)
        return self.decoder(self.post_quant_conv(z))

    def forward(
        self, x: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> AutoencoderOutput:
        """Encode, take z ~ q(z | x) (or μ if not ``sample_posterior``), decode: x̂ (B, C, H, W) and the posterior."""
        posterior = self.encode(x).latent_dist
        z = posterior.sample(generator) if sample_posterior else posterior.mode()  # (B, L, H/f, W/f)
        return AutoencoderOutput(sample=self.decode(z).sample, latent_dist=posterior)
