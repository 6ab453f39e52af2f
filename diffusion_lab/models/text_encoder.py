"""A word tokenizer and a small causal transformer text encoder shaped like CLIP's text model.

=====================  ==========  ====================================================================================
code                   symbol      meaning
=====================  ==========  ====================================================================================
``input_ids``          (B, L)      <bos> w₁ … wₙ <eos> <pad> …; L = ``max_length`` (8 in the course recipe: the longest
                                   caption has 7 tokens); ``attention_mask`` is 1 on <bos> … <eos>
``last_hidden_state``  h           (B, L, D) per-token states: what the U-Net's cross-attention reads
``pooler_output``      h_eos       (B, D) the state at the first <eos>, one vector per prompt (SDXL adds it to the time
                                   embedding)
``text_embeds``        W·h_eos     (B, projection_dim) when ``projection_dim`` is set (CLIP's text projection)
=====================  ==========  ====================================================================================

h⁰ = E_tok[input_ids] + E_pos[0..L−1];  hˡ = hˡ⁻¹ + MHA(LN(hˡ⁻¹)) with a causal mask, then + MLP(LN(·));  h = LN(hᴺ)
(pre-LayerNorm transformer, as CLIP's text encoder, Radford et al. 2021, §2.4).

Stable Diffusion's text encoder is CLIP's, pretrained contrastively and kept frozen: SD 1.5 feeds CLIP ViT-L/14's
(77, 768) states, unmasked, to cross-attention; SDXL concatenates CLIP-L and OpenCLIP-bigG per token (768 + 1280 =
2048) and adds bigG's pooled output to the time embedding; SD3 adds T5-XXL. Here the vocabulary is a few dozen caption
words, so :class:`TextEncoder` is a tiny CLIP-like transformer (width 64, 2 layers, 8 positions in the recipe) trained
jointly with the denoiser, and :class:`WordTokenizer` mirrors ``pipe.tokenizer(...)`` of transformers (padding,
truncation that keeps <bos>/<eos>, ``add_tokens`` for textual inversion). Both save and load as JSON + safetensors; a
missing or damaged file is a :class:`~diffusion_lab.utils.errors.FileError`.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffusion_lab.mnist.captions import ATTRIBUTE_WORDS, DIGIT_NAMES, PLACEHOLDER_PATTERN, _split_words, is_placeholder
from diffusion_lab.utils.checkpoint import PretrainedModel, write_json_atomic
from diffusion_lab.utils.errors import FileError, check_int, check_number, check_tensor

__all__ = [
    "BatchEncoding",
    "PromptTruncatedWarning",
    "PromptWarning",
    "TextEncoder",
    "TextEncoderConfig",
    "TextEncoderOutput",
    "UnknownTokenWarning",
    "WordTokenizer",
]

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")  # ids 0, 1, 2, 3
_CAPTION_WORDS = tuple(w for pair in ATTRIBUTE_WORDS.values() for w in pair)
BASE_WORDS = ("a", "an", "the", "digit", "number", "handwritten", *DIGIT_NAMES, *_CAPTION_WORDS)
_TOKENIZER_FILE = "tokenizer.json"
_TOKENIZER_FORMAT = "diffusion_lab.word_tokenizer/1"


_NON_ASCII = re.compile(r"[^\x00-\x7f]+")  # runs of characters the word pattern [a-z0-9] never keeps


class PromptWarning(UserWarning):
    """A prompt was not read as written: words cut off, unknown words or characters (filter this to silence all)."""


class PromptTruncatedWarning(PromptWarning):
    """A prompt was longer than ``max_length`` tokens and its last words were dropped."""


class UnknownTokenWarning(PromptWarning):
    """Words the vocabulary lacks became <unk>, or characters outside it (emoji, accents) were dropped."""


class BatchEncoding(dict):
    """The tokenizer's output: a dict (``enc["input_ids"]``) with attribute access (``enc.input_ids``), like transformers'."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: torch.device | str) -> BatchEncoding:
        return BatchEncoding({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.items()})


def _write_json_atomic(path: Path, obj: object) -> None:

    write_json_atomic(path, obj)


