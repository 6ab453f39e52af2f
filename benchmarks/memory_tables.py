"""The memory model (``diffusion_lab.bridge.memory``) applied to every recipe of the T4 / H100 tables of notebooks
10, 11 and 16 (SD 1.5 + ControlNet, unCLIP 2.1 and SVD-XT in 16's family table; its x4 upscaler row is not modelled
yet), the cross-attention recording of 10, and the download size of each notebook's models, written to
``benchmarks/results/memory_tables.json``.

Parameter counts come from meta-device builds of the published configurations (``bridge.full_size`` for SDXL base,
the refiner and SD3 medium; below, for the models only notebook 10 downloads: SD-Turbo = the SD 2.1 architecture, and
the TAESD preview decoders = ``AutoencoderTiny``). Nothing is downloaded; runs in a few seconds on the CPU.

Every entry says ``"modelled"`` or ``"measured: <hardware>, <file>"``: a recipe measured by ``gpu_pipelines.py`` on a
GPU (records with a numeric ``peak_allocated_gib`` in ``benchmarks/results/gpu_pipelines.json``) shows the measured
figure beside the modelled one. A peak above 14.7 GiB (what a 16 GB T4 reports) is marked "does not fit" on the T4.

Reproduce::

    .venv/bin/python benchmarks/memory_tables.py            # writes benchmarks/results/memory_tables.json
    .venv/bin/python benchmarks/memory_tables.py --measure-cpu   # + the SDXL VAE decode measured on the CPU (~1 min)
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import diffusers
import torch
import transformers

from diffusion_lab.bridge import full_size
from diffusion_lab.bridge import memory as m
from diffusion_lab.utils.checkpoint import write_json_atomic

OUT = Path(__file__).resolve().parent / "results" / "memory_tables.json"
T4_USABLE_GIB = 14.7  # torch.cuda.get_device_properties on a "16 GB" T4 (about 15.0 GiB less the CUDA context)

# SD 2.1 (SD-Turbo), stabilityai/sd-turbo unet/config.json and text_encoder/config.json (OpenCLIP ViT-H/14 text tower)
SD21_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "attention_head_dim": (5, 10, 20, 20),
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
}
OPENCLIP_H = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
}


# the family of notebooks 14-16 (configs of the hub repositories; parameter counts in the JSON): SD 1.5, its canny ControlNet
# (lllyasviel/control_v11p_sd15_canny), the SD 1.5 safety checker (CLIP ViT-L/14 vision tower, loaded by default),
# SVD-XT (the UNetSpatioTemporalConditionModel defaults are SVD's; its temporal-decoder VAE; CLIP ViT-H/14 image tower)
SD15_UNET = {
    "sample_size": 64,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
}
SD15_CONTROLNET = {
    "down_block_types": SD15_UNET["down_block_types"],
    "block_out_channels": SD15_UNET["block_out_channels"],
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
    "conditioning_embedding_out_channels": (16, 32, 96, 256),
}
CLIP_VIT_L_VISION = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 224,
}
CLIP_VIT_H_VISION = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 224,
    "projection_dim": 1024,
    "hidden_act": "gelu",
}
# Stable unCLIP 2.1 (-h): the SD 2.1-768 UNet with a projection class embedding of the CLIP ViT-H image embedding and
# its noise-level embedding (Stability's adm_in_channels 2048; diffusers' convert_from_ckpt maps it to this config);
# not cross-checked against the hub's config.json
UNCLIP_UNET = {
    **SD21_UNET,
    "sample_size": 96,
    "class_embed_type": "projection",
    "projection_class_embeddings_input_dim": 2048,
}
SVD_VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 768,
}


def _meta_spec(name: str, build) -> m.ModelSpec:
    with torch.device("meta"):
        return m.spec_from_module(name, build())


def _safety_checker():
    from diffusers.pipelines.stable_diffusion.safety_checker import (  # lazy: only SD 1.5's download counts it
        StableDiffusionSafetyChecker,
    )

    vision = transformers.CLIPVisionConfig(**CLIP_VIT_L_VISION)
    return StableDiffusionSafetyChecker(
        transformers.CLIPConfig(vision_config=vision.to_dict(), projection_dim=768, text_config={})
    )


def specs() -> dict[str, dict[str, m.ModelSpec]]:
    """Every model's :class:`~diffusion_lab.bridge.memory.ModelSpec`, by pipeline."""
    return {
        "sdxl": m.full_size_specs("sdxl"),
        "sdxl-refiner": m.full_size_specs("sdxl-refiner"),
        "sd3": m.full_size_specs("sd3"),
        "sd-turbo": {
            "unet": _meta_spec("unet", lambda: diffusers.UNet2DConditionModel(**SD21_UNET)),
            "text_encoder": _meta_spec(
                "text_encoder", lambda: transformers.CLIPTextModel(transformers.CLIPTextConfig(**OPENCLIP_H))
            ),
            "vae": _meta_spec("vae", lambda: diffusers.AutoencoderKL(**full_size.SDXL_VAE)),  # the SD VAE's shapes
        },
        "sd15-controlnet": {
            "text_encoder": _meta_spec(
                "text_encoder", lambda: transformers.CLIPTextModel(transformers.CLIPTextConfig(**full_size.CLIP_L))
            ),
            "unet": _meta_spec("unet", lambda: diffusers.UNet2DConditionModel(**SD15_UNET)),
            "controlnet": _meta_spec("controlnet", lambda: diffusers.ControlNetModel(**SD15_CONTROLNET)),
            "vae": _meta_spec("vae", lambda: diffusers.AutoencoderKL(**full_size.SDXL_VAE)),
            "safety_checker": _meta_spec("safety_checker", _safety_checker),
        },
        "sd21-unclip": {
            "text_encoder": _meta_spec(
                "text_encoder", lambda: transformers.CLIPTextModel(transformers.CLIPTextConfig(**OPENCLIP_H))
            ),
            "image_encoder": _meta_spec(
                "image_encoder",
                lambda: transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**CLIP_VIT_H_VISION)),
            ),
            "unet": _meta_spec("unet", lambda: diffusers.UNet2DConditionModel(**UNCLIP_UNET)),
            "vae": _meta_spec("vae", lambda: diffusers.AutoencoderKL(**full_size.SDXL_VAE)),
        },
        "svd": {
            "image_encoder": _meta_spec(
                "image_encoder",
                lambda: transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**CLIP_VIT_H_VISION)),
            ),
            "unet": _meta_spec("unet", diffusers.UNetSpatioTemporalConditionModel),
            "vae": _meta_spec("vae", lambda: diffusers.AutoencoderKLTemporalDecoder(**SVD_VAE)),
        },
        "taesdxl": {"vae": _meta_spec("vae", lambda: diffusers.AutoencoderTiny())},
        "taesd3": {"vae": _meta_spec("vae", lambda: diffusers.AutoencoderTiny(latent_channels=16))},
    }


