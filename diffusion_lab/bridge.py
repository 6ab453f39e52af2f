"""The bridge to the real Stable Diffusion XL and 3: model ids, an environment check, tiny offline pipelines and
the sampling loops of ``diffusers`` written out by hand.

Notation
--------
=========================  ==========  ================================================================================
code                       symbol      meaning
=========================  ==========  ================================================================================
``latents``                z_t         the noisy latent, (B, C, H/f, W/f); SDXL C = 4, SD3 C = 16
``vae_scale_factor``       f           pixels per latent (8 for the real models, 2 for the tiny ones here)
``prompt_embeds``          c           per-token text features, (B, L, D): SDXL concatenates CLIP-L and OpenCLIP-bigG
                                       penultimate layers (D = 768 + 1280); SD3 adds T5 tokens along L
``pooled``                 c_pool      one vector per prompt: SDXL's bigG projection (1280), SD3's CLIP-L ⊕ bigG (2048)
``time_ids``               —           SDXL micro-conditioning (orig h, orig w, crop top, crop left, target h, w)
``guidance_scale``         w           classifier-free guidance: ε̃ = ε_∅ + w·(ε_c − ε_∅)  (Ho & Salimans 2022, Eq. 6)
``sigma``                  t           SD3's flow time; Euler step z_{t'} = z_t + (t' − t)·v  (SD3 paper §2)
=========================  ==========  ================================================================================

Indexing: the scheduler's ``timesteps`` run from noisy to clean, as in every diffusers pipeline; the loops below
iterate over them exactly as ``pipe(...)`` does, so with the same seed and scheduler they give the same image.

What is here
------------
- :data:`MODELS`: every hub id the course uses, in one place, with documented alternatives.
- :func:`check_environment`: real weights or tiny pipelines? (GPU present, hub reachable within seconds, a token
  from ``HF_TOKEN`` or a Kaggle secret — the token itself is never printed or stored.)
- :func:`tiny_sdxl`, :func:`tiny_sdxl_refiner`, :func:`tiny_sd3`, :func:`tiny_sd15`, :func:`tiny_taesd`: seeded,
  random-weight pipelines of the real classes, built from small configs with in-memory tokenizers.
- :func:`load_pipeline`: the very ``from_pretrained`` call users run against a hub id, pointed at the hub when the
  environment allows and at a tiny pipeline saved in a local cache otherwise, with a clear message either way.
- :func:`sdxl_generate`, :func:`sd3_generate`: the sampling loops, about twenty lines each, equal to ``pipe(...)``.
- Faults: :func:`check_size`, :func:`decode_latents` (fp16 VAE NaN guard), :func:`suggest_on_oom`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
import transformers
from diffusers.utils.torch_utils import randn_tensor

from diffusion_lab.sampling import cfg_combine
from diffusion_lab.settings import smoke_mode

__all__ = [
    "MODELS",
    "ModelCard",
    "Environment",
    "check_environment",
    "find_token",
    "tiny_clip_tokenizer",
    "tiny_t5_tokenizer",
    "tiny_sdxl",
    "tiny_sdxl_refiner",
    "tiny_sd3",
    "tiny_sd15",
    "tiny_taesd",
    "tiny_pipeline_path",
    "quiet_hf",
    "load_pipeline",
    "count_parameters",
    "is_tiny",
    "place",
    "measure",
    "Measurement",
    "tiny_sdxl_turbo",
    "check_size",
    "sdxl_text_embeddings",
    "sdxl_generate",
    "sd3_text_embeddings",
    "sd3_generate",
    "decode_latents",
    "suggest_on_oom",
]

HUB_HOST = ("huggingface.co", 443)
TINY_VERSION = 2  # bump when a tiny_* builder changes, so cached copies are rebuilt


# --- tiny, offline pipelines ------------------------------------------------------------------------------------


def _byte_level_symbols() -> list[str]:
    """The 256 printable stand-ins that CLIP's byte-level BPE uses for the byte values (``bytes_to_unicode``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = [], 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def tiny_clip_tokenizer(model_max_length: int = 77) -> transformers.CLIPTokenizer:
    """A character-level CLIP tokenizer built in memory (no hub): the byte symbols, their end-of-word forms, then
    ``<|startoftext|>`` and ``<|endoftext|>`` — end-of-text has the highest id, as in real CLIP (its pooling picks
    the position of the largest id)."""
    symbols = _byte_level_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return transformers.CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def tiny_t5_tokenizer(model_max_length: int = 256) -> transformers.T5Tokenizer:
    """A character-level T5 (SentencePiece unigram) tokenizer built in memory: pad, eos, unk, then one piece per
    printable ASCII character and its word-initial ``▁`` form."""
    chars = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + c, -1.0) for c in chars] + [(c, -1.5) for c in chars]
    return transformers.T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=model_max_length)


def _clip_text_config(tokenizer, hidden: int, layers: int, projection: int) -> transformers.CLIPTextConfig:
    return transformers.CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=4,
        num_hidden_layers=layers,
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=projection,
        hidden_act="gelu",
    )


