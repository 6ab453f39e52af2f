"""LoRA (Hu et al. 2021): low-rank updates of a frozen model's attention weights, through ``peft``.

=====================  ============  ==================================================================================
code                   symbol        meaning
=====================  ============  ==================================================================================
``W``                  W₀            a frozen weight of the pretrained model, (d_out, d_in) (``nn.Linear.weight``)
``lora_A``             A             (r, d_in), the down-projection; random at the start (peft: Kaiming-uniform)
``lora_B``             B             (d_out, r), the up-projection; **zero** at the start, so ΔW = 0
``rank``               r             the rank of ΔW = B·A, r ≪ min(d_in, d_out) (LoRA §7.2 tries r = 1 … 64)
``alpha``              α             a constant; the update is scaled by α/r (LoRA §4.1); ``alpha=None`` → α = r
``scale``              s             a user multiplier at sampling time: ΔW = s·(α/r)·B·A (s = 0 is the base model)
``target_modules``     —             which ``nn.Linear`` layers get an update (names, see :data:`CROSS_ATTENTION`)
=====================  ============  ==================================================================================

h = W₀x + (α/r)·B·A·x (LoRA Eq. 3 with the α/r scaling of §4.1); merged, W' = W₀ + (α/r)·B·A (§4.1), unmerged,
W₀ = W' − (α/r)·B·A. A and B hold r·(d_in + d_out) numbers instead of d_in·d_out, and only they are trained and
saved. ``peft.inject_adapter_in_model`` replaces each targeted ``nn.Linear`` in place (the old layer becomes its
``base_layer``), so the model stays our :class:`~diffusion_lab.models.unet.UNet` and the pipeline keeps working;
while a LoRA is in place the ``state_dict`` names change (save the adapter with :func:`save_lora`, or merge it with
``remove_lora(unet, merge=True)``). On the tiny U-Net :data:`CROSS_ATTENTION` adapts the four projections of the
cross-attention, where a word's meaning for the image is decided. The SDXL recipe through diffusers is
:mod:`diffusion_lab.bridge.lora_sdxl`; notebook 12 has the measurements and the reasons.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from diffusion_lab.training import finetune
from diffusion_lab.training.loop import optimizer_step
from diffusion_lab.utils.checkpoint import save_tensors_atomic, write_json_atomic
from diffusion_lab.utils.errors import FileError, check_int, check_number
from diffusion_lab.utils.progress import tqdm
from diffusion_lab.utils.settings import pick
from diffusion_lab.utils.validation import check_images

__all__ = [
    "CROSS_ATTENTION",
    "SELF_ATTENTION",
    "ALL_ATTENTION",
    "LORA_FILE",
    "LORA_CONFIG_FILE",
    "LoraCounts",
    "lora_delta",
    "lora_parameter_count",
    "add_lora",
    "lora_layers",
    "lora_parameters",
    "count_lora_parameters",
    "save_lora",
    "load_lora",
    "weights_file_bytes",
    "size_report",
    "merge_lora",
    "unmerge_lora",
    "set_lora_scale",
    "remove_lora",
    "train_lora",
]

CROSS_ATTENTION = ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out")
"""The tiny U-Net's cross-attention projections (peft matches a name when a module's name ends with it)."""
SELF_ATTENTION = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out")
ALL_ATTENTION = CROSS_ATTENTION + SELF_ATTENTION
LORA_FILE = "lora.safetensors"
LORA_CONFIG_FILE = "lora_config.json"
FORMAT = "diffusion_lab.lora/1"


def lora_delta(A: torch.Tensor, B: torch.Tensor, alpha: float) -> torch.Tensor:
    """ΔW = (α/r)·B·A (LoRA Eq. 3 with the α/r scaling of §4.1): A (r, d_in), B (d_out, r) → (d_out, d_in)."""
    if A.ndim != 2 or B.ndim != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(
            f"need A (r, d_in) and B (d_out, r) with the same r, got {tuple(A.shape)} and {tuple(B.shape)}"
        )
    r = A.shape[0]
    return (alpha / r) * (B @ A)  # (d_out, d_in)


def lora_parameter_count(d_in: int, d_out: int, rank: int) -> int:
    """Numbers in A and B: r·(d_in + d_out), against d_in·d_out for the full matrix."""
    return rank * (d_in + d_out)


def _check_rank(rank, max_rank: int | None = None) -> int:
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise TypeError(f"rank must be an integer >= 1 (typically 4 to 64), got {rank!r} of type {type(rank).__name__}")
    upper = f" and at most {max_rank} (the smallest d_in or d_out of the targeted layers)" if max_rank else ""
    if rank < 1 or (max_rank is not None and rank > max_rank):
        raise ValueError(f"rank must be >= 1{upper}; typical values are 4 to 64, got {rank}")
    return int(rank)


def _check_alpha(alpha, rank: int) -> float:
    if alpha is None:
        return float(rank)  # α = r: scale α/r = 1
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a number > 0 (or None for alpha = rank), got {alpha!r}")
    return float(alpha)


def _matches(name: str, targets: str | Sequence[str]) -> bool:
    """peft's rule: a string is a regular expression matched against the whole name; a list matches a name equal
    to one of its entries or ending with "." + entry."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def _targeted(model: nn.Module, targets: str | Sequence[str]) -> dict[str, nn.Module]:
    """The modules ``targets`` selects; an error listing the model's linear layers when it selects none."""
    if not isinstance(targets, str) and (
        not isinstance(targets, Sequence) or not targets or not all(isinstance(t, str) for t in targets)
    ):
        raise TypeError(f"target_modules must be a regular expression or a non-empty list of names, got {targets!r}")
    found = {n: m for n, m in model.named_modules() if n and _matches(n, targets) and not isinstance(m, LoraLayer)}
    found = {n: m for n, m in found.items() if not any(n.startswith(o + ".") for o in found)}  # outermost only
    if not found:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".lora_" not in n]
        raise ValueError(
            f"target_modules={targets!r} matches no layer of this {type(model).__name__}; its linear layers are: "
            + ", ".join(linear)
        )
    bad = {n: type(m).__name__ for n, m in found.items() if not isinstance(m, (nn.Linear, nn.Conv2d))}
    if bad:
        raise ValueError(f"LoRA here adapts nn.Linear (or nn.Conv2d) layers; target_modules also matched {bad}")
    return found


