"""How sure the decision is: bootstrap confidences for the candidates, and the audit of the
tokens the shortlist left out (docs/algorithm.md §6).

Both need no model work beyond what the run did: the confidence resamples the verification
pairs the run kept per-pair outcomes for; the audit's interval is a binomial one over the
audited tokens.
"""
from __future__ import annotations

import math

import numpy as np

from .verify import FENCE_K

BOOTSTRAP_DEFAULT = 1000


def resample_counts(n_pairs: int, n_resamples: int, seed: int) -> np.ndarray:
    """How often each pair is drawn in each of ``n_resamples`` seeded bootstrap resamples of
    ``n_pairs`` pairs (with replacement), int64 [B, P]."""
    rng = np.random.default_rng([int(seed), 0xB0075])
    draws = rng.integers(0, n_pairs, size=(n_resamples, n_pairs))
    flat = draws + np.arange(n_resamples)[:, None] * n_pairs
    return np.bincount(flat.ravel(), minlength=n_resamples * n_pairs).reshape(n_resamples, n_pairs)


def bootstrap(per_pair: np.ndarray, n_resamples: int = BOOTSTRAP_DEFAULT, seed: int = 42,
              k: float = FENCE_K) -> dict[str, np.ndarray]:
    """Bootstrap of the verification pairs.  ``per_pair`` [C, P]: each candidate's cosine
    value on each verification pair.  In each resample the candidates' values are the means
    over the resampled pairs and the fence (Q3 + k IQR, linear quartiles) is recomputed over
    them.  Returns 'confidence' [C] (share of resamples in which the candidate's value is
    strictly above that resample's fence), 'low' / 'high' [C] (2.5th / 97.5th percentiles of
    its value) and 'fence_low' / 'fence_high' (of the fence)."""
    per_pair = np.asarray(per_pair, dtype=np.float64)
    C, P = per_pair.shape
    if C == 0 or P == 0 or n_resamples < 1:
        empty = np.zeros(0)
        return {"confidence": empty, "low": empty, "high": empty, "fence_low": math.nan, "fence_high": math.nan}
    counts = resample_counts(P, n_resamples, seed).astype(np.float64)
    values = counts @ per_pair.T / P                                   # [B, C]
    fences = _fences(values, k)
    above = values > fences[:, None]
    lo, hi = np.percentile(values, [2.5, 97.5], axis=0)
    flo, fhi = np.percentile(fences, [2.5, 97.5])
    return {"confidence": above.mean(axis=0), "low": lo, "high": hi, "fence_low": float(flo),
            "fence_high": float(fhi)}


def _fences(values: np.ndarray, k: float) -> np.ndarray:
    """Each resample's fence, Q3 + k IQR (linear quartiles) of its row of values [B, C]."""
    q1, q3 = np.percentile(values, [25, 75], axis=1)
    return q3 + k * (q3 - q1)


def against_fences(candidates_per_pair: np.ndarray, tokens_per_pair: np.ndarray,
                   n_resamples: int = BOOTSTRAP_DEFAULT, seed: int = 42, k: float = FENCE_K) -> np.ndarray:
    """P(sticky) of other tokens against a run's bootstrap: the run's resamples of its pairs
    (the same seeded draws as ``bootstrap``), each resample's fence taken over the run's
    candidates [C, P], and the share of resamples in which a token's value (its per-pair
    values [T, P] averaged over the same resampled pairs) lies strictly above it.  A token
    that is one of the candidates gets exactly its ``bootstrap`` confidence."""
    cand = np.asarray(candidates_per_pair, dtype=np.float64)
    toks = np.asarray(tokens_per_pair, dtype=np.float64)
    P = cand.shape[1]
    if toks.shape[1] != P:
        raise ValueError(f"the tokens were verified on {toks.shape[1]} pairs, the run's candidates on {P}")
    counts = resample_counts(P, n_resamples, seed).astype(np.float64)
    fences = _fences(counts @ cand.T / P, k)
    return ((counts @ toks.T / P) > fences[:, None]).mean(axis=0)


def binomial_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson (exact) interval for a proportion, k successes in n trials."""
    from scipy.stats import beta

    if n <= 0:
        return 0.0, 1.0
    alpha = 1.0 - level
    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def audit_summary(cleared: int, audited: int, population: int, level: float = 0.95) -> dict:
    """The audit's figures: ``cleared`` of ``audited`` random unshortlisted tokens clear the
    fence; the estimate and the ``level`` interval of the number of sticky tokens among the
    ``population`` unshortlisted tokens (exact binomial interval, scaled to the population;
    never below the ``cleared`` tokens seen)."""
    lo, hi = binomial_interval(cleared, audited, level)
    share = cleared / audited if audited else math.nan
    return {"audited": int(audited), "cleared": int(cleared), "population": int(population), "level": level,
            "estimate": population * share if audited else math.nan,
            "low": max(int(cleared), math.floor(population * lo)) if audited else 0,
            "high": math.ceil(population * hi) if audited else population}
