"""``stickytoken.detect``: the whole Sticky Token Detector as one call."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from . import __version__
from .encoder import Encoder, _progress_enabled
from .errors import InputError
from .models import load_model, model_name as _model_name
from .pairs import (Pair, build_pool, builtin_corpus_path, pool_from_pairs, read_pairs, read_sentences,
                    stage_pairs)
from .results import DetectionResult, TokenResult, atomic_write
from .runfolder import RunFolder, default_folder
from .score import INSERTIONS, VariantSequences, pair_scores, scores_from_pairs, shortlist, tokens_per_chunk
from .verify import fence as _fence, label as _label, verification_values
from .vocab import CATEGORY_NAMES, Vocabulary, build_vocabulary

logger = logging.getLogger(__name__)

CHUNK_ROWS_CPU = 8192      # rows per saved part: ~15 s of CPU work lost at most on a kill
CHUNK_ROWS_CUDA = 131072   # large enough that per-chunk overhead is small on a GPU


def _check_int(name: str, value: Any, lo: int = 1, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be a whole number, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise InputError(f"{name} must be {rng}, got {value}")
    return int(value)


def _versions() -> dict[str, str]:
    import sentence_transformers
    import torch
    import transformers

    return {"stickytoken": __version__, "numpy": np.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "sentence_transformers": sentence_transformers.__version__,
            "python": platform.python_version()}


def _sentences_source(sentences) -> tuple[list[str] | None, str]:
    """(sentences, fingerprint) from a path, a list of strings, or None (built-in corpus)."""
    if sentences is None:
        sents = read_sentences(builtin_corpus_path())
        label = "builtin"
    elif isinstance(sentences, (str, os.PathLike)):
        sents = read_sentences(os.fspath(sentences))
        label = os.path.basename(os.fspath(sentences))
    else:
        sents = list(dict.fromkeys(str(s).strip() for s in sentences if str(s).strip()))
        if not sents:
            raise InputError("sentences is empty; give at least 2 distinct sentences")
        label = "list"
    digest = hashlib.sha256("\n".join(sents).encode()).hexdigest()[:16]
    return sents, f"{label}:{digest}"


def _pairs_source(pairs) -> tuple[list[tuple[str, str]], np.ndarray | None, str]:
    if isinstance(pairs, (str, os.PathLike)):
        plist, sims = read_pairs(os.fspath(pairs))
        label = os.path.basename(os.fspath(pairs))
    else:
        rows = list(pairs)
        if not rows:
            raise InputError("pairs is empty; give (sentence1, sentence2[, similarity]) tuples")
        if any(len(r) not in (2, 3) for r in rows):
            raise InputError("each pair must be (sentence1, sentence2) or (sentence1, sentence2, similarity)")
        plist = [(str(r[0]), str(r[1])) for r in rows]
        sims = np.asarray([float(r[2]) for r in rows]) if all(len(r) == 3 for r in rows) else None
        label = "list"
    blob = json.dumps([plist, None if sims is None else sims.tolist()])
    return plist, sims, f"{label}:{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


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
    output: str | os.PathLike | None = None,
    sentences: str | Sequence[str] | None = None,
    pairs: str | Sequence[tuple] | None = None,
    insertion: str = "text",
    max_tokens: int | None = None,
    prompt: str | None = None,
    prompt_name: str | None = None,
    fast: bool = False,
    fast_settings: Any = None,
) -> DetectionResult:
    """Find the sticky tokens of a sentence-transformers model.

    Args:
        model: a ``SentenceTransformer``, a local folder, a hub name, or None for the bundled
            all-MiniLM-L6-v2.
        sent_pair_num, insert_num, verification_sent_pair_num, shortlist_percent, seed: the
            detector's parameters (std-algorithm defaults 5, 8, 250, 2.0, 42).
        device: 'cpu', 'cuda', 'cuda:N'; default cuda when available.
        dtype: float32, float16 or bfloat16; default bfloat16 on CUDA, float32 on CPU.
        batch_size: sequences per forward pass (backs off on out-of-memory).
        show_progress_bar: tqdm bars; None follows the log level.
        output: the run folder; default ``stickytoken_runs/<model>-<parameter hash>``.  A
            folder holding an unfinished run with the same parameters is resumed; one with
            other parameters is refused.
        sentences: corpus for the pair pool: a file (text lines, CSV or JSONL with a text
            column) or a list of strings; default the built-in corpus.
        pairs: a CSV with sentence1, sentence2[, similarity] (the pool as given when it has
            similarities) or a list of tuples; replaces ``sentences``.
        insertion: 'text' (the paper's string insertion) or 'token' (token ids inserted).
        max_tokens: score only this many available tokens (a seeded sample), for quick runs.
        prompt, prompt_name: a prompt put before every text, as ``encode`` would.
        fast: score a random pilot fully, then the other tokens pair by pair, dropping those
            that cannot reach the shortlist; stop each candidate's verification once its side
            of the fence is statistically settled (stickytoken/fast.py).  Less model work,
            near the same sticky tokens; ``scripts/recall.py`` measures how near.
        fast_settings: a ``stickytoken.fast.FastSettings`` to tune fast mode.

    Returns:
        A :class:`DetectionResult`; the run folder holds the same (``DetectionResult.load``).
    """
    t_start = time.perf_counter()
    sent_pair_num = _check_int("sent_pair_num", sent_pair_num)
    insert_num = _check_int("insert_num", insert_num, 1, 64)
    verification_sent_pair_num = _check_int("verification_sent_pair_num", verification_sent_pair_num)
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    if max_tokens is not None:
        max_tokens = _check_int("max_tokens", max_tokens)
    try:
        shortlist_percent = float(shortlist_percent)
    except (TypeError, ValueError) as exc:
        raise InputError(f"shortlist_percent must be a number, got {shortlist_percent!r}") from exc
    if not 0 < shortlist_percent <= 100:
        raise InputError(f"shortlist_percent must be in (0, 100], got {shortlist_percent}")
    if insertion not in INSERTIONS:
        raise InputError(f"insertion must be one of {list(INSERTIONS)}, got {insertion!r}")
    if sentences is not None and pairs is not None:
        raise InputError("give either sentences or pairs, not both")
    if fast_settings is not None and not fast:
        raise InputError("fast_settings is only used with fast=True")
    if fast:
        from .fast import FastSettings
        fast_settings = fast_settings if fast_settings is not None else FastSettings()
        if not isinstance(fast_settings, FastSettings):
            raise InputError("fast_settings must be a stickytoken.fast.FastSettings")

    if pairs is not None:
        user_pairs, user_sims, corpus_id = _pairs_source(pairs)
        sents = None
    else:
        sents, corpus_id = _sentences_source(sentences)
        if len(sents) < 2:
            raise InputError(f"the corpus has {len(sents)} distinct sentence(s); at least 2 are needed for pairs")

    show = _progress_enabled(show_progress_bar)
    st = load_model(model, device=device, dtype=dtype)
    name = _model_name(model if model is not None else st)
    encoder = Encoder(st, batch_size=batch_size, show_progress_bar=show, prompt=prompt, prompt_name=prompt_name)
    used_dtype = str(next(st.parameters()).dtype).replace("torch.", "")
    identity = {
        "model": name, "sent_pair_num": sent_pair_num, "insert_num": insert_num,
        "verification_sent_pair_num": verification_sent_pair_num, "shortlist_percent": shortlist_percent,
        "seed": seed, "insertion": insertion, "max_tokens": max_tokens, "dtype": used_dtype,
        "prompt": encoder.prompt, "corpus": corpus_id,
    }
    if fast:  # a fast run folder never mixes with an exhaustive one (exhaustive identities unchanged)
        identity["fast"] = True
        identity["fast_settings"] = fast_settings.identity()
    folder = os.fspath(output) if output is not None else default_folder(name, identity)
    run = RunFolder(folder, identity, {"versions": _versions(), "device": str(encoder.device)})
    run.clean_temporaries()
    run.run["status"] = "running"
    run.save_run()
    logger.info("run folder: %s", run.path)
    run.add_time("load", time.perf_counter() - t_start)

    # ---- stage 1: vocabulary ----------------------------------------------------------------
    t0 = time.perf_counter()
    vocab = build_vocabulary(encoder.tokenizer)
    available = vocab.available_ids
    if len(available) == 0:
        raise InputError("no token of this tokenizer can be tested (none re-encodes to itself)")
    if max_tokens is not None and max_tokens < len(available):
        rng = np.random.default_rng(seed)
        tested = np.sort(rng.choice(available, size=max_tokens, replace=False))
    else:
        tested = available
    if "vocab" not in run.run["timings"]:
        run.add_time("vocab", time.perf_counter() - t0)
    logger.info("vocabulary: %d ids, %d available, %d to score", vocab.size, len(available), len(tested))

    # ---- stage 2: mean similarity and pairs -------------------------------------------------
    cached = run.load_json("mean_similarity.json")
    if cached is None:
        t0 = time.perf_counter()
        emb = encoder.encode_texts(vocab.tokens, desc="mean similarity")
        from . import _core
        mean_sim = float(_core.mean_similarity(emb))
        run.save_json("mean_similarity.json", {"mean_similarity": mean_sim, "n": vocab.size})
        run.add_time("mean_similarity", time.perf_counter() - t0)
    else:
        mean_sim = float(cached["mean_similarity"])
    logger.info("mean similarity: %.5f", mean_sim)

    cached = run.load_json("pairs.json")
    if cached is None:
        t0 = time.perf_counter()
        if pairs is not None:
            pool = pool_from_pairs(user_pairs, user_sims, encoder)
        else:
            pool = build_pool(sents, encoder, seed)
        scoring, short_s = stage_pairs(pool, mean_sim, sent_pair_num, "scoring")
        verifying, short_v = stage_pairs(pool, mean_sim, verification_sent_pair_num, "verification")
        cached = {"pool": [p.to_dict() for p in pool], "scoring": [p.to_dict() for p in scoring],
                  "verification": [p.to_dict() for p in verifying], "short_scoring": short_s,
                  "short_verification": short_v}
        run.save_json("pairs.json", cached)
        run.add_time("pairs", time.perf_counter() - t0)
    scoring = [Pair.from_dict(d) for d in cached["scoring"]]
    verifying = [Pair.from_dict(d) for d in cached["verification"]]
    notes = []
    if cached.get("short_scoring"):
        notes.append(f"only {len(scoring)} scoring pairs lie below the mean similarity (asked for {sent_pair_num})")
    if cached.get("short_verification"):
        notes.append(f"only {len(verifying)} verification pairs lie below the mean similarity "
                     f"(asked for {verification_sent_pair_num})")

    if fast:
        # ---- stages 3 and 4, fast: pilot, pair-by-pair scoring, sequential verification ----
        from .fast import fast_score, fast_verify

        scored_ids, scores, cand_ids, threshold, screen_info = fast_score(
            run, encoder, vocab, tested, scoring, insertion, insert_num, seed, shortlist_percent, show,
            fast_settings)
        logger.info("shortlist: %d candidates at or above %.6f (%d of %d tokens fully scored)", len(cand_ids),
                    threshold, len(scored_ids), len(tested))
        ver_ids, ver, pairs_used, verify_info = fast_verify(
            run, encoder, vocab, cand_ids, verifying, insertion, insert_num, seed + 1, show, fast_settings)
        run.run["fast"] = {"screen": screen_info, "verify": verify_info,
                           "pairs_used": {int(i): int(n) for i, n in zip(ver_ids, pairs_used)}}
        notes.append(f"fast mode: {screen_info['fully_scored']} of {screen_info['screened']} tokens fully scored "
                     f"({screen_info['passes']} of {screen_info['exhaustive_passes']} scoring sequences); verification stopped early for {verify_info.get('stopped_early', 0)} of "
                     f"{len(ver_ids)} candidates (their values are estimates from fewer pairs)")
    else:
        # ---- stage 3: sticky scores ---------------------------------------------------------
        scored_ids, scores = _run_chunks(
            run, "score", encoder, vocab, tested, scoring, insertion, insert_num, seed, show,
            _score_with_terms, "scoring")
        cand_ids, threshold = shortlist(scored_ids, scores[:, 0], shortlist_percent)
        logger.info("shortlist: %d candidates at or above %.6f", len(cand_ids), threshold)

        # ---- stage 4: verification ----------------------------------------------------------
        ver_ids, ver = _run_chunks(
            run, "verify", encoder, vocab, cand_ids, verifying, insertion, insert_num, seed + 1, show,
            lambda D, td: verification_values(D), "verification")
    by_id = {int(i): v for i, v in zip(ver_ids, ver)}
    if fast and len(ver):   # fast mode decides by its pilot's fence (fast.sequential_verification)
        fence_value = float(verify_info["fence"])
    else:
        fence_value = _fence(ver[:, 0]) if len(ver) else None
    score_by_id = {int(i): s for i, s in zip(scored_ids, scores)}
    candidates = []
    for tid in cand_ids.tolist():
        s, v = score_by_id[tid], by_id[tid]
        max_prob = float(v.max())
        candidates.append(TokenResult(
            id=tid, token=vocab.tokens[tid], text=vocab.texts[tid], score=float(s[0]), score_euclidean=float(s[1]),
            score_manhattan=float(s[2]), verification=float(v[0]), verification_euclidean=float(v[1]),
            verification_manhattan=float(v[2]), max_prob=max_prob, label=_label(max_prob),
            sticky=bool(fence_value is not None and v[0] > fence_value)))

    memory = encoder.peak_memory()
    run.run["peak_memory_mb"] = memory
    run.run["sequences_encoded_this_session"] = int(encoder.sequences_done)
    run.run["timings"].update(memory)
    result = DetectionResult(
        model=name, params={**identity, "fast": bool(fast), "device": str(encoder.device),
                            "batch_size": encoder.batch_size},
        vocab_size=vocab.size, category_counts=vocab.counts(), mean_similarity=mean_sim,
        shortlist_threshold=threshold, fence=fence_value, candidates=candidates, scored_ids=scored_ids,
        scores=scores, scoring_pairs=[p.to_dict() for p in scoring],
        verification_pairs=[p.to_dict() for p in verifying], timings=dict(run.run["timings"]), notes=notes,
        run_dir=run.path, versions=run.run.get("versions", {}))
    _write_tokens(run, vocab, scored_ids, scores, by_id, result)
    total = time.perf_counter() - t_start
    result.timings["total_this_session"] = round(total, 3)
    result.save(run.path)
    run.run["status"] = "complete"
    run.run["timings"]["total_this_session"] = round(total, 3)
    run.run["result"] = {"n_candidates": len(candidates), "n_sticky": len(result.sticky_tokens)}
    run.save_run()
    return result


def _run_chunks(run: RunFolder, stage: str, encoder: Encoder, vocab: Vocabulary, token_ids: np.ndarray,
                pairs: list[Pair], insertion: str, insert_num: int, seed: int, show: bool, compute, desc: str):
    """Process tokens chunk by chunk, saving each chunk's values as a part; done parts are
    read back instead of recomputed.  Returns (ids, values [n, 3])."""
    if "chunk_rows" not in run.run:  # fixed at the run's creation, so a resume cuts the same chunks
        run.run["chunk_rows"] = CHUNK_ROWS_CUDA if encoder.device.type == "cuda" else CHUNK_ROWS_CPU
        run.save_run()
    per = tokens_per_chunk(len(pairs), insert_num, int(run.run["chunk_rows"]))
    n_chunks = (len(token_ids) + per - 1) // per
    done = [c for c in range(n_chunks) if run.has_part(stage, c)]
    out_ids, out_vals = [], []
    bar = tqdm(total=len(token_ids), desc=desc, unit="tok", disable=not show, dynamic_ncols=True)
    seqs = None
    for c in range(n_chunks):
        ids = token_ids[c * per:(c + 1) * per]
        if c in done:
            part = run.load_part(stage, c)
            if not np.array_equal(part["ids"], ids):
                raise InputError(f"part {c} of stage {stage} in {run.path} does not match this run; remove the folder")
        else:
            t0 = time.perf_counter()
            if seqs is None:
                seqs = VariantSequences(encoder, pairs, insertion=insertion, insert_num=insert_num, seed=seed)
            D, td = seqs.sequences(ids, [vocab.texts[i] for i in ids.tolist()])
            values = compute(D, td)
            extra = {}
            if isinstance(values, tuple):   # (values, other arrays kept in the part)
                values, extra = values
            run.save_part(stage, c, ids=ids, values=values, **extra)
            run.add_time(desc, time.perf_counter() - t0)
            part = {"ids": ids, "values": values}
        out_ids.append(part["ids"])
        out_vals.append(part["values"])
        bar.update(len(ids))
    bar.close()
    if not out_ids:
        return np.zeros(0, np.int64), np.zeros((0, 3))
    return np.concatenate(out_ids).astype(np.int64), np.concatenate(out_vals).astype(np.float64)


def _score_with_terms(D: np.ndarray, td: np.ndarray):
    """Sticky scores, and each pair's term of them ([T, P, 3], kept in the part for analysis
    such as scripts/screen_study.py; the scores are their rounded means)."""
    terms = pair_scores(D, td)
    return scores_from_pairs(terms), {"pair_terms": terms}


def _write_tokens(run: RunFolder, vocab: Vocabulary, scored_ids, scores, verified: dict, result: DetectionResult):
    """tokens.jsonl: one line per vocabulary id with its category, score and verification."""
    score_map = {int(i): s for i, s in zip(scored_ids, scores)}
    sticky = {t.id for t in result.sticky_tokens}
    lines = []
    for i in range(vocab.size):
        row: dict[str, Any] = {"id": i, "token": vocab.tokens[i], "text": vocab.texts[i],
                               "category": CATEGORY_NAMES[int(vocab.categories[i])]}
        if i in score_map:
            s = score_map[i]
            row.update(score=float(s[0]), score_euclidean=float(s[1]), score_manhattan=float(s[2]))
        if i in verified:
            v = verified[i]
            row.update(verification=float(v[0]), verification_euclidean=float(v[1]),
                       verification_manhattan=float(v[2]), sticky=i in sticky)
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write(run.file("tokens.jsonl"), "\n".join(lines) + "\n")
