"""Where the GPU pipeline's time goes, on a random-weight copy of the bundled model's architecture
(a forward pass costs the same whatever the weights' values), so that profiling needs only the
model's config and tokenizer, not its 87 MiB of weights.

1. In this process, on the rows of one CUDA-sized scoring chunk (built here): the bare forward
   rate (``bench.bare_rows_rate``) against ``Encoder.embed_rows`` at several batch sizes; at the
   encoder's own batch size the bare rate with each attention kernel (``bench.attention_sweep``)
   and, with ``--compile``, under torch.compile; and the busiest operators of one
   ``embed_rows`` call (torch.profiler).
2. ``python -m stickytoken detect`` on a seeded sample of the vocabulary, twice: plain (stage
   timings and run.json's profile) and under cProfile (the main thread's functions).

Writes profile.json, embed_ops.txt and detect.prof.txt under --out and prints a table last.

    python scripts/profile_gpu.py --config-dir .carry/w1/model --out $OUT
"""
from __future__ import annotations

import argparse
import cProfile  # noqa: F401  (used through -m cProfile in a subprocess)
import json
import os
import shutil
import sys
import tempfile
import time


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from bench import run_limited  # noqa: E402


def random_model(src: str, dst: str) -> str:
    """A sentence-transformers folder like ``src`` with freshly initialised weights."""
    from thin_model import random_copy

    return random_copy(src, dst)


