"""The bridge to the real Stable Diffusion XL and 3: model ids, an environment check, tiny offline pipelines and
the sampling loops of ``diffusers`` written out by hand.

Notation
--------
=========================  ==========  ================================================================================
code                       symbol      meaning
=========================  ==========  ================================================================================
``latents``                z_t         the noisy latent, (B, C, H/f, W/f); SDXL C = 4, SD3 C = 16
``vae_scale_factor``       f           pixels per latent (8 for the real models, 2 for the tiny ones here)
``prompt_embeds``          c           per-token text features, (B, L, D): SDXL concatenates CLIP-L and OpenCLIP-bigG
                                       penultimate layers (D = 768 + 1280); SD3 adds T5 tokens along L
``pooled``                 c_pool      one vector per prompt: SDXL's bigG projection (1280), SD3's CLIP-L ⊕ bigG (2048)
``time_ids``               —           SDXL micro-conditioning (orig h, orig w, crop top, crop left, target h, w)
``guidance_scale``         w           classifier-free guidance: ε̃ = ε_∅ + w·(ε_c − ε_∅)  (Ho & Salimans 2022, Eq. 6)
``sigma``                  t           SD3's flow time; Euler step z_{t'} = z_t + (t' − t)·v  (SD3 paper §2)
=========================  ==========  ================================================================================

Indexing: the scheduler's ``timesteps`` run from noisy to clean, as in every diffusers pipeline; the loops below
iterate over them exactly as ``pipe(...)`` does, so with the same seed and scheduler they give the same image.

What is here
------------
- :data:`MODELS`: every hub id the course uses, in one place, with documented alternatives.
- :func:`check_environment`: real weights or tiny pipelines? (GPU present, hub reachable within seconds, a token
  from ``HF_TOKEN`` or a Kaggle secret — the token itself is never printed or stored.)
- :func:`tiny_sdxl`, :func:`tiny_sdxl_refiner`, :func:`tiny_sd3`, :func:`tiny_sd15`, :func:`tiny_taesd`: seeded,
  random-weight pipelines of the real classes, built from small configs with in-memory tokenizers.
- :func:`load_pipeline`: the very ``from_pretrained`` call users run against a hub id, pointed at the hub when the
  environment allows and at a tiny pipeline saved in a local cache otherwise, with a clear message either way.
- :func:`sdxl_generate`, :func:`sd3_generate`: the sampling loops, about twenty lines each, equal to ``pipe(...)``.
- Faults: :func:`check_size`, :func:`decode_latents` (fp16 VAE NaN guard), :func:`suggest_on_oom`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import diffusers
import torch
import transformers

from diffusion_lab.bridge.hub_http import _hub_endpoint, bounded_hub, explain_hub_error
from diffusion_lab.bridge.tiny import (
    tiny_sd3,
    tiny_sd15,
    tiny_sd15_controlnet,
    tiny_sd_turbo,
    tiny_sd_upscaler,
    tiny_sdxl,
    tiny_sdxl_refiner,
    tiny_sdxl_turbo,
    tiny_svd,
    tiny_unclip,
)
from diffusion_lab.training.tiny_sd_io import pretrained_tiny_sd_path
from diffusion_lab.utils.checkpoint import clean_stale_temps, temp_sibling
from diffusion_lab.utils.errors import FileError, check_choice
from diffusion_lab.utils.settings import half_dtype, smoke_mode

__all__ = [
    "MODELS",
    "ModelCard",
    "Environment",
    "check_environment",
    "find_token",
    "tiny_pipeline_path",
    "trained_standin_path",
    "quiet_hf",
    "load_pipeline",
    "is_tiny",
    "bounded_hub",
    "explain_hub_error",
]

HUB_HOST = ("huggingface.co", 443)
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE")
HUB_TIMEOUT = 10.0  # seconds: connect and read, for every hub call load_pipeline makes
STAND_IN_LINE = "STAND-IN (not the real weights: small local models of the same classes, trained on MNIST or random)"
TINY_VERSION = 3  # bump when a tiny_* builder changes, so cached copies are rebuilt


@dataclass(frozen=True)
class ModelCard:
    """One model the course loads: its hub id, the diffusers class, whether its licence must be accepted first,
        other ids to try in order when a repository disappears (the same weights, or the nearest successor with the same
    pipeline class), the tiny random-weight stand-in and, where one is shipped, the folder under ``data/pretrained``
    of a stand-in of the same classes *trained on MNIST* (``trained``)."""

    repo_id: str
    pipeline_class: type
    tiny: Callable[[], object]
    gated: bool = False
    alternatives: tuple[str, ...] = ()
    note: str = ""
    trained: str | None = None


MODELS: dict[str, ModelCard] = {
    "sdxl-base": ModelCard(
        "stabilityai/stable-diffusion-xl-base-1.0",
        diffusers.StableDiffusionXLPipeline,
        tiny_sdxl,
        note="SDXL 1.0 base, 1024², 2.6 B-parameter UNet, two CLIP text encoders",
        trained="sdxl_mnist",
    ),
    "sdxl-refiner": ModelCard(
        "stabilityai/stable-diffusion-xl-refiner-1.0",
        diffusers.StableDiffusionXLImg2ImgPipeline,
        lambda: tiny_sdxl_refiner(tiny_sdxl()),
        note="SDXL refiner: the last ~20 % of the noise levels, bigG text encoder only",
        trained="sdxl_refiner_mnist",
    ),
    "sdxl-turbo": ModelCard(
        "stabilityai/sdxl-turbo",
        diffusers.StableDiffusionXLPipeline,
        tiny_sdxl_turbo,
        note="adversarially distilled SDXL: 1-4 steps, guidance 0, 512²",
    ),
    "sd-turbo": ModelCard(
        "stabilityai/sd-turbo",
        diffusers.StableDiffusionPipeline,
        tiny_sd_turbo,
        note="distilled SD 2.1: 1-4 steps, guidance 0, 512²",
    ),
    "sd3-medium": ModelCard(
        "stabilityai/stable-diffusion-3-medium-diffusers",
        diffusers.StableDiffusion3Pipeline,
        tiny_sd3,
        gated=True,
        alternatives=("stabilityai/stable-diffusion-3.5-medium",),  # a newer model (MMDiT-X), same pipeline class
        note="SD3 medium: 2 B-parameter MMDiT, CLIP-L + bigG + T5-XXL; gated (accept the licence on its page)",
        trained="sd3_mnist",
    ),
    "sd15": ModelCard(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        diffusers.StableDiffusionPipeline,
        tiny_sd15,
        alternatives=("stabilityai/stable-diffusion-2-1-base",),
        note="SD 1.5 (runwayml/stable-diffusion-v1-5 was deleted in 2024; this is its maintained copy), 512²",
        trained="sd15_mnist",
    ),
    # the family beyond text-to-image (diffusion_lab.bridge.family: stand-ins, checks, and the ControlNet loader)
    "sd-x4-upscaler": ModelCard(
        "stabilityai/stable-diffusion-x4-upscaler",
        diffusers.StableDiffusionUpscalePipeline,
        tiny_sd_upscaler,
        alternatives=("sd2-community/stable-diffusion-x4-upscaler",),  # an SD 2.0 release: if Stability removes it
        note="x4 upscaler: low-res RGB concatenated to the latent (UNet in 7 = 4 + 3), noise level as class label",
        trained="sd_x4_upscaler_mnist",
    ),
    "sd15-controlnet-canny": ModelCard(
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        diffusers.StableDiffusionControlNetPipeline,
        tiny_sd15_controlnet,
        note="SD 1.5 + canny ControlNet (lllyasviel/control_v11p_sd15_canny: load with family.load_family_pipeline)",
        trained="sd15_controlnet_mnist",
    ),
    "sd21-unclip": ModelCard(
        "sd2-community/stable-diffusion-2-1-unclip",
        diffusers.StableUnCLIPImg2ImgPipeline,
        tiny_unclip,
        alternatives=("stabilityai/stable-diffusion-2-1-unclip",),
        note="Stable unCLIP 2.1: image variations from a CLIP image embedding (Stability removed its SD 2.x "
        "repositories in Nov 2025; sd2-community keeps the copy)",
    ),
    "svd": ModelCard(
        "stabilityai/stable-video-diffusion-img2vid-xt",
        diffusers.StableVideoDiffusionPipeline,
        tiny_svd,
        gated=True,
        alternatives=("stabilityai/stable-video-diffusion-img2vid",),
        trained="svd_mnist",
        note="Stable Video Diffusion XT: 25 frames from one image; accept the licence on its page (gated)",
    ),
}
"""Hub ids the notebooks use. If a repository disappears, :func:`load_pipeline` tries ``alternatives`` in order;
to pin your own copy, pass ``repo_id=`` to :func:`load_pipeline`. Component ids (loaded by the notebooks as
needed): SDXL fp16-safe VAE ``madebyollin/sdxl-vae-fp16-fix``; preview decoders ``madebyollin/taesdxl`` (SDXL) and
``madebyollin/taesd3`` (SD3)."""


COMPONENT_IDS = {
    "sdxl-vae-fp16-fix": "madebyollin/sdxl-vae-fp16-fix",
    "taesdxl": "madebyollin/taesdxl",
    "taesd3": "madebyollin/taesd3",
}


def find_token() -> tuple[str | None, str | None]:
    """(token, where it came from). Looks in ``HF_TOKEN``, then a Kaggle secret named ``HF_TOKEN`` (on Kaggle
    only), then the token ``hf auth login`` stored. The token is returned to pass as ``token=`` — never print it,
    never paste it into a notebook."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(var):
            return os.environ[var], f"environment variable {var}"
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):
        with contextlib.suppress(Exception):  # no secret attached, or the add-on is off
            from kaggle_secrets import UserSecretsClient  # lazy: exists on Kaggle only  # type: ignore[import-not-found]

            secret = UserSecretsClient().get_secret("HF_TOKEN")
            if secret:
                return secret, "Kaggle secret HF_TOKEN"
    with contextlib.suppress(Exception):
        import huggingface_hub  # lazy: only a call that reaches the hub needs it

        stored = huggingface_hub.get_token()
        if stored:
            return stored, "hf auth login (stored token)"
    return None, None


