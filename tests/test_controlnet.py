"""ControlNet (diffusion_lab.models.controlnet): the exact no-op at initialisation, the weight copy, the frozen base, the
zero-convolution gradients, control maps, bad input, save/load, and the same rules checked in diffusers."""

from __future__ import annotations

import pytest
import torch

from diffusion_lab.maths.images import coarse_mask, edge_f1, edge_map, mask_iou
from diffusion_lab.mnist.data import load_mnist
from diffusion_lab.models import controlnet as cn
from diffusion_lab.models.unet import UNet, UNetConfig
from diffusion_lab.pipelines.controlnet import TinyControlNetPipeline, controlnet_keep
from diffusion_lab.training.controlnet import ControlNetTrainConfig, controlnet_loss, train_controlnet
from diffusion_lab.training.finetune import denoising_loss, encode_images
from diffusion_lab.training.tiny_sd_io import load_tiny_sd
from diffusion_lab.utils.errors import FileError

PROMPTS = ["a seven", "a thick two"]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def shipped():
    pipe, bins = load_tiny_sd()
    return pipe, bins


@pytest.fixture(scope="module")
def digits():
    x, y = load_mnist("test", limit=2)  # a seven and a two
    return x, y


def _randomise(module: torch.nn.Module, seed: int = 1, std: float = 0.05) -> None:
    g = _gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


# ------------------------------------------------------------------------------------------------- the U-Net hook


def test_unet_extra_residuals_none_or_zero_leave_the_output_bit_for_bit(shipped):
    unet = shipped[0].unet
    g = _gen(3)
    z, t = torch.randn(2, 4, 7, 7, generator=g), torch.tensor([100, 700])
    c, pooled = torch.randn(2, 8, 64, generator=g), torch.randn(2, 64, generator=g)
    kw = dict(encoder_hidden_states=c, pooled_text=pooled)
    skips, mid = unet.residual_shapes(7, 7)
    assert skips == [(64, 7, 7)] and mid == (64, 7, 7)
    with torch.no_grad():
        plain = unet(z, t, **kw)
        zeros = unet(z, t, **kw, down_block_additional_residuals=[torch.zeros(2, 64, 7, 7)],
                     mid_block_additional_residual=torch.zeros(2, 64, 7, 7))  # fmt: skip
        moved = unet(z, t, **kw, mid_block_additional_residual=torch.randn(2, 64, 7, 7, generator=g))
    assert torch.equal(plain, zeros)
    assert (plain - moved).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"must hold 1 tensor\(s\) of shapes \[\(2, 64, 7, 7\)\]"):
        unet(z, t, **kw, down_block_additional_residuals=[torch.zeros(2, 64, 7, 7)] * 2)
    with pytest.raises(ValueError, match="must hold 1 tensor"):
        unet(z, t, **kw, down_block_additional_residuals=[torch.zeros(2, 32, 7, 7)])
    with pytest.raises(TypeError, match="list or tuple"):
        unet(z, t, **kw, down_block_additional_residuals=torch.zeros(2, 64, 7, 7))
    with pytest.raises(ValueError, match=r"mid_block_additional_residual must have shape \(2, 64, 7, 7\)"):
        unet(z, t, **kw, mid_block_additional_residual=torch.zeros(1, 64, 7, 7))
    # a U-Net with two levels stores two skips, at 28×28 and 14×14
    two = UNet(UNetConfig(channels=(16, 32), attention_levels=(False, False), groups=4))
    assert two.residual_shapes(28, 28) == ([(16, 28, 28), (32, 14, 14)], (32, 14, 14))


# ------------------------------------------------------------------------------------- the copy and the no-op


