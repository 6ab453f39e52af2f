"""The pipeline base (TinyPipeline) for every Tiny*Pipeline: save/load round trips give identical outputs, broken
folders raise FileError, and every ``__call__`` follows the error convention (TypeError / ValueError)."""

from __future__ import annotations

import functools
import inspect
import json
import shutil

import pytest
import torch

from diffusion_lab.mnist.classifier import ClassifierConfig, MnistClassifier
from diffusion_lab.models.autoencoder import AutoencoderConfig, AutoencoderKL
from diffusion_lab.models.controlnet import ControlNet
from diffusion_lab.models.image_embedding import EmbeddingNormalizer, NormalizerConfig
from diffusion_lab.models.mmdit import MMDiT, MMDiTConfig
from diffusion_lab.models.text_encoder import TextEncoder, TextEncoderConfig, WordTokenizer
from diffusion_lab.models.unet import UNet, UNetConfig
from diffusion_lab.pipelines.controlnet import TinyControlNetPipeline
from diffusion_lab.pipelines.pipeline_utils import TinyPipeline
from diffusion_lab.pipelines.stable_diffusion import TinyStableDiffusionPipeline
from diffusion_lab.pipelines.stable_diffusion_3 import TinySD3Pipeline
from diffusion_lab.pipelines.upscale import TinyUpscalePipeline, low_res_scheduler
from diffusion_lab.pipelines.variations import TinyVariationPipeline
from diffusion_lab.schedulers.scheduling_ddim import DDIMScheduler
from diffusion_lab.schedulers.scheduling_ddpm import DDPMScheduler
from diffusion_lab.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from diffusion_lab.utils.errors import FileError

SCHEDULE = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False}
D = 8  # image-embedding size of the variations pipeline


def _randomise(*modules: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _vae(in_channels: int = 1) -> AutoencoderKL:
    return AutoencoderKL(AutoencoderConfig(channels=(8, 8), latent_channels=4, groups=4, scaling_factor=0.5)).eval()


def _text():
    tokenizer = WordTokenizer.from_texts(["a thick seven"], model_max_length=8)
    cfg = TextEncoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_layers=1, num_heads=2, max_position=8)
    return TextEncoder(cfg).eval(), tokenizer


def _unet(**kw) -> UNet:
    cfg = dict(in_channels=4, out_channels=4, channels=(16,), attention_levels=(False,), groups=4, time_embed_dim=32,
               heads=2, blocks_per_level=0)  # fmt: skip
    return UNet(UNetConfig(**{**cfg, **kw})).eval()


def _sd():
    text_encoder, tokenizer = _text()
    vae, unet = _vae(), _unet(attention_levels=(True,), cross_attention_dim=16, pooled_dim=16)
    _randomise(vae, text_encoder, unet)
    return TinyStableDiffusionPipeline(vae, text_encoder, tokenizer, unet, DDIMScheduler(**SCHEDULE))


def _sd3():
    text_encoder, tokenizer = _text()
    vae = _vae()
    cfg = MMDiTConfig(sample_size=8, patch_size=2, depth=1, hidden_size=32, num_heads=2, joint_attention_dim=16,
                      pooled_projection_dim=16, max_text_tokens=8)  # fmt: skip
    transformer = MMDiT(cfg).eval()
    _randomise(vae, text_encoder, transformer)
    return TinySD3Pipeline(vae, text_encoder, tokenizer, transformer, FlowMatchEulerDiscreteScheduler(shift=3.0))


def _controlnet():
    sd = _sd()
    net = ControlNet.from_unet(sd.unet).eval()
    _randomise(net)
    return TinyControlNetPipeline.from_pipe(sd, net)


def _upscale():
    vae, unet = _vae(), _unet(in_channels=5, num_classes=32)
    _randomise(vae, unet)
    return TinyUpscalePipeline(vae, unet, DDIMScheduler(**SCHEDULE), low_res_scheduler(), max_noise_level=30)


def _variations():
    encoder = MnistClassifier(ClassifierConfig(channels=(4,), feature_dim=D)).eval()
    normalizer = EmbeddingNormalizer(NormalizerConfig(embedding_dim=D)).eval()
    vae, unet = _vae(), _unet(pooled_dim=2 * D)
    _randomise(vae, encoder, unet)
    noiser = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    return TinyVariationPipeline(vae, encoder, normalizer, unet, DDIMScheduler(**SCHEDULE), noiser)


IMAGE = torch.linspace(-1, 1, 28 * 28).reshape(1, 1, 28, 28)
LOW = torch.linspace(-1, 1, 49).reshape(1, 1, 7, 7)

# per pipeline: builder, the positional input of a call, the name of its image argument and a good image for it
PIPELINES = {
    "sd": (_sd, ("a thick seven",), "image", IMAGE),
    "sd3": (_sd3, ("a thick seven",), "image", IMAGE),
    "controlnet": (_controlnet, ("a thick seven",), "image", (IMAGE + 1) / 2),
    "upscale": (_upscale, (), "image", LOW),
    "variations": (_variations, (), "image", IMAGE),
}


# the float knobs of each call (the upscaler has none: its noise_level is an integer)
NUMBERS = {
    "sd": ("guidance_scale", "strength"),
    "sd3": ("guidance_scale", "strength"),
    "controlnet": ("guidance_scale", "controlnet_conditioning_scale"),
    "variations": ("guidance_scale",),
}


