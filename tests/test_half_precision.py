"""The real-model path of notebooks 10-16 in half precision on the CPU: ``DIFFUSION_LAB_DTYPE`` (the one switch, read in
``diffusion_lab.utils.settings.half_dtype``) makes ``bridge.check_environment().dtype`` fp16 or bf16, and
``bridge.load_pipeline`` / ``family.load_family_pipeline`` / the SDXL LoRA recipe then load the tiny stand-ins in it,
as ``from_pretrained(..., dtype=...)`` loads real weights on a T4 (fp16) or an Ampere+ GPU (bf16).

Each test runs in both dtypes (torch's CPU kernels cover fp16 for every layer these pipelines use, checked with
torch 2.14) and asserts the dtype of every component after every ``from_pipe`` the notebooks use, and that each output
is finite and in the expected dtype: the class of bug an fp32-only CPU run cannot see (diffusers' ``from_pipe``
without ``dtype=`` turns the shared components, the original pipeline's included, to fp32).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import diffusers
import pytest
import torch

from diffusion_lab import bridge
from diffusion_lab.bridge import family, lora, lora_sdxl
from diffusion_lab.utils import settings

HALF = (torch.bfloat16, torch.float16)
NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16"}
ROOT = Path(__file__).resolve().parent.parent
REAL_PATH_NOTEBOOKS = (
    "10_stable_diffusion_xl",
    "11_stable_diffusion_3",
    "12_fine_tuning",
    "13_model_surgery",
    "14_super_resolution",
    "15_controlnet",
    "16_image_variations_and_video",
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _dtypes(pipe, skip: str = "\0") -> dict[str, torch.dtype]:
    """The dtype of every module of a pipeline: all its parameters must share it, except those transformers keeps in
    fp32 on purpose (``_keep_in_fp32_modules``: T5's ``wo`` layers in fp16) and names containing ``skip``."""
    found = {}
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            kept = getattr(module, "_keep_in_fp32_modules", None) or []
            kinds = {
                p.dtype
                for n, p in module.named_parameters()
                if skip not in n and not (p.dtype == torch.float32 and any(k in n.split(".") for k in kept))
            }
            assert len(kinds) == 1, f"{name} mixes dtypes: {kinds}"
            found[name] = kinds.pop()
    return found


def _assert_all(pipe, dtype: torch.dtype, what: str, skip: str = "\0") -> None:
    wrong = {name: d for name, d in _dtypes(pipe, skip).items() if d != dtype}
    assert not wrong, f"{what}: expected every component in {dtype}, got {wrong}"


def _env() -> bridge.Environment:  # a CPU with no hub: the stand-ins, in the dtype the switch names
    return bridge.Environment("cpu", None, None, False, None, False, ("test",))


def _quiet(fn):
    with contextlib.redirect_stdout(io.StringIO()), bridge.quiet_hf():
        return fn()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The stand-ins the tests load, built and saved once (in fp32, as ever: the dtype is chosen at load)."""
    folder = tmp_path_factory.mktemp("half-cache")
    for key in ("sdxl-base", "sdxl-refiner", "sd3-medium", "sd15-controlnet-canny", "svd"):
        _quiet(lambda key=key: bridge.tiny_pipeline_path(key, folder))
    return folder


def _load(key: str, dtype: torch.dtype, cache: Path, **kwargs):
    """``load_pipeline`` (or the family loader) with ``DIFFUSION_LAB_DTYPE`` set for the call only."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(settings.DTYPE_VAR, NAMES[dtype])
        env = _env()
        assert env.dtype == dtype
        loader = family.load_family_pipeline if key in family.CONTROLNET_IDS or key == "svd" else bridge.load_pipeline
        return _quiet(lambda: loader(key, env, cache_dir=cache, **kwargs))


# --- the switch ---------------------------------------------------------------------------------------------------


def test_the_switch_is_read_at_every_call_and_checked(monkeypatch):
    monkeypatch.delenv(settings.DTYPE_VAR, raising=False)
    assert settings.half_dtype() is None and _env().dtype == torch.float32  # today's behaviour
    for raw, expected in (("float32", None), (" BFloat16 ", torch.bfloat16), ("float16", torch.float16)):
        monkeypatch.setenv(settings.DTYPE_VAR, raw)
        assert settings.half_dtype() == expected
        assert _env().dtype == (expected or torch.float32)
    monkeypatch.setenv(settings.DTYPE_VAR, "fp16")
    with pytest.raises(ValueError, match="DIFFUSION_LAB_DTYPE must be one of float32/float16/bfloat16.*'fp16'"):
        settings.half_dtype()


def test_without_the_switch_the_stand_ins_stay_fp32(cache, monkeypatch):
    monkeypatch.delenv(settings.DTYPE_VAR, raising=False)
    _assert_all(_quiet(lambda: bridge.load_pipeline("sdxl-base", _env(), cache_dir=cache)), torch.float32, "fp32")


# --- notebook 10: SDXL -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", HALF, ids=NAMES.get)
def test_sdxl_img2img_and_inpainting_from_pipe_keep_the_dtype(dtype, cache):
    pipe = _load("sdxl-base", dtype, cache)
    _assert_all(pipe, dtype, "load_pipeline('sdxl-base')")
    with bridge.quiet_hf():
        img2img = diffusers.AutoPipelineForImage2Image.from_pipe(pipe)
        inpaint = diffusers.AutoPipelineForInpainting.from_pipe(pipe)
    for name, p in (("base", pipe), ("img2img", img2img), ("inpainting", inpaint)):
        _assert_all(p, dtype, f"{name} after AutoPipelineFor*.from_pipe")
    image = torch.rand(1, 3, 64, 64, generator=_gen())
    kw = dict(num_inference_steps=2, generator=_gen(), output_type="latent")
    with bridge.quiet_hf():
        z_img = img2img("a fox", image=image, strength=0.5, **kw).images
        z_inp = inpaint("a fox", image=image, mask_image=torch.ones(1, 1, 64, 64), strength=0.5, **kw).images
    for z in (z_img, z_inp):
        assert z.dtype == dtype and torch.isfinite(z).all()
    out = bridge.sdxl_generate(
        pipe, "a fox", num_inference_steps=1, height=64, width=64, generator=_gen(), output_type="pt"
    )
    assert out.shape == (1, 3, 64, 64) and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", HALF, ids=NAMES.get)
def test_sdxl_refiner_hand_off_in_half_precision(dtype, cache):
    base = _load("sdxl-base", dtype, cache)
    refiner = _load("sdxl-refiner", dtype, cache, text_encoder_2=base.text_encoder_2, vae=base.vae)
    _assert_all(refiner, dtype, "the refiner sharing the base's encoder and VAE")
    latents = base(
        "a fox", num_inference_steps=4, denoising_end=0.8, height=64, width=64, generator=_gen(), output_type="latent"
    ).images  # (1, 4, 32, 32)
    assert latents.dtype == dtype and torch.isfinite(latents).all()
    with bridge.quiet_hf():
        image = refiner(
            "a fox", image=latents, num_inference_steps=4, denoising_start=0.8, generator=_gen(), output_type="pt"
        ).images
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
    assert image.dtype in (dtype, torch.float32)  # fp16: SDXL's VAE decodes upcast (force_upcast)
    _assert_all(base, dtype, "the base after the hand-off")


@pytest.mark.parametrize("dtype", HALF, ids=NAMES.get)
def test_sdxl_lora_training_step_in_half_precision(dtype, cache, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(settings.DTYPE_VAR, NAMES[dtype])
        images = torch.rand(2, 3, 64, 64, generator=_gen(1)) * 2 - 1
        pipe, losses, path = _quiet(
            lambda: lora_sdxl.sdxl_lora_recipe(
                images, "a photo of sks dog", tmp_path / "lora", env=_env(), steps=1, gradient_accumulation_steps=1,
                cache_dir=cache, progress=False,
            )
        )  # fmt: skip
    assert len(losses) == 1 and torch.isfinite(torch.tensor(losses)).all() and path.is_file()
    params = dict(pipe.unet.named_parameters())
    assert {p.dtype for n, p in params.items() if ".lora_" in n} == {torch.float32}  # trained in fp32
    assert {p.dtype for n, p in params.items() if ".lora_" not in n} == {dtype}  # the frozen U-Net as loaded
    assert max(p.abs().max() for n, p in params.items() if ".lora_B" in n) > 0
    assert lora.count_lora_parameters(pipe.unet).lora > 0
    _assert_all(pipe, dtype, "the pipeline after training (LoRA parameters aside)", skip=".lora_")


# --- notebook 11: SD3 ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", HALF, ids=NAMES.get)
def test_sd3_without_t5_and_with_another_t5_keep_the_dtype(dtype, cache):
    pipe = _load("sd3-medium", dtype, cache)
    _assert_all(pipe, dtype, "load_pipeline('sd3-medium')")
    with bridge.quiet_hf():  # notebook 11's cells: drop T5, or swap in another (8-bit on a GPU) T5
        no_t5 = diffusers.StableDiffusion3Pipeline.from_pipe(
            pipe, text_encoder_3=None, tokenizer_3=None, dtype=pipe.dtype
        )
        other = type(pipe.text_encoder_3)(pipe.text_encoder_3.config).to(dtype).eval()
        t5_pipe = diffusers.StableDiffusion3Pipeline.from_pipe(pipe, text_encoder_3=other, dtype=pipe.dtype)
    for name, p in (("the original", pipe), ("no-T5", no_t5), ("other T5", t5_pipe)):
        _assert_all(p, dtype, f"{name} after StableDiffusion3Pipeline.from_pipe")
    assert no_t5.text_encoder_3 is None and no_t5.transformer is pipe.transformer
    for p in (no_t5, t5_pipe):
        z = p("a fox", num_inference_steps=1, height=32, width=32, generator=_gen(), output_type="latent").images
        assert z.dtype == dtype and torch.isfinite(z).all()
    image = bridge.sd3_generate(
        no_t5, "a fox", num_inference_steps=1, height=32, width=32, generator=_gen(), output_type="pt"
    )
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()


@pytest.mark.parametrize("dtype", HALF, ids=NAMES.get)
def test_from_pipe_without_dtype_turns_both_pipelines_to_fp32(dtype, cache):
    """The trap itself (diffusers 0.42.1): why every from_pipe of a fixed class in the notebooks passes dtype=."""
    pipe = _load("sd3-medium", dtype, cache)
    with bridge.quiet_hf():
        no_t5 = diffusers.StableDiffusion3Pipeline.from_pipe(pipe, text_encoder_3=None, tokenizer_3=None)
    assert _dtypes(no_t5)["transformer"] == torch.float32 and _dtypes(pipe)["transformer"] == torch.float32


def test_the_notebooks_pass_dtype_to_every_from_pipe():
    """Every ``SomePipeline.from_pipe(...)`` of notebooks 10-16 passes ``dtype=`` (``torch_dtype=`` is deprecated
    since diffusers 0.40); only ``AutoPipelineFor*.from_pipe`` keeps the components' dtype without it."""
    calls = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        if not path.stem.startswith(REAL_PATH_NOTEBOOKS):
            continue
        for cell in json.loads(path.read_text("utf-8"))["cells"]:
            source = "".join(cell["source"]) if cell["cell_type"] == "code" else ""
            calls += [(path.stem, m.group(0)) for m in re.finditer(r"(\w+)\.from_pipe\([^\n]*", source)]
    diffusers_calls = [(nb, c) for nb, c in calls if not c.startswith(("AutoPipelineFor", "Tiny"))]
    assert len(diffusers_calls) >= 3, calls  # notebook 11's two, notebook 15's ControlNet one
    missing = [(nb, c) for nb, c in diffusers_calls if not re.search(r"(?<![\w])dtype=", c)]
    assert not missing, f"from_pipe without dtype= converts every shared component to fp32: {missing}"


# --- notebooks 15 and 16: ControlNet and SVD ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", HALF, ids=NAMES.get)
def test_controlnet_from_pipe_and_back_keep_the_dtype(dtype, cache):
    cn = _load("sd15-controlnet-canny", dtype, cache)
    _assert_all(cn, dtype, "load_family_pipeline('sd15-controlnet-canny')")
    with bridge.quiet_hf():
        plain = diffusers.StableDiffusionPipeline.from_pipe(cn, dtype=cn.dtype)
        back = diffusers.StableDiffusionControlNetPipeline.from_pipe(plain, controlnet=cn.controlnet, dtype=plain.dtype)
    for name, p in (("ControlNet", cn), ("plain SD", plain), ("ControlNet again", back)):
        _assert_all(p, dtype, f"{name} after from_pipe")
    edges = family.canny_edges(family.toy_scene(32, 48))
    kw = dict(num_inference_steps=1, generator=_gen(), output_type="latent")
    z_cn = back("a fox", image=edges, **kw).images
    z_sd = plain("a fox", height=32, width=48, **kw).images
    for z in (z_cn, z_sd):
        assert z.dtype == dtype and torch.isfinite(z).all()
    image = cn("a fox", image=edges, num_inference_steps=1, generator=_gen(), output_type="np").images
    assert image.shape == (1, 32, 48, 3) and bool((image == image).all())


@pytest.mark.parametrize("dtype", HALF, ids=NAMES.get)
def test_svd_call_in_half_precision(dtype, cache):
    svd = _load("svd", dtype, cache)
    _assert_all(svd, dtype, "load_family_pipeline('svd')")
    seen = []

    def keep(pipe, i, t, kwargs):  # the latents after each step, (1, 2, 4, 4, 4)
        seen.append(kwargs["latents"])
        return kwargs

    kw = dict(height=16, width=16, num_frames=2, decode_chunk_size=2, num_inference_steps=1, generator=_gen())
    frames = svd(family.toy_scene(16, 16), output_type="pt", callback_on_step_end=keep, **kw).frames
    assert frames.shape == (1, 2, 3, 16, 16) and torch.isfinite(frames).all()  # (B, N, 3, H, W)
    assert [z.dtype for z in seen] == [dtype] and torch.isfinite(seen[0]).all()


@pytest.mark.parametrize("dtype", HALF, ids=NAMES.get)
def test_svd_forward_chunking_gives_the_same_frames(dtype, cache):
    """Notebook 16 turns on ``unet.enable_forward_chunking()`` on a 16 GB card (the SVD UNet's activations: modelled
    5.3 → 3.9 GiB on a T4) and in CI: the frames must be those of the unchunked UNet (exactly in fp32; in half
    precision up to the rounding of a differently blocked matmul: a few ulps, measured 1.3e-2 in bf16)."""
    svd = _load("svd", dtype, cache)
    kw = dict(height=16, width=16, num_frames=2, decode_chunk_size=2, num_inference_steps=1, output_type="pt")
    plain = svd(family.toy_scene(16, 16), generator=_gen(), **kw).frames
    svd.unet.enable_forward_chunking()  # (a pipeline of its own: _load builds a fresh one from the cache)
    chunked = svd(family.toy_scene(16, 16), generator=_gen(), **kw).frames
    torch.testing.assert_close(chunked, plain, atol=3e-2 if dtype == torch.bfloat16 else 1e-2, rtol=0)
    cells = json.loads(next((ROOT / "notebooks").glob("16_*.ipynb")).read_text("utf-8"))["cells"]
    svd_cells = ["".join(c["source"]) for c in cells if "decode_chunk_size=chunk" in "".join(c["source"])]
    assert svd_cells and "svd.unet.enable_forward_chunking()" in svd_cells[0], "notebook 16 must chunk on a T4"
