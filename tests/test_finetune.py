"""Textual inversion, DreamBooth and the example-image folder (diffusion_lab.training.finetune), and added tokens."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_lab.mnist.data import load_mnist
from diffusion_lab.models.text_encoder import TextEncoder, TextEncoderConfig, WordTokenizer
from diffusion_lab.training.finetune import (
    add_placeholder_token,
    aspect_ratio,
    copy_pipeline,
    denoising_loss,
    dreambooth,
    encode_images,
    load_concept_images,
    load_learned_embeds,
    save_concept_images,
    save_learned_embeds,
    textual_inversion,
)
from diffusion_lab.training.tiny_sd_io import load_tiny_sd


@pytest.fixture(scope="module")
def shipped():
    pipe, _ = load_tiny_sd()
    return pipe


@pytest.fixture(scope="module")
def wide_threes():
    """The 5 widest threes of the first 3,000 MNIST training images (aspect 0.84-0.94; MNIST's median is 0.56)."""
    x, y = load_mnist("train", limit=3000)
    threes = x[y == 3]
    return threes[aspect_ratio(threes).argsort(descending=True)[:5]]


# ------------------------------------------------------------------------------------------------ added tokens


def test_added_tokens_are_kept_whole_and_saved(tmp_path):
    tok = WordTokenizer.from_texts([])
    assert tok.tokenize("a <wide> three") == ["a", "wide", "three"]  # unknown placeholder: brackets are punctuation
    n = tok.vocab_size
    assert tok.add_tokens(["<wide>", "sks", "<wide>"]) == 2
    assert tok.add_tokens("sks") == 0  # already there: skipped, as transformers does
    assert tok.tokenize("A <Wide> sks three!") == ["a", "<wide>", "sks", "three"]
    assert tok("a <wide> three")["input_ids"][0, 2].item() == n
    tok.save_pretrained(tmp_path)
    assert WordTokenizer.from_pretrained(tmp_path).vocab == tok.vocab
    with pytest.raises(ValueError, match="angle brackets"):
        tok.add_tokens(["Two Words"])


def test_resize_token_embeddings_keeps_rows_and_starts_new_ones_at_the_mean():
    torch.manual_seed(0)
    enc = TextEncoder(TextEncoderConfig(vocab_size=10, hidden_size=8, num_heads=2))
    old = enc.token_embedding.weight.detach().clone()
    enc.resize_token_embeddings(12)
    w = enc.token_embedding.weight
    assert enc.config.vocab_size == 12 and w.shape == (12, 8)
    assert torch.equal(w[:10], old)
    torch.testing.assert_close(w[10], old.mean(0))
    with pytest.raises(ValueError, match="only added"):
        enc.resize_token_embeddings(5)


def test_placeholder_token_bad_input(shipped):
    pipe = copy_pipeline(shipped)
    add_placeholder_token(pipe, "<wide>", "large")
    with pytest.raises(ValueError, match="already in the vocabulary"):
        add_placeholder_token(pipe, "<wide>", "large")
    with pytest.raises(ValueError, match="angle brackets"):
        add_placeholder_token(pipe, "wide", "large")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        add_placeholder_token(pipe, "<new>", "gigantic")


# ------------------------------------------------------------------------------------------------ image folder


def test_concept_folder_round_trip(tmp_path, wide_threes):
    save_concept_images(wide_threes, tmp_path)
    loaded = load_concept_images(tmp_path)
    assert loaded.shape == (5, 1, 28, 28)
    assert (loaded - wide_threes).abs().max() <= 1 / 127.5 + 1e-6  # 8-bit PNG rounding only


def test_concept_folder_converts_colour_size_and_dark_ink(tmp_path, wide_threes):
    digit = ((wide_threes[0, 0] + 1) * 127.5).round().byte().numpy()  # (28, 28) light ink on black
    rgb = np.stack([255 - digit] * 3, axis=-1)  # dark ink on white, colour
    Image.fromarray(rgb, mode="RGB").resize((56, 56), Image.Resampling.LANCZOS).save(tmp_path / "scan.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = load_concept_images(tmp_path)
    said = " ".join(str(w.message) for w in caught)
    assert "converted to grey" in said and "resized to 28×28" in said and "inverted" in said
    assert x.shape == (1, 1, 28, 28)
    assert (x - wide_threes[:1]).abs().mean() < 0.1  # the same digit back, up to the 2× round trip


def test_concept_folder_bad_input(tmp_path, wide_threes):
    with pytest.raises(ValueError, match="not a folder"):
        load_concept_images(tmp_path / "missing")
    with pytest.raises(ValueError, match="is empty"):
        load_concept_images(tmp_path)
    save_concept_images(wide_threes[:2], tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"not images: \['notes.txt'\]"):
        load_concept_images(tmp_path)
    (tmp_path / "notes.txt").unlink()
    Image.new("L", (28, 40)).save(tmp_path / "tall.png")
    with pytest.raises(ValueError, match="must be square"):
        load_concept_images(tmp_path)


# ------------------------------------------------------------------------------------------------ the loss


def test_denoising_loss_is_the_v_prediction_loss_written_out(shipped):
    z = encode_images(shipped, load_mnist("train", limit=4)[0])  # (4, 4, 7, 7)
    prompts = ["a three", "a thick three", "", "a small seven"]
    per_example = denoising_loss(shipped, z, prompts, torch.Generator().manual_seed(0), reduce=False)
    # the same draws (t first, then ε) and the loss by hand: z_t = √ᾱ z + √(1−ᾱ) ε, target v = √ᾱ ε − √(1−ᾱ) z
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 1000, (4,), generator=g)
    eps = torch.randn(z.shape, generator=g)
    a = shipped.scheduler.alphas_cumprod.float()[t].reshape(4, 1, 1, 1)
    c, mask, pooled = shipped.encode_prompt(prompts)
    with torch.no_grad():
        out = shipped.unet(a.sqrt() * z + (1 - a).sqrt() * eps, t, encoder_hidden_states=c,
                           encoder_attention_mask=mask, pooled_text=pooled)  # fmt: skip
    assert shipped.scheduler.config["prediction_type"] == "v_prediction"
    want = ((out - (a.sqrt() * eps - (1 - a).sqrt() * z)) ** 2).mean(dim=(1, 2, 3))  # (4,)
    torch.testing.assert_close(per_example.detach(), want, rtol=1e-5, atol=1e-6)
    mean = denoising_loss(shipped, z, prompts, torch.Generator().manual_seed(0))
    torch.testing.assert_close(mean.detach(), want.mean(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one prompt per latent"):
        denoising_loss(shipped, z, ["a three"], torch.Generator())


# ------------------------------------------------------------------------------------------------ textual inversion


def test_textual_inversion_learns_wide_and_moves_only_its_row(shipped, wide_threes, tmp_path):
    pipe = copy_pipeline(shipped)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    table_before = pipe.text_encoder.token_embedding.weight.detach().clone()
    result = textual_inversion(pipe, wide_threes, "<wide>", "large", steps=100, lr=0.1, progress=False)
    table = pipe.text_encoder.token_embedding.weight
    assert torch.equal(table[: len(table_before)], table_before)  # every old word untouched
    assert not torch.equal(result.embedding, table_before[pipe.tokenizer.token_to_id["large"]])
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())  # the U-Net frozen

    def widths(p, prompt):  # aspect of 64 samples, same noise for both prompts
        g = torch.Generator().manual_seed(0)
        return aspect_ratio(p([prompt] * 64, num_inference_steps=10, guidance_scale=3.0, generator=g).images)

    base, learned = widths(pipe, "a three"), widths(pipe, "a <wide> three")
    # measured: median 0.64 → 0.79, share wider than 0.85 (the examples' range) 0.00 → 0.30
    assert learned.median() > base.median() + 0.08
    assert (learned > 0.85).float().mean() >= (base > 0.85).float().mean() + 0.15

    path = save_learned_embeds(pipe, "<wide>", tmp_path / "learned_embeds.safetensors")
    fresh = copy_pipeline(shipped)
    assert load_learned_embeds(fresh, path) == ["<wide>"]
    torch.testing.assert_close(fresh.encode_prompt("a <wide> three")[0], pipe.encode_prompt("a <wide> three")[0])


def test_textual_inversion_bad_input(shipped, wide_threes):
    pipe = copy_pipeline(shipped)
    with pytest.raises(ValueError, match="non-empty"):
        textual_inversion(pipe, wide_threes[:0], "<x>", "three", steps=1)
    with pytest.raises(ValueError, match="steps must be"):
        textual_inversion(pipe, wide_threes, "<x>", "three", steps=0)
    with pytest.raises(ValueError, match="template"):
        textual_inversion(pipe, wide_threes, "<x>", "three", templates=["a three"], steps=1)


# ------------------------------------------------------------------------------------------------ DreamBooth


def test_dreambooth_trains_the_unet_only(shipped, wide_threes):
    pipe = copy_pipeline(shipped)
    text_before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    unet_before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    result = dreambooth(pipe, wide_threes[:1], class_images=wide_threes[1:], steps=3, batch_size=2, progress=False)
    assert len(result.instance_losses) == len(result.prior_losses) == 3
    assert "sks" in pipe.tokenizer.token_to_id and "sks" not in shipped.tokenizer.token_to_id  # the copy only
    changed = [k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, unet_before[k])]
    assert changed
    text_after = pipe.text_encoder.state_dict()
    assert all(torch.equal(text_after[k][: len(v)], v) for k, v in text_before.items())  # only a row was added
    assert all(torch.equal(v, shipped.unet.state_dict()[k]) for k, v in unet_before.items())  # the original intact


def test_dreambooth_step_weights_the_prior_term_by_lambda(shipped, wide_threes):
    """One DreamBooth step with λ = 0.5 takes the gradient of L_instance + 0.5·L_prior (Ruiz et al. Eq. 2),
    recomputed here on a fresh copy with the same draws (seed 0: instance indices, t, ε, then class indices, t', ε')."""
    images, class_images, batch = wide_threes[:2], wide_threes[2:], 2
    pipe = copy_pipeline(shipped)
    result = dreambooth(pipe, images, class_images=class_images, prior_weight=0.5, steps=1, batch_size=batch,
                        seed=0, progress=False)  # fmt: skip
    got = [p.grad.clone() for p in pipe.unet.parameters()]

    ref = copy_pipeline(shipped)  # the same state dreambooth starts from: "sks" added, its row at the mean
    ref.tokenizer.add_tokens(["sks"])
    ref.text_encoder.resize_token_embeddings(ref.tokenizer.vocab_size)
    ref.text_encoder.eval().requires_grad_(False)
    unet = ref.unet.train().requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(images), (batch,), generator=g)
    instance = denoising_loss(ref, encode_images(ref, images)[idx], ["a sks three"] * batch, g)
    jdx = torch.randint(0, len(class_images), (batch,), generator=g)
    prior = denoising_loss(ref, encode_images(ref, class_images)[jdx], ["a three"] * batch, g)
    assert result.instance_losses == pytest.approx([instance.item()], rel=1e-5)  # the same draws
    assert result.prior_losses == pytest.approx([prior.item()], rel=1e-5)
    params = list(unet.parameters())
    g_inst = torch.autograd.grad(instance, params, retain_graph=True)
    g_prior = torch.autograd.grad(prior, params)
    want = [a + 0.5 * b for a, b in zip(g_inst, g_prior, strict=True)]  # ∇(L_inst + 0.5·L_prior)
    with_weight_1 = [a + b for a, b in zip(g_inst, g_prior, strict=True)]

    def rel_err(grads):  # the largest error of any tensor, relative to that tensor's largest entry
        return max(
            (x - w).abs().max().item() / w.abs().max().clamp_min(1e-12).item() for x, w in zip(got, grads, strict=True)
        )

    err, err_1 = rel_err(want), rel_err(with_weight_1)
    assert err < 1e-4, (
        f"the step's gradient is not that of L_inst + 0.5·L_prior (relative error {err:.3g}, "
        f"against L_inst + 1·L_prior {err_1:.3g})"
    )
    assert err_1 > 1e-2  # λ = 0.5 and λ = 1 are told apart


def test_dreambooth_bad_input(shipped, wide_threes):
    pipe = copy_pipeline(shipped)
    with pytest.raises(ValueError, match="rare token"):
        dreambooth(pipe, wide_threes, instance_prompt="a three", steps=1)
    with pytest.raises(ValueError, match="prior_weight"):
        dreambooth(pipe, wide_threes, class_images=wide_threes, prior_weight=-1.0, steps=1)