def add_lora(
    unet: nn.Module,
    rank: int = 4,
    alpha: float | None = None,
    target_modules: str | Sequence[str] = CROSS_ATTENTION,
    dropout: float = 0.0,
    adapter_name: str = "default",
    seed: int | None = None,
) -> nn.Module:
    """Put LoRA layers (A random, B = 0) on ``target_modules`` of ``unet`` in place and freeze everything else.

    ``alpha=None`` means α = r (scale 1). ``seed`` makes A reproducible without touching the caller's random state.
    Returns the same ``unet`` (still a UNet: ``peft.inject_adapter_in_model``, not ``get_peft_model``).
    """
    if adapter_name in getattr(unet, "peft_config", {}):
        raise ValueError(f"this model already has a LoRA adapter named {adapter_name!r}: pass another adapter_name")
    targets = _targeted(unet, target_modules)
    max_rank = min(min(m.weight.shape[:2]) for m in targets.values())
    rank = _check_rank(rank, max_rank)
    alpha = _check_alpha(alpha, rank)
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        lora_dropout=dropout,
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):  # A is drawn on the CPU, then moved next to its base layer
        if seed is not None:
            torch.manual_seed(seed)
        inject_adapter_in_model(config, unet, adapter_name=adapter_name)
    for name, p in unet.named_parameters():  # peft already does this; said here so that it is visible
        p.requires_grad_(".lora_" in name and f".{adapter_name}." in name)
    return unet


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """Module name → peft LoRA layer, for every adapted layer of ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def _require_lora(model: nn.Module, adapter_name: str | None = None) -> dict[str, LoraLayer]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"this {type(model).__name__} has no LoRA layers: call add_lora (or load_lora) first")
    if adapter_name is not None and adapter_name not in getattr(model, "peft_config", {}):
        raise ValueError(f"no LoRA adapter named {adapter_name!r}; this model has {sorted(model.peft_config)}")
    return layers


def lora_parameters(model: nn.Module, adapter_name: str = "default") -> list[nn.Parameter]:
    """The LoRA parameters (every A and B) of ``adapter_name``: what the optimiser trains."""
    _require_lora(model, adapter_name)
    return [p for n, p in model.named_parameters() if ".lora_" in n and f".{adapter_name}." in n]


@dataclass(frozen=True)
class LoraCounts:
    """Trainable LoRA parameters against the base model's parameters."""

    lora: int
    base: int

    @property
    def ratio(self) -> float:
        """How many times more parameters full fine-tuning would train."""
        return self.base / self.lora

    def __str__(self) -> str:
        return f"LoRA {self.lora:,} parameters vs {self.base:,} in the model ({self.ratio:.0f}× fewer)"


def count_lora_parameters(model: nn.Module, adapter_name: str = "default") -> LoraCounts:
    """LoRA parameters of ``adapter_name`` vs all parameters of the base model (the LoRA ones not counted)."""
    lora = sum(p.numel() for p in lora_parameters(model, adapter_name))
    base = sum(p.numel() for n, p in model.named_parameters() if ".lora_" not in n)
    return LoraCounts(lora, base)


