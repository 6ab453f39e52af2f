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

Saving never destroys what it was not asked to replace. A new folder is written next to its destination under a
temporary name (``.<name>.tmp-<pid>-…``) and renamed into place: it appears whole or not at all. Into an existing
folder (``save_pretrained("checkpoints")``, ``save_pretrained(".")``) each of the files above is written through a
temporary file and a rename, ``config.json`` removed first and written last (an interrupted save leaves a folder that
loading refuses, never a silent mix), the files of this table that the save does not write (an older EMA) are removed,
and every other file of the folder is left alone. Temporaries of killed saves are removed at the next save into the
same place (:func:`clean_stale_temps`). Loading checks every key and shape and names the mismatches instead of loading
a wrong model silently.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from diffusion_lab.utils.errors import FileError

__all__ = [
    "save_tensors_atomic",
    "clean_stale_temps",
    "temp_sibling",
    "merge_missing",
    "swap_folder",
    "PretrainedModel",
    "save_checkpoint",
    "load_config",
    "load_weights",
    "load_model",
    "load_training_state",
]

FORMAT = "diffusion_lab.checkpoint/1"
OWN_FILES = ("config.json", "model.safetensors", "ema.safetensors", "state.safetensors", "state.json")
STALE_AFTER_S = 600.0  # a temporary untouched this long is stale even if its process still runs
_TEMP_MARKS = (".tmp-", ".old-")


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
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path.name), dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, default=str)
            fh.write("\n")
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give it the usual permissions
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
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path.name), dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())
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
    """Write a checkpoint folder (the module docstring says how it stays safe); ``model`` needs a dataclass
    ``config`` with ``to_dict()``. Files of the folder that are not checkpoint files are left alone."""
    _check_path("directory", directory)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise FileError(f"{directory} is a file, not a folder: give save_pretrained a folder path")
    config = {
        "format": FORMAT,
        "model_class": type(model).__name__,
        "model_config": model.config.to_dict(),
        "train_config": train_config,
        "step": step,
        "torch": torch.__version__,
        "extra": extra or {},
    }
    writers: dict[str, Any] = {"model.safetensors": _tensor_writer(_tensors(model.state_dict()))}
    if ema_model is not None:
        writers["ema.safetensors"] = _tensor_writer(_tensors(ema_model.state_dict()))
    if optimizer is not None or generator is not None:
        tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
        state: dict[str, Any] = {"step": step}
        if generator is not None:
            tensors["rng.generator"] = generator.get_state()
        if optimizer is not None:
            opt_tensors, state["optimizer"] = _optimizer_to_safe(optimizer)
            tensors.update(opt_tensors)
        writers["state.safetensors"] = _tensor_writer(tensors)
        writers["state.json"] = _json_writer(state)
    writers["config.json"] = _json_writer(config)  # last: it marks a whole checkpoint
    if directory.is_dir():
        _save_in_place(directory, writers)
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(directory.parent, directory.name)
    tmp = temp_sibling(directory)
    try:
        for name, write in writers.items():
            write(tmp / name)
            os.chmod(tmp / name, 0o666 & ~_umask())  # safetensors writes 0600: give the usual permissions
        try:
            os.rename(tmp, directory)  # fails if the folder appeared meanwhile: then write into it
        except OSError:
            if not directory.is_dir():
                raise
            _save_in_place(directory, writers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _tensor_writer(tensors: dict[str, torch.Tensor]):
    return lambda path: save_file(tensors, str(path))


def _json_writer(obj: Any):
    return lambda path: _write_json(path, obj)


def _save_in_place(directory: Path, writers: dict) -> None:
    """Each checkpoint file through a temporary file and a rename; ``config.json`` out first and in last; the
    checkpoint files this save does not write (an older EMA, optimizer state) removed; nothing else touched."""
    for name in OWN_FILES:
        clean_stale_temps(directory, name)
    (directory / "config.json").unlink(missing_ok=True)
    for name in OWN_FILES:
        if name not in writers:
            (directory / name).unlink(missing_ok=True)
    for name, write in writers.items():
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(name), dir=directory)
        os.close(fd)
        try:
            write(Path(tmp))
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, directory / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# --------------------------------------------------------------------------- temporaries, merging and swapping


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _tmp_prefix(name: str) -> str:
    """Temporaries carry the writer's pid, so that the next save can tell a killed save's leftovers."""
    return f".{name}.tmp-{os.getpid()}-"


