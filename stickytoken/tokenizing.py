"""Texts to token-id rows exactly as the model's tokenizer gives them, fast (``tokenize_rows``).

Tokenizing variant texts is the slow part of a run on a GPU machine (about 25k rows/s per core
for the bundled model through the tokenizer's wrapper, against ~250k rows/s of forward passes).
Three paths, each checked against the tokenizer's own call on every batch (first, middle and
last rows) and turned off for good when it differs:

- **splice** (``_Splicer``): where a space is a hard boundary for the tokenizer (BERT-style
  WordPiece, ``_splice_safe``), each space-separated piece is tokenized once per process and
  the pieces' ids are spliced: the contrast sentences' words recur in every row, only the
  inserted token's pieces are new.  Words of ASCII letters and digits go through the C core's
  WordPiece (``_wordpiece``, a trie walk instead of the tokenizers library's quadratic search)
  when the tokenizer's configuration leaves them whole;
- **backend**: the fast tokenizer's ``tokenizers.Tokenizer`` called directly (``_backend``);
- the tokenizer's own call, always right.

All of it runs with the cyclic garbage collector off (``no_gc``): the lists of ids a chunk makes
set off collections that walked every object in the process, half the time of building rows.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import itertools
import logging
import re
import weakref
from typing import Sequence

import numpy as np

from . import _core
from .ragged import Rows

logger = logging.getLogger(__name__)


_FAST: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # tokenizer -> {(kind, max_length): path}


def _fast_path(tokenizer, kind: str, max_length: int, make):
    """This process's ``make()`` for (tokenizer, kind, max_length), made once; None once
    ``_turn_off`` was called for it."""
    try:
        cache = _FAST.setdefault(tokenizer, {})
    except TypeError:   # not weakly referable: made each time
        cache = {}
    if (kind, max_length) not in cache:
        cache[(kind, max_length)] = make()
    return cache[(kind, max_length)]


def _turn_off(tokenizer, kind: str, max_length: int) -> None:
    try:
        _FAST.setdefault(tokenizer, {})[(kind, max_length)] = None
    except TypeError:
        pass


def _fast_backend(tokenizer):
    """A fast tokenizer's ``tokenizers.Tokenizer``, or None for a slow tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    return backend if backend is not None and hasattr(backend, "enable_truncation") else None


def _backend(tokenizer, max_length: int):
    """A copy of a fast tokenizer's ``tokenizers.Tokenizer`` set to encode as
    ``tokenizer(texts, truncation=True, max_length=max_length)`` does (no padding), or None
    for a slow tokenizer.  Called directly, it skips the wrapper's per-text conversions: a
    CUDA chunk of variant rows builds at 32,290 rows/s per core instead of 24,256
    (scripts/rows_rate.py, 2-core CPU)."""
    backend = _fast_backend(tokenizer)
    if backend is None:
        return None

    def make():
        own = copy.deepcopy(backend)
        own.no_padding()
        own.enable_truncation(int(max_length), stride=0, strategy="longest_first",
                              direction=getattr(tokenizer, "truncation_side", "right"))
        return own

    return _fast_path(tokenizer, "backend", max_length, make)


def _rows_from_lists(rows: Sequence[Sequence[int]]) -> Rows:
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    return Rows(flat, lengths)


# Pieces of a tokenizer under which a space is a hard boundary and every piece between two
# spaces is tokenized on its own: normalizers that act character by character (or, for the
# Unicode forms, segment by segment: a space is a starter that composes with nothing), pre-
# tokenizers that split on whitespace and drop it (and ones that only split pieces further),
# and models that tokenize each pre-token alone.  Metaspace and ByteLevel pre-tokenizers keep
# the space as part of the next word, Replace/Prepend/Precompiled normalizers can look across
# it: those tokenizers are not spliced.
_SPLICE_NORMALIZERS = {"BertNormalizer", "Lowercase", "NFD", "NFKD", "NFC", "NFKC", "StripAccents"}
_SPLICE_SPLITTERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}
_SPLICE_PRETOKENIZERS = _SPLICE_SPLITTERS | {"Punctuation", "Digits"}
_SPLICE_MODELS = {"WordPiece", "WordLevel", "BPE", "Unigram"}
SPLICE_CACHE = 200_000   # pieces kept between calls, per process (then the cache starts over)


_ASCII_PUNCT = re.compile("([" + re.escape("".join(chr(c) for c in range(33, 127) if not chr(c).isalnum())) + "])")


def _parts(node: dict | None, key: str) -> list[dict]:
    """A normalizer's or pre-tokenizer's configuration as the list of its steps."""
    if node is None:
        return []
    if node.get("type") == "Sequence":
        return [p for sub in node.get(key, []) for p in _parts(sub, key)]
    return [node]


