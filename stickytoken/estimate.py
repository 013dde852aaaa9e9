"""``detect --estimate``: how much work a run is and how long it will take, before starting it.

``estimate(model, **detect_kwargs)`` checks the arguments exactly as ``detect`` does, loads the
model and the vocabulary, and then, without writing any run folder:

1. counts the sequences (forward passes) each stage will encode, exactly as the stages of
   ``api.detect`` encode them (docs/algorithm.md §2-§6; tests/test_estimate.py checks the
   total against ``sequences_encoded_this_session`` of a real run):

   - mean similarity: one sequence per vocabulary entry (V);
   - pair pool: the min(1000, n) sampled corpus sentences, the 2 x pairs of a pairs file
     without similarities, nothing for one with similarities;
   - scoring: 2 P (the stage's references and contrasts) + T (P (2 + R) K + 1): every tested
     token's variants (prefix, suffix, R insert draws, K insertions each) and the token alone;
   - verification: the same with the verification pairs and the C candidates, where C, the
     tokens at or above the (100 - shortlist_percent)th percentile (linear, NumPy's
     default), is n - ceil((n - 1)(1 - percent/100)) when no scores tie at the threshold
     (ties can only add candidates);
   - audit: the same for min(audit, T - C) unshortlisted tokens;
   - fast mode: exhaustive counts (an upper bound) and fast mode's least possible work
     (pilot in full, every other token on one pair, candidates outside the verification
     pilot on the first round of pairs);

2. times the model on this device: real variant texts built by the package's own machinery
   (``score.VariantSequences``) for sampled tested tokens against sentence pairs drawn from the
   corpus, encoded in doubling amounts until a round takes long enough; the 1-3 token rows of
   the mean-similarity stage and the corpus sentences of the pair pool are timed on their own
   (they run at very different rates);

3. predicts each stage's wall time (sequences / measured rate) and the total, and per rank
   for a run split over ``world_size`` ranks (argument, else ``$WORLD_SIZE``): the mean
   similarity and the pair pool are done once, the chunked stages (scoring, verification,
   audit) are split by chunk, so the busiest rank takes ceil(chunks / W) chunks.
"""
from __future__ import annotations

import inspect
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import InputError

logger = logging.getLogger(__name__)

CALIBRATION_SECONDS = 5.0     # the calibration's time scale: its rounds take about 1.2x this in all
MIN_ROUND_SECONDS = 0.25      # a calibration round at least this long is trusted


# ---- counting -------------------------------------------------------------------------------
def shortlist_count(n: int, percent: float) -> int:
    """How many of n scores lie at or above their (100 - percent)th percentile when no two
    scores tie there: the threshold is interpolated between the sorted scores k and k + 1 at
    virtual index (n - 1)(100 - percent)/100 (the arithmetic of ``st_stats_percentiles``), so
    n - k - 1 scores clear it, or n - k when it falls on score k (fraction below 1e-9: the
    interpolation then rounds to score k itself)."""
    if n <= 0:
        return 0
    vi = (n - 1) * ((100.0 - percent) / 100.0)
    if vi >= n - 1:
        return 1
    k = math.floor(vi)
    return n - k if vi - k < 1e-9 else n - k - 1


def variant_sequences(tokens: int, pairs: int, insert_num: int, insert_draws: int = 1, alone: bool = True,
                      references: bool = True) -> int:
    """Sequences a variant stage encodes for ``tokens`` tokens against ``pairs`` pairs: the
    pairs' references and contrasts once (2 P, only when some token is left), every token's
    (2 + R) K variant rows per pair, and each token alone (for td)."""
    if tokens <= 0:
        return 0
    per_token = pairs * (2 + insert_draws) * insert_num + (1 if alone else 0)
    return (2 * pairs if references else 0) + tokens * per_token