def _hub_reachable(timeout: float, host: tuple[str, int] = HUB_HOST) -> tuple[bool, str]:
    """Open a TCP connection to the hub in a daemon thread and wait at most ``timeout`` seconds (DNS included, which
    ``socket``'s own timeout does not bound)."""
    result: list[tuple[bool, str]] = []

    def probe() -> None:
        try:
            with socket.create_connection(host, timeout=timeout):
                result.append((True, f"{host[0]} answered"))
        except OSError as exc:
            result.append((False, f"{host[0]} unreachable ({type(exc).__name__})"))

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        return False, f"{host[0]} did not answer within {timeout:g} s"
    return result[0]


@dataclass(frozen=True)
class Environment:
    """What :func:`check_environment` found. ``use_real`` decides hub weights (True) or tiny pipelines (False)."""

    device: str
    gpu_name: str | None
    gpu_memory_gib: float | None
    hub: bool
    token_source: str | None
    use_real: bool
    reasons: tuple[str, ...] = field(default=())

    @property
    def dtype(self) -> torch.dtype:
        """bf16 on GPUs that have it (Ampere and later: A100, H100, L4; no fp16 overflow in SDXL's VAE), fp16 on
        older ones (T4, V100), fp32 on the CPU (no fast half-precision kernels there). ``DIFFUSION_LAB_DTYPE=float16``
        or ``bfloat16`` (:func:`diffusion_lab.utils.settings.half_dtype`, read now) overrides both: on the CPU the
        tiny stand-ins then load and run in the dtype a GPU recipe uses, so its dtype bugs show without a GPU."""
        if (half := half_dtype()) is not None:
            return half
        if self.device != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.get_device_capability()[0] >= 8 else torch.float16

    @property
    def small_gpu(self) -> bool:
        """Under 24 GiB (a 16 GB T4, a 12 GB consumer card): whole pipelines do not stay on the GPU together."""
        return self.device == "cuda" and (self.gpu_memory_gib or 0) < 24

    def __str__(self) -> str:
        gpu = f"{self.gpu_name} ({self.gpu_memory_gib:.0f} GiB)" if self.gpu_name else "none"
        lines = [
            f"GPU:      {gpu}",
            f"hub:      {'reachable' if self.hub else 'not used'}",
            f"token:    {self.token_source or 'none found'}",
            f"weights:  {'REAL (from the hub)' if self.use_real else STAND_IN_LINE}",
        ]
        return "\n".join(lines + [f"  because {r}" for r in self.reasons])


