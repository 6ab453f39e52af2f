"""Measuring the SDXL stand-ins (:mod:`diffusion_lab.bridge.standin_sdxl`) through the real pipeline calls.

Every figure comes from ``pipe(prompt, ..., output_type="pt")`` (images (B, 3, H, W) in [0, 1]), read by the
course's MNIST classifier after :func:`to_mnist`.

======================  ==========  =================================================================================
code                    symbol      meaning
======================  ==========  =================================================================================
``to_mnist``            x           pipeline images → grey (B, 1, 28, 28) in [−1, 1]: the canvas's 2-px border cut off
``centroid``            (r̄, c̄)      ink-weighted mean row and column, pixels of the canvas (rows go down)
``crop_slope``          ∂c̄/∂c       centroid shift per unit of ``crops_coords_top_left``; SDXL's semantics predict −1
                                    (the crop window moves right/down, so the content moves left/up by as much)
``sharpness``           —           solid-ink fraction (:func:`~diffusion_lab.bridge.standin_sdxl.sharpness`)
``adherence``           A           share of samples the classifier reads as the prompt's digit
======================  ==========  =================================================================================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffusion_lab.bridge.standin_sdxl import INK, sharpness
from diffusion_lab.mnist.captions import ATTRIBUTE_WORDS, DIGIT_NAMES, attribute_adherence, attributes
from diffusion_lab.mnist.metrics import evaluate, prompt_adherence
from diffusion_lab.utils.errors import check_int, check_tensor

__all__ = [
    "CALL",
    "digit_prompts",
    "to_mnist",
    "centroid",
    "generate",
    "measure_adherence",
    "measure_attributes",
    "measure_crop_shift",
    "measure_original_size",
    "measure_refiner",
    "measure_standins",
]

CALL = {"height": 32, "width": 32, "num_inference_steps": 20, "guidance_scale": 5.0}  # the call notebooks use


def digit_prompts(n: int) -> tuple[list[str], torch.Tensor]:
    """n prompts "a zero", "a one", …, "a nine", "a zero", … ("an eight") and their digits (n,)."""
    n = check_int("n", n)
    labels = torch.arange(n) % 10
    return [("an " if d == 8 else "a ") + DIGIT_NAMES[d] for d in labels.tolist()], labels


def to_mnist(images: torch.Tensor, canvas: int = 32) -> torch.Tensor:
    """Pipeline images (B, C, H, W) in [0, 1] → (B, 1, 28, 28) in [−1, 1]: grey, resized to the canvas if needed, then
    the 2-pixel border cut off (the stand-in draws MNIST's 28² digit box padded to 32)."""
    check_tensor("images", images, "(B, C, H, W) in [0, 1]")
    x = images.float().mean(1, keepdim=True) * 2 - 1  # (B, 1, H, W)
    if x.shape[-2:] != (canvas, canvas):
        x = F.interpolate(x, size=(canvas, canvas), mode="bilinear", antialias=True, align_corners=False)
    m = (canvas - 28) // 2
    return x[:, :, m : m + 28, m : m + 28].clamp(-1, 1)


def centroid(images: torch.Tensor) -> torch.Tensor:
    """Ink-weighted (row, column) of each image (B, C, H, W) in [0, 1], (B, 2) in pixels (ink = brightness above
    0.1, as :func:`sharpness` counts visible pixels)."""
    p = (images.float().mean(1) - INK).clamp_min(0)  # (B, H, W)
    h, w = p.shape[-2:]
    mass = p.sum((1, 2)).clamp_min(1e-6)
    rows = (p.sum(2) * torch.arange(h)).sum(1) / mass
    cols = (p.sum(1) * torch.arange(w)).sum(1) / mass
    return torch.stack([rows, cols], 1)


@torch.no_grad()
def generate(pipe, prompts: list[str], *, seed: int = 0, batch: int = 50, **call) -> torch.Tensor:
    """``pipe(prompts[i:i + batch], generator=manual_seed(seed + i), output_type="pt", **call)`` over all prompts,
    images (N, 3, H, W) in [0, 1]."""
    out = []
    for i in range(0, len(prompts), batch):
        g = torch.Generator().manual_seed(seed + i)
        out.append(pipe(prompts[i : i + batch], generator=g, output_type="pt", **call).images.float())
    return torch.cat(out)


def measure_adherence(pipe, classifier, n: int = 200, *, seed: int = 0, fid: bool = True, **call) -> dict:
    """Digit adherence of n samples ("a zero" … "a nine" in turn) through ``pipe(...)`` and their sharpness; with
    ``fid`` (and n ≥ 20) also FID-MNIST and its floor (the course's :func:`~diffusion_lab.mnist.metrics.evaluate`)."""
    prompts, labels = digit_prompts(n)
    x = to_mnist(generate(pipe, prompts, seed=seed, **call))
    if n < 20 or not fid:
        return {"n": n, "adherence": prompt_adherence(x, labels, classifier), "sharpness": sharpness(x).mean().item()}
    scores = evaluate(x, labels, classifier)
    return {k: scores[k] for k in ("n", "adherence", "fid_mnist", "fid_floor")} | {
        "sharpness": sharpness(x).mean().item()
    }


def measure_crop_shift(pipe, n: int = 40, crops: tuple[int, ...] = (0, 4, 8), *, seed: int = 0, **call) -> dict:
    """Centroid of the same prompts and seeds at ``crops_coords_top_left`` = (c, c) for each c: the mean (row, col)
    per c and the least-squares slope of the centroid in c, pixels per crop unit (−1 predicted) — also for a crop
    along one axis at a time, (c, 0) and (0, c), to show each coordinate moves its own axis."""
    prompts, _ = digit_prompts(n)
    by = {}
    for c in crops:
        for name, crop in (("both", (c, c)), ("top", (c, 0)), ("left", (0, c))):
            if c == 0 and name != "both":
                by[(name, 0)] = by[("both", 0)]
                continue
            by[(name, c)] = centroid(generate(pipe, prompts, seed=seed, crops_coords_top_left=crop, **call))
    cs = torch.tensor(crops, dtype=torch.float64)

    def slope(values: list[float]) -> float:
        v = torch.tensor(values, dtype=torch.float64)
        return (((cs - cs.mean()) * (v - v.mean())).sum() / ((cs - cs.mean()) ** 2).sum()).item()

    rows = [by[("both", c)][:, 0].mean().item() for c in crops]
    cols = [by[("both", c)][:, 1].mean().item() for c in crops]
    return {
        "n": n,
        "crops": list(crops),
        "centroid_row": rows,
        "centroid_col": cols,
        "slope_row_px_per_unit": slope(rows),
        "slope_col_px_per_unit": slope(cols),
        "top_only": {"slope_row": slope([by[("top", c)][:, 0].mean().item() for c in crops]),
                     "slope_col": slope([by[("top", c)][:, 1].mean().item() for c in crops])},
        "left_only": {"slope_row": slope([by[("left", c)][:, 0].mean().item() for c in crops]),
                      "slope_col": slope([by[("left", c)][:, 1].mean().item() for c in crops])},
    }  # fmt: skip


def measure_original_size(
    pipe, classifier, n: int = 40, sizes: tuple[int, ...] = (8, 16, 32), *, seed: int = 0, **call
) -> dict:
    """Sharpness and adherence of the same prompts and seeds at ``original_size`` = (s, s) for each s (a small
    source upscaled is blurred: sharpness should grow with s)."""
    prompts, labels = digit_prompts(n)
    out = {"n": n, "sizes": list(sizes), "sharpness": [], "adherence": []}
    for s in sizes:
        x = to_mnist(generate(pipe, prompts, seed=seed, original_size=(s, s), **call))
        out["sharpness"].append(sharpness(x).mean().item())
        out["adherence"].append(prompt_adherence(x, labels, classifier))
    return out


def measure_refiner(
    base,
    refiner,
    classifier,
    n: int = 200,
    *,
    steps: int = 20,
    high_noise_frac: float = 0.8,
    guidance_scale: float = 5.0,
    seed: int = 0,
    size: int = 32,
    aesthetic_score: float = 6.0,
) -> dict:
    """The base alone (all ``steps``) against the hand-off of notebook 10 (base with ``denoising_end`` → latents →
    refiner with ``denoising_start``), same prompts and seeds: adherence, FID-MNIST and sharpness of each."""
    prompts, labels = digit_prompts(n)
    call = dict(num_inference_steps=steps, guidance_scale=guidance_scale, height=size, width=size)
    alone = to_mnist(generate(base, prompts, seed=seed, **call))
    refined = []
    for i in range(0, n, 50):
        g = torch.Generator().manual_seed(seed + i)
        latents = base(prompts[i : i + 50], denoising_end=high_noise_frac, output_type="latent", generator=g,
                       **call).images  # fmt: skip
        refined.append(refiner(prompts[i : i + 50], image=latents, num_inference_steps=steps,
                               denoising_start=high_noise_frac, guidance_scale=guidance_scale, generator=g,
                               aesthetic_score=aesthetic_score, output_type="pt").images.float())  # fmt: skip
    refined = to_mnist(torch.cat(refined))
    out = {"n": n, "steps": steps, "high_noise_frac": high_noise_frac, "guidance_scale": guidance_scale,
           "aesthetic_score": aesthetic_score}  # fmt: skip
    for name, x in (("base_alone", alone), ("base_then_refiner", refined)):
        scores = evaluate(x, labels, classifier) if n >= 20 else {"adherence": prompt_adherence(x, labels, classifier)}
        out[name] = {k: scores[k] for k in ("adherence", "fid_mnist", "fid_floor") if k in scores}
        out[name]["sharpness"] = sharpness(x).mean().item()
    return out


def measure_attributes(pipe, bins, n: int = 40, *, seed: int = 0, **call) -> dict:
    """Attribute adherence (the course's :func:`~diffusion_lab.mnist.captions.attribute_adherence`, 0.5 = chance)
    of "a <word> <digit>" for each caption word (n samples each), and a negative prompt: "a <digit>" with
    ``negative_prompt="thick"`` against without, mean stroke thickness in pixels (the negative prompt replaces the
    zero ∅ embedding, so guidance pushes away from "thick")."""
    prompts, _ = digit_prompts(n)
    out: dict = {"n": n, "words": {}}
    for word in (w for pair in ATTRIBUTE_WORDS.values() for w in pair):
        asked = [p.replace("an eight", "a eight").replace("a ", f"a {word} ", 1) for p in prompts]
        asked = [p.replace("a eight", "an eight") for p in asked]
        x = to_mnist(generate(pipe, asked, seed=seed, **call))
        out["words"][word] = attribute_adherence(x, asked, bins)["adherence"]
    plain = to_mnist(generate(pipe, prompts, seed=seed, **call))
    negative = to_mnist(generate(pipe, prompts, seed=seed, negative_prompt="thick", **call))
    out["negative_thick"] = {
        "thickness_without": attributes(plain)["thickness"].mean().item(),
        "thickness_with_negative_thick": attributes(negative)["thickness"].mean().item(),
        "adherence_to_not_thick": attribute_adherence(negative, prompts, bins, negative_prompts="thick")["adherence"],
        "adherence_to_not_thick_without": attribute_adherence(plain, prompts, bins, negative_prompts="thick")[
            "adherence"
        ],
    }
    return out


def measure_standins(
    base, refiner, classifier, n: int = 200, n_behaviour: int = 60, call: dict | None = None, bins=None
) -> dict:
    """Every figure recorded for the stand-ins (recipe.json, benchmarks/results/standin_sdxl.json): adherence with
    guidance w = 5 and w = 1 (n samples), the crop shift and the original-size blur (n_behaviour per setting), the
    refiner hand-off against the base alone (n), and the refiner's aesthetic score 2.5 against 6 (n_behaviour); with
    the caption ``bins``, also :func:`measure_attributes` (n_behaviour per word)."""
    call = dict(CALL if call is None else call)
    steps, w, size = call["num_inference_steps"], call["guidance_scale"], call["height"]
    out = {"call": call}
    out["adherence_w5"] = measure_adherence(base, classifier, n, **call)
    out["adherence_w1"] = measure_adherence(base, classifier, n, **(call | {"guidance_scale": 1.0}))
    out["crop_shift"] = measure_crop_shift(base, n_behaviour, **call)
    out["original_size"] = measure_original_size(base, classifier, n_behaviour, **call)
    out["refiner"] = measure_refiner(base, refiner, classifier, n, steps=steps, guidance_scale=w, size=size)
    out["refiner_aesthetic_score"] = {
        str(a): measure_refiner(
            base, refiner, classifier, n_behaviour, steps=steps, guidance_scale=w, size=size, aesthetic_score=a
        )["base_then_refiner"]  # fmt: skip
        for a in (2.5, 6.0)
    }
    if bins is not None:
        out["attributes"] = measure_attributes(base, bins, n_behaviour, **call)
    return out
