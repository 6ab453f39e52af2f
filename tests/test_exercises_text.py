"""The notebook-05 exercise checks: a right answer passes, typical wrong answers fail with a ❌ line."""

from __future__ import annotations

import math
import re

import pytest
import torch

from diffusion_lab.course.exercises.nb05_text_conditioning import (
    check_cross_attention,
    check_pooled_output,
    check_tokenize,
)
from diffusion_lab.models.text_encoder import TextEncoder, TextEncoderConfig, WordTokenizer
from diffusion_lab.models.unet import CrossAttention


def _lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def tokenize(text, vocab, max_length):
    ids = [vocab.index(w) if w in vocab else 1 for w in re.findall(r"[a-z0-9]+", text.lower())]
    ids = [2, *ids[: max_length - 2], 3]
    mask = [1] * len(ids) + [0] * (max_length - len(ids))
    return ids + [0] * (max_length - len(ids)), mask


def tokenize_by_hand(text, vocab, max_length):
    """The same rule without regular expressions: scan the characters, cut at anything not a letter or digit."""
    words, word = [], ""
    for ch in text.lower() + " ":
        if ch.isascii() and ch.isalnum():
            word += ch
        elif word:
            words.append(word)
            word = ""
    index = {w: i for i, w in enumerate(vocab)}
    ids = [index.get(w, 1) for w in words]  # <unk> = 1
    ids = [2] + ids[: max_length - 2] + [3]  # <bos> … <eos>, the words truncated
    n = len(ids)
    return ids + [0] * (max_length - n), [1] * n + [0] * (max_length - n)


def test_check_tokenize_accepts_right_answers(capsys):
    assert check_tokenize(tokenize)
    assert check_tokenize(tokenize_by_hand)
    assert check_tokenize(lambda t, v, n: tuple(torch.tensor(s) for s in tokenize(t, v, n)))  # tensors are fine
    lines = _lines(capsys)
    assert len(lines) == 3 and all(line.startswith("✅") for line in lines)


def test_check_tokenize_rejects_typical_mistakes(capsys):
    def no_specials(text, vocab, max_length):
        ids, _ = tokenize(text, vocab, max_length)
        words = [i for i in ids if i > 3]
        return words + [0] * (max_length - len(words)), [1] * len(words) + [0] * (max_length - len(words))

    def no_padding(text, vocab, max_length):
        ids, mask = tokenize(text, vocab, max_length)
        n = sum(mask)
        return ids[:n], mask[:n]

    def mask_all_ones(text, vocab, max_length):
        return tokenize(text, vocab, max_length)[0], [1] * max_length

    def keeps_case(text, vocab, max_length):
        ids = [vocab.index(w) if w in vocab else 1 for w in re.findall(r"[A-Za-z0-9]+", text)][: max_length - 2]
        ids = [2, *ids, 3]
        return ids + [0] * (max_length - len(ids)), [1] * len(ids) + [0] * (max_length - len(ids))

    def truncates_eos(text, vocab, max_length):
        ids = [vocab.index(w) if w in vocab else 1 for w in re.findall(r"[a-z0-9]+", text.lower())]
        ids = [2, *ids, 3][:max_length]
        return ids + [0] * (max_length - len(ids)), [1] * len(ids) + [0] * (max_length - len(ids))

    def crashes_on_unknown(text, vocab, max_length):
        ids = [vocab.index(w) for w in re.findall(r"[a-z0-9]+", text.lower())]
        return tokenize(" ".join(vocab[i] for i in ids), vocab, max_length)

    wrong = [no_specials, no_padding, mask_all_ones, keeps_case, truncates_eos, crashes_on_unknown, lambda *a: None]
    for fn in wrong:
        assert not check_tokenize(fn), fn
    lines = _lines(capsys)
    assert len(lines) == len(wrong) and all(line.startswith("❌") for line in lines)
    assert "<bos>" in lines[0] and "max_length" in lines[1] and "mask" in lines[2]
    assert "capitals and punctuation" in lines[3] and "a prompt longer than max_length" in lines[4]
    assert "raised ValueError" in lines[5] and "returns None" in lines[6]


@pytest.mark.parametrize(
    "text, max_length",
    [
        ("a thick seven", 8),
        ("", 8),
        ("A Thick, slanted SEVEN!", 8),
        ("a purple seven", 8),
        ("a large thick slanted handwritten seven", 6),
        ("eight  8   ... nine-9", 10),
        ("zero one two three four five six", 4),
    ],
)
def test_the_checks_reference_tokenizer_equals_the_rule_written_out(text, max_length):
    """check_tokenize compares with WordTokenizer: it must follow the stated rule, written out twice above."""
    import warnings

    vocab = WordTokenizer.from_texts([]).vocab
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown words warn
        enc = WordTokenizer(vocab, model_max_length=max_length)(text, return_tensors=None)
    library = (enc["input_ids"][0], enc["attention_mask"][0])
    assert library == tokenize(text, vocab, max_length) == tokenize_by_hand(text, vocab, max_length)


def reference_attention(q, k, v, mask):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, heads, N, M)
    scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    return scores.softmax(-1) @ v


