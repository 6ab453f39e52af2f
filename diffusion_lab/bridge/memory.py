"""A memory model of the real recipes: peak GPU memory, CPU RAM and download size from parameter counts, dtypes,
placement and activation sizes — so a table cell that was never measured says what it is: *modelled*, by these
formulas, from these counts.

Notation (all sizes in bytes; b = bytes per element of a dtype: fp32 4, fp16 / bf16 2, int8 1)

=========  ==================================================================================================
P          parameters of a model; P₃₂ of them in its class's ``_keep_in_fp32_modules`` (T5's ``wo``: kept in fp32
           when loaded in fp16, and not quantised in 8 bits); P_lin in the weights of its other ``nn.Linear`` layers
           (what 8-bit quantisation turns into int8); P_buf its floating-point buffers (cast and moved with it)
H, W       image height and width in pixels; f = 8 the VAE's downsampling; h = H/f, w = W/f the latent's
B          images per call; B' = 2B with classifier-free guidance (the pipelines batch the unconditional and the
           conditional prediction), B otherwise
=========  ==================================================================================================

Formulas (each a field of :class:`MemoryEstimate`, so a table can show the breakdown)

1. **Weights** of a model in dtype d: fp32 4P; fp16 4P₃₂ + 2(P − P₃₂); bf16 2P; int8 4P₃₂ + P_lin + 2(P − P₃₂ −
   P_lin) (bitsandbytes LLM.int8: linear weights in int8, everything else fp16; its per-row scales, < 0.1 %, are
   left out). Buffers add P_buf·b(d).
2. **Latents**: B'·C_lat·h·w·b (a few MiB; the scheduler's copy and the noise are of the same order).
3. **Denoiser features** (SDPA attention): k·B'·D·(h·w/p²)·b, where D is the denoiser's width at its highest
   resolution (UNet: ``block_out_channels[0]``; MMDiT: the hidden size), p its patch size (UNet 1, MMDiT 2) and k the
   number of such maps alive at the peak (the skip connections kept for the up path, the GEGLU / GELU feed-forward
   intermediates, norms): a property of the architecture, **fitted once** to a meta-device trace of the real
   diffusers module (:func:`trace_peak_bytes`) at 1024² — SDXL UNet k = 14.0, SD3 MMDiT k = 12.5 — and checked by
   the tests at other sizes, batches and dtypes.
4. **Attention maps** (eager softmax only; SDPA never materialises them): 2·B'·heads·N²·b for the largest
   self-attention (scores and probabilities alive together), N = h·w/a² + T tokens (a = the latent downsampling of
   that level, T the text tokens that join it: SDXL a = 2, 10 heads, T = 0; SD3 a = 2, 24 heads, T = 77 + 256). The
   maps are computed where the other activations are smaller: the denoiser's peak is max(features, maps + r·features)
   with r = 0.6 (fitted like k).
5. **VAE decode** at full resolution: 3·C_up·H·W·b — the decoder's last upsampling holds its input, the upsampled
   map and the convolution's output, C_up = the decoder's channels there (SDXL / SD3 VAE: 256). At 1024² in fp32:
   3 GiB, the largest activation of an SDXL image (the trace gives exactly 3.000·256·H·W·4). With
   ``vae.enable_tiling()`` the decode runs on tiles of the VAE's ``sample_size`` (1024 px; diffusers tiles only
   above it): 3·C_up·t²·b plus the assembled image and its tiles, 2·3·H·W·b. SDXL's ``force_upcast`` in fp16:
   the VAE is cast to fp32 for the decode (weights 4P instead of 2P while it runs, b = 4).
6. **Text encoders**: at most 8·T·d_ff·4 per call (the MLP intermediates in fp32, an upper bound: T5-XXL's trace is
   37 MiB). Negligible beside the rest; kept so the breakdown is complete.

7. **Models without a fitted shape** (the ControlNet and SVD of notebook 16's family table):
   :attr:`Recipe.traced_denoiser` and :attr:`Recipe.traced_decode` carry :func:`trace_peak_bytes` of the real module
   at the call's size, in place of formulas 3-5. A video's latents count its frames (:attr:`Recipe.frames`).

**Placement** (GPU peak = the largest phase: text encoding, denoising, decoding)

- ``gpu``: every model resident, GPU peak = ΣW + the phase's activations.
- ``model_offload`` (``enable_model_cpu_offload``): one model on the GPU at a time (accelerate offloads the previous
  model before the next one's forward), peak = max over models of (W_model + its activations); a model that runs
  with the denoiser at every step (:attr:`Recipe.alongside`: a ControlNet) is on the GPU with it.
- ``sequential_offload``: one layer at a time, peak = the largest single module's own parameters + activations.
- ``cpu``: nothing on the GPU (the full-size CPU benchmark), CPU RAM = ΣW + the largest phase's activations.

**CPU RAM** on a GPU recipe: ΣW in the load dtype — ``from_pretrained`` builds the pipeline in CPU RAM before
``.to("cuda")``, and the offloaded recipes keep every model there. The Python process, torch and the CUDA context
(1-3 GB) are not included (:attr:`MemoryEstimate.cpu_ram_bytes` says "weights and activations", nothing else).

**Downloads**: P·b(file dtype) per model (safetensors: the header is negligible): the ``fp16`` variant files store
every tensor in fp16; a repository without them (``madebyollin/sdxl-vae-fp16-fix``) is downloaded in fp32.

Assumptions stated once: the CUDA caching allocator reserves more than it hands out (fragmentation, typically 5-15 %),
cuDNN / cuBLAS workspaces and ``torch.compile`` buffers are not modelled; a measured *reserved* peak is therefore
above these figures and a measured *allocated* peak close to them. The traces count tensors, not kernels' scratch
buffers: measured for real on the CPU (``benchmarks/memory_tables.py --measure-cpu``, fresh process, ``ru_maxrss``),
the SDXL VAE's decode took 0.33 / 0.98 GiB at 256² / 512² in fp32 where formula 5 (and the trace) say 0.19 / 0.75.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from diffusion_lab.bridge.full_size import full_components
from diffusion_lab.utils.errors import check_choice, check_int

__all__ = [
    "DTYPE_BYTES",
    "PLACEMENTS",
    "ModelSpec",
    "spec_from_module",
    "weight_bytes",
    "DenoiserShape",
    "VaeShape",
    "Recipe",
    "MemoryEstimate",
    "estimate_memory",
    "Download",
    "download_bytes",
    "trace_peak_bytes",
    "attention_record_bytes",
    "full_size_specs",
    "SDXL_UNET_SHAPE",
    "SD3_MMDIT_SHAPE",
    "SDXL_VAE_SHAPE",
    "SD3_VAE_SHAPE",
    "GIB",
]

GIB = 2**30
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
PLACEMENTS = ("gpu", "model_offload", "sequential_offload", "cpu")
_ACTIVATION_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 2}  # an 8-bit model computes (and keeps buffers) in fp16


@dataclass(frozen=True)
class ModelSpec:
    """Parameter counts of one model (see the notation above); from :func:`spec_from_module` on a meta-device build."""

    name: str
    params: int
    fp32_params: int = 0
    linear_params: int = 0
    largest_module_params: int = 0
    buffer_elements: int = 0

    def __post_init__(self):
        for name in ("params", "fp32_params", "linear_params", "largest_module_params", "buffer_elements"):
            check_int(name, getattr(self, name), minimum=0)
        if self.fp32_params + self.linear_params > self.params:
            raise ValueError(
                f"fp32_params + linear_params must not exceed params ({self.fp32_params} + {self.linear_params} > "
                f"{self.params})"
            )


def spec_from_module(name: str, module: torch.nn.Module) -> ModelSpec:
    """Count a module's parameters the way :func:`weight_bytes` needs them: all, those under its class's
    ``_keep_in_fp32_modules``, the other ``nn.Linear`` weights, the largest module's own parameters and the float
    buffers. Build the module on the ``meta`` device: counting costs no memory."""
    keep = set(getattr(module, "_keep_in_fp32_modules", None) or ())
    fp32 = linear = largest = 0
    for mod_name, sub in module.named_modules():
        own = sum(p.numel() for p in sub.parameters(recurse=False))
        largest = max(largest, own)
        if keep & set(mod_name.split(".")):
            fp32 += own
        elif isinstance(sub, torch.nn.Linear):
            linear += sub.weight.numel()
    buffers = sum(b.numel() for b in module.buffers() if b.is_floating_point())
    params = sum(p.numel() for p in module.parameters())
    return ModelSpec(name, params, fp32, linear, largest, buffers)


def weight_bytes(spec: ModelSpec, dtype: str) -> int:
    """Bytes of a model's weights (and float buffers) loaded in ``dtype`` (formula 1)."""
    check_choice("dtype", dtype, tuple(DTYPE_BYTES))
    p, p32, lin = spec.params, spec.fp32_params, spec.linear_params
    if dtype == "fp32":
        w = 4 * p
    elif dtype == "fp16":
        w = 4 * p32 + 2 * (p - p32)
    elif dtype == "bf16":
        w = 2 * p
    else:  # int8
        w = 4 * p32 + lin + 2 * (p - p32 - lin)
    return w + spec.buffer_elements * _ACTIVATION_BYTES[dtype]


