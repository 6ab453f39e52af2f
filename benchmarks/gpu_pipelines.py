"""Time per image and peak GPU memory of full-size SDXL and SD3-medium, recipe by recipe, on this machine's GPU.

What is measured
----------------
The real ``StableDiffusionXLPipeline`` and ``StableDiffusion3Pipeline`` of diffusers, assembled from components built
at **full size from their published configurations** (SDXL base: 2.6 B-parameter UNet, CLIP-L and OpenCLIP-bigG text
encoders, VAE; SD3 medium: 2.0 B-parameter MMDiT, CLIP-L, bigG and the 4.8 B-parameter T5-XXL encoder, 16-channel
VAE) with **random weights**. The time and memory of a forward pass depend on the shapes and the dtype, not on the
values of the weights, so nothing is downloaded and no licence is needed (SD3 is gated on the hub). Dtypes are set as
``from_pretrained(..., dtype=...)`` sets them (in fp16 T5's ``wo`` layers stay in fp32: ``keep_in_fp32``). Each module
is initialised directly on the GPU in its dtype, one at a time (for the offload recipes each is moved to the CPU once
built), so building needs no more GPU memory than running, and no fp32 copy on the CPU. The tokenizers are
the course's tiny in-memory ones (``diffusion_lab.bridge.hub``): they only choose which ids are fed to the embedding
tables (still of the real vocabulary sizes, 49408 and 32128), and every prompt is padded to the real lengths (77 CLIP
tokens, 256 T5 tokens), so the encoders do the same work. One 1024x1024 image, 30 steps, classifier-free guidance
(SDXL 5.0, SD3 7.0: batch 2 through the denoiser), PIL output, as a user calls ``pipe(prompt, ...)``.

For every recipe, in a fresh state (pipeline built anew, caches emptied, compiled graphs reset): ``--warmup`` images
(default 1, not timed: cuDNN autotuning, lazy initialisation, and for ``torch.compile`` the compilation, whose time is
recorded as ``warmup_seconds``), then ``--repeats`` timed images with the GPU synchronised before the clock stops
(``bridge.measure``). Recorded: seconds per image (mean and min), images/s, peak allocated and peak reserved GPU memory
over the timed images (``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``; the caching allocator reserves
more than it hands out, and it is reserved memory that must fit the card), the same peaks during the warm-up, memory
held by the weights on the GPU, build time, parameter count, the GPU, torch/CUDA/diffusers/transformers versions,
size and steps. A recipe that runs out of GPU memory is recorded as ``"OOM"`` (with the next knob to try, from
``bridge.suggest_on_oom``) and the benchmark goes on.

Recipes (``--recipes`` picks some by name: ``fp16``, ``sdxl/fp16``, ...)
---------------------------------------------------------------------
SDXL
  ``fp32``                  everything in float32 (TF32 matmuls off, PyTorch's default; cuDNN may use TF32 in convs)
  ``fp16-eager-attention``  fp16, the UNet's attention as explicit softmax(QKᵀ/√d)V (``AttnProcessor``): what SDPA saves
  ``fp16``                  fp16, plain ``pipe(...)``: the **naive baseline**. PyTorch 2's fused SDPA attention is the
                            default, so this *is* "fp16 + SDPA". SDXL's VAE config says ``force_upcast``: the pipeline
                            casts the VAE to fp32 before each decode and back after it (its fp16 overflows).
  ``bf16``                  bfloat16 everywhere (no VAE overflow, no upcast)
  ``recommended``           the notebook's recipe for big GPUs: fp16 UNet and text encoders; the VAE kept in fp32 once and
                            for all, so only the decode runs in fp32 (no per-image casting; ``output_type="latent"``
                            then ``bridge.decode_latents``); UNet in channels-last layout; ``torch.compile(pipe.unet,
                            mode="max-autotune-no-cudagraphs", fullgraph=True)`` with the inductor settings of diffusers'
                            speed-up guide (1x1 convs as matmuls, coordinate-descent tuning, no epilogue fusion).
                            ``max-autotune-no-cudagraphs`` rather than ``reduce-overhead``: at 1024² a UNet call is tens
                            of milliseconds of GPU work, so launch overhead (what CUDA graphs remove) is small, while
                            tuned convolution and matmul kernels are where the time goes; CUDA graphs would also keep a
                            private memory pool (a higher reserved peak). ``--compile-mode`` changes it.
  ``fp16-offload``          fp16 + ``pipe.enable_model_cpu_offload()`` (each model on the GPU only while it runs)
SD3 medium
  ``fp32``, ``fp16``, ``bf16``  all three text encoders, the transformer and the VAE on the GPU
  ``fp16-no-t5``            T5 dropped (``text_encoder_3=None``: the pipeline feeds zeros in its place)
  ``fp16-compile``          fp16 + ``torch.compile(pipe.transformer)`` (same mode and settings as above)
  ``lowmem``                **the low-memory recipe** (notebook 11): fp16 + ``enable_model_cpu_offload()`` + T5 kept +
                            ``pipe.vae.enable_tiling()``. (At 1024² the VAE does not actually tile: the tile size is
                            its config's ``sample_size``, 1024, and diffusers tiles only latents larger than a tile;
                            the knob is part of the recipe because it is what lets larger images decode.)
  ``lowmem-no-t5``          the same with T5 dropped

Targets (issue): the ``recommended`` SDXL recipe >= 1.5x faster than naive fp16 ``pipe(...)`` on the same GPU; the
SD3 ``lowmem`` recipe peaks <= 15 GiB of allocated memory (a "16 GB" T4). Note that a T4 reports about 14.7 GiB of
total memory, of which the CUDA context takes a few hundred MiB, and that the allocator's reserved peak is what must
fit: the reserved peak is recorded next to the target, check it too. Both checks are written to the JSON under ``targets`` with a ``met`` flag
(``null`` when the recipes involved were not measured).

Reproduce (CUDA GPU; no download)::

    .venv/bin/python benchmarks/gpu_pipelines.py                         # both models, all recipes
    .venv/bin/python benchmarks/gpu_pipelines.py --model sdxl --recipes fp16,recommended
    .venv/bin/python benchmarks/gpu_pipelines.py --count-params          # parameter counts, no GPU needed

Results go to ``benchmarks/results/gpu_pipelines.json`` (written atomically). Records of an earlier run on the same
GPU, size and steps are kept for the recipes not run again (``--fresh`` starts over), so the recipes can be measured
in several sessions. Expect a complete run to take tens of minutes on an H100 (an estimate: compiling with
``max-autotune`` takes minutes per model; fp32 SD3 alone holds 29 GiB of weights).

Without a CUDA GPU the script prints that nothing was measured and exits 0 without touching the results file.
``--tiny`` runs the very same recipe code on the CPU with the course's tiny pipelines (64x64, 2 steps, 1 repeat, fp32
unless ``--tiny-dtypes``; CPU offload is dropped from the recipes that use it, and so is ``torch.compile`` unless
``--tiny-compile``, each record listing what it dropped) and writes to ``--out`` (default
``build/gpu_pipelines_tiny.json``, never the results file): the tests use it to exercise the code offline. Its
numbers mean nothing about the real models.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers

from diffusion_lab import bridge
from diffusion_lab.bridge.full_size import FULL_SIZE_MODELS, full_pipeline, keep_in_fp32
from diffusion_lab.bridge.full_size import full_size_parameters as count_parameters
from diffusion_lab.utils.checkpoint import write_json_atomic

OUT = Path(__file__).resolve().parent / "results" / "gpu_pipelines.json"
TINY_OUT = Path(__file__).resolve().parents[1] / "build" / "gpu_pipelines_tiny.json"
PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
GUIDANCE = {"sdxl": 5.0, "sd3": 7.0}
GIB = 2**30

# --- pipelines: full size from diffusion_lab.bridge.full_size (published configurations), tiny from the bridge ----


def tiny_pipeline(model: str, *, device: str, dtype: torch.dtype, with_t5=True, vae_dtype=None, park=False):
    """The course's tiny stand-in of the same class (``bridge.tiny_sdxl`` / ``bridge.tiny_sd3``), for ``--tiny``."""
    del park  # offload is never run on the CPU
    pipe = bridge.tiny_sdxl() if model == "sdxl" else bridge.tiny_sd3(with_t5=with_t5)
    pipe.to(device, dtype)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            keep_in_fp32(module, dtype)
    if vae_dtype is not None:
        pipe.vae.to(dtype=vae_dtype)
    return pipe


