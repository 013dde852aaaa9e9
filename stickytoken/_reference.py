"""Float64 NumPy twins of the C kernels in ``stickytoken._core``.

Same names, signatures and results as the C core (see ``_core.pyi``), written to be obviously
correct rather than fast: the tests compare every kernel against its twin.  Insert positions
come from the same splitmix64 generator, so both sides draw identical positions.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

OK, OK_SPECIAL, MEANINGLESS, UNREACHABLE_SPECIAL, UNDECODEABLE = 0, 1, 2, 3, 4
UNREACHABLE_SINGLE_TOKEN, UNREACHABLE_MULTI_TOKEN = 5, 6
CATEGORY_NAMES: tuple[str, ...] = (
    "OK", "OK_SPECIAL", "MEANINGLESS", "UNREACHABLE_SPECIAL", "UNDECODEABLE",
    "UNREACHABLE_SINGLE_TOKEN", "UNREACHABLE_MULTI_TOKEN",
)
PREFIX, SUFFIX, INSERT = 0, 1, 2

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _i64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


# ---- token categories ------------------------------------------------------------------------
def _is_letter(ch: str) -> bool:
    cp = ord(ch)
    if cp < 0x80:
        return ch.isascii() and ch.isalpha()
    if cp < 0xC0 or cp in (0xD7, 0xF7):
        return False
    return not (0x2000 <= cp <= 0x206F or 0x3000 <= cp <= 0x303F)


def token_categories(texts: Sequence[str], reencoded: np.ndarray, offsets: np.ndarray,
                     special_ids: np.ndarray) -> np.ndarray:
    reencoded, offsets = _i64(reencoded), _i64(offsets)
    specials = set(_i64(special_ids).tolist())
    out = np.empty(len(texts), dtype=np.int8)
    for i, text in enumerate(texts):
        ids = reencoded[offsets[i]:offsets[i + 1]].tolist()
        if text == "" or text.isspace():
            cat = MEANINGLESS
        elif ids == [i]:
            cat = OK_SPECIAL if i in specials else OK
        elif (len(text) >= 3 and text[0] in "[<" and text[-1] in "]>"
              and any(_is_letter(ch) for ch in text)):
            cat = UNREACHABLE_SPECIAL
        elif "\ufffd" in text:
            cat = UNDECODEABLE
        elif len(ids) == 1:
            cat = UNREACHABLE_SINGLE_TOKEN
        else:
            cat = UNREACHABLE_MULTI_TOKEN
        out[i] = cat
    return out


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def bytelevel_decode(tokens: Sequence[str], invalid: str = "hex") -> list[str]:
    if invalid not in ("hex", "replace"):
        raise ValueError(f"bytelevel_decode: invalid must be 'hex' or 'replace', got {invalid!r}")
    table = _byte_decoder()
    out = []
    for i, tok in enumerate(tokens):
        try:
            raw = bytes(table[ch] for ch in tok)
        except KeyError as exc:
            raise ValueError(f"bytelevel_decode: tokens[{i}] = {tok!r} holds a character that is not "
                             "a GPT-2 byte-level stand-in") from exc
        if invalid == "replace":
            out.append(raw.decode("utf-8", errors="replace"))
        else:
            text = raw.decode("utf-8", errors="surrogateescape")
            out.append("".join(f"<0x{ord(ch) - 0xDC00:02X}>" if 0xDC80 <= ord(ch) <= 0xDCFF else ch
                               for ch in text))
    return out


# ---- seeded generator ------------------------------------------------------------------------
def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


class SplitMix64:
    """The core's generator: splitmix64 seeded by (seed, token id, pair index)."""

    def __init__(self, seed: int, token_id: int, pair: int):
        s = _mix64((seed + _GOLDEN) & _MASK)
        s = _mix64(s ^ ((token_id + _GOLDEN) & _MASK))
        self.state = _mix64(s ^ ((pair + _GOLDEN) & _MASK))

    def next(self) -> int:
        self.state = (self.state + _GOLDEN) & _MASK
        return _mix64(self.state)

    def uniform(self, n: int) -> int:
        """Uniform integer in [0, n], unbiased (rejects the short bucket)."""
        rng = n + 1
        threshold = (1 << 64) % rng
        while True:
            r = self.next()
            if r >= threshold:
                return r % rng


