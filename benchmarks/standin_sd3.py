"""Dropping T5 from the SD3 stand-in trained on MNIST: attribute and digit adherence with T5 kept vs dropped.

What is measured
----------------
The shipped stand-in (``data/pretrained/sd3_mnist``, loaded by ``bridge.load_pipeline("sd3-medium", env,
standin="trained")``: the real ``StableDiffusion3Pipeline`` classes) and the same pipeline without T5
(``StableDiffusion3Pipeline.from_pipe(pipe, text_encoder_3=None, tokenizer_3=None, dtype=...)``: the pipeline feeds
zeros for T5's tokens), through their own ``pipe(...)`` call, paired (same prompts, same noise), two seeds:

- **long prompts**, three attribute words ("a large thick slanted seven"): CLIP's 9-token window (7 characters)
  keeps "a large t", so without T5 the model reads the size word and never the thickness, slant or digit words;
- **short prompts**, one attribute word ("a thick seven"): CLIP keeps the attribute word and cuts the digit name;
- digit adherence (the course's MNIST classifier) and attribute adherence
  (``diffusion_lab.mnist.captions.attribute_adherence``: the share of requested words met, against the median of the
  prompt's digit; 0.5 is chance), the differences kept − dropped per seed, their mean and half-range over the seeds;
- ``--default-t5-length``: also the call with diffusers' default ``max_sequence_length=256`` where the stand-in was
  trained with 32 T5 tokens (SD3 feeds T5's padding tokens unmasked, so the number of them matters).

- ``--alternative DIR``: the same comparison on another trained folder, stored under ``alternatives`` (measured:
  the first recipe, CLIP's window 14 tokens and 3,500 steps, ``data/train_sd3_standin.py --set clip_max_length=14
  steps=3500``: the attribute words then fit CLIP's window and dropping T5 changed attribute adherence by −0.004;
  the 9-token window at 3,500 steps: "a <digit>" stayed below 0.95, hence 5,000 steps).

Reproduce::

    .venv/bin/python benchmarks/standin_sd3.py --default-t5-length --floor-seeds 10   # ~6 min on 1 core
    .venv/bin/python data/train_sd3_standin.py --set clip_max_length=14 steps=3500 --out /tmp/sd3_w14/sd3_mnist   # ~11 min
    .venv/bin/python benchmarks/standin_sd3.py --alternative /tmp/sd3_w14/sd3_mnist

Results go to ``benchmarks/results/standin_sd3.json`` (``--out`` to change), written atomically.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import diffusers  # noqa: E402
import transformers  # noqa: E402

from diffusion_lab import bridge  # noqa: E402
from diffusion_lab.bridge import standin_sd3 as sd3  # noqa: E402
from diffusion_lab.mnist.captions import DIGIT_NAMES  # noqa: E402
from diffusion_lab.mnist.classifier import load_classifier  # noqa: E402
from diffusion_lab.utils.checkpoint import write_json_atomic  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "standin_sd3.json"
CALL = dict(height=32, width=32, num_inference_steps=20, guidance_scale=7.0, max_sequence_length=32)


WORDS = (None, "thick", "thin", "slanted", "upright", "small", "large")  # tests/test_quality.py's prompt rule


def quality_prompts(n: int) -> tuple[list[str], torch.Tensor]:
    """tests/test_quality.py's prompts: digit i % 10 with the word WORDS[(i // 10 + digit) % 7]."""
    digits = torch.arange(n) % 10
    prompts = []
    for i, d in enumerate(digits.tolist()):
        word = WORDS[(i // 10 + d) % len(WORDS)]
        text = f"{word} {DIGIT_NAMES[d]}" if word else DIGIT_NAMES[d]
        prompts.append(("an " if text[0] in "aeiu" else "a ") + text)
    return prompts, digits


def floor_measurement(pipe, classifier, bins, seeds: int, n: int = 100) -> dict:
    """Digit and attribute adherence on tests/test_quality.py's 100 prompts for seeds 0..seeds-1 (a floors entry)."""
    prompts, digits = quality_prompts(n)
    runs = [sd3.measure_prompts(pipe, prompts, digits, classifier, bins, seed=s, **CALL) for s in range(seeds)]
    out = {"n": n, "call": CALL, "seeds": f"0..{seeds - 1}"}
    for key in ("digit_adherence", "attribute_adherence"):
        values = [round(r[key], 3) for r in runs]
        out[key] = {"seed_0": values[0], "min": min(values), "max": max(values), "values": values}
    return out


def measure_alternative(folder: Path, out: Path, n: int) -> None:
    """The same comparison on another trained folder, added to ``out`` under ``alternatives[<its config>]``."""
    recipe = json.loads((folder / sd3.RECIPE_FILE).read_text())
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    bins, classifier = sd3.load_bins(folder), load_classifier()
    digits = torch.arange(n) % 10
    short = [f"a {DIGIT_NAMES[int(d)]}" for d in digits]
    t0 = time.perf_counter()
    entry = {
        "config": recipe["config"],
        "training_seconds": recipe["seconds"],
        "load_average_1_5_15_min": recipe["load_average_1_5_15_min"],
        "digit_prompts": [sd3.measure_prompts(pipe, short, digits, classifier, bins, seed=s, **CALL) for s in (0, 1)],
        "t5_comparison": sd3.t5_comparison(pipe, classifier, bins, n=n, seeds=(0, 1), **CALL),
        "seconds": None,
    }
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    result = json.loads(out.read_text())
    result.setdefault("alternatives", {})[f"clip_max_length={recipe['config']['clip_max_length']}"] = entry
    write_json_atomic(out, result)
    print(entry["digit_prompts"], entry["t5_comparison"]["long"]["t5_minus_no_t5"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--default-t5-length", action="store_true")
    ap.add_argument("--floor-seeds", type=int, default=0, help="tests/test_quality.py's measurement over seeds 0..k-1")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument(
        "--alternative", type=Path, default=None,
        help="measure this other trained folder (e.g. from data/train_sd3_standin.py --set clip_max_length=9 --out "
        "DIR) and add it to the results file under 'alternatives' (the shipped stand-in's entries stay)",
    )  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    if args.alternative is not None:
        measure_alternative(args.alternative, args.out, args.n)
        return
    env = bridge.Environment("cpu", None, None, False, None, False, ("benchmark: the trained stand-in",))
    pipe = bridge.load_pipeline("sd3-medium", env, standin="trained")
    pipe.set_progress_bar_config(disable=True)
    folder = bridge.trained_standin_path("sd3-medium")
    bins = sd3.load_bins(folder)
    classifier = load_classifier()
    t0 = time.perf_counter()
    digits = torch.arange(args.n) % 10
    result = {
        "what": __doc__.split("\n")[0],
        "folder": "data/pretrained/sd3_mnist",
        "digit_prompts": sd3.measure_prompts(
            pipe, [f"a {DIGIT_NAMES[int(d)]}" for d in digits], digits, classifier, bins, seed=0, **CALL
        ),
        "t5_comparison": sd3.t5_comparison(pipe, classifier, bins, n=args.n, seeds=(0, 1), **CALL),
    }
    if args.default_t5_length:
        call = {k: v for k, v in CALL.items() if k != "max_sequence_length"}
        long = sd3.long_prompts(digits, torch.Generator().manual_seed(1000))
        result["default_max_sequence_length_256"] = {
            "long_t5": sd3.measure_prompts(pipe, long, digits, classifier, bins, seed=0, **call),
            "long_no_t5": sd3.measure_prompts(sd3.drop_t5(pipe), long, digits, classifier, bins, seed=0, **call),
        }
    if args.floor_seeds:
        result["quality_floor_measurement"] = floor_measurement(pipe, classifier, bins, args.floor_seeds)
    result.update(
        seconds=round(time.perf_counter() - t0, 1),
        load_average_1_5_15_min=os.getloadavg(),
        threads=args.threads,
        machine={
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
        },  # fmt: skip
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    write_json_atomic(args.out, result)
    for kind in ("long", "short"):
        print(kind, result["t5_comparison"][kind]["t5_minus_no_t5"])
    print("wrote", args.out)


if __name__ == "__main__":
    main()
