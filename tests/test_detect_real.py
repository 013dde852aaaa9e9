"""End to end on the real bundled all-MiniLM-L6-v2, through the command as a user runs it:
published figures, a complete run folder, kill-and-resume, and bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow

# 50 tokens in parts of 17 (STICKYTOKEN_CHUNK_ROWS 2048 = 17 tokens x 5 pairs x 3 variants x 8),
# so a run can be stopped between parts twice; the top 4% is 2 candidates
SMALL = ["--max-tokens", "50", "--shortlist-percent", "4", "--verification-sent-pair-num", "20", "--seed", "42"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
       "STICKYTOKEN_CHUNK_ROWS": "2048"}


def cli(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "stickytoken", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "full"
    proc = cli("detect", *SMALL, "--output", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads(proc.stdout), proc


def test_published_vocabulary_and_mean_similarity(full_run):
    out, summary, _ = full_run
    res = json.load(open(out / "results.json"))
    assert res["vocab_size"] == 30522
    assert res["available_tokens"] == 23699
    assert res["category_counts"]["OK"] == 23695
    assert res["category_counts"]["OK_SPECIAL"] == 4
    assert res["category_counts"]["UNREACHABLE_MULTI_TOKEN"] == 5829
    assert res["category_counts"]["UNREACHABLE_SPECIAL"] == 994
    assert abs(res["mean_similarity"] - 0.19985) < 0.002
    assert summary["available_tokens"] == 23699 and summary["scored_tokens"] == 50


def test_run_folder_is_complete(full_run):
    out, summary, proc = full_run
    names = set(os.listdir(out))
    for n in ("run.json", "results.json", "tokens.jsonl", "candidates.csv", "sticky_tokens.csv", "scores.csv",
              "summary.md", "pairs.json"):
        assert n in names
    run = json.load(open(out / "run.json"))
    assert run["status"] == "complete" and run["identity"]["model"].endswith("all-MiniLM-L6-v2")
    for stage in ("vocab", "mean_similarity", "pairs", "scoring", "verification"):
        assert run["timings"][stage] > 0
    lines = open(out / "tokens.jsonl").read().splitlines()
    assert len(lines) == 30522
    scored = [row for row in map(json.loads, lines) if "score" in row]
    assert len(scored) == 50
    pairs = json.load(open(out / "pairs.json"))
    assert len(pairs["pool"]) == 1000 and len(pairs["scoring"]) == 5 and len(pairs["verification"]) == 20
    cands = open(out / "candidates.csv").read().splitlines()
    assert len(cands) - 1 == summary["verification_candidates"] >= 2
    assert "run folder" not in proc.stdout  # --json prints only JSON
    assert "scoring" in proc.stderr  # progress bars and log lines go to stderr


def _default_sigint():
    # a child started from a shell's background job inherits SIGINT ignored; give it the default
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(path, proc, limit=600):
    t0 = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() - t0 < limit
        time.sleep(0.2)


def test_kill_and_resume_gives_identical_results(full_run, tmp_path):
    ref_dir, _, _ = full_run
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "stickytoken", "detect", *SMALL, "--output", str(out), "--quiet"]
    # SIGINT after the first scoring part
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    _wait_for(out / "parts" / "score-000000.npz", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "resume" in err
    # SIGKILL once the resumed run has saved the next part: in the middle of the last one
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "parts" / "score-000001.npz", proc)
    proc.kill()
    proc.communicate()
    assert not (out / "results.json").exists()
    done = cli("detect", *SMALL, "--output", str(out), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = json.load(open(ref_dir / "results.json")), json.load(open(out / "results.json"))
    assert a["candidates"] == b["candidates"]
    assert a["shortlist_threshold"] == b["shortlist_threshold"] and a["fence"] == b["fence"]
    assert open(ref_dir / "scores.csv").read() == open(out / "scores.csv").read()
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]


def test_check_of_two_tokens_gives_the_runs_values(full_run):
    """check through the CLI on the bundled model: for the run's candidates, computed again
    (--recompute; by default they are read from the run), exactly the values detect computed
    (same seed), judged against the run's fence."""
    out, _, _ = full_run
    res = json.load(open(out / "results.json"))
    cands = res["candidates"][:2]
    assert len(cands) == 2
    proc = cli("check", "--run", str(out), "--tokens", ",".join(c["token"] for c in cands), "--json", "--quiet",
               "--recompute")
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    assert got["fence"] == res["fence"] and got["mean_similarity"] == res["mean_similarity"]
    for c, t in zip(cands, got["tokens"]):
        assert t["id"] == c["id"]
        for key in ("score", "score_euclidean", "score_manhattan", "verification", "verification_euclidean",
                    "verification_manhattan", "label", "confidence"):
            assert t[key] == c[key], key
        assert t["clears_fence"] == c["sticky"]


def test_same_command_on_a_finished_folder_is_immediate(full_run):
    out, summary, _ = full_run
    t0 = time.time()
    again = cli("detect", *SMALL, "--output", str(out), "--json")
    assert again.returncode == 0
    assert json.loads(again.stdout)["sticky_tokens"] == summary["sticky_tokens"]
    assert time.time() - t0 < 120


def test_other_parameters_refused_and_nothing_lost(full_run):
    out, _, _ = full_run
    before = open(out / "results.json").read()
    proc = cli("detect", "--max-tokens", "100", "--seed", "1", "--output", str(out))
    assert proc.returncode == 2
    assert "other parameters" in proc.stderr and "Traceback" not in proc.stderr
    assert open(out / "results.json").read() == before


@pytest.mark.parametrize("args,msg", [
    (["--model", "/no/such/model"], "does not exist"),
    (["--model", "nobody-here/unknown-model-xyz"], "not in the Hugging Face cache"),
    (["--sent-pair-num", "0"], "sent_pair_num must be"),
    (["--shortlist-percent", "150"], "shortlist_percent"),
    (["--output", "/proc/stickytoken-cannot-write"], "run folder"),
])
def test_bad_input_one_clear_line(args, msg):
    proc = cli("detect", *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert msg in proc.stderr and "Traceback" not in proc.stderr
    assert len([l for l in proc.stderr.splitlines() if l.startswith("error:")]) == 1


def test_bad_input_files(tmp_path):
    (tmp_path / "one.txt").write_text("Just one sentence in here.\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    for args, msg in [(["--sentences", str(tmp_path / "one.txt")], "at least 2"),
                      (["--sentences", str(tmp_path / "empty.txt")], "no sentences"),
                      (["--pairs", str(tmp_path / "bad.csv")], "sentence1 and sentence2"),
                      (["--sentences", str(tmp_path / "nope.txt")], "does not exist")]:
        proc = cli("detect", *args, "--output", str(tmp_path / "out"))
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert msg in proc.stderr and "Traceback" not in proc.stderr


def test_version_flag():
    proc = cli("--version")
    assert proc.returncode == 0 and "stickytoken" in proc.stdout and "torch" in proc.stdout


def test_an_unknown_attention_kernel_is_one_clear_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "stickytoken", "detect", "--max-tokens", "5",
                           "--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=600,
                          env={**ENV, "STICKYTOKEN_ATTENTION": "flash,flashy"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "'flashy'" in errors[0] and "STICKYTOKEN_ATTENTION" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
