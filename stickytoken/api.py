"""``stickytoken.detect``: the whole Sticky Token Detector as one call, one function per stage.

``detect`` checks its arguments (``check_settings``, ``read_corpus``), loads the model and
opens the run folder (``open_run``), then runs the stages of docs/algorithm.md in order:

1. ``vocabulary_stage``: token categories and the tokens to score (§1);
2. ``mean_similarity_stage`` and ``pairs_stage``: the mean similarity, the pair pool and
   each stage's pairs (§2);
3. ``scoring_stage``: sticky scores and the shortlist (§3), exhaustive or fast;
4. ``verification_stage`` and ``decide``: verification values, the fence and the decision (§4);
5. ``confidence_stage`` and ``audit_stage``: bootstrap confidences and the audit of the
   tokens the shortlist left out (§6; stable mode's several insert draws are §6 too);

and ``finish`` writes the results.  Every stage reads what the run folder already holds and
saves what it computes, so each can be called (and tested) on its own with a run folder.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from ._version import __version__
from .confidence import BOOTSTRAP_DEFAULT, audit_summary, bootstrap as bootstrap_confidence
from .distributed import SINGLE, Ranks, setup as setup_ranks
from .encoder import Encoder, progress_enabled
from .errors import InputError, StickyTokenError, check_int
from .fast import FastSettings, fast_score, fast_verify
from .models import import_sentence_transformers, load_model, model_name, warm_cuda
from .pairs import Pair, build_pool, pairs_source, pool_from_pairs, pool_size, sentences_source, stage_pairs
from .results import DetectionResult, TokenResult, atomic_write
from .runfolder import RunFolder, default_folder, env_chunk_rows, run_parts, save_outcomes
from .score import (INSERTIONS, chunk_callables, lazy_sequences, pair_scores, scores_from_pairs, shortlist,
                    tokens_per_chunk)
from .tokenizing import tokenize_rows
from .trace import stage_trace
from .verify import fence as iqr_fence, label as reference_label, per_pair_values, verification_with_outcomes
from .vocab import CATEGORY_NAMES, Vocabulary, build_vocabulary

logger = logging.getLogger(__name__)


# ---- arguments ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """The detector's checked parameters (docs/algorithm.md §0)."""

    sent_pair_num: int = 5
    insert_num: int = 8
    verification_sent_pair_num: int = 250
    shortlist_percent: float = 2.0
    seed: int = 42
    insertion: str = "text"
    max_tokens: int | None = None
    fast: bool = False
    fast_settings: FastSettings | None = None
    insert_draws: int = 1
    audit: int = 0
    bootstrap: int = BOOTSTRAP_DEFAULT
    sample_seed: int | None = None   # seed of the max_tokens sample when it is not the run's seed


@dataclass(frozen=True)
class Corpus:
    """Where the pair pool comes from: sentences, or the user's pairs (with similarities or
    not), and the fingerprint that enters the run's identity."""

    sentences: list[str] | None
    pairs: list[tuple[str, str]] | None
    similarities: np.ndarray | None
    fingerprint: str
    stages: dict[str, list[Pair]] | None = None   # an earlier run's scoring and verification pairs

    @property
    def pool_size(self) -> int:
        """Pairs in the pool the stages choose from (known before any model work)."""
        return pool_size(None if self.sentences is None else len(self.sentences),
                         None if self.pairs is None else len(self.pairs))


def check_pool(settings: Settings, corpus: Corpus) -> None:
    """Refuse pair counts the pool cannot give (before any model work); a pool with fewer
    pairs below the mean similarity than asked is only known later, and only warned about."""
    size = corpus.pool_size
    for name, n in (("sent_pair_num", settings.sent_pair_num),
                    ("verification_sent_pair_num", settings.verification_sent_pair_num)):
        if n > size:
            source = "the pairs file holds" if corpus.pairs is not None else "the corpus's pair pool holds"
            raise InputError(f"{name} is {n} but {source} only {size} pairs; the largest possible value is {size}")


def check_settings(*, sent_pair_num: int = 5, insert_num: int = 8, verification_sent_pair_num: int = 250,
                   shortlist_percent: float = 2.0, seed: int = 42, insertion: str = "text",
                   max_tokens: int | None = None, fast: bool = False, fast_settings: Any = None,
                   insert_draws: int = 1, audit: int = 0, bootstrap: int = BOOTSTRAP_DEFAULT,
                   sample_seed: int | None = None) -> Settings:
    """The parameters checked and normalised, or an InputError before any model work (the
    environment's ``STICKYTOKEN_CHUNK_ROWS`` too)."""
    env_chunk_rows()
    sent_pair_num = check_int("sent_pair_num", sent_pair_num)
    insert_num = check_int("insert_num", insert_num, 1, 64)
    verification_sent_pair_num = check_int("verification_sent_pair_num", verification_sent_pair_num)
    seed = check_int("seed", seed, 0, 2**63 - 1)
    if max_tokens is not None:
        max_tokens = check_int("max_tokens", max_tokens)
    if sample_seed is not None:
        sample_seed = check_int("sample_seed", sample_seed, 0, 2**63 - 1)
        if max_tokens is None:
            raise InputError("sample_seed seeds the max_tokens sample; give max_tokens too, or drop sample_seed")
        if sample_seed == seed:   # the default: the same run, folder and identity as without it
            sample_seed = None
    try:
        shortlist_percent = float(shortlist_percent)
    except (TypeError, ValueError) as exc:
        raise InputError(f"shortlist_percent must be a number, got {shortlist_percent!r}") from exc
    if not 0 < shortlist_percent <= 100:
        raise InputError(f"shortlist_percent must be in (0, 100], got {shortlist_percent}")
    if insertion not in INSERTIONS:
        raise InputError(f"insertion must be one of {list(INSERTIONS)}, got {insertion!r}")
    if fast_settings is not None and not fast:
        raise InputError("fast_settings is only used with fast=True")
    if fast:
        fast_settings = fast_settings if fast_settings is not None else FastSettings()
        if not isinstance(fast_settings, FastSettings):
            raise InputError("fast_settings must be a stickytoken.fast.FastSettings")
    insert_draws = check_int("insert_draws", insert_draws, 1, 64)
    audit = check_int("audit", audit, 0)
    bootstrap = check_int("bootstrap", bootstrap, 0)
    if fast and insert_draws > 1:
        raise InputError("insert_draws > 1 (stable mode) cannot be combined with fast mode; use one or the other")
    return Settings(sent_pair_num, insert_num, verification_sent_pair_num, shortlist_percent, seed, insertion,
                    max_tokens, bool(fast), fast_settings, insert_draws, audit, bootstrap, sample_seed)