def test_from_unet_copies_the_encoder_half_and_starts_the_zero_convs_at_zero(shipped):
    unet = shipped[0].unet
    net = cn.ControlNet.from_unet(unet)
    ours, base = net.state_dict(), unet.state_dict()
    copied = [k for k in ours if k.split(".")[0] in cn.ENCODER_MODULES]
    assert copied and all(torch.equal(ours[k], base[k]) for k in copied)
    assert {k.split(".")[0] for k in base} - set(cn.ENCODER_MODULES) == {"up", "norm_out", "conv_out"}  # decoder half
    zero = [p for m in (net.controlnet_down_blocks, net.controlnet_mid_block) for p in m.parameters()]
    assert len(zero) == 4 and all(not p.any() for p in zero)
    assert not net.controlnet_cond_embedding.conv_out.weight.any()  # Z(c; Θ_z1) of Eq. 2
    assert net.controlnet_cond_embedding.conv_in.weight.abs().sum() > 0  # the rest of the hint network is random
    with torch.no_grad():  # the copy is independent of the base
        net.conv_in.weight.add_(1.0)
    assert torch.equal(unet.conv_in.weight, base["conv_in.weight"])
    fresh = cn.ControlNet.from_unet(unet, load_weights_from_unet=False)
    assert not torch.equal(fresh.conv_in.weight, unet.conv_in.weight)


def test_zero_initialised_controlnet_reproduces_the_base_pipeline_exactly(shipped, digits):
    pipe = shipped[0]
    torch.manual_seed(0)
    controlled = TinyControlNetPipeline.from_pipe(pipe, cn.ControlNet.from_unet(pipe.unet))
    edges = edge_map(digits[0])
    kw = dict(num_inference_steps=4, return_intermediates=True)
    base = pipe(PROMPTS, generator=_gen(), **kw)
    for extra in ({}, {"guess_mode": True}, {"controlnet_conditioning_scale": 1.5}):
        out = controlled(PROMPTS, image=edges, generator=_gen(), **kw, **extra).images
        assert (out - base.images).abs().max().item() == 0.0, extra
    unguided = pipe(PROMPTS, num_inference_steps=4, guidance_scale=1.0, generator=_gen()).images
    out = controlled(PROMPTS, image=edges, num_inference_steps=4, guidance_scale=1.0, generator=_gen()).images
    assert (out - unguided).abs().max().item() == 0.0

    # with trained-looking (non-zero) weights: λ = 0 is the base model, exactly, and the guidance window decides
    # which steps are controlled (the steps outside it are the base model's)
    _randomise(controlled.controlnet)
    full = controlled(PROMPTS, image=edges, generator=_gen(), **kw)
    assert (full.images - base.images).abs().max() > 1e-3
    off = controlled(PROMPTS, image=edges, generator=_gen(), controlnet_conditioning_scale=0, **kw)
    assert torch.equal(off.images, base.images)
    late = controlled(PROMPTS, image=edges, generator=_gen(), control_guidance_start=0.5, **kw)
    early = controlled(PROMPTS, image=edges, generator=_gen(), control_guidance_end=0.5, **kw)
    assert all(torch.equal(a, b) for a, b in zip(late.intermediates[:2], base.intermediates[:2], strict=True))
    assert not torch.equal(late.intermediates[2], base.intermediates[2])
    assert all(torch.equal(a, b) for a, b in zip(early.intermediates[:2], full.intermediates[:2], strict=True))
    assert not torch.equal(early.intermediates[2], full.intermediates[2])
    assert controlnet_keep(4, 0.0, 0.5) == [1.0, 1.0, 0.0, 0.0]  # diffusers' controlnet_keep rule
    assert controlnet_keep(5, 0.2, 1.0) == [0.0, 1.0, 1.0, 1.0, 1.0]