@dataclass
class StageEstimate:
    """One stage of the run: its sequences, the rate they were predicted at, and the time."""

    stage: str                  # run.json timing key: mean_similarity, pairs, scoring, verification, audit
    label: str
    sequences: int
    rate: float | None          # sequences per second used for the prediction (None: measured time)
    seconds: float
    chunked: bool = False       # split over ranks by chunk
    rank_sequences: int = 0     # the busiest rank's share (= sequences when not chunked)
    rank_seconds: float = 0.0
    lower_sequences: int | None = None   # fast mode: the least work it can do
    detail: str = ""


@dataclass
class Estimate:
    """What ``detect`` would do with these arguments, and how long it should take."""

    model: str
    device: str
    dtype: str
    batch_size: int
    world_size: int
    settings: dict
    vocab_size: int
    available: int
    tested: int
    candidates: int
    audited: int
    scoring_pairs: int
    verification_pairs: int
    chunk_rows: int
    stages: list[StageEstimate]
    rates: dict[str, float]
    calibration: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def total_sequences(self) -> int:
        return sum(s.sequences for s in self.stages if s.rate is not None)

    @property
    def total_seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    @property
    def rank_seconds(self) -> float:
        return sum(s.rank_seconds for s in self.stages)

    def stage(self, name: str) -> StageEstimate | None:
        return next((s for s in self.stages if s.stage == name), None)

    def to_json(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "stages"},
                "stages": [asdict(s) for s in self.stages], "total_sequences": self.total_sequences,
                "total_seconds": round(self.total_seconds, 3), "rank_seconds": round(self.rank_seconds, 3)}

    def table(self) -> str:
        """The estimate as Markdown: a line on the run, the table, then how it was measured."""
        W = self.world_size
        fast = bool(self.settings.get("fast"))
        head = ["stage", "sequences", "rate (seq/s)", "predicted time"]
        if W > 1:
            head += [f"sequences per rank (W={W})", "time per rank"]
        lines = [f"Estimate for `detect` on {self.model} ({self.device}, {self.dtype}, batch size "
                 f"{self.batch_size}{f', {W} ranks' if W > 1 else ''}): {self.tested:,} of {self.available:,} "
                 f"available tokens scored on {self.scoring_pairs} pairs, about {self.candidates:,} candidates "
                 f"verified on {self.verification_pairs} pairs"
                 + (f", {self.audited:,} audited" if self.audited else "") + ". Nothing was written.", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for s in self.stages:
            seqs = "-" if s.rate is None else f"{s.sequences:,}"
            if fast and s.lower_sequences is not None:
                seqs = f"{s.lower_sequences:,} - {s.sequences:,}"
            row = [s.label + (f" ({s.detail})" if s.detail else ""), seqs,
                   "measured" if s.rate is None else f"{s.rate:,.0f}", duration(s.seconds)]
            if W > 1:
                row += ["-" if s.rate is None else f"{s.rank_sequences:,}", duration(s.rank_seconds)]
            lines.append("| " + " | ".join(row) + " |")
        total = ["**total**", f"**{self.total_sequences:,}**", "", f"**{duration(self.total_seconds)}**"]
        if W > 1:
            total += [f"**{sum(s.rank_sequences for s in self.stages if s.rate is not None):,}**",
                      f"**{duration(self.rank_seconds)}**"]
        lines.append("| " + " | ".join(total) + " |")
        lines.append("")
        c = self.calibration
        lines.append(f"- rates measured here in {c['seconds']:.1f} s: variant rows {self.rates['variants']:,.0f} seq/s "
                     f"({c['variants']['sequences']:,} rows of {c['variants']['tokens']} sampled tokens x "
                     f"{c['variants']['pairs']} corpus pairs, mean {c['variants']['mean_length']:.1f} tokens/row), "
                     f"vocabulary entries {self.rates['vocabulary']:,.0f} seq/s "
                     f"({c['vocabulary']['sequences']:,} rows), sentences {self.rates['sentences']:,.0f} seq/s "
                     f"({c['sentences']['sequences']:,} rows)")
        lines.append(f"- candidates: n - ceil((n - 1)(1 - {self.settings['shortlist_percent']:g}/100)) = "
                     f"{self.candidates:,} for n = {self.tested:,} (exact unless scores tie at the threshold)")
        if W > 1:
            lines.append(f"- per rank: every rank computes the mean similarity and the pair pool (not divided); "
                         f"scoring, verification and audit chunks ({self.chunk_rows:,} rows each) go to rank "
                         f"c mod {W}: the busiest rank's share is shown")
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines)


