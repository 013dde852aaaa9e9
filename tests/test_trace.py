"""STICKYTOKEN_TRACE: one chunk of scoring and of verification under torch.profiler, its
summary (device busy share and gaps, operators, synchronisations) and files; results unchanged."""
import gzip
import json
import os
import time

import numpy as np
import pytest

import stickytoken
from stickytoken import trace
from stickytoken.pairs import builtin_sentences

PARAMS = dict(sent_pair_num=2, insert_num=3, verification_sent_pair_num=4, shortlist_percent=10.0, seed=7,
              max_tokens=60, show_progress_bar=False)


def test_busy_share_and_gaps_of_constructed_intervals():
    # window 0..100; work 10-20, 15-30 (overlapping), 50-60, 90-120 (past the window's end)
    busy, gaps = trace.busy_and_gaps([(10, 20), (15, 30), (50, 60), (90, 120)], (0, 100))
    assert busy == pytest.approx((20 + 10 + 10) / 100)
    assert gaps == [(60, 30), (30, 20), (0, 10)]
    assert trace.busy_and_gaps([], (5, 15)) == (0.0, [(0.0, 10.0)])
    assert trace.busy_and_gaps([(0, 50)], (10, 20)) == (1.0, [])
    assert trace.merge_intervals([(3, 4), (1, 2), (2, 3), (7, 9)]) == [(1, 4), (7, 9)]
    with pytest.raises(ValueError):
        trace.busy_and_gaps([(0, 1)], (5, 5))


@pytest.mark.parametrize("value,on", [("", False), ("0", False), ("off", False), ("1", True), ("yes", True)])
def test_the_environment_switch(monkeypatch, value, on):
    monkeypatch.setenv(trace.ENV, value)
    assert trace.enabled() is on
    assert (trace.stage_trace("/tmp/x", "scoring", "cpu") is not None) is on
    assert trace.stage_trace("/tmp/x", "scoring", "cpu", main=False) is None


def test_a_traced_run_writes_one_chunk_per_stage_and_the_same_results(tiny_model, tmp_path, monkeypatch):
    corpus = builtin_sentences()[:80]
    monkeypatch.setattr("stickytoken.runfolder.CHUNK_ROWS_CPU", 360)   # several chunks a stage
    plain = stickytoken.detect(tiny_model, sentences=corpus, output=str(tmp_path / "plain"), **PARAMS)
    monkeypatch.setenv(trace.ENV, "1")
    traced = stickytoken.detect(tiny_model, sentences=corpus, output=str(tmp_path / "traced"), **PARAMS)

    for name in ("scores.csv", "candidates.csv", "sticky_tokens.csv"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "traced" / name).read_bytes(), name
    assert plain.sticky_tokens == traced.sticky_tokens
    assert not (tmp_path / "plain" / "trace").exists()

    profile = json.loads((tmp_path / "traced" / "run.json").read_text())["profile"]
    for stage, part in (("scoring", "score"), ("verification", "verify")):
        summary = json.loads((tmp_path / "traced" / "trace" / f"{stage}.json").read_text())
        assert profile[stage]["trace"] == summary
        parts = len(list((tmp_path / "traced" / "parts").glob(f"{part}-*.npz")))
        assert summary["chunk"] == (1 if parts > 1 else 0), parts   # the second chunk, or the only one
        assert summary["wall_s"] > 0
        assert summary["sequences"] > 0 and summary["seq_per_s"] > 0 and summary["seq_per_device_s"] is None
        assert summary["device_busy"] is None            # a CPU run has no device work
        names = [op["name"] for op in summary["host_ops"]]
        assert any(n.startswith("aten::") for n in names), names   # the model's operators were seen
        assert trace.WINDOW not in names
        assert sum(summary["host_threads_ms"].values()) > 0
        assert sum(summary["phases_ms"]["embed_rows"].values()) > 0   # the pipeline's own ranges
        assert not any(n.startswith(trace.PHASE) for n in names)
        ops = (tmp_path / "traced" / "trace" / f"{stage}-ops.txt").read_text()
        assert "by host time" in ops and "aten::" in ops
        with gzip.open(tmp_path / "traced" / "trace" / f"{stage}.trace.json.gz", "rt") as fh:
            events = json.load(fh)["traceEvents"]
        assert any(e.get("name") == trace.WINDOW for e in events)
        assert not os.path.exists(tmp_path / "traced" / "trace" / f"{stage}.trace.json")


