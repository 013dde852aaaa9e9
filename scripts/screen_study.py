"""How much can a cheap look at a token tell about the detector's decision?  (fast-mode study)

The detector decides in two steps: a token is a *candidate* when its sticky score (a mean of
5 scoring pairs x 3 variants) is in the top 2%, and a candidate is *sticky* when its
verification value (a mean over 250 pairs) is above the fence.  A fast mode can only skip
work if part of that work predicts the rest.  This script measures it on real data:

1. ``--tokens N`` random tokens that an exhaustive run folder has already scored (float32,
   ``parts/score-*.npz``) are scored again pair by pair (in ``--dtype``), giving every
   (pair, variant) term.  Printed: agreement of the recomputed scores with the run's, and for
   each cheap subset of terms its rank correlation with the full score and its recall of the
   top 2% when only the best 5-30% by that subset are kept.
2. ``--verify-tokens M`` of them (the M/6 best scored and the rest at random) get
   ``--verify-pairs`` verification pairs.  Printed: the verification value of high scorers
   against random tokens, its rank correlation with the score, and how well the value from
   the first n pairs predicts the value from all of them.

    python scripts/screen_study.py --run docs/results/all-MiniLM-L6-v2-full-text \\
        --dtype bfloat16 --tokens 2000 --verify-tokens 240 --verify-pairs 50 --save study.npz
    python scripts/screen_study.py --load study.npz      # the printout again, no model work

3. With ``--parts RUN``: the pair terms that exhaustive scoring parts keep (``pair_terms``,
   float32 runs) replay fast mode's scoring (pilot, caps, stopping) on every token that has
   them, taken as the vocabulary: its recall of the top 2% and its share of the work.
4. With ``--simulate-verification``: fast mode's sequential verification on 474 simulated
   candidates (the full vocabulary's count) whose 250 per-pair values are drawn from the
   measured per-pair values of a random measured token each, against the exhaustive decision
   on the same draws; recall, precision and share of the verification work, over 12 seeds.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def compute(args) -> dict:
    import torch

    from stickytoken.encoder import Encoder
    from stickytoken.models import load_model
    from stickytoken.pairs import Pair
    from stickytoken.score import VariantSequences
    from stickytoken.vocab import build_vocabulary

    if args.threads:
        torch.set_num_threads(args.threads)
    with open(os.path.join(args.run, "run.json"), encoding="utf-8") as fh:
        identity = json.load(fh)["identity"]
    files = sorted(glob.glob(os.path.join(args.run, "parts", "score-*.npz")))
    if not files:
        sys.exit(f"{args.run} holds no scoring parts")
    ids = np.concatenate([np.load(f)["ids"] for f in files])
    exact = np.concatenate([np.load(f)["values"][:, 0] for f in files])
    rng = np.random.default_rng(args.seed)
    pick = np.sort(rng.choice(len(ids), min(args.tokens, len(ids)), replace=False))
    tok, exact = ids[pick], exact[pick]
    with open(os.path.join(args.run, "pairs.json"), encoding="utf-8") as fh:
        pairs = json.load(fh)
    st = load_model(args.model, dtype=args.dtype)
    enc = Encoder(st, show_progress_bar=False)
    vocab = build_vocabulary(enc.tokenizer)
    seed, K, insertion = int(identity["seed"]), int(identity["insert_num"]), identity["insertion"]
    seqs = VariantSequences(enc, [Pair.from_dict(d) for d in pairs["scoring"]], insertion=insertion,
                            insert_num=K, seed=seed)
    t0 = time.perf_counter()
    D, td = [], []
    for i in range(0, len(tok), 100):
        d, t = seqs.sequences(tok[i:i + 100], [vocab.texts[j] for j in tok[i:i + 100].tolist()])
        D.append(d[..., 0])
        td.append(t[..., 0])
        print(f"\rscoring {min(i + 100, len(tok))}/{len(tok)}", end="", file=sys.stderr, flush=True)
    print(f"\rscoring: {len(tok) * seqs.n_pairs * 3 * K / (time.perf_counter() - t0):.0f} seq/s", file=sys.stderr)
    out = {"tok": tok, "exact": exact, "D": np.concatenate(D), "td": np.concatenate(td)}
    if args.verify_tokens:
        n_top = args.verify_tokens // 6
        top = tok[np.argsort(-exact, kind="stable")[:n_top]]
        rest = rng.choice(np.setdiff1d(tok, top), args.verify_tokens - n_top, replace=False)
        sel = np.concatenate([top, rest])
        ver = [Pair.from_dict(d) for d in pairs["verification"]]
        pidx = np.sort(np.random.default_rng([seed + 1, 0x5EC]).permutation(len(ver))[:args.verify_pairs])
        vseqs = VariantSequences(enc, ver, insertion=insertion, insert_num=K, seed=seed + 1)
        Dv = []
        for i in range(0, len(sel), 20):
            d, _ = vseqs.sequences(sel[i:i + 20], [vocab.texts[j] for j in sel[i:i + 20].tolist()],
                                   pair_index=pidx, with_td=False)
            Dv.append(d[..., 0])
            print(f"\rverification {min(i + 20, len(sel))}/{len(sel)}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        out.update(vsel=sel, vtop=np.arange(len(sel)) < n_top, Dv=np.concatenate(Dv))
    return out


def cosine_per_pair(Dv: np.ndarray) -> np.ndarray:
    """Cosine distance sequences [T, P, variants, K+1] -> each pair's verification share [T, P]."""
    from stickytoken.verify import verification_per_pair

    return verification_per_pair(np.ascontiguousarray(Dv[..., None]).repeat(3, axis=-1))[..., 0]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def report(z: dict) -> None:
    from stickytoken import _core
    from stickytoken.score import SCORE_WEIGHTS

    D, td, exact = z["D"], z["td"], z["exact"]
    T, P, V, L = D.shape
    s = np.asarray(_core.sticky_score(np.ascontiguousarray(D.reshape(-1, L)),
                                      np.ascontiguousarray(np.repeat(td.reshape(-1), V)), 0.1, 0.05, 0.01))
    s = s.reshape(T, P, V)
    full = (s * SCORE_WEIGHTS).sum(2).mean(1)
    top = exact >= np.percentile(exact, 98)
    print(f"{T} tokens, {int(top.sum())} in the top 2% of the run's float32 scores")
    print(f"recomputed vs run scores: rank corr {spearman(full, exact):.3f}, median |diff| "
          f"{np.median(np.abs(full - exact)):.3f}, max |diff| {np.abs(full - exact).max():.2f}, "
          f"top-2% agreement {(full[top] >= np.percentile(full, 98)).mean():.2f}")

    def recall(proxy, keep):
        m = np.zeros(T, bool)
        m[np.argsort(-proxy, kind="stable")[:int(keep * T)]] = True
        return (m & top).sum() / max(1, top.sum())

    rows = [(f"pair {p}, all variants", 3 * L - 3, (s[:, p] * SCORE_WEIGHTS).sum(1)) for p in range(P)]
    rows += [("pairs 0-1, all variants", 6 * (L - 1), (s[:, :2] * SCORE_WEIGHTS).sum(2).sum(1)),
             ("every pair, prefix only", P * (L - 1), s[:, :, 0].sum(1)),
             ("td (token alone)", 1, -td.mean(1))]
    print("\n| cheap look | sequences/token | rank corr | recall@5% | @10% | @20% | @30% |\n|---|---|---|---|---|---|---|")
    for name, cost, proxy in rows:
        print(f"| {name} | {cost} | {spearman(proxy, exact):.2f} | "
              + " | ".join(f"{recall(proxy, k):.2f}" for k in (0.05, 0.1, 0.2, 0.3)) + " |")
    print(f"(the full score takes {P * V * (L - 1)} sequences per token)")
    if "Dv" not in z:
        return
    Dv, vtop, sel = z["Dv"], z["vtop"], z["vsel"]
    per_pair = cosine_per_pair(Dv)
    val = per_pair.mean(1)
    sc = dict(zip(z["tok"].tolist(), exact))
    score = np.array([sc[int(t)] for t in sel])
    n = per_pair.shape[1]
    print(f"\nverification on {n} pairs: best-scored {int(vtop.sum())} tokens mean {val[vtop].mean():.3f} "
          f"(IQR {np.percentile(val[vtop], 25):.3f}-{np.percentile(val[vtop], 75):.3f}); random "
          f"{int((~vtop).sum())} mean {val[~vtop].mean():.3f} (IQR {np.percentile(val[~vtop], 25):.3f}-"
          f"{np.percentile(val[~vtop], 75):.3f}); rank corr with the score {spearman(val, score):.2f}")
    for k in (2, 4, 8, 16):
        if k < n:
            print(f"  value from the first {k:2d} pairs vs from all {n}: rank corr "
                  f"{spearman(per_pair[:, :k].mean(1), val):.2f}")
    half = n // 2
    r = spearman(per_pair[:, :half].mean(1), per_pair[:, half:2 * half].mean(1))
    print(f"  split-half rank corr ({half} vs {half} pairs): {r:.2f}")


