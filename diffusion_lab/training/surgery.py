"""Model surgery on a trained tiny Stable Diffusion: EMA vs raw weights, magnitude pruning and int8 quantization.

=========================  ==============  =========================================================================
code                       symbol          meaning
=========================  ==============  =========================================================================
``w``                      w               one weight tensor of a Conv2d (C_out, C_in, k, k) or Linear (C_out, C_in)
``sparsity``, ``scope``    p               share of the weights set to zero, counted over all weights (``"global"``)
                                           or per tensor (``"per_layer"``); k = ⌊p·N⌋ zeroed of N
``scale``, ``q``           s, q            int8 step s_c = max_j |w_cj| / 127 per output channel, codes
                                           q = round(w / s) ∈ {−127 … 127}, ŵ = s·q, |w − ŵ| ≤ s/2
``ema_decay``              β               θ_ema ← β·θ_ema + (1 − β)·θ after every optimiser step
=========================  ==============  =========================================================================

Magnitude pruning (Han et al. 2015) zeroes the k weights of smallest |w| in the scope, once, without retraining;
int8 (Jacob et al. 2018) is symmetric per-output-channel, either simulated weight-only (:func:`int8_weight_only`)
or PyTorch's dynamic quantization of the Linear layers (:func:`quantize_dynamic_int8`); EMA (Polyak & Juditsky
1992) is compared with the raw last iterate by :func:`ema_vs_raw`. Sizes are the bytes of a real safetensors file
in one of three encodings (:func:`encode_state`: ``"dense"`` fp32; ``"bitmask"`` N/8 mask bytes + 4 bytes per
nonzero; ``"int8"`` N codes + one fp32 scale per channel); quality is digit adherence, attribute adherence and
FID-MNIST with its floor at the same n, as in ``benchmarks/cpu_train.py``. Notebook 12 has the measurements and
why (one global threshold starves the layers with small weights; int8 weight-only keeps the metrics at 26.5 % of
the bytes; EMA mainly buys FID).
"""

from __future__ import annotations

import copy
import math
import numbers
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from safetensors.torch import save
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

from diffusion_lab.mnist.captions import DIGIT_NAMES, attribute_adherence
from diffusion_lab.mnist.classifier import load_classifier
from diffusion_lab.mnist.metrics import evaluate, reference_stats
from diffusion_lab.training.recipes import train_latent_text2img
from diffusion_lab.utils.errors import check_choice

__all__ = [
    "PRUNABLE",
    "SCOPES",
    "ENCODINGS",
    "prunable_weights",
    "magnitude_prune",
    "sparsity",
    "quantize_int8",
    "dequantize_int8",
    "int8_weight_only",
    "quantize_dynamic_int8",
    "encode_state",
    "decode_state",
    "size_bytes",
    "compact_size",
    "swap_denoiser",
    "surgery_variants",
    "eval_prompts",
    "EvalResult",
    "evaluate_variant",
    "time_ratios",
    "compare_variants",
    "plot_variants",
    "ema_vs_raw",
]

PRUNABLE: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
SCOPES = ("global", "per_layer")
ENCODINGS = ("dense", "bitmask", "int8")


def _dynamic_linear_class() -> type:

    return DynamicLinear


def _check_module_types(module_types: object) -> tuple[type, ...]:
    if isinstance(module_types, type):
        module_types = (module_types,)
    if not (isinstance(module_types, tuple) and module_types and all(isinstance(t, type) for t in module_types)):
        raise TypeError(
            f"module_types must be a non-empty tuple of module classes, e.g. (nn.Conv2d, nn.Linear), got {module_types!r}"
        )
    return module_types


def prunable_weights(model: nn.Module, module_types: tuple[type, ...] = PRUNABLE) -> list[tuple[str, nn.Parameter]]:
    """(name, weight) of every module of ``module_types`` in ``model``, in ``named_modules`` order."""
    module_types = _check_module_types(module_types)
    found = [
        (f"{name}.weight" if name else "weight", m.weight)
        for name, m in model.named_modules()
        if isinstance(m, module_types) and isinstance(getattr(m, "weight", None), torch.Tensor)
    ]
    if not found:
        names = ", ".join(t.__name__ for t in module_types)
        raise ValueError(f"the model has no weights of the types {names}: nothing to prune or quantize")
    return found


