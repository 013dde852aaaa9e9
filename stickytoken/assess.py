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

import json
import logging
import os
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .datasets import ClusteringData, get_clustering, get_retrieval
from .encoder import progress_enabled
from .errors import InputError, check_int, check_output_folder
from .options import TARGETS
from .guard import StickyGuard
from .metrics import RETRIEVAL_METRICS, clustering_v_measure, hijack_summary, retrieval_metrics
from .models import batch_padding
from .plotting import assess_figures, draw_or_save, use_agg
from .results import atomic_write
from .selection import analysis_inputs, controls_said
from .tables import json_ready, markdown_table

logger = logging.getLogger(__name__)


# ---- insertion --------------------------------------------------------------------------------
def insert_copies(text: str, token_text: str, copies: int, rng: np.random.Generator) -> str:
    """``text`` with ``copies`` copies of ``token_text`` at random word positions: split on
    whitespace, insert one copy at a uniform position 0..len(words), repeat; join with spaces."""
    return " ".join(_insert_words(text, token_text, copies, rng)[0])


def _insert_words(text: str, token_text: str, copies: int, rng: np.random.Generator,
                  cumulative: bool = False) -> tuple[list[str], list[bool], list[str]]:
    """``insert_copies``' words, which of them are the copies, and with ``cumulative`` the text
    after each copy (``insert_cumulative``'s)."""
    words = text.split()
    marks = [False] * len(words)
    t = token_text.strip()
    texts = []
    for _ in range(copies):
        at = int(rng.integers(0, len(words) + 1))
        words.insert(at, t)
        marks.insert(at, True)
        if cumulative:
            texts.append(" ".join(words))
    return words, marks, texts


def insert_cumulative(text: str, token_text: str, max_copies: int, rng: np.random.Generator) -> list[str]:
    """The texts with 1..max_copies copies, each one more copy than the last."""
    return _insert_words(text, token_text, max_copies, rng, cumulative=True)[2]


_ROLE = {"query": 0, "document": 1, "clustering": 2, "hijack": 3}