def _seeded(seed: int, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build().eval()  # built from a config = train mode (dropout); from_pretrained gives eval mode


def _tiny_vae(latent_channels: int, **extra) -> diffusers.AutoencoderKL:
    """Two levels: f = 2 pixels per latent (the real SDXL/SD3 VAEs have four levels, f = 8)."""
    return diffusers.AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=latent_channels,
        sample_size=64,
        **extra,
    )


SDXL_SCHEDULER_CONFIG = {  # scheduler_config.json of stable-diffusion-xl-base-1.0 (the DDIM-only keys included)
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "clip_sample": False,
    "set_alpha_to_one": False,
}


def _sdxl_scheduler() -> diffusers.EulerDiscreteScheduler:
    """SDXL base's scheduler; ``from_config`` keeps the DDIM-only keys, so a DDIM built from it matches SDXL's."""
    return diffusers.EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG)


def tiny_sdxl_turbo(seed: int = 0) -> diffusers.StableDiffusionXLPipeline:
    """:func:`tiny_sdxl` with SDXL-Turbo's scheduler: Euler *ancestral* with ``trailing`` spacing, so that one step
    starts from pure noise at t = 999."""
    pipe = tiny_sdxl(seed)
    pipe.scheduler = diffusers.EulerAncestralDiscreteScheduler.from_config(
        SDXL_SCHEDULER_CONFIG, timestep_spacing="trailing"
    )
    return pipe


def _tiny_sdxl_unet(n_time_ids: int, cross_attention_dim: int) -> diffusers.UNet2DConditionModel:
    """SDXL's UNet at toy width: ``text_time`` conditioning of n time ids (embedded to 8 each) plus a 32-wide pooled
    text vector, as the pipeline checks (``projection_class_embeddings_input_dim`` = n·8 + 32)."""
    return diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=n_time_ids * 8 + 32,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=32,
    )


def tiny_sdxl(seed: int = 0) -> diffusers.StableDiffusionXLPipeline:
    """A random-weight ``StableDiffusionXLPipeline`` with SDXL's structure at toy width (about 0.9 M parameters):
    two CLIP text encoders (the second with a projection, whose pooled output and the 6 micro-conditioning numbers
    enter the UNet's ``text_time`` embedding), a 2-level cross-attention UNet, a 2-level VAE, SDXL's Euler
    scheduler. The UNet's ``projection_class_embeddings_input_dim`` = 6·8 + 32, as the pipeline checks."""
    tok = tiny_clip_tokenizer()
    te1 = _seeded(seed, lambda: transformers.CLIPTextModel(_clip_text_config(tok, 32, 2, 32)))
    te2 = _seeded(seed + 1, lambda: transformers.CLIPTextModelWithProjection(_clip_text_config(tok, 32, 2, 32)))
    unet = _seeded(
        seed + 2,
        lambda: _tiny_sdxl_unet(6, 32 + 32),
    )
    vae = _seeded(seed + 3, lambda: _tiny_vae(4, scaling_factor=0.13025, force_upcast=True))
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tok,
        tokenizer_2=tiny_clip_tokenizer(),
        unet=unet,
        scheduler=_sdxl_scheduler(),
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_refiner(base: diffusers.StableDiffusionXLPipeline, seed: int = 10):
    """A random-weight SDXL *refiner* (``StableDiffusionXLImg2ImgPipeline``) sharing ``base``'s VAE and second text
    encoder, as the real refiner does: one text encoder (cross-attention width 32) and an aesthetic score instead
    of the target size in its 5 micro-conditioning numbers (UNet input 5·8 + 32)."""
    unet = _seeded(
        seed,
        lambda: _tiny_sdxl_unet(5, 32),
    )
    pipe = diffusers.StableDiffusionXLImg2ImgPipeline(
        vae=base.vae,
        text_encoder=None,
        text_encoder_2=base.text_encoder_2,
        tokenizer=None,
        tokenizer_2=base.tokenizer_2,
        unet=unet,
        scheduler=_sdxl_scheduler(),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3(seed: int = 0, with_t5: bool = True) -> diffusers.StableDiffusion3Pipeline:
    """A random-weight ``StableDiffusion3Pipeline`` with SD3's structure at toy width: CLIP-L and bigG stand-ins
    (both with projections; pooled 32 + 32), a T5 encoder stand-in (d_model 96 = the MMDiT's
    ``joint_attention_dim``, wider than the 64 CLIP features so the zero padding is visible, as in SD3; ``with_t5=False`` drops it as SD3 allows), a 2-block MMDiT (``SD3Transformer2DModel``,
    patch 2, 16 latent channels), a 2-level VAE with SD3's scaling and shift factors, and the flow-match Euler
    scheduler with shift 3."""
    tok = tiny_clip_tokenizer()
    te1 = _seeded(seed, lambda: transformers.CLIPTextModelWithProjection(_clip_text_config(tok, 32, 2, 32)))
    te2 = _seeded(seed + 1, lambda: transformers.CLIPTextModelWithProjection(_clip_text_config(tok, 32, 2, 32)))
    t5 = None
    tok3 = None
    if with_t5:
        tok3 = tiny_t5_tokenizer()
        t5_config = transformers.T5Config(
            vocab_size=len(tok3),
            d_model=96,
            d_kv=16,
            d_ff=128,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            pad_token_id=tok3.pad_token_id,
            eos_token_id=tok3.eos_token_id,
            decoder_start_token_id=tok3.pad_token_id,
        )
        t5 = _seeded(seed + 2, lambda: transformers.T5EncoderModel(t5_config))
    transformer = _seeded(
        seed + 3,
        lambda: diffusers.SD3Transformer2DModel(
            sample_size=32,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=4,
            joint_attention_dim=96,
            caption_projection_dim=64,
            pooled_projection_dim=64,
            pos_embed_max_size=32,
        ),
    )
    vae = _seeded(
        seed + 4,
        lambda: _tiny_vae(
            16, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=1.5305, shift_factor=0.0609
        ),
    )
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=te1,
        tokenizer=tok,
        text_encoder_2=te2,
        tokenizer_2=tiny_clip_tokenizer(),
        text_encoder_3=t5,
        tokenizer_3=tok3,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd15(seed: int = 0) -> diffusers.StableDiffusionPipeline:
    """A random-weight SD 1.5/2.1/SD-Turbo-shaped ``StableDiffusionPipeline`` (one CLIP encoder, no safety checker)."""
    tok = tiny_clip_tokenizer()
    te = _seeded(seed, lambda: transformers.CLIPTextModel(_clip_text_config(tok, 32, 2, 32)))
    unet = _seeded(
        seed + 1,
        lambda: diffusers.UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            norm_num_groups=32,
        ),
    )
    vae = _seeded(seed + 2, lambda: _tiny_vae(4, scaling_factor=0.18215))
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae,
        text_encoder=te,
        tokenizer=tok,
        unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_taesd(latent_channels: int = 4, seed: int = 0) -> diffusers.AutoencoderTiny:
    """A random-weight TAESD-shaped ``AutoencoderTiny`` with f = 2 (the real TAESD/TAESDXL have 4 latent channels,
    TAESD3 16, and f = 8)."""
    return _seeded(
        seed,
        lambda: diffusers.AutoencoderTiny(
            encoder_block_out_channels=(32, 32),
            decoder_block_out_channels=(32, 32),
            num_encoder_blocks=(1, 1),
            num_decoder_blocks=(1, 1),
            latent_channels=latent_channels,
        ),
    )


