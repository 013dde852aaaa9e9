"""A look inside one chunk of a variant stage, for finding where a run's time goes.

With ``STICKYTOKEN_TRACE=1`` in the environment, ``detect`` runs torch.profiler over one chunk
of its scoring and of its verification stage: from the moment the main thread starts that
chunk to the moment it starts the next (the second chunk of the stage, so that the first one's
new shapes and plans are behind it; the only one when there is one).  On CUDA that window
shows whether the GPU was kept busy (``device_busy``: the share of the window in which any
kernel or copy ran), where it idled (``gaps_ms``: the longest pauses between device work), how
often the host waited for it (``syncs``: CUDA synchronisation calls), and which kernels and
host operations took the time.  With the sequences the window encoded, ``seq_per_s`` is its
rate and ``seq_per_device_s`` the rate its device time alone would give: near the bare
forward rate, the kernels are as fast as the model allows and the pauses are the host's.  Written to the run folder's ``trace/`` (``<stage>.json``, the
summary; ``<stage>-ops.txt``, the operator tables; ``<stage>.trace.json.gz``, a Chrome trace
for chrome://tracing or Perfetto) and to ``run.json``'s ``profile.<stage>.trace``.

Tracing changes no result.  Within the window it costs the profiler's own overhead and, on
CUDA, one synchronisation at each edge.  The files are written as soon as the window closes (a
run stopped later keeps them); those seconds (``export_s``) count in the run's wall time but
are left out of the stage's."""
from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import time
from collections import Counter, defaultdict
from typing import Callable, Iterable, Sequence

logger = logging.getLogger(__name__)

ENV = "STICKYTOKEN_TRACE"
GAPS = 5          # longest device pauses listed
TOP = 12          # rows of each operator list in the summary
PHASE = "stickytoken:"   # the pipeline's own ranges in a trace (``phase``): rows_wait, embed_rows, ...
WINDOW = PHASE + "traced_chunk"
SYNC_CALLS = ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy",
              "cudaStreamWaitEvent")


def enabled() -> bool:
    """Whether ``STICKYTOKEN_TRACE`` asks for a trace (set, and not 0/no/false/off)."""
    return os.environ.get(ENV, "").strip().lower() not in ("", "0", "no", "false", "off")


def phase(name: str):
    """A named range of the pipeline's own (``stickytoken:<name>``) for traces: shown in the
    Chrome trace, and summed per thread in the summary's ``phases_ms``.  Costs a few
    microseconds when no profiler runs; used once or a few times per chunk."""
    import torch

    return torch.profiler.record_function(PHASE + name)


def _top_level(e) -> bool:
    """An operator with nothing above it but the pipeline's own ranges."""
    p = e.cpu_parent
    while p is not None:
        if not p.name.startswith(PHASE):
            return False
        p = p.cpu_parent
    return True