# --- recipes --------------------------------------------------------------------------------------------------------

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Recipe:
    """One way to run a pipeline. Every knob is applied by :func:`run_recipe`, the same code for full and tiny."""

    model: str  # "sdxl" | "sd3"
    name: str
    description: str
    dtype: str = "fp16"
    with_t5: bool = True  # SD3 only
    eager_attention: bool = False  # the denoiser's attention as explicit softmax(QK^T)V instead of SDPA
    vae_fp32_decode: bool = False  # VAE kept in fp32, the pipeline returns latents, decoded in fp32
    channels_last: bool = False
    compile: bool = False
    offload: bool = False  # enable_model_cpu_offload(): needs CUDA
    vae_tiling: bool = False

    @property
    def key(self) -> str:
        return f"{self.model}/{self.name}"


RECIPES: tuple[Recipe, ...] = (
    Recipe("sdxl", "fp32", "fp32 pipe(...)", dtype="fp32"),
    Recipe(
        "sdxl",
        "fp16-eager-attention",
        "fp16, UNet attention as explicit softmax(QK^T)V (AttnProcessor): what SDPA saves",
        eager_attention=True,
    ),
    Recipe("sdxl", "fp16", "fp16 pipe(...): the naive baseline; SDPA is PyTorch 2's default attention"),
    Recipe("sdxl", "bf16", "bf16 pipe(...)", dtype="bf16"),
    Recipe(
        "sdxl",
        "recommended",
        "fp16 + VAE kept in fp32 (only the decode upcast) + channels-last UNet + torch.compile(unet)",
        vae_fp32_decode=True,
        channels_last=True,
        compile=True,
    ),
    Recipe("sdxl", "fp16-offload", "fp16 + enable_model_cpu_offload()", offload=True),
    Recipe("sd3", "fp32", "fp32, all three text encoders on the GPU", dtype="fp32"),
    Recipe("sd3", "fp16", "fp16, all three text encoders on the GPU"),
    Recipe("sd3", "bf16", "bf16, all three text encoders on the GPU", dtype="bf16"),
    Recipe("sd3", "fp16-no-t5", "fp16, T5 dropped (text_encoder_3=None)", with_t5=False),
    Recipe("sd3", "fp16-compile", "fp16 + torch.compile(transformer)", compile=True),
    Recipe(
        "sd3",
        "lowmem",
        "low-memory recipe: fp16 + enable_model_cpu_offload() + T5 kept + vae.enable_tiling()",
        offload=True,
        vae_tiling=True,
    ),
    Recipe(
        "sd3",
        "lowmem-no-t5",
        "fp16 + enable_model_cpu_offload() + T5 dropped + vae.enable_tiling()",
        with_t5=False,
        offload=True,
        vae_tiling=True,
    ),
)

