"""scripts/bench_core.py --quick runs and prints one well-formed row per C kernel (format only:
timings are never asserted)."""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ["kernel", "size", "C (ms)", "NumPy twin (ms)", "twin / C", "verdict"]


def _stub_kernels():
    """Every function and class that stickytoken/_core.pyi declares."""
    with open(os.path.join(ROOT, "stickytoken", "_core.pyi"), encoding="utf-8") as f:
        return re.findall(r"^(?:def|class) (\w+)[(:]", f.read(), flags=re.M)


def test_bench_core_quick_prints_a_row_per_kernel(tmp_path):
    out_json = tmp_path / "bench_core.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_core.py"), "--quick",
                           "--json", str(out_json)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert any(l.startswith("NumPy ") and "Python " in l and "CPU: " in l for l in lines), proc.stdout
    header = [l for l in lines if l.startswith("| kernel |")]
    assert len(header) == 1
    assert [c.strip() for c in header[0].strip("|").split("|")] == COLUMNS

    rows = {}
    for line in lines:
        if not line.startswith("| ") or line.startswith("| kernel |"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(COLUMNS), line
        rows[cells[0]] = cells
    kernels = _stub_kernels()
    assert len(kernels) == 13
    assert sorted(rows) == sorted(kernels)
    for name, (_, size, c_ms, twin_ms, ratio, verdict) in rows.items():
        assert size, name
        assert float(c_ms) > 0 and float(twin_ms) > 0 and float(ratio) > 0, name
        assert "(mission: " in verdict, name
        assert verdict.startswith(("C (mission: ", "NumPy as fast", "NumPy ")), name

    data = json.loads(out_json.read_text())
    assert data["meta"]["quick"] is True and data["meta"]["numpy"]
    assert sorted(r["kernel"] for r in data["kernels"]) == sorted(kernels)
    for r in data["kernels"]:
        assert r["c_s"] > 0 and r["twin_s"] > 0
        assert abs(r["ratio"] - r["twin_s"] / r["c_s"]) < 1e-9 * r["ratio"]
