"""How many of the copies `assess` inserts fall past the model's limit on long documents.

The built-in retrieval set's documents are short: no copy is lost. Here each document is
joined with the ``--join - 1`` documents after it (so a document is ``--join`` times as long),
and `assess` runs on that set with a run's first ``--tokens`` sticky tokens; it prints, per
role, the copies inserted and those the model never saw (``copies_cut``, README "After
detection").

    python scripts/long_documents.py docs/results/all-MiniLM-L6-v2-sample1000 --join 5 --tokens 2
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a finished detection run folder")
    ap.add_argument("--join", type=int, default=5, help="documents joined into one (default 5)")
    ap.add_argument("--tokens", type=int, default=2, help="the run's sticky tokens assessed (default 2)")
    ap.add_argument("--hijack-queries", type=int, default=10, help="queries in the hijack test (default 10)")
    ap.add_argument("--model", default=None, help="model path or name (default: the run's model)")
    args = ap.parse_args(argv)
    if args.join < 1:
        ap.error("--join must be at least 1")

    from stickytoken import assess as A
    from stickytoken import datasets as D

    r = D.get_retrieval("builtin")
    ids = list(r.corpus)
    corpus = {d: " ".join(r.corpus[ids[(i + j) % len(ids)]] for j in range(args.join)) for i, d in enumerate(ids)}
    joined = D.RetrievalData(corpus, r.queries, r.qrels, f"builtin, documents x{args.join}")
    t0 = time.perf_counter()
    a = A.assess(args.run, n_tokens=args.tokens, retrieval=joined, clustering=None,
                 hijack_queries=args.hijack_queries, model=args.model, output=False, show_progress_bar=False)
    print(f"| role | texts | texts with copies cut | copies | copies cut | share cut |  ({time.perf_counter() - t0:.0f} s)")
    print("|---|---|---|---|---|---|")
    for role, c in a.params["copies_cut"].items():
        print(f"| {role} | {c['texts']:,} | {c['texts_cut']:,} | {c['copies']:,} | {c['copies_cut']:,} | "
              f"{100 * c['copies_cut'] / max(c['copies'], 1):.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
