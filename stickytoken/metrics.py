"""Downstream metrics: retrieval (nDCG@10, MRR@10, recall@100 over an exhaustive cosine
ranking), clustering (V-measure of seeded k-means, from scikit-learn), and the retrieval
hijack summary."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

RETRIEVAL_METRICS = ("ndcg@10", "mrr@10", "recall@100")


def ndcg_at_k(ranking: Sequence[str], rels: dict[str, int], k: int = 10) -> float:
    """nDCG@k with linear gains (the relevance grade) and log2(rank + 1) discounts, as
    pytrec_eval / BEIR compute it; 0 for a query without relevant documents."""
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]) if rels.get(d, 0) > 0)
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def mrr_at_k(ranking: Sequence[str], rels: dict[str, int], k: int = 10) -> float:
    """1 / rank of the first relevant document within the top k, else 0."""
    for i, d in enumerate(ranking[:k]):
        if rels.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def recall_at_k(ranking: Sequence[str], rels: dict[str, int], k: int = 100) -> float:
    """Share of the relevant documents found in the top k (0 without relevant documents)."""
    relevant = {d for d, r in rels.items() if r > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def rank_documents(q_emb: np.ndarray, d_emb: np.ndarray, doc_ids: Sequence[str], k: int) -> list[list[str]]:
    """Top-k document ids per query by dot product (cosine for normalised embeddings); ties
    broken by document order."""
    scores = np.asarray(q_emb, dtype=np.float64) @ np.asarray(d_emb, dtype=np.float64).T
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[doc_ids[j] for j in row] for row in order]


def retrieval_metrics(q_emb, d_emb, query_ids: Sequence[str], doc_ids: Sequence[str],
                      qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Mean nDCG@10, MRR@10 and recall@100 over the queries."""
    rankings = rank_documents(q_emb, d_emb, doc_ids, 100)
    out = {m: 0.0 for m in RETRIEVAL_METRICS}
    for q, ranking in zip(query_ids, rankings):
        rels = qrels.get(q, {})
        out["ndcg@10"] += ndcg_at_k(ranking, rels, 10)
        out["mrr@10"] += mrr_at_k(ranking, rels, 10)
        out["recall@100"] += recall_at_k(ranking, rels, 100)
    return {m: v / max(1, len(query_ids)) for m, v in out.items()}


def v_measure(labels_true: Sequence, labels_pred: Sequence) -> float:
    """V-measure (harmonic mean of homogeneity and completeness): scikit-learn's
    ``v_measure_score``."""
    from sklearn.metrics import v_measure_score

    return float(v_measure_score(np.asarray(labels_true), np.asarray(labels_pred)))


def clustering_v_measure(emb: np.ndarray, labels: Sequence, seed: int = 42) -> float:
    """k-means (k = number of labels, n_init=10, seeded) on the embeddings, scored by V-measure."""
    from sklearn.cluster import KMeans

    k = len(set(labels))
    pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(np.asarray(emb, dtype=np.float64))
    return v_measure(labels, pred)


def hijack_summary(rows: Sequence[dict[str, Any]], max_copies: int) -> list[dict[str, Any]]:
    """Per group: (token, query) pairs, the share hijacked within ``max_copies`` copies, the
    median copies needed among those hijacked (numpy's median: the mean of the two middle
    values for an even count), and the share hijacked with the guard on.  ``rows`` are the
    hijack rows (``copies_needed`` / ``guard_copies_needed``: a number, or None / NaN / ''
    when not hijacked within the cap)."""
    def needed(v) -> float:
        if v is None or v == "":
            return float("nan")
        return float(v)

    out = []
    for grp in dict.fromkeys(h["group"] for h in rows):
        sel = [h for h in rows if h["group"] == grp]
        need = np.array([needed(h["copies_needed"]) for h in sel], float)
        gneed = np.array([needed(h.get("guard_copies_needed")) for h in sel], float)
        hit = ~np.isnan(need)
        out.append({"group": grp, "pairs": len(sel), "max_copies": max_copies, "hijacked": float(np.mean(hit)),
                    "median_copies": float(np.median(need[hit])) if hit.any() else float("nan"),
                    "guard_hijacked": float(np.mean(~np.isnan(gneed)))})
    return out
