"""The command line: ``python -m stickytoken {detect,attention,assess,report}``."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from . import __version__
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
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass


def _versions() -> str:
    import numpy

    try:
        import torch

        tv = torch.__version__
    except ImportError:  # pragma: no cover
        tv = "not installed"
    return f"stickytoken {__version__} (numpy {numpy.__version__}, torch {tv})"


def _add_detect(sub) -> None:
    p = sub.add_parser("detect", help="find the sticky tokens of a model",
                       description="Run the Sticky Token Detector and write a run folder.")
    both = lambda *names, **kw: p.add_argument(*names, **kw)  # noqa: E731
    both("--model", default=None, help="sentence-transformers model folder or hub name (default: bundled all-MiniLM-L6-v2)")
    both("--sent-pair-num", "--sent_pair_num", dest="sent_pair_num", type=int, default=5)
    both("--insert-num", "--insert_num", dest="insert_num", type=int, default=8)
    both("--verification-sent-pair-num", "--verification_sent_pair_num", dest="verification_sent_pair_num",
         type=int, default=250)
    both("--shortlist-percent", "--shortlist_percent", dest="shortlist_percent", type=float, default=2.0)
    both("--seed", type=int, default=42)
    both("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    both("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
         help="model dtype (default: bfloat16 on CUDA, float32 on CPU)")
    both("--batch-size", "--batch_size", dest="batch_size", type=int, default=None)
    both("--output", "-o", default=None, help="run folder (default: stickytoken_runs/<model>-<params hash>)")
    both("--sentences", default=None, help="corpus file: one sentence per line, or CSV/JSONL with a text column")
    both("--pairs", default=None, help="CSV with sentence1,sentence2[,similarity]")
    both("--insertion", choices=["text", "token"], default="text",
         help="text: the paper's string insertion (default); token: insert token ids")
    both("--max-tokens", "--max_tokens", dest="max_tokens", type=int, default=None,
         help="score only this many available tokens (seeded sample)")
    both("--prompt", default=None, help="prompt text put before every encoded text")
    both("--prompt-name", "--prompt_name", dest="prompt_name", default=None, help="name of one of the model's prompts")
    both("--fast", action="store_true",
         help="fast mode: drop tokens and candidates once their outcome is settled (about a third less work; see README)")
    both("--json", action="store_true", help="print the summary as JSON instead of a table")
    both("--quiet", "-q", action="store_true", help="no progress bars or log lines")
    p.set_defaults(func=_run_detect)


def _run_detect(args) -> int:
    from .api import detect

    result = detect(
        args.model, sent_pair_num=args.sent_pair_num, insert_num=args.insert_num,
        verification_sent_pair_num=args.verification_sent_pair_num, shortlist_percent=args.shortlist_percent,
        seed=args.seed, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
        show_progress_bar=not args.quiet, output=args.output, sentences=args.sentences, pairs=args.pairs,
        insertion=args.insertion, max_tokens=args.max_tokens, prompt=args.prompt, prompt_name=args.prompt_name,
        fast=args.fast)
    if args.json:
        print(json.dumps({**result.summary_row(), "run_dir": result.run_dir,
                          "sticky": [t.to_dict() for t in result.sticky_tokens]}, ensure_ascii=False, indent=1))
    else:
        print(result.summary())
        print(f"run folder: {result.run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stickytoken",
                                     description="Find sticky tokens in text embedding models.")
    parser.add_argument("--version", action="version", version=_versions())
    sub = parser.add_subparsers(dest="command", metavar="{detect,attention,assess,report}")
    sub.required = True
    _add_detect(sub)
    from . import assess, attention, report

    for module in (attention, assess, report):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "quiet", False))
    try:
        return int(args.func(args) or 0)
    except StickyTokenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; what was finished is saved: run the same command to resume", file=sys.stderr)
        return 130