def _sdxl(s, name: str, dtype: str = "fp16", **kw) -> m.Recipe:
    models = {n: (spec, dtype) for n, spec in s["sdxl"].items()}
    text = {"text_encoder": (77, 3072), "text_encoder_2": (77, 5120)}
    return m.Recipe(name, models, "unet", m.SDXL_UNET_SHAPE, "vae", m.SDXL_VAE_SHAPE, text_encoders=text, **kw)


def _sd3(s, name: str, dtype: str = "fp16", with_t5: bool = True, **kw) -> m.Recipe:
    models = {n: (spec, dtype) for n, spec in s["sd3"].items() if with_t5 or n != "text_encoder_3"}
    text = {"text_encoder": (77, 3072), "text_encoder_2": (77, 5120)}
    if with_t5:
        text["text_encoder_3"] = (256, 10240)
    return m.Recipe(name, models, "transformer", m.SD3_MMDIT_SHAPE, "vae", m.SD3_VAE_SHAPE, text_encoders=text, **kw)


def table_recipes(s) -> dict[str, list[tuple[str, str, m.Recipe]]]:
    """(table row as the notebook writes it, gpu_pipelines.py recipe key, recipe) per notebook."""
    sdxl_fp16 = _sdxl(s, "fp16", vae_upcast=True)  # force_upcast: the fp16 VAE decodes in fp32
    recommended = replace(
        _sdxl(s, "recommended"), models={**sdxl_fp16.models, "vae": (s["sdxl"]["vae"], "fp32")}
    )  # VAE kept in fp32 once and for all; compile's buffers are not modelled
    turbo = _sdxl(s, "turbo", height=512, width=512, cfg=False, vae_upcast=True)  # guidance 0: no CFG batch
    return {
        "10": [
            ("fp32", "sdxl/fp32", _sdxl(s, "fp32", "fp32")),
            ("fp16 `pipe(...)` (SDPA is the default attention)", "sdxl/fp16", sdxl_fp16),
            ("fp16 + channels-last + `torch.compile(unet)`", "sdxl/recommended", recommended),
            ("fp16 + `enable_model_cpu_offload()`", "sdxl/fp16-offload", replace(sdxl_fp16, placement="model_offload")),
            ("SDXL-Turbo, 512², 1 step", "sdxl-turbo/fp16", turbo),
            (
                "SDXL-Turbo, 512², 1 step, with `enable_model_cpu_offload()` (the T4 figure of the same row)",
                "sdxl-turbo/fp16-offload",
                replace(turbo, placement="model_offload"),
            ),
            (
                "(not in the table) fp16, eager attention",
                "sdxl/fp16-eager-attention",
                replace(sdxl_fp16, attention="eager"),
            ),
            (
                "(not in the table) fp16 + sequential offload",
                "sdxl/fp16-sequential",
                replace(sdxl_fp16, placement="sequential_offload"),
            ),
        ],
        "11": [
            ("fp16, all three encoders on the GPU", "sd3/fp16", _sd3(s, "fp16")),
            ("fp16, T5 dropped", "sd3/fp16-no-t5", _sd3(s, "fp16-no-t5", with_t5=False)),
            (
                "fp16 + `enable_model_cpu_offload()` (T5 kept) — the low-memory recipe",
                "sd3/lowmem",
                _sd3(s, "lowmem", placement="model_offload", vae_tiling=True),
            ),
            ("fp16 + `torch.compile(transformer)`", "sd3/fp16-compile", _sd3(s, "fp16-compile")),
            (
                "(not in the table) fp16, 8-bit T5 (bitsandbytes; `wo` kept in fp32)",
                "sd3/fp16-t5-int8",
                replace(
                    _sd3(s, "t5-int8"),
                    models={**_sd3(s, "x").models, "text_encoder_3": (s["sd3"]["text_encoder_3"], "int8")},
                ),
            ),
        ],
    }


