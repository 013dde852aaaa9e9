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

2. times the model on this device in a few seconds: it builds real variant rows with the
   package's own machinery (``score.VariantSequences``) for sampled tested tokens against
   sentence pairs drawn from the corpus, timing the work outside the model (building,
   tokenizing, distances) per row, and then times forward passes of real rows, full batches
   and small ones, at typical widths of those rows, of the vocabulary entries (1-3 tokens,
   the mean similarity's rows) and of the corpus sentences.  From these it fits the seconds
   of one forward pass of r rows of w tokens, alpha + beta r w + gamma r + delta r w^2
   (alpha, what a pass costs whatever its size, matters on a GPU and on a busy CPU);

3. predicts each stage's wall time by passing its rows through the encoder's own batching
   (``Encoder._batch_stop``) with that cost: the mean similarity's and the pair pool's rows
   exactly (their texts are known), the variant stages chunk by chunk with row lengths
   resampled from the calibration's real rows; and per rank for a run split over
   ``world_size`` ranks (argument, else ``$WORLD_SIZE``): every rank computes the mean
   similarity and the pair pool, chunk c of scoring, verification and audit goes to rank
   c mod W (``distributed.py``), so the busiest rank's chunks are shown.
"""
from __future__ import annotations

import inspect
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from .errors import InputError

logger = logging.getLogger(__name__)

CALIBRATION_SECONDS = 5.0     # the timed forward passes are repeated while they took less than 0.4x this


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
                      references: bool = True, shared: int = 0) -> int:
    """Sequences a variant stage encodes for ``tokens`` tokens against ``pairs`` pairs: the
    pairs' references and contrasts once (2 P, only when some token is left), every token's
    (2 + R) K variant rows per pair, less the 2 K prefix and suffix rows of each of the
    ``shared`` pairs whose contrast an earlier pair has (``score.VariantSequences``), and each
    token alone (for td)."""
    if tokens <= 0:
        return 0
    per_token = variant_rows(pairs, insert_num, insert_draws, shared) + (1 if alone else 0)
    return (2 * pairs if references else 0) + tokens * per_token


def variant_rows(pairs: int, insert_num: int, insert_draws: int = 1, shared: int = 0) -> int:
    """Variant rows the model embeds per token (see ``variant_sequences``)."""
    return pairs * (2 + insert_draws) * insert_num - 2 * insert_num * shared


def shared_contrasts(pairs) -> int:
    """Pairs whose contrast an earlier pair has (their prefix and suffix rows are shared)."""
    return len(pairs) - len({p.contrast for p in pairs})


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
    workers: int = 0   # processes building rows ahead of the model (detect --workers)

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
        c, k = self.calibration, self.calibration["cost"]
        built = "; ".join(f"{name} pairs: {r['sequences']:,} rows, {r['tokens']} sampled tokens x {r['pairs']} pairs, "
                          f"mean {r['mean_length']:.1f} tokens" for name, r in c["rows"].items())
        lines.append(f"- timed here in {c['seconds']:.1f} s ({c['forward_passes']} forward passes of real rows): a "
                     f"pass of r rows of w tokens takes {k['alpha'] * 1e3:.2f} ms + {k['beta'] * 1e6:.3f} us x r w + "
                     f"{k['gamma'] * 1e6:.1f} us x r + {k['delta'] * 1e9:.1f} ns x r w^2, and building, tokenizing "
                     f"and measuring a variant row {c['overhead_per_row'] * 1e6:.0f} us more "
                     f"({c.get('build_per_row', 0) * 1e6:.0f} us of it building and tokenizing, "
                     f"{'in this process' if not self.workers else f'spread over {self.workers} workers while the model runs'}"
                     f"); each stage's rows go "
                     f"through the encoder's own batching (the mean similarity's and the pair pool's exactly; "
                     f"variant rows resampled from real ones built by the package: {built})")
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


# ---- the cost of a forward pass ---------------------------------------------------------------
def encoder_batches(encoder, lengths) -> tuple[np.ndarray, np.ndarray]:
    """The batches ``Encoder.embed_ids`` forms for rows of these lengths (its own
    ``_batch_stop``: rows sorted by length, one length a batch, as many rows as the token budget
    allows): rows and width of each batch."""
    sl = np.sort(np.asarray(lengths, dtype=np.int64))
    rows, widths = [], []
    start = 0
    while start < len(sl):
        stop = encoder._batch_stop(sl, start)
        rows.append(stop - start)
        widths.append(int(sl[stop - 1]))
        start = stop
    return np.asarray(rows, dtype=np.float64), np.asarray(widths, dtype=np.float64)


@dataclass
class ForwardCost:
    """Seconds one forward pass of r rows of w tokens takes on this device: alpha + beta r w +
    gamma r + delta r w^2 (fitted on timed forward passes; alpha is what a pass costs whatever
    its size: launches, Python, thread start-up, which on a busy CPU can dwarf the rest; delta
    is attention's share, which grows with the square of the width)."""

    alpha: float
    beta: float
    gamma: float
    delta: float = 0.0

    def batch_seconds(self, rows: np.ndarray, widths: np.ndarray) -> float:
        r = np.maximum(rows, 2)   # a lone row runs as two copies (encoder.embed_ids)
        return float(np.sum(self.alpha + self.beta * r * widths + self.gamma * r + self.delta * r * widths ** 2))

    def seconds(self, encoder, lengths) -> float:
        """Forward time of encoding rows of these lengths in one call."""
        return 0.0 if len(lengths) == 0 else self.batch_seconds(*encoder_batches(encoder, lengths))


def fit_cost(samples: list[tuple[int, int, float]]) -> ForwardCost:
    """Non-negative least squares of t = alpha + beta r w + gamma r + delta r w^2 over (rows,
    width, seconds)."""
    from scipy.optimize import nnls

    r = np.array([s[0] for s in samples], dtype=np.float64)
    w = np.array([s[1] for s in samples], dtype=np.float64)
    t = np.array([s[2] for s in samples], dtype=np.float64)
    X = np.stack([np.ones_like(r), r * w, r, r * w * w], axis=1)
    scale = X.max(axis=0)
    coef, _ = nnls(X / scale, t)
    coef = coef / scale
    if not np.any(coef[1:] > 0):   # degenerate (all passes alike): per token only
        coef = np.array([0.0, float(t.sum() / (r * w).sum()), 0.0, 0.0])
    return ForwardCost(*(float(c) for c in coef))


@contextmanager
def timed_forwards(encoder, log: list):
    """Every forward pass ``encoder`` makes inside the block appended to ``log`` as (rows,
    width, seconds); on CUDA the device is synchronised around each pass so its time is the
    pass's own."""
    import torch

    inner = encoder._forward
    cuda = encoder.device.type == "cuda"

    def timed(ids, mask=None):
        if mask is None:
            encoder.settle_mask(ids)   # (untimed: the first batch without padding also runs without the mask)
        if cuda:
            torch.cuda.synchronize(encoder.device)
        t0 = time.perf_counter()
        out = inner(ids, mask)
        if cuda:
            torch.cuda.synchronize(encoder.device)
        log.append((int(ids.shape[0]), int(ids.shape[1]), time.perf_counter() - t0))
        return out

    encoder._forward = timed
    try:
        yield log
    finally:
        del encoder._forward


def _full_batch(encoder, width: int) -> int:
    """Rows in a full batch of rows of this width."""
    return int(encoder._batch_stop(np.full(encoder.batch_size * encoder.ROW_GROWTH + 1, width), 0))


def _probe(encoder, ids: np.ndarray, lengths: np.ndarray, width: int, rows: int, repeats: int = 1) -> None:
    """Forward passes of ``rows`` copies of a real row of ``width`` tokens (logged by
    timed_forwards)."""
    import torch

    pick = np.flatnonzero(lengths == width)
    if not len(pick):
        return
    x = torch.from_numpy(np.ascontiguousarray(np.repeat(ids[pick[:1], :width], rows, axis=0)))
    with torch.inference_mode():
        for _ in range(repeats):
            encoder._forward(x)   # (rows without padding, as in a run)


CALIBRATION_TOKENS = 32   # sampled tested tokens whose variant rows the calibration builds (against the scoring
#                          pairs; a quarter of them against up to 64 of the verification pairs)


def calibrate(encoder, vocab, tested: np.ndarray, pair_sets: dict[str, tuple[list[tuple[str, str]], int, int]],
              settings, probes: dict, seconds: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Times this device.  For each pair set (name -> ((reference, contrast) pairs, the stage's
    seed, n)) builds the real variant rows (``score.VariantSequences``, the package's own
    machinery) of n sampled tested tokens, timing the work outside the model
    (building, tokenizing, distances) per row; then times forward passes of real rows, full
    batches and small ones, at typical widths of those rows and of ``probes`` (name -> (ids,
    lengths) of tokenized rows: vocabulary entries, corpus sentences), repeating the set while
    it has taken less than 0.4 ``seconds`` (at least 2, at most 5 times), and fits
    ``ForwardCost`` to each shape's fastest pass.  Returns the cost (as ``cost``), each set's variant row lengths (``row_lengths``, to
    resample stages from), the time per variant row outside the model (``overhead_per_row``)
    and a record."""
    import torch

    from . import _core
    from .pairs import Pair
    from .score import VariantSequences

    seconds = CALIBRATION_SECONDS if seconds is None else float(seconds)
    t_all = time.perf_counter()
    rng = np.random.default_rng([int(seed), 0xE57])
    log: list[tuple[int, int, float]] = []
    sample = rng.choice(tested, size=min(len(tested), max(n for _, _, n in pair_sets.values())), replace=False)
    row_lengths: dict[str, np.ndarray] = {}
    record: dict[str, Any] = {}
    all_ids, all_lengths = [], []
    outside, building, n_rows = 0.0, 0.0, 0
    for name, (pairs, stage_seed, n_tokens) in pair_sets.items():
        ids = np.sort(sample[:n_tokens]).astype(np.int64)
        texts = [vocab.texts[i] for i in ids.tolist()]
        seqs = VariantSequences(encoder, [Pair(a, b, 0.0) for a, b in pairs], insertion=settings.insertion,
                                insert_num=settings.insert_num, seed=stage_seed, insert_draws=settings.insert_draws)
        # outside the model: build the rows, tokenize them, measure distances (on stand-in embeddings)
        t0 = time.perf_counter()
        rows = seqs.rows(ids, texts)
        building += time.perf_counter() - t0
        index = rows.index
        r_ids, _ = rows.padded(encoder.pad_id)
        r_lengths = rows.lengths
        fake = torch.zeros((len(r_lengths), seqs.ref_emb.shape[1]), dtype=seqs.ref_emb.dtype)
        _core.row_distances(fake, seqs.ref_emb, np.ascontiguousarray(np.asarray(index)[:, 1]))
        outside += time.perf_counter() - t0
        n_rows += len(r_lengths)
        row_lengths[name] = r_lengths
        all_ids.append(r_ids)
        all_lengths.append(r_lengths)
        record[name] = {"tokens": int(len(ids)), "pairs": len(pairs), "sequences": int(len(r_lengths)),
                        "mean_length": round(float(np.mean(r_lengths)), 3)}
    # forward passes of real rows: full batches at typical widths, and small ones
    lengths = np.concatenate(all_lengths)
    width = max(a.shape[1] for a in all_ids)
    row_ids = np.concatenate([np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=int(encoder.pad_id))
                              for a in all_ids])
    widths = sorted({int(np.percentile(lengths, q, method="nearest")) for q in (10, 30, 50, 70, 90)})
    plan = [(row_ids, lengths, w, _full_batch(encoder, w)) for w in widths]
    plan += [(row_ids, lengths, widths[len(widths) // 2], r) for r in (2, 8)]
    for p_ids, p_lengths in probes.values():
        if len(p_lengths):
            w = int(np.percentile(p_lengths, 50, method="nearest"))
            plan += [(p_ids, p_lengths, w, _full_batch(encoder, w)), (p_ids, p_lengths, w, 8)]
    with timed_forwards(encoder, log):
        _probe(encoder, *plan[0])   # warm-up at the first full width
        del log[:]
        t_probe, repeats = time.perf_counter(), 0
        while repeats < 2 or (repeats < 5 and time.perf_counter() - t_probe < seconds * 0.4):
            for item in plan:
                _probe(encoder, *item)
            repeats += 1
    # each shape's fastest pass: the first pass of a new shape also pays for fresh memory, and
    # other processes only ever add time
    best: dict[tuple[int, int], float] = {}
    for r, w, t in log:
        best[(r, w)] = min(t, best.get((r, w), t))
    return {"cost": fit_cost([(r, w, t) for (r, w), t in best.items()]), "row_lengths": row_lengths, "overhead_per_row": outside / max(1, n_rows),
            "build_per_row": building / max(1, n_rows),
            "rows": record, "forward_passes": len(log), "probe_repeats": repeats,
            "passes": [[r, w, round(t, 5)] for r, w, t in log], "seconds": round(time.perf_counter() - t_all, 3)}


def _calibration_pairs(corpus, n_pairs: int, seed: int) -> list[tuple[str, str]]:
    """(reference, contrast) pairs drawn at random from the run's corpus or pairs file."""
    rng = np.random.default_rng([int(seed), 0xCA1])
    if corpus.pairs is not None:
        pick = rng.choice(len(corpus.pairs), size=min(n_pairs, len(corpus.pairs)), replace=False)
        return [corpus.pairs[i] for i in pick.tolist()]
    sents = corpus.sentences
    k = max(1, min(len(sents) // 2, n_pairs))
    pick = rng.choice(len(sents), size=2 * k, replace=False).tolist()
    return [(sents[pick[2 * i]], sents[pick[2 * i + 1]]) for i in range(k)]


PREVIEW_POOL = 4000          # the likely stage pairs are previewed when the pool costs at most this many sequences
PREVIEW_VOCABULARY = 4096    # vocabulary entries sampled for the preview's mean similarity


def preview_pairs(encoder, vocab, corpus, settings, rng) -> dict[str, Any] | None:
    """The stage pairs a run would most likely use, found as the run finds them (the same pool:
    ``pairs.build_pool`` / ``pool_from_pairs``, the same ``stage_pairs``) but against a mean
    similarity estimated from a sample of PREVIEW_VOCABULARY vocabulary entries (exact for a
    smaller vocabulary).  Returns the scoring and verification pairs, how many pairs lie below
    that mean, the estimated mean and the sequences spent; None when the pool would cost more
    than PREVIEW_POOL sequences (random corpus pairs stand in then)."""
    import torch

    from .pairs import POOL_SENTENCES, build_pool, pool_from_pairs, stage_pairs

    if corpus.pairs is None:
        cost = min(POOL_SENTENCES, len(corpus.sentences))
    else:
        cost = 0 if corpus.similarities is not None else 2 * len(corpus.pairs)
    if cost > PREVIEW_POOL:
        return None
    before = encoder.sequences_done
    V = vocab.size
    if V <= PREVIEW_VOCABULARY:
        mean = encoder.mean_similarity(vocab.tokens) if hasattr(encoder, "mean_similarity") else None
        if mean is None:
            from . import _core

            mean = float(_core.mean_similarity(encoder.encode_texts(vocab.tokens)))
    else:   # unbiased off-diagonal mean of the sample, with the run's diagonal share 1/V put back
        pick = rng.choice(V, size=PREVIEW_VOCABULARY, replace=False)
        emb = encoder.encode_texts([vocab.tokens[i] for i in pick.tolist()]).to(dtype=torch.float64)
        norm = emb.norm(dim=1, keepdim=True)
        unit = emb / norm.clamp_min(1e-300)
        total = unit.sum(dim=0)
        n = float(len(pick))
        off = (float(total @ total) - float((norm > 0).sum())) / (n * (n - 1))
        mean = off * (V - 1) / V + 1.0 / V
    if corpus.pairs is None:
        pool = build_pool(corpus.sentences, encoder, settings.seed)
    else:
        pool = pool_from_pairs(corpus.pairs, corpus.similarities, encoder)
    below = [p for p in pool if p.similarity < mean]
    out: dict[str, Any] = {"mean_similarity": float(mean), "below": len(below),
                           "sequences": encoder.sequences_done - before}
    for key, n in (("scoring", settings.sent_pair_num), ("verification", settings.verification_sent_pair_num)):
        if not below:
            out[key] = []
        elif len(below) < n:   # as stage_pairs: all of them (it would warn; the estimate notes it instead)
            out[key] = sorted(below, key=lambda p: p.similarity)
        else:
            out[key] = stage_pairs(pool, mean, n, key)[0]
    return out


SAMPLE_ROWS = 65536   # texts tokenized to learn a stage's row lengths (more are resampled)


def _lengths(encoder, texts: list[str], rng) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """``texts`` tokenized (a sample of SAMPLE_ROWS when there are more): the sample's ids and
    lengths, lengths for all the texts (the sample's, resampled when it is one), and the
    seconds tokenizing all of them takes."""
    n = len(texts)
    if n == 0:
        return np.zeros((0, 1), np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), 0.0
    sample = texts if n <= SAMPLE_ROWS else [texts[i] for i in rng.choice(n, SAMPLE_ROWS, replace=False).tolist()]
    t0 = time.perf_counter()
    ids, _, lengths = encoder.tokenize(sample)
    dt = (time.perf_counter() - t0) * n / len(sample)
    return ids, lengths, (lengths if n <= SAMPLE_ROWS else rng.choice(lengths, n)), dt


def variant_stage_seconds(cost: ForwardCost, encoder, n_tokens: int, pairs: int, insert_num: int,
                          insert_draws: int, per: int, row_lengths: np.ndarray, alone_lengths: np.ndarray,
                          ref_lengths: np.ndarray, overhead_per_row: float, world: int, rng,
                          samples: int = 3, build_per_row: float = 0.0, workers: int = 0,
                          shared: int = 0) -> tuple[float, float]:
    """Predicted seconds of a chunked variant stage, in all and for the busiest of ``world``
    ranks (chunk c on rank c mod world): each chunk's variant rows (lengths resampled from the
    calibration's real rows) and tokens alone go through the encoder's batching and the fitted
    cost, plus the time outside the model per variant row; each rank that computes a chunk
    first embeds the stage's references and contrasts.  With ``workers`` building the rows
    (``build_per_row`` of the overhead) ahead of the model, a chunk takes the longer of the
    model's time and the workers' share of the building, plus the rest of the overhead.
    ``shared``: pairs whose prefix and suffix rows another pair's are (``variant_rows``)."""
    if n_tokens <= 0:
        return 0.0, 0.0
    sizes = [min(per, n_tokens - c * per) for c in range(-(-n_tokens // per))]
    memo: dict[int, float] = {}

    def chunk_seconds(size: int) -> float:
        if size not in memo:
            rows = size * variant_rows(pairs, insert_num, insert_draws, shared)
            model = np.mean([cost.seconds(encoder, rng.choice(row_lengths, rows))
                             + cost.seconds(encoder, rng.choice(alone_lengths, size)) for _ in range(samples)])
            if workers > 0:
                memo[size] = max(float(model), build_per_row * rows / workers) \
                    + (overhead_per_row - build_per_row) * rows
            else:
                memo[size] = float(model) + overhead_per_row * rows
        return memo[size]

    times = [chunk_seconds(s) for s in sizes]
    refs = cost.seconds(encoder, rng.choice(ref_lengths, 2 * pairs)) if len(ref_lengths) else 0.0
    total = sum(times) + refs
    rank = max(sum(times[r::world]) + (refs if times[r::world] else 0.0) for r in range(world))
    return total, rank


# ---- the estimate -----------------------------------------------------------------------------
def _world_size(world_size: Any) -> int:
    from .errors import check_int

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
    """What ``detect(model, **detect_kwargs)`` would do: sequences per stage, the time each
    should take on the chosen device (timed here in a few seconds), in total and per rank.
    Writes no run folder.  Arguments are checked exactly as ``detect`` checks them (InputError
    before any model work; TypeError for an argument ``detect`` does not take)."""
    from . import api
    from .models import load_model, model_name
    from .pairs import POOL_SENTENCES
    from .runfolder import CHUNK_ROWS_CPU, CHUNK_ROWS_CUDA, RunFolder, default_folder, opened_run
    from .score import tokens_per_chunk
    from .vocab import build_vocabulary

    t_start = time.perf_counter()
    bound = inspect.signature(api.detect).bind(model, **detect_kwargs)
    bound.apply_defaults()
    a = dict(bound.arguments)
    W = _world_size(world_size)
    calibration_seconds = CALIBRATION_SECONDS if calibration_seconds is None else calibration_seconds
    if isinstance(calibration_seconds, bool) or not isinstance(calibration_seconds, (int, float)) \
            or not calibration_seconds > 0:
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
                          prompt_name=a.get("prompt_name"), workers=a.get("workers"))
    t_load = time.perf_counter() - t_start
    identity = api.run_identity(encoder, name, settings, corpus)
    out = a.get("output")
    api.check_output_argument(out)
    folder = None if out is False else os.fspath(out) if out is not None else default_folder(name, identity)
    held = None if folder is None else opened_run(folder, identity)   # refused as detect would refuse it
    t0 = time.perf_counter()
    vocab = build_vocabulary(encoder.tokenizer)
    available = vocab.available_ids
    if len(available) == 0:
        raise InputError("no token of this tokenizer can be tested (none re-encodes to itself)")
    tested = api.tested_tokens(available, settings)   # as api.vocabulary_stage
    t_vocab = time.perf_counter() - t0

    # ---- the pairs the stages will likely use ---------------------------------------------------
    rng = np.random.default_rng([int(settings.seed), 0xE5])
    preview = preview_pairs(encoder, vocab, corpus, settings, rng)
    notes = []
    if preview is not None:
        below = preview["below"]
        notes.append(f"pairs previewed as the run picks them: the pool built as the run builds it, against a mean "
                     f"similarity of {preview['mean_similarity']:.4f} (from "
                     f"{'all' if vocab.size <= PREVIEW_VOCABULARY else f'{PREVIEW_VOCABULARY:,} sampled'} vocabulary "
                     f"entries); {below:,} pool pairs lie below it")
        if below == 0:
            notes.append("no pool pair lies below the mean similarity: the run would stop with an error after the pair "
                         "pool (give a larger corpus or a pairs file)")
        for key, n in (("scoring", settings.sent_pair_num), ("verification", settings.verification_sent_pair_num)):
            if 0 < below < n:
                notes.append(f"{key}: only about {below} pairs lie below the mean similarity; the run will use those "
                             f"(with a warning) instead of {n}, and the counts here do too")
    else:
        notes.append(f"scoring and verification assume {settings.sent_pair_num} and "
                     f"{settings.verification_sent_pair_num} pairs lie below the mean similarity (with fewer, all of "
                     "them are used, with a warning, and the run is shorter); variant rows timed against random corpus "
                     "pairs (the pool is too large to preview)")

    if a.get("compile"):
        notes.append("timed uncompiled: --compile adds tens of seconds of compiling at the start, then runs the model "
                     "faster (all-MiniLM-L6-v2 on a 2-core CPU: 21% in bfloat16, 7% in float32); neither is in "
                     "these figures")

    # ---- counts ------------------------------------------------------------------------------
    V, T = vocab.size, len(tested)
    Ps, Pv, K, R = settings.sent_pair_num, settings.verification_sent_pair_num, settings.insert_num, \
        settings.insert_draws
    if preview is not None and preview["below"]:
        Ps, Pv = len(preview["scoring"]), len(preview["verification"])
    C = shortlist_count(T, settings.shortlist_percent)
    N = min(settings.audit, T - C) if settings.audit else 0
    if corpus.pairs is None:   # the pool's sentences, drawn as pairs.build_pool draws them
        take = min(POOL_SENTENCES, len(corpus.sentences))
        pick = np.sort(np.random.default_rng(settings.seed).choice(len(corpus.sentences), size=take, replace=False))
        pool_texts = [[corpus.sentences[i] for i in pick.tolist()]]
        pool_detail = f"{take:,} corpus sentences"
    elif corpus.similarities is None:   # pairs.pool_from_pairs: the first sentences, then the second ones
        pool_texts = [[p[0] for p in corpus.pairs], [p[1] for p in corpus.pairs]]
        pool_detail = f"both sentences of {len(corpus.pairs):,} pairs"
    else:
        pool_texts = []
        pool_detail = "similarities given"
    pool_seqs = sum(len(t) for t in pool_texts)
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

    Ss = Sv = 0    # pairs sharing a contrast with an earlier one (known when previewed)
    if preview is not None and preview["below"]:
        Ss, Sv = shared_contrasts(preview["scoring"]), shared_contrasts(preview["verification"])
    scoring = variant_sequences(T, Ps, K, R, shared=Ss)
    verification = variant_sequences(C, Pv, K, R, shared=Sv)
    audit = variant_sequences(N, Pv, K, R, shared=Sv)
    fast_counts: dict[str, tuple[int, int]] = {}
    if settings.fast:
        fs = settings.fast_settings
        pilot = min(T, max(int(fs.pilot_min), int(math.ceil(fs.pilot * T))))
        rest = T - pilot
        # fast scoring: the pilot in full, the others one pair at a time (each token alone once)
        fast_counts["scoring"] = (variant_sequences(pilot, Ps, K) + rest * (3 * K + 1),
                                  variant_sequences(pilot, Ps, K) + rest * (Ps * 3 * K + 1))
        vp = min(C, max(int(fs.verify_pilot_min), int(math.ceil(fs.verify_pilot * C))))
        first = min(Pv, min([int(r) for r in fs.verify_rounds if int(r) >= 1] or [Pv]))
        refs = 2 * Pv if C else 0            # and no token-alone rows in fast verification
        fast_counts["verification"] = (refs + vp * Pv * 3 * K + (C - vp) * first * 3 * K, refs + C * Pv * 3 * K)
        notes.append("fast mode: how much work it skips depends on the scores, so its stages show the least and "
                     "the most they can encode; times are for the most (measured on the whole vocabulary, fast "
                     "mode did about 60-65% of the exhaustive work)")

    # ---- timing ------------------------------------------------------------------------------
    vocab_ids, vocab_sample, vocab_lengths, vocab_tok = _lengths(encoder, vocab.tokens, rng)
    pool_lengths = []
    pool_tok = 0.0
    for texts in pool_texts:
        _, _, lengths, seconds = _lengths(encoder, texts, rng)
        pool_lengths.append(lengths)
        pool_tok += seconds
    if corpus.pairs is None:
        ref_texts = pool_texts[0]
    else:
        ref_texts = [s for p in corpus.pairs[:SAMPLE_ROWS // 2] for s in p]
    ref_ids, ref_sample, ref_lengths, _ = _lengths(encoder, ref_texts, rng)
    if settings.insertion == "token":
        fp, fs_ = encoder.token_frame()
        alone_lengths = np.array([len(fp) + 1 + len(fs_)])
    else:
        alone_sample = rng.choice(tested, size=min(T, 4096), replace=False)
        alone_lengths = encoder.tokenize([vocab.texts[i] for i in alone_sample.tolist()])[2]
    if preview is not None and preview["below"]:
        ver = preview["verification"]
        pick = np.unique(np.linspace(0, len(ver) - 1, min(len(ver), 64)).round().astype(int))
        pair_sets = {"scoring": ([(p.reference, p.contrast) for p in preview["scoring"]], settings.seed,
                                 CALIBRATION_TOKENS),
                     "verification": ([(ver[i].reference, ver[i].contrast) for i in pick.tolist()], settings.seed + 1,
                                      max(1, CALIBRATION_TOKENS // 4))}
    else:
        pair_sets = {"random": (_calibration_pairs(corpus, 8, settings.seed), settings.seed, CALIBRATION_TOKENS)}
    cal = calibrate(encoder, vocab, tested, pair_sets, settings,
                    {"vocabulary": (vocab_ids, vocab_sample), "sentences": (ref_ids, ref_sample)},
                    calibration_seconds, settings.seed)
    cost: ForwardCost = cal.pop("cost")
    row_lengths = cal.pop("row_lengths")

    def chunked(tokens: int, pairs: int, stage_name: str, shared: int) -> tuple[float, float]:
        per = tokens_per_chunk(pairs, K, chunk_rows, R)
        lengths = row_lengths.get(stage_name, next(iter(row_lengths.values())))
        return variant_stage_seconds(cost, encoder, tokens, pairs, K, R, per, lengths, alone_lengths,
                                     ref_lengths, cal["overhead_per_row"], W, rng,
                                     build_per_row=cal["build_per_row"], workers=encoder.workers, shared=shared)

    def stage(key, label, seqs, seconds, rank_seqs, rank_seconds, detail, chunked_stage=True):
        low = None
        if key in fast_counts:   # fast mode: the most it can do, timed at the exhaustive stage's rate
            low, most = fast_counts[key]
            seconds = rank_seconds = seconds * most / max(seqs, 1)
            seqs = rank_seqs = most
        return StageEstimate(key, label, int(seqs), seqs / seconds if seconds > 0 else 0.0, float(seconds),
                             chunked_stage, int(rank_seqs), float(rank_seconds), low, detail)

    # the mean similarity streams the vocabulary through the encoder stream_rows() entries at a time
    stream = int(encoder.stream_rows()) if hasattr(encoder, "stream_rows") else max(1, V)
    mean_s = sum(cost.seconds(encoder, vocab_lengths[i:i + stream]) for i in range(0, V, stream)) + vocab_tok
    pool_s = sum(cost.seconds(encoder, lens) for lens in pool_lengths) + pool_tok
    def less(shared: int) -> str:
        return f" (the prefix and suffix rows of {shared} pairs are another pair's)" if shared else ""

    score_s, score_rank = chunked(T, Ps, "scoring", Ss)
    verify_s, verify_rank = chunked(C, Pv, "verification", Sv)
    stages = [
        StageEstimate("load", "model load, vocabulary", 0, None, t_load + t_vocab, rank_seconds=t_load + t_vocab,
                      detail="measured"),
        stage("mean_similarity", "mean similarity", V, mean_s, V, mean_s, f"{V:,} vocabulary entries", False),
        stage("pairs", "pair pool", pool_seqs, pool_s, pool_seqs, pool_s, pool_detail, False),
        stage("scoring", "scoring", scoring, score_s, variant_sequences(busiest(T, Ps), Ps, K, R, shared=Ss),
              score_rank, f"{T:,} tokens x {Ps} pairs x {2 + R} variants x {K}{less(Ss)}"),
        stage("verification", "verification", verification, verify_s,
              variant_sequences(busiest(C, Pv), Pv, K, R, shared=Sv), verify_rank,
              f"{C:,} candidates x {Pv} pairs x {2 + R} variants x {K}{less(Sv)}"),
    ]
    if settings.audit:
        audit_s, audit_rank = chunked(N, Pv, "verification", Sv)
        stages.append(stage("audit", "audit", audit, audit_s, variant_sequences(busiest(N, Pv), Pv, K, R, shared=Sv),
                            audit_rank, f"{N:,} tokens x {Pv} pairs x {2 + R} variants x {K}{less(Sv)}"))
    if W > 1 and device_type == "cpu":
        notes.append("per-rank times assume every rank runs as fast as this process alone (its own cores); ranks "
                     "that share these CPU cores share their speed too")
    if device_type == "cpu" and cost.alpha > 0.05:
        notes.append(f"a forward pass costs {cost.alpha * 1e3:.0f} ms here whatever its size: the CPU is probably "
                     "shared with other busy processes (PyTorch then waits for its own threads); the prediction "
                     "holds only while the load stays as it is")
    if held is not None:
        run = RunFolder.existing(folder)   # (opened to read: nothing is made or changed in it)
        rows = int(run.run.get("chunk_rows") or chunk_rows)   # (a resumed run cuts the chunks it began with)
        stages = _work_left(stages, run, folder, settings, notes, {
            "scoring": (T, tokens_per_chunk(Ps, K, rows, R), lambda n: variant_sequences(n, Ps, K, R, shared=Ss)),
            "verification": (C, tokens_per_chunk(Pv, K, rows, R), lambda n: variant_sequences(n, Pv, K, R, shared=Sv)),
            "audit": (N, tokens_per_chunk(Pv, K, rows, R), lambda n: variant_sequences(n, Pv, K, R, shared=Sv))})
    elif folder is not None:
        notes.append(f"the run would be written to {folder}")
    if C < api.FEW_CANDIDATES:
        notes.append(f"the fence would rest on {C} candidate(s) (fewer than {api.FEW_CANDIDATES}): the verdict "
                     "would mean little; see --max-tokens in the README")
    cal["cost"] = asdict(cost)
    return Estimate(
        model=name, device=str(encoder.device), dtype=str(encoder.dtype).replace("torch.", ""),
        batch_size=int(encoder.batch_size), world_size=W,
        settings={k: v for k, v in asdict(settings).items() if k != "fast_settings"},
        vocab_size=V, available=len(available), tested=T, candidates=C, audited=N, scoring_pairs=Ps,
        verification_pairs=Pv, chunk_rows=chunk_rows, stages=stages, workers=int(encoder.workers),
        rates={s.stage: round(s.rate, 3) for s in stages if s.rate is not None}, calibration=cal, notes=notes)


# ---- a run folder that already holds the run -------------------------------------------------
CACHED_STAGES = {"mean_similarity": "mean_similarity.json", "pairs": "pairs.json"}
PART_STAGES = {"scoring": "score", "verification": "verify", "audit": "audit"}


def _work_left(stages: list[StageEstimate], run, folder: str, settings, notes: list[str],
               chunks: dict[str, tuple[int, int, Callable[[int], int]]]) -> list[StageEstimate]:
    """The stages as ``detect`` would run them on ``folder`` (``run``: it opened to read), which
    holds this run: a finished run is read back (no stage left); an unfinished one resumes, so
    a cached stage takes no time and a chunked stage only its missing parts.  ``chunks``: each chunked stage's
    (tokens, tokens per part, its sequences for n tokens).  Adds a note saying which."""
    from .api import finished_bootstrap
    from .runfolder import lock_holder

    def none_left(s: StageEstimate, why: str) -> StageEstimate:
        return StageEstimate(s.stage, s.label, 0, s.rate, 0.0, s.chunked, 0, 0.0,
                             0 if s.lower_sequences is not None else None, why)

    if run.finished:
        notes.append(f"{folder} holds this run, finished: detect reads it back and does no model work"
                     if finished_bootstrap(folder) == settings.bootstrap else
                     f"{folder} holds this run, finished with another --bootstrap: detect recomputes only the "
                     "confidence (no model work)")
        return [s if s.rate is None else none_left(s, "done") for s in stages]
    holder = lock_holder(folder)
    if holder is not None:
        notes.append(f"{folder} is in use by another process{f' (pid {holder})' if holder else ''}: detect is refused "
                     "there until it ends; the work left is counted as it stands now")
    out, done = [], []
    for s in stages:
        if s.stage in CACHED_STAGES and os.path.isfile(run.file(CACHED_STAGES[s.stage])):
            out.append(none_left(s, "done"))
            done.append(s.label)
        elif s.stage in PART_STAGES and not settings.fast and s.stage in chunks and s.sequences:
            tokens, per, count = chunks[s.stage]
            total = -(-tokens // per)
            missing = [c for c in range(total) if not run.has_part(PART_STAGES[s.stage], c)]
            have = total - len(missing)
            left = count(sum(min(per, tokens - c * per) for c in missing))
            share = left / s.sequences
            if have:
                done.append(f"{s.label} {have} of {total} parts")
            out.append(StageEstimate(s.stage, s.label, left, s.rate, s.seconds * share, s.chunked,
                                     int(round(s.rank_sequences * share)), s.rank_seconds * share, s.lower_sequences,
                                     s.detail + (f"; {have} of {total} parts done" if have else "")))
        else:
            out.append(s)
    if settings.fast:
        notes.append(f"{folder} holds this run, unfinished: detect resumes it; fast mode's scoring and verification are shown whole")
    else:
        notes.append(f"{folder} holds this run, unfinished: detect resumes it, and the times are for the work left ("
                     + (", ".join(done) if done else "nothing saved yet") + " done)")
    return out


# ---- the command line -------------------------------------------------------------------------
def from_args(args) -> Estimate:
    """``estimate`` with the arguments of ``python -m stickytoken detect`` (cli.py)."""
    from . import api

    names = inspect.signature(api.detect).parameters
    kwargs = {k: getattr(args, k) for k in names if k != "model" and hasattr(args, k)}
    kwargs.pop("show_progress_bar", None)
    return estimate(args.model, **kwargs)