# diffusers' speed-up guide for SDXL ("accelerate inference of text-to-image diffusion models")
INDUCTOR_SETTINGS = {
    "conv_1x1_as_mm": True,
    "coordinate_descent_tuning": True,
    "coordinate_descent_check_all_directions": True,
    "epilogue_fusion": False,
}


def select_recipes(models: list[str], names: str | None) -> list[Recipe]:
    """Recipes of ``models``; ``names``: comma-separated ``name`` (every model that has it) or ``model/name``."""
    chosen = [r for r in RECIPES if r.model in models]
    if not names or names == "all":
        return chosen
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {r.name for r in RECIPES} | {r.key for r in RECIPES}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ValueError(f"unknown recipe(s) {unknown}; choose from {sorted(r.key for r in RECIPES)}")
    return [r for r in chosen if r.name in wanted or r.key in wanted]


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _generate(pipe, recipe: Recipe, *, size: int, steps: int, generator_device: str):
    """One image from ``PROMPT``, as a user would make it with this recipe."""
    kwargs = {
        "prompt": PROMPT,
        "num_inference_steps": steps,
        "guidance_scale": GUIDANCE[recipe.model],
        "height": size,
        "width": size,
        "generator": torch.Generator(generator_device).manual_seed(0),
    }
    if recipe.vae_fp32_decode:
        latents = pipe(**kwargs, output_type="latent").images  # (1, 4, size/8, size/8), fp16
        image = bridge.decode_latents(pipe.vae, latents)  # fp32 VAE: latents upcast, decode in fp32
        return pipe.image_processor.postprocess(image, output_type="pil")
    return pipe(**kwargs).images


