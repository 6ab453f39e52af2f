"""Every exercise checker answers any wrong answer with one ❌ line and a hint: never an exception, never a ✅.

The checkers are found in the package (every public ``check_*`` of every ``nbNN_*`` module), so a new checker is
covered at once: one missing from the table of right answers below fails ``test_every_checker_has_a_right_answer``.
A checker that takes the student's function gets functions returning the wrong kind of thing (a tuple, a string, a
list, a NumPy array, a tensor of the wrong shape, dtype or device, NaN, None, ...); one that takes a value gets
values of the wrong type (None, a string, a tuple, NaN, inf, a bool, a tensor, ...). The library's own answer still
gets ✅. Only a checker's own arguments raise (a value where a function goes: ``TypeError``), and a
``KeyboardInterrupt`` in the student's code is never swallowed. The notebooks' plotting helpers and widgets refuse
bad arguments by the error convention (``TypeError`` / ``ValueError`` naming the parameter).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffusion_lab.course import exercises
from diffusion_lab.maths.diffusion import ddim_step, ddpm_step, q_sample, x0_from_eps
from diffusion_lab.maths.guidance import rescale_noise_cfg
from diffusion_lab.maths.schedules import inference_timesteps, rescale_zero_terminal_snr, schedule_table, snr

SECONDS_PER_CALL = 2.0  # every checker answers in milliseconds; a slow one would stall a notebook cell


def _discover() -> dict:
    """Every public ``check_*`` function defined in an ``nbNN_*`` module of the exercises package."""
    found = {}
    for info in pkgutil.iter_modules(exercises.__path__):
        if not re.fullmatch(r"nb\d\d_\w+", info.name):
            continue
        module = importlib.import_module(f"{exercises.__name__}.{info.name}")
        for name, obj in vars(module).items():
            if name.startswith("check_") and inspect.isfunction(obj) and obj.__module__ == module.__name__:
                found[name] = obj
    return found


CHECKERS = _discover()
FUNCTION_CHECKERS = sorted(n for n, c in CHECKERS.items() if next(iter(inspect.signature(c).parameters)) == "fn")
VALUE_CHECKERS = sorted(set(CHECKERS) - set(FUNCTION_CHECKERS))


# --- the right answers: the library's functions, or the formulas the checkers' docstrings state ---------------------


def _tokenize(text, vocab, max_length):
    ids = [vocab.index(w) if w in vocab else 1 for w in re.findall(r"[a-z0-9]+", text.lower())]
    ids = [2, *ids[: max_length - 2], 3]
    return ids + [0] * (max_length - len(ids)), [1] * len(ids) + [0] * (max_length - len(ids))


def _attention(q, k, v, mask):
    scores = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    return scores.softmax(-1) @ v


def _refiner_split(ts, frac):
    cut = round(1000 - frac * 1000)
    return [t for t in ts if t >= cut], [t for t in ts if t < cut]


def _joint_text(clip_l, clip_g, t5):
    clip = F.pad(torch.cat([clip_l, clip_g], -1), (0, t5.shape[-1] - clip_l.shape[-1] - clip_g.shape[-1]))
    return torch.cat([clip, t5], 1)


def _prune(w, p):
    flat = w.flatten().clone()
    flat[flat.abs().argsort()[: int(p * w.numel())]] = 0
    return flat.view_as(w)


def _noise_embedding(emb, mean, std, noise, ab, level):
    return (ab[level].sqrt() * (emb - mean) / std + (1 - ab[level]).sqrt() * noise) * std + mean


def _jump(x_s, s, t, noise, ab):
    ratio = (ab[t] / ab[s]).view(-1, *[1] * (x_s.ndim - 1))  # ᾱ_t / ᾱ_s
    return ratio.sqrt() * x_s + (1 - ratio).sqrt() * noise


def _midpoint(x, sigma, sigma_next, denoise):  # EDM App. D.2 with α = ½: the slope halfway, σ_m = σ + h/2
    h = sigma_next - sigma
    x_mid = x + h / 2 * (x - denoise(x, sigma)) / sigma
    return x + h * (x_mid - denoise(x_mid, sigma + h / 2)) / (sigma + h / 2)


def _dpmpp_2m(x_s, x0, x0_prev, a_s, s_s, a_t, s_t, h_prev):  # Lu et al. 2022b Alg. 2 in DDPM's scale
    h = np.log(a_t / s_t) - np.log(a_s / s_s)
    return (s_t / s_s) * x_s + a_t * (1 - np.exp(-h)) * (x0 + 0.5 * (x0 - x0_prev) * h / h_prev)


RIGHT_FUNCTIONS = {
    "check_q_sample": q_sample,
    "check_trailing_timesteps": lambda n, T: inference_timesteps(n, T, "trailing"),
    "check_jump_between": _jump,
    "check_zero_terminal_snr": rescale_zero_terminal_snr,
    "check_decode_prior": lambda vae, n, g: (
        vae.decode(torch.randn(n, vae.config.latent_channels, 7, 7, generator=g)).sample
    ),
    "check_ddpm_loss": lambda model, x0, t, noise, ab: (noise - model(q_sample(x0, t, noise, ab), t)).pow(2).mean(),
    "check_ddpm_step": lambda eps, x_t, ab_t, ab_prev, z: ddpm_step(x0_from_eps(x_t, eps, ab_t), x_t, ab_t, ab_prev, z),
    "check_min_snr_weight": lambda snr, g, p: snr.clamp(max=g) / (snr if p == "epsilon" else snr + 1),
    "check_skip_extra_params": lambda c_h, c_s, c_out: 2 * c_s + 9 * c_s * c_out + (c_h + c_s) * c_out + c_out,
    "check_ddim_step": ddim_step,
    "check_flow_sigma": lambda t: t / (1 - t),
    "check_reparameterize": lambda m, lv, e: m + torch.exp(0.5 * lv) * e,
    "check_gaussian_kl": lambda m, lv: 0.5 * (m**2 + lv.exp() - 1 - lv).sum(dim=(1, 2, 3)),
    "check_scaling_factor": lambda z: 1 / z.std().item(),
    "check_fitted_prior": lambda z, n, g: (
        z.mean(dim=(0, 2, 3))[:, None, None]
        + z.std(dim=(0, 2, 3))[:, None, None] * torch.randn(n, *z.shape[1:], generator=g)
    ),
    "check_matching_timestep": lambda ab, t, k: int((snr(ab) * k**2 - snr(ab)[t]).abs().argmin()),
    "check_tokenize": _tokenize,
    "check_cross_attention": _attention,
    "check_pooled_output": lambda h, ids, eos: h[torch.arange(len(ids)), (ids == eos).int().argmax(1)],
    "check_cross_attention_params": lambda c, d: 2 * c * c + 2 * c * d + c,
    "check_cross_attention_macs": lambda n, m, c, d: 2 * n * c * c + 2 * m * d * c + 2 * n * m * c,
    "check_cfg_combine": lambda c, u, w: u + w * (c - u),
    "check_rescale_noise_cfg": rescale_noise_cfg,
    "check_negative_exponents": lambda w: (w, 1 - w),  # p(z|c)^w · p(z|c_neg)^(1 − w)
    "check_x0_eps_from_v": lambda z, v, a: (a**0.5 * z - (1 - a) ** 0.5 * v, (1 - a) ** 0.5 * z + a**0.5 * v),
    "check_flow_path": lambda x0, e, t: ((1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * e, e - x0),
    "check_time_shift": lambda t, a: a * t / (1 + (a - 1) * t),
    "check_flow_euler_step": lambda x, v, t, t_next: x + (t_next - t) * v,
    "check_velocity_from_eps": lambda x, e, t: (e - x) / (1 - t[:, None, None, None]),
    "check_matched_alpha_bar": lambda t: (1 - t) ** 2 / ((1 - t) ** 2 + t**2),
    "check_midpoint_step": _midpoint,
    "check_dpmpp_2m_step": _dpmpp_2m,
    "check_sdxl_time_ids": lambda o, c, t: torch.tensor([[*o, *c, *t]]),
    "check_refiner_split": _refiner_split,
    "check_sd3_joint_text": _joint_text,
    "check_resolution_shift": lambda side: 3 * side / 1024,
    "check_lora_break_even": lambda d_out, d_in: d_in * d_out / (d_in + d_out),
    "check_concatenated_prior_loss": lambda n, m: (m / n, n / (n + m)),
    "check_magnitude_prune": _prune,
    "check_bitmask_size_ratio": lambda p: 1 - p + 1 / 32,
    "check_int8_error_bound": lambda m, per_channel: m / 254 if per_channel else (m.max() / 254).expand_as(m),
    "check_averaging_gain": lambda n: 10 * np.log10(2 * n / (n + 1)),  # the mean of N upscalings over one
    "check_control_keep": lambda i, n, s, e: float(s <= i / n and (i + 1) / n <= e),
    "check_controlled_steps": lambda n, s, e: sum(s <= i / n and (i + 1) / n <= e for i in range(n)),
    "check_noise_image_embedding": _noise_embedding,
    "check_zero_conv_grads": lambda x, g: (
        torch.einsum("bohw,bihw->oi", g, x),
        g.sum(dim=(0, 2, 3)),
        torch.zeros_like(x),
    ),
}

_WS, _ADHERENCE = [0, 1, 2, 3, 5, 8], [0.1, 0.4, 0.6, 0.7, 0.72, 0.69]
_TOY_AB = schedule_table(200)["squaredcos_cap_v2"]  # notebook 02's toy schedule
RIGHT_VALUES = {  # name: (the right answer, the checker's other arguments)
    "check_beta_zero": (
        {"mean σ": "lower", "KL per pixel": "higher", "RMS of μ": "higher"},
        (
            {"mean σ": 0.04, "KL per pixel": 1.4, "RMS of μ": 2.2},
            {"mean σ": 0.2, "KL per pixel": 0.4, "RMS of μ": 0.9},
            {"mean σ": 0.01, "KL per pixel": 0.01, "RMS of μ": 0.01},
        ),
    ),  # fmt: skip
    "check_prior_prediction": ({"share read confidently": "higher"}, (0.155, 0.064, 0.023)),
    "check_variance_ratio": (float(((1 - _TOY_AB[1]) / (1 - _TOY_AB[0])).sqrt()), ()),
    "check_snr_crossing": (int(torch.nonzero(snr(schedule_table()["squaredcos_cap_v2"]) < 1)[0]), ()),
    "check_timesteps_answer": (inference_timesteps(20, 1000, "trailing").tolist(), (20, "trailing")),
    "check_leading_within_1db": ([50], ()),
    "check_inversion_order": (2, ()),
    "check_padding_prediction": ([1, 2, 3, 4, 5, 6, 7], (True,)),  # "a seven" left-padded to 8: all but position 0
    "check_flow_time": (0.7573, (0.0931,)),  # √(1−ᾱ)/(√ᾱ + √(1−ᾱ)) for ᾱ = 0.0931
    "check_skip_reason": (2, ()),
    "check_best_guidance": (5, (_WS, _ADHERENCE)),
    "check_lora_target_prediction": (1, (0.01, 0.10, 0.01)),  # 1: all attention changed the untrained prompt more
    "check_rescaled_std": (1.16, (0.8, 2.0, 0.7)),  # φ·σ_c + (1 − φ)·σ̃
    "check_img2img_timesteps": (list(range(279, 0, -40)), (list(range(999, 0, -40)), 0.3)),  # the last int(7.5) = 7
    "check_latent_mask_rows": ([0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0], ()),  # rows 14-27 repainted, f = 4
    "check_seam_prediction": ({"rows 12-13": "larger"}, (0.034, 0.050, 0.004)),
    "check_stale_noise_level": (0.1927, (0.96289,)),  # √(1 − ᾱ_39)
    "check_fid_ties": ([2.0, 3.0], ([0, 1, 2, 3, 5], [580.0, 360.0, 270.0, 300.0, 570.0], [0, 20, 0, 20, 30])),
    "check_latent_std_prediction": (1.1, (1.12, 1.35)),  # within 0.1 of the measured 1.12
    "check_shift_prediction": (1.0, ((1 / 3, 1.0, 3.0), [0.327, 0.252, 0.436], [0.023, 0.015, 0.017])),
    "check_crop_prediction": (-3.0, (-3.6, 0.1)),  # within 1 px of the measured −3.6; −3.0 + 0.5 is not
    "check_refiner_frac": (0.72, (list(range(951, 0, -50)), 6)),  # the refiner gets 251 … 1
    "check_low_res_snr_crossing": (181, ()),  # the first s with ᾱ_s/(1 − ᾱ_s) < 10 (the x4 upscaler's schedule)
    "check_half_cosine_level": (664, ()),  # the first k with √ᾱ_k < 1/2 (the cosine schedule)
    "check_hint_init_prediction": ([1, 2, 2, 2], ()),  # a random hint last layer: zero convs at 1, all else at 2
    "check_dial_prediction": (0.76, ({0: 0.97, 500: 0.9, 700: 0.73, 999: 0.08},)),  # between 0.90 and 0.73
    "check_sd3_embeds_shape": ([2, 25, 64], ((2, 25, 64), 9, 16, 56)),  # 2 prompts, 9 + 16 tokens, T5's width
    "check_sampler_prediction": (
        4,
        (("DDIM", "Euler", "Heun", "DPM++ 2M"), [400.0, 420.0, 900.0, 300.0], [[20.0] * 4] * 4, False),
    ),
}


# --- the wrong answers -------------------------------------------------------------------------------------------


def _map(out, leaf):
    """``out`` with every tensor, array and number replaced by ``leaf(it)`` (tuples and lists kept)."""
    if isinstance(out, tuple | list):
        return type(out)(_map(o, leaf) for o in out)
    return leaf(out)


def _nan(x):
    return torch.full_like(torch.as_tensor(x, dtype=torch.float32), float("nan"))


def _raise(error):
    raise error


WRONG_FUNCTIONS = {  # name: a function of the right answer that makes a wrong one
    "tuple": lambda right: lambda *a: (torch.zeros(3), torch.zeros(3)),
    "tuple-of-right-answers": lambda right: lambda *a: (right(*a), right(*a)),
    "right-answer-in-a-1-tuple": lambda right: lambda *a: (right(*a),),
    "right-answer-in-a-list": lambda right: lambda *a: [right(*a)],
    "string": lambda right: lambda *a: "x_t",
    "numeric-string": lambda right: lambda *a: "1",
    "list": lambda right: lambda *a: [1.0, 2.0, 3.0],
    "ndarray": lambda right: lambda *a: np.zeros((2, 3)),
    "object-array": lambda right: lambda *a: np.array([None, "a"], dtype=object),
    "wrong-shape": lambda right: lambda *a: torch.zeros(7, 5),
    "int64-wrong-shape": lambda right: lambda *a: torch.ones(7, 5, dtype=torch.int64),
    "int64-zeros-like": lambda right: lambda *a: _map(right(*a), lambda x: torch.zeros_like(torch.as_tensor(x),
                                                                                              dtype=torch.int64)),
    "nan-like": lambda right: lambda *a: _map(right(*a), _nan),
    "inf-like": lambda right: lambda *a: _map(right(*a), lambda x: _nan(x).fill_(float("inf"))),
    "nan-number": lambda right: lambda *a: float("nan"),
    "complex-like": lambda right: lambda *a: _map(right(*a), lambda x: torch.as_tensor(x).to(torch.complex64) + 1j),
    "meta-device": lambda right: lambda *a: _map(right(*a), lambda x: torch.empty_like(torch.as_tensor(x),
                                                                                       device="meta")),
    "nested-tensor": lambda right: lambda *a: torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)], layout=torch.jagged),
    "bool": lambda right: lambda *a: True,
    "bool-tensor": lambda right: lambda *a: torch.ones(3, dtype=torch.bool),
    "huge-int": lambda right: lambda *a: 10**400,
    "negative": lambda right: lambda *a: -1,
    "dict": lambda right: lambda *a: {"x": 1},
    "object": lambda right: lambda *a: object(),
    "generator": lambda right: lambda *a: (x for x in range(3)),
    "the-function-itself": lambda right: lambda *a: right,
    "none": lambda right: lambda *a: None,
    "prints-and-returns-none": lambda right: lambda *a: print("my answer is ..."),
    "raises-ValueError": lambda right: lambda *a: _raise(ValueError("no idea")),
    "raises-multi-line": lambda right: lambda *a: _raise(RuntimeError("line one\nline two")),
    "wrong-signature": lambda right: lambda: 0,
}  # fmt: skip


def _answer_and_time(check, *args):
    start = time.perf_counter()
    result = check(*args)
    elapsed = time.perf_counter() - start
    assert elapsed < SECONDS_PER_CALL, f"{check.__name__} took {elapsed:.1f} s"
    return result


def _assert_rejected(result, capsys, about):
    """False, and the checker's line (the last one printed) is a ❌ with a hint."""
    lines = capsys.readouterr().out.splitlines()
    assert result is False, (about, lines)
    line = next(line for line in reversed(lines) if line.startswith(("✅", "❌")))
    assert line.startswith("❌") and "Hint" in line, (about, lines)