def _check_sparsity(p: object) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(
            f"sparsity must be a number in [0, 1) (the share of weights set to zero), got {type(p).__name__} {p!r}"
        )
    if not 0.0 <= p < 1.0:  # NaN fails here too
        raise ValueError(
            f"sparsity must be in [0, 1): the share of weights set to zero (1 would delete every weight), got {p!r}"
        )
    return float(p)


def magnitude_prune(
    model: nn.Module, sparsity: float, *, scope: str = "global", module_types: tuple[type, ...] = PRUNABLE
) -> nn.Module:
    """A copy of ``model`` with the share ``sparsity`` = p of its Conv2d / Linear weights set to zero for good.

    In each scope (all the weights together for ``scope="global"``, each tensor for ``"per_layer"``) the
    k = ⌊p·N⌋ weights of smallest |w| become 0; biases and normalisation parameters are kept. ``model`` is not
    changed. Global pruning lets layers with many small weights lose more than others.
    """
    p = _check_sparsity(sparsity)
    check_choice("scope", scope, SCOPES)
    pruned = copy.deepcopy(model)
    weights = [w for _, w in prunable_weights(pruned, module_types)]
    groups = [weights] if scope == "global" else [[w] for w in weights]
    with torch.no_grad():
        for group in groups:
            scores = torch.cat([w.abs().flatten() for w in group])  # (N,) |w| over the scope
            k = math.floor(p * scores.numel() + 1e-9)  # k = ⌊p·N⌋ (1e-9: 0.29·100 is 28.999… in floating point)
            drop = torch.topk(scores, k, largest=False).indices  # (k,) the k smallest |w|
            keep = torch.ones_like(scores, dtype=torch.bool).index_fill_(0, drop, False)  # (N,)
            for w, m in zip(group, keep.split([w.numel() for w in group]), strict=True):
                w.masked_fill_(~m.view_as(w), 0.0)
    return pruned


