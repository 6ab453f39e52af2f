"""A tiny Stable Diffusion: autoencoder + text encoder + cross-attention U-Net + scheduler, with diffusers' call shape.

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

One call, three tasks (as diffusers' StableDiffusion, StableDiffusionImg2Img and StableDiffusionInpaint pipelines):

- text-to-image: z_T ~ N(0, I), then the scheduler's steps with guided predictions, then x = D(z_0 / s);
- img2img (``image``, ``strength`` γ): encode the image, z_0 = s·E(x); skip the first (1 − γ)·N of the N steps and
  start from the forward process at the first step kept, z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε. γ = 0 returns the image (up
  to the autoencoder's error); γ = 1 starts from pure noise and ignores it (as diffusers' inpainting pipelines do);
- inpainting (``image``, ``mask_image``): after every step, the kept region is replaced by the known latents noised
  to the next timestep, z ← (1 − m)·q(z_0 → t_next) + m·z (RePaint-style blending, diffusers' legacy inpainting).

Classifier-free guidance runs both branches as one batch [uncond; cond] (uncond first, as diffusers does). The
unconditional branch encodes the empty prompt ``""``, or the negative prompt when one is given.

Any scheduler with ``set_timesteps``, ``timesteps``, ``order``, ``init_noise_sigma``, ``scale_model_input``,
``add_noise`` and ``step(...).prev_sample`` works: ours (:class:`~diffusion_lab.schedulers.scheduling_ddim.DDIMScheduler`,
:class:`~diffusion_lab.schedulers.scheduling_ddpm.DDPMScheduler`) and diffusers' (DDIM, DDPM, Euler, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffusion_lab import schedulers

__all__ = ["PipelineOutput"]


@dataclass
class PipelineOutput:
    """``images`` (B, C, H, W) in [−1, 1] (or a list of PIL images), the final ``latents`` z_0 (already × s), and
    the intermediate latents when asked."""

    images: torch.Tensor | list
    latents: torch.Tensor
    intermediates: list[torch.Tensor] = field(default_factory=list)
    timesteps: list[int] = field(default_factory=list)

    def __getitem__(self, i):  # out[0] is the images, as with diffusers' outputs
        return (self.images, self.latents)[i]


def _load_scheduler(path: Path):
    """Our DDPM/DDIM/flow schedulers, or a diffusers scheduler by its class name."""
    config = json.loads(path.read_text("utf-8"))
    name, module = config.pop("_class_name"), config.pop("_module", "")
    if module.startswith("diffusion_lab") and name in schedulers.__all__:
        return getattr(schedulers, name).from_config(config)
    import diffusers  # lazy: only a folder that names a diffusers scheduler needs diffusers (layers below the bridge do not import it at module level)

    if not hasattr(diffusers, name):
        raise ValueError(f"unknown scheduler class {name!r} in {path}")
    return getattr(diffusers, name).from_config(config)