class _CutCopies:
    """How many inserted copies fall where the model cuts a text off (past ``max_seq_length``
    tokens, or before them for a tokenizer that truncates on the left): those copies never
    reach the model, so a long text sees fewer copies than asked.  Counted per role on the
    tokenizer's own offsets; a text short enough to hold every copy is not tokenized again."""

    def __init__(self, st):
        tok = getattr(st, "tokenizer", None)
        self.limit = int(getattr(st, "max_seq_length", None) or 0)
        self.tok = tok if self.limit and getattr(tok, "is_fast", False) else None
        self.counts: dict[str, dict[str, int]] = {}
        self._lengths: dict[str, int] = {}
        self._token_lengths: dict[str, int] = {}
        if self.tok is not None:
            self.room = self.limit - len(self.tok("")["input_ids"])

    def _length(self, text: str, cache: dict[str, int]) -> int:
        n = cache.get(text)
        if n is None:
            n = cache[text] = len(self.tok(text, add_special_tokens=False, truncation=True,
                                           max_length=self.limit + 1)["input_ids"])   # (enough to compare)
        return n

    def add(self, role: str, clean: str, words: list[str], marks: list[bool]):
        c = self.counts.setdefault(role, {"texts": 0, "texts_cut": 0, "copies": 0, "copies_cut": 0})
        n_copies = sum(marks)
        c["texts"] += 1
        c["copies"] += n_copies
        if self.tok is None or not n_copies:
            return
        t = next(w for w, m in zip(words, marks) if m)
        # a bound: the clean text's tokens, and each copy's own and one more where it meets a word
        if self._length(clean, self._lengths) + n_copies * (self._length(t, self._token_lengths) + 2) <= self.room:
            return
        text = " ".join(words)
        enc = self.tok(text, truncation=True, max_length=self.limit, return_offsets_mapping=True)
        spans = [(a, b) for a, b in enc["offset_mapping"] if b > a]
        if len(enc["input_ids"]) < self.limit or not spans:
            return
        first, last = spans[0][0], spans[-1][1]
        cut, at = 0, 0
        for w, m in zip(words, marks):
            if m and (at < first or at + len(w) > last):
                cut += 1
            at += len(w) + 1
        if cut:
            c["texts_cut"] += 1
            c["copies_cut"] += cut

    def notes(self) -> list[str]:
        out = []
        for role, c in self.counts.items():
            if c["copies_cut"]:
                out.append(f"{role} texts: {c['copies_cut']:,} of the {c['copies']:,} inserted copies "
                           f"({100 * c['copies_cut'] / c['copies']:.1f}%), in {c['texts_cut']:,} of {c['texts']:,} "
                           f"texts, fell where the model cuts a text off (its limit of {self.limit} tokens) and never "
                           "reached it: on long texts the change measured is that of fewer copies than asked")
        return out


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
            with batch_padding(self.encoder):
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
            g = df.groupby(["group", "task", "target", "metric", "copies"], sort=False)
            out = g.agg(tokens=("value", "size"), baseline=("baseline", "first"), value=("value", "mean"),
                        relative_change=("relative_change", "mean"), relative_change_std=("relative_change", "std"),
                        worst_relative_change=("relative_change", "min"), guard_baseline=("guard_baseline", "first"),
                        guard_value=("guard_value", "mean"),
                        guard_relative_change=("guard_relative_change", "mean")).reset_index()
            # which token gave each group's worst change (None where every change is undefined)
            worst = {key: (None if sub["relative_change"].isna().all()
                           else sub.loc[sub["relative_change"].idxmin(), "token"]) for key, sub in g}
            out.insert(out.columns.get_loc("worst_relative_change") + 1, "worst_token",
                       [worst[k] for k in zip(out["group"], out["task"], out["target"], out["metric"],
                                              out["copies"])])
            # each metric's doses together, smallest first (rows come dose by dose)
            first = {k: i for i, k in reversed(list(enumerate(zip(df["group"], df["task"], df["target"],
                                                                  df["metric"]))))}
            keys = list(zip(out["group"], out["task"], out["target"], out["metric"]))
            order = sorted(range(len(out)), key=lambda i: (first[keys[i]], out["copies"].iat[i]))
            out = out.iloc[order].reset_index(drop=True)
            drop = out["baseline"] - out["value"]
            out["guard_restored"] = np.where(drop.abs() > 1e-12, (out["guard_value"] - out["value"]) / drop, np.nan)
            return out
        if kind == "hijack_summary":
            return pd.DataFrame(hijack_summary(self.hijack, self.params["max_copies"]))
        raise InputError(f"kind must be 'summary', 'tokens', 'hijack' or 'hijack_summary', got {kind!r}")

    def table(self) -> str:
        """The summary as a Markdown table (relative changes in %)."""
        df = self.to_pandas("summary")
        doses = len(set(df["copies"])) > 1 if len(df) else False   # a copies column only for several doses
        rows = []
        for r in df.itertuples():
            guard = ["-", "-"] if np.isnan(r.guard_value) else \
                [f"{r.guard_value:.4f}", f"{100 * r.guard_relative_change:+.1f}%"]
            rows.append([r.group, r.task, r.target, r.metric, *([str(r.copies)] if doses else []),
                         f"{r.baseline:.4f}", f"{r.value:.4f}",
                         f"{100 * r.relative_change:+.1f}%", _worst_cell(r.worst_relative_change, r.worst_token),
                         *guard])
        return markdown_table(["group", "task", "target", "metric", *(["copies"] if doses else []), "baseline",
                               "with tokens", "change", "worst", "guard on", "change, guard on"], rows)

    def summary(self) -> str:
        p = self.params
        lines = [f"# Downstream impact: {self.model}", "",
                 f"{sum(t['group'] != 'control' for t in self.tokens)} analysed and "
                 f"{sum(t['group'] == 'control' for t in self.tokens)} control tokens{controls_said(p)}, "
                 f"{copies_said(p['copies'])} copies inserted "
                 f"at random word positions, seed {p['seed']}; guard: {p['guard'] or 'off'}.", ""]
        for task, b in self.baselines.items():
            lines.append(f"- {task} ({p.get(task + '_data', '')}): clean baseline " +
                         ", ".join(f"{m} {v:.4f}" for m, v in b.items()))
        lines += ["", self.table(), ""]
        if self.hijack:
            hs = self.to_pandas("hijack_summary")
            lines += ["## Retrieval hijack", "",
                      f"Copies needed to bring an irrelevant document into a query's top 10 (cap {p['max_copies']}).", "",
                      markdown_table(["group", "token x query pairs", "hijacked within cap", "median copies (hijacked)",
                                      "hijacked, guard on"],
                                     [[r.group, r.pairs, f"{100 * r.hijacked:.1f}%",
                                       "-" if np.isnan(r.median_copies) else f"{r.median_copies:g}",
                                       f"{100 * r.guard_hijacked:.1f}%"] for r in hs.itertuples()])]
            lines.append("")
        lines += [f"- note: {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    # ---- figures -----------------------------------------------------------------------------
    def plot(self, folder: str | None = None, kind: str = "assess"):
        """'assess': bar chart of each metric's relative change; 'hijack': the share of (token,
        query) pairs hijacked by at most c copies.  With ``folder``, both are saved (PNG + PDF)
        and a dict of paths is returned."""
        return draw_or_save(assess_figures(self), folder, kind)

    def to_json(self) -> dict[str, Any]:
        """What assess.json holds and ``assess --json`` prints: the parameters, the clean
        baselines, the tokens, the summary rows (``to_pandas("summary")``) and the hijack
        summary; NaN is null."""
        return json_ready({
            "model": self.model, "params": self.params, "baselines": self.baselines, "tokens": self.tokens,
            "notes": self.notes, "stand_ins": any(t["group"] == "candidate" for t in self.tokens),
            "summary": self.to_pandas("summary").to_dict("records"),
            "hijack_summary": self.to_pandas("hijack_summary").to_dict("records") if self.hijack else []})

    # ---- files -------------------------------------------------------------------------------
    def save(self, folder: str) -> dict[str, Any]:
        """Write assess.csv (summary), assess_tokens.csv, hijack.csv, summary.md, assess.json
        and the figures (PNG + PDF) into ``folder``; returns the paths."""
        use_agg()

        check_output_folder(folder, hint="give another folder")
        os.makedirs(folder, exist_ok=True)
        paths = {"summary": os.path.join(folder, "assess.csv"), "tokens": os.path.join(folder, "assess_tokens.csv"),
                 "hijack": os.path.join(folder, "hijack.csv"), "summary_md": os.path.join(folder, "summary.md")}
        atomic_write(paths["summary"], self.to_pandas("summary").to_csv(index=False))
        atomic_write(paths["tokens"], self.to_pandas("tokens").to_csv(index=False))
        atomic_write(paths["hijack"], self.to_pandas("hijack").to_csv(index=False))
        atomic_write(paths["summary_md"], self.summary())
        atomic_write(os.path.join(folder, "assess.json"), json.dumps(self.to_json(), indent=1, ensure_ascii=False))
        paths["figures"] = self.plot(folder)
        self.output = os.path.abspath(folder)
        return paths


def _worst_cell(change: float, token) -> str:
    """'-44.2% ('ᅥ')': a group's worst change and the token that gave it."""
    return f"{100 * change:+.1f}%" + (f" ({token!r})" if isinstance(token, str) else "")


def _rel(v: float, base: float) -> float:
    return (v - base) / base if base else float("nan")


# ---- the assessment ---------------------------------------------------------------------------
def copies_said(copies) -> str:
    """'4', or '1, 4 and 16' for several doses."""
    many = [str(c) for c in (copies if isinstance(copies, (list, tuple)) else [copies])]
    return many[0] if len(many) == 1 else f"{', '.join(many[:-1])} and {many[-1]}"


def copies_list(copies) -> tuple[int, ...]:
    """The doses ``assess`` inserts: one whole number, or several (ascending, each once)."""
    many = copies if isinstance(copies, (list, tuple)) else [copies]
    if not many:
        raise InputError("copies must be a whole number or a list of them, got none")
    for c in many:
        check_int("copies", c, 1)
    return tuple(sorted({int(c) for c in many}))


def assess(result_or_model=None, *, tokens=None, controls=None, n_tokens: int | None = None, copies=4,
           targets: Sequence[str] = TARGETS, retrieval="builtin", clustering="builtin",
           max_queries: int | None = None, max_docs: int | None = None, max_texts: int | None = None,
           hijack: bool = True, hijack_queries: int = 20, max_copies: int = 16, guard: str | None = "remove",
           seed: int | None = None, batch_size: int = 64, model=None, device: str | None = None,
           output: str | None = None, show_progress_bar: bool | None = None,
           control_draw: str = "lowest") -> Assessment:
    """Measure retrieval, clustering and hijack with the run's sticky tokens and control tokens
    inserted, with and without the guard.  ``copies``: copies inserted into each text, or a
    list of doses (e.g. ``[1, 4, 16]``), each measured (the same seeded positions: a larger
    dose holds a smaller one's copies and more).

    ``result_or_model``: a DetectionResult or run folder (tokens: its sticky tokens, at most
    ``n_tokens``, and as many controls), or a model with explicit ``tokens`` (and ``controls``).
    ``retrieval`` / ``clustering``: 'builtin', a BEIR folder / labelled CSV, 'mteb:TASK', a
    RetrievalData / ClusteringData, or None to skip.  ``max_queries``, ``max_docs`` and
    ``max_texts`` take seeded subsets (for speed).  ``guard``: 'remove', 'mask' or None.
    ``output`` defaults to RUN/assess for a run; ``output=False`` writes nothing.
    """
    from tqdm.auto import tqdm

    doses = copies_list(copies)
    if max_copies < 1:
        raise InputError(f"max_copies must be at least 1, got {max_copies}")
    targets = tuple(targets)
    if not targets or any(t not in TARGETS for t in targets):
        raise InputError(f"targets must be some of {', '.join(TARGETS)}, got {', '.join(map(str, targets)) or 'none'}")
    if guard not in (None, "remove", "mask"):
        raise InputError(f"guard must be 'remove', 'mask' or None, got {guard!r}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    for name, value in (("max_queries", max_queries), ("max_docs", max_docs), ("max_texts", max_texts)):
        if value is not None:
            check_int(name, value, 2 if name == "max_texts" else 1)   # (clustering needs two texts)
    check_int("hijack_queries", hijack_queries, 0)

    sel = analysis_inputs(result_or_model, tokens=tokens, controls=controls, n_tokens=n_tokens, seed=seed,
                          model=model, device=device, subdir="assess", verb="assess", control_draw=control_draw)
    st, name, seed, ids, texts, groups, notes = sel.model, sel.name, sel.seed, sel.ids, sel.texts, sel.groups, sel.notes
    if output is None:
        output = sel.output
    if output:
        check_output_folder(output)   # (before the model work, not after it)
    if sel.result is not None and sel.result.sticky_tokens:
        guard_tokens = list(sel.result.sticky_tokens)
    else:
        guard_tokens = [t for t, g in zip(ids, groups) if g != "control"]
        if guard and "candidate" in groups:
            notes = notes + ["the guard removes the stand-ins themselves, so its 'guard on' values say nothing "
                             "about sticky tokens: guard effect not measured"]
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
    params = {"seed": seed, "copies": doses[0] if len(doses) == 1 else list(doses), "targets": list(targets),
              "max_copies": max_copies,
              "hijack_queries": hijack_queries if (hijack and rdata is not None) else 0, "guard": guard,
              "batch_size": batch_size, "controls": sel.controls,
              "insertion": "text; random word positions, cumulative, seeded by "
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

    cut = _CutCopies(st)

    def inserted(clean_texts, text, tid, role, n):
        out = []
        for i, clean in enumerate(clean_texts):
            words, marks, _ = _insert_words(clean, text, n, _rng(seed, tid, i, role))
            cut.add(role, clean, words, marks)
            out.append(" ".join(words))
        return out

    rows: list[dict[str, Any]] = []
    hij_rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(ids), desc="assess", unit="token", disable=not progress_enabled(show_progress_bar),
               dynamic_ncols=True)
    for tid, text, grp in zip(ids, texts, groups):
        def add(task, target, metric, n, value, gvalue):
            base = baselines[task][metric]
            gbase = guard_baselines.get(task, {}).get(metric, float("nan"))
            rows.append({"group": grp, "token_id": int(tid), "token": text, "task": task, "target": target,
                         "metric": metric, "copies": n, "baseline": base, "value": value,
                         "relative_change": _rel(value, base), "guard_baseline": gbase, "guard_value": gvalue,
                         "guard_relative_change": _rel(gvalue, base)})

        for n in doses if rdata is not None else ():
            q_ins = inserted(qtexts, text, tid, "query", n) if {"queries", "both"} & set(targets) else []
            d_ins = inserted(dtexts, text, tid, "document", n) if {"documents", "both"} & set(targets) else []
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
                    add("retrieval", target, metric, n, m[metric], gm[metric])
        if rdata is not None:
            for qi, dj, thr in hij_pairs:
                words, marks, variants = _insert_words(dtexts[dj], text, max_copies, _rng(seed, tid, dj, "hijack"),
                                                       cumulative=True)
                cut.add("hijack", dtexts[dj], words, marks)
                s = plain(variants).astype(np.float64) @ Q[qi].astype(np.float64)
                need = next((c + 1 for c, v in enumerate(s) if v > thr), None)
                gneed = None
                if guarded is not None:
                    gs = guarded(variants).astype(np.float64) @ GQ[qi].astype(np.float64)
                    gneed = next((c + 1 for c, v in enumerate(gs) if v > gkth[qi]), None)
                hij_rows.append({"group": grp, "token_id": int(tid), "token": text, "query_id": qids[qi],
                                 "doc_id": dids[dj], "copies_needed": need, "guard_copies_needed": gneed})
        for n in doses if cdata is not None else ():
            c_ins = inserted(cdata.texts, text, tid, "clustering", n)
            v = clustering_v_measure(plain(c_ins), cdata.labels, seed)
            gv = clustering_v_measure(guarded(c_ins), cdata.labels, seed) if guarded is not None else float("nan")
            add("clustering", "texts", "v_measure", n, v, gv)
        # keep only the clean texts' embeddings between tokens
        plain.trim(clean_plain)
        if guarded is not None:
            guarded.trim(clean_guard)
        bar.update(1)
    bar.close()

    params["copies_cut"] = cut.counts
    for n in cut.notes():
        logger.warning("warning: %s", n)
        notes = [*notes, n]
    a = Assessment(model=name, params=params, baselines=baselines, rows=rows, hijack=hij_rows,
                   tokens=[{"id": int(i), "text": t, "group": g} for i, t, g in zip(ids, texts, groups)], notes=notes)
    if guard_baselines:
        a.params["guard_baselines"] = guard_baselines
    if output:
        a.save(output)
    return a


class _CallableModule(types.ModuleType):
    """``stickytoken.assess`` is this module (``stickytoken.assess.insert_copies``, ``from
    stickytoken import assess as A``) and, called, its ``assess``: ``stickytoken.assess(run)``
    does what ``stickytoken.assess.assess(run)`` does (it was "'module' object is not callable")."""

    def __call__(self, *args, **kwargs) -> Assessment:
        return assess(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
