"""Issue 21: every pipeline ``__call__`` checks its arguments once, up front, by the error convention.

NumPy / torch scalars give the same images as Python numbers, ``height=None`` is the default size, a list of
generators draws sample i from generator i (diffusers' semantics), images outside their range, NaN and wrong types
are refused with a TypeError / ValueError naming the argument; the bridge's generate helpers and family checks too.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_lab.mnist.classifier import ClassifierConfig, MnistClassifier
from diffusion_lab.models.autoencoder import AutoencoderConfig, AutoencoderKL
from diffusion_lab.models.controlnet import ControlNet
from diffusion_lab.models.image_embedding import EmbeddingNormalizer, NormalizerConfig
from diffusion_lab.models.mmdit import MMDiT, MMDiTConfig
from diffusion_lab.models.text_encoder import TextEncoder, TextEncoderConfig, WordTokenizer
from diffusion_lab.models.unet import UNet, UNetConfig
from diffusion_lab.pipelines.controlnet import TinyControlNetPipeline
from diffusion_lab.pipelines.sampling import sample
from diffusion_lab.pipelines.stable_diffusion import TinyStableDiffusionPipeline
from diffusion_lab.pipelines.stable_diffusion_3 import TinySD3Pipeline
from diffusion_lab.pipelines.upscale import TinyUpscalePipeline, low_res_scheduler
from diffusion_lab.pipelines.variations import TinyVariationPipeline
from diffusion_lab.schedulers.scheduling_ddim import DDIMScheduler
from diffusion_lab.schedulers.scheduling_ddpm import DDPMScheduler
from diffusion_lab.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

SCHEDULE = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False}
D = 8
PROMPTS = ["a thick seven", "a thin seven"]
IMAGE = torch.linspace(-1, 1, 28 * 28).reshape(1, 1, 28, 28)
LOW = torch.linspace(-1, 1, 49).reshape(1, 1, 7, 7)
CONTROL = (IMAGE + 1) / 2


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomise(*modules: torch.nn.Module) -> None:
    g = _gen(0)
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _vae() -> AutoencoderKL:
    return AutoencoderKL(AutoencoderConfig(channels=(8, 8), latent_channels=4, groups=4, scaling_factor=0.5)).eval()


def _text():
    tokenizer = WordTokenizer.from_texts(PROMPTS, model_max_length=8)
    cfg = TextEncoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_layers=1, num_heads=2, max_position=8)
    return TextEncoder(cfg).eval(), tokenizer


def _unet(**kw) -> UNet:
    cfg = dict(in_channels=4, out_channels=4, channels=(16,), attention_levels=(False,), groups=4, time_embed_dim=32,
               heads=2, blocks_per_level=0)  # fmt: skip
    return UNet(UNetConfig(**{**cfg, **kw})).eval()


@functools.cache
def _pipe(key: str):
    if key in ("sd", "controlnet"):
        text_encoder, tokenizer = _text()
        vae, unet = _vae(), _unet(attention_levels=(True,), cross_attention_dim=16, pooled_dim=16)
        _randomise(vae, text_encoder, unet)
        sd = TinyStableDiffusionPipeline(vae, text_encoder, tokenizer, unet, DDIMScheduler(**SCHEDULE))
        if key == "sd":
            return sd
        net = ControlNet.from_unet(sd.unet).eval()
        _randomise(net)
        return TinyControlNetPipeline.from_pipe(sd, net)
    if key == "sd3":
        text_encoder, tokenizer = _text()
        vae = _vae()
        cfg = MMDiTConfig(sample_size=8, patch_size=2, depth=1, hidden_size=32, num_heads=2, joint_attention_dim=16,
                          pooled_projection_dim=16, max_text_tokens=8)  # fmt: skip
        transformer = MMDiT(cfg).eval()
        _randomise(vae, text_encoder, transformer)
        return TinySD3Pipeline(vae, text_encoder, tokenizer, transformer, FlowMatchEulerDiscreteScheduler(shift=3.0))
    if key == "upscale":
        vae, unet = _vae(), _unet(in_channels=5, num_classes=32)
        _randomise(vae, unet)
        return TinyUpscalePipeline(vae, unet, DDPMScheduler(**SCHEDULE), low_res_scheduler(), max_noise_level=30)
    encoder = MnistClassifier(ClassifierConfig(channels=(4,), feature_dim=D)).eval()
    normalizer = EmbeddingNormalizer(NormalizerConfig(embedding_dim=D)).eval()
    vae, unet = _vae(), _unet(pooled_dim=2 * D)
    _randomise(vae, encoder, unet)
    noiser = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    return TinyVariationPipeline(vae, encoder, normalizer, unet, DDPMScheduler(**SCHEDULE), noiser)


# the positional input of a call per pipeline (upscale / variations: one image; the others: one prompt)
ARGS = {
    "sd": ("a thick seven",),
    "sd3": ("a thick seven",),
    "controlnet": ("a thick seven",),
    "upscale": (LOW,),
    "variations": (IMAGE,),
}
ALL = list(ARGS)


def _call(key: str, *args, **kw):
    kw = {"num_inference_steps": 2, "generator": _gen(0), **kw}
    if key == "controlnet":
        kw.setdefault("image", CONTROL)
    return _pipe(key)(*(args or ARGS[key]), **kw)


# ------------------------------------------------------------------------------------ scalars: same value, same image

SCALARS = [  # (pipelines, argument, Python value, its NumPy and torch forms)
    (ALL, "num_inference_steps", 2, (np.int64(2), torch.tensor(2))),
    (("sd", "sd3", "controlnet", "variations"), "guidance_scale", 2.0, (np.float32(2.0), torch.tensor(2.0))),
    (("sd", "sd3", "controlnet", "upscale"), "height", 28, (np.int64(28), torch.tensor(28))),
    (("sd",), "guidance_rescale", 0.5, (np.float64(0.5), torch.tensor(0.5))),
    (("upscale",), "noise_level", 3, (np.int64(3), torch.tensor(3))),
    (("variations",), "noise_level", 3, (np.int64(3), torch.tensor(3))),
    (("variations",), "num_images_per_prompt", 2, (np.int64(2), torch.tensor(2))),
    (("controlnet",), "controlnet_conditioning_scale", 0.5, (np.float32(0.5), torch.tensor(0.5))),
    (("controlnet",), "control_guidance_start", 0.5, (np.float64(0.5), torch.tensor(0.5))),
]


@pytest.mark.parametrize(
    ("key", "name", "value", "other"),
    [(k, n, v, o) for keys, n, v, others in SCALARS for k in keys for o in others],
    ids=lambda x: type(x).__name__ if not isinstance(x, str) else x,
)
def test_numpy_and_torch_scalars_give_the_same_images(key, name, value, other):
    want = _call(key, **{name: value}).images
    torch.testing.assert_close(_call(key, **{name: other}).images, want, rtol=0, atol=0)


@pytest.mark.parametrize("key", ["sd", "sd3", "controlnet", "upscale"])
def test_height_none_is_the_default_size(key):
    out = _call(key, height=None, width=None).images
    assert out.shape[-2:] == (28, 28)
    torch.testing.assert_close(out, _call(key).images, rtol=0, atol=0)


def test_strength_as_numpy_scalar_gives_the_same_img2img():
    want = _call("sd", image=IMAGE, strength=0.5).images
    torch.testing.assert_close(_call("sd", image=IMAGE, strength=np.float64(0.5)).images, want, rtol=0, atol=0)


# ------------------------------------------------------------------------------------ wrong scalars: named errors

BAD = [  # (pipelines, kwargs, error, match)
    (ALL, {"num_inference_steps": None}, TypeError, "num_inference_steps must be an integer"),
    (ALL, {"num_inference_steps": "2"}, TypeError, "num_inference_steps must be an integer"),
    (ALL, {"num_inference_steps": 2.0}, TypeError, "num_inference_steps must be an integer.*use 2"),
    (ALL, {"num_inference_steps": np.bool_(True)}, TypeError, "num_inference_steps must be an integer"),
    (ALL, {"eta": "a"}, TypeError, "eta must be a number"),
    (ALL, {"eta": float("nan")}, ValueError, "eta must be finite"),
    (ALL, {"generator": 42}, TypeError, r"generator .*torch.Generator\(\).manual_seed\(42\)"),
    (ALL, {"generator": "seed"}, TypeError, "generator must be a torch.Generator"),
    (ALL, {"generator": [_gen(0), _gen(1), _gen(2)]}, ValueError, "generator is a list of 3 generators"),
    (ALL, {"callback": 3}, TypeError, "callback must be a function"),
    (ALL, {"output_type": 3}, ValueError, "output_type must be one of"),
    (ALL, {"latents": [1.0]}, TypeError, "latents must be a tensor"),
    (ALL, {"latents": torch.full((1, 4, 7, 7), float("nan"))}, ValueError, "latents contains NaN"),
    (("sd", "sd3", "controlnet", "upscale"), {"height": 28.0}, TypeError, "height must be an integer.*use 28"),
    (("sd", "sd3", "controlnet", "upscale"), {"height": "28"}, TypeError, "height must be an integer"),
    (("sd", "sd3", "controlnet", "upscale"), {"width": True}, TypeError, "width must be an integer"),
    (("sd", "sd3", "controlnet", "upscale"), {"height": 27}, ValueError, r"multiples of 4.*height=27.*24 or 28"),
    (("sd", "sd3", "controlnet", "upscale"), {"width": 2}, ValueError, r"multiples of 4.*width=2.*width: 4"),
    (("sd", "sd3", "controlnet", "upscale"), {"height": -4}, ValueError, "height=-4"),
    (("sd", "sd3", "controlnet", "variations"), {"guidance_scale": None}, TypeError, "guidance_scale must be a number"),
    (("sd", "sd3", "controlnet", "variations"), {"guidance_scale": float("inf")}, ValueError, "guidance_scale"),
    (("sd", "sd3", "controlnet"), {"guidance_rescale": "a"}, TypeError, "guidance_rescale must be a number"),
    (("sd", "sd3", "controlnet"), {"guidance_rescale": float("nan")}, ValueError, "guidance_rescale must be finite"),
    (("sd", "sd3", "controlnet"), {"guidance_rescale": -0.5}, ValueError, r"guidance_rescale must be in \[0, 1\]"),
    (("sd", "sd3"), {"image": IMAGE, "strength": "0.5"}, TypeError, "strength must be a number"),
    (("controlnet",), {"guess_mode": "yes"}, TypeError, "guess_mode must be True or False"),
    (("controlnet",), {"control_guidance_end": float("nan")}, ValueError, "control_guidance_end must be finite"),
    (("upscale", "variations"), {"noise_level": 3.0}, TypeError, "noise_level must be an integer.*use 3"),
    (("upscale", "variations"), {"noise_level": None}, TypeError, "noise_level must be an integer"),
    (("variations",), {"num_images_per_prompt": 2.0}, TypeError, "num_images_per_prompt must be an integer"),
    (("variations",), {"num_images_per_prompt": None}, TypeError, "num_images_per_prompt must be an integer"),
]


@pytest.mark.parametrize(
    ("key", "kwargs", "error", "match"),
    [(k, kw, e, m) for keys, kw, e, m in BAD for k in keys],
    ids=lambda x: repr(x)[:40] if isinstance(x, dict) else None,
)
def test_bad_arguments_raise_a_named_error(key, kwargs, error, match):
    with pytest.raises(error, match=match):
        _call(key, **kwargs)


def test_controlnet_checks_height_before_the_control_map():
    with pytest.raises(ValueError, match="height=27"):
        _call("controlnet", height=27)
    with pytest.raises(ValueError, match="height=27"):
        _call("controlnet", height=27, image=torch.zeros(1, 1, 27, 28))


# ------------------------------------------------------------------------------------ generators, one per sample


def test_a_list_of_generators_gives_each_sample_its_own_seed():
    # text-to-image and img2img: two prompts with generators (g3, g5) = each prompt alone with g3, then g5
    for kw in ({"guidance_scale": 2.0}, {"image": IMAGE, "strength": 0.6}):
        both = _call("sd", PROMPTS, generator=[_gen(3), _gen(5)], **kw).images
        alone = [_call("sd", p, generator=_gen(s), **kw).images for p, s in zip(PROMPTS, (3, 5), strict=True)]
        torch.testing.assert_close(both, torch.cat(alone), rtol=1e-5, atol=1e-5)
    both = _call("sd3", PROMPTS, generator=[_gen(3), _gen(5)]).images
    alone = [_call("sd3", p, generator=_gen(s)).images for p, s in zip(PROMPTS, (3, 5), strict=True)]
    torch.testing.assert_close(both, torch.cat(alone), rtol=1e-5, atol=1e-5)
    # the upscaler draws the augmentation and then the latents: per image from its own generator
    low = torch.cat([LOW, -LOW])
    both = _call("upscale", low, generator=[_gen(3), _gen(5)]).images
    alone = [_call("upscale", low[i : i + 1], generator=_gen(s)).images for i, s in enumerate((3, 5))]
    torch.testing.assert_close(both, torch.cat(alone), rtol=1e-5, atol=1e-5)


def test_variations_take_one_generator_per_image_of_the_batch():
    out = _call("variations", num_images_per_prompt=2, generator=[_gen(i) for i in range(2)]).images
    assert out.shape == (2, 1, 28, 28) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"batch of 2"):
        _call("variations", num_images_per_prompt=2, generator=[_gen(0)] * 3)


# ------------------------------------------------------------------------------------ images entering a pipeline

IMAGES = [  # (pipeline, kwargs, error, match)
    ("sd", {"image": (IMAGE + 1) * 127.5}, ValueError, r"image values must be in \[-1, 1\].*p / 127.5 - 1"),
    ("sd3", {"image": (IMAGE + 1) * 127.5}, ValueError, r"image values must be in \[-1, 1\]"),
    ("sd", {"image": IMAGE, "mask_image": torch.full((1, 1, 28, 28), 255.0)}, ValueError, r"mask_image .*\[0, 1\]"),
    ("sd", {"image": IMAGE, "mask_image": torch.full((1, 1, 28, 28), float("nan"))}, ValueError, "mask_image .*NaN"),
    ("sd", {"image": IMAGE.tolist()}, TypeError, "image must be a tensor"),
    ("controlnet", {"image": CONTROL * 255}, ValueError, r"control image values must be in \[0, 1\]"),
    ("controlnet", {"image": torch.full((1, 1, 28, 28), float("nan"))}, ValueError, "control image contains NaN"),
    ("upscale", {"image": (LOW + 1) * 127.5}, ValueError, r"image values must be in \[-1, 1\].*p / 127.5 - 1"),
    ("upscale", {"image": torch.full((1, 1, 7, 7), float("inf"))}, ValueError, "image contains NaN"),
    ("variations", {"image": (IMAGE + 1) * 127.5}, ValueError, r"image values must be in \[-1, 1\].*p / 127.5 - 1"),
    ("variations", {"image_embeds": torch.full((1, D), float("nan"))}, ValueError, "image_embeds must hold finite"),
    ("variations", {"image_embeds": [0.0] * D}, TypeError, "image_embeds must be a tensor"),
]


@pytest.mark.parametrize(
    ("key", "kwargs", "error", "match"), IMAGES, ids=[f"{k}-{i}" for i, (k, *_) in enumerate(IMAGES)]
)
def test_images_outside_their_range_or_nan_are_refused(key, kwargs, error, match):
    kwargs = dict(kwargs)
    with pytest.raises(error, match=match):
        if key in ("upscale", "variations") and "image" in kwargs:
            _call(key, kwargs.pop("image"), **kwargs)
        elif key == "variations":  # image_embeds instead of an image
            _pipe(key)(num_inference_steps=2, **kwargs)
        else:
            _call(key, **kwargs)


def test_img2img_takes_a_pil_image_as_its_tensor():
    pixels = ((IMAGE[0, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
    pil = Image.fromarray(pixels, mode="L")
    want = _call("sd", image=torch.from_numpy(pixels.astype(np.float32))[None, None] / 127.5 - 1, strength=0.5)
    torch.testing.assert_close(_call("sd", image=pil, strength=0.5).images, want.images, rtol=0, atol=0)


# ------------------------------------------------------------------------------------ the sampling loop


def _zero_model(x, t):
    return torch.zeros_like(x)


SAMPLE_BAD = [
    ({"shape": None}, TypeError, "shape must be a tuple"),
    ({"shape": (1.0, 1, 4, 4)}, TypeError, r"shape\[0\] must be an integer"),
    ({"shape": (0, 1, 4, 4)}, ValueError, r"shape\[0\] must be >= 1"),
    ({"num_inference_steps": 2.0}, TypeError, "num_inference_steps must be an integer"),
    ({"num_inference_steps": None}, TypeError, "num_inference_steps must be an integer"),
    ({"guidance_scale": None}, TypeError, "guidance_scale must be a number"),
    ({"guidance_scale": float("nan")}, ValueError, "guidance_scale must be finite"),
    ({"eta": "a"}, TypeError, "eta must be a number"),
    ({"generator": 42}, TypeError, r"manual_seed\(42\)"),
    ({"latents": [1.0]}, TypeError, "latents must be a torch.Tensor"),
    ({"latents": torch.full((1, 1, 4, 4), float("nan"))}, ValueError, "latents contains NaN"),
    ({"class_labels": [1]}, TypeError, "class_labels must be a torch.Tensor"),
    ({"class_labels": torch.tensor([1.5])}, ValueError, "class_labels must hold integers"),
    ({"callback": 3}, TypeError, "callback must be a function"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), SAMPLE_BAD, ids=[repr(k)[:30] for k, *_ in SAMPLE_BAD])
def test_sample_checks_its_arguments(kwargs, error, match):
    kw = {"shape": (1, 1, 4, 4), "num_inference_steps": 2, **kwargs}
    with pytest.raises(error, match=match):
        sample(_zero_model, DDPMScheduler(), kw.pop("shape"), **kw)


def test_sample_takes_numpy_scalars_and_a_list_of_generators():
    want = sample(_zero_model, DDPMScheduler(), (2, 1, 4, 4), num_inference_steps=2, generator=_gen(1)).images
    got = sample(_zero_model, DDPMScheduler(), (np.int64(2), 1, 4, 4), num_inference_steps=np.int64(2),
                 guidance_scale=np.float32(1.0), generator=_gen(1)).images  # fmt: skip
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    both = sample(_zero_model, DDIMScheduler(), (2, 1, 4, 4), num_inference_steps=2, generator=[_gen(3), _gen(5)])
    alone = [
        sample(_zero_model, DDIMScheduler(), (1, 1, 4, 4), num_inference_steps=2, generator=_gen(s)) for s in (3, 5)
    ]
    torch.testing.assert_close(both.images, torch.cat([a.images for a in alone]), rtol=0, atol=0)
