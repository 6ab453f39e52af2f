"""Latent consistency distillation (diffusion_lab.training.distill): the maths equal to diffusers' LCMScheduler and to
our DDIM step, the loop keeps the teacher frozen and trains the student, save/load, and the bad inputs."""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusion_lab.mnist.captions import fit_bins  # noqa: E402
from diffusion_lab.schedulers.scheduling_ddim import DDIMScheduler  # noqa: E402
from diffusion_lab.training.distill import (  # noqa: E402
    RECIPE_FILE,
    DistillConfig,
    boundary_scalings,
    consistency_function,
    consistency_loss,
    consistency_multistep_sample,
    consistency_target,
    distill_consistency,
    distillation_grid,
    guided_ddim_skip_step,
    lcm_scheduler_for,
    load_student,
    sample_student,
    save_student,
)
from diffusion_lab.utils.errors import FileError  # noqa: E402

TEACHER_SCHEDULE = dict(
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    prediction_type="v_prediction",
    clip_sample=False,
    timestep_spacing="trailing",
)  # fmt: skip  (the shipped tiny SD's scheduler)


def _v_teacher(pipe):
    """The random tiny pipeline made a v-prediction teacher with the shipped tiny SD's schedule."""
    pipe.scheduler = DDIMScheduler(**TEACHER_SCHEDULE)
    return pipe


@pytest.fixture
def teacher(random_tiny_pipe):
    return _v_teacher(random_tiny_pipe)


def _data(n: int = 48):
    g = torch.Generator().manual_seed(3)
    images = (torch.rand(n, 1, 28, 28, generator=g) > 0.7).float() * 2 - 1  # (n, 1, 28, 28) in {−1, 1}
    labels = torch.arange(n) % 10
    return images, labels, fit_bins(images)  # bins shared by all digits (too few images per digit)


# ----------------------------------------------------------------------------------------------- the maths


@pytest.mark.parametrize("t", [0, 1, 19, 39, 250, 499, 999])
def test_boundary_scalings_equal_diffusers(t):
    lcm = diffusers.LCMScheduler()
    want = lcm.get_scalings_for_boundary_condition_discrete(torch.tensor(t))  # step() passes a tensor timestep
    for got in (boundary_scalings(torch.tensor(t)), boundary_scalings(t)):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    c_skip, c_out = boundary_scalings(torch.tensor([0, t]))
    assert c_skip[0] == 1 and c_out[0] == 0  # f(x, 0) = x: the boundary condition


@pytest.mark.parametrize("skip", [20, 40, 100])
def test_grid_is_lcm_origin_timesteps(skip):
    n = 1000 // skip
    lcm = diffusers.LCMScheduler(original_inference_steps=n)
    lcm.set_timesteps(n)  # all N: the whole lcm_origin_timesteps, descending
    grid = distillation_grid(1000, skip)
    assert grid[0] == 0 and len(grid) == n + 1
    assert torch.equal(grid[1:].flip(0), lcm.timesteps)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon", "sample"])
def test_consistency_function_is_lcm_step_denoised(prediction_type):
    lcm = diffusers.LCMScheduler(**{k: v for k, v in TEACHER_SCHEDULE.items() if k != "timestep_spacing"}
                                 | {"prediction_type": prediction_type, "original_inference_steps": 25})  # fmt: skip
    lcm.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    x, pred = torch.randn(2, 4, 7, 7, generator=g), torch.randn(2, 4, 7, 7, generator=g)
    for t in lcm.timesteps:
        want = lcm.step(pred, t, x, generator=torch.Generator().manual_seed(1)).denoised
        got = consistency_function(pred, x, t, lcm.alphas_cumprod, prediction_type)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
