"""The detector's cost on paper for a large model: sequences per stage (exact, from the
parameters), their measured mean length, FLOPs, and the predicted wall time on 1 and N GPUs.

    python scripts/scaling.py                       # gte-Qwen2-7B-instruct on H100s (the defaults)
    python scripts/scaling.py --params 7.07e9 --vocab 151643 --available 147848 --gpus 1,8

Sequence lengths are measured, not assumed: variant texts are built with the package's own
insertion (text mode, seeded) for sampled tokens of the bundled model's vocabulary against the
scoring pairs of the built-in corpus, and tokenized with the bundled tokenizer (WordPiece; a
byte-level BPE such as Qwen2's gives a similar count of tokens per English word), plus the
appended eos.  A forward pass costs 2 x parameters FLOPs per token (attention over ~50 tokens
adds under 1%); the GPU runs it at ``--mfu`` of its dense bf16 peak.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def measured_lengths(n_tokens: int = 200, seed: int = 0) -> dict[str, float]:
    """Mean tokenized length of scoring/verification variant rows, of the mean-similarity rows
    (a token alone) and of the pair sentences, on the bundled model's tokenizer."""
    from stickytoken import _core, load_model
    from stickytoken.pairs import builtin_sentences
    from stickytoken.vocab import build_vocabulary

    st = load_model(device="cpu")
    tok = st.tokenizer
    vocab = build_vocabulary(tok)
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(vocab.available_ids, size=n_tokens, replace=False))
    sents = builtin_sentences()
    contrasts = [sents[i] for i in rng.choice(len(sents), size=20, replace=False)]
    texts, _ = _core.build_text_variants([vocab.texts[i] for i in ids], ids, contrasts, insert_num=8, seed=42)
    lens = [len(r) for r in tok(list(texts), add_special_tokens=True)["input_ids"]]
    alone = [len(r) for r in tok([vocab.texts[i] for i in vocab.available_ids[:2000]],
                                 add_special_tokens=True)["input_ids"]]
    base = [len(r) for r in tok(contrasts, add_special_tokens=True)["input_ids"]]
    return {"variant": float(np.mean(lens)), "alone": float(np.mean(alone)), "sentence": float(np.mean(base))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gte-Qwen2-7B-instruct")
    ap.add_argument("--params", type=float, default=7.07e9, help="parameters (gte-Qwen2-7B: 7.07e9)")
    ap.add_argument("--vocab", type=int, default=151643)
    ap.add_argument("--available", type=int, default=147848)
    ap.add_argument("--candidates", type=int, default=None, help="default: 2%% of the available tokens")
    ap.add_argument("--sent-pair-num", type=int, default=5)
    ap.add_argument("--verification-sent-pair-num", type=int, default=250)
    ap.add_argument("--insert-num", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=0, help="prompt tokens put before every text")
    ap.add_argument("--peak", type=float, default=989e12, help="GPU dense bf16 FLOP/s (H100 SXM: 989e12)")
    ap.add_argument("--mfu", type=float, default=0.35, help="share of the peak reached (default 0.35)")
    ap.add_argument("--gpus", default="1,8")
    ap.add_argument("--published", type=float, default=185000.0, help="the paper's wall time in seconds")
    args = ap.parse_args()

    cand = args.candidates or math.ceil(0.02 * args.available)
    lengths = measured_lengths()
    eos = 1   # decoder embedders append an eos
    K, V = args.insert_num, 3
    stages = [
        ("mean similarity", args.vocab, lengths["alone"] + eos),
        ("pair pool", 1000, lengths["sentence"] + eos),
        ("scoring", args.available * (args.sent_pair_num * V * K + 1) + 2 * args.sent_pair_num,
         lengths["variant"] + eos),
        ("verification", cand * (args.verification_sent_pair_num * V * K + 1) + 2 * args.verification_sent_pair_num,
         lengths["variant"] + eos),
    ]
    flops_per_token = 2 * args.params
    rate = args.peak * args.mfu
    gpus = [int(g) for g in args.gpus.split(",")]
    print(f"{args.model}: {args.vocab:,} vocabulary, {args.available:,} available, {cand:,} candidates; "
          f"{flops_per_token:.3g} FLOPs per token, {args.mfu:.0%} of {args.peak / 1e12:.0f} TFLOP/s\n")
    head = "| stage | sequences | mean tokens | FLOPs | " + " | ".join(f"{g} GPU(s), s" for g in gpus) + " |"
    print(head)
    print("|" + "---|" * (4 + len(gpus)))
    total_f = 0.0
    total_n = 0
    for name, n, length in stages:
        f = n * (length + args.prompt_tokens) * flops_per_token
        total_f += f
        total_n += n
        # the chunked stages (scoring, verification) divide over the GPUs; the others run once
        per = [f / rate / (g if name in ("scoring", "verification") else 1) for g in gpus]
        print(f"| {name} | {n:,} | {length + args.prompt_tokens:.1f} | {f:.3g} | "
              + " | ".join(f"{t:,.0f}" for t in per) + " |")
    tot = [sum(n * (length + args.prompt_tokens) * flops_per_token / rate /
               (g if name in ("scoring", "verification") else 1) for name, n, length in stages) for g in gpus]
    print(f"| total | {total_n:,} | | {total_f:.3g} | " + " | ".join(f"{t:,.0f}" for t in tot) + " |")
    print(f"\npublished: ~{args.published:,.0f} s; predicted on 1 GPU {tot[0]:,.0f} s "
          f"({args.published / tot[0]:.1f}x less)" + (f", on {gpus[-1]} GPUs {tot[-1]:,.0f} s" if len(gpus) > 1 else ""))


if __name__ == "__main__":
    main()
