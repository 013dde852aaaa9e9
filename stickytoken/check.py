"""``stickytoken.check``: the detector's tests on tokens you name, in minutes.

For each token, the same sticky score and verification values ``detect`` computes (the same
pairs, parameters, seed and insert draws: insert positions depend only on the seed, the token
id and the pair, docs/algorithm.md §3), the reference's label, and, against a finished run of
the same model (``run=``), whether the token clears that run's fence and its P(sticky) from the
run's own bootstrap resamples (§6).  Without a run there is no fence: the label is the verdict
(``fail_at``).

With a run, everything comes from the run: its parameters, its mean similarity and its pairs
(so no corpus work is done), its model unless another copy of it is given, and what it recorded:
the sticky scores of the tokens it scored and the verification of its candidates
(``recompute=True`` computes them again, bit for bit the same).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from .api import (Corpus, Settings, check_pool, check_settings, mean_similarity_stage, pairs_stage, read_corpus,
                  score_with_terms, variant_stage, versions)
from .confidence import against_fences
from .encoder import Encoder, progress_enabled
from .errors import InputError
from .options import LABELS
from .models import load_model, model_name
from .results import DetectionResult, atomic_write
from .runfolder import OUTCOMES_FILE, RunFolder, load_outcomes
from .selection import finished_run, run_model
from .tables import markdown_table
from .verify import label as reference_label, per_pair_values, verification_with_outcomes
from .vocab import CATEGORY_NAMES, Vocabulary, build_vocabulary

logger = logging.getLogger(__name__)

PARAMETERS = ("sent_pair_num", "insert_num", "verification_sent_pair_num", "seed", "insertion", "insert_draws")
DEFAULTS = {"sent_pair_num": 5, "insert_num": 8, "verification_sent_pair_num": 250, "seed": 42, "insertion": "text",
            "insert_draws": 1}


@dataclass
class CheckedToken:
    """One checked token: detect's values for it, and its standing against a run."""

    id: int
    token: str
    text: str
    category: str
    score: float
    score_euclidean: float
    score_manhattan: float
    verification: float
    verification_euclidean: float
    verification_manhattan: float
    max_prob: float
    label: str
    clears_fence: bool | None = None     # cosine verification value strictly above the run's fence
    confidence: float | None = None      # P(sticky) from the run's bootstrap resamples
    shortlisted: bool | None = None      # at or above the run's shortlist threshold
    run_sticky: bool | None = None       # the run itself found it sticky (None: not one of its candidates)

    def reaches(self, label: str) -> bool:
        return LABELS.index(self.label) >= LABELS.index(label)


