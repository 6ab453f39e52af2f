"""Exercise checkers of notebook 15 (ControlNet).

===========================  ==========================================================================================
checker                      the student's function must return
===========================  ==========================================================================================
``check_control_keep``       1 when i/n ≥ start and (i + 1)/n ≤ end, else 0 (diffusers' controlnet_keep)
``check_zero_conv_grads``    the gradients (dW, db, dx) of a 1×1 zero convolution at initialisation (W = 0, b = 0)
``check_controlled_steps``   the number of steps of n that the window [start, end] controls, as a closed form
``check_hint_init_prediction`` (a value) the first optimiser step that moves each part of a ControlNet whose hint
                             network's last layer starts random instead of zero
===========================  ==========================================================================================

Each checker calls the student's function on seeded cases, compares it with the library's reference (or autograd)
and prints one ✅/❌ line with a hint naming the usual mistake; an error raised by the student's code becomes a ❌, and
only a checker's own arguments raise (a non-callable ``fn``: ``TypeError``). Shared machinery:
:mod:`diffusion_lab.course.exercises.checking`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffusion_lab.course.exercises.checking import (
    _as_int_list,
    _as_number,
    _as_tensor,
    _call,
    _check_callable,
    _report,
)

__all__ = ["check_control_keep", "check_controlled_steps", "check_hint_init_prediction", "check_zero_conv_grads"]


def _control_keep(i: int, n: int, start: float, end: float) -> float:
    return 1.0 - float(i / n < start or (i + 1) / n > end)


def check_control_keep(fn: Callable[[int, int, float, float], float]) -> bool:
    """``fn(i, n, start, end)`` must return 1.0 when step i (0-based, of n) lies inside the window
    [start, end] of the sampling run and 0.0 otherwise — diffusers' rule for ``control_guidance_start/end``: the
    control is off when i/n < start or (i + 1)/n > end. The ControlNet's residuals are multiplied by it."""
    _check_callable(fn)
    what = "the control-guidance window"
    for n, start, end in ((10, 0.0, 1.0), (10, 0.0, 0.5), (8, 0.25, 1.0), (20, 0.1, 0.75), (7, 0.3, 0.6)):
        got = []
        for i in range(n):
            out, hint = _call(fn, what, i, n, start, end)
            if hint:
                return _report(False, what, hint)
            number, problem = _as_number(out)
            if problem:
                return _report(False, what, f"return a number (1.0 or 0.0), {problem}")
            got.append(number)
        want = [_control_keep(i, n, start, end) for i in range(n)]
        if got == want:
            continue
        if got == [1.0 - float(i / n < start or i / n > end) for i in range(n)]:
            hint = "step i of n covers [i/n, (i + 1)/n]: it must end by `end`, so the test is (i + 1)/n > end"
        else:
            i = next(k for k in range(n) if got[k] != want[k])
            hint = f"step {i} of {n} with the window [{start}, {end}]: expected {want[i]}, got {got[i]}"
        return _report(False, what, hint)
    return _report(True, what, "")


