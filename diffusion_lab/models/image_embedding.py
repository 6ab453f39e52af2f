"""Image embeddings for variations (Stable unCLIP's conditioning, Ramesh et al. 2022): the classifier's features,
normalised, and noised to a level s.

===================  ======  =====================================================================================
code                 symbol  meaning
===================  ======  =====================================================================================
``image_embedding``  e       (B, D) classifier features f(x) of reference digits (B, 1, 28, 28) in [−1, 1]
``mean``, ``std``    μ, σ    per-feature statistics fitted on real embeddings (:meth:`EmbeddingNormalizer.fit`)
``noise_level``      s       0 … S − 1: how much the normalised embedding is noised (0 = as it is)
===================  ======  =====================================================================================

    u = (e − μ)/σ,   u_s = √ᾱ_s·u + √(1 − ᾱ_s)·ε   (the forward process, DDPM Eq. 4, on the embedding),
    conditioning = (σ·u_s + μ) ⊕ sin-embedding(s)   (2·D numbers, diffusers' ``StableUnCLIPImg2ImgPipeline.noise_image_embeddings``)

Noising the embedding (s > 0) keeps the coarse content and frees the details, so variations differ more; the level
itself is part of the conditioning so the denoiser knows how much to trust e. The normaliser saves and loads like a
model (safetensors + JSON); a damaged file is a :class:`~diffusion_lab.utils.errors.FileError`.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass

import torch
from torch import nn

from diffusion_lab.maths.diffusion import q_sample
from diffusion_lab.mnist.classifier import MnistClassifier, classify
from diffusion_lab.models.unet import timestep_embedding
from diffusion_lab.utils.checkpoint import PretrainedModel
from diffusion_lab.utils.errors import check_int, check_tensor
from diffusion_lab.utils.torch_utils import randn
from diffusion_lab.utils.validation import check_images

__all__ = ["NormalizerConfig", "EmbeddingNormalizer", "image_embedding", "noise_embedding"]


def _check_reference_images(images: object, name: str = "image") -> torch.Tensor:
    """A non-empty float tensor (B, 1, 28, 28) with values in [−1, 1] (the one image validator)."""
    hints = {
        "channels": " (MNIST digits have 1: average the RGB channels)",
        "range": " (0..255 pixels: use diffusion_lab.mnist.data.to_unit_range)",
    }
    return check_images(images, name, channels=1, size=(28, 28), value_range=(-1.0, 1.0), hints=hints)


def image_embedding(classifier: MnistClassifier, images: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """f(x): the classifier's penultimate features (B, D) for ``images`` (B, 1, 28, 28) in [−1, 1], on their device.

    The classifier plays CLIP's image tower: frozen, eval mode, no gradients (:func:`diffusion_lab.mnist.classifier.classify`).
    """
    images = _check_reference_images(images, "images")
    _, feats = classify(images, classifier, batch_size=batch_size)  # (B, D) float32 on the CPU
    return feats.to(images.device)


@dataclass
class NormalizerConfig:
    embedding_dim: int = 128

    def __post_init__(self):
        self.embedding_dim = check_int("embedding_dim", self.embedding_dim)

    def to_dict(self) -> dict:
        return asdict(self)


class EmbeddingNormalizer(PretrainedModel):
    """diffusers' ``StableUnCLIPImageNormalizer``: the embedding's per-feature ``mean`` and ``std`` (1, D).

    ``scale(f) = (f − μ) / σ`` and ``unscale(u) = σ·u + μ``. Fit them on data with :meth:`fit`. (Parameters without
    gradients, as diffusers stores them, so that ``save_pretrained`` / ``from_pretrained`` work as for every model.)
    """

    config_class = NormalizerConfig

    def __init__(self, config: NormalizerConfig | None = None):
        super().__init__()
        self.config = config or NormalizerConfig()
        d = self.config.embedding_dim
        self.mean = nn.Parameter(torch.zeros(1, d), requires_grad=False)
        self.std = nn.Parameter(torch.ones(1, d), requires_grad=False)

    @classmethod
    def fit(cls, image_embeds: torch.Tensor) -> EmbeddingNormalizer:
        """μ and σ (unbiased) of ``image_embeds`` (N ≥ 2, D), per feature; σ is floored at 1e-6."""
        check_tensor("image_embeds", image_embeds, "of shape (N >= 2, D) from image_embedding()")
        if image_embeds.ndim != 2 or image_embeds.shape[0] < 2:
            raise ValueError(f"fit needs embeddings of shape (N >= 2, D), got {tuple(image_embeds.shape)}")
        norm = cls(NormalizerConfig(embedding_dim=int(image_embeds.shape[1])))
        f = image_embeds.detach().double()
        with torch.no_grad():
            norm.mean.copy_(f.mean(0, keepdim=True).float())
            norm.std.copy_(f.std(0, keepdim=True).clamp_min(1e-6).float())
        return norm.to(image_embeds.device)

    def _check(self, embeds: torch.Tensor) -> None:
        d = self.config.embedding_dim
        check_tensor("embeddings", embeds, f"of shape (B, {d})")
        if embeds.ndim != 2 or embeds.shape[1] != d:
            raise ValueError(f"embeddings must have shape (B, {d}), got {tuple(embeds.shape)}")

    def scale(self, embeds: torch.Tensor) -> torch.Tensor:
        """u = (f − μ) / σ: (B, D) → (B, D)."""
        self._check(embeds)
        return (embeds - self.mean) / self.std

    def unscale(self, embeds: torch.Tensor) -> torch.Tensor:
        """f = σ·u + μ: (B, D) → (B, D)."""
        self._check(embeds)
        return embeds * self.std + self.mean


def _check_noise_level(noise_level: object, num_levels: int) -> None:
    if isinstance(noise_level, torch.Tensor):
        if noise_level.is_floating_point() or noise_level.dtype == torch.bool or noise_level.numel() == 0:
            raise ValueError(f"noise_level must hold integers in [0, {num_levels - 1}], got {noise_level!r}")
        lo, hi = int(noise_level.min()), int(noise_level.max())
    elif isinstance(noise_level, numbers.Integral) and not isinstance(noise_level, bool):  # np.int64 too
        lo = hi = int(noise_level)
    else:
        raise TypeError(f"noise_level must be an integer in [0, {num_levels - 1}], got {noise_level!r}")
    if lo < 0 or hi >= num_levels:
        raise ValueError(
            f"noise_level must be between 0 and {num_levels - 1} inclusive (the noising schedule has {num_levels} "
            f"levels; 0 = the embedding as it is), got values from {lo} to {hi}"
        )


def noise_embedding(
    image_embeds: torch.Tensor,
    noise_level: int | torch.Tensor,
    normalizer: EmbeddingNormalizer,
    aug_alphas_cumprod: torch.Tensor,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The U-Net's conditioning c = [f_k ; e(k)] (B, 2D) from embeddings f (B, D) at noise level k.

    u = (f − μ)/σ;  u_k = √ᾱᵃ_k·u + √(1 − ᾱᵃ_k)·ε (DDPM Eq. 4);  f_k = σ·u_k + μ;  e(k) the sinusoidal embedding of k
    with D entries (cos first, as diffusers' ``get_timestep_embedding(flip_sin_to_cos=True)``). The same
    computation as diffusers' ``StableUnCLIPImg2ImgPipeline.noise_image_embeddings``. ``noise_level``: one int for
    the batch or a (B,) integer tensor (training draws one per example); ``noise`` (B, D) replaces the draw of ε.
    """
    check_tensor("image_embeds", image_embeds, "(B, D) from image_embedding()")
    if image_embeds.ndim != 2 or image_embeds.shape[0] == 0:
        raise ValueError(f"image_embeds must be a non-empty (B, D) tensor, got {tuple(image_embeds.shape)}")
    b, d = image_embeds.shape
    _check_noise_level(noise_level, len(aug_alphas_cumprod))
    k = torch.as_tensor(noise_level, device=image_embeds.device).long().reshape(-1).expand(b)  # (B,)
    if noise is None:
        noise = randn((b, d), generator, image_embeds.device, image_embeds.dtype)
    elif noise.shape != image_embeds.shape:
        raise ValueError(f"noise must have the shape of image_embeds {(b, d)}, got {tuple(noise.shape)}")
    u = normalizer.scale(image_embeds)  # (B, D)
    u_k = q_sample(u, k, noise.to(u), aug_alphas_cumprod)  # √ᾱᵃ_k·u + √(1 − ᾱᵃ_k)·ε
    f_k = normalizer.unscale(u_k)  # (B, D)
    return torch.cat([f_k, timestep_embedding(k, d).to(f_k.dtype)], dim=1)  # (B, 2D)