@dataclass
class CheckResult:
    """What ``check`` returns: the tokens' values, the parameters, and the run compared with."""

    model: str
    params: dict[str, Any]
    tokens: list[CheckedToken]
    mean_similarity: float
    run_dir: str | None = None
    fence: float | None = None
    shortlist_threshold: float | None = None
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    output: str | None = None

    @property
    def sticky(self) -> list[CheckedToken]:
        """Tokens that clear the run's fence (empty without a run)."""
        return [t for t in self.tokens if t.clears_fence]

    def gate(self, fail_if_sticky: bool = False, fail_at: str | None = None) -> list[CheckedToken]:
        """The tokens that fail the gate: clearing the run's fence (``fail_if_sticky``, needs a
        run) or reaching the label ``fail_at``."""
        if fail_at is not None and fail_at not in LABELS:
            raise InputError(f"fail_at must be one of {', '.join(LABELS)}, got {fail_at!r}")
        if fail_if_sticky and self.fence is None and fail_at is None:
            raise InputError("fail_if_sticky needs a run to take the fence from (--run RUN), or a label to fail at "
                             "(--fail-at weak_verified)")
        return [t for t in self.tokens if (fail_if_sticky and t.clears_fence) or (fail_at and t.reaches(fail_at))]

    def to_json(self) -> dict:
        return {"model": self.model, "params": self.params, "mean_similarity": self.mean_similarity,
                "run": self.run_dir, "fence": self.fence, "shortlist_threshold": self.shortlist_threshold,
                "notes": self.notes, "timings": self.timings, "tokens": [asdict(t) for t in self.tokens]}

    def summary(self) -> str:
        against = self.fence is not None
        head = ["token", "id", "category", "score (cos)", "verification (cos)", "max_prob", "label"]
        if against:
            head += ["clears fence", "P(sticky)", "run's verdict"]
        rows = []
        for t in self.tokens:
            row = [repr(t.token), t.id, t.category, f"{t.score:.4f}", f"{t.verification:.4f}", f"{t.max_prob:.4f}",
                   t.label]
            if against:
                verdict = "-" if t.run_sticky is None else ("sticky" if t.run_sticky else "candidate, not sticky")
                if t.run_sticky is None and t.shortlisted is False:
                    verdict = "not shortlisted"
                row += ["yes" if t.clears_fence else "no",
                        "-" if t.confidence is None else f"{t.confidence:.3f}", verdict]
            rows.append(row)
        lines = [f"# Check: {self.model}", "", markdown_table(head, rows), ""]
        p = self.params
        lines.append(f"- parameters: {p['sent_pair_num']} scoring pairs, {p['verification_sent_pair_num']} "
                     f"verification pairs, {p['insert_num']} insertions, seed {p['seed']}, insertion {p['insertion']}"
                     + (f", {p['insert_draws']} insert draws" if p.get("insert_draws", 1) > 1 else ""))
        lines.append(f"- mean similarity: {self.mean_similarity:.5f}")
        if against:
            lines.append(f"- against run {self.run_dir}: fence {self.fence:.6f} (sticky means a cosine verification "
                         f"value strictly above it), shortlist threshold {self.shortlist_threshold:.6f}")
        else:
            lines.append("- no run given: there is no fence, so only the reference's labels are shown (most "
                         "candidates of a real model are labelled weak_verified; the fence decides: pass --run RUN)")
        for note in self.notes:
            lines.append(f"- note: {note}")
        return "\n".join(lines) + "\n"

    def save(self, folder: str) -> None:
        """check.json, check.csv and summary.md."""
        atomic_write(os.path.join(folder, "check.json"), json.dumps(self.to_json(), indent=1, ensure_ascii=False))
        buf = io.StringIO()
        names = list(asdict(self.tokens[0])) if self.tokens else []
        w = csv.writer(buf)
        w.writerow(names)
        for t in self.tokens:
            w.writerow([getattr(t, n) for n in names])
        atomic_write(os.path.join(folder, "check.csv"), buf.getvalue())
        atomic_write(os.path.join(folder, "summary.md"), self.summary())


# ---- which tokens ----------------------------------------------------------------------------------
def resolve_tokens(vocab: Vocabulary, tokenizer, tokens: Sequence[str] | None = None,
                   ids: Sequence[int] | None = None) -> list[int]:
    """Vocabulary ids of the tokens named: a vocabulary entry as the tokenizer writes it
    ('##ing', '[SEP]', 'Ġthe'), or the decoded text of exactly one entry; or ids.  A string
    that is neither is refused with how it tokenizes (it is never split silently)."""
    out: list[int] = []
    by_token = {t: i for i, t in enumerate(vocab.tokens)}
    by_text: dict[str, list[int]] = {}
    for i, t in enumerate(vocab.texts):
        by_text.setdefault(t, []).append(i)
    bad = []
    for s in tokens or []:
        if not isinstance(s, str) or not s:
            raise InputError(f"tokens must be non-empty strings, got {s!r}")
        if s in by_token:
            out.append(by_token[s])
        elif len(by_text.get(s, [])) == 1:
            out.append(by_text[s][0])
        else:
            pieces = tokenizer.tokenize(s)
            bad.append(f"{s!r} (it tokenizes as {' '.join(repr(p) for p in pieces)})" if pieces else f"{s!r}")
    if bad:
        raise InputError(f"not one vocabulary token: {'; '.join(bad)}; name single vocabulary entries as the "
                         "tokenizer writes them, or give --ids")
    for i in ids or []:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise InputError(f"token ids must be whole numbers, got {i!r} ({type(i).__name__})")
        if not 0 <= int(i) < vocab.size:
            raise InputError(f"token id {i!r} is not in the vocabulary (0..{vocab.size - 1})")
        out.append(int(i))
    out = list(dict.fromkeys(out))
    if not out:
        raise InputError("no tokens to check: give tokens (--tokens, --tokens-file) or ids (--ids)")
    return out


