"""Image variations (diffusion_lab.pipelines.variations): the conditioning path against diffusers' Stable unCLIP code, the
pipeline's behaviour, saving, training and bad input."""

from __future__ import annotations

import types

import pytest
import torch

from diffusion_lab.mnist.classifier import load_classifier
from diffusion_lab.mnist.data import load_mnist
from diffusion_lab.models.autoencoder import AutoencoderKL
from diffusion_lab.models.image_embedding import EmbeddingNormalizer, image_embedding, noise_embedding
from diffusion_lab.models.unet import UNet, UNetConfig, timestep_embedding
from diffusion_lab.pipelines.variations import TinyVariationPipeline, variation_scores
from diffusion_lab.schedulers.scheduling_ddim import DDIMScheduler
from diffusion_lab.schedulers.scheduling_ddpm import DDPMScheduler
from diffusion_lab.training.tiny_sd_io import pretrained_tiny_sd_path
from diffusion_lab.training.variations import AUG_SCHEDULE, VariationTrainConfig, train_variations, variation_recipe
from diffusion_lab.utils.errors import FileError

D = 128  # the classifier's feature dimension


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


@pytest.fixture(scope="module")
def digits():
    x, y = load_mnist("test", limit=200)
    return x, y


@pytest.fixture(scope="module")
def normalizer(classifier, digits):
    return EmbeddingNormalizer.fit(image_embedding(classifier, digits[0]))


@pytest.fixture(scope="module")
def pipe(classifier, normalizer):
    """The shipped tiny SD autoencoder and classifier with a small random U-Net (random everywhere, so the embedding
    changes the output)."""
    vae = AutoencoderKL.from_pretrained(pretrained_tiny_sd_path() / "vae").requires_grad_(False)
    torch.manual_seed(0)
    unet = UNet(
        UNetConfig(
            in_channels=4, out_channels=4, channels=(16,), blocks_per_level=0, attention_levels=(False,), groups=4,
            time_embed_dim=32, heads=2, pooled_dim=2 * D,
        )
    ).eval()  # fmt: skip
    g = _gen(1)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          prediction_type="v_prediction", timestep_spacing="trailing")  # fmt: skip
    return TinyVariationPipeline(vae, classifier, normalizer, unet, sched, DDPMScheduler(**AUG_SCHEDULE))


# ------------------------------------------------------------------------------------ the conditioning path


def test_image_embedding_is_the_classifiers_penultimate_features(classifier, digits):
    x = digits[0][:8]
    with torch.no_grad():
        expected = classifier.eval().features(x)
    torch.testing.assert_close(image_embedding(classifier, x), expected, rtol=0, atol=1e-5)


def test_normalizer_fit_scale_unscale_and_save(normalizer, classifier, digits, tmp_path):
    f = image_embedding(classifier, digits[0])
    u = normalizer.scale(f)
    torch.testing.assert_close(u.mean(0), torch.zeros(D), rtol=0, atol=1e-4)
    torch.testing.assert_close(u.std(0), torch.ones(D), rtol=0, atol=1e-4)
    torch.testing.assert_close(normalizer.unscale(u), f, rtol=0, atol=1e-4)
    normalizer.save_pretrained(tmp_path / "norm")
    loaded = EmbeddingNormalizer.from_pretrained(tmp_path / "norm")
    assert torch.equal(loaded.mean, normalizer.mean) and torch.equal(loaded.std, normalizer.std)
    with pytest.raises(ValueError, match=r"\(B, 128\)"):
        normalizer.scale(f[:, :10])
    with pytest.raises(ValueError, match="N >= 2"):
        EmbeddingNormalizer.fit(f[:1])


