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

__all__ = ["FileError", "check_choice", "check_generator", "check_int", "check_number", "check_tensor"]


class FileError(OSError):
    """A file the library reads is missing, truncated, corrupt, or was written for another model or format.

    The message names the file and what to do (re-download, re-run the cell that writes it, pass another path).
    Subclasses ``OSError`` so ``except OSError`` around file handling catches it too."""


def _is_bool(value: object) -> bool:
    """A Python, NumPy or torch bool (never a count or a number here, though Python treats ``True`` as 1)."""
    if isinstance(value, bool) or type(value).__name__ in ("bool", "bool_"):
        return True
    return isinstance(value, torch.Tensor) and value.dtype == torch.bool


def _scalar(value: object) -> object:
    """A one-element NumPy / torch scalar as the Python number it holds (``np.int64(2)`` → 2, ``torch.tensor(0.5)``
    → 0.5); anything else unchanged."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.ndim == 0 else value
    if hasattr(value, "item") and hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def check_int(name: str, value: object, minimum: int | None = 1) -> int:
    """``value`` as a Python ``int`` ≥ ``minimum``. NumPy and torch integer scalars are accepted (``np.int64(2)``,
    ``torch.tensor(2)``); ``TypeError`` for a non-integer (``True`` and ``2.0`` included), ``ValueError`` below the
    minimum."""
    if _is_bool(value):
        raise TypeError(f"{name} must be an integer, got {value!r} (a bool)")
    number = _scalar(value)
    if isinstance(number, bool) or not isinstance(number, int):
        hint = f"; use {int(number)}" if isinstance(number, float) and number.is_integer() else ""
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}){hint}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    return number


def check_number(name: str, value: object, *, minimum: float | None = None, maximum: float | None = None) -> float:
    """``value`` as a finite Python ``float`` in [minimum, maximum]. NumPy and torch scalars are accepted;
    ``TypeError`` for a non-number (a bool included), ``ValueError`` for NaN, inf or a value out of range."""
    if _is_bool(value):
        raise TypeError(f"{name} must be a number, got {value!r} (a bool)")
    number = _scalar(value)
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    number = float(number)
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {number}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {number}")
    return number


def check_generator(
    name: str, generator: object, batch: int | None = None
) -> torch.Generator | list[torch.Generator] | None:
    """``generator`` itself if it is ``None``, a ``torch.Generator`` or (as diffusers allows) a list of them, one per
    sample (``batch`` of them when ``batch`` is given). A seed (``42``) or anything else → ``TypeError`` that says
    how to make one; a list of the wrong length → ``ValueError``."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, list | tuple) and generator and all(isinstance(g, torch.Generator) for g in generator):
        if batch is not None and len(generator) != batch:
            raise ValueError(
                f"{name} is a list of {len(generator)} generators for a batch of {batch}: give one generator, "
                f"or one per sample ({batch})"
            )
        return list(generator)
    if isinstance(generator, int) and not isinstance(generator, bool):
        how = f"a seed? pass torch.Generator().manual_seed({generator})"
    else:
        how = "make one with torch.Generator().manual_seed(seed)"
    raise TypeError(
        f"{name} must be a torch.Generator, a list of them (one per sample) or None, got "
        f"{type(generator).__name__}: {how}"
    )


def check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    """``ValueError`` naming the parameter and its allowed values if ``value`` is not one of them."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {list(allowed)} (a string), got {type(value).__name__}")
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def check_tensor(name: str, value: object, expected: str) -> torch.Tensor:
    """``value`` itself if it is a ``torch.Tensor``, else ``TypeError`` naming ``expected`` (e.g. ``"(B, 1, 28, 28)
    in [-1, 1]"``). Shape, dtype and range are the caller's ``ValueError`` checks."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {expected}, got {type(value).__name__}")
    return value