# ---- insertion -------------------------------------------------------------------------------
def _check_variants(variants: Sequence[int]) -> list[int]:
    out = [int(v) for v in variants]
    if any(v not in (0, 1, 2) for v in out):
        raise ValueError("variants must hold 0 (PREFIX), 1 (SUFFIX) or 2 (INSERT)")
    return out


def build_token_batch(base_ids: np.ndarray, base_offsets: np.ndarray, token_ids: np.ndarray, *,
                      insert_num: int, variants: Sequence[int] = (0, 1, 2),
                      frame_prefix: np.ndarray, frame_suffix: np.ndarray, pad_id: int,
                      max_length: int, seed: int):
    base_ids, base_offsets, token_ids = _i64(base_ids), _i64(base_offsets), _i64(token_ids)
    fp, fs = _i64(frame_prefix).tolist(), _i64(frame_suffix).tolist()
    variants = _check_variants(variants)
    if insert_num < 1:
        raise ValueError("insert_num must be >= 1")
    cap = max_length - len(fp) - len(fs)
    if cap < 0:
        raise ValueError("max_length must be at least len(frame_prefix) + len(frame_suffix)")
    rows, index = [], []
    bases = [base_ids[base_offsets[p]:base_offsets[p + 1]].tolist() for p in range(len(base_offsets) - 1)]
    for t, tok in enumerate(token_ids.tolist()):
        for p, base in enumerate(bases):
            for v in variants:
                rng = SplitMix64(seed & _MASK, tok & _MASK, p)
                cur = list(base)
                for k in range(1, insert_num + 1):
                    if v == PREFIX:
                        content = [tok] * k + base
                    elif v == SUFFIX:
                        content = base + [tok] * k
                    else:
                        cur.insert(rng.uniform(len(cur)), tok)
                        content = cur
                    rows.append(fp + content[:cap] + fs)
                    index.append((t, p, v, k))
    n = len(rows)
    width = max((len(r) for r in rows), default=0)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids, mask, lengths, np.array(index, dtype=np.int64).reshape(n, 4)


def build_text_variants(token_texts: Sequence[str], token_ids: np.ndarray, base_texts: Sequence[str], *,
                        insert_num: int, variants: Sequence[int] = (0, 1, 2), seed: int):
    token_ids = _i64(token_ids)
    variants = _check_variants(variants)
    if insert_num < 1:
        raise ValueError("insert_num must be >= 1")
    if len(token_ids) != len(token_texts):
        raise ValueError("token_ids must have one id per token text")
    texts, index = [], []
    for t, (tt, tok) in enumerate(zip(token_texts, token_ids.tolist())):
        for p, c in enumerate(base_texts):
            for v in variants:
                rng = SplitMix64(seed & _MASK, tok & _MASK, p)
                words = c.split()
                for k in range(1, insert_num + 1):
                    if v == PREFIX:
                        texts.append(tt * k + c)
                    elif v == SUFFIX:
                        texts.append(c + tt * k)
                    else:
                        words.insert(rng.uniform(len(words)), tt)
                        texts.append(" ".join(words))
                    index.append((t, p, v, k))
    return texts, np.array(index, dtype=np.int64).reshape(len(texts), 4)


def length_order(lengths: np.ndarray) -> np.ndarray:
    return np.argsort(_i64(lengths), kind="stable").astype(np.int64)


# ---- statistics ------------------------------------------------------------------------------
def row_distances(x: np.ndarray, refs: np.ndarray, ref_index: np.ndarray) -> np.ndarray:
    x, refs, ref_index = _f64(x), _f64(refs), _i64(ref_index)
    if x.ndim != 2 or refs.ndim != 2 or x.shape[1] != refs.shape[1] or len(ref_index) != len(x):
        raise ValueError("row_distances: x [n, d], refs [m, d], ref_index [n]")
    if len(ref_index) and (ref_index.min() < 0 or ref_index.max() >= len(refs)):
        raise ValueError("row_distances: ref_index out of range")
    r = refs[ref_index]
    nx = np.sqrt((x * x).sum(axis=1))
    nr = np.sqrt((r * r).sum(axis=1))
    dot = (x * r).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where((nx == 0) | (nr == 0), 1.0, 1.0 - dot / (nx * nr))
    out = np.empty((len(x), 3))
    out[:, 0] = cos
    out[:, 1] = np.sqrt(((x - r) ** 2).sum(axis=1))
    out[:, 2] = np.abs(x - r).sum(axis=1)
    return out


