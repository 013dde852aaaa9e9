"""Fast mode (``detect(..., fast=True)``): the same decision with much less model work.

Two savings, both seeded and saved part by part like the exhaustive stages:

1. **Screen, then score.**  Every tested token gets a cheap proxy score: the sticky-score
   formula on a few of its variant sequences (by default one scoring pair, prefix and suffix,
   k in a subset of 1..K).  Tokens are then fully scored (the exact score of section 3) in
   proxy order, best first, in blocks.  The shortlist threshold is the exact percentile over
   *all* tested tokens, unscored ones counted as below every scored one; it is exact whenever
   every token at or above it was among the scored ones.  Scoring grows by another block
   while the last block still held a token at or above the threshold.

2. **Verification that stops when the outcome is settled.**  Verification pairs are taken in
   one seeded order, in rounds (8, 16, 32, ... pairs so far).  After each round every
   candidate's cosine value is estimated from the pairs it has seen, with a standard error
   (finite-population corrected: after all pairs it is exact), and the fence (Q3 + 0.7 IQR)
   is taken over the current estimates.  A candidate whose interval lies wholly above or
   below the fence stops; the others go on to the next round.  A candidate that ran through
   every pair has the exhaustive value exactly.

With ``screen_keep >= 1`` (every token fully scored) and ``verify_z = inf`` (no early stop)
fast mode computes exactly what the exhaustive mode computes.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from . import _core
from .errors import InputError
from .score import SCORE_CONSTANTS, SCORE_WEIGHTS, VARIANTS, VariantSequences, sticky_scores, tokens_per_chunk
from .verify import FENCE_K, verification_per_pair

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FastSettings:
    """Knobs of fast mode; they are part of the run's identity."""

    screen_pairs: tuple[int, ...] = (1,)       # scoring pairs used by the screen
    screen_variants: tuple[int, ...] = (0, 1)  # prefix, suffix (insert would add random positions)
    screen_ks: tuple[int, ...] = (4, 8)        # insert counts k used by the screen (clipped to K)
    screen_keep: float = 2.5      # fully score this many times the shortlist size at first ...
    screen_block: float = 0.2     # ... then blocks of this share of that, while the last block held a candidate
    screen_max: float = 4.0       # ... but never more than this many times the shortlist size
    verify_rounds: tuple[int, ...] = (8, 16, 32, 64, 128)  # pairs seen after each round (then all)
    verify_z: float = 2.5         # interval half-width in standard errors
    verify_margin: float = 0.0    # extra distance from the fence needed to stop
    prior_pairs: float = 5.0      # pseudo-pairs of pooled variance in each candidate's variance
    settle_quartiles: bool = False  # also go on while a candidate's side of Q1 or Q3 is open:
    #                                 a fence as good as the exhaustive one, ~4x the pairs

    def identity(self) -> dict:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else (None if isinstance(v, float) and math.isinf(v) else v))
                for k, v in d.items()}


def _chunk_rows(run, encoder) -> int:
    from .api import CHUNK_ROWS_CPU, CHUNK_ROWS_CUDA

    if "chunk_rows" not in run.run:
        run.run["chunk_rows"] = CHUNK_ROWS_CUDA if encoder.device.type == "cuda" else CHUNK_ROWS_CPU
        run.save_run()
    return int(run.run["chunk_rows"])


def _parts(run, stage: str, token_ids: np.ndarray, per: int, compute, bar, desc: str, offset: int = 0):
    """Chunks of ``per`` tokens, each saved as part ``offset + c`` of ``stage``; done parts are
    read back.  Returns (ids, values) concatenated."""
    ids_out, vals_out = [], []
    n_chunks = (len(token_ids) + per - 1) // per
    for c in range(n_chunks):
        ids = token_ids[c * per:(c + 1) * per]
        index = offset + c
        if run.has_part(stage, index):
            part = run.load_part(stage, index)
            if not np.array_equal(part["ids"], ids):
                raise InputError(f"part {index} of stage {stage} in {run.path} does not match this run; "
                                 "remove the folder")
        else:
            t0 = time.perf_counter()
            part = {"ids": ids, "values": compute(ids)}
            run.save_part(stage, index, **part)
            run.add_time(desc, time.perf_counter() - t0)
        ids_out.append(part["ids"])
        vals_out.append(part["values"])
        bar.update(len(ids))
    if not ids_out:
        return np.zeros(0, np.int64), None
    return np.concatenate(ids_out).astype(np.int64), np.concatenate(vals_out)


