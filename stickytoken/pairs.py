"""Stage 2: sentences, the pair pool, and the pairs each stage uses (docs/algorithm.md §2)."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from importlib import resources
from typing import Any, Sequence

import numpy as np

from . import _core
from .errors import InputError, check_texts, read_user_file

logger = logging.getLogger(__name__)

POOL_SENTENCES = 1000
POOL_PAIRS = 1000
_TEXT_COLUMNS = ("text", "sentence", "sentences", "sentence1")


@dataclass(frozen=True)
class Pair:
    """A (reference, contrast) sentence pair and the model's cosine similarity between them."""

    reference: str
    contrast: str
    similarity: float

    def to_dict(self) -> dict:
        return {"reference": self.reference, "contrast": self.contrast, "similarity": self.similarity}

    @classmethod
    def from_dict(cls, d: dict) -> "Pair":
        return cls(d["reference"], d["contrast"], float(d["similarity"]))


def builtin_corpus_path() -> str:
    return str(resources.files("stickytoken") / "data" / "sentences.txt")


def builtin_sentences() -> list[str]:
    """The corpus shipped with the package (natural English sentences written for it)."""
    return read_sentences(builtin_corpus_path())


def _read_text(path: str, what: str = "sentences file") -> str:
    return read_user_file(path, what)


def format_name(path: str) -> str:
    """The lower-case name a file's format follows: without a trailing .gz (read uncompressed)."""
    lower = path.lower()
    return lower[:-3] if lower.endswith(".gz") else lower


