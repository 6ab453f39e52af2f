"""The latent autoencoder: shapes, the posterior's formulas, checkpoints, the scaling factor, input checks, training."""

from __future__ import annotations

import types

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from diffusion_lab.models.autoencoder import AutoencoderConfig, AutoencoderKL, DiagonalGaussianDistribution
from diffusion_lab.training.autoencoder import estimate_scaling_factor, train_autoencoder, vae_loss


def tiny_model(seed: int = 0, **kw) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(AutoencoderConfig(channels=(8, 16), groups=4, **kw))


def blobs(n: int = 64, size: int = 8, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [−1, 1] (N, 1, size, size): a Gaussian blob at a random place."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 2, generator=g) * size  # (N, 2)
    r = torch.arange(size, dtype=torch.float32)
    d2 = (r[None, :, None] - centre[:, 0, None, None]) ** 2 + (r[None, None, :] - centre[:, 1, None, None]) ** 2
    return (2 * torch.exp(-d2 / 4) - 1)[:, None]  # (N, 1, size, size)


def test_config_downsampling_and_validation():
    assert AutoencoderConfig().downsampling == 4  # two levels: 28 → 14 → 7
    assert AutoencoderConfig(channels=(8, 16, 32)).downsampling == 8
    assert AutoencoderConfig(channels=[16, 32]).channels == (16, 32)  # JSON lists become tuples
    with pytest.raises(ValueError, match="divisible by groups"):
        AutoencoderConfig(channels=(12, 32), groups=8)
    with pytest.raises(ValueError, match="scaling_factor"):
        AutoencoderConfig(scaling_factor=0.0)


def test_encode_decode_shapes_mnist_size():
    model = tiny_model()
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    posterior = model.encode(x).latent_dist
    assert isinstance(posterior, DiagonalGaussianDistribution)
    assert posterior.mean.shape == posterior.std.shape == posterior.var.shape == (2, 4, 7, 7)  # 7×7×4 latents
    z = posterior.sample()
    assert z.shape == (2, 4, 7, 7)
    assert model.decode(z).sample.shape == (2, 1, 28, 28)
    out = model(x)
    assert out.sample.shape == (2, 1, 28, 28) and out.latent_dist.mean.shape == (2, 4, 7, 7)
    assert model(torch.zeros(1, 1, 32, 32)).sample.shape == (1, 1, 32, 32)  # any multiple of 4
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    assert model.device.type == "cpu" and model.dtype == torch.float32


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    params = torch.randn(3, 8, 5, 5)  # (B, 2L, h, w): mean and log-variance
    dist = DiagonalGaussianDistribution(params)
    mean, logvar = params.chunk(2, dim=1)
    reference = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).flatten(1).sum(1)  # (B,)
    torch.testing.assert_close(dist.kl(), reference)
    assert dist.kl().shape == (3,)
    # the prior itself has KL 0
    assert DiagonalGaussianDistribution(torch.zeros(2, 8, 3, 3)).kl().abs().max() == 0


def test_sample_is_mean_plus_std_eps_and_mode_is_mean():
    torch.manual_seed(0)
    params = torch.randn(2, 8, 4, 4)
    dist = DiagonalGaussianDistribution(params)
    z = dist.sample(torch.Generator().manual_seed(7))
    eps = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(z, dist.mean + dist.std * eps)
    torch.testing.assert_close(dist.sample(torch.Generator().manual_seed(7)), z)  # reproducible
    assert torch.equal(dist.mode(), params[:, :4])
    torch.testing.assert_close(dist.var, params[:, 4:].exp())  # the second half of the channels is log σ²
    torch.testing.assert_close(dist.std, (0.5 * params[:, 4:]).exp())
    # log σ² is clamped to [−30, 20], as in diffusers and sgm
    extreme = DiagonalGaussianDistribution(torch.cat([torch.zeros(1, 1), torch.full((1, 1), 100.0)], dim=1))
    torch.testing.assert_close(extreme.var, torch.exp(torch.tensor([[20.0]])))


def test_save_load_round_trip(tmp_path):
    model = tiny_model(scaling_factor=0.5)
    x = blobs(4, size=8)
    model.save_pretrained(tmp_path / "vae")
    assert {p.name for p in (tmp_path / "vae").iterdir()} == {"config.json", "model.safetensors"}
    loaded = AutoencoderKL.from_pretrained(tmp_path / "vae", device="cpu")
    assert loaded.config == model.config and loaded.config.scaling_factor == 0.5
    assert not loaded.training
    model.eval()
    with torch.no_grad():
        a = model(x, generator=torch.Generator().manual_seed(1))
        b = loaded(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.sample, b.sample) and torch.equal(a.latent_dist.mean, b.latent_dist.mean)


def test_scaling_factor_gives_unit_std():
    model = tiny_model()
    x = blobs(40, size=8)
    s = estimate_scaling_factor(model, x, sample_posterior=False, batch_size=16)
    with torch.no_grad():
        z = model.encode(x).latent_dist.mode()
    torch.testing.assert_close((s * z).std().item(), 1.0, rtol=1e-5, atol=0)
    # with posterior samples: the same generator draws the same z
    model.train()
    s = estimate_scaling_factor(model, x, batch_size=64, generator=torch.Generator().manual_seed(3))
    assert model.training  # the caller's mode is restored
    with torch.no_grad():
        z = model.encode(x).latent_dist.sample(torch.Generator().manual_seed(3))
    torch.testing.assert_close((s * z).std().item(), 1.0, rtol=1e-5, atol=0)


