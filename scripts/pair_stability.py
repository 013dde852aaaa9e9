"""How much the detector's answer depends on its sentence pairs: the other half of the seed.

`detect --seed S` seeds two random choices: the 1,000 corpus sentences the pair pool is built
from (and so the scoring and verification pairs), and the insert positions.
`scripts/stability.py` re-draws only the insert positions.  This script re-draws the pool
(--pool-seeds, three or more), scores the same seeded sample of tokens on each pool's pairs, and
compares the answers.  It compares them at the paper's 5 scoring pairs and at --pairs N of them
(N - 1 a multiple of 4, e.g. 21).  The N targets then include the paper's 5, so the paper's
pairs are a subset of the N and one run gives both.

1. Scoring.  For each pool seed, the tokens are scored on the stage's N pairs with insert seed
   --insert-seeds A.  The first pool is also scored with insert seed B: the insert-only
   baseline on the same pairs.  Reported:
   - per comparison, at 5 and at N pairs: Spearman of the cosine scores, and the top-10% and
     top-2% overlaps;
   - how many scoring pairs the two pools share.
2. Verification.  The --verify-tokens best tokens (mean N-pair score over the pools) are
   verified on each pool's verification pairs with insert seed A + 1.  The fence is taken over
   them.  Reported per pair of pools: the same decision, the Spearman of the values, the mean
   abs P(sticky) difference, and the same side of P = 0.9.

Prints Markdown tables.  --output keeps the raw arrays (pair_stability.npz) and the tables
(pair_stability.md, pair_stability.json).  Phases are cached in the output folder, so an
interrupted call resumes, and a rerun with the same arguments reprints without model work.

    python scripts/pair_stability.py --tokens 600 --verify-tokens 10 --pairs 9 --output docs/results/pair-stability

(the committed study: about 75 minutes on 2 cores in float32; bfloat16 is faster only on CPUs
with native bf16 kernels, README "bfloat16 on CPU")
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from study import PhaseCache, add_study_arguments, open_study, scoring_comparison  # noqa: E402
from study import verification_comparison, verification_side  # noqa: E402

PAPER_PAIRS = 5


def subset_index(n_pairs: int, paper: int = PAPER_PAIRS) -> np.ndarray:
    """The positions of the paper's `paper` stage targets among `n_pairs` evenly spaced ones:
    target i*(n_pairs-1)/(paper-1), which needs n_pairs - 1 to be a multiple of paper - 1."""
    if n_pairs < paper or (n_pairs - 1) % (paper - 1):
        raise ValueError(f"--pairs must be at least {paper} with --pairs - 1 a multiple of {paper - 1} "
                         f"(e.g. 9, 13, 21), got {n_pairs}")
    return np.arange(paper, dtype=np.int64) * ((n_pairs - 1) // (paper - 1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_study_arguments(ap)
    ap.add_argument("--pairs", type=int, default=21,
                    help="scoring pairs per pool; --pairs - 1 a multiple of 4 so that it holds the paper's 5 (default 21)")
    ap.add_argument("--pool-seeds", default="42,4242,7", help="pool seeds, at least two (default 42,4242,7)")
    ap.add_argument("--insert-seeds", default="42,4242", help="two insert seeds: A for every pool, B for the first")
    args = ap.parse_args(argv)

    try:
        sub = subset_index(args.pairs)
        pool_seeds = [int(s) for s in args.pool_seeds.split(",")]
        ins = [int(s) for s in args.insert_seeds.split(",")]
    except ValueError as e:
        ap.error(str(e))
    if len(pool_seeds) < 2 or len(set(pool_seeds)) != len(pool_seeds):
        ap.error("--pool-seeds takes at least two distinct seeds")
    if len(ins) != 2 or ins[0] == ins[1]:
        ap.error("--insert-seeds takes exactly two distinct seeds")
    if args.tokens < 10 or not 4 <= args.verify_tokens <= args.tokens:
        ap.error("--tokens must be at least 10, and --verify-tokens between 4 and --tokens")

    from stickytoken.models import model_name
    from stickytoken.pairs import build_pool, stage_pairs
    from stickytoken.score import pair_scores
    from stickytoken.verify import per_pair_values, verification_outcomes

    out = args.output
    data = PhaseCache(out, "pair_stability.npz", args)
    study = open_study(args, data)
    st, enc, vocab, tokens, texts, sents = study.st, study.enc, study.vocab, study.tokens, study.texts, study.sentences
    mean_sim, t0 = study.mean_sim, study.t0

    pools = {}
    for s in pool_seeds:
        pool = build_pool(sents, enc, s)
        scoring, _ = stage_pairs(pool, mean_sim, args.pairs, "scoring")
        paper, _ = stage_pairs(pool, mean_sim, PAPER_PAIRS, "scoring")
        verifying, _ = stage_pairs(pool, mean_sim, args.verification_sent_pair_num, "verification")
        if len(scoring) != args.pairs or len(paper) != PAPER_PAIRS:
            raise SystemExit(f"error: pool seed {s}: fewer pairs than asked lie below the mean similarity")
        if [scoring[i] for i in sub] != paper:
            raise SystemExit(f"error: pool seed {s}: the paper's {PAPER_PAIRS} pairs are not the subset "
                             f"{sub.tolist()} of the {args.pairs}")
        pools[s] = (scoring, verifying)

    def per_pair_cosine(pairs, seed, ids, txts, desc):
        """D and td for the tokens on the pairs (insert draws R = 1)."""
        return study.variant_D(pairs, seed, ids, txts, desc, insert_num=args.insert_num)

    # ---- 1. scoring ------------------------------------------------------------------------------
    runs = [(f"pool{s}_ins{ins[0]}", s, ins[0]) for s in pool_seeds] + \
           [(f"pool{pool_seeds[0]}_ins{ins[1]}", pool_seeds[0], ins[1])]
    for name, s, seed in runs:
        if name not in data:
            D, td = per_pair_cosine(pools[s][0], seed, tokens, texts, f"scoring, pool {s}, insert seed {seed}")
            data[name] = pair_scores(D, td)[:, :, 0]

    def score(name: str, which: str) -> np.ndarray:
        pp = data[name]
        return np.round((pp[:, sub] if which == "paper" else pp).mean(axis=1), 6)

    def shared(a, b, idx=None) -> int:
        pa = [(p.reference, p.contrast) for p in (a if idx is None else [a[i] for i in idx])]
        pb = [(p.reference, p.contrast) for p in (b if idx is None else [b[i] for i in idx])]
        return len(set(pa) & set(pb))

    comparisons = [("insert positions only", runs[-1][0], runs[0][0], pool_seeds[0], pool_seeds[0])]
    for a, b in itertools.combinations(pool_seeds, 2):
        comparisons.append((f"pool {a} vs {b}", f"pool{a}_ins{ins[0]}", f"pool{b}_ins{ins[0]}", a, b))
    srows = []
    for label, na, nb, pa, pb in comparisons:
        row = {"comparison": label,
               "shared_paper": shared(pools[pa][0], pools[pb][0], sub),
               "shared_all": shared(pools[pa][0], pools[pb][0])}
        for which in ("paper", "all"):
            for k, v in scoring_comparison(score(na, which), score(nb, which)).items():
                row[f"{k}_{which}"] = v
        srows.append(row)

    # ---- 2. verification of the best tokens, on each pool's verification pairs ------------------------
    mean_all = np.mean([score(f"pool{s}_ins{ins[0]}", "all") for s in pool_seeds], axis=0)
    best = np.sort(tokens[np.argsort(-mean_all, kind="stable")[:args.verify_tokens]])
    btexts = [vocab.texts[i] for i in best.tolist()]
    sides = {}
    for s in pool_seeds:
        name = f"verify_pool{s}"
        if name not in data:
            D, _ = per_pair_cosine(pools[s][1], ins[0] + 1, best, btexts, f"verification, pool {s}")
            data[name] = verification_outcomes(D)
        sides[s] = verification_side(per_pair_values(data[name])[:, :, 0], args.bootstrap, ins[0])
    vrows = [{"comparison": f"pool {a} vs {b}", "shared_pairs": shared(pools[a][1], pools[b][1]),
              **verification_comparison(sides[a], sides[b])}
             for a, b in itertools.combinations(pool_seeds, 2)]

    # ---- 3. tables -------------------------------------------------------------------------------
    dev = study.device_line(args)
    N = args.pairs
    lines = [f"# Stability of the detector under re-drawn sentence pairs: {model_name(st)}", "",
             f"{len(tokens)} tokens (seeded sample, seed {args.sample_seed}), K = {args.insert_num}, insert draws "
             f"R = 1; pool seeds {', '.join(map(str, pool_seeds))} (each pool: {min(1000, len(sents))} of the "
             f"corpus's {len(sents)} sentences); insert seed {ins[0]} (and {ins[1]} on pool {pool_seeds[0]}); {dev}; "
             f"{time.perf_counter() - t0:.0f} s of model work this call.", "",
             f"## Scoring: cosine sticky scores on the paper's {PAPER_PAIRS} pairs and on {N}", "",
             f"A pool comparison re-draws what `--seed` re-draws: the pool's sentences, so the pairs, and the "
             f"insert positions with them. The paper's {PAPER_PAIRS} pairs are those of the {N} at positions "
             f"{', '.join(map(str, sub.tolist()))}.", "",
             f"| re-drawn | scoring pairs shared (of {PAPER_PAIRS}) | Spearman | top-10% | top-2% | "
             f"scoring pairs shared (of {N}) | Spearman, {N} pairs | top-10%, {N} pairs | top-2%, {N} pairs |",
             "|---" * 9 + "|"]
    for r in srows:
        lines.append(f"| {r['comparison']} | {r['shared_paper']} | {r['spearman_paper']:.3f} | {r['top10_paper']:.3f} | "
                     f"{r['top2_paper']:.3f} | {r['shared_all']} | {r['spearman_all']:.3f} | {r['top10_all']:.3f} | "
                     f"{r['top2_all']:.3f} |")
    lines += ["", f"## Verification of the {len(best)} best tokens on each pool's "
              f"{args.verification_sent_pair_num} verification pairs (fence over them)", "",
              "| re-drawn | verification pairs shared | sticky A | sticky B | same decision | Jaccard of sticky sets | "
              "Spearman of values | mean abs P(sticky) diff | same side of P = 0.9 |", "|---" * 9 + "|"]
    for r in vrows:
        lines.append(f"| {r['comparison']} | {r['shared_pairs']} | {r['sticky_a']} | {r['sticky_b']} | "
                     f"{r['decision_agreement']:.3f} | {r['jaccard']:.3f} | {r['value_spearman']:.3f} | "
                     f"{r['confidence_mean_abs_diff']:.3f} | {r['robust_agreement']:.3f} |")
    lines += ["", f"Cost: scoring on {N} pairs is {N / PAPER_PAIRS:.1f}x the paper's model work "
              f"(`detect --sent-pair-num {N}`)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        with open(os.path.join(out, "pair_stability.md"), "w", encoding="utf-8") as fh:
            fh.write(text)
        with open(os.path.join(out, "pair_stability.json"), "w", encoding="utf-8") as fh:
            json.dump({"args": vars(args), "mean_similarity": mean_sim, "scoring": srows, "verification": vrows,
                       "tokens": tokens.tolist(), "verified": best.tolist(),
                       "pairs": {str(s): [[p.reference, p.contrast, p.similarity] for p in pools[s][0]]
                                 for s in pool_seeds}}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
