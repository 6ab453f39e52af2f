"""LoRA: fine-tuning a diffusion model through low-rank updates of its attention weights, with ``peft``.

Notation
--------
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

The maths (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models")
--------------------------------------------------------------------------------
A linear layer computes h = W₀x. Fine-tuning replaces W₀ by W₀ + ΔW; LoRA's hypothesis is that the ΔW a new task
needs has low "intrinsic rank", so it writes ΔW = B·A with B (d_out, r) and A (r, d_in) and trains only A and B
(W₀ stays frozen). Eq. 3 of the paper, with the α/r scaling of §4.1:

    h = W₀x + ΔWx = W₀x + (α/r)·B·A·x.

1. **Start at the base model.** B is initialised to zero, so ΔW = 0 and the first forward pass is the pretrained
   model's, exactly (A is random so that the gradient of B, ∂L/∂B = (α/r)·(∂L/∂h)·(Ax)ᵀ, is not zero).
2. **Parameters.** A and B hold r·(d_in + d_out) numbers instead of d_in·d_out: for one 64 × 64 projection of the
   tiny model at r = 4, 512 instead of 4,096 (8×); for one 1280 × 1280 projection of SDXL, 10,240 instead of
   1,638,400 (160×). Only those are trained and saved, so a LoRA file is megabytes where the model is gigabytes.
3. **Why α/r.** With α fixed, changing r does not change the size of the initial updates much, so the learning
   rate found for one rank works for another (§4.1: "we simply set α to the first r we try and do not tune it").
4. **Merge.** After training, W' = W₀ + (α/r)·B·A is one matrix of W₀'s shape: the merged layer is a plain linear
   layer again and sampling costs nothing extra (§4.1, "No additional inference latency").
5. **Unmerge.** W₀ = W' − (α/r)·B·A recovers the base weights (up to float rounding), so one base model can carry
   several adapters and switch between them; a scale s multiplies ΔW (s = 0 gives the base model back).

Which layers (Hu et al. §7.1 adapt W_q and W_v of a transformer; for Stable Diffusion the usual choice, that of
diffusers' LoRA training scripts, is all four projections of every attention, ``to_q``, ``to_k``, ``to_v``,
``to_out``). On the tiny U-Net, :data:`CROSS_ATTENTION` adapts the four projections of the cross-attention
(``attn2``): K and V read the text, so they decide what a word means to the image (Custom Diffusion, Kumari et al.
2023, trains only those two); Q and the output projection decide how the image uses what it read. ``to_out`` is
included because it is the one projection after the attention that can change the *size* of the update the block
adds to the image tokens; it costs a quarter of the LoRA parameters (64·r + 64·r of 4 × (64·r + 64·r)).

peft, in this module
--------------------
``peft.inject_adapter_in_model(LoraConfig(...), unet)`` replaces each targeted ``nn.Linear`` by a ``peft`` LoRA
layer *in place* (the old layer becomes its ``base_layer``) and freezes every other parameter. The model stays a
:class:`~diffusion_lab.models.unet.UNet`, so the pipeline keeps working (``get_peft_model`` would wrap it in a
``PeftModel``; in peft 0.21.2 that works too, despite our dataclass ``config``, but the pipeline would then hold a
wrapper). While a LoRA is in place the U-Net's ``state_dict`` names change (``to_q.weight`` →
``to_q.base_layer.weight``): save the adapter with :func:`save_lora`, or merge it in with
``remove_lora(unet, merge=True)`` and save the plain U-Net.

SDXL through diffusers
----------------------
The same API drives a real-size model: :func:`add_sdxl_lora` calls ``pipe.unet.add_adapter(LoraConfig(...))``
(diffusers' PEFT integration), :func:`train_sdxl_lora` is the DreamBooth-LoRA-SDXL training loop of diffusers'
examples reduced to its core, and :func:`save_sdxl_lora` writes the file that ``pipe.load_lora_weights`` reads, so
``set_adapters``, ``fuse_lora`` / ``unfuse_lora`` and ``disable_lora`` / ``enable_lora`` work on it as on any LoRA
from the hub. Everything runs on the tiny offline SDXL of :func:`diffusion_lab.bridge.tiny.tiny_sdxl` on a CPU.

The real-weights recipe on a 16 GB GPU
--------------------------------------
:func:`sdxl_lora_recipe` picks real weights when :func:`diffusion_lab.bridge.hub.check_environment` allows it and the
tiny pipeline otherwise. The knobs, and why each (this is what diffusers' ``train_dreambooth_lora_sdxl.py`` does
with ``--mixed_precision fp16 --gradient_checkpointing --train_batch_size 1 --gradient_accumulation_steps 4``;
the change that brought it under 16 GB is diffusers PR #4470, "Allow SDXL LoRA to be run with less than 16GB of VRAM"):

- **fp16 base, fp32 LoRA.** The frozen U-Net in half precision (bf16 on Ampere and later, fp16 on a T4) halves its
  memory; the few LoRA parameters stay fp32 so that Adam's small updates are not rounded away. In fp16 a gradient
  scaler (``torch.amp.GradScaler``) keeps small gradients from underflowing; bf16 needs none.
- **Precomputed latents and text embeddings.** The VAE encodes the 3–5 training images once (its posterior mean and
  std are kept; a latent is sampled from them each step) and both text encoders encode the prompt once (with the
  pooled vector and the six ``add_time_ids``); then the VAE and the text encoders leave the GPU
  (``offload_encoders=True``): only the U-Net trains.
- **Encode with the fp16-fix VAE** (``bridge.COMPONENT_IDS["sdxl-vae-fp16-fix"]`` = ``madebyollin/sdxl-vae-fp16-fix``):
  SDXL's own VAE overflows in fp16 (NaN latents); the fixed one does not.
- **Gradient checkpointing** (``unet.enable_gradient_checkpointing()``): keep only block inputs in the forward pass
  and recompute the rest during the backward pass: about one more forward pass of compute for a large cut in
  activation memory.
- **Batch 1 + gradient accumulation 4**: an effective batch of 4 at the activation memory of 1.
- **Rank 4–16, 1024² images, 500–1000 steps, lr 1e-4** (constant, AdamW), as in the diffusers example.
- **8-bit AdamW** (bitsandbytes) is optional: its saving is in the optimiser's two moments, 8 bytes → 2 bytes per
  *trained* parameter, which for a LoRA is tens of megabytes (it matters for full fine-tuning, not here).

Memory of that recipe — an ESTIMATE from parameter counts (parameters × bytes), not a measurement:

=========================================  ===============  ==================  ======================================
what                                       parameters       bytes each          memory
=========================================  ===============  ==================  ======================================
U-Net, frozen, fp16                        2,567,463,684    2                   5.13 GB (the whole run)
CLIP ViT-L text encoder, fp16              123,060,480      2                   0.25 GB (precompute only, then CPU)
OpenCLIP bigG text encoder + proj., fp16   694,659,840      2                   1.39 GB (precompute only, then CPU)
VAE (fp16-fix), fp16                       83,653,863       2                   0.17 GB (precompute only, then CPU)
LoRA r = 4, 560 to_q/k/v/to_out.0          5,806,080        4 + 4 + 8 = 16      0.09 GB (fp32 weights, grads, Adam)
LoRA r = 16, same layers                   23,224,320       16                  0.37 GB (8-bit Adam: 0.23 GB)
=========================================  ===============  ==================  ======================================

So about 5.2–5.5 GB of weights and optimiser state during training (6.9 GB while everything is on the GPU for the
precompute); the rest of a 16 GB card is for activations, which parameter counts do not give: with gradient
checkpointing, batch 1 at 1024² (128 × 128 latents) they are reported to fit. For comparison, full fine-tuning of
the U-Net with fp32 weights, gradients and Adam needs 16 bytes × 2.57 B = 41 GB before any activation. The LoRA
file at r = 4 is 5,806,080 × 4 bytes = 23 MB, against 5.1 GB for the U-Net's fp16 weights (221×).
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

import diffusers
import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from diffusion_lab.bridge import hub as bridge
from diffusion_lab.bridge.generate import check_size, sdxl_text_embeddings
from diffusion_lab.bridge.hub import quiet_hf
from diffusion_lab.training import finetune
from diffusion_lab.utils.checkpoint import save_tensors_atomic, write_json_atomic
from diffusion_lab.utils.errors import FileError
from diffusion_lab.utils.settings import pick

__all__ = [
    "CROSS_ATTENTION",
    "SELF_ATTENTION",
    "ALL_ATTENTION",
    "SDXL_ATTENTION",
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
    "add_sdxl_lora",
    "train_sdxl_lora",
    "save_sdxl_lora",
    "sdxl_lora_recipe",
]

CROSS_ATTENTION = ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out")
"""The tiny U-Net's cross-attention projections (peft matches a name when a module's name ends with it)."""
SELF_ATTENTION = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out")
ALL_ATTENTION = CROSS_ATTENTION + SELF_ATTENTION
SDXL_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
"""Every attention projection of a diffusers U-Net (self and cross), the target of diffusers' SDXL LoRA script."""
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
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a tensor (N, C, H, W) in [-1, 1], got {getattr(images, 'shape', images)!r}")
    if len(images) == 0:
        raise ValueError("images is empty: pass at least one example of the concept to learn")
    if n_channels is not None and images.shape[1] != n_channels:
        raise ValueError(f"images must have {n_channels} channel(s), got shape {tuple(images.shape)}")
    if isinstance(prompts, str):
        prompts = [prompts] * len(images)
    prompts = list(prompts)
    if len(prompts) != len(images) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"need one prompt (a string) per image, or one for all: got {len(prompts)} for {len(images)}")
    return prompts


