"""Issue 21, prompts / data loaders / file reading: warnings for cut and unreadable prompts, FileError for damaged
JSON, transparent and 16-bit concept images, NumPy / torch scalars for counts."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_lab.bridge.tiny import tiny_clip_tokenizer
from diffusion_lab.mnist import captions, classifier, data, metrics
from diffusion_lab.models.text_encoder import (
    PromptTruncatedWarning,
    PromptWarning,
    TextEncoder,
    TextEncoderConfig,
    UnknownTokenWarning,
    WordTokenizer,
)
from diffusion_lab.training import finetune, tiny_sd_io
from diffusion_lab.utils import checkpoint
from diffusion_lab.utils.errors import FileError


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer.from_texts(["a thick slanted small seven"], model_max_length=8)


def _caught(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, [w for w in caught if issubclass(w.category, PromptWarning)]


# ------------------------------------------------------------------------------------------------ prompts


@pytest.mark.parametrize(
    ("call", "category", "expected"),
    [
        (lambda t: t("a thick slanted small seven seven seven"), PromptTruncatedWarning,
         "prompt 0 is longer than the tokenizer's 8 tokens: dropped 'seven'"),
        (lambda t: t(["a seven", "a thick thin small large upright slanted seven"]), PromptTruncatedWarning,
         "prompt 1 is longer than the tokenizer's 8 tokens: dropped 'slanted seven'"),
        (lambda t: t.encode("a thick slanted small seven seven seven seven", max_length=6, truncation=None),
         PromptTruncatedWarning,
         "prompt 0 is longer than the tokenizer's 6 tokens: dropped 'seven seven seven seven'"),
        (lambda t: t("🙂"), UnknownTokenWarning, "prompt 0: '🙂' is not in the vocabulary; it was dropped"),
        (lambda t: t(["a seven", "a café seven 👍🏽"]), UnknownTokenWarning,
         "prompt 1: 'é', '👍🏽' are not in the vocabulary; they were dropped"),
    ],
)  # fmt: skip
def test_prompt_warnings_name_what_was_dropped(tok, call, category, expected):
    _, caught = _caught(lambda: call(tok))
    ours = [w for w in caught if w.category is category]
    assert len(ours) == 1, [str(w.message) for w in caught]  # once per call, not per token or prompt
    assert expected in str(ours[0].message)


@pytest.mark.parametrize(
    "prompts",
    [["a thick seven"], ["", "a small seven"], ["a thick slanted small seven"], ["A Thick, SEVEN!"]],
)
def test_valid_prompts_stay_silent_and_keep_their_ids(tok, prompts):
    enc, caught = _caught(lambda: tok(prompts))
    assert caught == []
    expected = [[2, *[tok.token_to_id[w] for w in tok.tokenize(p)], 3] for p in prompts]
    assert [row[: len(e)] for row, e in zip(enc.input_ids.tolist(), expected, strict=True)] == expected


@pytest.mark.parametrize(
    ("prompt", "same_as"),
    [("🙂", ""), ("a thick seven 🙂", "a thick seven"), ("a thick slanted small seven seven seven", None)],
)
def test_warnings_do_not_change_the_ids(tok, prompt, same_as):
    enc, _ = _caught(lambda: tok(prompt))
    if same_as is not None:
        assert torch.equal(enc.input_ids, tok(same_as).input_ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # explicit truncation=True: asked for, silent (as transformers' tokenizers)
        cut = tok(prompt, truncation=True).input_ids if same_as is None else enc.input_ids
    assert torch.equal(cut, enc.input_ids)


def test_encode_warns_by_default_and_cuts_silently_when_asked(tok):
    prompt = "a thick slanted small seven seven seven"
    ids, caught = _caught(lambda: tok.encode(prompt))
    assert [w.category for w in caught] == [PromptTruncatedWarning] and "dropped" in str(caught[0].message)
    asked, caught = _caught(lambda: tok.encode(prompt, truncation=True))  # notebook 05's call
    assert caught == [] and asked == ids and len(ids) == 8 and ids[-1] == tok.eos_token_id


def test_unknown_word_warning_text_is_kept(tok):
    _, caught = _caught(lambda: tok("a thick purple seven"))
    assert [w.category for w in caught] == [UnknownTokenWarning]
    assert str(caught[0].message).startswith("unknown words ['purple'] were mapped to <unk>; the vocabulary knows")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"truncation": "yes"}, TypeError, "truncation"),
        ({"truncation": False}, ValueError, "more than max_length=8"),
        ({"max_length": True}, TypeError, "max_length"),
        ({"max_length": 1}, ValueError, "max_length must be an integer >= 2"),
    ],
)
def test_tokenizer_bad_arguments(tok, kwargs, error, match):
    with pytest.raises(error, match=match):
        tok("a thick slanted small seven seven seven", **kwargs)


@pytest.mark.parametrize("length", [6, np.int64(6), torch.tensor(6)])
def test_tokenizer_max_length_accepts_numpy_and_torch(tok, length):
    enc = tok("a seven", max_length=length)
    assert enc.input_ids.shape == (1, 6) and torch.equal(enc.input_ids, tok("a seven", max_length=6).input_ids)


def test_model_max_length_is_a_python_int():
    t = WordTokenizer.from_texts([], model_max_length=np.int64(8))
    assert type(t.model_max_length) is int and t.model_max_length == 8


def test_tiny_clip_tokenizer_keeps_emoji_and_leaves_truncation_warning_to_diffusers():
    clip = tiny_clip_tokenizer()
    assert clip("🙂").input_ids != clip("").input_ids  # byte-level: the emoji is kept, never dropped
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # truncation=True as diffusers calls it: no warning from the tokenizer
        ids = clip("x" * 200, truncation=True, max_length=77).input_ids
    assert len(ids) == 77


# ------------------------------------------------------------------------------------------------ damaged JSON


def _tokenizer_dir(tmp_path):
    WordTokenizer.from_texts(["a seven"]).save_pretrained(tmp_path)
    return tmp_path / "tokenizer.json", lambda: WordTokenizer.from_pretrained(tmp_path)


def _tiny_sd_dir(name):
    def make(tmp_path):
        folder = tmp_path / "tiny_sd"
        shutil.copytree(tiny_sd_io.pretrained_tiny_sd_path(), folder)
        return folder / name, lambda: tiny_sd_io.load_tiny_sd(folder)

    return make


def _checkpoint_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"format": checkpoint.FORMAT}))
    return tmp_path / "config.json", lambda: checkpoint.load_config(tmp_path)


def _classifier_meta(tmp_path):
    src = classifier.default_classifier_path()
    shutil.copy(src, tmp_path / src.name)
    shutil.copy(src.with_suffix(".json"), tmp_path / src.with_suffix(".json").name)
    return tmp_path / src.with_suffix(".json").name, lambda: classifier.load_classifier(tmp_path / src.name)


@pytest.mark.parametrize(
    "make", [_tokenizer_dir, _tiny_sd_dir("caption_bins.json"), _tiny_sd_dir("model_index.json"),
             _checkpoint_config, _classifier_meta],
    ids=["tokenizer", "caption_bins", "model_index", "checkpoint_config", "classifier_meta"],
)  # fmt: skip
@pytest.mark.parametrize("damage", ["truncated", "not_json", "binary"])
def test_damaged_json_is_a_file_error_naming_the_file(tmp_path, make, damage):
    path, load = make(tmp_path)
    text = path.read_bytes()
    path.write_bytes({"truncated": text[: len(text) // 2], "not_json": b"{oops", "binary": b"\xff\xfe\x00"}[damage])
    with pytest.raises(FileError, match=path.name) as info:
        load()
    assert not isinstance(info.value, json.JSONDecodeError)


def test_caption_bins_of_the_wrong_shape_are_a_file_error(tmp_path):
    path, load = _tiny_sd_dir("caption_bins.json")(tmp_path)
    path.write_text(json.dumps({"thresholds": {}}))
    with pytest.raises(FileError, match="caption_bins.json.*Re-run"):
        load()


# ------------------------------------------------------------------------------------------------ concept images

_INK = np.zeros((28, 28), np.uint8)
_INK[5:23, 12:16] = 255
_INK[10, 8:12] = 120  # a grey pixel: the scaling must keep it


def _load(tmp_path, name, image, suffix="png", **kwargs):
    folder = tmp_path / name
    folder.mkdir()
    image.save(folder / f"a.{suffix}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "converted to grey", "inverted": said, and tested in test_finetune
        return finetune.load_concept_images(folder, **kwargs)


def _rgba(ink_value):
    a = np.zeros((28, 28, 4), np.uint8)
    a[..., :3], a[..., 3] = ink_value, _INK
    return a


@pytest.mark.parametrize(
    ("name", "make", "opaque"),
    [
        ("black-on-transparent RGBA", lambda: Image.fromarray(_rgba(0), "RGBA"), lambda: 255 - _INK),
        ("black-on-transparent LA", lambda: Image.fromarray(np.stack([0 * _INK, _INK], -1), "LA"), lambda: 255 - _INK),
        ("white-on-transparent RGBA", lambda: Image.fromarray(_rgba(255), "RGBA"), lambda: _INK),
        ("16-bit I;16", lambda: Image.fromarray(_INK.astype(np.uint16) * 257), lambda: _INK),
    ],
)
def test_concept_images_transparent_and_16_bit(tmp_path, name, make, opaque):
    got = _load(tmp_path, "x", make())
    same_on_paper = _load(tmp_path, "ref", Image.fromarray(opaque(), "L"))
    assert got.abs().sum() > 0 and torch.equal(got, same_on_paper)  # not blank, and the same digit


def test_concept_images_palette_with_a_transparent_colour(tmp_path):
    mask = (_INK > 0).astype(np.uint8)  # palette index 1 = black ink, index 0 = transparent white
    image = Image.fromarray(mask, "P")
    image.putpalette([255, 255, 255, 0, 0, 0])
    image.info["transparency"] = 0
    got = _load(tmp_path, "x", image)
    assert got.abs().sum() > 0 and torch.equal(got, _load(tmp_path, "ref", Image.fromarray(255 - 255 * mask, "L")))


def test_concept_images_32_bit_grey(tmp_path):
    got = _load(tmp_path, "x", Image.fromarray(_INK.astype(np.int32) * 257), suffix="tif")
    assert torch.equal(got, _load(tmp_path, "ref", Image.fromarray(_INK, "L")))


def test_transparent_background_follows_invert(tmp_path):
    got = _load(tmp_path, "x", Image.fromarray(_rgba(0), "RGBA"), invert=True)
    assert torch.equal(got, _load(tmp_path, "ref", Image.fromarray(255 - _INK, "L"), invert=True))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [({"size": True}, TypeError, "size"), ({"size": 0}, ValueError, "size"), ({"invert": 1}, TypeError, "invert")],
)
def test_concept_images_bad_arguments(tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        _load(tmp_path, "x", Image.fromarray(_INK, "L"), **kwargs)


def test_concept_images_size_accepts_numpy(tmp_path):
    assert _load(tmp_path, "x", Image.fromarray(_INK, "L"), size=np.int64(14)).shape == (1, 1, 14, 14)


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        (np.zeros((2, 1, 28, 28), np.float32), TypeError, "images"),
        (torch.zeros(2, 28, 28), ValueError, "images"),
        (torch.full((2, 1, 28, 28), float("nan")), ValueError, "images contains NaN"),
        (torch.full((2, 1, 28, 28), 255.0), ValueError, "images values must be in"),
    ],
)
def test_encode_images_checks_user_images(images, error, match):
    with pytest.raises(error, match=match):
        finetune._check_examples(images)


# ------------------------------------------------------------------------------------------------ counts


@pytest.mark.parametrize("limit", [3, np.int64(3), torch.tensor(3)])
def test_load_mnist_limit_accepts_scalars(limit):
    x, y = data.load_mnist("test", limit=limit, verify=False)
    assert x.shape == (3, 1, 28, 28) and y.shape == (3,)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: data.load_mnist("test", limit=True, verify=False), TypeError, "limit"),
        (lambda: data.swiss_roll(True), TypeError, "n"),
        (lambda: data.moons(10, noise=float("nan")), ValueError, "noise"),
        (lambda: data.swiss_roll(10, seed=1.5), TypeError, "seed"),
        (lambda: data.moons(10, seed=np.True_), TypeError, "seed"),
        (lambda: metrics._check_n(True, 100), TypeError, "n must be"),
        (lambda: metrics._check_n(np.int64(1), 100), ValueError, "n must be"),
        (lambda: classifier.ClassifierConfig(channels=(8, True)), TypeError, r"channels\[1\]"),
        (lambda: captions.fit_bins(torch.zeros(5, 1, 28, 28), min_per_digit=True), TypeError, "min_per_digit"),
    ],
)
def test_counts_refuse_bools_and_bad_values(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("n", [np.int64(10), torch.tensor(10)])
def test_toy_data_accepts_scalars(n):
    assert torch.equal(data.swiss_roll(n, seed=np.int64(1)), data.swiss_roll(10, seed=1))
    assert torch.equal(data.moons(n, noise=np.float64(0.1)), data.moons(10, noise=0.1))
    assert metrics._check_n(n, 100) == 10 and type(metrics._check_n(n, 100)) is int


def test_classifier_config_and_digit_rows_accept_scalars():
    cfg = classifier.ClassifierConfig(channels=(np.int64(8), torch.tensor(16)), feature_dim=np.int64(32))
    assert cfg.channels == (8, 16) and type(cfg.channels[0]) is int and type(cfg.feature_dim) is int
    for digit in (3, np.int64(3), torch.tensor(3)):
        assert captions._digit_rows(digit, 2).tolist() == [3, 3]


# ------------------------------------------------------------------------------------------------ models


def _tiny_unet():
    from diffusion_lab.models.unet import UNet, UNetConfig

    cfg = UNetConfig(in_channels=1, out_channels=1, channels=(4,), attention_levels=(False,), groups=2,
                     time_embed_dim=8, blocks_per_level=0)  # fmt: skip
    return UNet(cfg).eval()


@pytest.fixture(scope="module")
def unet_and_reference():
    unet, x = _tiny_unet(), torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return unet, x, unet(x, 5)


@pytest.mark.parametrize("t", [np.int64(5), torch.tensor(5), torch.tensor([5, 5])])
def test_unet_timestep_accepts_scalars_with_the_same_result(unet_and_reference, t):
    unet, x, reference = unet_and_reference
    with torch.no_grad():
        assert torch.equal(unet(x, t), reference)


@pytest.mark.parametrize(
    ("t", "error", "match"),
    [
        (True, TypeError, "t \\(the timestep\\)"),
        (np.True_, TypeError, "t \\(the timestep\\)"),
        (torch.tensor(True), TypeError, "t must be a timestep"),
        (None, TypeError, "t \\(the timestep\\)"),
        ("5", TypeError, "t \\(the timestep\\)"),
        (float("nan"), ValueError, "t \\(the timestep\\) must be finite"),
        (torch.tensor([1, 2, 3]), ValueError, "t must be one timestep or one per sample"),
    ],
)
def test_unet_timestep_refuses_bad_values(t, error, match):
    with pytest.raises(error, match=match):
        _tiny_unet()(torch.zeros(2, 1, 8, 8), t)


@pytest.mark.parametrize(
    ("timestep", "error", "match"),
    [(True, TypeError, "timestep must be a number"), (float("nan"), ValueError, "timestep must be finite")],
)
def test_mmdit_timestep_checks(timestep, error, match):
    from diffusion_lab.models.mmdit import MMDiT, MMDiTConfig

    model = MMDiT(MMDiTConfig(in_channels=4, out_channels=4, sample_size=4, patch_size=2, depth=1, hidden_size=32,
                              num_heads=2, joint_attention_dim=None, pooled_projection_dim=None))  # fmt: skip
    with pytest.raises(error, match=match):
        model(torch.zeros(1, 4, 4, 4), timestep)
    with torch.no_grad():
        assert torch.equal(model(torch.zeros(1, 4, 4, 4), np.float32(0.5)), model(torch.zeros(1, 4, 4, 4), 0.5))


@pytest.mark.parametrize(
    ("build", "fields"),
    [
        ("unet", ("in_channels", "groups", "blocks_per_level", "cross_attention_dim")),
        ("autoencoder", ("in_channels", "latent_channels", "patch_size")),
        ("mmdit", ("depth", "hidden_size", "joint_attention_dim", "max_text_tokens")),
        ("text_encoder", ("vocab_size", "hidden_size", "max_position", "projection_dim", "eos_token_id")),
        ("normalizer", ("embedding_dim",)),
    ],
)
def test_configs_store_python_ints(build, fields):
    from diffusion_lab.models.autoencoder import AutoencoderConfig
    from diffusion_lab.models.image_embedding import NormalizerConfig
    from diffusion_lab.models.mmdit import MMDiTConfig
    from diffusion_lab.models.unet import UNetConfig

    n = np.int64
    cfg = {
        "unet": lambda: UNetConfig(in_channels=n(1), groups=n(4), channels=(8, 16), attention_levels=(False, True),
                                   blocks_per_level=n(1), cross_attention_dim=n(16)),
        "autoencoder": lambda: AutoencoderConfig(in_channels=n(1), latent_channels=n(4), patch_size=n(1)),
        "mmdit": lambda: MMDiTConfig(depth=n(1), hidden_size=n(32), num_heads=2, joint_attention_dim=n(16),
                                     max_text_tokens=torch.tensor(8)),
        "text_encoder": lambda: TextEncoderConfig(vocab_size=n(30), hidden_size=n(32), max_position=n(8),
                                                  projection_dim=n(16), eos_token_id=n(3)),
        "normalizer": lambda: NormalizerConfig(embedding_dim=torch.tensor(8)),
    }[build]()  # fmt: skip
    assert all(type(getattr(cfg, f)) is int for f in fields), {f: type(getattr(cfg, f)) for f in fields}
    json.dumps(cfg.to_dict())  # what save_pretrained writes


@pytest.mark.parametrize(
    ("level", "ok"), [(np.int64(3), True), (3, True), (True, False), (torch.tensor(True), False), (3.0, False)]
)
def test_noise_level_accepts_numpy_and_refuses_bools(level, ok):
    from diffusion_lab.models.image_embedding import _check_noise_level

    if ok:
        _check_noise_level(level, 10)
    else:
        with pytest.raises((TypeError, ValueError), match="noise_level"):
            _check_noise_level(level, 10)


# ------------------------------------------------------------------------------------------------ learned embeddings


@pytest.mark.parametrize("damage", ["truncated", "garbage", "nan"])
def test_learned_embeds_file_damage_is_a_file_error(tmp_path, damage):
    from safetensors.torch import save_file

    class _Pipe:  # the two parts load_learned_embeds reads
        tokenizer = WordTokenizer.from_texts(["a three"])
        text_encoder = TextEncoder(TextEncoderConfig(vocab_size=tokenizer.vocab_size))

    path = tmp_path / "learned_embeds.safetensors"
    row = torch.full((64,), float("nan")) if damage == "nan" else torch.zeros(64)
    save_file({"<wide>": row}, str(path))
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif damage == "garbage":
        path.write_bytes(b"not a safetensors file")
    with pytest.raises(FileError, match="learned_embeds.safetensors"):
        finetune.load_learned_embeds(_Pipe(), path)


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        ([[0.0]], TypeError, "images"),
        (torch.zeros(2, 3, 4, 4), ValueError, "images"),
        (torch.full((1, 1, 4, 4), float("nan")), ValueError, "images contains NaN"),
    ],
)
def test_save_concept_images_checks_its_images(tmp_path, images, error, match):
    with pytest.raises(error, match=match):
        finetune.save_concept_images(images, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written