def test_a_one_chunk_stage_traces_that_chunk(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv(trace.ENV, "1")
    stickytoken.detect(tiny_model, sentences=builtin_sentences()[:80], output=str(tmp_path / "r"), **PARAMS)
    summary = json.loads((tmp_path / "r" / "trace" / "scoring.json").read_text())
    assert len(list((tmp_path / "r" / "parts").glob("score-*.npz"))) == 1
    assert summary["chunk"] == 0


class _Range:
    def __init__(self, start, end):
        self.start, self.end = start, end


class _Event:
    """The FunctionEvent fields summarize reads."""

    def __init__(self, name, start, end, device, thread=1, parent=None, self_us=None):
        from torch.autograd import DeviceType

        self.name, self.time_range, self.thread, self.cpu_parent = name, _Range(start, end), thread, parent
        self.device_type = DeviceType.CUDA if device else DeviceType.CPU
        self.self_cpu_time_total = (end - start) if self_us is None else self_us


def test_the_summary_of_device_and_host_events():
    window = _Event(trace.WINDOW, 0, 1000, False)
    embed = _Event(trace.PHASE + "embed_rows", 5, 120, False, parent=window)
    events = [
        embed,
        _Event(trace.PHASE + "host_distances", 0, 70, False, thread=2),
        _Event("aten::linear", 10, 110, False, parent=embed, self_us=20),
        _Event("aten::addmm", 20, 100, False, parent=None, self_us=80, thread=2),
        _Event("cudaStreamSynchronize", 500, 900, False, parent=window),
        _Event("gemm_kernel", 100, 400, True),
        _Event("gemm_kernel", 300, 500, True),
        _Event("softmax_kernel", 800, 900, True),
        _Event(trace.PHASE + "embed_rows", 0, 1000, True),   # its GPU-side annotation: no device work
    ]
    s = trace.summarize(events, (0, 1000), 0.001)
    assert s["device_busy"] == pytest.approx(0.5)          # 100-500 and 800-900 of 0-1000
    assert s["gaps_ms"][0] == [0.5, 0.3]                     # 500-800
    assert s["gaps_ms"][1] == [0.0, 0.1] and s["gaps_ms"][2] == [0.9, 0.1]
    assert s["kernels"][0] == {"name": "gemm_kernel", "calls": 2, "ms": 0.5}
    assert s["device_ops"] == 3 and s["device_ms"] == pytest.approx(0.6)
    assert s["syncs"] == {"cudaStreamSynchronize": 1}
    assert s["host_threads_ms"] == {"1": 0.5, "2": 0.08}     # top-level operations only
    assert s["host_ops"][0]["name"] == "cudaStreamSynchronize" and len(s["host_ops"]) == 3
    assert s["phases_ms"] == {"embed_rows": {"1": 0.115}, "host_distances": {"2": 0.07}}


def test_a_profiler_that_cannot_start_leaves_the_run_untraced_not_stopped(tiny_model, tmp_path, monkeypatch, caplog):
    import torch.profiler

    class Refusing:
        def __init__(self, **kwargs):
            pass

        def start(self):
            raise RuntimeError("CUPTI_ERROR_NOT_INITIALIZED\nmore")

    monkeypatch.setattr(torch.profiler, "profile", Refusing)
    monkeypatch.setenv(trace.ENV, "1")
    corpus = builtin_sentences()[:80]
    plain = stickytoken.detect(tiny_model, sentences=corpus, output=str(tmp_path / "plain"), **PARAMS)
    profile = json.loads((tmp_path / "plain" / "run.json").read_text())["profile"]
    failed = "the profiler did not start: RuntimeError: CUPTI_ERROR_NOT_INITIALIZED"
    assert profile["scoring"]["trace"] == {"failed": failed}
    assert profile["verification"]["trace"] == {"failed": failed}
    assert "goes on untraced" in caplog.text
    assert not (tmp_path / "plain" / "trace").exists() and len(plain.scored_ids) == 60


def test_the_trace_is_written_when_its_window_closes_and_survives_a_later_failure(tmp_path):
    """run_parts with a trace: the window (chunk 1) is written as chunk 2 starts, so a stage
    that fails at chunk 3 keeps it."""
    import torch

    from stickytoken.runfolder import RunFolder, run_parts

    from concurrent.futures import ThreadPoolExecutor

    run = RunFolder(str(tmp_path / "r"), {"k": 1}, {})
    calls = []

    def host(n):   # a chunk's host work, still running when the next chunk starts (as with workers)
        time.sleep(0.3)
        x = torch.randn(64, 64)
        return np.stack([(x @ x).sum().item() * np.ones(n)] * 3, 1)

    tr = trace.ChunkTrace(run.path, "scoring", cuda=False)
    with ThreadPoolExecutor(1) as pool:
        def compute(ids):
            calls.append(len(ids))
            if len(calls) == 4:
                raise RuntimeError("stopped at chunk 3")
            torch.ones(8).sum()   # the main thread's own operators
            return pool.submit(host, len(ids))

        with pytest.raises(RuntimeError, match="chunk 3"):
            run_parts(run, "score", np.arange(40), 10, compute, timing="scoring", trace=tr)
    assert tr.summary["chunk"] == 1 and tr.summary["host_ops"]
    assert tr.summary["export_s"] > 0
    saved = json.loads((tmp_path / "r" / "trace" / "scoring.json").read_text())
    assert saved == tr.summary
    assert not run.has_part("score", 3) and run.has_part("score", 1)
