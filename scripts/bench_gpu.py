"""The detector end to end on a GPU (or any device): per-stage wall time, the pipeline's
sequences per second against the bare forward rate of the same model on the same batch
shapes, peak memory, and agreement between runs.

Each configuration is one real ``python -m stickytoken detect`` (a fresh process, model load
included, as a user runs it) on the full vocabulary with default parameters; bf16, float32 and
the stable mode (``--insert-draws 4``) by default, and bf16 and float32 on the CPU run's own
pairs (``detect --pairs``), so that only the numerics differ.  Then, in this process, the model
alone runs the rows of a seeded sample of the run's own scoring and verification tokens, cut
into the encoder's batches and already on the device (the bare forward rate).  Finally the runs are
compared: overlap of the shortlists (top 2%) and of the sticky tokens, with each other and with
a finished CPU float32 run (``--cpu-run``).  The runs named by ``--trace`` (the two with a
target, by default) trace one chunk of scoring and of verification under torch.profiler
(``STICKYTOKEN_TRACE``): the table then says how busy the GPU was in it, where it paused, how
often the host waited for it, and which kernels and host operations took the time; their
``trace/`` folders are copied to ``OUT/trace-<config>``.

Writes ``bench.json`` (everything) and ``bench.md`` (the table) under ``--out`` and prints the
table last.

    python scripts/bench_gpu.py --out docs/results/gpu                  # cuda, the bundled model
    python scripts/bench_gpu.py --device cpu --max-tokens 300 --configs bf16 --out /tmp/b   # smoke test

On the lent GPU machine (no weights, no network; README "On a GPU"), after
``python scripts/gpu_carry.py split`` here:

    call 1, carry [".carry/w1"]:  python3 setup.py -q build_ext --inplace && nvidia-smi -L
    call 2, carry [".carry/w2"]:  python3 scripts/gpu_carry.py join && export PYTHONPATH=$PWD/.carry/site:$PWD
        HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1; python3 -m pytest -q tests/test_cuda.py tests/test_rows.py
        2>&1 | tee $OUT/tests.log; python3 scripts/bench_gpu.py --out $OUT/gpu --runs-dir /tmp/runs
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import agreement as agree  # noqa: E402
from bench import run_limited  # noqa: E402

CONFIGS = {
    "bf16": {"dtype": "bfloat16", "insert_draws": 1},
    # the CPU float32 run's own pairs (detect --pairs CPU_RUN): agreement then measures the
    # numerics alone (a dtype's rounding moves the mean similarity and the pool's similarities,
    # and with them which pairs a run picks)
    "bf16-samepairs": {"dtype": "bfloat16", "insert_draws": 1, "pairs": "cpu-run"},
    "fp32": {"dtype": "float32", "insert_draws": 1},
    "bf16-stable4": {"dtype": "bfloat16", "insert_draws": 4},
    # float32 on the CPU run's pairs: the device's float32 numerics alone (even in float32 the
    # picks follow the last bits: 1 thread instead of 2, or another batch size, changes a pool
    # pair or a stage pair on the same CPU; README "Stable mode and confidence")
    "fp32-samepairs": {"dtype": "float32", "insert_draws": 1, "pairs": "cpu-run"},
    "fp16": {"dtype": "float16", "insert_draws": 1},
    # torch.compile (detect --compile): compiling is part of its end-to-end time
    "bf16-compile": {"dtype": "bfloat16", "insert_draws": 1, "compile": True},
}

# in order of need: with --budget the last ones are the first left out
DEFAULT_CONFIGS = "bf16,bf16-samepairs,fp32,bf16-stable4,fp32-samepairs"
# the runs with a target: one chunk of each variant stage traced, to say where their time went
DEFAULT_TRACE = "bf16,bf16-stable4"
TRACE_ENV = "STICKYTOKEN_TRACE"


def export_seconds(rec: dict) -> float:
    """Seconds a traced run spent writing its traces (after its stages, so in its wall time only)."""
    return sum(p["trace"].get("export_s", 0.0) for p in rec.get("profile", {}).values()
               if isinstance(p, dict) and isinstance(p.get("trace"), dict))


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores"


def run_detect(name: str, cfg: dict, args, out_dir: str, limit: float | None = None, trace: bool = False) -> dict:
    """One detect in a fresh process; its wall time, JSON summary and run.json.  Past ``limit``
    seconds it is stopped (with its row-building workers) and reported as far as it got.  With
    ``trace``, one chunk of its scoring and of its verification runs under torch.profiler
    (``STICKYTOKEN_TRACE``, stickytoken/trace.py)."""
    run_dir = os.path.join(args.runs_dir or os.path.join(out_dir, "runs"), name)
    cmd = [sys.executable, "-m", "stickytoken", "detect", "--device", args.device, "--dtype", cfg["dtype"],
           "--insert-draws", str(cfg["insert_draws"]), "--output", run_dir, "--json", "--quiet"]
    if args.model:
        cmd += ["--model", args.model]
    if args.max_tokens:
        cmd += ["--max-tokens", str(args.max_tokens)]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    if cfg.get("compile"):
        cmd += ["--compile"]
    if cfg.get("pairs") == "cpu-run":
        if not os.path.isfile(os.path.join(args.cpu_run, "pairs.json")):
            raise SystemExit(f"error: {name} needs the CPU run's pairs.json, and {args.cpu_run!r} has none")
        cmd += ["--pairs", args.cpu_run]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           TRACE_ENV: "1" if trace else "0"}
    t0 = time.perf_counter()
    proc = run_limited(cmd, limit, env=env, cwd=ROOT)
    if trace and os.path.isdir(os.path.join(run_dir, "trace")):   # beside bench.json, whatever --runs-dir
        shutil.copytree(os.path.join(run_dir, "trace"), os.path.join(out_dir, f"trace-{name}"), dirs_exist_ok=True)
    if proc.returncode is None:   # stopped at its limit: what it did by then, from its run.json (saved at each stage's end)
        with open(os.path.join(out_dir, f"detect-{name}.log"), "w") as fh:
            fh.write(" ".join(cmd) + f"\n\nstopped after {limit:g} s\n" + proc.stdout + "\n" + proc.stderr)
        run = {}
        if os.path.isfile(os.path.join(run_dir, "run.json")):
            with open(os.path.join(run_dir, "run.json")) as fh:
                run = json.load(fh)
        return {"name": name, "config": cfg, "command": " ".join(cmd[1:]), "timed_out": round(limit, 1),
                "run_dir": run_dir, "timings": run.get("timings", {}), "profile": run.get("profile", {})}
    wall = time.perf_counter() - t0
    with open(os.path.join(out_dir, f"detect-{name}.log"), "w") as fh:
        fh.write(" ".join(cmd) + "\n\n" + proc.stdout + "\n" + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"error: detect ({name}) failed with exit {proc.returncode}: "
                         f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
    summary = json.loads(proc.stdout)
    with open(os.path.join(run_dir, "run.json")) as fh:
        run = json.load(fh)
    with open(os.path.join(run_dir, "results.json")) as fh:
        results = json.load(fh)
    return {"name": name, "config": cfg, "command": " ".join(cmd[1:]), "wall_s": round(wall, 2), "run_dir": run_dir,
            "traced": trace,
            "summary": summary, "timings": run.get("timings", {}), "profile": run.get("profile", {}),
            "peak_memory": results.get("peak_memory", {}), "n_scored": results.get("n_scored"),
            "n_candidates": results.get("n_candidates"), "n_sticky": results.get("n_sticky"), "vocab_size": results.get("vocab_size"),
            "params": results.get("params", {}),
            # how the forward passes ran (Encoder.describe): attention kernels, torch.compile
            "kernels": {k: run[k] for k in ("attention", "compile") if k in run}}


def stage_sequences(rec: dict) -> dict:
    """Sequences each stage encodes (exact: rows of the variants, less those pairs sharing a
    contrast share, plus each token alone plus the stage's references and contrasts; the
    run's pairs.json)."""
    from stickytoken.estimate import shared_contrasts, variant_sequences
    from stickytoken.pairs import Pair

    p = rec["params"]
    K, R = int(p["insert_num"]), int(p.get("insert_draws", 1))
    with open(os.path.join(rec["run_dir"], "pairs.json")) as fh:
        pairs = {k: [Pair.from_dict(d) for d in v] for k, v in json.load(fh).items() if k in ("scoring", "verification")}
    T, C = int(rec["n_scored"]), int(rec["n_candidates"])
    return {"mean_similarity": int(rec["vocab_size"]),
            "scoring": variant_sequences(T, len(pairs["scoring"]), K, R, shared=shared_contrasts(pairs["scoring"])),
            "verification": variant_sequences(C, len(pairs["verification"]), K, R,
                                              shared=shared_contrasts(pairs["verification"]))}


def bare_rates(args, dtype: str, run_dir: str, n_tokens: int, insert_num: int, sweep=()) -> dict:
    """The model alone on the rows of a seeded sample of the run's scoring tokens and of its
    candidates against the verification pairs: batches cut as the encoder cuts them, built and
    moved to the device beforehand, timed between two synchronisations (``bench.bare_rows_rate``,
    best of 3).  ``sweep``: batch sizes at which to time the scoring rows too (same rows), under
    the key 'sweep'."""
    import torch

    from bench import bare_rows_rate
    from stickytoken.encoder import Encoder
    from stickytoken.models import load_model
    from stickytoken.pairs import Pair
    from stickytoken.score import VariantSequences

    model = load_model(args.model, device=args.device, dtype=dtype)
    enc = Encoder(model, batch_size=args.batch_size, workers=0)
    with open(os.path.join(run_dir, "pairs.json")) as fh:
        pairs = json.load(fh)
    tokens = [json.loads(x) for x in open(os.path.join(run_dir, "tokens.jsonl"))]
    scored = [t for t in tokens if t.get("score") is not None]
    cands = [t for t in tokens if t.get("verification") is not None or t.get("verification_cosine") is not None]
    rng = np.random.default_rng(0xB0A7)
    out = {}
    for stage, pool, pair_list in (("scoring", scored, pairs["scoring"]),
                                   ("verification", cands or scored, pairs["verification"])):
        pick = sorted(rng.choice(len(pool), size=min(n_tokens if stage == "scoring" else max(1, n_tokens // 50),
                                                     len(pool)), replace=False).tolist())
        ids = np.array([pool[i]["id"] for i in pick], dtype=np.int64)
        texts = [pool[i]["text"] for i in pick]
        seqs = VariantSequences(enc, [Pair.from_dict(d) for d in pair_list], insertion=args.insertion,
                                insert_num=insert_num, seed=42, insert_draws=1)
        rows = seqs.rows(ids, texts)
        rate, n_batches = bare_rows_rate(enc, rows, repeats=3)
        out[stage] = {"rows": len(rows), "batches": n_batches, "mean_length": round(float(rows.lengths.mean()), 2),
                      "seq_per_s": round(rate, 1)}
        if stage == "scoring" and sweep:
            out["sweep"] = {}
            default = (enc.batch_size, enc.token_budget)
            for bs in sweep:
                enc.batch_size, enc.token_budget = bs, bs * enc.BUDGET_WIDTH
                r, nb = bare_rows_rate(enc, rows, repeats=3)
                out["sweep"][bs] = {"rows": len(rows), "batches": nb, "seq_per_s": round(r, 1)}
                print(f"batch size {bs}: bare scoring {r:,.0f} seq/s", flush=True)
            enc.batch_size, enc.token_budget = default
    del model
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


def agreement(runs: list, cpu_run: str | None) -> tuple[list, bool]:
    """``scripts/agreement.py`` between every two runs, and with the CPU float32 run when it is
    complete."""
    dirs = {r["name"]: r["run_dir"] for r in runs if not r.get("timed_out") and "skipped" not in r}
    cpu_ok = False
    if cpu_run and os.path.exists(os.path.join(cpu_run, "results.json")):
        with open(os.path.join(cpu_run, "run.json")) as fh:
            cpu_ok = json.load(fh).get("status") == "complete"
        if cpu_ok:
            dirs["cpu-fp32"] = cpu_run
    keys = list(dirs)
    return [{"a": a, "b": b, **agree.agreement(dirs[a], dirs[b])} for i, a in enumerate(keys) for b in keys[i + 1:]], cpu_ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "results", "gpu"), help="folder for bench.json/.md")
    ap.add_argument("--runs-dir", default=None, help="where the run folders go (default OUT/runs)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default=None, help="model folder or hub name (default: bundled all-MiniLM-L6-v2)")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS,
                    help=f"comma-separated, of {sorted(CONFIGS)}, run in that order (default {DEFAULT_CONFIGS})")
    ap.add_argument("--max-tokens", type=int, default=None, help="score a seeded sample only (default: all)")
    ap.add_argument("--workers", type=int, default=None, help="detect --workers (default: detect's own)")
    ap.add_argument("--batch-size", type=int, default=None, help="detect --batch-size (default: detect's own)")
    ap.add_argument("--run-timeout", type=float, default=0,
                    help="seconds after which a detect run is stopped and reported as far as it got, and the "
                         "next configuration starts (default 0: no limit)")
    ap.add_argument("--budget", type=float, default=0,
                    help="seconds for the whole script (e.g. a device call's limit less a margin): each run's "
                         "limit is cut to what is left, and a configuration with less than a minute left is "
                         "skipped and said so (default 0: no limit)")
    ap.add_argument("--trace", default=DEFAULT_TRACE,
                    help="configurations whose detect traces one chunk of scoring and of verification under "
                         f"torch.profiler (STICKYTOKEN_TRACE; '' = none; default {DEFAULT_TRACE}); their end-to-end "
                         "time is shown less the traces' export")
    ap.add_argument("--insertion", default="text", choices=["text", "token"])
    ap.add_argument("--bare-tokens", type=int, default=1000, help="scoring tokens behind the bare forward rate")
    ap.add_argument("--batch-sweep", default="256,512,1024,2048,4096",
                    help="batch sizes at which to time the bare scoring rate too (first config's dtype; '' = none)")
    ap.add_argument("--cpu-run", default=os.path.join(ROOT, "docs", "results", "all-MiniLM-L6-v2-full-text"),
                    help="a finished CPU float32 run folder to compare with (skipped when unfinished)")
    args = ap.parse_args(argv)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in names if c not in CONFIGS]
    traced = {c.strip() for c in args.trace.split(",") if c.strip()}
    bad = bad or sorted(traced - set(CONFIGS))
    if bad:
        ap.error(f"unknown config {bad[0]!r}; choose from {sorted(CONFIGS)}")
    os.makedirs(args.out, exist_ok=True)
    import torch

    record = {"device": device_name(args.device), "device_arg": args.device, "torch": torch.__version__,
              "python": platform.python_version(), "cpu_cores": os.cpu_count(), "runs": []}
    sweep = [int(x) for x in args.batch_sweep.split(",") if x.strip()]
    start = time.perf_counter()
    for i, name in enumerate(names):
        limit = args.run_timeout or None
        if args.budget:
            left = args.budget - (time.perf_counter() - start)
            if left < MIN_RUN_S:   # said in the table, not silently dropped
                print(f"{name}: skipped, {max(left, 0):.0f} s of the {args.budget:g} s budget left", flush=True)
                record["runs"].append({"name": name, "config": CONFIGS[name], "skipped": round(max(left, 0), 1)})
                _save(record, args.out, args.cpu_run)
                continue
            limit = min(limit or left, left)
        rec = run_detect(name, CONFIGS[name], args, args.out, limit, trace=name in traced)
        if rec.get("timed_out"):
            print(f"{name}: stopped after {rec['timed_out']:g} s; stages done: {sorted(rec['timings'])}", flush=True)
        else:
            rec["sequences"] = stage_sequences(rec)
            export = export_seconds(rec)
            print(f"{name}: {rec['wall_s']} s end to end" + (f" ({export:.1f} s of it writing traces)" if export else ""),
                  flush=True)
            rec["bare"] = bare_rates(args, CONFIGS[name]["dtype"], rec["run_dir"], args.bare_tokens,
                                     int(rec["params"]["insert_num"]), sweep=sweep if i == 0 else ())
            if "sweep" in rec["bare"]:   # the bare scoring rate at other batch sizes: what a better default would gain
                record["batch_sweep"] = rec["bare"].pop("sweep")
        record["runs"].append(rec)
        _save(record, args.out, args.cpu_run)
    print(render(record))
    return 0


