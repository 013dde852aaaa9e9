"""Two detection runs side by side: which sticky tokens they share and which only one has,
how well their sticky scores agree (Spearman rank correlation), their P(sticky) where they
have it, and which of their parameters differ.

Tokens are matched by id when both runs are of the same vocabulary (same size and, as far as
the runs record them, the same token texts), otherwise by the decoded text that was inserted
(then by that text without surrounding whitespace); a token whose text has no counterpart in
the other vocabulary cannot be matched and is counted apart.  The token texts come from the
run folder's ``tokens.jsonl`` (every vocabulary id); a result without it only knows its
candidates' texts.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import InputError, check_output_folder
from .results import DetectionResult
from .tables import json_ready

# parameters a run may not record (older runs, or not the non-default): the value it means
PARAM_DEFAULTS = {"insert_draws": 1, "audit": 0, "fast": False, "bootstrap": 0, "fast_settings": None,
                  "max_tokens": None, "sample_seed": None, "prompt": ""}
STATUSES = ("shared", "only_a", "only_b", "unmatched_a", "unmatched_b")
STATUS_LABELS = {"shared": "shared", "only_a": "only in A", "only_b": "only in B",
                 "unmatched_a": "A, not matched", "unmatched_b": "B, not matched"}


# ---- loading ---------------------------------------------------------------------------------
def load_run(run) -> DetectionResult:
    """A DetectionResult, or the result of a finished run folder; a clear error for a path
    that does not exist, a folder that holds no run, or an unfinished run."""
    if isinstance(run, DetectionResult):
        return run
    if not isinstance(run, (str, os.PathLike)):
        raise InputError(f"give a run folder or a DetectionResult to compare, got {type(run).__name__}")
    return DetectionResult.load(os.fspath(run))


@dataclass
class _Vocab:
    """What a run records of its vocabulary: texts (and raw tokens) by id; ``complete`` when
    every id 0..vocab_size-1 is known (tokens.jsonl)."""

    texts: dict[int, str]
    tokens: dict[int, str]
    complete: bool


def _vocab(result: DetectionResult) -> _Vocab:
    path = os.path.join(result.run_dir, "tokens.jsonl") if result.run_dir else None
    if path and os.path.isfile(path):
        texts, tokens = {}, {}
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    texts[int(row["id"])] = row.get("text", row.get("token", ""))
                    tokens[int(row["id"])] = row.get("token", "")
        return _Vocab(texts, tokens, len(texts) == result.vocab_size)
    return _Vocab({c.id: c.text for c in result.candidates}, {c.id: c.token for c in result.candidates}, False)


def _same_vocabulary(ra: DetectionResult, rb: DetectionResult, va: _Vocab, vb: _Vocab) -> tuple[bool, str]:
    """(same, how it was decided)."""
    if ra.vocab_size != rb.vocab_size:
        return False, f"vocabulary sizes differ ({ra.vocab_size} and {rb.vocab_size})"
    common = set(va.texts) & set(vb.texts)
    differ = sum(1 for i in common if va.texts[i] != vb.texts[i] or va.tokens.get(i) != vb.tokens.get(i))
    if differ:
        return False, f"same vocabulary size ({ra.vocab_size}) but {differ} of {len(common)} token ids hold other texts"
    if va.complete and vb.complete:
        return True, f"same vocabulary: {ra.vocab_size} ids with the same token texts"
    return True, (f"taken as the same vocabulary: same size ({ra.vocab_size}) and the {len(common)} token texts both "
                  "runs record agree (not every run folder records its whole vocabulary)")


def _match_by_text(va: _Vocab, vb: _Vocab) -> dict[int, int]:
    """A's id -> B's id, one to one: equal decoded texts first (ids with the same text paired
    in id order), then equal texts without surrounding whitespace among the ids left."""
    a2b: dict[int, int] = {}
    left_a, left_b = dict(va.texts), dict(vb.texts)
    for key in (lambda t: t, lambda t: t.strip()):
        by_a: dict[str, list[int]] = {}
        by_b: dict[str, list[int]] = {}
        for i, t in sorted(left_a.items()):
            if key(t):
                by_a.setdefault(key(t), []).append(i)
        for i, t in sorted(left_b.items()):
            if key(t):
                by_b.setdefault(key(t), []).append(i)
        for k, ids_a in by_a.items():
            for ia, ib in zip(ids_a, by_b.get(k, ())):
                a2b[ia] = ib
                left_a.pop(ia)
                left_b.pop(ib)
    return a2b


# ---- statistics ------------------------------------------------------------------------------
def rank_average(x) -> np.ndarray:
    """Ranks 1..n of ``x``, ties given their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    sx = x[order]
    bounds = np.flatnonzero(np.r_[True, sx[1:] != sx[:-1], True])
    avg = (bounds[:-1] + bounds[1:] - 1) / 2.0 + 1.0
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(avg, np.diff(bounds))
    return ranks


