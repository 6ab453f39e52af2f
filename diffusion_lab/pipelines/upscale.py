"""Super-resolution: a tiny latent ×4 upscaler for MNIST, built like Stable Diffusion's x4 upscaler.

Notation
--------
======================  ============  ================================================================================
code                    symbol        meaning (paper, equation)
======================  ============  ================================================================================
``x``                   x             the high-resolution image (B, 1, 28, 28) in [−1, 1]
``low``                 y             the low-resolution image (B, 1, 7, 7): 4×4 averages of x (:func:`downsample`)
``factor``              r             the upscale factor, 4; equal to the autoencoder's downsampling f
``latents``             z_t           the diffusion state (B, 4, 7, 7), latents of the frozen autoencoder times s
``scaling_factor``      s             the autoencoder's latent scale: z_0 = s·μ(x), decode with D(z_0 / s)
``noise_level``         k             conditioning-augmentation level, an integer in 0..K
``max_noise_level``     K             the largest level used in training and accepted at sampling (350, as SD's)
``ab_low``              ᾱ'_k          the low-resolution scheduler's cumulative signal fraction at step k
``noisy_low``           ỹ_k           √ᾱ'_k·y + √(1 − ᾱ'_k)·ε', the noise-augmented low-res image (DDPM Eq. 4)
``class_labels``        k             the level, given to the U-Net through its class embedding (added to e(t))
======================  ============  ================================================================================

The design (Stable Diffusion x4 upscaler, diffusers' ``StableDiffusionUpscalePipeline``)
-----------------------------------------------------------------------------------------
1. **Latent diffusion, conditioned by concatenation** (SR3, Saharia et al. 2021, "Image Super-Resolution via
   Iterative Refinement"; LDM, Rombach et al. 2022, §4.4). The U-Net denoises the latents z_t of a frozen
   autoencoder with f = 4. Because the upscale factor r equals f, the low-resolution *pixel* image already has the
   latents' spatial size, so it is simply stacked onto z_t along the channels: the U-Net reads [z_t ; ỹ_k], 4 + 1
   = 5 channels at 7×7 (SD: 4 + 3 = 7 channels at 128×128 for a 512×512 output), and predicts the 4 latent
   channels.
2. **Conditioning augmentation** (Ho et al. 2021, "Cascaded Diffusion Models for High Fidelity Image Generation",
   §3; Imagen, Saharia et al. 2022, §2.5). Before the concatenation the low-resolution image is noised by a second,
   fixed forward process, ỹ_k = √ᾱ'_k·y + √(1 − ᾱ'_k)·ε' (DDPM Eq. 4 with the ``low_res_scheduler``'s ᾱ'), and k
   is given to the U-Net as ``class_labels``. In training k ~ U{0..K}; at sampling the user picks it. A model that
   has only ever seen clean y trusts every pixel of its input, including the artefacts of an imperfect one (an
   image produced by a base model, a noisy or blurred photo); with augmentation it knows that up to k's worth of
   noise is not signal. k is a knob: 0 = follow the input as closely as possible, larger = invent more detail.
3. **The noise level as a class label.** diffusers' U-Net of the x4 upscaler has ``num_class_embeds=1000``: an
   ``nn.Embedding`` whose row k is added to the time embedding. :class:`~diffusion_lab.models.unet.UNet` with
   ``num_classes = K + 1`` is that embedding (rows 0..K; :func:`train_upscaler` starts them at 0, see the recipe's
   notes), plus one extra row K + 1 that the U-Net keeps for "no label" (classifier-free guidance's null class).
   The upscaler never passes it: every prediction is made with a known level, so that row is never read and never
   trained (the tests check it stays at its initial value), and :meth:`TinyUpscalePipeline.check_inputs` refuses
   ``noise_level = K + 1``, which the U-Net alone would accept.
4. **No classifier-free guidance.** The real pipeline guides with its *text* prompt: the low-res image and k are
   the same in both branches. We have no text, and guiding on the image itself would need a second, unconditional
   latent model inside the same network (trained on dropped images) to sharpen a condition that already pins the
   digit down; noise_level = 0 already gives the most faithful output. So there is no ``guidance_scale``.

Low-resolution schedule: the x4 upscaler's ``low_res_scheduler`` is a DDPM schedule with β from 1e-4 to 0.02
over 1000 steps, **spaced in √β** (the original training code's ``make_beta_schedule("linear")`` is
``linspace(√1e-4, √0.02)²``, which is diffusers' ``"scaled_linear"``; diffusers' single-file loader builds the
low-res scheduler with ``beta_schedule="scaled_linear"``). :data:`LOW_RES_SCHEDULE` copies it. At k = 20 (the
pipeline's default) the added noise has std √(1 − ᾱ'_k) ≈ 0.05, at K = 350 ≈ 0.60.

Indexing: k and the diffusion timesteps t are integers 0..T−1, as in :mod:`diffusion_lab.maths.schedules`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffusion_lab.maths.diffusion import q_sample
from diffusion_lab.maths.images import _check_batch, psnr
from diffusion_lab.mnist.metrics import fid_mnist, prompt_adherence
from diffusion_lab.models.autoencoder import AutoencoderKL
from diffusion_lab.models.unet import UNet
from diffusion_lab.pipelines.pipeline_utils import PipelineOutput, TinyPipeline
from diffusion_lab.schedulers.scheduling_ddpm import DDPMScheduler
from diffusion_lab.utils.errors import check_int
from diffusion_lab.utils.torch_utils import randn
from diffusion_lab.utils.validation import check_images

__all__ = [
    "IMAGE_RANGE",
    "LOW_RES_SCHEDULE",
    "TinyUpscalePipeline",
    "low_res_scheduler",
    "noise_augment",
    "upscale_metrics",
]

# Low-res inputs live in [-1, 1], but degraded ones (noise added: what conditioning augmentation is for) overshoot it;
# values beyond ±5 are not a normalised image (0..255 pixels) and are refused.
IMAGE_RANGE = (-5.0, 5.0)
_IMAGE_HINTS = {
    "range": " (images in [-1, 1], noisy ones a little beyond; 0..255 pixels p: convert with x = p / 127.5 - 1, "
    "diffusion_lab.mnist.data.to_unit_range)"
}
# The x4 upscaler's low_res_scheduler: β from 1e-4 to 0.02 over 1000 steps, spaced in √β (see the module docstring).
LOW_RES_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=1e-4, beta_end=0.02)


def low_res_scheduler() -> DDPMScheduler:
    """A fresh DDPM scheduler with :data:`LOW_RES_SCHEDULE`: the x4 upscaler's ``low_res_scheduler``."""
    return DDPMScheduler(**LOW_RES_SCHEDULE)