def _cuda_gib(fn: Callable[[], int], cuda: bool) -> float | None:
    """A CUDA memory counter in GiB; None for a CPU run (also a --tiny run on a machine that has a GPU)."""
    return round(fn() / GIB, 3) if cuda else None


def _free_memory(compiled: bool) -> None:
    gc.collect()
    if compiled:
        from torch import _dynamo

        _dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def run_recipe(recipe: Recipe, args: argparse.Namespace, *, device: str) -> dict[str, Any]:
    """Build the pipeline for ``recipe`` in a fresh state, apply its knobs, warm up, time ``args.repeats`` images.
    Returns a record whose ``status`` is ``ok``, ``OOM`` or ``error``. Without CUDA the knobs that need it (offload)
    and compile (unless ``--tiny-compile``) are dropped and listed under ``knobs_dropped``."""
    cuda = device == "cuda"
    dtype_run = recipe.dtype if (cuda or args.tiny_dtypes) else "fp32"  # CPU half precision: slow, so fp32
    record: dict[str, Any] = {
        "model": recipe.model,
        "recipe": recipe.name,
        "description": recipe.description,
        "dtype": recipe.dtype,
        "dtype_run": dtype_run,
        "knobs": {k: v for k, v in asdict(recipe).items() if k not in ("model", "name", "description")},
        "status": "ok",
    }
    if recipe.compile:
        record["compile_mode"] = args.compile_mode
    dropped = []  # on the CPU the recipe runs without the knobs that need CUDA (and compile, unless asked for)
    if recipe.offload and not cuda:
        dropped.append("offload: enable_model_cpu_offload() needs a CUDA GPU")
        recipe = replace(recipe, offload=False)
    if recipe.compile and not cuda and not args.tiny_compile:
        dropped.append("compile: not run on the CPU unless --tiny-compile")
        recipe = replace(recipe, compile=False)
    if dropped:
        record["knobs_dropped"] = dropped

    build = tiny_pipeline if args.tiny else full_pipeline
    dtype = DTYPES[dtype_run]
    pipe = denoiser = None
    settings = contextlib.nullcontext()
    if recipe.compile:
        from torch._inductor import config as inductor_config

        settings = inductor_config.patch(INDUCTOR_SETTINGS)
    _free_memory(compiled=False)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        with settings, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # upcast_vae's deprecation (SDXL fp16), fp16-on-CPU notices
            start = time.perf_counter()
            pipe = build(
                recipe.model,
                device=device,
                dtype=dtype,
                with_t5=recipe.with_t5,
                vae_dtype=torch.float32 if recipe.vae_fp32_decode else None,
                park=recipe.offload,
            )
            denoiser_name = "unet" if recipe.model == "sdxl" else "transformer"
            denoiser = getattr(pipe, denoiser_name)
            record["parameters"] = sum(
                bridge.count_parameters(m) for m in pipe.components.values() if isinstance(m, torch.nn.Module)
            )
            if recipe.eager_attention:
                from diffusers.models.attention_processor import AttnProcessor

                denoiser.set_attn_processor(AttnProcessor())
            if recipe.channels_last:
                denoiser.to(memory_format=torch.channels_last)
            if recipe.compile:
                setattr(pipe, denoiser_name, torch.compile(denoiser, mode=args.compile_mode, fullgraph=True))
            if recipe.offload:
                pipe.enable_model_cpu_offload()
            if recipe.vae_tiling:
                pipe.vae.enable_tiling()
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
            record["build_seconds"] = round(time.perf_counter() - start, 2)
            record["weights_gib"] = _cuda_gib(torch.cuda.memory_allocated, cuda)  # on the GPU before the first image

            def image():
                return _generate(pipe, recipe, size=args.size, steps=args.steps, generator_device=device)

            with bridge.suggest_on_oom(pipe):  # an OOM message then names the next knob to try
                warm = [bridge.measure(image)[1] for _ in range(args.warmup)]
                record["warmup_seconds"] = [round(m.seconds, 3) for m in warm]
                record["warmup_peak_allocated_gib"] = round(max(m.peak_gib for m in warm), 3) if cuda and warm else None
                record["warmup_peak_reserved_gib"] = _cuda_gib(torch.cuda.max_memory_reserved, cuda)
                times, peaks, reserved = [], [], []
                for _ in range(args.repeats):
                    _, m = bridge.measure(image)  # resets the peak counters, synchronises before stopping the clock
                    times.append(m.seconds)
                    peaks.append(m.peak_gib)
                    reserved.append(_cuda_gib(torch.cuda.max_memory_reserved, cuda))
        mean = sum(times) / len(times)
        record.update(
            seconds=[round(t, 4) for t in times],
            seconds_per_image=round(mean, 4),
            seconds_per_image_min=round(min(times), 4),
            images_per_s=round(1 / mean, 4),
            peak_allocated_gib=round(max(peaks), 3) if cuda else None,
            peak_reserved_gib=max(reserved) if cuda else None,
        )
    except Exception as exc:  # noqa: BLE001 - one failed recipe must not lose the others' measurements
        record["status"] = "OOM" if _is_oom(exc) else "error"
        record["message"] = f"{type(exc).__name__}: {str(exc).strip()[:600]}"
        record["traceback"] = "".join(traceback.format_exception(exc)[-4:])[-2000:]
        if record["status"] == "OOM":
            record["peak_allocated_gib"] = _cuda_gib(torch.cuda.max_memory_allocated, cuda)
        del exc
    finally:
        pipe = denoiser = None
        _free_memory(compiled=recipe.compile)
    return record


