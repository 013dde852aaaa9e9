"""Fast mode (``detect(..., fast=True)``): the same decision with less model work.

Two savings, both seeded and saved part by part like the exhaustive stages:

1. **Scoring that drops tokens which cannot reach the shortlist.**  A seeded random pilot
   (``pilot`` of the tokens) is fully scored first.  Every other token is then scored one
   scoring pair at a time (pair 0, 1, ...), with exactly the sequences the exhaustive mode
   builds for that pair, so a token that survives every pair has its exhaustive score.  After
   each pair a token stops when even the pilot's ``cap_quantile`` percentile of each remaining
   pair's contribution could not lift its partial score to a lower bound of the shortlist
   threshold (the percentile of the pilot's scores and everyone's partial scores; scores are
   sums of non-negative pair terms, so that bound never exceeds the true threshold).  The
   threshold is then the exact percentile over all tested tokens, stopped ones counted below.

2. **Verification that stops when the outcome is settled.**  A seeded random pilot of the
   candidates (``verify_pilot``) is verified on every pair; the fence (Q3 + 0.7 IQR) is taken
   over their exact values.  The other candidates take the verification pairs in one seeded
   order, in rounds (8, 16, 32, ... pairs so far); after each round a candidate whose value,
   estimated from the pairs it has seen with a standard error (finite-population corrected:
   after all pairs it is exact), lies clearly above or below the fence stops.  A candidate
   that ran through every pair has the exhaustive value exactly.

With ``cap_quantile=inf`` (no token stops) and ``verify_z=inf`` (no early stop) fast mode
computes exactly what the exhaustive mode computes.  What each saving costs in agreement
with the exhaustive mode is measured by ``scripts/recall.py`` (see the README).
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
from tqdm.auto import tqdm

from . import _core
from .errors import InputError
from .runfolder import run_parts
from .score import VARIANTS, chunk_callables, lazy_sequences, pair_scores, scores_from_pairs, tokens_per_chunk
from .verify import FENCE_K, verification_per_pair

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FastSettings:
    """Knobs of fast mode; they are part of the run's identity."""

    pilot: float = 0.04           # share of tokens fully scored first, at random (seeded) ...
    pilot_min: int = 200          # ... but at least this many (all tokens when there are fewer)
    cap_quantile: float = 99.5    # a pair's plausible largest contribution: this percentile over the pilot
    verify_pilot: float = 0.2     # share of candidates verified on every pair first: they fix the fence ...
    verify_pilot_min: int = 100   # ... at least this many (all candidates when there are fewer)
    verify_rounds: tuple[int, ...] = (8, 16, 32, 64, 128)  # pairs seen after each round (then all)
    verify_z: float = 2.5         # interval half-width in standard errors
    verify_margin: float = 0.0    # extra distance from the fence needed to stop
    prior_pairs: float = 5.0      # pseudo-pairs of pooled variance in each candidate's variance

    def identity(self) -> dict:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else (None if isinstance(v, float) and math.isinf(v) else v))
                for k, v in d.items()}


def percentile_position(n: int, percent: float) -> int:
    """How many of the top values decide the (100 - percent)th percentile of n values:
    n - floor((n - 1) * (100 - percent) / 100)."""
    return n - int(math.floor((n - 1) * (100.0 - percent) / 100.0))


def _pilot(tested: np.ndarray, seed: int, settings: FastSettings) -> np.ndarray:
    """The seeded random pilot, sorted ids."""
    n = len(tested)
    size = min(n, max(int(settings.pilot_min), int(math.ceil(settings.pilot * n))))
    rng = np.random.default_rng([int(seed), 0x9117])
    return np.sort(rng.choice(tested, size=size, replace=False)) if size < n else tested.copy()


def pair_caps(pilot_terms: np.ndarray, quantile: float) -> np.ndarray:
    """Each pair's plausible largest contribution to a score: the ``quantile`` percentile of
    the pilot's terms [pilot, P] for that pair, divided by P (scores are means over pairs)."""
    P = pilot_terms.shape[1]
    q = float(min(100.0, quantile))
    return np.array([float(_core.percentile(np.ascontiguousarray(pilot_terms[:, p] / P), q)) for p in range(P)])


