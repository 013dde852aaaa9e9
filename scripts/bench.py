"""Benchmark of the detector's hot path, in one run on whatever machine it is started on.

Measures, on the same tokens and the same model:

* the bare forward rate: the model alone on pre-built, length-sorted id batches of the
  scoring stage's shapes (no tokenizing, no statistics);
* each stage of the pipeline (mean similarity on a vocabulary sample, sticky scores,
  verification, one fast-mode scoring pair), its time and sequences per second;
* end-to-end time and peak memory;
* the same work done the straightforward way: strings through ``model.encode`` one token at
  a time, distances and scores in NumPy;

and prints a table with the speed-ups as ratios.

    python scripts/bench.py --tokens 20                 # about a minute on a 2-core CPU
    python scripts/bench.py --model PATH --device cuda --dtype bfloat16 --tokens 2000
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_limited(cmd: list, limit: float | None = None, **kw) -> subprocess.CompletedProcess:
    """``cmd`` in a session of its own, its output captured; past ``limit`` seconds it is
    killed with every process it started (a detect's row-building workers), and its
    ``returncode`` is None, its output what it wrote by then."""
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True, **kw)
    try:
        stdout, stderr = child.communicate(timeout=limit or None)
        code = child.returncode
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        stdout, stderr = child.communicate()
        code = None
    return subprocess.CompletedProcess(cmd, code, stdout, stderr)


def _peak_host_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cos_dist(x, r):
    return 1.0 - (x * r).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(r, axis=-1))


def _np_dists(x, r):
    return np.stack([_cos_dist(x, r), np.linalg.norm(x - r, axis=-1), np.abs(x - r).sum(-1)], -1)


def _np_score(seq, td, a, b, c0):
    steps = np.diff(seq)
    fall, rise = -steps[steps < 0].sum(), steps[steps > 0].sum()
    return (fall + a * (steps < 0).sum() + 0.1 * td) / (rise + b * (steps > 0).sum() + c0)


def straightforward_scores(model, texts, ids, pairs, K, seed):
    """The plain way: per token, its variant strings through model.encode, NumPy distances
    and scores.  Returns (scores [T, 3], sequences encoded)."""
    from stickytoken import _reference
    from stickytoken.score import SCORE_CONSTANTS, METRICS

    refs = model.encode([p.reference for p in pairs], convert_to_numpy=True).astype(np.float64)
    cons = model.encode([p.contrast for p in pairs], convert_to_numpy=True).astype(np.float64)
    d0 = _np_dists(cons, refs)
    out, n_seq = [], 2 * len(pairs)
    for text, tid in zip(texts, ids):
        vt, index = _reference.build_text_variants([text], np.array([tid]), [p.contrast for p in pairs],
                                                   insert_num=K, seed=seed)
        emb = model.encode(vt, convert_to_numpy=True).astype(np.float64)
        alone = model.encode([text], convert_to_numpy=True).astype(np.float64)[0]
        n_seq += len(vt) + 1
        D = np.zeros((len(pairs), 3, K + 1, 3))
        for row, (_, p, v, k) in enumerate(index):
            D[p, v, k] = _np_dists(emb[row], refs[p])
        D[:, :, 0] = d0[:, None, :]
        td = np.stack([_np_dists(alone, refs[p]) for p in range(len(pairs))])
        s = []
        for m, name in enumerate(METRICS):
            a, b, c0 = SCORE_CONSTANTS[name]
            # td is the cosine distance of the token alone, for every metric (docs/algorithm.md §3)
            s.append(np.mean([sum(w * _np_score(D[p, v, :, m], td[p, 0], a, b, c0)
                                  for v, w in enumerate((0.35, 0.35, 0.3))) for p in range(len(pairs))]))
        out.append(s)
    return np.round(np.asarray(out), 6), n_seq


def bare_forward_rate(encoder, texts, repeats: int = 2):
    """Sequences/s of the model alone on pre-tokenized, length-sorted batches cut exactly as the
    encoder cuts them (same batch shapes), best of ``repeats``."""
    return bare_rows_rate(encoder, encoder.tokenize_rows(texts), repeats)


def bare_rows_rate(encoder, rows, repeats: int = 2, attention: str | None = None):
    """Sequences/s of the model alone on ragged id ``rows`` (stickytoken.rows.Rows), cut into
    the encoder's own batches and placed on its device beforehand (with an attention mask only
    where the encoder gives one, ``Encoder.mask_free``), under the encoder's kernels
    (``encoder.cuda_kernels``; ``attention``: exactly these SDPA kernels instead, on any
    device and dtype, e.g. "efficient"), timed
    between two synchronisations after a one-batch warm-up; best of ``repeats``.  Returns
    (rate, batches)."""
    import torch

    from stickytoken.encoder import attention_backends, cuda_kernels

    order = np.argsort(rows.lengths, kind="stable")
    sl, off = rows.lengths[order], rows.offsets
    batches = []
    start = 0
    while start < len(order):
        stop = encoder._batch_stop(sl, start)
        idx = order[start:stop]
        x = torch.from_numpy(rows.flat[off[idx][:, None] + np.arange(int(sl[stop - 1]))]).to(encoder.device)
        if not batches:
            encoder.settle_mask(x)   # whether the encoder drops the all-ones mask, as embed_rows does
        feats = {"input_ids": x}
        if getattr(encoder, "mask_free", False) is not True:
            feats["attention_mask"] = torch.ones_like(x)
        if encoder._token_type_ids:
            feats["token_type_ids"] = torch.zeros_like(x)
        batches.append(feats)
        start = stop
    best = 0.0
    if attention is None:
        kernels = cuda_kernels(encoder.device, encoder.dtype)
    else:   # exactly the kernels asked for, on any device and dtype
        from torch.nn.attention import sdpa_kernel

        kernels = sdpa_kernel(list(attention_backends(attention)))
    with torch.inference_mode(), kernels:
        encoder.model(dict(batches[0]))  # warm-up
        for _ in range(repeats):
            _sync(encoder.device)
            t0 = time.perf_counter()
            for f in batches:
                encoder.model(dict(f))["sentence_embedding"]
            _sync(encoder.device)
            best = max(best, len(rows) / (time.perf_counter() - t0))
    return best, len(batches)


SWEEP_KERNELS = ("default", "cudnn", "flash", "efficient", "math", "eager")


def attention_sweep(encoder, rows, repeats: int = 3, kernels=SWEEP_KERNELS) -> dict:
    """The bare forward rate (``bare_rows_rate``) of the same rows with each attention kernel:
    "default" (the encoder's own: ``STICKYTOKEN_ATTENTION`` or flash, efficient, math), each
    SDPA kernel alone, and "eager" (transformers' own matrix products and softmax).  A kernel
    that cannot run these shapes (or this device) gets its error's first line instead."""
    from stickytoken.attention import attention_implementation, hf_model
    from stickytoken.errors import first_line

    out = {}
    for name in kernels:
        try:
            if name == "eager":
                with attention_implementation(hf_model(encoder.model), "eager"):
                    rate, _ = bare_rows_rate(encoder, rows, repeats)
            else:
                rate, _ = bare_rows_rate(encoder, rows, repeats, None if name == "default" else name)
            out[name] = round(rate, 1)
        except RuntimeError as exc:   # e.g. "No available kernel" for a kernel these shapes rule out
            out[name] = "unavailable: " + first_line(exc, 160)
        print(f"attention {name}: {out[name] if isinstance(out[name], str) else f'{out[name]:,.0f} seq/s'}",
              flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder or hub name (default: bundled all-MiniLM-L6-v2)")
    ap.add_argument("--tokens", type=int, default=20, help="tokens to score (a seeded sample of the available ones)")
    ap.add_argument("--verify-tokens", type=int, default=1, help="tokens to verify")
    ap.add_argument("--verify-pairs", type=int, default=25,
                    help="verification pairs those tokens are verified on (a seeded subset; 0 = all)")
    ap.add_argument("--vocab-sample", type=int, default=2000, help="vocabulary strings for the mean-similarity stage")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--insertion", default="text", choices=["text", "token"])
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    ap.add_argument("--insert-num", type=int, default=8)
    ap.add_argument("--sent-pair-num", type=int, default=5)
    ap.add_argument("--verification-sent-pair-num", type=int, default=250)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--pool-sentences", type=int, default=1000, help="corpus sentences for the pair pool")
    ap.add_argument("--no-baseline", action="store_true", help="skip the straightforward baseline")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from stickytoken import _core
    from stickytoken.encoder import Encoder
    from stickytoken.models import load_model, model_name
    from stickytoken.pairs import build_pool, builtin_sentences, stage_pairs
    from stickytoken.score import VariantSequences, pair_scores, sticky_scores
    from stickytoken.verify import verification_values
    from stickytoken.vocab import build_vocabulary

    t_all = time.perf_counter()
    st = load_model(args.model, device=args.device, dtype=args.dtype)
    enc = Encoder(st, batch_size=args.batch_size, show_progress_bar=False)
    dev = enc.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    vocab = build_vocabulary(enc.tokenizer)
    rng = np.random.default_rng(args.seed)
    avail = vocab.available_ids
    tokens = np.sort(rng.choice(avail, size=min(args.tokens, len(avail)), replace=False))
    texts = [vocab.texts[i] for i in tokens.tolist()]
    vsample = np.sort(rng.choice(vocab.size, size=min(args.vocab_sample, vocab.size), replace=False))
    vstrings = [vocab.tokens[i] for i in vsample.tolist()]
    K = args.insert_num
    rows = []  # (stage, sequences, pipeline s, baseline s or None)

    # mean similarity on a vocabulary sample
    t0 = time.perf_counter()
    emb = enc.encode_texts(vstrings)
    mean_sim = float(_core.mean_similarity(emb))
    t_mean = time.perf_counter() - t0
    base_mean = None
    if not args.no_baseline:
        t0 = time.perf_counter()
        e = st.encode(vstrings, convert_to_numpy=True).astype(np.float64)
        u = e / np.linalg.norm(e, axis=1, keepdims=True)
        base_sim = float((u @ u.T).mean())
        base_mean = time.perf_counter() - t0
        assert abs(base_sim - mean_sim) < 1e-3, (base_sim, mean_sim)
    rows.append(("mean similarity", len(vstrings), t_mean, base_mean))
    # the same with fixed-size batches (no token budget), to show what the budget buys
    budget = enc.token_budget
    enc.token_budget = 0
    t0 = time.perf_counter()
    enc.encode_texts(vstrings)
    rows.append(("  fixed batches", len(vstrings), time.perf_counter() - t0, None))
    enc.token_budget = budget

    pool = build_pool(builtin_sentences(), enc, args.seed, n_sentences=args.pool_sentences)
    scoring, _ = stage_pairs(pool, mean_sim, args.sent_pair_num, "scoring")
    verifying, _ = stage_pairs(pool, mean_sim, args.verification_sent_pair_num, "verification")

    # bare forward rate on the scoring stage's shapes
    vt, _ = _core.build_text_variants(texts, tokens, [p.contrast for p in scoring], insert_num=K, seed=args.seed)
    bare, n_batches = bare_forward_rate(enc, list(vt))

    dtype = str(next(st.parameters()).dtype).replace("torch.", "")
    print(f"\nstickytoken bench: {model_name(args.model if args.model else st)} on {dev} ({dtype}), "
          f"torch threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; {len(tokens)} tokens, K={K}, insertion={args.insertion}")
    print(f"bare forward rate (scoring shapes, {n_batches} batches): {bare:.0f} seq/s\n")
    hdr = f"| {'stage':<16} | {'sequences':>9} | {'time s':>7} | {'seq/s':>7} | {'vs bare':>7} | " \
          f"{'plain s':>8} | {'plain seq/s':>11} | {'speed-up':>8} |"
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|", flush=True)
    figures = []

    def show(stage, n, t, b):
        rate = n / t if t > 0 else float("nan")
        brate = n / b if b else None
        cells = [f"{stage:<16}", f"{n:>9}", f"{t:>7.2f}", f"{rate:>7.0f}", f"{rate / bare:>7.2f}",
                 f"{b:>8.2f}" if b else f"{'-':>8}", f"{brate:>11.0f}" if brate else f"{'-':>11}",
                 f"{b / t:>7.2f}x" if b else f"{'-':>8}"]
        print("| " + " | ".join(cells) + " |", flush=True)
        figures.append({"stage": stage.strip(), "sequences": n, "seconds": round(t, 3), "seq_per_s": round(rate, 1),
                         "vs_bare": round(rate / bare, 3), "baseline_seconds": None if b is None else round(b, 3),
                         "speedup": None if b is None else round(b / t, 2)})

    for row in rows:
        show(*row)

    # sticky scores
    enc.sequences_done = 0
    t0 = time.perf_counter()
    seqs = VariantSequences(enc, scoring, insertion=args.insertion, insert_num=K, seed=args.seed)
    D, td = seqs.sequences(tokens, texts)
    scores = sticky_scores(D, td)
    t_score = time.perf_counter() - t0
    n_score = enc.sequences_done
    base_score, agree = None, None
    if not args.no_baseline and args.insertion == "text":
        t0 = time.perf_counter()
        bscores, n_base = straightforward_scores(st, texts, tokens, scoring, K, args.seed)
        base_score = time.perf_counter() - t0
        agree = float((np.abs(bscores - scores) / np.maximum(1.0, np.abs(scores))).max())
    show("sticky scores", n_score, t_score, base_score)

    # fast mode scores the tokens that are not in its pilot one scoring pair at a time
    enc.sequences_done = 0
    t0 = time.perf_counter()
    pair_scores(*seqs.sequences(tokens, texts, pair_index=np.array([0])))
    show("fast: one scoring pair", enc.sequences_done, time.perf_counter() - t0, None)

    # verification
    vt_ids = tokens[: max(0, args.verify_tokens)]
    if len(vt_ids):
        enc.sequences_done = 0
        t0 = time.perf_counter()
        vseqs = VariantSequences(enc, verifying, insertion=args.insertion, insert_num=K, seed=args.seed + 1)
        P = len(verifying)
        pidx = None
        if 0 < args.verify_pairs < P:
            pidx = np.sort(np.random.default_rng(args.seed).choice(P, args.verify_pairs, replace=False))
        Dv, _ = vseqs.sequences(vt_ids, [vocab.texts[i] for i in vt_ids.tolist()], pair_index=pidx, with_td=False)
        verification_values(Dv)
        show("verification", enc.sequences_done, time.perf_counter() - t0, None)
    total = time.perf_counter() - t_all
    peak_host = _peak_host_mb()
    peak_dev = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None

    print(f"\nend to end: {total:.1f} s; peak host memory {peak_host:.0f} MiB"
          + (f"; peak device memory {peak_dev:.0f} MiB" if peak_dev is not None else ""))
    if agree is not None:
        print(f"scores vs the straightforward way: max relative difference {agree:.2e}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"bare_forward_seq_per_s": bare, "rows": figures, "total_s": total, "peak_host_mb": peak_host,
                       "peak_device_mb": peak_dev, "max_score_difference": agree, "device": str(dev),
                       "dtype": dtype, "tokens": len(tokens)}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
