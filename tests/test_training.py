"""The U-Net, the training loop, EMA, checkpoints (resume = uninterrupted) and sampling."""

from __future__ import annotations

import dataclasses
import math
import types

import diffusers
import ipywidgets  # noqa: F401  (a pinned requirement: a broken install fails here, it does not skip)
import pytest
import torch

from diffusion_lab import DDIMScheduler, DDPMScheduler
from diffusion_lab.maths.guidance import cfg_combine
from diffusion_lab.models.unet import UNet, UNetConfig, timestep_embedding
from diffusion_lab.pipelines.sampling import sample
from diffusion_lab.training.loop import EMA, TrainConfig, Trainer
from diffusion_lab.training.loss import diffusion_loss, min_snr_weight
from diffusion_lab.utils.checkpoint import load_model, load_weights, save_checkpoint
from diffusion_lab.utils.errors import FileError

TINY = UNetConfig(channels=(8, 16), attention_levels=(False, True), num_classes=10, time_embed_dim=32, heads=2)


def tiny_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, torch.randint(0, 10, (n,), generator=g)


def make_trainer(steps=6, **kw):
    torch.manual_seed(0)
    x, y = tiny_data()
    cfg = TrainConfig(steps=steps, batch_size=8, lr=1e-3, warmup_steps=2, cond_drop_prob=0.2, **kw)
    return Trainer(UNet(TINY), x, DDPMScheduler().alphas_cumprod, cfg, labels=y)


def test_unet_shapes_sizes_and_conditioning():
    model = UNet(UNetConfig(num_classes=10))  # the default 3-level MNIST U-Net
    x = torch.randn(2, 1, 28, 28)
    assert model(x, torch.tensor([3, 999]), torch.tensor([1, 10])).shape == (2, 1, 28, 28)
    assert model(x, 5).shape == (2, 1, 28, 28)  # one t for the batch, no labels = the null class
    assert model(torch.randn(1, 1, 32, 32), 5).shape == (1, 1, 32, 32)
    with pytest.raises(ValueError, match="multiples of 4"):
        model(torch.randn(1, 1, 30, 30), 5)
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 1, H, W\)"):
        model(torch.randn(1, 3, 28, 28), 5)
    with pytest.raises(ValueError, match="empty batch"):
        model(torch.randn(0, 1, 28, 28), 5)
    with pytest.raises(ValueError, match=r"class_labels must be in 0..9 \(or 10 for 'no label'\)"):
        model(x, 5, torch.tensor([1, 11]))
    with pytest.raises(ValueError, match="unconditional"):
        UNet(UNetConfig())(x, 5, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="divisible by groups"):
        UNetConfig(channels=(12, 24), attention_levels=(False, False))


def test_untrained_unet_predicts_zero_and_embedding_matches_diffusers():
    assert UNet(TINY)(torch.randn(2, 1, 8, 8), 10).abs().max() == 0  # zero-initialised output conv
    t = torch.tensor([0, 1, 17, 500, 999])
    ref = diffusers.models.embeddings.get_timestep_embedding(t, 32, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(timestep_embedding(t, 32), ref)


def test_loss_targets_and_min_snr_weights():
    snr = torch.tensor([0.01, 1.0, 100.0])
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "epsilon"), torch.tensor([1.0, 1.0, 0.05]))
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "v_prediction"), torch.tensor([0.01 / 1.01, 0.5, 5 / 101]))
    torch.testing.assert_close(min_snr_weight(snr, 5.0, "sample"), torch.tensor([0.01, 1.0, 5.0]))

    class Oracle(torch.nn.Module):  # knows x0: predicts the true target, so the loss is ~0
        def __init__(self, x0, kind, ab):
            super().__init__()
            self.x0, self.kind, self.ab = x0, kind, ab

        def forward(self, x_t, t):
            a = self.ab[t].reshape(-1, 1, 1, 1)
            eps = (x_t - a.sqrt() * self.x0) / (1 - a).sqrt()
            return {"epsilon": eps, "sample": self.x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * self.x0}[
                self.kind
            ]

    ab = DDPMScheduler().alphas_cumprod
    x0, _ = tiny_data(16)
    for kind in ("epsilon", "sample", "v_prediction"):
        loss = diffusion_loss(
            Oracle(x0, kind, ab), x0, ab, prediction_type=kind, generator=torch.Generator().manual_seed(0)
        )
        assert loss < 1e-4, (kind, loss)
    with pytest.raises(ValueError, match="empty batch"):
        diffusion_loss(Oracle(x0, "sample", ab), x0[:0], ab)


