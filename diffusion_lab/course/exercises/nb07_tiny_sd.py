"""Exercise checkers of notebook 07 (tiny Stable Diffusion).

=======================  ============================================================
checker                  the student's function must return
=======================  ============================================================
``check_img2img_start``  t_start = N − int(N·γ) (diffusers' get_timesteps)
``check_latent_mask``    the pixel mask averaged over each f×f cell: (B, 1, H/f, W/f)
``check_inpaint_blend``  z ← (1 − m)·z_known + m·z after each step (m = 1 repaints)
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

from diffusion_lab.course.exercises.checking import _as_number, _call, _call_tensor, _check_callable, _report

__all__ = ["check_img2img_start", "check_latent_mask", "check_inpaint_blend"]


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
