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
from test_pipeline_base import _randomise, _unet, _vae  # the same tiny builders (tests/ is on sys.path)

from diffusion_lab.mnist.classifier import ClassifierConfig, MnistClassifier
from diffusion_lab.models.controlnet import ControlNet
from diffusion_lab.models.image_embedding import EmbeddingNormalizer, NormalizerConfig
from diffusion_lab.models.mmdit import MMDiT, MMDiTConfig
from diffusion_lab.models.text_encoder import TextEncoder, TextEncoderConfig, WordTokenizer
from diffusion_lab.pipelines.controlnet import TinyControlNetPipeline
from diffusion_lab.pipelines.sampling import ddim_invert, sample
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


def _text():
    tokenizer = WordTokenizer.from_texts(PROMPTS, model_max_length=8)
    cfg = TextEncoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_layers=1, num_heads=2, max_position=8)
    return TextEncoder(cfg).eval(), tokenizer


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


@pytest.fixture(scope="module", autouse=True)
def _built():
    """Every tiny pipeline built once, before the timed tests."""
    for key in ("sd", "sd3", "controlnet", "upscale", "variations"):
        _pipe(key)


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
    (ALL, {"output_type": "np"}, ValueError, "output_type must be one of"),
    (ALL, {"output_type": 3}, TypeError, "output_type must be one of"),
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


@pytest.mark.parametrize(
    ("key", "kw"),
    [("sd", {"guidance_scale": 2.0}), ("sd", {"image": IMAGE, "strength": 0.6}), ("sd3", {}), ("upscale", {})],
    ids=["sd-text-to-image", "sd-img2img", "sd3", "upscale"],
)
def test_a_list_of_generators_gives_each_sample_its_own_seed(key, kw):
    """Two inputs with generators (g3, g5) = each input alone with g3, then g5 (the upscaler draws its augmentation
    noise and then its latents, each per image from that image's generator)."""
    inputs = PROMPTS if key != "upscale" else [LOW, -LOW]
    batch = inputs if key != "upscale" else torch.cat(inputs)
    both = _call(key, batch, generator=[_gen(3), _gen(5)], **kw).images
    alone = [_call(key, x, generator=_gen(s), **kw).images for x, s in zip(inputs, (3, 5), strict=True)]
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
    ("upscale", {"image": (LOW + 1) * 127.5}, ValueError, r"image values must be in \[-5, 5\].*p / 127.5 - 1"),
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


def test_the_upscaler_takes_noisy_low_res_images():  # degraded inputs overshoot [-1, 1] (notebook 14)
    noisy = LOW + 0.5 * torch.randn(LOW.shape, generator=_gen(1))
    assert torch.isfinite(_call("upscale", noisy).images).all()


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
    ({"shape": (0, 1, 4, 4)}, ValueError, r"shape must be \(B, C, H, W\) with B >= 1"),
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


def test_sample_and_ddim_invert_check_model_scheduler_device_and_timesteps():
    with pytest.raises(TypeError, match="model must be a network or function"):
        sample(None, DDPMScheduler(), (1, 1, 4, 4), num_inference_steps=2)
    with pytest.raises(TypeError, match="scheduler must be a scheduler"):
        sample(_zero_model, None, (1, 1, 4, 4), num_inference_steps=2)
    with pytest.raises(ValueError, match="device must be a torch.device"):
        sample(_zero_model, DDPMScheduler(), (1, 1, 4, 4), num_inference_steps=2, device="gpu0")
    s = DDIMScheduler()
    s.set_timesteps(4)
    ab, x0 = s.alphas_cumprod, torch.zeros(1, 1, 4, 4)
    for args, error, match in [
        ((ab, [0.0], s.timesteps), TypeError, "x0 must be a torch.Tensor"),
        ((ab, torch.full((1, 1, 4, 4), float("nan")), s.timesteps), ValueError, "x0 contains NaN"),
        (([0.5] * 1000, x0, s.timesteps), TypeError, "alphas_cumprod must be a torch.Tensor"),
        ((ab, x0, None), TypeError, "timesteps must be the sampler's timesteps"),
        ((ab, x0, torch.tensor([], dtype=torch.long)), ValueError, "timesteps must be a non-empty list"),
        ((ab, x0, torch.tensor([5000, 10])), ValueError, r"integers in 0..999"),
    ]:
        with pytest.raises(error, match=match):
            ddim_invert(_zero_model, *args)


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


# ------------------------------------------------------------------------------------ the bridge's generate helpers


@functools.cache
def _bridge_pipe(name: str):
    from diffusion_lab import bridge  # lazy: diffusers' stand-ins are built only by the bridge tests

    return bridge.tiny_sdxl() if name == "sdxl" else bridge.tiny_sd3()