@pytest.mark.parametrize("w", [1.0, 3.0, 7.5])
def test_teacher_skip_step_equals_our_ddim_step(prediction_type, w):
    """With 25 trailing steps our DDIM steps t → t − 40: the skipping step k = 40 between grid points."""
    ddim = DDIMScheduler(**TEACHER_SCHEDULE | {"prediction_type": prediction_type})
    ddim.set_timesteps(25)
    grid = distillation_grid(1000, 40)
    g = torch.Generator().manual_seed(0)
    ab = ddim.alphas_cumprod
    for t in ddim.timesteps[:-1]:  # the last trailing step goes to ᾱ = 1 (set_alpha_to_one), the grid to t_0 = 0
        x, cond, uncond = (torch.randn(3, 4, 7, 7, generator=g) for _ in range(3))
        guided = uncond + w * (cond - uncond)  # classifier-free guidance, written out
        want = ddim.step(guided, t, x, eta=0.0).prev_sample
        s = int(t) - 40
        assert s in grid.tolist()
        got = guided_ddim_skip_step(x, cond, uncond, w, ab[t], ab[s], prediction_type)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_consistency_target_and_loss():
    ab = DDIMScheduler(**TEACHER_SCHEDULE).alphas_cumprod
    x = torch.randn(3, 4, 7, 7, generator=torch.Generator().manual_seed(0))
    s = torch.tensor([0, 39, 999])
    y = consistency_target(lambda xx, ss: torch.ones_like(xx), x, s, ab)
    assert torch.equal(y[0], x[0])  # f(x, 0) = x whatever the network says
    torch.testing.assert_close(y[1:], consistency_function(torch.ones_like(x[1:]), x[1:], s[1:], ab))
    a, b = torch.zeros(2, 4, 7, 7), torch.full((2, 4, 7, 7), 0.5)
    d = 196**0.5 * 0.5  # ‖a − b‖ over 196 entries
    torch.testing.assert_close(consistency_loss(a, b, 0.01), torch.tensor((d**2 + 0.01**2) ** 0.5 - 0.01))
    torch.testing.assert_close(consistency_loss(a, b, None), torch.tensor(0.25))
    with pytest.raises(ValueError, match="one shape"):
        consistency_loss(a, b[:1], None)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_pure_multistep_sampler_equals_diffusers_lcm_loop(teacher, steps):
    """Our pipeline looping diffusers' LCMScheduler = the few visible lines of consistency_multistep_sample."""
    student = teacher
    student.scheduler = lcm_scheduler_for(teacher.scheduler, 25)
    assert type(student.scheduler) is diffusers.LCMScheduler
    prompts = ["a seven", "a thick two"]
    got = sample_student(student, prompts, steps, generator=torch.Generator().manual_seed(0), output_type="latent")
    c, mask, pooled = student.encode_prompt(prompts)
    ab = student.scheduler.alphas_cumprod

    def f(x, t):
        pred = student.unet(x, t, encoder_hidden_states=c, encoder_attention_mask=mask, pooled_text=pooled)
        return consistency_function(pred, x, t, ab)

    student.scheduler.set_timesteps(steps)
    with torch.no_grad():
        want = consistency_multistep_sample(f, tuple(got.latents.shape), student.scheduler.timesteps, ab,
                                            torch.Generator().manual_seed(0))  # fmt: skip
    torch.testing.assert_close(got.latents, want, rtol=0, atol=1e-5)
    assert student.scheduler.timesteps[0] == 999


# ------------------------------------------------------------------------------------------------ the loop


