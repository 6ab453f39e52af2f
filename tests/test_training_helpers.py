"""The shared training pieces: training_target, warmup_cosine, optimizer_step, and the error convention of every
training entry point (bad values → ValueError, wrong types → TypeError)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffusion_lab.training.controlnet import ControlNetTrainConfig, train_controlnet
from diffusion_lab.training.loop import EMA, TrainConfig, optimizer_step, warmup_cosine
from diffusion_lab.training.loss import training_target
from diffusion_lab.training.recipes import (
    LatentFlowTrainConfig,
    LatentTextTrainConfig,
    train_latent_flow,
    train_latent_text2img,
)
from diffusion_lab.training.recipes_pixel import train_mnist_pixel
from diffusion_lab.training.upscaler import UpscalerTrainConfig
from diffusion_lab.training.variations import VariationTrainConfig

# ------------------------------------------------------------------------------------------------ training_target


def _draw(shape=(3, 2, 4, 4)):
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    ab = torch.rand(shape[0], generator=g).clamp(0.01, 0.99)  # (B,)
    return x0, noise, ab


def test_training_target_is_the_formula_of_each_prediction_type():
    x0, noise, ab = _draw()
    ab_t = ab[:, None, None, None]
    assert torch.equal(training_target("epsilon", x0, noise, ab_t), noise)  # DDPM Eq. 14
    assert torch.equal(training_target("sample", x0, noise, ab_t), x0)
    v = torch.sqrt(ab_t) * noise - torch.sqrt(1 - ab_t) * x0  # Salimans & Ho 2022, §4
    torch.testing.assert_close(training_target("v_prediction", x0, noise, ab_t), v, rtol=0, atol=1e-6)


def test_training_target_v_equals_diffusers_get_velocity():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    x0, noise, _ = _draw()
    t = torch.tensor([0, 500, 999])
    ab_t = sched.alphas_cumprod[t][:, None, None, None]
    torch.testing.assert_close(
        training_target("v_prediction", x0, noise, ab_t), sched.get_velocity(x0, noise, t), rtol=0, atol=1e-6
    )


def test_training_target_rejects_an_unknown_prediction_type():
    x0, noise, ab = _draw()
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        training_target("velocity", x0, noise, ab[:, None, None, None])


# ------------------------------------------------------------------------------------------------ warmup_cosine


def test_warmup_cosine_at_the_boundary_steps():
    # K = 100 steps, W = 10, lr = 1, f = 0.1, worked out by hand:
    lr = lambda k: warmup_cosine(k, 100, 10, 1.0, 0.1)  # noqa: E731
    assert lr(0) == pytest.approx(0.1)  # 1·(0 + 1)/10: the first step already trains
    assert lr(9) == pytest.approx(1.0)  # (9 + 1)/10: the peak at k = W − 1
    assert lr(10) == pytest.approx(1.0)  # p = 0: the decay starts from the peak at k = W
    assert lr(55) == pytest.approx(0.1 + 0.9 * 0.5)  # p = 45/90 = ½: halfway, cos(π/2) = 0
    assert lr(99) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 89 / 90)))  # 0.100274…, just above f
    assert lr(99) == pytest.approx(0.100274, abs=1e-6)
    assert lr(100) == pytest.approx(0.1) and lr(10_000) == pytest.approx(0.1)  # p clamped to 1
    assert warmup_cosine(50, 100, 10, 2.0, 1.0) == 2.0  # f = 1: warm-up, then constant
    assert warmup_cosine(50, 100, 10, 1.0, 0.5, progress=1.0) == pytest.approx(0.5)  # p given (time budgets)
    assert warmup_cosine(5, 100, 10, 1.0, 0.5, progress=1.0) == pytest.approx(0.6)  # warm-up comes first
    assert warmup_cosine(0, 100, 0, 1.0, 0.1) == pytest.approx(1.0)  # no warm-up


def test_every_config_schedule_is_warmup_cosine():
    k_all = [0, 9, 10, 11, 50, 98, 99, 100]
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=2e-3)
    assert [cfg.lr_at(k) for k in k_all] == [warmup_cosine(k, 100, 10, 2e-3, 0.1) for k in k_all]
    const = TrainConfig(steps=100, warmup_steps=10, lr=2e-3, lr_schedule="constant")
    assert [const.lr_at(k) for k in k_all] == [warmup_cosine(k, 100, 10, 2e-3, 1.0) for k in k_all]
    for config in (UpscalerTrainConfig(steps=100), VariationTrainConfig(steps=100), ControlNetTrainConfig(steps=100)):
        want = [warmup_cosine(k, 100, config.warmup_steps, config.lr, config.final_lr_fraction) for k in k_all]
        assert [config.lr_at(k) for k in k_all] == want
    text = LatentTextTrainConfig(max_steps=100)
    assert [text.lr_at(k) for k in k_all] == [warmup_cosine(k, 100, 20, text.lr, 0.5) for k in k_all]
    timed = LatentTextTrainConfig()  # a time budget: the share of the time is the progress
    assert timed.lr_at(50, 0.5) == pytest.approx(timed.lr * (0.5 + 0.25))
    with pytest.raises(ValueError, match="needs progress"):
        timed.lr_at(50)
    flow = LatentFlowTrainConfig(max_steps=100)
    assert flow.lr_at(60) == text.lr_at(60)


# ------------------------------------------------------------------------------------------------ optimizer_step


def _net_and_loss(scale: float = 100.0):
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    x = torch.randn(8, 4)
    return net, (scale * net(x)).pow(2).mean()


def test_optimizer_step_clips_sets_lr_and_steps():
    net, loss = _net_and_loss()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    before = [p.detach().clone() for p in net.parameters()]
    norm = optimizer_step(loss, opt, net.parameters(), lr=0.01, max_grad_norm=1.0)
    assert norm > 1.0  # the norm before clipping
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in net.parameters()]))
    assert clipped == pytest.approx(1.0, rel=1e-5)  # the gradients the step used were clipped
    assert opt.param_groups[0]["lr"] == 0.01
    for p, b in zip(net.parameters(), before, strict=True):
        torch.testing.assert_close(p.detach(), b - 0.01 * p.grad)  # SGD: θ − η·g with the clipped g
    assert optimizer_step(_net_and_loss()[1], opt, net.parameters()) is None  # no clipping: no norm


def test_optimizer_step_refuses_a_non_finite_loss_before_touching_the_weights():
    net, loss = _net_and_loss()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    before = [p.detach().clone() for p in net.parameters()]
    for bad in (float("nan"), float("inf")):
        with pytest.raises(FloatingPointError, match=f"loss became {bad} at step 7; lower lr"):
            optimizer_step(loss * bad, opt, net.parameters(), step=7)
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before, strict=True))
    assert all(p.grad is None for p in net.parameters())


def test_optimizer_step_updates_the_ema():
    net, loss = _net_and_loss()
    ema = EMA(net, decay=0.5, warmup=False)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    start = [p.detach().clone() for p in net.parameters()]
    optimizer_step(loss, opt, net.parameters(), ema=ema, model=net)
    assert ema.updates == 1
    for e, p, s in zip(ema.model.parameters(), net.parameters(), start, strict=True):
        torch.testing.assert_close(e, 0.5 * s + 0.5 * p.detach())  # θ_ema ← β·θ_ema + (1 − β)·θ


def test_optimizer_step_after_accumulated_micro_batches():
    net, _ = _net_and_loss()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(4, 4)
    for half in (x[:2], x[2:]):  # two micro-batches, gradients added in .grad by the caller
        (net(half).pow(2).mean() / 2).backward()
    grads = [p.grad.clone() for p in net.parameters()]
    before = [p.detach().clone() for p in net.parameters()]
    optimizer_step(None, opt, net.parameters())
    for p, b, g in zip(net.parameters(), before, grads, strict=True):
        torch.testing.assert_close(p.detach(), b - 0.1 * g)
    assert all(p.grad is None for p in net.parameters())  # cleared after the step, ready for the next


# ------------------------------------------------------------------------------------------------ lora's target


def test_sdxl_lora_sample_target_is_x0(monkeypatch):
    """The SDXL LoRA loop used to train an x_0-predicting model on v (any type but ε became v)."""
    pytest.importorskip("diffusers")
    from diffusion_lab.bridge import lora_sdxl  # lazy: the bridge imports diffusers and peft
    from diffusion_lab.bridge.hub import quiet_hf  # lazy: as above
    from diffusion_lab.bridge.tiny import tiny_sdxl  # lazy: as above

    seen = []

    def spy(prediction_type, x0, noise, ab_t):
        out = training_target(prediction_type, x0, noise, ab_t)
        seen.append((prediction_type, x0, out))
        return out

    monkeypatch.setattr(lora_sdxl, "training_target", spy)
    with quiet_hf():
        pipe = tiny_sdxl()
        pipe.scheduler.register_to_config(prediction_type="sample")
        lora_sdxl.train_sdxl_lora(
            pipe, torch.rand(1, 3, 64, 64) * 2 - 1, "a dog", steps=1, gradient_accumulation_steps=1, progress=False
        )
    assert [s[0] for s in seen] == ["sample"]
    assert torch.equal(seen[0][2], seen[0][1])  # the target is z_0 itself


# ------------------------------------------------------------------------------------------------ error convention


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: TrainConfig(steps=True), TypeError, "steps must be an integer"),
        (lambda: TrainConfig(batch_size=2.0), TypeError, "batch_size must be an integer"),
        (lambda: TrainConfig(steps=0), ValueError, "steps must be a positive integer"),
        (lambda: TrainConfig(lr="1e-3"), TypeError, "lr must be a number"),
        (lambda: TrainConfig(lr=0.0), ValueError, "lr must be > 0"),
        (lambda: TrainConfig(cond_drop_prob=1.5), ValueError, "cond_drop_prob must be <= 1"),
        (lambda: TrainConfig(ema_decay=1.0), ValueError, "ema_decay must be in"),
        (lambda: TrainConfig(prediction_type="v"), ValueError, "prediction_type must be one of"),
        (lambda: UpscalerTrainConfig(steps=True), TypeError, "steps must be an integer"),
        (lambda: UpscalerTrainConfig(max_noise_level=2.0), TypeError, "max_noise_level must be an integer"),
        (lambda: UpscalerTrainConfig(max_noise_level=1000), ValueError, r"max_noise_level must be in 0\.\."),
        (lambda: VariationTrainConfig(batch_size=0), ValueError, "batch_size must be a positive integer"),
        (lambda: VariationTrainConfig(num_images=1), ValueError, "num_images must be an integer >= 2"),
        (lambda: ControlNetTrainConfig(warmup_steps=-1), ValueError, "warmup_steps must be >= 0"),
        (lambda: ControlNetTrainConfig(empty_prompt_prob="half"), TypeError, "empty_prompt_prob must be a number"),
        (lambda: LatentTextTrainConfig(max_steps=True), TypeError, "max_steps must be an integer"),
        (lambda: LatentTextTrainConfig(max_steps=0), ValueError, "max_steps must be a positive integer"),
        (lambda: LatentTextTrainConfig(budget_s=5.0, ae_seconds=10.0), ValueError, "budget_s > ae_seconds"),
        (lambda: LatentFlowTrainConfig(batch_size=None), TypeError, "batch_size must be an integer"),
        (lambda: LatentFlowTrainConfig(timestep_sampling="beta"), ValueError, "timestep_sampling must be one of"),
        (lambda: train_mnist_pixel(torch.zeros(4, 1, 28, 28), torch.zeros(4), steps=True), TypeError, "steps"),
        (
            lambda: train_mnist_pixel(torch.zeros(4, 1, 28, 28), torch.zeros(4), steps=1, time_budget_s=1.0),
            ValueError,
            "exactly one",
        ),  # fmt: skip
        (lambda: train_latent_text2img(train_config=TrainConfig()), TypeError, "LatentTextTrainConfig"),
        (lambda: train_latent_flow(None, train_config=LatentTextTrainConfig()), TypeError, "LatentFlowTrainConfig"),
        (lambda: train_controlnet(None, config=TrainConfig()), TypeError, "ControlNetTrainConfig"),
    ],
)
def test_training_configs_and_entry_points_follow_the_error_convention(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_autoencoder_finetune_and_lora_entry_points_follow_the_error_convention():
    from diffusion_lab.bridge import lora  # lazy: the bridge imports peft
    from diffusion_lab.models.autoencoder import AutoencoderConfig, AutoencoderKL
    from diffusion_lab.training.autoencoder import train_autoencoder
    from diffusion_lab.training.finetune import _check_steps

    vae, x = AutoencoderKL(AutoencoderConfig(channels=(8,), latent_channels=2)), torch.zeros(2, 1, 8, 8)
    with pytest.raises(TypeError, match="steps must be an integer"):
        train_autoencoder(vae, x, steps=2.0)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        train_autoencoder(vae, x, steps=1, batch_size=True)
    with pytest.raises(ValueError, match="lr must be > 0"):
        train_autoencoder(vae, x, steps=1, lr=-1.0)
    with pytest.raises(TypeError, match="images must be a tensor"):
        train_autoencoder(vae, [x], steps=1)
    with pytest.raises(TypeError, match="steps must be an integer"):
        _check_steps(True, 0.1, 2)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        _check_steps(0, 0.1, 2)
    with pytest.raises(TypeError, match="lr must be a number"):
        _check_steps(1, "fast", 2)
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        lora._check_positive("batch_size", 2.0)
    with pytest.raises(ValueError, match="lr must be a number > 0"):
        lora._check_positive("lr", 0.0, integer=False)


def test_flow_matching_loss_targets_noise_minus_data():
    """The rectified-flow recipe's loss is E‖v − (ε − z_0)‖² with t then ε drawn from the generator in that order,
    written out here with a model that answers a fixed velocity c (a sign error in the target changes the loss)."""
    import types

    from diffusion_lab.training.recipes import flow_matching_loss

    class FixedVelocity(torch.nn.Module):
        config = types.SimpleNamespace(patch_size=1)

        def __init__(self, c):
            super().__init__()
            self.c, self.seen = c, {}

        def forward(self, z_t, t, *, encoder_hidden_states, encoder_attention_mask, pooled_projections):
            self.seen.update(z_t=z_t, t=t, pooled=pooled_projections)
            return self.c.expand_as(z_t)

    z0 = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(1))
    c = torch.full((1, 4, 5, 5), 0.7)
    text = types.SimpleNamespace(last_hidden_state=torch.zeros(3, 2, 8), pooler_output=torch.ones(3, 8))
    model = FixedVelocity(c)
    got = flow_matching_loss(
        model, z0, text, torch.ones(3, 2), torch.Generator().manual_seed(7), sample_t=_uniform_t, pooled=True
    )
    g = torch.Generator().manual_seed(7)
    t = torch.rand(3, generator=g)
    eps = torch.randn(z0.shape, generator=g)
    torch.testing.assert_close(model.seen["z_t"], (1 - t)[:, None, None, None] * z0 + t[:, None, None, None] * eps)
    torch.testing.assert_close(model.seen["t"], t)
    assert model.seen["pooled"] is text.pooler_output
    torch.testing.assert_close(got, (c - (eps - z0)).pow(2).mean())
    assert not torch.isclose(got, (c - (z0 - eps)).pow(2).mean())  # the opposite sign is a different loss


def _uniform_t(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator)