# --- targets and output ---------------------------------------------------------------------------------------------


def _find(records: list[dict], model: str, recipe: str) -> dict | None:
    rec = next((r for r in records if r["model"] == model and r["recipe"] == recipe), None)
    return rec if rec and rec.get("status") == "ok" else None


def target_checks(records: list[dict]) -> dict[str, dict[str, Any]]:
    """The issue's two targets, computed from ``records``; ``met`` is None when a recipe involved is missing or
    failed (and False when the low-memory recipe ran out of memory)."""
    fast, naive = _find(records, "sdxl", "recommended"), _find(records, "sdxl", "fp16")
    speedup = round(naive["seconds_per_image"] / fast["seconds_per_image"], 3) if fast and naive else None
    low = _find(records, "sd3", "lowmem")
    peak = low.get("peak_allocated_gib") if low else None
    low_oom = any(r["model"] == "sd3" and r["recipe"] == "lowmem" and r["status"] == "OOM" for r in records)
    return {
        "sdxl_recommended_speedup": {
            "description": "SDXL: naive fp16 pipe(...) seconds per image / recommended recipe's (same GPU)",
            "recipe": "sdxl/recommended",
            "baseline": "sdxl/fp16",
            "value": speedup,
            "target": 1.5,
            "comparison": ">=",
            "met": None if speedup is None else speedup >= 1.5,
        },
        "sd3_lowmem_peak_gib": {
            "description": "SD3 low-memory recipe: peak allocated GPU memory over the timed images, GiB (16 GB T4)",
            "recipe": "sd3/lowmem",
            "value": peak,
            "peak_reserved_gib": low.get("peak_reserved_gib") if low else None,
            "target": 15.0,
            "comparison": "<=",
            "met": False if low_oom else (None if peak is None else peak <= 15.0),
        },
    }