@dataclass(frozen=True)
class DenoiserShape:
    """What sets a denoiser's activations (formulas 3 and 4). ``features`` and ``attention_share`` are fitted to a
    meta-device trace (:func:`trace_peak_bytes`) of the real module."""

    width: int  # UNet block_out_channels[0]; MMDiT hidden size
    patch: int  # 1 for a UNet, the patch size of an MMDiT
    heads: int  # heads of the largest self-attention
    attn_downsample: int  # latent downsampling of that attention level (UNet level 2: 2; MMDiT: the patch size)
    text_tokens: int  # text tokens joining that attention (MMDiT joint attention), 0 for a UNet's self-attention
    features: float  # k of formula 3
    attention_share: float = 0.6  # r of formula 4


@dataclass(frozen=True)
class VaeShape:
    """The VAE's decode (formula 5)."""

    latent_channels: int
    up_channels: int = 256  # decoder channels at its last upsampling (SDXL / SD3 VAE)
    factor: int = 8
    tile: int = 1024  # pixels: the config's sample_size; tiling starts above it


# Fitted to trace_peak_bytes of the real modules at 1024², B' = 2, fp16 (tests/test_memory.py re-checks other sizes):
SDXL_UNET_SHAPE = DenoiserShape(width=320, patch=1, heads=10, attn_downsample=2, text_tokens=0, features=14.0)
SD3_MMDIT_SHAPE = DenoiserShape(width=1536, patch=2, heads=24, attn_downsample=2, text_tokens=77 + 256, features=12.5)
SDXL_VAE_SHAPE = VaeShape(latent_channels=4)
SD3_VAE_SHAPE = VaeShape(latent_channels=16)