def cannot_reach(partial: np.ndarray, pilot_scores: np.ndarray, rest_cap: float, percent: float):
    """Which partial scores (sums of the pair terms seen so far, over P) stay below a lower
    bound of the shortlist threshold even with ``rest_cap`` added.  The bound is the
    percentile over the pilot's scores and everyone's partial scores: terms are non-negative,
    so no final score is below its partial one and the bound never exceeds the threshold.
    Returns (stop mask, bound)."""
    everyone = np.concatenate([pilot_scores, partial])
    lower = float(_core.percentile(np.ascontiguousarray(everyone, dtype=np.float64), 100.0 - percent))
    return partial + rest_cap < lower, lower


def staged_scoring(n_rest: int, pair_terms, pilot_terms: np.ndarray, percent: float, cap_quantile: float):
    """Fast mode's pair-by-pair loop over the tokens outside the pilot.  ``pair_terms(p, idx)``
    gives the terms [len(idx), 3 metrics] of pair p for those tokens (by index); after each
    pair the tokens that ``cannot_reach`` the shortlist stop.  Returns (terms [n_rest, P, 3],
    NaN where not computed; mask of tokens that went through every pair; caps or None; stages)."""
    P = pilot_terms.shape[1]
    terms = np.full((n_rest, P, 3), np.nan)
    alive = np.ones(n_rest, bool)
    prune = math.isfinite(cap_quantile) and len(pilot_terms) > 0
    caps = pair_caps(pilot_terms[:, :, 0], cap_quantile) if prune else None
    pilot_scores = scores_from_pairs(pilot_terms)[:, 0]
    stages = []
    for p in range(P):
        idx = np.flatnonzero(alive)
        if len(idx):
            terms[idx, p, :] = pair_terms(p, idx)
        stage = {"pair": p, "scored": int(len(idx)), "stopped": 0}
        if prune and p < P - 1 and n_rest:
            partial = np.nansum(terms[:, :p + 1, 0], axis=1) / P
            stop, lower = cannot_reach(partial, pilot_scores, caps[p + 1:].sum(), percent)
            stop &= alive
            alive &= ~stop
            stage.update(stopped=int(stop.sum()), threshold_lower_bound=round(lower, 6))
        stages.append(stage)
    return terms, alive, caps, stages


