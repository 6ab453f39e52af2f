"""The fuzz table: every public entry point of the pipelines, the schedulers, the data loaders and the pure
functions a student calls first is fed wrong types, NaN / inf, wrong shapes and out-of-range values, one argument at
a time, and must answer with a ``TypeError`` or ``ValueError`` whose message names that argument — never another
exception, never a silent result. (The exercise checkers have their own battery: tests/test_checkers_never_crash.py,
where any answer gets ❌ and a hint.)

Table-driven and deterministic (no random draws: the same cases every run, each well under a second). Coverage is
checked, not hoped for: a pipeline or scheduler parameter, a scheduler method or a data-loader function missing from
the table fails ``test_the_table_covers_every_entry_point``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from test_pipeline_base import IMAGE, LOW, _case

from diffusion_lab import bridge
from diffusion_lab.maths import diffusion, flow, schedules
from diffusion_lab.mnist import data
from diffusion_lab.schedulers.scheduling_ddim import DDIMScheduler
from diffusion_lab.schedulers.scheduling_ddpm import DDPMScheduler
from diffusion_lab.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler
from diffusion_lab.training import finetune

NAN, INF = float("nan"), float("inf")


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _full(shape, value) -> torch.Tensor:
    return torch.full(shape, float(value))


# ---- pools of wrong values, by the kind of argument ------------------------------------------------------------------
COUNT = (True, 2.5, "2", None, 0, -3, NAN, [2])  # a number of steps, images, samples
NUMBER = (True, "1.0", None, NAN, INF, -INF, [1.0], torch.ones(2))  # a real knob (guidance scale, shift)
UNIT = (*NUMBER, -0.1, 1.5)  # a fraction in [0, 1] (control start/end)
OPTIONAL_UNIT = tuple(v for v in UNIT if v is not None)  # strength, eta: None means "not used" / the default
GENERATOR = (42, "0", 1.5, torch.ones(1), [_gen(), _gen(), _gen()])  # the list: 3 generators for 1 image
SIZE = (28.0, "28", True, 0, -28, 27, NAN)  # height / width (None = the default size, allowed)
PROMPT = (42, None, ["a thick seven", 3], [], b"a thick seven", 2.5)
OUTPUT_TYPE = ("png", 3, None)
CALLBACK = (42, "print")


def IMAGE_28(name_ok_none: bool) -> tuple:  # noqa: N802 - a pool, named like the others
    """Wrong images for a (B, 1, 28, 28) input in [−1, 1]."""
    pool = (
        "digit.png",
        np.zeros((1, 1, 28, 28), np.float32),
        torch.zeros(1, 1, 28, 28, dtype=torch.uint8),
        _full((1, 1, 28, 28), 255.0),  # 0..255 floats
        _full((1, 1, 28, 28), NAN),
        _full((1, 1, 28, 28), INF),
        torch.zeros(28, 28),  # no batch / channel axes
        torch.zeros(1, 3, 28, 28),  # wrong channels
        torch.zeros(1, 1, 27, 28),  # wrong size
        torch.zeros(0, 1, 28, 28),  # empty batch
    )
    return pool if name_ok_none else (None, *pool)


MASK = ("mask.png", _full((1, 1, 28, 28), NAN), _full((1, 1, 28, 28), 2.0), torch.zeros(1, 1, 27, 28))
LATENTS = ("z", _full((1, 4, 14, 14), NAN), torch.zeros(1, 4, 5, 5), np.zeros((1, 4, 14, 14), np.float32))


# ---- the pipelines -----------------------------------------------------------------------------------------------------
# bool switches read any value as a truth value, as in diffusers: not fuzzed
PIPELINE_SWITCHES = {"return_intermediates", "guess_mode"}

_SD_BAD = {
    "prompt": PROMPT,
    "negative_prompt": (42, ["a", 3], 2.5),
    "num_inference_steps": COUNT,
    "guidance_scale": NUMBER,
    "generator": GENERATOR,
    "height": SIZE,
    "width": SIZE,
    "image": IMAGE_28(name_ok_none=True),
    "strength": OPTIONAL_UNIT,
    "mask_image": MASK,
    "guidance_rescale": UNIT,
    "eta": OPTIONAL_UNIT,
    "latents": LATENTS,
    "output_type": OUTPUT_TYPE,
    "callback": CALLBACK,
}


def _sd_good() -> dict:
    mask = torch.zeros(1, 1, 28, 28)
    mask[..., 14:] = 1
    return dict(prompt="a thick seven", num_inference_steps=2, generator=_gen(), image=IMAGE, strength=0.5,
                mask_image=mask, eta=0.5)  # fmt: skip


@dataclass(frozen=True)
class Entry:
    """One entry point: ``call(**good())`` succeeds; ``call(**{**good(), name: bad})`` must raise for every bad value
    in ``bad[name]``, naming ``name`` (or one of ``aliases[name]``, the words a message may use for it)."""

    name: str
    call: Callable[..., object]
    good: Callable[[], dict]
    bad: dict[str, tuple]
    aliases: dict[str, tuple[str, ...]] | None = None

    def names_for(self, param: str) -> tuple[str, ...]:
        return (param, *((self.aliases or {}).get(param, ())))


def _pipe(key: str):
    return _case(key)[0]


PIPELINES = [
    Entry("TinyStableDiffusionPipeline", lambda **kw: _pipe("sd")(**kw), _sd_good, _SD_BAD),
    # a flow scheduler takes no eta (diffusers passes eta only where step takes it): only its type is checked
    Entry("TinySD3Pipeline", lambda **kw: _pipe("sd3")(**kw), _sd_good, {**_SD_BAD, "eta": OPTIONAL_UNIT[:-2]}),
    Entry(
        "TinyControlNetPipeline",
        lambda **kw: _pipe("controlnet")(**kw),
        lambda: dict(prompt="a thick seven", image=(IMAGE + 1) / 2, num_inference_steps=2, generator=_gen()),
        {
            **{k: v for k, v in _SD_BAD.items() if k not in ("image", "strength", "mask_image")},
            "image": ("edges.png", _full((1, 1, 28, 28), NAN), _full((1, 1, 28, 28), 255.0), torch.zeros(1, 1, 27, 28)),
            "controlnet_conditioning_scale": NUMBER,
            "control_guidance_start": UNIT,
            "control_guidance_end": UNIT,
        },
        aliases={"image": ("control",)},
    ),
    Entry(
        "TinyUpscalePipeline",
        lambda **kw: _pipe("upscale")(**kw),
        lambda: dict(image=LOW, num_inference_steps=2, generator=_gen()),
        {
            "image": (
                None,
                "low.png",
                _full((1, 1, 7, 7), NAN),
                _full((1, 1, 7, 7), 255.0),
                torch.zeros(7, 7),
                torch.zeros(1, 3, 7, 7),
            ),  # fmt: skip
            "num_inference_steps": COUNT,
            "noise_level": (True, 2.5, "20", None, -1, 10_000),
            "generator": GENERATOR,
            "height": SIZE,
            "width": SIZE,
            "eta": OPTIONAL_UNIT,
            "latents": LATENTS,
            "output_type": OUTPUT_TYPE,
            "callback": CALLBACK,
        },
    ),
    Entry(
        "TinyVariationPipeline",
        lambda **kw: _pipe("variations")(**kw),
        lambda: dict(image=IMAGE, num_inference_steps=2, generator=_gen()),
        {
            "image": IMAGE_28(name_ok_none=False),
            "num_inference_steps": COUNT,
            "guidance_scale": NUMBER,
            "noise_level": (True, 2.5, "20", -1, 10_000),
            "num_images_per_prompt": COUNT,
            "generator": GENERATOR,
            "image_embeds": ("e", _full((1, 8), NAN), torch.zeros(1, 3)),
            "eta": OPTIONAL_UNIT,
            "latents": LATENTS,
            "output_type": OUTPUT_TYPE,
            "callback": CALLBACK,
        },
    ),
]


# the course's hand-written real-path loops (bridge.generate), on the tiny SDXL and SD3 stand-ins
@functools.cache
def _tiny(kind: str):
    return bridge.tiny_sdxl() if kind == "sdxl" else bridge.tiny_sd3()


_GEN_BAD = {
    "prompt": (42, None, ["a fox"], b"a fox"),
    "num_inference_steps": COUNT,
    "guidance_scale": NUMBER,
    "height": (32.0, "32", True, 0, -32, 33),
    "width": (32.0, "32", True, 0, -32, 33),
    "generator": (42, "0", [_gen(), _gen()]),
    "output_type": OUTPUT_TYPE,
}
PIPELINES += [
    Entry(
        "sdxl_generate",
        lambda **kw: bridge.sdxl_generate(_tiny("sdxl"), **kw),
        lambda: dict(prompt="a fox", num_inference_steps=2, height=32, width=32, generator=_gen(), output_type="pt"),
        {
            **_GEN_BAD,
            "negative_prompt": (42, ["a"]),
            "original_size": ((32,), "32x32", (0, 32), (32.5, 32)),
            "crops_coords_top_left": ((0,), "0,0", (-1, 0)),
            "target_size": ((32,), (0, 32)),
        },
    ),  # fmt: skip
    Entry(
        "sd3_generate",
        lambda **kw: bridge.sd3_generate(_tiny("sd3"), **kw),
        lambda: dict(prompt="a fox", num_inference_steps=2, height=32, width=32, generator=_gen(), output_type="pt"),
        {**_GEN_BAD, "negative_prompt": (42, None, ["a"]), "max_sequence_length": (*COUNT, 10_000)},
    ),  # fmt: skip
]


# ---- the schedulers ----------------------------------------------------------------------------------------------------
SCHEDULERS = (DDPMScheduler, DDIMScheduler, FlowMatchEulerDiscreteScheduler)
_X = torch.zeros(2, 1, 4, 4)


def _ready(cls):
    s = cls()
    s.set_timesteps(10)
    return s


def _t(cls) -> object:
    return _ready(cls).timesteps[3]


# the scheduler methods that take no student input: nothing to fuzz
SCHEDULER_PLAIN = {"set_begin_index", "index_for_timestep", "previous_timestep", "save_pretrained", "from_pretrained",
                   "from_config", "register_to_config", "save_config", "load_config", "extract_init_dict",
                   "get_config_dict", "push_to_hub", "get_velocity", "to_json_file", "to_json_string",
                   "register_for_auto_class"}  # fmt: skip

_STEP_BAD = {
    "model_output": ("x", np.zeros((2, 1, 4, 4)), torch.zeros(2, 1, 4, 5)),
    "sample": ("x", np.zeros((2, 1, 4, 4)), torch.zeros(2, 1, 4, 5)),
    "generator": (42, "0"),
}
_DISCRETE_T_BAD = ("10", None, -1, 1000, 2.5, NAN, torch.tensor(7))  # 7: not in the 10-step schedule (an index)


def _scheduler_entries(cls) -> list[Entry]:
    n = cls.__name__
    discrete = cls is not FlowMatchEulerDiscreteScheduler
    step_bad = {**_STEP_BAD, "timestep": _DISCRETE_T_BAD if discrete else ("10", None, -1.0, 2000.0, NAN)}
    if cls is DDIMScheduler:
        step_bad["eta"] = OPTIONAL_UNIT
    entries = [
        Entry(
            f"{n}.__init__",
            cls,
            dict,
            {
                "num_train_timesteps": COUNT,
                **(
                    {"shift": (*NUMBER, 0.0, -1.0)}
                    if not discrete
                    else {
                        "beta_start": NUMBER,
                        "beta_end": NUMBER,
                        "beta_schedule": ("cosine", 3),
                        "prediction_type": ("noise", 3),
                        "timestep_spacing": ("even", 3),
                    }
                ),
            },
        ),  # fmt: skip
        Entry(
            f"{n}.set_timesteps",
            lambda **kw: cls().set_timesteps(**kw),
            lambda: {"num_inference_steps": 10},
            {"num_inference_steps": (*COUNT[:3], 0, -3, NAN, [2], *([1001] if discrete else []))},
        ),  # fmt: skip
        Entry(
            f"{n}.step",
            lambda **kw: _ready(cls).step(**kw),
            lambda: dict(model_output=_X, timestep=_t(cls), sample=_X),
            step_bad,
        ),  # fmt: skip
        Entry(
            f"{n}.scale_model_input",
            lambda **kw: _ready(cls).scale_model_input(**kw),
            lambda: dict(sample=_X, timestep=_t(cls)),
            {"sample": ("x", np.zeros((2, 1, 4, 4)))},
        ),  # fmt: skip
    ]
    if discrete:
        entries.append(
            Entry(
                f"{n}.add_noise",
                lambda **kw: cls().add_noise(**kw),
                lambda: dict(original_samples=_X, noise=_X, timesteps=torch.tensor([3, 999])),
                {
                    "original_samples": ("x", np.zeros((2, 1, 4, 4))),
                    "noise": ("e", torch.zeros(2, 1, 4, 5)),
                    "timesteps": ("3", -1, 1000, torch.tensor([3.5, 1.0]), torch.tensor([-1, 3])),
                },
            ),  # fmt: skip
        )
    else:
        entries.append(
            Entry(
                f"{n}.scale_noise",
                lambda **kw: _ready(cls).scale_noise(**kw),
                lambda: dict(sample=_X, timestep=_t(cls)[None], noise=_X),
                {
                    "sample": ("x", np.zeros((2, 1, 4, 4))),
                    "noise": ("e", torch.zeros(2, 1, 4, 5)),
                    "timestep": ("3", None, -1.0, 2000.0),
                },
            ),  # fmt: skip
        )
    return entries


# ---- the data loaders and the first pure functions -----------------------------------------------------------------
DATA = [
    Entry(
        "load_mnist",
        data.load_mnist,
        lambda: dict(split="test", limit=8),
        {"split": ("val", 3, None), "limit": (True, 2.5, "8", 0, -1)},
    ),  # fmt: skip
    Entry("mnist_dataset", data.mnist_dataset, lambda: dict(split="test", limit=8), {"split": ("val", 3, None)}),
    Entry(
        "swiss_roll",
        data.swiss_roll,
        lambda: dict(n=16),
        {"n": COUNT, "noise": (*NUMBER[:-1], -0.1), "seed": (2.5, "0", True)},
    ),  # fmt: skip
    Entry(
        "moons", data.moons, lambda: dict(n=16), {"n": COUNT, "noise": (*NUMBER[:-1], -0.1), "seed": (2.5, "0", True)}
    ),  # fmt: skip
    Entry(
        "to_unit_range",
        data.to_unit_range,
        lambda: dict(x=torch.rand(1, 1, 28, 28)),
        {"x": ("x", None, np.zeros((1, 1, 28, 28)), _full((1, 1, 28, 28), NAN))},
    ),  # fmt: skip
    Entry(
        "from_unit_range",
        data.from_unit_range,
        lambda: dict(x=IMAGE),
        {"x": ("x", None, np.zeros((1, 1, 28, 28)), _full((1, 1, 28, 28), NAN))},
    ),  # fmt: skip
    Entry(
        "load_concept_images",
        finetune.load_concept_images,
        None,  # good() set below (needs a folder)
        {"folder": (3, None, 2.5), "size": COUNT},
    ),  # fmt: skip
]

_ABAR = schedules.alphas_cumprod_from_betas(schedules.linear_betas(1000))
MATHS = [
    Entry(
        "q_sample",
        diffusion.q_sample,
        lambda: dict(x0=_X, t=torch.tensor([3, 999]), alphas_cumprod=_ABAR, noise=_X),
        {
            "t": (torch.tensor([-1, 3]), torch.tensor([3, 1000]), torch.tensor([0.5, 0.2]), -1, 1000, 0.5, "3", None),
            "x0": ("x", np.zeros((2, 1, 4, 4))),
            "noise": ("e", torch.zeros(2, 1, 4, 5)),
        },
        aliases={"t": ("timestep",)},
    ),  # fmt: skip
    Entry(
        "flow_interpolate",
        flow.flow_interpolate,
        lambda: dict(x0=_X, noise=_X, sigma=torch.tensor([0.2, 0.9])),
        {
            "sigma": (torch.tensor([-0.1, 0.5]), torch.tensor([0.5, 1.5]), torch.tensor([NAN, 0.5]), "0.5", None, 1.5),
            "x0": ("x", np.zeros((2, 1, 4, 4))),
        },
    ),  # fmt: skip
    Entry(
        "make_betas",
        schedules.make_betas,
        lambda: dict(beta_schedule="linear", T=1000),
        {"beta_schedule": ("cos", 3), "T": COUNT, "beta_start": NUMBER, "beta_end": NUMBER},
    ),  # fmt: skip
]


ENTRIES: list[Entry] = [*PIPELINES, *(e for cls in SCHEDULERS for e in _scheduler_entries(cls)), *DATA, *MATHS]


def _cases():
    for entry in ENTRIES:
        for param, pool in entry.bad.items():
            for i, value in enumerate(pool):
                yield pytest.param(entry, param, value, id=f"{entry.name}-{param}-{i}")


@pytest.fixture
def concept_folder(tmp_path):
    from PIL import Image

    for i in range(2):
        Image.fromarray(np.full((28, 28), 40 * i, np.uint8), "L").save(tmp_path / f"c{i}.png")
    return tmp_path


def _good(entry: Entry, concept_folder) -> dict:
    if entry.name == "load_concept_images":
        return dict(folder=concept_folder)
    return entry.good()


def _finite(result: object) -> bool:
    items = [getattr(result, "images", None), getattr(result, "prev_sample", None), result]
    tensors = [t for t in items if isinstance(t, torch.Tensor)]
    tensors += [t for t in (result if isinstance(result, tuple) else ()) if isinstance(t, torch.Tensor)]
    return all(torch.isfinite(t.float()).all() for t in tensors)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_the_good_call_works(entry, concept_folder):
    """Each entry's good arguments are good: else every wrong value below would 'fail' for the wrong reason."""
    result = entry.call(**_good(entry, concept_folder))
    assert _finite(result), f"{entry.name}: the good call gave NaN or inf"