def test_zero_convolution_gradients_reach_the_copy_from_the_second_step(shipped, digits):
    """∂L/∂W = (∂L/∂y) xᵀ ≠ 0 at W = 0, but ∂L/∂x = Wᵀ ∂L/∂y = 0: step 1 moves only the output zero convs."""
    pipe = shipped[0]
    pipe.unet.requires_grad_(False)  # frozen, as train_controlnet leaves it
    torch.manual_seed(0)
    net = cn.ControlNet.from_unet(pipe.unet)
    latents, edges = encode_images(pipe, digits[0]), edge_map(digits[0])

    def grads() -> dict[str, float]:
        net.zero_grad(set_to_none=True)
        controlnet_loss(pipe, net, latents, PROMPTS, edges, _gen(5)).backward()
        return {n: (p.grad.abs().sum().item() if p.grad is not None else 0.0) for n, p in net.named_parameters()}

    def sgd_step(lr: float = 0.1) -> None:  # θ ← θ − lr·∂L/∂θ (plain SGD, written out)
        with torch.no_grad():
            for p in net.parameters():
                if p.grad is not None:
                    p.sub_(lr * p.grad)

    g1 = grads()
    assert g1["controlnet_mid_block.weight"] > 0 and g1["controlnet_down_blocks.0.weight"] > 0
    assert g1["mid2.conv2.weight"] == 0 and g1["conv_in.weight"] == 0  # blocked by W = 0
    assert g1["controlnet_cond_embedding.conv_out.weight"] == 0
    sgd_step()
    g2 = grads()
    assert g2["mid2.conv2.weight"] > 0 and g2["controlnet_cond_embedding.conv_out.weight"] > 0
    assert g2["controlnet_cond_embedding.conv_in.weight"] == 0  # still behind the hint's zero conv
    sgd_step()
    assert grads()["controlnet_cond_embedding.conv_in.weight"] > 0


def test_loss_is_the_base_models_loss_and_training_leaves_the_base_frozen(shipped):
    pipe, bins = shipped
    x, y = load_mnist("train", limit=16)
    torch.manual_seed(0)
    net = cn.ControlNet.from_unet(pipe.unet)
    latents = encode_images(pipe, x[:4])
    prompts = ["a five", "", "a thick zero", "a four"]
    with torch.no_grad():
        ours = controlnet_loss(pipe, net, latents, prompts, edge_map(x[:4]), _gen(2))
        theirs = denoising_loss(pipe, latents, prompts, _gen(2))
    assert torch.equal(ours, theirs)  # same draws of t and ε, zero residuals: the same number

    frozen = {
        n: {k: v.clone() for k, v in getattr(pipe, n).state_dict().items()} for n in ("unet", "vae", "text_encoder")
    }
    cfg = ControlNetTrainConfig(steps=3, batch_size=4, num_images=16, warmup_steps=1)
    controlled, info = train_controlnet(pipe, edge_map, cfg, bins=bins, images=x, labels=y, progress=False)
    for name, state in frozen.items():
        module = getattr(pipe, name)
        assert all(torch.equal(v, module.state_dict()[k]) for k, v in state.items()), name
        assert not any(p.requires_grad for p in module.parameters())
    assert controlled.unet is pipe.unet and controlled.vae is pipe.vae  # shared, not copied
    assert len(info["losses"]) == 3 and all(torch.isfinite(torch.tensor(info["losses"])))
    assert controlled.controlnet.controlnet_mid_block.weight.abs().sum() > 0  # the zero convs moved
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        ControlNetTrainConfig(steps=0)
    schedule = ControlNetTrainConfig(steps=100, lr=1.0, warmup_steps=10, final_lr_fraction=0.1)
    assert schedule.lr_at(0) == 0.1 and schedule.lr_at(10) == 1.0 and schedule.lr_at(100) == pytest.approx(0.1)
    assert schedule.lr_at(99) > schedule.lr_at(100)  # the same convention as every loop: the floor after the last step


# ------------------------------------------------------------------------------------------------ control maps


def test_control_maps_and_agreement_measures():
    x = -torch.ones(2, 1, 28, 28)
    x[0, 0, 8:20, 8:20] = 1.0  # a white square
    edges = edge_map(x)
    assert set(edges.unique().tolist()) <= {0.0, 1.0} and edges[1].sum() == 0
    ring = edges[0, 0].nonzero()
    assert ring[:, 0].min() >= 7 and ring[:, 0].max() <= 20 and edges[0, 0, 11:17, 11:17].sum() == 0  # outline only
    assert 40 <= edges[0].sum() <= 56  # about one pixel wide (a 12×12 square's outline has 44 pixels)
    mask = coarse_mask(x)
    assert mask[0, 0, 8:20, 8:20].all() and mask[1].sum() == 0 and mask[0].sum() == 144
    assert edge_f1(edges, edges).tolist() == [1.0, 0.0]  # an empty map agrees with nothing
    shifted = edges.roll(1, dims=-1)
    assert edge_f1(shifted, edges)[0] < 0.6 and edge_f1(shifted, edges, tolerance=1)[0] == 1.0
    assert mask_iou(mask, mask)[0] == 1.0 and mask_iou(mask.roll(4, -1), mask)[0] == pytest.approx(8 / 16)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        edge_map(torch.zeros(1, 3, 28, 28))
    with pytest.raises(ValueError, match="cell must be a positive integer dividing"):
        coarse_mask(x, cell=5)