def setup_fields(args: argparse.Namespace, device: str) -> dict[str, Any]:
    cuda = device == "cuda"
    props = torch.cuda.get_device_properties(0) if cuda else None
    return {
        "gpu": props.name if props else None,
        "gpu_memory_gib": round(props.total_memory / GIB, 2) if props else None,
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "weights": "tiny stand-ins (bridge.tiny_*), CPU" if args.tiny else "random, full-size published configs",
        "size": args.size,
        "steps": args.steps,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "guidance_scale": GUIDANCE,
        "prompt": PROMPT,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "compile_mode": args.compile_mode,
        "inductor_settings": INDUCTOR_SETTINGS,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


_SAME_RUN = ("gpu", "weights", "size", "steps", "torch", "diffusers")


def merge_records(path: Path, setup: dict, new: list[dict], fresh: bool) -> list[dict]:
    """Earlier records in ``path`` from the same GPU, weights, size, steps and versions, for recipes not run now,
    followed by ``new``."""
    if fresh or not path.is_file():
        return new
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return new
    if not isinstance(old, dict) or any(old.get("setup", {}).get(k) != setup[k] for k in _SAME_RUN):
        return new
    done = {(r["model"], r["recipe"]) for r in new}
    kept = [r for r in old.get("records", []) if (r.get("model"), r.get("recipe")) not in done]
    order = {r.key: i for i, r in enumerate(RECIPES)}
    return sorted(kept + new, key=lambda r: order.get(f"{r['model']}/{r['recipe']}", len(order)))


def _fmt(value, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def print_summary(records: list[dict], targets: dict) -> None:
    print(f"\n{'recipe':28s} {'status':8s} {'s/image':>9s} {'img/s':>7s} {'peak alloc':>11s} {'peak resv':>10s}")
    for r in records:
        print(
            f"{r['model'] + '/' + r['recipe']:28s} {r['status']:8s} {_fmt(r.get('seconds_per_image'), '.3f'):>9s} "
            f"{_fmt(r.get('images_per_s'), '.3f'):>7s} {_fmt(r.get('peak_allocated_gib'), '.2f', ' GiB'):>11s} "
            f"{_fmt(r.get('peak_reserved_gib'), '.2f', ' GiB'):>10s}"
        )
    for name, t in targets.items():
        print(f"target {name}: {t['value']} {t['comparison']} {t['target']} -> met: {t['met']}")


def print_parameter_counts() -> None:
    counts = count_parameters(FULL_SIZE_MODELS)  # SDXL base, the refiner, SD3 medium
    for model, comps in counts.items():
        total = sum(comps.values())
        print(f"{model}: {total:,} parameters ({total * 2 / GIB:.1f} GiB in fp16, {total * 4 / GIB:.1f} GiB in fp32)")
        for name, n in comps.items():
            print(f"  {name:16s} {n:>15,}  ({n / 1e9:.3f} B)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("sdxl", "sd3", "both"), default="both")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (30; --tiny: 2)")
    p.add_argument("--size", type=int, default=None, help="image height = width in pixels (1024; --tiny: 64)")
    p.add_argument("--repeats", type=int, default=None, help="timed images per recipe (2; --tiny: 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed images first (compilation happens here)")
    p.add_argument("--recipes", default="all", help="comma list: names (fp16) or model/name (sdxl/recommended)")
    p.add_argument("--out", type=Path, default=None, help=f"JSON output (default {OUT}; --tiny: {TINY_OUT})")
    p.add_argument("--fresh", action="store_true", help="do not keep earlier records found in --out")
    p.add_argument(
        "--compile-mode",
        default="max-autotune-no-cudagraphs",
        help="torch.compile mode of the compile recipes (default max-autotune-no-cudagraphs; or reduce-overhead, ...)",
    )
    p.add_argument("--tiny", action="store_true", help="the same recipes with the tiny pipelines on the CPU (tests)")
    p.add_argument("--tiny-compile", action="store_true", help="--tiny: run the compile recipes too (slow)")
    p.add_argument("--tiny-dtypes", action="store_true", help="--tiny: fp16/bf16 recipes in their dtype (slow)")
    p.add_argument("--count-params", action="store_true", help="print the full-size parameter counts (no GPU) and exit")
    args = p.parse_args(argv)
    tiny = args.tiny
    args.steps = args.steps or (2 if tiny else 30)
    args.size = args.size or (64 if tiny else 1024)
    args.repeats = args.repeats or (1 if tiny else 2)
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--steps and --repeats must be >= 1, --warmup >= 0")
    factor = 4 if tiny else 16  # VAE factor x SD3's patch size
    if args.size <= 0 or args.size % factor:
        p.error(f"--size must be a positive multiple of {factor}")
    models = ["sdxl", "sd3"] if args.model == "both" else [args.model]
    try:
        args.selected = select_recipes(models, args.recipes)
    except ValueError as exc:
        p.error(str(exc))
    args.out = args.out or (TINY_OUT if tiny else OUT)
    if tiny and args.out.resolve() == OUT.resolve():
        p.error(f"--tiny never writes {OUT} (the measured results); pass another --out")
    return args


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """diffusers and transformers log a notice per cast and per CPU fp16 pipeline; keep errors only."""
    levels = diffusers.utils.logging.get_verbosity(), transformers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers.utils.logging.set_verbosity(levels[0])
        transformers.utils.logging.set_verbosity(levels[1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.count_params:
        with _quiet_libraries():
            print_parameter_counts()
        return 0
    if not args.tiny and not torch.cuda.is_available():
        print(
            "no CUDA GPU: nothing measured; run on a GPU machine (python benchmarks/gpu_pipelines.py, no download "
            f"needed). {args.out} was left as it is. (--tiny runs the recipe code on the CPU with tiny pipelines; "
            "--count-params prints the full-size parameter counts.)"
        )
        return 0
    device = "cpu" if args.tiny else "cuda"
    setup = setup_fields(args, device)
    where = f"{setup['gpu']} ({setup['gpu_memory_gib']} GiB)" if setup["gpu"] else "CPU, tiny pipelines"
    print(f"{where}: {args.size}x{args.size}, {args.steps} steps, {args.repeats} timed image(s) per recipe", flush=True)
    records = []
    with _quiet_libraries():
        for recipe in args.selected:
            print(f"{recipe.key}: {recipe.description} ...", flush=True)
            rec = {**run_recipe(recipe, args, device=device), "gpu": setup["gpu"], "date": setup["date"]}
            records.append(rec)
            detail = (
                f"{rec['seconds_per_image']:.3f} s/image, peak {_fmt(rec['peak_allocated_gib'], '.2f', ' GiB')}"
                if rec["status"] == "ok"
                else rec.get("message", "")
            )
            print(f"  {rec['status']}: {detail}", flush=True)
    records = merge_records(args.out, setup, records, args.fresh)
    targets = target_checks(records)
    if args.tiny:
        for t in targets.values():
            t["note"] = "tiny CPU run: checks the code paths only; the values say nothing about SDXL or SD3"
    write_json_atomic(
        args.out, {"benchmark": "benchmarks/gpu_pipelines.py", "setup": setup, "records": records, "targets": targets}
    )
    print_summary(records, targets)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
