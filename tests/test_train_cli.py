"""``python -m diffusion_lab.training.train``: the same weights on 1 or 2 processes (``accelerate launch``), with or without
gradient accumulation, and after a resume; bf16 fine-tuning runs; bad input fails with a message saying what to do.

Equality is up to float rounding: the runs add the same numbers in another order (DDP's all-reduce, accumulation),
measured max |Δw| ≈ 3e-7 after 4 steps; the tolerance is 1e-5.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from diffusion_lab.training import train
from diffusion_lab.training.tiny_sd_io import load_tiny_sd

REPO = Path(__file__).resolve().parents[1]
COMMON = ["--global-batch-size", "8", "--num-images", "64", "--no-progress"]
TOL = 1e-5


def run(out: Path, *flags: str) -> dict:
    return train.main([*COMMON, "--output-dir", str(out), *flags])


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def weights(checkpoint: Path) -> dict:
    """Raw and EMA weights of a checkpoint folder, keys ``text_encoder.*`` and ``unet.*``."""
    return {**load_file(checkpoint / "model.safetensors"), **{
        "ema." + k: v for k, v in load_file(checkpoint / "ema.safetensors").items()}}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread in this process, as each launched process has (OMP_NUM_THREADS=1): these tiny steps gain nothing
    from a second thread, and on a busy machine two spinning threads per process cost more than they give."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    """One process, no accumulation, 4 steps of global batch 8, checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("reference")
    return out, run(out, "--steps", "4", "--checkpoint-every", "2")


def test_reference_run_writes_checkpoints_pipeline_and_log(reference):
    out, log = reference
    assert {p.name for p in out.iterdir()} >= {"checkpoint-2", "checkpoint-4", "pipeline", "train_log.json"}
    assert json.loads((out / "train_log.json").read_text())["losses"] == log["losses"]
    assert log["steps"] == 4 and len(log["losses"]) == 4 and log["world_size"] == 1
    pipe, bins = load_tiny_sd(out / "pipeline")  # the EMA weights, loadable like the shipped model
    ema = load_file(out / "checkpoint-4" / "ema.safetensors")
    assert max_diff({k: v for k, v in ema.items() if k.startswith("unet.")},
                    {"unet." + k: v for k, v in pipe.unet.state_dict().items()}) == 0  # fmt: skip


def test_two_processes_with_accelerate_launch_equal_one_process(reference, tmp_path):
    """2 CPU processes (gloo) × 2 micro-batches of 2 against 1 process × 1 batch of 8: the same global batches."""
    ref, ref_log = reference
    out = tmp_path / "two_processes"
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith("ACCELERATE_") and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}  # fmt: skip
    env = {**keep, "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf_home"),  # no accelerate config file
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        "-m", "diffusion_lab.training.train", *COMMON, "--steps", "4", "--gradient-accumulation-steps", "2",
        "--output-dir", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = json.loads((out / "train_log.json").read_text())
    assert (log["world_size"], log["gradient_accumulation_steps"], log["micro_batch_size"]) == (2, 2, 2)
    assert log["losses"] == pytest.approx(ref_log["losses"], rel=TOL)
    assert max_diff(weights(out / "checkpoint-4"), weights(ref / "checkpoint-4")) <= TOL


def test_gradient_accumulation_equals_one_big_batch(reference, tmp_path):
    ref, ref_log = reference
    log = run(tmp_path, "--steps", "4", "--gradient-accumulation-steps", "2")
    assert log["micro_batch_size"] == 4
    assert log["losses"] == pytest.approx(ref_log["losses"], rel=TOL)
    assert max_diff(weights(tmp_path / "checkpoint-4"), weights(ref / "checkpoint-4")) <= TOL


def test_resume_equals_uninterrupted_run(reference, tmp_path):
    """A run stopped after its checkpoint at step 2 (the reference's checkpoint-2, copied), resumed to step 4."""
    ref, ref_log = reference
    shutil.copytree(ref / "checkpoint-2", tmp_path / "checkpoint-2")
    log = run(tmp_path, "--steps", "4", "--checkpoint-every", "2", "--resume", "latest")
    assert log["losses"] == ref_log["losses"]  # the first two from the checkpoint, the last two recomputed
    assert max_diff(weights(tmp_path / "checkpoint-4"), weights(ref / "checkpoint-4")) == 0


def test_bf16_fine_tuning_of_the_shipped_model(tmp_path):
    log = run(tmp_path, "--steps", "1", "--mixed-precision", "bf16", "--init", "pretrained")
    assert log["mixed_precision"] == "bf16" and math.isfinite(log["losses"][0])
    tuned, shipped = load_tiny_sd(tmp_path / "pipeline")[0].unet, load_tiny_sd()[0].unet
    moved = max_diff(tuned.state_dict(), shipped.state_dict())
    assert 0 < moved < 1e-2  # started from the shipped weights and took one small step


@pytest.mark.parametrize(
    "flags, error, words",
    [
        (["--steps", "0"], ValueError, "--steps must be an integer >= 1"),
        (["--mixed-precision", "fp8"], ValueError, "bf16"),
        (["--init", "imagenet"], ValueError, "scratch, pretrained"),
        (["--global-batch-size", "6", "--gradient-accumulation-steps", "4"], ValueError, "not divisible"),
        (["--mixed-precision", "fp16", "--cpu"], ValueError, "use --mixed-precision bf16 or no"),
        (["--resume", "latest"], FileNotFoundError, "no checkpoint-<step> folder"),
        (["--resume", "{tmp}"], FileNotFoundError, "not a checkpoint folder"),
        (["--init", "pretrained", "--pretrained-dir", "{tmp}/missing"], FileNotFoundError, "--pretrained-dir"),
    ],
)
def test_bad_input_says_what_to_do(tmp_path, flags, error, words):
    with pytest.raises(error, match=words.replace("-", r"\-").replace("<", ".").replace(">", ".")):
        run(tmp_path, *[f.format(tmp=tmp_path) for f in flags])


def test_resume_with_other_arguments_is_refused(reference, tmp_path):
    ref, _ = reference
    with pytest.raises(ValueError, match="other arguments.*--seed 0 → 1"):
        run(tmp_path, "--steps", "4", "--seed", "1", "--resume", str(ref / "checkpoint-2"))
