"""Data for the course, all offline: MNIST from ``data/mnist.npz`` and small 2-D toy sets.

=====================  ==========================================================================
function               what it gives
=====================  ==========================================================================
``load_mnist``         (images, labels): images float32 (N, 1, 28, 28) in [−1, 1] (or uint8), labels int64
``mnist_dataset``      the same as a ``torch.utils.data.TensorDataset``
``swiss_roll``         (N, 2) float32 points on a 2-D spiral, scaled to roughly unit std
``moons``              (N, 2) float32 points on two interleaved half circles, roughly unit std
=====================  ==========================================================================

``data/mnist.npz`` is the original 60k/10k MNIST (Yann LeCun and Corinna Cortes, CC BY-SA 3.0), built once by
``data/build_mnist.py`` (see ``data/README.md`` for provenance). It is loaded with ``allow_pickle=False`` and
its sha256 is checked, so a truncated or altered file fails loudly instead of training on garbage.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import torch

from diffusion_lab.utils.errors import FileError, check_choice, check_int, check_number, check_tensor

__all__ = [
    "MNIST_SHA256",
    "FileError",
    "default_mnist_path",
    "load_mnist",
    "mnist_dataset",
    "load_mnist_torchvision",
    "swiss_roll",
    "moons",
    "to_unit_range",
    "from_unit_range",
]

MNIST_SHA256 = "06af5dfe73b70e3bc1c36439982b18a8d76803db9b544f6fdf838a37fbb01b64"
_SPLITS = ("train", "test")
_REPO_DATA = Path(__file__).resolve().parents[2] / "data"


def default_mnist_path() -> Path:
    """``$DIFFUSION_LAB_DATA/mnist.npz`` if that variable is set, else ``data/mnist.npz`` in the repository."""
    root = os.environ.get("DIFFUSION_LAB_DATA")
    return (Path(root) if root else _REPO_DATA) / "mnist.npz"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_pixels(x: object, expected: str) -> torch.Tensor:
    x = check_tensor("x", x, expected)
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values: check what produced it (a diverged model, a 0/0)")
    return x


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 → float32 in [−1, 1]: x/127.5 − 1 (the range DDPM trains on, DDPM §4)."""
    return _check_pixels(x, "of pixels 0..255").float() / 127.5 - 1.0