class WordTokenizer:
    """Word-level tokenizer: lower-case, split on whitespace and punctuation, one id per known word.

    ``tokenizer(texts)`` returns a :class:`BatchEncoding` with ``input_ids`` and ``attention_mask``, (B, L) long,
    L = ``max_length`` (default ``model_max_length``): <bos> w₁ … wₙ <eos> <pad> … with mask 1 on <bos>…<eos>.
    The empty prompt "" gives <bos> <eos>: the unconditional prompt of classifier-free guidance. Truncation keeps
    <bos> and <eos> and drops words, as CLIP's tokenizer does. Unknown words become <unk>, with a warning naming them.

    Warnings (:class:`PromptWarning`, once per call, naming the prompt and the words): a prompt cut to ``max_length``
    (:class:`PromptTruncatedWarning`; ``truncation=True`` passed explicitly asks for the cut and stays silent, as
    transformers' tokenizers), unknown words and characters outside the vocabulary — emoji, accented letters — which
    are dropped (:class:`UnknownTokenWarning`). The ids are the same with or without the warnings.
    """

    pad_token, unk_token, bos_token, eos_token = SPECIAL_TOKENS
    pad_token_id, unk_token_id, bos_token_id, eos_token_id = range(4)

    def __init__(self, vocab: Sequence[str], model_max_length: int = 77):
        if isinstance(vocab, str) or not isinstance(vocab, Sequence) or not all(isinstance(w, str) for w in vocab):
            raise TypeError(
                f"vocab must be a list of words (strings), e.g. WordTokenizer.from_texts(captions), got {vocab!r:.80}"
            )
        vocab = list(vocab)
        if tuple(vocab[:4]) != SPECIAL_TOKENS:
            raise ValueError(f"vocab must start with the special tokens {list(SPECIAL_TOKENS)}, got {vocab[:4]}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab has repeated words")
        bad = [w for w in vocab[4:] if _split_words(w) != [w] and not is_placeholder(w)]
        if bad:
            raise ValueError(
                f"vocab words must be lower-case letters and digits only (or an added token like '<my-token>'), got {bad[:5]}"
            )
        model_max_length = check_int("model_max_length (room for <bos> and <eos>)", model_max_length, minimum=2)
        self.vocab = vocab  # id → word
        self.token_to_id = {w: i for i, w in enumerate(vocab)}
        self.model_max_length = model_max_length

    @classmethod
    def from_texts(
        cls, texts: Sequence[str] = (), extra_words: Sequence[str] = (), *, model_max_length: int = 77
    ) -> WordTokenizer:
        """Vocabulary: special tokens, the base words (articles, "digit", digit names, attribute words), then every
        other word of ``texts`` and ``extra_words`` in sorted order (so the same texts always give the same ids)."""
        if isinstance(texts, str) or isinstance(extra_words, str):
            raise TypeError("texts and extra_words must be lists of strings, not one string")
        words = {w for t in [*texts, *extra_words] for w in _split_words(t)}
        return cls([*SPECIAL_TOKENS, *BASE_WORDS, *sorted(words - set(BASE_WORDS))], model_max_length=model_max_length)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size}, model_max_length={self.model_max_length})"

    def tokenize(self, text: str) -> list[str]:
        """The words of ``text`` (lower-cased, punctuation dropped), before ids and special tokens.

        An added token in the vocabulary (``"<wide-three>"``, see :meth:`add_tokens`) stays one word; angle brackets
        around anything else are punctuation (``"<wide-three>"`` is "wide", "three" until it is added)."""
        words = []
        for w in re.findall(PLACEHOLDER_PATTERN + r"|[a-z0-9]+", text.lower()):
            words.extend([w] if w in self.token_to_id or not is_placeholder(w) else _split_words(w))
        return words

    def add_tokens(self, tokens: str | Sequence[str]) -> int:
        """Append new words to the vocabulary (ids ``vocab_size``, ``vocab_size + 1``, …), as transformers'
        ``tokenizer.add_tokens``; returns how many were new (words already known are skipped). A token is a plain
        lower-case word ("sks") or a placeholder in angle brackets ("<wide-three>"). Afterwards the text encoder's
        table needs the new rows: ``text_encoder.resize_token_embeddings(tokenizer.vocab_size)``."""
        tokens = [tokens] if isinstance(tokens, str) else list(tokens)
        bad = [t for t in tokens if not isinstance(t, str) or (_split_words(t) != [t] and not is_placeholder(t))]
        if bad:
            raise ValueError(
                f"tokens must be lower-case words ('sks') or placeholders in angle brackets ('<wide-three>'), got {bad}"
            )
        new = [t for t in dict.fromkeys(tokens) if t not in self.token_to_id]
        for t in new:
            self.token_to_id[t] = len(self.vocab)
            self.vocab.append(t)
        return len(new)

    def encode(self, text: str, *, max_length: int | None = None, truncation: bool | None = None) -> list[int]:
        """One text → [<bos>, ids…, <eos>] (no padding). Unknown words → <unk>, with a warning naming them.
        ``truncation``: None (default, as ``tokenizer(texts)``) cuts with a :class:`PromptTruncatedWarning` naming
        what was dropped, True cuts silently (asked for), False raises."""
        return self._encode([text], max_length, truncation)[0]

    def _encode(self, texts: list[str], max_length: int | None, truncation: bool | None) -> list[list[int]]:
        max_length = self.model_max_length if max_length is None else max_length
        max_length = check_int("max_length", max_length, minimum=None)
        if max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2 (room for <bos> and <eos>), got {max_length!r}")
        if truncation is not None and not isinstance(truncation, bool):
            raise TypeError(f"truncation must be True, False or None (truncate with a warning), got {truncation!r}")
        unknown: set[str] = set()
        cut, dropped = [], []  # per prompt: "prompt i ... 'words'"
        out = []
        for i, text in enumerate(texts):
            ids, words = [], self.tokenize(text)
            for w in words:
                if w not in self.token_to_id:
                    unknown.add(w)
                ids.append(self.token_to_id.get(w, self.unk_token_id))
            if len(ids) + 2 > max_length:
                if truncation is False:
                    raise ValueError(
                        f"{text!r} is {len(ids) + 2} tokens with <bos> and <eos>, more than max_length={max_length}: "
                        "shorten it, raise max_length, or pass truncation=True"
                    )
                ids = ids[: max_length - 2]
                cut.append(f"prompt {i} is longer than the tokenizer's {max_length} tokens: dropped "
                           f"{' '.join(words[max_length - 2:])!r}")  # fmt: skip
            out.append([self.bos_token_id, *ids, self.eos_token_id])
            chars = list(dict.fromkeys(_NON_ASCII.findall(text)))
            if chars:
                it = "it was" if len(chars) == 1 else "they were"
                are = "is" if len(chars) == 1 else "are"
                dropped.append(f"prompt {i}: {', '.join(map(repr, chars))} {are} not in the vocabulary; {it} dropped")
        said = []  # one UnknownTokenWarning per call, whatever was unknown
        if unknown:
            said.append(
                f"unknown words {sorted(unknown)} were mapped to <unk>; the vocabulary knows {self.vocab_size - 4} "
                "words (tokenizer.vocab): rephrase, or build the tokenizer with WordTokenizer.from_texts(..., extra_words=...)"
            )
        if dropped:
            said.append(
                "; ".join(dropped) + " (the tokenizer reads lower-case ASCII letters and digits: write the words out)"
            )
        if said:
            warnings.warn("; ".join(said), UnknownTokenWarning, stacklevel=3)
        if cut and truncation is None:
            warnings.warn(
                "; ".join(cut) + " (shorten the prompt, or pass truncation=True to cut it without this warning)",
                PromptTruncatedWarning,
                stacklevel=3,
            )
        return out

    def __call__(
        self,
        texts: str | Sequence[str],
        padding: bool | str = "max_length",
        max_length: int | None = None,
        truncation: bool | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchEncoding:
        """Tokenize one text or a list: ``input_ids`` and ``attention_mask``, (B, L) long tensors (B = 1 for one text).

        padding: ``"max_length"`` (L = max_length, default ``model_max_length``), ``"longest"`` or True (L = longest
        in the batch), False or ``"do_not_pad"`` (no padding; needs ``return_tensors=None`` if lengths differ).
        return_tensors: ``"pt"`` for tensors, None for lists of lists.
        truncation: None (default) cuts a prompt longer than the length to its first words and warns
        (:class:`PromptTruncatedWarning`, naming the dropped words); True cuts silently; False raises ``ValueError``.
        """
        if isinstance(texts, str):
            texts = [texts]
        elif not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            if isinstance(texts, (list, tuple)):
                got = "a list containing " + ", ".join(
                    sorted({type(t).__name__ for t in texts if not isinstance(t, str)})
                )
            else:
                got = type(texts).__name__
            raise TypeError(f"texts must be a string or a list of strings, got {got}")
        if len(texts) == 0:
            raise ValueError('texts is an empty list: pass at least one string ("" is the unconditional prompt)')
        if padding not in ("max_length", "longest", "do_not_pad", True, False):
            raise ValueError(f"padding must be 'max_length', 'longest', 'do_not_pad', True or False, got {padding!r}")
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        ids = self._encode(list(texts), max_length, truncation)
        max_length = None if max_length is None else check_int("max_length", max_length)  # np.int64 → int
        if padding == "max_length":
            length = self.model_max_length if max_length is None else max_length
        elif padding in ("longest", True):
            length = max((len(s) for s in ids), default=2)
        else:
            length = None
        if length is not None:
            mask = [[1] * len(s) + [0] * (length - len(s)) for s in ids]
            ids = [s + [self.pad_token_id] * (length - len(s)) for s in ids]
        else:
            mask = [[1] * len(s) for s in ids]
        if return_tensors is None:
            return BatchEncoding(input_ids=ids, attention_mask=mask)
        if len({len(s) for s in ids}) > 1:
            raise ValueError("texts have different lengths: pass padding='max_length' or 'longest' to get tensors")
        return BatchEncoding(
            input_ids=torch.tensor(ids, dtype=torch.long).reshape(len(ids), -1),  # (B, L)
            attention_mask=torch.tensor(mask, dtype=torch.long).reshape(len(ids), -1),  # (B, L)
        )

    def decode(self, ids: torch.Tensor | Sequence[int], skip_special_tokens: bool = True) -> str:
        """One sequence of ids → text. <pad>, <bos> and <eos> are dropped if ``skip_special_tokens`` (<unk> is kept)."""
        ids = torch.as_tensor(ids).reshape(-1).tolist()
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids must be in 0..{self.vocab_size - 1} (vocab_size {self.vocab_size}), got {bad[:5]}")
        skip = {self.pad_token_id, self.bos_token_id, self.eos_token_id} if skip_special_tokens else set()
        return " ".join(self.vocab[i] for i in ids if i not in skip)

    def batch_decode(self, ids: torch.Tensor | Sequence[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
        """(B, L) ids → B texts."""
        return [self.decode(row, skip_special_tokens) for row in ids]

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` (the vocabulary in id order and ``model_max_length``) into ``directory``, atomically."""
        directory = Path(directory)
        obj = {"format": _TOKENIZER_FORMAT, "model_max_length": self.model_max_length, "vocab": self.vocab}
        _write_json_atomic(directory / _TOKENIZER_FILE, obj)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> WordTokenizer:
        """Load a tokenizer written by :meth:`save_pretrained`."""

        path = Path(directory) / _TOKENIZER_FILE
        if not path.is_file():
            raise FileError(f"no tokenizer at {Path(directory)}: {_TOKENIZER_FILE} is missing")
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise FileError(
                f"{path} is not valid JSON (truncated?): {e}; write it again with WordTokenizer.save_pretrained (re-run "
                "the cell that saved it), or delete the folder"
            ) from e
        if not isinstance(obj, dict) or obj.get("format") != _TOKENIZER_FORMAT:
            raise FileError(
                f"{path} is not a diffusion_lab word tokenizer: write it with WordTokenizer.save_pretrained"
            )
        try:
            return cls(obj["vocab"], model_max_length=obj["model_max_length"])
        except (KeyError, TypeError, ValueError) as e:
            raise FileError(
                f"{path} is damaged ({type(e).__name__}: {e}): write it again with WordTokenizer.save_pretrained"
            ) from e


@dataclass
class TextEncoderConfig:
    """Shape of the text transformer (stored as JSON next to its weights). Set ``vocab_size`` to
    ``tokenizer.vocab_size`` and tokenize with ``max_length=max_position``."""

    vocab_size: int
    hidden_size: int = 64  # D
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4  # MLP width = mlp_ratio·D
    max_position: int = 16  # longest input (tokens, <bos> and <eos> included)
    projection_dim: int | None = None  # if set: text_embeds = pooler_output @ W, (B, projection_dim)
    dropout: float = 0.0
    pad_token_id: int = WordTokenizer.pad_token_id
    eos_token_id: int = WordTokenizer.eos_token_id
    extra: dict = field(default_factory=dict)  # free-form notes; not used by the network

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "mlp_ratio", "max_position"):
            setattr(self, name, check_int(name, getattr(self, name)))  # np.int64 / torch scalars → int
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if self.max_position < 2:
            raise ValueError(f"max_position must be >= 2 (room for <bos> and <eos>), got {self.max_position}")
        if self.projection_dim is not None:
            self.projection_dim = check_int("projection_dim (None for no projection)", self.projection_dim)
        self.dropout = check_number("dropout", self.dropout, minimum=0.0)
        for name in ("pad_token_id", "eos_token_id"):
            setattr(self, name, check_int(name, getattr(self, name), minimum=0))
        if not self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("pad_token_id", "eos_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name} must be in 0..{self.vocab_size - 1} (vocab_size), got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TextEncoderOutput:
    """What :class:`TextEncoder` returns, named as in transformers' ``CLIPTextModel(WithProjection)``."""

    last_hidden_state: torch.Tensor  # (B, L, D) per-token states after the final LayerNorm
    pooler_output: torch.Tensor  # (B, D) the state at each row's first <eos>
    text_embeds: torch.Tensor | None = None  # (B, projection_dim) if the config has a projection


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention, softmax(QKᵀ/√d_h + M)V, where M hides later tokens (causal) and padding keys.

    M[i, j] = 0 if j ≤ i and key j is not padding, else −∞. Token i always sees itself, so a row is never empty.
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        b, l, d = x.shape
        q, k, v = (
            self.qkv(x).reshape(b, l, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        )  # (B, nh, L, hs) each
        idx = torch.arange(l, device=x.device)
        allowed = idx[None, :] <= idx[:, None]  # (L, L) causal: query i sees keys j ≤ i
        if key_padding is not None:  # (B, L) True where the key is a real token
            allowed = allowed & (key_padding[:, None, :] | torch.eye(l, dtype=torch.bool, device=x.device))  # (B, L, L)
            allowed = allowed[:, None]  # (B, 1, L, L)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, L, hs)
        return self.proj(out.transpose(1, 2).reshape(b, l, d))  # (B, L, D)


class TransformerLayer(nn.Module):
    """Pre-LN block as in CLIP's text transformer: x + attn(LN(x)), then x + MLP(LN(x)) with MLP = Linear-GELU-Linear."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        d = cfg.hidden_size
        self.norm1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, cfg.num_heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(), nn.Linear(cfg.mlp_ratio * d, d))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), key_padding))  # (B, L, D)
        return x + self.dropout(self.mlp(self.norm2(x)))


class TextEncoder(PretrainedModel):
    """``encoder(input_ids, attention_mask=None) -> TextEncoderOutput`` (last_hidden_state, pooler_output, text_embeds).

    input_ids (B, L) with L ≤ ``max_position``, each row holding an <eos> (the tokenizer appends one).
    attention_mask (B, L), 1 for real tokens: padding keys are hidden from every token (None: only the causal mask,
    as ``CLIPTextModel`` without a mask; with right padding the causal mask already hides the padding from every
    token up to <eos>, so ``pooler_output`` is the same either way).
    """

    config_class = TextEncoderConfig

    def __init__(self, config: TextEncoderConfig | None = None):
        super().__init__()
        if not isinstance(config, TextEncoderConfig):
            raise TypeError(
                "TextEncoder needs a TextEncoderConfig, e.g. TextEncoderConfig(vocab_size=tokenizer.vocab_size)"
            )
        cfg = self.config = config
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_position, cfg.hidden_size)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers))
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size)
        self.text_projection = (
            nn.Linear(cfg.hidden_size, cfg.projection_dim, bias=False) if cfg.projection_dim is not None else None
        )
        for m in self.modules():  # CLIP-style initialisation: small normal weights, zero biases
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def resize_token_embeddings(self, new_num_tokens: int) -> nn.Embedding:
        """Grow the token-embedding table to ``new_num_tokens`` rows (after ``tokenizer.add_tokens``), as
        transformers' method of the same name: old rows are kept, new rows start at the mean of the old ones
        (a neutral word; textual inversion then overwrites its row). ``config.vocab_size`` follows."""
        old = self.token_embedding
        check_int("new_num_tokens", new_num_tokens)
        if new_num_tokens < old.num_embeddings:
            raise ValueError(
                f"new_num_tokens must be an integer >= the current vocab_size {old.num_embeddings} (rows are only "
                f"added, never removed), got {new_num_tokens!r}"
            )
        new = nn.Embedding(new_num_tokens, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight[: old.num_embeddings] = old.weight
            new.weight[old.num_embeddings :] = old.weight.mean(0)
        new.weight.requires_grad_(old.weight.requires_grad)
        self.token_embedding = new
        self.config.vocab_size = new_num_tokens
        return new

    def _check_inputs(self, input_ids: object, attention_mask: object) -> None:
        cfg = self.config
        check_tensor("input_ids", input_ids, "(B, L) of token ids from the tokenizer")
        if input_ids.ndim != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(
                f"input_ids must be a (B, L) integer tensor, got dtype {input_ids.dtype} shape {tuple(input_ids.shape)}"
            )
        b, l = input_ids.shape
        if b == 0 or l == 0:
            raise ValueError(f"input_ids is empty (shape {(b, l)})")
        if l > cfg.max_position:
            raise ValueError(
                f"input_ids has length {l} but this TextEncoder has max_position={cfg.max_position}: "
                f"tokenize with max_length={cfg.max_position} (tokenizer(texts, max_length={cfg.max_position}))"
            )
        if input_ids.min() < 0 or input_ids.max() >= cfg.vocab_size:
            raise ValueError(
                f"token ids must be in 0..{cfg.vocab_size - 1} (vocab_size={cfg.vocab_size}), got values from "
                f"{int(input_ids.min())} to {int(input_ids.max())}: was the tokenizer built with more words than the "
                "encoder's vocab_size? Use TextEncoderConfig(vocab_size=tokenizer.vocab_size)"
            )
        if not (input_ids == cfg.eos_token_id).any(1).all():
            raise ValueError(
                f"every row of input_ids needs an <eos> (id {cfg.eos_token_id}): tokenize with the tokenizer, which appends it"
            )
        if attention_mask is not None:
            check_tensor("attention_mask", attention_mask, f"shaped like input_ids {(b, l)} (or None)")
            if attention_mask.shape != input_ids.shape:
                got = tuple(attention_mask.shape)
                raise ValueError(f"attention_mask must be a tensor shaped like input_ids {(b, l)}, got {got}")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TextEncoderOutput:
        self._check_inputs(input_ids, attention_mask)
        b, l = input_ids.shape
        pos = torch.arange(l, device=input_ids.device)
        h = self.token_embedding(input_ids) + self.position_embedding(pos)[None]  # (B, L, D)
        key_padding = attention_mask.bool() if attention_mask is not None else None  # (B, L)
        for layer in self.layers:
            h = layer(h, key_padding)
        h = self.final_layer_norm(h)  # (B, L, D)
        eos = (input_ids == self.config.eos_token_id).int().argmax(1)  # (B,) first <eos> of each row
        pooled = h[torch.arange(b, device=h.device), eos]  # (B, D)
        embeds = self.text_projection(pooled) if self.text_projection is not None else None
        return TextEncoderOutput(last_hidden_state=h, pooler_output=pooled, text_embeds=embeds)