def _splice_safe(cfg: dict) -> bool:
    """Whether a ``tokenizers`` configuration (``Tokenizer.to_str()``) tokenizes every piece
    between two spaces on its own (see ``_SPLICE_*``)."""
    norms = _parts(cfg.get("normalizer"), "normalizers")
    pres = _parts(cfg.get("pre_tokenizer"), "pretokenizers")
    model = cfg.get("model") or {}
    return (all(n.get("type") in _SPLICE_NORMALIZERS for n in norms)
            and bool(pres) and all(p.get("type") in _SPLICE_PRETOKENIZERS for p in pres)
            and any(p.get("type") in _SPLICE_SPLITTERS for p in pres)
            and model.get("type") in _SPLICE_MODELS and not model.get("dropout"))


def _plain_ascii(text: str) -> bool:
    return text.isascii() and text.isalnum()


# Words on which the C core's WordPiece is checked against the tokenizer before it is used: a
# glued insertion, a word past max_input_chars_per_word, one no entry starts, capitals, digits.
_WORDPIECE_PROBES = ("replayreplayreplayThe", "unaffable", "Hello", "ABC123def", "2024", "x" * 101,
                     "qqqqqqqqqqzx", "astonishmentastonishmentMagnets", "a", "Z9")


def _wordpiece(cfg: dict):
    """The C core's WordPiece (``_core.WordPiece``) for a tokenizer configuration whose model
    is WordPiece and whose normalizers and pre-tokenizers leave a word of ASCII letters and
    digits whole, or lowercase it, and nothing else; or None.  Such a word then splits as the
    model splits it, in a trie walk instead of the model's quadratic search (``_Splicer``)."""
    model = cfg.get("model") or {}
    norms = [n.get("type") for n in _parts(cfg.get("normalizer"), "normalizers")]
    pres = [p.get("type") for p in _parts(cfg.get("pre_tokenizer"), "pretokenizers")]
    vocab, unk = model.get("vocab"), model.get("unk_token")
    if (model.get("type") != "WordPiece" or not isinstance(vocab, dict) or unk not in vocab
            or not set(norms) <= _SPLICE_NORMALIZERS or not pres or not set(pres) <= _SPLICE_SPLITTERS
            or any(_plain_ascii(t.get("content", "")) for t in cfg.get("added_tokens") or [])):
        return None   # (an added token of plain letters could be found inside a word)
    lowercase = any(n.get("type") == "Lowercase" or (n.get("type") == "BertNormalizer" and n.get("lowercase", True))
                    for n in _parts(cfg.get("normalizer"), "normalizers"))
    return _core.WordPiece(vocab, prefix=model.get("continuing_subword_prefix", "##"), unk_id=vocab[unk],
                           max_chars=model.get("max_input_chars_per_word", 100), lowercase=lowercase)