def _generate(name: str, prompt="a cat", **kw):
    from diffusion_lab import bridge  # lazy: as above

    fn = bridge.sdxl_generate if name == "sdxl" else bridge.sd3_generate
    kw = {"num_inference_steps": 1, "height": 32, "width": 32, "output_type": "latent", "generator": _gen(0), **kw}
    return fn(_bridge_pipe(name), prompt, **kw)


GENERATE_BAD = [  # (kwargs, error, match); both helpers
    ({"num_inference_steps": None}, TypeError, "num_inference_steps must be an integer"),
    ({"guidance_scale": None}, TypeError, "guidance_scale must be a number"),
    ({"guidance_scale": True}, TypeError, "guidance_scale must be a number"),
    ({"guidance_scale": float("nan")}, ValueError, "guidance_scale must be finite"),
    ({"height": 32.0}, TypeError, "height must be a positive integer"),
    ({"width": "32"}, TypeError, "width must be a positive integer"),
    ({"height": -8}, ValueError, "height=-8 must be a positive multiple"),
    ({"generator": 42}, TypeError, r"manual_seed\(42\)"),
    ({"generator": [_gen(0), _gen(1)]}, ValueError, "generator is a list of 2 generators for a batch of 1"),
    ({"output_type": "png"}, ValueError, "output_type must be one of"),
    ({"prompt": ["a", "b"]}, TypeError, "prompt must be one string"),
    ({"prompt": None}, TypeError, "prompt must be one string"),
    ({"negative_prompt": 3}, TypeError, "negative_prompt must be one string"),
]
GENERATE_ONLY = [  # (helper, kwargs, error, match)
    ("sdxl", {"original_size": (32.5, 32)}, TypeError, r"original_size\[0\] must be an integer"),
    ("sdxl", {"target_size": (32, 32, 3)}, ValueError, "target_size must be a pair"),
    ("sdxl", {"crops_coords_top_left": 5}, TypeError, "crops_coords_top_left must be a pair"),
    ("sdxl", {"crops_coords_top_left": (-1, 0)}, ValueError, r"crops_coords_top_left\[0\] must be >= 0"),
    ("sd3", {"max_sequence_length": 0}, ValueError, "max_sequence_length must be >= 1"),
    ("sd3", {"max_sequence_length": 1000}, ValueError, "max_sequence_length must be at most 512"),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "error", "match"),
    [(n, kw, e, m) for n in ("sdxl", "sd3") for kw, e, m in GENERATE_BAD] + GENERATE_ONLY,
    ids=lambda x: repr(x)[:40] if isinstance(x, dict) else None,
)
def test_generate_helpers_check_their_arguments(bridge_pipes, name, kwargs, error, match):
    kwargs = dict(kwargs)
    with pytest.raises(error, match=match):
        _generate(name, kwargs.pop("prompt", "a cat"), **kwargs)


@functools.cache
def _generate_reference(name: str) -> torch.Tensor:
    return _generate(name, guidance_scale=2.0)


@pytest.fixture(scope="module")
def bridge_pipes():
    """The diffusers stand-ins, built once (a few seconds) before the timed tests."""
    return {name: (_bridge_pipe(name), _generate_reference(name)) for name in ("sdxl", "sd3")}


@pytest.mark.parametrize("name", ["sdxl", "sd3"])
@pytest.mark.parametrize(
    "kw",
    [
        {"num_inference_steps": np.int64(1), "height": np.int64(32), "guidance_scale": np.float32(2.0)},
        {"num_inference_steps": torch.tensor(1), "width": torch.tensor(32), "guidance_scale": torch.tensor(2.0)},
        {"generator": [_gen(0)], "guidance_scale": 2.0},  # a list of one generator: the same draw
    ],
    ids=["numpy", "torch", "generator-list"],
)
def test_generate_helpers_take_numpy_and_torch_scalars(bridge_pipes, name, kw):
    kw = {**kw, "generator": [_gen(0)]} if "generator" in kw else kw
    torch.testing.assert_close(_generate(name, **kw), bridge_pipes[name][1], rtol=0, atol=0)


def test_check_size_and_decode_latents(bridge_pipes):
    from diffusion_lab import bridge  # lazy: as above

    assert bridge.check_size(np.int64(64), torch.tensor(32), np.int64(8)) == (64, 32)
    vae = _bridge_pipe("sdxl").vae
    c = vae.config.latent_channels
    for bad, error, match in [
        ([0.0], TypeError, "latents must be a torch.Tensor"),
        (torch.zeros(c, 4, 4), ValueError, r"pass latents\[None\]"),
        (torch.zeros(1, c + 1, 4, 4), ValueError, f"latents must have shape \\(B, {c}, h, w\\)"),
        (torch.full((1, c, 4, 4), float("nan")), ValueError, "latents contains NaN"),
        (torch.zeros(1, c, 4, 4, dtype=torch.long), ValueError, "latents must be a float tensor"),
    ]:
        with pytest.raises(error, match=match):
            bridge.decode_latents(vae, bad)