def temp_sibling(path: str | os.PathLike) -> Path:
    """A new empty folder next to ``path`` (``.<name>.tmp-<pid>-…``) with the usual permissions."""
    path = Path(os.path.abspath(path))
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path.name), dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700
    return tmp


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
                except OSError:
                    pass
    return newest


def clean_stale_temps(folder: str | os.PathLike, name: str, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove what killed saves of ``name`` left in ``folder`` (``.<name>.tmp-*``, ``.<name>.old-*``): those whose
    process has exited, or untouched for ``max_age_s`` seconds. An aside ``.<name>.old-*`` is put back instead when
    ``name`` itself is missing (a save killed between its two renames). Returns what was removed."""
    _check_path("folder", folder)
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty file or folder name, got {name!r}")
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        mark = next((m for m in _TEMP_MARKS if entry.name.startswith(f".{name}{m}")), None)
        if mark is None:
            continue
        pid_text = entry.name[len(name) + 1 + len(mark) :].split("-", 1)[0]
        try:
            dead = pid_text.isdigit() and not _pid_alive(int(pid_text))
            if not dead and time.time() - _newest_mtime(entry) < max_age_s:
                continue
            if mark == ".old-" and not (folder / name).exists():
                os.rename(entry, folder / name)
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:  # another save cleaned it first
            continue
        removed.append(entry)
    return removed


def _is_temp(name: str) -> bool:
    return name.startswith(".") and any(m in name for m in _TEMP_MARKS)


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link (instant, no space), or a copy where the file system has none."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def merge_missing(old: str | os.PathLike, new: str | os.PathLike, skip: tuple[str, ...] = ()) -> None:
    """Bring into ``new`` every entry of ``old`` that ``new`` lacks (hard links where possible), except the names in
    ``skip`` and temporaries; a folder present in both is merged the same way, with the checkpoint files
    (``OWN_FILES``) skipped inside it (they belong to the save that wrote ``new``)."""
    old, new = Path(old), Path(new)
    for entry in old.iterdir():
        if entry.name in skip or _is_temp(entry.name):
            continue
        target = new / entry.name
        if entry.is_dir() and not entry.is_symlink():
            if target.is_dir():
                merge_missing(entry, target, skip=OWN_FILES)
            elif not target.exists():
                shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        elif not target.exists() and not target.is_symlink():
            _link_or_copy(str(entry), str(target))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_folder(new: str | os.PathLike, directory: str | os.PathLike) -> None:
    """Put the complete folder ``new`` in place of ``directory`` and remove the old one: in one atomic exchange
    where the system has it, else by renaming the old one aside first (the next save puts it back if a kill
    came between the two renames). Readers see the whole old folder until the whole new one is there."""
    new, directory = Path(new), Path(directory)
    if not directory.exists():
        os.rename(new, directory)
    elif _exchange(new, directory):
        shutil.rmtree(new, ignore_errors=True)  # it now holds the old folder
    else:
        aside = directory.with_name(f".{directory.name}.old-{os.getpid()}-{new.name.rsplit('-', 1)[-1]}")
        os.rename(directory, aside)
        os.rename(new, directory)
        shutil.rmtree(aside, ignore_errors=True)


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
        """Weights (safetensors) and config (JSON) in a folder, each file written atomically; the folder's other
        files are kept (``save_pretrained(".")`` works)."""
        save_checkpoint(directory, self)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device | None = None):
        """Load a folder written by ``save_pretrained`` or ``save_checkpoint``, in eval mode."""
        return load_model(directory, cls, device=device).eval()
