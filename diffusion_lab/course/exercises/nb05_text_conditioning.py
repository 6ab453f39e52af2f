"""Exercise checkers of notebook 05 (text conditioning and cross-attention).

=========================  ==============================================================================
checker                    the student's function must return
=========================  ==============================================================================
``check_tokenize``         (input_ids, attention_mask) as WordTokenizer: <bos> words <eos> <pad>…
``check_cross_attention``  softmax(QKᵀ/√d + mask)·V with padded keys removed (Vaswani et al. 2017, Eq. 1)
``check_pooled_output``    each row's state at its first <eos> (CLIP's pooled output)
``check_cross_attention_params``  parameters of one cross-attention layer as a formula in C and D (derivation)
``check_cross_attention_macs``    multiply-adds of one cross-attention forward, in N, M, C and D (derivation)
``check_padding_prediction``      which states of a left-padded prompt change without the padding mask (prediction)
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
from torch.utils.flop_counter import FlopCounterMode

from diffusion_lab.course.exercises.checking import (
    _as_int_list,
    _as_number,
    _call,
    _call_tensor,
    _check_callable,
    _kind,
    _report,
)
from diffusion_lab.models.text_encoder import TextEncoder, TextEncoderConfig, WordTokenizer
from diffusion_lab.models.unet import CrossAttention

__all__ = [
    "check_tokenize",
    "check_cross_attention",
    "check_pooled_output",
    "check_cross_attention_params",
    "check_cross_attention_macs",
    "check_padding_prediction",
]


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


_SIZES = [(64, 64), (320, 768), (1280, 768), (48, 16)]  # (C, D): the tiny model, SD 1.5's widths, a small odd pair


def check_cross_attention_params(fn: Callable[[int, int], int]) -> bool:
    """``fn(C, D)`` must return the number of parameters of one cross-attention layer (``CrossAttention(C, D)``):
    image tokens of width C, text states of width D; to_q, to_k, to_v without bias, to_out with bias.
    Counted from the module itself: 2·C² + 2·C·D + C."""
    _check_callable(fn)
    what = "cross-attention parameters"
    for c, d in _SIZES:
        with torch.device("meta"):  # shapes only: counting needs no memory
            want = sum(p.numel() for p in CrossAttention(c, d, heads=4 if c % 4 == 0 else 1).parameters())
        got, hint = _call(fn, what, c, d)
        if hint:
            return _report(False, what, hint)
        value, problem = _as_number(got, whole=True)
        if problem:
            return _report(False, what, f"return one whole number, {problem}")
        if value == want:
            continue
        if value == 2 * c * c + 2 * c * d:
            hint = "the output projection W_o has a bias (C more numbers)"
        elif value == 4 * c * c + c:
            hint = "K and V are computed from the text states: W_k and W_v are D × C, not C × C"
        elif value == 2 * c * c + 2 * c * d + 4 * c:
            hint = "to_q, to_k and to_v have no bias here (as in Stable Diffusion); only to_out has one"
        elif value == c * c + 2 * c * d + c:
            hint = "count the output projection W_o (C × C) as well as W_q"
        else:
            hint = f"for C = {c}, D = {d} the layer has {want:,} parameters, you said {value:,}: count W_q, W_k, W_v, W_o and b_o"
        return _report(False, what, hint)
    return _report(True, what, "")


def _macs(n: int, m: int, c: int, d: int) -> int:
    """Multiply-adds of one CrossAttention forward (batch 1), counted by PyTorch's FLOP counter (2 FLOPs each) on the
    ``meta`` device: shapes only, so even SD 1.5's sizes are counted in milliseconds."""
    with torch.device("meta"):
        layer = CrossAttention(c, d, heads=4 if c % 4 == 0 else 1)
        x, ctx = torch.zeros(1, n, c), torch.zeros(1, m, d)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer(x, ctx)
    return counter.get_total_flops() // 2


