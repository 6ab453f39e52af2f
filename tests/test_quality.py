"""Quality regression tests: every model shipped under ``data/pretrained/`` still draws what it is asked for.

Each model samples n = 100 images with one fixed generator and the shipped MNIST classifier judges them:

- **digit adherence** = share of samples the classifier reads as the digit asked for
  (:func:`diffusion_lab.mnist.metrics.prompt_adherence`; chance 0.10);
- **attribute adherence** (text models) = share of attribute words ("thick", "small", "slanted", …) the samples
  meet, judged against the caption bins the model was trained with (:func:`diffusion_lab.mnist.captions.attribute_adherence`;
  chance 0.50).

The settings (sampler steps, guidance, n, seed, prompts), the measured values and the floors live in
``tests/quality_floors.json``, one entry per model; the tests read them from there. Steps are the course's quick-mode
steps or fewer (the test checks it): ``mnist_pixel_cond`` DDIM-10 at w = 1.5 (notebook 02), ``tiny_sd`` DDIM-5 at
w = 3 (notebook 07), ``tiny_sd3`` Euler-8 at w = 2 (notebook 08), ``tiny_sd_lcm`` (the distilled
student) LCM-2 at w = 1 (notebook 09). Each floor is the lower of (stored value − 0.03)
and (lowest value over seeds 0..9 − 0.02), so reseeding alone does not fail it (at n = 100 seeds spread by several
points: tiny_sd's attribute adherence 0.895 to 0.977); a broken model falls far below
(:func:`test_floors_separate_good_from_broken`, the negative control).

The stand-ins of the real diffusers classes trained on MNIST (kind ``diffusers_standin``: ``sdxl_mnist``, ``sd3_mnist``,
``sd15_mnist``, the refiner, ControlNet and upscaler) assert their floors through the real pipeline call in their own
test files (``tests/test_standin_*.py``); their entries here name that test, and this file checks that it exists and
asserts.

Deterministic and order-independent: every random draw comes from a local ``torch.Generator`` (the sampled images are
bit-identical with 1 and 2 torch threads), each test loads its own model, and no global torch state is changed.
Run with ``-s`` to see the measured values. Re-measure (e.g. after retraining a model on purpose) with
``OMP_NUM_THREADS=1 .venv/bin/python tests/test_quality.py [model ...] [--seeds 10] [--broken]`` (``--broken``: the
negative controls) and update the JSON by hand.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "data" / "pretrained"
FLOORS_FILE = Path(__file__).resolve().with_name("quality_floors.json")
CLASSIFIER = REPO / "data" / "mnist_classifier.safetensors"

# notebook 08's evaluation prompts: digit i % 10, and the attribute word WORDS[(i // 10 + digit) % 7], so that 70
# consecutive prompts ask every digit with every word once (100 prompts: 86 attribute words)
WORDS = (None, "thick", "thin", "slanted", "upright", "small", "large")


def load_floors() -> dict:
    """The entries of ``tests/quality_floors.json`` by model name (keys starting with "_" are notes)."""
    data = json.loads(FLOORS_FILE.read_text("utf-8"))
    return {name: entry for name, entry in data.items() if not name.startswith("_")}


def shipped_models() -> list[str]:
    """Every model folder under ``data/pretrained/``."""
    return sorted(p.name for p in PRETRAINED.iterdir() if p.is_dir())


FLOORS = load_floors()
STANDINS = {name for name, entry in FLOORS.items() if entry["kind"] == "diffusers_standin"}
MEASURED = sorted(set(FLOORS) - STANDINS)  # the course's own models, measured here


def text_prompts(n: int) -> tuple[list[str], torch.Tensor]:
    """n prompts as the training captions write them ("a thick seven", "an eight", "an upright one") and their
    digits (n,)."""
    from diffusion_lab.mnist.captions import DIGIT_NAMES

    digits = torch.arange(n) % 10
    prompts = []
    for i, d in enumerate(digits.tolist()):
        word = WORDS[(i // 10 + d) % len(WORDS)]
        prompts.append(_sentence(f"{word} {DIGIT_NAMES[d]}" if word else DIGIT_NAMES[d]))
    return prompts, digits


def _sentence(text: str) -> str:
    """The article the captions use: "an eight", "an upright one", "a one" (one starts with a w sound)."""
    return ("an " if text[0] in "aeiu" else "a ") + text


def load_shipped(name: str):
    """The shipped model as its notebook loads it: (model or pipeline, caption bins or None)."""
    kind = FLOORS[name]["kind"]
    if kind == "class_conditional_unet":
        from diffusion_lab.models.unet import UNet
        from diffusion_lab.utils.checkpoint import load_model

        return load_model(PRETRAINED / name, UNet, use_ema=True).eval(), None
    if kind == "text_to_image_pipeline":
        from diffusion_lab.training.tiny_sd_io import load_tiny_sd

        return load_tiny_sd(PRETRAINED / name)
    raise AssertionError(
        f"tests/quality_floors.json: {name} has kind {kind!r}; tests/test_quality.py measures 'class_conditional_unet' "
        "and 'text_to_image_pipeline' ('diffusers_standin' points at its own quality test): add a sampler there"
    )


@torch.no_grad()
def measure(
    name: str, model, bins, classifier, *, seed: int | None = None, guidance_scale: float | None = None
) -> dict[str, float]:
    """Sample model ``name`` with the settings of its floors entry and score the samples.

    Returns ``digit_adherence`` and, for text models, ``attribute_adherence`` and ``attribute_requests``.
    ``model``: the shipped model, or a broken copy of it (the negative control). ``seed`` and ``guidance_scale``
    override the stored ones.
    """
    from diffusion_lab.mnist.metrics import prompt_adherence

    entry = FLOORS[name]
    n, steps = entry["n"], entry["steps"]
    w = entry["guidance_scale"] if guidance_scale is None else guidance_scale
    generator = torch.Generator().manual_seed(entry["seed"] if seed is None else seed)
    if entry["kind"] == "class_conditional_unet":
        from diffusion_lab.pipelines.sampling import sample
        from diffusion_lab.training.recipes_pixel import schedulers_for
        from diffusion_lab.utils.checkpoint import load_config

        prediction_type = load_config(PRETRAINED / name)["train_config"]["prediction_type"]
        _, ddim = schedulers_for(model.config, prediction_type)  # a fresh scheduler: set_timesteps mutates it
        labels = torch.arange(n) % 10
        images = sample(model, ddim, (n, 1, 28, 28), num_inference_steps=steps, class_labels=labels,
                        guidance_scale=w, generator=generator).images.clamp(-1, 1)  # fmt: skip
        return {"digit_adherence": prompt_adherence(images, labels, classifier)}

    from diffusion_lab.mnist.captions import attribute_adherence

    prompts, digits = text_prompts(n)
    images = model(prompts, num_inference_steps=steps, guidance_scale=w, generator=generator).images
    attrs = attribute_adherence(images, prompts, bins)
    return {
        "digit_adherence": prompt_adherence(images, digits, classifier),
        "attribute_adherence": attrs["adherence"],
        "attribute_requests": attrs["requests"],
    }


@pytest.fixture(scope="module")
def classifier():
    from diffusion_lab.mnist.classifier import load_classifier

    return load_classifier(CLASSIFIER)


# ----------------------------------------------------------------------------------------------------------------------
# 1. every shipped model above its floors
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MEASURED)
def test_shipped_model_quality_above_floor(name, classifier):
    entry = FLOORS[name]
    assert entry["steps"] <= entry["course_quick_steps"], (
        f"{name}: the quality test samples with {entry['steps']} steps, more than the course's quick mode "
        f"({entry['course_quick_steps']}); keep it at the course's steps or fewer"
    )
    assert set(entry["floors"]) <= set(entry["measured"]), f"{name}: every floor needs the value it was set from"
    model, bins = load_shipped(name)
    rng_state, threads, grad = torch.random.get_rng_state(), torch.get_num_threads(), torch.is_grad_enabled()
    got = measure(name, model, bins, classifier)
    # order independence: sampling drew nothing from torch's global generator and left torch's settings alone
    assert torch.equal(torch.random.get_rng_state(), rng_state), f"{name}: sampling used torch's global generator"
    assert (torch.get_num_threads(), torch.is_grad_enabled()) == (threads, grad)
    print(f"\n{name}: n = {entry['n']}, {entry['sampler']}-{entry['steps']}, w = {entry['guidance_scale']}, "
          f"seed {entry['seed']}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in got.items()))  # fmt: skip
    for metric, floor in entry["floors"].items():
        print(f"  {metric}: {got[metric]:.3f} (floor {floor}, stored value {entry['measured'][metric]})")
    if "attribute_requests" in entry["measured"]:  # the prompts themselves did not change
        assert got["attribute_requests"] == entry["measured"]["attribute_requests"]
    low = {m: (round(got[m], 4), f) for m, f in entry["floors"].items() if not got[m] >= f}
    assert not low, (
        f"{name} lost quality: (measured, floor) {low}. Its samples no longer show what they are asked for; if the "
        "model was retrained or the sampler changed on purpose, re-measure with `OMP_NUM_THREADS=1 .venv/bin/python "
        f"tests/test_quality.py {name} --seeds 10` and update tests/quality_floors.json"
    )


# ----------------------------------------------------------------------------------------------------------------------
# 2. no shipped model without a floor
# ----------------------------------------------------------------------------------------------------------------------


def test_every_shipped_model_has_a_floor():
    shipped = shipped_models()
    assert shipped, f"no model folders under {PRETRAINED}"
    missing = [m for m in shipped if m not in FLOORS]
    assert not missing, (
        f"data/pretrained/ ships {missing} with no entry in tests/quality_floors.json. Add one per model: its kind, "
        "sampler settings (steps no more than its notebook's quick mode), n, seed, the values measured with "
        "`OMP_NUM_THREADS=1 .venv/bin/python tests/test_quality.py <model> --seeds 10` and floors a few points under "
        "them (and under every seed's value); copy an existing entry as a template"
    )
    stale = sorted(set(FLOORS) - set(shipped))
    assert not stale, (
        f"tests/quality_floors.json has entries {stale} for models not under data/pretrained/: remove them"
    )
    from diffusion_lab.bridge import hub  # lazy: imports diffusers (seconds); only this test needs the model cards

    for name in STANDINS:  # the trained stand-ins of the real diffusers classes: their floor is in their own tests
        entry = FLOORS[name]
        assert hub.MODELS[entry["card"]].trained == name, f"{name}: the card {entry['card']!r} must name this folder"
        path, _, test = entry["quality_test"].partition("::")
        source = (REPO / path).read_text("utf-8")
        assert f"def {test}(" in source, f"{name}: its quality test {entry['quality_test']} does not exist"
        body = source[source.index(f"def {test}(") :].split("\ndef ", 1)[0]
        assert "assert" in body, f"{name}: {entry['quality_test']} must assert its floor"
    for name, entry in ((n, FLOORS[n]) for n in MEASURED):
        for key in ("kind", "sampler", "steps", "course_quick_steps", "guidance_scale", "n", "seed", "measured",
                    "floors", "seed_spread", "measured_on", "command"):  # fmt: skip
            assert key in entry, f"tests/quality_floors.json: {name} has no {key!r}"
        assert "digit_adherence" in entry["floors"], f"{name}: every model needs a digit-adherence floor"
        if entry["kind"] == "text_to_image_pipeline":
            assert "attribute_adherence" in entry["floors"], f"{name}: a text model needs an attribute floor too"
        for metric, floor in entry["floors"].items():
            assert 0.1 < floor < entry["measured"][metric], f"{name}: floor {metric} must lie under its measured value"
            assert floor <= entry["seed_spread"][metric]["min"], f"{name}: floor {metric} above a seed's value"


# ----------------------------------------------------------------------------------------------------------------------
# 3. the floors bite: broken models fall below them
# ----------------------------------------------------------------------------------------------------------------------


class _ShiftedLabels(torch.nn.Module):
    """A broken class-conditional U-Net: every digit label moved on by one (asked for a 3, it draws a 4); the null
    label of classifier-free guidance is left alone."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.config = unet, unet.config

    def forward(self, x, t, class_labels=None):
        nc = self.config.num_classes
        labels = torch.where(class_labels < nc, (class_labels + 1) % nc, class_labels)
        return self.unet(x, t, labels)


