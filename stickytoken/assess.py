"""What sticky tokens cost downstream: retrieval, clustering and retrieval hijack, with a guard.

For the run's sticky tokens and as many control tokens (``DetectionResult.control_ids``), each
token's decoded text is inserted ``copies`` times into the texts at random word positions
(split on whitespace, insert one copy at a uniform position 0..len(words), join with single
spaces; one copy after another, as the detector's insert variant; seeded by (seed, token id,
text index, role)).  Then, per token:

- **retrieval** (nDCG@10, MRR@10, recall@100; cosine similarity of normalised embeddings,
  exhaustive ranking) with the token in the queries, in the documents, or in both;
- **clustering** (V-measure of k-means with k = the number of labels, seeded) with the token
  in every text;
- **hijack**: for each of a subset of queries, one irrelevant document (a seeded draw among
  the documents that are not judged relevant and not already in the query's top 10) gets
  1, 2, ... copies (cumulative, at random word positions) up to ``max_copies``; the number of
  copies at which its score first exceeds the query's 10th best score (so that it enters the
  top 10) is recorded, or nothing when it does not within the cap;
- with the **guard** on (``StickyGuard`` built from the run's sticky tokens), the same metrics,
  so one sees how much of the drop the guard restores.

Relative changes are (value - clean baseline) / clean baseline; guard values are compared
with the same clean (unguarded) baseline.

Data: the built-in retrieval set (BEIR folder format, ``stickytoken/data/retrieval``) and
clustering set (``stickytoken/data/clustering.csv``), user data in BEIR's folder format
(corpus.jsonl, queries.jsonl, qrels/<split>.tsv) and a CSV with ``text`` and ``label``
columns, or ``mteb:TASK`` when ``mteb`` is installed and the task's data is at hand.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .errors import InputError

logger = logging.getLogger(__name__)

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
TARGETS = ("queries", "documents", "both")
RETRIEVAL_METRICS = ("ndcg@10", "mrr@10", "recall@100")


# ---- data -------------------------------------------------------------------------------------
@dataclass
class RetrievalData:
    """A retrieval set: doc id -> text, query id -> text, query id -> {doc id: relevance}."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    name: str = "retrieval"

    def __repr__(self) -> str:
        return f"RetrievalData({self.name!r}, docs={len(self.corpus)}, queries={len(self.queries)})"

    def subset(self, max_queries: int | None, max_docs: int | None, seed: int) -> "RetrievalData":
        """A seeded subset: ``max_queries`` judged queries, and their relevant documents plus a
        seeded draw of others up to ``max_docs`` documents."""
        qids = [q for q in self.queries if any(r > 0 for r in self.qrels.get(q, {}).values())]
        rng = np.random.default_rng(seed)
        if max_queries is not None and max_queries < len(qids):
            qids = [qids[i] for i in np.sort(rng.choice(len(qids), size=max_queries, replace=False))]
        docs = list(self.corpus)
        if max_docs is not None and max_docs < len(docs):
            keep = {d for q in qids for d, r in self.qrels.get(q, {}).items() if r > 0 and d in self.corpus}
            rest = [d for d in docs if d not in keep]
            extra = max(0, max_docs - len(keep))
            if extra and rest:
                keep |= {rest[i] for i in rng.choice(len(rest), size=min(extra, len(rest)), replace=False)}
            docs = [d for d in docs if d in keep]
        return RetrievalData({d: self.corpus[d] for d in docs}, {q: self.queries[q] for q in qids},
                             {q: {d: r for d, r in self.qrels[q].items() if d in set(docs)} for q in qids},
                             self.name)


@dataclass
class ClusteringData:
    texts: list[str]
    labels: list[str]
    name: str = "clustering"

    def __repr__(self) -> str:
        return f"ClusteringData({self.name!r}, texts={len(self.texts)}, labels={len(set(self.labels))})"


def _read_jsonl(path: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}: line {n} is not valid JSON ({exc.msg})") from exc
    return rows


