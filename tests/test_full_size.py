"""diffusion_lab.bridge.full_size: every published full-size configuration, built on the meta device (shapes only, no
memory), has the published parameter count and structure; benchmarks/full_size_cpu.py runs its code path on tiny
pipelines (``--quick``) and writes its records atomically."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from diffusion_lab.bridge import full_size

# Published parameter counts. Sources: the hub repositories' weights as counted by diffusers/transformers from their
# config.json (stabilityai/stable-diffusion-xl-base-1.0, stabilityai/stable-diffusion-xl-refiner-1.0,
# stabilityai/stable-diffusion-3-medium-diffusers, openai/clip-vit-large-patch14, google/t5-v1_1-xxl); the SDXL base
# UNet's 2.6 B and the refiner's 2.3 B are the figures of the SDXL report (Podell et al. 2023) and model cards; the
# refiner UNet's exact 2,259,526,660 also appears in a public project that counts the downloaded config.
CLIP_L_TEXT = 123_060_480  # CLIPTextModel (SDXL's text_encoder)
CLIP_L_TEXT_PROJ = 123_650_304  # CLIPTextModelWithProjection (SD3's text_encoder): + 768 x 768 projection
BIGG_TEXT_PROJ = 694_659_840  # OpenCLIP ViT-bigG/14 text tower with projection
SDXL_UNET = 2_567_463_684
SDXL_REFINER_UNET = 2_259_526_660
SDXL_VAE = 83_653_863
SD3_TRANSFORMER = 2_028_328_000
SD3_VAE = 83_819_683  # no quant / post-quant convs, 16 latent channels
T5_XXL_ENCODER = 4_762_310_656

PUBLISHED = {
    "sdxl": {"text_encoder": CLIP_L_TEXT, "text_encoder_2": BIGG_TEXT_PROJ, "unet": SDXL_UNET, "vae": SDXL_VAE},
    "sdxl-refiner": {"text_encoder_2": BIGG_TEXT_PROJ, "unet": SDXL_REFINER_UNET, "vae": SDXL_VAE},
    "sd3": {
        "text_encoder": CLIP_L_TEXT_PROJ,
        "text_encoder_2": BIGG_TEXT_PROJ,
        "text_encoder_3": T5_XXL_ENCODER,
        "transformer": SD3_TRANSFORMER,
        "vae": SD3_VAE,
    },
}


@pytest.fixture(scope="module")
def meta():
    return {m: full_size.full_components(m, device="meta", dtype=torch.float32) for m in full_size.FULL_SIZE_MODELS}


def test_every_configuration_has_the_published_parameter_counts(meta):
    counts = {m: {k: sum(p.numel() for p in v.parameters()) for k, v in comps.items()} for m, comps in meta.items()}
    assert counts == PUBLISHED
    assert full_size.full_size_parameters(full_size.FULL_SIZE_MODELS) == PUBLISHED
    assert all(p.is_meta for comps in meta.values() for m in comps.values() for p in m.parameters())  # no memory


def test_attention_layers_and_added_conditions_of_the_sdxl_unets(meta):
    base, refiner = meta["sdxl"]["unet"], meta["sdxl-refiner"]["unet"]
    attn2 = {m: sum(n.endswith("attn2") for n, _ in u.named_modules()) for m, u in (("base", base), ("ref", refiner))}
    assert attn2 == {"base": 70, "ref": 44}  # the maps notebook 10 records: 70 layers on SDXL base
    # added conditions: n_time_ids x 256 + pooled bigG (1280): base 6 ids, refiner 5 (with the aesthetic score)
    assert base.add_embedding.linear_1.in_features == 6 * 256 + 1280
    assert refiner.add_embedding.linear_1.in_features == 5 * 256 + 1280
    assert refiner.config.cross_attention_dim == 1280 and base.config.cross_attention_dim == 2048
    heads = {b.attentions[0].transformer_blocks[0].attn1.heads for b in refiner.down_blocks if hasattr(b, "attentions")}
    assert heads == {12, 24}  # 64 channels per head on 768 and 1536 channels


def test_half_precision_keeps_what_from_pretrained_keeps_in_fp32():
    t5 = full_size.full_components("sd3", device="meta", dtype=torch.float16)["text_encoder_3"]
    wo = {p.dtype for n, p in t5.named_parameters() if ".wo." in n}
    assert wo == {torch.float32}  # T5's feed-forward output layers, as from_pretrained(dtype=fp16) leaves them
    assert t5.shared.weight.dtype == torch.float16


def test_a_wrong_model_name_is_a_value_error_naming_the_parameter():
    with pytest.raises(ValueError, match="model"):
        full_size.full_components("sdxl-turbo", device="meta", dtype=torch.float32)
    with pytest.raises(TypeError, match="model"):
        full_size.full_pipeline(3, device="meta", dtype=torch.float32)


# --- benchmarks/full_size_cpu.py: its code path on the tiny pipelines ------------------------------------------------

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "full_size_cpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("full_size_cpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture
def one_thread():
    """The cores are shared with other test runs: one thread keeps the tiny models from waiting on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _quick(bench, out, families, functions=None) -> dict:
    argv = ["--quick", "--in-process", "--families", families, "--size", "32", "--out", str(out)]
    assert bench.main(argv + (["--functions", functions] if functions else [])) == 0
    data = json.loads(out.read_text())
    new = [r for r in data["records"] if r["family"] in families.split(",")]
    assert all(r["status"] == "ok" for r in new), [(r["function"], r.get("error")) for r in new]
    assert all(r["peak_ram_gib"] > 0 and r["seconds"] >= 0 for r in new)
    return data


