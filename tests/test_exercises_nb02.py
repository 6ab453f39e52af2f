"""Notebook 02's thinking exercises: each checker accepts the right answer and answers plausible wrong ones with a
❌ and the hint that names the mistake (the never-crash guarantees are in ``test_checkers_never_crash.py``)."""

from __future__ import annotations

import pytest
import torch

from diffusion_lab.course.exercises.nb02_ddpm import check_min_snr_weight, check_skip_extra_params, check_variance_ratio
from diffusion_lab.maths.schedules import schedule_table
from diffusion_lab.models.unet import ResBlock

AB = schedule_table(200)["squaredcos_cap_v2"]  # the toy's schedule
RATIO = float(((1 - AB[1]) / (1 - AB[0])).sqrt())  # σ with β_1 over σ with β̃_1


def _line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_variance_ratio_right(capsys):
    assert 1.5 < RATIO < 1.65  # the number the notebook's solution quotes
    for answer in (RATIO, torch.tensor(RATIO), round(RATIO, 3)):
        assert check_variance_ratio(answer) is True
        assert _line(capsys).startswith("✅")


@pytest.mark.parametrize(
    "answer, hint",
    [
        (None, "not done yet"),
        (RATIO**2, "ratio of the variances"),
        (1 / RATIO, "upside down"),
        (1 / RATIO**2, "upside down"),
        (float(((1 - AB[2]) / (1 - AB[1])).sqrt()), "evaluate it at t = 1"),  # one step too early
        (1.0, "evaluate it at t = 1"),  # "the two choices are the same"
        ("1.57", "give one number"),
    ],
)
def test_variance_ratio_wrong(answer, hint, capsys):
    assert check_variance_ratio(answer) is False
    line = _line(capsys)
    assert line.startswith("❌") and hint in line, line


def _count(c_in: int, c_out: int) -> int:
    return sum(p.numel() for p in ResBlock(c_in, c_out, 128, 8, 0.0).parameters())


def test_skip_extra_params_right(capsys):
    def by_formula(c_h, c_s, c_out):  # GroupNorm 2·c_s, conv₁ 9·c_s·c_out, the 1×1 skip (c_h + c_s)·c_out + c_out
        return 2 * c_s + 9 * c_s * c_out + (c_h + c_s) * c_out + c_out

    def by_counting(c_h, c_s, c_out):
        return _count(c_h + c_s, c_out) - _count(c_h, c_out)

    assert by_formula(64, 64, 64) == 45_248  # the notebook's up[0] first block: 135,872 − 90,624
    for fn in (by_formula, by_counting, lambda *a: torch.tensor(by_formula(*a)), lambda *a: float(by_formula(*a))):
        assert check_skip_extra_params(fn) is True
        assert _line(capsys).startswith("✅")


@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda c_h, c_s, c_out: None, "returns None"),
        (lambda c_h, c_s, c_out: 9 * c_s * c_out, "1×1 skip convolution"),  # conv₁ only
        (lambda c_h, c_s, c_out: 9 * c_s * c_out + 2 * c_s, "1×1 skip convolution"),  # conv₁ and GroupNorm
        (lambda c_h, c_s, c_out: 9 * c_s * c_out + (c_h + c_s) * c_out + c_out, "GroupNorm"),
        (lambda c_h, c_s, c_out: 9 * c_s * c_out + c_s * c_out + 2 * c_s, "wrong for c_h = 64"),  # skip weights half
        (lambda c_h, c_s, c_out: _count(c_h + c_s, c_out), "wrong for c_h = 64"),  # the total, not the difference
        (lambda c_h, c_s, c_out: 2 * c_s + 9 * c_s * c_out + (c_h + c_s) * c_out + c_out + 0.5, "whole number"),
        (lambda c_h, c_s, c_out: c_h / 0, "raised ZeroDivisionError"),
    ],
)
def test_skip_extra_params_wrong(fn, hint, capsys):
    assert check_skip_extra_params(fn) is False
    line = _line(capsys)
    assert line.startswith("❌") and hint in line, line


# --- Exercise 1: Min-SNR-γ's weight of an ε loss and of a v loss ---------------------------------------------------


def _weight(snr, gamma, prediction_type):  # min(SNR, γ)·‖x0 − x̂0‖² = w·‖ε − ε̂‖² = w·‖v − v̂‖²
    return snr.clamp(max=gamma) / (snr if prediction_type == "epsilon" else snr + 1)


def test_min_snr_weight_right(capsys):
    from diffusion_lab.training.loss import min_snr_weight

    for fn in (
        _weight,
        min_snr_weight,
        lambda s, g, p: _weight(s, g, p).double(),
        lambda s, g, p: _weight(s, g, p).tolist(),
    ):
        assert check_min_snr_weight(fn) is True
        assert _line(capsys).startswith("✅")


@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda s, g, p: None, "returns None"),
        (lambda s, g, p: s.clamp(max=g), "min(SNR, γ) alone"),  # the x0 weight for both
        (lambda s, g, p: s.clamp(max=g) / (s + 1), "weight of the v_prediction loss"),  # the v weight for ε too
        (lambda s, g, p: s.clamp(max=g) / s, "weight of the epsilon loss"),  # the ε weight for v too
        (lambda s, g, p: _weight(s, g, "v_prediction" if p == "epsilon" else "epsilon"), "weight of the epsilon"),
        (lambda s, g, p: 1 / _weight(s, g, p), "upside down"),
        (lambda s, g, p: s.clamp(max=g) * (s if p == "epsilon" else s + 1), "upside down"),
        (lambda s, g, p: s.clamp(max=g) / (s + 2), "wrong for v_prediction"),
        (lambda s, g, p: _weight(s, g, p)[:5], "shape"),
        (lambda s, g, p: s / 0 * float("nan"), "NaN"),
    ],
)
def test_min_snr_weight_wrong(fn, hint, capsys):
    assert check_min_snr_weight(fn) is False
    line = _line(capsys)
    assert line.startswith("❌") and hint in line, line


# --- LossPlot: the text shown where the widget is not rendered -----------------------------------------------------


def test_loss_plot_displays_a_sentence_not_the_empty_image_repr(monkeypatch):
    pytest.importorskip("ipywidgets")
    import IPython.display

    from diffusion_lab.course.plots import LossPlot

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.append((objs, kw)))
    trainer = type("FakeTrainer", (), {"step": 0, "losses": [1.0, 0.9, 0.8]})()
    plot = LossPlot(every=1, smooth=2)
    plot(trainer)
    trainer.step = 1
    plot(trainer)  # redraws the same widget: nothing new displayed
    assert len(shown) == 1, shown
    (bundle,), kw = shown[0]
    assert kw == {"raw": True} and bundle["text/plain"] == LossPlot.TEXT
    assert "application/vnd.jupyter.widget-view+json" in bundle and plot.image.value  # the curve was drawn
