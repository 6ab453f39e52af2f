"""The SD 1.5 and SD 1.5 + canny ControlNet stand-ins trained on MNIST (``data/pretrained/sd15_mnist``,
``sd15_controlnet_mnist``): they load through ``bridge.load_pipeline(..., standin="trained")`` offline, draw the digit
the prompt asks for through the real ``pipe(...)`` call, the hand-written loop equals ``pipe(...)``, bf16 works, and
the ControlNet follows edges better than the base model. Plus the pure pieces (canvas, control maps, tokenizer,
config checks) and a training smoke run."""

from __future__ import annotations

import contextlib
import dataclasses
import io

import diffusers
import pytest
import torch

from diffusion_lab import bridge
from diffusion_lab.bridge import standin_sd15 as sd
from diffusion_lab.bridge.family import load_family_pipeline
from diffusion_lab.mnist.classifier import load_classifier
from diffusion_lab.mnist.data import load_mnist

FOLDERS = {"sd15": "sd15_mnist", "sd15-controlnet-canny": "sd15_controlnet_mnist"}


def _env() -> bridge.Environment:  # a CPU with no hub
    return bridge.Environment("cpu", None, None, False, None, False, ("test",))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(autouse=True)
def cards(monkeypatch):
    """The cards name their trained folders (set here too, so the test does not depend on hub.py's copy)."""
    for key, folder in FOLDERS.items():
        card = bridge.MODELS[key]
        if card.trained != folder:
            monkeypatch.setitem(bridge.MODELS, key, dataclasses.replace(card, trained=folder))


def _load(key: str):
    with contextlib.redirect_stdout(io.StringIO()):
        return load_family_pipeline(key, _env(), standin="trained")


@pytest.fixture(scope="module")
def base():
    with pytest.MonkeyPatch.context() as mp:
        card = bridge.MODELS["sd15"]
        mp.setitem(bridge.MODELS, "sd15", dataclasses.replace(card, trained=FOLDERS["sd15"]))
        return _load("sd15")


@pytest.fixture(scope="module")
def controlled():
    with pytest.MonkeyPatch.context() as mp:
        key = "sd15-controlnet-canny"
        mp.setitem(bridge.MODELS, key, dataclasses.replace(bridge.MODELS[key], trained=FOLDERS[key]))
        return _load(key)


def test_both_load_offline_as_the_real_classes_and_stay_tiny(base, controlled):
    assert type(base) is diffusers.StableDiffusionPipeline
    assert type(controlled) is diffusers.StableDiffusionControlNetPipeline
    assert isinstance(controlled.controlnet, diffusers.ControlNetModel)
    for pipe in (base, controlled):
        assert bridge.is_tiny(pipe) and pipe.vae_scale_factor == 4
        assert pipe.unet.config.sample_size * pipe.vae_scale_factor == sd.CANVAS  # the default call size
        assert isinstance(pipe.scheduler, diffusers.PNDMScheduler)
    assert bridge.trained_standin_path("sd15").name == "sd15_mnist"
    # the ControlNet pipeline's base is the same trained base
    for k, v in base.unet.state_dict().items():
        assert torch.equal(v, controlled.unet.state_dict()[k]), k
    facts = bridge.conditioning_facts(controlled)
    assert all(f.holds for f in facts), [str(f) for f in facts]


def test_the_base_draws_the_digit_asked_for_through_pipe(base):
    result = sd.measure_adherence(base, load_classifier(), n=40, num_inference_steps=10, guidance_scale=4.0)
    print(result)
    assert result["adherence"] >= 0.85, result  # random weights: ~0.1


def test_the_hand_written_loop_equals_pipe(base, controlled):
    g = torch.Generator().manual_seed(3)
    loop = sd.sd15_generate(base, "a thick seven", num_inference_steps=8, generator=g)
    out = base("a thick seven", height=32, width=32, num_inference_steps=8, guidance_scale=4.0, output_type="pt",
               generator=torch.Generator().manual_seed(3)).images  # fmt: skip
    torch.testing.assert_close(loop, out, atol=1e-5, rtol=0)
    images, _ = load_mnist("test", limit=1)
    control = sd.edge_control(images)
    loop = sd.sd15_generate(
        controlled, "a seven", num_inference_steps=8, generator=torch.Generator().manual_seed(4), control=control,
        controlnet_conditioning_scale=0.7,
    )  # fmt: skip
    out = controlled(
        "a seven", image=control, height=32, width=32, num_inference_steps=8, guidance_scale=4.0, output_type="pt",
        generator=torch.Generator().manual_seed(4), controlnet_conditioning_scale=0.7,
    ).images  # fmt: skip
    torch.testing.assert_close(loop, out, atol=1e-5, rtol=0)


