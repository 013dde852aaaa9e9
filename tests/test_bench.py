"""scripts/bench.py, screen_study.py, agreement.py, scoring_pairs.py, cuda_parity.py, thin_model.py and
long_documents.py run end to end on tiny or thin models."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_runs_on_the_tiny_model_and_prints_a_table(tiny_path, tmp_path):
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--model", tiny_path,
         "--tokens", "5", "--verify-tokens", "1", "--verification-sent-pair-num", "4", "--vocab-sample", "100",
         "--pool-sentences", "300", "--device", "cpu", "--json", str(out_json)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "bare forward rate" in out and "speed-up" in out
    for stage in ("mean similarity", "sticky scores", "fast: one scoring pair", "verification"):
        assert f"| {stage}" in out
    assert "peak host memory" in out
    assert out_json.exists()


def test_screen_study_runs_on_a_tiny_run_folder(tiny_path, tmp_path):
    import stickytoken
    from stickytoken.pairs import builtin_sentences

    model = tiny_path
    s = builtin_sentences()[:120]
    pairs = [(s[2 * i], s[2 * i + 1], 0.01 * i) for i in range(60)]
    run = tmp_path / "run"
    stickytoken.detect(model, pairs=pairs, output=str(run), show_progress_bar=False, sent_pair_num=3, insert_num=3,
                       verification_sent_pair_num=8, max_tokens=60, seed=5)
    study = tmp_path / "study.npz"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "screen_study.py"), "--run", str(run), "--model", model,
         "--tokens", "40", "--verify-tokens", "12", "--verify-pairs", "6", "--save", str(study),
         "--parts", str(run), "--simulate-verification"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "recomputed vs run scores: rank corr 1.000" in out       # same model, same dtype: same scores
    assert "| pairs 0-1, all variants | 18 |" in out      # 2 pairs x 3 variants x 3 insertions
    assert "split-half rank corr" in out
    assert "fast scoring replayed on 60 tokens" in out
    assert "| no early stop | 1.00 | 1.00 | 1.00 | 1.00 |" in out
    again = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "screen_study.py"), "--load", str(study)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "recomputed vs run scores" in again.stdout


def test_agreement_of_two_runs_on_the_same_pairs(tiny_path, tmp_path):
    """scripts/agreement.py: a run against itself agrees fully; a run on its pairs (``--pairs``)
    shares them, also when copied without pairs.json; one whose scoring pairs differ is said to;
    the CLI prints the table and refuses an unfinished folder."""
    import json

    import stickytoken
    from stickytoken.pairs import builtin_sentences

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import agreement

    params = dict(sent_pair_num=2, insert_num=3, verification_sent_pair_num=4, shortlist_percent=10.0, max_tokens=40)
    corpus = builtin_sentences()[:80]
    a = stickytoken.detect(tiny_path, sentences=corpus, output=str(tmp_path / "a"), show_progress_bar=False, seed=7,
                           **params)
    b = stickytoken.detect(tiny_path, pairs=a.run_dir, output=str(tmp_path / "b"), show_progress_bar=False, seed=8,
                           **params)
    same = agreement.agreement(a.run_dir, a.run_dir)
    assert same["score_spearman"] == 1.0 and same["same_scoring_pairs"] and same["same_verification_pairs"]
    assert same["top2_of_common"]["jaccard"] == 1.0 and same["verdict_agrees"] == same["verified_both"]
    other = agreement.agreement(a.run_dir, b.run_dir)   # same pairs, other insert positions and sample
    assert other["same_scoring_pairs"] and other["same_verification_pairs"]
    assert other["common_scored"] < 40 or other["score_spearman"] < 1.0
    # a copy without pairs.json (as docs/results keeps some) reads its pairs from results.json
    import shutil

    bare = shutil.copytree(b.run_dir, str(tmp_path / "bare"), ignore=shutil.ignore_patterns("pairs.json", "parts"))
    assert agreement.agreement(a.run_dir, bare) == other
    results = json.loads((tmp_path / "bare" / "results.json").read_text())
    results["scoring_pairs"][0]["reference"] = "another sentence"   # (the tiny model's corpus has few pairs to pick)
    (tmp_path / "bare" / "results.json").write_text(json.dumps(results))
    drawn = agreement.agreement(a.run_dir, bare)
    assert not drawn["same_scoring_pairs"] and drawn["same_verification_pairs"]
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "agreement.py"), a.run_dir, b.run_dir],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "| score Spearman |" in proc.stdout and "| yes |" in proc.stdout
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "agreement.py"), a.run_dir, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error:")


def test_cuda_parity_script_against_the_cpu_itself(tmp_path):
    """scripts/cuda_parity.py (the GPU float32 diagnosis) run with the CPU as the other device:
    every setting it can run gives the CPU's own values (differences 0, or ~1e-7 where the
    attention kernel differs), and the mean similarity agrees exactly; without CUDA the default
    device is refused with one error line."""
    import json

    script = os.path.join(ROOT, "scripts", "cuda_parity.py")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, script, "--out", str(tmp_path), "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| setting |" in proc.stdout
    rec = json.load(open(tmp_path / "parity.json"))["models"][0]
    assert rec["mean_similarity"]["difference"] == 0.0
    assert rec["settings"]["as found"]["pooled_abs"] == 0.0 and rec["settings"]["encoder"]["pooled_abs"] == 0.0
    ran = [r for r in rec["settings"].values() if "error" not in r]
    assert len(ran) >= 4 and all(r["pooled_abs"] < 1e-6 and max(r["layers_rel"]) < 1e-5 for r in ran)
    import torch

    if not torch.cuda.is_available():
        bad = subprocess.run([sys.executable, script, "--out", str(tmp_path)], capture_output=True, text=True,
                             env=env, timeout=300)
        assert bad.returncode == 2 and bad.stderr.strip().startswith("error:")


def test_thin_model_script_writes_a_thin_copy(tmp_path):
    """scripts/thin_model.py: the bundled model's tokenizer and modules, a 1-layer hidden-32
    model of random weights, loadable as it is (32-dimensional embeddings)."""
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "thin"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "thin_model.py"), str(out)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = SentenceTransformer(str(out), device="cpu")
    emb = model.encode(["a sentence", "another one"])
    assert emb.shape == (2, 32)
    assert model[0].auto_model.config.num_hidden_layers == 1


def test_random_copies_are_drawn_from_their_seed(tiny_path, tmp_path):
    """scripts/thin_model.random_copy: the same seed gives the same weights (a profile run's
    random model is the same every time), another seed other weights."""
    from safetensors.torch import load_file

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from thin_model import random_copy

    a, b, c = (load_file(os.path.join(random_copy(tiny_path, str(tmp_path / name), seed=seed), "model.safetensors"))
               for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    assert a.keys() == b.keys() == c.keys()
    assert all((a[k] == b[k]).all() for k in a)
    assert any(not (a[k] == c[k]).all() for k in a)


def test_profile_gpu_script_runs_through_on_the_cpu(tiny_path, tmp_path):
    """scripts/profile_gpu.py (the first GPU call's profile) with ``--device cpu``: the
    in-process rates, the operator table and the detect runs with and without workers, whose
    run.json profiles hold every part the GPU run is to report."""
    import json

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "profile_gpu.py"), "--device", "cpu",
                           "--config-dir", tiny_path, "--out", str(out), "--tokens", "12", "--batch-sizes", "16",
                           "--detect-tokens", "20", "--detect-workers", "0,1", "--no-cprofile", "--compile"],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| batch | bare seq/s | embed_rows seq/s |" in proc.stdout
    rec = json.load(open(out / "profile.json"))
    assert rec["rows"] > 0 and rec["rates"]["16"]["bare_seq_per_s"] > 0
    assert (out / "embed_ops.txt").stat().st_size > 0
    # the attention sweep switches kernels for real: the CPU has flash and math, not cuDNN's or
    # the memory-efficient one
    att = rec["attention"]
    assert list(att) == ["default", "cudnn", "flash", "efficient", "math", "eager"]
    assert all(att[k] > 0 for k in ("default", "flash", "math", "eager")), att
    assert att["cudnn"].startswith("unavailable: ") and att["efficient"].startswith("unavailable: ")
    assert rec["compiled"]["bare_seq_per_s"] > 0 and rec["compiled"]["first_pass_s"] > 0, rec["compiled"]
    assert "bare rate by attention kernel (batch 64)" in proc.stdout   # the encoder's own (CPU)
    assert [d["name"] for d in rec["detect"]] == ["detect_w0", "detect_w1"]
    for d, w in zip(rec["detect"], (0, 1)):
        assert "error" not in d, d
        assert d["profile"]["scoring"]["workers"] == w
        assert {"rows_build", "rows_wait", "embed", "save", "host_wait", "other"} <= set(d["profile"]["scoring"])
        assert set(d["profile"]["load"]) >= {"import", "model"} and d["profile"]["write_results"] > 0


def test_bench_gpu_script_runs_end_to_end_on_the_cpu(tiny_path, tmp_path):
    """scripts/bench_gpu.py (issue 13's table) with ``--device cpu`` on the tiny model: real
    detect runs (one under --compile, one on the CPU run's pairs), the bare rates, the table,
    and the agreement with a finished float32 run given as the CPU run."""
    import json

    import stickytoken

    cpu_run = tmp_path / "cpu-run"
    stickytoken.detect(tiny_path, max_tokens=30, output=str(cpu_run), show_progress_bar=False)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_gpu.py"), "--device", "cpu",
                           "--model", tiny_path, "--max-tokens", "30", "--configs", "fp32,bf16-compile,fp32-samepairs",
                           "--bare-tokens", "10", "--batch-sweep", "", "--cpu-run", str(cpu_run), "--out", str(out),
                           "--trace", "fp32"],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.load(open(out / "bench.json"))
    assert [r["name"] for r in rec["runs"]] == ["fp32", "bf16-compile", "fp32-samepairs"] and rec["cpu_run_compared"]
    assert [r["traced"] for r in rec["runs"]] == [True, False, False]
    traced = rec["runs"][0]["profile"]["scoring"]["trace"]
    assert traced["wall_s"] > 0 and traced["export_s"] > 0
    assert "trace" not in rec["runs"][1]["profile"]["scoring"]
    assert os.path.isfile(os.path.join(rec["runs"][0]["run_dir"], "trace", "scoring.trace.json.gz"))
    assert (out / "trace-fp32" / "verification.json").is_file() and not (out / "trace-fp32-samepairs").exists()
    fp32, compiled, samepairs = rec["runs"]
    assert f"--pairs {cpu_run}" in samepairs["command"] and "--pairs" not in fp32["command"]
    assert "--compile" in compiled["command"] and "--compile" not in fp32["command"]
    assert isinstance(compiled["kernels"]["compile"], float) and fp32["kernels"] == {}
    for r in rec["runs"]:
        assert r["sequences"]["scoring"] > 0 and r["bare"]["scoring"]["seq_per_s"] > 0
        assert r["timings"]["scoring"] > 0 and r["n_scored"] == 30
    pairs = {(a["a"], a["b"]): a for a in rec["agreement"]}
    names = ["fp32", "bf16-compile", "fp32-samepairs", "cpu-fp32"]
    assert set(pairs) == {(a, b) for i, a in enumerate(names) for b in names[i + 1:]}
    assert pairs[("fp32", "cpu-fp32")]["score_spearman"] == 1.0   # the same run, again
    same = pairs[("fp32-samepairs", "cpu-fp32")]
    assert same["same_scoring_pairs"] and same["same_verification_pairs"] and same["score_spearman"] == 1.0
    table = (out / "bench.md").read_text()
    assert table.startswith("device: ") and "| fp32 |" in table and "| bf16-compile |" in table
    assert "- bf16-compile kernels: compile " in table and table in proc.stdout
    assert "| fp32 (traced) |" in table and "- fp32 scoring, chunk " in table and "- fp32 verification, chunk " in table
    export = sum(p["trace"]["export_s"] for p in rec["runs"][0]["profile"].values()
                 if isinstance(p, dict) and "trace" in p)
    shown = float(table.split("| fp32 (traced) | ")[1].split(" |")[0])
    assert shown == pytest.approx(rec["runs"][0]["wall_s"] - export, abs=0.051)   # less writing the traces
    outside = float(table.split("| fp32 (traced) | ")[1].split(" |")[7])
    assert outside >= 0   # (detect's own total holds the export: the wall time it is taken from does too)


def test_bench_gpu_refuses_an_unknown_configuration_to_trace(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_gpu.py"), "--device", "cpu",
                           "--configs", "fp32", "--trace", "fp33", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown config 'fp33'" in proc.stderr
    assert not (tmp_path / "bench.json").exists()


def test_bench_gpu_reports_a_run_stopped_by_its_time_limit(tiny_path, tmp_path):
    """--run-timeout: a detect run past its limit is stopped, reported as far as it got, and
    left out of the rates and the agreement; --budget: a configuration with less than a
    minute of the script's budget left is not started, and the table says so."""
    import json

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_gpu.py"), "--device", "cpu",
                           "--model", tiny_path, "--configs", "fp32,bf16", "--run-timeout", "2", "--budget", "61.5",
                           "--batch-sweep", "", "--cpu-run", str(tmp_path / "none"), "--out", str(out)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.load(open(out / "bench.json"))
    fp32, bf16 = rec["runs"]
    assert fp32["timed_out"] == 2 and "bare" not in fp32 and rec["agreement"] == []
    assert 0 < bf16["skipped"] < 60 and "run_dir" not in bf16
    table = (out / "bench.md").read_text()
    assert "fp32: stopped after 2 s" in proc.stdout and "| fp32 | stopped at 2 |" in table
    assert "bf16: skipped, " in proc.stdout and "| bf16 | not started: " in table
    assert all(line.count("|") == 15 for line in table.splitlines() if line.startswith("| bf16 |"))
    assert (out / "detect-fp32.log").exists()


def test_run_limited_stops_a_command_and_what_it_started(tmp_path):
    """scripts/bench.run_limited (bench_gpu's and profile_gpu's detect runs): past its limit the
    command is killed together with the processes it started, its output so far kept; within
    it, its own exit status."""
    import time

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from bench import run_limited

    child = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
             "print(p.pid, flush=True); time.sleep(60)")
    t0 = time.perf_counter()
    proc = run_limited([sys.executable, "-c", child], 2)
    assert proc.returncode is None and time.perf_counter() - t0 < 30
    grandchild = int(proc.stdout.split()[0])
    for _ in range(50):   # reaped by init once its parent is gone
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"process {grandchild} started by the stopped command is still running")
    done = run_limited([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"], 30)
    assert done.returncode == 3 and done.stdout == "out\n"


def test_profile_gpu_stops_a_detect_run_past_its_limit(tiny_path, tmp_path):
    """scripts/profile_gpu.detect with a limit: the run is stopped and its record says so."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from profile_gpu import detect

    rec = detect(tiny_path, str(tmp_path), "detect_w0", 20, False, 0, "cpu", str(tmp_path / "work"), limit=0.5)
    assert rec["name"] == "detect_w0" and rec["error"] == "stopped after 0.5 s"


def test_gpu_carry_splits_the_weights_into_calls_that_fit(tmp_path):
    """scripts/gpu_carry.py: the fewest parts (at least 2) with which every device call fits in
    64 MiB beside the working tree, and the tree measured as the device tool sends it (tracked
    and untracked files, not the ignored ones)."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import gpu_carry

    mib = 2**20
    assert gpu_carry.parts_needed(87 * mib, mib, 19 * mib) == 2
    assert gpu_carry.parts_needed(87 * mib, mib, 30 * mib) == 3
    assert gpu_carry.parts_needed(87 * mib, mib, 63 * mib) is None
    for n in (2, 3, 5):   # call 1 also carries the small files: its part is that much shorter
        b = gpu_carry.part_bounds(87 * mib + 1, mib, n)
        sizes = [y - x for x, y in zip(b, b[1:])]
        assert b[0] == 0 and b[-1] == 87 * mib + 1 and len(sizes) == n
        assert max(sizes[1:]) - min(sizes[1:]) <= 1 and abs(sizes[0] + mib - sizes[1]) <= n
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / ".gitignore").write_text(".carry/\n")
    (repo / "tracked.txt").write_bytes(b"x" * 1000)
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    (repo / "untracked.txt").write_bytes(b"y" * 300)
    (repo / ".carry").mkdir()
    (repo / ".carry" / "big").write_bytes(b"z" * 10_000)
    assert gpu_carry.tree_bytes(str(repo)) == 1000 + 300 + len(".carry/\n")


def test_scoring_pairs_splits_a_runs_pair_terms(tiny_path, tmp_path):
    """scripts/scoring_pairs.py: the run's parts give back its scores, each split scores the
    tokens as the run would on those pairs, and the command prints the table."""
    import numpy as np

    import stickytoken
    from stickytoken.compare import spearman
    from stickytoken.pairs import builtin_sentences

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import scoring_pairs

    run = stickytoken.detect(tiny_path, sentences=builtin_sentences(), output=str(tmp_path / "r"),
                             show_progress_bar=False, sent_pair_num=6, insert_num=3, verification_sent_pair_num=2,
                             shortlist_percent=10.0, max_tokens=60, bootstrap=0)
    ids, terms = scoring_pairs.pair_terms(run.run_dir)
    assert terms.shape == (60, len(run.scoring_pairs))
    order = {t: k for k, t in enumerate(run.scored_ids.tolist())}
    np.testing.assert_allclose(terms.mean(axis=1), run.scores[[order[t] for t in ids.tolist()], 0], atol=2e-6)
    rows, r1 = scoring_pairs.split_half(terms, [1, 3], splits=4, seed=3)
    rng = np.random.default_rng(3)   # the splits of size 1, by hand
    by_hand = [spearman(terms[:, p[0]], terms[:, p[1]]) for p in (rng.permutation(terms.shape[1]) for _ in range(4))]
    assert rows[0]["spearman"] == pytest.approx(np.mean(by_hand)) and rows[0]["splits"] == 4
    assert 0 <= rows[1]["top10"] <= 1 and 0 <= rows[1]["top2"] <= 1
    r3 = rows[1]["spearman"]
    assert r1 == pytest.approx(r3 / (3 - 2 * r3)) and rows[1]["spearman_brown"] == pytest.approx(r3)
    assert rows[0]["spearman_brown"] == pytest.approx(r1)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "scoring_pairs.py"), run.run_dir,
                           "--sizes", "1,2,3", "--splits", "3", "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| scoring pairs (each set) |" in proc.stdout and (tmp_path / "out" / "scoring_pairs.json").is_file()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "scoring_pairs.py"), run.run_dir,
                           "--sizes", "4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: size 4 needs 8 pairs")