class _Splicer:
    """Tokenizes texts a space-separated piece at a time, each piece once: a row's ids are its
    pieces' ids one after another, between the special tokens, truncated as the tokenizer
    truncates.  Exact for the tokenizers ``_splice_safe`` accepts (and checked against the
    tokenizer's own call on every batch, ``tokenize_rows``), and fast for variant texts: a
    contrast sentence's words and the inserted token repeat across thousands of rows, so
    most pieces are looked up, not tokenized."""

    def __init__(self, backend, max_length: int, truncation_side: str):
        self.enc = copy.deepcopy(backend)
        self.enc.no_padding()
        self.enc.no_truncation()
        with_special = self.enc.encode("a", add_special_tokens=True).ids
        bare = self.enc.encode("a", add_special_tokens=False).ids
        at = next(i for i in range(len(with_special) - len(bare) + 1) if with_special[i:i + len(bare)] == bare)
        self.head, self.tail = list(with_special[:at]), list(with_special[at + len(bare):])
        self.budget = int(max_length) - len(self.head) - len(self.tail)
        self.left = truncation_side == "left"
        self.cache: dict[str, list[int]] = {}
        self.joinable = False
        self.punct = False
        self.added_re: re.Pattern | None = None   # the added tokens (a piece holding one is not cut)
        self.wordpiece = None   # the C core's WordPiece, for words of ASCII letters and digits (``_wordpiece``)

    JOIN = 4096

    @classmethod
    def for_backend(cls, backend, max_length: int, truncation_side: str) -> "_Splicer | None":
        import json

        try:
            cfg = json.loads(backend.to_str())
        except Exception:   # a backend that cannot describe itself: not spliced
            return None
        added = cfg.get("added_tokens") or []
        if not _splice_safe(cfg) or any(" " in t.get("content", "") for t in added):
            return None
        try:
            splicer = cls(backend, max_length, truncation_side)
        except (StopIteration, ValueError):   # special tokens not around the text: not spliced
            return None
        splicer.joinable = not any(t.get("lstrip") or t.get("rstrip") for t in added)
        contents = sorted({t["content"] for t in added if t.get("content")}, key=len, reverse=True)
        splicer.added_re = re.compile("|".join(map(re.escape, contents))) if contents else None   # never cut inside one
        norms = {n.get("type") for n in _parts(cfg.get("normalizer"), "normalizers")}
        pres = [p.get("type") for p in _parts(cfg.get("pre_tokenizer"), "pretokenizers")]
        splicer.punct = pres == ["BertPreTokenizer"] and not norms & {"NFKC", "NFKD"}
        wordpiece = _wordpiece(cfg)
        if wordpiece is not None:
            probes = list(_WORDPIECE_PROBES)
            if splicer._pieces_from_core(wordpiece, probes) == splicer._encode_pieces(probes):
                splicer.wordpiece = wordpiece
            else:   # the configuration looked plain, and is not: the tokenizer splits every piece
                logger.debug("tokenizer: the C core's WordPiece differs from it on %s; not used", probes)
        return splicer if splicer.budget > 0 else None

    def _fill(self, missing: list[str]) -> None:
        """Puts the ids of the pieces ``missing`` into the cache.  Under a pre-tokenizer that
        isolates every punctuation character (BERT's), a piece is cut at its ASCII punctuation
        first and the parts are looked up or tokenized: a variant text's "sentence." + t*k
        shares t*k with the other pairs' and only that part is tokenized.  (ASCII only: it is
        punctuation in every Unicode version, so the cut is the tokenizer's own; a piece that
        holds an added token such as "[MASK]" is not cut.)"""
        cache = self.cache
        if not self.punct:
            cache.update(zip(missing, self._pieces(missing)))
            return
        added, punct = self.added_re, _ASCII_PUNCT.search
        parts = {m: [q for q in _ASCII_PUNCT.split(m) if q] for m in missing
                 if punct(m) is not None and (added is None or added.search(m) is None)}
        need = list({q for qs in parts.values() for q in qs if q not in cache} |
                    {m for m in missing if m not in parts})
        cache.update(zip(need, self._pieces(need)))
        for m, qs in parts.items():   # (the pieces without ASCII punctuation, or with an added token, are whole)
            if len(qs) != 1 or qs[0] != m:
                ids: list[int] = []
                for q in qs:
                    ids += cache[q]
                cache[m] = ids

    def _pieces(self, pieces: list[str]) -> list[list[int]]:
        """Each piece's ids (no special tokens): the words of ASCII letters and digits through
        the C core's WordPiece when the tokenizer has one (``_wordpiece``), the others through
        the tokenizer (``_encode_pieces``).  A full vocabulary's variant texts glue up to eight
        copies of a token to a word; the tokenizer's WordPiece took ~27 us for such a piece, most
        of the row building, and the C core ~0.6 us (``scripts/rows_rate.py``)."""
        if self.wordpiece is None:
            return self._encode_pieces(pieces)
        out = self._pieces_from_core(self.wordpiece, pieces)
        rest = [i for i, ids in enumerate(out) if ids is None]
        if rest:
            for i, ids in zip(rest, self._encode_pieces([pieces[i] for i in rest])):
                out[i] = ids
        return out

    @staticmethod
    def _pieces_from_core(wordpiece, pieces: list[str]) -> list:
        """Each piece's ids from ``wordpiece``, None for a piece it leaves to the tokenizer."""
        flat, counts = wordpiece.encode(pieces)
        flat, counts = flat.tolist(), counts.tolist()
        out: list = []
        at = 0
        for c in counts:
            if c < 0:
                out.append(None)
            else:
                out.append(flat[at:at + c])
                at += c
        return out

    def _encode_pieces(self, pieces: list[str]) -> list[list[int]]:
        """Each piece's ids (no special tokens).  Tokenizing a piece alone costs ~20 us of
        fixed work, so the pieces are joined with spaces into texts of ~``JOIN`` pieces, and
        each token goes to the piece its character offsets fall in (a space is a hard
        boundary); an added token that strips spaces next to it would blur the offsets, so a
        tokenizer with one tokenizes the pieces one by one."""
        out: list[list[int]] = []
        if not self.joinable:
            return [e.ids for e in self.enc.encode_batch_fast(pieces, add_special_tokens=False)]
        for a in range(0, len(pieces), self.JOIN):
            part = pieces[a:a + self.JOIN]
            enc = self.enc.encode(" ".join(part), add_special_tokens=False)
            lens = np.fromiter(map(len, part), dtype=np.int64, count=len(part))
            starts = np.cumsum(lens + 1) - (lens + 1)
            offs = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
            owner = np.searchsorted(starts, (offs[:, 0] + offs[:, 1]) // 2, side="right") - 1
            bounds = np.searchsorted(owner, np.arange(len(part) + 1)).tolist()
            ids = enc.ids
            out += [ids[bounds[i]:bounds[i + 1]] for i in range(len(part))]
        return out

    def __call__(self, texts: Sequence[str]) -> Rows:
        cache = self.cache
        if len(cache) > SPLICE_CACHE:
            cache.clear()
        pieces = [t.split(" ") for t in texts]
        cache.setdefault("", [])   # two spaces in a row: an empty piece, no ids
        missing = list({p for row in pieces for p in row if p not in cache})
        if missing:
            self._fill(missing)
        head, tail, budget, left = self.head, self.tail, self.budget, self.left
        flat: list[int] = []
        lengths = np.empty(len(texts), dtype=np.int64)
        extra = len(head) + len(tail)
        for i, row in enumerate(pieces):
            ids: list[int] = []
            for p in row:
                ids += cache[p]
            if len(ids) > budget:
                ids = ids[-budget:] if left else ids[:budget]
            flat += head
            flat += ids
            flat += tail
            lengths[i] = len(ids) + extra
        return Rows(np.array(flat, dtype=np.int64), lengths)


def _splicer(tokenizer, max_length: int) -> "_Splicer | None":
    """The tokenizer's ``_Splicer`` for ``max_length`` (one per process), or None."""
    backend = _fast_backend(tokenizer)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return None
    return _fast_path(tokenizer, "splice", max_length, lambda: _Splicer.for_backend(
        backend, max_length, getattr(tokenizer, "truncation_side", "right")))


def _check_rows(rows: Rows, texts: list[str], wrapper) -> bool:
    """Whether the first, middle and last rows are the tokenizer call's own ids."""
    picks = sorted({0, len(texts) // 2, len(texts) - 1})
    off = rows.offsets
    want = wrapper([texts[i] for i in picks])
    return all(rows.flat[off[i]:off[i + 1]].tolist() == list(w) for i, w in zip(picks, want))


@contextlib.contextmanager
def no_gc():
    """The cyclic garbage collector off for the block (as it was after).  Tokenizing a chunk
    makes hundreds of thousands of lists of ids and none of them can form a cycle, yet each of
    the collections their allocation sets off walks every object the process holds, the
    splicer's cache of pieces included: about half of a CUDA chunk's row building here
    (``scripts/rows_rate.py``).  The vocabulary stage decodes and re-encodes every id under
    it too."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def tokenize_rows(tokenizer, texts: Sequence[str], prompt: str, max_length: int, splice: bool = True) -> Rows:
    """Texts (``prompt`` put before each) -> their ids with special tokens, truncated to
    ``max_length``, as ``model.encode`` tokenizes them.  With ``splice`` (the default) a
    tokenizer that allows it tokenizes each space-separated piece once (``_Splicer``)."""
    with no_gc():
        return _tokenize_rows(tokenizer, texts, prompt, max_length, splice)


def _tokenize_rows(tokenizer, texts: Sequence[str], prompt: str, max_length: int, splice: bool) -> Rows:
    texts = [prompt + t for t in texts] if prompt else list(texts)
    if not texts:
        return Rows(np.zeros(0, np.int64), np.zeros(0, np.int64))
    def wrapper(batch):
        return tokenizer(batch, add_special_tokens=True, truncation=True, max_length=max_length, padding=False,
                         return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    def backend_rows(backend):
        encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch   # no offsets when it can
        return _rows_from_lists([e.ids for e in encode(texts, add_special_tokens=True)])

    for kind, path, build in (("splice", _splicer(tokenizer, max_length) if splice else None, lambda sp: sp(texts)),
                              ("backend", _backend(tokenizer, max_length), backend_rows)):
        if path is None:
            continue
        rows = build(path)
        if _check_rows(rows, texts, wrapper):
            return rows
        # a tokenizer this path does not fit: a piece's ids differ (the splice rules missed
        # something: warned), or its wrapper does more than its backend (expected: debug)
        logger.log(logging.WARNING if kind == "splice" else logging.DEBUG,
                   "tokenizer %s: the %s path does not give the tokenizer's own ids; not used from now on",
                   type(tokenizer).__name__, kind)
        _turn_off(tokenizer, kind, max_length)
    return _rows_from_lists(wrapper(texts))