def _truthy(var: str) -> bool:
    return os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}


def _endpoint_host(endpoint: str) -> tuple[str, int]:
    """(host, port) of an endpoint URL: ``https://hf-mirror.com`` → ("hf-mirror.com", 443)."""
    parts = urlsplit(endpoint)
    if not parts.hostname:
        raise ValueError(f"HF_ENDPOINT={endpoint!r} is not a URL such as https://huggingface.co")
    return parts.hostname, parts.port or (80 if parts.scheme == "http" else 443)


def _offline_var() -> str | None:
    """The first of ``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``, ``DIFFUSERS_OFFLINE`` that is set to a true value."""
    return next((var for var in OFFLINE_VARS if _truthy(var)), None)


def check_environment(
    hub_timeout: float = 3.0, allow_cpu: bool = False, probe_host: tuple[str, int] | None = None
) -> Environment:
    """Decide between real weights and tiny pipelines, and say why.

    Real weights need (1) a CUDA GPU — SDXL takes minutes per image on a CPU; ``allow_cpu=True`` lifts this —
    (2) not quick mode (``DIFFUSION_LAB_SMOKE=1``, tests) and no offline switch (``HF_HUB_OFFLINE``,
    ``TRANSFORMERS_OFFLINE`` or ``DIFFUSERS_OFFLINE`` = 1), and (3) the hub answering within ``hub_timeout`` seconds:
    the host of ``$HF_ENDPOINT`` when set (a mirror), else huggingface.co, unless ``probe_host`` names another. Nothing
    here waits longer than that; the network is not touched at all when (1) or (2) already say "tiny"."""
    reasons: list[str] = []
    gpu = torch.cuda.is_available()
    name = mem = None
    if gpu:
        props = torch.cuda.get_device_properties(0)
        name, mem = props.name, props.total_memory / 2**30
    else:
        reasons.append("no CUDA GPU (Kaggle: Settings → Accelerator → GPU; Colab: Runtime → Change runtime type)")
    token, source = find_token()
    del token  # only where it came from is kept
    hub = False
    if smoke_mode():
        reasons.append("quick mode (DIFFUSION_LAB_SMOKE=1): tests never download")
    elif offline := _offline_var():
        reasons.append(f"{offline}=1 (offline mode): the hub was not asked")
    elif not gpu and not allow_cpu:
        reasons.append("the hub was not asked (no GPU to run real weights on)")
    else:
        hub, why = _hub_reachable(hub_timeout, probe_host or _endpoint_host(_hub_endpoint()))
        reasons.append(why)
    use_real = hub and (gpu or allow_cpu)
    if use_real:
        reasons.append("GPU and hub available: loading the real weights")
    return Environment("cuda" if gpu else "cpu", name, mem, hub, source, use_real, tuple(reasons))


