"""Exercise checkers of notebook 07 (tiny Stable Diffusion).

=======================  ============================================================
checker                  the student's function must return
=======================  ============================================================
``check_img2img_start``  t_start = N − int(N·γ) (diffusers' get_timesteps)
``check_latent_mask``    the pixel mask averaged over each f×f cell: (B, 1, H/f, W/f)
``check_inpaint_blend``  z ← (1 − m)·z_known + m·z after each step (m = 1 repaints)
``check_x0_eps_from_v``  (ẑ_0, ε̂) from z_t and a predicted v: √ᾱ z_t − √(1−ᾱ) v, √(1−ᾱ) z_t + √ᾱ v
=======================  ============================================================

Each checker calls the student's function on seeded cases, compares it with the library's reference (or an
independent formula) and prints one ✅/❌ line with a hint naming the usual mistake; an error raised by the student's
code becomes a ❌, and only a checker's own arguments raise (a non-callable ``fn``: ``TypeError``). Shared
machinery: :mod:`diffusion_lab.course.exercises.checking`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from diffusion_lab.course.exercises.checking import (
    _as_number,
    _as_tensor,
    _call,
    _call_tensor,
    _check_callable,
    _finite_hint,
    _report,
)
from diffusion_lab.maths.diffusion import eps_from_v, x0_from_v

__all__ = ["check_img2img_start", "check_latent_mask", "check_inpaint_blend", "check_x0_eps_from_v"]


def _img2img_start(num_inference_steps: int, strength: float) -> int:
    """diffusers' ``get_timesteps``: keep the last int(N·γ) of the N steps, so the loop starts at index N − int(N·γ)."""
    init_steps = min(int(num_inference_steps * strength), num_inference_steps)
    return max(num_inference_steps - init_steps, 0)