def spearman(a, b) -> float | None:
    """Spearman rank correlation (ties averaged); None for fewer than 2 values or a constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) != len(b):
        raise InputError(f"spearman needs two sequences of one length, got {len(a)} and {len(b)}")
    if len(a) < 2:
        return None
    ra, rb = rank_average(a) - (len(a) + 1) / 2.0, rank_average(b) - (len(b) + 1) / 2.0
    den = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return None if den == 0 else float((ra * rb).sum() / den)


# ---- the comparison --------------------------------------------------------------------------
@dataclass
class ComparedToken:
    """One sticky token of either run, with what each run says of it (None where a run did
    not score, verify or bootstrap it, or where it has no counterpart)."""

    status: str                      # shared, only_a, only_b, unmatched_a, unmatched_b
    text: str
    id_a: int | None
    id_b: int | None
    token_a: str | None = None
    token_b: str | None = None
    score_a: float | None = None
    score_b: float | None = None
    verification_a: float | None = None
    verification_b: float | None = None
    confidence_a: float | None = None
    confidence_b: float | None = None
    sticky_a: bool = False
    sticky_b: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _num(v) -> float | None:
    return None if v is None or (isinstance(v, float) and v != v) else v


@dataclass
class Comparison:
    """Run A against run B: shared / only-A / only-B sticky tokens, the Spearman correlation
    of their scores over the tokens both scored, and the parameters that differ."""

    a: DetectionResult
    b: DetectionResult
    same_vocabulary: bool
    vocabulary_note: str
    tokens: list[ComparedToken]
    differing_parameters: list[tuple[str, Any, Any]]
    spearman: float | None
    n_common_scored: int
    common_scores: np.ndarray = field(repr=False)       # float64 [n, 2]: A's and B's cosine sticky scores
    common_sticky: np.ndarray = field(repr=False)       # int8 [n]: 0 neither, 1 A only, 2 B only, 3 both
    common_texts: list[str] = field(repr=False, default_factory=list)
    notes: list[str] = field(default_factory=list)

    # ---- views ------------------------------------------------------------------------------
    def _with(self, status: str) -> list[ComparedToken]:
        return [t for t in self.tokens if t.status == status]

    @property
    def shared(self) -> list[ComparedToken]:
        return self._with("shared")

    @property
    def only_a(self) -> list[ComparedToken]:
        return self._with("only_a")

    @property
    def only_b(self) -> list[ComparedToken]:
        return self._with("only_b")

    @property
    def unmatched_a(self) -> list[ComparedToken]:
        """A's sticky tokens whose text has no counterpart in B's vocabulary."""
        return self._with("unmatched_a")

    @property
    def unmatched_b(self) -> list[ComparedToken]:
        return self._with("unmatched_b")

    @property
    def new_in_b(self) -> list[ComparedToken]:
        """B's sticky tokens A lacks: sticky only in B, or with no counterpart in A's vocabulary."""
        return self.only_b + self.unmatched_b

    @property
    def matched_by(self) -> str:
        return "id" if self.same_vocabulary else "text"

    @property
    def has_confidence(self) -> bool:
        return self.a.has_confidence or self.b.has_confidence

    def __repr__(self) -> str:
        rho = "n/a" if self.spearman is None else f"{self.spearman:.3f}"
        return (f"Comparison(a={self.a.model!r}, b={self.b.model!r}, shared={len(self.shared)}, "
                f"only_a={len(self.only_a)}, only_b={len(self.only_b)}, unmatched={len(self.unmatched_a)}+"
                f"{len(self.unmatched_b)}, spearman={rho} over {self.n_common_scored}, "
                f"differing_parameters={[d[0] for d in self.differing_parameters]})")

    # ---- output -----------------------------------------------------------------------------
    def _run_json(self, r: DetectionResult) -> dict:
        return {"run_dir": r.run_dir, "model": r.model, "vocab_size": r.vocab_size, "n_scored": int(len(r.scored_ids)),
                "n_candidates": len(r.candidates), "n_sticky": len(r.sticky_tokens),
                "mean_similarity": r.mean_similarity, "shortlist_threshold": r.shortlist_threshold, "fence": r.fence,
                "has_confidence": r.has_confidence, "params": r.params}

    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "run_a": self._run_json(self.a), "run_b": self._run_json(self.b),
            "same_vocabulary": self.same_vocabulary, "matched_by": self.matched_by,
            "vocabulary": self.vocabulary_note,
            "differing_parameters": [{"name": n, "a": va, "b": vb} for n, va, vb in self.differing_parameters],
            "counts": {s: len(self._with(s)) for s in STATUSES},
            "new_sticky_in_b": len(self.new_in_b),
            "spearman": {"rho": self.spearman, "n": self.n_common_scored},
            "notes": self.notes,
        }
        for s in STATUSES:
            out[s] = [t.to_dict() for t in self._with(s)]
        return json_ready(out)

    def blocks(self, figure: str | None = None) -> list[tuple]:
        """The comparison as report blocks (stickytoken.report's format); ``figure`` is the
        path of the saved score figure, included when given."""
        a, b = self.a, self.b
        conf = self.has_confidence
        blocks: list[tuple] = [("h1", f"Comparison: {a.model} (A) vs {b.model} (B)"),
                               ("p", f"A: {a.run_dir or '(not saved)'}. B: {b.run_dir or '(not saved)'}.")]
        header = ["", "A", "B"]
        rows = [["model", a.model, b.model], ["vocab_size", a.vocab_size, b.vocab_size],
                ["scored tokens", len(a.scored_ids), len(b.scored_ids)],
                ["verification candidates", len(a.candidates), len(b.candidates)],
                ["sticky tokens", len(a.sticky_tokens), len(b.sticky_tokens)],
                ["mean similarity", a.mean_similarity, b.mean_similarity],
                ["shortlist threshold", a.shortlist_threshold, b.shortlist_threshold],
                ["fence", a.fence, b.fence]]
        if conf:
            rows.append(["candidates with P(sticky) >= 0.9",
                         len(a.robust_sticky_tokens(0.9)) if a.has_confidence else None,
                         len(b.robust_sticky_tokens(0.9)) if b.has_confidence else None])
        blocks += [("h2", "Runs"), ("table", header, rows)]
        blocks.append(("h2", "Parameters that differ"))
        if self.differing_parameters:
            blocks.append(("table", ["parameter", "A", "B"],
                           [[n, _param_cell(va), _param_cell(vb)] for n, va, vb in self.differing_parameters]))
        else:
            blocks.append(("p", "None: the runs have the same parameters."))
        blocks.append(("h2", "Sticky tokens"))
        unmatched = ""
        if not self.same_vocabulary:
            unmatched = (f"; {len(self.unmatched_a)} of A's and {len(self.unmatched_b)} of B's sticky tokens could not "
                         "be matched (no token with their text in the other vocabulary)")
        blocks.append(("p", f"{len(self.shared)} shared, {len(self.only_a)} only in A, {len(self.only_b)} only in B"
                            f"{unmatched}. Matched by token {self.matched_by}: {self.vocabulary_note}."))
        if self.tokens:
            head = ["", "text", "id A", "id B", "score A", "score B", "verification A", "verification B"]
            if conf:
                head += ["P(sticky) A", "P(sticky) B"]
            body = []
            for t in self.tokens:
                row = [STATUS_LABELS[t.status], repr(t.text), t.id_a, t.id_b, t.score_a, t.score_b,
                       t.verification_a, t.verification_b]
                if conf:
                    row += [t.confidence_a, t.confidence_b]
                body.append(row)
            blocks.append(("table", head, body))
        else:
            blocks.append(("p", "Neither run found sticky tokens."))
        blocks.append(("h2", "Scores"))
        rho = "n/a" if self.spearman is None else f"{self.spearman:.4f}"
        blocks.append(("p", f"Spearman rank correlation of the cosine sticky scores over the {self.n_common_scored} "
                            f"tokens both runs scored: {rho}."))
        if figure is not None:
            blocks.append(("img", figure, "B's cosine sticky scores against A's over the tokens both runs scored, "
                                          "with each run's shortlist threshold (A: vertical, B: horizontal) and the "
                                          "sticky tokens highlighted."))
        for note in self.notes:
            blocks.append(("p", f"Note: {note}"))
        return blocks

    def summary(self) -> str:
        """The comparison as Markdown (without the figure)."""
        from .report import blocks_markdown

        return blocks_markdown(self.blocks())

    def plot(self, path: str | None = None):
        """B's scores against A's (scatter), thresholds and sticky tokens; the matplotlib
        Figure (saved to ``path`` if given)."""
        from .plotting import compare_figure, figure_path, use_agg

        if path is not None:
            path = figure_path(path)
            use_agg()
        fig = compare_figure(self)
        if path is not None:
            fig.savefig(path, dpi=120, bbox_inches="tight")
        return fig

    def save(self, output: str) -> dict[str, str]:
        """Write compare.md, compare.html (figure embedded) and compare.png into ``output``;
        returns {'markdown', 'html', 'figure'} paths."""
        from .plotting import pyplot, use_agg
        from .report import write_blocks

        check_output_folder(output, hint="give another folder")
        os.makedirs(output, exist_ok=True)
        use_agg()
        png = os.path.join(output, "compare.png")
        tmp = os.path.join(output, ".tmp-compare.png")
        fig = self.plot()
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
        pyplot().close(fig)
        os.replace(tmp, png)
        md, html = write_blocks(self.blocks(png), output, "compare",
                                f"Comparison: {self.a.model} (A) vs {self.b.model} (B)")
        return {"markdown": md, "html": html, "figure": png}


def _param_cell(v) -> str:
    return json.dumps(v, ensure_ascii=False, sort_keys=True) if isinstance(v, (dict, list)) else str(v)


def differing_parameters(a: DetectionResult, b: DetectionResult) -> list[tuple[str, Any, Any]]:
    """(name, A's value, B's value) for every parameter the runs set differently (a parameter
    a run does not record counts as its default), in A's order of parameters."""
    pa = {"model": a.model, **a.params}
    pb = {"model": b.model, **b.params}
    if a.sample_seed is not None and b.sample_seed is not None:   # (recorded only when not the run's seed)
        pa["sample_seed"], pb["sample_seed"] = a.sample_seed, b.sample_seed
    out = []
    for name in dict.fromkeys(list(pa) + list(pb)):
        va, vb = pa.get(name, PARAM_DEFAULTS.get(name)), pb.get(name, PARAM_DEFAULTS.get(name))
        if va != vb:
            out.append((name, va, vb))
    return out


def compare(run_a, run_b, output: str | os.PathLike | None = None) -> Comparison:
    """Compare two detection runs (run folders or DetectionResults): the sticky tokens they
    share and those only one has, the Spearman rank correlation of their sticky scores over
    the tokens both scored, P(sticky) side by side, and the parameters that differ.  With
    ``output``, compare.md, compare.html and compare.png are written there."""
    a, b = load_run(run_a), load_run(run_b)
    if output is not None:
        check_output_folder(output)
    va, vb = _vocab(a), _vocab(b)
    same, vocab_note = _same_vocabulary(a, b, va, vb)
    notes: list[str] = []
    for name, r, v in (("A", a, va), ("B", b, vb)):
        if not v.complete:
            notes.append(f"{name}'s run folder records no tokens.jsonl: only its {len(v.texts)} candidates' texts "
                         "are known" + ("." if same else ", so tokens are matched among those alone."))
    if same:
        a2b = None
    else:
        a2b = _match_by_text(va, vb)
    b2a = None if a2b is None else {ib: ia for ia, ib in a2b.items()}
    to_b = (lambda i: i) if a2b is None else a2b.get
    to_a = (lambda i: i) if b2a is None else b2a.get

    score_a = dict(zip(a.scored_ids.tolist(), a.scores[:, 0].tolist()))
    score_b = dict(zip(b.scored_ids.tolist(), b.scores[:, 0].tolist()))
    cand_a = {c.id: c for c in a.candidates}
    cand_b = {c.id: c for c in b.candidates}
    sticky_a = [c.id for c in a.sticky_tokens]
    sticky_b = [c.id for c in b.sticky_tokens]
    sticky_a_set, sticky_b_set = set(sticky_a), set(sticky_b)

    def entry(status: str, ia: int | None, ib: int | None) -> ComparedToken:
        ca, cb = cand_a.get(ia), cand_b.get(ib)
        text = ca.text if ca is not None else cb.text if cb is not None else \
            va.texts.get(ia, vb.texts.get(ib, ""))
        return ComparedToken(
            status=status, text=text, id_a=ia, id_b=ib,
            token_a=None if ia is None else (ca.token if ca is not None else va.tokens.get(ia)),
            token_b=None if ib is None else (cb.token if cb is not None else vb.tokens.get(ib)),
            score_a=_num(score_a.get(ia)), score_b=_num(score_b.get(ib)),
            verification_a=None if ca is None else _num(ca.verification),
            verification_b=None if cb is None else _num(cb.verification),
            confidence_a=None if ca is None else _num(ca.confidence),
            confidence_b=None if cb is None else _num(cb.confidence),
            sticky_a=ia in sticky_a_set, sticky_b=ib in sticky_b_set)

    tokens: list[ComparedToken] = []
    for ia in sticky_a:
        ib = to_b(ia)
        if ib is None:
            tokens.append(entry("unmatched_a", ia, None))
        else:
            tokens.append(entry("shared" if ib in sticky_b_set else "only_a", ia, ib))
    for ib in sticky_b:
        ia = to_a(ib)
        if ia is None:
            tokens.append(entry("unmatched_b", None, ib))
        elif ia not in sticky_a_set:
            tokens.append(entry("only_b", ia, ib))
    order = {s: k for k, s in enumerate(STATUSES)}
    best = lambda t: max((s for s in (t.score_a, t.score_b) if s is not None), default=-np.inf)  # noqa: E731
    tokens.sort(key=lambda t: (order[t.status], -best(t)))

    # scores over the tokens both runs scored
    pairs = [(ia, to_b(ia)) for ia in a.scored_ids.tolist()]
    pairs = [(ia, ib) for ia, ib in pairs if ib is not None and ib in score_b]
    common = np.array([[score_a[ia], score_b[ib]] for ia, ib in pairs], dtype=np.float64).reshape(-1, 2)
    flags = np.array([(ia in sticky_a_set) + 2 * (ib in sticky_b_set) for ia, ib in pairs], dtype=np.int8)
    texts = [cand_a[ia].text if ia in cand_a else va.texts.get(ia, str(ia)) for ia, _ in pairs]
    finite = np.isfinite(common).all(axis=1) if len(common) else np.zeros(0, bool)
    rho = spearman(common[finite, 0], common[finite, 1]) if finite.any() else None

    diff = differing_parameters(a, b)
    if diff:
        notes.append("the runs differ in " + ", ".join(d[0] for d in diff) + ": differences between their sticky "
                     "tokens can come from these parameters, not only from the models.")
    scored_a_only = len(a.scored_ids) - len(pairs)
    scored_b_only = len(b.scored_ids) - len(pairs)
    if scored_a_only or scored_b_only:
        why = "scored by one run only" + ("" if same else ", or without a counterpart in the other vocabulary")
        notes.append(f"both runs scored {len(pairs)} tokens; {scored_a_only} tokens scored by A and {scored_b_only} "
                     f"scored by B are not among them ({why}); a token one run did not score can be sticky in the "
                     "other only.")
    return_value = Comparison(a=a, b=b, same_vocabulary=same, vocabulary_note=vocab_note, tokens=tokens,
                              differing_parameters=diff, spearman=rho, n_common_scored=int(finite.sum()),
                              common_scores=common, common_sticky=flags, common_texts=texts, notes=notes)
    if output is not None:
        return_value.save(os.fspath(output))
    return return_value
