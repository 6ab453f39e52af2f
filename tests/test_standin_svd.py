"""The Stable Video Diffusion stand-in trained on moving MNIST digits (``data/pretrained/svd_mnist``): it loads through
``bridge.load_pipeline("svd", ..., standin="trained")`` offline, the real ``pipe(image, ...)`` call keeps the first
frame's digit and moves it right (the random tiny SVD does not), a bf16 call is finite. Plus the pure pieces (clips,
centroids, the EDM preconditioning checked against the pipeline's own scheduler) and a training smoke run."""

from __future__ import annotations

import contextlib
import dataclasses
import io

import diffusers
import pytest
import torch

from diffusion_lab import bridge
from diffusion_lab.bridge import standin_svd as sv
from diffusion_lab.bridge.family import load_family_pipeline
from diffusion_lab.mnist.classifier import classify, load_classifier
from diffusion_lab.mnist.data import load_mnist

FOLDER = "svd_mnist"
FLOOR_IDENTITY, FLOOR_DX = 0.9, 4.5  # shipped: 1.0 and 5.96 px (of 6) at n = 16, 6 steps; random tiny SVD: 0.0, 0.1 px


def _env() -> bridge.Environment:  # a CPU with no hub
    return bridge.Environment("cpu", None, None, False, None, False, ("test",))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _with_card(mp) -> None:
    """The card names the trained folder (set here too, so the test does not depend on hub.py's copy)."""
    card = bridge.MODELS["svd"]
    if card.trained != FOLDER:
        mp.setitem(bridge.MODELS, "svd", dataclasses.replace(card, trained=FOLDER))


def _load():
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()):
        _with_card(mp)
        return load_family_pipeline("svd", _env(), standin="trained")


@pytest.fixture(scope="module")
def svd():
    return _load()


def test_loads_offline_through_the_bridge(svd, monkeypatch):
    _with_card(monkeypatch)
    assert isinstance(svd, diffusers.StableVideoDiffusionPipeline)
    assert isinstance(svd.unet, diffusers.UNetSpatioTemporalConditionModel)
    assert isinstance(svd.vae, diffusers.AutoencoderKLTemporalDecoder)
    assert svd.unet.dtype == torch.float32 and bridge.is_tiny(svd) and svd.vae_scale_factor == 4
    assert svd.unet.config.in_channels == 8 and svd.scheduler.config.prediction_type == "v_prediction"
    assert all(f.suffix != ".bin" for f in bridge.trained_standin_path("svd").rglob("*"))  # safetensors only


