"""How many scoring pairs make a stable shortlist: the sticky scores of one run, recomputed on
disjoint sets of its scoring pairs and compared.

A run's sticky score is the mean, over its scoring pairs, of a per-pair term (the paper uses 5
pairs).  Its scoring parts keep every token's per-pair terms (``pair_terms``), so a run made
with many pairs (``detect --sent-pair-num 40``) holds the scores that any subset of them would
give.  For each size n (2n at most the run's pairs), this draws --splits random splits of the
pairs into two disjoint sets of n, scores every token on each set as the run does (the mean of
its cosine pair terms), and reports the mean over the splits of

- the Spearman correlation of the two sets' scores,
- the overlap of their top 10% and of their top 2% (the shortlist: the share of one set's
  top tokens that are also the other's),

and the Spearman-Brown prediction of the correlation at n pairs from the one at the largest
size (the correlation between two means of n independent pairs each, r_n = n r_1 / (1 + (n -
1) r_1), with r_1 backed out of the largest size, the nearest to the sizes asked about; the
smaller sizes' rows show how well it fits), to read off how many pairs a given correlation
needs.  Two disjoint sets of pairs differ as two runs with other seeds do, except
that they come from one pool of corpus sentences.

    python -m stickytoken detect --max-tokens 400 --sent-pair-num 40 --verification-sent-pair-num 10 -o RUN
    python scripts/scoring_pairs.py RUN --sizes 5,10,20 --output docs/results/scoring-pairs
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from stickytoken.compare import spearman  # noqa: E402
from stickytoken.errors import StickyTokenError  # noqa: E402
from stickytoken.runfolder import RunFolder  # noqa: E402
from stickytoken.tables import markdown_table  # noqa: E402


def fail(message: str):
    """One ``error:`` line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def pair_terms(run_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, cosine pair terms [tokens, pairs]) from a run's scoring parts, checked
    against the scores the run saved (their mean over the pairs)."""
    try:
        run = RunFolder.existing(run_dir)
    except StickyTokenError as exc:
        fail(f"{exc}; give a detect run folder")
    if not run.n_parts("score"):
        fail(f"{run_dir} holds no scoring parts (parts/score-*.npz); give a detect run folder")
    terms = run.gather("score", "pair_terms")
    if terms is None:
        fail(f"{run_dir}: a scoring part keeps no per-pair terms (a fast-mode run, or older code)")
    ids, terms, values = run.gather("score", "ids"), terms[:, :, 0], run.gather("score", "values")[:, 0]
    if not np.allclose(np.round(terms.mean(axis=1), 6), values, atol=2e-6):
        fail("the parts' pair terms do not average to their scores")
    return ids, terms


def top_overlap(a: np.ndarray, b: np.ndarray, percent: float) -> float:
    """Share of a's top ``percent`` (by score) that is also in b's top ``percent``."""
    k = max(1, int(round(len(a) * percent / 100.0)))
    return len(set(np.argsort(-a, kind="stable")[:k]) & set(np.argsort(-b, kind="stable")[:k])) / k


def spearman_brown(r: float, factor: float) -> float:
    """The correlation of means over ``factor`` times as many independent pairs."""
    return factor * r / (1 + (factor - 1) * r)


def split_half(terms: np.ndarray, sizes: list[int], splits: int, seed: int) -> tuple[list[dict], float]:
    """For each size n: the mean (and standard deviation) over ``splits`` random disjoint splits
    of the pairs into two sets of n of the Spearman correlation and the top-10% and top-2%
    overlaps of the two sets' scores; and one pair's correlation, backed out of the largest
    size by Spearman-Brown (each row's ``spearman_brown`` is its prediction at the row's size)."""
    P = terms.shape[1]
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        if 2 * n > P:
            fail(f"size {n} needs {2 * n} pairs and the run has {P}")
        rho, t10, t2 = [], [], []
        for _ in range(splits):
            perm = rng.permutation(P)
            a, b = terms[:, perm[:n]].mean(axis=1), terms[:, perm[n:2 * n]].mean(axis=1)
            rho.append(spearman(a, b))
            t10.append(top_overlap(a, b, 10.0))
            t2.append(top_overlap(a, b, 2.0))
        rows.append({"pairs": n, "spearman": float(np.mean(rho)), "spearman_sd": float(np.std(rho)),
                     "top10": float(np.mean(t10)), "top2": float(np.mean(t2)), "splits": splits})
    base = rows[-1]
    r1 = base["spearman"] / (base["pairs"] - (base["pairs"] - 1) * base["spearman"])   # one pair's, backed out
    for row in rows:
        row["spearman_brown"] = spearman_brown(r1, row["pairs"])
    return rows, r1


def pairs_for(r1: float, target: float) -> int:
    """The fewest pairs whose Spearman-Brown correlation reaches ``target``."""
    return int(math.ceil(target * (1 - r1) / (r1 * (1 - target))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a detect run folder made with many scoring pairs (--sent-pair-num)")
    ap.add_argument("--sizes", default="5,10,20", help="pair counts to compare, comma-separated (default 5,10,20)")
    ap.add_argument("--splits", type=int, default=50, help="random splits per size (default 50)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the splits (default 0)")
    ap.add_argument("--output", help="also write scoring_pairs.md and scoring_pairs.json here")
    args = ap.parse_args(argv)
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        fail(f"--sizes must be whole numbers, got {args.sizes!r}")
    if not sizes or sizes[0] < 1 or args.splits < 1:
        fail("give sizes of 1 or more and --splits of 1 or more")
    ids, terms = pair_terms(args.run)
    rows, r1 = split_half(terms, sizes, args.splits, args.seed)
    base = rows[-1]
    need = {t: pairs_for(r1, t) for t in (0.8, 0.9)} if 0 < r1 < 1 else {}
    table = markdown_table(
        ["scoring pairs (each set)", "Spearman between two disjoint sets", "sd over splits",
         "Spearman-Brown from the largest", "top-10% overlap", "top-2% overlap"],
        [[r["pairs"], f"{r['spearman']:.3f}", f"{r['spearman_sd']:.3f}", f"{r['spearman_brown']:.3f}",
          f"{r['top10']:.2f}", f"{r['top2']:.2f}"] for r in rows])
    lines = [f"# Scoring pairs and the stability of the sticky scores: {args.run}", "",
             f"{len(ids)} tokens, {terms.shape[1]} scoring pairs in the run, {args.splits} random disjoint "
             f"splits per size (seed {args.seed}); cosine scores.", "", table, ""]
    if need:
        lines.append(f"- one pair's correlation, backed out of {base['pairs']} pairs: {r1:.3f}; by Spearman-Brown "
                     f"a correlation of 0.8 needs {need[0.8]} pairs per run, 0.9 needs {need[0.9]}.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        with open(os.path.join(args.output, "scoring_pairs.md"), "w", encoding="utf-8") as fh:
            fh.write(text)
        with open(os.path.join(args.output, "scoring_pairs.json"), "w", encoding="utf-8") as fh:
            json.dump({"run": args.run, "tokens": len(ids), "pairs": int(terms.shape[1]), "rows": rows,
                       "one_pair_spearman": r1, "pairs_needed": {str(k): v for k, v in need.items()}}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
