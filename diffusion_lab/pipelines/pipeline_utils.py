"""The pipeline base: components, device, step arguments, initial latents, decoding, save and load (diffusers' ``DiffusionPipeline``).

Notation: z_T the starting latents (B, L, h, w), σ_init the scheduler's ``init_noise_sigma`` (z_T = σ_init·ε,
ε ~ N(0, I)), s the autoencoder's latent scale (images x = D(z_0 / s), clamped to [−1, 1]). Each pipeline declares
its components once, as a map name → class (``_component_classes``; a scheduler slot holds ``None``: any scheduler
with diffusers' interface); this base owns everything that map implies, so a ``Tiny*Pipeline`` keeps only the maths
of its ``__call__``. A saved pipeline is one folder per component and ``model_index.json`` written last, whose
entries name components the way diffusers does: ``"vae": ["diffusion_lab", "AutoencoderKL"]`` (a diffusers
scheduler: ``["diffusers", "DDIMScheduler"]``); folders written with full module paths
(``["diffusion_lab.models.autoencoder", "AutoencoderKL"]``) still load.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from diffusion_lab import schedulers
from diffusion_lab.utils.checkpoint import (
    clean_stale_temps,
    merge_missing,
    swap_folder,
    temp_sibling,
    write_json_atomic,
)
from diffusion_lab.utils.errors import FileError, check_choice, check_generator, check_int, check_number
from diffusion_lab.utils.torch_utils import randn

__all__ = ["PipelineOutput", "TinyPipeline"]

LIBRARY = "diffusion_lab"
OUTPUT_TYPES = ("pt", "pil", "latent")
DEFAULT_SIZE = 28  # height and width of an MNIST digit: what ``height=None`` / ``width=None`` mean


@dataclass
class PipelineOutput:
    """``images`` (B, C, H, W) in [−1, 1] (or a list of PIL images), the final ``latents`` z_0 (already × s), and
    the intermediate latents when asked."""

    images: torch.Tensor | list
    latents: torch.Tensor
    intermediates: list[torch.Tensor] = field(default_factory=list)
    timesteps: list[int] = field(default_factory=list)

    def __getitem__(self, i):  # out[0] is the images, as with diffusers' outputs
        return (self.images, self.latents)[i]


def _version() -> str:
    """The installed diffusion-lab version, recorded in ``model_index.json`` as diffusers records its own."""
    try:
        return importlib.metadata.version("diffusion-lab")
    except importlib.metadata.PackageNotFoundError:  # a source checkout that was never installed
        return "unknown"


def _is_ours(library: str) -> bool:
    return library == LIBRARY or library.startswith(LIBRARY + ".")


def _scheduler_class(library: str, name: str, where: Path):
    """Our DDPM/DDIM/flow scheduler classes, or a diffusers scheduler class, by (library, class name)."""
    if _is_ours(library):
        if name not in schedulers.__all__:
            raise FileError(f"{where} names an unknown diffusion_lab scheduler {name!r}; ours: {schedulers.__all__}")
        return getattr(schedulers, name)
    if library != "diffusers":
        raise FileError(f"{where} names a scheduler from {library!r}; give a diffusion_lab or diffusers scheduler")
    import diffusers  # lazy: only a folder that names a diffusers scheduler needs diffusers (layers below the bridge do not import it at module level)

    if not hasattr(diffusers, name):
        raise FileError(f"{where} names an unknown diffusers scheduler {name!r}")
    return getattr(diffusers, name)


def _load_scheduler(directory: Path, library: str | None = None):
    """The scheduler saved in ``directory`` (``scheduler_config.json``); ``library`` from ``model_index.json``,
    else the config's ``_module`` (our older folders), else ours when the name is ours."""
    path = directory / "scheduler_config.json"
    try:
        config = json.loads(path.read_text("utf-8"))
        name = config.pop("_class_name")
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise FileError(f"{path} is missing or not a scheduler config ({e}): re-save the pipeline") from e
    module = config.pop("_module", None)
    library = library or module or (LIBRARY if name in schedulers.__all__ else "diffusers")
    return _scheduler_class(library, name, path).from_config(config)


def _save_scheduler(scheduler, directory: Path) -> None:
    """A diffusers-style scheduler saves itself; ours write ``scheduler_config.json`` (with ``_module``)."""
    if hasattr(scheduler, "save_pretrained"):
        scheduler.save_pretrained(directory)
        return
    config = {"_class_name": type(scheduler).__name__, "_module": type(scheduler).__module__, **dict(scheduler.config)}
    write_json_atomic(directory / "scheduler_config.json", config)


