"""Saving never destroys what it was not asked to replace: a model's ``save_pretrained`` writes its own files (each
atomically) and leaves a student's other files alone, ``save_pretrained(".")`` works, a pipeline save is atomic as a
whole (a save killed at any moment leaves the complete old or the complete new pipeline, never a mix), and stale
temporary folders of killed saves are cleaned at the next save."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffusion_lab.models.unet import UNet, UNetConfig
from diffusion_lab.pipelines.stable_diffusion import TinyStableDiffusionPipeline
from diffusion_lab.utils import checkpoint
from diffusion_lab.utils.checkpoint import clean_stale_temps

REPO = Path(__file__).resolve().parents[1]

BUILD = """
import torch
from diffusion_lab.models.autoencoder import AutoencoderConfig, AutoencoderKL
from diffusion_lab.models.text_encoder import TextEncoder, TextEncoderConfig, WordTokenizer
from diffusion_lab.models.unet import UNet, UNetConfig
from diffusion_lab.pipelines.stable_diffusion import TinyStableDiffusionPipeline
from diffusion_lab.schedulers.scheduling_ddim import DDIMScheduler


def build(value, cls=TinyStableDiffusionPipeline):
    tokenizer = WordTokenizer.from_texts(["a thick seven"], model_max_length=8)
    text = TextEncoder(TextEncoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_layers=1, num_heads=2,
                                         max_position=8))
    vae = AutoencoderKL(AutoencoderConfig(channels=(8, 8), latent_channels=4, groups=4, scaling_factor=0.5))
    unet = UNet(UNetConfig(in_channels=4, out_channels=4, channels=(16,), attention_levels=(True,), groups=4,
                           time_embed_dim=32, heads=2, blocks_per_level=0, cross_attention_dim=16, pooled_dim=16))
    with torch.no_grad():
        for m in (vae, text, unet):
            for p in m.parameters():
                p.fill_(value)
    return cls(vae, text, tokenizer, unet, DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False))
"""
namespace: dict = {}
exec(BUILD, namespace)  # the same builder in this process and in the children
build = namespace["build"]

# The child imports torch once, then for each line "<marker> <delay>" on its stdin: saves the old pipeline (weights
# 1.0), forks a writer that saves the new one (2.0) over it, waits for the writer's marker, sleeps <delay> s and kills
# the writer with SIGKILL. The writer is a subclass with the same name that reports each component write and sleeps
# around it, so that the kills land before, inside and after any component and after the whole save.
CHILD = (
    BUILD
    + """
import os, signal, sys, time

WRITE = None


def report(text):
    os.write(WRITE, (text + "\\n").encode())


class TinyStableDiffusionPipeline(TinyStableDiffusionPipeline):
    def _save_component(self, name, component, directory):
        report("start " + name)
        time.sleep(0.05)
        super()._save_component(name, component, directory)
        report("done " + name)
        time.sleep(0.05)


torch.set_num_threads(1)
folder = sys.argv[1]
old, new = build(1.0), build(2.0, TinyStableDiffusionPipeline)
print("ready", flush=True)
for line in sys.stdin:
    marker, delay = line.strip().rsplit(" ", 1)
    old.save_pretrained(folder)
    r, WRITE = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            new.save_pretrained(folder)
            report("saved")
            time.sleep(30)
        finally:
            os._exit(0)
    os.close(WRITE)
    with os.fdopen(r) as reports:
        for got in reports:
            if got.strip() == marker:
                break
        time.sleep(float(delay))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    print("killed", flush=True)
