"""Our Euler, Euler-ancestral, Heun and DPM-Solver++ schedulers inside the real diffusers pipelines: swapped into the
tiny SDXL and SD 1.5 pipelines of :mod:`diffusion_lab.bridge.tiny`, each gives the image diffusers' own scheduler of
the same config gives (2-3 steps, 32x32, seeded); SDXL's default scheduler is ours, built from its config.

The pipelines call ``set_timesteps(n, device=...)``, ``init_noise_sigma``, ``scale_model_input``, ``order`` and
``step(..., generator=..., return_dict=False)[0]``: these tests exercise that contract, and Euler-ancestral's noise
drawn from the pipeline's generator after the initial latents.
"""

from __future__ import annotations

import json

import diffusers
import numpy as np
import pytest
import torch

from diffusion_lab import schedulers as ours_mod
from diffusion_lab.bridge.tiny import SDXL_SCHEDULER_CONFIG, tiny_sd15, tiny_sdxl

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),  # diffusers' np.array(tensor)
]
ATOL = 1e-5  # max |ours − diffusers| over the image in [0, 1] (in practice 0)
SIZE = 32
CASES = [  # (class name, config overrides, steps)
    ("EulerDiscreteScheduler", {}, 3),
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True, "timestep_spacing": "trailing"}, 2),
    ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}, 2),  # SDXL-Turbo's
    ("HeunDiscreteScheduler", {"use_karras_sigmas": True}, 2),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, 3),  # "DPM++ 2M Karras"
    ("DPMSolverMultistepScheduler", {"solver_order": 1, "timestep_spacing": "trailing"}, 2),
]


@pytest.fixture(scope="module")
def pipes():
    return {"sdxl": tiny_sdxl(), "sd15": tiny_sd15()}


def _image(pipe, scheduler, steps: int) -> np.ndarray:
    pipe.scheduler = scheduler
    out = pipe("a photo of a cat", num_inference_steps=steps, height=SIZE, width=SIZE, guidance_scale=5.0,
               generator=torch.Generator().manual_seed(0), output_type="np")  # fmt: skip
    return out.images


@pytest.mark.parametrize("kind", ["sdxl", "sd15"])
@pytest.mark.parametrize("name,overrides,steps", CASES)
def test_ours_in_the_pipeline_gives_diffusers_image(pipes, kind, name, overrides, steps):
    pipe = pipes[kind]
    config = SDXL_SCHEDULER_CONFIG if kind == "sdxl" else pipe.scheduler.config  # SD 1.5: leading, offset 1
    theirs = getattr(diffusers, name).from_config(config, **overrides)
    ours = getattr(ours_mod, name).from_config(config, **overrides)
    original = pipe.scheduler
    try:
        expected = _image(pipe, theirs, steps)
        got = _image(pipe, ours, steps)
    finally:
        pipe.scheduler = original
    assert np.isfinite(expected).all() and expected.std() > 1e-3
    assert float(np.abs(got - expected).max()) <= ATOL


def test_sdxl_default_scheduler_is_ours(pipes):
    """SDXL base ships EulerDiscreteScheduler (leading spacing, offset 1, scaled_linear): ours from the pipeline's
    own scheduler config has the same config, timesteps and σ, and gives the same image."""
    pipe = pipes["sdxl"]
    theirs = pipe.scheduler
    assert type(theirs) is diffusers.EulerDiscreteScheduler
    ours = ours_mod.EulerDiscreteScheduler.from_config(theirs.config)
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert public(ours.config) == public(diffusers.EulerDiscreteScheduler.from_config(theirs.config).config)
    for n in (2, 25):
        ours.set_timesteps(n)
        theirs.set_timesteps(n)
        assert torch.equal(ours.timesteps, theirs.timesteps) and torch.equal(ours.sigmas, theirs.sigmas)
    assert ours.timesteps[:3].tolist() == [961.0, 921.0, 881.0]  # leading + offset 1 over 25 steps
    try:
        expected = _image(pipe, theirs, 3)
        got = _image(pipe, ours, 3)
    finally:
        pipe.scheduler = theirs
    assert float(np.abs(got - expected).max()) <= ATOL


@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "EulerAncestralDiscreteScheduler"])
def test_pipeline_saves_and_loads_our_scheduler(pipes, tmp_path, name):
    """As for our DDIM (tests/test_scheduler_api.py): ``pipe.save_pretrained`` records our class and module, and
    ``DiffusionPipeline.from_pretrained`` builds our scheduler again, with the same config and image."""
    pipe = pipes["sd15"]
    original = pipe.scheduler
    pipe.scheduler = getattr(ours_mod, name).from_config(original.config, timestep_spacing="trailing")
    try:
        before = _image(pipe, pipe.scheduler, 2)
        pipe.save_pretrained(tmp_path)
    finally:
        scheduler, pipe.scheduler = pipe.scheduler, original
    module = "dpmsolver_multistep" if name.startswith("DPM") else "euler_ancestral_discrete"
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == [f"diffusion_lab.schedulers.scheduling_{module}", name]
    loaded = diffusers.DiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is type(scheduler)
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(scheduler.config)
    assert float(np.abs(_image(loaded, loaded.scheduler, 2) - before).max()) == 0.0
