"""Train the Stable Video Diffusion stand-in on clips of moving MNIST digits and write it to ``data/pretrained``.

    python data/train_svd_standin.py            # ~15 minutes on a shared 2-core CPU (load 5-7, one thread), offline
    python data/train_svd_standin.py --quick    # a few steps of everything, into build/ (a smoke test)

The real diffusers classes at toy size (:mod:`diffusion_lab.bridge.standin_svd`), fixed step counts
(:class:`~diffusion_lab.bridge.standin_svd.SvdStandinConfig`). Writes ``data/pretrained/svd_mnist/`` atomically (a
temporary sibling folder renamed into place): a ``StableVideoDiffusionPipeline`` (``save_pretrained``, safetensors)
and ``recipe.json`` (configuration, step counts, seconds, load average, and the measured motion and digit
identity through ``pipe(image, ...)`` on MNIST test digits).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import diffusers
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without `pip install -e .`

from diffusion_lab.bridge import standin_svd as sv  # noqa: E402
from diffusion_lab.mnist.classifier import load_classifier  # noqa: E402
from diffusion_lab.mnist.data import load_mnist  # noqa: E402
from diffusion_lab.utils.checkpoint import swap_folder, temp_sibling, write_json_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CALL = {"num_inference_steps": 10}  # the call measured (fps 7, motion bucket 127, noise aug 0.02, guidance 1 → 3)


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a few steps of everything, written under build/")
    p.add_argument("--out", type=Path, default=None, help="the pipeline folder (default data/pretrained/svd_mnist)")
    p.add_argument("--eval-n", type=int, default=100, help="MNIST test digits (one clip each) for the measurement")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="config fields (numbers) to change")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    changes = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    cfg = sv.SvdStandinConfig(**changes)
    if args.quick:
        cfg = sv.SvdStandinConfig(**{**changes, "num_images": 64, "vae_steps": 3, "steps": 3})
        args.eval_n = 10
    out = args.out or (ROOT / ("build/standin_svd_quick/svd_mnist" if args.quick else "data/pretrained/svd_mnist"))
    images, _ = load_mnist("train", limit=cfg.num_images)

    load0, t0 = os.getloadavg(), time.perf_counter()
    pipe, info = sv.train_svd_standin(cfg, images=images, progress=True)
    seconds, load1 = time.perf_counter() - t0, os.getloadavg()
    print(f"trained in {seconds:.0f} s (load {load0} -> {load1})", flush=True)

    t1 = time.perf_counter()
    test_images, test_labels = load_mnist("test", limit=args.eval_n)
    motion = sv.measure_motion(pipe, load_classifier(), test_images, test_labels, step_px=cfg.step_px, **CALL)
    motion.pop("frames")
    motion["seconds"] = round(time.perf_counter() - t1, 1)
    print(json.dumps(motion, indent=1), flush=True)

    recipe = {
        "pipeline": "StableVideoDiffusionPipeline",
        "machine": {
            "threads": args.threads, "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
        "data": f"MNIST train, first {cfg.num_images} images (data/mnist.npz), one clip each: the digit on a 32x32 "
        f"canvas moving right {cfg.step_px} px per frame over {cfg.num_frames} frames, starting offset drawn from "
        f"{list(cfg.start_offsets)} px",
        "config": cfg.to_dict(),
        "training": {
            "vae_steps": cfg.vae_steps, "vae_seconds": round(info["vae_seconds"], 1),
            "encode_seconds": round(info["encode_seconds"], 1), "unet_steps": cfg.steps,
            "unet_seconds": round(info["unet_seconds"], 1), "total_seconds": round(seconds, 1),
            "load_average_before": load0, "load_average_after": load1, "vae_recon_mse": info["vae_recon"],
            "final_loss": info["final_loss"], "scaling_factor": info["scaling_factor"],
        },
        "parameters": info["parameters"],
        "call": {"height": sv.CANVAS, "width": sv.CANVAS, "num_frames": cfg.num_frames, **CALL,
                 "defaults": "fps=7, motion_bucket_id=127, noise_aug_strength=0.02, min/max_guidance_scale=1/3"},
        "measured": {"motion_and_identity": {**motion, "data": f"MNIST test, first {args.eval_n}, centred first frame"}},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    pipe.save_pretrained(tmp, safe_serialization=True)
    recipe["folder_bytes"] = _folder_bytes(tmp)
    write_json_atomic(tmp / "recipe.json", recipe)
    swap_folder(tmp, out)
    print(f"wrote {out} ({recipe['folder_bytes'] / 1e6:.2f} MB)", flush=True)


if __name__ == "__main__":
    main()
