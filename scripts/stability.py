"""How much the detector's answer depends on the random insert positions, for R = 1 (the
paper) and stable mode's R insert draws (issue 10's proof).

Everything but the insert positions is fixed: the model, the pairs (pool seeded by
--pair-seed), the tokens.  Only the insert seed changes (--seeds A,B).  Prefix and suffix do
not depend on it and are computed once.

1. Scoring: a seeded sample of --tokens available tokens, scored with each insert seed and
   insert draws 0..max(R)-1; the score for R uses the first R draws.  Reported per R: the
   Spearman correlation of the two seeds' cosine scores and the overlap of their top 10%
   (and top 2%); and, for --tolerances, the same with distance steps no larger than the
   tolerance treated as flat (the discontinuity question).
2. Verification: the --verify-tokens best-scored tokens (mean cosine score over both seeds
   at max R), verified on the stage's verification pairs with both seeds; per R, the fence
   (Q3 + 0.7 IQR over the set) and each token's decision, the agreement of the decisions, the
   Jaccard index of the two sticky sets, and the bootstrap P(sticky) of each token.
3. Cost: sequences per token for each R, as a multiple of the paper's.

Prints Markdown tables; --output keeps the raw arrays (stability.npz) and the tables
(stability.md, stability.json).  Phases are cached in the output folder, so a rerun with the
same arguments reprints without model work.

    python scripts/stability.py --tokens 1000 --verify-tokens 30 --draws 1,2,4 --output docs/results/stability
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from study import PhaseCache, add_study_arguments, open_study, scoring_comparison, spearman, top_overlap  # noqa: E402,F401
from study import verification_comparison, verification_side  # noqa: E402


def flat_tolerant_scores(D: np.ndarray, td: np.ndarray, tol: float) -> np.ndarray:
    """Cosine sticky scores [T] with steps |step| <= tol counted as flat (tol = 0: the paper's
    score, up to the rounding); D [T, P, 2 + R, K+1, 3], td [T, P, 3]."""
    from stickytoken.score import SCORE_CONSTANTS, SCORE_WEIGHTS, combine_variants

    a, b, c0 = SCORE_CONSTANTS["cosine"]
    steps = np.diff(D[..., 0], axis=-1)                       # [T, P, V, K]
    falls, rises = steps < -tol, steps > tol
    fall = np.where(falls, -steps, 0.0).sum(-1)
    rise = np.where(rises, steps, 0.0).sum(-1)
    s = (fall + a * falls.sum(-1) + 0.1 * td[..., 0][..., None]) / (rise + b * rises.sum(-1) + c0)
    return combine_variants(s, SCORE_WEIGHTS).mean(axis=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_study_arguments(ap)
    ap.add_argument("--draws", default="1,2,4", help="the R values compared (comma-separated; 1 = the paper)")
    ap.add_argument("--verify-draws", default=None, help="R values for verification (default: 1 and max of --draws)")
    ap.add_argument("--seeds", default="42,4242", help="two insert seeds")
    ap.add_argument("--pair-seed", type=int, default=42)
    ap.add_argument("--sent-pair-num", type=int, default=5)
    ap.add_argument("--tolerances", default="0,1e-4,1e-3")
    args = ap.parse_args(argv)

    from stickytoken.models import model_name
    from stickytoken.pairs import build_pool, stage_pairs
    from stickytoken.score import pair_scores, scores_from_pairs
    from stickytoken.verify import per_pair_values, verification_outcomes

    draws = sorted({int(r) for r in args.draws.split(",")})
    vdraws = sorted({int(r) for r in (args.verify_draws or f"1,{max(draws)}").split(",")})
    seeds = [int(s) for s in args.seeds.split(",")]
    tols = [float(t) for t in args.tolerances.split(",")]
    if len(seeds) != 2:
        ap.error("--seeds takes exactly two seeds")
    out = args.output
    data = PhaseCache(out, "stability.npz", args)
    study = open_study(args, data)
    st, enc, vocab, tokens, texts, t0 = study.st, study.enc, study.vocab, study.tokens, study.texts, study.t0
    pool = build_pool(study.sentences, enc, args.pair_seed)
    scoring, _ = stage_pairs(pool, study.mean_sim, args.sent_pair_num, "scoring")
    verifying, _ = stage_pairs(pool, study.mean_sim, args.verification_sent_pair_num, "verification")
    K, Rmax = args.insert_num, max(draws)
    seq_count = {"scoring": 0, "verification": 0}

    # ---- 1. scoring: seed A every slot, seed B the insert draws only ----------------------------
    def variant_D(pairs, seed, R, ids, txts, slots, desc):
        return study.variant_D(pairs, seed, ids, txts, desc, insert_num=K, insert_draws=R, slots=slots)

    if "DA" not in data:
        DA, td = variant_D(scoring, seeds[0], Rmax, tokens, texts, None, f"scoring seed {seeds[0]}")
        data["td"] = td
        data["DA"] = DA
    if "DB" not in data:
        DB, _ = variant_D(scoring, seeds[1], Rmax, tokens, texts, range(2, 2 + Rmax), f"scoring seed {seeds[1]}")
        DB[:, :, :2] = data["DA"][:, :, :2]          # prefix and suffix do not depend on the seed
        data["DB"] = DB
    DA, DB, td = data["DA"], data["DB"], data["td"]
    rows = []
    scoresR = {}
    for R in draws:
        sA = scores_from_pairs(pair_scores(DA[:, :, :2 + R], td))[:, 0]
        sB = scores_from_pairs(pair_scores(DB[:, :, :2 + R], td))[:, 0]
        scoresR[R] = (sA, sB)
        row = {"R": R, **scoring_comparison(sA, sB)}
        for tol in tols:
            fA = flat_tolerant_scores(DA[:, :, :2 + R], td, tol)
            fB = flat_tolerant_scores(DB[:, :, :2 + R], td, tol)
            row[f"spearman_tol{tol:g}"] = spearman(fA, fB)
            row[f"top10_tol{tol:g}"] = top_overlap(fA, fB, 0.10)
        rows.append(row)
    seq_count["scoring"] = len(tokens) * len(scoring) * K  # per variant slot

    # ---- 2. verification of the best-scored tokens ------------------------------------------------
    Rv = max(vdraws)
    mean_score = (scoresR[Rmax][0] + scoresR[Rmax][1]) / 2
    best = np.sort(tokens[np.argsort(-mean_score, kind="stable")[:args.verify_tokens]])
    btexts = [vocab.texts[i] for i in best.tolist()]
    if "OA" not in data:
        D, _ = variant_D(verifying, seeds[0] + 1, Rv, best, btexts, None, f"verification seed {seeds[0] + 1}")
        data["OA"] = verification_outcomes(D)
    if "OB" not in data:
        D, _ = variant_D(verifying, seeds[1] + 1, Rv, best, btexts, range(2, 2 + Rv),
                         f"verification seed {seeds[1] + 1}")
        OB = verification_outcomes(np.nan_to_num(D))
        OB[:, :, :2] = data["OA"][:, :, :2]
        data["OB"] = OB
    vrows = []
    for R in vdraws:
        per = [per_pair_values(data[o][:, :, :2 + R])[:, :, 0] for o in ("OA", "OB")]
        sides = [verification_side(p, args.bootstrap, s) for p, s in zip(per, seeds)]
        cmp = verification_comparison(*sides)
        vrows.append({"R": R, "tokens": len(best), "fence_A": sides[0]["fence"], "fence_B": sides[1]["fence"],
                      "sticky_A": cmp.pop("sticky_a"), "sticky_B": cmp.pop("sticky_b"), **cmp})
        data[f"conf_R{R}"] = np.stack([side["confidence"] for side in sides])

    # ---- 3. tables -------------------------------------------------------------------------------
    dev = study.device_line(args)
    lines = [f"# Stability of the detector under re-drawn insert positions: {model_name(st)}", "",
             f"{len(tokens)} tokens (seeded sample), {len(scoring)} scoring pairs, {len(best)} verified tokens on "
             f"{len(verifying)} verification pairs, K = {K}, insert seeds {seeds[0]} and {seeds[1]} (verification "
             f"{seeds[0] + 1} and {seeds[1] + 1}), everything else fixed; {dev}; "
             f"{time.perf_counter() - t0:.0f} s of model work this call.", "",
             "## Scoring: the two seeds' cosine sticky scores", "",
             "| R | Spearman | top-10% overlap | top-2% overlap | "
             + " | ".join(f"Spearman, steps <= {t:g} flat | top-10%, steps <= {t:g} flat" for t in tols) + " |",
             "|---" * (4 + 2 * len(tols)) + "|"]
    for r in rows:
        lines.append(f"| {r['R']} | {r['spearman']:.3f} | {r['top10']:.3f} | {r['top2']:.3f} | " + " | ".join(
            f"{r[f'spearman_tol{t:g}']:.3f} | {r[f'top10_tol{t:g}']:.3f}" for t in tols) + " |")
    lines += ["", f"## Verification of the {len(best)} best-scored tokens (fence over them)", "",
              "| R | fence A | fence B | sticky A | sticky B | same decision | Jaccard of sticky sets | "
              "Spearman of values | mean abs P(sticky) diff | same side of P = 0.9 |", "|---" * 10 + "|"]
    for r in vrows:
        lines.append(f"| {r['R']} | {r['fence_A']:.4f} | {r['fence_B']:.4f} | {r['sticky_A']} | {r['sticky_B']} | "
                     f"{r['decision_agreement']:.3f} | {r['jaccard']:.3f} | {r['value_spearman']:.3f} | "
                     f"{r['confidence_mean_abs_diff']:.3f} | {r['robust_agreement']:.3f} |")
    lines += ["", "## Cost (model sequences per token, as a multiple of the paper's R = 1)", "",
              "| R | scoring | verification |", "|---|---|---|"]
    for R in sorted(set(draws) | set(vdraws)):
        lines.append(f"| {R} | {(2 + R) / 3:.2f}x | {(2 + R) / 3:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        with open(os.path.join(out, "stability.md"), "w", encoding="utf-8") as fh:
            fh.write(text)
        with open(os.path.join(out, "stability.json"), "w", encoding="utf-8") as fh:
            json.dump({"args": vars(args), "scoring": rows, "verification": vrows,
                       "tokens": tokens.tolist(), "verified": best.tolist()}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
