"""The SD3 stand-in trained on MNIST (``data/pretrained/sd3_mnist``, :mod:`diffusion_lab.bridge.standin_sd3`): it
loads through ``bridge.load_pipeline(..., standin="trained")`` offline, draws the prompt's digit through the real
``StableDiffusion3Pipeline`` call, equals the course's hand-written loop, runs in bf16, and reads long prompts
through T5 (dropping T5 loses what CLIP's window cuts off); the pure pieces of the recipe behave."""

from __future__ import annotations

import contextlib
import io
import json
import warnings

import diffusers
import pytest
import torch

from diffusion_lab import bridge
from diffusion_lab.bridge import standin_sd3 as sd3
from diffusion_lab.mnist.captions import DIGIT_NAMES
from diffusion_lab.mnist.classifier import load_classifier
from diffusion_lab.mnist.metrics import prompt_adherence

CALL = dict(height=32, width=32, num_inference_steps=20, guidance_scale=7.0, max_sequence_length=32)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on the shared 2-core machine two threads waiting on each other were 5x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _env() -> bridge.Environment:  # a CPU with no hub
    return bridge.Environment("cpu", None, None, False, None, False, ("test",))


def _load(monkeypatch=None, dtype: str | None = None):
    if dtype is not None:
        monkeypatch.setenv("DIFFUSION_LAB_DTYPE", dtype)
    with contextlib.redirect_stdout(io.StringIO()):
        pipe = bridge.load_pipeline("sd3-medium", _env(), standin="trained")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    diffusers.utils.logging.set_verbosity_error()
    return _load()


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


@pytest.fixture(scope="module")
def bins():
    return sd3.load_bins(bridge.trained_standin_path("sd3-medium"))


