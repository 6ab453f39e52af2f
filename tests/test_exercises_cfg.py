"""Notebook 06 (classifier-free guidance): its exercise checks and its GuidanceExplorer widget."""

from __future__ import annotations

import ipywidgets  # noqa: F401  (a pinned requirement: a broken install fails here, it does not skip)
import numpy as np
import pytest
import torch

from diffusion_lab.course.exercises.nb06_guidance import (
    check_best_guidance,
    check_cfg_combine,
    check_fid_ties,
    check_latent_std_prediction,
    check_negative_exponents,
    check_rescale_noise_cfg,
    check_rescaled_std,
)


def test_cfg_combine_check_accepts_right_and_rejects_typical_mistakes(capsys):
    assert check_cfg_combine(lambda c, u, w: torch.lerp(u, c, w))  # u + w·(c − u)
    assert check_cfg_combine(lambda c, u, w: u + w * (c - u))
    assert check_cfg_combine(lambda c, u, w: ((1 - w) * u.double() + w * c.double()).numpy())  # numpy, float64
    assert capsys.readouterr().out.count("✅") == 3

    assert not check_cfg_combine(lambda c, u, w: (1 + w) * c - w * u)  # the paper's convention
    assert "paper's (1 + w)" in capsys.readouterr().out
    assert not check_cfg_combine(lambda c, u, w: c + w * (u - c))  # swapped branches
    assert "swapped" in capsys.readouterr().out
    assert not check_cfg_combine(lambda c, u, w: u + w * c)
    assert "wrong for w = 2.5: start at ε_∅" in capsys.readouterr().out
    assert not check_cfg_combine(lambda c, u, w: (u + w * (c - u)).mean(0))  # one prediction for the batch
    assert "one prediction per sample" in capsys.readouterr().out
    assert not check_cfg_combine(lambda c, u, w: None)
    assert not check_cfg_combine(lambda c, u, w: 1 / 0)
    out = capsys.readouterr().out
    assert "returns None" in out and "ZeroDivisionError" in out and "✅" not in out


def test_rescale_check_accepts_right_and_rejects_typical_mistakes(capsys):
    def right(cfg, text, phi):
        rescaled = cfg * text.std(dim=(1, 2, 3), keepdim=True) / cfg.std(dim=(1, 2, 3), keepdim=True)
        return phi * rescaled + (1 - phi) * cfg

    def numpy_population_std(cfg, text, phi):  # np.std has ddof=0: the ratio of the two σ is the same
        c, t = cfg.numpy(), text.numpy()
        ratio = t.std(axis=(1, 2, 3), keepdims=True) / c.std(axis=(1, 2, 3), keepdims=True)
        return phi * c * ratio + (1 - phi) * c

    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg as diffusers_rescale

    assert check_rescale_noise_cfg(lambda cfg, text, phi: diffusers_rescale(cfg, text, guidance_rescale=phi))
    assert check_rescale_noise_cfg(right)
    assert check_rescale_noise_cfg(numpy_population_std)
    assert capsys.readouterr().out.count("✅") == 3

    assert not check_rescale_noise_cfg(lambda cfg, text, phi: phi * cfg * text.std() / cfg.std() + (1 - phi) * cfg)
    assert "per sample" in capsys.readouterr().out

    def inverted(cfg, text, phi):
        return phi * cfg * cfg.std((1, 2, 3), keepdim=True) / text.std((1, 2, 3), keepdim=True) + (1 - phi) * cfg

    assert not check_rescale_noise_cfg(inverted)
    assert "upside down" in capsys.readouterr().out
    assert not check_rescale_noise_cfg(lambda cfg, text, phi: right(cfg, text, 1 - phi))  # blend reversed
    assert "wrong for φ = 0.7: φ = 0 must return ε̃ unchanged" in capsys.readouterr().out
    assert not check_rescale_noise_cfg(lambda cfg, text, phi: right(cfg, text, 1.0))  # φ ignored
    assert "wrong for φ = 0.7: φ = 0 must return ε̃ unchanged" in capsys.readouterr().out
    assert not check_rescale_noise_cfg(lambda cfg, text, phi: cfg * text.std() + phi)  # something else
    assert "rescaled = ε̃·s(ε_c)/s(ε̃) per sample" in capsys.readouterr().out
    assert not check_rescale_noise_cfg(lambda cfg, text, phi: right(cfg, text, phi)[0])
    assert "return the rescaled prediction, shape (3, 4, 7, 7)" in capsys.readouterr().out
    assert not check_rescale_noise_cfg(lambda cfg, text, phi: None)
    assert "returns None" in capsys.readouterr().out