def simulate_verification(z: dict, candidates: int = 474, pairs: int = 250, seeds: int = 12) -> None:
    from stickytoken import _core
    from stickytoken.fast import FastSettings, sequential_verification
    from stickytoken.verify import FENCE_K

    per_pair = cosine_per_pair(z["Dv"])     # [tokens, pairs]
    settings = [("fast default (pilot 20%, z 2.5)", FastSettings()),
                ("pilot 30%", FastSettings(verify_pilot=0.3)),
                ("no early stop", FastSettings(verify_z=float("inf")))]
    print(f"\nsequential verification, {candidates} simulated candidates x {pairs} pairs, {seeds} seeds")
    print("| settings | recall | worst recall | precision | share of the work |\n|---|---|---|---|---|")
    for name, st in settings:
        rec, prec, work = [], [], []
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            src = rng.integers(0, per_pair.shape[0], candidates)
            vals = per_pair[src[:, None], rng.integers(0, per_pair.shape[1], (candidates, pairs))]
            vals = np.repeat(vals[:, :, None], 3, axis=2)
            full = vals.mean(1)[:, 0]
            want = set(np.flatnonzero(full > _core.iqr_fence(np.ascontiguousarray(full), FENCE_K)).tolist())
            est, seen, info = sequential_verification(candidates, pairs, lambda r, a, p: vals[a][:, p], st, seed)
            got = set(np.flatnonzero(est[:, 0] > info["fence"]).tolist())
            if want:      # a seed whose exhaustive decision has no sticky token says nothing of recall
                rec.append(len(want & got) / len(want))
            if got:
                prec.append(len(want & got) / len(got))
            work.append(seen.mean() / pairs)
        f = lambda x, g: f"{g(x):.2f}" if x else "n/a"  # noqa: E731
        print(f"| {name} | {f(rec, np.mean)} | {f(rec, np.min)} | {f(prec, np.mean)} | {np.mean(work):.2f} |")