@pytest.mark.parametrize(("entry", "param", "value"), list(_cases()))
def test_a_wrong_value_is_a_clear_error(entry, param, value, concept_folder):
    kwargs = {**_good(entry, concept_folder), param: value}
    try:
        result = entry.call(**kwargs)
    except (TypeError, ValueError) as err:
        message = str(err)
        assert any(name in message for name in entry.names_for(param)), (
            f"{entry.name}({param}={value!r:.60}) raised {type(err).__name__} without naming {param}: {message}"
        )
        return
    except Exception as err:  # noqa: BLE001 - the finding: any other exception is an obscure error
        pytest.fail(f"{entry.name}({param}={value!r:.60}) raised {type(err).__name__}, not TypeError/ValueError: {err}")
    pytest.fail(f"{entry.name}({param}={value!r:.60}) was accepted (finite result: {_finite(result)})")


def _public_methods(cls) -> set[str]:
    return {n for n, f in inspect.getmembers(cls, callable) if not n.startswith("_") and not isinstance(f, type)}


def test_the_table_covers_every_entry_point():
    """Every parameter of every pipeline call, every public scheduler method and every data-loader function is in the
    table (or named above as having nothing to fuzz): a new one fails here until it is added."""
    for entry in PIPELINES:
        fn = getattr(bridge, entry.name, None) or _pipe_for(entry).__call__
        params = set(inspect.signature(fn).parameters) - {"pipe"}
        missing = params - set(entry.bad) - PIPELINE_SWITCHES
        assert not missing, f"{entry.name}: parameters not fuzzed: {sorted(missing)}"
    covered = {e.name for e in ENTRIES}
    for cls in SCHEDULERS:
        methods = _public_methods(cls) - SCHEDULER_PLAIN - {"config", "compatibles"}
        missing = {m for m in methods if f"{cls.__name__}.{m}" not in covered}
        assert not missing, f"{cls.__name__}: public methods not fuzzed: {sorted(missing)}"
    loaders = {n for n in data.__all__ if inspect.isfunction(getattr(data, n)) and n != "default_mnist_path"}
    loaders.discard("load_mnist_torchvision")  # needs torchvision's files; its checks are load_mnist's
    assert loaders <= covered, f"data loaders not fuzzed: {sorted(loaders - covered)}"


def _pipe_for(entry: Entry):
    key = {"TinyStableDiffusionPipeline": "sd", "TinySD3Pipeline": "sd3", "TinyControlNetPipeline": "controlnet",
           "TinyUpscalePipeline": "upscale", "TinyVariationPipeline": "variations"}[entry.name]  # fmt: skip
    return _pipe(key)
