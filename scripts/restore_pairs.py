"""Restore the mean similarity and the pairs of a run folder kept without them.

A finished run folder trimmed to its results (as ``docs/results/seeds-2000/runs.tgz`` keeps
them, to spare the working tree) still serves ``compare``, ``agreement`` and ``report``, but
``check --run`` and ``agreement --check`` also need the run's ``mean_similarity.json`` and
``pairs.json``.  This computes both again as ``detect`` computed them (its own stage functions,
the run's model, parameters and corpus; a minute on a 2-core CPU) and writes them into the
folder, then checks the restored scoring and verification pairs against the ones the run
recorded in ``results.json``: the pool follows the embeddings' last bits, so on another machine
or version the picks can differ, and then nothing is written.

    python scripts/restore_pairs.py RUN [RUN ...] [--model PATH] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile


def restore(folder: str, model=None, device: str | None = None) -> dict:
    """Writes ``mean_similarity.json`` and ``pairs.json`` into the finished run ``folder`` when
    the recomputed stage pairs are the ones its results.json records; returns what it found."""
    import shutil

    from stickytoken import api
    from stickytoken.errors import InputError
    from stickytoken.results import DetectionResult
    from stickytoken.runfolder import RunFolder
    from stickytoken.selection import run_model

    result = DetectionResult.load(folder)
    identity = RunFolder.existing(folder).run["identity"]
    if identity.get("corpus", "").startswith("pairs:") or identity.get("fast"):
        raise InputError(f"{folder}: only runs on a corpus of sentences, not fast mode, are restored here")
    settings = api.check_settings(**{k: identity[k] for k in (
        "sent_pair_num", "insert_num", "verification_sent_pair_num", "shortlist_percent", "seed", "insertion",
        "max_tokens")}, sample_seed=identity.get("sample_seed"), insert_draws=identity.get("insert_draws", 1))
    corpus = api.read_corpus(None, None)
    if corpus.fingerprint != identity["corpus"]:
        raise InputError(f"{folder}: the run used another corpus ({identity['corpus']}) than the built-in one")
    with open(os.path.join(folder, "run.json"), encoding="utf-8") as fh:
        run_json = json.load(fh)
    batch_size = run_json.get("batch_size")
    if device is None:   # the run's kind of device: float32 on another rounds otherwise, and the picks follow
        device = str(run_json.get("device") or "cpu").split(":")[0]
    if model is None:
        st = run_model(result, device=device, dtype=identity.get("dtype"))
    else:
        from stickytoken.models import load_model
        st = load_model(model, device=device, dtype=identity.get("dtype"))
    encoder = api.Encoder(st, batch_size=batch_size, show_progress_bar=False, prompt=identity.get("prompt") or None)
    with tempfile.TemporaryDirectory(prefix="restore-pairs-") as temp:   # computed apart, kept only if they match
        work = RunFolder(os.path.join(temp, "run"), identity, {})
        vocab, _ = api.vocabulary_stage(work, encoder, settings)
        mean_sim = api.mean_similarity_stage(work, encoder, vocab)
        scoring, verifying, _ = api.pairs_stage(work, encoder, corpus, settings, mean_sim)

        def same(got, recorded) -> int:
            return sum((p.reference, p.contrast) == (q["reference"], q["contrast"]) for p, q in zip(got, recorded))

        found = {"run": folder, "mean_similarity": mean_sim, "recorded_mean_similarity": result.mean_similarity,
                 "scoring": f"{same(scoring, result.scoring_pairs)} of {len(result.scoring_pairs)}",
                 "verification": f"{same(verifying, result.verification_pairs)} of {len(result.verification_pairs)}"}
        found["restored"] = (mean_sim == result.mean_similarity and len(scoring) == len(result.scoring_pairs)
                             and len(verifying) == len(result.verification_pairs)
                             and same(scoring, result.scoring_pairs) == len(scoring)
                             and same(verifying, result.verification_pairs) == len(verifying))
        if found["restored"]:
            for name in ("mean_similarity.json", "pairs.json"):
                shutil.copyfile(work.file(name), os.path.join(folder, name))
    return found


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="RUN", help="finished run folders without pairs.json")
    ap.add_argument("--model", default=None, help="the runs' model, where it has moved (default: the run's)")
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the run's kind of device)")
    args = ap.parse_args(argv)
    failed = False
    print("| run | mean similarity (recorded) | scoring pairs as recorded | verification pairs as recorded | written |")
    print("|---|---|---|---|---|")
    for folder in args.runs:
        f = restore(folder, model=args.model, device=args.device)
        failed |= not f["restored"]
        print(f"| {folder} | {f['mean_similarity']:.6f} ({f['recorded_mean_similarity']:.6f}) | {f['scoring']} | "
              f"{f['verification']} | {'yes' if f['restored'] else 'no: the pairs differ, nothing written'} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