@pytest.mark.parametrize("noise_level", [0, 1, 250, 999])
def test_noise_embedding_equals_diffusers_stable_unclip(normalizer, classifier, digits, noise_level):
    """Our c = [f_k ; e(k)] against diffusers' own StableUnCLIPImg2ImgPipeline.noise_image_embeddings, run with
    a StableUnCLIPImageNormalizer holding our μ, σ and SD 2.1 unCLIP's image_noising_scheduler."""
    import diffusers
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer

    f = image_embedding(classifier, digits[0][:6])  # (6, D)
    eps = torch.randn(f.shape, generator=_gen(noise_level))
    theirs_norm = StableUnCLIPImageNormalizer(embedding_dim=D)
    with torch.no_grad():
        theirs_norm.mean.copy_(normalizer.mean)
        theirs_norm.std.copy_(normalizer.std)
    theirs_sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    host = types.SimpleNamespace(image_normalizer=theirs_norm, image_noising_scheduler=theirs_sched)
    with torch.no_grad():
        theirs = diffusers.StableUnCLIPImg2ImgPipeline.noise_image_embeddings(
            host, image_embeds=f, noise_level=noise_level, noise=eps
        )
        ours = noise_embedding(f, noise_level, normalizer, DDPMScheduler(**AUG_SCHEDULE).alphas_cumprod, noise=eps)
    assert ours.shape == theirs.shape == (6, 2 * D)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-6)


def test_noise_embedding_per_example_levels_and_generator(normalizer):
    ab = DDPMScheduler(**AUG_SCHEDULE).alphas_cumprod
    f = normalizer.unscale(torch.randn(3, D, generator=_gen()))
    eps = torch.randn(3, D, generator=_gen(1))
    mixed = noise_embedding(f, torch.tensor([0, 500, 999]), normalizer, ab, noise=eps)
    for i, k in enumerate((0, 500, 999)):
        torch.testing.assert_close(mixed[i], noise_embedding(f[i : i + 1], k, normalizer, ab, noise=eps[i : i + 1])[0])
    assert torch.equal(
        noise_embedding(f, 7, normalizer, ab, generator=_gen(5)),
        noise_embedding(f, 7, normalizer, ab, generator=_gen(5)),
    )
    # k = 0 keeps the embedding almost exactly (ᾱ_0 ≈ 1); k = 999 leaves almost only noise
    torch.testing.assert_close(mixed[0, :D], f[0], rtol=0, atol=0.05 * normalizer.std.max().item())
    with pytest.raises(ValueError, match=r"between 0 and 999"):
        noise_embedding(f, 1000, normalizer, ab)
    with pytest.raises(ValueError, match=r"between 0 and 999"):
        noise_embedding(f, torch.tensor([0, -1, 3]), normalizer, ab)


def test_pooled_embed_is_diffusers_class_embedding_added_to_the_time_embedding():
    """Our U-Net adds pooled_embed(c) to the time embedding, as UNet2DConditionModel adds class_embedding(class_labels)
    with class_embed_type="simple_projection" (a Linear); Stable unCLIP's "projection" is a two-layer MLP."""
    import diffusers
    from diffusers.models.embeddings import TimestepEmbedding

    torch.manual_seed(0)
    ours = UNet(UNetConfig(in_channels=4, out_channels=4, channels=(8,), blocks_per_level=0, attention_levels=(False,),
                           groups=4, time_embed_dim=32, heads=2, pooled_dim=12)).eval()  # fmt: skip
    kw = dict(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8,), layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), cross_attention_dim=8,
        projection_class_embeddings_input_dim=12,
    )  # fmt: skip
    theirs = diffusers.UNet2DConditionModel(class_embed_type="simple_projection", **kw).eval()
    assert isinstance(theirs.class_embedding, torch.nn.Linear)
    c = torch.randn(3, 12, generator=_gen(2))
    t = torch.tensor([10, 500, 900])
    with torch.no_grad():
        torch.nn.init.normal_(ours.pooled_embed.weight)  # the zero init would make the check trivial
        torch.nn.init.normal_(ours.pooled_embed.bias)
        theirs.class_embedding.load_state_dict(ours.pooled_embed.state_dict())  # both Linear(12 → 32)
        x = torch.randn(3, 4, 8, 8, generator=_gen(3))
        seen = {}
        hooks = [
            ours.mid1.register_forward_hook(lambda m, a, o: seen.__setitem__("ours", a[1])),
            theirs.down_blocks[0].resnets[0].register_forward_hook(lambda m, a, o: seen.__setitem__("theirs", a[1])),
        ]
        ours(x, t, pooled_text=c)
        theirs(x, t, encoder_hidden_states=torch.zeros(3, 1, 8), class_labels=c)
        for h in hooks:
            h.remove()
        ours_time = ours.time_mlp(timestep_embedding(t, 8))
        theirs_time = theirs.time_embedding(theirs.time_proj(t))
        class_emb = ours.pooled_embed(c)
    torch.testing.assert_close(theirs.get_class_embed(x, c), class_emb)
    torch.testing.assert_close(seen["ours"], ours_time + class_emb)  # emb = MLP(e(t)) + W·c + b
    torch.testing.assert_close(seen["theirs"], theirs_time + class_emb)  # the same rule in diffusers
    proj = diffusers.UNet2DConditionModel(class_embed_type="projection", **kw)
    assert isinstance(proj.class_embedding, TimestepEmbedding)  # Stable unCLIP: Linear → SiLU → Linear


