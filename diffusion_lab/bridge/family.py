"""The Stable Diffusion family beyond text-to-image: the x4 upscaler, ControlNet, Stable unCLIP and Stable Video
Diffusion as the real ``diffusers`` pipelines, tiny offline stand-ins of each, and the input checks they need.

Notation
--------
==========================  ==========  ===============================================================================
code                        symbol      meaning
==========================  ==========  ===============================================================================
``low_res``                 c_lr        the low-resolution image (B, 3, h, w); the x4 upscaler returns (B, 3, f·h, f·w)
``noise_level``             s           conditioning augmentation of c_lr: c̃ = √ᾱ_s·c_lr + √(1 − ᾱ_s)·ε, the forward
                                        process (DDPM Eq. 4) of the ``low_res_scheduler``, s ≤ ``max_noise_level`` =
                                        350; s is also given to the UNet as a class label (Ho et al. 2022, cascaded
                                        diffusion's conditioning augmentation)
``latents``                 z_t         the noisy latent; the upscaler's lives at c_lr's size: UNet input z_t ⊕ c̃
                                        (4 + 3 = 7 channels), concatenation conditioning (Rombach et al. 2022, §4.4)
``control``                 c_ctl       a structure map (B, 3, H, W) in [0, 1], e.g. canny edges, at the output size
``down_block_res_samples``  r_i         ControlNet's outputs, one per UNet skip connection (plus one for the middle
                                        block), added to the skips: y_c = F(x; Θ) + Z(F(x + Z(c; Θ_z1); Θ_c); Θ_z2)
                                        (ControlNet, Zhang et al. 2023, Eq. 2; Z = zero-initialised 1×1 convolutions)
``image_embeds``            e           a CLIP image embedding (B, D); Stable unCLIP noises it to level s, and the
                                        UNet's class embedding reads e_s ⊕ sin-embedding(s), 2·D numbers (Ramesh et
                                        al. 2022, unCLIP §2.1: the image embedding conditions the decoder)
``num_frames``              N           frames of a video; SVD latents are (B, N, 4, h, w)
``added_time_ids``          —           SVD's micro-conditioning (fps − 1, motion_bucket_id, noise_aug_strength), each
                                        sinusoidally embedded (Blattmann et al. 2023, Stable Video Diffusion)
``noise_aug_strength``      σ_aug       the conditioning frame is x + σ_aug·ε before the VAE encodes it (SVD)
``decode_chunk_size``       —           frames the temporal VAE decoder decodes together (memory ↔ flicker)
``vae_scale_factor``        f           pixels per latent: x4 upscaler 4, SD 1.5 / unCLIP / SVD 8; stand-ins 2 or 4
==========================  ==========  ===============================================================================

Where each condition enters (:func:`conditioning_facts` prints the config fields that prove it): the x4 upscaler
concatenates c̃ to z_t (UNet ``in_channels`` 7 = 4 + 3) and reads s as a class label, its VAE's f = 4 *being* the
upscaling factor; ControlNet's trainable encoder copy reads c_ctl and returns one residual per skip; Stable unCLIP
reads the image only as its CLIP embedding through the class embedding (``class_embed_type`` ``"projection"``), the
prompt still by cross-attention; SVD concatenates the conditioning frame's latent to every frame (``in_channels`` 8),
its CLIP embedding replaces the text in cross-attention, and (fps, motion, σ_aug) are added time embeddings. Here:
seeded tiny stand-ins of the four real pipeline classes (``tiny_*``, no hub), :func:`load_family_pipeline`
(``bridge.load_pipeline`` plus the ControlNet passed as ``controlnet=``), the input checks diffusers does not make
(:func:`check_upscale_sizes`, :func:`check_control_image`, :func:`check_num_frames`: a wrong type is a ``TypeError``, a
wrong value a ``ValueError`` saying what to pass), and thin helpers (:func:`canny_edges`, :func:`toy_scene`,
:func:`frames_to_tensor`, :func:`frames_to_gif`, :func:`unet_skip_count`, :func:`is_stand_in`).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from diffusion_lab.bridge import hub
from diffusion_lab.bridge.generate import count_parameters
from diffusion_lab.bridge.tiny import tiny_sd15_controlnet, tiny_sd_upscaler, tiny_svd, tiny_unclip
from diffusion_lab.utils.errors import check_int, check_number

__all__ = [
    "CONTROLNET_IDS",
    "ConditioningFact",
    "canny_edges",
    "check_control_image",
    "check_num_frames",
    "check_upscale_sizes",
    "conditioning_facts",
    "frames_to_gif",
    "frames_to_tensor",
    "is_stand_in",
    "load_family_pipeline",
    "tiny_sd15_controlnet",
    "tiny_sd_upscaler",
    "tiny_svd",
    "tiny_unclip",
    "toy_scene",
    "unet_skip_count",
]

CONTROLNET_IDS: dict[str, tuple[str, ...]] = {
    # card key → ControlNet repositories, tried in order (both are SD 1.5 canny ControlNets; v1.1 is the newer one)
    "sd15-controlnet-canny": ("lllyasviel/control_v11p_sd15_canny", "lllyasviel/sd-controlnet-canny"),
}
"""The ControlNet weights that go with a ``bridge.MODELS`` card whose ``repo_id`` is the base model."""
STAND_IN_MAX_PARAMETERS = 50_000_000  # every real denoiser here has more than 400 M parameters; the stand-ins < 2 M


def is_stand_in(pipe) -> bool:
    """True for the tiny stand-ins: their denoiser has under 50 M parameters; every real one here has more than
    400 M. (``bridge.is_tiny`` tests f < 8, which the real x4 upscaler, f = 4, would fail.)"""
    return count_parameters(pipe.unet) < STAND_IN_MAX_PARAMETERS


def _real_controlnet(
    ids: Sequence[str], env: hub.Environment, hub_timeout: float = hub.HUB_TIMEOUT
) -> diffusers.ControlNetModel | None:
    """``ControlNetModel.from_pretrained`` of the first id that loads, or None with a message. In half precision the
    fp16 files are asked for first, then the full ones (cast at load) when a repository has none. Every hub request
    is bounded by ``hub_timeout`` seconds; a hub that does not answer stops the search (the next id would wait too)."""
    token, _ = hub.find_token()
    half = env.dtype in (torch.float16, torch.bfloat16)
    for rid in ids:
        for variant in ("fp16", None) if half else (None,):
            try:
                with hub.bounded_hub(hub_timeout):
                    model = diffusers.ControlNetModel.from_pretrained(
                        rid, dtype=env.dtype, variant=variant, token=token
                    )
                print(f"loaded the ControlNet {rid} ({env.dtype})")
                return model
            except Exception as exc:  # noqa: BLE001 - no fp16 files → the full ones; otherwise the next id
                kind, message = hub.explain_hub_error(exc, rid, hub_timeout) or (None, None)
                if kind == "timeout":
                    print(f"{message}; no ControlNet")
                    return None
                if variant and kind is None:
                    continue
                print(message or f"could not load the ControlNet {rid} ({type(exc).__name__}: {str(exc)[:160]})")
                break
    return None


def load_family_pipeline(key: str, env: hub.Environment, **kwargs):
    """:func:`bridge.load_pipeline` for every card, and for a ControlNet card (see :data:`CONTROLNET_IDS`) the
    real path the diffusers docs show: ``controlnet = ControlNetModel.from_pretrained(id)`` then
    ``StableDiffusionControlNetPipeline.from_pretrained(base_id, controlnet=controlnet)``. If the ControlNet cannot
    be loaded, or the base falls back to its tiny stand-in, the whole tiny pipeline is used (a real ControlNet does
    not fit a tiny UNet). ``kwargs`` go to ``bridge.load_pipeline`` (``cache_dir``, ``strict``, ``repo_id``...)."""
    ids = CONTROLNET_IDS.get(key)
    if not (env.use_real and ids):
        return hub.load_pipeline(key, env, **kwargs)
    tiny_env = replace(env, use_real=False, reasons=(*env.reasons, "the ControlNet could not be loaded"))
    controlnet = _real_controlnet(ids, env, kwargs.get("hub_timeout", hub.HUB_TIMEOUT))
    if controlnet is None:
        print("using the tiny stand-in of the whole pipeline")
        return hub.load_pipeline(key, tiny_env, **kwargs)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        pipe = hub.load_pipeline(key, env, controlnet=controlnet, **kwargs)
    if not is_stand_in(pipe):
        print(printed.getvalue(), end="")
        return pipe
    for line in printed.getvalue().splitlines():  # why the base fell back (the tiny line is printed again below)
        if not line.startswith("loaded the TINY"):
            print(line)
    print("the base model fell back to its tiny stand-in: the real ControlNet is dropped too")
    return hub.load_pipeline(key, tiny_env, **kwargs)


@dataclass(frozen=True)
class ConditioningFact:
    """One configuration field, its value, whether the relation stated in ``why`` holds, and what it means."""

    field: str
    value: object
    holds: bool
    why: str

    def __str__(self) -> str:
        return f"{'ok ' if self.holds else 'NO '} {self.field:44s} {self.value!s:>18s}  {self.why}"


def unet_skip_count(config) -> int:
    """Skip connections of a ``UNet2DConditionModel`` (what its decoder reads, what a ControlNet adds residuals to):
    one after ``conv_in``, one per resnet of every down block, one per downsampler (all levels but the last)."""
    n = len(config.block_out_channels)
    layers = config.layers_per_block
    per_level = [layers] * n if isinstance(layers, int) else list(layers)
    return 1 + sum(per_level[i] + (1 if i < n - 1 else 0) for i in range(n))


def conditioning_facts(pipe) -> list[ConditioningFact]:
    """Where each condition enters the network of ``pipe`` (x4 upscaler, ControlNet, Stable unCLIP or SVD), as
    configuration fields and the relation they satisfy; works the same on the real weights and the stand-ins."""
    unet, vae = pipe.unet.config, pipe.vae.config
    fact = ConditioningFact
    if isinstance(pipe, diffusers.StableDiffusionUpscalePipeline):
        levels = len(vae.block_out_channels)
        return [
            fact("unet.in_channels", unet.in_channels, unet.in_channels == vae.latent_channels + 3,
                 f"= {vae.latent_channels} latent + 3 RGB: z_t ⊕ noisy low-res image, concatenated"),
            fact("unet.num_class_embeds", unet.num_class_embeds,
                 (unet.num_class_embeds or 0) > pipe.config.max_noise_level,
                 "> max_noise_level: the noise level s is a class label (an embedding added to time)"),
            fact("pipe.config.max_noise_level", pipe.config.max_noise_level, pipe.config.max_noise_level > 0,
                 "largest s: c̃ = √ᾱ_s·c_lr + √(1−ᾱ_s)·ε by the low_res_scheduler"),
            fact("low_res_scheduler", type(pipe.low_res_scheduler).__name__,
                 isinstance(pipe.low_res_scheduler, diffusers.DDPMScheduler), "its add_noise is the augmentation"),
            fact("vae_scale_factor", pipe.vae_scale_factor, pipe.vae_scale_factor == 2 ** (levels - 1),
                 f"= 2^({levels} VAE levels − 1): latents have the low-res size, output is f× larger"),
        ]  # fmt: skip
    if isinstance(pipe, diffusers.StableDiffusionControlNetPipeline):
        cn = pipe.controlnet.config
        skips, residuals = unet_skip_count(unet), len(pipe.controlnet.controlnet_down_blocks)
        steps = 2 ** (len(cn.conditioning_embedding_out_channels) - 1)
        return [
            fact("controlnet down-block residuals", residuals, residuals == skips,
                 f"= {skips} skip connections of the UNet (one residual added to each)"),
            fact("controlnet mid-block residual channels", pipe.controlnet.controlnet_mid_block.out_channels,
                 pipe.controlnet.controlnet_mid_block.out_channels == unet.block_out_channels[-1],
                 "= the UNet's middle-block width (added to its output)"),
            fact("controlnet.block_out_channels", tuple(cn.block_out_channels),
                 tuple(cn.block_out_channels) == tuple(unet.block_out_channels),
                 "= the UNet's: a trainable copy of its encoder (ControlNet Eq. 2)"),
            fact("control embedding downsampling", steps, steps == pipe.vae_scale_factor,
                 f"= f: {len(cn.conditioning_embedding_out_channels) - 1} stride-2 convs take c_ctl to latent size"),
            fact("controlnet.conditioning_channels", cn.conditioning_channels, cn.conditioning_channels == 3,
                 "RGB control map (an edge map is repeated 3 times)"),
        ]  # fmt: skip
    if isinstance(pipe, diffusers.StableUnCLIPImg2ImgPipeline):
        dim = pipe.image_encoder.config.projection_dim
        return [
            fact("unet.class_embed_type", unet.class_embed_type, unet.class_embed_type == "projection",
                 "a small MLP (Linear→SiLU→Linear) of a vector is added to the time embedding"),
            fact("unet.projection_class_embeddings_input_dim", unet.projection_class_embeddings_input_dim,
                 unet.projection_class_embeddings_input_dim == 2 * dim,
                 f"= 2 × {dim} (CLIP image embedding): noised e_s ⊕ sin-embedding(s)"),
            fact("image_normalizer.mean", tuple(pipe.image_normalizer.mean.shape),
                 pipe.image_normalizer.mean.shape[-1] == dim, "e is standardised before noising, restored after"),
            fact("unet.cross_attention_dim", unet.cross_attention_dim,
                 unet.cross_attention_dim == pipe.text_encoder.config.hidden_size,
                 "= text width: the prompt still enters by cross-attention"),
        ]  # fmt: skip
    if isinstance(pipe, diffusers.StableVideoDiffusionPipeline):
        time_ids = pipe.unet.add_embedding.linear_1.in_features
        return [
            fact("unet.in_channels", unet.in_channels, unet.in_channels == 2 * vae.latent_channels,
                 f"= {vae.latent_channels} noisy + {vae.latent_channels} conditioning-frame latent, every frame"),
            fact("add_embedding.linear_1.in_features", time_ids, time_ids == 3 * unet.addition_time_embed_dim,
                 f"= 3 × {unet.addition_time_embed_dim}: (fps − 1, motion_bucket_id, noise_aug_strength)"),
            fact("unet.cross_attention_dim", unet.cross_attention_dim,
                 unet.cross_attention_dim == pipe.image_encoder.config.projection_dim,
                 "= CLIP image embedding: one image token replaces the text"),
            fact("unet.num_frames", unet.num_frames, unet.num_frames >= 2, "the clip length it was trained on"),
        ]  # fmt: skip
    raise TypeError(
        f"no conditioning facts for {type(pipe).__name__}: pass an upscaler, ControlNet, unCLIP or SVD pipe"
    )


def _positive_pair(name: str, hw) -> tuple[int, int]:
    if isinstance(hw, str) or not isinstance(hw, Sequence):
        raise TypeError(f"{name} must be a (height, width) pair of integers, got {hw!r}")
    try:  # Python, NumPy or torch integers; bools and floats refused
        sides = [check_int(name, v, minimum=None) for v in hw]
    except TypeError:
        raise TypeError(f"{name} must be a (height, width) pair of integers, got {hw!r}") from None
    if len(sides) != 2:
        raise ValueError(f"{name} must be a (height, width) pair of integers, got {hw!r}")
    h, w = sides
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive integers, got {hw!r}")
    return h, w


def check_upscale_sizes(low_res_hw, target_hw, factor: int, *, multiple: int = 1) -> None:
    """A low-res image of (h, w) upscales by exactly ``factor`` to (f·h, f·w): the target must be that. ``multiple``:
    what the low-res sides must be multiples of — ``StableDiffusionUpscalePipeline`` silently resizes its input
    *down* to multiples of its ``vae_scale_factor`` (a 30×30 image becomes 28×28, the output 112×112, not 120×120)."""
    factor, multiple = check_int("factor", factor), check_int("multiple", multiple)
    (h, w), (th, tw) = _positive_pair("low_res_hw", low_res_hw), _positive_pair("target_hw", target_hw)
    if th % factor or tw % factor:
        raise ValueError(
            f"target {th}x{tw} is not a multiple of the upscaling factor {factor}: this model only makes images "
            f"{factor}x the input; pick a target such as {th // factor * factor}x{tw // factor * factor}"
        )
    if (th, tw) != (factor * h, factor * w):
        raise ValueError(
            f"a {h}x{w} low-res image upscales to {factor * h}x{factor * w}, not {th}x{tw}: resize the low-res image "
            f"to {th // factor}x{tw // factor} first (the model's factor is fixed at {factor})"
        )
    if h % multiple or w % multiple:
        raise ValueError(
            f"low-res sides {h}x{w} must be multiples of {multiple}: the pipeline would silently resize the image to "
            f"{h // multiple * multiple}x{w // multiple * multiple}; crop or resize it yourself first"
        )


def _chw(image) -> tuple[int, int, int]:
    """(channels, height, width) of a PIL image, an (H, W[, C]) array or a (C, H, W) / (B, C, H, W) tensor."""
    if isinstance(image, Image.Image):
        return len(image.getbands()), image.height, image.width
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            return 1, *image.shape
        if image.ndim in (3, 4):
            return image.shape[-1], image.shape[-3], image.shape[-2]  # (…, H, W, C), as diffusers reads arrays
    if isinstance(image, torch.Tensor) and image.ndim in (3, 4):
        return image.shape[-3], image.shape[-2], image.shape[-1]
    if isinstance(image, np.ndarray | torch.Tensor):
        raise ValueError(
            f"a control map must be an (H, W[, C]) array or a (C, H, W) / (B, C, H, W) tensor, got shape "
            f"{tuple(image.shape)}"
        )
    raise TypeError(
        f"a control map must be a PIL image, an (H, W, C) array or a (C, H, W) / (B, C, H, W) tensor, got "
        f"{type(image).__name__} with shape {getattr(image, 'shape', None)}"
    )


def check_control_image(control, height: int, width: int, channels: int = 3) -> None:
    """The control map must have the output's size and the ControlNet's ``conditioning_channels``: diffusers
    resizes a map of another size to (height, width) without a word (edges get blurred and shifted) and fails deep
    inside a convolution on a wrong channel count (of a tensor or array: a PIL image of any mode is converted to RGB
    by the pipeline's control image processor, ``do_convert_rgb=True``, so a greyscale PIL map is fine for a
    3-channel ControlNet). A list (one map per prompt) is checked item by item."""
    height, width, channels = (
        check_int(n, v) for n, v in (("height", height), ("width", width), ("channels", channels))
    )
    items = control if isinstance(control, list | tuple) else [control]
    if not items:
        raise ValueError("control is an empty list: give one control map, or one per prompt")
    for item in items:
        c, h, w = _chw(item)
        if isinstance(item, Image.Image):
            c = 3  # the pipeline converts every PIL control map to RGB before the ControlNet sees it
        _check_control_values(item)
        if (h, w) != (height, width):
            raise ValueError(
                f"the control map is {h}x{w} but the image will be {height}x{width}: make them equal — resize or crop "
                f"the map, or pass height={h}, width={w} (ControlNet follows the map pixel for pixel)"
            )
        if c != channels:
            hint = "image.convert('RGB'), or repeat a 1-channel tensor: x.expand(-1, 3, -1, -1)" if c == 1 else ""
            raise ValueError(
                f"the control map has {c} channel(s); this ControlNet takes {channels} "
                f"(controlnet.config.conditioning_channels){': ' + hint if hint else ''}"
            )


def _check_control_values(item) -> None:
    """A tensor or float array control map must be finite, in [0, 1] (diffusers' range for tensor control maps)."""
    if isinstance(item, Image.Image) or (isinstance(item, np.ndarray) and item.dtype == np.uint8):
        return  # pixels 0..255: diffusers scales them itself
    x = torch.as_tensor(item) if isinstance(item, np.ndarray) else item
    if not x.is_floating_point():
        raise ValueError(f"control must hold floats in [0, 1] (or uint8 pixels in an array), got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError("control (the control map) contains NaN or infinite values")
    lo, hi = x.min().item(), x.max().item()
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"control (the control map) values must be in [0, 1], got {lo:.3g} to {hi:.3g}: 0..255 pixels → divide "
            "by 255 (canny_edges of a PIL image gives a PIL map, which is fine as it is)"
        )


def check_num_frames(num_frames: int, unet, decode_chunk_size: int | None = None) -> None:
    """What SVD can produce: 2 ≤ N ≤ the clip length it was trained on (``unet.config.num_frames``: 14 for SVD, 25
    for SVD-XT). Its temporal layers attend across the N frames with a sinusoidal embedding of each frame's index;
    trained on exactly that many, they have never seen a later index (longer clips degrade: chain clips from the last
    frame instead), and one frame is no video (use an image model). ``decode_chunk_size`` (1..N): the temporal VAE
    decoder mixes frames only within a chunk — smaller chunks use less memory but may flicker at chunk borders."""
    config = getattr(unet, "config", unet)
    if not hasattr(config, "num_frames"):
        raise TypeError(f"unet must be SVD's UNet (or its config, with num_frames), got {type(unet).__name__}")
    trained = int(config.num_frames)
    num_frames = check_int("num_frames", num_frames, minimum=None)  # NumPy / torch integers too
    if num_frames < 2:
        raise ValueError(
            f"num_frames={num_frames}: a video needs at least 2 frames (the temporal layers mix frames); for one "
            "image use an image model"
        )
    if num_frames > trained:
        raise ValueError(
            f"num_frames={num_frames} is more than this model was trained on ({trained} = unet.config.num_frames): "
            f"its temporal attention has never seen frame {trained} or later. Generate {trained} frames and chain "
            "another clip from the last frame, or use a model trained on longer clips (SVD-XT: 25)"
        )
    if decode_chunk_size is None:
        return
    message = (
        f"decode_chunk_size={decode_chunk_size!r} must be an integer from 1 to num_frames={num_frames} (frames "
        "decoded together: fewer = less memory, more flicker at chunk borders)"
    )
    try:
        decode_chunk_size = check_int("decode_chunk_size", decode_chunk_size, minimum=None)
    except TypeError:
        raise TypeError(message) from None
    if not 1 <= decode_chunk_size <= num_frames:
        raise ValueError(message)


def toy_scene(height: int = 64, width: int = 64, seed: int = 0) -> Image.Image:
    """A synthetic RGB picture (coloured background, a disc, a rectangle and a line at seeded places): an input for
    the pipelines that needs no download, with edges for a canny map. Sides of at least 2 pixels; ``seed`` ≥ 0."""
    height, width = check_int("height", height, minimum=2), check_int("width", width, minimum=2)
    rng = np.random.default_rng(check_int("seed", seed, minimum=0))
    colours = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(4)]
    image = Image.new("RGB", (width, height), colours[0])
    draw = ImageDraw.Draw(image)
    x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
    draw.ellipse([x0, y0, x0 + width // 3, y0 + height // 3], fill=colours[1])
    x1, y1 = rng.integers(width // 4, width // 2), rng.integers(height // 2, height - height // 5)
    draw.rectangle([x1, y1, x1 + width // 3, y1 + height // 6], fill=colours[2])
    draw.line([0, height - 1, width - 1, height // 3], fill=colours[3], width=max(1, width // 32))
    return image


_TAN_22_5, _TAN_67_5 = 0.41421356237309503, 2.414213562373095


def _canny_torch(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """OpenCV's Canny on (B, C, H, W) values in 0..255: 3×3 Sobel per channel (the channel with the largest
    |g_x| + |g_y| wins, as ``cv2.Canny`` does on colour images), non-maximum suppression along the gradient
    direction (4 sectors), then hysteresis: pixels above ``high`` seed edges that grow through pixels above
    ``low``. No blur: as in OpenCV, blur first if the image is noisy. Returns (B, 1, H, W) booleans."""
    b, c, h, w = x.shape
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
    kernels = torch.stack([sobel, sobel.T]).unsqueeze(1)  # (2, 1, 3, 3): ∂/∂x, ∂/∂y
    padded = F.pad(x.reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    g = F.conv2d(padded, kernels).reshape(b, c, 2, h, w)  # (B, C, 2, H, W)
    mag = g.abs().sum(2)  # (B, C, H, W): the L1 norm |g_x| + |g_y| (OpenCV's default)
    best = mag.argmax(1, keepdim=True)  # (B, 1, H, W)
    mag = mag.gather(1, best)
    gx = g[:, :, 0].gather(1, best)
    gy = g[:, :, 1].gather(1, best)
    m = F.pad(mag, (1, 1, 1, 1))  # zero border

    def at(dy: int, dx: int) -> torch.Tensor:
        return m[:, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    ax, ay = gx.abs(), gy.abs()
    horizontal = ay < ax * _TAN_22_5  # gradient along x: compare left and right
    vertical = ay > ax * _TAN_67_5  # gradient along y: compare up and down
    same_sign = (gx * gy) > 0  # gradient towards down-right (y grows downwards): the main diagonal
    before = torch.where(
        horizontal, at(0, -1), torch.where(vertical, at(-1, 0), torch.where(same_sign, at(-1, -1), at(-1, 1)))
    )
    after = torch.where(
        horizontal, at(0, 1), torch.where(vertical, at(1, 0), torch.where(same_sign, at(1, 1), at(1, -1)))
    )
    diagonal = ~horizontal & ~vertical
    # a local maximum along the gradient; on a plateau the first pixel wins (OpenCV: > before, >= after; > on diagonals)
    candidate = (mag > low) & (mag > before) & ((mag >= after) & ~diagonal | (mag > after) & diagonal)
    edges = candidate & (mag > high)
    while True:  # hysteresis: grow strong edges through 8-connected candidates
        grown = candidate & (F.max_pool2d(edges.float(), 3, stride=1, padding=1) > 0)
        if torch.equal(grown, edges):
            return edges
        edges = grown


def canny_edges(image, low: float = 100, high: float = 200, *, use_opencv: bool | None = None):
    """Canny edges as a 3-channel control map (the form ControlNet canny models were trained on). ``image``: a PIL
    image (→ an RGB PIL image, edges 255) or a (3, H, W) / (B, 3, H, W) tensor in [0, 1] (→ the same shape with
    3 equal channels in {0, 1}). ``low``/``high``: the hysteresis thresholds on OpenCV's 0..255 gradient scale.
    ``use_opencv``: ``cv2.Canny`` (what diffusers' examples use) or the pure-torch version above; default: OpenCV when
    it is installed. The two follow the same algorithm; pixels on ties may differ."""
    low, high = check_number("low", low), check_number("high", high)
    if use_opencv is not None and not isinstance(use_opencv, bool):
        raise TypeError(f"use_opencv must be True, False or None (OpenCV when installed), got {use_opencv!r}")
    if high < low or low < 0:
        raise ValueError(f"need 0 <= low <= high, got low={low}, high={high}")
    is_pil = isinstance(image, Image.Image)
    if is_pil:
        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None]  # 0..255
    elif isinstance(image, torch.Tensor) and image.ndim in (3, 4):
        x = (image if image.ndim == 4 else image[None]).detach().float().cpu()  # (B, C, H, W)
        if x.shape[1] not in (1, 3):
            raise ValueError(f"image must have 3 (RGB) or 1 channels, got shape {tuple(image.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("image contains NaN or infinite values")
        if x.numel() and (x.min() < -1e-3 or x.max() > 1 + 1e-3):
            raise ValueError(
                f"image values must be in [0, 1], got {x.min():.3g} to {x.max():.3g}: 0..255 pixels → divide by 255; "
                "[-1, 1] images → (x + 1) / 2"
            )
        x = x * 255.0
    elif isinstance(image, torch.Tensor):
        raise ValueError(f"image must be a (3, H, W) or (B, 3, H, W) tensor in [0, 1], got shape {tuple(image.shape)}")
    else:
        raise TypeError(
            f"canny_edges takes a PIL image or a (3, H, W) / (B, 3, H, W) tensor, got {type(image).__name__}"
        )
    if use_opencv is None:
        try:
            import cv2  # lazy: OpenCV is optional (the torch Canny is used without it)  # noqa: F401
        except ImportError:
            use_opencv = False
        else:
            use_opencv = True
    if use_opencv:
        import cv2  # lazy: OpenCV is optional (the torch Canny is used without it)

        frames = x.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy()
        edges = torch.from_numpy(np.stack([cv2.Canny(np.ascontiguousarray(f), low, high) > 0 for f in frames]))[:, None]
    else:
        edges = _canny_torch(x, float(low), float(high))  # (B, 1, H, W)
    if is_pil:
        return Image.fromarray(np.repeat(edges[0, 0].numpy()[..., None], 3, axis=2).astype(np.uint8) * 255)
    out = edges.float().expand(-1, 3, -1, -1).to(image.device)
    return out if image.ndim == 4 else out[0]


def frames_to_tensor(frames) -> torch.Tensor:
    """Video frames → (N, 3, H, W) in [−1, 1] (for ``show_images``): a list of PIL images (SVD's ``output_type="pil"``,
    i.e. ``out.frames[0]``), an (N, H, W, 3) array in [0, 1] or uint8 (``"np"``), or an (N, 3, H, W) tensor in [0, 1]
    (``"pt"``). Pass one video, not the batch: ``out.frames[0]``."""
    if isinstance(frames, (list, tuple)) and frames and all(isinstance(f, Image.Image) for f in frames):
        x = torch.from_numpy(np.stack([np.asarray(f.convert("RGB")) for f in frames])).permute(0, 3, 1, 2) / 255.0
    elif isinstance(frames, np.ndarray) and frames.ndim == 4 and frames.shape[-1] == 3:
        scale = 255.0 if frames.dtype == np.uint8 else 1.0
        x = torch.from_numpy(frames.astype(np.float32) / scale).permute(0, 3, 1, 2)
    elif isinstance(frames, torch.Tensor) and frames.ndim == 4 and frames.shape[1] == 3:
        x = frames.detach().float().cpu()
    else:
        right_type = isinstance(frames, np.ndarray | torch.Tensor) or (
            isinstance(frames, list | tuple) and all(isinstance(f, Image.Image) for f in frames)
        )
        raise (ValueError if right_type else TypeError)(
            "frames must be a list of PIL images, an (N, H, W, 3) array or an (N, 3, H, W) tensor in [0, 1] — one "
            f"video (out.frames[0]), got {type(frames).__name__} {getattr(frames, 'shape', '')}"
        )
    if x.shape[0] == 0:
        raise ValueError("frames holds no frame (N = 0): pass one video, out.frames[0]")
    if not torch.isfinite(x).all():
        raise ValueError("frames contains NaN or infinite values")
    if x.min() < -1e-3 or x.max() > 1 + 1e-3:
        raise ValueError(
            f"frames must be in [0, 1], got {x.min():.3g} to {x.max():.3g}: pass 0..255 frames as a uint8 array, "
            "or divide them by 255"
        )
    return (x.clamp(0, 1) * 2 - 1).contiguous()  # (N, 3, H, W)


def frames_to_gif(frames, path: str | os.PathLike, fps: float = 7.0) -> Path:
    """Write the frames (any form :func:`frames_to_tensor` takes) as a looping GIF at ``fps`` frames per second,
    atomically: into a temporary file next to ``path``, renamed into place (no half-written file, ever)."""
    fps = check_number("fps", fps)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if fps > 100:
        raise ValueError(f"fps must be at most 100 (GIF frame delays are whole 1/100 s), got {fps}")
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike file name, got {type(path).__name__}")
    x = frames_to_tensor(frames)  # (N, 3, H, W) in [−1, 1]
    pixels = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
    images = [Image.fromarray(p) for p in pixels]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=".gif", dir=path.parent)
    os.close(fd)
    try:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
