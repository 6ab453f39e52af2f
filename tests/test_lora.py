"""LoRA (diffusion_lab.bridge.lora): the maths against peft, the tiny model's adapter, and the diffusers SDXL round trip."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from diffusion_lab.bridge import lora, lora_sdxl
from diffusion_lab.mnist.data import load_mnist
from diffusion_lab.training import finetune
from diffusion_lab.training.tiny_sd_io import load_tiny_sd, pretrained_tiny_sd_path
from diffusion_lab.utils.errors import FileError

SHIPPED_UNET = pretrained_tiny_sd_path() / "unet" / "model.safetensors"


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unet_out(pipe, prompts=("a seven", "a thick two")) -> torch.Tensor:
    """One U-Net forward on fixed latents, timesteps and text: enough to compare weights through their effect."""
    g = _gen(3)
    z = torch.randn(len(prompts), pipe.unet.config.in_channels, 7, 7, generator=g)  # (B, L, 7, 7)
    t = torch.tensor([100, 700][: len(prompts)])
    with torch.no_grad():
        c, mask, pooled = finetune.encode_text(pipe, list(prompts))
        return pipe.unet(z, t, encoder_hidden_states=c, encoder_attention_mask=mask, pooled_text=pooled)


def _images(pipe, steps: int = 5) -> torch.Tensor:
    return pipe(["a seven", "a thick two"], num_inference_steps=steps, guidance_scale=3.0, generator=_gen()).images


@pytest.fixture(scope="module")
def data():
    """16 mirrored sevens, all captioned "a seven": a concept the tiny model has not seen."""
    x, y = load_mnist("train", limit=300)
    images = x[y == 7][:16].flip(-1)  # (16, 1, 28, 28)
    return images, ["a seven"] * len(images)


@pytest.fixture(scope="module")
def base_pipe():
    """The shipped tiny SD, never left with a LoRA (tests that add one remove it)."""
    return load_tiny_sd()[0]


def _eval_loss(pipe, latents, prompts) -> float:
    """The fine-tuning loss with the same t and ε draws every time (4 draws per example)."""
    with torch.no_grad():
        return finetune.denoising_loss(pipe, latents.repeat(4, 1, 1, 1), prompts * 4, _gen(123)).item()


@pytest.fixture(scope="module")
def trained(data):
    images, prompts = data
    pipe = load_tiny_sd()[0]
    latents = finetune.encode_images(pipe, images)
    before_images, before_loss = _images(pipe), _eval_loss(pipe, latents, prompts)
    losses = lora.train_lora(pipe, images, prompts, steps=25, rank=4, lr=3e-3, batch_size=8, progress=False)
    return {
        "pipe": pipe,
        "losses": losses,
        "before_loss": before_loss,
        "after_loss": _eval_loss(pipe, latents, prompts),
        "before_images": before_images,
    }


# --- the maths ---------------------------------------------------------------------------------------------------


def test_lora_delta_equals_peft_merge():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5))
    w0 = model[0].weight.detach().clone()
    lora.add_lora(model, rank=2, alpha=3.0, target_modules=["0"], seed=0)
    layer = model[0]
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight  # (2, 6), (5, 2)
    assert torch.equal(B, torch.zeros_like(B))  # B = 0: training starts at the base model
    with torch.no_grad():
        B.normal_()
    assert sum(p.numel() for p in lora.lora_parameters(model)) == lora.lora_parameter_count(6, 5, 2) == 22
    delta = lora.lora_delta(A.detach(), B.detach(), 3.0)  # (α/r)·B·A
    torch.testing.assert_close(delta, layer.get_delta_weight("default"))  # peft's own
    torch.testing.assert_close(delta, 1.5 * B.detach() @ A.detach())  # α/r = 3/2, written out
    x = torch.randn(4, 6)
    with torch.no_grad():  # the layer's output: frozen W₀ plus the scaled low-rank path
        torch.testing.assert_close(layer(x), x @ w0.T + model[0].base_layer.bias + 1.5 * x @ A.T @ B.T)
    lora.merge_lora(model)
    torch.testing.assert_close(model[0].base_layer.weight - w0, delta, atol=1e-6, rtol=1e-5)
    lora.unmerge_lora(model)
    torch.testing.assert_close(model[0].base_layer.weight, w0, atol=1e-6, rtol=0)


# --- the tiny model -------------------------------------------------------------------------------------------------


def test_fresh_lora_leaves_images_unchanged(base_pipe):
    before = _images(base_pipe)
    lora.add_lora(base_pipe.unet, rank=4, seed=0)
    try:
        assert type(base_pipe.unet).__name__ == "UNet"  # still the pipeline's UNet, not a PeftModel
        trainable = [n for n, p in base_pipe.unet.named_parameters() if p.requires_grad]
        assert trainable and all(".lora_" in n and ".attn2." in n for n in trainable)
        assert torch.equal(_images(base_pipe), before)
    finally:
        lora.remove_lora(base_pipe.unet)
    assert not lora.lora_layers(base_pipe.unet)


def test_training_lowers_the_loss_and_changes_images(trained):
    assert len(trained["losses"]) == 25
    assert trained["after_loss"] < trained["before_loss"] - 0.01, (trained["before_loss"], trained["after_loss"])
    after = _images(trained["pipe"])
    assert (after - trained["before_images"]).abs().max() > 0.05


def test_parameter_count(trained):
    unet = trained["pipe"].unet
    counts = lora.count_lora_parameters(unet)
    layers = lora.lora_layers(unet)
    assert sorted(layers) == [f"mid_attn.attn2.{n}" for n in ("to_k", "to_out", "to_q", "to_v")]
    # A (r × d_in) and B (d_out × r) per layer: r·(d_in + d_out), written out from the layers' weight shapes
    by_shapes = sum(4 * (m.base_layer.weight.shape[1] + m.base_layer.weight.shape[0]) for m in layers.values())
    assert counts.lora == by_shapes == 2_048
    assert counts.base == sum(p.numel() for p in load_tiny_sd()[0].unet.parameters()) == 446_532  # a fresh copy
    assert counts.ratio == pytest.approx(446_532 / 2_048)


def test_merge_unmerge_and_scale(trained, base_pipe):
    pipe = trained["pipe"]
    weights = {n: m.base_layer.weight.detach().clone() for n, m in lora.lora_layers(pipe.unet).items()}
    unmerged = _unet_out(pipe)
    lora.merge_lora(pipe.unet)
    try:
        torch.testing.assert_close(_unet_out(pipe), unmerged, atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="unmerge"):
            lora.set_lora_scale(pipe.unet, 0.5)
    finally:
        lora.unmerge_lora(pipe.unet)
    for name, layer in lora.lora_layers(pipe.unet).items():
        torch.testing.assert_close(layer.base_layer.weight, weights[name], atol=1e-6, rtol=0)
    lora.set_lora_scale(pipe.unet, 0.0)
    try:
        torch.testing.assert_close(_unet_out(pipe), _unet_out(base_pipe), atol=1e-6, rtol=0)  # s = 0: the base
    finally:
        lora.set_lora_scale(pipe.unet, 1.0)
    torch.testing.assert_close(_unet_out(pipe), unmerged, atol=1e-5, rtol=0)


def test_save_load_round_trip_and_file_size(trained, tmp_path):
    pipe = trained["pipe"]
    path = lora.save_lora(pipe.unet, tmp_path / "lora")
    config = json.loads((tmp_path / "lora" / lora.LORA_CONFIG_FILE).read_text())
    assert (config["rank"], config["alpha"]) == (4, 4.0)
    assert not list((tmp_path / "lora").glob(".*tmp*"))  # no temporary file left behind

    report = lora.size_report(pipe.unet, path, SHIPPED_UNET)
    assert report["full_bytes"] == SHIPPED_UNET.stat().st_size and report["lora_bytes"] == path.stat().st_size
    assert path == tmp_path / "lora" / lora.LORA_FILE
    # the file holds 2,048 float32 numbers (8,192 bytes) plus its JSON header: at most a kilobyte more
    assert 8_192 < report["lora_bytes"] < 8_192 + 1_024
    assert report["file_ratio"] == pytest.approx(SHIPPED_UNET.stat().st_size / path.stat().st_size)
    assert report["file_ratio"] > 150  # the bar is 10; about 199x here (9,008 vs 1,792,104 bytes)
    assert abs(lora.weights_file_bytes(pipe.unet) - report["full_bytes"]) < 0.01 * report["full_bytes"]

    fresh = load_tiny_sd()[0]
    lora.load_lora(fresh.unet, tmp_path / "lora")
    expected = _unet_out(pipe)  # the trained pipe went through merge/unmerge above: W₀ equal up to rounding
    torch.testing.assert_close(_unet_out(fresh), expected, atol=1e-6, rtol=0)
    lora.remove_lora(fresh.unet, merge=True)  # "merge and unload": a plain UNet with the fine-tuned weights
    assert set(fresh.unet.state_dict()) == set(load_tiny_sd()[0].unet.state_dict())
    torch.testing.assert_close(_unet_out(fresh), expected, atol=1e-5, rtol=0)


# --- bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rank": 0}, ValueError, "rank must be >= 1"),
        ({"rank": -3}, ValueError, "rank must be >= 1"),
        ({"rank": 65}, ValueError, "at most 64"),
        ({"rank": 2.5}, TypeError, "rank must be an integer"),
        ({"rank": "4"}, TypeError, "rank must be an integer"),
        ({"rank": True}, TypeError, "rank must be an integer"),
        ({"alpha": 0}, ValueError, "alpha must be a number > 0"),
        ({"alpha": -1.0}, ValueError, "alpha must be a number > 0"),
        ({"target_modules": ["attn3.to_q"]}, ValueError, "mid_attn.attn2.to_q"),
        ({"target_modules": []}, TypeError, "target_modules"),
    ],
)
def test_add_lora_bad_input(base_pipe, kwargs, error, match):
    with pytest.raises(error, match=match):
        lora.add_lora(base_pipe.unet, **kwargs)
    assert not lora.lora_layers(base_pipe.unet)  # nothing was injected


def test_train_and_load_bad_input(base_pipe, data, tmp_path):
    images, prompts = data
    with pytest.raises(ValueError, match="empty"):
        lora.train_lora(base_pipe, images[:0], [], steps=1, progress=False)
    with pytest.raises(ValueError, match="one prompt"):
        lora.train_lora(base_pipe, images, prompts[:3], steps=1, progress=False)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        lora.train_lora(base_pipe, images, prompts, steps=1, rank=0, progress=False)
    with pytest.raises(FileError, match="no LoRA"):
        lora.load_lora(base_pipe.unet, tmp_path)
    with pytest.raises(ValueError, match="add_lora"):
        lora.merge_lora(base_pipe.unet)
    assert not lora.lora_layers(base_pipe.unet)
    lora.add_lora(base_pipe.unet)
    try:
        with pytest.raises(ValueError, match="already has"):
            lora.add_lora(base_pipe.unet)
    finally:
        lora.remove_lora(base_pipe.unet)


# --- SDXL through diffusers ----------------------------------------------------------------------------------------


SDXL_KW = {"num_inference_steps": 1, "height": 16, "width": 16, "output_type": "pt"}


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """Tiny SDXL: base image, a LoRA trained 2 steps (α ≠ r, so the saved config matters), saved, and loaded into a
    fresh pipeline through ``load_lora_weights``."""
    from diffusion_lab.bridge.tiny import tiny_sdxl

    pipe = tiny_sdxl()
    base = pipe("a cat", generator=_gen(), **SDXL_KW).images
    images = torch.rand(2, 3, 16, 16, generator=_gen(1)) * 2 - 1  # (2, 3, 16, 16) in [-1, 1]
    losses = lora_sdxl.train_sdxl_lora(
        pipe, images, "a photo of sks cat", steps=2, rank=4, alpha=8, lr=1e-2, gradient_accumulation_steps=1,
        gradient_checkpointing=True, progress=False,
    )  # fmt: skip
    trained = pipe("a cat", generator=_gen(), **SDXL_KW).images
    directory = tmp_path_factory.mktemp("sdxl_lora")
    path = lora_sdxl.save_sdxl_lora(pipe, directory)
    fresh = tiny_sdxl()
    fresh.load_lora_weights(directory, adapter_name="sks")
    return {"pipe": pipe, "fresh": fresh, "base": base, "trained": trained, "losses": losses, "path": path}


def test_sdxl_lora_round_trip(sdxl):
    assert len(sdxl["losses"]) == 2 and all(torch.isfinite(torch.tensor(sdxl["losses"])))
    assert (sdxl["trained"] - sdxl["base"]).abs().max() > 1e-3  # the LoRA moved
    assert not sdxl["pipe"].unet.training and not sdxl["pipe"].unet.is_gradient_checkpointing
    loaded = sdxl["fresh"]("a cat", generator=_gen(), **SDXL_KW).images
    torch.testing.assert_close(loaded, sdxl["trained"], atol=1e-5, rtol=0)

    counts = lora.count_lora_parameters(sdxl["pipe"].unet)
    full = lora.weights_file_bytes(sdxl["pipe"].unet)
    ratio = full / sdxl["path"].stat().st_size
    assert counts.ratio > 30  # 32,768 LoRA parameters against 1,360,740
    assert ratio >= 10, ratio  # about 36x here (150 kB vs 5.5 MB)


def test_sdxl_adapter_weight_zero_and_disable_give_the_base(sdxl):
    fresh = sdxl["fresh"]
    try:
        fresh.set_adapters(["sks"], adapter_weights=[0.0])
        torch.testing.assert_close(fresh("a cat", generator=_gen(), **SDXL_KW).images, sdxl["base"], atol=1e-5, rtol=0)
        fresh.set_adapters(["sks"], adapter_weights=[1.0])
        fresh.disable_lora()
        torch.testing.assert_close(fresh("a cat", generator=_gen(), **SDXL_KW).images, sdxl["base"], atol=1e-5, rtol=0)
    finally:
        fresh.enable_lora()
        fresh.set_adapters(["sks"], adapter_weights=[1.0])


def test_sdxl_fuse_then_unfuse_restores_the_base_weights(sdxl):
    fresh = sdxl["fresh"]
    weights = {k: v.clone() for k, v in fresh.unet.state_dict().items() if "base_layer" in k}
    fresh.fuse_lora()
    try:
        fused = fresh("a cat", generator=_gen(), **SDXL_KW).images
        torch.testing.assert_close(fused, sdxl["trained"], atol=1e-4, rtol=0)
        assert any(not torch.equal(fresh.unet.state_dict()[k], v) for k, v in weights.items())
    finally:
        fresh.unfuse_lora()
    state = fresh.unet.state_dict()
    for k, v in weights.items():
        torch.testing.assert_close(state[k], v, atol=1e-6, rtol=0)


def test_sdxl_bad_input():
    from diffusion_lab.bridge.tiny import tiny_sdxl

    pipe = tiny_sdxl()
    with pytest.raises(ValueError, match="rank must be >= 1"):
        lora_sdxl.add_sdxl_lora(pipe, rank=0)
    with pytest.raises(ValueError, match="empty"):
        lora_sdxl.train_sdxl_lora(pipe, [], "a cat", steps=1, progress=False)
    with pytest.raises(ValueError, match="one prompt"):
        lora_sdxl.train_sdxl_lora(pipe, torch.zeros(2, 3, 16, 16), ["a", "b", "c"], steps=1, progress=False)
    with pytest.raises(ValueError, match="no LoRA adapter"):
        lora_sdxl.save_sdxl_lora(pipe, "unused")


def test_sdxl_half_precision_base_trains_fp32_lora():
    """The 16 GB recipe's dtypes on the CPU: an fp16 U-Net (autocast + GradScaler) with fp32 LoRA parameters."""
    from diffusion_lab.bridge.tiny import tiny_sdxl

    pipe = tiny_sdxl()
    pipe.unet.to(torch.float16)
    images = torch.rand(1, 3, 16, 16, generator=_gen(2)) * 2 - 1
    losses = lora_sdxl.train_sdxl_lora(
        pipe, images, "a cat", steps=1, lr=1e-2, gradient_accumulation_steps=2, progress=False
    )
    assert torch.isfinite(torch.tensor(losses)).all()
    params = dict(pipe.unet.named_parameters())
    assert {p.dtype for n, p in params.items() if ".lora_" in n} == {torch.float32}
    assert {p.dtype for n, p in params.items() if ".lora_" not in n} == {torch.float16}
    assert max(p.abs().max() for n, p in params.items() if ".lora_B" in n) > 0  # B moved away from 0