def loop_attention(q, k, v, mask):
    """One query at a time over the real keys only: a softmax written out with exp and a sum."""
    out = torch.zeros_like(q)
    d = q.shape[-1]
    for b in range(q.shape[0]):
        keys = [j for j in range(k.shape[2]) if mask[b, j]]
        for h in range(q.shape[1]):
            for i in range(q.shape[2]):
                s = torch.stack([q[b, h, i] @ k[b, h, j] / math.sqrt(d) for j in keys])
                w = (s - s.max()).exp()
                out[b, h, i] = sum(wj * v[b, h, j] for wj, j in zip(w / w.sum(), keys, strict=True))
    return out


def test_check_cross_attention_accepts_right_answers(capsys):
    assert check_cross_attention(reference_attention)
    assert check_cross_attention(loop_attention)
    # PyTorch's fused kernel takes a boolean mask, True = attend
    assert check_cross_attention(
        lambda q, k, v, m: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m[:, None, None].bool())
    )
    assert all(line.startswith("✅") for line in _lines(capsys))


def test_check_cross_attention_rejects_typical_mistakes(capsys):
    def no_scale(q, k, v, mask):
        return reference_attention(q * math.sqrt(q.shape[-1]), k, v, mask)

    def no_mask(q, k, v, mask):
        return reference_attention(q, k, v, torch.ones_like(mask))

    def wrong_axis(q, k, v, mask):
        scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(
            mask[:, None, None, :] == 0, float("-inf")
        )
        return torch.nan_to_num(scores.softmax(-2)) @ v

    def returns_probs(q, k, v, mask):
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        return scores.masked_fill(mask[:, None, None, :] == 0, float("-inf")).softmax(-1)

    def crashes(q, k, v, mask):
        raise NotImplementedError

    for fn in (no_scale, no_mask, wrong_axis, returns_probs, crashes):
        assert not check_cross_attention(fn), fn
    lines = _lines(capsys)
    assert all(line.startswith("❌") for line in lines)
    assert "√d" in lines[0] and "−inf" in lines[1] and "last axis" in lines[2] and "A V" in lines[3]
    assert "raised NotImplementedError" in lines[4]


