"""Scratch folders (diffusion_lab.utils.scratch) and the gate's check for temporaries a test run left behind: a
process that ends normally removes its scratch folders, a killed one's are removed by the next call, and the gate
names every leftover (a killed save's ``.*.tmp-*``, a damaged cache set aside, a dead process's scratch folder)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import check_results  # noqa: E402  (tests/ is not a package)

from diffusion_lab.utils import scratch  # noqa: E402

_MAKE = "from diffusion_lab.utils.scratch import scratch_dir; d = scratch_dir('probe-'); print(d, flush=True)"


@pytest.fixture
def tmp_root(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # for the subprocesses
    return tmp_path


def test_a_normal_exit_removes_the_scratch_folder(tmp_root):
    out = subprocess.run([sys.executable, "-c", _MAKE], capture_output=True, text=True, check=True).stdout
    folder = Path(out.strip())
    assert folder.parent == tmp_root and folder.name.startswith("dlab-scratch-probe-")
    assert not folder.exists()


def test_a_killed_process_leaves_it_and_the_next_call_removes_it(tmp_root):
    code = _MAKE + "; import os, signal; open(d / 'f', 'w').write('x'); os.kill(os.getpid(), signal.SIGKILL)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    folder = Path(out.strip())
    assert folder.is_dir()  # killed: nothing ran at exit
    assert check_results.leftover_temporaries(tmp_root / "repo", tmp_root, tmp_root / "cache") == [
        f"{folder} is a scratch folder whose process has ended"
    ]
    mine = scratch.scratch_dir("again-")  # the next call cleans the dead process's folder, not its own
    assert not folder.exists() and mine.is_dir()
    assert check_results.leftover_temporaries(tmp_root / "repo", tmp_root, tmp_root / "cache") == []


def test_the_gate_names_interrupted_saves_and_damaged_caches(tmp_root):
    repo, cache = tmp_root / "repo", tmp_root / "cache"
    (repo / "checkpoints" / ".unet.tmp-1234-ab").mkdir(parents=True)
    (repo / ".venv" / ".x.tmp-1").mkdir(parents=True)  # not ours to judge
    (cache / "tiny" / ".sd15-v2.damaged-99").mkdir(parents=True)
    (repo / "notes.tmp-like.txt").write_text("a student's file")  # not a temporary's name
    found = check_results.leftover_temporaries(repo, tmp_root, cache)
    assert len(found) == 2 and any(".unet.tmp-1234-ab" in f for f in found) and any("damaged" in f for f in found)


@pytest.mark.parametrize("prefix", ["", "a/b", "../x", 3, None, "x" * 41])
def test_scratch_prefix_is_checked(prefix):
    with pytest.raises(ValueError, match="prefix"):
        scratch.scratch_dir(prefix)
