"""Stage 1: which vocabulary tokens can be tested at all (docs/algorithm.md §1)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from . import _core
from .tokenizing import no_gc

logger = logging.getLogger(__name__)

CATEGORY_NAMES: tuple[str, ...] = tuple(_core.CATEGORY_NAMES)
AVAILABLE_CODES = (_core.OK, _core.OK_SPECIAL)
_LEADING_SPACE_MARKS = (" ", "\u2581", "_", "\u0120")
PROBE_PREFIX = "\u00ab"  # the reference implementation's one-token prefix


@dataclass
class Vocabulary:
    """Per-id view of a tokenizer: raw strings, decoded texts and categories."""

    tokens: list[str]                  # convert_ids_to_tokens(i), e.g. '##s', '▁the'
    texts: list[str]                   # the decoded text that is inserted into sentences
    categories: np.ndarray             # int8 codes, see CATEGORY_NAMES
    special_ids: list[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.tokens)

    @property
    def available_ids(self) -> np.ndarray:
        """Ids of OK and OK_SPECIAL tokens, ascending."""
        return np.flatnonzero(np.isin(self.categories, AVAILABLE_CODES)).astype(np.int64)

    def counts(self) -> dict[str, int]:
        """Number of ids per category name (categories with no ids included, as 0)."""
        binc = np.bincount(self.categories.astype(np.int64), minlength=len(CATEGORY_NAMES))
        return {name: int(binc[i]) for i, name in enumerate(CATEGORY_NAMES)}


def special_ids(tokenizer) -> list[int]:
    """bos, eos, pad, unk, sep, mask and additional special tokens (cls is not counted)."""
    ids: set[int] = set()
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "sep_token_id", "mask_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            ids.add(value)
    extra = getattr(tokenizer, "additional_special_tokens_ids", None)
    if not extra:
        tokens = getattr(tokenizer, "extra_special_tokens", None) or getattr(tokenizer, "additional_special_tokens", None)
        if isinstance(tokens, dict):
            tokens = list(tokens.values())
        extra = tokenizer.convert_tokens_to_ids([str(t) for t in tokens]) if tokens else []
    ids.update(int(i) for i in extra if i is not None)
    return sorted(ids)


def adds_leading_space(tokenizer) -> bool:
    """True when the tokenizer marks the first word of a text with a leading-space mark."""
    ids = tokenizer.encode("test", add_special_tokens=False)
    if not ids:
        return False
    first = tokenizer.convert_ids_to_tokens(ids[:1])[0]
    return bool(first) and first[0] in _LEADING_SPACE_MARKS


def is_byte_level(tokens: list[str]) -> bool:
    """GPT-2 style byte-level BPE: more than a tenth of the vocabulary starts with 'Ġ'."""
    return sum(1 for t in tokens if t.startswith("\u0120")) > len(tokens) / 10


def build_vocabulary(tokenizer) -> Vocabulary:
    """Decode and re-encode every id 0..vocab_size-1 and classify it (batched; without the
    garbage collector's passes over the process's objects, ``tokenizing.no_gc``)."""
    with no_gc():
        return _build_vocabulary(tokenizer)


def _build_vocabulary(tokenizer) -> Vocabulary:
    size = int(tokenizer.vocab_size)
    ids = list(range(size))
    tokens = [t if t is not None else "" for t in tokenizer.convert_ids_to_tokens(ids)]
    prefixed = adds_leading_space(tokenizer)
    if is_byte_level(tokens):
        texts = _bytelevel_texts(tokenizer, tokens)
    elif prefixed:
        texts = _decode_with_prefix(tokenizer, ids)
    else:
        texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False,
                                       clean_up_tokenization_spaces=False)
    flat, offsets = _encode_flat(tokenizer, texts, prefixed)
    specials = special_ids(tokenizer)
    cats = _core.token_categories(texts, flat, offsets, np.asarray(specials, dtype=np.int64))
    return Vocabulary(tokens=tokens, texts=list(texts), categories=np.asarray(cats, dtype=np.int8),
                      special_ids=specials)


def _bytelevel_texts(tokenizer, tokens: list[str]) -> list[str]:
    """Map byte-level stand-ins back to bytes, then UTF-8 (U+FFFD where bytes are partial)."""
    try:
        return _core.bytelevel_decode(tokens, invalid="replace")
    except ValueError:  # a token outside the byte alphabet (an added special token, say)
        out = []
        for i, t in enumerate(tokens):
            try:
                out.append(_core.bytelevel_decode([t], invalid="replace")[0])
            except ValueError:
                out.append(tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False))
        return out


def _prefix_ids(tokenizer) -> list[int]:
    return tokenizer.encode(PROBE_PREFIX, add_special_tokens=False)


def _decode_with_prefix(tokenizer, ids: list[int]) -> list[str]:
    """Decode [prefix ids, i] and drop the prefix (and a space the decoder put before it),
    keeping the token's own leading space, as the reference's ``clean_decode`` does: the
    word-initial '▁the' decodes to ' the' and re-encodes ('«' + ' the') to itself, while the
    word-internal 'the' decodes to 'the'."""
    prefix = _prefix_ids(tokenizer)
    decoded = tokenizer.batch_decode([prefix + [i] for i in ids], skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)
    head = tokenizer.decode(prefix, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    leads = [lead for lead in dict.fromkeys((head, " " + head, PROBE_PREFIX, " " + PROBE_PREFIX)) if lead.strip()]
    out = []
    for text in decoded:
        for lead in leads:
            if text.startswith(lead):
                text = text[len(lead):]
                break
        out.append(text)
    return out


ENCODE_CHUNK = 8192   # texts re-encoded per tokenizer call: the tokenizer's per-text objects stay few


def _encode_flat(tokenizer, texts: list[str], prefixed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every text re-encoded (``_encode_all``), as one flat int64 array of ids and offsets
    [V+1]; ENCODE_CHUNK texts at a time, so memory beyond the result stays flat as V grows."""
    counts = np.zeros(len(texts), dtype=np.int64)
    parts = []
    for start in range(0, len(texts), ENCODE_CHUNK):
        rows = _encode_all(tokenizer, texts[start:start + ENCODE_CHUNK], prefixed)
        n = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        counts[start:start + len(rows)] = n
        parts.append(np.fromiter((i for r in rows for i in r), dtype=np.int64, count=int(n.sum())))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(counts)
    return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)), offsets


def _encode_all(tokenizer, texts: list[str], prefixed: bool) -> list[list[int]]:
    if not prefixed:
        return tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                         return_token_type_ids=False)["input_ids"]
    prefix = _prefix_ids(tokenizer)
    enc = tokenizer([PROBE_PREFIX + t for t in texts], add_special_tokens=False, return_attention_mask=False,
                    return_token_type_ids=False)["input_ids"]
    return [r[len(prefix):] if r[:len(prefix)] == prefix else r for r in enc]
