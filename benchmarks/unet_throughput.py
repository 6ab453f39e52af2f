"""Where the training time goes: images per second of U-Net variants on this machine's CPU.

Compares the recipe's U-Net (2×2 pixel unshuffle, 2 levels) with a plain 3-level U-Net at 28×28, channels-last memory
layout and bf16 autocast, and writes ``benchmarks/results/unet_throughput.json``. About 2 minutes on 2 threads.

    .venv/bin/python benchmarks/unet_throughput.py --threads 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from diffusion_lab.models.unet import UNet, UNetConfig
from diffusion_lab.training.recipes_pixel import mnist_pixel_recipe
from diffusion_lab.utils.checkpoint import write_json_atomic

OUT = Path(__file__).resolve().parent / "results" / "unet_throughput.json"


def images_per_second(config: UNetConfig, *, channels_last=False, bf16=False, batch=128, steps=6, repeats=3) -> float:
    torch.manual_seed(0)
    model = UNet(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, 28, 28)
    t = torch.randint(0, 1000, (batch,))
    y = torch.randint(0, 11, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    best = 0.0
    for _ in range(repeats):
        for i in range(steps + 2):
            if i == 2:
                start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(x, t, y)
            loss = (out.float() - x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        best = max(best, batch * steps / (time.perf_counter() - start))
    return best


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    recipe, _ = mnist_pixel_recipe()
    plain = UNetConfig(channels=(16, 32, 64), attention_levels=(False, False, True), num_classes=10)
    wide = UNetConfig(channels=(32, 64, 64), attention_levels=(False, False, True), num_classes=10)
    variants = [
        ("recipe: patch 2, channels (32, 64), 14x14 and 7x7", recipe, {}),
        ("recipe + channels_last", recipe, {"channels_last": True}),
        ("recipe + bf16 autocast", recipe, {"bf16": True}),
        ("no patching: 3 levels (16, 32, 64) at 28x28", plain, {}),
        ("no patching: 3 levels (32, 64, 64) at 28x28", wide, {}),
    ]
    rows = []
    for name, cfg, kw in variants:
        rate = images_per_second(cfg, **kw)
        params = UNet(cfg).num_parameters()
        rows.append({"variant": name, "params": params, "train_images_per_s": round(rate, 1), **kw})
        print(f"{name:52s} {params / 1e6:5.2f} M params  {rate:7.1f} img/s", flush=True)
    result = {
        "what": "training images/s, batch 128, AdamW, best of 3 x 6 steps",
        "threads": args.threads,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    write_json_atomic(OUT, result)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