def read_corpus(sentences=None, pairs=None) -> Corpus:
    """The corpus (default: the built-in one) or the user's pairs, read and checked."""
    if sentences is not None and pairs is not None:
        raise InputError("give either sentences or pairs, not both")
    if pairs is not None:
        plist, sims, fingerprint, stages = pairs_source(pairs)
        return Corpus(None, plist, sims, fingerprint, stages)
    sents, fingerprint = sentences_source(sentences)
    if len(sents) < 2:
        raise InputError(f"the corpus has {len(sents)} distinct sentence(s); at least 2 are needed for pairs")
    return Corpus(sents, None, None, fingerprint)


def versions() -> dict[str, str]:
    """Versions of stickytoken and the libraries a run depends on."""
    import torch
    import transformers

    sentence_transformers = import_sentence_transformers()

    return {"stickytoken": __version__, "numpy": np.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "sentence_transformers": sentence_transformers.__version__,
            "python": platform.python_version()}


def finished_bootstrap(folder: str) -> int | None:
    """The bootstrap resamples the results of the finished run in ``folder`` were computed with
    (None: unreadable)."""
    try:
        with open(os.path.join(folder, "results.json"), encoding="utf-8") as fh:
            return int(json.load(fh)["params"].get("bootstrap") or 0)
    except (OSError, ValueError, KeyError):
        return None


def _finished_same(run: RunFolder, settings: Settings) -> bool:
    """The folder holds this run finished, with the bootstrap asked for: read it back as is."""
    return run.finished and finished_bootstrap(run.path) == settings.bootstrap


def _same_arithmetic(run: RunFolder, encoder: Encoder) -> None:
    """Records the device and batch size a run begins with (``run.json``'s ``device`` and
    ``batch_size``), and warns when a resumed run goes on with others: its parts may then
    differ from the saved ones in their last bits (results are bit for bit the same on resume
    only on the same kind of device with the same batch size)."""
    now = {"device": str(encoder.device), "batch_size": int(encoder.batch_size)}
    before = {k: run.run.get(k) for k in now}
    if before["batch_size"] is None:   # a new run, or one begun before the batch size was recorded
        run.run["batch_size"] = now["batch_size"]
        before["batch_size"] = now["batch_size"]
    changed = [f"{k} {before[k]} then, {now[k]} now" for k in now if before[k] is not None and before[k] != now[k]]
    parts = os.path.join(run.path, "parts")
    if changed and any(n.endswith(".npz") for n in os.listdir(parts)):
        logger.warning("warning: this run resumes with another %s: the parts computed now may differ from the "
                       "saved ones in their last bits (run the same --device and --batch-size for results bit "
                       "for bit those of an uninterrupted run)", "; ".join(changed))


def check_output_argument(output: Any) -> None:
    """``detect``'s ``output``: a folder's name, None (the default folder) or False (nothing
    kept); anything else is an InputError."""
    if output is not None and output is not False and \
            (not isinstance(output, (str, os.PathLike)) or not os.fspath(output)):
        raise InputError(f"output must name a folder (or be None for the default folder, False to keep nothing), "
                         f"got {output!r}")


def run_identity(encoder: Encoder, name: str, settings: Settings, corpus: Corpus) -> dict[str, Any]:
    """The parameters that name a detection run: its folder holds them (run.json's
    ``identity``), and the default folder's name ends with their hash."""
    used_dtype = str(encoder.dtype).replace("torch.", "")
    identity = {
        "model": name, "sent_pair_num": settings.sent_pair_num, "insert_num": settings.insert_num,
        "verification_sent_pair_num": settings.verification_sent_pair_num,
        "shortlist_percent": settings.shortlist_percent, "seed": settings.seed, "insertion": settings.insertion,
        "max_tokens": settings.max_tokens, "dtype": used_dtype, "prompt": encoder.prompt,
        "corpus": corpus.fingerprint,
    }
    if settings.insert_draws > 1:   # added only when not the paper's 1, so older run folders keep their identity
        identity["insert_draws"] = settings.insert_draws
    if settings.audit:
        identity["audit"] = settings.audit
    if settings.sample_seed is not None:   # (only when it is not the run's seed)
        identity["sample_seed"] = settings.sample_seed
    if settings.fast:  # a fast run folder never mixes with an exhaustive one (exhaustive identities unchanged)
        identity["fast"] = True
        identity["fast_settings"] = settings.fast_settings.identity()
    return identity