def test_sdxl_recipe_runs_on_the_tiny_pipeline(tmp_path):
    """The notebook recipe without a GPU or hub: check_environment says tiny, load_pipeline gives the tiny SDXL,
    PIL images are resized to its 64², and the saved LoRA loads back."""
    from PIL import Image

    pictures = [Image.new("RGB", (20, 20), c) for c in ("red", "blue")]
    pipe, losses, path = lora_sdxl.sdxl_lora_recipe(
        pictures, "a photo of sks square", tmp_path / "out", steps=1, gradient_accumulation_steps=1,
        cache_dir=tmp_path / "cache", progress=False,
    )  # fmt: skip
    assert len(losses) == 1 and path.is_file()
    assert lora.count_lora_parameters(pipe.unet).lora > 0


def test_sdxl_recipe_trains_the_mnist_standin(tmp_path):
    """standin="trained" (notebook 12 without a GPU): the recipe loads the SDXL stand-in trained on MNIST (32² images,
    f = 4, its own U-Net widths), resizes PIL pictures to 32², trains on it, and the adapter changes its images; a
    wrong ``standin`` is refused before anything loads."""
    from PIL import Image

    from diffusion_lab import bridge
    from diffusion_lab.bridge.tiny import tiny_sdxl

    pictures = [Image.new("RGB", (20, 20), c) for c in ("white", "black")]
    pipe, losses, path = lora_sdxl.sdxl_lora_recipe(
        pictures, "a sks three", tmp_path / "out", steps=2, lr=1e-2, gradient_accumulation_steps=1, standin="trained",
        progress=False,
    )  # fmt: skip
    assert len(losses) == 2 and torch.isfinite(torch.tensor(losses)).all() and path.is_file()
    assert bridge.is_tiny(pipe) and pipe.default_sample_size * pipe.vae_scale_factor == 32
    assert pipe.unet.config.block_out_channels != tiny_sdxl().unet.config.block_out_channels  # not the random one
    kw = {"num_inference_steps": 2, "height": 32, "width": 32, "output_type": "pt"}
    trained = pipe("a three", generator=_gen(), **kw).images
    pipe.set_adapters(["default"], adapter_weights=[0.0])
    assert (trained - pipe("a three", generator=_gen(), **kw).images).abs().max() > 1e-3
    with pytest.raises(ValueError, match="standin"):
        lora_sdxl.sdxl_lora_recipe(pictures, "a sks three", tmp_path / "bad", steps=1, standin="mnist", progress=False)