# --- model ids, in one place --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelCard:
    """One model the course loads: its hub id, the diffusers class, whether its licence must be accepted first,
        other ids to try in order when a repository disappears (the same weights, or the nearest successor with the same
    pipeline class) and the tiny stand-in."""

    repo_id: str
    pipeline_class: type
    tiny: Callable[[], object]
    gated: bool = False
    alternatives: tuple[str, ...] = ()
    note: str = ""


MODELS: dict[str, ModelCard] = {
    "sdxl-base": ModelCard(
        "stabilityai/stable-diffusion-xl-base-1.0",
        diffusers.StableDiffusionXLPipeline,
        tiny_sdxl,
        note="SDXL 1.0 base, 1024², 2.6 B-parameter UNet, two CLIP text encoders",
    ),
    "sdxl-refiner": ModelCard(
        "stabilityai/stable-diffusion-xl-refiner-1.0",
        diffusers.StableDiffusionXLImg2ImgPipeline,
        lambda: tiny_sdxl_refiner(tiny_sdxl()),
        note="SDXL refiner: the last ~20 % of the noise levels, bigG text encoder only",
    ),
    "sdxl-turbo": ModelCard(
        "stabilityai/sdxl-turbo",
        diffusers.StableDiffusionXLPipeline,
        tiny_sdxl_turbo,
        note="adversarially distilled SDXL: 1-4 steps, guidance 0, 512²",
    ),
    "sd-turbo": ModelCard(
        "stabilityai/sd-turbo",
        diffusers.StableDiffusionPipeline,
        tiny_sd15,
        note="distilled SD 2.1: 1-4 steps, guidance 0, 512²",
    ),
    "sd3-medium": ModelCard(
        "stabilityai/stable-diffusion-3-medium-diffusers",
        diffusers.StableDiffusion3Pipeline,
        tiny_sd3,
        gated=True,
        alternatives=("stabilityai/stable-diffusion-3.5-medium",),  # a newer model (MMDiT-X), same pipeline class
        note="SD3 medium: 2 B-parameter MMDiT, CLIP-L + bigG + T5-XXL; gated (accept the licence on its page)",
    ),
    "sd15": ModelCard(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        diffusers.StableDiffusionPipeline,
        tiny_sd15,
        alternatives=("stabilityai/stable-diffusion-2-1-base",),
        note="SD 1.5 (runwayml/stable-diffusion-v1-5 was deleted in 2024; this is its maintained copy), 512²",
    ),
    # the family beyond text-to-image (diffusion_lab.family: stand-ins, checks, and the ControlNet loader)
    "sd-x4-upscaler": ModelCard(
        "stabilityai/stable-diffusion-x4-upscaler",
        diffusers.StableDiffusionUpscalePipeline,
        lambda: _family().tiny_sd_upscaler(),
        note="x4 upscaler: low-res RGB concatenated to the latent (UNet in 7 = 4 + 3), noise level as class label",
    ),
    "sd15-controlnet-canny": ModelCard(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        diffusers.StableDiffusionControlNetPipeline,
        lambda: _family().tiny_sd15_controlnet(),
        note="SD 1.5 + canny ControlNet (lllyasviel/control_v11p_sd15_canny: load with family.load_family_pipeline)",
    ),
    "sd21-unclip": ModelCard(
        "sd2-community/stable-diffusion-2-1-unclip",
        diffusers.StableUnCLIPImg2ImgPipeline,
        lambda: _family().tiny_unclip(),
        alternatives=("stabilityai/stable-diffusion-2-1-unclip",),
        note="Stable unCLIP 2.1: image variations from a CLIP image embedding (Stability removed its SD 2.x "
        "repositories in Nov 2025; sd2-community keeps the copy)",
    ),
    "svd": ModelCard(
        "stabilityai/stable-video-diffusion-img2vid-xt",
        diffusers.StableVideoDiffusionPipeline,
        lambda: _family().tiny_svd(),
        gated=True,
        alternatives=("stabilityai/stable-video-diffusion-img2vid",),
        note="Stable Video Diffusion XT: 25 frames from one image; accept the licence on its page (gated)",
    ),
}
"""Hub ids the notebooks use. If a repository disappears, :func:`load_pipeline` tries ``alternatives`` in order;
to pin your own copy, pass ``repo_id=`` to :func:`load_pipeline`. Component ids (loaded by the notebooks as
needed): SDXL fp16-safe VAE ``madebyollin/sdxl-vae-fp16-fix``; preview decoders ``madebyollin/taesdxl`` (SDXL) and
``madebyollin/taesd3`` (SD3)."""


