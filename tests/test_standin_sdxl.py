"""The SDXL base and refiner stand-ins trained on MNIST (``data/pretrained/sdxl_mnist``, ``sdxl_refiner_mnist``):
they load through ``bridge.load_pipeline(..., standin="trained")`` offline, draw the prompt's digit through the real
``pipe(...)`` call, the hand-written loop equals ``pipe(...)`` on them, half precision gives finite images, and the
micro-conditioning and the refiner do what SDXL's do (measured, at small n; the full figures are in recipe.json and
benchmarks/results/standin_sdxl.json)."""

from __future__ import annotations

import contextlib
import io
import json

import diffusers
import pytest
import torch

from diffusion_lab import bridge
from diffusion_lab.bridge import standin_sdxl as S
from diffusion_lab.bridge import standin_sdxl_eval as E
from diffusion_lab.mnist.captions import thickness
from diffusion_lab.mnist.classifier import load_classifier
from diffusion_lab.mnist.data import load_mnist

CALL = {
    "height": 32,
    "width": 32,
    "num_inference_steps": 12,
    "guidance_scale": 5.0,
}  # fewer steps than the notebooks' 20


def _env() -> bridge.Environment:  # a CPU with no hub
    return bridge.Environment("cpu", None, None, False, None, False, ("test",))


def _load(key: str):
    with contextlib.redirect_stdout(io.StringIO()):
        return bridge.load_pipeline(key, _env(), standin="trained")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def base():
    return _load("sdxl-base")


@pytest.fixture(scope="module")
def refiner():
    return _load("sdxl-refiner")


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


# --- the pure pieces -------------------------------------------------------------------------------------------------


def test_caption_words_are_single_tokens_and_other_text_still_tokenizes():
    tok = S.standin_tokenizer()
    for word in S.CAPTION_WORDS:
        assert len(tok.tokenize(word)) == 1, word
    assert tok.tokenize("a thick slanted three") == ["a</w>", "thick</w>", "slanted</w>", "three</w>"]
    assert len(tok.tokenize("a lighthouse")) > 2  # unknown words fall back to byte symbols
    assert tok.convert_tokens_to_ids("<|endoftext|>") == len(tok) - 1  # CLIP pools at the highest id


def test_render_canvases_crop_moves_the_digit_and_a_small_original_blurs_it():
    digits, _ = load_mnist("train", limit=16)
    n = len(digits)
    native = S.render_canvases(digits, torch.full((n,), 32), torch.zeros(n, 2))
    assert native.shape == (n, 1, 32, 32)
    torch.testing.assert_close(native[:, :, 2:30, 2:30], digits)  # native, uncropped: the MNIST digit, centred
    cropped = S.render_canvases(digits, torch.full((n,), 32), torch.tensor([[3, 5]] * n))
    torch.testing.assert_close(cropped[:, :, :24, :22], native[:, :, 3:27, 5:27])  # moved up 3 and left 5
    blurred = S.render_canvases(digits, torch.full((n,), 8), torch.zeros(n, 2))
    assert (S.sharpness(blurred) < S.sharpness(native) - 0.2).all()
    with pytest.raises(ValueError, match="original"):
        S.render_canvases(digits, torch.full((n,), 40), torch.zeros(n, 2))


def test_time_ids_are_sdxl_s_layout():
    ids = S.base_time_ids(torch.tensor([16]), torch.tensor([[2, 3]]), 32)
    assert ids.tolist() == [[16.0, 16.0, 2.0, 3.0, 32.0, 32.0]]  # (orig h, w, crop top, left, target h, w)
    ids = S.refiner_time_ids(torch.tensor([16]), torch.tensor([[2, 3]]), torch.tensor([6.5]))
    assert ids.tolist() == [[16.0, 16.0, 2.0, 3.0, 6.5]]  # (orig h, w, crop top, left, aesthetic score)


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="canvas"):
        S.SDXLStandinConfig(canvas=30)
    with pytest.raises(ValueError, match="refiner_t_max"):
        S.SDXLStandinConfig(refiner_t_max=0)
    with pytest.raises(TypeError):
        S.SDXLStandinConfig(base_steps=1.5)


def test_the_untrained_builders_are_the_real_classes_and_tiny():
    pipe = S.build_sdxl_standin()
    ref = S.build_sdxl_refiner_standin(pipe)
    assert isinstance(pipe, diffusers.StableDiffusionXLPipeline)
    assert isinstance(ref, diffusers.StableDiffusionXLImg2ImgPipeline)
    assert ref.vae is pipe.vae and ref.text_encoder_2 is pipe.text_encoder_2
    assert bridge.is_tiny(pipe) and pipe.vae_scale_factor == 4


# --- the shipped stand-ins -------------------------------------------------------------------------------------------


