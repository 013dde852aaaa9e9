"""How far two finished detect runs of one model agree: on the tokens both scored, the Spearman
correlation of their sticky scores and the overlap of their top 2%; the overlap of their
shortlists and of their sticky tokens; on the candidates both verified, how often the
verdict agrees; and whether they used the same pairs (``detect --pairs OTHER_RUN`` makes
them, so that only the numerics differ: another device, dtype or batch size).

    python scripts/agreement.py RUN_A RUN_B [RUN_C ...] [--json]

prints one row per two runs.  ``bench_gpu.py`` calls ``agreement`` for its table.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from stickytoken.compare import spearman  # noqa: E402

TOP_PERCENT = 2.0


def _scores(run_dir: str) -> dict[int, float]:
    with open(os.path.join(run_dir, "scores.csv"), newline="") as fh:
        return {int(r["id"]): float(r["score"]) for r in csv.DictReader(fh)}


def _results(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "results.json")) as fh:
        return json.load(fh)


def _pairs(run_dir: str, results: dict) -> dict:
    """The run's scoring and verification pairs: from results.json, which every finished run
    keeps (a copy may lack pairs.json), else from pairs.json."""
    if "scoring_pairs" in results and "verification_pairs" in results:
        return {"scoring": results["scoring_pairs"], "verification": results["verification_pairs"]}
    with open(os.path.join(run_dir, "pairs.json")) as fh:
        return json.load(fh)


def _top(ids: np.ndarray, scores: np.ndarray, percent: float) -> set:
    """Ids at or above the (100 - percent)th percentile of ``scores`` (the shortlist rule)."""
    if not len(ids):
        return set()
    return set(ids[scores >= np.percentile(scores, 100.0 - percent)].tolist())


def overlap(a: set, b: set) -> dict:
    union = len(a | b)
    return {"shared": len(a & b), "a": len(a), "b": len(b), "jaccard": (len(a & b) / union) if union else None}


def overlap_text(o: dict) -> str:
    if o["jaccard"] is None:
        return "both empty"
    return f"{o['shared']} of {o['a']} / {o['b']} (Jaccard {o['jaccard']:.3f})"


def agreement(run_a: str, run_b: str) -> dict:
    """The agreement of two finished runs (see the module docstring)."""
    sa, sb = _scores(run_a), _scores(run_b)
    common = np.array(sorted(set(sa) & set(sb)), dtype=np.int64)
    xa = np.array([sa[i] for i in common.tolist()])
    xb = np.array([sb[i] for i in common.tolist()])
    ra, rb = _results(run_a), _results(run_b)
    ca = {int(c["id"]): c for c in ra.get("candidates", [])}
    cb = {int(c["id"]): c for c in rb.get("candidates", [])}
    both = sorted(set(ca) & set(cb))
    pa, pb = _pairs(run_a, ra), _pairs(run_b, rb)

    def keys(p, stage):
        return [(d["reference"], d["contrast"]) for d in p[stage]]

    return {
        "common_scored": int(len(common)),
        "score_spearman": spearman(xa, xb) if len(common) > 1 else None,
        "score_max_abs_diff": float(np.abs(xa - xb).max()) if len(common) else None,
        "top2_of_common": overlap(_top(common, xa, TOP_PERCENT), _top(common, xb, TOP_PERCENT)),
        "shortlist": overlap(set(ca), set(cb)),
        "sticky": overlap({i for i, c in ca.items() if c.get("sticky")}, {i for i, c in cb.items() if c.get("sticky")}),
        "verified_both": len(both),
        "verdict_agrees": sum(bool(ca[i].get("sticky")) == bool(cb[i].get("sticky")) for i in both),
        "same_scoring_pairs": keys(pa, "scoring") == keys(pb, "scoring"),
        "same_verification_pairs": keys(pa, "verification") == keys(pb, "verification"),
        "mean_similarity": [ra.get("mean_similarity"), rb.get("mean_similarity")],
    }


def row(name_a: str, name_b: str, a: dict) -> str:
    rho = "-" if a["score_spearman"] is None else f"{a['score_spearman']:.4f}"
    same = ("yes" if a["same_scoring_pairs"] and a["same_verification_pairs"] else
            "scoring only" if a["same_scoring_pairs"] else "no")
    return (f"| {name_a} | {name_b} | {same} | {a['common_scored']:,} | {rho} | {overlap_text(a['top2_of_common'])} | "
            f"{overlap_text(a['shortlist'])} | {overlap_text(a['sticky'])} | "
            f"{a['verdict_agrees']} of {a['verified_both']} |")


HEADER = ["| A | B | same pairs | tokens both scored | score Spearman | top 2% of those | shortlists | "
          "sticky tokens | same verdict (candidates of both) |",
          "|---|---|---|---|---|---|---|---|---|"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="finished run folders (two or more)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args(argv)
    if len(args.runs) < 2:
        ap.error("give at least two run folders")
    for r in args.runs:
        if not os.path.isfile(os.path.join(r, "results.json")):
            print(f"error: {r!r} is not a finished run folder (no results.json)", file=sys.stderr)
            return 2
    out = [{"a": a, "b": b, **agreement(a, b)} for i, a in enumerate(args.runs) for b in args.runs[i + 1:]]
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print("\n".join(HEADER + [row(o["a"], o["b"], o) for o in out]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