def open_run(encoder: Encoder, name: str, settings: Settings, corpus: Corpus,
             output: str | os.PathLike | None, ranks: Ranks = SINGLE) -> RunFolder:
    """The run folder for these parameters (created, or resumed when it holds the same run);
    with several ranks, rank 0 creates it and the others open it after a barrier."""
    identity = run_identity(encoder, name, settings, corpus)
    folder = os.fspath(output) if output is not None else default_folder(name, identity)
    meta = {"versions": versions(), **encoder.describe()}
    if ranks.world > 1:
        meta["world_size"] = ranks.world
    run = None
    if ranks.main:   # rank 0 makes or opens the folder, and readies it, before the others open it
        run = RunFolder(folder, identity, meta, ranks)
        if not _finished_same(run, settings):
            run.claim()   # (until detect returns; a second process on this run is refused)
            _same_arithmetic(run, encoder)
            run.clean_temporaries()   # (a finished run asked for another bootstrap is recomputed, no model work)
            run.run["status"] = "running"
            run.save_run()
    ranks.barrier()
    if run is None:
        run = RunFolder(folder, identity, meta, ranks)
    if _finished_same(run, settings):
        logger.info("run folder %s holds this finished run; reading it back (nothing is recomputed or rewritten)",
                    run.path)
        return run
    logger.info("run folder: %s", run.path)
    return run


# ---- stages ------------------------------------------------------------------------------------
def vocabulary_stage(run: RunFolder, encoder: Encoder, settings: Settings) -> tuple[Vocabulary, np.ndarray]:
    """Stage 1: the vocabulary's categories, and the available tokens to score (all, or a
    seeded sample of ``max_tokens``)."""
    t0 = time.perf_counter()
    vocab = build_vocabulary(encoder.tokenizer)
    available = vocab.available_ids
    if len(available) == 0:
        raise InputError("no token of this tokenizer can be tested (none re-encodes to itself)")
    tested = tested_tokens(available, settings)
    if "vocab" not in run.run["timings"]:
        run.add_time("vocab", time.perf_counter() - t0)
    logger.info("vocabulary: %d ids, %d available, %d to score", vocab.size, len(available), len(tested))
    return vocab, tested


def tested_tokens(available: np.ndarray, settings: Settings) -> np.ndarray:
    """The tokens a run scores: every available one, or a sorted sample of ``max_tokens`` drawn
    with ``sample_seed`` (default: the run's seed)."""
    if settings.max_tokens is None or settings.max_tokens >= len(available):
        return available
    seed = settings.seed if settings.sample_seed is None else settings.sample_seed
    return np.sort(np.random.default_rng(seed).choice(available, size=settings.max_tokens, replace=False))


def mean_similarity_stage(run: RunFolder, encoder: Encoder, vocab: Vocabulary) -> float:
    """Stage 2a: the mean cosine similarity of every vocabulary entry's embedding (cached in
    mean_similarity.json), streamed: a running float64 sum of unit embeddings, chunk by chunk
    (``Encoder.mean_similarity``), so memory stays flat however large the vocabulary."""
    cached = run.load_json("mean_similarity.json")
    if cached is None:
        t0 = time.perf_counter()
        mean_sim = encoder.mean_similarity(vocab.tokens, desc="mean similarity")
        run.save_json("mean_similarity.json", {"mean_similarity": mean_sim, "n": vocab.size})
        run.add_time("mean_similarity", time.perf_counter() - t0)
    else:
        mean_sim = float(cached["mean_similarity"])
    logger.info("mean similarity: %.5f", mean_sim)
    return mean_sim


def _stage_pairs(corpus: Corpus, pool: list[Pair], mean_sim: float, n: int, stage: str) -> tuple[list[Pair], bool]:
    """A stage's pairs: an earlier run's, as they were, when the corpus is that run's pairs and
    it used n of them (so runs on other devices or dtypes see the very same pairs), else
    chosen from the pool with this model's mean similarity."""
    given = (corpus.stages or {}).get(stage)
    if given is not None and len(given) == n:
        logger.info("%s: the %d pairs of the earlier run", stage, n)
        return list(given), False
    if given is not None:
        logger.info("%s: the earlier run used %d pairs, not %d; choosing from its pool", stage, len(given), n)
    return stage_pairs(pool, mean_sim, n, stage)


