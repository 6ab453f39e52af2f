"""Our schedulers are diffusers schedulers: config save/load, from_pretrained, compatibles, custom timesteps, zero
terminal SNR, thresholding, and whole sampling loops equal to diffusers' classes run side by side; a diffusers
pipeline holding our scheduler survives save_pretrained / from_pretrained. (Written after diffusers' own
tests/schedulers/test_schedulers.py, test_scheduler_ddim.py and test_scheduler_ddpm.py.)"""

from __future__ import annotations

import json

import diffusers
import pytest
import torch

from diffusion_lab import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusion_lab.bridge.tiny import tiny_sd15
from diffusion_lab.maths.diffusion import dynamic_threshold
from diffusion_lab.maths.flow import flow_predict_x0
from diffusion_lab.pipelines.sampling import sample

PAIRS = [(DDPMScheduler, diffusers.DDPMScheduler), (DDIMScheduler, diffusers.DDIMScheduler)]
ALL_PAIRS = [*PAIRS, (FlowMatchEulerDiscreteScheduler, diffusers.FlowMatchEulerDiscreteScheduler)]
SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def _public(config) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _model(x: torch.Tensor, t) -> torch.Tensor:
    """diffusers' dummy model: a deterministic function of (x, t)."""
    t = torch.as_tensor(t, dtype=x.dtype)
    return x * t / (t + 1)


def _sample(shape=(2, 3, 8, 8), seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _loop(scheduler, n: int = 10, seed: int = 0, timesteps=None, model=_model, **step_kw) -> torch.Tensor:
    """A whole sampling loop with the dummy model; noise from a seeded generator."""
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=timesteps)
    else:
        scheduler.set_timesteps(n)
    x = _sample(seed=seed) * getattr(scheduler, "init_noise_sigma", 1.0)  # diffusers' flow scheduler has none
    g = torch.Generator().manual_seed(seed + 1)
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x  # flow: none
        x = scheduler.step(model(x_in, t), t, x, generator=g, **step_kw).prev_sample
    return x


# --- config: save_config / from_pretrained / save_pretrained / compatibles ---------------------------------------


@pytest.mark.parametrize("ours_cls,their_cls", ALL_PAIRS)
def test_save_config_writes_what_diffusers_writes(tmp_path, ours_cls, their_cls):
    kw = {"shift": 3.0} if ours_cls is FlowMatchEulerDiscreteScheduler else dict(SD, prediction_type="v_prediction")
    ours, theirs = ours_cls(**kw), their_cls(**kw)
    ours.save_config(tmp_path / "ours")
    theirs.save_config(tmp_path / "theirs")
    a = json.loads((tmp_path / "ours" / "scheduler_config.json").read_text())
    b = json.loads((tmp_path / "theirs" / "scheduler_config.json").read_text())
    assert a["_class_name"] == b["_class_name"] == their_cls.__name__
    assert a["_diffusers_version"] == diffusers.__version__
    assert a == b  # the same keys and values: either class reads the other's file


@pytest.mark.parametrize("ours_cls,their_cls", ALL_PAIRS)
def test_from_pretrained_round_trip(tmp_path, ours_cls, their_cls):
    kw = {"shift": 2.0} if ours_cls is FlowMatchEulerDiscreteScheduler else dict(SD, timestep_spacing="trailing")
    ours = ours_cls(**kw)
    ours.save_pretrained(tmp_path / "scheduler")
    again = ours_cls.from_pretrained(tmp_path, subfolder="scheduler")
    assert type(again) is ours_cls and _public(again.config) == _public(ours.config)
    torch.testing.assert_close(_loop(again), _loop(ours), atol=0, rtol=0)
    # their class reads our folder and ours reads theirs, with the same numbers
    theirs = their_cls.from_pretrained(tmp_path / "scheduler")
    torch.testing.assert_close(_loop(theirs), _loop(ours), atol=1e-6, rtol=0)
    their_cls(**kw).save_pretrained(tmp_path / "theirs")
    assert _public(ours_cls.from_pretrained(tmp_path / "theirs").config) == _public(ours.config)


