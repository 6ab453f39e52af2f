"""The real SDXL base + refiner and SD3 medium (with and without T5-XXL) at full size on the CPU: the notebooks'
real-path functions run once each, with time, peak RAM and any failure recorded.

Why
---
The unit tests drive tiny pipelines; what only the full-size models have — 70 cross-attention layers, real channel
counts, the VAE's 1024-px tile threshold, 2.6 B parameters going through a LoRA backward pass — is exercised here.
Every model is built from its published configuration (:mod:`diffusion_lab.bridge.full_size`) with random weights,
created directly in ``--dtype`` (bf16 by default: on a 23 GB machine SDXL base + refiner is 11.4 GB in bf16 and 23 GB
in fp32, SD3 medium with T5-XXL 15.3 GB in bf16; this CPU has AMX bf16 kernels, several times faster than fp32).
Random weights: the pictures are noise, but shapes, dtypes, thresholds, time and memory are the real ones.

One model family per subprocess (``sdxl``: base, refiner hand-off, attention maps, VAE tiling, one LoRA step;
``sd3``: with T5-XXL, then T5 dropped with ``from_pipe``; ``sd3-no-t5``: built without T5, then ``from_pipe`` without
``dtype=``), so that each family's peak RAM (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, monotone: the peak so far,
read after each function) is its own. Per function: seconds, steps and size, peak RAM so far, resident RAM after it,
``status`` ("ok" | "error" | "check failed") and the failure text.

Functions run (``--steps`` 2, ``--size`` 256 by default)
  build                    the family's pipeline(s) (random initialisation in the dtype, no fp32 copy)
  sdxl_generate            ``bridge.sdxl_generate`` (the hand-written loop, CFG 5, decode)
  pipe_call                ``pipe(prompt, ...)`` of diffusers
  refiner_handoff          base with ``denoising_end=0.8`` → latents → refiner (``StableDiffusionXLImg2ImgPipeline``,
                           aesthetic score, shared bigG and VAE) with ``denoising_start=0.8``; the timesteps each ran
  cross_attention_maps     notebook 10's recorder (an ``AttnProcessor`` adding softmax(QKᵀ/√d) of the conditional
                           half, mean over heads, to one running sum per resolution) on every ``attn2`` layer: layers,
                           maps, bytes kept and bytes had every map been kept
  vae_tiling               SDXL's VAE tiles only latents wider or taller than ``tile_latent_min_size`` = 128 (1024 px).
                           Decoded with ``bridge.decode_latents``: a 16x128 latent (128x1024 px: at the threshold, so
                           ``enable_tiling()`` must change nothing) and a 16x136 latent (128x1088 px: one pixel row of
                           latents over it in width, so it really tiles: 2 tiles of 128 latents, overlap 32), each
                           plain and tiled. A thin strip keeps the decoder cheap on the CPU while crossing the real
                           threshold; a 1152² image would tile too but costs ~20x more.
  lora_step                ``bridge.lora_sdxl.train_sdxl_lora(steps=1)`` (rank 4, gradient checkpointing, batch 1)
  sd3_generate             ``bridge.sd3_generate`` (CFG 7, flow-match Euler, T5 at 256 tokens)
  from_pipe_no_t5          ``StableDiffusion3Pipeline.from_pipe(pipe, text_encoder_3=None, tokenizer_3=None,
                           dtype=pipe.dtype)`` then a pipe call: the dtypes after it
  from_pipe_default_dtype  (``sd3-no-t5``) ``from_pipe(pipe)`` without ``dtype=``: what it does to the original
                           pipeline's dtype and to the RAM at full size

Reproduce (CPU, no download; minutes)::

    .venv/bin/python benchmarks/full_size_cpu.py                      # all families -> benchmarks/results/full_size_cpu.json
    .venv/bin/python benchmarks/full_size_cpu.py --families sdxl      # one family; other records are kept
    .venv/bin/python benchmarks/full_size_cpu.py --families sdxl --functions lora_step  # one function (+ the builds)

``--quick`` runs the very same code on the course's tiny pipelines (64x64, 2 steps; seconds) and writes to ``--out``
(default ``build/full_size_cpu_quick.json``, never the results file); ``--in-process`` runs the families in this
process (no clean peak RAM; for tests). Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from diffusers.models.attention_processor import AttnProcessor

from diffusion_lab import bridge
from diffusion_lab.bridge import full_size, lora_sdxl
from diffusion_lab.utils.checkpoint import write_json_atomic

OUT = Path(__file__).resolve().parent / "results" / "full_size_cpu.json"
QUICK_OUT = Path(__file__).resolve().parents[1] / "build" / "full_size_cpu_quick.json"
FAMILIES = ("sdxl", "sd3", "sd3-no-t5")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROMPT = "a photograph of an astronaut riding a horse on the moon, highly detailed"
HIGH_NOISE_FRAC = 0.8  # notebook 10's base/refiner split
GIB = 2**30


def peak_ram_gib() -> float:
    """Peak resident memory of this process so far (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def ram_now_gib() -> float | None:
    """Resident memory now (``/proc/self/statm``), or None where there is no /proc."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / GIB


class Recorder:
    """Runs each function once and appends its record: seconds, peak RAM so far, RAM after, status, failure text."""

    def __init__(
        self, family: str, steps: int, size: int, only: frozenset[str] | None = None, collect: bool = True
    ) -> None:
        self.family, self.steps, self.size, self.only, self.collect = family, steps, size, only, collect
        self.records: list[dict[str, Any]] = []

    def run(self, function: str, fn: Callable[[], dict[str, Any] | None], **meta: Any) -> dict[str, Any] | None:
        if self.only is not None and function not in self.only and not function.startswith("build"):
            return None  # --functions: the builds always run, the other functions only when named
        if self.collect:
            gc.collect()  # what the previous function left (0.5 s with diffusers imported: not in --quick)
        rec: dict[str, Any] = {"family": self.family, "function": function, "steps": self.steps, "size": self.size}
        rec.update(meta)
        rec["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        rec["ram_before_gib"] = ram_now_gib()
        start = time.perf_counter()
        out = None
        try:
            out = fn() or {}
            rec["status"] = "ok"
            rec.update(out)
        except AssertionError as exc:
            rec["status"], rec["error"] = "check failed", str(exc)
        except Exception as exc:  # a finding: recorded, and the next function still runs
            rec["status"], rec["error"] = "error", f"{type(exc).__name__}: {exc}"
            rec["traceback"] = traceback.format_exc(limit=-4).splitlines()[-12:]
        rec["seconds"] = round(time.perf_counter() - start, 3)
        rec["peak_ram_gib"] = round(peak_ram_gib(), 3)
        now = ram_now_gib()
        rec["ram_after_gib"] = None if now is None else round(now, 3)
        if rec["ram_before_gib"] is not None:
            rec["ram_before_gib"] = round(rec["ram_before_gib"], 3)
        self.records.append(rec)
        print(
            f"{self.family:10s} {function:24s} {rec['status']:12s} {rec['seconds']:8.1f} s  "
            f"peak {rec['peak_ram_gib']:6.2f} GiB  {rec.get('error', '')[:160]}",
            flush=True,
        )
        return out


# --- the pieces each family runs ------------------------------------------------------------------------------------


def _params(pipe) -> int:
    return sum(bridge.count_parameters(m) for m in pipe.components.values() if isinstance(m, torch.nn.Module))


def _dtypes(pipe) -> dict[str, str]:
    return {
        name: str(m.dtype).removeprefix("torch.")
        for name, m in pipe.components.items()
        if isinstance(m, torch.nn.Module) and hasattr(m, "dtype")
    }


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _finite_image(image) -> dict[str, Any]:
    """A PIL image's size, or a tensor's shape and whether it is finite (NaN pictures are a dtype finding)."""
    if isinstance(image, torch.Tensor):
        return {"output_shape": list(image.shape), "finite": bool(torch.isfinite(image).all())}
    return {"output_size": list(image.size)}


class RecordCrossAttention(AttnProcessor):
    """Notebook 10's recorder: add softmax(QKᵀ/√d) of the conditional half (mean over heads) to a running sum per
    resolution (N latent pixels), then compute the layer exactly as the standard processor."""

    def __init__(self, sums: dict[int, torch.Tensor], counts: dict[int, int]) -> None:
        super().__init__()
        self.sums, self.counts = sums, counts

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (B·heads, N, d)
        k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))  # (B·heads, 77, d)
        probs = attn.get_attention_scores(q, k, None)  # (B·heads, N, 77)
        cond = probs.unflatten(0, (hidden_states.shape[0], attn.heads))[-1].mean(0).float()  # (N, 77)
        n = cond.shape[0]
        self.sums[n] = self.sums[n] + cond if n in self.sums else cond
        self.counts[n] = self.counts.get(n, 0) + 1
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def cross_attention_maps(pipe, steps: int, size: int) -> dict[str, Any]:
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    original = pipe.unet.attn_processors
    layers = sum(name.endswith("attn2.processor") for name in original)
    pipe.unet.set_attn_processor(
        {name: RecordCrossAttention(sums, counts) if "attn2" in name else proc for name, proc in original.items()}
    )
    try:
        pipe(PROMPT, num_inference_steps=steps, height=size, width=size, generator=_generator(), output_type="latent")
    finally:
        pipe.unet.set_attn_processor(original)
    maps = sum(counts.values())
    assert maps == layers * steps, f"{maps} maps recorded for {layers} attn2 layers x {steps} steps"
    worst = max(((s / counts[n]).sum(-1) - 1).abs().max().item() for n, s in sums.items())
    assert worst < 2e-2, f"attention rows must sum to 1 over the tokens (worst |Σ − 1| = {worst:.1e})"
    kept = sum(s.numel() * s.element_size() for s in sums.values())
    every = sum(counts[n] * n * 77 * 4 for n in sums)  # had each (N, 77) fp32 map been kept
    return {
        "attn2_layers": layers,
        "maps": maps,
        "map_shapes": sorted((n, 77) for n in sums),
        "kept_bytes": kept,
        "every_map_bytes": every,
        # maps are (N, 77) with N ∝ pixels: at 1024² and 30 steps the running sums and the list of every map take
        "kept_gib_at_1024px": round(kept * (1024 / size) ** 2 / GIB, 4),
        "every_map_gib_at_1024px_30_steps": round(every * (1024 / size) ** 2 * 30 / steps / GIB, 3),
    }


def vae_tiling(vae) -> dict[str, Any]:
    """Decode a latent at the tile threshold and one just over it, plain and with ``enable_tiling()``."""
    tile = vae.tile_latent_min_size  # SDXL: sample_size 1024 / 2**3 = 128 latent pixels
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    c = vae.config.latent_channels
    out: dict[str, Any] = {"tile_latent_min_size": tile, "tile_px": tile * f}
    for label, width in (("at_threshold", tile), ("over_threshold", tile + max(tile // 16, 1))):
        z = torch.randn(1, c, max(tile // 8, 1), width, generator=_generator(1)).to(vae.device, vae.dtype)
        t0 = time.perf_counter()
        plain = bridge.decode_latents(vae, z)
        t1 = time.perf_counter()
        vae.enable_tiling()
        try:
            tiled = bridge.decode_latents(vae, z)
        finally:
            vae.disable_tiling()
        t2 = time.perf_counter()
        diff = (tiled.float() - plain.float()).abs().mean().item()
        out[label] = {
            "latent": list(z.shape),
            "pixels": list(plain.shape[-2:]),
            "mean_abs_change_from_tiling": diff,
            "plain_seconds": round(t1 - t0, 3),
            "tiled_seconds": round(t2 - t1, 3),
        }
    assert out["at_threshold"]["mean_abs_change_from_tiling"] == 0.0, "at the threshold tiling must change nothing"
    assert out["over_threshold"]["mean_abs_change_from_tiling"] > 0.0, "over the threshold the decode must tile"
    return out


def refiner_handoff(base, refiner, steps: int, size: int) -> dict[str, Any]:
    ran: dict[str, list[int]] = {"base": [], "refiner": []}

    def recorder(name: str):
        def callback(p, i, t, kw):
            ran[name].append(int(t))
            return kw

        return callback

    latents = base(
        PROMPT,
        num_inference_steps=steps,
        denoising_end=HIGH_NOISE_FRAC,
        output_type="latent",
        height=size,
        width=size,
        generator=_generator(),
        callback_on_step_end=recorder("base"),
    ).images
    refined = refiner(
        PROMPT,
        image=latents,
        num_inference_steps=steps,
        denoising_start=HIGH_NOISE_FRAC,
        generator=_generator(),
        callback_on_step_end=recorder("refiner"),
        output_type="pt",
    ).images
    base.scheduler.set_timesteps(steps)
    schedule = [int(t) for t in base.scheduler.timesteps]
    assert ran["base"] + ran["refiner"] == schedule, f"base {ran['base']} + refiner {ran['refiner']} != {schedule}"
    assert ran["base"] and ran["refiner"], f"each must run at least one step: {ran}"
    return {
        "timesteps": ran,
        "latents_dtype": str(latents.dtype).removeprefix("torch."),
        "refiner_unet_dtype": str(refiner.unet.dtype).removeprefix("torch."),
        **_finite_image(refined),
    }


def lora_step(pipe, size: int) -> dict[str, Any]:
    images = torch.rand(1, 3, size, size, generator=_generator(2)) * 2 - 1  # (1, 3, H, W) in [-1, 1]
    losses = lora_sdxl.train_sdxl_lora(
        pipe,
        images,
        "a photo of sks dog",
        steps=1,
        rank=4,
        gradient_accumulation_steps=1,
        gradient_checkpointing=True,
        use_8bit_adam=False,
        progress=False,
    )
    lora = [p for n, p in pipe.unet.named_parameters() if ".lora_" in n]
    assert all(torch.isfinite(torch.tensor(x)) for x in losses), f"loss not finite: {losses}"
    return {
        "losses": losses,
        "lora_parameters": sum(p.numel() for p in lora),
        "lora_dtype": str(lora[0].dtype).removeprefix("torch."),
    }


# --- families -------------------------------------------------------------------------------------------------------


def _build(model: str, quick: bool, dtype: torch.dtype, with_t5: bool = True, base=None):
    if not quick:
        return full_size.full_pipeline(model, device="cpu", dtype=dtype, with_t5=with_t5, base=base)
    if model == "sdxl":
        pipe = bridge.tiny_sdxl()
    elif model == "sdxl-refiner":
        pipe = bridge.tiny_sdxl_refiner(base)
    else:
        pipe = bridge.tiny_sd3(with_t5=with_t5)
    with bridge.quiet_hf():  # .to(dtype) logs an empty "kept in float32" list
        return pipe.to(dtype=dtype)


def run_sdxl(rec: Recorder, quick: bool, dtype: torch.dtype) -> None:
    steps, size = rec.steps, rec.size
    box: dict[str, Any] = {}

    def build_base():
        box["base"] = _build("sdxl", quick, dtype)
        return {"parameters": _params(box["base"]), "dtypes": _dtypes(box["base"])}

    rec.run("build", build_base, model="sdxl-base")
    base = box.get("base")
    if base is None:
        return
    gen = dict(num_inference_steps=steps, height=size, width=size, generator=_generator())
    rec.run("sdxl_generate", lambda: _finite_image(bridge.sdxl_generate(base, PROMPT, output_type="pt", **gen)))
    rec.run("pipe_call", lambda: _finite_image(base(PROMPT, output_type="pt", **gen).images))

    def build_refiner():
        box["refiner"] = _build("sdxl-refiner", quick, dtype, base=base)
        return {"parameters_own": bridge.count_parameters(box["refiner"].unet), "dtypes": _dtypes(box["refiner"])}

    rec.run("build_refiner", build_refiner, model="sdxl-refiner (shares bigG and the VAE)")
    if "refiner" in box:
        rec.run("refiner_handoff", lambda: refiner_handoff(base, box["refiner"], steps, size), split=HIGH_NOISE_FRAC)
        box.pop("refiner")
        gc.collect()
    rec.run("cross_attention_maps", lambda: cross_attention_maps(base, steps, size))
    rec.run("vae_tiling", lambda: vae_tiling(base.vae), steps=None, size=None)
    rec.run("lora_step", lambda: lora_step(base, size), steps=1)


def run_sd3(rec: Recorder, quick: bool, dtype: torch.dtype, with_t5: bool) -> None:
    steps, size = rec.steps, rec.size
    box: dict[str, Any] = {}

    def build():
        box["pipe"] = _build("sd3", quick, dtype, with_t5=with_t5)
        return {"parameters": _params(box["pipe"]), "dtypes": _dtypes(box["pipe"])}

    rec.run("build", build, model="sd3-medium" + ("" if with_t5 else " without T5"))
    pipe = box.get("pipe")
    if pipe is None:
        return
    gen = dict(num_inference_steps=steps, height=size, width=size, generator=_generator())
    rec.run("sd3_generate", lambda: _finite_image(bridge.sd3_generate(pipe, PROMPT, output_type="pt", **gen)))
    rec.run("pipe_call", lambda: _finite_image(pipe(PROMPT, output_type="pt", **gen).images))
    if with_t5:

        def no_t5():
            with bridge.quiet_hf():
                p = diffusers.StableDiffusion3Pipeline.from_pipe(
                    pipe, text_encoder_3=None, tokenizer_3=None, dtype=pipe.transformer.dtype
                )
            p.set_progress_bar_config(disable=True)
            out = _finite_image(p(PROMPT, output_type="pt", **gen).images)
            assert p.transformer.dtype == pipe.text_encoder_3.dtype == dtype, (
                f"from_pipe(dtype=...) changed dtypes: {_dtypes(p)}, T5 {pipe.text_encoder_3.dtype}"
            )
            return {**out, "dtypes_after": _dtypes(p)}

        rec.run("from_pipe_no_t5", no_t5)
        return

    def default_dtype():
        with bridge.quiet_hf():
            p = diffusers.StableDiffusion3Pipeline.from_pipe(pipe)
        return {
            "dtypes_new_pipeline": _dtypes(p),
            "dtypes_original_after": _dtypes(pipe),
            "converted_to_fp32": pipe.transformer.dtype == torch.float32 != dtype,
        }

    rec.run("from_pipe_default_dtype", default_dtype, steps=None, size=None)


def run_family(
    family: str, quick: bool, dtype: torch.dtype, steps: int, size: int, only: frozenset[str] | None = None
) -> list[dict[str, Any]]:
    rec = Recorder(family, steps, size, only, collect=not quick)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: diffusers' fp16/"not finite" notes would drown the log
        if family == "sdxl":
            run_sdxl(rec, quick, dtype)
        else:
            run_sd3(rec, quick, dtype, with_t5=family == "sd3")
    return rec.records


# --- driver ---------------------------------------------------------------------------------------------------------


def _child(argv: list[str]) -> int:
    """``--child FAMILY OUT.json QUICK DTYPE STEPS SIZE [FUNCTIONS]``: run one family in this (fresh) process and
    write its records."""
    family, out, quick, dtype, steps, size = argv[0], Path(argv[1]), argv[2] == "1", argv[3], int(argv[4]), int(argv[5])
    only = frozenset(argv[6].split(",")) if len(argv) > 6 else None
    records = run_family(family, quick, DTYPES[dtype], steps, size, only)
    out.write_text(json.dumps(records, default=str))
    return 0


def _in_subprocess(family: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "records.json"
        cmd = [sys.executable, __file__, "--child", family, str(out), "1" if args.quick else "0", args.dtype]
        cmd += [str(args.steps), str(args.size)] + ([",".join(sorted(args.functions))] if args.functions else [])
        proc = subprocess.run(cmd, check=False)
        if out.exists():
            return json.loads(out.read_text())
        return [
            {
                "family": family,
                "function": "subprocess",
                "status": "error",
                "error": f"exit code {proc.returncode} (killed for memory if -9)",
            }
        ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma list of {', '.join(FAMILIES)}")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (2: the refiner hand-off needs 2)")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (256; --quick: 64)")
    p.add_argument("--out", type=Path, default=None, help=f"JSON output (default {OUT}; --quick: {QUICK_OUT})")
    p.add_argument("--quick", action="store_true", help="the same code on the tiny pipelines (seconds; tests)")
    p.add_argument("--functions", default=None, help="comma list: run only these (the builds always run)")
    p.add_argument("--in-process", action="store_true", help="run the families in this process (no clean peak RAM)")
    args = p.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown or not families:
        p.error(f"--families: unknown {unknown}; choose from {', '.join(FAMILIES)}")
    args.families = families
    args.functions = frozenset(f.strip() for f in args.functions.split(",") if f.strip()) if args.functions else None
    args.steps = args.steps or 2
    args.size = args.size or (64 if args.quick else 256)
    args.out = args.out or (QUICK_OUT if args.quick else OUT)
    if args.quick and args.out.resolve() == OUT.resolve():
        p.error("--quick never writes the measured results file: pass another --out")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    args = parse_args(argv)
    records: list[dict[str, Any]] = []
    for family in args.families:
        if args.in_process:
            records += run_family(family, args.quick, DTYPES[args.dtype], args.steps, args.size, args.functions)
        else:
            records += _in_subprocess(family, args)
    earlier: dict[str, Any] = {}
    if args.out.exists():
        try:
            earlier = json.loads(args.out.read_text())
        except ValueError:
            earlier = {}
    ran = {(r.get("family"), r.get("function")) for r in records}  # a rerun replaces only what it ran
    kept = [
        r for r in earlier.get("records", []) if isinstance(r, dict) and (r.get("family"), r.get("function")) not in ran
    ]
    families = {k: v for k, v in (earlier.get("families") or {}).items() if k not in args.families}
    for family in args.families:  # what each family ran under (the cores are shared: the load average says how much)
        families[family] = {
            "dtype": args.dtype,
            "steps": args.steps,
            "size": args.size,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        }
    setup = {
        "quick": args.quick,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "note": "random weights at the published full-size shapes; one family per subprocess, so a family's "
        "peak_ram_gib (ru_maxrss, the peak so far after each function) is its own",
    }
    write_json_atomic(
        args.out,
        {"benchmark": "benchmarks/full_size_cpu.py", "setup": setup, "families": families, "records": kept + records},
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
