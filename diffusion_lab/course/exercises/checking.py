"""Checks for the notebooks' exercises: each tells the student right or wrong, with a hint when wrong.

Every ``check_*`` function prints one line starting with ✅ or ❌ and returns True or False, so a notebook cell
can also ``assert`` it. They compare the student's answer with the library on several random cases; an error
raised by the student's code becomes a ❌ with the error message, never a crash of the check. So does an answer of
the wrong kind: the converters here (:func:`_as_tensor`, :func:`_as_number`, :func:`_as_int_list`) turn what the
student returned into a tensor, a number or a list of ints, or say what is wrong with it (a tuple, a string, NaN,
a complex or meta tensor, ...) for the hint. ``KeyboardInterrupt`` and ``SystemExit`` are never caught.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch


def _check_callable(fn: object) -> None:
    """The one argument error a checker raises instead of printing ❌: it was given something that is not a function
    (a ``TypeError``, by the library's error convention). What the student's function does is never an error here."""
    if not callable(fn):
        raise TypeError(
            f"pass your function itself, e.g. check_q_sample(q_sample), not its result: got {type(fn).__name__}"
        )


def _report(ok: bool, what: str, hint: str) -> bool:
    print(f"✅ {what}: correct" if ok else f"❌ {what}: not yet. Hint: {hint}")
    return ok


def _kind(value: object) -> str:
    """What a value is, for a hint: "a tuple of 2", "a str", "a float32 tensor of shape (7, 5)", "a function"."""
    if value is None:
        return "None"
    if isinstance(value, tuple | list | dict | set):
        return f"a {type(value).__name__} of {len(value)}"
    if isinstance(value, torch.Tensor) and value.is_nested:
        return "a nested tensor (no single shape)"
    if isinstance(value, torch.Tensor):
        where = "" if value.device.type == "cpu" else f" on {value.device.type}"
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}{where}"
    if isinstance(value, np.ndarray):
        return f"a NumPy {value.dtype} array of shape {value.shape}"
    if callable(value):
        return "a function (call it and use its result)"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _dense(value: object) -> object:
    """A sparse tensor as a dense one; a nested tensor raises ``ValueError`` (it has no one shape); anything else is
    returned unchanged."""
    if isinstance(value, torch.Tensor):
        if value.is_nested:
            raise ValueError("a nested tensor")
        if value.layout != torch.strided:
            return value.to_dense()
    return value


def _as_tensor(value: object, dtype: torch.dtype | None = None) -> tuple[torch.Tensor | None, str]:
    """``value`` (a tensor, a NumPy array, a number or a nested list of numbers) as one real, detached CPU tensor of
    ``dtype``; or None and what is wrong with it ("got a tuple of 2", "got a complex tensor ...")."""
    if value is None or isinstance(value, bool | np.bool_ | str | bytes | dict | set) or callable(value):
        return None, f"got {_kind(value)}"
    if isinstance(value, tuple | list) and any(isinstance(v, torch.Tensor | np.ndarray | tuple | list) for v in value):
        if not all(isinstance(v, list) for v in value):  # nested lists of numbers are a table; tensors in a tuple not
            return None, f"got {_kind(value)}"
    try:
        tensor = _dense(torch.as_tensor(value))
    except Exception:  # an object array, a generator, an int too large for any dtype, ...
        return None, f"got {_kind(value)}"
    if tensor.is_complex():
        return None, f"got {_kind(tensor)}: the result is real"
    try:
        tensor = tensor.detach().cpu()
        return (tensor if dtype is None else tensor.to(dtype)), ""
    except Exception:  # a meta tensor has no values to read
        return None, f"got {_kind(tensor)}, which has no values to read"


def _finite_hint(got: torch.Tensor, want: torch.Tensor) -> str:
    """A hint if ``got`` has NaN or inf where the right answer ``want`` is finite, else ""."""
    if got.is_floating_point() and not bool(torch.isfinite(got).all()) and bool(torch.isfinite(want).all()):
        return "your result contains NaN or inf: look for a division by zero, or a sqrt or log of a negative number"
    return ""


def _as_number(value: object, whole: bool = False) -> tuple[float | int | None, str]:
    """``value`` (a Python, NumPy or one-element tensor number) as a finite float, or an int if ``whole``; or None and
    what is wrong with it ("got a str", "got nan", "got 2.5, not a whole number"). Bools are not numbers here."""
    try:
        value = _dense(value)
    except Exception:
        return None, f"got {_kind(value)}"
    if isinstance(value, torch.Tensor):
        ok = value.numel() == 1 and not value.is_complex() and value.dtype != torch.bool
    elif isinstance(value, np.ndarray | np.generic):
        ok = value.size == 1 and value.dtype.kind in "iuf"
    else:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        return None, f"got {_kind(value)}"
    try:
        number = value.item() if isinstance(value, torch.Tensor | np.ndarray | np.generic) else value
        as_float = float(number)
    except Exception:  # a meta tensor, an int beyond the float range
        return None, f"got {_kind(value)} that cannot be read as a number"
    if not math.isfinite(as_float):
        return None, f"got {as_float}"
    if not whole:
        return as_float, ""
    if not as_float.is_integer():
        return None, f"got {as_float}, not a whole number"
    return int(number), ""


def _as_int_list(value: object) -> tuple[list[int] | None, str]:
    """``value`` (a list, tuple, 1-D array or 1-D tensor of whole numbers) as a list of ints; or None and what is
    wrong with it."""
    try:
        value = _dense(value)
    except Exception:
        return None, f"got {_kind(value)}"
    if isinstance(value, torch.Tensor | np.ndarray):
        if value.ndim != 1:
            return None, f"got {_kind(value)}, not one flat list"
    elif not isinstance(value, list | tuple | range):
        return None, f"got {_kind(value)}"
    out = []
    for item in value:
        number, problem = _as_number(item, whole=True)
        if problem:
            return None, f"entry {len(out)} {problem}"
        out.append(number)
    return out, ""


def _direction_answer(
    prediction: object, key: str, choices: tuple[str, ...], up: str, down: str, diff: float, margin: float
) -> tuple[str, str, str]:
    """Read a predict-then-measure answer ``{key: one of choices}`` (listed in hints in the order of ``choices``) and
    judge the measurement: returns (what was said, what was measured, a hint for a missing or malformed answer, else
    ""). The measured word is ``up`` when ``diff`` > ``margin``, ``down`` when ``diff`` < −``margin``, else the third
    choice."""
    (same,) = [c for c in choices if c not in (up, down)]
    listed = f"{choices[0]!r}, {choices[1]!r} or {choices[2]!r}"
    truth = same if abs(diff) <= margin else (up if diff > 0 else down)
    if prediction is None or (isinstance(prediction, dict) and all(v is None for v in prediction.values())):
        return "", truth, f"not done yet: fill in {listed} BEFORE you run the experiment"
    if not isinstance(prediction, dict):
        return "", truth, f"prediction must be a dict like {{{key!r}: {up!r}}}, got {_kind(prediction)}"
    said = prediction.get(key)
    if not isinstance(said, str) or said not in choices:
        return "", truth, f"give {listed} for {key!r}, got {_kind(said)}"
    return said, truth, ""


_NONE_HINT = "your function returns None: fill in its body and return the result"
_NONE_BODY = "your function returns None: fill in its body"  # the shorter hint of notebooks 02 and 03


def _call(fn: Callable, what: str, *args, none_hint: str = _NONE_HINT):
    """(result, None) or (None, the ❌ line's hint) when the student's function raised or returned None."""
    try:
        out = fn(*(a.clone() if isinstance(a, torch.Tensor) else a for a in args))
    except Exception as e:
        return None, f"your function raised {type(e).__name__}: {e}"
    if out is None:
        return None, none_hint
    return out, None


def _call_tensor(
    fn: Callable, what: str, want: torch.Tensor, wrong_shape: str, *args, none_hint: str = _NONE_HINT
) -> tuple[torch.Tensor, str]:
    """``fn(*args)`` as a tensor of ``want``'s dtype, and a hint if it raised, returned a placeholder, something that
    is not one tensor, NaN or inf, or has the wrong shape (``wrong_shape`` is the hint then, formatted with ``want=``
    and ``got=`` shapes; the tensor is returned with it). The tensor is None when the result could not be read."""
    got, hint = _call(fn, what, *args, none_hint=none_hint)
    if hint:
        return got, hint
    got, problem = _as_tensor(got, want.dtype)
    if problem:
        return None, f"return one tensor, {problem}"
    if got.shape != want.shape:
        return got, wrong_shape.format(want=tuple(want.shape), got=tuple(got.shape))
    hint = _finite_hint(got, want)
    return (None if hint else got), hint
