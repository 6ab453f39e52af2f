"""The tiny Stable Diffusion 3 pipeline (MMDiT + flow matching) with the call signature of diffusers' ``StableDiffusion3Pipeline``."""

from __future__ import annotations

import torch

from diffusion_lab.models.autoencoder import AutoencoderKL
from diffusion_lab.models.mmdit import MMDiT, pad_to_patch
from diffusion_lab.models.text_encoder import TextEncoder, WordTokenizer
from diffusion_lab.pipelines.stable_diffusion import TinyStableDiffusionPipeline

__all__ = ["TinySD3Pipeline"]


class TinySD3Pipeline(TinyStableDiffusionPipeline):
    """The same pipeline with SD3's two changes (diffusers' ``StableDiffusion3Pipeline``): an MMDiT ``transformer``
    (:class:`~diffusion_lab.models.mmdit.MMDiT`) that predicts the velocity v = ε − z_0, and rectified-flow sampling with
    :class:`~diffusion_lab.schedulers.scheduling_flow_match_euler_discrete.FlowMatchEulerDiscreteScheduler` (or diffusers' own).

    - the transformer receives t = timestep / num_train_timesteps ∈ [0, 1] (the scheduler's timesteps are 1000·σ);
    - classifier-free guidance combines velocities with the same formula, v_∅ + w·(v_c − v_∅);
    - img2img and inpainting put the image on the straight path, z_σ = (1 − σ)·z_0 + σ·ε (``scheduler.scale_noise``);
    - latents whose side is not a multiple of the patch size (7×7 with p = 2) are zero-padded at the bottom and
      right before the transformer (:func:`~diffusion_lab.models.mmdit.pad_to_patch`, 7×7 → 8×8) and its output is cropped
      back; training pads the same way, so the border is always 0 and never part of the loss.
    """

    _component_classes = {
        "vae": AutoencoderKL, "text_encoder": TextEncoder, "tokenizer": WordTokenizer, "transformer": MMDiT,
        "scheduler": None,
    }  # fmt: skip
    _denoiser_name = "transformer"

    def __init__(self, vae, text_encoder, tokenizer, transformer, scheduler):
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, scheduler=scheduler
        )
        if transformer.config.joint_attention_dim is None:
            raise ValueError("the transformer needs a text stream: build it with MMDiTConfig(joint_attention_dim=...)")
        self.check_denoiser_reads_latents()
        if not hasattr(scheduler, "scale_noise"):
            raise ValueError(
                f"{type(scheduler).__name__} is not a flow-matching scheduler: use FlowMatchEulerDiscreteScheduler "
                "(the transformer predicts a velocity, not ε)"
            )

    @property
    def latent_multiple(self) -> int:
        """The autoencoder factor alone: the transformer pads latents to its patch size itself."""
        return self.vae_scale_factor

    def _predict(self, z, t, c, mask, pooled, step=0, num_steps=1):
        cfg = self.transformer.config
        h, w = z.shape[-2:]
        t01 = torch.as_tensor(t, dtype=z.dtype, device=z.device) / self.scheduler.config.num_train_timesteps
        t01 = t01.clamp(0, 1).reshape(-1).expand(z.shape[0])  # (B,) flow time
        v = self.transformer(
            pad_to_patch(z, cfg.patch_size), t01, encoder_hidden_states=c, encoder_attention_mask=mask,
            pooled_projections=pooled if cfg.pooled_projection_dim else None,
        )  # fmt: skip
        return v[..., :h, :w]  # (B, L, h, w)

    def _add_noise(self, z0, noise, t):
        return self.scheduler.scale_noise(z0, t, noise)  # (1 − σ)·z_0 + σ·ε
