"""Notebook 10's real-path code, run here as written in the notebook (its cells' source, not a copy):

- §6 cross-attention maps: the recorder keeps one running sum per resolution, so what it holds does not grow with the
  number of steps (the real SDXL at 1024², 30 steps: 1.6 MB instead of the ~22 GB of keeping, upsampling and stacking
  every map, ``benchmarks/results/memory_tables.json``), and the upsampled mean equals the mean of every upsampled map;
- §7 VAE tiling: on the real path the demo decodes a size above SDXL's tile size, so ``enable_tiling()`` really tiles.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor

from diffusion_lab import bridge
from diffusion_lab.bridge import full_size

ROOT = Path(__file__).resolve().parents[1]


def _cells() -> list[str]:
    nb = json.loads(next((ROOT / "notebooks").glob("10_*.ipynb")).read_text("utf-8"))
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def _cell(marker: str) -> str:
    found = [c for c in _cells() if marker in c]
    assert len(found) == 1, f"notebook 10 must have exactly one code cell with {marker!r}"
    return found[0]


def _notebook_recorder():
    """The class and helper the notebook defines, executed from its own source."""
    record = _cell("class RecordCrossAttention")
    namespace: dict = {"AttnProcessor": AttnProcessor, "torch": torch}
    exec(record[: record.index("\n\n\nsums, counts")], namespace)  # the class definition only
    maps = _cell("def upsample(")
    start = maps.index("def upsample(")
    exec(maps[start : maps.index("\n\n\n", start)], namespace)
    return namespace["RecordCrossAttention"], namespace["upsample"]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    with contextlib.redirect_stdout(io.StringIO()), bridge.quiet_hf():
        pipe = bridge.tiny_sdxl()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _record(pipe, recorder, steps: int):
    """Run the pipeline with the notebook's recorder on every attn2 layer; also return each single map (the
    difference of the running sum before and after each call), for the reference computation below."""
    sums, counts, every, before = {}, {}, [], {}

    class KeepEach(recorder):
        def __call__(self, attn, hidden_states, *args, **kwargs):
            out = super().__call__(attn, hidden_states, *args, **kwargs)
            n = hidden_states.shape[1]
            every.append(sums[n] - before.get(n, 0))
            before[n] = sums[n].clone()
            return out

    original = pipe.unet.attn_processors
    pipe.unet.set_attn_processor(
        {name: KeepEach(sums, counts) if "attn2" in name else proc for name, proc in original.items()}
    )
    try:
        pipe(
            "a lighthouse",
            num_inference_steps=steps,
            height=64,
            width=64,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
        )
    finally:
        pipe.unet.set_attn_processor(original)
    return sums, counts, every


def test_the_recorder_holds_the_same_bytes_whatever_the_steps(pipe):
    recorder, _ = _notebook_recorder()
    layers = sum("attn2" in name for name in pipe.unet.attn_processors)
    held = {}
    for steps in (2, 6):
        sums, counts, _ = _record(pipe, recorder, steps)
        assert sum(counts.values()) == layers * steps
        held[steps] = sum(s.numel() * s.element_size() for s in sums.values())
        assert held[steps] == sum(n * 77 * 4 for n in sums)  # one (N, 77) fp32 sum per resolution, nothing else
    assert held[2] == held[6], f"the recorder's memory must not grow with the steps: {held}"


def test_the_upsampled_mean_equals_the_mean_of_every_upsampled_map(pipe):
    recorder, upsample = _notebook_recorder()
    sums, counts, every = _record(pipe, recorder, 3)
    side = 32
    total = sum(counts.values())
    assert len(every) == total
    notebook = sum(upsample(sums[n] / total, side) for n in sums)  # the notebook's line
    reference = torch.stack([upsample(m, side) for m in every]).mean(0)  # the old way: every map, upsampled, stacked
    torch.testing.assert_close(notebook, reference, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(notebook.sum(0), torch.ones(side, side), atol=1e-5, rtol=0)


def test_the_real_path_vae_demo_decodes_above_the_tile_size():
    """SDXL's VAE tiles only latents larger than sample_size / 8 = 128 (1024 px): at 1024² tiling changes nothing
    (measured at full size in ``benchmarks/results/full_size_cpu.json``, ``vae_tiling``)."""
    cell = _cell("vae.enable_tiling()")
    line = next(ln for ln in cell.splitlines() if ln.startswith("side = "))
    side = eval(line.removeprefix("side = "), {"real": True, "size": 1024})  # the notebook's real-path size
    vae = full_size.SDXL_VAE
    tile_latent = vae["sample_size"] // 2 ** (len(vae["block_out_channels"]) - 1)
    assert tile_latent == 128
    assert side // 8 > tile_latent, f"the demo decodes {side}² (latent {side // 8}²): not above the tile size"
    assert "sdxl-vae-fp16-fix" in cell and "vae is not pipe.vae" in cell, (
        "the fp16-fix VAE must be used, not only loaded"
    )
