"""Checks for the notebooks' exercises: each tells the student right or wrong, with a hint when wrong.

Every ``check_*`` function prints one line starting with ✅ or ❌ and returns True or False, so a notebook cell
can also ``assert`` it. They compare the student's answer with the library on several random cases; an error
raised by the student's code becomes a ❌ with the error message, never a crash of the check.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from diffusion_lab.diffusion import q_sample
from diffusion_lab.schedules import inference_timesteps, snr
from diffusion_lab.widgets import schedule_table

__all__ = [
    "check_q_sample",
    "check_snr_crossing",
    "check_trailing_timesteps",
    "check_ddpm_loss",
    "check_ddpm_step",
    "check_ddim_step",
    "check_timesteps_answer",
    "check_reparameterize",
    "check_gaussian_kl",
    "check_scaling_factor",
]


def _report(ok: bool, what: str, hint: str) -> bool:
    print(f"✅ {what}: correct" if ok else f"❌ {what}: not yet. Hint: {hint}")
    return ok


def check_q_sample(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(x0, t, noise, alphas_cumprod)`` must return x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·noise, one t per sample.

    Tried on MNIST-shaped batches (B, 1, 28, 28) and on 2-D points (B, 2).
    """
    g = torch.Generator().manual_seed(123)
    ab = schedule_table()["linear"]
    for shape in [(4, 1, 28, 28), (3, 2)]:
        x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        t = torch.randint(0, 1000, (shape[0],), generator=g)
        want = q_sample(x0, t, noise, ab)  # before the student's code runs (it might change x0 in place)
        try:
            got = fn(x0.clone(), t.clone(), noise.clone(), ab.clone())
        except Exception as e:  # the student's code raised: say so instead of failing the whole notebook
            return _report(False, "q_sample", f"your function raised {type(e).__name__}: {e}")
        if got is None:
            return _report(False, "q_sample", "your function returns None: fill in its body and return x_t")
        got = torch.as_tensor(got)
        if got.shape != want.shape:
            return _report(
                False,
                "q_sample",
                f"for x0 of shape {shape} return shape {tuple(want.shape)}, not "
                f"{tuple(got.shape)}: reshape ᾱ_t to (B, 1, ..., 1) with x0.ndim "
                "dimensions, e.g. alphas_cumprod[t].reshape(-1, *[1] * (x0.ndim - 1))",
            )
        if not torch.allclose(got.to(want.dtype), want, atol=1e-5):
            return _report(
                False,
                "q_sample",
                "x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·noise; square roots of ᾱ, not of β, and each sample uses its own t",
            )
    return _report(True, "q_sample", "")


def check_snr_crossing(t_answer, schedule: str = "squaredcos_cap_v2") -> bool:
    """The first t at which SNR_t = ᾱ_t/(1−ᾱ_t) drops below 1 (0 dB) for ``schedule``."""
    what = f"0 dB crossing of {schedule}"
    want = int(torch.nonzero(snr(schedule_table()[schedule]) < 1)[0])
    if t_answer is None:
        return _report(False, what, "set answer to an integer t")
    try:
        answer = int(t_answer)  # accepts Python ints, NumPy integers and one-element tensors
    except (TypeError, ValueError, RuntimeError):
        return _report(
            False, what, "answer must be one integer t, e.g. int(torch.nonzero(mask)[0]), not a list or a mask"
        )
    return _report(
        answer == want, what, "find the first index where snr(alphas_cumprod) < 1, e.g. with torch.nonzero(...)[0]"
    )


def check_trailing_timesteps(fn: Callable[[int, int], np.ndarray]) -> bool:
    """``fn(n, T)`` must return the ``trailing`` timesteps: round(T − k·T/n) − 1 for k = 0..n−1 (ties to even)."""
    what = "trailing spacing"
    for n, T in [(1, 1000), (4, 1000), (7, 1000), (50, 1000), (3, 10), (4, 10)]:
        try:
            out = fn(n, T)
        except Exception as e:
            return _report(False, what, f"your function raised {type(e).__name__}: {e}")
        if out is None:
            return _report(False, what, "your function returns None: fill in its body")
        got = np.asarray(out).astype(np.int64).tolist()
        want = inference_timesteps(n, T, "trailing").tolist()
        if got != want:
            return _report(
                False,
                what,
                f"for n={n}, T={T} expected {want}, got {got}: start at T−1, step down by "
                "T/n, round halves to even (Python's round and np.round do)",
            )
    return _report(True, what, "")


