"""Text for a tiny text-to-image model on MNIST: measurable attributes, captions, a word tokenizer, a CLIP-like encoder.

Notation
--------
=====================  ===============  =============================================================================
code                   symbol           meaning
=====================  ===============  =============================================================================
``images``             x                (B, 1, H, W) in [−1, 1]; brightness b = (x + 1)/2 in [0, 1]
``INK_FLOOR``          τ                0.4: brightness counted as background (noise, faint halo)
``p``                  p                ink intensity clamp((b − τ)/(1 − τ), 0, 1) in [0, 1]
``u``, ``v``           u, v             pixel column (goes right) and row (goes **down**), in pixels
``mass``               A                ink mass Σ p (the "area" of a stroke drawn with ink 1)
``perimeter``          P                length of the ink's outline (Cauchy–Crofton estimate, below)
``mu20``, ``mu02``     μ₂₀, μ₀₂         central moments (1/A) Σ p·(u − ū)² and (1/A) Σ p·(v − v̄)²
``mu11``               μ₁₁              (1/A) Σ p·(u − ū)(v − v̄)
``thickness``          w                mean stroke width 2A/P, in pixels
``slant``              s                −μ₁₁/μ₀₂: pixels of lean to the right per pixel of height (top right: s > 0)
``size``               d                4·(μ₂₀μ₀₂ − μ₁₁²)^¼: diameter of the disc with the moment ellipse's area
``AttributeBins``      q_lo, q_½, q_hi  per attribute and digit: the low_q, 0.5 and high_q quantiles on MNIST
``input_ids``          (B, L)           token ids <bos> words <eos> <pad>…; L = max_length (8 in the course recipe: the longest caption has 7 tokens)
``last_hidden_state``  h                (B, L, D) per-token states, what cross-attention in the U-Net reads
``pooler_output``      h_eos            (B, D) the state at the <eos> position, one vector per prompt
=====================  ===============  =============================================================================

1. Attributes
-------------
A prompt such as "a thick slanted seven" must mean something one can measure, or neither training captions nor the
"attribute adherence" of generated digits can be defined. Three cheap, batched measures from image moments
(the moments that deskew MNIST digits for the "deslanted" results of LeCun et al. 1998, "Gradient-based learning
applied to document recognition"):

- **thickness** w = 2A/P. A stroke of width w and length L has area A = w·L and outline P = 2L + 2w, so
  2A/P = w·L/(L + w) → w for long strokes: the mean stroke width in pixels. P comes from the Cauchy–Crofton
  formula, length = ½∫₀^π (number of crossings with the lines of direction θ) dρ dθ, with the four lattice
  directions θ = 0°, 45°, 90°, 135° (line spacings 1, 1/√2, 1, 1/√2):
  P = (π/8)·[N₀ + N₉₀ + (N₄₅ + N₁₃₅)/√2],   N_θ = Σ |p(x + e_θ) − p(x)| over neighbours in direction θ,
  with p = 0 outside the image. It is within −5% … +3% for a straight edge of any direction and the same for strokes
  leaning left or right (the plain gradient norm Σ|∇p| with forward differences over-counts one diagonal by √2 and
  would couple thickness to slant). For grey, anti-aliased strokes N_θ counts the crossings of every level set
  {p > t}, weighted by dt, just as A = ∫₀¹ area{p > t} dt.
- **slant** s = −μ₁₁/μ₀₂: the least-squares slope du/d(−v) of the ink, i.e. how many pixels the ink moves right
  per pixel it goes *up*. Rows go down, so a digit whose top leans right has u growing while v shrinks, μ₁₁ < 0,
  and s > 0. Shearing the image by u ← u + a·(v̄ − v) adds exactly a to s (so s = tan of the lean from vertical).
- **size** d = 4·det(Σ)^¼ with Σ = [[μ₂₀, μ₁₁], [μ₁₁, μ₀₂]]: a uniform disc of diameter d has Σ = (d²/16)·I, so
  this is the diameter of the disc whose area equals that of the ink's moment ellipse. It does not change under
  shear (det = 1), so slant does not leak into size. MNIST digits are scaled to a 20-pixel box, so heights hardly
  vary and d mostly follows the width: ones are small, zeros large (hence per-digit bins, below).

Ink starts above the floor τ = ``INK_FLOOR`` = 0.4 (in [−1, 1] units, x > −0.2). Second moments weight a pixel by
its squared distance, so faint background noise far from the digit inflates size: with τ = 0, Gaussian noise of
std 0.05 (in [−1, 1] units) on real digits turned 41% of "large"/"small" verdicts (adherence 0.59); with τ = 0.4 all
three attributes keep 100% adherence up to std 0.1 (≥ 99.9% at 0.2) and ≥ 98.7% after a 3×3 binomial blur (bins
fitted on 20,000 MNIST training images, checked on 4,000 of them). The floor trims anti-aliased edges, so drawn
strokes measure a few tenths of a pixel thinner than their width. An image without ink measures 0 on all three.

2. Captions
-----------
:func:`fit_bins` fits the quantiles q_lo, q_½, q_hi (default 1/3, 1/2, 2/3) of each attribute on training images,
per digit when labels are given (a "large one" is large *for a one*) and always over all digits (for prompts that
name no digit). A caption names an attribute only in an extreme bin:

===============  ===============  =============  ================  =========================================
attribute        binned value     below q_lo     above q_hi        note
===============  ===============  =============  ================  =========================================
``size``         d                "small"        "large"
``thickness``    w                "thin"         "thick"
``slant``        |s|              "upright"      "slanted"         either direction: |s| is binned, not s
===============  ===============  =============  ================  =========================================

On the 60,000 MNIST training images the three binned values are nearly uncorrelated (|r| ≤ 0.11), also within
most digits; the exceptions: for ones the short axis of the moment ellipse is the stroke itself, so size follows
thickness (r = 0.59, and "a small thick one" occurs 3 times in 6,742 ones), and slanted fives and zeros are smaller
(r = −0.56, −0.35: MNIST scaled each digit's bounding box, which a slant widens, to 20 pixels).

Word order is fixed: article, size, thickness, slant, digit name ("a large thick slanted seven"), with "an" before
a vowel sound ("an eight", "an upright two", but "a one"). ``drop_prob`` drops each attribute word independently
for training, so the model also sees partial captions; dropping whole captions ("" = unconditional, for
classifier-free guidance) is the training loop's job.

**Attribute adherence** of generated images (:func:`attribute_adherence`): every attribute word in a prompt is a
request, met when the measured value lies on the asked side of the *median* q_½ of the prompt's digit (of all
digits if the prompt names none): "thick" is met when w > q_½(thickness), "thin" when w < q_½. Asked is an
extreme (top or bottom third); checked is only the side of the median, so a random digit meets a request half the
time and a perfect sampler of the captioned training distribution meets all of them.

3. Tokenizer and text encoder
-----------------------------
In Stable Diffusion the text encoder is CLIP's (Radford et al. 2021), pretrained contrastively on image-text pairs
and kept **frozen**. SD 1.5 feeds the per-token states of CLIP ViT-L/14's text transformer, (77, 768), to the U-Net's
cross-attention. SDXL (Podell et al. 2023) concatenates the per-token states of two encoders, CLIP ViT-L and
OpenCLIP ViT-bigG, 768 + 1280 = 2048 features per token, and adds bigG's pooled embedding to the time embedding.
SD3 (Esser et al. 2024) uses CLIP-L, CLIP-G and T5-XXL. SD 1.x hands all 77 states to the U-Net, padding included,
and does not mask them.

Here the vocabulary is a few dozen words, so :class:`TextEncoder` is a tiny CLIP-like transformer (width 64,
2 layers, 8 positions in the recipe) trained *jointly* with the denoiser; it can be frozen afterwards. As in CLIP's text model:
token + learned position embeddings, pre-LayerNorm blocks with causal self-attention, a final LayerNorm, and the
pooled output taken at the <eos> token. :class:`WordTokenizer` mirrors ``pipe.tokenizer(...)`` of transformers: it
returns ``input_ids`` and ``attention_mask`` padded to ``max_length``, with <bos>/<eos> like CLIP's
<|startoftext|>/<|endoftext|>.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_lab.checkpoint import PretrainedModel

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_WORDS",
    "DIGIT_NAMES",
    "INK_FLOOR",
    "AttributeBins",
    "BatchEncoding",
    "TextEncoder",
    "TextEncoderConfig",
    "TextEncoderOutput",
    "WordTokenizer",
    "attribute_adherence",
    "attributes",
    "caption",
    "captions_for",
    "fit_bins",
    "parse_prompt",
    "size",
    "slant",
    "thickness",
]

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ATTRIBUTES = ("size", "thickness", "slant")  # also the word order in captions
ATTRIBUTE_WORDS = {"size": ("small", "large"), "thickness": ("thin", "thick"), "slant": ("upright", "slanted")}
_ANY_DIGIT = 10  # row of AttributeBins for prompts that name no digit
_EPS = 1e-6
INK_FLOOR = 0.4  # τ: brightness (x + 1)/2 at or below it is background; part of the attribute definitions


# ----------------------------------------------------------------------------------------------------------------------
# 1. Attributes from image moments
# ----------------------------------------------------------------------------------------------------------------------


def _ink(images: object) -> torch.Tensor:
    """Checked images (B, 1, H, W) in [−1, 1] → ink p = clamp(((x + 1)/2 − τ)/(1 − τ), 0, 1), (B, H, W) float."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape (B, 1, H, W), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(
            f"images must have shape (B, 1, H, W) (one channel, values in [-1, 1]), got {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise ValueError(
            f"images must be floating point in [-1, 1], got dtype {images.dtype} "
            "(uint8 pixels: convert with diffusion_lab.data.to_unit_range)"
        )
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf values")
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    brightness = (images[:, 0].to(dtype) + 1) / 2  # (B, H, W), b = (x + 1)/2
    return ((brightness - INK_FLOOR) / (1 - INK_FLOOR)).clamp(0, 1)