@functools.cache
def _case(key: str):
    build, args, image_name, image = PIPELINES[key]
    return build(), args, image_name, image


@pytest.fixture(params=list(PIPELINES))
def case(request):
    return _case(request.param)


def _call(pipe, args, image_name, image, **kw):
    kw = {image_name: image, "num_inference_steps": 2, "generator": torch.Generator().manual_seed(0), **kw}
    if isinstance(pipe, TinySD3Pipeline | TinyStableDiffusionPipeline) and not isinstance(pipe, TinyControlNetPipeline):
        kw.setdefault("strength", 0.5)
    return pipe(*args, **kw)


def test_every_pipeline_subclasses_the_base(case):
    pipe = case[0]
    assert isinstance(pipe, TinyPipeline)
    assert list(pipe.components) == list(type(pipe)._component_classes)
    assert pipe.to("cpu") is pipe and pipe.device == torch.device("cpu") and pipe.dtype == torch.float32


def test_save_and_load_round_trip_gives_identical_outputs(case, tmp_path):
    pipe, args, image_name, image = case
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["_class_name"] == type(pipe).__name__
    assert all(index[n][0] == "diffusion_lab" for n in pipe.components)
    again = type(pipe).from_pretrained(tmp_path / "p")
    assert [type(c) for c in again.components.values()] == [type(c) for c in pipe.components.values()]
    assert torch.equal(_call(again, args, image_name, image).images, _call(pipe, args, image_name, image).images)
    pil = _call(again, args, image_name, image, output_type="pil").images
    assert len(pil) == 1 and pil[0].size == (28, 28)


def test_broken_folders_raise_file_error(case, tmp_path):
    pipe = case[0]
    folder = pipe.save_pretrained(tmp_path / "p")
    with pytest.raises(FileError, match="model_index.json"):
        type(pipe).from_pretrained(tmp_path / "empty")
    other = TinyUpscalePipeline if not isinstance(pipe, TinyUpscalePipeline) else TinyVariationPipeline
    with pytest.raises(FileError, match=f"holds a {type(pipe).__name__}, not a {other.__name__}"):
        other.from_pretrained(folder)
    shutil.rmtree(folder / "vae")
    with pytest.raises(FileError, match="no vae/ folder"):
        type(pipe).from_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["vae"] = ["diffusion_lab", "UNet"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(FileError, match="takes a diffusion_lab AutoencoderKL"):
        type(pipe).from_pretrained(folder)
    (folder / "model_index.json").write_text("{not json")
    with pytest.raises(FileError, match="not valid JSON"):
        type(pipe).from_pretrained(folder)


def test_legacy_full_module_paths_still_load(tmp_path):
    pipe = _sd()
    folder = pipe.save_pretrained(tmp_path / "p")
    index = json.loads((folder / "model_index.json").read_text())
    for name, component in pipe.components.items():
        index[name] = [type(component).__module__, type(component).__name__]
    (folder / "model_index.json").write_text(json.dumps(index))
    assert type(TinyStableDiffusionPipeline.from_pretrained(folder).scheduler) is DDIMScheduler


@pytest.mark.parametrize(
    "kw, error, match",
    [
        ({"num_inference_steps": True}, TypeError, "num_inference_steps must be an integer"),
        ({"num_inference_steps": 2.0}, TypeError, "num_inference_steps must be an integer"),
        ({"num_inference_steps": 0}, ValueError, r"num_inference_steps must be (an integer )?>= 1"),
        ({"output_type": "np"}, ValueError, "output_type must be one of"),
        ({"image": "a picture"}, TypeError, "must be a tensor"),
        ({"image": "nan"}, ValueError, "NaN"),
        ({"image": "uint8"}, ValueError, "of floats"),
        ({"image": "3d"}, ValueError, r"pass image\[None\]"),
        ({"image": "channels"}, ValueError, r"channels(, not| but)"),
        ({"image": "size"}, ValueError, r"(got 5x5 images|a 5x5 image cannot be upscaled)"),
        ({"latents": torch.zeros(1, 4, 3, 3)}, ValueError, "latents must have shape"),
    ],
)
def test_every_call_follows_the_error_convention(case, kw, error, match):
    pipe, args, image_name, image = case
    kw = dict(kw)
    bad = kw.pop("image", None)
    if bad is not None:
        image = {
            "a picture": "a picture",
            "nan": torch.full_like(image, float("nan")),
            "uint8": image.to(torch.uint8),
            "3d": image[0],
            "channels": image.repeat(1, 3, 1, 1),
            "size": image[..., :5, :5],
        }[bad]
    with pytest.raises(error, match=match):
        _call(pipe, args, image_name, image, **kw)


@pytest.mark.parametrize(("key", "name"), [(key, name) for key, names in NUMBERS.items() for name in names])
def test_numbers_are_checked_as_numbers(key, name):
    pipe, args, image_name, image = _case(key)
    assert name in inspect.signature(type(pipe).__call__).parameters, f"{type(pipe).__name__} takes no {name}"
    with pytest.raises(TypeError, match=f"{name} must be a number"):
        _call(pipe, args, image_name, image, **{name: True})
    with pytest.raises(ValueError, match=f"{name} must be"):
        _call(pipe, args, image_name, image, **{name: -1.0})