# -------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            {"image": torch.zeros(1, 1, 14, 14)},
            ValueError,
            r"the control image must be a tensor \(B or 1, 1, 28, 28\).*got 14x14 images: resize it with "
            r"torch.nn.functional.interpolate",
        ),
        ({"image": torch.zeros(1, 3, 28, 28)}, ValueError, r"it has 3 channels, not 1: make it grey"),
        ({"image": torch.zeros(3, 1, 28, 28)}, ValueError, r"holds 3 images; give 1 .* or one each \(2\)"),
        ({"image": -torch.ones(1, 1, 28, 28)}, ValueError, r"values must be in \[0, 1\].*not the images"),
        ({"image": [[0.0]]}, TypeError, r"the control image must be a tensor"),
        ({"image": None}, TypeError, "pass the control map"),
        (
            {"controlnet_conditioning_scale": -0.5},
            ValueError,
            "controlnet_conditioning_scale must be >= 0",
        ),
        ({"control_guidance_start": 0.6, "control_guidance_end": 0.6}, ValueError, "must be smaller than"),
        ({"control_guidance_end": 1.5}, ValueError, r"control_guidance_end must be <= 1"),
        ({"control_guidance_start": True}, TypeError, r"control_guidance_start must be a number"),
    ],
)
def test_bad_control_input_is_refused_clearly(shipped, kwargs, error, match):
    pipe = shipped[0]
    controlled = TinyControlNetPipeline.from_pipe(pipe, cn.ControlNet.from_unet(pipe.unet))
    kwargs = {"image": torch.zeros(1, 1, 28, 28), **kwargs}
    with pytest.raises(error, match=match):
        controlled(PROMPTS, num_inference_steps=1, **kwargs)


def test_controlnet_forward_and_pipeline_refuse_mismatches(shipped):
    pipe = shipped[0]
    net = cn.ControlNet.from_unet(pipe.unet)
    z, c, pooled = torch.zeros(2, 4, 7, 7), torch.zeros(2, 8, 64), torch.zeros(2, 64)
    with pytest.raises(ValueError, match=r"controlnet_cond must have shape \(2, 1, 28, 28\)"):
        net(z, 10, c, pooled, torch.zeros(1, 1, 28, 28))
    with pytest.raises(ValueError, match="conditioning_scale must be a finite number >= 0"):
        net(z, 10, c, pooled, torch.zeros(2, 1, 28, 28), conditioning_scale=-1.0)
    with pytest.raises(ValueError, match="exactly one of them"):
        net(z, 10, c, pooled)
    other = cn.ControlNet.from_unet(UNet(UNetConfig(in_channels=4, out_channels=4, channels=(32,), attention_levels=(
        False,), blocks_per_level=0, cross_attention_dim=64, pooled_dim=64)))  # fmt: skip
    with pytest.raises(ValueError, match=r"built for another U-Net \(channels: \(32,\) vs \(64,\)\)"):
        TinyControlNetPipeline.from_pipe(pipe, other)
    coarse = cn.ControlNet.from_unet(pipe.unet, conditioning_embedding_out_channels=(16, 32))
    with pytest.raises(ValueError, match="reduces control images 2× but the autoencoder's factor is 4"):
        TinyControlNetPipeline.from_pipe(pipe, coarse)


# ------------------------------------------------------------------------------------------------- save / load


