"""Variant rows on the host: the token-id rows of every prefix / suffix / insert variant of
some tokens against a stage's pairs, ready for the encoder, built in this process
(``RowBuilder``) or ahead of the model in worker processes (``RowPool``).

Rows are ragged (``ragged.Rows``, re-exported here).  Text mode builds the paper's strings (C
core) and tokenizes them with the model's own tokenizer, fast where that is exact
(``tokenizing.tokenize_rows``); token mode splices token ids into the contrast sentences' ids
(C core).  The workers build the next chunks' rows while the model embeds the current one.  A
row's ids do not depend on where they were built; the rows of a chunk come out in the same
order either way, so results are bit-identical with and without workers (tests/test_rows.py).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Sequence

import numpy as np

from . import _core
from .errors import InputError, StickyTokenError
from .ragged import Rows
from .tokenizing import tokenize_rows

logger = logging.getLogger(__name__)

_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def draw_seed(seed: int, draw: int) -> int:
    """The seed of insert draw ``draw``: the stage's seed for draw 0 (the paper's draw), and
    seed + draw * 0x9E3779B97F4A7C15 (mod 2**64) after it; integer arithmetic, so every
    platform draws the same positions."""
    return int(seed) if draw == 0 else (int(seed) + int(draw) * _GOLDEN) & _MASK64


class WorkerError(StickyTokenError, RuntimeError):
    """A row-building worker process stopped; the run can be resumed."""


WORKER_DIED = ("a row-building worker process died (out of memory?); run the same command again with fewer "
               "--workers, or --workers 0: the run resumes where it stopped")




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


PARENT_POLL_S = 1.0   # how often a worker looks whether the process that started it is still there


def _watch_parent(parent_pid: int) -> None:
    """Ends this worker once the process that started it is gone (killed with SIGKILL, say,
    before it could stop its workers): the worker is then another process's child, and left
    alone it would wait for work forever."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def _worker_start(tokenizer_pickle: bytes, parent_pid: int | None = None) -> None:
    """A worker's start: the tokenizer arrives pickled, as bytes, and is unpickled here (see
    ``RowPool``); a thread watches the parent (``_watch_parent``)."""
    global _WORKER_TOKENIZER
    if parent_pid is not None:
        threading.Thread(target=_watch_parent, args=(parent_pid,), name="stickytoken-parent-watch",
                         daemon=True).start()
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
                                             initargs=(pickle.dumps(tokenizer, protocol=pickle.HIGHEST_PROTOCOL),
                                                       os.getpid()))

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