def _moments(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ink mass A and central moments μ₂₀, μ₀₂, μ₁₁ of p (B, H, W); each (B,). Zero for an empty image."""
    _, h, w = p.shape
    v = torch.arange(h, device=p.device, dtype=p.dtype)[None, :, None]  # (1, H, 1) row, goes down
    u = torch.arange(w, device=p.device, dtype=p.dtype)[None, None, :]  # (1, 1, W) column, goes right
    mass = p.sum((1, 2))  # (B,)  A = Σ p
    a = mass.clamp_min(_EPS)
    ub = (p * u).sum((1, 2)) / a  # (B,)  ū = (1/A) Σ p·u
    vb = (p * v).sum((1, 2)) / a
    du = u - ub[:, None, None]  # (B, 1, W)
    dv = v - vb[:, None, None]  # (B, H, 1)
    mu20 = (p * du**2).sum((1, 2)) / a  # (B,)
    mu02 = (p * dv**2).sum((1, 2)) / a
    mu11 = (p * du * dv).sum((1, 2)) / a
    return mass, mu20, mu02, mu11


def _perimeter(p: torch.Tensor) -> torch.Tensor:
    """Cauchy–Crofton outline length P = (π/8)·[N₀ + N₉₀ + (N₄₅ + N₁₃₅)/√2]; p (B, H, W) → (B,)."""
    q = F.pad(p, (1, 1, 1, 1))  # (B, H+2, W+2), zero border so strokes touching the edge have an outline there
    n0 = (q[:, :, 1:] - q[:, :, :-1]).abs().sum((1, 2))  # N₀: neighbours along a row
    n90 = (q[:, 1:, :] - q[:, :-1, :]).abs().sum((1, 2))  # N₉₀: along a column
    n45 = (q[:, 1:, :-1] - q[:, :-1, 1:]).abs().sum((1, 2))  # N₄₅: up-right diagonal
    n135 = (q[:, 1:, 1:] - q[:, :-1, :-1]).abs().sum((1, 2))  # N₁₃₅: down-right diagonal
    return (math.pi / 8) * (n0 + n90 + (n45 + n135) / math.sqrt(2))


def _thickness(p: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    return 2 * mass / _perimeter(p).clamp_min(_EPS)  # w = 2A/P


def _slant(mu02: torch.Tensor, mu11: torch.Tensor) -> torch.Tensor:
    return -mu11 / mu02.clamp_min(_EPS)  # s = −μ₁₁/μ₀₂ (rows go down: minus makes "top leans right" positive)


def _size(mu20: torch.Tensor, mu02: torch.Tensor, mu11: torch.Tensor) -> torch.Tensor:
    return 4 * (mu20 * mu02 - mu11**2).clamp_min(0) ** 0.25  # d = 4·det(Σ)^¼


def thickness(images: torch.Tensor) -> torch.Tensor:
    """Mean stroke width w = 2A/P in pixels, (B, 1, H, W) in [−1, 1] → (B,).

    A = Σ p is the ink mass and P the length of its outline (Cauchy–Crofton estimate, see the module docstring);
    a straight stroke of width w and length L gives about w·L/(L + w). MNIST training digits: median 2.1 px.
    """
    p = _ink(images)
    return _thickness(p, p.sum((1, 2)))


def slant(images: torch.Tensor) -> torch.Tensor:
    """Lean s = −μ₁₁/μ₀₂, (B, 1, H, W) in [−1, 1] → (B,): pixels to the right per pixel up; > 0 when the top leans right.

    Image rows go down, hence the minus sign. s = tan(lean angle from vertical): 0.18 ≈ 10°, 0.36 ≈ 20°.
    """
    _, _, mu02, mu11 = _moments(_ink(images))
    return _slant(mu02, mu11)


def size(images: torch.Tensor) -> torch.Tensor:
    """Size d = 4·(μ₂₀μ₀₂ − μ₁₁²)^¼ in pixels, (B, 1, H, W) in [−1, 1] → (B,).

    The diameter of the disc with the same area as the ink's moment ellipse (a uniform disc of diameter d gives
    exactly d); unchanged by shear, so independent of slant. MNIST training digits: median 17.1 px, ones 8.6 px.
    """
    _, mu20, mu02, mu11 = _moments(_ink(images))
    return _size(mu20, mu02, mu11)


def attributes(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"thickness": w, "slant": s, "size": d}``, each (B,), from one pass over the images (B, 1, H, W) in [−1, 1]."""
    p = _ink(images)
    mass, mu20, mu02, mu11 = _moments(p)
    return {"thickness": _thickness(p, mass), "slant": _slant(mu02, mu11), "size": _size(mu20, mu02, mu11)}