def check_ddpm_loss(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(model, x0, t, noise, alphas_cumprod)`` must return mean((ε − model(x_t, t))²) with x_t from q_sample."""
    what = "DDPM loss"
    g = torch.Generator().manual_seed(7)
    ab = schedule_table()["linear"]

    def model(x_t, t):  # a fixed stand-in for a network that depends on x_t and t
        return torch.tanh(x_t) * (t.float().reshape(-1, *[1] * (x_t.ndim - 1)) / 1000)

    x0, noise = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    t = torch.randint(0, 1000, (6,), generator=g)
    want = (noise - model(q_sample(x0, t, noise, ab), t)).pow(2).mean()
    try:
        got = fn(model, x0.clone(), t.clone(), noise.clone(), ab.clone())
    except Exception as e:
        return _report(False, what, f"your function raised {type(e).__name__}: {e}")
    if got is None:
        return _report(False, what, "your function returns None: fill in its body")
    got = torch.as_tensor(got)
    if got.numel() != 1:
        return _report(False, what, f"return one number (the mean over the batch), got shape {tuple(got.shape)}")
    return _report(
        bool(torch.allclose(got.float(), want, atol=1e-6)),
        what,
        "x_t = q_sample(x0, t, noise, ᾱ); the target is the noise; average the squared error",
    )


def check_ddpm_step(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(eps_hat, x_t, ab_t, ab_prev, z)`` must return one DDPM step (fixed_small variance, no clipping)."""
    from diffusion_lab.diffusion import ddpm_step, x0_from_eps

    what = "DDPM step"
    g = torch.Generator().manual_seed(8)
    ab = schedule_table()["linear"]
    for t, tp in [(999, 998), (500, 499), (10, 9)]:
        eps, x_t, z = (torch.randn(3, 2, generator=g) for _ in range(3))
        want = ddpm_step(x0_from_eps(x_t, eps, ab[t]), x_t, ab[t], ab[tp], z)
        try:
            got = fn(eps.clone(), x_t.clone(), ab[t].clone(), ab[tp].clone(), z.clone())
        except Exception as e:
            return _report(False, what, f"your function raised {type(e).__name__}: {e}")
        if got is None:
            return _report(False, what, "your function returns None: fill in its body")
        if not torch.allclose(torch.as_tensor(got).float(), want, atol=1e-4):
            return _report(
                False,
                what,
                f"wrong at t={t}: predict x̂_0 from ε̂ first, then the posterior mean of "
                "DDPM Eq. 7 with β'_t = 1 − ᾱ_t/ᾱ_prev, plus sqrt(β̃)·z",
            )
    return _report(True, what, "")


def check_ddim_step(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(x0_hat, eps_hat, ab_prev, sigma)`` must return √ᾱ'·x̂_0 + √(1 − ᾱ' − σ²)·ε̂ (DDIM Eq. 12, no noise)."""
    from diffusion_lab.diffusion import ddim_sigma, ddim_step

    what = "DDIM step"
    g = torch.Generator().manual_seed(9)
    ab = schedule_table()["linear"]
    for t, tp, eta in [(999, 949, 0.0), (500, 450, 1.0), (100, 50, 0.5)]:
        x0, eps = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
        sigma = ddim_sigma(ab[t], ab[tp], eta)
        want = ddim_step(x0, eps, ab[tp], sigma)
        try:
            got = fn(x0.clone(), eps.clone(), ab[tp].clone(), sigma.clone())
        except Exception as e:
            return _report(False, what, f"your function raised {type(e).__name__}: {e}")
        if got is None:
            return _report(False, what, "your function returns None: fill in its body")
        if not torch.allclose(torch.as_tensor(got).float(), want, atol=1e-5):
            return _report(False, what, f"wrong for eta={eta}: the direction term is sqrt(1 − ᾱ' − σ²)·ε̂")
    return _report(True, what, "")


def check_timesteps_answer(answer, n: int, spacing: str, T: int = 1000) -> bool:
    """``answer`` must be the ``n`` timesteps a sampler with this ``spacing`` visits, in order."""
    what = f"{spacing} timesteps for n={n}"
    if answer is None:
        return _report(False, what, "set answer to a list of integers")
    try:
        got = [int(v) for v in answer]
    except (TypeError, ValueError):
        return _report(False, what, "answer must be a list of integers, e.g. scheduler.timesteps.tolist()")
    return _report(
        got == inference_timesteps(n, T, spacing).tolist(),
        what,
        "call set_timesteps(n) on the scheduler and read .timesteps (in the order it returns them)",
    )


# --------------------------------------------------------------------------------------------- notebook 04


def _call(fn: Callable, what: str, *args):
    """(result, None) or (None, the ❌ line's hint) when the student's function raised or returned None."""
    try:
        out = fn(*(a.clone() if isinstance(a, torch.Tensor) else a for a in args))
    except Exception as e:
        return None, f"your function raised {type(e).__name__}: {e}"
    if out is None:
        return None, "your function returns None: fill in its body and return the result"
    return out, None


def check_reparameterize(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(mean, logvar, eps)`` must return z = μ + σ·ε with σ = exp(½·log σ²) (the reparameterisation trick)."""
    what = "reparameterised sample"
    g = torch.Generator().manual_seed(11)
    mean, logvar, eps = (torch.randn(3, 4, 7, 7, generator=g) for _ in range(3))
    want = mean + torch.exp(0.5 * logvar) * eps
    got, hint = _call(fn, what, mean, logvar, eps)
    if hint:
        return _report(False, what, hint)
    got = torch.as_tensor(got).to(want.dtype)
    if got.shape != want.shape:
        return _report(False, what, f"return one z per input, shape {tuple(want.shape)}, not {tuple(got.shape)}")
    if torch.allclose(got, mean + torch.exp(logvar) * eps, atol=1e-5):
        return _report(False, what, "exp(logvar) is the variance σ²; the sample needs σ = exp(0.5·logvar)")
    return _report(torch.allclose(got.to(want.dtype), want, atol=1e-5), what, "z = mean + exp(0.5·logvar)·eps")


def check_gaussian_kl(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(mean, logvar)`` (B, L, h, w) must return KL(N(μ, σ²) ‖ N(0, 1)) summed over all but the batch: (B,)."""
    what = "KL to the standard normal"
    g = torch.Generator().manual_seed(12)
    mean, logvar = torch.randn(5, 4, 7, 7, generator=g), torch.randn(5, 4, 7, 7, generator=g)
    want = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1)
    got, hint = _call(fn, what, mean, logvar)
    if hint:
        return _report(False, what, hint)
    got = torch.as_tensor(got).to(want.dtype)
    if got.numel() == 1 and torch.allclose(got.reshape(()).to(want.dtype), want.sum(), rtol=1e-4):
        return _report(False, what, "return one KL per sample (shape (B,)): sum over dims 1.., not over the batch")
    if got.shape != want.shape:
        return _report(False, what, f"return shape {tuple(want.shape)} (one KL per sample), not {tuple(got.shape)}")
    return _report(
        torch.allclose(got.to(want.dtype), want, rtol=1e-4, atol=1e-4),
        what,
        "KL = ½·Σ(μ² + σ² − 1 − log σ²) with σ² = exp(logvar), summed over channels and positions",
    )


def check_scaling_factor(fn: Callable[[torch.Tensor], float]) -> bool:
    """``fn(latents)`` must return s = 1 / std(latents) over all numbers, so that s·latents has unit variance."""
    what = "scaling factor"
    g = torch.Generator().manual_seed(13)
    for scale in (0.2, 5.0):
        z = torch.randn(64, 4, 7, 7, generator=g) * scale + 0.3
        want = 1.0 / z.std().item()
        got, hint = _call(fn, what, z)
        if hint:
            return _report(False, what, hint)
        try:
            got = float(got)
        except (TypeError, ValueError, RuntimeError):
            return _report(False, what, "return one number s (a float), e.g. 1 / latents.std().item()")
        if abs(got - z.std().item()) < 1e-3 * z.std().item():
            return _report(False, what, "that is the standard deviation itself; the factor is its inverse, 1 / std")
        if abs(got - want) > 1e-3 * want:
            return _report(False, what, "s = 1 / std over all numbers at once (batch, channels, positions)")
    return _report(True, what, "")