def test_ema_warmup_and_average():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.9)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert ema.model.weight.item() == pytest.approx(0.9)  # 0.1·0 + 0.9·1
    for _ in range(200):
        ema.update(model)
    assert ema.current_decay() == 0.9 and ema.model.weight.item() == pytest.approx(1.0, abs=1e-6)


def test_lr_schedule_warms_up_then_cosine_decays_to_a_tenth():
    """TrainConfig.lr_at against the schedule written out: lr·(k+1)/W for k < W, then lr·(0.1 + 0.9·½(1 + cos πp)),
    p = (k − W)/(steps − W): the peak at the end of warm-up, 0.55·lr half-way, 0.1·lr at ``steps``."""
    lr, warm, steps = 2e-3, 10, 110
    cfg = TrainConfig(steps=steps, lr=lr, warmup_steps=warm, lr_schedule="cosine")

    def want(k):
        if k < warm:
            return lr * (k + 1) / warm
        p = min(1.0, (k - warm) / (steps - warm))
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    got = [cfg.lr_at(k) for k in range(steps + 1)]
    assert got == pytest.approx([want(k) for k in range(steps + 1)], rel=1e-12), "lr_at is not the written formula"
    assert got[:warm] == pytest.approx([lr * (k + 1) / warm for k in range(warm)])  # 0.1·lr, 0.2·lr, …, lr
    assert got[warm - 1] == pytest.approx(lr) and got[warm] == pytest.approx(lr), "not at the peak after warm-up"
    after = got[warm:]
    assert all(b <= a for a, b in zip(after[:-1], after[1:], strict=True)), f"the lr rises after warm-up: {after[:3]} …"
    assert got[warm + (steps - warm) // 2] == pytest.approx(0.55 * lr), "half-way must be lr·(0.1 + 0.45)"
    assert got[steps - 1] == pytest.approx(0.1 * lr, rel=1e-2), f"last step {got[steps - 1]} is not ≈ 0.1·lr"
    assert got[steps] == pytest.approx(0.1 * lr) and cfg.lr_at(10 * steps) == pytest.approx(0.1 * lr)

    const = TrainConfig(steps=steps, lr=lr, warmup_steps=warm, lr_schedule="constant")
    assert [const.lr_at(k) for k in range(warm)] == pytest.approx([lr * (k + 1) / warm for k in range(warm)])
    assert all(const.lr_at(k) == lr for k in range(warm, steps + 1))


def test_training_reduces_the_loss():
    trainer = make_trainer(steps=60)
    trainer.run(progress=False)
    first, last = sum(trainer.losses[:10]) / 10, sum(trainer.losses[-10:]) / 10
    assert last < first


def test_time_limit_stops_the_run_by_the_clock(monkeypatch):
    """A fake clock that a callback advances 1 s per step: a 2.5 s limit stops after exactly 3 steps; the time spent
    inside the steps themselves (the clock does not move there) is 0."""
    from diffusion_lab.training import loop as training

    now = [0.0]
    monkeypatch.setattr(training, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    trainer = make_trainer(steps=6)
    trainer.callbacks.append(lambda tr: now.__setitem__(0, now[0] + 1.0))
    trainer.run(time_limit_s=2.5, progress=False)
    assert trainer.step == len(trainer.losses) == 3 and trainer.train_seconds == 0.0
    assert not trainer.model.training
    trainer.run(progress=False)  # no limit: on to config.steps
    assert trainer.step == 6


def test_resume_equals_uninterrupted_run(tmp_path):
    straight = make_trainer().run(progress=False)
    first = make_trainer().run(3, progress=False)
    first.save(tmp_path / "ckpt")
    torch.manual_seed(123)  # disturb the global RNG: resume must restore it
    resumed = make_trainer().resume(tmp_path / "ckpt").run(progress=False)
    assert resumed.step == straight.step == 6
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for a, b in zip(straight.ema.model.parameters(), resumed.ema.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert straight.losses == resumed.losses


def test_checkpoint_files_are_safetensors_and_json_and_mismatches_are_named(tmp_path):
    trainer = make_trainer(steps=2).run(progress=False)
    path = trainer.save(tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "ema.safetensors",
        "model.safetensors",
        "state.json",
        "state.safetensors",
    ]
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary folder left behind
    model = load_model(path, UNet)
    assert torch.equal(next(model.parameters()), next(trainer.ema.model.parameters()))
    other = UNet(dataclasses.replace(TINY, channels=(8, 24)))
    with pytest.raises(FileError, match="shape mismatches: .*vs model"):
        load_weights(other, path / "model.safetensors")
    with pytest.raises(FileError, match="missing keys: class_embed.weight"):
        save_checkpoint(tmp_path / "uncond", UNet(dataclasses.replace(TINY, num_classes=None)))
        load_weights(UNet(TINY), tmp_path / "uncond" / "model.safetensors")
    with pytest.raises(FileError, match="no checkpoint"):
        load_model(tmp_path / "nothing", UNet)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FileError, match="truncated"):
        load_weights(UNet(TINY), path / "model.safetensors")
    # overwriting an existing checkpoint replaces it atomically
    save_checkpoint(path, UNet(TINY))
    assert (path / "model.safetensors").stat().st_size == len(data)


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
    trainer = make_trainer(steps=10)
    trainer.run(4, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=2, progress=False)
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="loss became nan at step 4"):
        trainer.run(checkpoint_dir=tmp_path / "ckpt", checkpoint_every=1, progress=False)
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before


def test_sample_with_our_and_diffusers_schedulers_and_cfg():
    torch.manual_seed(0)
    model = UNet(TINY)
    with torch.no_grad():  # make the output depend on the input and the label
        model.conv_out.weight.normal_(0, 0.1)
    labels = torch.tensor([1, 2, 3])
    outs = []
    for scheduler in (DDIMScheduler(), diffusers.DDIMScheduler()):
        outs.append(
            sample(
                model,
                scheduler,
                (3, 1, 8, 8),
                num_inference_steps=5,
                class_labels=labels,
                guidance_scale=2.0,
                eta=0.5,
                generator=torch.Generator().manual_seed(0),
                return_intermediates=True,
            )
        )
    torch.testing.assert_close(outs[0].images, outs[1].images, atol=1e-6, rtol=0)
    assert outs[0].network_evaluations == 10 and len(outs[0].intermediates) == 5 and len(outs[0].pred_x0) == 5
    assert outs[0].timesteps == [800, 600, 400, 200, 0]
    euler = sample(
        model,
        diffusers.EulerDiscreteScheduler(),
        (2, 1, 8, 8),
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.isfinite(euler.images).all()
    with pytest.raises(ValueError, match="shape must be"):
        sample(model, DDIMScheduler(), (0, 1, 8, 8))
    c, u = torch.randn(4), torch.randn(4)
    torch.testing.assert_close(cfg_combine(c, u, 1.0), c)
    torch.testing.assert_close(cfg_combine(c, u, 0.0), u)


def test_trainer_rejects_bad_data():
    with pytest.raises(ValueError, match="non-empty batch"):
        Trainer(UNet(TINY), torch.zeros(0, 1, 8, 8), DDPMScheduler().alphas_cumprod, TrainConfig())
    with pytest.raises(ValueError, match="labels must have shape"):
        Trainer(
            UNet(TINY), torch.zeros(4, 1, 8, 8), DDPMScheduler().alphas_cumprod, TrainConfig(), labels=torch.zeros(3)
        )
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        TrainConfig(batch_size=0)


def test_ddim_inversion_round_trip_and_latents():
    torch.manual_seed(0)
    model = UNet(TINY)
    with torch.no_grad():
        model.conv_out.weight.normal_(0, 0.05)
    # v-prediction: with ε-prediction the top step divides by √ᾱ_999 ≈ 0.006 and amplifies the inversion's small error
    sched = DDIMScheduler(clip_sample=False, timestep_spacing="trailing", prediction_type="v_prediction")
    sched.set_timesteps(100)
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    y = torch.tensor([1, 2])
    from diffusion_lab.pipelines.sampling import ddim_invert

    x_T = ddim_invert(model, sched.alphas_cumprod, x0, sched.timesteps, class_labels=y, prediction_type="v_prediction")
    assert x_T.shape == x0.shape and not torch.allclose(x_T, x0)
    back = sample(model, sched, tuple(x0.shape), num_inference_steps=100, class_labels=y, latents=x_T, eta=0.0).images
    assert (back - x0).abs().max() < 0.05  # deterministic DDIM maps the inverted noise back to the image
    with pytest.raises(ValueError, match="latents must have shape"):
        sample(model, sched, (3, 1, 8, 8), latents=x_T)


def test_sampler_explorer_redraws():
    from diffusion_lab.course.widgets import SamplerExplorer

    torch.manual_seed(0)
    model = UNet(dataclasses.replace(TINY, channels=(8, 16)))
    with torch.no_grad():
        model.conv_out.weight.normal_(0, 0.1)

    class Small(torch.nn.Module):  # 28x28 interface around the tiny 8x8 model
        config = model.config

        def forward(self, x, t, y=None):
            return torch.nn.functional.interpolate(model(torch.nn.functional.interpolate(x, size=8), t, y), size=28)

    ex = SamplerExplorer(Small(), DDIMScheduler(), steps=2)
    first = ex.image.value
    ex.eta.value = 1.0
    assert ex.image.value != first
    before = ex.image.value
    ex.seed.value = 5
    assert ex.image.value != before
