"""Makes plain ``pytest --nbval notebooks/`` work offline, strict and quick (facts: shared notes, nbval.md).

- Quick mode: ``DIFFUSION_LAB_SMOKE=1`` unless already set (the library reads it in diffusion_lab/settings.py).
- Offline: the Hugging Face libraries never touch the network; no progress bars from them.
- The kernel is the interpreter running pytest (a stale user kernelspec named ``python3`` cannot win).
- Sanitizers: the kernel's temporary file paths, memory addresses and tqdm timings vary between runs.
- Clean up: the scratch folders of the kernels nbval killed are removed at the end (no atexit runs in a killed kernel).
- Per-notebook lax mode: a notebook whose stored outputs cannot match a CPU run (GPU-only figures) sets
  ``"diffusion_lab": {"nbval": "lax"}`` in its metadata; its cells still run and must not raise, but only cells
  tagged ``nbval-check-output`` are compared.
- Half precision (``DIFFUSION_LAB_DTYPE=float16|bfloat16``, ``make notebooks-half``): the real-path cells of 10-13
  load the stand-ins in that dtype; every cell must run, no output is compared (printed dtypes, the out-of-memory
  advice and rounded figures legitimately differ from the stored fp32 outputs).
"""

from __future__ import annotations

import json
import os

QUICK_AND_OFFLINE = {
    "DIFFUSION_LAB_SMOKE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",  # debugpy's frozen-modules warning on stderr
}
for key, value in QUICK_AND_OFFLINE.items():
    os.environ.setdefault(key, value)

SANITIZE = {
    r"/tmp/ipykernel_\d+/\d+\.py": "<kernel-cell>",  # warnings name the kernel's temporary cell file
    r"/[\w./-]*/ipykernel_\d+/\d+\.py": "<kernel-cell>",
    r"0x[0-9a-fA-F]{6,}": "0xADDRESS",
    r"\[\d\d:\d\d<[^\]]*\]": "[TQDM-TIME]",  # tqdm's [elapsed<remaining, rate] block
    r"\d+(\.\d+)?(it/s|s/it)": "RATE",
}


def pytest_configure(config):
    if hasattr(config.option, "nbval_current_env"):
        config.option.nbval_current_env = True


def pytest_collection_modifyitems(items):
    """In the half-precision run, no cell's output is compared (not even ``nbval-check-output`` ones): it must run."""
    from diffusion_lab.utils.settings import half_dtype  # lazy: the one reader of DIFFUSION_LAB_DTYPE, once collected

    if half_dtype() is not None:
        for item in items:
            if isinstance(getattr(item, "options", None), dict):
                item.options["check"] = False


def pytest_sessionfinish(session):
    """nbval kills each kernel (no atexit runs): remove the scratch folders the killed kernels left."""
    from diffusion_lab.utils.scratch import remove_dead_scratch_dirs  # lazy: after the run, the library is installed

    remove_dead_scratch_dirs()


def pytest_collectstart(collector):
    """Runs for each notebook collected by nbval: add sanitizers and honour the per-notebook lax switch."""
    if not hasattr(collector, "sanitize_patterns"):
        return
    collector.sanitize_patterns.update(SANITIZE)
    try:
        with open(collector.fspath, encoding="utf-8") as fh:
            meta = json.load(fh).get("metadata", {})
    except (OSError, ValueError):
        return
    if meta.get("diffusion_lab", {}).get("nbval") == "lax":
        collector.compare_outputs = False
