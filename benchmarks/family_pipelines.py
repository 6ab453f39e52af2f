"""Time and peak GPU memory of one call of each pipeline of the Stable Diffusion family beyond text-to-image.

What is measured
----------------
The four pipelines of ``diffusion_lab.bridge.family`` — ``StableDiffusionUpscalePipeline`` (x4 upscaler),
``StableDiffusionControlNetPipeline`` (SD 1.5 + canny ControlNet), ``StableUnCLIPImg2ImgPipeline`` (Stable unCLIP
2.1) and ``StableVideoDiffusionPipeline`` (SVD-XT) — loaded by ``family.load_family_pipeline``:

- **real weights** when ``bridge.check_environment()`` finds a CUDA GPU and the hub (and, for SVD, access to the
  gated repository): ``from_pretrained`` in the environment's dtype (bf16 on Ampere and later, fp16 before) with the
  fp16 files, placed by ``bridge.place`` (whole pipeline on a GPU of 24 GiB or more, ``enable_model_cpu_offload()``
  below); SVD on a small GPU also decodes 2 frames at a time (``decode_chunk_size``; 8 otherwise);
- **the tiny stand-ins** otherwise, or always with ``--tiny``: random weights, on the CPU. Their numbers say nothing
  about the real models; they exercise the code.

Each pipeline: ``--warmup`` untimed calls (default 1 on a GPU: cuDNN autotuning and lazy initialisation; 0 on the
CPU), then one timed call (``bridge.measure``: the GPU is synchronised before the clock stops, and
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` is the peak; on the CPU the peak is "n/a").
Inputs are ``family.toy_scene`` pictures (no download); the ControlNet gets their canny edges.

===============  ======================================================  ==========================================
pipeline         real call                                               tiny call
===============  ======================================================  ==========================================
x4 upscaler      128² → 512², 50 steps, guidance 9, noise_level 20       16² → 64², 2 steps
ControlNet       512², 30 steps, guidance 7.5                            32², 2 steps
unCLIP           768² (the UNet's size), 20 steps, guidance 10           32², 2 steps
SVD-XT           576×1024, 25 frames, 25 steps, decode_chunk_size 8/2    32², 4 frames, 2 steps
===============  ======================================================  ==========================================

``--steps`` overrides every step count; ``--only svd,sd21-unclip`` runs some. A pipeline that runs out of GPU memory
is recorded as ``"OOM"`` with the next memory knob to try, and the others still run.

Reproduce::

    .venv/bin/python benchmarks/family_pipelines.py            # GPU + hub: real weights; otherwise the stand-ins
    .venv/bin/python benchmarks/family_pipelines.py --tiny     # stand-ins on the CPU (seconds)

Results go to ``benchmarks/results/family_pipelines.json`` (``--out`` to change), written atomically, with the
machine, versions, what was loaded and why (``setup.environment``).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers

from diffusion_lab import bridge
from diffusion_lab.bridge import family
from diffusion_lab.utils.checkpoint import write_json_atomic

OUT = Path(__file__).resolve().parent / "results" / "family_pipelines.json"
KEYS = ("sd-x4-upscaler", "sd15-controlnet-canny", "sd21-unclip", "svd")
PROMPT = "a red fox in the snow, detailed photograph"


def call_kwargs(key: str, pipe, *, real: bool, steps: int | None, small_gpu: bool) -> dict[str, Any]:
    """The arguments of the one timed call (see the table in the module docstring)."""
    if key == "sd-x4-upscaler":
        side = 128 if real else 16
        return dict(
            prompt=PROMPT,
            image=family.toy_scene(side, side),
            num_inference_steps=steps or (50 if real else 2),
            guidance_scale=9.0,
            noise_level=20,
        )
    if key == "sd15-controlnet-canny":
        side = 512 if real else 32
        return dict(
            prompt=PROMPT,
            image=family.canny_edges(family.toy_scene(side, side)),
            num_inference_steps=steps or (30 if real else 2),
            guidance_scale=7.5,
        )
    if key == "sd21-unclip":
        return dict(
            image=family.toy_scene(768 if real else 32, 768 if real else 32),
            prompt=PROMPT,
            num_inference_steps=steps or (20 if real else 2),
            guidance_scale=10.0,
        )
    if key == "svd":
        height, width = (576, 1024) if real else (32, 32)
        frames = pipe.unet.config.num_frames
        family.check_num_frames(frames, pipe.unet)
        return dict(
            image=family.toy_scene(height, width),
            height=height,
            width=width,
            num_frames=frames,
            num_inference_steps=steps or (25 if real else 2),
            decode_chunk_size=(2 if small_gpu else 8) if real else 2,
            motion_bucket_id=127,
            fps=7,
            noise_aug_strength=0.02,
        )
    raise ValueError(f"unknown pipeline {key!r}; choose from {KEYS}")


def _output_shape(out) -> list[int]:
    """(frames or images, height, width, channels) of a PIL-output result."""
    if hasattr(out, "frames"):
        video = out.frames[0]
        return [len(video), video[0].height, video[0].width, 3]
    return [len(out.images), out.images[0].height, out.images[0].width, 3]


def _describe(kwargs: dict[str, Any]) -> dict[str, Any]:
    shown = {}
    for name, value in kwargs.items():
        if hasattr(value, "size") and hasattr(value, "mode"):  # a PIL image
            shown[name] = f"{value.width}x{value.height} {value.mode} image"
        elif name != "prompt":
            shown[name] = value
    return shown


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def run_one(key: str, env: bridge.Environment, args: argparse.Namespace) -> dict[str, Any]:
    """Load, place, warm up and time one pipeline. ``status``: ``ok``, ``OOM`` or ``error`` (with the message)."""
    card = bridge.MODELS[key]
    record: dict[str, Any] = {"pipeline": key, "class": card.pipeline_class.__name__, "repo_id": card.repo_id}
    pipe = None
    try:
        start = time.perf_counter()
        pipe = family.load_family_pipeline(key, env)
        real = not family.is_stand_in(pipe)
        if real:
            bridge.place(pipe, env)
        record["load_seconds"] = round(time.perf_counter() - start, 2)
        cuda = real and env.device == "cuda"
        placement = ("cpu offload" if env.small_gpu else "gpu") if cuda else "cpu"
        kwargs = call_kwargs(key, pipe, real=real, steps=args.steps, small_gpu=env.small_gpu)
        record.update(
            weights="real" if real else "tiny stand-in (random weights)",
            device="cuda" if cuda else "cpu",
            dtype=str(pipe.unet.dtype).removeprefix("torch."),
            placement=placement,
            parameters={
                n: bridge.count_parameters(m) for n, m in pipe.components.items() if isinstance(m, torch.nn.Module)
            },
            call=_describe(kwargs),
        )
        generator_device = "cuda" if cuda and placement == "gpu" else "cpu"

        def call():
            return pipe(**kwargs, generator=torch.Generator(generator_device).manual_seed(0))

        with bridge.suggest_on_oom(pipe):
            for _ in range(args.warmup if args.warmup is not None else (1 if cuda else 0)):
                call()
            out, m = bridge.measure(call)
        record.update(
            status="ok",
            seconds=round(m.seconds, 3),
            peak_allocated_gib=round(m.peak_gib, 3) if (cuda and m.peak_gib is not None) else "n/a",
            output_shape=_output_shape(out),
        )
    except torch.OutOfMemoryError as exc:
        record.update(status="OOM", message=str(exc)[:500])
    except Exception as exc:  # noqa: BLE001 - one failing pipeline must not stop the others
        record.update(
            status="error", message=f"{type(exc).__name__}: {exc}"[:500], traceback=traceback.format_exc()[-2000:]
        )
    finally:
        pipe = None  # let the weights go before the next pipeline loads
        _free()
    return record


def setup_fields(env: bridge.Environment, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "gpu": env.gpu_name,
        "gpu_memory_gib": round(env.gpu_memory_gib, 2) if env.gpu_memory_gib else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "forced_tiny": args.tiny,
        "environment": list(env.reasons),
        "steps_override": args.steps,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--tiny", action="store_true", help="the tiny stand-ins on the CPU, even where a GPU and the hub are"
    )
    p.add_argument("--out", type=Path, default=OUT, help=f"JSON output (default {OUT})")
    p.add_argument("--only", default=",".join(KEYS), help=f"comma list of pipelines (default all: {','.join(KEYS)})")
    p.add_argument("--steps", type=int, default=None, help="denoising steps for every pipeline (default: per table)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 1 on a GPU, 0 on the CPU)")
    args = p.parse_args(argv)
    args.keys = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = sorted(set(args.keys) - set(KEYS))
    if unknown or not args.keys:
        p.error(f"unknown pipeline(s) {unknown}; choose from {','.join(KEYS)}")
    if (args.steps is not None and args.steps < 1) or (args.warmup is not None and args.warmup < 0):
        p.error("--steps must be >= 1 and --warmup >= 0")
    return args


def _fmt(value, spec: str) -> str:
    return value if isinstance(value, str) else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tiny:
        env = bridge.Environment("cpu", None, None, False, None, False, ("--tiny: the stand-ins, by request",))
    else:
        env = bridge.check_environment()
    if env.device == "cpu":
        torch.set_num_threads(1)  # a CPU figure that does not depend on how busy the other cores are
    print(env, flush=True)
    records = []
    for key in args.keys:
        print(f"{key} ...", flush=True)
        with bridge.quiet_hf():
            rec = run_one(key, env, args)
        records.append(rec)
        print(f"  {rec['status']}: {rec.get('weights', '')} {rec.get('message', '')}", flush=True)
    tiny_only = all(r.get("weights", "").startswith("tiny") for r in records)
    write_json_atomic(
        args.out,
        {
            "benchmark": "benchmarks/family_pipelines.py",
            "setup": setup_fields(env, args),
            "note": (
                "tiny stand-ins on the CPU: the times exercise the code only and say nothing about the real models; "
                "peak GPU memory n/a. Run on a GPU with hub access for real figures."
            )
            if tiny_only
            else "real weights where weights == 'real'",
            "records": records,
        },
    )
    print(f"\n{'pipeline':24s} {'weights':32s} {'device':7s} {'seconds':>8s} {'peak GPU':>10s}  output")
    for r in records:
        print(
            f"{r['pipeline']:24s} {r.get('weights', '-'):32s} {r.get('device', '-'):7s} "
            f"{_fmt(r.get('seconds', '-'), '.3f'):>8s} {_fmt(r.get('peak_allocated_gib', '-'), '.2f'):>10s}  "
            f"{r.get('output_shape', r['status'])}"
        )
    print(f"wrote {args.out}")
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
