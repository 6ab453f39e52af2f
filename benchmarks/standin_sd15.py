"""The shipped SD 1.5 stand-ins, measured through the real pipeline calls: digit adherence of the base
``StableDiffusionPipeline`` and edge F1 of the ``StableDiffusionControlNetPipeline`` against the base on the same
prompts and noise (the ControlNet given the edges of MNIST test digits).

    .venv/bin/python benchmarks/standin_sd15.py      # ~2 minutes on the 2-core CPU; writes results/standin_sd15.json

Digit adherence: prompts "a zero" … "a nine", n/10 each, judged by the course's MNIST classifier. Edge F1
(``maths.images.edge_f1``, 1-pixel tolerance): edges (``maths.images.edge_map``) of each generated digit against
the control edges; the base gets the same prompt "a ⟨digit⟩" and the same starting noise but no edges; at 1 pixel and
exactly (0), with a real test digit of the same class as the reference. Each mean comes with its standard error, and
the paired difference with its own. The x4 upscaler (if shipped): 8×8 block means of test digits → 32×32, against
bicubic interpolation: PSNR against the true digit and the classifier's accuracy, with an empty prompt and with
"a ⟨digit⟩".
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

from diffusion_lab.bridge import standin_sd15 as sd  # noqa: E402
from diffusion_lab.bridge import standin_upscaler as up  # noqa: E402
from diffusion_lab.mnist.classifier import load_classifier  # noqa: E402
from diffusion_lab.mnist.data import load_mnist  # noqa: E402
from diffusion_lab.training.tiny_sd_io import pretrained_tiny_sd_path  # noqa: E402
from diffusion_lab.utils.checkpoint import write_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "standin_sd15.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n", type=int, default=200, help="prompts for digit adherence")
    p.add_argument("--edge-n", type=int, default=100, help="test digits for edge F1")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, nargs="+", default=[2.0, 4.0])
    p.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0], help="controlnet_conditioning_scale")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    base = diffusers.StableDiffusionPipeline.from_pretrained(pretrained_tiny_sd_path("sd15_mnist"))
    controlled = diffusers.StableDiffusionControlNetPipeline.from_pretrained(
        pretrained_tiny_sd_path("sd15_controlnet_mnist")
    )
    for pipe in (base, controlled):
        pipe.set_progress_bar_config(disable=True)
    classifier = load_classifier()
    records = []
    for w in args.guidance:
        call = {"num_inference_steps": args.steps, "guidance_scale": w}
        a = sd.measure_adherence(base, classifier, n=args.n, **call)
        records.append({"measure": "digit_adherence", "pipeline": "StableDiffusionPipeline", **call, **a})
        print(records[-1], flush=True)
        images, labels = load_mnist("test", limit=args.edge_n)
        for scale in args.scales:
            f1 = sd.edge_f1_comparison(base, controlled, images, labels, controlnet_conditioning_scale=scale, **call)
            f1.pop("images")
            records.append({"measure": "edge_f1", "controlnet_conditioning_scale": scale, **call, **f1})
            print(records[-1], flush=True)
    upscaler_dir = pretrained_tiny_sd_path("sd_x4_upscaler_mnist")
    if (upscaler_dir / "model_index.json").exists():  # the x4 upscaler against bicubic, with and without a prompt
        upscaler = diffusers.StableDiffusionUpscalePipeline.from_pretrained(upscaler_dir)
        upscaler.set_progress_bar_config(disable=True)
        images, labels = load_mnist("test", limit=args.n)
        for with_prompt in (False, True):
            r = up.measure_upscaler(
                upscaler, classifier, images, labels, with_prompt=with_prompt, num_inference_steps=args.steps,
                guidance_scale=4.0, noise_level=20,
            )  # fmt: skip
            r.pop("images")
            records.append({"measure": "x4_upscaler_vs_bicubic", **r})
            print(records[-1], flush=True)
    out = {
        "what": __doc__.split("\n")[0],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "threads": args.threads,
        "load_average": os.getloadavg(),
        "seconds": round(time.perf_counter() - t0, 1),
        "canvas": [sd.CANVAS, sd.CANVAS],
        "records": records,
    }
    write_json_atomic(RESULTS, out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
