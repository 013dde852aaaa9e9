"""How good is ``detect --estimate``?  Runs the estimate and then the real run with the same
flags, and prints per stage the predicted and the measured sequences and wall time.

    python scripts/estimate_check.py                                  # --max-tokens 200, bundled model
    python scripts/estimate_check.py --output /tmp/est200 --write docs/results/estimate/estimate.md
    python scripts/estimate_check.py -- --max-tokens 500 --device cuda   # any detect flags after --

The real run goes into a fresh folder (``--output``, removed first when it already holds a
run: a finished folder would be read back, not recomputed).  The machine's load average is
recorded before and after, since on a shared machine both numbers move with it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

STAGES = [("load", "model load, vocabulary", ("load", "vocab")),
          ("mean_similarity", "mean similarity", ("mean_similarity",)),
          ("pairs", "pair pool", ("pairs",)),
          ("scoring", "scoring", ("scoring",)),
          ("verification", "verification", ("verification",)),
          ("audit", "audit", ("audit",))]


def _load() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min) on {os.cpu_count()} CPUs"
    except OSError:  # pragma: no cover
        return "unknown"


def _run(cmd: list[str]) -> tuple[str, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout, wall


def _pct(pred: float, real: float) -> str:
    return "-" if not real else f"{100.0 * (pred - real) / real:+.0f}%"


def _seconds(s: float) -> str:
    return f"{s:,.1f} s"


def _table(est: dict) -> str:
    """The Markdown table ``detect --estimate`` prints, rebuilt from its ``--json`` output."""
    from stickytoken.estimate import Estimate, StageEstimate

    d = {k: v for k, v in est.items() if k not in ("total_sequences", "total_seconds", "rank_seconds")}
    d["stages"] = [StageEstimate(**s) for s in d["stages"]]
    return Estimate(**d).table()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="/tmp/est200", help="folder of the real run (default /tmp/est200)")
    ap.add_argument("--write", default=None, help="also write the report (Markdown) to this file")
    ap.add_argument("detect_flags", nargs="*", help="detect flags after -- (default: --max-tokens 200)")
    args = ap.parse_args(argv)
    flags = args.detect_flags or ["--max-tokens", "200"]
    py = [sys.executable, "-m", "stickytoken", "detect", *flags]

    load_before = _load()
    est_out, est_wall = _run(py + ["--estimate", "--json", "--quiet"])
    est = json.loads(est_out)
    if os.path.exists(os.path.join(args.output, "run.json")):
        shutil.rmtree(args.output)
    load_mid = _load()
    _, real_wall = _run(py + ["--output", args.output, "--quiet", "--json"])
    load_after = _load()
    with open(os.path.join(args.output, "run.json"), encoding="utf-8") as fh:
        run = json.load(fh)
    with open(os.path.join(args.output, "results.json"), encoding="utf-8") as fh:
        res = json.load(fh)
    with open(os.path.join(args.output, "pairs.json"), encoding="utf-8") as fh:
        pairs = json.load(fh)
    timings = run["timings"]

    # what the run encoded per stage, from its folder (the total is the encoder's own count)
    K, R = est["settings"]["insert_num"], est["settings"]["insert_draws"]
    Ps, Pv = len(pairs["scoring"]), len(pairs["verification"])
    n_scored, n_cand = int(res["n_scored"]), len(res["candidates"])
    audited = (res.get("audit") or {}).get("audited", 0)

    def variant(t, P):
        return 0 if not t else 2 * P + t * (P * (2 + R) * K + 1)

    by_stage = {s["stage"]: s for s in est["stages"]}
    real_seqs = {"mean_similarity": est["vocab_size"], "pairs": by_stage["pairs"]["sequences"],
                 "scoring": variant(n_scored, Ps), "verification": variant(n_cand, Pv),
                 "audit": variant(audited, Pv)}
    # the model's own count per variant stage where the run recorded it (rows that another
    # pair shares are embedded once, which the count above does not know)
    real_seqs.update({k: v["sequences"] for k, v in run.get("profile", {}).items()
                      if isinstance(v, dict) and "sequences" in v})
    lines = ["# `detect --estimate` against the real run", "",
             f"Command: `python -m stickytoken detect {' '.join(flags)}` (estimate: the same with `--estimate`; "
             f"real run: `--output {args.output}`), model {est['model']}, {est['device']}, {est['dtype']}, "
             f"batch size {est['batch_size']}.", "",
             "| stage | predicted sequences | real sequences | predicted time | real time | time error |",
             "|---|---|---|---|---|---|"]
    pred_total = real_total_stages = 0.0
    for key, label, real_keys in STAGES:
        s = by_stage.get(key)
        if s is None:
            continue
        real_t = sum(float(timings.get(k, 0.0)) for k in real_keys)
        pred_total += s["seconds"]
        real_total_stages += real_t
        pseq = "-" if s["rate"] is None else f"{s['sequences']:,}"
        rseq = "-" if key == "load" else f"{real_seqs[key]:,}"
        lines.append(f"| {label}{' (measured by the estimate)' if key == 'load' else ''} | {pseq} | {rseq} | "
                     f"{_seconds(s['seconds'])} | {_seconds(real_t)} | {_pct(s['seconds'], real_t)} |")
    total_real = float(timings.get("total_this_session", real_wall))
    rest = total_real - real_total_stages
    lines.append(f"| bootstrap, writing the folder (not predicted) | - | - | - | {_seconds(rest)} | - |")
    lines.append(f"| **total** | **{est['total_sequences']:,}** | **{run['sequences_encoded_this_session']:,}** "
                 f"(encoder count) | **{_seconds(pred_total)}** | **{_seconds(total_real)}** | "
                 f"**{_pct(pred_total, total_real)}** |")
    cal, cost = est["calibration"], est["calibration"]["cost"]
    lines += ["",
              f"- the estimate's timing: {cal['forward_passes']} forward passes in {cal['seconds']:.1f} s fitted "
              f"{cost['alpha'] * 1e3:.2f} ms + {cost['beta'] * 1e6:.3f} us x rows x width + {cost['gamma'] * 1e6:.1f} "
              f"us x rows + {cost.get('delta', 0.0) * 1e9:.1f} ns x rows x width^2 a pass; the whole `--estimate` "
              f"command took {est_wall:.1f} s wall (model load included)",
              f"- real run: {n_scored} tokens scored on {Ps} pairs, {n_cand} candidates verified on {Pv} pairs "
              f"(predicted {est['tested']} and {est['candidates']}); {real_wall:.1f} s wall for the command",
              f"- load average before the estimate: {load_before}; before the real run: {load_mid}; after: "
              f"{load_after}",
              "", "The estimate as `--estimate` printed it (the same numbers as its `--json` above):", "",
              _table(est)]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.write:
        os.makedirs(os.path.dirname(os.path.abspath(args.write)), exist_ok=True)
        with open(args.write, "w", encoding="utf-8") as fh:
            fh.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