# ------------------------------------------------------------------------------------------------ the pipeline


def test_pipeline_shapes_order_determinism_and_guidance(pipe, digits):
    x = digits[0][:2]
    out = pipe(x, num_inference_steps=3, guidance_scale=2.0, num_images_per_prompt=3, generator=_gen())
    assert out.images.shape == (6, 1, 28, 28) and out.latents.shape == (6, 4, 7, 7)
    assert out.images.min() >= -1 and out.images.max() <= 1
    again = pipe(x, num_inference_steps=3, guidance_scale=2.0, num_images_per_prompt=3, generator=_gen())
    assert torch.equal(out.images, again.images)
    # reference-major: the first 3 rows are reference 0's; alone, reference 0 draws different noise, so compare the
    # conditioning through precomputed embeddings with fixed latents instead
    z = torch.randn(6, 4, 7, 7, generator=_gen(9))
    f = pipe.encode_image(x)
    both = pipe(image_embeds=f, num_images_per_prompt=3, num_inference_steps=3, guidance_scale=1.0, latents=z,
                output_type="latent", generator=_gen()).latents  # fmt: skip
    first = pipe(image_embeds=f[:1].repeat(2, 1), num_images_per_prompt=3, num_inference_steps=3, guidance_scale=1.0,
                 latents=z, output_type="latent", generator=_gen()).latents  # fmt: skip
    torch.testing.assert_close(both[:3], first[:3])
    assert not torch.allclose(both[3:], first[3:])
    # w = 0 is the unconditional model: the reference no longer matters
    a = pipe(x[:1], num_inference_steps=3, guidance_scale=0.0, generator=_gen(4)).images
    b = pipe(x[1:], num_inference_steps=3, guidance_scale=0.0, generator=_gen(4)).images
    torch.testing.assert_close(a, b)
    assert not torch.allclose(
        pipe(x[:1], num_inference_steps=3, guidance_scale=1.0, generator=_gen(4)).images,
        pipe(x[1:], num_inference_steps=3, guidance_scale=1.0, generator=_gen(4)).images,
    )
    pil = pipe(x[:1], num_inference_steps=2, output_type="pil", generator=_gen()).images
    assert len(pil) == 1 and pil[0].size == (28, 28)


def test_pipeline_save_and_load_round_trip(pipe, digits, tmp_path):
    pipe.save_pretrained(tmp_path / "var")
    loaded = TinyVariationPipeline.from_pretrained(tmp_path / "var")
    assert sorted(p.name for p in (tmp_path / "var").rglob("*.safetensors")) == [
        "mnist_classifier.safetensors", "model.safetensors", "model.safetensors", "model.safetensors",
    ]  # fmt: skip
    kw = dict(num_inference_steps=3, guidance_scale=2.0, noise_level=100, num_images_per_prompt=2)
    assert torch.equal(
        pipe(digits[0][:2], generator=_gen(), **kw).images, loaded(digits[0][:2], generator=_gen(), **kw).images
    )
    with pytest.raises(FileError, match="model_index.json"):
        TinyVariationPipeline.from_pretrained(tmp_path)


