"""Notebook 07 (the tiny Stable Diffusion): its exercise checks and its Img2ImgExplorer widget."""

from __future__ import annotations

import ipywidgets  # noqa: F401  (a pinned requirement: a broken install fails here, it does not skip)
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffusion_lab.course.exercises.nb07_tiny_sd import (
    check_img2img_timesteps,
    check_latent_mask_rows,
    check_seam_prediction,
    check_stale_noise_level,
    check_x0_eps_from_v,
)
from diffusion_lab.maths.diffusion import eps_from_v, x0_from_v

_SCHEDULE_25 = list(range(999, 0, -40))  # the shipped DDIM schedule for N = 25 ('trailing'): 999, 959, …, 39


def test_img2img_timesteps_check_accepts_the_prediction_and_rejects_typical_mistakes(capsys):
    right = _SCHEDULE_25[-7:]  # int(25 · 0.3) = 7 steps: 279, 239, …, 39

    def from_diffusers():  # diffusers' own get_timesteps on the same schedule
        import diffusers

        scheduler = diffusers.DDIMScheduler(timestep_spacing="trailing")
        scheduler.set_timesteps(25)
        host = type("Host", (), {"scheduler": scheduler})()
        kept, _ = diffusers.StableDiffusionImg2ImgPipeline.get_timesteps(host, 25, 0.3, "cpu")
        return kept

    assert from_diffusers().tolist() == right
    assert check_img2img_timesteps(right, _SCHEDULE_25, 0.3)
    assert check_img2img_timesteps(from_diffusers(), torch.tensor(_SCHEDULE_25), 0.3)  # tensors are fine
    assert check_img2img_timesteps(np.array(right), _SCHEDULE_25, np.float64(0.3))
    assert check_img2img_timesteps([], _SCHEDULE_25, 0.0)  # γ = 0: no step runs
    assert check_img2img_timesteps(_SCHEDULE_25, _SCHEDULE_25, 1.0)
    assert capsys.readouterr().out.count("✅") == 5

    wrong = {
        "wrong order": right[::-1],
        "the first 7 timesteps": _SCHEDULE_25[:7],
        "one step too many": _SCHEDULE_25[-8:],  # round(7.5) = 8
        "one step too many or too few": _SCHEDULE_25[-6:],
        "not the share skipped": _SCHEDULE_25[7:],
        "ordinary schedule": list(range(300, 0, -43)),
        "consecutive": [279, 199, 119, 39],
        "not done yet": None,
        "list of whole numbers": "279, 239",
    }
    for words, answer in wrong.items():
        assert not check_img2img_timesteps(answer, _SCHEDULE_25, 0.3), words
        out = capsys.readouterr().out
        assert "❌" in out and words in out, (words, out)
    with pytest.raises(TypeError, match="timesteps must be"):
        check_img2img_timesteps(right, None, 0.3)
    with pytest.raises(ValueError, match="strength"):
        check_img2img_timesteps(right, _SCHEDULE_25, 1.5)


def test_latent_mask_rows_check_accepts_the_mean_and_rejects_typical_mistakes(capsys):
    mask = torch.zeros(1, 1, 28, 28)
    mask[..., 14:, :] = 1
    assert check_latent_mask_rows([0, 0, 0, 0.5, 1, 1, 1])
    assert check_latent_mask_rows(F.avg_pool2d(mask, 4)[0, 0, :, 0])
    assert check_latent_mask_rows(F.interpolate(mask, size=(7, 7), mode="area")[0, 0, :, 3].numpy())
    assert capsys.readouterr().out.count("✅") == 3

    wrong = {
        "not take the maximum": [0, 0, 0, 1, 1, 1, 1],
        "not all kept": [0, 0, 0, 0, 1, 1, 1],
        "count how many": [0, 0, 0, 0.25, 1, 1, 1],
        "latent row r covers": [0, 0, 0.5, 1, 1, 1, 1],
        "seven numbers": [0, 0.5, 1],
        "not done yet": None,
        "got a str": "0 0 0 0.5 1 1 1",
        "finite": [0, 0, 0, float("nan"), 1, 1, 1],
    }
    for words, answer in wrong.items():
        assert not check_latent_mask_rows(answer), words
        out = capsys.readouterr().out
        assert "❌" in out and words in out, (words, out)


def test_seam_prediction_check_is_judged_by_the_measurement(capsys):
    larger, same = (0.034, 0.050, 0.004), (0.034, 0.036, 0.002)  # (error at 16, error at 14, SE of the difference)
    assert check_seam_prediction({"rows 12-13": "larger"}, *larger)
    assert check_seam_prediction({"rows 12-13": "same"}, *same)
    assert check_seam_prediction({"rows 12-13": "smaller"}, 0.05, 0.03, np.float64(0.004))
    assert capsys.readouterr().out.count("✅") == 3

    assert not check_seam_prediction({"rows 12-13": "same"}, *larger)
    assert "measured larger" in capsys.readouterr().out
    assert not check_seam_prediction({"rows 12-13": "larger"}, *same)
    assert "within two standard errors" in capsys.readouterr().out
    assert not check_seam_prediction({"rows 12-13": None}, *same)
    assert "not done yet" in capsys.readouterr().out
    assert not check_seam_prediction({"rows 12-13": "bigger"}, *same)
    assert "give 'larger', 'same' or 'smaller'" in capsys.readouterr().out
    assert not check_seam_prediction("larger", *same)
    assert "must be a dict" in capsys.readouterr().out
    with pytest.raises(TypeError, match="error_14 must be a finite number"):
        check_seam_prediction({"rows 12-13": "same"}, 0.03, None, 0.01)
    with pytest.raises(ValueError, match="se must be >= 0"):
        check_seam_prediction({"rows 12-13": "same"}, 0.03, 0.03, -0.01)