# ------------------------------------------------------------------------------------ the family's checks


class _Frames:
    class config:  # noqa: N801 - the shape of unet.config
        num_frames = 4


def _family():
    from diffusion_lab.bridge import family  # lazy: as above

    return family


FAMILY_BAD = [  # (function name, args, kwargs, error, match)
    ("check_upscale_sizes", ((16, 16), (64, 64), True), {}, TypeError, "factor must be an integer"),
    ("check_upscale_sizes", ((16, True), (64, 64), 4), {}, TypeError, "low_res_hw must be a"),
    ("check_control_image", (torch.full((1, 3, 8, 8), float("nan")), 8, 8), {}, ValueError, "control .*NaN"),
    ("check_control_image", (torch.full((1, 3, 8, 8), 255.0), 8, 8), {}, ValueError, r"control .*\[0, 1\].*255"),
    ("check_control_image", ([], 8, 8), {}, ValueError, "control is an empty list"),
    ("check_control_image", (torch.zeros(8, 8), 8, 8), {}, ValueError, r"got shape \(8, 8\)"),
    ("check_control_image", (torch.zeros(1, 3, 8, 8), None, 8), {}, TypeError, "height must be an integer"),
    ("check_num_frames", (True, _Frames), {}, TypeError, "num_frames must be an integer"),
    ("check_num_frames", (3, None), {}, TypeError, "unet must be SVD's UNet"),
    ("check_num_frames", (3, _Frames), {"decode_chunk_size": True}, TypeError, "decode_chunk_size=True"),
    ("canny_edges", (torch.full((3, 8, 8), float("nan")),), {"use_opencv": False}, ValueError, "image contains NaN"),
    ("canny_edges", (torch.full((3, 8, 8), 255.0),), {"use_opencv": False}, ValueError, r"image values .*\[0, 1\]"),
    ("canny_edges", (torch.zeros(2, 8, 8),), {"use_opencv": False}, ValueError, "image must have 3"),
    ("canny_edges", (torch.zeros(1, 1, 3, 8, 8),), {"use_opencv": False}, ValueError, "image must be a"),
    ("canny_edges", (torch.zeros(3, 8, 8),), {"use_opencv": "no"}, TypeError, "use_opencv must be"),
    ("toy_scene", (32.0, 32), {}, TypeError, "height must be an integer.*use 32"),
    ("toy_scene", (1, 32), {}, ValueError, "height must be >= 2"),
    ("toy_scene", (32, 32), {"seed": -1}, ValueError, "seed must be >= 0"),
    ("toy_scene", (32, True), {}, TypeError, "width must be an integer"),
    ("frames_to_tensor", (torch.full((2, 3, 8, 8), float("nan")),), {}, ValueError, "frames contains NaN"),
    ("frames_to_tensor", (np.full((2, 8, 8, 3), 255.0, np.float32),), {}, ValueError, r"frames must be in \[0, 1\]"),
    ("frames_to_tensor", (torch.zeros(0, 3, 8, 8),), {}, ValueError, "frames holds no frame"),
    ("frames_to_gif", (torch.zeros(2, 3, 8, 8), None), {}, TypeError, "path must be a str"),
    ("frames_to_gif", (torch.zeros(2, 3, 8, 8), "x.gif"), {"fps": 1e6}, ValueError, "fps must be at most 100"),
    ("frames_to_gif", (torch.zeros(2, 3, 8, 8), "x.gif"), {"fps": np.bool_(True)}, TypeError, "fps must be a number"),
]


@pytest.mark.parametrize(
    ("fn", "args", "kwargs", "error", "match"), FAMILY_BAD, ids=[f"{f[0]}-{i}" for i, f in enumerate(FAMILY_BAD)]
)
def test_family_checks_name_the_parameter(fn, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        getattr(_family(), fn)(*args, **kwargs)


def test_family_takes_numpy_and_torch_integers(tmp_path):
    family = _family()
    family.check_upscale_sizes((np.int64(16), torch.tensor(16)), (64, 64), np.int64(4), multiple=np.int64(4))
    family.check_control_image(torch.zeros(1, 3, 8, 8), np.int64(8), torch.tensor(8), np.int64(3))
    family.check_num_frames(np.int64(3), _Frames, decode_chunk_size=torch.tensor(2))
    want = np.asarray(family.toy_scene(32, 48, seed=1))
    assert np.array_equal(np.asarray(family.toy_scene(np.int64(32), torch.tensor(48), seed=np.int64(1))), want)
    edges = family.canny_edges(family.toy_scene(16, 16), 100, 200, use_opencv=False)
    same = family.canny_edges(family.toy_scene(16, 16), np.float32(100), np.int64(200), use_opencv=False)
    assert np.array_equal(np.asarray(edges), np.asarray(same))
    assert family.frames_to_gif(torch.zeros(2, 3, 8, 8), tmp_path / "v.gif", fps=np.float32(7)).is_file()