def test_best_guidance_check(capsys):
    ws = [0, 1, 2, 3, 5, 8]
    adherence = [0.1, 0.4, 0.6, 0.7, 0.72, 0.69]
    fid = [500.0, 420.0, 380.0, 390.0, 410.0, 460.0]
    best_by_loop = ws[0]
    for w, a in zip(ws, adherence, strict=True):
        best_by_loop = w if a > adherence[ws.index(best_by_loop)] else best_by_loop
    assert best_by_loop == 5 == ws[int(np.argmax(adherence))] and min(zip(fid, ws, strict=True))[1] == 2
    assert check_best_guidance(5, ws, adherence)
    assert check_best_guidance(np.float64(5.0), ws, adherence)
    assert check_best_guidance(torch.tensor(2.0), ws, fid, lower_is_better=True)
    assert capsys.readouterr().out.count("✅") == 3

    assert not check_best_guidance(0, ws, fid, lower_is_better=True)  # the worst, and its highest value
    assert "lower is better" in capsys.readouterr().out
    assert not check_best_guidance(4, ws, adherence)  # the index of 5, not the scale
    assert "position in the list" in capsys.readouterr().out
    assert not check_best_guidance(3, ws, adherence)
    assert "find the highest measured value" in capsys.readouterr().out
    assert not check_best_guidance(8, ws, fid, lower_is_better=True)
    assert "find the lowest measured value" in capsys.readouterr().out
    assert not check_best_guidance(None, ws, adherence)
    assert "set your answer to a guidance scale" in capsys.readouterr().out
    assert not check_best_guidance("five", ws, adherence)
    assert "answer with one number" in capsys.readouterr().out
    assert not check_best_guidance(5, ws, adherence[:-1])
    assert "two equal lists" in capsys.readouterr().out


def test_guidance_explorer_redraws_when_controls_move(random_tiny_pipe):
    from diffusion_lab.course.widgets import GuidanceExplorer
    from diffusion_lab.mnist.classifier import ClassifierConfig, MnistClassifier

    pipe = random_tiny_pipe
    classifier = MnistClassifier(ClassifierConfig())

    ex = GuidanceExplorer(pipe, prompt="a seven", guidance_scale=3.0, n=4, steps=3, classifier=classifier)
    first = ex.image.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    for control, value in (
        (ex.guidance, 8.0),
        (ex.prompt, "a thick two"),
        (ex.negative_prompt, "a thin two"),
        (ex.seed, 5),
    ):
        before = ex.image.value
        control.value = value
        assert ex.image.value != before, f"moving {control.description} did not redraw"
    ex.guidance.value = 1.0  # no guidance: one branch only, still draws
    assert ex.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="n must be between 1 and 16"):
        GuidanceExplorer(pipe, n=0)
    with pytest.raises(ValueError, match="guidance_scale must be in"):
        GuidanceExplorer(pipe, guidance_scale=20.0)


def test_rescaled_std_check_accepts_the_derived_std_and_names_typical_mistakes(capsys):
    # the derivation, checked on tensors: ε̃_final = (φ·σ_c/σ̃ + 1 − φ)·ε̃ has std φ·σ_c + (1 − φ)·σ̃
    from diffusion_lab.maths.guidance import rescale_noise_cfg

    g = torch.Generator().manual_seed(0)
    cond = torch.randn(1, 4, 7, 7, generator=g) * 0.8
    guided = 2.5 * cond + torch.randn(1, 4, 7, 7, generator=g)
    sc, sg = cond.std().item(), guided.std().item()
    measured = rescale_noise_cfg(guided, cond, 0.5).std().item()
    assert abs(measured - (0.5 * sc + 0.5 * sg)) < 1e-5
    assert check_rescaled_std(measured, sc, sg, 0.5)
    assert check_rescaled_std(1.16, 0.8, 2.0, 0.7)
    assert check_rescaled_std(np.float32(1.165), 0.8, 2.0, 0.7)  # rounded from printed two-decimal stds
    assert check_rescaled_std(torch.tensor(1.155), 0.8, 2.0, 0.7)
    assert capsys.readouterr().out.count("✅") == 4

    assert not check_rescaled_std(0.8, 0.8, 2.0, 0.7)  # σ_c: φ = 1
    assert "fully rescaled" in capsys.readouterr().out
    assert not check_rescaled_std(2.0, 0.8, 2.0, 0.7)  # σ̃: φ = 0
    assert "without rescale" in capsys.readouterr().out
    assert not check_rescaled_std((0.7 * 0.64 + 0.3 * 4.0) ** 0.5, 0.8, 2.0, 0.7)  # variances blended
    assert "blends variances" in capsys.readouterr().out
    assert not check_rescaled_std(0.3 * 0.8 + 0.7 * 2.0, 0.8, 2.0, 0.7)  # weights swapped
    assert "swapped" in capsys.readouterr().out
    assert not check_rescaled_std(1.0, 0.8, 2.0, 0.7)
    assert "c·s̃" in capsys.readouterr().out
    assert not check_rescaled_std(None, 0.8, 2.0, 0.7)
    assert not check_rescaled_std("1.16", 0.8, 2.0, 0.7)
    assert "✅" not in capsys.readouterr().out
    with pytest.raises(ValueError):
        check_rescaled_std(1.16, 0.8, 2.0, 1.5)