def _binned_values(attrs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The values the caption bins are on: size d, thickness w and |s| (slant words ignore the direction)."""
    missing = [a for a in ATTRIBUTES if a not in attrs]
    if missing:
        raise ValueError(f"attrs is missing {missing}: pass the dict returned by attributes(images)")
    return {
        "size": torch.as_tensor(attrs["size"]).double(),
        "thickness": torch.as_tensor(attrs["thickness"]).double(),
        "slant": torch.as_tensor(attrs["slant"]).double().abs(),
    }


# ----------------------------------------------------------------------------------------------------------------------
# 2. Bins, captions, prompts and attribute adherence
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttributeBins:
    """Quantile thresholds of each attribute, fitted on training images by :func:`fit_bins`.

    ``thresholds[name]`` has 11 rows (digits 0..9, then row 10 for "any digit"), each ``(q_lo, q_½, q_hi)``; without
    per-digit fitting the ten digit rows equal row 10. Values are those binned in captions: d, w and |s|.
    """

    thresholds: dict[str, tuple[tuple[float, float, float], ...]]
    low_q: float = 1 / 3
    high_q: float = 2 / 3
    per_digit: bool = True

    def __post_init__(self) -> None:
        rows = {}
        for name in ATTRIBUTES:
            if name not in self.thresholds:
                raise ValueError(f"thresholds must have an entry for each of {list(ATTRIBUTES)}, {name!r} is missing")
            t = tuple(tuple(float(v) for v in row) for row in self.thresholds[name])
            if len(t) != 11 or any(len(row) != 3 for row in t):
                raise ValueError(f"thresholds[{name!r}] must be 11 rows (digits 0..9, any digit) of 3 values")
            rows[name] = t
        object.__setattr__(self, "thresholds", rows)  # JSON gives lists; keep tuples of floats

    def table(self, name: str) -> torch.Tensor:
        """(11, 3) float64 tensor of (q_lo, q_½, q_hi): rows 0..9 per digit, row 10 for any digit."""
        if name not in ATTRIBUTES:
            raise ValueError(f"unknown attribute {name!r}; the attributes are {list(ATTRIBUTES)}")
        return torch.tensor(self.thresholds[name], dtype=torch.float64)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AttributeBins:
        return cls(**d)


def _digit_rows(digits: torch.Tensor | Sequence[int | None] | int | None, n: int) -> torch.Tensor:
    """Digits (or None = any digit) → row indices into the (11, 3) tables, (n,) long."""
    if digits is None or isinstance(digits, int):
        digits = [digits] * n
    if isinstance(digits, torch.Tensor):
        rows = digits.reshape(-1).long().cpu()
    else:
        rows = torch.tensor([_ANY_DIGIT if d is None else int(d) for d in digits], dtype=torch.long)
    if len(rows) != n:
        raise ValueError(f"expected {n} digits (one per image), got {len(rows)}")
    if len(rows) and (rows.min() < 0 or rows.max() > _ANY_DIGIT):
        raise ValueError(
            f"digits must be 0..9 (or None for any digit), got values from {int(rows.min())} to {int(rows.max())}"
        )
    return rows


def fit_bins(
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    low_q: float = 1 / 3,
    high_q: float = 2 / 3,
    min_per_digit: int = 30,
) -> AttributeBins:
    """Fit the caption thresholds: the ``low_q``, 0.5 and ``high_q`` quantiles of d, w and |s| over ``images``.

    images (N, 1, H, W) in [−1, 1]. With ``labels`` (N,) digits 0..9, each digit gets its own quantiles (every digit
    then has a third "thick", a third "thin", …); row 10 ("any digit") is always fitted on all images. Each digit
    needs at least ``min_per_digit`` images.
    """
    if not 0 < low_q < 0.5 < high_q < 1:
        raise ValueError(f"need 0 < low_q < 0.5 < high_q < 1, got low_q={low_q}, high_q={high_q}")
    values = _binned_values(attributes(images))  # each (N,) on the images' device
    n = len(images)
    if n < 3:
        raise ValueError(f"fit_bins needs at least 3 images, got {n}")
    q = torch.tensor([low_q, 0.5, high_q], dtype=torch.float64)
    if labels is not None:
        labels = torch.as_tensor(labels).reshape(-1).long().cpu()
        if len(labels) != n:
            raise ValueError(f"images and labels must have the same length, got {n} images and {len(labels)} labels")
        if labels.min() < 0 or labels.max() > 9:
            raise ValueError(f"labels must be digits 0..9, got values from {int(labels.min())} to {int(labels.max())}")
        counts = torch.bincount(labels, minlength=10)  # (10,)
        if counts.min() < min_per_digit:
            few = [c for c in range(10) if counts[c] < min_per_digit]
            raise ValueError(
                f"digits {few} have fewer than min_per_digit={min_per_digit} images ({counts.tolist()} per digit): "
                "pass more images, or labels=None for bins shared by all digits"
            )
    thresholds = {}
    for name, v in values.items():
        v = v.cpu()
        overall = torch.quantile(v, q)  # (3,)
        rows = [torch.quantile(v[labels == c], q) if labels is not None else overall for c in range(10)]
        thresholds[name] = tuple(tuple(r.tolist()) for r in [*rows, overall])
    return AttributeBins(thresholds, low_q=low_q, high_q=high_q, per_digit=labels is not None)


def _words_for(values: dict[str, torch.Tensor], rows: torch.Tensor, bins: AttributeBins) -> dict[str, list[str | None]]:
    """Per attribute, the caption word of each image (None in the middle bin): value < q_lo → low, > q_hi → high."""
    out = {}
    for name in ATTRIBUTES:
        t = bins.table(name)[rows]  # (B, 3)
        v = values[name].reshape(-1).cpu()  # (B,)
        low, high = ATTRIBUTE_WORDS[name]
        words = []
        for a, lo, hi in zip(v.tolist(), t[:, 0].tolist(), t[:, 2].tolist(), strict=True):
            words.append(low if a < lo else high if a > hi else None)
        out[name] = words
    return out


def _article(word: str) -> str:
    """ "an" before a vowel sound: "an eight", "an upright …"; "a one" (one starts with a w sound)."""
    return "an" if word[0] in "aeiou" and not word.startswith("one") else "a"


def _sentence(digit: int | None, words: Sequence[str]) -> str:
    parts = [*words, DIGIT_NAMES[digit] if digit is not None else "digit"]
    return " ".join([_article(parts[0]), *parts])


def _check_drop_prob(drop_prob: float) -> None:
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob!r}")


def caption(
    label: int | None,
    attrs: dict[str, torch.Tensor | float],
    bins: AttributeBins,
    *,
    generator: torch.Generator | None = None,
    drop_prob: float = 0.0,
) -> str:
    """The caption of one image: e.g. "a thick slanted seven", "an eight", or "a small digit" for ``label=None``.

    attrs: one image's ``{"thickness", "slant", "size"}`` (floats or 0-d tensors, e.g. ``{k: v[i] for k, v in
    attributes(x).items()}``). Each attribute word is dropped with probability ``drop_prob`` (a torch ``generator``
    makes it reproducible).
    """
    if label is not None and not 0 <= int(label) <= 9:
        raise ValueError(f"label must be a digit 0..9 or None, got {label!r}")
    label = None if label is None else int(label)
    one = {k: torch.as_tensor(v).reshape(1) for k, v in attrs.items()}  # each (1,)
    return captions_for([label], None, bins, attrs=one, generator=generator, drop_prob=drop_prob)[0]


def captions_for(
    labels: torch.Tensor | Sequence[int | None],
    images: torch.Tensor | None,
    bins: AttributeBins,
    *,
    attrs: dict[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    drop_prob: float = 0.0,
) -> list[str]:
    """Captions of a batch: labels (B,) and images (B, 1, H, W) in [−1, 1] (or precomputed ``attrs``) → B strings.

    Word order: article, size, thickness, slant, digit name. Each attribute word is dropped independently with
    probability ``drop_prob``, drawn from ``generator`` (torch's global RNG if None).
    """
    _check_drop_prob(drop_prob)
    if attrs is None:
        if images is None:
            raise ValueError("pass images (B, 1, H, W) or attrs (the dict returned by attributes(images))")
        attrs = attributes(images)
    values = _binned_values(attrs)
    n = len(values["size"].reshape(-1))
    rows = _digit_rows(labels, n)
    words = _words_for(values, rows, bins)
    keep = (
        torch.rand(n, len(ATTRIBUTES), generator=generator) >= drop_prob
        if drop_prob > 0
        else torch.ones(n, len(ATTRIBUTES), dtype=torch.bool)
    )  # (B, 3)
    out = []
    for i, r in enumerate(rows.tolist()):
        chosen = [words[a][i] for j, a in enumerate(ATTRIBUTES) if words[a][i] is not None and keep[i, j]]
        out.append(_sentence(None if r == _ANY_DIGIT else r, chosen))
    return out


_WORD_TO_ATTRIBUTE = {w: a for a, pair in ATTRIBUTE_WORDS.items() for w in pair}  # "thick" → "thickness", …


def _split_words(text: str) -> list[str]:
    """Lower-case words: runs of letters and digits; whitespace and punctuation separate them and are dropped."""
    return re.findall(r"[a-z0-9]+", text.lower())


PLACEHOLDER_PATTERN = r"<[a-z0-9][a-z0-9_-]*>"  # an added token such as "<wide-three>" (textual inversion)


def is_placeholder(word: str) -> bool:
    """True for an added token written in angle brackets, e.g. ``"<wide-three>"`` (kept whole by the tokenizer)."""
    return re.fullmatch(PLACEHOLDER_PATTERN, word) is not None


def parse_prompt(prompt: str) -> dict[str, int | str | None]:
    """What a prompt asks for: ``{"digit": 0..9 or None, "size": "small"/"large"/None, "thickness": …, "slant": …}``.

    Words outside the caption vocabulary are ignored ("please draw a thick seven" → digit 7, thickness "thick").
    A prompt naming two digits or both words of one attribute is a ValueError.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    out: dict[str, int | str | None] = {"digit": None, **dict.fromkeys(ATTRIBUTES)}
    for w in _split_words(prompt):
        if w in DIGIT_NAMES:
            d = DIGIT_NAMES.index(w)
            if out["digit"] is not None and out["digit"] != d:
                raise ValueError(f"prompt {prompt!r} names two digits ({DIGIT_NAMES[out['digit']]} and {w})")
            out["digit"] = d
        elif w in _WORD_TO_ATTRIBUTE:
            name = _WORD_TO_ATTRIBUTE[w]
            if out[name] is not None and out[name] != w:
                raise ValueError(f"prompt {prompt!r} asks for both {out[name]!r} and {w!r}")
            out[name] = w
    return out


def attribute_adherence(
    images: torch.Tensor,
    prompts: str | Sequence[str],
    bins: AttributeBins,
    *,
    negative_prompts: str | Sequence[str] | None = None,
) -> dict[str, float]:
    """How often generated images show the attributes their prompts ask for (see the module docstring, §2).

    images (B, 1, H, W) in [−1, 1]; prompts: one per image (or one for all). Every attribute word of a prompt is a
    request, met when the measured value (d, w, |s|) lies on the asked side of the median q_½ of the prompt's digit
    ("thick": w > q_½, "thin": w < q_½). A word of a negative prompt asks for the other side ("not thick": w < q_½).

    Returns ``adherence`` (share of all requests met; NaN if none), ``requests`` (their number), the share per
    attribute (``size``, ``thickness``, ``slant``) and per word (``"thick"``, ``"not thick"``, …) for those asked.
    """
    values = _binned_values(attributes(images))
    n = len(images)

    def per_image(p: str | Sequence[str] | None, name: str) -> list[str]:
        if p is None:
            return [""] * n
        if isinstance(p, str):
            return [p] * n
        p = list(p)
        if len(p) != n or not all(isinstance(s, str) for s in p):
            raise ValueError(f"{name} must be one string or {n} strings (one per image), got {len(p)} items")
        return p

    parsed = [parse_prompt(s) for s in per_image(prompts, "prompts")]
    negative = [parse_prompt(s) for s in per_image(negative_prompts, "negative_prompts")]
    rows = _digit_rows([p["digit"] for p in parsed], n)
    met: dict[str, list[bool]] = {}
    for name in ATTRIBUTES:
        median = bins.table(name)[rows, 1]  # (B,)
        above = (values[name].reshape(-1).cpu() > median).tolist()
        for i in range(n):
            for word, negated in ((parsed[i][name], False), (negative[i][name], True)):
                if word is None:
                    continue
                wants_high = (word == ATTRIBUTE_WORDS[name][1]) != negated
                ok = above[i] == wants_high
                met.setdefault(name, []).append(ok)
                met.setdefault(f"not {word}" if negated else word, []).append(ok)
    every = [ok for name in ATTRIBUTES for ok in met.get(name, [])]
    out: dict[str, float] = {"adherence": sum(every) / len(every) if every else math.nan, "requests": len(every)}
    out.update({k: sum(v) / len(v) for k, v in met.items()})
    return out


# ----------------------------------------------------------------------------------------------------------------------
# 3. Word tokenizer
# ----------------------------------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")  # ids 0, 1, 2, 3
_CAPTION_WORDS = tuple(w for pair in ATTRIBUTE_WORDS.values() for w in pair)
BASE_WORDS = ("a", "an", "the", "digit", "number", "handwritten", *DIGIT_NAMES, *_CAPTION_WORDS)
_TOKENIZER_FILE = "tokenizer.json"
_TOKENIZER_FORMAT = "diffusion_lab.word_tokenizer/1"


class BatchEncoding(dict):
    """The tokenizer's output: a dict (``enc["input_ids"]``) with attribute access (``enc.input_ids``), like transformers'."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: torch.device | str) -> BatchEncoding:
        return BatchEncoding({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.items()})


def _write_json_atomic(path: Path, obj: object) -> None:
    from diffusion_lab.checkpoint import write_json_atomic

    write_json_atomic(path, obj)


class WordTokenizer:
    """Word-level tokenizer: lower-case, split on whitespace and punctuation, one id per known word.

    ``tokenizer(texts)`` returns a :class:`BatchEncoding` with ``input_ids`` and ``attention_mask``, (B, L) long,
    L = ``max_length`` (default ``model_max_length``): <bos> w₁ … wₙ <eos> <pad> … with mask 1 on <bos>…<eos>.
    The empty prompt "" gives <bos> <eos>: the unconditional prompt of classifier-free guidance. Truncation keeps
    <bos> and <eos> and drops words, as CLIP's tokenizer does. Unknown words become <unk>, with a warning naming them.
    """

    pad_token, unk_token, bos_token, eos_token = SPECIAL_TOKENS
    pad_token_id, unk_token_id, bos_token_id, eos_token_id = range(4)

    def __init__(self, vocab: Sequence[str], model_max_length: int = 77):
        vocab = list(vocab)
        if tuple(vocab[:4]) != SPECIAL_TOKENS:
            raise ValueError(f"vocab must start with the special tokens {list(SPECIAL_TOKENS)}, got {vocab[:4]}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab has repeated words")
        bad = [w for w in vocab[4:] if _split_words(w) != [w] and not is_placeholder(w)]
        if bad:
            raise ValueError(
                f"vocab words must be lower-case letters and digits only (or an added token like '<my-token>'), got {bad[:5]}"
            )
        if not isinstance(model_max_length, int) or model_max_length < 2:
            raise ValueError(
                f"model_max_length must be an integer >= 2 (room for <bos> and <eos>), got {model_max_length!r}"
            )
        self.vocab = vocab  # id → word
        self.token_to_id = {w: i for i, w in enumerate(vocab)}
        self.model_max_length = model_max_length

    @classmethod
    def from_texts(
        cls, texts: Sequence[str] = (), extra_words: Sequence[str] = (), *, model_max_length: int = 77
    ) -> WordTokenizer:
        """Vocabulary: special tokens, the base words (articles, "digit", digit names, attribute words), then every
        other word of ``texts`` and ``extra_words`` in sorted order (so the same texts always give the same ids)."""
        if isinstance(texts, str) or isinstance(extra_words, str):
            raise TypeError("texts and extra_words must be lists of strings, not one string")
        words = {w for t in [*texts, *extra_words] for w in _split_words(t)}
        return cls([*SPECIAL_TOKENS, *BASE_WORDS, *sorted(words - set(BASE_WORDS))], model_max_length=model_max_length)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size}, model_max_length={self.model_max_length})"

    def tokenize(self, text: str) -> list[str]:
        """The words of ``text`` (lower-cased, punctuation dropped), before ids and special tokens.

        An added token in the vocabulary (``"<wide-three>"``, see :meth:`add_tokens`) stays one word; angle brackets
        around anything else are punctuation (``"<wide-three>"`` is "wide", "three" until it is added)."""
        words = []
        for w in re.findall(PLACEHOLDER_PATTERN + r"|[a-z0-9]+", text.lower()):
            words.extend([w] if w in self.token_to_id or not is_placeholder(w) else _split_words(w))
        return words

    def add_tokens(self, tokens: str | Sequence[str]) -> int:
        """Append new words to the vocabulary (ids ``vocab_size``, ``vocab_size + 1``, …), as transformers'
        ``tokenizer.add_tokens``; returns how many were new (words already known are skipped). A token is a plain
        lower-case word ("sks") or a placeholder in angle brackets ("<wide-three>"). Afterwards the text encoder's
        table needs the new rows: ``text_encoder.resize_token_embeddings(tokenizer.vocab_size)``."""
        tokens = [tokens] if isinstance(tokens, str) else list(tokens)
        bad = [t for t in tokens if not isinstance(t, str) or (_split_words(t) != [t] and not is_placeholder(t))]
        if bad:
            raise ValueError(
                f"tokens must be lower-case words ('sks') or placeholders in angle brackets ('<wide-three>'), got {bad}"
            )
        new = [t for t in dict.fromkeys(tokens) if t not in self.token_to_id]
        for t in new:
            self.token_to_id[t] = len(self.vocab)
            self.vocab.append(t)
        return len(new)

    def encode(self, text: str, *, max_length: int | None = None, truncation: bool = True) -> list[int]:
        """One text → [<bos>, ids…, <eos>] (no padding). Unknown words → <unk>, with a warning naming them."""
        return self._encode([text], max_length, truncation)[0]

    def _encode(self, texts: list[str], max_length: int | None, truncation: bool) -> list[list[int]]:
        max_length = self.model_max_length if max_length is None else max_length
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2 (room for <bos> and <eos>), got {max_length!r}")
        unknown: set[str] = set()
        out = []
        for text in texts:
            ids = []
            for w in self.tokenize(text):
                if w not in self.token_to_id:
                    unknown.add(w)
                ids.append(self.token_to_id.get(w, self.unk_token_id))
            if len(ids) + 2 > max_length:
                if not truncation:
                    raise ValueError(
                        f"{text!r} is {len(ids) + 2} tokens with <bos> and <eos>, more than max_length={max_length}: "
                        "shorten it, raise max_length, or pass truncation=True"
                    )
                ids = ids[: max_length - 2]
            out.append([self.bos_token_id, *ids, self.eos_token_id])
        if unknown:
            warnings.warn(
                f"unknown words {sorted(unknown)} were mapped to <unk>; the vocabulary knows {self.vocab_size - 4} "
                "words (tokenizer.vocab): rephrase, or build the tokenizer with WordTokenizer.from_texts(..., extra_words=...)",
                stacklevel=3,
            )
        return out

    def __call__(
        self,
        texts: str | Sequence[str],
        padding: bool | str = "max_length",
        max_length: int | None = None,
        truncation: bool = True,
        return_tensors: str | None = "pt",
    ) -> BatchEncoding:
        """Tokenize one text or a list: ``input_ids`` and ``attention_mask``, (B, L) long tensors (B = 1 for one text).

        padding: ``"max_length"`` (L = max_length, default ``model_max_length``), ``"longest"`` or True (L = longest
        in the batch), False or ``"do_not_pad"`` (no padding; needs ``return_tensors=None`` if lengths differ).
        return_tensors: ``"pt"`` for tensors, None for lists of lists.
        """
        if isinstance(texts, str):
            texts = [texts]
        elif not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            if isinstance(texts, (list, tuple)):
                got = "a list containing " + ", ".join(
                    sorted({type(t).__name__ for t in texts if not isinstance(t, str)})
                )
            else:
                got = type(texts).__name__
            raise TypeError(f"texts must be a string or a list of strings, got {got}")
        if len(texts) == 0:
            raise ValueError('texts is an empty list: pass at least one string ("" is the unconditional prompt)')
        if padding not in ("max_length", "longest", "do_not_pad", True, False):
            raise ValueError(f"padding must be 'max_length', 'longest', 'do_not_pad', True or False, got {padding!r}")
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        ids = self._encode(list(texts), max_length, truncation)
        if padding == "max_length":
            length = self.model_max_length if max_length is None else max_length
        elif padding in ("longest", True):
            length = max((len(s) for s in ids), default=2)
        else:
            length = None
        if length is not None:
            mask = [[1] * len(s) + [0] * (length - len(s)) for s in ids]
            ids = [s + [self.pad_token_id] * (length - len(s)) for s in ids]
        else:
            mask = [[1] * len(s) for s in ids]
        if return_tensors is None:
            return BatchEncoding(input_ids=ids, attention_mask=mask)
        if len({len(s) for s in ids}) > 1:
            raise ValueError("texts have different lengths: pass padding='max_length' or 'longest' to get tensors")
        return BatchEncoding(
            input_ids=torch.tensor(ids, dtype=torch.long).reshape(len(ids), -1),  # (B, L)
            attention_mask=torch.tensor(mask, dtype=torch.long).reshape(len(ids), -1),  # (B, L)
        )

    def decode(self, ids: torch.Tensor | Sequence[int], skip_special_tokens: bool = True) -> str:
        """One sequence of ids → text. <pad>, <bos> and <eos> are dropped if ``skip_special_tokens`` (<unk> is kept)."""
        ids = torch.as_tensor(ids).reshape(-1).tolist()
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids must be in 0..{self.vocab_size - 1} (vocab_size {self.vocab_size}), got {bad[:5]}")
        skip = {self.pad_token_id, self.bos_token_id, self.eos_token_id} if skip_special_tokens else set()
        return " ".join(self.vocab[i] for i in ids if i not in skip)

    def batch_decode(self, ids: torch.Tensor | Sequence[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
        """(B, L) ids → B texts."""
        return [self.decode(row, skip_special_tokens) for row in ids]

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` (the vocabulary in id order and ``model_max_length``) into ``directory``, atomically."""
        directory = Path(directory)
        obj = {"format": _TOKENIZER_FORMAT, "model_max_length": self.model_max_length, "vocab": self.vocab}
        _write_json_atomic(directory / _TOKENIZER_FILE, obj)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> WordTokenizer:
        """Load a tokenizer written by :meth:`save_pretrained`."""
        from diffusion_lab.checkpoint import CheckpointError

        path = Path(directory) / _TOKENIZER_FILE
        if not path.is_file():
            raise CheckpointError(f"no tokenizer at {Path(directory)}: {_TOKENIZER_FILE} is missing")
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise CheckpointError(f"{path} is not valid JSON (truncated?): {e}") from e
        if not isinstance(obj, dict) or obj.get("format") != _TOKENIZER_FORMAT:
            raise CheckpointError(f"{path} is not a diffusion_lab word tokenizer")
        return cls(obj["vocab"], model_max_length=obj["model_max_length"])


# ----------------------------------------------------------------------------------------------------------------------
# 4. A tiny CLIP-like text encoder
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class TextEncoderConfig:
    """Shape of the text transformer (stored as JSON next to its weights). Set ``vocab_size`` to
    ``tokenizer.vocab_size`` and tokenize with ``max_length=max_position``."""

    vocab_size: int
    hidden_size: int = 64  # D
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4  # MLP width = mlp_ratio·D
    max_position: int = 16  # longest input (tokens, <bos> and <eos> included)
    projection_dim: int | None = None  # if set: text_embeds = pooler_output @ W, (B, projection_dim)
    dropout: float = 0.0
    pad_token_id: int = WordTokenizer.pad_token_id
    eos_token_id: int = WordTokenizer.eos_token_id
    extra: dict = field(default_factory=dict)  # free-form notes; not used by the network

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "mlp_ratio", "max_position"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if self.max_position < 2:
            raise ValueError(f"max_position must be >= 2 (room for <bos> and <eos>), got {self.max_position}")
        if self.projection_dim is not None and (not isinstance(self.projection_dim, int) or self.projection_dim < 1):
            raise ValueError(f"projection_dim must be None or a positive integer, got {self.projection_dim!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("pad_token_id", "eos_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name} must be in 0..{self.vocab_size - 1} (vocab_size), got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TextEncoderOutput:
    """What :class:`TextEncoder` returns, named as in transformers' ``CLIPTextModel(WithProjection)``."""

    last_hidden_state: torch.Tensor  # (B, L, D) per-token states after the final LayerNorm
    pooler_output: torch.Tensor  # (B, D) the state at each row's first <eos>
    text_embeds: torch.Tensor | None = None  # (B, projection_dim) if the config has a projection


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention, softmax(QKᵀ/√d_h + M)V, where M hides later tokens (causal) and padding keys.

    M[i, j] = 0 if j ≤ i and key j is not padding, else −∞. Token i always sees itself, so a row is never empty.
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        b, l, d = x.shape
        q, k, v = (
            self.qkv(x).reshape(b, l, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        )  # (B, nh, L, hs) each
        idx = torch.arange(l, device=x.device)
        allowed = idx[None, :] <= idx[:, None]  # (L, L) causal: query i sees keys j ≤ i
        if key_padding is not None:  # (B, L) True where the key is a real token
            allowed = allowed & (key_padding[:, None, :] | torch.eye(l, dtype=torch.bool, device=x.device))  # (B, L, L)
            allowed = allowed[:, None]  # (B, 1, L, L)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, L, hs)
        return self.proj(out.transpose(1, 2).reshape(b, l, d))  # (B, L, D)


class TransformerLayer(nn.Module):
    """Pre-LN block as in CLIP's text transformer: x + attn(LN(x)), then x + MLP(LN(x)) with MLP = Linear-GELU-Linear."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        d = cfg.hidden_size
        self.norm1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, cfg.num_heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(), nn.Linear(cfg.mlp_ratio * d, d))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), key_padding))  # (B, L, D)
        return x + self.dropout(self.mlp(self.norm2(x)))


class TextEncoder(PretrainedModel):
    """``encoder(input_ids, attention_mask=None) -> TextEncoderOutput`` (last_hidden_state, pooler_output, text_embeds).

    input_ids (B, L) with L ≤ ``max_position``, each row holding an <eos> (the tokenizer appends one).
    attention_mask (B, L), 1 for real tokens: padding keys are hidden from every token (None: only the causal mask,
    as ``CLIPTextModel`` without a mask; with right padding the causal mask already hides the padding from every
    token up to <eos>, so ``pooler_output`` is the same either way).
    """

    config_class = TextEncoderConfig

    def __init__(self, config: TextEncoderConfig | None = None):
        super().__init__()
        if not isinstance(config, TextEncoderConfig):
            raise TypeError(
                "TextEncoder needs a TextEncoderConfig, e.g. TextEncoderConfig(vocab_size=tokenizer.vocab_size)"
            )
        cfg = self.config = config
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_position, cfg.hidden_size)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers))
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size)
        self.text_projection = (
            nn.Linear(cfg.hidden_size, cfg.projection_dim, bias=False) if cfg.projection_dim is not None else None
        )
        for m in self.modules():  # CLIP-style initialisation: small normal weights, zero biases
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def resize_token_embeddings(self, new_num_tokens: int) -> nn.Embedding:
        """Grow the token-embedding table to ``new_num_tokens`` rows (after ``tokenizer.add_tokens``), as
        transformers' method of the same name: old rows are kept, new rows start at the mean of the old ones
        (a neutral word; textual inversion then overwrites its row). ``config.vocab_size`` follows."""
        old = self.token_embedding
        if not isinstance(new_num_tokens, int) or new_num_tokens < old.num_embeddings:
            raise ValueError(
                f"new_num_tokens must be an integer >= the current vocab_size {old.num_embeddings} (rows are only "
                f"added, never removed), got {new_num_tokens!r}"
            )
        new = nn.Embedding(new_num_tokens, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight[: old.num_embeddings] = old.weight
            new.weight[old.num_embeddings :] = old.weight.mean(0)
        new.weight.requires_grad_(old.weight.requires_grad)
        self.token_embedding = new
        self.config.vocab_size = new_num_tokens
        return new

    def _check_inputs(self, input_ids: object, attention_mask: object) -> None:
        cfg = self.config
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a (B, L) tensor from the tokenizer, got {type(input_ids).__name__}")
        if input_ids.ndim != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(
                f"input_ids must be a (B, L) integer tensor, got dtype {input_ids.dtype} shape {tuple(input_ids.shape)}"
            )
        b, l = input_ids.shape
        if b == 0 or l == 0:
            raise ValueError(f"input_ids is empty (shape {(b, l)})")
        if l > cfg.max_position:
            raise ValueError(
                f"input_ids has length {l} but this TextEncoder has max_position={cfg.max_position}: "
                f"tokenize with max_length={cfg.max_position} (tokenizer(texts, max_length={cfg.max_position}))"
            )
        if input_ids.min() < 0 or input_ids.max() >= cfg.vocab_size:
            raise ValueError(
                f"token ids must be in 0..{cfg.vocab_size - 1} (vocab_size={cfg.vocab_size}), got values from "
                f"{int(input_ids.min())} to {int(input_ids.max())}: was the tokenizer built with more words than the "
                "encoder's vocab_size? Use TextEncoderConfig(vocab_size=tokenizer.vocab_size)"
            )
        if not (input_ids == cfg.eos_token_id).any(1).all():
            raise ValueError(
                f"every row of input_ids needs an <eos> (id {cfg.eos_token_id}): tokenize with the tokenizer, which appends it"
            )
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
                got = (
                    tuple(attention_mask.shape)
                    if isinstance(attention_mask, torch.Tensor)
                    else type(attention_mask).__name__
                )
                raise ValueError(f"attention_mask must be a tensor shaped like input_ids {(b, l)}, got {got}")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TextEncoderOutput:
        self._check_inputs(input_ids, attention_mask)
        b, l = input_ids.shape
        pos = torch.arange(l, device=input_ids.device)
        h = self.token_embedding(input_ids) + self.position_embedding(pos)[None]  # (B, L, D)
        key_padding = attention_mask.bool() if attention_mask is not None else None  # (B, L)
        for layer in self.layers:
            h = layer(h, key_padding)
        h = self.final_layer_norm(h)  # (B, L, D)
        eos = (input_ids == self.config.eos_token_id).int().argmax(1)  # (B,) first <eos> of each row
        pooled = h[torch.arange(b, device=h.device), eos]  # (B, D)
        embeds = self.text_projection(pooled) if self.text_projection is not None else None
        return TextEncoderOutput(last_hidden_state=h, pooler_output=pooled, text_embeds=embeds)