def save_lora(model: nn.Module, directory: str | os.PathLike, adapter_name: str = "default") -> Path:
    """Write the adapter only: ``lora.safetensors`` (A and B of every layer, peft's key names without the adapter
    name) and ``lora_config.json`` (rank, alpha, targets), each atomically. Returns the weights file's path."""
    _require_lora(model, adapter_name)
    config = model.peft_config[adapter_name]
    if any(layer.merged for layer in lora_layers(model).values()):
        raise ValueError("the LoRA is merged into the weights: unmerge_lora(model) before saving the adapter")
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)  # {"…to_q.lora_A.weight": (r, d_in), …}
    directory = Path(directory)
    path = directory / LORA_FILE
    save_tensors_atomic(path, state, {"format": FORMAT})
    targets = config.target_modules
    write_json_atomic(
        directory / LORA_CONFIG_FILE,
        {
            "format": FORMAT,
            "rank": config.r,
            "alpha": config.lora_alpha,
            "target_modules": targets if isinstance(targets, str) else sorted(targets),
            "dropout": config.lora_dropout,
            "model_class": type(model).__name__,
            "parameters": sum(v.numel() for v in state.values()),
        },
    )
    return path


def load_lora(model: nn.Module, directory: str | os.PathLike, adapter_name: str = "default") -> nn.Module:
    """Add the adapter saved by :func:`save_lora` to ``model`` (built like the one it was trained on) and load its
    weights; a missing file, a missing or unexpected key or a wrong shape is an error that names it."""
    directory = Path(directory)
    config_path, path = directory / LORA_CONFIG_FILE, directory / LORA_FILE
    if not config_path.is_file() or not path.is_file():
        raise FileError(f"no LoRA at {directory}: need {LORA_FILE} and {LORA_CONFIG_FILE} (written by save_lora)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        state = load_file(str(path))
    except (ValueError, OSError, SafetensorError) as e:
        raise FileError(f"cannot read the LoRA at {directory} (truncated?): {e}") from e
    if config.get("format") != FORMAT:
        raise FileError(f"{config_path} is not a diffusion_lab LoRA (format {config.get('format')!r})")
    add_lora(model, config["rank"], config["alpha"], config["target_modules"], config["dropout"], adapter_name)
    expected = get_peft_model_state_dict(model, adapter_name=adapter_name)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        _delete_adapter(model, adapter_name)
        raise FileError(
            f"the LoRA at {directory} does not fit this {type(model).__name__} (trained on another configuration?): "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shapes {wrong[:3]}"
        )
    set_peft_model_state_dict(model, state, adapter_name=adapter_name)
    return model


def _delete_adapter(model: nn.Module, adapter_name: str) -> None:
    """Take one adapter out again (all LoRA layers when it was the only one)."""
    if set(model.peft_config) == {adapter_name}:
        remove_lora(model)
        return
    for layer in lora_layers(model).values():
        layer.delete_adapter(adapter_name)
    del model.peft_config[adapter_name]


def weights_file_bytes(model: nn.Module) -> int:
    """Bytes of the base model's weights as one safetensors file (LoRA parameters left out), written to a temporary
    folder and measured: what full fine-tuning would have to save."""
    state = {
        k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k
    }  # the names without LoRA
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))
        return path.stat().st_size


def size_report(
    model: nn.Module,
    lora_file: str | os.PathLike,
    full_weights_file: str | os.PathLike | None = None,
    adapter_name: str = "default",
) -> dict[str, float]:
    """Parameters and file bytes of the LoRA against the whole model: ``{"lora_parameters", "model_parameters",
    "parameter_ratio", "lora_bytes", "full_bytes", "file_ratio"}``. ``lora_file``: the LoRA's safetensors file (or
    its folder); ``full_weights_file``: the model's weights file (default: measured by :func:`weights_file_bytes`)."""
    counts = count_lora_parameters(model, adapter_name)
    lora_file = Path(lora_file)
    if lora_file.is_dir():
        lora_file = lora_file / LORA_FILE
    lora_bytes = lora_file.stat().st_size
    full_bytes = Path(full_weights_file).stat().st_size if full_weights_file else weights_file_bytes(model)
    return {
        "lora_parameters": counts.lora,
        "model_parameters": counts.base,
        "parameter_ratio": counts.ratio,
        "lora_bytes": lora_bytes,
        "full_bytes": full_bytes,
        "file_ratio": full_bytes / lora_bytes,
    }


def merge_lora(model: nn.Module) -> nn.Module:
    """W' = W₀ + s·(α/r)·B·A in every LoRA layer (peft's ``merge``, with a NaN check): the forward pass is then a
    plain matrix product. Layers already merged are left as they are."""
    for layer in _require_lora(model).values():
        if not layer.merged:
            layer.merge(safe_merge=True)
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """W₀ = W' − s·(α/r)·B·A in every merged LoRA layer (peft's ``unmerge``): the base weights back (float
    rounding aside), the adapter separate again."""
    for layer in _require_lora(model).values():
        if layer.merged:
            layer.unmerge()
    return model