def test_save_and_load_with_safetensors(shipped, digits, tmp_path):
    pipe = shipped[0]
    torch.manual_seed(0)
    controlled = TinyControlNetPipeline.from_pipe(pipe, cn.ControlNet.from_unet(pipe.unet))
    _randomise(controlled.controlnet)
    edges = edge_map(digits[0])
    before = controlled(PROMPTS, image=edges, num_inference_steps=3, generator=_gen()).images
    controlled.controlnet.save_pretrained(tmp_path / "cn")
    assert (tmp_path / "cn" / "model.safetensors").is_file()
    loaded = cn.ControlNet.from_pretrained(tmp_path / "cn")
    assert loaded.config == controlled.controlnet.config and not loaded.training
    controlled.save_pretrained(tmp_path / "pipe")
    again = TinyControlNetPipeline.from_pretrained(tmp_path / "pipe")
    after = again(PROMPTS, image=edges, num_inference_steps=3, generator=_gen()).images
    assert torch.equal(before, after)
    pipe.save_pretrained(tmp_path / "base")
    with pytest.raises(FileError, match="holds a TinyStableDiffusionPipeline, not a TinyControlNetPipeline"):
        TinyControlNetPipeline.from_pretrained(tmp_path / "base")


# ------------------------------------------------------------------------------------- the same rules in diffusers


def _tiny_diffusers_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=4,
    ).eval()  # fmt: skip


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_diffusers_controlnet_from_unet_follows_the_same_rules():
    from diffusers import ControlNetModel

    unet = _tiny_diffusers_unet()
    g = _gen(4)
    with torch.no_grad():  # a "trained" base: no zero-initialised layer left
        for p in unet.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16), conditioning_channels=1).eval()
    # the weight-copy rule: conv_in, time embedding, down blocks and mid block copied; zero convs zero
    for name in ("conv_in", "time_embedding", "down_blocks", "mid_block"):
        theirs, copy = getattr(unet, name).state_dict(), getattr(net, name).state_dict()
        assert theirs.keys() == copy.keys() and all(torch.equal(theirs[k], copy[k]) for k in theirs)
    assert all(not p.any() for m in (net.controlnet_down_blocks, net.controlnet_mid_block) for p in m.parameters())
    z, c = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 5, 16, generator=g)
    cond = torch.rand(2, 1, 16, 16, generator=g)
    with torch.no_grad():
        down, mid = net(z, 10, c, cond, return_dict=False)
        assert all(not r.any() for r in down) and not mid.any()  # the exact no-op at initialisation
        plain = unet(z, 10, c).sample
        added = unet(z, 10, c, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert torch.equal(plain, added)
    # one residual per skip the diffusers U-Net stores (conv_in, each resnet, each downsampler), here 4
    assert len(down) == 4 == len(net.controlnet_down_blocks)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_hint_network_equals_diffusers_conditioning_embedding():
    from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding

    ours = cn.ControlNetConditioningEmbedding(64, 1, (16, 32, 64))
    _randomise(ours, std=0.1)  # conv_out is zero at the start: give it weights to compare
    theirs = ControlNetConditioningEmbedding(64, conditioning_channels=1, block_out_channels=(16, 32, 64))
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.rand(2, 1, 28, 28, generator=_gen(6))
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert a.shape == (2, 64, 7, 7)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # guess mode: the log-spaced weights of diffusers' ControlNetModel.forward, 0.1 for the first skip, 1 for the mid
    pipe_like = cn.ControlNet(cn.ControlNetConfig(unet=UNetConfig(
        in_channels=4, out_channels=4, channels=(16,), attention_levels=(False,), groups=4, time_embed_dim=32,
        blocks_per_level=0)))  # fmt: skip
    _randomise(pipe_like)
    z, cond = torch.randn(1, 4, 7, 7, generator=_gen(7)), torch.rand(1, 1, 28, 28, generator=_gen(8))
    with torch.no_grad():
        (d1,), m1 = pipe_like(z, 5, controlnet_cond=cond)
        (d2,), m2 = pipe_like(z, 5, controlnet_cond=cond, guess_mode=True)
    torch.testing.assert_close(d2, 0.1 * d1)
    torch.testing.assert_close(m2, m1)
