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
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from .compare import _same_vocabulary, _vocab, differing_parameters, load_run
from .errors import InputError, check_output_folder
from .results import DetectionResult, atomic_write
from .runfolder import slug
from .tables import json_ready

logger = logging.getLogger(__name__)

# what a run says of a token, strongest first
STATUS_WORDS = ("sticky", "candidate", "scored", "not scored")
PER_RUN = ("statuses", "scores", "clears", "verifications", "confidences")   # AgreedToken's lists, one entry a run


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
    # with agreement(check=True): every run's verification of the token against its own fence
    clears_in: int | None = None         # runs whose fence its cosine verification value clears
    clears: list[bool] | None = None     # per run
    verifications: list[float] | None = None   # per run, the cosine verification value
    confidences: list[float | None] | None = None   # per run, P(sticky) from that run's bootstrap
    checked_confidence: float | None = None   # their mean over the runs that give one


@dataclass
class Agreement:
    """Runs of one model and, for each token sticky in at least one of them, in how many."""

    runs: list[DetectionResult] = field(repr=False)
    tokens: list[AgreedToken]
    vocabulary_note: str
    differing: list[str]                 # the parameters that are not the same in every run
    notes: list[str] = field(default_factory=list)
    checked: bool = False                # every token verified against every run (check=True)

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

    def clearing_at_least(self, k: int) -> list[AgreedToken]:
        """Tokens whose verification clears the fence of at least ``k`` of the runs (needs
        ``check=True``)."""
        if not self.checked:
            raise InputError("fences cleared are known only when every token was checked against every run "
                             "(agreement(runs, check=True), agreement --check)")
        return [t for t in self.tokens if t.clears_in >= k]

    def __repr__(self) -> str:
        checked = f", clearing_all={len(self.clearing_at_least(self.n_runs))}" if self.checked else ""
        return (f"Agreement(runs={self.n_runs}, sticky_in_any={len(self.tokens)}, "
                f"sticky_in_all={len(self.sticky_in_all)}{checked}, differing={self.differing})")

    def to_pandas(self):
        """One row per token: id, token, text, sticky_in, candidate_in, scored_in,
        mean_confidence and a status column per run (run1, run2, ...); checked, also
        clears_in and each run's verification value, fence cleared and P(sticky)."""
        import pandas as pd

        rows = []
        for t in self.tokens:
            row = {k: v for k, v in asdict(t).items() if k not in PER_RUN}
            row.update({f"run{i + 1}": s for i, s in enumerate(t.statuses)})
            if self.checked:
                for i in range(self.n_runs):
                    row[f"run{i + 1}_verification"] = t.verifications[i]
                    row[f"run{i + 1}_clears"] = t.clears[i]
                    row[f"run{i + 1}_p_sticky"] = t.confidences[i]
            else:
                del row["clears_in"], row["checked_confidence"]
            rows.append(row)
        return pd.DataFrame(rows)

    def to_json(self) -> dict[str, Any]:
        return json_ready({
            "runs": [{"run_dir": r.run_dir, "model": r.model, "n_scored": int(len(r.scored_ids)),
                      "n_candidates": len(r.candidates), "n_sticky": len(r.sticky_tokens), "params": r.params}
                     for r in self.runs],
            "vocabulary": self.vocabulary_note, "differing_parameters": self.differing,
            "sticky_in_all": len(self.sticky_in_all), "checked": self.checked,
            "clearing_all": len(self.clearing_at_least(self.n_runs)) if self.checked else None, "notes": self.notes,
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
        if self.checked:
            text += (f". Verified against every run, {len(self.clearing_at_least(n))} clear "
                     + ("both fences" if n == 2 else f"all {n} fences")
                     + (f", {len(self.clearing_at_least(n // 2 + 1))} a majority" if n > 2 else ""))
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
        if self.tokens and self.checked:
            fences = ", ".join(f"run {i + 1} " + ("none" if r.fence is None else f"{r.fence:.4f}")
                               for i, r in enumerate(self.runs))
            blocks.append(("p", f"Each token verified against each run, on that run's verification pairs (cosine "
                                f"verification value, and P(sticky) from that run's bootstrap; fences: {fences}). "
                                "A value marked * clears that run's fence; mean P(sticky) is over the runs that "
                                "give one."))
            header = ["token", "id", "clears", "mean P(sticky)", *[f"run {i + 1}" for i in range(n)]]
            rows = [[repr(t.text), t.id, f"{t.clears_in} of {n}",
                     "-" if t.checked_confidence is None else f"{t.checked_confidence:.3f}",
                     *[f"{v:.4f}{'*' if c else ''}" + ("" if p is None else f" (P {p:.2f})")
                       for v, c, p in zip(t.verifications, t.clears, t.confidences)]]
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


def agreement(runs: Sequence[Any], *, check: bool = False, check_output: str | os.PathLike | None = None,
              model: Any = None, device: str | None = None, batch_size: int | None = None,
              show_progress_bar: bool | None = None) -> Agreement:
    """Runs of one model (folders or DetectionResults; two or more, one vocabulary) and, for
    every token sticky in at least one of them, in how many it is sticky, shortlisted and
    scored: sticky in the largest share of the runs that scored it first, then in the most runs,
    then by mean P(sticky).

    With ``check=True``, every one of those tokens is also verified against every run's fence,
    on that run's verification pairs (``stickytoken.check`` for the tokens a run did not
    verify itself; its candidates' values are read from the run): the tokens that clear the
    most fences come first.  ``check_output``: a folder for those checks (``check-<run folder's
    name>``, one per run, resumable in any order of the runs; default temporary folders);
    ``model``, ``device``, ``batch_size`` and ``show_progress_bar`` go to ``check`` (``model``:
    the runs' model when it has moved)."""
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
    if check:
        _check_every_run(results, cands, tokens, check_output, notes, model=model, device=device,
                         batch_size=batch_size, show_progress_bar=show_progress_bar)
    # (checked: clearing the most fences first); sticky in the largest share of the runs that scored
    # it, then in the most runs
    tokens.sort(key=lambda t: (-(t.clears_in or 0), -t.sticky_in / t.scored_in, -t.sticky_in,
                               -t.candidate_in / t.scored_in,
                               -(t.mean_confidence if t.mean_confidence is not None else -1.0),
                               -max((s for s in t.scores if s is not None), default=-np.inf), t.id))
    return Agreement(runs=results, tokens=tokens, vocabulary_note=note, differing=differing, notes=notes,
                     checked=bool(check))


def check_folders(check_output: str, run_dirs: Sequence[str | None]) -> list[str]:
    """The folder each run's check is kept in: ``check-<run folder's name>``, so that a rerun
    with the runs in another order finds its own (``-2``, ``-3``, ... after a name two runs
    share); a folder of the earlier naming by position (``check-runK``) where it is the only
    one there."""
    out, seen = [], {}
    for k, run_dir in enumerate(run_dirs, 1):
        name = f"check-{slug(os.path.normpath(run_dir or f'run{k}'))}"
        seen[name] = seen.get(name, 0) + 1
        folder = os.path.join(check_output, name if seen[name] == 1 else f"{name}-{seen[name]}")
        legacy = os.path.join(check_output, f"check-run{k}")
        out.append(legacy if not os.path.exists(folder) and os.path.isdir(legacy) else folder)
    return out


def _check_every_run(results: list[DetectionResult], cands: list[dict], tokens: list[AgreedToken],
                     check_output, notes: list[str], **check_kwargs) -> None:
    """Fills each token's ``clears``, ``verifications`` and ``confidences``: a run's candidates
    from the run itself, the other tokens verified by ``check`` against that run."""
    from .check import check as check_tokens

    folders = [None] * len(results)
    if check_output is not None:
        check_output_folder(check_output, hint="give another folder")
        folders = check_folders(os.fspath(check_output), [r.run_dir for r in results])
    for t in tokens:
        t.clears, t.verifications, t.confidences = [], [], []
    checked_here = 0
    for k, (r, cand) in enumerate(zip(results, cands), 1):
        if not r.run_dir:
            raise InputError(f"run {k} has no folder (detect(output=False)): checking tokens against a run reads its "
                             "pairs from its folder")
        todo = [t.id for t in tokens if t.id not in cand]
        values = {}
        if todo:
            logger.info("checking %d token(s) against run %d (%s); its %d candidate(s) among them are read from it",
                        len(todo), k, r.run_dir, len(tokens) - len(todo))
            res = check_tokens(ids=todo, run=r, output=folders[k - 1], **check_kwargs)
            values = {c.id: (c.verification, bool(c.clears_fence), c.confidence) for c in res.tokens}
            checked_here += len(todo)
            notes += [f"check against run {k}: {n}" for n in dict.fromkeys(res.notes)]
        for t in tokens:
            c = cand.get(t.id)
            v, clears, p = (c.verification, bool(r.fence is not None and c.verification > r.fence), c.confidence) \
                if c is not None else values[t.id]
            t.verifications.append(float(v))
            t.clears.append(clears)
            t.confidences.append(None if p is None else float(p))
    for t in tokens:
        t.clears_in = sum(t.clears)
        known = [p for p in t.confidences if p is not None]
        t.checked_confidence = float(np.mean(known)) if known else None
    n_pairs = sorted({len(r.verification_pairs) for r in results})
    notes.append(f"every token was verified against every run ({checked_here} token-run verification(s) computed by "
                 f"check, the others read from the runs' candidates), on each run's "
                 f"{' or '.join(str(n) for n in n_pairs)} verification pairs.")
