"""The x4 upscaler stand-in trained on MNIST (``data/pretrained/sd_x4_upscaler_mnist``): it loads through
``bridge.load_pipeline(..., standin="trained")`` as the real ``StableDiffusionUpscalePipeline``, turns 8×8 block means
into 32×32 digits better than bicubic interpolation (PSNR and the classifier's accuracy), runs in bf16; the
reparametrised autoencoder decodes exactly as the original; a training smoke run."""

from __future__ import annotations

import contextlib
import dataclasses
import io

import diffusers
import pytest
import torch

from diffusion_lab import bridge
from diffusion_lab.bridge import standin_sd15 as sd
from diffusion_lab.bridge import standin_upscaler as up
from diffusion_lab.mnist.classifier import load_classifier
from diffusion_lab.mnist.data import load_mnist

KEY, FOLDER = "sd-x4-upscaler", "sd_x4_upscaler_mnist"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _load():
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()):
        if bridge.MODELS[KEY].trained != FOLDER:  # the card names the folder (set here too, independent of hub.py)
            mp.setitem(bridge.MODELS, KEY, dataclasses.replace(bridge.MODELS[KEY], trained=FOLDER))
        env = bridge.Environment("cpu", None, None, False, None, False, ("test",))
        return bridge.load_pipeline(KEY, env, standin="trained")


@pytest.fixture(scope="module")
def pipe():
    return _load()


def test_it_loads_offline_as_the_real_class(pipe):
    assert type(pipe) is diffusers.StableDiffusionUpscalePipeline
    assert pipe.vae_scale_factor == 4 and pipe.vae.config.scaling_factor == up.UPSCALER_SCALING
    facts = bridge.conditioning_facts(pipe)
    assert all(f.holds for f in facts), [str(f) for f in facts]


def test_it_beats_bicubic_without_a_prompt(pipe):
    images, labels = load_mnist("test", limit=40)
    r = up.measure_upscaler(pipe, load_classifier(), images, labels, num_inference_steps=10, with_prompt=False)
    print({k: v for k, v in r.items() if k != "images"})
    assert r["upscaler"]["accuracy"] >= r["bicubic"]["accuracy"] + 0.25, r  # it reads the 8×8 input, no prompt
    assert r["upscaler"]["psnr_db"] >= r["bicubic"]["psnr_db"] - 0.5, r  # sharp strokes, as close as the blur
    upscaled, bicubic, nearest = r["images"]
    assert upscaled.shape == bicubic.shape == nearest.shape == (40, 1, 28, 28)


def test_a_bf16_call_gives_finite_images(monkeypatch):
    monkeypatch.setenv("DIFFUSION_LAB_DTYPE", "bfloat16")
    pipe = _load()
    assert pipe.unet.dtype == torch.bfloat16
    low = (up.low_res_of(sd.to_canvas(load_mnist("test", limit=2)[0])) + 1) / 2  # (2, 3, 8, 8) in [0, 1]
    out = pipe(["a seven", "a two"], image=low, num_inference_steps=4, output_type="pt",
               generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out.float()).all()


def test_rescaled_latents_decode_to_the_same_images():
    base = sd.build_sd15_standin()
    k = 3.7
    scaled = up.rescale_latents(base.vae, k)
    x = sd.to_canvas(load_mnist("test", limit=3)[0])
    with torch.no_grad():
        z, z_k = base.vae.encode(x).latent_dist, scaled.encode(x).latent_dist
        torch.testing.assert_close(z_k.mean, k * z.mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(z_k.std, k * z.std, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(scaled.decode(z_k.mean).sample, base.vae.decode(z.mean).sample, atol=1e-5, rtol=0)
    assert up.low_res_of(x).shape == (3, 3, 8, 8)


def test_config_checks_and_a_training_smoke_run():
    with pytest.raises(TypeError, match="steps"):
        up.UpscalerStandinConfig(steps=2.5)
    with pytest.raises(ValueError, match="lr"):
        up.UpscalerStandinConfig(lr=-1.0)
    images, labels = load_mnist("train", limit=400)
    cfg = up.UpscalerStandinConfig(num_images=400, steps=2, batch_size=8)
    pipe, info = up.train_upscaler_standin(sd.build_sd15_standin(), cfg, images=images, labels=labels)
    assert info["steps"] == 2 and len(info["losses"]) == 2
    assert pipe.unet.config.in_channels == 7 and pipe.unet.config.num_class_embeds == cfg.max_noise_level + 1
