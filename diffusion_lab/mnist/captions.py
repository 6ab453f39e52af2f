"""Measurable attributes of MNIST digits (size, thickness, slant), the captions built from them, and prompt parsing.

=====================  =================  ==========================================================================
code                   symbol             meaning
=====================  =================  ==========================================================================
``images``             x, b               (B, 1, H, W) in [−1, 1]; brightness b = (x + 1)/2
``INK_FLOOR``          τ                  0.4: brightness at or below it is background
``p``                  p                  ink clamp((b − τ)/(1 − τ), 0, 1); u = column (right), v = row (**down**)
``mass``, ``mu20`` …   A, μ₂₀, μ₀₂, μ₁₁   ink mass Σp and central moments (1/A)Σp·(u − ū)², …, (1/A)Σp·(u − ū)(v − v̄)
``thickness``          w = 2A/P           mean stroke width in pixels (P: the outline's length, below)
``slant``              s = −μ₁₁/μ₀₂       pixels of lean to the right per pixel of height (top leaning right: s > 0)
``size``               d                  4·(μ₂₀μ₀₂ − μ₁₁²)^¼: diameter of the disc with the moment ellipse's area
``AttributeBins``      q_lo, q_½, q_hi    per attribute and digit: the low_q, 0.5, high_q quantiles on MNIST
=====================  =================  ==========================================================================

- P by Cauchy–Crofton on the four lattice directions: P = (π/8)·[N₀ + N₉₀ + (N₄₅ + N₁₃₅)/√2], N_θ = Σ|p(x + e_θ) −
  p(x)| (within −5 … +3 % for a straight edge of any direction, and symmetric in the lean, unlike Σ|∇p|).
- A stroke of width w and length L: 2A/P = wL/(L + w) → w. Shearing u ← u + a·(v̄ − v) adds a to s and leaves d
  unchanged (det = 1): slant does not leak into size. A uniform disc of diameter d has Σ = (d²/16)·I.
- Captions (:func:`caption`, :func:`captions_for`): a word only in an extreme bin — "small"/"large" for d < q_lo /
  d > q_hi, "thin"/"thick" for w, "upright"/"slanted" for |s| — in the order article, size, thickness, slant, digit.
- Attribute adherence (:func:`attribute_adherence`): a requested word is met when the value lies on its side of the
  median q_½ of the prompt's digit, so a random digit meets half the requests and a perfect sampler all of them.

The moments are those that deskew MNIST (LeCun et al. 1998). The floor τ keeps faint background noise, which second
moments weight by its squared distance, out of size: with τ = 0, noise of std 0.05 flipped 41 % of size verdicts;
with τ = 0.4 every attribute keeps 100 % adherence up to std 0.1. Bins are fitted per digit (a "large one" is large
*for a one*; MNIST scales every digit to a 20-pixel box, so d mostly follows the width) and over all digits for
prompts that name none; on the 60,000 training images the three binned values are nearly uncorrelated (|r| ≤ 0.11).
``drop_prob`` drops attribute words for training; dropping whole captions for classifier-free guidance is the
training loop's job. The tokenizer and text encoder that read these captions are in :mod:`diffusion_lab.models.text_encoder`.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from diffusion_lab.utils.errors import check_int, check_number, check_tensor

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_WORDS",
    "DIGIT_NAMES",
    "INK_FLOOR",
    "AttributeBins",
    "attribute_adherence",
    "attributes",
    "caption",
    "captions_for",
    "sample_caption_batch",
    "fit_bins",
    "ink",
    "moments",
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


def ink(images: object) -> torch.Tensor:
    """Checked images (B, 1, H, W) in [−1, 1] → ink p = clamp(((x + 1)/2 − τ)/(1 − τ), 0, 1), (B, H, W) float."""
    check_tensor("images", images, "of shape (B, 1, H, W)")
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(
            f"images must have shape (B, 1, H, W) (one channel, values in [-1, 1]), got {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise ValueError(
            f"images must be floating point in [-1, 1], got dtype {images.dtype} "
            "(uint8 pixels: convert with diffusion_lab.mnist.data.to_unit_range)"
        )
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf values")
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    brightness = (images[:, 0].to(dtype) + 1) / 2  # (B, H, W), b = (x + 1)/2
    return ((brightness - INK_FLOOR) / (1 - INK_FLOOR)).clamp(0, 1)


def moments(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
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


_ink, _moments = ink, moments  # the names the library's own modules use


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
    if isinstance(digits, torch.Tensor) and digits.ndim == 0 and digits.dtype != torch.bool:
        digits = digits.item()  # one digit for every image, as an int
    if digits is None or (isinstance(digits, numbers.Integral) and not isinstance(digits, bool)):
        digits = [digits] * n
    if isinstance(digits, torch.Tensor):
        if digits.dtype.is_floating_point or digits.dtype.is_complex or digits.dtype == torch.bool:
            raise TypeError(f"digits must be integers 0..9 (or None for any digit), got dtype {digits.dtype}")
        rows = digits.reshape(-1).long().cpu()
    else:
        if isinstance(digits, str) or not isinstance(digits, Sequence):
            raise TypeError(f"digits must be integers 0..9 or None, one per image, got {type(digits).__name__}")
        bad = [d for d in digits if d is not None and (isinstance(d, bool) or not isinstance(d, numbers.Integral))]
        if bad:
            raise TypeError(f"digits must be integers 0..9 (or None for any digit), got {bad[:3]!r}")
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
    low_q, high_q = check_number("low_q", low_q), check_number("high_q", high_q)
    min_per_digit = check_int("min_per_digit", min_per_digit)
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
    check_number("drop_prob", drop_prob, minimum=0.0, maximum=1.0)


def _check_bins(bins: object) -> None:
    if not isinstance(bins, AttributeBins):
        raise TypeError(f"bins must be an AttributeBins (from fit_bins or load_bins), got {type(bins).__name__}")


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
    if label is not None and (isinstance(label, bool) or not isinstance(label, numbers.Integral | torch.Tensor)):
        raise TypeError(f"label must be a digit 0..9 or None, got {label!r} ({type(label).__name__})")
    if not isinstance(attrs, dict):
        raise TypeError(f"attrs must be a dict of one image's attributes (from attributes(images)), got {attrs!r}")
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
    _check_bins(bins)
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


def sample_caption_batch(
    labels: torch.Tensor,
    attrs: dict[str, torch.Tensor],
    bins: AttributeBins,
    batch_size: int,
    generator: torch.Generator,
    *,
    drop_prob: float = 0.0,
    empty_prob: float = 0.0,
) -> tuple[torch.Tensor, list[str]]:
    """One training batch of a text-to-image recipe: ``batch_size`` indices drawn uniformly from the N examples
    (labels (N,), ``attrs`` each (N,)), and their captions (:func:`captions_for`, each attribute word dropped with
    ``drop_prob``), each caption replaced by "" with probability ``empty_prob`` (the unconditional input of
    classifier-free guidance). Draws, in this order, from ``generator``: the indices, the word drops, the empty
    prompts. Returns (indices (B,), captions)."""
    if not 0.0 <= empty_prob <= 1.0:
        raise ValueError(f"empty_prob must be a probability in [0, 1], got {empty_prob!r}")
    idx = torch.randint(0, len(labels), (batch_size,), generator=generator)  # (B,)
    captions = captions_for(
        labels[idx], None, bins, attrs={k: v[idx] for k, v in attrs.items()}, generator=generator, drop_prob=drop_prob
    )
    if empty_prob > 0:
        empty = (torch.rand(batch_size, generator=generator) < empty_prob).tolist()
        captions = ["" if e else c for c, e in zip(captions, empty, strict=True)]
    return idx, captions


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
    _check_bins(bins)
    values = _binned_values(attributes(images))
    n = len(images)

    def per_image(p: str | Sequence[str] | None, name: str) -> list[str]:
        if p is None:
            return [""] * n
        if isinstance(p, str):
            return [p] * n
        if not isinstance(p, Sequence) or not all(isinstance(s, str) for s in p):
            raise TypeError(f"{name} must be one string or a list of {n} strings (one per image), got {p!r}")
        p = list(p)
        if len(p) != n:
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