def set_lora_scale(model: nn.Module, scale: float, adapter_name: str = "default") -> nn.Module:
    """ΔW = scale·(α/r)·B·A from now on (peft's ``set_scale``): 0 is the base model, 1 the trained adapter, values
    in between interpolate. The adapter must not be merged (a merged ΔW is baked into W')."""
    layers = _require_lora(model, adapter_name)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number (0 = base model, 1 = full LoRA), got {scale!r}")
    if any(layer.merged for layer in layers.values()):
        raise ValueError("the LoRA is merged into the weights: unmerge_lora(model) before changing its scale")
    for layer in layers.values():
        layer.set_scale(adapter_name, float(scale))
    return model


def remove_lora(model: nn.Module, merge: bool = False) -> nn.Module:
    """Take every LoRA layer out and put its base ``nn.Linear`` back; with ``merge=True`` the update is merged in
    first (peft's "merge and unload": a plain model with the fine-tuned weights, saved by ``save_pretrained``).
    Every parameter is trainable again afterwards, as in a freshly loaded model."""
    for name, layer in _require_lora(model).items():
        if merge and not layer.merged:
            layer.merge(safe_merge=True)
        elif not merge and layer.merged:
            layer.unmerge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    model.requires_grad_(True)
    return model


def _check_images_prompts(images, prompts, n_channels: int | None = None) -> list[str]:
    check_images(images, "images", channels=n_channels, value_range=(-1.0, 1.0))
    if isinstance(prompts, str):
        prompts = [prompts] * len(images)
    prompts = list(prompts)
    if len(prompts) != len(images) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"need one prompt (a string) per image, or one for all: got {len(prompts)} for {len(images)}")
    return prompts


def _check_positive(name: str, value, integer: bool = True) -> None:
    """TypeError for a wrong type (a bool, 2.0 for a count, a string), ValueError for a value <= 0."""
    if integer:
        check_int(name, value, minimum=None)
    else:
        check_number(name, value)
    if not value > 0:
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'} > 0, got {value!r}")


def train_lora(
    pipe,
    images: torch.Tensor,
    prompts: str | Sequence[str],
    steps: int | None = None,
    rank: int = 4,
    alpha: float | None = None,
    lr: float = 3e-3,
    batch_size: int = 8,
    seed: int = 0,
    target_modules: str | Sequence[str] = CROSS_ATTENTION,
    adapter_name: str = "default",
    progress: bool = True,
) -> list[float]:
    """Fine-tune a LoRA on the tiny pipeline's U-Net; returns the loss of every step.

    images (N, 1, 28, 28) in [−1, 1] with one prompt each (or one for all). If ``pipe.unet`` has no adapter named
    ``adapter_name`` one is added (``rank``, ``alpha``, ``target_modules``), else that one trains further.

    1. z_0 = s·μ(x): the latents, encoded once (:func:`diffusion_lab.training.finetune.encode_images`).
    2. Each step: a batch of (z_0, prompt) drawn with replacement, t and ε drawn, L = ‖v − v_θ(z_t, t, y)‖²
       (:func:`diffusion_lab.training.finetune.denoising_loss`), AdamW on A and B only; the text encoder and W₀ stay frozen.
    ``steps`` defaults to 300 (20 in quick mode). All randomness comes from ``seed``.
    """
    prompts = _check_images_prompts(images, prompts)
    steps = pick(full=300, quick=20) if steps is None else steps
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        _check_positive(name, value)
    _check_positive("lr", lr, integer=False)
    unet = pipe.unet
    if adapter_name not in getattr(unet, "peft_config", {}):
        add_lora(unet, rank, alpha, target_modules, adapter_name=adapter_name, seed=seed)
    params = lora_parameters(unet, adapter_name)

    latents = finetune.encode_images(pipe, images)  # (N, L, h, w)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    text_flags = [p.requires_grad for p in pipe.text_encoder.parameters()]
    pipe.text_encoder.requires_grad_(False)  # no graph through the text encoder: only A and B get gradients
    was_training = unet.training
    unet.train()  # LoRA dropout, if any
    losses: list[float] = []
    try:
        for step in tqdm(range(steps), desc="LoRA", disable=not progress, mininterval=1.0):
            idx = torch.randint(0, len(latents), (batch_size,), generator=generator)  # (B,)
            loss = finetune.denoising_loss(pipe, latents[idx.to(latents.device)], [prompts[i] for i in idx], generator)
            optimizer_step(loss, optimizer, params, step=step)
            losses.append(loss.item())
    finally:
        unet.train(was_training)
        for p, flag in zip(pipe.text_encoder.parameters(), text_flags, strict=True):
            p.requires_grad_(flag)
    return losses