def load_beir(folder: str, split: str = "test") -> RetrievalData:
    """A BEIR-format folder: corpus.jsonl (_id, title, text), queries.jsonl (_id, text),
    qrels/<split>.tsv (query-id, corpus-id, score; header line)."""
    paths = {n: os.path.join(folder, n) for n in ("corpus.jsonl", "queries.jsonl")}
    qrels_path = os.path.join(folder, "qrels", f"{split}.tsv")
    for p in (*paths.values(), qrels_path):
        if not os.path.isfile(p):
            raise InputError(f"retrieval folder {folder!r} lacks {os.path.relpath(p, folder)}; "
                             "give a BEIR-format folder (corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    corpus = {}
    for row in _read_jsonl(paths["corpus.jsonl"]):
        if "_id" not in row:
            raise InputError(f"{paths['corpus.jsonl']}: every line needs an '_id'")
        title, text = str(row.get("title") or "").strip(), str(row.get("text") or "").strip()
        corpus[str(row["_id"])] = (title + " " + text).strip() if title else text
    queries = {str(r["_id"]): str(r.get("text", "")) for r in _read_jsonl(paths["queries.jsonl"])}
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        for n, row in enumerate(reader, 1):
            if not row or (n == 1 and not _is_int(row[-1])):
                continue
            if len(row) < 3 or not _is_int(row[-1]):
                raise InputError(f"{qrels_path}: line {n} is not 'query-id<TAB>corpus-id<TAB>score'")
            qrels.setdefault(row[0], {})[row[1]] = int(row[-1])
    qrels = {q: {d: r for d, r in rel.items() if d in corpus} for q, rel in qrels.items() if q in queries}
    if not corpus or not any(any(r > 0 for r in rel.values()) for rel in qrels.values()):
        raise InputError(f"retrieval folder {folder!r} has no documents or no judged queries")
    return RetrievalData(corpus, {q: t for q, t in queries.items() if q in qrels}, qrels, os.path.basename(
        os.path.normpath(folder)))


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


def load_clustering(path: str) -> ClusteringData:
    """A CSV with a header holding ``text`` and ``label`` columns."""
    if not os.path.isfile(path):
        raise InputError(f"clustering file {path!r} does not exist; give a CSV with text and label columns")
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "text" not in reader.fieldnames or "label" not in reader.fieldnames:
            raise InputError(f"clustering file {path!r} needs a header with 'text' and 'label' columns")
        rows = [(r["text"], r["label"]) for r in reader if r.get("text")]
    if len({lab for _, lab in rows}) < 2:
        raise InputError(f"clustering file {path!r} needs at least two labels")
    return ClusteringData([t for t, _ in rows], [lab for _, lab in rows], os.path.splitext(os.path.basename(path))[0])


def _load_mteb(name: str, kind: str):
    """Best effort: an MTEB task's test split, when mteb is installed and its data is at hand."""
    try:
        import mteb
    except ImportError as exc:
        raise InputError(f"mteb:{name} needs the mteb package (pip install mteb) and the task's data") from exc
    try:
        task = mteb.get_task(name)
        task.load_data()
        if kind == "retrieval":
            split = "test"
            corpus = getattr(task, "corpus", None)
            if corpus is not None:                                   # mteb 1.x layout
                corpus, queries, rel = task.corpus[split], task.queries[split], task.relevant_docs[split]
            else:                                                    # mteb 2.x layout
                ds = task.dataset
                ds = ds.get("default", ds)[split]
                corpus, queries, rel = ds["corpus"], ds["queries"], ds["relevant_docs"]
            corpus = {str(k): (v if isinstance(v, str) else (str(v.get("title", "")) + " " + str(v.get("text", ""))).strip())
                      for k, v in _as_dict(corpus).items()}
            queries = {str(k): (v if isinstance(v, str) else str(v.get("text", ""))) for k, v in _as_dict(queries).items()}
            qrels = {str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in dict(rel).items()}
            return RetrievalData(corpus, queries, qrels, f"mteb:{name}")
        ds = task.dataset
        ds = ds.get("default", ds)
        split = ds["test"]
        texts, labels = list(split["sentences"]), list(split["labels"])
        if texts and isinstance(texts[0], list):                     # clustering tasks hold several sets
            texts, labels = texts[0], labels[0]
        return ClusteringData([str(t) for t in texts], [str(lab) for lab in labels], f"mteb:{name}")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"could not load MTEB task {name!r} ({type(exc).__name__}: {exc}); "
                         "its data must be downloaded already") from exc


def _as_dict(obj) -> dict:
    if isinstance(obj, dict):
        return obj
    rows = list(obj)                                                 # a datasets.Dataset with id/_id columns
    key = "id" if "id" in rows[0] else "_id"
    return {r[key]: r for r in rows}


def get_retrieval(spec) -> RetrievalData:
    if isinstance(spec, RetrievalData):
        return spec
    if spec is None or spec == "builtin":
        data = load_beir(os.path.join(DATA_DIR, "retrieval"))
        data.name = "built-in retrieval set"
        return data
    if isinstance(spec, str) and spec.startswith("mteb:"):
        return _load_mteb(spec[5:], "retrieval")
    return load_beir(os.fspath(spec))


def get_clustering(spec) -> ClusteringData:
    if isinstance(spec, ClusteringData):
        return spec
    if spec is None or spec == "builtin":
        data = load_clustering(os.path.join(DATA_DIR, "clustering.csv"))
        data.name = "built-in clustering set"
        return data
    if isinstance(spec, str) and spec.startswith("mteb:"):
        return _load_mteb(spec[5:], "clustering")
    return load_clustering(os.fspath(spec))


