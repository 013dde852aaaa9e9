"""How fast the host builds variant rows (the paper's texts, tokenized), in this process and
in worker processes: the rate a GPU must be fed at.

Builds the rows of one CUDA-sized chunk of the full vocabulary's scoring stage (131,072 rows:
1,092 tokens x 5 pairs x 3 variants x 8 insertions) with the bundled model's tokenizer,
inline and with 1..N workers (``detect --workers``), checks that every way gives the same
rows, and prints rows per second (best of ``--repeats``); and, for scale, the C core's
distances of those rows.

    python scripts/rows_rate.py                   # workers 1 and 2 on this machine
    python scripts/rows_rate.py --workers 1,4,8,14 --json docs/results/gpu/rows_rate.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def scoring_chunk(encoder, n_tokens: int, seed: int = 0):
    """A seeded sample of ``n_tokens`` vocabulary tokens and the scoring stage's variant
    sequences against five built-in pairs (text insertion, 8 insertions, seed 42), as a full
    run builds them: (VariantSequences, ids, texts)."""
    from stickytoken.pairs import Pair, builtin_sentences
    from stickytoken.score import VariantSequences
    from stickytoken.vocab import build_vocabulary

    vocab = build_vocabulary(encoder.tokenizer)
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(vocab.available_ids, size=n_tokens, replace=False)).astype(np.int64)
    texts = [vocab.texts[i] for i in ids.tolist()]
    sents = builtin_sentences()
    pairs = [Pair(sents[2 * i], sents[2 * i + 1], 0.0) for i in range(5)]
    return VariantSequences(encoder, pairs, insertion="text", insert_num=8, seed=42), ids, texts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    ap.add_argument("--tokens", type=int, default=1092, help="tokens in the chunk (default 1,092: one CUDA chunk)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    from stickytoken.encoder import Encoder
    from stickytoken.models import load_model
    from stickytoken.rows import RowPool

    model = load_model(None, device="cpu")
    seqs, ids, texts = scoring_chunk(Encoder(model, workers=0), args.tokens * (args.repeats + 1))
    rows_out = {}

    # each timed build is of other tokens than the last (a run meets new tokens in every chunk,
    # so the spliced tokenizer's cache holds the contrast sentences' words but not the token's
    # own pieces); group 0 warms up, the best of groups 1..repeats counts
    groups = [(ids[g::args.repeats + 1], [texts[i] for i in range(g, len(ids), args.repeats + 1)])
              for g in range(args.repeats + 1)]

    def best_of(build):
        best, outs = float("inf"), []
        for g, (gi, gt) in enumerate(groups):
            t0 = time.perf_counter()
            outs.append(build(gi, gt))
            if g:
                best = min(best, time.perf_counter() - t0)
        return best, outs

    def same(a, b):
        return all(np.array_equal(x.flat, y.flat) and np.array_equal(x.lengths, y.lengths)
                   and np.array_equal(x.index, y.index) for x, y in zip(a, b))

    whole = copy.copy(seqs.builder)
    whole.splice, whole.tokenizer = False, seqs.builder.tokenizer   # (copies leave the tokenizer out)
    t, ref = best_of(whole.build)
    n = len(ref[1])
    rows_out["inline, whole texts"] = {"seconds": round(t, 3), "rows_per_s": round(n / t)}
    t, got = best_of(seqs.builder.build)
    rows_out["inline"] = {"seconds": round(t, 3), "rows_per_s": round(n / t), "same_rows": same(got, ref)}
    for w in [int(x) for x in args.workers.split(",") if x.strip()]:
        with RowPool(model.tokenizer, w) as pool:
            pool.start()
            pool.submit(seqs.builder, ids[:w], texts[:w]).result()   # every worker up
            t, got = best_of(lambda gi, gt: pool.submit(seqs.builder, gi, gt).result())
        rows_out[f"{w} workers"] = {"seconds": round(t, 3), "rows_per_s": round(n / t), "same_rows": same(got, ref)}
    ref = ref[1]
    # the host's other per-row work, for scale: the C core's distances of every row to its
    # pair's reference (on stand-in float32 embeddings of the model's width)
    import torch

    from stickytoken import _core

    emb = torch.randn(len(ref), seqs.ref_emb.shape[1])
    t0 = time.perf_counter()
    _core.row_distances(emb, seqs.ref_emb, np.ascontiguousarray(ref.index[:, 1]))
    t = time.perf_counter() - t0
    rows_out["distances (C core, float32)"] = {"seconds": round(t, 3), "rows_per_s": round(len(ref) / t)}
    record = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "rows": len(ref),
              "mean_length": round(float(ref.lengths.mean()), 2), "results": rows_out}
    print(f"{record['rows']:,} rows (mean {record['mean_length']} ids) on {record['machine']}")
    print("| how | seconds | rows/s | same rows |")
    print("|---|---|---|---|")
    for k, v in rows_out.items():
        print(f"| {k} | {v['seconds']} | {v['rows_per_s']:,} | {v.get('same_rows', '-')} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(record, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