"""
)


def _unet() -> UNet:
    cfg = UNetConfig(in_channels=1, out_channels=1, channels=(8,), attention_levels=(False,), groups=4,
                     time_embed_dim=16, heads=2, blocks_per_level=0)  # fmt: skip
    return UNet(cfg)


def _values(pipe) -> set[float]:
    """The (single) fill value of each network: a mix of old and new shows as two values."""
    return {next(m.parameters()).flatten()[0].item() for m in (pipe.vae, pipe.text_encoder, pipe.unet)}


def test_model_save_keeps_other_files_in_the_folder(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    (folder / "old-run").mkdir()
    (folder / "old-run" / "model.safetensors").write_bytes(b"keep")
    model = _unet()
    model.save_pretrained(folder)
    model.save_pretrained(folder)  # again, over itself
    assert (folder / "notes.txt").read_text() == "my notes"
    assert (folder / "old-run" / "model.safetensors").read_bytes() == b"keep"
    loaded = UNet.from_pretrained(folder)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), loaded.parameters(), strict=True))
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "notes.txt", "old-run"]


def test_model_save_into_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    model = _unet()
    model.save_pretrained(".")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    loaded = UNet.from_pretrained(".")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), loaded.parameters(), strict=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]


def test_model_save_removes_its_own_stale_files(tmp_path):
    """An EMA file of an earlier save would be loaded instead of the new weights: a save removes the files it owns
    and does not write."""
    model = _unet()
    (tmp_path / "ema.safetensors").write_bytes(b"an old EMA")
    model.save_pretrained(tmp_path)
    assert not (tmp_path / "ema.safetensors").exists()
    assert all(
        torch.equal(p, q) for p, q in zip(model.parameters(), UNet.from_pretrained(tmp_path).parameters(), strict=True)
    )


def test_pipeline_save_keeps_other_files(tmp_path):
    folder = tmp_path / "pipe"
    build(1.0).save_pretrained(folder)
    (folder / "caption_bins.json").write_text("{}")
    (folder / "unet" / "README.md").write_text("my unet notes")
    (folder / "samples").mkdir()
    (folder / "samples" / "a.png").write_bytes(b"png")
    build(2.0).save_pretrained(folder)
    assert (folder / "caption_bins.json").read_text() == "{}"
    assert (folder / "unet" / "README.md").read_text() == "my unet notes"
    assert (folder / "samples" / "a.png").read_bytes() == b"png"
    assert _values(TinyStableDiffusionPipeline.from_pretrained(folder)) == {2.0}
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"], "no temporary folder is left next to the pipeline"


def test_pipeline_save_into_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    build(1.0).save_pretrained(".")
    build(2.0).save_pretrained(".")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert _values(TinyStableDiffusionPipeline.from_pretrained(".")) == {2.0}


def _age(path: Path, seconds: float) -> None:
    for p in [path, *path.rglob("*")]:
        os.utime(p, (time.time() - seconds, time.time() - seconds))


def test_stale_temporary_folders_are_cleaned_at_the_next_save(tmp_path):
    folder = tmp_path / "pipe"
    build(1.0).save_pretrained(folder)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    stale = [tmp_path / f".pipe.tmp-{dead_pid}-abc", tmp_path / ".pipe.old-12345678"]
    stale[0].mkdir()
    (stale[0] / "unet").mkdir()
    stale[1].mkdir()
    _age(stale[1], 3600)  # an old aside of an unknown process
    fresh = tmp_path / f".pipe.tmp-{os.getpid()}-live"  # a save under way in a live process: kept
    fresh.mkdir()
    other = tmp_path / ".other.tmp-1-x"  # another folder's temporary: not ours to judge
    other.mkdir()
    _age(other, 3600)
    model_tmp = tmp_path / "unet_dir"
    model_tmp.mkdir()
    stale_file = model_tmp / f".model.safetensors.tmp-{dead_pid}-zz"
    stale_file.write_bytes(b"half")
    build(2.0).save_pretrained(folder)
    assert not stale[0].exists() and not stale[1].exists()
    assert fresh.exists() and other.exists()
    _unet().save_pretrained(model_tmp)
    assert not stale_file.exists()
    assert clean_stale_temps(tmp_path, "pipe") == []  # nothing left to clean


def test_pipeline_save_killed_at_any_moment_leaves_old_or_new(tmp_path):
    """SIGKILL a writer before, inside and after each component write, just before the swap, after the save and at
    random short delays: the folder then loads as the whole old pipeline or the whole new one, never a mix, never an
    error."""
    folder = tmp_path / "pipe"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    rng = random.Random(0)
    kills = [("start vae", 0.0), ("start vae", 0.06), ("done vae", 0.0), ("start text_encoder", 0.055),
             ("done tokenizer", 0.0), ("start unet", 0.05), ("done unet", 0.02), ("done scheduler", 0.0),
             ("done scheduler", 0.049), ("saved", 0.0)] + [("start vae", rng.uniform(0, 0.6)) for _ in range(3)]  # fmt: skip
    child = subprocess.Popen([sys.executable, str(script), str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=env, cwd=tmp_path)  # fmt: skip
    seen = set()
    try:
        assert child.stdout.readline().strip() == "ready"
        for marker, delay in kills:
            child.stdin.write(f"{marker} {delay}\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "killed"
            values = _values(TinyStableDiffusionPipeline.from_pretrained(folder))
            assert values in ({1.0}, {2.0}), f"killed at {marker!r} + {delay} s: a mix of old and new weights"
            seen |= values
    finally:
        child.stdin.close()
        child.wait(timeout=10)
        child.stdout.close()
    assert child.returncode == 0
    assert seen == {1.0, 2.0}, "the kills must catch both the old pipeline and the new one"
    build(3.0).save_pretrained(folder)  # the next save cleans what the kills left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.py", "pipe"]
    assert _values(TinyStableDiffusionPipeline.from_pretrained(folder)) == {3.0}


@pytest.mark.parametrize("bad", [3, None])
def test_clean_stale_temps_checks_its_arguments(tmp_path, bad):
    with pytest.raises(TypeError):
        clean_stale_temps(bad, "x")


def test_swap_without_an_atomic_exchange(tmp_path, monkeypatch):
    """Where the system cannot exchange two folders in one step, the old one is renamed aside first; a kill between
    the two renames is repaired by the next save, which puts the aside back before anything else."""
    monkeypatch.setattr(checkpoint, "_exchange", lambda a, b: False)
    folder = tmp_path / "pipe"
    build(1.0).save_pretrained(folder)
    build(2.0).save_pretrained(folder)
    assert _values(TinyStableDiffusionPipeline.from_pretrained(folder)) == {2.0}
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]
    aside = tmp_path / ".pipe.old-12345678-x"  # the state a kill between the two renames leaves
    folder.rename(aside)
    assert clean_stale_temps(tmp_path, "pipe") == []
    assert not aside.exists()
    assert _values(TinyStableDiffusionPipeline.from_pretrained(folder)) == {2.0}