@pytest.mark.parametrize("ours_cls", [DDPMScheduler, DDIMScheduler])
def test_config_reads_as_attribute_and_as_item_and_from_config_overrides(ours_cls):
    s = ours_cls(**SD)
    assert s.config.beta_schedule == s.config["beta_schedule"] == "scaled_linear"
    other = ours_cls.from_config(s.config, prediction_type="v_prediction")
    assert other.config.prediction_type == "v_prediction" and other.config.beta_end == 0.012
    assert not hasattr(other.config, "no_such_entry")


def test_compatibles_list_ours_then_diffusers():
    ddim = DDIMScheduler().compatibles
    assert ddim[:2] == [DDIMScheduler, DDPMScheduler] or ddim[:2] == [DDPMScheduler, DDIMScheduler]
    theirs = set(diffusers.DDIMScheduler().compatibles)
    assert set(ddim[2:]) == theirs  # then exactly diffusers' list (Karras-compatible schedulers)
    assert set(DDPMScheduler().compatibles) == set(ddim)
    flow = FlowMatchEulerDiscreteScheduler().compatibles
    assert flow == [FlowMatchEulerDiscreteScheduler, diffusers.FlowMatchEulerDiscreteScheduler]


def test_swap_between_compatible_classes_keeps_the_schedule():
    ours = DDIMScheduler(**SD, timestep_spacing="trailing", steps_offset=1)
    euler = diffusers.EulerDiscreteScheduler.from_config(ours.config)
    assert euler.config.timestep_spacing == "trailing" and euler.config.beta_schedule == "scaled_linear"
    back = DDIMScheduler.from_config(euler.config)
    assert _public(back.config) == _public(ours.config)
    ddpm = DDPMScheduler.from_config(ours.config)  # our DDPM from our DDIM: the schedule, not the DDIM-only keys
    torch.testing.assert_close(ddpm.alphas_cumprod, ours.alphas_cumprod, atol=0, rtol=0)
    assert "set_alpha_to_one" not in _public(ddpm.config) or ddpm.config.set_alpha_to_one is True


# --- steps and the forward process ---------------------------------------------------------------------------


@pytest.mark.parametrize("ours_cls,their_cls", PAIRS)
@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (4, 4, 5, 7), (2, 3, 2, 4, 4)])
def test_step_shapes_and_tuple_output(ours_cls, their_cls, shape):
    s = ours_cls()
    s.set_timesteps(10)
    x, t = _sample(shape), s.timesteps[0]
    out = s.step(0.1 * x, t, x, generator=torch.Generator().manual_seed(0))
    assert out.prev_sample.shape == out.pred_original_sample.shape == x.shape
    assert out[0] is out.prev_sample and out["pred_original_sample"] is out.pred_original_sample
    assert list(out.keys()) == ["prev_sample", "pred_original_sample"]
    as_tuple = s.step(0.1 * x, t, x, generator=torch.Generator().manual_seed(0), return_dict=False)
    assert type(as_tuple) is tuple and len(as_tuple) == 2
    torch.testing.assert_close(as_tuple[0], out.prev_sample, atol=0, rtol=0)


@pytest.mark.parametrize("ours_cls,their_cls", PAIRS)
def test_add_noise_equals_diffusers(ours_cls, their_cls):
    for kw in ({}, SD, dict(beta_schedule="squaredcos_cap_v2"), dict(SD, rescale_betas_zero_snr=True)):
        ours, theirs = ours_cls(**kw), their_cls(**kw)
        x0, noise = _sample((6, 2, 4, 4), 1), _sample((6, 2, 4, 4), 2)
        t = torch.tensor([0, 1, 250, 500, 998, 999])
        assert torch.equal(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t))
        assert torch.equal(ours.get_velocity(x0, noise, t), theirs.get_velocity(x0, noise, t))


# --- custom timesteps --------------------------------------------------------------------------------------------


def test_custom_timesteps_equal_diffusers_ddpm():
    custom = [900, 700, 420, 100, 1, 0]
    ours, theirs = DDPMScheduler(), diffusers.DDPMScheduler()
    ours.set_timesteps(timesteps=custom)
    theirs.set_timesteps(timesteps=custom)
    assert torch.equal(ours.timesteps, theirs.timesteps) and ours.custom_timesteps
    for t in custom:
        assert int(ours.previous_timestep(t)) == int(theirs.previous_timestep(t))
    torch.testing.assert_close(
        _loop(DDPMScheduler(), timesteps=custom), _loop(diffusers.DDPMScheduler(), timesteps=custom), atol=1e-6, rtol=0
    )


