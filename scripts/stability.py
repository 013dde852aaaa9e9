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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


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


def top_overlap(x: np.ndarray, y: np.ndarray, share: float) -> float:
    n = max(1, int(round(share * len(x))))
    a, b = set(np.argsort(-x, kind="stable")[:n]), set(np.argsort(-y, kind="stable")[:n])
    return len(a & b) / n


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: the bundled all-MiniLM-L6-v2)")
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--verify-tokens", type=int, default=30)
    ap.add_argument("--draws", default="1,2,4", help="the R values compared (comma-separated; 1 = the paper)")
    ap.add_argument("--verify-draws", default=None, help="R values for verification (default: 1 and max of --draws)")
    ap.add_argument("--seeds", default="42,4242", help="two insert seeds")
    ap.add_argument("--pair-seed", type=int, default=42)
    ap.add_argument("--sample-seed", type=int, default=42)
    ap.add_argument("--sent-pair-num", type=int, default=5)
    ap.add_argument("--verification-sent-pair-num", type=int, default=250)
    ap.add_argument("--insert-num", type=int, default=8)
    ap.add_argument("--tolerances", default="0,1e-4,1e-3")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--sentences", default=None, help="corpus file (default: the built-in corpus)")
    ap.add_argument("--output", default=None)
    args = ap.parse_args(argv)

    import torch

    from stickytoken import _core
    from stickytoken.confidence import bootstrap
    from stickytoken.encoder import Encoder
    from stickytoken.models import load_model, model_name
    from stickytoken.pairs import build_pool, sentences_source, stage_pairs
    from stickytoken.score import VariantSequences, pair_scores, scores_from_pairs
    from stickytoken.verify import fence, per_pair_values, verification_outcomes
    from stickytoken.vocab import build_vocabulary

    draws = sorted({int(r) for r in args.draws.split(",")})
    vdraws = sorted({int(r) for r in (args.verify_draws or f"1,{max(draws)}").split(",")})
    seeds = [int(s) for s in args.seeds.split(",")]
    tols = [float(t) for t in args.tolerances.split(",")]
    if len(seeds) != 2:
        ap.error("--seeds takes exactly two seeds")
    out = args.output
    if out:
        os.makedirs(out, exist_ok=True)
    cache = os.path.join(out, "stability.npz") if out else None
    key = json.dumps({k: v for k, v in vars(args).items() if k not in ("output", "batch_size")}, sort_keys=True)
    data: dict[str, np.ndarray] = {}
    if cache and os.path.exists(cache):
        with np.load(cache) as z:
            if str(z["key"]) == key:
                data = {k: z[k] for k in z.files}

    def save():
        if cache:
            np.savez(cache, key=np.array(key), **{k: v for k, v in data.items() if k != "key"})

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    st = load_model(args.model, device=args.device, dtype=args.dtype)
    enc = Encoder(st, batch_size=args.batch_size, show_progress_bar=False)
    vocab = build_vocabulary(enc.tokenizer)
    avail = vocab.available_ids
    rng = np.random.default_rng(args.sample_seed)
    tokens = np.sort(rng.choice(avail, size=min(args.tokens, len(avail)), replace=False))
    texts = [vocab.texts[i] for i in tokens.tolist()]
    sents, _ = sentences_source(args.sentences)
    t0 = time.perf_counter()
    if "mean_sim" not in data:
        data["mean_sim"] = np.array(float(_core.mean_similarity(enc.encode_texts(vocab.tokens))))
        save()
    mean_sim = float(data["mean_sim"])
    pool = build_pool(sents, enc, args.pair_seed)
    scoring, _ = stage_pairs(pool, mean_sim, args.sent_pair_num, "scoring")
    verifying, _ = stage_pairs(pool, mean_sim, args.verification_sent_pair_num, "verification")
    K, Rmax = args.insert_num, max(draws)
    seq_count = {"scoring": 0, "verification": 0}

    # ---- 1. scoring: seed A every slot, seed B the insert draws only ----------------------------
    def variant_D(pairs, seed, R, ids, txts, slots, desc):
        vs = VariantSequences(enc, pairs, insertion="text", insert_num=K, seed=seed, insert_draws=R)
        Ds, tds = [], []
        step = 50
        for i in range(0, len(ids), step):
            D, td = vs.sequences(ids[i:i + step], txts[i:i + step], slots=slots)
            Ds.append(D)
            tds.append(td)
            print(f"  {desc}: {min(i + step, len(ids))}/{len(ids)} tokens, {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
        return np.concatenate(Ds), np.concatenate(tds)

    if "DA" not in data:
        data["DA"], data["td"] = variant_D(scoring, seeds[0], Rmax, tokens, texts, None, f"scoring seed {seeds[0]}")
        save()
    if "DB" not in data:
        DB, _ = variant_D(scoring, seeds[1], Rmax, tokens, texts, range(2, 2 + Rmax), f"scoring seed {seeds[1]}")
        DB[:, :, :2] = data["DA"][:, :, :2]          # prefix and suffix do not depend on the seed
        data["DB"] = DB
        save()
    DA, DB, td = data["DA"], data["DB"], data["td"]
    rows = []
    scoresR = {}
    for R in draws:
        sA = scores_from_pairs(pair_scores(DA[:, :, :2 + R], td))[:, 0]
        sB = scores_from_pairs(pair_scores(DB[:, :, :2 + R], td))[:, 0]
        scoresR[R] = (sA, sB)
        row = {"R": R, "spearman": spearman(sA, sB), "top10": top_overlap(sA, sB, 0.10),
               "top2": top_overlap(sA, sB, 0.02)}
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
        save()
    if "OB" not in data:
        D, _ = variant_D(verifying, seeds[1] + 1, Rv, best, btexts, range(2, 2 + Rv),
                         f"verification seed {seeds[1] + 1}")
        OB = verification_outcomes(np.nan_to_num(D))
        OB[:, :, :2] = data["OA"][:, :, :2]
        data["OB"] = OB
        save()
    vrows = []
    for R in vdraws:
        per = [per_pair_values(data[o][:, :, :2 + R])[:, :, 0] for o in ("OA", "OB")]
        vals = [p.mean(axis=1) for p in per]
        fences = [fence(v) for v in vals]
        dec = [v > f for v, f in zip(vals, fences)]
        conf = [bootstrap(p, args.bootstrap, s)["confidence"] for p, s in zip(per, seeds)]
        union = (dec[0] | dec[1]).sum()
        vrows.append({"R": R, "tokens": len(best), "fence_A": fences[0], "fence_B": fences[1],
                      "sticky_A": int(dec[0].sum()), "sticky_B": int(dec[1].sum()),
                      "decision_agreement": float(np.mean(dec[0] == dec[1])),
                      "jaccard": float((dec[0] & dec[1]).sum() / union) if union else 1.0,
                      "value_spearman": spearman(vals[0], vals[1]),
                      "confidence_mean_abs_diff": float(np.mean(np.abs(conf[0] - conf[1]))),
                      "robust_agreement": float(np.mean((conf[0] >= 0.9) == (conf[1] >= 0.9)))})
        data[f"conf_R{R}"] = np.stack(conf)
    save()

    # ---- 3. tables -------------------------------------------------------------------------------
    dev = f"{args.device}, {args.dtype}, {torch.get_num_threads()} threads"
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