def test_stale_noise_level_check_accepts_the_derivation_and_rejects_typical_mistakes(capsys):
    ab = 0.96289  # ᾱ at t = 39, the last timestep of the shipped schedule for N = 25
    assert check_stale_noise_level((1 - ab) ** 0.5, ab)
    assert check_stale_noise_level((2 - 2 * ab**0.5) ** 0.5, torch.tensor(ab))  # RMS of kept − z_0 for unit z_0
    assert check_stale_noise_level(np.float32(0.19), ab)
    assert capsys.readouterr().out.count("✅") == 3

    wrong = {
        "what the right rule leaves": 0.0,
        "a variance": 1 - ab,
        "coefficient of z_0": ab**0.5,
        "how much z_0 shrinks": 1 - ab**0.5,
        "which timestep": (1 - 0.91947) ** 0.5,  # the step before (t = 79)
        "not done yet": None,
        "one number": [0.19],
    }
    for words, answer in wrong.items():
        assert not check_stale_noise_level(answer, ab), words
        out = capsys.readouterr().out
        assert "❌" in out and words in out, (words, out)
    with pytest.raises(ValueError, match="alpha_bar_last"):
        check_stale_noise_level(0.19, 1.5)


def test_x0_eps_from_v_check_accepts_right_and_rejects_typical_mistakes(capsys):
    assert check_x0_eps_from_v(lambda z, v, a: (a**0.5 * z - (1 - a) ** 0.5 * v, (1 - a) ** 0.5 * z + a**0.5 * v))
    assert check_x0_eps_from_v(lambda z, v, a: (x0_from_v(z, v, a), eps_from_v(z, v, a)))
    assert check_x0_eps_from_v(lambda z, v, a: [x0_from_v(z, v, a).numpy(), eps_from_v(z, v, a)])  # a list, NumPy

    def via_x0(z, v, a):  # ε̂ from ẑ_0 and z_t (DDPM Eq. 4 solved for ε): the same pair
        x0 = x0_from_v(z, v, a)
        return x0, (z - a**0.5 * x0) / (1 - a) ** 0.5

    assert check_x0_eps_from_v(via_x0)
    assert capsys.readouterr().out.count("✅") == 4

    wrong = {
        "swapped": lambda z, v, a: (eps_from_v(z, v, a), x0_from_v(z, v, a)),
        "treats v as the noise": lambda z, v, a: ((z - (1 - a) ** 0.5 * v) / a**0.5, v),
        "a sign": lambda z, v, a: (a**0.5 * z + (1 - a) ** 0.5 * v, (1 - a) ** 0.5 * z - a**0.5 * v),
        "square roots": lambda z, v, a: (a * z - (1 - a) * v, (1 - a) * z + a * v),
        "ε̂ as well": lambda z, v, a: x0_from_v(z, v, a),
        "ẑ_0 is right; ε̂ is not": lambda z, v, a: (x0_from_v(z, v, a), v),
        "ε̂ is right; ẑ_0 is not": lambda z, v, a: (z, eps_from_v(z, v, a)),
        "return a pair": lambda z, v, a: "x0",
        "shaped like z_t": lambda z, v, a: (x0_from_v(z, v, a)[0], eps_from_v(z, v, a)),
        "returns None": lambda z, v, a: None,
        "ZeroDivisionError": lambda z, v, a: 1 / 0,
    }
    for words, answer in wrong.items():
        assert not check_x0_eps_from_v(answer), words
        out = capsys.readouterr().out
        assert "❌" in out and words in out, (words, out)


def test_img2img_explorer_redraws_when_controls_move(random_tiny_pipe):
    from diffusion_lab.course.widgets import Img2ImgExplorer
    from diffusion_lab.mnist.classifier import ClassifierConfig, MnistClassifier

    pipe = random_tiny_pipe
    image = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(2)) * 2 - 1
    classifier = MnistClassifier(ClassifierConfig())
    ex = Img2ImgExplorer(pipe, image, prompt="an eight", strength=0.5, n=3, steps=4, classifier=classifier)
    first = ex.image.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    for control, value in ((ex.strength, 1.0), (ex.prompt, "a thick two"), (ex.seed, 5), (ex.strength, 0.0)):
        before = ex.image.value
        control.value = value
        assert ex.image.value != before, f"moving {control.description} did not redraw"

    # image i depends on seed + i only: the widget's second image is the first image of seed + 1
    strength, steps = 0.75, 4
    noise = [torch.randn(1, 4, 7, 7, generator=torch.Generator().manual_seed(s)) for s in (5, 6)]
    batched = pipe(
        ["an eight"] * 2, image=image, strength=strength, num_inference_steps=steps, latents=torch.cat(noise)
    )
    alone = pipe("an eight", image=image, strength=strength, num_inference_steps=steps, latents=noise[1])
    torch.testing.assert_close(batched.images[1:], alone.images)

    with pytest.raises(ValueError, match="image must be one image"):
        Img2ImgExplorer(pipe, image[0])
    with pytest.raises(ValueError, match="n must be between 1 and 8"):
        Img2ImgExplorer(pipe, image, n=0)
    with pytest.raises(ValueError, match="strength must be in"):
        Img2ImgExplorer(pipe, image, strength=1.5)