# ---- the parameters --------------------------------------------------------------------------------
def _parameters(given: dict[str, Any], result: DetectionResult | None) -> dict[str, Any]:
    """The detector's parameters: the run's (a value given that differs is refused), or the
    values given over the paper's defaults."""
    if result is None:
        return {k: DEFAULTS[k] if given.get(k) is None else given[k] for k in PARAMETERS}
    theirs = {k: result.params.get(k, DEFAULTS[k]) for k in PARAMETERS}
    theirs["insert_draws"] = int(theirs["insert_draws"] or 1)
    differ = [f"{k}={given[k]!r} (the run has {theirs[k]!r})" for k in PARAMETERS
              if given.get(k) is not None and given[k] != theirs[k]]
    if differ:
        raise InputError("check against a run uses the run's parameters; these differ: " + ", ".join(differ)
                         + "; drop them or check without --run")
    return theirs


def _same_model(name: str, result: DetectionResult, vocab: Vocabulary, encoder: Encoder) -> str | None:
    """Refuse a run of another model: by vocabulary, and, where the names differ (a hub name
    and a folder of it, a model moved since the run), by how it embeds the run's pairs.  Returns
    a note when a model of another name is taken as the run's."""
    def norm(n: str) -> str:
        return os.path.abspath(n) if os.path.isdir(n) else n
    if vocab.size != result.vocab_size:
        raise InputError(f"the run {result.run_dir!r} is of {result.model!r} ({result.vocab_size} vocabulary "
                         f"entries), not of this model ({name!r}, {vocab.size} entries)")
    if norm(name) == norm(result.model):
        return None
    diff, n = _pairs_difference(result, encoder)
    tol = SAME_MODEL_TOLERANCE.get(str(encoder.dtype).replace("torch.", ""), SAME_MODEL_TOLERANCE["bfloat16"])
    if diff is None or diff > tol:
        seen = " (the run's pairs came with their similarities, so they cannot tell the models apart)" \
            if diff is None else f" (it embeds {n} of the run's pairs up to {diff:.2g} away from the run's similarities)"
        raise InputError(f"the run {result.run_dir!r} is of model {result.model!r}, not {name!r}{seen}; give that "
                         "run's model (or leave --model out to use it)")
    return (f"the run was made with {result.model!r}; {name!r} is taken as that model: it embeds {n} of the run's "
            f"pairs within {diff:.2g} of the similarities the run recorded")


# how far the similarities of a run's pairs may move and the model still be the run's: a device's
# or a library version's rounding, not another model's weights
SAME_MODEL_TOLERANCE = {"float32": 1e-3, "float64": 1e-3, "float16": 3e-2, "bfloat16": 3e-2}


def _pairs_difference(result: DetectionResult, encoder: Encoder, n: int = 16) -> tuple[float | None, int]:
    """(the largest difference between the similarities the run recorded for its first ``n``
    pool pairs and this model's, how many pairs), or (None, 0) without the run's pairs.json."""
    from .pairs import Pair, pool_from_pairs

    try:
        with open(os.path.join(result.run_dir or "", "pairs.json"), encoding="utf-8") as fh:
            data = json.load(fh)
        if data.get("similarities") == "given":   # a pairs file's, not the model's
            return None, 0
        pool = [Pair.from_dict(d) for d in data["pool"][:n]]
    except (OSError, ValueError, KeyError, TypeError):
        return None, 0
    if not pool:
        return None, 0
    now = pool_from_pairs([(p.reference, p.contrast) for p in pool], None, encoder)
    return float(max(abs(a.similarity - b.similarity) for a, b in zip(pool, now))), len(pool)