def _cache_root() -> Path:
    """Where tiny pipelines are saved: ``$DIFFUSION_LAB_CACHE`` or ``~/.cache/diffusion_lab``."""
    return Path(os.environ.get("DIFFUSION_LAB_CACHE") or Path.home() / ".cache" / "diffusion_lab")


def tiny_pipeline_path(key: str, cache_dir: str | Path | None = None) -> Path:
    """Build the tiny stand-in for ``MODELS[key]`` once, ``save_pretrained`` it (atomically: into a temporary folder
    renamed into place) and return the folder that ``from_pretrained`` loads."""
    card = _card(key)
    root = Path(cache_dir) if cache_dir is not None else _cache_root()
    target = root / "tiny" / f"{key}-v{TINY_VERSION}-diffusers{diffusers.__version__}"  # a stale copy is never reused
    if (target / "model_index.json").exists():
        return target
    if target.exists():  # a folder without its index was not written by this function: damaged, rebuild it
        print(f"the cached tiny pipeline at {_shown(target)} has no model_index.json; rebuilding it")
        _discard(target)
    root.joinpath("tiny").mkdir(parents=True, exist_ok=True)
    clean_stale_temps(root / "tiny", target.name)  # what an interrupted build left (its process has ended)
    tmp = temp_sibling(target)
    try:
        with quiet_hf():
            card.tiny().save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race: use its copy
            if not (target / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def trained_standin_path(key: str) -> Path:
    """The folder of ``MODELS[key]``'s stand-in trained on MNIST (``data/pretrained/<card.trained>``, or under
    ``$DIFFUSION_LAB_DATA``): a diffusers pipeline folder that ``from_pretrained`` loads like a hub id."""
    card = _card(key)
    if card.trained is None:
        shipped = ", ".join(k for k, c in MODELS.items() if c.trained)
        raise ValueError(f"{key!r} has no stand-in trained on MNIST (these have one: {shipped}); use standin='random'")
    return pretrained_tiny_sd_path(card.trained)


_REPOSITORY = Path(__file__).resolve().parents[2]  # the course's checkout (data/pretrained lives there)


def _shown(path: Path) -> str:
    """A path as a message shows it: relative to the course's folder when inside it, ``~`` for the home folder."""
    try:
        return Path(path).resolve().relative_to(_REPOSITORY).as_posix()
    except ValueError:
        return str(path).replace(str(Path.home()), "~")


def _discard(folder: Path) -> None:
    """Remove a damaged cache folder: renamed aside first (a reader never sees half of it), then deleted."""
    aside = folder.with_name(f".{folder.name}.damaged-{os.getpid()}")
    try:
        folder.rename(aside)
    except OSError:  # already gone (another process rebuilt it), or not renamable: delete in place
        aside = folder
    shutil.rmtree(aside, ignore_errors=True)


def _card(key: str) -> ModelCard:
    if not isinstance(key, str):
        raise TypeError(f"key must be a model name (a string), one of {sorted(MODELS)}; got {type(key).__name__}")
    if key not in MODELS:
        raise ValueError(f"unknown model {key!r}; choose one of {sorted(MODELS)}")
    return MODELS[key]


@contextlib.contextmanager
def quiet_hf() -> Iterator[None]:
    """No progress bars and only errors from diffusers/transformers inside the block (saving or loading tiny
    pipelines, ``AutoPipeline.from_pipe``); the previous settings come back afterwards."""
    libs = [diffusers.utils.logging, transformers.utils.logging]
    enabled = [lib.is_progress_bar_enabled() for lib in libs]
    levels = [lib.get_verbosity() for lib in libs]
    for lib in libs:
        lib.disable_progress_bar()
        lib.set_verbosity_error()
    try:
        yield
    finally:
        for lib, on, level in zip(libs, enabled, levels, strict=True):
            lib.set_verbosity(level)
            if on:
                lib.enable_progress_bar()


def load_pipeline(
    key: str,
    env: Environment,
    *,
    repo_id: str | None = None,
    pipeline_class: type | None = None,
    cache_dir: str | Path | None = None,
    strict: bool = False,
    hub_timeout: float = HUB_TIMEOUT,
    standin: str = "random",
    **from_pretrained_kwargs,
):
    """``pipeline_class.from_pretrained(source, ...)`` where ``source`` is the hub id when ``env.use_real`` and the
    tiny local copy otherwise. A gated model without access prints the steps to get it and falls back to the tiny
    pipeline (``strict=True``: raises ``PermissionError`` instead); a repository that disappeared moves on to the
    card's ``alternatives``; a network failure, or a hub that does not answer within ``hub_timeout`` seconds (connect
    and read, each call), falls back to the tiny pipeline with a message. Never silent: every path prints what was
    loaded.

    ``standin``: what stands in for the real weights: ``"random"`` (the tiny random-weight pipeline, built once into
    the cache) or ``"trained"`` (the same classes trained on MNIST, shipped in ``data/pretrained``: its pictures are
    digits; :func:`trained_standin_path`)."""
    card = _card(key)
    cls = pipeline_class or card.pipeline_class
    check_choice("standin", standin, ("random", "trained"))
    if standin == "trained":
        trained_standin_path(key)  # a model without one: the error says so before any hub request
    if isinstance(hub_timeout, bool) or not isinstance(hub_timeout, int | float):
        raise TypeError(f"hub_timeout must be a number of seconds; got {type(hub_timeout).__name__}")
    if not hub_timeout > 0:
        raise ValueError(f"hub_timeout must be positive; got {hub_timeout}")
    if env.use_real:
        token, _ = find_token()
        kwargs = {"dtype": env.dtype, **from_pretrained_kwargs}
        if env.dtype in (torch.float16, torch.bfloat16) and "variant" not in kwargs:
            kwargs["variant"] = "fp16"
        for rid in [repo_id] if repo_id else [card.repo_id, *card.alternatives]:
            try:
                with bounded_hub(hub_timeout):
                    pipe = cls.from_pretrained(rid, token=token, **kwargs)
                print(f"loaded {rid} ({cls.__name__}, {kwargs['dtype']})")
                return pipe
            except Exception as exc:  # noqa: BLE001 - sorted below: gated → raise, missing → next id, else tiny
                if kwargs.get("variant") and "variant" in str(exc) and "variant" not in from_pretrained_kwargs:
                    kwargs.pop("variant")  # no fp16 files in this repo: the full ones, cast at load
                    with contextlib.suppress(Exception), bounded_hub(hub_timeout):
                        return cls.from_pretrained(rid, token=token, **kwargs)
                kind, message = explain_hub_error(exc, rid, hub_timeout) or (None, None)
                if kind == "gated":
                    if strict:
                        raise PermissionError(message) from exc
                    print(f"{message}\nUntil then: the tiny stand-in.")
                    break
                if kind == "missing":
                    print(f"{message}; trying the next id")
                    continue
                if kind == "timeout":
                    print(f"{message}; using the tiny pipeline")
                    break
                print(f"could not load {rid} ({type(exc).__name__}: {str(exc)[:200]}); using the tiny pipeline")
                break
        else:
            print(f"none of {[card.repo_id, *card.alternatives]} could be loaded; using the tiny pipeline")
    from_pretrained_kwargs.setdefault("dtype", env.dtype)  # saved in fp32; half precision as a GPU would load it
    if standin == "trained":
        return _load_trained_standin(key, cls, from_pretrained_kwargs)
    path = tiny_pipeline_path(key, cache_dir)
    try:
        with quiet_hf():
            pipe = cls.from_pretrained(path, local_files_only=True, **from_pretrained_kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure to read our own cache means a damaged copy: rebuild it once
        print(
            f"the cached tiny pipeline at {_shown(path)} is damaged ({type(exc).__name__}: {str(exc)[:160]}); "
            "rebuilding it"
        )
        _discard(path)
        path = tiny_pipeline_path(key, cache_dir)
        with quiet_hf():
            pipe = cls.from_pretrained(path, local_files_only=True, **from_pretrained_kwargs)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    print(f"loaded the TINY stand-in for {card.repo_id} from {_shown(path)} (random weights: the pictures are noise)")
    return pipe


def _load_trained_standin(key: str, cls: type, kwargs: dict):
    path = trained_standin_path(key)
    if not (path / "model_index.json").exists():
        raise FileError(
            f"the MNIST-trained stand-in for {key!r} is missing at {_shown(path)}: it ships with the course's "
            f"repository (data/pretrained/{_card(key).trained}); restore that folder, or pass standin='random'"
        )
    try:
        with quiet_hf():
            pipe = cls.from_pretrained(path, local_files_only=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a shipped folder that does not load is damaged: say which and what to do
        raise FileError(
            f"the MNIST-trained stand-in at {_shown(path)} does not load ({type(exc).__name__}: {str(exc)[:160]}): "
            f"restore data/pretrained/{_card(key).trained} from the repository"
        ) from exc
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    print(
        f"loaded the stand-in for {_card(key).repo_id} TRAINED ON MNIST from {_shown(path)} (small weights: the "
        "pictures are digits, not photos)"
    )
    return pipe


def is_tiny(pipe) -> bool:
    """True for the tiny stand-ins (their VAE has f = 2; every real SD, SDXL and SD3 VAE has f = 8). Decide sizes from
    the pipeline you got, not from the environment: a failed download falls back to tiny."""
    return pipe.vae_scale_factor < 8