def pairs_stage(run: RunFolder, encoder: Encoder, corpus: Corpus, settings: Settings,
                mean_sim: float) -> tuple[list[Pair], list[Pair], list[str]]:
    """Stage 2b: the pair pool and the scoring and verification pairs (cached in pairs.json).
    Returns (scoring pairs, verification pairs, notes on pairs that fell short)."""
    cached = run.load_json("pairs.json")
    if cached is None:
        t0 = time.perf_counter()
        if corpus.pairs is not None:
            pool = pool_from_pairs(corpus.pairs, corpus.similarities, encoder)
        else:
            pool = build_pool(corpus.sentences, encoder, settings.seed)
        scoring, short_s = _stage_pairs(corpus, pool, mean_sim, settings.sent_pair_num, "scoring")
        verifying, short_v = _stage_pairs(corpus, pool, mean_sim, settings.verification_sent_pair_num,
                                          "verification")
        cached = {"pool": [p.to_dict() for p in pool], "scoring": [p.to_dict() for p in scoring],
                  "verification": [p.to_dict() for p in verifying], "short_scoring": short_s,
                  "short_verification": short_v,
                  # whether the pool's similarities are this model's (check tells a model by them)
                  "similarities": "given" if corpus.pairs is not None and corpus.similarities is not None
                  else "model"}
        run.save_json("pairs.json", cached)
        run.add_time("pairs", time.perf_counter() - t0)
    scoring = [Pair.from_dict(d) for d in cached["scoring"]]
    verifying = [Pair.from_dict(d) for d in cached["verification"]]
    notes = []
    if cached.get("short_scoring"):
        notes.append(f"only {len(scoring)} scoring pairs lie below the mean similarity "
                     f"(asked for {settings.sent_pair_num})")
    if cached.get("short_verification"):
        notes.append(f"only {len(verifying)} verification pairs lie below the mean similarity "
                     f"(asked for {settings.verification_sent_pair_num})")
    for stage, stage_pairs_ in (("scoring", scoring), ("verification", verifying)):
        note = truncation_note(encoder, stage_pairs_, settings.insert_num, stage)
        if note:
            logger.warning("warning: %s", note)
            notes.append(note)
    return scoring, verifying, notes


UNTRUNCATED = 1 << 30   # a length limit no text reaches: texts tokenized whole


def truncation_note(encoder: Encoder, pairs: list[Pair], insert_num: int, stage: str) -> str | None:
    """A note when contrast sentences are too long to hold ``insert_num`` more tokens within the
    model's length limit: there the copies inserted last are cut off by truncation (or push the
    sentence's end out), so the pair sees fewer copies than the others."""
    lengths = tokenize_rows(encoder.tokenizer, [p.contrast for p in pairs], encoder.prompt, UNTRUNCATED).lengths
    short = int((lengths + insert_num > encoder.max_length).sum())
    if not short:
        return None
    return (f"{short} of the {len(pairs)} {stage} pairs' contrast sentences {'leaves' if short == 1 else 'leave'} "
            f"room for fewer than the {insert_num} inserted copies within the model's limit of "
            f"{encoder.max_length} tokens (the longest has {int(lengths.max())}): copies past the limit are cut off, "
            "so those pairs see fewer copies; use shorter sentences")


def variant_stage(run: RunFolder, stage: str, encoder: Encoder, vocab: Vocabulary, token_ids: np.ndarray,
                  pairs: list[Pair], settings: Settings, seed: int, show: bool, compute, desc: str):
    """Distance sequences of ``token_ids`` against ``pairs``, reduced by ``compute(D, td)``
    chunk by chunk into saved parts.  Returns (ids, values [n, 3])."""
    per = tokens_per_chunk(len(pairs), settings.insert_num, run.chunk_rows(encoder.device.type),
                           settings.insert_draws)
    get_seqs = lazy_sequences(encoder, pairs, insertion=settings.insertion, insert_num=settings.insert_num, seed=seed,
                              insert_draws=settings.insert_draws)
    chunk, prepare = chunk_callables(encoder, get_seqs, vocab.texts, lambda _, D, td: compute(D, td))

    bar = tqdm(total=len(token_ids), desc=desc, unit="tok", disable=not show, dynamic_ncols=True)
    trace = stage_trace(run.path, desc, encoder.device.type, run.ranks.main,   # STICKYTOKEN_TRACE
                        counter=lambda: encoder.sequences_done)
    before, t0 = profile_snapshot(encoder), time.perf_counter()
    ids, values = run_parts(run, stage, token_ids, per, chunk, bar, desc, prepare=prepare, profile=encoder.profile,
                            trace=trace)
    bar.close()
    seconds = time.perf_counter() - t0
    if trace is not None and trace.summary is not None:   # (the seconds writing it are not the stage's)
        seconds -= trace.summary.get("export_s", 0.0)
    record_profile(run, encoder, desc, before, seconds, trace=None if trace is None else trace.summary)
    return ids, values


def profile_snapshot(encoder: Encoder) -> dict:
    """The encoder's profile counters and its sequence count now, for ``record_profile``."""
    return dict(encoder.profile, sequences=encoder.sequences_done)


def record_profile(run: RunFolder, encoder: Encoder, stage: str, before: dict, seconds: float,
                   trace: dict | None = None) -> None:
    """Where this session's time in a variant stage went, in run.json's ``profile``: building
    rows in this process (``rows_build``), waiting for rows from the workers (``rows_wait``),
    the model (``embed``: the forward passes, queued, and on the CPU run), waiting for the
    GPU's copies back (``gpu_wait``, CUDA only), saving parts (``save``), waiting for the host
    thread (``host_wait``: with workers, a chunk's distances and scores run there behind the
    next chunk's model work; its own seconds are ``host_thread``, ``gpu_wait`` included), and
    the rest (``other``: without workers, the distances and scores), and the sequences the model
    embedded (``sequences``; ``before`` is ``profile_snapshot``'s); with ``STICKYTOKEN_TRACE``,
    the traced chunk's summary (``trace``, stickytoken/trace.py); nothing when every part was
    already on disk."""
    names = ("rows_build", "rows_wait", "embed", "save", "host_wait")
    spent = {k: encoder.profile[k] - before.get(k, 0.0) for k in names + ("gpu_wait",)}
    if spent["embed"] <= 0:
        return
    spent = {k: round(v, 3) for k, v in spent.items()}
    # (with workers the copies back are waited for in the host thread: its seconds, not this thread's)
    spent["other"] = round(max(0.0, seconds - sum(spent[k] for k in names)
                               - (0.0 if encoder.workers else spent["gpu_wait"])), 3)
    spent["workers"] = int(encoder.workers)
    spent["sequences"] = int(encoder.sequences_done - before.get("sequences", 0))
    if encoder.workers:   # the host thread's own seconds (they overlap the model's, so not in the sum)
        spent["host_thread"] = round(encoder.profile["host"] - before.get("host", 0.0), 3)
    if trace is not None:
        spent["trace"] = trace
    if run.ranks.main:
        run.run.setdefault("profile", {})[stage] = spent
        run.save_run()


