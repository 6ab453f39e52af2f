"""A/B runs of the latent text-to-image recipe at fixed step counts (issue 5): which choice buys what.

Each variant overrides fields of the four configs of ``diffusion_lab.training.recipes.latent_text_recipe`` (``t.`` training,
``u.`` U-Net, ``x.`` text encoder, ``v.`` autoencoder), trains with *step-count* stops (``ae_steps``, ``max_steps``;
so the result does not depend on how loaded the machine is), samples one image per evaluation prompt with DDIM-25
at several guidance scales and appends one JSON line per variant to ``benchmarks/results/latent_ablation.jsonl``:

    .venv/bin/python benchmarks/latent_ablation.py --only recipe no_min_snr --workers 1
    .venv/bin/python benchmarks/latent_ablation.py --workers 8        # every variant, 8 processes of 2 threads

The defaults (350 autoencoder steps, 1,150 denoiser steps) are what the 120 s budget buys on the 2-thread CPU of the
benchmark page (docs/benchmarks.md). ``benchmarks/results/latent_ablation.md`` summarises the runs behind the recipe's choices.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "latent_ablation.jsonl"

# name → overrides of the recipe (every variant starts from the shipped recipe with step-count stops)
VARIANTS: dict[str, dict] = {
    "recipe": {},
    "min_snr_5": {"t.min_snr_gamma": 5.0},
    "epsilon": {"t.prediction_type": "epsilon"},
    "lr_2e-3": {"t.lr": 2e-3},
    "ema_0.9": {"t.ema_decay": 0.9},
    "drop_0.1_0.5": {"t.cond_drop_prob": 0.1, "t.caption_drop_prob": 0.5},
    "final_lr_0.1": {"t.final_lr_fraction": 0.1},
    "ae_20s": {"t.ae_steps": 778, "t.max_steps": 966},
    "ae_batch_32": {"t.ae_batch_size": 32},
    "kl_1e-4": {"t.kl_weight": 1e-4},
    "latent_8ch": {"v.latent_channels": 8, "u.in_channels": 8, "u.out_channels": 8},
    "ae_32ch": {"v.channels": (32,)},
    "unet_48ch": {"u.channels": (48,), "t.max_steps": 1300},
    "word_init_clip": {"t.token_embedding_std": None},
    "steps_3000": {"t.max_steps": 3000},
    "steps_3000_ae_2000": {"t.max_steps": 3000, "t.ae_steps": 2000},
}
DEFAULT_STEPS = {"t.ae_steps": 350, "t.max_steps": 1150}


def run_one(name: str, overrides: dict, n_eval: int, guidance: list[float], threads: int) -> dict:
    """Train one variant and evaluate it (in this process)."""
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cpu_train import generate_latent, latent_prompts

    from diffusion_lab.mnist.captions import attribute_adherence
    from diffusion_lab.mnist.classifier import load_classifier
    from diffusion_lab.mnist.data import load_mnist
    from diffusion_lab.mnist.metrics import evaluate, reference_stats
    from diffusion_lab.training.recipes import latent_text_recipe, train_latent_text2img

    vae, text, unet, train = latent_text_recipe()
    parts = {"v": {}, "x": {}, "u": {}, "t": {"budget_s": 1e9, "ae_seconds": 1e8}}
    for key, value in {**DEFAULT_STEPS, **overrides}.items():
        part, field = key.split(".", 1)
        parts[part][field] = value
    vae, text, unet, train = (
        dataclasses.replace(c, **parts[k]) for c, k in ((vae, "v"), (text, "x"), (unet, "u"), (train, "t"))
    )
    pipe, info = train_latent_text2img(
        train_config=train, unet_config=unet, text_config=text, vae_config=vae, progress=False
    )
    clf = load_classifier()
    ref = reference_stats(clf)
    x_test, y_test = load_mnist("test", limit=n_eval)
    with torch.no_grad():
        recon = pipe.vae.decode(pipe.vae.encode(x_test).latent_dist.mode()).sample
    r = evaluate(recon, y_test, clf, reference=ref)
    prompts, labels = latent_prompts(n_eval)
    record = {
        "variant": name, "overrides": {k: v for k, v in overrides.items()}, "n": n_eval,
        "ae_steps": info["ae_steps"], "diffusion_steps": info["diffusion_steps"],
        "train_seconds": round(info["total_seconds"], 1), "threads": threads,
        "recon_fid": round(r["fid_mnist"], 1), "fid_floor": round(r["fid_floor"], 1), "guided": [],
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    for w in guidance:
        x, _ = generate_latent(pipe, prompts, 25, w)
        m = evaluate(x, labels, clf, reference=ref)
        a = attribute_adherence(x, prompts, info["bins"])
        record["guided"].append(
            {"guidance_scale": w, "digit_adherence": round(m["adherence"], 3),
             "attribute_adherence": round(a["adherence"], 3), "fid": round(m["fid_mnist"], 1)}
        )  # fmt: skip
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="variants to run (default: all)")
    p.add_argument("--workers", type=int, default=1, help="variants trained at once, each its own process")
    p.add_argument("--threads", type=int, default=2, help="torch threads per variant")
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--guidance", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant, print its JSON record
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, VARIANTS[args.one], args.n_eval, args.guidance, args.threads)))
        return
    names = args.only or list(VARIANTS)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")

    def launch(name: str) -> None:
        cmd = [sys.executable, __file__, "--one", name, "--threads", str(args.threads), "--n-eval", str(args.n_eval)]
        proc = subprocess.run([*cmd, "--guidance", *map(str, args.guidance)], env=env, capture_output=True, text=True)
        if proc.returncode:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", flush=True)
            return
        record = json.loads(proc.stdout.strip().splitlines()[-1])
        OUT.parent.mkdir(parents=True, exist_ok=True)
        with open(OUT, "a") as f:  # one line per variant, appended whole
            f.write(json.dumps(record) + "\n")
        best = ", ".join(
            f"w={g['guidance_scale']}: {g['digit_adherence']:.3f}/{g['attribute_adherence']:.3f}/{g['fid']:.0f}"
            for g in record["guided"]
        )
        print(f"{name}: recon FID {record['recon_fid']}, digit/attribute/FID {best}", flush=True)

    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(launch, names))


if __name__ == "__main__":
    main()
