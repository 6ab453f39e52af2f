"""Train the SD 1.5 and SD 1.5 + canny ControlNet stand-ins on MNIST and write them to ``data/pretrained``.

    python data/train_sd15_standin.py            # ~10 minutes on a shared 2-core CPU (one thread), offline
    python data/train_sd15_standin.py --quick    # a few steps of everything, into build/ (a smoke test)
    python data/train_sd15_standin.py --upscaler # the x4 upscaler on the shipped sd15_mnist (~5 minutes)

The real diffusers classes at toy size (:mod:`diffusion_lab.bridge.standin_sd15`), fixed step counts
(:class:`~diffusion_lab.bridge.standin_sd15.Sd15StandinConfig`). Writes, each atomically (a temporary sibling folder
renamed into place):

- ``data/pretrained/sd15_mnist/``: a ``StableDiffusionPipeline`` (``save_pretrained``, safetensors), its caption bins
  (``caption_bins.json``) and ``recipe.json`` (configuration, step counts, seconds, load average, measured digit
  adherence through ``pipe(...)``);
- ``data/pretrained/sd15_controlnet_mnist/``: the ``StableDiffusionControlNetPipeline`` (the same base plus the
  trained ``ControlNetModel``), caption bins and ``recipe.json`` (with the measured edge F1 against the base);
- with ``--upscaler``: ``data/pretrained/sd_x4_upscaler_mnist/``, a ``StableDiffusionUpscalePipeline`` (8×8 → 32×32)
  and ``recipe.json`` (PSNR and classifier accuracy against bicubic).

One torch thread by default: on the shared 2-core machine (load 5-6 from other jobs) a UNet step took 0.16 s with
one thread and 2.9 s with two (OpenMP threads waiting on each other); ``--threads 2`` on an idle machine.
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

from diffusion_lab.bridge import standin_sd15 as sd  # noqa: E402
from diffusion_lab.mnist.classifier import load_classifier  # noqa: E402
from diffusion_lab.mnist.data import load_mnist  # noqa: E402
from diffusion_lab.utils.checkpoint import swap_folder, temp_sibling, write_json_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CALL = {"num_inference_steps": 20, "guidance_scale": 4.0}  # the call the numbers are measured with (and notebooks use)
UPSCALE_CALL = {"num_inference_steps": 20, "guidance_scale": 4.0, "noise_level": 20}


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def save(pipe, bins, recipe: dict, folder: Path) -> int:
    """``save_pretrained`` + caption bins + recipe into a temporary sibling, renamed into place; returns its bytes."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(folder)
    pipe.save_pretrained(tmp, safe_serialization=True)
    write_json_atomic(tmp / "caption_bins.json", bins.to_dict())
    recipe["folder_bytes"] = _folder_bytes(tmp)
    write_json_atomic(tmp / "recipe.json", recipe)
    swap_folder(tmp, folder)
    return recipe["folder_bytes"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a few steps of everything, written under build/")
    p.add_argument("--out", type=Path, default=None, help="folder for the two pipelines (default data/pretrained)")
    p.add_argument("--eval-n", type=int, default=200, help="prompts for digit adherence (n/10 per digit)")
    p.add_argument("--edge-n", type=int, default=100, help="test digits for the edge F1 comparison")
    p.add_argument("--upscaler", action="store_true", help="train the x4 upscaler on the shipped sd15_mnist instead")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.upscaler:
        return train_upscaler(args)
    cfg = sd.Sd15StandinConfig()
    if args.quick:
        cfg = sd.Sd15StandinConfig(num_images=512, vae_steps=5, steps=5, controlnet_steps=5)
        args.eval_n, args.edge_n = 20, 10
    out = args.out or (ROOT / ("build/standin_sd15_quick" if args.quick else "data/pretrained"))
    common = {
        "machine": {
            "threads": args.threads, "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
        "data": f"MNIST train, first {cfg.num_images} images (data/mnist.npz), on a 32x32 canvas; course captions",
        "config": cfg.to_dict(),
        "call": {"height": sd.CANVAS, "width": sd.CANVAS, **CALL},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    classifier = load_classifier()
    images, labels = load_mnist("train", limit=cfg.num_images)

    load0 = os.getloadavg()
    t0 = time.perf_counter()
    base, info = sd.train_sd15_standin(cfg, images=images, labels=labels, progress=True)
    seconds = time.perf_counter() - t0
    load1 = os.getloadavg()
    t1 = time.perf_counter()
    adherence = sd.measure_adherence(base, classifier, n=args.eval_n, **CALL)
    print(f"base: {seconds:.0f} s, adherence {adherence['adherence']:.3f} (n={adherence['n']})", flush=True)
    training = {
        "vae_steps": cfg.vae_steps, "vae_seconds": round(info["vae_seconds"], 1),
        "encode_seconds": round(info["encode_seconds"], 1), "denoiser_steps": cfg.steps,
        "denoiser_seconds": round(info["denoiser_seconds"], 1), "total_seconds": round(seconds, 1),
        "load_average_before": load0, "load_average_after": load1, "vae_recon_mse": info["vae_recon"],
        "final_loss": info["final_loss"], "scaling_factor": info["scaling_factor"],
    }  # fmt: skip
    base_recipe = {
        **common, "pipeline": "StableDiffusionPipeline", "parameters": info["parameters"], "training": training,
        "measured": {"digit_adherence": {**adherence, **CALL, "seconds": round(time.perf_counter() - t1, 1)}},
    }  # fmt: skip
    size = save(base, info["bins"], base_recipe, out / "sd15_mnist")
    print(f"wrote {out / 'sd15_mnist'} ({size / 1e6:.2f} MB)", flush=True)

    load2 = os.getloadavg()
    controlled, cinfo = sd.train_sd15_controlnet(
        base, cfg, images=images, labels=labels, bins=info["bins"], progress=True
    )
    load3 = os.getloadavg()
    t2 = time.perf_counter()
    test_images, test_labels = load_mnist("test", limit=args.edge_n)
    f1 = sd.edge_f1_comparison(base, controlled, test_images, test_labels, **CALL)
    f1.pop("images")
    print(f"edge F1: {f1}", flush=True)
    cn_recipe = {
        **common, "pipeline": "StableDiffusionControlNetPipeline",
        "parameters": {**info["parameters"], "controlnet": cinfo["controlnet_parameters"]},
        "training": {
            "base": training, "controlnet_steps": cfg.controlnet_steps,
            "controlnet_seconds": round(cinfo["controlnet_seconds"], 1), "load_average_before": load2,
            "load_average_after": load3, "final_loss": cinfo["final_loss"],
            "control": "maths.images.edge_map of the 28x28 digit (Sobel magnitude, non-maximum suppression, "
            f"threshold {cfg.edge_threshold}), padded to 32x32, 3 channels in {{0, 1}}",
        },
        "measured": {
            "digit_adherence_of_base": adherence,
            "edge_f1": {**f1, **CALL, "controlnet_conditioning_scale": 1.0, "data": "MNIST test, first n",
                        "seconds": round(time.perf_counter() - t2, 1)},
        },
    }  # fmt: skip
    size = save(controlled, info["bins"], cn_recipe, out / "sd15_controlnet_mnist")
    print(f"wrote {out / 'sd15_controlnet_mnist'} ({size / 1e6:.2f} MB)", flush=True)
    print(json.dumps({"adherence": adherence["adherence"], "edge_f1": f1}, indent=1))


def train_upscaler(args) -> None:
    """The x4 upscaler stand-in (:mod:`diffusion_lab.bridge.standin_upscaler`) on the shipped SD 1.5 stand-in's
    autoencoder and text encoder → ``data/pretrained/sd_x4_upscaler_mnist``."""
    from diffusion_lab.bridge import standin_upscaler as up  # lazy: only this mode needs it

    cfg = up.UpscalerStandinConfig(num_images=512, steps=5) if args.quick else up.UpscalerStandinConfig()
    n = 20 if args.quick else args.eval_n
    out = args.out or (ROOT / ("build/standin_sd15_quick" if args.quick else "data/pretrained"))
    base_dir = out / "sd15_mnist" if args.quick else ROOT / "data/pretrained/sd15_mnist"
    base = diffusers.StableDiffusionPipeline.from_pretrained(base_dir)
    images, labels = load_mnist("train", limit=cfg.num_images)
    load0, t0 = os.getloadavg(), time.perf_counter()
    pipe, info = up.train_upscaler_standin(base, cfg, images=images, labels=labels, progress=True)
    seconds, load1 = time.perf_counter() - t0, os.getloadavg()
    classifier = load_classifier()
    test_images, test_labels = load_mnist("test", limit=n)
    measured = {}
    for with_prompt in (True, False):
        r = up.measure_upscaler(pipe, classifier, test_images, test_labels, with_prompt=with_prompt, **UPSCALE_CALL)
        r.pop("images")
        measured["prompt_a_digit" if with_prompt else "empty_prompt"] = r
        print(r, flush=True)
    recipe = {
        "pipeline": "StableDiffusionUpscalePipeline", "config": cfg.to_dict(),
        "data": f"MNIST train, first {cfg.num_images} images on the 32x32 canvas; low-res = 4x4 block means (8x8)",
        "reuses": "sd15_mnist's autoencoder (latents rescaled to s = 0.08333) and text encoder, frozen",
        "machine": {"threads": args.threads, "torch": torch.__version__, "diffusers": diffusers.__version__},
        "training": {"steps": cfg.steps, "seconds": round(seconds, 1), "load_average_before": load0,
                     "load_average_after": load1, "final_loss": info["final_loss"]},
        "parameters": {"unet": info["unet_parameters"]},
        "call": {"height_of_low_res": 8, "width_of_low_res": 8, **UPSCALE_CALL},
        "measured": {"against_bicubic": measured, "data": f"MNIST test, first {n}"},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    size = save(pipe, info["bins"], recipe, out / "sd_x4_upscaler_mnist")
    print(f"wrote {out / 'sd_x4_upscaler_mnist'} ({size / 1e6:.2f} MB)", flush=True)


if __name__ == "__main__":
    main()
