"""Make the README's course-map thumbnails from the notebooks' stored outputs.

One figure per notebook, picked by (code-or-markdown cell index, output index) in the notebook's
JSON, optionally cropped (a box in fractions of the figure's width and height), scaled to
WIDTH pixels wide and written to docs/images/nbNN.png. Re-run after the stored outputs change:

    .venv/bin/python docs/images/make_thumbnails.py

If a notebook's cells move, the script stops and says which choice no longer points at a
figure; look at the candidates (it lists them) and update FIGURES.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent
WIDTH = 240

# notebook number: (notebook file, cell index, output index, crop box (left, top, right, bottom) in fractions, what it shows)
FIGURES = {
    "01": ("01_forward_diffusion.ipynb", 13, 0, None, "a seven noised at t = 0 … 999 by three schedules"),
    "02": ("02_ddpm_from_scratch.ipynb", 30, 0, (0, 0, 0.345, 1), "class-conditional DDPM samples, digit asked for per column"),
    "03": ("03_ddim_and_samplers.ipynb", 9, 0, (0.47, 0, 1, 1), "one x_T sampled by DDIM with 2 … 500 steps"),
    "04": ("04_latent_autoencoder.ipynb", 15, 0, None, "interpolating pixels vs interpolating latents"),
    "05": ("05_text_conditioning_and_cross_attention.ipynb", 35, 0, (0, 0, 1, 0.53), "per-word cross-attention maps"),
    "06": ("06_classifier_free_guidance.ipynb", 13, 0, None, "a guidance sweep: one row per guidance scale w"),
    "07": ("07_tiny_stable_diffusion.ipynb", 18, 0, (0, 0, 1, 0.5), "the tiny SD's text-to-image: digits × attributes"),
    "08": ("08_rectified_flow_and_mmdit.ipynb", 12, 0, (0.333, 0, 1, 1), "sample paths: DDPM path vs the straight flow path"),
    "09": ("09_fast_sampling_and_distillation.ipynb", 42, 0, None, "teacher at 25 and 2 steps vs the distilled 1-4 step student"),
    "10": ("10_stable_diffusion_xl.ipynb", 19, 0, None, "SDXL's micro-conditioning: original_size, crop, target_size"),
    "11": ("11_stable_diffusion_3.ipynb", 15, 0, None, "SD3 with T5 kept (top) and dropped (bottom)"),
    "12": ("12_fine_tuning.ipynb", 30, 0, None, "a LoRA on the SDXL stand-in at adapter weight 0, ½, 1"),
    "13": ("13_model_surgery_and_scaling_out.ipynb", 13, 0, None, "adherence and FID against pruning sparsity, int8 beside them"),
    "14": ("14_super_resolution.ipynb", 14, 0, None, "7×7 digits upscaled ×4: input, bicubic, the latent upscaler, the truth"),
    "15": ("15_controlnet.ipynb", 19, 0, (0, 0, 0.5, 1), "ControlNet: test digits, their edge maps, the controlled output, the base"),
    "16": ("16_image_variations_and_video.ipynb", 33, 1, None, "the SVD stand-in: a digit moving right over four frames"),
}


def stored_pngs(cells: list[dict]) -> list[tuple[int, int]]:
    """Every (cell index, output index) holding an image/png."""
    return [(ci, oi) for ci, c in enumerate(cells) for oi, o in enumerate(c.get("outputs", []))
            if "image/png" in o.get("data", {})]


def thumbnail(number: str) -> Path:
    name, cell, output, box, _ = FIGURES[number]
    cells = json.loads((ROOT / "notebooks" / name).read_text())["cells"]
    try:
        data = cells[cell]["outputs"][output]["data"]["image/png"]
    except (IndexError, KeyError) as err:
        raise SystemExit(f"{name}: cell {cell} output {output} holds no figure now; "
                         f"figures (cell, output): {stored_pngs(cells)}") from err
    image = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    if box is not None:
        w, h = image.size
        image = image.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))
    height = round(image.height * WIDTH / image.width)
    image = image.resize((WIDTH, height), Image.LANCZOS)
    path = OUT / f"nb{number}.png"
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


if __name__ == "__main__":
    total = 0
    for number in FIGURES:
        path = thumbnail(number)
        total += path.stat().st_size
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.1f} KB ({FIGURES[number][4]})")
    print(f"total {total / 1024:.1f} KB")
