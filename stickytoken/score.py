"""Stage 3: distance sequences of text variants, and the sticky score (docs/algorithm.md §3).

The same machinery (variants -> embeddings -> distance sequences) serves verification
(verify.py); only what is computed from the sequences differs.

Stable mode (``insert_draws`` R > 1) draws the insert variant R times with independent seeded
positions (draw 0 is the paper's, seeded by the stage's seed; draw r by ``draw_seed``).  The
variant axis of D then holds prefix, suffix and the R insert draws, and a token's insert
score (verification test) is the mean over the draws.  With R = 1 everything is the paper's.
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from . import _core
from .encoder import Pending, _to_device, ready
from .errors import InputError
from .pairs import Pair
from .ragged import Rows
from .rows import RowBuilder, draw_seed  # noqa: F401  (draw_seed: part of score's API)
from .trace import phase

logger = logging.getLogger(__name__)

METRICS = ("cosine", "euclidean", "manhattan")
# (a, b, c0) of score = (fall + a*n_fall + 0.1*td) / (rise + b*n_rise + c0), per metric
SCORE_CONSTANTS = {"cosine": (0.1, 0.05, 0.01), "euclidean": (0.1, 0.05, 0.01), "manhattan": (1.0, 0.5, 0.1)}
VARIANTS = ("prefix", "suffix", "insert")
SCORE_WEIGHTS = np.array([0.35, 0.35, 0.3])
INSERTIONS = ("text", "token")
ROWS_PER_CHUNK = 32768


def tokens_per_chunk(n_pairs: int, insert_num: int, rows: int = ROWS_PER_CHUNK, insert_draws: int = 1) -> int:
    """How many tokens one chunk holds; fixed by the parameters alone, so resumption is exact."""
    return max(1, rows // (n_pairs * (len(VARIANTS) - 1 + insert_draws) * insert_num))


def combine_variants(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[..., 2 + R] per-variant values (prefix, suffix, R insert draws) -> [...]: the weighted
    sum with the insert draws' mean in the insert slot (with R = 1, exactly the weighted sum)."""
    insert = values[..., 2:].mean(axis=-1, keepdims=True)
    return (np.concatenate([values[..., :2], insert], axis=-1) * weights).sum(axis=-1)