def percentile_position(n: int, percent: float) -> int:
    """How many of the top values decide the (100 - percent)th percentile of n values:
    n - floor((n - 1) * (100 - percent) / 100)."""
    return n - int(math.floor((n - 1) * (100.0 - percent) / 100.0))


def screen_scores(seqs: VariantSequences, token_ids: np.ndarray, texts: Sequence[str],
                  settings: FastSettings) -> np.ndarray:
    """Proxy sticky score, float64 [T, 1]: the cosine sticky-score formula on the sequences
    [d0, d_k for k in screen_ks] of the screen's pairs and variants (td left out), weighted
    like the full score."""
    K = seqs.insert_num
    ks = sorted({min(int(k), K) for k in settings.screen_ks if int(k) >= 1}) or [K]
    pairs = np.asarray(sorted({p for p in settings.screen_pairs if 0 <= p < seqs.n_pairs}) or [0], dtype=np.int64)
    variants = sorted(set(settings.screen_variants))
    want_p = np.zeros(seqs.n_pairs, bool)
    want_p[pairs] = True
    want_v = np.zeros(len(VARIANTS), bool)
    want_v[variants] = True
    want_k = np.zeros(K + 1, bool)
    want_k[ks] = True
    keep = lambda index: want_p[index[:, 1]] & want_v[index[:, 2]] & want_k[index[:, 3]]  # noqa: E731
    emb, index = seqs._variant_embeddings(np.ascontiguousarray(token_ids, dtype=np.int64), list(texts), keep)
    dist = np.asarray(_core.row_distances(emb, seqs.ref_emb, np.ascontiguousarray(index[:, 1])))[:, 0]
    T, P, V, L = len(token_ids), len(pairs), len(variants), len(ks)
    D = np.empty((T, P, V, L + 1), dtype=np.float64)
    D[..., 1:] = dist.reshape(T, P, V, L)      # rows come token-major, then pair, variant, k
    D[..., 0] = seqs.d0[pairs, 0][None, :, None]
    a, b, c0 = SCORE_CONSTANTS["cosine"]
    s = np.asarray(_core.sticky_score(np.ascontiguousarray(D.reshape(-1, L + 1)), np.zeros(T * P * V), a, b, c0))
    w = SCORE_WEIGHTS[variants] / SCORE_WEIGHTS[variants].sum()
    return (s.reshape(T, P, V) * w).sum(axis=2).mean(axis=1)[:, None]


