"""The shipped Stable Video Diffusion stand-in against the random tiny SVD, through the real
``StableVideoDiffusionPipeline`` call: MNIST test digits as first frames (centred, as PIL images), 4 frames at 32×32,
the call's defaults otherwise (fps 7, motion bucket 127, noise aug 0.02, frame-wise guidance 1 → 3).

    .venv/bin/python benchmarks/standin_svd.py      # ~2 minutes on the 2-core CPU; writes results/standin_svd.json

(a) identity: the share of generated frames the course's MNIST classifier reads as the first frame's digit (each frame
re-centred by its ink centroid first); (b) motion: the ink centroid's displacement from the first to the last frame,
x (right: the trained direction, 6 px in the training clips) and y, means with standard errors over n clips, and the
mean centroid x per frame. The same digits, seeds and call for both pipelines.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import diffusers
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffusion_lab.bridge import standin_svd as sv  # noqa: E402
from diffusion_lab.bridge.tiny import tiny_svd  # noqa: E402
from diffusion_lab.mnist.classifier import load_classifier  # noqa: E402
from diffusion_lab.mnist.data import load_mnist  # noqa: E402
from diffusion_lab.training.tiny_sd_io import pretrained_tiny_sd_path  # noqa: E402
from diffusion_lab.utils.checkpoint import write_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "standin_svd.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n", type=int, default=100, help="test digits, one clip each")
    p.add_argument("--steps", type=int, nargs="+", default=[10, 25], help="num_inference_steps")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    trained = diffusers.StableVideoDiffusionPipeline.from_pretrained(pretrained_tiny_sd_path("svd_mnist"))
    trained.set_progress_bar_config(disable=True)
    pipes = {"trained svd_mnist": trained, "random tiny_svd": tiny_svd(num_frames=4)}
    classifier = load_classifier()
    images, labels = load_mnist("test", limit=args.n)
    records = []
    for steps in args.steps:
        for name, pipe in pipes.items():
            t1 = time.perf_counter()
            r = sv.measure_motion(pipe, classifier, images, labels, num_inference_steps=steps)
            r.pop("frames")
            records.append({"pipeline": name, "num_inference_steps": steps, **r,
                            "seconds": round(time.perf_counter() - t1, 1)})  # fmt: skip
            print(records[-1], flush=True)
    out = {
        "what": __doc__.split("\n")[0].strip(),
        "data": f"MNIST test, first {args.n} digits, centred first frame",
        "call": {"height": sv.CANVAS, "width": sv.CANVAS, "num_frames": 4},
        "records": records,
        "threads": args.threads,
        "load_average": os.getloadavg(),
        "seconds": round(time.perf_counter() - t0, 1),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    write_json_atomic(RESULTS, out)
    print(json.dumps({"wrote": str(RESULTS), "seconds": out["seconds"]}))


if __name__ == "__main__":
    main()