def test_long_documents_counts_the_copies_past_the_limit(tiny_model, tiny_path, tmp_path):
    """scripts/long_documents.py: on documents joined 3 to 1 the tiny model (128 tokens; its
    tokenizer spells unknown words out letter by letter) loses copies, and the table's counts
    are assess's own on the same set."""
    from tinymodel import tiny_result

    from stickytoken import assess as A
    from stickytoken import datasets as D

    run = tiny_result(tiny_model, run_dir=str(tmp_path / "run"))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "long_documents.py"), run.run_dir,
                           "--model", tiny_path, "--join", "3", "--tokens", "1", "--hijack-queries", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:6]]
            for line in proc.stdout.splitlines()[2:]}
    r = D.get_retrieval("builtin")
    ids = list(r.corpus)
    corpus = {d: " ".join(r.corpus[ids[(i + j) % len(ids)]] for j in range(3)) for i, d in enumerate(ids)}
    a = A.assess(run, model=tiny_model, n_tokens=1, retrieval=D.RetrievalData(corpus, r.queries, r.qrels),
                 clustering=None, hijack_queries=2, output=False, show_progress_bar=False)
    want = a.params["copies_cut"]
    assert want["document"]["copies_cut"] > 0
    assert rows == {role: [f"{c['texts']:,}", f"{c['texts_cut']:,}", f"{c['copies']:,}", f"{c['copies_cut']:,}"]
                    for role, c in want.items()}