def check_cross_attention_macs(fn: Callable[[int, int, int, int], int]) -> bool:
    """``fn(N, M, C, D)`` must return the multiply-adds of one cross-attention forward for one image: N image tokens of
    width C, M text tokens of width D (matrix products only; the softmax and the scaling are not counted).
    Checked against PyTorch's FLOP counter on the library's ``CrossAttention``: 2·N·C² + 2·M·D·C + 2·N·M·C."""
    _check_callable(fn)
    what = "cross-attention multiply-adds"
    for n, m, (c, d) in zip([49, 4096, 64, 10], [8, 77, 77, 3], _SIZES, strict=True):
        want = _macs(n, m, c, d)
        got, hint = _call(fn, what, n, m, c, d)
        if hint:
            return _report(False, what, hint)
        value, problem = _as_number(got, whole=True)
        if problem:
            return _report(False, what, f"return one whole number, {problem}")
        if value == want:
            continue
        if value == 2 * n * c * c + 2 * m * d * c + 2 * n * n * c:
            hint = "the scores Q Kᵀ compare N queries with M keys: an N × M matrix, not N × N"
        elif value == 2 * n * c * c + 2 * m * d * c + n * m * c:
            hint = "two products involve A: Q Kᵀ (N·M·C) and A V (N·M·C again)"
        elif value == 2 * n * m * c:
            hint = "add the four projections: W_q and W_o act on N tokens (N·C² each), W_k and W_v on M tokens (M·D·C each)"
        elif value == 2 * n * c * c + 2 * n * d * c + 2 * n * m * c:
            hint = "K and V are computed once per text token (M of them), not once per image position"
        elif value == want * 2:
            hint = "count multiply-adds (one per multiplication), not FLOPs (two per multiply-add)"
        else:
            hint = (f"for N = {n}, M = {m}, C = {c}, D = {d} the forward takes {want:,} multiply-adds, you said "
                    f"{value:,}: add up the four projections and the two products with A")  # fmt: skip
        return _report(False, what, hint)
    return _report(True, what, "")


def _left_padded(enc) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokenizer's right-padded (input_ids, attention_mask) with the padding moved to the front (left padding,
    as a tokenizer with ``padding_side="left"`` returns it): ⟨pad⟩… ⟨bos⟩ words ⟨eos⟩."""
    shift = int((enc.attention_mask == 0).sum())
    return enc.input_ids.roll(shift, dims=1), enc.attention_mask.roll(shift, dims=1)


def _padding_effect(prompt: str = "a seven", max_length: int = 8) -> tuple[list[int], bool, int]:
    """Run a seeded text encoder on one LEFT-padded prompt with and without its padding mask: the positions whose
    last_hidden_state changes, whether the pooled vector changes, and the number of padding tokens in front."""
    tok = WordTokenizer.from_texts([], model_max_length=max_length)
    ids, mask = _left_padded(tok([prompt]))
    with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's random state untouched
        torch.manual_seed(0)
        model = TextEncoder(TextEncoderConfig(vocab_size=tok.vocab_size, max_position=max_length)).eval()
    with torch.no_grad():
        masked = model(ids, attention_mask=mask)
        causal_only = model(ids, attention_mask=None)
    diff = (masked.last_hidden_state - causal_only.last_hidden_state)[0].abs().amax(-1)  # (M,)
    pooled = not torch.allclose(masked.pooler_output, causal_only.pooler_output, rtol=0, atol=1e-6)
    return [int(i) for i in torch.nonzero(diff > 1e-6).flatten()], pooled, int((mask == 0).sum())


def check_padding_prediction(changed_positions: object, pooled_changes: object) -> bool:
    """A prediction, checked by running the experiment: the prompt "a seven" is padded on the LEFT to M = 8
    positions, <pad> <pad> <pad> <pad> <bos> a seven <eos> (positions 0..7), and encoded once with its padding mask
    and once with ``attention_mask=None`` (the causal mask only). ``changed_positions``: the positions whose
    ``last_hidden_state`` changes; ``pooled_changes``: whether ``pooler_output`` changes."""
    what = "padding-mask prediction"
    positions, problem = _as_int_list(changed_positions)
    if problem:
        return _report(False, what, f"give the positions as a list of ints, e.g. [0, 1]; {problem}")
    if not isinstance(pooled_changes, bool):
        return _report(False, what, f"pooled_changes is True or False, got {_kind(pooled_changes)}")
    want, want_pooled, n_pad = _padding_effect()
    got = sorted(set(positions))
    if got == want and pooled_changes == want_pooled:
        return _report(True, what, "")
    if got == [n_pad + 1, n_pad + 2, n_pad + 3] and not pooled_changes:
        hint = ("that is the right-padded case of section 3; here the pads come first, so draw the combined matrix "
                "with the four <pad> rows and columns at positions 0..3")  # fmt: skip
    elif 0 in got:
        hint = "position 0 may read only key 0 under the causal mask, with or without the padding mask"
    elif any(p not in got for p in range(n_pad, 8)):
        hint = (f"the real tokens (positions {n_pad}..7) come after the pads: without the padding mask, which earlier "
                "keys may they read?")  # fmt: skip
    elif pooled_changes != want_pooled:
        hint = "the pooled vector is the state at <eos> (position 7): does that state change?"
    else:
        hint = ("a <pad> query at positions 1..3 reads only itself with the mask (the exception) — and without it? "
                "List the keys each row may read in both cases")  # fmt: skip
    return _report(False, what, hint)
