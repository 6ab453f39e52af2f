"""diffusion-lab: diffusion models from first principles to Stable Diffusion XL and 3.

The names used most, from every layer (see the package docstrings: utils < maths < mnist < schedulers < models <
pipelines < training < bridge < course). Importing it loads torch, numpy and diffusers' scheduler base classes (our
schedulers are diffusers schedulers); plots, widgets, transformers, peft and Accelerate load only where used.
"""

from diffusion_lab.maths.diffusion import (
    ddim_sigma,
    ddim_step,
    ddpm_posterior,
    ddpm_step,
    predict_x0_and_eps,
    q_sample,
    q_step,
    velocity,
)
from diffusion_lab.maths.flow import flow_interpolate, flow_velocity
from diffusion_lab.maths.guidance import cfg_combine, drop_condition, rescale_noise_cfg
from diffusion_lab.maths.schedules import alphas_cumprod_from_betas, inference_timesteps, make_betas, snr, snr_db
from diffusion_lab.models.autoencoder import AutoencoderConfig, AutoencoderKL
from diffusion_lab.models.mmdit import MMDiT, MMDiTConfig
from diffusion_lab.models.text_encoder import TextEncoder, TextEncoderConfig, WordTokenizer
from diffusion_lab.models.unet import UNet, UNetConfig
from diffusion_lab.pipelines.stable_diffusion import TinyStableDiffusionPipeline
from diffusion_lab.pipelines.stable_diffusion_3 import TinySD3Pipeline
from diffusion_lab.schedulers.scheduling_ddim import DDIMScheduler
from diffusion_lab.schedulers.scheduling_ddpm import DDPMScheduler
from diffusion_lab.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusion_lab.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteScheduler
from diffusion_lab.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from diffusion_lab.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from diffusion_lab.schedulers.scheduling_heun_discrete import HeunDiscreteScheduler
from diffusion_lab.schedulers.scheduling_utils import SchedulerOutput
from diffusion_lab.utils.errors import FileError
from diffusion_lab.utils.settings import pick, smoke_mode

__version__ = "0.1.0"

__all__ = [
    "FileError",
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
    "DPMSolverMultistepScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "HeunDiscreteScheduler",
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
