"""Host memory and wall time of each detector stage as the vocabulary grows.

Builds tiny random decoder embedders shaped like gte-Qwen2 (``tests/tinydecoders.py``: a
byte-level BPE with exactly N entries plus added special tokens, eos appended by the
tokenizer, last-token pooling, an instruction prompt by default), one per vocabulary size,
and runs ``stickytoken.detect`` on each in a fresh process with ``--max-tokens`` tokens and
small pair counts.  For every stage (vocabulary, mean similarity, pairs, scoring,
verification, writing the results) it records the wall time, the resident memory when the
stage started, and the stage's peak resident memory.  On Linux the peak is the high-water
mark VmHWM (what run.json's ``peak_host_memory_mb`` reports), reset before each stage
through ``/proc/self/clear_refs``, so each stage's peak is its own; elsewhere it is
``ru_maxrss`` and the peaks are cumulative.  The models are built in a separate process, and
the parent stays small (Linux hands a child started from a large process that process's size
as its ``ru_maxrss``).

With ``--old-mean-similarity`` the child also computes the mean similarity the way it was
computed before it streamed (every vocabulary entry's embedding in one [V, dim] tensor,
then ``_core.mean_similarity``), checks that both give the same value, and reports that
stage's memory for comparison.

    python scripts/vocab_memory.py                              # 30,000 and 150,000 entries
    python scripts/vocab_memory.py --sizes 30000 150000 --hidden 64 --threads 1 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))      # tinydecoders.py
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

STAGES = ("load_model", "vocabulary_stage", "mean_similarity_stage", "pairs_stage", "scoring_stage", "verification_stage",
          "finish")
LABELS = {"load_model": "model and tokenizer loaded", "vocabulary_stage": "vocabulary", "mean_similarity_stage": "mean similarity", "pairs_stage": "pairs",
          "scoring_stage": "scoring", "verification_stage": "verification", "finish": "results written",
          "old_mean_similarity": "mean similarity, all V at once (before)"}


# ---- memory --------------------------------------------------------------------------------------
def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    return _status_mb("VmRSS")


def peak_mb() -> float:
    """The process's peak resident memory in MiB since the last reset: VmHWM on Linux (the
    high-water mark of its own memory, which clear_refs resets; ``ru_maxrss`` also keeps
    what the kernel recorded at exec and at thread exits), else ru_maxrss."""
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def reset_peak() -> bool:
    """Reset the resident high-water mark (Linux >= 4.0); False where it cannot be."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class StageMeter:
    """Wraps the api's stage functions: time, RSS at the start and peak RSS of each stage."""

    def __init__(self):
        self.rows: dict[str, dict] = {}
        self.resettable = reset_peak()

    def measure(self, name: str, fn, *args, **kwargs):
        reset_peak()
        start = rss_mb()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds = time.perf_counter() - t0
        self.rows[name] = {"seconds": round(seconds, 3), "start_rss_mb": None if start is None else round(start, 1),
                           "peak_mb": round(peak_mb(), 1)}
        return out

    def wrap(self, module, name: str):
        fn = getattr(module, name)

        def wrapped(*args, **kwargs):
            return self.measure(name, fn, *args, **kwargs)
        setattr(module, name, wrapped)


# ---- the child: one vocabulary size ----------------------------------------------------------------
def child(a) -> None:
    import numpy as np
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    import stickytoken
    from stickytoken import _core, api
    from stickytoken.pairs import builtin_sentences

    meter = StageMeter()
    base = {"rss_after_imports_mb": round(rss_mb() or 0.0, 1)}
    for name in STAGES:
        meter.wrap(api, name)
    t0 = time.perf_counter()
    res = stickytoken.detect(a.model, output=a.out, max_tokens=a.max_tokens, sent_pair_num=a.sent_pair_num,
                             insert_num=a.insert_num, verification_sent_pair_num=a.verification_sent_pair_num,
                             shortlist_percent=a.shortlist_percent, sentences=builtin_sentences(), device="cpu",
                             show_progress_bar=False)
    total = time.perf_counter() - t0
    with open(os.path.join(a.out, "run.json")) as fh:
        run = json.load(fh)
    out = {"vocab_size": res.vocab_size, "available": res.available, "scored": len(res.scored_ids),
           "candidates": len(res.candidates), "mean_similarity": res.mean_similarity, "detect_seconds": round(total, 3),
           "run_peak_memory": run.get("peak_memory"),
           "stages": meter.rows, "peak_resettable": meter.resettable, **base}
    if a.old_mean_similarity:
        from sentence_transformers import SentenceTransformer

        from stickytoken.encoder import Encoder
        from stickytoken.vocab import build_vocabulary

        st = SentenceTransformer(a.model, device="cpu")
        enc = Encoder(st)
        tokens = build_vocabulary(st.tokenizer).tokens

        def old():
            emb = enc.encode_texts(tokens)
            return float(_core.mean_similarity(emb))
        value = meter.measure("old_mean_similarity", old)
        out["old_mean_similarity"] = value
        out["same_value"] = bool(np.isclose(value, res.mean_similarity, rtol=0, atol=1e-9))
    print("RESULT " + json.dumps(out))