def _check_positive(name: str, value, integer: bool = True) -> None:
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
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
        for _ in tqdm(range(steps), desc="LoRA", disable=not progress, mininterval=1.0):
            idx = torch.randint(0, len(latents), (batch_size,), generator=generator)  # (B,)
            loss = finetune.denoising_loss(pipe, latents[idx.to(latents.device)], [prompts[i] for i in idx], generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        unet.train(was_training)
        for p, flag in zip(pipe.text_encoder.parameters(), text_flags, strict=True):
            p.requires_grad_(flag)
    return losses


def add_sdxl_lora(
    pipe,
    rank: int = 4,
    alpha: float | None = None,
    target_modules: Sequence[str] = SDXL_ATTENTION,
    adapter_name: str = "default",
    seed: int | None = None,
):
    """``pipe.unet.add_adapter(LoraConfig(...))``: LoRA on the U-Net's attention projections (diffusers' PEFT
    integration), A ~ N(0, 1/r) and B = 0 (``init_lora_weights="gaussian"``, as the DreamBooth-LoRA-SDXL script),
    every other weight frozen, and the LoRA parameters in fp32 whatever the U-Net's dtype. Returns ``pipe``."""
    unet = pipe.unet
    if adapter_name in getattr(unet, "peft_config", {}):
        raise ValueError(f"the U-Net already has a LoRA adapter named {adapter_name!r}: pass another adapter_name")
    targets = _targeted(unet, target_modules)
    rank = _check_rank(rank, min(min(m.weight.shape[:2]) for m in targets.values()))
    alpha = _check_alpha(alpha, rank)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(target_modules), bias="none"
    )
    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        unet.add_adapter(config, adapter_name=adapter_name)
    for name, p in unet.named_parameters():
        if ".lora_" in name and f".{adapter_name}." in name:
            p.data = p.data.float()  # fp32 LoRA parameters beside an fp16 base (diffusers' cast_training_params)
    return pipe


