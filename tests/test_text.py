"""Text: attribute measures on synthetic strokes, captions and bins on MNIST, the word tokenizer, the text encoder."""

from __future__ import annotations

import json
import math

import pytest
import torch

from diffusion_lab.mnist.captions import (
    ATTRIBUTES,
    DIGIT_NAMES,
    AttributeBins,
    attribute_adherence,
    attributes,
    caption,
    captions_for,
    fit_bins,
    parse_prompt,
    size,
    slant,
    thickness,
)
from diffusion_lab.mnist.data import load_mnist
from diffusion_lab.models.text_encoder import TextEncoder, TextEncoderConfig, WordTokenizer
from diffusion_lab.utils.errors import FileError


@pytest.fixture(scope="module")
def mnist():
    """2,000 training images, their labels, and per-digit bins fitted on them."""
    x, y = load_mnist("train", limit=2000)
    return x, y, fit_bins(x, y)


# ----------------------------------------------------------------------------------------------------------------------
# Synthetic images: ink 1 → +1, background → −1
# ----------------------------------------------------------------------------------------------------------------------


def _image(mask: torch.Tensor) -> torch.Tensor:
    return (mask.float() * 2 - 1)[None, None]  # (1, 1, H, W)


def _grid(n: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    v, u = torch.meshgrid(torch.arange(n).float(), torch.arange(n).float(), indexing="ij")  # rows go down
    return u, v


def _strokes(widths, angle: float, offsets=(0.0,), n: int = 28, ss: int = 4) -> torch.Tensor:
    """Straight strokes 18 px long, one per (offset, width), leaning ``angle`` degrees right of vertical, through the
    image centre moved by ``offset`` px across the stroke; anti-aliased by pixel coverage (ss × ss samples a pixel).
    Returns (len(offsets)·len(widths), 1, n, n), offsets outer."""
    c = (torch.arange(n * ss).float() + 0.5) / ss - 0.5  # sub-pixel centres
    v, u = torch.meshgrid(c, c, indexing="ij")
    du, dv = math.sin(math.radians(angle)), -math.cos(math.radians(angle))  # along the stroke, upwards
    o = torch.as_tensor(offsets, dtype=torch.float32)[:, None, None, None]  # (O, 1, 1, 1)
    w = torch.as_tensor(widths, dtype=torch.float32)[None, :, None, None]  # (1, W, 1, 1)
    ru, rv = u - 13.5 + o * dv, v - 13.5 - o * du  # (O, 1, n·ss, n·ss), centre moved across the stroke
    inside = ((ru * dv - rv * du).abs() <= w / 2) & ((ru * du + rv * dv).abs() <= 9)  # (O, W, n·ss, n·ss)
    coverage = inside.float().reshape(-1, n, ss, n, ss).mean((2, 4))  # (O·W, n, n) in [0, 1]
    return (2 * coverage - 1)[:, None]


def _bar(width: int, length: int = 20, n: int = 28) -> torch.Tensor:
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask[10 : 10 + width, 4 : 4 + length] = True  # horizontal bar, exactly width × length pixels
    return _image(mask)


def _sheared_bar(a: float, n: int = 28) -> torch.Tensor:
    """An anti-aliased bar 3 px wide, rows 4 to 23, centred on u = 13 + a·(13.5 − v): the top leans right for a > 0.

    Each row holds the same ink (3) with its centre of mass at the exact, fractional centre."""
    u, v = _grid(n)
    centre = 13 + a * (13.5 - v)
    ink = (2 - (u - centre).abs()).clamp(0, 1) * ((v >= 4) & (v <= 23))
    return (2 * ink - 1)[None, None]


def _shear_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """Exact integer shear: pad 14 px left and right, then shift row v right by k·(14 − v) pixels."""
    x = torch.nn.functional.pad(x, (14, 14), value=-1.0)  # (B, 1, 28, 56)
    return torch.stack([x[:, :, v].roll(k * (14 - v), dims=-1) for v in range(x.shape[2])], dim=2)


def _disc(radius: float, n: int = 28) -> torch.Tensor:
    u, v = _grid(n)
    return _image((u - 13.5) ** 2 + (v - 13.5) ** 2 <= radius**2)


def test_thickness_of_straight_strokes_is_their_width():
    for w in range(1, 5):
        # a binary w × L bar: A = wL, P = 2(w + L), so 2A/P = wL/(L + w); the perimeter estimate is within 5%
        expected = w * 20 / (20 + w)
        assert thickness(_bar(w)).item() == pytest.approx(expected, rel=0.1)
    widths = torch.tensor([1.0, 2, 3, 4, 5])
    for angle in (0, 20, 45, 70, 90):
        # anti-aliased strokes, averaged over four sub-pixel positions (one thin stroke depends on its position)
        t = thickness(_strokes(widths, angle, offsets=(0, 0.25, 0.5, 0.75))).reshape(4, 5).mean(0)  # (5,)
        assert (t.diff() > 0.3).all(), (angle, t)  # thicker strokes measure thicker
        assert ((t / widths - 1).abs() < 0.4).all(), (angle, t)  # roughly proportionally (the ink floor trims edges)


def test_thickness_ignores_length_position_and_mirroring(mnist):
    a = thickness(torch.cat([_strokes([3], 0, offsets=(0, -5)), _strokes([3], 90)]))
    assert a.max() / a.min() < 1.1, a
    x = mnist[0][:16]
    for f in (thickness, size):  # a right-leaning and a left-leaning digit measure the same: no coupling with slant
        torch.testing.assert_close(f(x.flip(-1)), f(x))
        torch.testing.assert_close(f(x.transpose(-1, -2)), f(x))


def test_slant_sign_and_value_on_sheared_bars():
    a = torch.tensor([-0.4, -0.2, 0.0, 0.2, 0.4])
    s = slant(torch.cat([_sheared_bar(float(x)) for x in a]))
    assert s[2].abs() < 1e-6  # upright
    assert (s[3:] > 0).all() and (s[:2] < 0).all()  # top leaning right is positive (rows go down)
    torch.testing.assert_close(s, a, atol=0.01, rtol=0)  # s = the shear per pixel of height
    x = _sheared_bar(0.3)
    torch.testing.assert_close(slant(x.flip(-1)), -slant(x))  # mirror image leans the other way
    torch.testing.assert_close(slant(x.flip(-2)), -slant(x))  # so does the upside-down one


def test_size_is_the_disc_diameter_and_ignores_shear(mnist):
    d = size(torch.cat([_disc(r) for r in (3, 5, 7, 9)]))
    torch.testing.assert_close(d, torch.tensor([6.0, 10.0, 14.0, 18.0]), rtol=0.06, atol=0)
    x = mnist[0][:8]
    for k in (-1, 1):  # shearing real digits by one pixel per row: slant + k, size unchanged (det of a shear is 1)
        torch.testing.assert_close(slant(_shear_rows(x, k)), slant(x) + k, atol=1e-4, rtol=0)
        torch.testing.assert_close(size(_shear_rows(x, k)), size(x), atol=1e-3, rtol=0)


def test_attributes_batched_and_edge_cases():
    torch.manual_seed(0)
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    a = attributes(x)
    assert set(a) == set(ATTRIBUTES) and all(v.shape == (5,) for v in a.values())
    torch.testing.assert_close(a["thickness"], thickness(x))
    torch.testing.assert_close(a["slant"], slant(x))
    torch.testing.assert_close(a["size"], size(x))
    torch.testing.assert_close(attributes(x[2:3])["size"], a["size"][2:3])  # each image on its own
    empty = attributes(-torch.ones(2, 1, 28, 28))  # no ink at all
    assert all(torch.equal(v, torch.zeros(2)) for v in empty.values())
    assert torch.equal(thickness(x * 5), thickness((x * 5).clamp(-1, 1)))  # out-of-range values are clamped


def test_attributes_bad_input():
    with pytest.raises(ValueError, match=r"shape \(B, 1, H, W\)"):
        attributes(torch.zeros(1, 3, 28, 28))
    with pytest.raises(ValueError, match="to_unit_range"):
        thickness(torch.zeros(1, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN"):
        slant(torch.full((1, 1, 28, 28), float("nan")))
    with pytest.raises(TypeError, match="torch.Tensor"):
        size([[0.0]])


# ----------------------------------------------------------------------------------------------------------------------
# Bins and captions
# ----------------------------------------------------------------------------------------------------------------------


def _bins(lo=1.0, mid=2.0, hi=3.0) -> AttributeBins:
    return AttributeBins({a: [(lo, mid, hi)] * 11 for a in ATTRIBUTES}, per_digit=False)


def test_bins_split_mnist_in_thirds(mnist):
    x, y, bins = mnist
    assert bins.per_digit
    caps = captions_for(y, x, bins)
    for low, high in [("small", "large"), ("thin", "thick"), ("upright", "slanted")]:
        for digit in range(10):
            words = [c.split() for c, label in zip(caps, y.tolist(), strict=True) if label == digit]
            for w in (low, high):
                share = sum(w in ws for ws in words) / len(words)
                assert abs(share - 1 / 3) < 0.03, (w, digit, share)
    for name in ATTRIBUTES:
        t = bins.table(name)  # (11, 3)
        assert t.shape == (11, 3) and (t[:, 0] < t[:, 1]).all() and (t[:, 1] < t[:, 2]).all()
    # the fitted thresholds are in pixels: thickness around 2 to 3 px, ones much smaller than zeros
    assert 1.8 < bins.table("thickness")[10, 1] < 3.0
    assert bins.table("size")[1, 1] < 0.7 * bins.table("size")[0, 1]
    shared = fit_bins(x)
    assert not shared.per_digit and torch.equal(shared.table("size")[0], shared.table("size")[10])
    back = AttributeBins.from_dict(json.loads(json.dumps(bins.to_dict())))
    assert back == bins


def test_fit_bins_bad_input(mnist):
    x, y, _ = mnist
    with pytest.raises(ValueError, match="fewer than min_per_digit"):
        fit_bins(x[:50], y[:50])
    with pytest.raises(ValueError, match="same length"):
        fit_bins(x[:100], y[:99])
    with pytest.raises(ValueError, match="low_q < 0.5 < high_q"):
        fit_bins(x, low_q=0.6)
    with pytest.raises(ValueError, match="11 rows"):
        AttributeBins({a: [(1, 2, 3)] for a in ATTRIBUTES})


def test_caption_grammar_and_word_order():
    bins = _bins()
    mid = {"size": 2.0, "thickness": 2.0, "slant": 2.0}
    assert caption(8, mid, bins) == "an eight"
    assert caption(1, mid, bins) == "a one"  # "one" starts with a w sound
    assert caption(7, {**mid, "slant": 0.5}, bins) == "an upright seven"
    assert caption(7, {**mid, "slant": -0.5}, bins) == "an upright seven"  # |s| is binned
    assert caption(7, {"size": 9, "thickness": 9, "slant": 9}, bins) == "a large thick slanted seven"
    assert caption(7, {"size": 9, "thickness": 0, "slant": -9}, bins) == "a large thin slanted seven"
    assert caption(None, {**mid, "size": 0.1}, bins) == "a small digit"
    assert [caption(d, mid, bins) for d in range(10)] == [f"a{'n' if n == 'eight' else ''} {n}" for n in DIGIT_NAMES]
    with pytest.raises(ValueError, match="label must be a digit"):
        caption(10, mid, bins)
    with pytest.raises(ValueError, match="attrs is missing"):
        caption(3, {"size": 1.0}, bins)


def test_caption_word_dropout_is_seeded():
    bins = _bins()
    attrs = {"size": torch.full((400,), 9.0), "thickness": torch.full((400,), 9.0), "slant": torch.full((400,), 9.0)}
    labels = [7] * 400
    a = captions_for(labels, None, bins, attrs=attrs, generator=torch.Generator().manual_seed(0), drop_prob=0.5)
    b = captions_for(labels, None, bins, attrs=attrs, generator=torch.Generator().manual_seed(0), drop_prob=0.5)
    assert a == b
    kept = sum(len(c.split()) - 2 for c in a) / (3 * 400)
    assert 0.45 < kept < 0.55
    assert all(parse_prompt(c)["digit"] == 7 for c in a)
    assert set(captions_for(labels[:5], None, bins, attrs={k: v[:5] for k, v in attrs.items()}, drop_prob=1.0)) == {
        "a seven"
    }
    with pytest.raises(ValueError, match="drop_prob"):
        captions_for(labels, None, bins, attrs=attrs, drop_prob=1.5)


def test_parse_prompt_reads_back_captions(mnist):
    x, y, bins = mnist
    for cap, label in zip(captions_for(y[:300], x[:300], bins), y[:300].tolist(), strict=True):
        asked = parse_prompt(cap)
        assert asked["digit"] == label
        assert [asked[a] for a in ATTRIBUTES if asked[a]] == cap.split()[1:-1]
    assert parse_prompt("Please draw a THICK, slanted seven!") == {
        "digit": 7,
        "size": None,
        "thickness": "thick",
        "slant": "slanted",
    }
    assert parse_prompt("") == {"digit": None, "size": None, "thickness": None, "slant": None}
    with pytest.raises(ValueError, match="names two digits"):
        parse_prompt("a seven and an eight")
    with pytest.raises(ValueError, match="both 'thin' and 'thick'"):
        parse_prompt("a thin thick seven")
    with pytest.raises(TypeError, match="prompt must be a string"):
        parse_prompt(7)


def test_attribute_adherence(mnist):
    x, y, bins = mnist
    x, y = x[:200], y[:200]
    caps = captions_for(y, x, bins)
    own = attribute_adherence(x, caps, bins)
    assert own["adherence"] == 1.0 and own["requests"] > 150  # extreme thirds lie beyond the median
    flipped = {"thin": "thick", "thick": "thin", "small": "large", "large": "small", "upright": "slanted"}
    flipped["slanted"] = "upright"
    opposite = [" ".join(flipped.get(w, w) for w in c.split()) for c in caps]
    assert attribute_adherence(x, opposite, bins)["adherence"] == 0.0
    neg = attribute_adherence(x, [f"a {DIGIT_NAMES[d]}" for d in y.tolist()], bins, negative_prompts=opposite)
    assert neg["adherence"] == 1.0 and neg["requests"] == own["requests"]  # "not thin" is met by thick digits
    assert set(own) >= {"adherence", "requests", "size", "thickness", "slant", "thick", "thin"}
    rand = attribute_adherence(x, "a thick digit", bins)  # all digits against the overall median: about half
    assert 0.4 < rand["adherence"] < 0.6 and rand["requests"] == 200
    assert math.isnan(attribute_adherence(x[:3], "a seven", bins)["adherence"])  # no attribute asked
    with pytest.raises(ValueError, match="one per image"):
        attribute_adherence(x[:3], ["a thick one"] * 2, bins)


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def tok():
    return WordTokenizer.from_texts(["a thick slanted seven", "an eight, drawn carefully."], model_max_length=8)


def test_tokenizer_vocabulary(tok):
    assert tok.vocab[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)
    for w in [*DIGIT_NAMES, "a", "an", "digit", "thin", "thick", "small", "large", "upright", "slanted", "drawn"]:
        assert w in tok.token_to_id, w
    assert tok.vocab_size == len(tok.vocab) == len(set(tok.vocab))
    assert WordTokenizer.from_texts().vocab == WordTokenizer.from_texts([]).vocab  # base words only
    assert "carefully" in tok.vocab and "," not in tok.vocab  # punctuation separates words and is dropped


def test_tokenizer_padding_and_mask(tok):
    enc = tok(["a thick seven", ""])
    assert enc.input_ids.shape == enc.attention_mask.shape == (2, 8)
    assert enc.input_ids.dtype == enc.attention_mask.dtype == torch.long
    ids = tok.token_to_id
    assert enc.input_ids[0].tolist() == [2, ids["a"], ids["thick"], ids["seven"], 3, 0, 0, 0]
    assert enc.attention_mask[0].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert enc.input_ids[1].tolist() == [2, 3, 0, 0, 0, 0, 0, 0]  # "" → <bos> <eos>: the unconditional prompt
    assert enc["input_ids"] is enc.input_ids
    one = tok("A THICK seven!")  # one string → a batch of one; case and punctuation do not matter
    assert torch.equal(one.input_ids, enc.input_ids[:1])
    assert tok(["a seven", "an eight"], padding="longest").input_ids.shape == (2, 4)
    assert tok("a seven", max_length=12).input_ids.shape == (1, 12)
    assert tok(["a seven", ""], padding=False, return_tensors=None).input_ids == [[2, 4, ids["seven"], 3], [2, 3]]
    assert tok.decode(enc.input_ids[0]) == "a thick seven"
    assert tok.batch_decode(enc.input_ids) == ["a thick seven", ""]
    assert tok.decode(enc.input_ids[0], skip_special_tokens=False).startswith("<bos> a thick seven <eos> <pad>")


def test_tokenizer_truncation(tok):
    long = "a thick thin small large upright slanted seven"  # 8 words + <bos> + <eos> = 10 > 8
    ids = tok(long).input_ids[0]
    assert ids.shape == (8,) and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id  # <eos> kept
    assert tok.decode(ids) == "a thick thin small large upright"
    with pytest.raises(ValueError, match="more than max_length=8"):
        tok(long, truncation=False)
    with pytest.raises(ValueError, match="max_length must be an integer >= 2"):
        tok("a seven", max_length=1)


def test_tokenizer_unknown_words_and_bad_input(tok):
    with pytest.warns(UserWarning, match=r"unknown words \['purple', 'zebra'\]"):
        enc = tok(["a purple seven", "a zebra"])
    assert enc.input_ids[0, 2] == tok.unk_token_id
    assert tok.decode(enc.input_ids[0]) == "a <unk> seven"
    with pytest.raises(TypeError, match="a string or a list of strings, got int"):
        tok(7)
    with pytest.raises(TypeError, match="a list containing int"):
        tok(["a seven", 7])
    with pytest.raises(TypeError, match="got Tensor"):
        tok(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="padding must be"):
        tok("a seven", padding="left")
    with pytest.raises(ValueError, match="empty list"):
        tok([])
    with pytest.raises(ValueError, match="different lengths"):
        tok(["a seven", ""], padding=False)


def test_tokenizer_save_and_load(tok, tmp_path):
    tok.save_pretrained(tmp_path / "tokenizer")
    back = WordTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert back.vocab == tok.vocab and back.model_max_length == tok.model_max_length
    assert torch.equal(back("a thick seven").input_ids, tok("a thick seven").input_ids)
    assert [p.name for p in (tmp_path / "tokenizer").iterdir()] == ["tokenizer.json"]  # no temporary file left
    with pytest.raises(FileError, match="tokenizer.json is missing"):
        WordTokenizer.from_pretrained(tmp_path / "nothing")
    (tmp_path / "tokenizer" / "tokenizer.json").write_text("{trunc")
    with pytest.raises(FileError, match="not valid JSON"):
        WordTokenizer.from_pretrained(tmp_path / "tokenizer")


# ----------------------------------------------------------------------------------------------------------------------
# Text encoder
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def encoder(tok):
    torch.manual_seed(0)
    return TextEncoder(TextEncoderConfig(vocab_size=tok.vocab_size, max_position=8, projection_dim=12)).eval()


def test_encoder_shapes_and_pooling(tok, encoder):
    enc = tok(["a thick slanted seven", "an eight", ""])
    out = encoder(**enc)
    assert out.last_hidden_state.shape == (3, 8, 64)
    assert out.pooler_output.shape == (3, 64) and out.text_embeds.shape == (3, 12)
    eos = [5, 3, 1]  # <bos> + words, then <eos>
    for i, j in enumerate(eos):
        torch.testing.assert_close(out.pooler_output[i], out.last_hidden_state[i, j])
    torch.testing.assert_close(out.text_embeds, encoder.text_projection(out.pooler_output))
    assert encoder.device == torch.device("cpu") and encoder.dtype == torch.float32
    assert 0 < encoder.num_parameters() < 200_000
    plain = TextEncoder(TextEncoderConfig(vocab_size=tok.vocab_size, max_position=8))
    assert plain(**enc).text_embeds is None


def test_encoder_is_causal_and_ignores_padding(tok, encoder):
    ids = tok("a thick slanted seven").input_ids  # (1, 8)
    changed = ids.clone()
    changed[0, 3] = tok.token_to_id["upright"]  # change the 4th token
    h1 = encoder(ids).last_hidden_state
    h2 = encoder(changed).last_hidden_state
    torch.testing.assert_close(h1[:, :3], h2[:, :3])  # earlier tokens do not see later ones
    assert not torch.allclose(h1[:, 3:], h2[:, 3:])
    short = tok("a thick slanted seven", max_length=6)
    full = tok("a thick slanted seven")
    pooled_short = encoder(**short).pooler_output
    torch.testing.assert_close(encoder(**full).pooler_output, pooled_short)  # more padding: same pooled output
    torch.testing.assert_close(encoder(full.input_ids).pooler_output, pooled_short)  # and without the mask
    garbage = full.input_ids.clone()
    garbage[0, 6:] = tok.token_to_id["zero"]  # anything after <eos> is invisible to <eos>
    torch.testing.assert_close(encoder(garbage).pooler_output, pooled_short)


def test_encoder_save_and_load(tok, encoder, tmp_path):
    encoder.save_pretrained(tmp_path / "text_encoder")
    back = TextEncoder.from_pretrained(tmp_path / "text_encoder")
    assert back.config == encoder.config
    enc = tok(["a thick seven", ""])
    torch.testing.assert_close(back.eval()(**enc).last_hidden_state, encoder(**enc).last_hidden_state)


def test_encoder_bad_input(tok, encoder):
    with pytest.raises(ValueError, match="max_position=8: tokenize with max_length=8"):
        encoder(tok("a seven", max_length=10).input_ids)
    with pytest.raises(ValueError, match=rf"token ids must be in 0..{tok.vocab_size - 1}"):
        encoder(torch.tensor([[2, tok.vocab_size, 3]]))
    with pytest.raises(ValueError, match="needs an <eos>"):
        encoder(torch.tensor([[2, 4, 0]]))
    with pytest.raises(ValueError, match="integer tensor"):
        encoder(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="attention_mask must be a tensor shaped like input_ids"):
        encoder(tok("a seven").input_ids, torch.ones(1, 3))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        TextEncoderConfig(vocab_size=30, hidden_size=30, num_heads=4)
    with pytest.raises(TypeError, match="TextEncoderConfig"):
        TextEncoder()


def test_sample_caption_batch_draws_as_the_training_loops_did(mnist):
    """The stand-ins' training loops (SD 1.5, ControlNet, SD3, x4 upscaler) drew their batches inline: indices, word
    drops, then empty prompts, all from one generator. sample_caption_batch must draw the very same, in that order,
    so the shipped recipes reproduce bit for bit."""
    from diffusion_lab.mnist.captions import attributes, sample_caption_batch

    x, y, bins = mnist
    attrs = attributes(x)
    for empty_prob in (0.0, 0.3):
        g_old, g_new = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        for _ in range(3):  # the code each loop had before
            idx = torch.randint(0, len(y), (16,), generator=g_old)
            want = captions_for(
                y[idx], None, bins, attrs={k: v[idx] for k, v in attrs.items()}, generator=g_old, drop_prob=0.25
            )
            if empty_prob:
                empty = (torch.rand(16, generator=g_old) < empty_prob).tolist()
                want = ["" if e else c for c, e in zip(want, empty, strict=True)]
            got_idx, got = sample_caption_batch(y, attrs, bins, 16, g_new, drop_prob=0.25, empty_prob=empty_prob)
            assert torch.equal(got_idx, idx) and got == want
        assert torch.equal(g_old.get_state(), g_new.get_state()), "the generator must end in the same state"
    assert "" in sample_caption_batch(y, attrs, bins, 64, torch.Generator().manual_seed(0), empty_prob=0.5)[1]
    with pytest.raises(ValueError, match="empty_prob"):
        sample_caption_batch(y, attrs, bins, 4, torch.Generator(), empty_prob=1.5)