def fast_score(run, encoder, vocab, tested: np.ndarray, scoring, insertion: str, insert_num: int, seed: int,
               shortlist_percent: float, show: bool, settings: FastSettings):
    """Pilot, then pair-by-pair scoring with stopping.  Returns (scored_ids, scores [M, 3],
    candidate ids highest first, threshold, info)."""
    rows = run.chunk_rows(encoder.device.type)
    get_seqs = lazy_sequences(encoder, scoring, insertion=insertion, insert_num=insert_num, seed=seed)
    texts = vocab.texts
    n, P = len(tested), len(scoring)
    # ---- pilot: fully scored, per-pair terms kept -------------------------------------------
    pilot = _pilot(tested, seed, settings)
    bar = tqdm(total=len(pilot), desc="scoring (pilot)", unit="tok", disable=not show, dynamic_ncols=True)
    compute, prepare = chunk_callables(encoder, get_seqs, texts,
                                       lambda ids, D, td: pair_scores(D, td).reshape(len(ids), -1))
    p_ids, p_vals = run_parts(run, "fast-pilot", pilot, tokens_per_chunk(P, insert_num, rows), compute, bar,
                              "scoring", prepare=prepare, profile=encoder.profile)
    bar.close()
    pilot_terms = p_vals.reshape(len(pilot), P, 3) if len(pilot) else np.zeros((0, P, 3))
    # ---- the rest, one pair at a time -------------------------------------------------------
    rest = np.setdiff1d(tested, pilot)
    per = tokens_per_chunk(1, insert_num, rows)
    alone_td: dict[int, np.ndarray] = {}      # each token alone is embedded once, not once per pair

    def pair_terms(p: int, idx: np.ndarray) -> np.ndarray:
        one_pair, prepare = chunk_callables(
            encoder, get_seqs, texts,
            lambda ids, D, _: pair_scores(D, np.stack([alone_td[i][p:p + 1] for i in ids.tolist()]))[:, 0, :],
            pair_index=np.array([p]), with_td=False)

        def score_pair(ids: np.ndarray, handle=None) -> np.ndarray:
            missing = [i for i in ids.tolist() if i not in alone_td]
            if missing:   # (here, before the pair's rows: the host's part may run in another thread)
                td = get_seqs().token_distances(np.asarray(missing, dtype=np.int64), [texts[i] for i in missing])
                alone_td.update(zip(missing, td))
            return one_pair(ids) if handle is None else one_pair(ids, handle)

        bar = tqdm(total=len(idx), desc=f"scoring (pair {p + 1}/{P})", unit="tok", disable=not show,
                   dynamic_ncols=True)
        _, vals = run_parts(run, f"fast-pair{p:02d}", rest[idx], per, score_pair, bar, "scoring", prepare=prepare,
                            profile=encoder.profile)
        bar.close()
        return vals

    terms, alive, caps, stages = staged_scoring(len(rest), pair_terms, pilot_terms, shortlist_percent,
                                                settings.cap_quantile)
    done = rest[alive]
    scored_ids = np.concatenate([pilot, done])
    scores = np.concatenate([scores_from_pairs(pilot_terms), scores_from_pairs(terms[alive])]) \
        if len(scored_ids) else np.zeros((0, 3))
    by_id = np.argsort(scored_ids, kind="stable")
    scored_ids, scores = scored_ids[by_id], scores[by_id]
    threshold = _threshold(scores[:, 0], n, shortlist_percent)
    keep = np.flatnonzero(scores[:, 0] >= threshold)
    cand = scored_ids[keep[np.lexsort((scored_ids[keep], -scores[keep, 0]))]]
    K3 = len(VARIANTS) * insert_num
    passes = len(pilot) * P * K3 + sum(st["scored"] for st in stages) * K3
    info = {"screened": int(n), "pilot": int(len(pilot)), "fully_scored": int(len(scored_ids)),
            "pair_caps": [round(float(c), 6) for c in caps] if caps is not None else None, "stages": stages,
            "passes": int(passes), "exhaustive_passes": int(n * P * K3)}
    return scored_ids, scores, cand, threshold, info


