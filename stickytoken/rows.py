"""Variant rows on the host: the token-id rows of every prefix / suffix / insert variant of
some tokens against a stage's pairs, ready for the encoder, built in this process or ahead of
the model in worker processes.

A stage's rows are ragged: the ids of every row one after another (``Rows.flat``) and each
row's length.  Text mode builds the paper's strings (C core) and tokenizes them with the
model's own tokenizer; token mode splices token ids into the contrast sentences' ids (C core).
Tokenizing is the slow part on a GPU machine (about 25k rows/s per core for the bundled model
text by text, against ~250k rows/s of forward passes).  Where the tokenizer allows it exactly
(a space is a hard boundary: BERT-style WordPiece, ``_splice_safe``), ``tokenize_rows``
tokenizes each space-separated piece once and splices the pieces' ids (``_Splicer``): the
contrast sentences' words recur in every row, only the inserted token's pieces are new.  And
a run can hand the rows to ``RowPool``'s worker processes: they build the next chunks' rows
while the model embeds the current one.  A row's
ids do not depend on where they were built; the rows of a chunk come out in the same order
either way, so results are bit-identical with and without workers (tests/test_rows.py).
"""
from __future__ import annotations

import copy
import itertools
import logging
import multiprocessing
import os
import pickle
import re
import sys
import threading
import weakref
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import _core
from .errors import InputError, StickyTokenError

logger = logging.getLogger(__name__)

_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def draw_seed(seed: int, draw: int) -> int:
    """The seed of insert draw ``draw``: the stage's seed for draw 0 (the paper's draw), and
    seed + draw * 0x9E3779B97F4A7C15 (mod 2**64) after it; integer arithmetic, so every
    platform draws the same positions."""
    return int(seed) if draw == 0 else (int(seed) + int(draw) * _GOLDEN) & _MASK64