def noise_augment(
    low: torch.Tensor,
    noise_level: int | torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    noise: torch.Tensor | None = None,
    alphas_cumprod: torch.Tensor | None = None,
) -> torch.Tensor:
    """Conditioning augmentation: ỹ_k = √ᾱ'_k·y + √(1 − ᾱ'_k)·ε', ε' ~ N(0, I) (CDM §3; DDPM Eq. 4).

    Exactly ``low_res_scheduler.add_noise(low, noise, noise_level)`` of diffusers' upscale pipeline.
    low: (B, C, h, w); noise_level: one int k or one per image (B,), each in 0..T−1; ``noise`` (shape of low) is
    drawn from ``generator`` when not given; ``alphas_cumprod`` (T,) defaults to :func:`low_res_scheduler`'s.
    k = 0 still adds a little noise (std √(1 − ᾱ'_0) = 0.01), as the real pipeline does.
    """
    low = _check_batch(low, "low")
    ab = low_res_scheduler().alphas_cumprod if alphas_cumprod is None else alphas_cumprod  # (T,)
    k = torch.as_tensor(noise_level)
    if k.is_floating_point() or k.dtype == torch.bool or k.numel() not in (1, low.shape[0]) or k.ndim > 1:
        raise ValueError(f"noise_level must be one integer or one per image ({low.shape[0]}), got {noise_level!r}")
    if k.min() < 0 or k.max() >= len(ab):
        raise ValueError(f"noise_level must be in 0..{len(ab) - 1}, got {k.tolist()}")
    if noise is None:
        noise = randn(tuple(low.shape), generator, low.device, low.dtype)
    return q_sample(low, k.to(low.device).reshape(-1), noise, ab)