# ---- the check ---------------------------------------------------------------------------------------
def check(model: Any = None, tokens: Sequence[str] | str | None = None, *, ids: Sequence[int] | None = None,
          run: str | os.PathLike | DetectionResult | None = None, sent_pair_num: int | None = None,
          insert_num: int | None = None, verification_sent_pair_num: int | None = None, seed: int | None = None,
          insertion: str | None = None, insert_draws: int | None = None, sentences=None, pairs=None,
          prompt: str | None = None, prompt_name: str | None = None, device: str | None = None,
          dtype: str | None = None, batch_size: int | None = None, output: str | os.PathLike | None = None,
          show_progress_bar: bool | None = None, recompute: bool = False) -> CheckResult:
    """Run the detector's scoring and verification on the tokens named.

    Args:
        model: a SentenceTransformer, folder or hub name; default the run's model, else the
            bundled all-MiniLM-L6-v2.  Never changed (see ``load_model``).
        tokens: vocabulary entries as the tokenizer writes them ('##ing', '[SEP]'), or the
            decoded text of exactly one entry; a string that is not one entry is refused.
        ids: vocabulary ids, in addition to ``tokens``.
        run: a finished ``detect`` run folder (or its DetectionResult) of the same model:
            its parameters, mean similarity and pairs are used, and each token is judged
            against its fence, with its P(sticky) from the run's bootstrap.
        sent_pair_num, insert_num, verification_sent_pair_num, seed, insertion, insert_draws:
            as in ``detect`` (with a run: its values; others are refused).
        sentences, pairs, prompt, prompt_name: the corpus and prompt, as in ``detect`` (not
            with a run: the run's are used).
        output: a folder for check.json, check.csv, summary.md and the stage caches (default:
            a temporary folder, removed afterwards).
        recompute: with a run, compute again what the run recorded: the sticky scores of the
            tokens it scored and the verification of its candidates, each within the chunk of
            tokens the run computed it in, so bit for bit the run's values.  By default they
            are read from the run: the same values, and a token's scoring chunk costs the work
            of about 68 tokens on a CPU.
    Returns:
        A :class:`CheckResult`.
    """
    t0 = time.perf_counter()
    if isinstance(tokens, str):
        tokens = [tokens]
    if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
        ids = [ids]
    if not tokens and not ids:
        raise InputError("no tokens to check: give tokens (--tokens, --tokens-file) or ids (--ids)")
    result = None
    if recompute and run is None:
        raise InputError("recompute computes again the values a run recorded; give the run (--run RUN)")
    if run is not None:
        result = run if isinstance(run, DetectionResult) else finished_run(os.fspath(run))
        if not result.run_dir:
            raise InputError("check against a run reads the run's folder (its pairs and parts), and this result has "
                             "none (detect(output=False)); run detect with an output folder")
        if sentences is not None or pairs is not None:
            raise InputError("check against a run uses the run's pairs; drop sentences/pairs or drop the run")
        if prompt is not None or prompt_name is not None:
            raise InputError("check against a run uses the run's prompt; drop prompt/prompt_name")
        if dtype is None:
            dtype = result.params.get("dtype")
        prompt = result.params.get("prompt", "")
    given = dict(sent_pair_num=sent_pair_num, insert_num=insert_num,
                 verification_sent_pair_num=verification_sent_pair_num, seed=seed, insertion=insertion,
                 insert_draws=insert_draws)
    params = _parameters(given, result)
    settings = check_settings(**{k: params[k] for k in PARAMETERS})
    corpus = None
    if result is None:
        corpus = read_corpus(sentences, pairs)
        check_pool(settings, corpus)

    show = progress_enabled(show_progress_bar)
    st = load_model(model, device=device, dtype=dtype) if model is not None or result is None else \
        run_model(result, device=device, dtype=dtype)
    name = model_name(model) if model is not None else (result.model if result is not None else model_name(st))
    encoder = Encoder(st, batch_size=batch_size, show_progress_bar=show, prompt=prompt, prompt_name=prompt_name)
    try:
        encoder.start_workers()   # they start while the first stages run
        vocab = build_vocabulary(encoder.tokenizer)
        same_note = _same_model(name, result, vocab, encoder) if result is not None else None
        token_ids = resolve_tokens(vocab, encoder.tokenizer, tokens, ids)

        temp = None
        if output is None:
            temp = tempfile.TemporaryDirectory(prefix="stickytoken-check-")
            folder = os.path.join(temp.name, "check")
        else:
            folder = os.fspath(output)
        try:
            checked, mean_sim, notes, t_run, folder_run = _run(folder, encoder, name, settings, corpus, result,
                                                               vocab, token_ids, show, recompute)
            if same_note:
                notes.insert(0, same_note)
        finally:
            if temp is not None:
                temp.cleanup()
        out = CheckResult(model=name, params={**params, "dtype": str(encoder.dtype).replace("torch.", "")},
                          tokens=checked, mean_similarity=mean_sim,
                          run_dir=None if result is None else result.run_dir,
                          fence=None if result is None else result.fence,
                          shortlist_threshold=None if result is None else result.shortlist_threshold, notes=notes,
                          timings={**t_run, "total_this_session": round(time.perf_counter() - t0, 3)},
                          output=None if output is None else os.path.abspath(folder))
        try:
            if output is not None:
                out.save(folder)
                folder_run.run["status"] = "complete"   # (a rerun reads its stages back from the parts)
                folder_run.save_run()
        finally:
            folder_run.release()
        return out
    finally:
        encoder.close()   # the workers, if any, stop here whatever happened