@torch.no_grad()
def _sdxl_inputs(pipe, images, prompts: list[str]):
    """Everything the U-Net needs, computed once: the VAE posterior (mean, std) (N, 4, H/f, W/f) × 2, the text
    states (N, 77, D), pooled vectors (N, P) and the six micro-conditioning numbers (N, 6)."""

    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and vae.config.force_upcast  # SDXL's own VAE overflows in fp16
    dtype = torch.float32 if upcast else vae.dtype
    if upcast:
        with quiet_hf():
            vae.to(torch.float32)
    try:
        dist = vae.encode(images.to(vae.device, dtype)).latent_dist
        mean, std = dist.mean, dist.std  # (N, 4, h, w) each
    finally:
        if upcast:
            with quiet_hf():
                vae.to(torch.float16)
    s = vae.config.scaling_factor

    embeds, pooled = sdxl_text_embeddings(pipe, prompts)  # (N, 77, D), (N, P)
    h, w = images.shape[-2:]
    # micro-conditioning (SDXL paper §2.2): original size, crop top-left, target size; no crops here
    time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32).repeat(len(images), 1)  # (N, 6)
    return mean * s, std * s, embeds, pooled, time_ids


def _adamw(params, lr: float, device: torch.device, use_8bit_adam: bool | None):
    """bitsandbytes' 8-bit AdamW when asked (``True``) or when ``None`` and it is importable on a CUDA device."""
    if use_8bit_adam is not False:
        try:
            import bitsandbytes as bnb  # lazy: optional, GPU only (8-bit AdamW)  # type: ignore[import-not-found]
        except ImportError:
            if use_8bit_adam:
                raise ImportError("use_8bit_adam=True needs bitsandbytes: pip install bitsandbytes") from None
        else:
            if use_8bit_adam or device.type == "cuda":
                return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=1e-4)
    return torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)  # weight decay as diffusers' script (adam_weight_decay)


