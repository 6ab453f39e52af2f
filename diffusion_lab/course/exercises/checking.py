"""Checks for the notebooks' exercises: each tells the student right or wrong, with a hint when wrong.

Every ``check_*`` function prints one line starting with ✅ or ❌ and returns True or False, so a notebook cell
can also ``assert`` it. They compare the student's answer with the library on several random cases; an error
raised by the student's code becomes a ❌ with the error message, never a crash of the check.
"""

from __future__ import annotations

from collections.abc import Callable

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


def _call(fn: Callable, what: str, *args):
    """(result, None) or (None, the ❌ line's hint) when the student's function raised or returned None."""
    try:
        out = fn(*(a.clone() if isinstance(a, torch.Tensor) else a for a in args))
    except Exception as e:
        return None, f"your function raised {type(e).__name__}: {e}"
    if out is None:
        return None, "your function returns None: fill in its body and return the result"
    return out, None


def _call_tensor(fn: Callable, what: str, want: torch.Tensor, wrong_shape: str, *args) -> tuple[torch.Tensor, str]:
    """``fn(*args)`` as a tensor of ``want``'s dtype, and a hint if it raised, returned a placeholder or has the
    wrong shape (``wrong_shape`` is the hint then, formatted with ``want=`` and ``got=`` shapes)."""
    got, hint = _call(fn, what, *args)
    if hint:
        return got, hint
    got = torch.as_tensor(got).to(want.dtype)
    if got.shape != want.shape:
        return got, wrong_shape.format(want=tuple(want.shape), got=tuple(got.shape))
    return got, ""