def _threshold(cos_scores: np.ndarray, n: int, percent: float) -> float:
    """The (100 - percent)th percentile of n values of which only cos_scores are known; the
    rest count as below all of them (they must not reach the interpolated positions)."""
    if len(cos_scores) < percentile_position(n, percent) + (1 if len(cos_scores) < n else 0):
        raise InputError("fast mode stopped too many tokens to place the shortlist threshold; "
                         "raise cap_quantile or the pilot")
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
    rows = run.chunk_rows(encoder.device.type)
    get_seqs = lazy_sequences(encoder, verifying, insertion=insertion, insert_num=insert_num, seed=seed)
    bar = tqdm(total=C * P, desc="verification", unit="pair", disable=not show, dynamic_ncols=True)

    def fetch(r: int, active: np.ndarray, pidx: np.ndarray) -> np.ndarray:
        compute, prepare = chunk_callables(encoder, get_seqs, vocab.texts,
                                           lambda ids, D, _: verification_per_pair(D).reshape(len(ids), -1),
                                           pair_index=pidx, with_td=False)
        per = tokens_per_chunk(len(pidx), insert_num, rows)
        _, vals = run_parts(run, f"fast-verify-r{r:02d}", cand_ids[active], per, compute,
                            _PairBar(bar, len(pidx)), "verification", prepare=prepare,
                            profile=encoder.profile)
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
    = mean over the pairs each candidate saw, pairs seen [C], info with the fence to decide by).

    Round 0 verifies a seeded random pilot of the candidates on every pair; the fence is taken
    over their exact values (an unbiased sample of the candidates' values; estimates of
    candidates that stopped early are not, since stopping depends on them).  The other
    candidates then go through the rounds and stop once their side of that fence is settled.
    If in the end every candidate saw every pair, the fence is the exhaustive one over all."""
    perm = pair_order(P, seed)
    marks = sorted({min(P, int(r)) for r in settings.verify_rounds if int(r) >= 1} | {P})
    sums = np.zeros((C, 3))
    sq = np.zeros(C)
    seen = np.zeros(C, np.int64)
    m = min(C, max(int(settings.verify_pilot_min), int(math.ceil(settings.verify_pilot * C))))
    pilot = np.zeros(C, bool)
    pilot[np.random.default_rng([int(seed), 0xF3C]).choice(C, size=m, replace=False)] = True
    vals = fetch(0, pilot.copy(), np.arange(P))
    sums[pilot] = vals.sum(axis=1)
    sq[pilot] = (vals[:, :, 0] ** 2).sum(axis=1)
    seen[pilot] = P
    exact = sums[pilot, 0] / P
    fence = float(_core.iqr_fence(np.ascontiguousarray(exact), FENCE_K))
    # per-pair variance of the pilot: the prior for every other candidate's variance
    pooled = float(np.mean(vals[:, :, 0].var(axis=1, ddof=1))) if P > 1 else 0.0
    rounds = [{"pilot": int(m), "pairs": int(P), "fence": round(fence, 6)}]
    active = ~pilot
    prev = 0
    for r, mark in enumerate(marks, start=1):
        if not active.any():
            break
        pidx = np.sort(perm[prev:mark])
        vals = fetch(r, active.copy(), pidx)
        sums[active] += vals.sum(axis=1)
        sq[active] += (vals[:, :, 0] ** 2).sum(axis=1)
        seen[active] += len(pidx)
        prev = mark
        settled = settle(sums[:, 0], sq, seen, P, fence, pooled, settings)
        stop = active & settled
        rounds.append({"pairs": int(mark), "active": int(active.sum()), "stopped": int(stop.sum())})
        active &= ~settled
    values = sums / np.maximum(seen, 1)[:, None]
    if np.all(seen >= P):
        fence = float(_core.iqr_fence(np.ascontiguousarray(values[:, 0]), FENCE_K))
    info = {"fence": fence, "pilot": int(m), "rounds": rounds, "stopped_early": int((seen < P).sum()),
            "pairs_used_mean": round(float(seen.mean()), 2)}
    return values, seen, info


def settle(sums: np.ndarray, sq: np.ndarray, seen: np.ndarray, P: int, fence: float, pooled: float,
           settings: FastSettings) -> np.ndarray:
    """Which candidates' side of the fence is settled: |estimate - fence| > z * se *
    sqrt((P - n) / (P - 1)) + margin, each candidate's per-pair variance pulled toward the
    pilot's (``prior_pairs`` pseudo-pairs); all P pairs seen is exact."""
    C = len(sums)
    n = np.maximum(seen, 1).astype(np.float64)
    est = sums / n
    dof = np.maximum(seen - 1, 0).astype(np.float64)
    var_c = np.maximum(np.where(seen > 1, (sq - seen * est ** 2) / np.maximum(dof, 1), 0.0), 0.0)
    var = (var_c * dof + pooled * settings.prior_pairs) / np.maximum(dof + settings.prior_pairs, 1e-12)
    if math.isinf(settings.verify_z):
        settled = np.zeros(C, bool)
    else:
        fpc = np.sqrt(np.clip((P - seen) / max(P - 1, 1), 0.0, 1.0))
        half = settings.verify_z * np.sqrt(var / n) * fpc
        settled = np.abs(est - fence) > half + settings.verify_margin
    return settled | (seen >= P)


class _PairBar:
    """Adapts a pair-unit progress bar to run_parts, which counts tokens."""

    def __init__(self, bar, pairs_per_token: int):
        self.bar, self.k = bar, pairs_per_token

    def update(self, n: int) -> None:
        self.bar.update(n * self.k)
