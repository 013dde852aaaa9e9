"""Several runs of one model side by side: which tokens are sticky in how many of them.

A run's sticky tokens depend on chance: most of all on the sentence pairs its seed draws, less
on the insert positions (README, "Stable mode and confidence").  Runs of one model that differ
in seed (or pairs, or insert draws) give the answer that does not hang on one draw: for every
token sticky in at least one run, in how many runs it is sticky, shortlisted and scored, and
its mean P(sticky).  ``report`` shows it for two runs or more; ``agreement(runs)`` returns it.
Tokens are matched by id, so the runs must share one vocabulary (``compare`` matches two runs
of different vocabularies by text).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from .compare import _same_vocabulary, _vocab, differing_parameters, load_run
from .errors import InputError, check_output_folder
from .results import DetectionResult, atomic_write
from .tables import json_ready

# what a run says of a token, strongest first
STATUS_WORDS = ("sticky", "candidate", "scored", "not scored")


@dataclass
class AgreedToken:
    """One token sticky in at least one run, with what every run says of it."""

    id: int
    token: str
    text: str
    sticky_in: int                       # runs in which it is sticky
    candidate_in: int                    # runs that shortlisted it (sticky or not)
    scored_in: int                       # runs that scored it
    mean_confidence: float | None        # mean P(sticky) over the runs that bootstrapped it
    statuses: list[str]                  # per run, one of STATUS_WORDS
    scores: list[float | None]           # per run, the cosine sticky score (None: not scored)


@dataclass
class Agreement:
    """Runs of one model and, for each token sticky in at least one of them, in how many."""

    runs: list[DetectionResult] = field(repr=False)
    tokens: list[AgreedToken]
    vocabulary_note: str
    differing: list[str]                 # the parameters that are not the same in every run
    notes: list[str] = field(default_factory=list)

    @property
    def n_runs(self) -> int:
        return len(self.runs)

    @property
    def sticky_wherever_scored(self) -> list[AgreedToken]:
        """Tokens sticky in every run that scored them (a run with ``--max-tokens`` may not
        have)."""
        return [t for t in self.tokens if t.sticky_in == t.scored_in]

    def sticky_in_at_least(self, k: int) -> list[AgreedToken]:
        """Tokens sticky in at least ``k`` of the runs."""
        return [t for t in self.tokens if t.sticky_in >= k]

    @property
    def sticky_in_all(self) -> list[AgreedToken]:
        return self.sticky_in_at_least(self.n_runs)

    def __repr__(self) -> str:
        return (f"Agreement(runs={self.n_runs}, sticky_in_any={len(self.tokens)}, "
                f"sticky_in_all={len(self.sticky_in_all)}, differing={self.differing})")

    def to_pandas(self):
        """One row per token: id, token, text, sticky_in, candidate_in, scored_in,
        mean_confidence and a status column per run (run1, run2, ...)."""
        import pandas as pd

        rows = []
        for t in self.tokens:
            row = {k: v for k, v in asdict(t).items() if k not in ("statuses", "scores")}
            row.update({f"run{i + 1}": s for i, s in enumerate(t.statuses)})
            rows.append(row)
        return pd.DataFrame(rows)

    def to_json(self) -> dict[str, Any]:
        return json_ready({
            "runs": [{"run_dir": r.run_dir, "model": r.model, "n_scored": int(len(r.scored_ids)),
                      "n_candidates": len(r.candidates), "n_sticky": len(r.sticky_tokens), "params": r.params}
                     for r in self.runs],
            "vocabulary": self.vocabulary_note, "differing_parameters": self.differing,
            "sticky_in_all": len(self.sticky_in_all), "notes": self.notes,
            "tokens": [asdict(t) for t in self.tokens]})

    def headline(self) -> str:
        n = self.n_runs
        counts = ", ".join(str(len(r.sticky_tokens)) for r in self.runs)
        text = (f"{len(self.tokens)} tokens are sticky in at least one of the {n} runs ({counts} per run), "
                f"{len(self.sticky_in_all)} in " + ("both" if n == 2 else f"all {n}"))
        if n > 2:
            text += f", {len(self.sticky_in_at_least(n // 2 + 1))} in a majority"
        if any(t.scored_in < n for t in self.tokens):
            text += f", {len(self.sticky_wherever_scored)} in every run that scored them"
        return text + (f"; the runs differ in {', '.join(self.differing)}." if self.differing
                       else "; the runs do not differ in any parameter.")

    def blocks(self) -> list[tuple]:
        """The agreement as report blocks (stickytoken.report's format)."""
        n = self.n_runs
        blocks: list[tuple] = [("h2", f"Sticky tokens across the {n} runs"), ("p", self.headline())]
        if self.tokens:
            header = ["token", "id", "sticky in", "shortlisted in", "scored in", "mean P(sticky)",
                      *[f"run {i + 1}" for i in range(n)]]
            rows = [[repr(t.text), t.id, f"{t.sticky_in} of {n}", f"{t.candidate_in} of {n}", f"{t.scored_in} of {n}",
                     "-" if t.mean_confidence is None else f"{t.mean_confidence:.3f}", *t.statuses]
                    for t in self.tokens]
            blocks.append(("table", header, rows))
        blocks += [("p", f"Note: {note}") for note in self.notes]
        return blocks

    def summary(self) -> str:
        """The agreement as Markdown."""
        from .report import blocks_markdown

        return blocks_markdown(self.blocks())

    def save(self, folder: str) -> dict[str, str]:
        """Write agreement.md, agreement.csv (one row per token) and agreement.json into
        ``folder``; returns their paths."""
        check_output_folder(folder, hint="give another folder")
        os.makedirs(folder, exist_ok=True)
        paths = {"markdown": os.path.join(folder, "agreement.md"), "csv": os.path.join(folder, "agreement.csv"),
                 "json": os.path.join(folder, "agreement.json")}
        atomic_write(paths["markdown"], self.summary())
        atomic_write(paths["csv"], self.to_pandas().to_csv(index=False))
        atomic_write(paths["json"], json.dumps(self.to_json(), indent=1, ensure_ascii=False))
        return paths


def check_distinct(results: Sequence[DetectionResult]) -> None:
    """Refuse a run given twice (the same folder, however spelled, or the same result): it would
    count each of its tokens twice."""
    seen: dict[Any, int] = {}
    for k, r in enumerate(results, 1):
        key = os.path.realpath(r.run_dir) if r.run_dir else id(r)
        if key in seen:
            raise InputError(f"run {k} is run {seen[key]} again ({r.run_dir or 'the same DetectionResult'}); "
                             "give each run once")
        seen[key] = k


def agreement(runs: Sequence[Any]) -> Agreement:
    """Runs of one model (folders or DetectionResults; two or more, one vocabulary) and, for
    every token sticky in at least one of them, in how many it is sticky, shortlisted and
    scored: sticky in the largest share of the runs that scored it first, then in the most runs,
    then by mean P(sticky)."""
    if isinstance(runs, (str, DetectionResult)) or not isinstance(runs, Sequence):
        raise InputError("give a list of two or more run folders (or DetectionResults)")
    results = [load_run(r) for r in runs]
    if len(results) < 2:
        raise InputError(f"agreement needs two or more runs, got {len(results)}")
    check_distinct(results)
    vocabs = [_vocab(r) for r in results]
    note = ""
    for k, (r, v) in enumerate(zip(results[1:], vocabs[1:]), 2):
        same, note_k = _same_vocabulary(results[0], r, vocabs[0], v)
        if not same:
            raise InputError(f"run {k} ({r.run_dir or r.model}) has another vocabulary than run 1: {note_k}; tokens "
                             "are matched by id here (compare matches two runs by text)")
        note = note if note and "taken as" in note else note_k
    differing = list(dict.fromkeys(name for r in results[1:] for name, _, _ in differing_parameters(results[0], r)))
    notes = []
    if "model" in differing:
        notes.append("the runs are of different models with one vocabulary: a token's counts mix the models.")
    if "sample_seed" in differing:
        notes.append("the runs score other samples of tokens (--max-tokens drawn with other seeds), so many tokens are "
                     "scored in only some of them; runs with the same --sample-seed score the same tokens.")
    if any(not r.has_confidence for r in results):
        notes.append("mean P(sticky) is over the runs that computed it (--bootstrap); some did not.")

    cands = [{c.id: c for c in r.candidates} for r in results]
    scores = [dict(zip(r.scored_ids.tolist(), r.scores[:, 0].tolist())) for r in results]
    ids = list(dict.fromkeys(c.id for r in results for c in r.sticky_tokens))
    tokens = []
    for tid in ids:
        statuses, conf, score = [], [], []
        for cand, sc in zip(cands, scores):
            c = cand.get(tid)
            statuses.append(STATUS_WORDS[0 if c is not None and c.sticky else 1 if c is not None
                                         else 2 if tid in sc else 3])
            if c is not None and c.confidence is not None:
                conf.append(c.confidence)
            score.append(sc.get(tid))
        first = next(c for c in (cand.get(tid) for cand in cands) if c is not None)
        tokens.append(AgreedToken(id=tid, token=first.token, text=first.text,
                                  sticky_in=statuses.count("sticky"),
                                  candidate_in=sum(s in ("sticky", "candidate") for s in statuses),
                                  scored_in=sum(s != "not scored" for s in statuses),
                                  mean_confidence=float(np.mean(conf)) if conf else None,
                                  statuses=statuses, scores=score))
    # sticky in the largest share of the runs that scored it, then in the most runs
    tokens.sort(key=lambda t: (-t.sticky_in / t.scored_in, -t.sticky_in, -t.candidate_in / t.scored_in,
                               -(t.mean_confidence if t.mean_confidence is not None else -1.0),
                               -max((s for s in t.scores if s is not None), default=-np.inf), t.id))
    return Agreement(runs=results, tokens=tokens, vocabulary_note=note, differing=differing, notes=notes)
