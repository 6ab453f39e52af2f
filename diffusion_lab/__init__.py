"""diffusion-lab: diffusion models from first principles to Stable Diffusion XL and 3.

Light to import: torch and numpy only. Plots, widgets and diffusers are imported by the modules that need them.
"""

from diffusion_lab.autoencoder import AutoencoderConfig, AutoencoderKL
from diffusion_lab.diffusion import (
    ddim_sigma,
    ddim_step,
    ddpm_posterior,
    ddpm_step,
    predict_x0_and_eps,
    q_sample,
    q_step,
    velocity,
)
from diffusion_lab.flow import FlowMatchEulerDiscreteScheduler, flow_interpolate, flow_velocity
from diffusion_lab.mmdit import MMDiT, MMDiTConfig
from diffusion_lab.pipeline import TinySD3Pipeline, TinyStableDiffusionPipeline
from diffusion_lab.sampling import cfg_combine, drop_condition, rescale_noise_cfg
from diffusion_lab.schedulers import DDIMScheduler, DDPMScheduler, SchedulerOutput
from diffusion_lab.schedules import alphas_cumprod_from_betas, inference_timesteps, make_betas, snr, snr_db
from diffusion_lab.settings import pick, smoke_mode
from diffusion_lab.text import TextEncoder, TextEncoderConfig, WordTokenizer
from diffusion_lab.unet import UNet, UNetConfig

__version__ = "0.1.0"

__all__ = [
    "AutoencoderConfig",
    "AutoencoderKL",
    "TextEncoder",
    "TextEncoderConfig",
    "TinySD3Pipeline",
    "TinyStableDiffusionPipeline",
    "UNet",
    "UNetConfig",
    "WordTokenizer",
    "cfg_combine",
    "drop_condition",
    "rescale_noise_cfg",
    "DDIMScheduler",
    "DDPMScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "MMDiT",
    "MMDiTConfig",
    "flow_interpolate",
    "flow_velocity",
    "SchedulerOutput",
    "alphas_cumprod_from_betas",
    "ddim_sigma",
    "ddim_step",
    "ddpm_posterior",
    "ddpm_step",
    "inference_timesteps",
    "make_betas",
    "pick",
    "predict_x0_and_eps",
    "q_sample",
    "q_step",
    "smoke_mode",
    "snr",
    "snr_db",
    "velocity",
]