def test_custom_timesteps_ddim_steps_to_the_next_in_the_list():
    custom = [999, 600, 250, 0]
    s = DDIMScheduler(set_alpha_to_one=True, clip_sample=False)
    s.set_timesteps(timesteps=custom)
    assert s.num_inference_steps == 4 and [s.previous_timestep(t) for t in custom] == [600, 250, 0, -1]
    x, eps = _sample(), _sample(seed=5)
    out = s.step(eps, 600, x)  # the DDIM update towards ᾱ_250, as if 250 were the next evenly spaced step
    ab_t, ab_prev = s.alphas_cumprod[600], s.alphas_cumprod[250]
    x0 = (x - (1 - ab_t) ** 0.5 * eps) / ab_t**0.5
    torch.testing.assert_close(out.prev_sample, ab_prev**0.5 * x0 + (1 - ab_prev) ** 0.5 * eps)
    s.set_timesteps(10)  # back to even spacing
    assert not s.custom_timesteps and s.previous_timestep(901) == 801


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_custom_timesteps_are_checked_like_diffusers(cls):
    s = cls()
    with pytest.raises(ValueError, match="descending"):
        s.set_timesteps(timesteps=[1, 50, 200])
    with pytest.raises(ValueError, match="descending"):
        s.set_timesteps(timesteps=[500, 500, 1])
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        s.set_timesteps(timesteps=[1000, 1])
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        s.set_timesteps(timesteps=[10, -1])
    with pytest.raises(ValueError, match="not both"):
        s.set_timesteps(num_inference_steps=3, timesteps=[500, 1])
    with pytest.raises(TypeError, match="integers"):
        s.set_timesteps(timesteps=[500.0, 1.0])
    with pytest.raises(TypeError, match="needs num_inference_steps"):
        s.set_timesteps()


# --- zero terminal SNR and thresholding ----------------------------------------------------------------------------


