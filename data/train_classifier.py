"""Train the MNIST classifier behind ``diffusion_lab.mnist.metrics`` (prompt adherence and FID-MNIST).

    python data/train_classifier.py          # about 4 minutes on a 2-core CPU (one thread), offline

Writes, each atomically (temporary file in ``data/``, then ``os.replace``):

- ``data/mnist_classifier.safetensors`` — the weights (float32, under 2 MB; no pickle anywhere);
- ``data/mnist_classifier.json`` — the :class:`~diffusion_lab.mnist.classifier.ClassifierConfig`, the weights' sha256
  (checked by ``load_classifier``), the test accuracy, the training recipe and time, seed, torch version and date.

Recipe: the small CNN of ``MnistClassifier`` (conv 32 → pool → conv 64 → pool → 128 features → 10), AdamW with a
one-cycle learning rate, batch 128, 3 epochs, random shifts of up to ±2 pixels. Seeded and deterministic: the same
torch version and thread count give the same weights. The test set is used only to report accuracy (no model
selection on it), so the accuracy in the JSON is an honest held-out figure.

One torch thread by default: on the course's shared 2-core machines, with another process busy, two threads fell to
about 210 training images/s against about 900 for one (OpenMP threads waiting on each other); ``--threads 2`` is
faster only on an idle machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a clone without `pip install -e .`

from diffusion_lab.mnist.classifier import ClassifierConfig, MnistClassifier, classify  # noqa: E402
from diffusion_lab.mnist.data import load_mnist  # noqa: E402

OUT_DIR = Path(__file__).resolve().parent
WEIGHTS = "mnist_classifier.safetensors"


def random_shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Shift each image (B, 1, H, W) by its own random (dy, dx) in [−max_shift, max_shift]², filling with −1 (black)."""
    if max_shift == 0:
        return x
    B, _, H, W = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)  # (B, 1, H + 2s, W + 2s)
    dy = torch.randint(0, 2 * max_shift + 1, (B,), generator=g)  # (B,)
    dx = torch.randint(0, 2 * max_shift + 1, (B,), generator=g)
    rows = dy[:, None] + torch.arange(H)  # (B, H)
    cols = dx[:, None] + torch.arange(W)  # (B, W)
    out = padded[torch.arange(B)[:, None, None], 0, rows[:, :, None], cols[:, None, :]]  # (B, H, W)
    return out.unsqueeze(1)  # (B, 1, H, W)


def accuracy(model: MnistClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    logits, _ = classify(images, model)
    return (logits.argmax(1) == labels).double().mean().item()


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file in ``path``'s folder, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the artifacts are meant to be read by all
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--max-shift", type=int, default=2, help="random shift augmentation, pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (see the module docstring)")
    p.add_argument("--out", type=Path, default=OUT_DIR, help="folder for the .safetensors and .json")
    args = p.parse_args()

    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    g = torch.Generator().manual_seed(args.seed)  # shuffling and augmentation

    x_train, y_train = load_mnist("train")  # (60000, 1, 28, 28) in [-1, 1], (60000,)
    x_test, y_test = load_mnist("test")  # (10000, 1, 28, 28), (10000,)
    config = ClassifierConfig()
    model = MnistClassifier(config)  # channels-last weights (see MnistClassifier)
    n_params = sum(p.numel() for p in model.parameters())
    steps_per_epoch = len(x_train) // args.batch_size  # the last partial batch is dropped
    total_steps = args.epochs * steps_per_epoch
    opt = torch.optim.AdamW(model.parameters(), lr=args.max_lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.max_lr, total_steps=total_steps, pct_start=0.2)
    print(f"MnistClassifier({config}): {n_params:,} parameters; {args.epochs} epochs × {steps_per_epoch} steps, "
          f"batch {args.batch_size}, {args.threads} threads", flush=True)  # fmt: skip

    train_seconds = 0.0
    step = 0
    for epoch in range(args.epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(x_train), generator=g)
        running, seen = 0.0, 0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
            x = random_shift(x_train[idx], args.max_shift, g)  # (b, 1, 28, 28)
            loss = F.cross_entropy(model(x), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            running += loss.item() * len(idx)
            seen += len(idx)
            if (i + 1) % 100 == 0:
                rate = seen / (time.perf_counter() - t0)
                print(f"  epoch {epoch + 1} step {i + 1}/{steps_per_epoch}  loss {running / seen:.4f}  "
                      f"lr {sched.get_last_lr()[0]:.2e}  {rate:.0f} img/s", flush=True)  # fmt: skip
        train_seconds += time.perf_counter() - t0
        acc = accuracy(model, x_test, y_test)
        print(f"epoch {epoch + 1}: train loss {running / seen:.4f}, test accuracy {acc:.4f}, "
              f"{train_seconds:.0f} s of training so far", flush=True)  # fmt: skip

    model.eval()
    test_acc = accuracy(model, x_test, y_test)
    errors = round((1 - test_acc) * len(x_test))

    args.out.mkdir(parents=True, exist_ok=True)
    weights_path = args.out / WEIGHTS
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}  # safetensors wants contiguous
    atomic_write(weights_path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    meta = {
        "model": "diffusion_lab.mnist.classifier.MnistClassifier",
        "config": dataclasses.asdict(config),
        "weights_file": WEIGHTS,
        "weights_sha256": hashlib.sha256(weights_path.read_bytes()).hexdigest(),
        "num_parameters": n_params,
        "input": "float32 (B, 1, 28, 28) in [-1, 1], as diffusion_lab.mnist.data.load_mnist gives",
        "features": f"penultimate layer before its ReLU (B, {config.feature_dim}): the FID-MNIST feature space",
        "test_accuracy": test_acc,
        "test_errors": errors,
        "training": {
            "data": "MNIST train, 60,000 images (data/mnist.npz)",
            "epochs": args.epochs,
            "steps": step,
            "batch_size": args.batch_size,
            "optimizer": "AdamW",
            "max_lr": args.max_lr,
            "weight_decay": args.weight_decay,
            "lr_schedule": "OneCycleLR, pct_start 0.2",
            "augmentation": f"random shift up to ±{args.max_shift} px (fill -1)",
            "seed": args.seed,
            "threads": args.threads,
            "train_seconds": round(train_seconds, 1),
        },
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "script": "data/train_classifier.py",
    }
    meta_path = weights_path.with_suffix(".json")
    atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n"))
    size_kb = weights_path.stat().st_size / 1024
    print(f"test accuracy {test_acc:.4f} ({errors} errors of {len(x_test)}); training took {train_seconds:.0f} s")
    print(f"wrote {weights_path} ({size_kb:.0f} KiB) and {meta_path}")


if __name__ == "__main__":
    main()
