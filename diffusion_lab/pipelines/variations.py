"""Image variations: a denoiser conditioned on an *image embedding*, as unCLIP and Stable unCLIP do, at MNIST scale.

Notation
--------
=========================  =========  ================================================================================
code                       symbol     meaning
=========================  =========  ================================================================================
``images``                 x          reference digits (B, 1, 28, 28) in [−1, 1]
``image_embeds``           f(x)       the image embedding (B, D): the frozen MNIST classifier's penultimate features
                                      (``MnistClassifier.features``, D = 128), standing in for CLIP's image tower
``mean``, ``std``          μ, σ       per-feature mean and standard deviation (1, D) of f over MNIST train
                                      (:class:`EmbeddingNormalizer`, diffusers' ``StableUnCLIPImageNormalizer``)
``noise_level``            k          noise augmentation of the embedding, an integer 0 … K − 1 (K = 1000)
``aug_alphas_cumprod``     ᾱᵃ_k       the augmentation schedule: cosine (``squaredcos_cap_v2``), as SD 2.1 unCLIP's
                                      ``image_noising_scheduler``
``class_labels``           c          (B, 2D) = [f_k ; e(k)], what the U-Net receives (diffusers' argument name)
``latents``                z_t        the diffusion state (B, 4, 7, 7) in the tiny SD autoencoder's latent space
``guidance_scale``         w          ṽ = v_∅ + w·(v_c − v_∅) with c_∅ = 0; w = 1: no guidance, w = 0: unconditional
``num_images_per_prompt``  n          variations per reference image
=========================  =========  ================================================================================

The idea (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with CLIP Latents", unCLIP):
a decoder P(x | z_i) learns to invert an image encoder, z_i = f(x). Decoding the embedding of a *given* image
draws new images that share what the embedding holds (for CLIP: content and style; for our classifier: mostly the
digit and its rough shape) and differ in everything it discarded: these are "variations" (unCLIP §3.1).

The conditioning path (unCLIP §2.1: "projecting and adding CLIP embeddings to the existing timestep embedding";
its Stable Diffusion form is diffusers' ``StableUnCLIPImg2ImgPipeline.noise_image_embeddings``)::

    u   = (f − μ) / σ                                 normalise               (StableUnCLIPImageNormalizer.scale)
    u_k = √ᾱᵃ_k · u + √(1 − ᾱᵃ_k) · ε,  ε ~ N(0, I)  noise augmentation      (DDPM Eq. 4: image_noising_scheduler)
    f_k = σ · u_k + μ                                 un-normalise            (StableUnCLIPImageNormalizer.unscale)
    c   = [f_k ; e(k)]                                append the noise level  (sinusoidal e, get_timestep_embedding)
    emb = MLP(e(t)) + W·c + b                         added to the U-Net's time embedding, read by every ResBlock

The noise augmentation is the "conditioning augmentation" of cascaded diffusion (Ho et al. 2022, "Cascaded
Diffusion Models for High Fidelity Image Generation"): trained on embeddings noised at random levels k (drawn
uniformly from 0 … K − 1, as Stability's ``CLIPEmbeddingNoiseAugmentation``) and told k, the model learns to
trust the embedding less the noisier it is, so k becomes a dial at sampling time: 0 = most faithful, higher = more
varied. Classifier-free guidance (Ho & Salimans 2022, Eq. 6): the whole vector c is replaced by 0 in 10 % of the
training examples (unCLIP §2.1 sets the CLIP embedding to zero 10 % of the time; diffusers' pipeline uses
``torch.zeros_like`` of c as the unconditional input).

Our U-Net's ``pooled_embed`` (``UNetConfig(pooled_dim=2D)``, a zero-initialised Linear added to the time embedding)
is diffusers' ``UNet2DConditionModel(class_embed_type="simple_projection",
projection_class_embeddings_input_dim=2D)``: ``emb = emb + Linear(class_labels)``. Stable unCLIP itself uses
``class_embed_type="projection"``, the same addition through a two-layer MLP (``TimestepEmbedding``: Linear → SiLU
→ Linear); the ResBlocks then apply SiLU and their own Linear to the sum anyway.

The denoiser works on the latents of the shipped tiny SD autoencoder (28×28 → 7×7×4, frozen), with the tiny SD's
schedule (scaled-linear β, v-prediction, DDIM with trailing spacing) and an EMA of its weights.

What differs from Stable unCLIP, besides the scale: no text at all (Stable unCLIP also takes a prompt), and each of
the n variations of a reference draws its *own* embedding noise ε (diffusers noises once per reference and repeats;
at ``noise_level=0`` the noise is negligible either way: √(1 − ᾱᵃ_0) ≈ 0.006).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from diffusion_lab.maths.guidance import cfg_combine
from diffusion_lab.mnist.classifier import MnistClassifier, classify, load_classifier
from diffusion_lab.models.autoencoder import AutoencoderKL
from diffusion_lab.models.image_embedding import (
    EmbeddingNormalizer,
    _check_noise_level,
    image_embedding,
    noise_embedding,
)
from diffusion_lab.models.unet import UNet
from diffusion_lab.pipelines.pipeline_utils import PipelineOutput, TinyPipeline
from diffusion_lab.utils.checkpoint import save_tensors_atomic, write_json_atomic
from diffusion_lab.utils.errors import check_int, check_number
from diffusion_lab.utils.validation import check_images

__all__ = ["TinyVariationPipeline", "variation_scores"]

_CLASSIFIER_FILE = "mnist_classifier.safetensors"
_HINTS = {
    "channels": " (MNIST digits have 1; RGB: average the channels)",
    "range": " (0..255 pixels p: convert with x = p / 127.5 - 1, diffusion_lab.mnist.data.to_unit_range)",
}


class TinyVariationPipeline(TinyPipeline):
    """``pipe(image, num_inference_steps=25, guidance_scale=2.0, noise_level=0, num_images_per_prompt=1,
    generator=None)`` → :class:`~diffusion_lab.pipelines.pipeline_utils.PipelineOutput`: n variations of each reference image,
    reference-major (rows 0 … n − 1 are the variations of reference 0), the call shape of diffusers'
    ``StableUnCLIPImg2ImgPipeline`` without the prompt.

    Components as diffusers names them: ``vae`` (frozen autoencoder), ``image_encoder`` (the frozen MNIST classifier),
    ``image_normalizer`` (:class:`EmbeddingNormalizer`), ``unet`` (``pooled_dim = 2D``), ``scheduler`` (sampling),
    ``image_noising_scheduler`` (its ``alphas_cumprod`` noise the embedding).
    """

    _component_classes = {
        "vae": AutoencoderKL, "image_encoder": MnistClassifier, "image_normalizer": EmbeddingNormalizer, "unet": UNet,
        "scheduler": None, "image_noising_scheduler": None,
    }  # fmt: skip
    _frozen = ("vae",)

    def __init__(self, vae, image_encoder, image_normalizer, unet, scheduler, image_noising_scheduler):
        self.register_modules(
            vae=vae, image_encoder=image_encoder, image_normalizer=image_normalizer, unet=unet, scheduler=scheduler,
            image_noising_scheduler=image_noising_scheduler,
        )  # fmt: skip
        d = image_encoder.config.feature_dim
        if image_normalizer.config.embedding_dim != d:
            raise ValueError(
                f"the normaliser holds {image_normalizer.config.embedding_dim} features but the image encoder gives {d}"
            )
        if unet.config.pooled_dim != 2 * d:
            raise ValueError(
                f"the U-Net must take pooled_dim = 2·{d} = {2 * d} (embedding + noise-level embedding), "
                f"got {unet.config.pooled_dim}"
            )
        self.check_denoiser_reads_latents()

    @property
    def embedding_dim(self) -> int:
        return self.image_encoder.config.feature_dim

    @property
    def num_noise_levels(self) -> int:
        """K: valid noise levels are 0 … K − 1."""
        return len(self.image_noising_scheduler.alphas_cumprod)

    def num_parameters(self) -> dict[str, int]:
        """Parameters of the networks (the normaliser's μ, σ are statistics, not counted)."""
        return {n: c for n, c in super().num_parameters().items() if n != "image_normalizer"}

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """f(x) (B, D) of reference images (B, 1, 28, 28) in [−1, 1]."""
        return image_embedding(self.image_encoder, image.to(self.device))

    def noise_image_embeddings(
        self, image_embeds: torch.Tensor, noise_level: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """c = [f_k ; e(k)] (B, 2D), as diffusers' method of the same name (:func:`noise_embedding`)."""
        ab_aug = self.image_noising_scheduler.alphas_cumprod.to(self.device)
        return noise_embedding(image_embeds, noise_level, self.image_normalizer, ab_aug, generator=generator)

    def check_inputs(
        self, image, image_embeds, num_inference_steps, guidance_scale, noise_level, n, *, generator=None, eta=None,
        output_type="pt", callback=None, latents=None,
    ) -> dict:  # fmt: skip
        """Every argument checked once by the error convention; returns the checked values (numbers as Python
        numbers; NumPy and torch scalars accepted)."""
        if (image is None) == (image_embeds is None):
            raise ValueError("give either image (B, 1, 28, 28) or image_embeds (B, D), not both and not neither")
        if image is not None:
            image = check_images(image, "image", channels=1, size=(28, 28), value_range=(-1, 1), hints=_HINTS)
            b = image.shape[0]
        else:
            d = self.embedding_dim
            if not isinstance(image_embeds, torch.Tensor):
                raise TypeError(
                    f"image_embeds must be a tensor (B, {d}) (pipe.encode_image(image)), got {type(image_embeds).__name__}"
                )
            if image_embeds.ndim != 2 or image_embeds.shape[1] != d:
                raise ValueError(
                    f"image_embeds must have shape (B, {d}) (pipe.encode_image(image)), got {tuple(image_embeds.shape)}"
                )
            if image_embeds.shape[0] == 0:
                raise ValueError("image_embeds is an empty batch (B = 0): give at least one embedding")
            if not image_embeds.is_floating_point() or not torch.isfinite(image_embeds).all():
                raise ValueError("image_embeds must hold finite floats (pipe.encode_image(image)), got NaN/inf or "
                                 f"dtype {image_embeds.dtype}")  # fmt: skip
            b = image_embeds.shape[0]
        guidance_scale = check_number("guidance_scale", guidance_scale, minimum=0)  # 0: ignore the image, 1: none
        if isinstance(noise_level, torch.Tensor) and noise_level.ndim > 0:  # one level per call, as diffusers
            raise ValueError(f"noise_level must be one integer in [0, {self.num_noise_levels - 1}], got a tensor")
        noise_level = check_int("noise_level", noise_level, minimum=None)
        _check_noise_level(noise_level, self.num_noise_levels)
        n = check_int("num_images_per_prompt", n)
        steps, eta = self.check_common_inputs(
            num_inference_steps=num_inference_steps, generator=generator, batch=b * n, eta=eta,
            output_type=output_type, callback=callback, latents=latents,
        )  # fmt: skip
        return dict(
            image=image, num_inference_steps=steps, guidance_scale=guidance_scale, noise_level=noise_level, n=n,
            eta=eta,
        )  # fmt: skip

    @torch.no_grad()
    def __call__(
        self,
        image: torch.Tensor | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 2.0,
        noise_level: int = 0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        *,
        image_embeds: torch.Tensor | None = None,
        eta: float | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pt",
        return_intermediates: bool = False,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> PipelineOutput:
        """Draw ``num_images_per_prompt`` variations of each reference ``image`` (B, 1, 28, 28) in [−1, 1]
        (or of precomputed ``image_embeds`` (B, D)). Returns images (B·n, 1, 28, 28), reference-major.

        1. f = f(x), repeated n times; c = [f_k ; e(k)] with fresh ε per variation (drawn from ``generator``
           first); with guidance the batch is [c_∅ = 0 ; c].
        2. z_T ~ N(0, I) (B·n, 4, 7, 7) (drawn next), or ``latents``; the scheduler's steps on
           ṽ = v_∅ + w·(v_c − v_∅); ``callback(i, t, z)`` after each step.
        3. x = D(z_0 / s). ``output_type``: "pt" (tensor in [−1, 1]), "pil" or "latent".
        """
        checked = self.check_inputs(
            image, image_embeds, num_inference_steps, guidance_scale, noise_level, num_images_per_prompt,
            generator=generator, eta=eta, output_type=output_type, callback=callback, latents=latents,
        )  # fmt: skip
        image, num_inference_steps, guidance_scale, noise_level, n, eta = checked.values()
        device = self.device

        # 1. the conditioning: embed, repeat n times, noise each copy, [c_∅ ; c] for guidance
        f = self.encode_image(image) if image is not None else image_embeds.to(device)  # (B, D)
        f = f.repeat_interleave(n, dim=0)  # (B·n, D), reference-major
        c = self.noise_image_embeddings(f, noise_level, generator)  # (B·n, 2D)
        guided = guidance_scale != 1.0
        if guided:
            c = torch.cat([torch.zeros_like(c), c])  # (2B·n, 2D), unconditional first as diffusers

        # 2. the denoising loop
        h = 28 // self.vae.config.downsampling
        shape = (f.shape[0], self.vae.config.latent_channels, h, h)
        z = self.prepare_latents(shape, generator, latents)
        self.scheduler.set_timesteps(num_inference_steps, device=device)

        def predict(z, t, i):
            z_in = self.scheduler.scale_model_input(torch.cat([z, z]) if guided else z, t)
            pred = self.unet(z_in, t, pooled_text=c)  # (2B·n or B·n, L, h, w)
            if guided:
                pred_uncond, pred_cond = pred.chunk(2)
                pred = cfg_combine(pred_cond, pred_uncond, guidance_scale)
            return pred

        out = PipelineOutput(images=torch.empty(0), latents=torch.empty(0))
        step_kw = self.step_kwargs(generator, eta)
        z = self.denoise(z, self.scheduler.timesteps, predict, step_kw, out, callback, return_intermediates)

        # 3. decode
        return self.decode_latents(z, out, output_type)

    # ---------------------------------------------------------------------------------------------- save / load

    def _save_component(self, name: str, component, directory: Path) -> None:
        """The classifier as :func:`load_classifier` reads it (weights + JSON); the rest as the base saves them."""
        if name != "image_encoder":
            return super()._save_component(name, component, directory)
        weights = save_tensors_atomic(directory / _CLASSIFIER_FILE, component.state_dict())
        meta = {
            "model": "diffusion_lab.mnist.classifier.MnistClassifier",
            "config": asdict(component.config),
            "weights_file": _CLASSIFIER_FILE,
            "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        }
        write_json_atomic(weights.with_suffix(".json"), meta)

    @classmethod
    def _load_component(cls, name: str, library: str, directory: Path, device):
        if name == "image_encoder":
            return load_classifier(directory / _CLASSIFIER_FILE, device=device)
        return super()._load_component(name, library, directory, device)


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Root-mean-square pixel distance between matching images: (M, 1, 28, 28) × 2 → (M,)."""
    return (a - b).pow(2).flatten(1).mean(1).sqrt()


@torch.no_grad()
def variation_scores(
    references: torch.Tensor,
    variations: torch.Tensor,
    classifier: MnistClassifier,
    normalizer: EmbeddingNormalizer,
    *,
    labels: torch.Tensor | None = None,
) -> dict[str, float]:
    """How faithful and how varied ``variations`` (B·n, 1, 28, 28; reference-major, n per reference) are.

    With r the reference and v one of its n variations, averaged over all B·n pairs:

    - ``agreement``: share of v whose predicted digit is r's (``labels`` (B,) if given, else r's predicted digit);
    - ``cosine``: cos(û(v), û(r)) with û = (f − μ)/σ the normalised embedding (centred: cosines of raw features are
      all close to 1, since every feature vector shares the mean);
    - ``distance``: pixel RMS distance ‖v − r‖ (a copy scores 0);
    - ``spread``: pixel RMS distance between two variations of the same reference (needs n ≥ 2; else NaN).

    Any image set laid out the same way can be scored: samples of the unconditional model (w = 0), or n other real
    digits of r's class — the baselines.
    """
    references = check_images(references, "references", channels=1, size=(28, 28), value_range=(-1, 1), hints=_HINTS)
    variations = check_images(variations, "variations", channels=1, size=(28, 28), value_range=(-1, 1), hints=_HINTS)
    b = len(references)
    if len(variations) % b:
        raise ValueError(f"variations must hold n per reference (B·n with B = {b}), got {len(variations)}")
    n = len(variations) // b
    ref_logits, ref_f = classify(references, classifier)
    var_logits, var_f = classify(variations, classifier)
    target = ref_logits.argmax(1) if labels is None else torch.as_tensor(labels).long().cpu()
    if target.shape != (b,):
        raise ValueError(f"labels must have shape ({b},), got {tuple(target.shape)}")
    agree = (var_logits.argmax(1) == target.repeat_interleave(n)).float().mean()
    mean, std = normalizer.mean.detach().cpu(), normalizer.std.detach().cpu()  # (1, D): the caller's module stays put
    u_ref = ((ref_f - mean) / std).repeat_interleave(n, 0)  # (B·n, D)
    cosine = torch.nn.functional.cosine_similarity((var_f - mean) / std, u_ref, dim=1).mean()
    refs = references.cpu().clamp(-1, 1).repeat_interleave(n, 0)
    var = variations.cpu().clamp(-1, 1)
    distance = _rms(var, refs).mean()
    spread = float("nan")
    if n >= 2:
        v = var.reshape(b, n, -1)  # (B, n, P)
        d2 = torch.cdist(v, v).pow(2) / v.shape[-1]  # (B, n, n) mean squared pixel differences
        spread = float(d2.clamp_min(0).sqrt().sum((1, 2)).mean() / (n * (n - 1)))
    return {"agreement": float(agree), "cosine": float(cosine), "distance": float(distance), "spread": spread}