def _run(folder: str, encoder: Encoder, name: str, settings: Settings, corpus: Corpus | None,
         result: DetectionResult | None, vocab: Vocabulary, token_ids: list[int], show: bool, recompute: bool):
    """The stages on a check folder: (checked tokens, mean similarity, notes, timings, the folder)."""
    identity = {"check": True, "model": name, **{k: getattr(settings, k) for k in PARAMETERS},
                "dtype": str(encoder.dtype).replace("torch.", ""), "prompt": encoder.prompt,
                "source": (f"run:{result.run_dir}" if result is not None else corpus.fingerprint), "ids": token_ids}
    folder_run = RunFolder(folder, identity, {"versions": versions(), **encoder.describe()})
    folder_run.claim()   # (released by check() once the results are written, or here on a failure)
    try:
        return (*_stages(folder_run, encoder, settings, corpus, result, vocab, token_ids, show, recompute), folder_run)
    except BaseException:
        folder_run.release()
        raise


def _stages(folder_run: RunFolder, encoder: Encoder, settings: Settings, corpus: Corpus | None,
            result: DetectionResult | None, vocab: Vocabulary, token_ids: list[int], show: bool, recompute: bool):
    """``_run``'s stages on its claimed folder: (checked tokens, mean similarity, notes, timings)."""
    folder_run.clean_temporaries()
    lost = []   # the run's caches it was copied without: computed again here, then held to what it recorded
    if result is not None:   # the run's mean similarity and pairs, as the run folder holds them
        for fname in RUN_CACHES:
            src = os.path.join(result.run_dir, fname)
            if folder_run.load_json(fname) is not None:
                continue
            if not os.path.isfile(src):
                lost.append(fname)
                continue
            with open(src, encoding="utf-8") as fh:
                folder_run.save_json(fname, json.load(fh))
        if "pairs.json" in lost:
            corpus = _run_corpus(result)
    mean_sim = mean_similarity_stage(folder_run, encoder, vocab)
    scoring, verifying, notes = pairs_stage(folder_run, encoder, corpus, settings, mean_sim)
    if lost:
        notes.insert(0, _as_recorded(result, folder_run, lost, mean_sim, scoring, verifying))
    ids = np.asarray(token_ids, dtype=np.int64)
    score_order = verify_order = None
    if result is not None and not result.params.get("fast"):
        folder_run.run["chunk_rows"] = int(RunFolder.existing(result.run_dir).run["chunk_rows"])   # cut the same way
        folder_run.save_run()
        score_order = result.scored_ids
        verify_order = np.asarray([c.id for c in result.candidates], dtype=np.int64)
    by_cand = {} if result is None else {c.id: c for c in result.candidates}
    t = time.perf_counter()
    scores = np.full((len(ids), 3), np.nan)
    read = np.zeros(len(ids), dtype=bool)
    if score_order is not None and not recompute:   # the run's own scores, where it scored the token
        pos = {int(tid): k for k, tid in enumerate(result.scored_ids.tolist())}
        read = np.array([int(tid) in pos for tid in ids.tolist()], dtype=bool)
        scores[read] = result.scores[[pos[int(tid)] for tid in ids[read].tolist()]]
    if not read.all():
        scores[~read], _ = _values(folder_run, "score", encoder, vocab, ids[~read], score_order, scoring, settings,
                                   settings.seed, show, score_with_terms, "scoring")
    t_score = time.perf_counter() - t
    t = time.perf_counter()
    values = np.full((len(ids), 3), np.nan)
    confidence = np.full(len(ids), np.nan)
    read = np.zeros(len(ids), dtype=bool)
    if verify_order is not None and not recompute:   # the run's own verification, where the token is its candidate
        read = np.array([int(tid) in by_cand for tid in ids.tolist()], dtype=bool)
        for k in np.flatnonzero(read).tolist():
            c = by_cand[int(ids[k])]
            values[k] = (c.verification, c.verification_euclidean, c.verification_manhattan)
            confidence[k] = np.nan if c.confidence is None else c.confidence
    if not read.all():
        values[~read], per_pair = _values(folder_run, "verify", encoder, vocab, ids[~read], verify_order, verifying,
                                          settings, settings.seed + 1, show, verification_with_outcomes,
                                          "verification")
        if result is not None:
            computed = _run_confidence(result, per_pair, settings.seed, notes)
            confidence[~read] = np.nan if computed is None else computed
    t_verify = time.perf_counter() - t

    checked = []
    for k, tid in enumerate(ids.tolist()):
        s, v = scores[k], values[k]
        max_prob = float(v.max())
        c = CheckedToken(id=tid, token=vocab.tokens[tid], text=vocab.texts[tid],
                         category=CATEGORY_NAMES[int(vocab.categories[tid])], score=float(s[0]),
                         score_euclidean=float(s[1]), score_manhattan=float(s[2]), verification=float(v[0]),
                         verification_euclidean=float(v[1]), verification_manhattan=float(v[2]), max_prob=max_prob,
                         label=reference_label(max_prob))
        if result is not None and result.fence is not None:
            c.clears_fence = bool(v[0] > result.fence)
            c.shortlisted = bool(s[0] >= result.shortlist_threshold)
            c.run_sticky = by_cand[tid].sticky if tid in by_cand else None
            if not np.isnan(confidence[k]):
                c.confidence = float(confidence[k])
        checked.append(c)
        if c.category not in ("OK", "OK_SPECIAL"):
            notes.append(f"{c.token!r} is in category {c.category}: detect does not score it (its text may not "
                         "re-encode to itself), so its values have no counterpart in a run")
    # each stage's compute seconds over every session of this folder (run.json's, as detect reports them):
    # a rerun that reads the stages back keeps the first session's figures
    timings = {k: v for k, v in folder_run.run.get("timings", {}).items() if k != "total_this_session"}
    timings.setdefault("scoring", round(t_score, 3))
    timings.setdefault("verification", round(t_verify, 3))
    return checked, mean_sim, notes, timings