class TinyPipeline:
    """The base of every ``Tiny*Pipeline``: a subclass sets ``_component_classes`` (name → class, ``None`` for a
    scheduler), ``_denoiser_name`` (the network whose device and dtype the pipeline reports), optionally
    ``_config_names`` (plain values stored in ``model_index.json``, passed back to ``__init__``) and ``_frozen``
    (components loaded with ``requires_grad_(False)``), and calls :meth:`register_modules` in ``__init__``."""

    _component_classes: ClassVar[dict[str, type | None]] = {}
    _denoiser_name: ClassVar[str] = "unet"
    _config_names: ClassVar[tuple[str, ...]] = ()
    _frozen: ClassVar[tuple[str, ...]] = ()

    def register_modules(self, **components: Any) -> None:
        """Set each component as an attribute (diffusers' name), after checking its class against the map."""
        for name, value in components.items():
            expected = self._component_classes[name]
            if expected is not None and not isinstance(value, expected):
                raise TypeError(f"{name} must be a {expected.__name__}, got {type(value).__name__}")
            setattr(self, name, value)

    # ------------------------------------------------------------------------------------------- components

    @property
    def components(self) -> dict:
        return {name: getattr(self, name) for name in self._component_classes}

    @property
    def denoiser(self) -> torch.nn.Module:
        """The network that predicts the noise / velocity (``unet`` or ``transformer``)."""
        return getattr(self, self._denoiser_name)

    @property
    def vae_scale_factor(self) -> int:
        """f: pixels per latent position along each side (4 for 28×28 → 7×7; the ×4 upscaler's factor too)."""
        return self.vae.config.downsampling

    def check_denoiser_reads_latents(self, extra_channels: int = 0) -> None:
        """``ValueError`` unless the denoiser reads the autoencoder's latent channels (plus ``extra_channels`` of
        conditioning concatenated to them)."""
        reads, latent = self.denoiser.config.in_channels, self.vae.config.latent_channels
        if reads != latent + extra_channels:
            name = {"unet": "U-Net"}.get(self._denoiser_name, self._denoiser_name)
            extra = f" + {extra_channels} of conditioning" if extra_channels else ""
            raise ValueError(f"the {name} reads {reads} channels but the autoencoder's latents have {latent}{extra}")

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {n: m for n, m in self.components.items() if isinstance(m, torch.nn.Module)}

    def to(self, device=None, dtype: torch.dtype | None = None):
        """Move every network component (``pipe.to("cuda")``, ``pipe.to(dtype=torch.float16)``); returns self."""
        for module in self._modules().values():
            module.to(device=device, dtype=dtype)
        return self

    def num_parameters(self) -> dict[str, int]:
        """Parameters per network component."""
        return {n: sum(p.numel() for p in m.parameters()) for n, m in self._modules().items()}

    # -------------------------------------------------------------------------------------- sampling helpers

    def step_kwargs(self, generator: torch.Generator | None, eta: float | None) -> dict:
        """``generator`` and ``eta`` for the scheduler's ``step``, where its signature takes them (diffusers'
        ``prepare_extra_step_kwargs``)."""
        accepts = inspect.signature(self.scheduler.step).parameters
        kw = {"generator": generator} if "generator" in accepts else {}
        if eta is not None and "eta" in accepts:
            kw["eta"] = eta
        return kw

    @staticmethod
    def check_output_type(output_type: object) -> None:
        check_choice("output_type", output_type, OUTPUT_TYPES)

    def check_size(self, height: object, width: object, multiple: int, why: str = "") -> tuple[int, int]:
        """(height, width) as Python ints: ``None`` is the default size (28), anything else a positive multiple of
        ``multiple``; ``why`` explains the multiple. The message names the side and the nearest valid sizes."""
        sides = []
        for name, value in (("height", height), ("width", width)):
            value = DEFAULT_SIZE if value is None else check_int(name, value, minimum=None)
            if value < multiple or value % multiple:
                low = value // multiple * multiple
                near = f"{multiple}" if low < multiple else f"{low} or {low + multiple}"
                raise ValueError(
                    f"height and width must be positive multiples of {multiple}{why}, got {name}={value}; the "
                    f"nearest valid {name}: {near} (e.g. 28x28)"
                )
            sides.append(value)
        return sides[0], sides[1]

    def check_common_inputs(
        self, *, num_inference_steps: object, generator: object, batch: int, eta: object = None,
        output_type: object = "pt", callback: object = None, latents: object = None,
    ) -> tuple[int, float | None]:  # fmt: skip
        """The arguments every ``__call__`` shares, checked once by the error convention (diffusers' ``check_inputs``):
        returns (num_inference_steps, eta) as Python numbers. ``generator``: one, or one per sample (``batch``)."""
        steps = check_int("num_inference_steps", num_inference_steps)
        eta = None if eta is None else check_number("eta", eta, minimum=0)
        check_generator("generator", generator, batch=batch)
        self.check_output_type(output_type)
        if callback is not None and not callable(callback):
            raise TypeError(
                f"callback must be a function callback(i, t, latents) or None, got {type(callback).__name__}"
            )
        if latents is not None and not isinstance(latents, torch.Tensor):
            raise TypeError(f"latents must be a tensor (the starting noise) or None, got {type(latents).__name__}")
        return steps, eta

    def initial_noise(
        self, shape: tuple[int, ...], generator: torch.Generator | None, latents: torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """ε (shape) drawn from ``generator`` on the pipeline's device, or the caller's ``latents`` (same shape)."""
        if latents is None:
            return randn(shape, generator, self.device, dtype)
        if not isinstance(latents, torch.Tensor):
            raise TypeError(f"latents must be a tensor of shape {shape}, got {type(latents).__name__}")
        if tuple(latents.shape) != tuple(shape):
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        if not latents.is_floating_point():
            raise ValueError(f"latents must be a float tensor (standard normal noise), got dtype {latents.dtype}")
        if not torch.isfinite(latents).all():
            raise ValueError("latents contains NaN or infinite values: pass finite noise, e.g. torch.randn(shape)")
        return latents.to(device=self.device, dtype=dtype)

    def prepare_latents(
        self, shape: tuple[int, ...], generator: torch.Generator | None, latents: torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """z_T = σ_init·ε (B, L, h, w): :meth:`initial_noise` times the scheduler's ``init_noise_sigma``."""
        return self.initial_noise(shape, generator, latents, dtype) * getattr(self.scheduler, "init_noise_sigma", 1.0)

    def denoise(self, z, timesteps, predict, step_kw: dict, out: PipelineOutput, callback=None,
                return_intermediates: bool = False, after_step=None) -> torch.Tensor:  # fmt: skip
        """The loop: for each t, z ← scheduler.step(predict(z, t, i), t, z); then ``after_step(z, i)`` (inpainting's
        blend), the intermediates and ``callback(i, t, z)``."""
        for i, t in enumerate(timesteps):
            z = self.scheduler.step(predict(z, t, i), t, z, **step_kw).prev_sample
            if after_step is not None:
                z = after_step(z, i)
            if return_intermediates:
                out.intermediates.append(z.cpu())
                out.timesteps.append(int(t))
            if callback is not None:
                callback(i, int(t), z)
        return z

    def decode_latents(self, z: torch.Tensor, out: PipelineOutput, output_type: str) -> PipelineOutput:
        """Fill ``out``: latents z_0, and images x = D(z_0 / s) clamped to [−1, 1] as a tensor or PIL list."""
        out.latents = z
        if output_type == "latent":
            out.images = z
            return out
        x = self.vae.decode(z / self.vae.config.scaling_factor).sample.clamp(-1, 1)  # (B, C, H, W)
        if output_type == "pil":
            arr = ((x + 1) * 127.5).round().to(torch.uint8).cpu().permute(0, 2, 3, 1).numpy()
            out.images = [Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a) for a in arr]
        else:
            out.images = x
        return out

    # ------------------------------------------------------------------------------------------- save / load

    def _save_component(self, name: str, component, directory: Path) -> None:
        """One component into ``directory`` (a subclass overrides it for a component without ``save_pretrained``)."""
        if self._component_classes[name] is None:
            _save_scheduler(component, directory)
        else:
            component.save_pretrained(directory)

    @classmethod
    def _load_component(cls, name: str, library: str, directory: Path, device):
        expected = cls._component_classes[name]
        if expected is None:
            return _load_scheduler(directory, library)
        if "device" in inspect.signature(expected.from_pretrained).parameters:
            module = expected.from_pretrained(directory, device=device).eval()
            return module.requires_grad_(False) if name in cls._frozen else module
        return expected.from_pretrained(directory)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """One folder per component and ``model_index.json``, laid out like diffusers'.

        The save is atomic as a whole: the new pipeline is built in a sibling temporary folder
        (``.<name>.tmp-<pid>-…``), the files of the old folder that the pipeline does not own (anything but
        ``model_index.json`` and the component folders: ``caption_bins.json``, a student's notes) and the extra
        files inside its component folders are brought over (hard links), and the complete new folder is swapped in
        (:func:`~diffusion_lab.utils.checkpoint.swap_folder`). Until then the old pipeline loads whole; a save killed
        at any moment never leaves a mix, and its leftovers are removed at the next save. A folder that holds the
        working directory (``save_pretrained(".")``) or is a symbolic link is written in place instead:
        ``model_index.json`` out first and in last, so an interrupted save leaves a folder that
        :meth:`from_pretrained` refuses rather than a silent mix.
        """
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise FileError(f"{directory} is a file, not a folder: give save_pretrained a folder path")
        index: dict[str, Any] = {"_class_name": type(self).__name__, "_diffusion_lab_version": _version()}
        index.update({key: getattr(self, key) for key in self._config_names})
        absolute = Path(os.path.abspath(directory))
        cwd = Path.cwd()
        if directory.is_symlink() or cwd == absolute or absolute in cwd.parents:
            (directory / "model_index.json").unlink(missing_ok=True)
            self._write_components(directory, index)
            return directory
        absolute.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(absolute.parent, absolute.name)
        tmp = temp_sibling(absolute)
        try:
            self._write_components(tmp, index, keep_from=absolute if absolute.is_dir() else None)
            swap_folder(tmp, absolute)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    def _write_components(self, directory: Path, index: dict[str, Any], keep_from: Path | None = None) -> None:
        """Each component into its folder, then the files of ``keep_from`` that the save does not own, then
        ``model_index.json`` (last)."""
        for name, component in self.components.items():
            (directory / name).mkdir(parents=True, exist_ok=True)
            self._save_component(name, component, directory / name)
            library = type(component).__module__.split(".")[0]
            index[name] = [LIBRARY if library == LIBRARY else library, type(component).__name__]
        if keep_from is not None:
            merge_missing(keep_from, directory, skip=("model_index.json",))
        write_json_atomic(directory / "model_index.json", index)

    @classmethod
    def read_index(cls, directory: Path) -> dict:
        """``model_index.json`` of a folder of this class, or a :class:`FileError` that says what is wrong."""
        path = directory / "model_index.json"
        if not path.is_file():
            raise FileError(
                f"{directory} holds no model_index.json: is it a folder written by save_pretrained? (an interrupted "
                "save writes it last, so save again)"
            )
        try:
            index = json.loads(path.read_text("utf-8"))
        except ValueError as e:
            raise FileError(f"{path} is not valid JSON ({e}): save the pipeline again") from e
        stored = index.get("_class_name") if isinstance(index, dict) else None
        if stored != cls.__name__:
            raise FileError(
                f"{directory} holds a {stored}, not a {cls.__name__}: load it with {stored}.from_pretrained(...)"
            )
        return index

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, scheduler=None, device=None):
        """Load a folder written by :meth:`save_pretrained` (networks in eval mode); ``scheduler`` replaces the
        stored one. A missing, foreign or incomplete folder raises :class:`FileError`."""
        directory = Path(directory)
        index = cls.read_index(directory)
        kwargs: dict[str, Any] = {}
        for name, expected in cls._component_classes.items():
            if name == "scheduler" and scheduler is not None:
                kwargs[name] = scheduler
                continue
            entry = index.get(name)
            if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
                raise FileError(f"{directory}/model_index.json has no valid entry for {name!r} (got {entry!r})")
            library, class_name = entry
            if expected is not None and (not _is_ours(library) or class_name != expected.__name__):
                raise FileError(
                    f"{directory}/model_index.json names {library}.{class_name} for {name!r}; "
                    f"{cls.__name__} takes a diffusion_lab {expected.__name__}"
                )
            if not (directory / name).is_dir():
                raise FileError(f"{directory} has no {name}/ folder: the save is incomplete, save the pipeline again")
            kwargs[name] = cls._load_component(name, library, directory / name, device)
        for key in cls._config_names:
            if key not in index:
                raise FileError(f"{directory}/model_index.json has no {key!r}: save the pipeline again")
            kwargs[key] = index[key]
        return cls(**kwargs)
