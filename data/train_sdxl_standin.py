"""Train the SDXL base and refiner stand-ins on MNIST and write ``data/pretrained/sdxl_mnist`` and
``data/pretrained/sdxl_refiner_mnist`` (the folders ``bridge.load_pipeline("sdxl-base" | "sdxl-refiner", env,
standin="trained")`` loads).

    python data/train_sdxl_standin.py   # the shipped recipe: VAE 600, base 1,800, refiner 500 steps

The shipped run took 1,270 s of training (VAE 239 s, base UNet 803 s, refiner UNet 193 s) plus 157 s of measuring, on
the shared 2-core CPU with a load average of 8-9 (three other trainings running), one thread; about 0.33 s per UNet
step of batch 64 when the load was lower (recipe.json records the seconds, step counts and load).

Each folder is a complete diffusers pipeline (``save_pretrained``, safetensors only) plus ``recipe.json`` (the
configuration, every step count, the seconds each phase took with the machine's load average, the measured quality)
and ``caption_bins.json`` (the course's attribute bins the captions were cut with). Each is written into a temporary
sibling folder and swapped into place whole. The recipe and the reasons for it are in
:mod:`diffusion_lab.bridge.standin_sdxl`; the measurements in :mod:`diffusion_lab.bridge.standin_sdxl_eval`.

One torch thread by default: on the course's shared 2-core machines, with other processes busy, a UNet step took
0.46 s with one thread and 2.1 s with two (OpenMP threads waiting on each other); ``--threads 2`` on an idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without `pip install -e .`

import diffusers  # noqa: E402

from diffusion_lab.bridge.hub import quiet_hf  # noqa: E402
from diffusion_lab.bridge.standin_sdxl import SDXLStandinConfig, train_sdxl_standin  # noqa: E402
from diffusion_lab.bridge.standin_sdxl_eval import measure_standins  # noqa: E402
from diffusion_lab.mnist.classifier import load_classifier  # noqa: E402
from diffusion_lab.training.tiny_sd_io import BINS_FILE  # noqa: E402
from diffusion_lab.utils.checkpoint import swap_folder, temp_sibling, write_json_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parent / "pretrained"


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def save(pipe, folder: Path, recipe: dict, bins) -> None:
    """``save_pretrained`` (safetensors) + caption bins + recipe into a temporary sibling, then swapped in whole."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(folder)
    with quiet_hf():
        pipe.save_pretrained(tmp, safe_serialization=True)
    write_json_atomic(tmp / BINS_FILE, bins.to_dict())
    recipe = recipe | {"folder_bytes": _folder_bytes(tmp)}
    write_json_atomic(tmp / "recipe.json", recipe)
    swap_folder(tmp, folder)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT, help="folder that receives sdxl_mnist and sdxl_refiner_mnist")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n", type=int, default=200, help="samples for adherence, FID and the refiner")
    ap.add_argument("--n-behaviour", type=int, default=60, help="samples per setting for crop / size effects")
    for f in dataclasses.fields(SDXLStandinConfig):
        kind = (lambda v: v.lower() in ("1", "true", "yes")) if isinstance(f.default, bool) else type(f.default)
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(SDXLStandinConfig)}
    cfg = SDXLStandinConfig(**{k: v for k, v in overrides.items() if v is not None})
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    base, refiner, bins, figures = train_sdxl_standin(cfg, log=lambda m: print(f"{time.perf_counter() - t0:6.0f} s  {m}",
                                                                              flush=True))  # fmt: skip
    train_seconds = time.perf_counter() - t0
    load_after = os.getloadavg()
    t1 = time.perf_counter()
    quality = measure_standins(base, refiner, load_classifier(), args.n, args.n_behaviour)
    quality["measure_seconds"] = round(time.perf_counter() - t1, 1)
    print(json.dumps(quality, indent=1), flush=True)
    recipe = {
        "what": "SDXL base + refiner stand-ins of the real diffusers classes trained on MNIST "
        "(diffusion_lab.bridge.standin_sdxl.train_sdxl_standin)",
        "script": "python data/train_sdxl_standin.py",
        "config": dataclasses.asdict(cfg),
        "steps": {"vae": cfg.vae_steps, "base_unet": cfg.base_steps, "refiner_unet": cfg.refiner_steps},
        "training_seconds": {k: round(v, 1) for k, v in figures.items() if k.endswith("_seconds")}
        | {"total": round(train_seconds, 1)},
        "final_losses": {k: round(v, 5) for k, v in figures.items() if k.endswith("_loss")},
        "aesthetic_score_mean_of_training_canvases": round(figures["aesthetic_score_mean"], 3),
        "load_average_1_5_15": {"before": load_before, "after": load_after},
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "parameters": {
            "vae": _params(base.vae),
            "text_encoder": _params(base.text_encoder),
            "text_encoder_2": _params(base.text_encoder_2),
            "unet": _params(base.unet),
            "refiner_unet": _params(refiner.unet),
        },
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quality": quality,
    }
    save(base, args.out / "sdxl_mnist", recipe | {"pipeline": "StableDiffusionXLPipeline"}, bins)
    save(refiner, args.out / "sdxl_refiner_mnist", recipe | {"pipeline": "StableDiffusionXLImg2ImgPipeline"}, bins)
    print(f"wrote {args.out / 'sdxl_mnist'} and {args.out / 'sdxl_refiner_mnist'} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