def test_pipeline_bad_input(pipe, digits):
    x = digits[0][:2]
    with pytest.raises(ValueError, match=r"image\[None, None\]"):
        pipe(x[0, 0])
    with pytest.raises(ValueError, match="3 channels"):
        pipe(x.repeat(1, 3, 1, 1))
    with pytest.raises(ValueError, match="empty batch"):
        pipe(x[:0])
    with pytest.raises(ValueError, match="to_unit_range"):
        pipe(((x + 1) * 127.5).to(torch.uint8))
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        pipe((x + 1) * 127.5)
    with pytest.raises(ValueError, match="between 0 and 999"):
        pipe(x, noise_level=1000)
    with pytest.raises(ValueError, match="between 0 and 999"):
        pipe(x, noise_level=-1)
    with pytest.raises(ValueError, match="num_inference_steps must be >= 1"):
        pipe(x, num_inference_steps=0)
    with pytest.raises(TypeError, match="num_inference_steps must be an integer"):
        pipe(x, num_inference_steps=True)
    with pytest.raises(ValueError, match="guidance_scale must be >= 0"):
        pipe(x, guidance_scale=-1.0)
    with pytest.raises(TypeError, match="image must be a tensor"):
        pipe(x.tolist())
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        pipe(x, num_images_per_prompt=0)
    with pytest.raises(ValueError, match="either image"):
        pipe(x, image_embeds=torch.zeros(2, D))
    with pytest.raises(ValueError, match="either image"):
        pipe()
    with pytest.raises(ValueError, match=r"\(B, 128\)"):
        pipe(image_embeds=torch.zeros(2, 10))


# ---------------------------------------------------------------------------------------- training and scoring


def test_train_variations_quick(classifier, digits):
    vae = AutoencoderKL.from_pretrained(pretrained_tiny_sd_path() / "vae")
    unet_cfg, cfg = variation_recipe(steps=3)
    assert unet_cfg.pooled_dim == 2 * D and unet_cfg.cross_attention_dim is None
    cfg = VariationTrainConfig(steps=3, batch_size=8, warmup_steps=1)
    seen = []
    res = train_variations(vae, classifier, images=digits[0][:32], train_config=cfg, progress=False,
                           callback=lambda step, loss: seen.append(step))  # fmt: skip
    assert len(res.losses) == 3 and all(torch.isfinite(torch.tensor(res.losses))) and seen == [1, 2, 3]
    assert res.info["steps"] == 3 and res.info["num_images"] == 32
    out = res.pipeline(digits[0][:1], num_inference_steps=2, generator=_gen())
    assert out.images.shape == (1, 1, 28, 28)
    with pytest.raises(ValueError, match="pooled_dim"):
        train_variations(vae, classifier, images=digits[0][:32], unet_config=UNetConfig(pooled_dim=8), train_config=cfg)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        VariationTrainConfig(steps=0)


def test_variation_scores_on_copies_and_real_digits(classifier, normalizer, digits):
    x, y = digits
    refs = x[:4]
    copies = refs.repeat_interleave(3, 0)  # 3 identical "variations" per reference
    s = variation_scores(refs, copies, classifier, normalizer, labels=y[:4])
    assert s["agreement"] == 1.0 and s["distance"] == 0.0 and s["spread"] == 0.0
    assert s["cosine"] == pytest.approx(1.0, abs=1e-5)
    others = x[4:16]  # 3 unrelated digits per reference
    t = variation_scores(refs, others, classifier, normalizer, labels=y[:4])
    assert t["distance"] > 0.3 and t["spread"] > 0.3 and t["cosine"] < 0.9
    with pytest.raises(ValueError, match="n per reference"):
        variation_scores(refs, x[:5], classifier, normalizer)
