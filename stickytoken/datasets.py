"""The data the downstream assessment runs on: retrieval sets (BEIR folder format) and
clustering sets (CSV with text and label columns), built in, the user's, or from MTEB.

``get_retrieval`` / ``get_clustering`` take 'builtin' (``stickytoken/data/retrieval`` and
``stickytoken/data/clustering.csv``), a path, ``mteb:TASK`` (when ``mteb`` is installed and the
task's data is at hand) or a ready RetrievalData / ClusteringData.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass

import numpy as np

from .errors import InputError, read_user_file

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")


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
    """A clustering set: texts and their labels."""

    texts: list[str]
    labels: list[str]
    name: str = "clustering"

    def __repr__(self) -> str:
        return f"ClusteringData({self.name!r}, texts={len(self.texts)}, labels={len(set(self.labels))})"


def _read_jsonl(path: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8-sig") as fh:
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
    with open(qrels_path, encoding="utf-8-sig", newline="") as fh:
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
    text = read_user_file(path, "clustering file", "give a CSV with text and label columns")
    reader = csv.DictReader(io.StringIO(text, newline=""))
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


def _get(spec, kind: str, cls, builtin: str, load):
    """A data set of ``cls`` from 'builtin' / None, 'mteb:TASK', a path (read by ``load``) or
    a ready ``cls``."""
    if isinstance(spec, cls):
        return spec
    if spec is None or spec == "builtin":
        data = load(os.path.join(DATA_DIR, builtin))
        data.name = f"built-in {kind} set"
        return data
    if isinstance(spec, str) and spec.startswith("mteb:"):
        return _load_mteb(spec[5:], kind)
    return load(os.fspath(spec))


def get_retrieval(spec) -> RetrievalData:
    """A retrieval set from 'builtin' / None, a BEIR folder, 'mteb:TASK' or a RetrievalData."""
    return _get(spec, "retrieval", RetrievalData, "retrieval", load_beir)


def get_clustering(spec) -> ClusteringData:
    """A clustering set from 'builtin' / None, a CSV, 'mteb:TASK' or a ClusteringData."""
    return _get(spec, "clustering", ClusteringData, "clustering.csv", load_clustering)