def train_sdxl_lora(
    pipe,
    images,
    prompt: str | Sequence[str],
    steps: int | None = None,
    rank: int = 4,
    alpha: float | None = None,
    lr: float = 1e-4,
    batch_size: int = 1,
    gradient_accumulation_steps: int = 4,
    gradient_checkpointing: bool = False,
    offload_encoders: bool = False,
    use_8bit_adam: bool | None = None,
    max_grad_norm: float = 1.0,
    seed: int = 0,
    adapter_name: str = "default",
    progress: bool = True,
) -> list[float]:
    """The DreamBooth-LoRA-SDXL recipe reduced to its core; returns the loss of every optimiser step.

    images: a tensor (N, 3, H, W) in [−1, 1] or a list of PIL images (preprocessed by ``pipe.image_processor``);
    prompt: one for all images or one each. Runs where ``pipe.unet`` is, in its dtype; an adapter named
    ``adapter_name`` is added if missing (:func:`add_sdxl_lora`).

    1. Precompute: latent posteriors (VAE), text states + pooled vectors (both encoders), ``add_time_ids``. With
       ``offload_encoders`` the VAE and text encoders then move to the CPU (move them back before sampling).
    2. Each micro-step: z_0 ~ N(μ, σ²) (the cached posterior), ε ~ N(0, I), t ~ U{0 … T − 1},
       z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε (``DDPMScheduler.from_config(pipe.scheduler.config).add_noise``: SDXL's Euler
       scheduler's own ``add_noise`` works in its σ-space and only at its sampling timesteps, so the training
       scripts build a DDPM scheduler with the same betas), L = ‖ε − ε_θ(z_t, t, c, c_pool, time_ids)‖² (or the v
       target if the scheduler says ``v_prediction``), divided by ``gradient_accumulation_steps``.
    3. Every ``gradient_accumulation_steps`` micro-steps: gradient clipping at ``max_grad_norm``, AdamW step (8-bit
       if ``use_8bit_adam`` and bitsandbytes is there), through a GradScaler when the U-Net is fp16.
    ``steps`` (optimiser steps) defaults to 500 (2 in quick mode).
    """
    if not isinstance(images, torch.Tensor):
        images = list(images)
        if not images:
            raise ValueError("images is empty: pass the 3-5 pictures of the subject to learn")
        images = pipe.image_processor.preprocess(images)  # (N, 3, H, W) in [-1, 1]
    prompts = _check_images_prompts(images, prompt, n_channels=3)
    steps = pick(full=500, quick=2) if steps is None else steps
    for name, value in (("steps", steps), ("batch_size", batch_size), ("gradient_accumulation_steps", gradient_accumulation_steps)):  # fmt: skip
        _check_positive(name, value)
    _check_positive("lr", lr, integer=False)

    check_size(images.shape[-2], images.shape[-1], pipe.vae_scale_factor)

    unet = pipe.unet
    device, dtype = unet.device, unet.dtype
    if adapter_name not in getattr(unet, "peft_config", {}):
        add_sdxl_lora(pipe, rank, alpha, adapter_name=adapter_name, seed=seed)
    params = [p for n, p in unet.named_parameters() if ".lora_" in n and f".{adapter_name}." in n]

    mean, std, embeds, pooled, time_ids = _sdxl_inputs(pipe, images, prompts)  # step 1
    if offload_encoders:
        for module in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            if module is not None:
                module.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    mean, std = mean.to(device, torch.float32), std.to(device, torch.float32)  # (N, 4, h, w)
    embeds, pooled, time_ids = embeds.to(device, dtype), pooled.to(device, dtype), time_ids.to(device, dtype)
    noise_scheduler = diffusers.DDPMScheduler.from_config(pipe.scheduler.config)
    prediction_type = noise_scheduler.config.prediction_type

    optimizer = _adamw(params, lr, device, use_8bit_adam)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    generator = torch.Generator().manual_seed(seed)
    was_training = unet.training
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()  # diffusers checkpoints only in training mode
    losses: list[float] = []
    try:
        for _ in tqdm(range(steps), desc="SDXL LoRA", disable=not progress, mininterval=1.0):
            total = 0.0
            for _ in range(gradient_accumulation_steps):
                idx = torch.randint(0, len(mean), (batch_size,), generator=generator).to(device)  # (B,)
                z0 = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=generator).to(device)  # (B, 4, h, w)
                noise = torch.randn(z0.shape, generator=generator).to(device)  # (B, 4, h, w)
                t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
                t = t.to(device)  # (B,)
                z_t = noise_scheduler.add_noise(z0, noise, t)  # √ᾱ_t z_0 + √(1 − ᾱ_t) ε
                target = noise if prediction_type == "epsilon" else noise_scheduler.get_velocity(z0, noise, t)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    pred = unet(
                        z_t.to(dtype),
                        t,
                        encoder_hidden_states=embeds[idx],
                        added_cond_kwargs={"text_embeds": pooled[idx], "time_ids": time_ids[idx]},
                        return_dict=False,
                    )[0]  # (B, 4, h, w)
                loss = torch.nn.functional.mse_loss(pred.float(), target.float()) / gradient_accumulation_steps
                scaler.scale(loss).backward()
                total += loss.item()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            losses.append(total)
    finally:
        unet.train(was_training)
        if gradient_checkpointing:
            unet.disable_gradient_checkpointing()
    return losses


