"""Scratch folders for files a notebook or script writes only to read them back (a saved model, a GIF): created in
the system's temporary folder as ``dlab-scratch-<prefix><pid>-XXXXXXXX`` and removed when the Python process that made
them ends normally (a notebook: when its kernel shuts down). A process that is killed (a test runner stopping a
kernel, a crash) cannot clean up; its folders are removed by the next :func:`scratch_dir` call, or by
:func:`remove_dead_scratch_dirs` (which the notebook test run calls at its end), so a course run leaves nothing behind.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from pathlib import Path

__all__ = ["SCRATCH_MARK", "remove_dead_scratch_dirs", "scratch_dir"]

SCRATCH_MARK = "dlab-scratch-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def remove_dead_scratch_dirs(root: str | os.PathLike | None = None) -> list[Path]:
    """Remove the scratch folders (under ``root``, default the temporary folder) whose process has ended; returns
    the folders removed."""
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{SCRATCH_MARK}*"):
        match = re.search(r"(\d+)-[^-]+$", folder.name)
        if folder.is_dir() and match and not _pid_alive(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def scratch_dir(prefix: str) -> Path:
    """A new empty folder ``<tmp>/dlab-scratch-<prefix><pid>-XXXXXXXX``, deleted (with everything in it) when this
    process exits; the folders of processes that died first are removed now."""
    if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", prefix):
        raise ValueError(f"prefix must be a short folder-name prefix such as 'nb12-', got {prefix!r}")
    remove_dead_scratch_dirs()
    folder = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_MARK}{prefix}{os.getpid()}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder
