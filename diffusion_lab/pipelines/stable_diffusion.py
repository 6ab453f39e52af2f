"""The tiny Stable Diffusion: autoencoder + text encoder + cross-attention U-Net + scheduler, diffusers' call shape.

Notation
--------
====================  ==========  ===================================================================================
code                  symbol      meaning
====================  ==========  ===================================================================================
``latents``           z_t         the diffusion state in latent space (B, L, H/f, W/f), already multiplied by s
``scaling_factor``    s           the autoencoder's latent scale (z = s · E(x)); decode with D(z / s)
``prompt_embeds``     c           the text encoder's per-token states (B, M, D): what cross-attention attends to
``pooled``            c̄           the text encoder's pooled vector (B, D), added to the time embedding
``guidance_scale``    w           classifier-free guidance: ε̃ = ε_∅ + w·(ε_c − ε_∅) (w = 1: no guidance)
``strength``          γ           img2img / inpainting: start at the γ-th fraction of the schedule from the end
``mask_image``        m           inpainting mask (B or 1, 1, H, W) in [0, 1]; 1 = repaint, 0 = keep (diffusers' rule)
====================  ==========  ===================================================================================

One call, three tasks (diffusers' StableDiffusion, -Img2Img and -Inpaint pipelines): text-to-image, z_T ~ N(0, I),
the scheduler's steps on guided predictions (both branches as one batch [uncond; cond], the unconditional one the
empty or the negative prompt), x = D(z_0 / s); img2img, z_0 = s·E(x), skip the first (1 − γ)·N of the N steps and
start at z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε (γ = 0 returns the image, γ = 1 ignores it); inpainting, after every step
z ← (1 − m)·q(z_0 → t_next) + m·z (RePaint-style blending, diffusers' legacy inpainting). Any scheduler with
diffusers' interface works, ours or diffusers'.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from diffusion_lab.maths.guidance import cfg_combine, rescale_noise_cfg
from diffusion_lab.models.autoencoder import AutoencoderKL
from diffusion_lab.models.text_encoder import TextEncoder, WordTokenizer
from diffusion_lab.models.unet import UNet
from diffusion_lab.pipelines.pipeline_utils import PipelineOutput, TinyPipeline
from diffusion_lab.utils.errors import check_number
from diffusion_lab.utils.validation import check_images

__all__ = ["TinyStableDiffusionPipeline"]

_IMAGE_HINTS = {"range": " (0..255 pixels p: convert with x = p / 127.5 - 1, diffusion_lab.mnist.data.to_unit_range)"}


class TinyStableDiffusionPipeline(TinyPipeline):
    """``pipe(prompt, negative_prompt=None, num_inference_steps=25, guidance_scale=3.0, generator=None,
    height=28, width=28, image=None, strength=None, mask_image=None)`` → :class:`PipelineOutput`."""

    _component_classes = {
        "vae": AutoencoderKL, "text_encoder": TextEncoder, "tokenizer": WordTokenizer, "unet": UNet, "scheduler": None,
    }  # fmt: skip

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler):
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        if unet.config.cross_attention_dim is None:
            raise ValueError("the U-Net needs text cross-attention: build it with UNetConfig(cross_attention_dim=...)")
        self.check_denoiser_reads_latents()

    # ------------------------------------------------------------------------------------------------- helpers

    @property
    def max_length(self) -> int:
        return self.text_encoder.config.max_position

    @staticmethod
    def _as_prompts(prompt, name: str) -> list[str]:
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
            return list(prompt)
        raise TypeError(
            f"{name} must be a string or a non-empty list of strings, got {type(prompt).__name__}: {prompt!r}"
        )

    def _prompts(self, prompt, negative_prompt) -> tuple[list[str], list[str] | None]:
        """The prompts as a list, and the negative prompts (one repeated for every prompt) or None."""
        prompts = self._as_prompts(prompt, "prompt")
        negatives = None if negative_prompt is None else self._as_prompts(negative_prompt, "negative_prompt")
        if negatives is not None and len(negatives) == 1 < len(prompts):
            negatives = negatives * len(prompts)
        return prompts, negatives

    @torch.no_grad()
    def encode_prompt(self, prompt: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token states c (B, M, D), their attention mask (B, M) and pooled c̄ (B, D) for each prompt.

        The empty prompt ``""`` is the unconditional prompt (⟨bos⟩ ⟨eos⟩ and padding). Unknown words become the
        tokenizer's unknown token, with a warning.
        """
        prompts = self._as_prompts(prompt, "prompt")
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, return_tensors="pt")
        ids, mask = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
        out = self.text_encoder(ids, attention_mask=mask)
        return out.last_hidden_state, mask, out.pooler_output

    def _predict(
        self, z: torch.Tensor, t, c: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor, step: int = 0,
        num_steps: int = 1,
    ) -> torch.Tensor:  # fmt: skip
        """The denoiser's prediction for latents z (B, L, h, w) at the scheduler's timestep t, the ``step``-th of
        ``num_steps`` in the loop (unused here: the hook where :class:`~diffusion_lab.pipelines.controlnet.TinyControlNetPipeline`
        adds its ControlNet's residuals, on the steps inside [control_guidance_start, control_guidance_end])."""
        kw = {"pooled_text": pooled} if self.unet.config.pooled_dim else {}
        return self.unet(z, t, encoder_hidden_states=c, encoder_attention_mask=mask, **kw)

    def _add_noise(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """z_t from clean latents at the scheduler's timesteps t (B,): √ᾱ_t z_0 + √(1 − ᾱ_t) ε."""
        return self.scheduler.add_noise(z0, noise, t)

    @property
    def latent_multiple(self) -> int:
        """Height and width must be multiples of this: autoencoder factor × U-Net factor (4 × 1 = 4 here)."""
        return self.vae_scale_factor * self.unet.config.downsampling

    def check_inputs(
        self, prompts, negatives, num_inference_steps, guidance_scale, height, width, strength, image, mask, *,
        guidance_rescale=0.0, eta=None, generator=None, output_type="pt", callback=None, latents=None,
    ) -> dict:  # fmt: skip
        """Every argument checked once, before any work, by the error convention (diffusers' ``check_inputs``).
        Returns the checked values: numbers as Python numbers (NumPy / torch scalars accepted), ``height``/``width``
        (``None`` = 28), ``image`` and ``mask_image`` as tensors (B or 1, ·, H, W) or None."""
        if negatives is not None and len(negatives) != len(prompts):
            raise ValueError(
                f"negative_prompt has {len(negatives)} entries but prompt has {len(prompts)}: give one negative "
                "prompt (a string) or one per prompt"
            )
        f = self.latent_multiple
        why = f" (autoencoder factor {self.vae_scale_factor} × denoiser factor {f // self.vae_scale_factor})"
        height, width = self.check_size(height, width, f, why)
        steps, eta = self.check_common_inputs(
            num_inference_steps=num_inference_steps, generator=generator, batch=len(prompts), eta=eta,
            output_type=output_type, callback=callback, latents=latents,
        )  # fmt: skip
        guidance_scale = check_number("guidance_scale", guidance_scale, minimum=0)  # 0: unconditional, 1: none
        guidance_rescale = check_number("guidance_rescale", guidance_rescale)
        if not 0 <= guidance_rescale <= 1:
            raise ValueError(f"guidance_rescale must be in [0, 1] (0 = off, 0.7 as Lin et al.), got {guidance_rescale}")
        if strength is not None:
            strength = check_number("strength", strength, minimum=0, maximum=1)  # 0: keep the image, 1: ignore it
            if image is None:
                raise ValueError("strength needs an image to start from: pass image=... (img2img or inpainting)")
        if mask is not None and image is None:
            raise ValueError("mask_image needs the image to inpaint: pass image=...")
        b, size = len(prompts), (height, width)
        if image is not None:
            image = check_images(image, "image", channels=self.vae.config.in_channels, size=size, batch=b,
                                 value_range=(-1, 1), allow_pil=True, hints=_IMAGE_HINTS)  # fmt: skip
        if mask is not None:
            mask = check_images(mask, "mask_image", channels=1, size=size, batch=b, value_range=(0, 1),
                                hints={"range": " (1 = repaint, 0 = keep; 0..255 masks: divide by 255)"})  # fmt: skip
        return dict(
            num_inference_steps=steps, guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, eta=eta,
            height=height, width=width, strength=strength, image=image, mask_image=mask,
        )  # fmt: skip

    # ---------------------------------------------------------------------------------------------------- call

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        height: int | None = 28,
        width: int | None = 28,
        image: torch.Tensor | None = None,
        strength: float | None = None,
        mask_image: torch.Tensor | None = None,
        guidance_rescale: float = 0.0,
        eta: float | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pt",
        return_intermediates: bool = False,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> PipelineOutput:
        """Generate one image per prompt. ``strength`` defaults to 0.8 for img2img and 1.0 for inpainting.

        ``image`` (B or 1, C, H, W) in [−1, 1] or a PIL image, ``mask_image`` (B or 1, 1, H, W) in [0, 1];
        ``height``/``width`` ``None`` = 28; ``generator`` one, or a list with one per prompt (sample i from
        generator i, as diffusers). ``latents`` replaces the random start z_T (B, L, H/f, W/f);
        ``callback(i, t, latents)`` runs after each step; ``output_type``: "pt" (tensor in [−1, 1]), "pil" or "latent". ``eta`` goes to schedulers whose
        ``step`` takes it (DDIM).
        """
        prompts, negatives = self._prompts(prompt, negative_prompt)
        checked = self.check_inputs(
            prompts, negatives, num_inference_steps, guidance_scale, height, width, strength, image, mask_image,
            guidance_rescale=guidance_rescale, eta=eta, generator=generator, output_type=output_type,
            callback=callback, latents=latents,
        )  # fmt: skip
        num_inference_steps, guidance_scale, guidance_rescale, eta, height, width, strength, image, mask_image = (
            checked.values()
        )
        if image is not None and strength is None:
            strength = 1.0 if mask_image is not None else 0.8
        b, device, s = len(prompts), self.device, self.vae.config.scaling_factor
        shape = (b, self.vae.config.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)

        # 1. text: [uncond; cond] for classifier-free guidance (the negative prompt replaces the empty prompt)
        guided = guidance_scale != 1.0
        c, mask, pooled = self.encode_prompt(prompts)  # (B, M, D), (B, M), (B, D)
        if guided:
            uc, umask, upooled = self.encode_prompt(negatives or [""] * b)
            c, mask, pooled = torch.cat([uc, c]), torch.cat([umask, mask]), torch.cat([upooled, pooled])

        # 2. timesteps; img2img keeps the last γ·N of them (diffusers' get_timesteps)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        t_start = 0
        if image is not None:
            init_steps = min(int(num_inference_steps * strength), num_inference_steps)
            t_start = max(num_inference_steps - init_steps, 0)
            timesteps = timesteps[t_start * self.scheduler.order :]
            if hasattr(self.scheduler, "set_begin_index"):  # diffusers' sigma schedulers index from here
                self.scheduler.set_begin_index(t_start * self.scheduler.order)

        # 3. the starting latents z_T (or z_t for img2img)
        noise = self.initial_noise(shape, generator, latents)
        known = None
        if image is not None:
            x0 = image.expand(b, -1, -1, -1).to(device, self.vae.dtype)
            known = self.vae.encode(x0).latent_dist.mode() * s  # z_0 = s·E(x)  (B, L, h, w)
        if image is None or strength == 1.0:
            z = noise * getattr(self.scheduler, "init_noise_sigma", 1.0)  # pure noise: γ = 1 ignores the image
        elif len(timesteps) == 0:
            z = known  # γ = 0: nothing to denoise
        else:
            z = self._add_noise(known, noise, timesteps[:1].repeat(b))  # z_t = √ᾱ_t z_0 + √(1−ᾱ_t) ε
        m = None
        if mask_image is not None:
            m = F.interpolate(mask_image.to(device, z.dtype), size=shape[-2:], mode="area").expand(b, -1, -1, -1)

        # 4. the denoising loop
        def predict(z, t, i):
            z_in = torch.cat([z, z]) if guided else z
            if hasattr(self.scheduler, "scale_model_input"):  # flow schedulers (diffusers') have none
                z_in = self.scheduler.scale_model_input(z_in, t)
            pred = self._predict(z_in, t, c, mask, pooled, step=i, num_steps=len(timesteps))  # (2B or B, L, h, w)
            if guided:
                pred_uncond, pred_text = pred.chunk(2)
                pred = cfg_combine(pred_text, pred_uncond, guidance_scale)
                if guidance_rescale > 0:
                    pred = rescale_noise_cfg(pred, pred_text, guidance_rescale)
            return pred

        def blend(z, i):  # keep the known region: the image's latents noised to the next timestep
            keep = known
            if i < len(timesteps) - 1:
                keep = self._add_noise(known, noise, timesteps[i + 1 : i + 2].repeat(b))
            z = (1 - m) * keep + m * z
            return z

        out = PipelineOutput(images=torch.empty(0), latents=torch.empty(0))
        step_kw = self.step_kwargs(generator, eta)
        z = self.denoise(z, timesteps, predict, step_kw, out, callback, return_intermediates,
                         after_step=None if m is None else blend)  # fmt: skip

        # 5. decode
        return self.decode_latents(z, out, output_type)