def score_with_terms(D: np.ndarray, td: np.ndarray):
    """Sticky scores, and each pair's term of them ([T, P, 3], kept in the part for analysis
    such as scripts/screen_study.py; the scores are their rounded means).  Parts written since
    each metric takes its own token distance carry ``td_per_metric``."""
    terms = pair_scores(D, td)
    return scores_from_pairs(terms), {"pair_terms": terms, "td_per_metric": np.array(True)}


@dataclass
class Scored:
    """What scoring produces: every scored token's scores, the candidates and the threshold."""

    ids: np.ndarray            # int64 [n], ascending
    scores: np.ndarray         # float64 [n, 3] cosine / euclidean / manhattan
    candidates: np.ndarray     # int64, highest cosine score first
    threshold: float
    info: dict | None = None   # fast mode's screening record
    old_parts: int = 0         # score parts written before each metric took its own token distance


def scoring_stage(run: RunFolder, encoder: Encoder, vocab: Vocabulary, tested: np.ndarray, pairs: list[Pair],
                  settings: Settings, show: bool) -> Scored:
    """Stage 3: sticky scores of the tested tokens and the shortlist (fast mode: pilot, then
    pair by pair, dropping tokens that cannot reach the shortlist)."""
    if settings.fast:
        before, t0 = profile_snapshot(encoder), time.perf_counter()
        ids, scores, cand, threshold, info = fast_score(
            run, encoder, vocab, tested, pairs, settings.insertion, settings.insert_num, settings.seed,
            settings.shortlist_percent, show, settings.fast_settings)
        record_profile(run, encoder, "scoring", before, time.perf_counter() - t0)
        logger.info("shortlist: %d candidates at or above %.6f (%d of %d tokens fully scored)", len(cand),
                    threshold, len(ids), len(tested))
        return Scored(ids, scores, cand, threshold, info)
    ids, scores = variant_stage(run, "score", encoder, vocab, tested, pairs, settings, settings.seed, show,
                                score_with_terms, "scoring")
    cand, threshold = shortlist(ids, scores[:, 0], settings.shortlist_percent)
    run.ranks.agree("shortlist threshold", threshold)
    logger.info("shortlist: %d candidates at or above %.6f", len(cand), threshold)
    old = sum(1 for i in range(run.n_parts("score")) if "td_per_metric" not in run.part_keys("score", i))
    return Scored(ids, scores, cand, threshold, old_parts=old)


@dataclass
class Verified:
    """What verification produces: the candidates' values and the fence they are judged by."""

    ids: np.ndarray            # int64 [C]
    values: np.ndarray         # float64 [C, 3] cosine / euclidean / manhattan
    fence: float | None
    info: dict | None = None         # fast mode's record (rounds, fence pilot)
    pairs_used: np.ndarray | None = None   # fast mode: verification pairs each candidate saw
    per_pair: np.ndarray | None = None     # [C, P] cosine value on each pair, when every part kept its outcomes
    outcomes: np.ndarray | None = None     # [C, P, 2 + R, 3] the parts' outcomes behind it (saved at the end)


def verification_stage(run: RunFolder, encoder: Encoder, vocab: Vocabulary, candidates: np.ndarray,
                       pairs: list[Pair], settings: Settings, show: bool) -> Verified:
    """Stage 4: verification values of the candidates (seeded with seed + 1) and the fence
    (Q3 + 0.7 IQR of their cosine values; fast mode: of its pilot's)."""
    if settings.fast:
        before, t0 = profile_snapshot(encoder), time.perf_counter()
        ids, values, used, info = fast_verify(run, encoder, vocab, candidates, pairs, settings.insertion,
                                              settings.insert_num, settings.seed + 1, show, settings.fast_settings)
        record_profile(run, encoder, "verification", before, time.perf_counter() - t0)
        return Verified(ids, values, float(info["fence"]) if len(values) else None, info, used)
    ids, values = variant_stage(run, "verify", encoder, vocab, candidates, pairs, settings, settings.seed + 1, show,
                                verification_with_outcomes, "verification")
    run.ranks.agree("verification values", values.tobytes())
    outcomes = run.gather("verify", "outcomes")
    if outcomes is not None and len(outcomes) != len(ids):
        outcomes = None
    per_pair = per_pair_values(outcomes)[:, :, 0] if outcomes is not None else None
    return Verified(ids, values, iqr_fence(values[:, 0]) if len(values) else None, per_pair=per_pair,
                    outcomes=outcomes)


def confidence_stage(verified: Verified, settings: Settings) -> dict[str, Any] | None:
    """Stage 5a: P(sticky) of every candidate, from ``settings.bootstrap`` seeded bootstrap
    resamples of the verification pairs (no model work); None when the run holds no per-pair
    outcomes (runs verified before they were kept, fast mode) or bootstrap is 0."""
    if verified.per_pair is None or settings.bootstrap < 1 or verified.fence is None:
        return None
    return bootstrap_confidence(verified.per_pair, settings.bootstrap, settings.seed)


