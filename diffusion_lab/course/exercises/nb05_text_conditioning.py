"""Exercise checkers of notebook 05 (text conditioning and cross-attention).

=========================  ==============================================================================
checker                    the student's function must return
=========================  ==============================================================================
``check_tokenize``         (input_ids, attention_mask) as WordTokenizer: <bos> words <eos> <pad>…
``check_cross_attention``  softmax(QKᵀ/√d + mask)·V with padded keys removed (Vaswani et al. 2017, Eq. 1)
``check_pooled_output``    each row's state at its first <eos> (CLIP's pooled output)
=========================  ==============================================================================

Each checker calls the student's function on seeded cases, compares it with the library's reference (or an
independent formula) and prints one ✅/❌ line with a hint naming the usual mistake; an error raised by the student's
code becomes a ❌, and only a checker's own arguments raise (a non-callable ``fn``: ``TypeError``). Shared
machinery: :mod:`diffusion_lab.course.exercises.checking`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from diffusion_lab.course.exercises.checking import _as_int_list, _call, _call_tensor, _check_callable, _kind, _report
from diffusion_lab.models.text_encoder import WordTokenizer

__all__ = ["check_tokenize", "check_cross_attention", "check_pooled_output"]


def check_tokenize(fn: Callable[[str, list[str], int], tuple[list[int], list[int]]]) -> bool:
    """``fn(text, vocab, max_length)`` must return (input_ids, attention_mask) like ``WordTokenizer``: two lists of
    ``max_length`` ints, <bos> (2) word ids <eos> (3) then <pad> (0); unknown words → <unk> (1); lower-case words
    split on anything that is not a letter or digit; too long: keep <bos>, the first max_length − 2 words, <eos>."""
    _check_callable(fn)

    what = "tokenizer"
    vocab = WordTokenizer.from_texts([]).vocab
    cases = [
        ("a thick seven", 8, "a plain caption"),
        ("", 8, 'the empty prompt "" (it still gets <bos> and <eos>)'),
        ("A Thick, slanted SEVEN!", 8, "capitals and punctuation (lower-case; split on non-letters)"),
        ("a purple seven", 8, "an unknown word (it becomes <unk>, id 1)"),
        ("a large thick slanted handwritten seven", 6, "a prompt longer than max_length (truncate the words)"),
    ]
    for text, max_length, about in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the reference warns about "purple"
            enc = WordTokenizer(vocab, model_max_length=max_length)(text, return_tensors=None)
        want = (enc["input_ids"][0], enc["attention_mask"][0])
        got, hint = _call(fn, what, text, list(vocab), max_length)
        if hint:
            return _report(False, what, hint)
        if not (isinstance(got, tuple | list) and len(got) == 2):
            return _report(False, what, f"return two lists of ints: (input_ids, attention_mask), got {_kind(got)}")
        (ids, problem_ids), (mask, problem_mask) = _as_int_list(got[0]), _as_int_list(got[1])
        if problem_ids or problem_mask:
            problem = f"input_ids: {problem_ids}" if problem_ids else f"attention_mask: {problem_mask}"
            return _report(False, what, f"return two lists of ints: (input_ids, attention_mask); {problem}")
        if (ids, mask) == want:
            continue
        if len(ids) != max_length or len(mask) != max_length:
            hint = f"both lists must have max_length = {max_length} entries (pad ids with 0, the mask with 0)"
        elif ids[:1] != [2] or 3 not in ids:
            hint = "start with <bos> (id 2) and end the words with <eos> (id 3), before the padding"
        elif ids == want[0]:
            hint = "the mask is 1 on <bos>, the words and <eos>, and 0 on the padding"
        else:
            hint = f"expected ids {want[0]}, got {ids}"
        return _report(False, what, f"wrong for {text!r} ({about}): {hint}")
    return _report(True, what, "")


def check_cross_attention(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(q, k, v, mask)`` must return softmax(Q Kᵀ/√d, padded keys removed) V.

    q (B, heads, N, d) from the image positions; k, v (B, heads, M, d) from the text tokens; mask (B, M), 1 for
    real tokens and 0 for padding; the result is (B, heads, N, d).
    """
    _check_callable(fn)
    what = "cross-attention"
    g = torch.Generator().manual_seed(14)
    for b, nh, n, m, d in [(2, 4, 49, 8, 16), (3, 1, 5, 6, 8)]:
        q = torch.randn(b, nh, n, d, generator=g)  # (B, heads, N, d)
        k, v = torch.randn(2, b, nh, m, d, generator=g).unbind(0)  # (B, heads, M, d) each
        lengths = torch.randint(2, m + 1, (b,), generator=g)
        lengths[0] = 2  # at least one row with padding
        mask = (torch.arange(m)[None] < lengths[:, None]).long()  # (B, M)
        scores = q @ k.transpose(-1, -2)  # (B, heads, N, M)
        hide = mask[:, None, None, :] == 0
        want = (scores / d**0.5).masked_fill(hide, float("-inf")).softmax(-1) @ v
        shape_hint = "return (B, heads, N, d) = {want}, not {got}: A V, not A"
        got, hint = _call_tensor(fn, what, want, shape_hint, q, k, v, mask)
        if hint:
            return _report(False, what, hint)
        if torch.allclose(got, want, atol=1e-5):
            continue
        if torch.allclose(got, scores.masked_fill(hide, float("-inf")).softmax(-1) @ v, atol=1e-5):
            hint = "divide the scores Q Kᵀ by √d (d = q.shape[-1]) before the softmax"
        elif torch.allclose(got, (scores / d**0.5).softmax(-1) @ v, atol=1e-5):
            hint = "padded keys still get weight: set their scores to −inf where mask == 0 before the softmax"
        else:
            hint = "A = softmax over the keys (the last axis, M) of Q Kᵀ/√d with −inf at padding; return A V"
        return _report(False, what, hint)
    return _report(True, what, "")


def check_pooled_output(fn: Callable[..., torch.Tensor]) -> bool:
    """``fn(last_hidden_state, input_ids, eos_token_id)`` must return each row's state at its first <eos>: (B, D).

    last_hidden_state (B, M, D), input_ids (B, M) padded on the right with 0, as the tokenizer returns them.
    """
    _check_callable(fn)
    what = "pooled output"
    g = torch.Generator().manual_seed(15)
    b, m, dim, eos = 4, 8, 16, 3
    lengths = torch.tensor([2, 5, 8, 4])  # <bos> … <eos>, then padding
    ids = torch.zeros(b, m, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        ids[i, :n] = torch.randint(4, 26, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = 2, eos
    h = torch.randn(b, m, dim, generator=g)
    want = h[torch.arange(b), lengths - 1]
    got, hint = _call_tensor(fn, what, want, "return one vector per prompt, shape {want}, not {got}", h, ids, eos)
    if hint:
        return _report(False, what, hint)
    if torch.allclose(got, h[:, -1]):
        return _report(False, what, "the last position is padding for short prompts: take the position of <eos>")
    if torch.allclose(got, h.mean(1)):
        return _report(False, what, "CLIP does not average the tokens: it takes the state at the <eos> position")
    return _report(
        torch.allclose(got, want),
        what,
        "find each row's <eos>, e.g. (input_ids == eos_token_id).int().argmax(1), then index h[arange(B), eos]",
    )