def test_every_checker_has_a_right_answer():
    assert len(CHECKERS) >= 31 and set(CHECKERS) == set(exercises.__all__)
    assert set(FUNCTION_CHECKERS) == set(RIGHT_FUNCTIONS), "add the new checker's right answer to RIGHT_FUNCTIONS"
    assert set(VALUE_CHECKERS) == set(RIGHT_VALUES), "add the new checker's right answer to RIGHT_VALUES"


@pytest.mark.parametrize("name", FUNCTION_CHECKERS)
def test_function_checker_accepts_the_right_answer(name, capsys):
    assert _answer_and_time(CHECKERS[name], RIGHT_FUNCTIONS[name]) is True
    assert capsys.readouterr().out.startswith("✅")


@pytest.mark.parametrize("name", FUNCTION_CHECKERS)
def test_function_checker_rejects_every_wrong_kind_of_result(name, capsys):
    check, right = CHECKERS[name], RIGHT_FUNCTIONS[name]
    for wrong, make in WRONG_FUNCTIONS.items():
        _assert_rejected(_answer_and_time(check, make(right)), capsys, (name, wrong))


def _float_tensors(out, change):
    return _map(out, lambda x: change(x) if isinstance(x, torch.Tensor) and x.is_floating_point() else x)


@pytest.mark.parametrize("name", FUNCTION_CHECKERS)
def test_function_checker_survives_the_right_answer_in_another_form(name, capsys):
    """float64, requires_grad, NumPy and sparse forms of the right answer are right; bfloat16 may be rounded off, but it is a
    ✅ or a ❌ with a hint, never a crash."""
    check, right = CHECKERS[name], RIGHT_FUNCTIONS[name]
    must_pass = {
        "float64": lambda *a: _float_tensors(right(*a), torch.Tensor.double),
        "requires_grad": lambda *a: _float_tensors(right(*a), lambda x: x.detach().clone().requires_grad_()),
        "numpy": lambda *a: _float_tensors(right(*a), lambda x: x.numpy()),
        "sparse": lambda *a: _float_tensors(right(*a), lambda x: x.to_sparse() if x.ndim else x),
    }
    for form, fn in must_pass.items():
        assert _answer_and_time(check, fn) is True, (name, form)
        assert capsys.readouterr().out.startswith("✅"), (name, form)
    result = _answer_and_time(check, lambda *a: _float_tensors(right(*a), lambda x: x.to(torch.bfloat16)))
    line = capsys.readouterr().out
    assert (result is True and line.startswith("✅")) or (result is False and line.startswith("❌") and "Hint" in line)