def _jsonl_values(raw: str, path: str) -> list[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSONL file; a line that is not JSON is
    an error naming it."""
    values = []
    for n, line in enumerate(raw.splitlines(), 1):
        if line.strip():
            try:
                values.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}: line {n} is not valid JSON ({exc.msg})") from exc
    return values


def _tsv_field(field: str) -> str:
    '''A TSV field as written: unquoted, unless the whole field is quoted as a CSV writer quotes
    it (pandas' to_csv with a tab: a field holding a quote is written in quotes, its own quotes
    doubled).  A sentence that only begins with a quote (STS-B's "Hello," she said.) is kept as
    it is.'''
    if len(field) >= 2 and field[0] == field[-1] == '"' and '"' not in field[1:-1].replace('""', ''):
        return field[1:-1].replace('""', '"')
    return field


def _table(raw: str, path: str) -> tuple[list[str], list[dict]]:
    """(field names, rows as dicts) of a CSV, or of a TSV read as TSV files are written: split
    at tabs, a field unquoted only when it is quoted whole (``_tsv_field``)."""
    if not format_name(path).endswith(".tsv"):
        reader = csv.DictReader(io.StringIO(raw))
        return list(reader.fieldnames or []), list(reader)
    lines = [line for line in raw.splitlines() if line.strip()]
    names = [_tsv_field(f) for f in lines[0].split("\t")] if lines else []
    rows = []
    for line in lines[1:]:
        fields = [_tsv_field(f) for f in line.split("\t")]
        rows.append({name: (fields[i] if i < len(fields) else None) for i, name in enumerate(names)})
    return names, rows


def read_sentences(path: str) -> list[str]:
    """Sentences from a text file (one per line), a CSV or a JSONL file with a text column.

    Blank lines are skipped and repeated sentences kept once, in first-seen order.
    """
    raw = _read_text(path)
    lower = format_name(path)
    if lower.endswith((".jsonl", ".ndjson")):
        sentences = []
        for n, obj in _jsonl_values(raw, path):
            if obj is None or isinstance(obj, str):
                sentences.append(obj or "")
                continue
            if not isinstance(obj, dict):
                raise InputError(f"{path}: line {n} is {type(obj).__name__} {json.dumps(obj)[:40]}; give a string "
                                 f"or an object with one of {list(_TEXT_COLUMNS)}")
            key = next((k for k in _TEXT_COLUMNS if k in obj), None)
            if key is None:
                raise InputError(f"{path}: line {n} has no text field; use one of {list(_TEXT_COLUMNS)}")
            value = obj[key]
            if value is not None and not isinstance(value, str):   # (null is an empty line, as in a CSV)
                raise InputError(f"{path}: line {n}'s {key!r} is {type(value).__name__} {json.dumps(value)[:40]}, "
                                 "not a string")
            sentences.append(value or "")
    elif lower.endswith((".csv", ".tsv")):
        rows = _table(raw, path)[1]
        if not rows:
            raise InputError(f"sentences file {path!r} has no rows")
        key = next((k for k in _TEXT_COLUMNS if k in rows[0]), None)
        if key is None:
            raise InputError(f"{path}: no text column; name one of {list(_TEXT_COLUMNS)} "
                             f"(columns found: {list(rows[0])})")
        sentences = [r[key] or "" for r in rows]
    else:
        sentences = raw.splitlines()
    out = list(dict.fromkeys(s.strip() for s in sentences if s and s.strip()))
    if not out:
        raise InputError(f"sentences file {path!r} holds no sentences")
    return out


def read_pairs(path: str) -> tuple[list[tuple[str, str]], np.ndarray | None]:
    """Pairs from a CSV, TSV or JSONL file with sentence1, sentence2 and optionally similarity
    columns (fields)."""
    raw = _read_text(path, "pairs file")
    if format_name(path).endswith((".jsonl", ".ndjson")):
        first = 1     # (rows counted from 1; no header)
        reader = []
        for n, obj in _jsonl_values(raw, path):
            if not isinstance(obj, dict):
                raise InputError(f"{path}: line {n} is not an object with sentence1 and sentence2")
            reader.append(obj)
        fields = sorted(set().union(*(r.keys() for r in reader))) if reader else []
    else:
        first = 2     # (the header is row 1)
        fields, reader = _table(raw, path)
    if "sentence1" not in fields or "sentence2" not in fields:
        raise InputError(f"pairs file {path!r} needs columns sentence1 and sentence2 (found: {fields})")
    pairs, sims = [], []
    has_sim = "similarity" in fields
    for n, row in enumerate(reader, first):
        a, b = row.get("sentence1"), row.get("sentence2")
        if not all(isinstance(x, str) or x is None for x in (a, b)):
            raise InputError(f"{path}: row {n} has a sentence that is not a string")
        a, b = (a or "").strip(), (b or "").strip()
        if not a or not b:
            raise InputError(f"{path}: row {n} has an empty sentence")
        pairs.append((a, b))
        if has_sim:
            try:
                value = row.get("similarity")
                if isinstance(value, bool):
                    raise TypeError(value)
                sims.append(float(value))
            except (TypeError, ValueError) as exc:
                raise InputError(f"{path}: row {n} has a similarity that is not a number: {value!r}") from exc
    if not pairs:
        raise InputError(f"pairs file {path!r} holds no pairs")
    sims_arr = np.asarray(sims, dtype=np.float64) if has_sim else None
    check_similarities(sims_arr, f"{path}: row", first_row=first)
    return pairs, sims_arr


def check_similarities(sims: np.ndarray | None, where: str, first_row: int = 0) -> None:
    """Refuse similarities that are not finite or lie outside [-1, 1] (a cosine similarity),
    naming the first bad one."""
    if sims is None:
        return
    bad = np.flatnonzero(~np.isfinite(sims) | (np.abs(sims) > 1.0 + 1e-6))
    if len(bad):
        i = int(bad[0])
        finite = sims[np.isfinite(sims)]
        sts = len(finite) and finite.min() >= 0 and finite.max() <= 5 and finite.max() > 1
        raise InputError(f"{where} {i + first_row} has similarity {float(sims[i])!r}: similarities must be finite cosine "
                         f"values in [-1, 1] ({len(bad)} such row(s))"
                         + ("; these look like STS gold scores (0 to 5), which are not the model's cosine: leave "
                            "the similarity column out and the model's own is computed" if sts else ""))


def pool_size(n_sentences: int | None = None, n_pairs: int | None = None) -> int:
    """How many pairs the pool holds, known before any model work: a pairs file's pairs, or
    ``build_pool``'s min(POOL_PAIRS, k(k-1)/2) over k = min(POOL_SENTENCES, sentences)."""
    if n_pairs is not None:
        return int(n_pairs)
    k = min(POOL_SENTENCES, int(n_sentences or 0))
    return min(POOL_PAIRS, k * (k - 1) // 2)


def sentences_source(sentences: str | os.PathLike | Sequence[str] | None) -> tuple[list[str], str]:
    """(sentences, fingerprint) from a file, a list of strings, or None (the built-in corpus);
    the fingerprint ("label:hash") is part of a run's identity."""
    if sentences is None:
        sents = read_sentences(builtin_corpus_path())
        label = "builtin"
    elif isinstance(sentences, (str, os.PathLike)):
        sents = read_sentences(os.fspath(sentences))
        label = os.path.basename(os.fspath(sentences))
    else:
        sents = list(dict.fromkeys(s.strip() for s in check_texts("sentences", sentences) if s.strip()))
        if not sents:
            raise InputError("sentences is empty; give at least 2 distinct sentences")
        label = "list"
    digest = hashlib.sha256("\n".join(sents).encode()).hexdigest()[:16]
    return sents, f"{label}:{digest}"


def read_run_pairs(path: str) -> tuple[list[Pair], dict[str, list[Pair]]]:
    """The pair pool and the scoring and verification pairs of an earlier run: its folder or
    its ``pairs.json``."""
    file = os.path.join(path, "pairs.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        what = "is a folder without pairs.json" if os.path.isdir(path) else "does not exist"
        raise InputError(f"pairs {path!r} {what}; give a CSV, or an earlier run's folder or its pairs.json")
    try:
        with open(file, encoding="utf-8") as fh:
            data = json.load(fh)
        pool = [Pair.from_dict(d) for d in data["pool"]]
        stages = {k: [Pair.from_dict(d) for d in data[k]] for k in ("scoring", "verification")}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{file}: not a run's pairs.json (pool, scoring and verification pairs): {exc}") from exc
    if not pool or not all(stages.values()):
        raise InputError(f"{file}: the pool or a stage's pairs are empty")
    check_similarities(np.asarray([p.similarity for p in pool], dtype=np.float64), f"{file}: pool pair", 0)
    return pool, stages


def is_run_pairs(pairs) -> bool:
    """Whether ``pairs`` names an earlier run's pairs (a folder or a .json file), not a CSV."""
    if not isinstance(pairs, (str, os.PathLike)):
        return False
    path = os.fspath(pairs)
    return os.path.isdir(path) or path.lower().endswith(".json")


def pairs_source(pairs) -> tuple[list[tuple[str, str]], np.ndarray | None, str, dict[str, list[Pair]] | None]:
    """(pairs, similarities or None, fingerprint, stage pairs or None) from a pairs file, an
    earlier run's pairs (its folder or pairs.json: the pool and each stage's pairs as they
    were), or a list of (sentence1, sentence2[, similarity]) tuples."""
    if is_run_pairs(pairs):
        pool, stages = read_run_pairs(os.fspath(pairs))
        blob = json.dumps([[p.to_dict() for p in pool], {k: [p.to_dict() for p in v] for k, v in stages.items()}])
        return ([(p.reference, p.contrast) for p in pool], np.asarray([p.similarity for p in pool]),
                f"run-pairs:{hashlib.sha256(blob.encode()).hexdigest()[:16]}", stages)
    if isinstance(pairs, (str, os.PathLike)):
        plist, sims = read_pairs(os.fspath(pairs))
        label = os.path.basename(os.fspath(pairs))
    else:
        rows = list(pairs)
        if not rows:
            raise InputError("pairs is empty; give (sentence1, sentence2[, similarity]) tuples")
        if any(len(r) not in (2, 3) for r in rows):
            raise InputError("each pair must be (sentence1, sentence2) or (sentence1, sentence2, similarity)")
        for k, r in enumerate(rows):
            if not (isinstance(r[0], str) and isinstance(r[1], str)):
                raise InputError(f"pair {k} must hold two strings, got ({type(r[0]).__name__}, {type(r[1]).__name__})")
        plist = [(r[0], r[1]) for r in rows]
        try:
            sims = np.asarray([float(r[2]) for r in rows]) if all(len(r) == 3 for r in rows) else None
        except (TypeError, ValueError) as exc:
            raise InputError(f"a pair's similarity is not a number ({exc})") from exc
        check_similarities(sims, "pair")
        label = "list"
    blob = json.dumps([plist, None if sims is None else sims.tolist()])
    return plist, sims, f"{label}:{hashlib.sha256(blob.encode()).hexdigest()[:16]}", None


def spread_select(values: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each target in turn, the index of the not-yet-taken value closest to it."""
    order = np.argsort(values, kind="stable")
    sorted_vals = values[order]
    taken = np.zeros(len(values), dtype=bool)
    chosen = np.empty(len(targets), dtype=np.int64)
    for t, target in enumerate(targets):
        pos = int(np.searchsorted(sorted_vals, target))
        lo, hi = pos - 1, pos
        while lo >= 0 and taken[lo]:
            lo -= 1
        while hi < len(values) and taken[hi]:
            hi += 1
        if lo < 0 and hi >= len(values):
            raise InputError("fewer candidate pairs than targets")
        if hi >= len(values) or (lo >= 0 and target - sorted_vals[lo] <= sorted_vals[hi] - target):
            pick = lo
        else:
            pick = hi
        taken[pick] = True
        chosen[t] = order[pick]
    return chosen


def build_pool(sentences: list[str], encoder, seed: int, n_sentences: int = POOL_SENTENCES,
               n_pairs: int = POOL_PAIRS) -> list[Pair]:
    """Draw up to n_sentences sentences (seeded), embed them, and pick n_pairs pairs spread
    evenly over the range of their similarities."""
    if len(sentences) < 2:
        raise InputError(f"the corpus has {len(sentences)} distinct sentence(s); at least 2 are needed")
    rng = np.random.default_rng(seed)
    take = min(n_sentences, len(sentences))
    idx = np.sort(rng.choice(len(sentences), size=take, replace=False))
    chosen = [sentences[i] for i in idx]
    emb = encoder.encode_texts(chosen, desc="pair pool")
    sims = np.asarray(_core.pairwise_cosine(emb))
    iu, ju = np.triu_indices(take, k=1)
    pair_sims = sims[iu, ju]
    n = min(n_pairs, len(pair_sims))
    lo, hi = float(pair_sims.min()), float(pair_sims.max())
    targets = lo + np.arange(n) * ((hi - lo) / (n - 1) if n > 1 else 0.0)
    picks = spread_select(pair_sims, targets)
    return [Pair(chosen[iu[p]], chosen[ju[p]], float(pair_sims[p])) for p in picks]


def pool_from_pairs(pairs: list[tuple[str, str]], sims: np.ndarray | None, encoder) -> list[Pair]:
    """A pair pool from a user's pairs file; similarities computed with the model if absent."""
    if sims is None:
        refs = encoder.encode_texts([a for a, _ in pairs], desc="pairs")
        cons = encoder.encode_texts([b for _, b in pairs], desc="pairs")
        d = np.asarray(_core.row_distances(cons, refs, np.arange(len(pairs), dtype=np.int64)))
        sims = 1.0 - d[:, 0]
    return [Pair(a, b, float(s)) for (a, b), s in zip(pairs, sims)]


def stage_pairs(pool: list[Pair], mean_similarity: float, n: int, stage: str) -> tuple[list[Pair], bool]:
    """The n pairs for a stage: below the mean similarity, spread from the lowest to 80% of
    the way up to the mean (a pair may repeat).  Returns (pairs, short) where short says
    fewer than n pairs qualified and all of them are used."""
    if n < 1:
        raise InputError(f"{stage} needs at least 1 sentence pair, got {n}")
    below = [p for p in pool if p.similarity < mean_similarity]
    if not below:
        raise InputError(
            f"no sentence pair is less similar than the model's mean similarity ({mean_similarity:.4f}); "
            "give a larger or more varied corpus (--sentences) or a pairs file (--pairs)")
    if len(below) < n:
        logger.warning("%s: only %d pairs lie below the mean similarity %.4f; using all of them instead of %d",
                       stage, len(below), mean_similarity, n)
        return sorted(below, key=lambda p: p.similarity), True
    sims = np.asarray([p.similarity for p in below])
    lo = float(sims.min())
    hi = lo + 0.8 * (mean_similarity - lo)
    targets = lo + np.arange(n) * ((hi - lo) / (n - 1) if n > 1 else 0.0)
    picks = [int(np.argmin(np.abs(sims - t))) for t in targets]
    return [below[i] for i in picks], False