def merge_intervals(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, non-overlapping intervals covering the same points as ``intervals``."""
    merged: list[list[float]] = []
    for start, end in sorted((float(a), float(b)) for a, b in intervals if b >= a):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def busy_and_gaps(intervals: Iterable[tuple[float, float]], window: tuple[float, float],
                  n_gaps: int = GAPS) -> tuple[float, list[tuple[float, float]]]:
    """How much of ``window`` the intervals cover (0..1), and its ``n_gaps`` longest uncovered
    stretches as (start relative to the window, length), longest first.  The window's edges
    count: idle time before the first interval and after the last is a gap too."""
    lo, hi = float(window[0]), float(window[1])
    if hi <= lo:
        raise ValueError(f"empty window {window}")
    clipped = [(max(a, lo), min(b, hi)) for a, b in intervals if b > lo and a < hi]
    merged = merge_intervals(clipped)
    covered = sum(b - a for a, b in merged)
    gaps, at = [], lo
    for a, b in merged:
        if a > at:
            gaps.append((at - lo, a - at))
        at = max(at, b)
    if hi > at:
        gaps.append((at - lo, hi - at))
    gaps.sort(key=lambda g: (-g[1], g[0]))
    return covered / (hi - lo), gaps[:n_gaps]


def summarize(events: Sequence, window_us: tuple[float, float], wall_s: float) -> dict:
    """The trace's summary from torch.profiler's ``FunctionEvent`` list: device busy share and
    gaps (when any device work was recorded), kernels and host operations by time, each host
    thread's time inside torch operations (top-level ones) and in the pipeline's own ranges
    (``phases_ms``), and CUDA synchronisation calls."""
    from torch.autograd import DeviceType

    # (a named range on the CPU is mirrored on the GPU's timeline as an annotation spanning the
    # device work it queued, pauses included: not device work)
    device = [e for e in events if e.device_type != DeviceType.CPU and not e.name.startswith(PHASE)
              and not getattr(e, "is_user_annotation", False)]
    phases = [e for e in events if e.device_type == DeviceType.CPU and e.name.startswith(PHASE)]
    host = [e for e in events if e.device_type == DeviceType.CPU and not e.name.startswith(PHASE)]
    out: dict = {"wall_s": round(wall_s, 4)}
    if device:
        busy, gaps = busy_and_gaps(((e.time_range.start, e.time_range.end) for e in device), window_us)
        by_kernel: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        for e in device:
            by_kernel[e.name][0] += 1
            by_kernel[e.name][1] += e.time_range.end - e.time_range.start
        total = sum(t for _, t in by_kernel.values())
        out.update(device_busy=round(busy, 4), device_ops=len(device), device_ms=round(total / 1e3, 3),
                   gaps_ms=[[round(at / 1e3, 3), round(length / 1e3, 3)] for at, length in gaps],
                   kernels=[{"name": name[:120], "calls": n, "ms": round(t / 1e3, 3)}
                            for name, (n, t) in sorted(by_kernel.items(), key=lambda kv: -kv[1][1])[:TOP]])
    else:
        out["device_busy"] = None   # a CPU run: no device work to cover the window
    self_us: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    threads: Counter = Counter()
    syncs: Counter = Counter()
    for e in host:
        self_us[e.name][0] += 1
        self_us[e.name][1] += e.self_cpu_time_total
        if _top_level(e):
            threads[e.thread] += e.time_range.end - e.time_range.start
        if any(e.name.startswith(s) for s in SYNC_CALLS):
            syncs[e.name] += 1
    out["host_ops"] = [{"name": name[:120], "calls": n, "self_ms": round(t / 1e3, 3)}
                       for name, (n, t) in sorted(self_us.items(), key=lambda kv: -kv[1][1])[:TOP]]
    out["host_threads_ms"] = {str(t): round(us / 1e3, 3) for t, us in threads.most_common()}
    spans: dict[str, Counter] = defaultdict(Counter)
    for e in phases:
        spans[e.name[len(PHASE):]][str(e.thread)] += e.time_range.end - e.time_range.start
    out["phases_ms"] = {name: {t: round(us / 1e3, 3) for t, us in by.most_common()}
                        for name, by in sorted(spans.items())}
    out["syncs"] = dict(syncs)
    return out


def _all_threads():
    """Kineto's setting that records every thread's operators (the host thread's too), where
    this torch has it; else None (the calling thread's, as before torch added it)."""
    try:
        from torch._C._profiler import _ExperimentalConfig

        return _ExperimentalConfig(profile_all_threads=True)
    except (ImportError, TypeError):
        return None


class ChunkTrace:
    """Profiles one chunk of a stage's chunk loop (``runfolder.run_parts`` calls ``at_chunk``
    before each chunk it computes and ``close`` after the loop); ``summary`` then holds what it
    saw (``{"failed": why}`` if the profiler failed; None if no chunk was computed).  ``folder`` is the run
    folder; the files go to its ``trace/`` as ``<stage>.*``."""

    def __init__(self, folder: str, stage: str, cuda: bool, counter: Callable[[], int] | None = None):
        self.folder = os.path.join(folder, "trace")
        self.stage = stage
        self.cuda = cuda
        self.counter = counter   # sequences through the model so far (Encoder.sequences_done)
        self._seq0 = 0
        self._seqs = None
        self.summary: dict | None = None
        self._prof = None
        self._mark = None
        self._wall = 0.0
        self._chunk = None
        self._t0 = 0.0

    def at_chunk(self, i: int, n: int) -> float:
        """The loop is about to start its ``i``-th of ``n`` chunks to compute.  Returns the
        seconds spent here writing a trace (0 unless the window closed), which the loop leaves
        out of the stage's time."""
        target = 1 if n > 1 else 0
        if i == target and self.summary is None and self._prof is None:
            try:
                self._start(i)
            except Exception as exc:   # a diagnostic never stops the run (e.g. no CUPTI on this machine)
                self._failed("did not start", exc)
        elif i == target + 1:
            return self.close()
        return 0.0

    def _failed(self, what: str, exc: BaseException) -> None:
        self._prof = None
        detail = (str(exc).strip().splitlines() or [""])[0]
        self.summary = {"failed": f"the profiler {what}: {type(exc).__name__}" + (f": {detail}" if detail else "")}
        logger.warning("warning: STICKYTOKEN_TRACE: %s; the run goes on untraced", self.summary["failed"])

    def _start(self, i: int) -> None:
        import torch
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        if self.cuda:
            torch.cuda.synchronize()   # the window holds this chunk's device work, not the last one's
        self._prof = profile(activities=activities, experimental_config=_all_threads())
        self._prof.start()
        self._mark = torch.profiler.record_function(WINDOW)   # the window's edges, on the trace's clock
        self._mark.__enter__()
        self._chunk = i
        self._seq0 = self.counter() if self.counter else 0
        self._t0 = time.perf_counter()

    def discard(self) -> None:
        """Stops an open window without writing anything (the loop failed)."""
        prof, self._prof = self._prof, None
        if prof is not None:
            try:
                self._mark.__exit__(None, None, None)
                prof.stop()
            except Exception as exc:   # (the loop's own error is the one to see)
                logger.debug("stopping the profiler: %s", exc)

    def close(self) -> float:
        """Ends the window, if one is open, and writes what it saw at once (a run stopped later
        keeps it).  Returns the seconds spent writing (``export_s``; 0 when nothing was)."""
        prof, self._prof = self._prof, None
        if prof is None:
            return 0.0
        import torch

        if self.cuda:
            torch.cuda.synchronize()   # the window's queued device work, finished and recorded
        try:
            self._mark.__exit__(None, None, None)
            self._wall = time.perf_counter() - self._t0
            self._seqs = self.counter() - self._seq0 if self.counter else None
            prof.stop()
            self._write(prof)
        except Exception as exc:
            self._failed("gave no trace", exc)
        return self.summary.get("export_s", 0.0)

    def _write(self, prof) -> dict:
        t_export = time.perf_counter()
        events = prof.events()
        marks = [e for e in events if e.name == WINDOW]
        if marks:
            window = (marks[0].time_range.start, marks[0].time_range.end)
        else:   # (not expected) the wall clock's length from the first event
            lo = min((e.time_range.start for e in events), default=0.0)
            window = (lo, lo + self._wall * 1e6)
        summary = summarize([e for e in events if e.name != WINDOW], window, self._wall)
        summary["chunk"] = self._chunk
        if self._seqs is not None:   # the window's rate, and the rate its device time alone would give
            summary["sequences"] = int(self._seqs)
            summary["seq_per_s"] = round(self._seqs / self._wall, 1) if self._wall > 0 else None
            busy_s = (summary.get("device_busy") or 0.0) * self._wall
            summary["seq_per_device_s"] = round(self._seqs / busy_s, 1) if busy_s > 0 else None
        os.makedirs(self.folder, exist_ok=True)
        base = os.path.join(self.folder, self.stage)
        with open(base + "-ops.txt", "w", encoding="utf-8") as fh:
            averages = prof.key_averages()
            if self.cuda:
                fh.write(f"# {self.stage}, chunk {self._chunk}: by device time\n")
                fh.write(averages.table(sort_by="self_device_time_total", row_limit=40) + "\n\n")
            fh.write(f"# {self.stage}, chunk {self._chunk}: by host time (self)\n")
            fh.write(averages.table(sort_by="self_cpu_time_total", row_limit=40) + "\n")
        raw = base + ".trace.json"
        prof.export_chrome_trace(raw)
        with open(raw, "rb") as src, gzip.open(raw + ".gz", "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst)
        os.remove(raw)
        summary["export_s"] = round(time.perf_counter() - t_export, 3)   # (the one measure of it: close returns it)
        with open(base + ".json", "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=1)
        self.summary = summary
        busy = summary["device_busy"]
        logger.info("trace of %s chunk %d: %.3f s%s; %s", self.stage, self._chunk, self._wall,
                    "" if busy is None else f", device busy {busy:.0%}", base + ".json")
        return summary


def stage_trace(folder: str, stage: str, device_type: str, main: bool = True,
                counter: Callable[[], int] | None = None) -> ChunkTrace | None:
    """A ``ChunkTrace`` for ``stage`` when ``STICKYTOKEN_TRACE`` asks for one (on the main
    rank only), else None."""
    if not (main and enabled()):
        return None
    return ChunkTrace(folder, stage, device_type == "cuda", counter)
