"""The exercise checks of notebook 01 added for its derivation and prediction exercises: the jump q(x_t | x_s), the
cosine schedule's 0 dB crossing solved by hand, leading vs trailing starts in SD's schedule, and Lin et al.'s
zero-terminal-SNR rescale.

Each check must accept right answers written here independently of the library (a loop, NumPy, float64) and reject
the plausible wrong ones with a hint that names the mistake. The rescale's reference is diffusers' own function.
"""

from __future__ import annotations

import numpy as np
import torch
from checker_asserts import accepts as _accepts
from checker_asserts import rejects as _rejects
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as diffusers_rescale

from diffusion_lab.course.exercises.nb01_forward_diffusion import (
    check_jump_between,
    check_leading_within_1db,
    check_snr_crossing,
    check_zero_terminal_snr,
)

# --- the jump q(x_t | x_s) ------------------------------------------------------------------------------------------


def _view(x, v):
    return v.reshape(-1, *[1] * (x.ndim - 1))


def jump_vectorised(x_s, s, t, noise, ab):
    ratio = _view(x_s, ab[t] / ab[s])  # ᾱ_t / ᾱ_s
    return ratio.sqrt() * x_s + (1 - ratio).sqrt() * noise


def jump_by_loop(x_s, s, t, noise, ab):
    """The product of the α of the steps s+1..t, one sample at a time, in float64."""
    out = []
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]]).double()
    for i in range(len(x_s)):
        a = 1.0
        for r in range(int(s[i]) + 1, int(t[i]) + 1):
            a *= float(alphas[r])
        out.append(a**0.5 * x_s[i].double() + (1 - a) ** 0.5 * noise[i].double())
    return torch.stack(out)


def test_jump_accepts_right_answers(capsys):
    numpy_version = lambda x_s, s, t, noise, ab: jump_vectorised(  # noqa: E731
        torch.from_numpy(x_s.numpy()), s, t, torch.from_numpy(noise.numpy()), ab
    ).numpy()
    _accepts(check_jump_between, jump_vectorised, jump_by_loop, numpy_version, capsys=capsys)


def test_jump_rejects_plausible_wrong_answers(capsys):
    def as_q_sample(x_s, s, t, noise, ab):  # treats x_s as clean data
        a = _view(x_s, ab[t])
        return a.sqrt() * x_s + (1 - a).sqrt() * noise

    def full_noise(x_s, s, t, noise, ab):  # right mean, the whole 1 − ᾱ_t of noise
        return _view(x_s, ab[t] / ab[s]).sqrt() * x_s + _view(x_s, 1 - ab[t]).sqrt() * noise

    def difference(x_s, s, t, noise, ab):  # ᾱ_s − ᾱ_t as the variance
        return _view(x_s, ab[t] / ab[s]).sqrt() * x_s + _view(x_s, ab[s] - ab[t]).sqrt() * noise

    def off_by_one(x_s, s, t, noise, ab):  # counts step s as well
        ratio = _view(x_s, ab[t] / ab[(s - 1).clamp(min=0)])
        return ratio.sqrt() * x_s + (1 - ratio).sqrt() * noise

    _rejects(check_jump_between, as_q_sample, "treats x_s as clean data", capsys=capsys)
    _rejects(check_jump_between, full_noise, "noise variance", capsys=capsys)
    _rejects(check_jump_between, difference, "noise variance", capsys=capsys)
    _rejects(check_jump_between, off_by_one, "ᾱ_t/ᾱ_s", capsys=capsys)
    _rejects(check_jump_between, lambda x_s, s, t, noise, ab: x_s[:1], "return shape", capsys=capsys)
    _rejects(check_jump_between, lambda x_s, s, t, noise, ab: None, "returns None", capsys=capsys)


# --- Lin et al. 2024, Algorithm 1 -----------------------------------------------------------------------------------


def rescale_numpy(betas):
    """Algorithm 1 written out in NumPy float64."""
    ab = np.cumprod(1 - np.asarray(betas, dtype=np.float64))
    root = np.sqrt(ab)
    root = (root - root[-1]) * root[0] / (root[0] - root[-1])
    ab = root**2
    return 1 - np.concatenate([ab[:1], ab[1:] / ab[:-1]])


def test_zero_terminal_snr_accepts_right_answers(capsys):
    _accepts(check_zero_terminal_snr, diffusers_rescale, rescale_numpy,
             lambda b: torch.from_numpy(rescale_numpy(b.numpy())), capsys=capsys)  # fmt: skip


