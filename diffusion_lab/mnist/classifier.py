"""The MNIST classifier used as a judge: the digit it reads in a sample, and the features f(x) that FID-MNIST compares.

=========================  ======  ==========================================================================
code                       symbol  meaning
=========================  ======  ==========================================================================
``images``                 x       (B, 1, 28, 28) in [−1, 1]
``features(x)``            f(x)    (B, D) penultimate layer *before* its ReLU (D = 128 for the shipped weights)
``logits_from_features``   —       (B, 10): W·ReLU(f) + b; the predicted digit is ŷ = argmax
=========================  ======  ==========================================================================

A small CNN (per level 3×3 conv → BatchNorm → ReLU → 2×2 max-pool, then two linear layers) whose shipped weights
(``data/mnist_classifier.safetensors`` + ``.json``, trained by ``data/train_classifier.py``) reach ≥ 99 % test
accuracy. :func:`load_classifier` checks the file's sha256 and every key and shape: a missing, altered or mismatched
file is a :class:`~diffusion_lab.utils.errors.FileError` saying how to rebuild it. :func:`classify` runs batched in eval
mode on the classifier's device and returns (logits, features) on the CPU; the metrics in
:mod:`diffusion_lab.mnist.metrics` are built on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from diffusion_lab.utils.errors import FileError, check_int, check_number
from diffusion_lab.utils.validation import check_images

__all__ = [
    "ClassifierConfig",
    "FileError",
    "MnistClassifier",
    "classify",
    "default_classifier_path",
    "load_classifier",
]

NUM_CLASSES = 10
IMAGE_SHAPE = (1, 28, 28)
_REPO_DATA = Path(__file__).resolve().parents[2] / "data"
_WEIGHTS_NAME = "mnist_classifier.safetensors"


@dataclass(frozen=True)
class ClassifierConfig:
    """A small CNN: per entry of ``channels`` one 3×3 conv → BatchNorm → ReLU → 2×2 max-pool, then
    Linear to ``feature_dim`` features → ReLU → Dropout → Linear to ``num_classes`` logits."""

    channels: tuple[int, ...] = (32, 64)
    feature_dim: int = 128
    dropout: float = 0.5
    num_classes: int = NUM_CLASSES

    def __post_init__(self) -> None:
        if isinstance(self.channels, str) or not isinstance(self.channels, tuple | list):
            raise TypeError(f"channels must be a tuple of 1 to 3 integers, e.g. (32, 64), got {self.channels!r}")
        object.__setattr__(self, "channels", tuple(self.channels))  # JSON gives a list
        channels = tuple(check_int(f"channels[{i}]", c) for i, c in enumerate(self.channels))
        object.__setattr__(self, "channels", channels)  # np.int64 / torch scalars → int
        if not 1 <= len(self.channels) <= 3:
            raise ValueError(f"channels must be 1 to 3 positive integers, got {self.channels!r}")
        object.__setattr__(self, "feature_dim", check_int("feature_dim", self.feature_dim))
        object.__setattr__(self, "dropout", check_number("dropout", self.dropout, minimum=0.0))
        if not self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.num_classes != NUM_CLASSES:
            raise ValueError(f"num_classes must be {NUM_CLASSES} (MNIST digits), got {self.num_classes!r}")


class _ConvStage(nn.Module):
    """3×3 conv (no bias: BatchNorm has one) → BatchNorm → ReLU → 2×2 max-pool: (B, C_in, H, W) → (B, C_out, H/2, W/2)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.norm(self.conv(x))), 2)


class MnistClassifier(nn.Module):
    """MNIST digit classifier whose penultimate layer doubles as the feature space of FID-MNIST.

    Input (B, 1, 28, 28) in [−1, 1]; ``forward`` gives logits (B, 10), ``features`` the (B, D) penultimate layer
    *before* its ReLU. Why before: with the shipped weights 35 of the 128 ReLU outputs are 0 on every test image, which
    makes the feature covariance of FID singular; the pre-activations hold the same information (and the negative
    part), and their covariance has full rank. The shipped weights reach ≥ 99% test accuracy
    (see ``data/mnist_classifier.json``).
    """

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = config = config or ClassifierConfig()
        chans = (IMAGE_SHAPE[0], *config.channels)
        self.stages = nn.ModuleList(_ConvStage(a, b) for a, b in zip(chans[:-1], chans[1:], strict=True))
        side = IMAGE_SHAPE[1] // 2 ** len(config.channels)  # 28 → 14 → 7 → 3
        self.fc = nn.Linear(config.channels[-1] * side * side, config.feature_dim)
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.feature_dim, config.num_classes)
        # Channels-last weights make the convolutions and max-pools 2-3× faster on a CPU (the (B, 1, 28, 28)
        # input needs no conversion); load_state_dict and .to(device) keep the layout.
        self.to(memory_format=torch.channels_last)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features f(x) = W·conv(x) + b, before the ReLU: (B, 1, 28, 28) → (B, D)."""
        _check_images(x, "x")
        h = x
        for stage in self.stages:
            h = stage(h)  # (B, C_k, 28/2^k, 28/2^k)
        return self.fc(h.flatten(1))  # (B, D)

    def logits_from_features(self, f: torch.Tensor) -> torch.Tensor:
        """(B, D) features → (B, 10) logits: ReLU, dropout (training only), last linear layer."""
        return self.head(self.drop(F.relu(f)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 10) for images (B, 1, 28, 28) in [−1, 1]."""
        return self.logits_from_features(self.features(x))


