"""Stage 4: verification of the shortlisted candidates and the final decision (docs/algorithm.md §4)."""
from __future__ import annotations

import math

import numpy as np

from . import _core
from .score import METRICS, combine_variants

VERIFY_WEIGHTS = np.array([4 / 11, 4 / 11, 3 / 11])
STRONG_VERIFIED = 1 - 1 / (3 * math.e)   # 0.877
WEAK_VERIFIED = 1 - 1 / (2 * math.e)     # 0.816
STRONG_REJECTED = 1 - 1 / math.e         # 0.632
FENCE_K = 0.7


def verification_outcomes(D: np.ndarray) -> np.ndarray:
    """Whether each (pair, variant slot) test moved closer to the reference on average
    (mean(d_1..d_K) - d0 < 0), uint8 [T, P, 2 + R slots, 3 metrics]: what the run folder keeps
    of verification, from which values and bootstrap confidences are computed."""
    T, P, V, L, _ = D.shape
    out = np.empty((T, P, V, 3), dtype=np.uint8)
    for m in range(len(METRICS)):
        out[..., m] = np.asarray(_core.verify_counts(np.ascontiguousarray(D[..., m].reshape(-1, L)))).reshape(T, P, V)
    return out


def per_pair_values(outcomes: np.ndarray) -> np.ndarray:
    """[T, P, 2 + R, 3] outcomes -> each pair's share of the three tests (weighted 4/11, 4/11,
    3/11; the insert test counts as the share of the R draws that moved closer), float64
    [T, P, 3 metrics]."""
    o = np.moveaxis(outcomes.astype(np.float64), 3, 2)          # [T, P, 3 metrics, V]
    return combine_variants(o, VERIFY_WEIGHTS)


def verification_per_pair(D: np.ndarray) -> np.ndarray:
    """Each pair's weighted share of the variant tests that moved closer, float64 [T, P, 3
    metrics]; its mean over pairs is ``verification_values``."""
    return per_pair_values(verification_outcomes(D))


def verification_values(D: np.ndarray) -> np.ndarray:
    """Share of (pair, variant) tests, weighted 4/11, 4/11, 3/11, in which the variants moved
    closer to the reference on average; float64 [T, 3 metrics], each in [0, 1]."""
    return verification_per_pair(D).mean(axis=1)


def verification_with_outcomes(D: np.ndarray, td=None):
    """Verification values [T, 3], and the outcomes to keep in the run folder's parts."""
    outcomes = verification_outcomes(D)
    return per_pair_values(outcomes).mean(axis=1), {"outcomes": outcomes}


def label(max_prob: float) -> str:
    """The reference implementation's label for a candidate's largest verification value."""
    if max_prob > STRONG_VERIFIED:
        return "strong_verified"
    if max_prob > WEAK_VERIFIED:
        return "weak_verified"
    if max_prob < STRONG_REJECTED:
        return "strong_rejected"
    return "weak_verified"


def fence(cosine_values: np.ndarray, k: float = FENCE_K) -> float:
    """Q3 + k*IQR of the candidates' cosine verification values; sticky means strictly above."""
    return float(_core.iqr_fence(np.ascontiguousarray(cosine_values, dtype=np.float64), k))