def fast_score(run, encoder, vocab, tested: np.ndarray, scoring, insertion: str, insert_num: int, seed: int,
               shortlist_percent: float, show: bool, settings: FastSettings):
    """Screen every tested token, fully score the best by the proxy.  Returns (scored_ids,
    scores [M, 3], candidate ids highest first, threshold, info)."""
    rows = _chunk_rows(run, encoder)
    seqs = None

    def get_seqs():
        nonlocal seqs
        if seqs is None:
            seqs = VariantSequences(encoder, scoring, insertion=insertion, insert_num=insert_num, seed=seed)
        return seqs

    texts = vocab.texts
    n = len(tested)
    # ---- screen -----------------------------------------------------------------------------
    n_rows = max(1, len(settings.screen_pairs) * len(settings.screen_variants) * len(settings.screen_ks))
    per_screen = max(1, rows // n_rows)
    bar = tqdm(total=n, desc="screen", unit="tok", disable=not show, dynamic_ncols=True)
    s_ids, proxy = _parts(run, "fast-screen", tested, per_screen,
                          lambda ids: screen_scores(get_seqs(), ids, [texts[i] for i in ids.tolist()], settings),
                          bar, "screen")
    bar.close()
    proxy = proxy[:, 0] if proxy is not None else np.zeros(0)
    order = s_ids[np.lexsort((s_ids, -proxy))]           # best proxy first, ties by id

    # ---- exact scores, in proxy order -------------------------------------------------------
    need = percentile_position(n, shortlist_percent)      # top values that decide the threshold
    per = tokens_per_chunk(len(scoring), insert_num, rows)
    first = min(n, max(need + 1, int(math.ceil(settings.screen_keep * need))))
    block = max(1, int(math.ceil(settings.screen_block * first)))
    cap = min(n, max(first, int(math.ceil(settings.screen_max * need))))
    bar = tqdm(total=cap, desc="scoring", unit="tok", disable=not show, dynamic_ncols=True)
    done, m, b = 0, first, 0
    scored_ids = np.zeros(0, np.int64)
    scores = np.zeros((0, 3))
    while True:
        # block b: proxy ranks [done, m), saved as parts of its own stage
        new_ids, new_vals = _parts(
            run, f"fast-score-b{b:03d}", order[done:m], per,
            lambda ids: sticky_scores(*get_seqs().sequences(ids, [texts[i] for i in ids.tolist()])),
            bar, "scoring")
        if len(new_ids):
            scored_ids = np.concatenate([scored_ids, new_ids])
            scores = np.concatenate([scores, new_vals.astype(np.float64)])
        threshold = _threshold(scores[:, 0], n, shortlist_percent)
        last = scores[max(0, m - block):m, 0]
        done, b = m, b + 1
        if m >= cap or not np.any(last >= threshold):
            break
        m = min(cap, m + block)
        logger.info("screen: the last block still held candidates; scoring %d tokens", m)
    bar.close()
    keep = np.flatnonzero(scores[:, 0] >= threshold)
    cand = scored_ids[keep[np.lexsort((scored_ids[keep], -scores[keep, 0]))]]
    lowest = int(np.flatnonzero(np.isin(order, cand)).max()) + 1 if len(cand) else 0
    by_id = np.argsort(scored_ids, kind="stable")
    scored_ids, scores = scored_ids[by_id], scores[by_id]
    info = {"screened": int(n), "fully_scored": int(len(scored_ids)), "deepest_candidate_rank": lowest,
            "screen_rows_per_token": n_rows}
    return scored_ids, scores, cand, threshold, info


def _threshold(cos_scores: np.ndarray, n: int, percent: float) -> float:
    """The (100 - percent)th percentile of n values of which only cos_scores are known; the
    rest count as below all of them (they must not reach the interpolated positions)."""
    if len(cos_scores) < percentile_position(n, percent) + (1 if len(cos_scores) < n else 0):
        raise InputError("fast mode scored too few tokens to place the shortlist threshold")
    filler = float(cos_scores.min()) - 1.0
    full = np.concatenate([cos_scores, np.full(n - len(cos_scores), filler)])
    return float(_core.percentile(np.ascontiguousarray(full, dtype=np.float64), 100.0 - percent))


def fast_verify(run, encoder, vocab, cand_ids: np.ndarray, verifying, insertion: str, insert_num: int, seed: int,
                show: bool, settings: FastSettings):
    """Sequential verification of the candidates, each round saved as parts.  Returns (ids,
    values [C, 3] estimates, pairs used [C], info)."""
    C, P = len(cand_ids), len(verifying)
    if C == 0:
        return cand_ids, np.zeros((0, 3)), np.zeros(0, np.int64), {"passes": 0, "stopped_early": 0}
    rows = _chunk_rows(run, encoder)
    seqs = None
    texts = vocab.texts
    bar = tqdm(total=C * P, desc="verification", unit="pair", disable=not show, dynamic_ncols=True)

    def fetch(r: int, active: np.ndarray, pidx: np.ndarray) -> np.ndarray:
        def compute(chunk):
            nonlocal seqs
            if seqs is None:
                seqs = VariantSequences(encoder, verifying, insertion=insertion, insert_num=insert_num, seed=seed)
            D, _ = seqs.sequences(chunk, [texts[i] for i in chunk.tolist()], pair_index=pidx, with_td=False)
            return verification_per_pair(D).reshape(len(chunk), -1)

        per = tokens_per_chunk(len(pidx), insert_num, rows)
        _, vals = _parts(run, f"fast-verify-r{r:02d}", cand_ids[active], per, compute,
                         _PairBar(bar, len(pidx)), "verification")
        return vals.reshape(int(active.sum()), len(pidx), 3)

    values, seen, info = sequential_verification(C, P, fetch, settings, seed)
    bar.close()
    info["passes"] = int(seen.sum()) * len(VARIANTS) * insert_num
    info["exhaustive_passes"] = C * P * len(VARIANTS) * insert_num
    return cand_ids, values, seen, info


def pair_order(P: int, seed: int) -> np.ndarray:
    """The seeded order in which fast verification takes the verification pairs."""
    return np.random.default_rng([int(seed), 0x5EC]).permutation(P)


def sequential_verification(C: int, P: int, fetch, settings: FastSettings, seed: int):
    """The early-stopping loop.  ``fetch(round, active mask [C], pair indices)`` returns the
    active candidates' per-pair values [n_active, n_pairs, 3 metrics].  Returns (values [C, 3]
    = mean over the pairs each candidate saw, pairs seen [C], info)."""
    perm = pair_order(P, seed)
    marks = sorted({min(P, int(r)) for r in settings.verify_rounds if int(r) >= 1} | {P})
    sums = np.zeros((C, 3))
    sq = np.zeros(C)
    seen = np.zeros(C, np.int64)
    active = np.ones(C, bool)
    prev = 0
    rounds = []
    for r, mark in enumerate(marks):
        pidx = np.sort(perm[prev:mark])
        vals = fetch(r, active.copy(), pidx)
        sums[active] += vals.sum(axis=1)
        sq[active] += (vals[:, :, 0] ** 2).sum(axis=1)
        seen[active] += len(pidx)
        prev = mark
        est, fence, settled = settle(sums[:, 0], sq, seen, P, settings)
        stop = active & settled
        rounds.append({"pairs": int(mark), "active": int(active.sum()), "stopped": int(stop.sum()),
                       "fence": round(fence, 6)})
        active &= ~settled
        if not active.any():
            break
    values = sums / np.maximum(seen, 1)[:, None]
    info = {"rounds": rounds, "stopped_early": int((seen < P).sum()),
            "pairs_used_mean": round(float(seen.mean()), 2)}
    return values, seen, info


def settle(sums: np.ndarray, sq: np.ndarray, seen: np.ndarray, P: int, settings: FastSettings):
    """Estimates (mean of the pairs seen), the fence over them, and which candidates' side of
    the fence is settled: |estimate - fence| > z * se * sqrt((P - n) / (P - 1)) + margin, with
    each candidate's per-pair variance pulled toward the pooled one; all P pairs seen is exact."""
    C = len(sums)
    n = np.maximum(seen, 1).astype(np.float64)
    est = sums / n
    fence = float(_core.iqr_fence(np.ascontiguousarray(est), FENCE_K))
    dof = np.maximum(seen - 1, 0).astype(np.float64)
    var_c = np.maximum(np.where(seen > 1, (sq - seen * est ** 2) / np.maximum(dof, 1), 0.0), 0.0)
    pooled = float((var_c * dof).sum() / max(1.0, dof.sum()))
    var = (var_c * dof + pooled * settings.prior_pairs) / np.maximum(dof + settings.prior_pairs, 1e-12)
    if math.isinf(settings.verify_z):
        settled = np.zeros(C, bool)
    else:
        fpc = np.sqrt(np.clip((P - seen) / max(P - 1, 1), 0.0, 1.0))
        half = settings.verify_z * np.sqrt(var / n) * fpc
        settled = np.abs(est - fence) > half + settings.verify_margin
        if settings.settle_quartiles:
            # the fence is only as good as Q1 and Q3: candidates near them go on too
            q1 = float(_core.percentile(np.ascontiguousarray(est), 25.0))
            q3 = float(_core.percentile(np.ascontiguousarray(est), 75.0))
            settled &= (np.abs(est - q1) > half) & (np.abs(est - q3) > half)
    settled |= seen >= P
    return est, fence, settled


class _PairBar:
    """Adapts a pair-unit progress bar to _parts, which counts tokens."""

    def __init__(self, bar, pairs_per_token: int):
        self.bar, self.k = bar, pairs_per_token

    def update(self, n: int) -> None:
        self.bar.update(n * self.k)