RUN_CACHES = ("mean_similarity.json", "pairs.json")


def _run_corpus(result: DetectionResult) -> Corpus:
    """The corpus of a run copied without its pairs.json, to draw them again: the built-in one
    (a run on the user's own corpus names it by a hash only)."""
    corpus = read_corpus(None, None)
    recorded = RunFolder.existing(result.run_dir).identity.get("corpus")
    if str(recorded).startswith("run-pairs:"):
        raise InputError(f"{result.run_dir!r} lacks pairs.json (a copy without it?), and its pairs were taken from an "
                         "earlier run (detect --pairs RUN): copy that run's pairs.json into it")
    if recorded != corpus.fingerprint:
        raise InputError(f"{result.run_dir!r} lacks pairs.json (a copy without it?), and its pairs were drawn from a "
                         "corpus of its own, which check cannot read again: copy pairs.json from the run")
    return corpus


def _as_recorded(result: DetectionResult, folder_run: RunFolder, lost: list[str], mean_sim: float,
                 scoring: list, verifying: list) -> str:
    """The note on caches a run folder was copied without and check computed again; an
    InputError (the computed caches removed) when they are not what the run recorded: on another
    machine or version the embeddings' last bits, and the pairs they pick, can differ."""
    def same(got, recorded) -> bool:
        return len(got) == len(recorded) and all(
            (p.reference, p.contrast) == (q["reference"], q["contrast"]) for p, q in zip(got, recorded))

    if mean_sim != result.mean_similarity or not same(scoring, result.scoring_pairs) \
            or not same(verifying, result.verification_pairs):
        for fname in lost:
            os.remove(folder_run.file(fname))
        raise InputError(f"{result.run_dir!r} lacks {' and '.join(lost)} (a copy without them?), and computed again "
                         "here they are not what the run recorded (its mean similarity or stage pairs differ in the "
                         "embeddings' last bits: another machine, device or batch size?); copy them from the run")
    return (f"the run folder lacks {' and '.join(lost)}; computed again here, they match what the run recorded (the "
            f"mean similarity and its {len(scoring)} scoring and {len(verifying)} verification pairs)")