def audit_stage(run: RunFolder, encoder: Encoder, vocab: Vocabulary, scored: Scored,
                verified: Verified, pairs: list[Pair], settings: Settings, show: bool) -> dict[str, Any] | None:
    """Stage 5b: verify ``settings.audit`` seeded random scored tokens that were not
    shortlisted, count how many clear the fence, and bound the number of sticky tokens the
    unshortlisted tokens hold (95% exact binomial interval)."""
    if not settings.audit or verified.fence is None:
        return None
    rest = np.setdiff1d(scored.ids, scored.candidates)
    n = min(settings.audit, len(rest))
    rng = np.random.default_rng([settings.seed, 0xA0D17])
    picked = np.sort(rng.choice(rest, size=n, replace=False)) if n < len(rest) else rest
    ids, values = variant_stage(run, "audit", encoder, vocab, picked, pairs, settings, settings.seed + 1, show,
                                verification_with_outcomes, "audit")
    clear = values[:, 0] > verified.fence
    out = audit_summary(int(clear.sum()), len(ids), len(rest))
    out["cleared_ids"] = [int(i) for i in ids[clear]]
    logger.info("audit: %d of %d unshortlisted tokens clear the fence", out["cleared"], out["audited"])
    return out


def decide(vocab: Vocabulary, scored: Scored, verified: Verified, conf: dict | None = None) -> list[TokenResult]:
    """Every candidate with its scores, verification values, the reference's label, whether
    it is sticky (cosine verification value strictly above the fence) and, with ``conf``, its
    bootstrap confidence and interval."""
    by_id = {int(i): v for i, v in zip(verified.ids, verified.values)}
    conf_by_id = {} if conf is None else {
        int(i): (float(c), float(lo), float(hi))
        for i, c, lo, hi in zip(verified.ids, conf["confidence"], conf["low"], conf["high"])}
    score_by_id = {int(i): s for i, s in zip(scored.ids, scored.scores)}
    out = []
    for tid in scored.candidates.tolist():
        s, v = score_by_id[tid], by_id[tid]
        max_prob = float(v.max())
        out.append(TokenResult(
            id=tid, token=vocab.tokens[tid], text=vocab.texts[tid], score=float(s[0]), score_euclidean=float(s[1]),
            score_manhattan=float(s[2]), verification=float(v[0]), verification_euclidean=float(v[1]),
            verification_manhattan=float(v[2]), max_prob=max_prob, label=reference_label(max_prob),
            sticky=bool(verified.fence is not None and v[0] > verified.fence)))
        if tid in conf_by_id:
            out[-1].confidence, out[-1].verification_low, out[-1].verification_high = conf_by_id[tid]
    return out


FEW_CANDIDATES = 20   # below this many candidates the fence (Q3 + 0.7 IQR) says little


def few_candidates_note(n: int) -> str:
    return (f"the fence rests on only {n} candidate(s) (fewer than {FEW_CANDIDATES}): with so few, Q3 + 0.7 IQR is "
            "close to the candidates' own values and the verdict means little; score more tokens (no --max-tokens, "
            "or a larger one) or raise --shortlist-percent")


def fast_notes(scored: Scored, verified: Verified) -> list[str]:
    """The note a fast run's summary carries about the work it skipped."""
    s, v = scored.info, verified.info
    return [f"fast mode: {s['fully_scored']} of {s['screened']} tokens fully scored "
            f"({s['passes']} of {s['exhaustive_passes']} scoring sequences); verification stopped early for "
            f"{v.get('stopped_early', 0)} of {len(verified.ids)} candidates (their values are estimates from "
            "fewer pairs)"]


def write_tokens(run: RunFolder, vocab: Vocabulary, scored: Scored, verified: Verified,
                 result: DetectionResult) -> None:
    """tokens.jsonl: one line per vocabulary id with its category, score and verification."""
    score_map = {int(i): s for i, s in zip(scored.ids, scored.scores)}
    ver_map = {int(i): v for i, v in zip(verified.ids, verified.values)}
    sticky = {t.id for t in result.sticky_tokens}
    confidence = {t.id: t.confidence for t in result.candidates if t.confidence is not None}
    lines = []
    for i in range(vocab.size):
        row: dict[str, Any] = {"id": i, "token": vocab.tokens[i], "text": vocab.texts[i],
                               "category": CATEGORY_NAMES[int(vocab.categories[i])]}
        if i in score_map:
            s = score_map[i]
            row.update(score=float(s[0]), score_euclidean=float(s[1]), score_manhattan=float(s[2]))
        if i in ver_map:
            v = ver_map[i]
            row.update(verification=float(v[0]), verification_euclidean=float(v[1]),
                       verification_manhattan=float(v[2]), sticky=i in sticky)
            if i in confidence:
                row["confidence"] = confidence[i]
        lines.append(json.dumps(row, ensure_ascii=False))
    if run.ranks.main:
        atomic_write(run.file("tokens.jsonl"), "\n".join(lines) + "\n")


