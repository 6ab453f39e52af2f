"""benchmarks/gpu_pipelines.py: its recipe code runs offline on tiny pipelines (``--tiny``), it writes nothing without a
GPU, its full-size configurations have the published parameter counts, and its target checks read the records right."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_pipelines.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_pipelines_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up in sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_tiny_run_records_every_recipe_of_both_models_and_the_targets(bench, tmp_path, monkeypatch):
    """The recipes really run (measure() calls them), but each image is reported to take 0.25 s: the records and the
    targets are then known numbers, whatever the machine's speed."""
    measured = []
    real_measure = bench.bridge.measure

    def measure_at_a_quarter_second(fn):
        result, m = real_measure(fn)
        measured.append(m)
        return result, type(m)(0.25, m.peak_gib)

    monkeypatch.setattr(bench.bridge, "measure", measure_at_a_quarter_second)
    out = tmp_path / "x.json"
    assert bench.main(["--tiny", "--out", str(out)]) == 0
    assert len(measured) == 2 * len(bench.RECIPES)  # --tiny: one warm-up image and one timed image per recipe
    data = json.loads(out.read_text())
    records = data["records"]
    assert [(r["model"], r["recipe"]) for r in records] == [(r.model, r.name) for r in bench.RECIPES]
    assert {r["model"] for r in records} == {"sdxl", "sd3"}
    assert all(r["status"] == "ok" for r in records), [r.get("message") for r in records]
    for r in records:
        assert r["seconds"] == [0.25] and r["warmup_seconds"] == [0.25]
        assert r["seconds_per_image"] == r["seconds_per_image_min"] == 0.25 and r["images_per_s"] == 4.0
        assert r["peak_allocated_gib"] is None and r["dtype_run"] == "fp32"  # CPU: no GPU memory, no half precision
    by_key = {f"{r['model']}/{r['recipe']}": r for r in records}
    assert any("offload" in k for k in by_key["sd3/lowmem"]["knobs_dropped"])
    assert any("compile" in k for k in by_key["sdxl/recommended"]["knobs_dropped"])
    assert by_key["sd3/fp16-no-t5"]["parameters"] < by_key["sd3/fp16"]["parameters"]  # T5 really dropped
    assert data["setup"]["size"] == 64 and data["setup"]["steps"] == 2 and data["setup"]["gpu"] is None

    targets = data["targets"]
    assert set(targets) == {"sdxl_recommended_speedup", "sd3_lowmem_peak_gib"}
    for t in targets.values():
        assert {"value", "target", "comparison", "met"} <= set(t)
    speed = targets["sdxl_recommended_speedup"]
    assert speed["value"] == 1.0 and speed["met"] is False  # 0.25 s / 0.25 s, below the 1.5 target
    assert targets["sd3_lowmem_peak_gib"]["met"] is None  # no GPU memory to compare on the CPU


def test_without_a_gpu_nothing_is_measured_or_written(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "results.json"
    assert bench.main(["--out", str(out)]) == 0
    assert not out.exists()
    out.write_text('{"measured": "earlier"}')
    assert bench.main(["--out", str(out), "--model", "sd3"]) == 0
    assert out.read_text() == '{"measured": "earlier"}'  # an existing results file is left alone
    assert "no CUDA GPU: nothing measured" in capsys.readouterr().out


def test_tiny_never_writes_the_measured_results(bench):
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--out", str(bench.OUT)])


def test_full_size_configurations_have_the_published_parameter_counts(bench):
    counts = bench.count_parameters()  # built on the meta device: shapes only
    assert counts["sdxl"] == {
        "text_encoder": 123_060_480,
        "text_encoder_2": 694_659_840,
        "unet": 2_567_463_684,
        "vae": 83_653_863,
    }
    assert counts["sd3"] == {
        "text_encoder": 123_650_304,
        "text_encoder_2": 694_659_840,
        "text_encoder_3": 4_762_310_656,
        "transformer": 2_028_328_000,
        "vae": 83_819_683,
    }


def test_target_checks_and_merging(bench, tmp_path):
    def rec(model, recipe, status="ok", **kw):
        return {"model": model, "recipe": recipe, "status": status, **kw}

    records = [
        rec("sdxl", "fp16", seconds_per_image=3.0),
        rec("sdxl", "recommended", seconds_per_image=2.0),
        rec("sd3", "lowmem", peak_allocated_gib=11.5, peak_reserved_gib=12.0),
    ]
    targets = bench.target_checks(records)
    assert targets["sdxl_recommended_speedup"]["value"] == 1.5 and targets["sdxl_recommended_speedup"]["met"] is True
    assert targets["sd3_lowmem_peak_gib"]["value"] == 11.5 and targets["sd3_lowmem_peak_gib"]["met"] is True
    targets = bench.target_checks([rec("sdxl", "recommended", "error"), rec("sd3", "lowmem", "OOM")])
    assert targets["sdxl_recommended_speedup"]["met"] is None and targets["sd3_lowmem_peak_gib"]["met"] is False

    setup = dict.fromkeys(bench._SAME_RUN, "x")
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"setup": setup, "records": records}))
    merged = bench.merge_records(path, setup, [rec("sdxl", "fp16", seconds_per_image=2.5)], fresh=False)
    assert [(r["recipe"], r.get("seconds_per_image")) for r in merged] == [
        ("fp16", 2.5),
        ("recommended", 2.0),
        ("lowmem", None),
    ]
    assert bench.merge_records(path, {**setup, "gpu": "other"}, merged[:1], fresh=False) == merged[:1]