@dataclass
class Rows:
    """Ragged token-id rows: row i is ``flat[offsets[i]:offsets[i + 1]]`` (special tokens
    and prompt included), and ``index`` [N, 4] says what each row is (token, pair, variant
    slot, k) where rows are variants."""

    flat: np.ndarray      # int64 [total ids]
    lengths: np.ndarray   # int64 [N]
    index: np.ndarray | None = None

    @property
    def offsets(self) -> np.ndarray:
        off = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=off[1:])
        return off

    def __len__(self) -> int:
        return int(len(self.lengths))

    def select(self, sel: np.ndarray) -> "Rows":
        """The rows ``sel`` (indices), in that order."""
        off = self.offsets
        lengths = self.lengths[sel]
        flat = self.flat[_ragged_positions(off[sel], lengths)]
        return Rows(flat, lengths, None if self.index is None else self.index[sel])

    def padded(self, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded (ids, attention mask), int64 [N, longest row]."""
        n = len(self.lengths)
        width = int(self.lengths.max()) if n else 1
        mask = np.arange(width)[None, :] < self.lengths[:, None]
        ids = np.full((n, width), int(pad_id), dtype=np.int64)
        ids[mask] = self.flat
        return ids, mask.astype(np.int64)

    @staticmethod
    def from_padded(ids: np.ndarray, mask: np.ndarray, lengths: np.ndarray, index=None) -> "Rows":
        """Rows whose ids are the first ``lengths[i]`` entries of each padded row."""
        lengths = np.asarray(lengths, dtype=np.int64)
        width = ids.shape[1] if ids.ndim == 2 else 0
        if len(lengths) and int(lengths.max()) > width:
            raise InputError("a row is longer than its padded array")
        keep = np.arange(width)[None, :] < lengths[:, None]
        return Rows(np.ascontiguousarray(np.asarray(ids)[keep], dtype=np.int64), lengths, index)

    @staticmethod
    def concat(parts: Sequence["Rows"]) -> "Rows":
        if not parts:
            return Rows(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4), np.int64))
        index = None if any(p.index is None for p in parts) else np.concatenate([p.index for p in parts])
        return Rows(np.concatenate([p.flat for p in parts]), np.concatenate([p.lengths for p in parts]), index)


class WorkerError(StickyTokenError, RuntimeError):
    """A row-building worker process stopped; the run can be resumed."""


WORKER_DIED = ("a row-building worker process died (out of memory?); run the same command again with fewer "
               "--workers, or --workers 0: the run resumes where it stopped")


def _ragged_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat positions of rows starting at ``starts`` with ``lengths``, one row after another."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    row_start = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + (np.arange(total, dtype=np.int64) - row_start)


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


def tokenize_rows(tokenizer, texts: Sequence[str], prompt: str, max_length: int, splice: bool = True) -> Rows:
    """Texts (``prompt`` put before each) -> their ids with special tokens, truncated to
    ``max_length``, as ``model.encode`` tokenizes them.  With ``splice`` (the default) a
    tokenizer that allows it tokenizes each space-separated piece once (``_Splicer``)."""
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


class RowBuilder:
    """Everything needed to build a stage's variant rows, without the model: picklable, so
    worker processes can build rows (the tokenizer travels once, to each worker's start)."""

    def __init__(self, *, tokenizer, prompt: str, max_length: int, pad_id: int, contrasts: Sequence[str],
                 insertion: str, insert_num: int, seed: int, insert_draws: int = 1,
                 base_ids: np.ndarray | None = None, base_offsets: np.ndarray | None = None,
                 frame_prefix: np.ndarray | None = None, frame_suffix: np.ndarray | None = None):
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.max_length = int(max_length)
        self.pad_id = int(pad_id)
        self.contrasts = list(contrasts)
        self.insertion = insertion
        self.insert_num = int(insert_num)
        self.seed = int(seed)
        self.insert_draws = int(insert_draws)
        self.base_ids, self.base_offsets = base_ids, base_offsets
        self.frame_prefix, self.frame_suffix = frame_prefix, frame_suffix
        self.splice = True   # text mode: tokenize a piece at a time where exact (tokenize_rows)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["tokenizer"] = None   # workers hold their own copy (RowPool)
        return state

    def draw_parts(self, token_ids: np.ndarray, token_texts: Sequence[str]) -> list[Rows]:
        """The rows of every insert draw: draw 0 holds prefix, suffix and the paper's insert
        rows of every token (token-major), draw r > 0 its insert rows (variant slot 2 + r)."""
        token_ids = np.ascontiguousarray(token_ids, dtype=np.int64)
        parts = []
        for r in range(self.insert_draws):
            variants = (0, 1, 2) if r == 0 else (2,)
            seed = draw_seed(self.seed, r)
            if self.insertion == "text":
                if self.tokenizer is None:
                    raise RuntimeError("RowBuilder has no tokenizer in this process")
                texts, index = _core.build_text_variants(list(token_texts), token_ids, self.contrasts,
                                                         insert_num=self.insert_num, variants=variants, seed=seed)
                rows = tokenize_rows(self.tokenizer, texts, self.prompt, self.max_length,
                                     splice=getattr(self, "splice", True))
            else:
                ids, mask, lengths, index = _core.build_token_batch(
                    self.base_ids, self.base_offsets, token_ids, insert_num=self.insert_num, variants=variants,
                    frame_prefix=self.frame_prefix, frame_suffix=self.frame_suffix, pad_id=self.pad_id,
                    max_length=self.max_length, seed=seed)
                rows = Rows.from_padded(np.asarray(ids), np.asarray(mask), np.asarray(lengths))
            index = np.array(index, dtype=np.int64)
            if r:
                index[:, 2] = 2 + r
            rows.index = index
            parts.append(rows)
        return parts

    def build(self, token_ids: np.ndarray, token_texts: Sequence[str], keep: np.ndarray | None = None) -> Rows:
        """Every variant row of the tokens, or only those whose (pair, variant slot) ``keep``
        [pairs, slots] marks (all rows are built, so the seeded positions are those of a full
        build)."""
        return Rows.concat([_keep(r, keep) for r in self.draw_parts(token_ids, token_texts)])


def _keep(rows: Rows, keep: np.ndarray | None) -> Rows:
    """The rows whose (pair, variant slot) ``keep`` [pairs, slots] marks, in order (all: None)."""
    if keep is None:
        return rows
    sel = np.asarray(keep, dtype=bool)[rows.index[:, 1], rows.index[:, 2]]
    return rows if sel.all() else rows.select(np.flatnonzero(sel))


# ---- worker processes -----------------------------------------------------------------------
_WORKER_TOKENIZER = None


def _worker_start(tokenizer_pickle: bytes) -> None:
    """A worker's start: the tokenizer arrives pickled, as bytes, and is unpickled here (see
    ``RowPool``)."""
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"   # one core per worker
    _WORKER_TOKENIZER = pickle.loads(tokenizer_pickle)
    torch = sys.modules.get("torch")   # building rows needs no torch; where something imported it, one thread
    if torch is not None:
        torch.set_num_threads(1)


def _worker_ready() -> bool:
    return _WORKER_TOKENIZER is not None


def _worker_parts(builder: RowBuilder, token_ids: np.ndarray, token_texts: list[str], keep=None) -> list[Rows]:
    builder.tokenizer = _WORKER_TOKENIZER
    return [_keep(r, keep) for r in builder.draw_parts(token_ids, token_texts)]


def rank_cores() -> int:
    """CPU cores this process may use, shared among the ranks of this machine (LOCAL_WORLD_SIZE)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))


def default_workers(device_type: str) -> int:
    """Row-building worker processes by default: none on CPU (the model needs the cores and
    is far slower than tokenizing); on a GPU machine all of this rank's cores but two, at most
    16, when starting processes is safe (``_main_is_safe``), else none."""
    if device_type == "cpu":
        return 0
    if not _main_is_safe():
        logger.info("row-building workers off: this script would be re-run in each worker; pass workers=N "
                    "from inside `if __name__ == '__main__':` to use them")
        return 0
    return max(0, min(16, rank_cores() - 2))


def _main_is_safe() -> bool:
    """Whether spawned workers can start without re-running the caller's script: the command
    line (``python -m stickytoken``), or an interactive session or notebook (no script file).
    A spawned process imports the main script, so an unguarded script that calls ``detect``
    would start again in every worker."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and getattr(spec, "name", "").startswith("stickytoken."):
        return True
    return not getattr(main, "__file__", None)


class RowPool:
    """Builds chunks of variant rows ahead of the model.  ``submit(builder, ids, texts,
    keep)`` returns a handle whose ``result()`` is the chunk's ``Rows``, exactly
    what ``builder.build`` gives; with ``workers`` > 0 the chunk is cut into pieces of
    tokens built by worker processes at once (rows are token-major within each draw, so the
    pieces put back together are the same rows in the same order).

    Starting a worker holds up the thread that starts it: the parent writes the worker's
    start-up arguments into a pipe the new process reads only once it has imported the
    caller's main module, and a tokenizer given as an object is read back (importing
    transformers) while the parent still writes it.  The 2-core CPU spent 0.7 s per worker
    there (1.45 s while the package imported PyTorch), one worker after another: likely most
    of the 11.8 s of "other" in a 14-worker GPU run's scoring stage (docs/results/gpu/NOTES.md,
    not yet measured there again).  So the
    tokenizer travels as bytes, unpickled in the worker, and ``start`` starts the workers
    from a thread of their own."""

    def __init__(self, tokenizer, workers: int):
        if workers < 0:
            raise InputError(f"workers must be 0 or more, got {workers}")
        self.workers = int(workers)
        self._pool = None
        self._starter: threading.Thread | None = None
        if self.workers:
            ctx = multiprocessing.get_context("spawn")   # no fork of a process that holds CUDA or threads
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_start,
                                             initargs=(pickle.dumps(tokenizer, protocol=pickle.HIGHEST_PROTOCOL),))

    def start(self) -> None:
        """Starts every worker (each imports the package and unpickles the tokenizer, about a
        second) from a thread of its own, and returns at once: they start while this thread
        goes on, and are ready when the first rows are wanted.  Called again, does nothing."""
        if self._pool is None or self._starter is not None:
            return
        pool = self._pool

        def spawn_all() -> None:
            try:
                for _ in range(self.workers):
                    pool.submit(_worker_ready)   # each submit starts one more process while none is idle
            except (RuntimeError, BrokenProcessPool):   # closed or broken meanwhile: submit says so
                pass

        self._starter = threading.Thread(target=spawn_all, name="stickytoken-workers-start", daemon=True)
        self._starter.start()

    def submit(self, builder: RowBuilder, token_ids: np.ndarray, token_texts: Sequence[str],
               keep: np.ndarray | None = None) -> "_Pending":
        token_ids = np.ascontiguousarray(token_ids, dtype=np.int64)
        if self._pool is None or len(token_ids) < 2:
            return _Pending(None, builder.build(token_ids, token_texts, keep))
        pieces = min(len(token_ids), self.workers)
        bounds = np.linspace(0, len(token_ids), pieces + 1).astype(np.int64)
        try:
            futures = [self._pool.submit(_worker_parts, builder, token_ids[a:b], list(token_texts[a:b]), keep)
                       for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        except BrokenProcessPool as exc:
            raise WorkerError(WORKER_DIED) from exc
        return _Pending((futures, bounds), None)

    def close(self) -> None:
        if self._starter is not None:
            self._starter.join()
            self._starter = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Pending:
    def __init__(self, futures, rows: Rows | None):
        self._futures, self._rows = futures, rows

    def result(self) -> Rows:
        if self._rows is None:
            futures, bounds = self._futures
            try:
                pieces = [f.result() for f in futures]   # [piece][draw] Rows
            except BrokenProcessPool as exc:
                raise WorkerError(WORKER_DIED) from exc
            draws = []
            for r in range(len(pieces[0])):
                for a, piece in zip(bounds[:-1], pieces):
                    piece[r].index[:, 0] += a   # token index within the whole chunk
                    draws.append(piece[r])
            self._rows = Rows.concat(draws)   # each piece kept its rows (``keep``) in its worker
        return self._rows