def test_one_pipeline_call(svd):
    first = sv.moving_clips(load_mnist("test", limit=1)[0], torch.zeros(1, dtype=torch.long), 1, 2)[:, 0]
    frames = svd(sv.to_pil(first)[0], height=32, width=32, num_frames=4, num_inference_steps=4, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
    assert frames.shape == (1, 4, 3, 32, 32) and torch.isfinite(frames).all()


def test_the_digit_keeps_its_class_and_moves_right(svd):
    images, labels = load_mnist("test", limit=16)
    r = sv.measure_motion(svd, load_classifier(), images, labels, num_inference_steps=6)
    print({k: v for k, v in r.items() if k != "frames"})
    assert r["frames_read_as_the_digit"] >= FLOOR_IDENTITY, r["per_frame"]
    assert r["displacement_x_px"]["mean"] >= FLOOR_DX, r["displacement_x_px"]
    assert abs(r["displacement_y_px"]["mean"]) <= 1.0, r["displacement_y_px"]
    xs = r["centroid_x_per_frame_px"]
    assert all(b > a for a, b in zip(xs, xs[1:], strict=False)), xs  # it moves every frame, not one jump


def test_the_random_tiny_svd_does_not(svd):
    images, labels = load_mnist("test", limit=10)
    r = sv.measure_motion(bridge.tiny_svd(num_frames=4), load_classifier(), images, labels, num_inference_steps=4)
    assert r["frames_read_as_the_digit"] < 0.5 and abs(r["displacement_x_px"]["mean"]) < FLOOR_DX / 2


def test_a_bf16_call_gives_finite_frames(monkeypatch):
    monkeypatch.setenv("DIFFUSION_LAB_DTYPE", "bfloat16")
    pipe = _load()
    assert pipe.unet.dtype == pipe.vae.dtype == torch.bfloat16
    first = sv.moving_clips(load_mnist("test", limit=2)[0], torch.zeros(2, dtype=torch.long), 1, 2)[:, 0]
    frames = pipe(sv.to_pil(first), height=32, width=32, num_frames=4, num_inference_steps=4, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).frames  # fmt: skip
    assert frames.shape == (2, 4, 3, 32, 32) and torch.isfinite(frames.float()).all()


# ---------------------------------------------------------------------------------------------------- pure pieces
def test_moving_clips_and_centroids():
    images, labels = load_mnist("test", limit=6)
    clips = sv.moving_clips(images, torch.tensor([-4, -3, -2, -1, 0, 0]), 4, 2)
    assert clips.shape == (6, 4, 3, 32, 32) and clips.min() >= -1 and clips.max() <= 1
    c = sv.ink_centroid((clips + 1) / 2)  # (6, 4, 2)
    torch.testing.assert_close(c[:, 1:, 0] - c[:, :-1, 0], torch.full((6, 3), 2.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(c[..., 1] - c[:, :1, 1], torch.zeros(6, 4), atol=1e-4, rtol=0)
    digits = sv.centre_crop_digits((clips.flatten(0, 1) + 1) / 2)
    assert digits.shape == (24, 1, 28, 28)
    logits, _ = classify(digits, load_classifier())
    assert (logits.argmax(1).view(6, 4) == labels.view(-1, 1)).all()  # re-centred, the real clips read right
    assert sv.ink_centroid(torch.zeros(2, 3, 32, 32)).tolist() == [[15.5, 15.5]] * 2
    with pytest.raises(ValueError, match="images"):
        sv.moving_clips(torch.zeros(2, 1, 32, 32), torch.zeros(2), 4, 2)
    with pytest.raises(ValueError, match="offsets"):
        sv.moving_clips(images, torch.zeros(3), 4, 2)


def test_the_preconditioning_is_the_pipelines_scheduler():
    """The loss's c_in, c_noise and target F* are what SVD's EulerDiscreteScheduler does at sampling time: its
    ``scale_model_input``, its continuous timesteps, and its v-prediction ẑ_0 recovers z_0 exactly from F*."""
    scheduler = diffusers.EulerDiscreteScheduler.from_config(bridge.tiny.SVD_SCHEDULER_CONFIG)
    scheduler.set_timesteps(6)
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(1, 4, 4, 8, 8, generator=g), torch.randn(1, 4, 4, 8, 8, generator=g)
    for i, t in enumerate(scheduler.timesteps):  # in order: the scheduler counts its own steps
        sigma = scheduler.sigmas[i].reshape(1)
        c_in, c_noise = sv.edm_inputs(sigma)
        torch.testing.assert_close(c_noise[0], t, atol=1e-5, rtol=0)
        x = z0 + sigma * noise
        torch.testing.assert_close(scheduler.scale_model_input(x, t), c_in * x, atol=1e-6, rtol=1e-6)
        out = scheduler.step(sv.v_target(z0, noise, sigma), t, x)
        torch.testing.assert_close(out.pred_original_sample, z0, atol=1e-3 * max(1.0, sigma.item()), rtol=0)


def test_config_checks():
    with pytest.raises(ValueError, match="start_offsets"):
        sv.SvdStandinConfig(start_offsets=(0, 2))  # 2 + 3·2 = 8 px right: off the ink's room
    with pytest.raises(ValueError, match="steps"):
        sv.SvdStandinConfig(steps=0)
    with pytest.raises(TypeError, match="batch_size"):
        sv.SvdStandinConfig(batch_size=2.0)


def test_a_training_smoke_run():
    cfg = sv.SvdStandinConfig(num_images=8, vae_steps=1, vae_batch_clips=2, steps=2, batch_size=2)
    pipe, info = sv.train_svd_standin(cfg)
    assert len(info["losses"]) == 2 and info["scaling_factor"] > 0
    assert not pipe.unet.training and pipe.vae.config.scaling_factor == info["scaling_factor"]