def _family():
    """``diffusion_lab.family``, imported when a family card's stand-in is built (that module imports this one)."""
    from diffusion_lab import family

    return family


COMPONENT_IDS = {
    "sdxl-vae-fp16-fix": "madebyollin/sdxl-vae-fp16-fix",
    "taesdxl": "madebyollin/taesdxl",
    "taesd3": "madebyollin/taesd3",
}


# --- environment check ----------------------------------------------------------------------------------------------


def find_token() -> tuple[str | None, str | None]:
    """(token, where it came from). Looks in ``HF_TOKEN``, then a Kaggle secret named ``HF_TOKEN`` (on Kaggle
    only), then the token ``hf auth login`` stored. The token is returned to pass as ``token=`` — never print it,
    never paste it into a notebook."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(var):
            return os.environ[var], f"environment variable {var}"
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):
        with contextlib.suppress(Exception):  # no secret attached, or the add-on is off
            from kaggle_secrets import UserSecretsClient  # type: ignore[import-not-found]

            secret = UserSecretsClient().get_secret("HF_TOKEN")
            if secret:
                return secret, "Kaggle secret HF_TOKEN"
    with contextlib.suppress(Exception):
        import huggingface_hub

        stored = huggingface_hub.get_token()
        if stored:
            return stored, "hf auth login (stored token)"
    return None, None


def _hub_reachable(timeout: float, host: tuple[str, int] = HUB_HOST) -> tuple[bool, str]:
    """Open a TCP connection to the hub in a daemon thread and wait at most ``timeout`` seconds (DNS included, which
    ``socket``'s own timeout does not bound)."""
    result: list[tuple[bool, str]] = []

    def probe() -> None:
        try:
            with socket.create_connection(host, timeout=timeout):
                result.append((True, f"{host[0]} answered"))
        except OSError as exc:
            result.append((False, f"{host[0]} unreachable ({type(exc).__name__})"))

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        return False, f"{host[0]} did not answer within {timeout:g} s"
    return result[0]


@dataclass(frozen=True)
class Environment:
    """What :func:`check_environment` found. ``use_real`` decides hub weights (True) or tiny pipelines (False)."""

    device: str
    gpu_name: str | None
    gpu_memory_gib: float | None
    hub: bool
    token_source: str | None
    use_real: bool
    reasons: tuple[str, ...] = field(default=())

    @property
    def dtype(self) -> torch.dtype:
        """bf16 on GPUs that have it (Ampere and later: A100, H100, L4; no fp16 overflow in SDXL's VAE), fp16 on
        older ones (T4, V100), fp32 on the CPU (no fast half-precision kernels there)."""
        if self.device != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.get_device_capability()[0] >= 8 else torch.float16

    @property
    def small_gpu(self) -> bool:
        """Under 24 GiB (a 16 GB T4, a 12 GB consumer card): whole pipelines do not stay on the GPU together."""
        return self.device == "cuda" and (self.gpu_memory_gib or 0) < 24

    def __str__(self) -> str:
        gpu = f"{self.gpu_name} ({self.gpu_memory_gib:.0f} GiB)" if self.gpu_name else "none"
        lines = [
            f"GPU:      {gpu}",
            f"hub:      {'reachable' if self.hub else 'not used'}",
            f"token:    {self.token_source or 'none found'}",
            f"weights:  {'REAL (from the hub)' if self.use_real else 'TINY (random weights, built locally)'}",
        ]
        return "\n".join(lines + [f"  because {r}" for r in self.reasons])


def _truthy(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}


def check_environment(hub_timeout: float = 3.0, allow_cpu: bool = False, probe_host: tuple[str, int] = HUB_HOST):
    """Decide between real weights and tiny pipelines, and say why.

    Real weights need (1) a CUDA GPU — SDXL takes minutes per image on a CPU; ``allow_cpu=True`` lifts this —
    (2) not quick mode (``DIFFUSION_LAB_SMOKE=1``, tests) and no ``HF_HUB_OFFLINE=1``, and (3) the hub answering
    within ``hub_timeout`` seconds. Nothing here waits longer than that; the network is not touched at all when (1)
    or (2) already say "tiny"."""
    reasons: list[str] = []
    gpu = torch.cuda.is_available()
    name = mem = None
    if gpu:
        props = torch.cuda.get_device_properties(0)
        name, mem = props.name, props.total_memory / 2**30
    else:
        reasons.append("no CUDA GPU (Kaggle: Settings → Accelerator → GPU; Colab: Runtime → Change runtime type)")
    token, source = find_token()
    del token  # only where it came from is kept
    hub = False
    if smoke_mode():
        reasons.append("quick mode (DIFFUSION_LAB_SMOKE=1): tests never download")
    elif _truthy("HF_HUB_OFFLINE"):
        reasons.append("HF_HUB_OFFLINE=1")
    elif not gpu and not allow_cpu:
        reasons.append("the hub was not asked (no GPU to run real weights on)")
    else:
        hub, why = _hub_reachable(hub_timeout, probe_host)
        reasons.append(why)
    use_real = hub and (gpu or allow_cpu)
    if use_real:
        reasons.append("GPU and hub available: loading the real weights")
    return Environment("cuda" if gpu else "cpu", name, mem, hub, source, use_real, tuple(reasons))


# --- loading: the real from_pretrained path, pointed at the hub or at a tiny local copy ------------------------


def _cache_root() -> Path:
    """Where tiny pipelines are saved: ``$DIFFUSION_LAB_CACHE`` or ``~/.cache/diffusion_lab``."""
    return Path(os.environ.get("DIFFUSION_LAB_CACHE") or Path.home() / ".cache" / "diffusion_lab")


def tiny_pipeline_path(key: str, cache_dir: str | Path | None = None) -> Path:
    """Build the tiny stand-in for ``MODELS[key]`` once, ``save_pretrained`` it (atomically: into a temporary folder
    renamed into place) and return the folder that ``from_pretrained`` loads."""
    card = _card(key)
    root = Path(cache_dir) if cache_dir is not None else _cache_root()
    target = root / "tiny" / f"{key}-v{TINY_VERSION}-diffusers{diffusers.__version__}"  # a stale copy is never reused
    if (target / "model_index.json").exists():
        return target
    root.joinpath("tiny").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root / "tiny"))
    try:
        with quiet_hf():
            card.tiny().save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race: use its copy
            if not (target / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _card(key: str) -> ModelCard:
    if key not in MODELS:
        raise ValueError(f"unknown model {key!r}; choose one of {sorted(MODELS)}")
    return MODELS[key]


@contextlib.contextmanager
def quiet_hf() -> Iterator[None]:
    """No progress bars and only errors from diffusers/transformers inside the block (saving or loading tiny
    pipelines, ``AutoPipeline.from_pipe``); the previous settings come back afterwards."""
    libs = [diffusers.utils.logging, transformers.utils.logging]
    enabled = [lib.is_progress_bar_enabled() for lib in libs]
    levels = [lib.get_verbosity() for lib in libs]
    for lib in libs:
        lib.disable_progress_bar()
        lib.set_verbosity_error()
    try:
        yield
    finally:
        for lib, on, level in zip(libs, enabled, levels, strict=True):
            lib.set_verbosity(level)
            if on:
                lib.enable_progress_bar()


def _explain_hub_error(exc: Exception, repo_id: str) -> str | None:
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError):
        return (
            f"{repo_id} is gated: open https://huggingface.co/{repo_id} while logged in, accept the licence, then give "
            "this machine a token — `hf auth login` in a terminal, `export HF_TOKEN=...`, or on Kaggle a secret named "
            "HF_TOKEN (Add-ons → Secrets). Never paste a token into a notebook cell."
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        return f"{repo_id} was not found on the hub (deleted, renamed, or private)"
    return None


def load_pipeline(
    key: str,
    env: Environment,
    *,
    repo_id: str | None = None,
    pipeline_class: type | None = None,
    cache_dir: str | Path | None = None,
    strict: bool = False,
    **from_pretrained_kwargs,
):
    """``pipeline_class.from_pretrained(source, ...)`` where ``source`` is the hub id when ``env.use_real`` and the
    tiny local copy otherwise. A gated model without access prints the steps to get it and falls back to the tiny
    pipeline (``strict=True``: raises ``PermissionError`` instead); a repository that disappeared moves on to the
    card's ``alternatives``; a network failure falls back to the tiny pipeline with a message. Never silent: every
    path prints what was loaded."""
    card = _card(key)
    cls = pipeline_class or card.pipeline_class
    if env.use_real:
        token, _ = find_token()
        kwargs = {"dtype": env.dtype, **from_pretrained_kwargs}
        if env.dtype in (torch.float16, torch.bfloat16) and "variant" not in kwargs:
            kwargs["variant"] = "fp16"
        for rid in [repo_id] if repo_id else [card.repo_id, *card.alternatives]:
            try:
                pipe = cls.from_pretrained(rid, token=token, **kwargs)
                print(f"loaded {rid} ({cls.__name__}, {kwargs['dtype']})")
                return pipe
            except Exception as exc:  # noqa: BLE001 - sorted below: gated → raise, missing → next id, else tiny
                if kwargs.get("variant") and "variant" in str(exc) and "variant" not in from_pretrained_kwargs:
                    kwargs.pop("variant")  # no fp16 files in this repo: the full ones, cast at load
                    with contextlib.suppress(Exception):
                        return cls.from_pretrained(rid, token=token, **kwargs)
                message = _explain_hub_error(exc, rid)
                if message and "gated" in message:
                    if strict:
                        raise PermissionError(message) from exc
                    print(f"{message}\nUntil then: the tiny stand-in.")
                    break
                if message:
                    print(f"{message}; trying the next id")
                    continue
                print(f"could not load {rid} ({type(exc).__name__}: {str(exc)[:200]}); using the tiny pipeline")
                break
        else:
            print(f"none of {[card.repo_id, *card.alternatives]} could be loaded; using the tiny pipeline")
    path = tiny_pipeline_path(key, cache_dir)
    with quiet_hf():
        pipe = cls.from_pretrained(path, local_files_only=True, **from_pretrained_kwargs)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    shown = str(path).replace(str(Path.home()), "~")
    print(f"loaded the TINY stand-in for {card.repo_id} from {shown} (random weights: the pictures are noise)")
    return pipe


def is_tiny(pipe) -> bool:
    """True for the tiny stand-ins (their VAE has f = 2; every real SD, SDXL and SD3 VAE has f = 8). Decide sizes from
    the pipeline you got, not from the environment: a failed download falls back to tiny."""
    return pipe.vae_scale_factor < 8


def place(pipe, env: Environment):
    """Put a pipeline where it runs: on a GPU of 24 GiB or more entirely on the GPU; on a smaller one with
    ``enable_model_cpu_offload()`` (each model visits the GPU only while it runs); on the CPU where it is."""
    if env.device == "cuda":
        if env.small_gpu:
            pipe.enable_model_cpu_offload()
        else:
            pipe.to("cuda")
    return pipe


@dataclass
class Measurement:
    """What :func:`measure` saw: wall seconds (GPU work synchronised) and peak GPU memory (None on the CPU)."""

    seconds: float
    peak_gib: float | None

    def __str__(self) -> str:
        peak = f", peak GPU memory {self.peak_gib:.1f} GiB" if self.peak_gib is not None else ""
        return f"{self.seconds:.2f} s{peak}"


def measure(fn: Callable[[], object]) -> tuple[object, Measurement]:
    """Run ``fn()`` once and return (its result, :class:`Measurement`). On a GPU the peak-memory counter is reset
    first and the GPU is synchronised before the clock stops (CUDA calls return before the work is done)."""
    import time

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return result, Measurement(seconds, torch.cuda.max_memory_allocated() / 2**30 if cuda else None)


def count_parameters(module: torch.nn.Module | None) -> int:
    """Number of parameters (0 for a missing component such as a dropped T5)."""
    return 0 if module is None else sum(p.numel() for p in module.parameters())


# --- faults -----------------------------------------------------------------------------------------------------------


def check_size(height: int, width: int, factor: int) -> None:
    """Height and width must be positive multiples of ``factor`` (the VAE's f, times the patch size for an MMDiT)."""
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0 or value % factor:
            fixed = max(factor, round(value / factor) * factor) if isinstance(value, (int, float)) else factor
            raise ValueError(
                f"{name}={value!r} must be a positive multiple of {factor} (the latent factor of this model); "
                f"try {name}={fixed}"
            )


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, h, w) → images (B, 3, f·h, f·w) in [-1, 1], undoing the pipeline's scaling:
    SDXL z/s (or z·std/s + mean when the VAE config has latents statistics), SD3 z/s + shift.

    fp16 NaN guard: SDXL's VAE overflows in fp16 and returns NaN (black images). If the decode is not finite and
    the VAE is not in fp32, it is decoded again in fp32 (with a warning) and put back in its dtype."""
    cfg = vae.config
    if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
        mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1).to(latents)
        std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1).to(latents)
        z = latents * std / cfg.scaling_factor + mean
    else:
        z = latents / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
    image = vae.decode(z.to(vae.dtype), return_dict=False)[0]  # (B, 3, H, W)
    if not torch.isfinite(image).all() and vae.dtype != torch.float32:
        warnings.warn(
            f"the VAE returned NaN/inf in {vae.dtype}: decoding again in float32 (for SDXL, the fp16-safe VAE "
            f"{COMPONENT_IDS['sdxl-vae-fp16-fix']} avoids this)",
            stacklevel=2,
        )
        dtype = vae.dtype
        vae.to(torch.float32)
        try:
            image = vae.decode(z.float(), return_dict=False)[0]
        finally:
            vae.to(dtype)
    return image


_OOM_KNOBS = (
    "fp16/bf16 weights (dtype=torch.float16)",
    "pipe.enable_model_cpu_offload() (whole models move to the GPU only while they run)",
    "pipe.vae.enable_tiling() and pipe.vae.enable_slicing() (decode in tiles / one image at a time)",
    "drop T5 for SD3 (text_encoder_3=None, tokenizer_3=None) or load it in 8 bit",
    "pipe.enable_sequential_cpu_offload() (layer by layer: slowest, least memory)",
    "a smaller height/width or batch",
)


@contextlib.contextmanager
def suggest_on_oom(pipe=None) -> Iterator[None]:
    """Turn a CUDA out-of-memory error into one that names the next memory knob to try (in order of cost)."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        tried = []
        if pipe is not None:
            dtypes = {
                p.dtype for m in pipe.components.values() if isinstance(m, torch.nn.Module) for p in m.parameters()
            }
            if dtypes <= {torch.float16, torch.bfloat16}:
                tried.append(0)
            if getattr(pipe, "_offload_gpu_id", None) is not None or getattr(pipe, "_all_hooks", None):
                tried.append(1)
        knobs = [k for i, k in enumerate(_OOM_KNOBS) if i not in tried]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise torch.OutOfMemoryError(
            f"out of GPU memory ({str(exc).splitlines()[0][:120]}). Next knob to try: {knobs[0]}. Then: "
            + "; ".join(knobs[1:])
        ) from exc