@pytest.mark.parametrize("name", FUNCTION_CHECKERS)
@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
def test_function_checker_never_swallows_an_interrupt(name, error):
    with pytest.raises(error):
        CHECKERS[name](lambda *a: _raise(error()))


@pytest.mark.parametrize("name", FUNCTION_CHECKERS)
@pytest.mark.parametrize("value", [None, 3, "my_fn", torch.zeros(3)], ids=["None", "int", "str", "tensor"])
def test_function_checker_given_a_value_raises_type_error(name, value):
    """The convention: a checker given something that is not a function says so (the student called it)."""
    with pytest.raises(TypeError, match="pass your function itself"):
        CHECKERS[name](value)


def _wrong_values(right):
    """Values of the wrong type or out of range, and the right answer in a wrong container or type."""
    values = {
        "None": None, "string": "abc", "tuple": (1, 2), "list": [1, 2], "nan": float("nan"), "inf": float("inf"),
        "-inf": float("-inf"), "True": True, "False": False, "np.bool_": np.bool_(True), "tensor": torch.tensor([1.0, 2.0]),
        "nan-tensor": torch.tensor(float("nan")), "negative": -5, "huge": 10**30, "huger-than-float": 10**400,
        "big-float": 1e300, "complex": 1 + 2j, "dict": {"a": 1}, "object": object(), "ndarray": np.array([1, 2]),
        "function": lambda: right, "meta-tensor": torch.empty(3, device="meta"), "bytes": b"5",
        "right-as-string": str(right), "right-in-a-list": [right], "right-in-a-tuple": (right,),
    }  # fmt: skip
    if isinstance(right, list):
        values |= {
            "half-steps": [t + 0.5 for t in right], "with-nan": [*right[:-1], float("nan")],
            "with-inf": [*right[:-1], float("inf")], "with-None": [*right[:-1], None], "bools": [True] * len(right),
            "2-d": [right], "set": set(right), "strings": [str(t) for t in right],
        }  # fmt: skip
    elif isinstance(right, dict):  # a prediction: each key → a word
        values |= {
            "missing-key": dict(list(right.items())[1:]), "None-values": dict.fromkeys(right),
            "numbers": dict.fromkeys(right, 1.0), "upper-case": {k: v.upper() for k, v in right.items()},
            "keys-only": list(right), "values-only": list(right.values()),
        }  # fmt: skip
    else:
        values |= {"plus-a-half": right + 0.5, "as-bool": bool(right)}
    return values