def _zero_text(encoder):
    """A broken text encoder: a copy of the shipped one (still a ``TextEncoder``, so the pipeline accepts it) whose
    token states and pooled output are replaced by zeros (the denoiser no longer hears the prompt)."""
    copy = type(encoder)(encoder.config)
    copy.load_state_dict(encoder.state_dict())
    forward = copy.forward

    def zeroed(*args, **kwargs):
        out = forward(*args, **kwargs)
        return dataclasses.replace(
            out,
            last_hidden_state=torch.zeros_like(out.last_hidden_state),
            pooler_output=torch.zeros_like(out.pooler_output),
        )

    copy.forward = zeroed
    return copy.eval()


def broken(name: str, model):
    """A broken copy of the shipped model (the shipped object is not changed)."""
    if FLOORS[name]["kind"] == "class_conditional_unet":
        return _ShiftedLabels(model)
    return type(model)(**{**model.components, "text_encoder": _zero_text(model.text_encoder)})


# the cheap ones (about 1 s each); measured for mnist_pixel_cond too (its entry's "negative_controls")
@pytest.mark.parametrize("name", ["tiny_sd", "tiny_sd3", "tiny_sd_lcm"])
def test_floors_separate_good_from_broken(name, classifier):
    """Negative control: with its text embedding zeroed, a text model falls below every floor (digit adherence to
    about chance 0.1, attribute adherence to about chance 0.5), so the floors tell a working model from a broken one."""
    entry = FLOORS[name]
    model, bins = load_shipped(name)
    got = measure(name, broken(name, model), bins, classifier)
    print(f"\n{name} with its text embedding zeroed: digit_adherence {got['digit_adherence']:.3f}, "
          f"attribute_adherence {got['attribute_adherence']:.3f} ({got['attribute_requests']} words)")  # fmt: skip
    for metric, floor in entry["floors"].items():
        assert got[metric] < floor - 0.2, f"{name}: a broken model scores {metric} {got[metric]:.3f}, floor {floor}"
    assert got["digit_adherence"] < 0.25 and 0.35 < got["attribute_adherence"] < 0.65  # near chance: no signal left


