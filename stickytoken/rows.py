"""Variant rows on the host: the token-id rows of every prefix / suffix / insert variant of
some tokens against a stage's pairs, ready for the encoder, built in this process or ahead of
the model in worker processes.

A stage's rows are ragged: the ids of every row one after another (``Rows.flat``) and each
row's length.  Text mode builds the paper's strings (C core) and tokenizes them with the
model's own tokenizer; token mode splices token ids into the contrast sentences' ids (C core).
Tokenizing is the slow part on a GPU machine (about 25k rows/s per core for the bundled model,
against ~300k rows/s of forward passes), so a run can hand it to ``RowPool``'s worker
processes: they build the next chunks' rows while the model embeds the current one.  A row's
ids do not depend on where they were built; the rows of a chunk come out in the same order
either way, so results are bit-identical with and without workers (tests/test_rows.py).
"""
from __future__ import annotations

import copy
import itertools
import logging
import multiprocessing
import os
import sys
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


_BACKENDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _backend(tokenizer, max_length: int):
    """A copy of a fast tokenizer's ``tokenizers.Tokenizer`` set to encode as
    ``tokenizer(texts, truncation=True, max_length=max_length)`` does (no padding), or None
    for a slow tokenizer.  Called directly, it skips the wrapper's per-text conversions: a
    CUDA chunk of variant rows builds at 32,290 rows/s per core instead of 24,256
    (scripts/rows_rate.py, 2-core CPU)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None or not hasattr(backend, "enable_truncation"):
        return None
    try:
        cache = _BACKENDS.setdefault(tokenizer, {})
    except TypeError:   # not weakly referable: build it each time
        cache = {}
    if max_length not in cache:
        own = copy.deepcopy(backend)
        own.no_padding()
        own.enable_truncation(int(max_length), stride=0, strategy="longest_first",
                              direction=getattr(tokenizer, "truncation_side", "right"))
        cache[max_length] = own
    return cache[max_length]


def tokenize_rows(tokenizer, texts: Sequence[str], prompt: str, max_length: int) -> Rows:
    """Texts (``prompt`` put before each) -> their ids with special tokens, truncated to
    ``max_length``, as ``model.encode`` tokenizes them."""
    texts = [prompt + t for t in texts] if prompt else list(texts)
    if not texts:
        return Rows(np.zeros(0, np.int64), np.zeros(0, np.int64))
    def wrapper(batch):
        return tokenizer(batch, add_special_tokens=True, truncation=True, max_length=max_length, padding=False,
                         return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    backend = _backend(tokenizer, max_length)
    rows = None
    if backend is not None:
        encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch   # no offsets when it can
        rows = [e.ids for e in encode(texts, add_special_tokens=True)]
        if list(rows[0]) != list(wrapper(texts[:1])[0]):   # a tokenizer whose wrapper does more: use it
            logger.debug("tokenizer wrapper differs from its backend; using the wrapper")
            try:
                _BACKENDS.setdefault(tokenizer, {})[max_length] = None   # not again for this tokenizer
            except TypeError:
                pass
            rows = None
    if rows is None:
        rows = wrapper(texts)
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    return Rows(flat, lengths)


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
                rows = tokenize_rows(self.tokenizer, texts, self.prompt, self.max_length)
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

    def build(self, token_ids: np.ndarray, token_texts: Sequence[str], pair_mask: np.ndarray | None = None,
              slot_mask: np.ndarray | None = None) -> Rows:
        """Every variant row of the tokens, or only those of the pairs in ``pair_mask`` and
        the variant slots in ``slot_mask`` (all rows are built, so the seeded positions are
        those of a full build)."""
        rows = Rows.concat(self.draw_parts(token_ids, token_texts))
        return _keep(rows, pair_mask, slot_mask)


def _keep(rows: Rows, pair_mask, slot_mask) -> Rows:
    if pair_mask is None and slot_mask is None:
        return rows
    keep = np.ones(len(rows), dtype=bool)
    if pair_mask is not None:
        keep &= np.asarray(pair_mask, bool)[rows.index[:, 1]]
    if slot_mask is not None:
        keep &= np.asarray(slot_mask, bool)[rows.index[:, 2]]
    return rows if keep.all() else rows.select(np.flatnonzero(keep))


# ---- worker processes -----------------------------------------------------------------------
_WORKER_TOKENIZER = None


def _worker_start(tokenizer) -> None:
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"   # one core per worker
    _WORKER_TOKENIZER = tokenizer
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:   # pragma: no cover - torch is a dependency
        pass


def _worker_ready() -> bool:
    return _WORKER_TOKENIZER is not None


def _worker_parts(builder: RowBuilder, token_ids: np.ndarray, token_texts: list[str]) -> list[Rows]:
    builder.tokenizer = _WORKER_TOKENIZER
    return builder.draw_parts(token_ids, token_texts)


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
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_rank = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(0, min(16, per_rank - 2))


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
    pair_mask, slot_mask)`` returns a handle whose ``result()`` is the chunk's ``Rows``, exactly
    what ``builder.build`` gives; with ``workers`` > 0 the chunk is cut into pieces of
    tokens built by worker processes at once (rows are token-major within each draw, so the
    pieces put back together are the same rows in the same order)."""

    def __init__(self, tokenizer, workers: int):
        if workers < 0:
            raise InputError(f"workers must be 0 or more, got {workers}")
        self.workers = int(workers)
        self._pool = None
        if self.workers:
            ctx = multiprocessing.get_context("spawn")   # no fork of a process that holds CUDA or threads
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_start,
                                             initargs=(tokenizer,))

    def start(self) -> None:
        """Starts every worker now (each imports the package and unpickles the tokenizer,
        about a second), so that they are ready when the first rows are wanted."""
        if self._pool is not None:
            for _ in range(self.workers):
                self._pool.submit(_worker_ready)

    def submit(self, builder: RowBuilder, token_ids: np.ndarray, token_texts: Sequence[str],
               pair_mask=None, slot_mask=None) -> "_Pending":
        token_ids = np.ascontiguousarray(token_ids, dtype=np.int64)
        if self._pool is None or len(token_ids) < 2:
            return _Pending(None, builder.build(token_ids, token_texts, pair_mask, slot_mask), pair_mask, slot_mask)
        pieces = min(len(token_ids), self.workers)
        bounds = np.linspace(0, len(token_ids), pieces + 1).astype(np.int64)
        try:
            futures = [self._pool.submit(_worker_parts, builder, token_ids[a:b], list(token_texts[a:b]))
                       for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        except BrokenProcessPool as exc:
            raise WorkerError(WORKER_DIED) from exc
        return _Pending((futures, bounds), None, pair_mask, slot_mask)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Pending:
    def __init__(self, futures, rows: Rows | None, pair_mask, slot_mask):
        self._futures, self._rows = futures, rows
        self._masks = (pair_mask, slot_mask)

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
            self._rows = _keep(Rows.concat(draws), *self._masks)
        return self._rows