def duration(seconds: float) -> str:
    """Seconds as '42 s', '3 min 5 s' or '2 h 10 min'."""
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s < 3600:
        m, r = divmod(int(round(s)), 60)
        return f"{m} min {r} s"
    h, r = divmod(int(round(s)), 3600)
    return f"{h} h {r // 60} min"


# ---- calibration ----------------------------------------------------------------------------
def _doubling(run_round, start: int, stop: int, seconds: float) -> dict[str, Any]:
    """Calls ``run_round(n)`` (returning the sequences it encoded) once untimed with n =
    ``start`` to warm the device up, then timed with n = start, then growing (2x to 8x, aiming
    at ``seconds``) up to ``stop``, until a round takes ``seconds``; the rate is the last
    round's, which holds the most rows (the closest to a real stage's batches).  A last round
    shorter than MIN_ROUND_SECONDS (everything there was to time is quick) is repeated and the
    fastest kept.  Returns rate, sequences, seconds and the rounds [n, sequences, seconds]."""
    n = max(1, min(start, stop))
    run_round(n)   # warm-up: first calls pay for lazy initialisation
    rounds = []
    while True:
        t0 = time.perf_counter()
        seqs = run_round(n)
        dt = time.perf_counter() - t0
        rounds.append((n, seqs, dt))
        if dt >= seconds or n >= stop:
            break
        grow = 8.0 if dt <= 0 else min(8.0, max(2.0, seconds / dt))
        n = min(stop, int(math.ceil(n * grow)))
    n, seqs, dt = rounds[-1]
    if dt < MIN_ROUND_SECONDS:
        for _ in range(3):
            t0 = time.perf_counter()
            run_round(n)
            dt = min(dt, time.perf_counter() - t0)
    return {"rate": seqs / max(dt, 1e-9), "sequences": int(seqs), "seconds": round(dt, 4),
            "rounds": [[int(a), int(b), round(c, 4)] for a, b, c in rounds]}


def _counted(encoder, fn) -> int:
    before = encoder.sequences_done
    fn()
    return encoder.sequences_done - before