def sparsity(model: nn.Module, module_types: tuple[type, ...] = PRUNABLE) -> float:
    """Share of exact zeros among the weights of ``module_types`` (0.0 for a trained dense model)."""
    weights = [w for _, w in prunable_weights(model, module_types)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (q, s) with s_c = max_j |w_cj| / 127 (C_out,) fp32 and q = round(w / s)
    int8 of w's shape. An all-zero channel gets s = 0 and q = 0. ŵ = s·q (:func:`dequantize_int8`) is within s/2 of w.
    """
    flat = w.detach().float().reshape(w.shape[0], -1)  # (C_out, fan_in)
    s = flat.abs().amax(1) / 127  # (C_out,)
    step = torch.where(s > 0, s, torch.ones_like(s))  # avoid 0/0 for an all-zero channel (its q is 0 anyway)
    q = torch.round(flat / step[:, None]).clamp_(-127, 127).to(torch.int8)  # (C_out, fan_in)
    return q.reshape(w.shape), s


def dequantize_int8(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """ŵ = s·q: int8 codes q (C_out, …) and scales s (C_out,) back to fp32 weights of q's shape."""
    return q.float() * s.reshape(-1, *([1] * (q.ndim - 1)))


def int8_weight_only(model: nn.Module, module_types: tuple[type, ...] = PRUNABLE) -> nn.Module:
    """A copy of ``model`` whose Conv2d / Linear weights are replaced by their int8 round trip ŵ = s·round(w/s).

    Simulated weight-only int8: the copy still computes in fp32, but every weight lies on its channel's int8 grid,
    so an int8 file (:func:`encode_state` ``"int8"``) stores it exactly in about a quarter of the bytes. Zeros stay
    zeros (pruned weights remain pruned). ``model`` is not changed.
    """
    out = copy.deepcopy(model)
    with torch.no_grad():
        for _, w in prunable_weights(out, module_types):
            w.copy_(dequantize_int8(*quantize_int8(w)))
    return out


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its ``nn.Linear`` layers dynamically quantized to int8 (CPU only).

    ``torch.ao.quantization.quantize_dynamic(copy, {nn.Linear}, dtype=torch.qint8)``: weights stored as int8 (one
    scale per tensor), activations quantized per batch at run time, int8 matrix products (fbgemm / x86 / qnnpack
    kernels). Conv2d layers stay fp32 (dynamic quantization has no convolution kernels). torch 2.14 marks
    ``torch.ao.quantization`` deprecated in favour of torchao's ``quantize_`` (not installed here): the function
    still works, and its DeprecationWarning and the quantized-tensor UserWarning are silenced for this call only.
    """
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise ValueError(
            f"dynamic int8 quantization runs on the CPU only; move the model there first (it is on {devices})"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"torch\.ao\.quantization is deprecated", DeprecationWarning)
        warnings.filterwarnings("ignore", r"torch\.quantize_per_tensor.* are deprecated", UserWarning)
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


_BITS = 2 ** torch.arange(7, -1, -1)  # (8,) 128, 64, …, 1: the bit weights of one byte, most significant first


def _pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """(N,) bool → (⌈N/8⌉,) uint8, 8 flags a byte (as ``numpy.packbits``)."""
    padded = torch.zeros(-(-mask.numel() // 8) * 8, dtype=torch.long, device=mask.device)
    padded[: mask.numel()] = mask.long()
    return (padded.view(-1, 8) * _BITS.to(mask.device)).sum(1).to(torch.uint8)


def _unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """(⌈N/8⌉,) uint8 → (N,) bool."""
    bits = packed.long()[:, None] & _BITS.to(packed.device)  # (⌈N/8⌉, 8)
    return (bits != 0).flatten()[:n]


def encode_state(
    model: nn.Module, encoding: str = "dense", module_types: tuple[type, ...] = PRUNABLE
) -> dict[str, torch.Tensor]:
    """The tensors a file of ``model`` holds in ``encoding`` (see the module docstring), ready for safetensors.

    ``"dense"``: the state dict, fp32. ``"bitmask"``: for each weight of ``module_types`` ``<name>.mask`` (⌈N/8⌉,)
    uint8 and ``<name>.values`` (nnz,) fp32. ``"int8"``: ``<name>.q`` (w's shape) int8 and ``<name>.scale``
    (C_out,) fp32. Shapes are the architecture's (the config), so they are not stored.
    """
    check_choice("encoding", encoding, ENCODINGS)
    module_types = _check_module_types(module_types)
    dynamic_linear = _dynamic_linear_class()
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, dynamic_linear):  # int8 already: codes, per-tensor scale and zero point, fp32 bias
            w = module.weight()
            out[prefix + "weight.q"] = w.int_repr()
            out[prefix + "weight.scale"] = torch.tensor([w.q_scale()], dtype=torch.float32)
            out[prefix + "weight.zero_point"] = torch.tensor([w.q_zero_point()], dtype=torch.int32)
            if module.bias() is not None:
                out[prefix + "bias"] = module.bias().detach()
            continue
        tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        for key, t in tensors:
            t = t.detach().contiguous()
            if key != "weight" or not isinstance(module, module_types) or encoding == "dense":
                out[prefix + key] = t
            elif encoding == "bitmask":
                nonzero = t.flatten() != 0  # (N,)
                out[prefix + "weight.mask"] = _pack_bits(nonzero)
                out[prefix + "weight.values"] = t.flatten()[nonzero]
            else:
                out[prefix + "weight.q"], out[prefix + "weight.scale"] = quantize_int8(t)
    return out


def decode_state(tensors: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The fp32 state dict of ``model``'s architecture from :func:`encode_state`'s tensors (any encoding, not the
    dynamically quantized one): ``model.load_state_dict(decode_state(encode_state(m, e), model))``."""
    state = {}
    for key, like in model.state_dict().items():
        if key in tensors:
            state[key] = tensors[key]
        elif f"{key}.mask" in tensors:
            mask = _unpack_bits(tensors[f"{key}.mask"], like.numel())  # (N,)
            flat = torch.zeros(like.numel(), dtype=like.dtype, device=like.device)
            flat[mask] = tensors[f"{key}.values"].to(like)
            state[key] = flat.view_as(like)
        elif f"{key}.q" in tensors:
            state[key] = dequantize_int8(tensors[f"{key}.q"], tensors[f"{key}.scale"]).view_as(like)
        else:
            raise KeyError(f"{key} is missing from the encoded tensors")
    return state


def size_bytes(model: nn.Module, encoding: str = "dense", module_types: tuple[type, ...] = PRUNABLE) -> int:
    """Bytes of a safetensors file holding ``model`` in ``encoding`` (header included; written in memory only)."""

    return len(save({k: v.cpu() for k, v in encode_state(model, encoding, module_types).items()}))


def _lossless(model: nn.Module, encoding: str, module_types: tuple[type, ...]) -> bool:
    if encoding != "int8":
        return True  # dense and bitmask store every fp32 value exactly
    weights = [w for _, w in prunable_weights(model, module_types)]
    return all(torch.allclose(dequantize_int8(*quantize_int8(w)), w, rtol=1e-6, atol=0) for w in weights)


def compact_size(model: nn.Module, module_types: tuple[type, ...] = PRUNABLE) -> tuple[str, int]:
    """(encoding, bytes) of the smallest of the :data:`ENCODINGS` that stores ``model`` exactly (int8 counts only
    when every weight is on its int8 grid, up to fp32 rounding). A dense trained model gives ``"dense"``; a
    pruned one ``"bitmask"``; the output of :func:`int8_weight_only` ``"int8"``."""
    sizes = {e: size_bytes(model, e, module_types) for e in ENCODINGS if _lossless(model, e, module_types)}
    best = min(sizes, key=sizes.get)
    return best, sizes[best]


def swap_denoiser(pipe, denoiser: nn.Module):
    """A pipeline of the same class sharing ``pipe``'s autoencoder, text encoder and tokenizer (not copied), with
    ``denoiser`` (U-Net or SD3 transformer) and a copy of the scheduler (``set_timesteps`` changes its state)."""
    parts = dict(pipe.components)
    parts[pipe._denoiser_name] = denoiser  # "unet" or "transformer"
    parts["scheduler"] = copy.deepcopy(pipe.scheduler)
    return type(pipe)(**parts)


def surgery_variants(
    pipe, sparsities: Sequence[float] = (0.25, 0.5, 0.75, 0.9), *, scope: str = "global", int8: bool = True
) -> dict[str, object]:
    """{name: pipeline}: the denoiser magnitude-pruned at each sparsity (``"prune 50%"``), and with ``int8`` its
    dynamic int8 (``"int8 dynamic"``, CPU) and weight-only int8 (``"int8 weight-only"``) versions. The
    autoencoder and text encoder are shared with ``pipe``."""
    for p in sparsities:
        _check_sparsity(p)
    net = pipe.denoiser
    out = {f"prune {100 * p:g}%": swap_denoiser(pipe, magnitude_prune(net, p, scope=scope)) for p in sparsities}
    if int8:
        out["int8 dynamic"] = swap_denoiser(pipe, quantize_dynamic_int8(net))
        out["int8 weight-only"] = swap_denoiser(pipe, int8_weight_only(net))
    return out


# benchmarks/cpu_train.py's evaluation prompts (its EVAL_WORDS and latent_prompts; the benchmark script is not part of
# the package, so the rule is repeated here): per digit, 4 plain prompts ("a seven") and one per attribute word.
EVAL_WORDS = (None, "thick", None, "thin", "slanted", None, "upright", "small", None, "large")


def eval_prompts(n: int) -> tuple[list[str], torch.Tensor]:
    """n prompts and their digits (n,): digits cycling 0..9, attribute words cycling through ``EVAL_WORDS`` per
    digit, so any 10 consecutive prompts ask for every word once (the prompts of ``benchmarks/cpu_train.py``)."""

    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (FID needs two images), got {n!r}")
    labels = torch.arange(n) % 10
    prompts = []
    for i, d in enumerate(labels.tolist()):
        word = EVAL_WORDS[(i // 10 + d) % len(EVAL_WORDS)]
        words = [word, DIGIT_NAMES[d]] if word else [DIGIT_NAMES[d]]
        prompts.append(("an " if words[0][0] in "aeiu" else "a ") + " ".join(words))
    return prompts, labels


@dataclass
class EvalResult:
    """One variant's scores: n samples (DDIM-``steps``, guidance w, seed), digit and attribute adherence, FID-MNIST
    and its floor for n, seconds per image (median over the generation batches; compare variants with
    :func:`time_ratios`), and the denoiser's :func:`compact_size` (encoding, bytes) and :func:`sparsity`."""

    n: int
    steps: int
    guidance_scale: float
    seed: int
    digit_adherence: float
    attribute_adherence: float
    fid: float
    fid_floor: float
    seconds_per_image: float
    size_bytes: int
    size_encoding: str
    sparsity: float

    def to_dict(self) -> dict:
        return asdict(self)


def _classifier_and_reference(classifier, reference):

    classifier = load_classifier() if classifier is None else classifier
    return classifier, reference_stats(classifier) if reference is None else reference


def evaluate_variant(
    pipe,
    bins,
    *,
    n: int,
    steps: int = 25,
    guidance_scale: float = 3.0,
    seed: int = 0,
    classifier=None,
    reference=None,
    batch_size: int = 250,
) -> EvalResult:
    """Sample ``eval_prompts(n)`` with ``pipe`` (one generator seeded ``seed``, batches of ``batch_size``: with the
    defaults the very images of ``benchmarks/cpu_train.py``) and score them.

    ``classifier`` defaults to :func:`~diffusion_lab.mnist.classifier.load_classifier`; ``reference`` to the test-set
    statistics (a 10 s pass: compute them once with :func:`~diffusion_lab.mnist.metrics.reference_stats` for many calls).
    """

    classifier, reference = _classifier_and_reference(classifier, reference)
    prompts, labels = eval_prompts(n)
    g = torch.Generator().manual_seed(seed)
    images, seconds = [], []
    for i in range(0, n, batch_size):
        batch = prompts[i : i + batch_size]
        t0 = time.perf_counter()
        images.append(pipe(batch, num_inference_steps=steps, guidance_scale=guidance_scale, generator=g).images)
        seconds.append((time.perf_counter() - t0) / len(batch))
    x = torch.cat(images)  # (n, 1, 28, 28) in [−1, 1]
    m = evaluate(x, labels, classifier, reference=reference)
    a = attribute_adherence(x, prompts, bins)
    encoding, nbytes = compact_size(pipe.denoiser)
    return EvalResult(
        n=n,
        steps=steps,
        guidance_scale=guidance_scale,
        seed=seed,
        digit_adherence=m["adherence"],
        attribute_adherence=a["adherence"],
        fid=m["fid_mnist"],
        fid_floor=m["fid_floor"],
        seconds_per_image=statistics.median(seconds),
        size_bytes=nbytes,
        size_encoding=encoding,
        sparsity=sparsity(pipe.denoiser),
    )


def time_ratios(
    pipes: Mapping[str, object],
    base: str,
    *,
    batch: int = 20,
    steps: int = 25,
    guidance_scale: float = 3.0,
    repeats: int = 5,
) -> dict[str, float]:
    """Sampling time of each pipeline over that of ``pipes[base]``, measured interleaved: every round times one
    call of each pipeline on the same ``batch`` prompts (after one warm-up call each), the ratio is taken within the
    round, and the median over ``repeats`` rounds is returned (> 1: slower than the base). On a shared machine the
    ratio is far steadier than seconds per image."""
    if base not in pipes:
        raise ValueError(f"base must be one of {list(pipes)}, got {base!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    prompts, _ = eval_prompts(max(batch, 2))
    prompts = prompts[:batch]

    def seconds(p) -> float:
        t0 = time.perf_counter()
        p(prompts, num_inference_steps=steps, guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(0))
        return time.perf_counter() - t0

    for p in pipes.values():
        seconds(p)  # warm-up: first-call allocations, quantized-kernel setup
    rounds = []
    for _ in range(repeats):
        t = {name: seconds(p) for name, p in pipes.items()}
        rounds.append({name: t[name] / t[base] for name in pipes})
    return {name: statistics.median(r[name] for r in rounds) for name in pipes}


def compare_variants(
    pipe,
    bins,
    variants: Mapping[str, object],
    *,
    n: int,
    steps: int = 25,
    guidance_scale: float = 3.0,
    seed: int = 0,
    classifier=None,
    reference=None,
    base_name: str = "base",
    timing_repeats: int = 5,
    timing_batch: int = 20,
    log: Callable[[str], None] | None = print,
) -> list[dict]:
    """A table (one dict per row, ``pipe`` first as ``base_name``) of :class:`EvalResult` fields for ``pipe`` and
    each of ``variants``, plus ``size_ratio`` (bytes over the base's) and, unless ``timing_repeats=0``,
    ``time_ratio`` (:func:`time_ratios`). ``log`` prints a line per variant (None: silent)."""
    if base_name in variants:
        raise ValueError(f"base_name {base_name!r} is also a variant's name; pick another")
    classifier, reference = _classifier_and_reference(classifier, reference)
    pipes = {base_name: pipe, **variants}
    rows = []
    for name, p in pipes.items():
        r = evaluate_variant(
            p,
            bins,
            n=n,
            steps=steps,
            guidance_scale=guidance_scale,
            seed=seed,
            classifier=classifier,
            reference=reference,
        )
        rows.append({"variant": name, **r.to_dict()})
        if log is not None:
            log(
                f"{name:18s} digit {r.digit_adherence:.3f}  attribute {r.attribute_adherence:.3f}  FID {r.fid:6.1f} "
                f"(floor {r.fid_floor:.1f}, n={n})  {r.size_bytes / 1e3:7.1f} kB ({r.size_encoding})  "
                f"{1e3 * r.seconds_per_image:.0f} ms/image"
            )
    for row in rows:
        row["size_ratio"] = row["size_bytes"] / rows[0]["size_bytes"]
    if timing_repeats:
        ratios = time_ratios(
            pipes, base_name, batch=timing_batch, steps=steps, guidance_scale=guidance_scale, repeats=timing_repeats
        )
        for row in rows:
            row["time_ratio"] = ratios[row["variant"]]
    return rows


def plot_variants(
    rows: Sequence[Mapping],
    metrics: Sequence[str] = ("digit_adherence", "attribute_adherence", "fid"),
    x: str | None = None,
):
    """One panel per metric: bars per variant (``x=None``), or the metric against a column such as ``"sparsity"``
    (points labelled with the variant's name; the FID floor as a dotted line where the metric is ``"fid"``).
    Returns the matplotlib figure."""
    import matplotlib.pyplot as plt  # lazy: matplotlib costs ~1 s to import; only drawing needs it

    if not rows:
        raise ValueError("rows is empty: pass the table of compare_variants")
    missing = [m for m in (*metrics, *([x] if x else [])) if m not in rows[0]]
    if missing:
        raise ValueError(f"rows have no column {missing}; columns are {sorted(rows[0])}")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2), squeeze=False)
    names = [r["variant"] if "variant" in r else str(i) for i, r in enumerate(rows)]
    for ax, metric in zip(axes[0], metrics, strict=True):
        values = [r[metric] for r in rows]
        if x is None:
            ax.bar(range(len(rows)), values, color="tab:blue")
            ax.set_xticks(range(len(rows)), names, rotation=45, ha="right", fontsize=8)
        else:
            xs = [r[x] for r in rows]
            ax.plot(xs, values, "o")
            for xi, v, name in zip(xs, values, names, strict=True):
                ax.annotate(name, (xi, v), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel(x)
        if metric == "fid" and "fid_floor" in rows[0]:
            ax.axhline(rows[0]["fid_floor"], ls=":", color="gray", label=f"floor (n={rows[0].get('n', '?')})")
            ax.legend(fontsize=8)
        ax.set_title(metric.replace("_", " "), fontsize=10)
    fig.tight_layout()
    return fig


def ema_vs_raw(
    budget_s: float,
    seed: int = 0,
    *,
    n: int,
    steps: int = 25,
    guidance_scale: float = 3.0,
    classifier=None,
    reference=None,
    train_config=None,
    progress: bool = False,
    log: Callable[[str], None] | None = print,
) -> tuple[list[dict], dict]:
    """Train the latent text-to-image recipe for ``budget_s`` seconds (:func:`~diffusion_lab.training.recipes.
    train_latent_text2img` with ``keep_raw=True``) and score its EMA weights θ_ema (row ``"ema"``) against the raw
    last iterate θ (row ``"raw"``: text encoder and U-Net; same autoencoder) on the same prompts and seed.
    Returns (table, info) with the training ``info`` (without the raw pipeline)."""

    pipe, info = train_latent_text2img(budget_s, seed, progress, train_config=train_config, keep_raw=True)
    raw = info.pop("raw")
    rows = compare_variants(
        pipe,
        info["bins"],
        {"raw": raw},
        n=n,
        steps=steps,
        guidance_scale=guidance_scale,
        seed=seed,
        classifier=classifier,
        reference=reference,
        base_name="ema",
        timing_repeats=0,
        log=log,
    )
    return rows, info
