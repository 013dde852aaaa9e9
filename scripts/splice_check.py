"""Every scoring row of a model's whole vocabulary, tokenized a piece at a time (the spliced
path, ``tokenizing._Splicer``) and text by text, compared id for id; prints the rows, whether all
agree, and both rates.

    python scripts/splice_check.py                       # bundled model, the built-in corpus's first 5 pairs
    python scripts/splice_check.py --model PATH --pairs docs/results/all-MiniLM-L6-v2-full-text

Exit 1 at the first row that differs (printed), 2 when the tokenizer is not spliced at all.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: the bundled all-MiniLM-L6-v2)")
    ap.add_argument("--pairs", default=None, help="a run folder whose scoring pairs to use (default: the "
                                                  "built-in corpus's first 10 sentences as 5 pairs)")
    ap.add_argument("--insert-num", type=int, default=8)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--chunk", type=int, default=2000, help="tokens per batch")
    args = ap.parse_args(argv)

    from stickytoken import _core
    from stickytoken.models import load_model
    from stickytoken.pairs import builtin_sentences
    from stickytoken.tokenizing import _splicer, tokenize_rows
    from stickytoken.vocab import build_vocabulary

    model = load_model(args.model, device="cpu")
    tok, max_length = model.tokenizer, int(model.max_seq_length)
    if _splicer(tok, max_length) is None:
        print("error: this tokenizer is not spliced (tokenizing._splice_safe); nothing to check", file=sys.stderr)
        return 2
    if args.pairs:
        with open(os.path.join(args.pairs, "pairs.json")) as fh:
            contrasts = [p["contrast"] for p in json.load(fh)["scoring"]]
    else:
        s = builtin_sentences()
        contrasts = [s[2 * i + 1] for i in range(5)]
    vocab = build_vocabulary(tok)
    ids = np.asarray(vocab.available_ids, dtype=np.int64)
    texts = [vocab.texts[i] for i in ids.tolist()]
    total, t_splice, t_whole = 0, 0.0, 0.0
    for a in range(0, len(ids), args.chunk):
        strings, _ = _core.build_text_variants(texts[a:a + args.chunk], ids[a:a + args.chunk], contrasts,
                                               insert_num=args.insert_num, variants=(0, 1, 2), seed=args.seed)
        t0 = time.perf_counter()
        got = tokenize_rows(tok, strings, "", max_length)
        t1 = time.perf_counter()
        want = tokenize_rows(tok, strings, "", max_length, splice=False)
        t2 = time.perf_counter()
        t_splice, t_whole = t_splice + t1 - t0, t_whole + t2 - t1
        if not (np.array_equal(got.lengths, want.lengths) and np.array_equal(got.flat, want.flat)):
            go, wo = got.offsets, want.offsets
            i = next(i for i in range(len(strings))
                     if got.flat[go[i]:go[i + 1]].tolist() != want.flat[wo[i]:wo[i + 1]].tolist())
            print(f"row differs: {strings[i]!r}\n  spliced {got.flat[go[i]:go[i + 1]].tolist()}\n"
                  f"  whole   {want.flat[wo[i]:wo[i + 1]].tolist()}")
            return 1
        total += len(strings)
    on = _splicer(tok, max_length) is not None
    print(f"{total:,} rows ({len(ids):,} tokens x {len(contrasts)} pairs x 3 variants x {args.insert_num}): "
          f"all identical; splice still on: {on}; spliced {total / t_splice:,.0f} rows/s, "
          f"text by text {total / t_whole:,.0f} rows/s")
    return 0 if on else 1


if __name__ == "__main__":
    sys.exit(main())
