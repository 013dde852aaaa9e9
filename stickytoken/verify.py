"""Stage 4: verification of the shortlisted candidates and the final decision (docs/algorithm.md §4)."""
from __future__ import annotations

import math

import numpy as np

from . import _core
from .score import METRICS

VERIFY_WEIGHTS = np.array([4 / 11, 4 / 11, 3 / 11])
STRONG_VERIFIED = 1 - 1 / (3 * math.e)   # 0.877
WEAK_VERIFIED = 1 - 1 / (2 * math.e)     # 0.816
STRONG_REJECTED = 1 - 1 / math.e         # 0.632
FENCE_K = 0.7


def verification_values(D: np.ndarray) -> np.ndarray:
    """Share of (pair, variant) tests, weighted 4/11, 4/11, 3/11, in which the variants moved
    closer to the reference on average; float64 [T, 3 metrics], each in [0, 1]."""
    T, P, V, L, _ = D.shape
    out = np.empty((T, 3), dtype=np.float64)
    for m in range(len(METRICS)):
        counts = np.asarray(_core.verify_counts(np.ascontiguousarray(D[..., m].reshape(-1, L))))
        out[:, m] = (counts.reshape(T, P, V) * VERIFY_WEIGHTS).sum(axis=2).mean(axis=1)
    return out


def verification_per_pair(D: np.ndarray) -> np.ndarray:
    """Each pair's share of the three variant tests (weighted 4/11, 4/11, 3/11) that moved
    closer, float64 [T, P, 3 metrics]; its mean over pairs is ``verification_values``."""
    T, P, V, L, _ = D.shape
    out = np.empty((T, P, 3), dtype=np.float64)
    for m in range(len(METRICS)):
        counts = np.asarray(_core.verify_counts(np.ascontiguousarray(D[..., m].reshape(-1, L))))
        out[:, :, m] = (counts.reshape(T, P, V) * VERIFY_WEIGHTS).sum(axis=2)
    return out


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
