"""The ControlNet pipeline: a frozen tiny Stable Diffusion steered by a control map through a trained ControlNet.

Notation: c_c the control map (B or 1, C_c, H, W) in [0, 1], c_f = E(c_c) its hint features, λ the
``controlnet_conditioning_scale``, [s, e] the share of the sampling steps the control acts on. The frozen U-Net's
prediction at step i of N is ε_θ(z_t, t, c) with the ControlNet's zero-convolution residuals, times λ·k_i, added to
its skip connections and middle block (ControlNet, Zhang et al. 2023, Eq. 2), k_i = 0 when i/N < s or
(i + 1)/N > e, else 1 (diffusers' ``controlnet_keep``); guess mode gives the residuals to the conditional branch
only. Everything else (text, guidance, scheduler, decoding) is :class:`TinyStableDiffusionPipeline`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from diffusion_lab.models.autoencoder import AutoencoderKL
from diffusion_lab.models.controlnet import ControlNet
from diffusion_lab.models.text_encoder import TextEncoder, WordTokenizer
from diffusion_lab.models.unet import UNet
from diffusion_lab.pipelines.pipeline_utils import PipelineOutput
from diffusion_lab.pipelines.stable_diffusion import TinyStableDiffusionPipeline
from diffusion_lab.utils.errors import check_number
from diffusion_lab.utils.validation import check_images

__all__ = ["TinyControlNetPipeline", "controlnet_keep"]


def controlnet_keep(num_steps: int, start: float = 0.0, end: float = 1.0) -> list[float]:
    """1.0 for the sampling steps the control acts on, 0.0 for the others (diffusers' ``controlnet_keep``):
    step i of N is kept unless i/N < start or (i + 1)/N > end."""
    return [1.0 - float(i / num_steps < start or (i + 1) / num_steps > end) for i in range(num_steps)]


@dataclass
class _ControlInputs:
    """The control of one pipeline call (set by ``__call__``, read by ``_predict`` at every step)."""

    image: torch.Tensor  # (B, C_c, H, W)
    hint: torch.Tensor  # c_f = E(image) (B, C_0, h, w), computed once per call
    scale: float
    start: float
    end: float
    guess_mode: bool


class TinyControlNetPipeline(TinyStableDiffusionPipeline):
    """The tiny Stable Diffusion with a ControlNet, diffusers' ``StableDiffusionControlNetPipeline`` call shape:
    ``pipe(prompt, image=control, controlnet_conditioning_scale=1.0, control_guidance_start=0.0,
    control_guidance_end=1.0, guess_mode=False, negative_prompt=None, num_inference_steps=25, guidance_scale=3.0,
    generator=None, ...)`` → :class:`~diffusion_lab.pipelines.pipeline_utils.PipelineOutput`. ``image`` is the control map
    (B or 1, C_c, H, W) in [0, 1] (:func:`edge_map`, :func:`coarse_mask`), not an image to start from.
    """

    _component_classes = {
        "vae": AutoencoderKL, "text_encoder": TextEncoder, "tokenizer": WordTokenizer, "unet": UNet,
        "controlnet": ControlNet, "scheduler": None,
    }  # fmt: skip

    def __init__(self, vae, text_encoder, tokenizer, unet, controlnet: ControlNet, scheduler):
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler)
        if not isinstance(controlnet, ControlNet):
            raise TypeError(
                f"controlnet must be a ControlNet (ControlNet.from_unet(unet)), got {type(controlnet).__name__}"
            )
        mine, base = controlnet.config.unet, unet.config
        fields = ("in_channels", "channels", "patch_size", "cross_attention_dim", "pooled_dim", "num_classes")
        wrong = [
            f"{f}: {getattr(mine, f)} vs {getattr(base, f)}" for f in fields if getattr(mine, f) != getattr(base, f)
        ]
        if wrong:
            raise ValueError(
                f"the ControlNet was built for another U-Net ({'; '.join(wrong)}): use ControlNet.from_unet"
            )
        f = controlnet.config.hint_downsampling // base.patch_size
        if f != self.vae_scale_factor:
            raise ValueError(
                f"the ControlNet's hint network reduces control images {f}× but the autoencoder's factor is "
                f"{self.vae_scale_factor}: give conditioning_embedding_out_channels "
                f"{int(math.log2(self.vae_scale_factor * base.patch_size)) + 1} entries"
            )
        self.register_modules(controlnet=controlnet)
        self._control: _ControlInputs | None = None

    @classmethod
    def from_pipe(cls, pipe: TinyStableDiffusionPipeline, controlnet: ControlNet) -> TinyControlNetPipeline:
        """A ControlNet pipeline sharing ``pipe``'s components (diffusers' ``from_pipe``): nothing is copied."""
        return cls(pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet, controlnet, pipe.scheduler)

    def check_control(
        self,
        image: object,
        batch_size: int,
        height: int,
        width: int,
        scale: object,
        start: object,
        end: object,
        guess_mode: object = False,
    ) -> tuple[torch.Tensor, float, float, float]:
        """Validate the control arguments against the checked ``height`` and ``width``; returns the control maps
        expanded to (batch_size, C_c, H, W) and (scale, start, end) as Python floats."""
        c = self.controlnet.config.conditioning_channels
        if image is None:
            raise TypeError(f"pass the control map: image=... (a tensor (B or 1, {c}, {height}, {width}) in [0, 1], "
                            "e.g. edge_map(images) from diffusion_lab.maths.images)")  # fmt: skip
        hints = {
            "channels": ": make it grey, e.g. image.mean(dim=1, keepdim=True)" if c == 1 else "",
            "size": f": resize it with torch.nn.functional.interpolate(image, size=({height}, {width}), "
            "mode='bilinear') (or compute the control map from a 28x28 image)",
            "range": " (control maps: edge_map and coarse_mask make them): pass edge_map(images), not the images",
        }
        image = check_images(image, "the control image", channels=c, size=(height, width), batch=batch_size,
                             value_range=(0, 1), hints=hints)  # fmt: skip
        scale = check_number("controlnet_conditioning_scale", scale, minimum=0)  # 0: the base model, 1: as trained
        start, end = (
            check_number(name, value, minimum=0, maximum=1)  # a share of the sampling steps
            for name, value in (("control_guidance_start", start), ("control_guidance_end", end))
        )
        if start >= end:
            raise ValueError(
                f"control_guidance_start ({start}) must be smaller than control_guidance_end ({end}): the control "
                "acts on the steps between them (shares of the schedule, 0 = the first step)"
            )
        if not isinstance(guess_mode, bool) and type(guess_mode).__name__ != "bool_":
            raise TypeError(f"guess_mode must be True or False, got {guess_mode!r} ({type(guess_mode).__name__})")
        return image.expand(batch_size, -1, -1, -1), scale, start, end

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        image: torch.Tensor | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        height: int | None = 28,
        width: int | None = 28,
        controlnet_conditioning_scale: float = 1.0,
        control_guidance_start: float = 0.0,
        control_guidance_end: float = 1.0,
        guess_mode: bool = False,
        guidance_rescale: float = 0.0,
        eta: float | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pt",
        return_intermediates: bool = False,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
    ) -> PipelineOutput:
        """Text-to-image with the control map ``image`` (B or 1, C_c, H, W) in [0, 1]; the other arguments as
        :meth:`TinyStableDiffusionPipeline.__call__` (no img2img or inpainting here)."""
        prompts, negatives = self._prompts(prompt, negative_prompt)
        checked = self.check_inputs(  # height and width first: the control map is checked against them
            prompts, negatives, num_inference_steps, guidance_scale, height, width, None, None, None,
            guidance_rescale=guidance_rescale, eta=eta, generator=generator, output_type=output_type,
            callback=callback, latents=latents,
        )  # fmt: skip
        height, width = checked["height"], checked["width"]
        control, scale, start, end = self.check_control(
            image, len(prompts), height, width, controlnet_conditioning_scale, control_guidance_start,
            control_guidance_end, guess_mode,
        )  # fmt: skip
        image = control.to(self.device, self.controlnet.dtype)
        self._control = _ControlInputs(
            image=image, hint=self.controlnet.embed_control(image), scale=scale, start=start, end=end,
            guess_mode=bool(guess_mode),
        )  # fmt: skip
        try:
            return super().__call__(
                prompts, negative_prompt=negatives, num_inference_steps=checked["num_inference_steps"],
                guidance_scale=checked["guidance_scale"], generator=generator, height=height, width=width,
                guidance_rescale=checked["guidance_rescale"], eta=checked["eta"], latents=latents,
                output_type=output_type, return_intermediates=return_intermediates, callback=callback,
            )  # fmt: skip
        finally:
            self._control = None

    def _predict(self, z, t, c, mask, pooled, step=0, num_steps=1):
        """The frozen U-Net's prediction with the ControlNet's residuals added (Eq. 2), on the kept steps."""
        ctrl = self._control
        if ctrl is None:
            raise RuntimeError("TinyControlNetPipeline._predict runs inside __call__ only (it needs the control map)")
        scale = ctrl.scale * controlnet_keep(num_steps, ctrl.start, ctrl.end)[step]
        if scale == 0:  # outside [control_guidance_start, control_guidance_end], or λ = 0: the base model, exactly
            return super()._predict(z, t, c, mask, pooled, step, num_steps)
        pooled_in = pooled if self.unet.config.pooled_dim else None
        b = ctrl.image.shape[0]
        if z.shape[0] == 2 * b and ctrl.guess_mode:  # CFG + guess mode: the control for the conditional half only
            down, mid = self.controlnet(
                z[b:], t, c[b:], None if pooled_in is None else pooled_in[b:], None, scale,
                encoder_attention_mask=mask[b:], guess_mode=True, hint=ctrl.hint,
            )  # fmt: skip
            down, mid = [torch.cat([torch.zeros_like(r), r]) for r in down], torch.cat([torch.zeros_like(mid), mid])
        else:
            hint = ctrl.hint.repeat(z.shape[0] // b, 1, 1, 1)  # [uncond; cond] with CFG: both branches
            down, mid = self.controlnet(
                z, t, c, pooled_in, None, scale, encoder_attention_mask=mask, guess_mode=ctrl.guess_mode, hint=hint
            )
        kw = {"pooled_text": pooled} if self.unet.config.pooled_dim else {}
        return self.unet(
            z, t, encoder_hidden_states=c, encoder_attention_mask=mask, down_block_additional_residuals=down,
            mid_block_additional_residual=mid, **kw,
        )  # fmt: skip