def test_best_guidance_check_names_the_other_measure_s_peak(capsys):
    ws = [0, 1, 2, 3, 5]
    fid, adherence = [580.0, 360.0, 270.0, 350.0, 570.0], [0.1, 0.73, 0.927, 0.937, 0.91]
    other = ("digit adherence", adherence)
    assert check_best_guidance(2, ws, fid, lower_is_better=True, other=other)
    assert "✅" in capsys.readouterr().out
    assert not check_best_guidance(3, ws, fid, lower_is_better=True, other=other)
    assert "that is the digit adherence peak, not the lowest" in capsys.readouterr().out
    assert not check_best_guidance(3, ws, fid, lower_is_better=True)  # without `other`: the generic hint
    assert "find the lowest measured value" in capsys.readouterr().out
    with pytest.raises(TypeError, match="other must be a tuple"):
        check_best_guidance(2, ws, fid, other=adherence)
    with pytest.raises(ValueError, match="one value per scale"):
        check_best_guidance(2, ws, fid, other=("adherence", adherence[:-1]))


def test_negative_exponents_check_accepts_the_derivation_and_names_typical_mistakes(capsys):
    assert check_negative_exponents(lambda w: (w, 1 - w))
    assert check_negative_exponents(lambda w: [np.float64(w), torch.tensor(1.0 - w)])
    assert check_negative_exponents(lambda w: torch.tensor([w, 1 - w]))
    assert capsys.readouterr().out.count("✅") == 3

    assert not check_negative_exponents(lambda w: (1 + w, -w))  # Ho & Salimans' convention
    assert "paper's convention" in capsys.readouterr().out
    assert not check_negative_exponents(lambda w: (1 - w, w))
    assert "swapped" in capsys.readouterr().out
    assert not check_negative_exponents(lambda w: (w, -w))  # forgot ε(c_neg)'s own weight
    assert "collect its terms, 1 − w, not −w" in capsys.readouterr().out
    assert not check_negative_exponents(lambda w: (w, 1.0))
    assert "sum to 1" in capsys.readouterr().out
    assert not check_negative_exponents(lambda w: (0.5, 0.5))
    assert "turn each ε into a score" in capsys.readouterr().out
    assert not check_negative_exponents(lambda w: w)
    assert "return two numbers (a, b)" in capsys.readouterr().out
    assert not check_negative_exponents(lambda w: None)
    assert "returns None" in capsys.readouterr().out
    with pytest.raises(TypeError, match="pass your function itself"):
        check_negative_exponents((3.0, -2.0))


def test_negative_exponents_formula_matches_the_guided_prediction():
    # the derivation on numbers: ε(c_neg) + w·(ε(c) − ε(c_neg)) = a·ε(c) + b·ε(c_neg) with (a, b) = (w, 1 − w)
    from diffusion_lab.maths.guidance import cfg_combine

    g = torch.Generator().manual_seed(1)
    cond, neg = torch.randn(2, 2, 4, 7, 7, generator=g).unbind(0)
    for w in (0.0, 1.0, 3.0, 7.5):
        torch.testing.assert_close(cfg_combine(cond, neg, w), w * cond + (1 - w) * neg)