@pytest.mark.parametrize("ours_cls,their_cls", PAIRS)
def test_rescale_betas_zero_snr_equals_diffusers(ours_cls, their_cls):
    kw = dict(SD, rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing")
    ours, theirs = ours_cls(**kw), their_cls(**kw)
    assert ours.alphas_cumprod[-1] == 0 and torch.equal(ours.alphas_cumprod, theirs.alphas_cumprod)
    torch.testing.assert_close(_loop(ours), _loop(theirs), atol=1e-6, rtol=0)


@pytest.mark.parametrize("ratio,max_value", [(0.995, 1.0), (0.9, 1.5), (0.5, 4.0), (0.995, 0.5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_dynamic_threshold_equals_diffusers(ratio, max_value, dtype):
    theirs = diffusers.DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=ratio, sample_max_value=max_value)
    x0 = (3 * _sample((3, 2, 5, 5), 7)).to(dtype)
    x0[0] *= 0.1  # one sample inside [-1, 1]: s = 1, plain clipping
    ours = dynamic_threshold(x0, ratio, max_value)
    assert ours.dtype == dtype and torch.equal(ours, theirs._threshold_sample(x0))
    assert ours.abs().max() <= 1 or max_value < 1


def test_dynamic_threshold_is_clipping_when_s_is_one():
    x0 = torch.tensor([[0.2, -0.5, 0.9, 3.0]])  # the 50 % quantile of |x0| is below 1
    torch.testing.assert_close(dynamic_threshold(x0, 0.5, 2.0), x0.clamp(-1, 1))
    big = torch.tensor([[2.0, -2.0, 2.0, 4.0]])  # quantile 2 > 1: s = min(2, s_max = 1.5) = 1.5
    torch.testing.assert_close(dynamic_threshold(big, 0.5, 1.5), big.clamp(-1.5, 1.5) / 1.5)
    with pytest.raises(ValueError, match="dynamic_thresholding_ratio"):
        DDIMScheduler(thresholding=True, dynamic_thresholding_ratio=1.5)
    with pytest.raises(ValueError, match="sample_max_value"):
        DDPMScheduler(thresholding=True, sample_max_value=0.0)


@pytest.mark.parametrize("ours_cls,their_cls", PAIRS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_thresholding_loop_equals_diffusers(ours_cls, their_cls, prediction_type):
    kw = dict(thresholding=True, sample_max_value=2.0, dynamic_thresholding_ratio=0.9, prediction_type=prediction_type)
    ours, theirs = ours_cls(**kw), their_cls(**kw)

    def loud(x, t):  # an output whose x̂_0 leaves [-1, 1] far behind: the threshold s rises above 1
        return 2.5 * x

    torch.testing.assert_close(_loop(ours, model=loud), _loop(theirs, model=loud), atol=1e-6, rtol=0)
    clipped = _loop(ours_cls(prediction_type=prediction_type), model=loud)
    assert not torch.allclose(_loop(ours, model=loud), clipped)  # thresholding is not plain clipping


# --- whole loops, side by side -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ours_cls,their_cls,kw,step_kw",
    [
        (DDPMScheduler, diffusers.DDPMScheduler, {}, {}),
        (DDPMScheduler, diffusers.DDPMScheduler, dict(SD, prediction_type="v_prediction", clip_sample=False), {}),
        (DDPMScheduler, diffusers.DDPMScheduler, dict(variance_type="fixed_large", timestep_spacing="trailing"), {}),
        (DDIMScheduler, diffusers.DDIMScheduler, {}, {"eta": 0.0}),
        (DDIMScheduler, diffusers.DDIMScheduler, dict(SD, set_alpha_to_one=False, steps_offset=1), {"eta": 1.0}),
        (DDIMScheduler, diffusers.DDIMScheduler, dict(SD, timestep_spacing="trailing"), {"eta": 0.5}),
        (FlowMatchEulerDiscreteScheduler, diffusers.FlowMatchEulerDiscreteScheduler, {"shift": 3.0}, {}),
    ],
)
def test_full_loop_equals_diffusers(ours_cls, their_cls, kw, step_kw):
    for n in (1, 7, 50):
        ours, theirs = _loop(ours_cls(**kw), n, **step_kw), _loop(their_cls(**kw), n, **step_kw)
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


# --- the flow scheduler's x̂_0 ---------------------------------------------------------------------------------


def test_flow_step_reports_pred_original_sample():
    s = FlowMatchEulerDiscreteScheduler(shift=3.0)
    s.set_timesteps(5)
    x, v = _sample(), _sample(seed=3)
    out = s.step(v, s.timesteps[1], x)
    torch.testing.assert_close(out.pred_original_sample, flow_predict_x0(x, v, s.sigmas[1]), atol=0, rtol=0)
    assert out[0] is out.prev_sample and out[1] is out.pred_original_sample
    s.set_timesteps(5)
    assert len(s.step(v, s.timesteps[0], x, return_dict=False)) == 1  # (prev_sample,), as diffusers


def test_sample_with_intermediates_works_with_the_flow_scheduler():
    s = FlowMatchEulerDiscreteScheduler(shift=2.0)
    out = sample(_model, s, (2, 3, 8, 8), num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                 return_intermediates=True)  # fmt: skip
    assert len(out.intermediates) == len(out.pred_x0) == len(out.timesteps) == 4
    assert out.timesteps == s.timesteps.tolist() and isinstance(out.timesteps[0], float)
    assert torch.equal(out.pred_x0[-1], out.images)  # the last Euler step lands on σ = 0: x̂_0 itself
    ddim = sample(_model, DDIMScheduler(), (1, 3, 8, 8), num_inference_steps=3, return_intermediates=True)
    assert ddim.timesteps == [666, 333, 0] and all(isinstance(t, int) for t in ddim.timesteps)


# --- a diffusers pipeline holding our scheduler ------------------------------------------------------------------


def test_diffusers_pipeline_saves_and_loads_our_scheduler(tmp_path):
    pipe = tiny_sd15()
    # clip_sample=False as SD's: StableDiffusionPipeline.__init__ turns clip_sample off in any scheduler it loads
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing", clip_sample=False)
    pipe.set_progress_bar_config(disable=True)

    def images(p):
        return p("a cat", num_inference_steps=3, height=32, width=32, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).images  # fmt: skip

    before = images(pipe)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusion_lab.schedulers.scheduling_ddim", "DDIMScheduler"]
    saved = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "DDIMScheduler" and saved["timestep_spacing"] == "trailing"
    loaded = diffusers.DiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is DDIMScheduler
    assert _public(loaded.scheduler.config) == _public(pipe.scheduler.config)
    assert torch.equal(images(loaded), before)