def _values(folder_run: RunFolder, stage: str, encoder: Encoder, vocab: Vocabulary, ids: np.ndarray,
            detect_order: np.ndarray | None, pairs, settings: Settings, seed: int, show: bool, compute, desc: str):
    """The stage's values [T, 3] for ``ids`` (and, for verification, each pair's cosine value
    [T, P]), computed exactly as ``detect`` computed them: a token that ``detect_order`` (the
    run's tokens, in the order its stage cut into chunks) holds is computed within the same
    chunk of tokens the run's stage put it in, since on one device a float32 forward pass can
    differ in the last bit with the shapes of the batches around a row.  Other tokens are
    computed on their own."""
    from .score import tokens_per_chunk

    in_run = np.zeros(len(ids), dtype=bool) if detect_order is None else np.isin(ids, detect_order)
    groups = []
    if in_run.any():
        per = tokens_per_chunk(len(pairs), settings.insert_num, folder_run.chunk_rows(encoder.device.type),
                               settings.insert_draws)
        pos = {int(t): k for k, t in enumerate(detect_order.tolist())}
        chunks = sorted({pos[int(t)] // per for t in ids[in_run]})
        groups.append((stage, np.concatenate([detect_order[c * per:(c + 1) * per] for c in chunks])))
    if (~in_run).any():
        groups.append((stage + "-alone", ids[~in_run]))
    found: dict[int, np.ndarray] = {}
    outcomes: dict[int, np.ndarray] = {}
    for name, tokens in groups:
        got_ids, vals = variant_stage(folder_run, name, encoder, vocab, tokens, pairs, settings, seed, show, compute,
                                      desc)
        kept = folder_run.gather(name, "outcomes")
        for k, t in enumerate(got_ids.tolist()):
            found[t] = vals[k]
            if kept is not None:
                outcomes[t] = kept[k]
    values = np.stack([found[int(t)] for t in ids])
    per_pair = per_pair_values(np.stack([outcomes[int(t)] for t in ids]))[:, :, 0] if outcomes else None
    return values, per_pair


def _run_confidence(result: DetectionResult, per_pair: np.ndarray, seed: int, notes: list[str]):
    """P(sticky) of the checked tokens from the run's own bootstrap resamples (None, with a
    note, when the run kept no per-pair outcomes or ran without a bootstrap)."""
    n = int(result.params.get("bootstrap") or 0)
    if n < 1 or not result.has_confidence:
        notes.append("the run has no bootstrap confidences, so neither has the check")
        return None
    outcomes = load_outcomes(result.run_dir, [c.id for c in result.candidates])   # one small file
    if outcomes is None:   # a run made before it was kept: its verification parts
        outcomes = RunFolder.existing(result.run_dir).gather("verify", "outcomes")
        if outcomes is not None and len(outcomes) != len(result.candidates):
            outcomes = None
    if outcomes is None:
        notes.append(f"the run's verification parts are missing or lack per-pair outcomes, and so does its "
                     f"{OUTCOMES_FILE} (a copy without them, or a run made before it was kept?): P(sticky) is "
                     "computed from them; no confidence")
        return None
    run_pp = per_pair_values(outcomes)[:, :, 0]
    return against_fences(run_pp, per_pair, n, seed)
