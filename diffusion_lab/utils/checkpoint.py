"""Checkpoints without pickle: safetensors for tensors, JSON for everything else, written atomically.

A checkpoint is a folder:

=========================  ===================================================================
file                       content
=========================  ===================================================================
``config.json``            model class name and its config, training config, step, versions
``model.safetensors``      the model's weights
``ema.safetensors``        the EMA weights (optional)
``state.safetensors``      optimizer tensors and RNG states (optional: only to resume training)
``state.json``             optimizer hyper-parameters, EMA step, training step (optional)
=========================  ===================================================================

The folder is written next to its destination under a temporary name and renamed into place, so a crash
never leaves a half-written checkpoint where a good one was. Loading checks every key and shape and names
the mismatches instead of loading a wrong model silently.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from diffusion_lab.utils.errors import FileError

__all__ = [
    "save_tensors_atomic",
    "PretrainedModel",
    "save_checkpoint",
    "load_config",
    "load_weights",
    "load_model",
    "load_training_state",
]

FORMAT = "diffusion_lab.checkpoint/1"


def _tensors(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().cpu().contiguous() for k, v in state.items()}


def _optimizer_to_safe(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and plain values (for JSON)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, per_param in sd["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_safe(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON to a temporary file next to ``path``, then rename it into place: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, default=str)
            fh.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_tensors_atomic(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Write one safetensors file through a temporary file next to ``path`` and a rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(
    directory: str | os.PathLike,
    model: torch.nn.Module,
    *,
    ema_model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    step: int | None = None,
    generator: torch.Generator | None = None,
    train_config: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a checkpoint folder atomically; ``model`` needs a dataclass ``config`` with ``to_dict()``."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        config = {
            "format": FORMAT,
            "model_class": type(model).__name__,
            "model_config": model.config.to_dict(),
            "train_config": train_config,
            "step": step,
            "torch": torch.__version__,
            "extra": extra or {},
        }
        _write_json(tmp / "config.json", config)
        save_file(_tensors(model.state_dict()), str(tmp / "model.safetensors"))
        if ema_model is not None:
            save_file(_tensors(ema_model.state_dict()), str(tmp / "ema.safetensors"))
        if optimizer is not None or generator is not None:
            tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
            state: dict[str, Any] = {"step": step}
            if generator is not None:
                tensors["rng.generator"] = generator.get_state()
            if optimizer is not None:
                opt_tensors, state["optimizer"] = _optimizer_to_safe(optimizer)
                tensors.update(opt_tensors)
            save_file(tensors, str(tmp / "state.safetensors"))
            _write_json(tmp / "state.json", state)
        # mkdtemp makes the folder private (0700) and safetensors writes 0600: give it the usual permissions
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        # swap into place: the old folder (if any) is removed only once the new one is there
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_config(directory: str | os.PathLike) -> dict:
    """The ``config.json`` of a checkpoint folder, with a clear error if it is missing or unreadable."""
    _check_path("directory", directory)
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileError(
            f"no checkpoint at {Path(directory)}: {path.name} is missing (pass the folder written by save_pretrained)"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise FileError(f"{path} is not valid JSON (truncated?): {e}; save the checkpoint again") from e
    fmt = config.get("format") if isinstance(config, dict) else None
    if fmt != FORMAT:
        raise FileError(
            f"{path} is not a diffusion_lab checkpoint (format {fmt!r}); pass a folder written by save_pretrained"
        )
    return config


def _check_path(name: str, path: object) -> None:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{name} must be a path (str or pathlib.Path), got {type(path).__name__}")


def _read(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileError(f"checkpoint file {path} is missing: save the checkpoint again, or pass the right folder")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise FileError(f"cannot read {path} (truncated or not safetensors): {e}; save the checkpoint again") from e


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load a safetensors file into ``model``; any missing, unexpected or mis-shaped key is an error naming it."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module to load weights into, got {type(model).__name__}")
    _check_path("path", path)
    path = Path(path)
    state = _read(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:

        def few(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {few(unexpected)}")
        if wrong:
            parts.append(
                "shape mismatches: "
                + few([f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in wrong])
            )
        raise FileError(
            f"{path} does not fit this {type(model).__name__} (another configuration?): " + "; ".join(parts)
        )
    model.load_state_dict(state)
    return model


def load_model(
    directory: str | os.PathLike, model_class: type, *, use_ema: bool = True, device: torch.device | str | None = None
):
    """Build ``model_class`` from the checkpoint's config and load its (EMA, if present and asked) weights.

    ``model_class`` is passed explicitly (e.g. ``UNet``); it must take its config dataclass as only argument and
    expose it as ``model_class.config_class`` or through the ``config`` annotation of its constructor.
    """
    if not isinstance(model_class, type) or not hasattr(model_class, "config_class"):
        raise TypeError(f"model_class must be a model class such as UNet, got {model_class!r}")
    config = load_config(directory)
    if config.get("model_class") != model_class.__name__:
        raise FileError(
            f"{directory} holds a {config.get('model_class')}, not a {model_class.__name__}: "
            f"load it with {config.get('model_class')}.from_pretrained"
        )
    try:
        model_config = model_class.config_class(**config["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise FileError(
            f"{Path(directory) / 'config.json'} has no valid model_config for {model_class.__name__} "
            f"({type(e).__name__}: {e}); save the checkpoint again"
        ) from e
    model = model_class(model_config)
    weights = Path(directory) / (
        "ema.safetensors" if use_ema and (Path(directory) / "ema.safetensors").is_file() else "model.safetensors"
    )
    load_weights(model, weights)
    return model.to(device) if device is not None else model


def load_training_state(
    directory: str | os.PathLike,
    model: torch.nn.Module,
    *,
    ema_model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Restore weights, EMA, optimizer and RNG states in place for resuming; returns the step to continue from."""
    directory = Path(directory)
    load_config(directory)
    load_weights(model, directory / "model.safetensors")
    if ema_model is not None:
        load_weights(ema_model, directory / "ema.safetensors")
    tensors = _read(directory / "state.safetensors")
    try:
        state = json.loads((directory / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FileError(
            f"cannot read {directory / 'state.json'}: {e}; this checkpoint cannot resume training (load_model still "
            "loads its weights)"
        ) from e
    try:
        optimizer_state = _optimizer_from_safe(tensors, state["optimizer"]) if optimizer is not None else None
        rng = tensors["rng.torch"]
        generator_state = tensors["rng.generator"] if generator is not None else None
        step = int(state["step"])
    except (KeyError, TypeError, ValueError) as e:
        raise FileError(
            f"{directory} lacks the training state asked for ({type(e).__name__}: {e}): it was saved without the "
            "optimizer or generator; resume without them or from another checkpoint"
        ) from e
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    torch.set_rng_state(rng)
    if generator_state is not None:
        generator.set_state(generator_state)
    return step


class PretrainedModel(torch.nn.Module):
    """What every model of the course shares (UNet, AutoencoderKL, TextEncoder): a dataclass ``config`` of class
    ``config_class``, ``device`` / ``dtype`` / ``num_parameters()``, and diffusers-style ``save_pretrained(dir)`` /
    ``Model.from_pretrained(dir)`` through :func:`save_checkpoint` / :func:`load_model` (safetensors + JSON, atomic).
    Like diffusers' ``from_pretrained``, loading returns the model in eval mode (EMA weights if the folder has them).
    """

    config_class: type

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Weights (safetensors) and config (JSON) in a folder, written atomically."""
        save_checkpoint(directory, self)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device | None = None):
        """Load a folder written by ``save_pretrained`` or ``save_checkpoint``, in eval mode."""
        return load_model(directory, cls, device=device).eval()
