"""The demo notebook runs end to end (CI executes it) and shows what it promises."""
import os
import re

import pytest

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "notebooks", "demo.ipynb")


@pytest.mark.slow
def test_demo_notebook_executes(demo_run, tmp_path, monkeypatch):
    """The notebook as a user runs it, on a copy of the session's run of its own detection
    (``demo_run``: the same call, made once for this test and test_report's), which its detect
    finds finished."""
    from conftest import copy_run

    copy_run(demo_run, tmp_path / "run")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("STICKYTOKEN_DEMO_RUN", str(tmp_path / "run"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    images = sum(1 for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
                 if "image/png" in out.get("data", {}))
    assert images >= 5                  # detection plot, similarity curve, attention overview + heat map, downstream
    # the headline shows the effect: a sticky token of the paper pulls the pairs' similarity
    # toward the mean far more than the control tokens do
    text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []) if out.get("output_type") == "stream")
    m = re.search(r"toward the mean similarity \(([\d.]+)\) with (\d+) copies, mean over (\d+) pairs: "
                  r"sticky '(.+?)' ([+-][\d.]+) \((\d+)% of the gap\); controls ([+-][\d.]+) \((-?\d+)%\)", text)
    assert m, text[-3000:]
    sticky, sticky_shift, sticky_gap = m.group(4), float(m.group(5)), int(m.group(6))
    control_shift, control_gap = float(m.group(7)), int(m.group(8))
    paper = re.search(r"PAPER_STICKY = \[(.*?)\]", "".join(c.source for c in nb.cells), re.S).group(1)
    assert f'"{sticky}"' in paper and int(m.group(3)) >= 3       # one of the paper's sticky tokens, several pairs
    assert sticky_shift > 0.1 and sticky_shift > 2 * control_shift, m.group(0)
    assert sticky_gap > 2 * control_gap, m.group(0)
    for name in ("results.json", "attention/overview.png", "assess/assess.csv", "report/report.html"):
        assert os.path.isfile(tmp_path / "run" / name)
