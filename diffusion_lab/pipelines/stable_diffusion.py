"""The tiny Stable Diffusion pipeline (text → latents → image) with the call signature of diffusers' ``StableDiffusionPipeline``."""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from diffusion_lab.maths.guidance import cfg_combine, rescale_noise_cfg
from diffusion_lab.models.autoencoder import AutoencoderKL
from diffusion_lab.models.text_encoder import TextEncoder, WordTokenizer
from diffusion_lab.models.unet import UNet
from diffusion_lab.pipelines.pipeline_utils import PipelineOutput, _load_scheduler
from diffusion_lab.utils.checkpoint import write_json_atomic
from diffusion_lab.utils.torch_utils import randn

__all__ = ["TinyStableDiffusionPipeline"]


class TinyStableDiffusionPipeline:
    """``pipe(prompt, negative_prompt=None, num_inference_steps=25, guidance_scale=3.0, generator=None,
    height=28, width=28, image=None, strength=None, mask_image=None)`` → :class:`PipelineOutput`."""

    _components = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler):
        self.vae, self.text_encoder, self.tokenizer, self.unet, self.scheduler = (
            vae,
            text_encoder,
            tokenizer,
            unet,
            scheduler,
        )
        if unet.config.cross_attention_dim is None:
            raise ValueError("the U-Net needs text cross-attention: build it with UNetConfig(cross_attention_dim=...)")
        if unet.config.in_channels != vae.config.latent_channels:
            raise ValueError(
                f"the U-Net reads {unet.config.in_channels} channels but the autoencoder's latents have "
                f"{vae.config.latent_channels}"
            )

    # ------------------------------------------------------------------------------------------------- helpers

    @property
    def components(self) -> dict:
        return {name: getattr(self, name) for name in self._components}

    @property
    def denoiser(self):
        """The network that predicts the noise / velocity (the U-Net here, SD3's transformer in TinySD3Pipeline)."""
        return self.unet

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    @property
    def vae_scale_factor(self) -> int:
        """f: pixels per latent position along each side (4 for 28×28 → 7×7)."""
        return self.vae.config.downsampling

    @property
    def max_length(self) -> int:
        return self.text_encoder.config.max_position

    def to(self, device) -> TinyStableDiffusionPipeline:
        for module in (self.vae, self.text_encoder, self.denoiser):
            module.to(device)
        return self

    def num_parameters(self) -> dict[str, int]:
        return {
            n: m.num_parameters()
            for n, m in (("vae", self.vae), ("text_encoder", self.text_encoder), (self._components[3], self.denoiser))
        }

    @staticmethod
    def _as_prompts(prompt, name: str) -> list[str]:
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
            return list(prompt)
        raise TypeError(
            f"{name} must be a string or a non-empty list of strings, got {type(prompt).__name__}: {prompt!r}"
        )

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

    def _images(self, image: torch.Tensor, b: int, height: int, width: int, what: str) -> torch.Tensor:
        c = self.vae.config.in_channels
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1:] != (c, height, width):
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"{what} must be a tensor (B, {c}, {height}, {width}) with values in [-1, 1], got {got}")
        if image.shape[0] not in (1, b):
            raise ValueError(f"{what} holds {image.shape[0]} images; give 1 or one per prompt ({b})")
        return image.expand(b, -1, -1, -1)

    def check_inputs(
        self, prompts, negatives, num_inference_steps, guidance_scale, height, width, strength, image, mask
    ):
        if negatives is not None and len(negatives) != len(prompts):
            raise ValueError(
                f"negative_prompt has {len(negatives)} entries but prompt has {len(prompts)}: give one negative "
                "prompt (a string) or one per prompt"
            )
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        if not (isinstance(guidance_scale, (int, float)) and math.isfinite(guidance_scale) and guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be a finite number >= 0 (1 = no guidance), got {guidance_scale!r}")
        f = self.latent_multiple
        if height % f or width % f or height < f or width < f:
            raise ValueError(
                f"height and width must be positive multiples of {f} (autoencoder factor {self.vae_scale_factor} × "
                f"denoiser factor {f // self.vae_scale_factor}), got {height}x{width}; e.g. 28x28"
            )
        if strength is not None and not (isinstance(strength, (int, float)) and 0.0 <= strength <= 1.0):
            raise ValueError(f"strength must be in [0, 1] (0 = keep the image, 1 = ignore it), got {strength!r}")
        if strength is not None and image is None:
            raise ValueError("strength needs an image to start from: pass image=... (img2img or inpainting)")
        if mask is not None:
            if image is None:
                raise ValueError("mask_image needs the image to inpaint: pass image=...")
            if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[1:] != (1, height, width):
                got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
                raise ValueError(f"mask_image must be a tensor (B or 1, 1, {height}, {width}) in [0, 1], got {got}")
            if mask.shape[0] not in (1, len(prompts)):
                raise ValueError(f"mask_image holds {mask.shape[0]} masks; give 1 or one per prompt ({len(prompts)})")
            if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
                raise ValueError(
                    f"mask_image values must be in [0, 1] (1 = repaint, 0 = keep), got {mask.min().item():.3g} to "
                    f"{mask.max().item():.3g}"
                )

    # ---------------------------------------------------------------------------------------------------- call

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        generator: torch.Generator | None = None,
        height: int = 28,
        width: int = 28,
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

        ``latents`` replaces the random start z_T (B, L, H/f, W/f); ``callback(i, t, latents)`` runs after each
        step; ``output_type``: "pt" (tensor in [−1, 1]), "pil" or "latent". ``eta`` goes to schedulers whose
        ``step`` takes it (DDIM).
        """
        prompts = self._as_prompts(prompt, "prompt")
        negatives = None if negative_prompt is None else self._as_prompts(negative_prompt, "negative_prompt")
        if negatives is not None and len(negatives) == 1 < len(prompts):
            negatives = negatives * len(prompts)
        self.check_inputs(
            prompts, negatives, num_inference_steps, guidance_scale, height, width, strength, image, mask_image
        )
        if output_type not in ("pt", "pil", "latent"):
            raise ValueError(f"output_type must be 'pt', 'pil' or 'latent', got {output_type!r}")
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
        noise = randn(shape, generator, device) if latents is None else latents.to(device)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        known = None
        if image is not None:
            x0 = self._images(image, b, height, width, "image").to(device, self.vae.dtype)
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
        accepts = inspect.signature(self.scheduler.step).parameters
        step_kw = {"generator": generator} if "generator" in accepts else {}
        if eta is not None and "eta" in accepts:
            step_kw["eta"] = eta
        out = PipelineOutput(images=torch.empty(0), latents=torch.empty(0))
        for i, t in enumerate(timesteps):
            z_in = torch.cat([z, z]) if guided else z
            if hasattr(self.scheduler, "scale_model_input"):  # flow schedulers (diffusers') have none
                z_in = self.scheduler.scale_model_input(z_in, t)
            pred = self._predict(z_in, t, c, mask, pooled, step=i, num_steps=len(timesteps))  # (2B or B, L, h, w)
            if guided:
                pred_uncond, pred_text = pred.chunk(2)
                pred = cfg_combine(pred_text, pred_uncond, guidance_scale)
                if guidance_rescale > 0:
                    pred = rescale_noise_cfg(pred, pred_text, guidance_rescale)
            z = self.scheduler.step(pred, t, z, **step_kw).prev_sample
            if m is not None:  # keep the known region: the image's latents noised to the next timestep
                keep = known
                if i < len(timesteps) - 1:
                    keep = self._add_noise(known, noise, timesteps[i + 1 : i + 2].repeat(b))
                z = (1 - m) * keep + m * z
            if return_intermediates:
                out.intermediates.append(z.cpu())
                out.timesteps.append(int(t))
            if callback is not None:
                callback(i, int(t), z)

        # 5. decode
        out.latents = z
        if output_type == "latent":
            out.images = z
            return out
        x = self.vae.decode(z / s).sample.clamp(-1, 1)  # (B, C, H, W)
        if output_type == "pil":
            arr = ((x + 1) * 127.5).round().to(torch.uint8).cpu().permute(0, 2, 3, 1).numpy()
            out.images = [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a) for a in arr]
        else:
            out.images = x
        return out

    # ---------------------------------------------------------------------------------------------- save / load

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """One folder per component (safetensors + JSON) and ``model_index.json``, laid out like diffusers'.

        Each component is written atomically and ``model_index.json`` last, so an interrupted save leaves a folder
        that :meth:`from_pretrained` refuses (no index) rather than a silent mix of old and new parts.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in self._components[:-1]:  # vae, text_encoder, tokenizer, unet / transformer
            getattr(self, name).save_pretrained(directory / name)
        (directory / "scheduler").mkdir(exist_ok=True)
        config = {"_class_name": type(self.scheduler).__name__, "_module": type(self.scheduler).__module__}
        config.update(dict(self.scheduler.config))
        write_json_atomic(directory / "scheduler" / "scheduler_config.json", config)
        index = {"_class_name": type(self).__name__}
        index.update(
            {n: [type(getattr(self, n)).__module__, type(getattr(self, n)).__name__] for n in self._components}
        )
        write_json_atomic(directory / "model_index.json", index)
        return directory

    @staticmethod
    def _denoiser_class():

        return UNet

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, scheduler=None, device=None) -> TinyStableDiffusionPipeline:
        """Load a folder written by :meth:`save_pretrained`; ``scheduler`` replaces the stored one."""

        directory = Path(directory)
        if not (directory / "model_index.json").is_file():
            raise FileNotFoundError(
                f"{directory} holds no model_index.json: is it a folder written by save_pretrained?"
            )
        stored = json.loads((directory / "model_index.json").read_text("utf-8")).get("_class_name")
        if stored != cls.__name__:
            raise ValueError(f"{directory} holds a {stored}: load it with {stored}.from_pretrained(...)")
        if scheduler is None:
            scheduler = _load_scheduler(directory / "scheduler" / "scheduler_config.json")
        name = cls._components[3]  # "unet" or "transformer"
        return cls(
            AutoencoderKL.from_pretrained(directory / "vae", device=device),
            TextEncoder.from_pretrained(directory / "text_encoder", device=device).eval(),
            WordTokenizer.from_pretrained(directory / "tokenizer"),
            cls._denoiser_class().from_pretrained(directory / name, device=device).eval(),
            scheduler,
        )