def full_size_specs(model: str, *, with_t5: bool = True) -> dict[str, ModelSpec]:
    """:class:`ModelSpec` of every component of a full-size model of :mod:`.full_size` (``"sdxl"``,
    ``"sdxl-refiner"``, ``"sd3"``), counted on a meta-device build of its published configuration (about a second)."""
    comps = full_components(model, device="meta", dtype=torch.float32, with_t5=with_t5)
    return {name: spec_from_module(name, module) for name, module in comps.items() if module is not None}


@dataclass(frozen=True)
class Recipe:
    """One row of a table: the models (name → (spec, dtype)), which model is the denoiser and which the VAE, the
    image, guidance, attention, placement and VAE knobs."""

    name: str
    models: dict[str, tuple[ModelSpec, str]]
    denoiser: str
    denoiser_shape: DenoiserShape | None
    vae: str
    vae_shape: VaeShape
    text_encoders: dict[str, tuple[int, int]] = field(default_factory=dict)  # name → (tokens T, d_ff)
    height: int = 1024
    width: int = 1024
    batch: int = 1
    cfg: bool = True
    attention: str = "sdpa"
    placement: str = "gpu"
    vae_tiling: bool = False
    vae_upcast: bool = False  # force_upcast: an fp16 VAE decodes in fp32
    alongside: tuple[str, ...] = ()  # models that run in the denoising phase with the denoiser (a ControlNet)
    frames: int = 1  # video: latents of every frame go through the denoiser together
    traced_denoiser: int | None = None  # bytes from trace_peak_bytes, replacing formulas 3-4 (no fitted shape)
    traced_decode: int | None = None  # bytes from trace_peak_bytes, replacing formula 5

    def __post_init__(self):
        check_choice("attention", self.attention, ("sdpa", "eager"))
        check_choice("placement", self.placement, PLACEMENTS)
        for name in ("height", "width", "batch"):
            check_int(name, getattr(self, name))
        check_int("frames", self.frames)
        if self.denoiser_shape is None and self.traced_denoiser is None:
            raise ValueError("denoiser_shape is required unless traced_denoiser gives the activations")
        for role in (self.denoiser, self.vae, *self.text_encoders, *self.alongside):
            if role not in self.models:
                raise ValueError(f"models has no {role!r} (the denoiser, the VAE and the text encoders must be in it)")