def test_quick_sdxl_loops_refiner_handoff_and_attention_maps(bench, tmp_path, one_thread):
    data = _quick(bench, tmp_path / "r.json", "sdxl", "sdxl_generate,pipe_call,refiner_handoff,cross_attention_maps")
    by = {r["function"]: r for r in data["records"]}
    assert list(by) == [
        "build", "sdxl_generate", "pipe_call", "build_refiner", "refiner_handoff", "cross_attention_maps",
    ]  # fmt: skip
    assert by["refiner_handoff"]["timesteps"] == {
        "base": [501],
        "refiner": [1],
    }  # 2 steps split at 0.8: t ≥ 200 / < 200
    maps = by["cross_attention_maps"]
    assert maps["maps"] == maps["attn2_layers"] * 2 and maps["attn2_layers"] > 0
    assert data["setup"]["quick"] is True and data["families"]["sdxl"]["size"] == 32


def test_quick_sdxl_vae_tiling_and_lora_step(bench, tmp_path, one_thread):
    data = _quick(bench, tmp_path / "r.json", "sdxl", "vae_tiling,lora_step")
    by = {r["function"]: r for r in data["records"]}
    assert list(by) == ["build", "build_refiner", "vae_tiling", "lora_step"]
    tiling = by["vae_tiling"]
    assert tiling["at_threshold"]["mean_abs_change_from_tiling"] == 0.0  # at the threshold nothing tiles
    assert tiling["over_threshold"]["mean_abs_change_from_tiling"] > 0.0
    assert by["lora_step"]["lora_dtype"] == "float32" and len(by["lora_step"]["losses"]) == 1


def test_quick_sd3_with_t5_then_dropped_by_from_pipe(bench, tmp_path, one_thread):
    data = _quick(bench, tmp_path / "r.json", "sd3")
    assert [r["function"] for r in data["records"]] == ["build", "sd3_generate", "pipe_call", "from_pipe_no_t5"]
    assert data["records"][-1]["dtypes_after"]["transformer"] == "bfloat16"  # dtype= given: nothing converted


def test_quick_sd3_without_t5_and_merging_keeps_other_records(bench, tmp_path, one_thread):
    out = tmp_path / "r.json"
    out.write_text(json.dumps({"records": [{"family": "sdxl", "function": "build"}], "families": {"sdxl": {}}}))
    data = _quick(bench, out, "sd3-no-t5")
    got = [(r["family"], r["function"]) for r in data["records"]]
    assert got == [
        ("sdxl", "build"),
        ("sd3-no-t5", "build"), ("sd3-no-t5", "sd3_generate"), ("sd3-no-t5", "pipe_call"),
        ("sd3-no-t5", "from_pipe_default_dtype"),
    ]  # fmt: skip
    assert set(data["families"]) == {"sdxl", "sd3-no-t5"}
    last = data["records"][-1]  # from_pipe(pipe) without dtype= on the bf16 pipeline: what happened is recorded
    assert last["converted_to_fp32"] == (last["dtypes_original_after"]["transformer"] == "float32")


def test_a_failure_is_recorded_with_its_text_and_the_run_goes_on(bench):
    rec = bench.Recorder("sdxl", 2, 64, collect=False)
    rec.run("broken", lambda: torch.ones(2) @ torch.ones(3))
    rec.run("check", lambda: (_ for _ in ()).throw(AssertionError("maps missing")))
    rec.run("fine", lambda: {"value": 1})
    assert [r["status"] for r in rec.records] == ["error", "check failed", "ok"]
    assert rec.records[0]["error"].startswith("RuntimeError:") and rec.records[1]["error"] == "maps missing"
    assert rec.records[2]["value"] == 1


def test_quick_never_writes_the_measured_results(bench):
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--out", str(bench.OUT)])
    with pytest.raises(SystemExit):
        bench.main(["--families", "sdxl-turbo"])
