"""Notebook 07 (the tiny Stable Diffusion): its exercise checks and its Img2ImgExplorer widget."""

from __future__ import annotations

import ipywidgets  # noqa: F401  (a pinned requirement: a broken install fails here, it does not skip)
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffusion_lab.course.exercises.nb07_tiny_sd import (
    check_img2img_start,
    check_inpaint_blend,
    check_latent_mask,
    check_x0_eps_from_v,
)
from diffusion_lab.maths.diffusion import eps_from_v, x0_from_v


def test_img2img_start_check_accepts_right_and_rejects_typical_mistakes(capsys):
    def diffusers_rule(n, strength):
        init_timestep = min(int(n * strength), n)
        return max(n - init_timestep, 0)

    def from_diffusers(n, strength):  # diffusers' own get_timesteps: the steps it keeps start at index n − kept
        import diffusers

        scheduler = diffusers.DDIMScheduler()
        scheduler.set_timesteps(n)
        host = type("Host", (), {"scheduler": scheduler})()
        _, kept = diffusers.StableDiffusionImg2ImgPipeline.get_timesteps(host, n, strength, "cpu")
        return n - kept

    assert check_img2img_start(from_diffusers)
    assert check_img2img_start(diffusers_rule)
    assert check_img2img_start(lambda n, s: n - int(n * s))
    assert check_img2img_start(lambda n, s: np.int64(n - int(n * s)))  # numpy integers are fine
    assert check_img2img_start(lambda n, s: torch.tensor(n - int(n * s)))
    assert capsys.readouterr().out.count("✅") == 5

    assert not check_img2img_start(lambda n, s: int(n * s))  # the steps run, not where they start
    assert "steps run" in capsys.readouterr().out
    assert not check_img2img_start(lambda n, s: round(n * (1 - s)))
    assert "truncated" in capsys.readouterr().out
    assert not check_img2img_start(lambda n, s: int(n * (1 - s)))
    assert "truncated" in capsys.readouterr().out
    assert not check_img2img_start(lambda n, s: 0)
    assert "for N = 50, γ = 0.8 the answer is not 0" in capsys.readouterr().out
    assert not check_img2img_start(lambda n, s: n - int(n * s) + 1)  # one step late
    assert "for N = 50, γ = 0.8 the answer is not 11" in capsys.readouterr().out
    assert not check_img2img_start(lambda n, s: "ten")
    assert "return one whole number" in capsys.readouterr().out
    assert not check_img2img_start(lambda n, s: None)
    assert not check_img2img_start(lambda n, s: 1 / 0)
    out = capsys.readouterr().out
    assert "returns None" in out and "ZeroDivisionError" in out and "✅" not in out


def test_latent_mask_check_accepts_right_and_rejects_typical_mistakes(capsys):
    assert check_latent_mask(lambda m, f: F.avg_pool2d(m, f))
    assert check_latent_mask(lambda m, f: F.interpolate(m, size=(m.shape[-2] // f, m.shape[-1] // f), mode="area"))
    assert check_latent_mask(lambda m, f: m.unflatten(-1, (-1, f)).unflatten(-3, (-1, f)).mean((-1, -3)).numpy())
    assert capsys.readouterr().out.count("✅") == 3

    assert not check_latent_mask(lambda m, f: m[..., ::f, ::f])
    assert "nearest" in capsys.readouterr().out
    assert not check_latent_mask(lambda m, f: F.interpolate(m, scale_factor=1 / f))
    assert "nearest" in capsys.readouterr().out
    assert not check_latent_mask(lambda m, f: F.max_pool2d(m, f))
    assert "max-pooling" in capsys.readouterr().out
    assert not check_latent_mask(lambda m, f: F.avg_pool2d(m, 2))  # f ignored: wrong shape for f = 4
    assert "shape" in capsys.readouterr().out
    assert not check_latent_mask(lambda m, f: (F.avg_pool2d(m, f) > 0.5).float())  # thresholded
    assert "average each f×f block" in capsys.readouterr().out
    assert not check_latent_mask(lambda m, f: None)
    assert "returns None" in capsys.readouterr().out


def test_inpaint_blend_check_accepts_right_and_rejects_typical_mistakes(capsys):
    assert check_inpaint_blend(lambda z, known, m: (1 - m) * known + m * z)
    assert check_inpaint_blend(lambda z, known, m: torch.lerp(known, z, m.expand_as(z)))
    assert check_inpaint_blend(lambda z, known, m: known + m * (z - known))
    assert capsys.readouterr().out.count("✅") == 3

    assert not check_inpaint_blend(lambda z, known, m: m * known + (1 - m) * z)  # diffusers' rule inverted
    assert "wrong way round" in capsys.readouterr().out
    assert not check_inpaint_blend(lambda z, known, m: z)
    assert "blend of both" in capsys.readouterr().out
    assert not check_inpaint_blend(lambda z, known, m: torch.where(m > 0.5, z, known))  # a soft mask is not binary
    assert "a soft mask mixes the two" in capsys.readouterr().out
    assert not check_inpaint_blend(lambda z, known, m: ((1 - m) * known + m * z)[0])
    assert "return latents of shape (3, 4, 7, 7)" in capsys.readouterr().out
    assert not check_inpaint_blend(lambda z, known, m: 1 / 0)
    assert "ZeroDivisionError" in capsys.readouterr().out


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