def default_classifier_path() -> Path:
    """``$DIFFUSION_LAB_DATA/mnist_classifier.safetensors`` if that variable is set, else the one in ``data/``."""
    root = os.environ.get("DIFFUSION_LAB_DATA")
    return (Path(root) if root else _REPO_DATA) / _WEIGHTS_NAME


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_classifier(path: str | os.PathLike | None = None, device: str | torch.device | None = None) -> MnistClassifier:
    """The trained classifier from ``path`` (safetensors) and the JSON next to it (same name, ``.json``), in eval mode.

    The JSON holds the :class:`ClassifierConfig` and the weights' sha256. Raises :class:`FileError` if a
    file is missing, unreadable or altered, or if the weights do not fit the architecture (naming the keys).
    ``device``: where to put the model (default CPU); the metrics then run there.
    """

    path = Path(path) if path is not None else default_classifier_path()
    meta_path = path.with_suffix(".json")
    rebuild = "Rebuild both files with `python data/train_classifier.py` (a few minutes on a CPU)."
    for p in (path, meta_path):
        if not p.is_file():
            raise FileError(f"classifier file not found: {p}. {rebuild}")
    try:
        meta = json.loads(meta_path.read_text())
        config = ClassifierConfig(**meta["config"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FileError(f"could not read the classifier config {meta_path}: {e!r}. {rebuild}") from e
    expected = meta.get("weights_sha256")
    if expected is not None and _sha256(path) != expected:
        raise FileError(f"{path} is corrupt or not the file described by {meta_path.name} (sha256 differs). {rebuild}")
    try:
        state = load_file(path)
    except (OSError, SafetensorError, ValueError) as e:
        raise FileError(f"could not read {path} as safetensors: {e}. {rebuild}") from e

    model = MnistClassifier(config)
    wanted = model.state_dict()
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - set(wanted))
    wrong_shape = [f"{k}: file {tuple(state[k].shape)}, model {tuple(v.shape)}" for k, v in wanted.items()
                   if k in state and state[k].shape != v.shape]  # fmt: skip
    if missing or unexpected or wrong_shape:
        raise FileError(
            f"{path} does not fit MnistClassifier({config}): missing keys {missing}, unexpected keys {unexpected}, "
            f"wrong shapes {wrong_shape}. {rebuild}"
        )
    model.load_state_dict(state)
    return model.to(device if device is not None else "cpu").eval()


_HINTS = {"channels": " (MNIST digits have 1: average the RGB channels)", "size": " (MNIST digits are 28x28)"}


def _check_images(images: object, name: str = "images") -> torch.Tensor:
    """A non-empty, finite float tensor (B, 1, 28, 28): the one image validator with MNIST's shape."""
    return check_images(images, name, channels=1, size=IMAGE_SHAPE[1:], hints=_HINTS)


def _check_labels(labels: object, n: int) -> torch.Tensor:
    try:
        labels = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"labels must be a 1-D integer tensor (B,) of digits, got {type(labels).__name__}") from e
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be a 1-D integer tensor (B,), got dtype {labels.dtype} shape {tuple(labels.shape)}"
        )
    if len(labels) != n:
        raise ValueError(f"images and labels must have the same length, got {n} images and {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(
            f"labels must be digits 0..{NUM_CLASSES - 1}, got values from {labels.min().item()} to {labels.max().item()}"
        )
    return labels.long().cpu()


def _check_batch_size(batch_size: int) -> int:
    return check_int("batch_size", batch_size)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration (BatchNorm uses its running statistics and does not update them), then restore."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def classify(
    images: torch.Tensor, classifier: MnistClassifier, *, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batched pass: (logits (N, 10), features (N, D)), both float32 on the CPU.

    Images (N, 1, 28, 28) are clamped to [−1, 1] and moved batch by batch to the classifier's device.
    """
    images = _check_images(images)
    batch_size = _check_batch_size(batch_size)
    if not isinstance(classifier, nn.Module):
        raise TypeError(
            f"classifier must be an MnistClassifier (from load_classifier()), got {type(classifier).__name__}"
        )
    param = next(classifier.parameters())
    logits, feats = [], []
    with _eval_mode(classifier):
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(param.device, param.dtype).clamp(-1, 1)  # (b, 1, 28, 28)
            f = classifier.features(x)  # (b, D)
            logits.append(classifier.logits_from_features(f).float().cpu())  # (b, 10)
            feats.append(f.float().cpu())
    return torch.cat(logits), torch.cat(feats)
