"""Notebook 08 (rectified flow): its exercise checks accept right answers and explain typical mistakes."""

from __future__ import annotations

from diffusion_lab.exercises import check_flow_euler_step, check_flow_path, check_time_shift
from diffusion_lab.flow import flow_euler_step, flow_interpolate, flow_velocity, shift_sigmas


def test_flow_path_check(capsys):
    assert check_flow_path(lambda x0, e, t: (flow_interpolate(x0, e, t), flow_velocity(x0, e)))
    assert check_flow_path(lambda x0, e, t: ((1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * e, e - x0))
    assert capsys.readouterr().out.count("✅") == 2
    tb = lambda t: t[:, None, None, None]  # noqa: E731
    assert not check_flow_path(lambda x0, e, t: (tb(t) * x0 + (1 - tb(t)) * e, e - x0))
    assert "reversed" in capsys.readouterr().out
    assert not check_flow_path(lambda x0, e, t: ((1 - tb(t)).sqrt() * x0 + tb(t).sqrt() * e, e - x0))
    assert "no square roots" in capsys.readouterr().out
    assert not check_flow_path(lambda x0, e, t: (flow_interpolate(x0, e, t), x0 - e))
    assert "wrong way" in capsys.readouterr().out
    assert not check_flow_path(lambda x0, e, t: flow_interpolate(x0, e, t))
    assert "two tensors" in capsys.readouterr().out
    assert not check_flow_path(lambda x0, e, t: ((1 - t) * x0 + t * e, e - x0))  # t not broadcast
    assert not check_flow_path(lambda x0, e, t: None)
    assert "returns None" in capsys.readouterr().out


def test_time_shift_check(capsys):
    assert check_time_shift(lambda t, a: shift_sigmas(t, a))
    assert check_time_shift(lambda t, a: (a * t / (1 + (a - 1) * t)).numpy())  # numpy is fine
    assert capsys.readouterr().out.count("✅") == 2
    assert not check_time_shift(lambda t, a: t / (a - (a - 1) * t))
    assert "inverse shift" in capsys.readouterr().out
    assert not check_time_shift(lambda t, a: a * t)
    assert "leaves [0, 1]" in capsys.readouterr().out
    assert not check_time_shift(lambda t, a: t**a)
    assert not check_time_shift(lambda t, a: 1 / 0)
    assert "ZeroDivisionError" in capsys.readouterr().out


def test_flow_euler_step_check(capsys):
    assert check_flow_euler_step(flow_euler_step)
    assert check_flow_euler_step(lambda x, v, t, tn: x + (tn - t) * v)
    assert capsys.readouterr().out.count("✅") == 2
    assert not check_flow_euler_step(lambda x, v, t, tn: x + (t - tn) * v)
    assert "wrong way" in capsys.readouterr().out
    assert not check_flow_euler_step(lambda x, v, t, tn: x - v)
    assert not check_flow_euler_step(lambda x, v, t, tn: (x + (tn - t) * v).mean(0))
    assert "shape" in capsys.readouterr().out