def finish(run: RunFolder, encoder: Encoder, name: str, settings: Settings, vocab: Vocabulary, mean_sim: float,
           scoring: list[Pair], verifying: list[Pair], scored: Scored, verified: Verified, notes: list[str],
           t_start: float, conf: dict | None = None, audit: dict | None = None) -> DetectionResult:
    """The DetectionResult, written into the run folder, and the run marked complete."""
    candidates = decide(vocab, scored, verified, conf)
    if settings.fast:
        run.run["fast"] = {"screen": scored.info, "verify": verified.info,
                           "pairs_used": {int(i): int(n) for i, n in zip(verified.ids, verified.pairs_used)}}
    memory = encoder.peak_memory()
    run.run["peak_memory"] = memory
    run.run["sequences_encoded_this_session"] = int(encoder.sequences_done)
    result = DetectionResult(
        model=name, params={**run.identity, "fast": settings.fast, "device": str(encoder.device),
                            "batch_size": encoder.batch_size, "insert_draws": settings.insert_draws,
                            "bootstrap": settings.bootstrap},
        vocab_size=vocab.size, category_counts=vocab.counts(), mean_similarity=mean_sim,
        shortlist_threshold=scored.threshold, fence=verified.fence, candidates=candidates, scored_ids=scored.ids,
        scores=scored.scores, scoring_pairs=[p.to_dict() for p in scoring],
        verification_pairs=[p.to_dict() for p in verifying], timings=dict(run.run["timings"]), notes=notes,
        run_dir=run.path, versions=run.run.get("versions", {}), audit=audit,
        fence_interval=None if conf is None else [conf["fence_low"], conf["fence_high"]], peak_memory=memory)
    write_tokens(run, vocab, scored, verified, result)
    total = time.perf_counter() - t_start
    result.timings["total_this_session"] = round(total, 3)
    if run.ranks.main:   # the other ranks hold the same result; rank 0 alone writes it
        t_write = time.perf_counter()
        result.save(run.path)
        if verified.outcomes is not None:   # (what check's P(sticky) of other tokens needs)
            save_outcomes(run.path, verified.ids, verified.outcomes)
        # (after total_this_session, which results.json holds: the files and figures' own seconds)
        run.run.setdefault("profile", {})["write_results"] = round(time.perf_counter() - t_write, 3)
    run.run.update(encoder.describe())   # (what came of torch.compile, now known)
    run.run["status"] = "complete"
    run.run["timings"]["total_this_session"] = round(total, 3)
    run.run["result"] = {"n_candidates": len(candidates), "n_sticky": len(result.sticky_tokens)}
    run.save_run()
    return result


# ---- the whole detector ------------------------------------------------------------------------
class _Laps:
    """Seconds between calls: ``laps(name)`` records the time since the last call under name."""

    def __init__(self, start: float):
        self.last, self.seconds = start, {}

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self.last, 3)
        self.last = now