def check_img2img_start(fn: Callable[[int, float], int]) -> bool:
    """``fn(num_inference_steps, strength)`` must return t_start, the index of the first of the N inference
    timesteps that img2img runs: N − int(N·γ) (diffusers' ``get_timesteps``; int() truncates)."""
    _check_callable(fn)
    what = "img2img start index"
    cases = [(50, 0.8), (25, 0.3), (25, 0.5), (10, 0.75), (4, 0.6), (20, 0.0), (20, 1.0), (1, 0.5), (30, 0.35)]
    for n, strength in cases:
        want = _img2img_start(n, strength)
        got, hint = _call(fn, what, n, strength)
        if hint:
            return _report(False, what, hint)
        got_f, problem = _as_number(got, whole=True)
        if problem:
            return _report(False, what, f"return one whole number (an index), {problem}")
        if got_f == want:
            continue
        if got_f == round(n * (1 - strength)) or got_f == int(n * (1 - strength)):
            hint = (
                f"for N = {n}, γ = {strength}: diffusers counts the steps to run first, int(N·γ) (truncated), and "
                "starts at N minus that; rounding or truncating N·(1 − γ) differs when N·γ is not a whole number"
            )
        elif got_f == n - want:
            hint = f"for N = {n}, γ = {strength} that is the number of steps run; return where they start: N − int(N·γ)"
        else:
            hint = f"for N = {n}, γ = {strength} the answer is not {got_f}: run int(N·γ) steps, the last ones"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_latent_mask(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> bool:
    """``fn(mask, f)`` must turn a pixel mask (B, 1, H, W) in [0, 1] into the latent mask (B, 1, H/f, W/f) this
    course's pipeline uses: each latent cell gets the mean of its f×f pixels (the share of the cell to repaint)."""
    _check_callable(fn)

    what = "latent mask"
    g = torch.Generator().manual_seed(7)
    box = torch.zeros(2, 1, 28, 28)
    box[0, :, 10:, :] = 1  # a bottom part whose edge cuts through latent cells (f = 4)
    box[1, :, 5:19, 3:13] = 1
    soft = torch.rand(2, 1, 16, 16, generator=g)
    for mask, f in ((box, 4), (soft, 2), (soft, 8)):
        want = F.avg_pool2d(mask, f)
        shape_hint = f"for f = {f} return shape {{want}} (one value per latent cell), not {{got}}"
        got, hint = _call_tensor(fn, what, want, shape_hint, mask, f)
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-6):
            continue
        if torch.allclose(got, mask[..., ::f, ::f]) or torch.allclose(got, F.interpolate(mask, scale_factor=1 / f)):
            hint = (
                "that is nearest sampling (one pixel per cell; diffusers' inpainting pipelines do that): here each "
                "latent cell gets the mean of its f×f pixels, so a cell half inside the mask is repainted by half"
            )
        elif torch.allclose(got, F.max_pool2d(mask, f)):
            hint = "max-pooling repaints every cell the mask touches at all; take the mean of each f×f block"
        else:
            hint = "average each f×f block of pixels: F.avg_pool2d(mask, f) or F.interpolate(..., mode='area')"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_inpaint_blend(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(latents, known, mask)`` must return the inpainting blend after a step: (1 − m)·known + m·latents, where
    ``latents`` is the model's z, ``known`` the image's latents noised to the same timestep and m = 1 repaints."""
    _check_callable(fn)
    what = "inpainting blend"
    g = torch.Generator().manual_seed(11)
    z, known = torch.randn(3, 4, 7, 7, generator=g), torch.randn(3, 4, 7, 7, generator=g)
    binary = torch.zeros(1, 1, 7, 7)
    binary[..., 4:, :] = 1
    soft = torch.rand(3, 1, 7, 7, generator=g)
    for mask in (binary, soft):
        want = (1 - mask) * known + mask * z
        got, hint = _call_tensor(fn, what, want, "return latents of shape {want}, not {got}", z, known, mask)
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-6):
            continue
        if torch.allclose(got, mask * known + (1 - mask) * z, atol=1e-6):
            hint = "the mask is the wrong way round: m = 1 means repaint (take the model's latents), 0 means keep"
        elif torch.allclose(got, z, atol=1e-6) or torch.allclose(got, known, atol=1e-6):
            hint = "return a blend of both: the known latents where m = 0, the model's where m = 1"
        else:
            hint = "blend per position: (1 − m)·known + m·latents (a soft mask mixes the two)"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_x0_eps_from_v(fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> bool:
    """``fn(z_t, v, alpha_bar_t)`` must return the pair (ẑ_0, ε̂) that a v-prediction implies, solved from
    z_t = √ᾱ z_0 + √(1−ᾱ) ε and v = √ᾱ ε − √(1−ᾱ) z_0: ẑ_0 = √ᾱ z_t − √(1−ᾱ) v, ε̂ = √(1−ᾱ) z_t + √ᾱ v
    (Salimans & Ho 2022, Appendix D). ``alpha_bar_t`` is a tensor broadcastable to ``z_t`` (B, 1, 1, 1) or a float."""
    _check_callable(fn)
    what = "ẑ_0 and ε̂ from v"
    g = torch.Generator().manual_seed(13)
    z0, eps = torch.randn(4, 4, 7, 7, generator=g), torch.randn(4, 4, 7, 7, generator=g)
    for ab in (torch.tensor([0.9, 0.5, 0.2, 0.03]).view(4, 1, 1, 1), 0.7):
        z_t = ab**0.5 * z0 + (1 - ab) ** 0.5 * eps  # (4, 4, 7, 7)
        v = ab**0.5 * eps - (1 - ab) ** 0.5 * z0  # (4, 4, 7, 7)
        want_x0, want_eps = x0_from_v(z_t, v, ab), eps_from_v(z_t, v, ab)  # = z0, eps
        got, hint = _call(fn, what, z_t, v, ab)
        if hint:
            return _report(False, what, hint)
        if not isinstance(got, tuple | list) or len(got) != 2:
            got_one, problem = _as_tensor(got, z_t.dtype)
            if not problem and got_one.shape == z_t.shape and torch.allclose(got_one, want_x0, atol=1e-5):
                return _report(False, what, "ẑ_0 is right; return the pair (ẑ_0, ε̂), ε̂ as well")
            return _report(False, what, "return a pair of tensors (ẑ_0, ε̂), each shaped like z_t")
        pair = []
        for name, value in zip(("ẑ_0", "ε̂"), got, strict=True):
            tensor, problem = _as_tensor(value, z_t.dtype)
            if problem:
                return _report(False, what, f"{name}: return a tensor, {problem}")
            if tensor.shape != z_t.shape:
                return _report(
                    False, what, f"{name} must be shaped like z_t {tuple(z_t.shape)}, not {tuple(tensor.shape)}"
                )
            problem = _finite_hint(tensor, want_x0)
            if problem:
                return _report(False, what, f"{name}: {problem}")
            pair.append(tensor)
        x0_hat, eps_hat = pair
        ok_x0, ok_eps = torch.allclose(x0_hat, want_x0, atol=1e-5), torch.allclose(eps_hat, want_eps, atol=1e-5)
        if ok_x0 and ok_eps:
            continue
        a, s = ab**0.5, (1 - ab) ** 0.5
        if torch.allclose(x0_hat, want_eps, atol=1e-5) and torch.allclose(eps_hat, want_x0, atol=1e-5):
            hint = "the two are swapped: return (ẑ_0, ε̂) in that order"
        elif torch.allclose(x0_hat, (z_t - s * v) / a, atol=1e-5):
            hint = (
                "that solves z_t = √ᾱ z_0 + √(1−ᾱ) v, i.e. treats v as the noise; v mixes ε and z_0. Write z_t and v "
                "as a rotation of (z_0, ε) by the angle φ with cos φ = √ᾱ, and rotate back"
            )
        elif torch.allclose(x0_hat, a * z_t + s * v, atol=1e-5) or torch.allclose(eps_hat, s * z_t - a * v, atol=1e-5):
            hint = "a sign: v = √ᾱ ε − √(1−ᾱ) z_0, so ẑ_0 takes −√(1−ᾱ)·v and ε̂ takes +√ᾱ·v"
        elif torch.allclose(x0_hat, ab * z_t - (1 - ab) * v, atol=1e-5):
            hint = "the coefficients are square roots: √ᾱ and √(1−ᾱ), not ᾱ and 1 − ᾱ"
        elif ok_x0:
            hint = "ẑ_0 is right; ε̂ is not: solve for ε the same way (√(1−ᾱ)·z_t plus a multiple of v)"
        elif ok_eps:
            hint = "ε̂ is right; ẑ_0 is not: solve for z_0 the same way (√ᾱ·z_t plus a multiple of v)"
        else:
            hint = "use √ᾱ² + (√(1−ᾱ))² = 1: multiply z_t by √ᾱ and v by √(1−ᾱ) and subtract; the ε terms cancel"
        return _report(False, what, hint)
    return _report(True, what, "")
