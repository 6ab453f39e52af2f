"""Quick ("smoke") mode: the one place where the library reads ``DIFFUSION_LAB_SMOKE``.

Tests and ``pytest --nbval`` set ``DIFFUSION_LAB_SMOKE=1`` (see ``notebooks/conftest.py``) so that every
notebook runs in seconds; a student running a notebook by hand gets the full settings. Notebooks never
read the variable themselves: they call :func:`pick` (or :func:`smoke_mode`).

    >>> n_steps = pick(full=20_000, quick=200)
"""

from __future__ import annotations

import os
from typing import TypeVar

__all__ = ["ENV_VAR", "smoke_mode", "pick"]

ENV_VAR = "DIFFUSION_LAB_SMOKE"
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