class VariantSequences:
    """Builds the prefix/suffix/insert variants of tokens against a stage's pairs, embeds them
    and returns the distance sequences D = [d0, d1..dK] for all three metrics."""

    def __init__(self, encoder, pairs: Sequence[Pair], *, insertion: str, insert_num: int, seed: int,
                 insert_draws: int = 1):
        if insert_draws < 1:
            raise InputError(f"insert_draws must be at least 1, got {insert_draws}")
        if insertion not in INSERTIONS:
            raise InputError(f"insertion must be one of {list(INSERTIONS)}, got {insertion!r}")
        if insert_num < 1:
            raise InputError(f"insert_num must be at least 1, got {insert_num}")
        self.encoder = encoder
        self.pairs = list(pairs)
        self.insertion = insertion
        self.insert_num = int(insert_num)
        self.seed = int(seed)
        self.insert_draws = int(insert_draws)
        self.references = [p.reference for p in self.pairs]
        self.contrasts = [p.contrast for p in self.pairs]
        n = len(self.pairs)
        # a pair whose contrast an earlier pair has: its prefix and suffix rows are that pair's rows
        # (the same ids), so they are embedded once (``_masks``, ``distances``); insert rows differ
        first: dict[str, int] = {}
        self.canonical = np.array([first.setdefault(c, p) for p, c in enumerate(self.contrasts)], dtype=np.int64)
        # references and contrasts embedded once for the whole stage
        both = encoder.encode_texts(self.references + self.contrasts)
        self.ref_emb = both[:n].contiguous()
        self.d0 = np.asarray(_core.row_distances(both[n:].contiguous(), self.ref_emb, np.arange(n, dtype=np.int64)))
        base_ids = base_offsets = frame_prefix = frame_suffix = None
        if insertion == "token":
            base_ids, base_offsets = encoder.content_ids(self.contrasts)
            frame_prefix, frame_suffix = encoder.token_frame()
        self.frame_prefix, self.frame_suffix = frame_prefix, frame_suffix
        self.builder = RowBuilder(tokenizer=encoder.tokenizer, prompt=encoder.prompt, max_length=encoder.max_length,
                                  pad_id=int(encoder.pad_id), contrasts=self.contrasts, insertion=insertion,
                                  insert_num=self.insert_num, seed=self.seed, insert_draws=self.insert_draws,
                                  base_ids=base_ids, base_offsets=base_offsets, frame_prefix=frame_prefix,
                                  frame_suffix=frame_suffix)

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    def _token_alone(self, token_ids: np.ndarray, token_texts: Sequence[str], wait: bool = True):
        if self.insertion == "text":
            return self.encoder.encode_texts(list(token_texts), wait=wait)
        fp, fs = self.frame_prefix, self.frame_suffix
        width = len(fp) + 1 + len(fs)
        ids = np.empty((len(token_ids), width), dtype=np.int64)
        ids[:, :len(fp)] = fp
        ids[:, len(fp)] = token_ids
        ids[:, len(fp) + 1:] = fs
        return self.encoder.embed_ids(ids, np.ones_like(ids), np.full(len(token_ids), width, dtype=np.int64),
                                      wait=wait)

    def _masks(self, pair_index, slots) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(pair indices asked for, the rows to embed as a [pairs, variant slots] mask or None
        for all, the shared pairs [(pair, canonical pair)]): the rows ``sequences`` needs.  A
        pair asked for whose contrast an earlier pair asked for has (``canonical``) shares
        that pair's prefix and suffix rows: they are not embedded twice."""
        n_slots = len(VARIANTS) - 1 + self.insert_draws
        keep = np.ones((self.n_pairs, n_slots), dtype=bool)
        if slots is not None:
            slot_mask = np.zeros(n_slots, dtype=bool)
            slot_mask[np.asarray(list(slots), dtype=np.int64)] = True
            keep &= slot_mask[None, :]
        if pair_index is None:
            pair_index = np.arange(self.n_pairs, dtype=np.int64)
        else:
            pair_index = np.asarray(pair_index, dtype=np.int64)
            if np.any(np.diff(pair_index) <= 0) or pair_index.min(initial=0) < 0 or \
                    pair_index.max(initial=0) >= self.n_pairs:
                raise InputError("pair_index must be ascending, distinct indices into the stage's pairs")
        asked = np.zeros(self.n_pairs, dtype=bool)
        asked[pair_index] = True
        keep &= asked[:, None]
        shared = np.flatnonzero(asked & asked[self.canonical] & (self.canonical != np.arange(self.n_pairs)))
        keep[shared, :2] = False   # slots 0 and 1: prefix and suffix
        aliases = np.stack([shared, self.canonical[shared]], axis=1)
        return pair_index, (None if keep.all() else keep), aliases

    def rows(self, token_ids: np.ndarray, token_texts: Sequence[str], pair_index=None, slots=None) -> Rows:
        """The variant rows ``sequences`` embeds, built here."""
        return self.builder.build(np.ascontiguousarray(token_ids, dtype=np.int64), token_texts,
                                  self._masks(pair_index, slots)[1])

    def prepare(self, pool, token_ids: np.ndarray, token_texts: Sequence[str], pair_index=None, slots=None):
        """Starts building the variant rows ``sequences`` needs on ``pool`` (a ``RowPool``);
        hand the returned handle to ``sequences(..., rows=handle.result())``."""
        return pool.submit(self.builder, token_ids, token_texts, self._masks(pair_index, slots)[1])

    def sequences(self, token_ids: np.ndarray, token_texts: Sequence[str],
                  pair_index: np.ndarray | None = None, with_td: bool = True,
                  slots: Sequence[int] | None = None, rows: Rows | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Returns D float64 [T, P, 2 + R variant slots, K+1, 3 metrics] and td float64 [T, P, 3
        metrics].
        ``pair_index`` (ascending indices into the stage's pairs) limits the work to those pairs;
        D and td then hold them in that order, with the same values a full call gives.
        ``slots`` (variant slots: 0 prefix, 1 suffix, 2 + r insert draw r) limits the work to
        those slots; the others are NaN.  ``with_td=False`` skips the token-alone embeddings
        (td is then NaN).  ``rows``: the variant rows, built ahead (``prepare``).
        The same as ``distances(embeddings(...))``: the model's part, then the host's."""
        return self.distances(self.embeddings(token_ids, token_texts, pair_index, with_td, slots, rows))

    def embeddings(self, token_ids: np.ndarray, token_texts: Sequence[str],
                   pair_index: np.ndarray | None = None, with_td: bool = True,
                   slots: Sequence[int] | None = None, rows: Rows | None = None) -> "Embedded":
        """The model's part of ``sequences``: the embeddings of the variant rows and (with_td)
        of each token alone.  On CUDA this returns once the chunk's work is queued: the copies
        back are ``Pending`` and ``distances`` waits for them, so the next chunk's forward
        passes queue behind this one's with no pause between them."""
        token_ids = np.ascontiguousarray(token_ids, dtype=np.int64)
        pair_index, keep, aliases = self._masks(pair_index, slots)
        if rows is None:
            t0 = time.perf_counter()
            rows = self.builder.build(token_ids, token_texts, keep)
            self.encoder.profile["rows_build"] += time.perf_counter() - t0
        emb = self.encoder.embed_rows(rows, wait=False)
        alone = self._token_alone(token_ids, token_texts, wait=False) if with_td else None
        # a shared pair's prefix and suffix: its canonical pair's rows, measured against its own
        # reference; gathered here (on the device, before the copy back), so that ``distances``
        # (maybe in the host thread) runs no torch op
        alias_rows, alias_refs = _alias_rows(rows.index, aliases)
        alias_emb = None
        if len(alias_rows):
            src = emb.source
            gathered = src[_to_device(torch.from_numpy(alias_rows), src.device)].contiguous()
            alias_emb = self.encoder.to_host(gathered, wait=False)
        return Embedded(len(token_ids), pair_index, emb, rows.index, alone, alias_rows, alias_refs, alias_emb)

    def distances(self, e: "Embedded") -> tuple[np.ndarray, np.ndarray]:
        """The host's part of ``sequences``: no model work and no torch op (a torch op in another
        thread would start a second set of torch's CPU threads beside this process's), so it
        runs in the host thread while the next chunk's forward passes go."""
        K = self.insert_num
        n_slots = len(VARIANTS) - 1 + self.insert_draws
        T, P = e.n_tokens, len(e.pair_index)
        emb, alone, alias_emb = ready(e.emb), ready(e.alone), ready(e.alias_emb)   # (the copies back, on CUDA)
        dist = np.asarray(_core.row_distances(emb, self.ref_emb, np.ascontiguousarray(e.index[:, 1])))
        slot = np.full(self.n_pairs, -1, dtype=np.int64)
        slot[e.pair_index] = np.arange(P)
        D = np.full((T, P, n_slots, K + 1, 3), np.nan)
        D[e.index[:, 0], slot[e.index[:, 1]], e.index[:, 2], e.index[:, 3]] = dist
        if alias_emb is not None:   # a shared pair's prefix and suffix (``embeddings``)
            src, dst = e.alias_rows, e.alias_refs
            more = np.asarray(_core.row_distances(alias_emb, self.ref_emb, dst))
            D[e.index[src, 0], slot[dst], e.index[src, 2], e.index[src, 3]] = more
        D[..., 0, :] = self.d0[None, e.pair_index, None, :]
        if alone is None:
            return D, np.full((T, P, 3), np.nan)
        return D, self._alone_distances(alone)[:, e.pair_index]

    def token_distances(self, token_ids: np.ndarray, token_texts: Sequence[str]) -> np.ndarray:
        """td: distance of each token alone to every reference of the stage, float64 [T, P, 3]."""
        return self._alone_distances(self._token_alone(np.ascontiguousarray(token_ids, dtype=np.int64), token_texts))

    def _alone_distances(self, alone: torch.Tensor) -> np.ndarray:
        """[T, P, 3]: each token alone against each reference, one reference at a time (no
        torch op: see ``distances``)."""
        T, P = len(alone), self.n_pairs
        out = np.empty((T, P, 3), dtype=np.float64)
        for p in range(P):
            out[:, p] = np.asarray(_core.row_distances(alone, self.ref_emb, np.full(T, p, dtype=np.int64)))
        return out


def _alias_rows(index: np.ndarray, aliases: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, references): for each shared pair q of ``aliases`` [(q, canonical pair c)], the
    prefix and suffix rows of c (ascending) and q once per row."""
    if not len(aliases):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ends = np.flatnonzero(index[:, 2] < 2)
    order = np.argsort(index[ends, 1], kind="stable")   # by pair, each pair's rows ascending
    ends, by_pair = ends[order], index[ends[order], 1]
    lo = np.searchsorted(by_pair, aliases[:, 1], side="left")
    hi = np.searchsorted(by_pair, aliases[:, 1], side="right")
    rows = np.concatenate([ends[a:b] for a, b in zip(lo.tolist(), hi.tolist())])
    return rows.astype(np.int64), np.repeat(aliases[:, 0], hi - lo).astype(np.int64)


def lazy_sequences(encoder, pairs: Sequence[Pair], **kwargs):
    """A function giving the stage's ``VariantSequences(encoder, pairs, **kwargs)``, made on
    the first call (the references are embedded only when some chunk is left to compute)."""
    return functools.cache(lambda: VariantSequences(encoder, pairs, **kwargs))


def chunk_callables(encoder, get_seqs, texts: Sequence[str], reduce, *, pair_index: np.ndarray | None = None,
                    with_td: bool = True):
    """(compute, prepare) for ``run_parts``: ``compute(ids[, handle])`` gives ``reduce(ids, D,
    td)`` on the chunk's distance sequences (``get_seqs()``'s ``sequences``, limited to
    ``pair_index``).  With row-building workers (``encoder.workers``), ``prepare(ids)`` starts
    building a chunk's rows ahead of the model, and ``compute`` embeds them and hands the
    distances and ``reduce`` to the encoder's host thread (a ``Future``), so they overlap the
    next chunk's forward passes; without workers ``prepare`` is None and all runs here."""
    def texts_of(ids: np.ndarray) -> list[str]:
        return [texts[i] for i in ids.tolist()]

    def compute(ids: np.ndarray, handle=None):
        seqs = get_seqs()
        if handle is None:
            return reduce(ids, *seqs.sequences(ids, texts_of(ids), pair_index=pair_index, with_td=with_td))
        t0 = time.perf_counter()
        with phase("rows_wait"):
            rows = handle.result()
        encoder.profile["rows_wait"] += time.perf_counter() - t0
        with phase("queue_chunk"):
            embedded = seqs.embeddings(ids, texts_of(ids), pair_index=pair_index, with_td=with_td, rows=rows)

        def host():
            t = time.perf_counter()
            try:
                with phase("host_distances"):
                    return reduce(ids, *seqs.distances(embedded))
            finally:
                encoder.profile["host"] += time.perf_counter() - t

        return encoder.host_thread.submit(host)

    def prepare(ids: np.ndarray):
        return get_seqs().prepare(encoder.row_pool, ids, texts_of(ids), pair_index=pair_index)

    return compute, (prepare if encoder.workers else None)


@dataclass
class Embedded:
    """What the model gives ``VariantSequences.distances``: the variant rows' embeddings and
    index, and each token alone's embedding (or None)."""

    n_tokens: int
    pair_index: np.ndarray
    emb: "torch.Tensor | Pending"   # (Pending: on its way back from the GPU; ``ready`` gives the tensor)
    index: np.ndarray
    alone: "torch.Tensor | Pending | None"
    alias_rows: np.ndarray   # rows of a canonical pair's prefix and suffix that a shared pair reuses ...
    alias_refs: np.ndarray   # ... and the shared pair whose reference each is measured against
    alias_emb: "torch.Tensor | Pending | None"   # their embeddings (None: no shared pair)


def pair_scores(D: np.ndarray, td: np.ndarray) -> np.ndarray:
    """Each pair's weighted variant score (0.35 prefix + 0.35 suffix + 0.3 insert, the insert
    score averaged over the draws), float64 [T, P, 3 metrics]; the sticky score is its mean
    over the pairs (``sticky_scores``).  Each metric's score takes the token distance td in
    that metric (docs/algorithm.md §3)."""
    T, P, V, L, _ = D.shape
    out = np.empty((T, P, 3), dtype=np.float64)
    for m, name in enumerate(METRICS):
        a, b, c0 = SCORE_CONSTANTS[name]
        seqs = np.ascontiguousarray(D[..., m].reshape(-1, L))
        tdv = np.ascontiguousarray(np.repeat(td[..., m].reshape(-1), V))
        s = np.asarray(_core.sticky_score(seqs, tdv, a, b, c0)).reshape(T, P, V)
        out[:, :, m] = combine_variants(s, SCORE_WEIGHTS)
    return out


def scores_from_pairs(per_pair: np.ndarray) -> np.ndarray:
    """[T, P, 3] pair scores -> sticky scores [T, 3], rounded to 6 decimals like the reference."""
    return np.round(per_pair.mean(axis=1), 6)


def sticky_scores(D: np.ndarray, td: np.ndarray) -> np.ndarray:
    """Sticky score per token and metric, float64 [T, 3], rounded to 6 decimals like the reference.

    docs/algorithm.md §3: td is the distance between the token alone and the reference
    sentence in the same metric as the distance sequences."""
    return scores_from_pairs(pair_scores(D, td))


def shortlist(token_ids: np.ndarray, scores: np.ndarray, percent: float) -> tuple[np.ndarray, float]:
    """Ids whose cosine score is at or above the (100 - percent)th percentile, highest first."""
    if not 0 < percent <= 100:
        raise InputError(f"shortlist_percent must be in (0, 100], got {percent}")
    threshold = float(_core.percentile(np.ascontiguousarray(scores, dtype=np.float64), 100.0 - percent))
    keep = np.flatnonzero(scores >= threshold)
    order = keep[np.lexsort((token_ids[keep], -scores[keep]))]
    return token_ids[order], threshold
