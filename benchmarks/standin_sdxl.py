"""What the shipped SDXL stand-ins trained on MNIST do, measured through the real diffusers pipeline calls.

Loads ``data/pretrained/sdxl_mnist`` (``StableDiffusionXLPipeline``) and ``data/pretrained/sdxl_refiner_mnist``
(``StableDiffusionXLImg2ImgPipeline``) with ``bridge.load_pipeline(key, env, standin="trained")`` and measures, with
the call the notebooks use (32², 20 Euler steps, guidance 5; :data:`~diffusion_lab.bridge.standin_sdxl_eval.CALL`):

- **digit adherence** of ``pipe("a three", ...)`` etc. (n samples over the 10 digits), FID-MNIST and its floor,
  at guidance w = 5 and w = 1 (no guidance: classifier-free guidance matters);
- **crop conditioning**: the ink centroid at ``crops_coords_top_left`` = (0, 0), (4, 4), (8, 8), and along one axis
  at a time: the slope in pixels per crop unit (SDXL's semantics predict −1: the content moves up/left);
- **original size**: sharpness (solid-ink fraction) and adherence at ``original_size`` = 8², 16², 32²;
- **the refiner**: notebook 10's hand-off (base ``denoising_end=0.8`` → latents → refiner ``denoising_start=0.8``)
  against the base alone for all 20 steps, same prompts and seeds: adherence, FID-MNIST, sharpness; and the
  refiner's aesthetic score 2.5 against 6;
- **attributes**: attribute adherence of "a thick three" etc. for each caption word (0.5 = chance), and
  ``negative_prompt="thick"`` against none (stroke thickness in pixels).

Reproduce::

    .venv/bin/python benchmarks/standin_sdxl.py              # n = 200 and 60 per behaviour setting; a few minutes

Results go to ``benchmarks/results/standin_sdxl.json`` (``--out`` to change), written atomically, with the machine's
load average, thread count, seconds and versions.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import diffusers  # noqa: E402

from diffusion_lab import bridge  # noqa: E402
from diffusion_lab.bridge.standin_sdxl_eval import measure_standins  # noqa: E402
from diffusion_lab.mnist.captions import AttributeBins  # noqa: E402
from diffusion_lab.mnist.classifier import load_classifier  # noqa: E402
from diffusion_lab.training.tiny_sd_io import BINS_FILE  # noqa: E402
from diffusion_lab.utils.checkpoint import write_json_atomic  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "standin_sdxl.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--n-behaviour", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = bridge.Environment("cpu", None, None, False, None, False, ("benchmark: the shipped stand-ins",))
    with contextlib.redirect_stdout(io.StringIO()):
        base = bridge.load_pipeline("sdxl-base", env, standin="trained")
        refiner = bridge.load_pipeline("sdxl-refiner", env, standin="trained")
    load_before, t0 = os.getloadavg(), time.perf_counter()
    bins = AttributeBins.from_dict(json.loads((bridge.trained_standin_path("sdxl-base") / BINS_FILE).read_text()))
    results = measure_standins(base, refiner, load_classifier(), args.n, args.n_behaviour, bins=bins)
    record = {
        "what": "SDXL base + refiner stand-ins trained on MNIST, through the real pipeline calls",
        "script": "python benchmarks/standin_sdxl.py",
        "folders": ["data/pretrained/sdxl_mnist", "data/pretrained/sdxl_refiner_mnist"],
        "seconds": round(time.perf_counter() - t0, 1),
        "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()},
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "results": results,
    }
    write_json_atomic(args.out, record)
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
