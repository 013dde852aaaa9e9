"""Recall of fast mode against the exhaustive detector.

Either compare two finished run folders:

    python scripts/recall.py --exhaustive RUN_A --fast RUN_B

or run both modes on the same seeded sample of tokens (``--max-tokens``) and compare:

    python scripts/recall.py --max-tokens 1000 --out recall_runs [--model PATH]

``--fast-only`` runs only the fast side next to an exhaustive folder given with
``--exhaustive`` (the mean similarity and pairs, which depend on the model, corpus and seed
alone, are copied from it instead of recomputed).  Prints sticky-token recall and precision
(the exhaustive run's sticky tokens are the truth), candidate-set recall, overlap, fences,
thresholds and the model work each mode did.  Recall on a sample is recall on that sample:
the fence is computed among the sample's candidates.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _load(folder: str):
    from stickytoken.results import DetectionResult

    res = DetectionResult.load(folder)
    with open(os.path.join(folder, "run.json"), encoding="utf-8") as fh:
        run = json.load(fh)
    return res, run


def _work(run: dict, res) -> str:
    fast = run.get("fast")
    if not fast:
        n = len(res.scored_ids)
        return f"{n} tokens fully scored, {len(res.candidates)} candidates verified on every pair"
    s, v = fast["screen"], fast["verify"]
    return (f"{s['screened']} tokens, {s['fully_scored']} fully scored (scoring {s.get('passes', 0)} of "
            f"{s.get('exhaustive_passes', 0)} sequences); verification "
            f"{v.get('passes', 0)} of {v.get('exhaustive_passes', 0)} sequences "
            f"({v.get('stopped_early', 0)} candidates stopped early)")


def compare(ex_dir: str, fast_dir: str) -> dict:
    ex, ex_run = _load(ex_dir)
    fa, fa_run = _load(fast_dir)
    if not fa.params.get("fast") and not fa_run["identity"].get("fast"):
        print(f"warning: {fast_dir} is not a fast-mode run", file=sys.stderr)
    truth = {t.id for t in ex.sticky_tokens}
    found = {t.id for t in fa.sticky_tokens}
    ex_c, fa_c = {c.id for c in ex.candidates}, {c.id for c in fa.candidates}
    both = truth & found
    out = {
        "sample_tokens": int(len(ex.scored_ids)),
        "exhaustive_sticky": len(truth), "fast_sticky": len(found), "overlap": len(both),
        "recall": len(both) / len(truth) if truth else None,
        "precision": len(both) / len(found) if found else None,
        "candidate_recall": len(ex_c & fa_c) / len(ex_c) if ex_c else None,
        "exhaustive_candidates": len(ex_c), "fast_candidates": len(fa_c),
        "threshold": [ex.shortlist_threshold, fa.shortlist_threshold], "fence": [ex.fence, fa.fence],
        "missed": sorted(truth - found), "extra": sorted(found - truth),
        "time_s": [sum(v for k, v in ex_run["timings"].items() if not k.startswith("peak") and k != "total_this_session"),
                   sum(v for k, v in fa_run["timings"].items() if not k.startswith("peak") and k != "total_this_session")],
    }
    tok = {c.id: c for c in ex.candidates} | {c.id: c for c in fa.candidates}
    name = lambda i: repr(tok[i].token) if i in tok else str(i)  # noqa: E731
    ver_ex = {c.id: c.verification for c in ex.candidates}
    ver_fa = {c.id: c.verification for c in fa.candidates}
    common = sorted(set(ver_ex) & set(ver_fa))
    print(f"exhaustive: {ex_dir}\n  {_work(ex_run, ex)}")
    print(f"fast:       {fast_dir}\n  {_work(fa_run, fa)}")
    print(f"tokens scored in the sample: exhaustive {len(ex.scored_ids)}, fast {len(fa.scored_ids)}")
    print(f"shortlist threshold: exhaustive {ex.shortlist_threshold:.6f}, fast {fa.shortlist_threshold:.6f}")
    print(f"candidates: exhaustive {len(ex_c)}, fast {len(fa_c)}, both {len(ex_c & fa_c)}"
          + (f" (candidate recall {out['candidate_recall']:.3f})" if ex_c else ""))
    print(f"fence: exhaustive {ex.fence}, fast {fa.fence}")
    print(f"sticky: exhaustive {len(truth)}, fast {len(found)}, both {len(both)}")
    print(f"  recall    {out['recall']:.3f}" if truth else "  recall    n/a (the exhaustive run found none)")
    print(f"  precision {out['precision']:.3f}" if found else "  precision n/a (fast mode found none)")
    if out["missed"]:
        print("  missed:", ", ".join(name(i) for i in out["missed"]))
    if out["extra"]:
        print("  extra: ", ", ".join(name(i) for i in out["extra"]))
    if common:
        import numpy as np

        d = np.array([ver_fa[i] - ver_ex[i] for i in common])
        print(f"verification value, fast - exhaustive, on {len(common)} common candidates: "
              f"mean {d.mean():+.4f}, max |.| {np.abs(d).max():.4f}")
    print(f"model time (s, sum of stage timings): exhaustive {out['time_s'][0]:.0f}, fast {out['time_s'][1]:.0f}")
    return out


def _seed_fast_folder(ex_dir: str, fast_dir: str, settings) -> None:
    """Create the fast run folder with the exhaustive run's mean similarity and pairs (they
    depend on model, corpus and seed only), so the fast run does not recompute them."""
    from stickytoken.runfolder import RunFolder

    with open(os.path.join(ex_dir, "run.json"), encoding="utf-8") as fh:
        ex_run = json.load(fh)
    if os.path.exists(os.path.join(fast_dir, "run.json")):
        return
    identity = {**ex_run["identity"], "fast": True, "fast_settings": settings.identity()}
    RunFolder(fast_dir, identity, {k: ex_run[k] for k in ("versions", "device") if k in ex_run})
    for name in ("mean_similarity.json", "pairs.json"):
        src = os.path.join(ex_dir, name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(fast_dir, name))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exhaustive", help="finished (or, with --fast-only, any) exhaustive run folder")
    ap.add_argument("--fast", help="finished fast run folder (or where to write one)")
    ap.add_argument("--fast-only", action="store_true", help="run only the fast side next to --exhaustive")
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-tokens", type=int, default=None, help="seeded sample of tokens for both runs")
    ap.add_argument("--out", default="recall_runs", help="folder for the two runs when this script runs them")
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", default=None, help="also write the comparison to this JSON file")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    import stickytoken
    from stickytoken.fast import FastSettings

    show = not args.quiet
    ex_dir = args.exhaustive or os.path.join(args.out, "exhaustive")
    fa_dir = args.fast or os.path.join(args.out, "fast")
    need_run = not (args.exhaustive and args.fast and not args.fast_only)
    if need_run:
        if args.exhaustive is None or not args.fast_only:
            if args.max_tokens is None:
                ap.error("give --max-tokens to run both modes, or --exhaustive and --fast folders to compare")
            stickytoken.detect(args.model, max_tokens=args.max_tokens, output=ex_dir, device=args.device,
                               show_progress_bar=show)
        elif args.max_tokens is None:
            with open(os.path.join(ex_dir, "run.json"), encoding="utf-8") as fh:
                args.max_tokens = json.load(fh)["identity"].get("max_tokens")
        settings = FastSettings()
        _seed_fast_folder(ex_dir, fa_dir, settings)
        stickytoken.detect(args.model, max_tokens=args.max_tokens, output=fa_dir, device=args.device,
                           show_progress_bar=show, fast=True, fast_settings=settings)
    if not os.path.exists(os.path.join(ex_dir, "results.json")):
        print(f"{ex_dir} has not finished yet; run this again when it has", file=sys.stderr)
        return 1
    out = compare(ex_dir, fa_dir)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