# ----------------------------------------------------------------------------------------------------------------------
# Re-measuring: python tests/test_quality.py [model ...] [--seeds K]
# ----------------------------------------------------------------------------------------------------------------------


class _NullLabels(_ShiftedLabels):
    """A broken class-conditional U-Net: every label replaced by the null label (it no longer hears the digit)."""

    def forward(self, x, t, class_labels=None):
        return self.unet(x, t, torch.full_like(class_labels, self.config.num_classes))


class _RewritePrompts:
    """A text pipeline sent other prompts than the ones its samples are judged against."""

    def __init__(self, pipe, rewrite):
        self.pipe, self.rewrite = pipe, rewrite

    def __call__(self, prompts, **kwargs):
        return self.pipe([self.rewrite(p) for p in prompts], **kwargs)


def _next_digit(prompt: str) -> str:
    from diffusion_lab.mnist.captions import DIGIT_NAMES

    words = prompt.split()[1:]
    return _sentence(" ".join(DIGIT_NAMES[(DIGIT_NAMES.index(w) + 1) % 10] if w in DIGIT_NAMES else w for w in words))


def _swap_attributes(prompt: str) -> str:
    from diffusion_lab.mnist.captions import ATTRIBUTE_WORDS

    other = {a: b for pair in ATTRIBUTE_WORDS.values() for a, b in (pair, pair[::-1])}
    return _sentence(" ".join(other.get(w, w) for w in prompt.split()[1:]))