def test_check_cross_attention_matches_the_library_module():
    """The formula the check holds is the one CrossAttention computes (one head, identity projections)."""
    attn = CrossAttention(8, 8, heads=1)
    with torch.no_grad():
        for lin in (attn.to_q, attn.to_k, attn.to_v, attn.to_out):
            lin.weight.copy_(torch.eye(8))
        attn.to_out.bias.zero_()
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 5, 8, generator=g), torch.randn(2, 4, 8, generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    want = reference_attention(x[:, None], c[:, None], c[:, None], mask)[:, 0]
    torch.testing.assert_close(attn(x, c, mask), want)


def pooled(h, ids, eos):
    first = (ids == eos).int().argmax(1)  # (B,)
    return h[torch.arange(len(h)), first]


def pooled_loop(h, ids, eos):
    """Row by row: the position of the first <eos> in the list of ids."""
    return torch.stack([h[i, row.tolist().index(eos)] for i, row in enumerate(ids)])


def pooled_from_padding(h, ids, eos):
    """Right padding with id 0: <eos> is the last non-padding token, at (number of non-zero ids) − 1."""
    last = (ids != 0).sum(1) - 1
    return torch.gather(h, 1, last[:, None, None].expand(-1, 1, h.shape[-1]))[:, 0]


def test_check_pooled_output_accepts_right_and_rejects_wrong(capsys):
    assert check_pooled_output(pooled_loop) and check_pooled_output(pooled_from_padding)
    assert all(line.startswith("✅") for line in _lines(capsys))
    assert check_pooled_output(pooled)
    assert not check_pooled_output(lambda h, ids, eos: h[:, -1])
    assert not check_pooled_output(lambda h, ids, eos: h.mean(1))
    assert not check_pooled_output(lambda h, ids, eos: h[:, 0])  # <bos>
    assert not check_pooled_output(lambda h, ids, eos: h)
    assert not check_pooled_output(lambda h, ids, eos: None)
    assert not check_pooled_output(lambda h, ids, eos: pooled(h.roll(1, 1), ids, eos))  # one position late
    lines = _lines(capsys)
    assert lines[0].startswith("✅") and all(line.startswith("❌") for line in lines[1:])
    assert "padding" in lines[1] and "average" in lines[2] and "find each row's <eos>" in lines[3]
    assert "one vector per prompt, shape (4, 16)" in lines[4] and "returns None" in lines[5]
    assert "find each row's <eos>" in lines[6]


def test_check_pooled_output_matches_the_text_encoder():
    tok = WordTokenizer.from_texts([], model_max_length=8)
    enc = tok(["a thick seven", "", "a large thin upright two"])
    torch.manual_seed(0)
    model = TextEncoder(TextEncoderConfig(vocab_size=tok.vocab_size, max_position=8)).eval()
    out = model(enc.input_ids, enc.attention_mask)
    torch.testing.assert_close(pooled(out.last_hidden_state, enc.input_ids, tok.eos_token_id), out.pooler_output)


# --- the derivations and the prediction that replaced the re-typing exercises in the notebook ------------------------


def test_check_cross_attention_params_accepts_the_formula_and_a_count(capsys):
    from diffusion_lab.course.exercises.nb05_text_conditioning import check_cross_attention_params

    assert check_cross_attention_params(lambda c, d: 2 * c * c + 2 * c * d + c)
    assert check_cross_attention_params(lambda c, d: sum(p.numel() for p in CrossAttention(c, d, heads=1).parameters()))
    assert check_cross_attention_params(lambda c, d: torch.tensor(2 * c * (c + d) + c))  # a one-element tensor is fine
    assert all(line.startswith("✅") for line in _lines(capsys))


@pytest.mark.parametrize(
    ("fn", "words"),
    [
        (lambda c, d: 2 * c * c + 2 * c * d, "bias"),
        (lambda c, d: 4 * c * c + c, "D × C"),
        (lambda c, d: 2 * c * c + 2 * c * d + 4 * c, "no bias"),
        (lambda c, d: c * c + 2 * c * d + c, "W_o"),
        (lambda c, d: 3 * c * d, "count W_q"),
        (lambda c, d: 2.5, "whole number"),
        (lambda c, d: None, "None"),
    ],
)
def test_check_cross_attention_params_rejects_typical_mistakes(fn, words, capsys):
    from diffusion_lab.course.exercises.nb05_text_conditioning import check_cross_attention_params

    assert not check_cross_attention_params(fn)
    line = _lines(capsys)[-1]
    assert line.startswith("❌") and words in line, line


def test_check_cross_attention_macs_accepts_the_formula(capsys):
    from diffusion_lab.course.exercises.nb05_text_conditioning import check_cross_attention_macs

    assert check_cross_attention_macs(lambda n, m, c, d: 2 * n * c * c + 2 * m * d * c + 2 * n * m * c)
    assert check_cross_attention_macs(lambda n, m, c, d: 2 * c * (n * c + m * d + n * m))
    assert all(line.startswith("✅") for line in _lines(capsys))


@pytest.mark.parametrize(
    ("fn", "words"),
    [
        (lambda n, m, c, d: 2 * n * c * c + 2 * m * d * c + 2 * n * n * c, "N × M"),
        (lambda n, m, c, d: 2 * n * c * c + 2 * m * d * c + n * m * c, "A V"),
        (lambda n, m, c, d: 2 * n * m * c, "projections"),
        (lambda n, m, c, d: 2 * n * c * c + 2 * n * d * c + 2 * n * m * c, "once per text token"),
        (lambda n, m, c, d: 2 * (2 * n * c * c + 2 * m * d * c + 2 * n * m * c), "not FLOPs"),
        (lambda n, m, c, d: n * m, "add up"),
    ],
)
def test_check_cross_attention_macs_rejects_typical_mistakes(fn, words, capsys):
    from diffusion_lab.course.exercises.nb05_text_conditioning import check_cross_attention_macs

    assert not check_cross_attention_macs(fn)
    line = _lines(capsys)[-1]
    assert line.startswith("❌") and words in line, line


def test_check_padding_prediction_is_judged_by_the_experiment(capsys):
    """The right answer is measured, not stored: left padding, so every position but the first <pad> changes, and
    the pooled <eos> state with them."""
    from diffusion_lab.course.exercises.nb05_text_conditioning import _padding_effect, check_padding_prediction

    assert _padding_effect() == ([1, 2, 3, 4, 5, 6, 7], True, 4)
    assert check_padding_prediction([1, 2, 3, 4, 5, 6, 7], True)
    assert check_padding_prediction((7, 6, 5, 4, 3, 2, 1), True)  # any order
    assert _lines(capsys)[-1].startswith("✅")


def test_left_padding_moves_the_pads_to_the_front():
    from diffusion_lab.course.exercises.nb05_text_conditioning import _left_padded
    from diffusion_lab.models.text_encoder import WordTokenizer

    tok = WordTokenizer.from_texts([], model_max_length=8)
    ids, mask = _left_padded(tok(["a seven"]))
    assert ids[0].tolist() == [0, 0, 0, 0, 2, tok.vocab.index("a"), tok.vocab.index("seven"), 3]
    assert mask[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize(
    ("positions", "pooled", "words"),
    [
        ([5, 6, 7], False, "right-padded case"),
        ([0, 1, 2, 3, 4, 5, 6, 7], True, "position 0"),
        ([1, 2, 3], True, "real tokens"),
        ([1, 2, 3, 4, 5, 6, 7], False, "<eos>"),
        ([4, 5, 6, 7], True, "a <pad> query"),
        ([], False, "real tokens"),
        ("5, 6, 7", False, "list of ints"),
        ([5, 6, 7], "no", "True or False"),
    ],
)
def test_check_padding_prediction_rejects_wrong_predictions(positions, pooled, words, capsys):
    from diffusion_lab.course.exercises.nb05_text_conditioning import check_padding_prediction

    assert not check_padding_prediction(positions, pooled)
    line = _lines(capsys)[-1]
    assert line.startswith("❌") and words in line, line