# ---- metrics ----------------------------------------------------------------------------------
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


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def v_measure(labels_true: Sequence, labels_pred: Sequence) -> float:
    """V-measure: harmonic mean of homogeneity 1 - H(C|K)/H(C) and completeness
    1 - H(K|C)/H(K) (each 1 when its entropy is 0), as sklearn's v_measure_score."""
    _, t = np.unique(np.asarray(labels_true), return_inverse=True)
    _, p = np.unique(np.asarray(labels_pred), return_inverse=True)
    table = np.zeros((t.max() + 1, p.max() + 1))
    np.add.at(table, (t, p), 1)
    n = table.sum()
    h_c, h_k = _entropy(table.sum(1)), _entropy(table.sum(0))
    ci, ki = np.nonzero(table)
    v = table[ci, ki]
    h_c_given_k = float(-np.sum(v / n * np.log(v / table.sum(0)[ki])))
    h_k_given_c = float(-np.sum(v / n * np.log(v / table.sum(1)[ci])))
    hom = 1.0 if h_c == 0 else 1.0 - h_c_given_k / h_c
    com = 1.0 if h_k == 0 else 1.0 - h_k_given_c / h_k
    return 0.0 if hom + com == 0 else 2 * hom * com / (hom + com)


def clustering_v_measure(emb: np.ndarray, labels: Sequence, seed: int = 42) -> float:
    """k-means (k = number of labels, n_init=10, seeded) on the embeddings, scored by V-measure."""
    from sklearn.cluster import KMeans

    k = len(set(labels))
    pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(np.asarray(emb, dtype=np.float64))
    return v_measure(labels, pred)


# ---- insertion --------------------------------------------------------------------------------
def insert_copies(text: str, token_text: str, copies: int, rng: np.random.Generator) -> str:
    """``text`` with ``copies`` copies of ``token_text`` at random word positions: split on
    whitespace, insert one copy at a uniform position 0..len(words), repeat; join with spaces."""
    words = text.split()
    t = token_text.strip()
    for _ in range(copies):
        at = int(rng.integers(0, len(words) + 1))
        words.insert(at, t)
    return " ".join(words)


def insert_cumulative(text: str, token_text: str, max_copies: int, rng: np.random.Generator) -> list[str]:
    """The texts with 1..max_copies copies, each one more copy than the last."""
    words = text.split()
    t = token_text.strip()
    out = []
    for _ in range(max_copies):
        words.insert(int(rng.integers(0, len(words) + 1)), t)
        out.append(" ".join(words))
    return out


_ROLE = {"query": 0, "document": 1, "clustering": 2, "hijack": 3}


def _rng(seed: int, tid: int, index: int, role: str) -> np.random.Generator:
    return np.random.default_rng([seed, tid, index, _ROLE[role]])


class _Embedder:
    """model.encode (or a guard's) with normalised embeddings and a text -> vector cache."""

    def __init__(self, encoder, batch_size: int):
        self.encoder = encoder
        self.batch_size = batch_size
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            emb = self.encoder.encode(missing, batch_size=self.batch_size, convert_to_numpy=True,
                                      normalize_embeddings=True, show_progress_bar=False)
            for t, e in zip(missing, np.asarray(emb, dtype=np.float32)):
                self.cache[t] = e
        if not texts:
            return np.zeros((0, 1), np.float32)
        return np.stack([self.cache[t] for t in texts])

    def trim(self, keep: set[str]):
        self.cache = {t: e for t, e in self.cache.items() if t in keep}


class _Cleaned:
    """The remove guard's embeddings: the plain embedder on the cleaned texts, which is exactly
    what ``StickyGuard.encode`` computes in remove mode, sharing the plain cache."""

    def __init__(self, plain: _Embedder, guard):
        self.plain, self.guard, self.cache = plain, guard, plain.cache

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.plain([self.guard.clean(t) for t in texts])

    def trim(self, keep: set[str]):
        pass


