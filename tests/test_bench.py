"""scripts/bench.py runs end to end on the tiny model and prints its table."""
import os
import subprocess
import sys

from tinymodel import build_tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_runs_on_the_tiny_model_and_prints_a_table(tmp_path):
    build_tiny_model(str(tmp_path / "m"))
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--model", str(tmp_path / "m" / "st"),
         "--tokens", "5", "--verify-tokens", "1", "--verification-sent-pair-num", "4", "--vocab-sample", "100",
         "--pool-sentences", "300", "--device", "cpu", "--json", str(out_json)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "bare forward rate" in out and "speed-up" in out
    for stage in ("mean similarity", "sticky scores", "fast screen", "verification"):
        assert f"| {stage}" in out
    assert "peak host memory" in out
    assert out_json.exists()