def detect(
    model: Any = None,
    *,
    sent_pair_num: int = 5,
    insert_num: int = 8,
    verification_sent_pair_num: int = 250,
    shortlist_percent: float = 2.0,
    seed: int = 42,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int | None = None,
    show_progress_bar: bool | None = None,
    output: str | os.PathLike | bool | None = None,
    sentences: str | Sequence[str] | None = None,
    pairs: str | Sequence[tuple] | None = None,
    insertion: str = "text",
    max_tokens: int | None = None,
    sample_seed: int | None = None,
    prompt: str | None = None,
    prompt_name: str | None = None,
    fast: bool = False,
    fast_settings: Any = None,
    insert_draws: int = 1,
    audit: int = 0,
    bootstrap: int = BOOTSTRAP_DEFAULT,
    workers: int | None = None,
    compile: bool = False,
) -> DetectionResult:
    """Find the sticky tokens of a sentence-transformers model.

    Args:
        model: a ``SentenceTransformer``, a local folder, a hub name, or None for the bundled
            all-MiniLM-L6-v2.
        sent_pair_num, insert_num, verification_sent_pair_num, shortlist_percent, seed: the
            detector's parameters (the paper's defaults 5, 8, 250, 2.0, 42; docs/algorithm.md §0).
        device: 'cpu', 'cuda', 'cuda:N'; default cuda when available.
        dtype: float32, float16 or bfloat16; default bfloat16 on CUDA, float32 on CPU.
        batch_size: sequences per forward pass (backs off on out-of-memory).
        show_progress_bar: tqdm bars; None follows the log level.
        output: the run folder; default ``stickytoken_runs/<model>-<parameter hash>``.  A
            folder holding an unfinished run with the same parameters is resumed; one with
            other parameters is refused.  ``False`` keeps nothing: the run works in a
            temporary folder, removed when it ends (so it cannot be resumed), and the result's
            ``run_dir`` is None.
        sentences: corpus for the pair pool: a file (text lines, CSV or JSONL with a text
            column) or a list of strings; default the built-in corpus.
        pairs: a CSV with sentence1, sentence2[, similarity] (the pool as given when it has
            similarities), a list of tuples, or an earlier run's folder or pairs.json (its pool,
            and its scoring and verification pairs as they were: the way to compare devices or
            dtypes on the very same pairs); replaces ``sentences``.
        insertion: 'text' (the paper's string insertion) or 'token' (token ids inserted).
        max_tokens: score only this many available tokens (a seeded sample), for quick runs.
        sample_seed: seed of the ``max_tokens`` sample (default: ``seed``).  Runs with other
            seeds and the same ``sample_seed`` score the same tokens on other pairs: the way to
            read ``agreement`` across seeds on a sample.
        prompt, prompt_name: a prompt put before every text, as ``encode`` would.
        fast: score a random pilot fully, then the other tokens pair by pair, dropping those
            that cannot reach the shortlist; stop each candidate's verification once its side
            of the fence is statistically settled (stickytoken/fast.py).  Less model work,
            near the same sticky tokens; ``scripts/recall.py`` measures how near.
        fast_settings: a ``stickytoken.fast.FastSettings`` to tune fast mode.
        insert_draws: stable mode: draw the insert variant this many times with independent
            seeded positions and average (1, the default, is the paper's single draw).
        audit: after verification, verify this many seeded random tokens that were not
            shortlisted, and bound how many sticky tokens the shortlist missed.
        bootstrap: resamples of the verification pairs behind each candidate's confidence
            (P(sticky), ``TokenResult.confidence``); 0 switches it off.  No model work.
        workers: processes that build and tokenize the variant texts ahead of the model
            (stickytoken/rows.py); default 0 on CPU, all cores but two (at most 16) on CUDA.
            Results are the same with any number.
        compile: run the model through ``torch.compile`` (fused kernels; values within float
            rounding of the plain model's, so sticky scores may differ in their last digits).
            Compiling takes tens of seconds at the first batches; on a 2-core CPU the bare
            forward rate of all-MiniLM-L6-v2 rose 21% in bfloat16 and 7% in float32.  Should
            the compiler fail, the run goes on uncompiled, with a warning; run.json's
            ``compile`` says which.

    Returns:
        A :class:`DetectionResult`; the run folder holds the same (``DetectionResult.load``).
    """
    arguments = dict(locals())   # (as given: output=False runs the same call on a temporary folder)
    t_start = time.perf_counter()
    laps = _Laps(t_start)
    settings = check_settings(
        sent_pair_num=sent_pair_num, insert_num=insert_num, verification_sent_pair_num=verification_sent_pair_num,
        shortlist_percent=shortlist_percent, seed=seed, insertion=insertion, max_tokens=max_tokens, fast=fast,
        fast_settings=fast_settings, insert_draws=insert_draws, audit=audit, bootstrap=bootstrap,
        sample_seed=sample_seed)
    corpus = read_corpus(sentences, pairs)
    check_pool(settings, corpus)
    laps("corpus")
    ranks, device = setup_ranks(device)
    if ranks.world > 1 and settings.fast:
        raise InputError("fast mode runs in one process; run it without torchrun, or drop --fast")
    if output is False:   # keep nothing: the run works in a temporary folder, removed at the end
        if ranks.world > 1:
            raise InputError("output=False runs in one process; under torchrun give a run folder every rank shares")
        with tempfile.TemporaryDirectory(prefix="stickytoken-detect-") as temp:
            result = detect(**{**arguments, "device": device, "output": os.path.join(temp, "run")})
        result.run_dir = None
        return result
    check_output_argument(output)
    show = progress_enabled(show_progress_bar) and ranks.main
    context = warm_cuda(device)   # on CUDA the context is made while sentence-transformers is imported
    laps("device")
    import_sentence_transformers()   # its import, timed apart from the model's load

    laps("import")
    if context is not None:
        context.join()
        laps("cuda_context")   # what of making the CUDA context the import did not hide
    st = load_model(model, device=device, dtype=dtype)
    name = model_name(model if model is not None else st)
    laps("model")
    encoder = Encoder(st, batch_size=batch_size, show_progress_bar=show, prompt=prompt, prompt_name=prompt_name,
                      workers=workers, compile=compile)
    laps("encoder")
    run = open_run(encoder, name, settings, corpus, output, ranks)
    try:
        if run.finished:
            return DetectionResult.load(run.path)   # (a complete run without results.json goes on: its stages resume)
        laps("run_folder")
        run.add_time("load", time.perf_counter() - t_start)
        if ranks.main:   # where the load's seconds went (this session's)
            run.run.setdefault("profile", {})["load"] = laps.seconds
            run.save_run()
        encoder.start_workers()   # they start while the model works on the first stages
        try:
            return _stages(run, encoder, name, settings, corpus, show, t_start)
        except StickyTokenError:
            run.remove_if_unused()   # a refused start leaves no folder behind
            raise
        finally:
            encoder.close()
    finally:
        run.release()


def _stages(run: RunFolder, encoder: Encoder, name: str, settings: Settings, corpus: Corpus, show: bool,
            t_start: float) -> DetectionResult:
    """The stages of ``detect`` on an open run folder."""
    vocab, tested = vocabulary_stage(run, encoder, settings)
    mean_sim = mean_similarity_stage(run, encoder, vocab)
    scoring, verifying, notes = pairs_stage(run, encoder, corpus, settings, mean_sim)
    scored = scoring_stage(run, encoder, vocab, tested, scoring, settings, show)
    verified = verification_stage(run, encoder, vocab, scored.candidates, verifying, settings, show)
    if settings.fast:
        notes += fast_notes(scored, verified)
    if len(verified.ids) < FEW_CANDIDATES:
        notes.append(few_candidates_note(len(verified.ids)))
        logger.warning("warning: %s", notes[-1])
    if scored.old_parts:
        notes.append(f"{scored.old_parts} of {run.n_parts('score')} scoring parts predate the fix that gives the "
                     "euclidean and manhattan scores their own token distance (they used the cosine one); "
                     "those tokens' euclidean/manhattan scores are the old ones. Cosine scores, the shortlist "
                     "and the decision are unaffected")
    conf = confidence_stage(verified, settings)
    audit_info = audit_stage(run, encoder, vocab, scored, verified, verifying, settings, show)
    return finish(run, encoder, name, settings, vocab, mean_sim, scoring, verifying, scored, verified, notes,
                  t_start, conf, audit_info)