def _meta(build, dtype=torch.float16):
    with torch.device("meta"):
        return build().to(device="meta", dtype=dtype).eval()  # torch.Tensor([...]) parameters start on the CPU


def _trace_controlnet(size: int = 512) -> int:
    """Activations of one CFG step of SD 1.5 + ControlNet at ``size``² in fp16 (ControlNet, then the UNet with its
    residuals), traced on the meta device."""
    unet = _meta(lambda: diffusers.UNet2DConditionModel(**SD15_UNET))
    controlnet = _meta(lambda: diffusers.ControlNetModel(**SD15_CONTROLNET))
    f16 = {"device": "meta", "dtype": torch.float16}
    x, text = torch.empty(2, 4, size // 8, size // 8, **f16), torch.empty(2, 77, 768, **f16)
    cond, t = torch.empty(2, 3, size, size, **f16), torch.full((2,), 500, device="meta")

    def step():
        down, mid = controlnet(x, t, text, controlnet_cond=cond, return_dict=False)
        return unet(x, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample

    return m.trace_peak_bytes(step)


def _trace_unclip(size: int = 768) -> int:
    """Activations of one CFG step of the unCLIP UNet at ``size``² in fp16 (class labels: the 2048-wide image and
    noise-level embedding), traced on the meta device."""
    unet = _meta(lambda: diffusers.UNet2DConditionModel(**UNCLIP_UNET))
    f16 = {"device": "meta", "dtype": torch.float16}
    x, text = torch.empty(2, 4, size // 8, size // 8, **f16), torch.empty(2, 77, 1024, **f16)
    labels, t = torch.empty(2, 2048, **f16), torch.full((2,), 500, device="meta")
    return m.trace_peak_bytes(lambda: unet(x, t, text, class_labels=labels).sample)


def _trace_svd(
    height: int = 576, width: int = 1024, frames: int = 25, chunk: int = 8, forward_chunking: bool = False
) -> tuple[int, int]:
    """(UNet activations of one CFG step for ``frames`` frames, the larger of the VAE's decode of ``chunk`` frames and
    its encode of the conditioning image), SVD-XT in fp16, traced on the meta device; ``forward_chunking``:
    ``unet.enable_forward_chunking()`` (the feed-forward layers run in chunks)."""
    unet = _meta(diffusers.UNetSpatioTemporalConditionModel)
    if forward_chunking:
        unet.enable_forward_chunking()
    vae = _meta(lambda: diffusers.AutoencoderKLTemporalDecoder(**SVD_VAE))
    f16 = {"device": "meta", "dtype": torch.float16}
    h, w = height // 8, width // 8
    x, enc = torch.empty(2, frames, 8, h, w, **f16), torch.empty(2, 1, 1024, **f16)
    ids, t = torch.empty(2, 3, **f16), torch.full((2,), 500.0, device="meta")
    denoise = m.trace_peak_bytes(lambda: unet(x, t, enc, ids).sample)
    z, image = torch.empty(chunk, 4, h, w, **f16), torch.empty(1, 3, height, width, **f16)
    decode = m.trace_peak_bytes(lambda: vae.decode(z, num_frames=chunk).sample)
    encode = m.trace_peak_bytes(lambda: vae.encode(image).latent_dist.mode())
    return denoise, max(decode, encode)


def family_recipes(s) -> list[tuple[str, str, str, m.Recipe]]:
    """Notebook 16's family table rows that the model covers: (row, column, recipe key, recipe). Placement as
    ``family_pipelines.py`` / ``bridge.place``: model offload on a T4 (below 24 GiB), all on the GPU on an H100; SVD
    decodes 2 frames at a time on the T4 and 8 on the H100. Activations traced (no fitted shape for these models)."""
    cn = {n: (spec, "fp16") for n, spec in s["sd15-controlnet"].items()}
    cn_act = _trace_controlnet(512)
    svd = {n: (spec, "fp16") for n, spec in s["svd"].items()}
    unclip = {n: (spec, "fp16") for n, spec in s["sd21-unclip"].items()}
    unclip_act = _trace_unclip(768)
    rows = []
    for column, placement, chunk in (("T4", "model_offload", 2), ("H100", "gpu", 8)):
        rows.append(
            (
                "Stable unCLIP 2.1, 768², 20 steps",
                column,
                f"sd21-unclip/{column}",
                m.Recipe(
                    f"unclip-{column}",
                    unclip,
                    "unet",
                    None,
                    "vae",
                    m.SDXL_VAE_SHAPE,  # the SD VAE's shapes
                    text_encoders={"text_encoder": (77, 4096), "image_encoder": (257, 5120)},
                    height=768,
                    width=768,
                    placement=placement,
                    traced_denoiser=unclip_act,
                ),
            )
        )
        rows.append(
            (
                "SD 1.5 + canny ControlNet, 512², 30 steps",
                column,
                f"sd15-controlnet-canny/{column}",
                m.Recipe(
                    f"controlnet-{column}",
                    cn,
                    "unet",
                    None,
                    "vae",
                    m.SDXL_VAE_SHAPE,  # the SD VAE's shapes
                    text_encoders={"text_encoder": (77, 3072)},
                    height=512,
                    width=512,
                    placement=placement,
                    alongside=("controlnet",),
                    traced_denoiser=cn_act,
                ),
            )
        )
        denoise, decode = _trace_svd(576, 1024, 25, chunk)
        rows.append(
            (
                f"SVD-XT, 25 frames of 576×1024, 25 steps (decode_chunk_size {chunk})",
                column,
                f"svd/{column}",
                m.Recipe(
                    f"svd-{column}",
                    svd,
                    "unet",
                    None,
                    "vae",
                    m.VaeShape(latent_channels=4),
                    text_encoders={"image_encoder": (257, 5120)},
                    height=576,
                    width=1024,
                    frames=25,
                    placement=placement,
                    traced_denoiser=denoise,
                    traced_decode=decode,
                ),
            )
        )
    denoise, decode = _trace_svd(576, 1024, 25, 2, forward_chunking=True)
    svd_t4 = next(r for r in rows if r[2] == "svd/T4")[3]
    chunked = replace(svd_t4, name="svd-T4-forward-chunking", traced_denoiser=denoise, traced_decode=decode)
    rows.append(
        (
            "(not in the table) SVD-XT as on the T4 + `unet.enable_forward_chunking()`",
            "T4",
            "svd/T4-forward-chunking",
            chunked,
        )
    )
    return rows


def downloads(s, variant: str = "fp16") -> dict[str, dict[str, int]]:
    """Bytes each notebook downloads on a first run: ``variant="fp16"`` (a GPU run: ``load_pipeline`` asks for the fp16
    variant files) or ``"fp32"`` (a float32 run fetches the repositories' full files, stored in fp32 — except SD3
    medium's, stored in fp16). Repositories without fp16 variant files (the fp16-fix VAE, TAESD) are fp32 either way."""

    def d(repo: str, spec: m.ModelSpec, file_dtype: str) -> m.Download:
        if file_dtype == "fp16" and variant == "fp32" and "stable-diffusion-3" not in repo:
            file_dtype = "fp32"
        return m.Download(repo, spec, file_dtype)

    base = [d("stabilityai/stable-diffusion-xl-base-1.0", spec, "fp16") for spec in s["sdxl"].values()]
    fix_vae = d("madebyollin/sdxl-vae-fp16-fix", s["sdxl"]["vae"], "fp32")  # no fp16 variant files in that repository
    nb10 = [
        *base,
        *[d("stabilityai/stable-diffusion-xl-refiner-1.0", spec, "fp16") for spec in s["sdxl-refiner"].values()],
        *[d("stabilityai/sdxl-turbo", spec, "fp16") for spec in s["sdxl"].values()],
        *[d("stabilityai/sd-turbo", spec, "fp16") for spec in s["sd-turbo"].values()],
        fix_vae,
        d("madebyollin/taesdxl", s["taesdxl"]["vae"], "fp32"),
    ]
    nb11 = [
        *[d("stabilityai/stable-diffusion-3-medium-diffusers", spec, "fp16") for spec in s["sd3"].values()],
        d("madebyollin/taesd3", s["taesd3"]["vae"], "fp32"),
    ]
    nb12 = [*base, fix_vae]
    sd15 = s["sd15-controlnet"]
    nb15 = [
        *[d("stable-diffusion-v1-5/stable-diffusion-v1-5", sd15[n], "fp16") for n in sd15 if n != "controlnet"],
        d("lllyasviel/control_v11p_sd15_canny", sd15["controlnet"], "fp16"),
    ]
    nb16 = [
        *[d("stabilityai/stable-video-diffusion-img2vid-xt", spec, "fp16") for spec in s["svd"].values()],
        *[d("sd2-community/stable-diffusion-2-1-unclip", spec, "fp16") for spec in s["sd21-unclip"].values()],
    ]  # notebook 14's x4 upscaler is not counted (configuration not in the repository)
    refiner_unet = d("stabilityai/stable-diffusion-xl-refiner-1.0", s["sdxl-refiner"]["unet"], "fp16")
    nb10_shared = [x for x in nb10 if x.repo != refiner_unet.repo] + [refiner_unet]
    return {
        "10": m.download_bytes(nb10),
        "10 (GPU of 24 GiB or more: the refiner shares the base's bigG and VAE, only its UNet is fetched)": (
            m.download_bytes(nb10_shared)
        ),
        "11": m.download_bytes(nb11),
        "12": m.download_bytes(nb12),
        "15": m.download_bytes(nb15),
        "16 (fp16 files assumed for unCLIP)": m.download_bytes(nb16),
    }


def sdxl_cross_attention_tokens(size: int = 1024) -> list[int]:
    """Tokens N_l (latent pixels) of every ``attn2`` layer of the full-size SDXL UNet at ``size``², read off a
    meta-device forward pass with hooks (70 layers: 10 at 64², 60 at 32² for 1024²)."""
    unet = full_size.full_components("sdxl", device="meta", dtype=torch.float16)["unet"]
    tokens: list[int] = []
    hooks = [
        mod.register_forward_hook(lambda mod, args, out: tokens.append(out.shape[1]))
        for name, mod in unet.named_modules()
        if name.endswith("attn2")
    ]
    h = size // 8
    x = torch.empty(1, 4, h, h, device="meta", dtype=torch.float16)
    text = torch.empty(1, 77, 2048, device="meta", dtype=torch.float16)
    added = {
        "text_embeds": torch.empty(1, 1280, device="meta", dtype=torch.float16),
        "time_ids": torch.empty(1, 6, device="meta", dtype=torch.float16),
    }
    with torch.inference_mode():
        unet(x, torch.zeros(1, device="meta"), text, added_cond_kwargs=added)
    for hook in hooks:
        hook.remove()
    return tokens


def _measured_family(path: Path) -> dict[str, dict]:
    """Pipeline key → a family_pipelines.py record with a numeric GPU peak (none yet: its run was the CPU stand-ins)."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    setup = data.get("setup") or {}
    if not setup.get("gpu"):
        return {}
    return {
        r["pipeline"]: {**r, "gpu": setup["gpu"], "gpu_memory_gib": setup.get("gpu_memory_gib")}
        for r in data.get("records", [])
        if isinstance(r.get("peak_allocated_gib"), (int, float))
    }


def _measured(path: Path) -> dict[str, dict]:
    """Recipe key → measured record with a numeric allocated peak (gpu_pipelines.json), with its GPU."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    gpu = (data.get("setup") or {}).get("gpu")
    out = {}
    for record in data.get("records", []):
        if gpu and isinstance(record.get("peak_allocated_gib"), (int, float)):
            out[f"{record.get('model')}/{record.get('recipe')}"] = {**record, "gpu": gpu}
    return out


def modelled_gpu_peaks() -> dict[tuple[str, str], float]:
    """(model, recipe) → modelled peak GPU GiB, keyed as gpu_pipelines.py's records are (for tests/test_memory.py)."""
    s = specs()
    out = {}
    for rows in table_recipes(s).values():
        for _, key, recipe in rows:
            model, name = key.split("/")
            out[(model, name)] = m.estimate_memory(recipe).gpu_peak_gib
    return out


FULL_SIZE_CPU = OUT.parent / "full_size_cpu.json"
_CPU_FUNCTIONS = {  # family → the functions whose peak RAM the model covers, and the models built before each
    "sdxl": {"build": ("sdxl",), "sdxl_generate": ("sdxl",), "build_refiner": ("sdxl", "refiner-unet")},
    "sd3": {"build": ("sd3",), "sd3_generate": ("sd3",)},
    "sd3-no-t5": {
        "build": ("sd3-no-t5",),
        "sd3_generate": ("sd3-no-t5",),
        # from_pipe(pipe) without dtype= converts the shared components to float32 (the first finding)
        "from_pipe_default_dtype": ("sd3-no-t5", "as-fp32"),
    },
}


def compare_full_size_cpu(path: Path = FULL_SIZE_CPU, s=None) -> list[dict]:
    """The model (placement ``"cpu"``: weights in the run's dtype + the largest phase's activations at its size) against
    the peak RAM ``benchmarks/full_size_cpu.py`` measured (``ru_maxrss``: the peak so far, so the modelled figure is a
    running maximum too), plus the process's RAM before its first build (Python, torch, diffusers). Records that
    failed, and functions the model does not cover (attention maps, tiling, the LoRA step), are left out."""
    if not path.exists():
        return []
    s = s or specs()
    data = json.loads(path.read_text())
    families = data.get("families") or {}
    out = []
    for family, functions in _CPU_FUNCTIONS.items():
        info = families.get(family) or {}
        records = [r for r in data.get("records", []) if r.get("family") == family]
        if not records or info.get("dtype") not in m.DTYPE_BYTES:
            continue
        dtype, size = info["dtype"], int(info.get("size") or 256)
        baseline = records[0].get("ram_before_gib") or 0.0
        running = 0.0
        for rec in records:
            fn = rec.get("function")
            if fn not in functions:
                continue
            dt = "fp32" if "as-fp32" in functions[fn] else dtype
            recipe = (
                _sdxl(s, fn, dt, placement="cpu", height=size, width=size)
                if family == "sdxl"
                else _sd3(s, fn, dt, with_t5=family == "sd3", placement="cpu", height=size, width=size)
            )
            est = m.estimate_memory(recipe)
            now = est.weights_total if fn.startswith("build") else est.cpu_ram
            if "refiner-unet" in functions[fn]:
                now += m.weight_bytes(s["sdxl-refiner"]["unet"], dtype)
            running = max(running, baseline + now / m.GIB)
            if rec.get("status") != "ok" or not isinstance(rec.get("peak_ram_gib"), (int, float)):
                continue
            out.append(
                {
                    "family": family,
                    "function": fn,
                    "dtype": dt,
                    "size": size,
                    "measured_peak_ram_gib": rec["peak_ram_gib"],
                    "modelled_peak_ram_gib": round(running, 2),
                    "process_baseline_gib": baseline,
                    "ratio": round(running / rec["peak_ram_gib"], 3),
                    "measured": "CPU, benchmarks/results/full_size_cpu.json",
                }
            )
    return out


def notebook_11_statements(s) -> dict:
    """The figures notebook 12 states about the real SDXL LoRA recipe, computed: the UNet in fp16, full fine-tuning
    with AdamW (fp32 weights, gradients and two moments: 16 bytes a parameter, activations not counted), the text
    encoders and VAE in fp16, and the LoRA of rank 4 on every attention projection (to_q, to_k, to_v, to_out.0):
    r·(d_in + d_out) parameters per layer, counted on the meta-device UNet."""
    sdxl = s["sdxl"]
    unet = full_size.full_components("sdxl", device="meta", dtype=torch.float32)["unet"]
    lora = sum(
        4 * (mod.in_features + mod.out_features)
        for name, mod in unet.named_modules()
        if isinstance(mod, torch.nn.Linear) and name.endswith(("to_q", "to_k", "to_v", "to_out.0"))
    )
    return {
        "unet_fp16_gb": round(m.weight_bytes(sdxl["unet"], "fp16") / 1e9, 2),
        "full_finetune_adamw_gb": round(16 * sdxl["unet"].params / 1e9, 1),
        "text_encoders_fp16_gb": round(
            (m.weight_bytes(sdxl["text_encoder"], "fp16") + m.weight_bytes(sdxl["text_encoder_2"], "fp16")) / 1e9, 2
        ),
        "vae_fp16_gb": round(m.weight_bytes(sdxl["vae"], "fp16") / 1e9, 2),
        "lora_rank4_params": lora,
        "lora_rank4_file_fp32_mb": round(4 * lora / 1e6, 1),
        "status": "modelled",
    }


def _entry(row: str, key: str, recipe: m.Recipe, status: str = "modelled") -> dict:
    est = m.estimate_memory(recipe)
    return {
        "row": row,
        "recipe": key,
        "size": f"{recipe.height}x{recipe.width}" + (f"x{recipe.frames} frames" if recipe.frames > 1 else ""),
        "cfg": recipe.cfg,
        "placement": recipe.placement,
        "attention": recipe.attention,
        "gpu_peak_gib": round(est.gpu_peak_gib, 1),
        "t4_fits": est.gpu_peak_gib <= T4_USABLE_GIB,
        "cpu_ram_gib": round(est.cpu_ram_gib, 1),
        "peak_phase": est.peak_phase,
        "breakdown_gib": {
            "weights": {k: round(v / m.GIB, 2) for k, v in est.weights.items()},
            "weights_total": round(est.weights_total / m.GIB, 2),
            "latents": round(est.latents / m.GIB, 4),
            "text_activations": round(est.text_activations / m.GIB, 3),
            "denoiser_features": round(est.denoiser_features / m.GIB, 3),
            "attention_maps": round(est.attention_maps / m.GIB, 3),
            "vae_decode": round(est.vae_decode / m.GIB, 3),
            "vae_upcast_extra": round(est.vae_upcast_extra / m.GIB, 3),
            "phase_peaks": {k: round(v / m.GIB, 2) for k, v in est.phase_peaks.items()},
        },
        "status": status,
    }


def build() -> dict:
    s = specs()
    measured = _measured(OUT.parent / "gpu_pipelines.json")
    tables = {}
    for nb, rows in table_recipes(s).items():
        entries = []
        for row, key, recipe in rows:
            entry = _entry(row, key, recipe)
            if key in measured:
                rec = measured[key]
                entry["measured_peak_allocated_gib"] = rec["peak_allocated_gib"]
                entry["status"] = f"measured: {rec['gpu']}, benchmarks/results/gpu_pipelines.json"
            entries.append(entry)
        tables[nb] = entries
    family_measured = _measured_family(OUT.parent / "family_pipelines.json")
    tables["16"] = []
    for row, column, key, recipe in family_recipes(s):
        entry = {"column": column, **_entry(row, key, recipe, "modelled (activations traced on the meta device)")}
        rec = family_measured.get(key.split("/")[0])
        if rec is not None and ((rec["gpu_memory_gib"] or 0) < 24) == (column == "T4"):
            entry["measured_peak_allocated_gib"] = rec["peak_allocated_gib"]
            entry["status"] = f"measured: {rec['gpu']}, benchmarks/results/family_pipelines.json"
        tables["16"].append(entry)
    tables["16"].append(
        {
            "row": "x4 upscaler, 128² → 512², 50 steps",
            "status": "not modelled: its published configuration is not checked into the repository yet",
        }
    )
    tokens = sdxl_cross_attention_tokens(1024)
    record = m.attention_record_bytes(tokens, 77, 30, 128)
    attention_record = {
        "what": "notebook 10 §6: every attn2 map of the real SDXL UNet at 1024², 30 steps, head-mean, fp32 on the "
        "CPU: peak_as_written = keep every map, upsample each to 77x128x128 and stack them (the notebook before it "
        "aggregated); native_mean = one running sum per resolution, what the notebook keeps now",
        "layers": len(tokens),
        "tokens_per_layer": sorted(set(tokens)),
        **{f"{k}_gb": round(v / 1e9, 4) for k, v in record.items()},
        "status": "modelled",
    }
    dl = {nb: {repo: round(b / 1e9, 2) for repo, b in per.items()} for nb, per in downloads(s).items()}
    dl_fp32 = {nb: round(per["total"] / 1e9, 2) for nb, per in downloads(s, "fp32").items()}
    return {
        "benchmark": "benchmarks/memory_tables.py",
        "model": "diffusion_lab.bridge.memory (formulas in its docstring)",
        "units": "GiB (2^30 bytes) for memory; GB (10^9 bytes) for downloads, as the hub lists file sizes",
        "note": "modelled: parameter counts of meta-device builds of the published configurations, dtypes, placement "
        "and activation terms fitted to meta-device traces of the real modules; allocator overhead (5-15 % on the "
        "reserved peak), cuDNN workspaces and torch.compile buffers are not modelled; CPU RAM excludes the Python "
        "process and CUDA context (1-3 GB)",
        "parameters": {model: {n: sp.params for n, sp in comps.items()} for model, comps in s.items()},
        "tables": tables,
        "downloads_gb": dl,
        "downloads_gb_fp32_files": dl_fp32,
        "attention_record_cpu_ram": attention_record,
        "notebook_11_statements": notebook_11_statements(s),
        "full_size_cpu_check": compare_full_size_cpu(FULL_SIZE_CPU, s)
        or "benchmarks/results/full_size_cpu.json not written yet: no comparison",
    }


_VAE_CPU_CHILD = """
import gc, resource, sys, torch, diffusers
from diffusion_lab.bridge import full_size
size = int(sys.argv[1])
torch.manual_seed(0)
vae = diffusers.AutoencoderKL(**full_size.SDXL_VAE).eval()
gc.collect()
before = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
z = torch.randn(1, 4, size // 8, size // 8)
with torch.inference_mode():
    vae.decode(z)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(before, peak)
"""


def measure_vae_decode_cpu(sizes=(256, 512)) -> list[dict]:
    """The decode term measured for real: the full-size SDXL VAE (random weights, fp32) decodes one latent on the CPU
    in a fresh process; peak RAM (``ru_maxrss``) minus the RAM after building it, against formula 5. Tens of seconds
    (``--measure-cpu``)."""
    out = []
    for size in sizes:
        done = subprocess.run(
            [sys.executable, "-c", _VAE_CPU_CHILD, str(size)], capture_output=True, text=True, check=True
        )
        before, peak = (int(x) for x in done.stdout.split()[-2:])
        modelled = 3 * m.SDXL_VAE_SHAPE.up_channels * size * size * 4
        out.append(
            {
                "size": size,
                "measured_decode_gib": round((peak - before) / m.GIB, 3),
                "modelled_decode_gib": round(modelled / m.GIB, 3),
                "measured": f"CPU ({platform.machine()}, torch {torch.__version__}), this script's --measure-cpu",
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    measure = "--measure-cpu" in (argv or [])
    result = build()
    if measure:
        result["vae_decode_cpu_check"] = measure_vae_decode_cpu()
    elif OUT.exists():  # keep the earlier measurement
        earlier = json.loads(OUT.read_text()).get("vae_decode_cpu_check")
        if earlier:
            result["vae_decode_cpu_check"] = earlier
    write_json_atomic(OUT, result)
    for nb, rows in result["tables"].items():
        print(f"notebook {nb}")
        for e in rows:
            if "gpu_peak_gib" not in e:
                print(f"  {e['status']}: {e['row']}")
                continue
            where = f"{e.get('column', ''):4} "
            print(f"  {where}{e['gpu_peak_gib']:5.1f} GiB GPU  {e['cpu_ram_gib']:5.1f} GiB RAM  {e['row']}")
    for nb, per in result["downloads_gb"].items():
        print(f"downloads {nb}: {per['total']:.1f} GB  {per}")
    print(f"attention maps of notebook 10: {result['attention_record_cpu_ram']}")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