@dataclass(frozen=True)
class MemoryEstimate:
    """Every term of the model, in bytes (see the module docstring); ``*_gib`` properties for tables."""

    recipe: str
    weights: dict[str, int]  # per model, in its dtype
    weights_total: int
    latents: int
    text_activations: int
    denoiser_features: int
    attention_maps: int
    denoiser_activations: int  # formula 4's max(features, maps + r·features)
    vae_decode: int
    vae_upcast_extra: int  # fp32 minus fp16 VAE weights while an upcast decode runs
    phase_peaks: dict[str, int]  # "text" / "denoise" / "decode" → GPU bytes (CPU bytes for placement "cpu")
    peak_phase: str
    gpu_peak: int
    cpu_ram: int

    @property
    def gpu_peak_gib(self) -> float:
        return self.gpu_peak / GIB

    @property
    def cpu_ram_gib(self) -> float:
        return self.cpu_ram / GIB


def estimate_memory(recipe: Recipe) -> MemoryEstimate:
    """Peak GPU memory and CPU RAM of ``recipe`` by the formulas of the module docstring."""
    weights = {name: weight_bytes(spec, dtype) for name, (spec, dtype) in recipe.models.items()}
    total = sum(weights.values())
    den_spec, den_dtype = recipe.models[recipe.denoiser]
    b = _ACTIVATION_BYTES[den_dtype]
    bb = recipe.batch * (2 if recipe.cfg else 1)  # B'
    shape, vae = recipe.denoiser_shape, recipe.vae_shape
    h, w = recipe.height // vae.factor, recipe.width // vae.factor
    latents = bb * recipe.frames * vae.latent_channels * h * w * b
    # 3. features and 4. attention maps (or the traced activations of a model without a fitted shape)
    if recipe.traced_denoiser is not None:
        features, maps = recipe.traced_denoiser, 0
    else:
        features = int(shape.features * bb * shape.width * (h * w) / shape.patch**2 * b)
        tokens = h * w // shape.attn_downsample**2 + shape.text_tokens
        maps = 2 * bb * shape.heads * tokens**2 * b if recipe.attention == "eager" else 0
    denoiser_act = max(features, maps + int(shape.attention_share * features)) if maps else features
    # 5. VAE decode
    vae_spec, vae_dtype = recipe.models[recipe.vae]
    decode_dtype = "fp32" if recipe.vae_upcast else vae_dtype
    bv = DTYPE_BYTES[decode_dtype]
    side_h, side_w = recipe.height, recipe.width
    tiled = recipe.vae_tiling and max(side_h, side_w) > vae.tile
    if tiled:
        side_h, side_w = min(side_h, vae.tile), min(side_w, vae.tile)
    decode = 3 * vae.up_channels * side_h * side_w * bv
    if tiled:
        decode += 2 * 3 * recipe.height * recipe.width * bv
    if recipe.traced_decode is not None:
        decode = recipe.traced_decode
    upcast_extra = weight_bytes(vae_spec, "fp32") - weights[recipe.vae] if recipe.vae_upcast else 0
    # 6. text encoders, one call at a time (prompt and negative prompt are encoded separately)
    text_act = {name: 8 * tokens_ * d_ff * 4 for name, (tokens_, d_ff) in recipe.text_encoders.items()}
    text = max(text_act.values(), default=0)

    if recipe.placement in ("gpu", "cpu"):
        phases = {
            "text": total + text,
            "denoise": total + latents + denoiser_act,
            "decode": total + latents + upcast_extra + decode,
        }
    elif recipe.placement == "model_offload":
        phases = {
            "text": max((weights[n] + text_act[n] for n in text_act), default=0),
            "denoise": weights[recipe.denoiser] + sum(weights[n] for n in recipe.alongside) + latents + denoiser_act,
            "decode": weights[recipe.vae] + upcast_extra + latents + decode,
        }
    else:  # sequential_offload: one module's own parameters at a time
        largest = max(weight_bytes(ModelSpec(n, s.largest_module_params), d) for n, (s, d) in recipe.models.items())
        phases = {"text": largest + text, "denoise": largest + latents + denoiser_act, "decode": largest + decode}
    peak_phase = max(phases, key=phases.get)
    peak = phases[peak_phase]
    gpu_peak = 0 if recipe.placement == "cpu" else peak
    cpu_ram = peak if recipe.placement == "cpu" else total
    return MemoryEstimate(
        recipe=recipe.name,
        weights=weights,
        weights_total=total,
        latents=latents,
        text_activations=text,
        denoiser_features=features,
        attention_maps=maps,
        denoiser_activations=denoiser_act,
        vae_decode=decode,
        vae_upcast_extra=upcast_extra,
        phase_peaks=phases,
        peak_phase=peak_phase,
        gpu_peak=gpu_peak,
        cpu_ram=cpu_ram,
    )


