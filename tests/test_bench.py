"""scripts/bench.py and scripts/screen_study.py run end to end on the tiny model and print their tables."""
import os
import subprocess
import sys

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