@torch.no_grad()
def upscale_metrics(
    images: torch.Tensor, truth: torch.Tensor, labels: torch.Tensor, classifier, *, reference="test"
) -> dict[str, float]:
    """How good a set of upscaled digits is: mean ``psnr`` (dB) against the true 28×28 digits, ``fid_mnist``
    against the MNIST test set (:func:`diffusion_lab.mnist.metrics.fid_mnist`), and the classifier's ``accuracy`` on them.

    images, truth: (N, 1, 28, 28) in [−1, 1]; labels (N,) the true digits; ``reference``: ``"test"`` or
    :func:`diffusion_lab.mnist.metrics.reference_stats` computed once.
    """

    images = images.clamp(-1, 1)
    return {
        "psnr": psnr(images, truth).mean().item(),
        "fid_mnist": fid_mnist(images, classifier, reference=reference),
        "accuracy": prompt_adherence(images, labels, classifier),
    }


class TinyUpscalePipeline(TinyPipeline):
    """``pipe(image, num_inference_steps=10, noise_level=20, generator=None)`` → :class:`PipelineOutput` with the
    upscaled images (B, 1, 28, 28) in [−1, 1], as diffusers' ``StableDiffusionUpscalePipeline`` (without text).

    Components: the frozen ``vae`` (f = 4), the ``unet`` reading [z_t ; ỹ_k] with ``class_labels = k``, the
    denoising ``scheduler`` (ours or diffusers') and the ``low_res_scheduler`` whose ``add_noise`` is the
    augmentation; ``max_noise_level`` K.
    """

    _component_classes = {"vae": AutoencoderKL, "unet": UNet, "scheduler": None, "low_res_scheduler": None}
    _config_names = ("max_noise_level",)
    _frozen = ("vae",)

    def __init__(self, vae: AutoencoderKL, unet: UNet, scheduler, low_res_scheduler, max_noise_level: int = 350):
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler, low_res_scheduler=low_res_scheduler)
        self.max_noise_level = check_int("max_noise_level", max_noise_level, minimum=0)
        c, L = unet.config, vae.config.latent_channels
        if c.in_channels != L + vae.config.in_channels or c.out_channels != L:
            raise ValueError(
                f"the U-Net must read latents + low-res image ({L} + {vae.config.in_channels} = "
                f"{L + vae.config.in_channels} channels) and predict {L}; it has in_channels={c.in_channels}, "
                f"out_channels={c.out_channels}"
            )
        if c.cross_attention_dim is not None or c.pooled_dim is not None:
            raise ValueError(
                "the upscaler's U-Net takes no text: build it with cross_attention_dim=None, pooled_dim=None"
            )
        T_low = low_res_scheduler.config.num_train_timesteps
        if max_noise_level >= T_low:
            raise ValueError(f"max_noise_level must be an integer in 0..{T_low - 1}, got {max_noise_level!r}")
        if c.num_classes is None or c.num_classes < max_noise_level + 1:
            raise ValueError(
                f"the U-Net needs one class embedding per noise level: num_classes >= max_noise_level + 1 = "
                f"{max_noise_level + 1}, got {c.num_classes}"
            )

    def check_inputs(
        self, image: object, num_inference_steps: object, noise_level: object, height: object, width: object, *,
        generator: object = None, eta: object = None, output_type: object = "pt", callback: object = None,
        latents: object = None,
    ) -> dict:  # fmt: skip
        """Every argument checked by the error convention (a TypeError or a ValueError that says what to pass);
        returns the checked values (numbers as Python numbers, ``height``/``width`` ``None`` = 28)."""
        f, c = self.vae_scale_factor, self.vae.config.in_channels
        height, width = self.check_size(height, width, f)
        h, w = height // f, width // f
        if isinstance(image, torch.Tensor) and image.ndim == 4:  # the two mistakes an upscaler invites, said its way
            ih, iw = image.shape[2:]
            if image.shape[1] != c:
                raise ValueError(
                    f"image has {image.shape[1]} channels but the autoencoder (and the U-Net's conditioning input) "
                    f"expects {c}: give (B, {c}, {h}, {w}) images"
                )
            if (ih, iw) != (h, w):
                raise ValueError(
                    f"a {ih}x{iw} image cannot be upscaled x{f} to {height}x{width}: give {h}x{w} images "
                    f"({height} / {f}; e.g. downsample(x, {f}) of {height}x{width} images), or set height={ih * f}, "
                    f"width={iw * f}"
                )
        image = check_images(image, "image", channels=c, size=(h, w), value_range=IMAGE_RANGE, hints=_IMAGE_HINTS)
        if check_int("num_inference_steps", num_inference_steps, minimum=None) < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps}")
        K = self.max_noise_level
        noise_level = check_int("noise_level", noise_level, minimum=None)
        if noise_level < 0 or noise_level > K:
            raise ValueError(
                f"noise_level must be an integer in [0, {K}] (max_noise_level; 0 = follow the input closely, larger "
                f"= invent more detail), got {noise_level!r}"
            )
        steps, eta = self.check_common_inputs(
            num_inference_steps=num_inference_steps, generator=generator, batch=image.shape[0], eta=eta,
            output_type=output_type, callback=callback, latents=latents,
        )  # fmt: skip
        return dict(image=image, num_inference_steps=steps, noise_level=noise_level, eta=eta)

    @torch.no_grad()
    def __call__(
        self,
        image: torch.Tensor,
        num_inference_steps: int = 10,
        noise_level: int = 20,
        generator: torch.Generator | list[torch.Generator] | None = None,
        height: int | None = 28,
        width: int | None = 28,
        eta: float | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pt",
        return_intermediates: bool = False,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> PipelineOutput:
        """Upscale each low-resolution image ``image`` (B, 1, 7, 7) in [−1, 1] to (B, 1, 28, 28) (degraded, noisy
        inputs may overshoot [−1, 1]: values in :data:`IMAGE_RANGE` = [−5, 5] are accepted).

        1. ỹ_k = low_res_scheduler.add_noise(y, ε', k) with ε' drawn first from ``generator`` (as diffusers does).
        2. z_T ~ N(0, I) (B, 4, 7, 7) (or ``latents``), times the scheduler's ``init_noise_sigma``.
        3. For each timestep t: prediction = unet([scale_model_input(z_t) ; ỹ_k], t, class_labels=k);
           z ← scheduler.step(prediction, t, z).prev_sample.
        4. x = D(z_0 / s), clamped to [−1, 1].

        ``output_type``: "pt" (tensor), "pil" or "latent"; ``eta`` goes to schedulers whose ``step`` takes it;
        ``callback(i, t, latents)`` runs after each step. Repeat an image (``image.repeat_interleave(n, 0)``) for n
        different upscalings of it.
        """
        checked = self.check_inputs(
            image, num_inference_steps, noise_level, height, width, generator=generator, eta=eta,
            output_type=output_type, callback=callback, latents=latents,
        )  # fmt: skip
        image, num_inference_steps, noise_level, eta = checked.values()
        device, b = self.device, image.shape[0]
        shape = (b, self.vae.config.latent_channels, *image.shape[2:])  # (B, L, h, w): the latents of the output

        # 1. the noise augmentation of the low-resolution image (drawn first, as in diffusers)
        image = image.to(device, self.unet.dtype)
        k = torch.full((b,), int(noise_level), dtype=torch.long, device=device)  # (B,) class labels
        aug_noise = randn(tuple(image.shape), generator, device, image.dtype)
        noisy_low = self.low_res_scheduler.add_noise(image, aug_noise, k)  # (B, 1, h, w)

        # 2. timesteps and the starting latents
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        z = self.prepare_latents(shape, generator, latents, image.dtype)  # (B, L, h, w)

        # 3. the denoising loop, the low-res image concatenated along channels at every step
        def predict(z, t, i):
            unet_in = torch.cat([self.scheduler.scale_model_input(z, t), noisy_low], dim=1)  # (B, L + 1, h, w)
            return self.unet(unet_in, t, class_labels=k)  # (B, L, h, w)

        out = PipelineOutput(images=torch.empty(0), latents=torch.empty(0))
        step_kw = self.step_kwargs(generator, eta)
        z = self.denoise(z, self.scheduler.timesteps, predict, step_kw, out, callback, return_intermediates)

        # 4. decode
        return self.decode_latents(z, out, output_type)