def test_bad_inputs_raise_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"expected images x of shape \(B, 1, H, W\)"):
        model.encode(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="multiples of 4"):
        model.encode(torch.zeros(2, 1, 30, 28))
    with pytest.raises(ValueError, match=r"latent_channels=4"):
        model.decode(torch.zeros(2, 3, 7, 7))
    with pytest.raises(ValueError, match="empty batch"):
        model(torch.zeros(0, 1, 28, 28))
    with pytest.raises(ValueError, match="give steps, seconds or both"):
        train_autoencoder(model, blobs(8), progress=False)
    with pytest.raises(ValueError, match="multiples of 4"):
        train_autoencoder(model, torch.zeros(8, 1, 10, 10), steps=1, progress=False)
    with pytest.raises(ValueError, match="kl_weight"):
        vae_loss(model, blobs(2), kl_weight=-1.0)
    with pytest.raises(ValueError, match=r"\(B, 2L, \.\.\.\)"):
        DiagonalGaussianDistribution(torch.zeros(1, 3, 2, 2))


def test_vae_loss_normalisation():
    model = tiny_model()
    x = blobs(4, size=8)
    g = torch.Generator().manual_seed(0)
    total, recon, kl = vae_loss(model, x, kl_weight=0.1, generator=g)
    out = model(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(recon, (out.sample - x).pow(2).mean())
    torch.testing.assert_close(kl, out.latent_dist.kl().mean() / 64)  # per-sample KL / D, D = 1·8·8
    torch.testing.assert_close(total, recon + 0.1 * kl)


def test_training_lowers_the_loss_and_is_deterministic():
    x = blobs(128, size=8)
    seen = []
    runs = []
    for _ in range(2):
        model = tiny_model(seed=0)
        history = train_autoencoder(
            model, x, steps=25, batch_size=16, lr=3e-3, seed=1, progress=False, callback=seen.append
        )
        runs.append(history)
    first, last = runs[0][:5], runs[0][-5:]
    assert sum(r["loss"] for r in last) < 0.5 * sum(r["loss"] for r in first)
    assert [r["step"] for r in runs[0]] == list(range(1, 26)) and set(runs[0][0]) >= {"step", "loss", "recon", "kl"}
    assert [r["loss"] for r in runs[0]] == [r["loss"] for r in runs[1]]  # same seed, same run
    assert len(seen) == 50 and not model.training


def test_time_budget_stops_training_by_the_clock(monkeypatch):
    """A fake clock that advances 1 s per training step (in the callback): a 3.5 s budget allows exactly 4 steps,
    with steps as well whichever comes first, and each record carries the clock's reading."""
    from diffusion_lab.training import autoencoder as ae

    now = [0.0]
    monkeypatch.setattr(ae, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    def tick(record):
        now[0] += 1.0

    x = blobs(32, size=8)
    history = train_autoencoder(tiny_model(), x, seconds=3.5, batch_size=4, progress=False, callback=tick)
    assert [r["step"] for r in history] == [1, 2, 3, 4] and [r["seconds"] for r in history] == [0.0, 1.0, 2.0, 3.0]
    now[0] = 0.0
    assert (
        len(train_autoencoder(tiny_model(), x, seconds=3.5, steps=2, batch_size=4, progress=False, callback=tick)) == 2
    )
    now[0] = 0.0
    assert len(train_autoencoder(tiny_model(), x, seconds=1e-9, batch_size=4, progress=False, callback=tick)) == 1


def test_patch_size_folds_pixels_and_multiplies_the_factor():
    cfg = AutoencoderConfig(channels=(8,), groups=4, patch_size=2)
    assert cfg.downsampling == 4  # 2×2 folding, then one stride-2 level: 28 → 14 → 7
    torch.manual_seed(0)
    model = AutoencoderKL(cfg)
    assert model.encoder.conv_in.in_channels == 4 and model.decoder.conv_out.out_channels == 4  # C·p²
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    z = model.encode(x).latent_dist.mode()
    assert z.shape == (3, 4, 7, 7)
    assert model.decode(z).sample.shape == (3, 1, 28, 28)
    # the folding is the lossless pixel_unshuffle: the first conv sees each 2×2 patch as 4 channels
    torch.testing.assert_close(
        model.encoder.conv_in(torch.nn.functional.pixel_unshuffle(x, 2)),
        model.encoder.conv_in(x.reshape(3, 1, 14, 2, 14, 2).permute(0, 1, 3, 5, 2, 4).reshape(3, 4, 14, 14)),
    )
    with pytest.raises(ValueError, match="multiples of 4"):
        model.encode(torch.zeros(1, 1, 30, 30))
    with pytest.raises(ValueError, match="patch_size"):
        AutoencoderConfig(patch_size=0)


def test_squashed_output_and_bernoulli_loss():
    model = tiny_model(squash_output=True)
    x = blobs(4, size=8)
    z = model.encode(x).latent_dist.sample(torch.Generator().manual_seed(0))
    out = model.decode(z).sample
    torch.testing.assert_close(out, torch.tanh(model.decode_logits(z)))
    assert out.abs().max() < 1  # tanh: always a valid image
    total, recon, kl = vae_loss(model, x, kl_weight=0.1, generator=torch.Generator().manual_seed(0))
    # recon = mean over pixels of −[y log p + (1 − y) log(1 − p)], p = (x̂ + 1)/2, y = (x + 1)/2  (docstring formula)
    p, y = (out.double() + 1) / 2, (x.double() + 1) / 2
    bce = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    torch.testing.assert_close(recon.double(), bce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total, recon + 0.1 * kl)