# ---- the result -------------------------------------------------------------------------------
@dataclass
class Assessment:
    """Downstream metrics per token and condition, retrieval hijack results, and baselines.

    ``rows``: one dict per (group, token, task, target, metric) with value, baseline,
    relative_change, guard_value, guard_relative_change.  ``hijack``: one dict per (group,
    token, query) with the copies that brought the irrelevant document into the top 10 (None
    when not within ``max_copies``), without and with the guard.
    """

    model: str
    params: dict[str, Any]
    baselines: dict[str, dict[str, float]]
    rows: list[dict[str, Any]] = field(repr=False)
    hijack: list[dict[str, Any]] = field(default_factory=list, repr=False)
    tokens: list[dict[str, Any]] = field(default_factory=list, repr=False)
    notes: list[str] = field(default_factory=list)
    output: str | None = None

    def __repr__(self) -> str:
        groups = sorted({t["group"] for t in self.tokens})
        return (f"Assessment(model={self.model!r}, tokens={len(self.tokens)} ({', '.join(groups)}), "
                f"copies={self.params['copies']}, tasks={sorted(self.baselines)})")

    def to_pandas(self, kind: str = "summary"):
        """'summary' (per group, task, target, metric: means over tokens), 'tokens' (every row),
        'hijack' (every query x token) or 'hijack_summary'."""
        import pandas as pd

        if kind == "tokens":
            return pd.DataFrame(self.rows)
        if kind == "hijack":
            return pd.DataFrame(self.hijack, columns=["group", "token_id", "token", "query_id", "doc_id",
                                                      "copies_needed", "guard_copies_needed"])
        if kind == "summary":
            df = pd.DataFrame(self.rows)
            if df.empty:
                return df
            g = df.groupby(["group", "task", "target", "metric"], sort=False)
            out = g.agg(tokens=("value", "size"), baseline=("baseline", "first"), value=("value", "mean"),
                        relative_change=("relative_change", "mean"), relative_change_std=("relative_change", "std"),
                        worst_relative_change=("relative_change", "min"), guard_baseline=("guard_baseline", "first"),
                        guard_value=("guard_value", "mean"),
                        guard_relative_change=("guard_relative_change", "mean")).reset_index()
            drop = out["baseline"] - out["value"]
            out["guard_restored"] = np.where(drop.abs() > 1e-12, (out["guard_value"] - out["value"]) / drop, np.nan)
            return out
        if kind == "hijack_summary":
            rows = []
            cap = self.params["max_copies"]
            for grp in dict.fromkeys(h["group"] for h in self.hijack):
                sel = [h for h in self.hijack if h["group"] == grp]
                need = np.array([np.nan if h["copies_needed"] is None else h["copies_needed"] for h in sel], float)
                gneed = np.array([np.nan if h["guard_copies_needed"] is None else h["guard_copies_needed"] for h in sel], float)
                rows.append({"group": grp, "pairs": len(sel), "max_copies": cap,
                             "hijacked": float(np.mean(~np.isnan(need))),
                             "median_copies": float(np.nanmedian(need)) if np.any(~np.isnan(need)) else np.nan,
                             "guard_hijacked": float(np.mean(~np.isnan(gneed)))})
            return pd.DataFrame(rows)
        raise InputError(f"kind must be 'summary', 'tokens', 'hijack' or 'hijack_summary', got {kind!r}")

    def table(self) -> str:
        """The summary as a Markdown table (relative changes in %)."""
        df = self.to_pandas("summary")
        lines = ["| group | task | target | metric | baseline | with tokens | change | worst | guard on | change, guard on |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for r in df.itertuples():
            lines.append(f"| {r.group} | {r.task} | {r.target} | {r.metric} | {r.baseline:.4f} | {r.value:.4f} | "
                         f"{100 * r.relative_change:+.1f}% | {100 * r.worst_relative_change:+.1f}% | "
                         f"{r.guard_value:.4f} | {100 * r.guard_relative_change:+.1f}% |"
                         if not np.isnan(r.guard_value) else
                         f"| {r.group} | {r.task} | {r.target} | {r.metric} | {r.baseline:.4f} | {r.value:.4f} | "
                         f"{100 * r.relative_change:+.1f}% | {100 * r.worst_relative_change:+.1f}% | - | - |")
        return "\n".join(lines)

    def summary(self) -> str:
        p = self.params
        lines = [f"# Downstream impact: {self.model}", "",
                 f"{sum(t['group'] != 'control' for t in self.tokens)} analysed and "
                 f"{sum(t['group'] == 'control' for t in self.tokens)} control tokens, {p['copies']} copies inserted "
                 f"at random word positions, seed {p['seed']}; guard: {p['guard'] or 'off'}.", ""]
        for task, b in self.baselines.items():
            lines.append(f"- {task} ({p.get(task + '_data', '')}): clean baseline " +
                         ", ".join(f"{m} {v:.4f}" for m, v in b.items()))
        lines += ["", self.table(), ""]
        if self.hijack:
            hs = self.to_pandas("hijack_summary")
            lines += ["## Retrieval hijack", "",
                      f"Copies needed to bring an irrelevant document into a query's top 10 (cap {p['max_copies']}).", "",
                      "| group | token x query pairs | hijacked within cap | median copies (hijacked) | hijacked, guard on |",
                      "|---|---|---|---|---|"]
            for r in hs.itertuples():
                med = "-" if np.isnan(r.median_copies) else f"{r.median_copies:g}"
                lines.append(f"| {r.group} | {r.pairs} | {100 * r.hijacked:.1f}% | {med} | {100 * r.guard_hijacked:.1f}% |")
            lines.append("")
        lines += [f"- note: {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    # ---- figures -----------------------------------------------------------------------------
    def plot(self, folder: str | None = None, kind: str = "assess"):
        """'assess': bar chart of each metric's relative change; 'hijack': the share of (token,
        query) pairs hijacked by at most c copies.  With ``folder``, both are saved (PNG + PDF)
        and a dict of paths is returned."""
        from .plotting import draw_or_save

        makers = {"assess": self._fig_bars, "hijack": self._fig_hijack}
        return draw_or_save(makers, folder, kind)

    def _fig_bars(self):
        from .plotting import color, pyplot

        df = self.to_pandas("summary")
        if df.empty:
            return None
        plt = pyplot()
        cond = list(dict.fromkeys(zip(df["task"], df["target"], df["metric"])))
        groups = list(dict.fromkeys(df["group"]))
        width = 0.8 / len(groups)
        fig, ax = plt.subplots(figsize=(max(7, 1.0 * len(cond)), 4.2))
        x = np.arange(len(cond))
        for i, g in enumerate(groups):
            sub = df[df["group"] == g].set_index(["task", "target", "metric"])
            xs = x + (i - (len(groups) - 1) / 2) * width
            vals = [100 * sub.loc[c, "relative_change"] for c in cond]
            errs = [100 * np.nan_to_num(sub.loc[c, "relative_change_std"]) for c in cond]
            ax.bar(xs, vals, width, yerr=errs, capsize=2, color=color(g), label=g)
            if self.params.get("guard") and g != "control":
                ax.scatter(xs, [100 * sub.loc[c, "guard_relative_change"] for c in cond], marker="D", s=28,
                           color=color("guard"), edgecolor="black", zorder=3, label=f"{g}, guard on")
        ax.axhline(0, color="#444444", lw=0.8)
        ax.set_xticks(x, [f"{m}\n{tg}" if t == "retrieval" else f"{m}\n{t}" for t, tg, m in cond], fontsize=7)
        ax.set_ylabel("relative change vs clean (%)")
        ax.set_title(f"{self.model}: {self.params['copies']} copies inserted (mean, std over tokens)", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig

    def _fig_hijack(self):
        from .plotting import color, pyplot

        if not self.hijack:
            return None
        plt = pyplot()
        cap = self.params["max_copies"]
        cs = np.arange(1, cap + 1)
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for grp in dict.fromkeys(h["group"] for h in self.hijack):
            sel = [h for h in self.hijack if h["group"] == grp]
            need = np.array([np.inf if h["copies_needed"] is None else h["copies_needed"] for h in sel])
            ax.step(cs, [100 * np.mean(need <= c) for c in cs], where="post", color=color(grp), label=f"{grp}")
            if self.params.get("guard") and grp != "control":
                gneed = np.array([np.inf if h["guard_copies_needed"] is None else h["guard_copies_needed"] for h in sel])
                ax.step(cs, [100 * np.mean(gneed <= c) for c in cs], where="post", color=color("guard"), ls="--",
                        label=f"{grp}, guard on")
        ax.set_xlabel("copies inserted into an irrelevant document")
        ax.set_ylabel("queries hijacked (% of token x query pairs)")
        ax.set_title(f"{self.model}: irrelevant document enters the top 10", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig

    # ---- files -------------------------------------------------------------------------------
    def save(self, folder: str) -> dict[str, Any]:
        """Write assess.csv (summary), assess_tokens.csv, hijack.csv, summary.md, assess.json
        and the figures (PNG + PDF) into ``folder``; returns the paths."""
        from .plotting import use_agg
        from .results import atomic_write

        use_agg()

        os.makedirs(folder, exist_ok=True)
        paths = {"summary": os.path.join(folder, "assess.csv"), "tokens": os.path.join(folder, "assess_tokens.csv"),
                 "hijack": os.path.join(folder, "hijack.csv"), "summary_md": os.path.join(folder, "summary.md")}
        atomic_write(paths["summary"], self.to_pandas("summary").to_csv(index=False))
        atomic_write(paths["tokens"], self.to_pandas("tokens").to_csv(index=False))
        atomic_write(paths["hijack"], self.to_pandas("hijack").to_csv(index=False))
        atomic_write(paths["summary_md"], self.summary())
        atomic_write(os.path.join(folder, "assess.json"), json.dumps(
            {"model": self.model, "params": self.params, "baselines": self.baselines, "tokens": self.tokens,
             "notes": self.notes}, indent=1, ensure_ascii=False))
        paths["figures"] = self.plot(folder)
        self.output = os.path.abspath(folder)
        return paths


def _rel(v: float, base: float) -> float:
    return (v - base) / base if base else float("nan")


# ---- the assessment ---------------------------------------------------------------------------
def assess(result_or_model=None, *, tokens=None, controls=None, n_tokens: int | None = None, copies: int = 4,
           targets: Sequence[str] = TARGETS, retrieval="builtin", clustering="builtin",
           max_queries: int | None = None, max_docs: int | None = None, max_texts: int | None = None,
           hijack: bool = True, hijack_queries: int = 20, max_copies: int = 16, guard: str | None = "remove",
           seed: int | None = None, batch_size: int = 64, model=None, device: str | None = None,
           output: str | None = None, show_progress_bar: bool | None = None) -> Assessment:
    """Measure retrieval, clustering and hijack with the run's sticky tokens and control tokens
    inserted, with and without the guard.

    ``result_or_model``: a DetectionResult or run folder (tokens: its sticky tokens, at most
    ``n_tokens``, and as many controls), or a model with explicit ``tokens`` (and ``controls``).
    ``retrieval`` / ``clustering``: 'builtin', a BEIR folder / labelled CSV, 'mteb:TASK', a
    RetrievalData / ClusteringData, or None to skip.  ``max_queries``, ``max_docs`` and
    ``max_texts`` take seeded subsets (for speed).  ``guard``: 'remove', 'mask' or None.
    ``output`` defaults to RUN/assess for a run; ``output=False`` writes nothing.
    """
    from tqdm.auto import tqdm

    from .attention import resolve_result, run_tokens, token_ids_from, token_text, _random_controls
    from .encoder import _progress_enabled
    from .guard import StickyGuard
    from .models import load_model, model_name

    if copies < 1:
        raise InputError(f"copies must be at least 1, got {copies}")
    if max_copies < 1:
        raise InputError(f"max_copies must be at least 1, got {max_copies}")
    targets = tuple(targets)
    if not targets or any(t not in TARGETS for t in targets):
        raise InputError(f"targets must be some of {', '.join(TARGETS)}, got {', '.join(map(str, targets)) or 'none'}")
    if guard not in (None, "remove", "mask"):
        raise InputError(f"guard must be 'remove', 'mask' or None, got {guard!r}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")

    result = resolve_result(result_or_model)
    notes: list[str] = []
    if result is not None:
        seed = int(result.params.get("seed", 42)) if seed is None else int(seed)
        st = load_model(model if model is not None else result.model, device=device)
        name = result.model
        ids, texts, groups, notes = run_tokens(result, st.tokenizer, tokens, controls, n_tokens, seed)
        guard_tokens = [t for t in result.sticky_tokens] or [t for t, g in zip(ids, groups) if g != "control"]
        if output is None and result.run_dir:
            output = os.path.join(result.run_dir, "assess")
    else:
        seed = 42 if seed is None else int(seed)
        st = load_model(result_or_model if model is None else model, device=device)
        name = model_name(result_or_model if model is None else model)
        if tokens is None:
            raise InputError("give a detection result or run folder, or tokens to assess")
        ids = token_ids_from(st.tokenizer, tokens)[:n_tokens]
        ctrl = (_random_controls(st.tokenizer, len(ids), seed, exclude=set(ids)) if controls is None
                else token_ids_from(st.tokenizer, controls))
        if controls is None:
            notes.append("no detection result: control tokens are a seeded draw of single-token words")
        groups = ["sticky"] * len(ids) + ["control"] * len(ctrl)
        ids, texts = ids + list(ctrl), [None] * (len(ids) + len(ctrl))
        guard_tokens = [i for i, g in zip(ids, groups) if g != "control"]
    texts = [t if t is not None else token_text(st.tokenizer, i) for t, i in zip(texts, ids)]
    texts = [t.strip() for t in texts]
    guard_obj = StickyGuard(st, guard_tokens, mode=guard) if guard else None

    rdata = get_retrieval(retrieval) if retrieval is not None else None
    if rdata is not None and (max_queries is not None or max_docs is not None):
        rdata = rdata.subset(max_queries, max_docs, seed)
    cdata = get_clustering(clustering) if clustering is not None else None
    if cdata is not None and max_texts is not None and max_texts < len(cdata.texts):
        idx = np.sort(np.random.default_rng(seed).choice(len(cdata.texts), size=max_texts, replace=False))
        cdata = ClusteringData([cdata.texts[i] for i in idx], [cdata.labels[i] for i in idx], cdata.name)
    if rdata is None and cdata is None:
        raise InputError("nothing to assess: give a retrieval set, a clustering set, or both")

    plain = _Embedder(st, batch_size)
    if guard_obj is None:
        guarded = None
    elif guard == "remove":
        guarded = _Cleaned(plain, guard_obj)
    else:
        guarded = _Embedder(guard_obj, batch_size)
    baselines: dict[str, dict[str, float]] = {}
    guard_baselines: dict[str, dict[str, float]] = {}
    params = {"seed": seed, "copies": copies, "targets": list(targets), "max_copies": max_copies,
              "hijack_queries": hijack_queries if (hijack and rdata is not None) else 0, "guard": guard,
              "batch_size": batch_size, "insertion": "text; random word positions, cumulative, seeded by "
              "(seed, token id, text index, role)"}

    if rdata is not None:
        qids, dids = list(rdata.queries), list(rdata.corpus)
        qtexts, dtexts = [rdata.queries[q] for q in qids], [rdata.corpus[d] for d in dids]
        Q, D = plain(qtexts), plain(dtexts)
        baselines["retrieval"] = retrieval_metrics(Q, D, qids, dids, rdata.qrels)
        if guarded is not None:
            GQ, GD = guarded(qtexts), guarded(dtexts)
            guard_baselines["retrieval"] = retrieval_metrics(GQ, GD, qids, dids, rdata.qrels)
        params.update(retrieval_data=rdata.name, queries=len(qids), documents=len(dids))
    if cdata is not None:
        C = plain(cdata.texts)
        baselines["clustering"] = {"v_measure": clustering_v_measure(C, cdata.labels, seed)}
        if guarded is not None:
            guard_baselines["clustering"] = {"v_measure": clustering_v_measure(guarded(cdata.texts), cdata.labels, seed)}
        params.update(clustering_data=cdata.name, clustering_texts=len(cdata.texts),
                      clusters=len(set(cdata.labels)))
    clean_plain = set(plain.cache)
    clean_guard = set(guarded.cache) if guarded is not None else set()

    # hijack set-up: per query, the 10th best clean score and a seeded irrelevant document
    hij_pairs = []
    if rdata is not None and hijack and hijack_queries > 0:
        scores = Q.astype(np.float64) @ D.astype(np.float64).T
        rng = np.random.default_rng([seed, _ROLE["hijack"]])
        hq = list(range(len(qids)))
        if hijack_queries < len(hq):
            hq = sorted(rng.choice(len(qids), size=hijack_queries, replace=False).tolist())
        kth = min(10, len(dids))
        for qi in hq:
            order = np.argsort(-scores[qi], kind="stable")
            top = set(order[:kth].tolist())
            rel = {d for d, r in rdata.qrels.get(qids[qi], {}).items() if r > 0}
            pool = [j for j in range(len(dids)) if j not in top and dids[j] not in rel]
            if not pool:
                continue
            dj = int(pool[int(rng.integers(len(pool)))])
            hij_pairs.append((qi, dj, float(scores[qi, order[kth - 1]])))
        if guarded is not None:
            gscores = GQ.astype(np.float64) @ GD.astype(np.float64).T
            gkth = {qi: float(np.sort(gscores[qi])[::-1][kth - 1]) for qi, _, _ in hij_pairs}

    rows: list[dict[str, Any]] = []
    hij_rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(ids), desc="assess", unit="token", disable=not _progress_enabled(show_progress_bar),
               dynamic_ncols=True)
    for tid, text, grp in zip(ids, texts, groups):
        def add(task, target, metric, value, gvalue):
            base = baselines[task][metric]
            gbase = guard_baselines.get(task, {}).get(metric, float("nan"))
            rows.append({"group": grp, "token_id": int(tid), "token": text, "task": task, "target": target,
                         "metric": metric, "copies": copies, "baseline": base, "value": value,
                         "relative_change": _rel(value, base), "guard_baseline": gbase, "guard_value": gvalue,
                         "guard_relative_change": _rel(gvalue, base)})

        if rdata is not None:
            q_ins = [insert_copies(t, text, copies, _rng(seed, tid, i, "query")) for i, t in enumerate(qtexts)]
            d_ins = [insert_copies(t, text, copies, _rng(seed, tid, i, "document")) for i, t in enumerate(dtexts)]
            Qi = plain(q_ins) if {"queries", "both"} & set(targets) else None
            Di = plain(d_ins) if {"documents", "both"} & set(targets) else None
            if guarded is not None:
                GQi = guarded(q_ins) if Qi is not None else None
                GDi = guarded(d_ins) if Di is not None else None
            for target in targets:
                qe, de = (Qi if target != "documents" else Q), (Di if target != "queries" else D)
                m = retrieval_metrics(qe, de, qids, dids, rdata.qrels)
                if guarded is not None:
                    gm = retrieval_metrics(GQi if target != "documents" else GQ, GDi if target != "queries" else GD,
                                           qids, dids, rdata.qrels)
                else:
                    gm = {k: float("nan") for k in m}
                for metric in RETRIEVAL_METRICS:
                    add("retrieval", target, metric, m[metric], gm[metric])
            for qi, dj, thr in hij_pairs:
                variants = insert_cumulative(dtexts[dj], text, max_copies, _rng(seed, tid, dj, "hijack"))
                s = plain(variants).astype(np.float64) @ Q[qi].astype(np.float64)
                need = next((c + 1 for c, v in enumerate(s) if v > thr), None)
                gneed = None
                if guarded is not None:
                    gs = guarded(variants).astype(np.float64) @ GQ[qi].astype(np.float64)
                    gneed = next((c + 1 for c, v in enumerate(gs) if v > gkth[qi]), None)
                hij_rows.append({"group": grp, "token_id": int(tid), "token": text, "query_id": qids[qi],
                                 "doc_id": dids[dj], "copies_needed": need, "guard_copies_needed": gneed})
        if cdata is not None:
            c_ins = [insert_copies(t, text, copies, _rng(seed, tid, i, "clustering")) for i, t in enumerate(cdata.texts)]
            v = clustering_v_measure(plain(c_ins), cdata.labels, seed)
            gv = clustering_v_measure(guarded(c_ins), cdata.labels, seed) if guarded is not None else float("nan")
            add("clustering", "texts", "v_measure", v, gv)
        # keep only the clean texts' embeddings between tokens
        plain.trim(clean_plain)
        if guarded is not None:
            guarded.trim(clean_guard)
        bar.update(1)
    bar.close()

    a = Assessment(model=name, params=params, baselines=baselines, rows=rows, hijack=hij_rows,
                   tokens=[{"id": int(i), "text": t, "group": g} for i, t, g in zip(ids, texts, groups)], notes=notes)
    if guard_baselines:
        a.params["guard_baselines"] = guard_baselines
    if output:
        a.save(output)
    return a


# ---- command line -----------------------------------------------------------------------------
def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``assess RUN``."""
    from .attention import add_run_arguments

    p = subparsers.add_parser(
        "assess", help="retrieval, clustering and hijack with a run's sticky tokens inserted, guard on and off",
        description="Insert a finished run's sticky tokens (and as many control tokens) into retrieval queries "
                    "and documents and clustering texts, and report nDCG@10, MRR@10, recall@100, V-measure and "
                    "retrieval hijack, without and with the guard.")
    add_run_arguments(p, "assess", "assess", 64)
    p.add_argument("--copies", type=int, default=4, help="copies inserted into each text (default 4)")
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated: queries,documents,both")
    p.add_argument("--retrieval", default="builtin",
                   help="'builtin', a BEIR folder, 'mteb:TASK', or 'none' (default builtin)")
    p.add_argument("--clustering", default="builtin",
                   help="'builtin', a CSV with text,label columns, 'mteb:TASK', or 'none' (default builtin)")
    p.add_argument("--queries", type=int, default=None, help="use a seeded subset of this many queries")
    p.add_argument("--docs", type=int, default=None, help="use a seeded subset of this many documents "
                   "(the chosen queries' relevant documents are kept)")
    p.add_argument("--texts", type=int, default=None, help="use a seeded subset of this many clustering texts")
    p.add_argument("--hijack-queries", type=int, default=20, help="queries in the hijack test (0 = skip; default 20)")
    p.add_argument("--max-copies", type=int, default=16, help="cap on copies in the hijack test (default 16)")
    p.add_argument("--guard", choices=["remove", "mask", "none"], default="remove",
                   help="guard mode reported beside the unguarded metrics (default remove)")
    p.set_defaults(func=run_cli)
    return p


def run_cli(args) -> int:
    from .attention import finished_run

    result = finished_run(args.run)
    output = args.output or os.path.join(args.run, "assess")
    none = lambda v: None if v in (None, "none") else v  # noqa: E731
    a = assess(result, n_tokens=args.tokens, copies=args.copies,
               targets=[t.strip() for t in args.targets.split(",") if t.strip()],
               retrieval=none(args.retrieval), clustering=none(args.clustering), max_queries=args.queries,
               max_docs=args.docs, max_texts=args.texts, hijack=args.hijack_queries > 0,
               hijack_queries=args.hijack_queries, max_copies=args.max_copies, guard=none(args.guard),
               seed=args.seed, batch_size=args.batch_size, model=args.model, device=args.device, output=output,
               show_progress_bar=True)
    print(a.summary())
    print(f"tables and figures written to {os.path.abspath(output)}")
    for n in ("assess.csv", "assess_tokens.csv", "hijack.csv", "assess.png", "hijack.png"):
        print("  " + os.path.join(os.path.abspath(output), n))
    return 0