def _autograd_zero_conv(x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dW, db, dx) of L = Σ g·conv1x1(x; W = 0, b = 0), by autograd."""
    conv = torch.nn.Conv2d(x.shape[1], g.shape[1], kernel_size=1, dtype=x.dtype)
    torch.nn.init.zeros_(conv.weight)
    torch.nn.init.zeros_(conv.bias)
    x = x.clone().requires_grad_(True)
    (conv(x) * g).sum().backward()
    return conv.weight.grad[:, :, 0, 0], conv.bias.grad, x.grad


def check_zero_conv_grads(fn: Callable[..., tuple]) -> bool:
    """``fn(x, g)`` with the input x (B, C_in, H, W) of a 1×1 zero convolution y = W x + b (W: (C_out, C_in), b: (C_out,),
    both 0) and the upstream gradient g = ∂L/∂y (B, C_out, H, W) must return (dW (C_out, C_in), db (C_out,),
    dx (B, C_in, H, W)): dW = Σ_{b,h,w} g xᵀ, db = Σ_{b,h,w} g, dx = Wᵀ g = 0."""
    _check_callable(fn)
    what = "the zero convolution's gradients at initialisation"
    gen = torch.Generator().manual_seed(46)
    for b, c_in, c_out, h in ((2, 3, 4, 5), (1, 6, 6, 3), (3, 2, 5, 4)):
        x = torch.randn(b, c_in, h, h, generator=gen, dtype=torch.float64)
        g = torch.randn(b, c_out, h, h, generator=gen, dtype=torch.float64)
        want = _autograd_zero_conv(x, g)
        out, hint = _call(fn, what, x, g)
        if hint:
            return _report(False, what, hint)
        if not isinstance(out, tuple | list) or len(out) != 3:
            return _report(False, what, "return three tensors: (dW, db, dx)")
        got = []
        for name, value, ref in zip(("dW", "db", "dx"), out, want, strict=True):
            tensor, problem = _as_tensor(value, torch.float64)
            if problem:
                return _report(False, what, f"{name} must be a tensor: {problem}")
            if tensor.shape != ref.shape:
                if name == "dW" and tensor.shape == ref.T.shape:
                    return _report(
                        False, what, "dW has W's shape (C_out, C_in): sum g[:, o] · x[:, i], not the transpose"
                    )
                return _report(False, what, f"{name} must have shape {tuple(ref.shape)}, not {tuple(tensor.shape)}")
            got.append(tensor)
        dW, db, dx = got
        if not torch.allclose(dx, want[2], atol=1e-6):
            return _report(False, what, "dx = Wᵀ g flows back through the weights, and W = 0 at initialisation")
        if torch.allclose(dW, torch.zeros_like(dW)):
            return _report(False, what, "∂L/∂W = Σ g xᵀ does not contain W: it is not zero although W is")
        if torch.allclose(db, want[1] / (b * h * h), atol=1e-6) or torch.allclose(dW, want[0] / (b * h * h), atol=1e-6):
            return _report(False, what, "L sums over the batch and the pixels: the gradients are sums, not means")
        if not (torch.allclose(dW, want[0], atol=1e-6) and torch.allclose(db, want[1], atol=1e-6)):
            return _report(
                False, what, "dW[o, i] = Σ_{b,h,w} g[b, o, h, w]·x[b, i, h, w] and db[o] = Σ_{b,h,w} g[b, o, h, w]"
            )
    return _report(True, what, "")


def _controlled_steps(n: int, start: float, end: float) -> int:
    return int(sum(_control_keep(i, n, start, end) for i in range(n)))


def check_controlled_steps(fn: Callable[[int, float, float], int]) -> bool:
    """``fn(n, start, end)`` must return how many of n sampling steps diffusers controls with the window
    ``control_guidance_start = start``, ``control_guidance_end = end`` (step i covers [i/n, (i + 1)/n] and is
    controlled when i/n ≥ start and (i + 1)/n ≤ end): ⌊end·n⌋ − ⌈start·n⌉, and 0 when that is negative. Compared
    with the count of diffusers' rule step by step."""
    _check_callable(fn)
    what = "the number of controlled steps"
    # not the exercise's own window (25 steps, [0.1, 0.75]): a hint must not give away the count it asks to predict
    cases = ((20, 0.13, 0.77), (10, 0.0, 0.5), (8, 0.25, 1.0), (7, 0.3, 0.6), (30, 0.05, 0.95), (4, 0.3, 0.4))
    for n, start, end in cases:
        out, hint = _call(fn, what, n, start, end)
        if hint:
            return _report(False, what, hint)
        got, problem = _as_number(out, whole=True)
        if problem:
            return _report(False, what, f"return a whole number of steps, {problem}")
        want = _controlled_steps(n, start, end)
        if got == want:
            continue
        if got < 0:
            hint = f"n = {n}, window [{start}, {end}]: no step fits inside, so the count is 0, not {got}"
        elif got == want + 1:
            hint = (
                f"n = {n}, window [{start}, {end}]: one step too many; a step counts only if its whole interval "
                "[i/n, (i + 1)/n] lies inside the window, so the controlled steps are i = ⌈start·n⌉ … ⌊end·n⌋ − 1"
            )
        else:
            hint = f"n = {n}, window [{start}, {end}]: expected {want} steps, got {got}"
        return _report(False, what, hint)
    return _report(True, what, "")


_PARTS = ("output zero convolutions", "encoder copy", "hint network's last layer", "hint network's earlier layers")


def check_hint_init_prediction(answer) -> bool:
    """``answer``: [first step of the output zero convolutions, of the encoder copy, of the hint network's last layer,
    of its earlier layers], the first AdamW step (1, 2, 3, …) at which each part's weights move when the hint
    network's last layer starts random instead of zero (every output zero convolution still zero). Right:
    [1, 2, 2, 2] — only the output zero convolutions block the first step; the random last layer passes the gradient
    on to the earlier layers at once."""
    what = "the order in which a ControlNet with a random hint layer learns"
    if answer is None:
        return _report(False, what, "set answer to a list of four step numbers, e.g. [1, 1, 1, 1]")
    got, problem = _as_int_list(answer)
    if problem:
        return _report(False, what, f"answer must be a list of four whole step numbers: {problem}")
    if len(got) != 4:
        return _report(False, what, f"give one step for each of the four parts {list(_PARTS)}, got {len(got)}")
    want = [1, 2, 2, 2]
    if got == want:
        return _report(True, what, "")
    if got[0] != 1:
        hint = "∂L/∂W of an output zero convolution is Σ δ xᵀ: it does not contain W, so they move at step 1"
    elif got[1] != 2:
        hint = (
            "the encoder copy sits behind the output zero convolutions: nothing flows back through W = 0 at step 1; "
            "from step 2 (W ≠ 0) it does"
        )
    elif got[2] != 2:
        hint = (
            "the hint's last layer adds to the copy's input: its weights get gradient as soon as the copy's input "
            "does (step 2), whatever their own starting values"
        )
    elif got[3] == 3:
        hint = (
            "the third step came from the zero last layer: ∂L/∂(its input) = Wᵀ δ = 0 while W = 0; a random last "
            "layer passes the gradient on at once"
        )
    else:
        hint = f"expected step {want[3]} for the {_PARTS[3]}, got {got[3]}"
    return _report(False, what, hint)
