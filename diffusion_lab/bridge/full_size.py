"""The published full-size configurations of SDXL base, the SDXL refiner and SD3 medium, and builders that make their
real diffusers/transformers modules with random weights — on the ``meta`` device (shapes only: parameter counts and
memory estimates at no cost) or materialised on any device in any dtype (benchmarks: the time and memory of a forward
pass depend on the shapes and the dtype, not on the values of the weights, so nothing is downloaded and no licence is
needed).

Sources: the ``config.json`` files of the hub repositories (``stabilityai/stable-diffusion-xl-base-1.0``,
``stabilityai/stable-diffusion-xl-refiner-1.0``, ``stabilityai/stable-diffusion-3-medium-diffusers``,
``openai/clip-vit-large-patch14``, ``google/t5-v1_1-xxl``), each checked against a second public copy; the refiner's
against Stability's own ``configs/inference/sd_xl_refiner.yaml`` (model_channels 384, channel_mult [1, 2, 4, 4],
attention at the two middle levels, transformer depth 4, 64 channels per head, context 1280, adm_in_channels 2560).

Notation: diffusers' ``attention_head_dim`` for these UNets is, despite its name, the *number of heads* per level
(channels / 64: SDXL base [5, 10, 20] on [320, 640, 1280]; the refiner [6, 12, 24, 24] on [384, 768, 1536, 1536]).
The added-condition input is ``n_time_ids · addition_time_embed_dim + pooled width``: base 6·256 + 1280 = 2816
(original size, crop, target size), refiner 5·256 + 1280 = 2560 (original size, crop, aesthetic score).

Dtypes are set as ``from_pretrained(..., dtype=...)`` sets them (:func:`keep_in_fp32`). Every module is created
directly on its device in its dtype (never first in fp32 on the CPU: T5-XXL alone is 19 GB in fp32), one at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import diffusers
import torch
import transformers

from diffusion_lab.bridge.generate import count_parameters
from diffusion_lab.bridge.tiny import SDXL_SCHEDULER_CONFIG, tiny_clip_tokenizer, tiny_t5_tokenizer
from diffusion_lab.utils.errors import check_choice

__all__ = [
    "SDXL_UNET",
    "SDXL_REFINER_UNET",
    "SDXL_VAE",
    "SD3_VAE",
    "CLIP_L",
    "CLIP_BIGG",
    "T5_XXL",
    "SD3_TRANSFORMER",
    "FULL_SIZE_MODELS",
    "keep_in_fp32",
    "full_components",
    "full_pipeline",
    "full_size_parameters",
]

FULL_SIZE_MODELS = ("sdxl", "sdxl-refiner", "sd3")

SDXL_UNET = {  # stabilityai/stable-diffusion-xl-base-1.0, unet/config.json: 2,567,463,684 parameters
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),  # 70 transformer blocks (attn2 layers): 2·2 + 2·10 + 10 + 3·10 + 3·2
    "attention_head_dim": (5, 10, 20),  # heads per level (64 channels each)
    "cross_attention_dim": 2048,  # 768 (CLIP-L) + 1280 (bigG) features per token
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 6 time ids x 256 + 1280 pooled bigG
    "norm_num_groups": 32,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}
SDXL_REFINER_UNET = {  # stabilityai/stable-diffusion-xl-refiner-1.0, unet/config.json: 2,259,526,660 parameters
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (384, 768, 1536, 1536),
    "layers_per_block": 2,
    "transformer_layers_per_block": 4,  # 44 transformer blocks: (2 + 2 + 1 + 3 + 3) x 4
    "attention_head_dim": (6, 12, 24, 24),  # heads per level (64 channels each)
    "cross_attention_dim": 1280,  # bigG only: the refiner has no CLIP-L
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2560,  # 5 time ids (with the aesthetic score) x 256 + 1280 pooled bigG
    "norm_num_groups": 32,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}
_VAE_COMMON = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 1024,  # also the tile size of enable_tiling(): tiles only above 1024 px (128 latent pixels)
}
SDXL_VAE = {**_VAE_COMMON, "latent_channels": 4, "scaling_factor": 0.13025, "force_upcast": True}  # 83,653,863
SD3_VAE = {  # stabilityai/stable-diffusion-3-medium-diffusers, vae/config.json: 83,819,683 parameters
    **_VAE_COMMON,
    "latent_channels": 16,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "force_upcast": True,
}
CLIP_L = {  # openai/clip-vit-large-patch14 text tower: 123,060,480 parameters (+ 589,824 with SD3's projection)
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
CLIP_BIGG = {  # OpenCLIP ViT-bigG/14 text tower with projection: 694,659,840 parameters
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "projection_dim": 1280,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}
T5_XXL = {  # google/t5-v1_1-xxl encoder (SD3's text_encoder_3): 4,762,310,656 parameters
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6,
}
SD3_TRANSFORMER = {  # stabilityai/stable-diffusion-3-medium-diffusers, transformer/config.json: 2,028,328,000
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,  # hidden 1536 = 24 x 64
    "joint_attention_dim": 4096,  # T5's width; CLIP features are zero-padded to it
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,  # 768 + 1280 pooled CLIP vectors
    "pos_embed_max_size": 192,
}


@contextlib.contextmanager
def _creating(device: str | torch.device, dtype: torch.dtype) -> Iterator[None]:
    """New tensors on ``device`` in ``dtype``: a module is initialised where and how it will run."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def keep_in_fp32(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """What ``from_pretrained(..., dtype=...)`` does and a plain ``.to(dtype)`` does not: submodules that the model
    class lists in ``_keep_in_fp32_modules`` stay in float32 when loading in fp16 (T5's feed-forward output layers
    ``wo``: 1.0 B of T5-XXL's 4.8 B parameters, 2 GB more than all-fp16), and those in
    ``_keep_in_fp32_modules_strict`` in fp16 and bf16. Returns ``module`` (changed in place)."""
    keep = set()
    if dtype == torch.float16:
        keep |= set(getattr(module, "_keep_in_fp32_modules", None) or ())
    if dtype in (torch.float16, torch.bfloat16):
        keep |= set(getattr(module, "_keep_in_fp32_modules_strict", None) or ())
    for name, sub in module.named_modules() if keep else ():
        if keep & set(name.split(".")):
            sub.to(torch.float32)
    return module


def _clip_token_ids() -> dict[str, int]:
    """The text configs' special ids must be the tokenizer's (CLIP pools at the first end-of-text token)."""
    tok = tiny_clip_tokenizer()
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}


def full_components(
    model: str,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    with_t5: bool = True,
    vae_dtype: torch.dtype | None = None,
    park: bool = False,
) -> dict[str, torch.nn.Module | None]:
    """The modules of full-size SDXL base (``model="sdxl"``), the SDXL refiner (``"sdxl-refiner"``: bigG, UNet, VAE)
    or SD3 medium (``"sd3"``) with seeded random weights in eval mode, built one at a time on ``device`` in ``dtype``
    (``vae_dtype`` for the VAE). ``park=True`` moves each to the CPU once built (for CPU offload, so that the GPU never
    holds all of them). ``device="meta"``: shapes only, no memory."""
    check_choice("model", model, FULL_SIZE_MODELS)

    def make(seed: int, build: Callable[[], torch.nn.Module], dt: torch.dtype = dtype) -> torch.nn.Module:
        torch.manual_seed(seed)
        with _creating(device, dt):
            module = build()
        if str(device) != "meta":
            module = module.to(device=device, dtype=dt)  # numpy-made buffers start on the CPU
        keep_in_fp32(module, dt)  # on the meta device too: parameter bytes per dtype are what a memory model reads
        if park:
            module.to("cpu")
        return module.eval()  # built from a config = train mode (dropout); from_pretrained gives eval mode

    ids = _clip_token_ids()
    clip_l = transformers.CLIPTextConfig(**CLIP_L, **ids)
    clip_g = transformers.CLIPTextConfig(**CLIP_BIGG, **ids)
    if model == "sdxl":
        return {
            "text_encoder": make(0, lambda: transformers.CLIPTextModel(clip_l)),
            "text_encoder_2": make(1, lambda: transformers.CLIPTextModelWithProjection(clip_g)),
            "unet": make(2, lambda: diffusers.UNet2DConditionModel(**SDXL_UNET)),
            "vae": make(3, lambda: diffusers.AutoencoderKL(**SDXL_VAE), vae_dtype or dtype),
        }
    if model == "sdxl-refiner":
        return {
            "text_encoder_2": make(1, lambda: transformers.CLIPTextModelWithProjection(clip_g)),
            "unet": make(5, lambda: diffusers.UNet2DConditionModel(**SDXL_REFINER_UNET)),
            "vae": make(3, lambda: diffusers.AutoencoderKL(**SDXL_VAE), vae_dtype or dtype),
        }
    t5 = tiny_t5_tokenizer()
    t5_config = transformers.T5Config(
        **T5_XXL, pad_token_id=t5.pad_token_id, eos_token_id=t5.eos_token_id, decoder_start_token_id=0
    )
    return {
        "text_encoder": make(0, lambda: transformers.CLIPTextModelWithProjection(clip_l)),
        "text_encoder_2": make(1, lambda: transformers.CLIPTextModelWithProjection(clip_g)),
        "text_encoder_3": make(2, lambda: transformers.T5EncoderModel(t5_config)) if with_t5 else None,
        "transformer": make(3, lambda: diffusers.SD3Transformer2DModel(**SD3_TRANSFORMER)),
        "vae": make(4, lambda: diffusers.AutoencoderKL(**SD3_VAE), vae_dtype or dtype),
    }


def full_pipeline(
    model: str,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    with_t5: bool = True,
    vae_dtype: torch.dtype | None = None,
    park: bool = False,
    base: diffusers.StableDiffusionXLPipeline | None = None,
):
    """A full-size, random-weight pipeline of the real diffusers class (see :func:`full_components`): SDXL base
    (``StableDiffusionXLPipeline``, Euler), the refiner (``StableDiffusionXLImg2ImgPipeline`` with the aesthetic
    score, Euler; with ``base=`` it shares the base's bigG encoder and VAE, as the notebooks' refiner recipe does, and
    builds only its UNet) or SD3 medium (``StableDiffusion3Pipeline``, flow-match Euler with shift 3)."""
    check_choice("model", model, FULL_SIZE_MODELS)
    if model == "sdxl-refiner" and base is not None:
        torch.manual_seed(5)
        with _creating(device, dtype):
            unet = diffusers.UNet2DConditionModel(**SDXL_REFINER_UNET)
        comps = {"text_encoder_2": base.text_encoder_2, "unet": unet.to(device=device, dtype=dtype).eval()}
        comps["vae"] = base.vae
    else:
        comps = full_components(model, device=device, dtype=dtype, with_t5=with_t5, vae_dtype=vae_dtype, park=park)
    if model == "sdxl":
        pipe = diffusers.StableDiffusionXLPipeline(
            **comps,
            tokenizer=tiny_clip_tokenizer(),
            tokenizer_2=tiny_clip_tokenizer(),
            scheduler=diffusers.EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
            add_watermarker=False,
        )
    elif model == "sdxl-refiner":
        pipe = diffusers.StableDiffusionXLImg2ImgPipeline(
            **comps,
            text_encoder=None,
            tokenizer=None,
            tokenizer_2=tiny_clip_tokenizer(),
            scheduler=diffusers.EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG),
            requires_aesthetics_score=True,
            force_zeros_for_empty_prompt=False,
            add_watermarker=False,
        )
    else:
        pipe = diffusers.StableDiffusion3Pipeline(
            **comps,
            tokenizer=tiny_clip_tokenizer(),
            tokenizer_2=tiny_clip_tokenizer(),
            tokenizer_3=tiny_t5_tokenizer() if with_t5 else None,
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def full_size_parameters(models: tuple[str, ...] = ("sdxl", "sd3")) -> dict[str, dict[str, int]]:
    """Parameters of every full-size component of ``models``, built on the ``meta`` device (shapes only: no memory,
    a few seconds)."""
    out = {}
    for model in models:
        comps = full_components(model, device="meta", dtype=torch.float32)
        out[model] = {name: count_parameters(m) for name, m in comps.items()}
    return out
