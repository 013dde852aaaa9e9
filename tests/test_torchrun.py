"""One detection over two processes with PyTorch's launcher (gloo on CPU): results identical
to one process, and a rank killed mid-scoring resumes to the same results."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from stickytoken.pairs import builtin_sentences

pytest.importorskip("torch.distributed")
pytestmark = pytest.mark.skipif(not __import__("torch").distributed.is_available(),
                                reason="torch.distributed is not available")

RESULT_FILES = ("scores.csv", "candidates.csv", "sticky_tokens.csv", "tokens.jsonl", "mean_similarity.json",
                "pairs.json")


def _env(chunk_rows=90):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
            "STICKYTOKEN_CHUNK_ROWS": str(chunk_rows), "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def args(tiny_path, tmp_path_factory):
    corpus = tmp_path_factory.mktemp("tr") / "corpus.txt"
    corpus.write_text("\n".join(builtin_sentences()[:80]))
    return ["--model", tiny_path, "--sentences", str(corpus), "--sent-pair-num", "2", "--insert-num", "3",
            "--verification-sent-pair-num", "4", "--shortlist-percent", "10", "--seed", "7", "--quiet"]


def _torchrun(args, out, **kw):
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "stickytoken", "detect", *args, "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), **kw)


@pytest.fixture(scope="module")
def single(args, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    proc = subprocess.run([sys.executable, "-m", "stickytoken", "detect", *args, "--output", str(out)],
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _same(a, b):
    for name in RESULT_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ra, rb = (json.loads((x / "results.json").read_text()) for x in (a, b))
    for r in (ra, rb):
        r.pop("timings"), r.pop("peak_memory")
    assert ra == rb


def test_two_ranks_give_the_single_process_results(args, single, tmp_path):
    proc = _torchrun(args, tmp_path / "run")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    _same(single, tmp_path / "run")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["world_size"] == 2 and run["status"] == "complete"
    assert len(os.listdir(tmp_path / "run" / "parts")) >= 4   # the chunks were shared out


def test_a_rank_killed_mid_scoring_resumes_to_the_same_results(args, single, tmp_path):
    out = tmp_path / "run"
    proc = _torchrun(args, out, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        parts = os.listdir(out / "parts") if (out / "parts").is_dir() else []
        if sum(p.startswith("score-") for p in parts) >= 2:
            break
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert workers, "no worker processes found"
    os.kill(int(workers[-1]), signal.SIGKILL)
    proc.communicate(timeout=300)
    assert proc.returncode != 0 and not (out / "results.json").exists()   # it died mid-run
    n_parts = lambda run: sum(p.startswith("score-") for p in os.listdir(run / "parts"))  # noqa: E731
    assert 2 <= n_parts(out) < n_parts(single)   # ... in the scoring stage (the other rank goes on until it is stopped)
    again = _torchrun(args, out)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    _same(single, out)
