"""Cost of one scheduler step, ours against diffusers', on this machine's CPU (and CUDA if present).

The pure-function design must not make sampling slower than the reference. This times ``step`` for DDPM and DDIM
(η = 0 and 1) on a Stable-Diffusion-sized latent batch (4, 4, 64, 64) and on an MNIST batch (256, 1, 28, 28),
median of many calls, and writes the figures to ``benchmarks/results/scheduler_step.json``.

    .venv/bin/python benchmarks/scheduler_step.py            # about 1 minute on 2 CPU cores
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import diffusion_lab as dl
from diffusion_lab.utils.checkpoint import write_json_atomic

OUT = Path(__file__).resolve().parent / "results" / "scheduler_step.json"


def time_steps(scheduler, shape, device, repeats: int, **step_kw) -> float:
    """Median seconds per ``step`` over all inference timesteps, ``repeats`` times."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(device)
    out = torch.randn(shape, generator=g).to(device)
    scheduler.set_timesteps(50, device=device)
    times = []
    for _ in range(repeats):
        for t in scheduler.timesteps:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            scheduler.step(out, t, x, generator=g if device.type == "cpu" else None, **step_kw)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    import diffusers

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    cases = [
        ("DDPM", dl.DDPMScheduler, diffusers.DDPMScheduler, {}),
        ("DDIM eta=0", dl.DDIMScheduler, diffusers.DDIMScheduler, {"eta": 0.0}),
        ("DDIM eta=1", dl.DDIMScheduler, diffusers.DDIMScheduler, {"eta": 1.0}),
    ]
    shapes = {"SD latents (4, 4, 64, 64)": (4, 4, 64, 64), "MNIST (256, 1, 28, 28)": (256, 1, 28, 28)}
    rows = []
    for device in devices:
        for shape_name, shape in shapes.items():
            for name, ours_cls, theirs_cls, kw in cases:
                ours = time_steps(ours_cls(), shape, device, repeats=3, **kw)
                theirs = time_steps(theirs_cls(), shape, device, repeats=3, **kw)
                rows.append(
                    {
                        "device": device.type,
                        "batch": shape_name,
                        "scheduler": name,
                        "ours_us": round(ours * 1e6, 1),
                        "diffusers_us": round(theirs * 1e6, 1),
                        "ratio": round(ours / theirs, 2),
                    }
                )
                print(
                    f"{device.type:4s} {shape_name:26s} {name:11s} ours {ours * 1e6:8.1f} µs   "
                    f"diffusers {theirs * 1e6:8.1f} µs   ratio {ours / theirs:.2f}"
                )
    result = {
        "what": "median time of one scheduler.step call (50 inference steps x 3 repeats)",
        "machine": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "cpu_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    write_json_atomic(OUT, result)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