def replay_scoring(run: str, percent: float = 2.0) -> None:
    from stickytoken.fast import FastSettings, _pilot, staged_scoring

    ids, terms = [], []
    for f in sorted(glob.glob(os.path.join(run, "parts", "score-*.npz"))):
        z = np.load(f)
        if "pair_terms" in z.files:
            ids.append(z["ids"])
            terms.append(z["pair_terms"])
    if not ids:
        print(f"\n{run}: no scoring part keeps pair terms")
        return
    ids, terms = np.concatenate(ids), np.concatenate(terms)
    n, P = terms.shape[:2]
    full = np.round(terms[:, :, 0].mean(1), 6)
    thr = np.percentile(full, 100 - percent)
    top = full >= thr
    print(f"\nfast scoring replayed on {n} tokens with pair terms ({int(top.sum())} in the top {percent}%)")
    print("| pilot | cap percentile | top recall | share of the work |\n|---|---|---|---|")
    for pilot_share, cap in [(0.04, 99.5), (0.04, 99.0), (0.04, 100.0), (0.08, 99.5)]:
        pilot = np.isin(ids, _pilot(ids, 42, FastSettings(pilot=pilot_share)))
        rest = np.flatnonzero(~pilot)
        _, alive, _, stages = staged_scoring(len(rest), lambda p, idx: terms[rest[idx], p], terms[pilot],
                                             percent, cap)
        kept = pilot.copy()
        kept[rest[alive]] = True
        work = pilot.sum() * P + sum(st["scored"] for st in stages)
        print(f"| {pilot_share:.0%} | {cap} | {(kept & top).sum() / top.sum():.3f} | {work / (n * P):.2f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="exhaustive run folder with scoring parts")
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--verify-tokens", type=int, default=0)
    ap.add_argument("--verify-pairs", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--save", default=None, help="keep the raw distances in this .npz")
    ap.add_argument("--load", default=None, help="print the study from a saved .npz, no model work")
    ap.add_argument("--parts", default=None, help="exhaustive run folder whose scoring parts keep pair terms")
    ap.add_argument("--simulate-verification", action="store_true",
                    help="also simulate fast verification on 474 candidates drawn from the measured values")
    args = ap.parse_args(argv)
    if args.parts and not args.load and not args.run:
        replay_scoring(args.parts)
        return 0
    if args.load:
        z = dict(np.load(args.load))
    else:
        if not args.run:
            ap.error("give --run (an exhaustive run folder) or --load")
        z = compute(args)
        if args.save:
            np.savez_compressed(args.save, **z)
    report(z)
    if args.simulate_verification and "Dv" in z:
        simulate_verification(z)
    if args.parts:
        replay_scoring(args.parts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
