from __future__ import annotations

import shutil

import pytest
import torch

from diffusion_lab.mnist.data import from_unit_range, load_mnist, mnist_dataset, moons, swiss_roll
from diffusion_lab.utils.errors import FileError


def test_mnist_splits_shapes_and_range():
    x, y = load_mnist("train")
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (60000,) and y.dtype == torch.int64
    assert x.min() == -1 and x.max() == 1
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the original MNIST order
    assert torch.bincount(y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    xt, yt = load_mnist("test", scale=False, limit=10)
    assert xt.dtype == torch.uint8 and xt.shape == (10, 1, 28, 28)
    assert yt.tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.equal(from_unit_range(load_mnist("test", limit=10)[0]), xt)  # exact round trip
    assert len(mnist_dataset("test", limit=5)) == 5


def test_missing_and_corrupt_file_give_clear_errors(tmp_path):
    with pytest.raises(FileError, match="not found"):
        load_mnist(path=tmp_path / "nope.npz")
    bad = tmp_path / "mnist.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(FileError, match="corrupt"):
        load_mnist(path=bad)
    with pytest.raises(FileError, match="could not read"):
        load_mnist(path=bad, verify=False)
    from diffusion_lab.mnist.data import default_mnist_path

    truncated = tmp_path / "t.npz"
    shutil.copy(default_mnist_path(), truncated)
    with open(truncated, "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(FileError):
        load_mnist(path=truncated)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split must be one of"):
        load_mnist("valid")
    with pytest.raises(ValueError, match="limit"):
        load_mnist(limit=0)
    with pytest.raises(ValueError, match="n must be"):
        moons(0)


@pytest.mark.parametrize("make", [swiss_roll, moons])
def test_toy_sets_are_standardised_and_seeded(make):
    a = make(2000, noise=0.0)
    assert a.shape == (2000, 2) and a.dtype == torch.float32
    torch.testing.assert_close(a.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(a.std(0), torch.ones(2), atol=1e-5, rtol=0)
    assert torch.equal(make(100, seed=3), make(100, seed=3))
    assert not torch.equal(make(100, seed=3), make(100, seed=4))