def save_sdxl_lora(pipe, directory: str | os.PathLike, adapter_name: str = "default") -> Path:
    """``StableDiffusionXLPipeline.save_lora_weights`` of the U-Net's adapter, with its ``LoraConfig`` in the file's
    metadata (so that ``load_lora_weights`` gets α right when α ≠ r), written to a temporary folder and renamed into
    place. Returns the path of ``pytorch_lora_weights.safetensors``, which ``pipe.load_lora_weights(directory)``
    reads."""

    unet = pipe.unet
    if adapter_name not in getattr(unet, "peft_config", {}):
        raise ValueError(f"the U-Net has no LoRA adapter named {adapter_name!r}: call add_sdxl_lora first")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory))
    try:
        diffusers.StableDiffusionXLPipeline.save_lora_weights(
            tmp,
            unet_lora_layers=get_peft_model_state_dict(unet, adapter_name=adapter_name),
            unet_lora_adapter_metadata=unet.peft_config[adapter_name].to_dict(),
            safe_serialization=True,
        )
        for f in tmp.iterdir():
            os.replace(f, directory / f.name)
    finally:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    return directory / "pytorch_lora_weights.safetensors"


def sdxl_lora_recipe(
    images,
    prompt: str,
    output_dir: str | os.PathLike,
    env=None,
    steps: int | None = None,
    rank: int = 4,
    lr: float = 1e-4,
    gradient_accumulation_steps: int = 4,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
):
    """The whole recipe, for a notebook: real SDXL on a GPU when ``env.use_real``, the tiny SDXL otherwise.

    1. ``env = bridge.check_environment()`` (if not given); ``pipe = bridge.load_pipeline("sdxl-base", env)``
       (fp16/bf16 weights on a GPU); with real weights the VAE is swapped for the fp16-fix one.
    2. Images resized to the model's size (1024² real, 64² tiny); the pipeline goes to ``env.device``.
    3. :func:`train_sdxl_lora` with the 16 GB knobs (gradient checkpointing, batch 1 × accumulation 4, encoders
       offloaded after the precompute); ``steps`` defaults to 800 real, 2 tiny.
    4. :func:`save_sdxl_lora` into ``output_dir``; the pipeline returns to ``env.device``, ready to sample.
    ``cache_dir``: where the tiny stand-in is kept (see :func:`diffusion_lab.bridge.hub.load_pipeline`). Returns (pipe,
    losses, path of the LoRA file). Only the tiny path runs in this project's tests; the real one is untested here.
    """

    env = env if env is not None else bridge.check_environment()
    pipe = bridge.load_pipeline("sdxl-base", env, cache_dir=cache_dir)
    if not bridge.is_tiny(pipe):
        pipe.vae = diffusers.AutoencoderKL.from_pretrained(
            bridge.COMPONENT_IDS["sdxl-vae-fp16-fix"], torch_dtype=pipe.unet.dtype
        )
    size = pipe.default_sample_size * pipe.vae_scale_factor  # 1024 real, 64 tiny
    if not isinstance(images, torch.Tensor):
        images = list(images)
        if not images:
            raise ValueError("images is empty: pass the 3-5 pictures of the subject to learn")
        images = pipe.image_processor.preprocess(images, height=size, width=size)  # (N, 3, size, size)
    if env.device == "cuda":
        pipe.to("cuda")  # fp16: 5.1 GB U-Net + 1.8 GB encoders and VAE (these leave after the precompute)
    if steps is None:
        steps = 800 if not bridge.is_tiny(pipe) else 2
    losses = train_sdxl_lora(
        pipe,
        images,
        prompt,
        steps=steps,
        rank=rank,
        lr=lr,
        batch_size=1,
        gradient_accumulation_steps=gradient_accumulation_steps,
        gradient_checkpointing=True,
        offload_encoders=env.device == "cuda",
        seed=seed,
        progress=progress,
    )
    path = save_sdxl_lora(pipe, output_dir)
    if env.device == "cuda":
        pipe.to("cuda")
    return pipe, losses, path
