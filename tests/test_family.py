"""diffusion_lab.bridge.family: the x4 upscaler, ControlNet, Stable unCLIP and SVD pipelines of diffusers, run offline on
tiny stand-ins loaded through the real ``from_pretrained`` path, and the input checks that catch what diffusers
silently resizes or never checks."""

from __future__ import annotations

import contextlib
import io
import types

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_lab import bridge
from diffusion_lab.bridge import family

KEYS = {
    "sd-x4-upscaler": diffusers.StableDiffusionUpscalePipeline,
    "sd15-controlnet-canny": diffusers.StableDiffusionControlNetPipeline,
    "sd21-unclip": diffusers.StableUnCLIPImg2ImgPipeline,
    "svd": diffusers.StableVideoDiffusionPipeline,
}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _no_gpu_no_hub() -> bridge.Environment:
    return bridge.Environment("cpu", None, None, False, None, False, ("test",))


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """Each stand-in built, saved and loaded back with ``from_pretrained`` (what ``load_pipeline`` prints, too)."""
    cache = tmp_path_factory.mktemp("family-cache")
    pipes, printed = {}, {}
    for key in KEYS:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            pipes[key] = family.load_family_pipeline(key, _no_gpu_no_hub(), cache_dir=cache)
        printed[key] = out.getvalue()
    return pipes, printed, cache


def test_stand_ins_load_through_from_pretrained_and_show_where_conditions_enter(loaded):
    pipes, printed, _ = loaded
    for key, cls in KEYS.items():
        pipe = pipes[key]
        assert type(pipe) is cls, key
        assert family.is_stand_in(pipe) and not pipe.unet.training, key
        assert "TINY" in printed[key] and bridge.MODELS[key].repo_id in printed[key], key
        facts = family.conditioning_facts(pipe)
        assert facts and all(f.holds for f in facts), [str(f) for f in facts if not f.holds]
    up, cn, un, svd = (pipes[k] for k in KEYS)
    assert up.unet.config.in_channels == 7 and up.config.max_noise_level == 350 and up.vae_scale_factor == 4
    assert len(cn.controlnet.controlnet_down_blocks) == family.unet_skip_count(cn.unet.config) == 4
    assert un.unet.config.projection_class_embeddings_input_dim == 2 * un.image_encoder.config.projection_dim
    assert svd.unet.config.in_channels == 8 and svd.unet.add_embedding.linear_1.in_features == 3 * 32
    assert (
        family.unet_skip_count(types.SimpleNamespace(block_out_channels=[320, 640, 1280, 1280], layers_per_block=2))
        == 12
    )
    assert bridge.MODELS["svd"].gated and not bridge.MODELS["sd-x4-upscaler"].gated
    with pytest.raises(TypeError, match="no conditioning facts"):
        family.conditioning_facts(bridge.tiny_sd15())


def test_upscaler_makes_four_times_the_input_and_the_size_check(loaded):
    pipe = loaded[0]["sd-x4-upscaler"]
    low = family.toy_scene(16, 24)

    def run(image, seed=0):
        return pipe("a fox", image=image, num_inference_steps=1, generator=_gen(seed), output_type="np").images

    first, again = run(low), run(low)
    assert first.shape == (1, 64, 96, 3) and np.isfinite(first).all() and first.std() > 1e-3
    assert np.array_equal(first, again)  # same seed, same image
    f = pipe.vae_scale_factor
    family.check_upscale_sizes((16, 24), (64, 96), f, multiple=f)
    with pytest.raises(ValueError, match="upscales to 64x96, not 128x192"):
        family.check_upscale_sizes((16, 24), (128, 192), f)
    with pytest.raises(ValueError, match="not a multiple of the upscaling factor 4"):
        family.check_upscale_sizes((16, 24), (62, 96), f)
    with pytest.raises(ValueError, match="must be positive"):
        family.check_upscale_sizes((0, 24), (0, 96), f)
    # what the check prevents: diffusers silently resizes a 30x30 input down to 28x28 (a 112x112 output, not 120)
    with pytest.raises(ValueError, match="multiples of 4.*28x28"):
        family.check_upscale_sizes((30, 30), (120, 120), f, multiple=f)
    quiet = pipe("a fox", image=family.toy_scene(30, 30), num_inference_steps=1, output_type="np").images
    assert quiet.shape == (1, 112, 112, 3)


