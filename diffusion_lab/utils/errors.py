"""The one error convention of the library, and the small checks every entry point uses to follow it.

=====================================================  ===================
the mistake                                            raised
=====================================================  ===================
wrong type: not a tensor / image, ``None`` for a       ``TypeError``
required input, a bool or float where a count goes
right type, wrong value: shape, channels, dtype,       ``ValueError``
range, NaN, an unknown choice, a count below 1
a file that is missing, truncated, corrupt, or         :class:`FileError`
written for another model or format
=====================================================  ===================

Every message names the argument, says what it got and what to do instead.
"""

from __future__ import annotations

import torch

__all__ = ["FileError", "check_choice", "check_int", "check_number", "check_tensor"]


class FileError(OSError):
    """A file the library reads is missing, truncated, corrupt, or was written for another model or format.

    The message names the file and what to do (re-download, re-run the cell that writes it, pass another path).
    Subclasses ``OSError`` so ``except OSError`` around file handling catches it too."""


def check_int(name: str, value: object, minimum: int | None = 1) -> int:
    """``value`` as an ``int`` ≥ ``minimum``: ``TypeError`` for a non-integer (``True`` and ``2.0`` included),
    ``ValueError`` below the minimum."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_number(name: str, value: object, *, minimum: float | None = None, maximum: float | None = None) -> float:
    """``value`` as a finite ``float`` in [minimum, maximum]: ``TypeError`` for a non-number (a bool included),
    ``ValueError`` for NaN, inf or a value out of range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    """``ValueError`` naming the parameter and its allowed values if ``value`` is not one of them."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def check_tensor(name: str, value: object, expected: str) -> torch.Tensor:
    """``value`` itself if it is a ``torch.Tensor``, else ``TypeError`` naming ``expected`` (e.g. ``"(B, 1, 28, 28)
    in [-1, 1]"``). Shape, dtype and range are the caller's ``ValueError`` checks."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {expected}, got {type(value).__name__}")
    return value