def test_fid_ties_check(capsys):
    ws = [0, 1, 2, 3, 5]
    fid, se = [580.0, 360.0, 270.0, 300.0, 570.0], [40.0, 20.0, 0.0, 20.0, 30.0]  # 300 − 270 = 30 ≤ 2·20
    assert check_fid_ties([2.0, 3.0], ws, fid, se)
    assert check_fid_ties((3, 2), ws, fid, se)  # any order, any container of numbers
    assert check_fid_ties(np.array([2.0, 3.0]), ws, fid, se)
    assert check_fid_ties([2, 3], ws, fid, [40.0, 20.0, 0.0, 14.0, 30.0]) is False  # 30 > 2·14
    assert capsys.readouterr().out.count("✅") == 3
    assert check_fid_ties(2, ws, fid, [40.0, 20.0, 0.0, 14.0, 30.0])  # one scale alone, as a number
    assert "✅" in capsys.readouterr().out

    assert not check_fid_ties([2.0], ws, fid, se)
    assert "the lowest alone is too strict" in capsys.readouterr().out
    assert not check_fid_ties([3.0], ws, fid, se)
    assert "the lowest FID itself (w = 2) belongs" in capsys.readouterr().out
    assert not check_fid_ties([1.0, 2.0, 3.0], ws, fid, se)
    assert "w = 1: its FID is more than 2 paired SEs above" in capsys.readouterr().out
    assert not check_fid_ties([4.0], ws, fid, se)
    assert "4 is not one of the measured scales" in capsys.readouterr().out
    assert not check_fid_ties(None, ws, fid, se)
    assert "set your answer to a list" in capsys.readouterr().out
    assert not check_fid_ties({2.0, 3.0}, ws, fid, se)
    assert not check_fid_ties(["2", "3"], ws, fid, se)
    assert not check_fid_ties(True, ws, fid, se)
    assert "✅" not in capsys.readouterr().out
    with pytest.raises(ValueError, match="three equal lists"):
        check_fid_ties([2.0], ws, fid, se[:-1])
    with pytest.raises(ValueError, match="cannot be negative"):
        check_fid_ties([2.0], ws, fid, [-1.0, 0, 0, 0, 0])


def test_fid_ties_prediction_for_a_smaller_n(capsys):
    # notebook 06's measured n = 300 numbers; at n = 50 every paired SE grows by √6 ≈ 2.45
    ws = [0, 1, 2, 3, 5, 8, 15]
    fid = [582.0, 360.9, 270.3, 350.9, 571.0, 834.1, 1138.4]
    se = [60.0, 29.2, 0.0, 18.2, 39.5, 56.7, 70.7]
    assert check_fid_ties([1.0, 2.0, 3.0], ws, fid, se, n_measured=300, n_predicted=50)  # 80.6 ≤ 89.2, 90.6 ≤ 143
    assert "✅" in capsys.readouterr().out
    assert not check_fid_ties([2.0], ws, fid, se, n_measured=300, n_predicted=50)  # the n = 300 answer
    assert "those are the ties at n = 300" in capsys.readouterr().out
    assert not check_fid_ties([0.0, 1.0, 2.0, 3.0], ws, fid, se, n_measured=300, n_predicted=50)  # 311.8 > 293.9
    assert "w = 0: its FID is more than 2 paired SEs above" in capsys.readouterr().out
    assert not check_fid_ties([1.0, 3.0], ws, fid, se, n_measured=300, n_predicted=50)
    assert "the lowest FID itself (w = 2) belongs" in capsys.readouterr().out
    assert check_fid_ties([2.0], ws, fid, se)  # without n: the ties as measured
    with pytest.raises(ValueError, match="both n_measured and n_predicted"):
        check_fid_ties([2.0], ws, fid, se, n_measured=300)
    with pytest.raises(ValueError):
        check_fid_ties([2.0], ws, fid, se, n_measured=300, n_predicted=0)


def test_latent_std_prediction_check(capsys):
    assert check_latent_std_prediction(1.2, 1.15, 1.40)
    assert check_latent_std_prediction(np.float32(1.08), 1.15, 1.40)
    assert capsys.readouterr().out.count("✅") == 2

    assert not check_latent_std_prediction(1.42, 1.15, 1.40)
    assert "spread without rescale" in capsys.readouterr().out
    assert not check_latent_std_prediction(1.7, 1.15, 1.40)
    assert "too high by 0.55" in capsys.readouterr().out
    assert not check_latent_std_prediction(0.8, 1.15, 1.40)
    assert "too low by 0.35" in capsys.readouterr().out
    assert not check_latent_std_prediction(None, 1.15, 1.40)
    assert "before running the cell" in capsys.readouterr().out
    assert not check_latent_std_prediction("1.15", 1.15, 1.40)
    assert "✅" not in capsys.readouterr().out
    with pytest.raises(ValueError):
        check_latent_std_prediction(1.1, -1.0, 1.40)