@dataclass(frozen=True)
class Download:
    """One model's files on the hub: the repository, the model and the dtype its files are stored in."""

    repo: str
    spec: ModelSpec
    file_dtype: str  # "fp16" for the fp16 variant files, "fp32" for a repository without them


def download_bytes(items: list[Download] | tuple[Download, ...]) -> dict[str, int]:
    """Bytes to download per repository and in total (``"total"``): P·b(file dtype) per model. Each (repository,
    model name) is counted once: the hub cache keeps a file downloaded by an earlier cell."""
    out: dict[str, int] = {}
    seen = set()
    for item in items:
        check_choice("file_dtype", item.file_dtype, ("fp32", "fp16", "bf16"))
        key = (item.repo, item.spec.name, item.file_dtype)
        if key in seen:
            continue
        seen.add(key)
        out[item.repo] = out.get(item.repo, 0) + item.spec.params * DTYPE_BYTES[item.file_dtype]
    out["total"] = sum(out.values())
    return out


def attention_record_bytes(
    layer_tokens: list[int] | tuple[int, ...], text_tokens: int, steps: int, upsample_side: int, b: int = 4
) -> dict[str, int]:
    """CPU RAM of recording cross-attention maps (notebook 10, §6): one (N_l, T) map per ``attn2`` layer l and step,
    averaged over heads, kept in fp32 (b = 4). ``stored`` = steps·Σ_l N_l·T·b (the list of maps at native size);
    ``upsampled`` = steps·L·T·s²·b for each upsampled to s×s (a list comprehension of them); ``stacked`` the same
    again (``torch.stack`` copies them), so the as-written peak is stored + upsampled + stacked; ``native_mean`` =
    Σ over the distinct N of N·T·b: a running sum per resolution, upsampled once at the end."""
    check_int("steps", steps)
    check_int("text_tokens", text_tokens)
    check_int("upsample_side", upsample_side)
    stored = steps * sum(n * text_tokens * b for n in layer_tokens)
    upsampled = steps * len(layer_tokens) * text_tokens * upsample_side**2 * b
    native = sum(n * text_tokens * b for n in set(layer_tokens))
    return {
        "stored": stored,
        "upsampled": upsampled,
        "stacked": upsampled,
        "peak_as_written": stored + 2 * upsampled,
        "native_mean": native,
    }


class _PeakTrace(TorchDispatchMode):
    """Live bytes of the tensors created inside the mode (views of existing storages excluded), and their peak."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage()._cdata for a in tree_flatten((args, kwargs or {}))[0] if torch.is_tensor(a)}
        for t in tree_flatten(out)[0]:
            if not torch.is_tensor(t):
                continue
            key = t.untyped_storage()._cdata
            if key in self._seen or key in inputs:
                continue
            self._seen.add(key)
            n = t.untyped_storage().nbytes()
            self.live += n
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._free, key, n)
        return out

    def _free(self, key: int, n: int) -> None:
        self.live -= n
        self._seen.discard(key)


def trace_peak_bytes(fn) -> int:
    """Peak bytes of the tensors ``fn()`` creates and holds at once, traced op by op (``TorchDispatchMode``) — on
    ``meta`` tensors this measures a full-size forward pass's activations without allocating them. What the CUDA
    caching allocator adds (rounding, fragmentation, workspaces) is not included."""
    with torch.inference_mode(), _PeakTrace() as trace:
        out = fn()
    del out
    return int(math.ceil(trace.peak))