def from_unit_range(x: torch.Tensor) -> torch.Tensor:
    """float in [−1, 1] → uint8 0..255 (values outside are clipped)."""
    return ((_check_pixels(x, "in [-1, 1]").clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def load_mnist(
    split: str = "train",
    *,
    scale: bool = True,
    limit: int | None = None,
    path: str | os.PathLike | None = None,
    verify: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST images and labels from the committed npz, offline.

    split: ``"train"`` (60,000) or ``"test"`` (10,000). scale: True gives float32 in [−1, 1], False uint8 0..255.
    limit: keep only the first ``limit`` examples. Returns images (N, 1, 28, 28) and labels (N,) int64.
    """
    check_choice("split", split, _SPLITS)
    if limit is not None:
        limit = check_int("limit", limit)  # np.int64 / torch scalars accepted, bools refused
    if path is not None and not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike (None for data/mnist.npz), got {type(path).__name__}")
    path = Path(path) if path is not None else default_mnist_path()
    if not path.is_file():
        raise FileError(
            f"MNIST file not found at {path}. It ships with the repository (data/mnist.npz): run from a full clone, "
            "set DIFFUSION_LAB_DATA to the folder holding mnist.npz, or rebuild it with data/build_mnist.py "
            "(see data/README.md). With internet you can also use load_mnist_torchvision()."
        )
    if verify:
        digest = _sha256(path)
        if digest != MNIST_SHA256:
            raise FileError(
                f"{path} is corrupt or not the course's MNIST (sha256 {digest[:12]}..., expected "
                f"{MNIST_SHA256[:12]}...). Restore it with `git checkout -- data/mnist.npz` or rebuild it with "
                "data/build_mnist.py (see data/README.md)."
            )
    try:
        with np.load(path, allow_pickle=False) as f:
            x = f[f"x_{split}"]
            y = f[f"y_{split}"]
    except (OSError, ValueError, KeyError) as e:  # not a zip, truncated, missing member
        raise FileError(f"could not read {path} as the course's MNIST npz: {e}") from e
    if limit is not None:
        x, y = x[:limit], y[:limit]
    images = torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1)  # (N, 1, 28, 28) uint8
    labels = torch.from_numpy(y.astype(np.int64))  # (N,)
    return (to_unit_range(images) if scale else images), labels


def mnist_dataset(split: str = "train", **kwargs) -> torch.utils.data.TensorDataset:
    """:func:`load_mnist` wrapped as a ``TensorDataset`` of (image, label) pairs."""
    return torch.utils.data.TensorDataset(*load_mnist(split, **kwargs))


def load_mnist_torchvision(
    root: str | os.PathLike, split: str = "train", *, scale: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optional: download MNIST with torchvision (needs internet) and return it in :func:`load_mnist`'s format."""
    try:
        from torchvision.datasets import MNIST  # lazy: only the optional torchvision download path needs it
    except ImportError as e:  # pragma: no cover - torchvision is pinned
        raise ImportError("load_mnist_torchvision needs torchvision: pip install torchvision") from e
    check_choice("split", split, _SPLITS)
    try:
        ds = MNIST(root, train=split == "train", download=True)
    except Exception as e:  # no network: say what to do instead
        raise FileError(
            f"torchvision could not download MNIST ({e}). Offline, use load_mnist(), which reads data/mnist.npz."
        ) from e
    images = ds.data.unsqueeze(1)  # (N, 1, 28, 28) uint8
    return (to_unit_range(images) if scale else images), ds.targets.long()


def _generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(0 if seed is None else check_int("seed (None for 0)", seed, minimum=0))
    return g


def _check_n(n: int, noise: float) -> tuple[int, float]:
    """(n, noise) as Python numbers: NumPy / torch scalars accepted, bools, NaN and negatives refused."""
    return check_int("n", n), check_number("noise", noise, minimum=0.0)


def swiss_roll(n: int = 1000, *, noise: float = 0.05, seed: int | None = 0) -> torch.Tensor:
    """A 2-D swiss roll: angle θ ~ U(1.5π, 4.5π), point θ·(cos θ, sin θ), standardised, plus N(0, noise²).

    The same curve as scikit-learn's ``make_swiss_roll`` (its x and z coordinates). Returns (n, 2) float32.
    """
    n, noise = _check_n(n, noise)
    g = _generator(seed)
    theta = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))  # (n,)
    pts = torch.stack([theta * torch.cos(theta), theta * torch.sin(theta)], dim=1)  # (n, 2)
    pts = (pts - pts.mean(0)) / pts.std(0)
    return pts + noise * torch.randn(n, 2, generator=g)


def moons(n: int = 1000, *, noise: float = 0.05, seed: int | None = 0) -> torch.Tensor:
    """Two interleaved half circles (scikit-learn's ``make_moons``), standardised, plus N(0, noise²).

    Returns (n, 2) float32; the first ⌈n/2⌉ points are the upper moon.
    """
    n, noise = _check_n(n, noise)
    g = _generator(seed)
    n_up = (n + 1) // 2
    a = math.pi * torch.rand(n, generator=g)  # (n,)
    upper = torch.stack([torch.cos(a[:n_up]), torch.sin(a[:n_up])], dim=1)  # (n_up, 2)
    lower = torch.stack([1 - torch.cos(a[n_up:]), 0.5 - torch.sin(a[n_up:])], dim=1)  # (n - n_up, 2)
    pts = torch.cat([upper, lower])
    pts = (pts - pts.mean(0)) / pts.std(0)
    return pts + noise * torch.randn(n, 2, generator=g)