def test_both_load_offline_through_load_pipeline_with_their_recipe(base, refiner):
    assert isinstance(base, diffusers.StableDiffusionXLPipeline)
    assert isinstance(refiner, diffusers.StableDiffusionXLImg2ImgPipeline)
    assert bridge.is_tiny(base) and bridge.is_tiny(refiner)
    assert refiner.config.requires_aesthetics_score and base.config.force_zeros_for_empty_prompt
    for key in ("sdxl-base", "sdxl-refiner"):
        folder = bridge.trained_standin_path(key)
        recipe = json.loads((folder / "recipe.json").read_text())
        assert recipe["quality"]["adherence_w5"]["adherence"] >= 0.95 and recipe["quality"]["adherence_w5"]["n"] >= 200
        assert recipe["folder_bytes"] < 5_000_000  # 4.3 MB (base), 4.0 MB (refiner): fp32
        assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt")), "safetensors only"


def test_the_base_draws_the_prompted_digit_through_pipe(base, classifier):
    result = E.measure_adherence(base, classifier, 20, fid=False, **CALL)
    assert result["adherence"] >= 0.9, result  # random weights: about 0.1; n = 200, 20 steps: 1.0 (recipe.json)


def test_the_hand_written_loop_equals_pipe(base):
    kw = dict(num_inference_steps=8, guidance_scale=5.0, height=32, width=32, output_type="pt")
    mine = bridge.sdxl_generate(base, "a thick seven", generator=torch.Generator().manual_seed(3), **kw)
    theirs = base("a thick seven", generator=torch.Generator().manual_seed(3), **kw).images
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)


def test_crop_conditioning_moves_the_digit_up_and_left(base):
    prompts, _ = E.digit_prompts(6)
    at = {
        c: E.centroid(E.generate(base, prompts, crops_coords_top_left=c, **CALL)).mean(0)
        for c in [(0, 0), (8, 0), (0, 8)]
    }
    # SDXL: the crop window's corner moves into the source, so the content moves up (c_top) or left (c_left): -1 px/unit
    down, right = (at[(8, 0)] - at[(0, 0)]) / 8, (at[(0, 8)] - at[(0, 0)]) / 8  # (Δrow, Δcol) per unit
    assert -1.4 < down[0] < -0.6 and abs(down[1]) < 0.25, down
    assert -1.4 < right[1] < -0.6 and abs(right[0]) < 0.25, right


def test_a_small_original_size_blurs_the_digit(base, classifier):
    result = E.measure_original_size(base, classifier, 6, sizes=(8, 32), **CALL)
    blurred, sharp = result["sharpness"]
    assert sharp > blurred + 0.15, result


def test_the_refiner_hand_off_runs_and_keeps_the_digit(base, refiner, classifier):
    result = E.measure_refiner(base, refiner, classifier, 6, steps=10)
    assert result["base_then_refiner"]["adherence"] >= 0.8, result


def test_a_bf16_call_gives_finite_digits(monkeypatch):
    monkeypatch.setenv("DIFFUSION_LAB_DTYPE", "bfloat16")
    pipe = _load("sdxl-base")
    assert pipe.unet.dtype == torch.bfloat16
    out = pipe(
        "a three", generator=torch.Generator().manual_seed(0), output_type="pt", **(CALL | {"num_inference_steps": 4})
    ).images
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out.float()).all()
    assert out.float().std() > 0.1  # a digit, not a flat image


def test_the_refiner_loads_sharing_the_base_s_vae_and_second_encoder(base):
    with contextlib.redirect_stdout(io.StringIO()):  # notebook 10's call: shared components, as the real refiner
        ref = bridge.load_pipeline(
            "sdxl-refiner", _env(), standin="trained", vae=base.vae, text_encoder_2=base.text_encoder_2
        )
    assert ref.vae is base.vae and ref.text_encoder_2 is base.text_encoder_2
    latents = base("a two", denoising_end=0.8, output_type="latent", generator=torch.Generator().manual_seed(0),
                   **(CALL | {"num_inference_steps": 6})).images  # fmt: skip
    out = ref("a two", image=latents, denoising_start=0.8, num_inference_steps=6, output_type="pt").images
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


def test_training_runs_end_to_end_at_tiny_step_counts():
    cfg = S.SDXLStandinConfig(num_images=400, vae_steps=2, vae_batch=4, base_steps=2, refiner_steps=2, batch=4)
    base, refiner, bins, figures = S.train_sdxl_standin(cfg, log=lambda message: None)
    assert isinstance(base, diffusers.StableDiffusionXLPipeline)
    assert isinstance(refiner, diffusers.StableDiffusionXLImg2ImgPipeline) and refiner.unet is not base.unet
    assert refiner.vae is base.vae and bins.per_digit
    assert base.vae.config.scaling_factor != 1.0  # set from the trained latents
    assert {"vae_seconds", "base_seconds", "refiner_seconds"} <= figures.keys()


def test_a_negative_prompt_removes_an_attribute(base):
    prompts, _ = E.digit_prompts(6)
    plain = thickness(E.to_mnist(E.generate(base, prompts, **CALL)))
    negative = thickness(E.to_mnist(E.generate(base, prompts, negative_prompt="thick", **CALL)))
    assert negative.mean() < plain.mean() - 0.4, (plain, negative)  # n = 60, 20 steps: 2.44 → 1.52 px (benchmark)
