"""Notebook 08 (rectified flow): its exercise checks accept right answers and explain typical mistakes."""

from __future__ import annotations

import pytest
import torch

from diffusion_lab.course.exercises.nb08_flow import check_flow_euler_step, check_flow_path, check_time_shift


def _path(x0, e, t):  # (1 − t)·x₀ + t·ε, t broadcast over (L, h, w)
    return torch.lerp(x0, e, t.view(-1, 1, 1, 1))


def test_flow_path_check(capsys):
    def finite_difference(x0, e, t):  # v = dx_t/dt by a central difference along the path, exact for a line
        h = 1e-2
        return _path(x0, e, t), (
            _path(x0.double(), e.double(), t.double() + h) - _path(x0.double(), e.double(), t.double() - h)
        ) / (2 * h)

    assert check_flow_path(lambda x0, e, t: (_path(x0, e, t), e - x0))
    assert check_flow_path(lambda x0, e, t: ((1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * e, e - x0))
    assert check_flow_path(finite_difference)
    assert capsys.readouterr().out.count("✅") == 3
    tb = lambda t: t[:, None, None, None]  # noqa: E731
    assert not check_flow_path(lambda x0, e, t: (tb(t) * x0 + (1 - tb(t)) * e, e - x0))
    assert "reversed" in capsys.readouterr().out
    assert not check_flow_path(lambda x0, e, t: ((1 - tb(t)).sqrt() * x0 + tb(t).sqrt() * e, e - x0))
    assert "no square roots" in capsys.readouterr().out
    assert not check_flow_path(lambda x0, e, t: (_path(x0, e, t), x0 - e))
    assert "wrong way" in capsys.readouterr().out
    assert not check_flow_path(lambda x0, e, t: (_path(x0, e, t), tb(t) * (e - x0)))  # v scaled by t
    assert "does not depend on t" in capsys.readouterr().out
    assert not check_flow_path(lambda x0, e, t: _path(x0, e, t))
    assert "two tensors" in capsys.readouterr().out
    assert not check_flow_path(lambda x0, e, t: ((1 - t) * x0 + t * e, e - x0))  # t not broadcast
    assert "raised RuntimeError" in capsys.readouterr().out
    assert not check_flow_path(lambda x0, e, t: (x0.mean(1), e - x0))
    assert "both must have x0's shape" in capsys.readouterr().out
    assert not check_flow_path(lambda x0, e, t: None)
    assert "returns None" in capsys.readouterr().out


def test_time_shift_check(capsys):
    assert check_time_shift(lambda t, a: a * t / (1 + (a - 1) * t))
    assert check_time_shift(lambda t, a: (a * t / (1 + (a - 1) * t)).numpy())  # numpy is fine
    assert check_time_shift(lambda t, a: 1 / (1 + (1 / t - 1) / a))  # the same map on the odds: (1−t)/t ÷ α
    assert capsys.readouterr().out.count("✅") == 3
    assert not check_time_shift(lambda t, a: t / (a - (a - 1) * t))
    assert "inverse shift" in capsys.readouterr().out
    assert not check_time_shift(lambda t, a: a * t)
    assert "leaves [0, 1]" in capsys.readouterr().out
    assert not check_time_shift(lambda t, a: t**a)
    assert "wrong for shift α = 3.0" in capsys.readouterr().out
    assert not check_time_shift(lambda t, a: 1 / 0)
    assert "ZeroDivisionError" in capsys.readouterr().out


def test_flow_euler_step_check(capsys):
    assert check_flow_euler_step(lambda x, v, t, tn: x - (t - tn) * v)
    assert check_flow_euler_step(lambda x, v, t, tn: x + (tn - t) * v)
    assert check_flow_euler_step(lambda x, v, t, tn: torch.add(x.double(), v.double(), alpha=tn - t).numpy())
    assert capsys.readouterr().out.count("✅") == 3
    assert not check_flow_euler_step(lambda x, v, t, tn: x + (t - tn) * v)
    assert "wrong way" in capsys.readouterr().out
    assert not check_flow_euler_step(lambda x, v, t, tn: x - v)  # a full unit step
    assert "wrong from t = 1.0 to 0.75" in capsys.readouterr().out
    assert not check_flow_euler_step(lambda x, v, t, tn: x + tn * v)  # t_next instead of the step
    assert "wrong from t = 1.0 to 0.75" in capsys.readouterr().out
    assert not check_flow_euler_step(lambda x, v, t, tn: (x + (tn - t) * v).mean(0))
    assert "shape" in capsys.readouterr().out


# --- notebooks 10 and 11 (SDXL, SD3) ----------------------------------------------------------------------------


def test_sdxl_time_ids_check(capsys):
    import torch

    from diffusion_lab.course.exercises.nb10_sdxl import check_sdxl_time_ids

    assert check_sdxl_time_ids(lambda o, c, t: torch.tensor([[*o, *c, *t]]))
    assert check_sdxl_time_ids(lambda o, c, t: torch.tensor([list(o + c + t)], dtype=torch.float64))
    assert capsys.readouterr().out.count("✅") == 2
    assert not check_sdxl_time_ids(lambda o, c, t: torch.tensor([[*t, *c, *o]]))
    assert "original_size comes first" in capsys.readouterr().out
    assert not check_sdxl_time_ids(lambda o, c, t: torch.tensor([*o, *c, *t]))
    assert "one row" in capsys.readouterr().out
    assert not check_sdxl_time_ids(lambda o, c, t: torch.tensor([[*o[::-1], *c[::-1], *t[::-1]]]))
    assert "do not swap" in capsys.readouterr().out
    assert not check_sdxl_time_ids(lambda o, c, t: torch.tensor([[*o, *t, *c]]))  # crop and target swapped
    assert "concatenate the three pairs in order" in capsys.readouterr().out
    assert not check_sdxl_time_ids(lambda o, c, t: None)
    assert "returns None" in capsys.readouterr().out


def test_refiner_split_check(capsys):
    from diffusion_lab.course.exercises.nb10_sdxl import check_refiner_split

    def right(ts, frac):
        cut = round(1000 - frac * 1000)
        return [t for t in ts if t >= cut], [t for t in ts if t < cut]

    def by_index(ts, frac):  # diffusers' counting: how many timesteps are ≥ the cutoff, then slice there
        import bisect

        ascending = ts[::-1]
        k = len(ts) - bisect.bisect_left(ascending, int(round(1000 * (1 - frac))))
        return ts[:k], ts[k:]

    assert check_refiner_split(right)
    assert check_refiner_split(by_index)
    assert capsys.readouterr().out.count("✅") == 2
    assert not check_refiner_split(lambda ts, f: right(ts, 1 - f))
    assert "share of the *noise* range" in capsys.readouterr().out
    assert not check_refiner_split(lambda ts, f: (ts[: round(f * len(ts))], ts[round(f * len(ts)) :]))
    assert "not by step count" in capsys.readouterr().out
    assert not check_refiner_split(lambda ts, f: ts)
    assert "return two lists" in capsys.readouterr().out
    assert not check_refiner_split(lambda ts, f: right(ts, f - 0.1))
    assert "with 10 steps and frac 0.8: base = timesteps ≥ round(1000 − frac·1000)" in capsys.readouterr().out
    assert not check_refiner_split(lambda ts, f: (ts[: int(f * len(ts))], ts[int(f * len(ts)) :]))  # by count, int
    assert "not by step count" in capsys.readouterr().out
    strict = round(1000 - 0.8 * 1000)  # ">" instead of "≥": wrong exactly when the cutoff is one of the timesteps

    def greater(ts, f):
        cut = round(1000 - f * 1000)
        return [t for t in ts if t > cut], [t for t in ts if t <= cut]

    assert strict == 200 and not check_refiner_split(greater)
    assert "the cutoff timestep itself belongs to the base" in capsys.readouterr().out


def test_sd3_joint_text_check(capsys):
    import torch

    from diffusion_lab.course.exercises.nb11_sd3 import check_sd3_joint_text

    def right(l, g, t5):
        clip = torch.nn.functional.pad(torch.cat([l, g], -1), (0, t5.shape[-1] - l.shape[-1] - g.shape[-1]))
        return torch.cat([clip, t5], 1)

    def filled(l, g, t5):  # an empty (B, 77 + S, D_T5) tensor, filled piece by piece
        out = torch.zeros(l.shape[0], 77 + t5.shape[1], t5.shape[2])
        out[:, :77, : l.shape[-1]] = l
        out[:, :77, l.shape[-1] : l.shape[-1] + g.shape[-1]] = g
        out[:, 77:] = t5
        return out

    assert check_sd3_joint_text(right)
    assert check_sd3_joint_text(filled)
    assert capsys.readouterr().out.count("✅") == 2
    assert not check_sd3_joint_text(lambda l, g, t5: right(l, g, t5).flip(1))
    assert "zero-padded to T5's width" in capsys.readouterr().out
    assert not check_sd3_joint_text(lambda l, g, t5: torch.cat([t5, right(l, g, t5)[:, :77]], 1))
    assert "CLIP tokens come first" in capsys.readouterr().out
    assert not check_sd3_joint_text(lambda l, g, t5: right(g, l, t5))
    assert "CLIP-L's features come before" in capsys.readouterr().out
    assert not check_sd3_joint_text(lambda l, g, t5: torch.cat([l, g], -1))
    assert "(B, 77 + S, D_T5)" in capsys.readouterr().out
    assert not check_sd3_joint_text(  # the zeros first, CLIP's features after them
        lambda l, g, t5: torch.cat(
            [torch.nn.functional.pad(torch.cat([l, g], -1), (t5.shape[-1] - l.shape[-1] - g.shape[-1], 0)), t5], 1
        )
    )
    assert "pad on the right" in capsys.readouterr().out


def test_sd3_embeds_shape_check(capsys):
    import torch

    from diffusion_lab.course.exercises.nb11_sd3 import check_sd3_embeds_shape

    args = ((2, 25, 64), 9, 16, 56)  # the stand-in: 2 prompts, CLIP's 9 tokens + 16 T5 tokens, T5's 64 features
    assert check_sd3_embeds_shape((2, 25, 64), *args)
    assert check_sd3_embeds_shape([2, 25, 64], *args)
    assert check_sd3_embeds_shape(torch.Size([2, 25, 64]), torch.Size([2, 25, 64]), 9, 16, 56)
    assert capsys.readouterr().out.count("✅") == 3
    for wrong, words in (((1, 25, 64), "the batch"), ((2, 16, 64), "both windows count"),
                         ((2, 9, 64), "both windows count"), ((2, 41, 64), "max_sequence_length tokens"),
                         ((2, 25, 56), "zero-padded to T5's width"), ((2, 25, 120), "the width the transformer reads"),
                         (None, "BEFORE"), ((2, 25), "three whole numbers"), ((2, 25.5, 64), "three whole numbers"),
                         ("(2, 25, 64)", "three whole numbers")):  # fmt: skip
        assert not check_sd3_embeds_shape(wrong, *args)
        assert words in capsys.readouterr().out, wrong
    with pytest.raises(ValueError, match="measured_shape"):
        check_sd3_embeds_shape((2, 25, 64), (2, 25), 9, 16, 56)


def test_crop_prediction_check_rows_and_columns(capsys):
    from diffusion_lab.course.exercises.nb10_sdxl import check_crop_prediction

    measured, se = (-3.7, 0.1), (0.05, 0.04)  # crop (4, 0): the rows move up, the columns stay
    assert check_crop_prediction((-4, 0), measured, se)
    assert check_crop_prediction([-3.6, 0.5], measured, se)
    assert capsys.readouterr().out.count("✅") == 2
    for wrong, words in (((4, 0), "wrong direction"), ((0, 0), "learned the crop"), ((-8, 0), "multiply it"),
                         ((-4, -4), "columns"), (-4, "(rows, columns) pair"), ((-4, 0, 0), "(rows, columns) pair"),
                         ((-4, "0"), "(rows, columns) pair"), ((-4, float("nan")), "(rows, columns) pair"),
                         (None, "BEFORE")):  # fmt: skip
        assert not check_crop_prediction(wrong, measured, se)
        assert words in capsys.readouterr().out, wrong
    assert "§3" in (check_crop_prediction((0, 0), measured, se), capsys.readouterr().out)[1]
    with pytest.raises(ValueError, match="standard_error"):
        check_crop_prediction((-4, 0), measured, (0.05,))


def test_crop_prediction_check(capsys):
    from diffusion_lab.course.exercises.nb10_sdxl import check_crop_prediction

    assert check_crop_prediction(-4, -3.6, 0.1)  # SDXL's meaning, −1 px per unit of crop: within 1 px
    assert check_crop_prediction(-3.6, -3.6, 0.1)
    assert check_crop_prediction(-2.0, -3.6, 0.6)  # a noisy measurement widens the margin to 3 standard errors
    assert capsys.readouterr().out.count("✅") == 3
    assert not check_crop_prediction(4, -3.6, 0.1)
    assert "wrong direction" in capsys.readouterr().out
    assert not check_crop_prediction(0, -3.6, 0.1)
    assert "learned the crop" in capsys.readouterr().out
    assert not check_crop_prediction(-8, -3.6, 0.1)
    assert "multiply it by this crop" in capsys.readouterr().out
    assert not check_crop_prediction(None, -3.6, 0.1)
    assert "BEFORE" in capsys.readouterr().out
    assert not check_crop_prediction("-4", -3.6, 0.1)
    assert "one number" in capsys.readouterr().out
    assert not check_crop_prediction([-4], -3.6, 0.1)  # one number, not a list
    assert "one number" in capsys.readouterr().out
    with pytest.raises(ValueError, match="standard_error"):
        check_crop_prediction(-4, -3.6, -1.0)


def test_refiner_frac_check(capsys):
    from diffusion_lab.course.exercises.nb10_sdxl import check_refiner_frac

    schedule = list(range(951, 0, -50))  # the stand-in's 20 steps: 951, 901, …, 1
    for frac in (0.6986, 0.70, 0.72, 0.748, 0.7485):  # cutoff round(1000 − 1000·frac) in 252 … 301: 0.6985 < frac ≤ 0.7485
        assert check_refiner_frac(frac, schedule, 6)
    assert capsys.readouterr().out.count("✅") == 5
    assert not check_refiner_frac(0.6985, schedule, 6)  # round(301.5) = 302 (half to even): the base keeps 301 only
    assert not check_refiner_frac(0.7486, schedule, 6)  # round(251.4) = 251: 251 stays with the base
    capsys.readouterr()
    assert not check_refiner_frac(0.3, schedule, 6)  # 1 − frac: the refiner gets 14
    assert "BASE's share" in capsys.readouterr().out
    assert not check_refiner_frac(0.75, schedule, 6)  # cutoff 250: 251 stays with the base, the refiner gets 5
    assert "one step off" in capsys.readouterr().out
    assert not check_refiner_frac(0.9, schedule, 6)  # the refiner gets 2
    assert "below 1000 − frac·1000" in capsys.readouterr().out
    assert not check_refiner_frac(72, schedule, 6)
    assert "between 0 and 1" in capsys.readouterr().out
    assert not check_refiner_frac(None, schedule, 6)
    assert "BEFORE" in capsys.readouterr().out
    with pytest.raises(ValueError, match="0 < k"):
        check_refiner_frac(0.72, schedule, 20)


def test_resolution_shift_check(capsys):
    from diffusion_lab.course.exercises.nb11_sd3 import check_resolution_shift

    assert check_resolution_shift(lambda side: 3 * side / 1024)
    assert check_resolution_shift(lambda side: 3 * ((side * side) / 1024**2) ** 0.5)
    assert capsys.readouterr().out.count("✅") == 2
    assert not check_resolution_shift(lambda side: 3 * (side / 1024) ** 2)
    assert "not its square" in capsys.readouterr().out
    assert not check_resolution_shift(lambda side: 3 * 1024 / side)
    assert "the other way round" in capsys.readouterr().out
    assert not check_resolution_shift(lambda side: side / 1024)
    assert "which is not 1" in capsys.readouterr().out
    assert not check_resolution_shift(lambda side: 3.0)
    assert "scale SD3's α" in capsys.readouterr().out
    assert not check_resolution_shift(lambda side: None)
    assert "returns None" in capsys.readouterr().out