MIN_RUN_S = 60   # --budget: a configuration needs at least this much left to be started


def _save(record: dict, out: str, cpu_run: str) -> None:
    """The agreement so far, and bench.json and bench.md rewritten: what is done is kept."""
    record["agreement"], record["cpu_run_compared"] = agreement(record["runs"], cpu_run)
    with open(os.path.join(out, "bench.json"), "w") as fh:
        json.dump(record, fh, indent=1)
    with open(os.path.join(out, "bench.md"), "w") as fh:
        fh.write(render(record))


def render(record: dict) -> str:
    lines = [f"device: {record['device']} (torch {record['torch']}, {record['cpu_cores']} CPU cores)", ""]
    lines.append("| run | end to end (s) | load | vocab | mean sim | pairs | scoring | verification | outside detect | "
                 "pipeline seq/s | bare seq/s | pipeline / bare | peak GPU MiB | sticky |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in record["runs"]:
        if "skipped" in r:   # --budget: not started
            lines.append(f"| {r['name']} | not started: {r['skipped']:g} s of the budget left |" + " |" * 12)
            continue
        t = r["timings"]
        if r.get("timed_out"):   # stopped by --run-timeout: the stages it finished
            lines.append(f"| {r['name']} | stopped at {r['timed_out']:g} | {t.get('load', 0):.1f} | {t.get('vocab', 0):.1f} | "
                         f"{t.get('mean_similarity', 0):.1f} | {t.get('pairs', 0):.1f} | {t.get('scoring', '-')} | "
                         f"{t.get('verification', '-')} | - | - | - | - | - | - |")
            continue
        s = r["sequences"]
        work = s["scoring"] + s["verification"]
        secs = t.get("scoring", 0.0) + t.get("verification", 0.0)
        pipe = work / secs if secs else float("nan")
        b = r["bare"]
        bare_s = s["scoring"] / b["scoring"]["seq_per_s"] + s["verification"] / b["verification"]["seq_per_s"]
        bare = work / bare_s
        mem = r["peak_memory"].get("peak_device_memory_mb", "-")
        wall = r["wall_s"] - export_seconds(r)   # a traced run: less writing its traces
        outside = r["wall_s"] - t.get("total_this_session", r["wall_s"])   # start-up, imports, files, exit
        lines.append(f"| {r['name']}{' (traced)' if r.get('traced') else ''} | {wall:.1f} | {t.get('load', 0):.1f} | "
                     f"{t.get('vocab', 0):.1f} | "
                     f"{t.get('mean_similarity', 0):.1f} | {t.get('pairs', 0):.1f} | {t.get('scoring', 0):.1f} | "
                     f"{t.get('verification', 0):.1f} | {outside:.1f} | "
                     f"{pipe:,.0f} | {bare:,.0f} | {pipe / bare:.0%} | {mem} | {r.get('n_sticky', '-')} |")
    lines += ["", "outside detect: the process's seconds before detect() starts (Python, importing torch) and after "
              "its stages (the result files and figures, below, and the exit); (traced): one chunk of each variant "
              "stage ran under torch.profiler, and its end to end is shown less writing the traces (below)"]
    lines += ["", "where the time went (s): the load, then per variant stage rows built here / waited for workers / "
              "model / saving parts / waited for the host thread / rest", ""]
    for r in record["runs"]:
        if "skipped" in r:
            continue
        if "load" in r["profile"]:
            lines.append(f"- {r['name']} load: " + ", ".join(f"{k} {v}" for k, v in r["profile"]["load"].items()))
        if r.get("kernels"):
            lines.append(f"- {r['name']} kernels: " + ", ".join(f"{k} {v}" for k, v in r["kernels"].items()))
        if "write_results" in r["profile"]:
            lines.append(f"- {r['name']} writing the result files and figures: {r['profile']['write_results']}")
        for stage, p in r["profile"].items():
            if not isinstance(p, dict) or stage == "load":
                continue
            lines.append(f"- {r['name']} {stage}: {p.get('rows_build', 0)} / {p.get('rows_wait', 0)} / "
                         f"{p.get('embed', 0)} / {p.get('save', '-')} / {p.get('host_wait', '-')} / {p.get('other', 0)} "
                         f"({p.get('workers', 0)} workers"
                         + (f"; {p['sequences']:,} sequences" if "sequences" in p else "")
                         + (f"; waited for the GPU's copies back {p['gpu_wait']} s" if p.get("gpu_wait") else "")
                         + (f"; host thread busy {p['host_thread']} s)" if "host_thread" in p else ")"))
    traces = [(r["name"], stage, p["trace"]) for r in record["runs"] if "skipped" not in r
              for stage, p in r.get("profile", {}).items() if isinstance(p, dict) and isinstance(p.get("trace"), dict)]
    if traces:
        lines += ["", "traced chunks (STICKYTOKEN_TRACE; the run folder's trace/ has the operator tables and a Chrome "
                  "trace): the window from the chunk's start to the next's, the device's busy share of it, its "
                  "longest pauses (ms into the window: ms), the pipeline's own ranges (ms: rows_wait, queue_chunk "
                  "and within it embed_rows on the main thread, gpu_wait and host_distances on the host thread), "
                  "CUDA synchronisations, the busiest kernels and host operations (self ms)", ""]
        for name, stage, tr in traces:
            lines.append(trace_line(name, stage, tr))
    if record.get("batch_sweep"):
        lines += ["", "bare scoring forward rate by batch size (" + record["runs"][0]["name"] + "): " + ", ".join(
            f"{bs}: {r['seq_per_s']:,.0f} seq/s ({r['batches']} batches)" for bs, r in record["batch_sweep"].items())]
    lines += ["", "agreement (scripts/agreement.py; overlaps are A∩B of |A| / |B|):", ""]
    lines += agree.HEADER
    for a in record["agreement"]:
        lines.append(agree.row(a["a"], a["b"], a))
    if not record["cpu_run_compared"]:
        lines += ["", "(no finished CPU float32 run to compare with)"]
    return "\n".join(lines) + "\n"


def trace_line(name: str, stage: str, tr: dict) -> str:
    if "failed" in tr:
        return f"- {name} {stage}: no trace ({tr['failed']})"
    busy = "no device work recorded" if tr.get("device_busy") is None else f"device busy {tr['device_busy']:.0%}"
    parts = [f"- {name} {stage}, chunk {tr.get('chunk')}: {tr.get('wall_s')} s, {busy}"]
    if tr.get("sequences"):
        parts.append(f"{tr['sequences']:,} seq, {tr['seq_per_s'] or 0:,.0f} seq/s"
                     + (f", {tr['seq_per_device_s']:,.0f} seq/s of device time" if tr.get("seq_per_device_s") else ""))
    if tr.get("gaps_ms"):
        parts.append("pauses " + ", ".join(f"{at:g}: {ms:g}" for at, ms in tr["gaps_ms"]))
    if tr.get("phases_ms"):   # the pipeline's own ranges, ms summed over threads
        parts.append("phases " + ", ".join(f"{k} {sum(v.values()):g}" for k, v in tr["phases_ms"].items()))
    parts.append("syncs " + (", ".join(f"{k} {v}" for k, v in tr.get("syncs", {}).items()) or "none"))
    if tr.get("kernels"):
        parts.append("kernels " + ", ".join(f"{k['name'][:40]} {k['ms']:g}" for k in tr["kernels"][:4]))
    parts.append("host " + ", ".join(f"{o['name'][:40]} {o['self_ms']:g}" for o in tr.get("host_ops", [])[:4]))
    parts.append(f"export {tr.get('export_s')} s")
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