def negative_controls(name: str, model) -> dict[str, tuple[object, float | None]]:
    """Broken (and one merely weakened) variants of a shipped model: label → (model, guidance scale or None)."""
    if FLOORS[name]["kind"] == "class_conditional_unet":
        return {
            "class labels shifted by one inside the model (asked 3, draws 4)": (_ShiftedLabels(model), None),
            "every class label replaced by the null label (unconditional)": (_NullLabels(model), None),
            "no guidance (w = 1.0)": (model, 1.0),
        }
    return {
        "text embedding zeroed (token states and pooled output)": (broken(name, model), None),
        "prompt names the next digit (judged against the asked one)": (_RewritePrompts(model, _next_digit), None),
        "attribute words swapped (thick<->thin, large<->small, slanted<->upright)": (
            _RewritePrompts(model, _swap_attributes),
            None,
        ),
        "no guidance (w = 1.0)": (model, 1.0),
    }


def _main(argv: list[str]) -> None:
    import argparse
    import time

    from diffusion_lab.mnist.classifier import load_classifier

    parser = argparse.ArgumentParser(description="measure the shipped models as the quality tests do")
    parser.add_argument("models", nargs="*", default=MEASURED)
    parser.add_argument("--seeds", type=int, default=1, help="also measure seeds 0..K-1 (min/max for the JSON)")
    parser.add_argument("--broken", action="store_true", help="also measure broken copies (negative controls)")
    args = parser.parse_args(argv)
    clf = load_classifier(CLASSIFIER)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.models:
        model, bins = load_shipped(name)
        t0 = time.perf_counter()
        print(name, "stored seed:", measure(name, model, bins, clf), f"({time.perf_counter() - t0:.1f} s)")
        if args.seeds > 1:
            runs = [measure(name, model, bins, clf, seed=s) for s in range(args.seeds)]
            for metric in FLOORS[name]["floors"]:
                values = [r[metric] for r in runs]
                print(f"  seeds 0..{args.seeds - 1} {metric}: min {min(values):.3f} max {max(values):.3f} "
                      f"mean {sum(values) / len(values):.3f}  {[round(v, 3) for v in values]}")  # fmt: skip
        if args.broken:
            for label, (variant, w) in negative_controls(name, model).items():
                got = measure(name, variant, bins, clf, guidance_scale=w)
                print(f"  {label}: " + ", ".join(f"{k} {v:.3f}" for k, v in got.items() if k != "attribute_requests"))


if __name__ == "__main__":
    _main(sys.argv[1:])