def test_controlnet_follows_the_control_map(loaded):
    pipe = loaded[0]["sd15-controlnet-canny"]
    edges = family.canny_edges(family.toy_scene(32, 48, seed=1))
    other = family.canny_edges(family.toy_scene(32, 48, seed=2))
    family.check_control_image(edges, 32, 48, pipe.controlnet.config.conditioning_channels)

    def run(control):
        return pipe("a fox", image=control, num_inference_steps=1, generator=_gen(), output_type="np").images

    first, again, moved = run(edges), run(edges), run(other)
    assert first.shape == (1, 32, 48, 3)  # no height/width given: the control map's size
    assert np.array_equal(first, again)
    assert np.abs(first - moved).max() > 1e-3  # the structure reaches the image
    with pytest.raises(ValueError, match="control map is 32x48 but the image will be 64x64.*height=32, width=48"):
        family.check_control_image(edges, 64, 64)
    family.check_control_image(edges.convert("L"), 32, 48)  # a greyscale PIL map: the pipeline makes it RGB
    assert np.array_equal(run(edges.convert("L")), first)  # … and gives the RGB map's image exactly
    with pytest.raises(ValueError, match="1 channel.*takes 3.*expand"):
        family.check_control_image([torch.zeros(1, 1, 32, 48)], 32, 48)  # a 1-channel tensor is not converted
    with pytest.raises(TypeError, match="PIL image"):
        family.check_control_image("edges.png", 32, 48)


def test_unclip_image_in_image_out(loaded):
    pipe = loaded[0]["sd21-unclip"]

    def run(image):
        return pipe(image, "a fox", num_inference_steps=1, generator=_gen(), output_type="np").images

    first, again, other = run(family.toy_scene(40, 40)), run(family.toy_scene(40, 40)), run(family.toy_scene(40, 40, 3))
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    assert first.shape == (1, side, side, 3)  # the size comes from the UNet, not from the input image
    assert np.array_equal(first, again)
    assert np.abs(first - other).max() > 1e-4  # the image enters (through its CLIP embedding only)


def test_svd_frames_and_frame_count_checks(loaded, tmp_path):
    pipe = loaded[0]["svd"]
    image = family.toy_scene(32, 32)
    family.check_num_frames(3, pipe.unet, decode_chunk_size=2)

    def run():
        kw = dict(height=32, width=32, num_frames=3, decode_chunk_size=2, num_inference_steps=1, output_type="np")
        return pipe(image, generator=_gen(), **kw).frames

    frames, again = run(), run()
    assert frames.shape == (1, 3, 32, 32, 3) and np.array_equal(frames, again)
    trained = pipe.unet.config.num_frames
    with pytest.raises(ValueError, match=f"trained on \\({trained} = unet.config.num_frames\\)"):
        family.check_num_frames(trained + 1, pipe.unet)
    with pytest.raises(ValueError, match="at least 2 frames"):
        family.check_num_frames(1, pipe.unet)
    with pytest.raises(TypeError, match="must be an integer"):  # a float is the wrong type (the error convention)
        family.check_num_frames(2.5, pipe.unet.config)
    with pytest.raises(ValueError, match="decode_chunk_size=4.*from 1 to num_frames=3"):
        family.check_num_frames(3, pipe.unet, decode_chunk_size=4)
    x = family.frames_to_tensor(frames[0])
    assert x.shape == (3, 3, 32, 32) and -1 <= x.min() and x.max() <= 1
    gif = family.frames_to_gif(frames[0], tmp_path / "clip.gif", fps=7)
    with Image.open(gif) as im:
        assert im.n_frames == 3 and im.size == (32, 32)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.gif"]  # written atomically: no temporary file left
    with pytest.raises(ValueError, match="one video"):
        family.frames_to_tensor(frames)  # the batch, not one video


