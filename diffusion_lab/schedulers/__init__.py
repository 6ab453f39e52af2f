"""Layer 2: schedulers shaped like diffusers' (``set_timesteps``, ``step``, ``add_noise``, config save/load), each a
thin class over the pure functions of :mod:`diffusion_lab.maths`."""

from diffusion_lab.schedulers.scheduling_ddim import DDIMScheduler
from diffusion_lab.schedulers.scheduling_ddpm import DDPMScheduler
from diffusion_lab.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusion_lab.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteScheduler
from diffusion_lab.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from diffusion_lab.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from diffusion_lab.schedulers.scheduling_heun_discrete import HeunDiscreteScheduler
from diffusion_lab.schedulers.scheduling_utils import SchedulerOutput

__all__ = [
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "SchedulerOutput",
]
