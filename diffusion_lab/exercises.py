"""Checks for the notebooks' exercises: each tells the student right or wrong, with a hint when wrong.

Every ``check_*`` function prints one line starting with ✅ or ❌ and returns True or False, so a notebook cell
can also ``assert`` it. They compare the student's answer with the library on several random cases.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from diffusion_lab.diffusion import q_sample
from diffusion_lab.schedules import inference_timesteps, snr
from diffusion_lab.widgets import schedule_table

__all__ = ["check_q_sample", "check_snr_crossing", "check_trailing_timesteps"]


def _report(ok: bool, what: str, hint: str) -> bool:
    print(f"✅ {what}: correct" if ok else f"❌ {what}: not yet. Hint: {hint}")
    return ok


def check_q_sample(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(x0, t, noise, alphas_cumprod)`` must return x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·noise for t of shape (B,)."""
    g = torch.Generator().manual_seed(123)
    ab = schedule_table()["linear"]
    try:
        for shape in [(4, 1, 28, 28), (3, 2)]:
            x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
            t = torch.randint(0, 1000, (shape[0],), generator=g)
            got = fn(x0, t, noise, ab)
            want = q_sample(x0, t, noise, ab)
            if got is None:
                return _report(False, "q_sample", "your function returns None: fill in its body and return x_t")
            if not isinstance(got, torch.Tensor) or got.shape != want.shape:
                return _report(
                    False,
                    "q_sample",
                    f"return a tensor of shape {tuple(want.shape)} (one ᾱ per sample: "
                    "index alphas_cumprod[t] and reshape it to (B, 1, 1, 1))",
                )
            if not torch.allclose(got, want, atol=1e-5):
                return _report(
                    False,
                    "q_sample",
                    "x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·noise; square roots of ᾱ, "
                    "not of β, and each sample uses its own t",
                )
    except Exception as e:  # the student's code raised: say so instead of failing the whole notebook
        return _report(False, "q_sample", f"your function raised {type(e).__name__}: {e}")
    return _report(True, "q_sample", "")


def check_snr_crossing(t_answer: int | None, schedule: str = "squaredcos_cap_v2") -> bool:
    """The first t at which SNR_t = ᾱ_t/(1−ᾱ_t) drops below 1 (0 dB) for ``schedule``."""
    want = int(torch.nonzero(snr(schedule_table()[schedule]) < 1)[0])
    if t_answer is None:
        return _report(False, f"0 dB crossing of {schedule}", "set answer to an integer t")
    return _report(
        int(t_answer) == want,
        f"0 dB crossing of {schedule}",
        "find the first index where snr(alphas_cumprod) < 1, e.g. with torch.nonzero(...)[0]",
    )


def check_trailing_timesteps(fn: Callable[[int, int], np.ndarray]) -> bool:
    """``fn(n, T)`` must return the ``trailing`` timesteps: round(T − k·T/n) − 1 for k = 0..n−1."""
    try:
        for n, T in [(1, 1000), (4, 1000), (7, 1000), (50, 1000), (3, 10)]:
            out = fn(n, T)
            if out is None:
                return _report(False, "trailing spacing", "your function returns None: fill in its body")
            got = np.asarray(out).astype(np.int64).tolist()
            if got != inference_timesteps(n, T, "trailing").tolist():
                return _report(
                    False,
                    "trailing spacing",
                    f"for n={n}, T={T} expected the list to start at T−1 and step down by T/n, rounded",
                )
    except Exception as e:
        return _report(False, "trailing spacing", f"your function raised {type(e).__name__}: {e}")
    return _report(True, "trailing spacing", "")
