"""``bridge.load_pipeline(..., standin="trained")``: the stand-ins trained on MNIST load through the same
``from_pretrained`` path as a hub id, from ``data/pretrained`` (or ``$DIFFUSION_LAB_DATA/pretrained``), offline; a
missing or damaged folder is a clear :class:`FileError`, a model without one a ``ValueError`` naming those that have
one. (The quality of the shipped stand-ins is tested with each of them.)"""

from __future__ import annotations

import contextlib
import io

import diffusers
import pytest
import torch

from diffusion_lab import bridge
from diffusion_lab.utils.errors import FileError


def _env() -> bridge.Environment:  # a CPU with no hub
    return bridge.Environment("cpu", None, None, False, None, False, ("test",))


def _load(key: str, **kwargs):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        pipe = bridge.load_pipeline(key, _env(), **kwargs)
    return pipe, out.getvalue()


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSION_LAB_DATA", str(tmp_path))
    return tmp_path


def test_a_trained_standin_loads_with_from_pretrained_and_says_so(data_root):
    with bridge.quiet_hf():
        saved = bridge.tiny_sdxl(seed=3)
        saved.save_pretrained(data_root / "pretrained" / "sdxl_mnist")
    pipe, said = _load("sdxl-base", standin="trained")
    assert isinstance(pipe, diffusers.StableDiffusionXLPipeline)
    assert "TRAINED ON MNIST" in said and "sdxl_mnist" in said
    for name, module in saved.components.items():
        if isinstance(module, torch.nn.Module):
            loaded = getattr(pipe, name).state_dict()
            assert loaded.keys() == module.state_dict().keys(), name
            for k, a in module.state_dict().items():
                assert torch.equal(a, loaded[k]), f"{name}.{k} must load unchanged"
    assert bridge.trained_standin_path("sdxl-base") == data_root / "pretrained" / "sdxl_mnist"


def test_a_missing_trained_standin_is_a_file_error_saying_what_to_do(data_root):
    with pytest.raises(FileError, match=r"sd3-medium.*missing.*data/pretrained/sd3_mnist.*standin='random'"):
        _load("sd3-medium", standin="trained")


def test_a_damaged_trained_standin_is_a_file_error(data_root):
    folder = data_root / "pretrained" / "sdxl_mnist"
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text("{not json")
    with pytest.raises(FileError, match="does not load.*restore data/pretrained/sdxl_mnist"):
        _load("sdxl-base", standin="trained")


def test_a_model_without_a_trained_standin_and_a_bad_choice_are_refused(data_root):
    with pytest.raises(ValueError, match=r"'sd21-unclip' has no stand-in trained on MNIST.*sdxl-base.*standin='random'"):
        _load("sd21-unclip", standin="trained")
    with pytest.raises(ValueError, match="standin"):
        _load("sdxl-base", standin="mnist")
    with pytest.raises(TypeError):
        _load("sdxl-base", standin=None)