def test_the_controlnet_follows_the_edges_better_than_the_base(base, controlled):
    images, labels = load_mnist("test", limit=20)
    result = sd.edge_f1_comparison(base, controlled, images, labels, num_inference_steps=10, guidance_scale=4.0)
    print({k: v for k, v in result.items() if k != "images"})
    exact, near = result["tolerance_0"], result["tolerance_1"]
    assert near["controlnet"]["mean"] >= 0.9 and exact["controlnet"]["mean"] >= 0.55, result
    assert near["controlnet"]["mean"] >= near["base"]["mean"] + 0.1, result
    assert exact["controlnet"]["mean"] >= exact["base"]["mean"] + 0.25, result
    with_base, with_control = result["images"]
    assert with_control.shape == with_base.shape == (20, 1, 28, 28)


def test_a_bf16_call_gives_finite_digits(monkeypatch):
    monkeypatch.setenv("DIFFUSION_LAB_DTYPE", "bfloat16")
    for key in FOLDERS:
        pipe = _load(key)
        assert pipe.unet.dtype == torch.bfloat16
        kwargs = {"image": sd.edge_control(load_mnist("test", limit=2)[0])} if key != "sd15" else {}
        out = pipe(["a three", "a four"], height=32, width=32, num_inference_steps=4, output_type="pt",
                   generator=torch.Generator().manual_seed(0), **kwargs).images  # fmt: skip
        assert out.shape == (2, 3, 32, 32) and torch.isfinite(out.float()).all()


def test_canvas_control_and_prompts():
    images, _ = load_mnist("test", limit=4)
    canvas = sd.to_canvas(images)
    assert canvas.shape == (4, 3, 32, 32) and (canvas[:, :, :2] == -1).all()
    torch.testing.assert_close(sd.from_canvas((canvas + 1) / 2), images)
    control = sd.edge_control(images)
    assert control.shape == (4, 3, 32, 32) and set(control.unique().tolist()) <= {0.0, 1.0}
    assert control[:, :, :2].sum() == 0 and control[:, 2:, 2:-2, 2:-2].sum() > 0
    assert sd.digit_prompts([0, 1, 8]) == ["a zero", "a one", "an eight"]
    with pytest.raises(ValueError, match="28, 28"):
        sd.to_canvas(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="32"):
        sd.from_canvas(torch.zeros(1, 1, 28, 28))


def test_the_tokenizer_spells_each_caption_word_as_one_token():
    tok = sd.mnist_clip_tokenizer()
    for word in sd.CAPTION_WORDS:
        assert len(tok.tokenize(word)) == 1, word
    ids = tok("a small thick slanted seven", padding="max_length", max_length=16).input_ids
    assert ids[:7] == [tok.bos_token_id, *tok.convert_tokens_to_ids(["a</w>", "small</w>", "thick</w>",
                                                                       "slanted</w>", "seven</w>"]), tok.eos_token_id]  # fmt: skip
    assert tok.eos_token_id == len(tok) - 1  # CLIP pools at the highest id
    assert len(tok.tokenize("a cat")) > 2  # other words: byte-level characters


def test_config_checks():
    with pytest.raises(ValueError, match="prediction_type"):
        sd.Sd15StandinConfig(prediction_type="sample")
    with pytest.raises(TypeError, match="steps"):
        sd.Sd15StandinConfig(steps=10.0)
    with pytest.raises(ValueError, match="lr"):
        sd.Sd15StandinConfig(lr=0.0)


def test_an_untrained_controlnet_changes_nothing_and_training_runs():
    cfg = sd.Sd15StandinConfig(num_images=400, vae_steps=2, steps=2, controlnet_steps=2, batch_size=8,
                               vae_batch_size=8, controlnet_batch_size=8)  # fmt: skip
    images, labels = load_mnist("train", limit=400)
    pipe, info = sd.train_sd15_standin(cfg, images=images, labels=labels)
    assert info["denoiser_steps"] == 2 and len(info["losses"]) == 2 and info["scaling_factor"] > 0
    assert pipe.vae.config.scaling_factor == pytest.approx(info["scaling_factor"])
    untrained = sd.build_controlnet_standin(pipe)
    control = sd.edge_control(images[:2])
    a = sd.generate_digits(pipe, ["a one", "a two"], num_inference_steps=3)
    b = sd.generate_digits(untrained, ["a one", "a two"], num_inference_steps=3, control=control)
    assert torch.equal(a, b)  # zero convolutions: every residual is 0
    controlled, cinfo = sd.train_sd15_controlnet(pipe, cfg, images=images, labels=labels, bins=info["bins"])
    assert cinfo["controlnet_steps"] == 2 and controlled.unet is pipe.unet
