"""What a detection produces: per-token results, the run's figures, and its files."""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from .errors import InputError, RunFolderError, check_output_folder, first_line
from .tables import markdown_table

RESULT_FILES = ("run.json", "tokens.jsonl", "candidates.csv", "sticky_tokens.csv", "summary.md")


def _umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str, data: str | bytes) -> None:
    """Write a whole file under a temporary name, then rename it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())   # mkstemp makes 0600; a finished file follows the umask as open() does
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8", "newline": ""})) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = path   # (a failed write names no file: say which one it was)
        raise


@dataclass
class TokenResult:
    """One scored token: its sticky scores and, for candidates, its verification."""

    id: int
    token: str                      # raw vocabulary string, e.g. '##s'
    text: str                       # decoded text that was inserted
    score: float                    # cosine sticky score (the main metric)
    score_euclidean: float
    score_manhattan: float
    verification: float | None = None          # cosine verification value in [0, 1]
    verification_euclidean: float | None = None
    verification_manhattan: float | None = None
    max_prob: float | None = None
    label: str | None = None
    sticky: bool = False
    confidence: float | None = None            # P(sticky): share of bootstrap resamples clearing the fence
    verification_low: float | None = None      # 2.5th / 97.5th percentiles of the bootstrap
    verification_high: float | None = None     # cosine verification value

    def to_dict(self) -> dict:
        return asdict(self)


def _no_result(folder: str) -> None:
    """Raises the error that says why ``folder`` holds no finished detection: it does not
    exist, is not a folder, holds an unfinished run (or a finished one whose results.json was
    left behind), or holds no run at all."""
    if not os.path.exists(folder):
        raise InputError(f"the run folder {folder!r} does not exist")
    if not os.path.isdir(folder):
        raise InputError(f"{folder!r} is not a folder; give a detection run folder")
    run_file = os.path.join(folder, "run.json")
    if os.path.isfile(run_file):
        try:
            with open(run_file, encoding="utf-8") as fh:
                run = json.load(fh)
            status, is_check = run.get("status", "unknown"), bool(run.get("identity", {}).get("check"))
        except (OSError, ValueError, AttributeError):
            status, is_check = "unreadable", False
        if is_check:
            raise InputError(f"{folder!r} is a `check` folder (the values of named tokens), not a detection run; "
                             "give a folder written by `python -m stickytoken detect`")
        if status == "complete":
            parts = os.path.join(folder, "parts")
            if os.path.isdir(parts) and any(n.endswith(".npz") for n in os.listdir(parts)):
                raise RunFolderError(f"{folder!r} holds a finished run whose results.json is missing (copied "
                                     "without it?); run the same detect command there again to write it")
            raise RunFolderError(f"{folder!r} holds a finished run kept without results.json and without its parts "
                                 "(a trimmed copy?): its summary.md and CSV files can be read, but detect there would "
                                 "compute the whole run again; give a complete run folder")
        raise RunFolderError(f"{folder!r} holds an unfinished run (status {status!r}, no results.json); run "
                             "the same detect command again to finish it")
    raise InputError(f"{folder!r} is not a detection run folder (no results.json); give a folder written by "
                     "`python -m stickytoken detect`")


@dataclass
class DetectionResult:
    """The outcome of one detection run.

    ``sticky_tokens`` are the candidates whose cosine verification value lies above the fence
    (Q3 + 0.7 IQR of the candidates' values); ``candidates`` are all shortlisted tokens,
    highest score first.
    """

    model: str
    params: dict[str, Any]
    vocab_size: int
    category_counts: dict[str, int]
    mean_similarity: float
    shortlist_threshold: float
    fence: float | None
    candidates: list[TokenResult]
    scored_ids: np.ndarray = field(repr=False)          # int64 [n], every scored token id
    scores: np.ndarray = field(repr=False)              # float64 [n, 3] cosine/euclidean/manhattan
    scoring_pairs: list[dict] = field(default_factory=list, repr=False)
    verification_pairs: list[dict] = field(default_factory=list, repr=False)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    run_dir: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    audit: dict[str, Any] | None = None                  # the audit of unshortlisted tokens (--audit)
    fence_interval: list[float] | None = None            # 2.5th / 97.5th percentiles of the bootstrap fence
    peak_memory: dict[str, float] = field(default_factory=dict)   # MiB: peak_host_memory_mb [, peak_device_memory_mb]

    # ---- views ------------------------------------------------------------------------------
    @property
    def sticky_tokens(self) -> list[TokenResult]:
        return [c for c in self.candidates if c.sticky]

    def robust_sticky_tokens(self, min_confidence: float = 0.9) -> list[TokenResult]:
        """Candidates whose bootstrap confidence P(sticky) is at least ``min_confidence``
        (an empty list when the run has no confidences)."""
        import numbers

        if isinstance(min_confidence, bool) or not isinstance(min_confidence, numbers.Real) \
                or not 0.0 <= float(min_confidence) <= 1.0:
            raise InputError(f"min_confidence must be a probability between 0 and 1, got {min_confidence!r}")
        return [c for c in self.candidates if c.confidence is not None and c.confidence >= min_confidence]

    @property
    def sample_seed(self) -> int | None:
        """The seed of the run's ``max_tokens`` sample (its own seed unless the run recorded
        another); None for a run without ``max_tokens``."""
        if self.params.get("max_tokens") is None:
            return None
        return self.params.get("sample_seed", self.params.get("seed"))

    @property
    def has_confidence(self) -> bool:
        return any(c.confidence is not None for c in self.candidates)

    @property
    def available(self) -> int:
        return int(self.category_counts.get("OK", 0) + self.category_counts.get("OK_SPECIAL", 0))

    def __repr__(self) -> str:
        examples = ", ".join(repr(t.text) for t in self.sticky_tokens[:5])
        more = "" if len(self.sticky_tokens) <= 5 else f", ... (+{len(self.sticky_tokens) - 5})"
        return (f"DetectionResult(model={self.model!r}, available={self.available}, scored={len(self.scored_ids)}, "
                f"candidates={len(self.candidates)}, sticky={len(self.sticky_tokens)} [{examples}{more}], "
                f"mean_similarity={self.mean_similarity:.5f})")

    def summary_row(self) -> dict[str, Any]:
        """The paper's table columns for this run."""
        p = self.params
        return {
            "model": self.model,
            "sent_pair_num": p.get("sent_pair_num"),
            "insert_num": p.get("insert_num"),
            "verification_sent_pair_num": p.get("verification_sent_pair_num"),
            "shortlist_percent": p.get("shortlist_percent"),
            "vocab_size": self.vocab_size,
            "available_tokens": self.available,
            "scored_tokens": int(len(self.scored_ids)),
            "verification_candidates": len(self.candidates),
            "sticky_tokens": len(self.sticky_tokens),
            "examples": ", ".join(t.text for t in self.sticky_tokens[:8]),
        }

    def summary(self) -> str:
        """A Markdown summary: the paper's table, the thresholds, the sticky tokens, timings."""
        row = self.summary_row()
        lines = ["# Sticky token detection: " + self.model, "", markdown_table(list(row), [list(row.values())])]
        lines += ["", f"- mean similarity: {self.mean_similarity:.5f}",
                  f"- shortlist threshold (cosine sticky score, {100 - float(self.params.get('shortlist_percent', 2.0)):g}th percentile): "
                  f"{self.shortlist_threshold:.6f}",
                  "- verification fence (Q3 + 0.7 IQR of cosine verification values): "
                  + (f"{self.fence:.6f}" if self.fence is not None else "n/a"),
                  f"- insertion: {self.params.get('insertion')}, seed: {self.params.get('seed')}, "
                  f"dtype: {self.params.get('dtype')}",
                  f"- pairs used: {len(self.scoring_pairs)} scoring (asked for {self.params.get('sent_pair_num')}), "
                  f"{len(self.verification_pairs)} verification (asked for "
                  f"{self.params.get('verification_sent_pair_num')}); the fence is taken over "
                  f"{len(self.candidates)} candidates"]
        if self.params.get("max_tokens") is not None and self.params["max_tokens"] < row["available_tokens"]:
            lines.append(f"- a seeded sample of {self.params['max_tokens']} tokens, seed {self.sample_seed}")
        if int(self.params.get("insert_draws", 1) or 1) > 1:
            lines.append(f"- stable mode: {self.params['insert_draws']} insert draws per token and pair")
        if self.has_confidence:
            robust = self.robust_sticky_tokens(0.9)
            lines.append(f"- confidence: P(sticky) from {self.params.get('bootstrap')} bootstrap resamples of the "
                         f"verification pairs; {len(robust)} candidates have P >= 0.9"
                         + (f" ({', '.join(repr(t.text) for t in robust[:8])})" if robust else ""))
        if self.audit:
            lines.append("- " + audit_sentence(self.audit))
        for note in self.notes:
            lines.append(f"- note: {note}")
        if self.sticky_tokens:
            conf = self.has_confidence
            lines += ["", "## Sticky tokens", "", markdown_table(
                ["id", "token", "text", "score", "verification (cos)", "max_prob", "label"] + (["P(sticky)"] if conf else []),
                [[t.id, t.token, repr(t.text), f"{t.score:.4f}", f"{t.verification:.4f}", f"{t.max_prob:.4f}",
                  t.label] + ([f"{t.confidence:.3f}" if t.confidence is not None else "-"] if conf else [])
                 for t in self.sticky_tokens])]
        if self.timings:
            lines += ["", "## Timings (s)", "",
                      markdown_table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in self.timings.items()])]
        if self.peak_memory:
            lines += ["", "Peak memory: " + ", ".join(
                f"{k.replace('peak_', '').replace('_memory_mb', '')} {v:,.0f} MiB" for k, v in self.peak_memory.items())]
        return "\n".join(lines) + "\n"

    def to_pandas(self, which: str = "candidates"):
        """A DataFrame of the candidates (default), the sticky tokens, or every scored token."""
        import pandas as pd

        if which == "candidates":
            return pd.DataFrame([c.to_dict() for c in self.candidates], columns=[f.name for f in fields(TokenResult)])
        if which == "sticky":
            return pd.DataFrame([c.to_dict() for c in self.sticky_tokens], columns=[f.name for f in fields(TokenResult)])
        if which == "scores":
            return pd.DataFrame({"id": self.scored_ids, "score": self.scores[:, 0],
                                 "score_euclidean": self.scores[:, 1], "score_manhattan": self.scores[:, 2]})
        raise InputError(f"which must be 'candidates', 'sticky' or 'scores', got {which!r}")

    def control_ids(self, n: int, seed: int | None = None, draw: str = "lowest") -> np.ndarray:
        """n control tokens drawn (seeded) from the lowest-scored tenth of the scored tokens, or
        with ``draw="middle"`` from the tenth around the median score: tokens whose copies
        leave a sentence's similarity where it is, where the lowest-scored push it away from
        the mean (a disruption of their own)."""
        from .options import CONTROL_DRAWS

        if draw not in CONTROL_DRAWS:
            raise InputError(f"draw must be one of {', '.join(CONTROL_DRAWS)}, got {draw!r}")
        seed = self.params.get("seed", 42) if seed is None else seed
        order = np.argsort(self.scores[:, 0], kind="stable")
        k = max(n, len(order) // 10)
        start = 0 if draw == "lowest" else max(0, min(len(order) - k, len(order) // 2 - k // 2))
        pool = self.scored_ids[order[start:start + k]]
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))

    def plot(self, path: str | None = None):
        """Score distribution with the shortlist threshold, and candidates' verification values
        with the fence; returns the matplotlib Figure (saved to ``path`` if given)."""
        import matplotlib

        from .plotting import figure_path, plain_log_axis

        if path is not None:
            path = figure_path(path)   # (checked before drawing)
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        from matplotlib.ticker import MaxNLocator

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        ax1.hist(self.scores[:, 0], bins=80, color="#4c72b0")
        ax1.axvline(self.shortlist_threshold, color="#c44e52", ls="--", label=f"threshold {self.shortlist_threshold:.2f}")
        ax1.set_yscale("log")
        plain_log_axis(ax1.yaxis)                  # '6', '20', '100' rather than 6x10^0
        ax1.set_xlabel("cosine sticky score")
        ax1.set_ylabel("tokens (log scale)")
        ax1.legend()
        vals = [c.verification for c in self.candidates if c.verification is not None]
        ax2.hist(vals, bins=40, color="#55a868")
        if self.fence is not None:
            ax2.axvline(self.fence, color="#c44e52", ls="--", label=f"fence {self.fence:.3f}")
        ax2.set_xlabel("cosine verification value (candidates)")
        ax2.set_ylabel("candidates")
        ax2.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax2.legend()
        n = len(self.sticky_tokens)
        fig.suptitle(f"{self.model}: {n} sticky token{'' if n == 1 else 's'} of {len(self.candidates)} candidates")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig

    def plot_confidence(self, path: str | None = None):
        """Candidates' verification values with their bootstrap intervals against the fence
        (None when the run has no confidences); saved to ``path`` if given."""
        from .plotting import confidence_figure, figure_path, use_agg

        if path is not None:
            path = figure_path(path)
            use_agg()
        fig = confidence_figure(self)
        if fig is not None and path is not None:
            fig.savefig(path, dpi=120)
        return fig

    # ---- files ------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "model": self.model, "params": self.params, "vocab_size": self.vocab_size,
            "category_counts": self.category_counts, "available_tokens": self.available,
            "mean_similarity": self.mean_similarity, "shortlist_threshold": self.shortlist_threshold,
            "fence": self.fence, "n_scored": int(len(self.scored_ids)), "n_candidates": len(self.candidates),
            "n_sticky": len(self.sticky_tokens), "timings": self.timings, "peak_memory": self.peak_memory,
            "notes": self.notes,
            "versions": self.versions, "audit": self.audit, "fence_interval": self.fence_interval,
            "scoring_pairs": self.scoring_pairs, "verification_pairs": self.verification_pairs,
        }

    def save(self, folder: str) -> str:
        """Write results.json, candidates.csv, sticky_tokens.csv, scores.csv and summary.md."""
        check_output_folder(folder, hint="give another folder")
        os.makedirs(folder, exist_ok=True)
        atomic_write(os.path.join(folder, "results.json"), json.dumps(
            {**self.to_json(), "candidates": [c.to_dict() for c in self.candidates]}, indent=1, ensure_ascii=False))
        atomic_write(os.path.join(folder, "candidates.csv"), _csv(self.candidates))
        atomic_write(os.path.join(folder, "sticky_tokens.csv"), _csv(self.sticky_tokens))
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["id", "score", "score_euclidean", "score_manhattan"])
        for i, s in zip(self.scored_ids.tolist(), self.scores.tolist()):
            w.writerow([i, *s])
        atomic_write(os.path.join(folder, "scores.csv"), buf.getvalue())
        atomic_write(os.path.join(folder, "summary.md"), self.summary())
        if self.has_confidence:
            from .plotting import save_figure, use_agg

            use_agg()
            fig = self.plot_confidence()
            if fig is not None:
                save_figure(fig, folder, "confidence")   # closes the figure
        return folder

    @classmethod
    def load(cls, folder: str) -> "DetectionResult":
        """Read a finished run folder (or a folder written by ``save``)."""
        folder = os.fspath(folder)
        path = os.path.join(folder, "results.json")
        if not os.path.isfile(path):
            _no_result(folder)
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            return cls._from_files(folder, data)
        except FileNotFoundError as exc:   # results.json is there; a file beside it is not
            raise RunFolderError(f"{folder!r} holds results.json but not {os.path.basename(exc.filename)} (copied "
                                 "without it?); copy it too, or, where the run's parts/ are there, remove "
                                 "results.json and run the same detect command: both are written again") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            why = f"no field {exc}" if isinstance(exc, KeyError) else first_line(exc, 120)
            raise RunFolderError(f"the finished run in {folder!r} cannot be read ({why}): its results.json or "
                                 "scores.csv is damaged") from None

    @classmethod
    def _from_files(cls, folder: str, data: dict[str, Any]) -> "DetectionResult":
        """``load``'s work: the result from results.json's ``data`` and scores.csv."""
        timings = dict(data.get("timings", {}))
        memory = data.get("peak_memory") or {k: timings.pop(k) for k in list(timings) if k.endswith("memory_mb")}
        for k in memory:   # results written before peak memory had its own field kept it in timings
            timings.pop(k, None)
        ids, scores = [], []
        with open(os.path.join(folder, "scores.csv"), encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                ids.append(int(row["id"]))
                scores.append([float(row["score"]), float(row["score_euclidean"]), float(row["score_manhattan"])])
        return cls(
            model=data["model"], params=data["params"], vocab_size=data["vocab_size"],
            category_counts=data["category_counts"], mean_similarity=data["mean_similarity"],
            shortlist_threshold=data["shortlist_threshold"], fence=data["fence"],
            candidates=[TokenResult(**c) for c in data["candidates"]],
            scored_ids=np.asarray(ids, dtype=np.int64), scores=np.asarray(scores, dtype=np.float64).reshape(-1, 3),
            scoring_pairs=data.get("scoring_pairs", []), verification_pairs=data.get("verification_pairs", []),
            timings=timings, notes=data.get("notes", []), run_dir=os.path.abspath(folder),
            versions=data.get("versions", {}), audit=data.get("audit"), fence_interval=data.get("fence_interval"),
            peak_memory=memory)


def audit_sentence(audit: dict[str, Any]) -> str:
    """One sentence on the audit of the tokens the shortlist left out."""
    return (f"audit: {audit['cleared']} of {audit['audited']} random unshortlisted tokens clear the fence; the "
            f"{audit['population']} unshortlisted tokens hold an estimated {audit['estimate']:.1f} sticky tokens "
            f"({100 * audit['level']:g}% interval {audit['low']}-{audit['high']})")


def _csv(rows: list[TokenResult]) -> str:
    buf = io.StringIO()
    names = [f.name for f in fields(TokenResult)]
    w = csv.writer(buf)
    w.writerow(names)
    for r in rows:
        w.writerow([getattr(r, n) for n in names])
    return buf.getvalue()
