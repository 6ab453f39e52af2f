"""Saving and loading the shipped tiny Stable Diffusion (and tiny SD3): the pipeline folder plus its caption bins.

A folder holds what ``save_pretrained`` writes and ``caption_bins.json``, the attribute bins its captions were cut
with (:class:`~diffusion_lab.mnist.captions.AttributeBins`): attribute adherence needs them to judge "thick" or
"slanted". ``model_index.json`` is written last and names the pipeline class to load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from diffusion_lab.mnist.captions import AttributeBins
from diffusion_lab.pipelines.stable_diffusion import TinyStableDiffusionPipeline
from diffusion_lab.pipelines.stable_diffusion_3 import TinySD3Pipeline
from diffusion_lab.utils.checkpoint import write_json_atomic
from diffusion_lab.utils.errors import FileError

__all__ = ["BINS_FILE", "pretrained_tiny_sd_path", "save_tiny_sd", "load_tiny_sd"]

BINS_FILE = "caption_bins.json"


def pretrained_tiny_sd_path(name: str = "tiny_sd") -> Path:
    """``$DIFFUSION_LAB_DATA/pretrained/<name>`` if that variable is set, else ``data/pretrained/<name>``.

    ``tiny_sd`` (U-Net + DDIM) is written by ``benchmarks/cpu_train.py --model latent --save …`` and ``tiny_sd3``
    (MMDiT + rectified flow, on tiny_sd's autoencoder) by ``--model flow --save …``: the very runs whose figures are
    in docs/benchmarks.md (2 CPU threads)."""
    root = os.environ.get("DIFFUSION_LAB_DATA")
    return (Path(root) if root else Path(__file__).resolve().parents[2] / "data") / "pretrained" / name


def save_tiny_sd(pipe: TinyStableDiffusionPipeline, bins: AttributeBins, directory: str | os.PathLike) -> Path:
    """``pipe.save_pretrained(directory)`` plus the caption bins (``caption_bins.json``) its captions were cut with:
    :func:`diffusion_lab.mnist.captions.attribute_adherence` needs them to judge "thick", "slanted", "small"."""
    directory = Path(directory)
    write_json_atomic(directory / BINS_FILE, bins.to_dict())  # first: model_index.json (last) marks a whole save
    pipe.save_pretrained(directory)
    return directory


def load_tiny_sd(
    directory: str | os.PathLike | None = None, device: torch.device | str | None = None
) -> tuple[TinyStableDiffusionPipeline, AttributeBins]:
    """(pipeline, caption bins) from a folder written by :func:`save_tiny_sd` (default: the shipped U-Net model;
    ``load_tiny_sd(pretrained_tiny_sd_path("tiny_sd3"))`` loads the shipped MMDiT one). The pipeline class
    (:class:`TinyStableDiffusionPipeline` or :class:`TinySD3Pipeline`) is the one the folder's index names."""
    directory = Path(directory) if directory is not None else pretrained_tiny_sd_path()
    if not (directory / BINS_FILE).is_file():
        raise FileNotFoundError(
            f"{directory} holds no {BINS_FILE}: pass a folder written by save_tiny_sd, or train one with "
            "benchmarks/cpu_train.py --model latent --save <folder> (about 2 minutes on a CPU)"
        )
    index = directory / "model_index.json"
    stored = _read_json(index).get("_class_name") if index.is_file() else None
    cls = TinySD3Pipeline if stored == TinySD3Pipeline.__name__ else TinyStableDiffusionPipeline
    pipe = cls.from_pretrained(directory, device=device)
    try:
        bins = AttributeBins.from_dict(_read_json(directory / BINS_FILE))
    except (TypeError, ValueError) as e:
        raise FileError(f"{directory / BINS_FILE} does not hold caption bins ({e}). {_REDO}") from e
    return pipe, bins


_REDO = (
    "Re-run the cell or command that wrote the folder (save_tiny_sd, or benchmarks/cpu_train.py --model latent "
    "--save <folder>), or delete the folder and save it again"
)


def _read_json(path: Path) -> dict:
    """The JSON object in ``path``; :class:`FileError` naming the file if it is truncated, not JSON or not an object."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise FileError(f"{path} is not valid JSON (truncated or damaged: {e}). {_REDO}") from e
    if not isinstance(obj, dict):
        raise FileError(f"{path} must hold a JSON object, got {type(obj).__name__}. {_REDO}")
    return obj