@pytest.mark.parametrize("name", VALUE_CHECKERS)
def test_value_checker_accepts_the_right_answer(name, capsys):
    right, args = RIGHT_VALUES[name]
    assert _answer_and_time(CHECKERS[name], right, *args) is True
    assert capsys.readouterr().out.startswith("✅")


@pytest.mark.parametrize("name", VALUE_CHECKERS)
def test_value_checker_rejects_every_wrong_value(name, capsys):
    right, args = RIGHT_VALUES[name]
    for wrong, value in _wrong_values(right).items():
        _assert_rejected(_answer_and_time(CHECKERS[name], value, *args), capsys, (name, wrong))


# --- a value checker's own arguments (set by the notebook, not the student) follow the error convention -----------


def _best(answer, ws, values):
    return CHECKERS["check_best_guidance"](answer, ws, values)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: _best(5, "0 1 2 3 5 8", _ADHERENCE), TypeError, "guidance_scales must be a list of numbers"),
        (lambda: _best(5, 8, _ADHERENCE), TypeError, "guidance_scales must be a list of numbers"),
        (lambda: _best(5, [0, True, 2, 3, 5, 8], _ADHERENCE), TypeError, r"guidance_scales\[1\] must be a number"),
        (lambda: _best(5, [0, 1, float("inf"), 3, 5, 8], _ADHERENCE), ValueError, r"guidance_scales\[2\] must be fin"),
        (lambda: _best(5, _WS, 0.7), TypeError, "values must be a list of numbers"),
        (lambda: _best(5, _WS, [0.1, "0.4", 0.6, 0.7, 0.72, 0.69]), TypeError, r"values\[1\] must be a number"),
        (lambda: _best(5, _WS, [float("nan")] * 6), ValueError, "values are all NaN"),
        (lambda: CHECKERS["check_timesteps_answer"]([1], True, "trailing"), TypeError, "n must be an integer"),
        (lambda: CHECKERS["check_timesteps_answer"]([1], 20, "trailing", T=0), ValueError, "T must be >= 1"),
        (lambda: CHECKERS["check_snr_crossing"](500, schedule=None), TypeError, "schedule must be one of"),
        (lambda: CHECKERS["check_snr_crossing"](500, schedule="cos"), ValueError, "schedule must be one of"),
    ],
    ids=["ws-str", "ws-int", "ws-bool", "ws-inf", "values-float", "values-str", "values-nan", "n-bool", "T-zero",
         "schedule-None", "schedule-unknown"],
)  # fmt: skip
def test_value_checker_own_arguments_follow_the_error_convention(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_value_checker_own_arguments_accept_numpy_torch_and_unmeasured_values(capsys):
    """NumPy and torch scalars are numbers; a NaN or inf measurement is a scale not measured or diverged."""
    right, (n, spacing) = RIGHT_VALUES["check_timesteps_answer"]
    assert CHECKERS["check_timesteps_answer"](right, np.int64(n), spacing, T=torch.tensor(1000))
    values = [float("nan"), 0.4, float("inf"), 0.7, 0.72, 0.69]  # inf is the best here
    assert _best(2, np.array(_WS), torch.tensor(values, dtype=torch.float64))
    assert _best(5, tuple(np.float32(w) for w in _WS), [0.1, 0.4, float("nan"), 0.7, 0.72, 0.69])
    assert capsys.readouterr().out.count("✅") == 3


# --- the notebooks' plotting helpers and widgets: bad arguments → TypeError / ValueError naming the parameter ----


def _plots_and_widgets_cases():
    from matplotlib.figure import Figure

    from diffusion_lab.course import plots, widgets

    x, nan = torch.zeros(2, 1, 8, 8), float("nan")
    digits, one = torch.zeros(2, 1, 28, 28), torch.zeros(1, 1, 28, 28)
    return [
        ("LossPlot-every-bool", lambda: plots.LossPlot(every=True), TypeError, "every must be an integer"),
        ("LossPlot-every-zero", lambda: plots.LossPlot(every=0), ValueError, "every must be >= 1"),
        ("LossPlot-smooth-float", lambda: plots.LossPlot(smooth=2.5), TypeError, "smooth must be an integer"),
        ("as_image_batch-str", lambda: plots.as_image_batch("img.png"), TypeError, "images must be a list of PIL"),
        ("as_image_batch-None", lambda: plots.as_image_batch(None), TypeError, "images must be a list of PIL"),
        ("as_image_batch-numbers", lambda: plots.as_image_batch([1, 2]), TypeError, "images must be a list of PIL"),
        ("as_image_batch-empty", lambda: plots.as_image_batch([]), ValueError, "images is an empty list"),
        ("as_image_batch-2d", lambda: plots.as_image_batch(np.zeros((8, 8))), ValueError, r"images must be an array"),
        ("image_grid-list", lambda: plots.image_grid([0.0]), TypeError, "x must be a torch.Tensor"),
        ("image_grid-empty", lambda: plots.image_grid(torch.zeros(0, 1, 8, 8)), ValueError, "x: expected images"),
        ("image_grid-nrow-bool", lambda: plots.image_grid(x, nrow=True), TypeError, "nrow must be an integer"),
        ("image_grid-nrow-float", lambda: plots.image_grid(x, nrow=2.0), TypeError, "nrow must be an integer"),
        ("image_grid-nrow-zero", lambda: plots.image_grid(x, nrow=0), ValueError, "nrow must be >= 1"),
        ("image_grid-pad-negative", lambda: plots.image_grid(x, pad=-1), ValueError, "pad must be >= 0"),
        ("image_grid-pad_value-nan", lambda: plots.image_grid(x, pad_value=nan), ValueError, "pad_value must be fin"),
        ("image_grid-pad_value-str", lambda: plots.image_grid(x, pad_value="white"), TypeError, "pad_value must be a"),
        ("show_images-empty", lambda: plots.show_images(torch.zeros(0, 1, 8, 8)), ValueError, "x: expected images"),
        ("show_images-nrow-bool", lambda: plots.show_images(x, nrow=True), TypeError, "nrow must be an integer"),
        ("figure_to_png-str", lambda: plots.figure_to_png("fig"), TypeError, "fig must be a matplotlib figure"),
        ("figure_to_png-dpi-zero", lambda: plots.figure_to_png(Figure(), dpi=0), ValueError, "dpi must be >= 1"),
        ("explorer-x0-nan", lambda: widgets.ForwardProcessExplorer(digits * nan), ValueError, "x0 contains NaN"),
        ("explorer-x0-uint8", lambda: widgets.ForwardProcessExplorer(digits.byte()), ValueError, "x0 must be .* floats"),
        ("explorer-x0-0..255", lambda: widgets.ForwardProcessExplorer(digits + 255), ValueError, "x0 values must be"),
        ("explorer-x0-empty", lambda: widgets.ForwardProcessExplorer(digits[:0]), ValueError, "x0 is an empty batch"),
        ("explorer-t-bool", lambda: widgets.ForwardProcessExplorer(digits, t=True), TypeError, "t must be an integer"),
        ("explorer-seed-bool", lambda: widgets.ForwardProcessExplorer(digits, seed=True), TypeError, "seed must be an"),
        ("explorer-T-bool", lambda: widgets.ForwardProcessExplorer(digits, T=True), TypeError, "T must be an integer"),
        ("sampler-steps-bool", lambda: widgets.SamplerExplorer(None, None, steps=True), TypeError, "steps must be an"),
        ("sampler-eta-nan", lambda: widgets.SamplerExplorer(None, None, eta=nan), ValueError, "eta must be finite"),
        ("sampler-seed-big", lambda: widgets.SamplerExplorer(None, None, seed=2**40), ValueError, "seed must be <="),
        ("sampler-w-nan", lambda: widgets.SamplerExplorer(None, None, guidance_scale=nan), ValueError, "guidance_sc"),
        ("sampler-classes-bool", lambda: widgets.SamplerExplorer(None, None, num_classes=True), TypeError, "num_cla"),
        ("sampler-classes-zero", lambda: widgets.SamplerExplorer(None, None, num_classes=0), ValueError, "num_class"),
        ("guidance-n-bool", lambda: widgets.GuidanceExplorer(None, n=True), TypeError, "n must be an integer"),
        ("guidance-steps-bool", lambda: widgets.GuidanceExplorer(None, steps=True), TypeError, "steps must be an"),
        ("guidance-seed-negative", lambda: widgets.GuidanceExplorer(None, seed=-1), ValueError, "seed must be >= 0"),
        ("guidance-w-nan", lambda: widgets.GuidanceExplorer(None, guidance_scale=nan), ValueError, "guidance_scale"),
        ("guidance-max-inf", lambda: widgets.GuidanceExplorer(None, max_guidance=float("inf")), ValueError, "max_gu"),
        ("guidance-negative-None", lambda: widgets.GuidanceExplorer(None, negative_prompt=None), TypeError, "negati"),
        ("img2img-nan", lambda: widgets.Img2ImgExplorer(None, one * nan), ValueError, "image contains NaN"),
        ("img2img-int", lambda: widgets.Img2ImgExplorer(None, one.long()), ValueError, "image must be .* floats"),
        ("img2img-0..255", lambda: widgets.Img2ImgExplorer(None, one + 255), ValueError, "image values must be"),
        ("img2img-strength-nan", lambda: widgets.Img2ImgExplorer(None, one, strength=nan), ValueError, "strength"),
        ("img2img-strength-bool", lambda: widgets.Img2ImgExplorer(None, one, strength=True), TypeError, "strength"),
        ("img2img-n-bool", lambda: widgets.Img2ImgExplorer(None, one, n=True), TypeError, "n must be an integer"),
        ("img2img-seed-big", lambda: widgets.Img2ImgExplorer(None, one, seed=2**31), ValueError, "seed must be <="),
    ]  # fmt: skip


_PLOTS_AND_WIDGETS_IDS = [
    "LossPlot-every-bool", "LossPlot-every-zero", "LossPlot-smooth-float", "as_image_batch-str", "as_image_batch-None",
    "as_image_batch-numbers", "as_image_batch-empty", "as_image_batch-2d", "image_grid-list", "image_grid-empty",
    "image_grid-nrow-bool", "image_grid-nrow-float", "image_grid-nrow-zero", "image_grid-pad-negative",
    "image_grid-pad_value-nan", "image_grid-pad_value-str", "show_images-empty", "show_images-nrow-bool",
    "figure_to_png-str", "figure_to_png-dpi-zero", "explorer-x0-nan", "explorer-x0-uint8", "explorer-x0-0..255",
    "explorer-x0-empty", "explorer-t-bool", "explorer-seed-bool", "explorer-T-bool", "sampler-steps-bool",
    "sampler-eta-nan", "sampler-seed-big", "sampler-w-nan", "sampler-classes-bool", "sampler-classes-zero",
    "guidance-n-bool", "guidance-steps-bool", "guidance-seed-negative", "guidance-w-nan", "guidance-max-inf",
    "guidance-negative-None", "img2img-nan", "img2img-int", "img2img-0..255", "img2img-strength-nan",
    "img2img-strength-bool", "img2img-n-bool", "img2img-seed-big",
]  # fmt: skip


@pytest.mark.parametrize("name", _PLOTS_AND_WIDGETS_IDS)
def test_plots_and_widgets_refuse_bad_arguments(name):
    call, error, match = {case[0]: case[1:] for case in _plots_and_widgets_cases()}[name]
    with pytest.raises(error, match=match):
        call()


def test_plots_and_widgets_cases_are_all_run():
    assert [case[0] for case in _plots_and_widgets_cases()] == _PLOTS_AND_WIDGETS_IDS


def test_plots_and_widgets_take_numpy_and_torch_scalars():
    """The same value as a Python, NumPy or torch number gives the same widget (the slider holds a Python int)."""
    from diffusion_lab.course import plots, widgets

    assert plots.LossPlot(every=np.int64(10)).every == 10
    x = torch.linspace(-1, 1, 3 * 64).reshape(3, 1, 8, 8)
    assert np.array_equal(plots.image_grid(x, nrow=np.int64(2)), plots.image_grid(x, nrow=2))
    digits = torch.zeros(2, 1, 28, 28)
    ex = widgets.ForwardProcessExplorer(digits, t=torch.tensor(10), seed=np.int64(0))
    assert ex.t.value == 10 and type(ex.t.value) is int
    with pytest.raises(ValueError, match=r"t must be in \[0, 999\]"):
        ex.render(1000, "linear")
    with pytest.raises(TypeError, match="t must be an integer"):
        ex.render(2.5, "linear")
    with pytest.raises(ValueError, match="schedule must be one of"):
        ex.render(10, "cosine")


@pytest.mark.parametrize(
    "name, answer, words",
    [
        ("check_cfg_combine", lambda c, u, w: (u, c), "return one tensor, got a tuple of 2"),
        ("check_cfg_combine", lambda c, u, w: "eps", "return one tensor, got a str"),
        ("check_cfg_combine", lambda c, u, w: torch.full_like(c, float("nan")), "contains NaN or inf"),
        ("check_cfg_combine", lambda c, u, w: (u + w * (c - u)).to(torch.complex64), "complex64 tensor"),
        ("check_ddpm_step", lambda eps, x_t, a, ap, z: torch.zeros(7, 5), "got shape (7, 5)"),
        ("check_scaling_factor", lambda z: float("nan"), "got nan"),  # NaN fails every comparison: it was a ✅
        ("check_control_keep", lambda i, n, s, e: s <= i / n and (i + 1) / n <= e, "got a bool"),
        ("check_tokenize", lambda text, vocab, n: "2 5 3", "got a str"),
        ("check_refiner_split", lambda ts, frac: (ts, None), "refiner: got None"),
    ],
)
def test_hint_says_what_was_returned(name, answer, words, capsys):
    assert CHECKERS[name](answer) is False
    line = capsys.readouterr().out
    assert line.startswith("❌") and words in line, line


@pytest.mark.parametrize(
    "name, answer, args, words",
    [
        ("check_snr_crossing", True, (), "got a bool"),
        ("check_snr_crossing", RIGHT_VALUES["check_snr_crossing"][0] + 0.5, (), "not a whole number"),  # was int()ed
        ("check_timesteps_answer", [t + 0.5 for t in RIGHT_VALUES["check_timesteps_answer"][0]], (20, "trailing"),
         "entry 0 got 999.5, not a whole number"),  # was truncated to the right answer: a ✅
        ("check_best_guidance", "5", (_WS, _ADHERENCE), "got a str"),  # float("5") made it a ✅
        ("check_best_guidance", torch.tensor([5.0, 8.0]), (_WS, _ADHERENCE), "got a float32 tensor of shape (2,)"),
    ],
)  # fmt: skip
def test_value_hint_says_what_was_given(name, answer, args, words, capsys):
    assert CHECKERS[name](answer, *args) is False
    line = capsys.readouterr().out
    assert line.startswith("❌") and words in line, line