def detect(model_dir: str, out: str, name: str, max_tokens: int, profile: bool, workers: int | None = None,
           device: str = "cuda", work: str | None = None, limit: float | None = None) -> dict:
    """One ``stickytoken detect`` run in a subprocess; its run folder goes under ``work`` (a
    private scratch folder), its profile and, on failure, the tail of its stderr into the record;
    past ``limit`` seconds it is stopped."""
    run_dir = os.path.join(work or out, "runs", name)
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable] + (["-m", "cProfile", "-o", os.path.join(out, f"{name}.prof")] if profile else []) + \
        ["-m", "stickytoken", "detect", "--model", model_dir, "--max-tokens", str(max_tokens), "--output", run_dir,
         "--device", device, "--json", "--quiet"] + ([] if workers is None else ["--workers", str(workers)])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = run_limited(cmd, limit, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode is None:   # past its limit: stopped, with its workers, and the next part goes on
        print(f"{name}: stopped after {limit:g} s")
        return {"name": name, "error": f"stopped after {limit:g} s", "stderr": proc.stderr[-3000:]}
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        return {"name": name, "error": proc.returncode, "stderr": proc.stderr[-3000:]}
    run = json.load(open(os.path.join(run_dir, "run.json")))
    rec = {"name": name, "wall_s": round(wall, 2), "timings": run.get("timings"), "profile": run.get("profile"),
           "sequences": run.get("sequences_encoded_this_session")}
    if profile:
        import pstats

        with open(os.path.join(out, f"{name}.prof.txt"), "w") as fh:
            st = pstats.Stats(os.path.join(out, f"{name}.prof"), stream=fh)
            st.sort_stats("tottime").print_stats(45)
            st.sort_stats("cumulative").print_stats(60)
        os.remove(os.path.join(out, f"{name}.prof"))
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config-dir", required=True, help="a sentence-transformers folder (weights not needed)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cuda", help="cuda (default), or cpu to check the script itself")
    ap.add_argument("--tokens", type=int, default=1083, help="tokens in the in-process chunk")
    ap.add_argument("--batch-sizes", default="512,2048")
    ap.add_argument("--detect-workers", default="", help="comma-separated --workers of extra plain detect runs")
    ap.add_argument("--no-cprofile", action="store_true", help="skip the cProfile'd detect")
    ap.add_argument("--no-ops", action="store_true", help="skip the torch.profiler table")
    ap.add_argument("--no-sweep", action="store_true", help="skip the bare rate per attention kernel")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile on the model, as detect --compile runs it")
    ap.add_argument("--detect-timeout", type=float, default=240,
                    help="seconds after which a detect run is stopped and the next one starts (default 240; 0: none)")
    ap.add_argument("--detect-tokens", type=int, default=4000, help="--max-tokens of the detect runs (0: none)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    import torch

    from bench import attention_sweep, bare_rows_rate
    from stickytoken.encoder import Encoder
    from stickytoken.models import load_model
    from rows_rate import scoring_chunk

    import sentence_transformers  # noqa: F401  (what it sets on import is part of the check)

    print("allow_tf32", torch.backends.cuda.matmul.allow_tf32, "precision", torch.get_float32_matmul_precision(),
          flush=True)
    # the random weights and the detect runs live in a private scratch folder, not under --out
    # (whose files come back from the GPU) and not at a fixed /tmp path another run may hold
    with tempfile.TemporaryDirectory(prefix="profile_gpu-") as work:   # removed however the profile ends
        model_dir = random_model(args.config_dir, os.path.join(work, "random_model"))
        model = load_model(model_dir, device=args.device, dtype=args.dtype)
        cuda = model.device.type == "cuda"
        enc = Encoder(model, workers=0)
        seqs, ids, texts = scoring_chunk(enc, args.tokens)
        t0 = time.perf_counter()
        rows = seqs.rows(ids, texts)
        record = {"device": torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)", "rows": len(rows), "build_s": round(time.perf_counter() - t0, 3),
                  "rates": {}, "detect": []}
        def save():   # after each part, so that a call stopped at its limit still brings back what was done
            with open(os.path.join(args.out, "profile.json"), "w") as fh:
                json.dump(record, fh, indent=1)

        default_batch = (enc.batch_size, enc.token_budget)
        for bs in [int(x) for x in args.batch_sizes.split(",") if x.strip()]:
            enc.batch_size, enc.token_budget = bs, bs * enc.BUDGET_WIDTH
            bare, nb = bare_rows_rate(enc, rows, repeats=3)
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                enc.embed_rows(rows)
                best = min(best, time.perf_counter() - t0)
            record["rates"][bs] = {"batches": nb, "bare_seq_per_s": round(bare), "embed_rows_seq_per_s": round(len(rows) / best)}
            print(bs, record["rates"][bs], flush=True)
            save()
        enc.batch_size, enc.token_budget = default_batch
        if not args.no_sweep:   # which attention kernel runs these shapes fastest (bench.attention_sweep)
            record["attention"] = attention_sweep(enc, rows)
            save()
        if args.compile:   # torch.compile as detect --compile does it: its first pass (compiling) and its rate after
            from stickytoken.errors import first_line

            plain = enc.model
            t0 = time.perf_counter()
            try:
                enc.model = torch.compile(plain, dynamic=True)   # what bare_rows_rate calls
                bare_rows_rate(enc, rows, repeats=1)
                compiled_first = time.perf_counter() - t0
                rate, _ = bare_rows_rate(enc, rows, repeats=3)
                record["compiled"] = {"first_pass_s": round(compiled_first, 2), "bare_seq_per_s": round(rate)}
            except Exception as exc:   # an inductor that cannot build here: said, not fatal
                record["compiled"] = {"error": first_line(exc)}
            finally:
                enc.model = plain
            print("compiled", record["compiled"], flush=True)
            save()
        if not args.no_ops:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
                enc.embed_rows(rows)
            with open(os.path.join(args.out, "embed_ops.txt"), "w") as fh:
                fh.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
                if cuda:
                    fh.write(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20))
        del model, enc, seqs
        if cuda:
            torch.cuda.empty_cache()
        if args.detect_tokens:
            runs = [(f"detect_w{w}", False, int(w)) for w in args.detect_workers.split(",") if w.strip()] or \
                [("detect", False, None)]
            if not args.no_cprofile:
                runs.append(("detect_cprofile", True, None))
            for name, prof_on, workers in runs:
                rec = detect(model_dir, args.out, name, args.detect_tokens, prof_on, workers, args.device, work,
                             args.detect_timeout)
                record["detect"].append(rec)
                print(json.dumps(rec), flush=True)
                save()
    save()
    print(f"\ndevice: {record['device']}; chunk of {record['rows']} rows built in {record['build_s']} s")
    print("| batch | bare seq/s | embed_rows seq/s |\n|---|---|---|")
    for bs, r in record["rates"].items():
        print(f"| {bs} | {r['bare_seq_per_s']:,} | {r['embed_rows_seq_per_s']:,} |")
    if record.get("attention"):
        print("\nbare rate by attention kernel (batch %d): " % default_batch[0] + ", ".join(
            f"{k} {v:,.0f} seq/s" if not isinstance(v, str) else f"{k} {v[:60]}" for k, v in record["attention"].items()))
    if record.get("compiled"):
        print("torch.compile:", record["compiled"])
    for d in record["detect"]:
        print(d.get("name"), d.get("wall_s"), d.get("timings"), d.get("profile"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