def calibrate(encoder, vocab, tested: np.ndarray, sentences: list[str], pairs: list[tuple[str, str]],
              settings, seconds: float | None = None, chunk_rows: int = 8192, seed: int = 0) -> dict:
    """Measured encoding rates (sequences/s) on ``encoder``'s device: ``variants`` (real
    variant rows: sampled tested tokens against ``pairs``, through ``VariantSequences``, whose
    time also covers building, tokenizing and the distances), ``vocabulary`` (vocabulary
    entries, the mean-similarity rows) and ``sentences`` (corpus sentences, the pair pool)."""
    from .pairs import POOL_SENTENCES, Pair
    from .score import VariantSequences

    seconds = CALIBRATION_SECONDS if seconds is None else float(seconds)
    t_all = time.perf_counter()
    rng = np.random.default_rng([int(seed), 0xE57])
    out: dict[str, Any] = {}
    # variant rows, the bulk of any run: most of the time goes here
    cal_pairs = [Pair(a, b, 0.0) for a, b in pairs]
    seqs = VariantSequences(encoder, cal_pairs, insertion=settings.insertion, insert_num=settings.insert_num,
                            seed=settings.seed, insert_draws=settings.insert_draws)
    order = rng.permutation(tested)
    per_token = len(cal_pairs) * (2 + settings.insert_draws) * settings.insert_num + 1
    max_tokens = max(1, min(len(order), chunk_rows // per_token))
    last: list[np.ndarray] = []

    def variant_round(n: int) -> int:
        ids = np.sort(order[:n]).astype(np.int64)
        last[:] = [ids]
        return _counted(encoder, lambda: seqs.sequences(ids, [vocab.texts[i] for i in ids.tolist()]))

    v = _doubling(variant_round, 1, max_tokens, seconds * 0.4)
    rows, _ = seqs._variant_rows(last[0], [vocab.texts[i] for i in last[0].tolist()])   # untimed: row lengths
    lens = rows[2] if isinstance(rows, tuple) else encoder.tokenize(rows)[2]
    v.update(tokens=int(len(last[0])), pairs=len(cal_pairs), mean_length=float(np.mean(lens)))
    out["variants"] = v
    # the mean-similarity rows: every vocabulary entry, 1-3 tokens long
    entries = [vocab.tokens[i] for i in rng.permutation(vocab.size).tolist()]
    out["vocabulary"] = _doubling(lambda n: _counted(encoder, lambda: encoder.encode_texts(entries[:n])),
                                  min(2048, len(entries)), len(entries), seconds * 0.1)
    # the pair pool's corpus sentences
    sents = [sentences[i] for i in rng.permutation(len(sentences)).tolist()]
    out["sentences"] = _doubling(lambda n: _counted(encoder, lambda: encoder.encode_texts(sents[:n])),
                                 min(128, len(sents)), min(len(sents), POOL_SENTENCES), seconds * 0.06)
    out["seconds"] = round(time.perf_counter() - t_all, 3)
    return out


def _calibration_text(corpus, n_pairs: int, seed: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Sentences and (reference, contrast) pairs drawn from the run's corpus or pairs file."""
    rng = np.random.default_rng([int(seed), 0xCA1])
    if corpus.pairs is not None:
        plist = corpus.pairs
        pick = rng.choice(len(plist), size=min(n_pairs, len(plist)), replace=False)
        pairs = [plist[i] for i in pick.tolist()]
        sentences = list(dict.fromkeys(s for p in plist for s in p))
        return sentences, pairs
    sents = corpus.sentences
    k = min(len(sents) // 2, n_pairs)
    pick = rng.choice(len(sents), size=2 * k, replace=False).tolist()
    return list(sents), [(sents[pick[2 * i]], sents[pick[2 * i + 1]]) for i in range(k)]


# ---- the estimate ---------------------------------------------------------------------------
def _world_size(world_size: Any) -> int:
    from .api import check_int

    if world_size is None:
        env = os.environ.get("WORLD_SIZE")
        if env in (None, ""):
            return 1
        try:
            world_size = int(env)
        except ValueError as exc:
            raise InputError(f"WORLD_SIZE must be a whole number, got {env!r}") from exc
    return check_int("world_size", world_size)


def estimate(model: Any = None, *, world_size: int | None = None, calibration_seconds: float | None = None,
             **detect_kwargs) -> Estimate:
    """What ``detect(model, **detect_kwargs)`` would do: sequences per stage, measured encoding
    rates on the chosen device, predicted time per stage, in total and per rank.  Writes no
    run folder.  Arguments are checked exactly as ``detect`` checks them (InputError before any
    model work; TypeError for an argument ``detect`` does not take)."""
    from . import api
    from .models import load_model, model_name
    from .pairs import POOL_SENTENCES
    from .runfolder import CHUNK_ROWS_CPU, CHUNK_ROWS_CUDA
    from .score import tokens_per_chunk
    from .vocab import build_vocabulary

    t_start = time.perf_counter()
    bound = inspect.signature(api.detect).bind(model, **detect_kwargs)
    bound.apply_defaults()
    a = dict(bound.arguments)
    W = _world_size(world_size)
    calibration_seconds = CALIBRATION_SECONDS if calibration_seconds is None else calibration_seconds
    if not (isinstance(calibration_seconds, (int, float)) and calibration_seconds > 0):
        raise InputError(f"calibration_seconds must be positive, got {calibration_seconds!r}")
    names = inspect.signature(api.check_settings).parameters
    settings = api.check_settings(**{k: a[k] for k in names if k in a})
    corpus = api.read_corpus(a.get("sentences"), a.get("pairs"))
    api.check_pool(settings, corpus)
    if W > 1 and settings.fast:   # as detect refuses it under torchrun
        raise InputError("fast mode runs in one process; run it without torchrun, or drop --fast")

    st = load_model(model, device=a.get("device"), dtype=a.get("dtype"))
    name = model_name(model if model is not None else st)
    encoder = api.Encoder(st, batch_size=a.get("batch_size"), show_progress_bar=False, prompt=a.get("prompt"),
                          prompt_name=a.get("prompt_name"))
    t_load = time.perf_counter() - t_start
    t0 = time.perf_counter()
    vocab = build_vocabulary(encoder.tokenizer)
    available = vocab.available_ids
    if len(available) == 0:
        raise InputError("no token of this tokenizer can be tested (none re-encodes to itself)")
    if settings.max_tokens is not None and settings.max_tokens < len(available):   # as api.vocabulary_stage
        tested = np.sort(np.random.default_rng(settings.seed).choice(available, size=settings.max_tokens,
                                                                    replace=False))
    else:
        tested = available
    t_vocab = time.perf_counter() - t0

    # ---- counts ------------------------------------------------------------------------------
    V, T = vocab.size, len(tested)
    Ps, Pv, K, R = settings.sent_pair_num, settings.verification_sent_pair_num, settings.insert_num, \
        settings.insert_draws
    C = shortlist_count(T, settings.shortlist_percent)
    N = min(settings.audit, T - C) if settings.audit else 0
    if corpus.pairs is None:
        pool_seqs = min(POOL_SENTENCES, len(corpus.sentences))
        pool_detail = f"{pool_seqs:,} corpus sentences"
    elif corpus.similarities is None:
        pool_seqs = 2 * len(corpus.pairs)
        pool_detail = f"both sentences of {len(corpus.pairs):,} pairs"
    else:
        pool_seqs = 0
        pool_detail = "similarities given"
    device_type = encoder.device.type
    env_rows = os.environ.get("STICKYTOKEN_CHUNK_ROWS")     # as RunFolder.chunk_rows
    chunk_rows = int(env_rows) if env_rows else CHUNK_ROWS_CUDA if device_type == "cuda" else CHUNK_ROWS_CPU

    def busiest(tokens: int, pairs: int) -> int:
        """Tokens of the busiest of W ranks: chunk c goes to rank c mod W (distributed.py)."""
        if W == 1 or tokens == 0:
            return tokens
        per = tokens_per_chunk(pairs, K, chunk_rows, R)
        sizes = [min(per, tokens - c * per) for c in range(-(-tokens // per))]
        return max(sum(sizes[r::W]) for r in range(W))

    scoring = variant_sequences(T, Ps, K, R)
    verification = variant_sequences(C, Pv, K, R)
    audit = variant_sequences(N, Pv, K, R)
    lower: dict[str, int | None] = {"scoring": None, "verification": None}
    notes = []
    if settings.fast:
        fs = settings.fast_settings
        pilot = min(T, max(int(fs.pilot_min), int(math.ceil(fs.pilot * T))))
        rest = T - pilot
        # fast scoring: pilot in full, the others one pair at a time (each alone once)
        scoring = variant_sequences(pilot, Ps, K) + rest * (Ps * 3 * K + 1)
        lower["scoring"] = variant_sequences(pilot, Ps, K) + rest * (3 * K + 1)
        vp = min(C, max(int(fs.verify_pilot_min), int(math.ceil(fs.verify_pilot * C))))
        first = min(Pv, min([int(r) for r in fs.verify_rounds if int(r) >= 1] or [Pv]))
        verification = (2 * Pv if C else 0) + C * Pv * 3 * K          # no token-alone rows in fast verification
        lower["verification"] = (2 * Pv if C else 0) + vp * Pv * 3 * K + (C - vp) * first * 3 * K
        notes.append(f"fast mode: how much work it skips depends on the scores, so each of its stages shows the "
                     f"least and the most it can encode; times are for the most (the exhaustive amount; measured "
                     f"on the whole vocabulary, fast mode did about 60-65% of it)")

    # ---- rates -------------------------------------------------------------------------------
    sentences, cal_pairs = _calibration_text(corpus, 8, settings.seed)
    cal = calibrate(encoder, vocab, tested, sentences, cal_pairs, settings, calibration_seconds, chunk_rows,
                    settings.seed)
    rates = {k: float(cal[k]["rate"]) for k in ("variants", "vocabulary", "sentences")}

    def stage(key, label, seqs, rate_key, chunked=False, rank_seqs=None, detail="", low=None):
        rate = rates[rate_key]
        rank_seqs = seqs if rank_seqs is None else rank_seqs
        return StageEstimate(key, label, int(seqs), rate, seqs / rate, chunked, int(rank_seqs), rank_seqs / rate,
                             low, detail)

    def rank_share(tokens: int, pairs: int) -> int:
        return variant_sequences(busiest(tokens, pairs), pairs, K, R)

    stages = [
        StageEstimate("load", "model load, vocabulary", 0, None, t_load + t_vocab, rank_seconds=t_load + t_vocab,
                      detail="measured"),
        stage("mean_similarity", "mean similarity", V, "vocabulary", detail=f"{V:,} vocabulary entries"),
        stage("pairs", "pair pool", pool_seqs, "sentences", detail=pool_detail),
        stage("scoring", "scoring", scoring, "variants", True,
              scoring if settings.fast else rank_share(T, Ps), low=lower["scoring"],
              detail=f"{T:,} tokens x {Ps} pairs x {2 + R} variants x {K}"),
        stage("verification", "verification", verification, "variants", True,
              verification if settings.fast else rank_share(C, Pv), low=lower["verification"],
              detail=f"{C:,} candidates x {Pv} pairs x {2 + R} variants x {K}"),
    ]
    if settings.audit:
        stages.append(stage("audit", "audit", audit, "variants", True, rank_share(N, Pv),
                            detail=f"{N:,} tokens x {Pv} pairs x {2 + R} variants x {K}"))
    notes.append(f"scoring and verification assume {Ps} and {Pv} pairs lie below the mean similarity (with fewer, "
                 "all of them are used, with a warning, and the run is shorter)")
    out = a.get("output")
    if out is not None and os.path.exists(os.path.join(os.fspath(out), "run.json")):
        notes.append(f"{os.fspath(out)} already holds a run: a real run resumes it (or reads it back) and does "
                     "only the work left")
    if C < api.FEW_CANDIDATES:
        notes.append(f"the fence would rest on {C} candidate(s) (fewer than {api.FEW_CANDIDATES}): the verdict "
                     "would mean little; see --max-tokens in the README")
    return Estimate(
        model=name, device=str(encoder.device), dtype=str(encoder.dtype).replace("torch.", ""),
        batch_size=int(encoder.batch_size), world_size=W,
        settings={k: v for k, v in asdict(settings).items() if k != "fast_settings"},
        vocab_size=V, available=len(available), tested=T, candidates=C, audited=N, scoring_pairs=Ps,
        verification_pairs=Pv, chunk_rows=chunk_rows, stages=stages, rates=rates, calibration=cal, notes=notes)


# ---- the command line -------------------------------------------------------------------------
def from_args(args) -> Estimate:
    """``estimate`` with the arguments of ``python -m stickytoken detect`` (cli.py)."""
    from . import api

    names = inspect.signature(api.detect).parameters
    kwargs = {k: getattr(args, k) for k in names if k != "model" and hasattr(args, k)}
    kwargs.pop("show_progress_bar", None)
    return estimate(args.model, **kwargs)