# ---- the parent: build, run, tabulate ----------------------------------------------------------------
def build(folder: str, size: int, hidden: int) -> tuple[str, float]:
    """Build the model in a child process: a child started from a large parent inherits the
    parent's resident size in its ru_maxrss (Linux records the pre-exec size), so the parent
    stays small."""
    t0 = time.perf_counter()
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from tinydecoders import build_decoder, bytelevel_tokenizer; "
            "build_decoder(sys.argv[2], 'qwen2', bytelevel_tokenizer(int(sys.argv[3])), 'lasttoken', "
            "hidden=int(sys.argv[4]))")
    proc = subprocess.run([sys.executable, "-c", code, os.path.join(ROOT, "tests"), folder, str(size), str(hidden)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return os.path.join(folder, "st"), time.perf_counter() - t0


def table(results: list[dict]) -> str:
    sizes = [r["vocab_size"] for r in results]
    head = ["stage"] + [f"{v:,} entries: {col}" for v in sizes for col in ("s", "peak MiB", "start MiB")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    names = list(STAGES) + (["old_mean_similarity"] if all("old_mean_similarity" in r["stages"] for r in results)
                            else [])
    for name in names:
        cells = [LABELS[name]]
        for r in results:
            s = r["stages"].get(name)
            cells += ["-", "-", "-"] if s is None else [f"{s['seconds']:.2f}", f"{s['peak_mb']:,.0f}",
                                                        "-" if s["start_rss_mb"] is None else f"{s['start_rss_mb']:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["detect, whole (start: after imports)"]
    for r in results:
        peak = max(s["peak_mb"] for name, s in r["stages"].items() if name != "old_mean_similarity")
        cells += [f"{r['detect_seconds']:.2f}", f"{peak:,.0f}", f"{r['rss_after_imports_mb']:,.0f}"]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[30000, 150000], help="vocabulary sizes")
    p.add_argument("--hidden", type=int, default=32, help="hidden size of the tiny decoders")
    p.add_argument("--max-tokens", type=int, default=50)
    p.add_argument("--sent-pair-num", type=int, default=2)
    p.add_argument("--insert-num", type=int, default=4)
    p.add_argument("--verification-sent-pair-num", type=int, default=10)
    p.add_argument("--shortlist-percent", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=0, help="torch threads in the child (0: torch's default)")
    p.add_argument("--old-mean-similarity", action="store_true",
                   help="also measure the former non-streaming mean similarity")
    p.add_argument("--json", help="write the measurements here")
    p.add_argument("--workdir", help="folder for the models and runs (default: a temporary one)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(a)
        return 0

    tmp = None if a.workdir else tempfile.TemporaryDirectory(prefix="vocab-memory-")
    work = a.workdir or tmp.name
    results = []
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    for size in a.sizes:
        model, build_s = build(os.path.join(work, f"v{size}"), size, a.hidden)
        print(f"built a {size:,}-entry Qwen2-style decoder in {build_s:.1f} s", file=sys.stderr)
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--model", model,
               "--out", os.path.join(work, f"run{size}"), "--max-tokens", str(a.max_tokens),
               "--sent-pair-num", str(a.sent_pair_num), "--insert-num", str(a.insert_num),
               "--verification-sent-pair-num", str(a.verification_sent_pair_num),
               "--shortlist-percent", str(a.shortlist_percent), "--threads", str(a.threads)]
        if a.old_mean_similarity:
            cmd.append("--old-mean-similarity")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        r = json.loads(line[-1][len("RESULT "):])
        r["build_seconds"] = round(build_s, 2)
        results.append(r)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None

    print(table(results))
    print()
    for r in results:
        extra = ""
        if "old_mean_similarity" in r:
            extra = (f"; before (all at once) {r['old_mean_similarity']:.6f}, "
                     f"{'the same' if r['same_value'] else 'DIFFERENT'}")
        print(f"- {r['vocab_size']:,} entries ({r['available']:,} available, {r['scored']} scored, "
              f"{r['candidates']} candidates): mean similarity {r['mean_similarity']:.6f}{extra}")
    print(f"- hidden size {a.hidden}, torch threads {a.threads or 'default'}; peak = resident high-water mark; "
          "start = resident memory when the stage began; peaks are "
          f"{'per stage (high-water mark reset before each)' if all(r['peak_resettable'] for r in results) else 'cumulative'}"
          f"; load average {load_before} before, {load_after} after")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"results": results, "hidden": a.hidden, "threads": a.threads,
                       "loadavg": [load_before, load_after]}, fh, indent=1)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