def sticky_score(seqs: np.ndarray, td: np.ndarray, a: float, b: float, c0: float) -> np.ndarray:
    seqs, td = _f64(seqs), _f64(td)
    steps = np.diff(seqs, axis=1)
    falls, rises = steps < 0, steps > 0
    fall = np.where(falls, -steps, 0.0).sum(axis=1)
    rise = np.where(rises, steps, 0.0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (fall + a * falls.sum(axis=1) + 0.1 * td) / (rise + b * rises.sum(axis=1) + c0)


def verify_counts(seqs: np.ndarray) -> np.ndarray:
    seqs = _f64(seqs)
    if seqs.ndim != 2 or seqs.shape[1] < 2:
        raise ValueError("verify_counts: seqs must be [n, L] with L >= 2")
    return (seqs[:, 1:].mean(axis=1) - seqs[:, 0] < 0).astype(np.uint8)


def _unit_rows(emb: np.ndarray) -> np.ndarray:
    norms = np.sqrt((emb * emb).sum(axis=1, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norms == 0, 0.0, emb / norms)


def mean_similarity(emb: np.ndarray) -> float:
    emb = _f64(emb)
    if emb.ndim != 2 or len(emb) == 0:
        raise ValueError("mean_similarity: emb must be 2-D with at least one row")
    s = _unit_rows(emb).sum(axis=0)
    return float(s @ s) / float(len(emb)) ** 2


def pairwise_cosine(emb: np.ndarray) -> np.ndarray:
    u = _unit_rows(_f64(emb))
    return u @ u.T


def percentile(x: np.ndarray, q: float) -> float:
    x = _f64(x)
    if not 0 <= q <= 100:
        raise ValueError("percentile: q must be in [0, 100]")
    if not np.isfinite(x).any():
        raise ValueError("percentile: x holds no finite value")
    return float(np.percentile(x[~np.isnan(x)], q))


def iqr_fence(x: np.ndarray, k: float = 0.7) -> float:
    q1, q3 = percentile(x, 25.0), percentile(x, 75.0)
    return q3 + k * (q3 - q1)


# ---- WordPiece -------------------------------------------------------------------------------
class WordPiece:
    """Twin of ``_core.WordPiece``: the tokenizers library's WordPiece search as it is written
    there (for each start, every end from the word's end down, looked up in the vocabulary),
    for words of ASCII letters and digits."""

    def __init__(self, vocab: dict, *, prefix: str = "##", unk_id: int, max_chars: int = 100,
                 lowercase: bool = True):
        if not isinstance(vocab, dict):
            raise TypeError(f"WordPiece: vocab must be a dict {{entry: id}}, got {type(vocab).__name__}")
        if unk_id < 0 or max_chars < 0:
            raise ValueError("WordPiece: unk_id and max_chars must be >= 0")
        for entry, i in vocab.items():
            if i < 0:
                raise ValueError(f"WordPiece: vocab[{entry!r}] = {i}: ids must be >= 0")
        self.vocab, self.prefix, self.unk_id = dict(vocab), prefix, int(unk_id)
        self.max_chars, self.lowercase = int(max_chars), bool(lowercase)

    def _word(self, word: str) -> list[int]:
        if self.lowercase:
            word = word.lower()
        if len(word) > self.max_chars:
            return [self.unk_id]
        out, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                if piece in self.vocab:
                    out.append(self.vocab[piece])
                    start = end
                    break
            else:
                return [self.unk_id]
        return out

    def encode(self, words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        ids: list[int] = []
        counts = np.empty(len(words), dtype=np.int64)
        for i, w in enumerate(words):
            if w and not (w.isascii() and w.isalnum()):
                counts[i] = -1
                continue
            got = self._word(w)
            ids += got
            counts[i] = len(got)
        return np.array(ids, dtype=np.int64), counts