def test_the_shipped_standin_loads_offline_as_the_real_classes_and_is_small(pipe):
    assert isinstance(pipe, diffusers.StableDiffusion3Pipeline)
    assert isinstance(pipe.transformer, diffusers.SD3Transformer2DModel)
    assert type(pipe.text_encoder).__name__ == type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert type(pipe.text_encoder_3).__name__ == "T5EncoderModel"
    assert isinstance(pipe.scheduler, diffusers.FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == 3
    assert pipe.vae.config.latent_channels == 16 and pipe.vae_scale_factor == 4 and bridge.is_tiny(pipe)
    assert pipe.vae.config.shift_factor != 0.0609  # SD3's value replaced by the trained latents' own mean
    folder = bridge.trained_standin_path("sd3-medium")
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 4e6
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pkl", ".ckpt")], "safetensors only"
    recipe = json.loads((folder / sd3.RECIPE_FILE).read_text())
    assert recipe["step_counts"]["transformer_and_text_encoders"] == recipe["config"]["steps"]
    assert (
        recipe["quality"]["digit_prompts"]["n"] >= 200 and recipe["quality"]["digit_prompts"]["digit_adherence"] >= 0.95
    )


def test_the_pipeline_call_draws_the_prompted_digit(pipe, classifier):
    digits = torch.arange(40) % 10
    images = sd3.pipeline_digits(pipe, [f"a {DIGIT_NAMES[int(d)]}" for d in digits], seed=0, **CALL)
    assert images.shape == (40, 1, 28, 28)
    assert prompt_adherence(images, digits, classifier) >= 0.9  # random weights: ~0.1


def test_the_hand_written_loop_equals_the_pipeline_call(pipe):
    kw = dict(CALL, num_inference_steps=6)
    a = pipe("a thick seven", generator=torch.Generator().manual_seed(3), output_type="pt", **kw).images
    b = bridge.sd3_generate(pipe, "a thick seven", generator=torch.Generator().manual_seed(3), output_type="pt", **kw)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_a_bf16_call_gives_finite_digits(monkeypatch, classifier):
    pipe = _load(monkeypatch, "bfloat16")
    assert pipe.transformer.dtype == torch.bfloat16
    digits = torch.arange(10)
    out = pipe([f"a {DIGIT_NAMES[int(d)]}" for d in digits], generator=torch.Generator().manual_seed(0),
               output_type="pt", **CALL).images  # fmt: skip
    assert torch.isfinite(out.float()).all()
    assert prompt_adherence(sd3.from_canvas(out), digits, classifier) >= 0.7


def test_dropping_t5_loses_what_clips_window_cuts_off(pipe, classifier, bins):
    """Long prompts "a large thick slanted seven": CLIP's 9-token window keeps "a large t", so only T5 reads the
    thickness and slant words and the digit name (recipe.json, n = 2 x 200: digit adherence 0.775 with T5, 0.115
    without; thickness 0.975 → 0.48, chance); the size word lies inside the window and survives (0.95 → 0.98)."""
    digits = torch.arange(40) % 10
    long = sd3.long_prompts(digits, torch.Generator().manual_seed(5))
    kept = sd3.measure_prompts(pipe, long, digits, classifier, bins, seed=0, **CALL)
    dropped = sd3.measure_prompts(sd3.drop_t5(pipe), long, digits, classifier, bins, seed=0, **CALL)
    assert kept["digit_adherence"] - dropped["digit_adherence"] >= 0.3
    assert dropped["digit_adherence"] <= 0.3  # chance is 0.1
    assert kept["attribute_thickness"] - dropped["attribute_thickness"] >= 0.25  # past the window: lost
    assert kept["attribute_adherence"] - dropped["attribute_adherence"] >= 0.1
    assert min(kept["attribute_size"], dropped["attribute_size"]) >= 0.8  # inside the window: kept (chance 0.5)


def test_clips_window_cuts_every_long_caption_before_its_digit_and_t5_reads_it_whole(pipe):
    digits = torch.arange(100) % 10
    long = sd3.long_prompts(digits, torch.Generator().manual_seed(0))
    window = pipe.tokenizer.model_max_length
    assert pipe.tokenizer_2.model_max_length == window < 77
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for prompt, d in zip(long, digits.tolist(), strict=True):
            seen = pipe.tokenizer.decode(pipe.tokenizer(prompt, truncation=True).input_ids, skip_special_tokens=True)
            assert DIGIT_NAMES[d] not in seen and len(pipe.tokenizer(prompt).input_ids) > window
            size_word, thickness_word = prompt.split()[1:3]
            assert seen.replace(" ", "").startswith("a" + size_word) and thickness_word not in seen
            assert len(pipe.tokenizer_3(prompt).input_ids) <= 32  # T5 (max_sequence_length=32) reads all of it
        for name in DIGIT_NAMES:
            assert len(pipe.tokenizer(f"a {name}").input_ids) <= window  # "a seven" fits CLIP


def test_canvas_round_trip_and_errors():
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    c = sd3.to_canvas(x, 32)
    assert c.shape == (2, 3, 32, 32) and (c[..., :2, :] == -1).all()
    torch.testing.assert_close(sd3.from_canvas((c + 1) / 2), x)
    with pytest.raises(ValueError, match="images"):
        sd3.to_canvas(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="canvas"):
        sd3.to_canvas(x, 24)
    with pytest.raises(TypeError):
        sd3.from_canvas(x.numpy())
    with pytest.raises(ValueError, match="canvas"):
        sd3.SD3StandinConfig(canvas=36)
    with pytest.raises(TypeError, match="config"):
        sd3.build_sd3_standin({"canvas": 32})


def test_encoder_dropout_is_independent_per_encoder():
    keep = sd3.encoder_keep_masks(20_000, 0.464, 0.05, torch.Generator().manual_seed(0))
    assert keep.shape == (20_000, 4)
    cond = keep[:, 3]
    assert abs((~cond).float().mean() - 0.05) < 0.01
    assert keep[~cond, :3].all()  # an unconditional row reads "" through the captions, not per encoder
    rates = (~keep[cond, :3]).float().mean(0)
    assert torch.allclose(rates, torch.full((3,), 0.464), atol=0.02)
    both = (~keep[cond, 0] & ~keep[cond, 2]).float().mean()
    assert abs(both - 0.464**2) < 0.02  # independent


def test_the_condition_matches_the_pipelines_encode_prompt(pipe):
    prompts = ["a thick seven", "a large thick slanted two"]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, pooled = sd3.sd3_condition(pipe, prompts)
        theirs, _, their_pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, do_classifier_free_guidance=False,
                                                        max_sequence_length=32)  # fmt: skip
        torch.testing.assert_close(ours, theirs)
        torch.testing.assert_close(pooled, their_pooled)
        keep = torch.tensor([[True, True, False, True], [True, True, True, False]])
        dropped, _ = sd3.sd3_condition(pipe, prompts, keep)
        empty, _ = sd3.sd3_condition(pipe, ["", ""])
    assert (dropped[0, 20:] == 0).all()  # T5 dropped: zeros, as the pipeline without T5
    torch.testing.assert_close(dropped[1], empty[1])  # unconditional: "" everywhere


def test_a_few_training_steps_run_and_set_sd3s_latent_factors():
    cfg = sd3.SD3StandinConfig(num_images=600, bins_images=600, vae_steps=2, vae_batch_size=4, steps=2,
                               batch_size=4, warmup_steps=1)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe, info = sd3.train_sd3_standin(cfg)
    assert torch.isfinite(torch.tensor(info["final_loss"]))
    assert pipe.vae.config.shift_factor == pytest.approx(info["shift_factor"])
    assert pipe.vae.config.scaling_factor == pytest.approx(info["scaling_factor"])
    assert not pipe.transformer.training and not any(p.requires_grad for p in pipe.transformer.parameters())