def test_canny_edges_find_the_outline_only():
    x = torch.zeros(1, 3, 32, 32)
    x[:, :, 8:24, 8:24] = 1.0  # a white square
    edges = family.canny_edges(x, use_opencv=False)  # (1, 3, 32, 32) in {0, 1}, three equal channels
    assert edges.shape == (1, 3, 32, 32) and set(edges.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(edges[:, 0], edges[:, 2])
    e = edges[0, 0].bool()
    ring = torch.zeros(32, 32, dtype=torch.bool)
    ring[6:26, 6:26] = True
    ring[10:22, 10:22] = False
    assert e.any() and not (e & ~ring).any()  # every edge pixel lies within 2 px of the square's border
    assert e[8:24, 7:9].any(dim=1).all() and e[7:9, 8:24].any(dim=0).all()  # each side is traced
    pil = family.canny_edges(Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)), use_opencv=False)
    assert pil.mode == "RGB" and np.array_equal(np.asarray(pil)[..., 0] > 0, e.numpy())
    assert not family.canny_edges(torch.full((3, 16, 16), 0.5), use_opencv=False).any()  # flat: no edges
    with pytest.raises(ValueError, match="low <= high"):
        family.canny_edges(x, low=200, high=100)


class _FakePipeline:
    calls: list[tuple[str, dict]] = []

    @classmethod
    def from_pretrained(cls, source, **kwargs):
        cls.calls.append((str(source), kwargs))
        return types.SimpleNamespace(unet=torch.nn.Linear(4, 4), source=str(source), kwargs=kwargs)


def test_controlnet_real_path_passes_the_controlnet_and_falls_back_whole(loaded, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    monkeypatch.setattr(family, "STAND_IN_MAX_PARAMETERS", 10)  # the fake UNet (20 parameters) counts as real
    asked = []

    def controlnet_from_pretrained(rid, **kwargs):
        asked.append(rid)
        if rid == family.CONTROLNET_IDS["sd15-controlnet-canny"][0]:
            raise OSError("Connection timed out")
        return ("controlnet", rid, kwargs["token"])

    monkeypatch.setattr(diffusers.ControlNetModel, "from_pretrained", controlnet_from_pretrained)
    env = bridge.Environment("cpu", None, None, True, "environment variable HF_TOKEN", True, ("test",))
    _FakePipeline.calls = []
    pipe = family.load_family_pipeline("sd15-controlnet-canny", env, pipeline_class=_FakePipeline)
    second = family.CONTROLNET_IDS["sd15-controlnet-canny"][1]
    assert asked == list(family.CONTROLNET_IDS["sd15-controlnet-canny"])
    assert pipe.source == bridge.MODELS["sd15-controlnet-canny"].repo_id  # the base model from the hub...
    assert pipe.kwargs["controlnet"] == ("controlnet", second, "hf_secret_value")  # ...with controlnet=
    # no ControlNet at all: the whole tiny pipeline (from its local folder, without a controlnet= override)
    monkeypatch.setattr(
        diffusers.ControlNetModel, "from_pretrained", lambda rid, **kw: (_ for _ in ()).throw(OSError())
    )
    pipe = family.load_family_pipeline("sd15-controlnet-canny", env, pipeline_class=_FakePipeline, cache_dir=loaded[2])
    assert "tiny" in pipe.source and "controlnet" not in pipe.kwargs
    text = capsys.readouterr().out
    assert "could not load the ControlNet" in text and "hf_secret_value" not in text
