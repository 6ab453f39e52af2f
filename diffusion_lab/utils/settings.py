"""Run-wide switches: the one place where the library reads ``DIFFUSION_LAB_SMOKE`` and ``DIFFUSION_LAB_DTYPE``.

Tests and ``pytest --nbval`` set ``DIFFUSION_LAB_SMOKE=1`` (see ``notebooks/conftest.py``) so that every
notebook runs in seconds; a student running a notebook by hand gets the full settings. Notebooks never
read the variable themselves: they call :func:`pick` (or :func:`smoke_mode`).

    >>> n_steps = pick(full=20_000, quick=200)

Half precision on the CPU: ``DIFFUSION_LAB_DTYPE=float16`` or ``bfloat16`` (:func:`half_dtype`) makes the real-model
path of notebooks 10-13 (``bridge.check_environment().dtype``, hence ``bridge.load_pipeline``, the family loaders and
the SDXL LoRA recipe) build and run the tiny stand-ins in that dtype, as ``from_pretrained(..., dtype=...)`` loads
real weights on a GPU (fp16 on a T4, bf16 on Ampere and later). Unset or ``float32``: today's behaviour (fp32 on
the CPU, the GPU's own choice on a GPU). ``make notebooks-half`` runs notebooks 10-13 so, and a dtype bug (a
``from_pipe`` that converts shared components to fp32, an fp32 tensor fed to an fp16 layer) fails CI. With torch
2.14 every CPU kernel these pipelines use exists in fp16 too (convolutions, group norm, SDPA attention, T5, the SVD
temporal layers, LoRA training under autocast: all of 10-13 run, checked on this CPU); older torch releases raised
"... not implemented for 'Half'" for some CPU kernels (not checked here), and there bf16 is the proxy. CI uses bf16 (``make
notebooks-half``; ``HALF_DTYPE=float16`` for the T4 dtype), tests/test_half_precision.py both.
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch

__all__ = ["DTYPE_VAR", "ENV_VAR", "half_dtype", "pick", "smoke_mode"]

ENV_VAR = "DIFFUSION_LAB_SMOKE"
DTYPE_VAR = "DIFFUSION_LAB_DTYPE"
_DTYPES = {"": None, "float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}
T = TypeVar("T")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def smoke_mode() -> bool:
    """True when ``DIFFUSION_LAB_SMOKE`` is set to 1/true/yes/on (read at every call, no cached global)."""
    raw = os.environ.get(ENV_VAR, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"{ENV_VAR} must be one of 1/0/true/false/yes/no/on/off, got {raw!r}")


def pick(full: T, quick: T) -> T:
    """Return ``quick`` in smoke mode (tests, CI) and ``full`` otherwise."""
    return quick if smoke_mode() else full


def half_dtype() -> torch.dtype | None:
    """The half precision asked for by ``DIFFUSION_LAB_DTYPE`` (``float16`` / ``bfloat16``), or None when it is unset
    or ``float32`` (read at every call, no cached global). Any other value is a ValueError naming the variable."""
    raw = os.environ.get(DTYPE_VAR, "").strip().lower()
    if raw not in _DTYPES:
        raise ValueError(f"{DTYPE_VAR} must be one of float32/float16/bfloat16 (or unset), got {raw!r}")
    return _DTYPES[raw]
