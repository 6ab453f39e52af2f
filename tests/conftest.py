"""Unit tests run offline (never the hub, whatever the caller's environment says), in quick mode by default, and in
any order: each starts from the same random state, and one that leaks global state fails."""

from __future__ import annotations

import os

import pytest

os.environ.update(
    HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1"
)
os.environ.setdefault("DIFFUSION_LAB_SMOKE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make unit` runs two pytest-xdist workers on a 2-core machine: one thread each, so they do not fight over cores
    # (set before any test module imports torch; subprocesses the tests start inherit it)
    os.environ["OMP_NUM_THREADS"] = "1"


# environment variables the library, torch or the hub clients read: a test may change them only through monkeypatch
_WATCHED_ENV = ("DIFFUSION_LAB_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "DIFFUSERS_", "OMP_", "MKL_", "CUDA_",
                "PYTORCH_", "ACCELERATE_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_")  # fmt: skip


def _global_state() -> dict:
    import torch

    return {
        "torch threads": torch.get_num_threads(),
        "torch default dtype": torch.get_default_dtype(),
        "torch grad mode": torch.is_grad_enabled(),
        "working directory": os.getcwd(),
        **{f"${k}": v for k, v in os.environ.items() if k.startswith(_WATCHED_ENV)},
    }


def _seed_everything() -> None:
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _seeded_session():
    """The first test's module fixtures start from the same random state as every later one's."""
    _seed_everything()


@pytest.fixture(autouse=True)
def _order_independent():
    """Tests run shuffled (pytest-random-order), so none may depend on what ran before it: every test starts from the
    same global random state (code that draws without a generator sees the same numbers in any order), and a test
    that leaves torch's thread count, default dtype or grad mode, the working directory or a watched environment
    variable changed fails (set them with monkeypatch, or restore them in a fixture)."""
    import torch

    _seed_everything()
    before = _global_state()
    yield
    after = _global_state()
    leaked = {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    # put everything back first, so that only the leaking test fails, not the ones after it
    torch.set_num_threads(before["torch threads"])
    torch.set_default_dtype(before["torch default dtype"])
    torch.set_grad_enabled(before["torch grad mode"])
    os.chdir(before["working directory"])
    for key in leaked:
        if key.startswith("$"):
            if before.get(key) is None:
                os.environ.pop(key[1:], None)
            else:
                os.environ[key[1:]] = before[key]
    _seed_everything()  # module fixtures set up before the next test see the same state too
    assert not leaked, f"the test changed global state (name: (before, after)): {leaked}"


@pytest.fixture
def random_tiny_pipe():
    """A randomly initialised tiny text-to-image pipeline (built in a second, no files): prompts, guidance and
    strength all change its pictures, which is what the widget tests need."""
    import torch

    from diffusion_lab.models.autoencoder import AutoencoderConfig, AutoencoderKL
    from diffusion_lab.models.text_encoder import TextEncoder, TextEncoderConfig, WordTokenizer
    from diffusion_lab.models.unet import UNet, UNetConfig
    from diffusion_lab.pipelines.stable_diffusion import TinyStableDiffusionPipeline
    from diffusion_lab.schedulers.scheduling_ddim import DDIMScheduler

    torch.manual_seed(0)
    tokenizer = WordTokenizer.from_texts([], model_max_length=8)
    text_encoder = TextEncoder(
        TextEncoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_layers=1, num_heads=2, max_position=8)
    ).eval()
    vae = AutoencoderKL(AutoencoderConfig(channels=(8, 8), latent_channels=4, groups=4)).eval()
    unet = UNet(
        UNetConfig(
            in_channels=4, out_channels=4, channels=(16,), attention_levels=(True,), cross_attention_dim=16,
            pooled_dim=16, groups=4, time_embed_dim=32, heads=2,
        )
    ).eval()  # fmt: skip
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random weights everywhere (not the zero-initialised output layers)
        for m in (text_encoder, vae, unet):
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return TinyStableDiffusionPipeline(vae, text_encoder, tokenizer, unet, DDIMScheduler(clip_sample=False))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one torch thread is as fast on an idle machine and far faster on a busy one (no OpenMP threads
    waiting on each other). A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