def test_distill_trains_the_student_and_keeps_the_teacher_frozen(teacher):
    images, labels, bins = _data()
    before = {k: v.clone() for k, v in teacher.unet.state_dict().items()}
    cfg = DistillConfig(max_steps=12, time_budget_s=None, batch_size=16, lr=1e-3, warmup_steps=0, skip=40, seed=0)
    seen = []
    student, log = distill_consistency(teacher, bins, cfg, images=images, labels=labels, progress=False,
                                       callback=lambda step, loss, unet: seen.append(step))  # fmt: skip
    assert log["steps"] == 12 == len(log["losses"]) and seen == list(range(1, 13))
    assert log["original_inference_steps"] == 25 and log["torch_threads"] >= 1 and len(log["load_average"]) == 3
    for k, v in teacher.unet.state_dict().items():
        assert torch.equal(v, before[k]), f"the teacher's {k} changed"
    changed = [k for k, v in student.unet.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and student.unet is not teacher.unet
    assert student.text_encoder is teacher.text_encoder and student.vae is teacher.vae  # shared, frozen
    assert type(student.scheduler) is diffusers.LCMScheduler
    assert student.scheduler.config.original_inference_steps == 25
    assert student.scheduler.config.prediction_type == "v_prediction"
    first, last = sum(log["losses"][:3]) / 3, sum(log["losses"][-3:]) / 3
    assert all(map(lambda v: v == v, log["losses"])) and last < first  # finite, and it learns


def test_distill_is_reproducible_with_one_config(teacher):
    images, labels, bins = _data(32)
    cfg = DistillConfig(max_steps=3, time_budget_s=None, batch_size=8, seed=5)
    a, la = distill_consistency(teacher, bins, cfg, images=images, labels=labels, progress=False)
    b, lb = distill_consistency(teacher, bins, cfg, images=images, labels=labels, progress=False)
    assert la["losses"] == lb["losses"]
    for (k, v), w in zip(a.unet.state_dict().items(), b.unet.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


def test_time_budget_stops_the_loop(teacher):
    images, labels, bins = _data(32)
    cfg = DistillConfig(max_steps=None, time_budget_s=1e-6, batch_size=8)
    timed, log = distill_consistency(teacher, bins, cfg, images=images, labels=labels, progress=False)
    assert log["steps"] == 1  # at least one step, then the budget is spent
    # the lr schedule does not depend on the budget: max_steps = the steps reached gives the same weights
    cfg = DistillConfig(max_steps=log["steps"], time_budget_s=None, batch_size=8)
    counted, _ = distill_consistency(teacher, bins, cfg, images=images, labels=labels, progress=False)
    for (k, v), w in zip(timed.unet.state_dict().items(), counted.unet.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


# -------------------------------------------------------------------------------------------- save / load


def test_save_load_round_trip(teacher, tmp_path):
    images, labels, bins = _data(32)
    cfg = DistillConfig(max_steps=2, time_budget_s=None, batch_size=8)
    student, log = distill_consistency(teacher, bins, cfg, images=images, labels=labels, progress=False)
    folder = save_student(student, bins, tmp_path / "lcm", {**log, "measured": {"x": 1}})
    recipe = json.loads((folder / RECIPE_FILE).read_text())
    assert recipe["steps"] == 2 and recipe["config"] == cfg.to_dict() and "losses" not in recipe
    assert recipe["original_inference_steps"] == 10 == 1000 // cfg.skip and recipe["measured"] == {"x": 1}
    assert list((folder / "unet").glob("*.safetensors")) and not list(folder.rglob("*.bin"))
    loaded, loaded_bins, loaded_recipe = load_student(folder)
    assert loaded_recipe == recipe and loaded_bins.to_dict() == bins.to_dict()
    assert type(loaded.scheduler) is diffusers.LCMScheduler
    assert loaded.scheduler.config.original_inference_steps == 10
    for (k, v), w in zip(student.unet.state_dict().items(), loaded.unet.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    kw = dict(generator=torch.Generator().manual_seed(0), output_type="latent")
    want = sample_student(student, ["a one"], 2, **kw).latents
    kw["generator"] = torch.Generator().manual_seed(0)
    torch.testing.assert_close(sample_student(loaded, ["a one"], 2, **kw).latents, want, rtol=0, atol=0)


def test_load_student_bad_folders(teacher, tmp_path):
    with pytest.raises(FileNotFoundError, match="save_student"):
        load_student(tmp_path)
    (tmp_path / RECIPE_FILE).write_text("{not json")
    with pytest.raises(FileError, match="save the student again"):
        load_student(tmp_path)


# ---------------------------------------------------------------------------------------------- bad input


def test_more_steps_than_distilled_is_a_clear_error(teacher):
    teacher.scheduler = lcm_scheduler_for(teacher.scheduler, 4)  # a student distilled on N = 4 timesteps
    with pytest.raises(ValueError, match=r"more than the 4 timesteps this student was distilled on.*1 … 4"):
        sample_student(teacher, "a one", 5)
    with pytest.raises(ValueError, match="num_inference_steps must be >= 1"):
        sample_student(teacher, "a one", 0)
    with pytest.raises(TypeError, match="num_inference_steps must be an integer"):
        sample_student(teacher, "a one", 2.0)
    with pytest.raises(ValueError, match="guidance folded in"):
        sample_student(teacher, "a one", 2, guidance_scale=3.0)


def test_sample_student_rejects_a_teacher(teacher):
    with pytest.raises(ValueError, match="not LCMScheduler"):
        sample_student(teacher, "a one", 2)


@pytest.mark.parametrize(
    "field, value, exc, phrase",
    [
        ("skip", 0, ValueError, "skip must be a positive integer"),
        ("skip", 2.5, TypeError, "skip must be an integer"),
        ("max_steps", 0, ValueError, "max_steps"),
        ("batch_size", 0, ValueError, "batch_size"),
        ("guidance_scale", -1.0, ValueError, "guidance_scale"),
        ("lr", 0.0, ValueError, "lr"),
        ("ema_decay", 1.0, ValueError, "ema_decay"),
        ("huber_c", -0.1, ValueError, "huber_c must be >= 0"),
        ("time_budget_s", 0.0, ValueError, "time_budget_s must be > 0"),
    ],
)
def test_config_bad_values(field, value, exc, phrase):
    with pytest.raises(exc, match=phrase):
        DistillConfig(**{field: value})


def test_config_needs_a_stop():
    with pytest.raises(ValueError, match="max_steps or time_budget_s"):
        DistillConfig(max_steps=None, time_budget_s=None)


@pytest.mark.parametrize("skip, phrase", [(30, "must divide"), (1000, "must divide"), (0, "skip must be >= 1")])
def test_grid_bad_skip(skip, phrase):
    with pytest.raises(ValueError, match=phrase):
        distillation_grid(1000, skip)


def test_distill_bad_arguments(teacher):
    images, labels, bins = _data(16)
    with pytest.raises(TypeError, match="config must be a DistillConfig"):
        distill_consistency(teacher, bins, {"max_steps": 1}, images=images, labels=labels)
    with pytest.raises(TypeError, match="teacher_pipe must be a TinyStableDiffusionPipeline"):
        distill_consistency(object(), bins, DistillConfig(max_steps=1), images=images, labels=labels)
    with pytest.raises(ValueError, match="pass labels"):
        distill_consistency(teacher, bins, DistillConfig(max_steps=1), images=images)
    with pytest.raises(ValueError, match="must divide"):
        distill_consistency(teacher, bins, DistillConfig(max_steps=1, skip=30), images=images, labels=labels)
    with pytest.raises(ValueError, match="guidance_scale must be >= 0"):
        guided_ddim_skip_step(images[:1], images[:1], images[:1], -1.0, 0.5, 0.6)
    with pytest.raises(TypeError, match="integer timesteps"):
        boundary_scalings(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="original_inference_steps must be >= 1"):
        lcm_scheduler_for(teacher.scheduler, 0)


def test_shipped_student_matches_the_default_config():
    """data/pretrained/tiny_sd_lcm is the run DistillConfig() reproduces: same steps, same settings, N = T / k."""
    student, bins, recipe = load_student()
    default = DistillConfig().to_dict()
    assert recipe["steps"] == default["max_steps"]
    same = {k: v for k, v in recipe["config"].items() if k not in ("max_steps", "time_budget_s")}
    assert same == {k: v for k, v in default.items() if k not in ("max_steps", "time_budget_s")}
    assert (
        student.scheduler.config.original_inference_steps
        == recipe["original_inference_steps"]
        == 1000 // default["skip"]
    )
    out = sample_student(student, ["a seven", "a thick two"], 2, generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (2, 1, 28, 28)