# --- the sampling loops, written out ----------------------------------------------------------------------------------


def _encode_clip(tokenizer, encoder, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate hidden states (B, 77, D), the output's first field: pooled/projected (B, D') or last states)."""
    ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)  # (B, 77)
    out = encoder(ids, output_hidden_states=True)
    return out.hidden_states[-2], out[0]  # (B, 77, D), (B, D')


@torch.no_grad()
def sdxl_text_embeddings(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's conditioning: both encoders' penultimate layers side by side (B, 77, D₁ + D₂) and the second
    encoder's projected pooled vector (B, P)."""
    device = pipe._execution_device
    h1, _ = _encode_clip(pipe.tokenizer, pipe.text_encoder, prompts, device)  # (B, 77, 768)
    h2, pooled = _encode_clip(pipe.tokenizer_2, pipe.text_encoder_2, prompts, device)  # (B, 77, 1280), (B, 1280)
    return torch.cat([h1, h2], dim=-1), pooled


@torch.no_grad()
def sdxl_generate(
    pipe,
    prompt: str,
    *,
    num_inference_steps: int = 30,
    guidance_scale: float = 5.0,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str | None = None,
    original_size: tuple[int, int] | None = None,
    crops_coords_top_left: tuple[int, int] = (0, 0),
    target_size: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
    output_type: str = "pil",
):
    """``StableDiffusionXLPipeline.__call__`` for one prompt, written out (same seed and scheduler → same image)."""
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    f = pipe.vae_scale_factor
    height, width = height or pipe.default_sample_size * f, width or pipe.default_sample_size * f
    check_size(height, width, f)
    device, dtype = pipe._execution_device, pipe.unet.dtype
    cond, pooled = sdxl_text_embeddings(pipe, [prompt])  # (1, 77, D), (1, P)
    if negative_prompt is None and pipe.config.force_zeros_for_empty_prompt:
        uncond, uncond_pooled = torch.zeros_like(cond), torch.zeros_like(pooled)  # SDXL's "empty" condition
    else:
        uncond, uncond_pooled = sdxl_text_embeddings(pipe, [negative_prompt or ""])
    # micro-conditioning: (orig h, orig w, crop top, crop left, target h, target w)  (SDXL paper §2.2)
    time_ids = torch.tensor(
        [[*(original_size or (height, width)), *crops_coords_top_left, *(target_size or (height, width))]],
        dtype=cond.dtype,
        device=device,
    )  # (1, 6)
    embeds = torch.cat([uncond, cond])  # (2, 77, D): [∅, c]
    added = {"text_embeds": torch.cat([uncond_pooled, pooled]), "time_ids": time_ids.repeat(2, 1)}
    scheduler = pipe.scheduler
    scheduler.set_timesteps(num_inference_steps, device=device)
    shape = (1, pipe.unet.config.in_channels, height // f, width // f)
    latents = randn_tensor(shape, generator=generator, device=device, dtype=cond.dtype) * scheduler.init_noise_sigma
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(torch.cat([latents] * 2), t)  # (2, 4, h, w)
        eps_uncond, eps_cond = pipe.unet(
            x.to(dtype), t, encoder_hidden_states=embeds.to(dtype), added_cond_kwargs=added, return_dict=False
        )[0].chunk(2)
        eps = cfg_combine(eps_cond, eps_uncond, guidance_scale)  # ε_∅ + w·(ε_c − ε_∅)
        latents = scheduler.step(eps, t, latents, return_dict=False)[0]  # z_t → z_{t-1}
    if output_type == "latent":
        return latents
    return pipe.image_processor.postprocess(decode_latents(pipe.vae, latents), output_type=output_type)


@torch.no_grad()
def sd3_text_embeddings(pipe, prompts: list[str], max_sequence_length: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """SD3's conditioning: CLIP-L ⊕ bigG penultimate layers zero-padded to T5's width, then T5's tokens after them
    along the sequence (B, 77 + 256, 4096; zeros when T5 is dropped), and the two pooled vectors side by side."""
    device = pipe._execution_device
    h1, p1 = _encode_clip(pipe.tokenizer, pipe.text_encoder, prompts, device)  # (B, 77, 768), (B, 768)
    h2, p2 = _encode_clip(pipe.tokenizer_2, pipe.text_encoder_2, prompts, device)  # (B, 77, 1280), (B, 1280)
    clip = torch.cat([h1, h2], dim=-1)  # (B, 77, 2048)
    width = pipe.transformer.config.joint_attention_dim
    if pipe.text_encoder_3 is None:
        t5 = torch.zeros(len(prompts), max_sequence_length, width, device=device, dtype=clip.dtype)  # T5 dropped
    else:
        ids = pipe.tokenizer_3(
            prompts,
            padding="max_length",
            max_length=max_sequence_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        ).input_ids.to(device)  # (B, 256)
        t5 = pipe.text_encoder_3(ids)[0]  # (B, 256, 4096)
    clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))  # (B, 77, 4096)
    return torch.cat([clip, t5.to(clip.dtype)], dim=-2), torch.cat([p1, p2], dim=-1)  # (B, 333, 4096), (B, 2048)


