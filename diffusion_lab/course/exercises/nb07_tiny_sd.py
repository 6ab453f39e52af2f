"""Exercise checkers of notebook 07 (tiny Stable Diffusion).

===========================  ========================================================================
checker                      the student's answer must be
===========================  ========================================================================
``check_img2img_timesteps``  the timesteps img2img runs: the last int(N·γ) of the schedule, noisiest first
``check_latent_mask_rows``   the latent mask of a mask repainting pixel rows 14-27 (f = 4): [0, 0, 0, ½, 1, 1, 1]
``check_seam_prediction``    a prediction, judged by the measurement: kept rows 12-13's error, mask at 14 vs 16
``check_stale_noise_level``  the noise std left in the kept latents if the blend used t, not t′: √(1 − ᾱ_{τ_{N−1}})
``check_x0_eps_from_v``      (a function) (ẑ_0, ε̂) from z_t and v: √ᾱ z_t − √(1−ᾱ) v, √(1−ᾱ) z_t + √ᾱ v
===========================  ========================================================================

The first four take a value (a prediction or the result of a derivation) and the measured or scheduled numbers it
is judged against; ``check_x0_eps_from_v`` calls the student's function on seeded cases and compares it with the
library. Each prints one ✅/❌ line with a hint naming the usual mistake; a wrong or malformed answer is a ❌, and
only a checker's own arguments raise (``TypeError`` / ``ValueError``). Shared machinery:
:mod:`diffusion_lab.course.exercises.checking`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from diffusion_lab.course.exercises.checking import (
    _as_int_list,
    _as_number,
    _as_tensor,
    _call,
    _check_callable,
    _direction_answer,
    _finite_hint,
    _report,
)
from diffusion_lab.maths.diffusion import eps_from_v, x0_from_v
from diffusion_lab.utils.errors import check_number

__all__ = [
    "check_img2img_timesteps",
    "check_latent_mask_rows",
    "check_seam_prediction",
    "check_stale_noise_level",
    "check_x0_eps_from_v",
]


IMG2IMG_N, IMG2IMG_STRENGTH = 25, 0.3  # exercise 1's setting
SEAM_KEY = "rows 12-13"  # exercise 2's prediction: the kept pixel rows next to the half-repainted latent row
_DIRECTIONS = ("larger", "same", "smaller")


def check_img2img_timesteps(answer: object, timesteps: object, strength: object) -> bool:
    """``answer`` must be the timesteps img2img runs, in the order it runs them, when ``timesteps`` (the N timesteps
    of the ordinary text-to-image schedule, noisiest first) and ``strength`` γ are given: the last int(N·γ) of them
    (diffusers' ``get_timesteps``; int() truncates)."""
    ts, problem = _as_int_list(timesteps)
    if problem or not ts:
        raise TypeError(f"timesteps must be a non-empty list of whole numbers: {problem or 'got an empty list'}")
    gamma = check_number("strength", strength, minimum=0.0, maximum=1.0)
    n = len(ts)
    k = min(int(n * gamma), n)  # the number of steps that run
    what = f"img2img timesteps (N = {n}, γ = {gamma})"
    if answer is None:
        return _report(False, what, "not done yet: set my_timesteps to the list you predict BEFORE the experiment runs")
    got, problem = _as_int_list(answer)
    if problem:
        return _report(False, what, f"answer with a list of whole numbers (timesteps): {problem}")
    want = ts[n - k :]
    if got == want:
        return _report(True, what, "")
    if sorted(got) == sorted(want):
        hint = "the right timesteps in the wrong order: img2img runs them like text-to-image, from the noisiest down"
    elif k and got == ts[:k]:
        hint = (
            f"those are the first {k} timesteps, the noisiest: img2img skips the beginning of the schedule (the "
            "picture replaces it) and runs what is left"
        )
    elif got == ts[n - k - 1 :] or (k > 1 and got == ts[n - k + 1 :]):
        hint = f"one step too many or too few: N·γ = {n * gamma:g}, and diffusers truncates it with int()"
    elif got == ts[k:]:
        hint = f"that is N − int(N·γ) = {n - k} steps; γ is the share of the schedule that runs, not the share skipped"
    elif not set(got) <= set(ts):
        hint = (
            "img2img uses the ordinary schedule for N steps and only starts late: every timestep it runs is one of "
            "text-to-image's (read their spacing off the table of section 5)"
        )
    else:
        hint = "the steps that run are consecutive timesteps of the schedule; how many is int(N·γ)"
    return _report(False, what, hint)


def check_latent_mask_rows(answer: object) -> bool:
    """``answer`` must be the latent mask, one value per latent row, of a 28×28 pixel mask that repaints rows 14-27
    (f = 4, as the course's pipeline computes it: the mean of each 4×4 block): [0, 0, 0, 0.5, 1, 1, 1]."""
    what = "latent mask for rows 14-27"
    mask = torch.zeros(1, 1, 28, 28)
    mask[..., 14:, :] = 1
    want = F.avg_pool2d(mask, 4)[0, 0, :, 0]  # (7,)
    if answer is None:
        return _report(False, what, "not done yet: set my_rows to seven numbers, one per latent row")
    got, problem = _as_tensor(answer, torch.float32)
    if problem:
        return _report(False, what, f"answer with seven numbers, one per latent row: {problem}")
    if got.shape != want.shape:
        return _report(
            False, what, f"seven numbers, one per latent row (28 pixel rows / f = 4), not shape {tuple(got.shape)}"
        )
    if not bool(torch.isfinite(got).all()):
        return _report(False, what, "the values are shares of a cell: finite numbers in [0, 1]")
    if torch.allclose(got, want):
        return _report(True, what, "")
    if torch.equal(got, F.max_pool2d(mask, 4)[0, 0, :, 0]):
        hint = "latent row 3 is not all repainted: the pipeline averages the 4×4 block, it does not take the maximum"
    elif torch.equal(got, (want > 0.5).float()) or torch.equal(got, mask[0, 0, ::4, 0]):
        hint = "latent row 3 is not all kept: some of the pixel rows it covers are repainted, and the pipeline averages"
    elif torch.allclose(got[[0, 1, 2, 4, 5, 6]], want[[0, 1, 2, 4, 5, 6]]):
        hint = "rows 0-2 and 4-6 are right; for latent row 3 count how many of the pixel rows it covers are repainted"
    else:
        hint = "latent row r covers pixel rows 4r to 4r + 3; each latent value is the share of those rows repainted"
    return _report(False, what, hint)


def check_seam_prediction(prediction: object, error_16: object, error_14: object, se: object) -> bool:
    """``prediction`` (a dict {"rows 12-13": "larger", "same" or "smaller"}) says how the error on the kept pixel rows
    12-13 changes when the mask repaints rows 14-27 (``error_14``) instead of rows 16-27 (``error_16``); ``se`` is the
    standard error of the difference (paired by image): a difference within 2·se is "same"."""
    what = "seam prediction"
    values = []
    for name, value in (("error_16", error_16), ("error_14", error_14), ("se", se)):
        number, problem = _as_number(value)
        if problem:
            raise TypeError(f"{name} must be a finite number: {problem}")
        values.append(number)
    e16, e14, err = values
    if err < 0:
        raise ValueError(f"se must be >= 0, got {err}")
    diff = e14 - e16
    said, truth, hint = _direction_answer(prediction, SEAM_KEY, _DIRECTIONS, "larger", "smaller", diff, 2 * err)
    if hint:
        return _report(False, what, hint)
    if said == truth:
        return _report(True, what, "")
    measured = f"measured {truth}: {e16:.4f} → {e14:.4f} (difference {diff:+.4f} ± {err:.4f})"
    why = {
        "larger": "pixel rows 12-13 are kept, but they lie in latent row 3, which now holds half the model's latents "
        "(0.5·z + 0.5·known): the decoder draws them from a mix",
        "smaller": "moving the seam two rows down the digit changed what the model draws next to them",
        "same": "the difference is within two standard errors: this sample cannot tell them apart",
    }[truth]
    return _report(False, what, f"{measured}; {why}")


def check_stale_noise_level(answer: object, alpha_bar_last: object) -> bool:
    """``answer`` must be the standard deviation of the noise the kept latents would still carry after the loop if
    the inpainting blend pasted the known latents noised to t (the timestep a step starts from) instead of t′: the
    last step starts at τ_{N−1}, so √(1 − ᾱ_{τ_{N−1}}) (``alpha_bar_last``; within 0.01)."""
    ab = check_number("alpha_bar_last", alpha_bar_last, minimum=0.0, maximum=1.0)
    what = "noise left by the stale blend"
    if answer is None:
        return _report(False, what, "not done yet: set my_noise_std to one number BEFORE the experiment runs")
    got, problem = _as_number(answer)
    if problem:
        return _report(False, what, f"answer with one number, a standard deviation: {problem}")
    want = (1 - ab) ** 0.5
    if abs(got - want) <= 0.01:
        return _report(True, what, "")
    near = [
        (0.0, "that is what the right rule leaves: with t′ the last blend pastes z_0 itself. With t, it pastes the "
         "known latents at the noise level the last step starts from"),
        (1 - ab, "that is a variance; give the standard deviation"),
        (ab**0.5, "that is the coefficient of z_0 (the signal), not of ε"),
        (1 - ab**0.5, "that is how much z_0 shrinks; the noise term is separate"),
    ]  # fmt: skip
    for wrong, message in near:
        if abs(got - wrong) <= 0.005:
            return _report(False, what, message)
    return _report(
        False, what, "which timestep does the last step start from, and how much of ε does q_sample put there?"
    )


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
