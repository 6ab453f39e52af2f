"""The text-conditioned U-Net: CrossAttention and SpatialTransformer equal diffusers' modules, attention maps, inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffusion_lab.models.unet import CrossAttention, SpatialTransformer, UNet, UNetConfig, record_attention


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Random weights everywhere (the zero-initialised output layers would hide errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _to_diffusers_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        k = k.replace("attn1.to_out.", "attn1.to_out.0.").replace("attn2.to_out.", "attn2.to_out.0.")
        k = k.replace("ff.proj_in.", "ff.net.0.proj.").replace("ff.proj_out.", "ff.net.2.")
        if k.split(".")[0] in ("norm1", "norm2", "norm3", "attn1", "attn2", "ff"):
            k = "transformer_blocks.0." + k
        out[k] = v
    return out


def test_cross_attention_equals_scaled_dot_product_attention():
    torch.manual_seed(0)
    attn = CrossAttention(32, 16, heads=4)
    _randomise(attn)
    x, c = torch.randn(2, 10, 32), torch.randn(2, 7, 16)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False  # the second prompt is padded after 4 tokens
    q = attn.to_q(x).reshape(2, 10, 4, 8).transpose(1, 2)
    k = attn.to_k(c).reshape(2, 7, 4, 8).transpose(1, 2)
    v = attn.to_v(c).reshape(2, 7, 4, 8).transpose(1, 2)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    ref = attn.to_out(ref.transpose(1, 2).reshape(2, 10, 32))
    torch.testing.assert_close(attn(x, c, mask), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # diffusers' own deprecation notice on import
def test_spatial_transformer_equals_diffusers_transformer2d():
    from diffusers import Transformer2DModel

    ours = SpatialTransformer(32, context_dim=16, heads=4, groups=8)
    _randomise(ours)
    ref = Transformer2DModel(
        num_attention_heads=4, attention_head_dim=8, in_channels=32, cross_attention_dim=16, norm_num_groups=8
    ).eval()
    missing = ref.load_state_dict(_to_diffusers_keys(ours.state_dict()), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    x, c = torch.randn(3, 32, 7, 7), torch.randn(3, 5, 16)
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=c).sample
        got = ours(x, c)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_padded_context_tokens_get_no_attention_and_do_not_matter():
    attn = CrossAttention(16, 8, heads=2)
    _randomise(attn, 1)
    x, c = torch.randn(1, 6, 16), torch.randn(1, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    attn.record = True
    out = attn(x, c, mask)
    probs = attn.attention_probs  # (1, 2, 6, 5)
    assert probs.shape == (1, 2, 6, 5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 2, 6))
    assert probs[..., 3:].abs().max() == 0
    c2 = c.clone()
    c2[:, 3:] = 100.0  # whatever sits in the padding
    torch.testing.assert_close(attn(x, c2, mask), out)


def _text_unet(**kw) -> UNet:
    cfg = UNetConfig(
        in_channels=4,
        out_channels=4,
        channels=(32, 64),
        attention_levels=(False, True),
        cross_attention_dim=16,
        pooled_dim=16,
        groups=8,
        **kw,
    )
    return UNet(cfg)


def test_text_unet_shapes_and_dependence_on_the_prompt():
    torch.manual_seed(0)
    unet = _text_unet()
    _randomise(unet, 2)
    x, c, pooled = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 16), torch.randn(2, 16)
    out = unet(x, torch.tensor([10, 500]), encoder_hidden_states=c, pooled_text=pooled)
    assert out.shape == x.shape
    other = unet(x, torch.tensor([10, 500]), encoder_hidden_states=c.flip(0), pooled_text=pooled)
    assert (out - other).abs().amax(dim=(1, 2, 3)).min() > 1e-4  # each sample listens to its own prompt
    other_pooled = unet(x, torch.tensor([10, 500]), encoder_hidden_states=c, pooled_text=pooled.flip(0))
    assert (out - other_pooled).abs().max() > 1e-4


def test_record_attention_collects_word_maps_and_stops():
    torch.manual_seed(0)
    unet = _text_unet()
    _randomise(unet, 3)
    x, c, pooled = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 16), torch.randn(2, 16)
    with record_attention(unet) as maps:
        unet(x, 100, encoder_hidden_states=c, pooled_text=pooled)
    # one map per cross-attention: level 1 down (1 block), mid, level 1 up (2 blocks)
    assert len(maps) == 4
    for name, probs in maps.items():
        assert name.endswith("attn2")
        assert probs.shape[0] == 2 and probs.shape[-1] == 6  # (B, heads, H·W, L)
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    modules = [m for m in unet.modules() if isinstance(m, CrossAttention)]
    assert all(not m.record and m.attention_probs is None for m in modules)
    unet(x, 100, encoder_hidden_states=c, pooled_text=pooled)
    assert all(m.attention_probs is None for m in modules)


def test_text_unet_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    unet = _text_unet()
    _randomise(unet, 4)
    unet.save_pretrained(tmp_path / "unet")
    again = UNet.from_pretrained(tmp_path / "unet")
    assert again.config.cross_attention_dim == 16 and again.config.pooled_dim == 16
    x, c, pooled = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 16), torch.randn(1, 16)
    torch.testing.assert_close(
        again(x, 7, encoder_hidden_states=c, pooled_text=pooled),
        unet(x, 7, encoder_hidden_states=c, pooled_text=pooled),
    )


def test_text_unet_bad_input():
    unet = _text_unet()
    x, c, pooled = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 16), torch.randn(2, 16)
    with pytest.raises(ValueError, match="pass encoder_hidden_states"):
        unet(x, 1, pooled_text=pooled)
    with pytest.raises(ValueError, match=r"encoder_hidden_states must have shape \(2, L, 16\)"):
        unet(x, 1, encoder_hidden_states=torch.randn(2, 6, 8), pooled_text=pooled)
    with pytest.raises(ValueError, match="encoder_attention_mask must have shape"):
        unet(x, 1, encoder_hidden_states=c, encoder_attention_mask=torch.ones(2, 5), pooled_text=pooled)
    with pytest.raises(ValueError, match=r"pooled_text must have shape \(2, 16\)"):
        unet(x, 1, encoder_hidden_states=c)
    plain = UNet(UNetConfig(channels=(32, 64), attention_levels=(False, True)))
    with pytest.raises(ValueError, match="no text cross-attention"):
        plain(torch.randn(1, 1, 8, 8), 1, encoder_hidden_states=torch.randn(1, 2, 16))
    with pytest.raises(ValueError, match="cross_attention_dim must be None or >= 1"):
        UNetConfig(cross_attention_dim=0)