@torch.no_grad()
def sd3_generate(
    pipe,
    prompt: str,
    *,
    num_inference_steps: int = 28,
    guidance_scale: float = 7.0,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str = "",
    generator: torch.Generator | None = None,
    max_sequence_length: int = 256,
    output_type: str = "pil",
):
    """``StableDiffusion3Pipeline.__call__`` for one prompt, written out: flow-match Euler (shift in the scheduler),
    CFG on velocities, decode z/s + shift."""
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    f = pipe.vae_scale_factor
    height, width = height or pipe.default_sample_size * f, width or pipe.default_sample_size * f
    check_size(height, width, f * pipe.transformer.config.patch_size)
    device, dtype = pipe._execution_device, pipe.transformer.dtype
    cond, pooled = sd3_text_embeddings(pipe, [prompt], max_sequence_length)  # (1, L, D), (1, P)
    uncond, uncond_pooled = sd3_text_embeddings(pipe, [negative_prompt], max_sequence_length)  # SD3 encodes ""
    embeds, pooled = torch.cat([uncond, cond]), torch.cat([uncond_pooled, pooled])  # (2, L, D), (2, P)
    scheduler = pipe.scheduler
    scheduler.set_timesteps(num_inference_steps, device=device)  # σ: shifted, 1 → 0
    shape = (1, pipe.transformer.config.in_channels, height // f, width // f)
    latents = randn_tensor(shape, generator=generator, device=device, dtype=cond.dtype)  # z_1 = ε
    for t in scheduler.timesteps:
        x = torch.cat([latents] * 2)  # (2, 16, h, w)
        v_uncond, v_cond = pipe.transformer(
            hidden_states=x.to(dtype),
            timestep=t.expand(2),
            encoder_hidden_states=embeds.to(dtype),
            pooled_projections=pooled.to(dtype),
            return_dict=False,
        )[0].chunk(2)
        v = cfg_combine(v_cond, v_uncond, guidance_scale)  # CFG on the velocity
        latents = scheduler.step(v, t, latents, return_dict=False)[0]  # z_{t'} = z_t + (t' − t)·v
    if output_type == "latent":
        return latents
    return pipe.image_processor.postprocess(decode_latents(pipe.vae, latents), output_type=output_type)