def test_zero_terminal_snr_rejects_plausible_wrong_answers(capsys):
    def only_last(betas):  # zero the last ᾱ and nothing else
        out = betas.clone()
        out[-1] = 1.0
        return out

    def shift_only(betas):  # no scaling back: the first √ᾱ changes
        root = torch.cumprod(1 - betas.double(), 0).sqrt()
        ab = (root - root[-1]) ** 2
        return 1 - torch.cat([ab[:1], ab[1:] / ab[:-1]])

    def on_alphas_bar(betas):  # Algorithm 1 applied to ᾱ instead of √ᾱ
        ab = torch.cumprod(1 - betas.double(), 0)
        ab = (ab - ab[-1]) * ab[0] / (ab[0] - ab[-1])
        return 1 - torch.cat([ab[:1], ab[1:] / ab[:-1]])

    def returns_alphas_bar(betas):
        return torch.cumprod(1 - diffusers_rescale(betas.clone()), 0)

    _rejects(check_zero_terminal_snr, only_last, "only zeroed the last value", "EVERY", capsys=capsys)
    _rejects(check_zero_terminal_snr, shift_only, "first √ᾱ must be unchanged", capsys=capsys)
    _rejects(check_zero_terminal_snr, on_alphas_bar, "not ᾱ itself", capsys=capsys)
    _rejects(check_zero_terminal_snr, returns_alphas_bar, "you returned ᾱ", capsys=capsys)
    _rejects(check_zero_terminal_snr, lambda b: b, "last ᾱ must be exactly 0", capsys=capsys)  # unchanged
    _rejects(check_zero_terminal_snr, lambda b: b[:-1], "shape", capsys=capsys)
    _rejects(check_zero_terminal_snr, lambda b: None, "returns None", capsys=capsys)
    _rejects(check_zero_terminal_snr, lambda b: 1 / 0, "raised ZeroDivisionError", capsys=capsys)


# --- the cosine schedule's 0 dB crossing, solved by hand ------------------------------------------------------------


def _crossing_by_hand() -> float:
    """t + 1 = T·u* with f(u*)/f(0) = 1/2, f(u) = cos²((u + s)/(1 + s)·π/2): the crossing in the notebook's indexing."""
    s, T = 0.008, 1000
    theta0 = s / (1 + s) * np.pi / 2
    theta = np.arccos(np.cos(theta0) / np.sqrt(2))  # cos²θ = cos²θ0 / 2
    u_star = theta * 2 / np.pi * (1 + s) - s
    return T * u_star - 1  # the real-valued t at which SNR = 1


def test_snr_crossing_accepts_the_hand_derived_answer(capsys):
    t_real = _crossing_by_hand()
    assert 495.0 < t_real < 495.1  # t + 1 = 496.04
    first = int(np.ceil(t_real))  # the first whole t past the crossing
    assert first == 496
    _accepts(check_snr_crossing, first, np.int64(first), torch.tensor(first), float(first), capsys=capsys)


def test_snr_crossing_rejects_slips_without_giving_the_code(capsys):
    _rejects(check_snr_crossing, 497, "index shift", "(t+1)/T", capsys=capsys)  # t = T·u*, rounded up
    _rejects(check_snr_crossing, 495, "one step early", capsys=capsys)  # t + 1 = T·u*, rounded down
    _rejects(check_snr_crossing, 496.4, "not a whole number", capsys=capsys)
    _rejects(check_snr_crossing, 500, "ᾱ_t < 1/2", capsys=capsys)  # the guess "the middle"
    for answer in (497, 495, 500):
        check_snr_crossing(answer)
        assert "nonzero" not in capsys.readouterr().out  # the hint never gives the one line of code


# --- leading vs trailing: which n start within 1 dB of trailing (SD's schedule) -------------------------------------


def _gaps_independently() -> dict[int, float]:
    """SNR in dB of (n − 1)·⌊1000/n⌋ + 1 minus that of 999, from SD's betas written out in float64."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    ab = np.cumprod(1 - betas)
    snr_db = 10 * np.log10(ab / (1 - ab))
    return {n: snr_db[(n - 1) * (1000 // n) + 1] - snr_db[999] for n in range(1, 51)}


def test_leading_within_1db_accepts_the_measured_answer(capsys):
    gaps = _gaps_independently()
    right = [n for n, gap in gaps.items() if gap < 1.0]
    assert right == [50]  # SD's default step count, and no other n up to 50 (n = 40: 1.2 dB, n = 48: 2.9 dB)
    assert gaps[48] > 2.5 and 1.0 < gaps[40] < 1.5
    _accepts(check_leading_within_1db, right, np.array(right), torch.tensor(right), (50,), [50.0], capsys=capsys)


def test_leading_within_1db_rejects_plausible_wrong_answers(capsys):
    _rejects(check_leading_within_1db, list(range(40, 51)), "n = 40 starts at t = 976", capsys=capsys)  # "monotone"
    _rejects(check_leading_within_1db, [40, 50], "n = 40", capsys=capsys)
    _rejects(check_leading_within_1db, [], "missing", capsys=capsys)  # "leading never gets there"
    _rejects(check_leading_within_1db, [981], "not timesteps", capsys=capsys)  # the timestep, not n
    _rejects(check_leading_within_1db, [50, 50], "", capsys=capsys)
    _rejects(check_leading_within_1db, 50, "flat list", capsys=capsys)
    _rejects(check_leading_within_1db, None, "set answer", capsys=capsys)
