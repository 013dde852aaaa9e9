"""Reports: Markdown + self-contained HTML across runs on tiny-model runs; and, marked slow
(CI runs it), detect -> attention -> assess -> report on a small real run of the default model."""
import json
import os
import re
from html.parser import HTMLParser

import pytest

from stickytoken import assess as A
from stickytoken import datasets as D
from stickytoken import report
from stickytoken.attention import analyze
from stickytoken.cli import build_parser
from stickytoken.errors import InputError
from tinymodel import WORDS, tiny_result


def _analyse(run, model):
    """Attention analysis and assessment of a tiny run, written into its folder."""
    analyze(run, model=model, sentences=["the cat ran home", "a big dog"], n_sentences=None, max_copies=2, n_tokens=1)
    words = WORDS[:40]
    corpus = {f"d{i}": " ".join(words[i:i + 6]) for i in range(30)}
    queries = {f"q{i}": " ".join(words[i:i + 2]) for i in range(8)}
    A.assess(run, model=model, n_tokens=1, copies=1, retrieval=D.RetrievalData(corpus, queries, {f"q{i}": {f"d{i}": 1} for i in range(8)}),
             clustering=D.ClusteringData([" ".join(words[i:i + 4]) for i in range(20)], ["x", "y"] * 10),
             hijack_queries=3, max_copies=2)


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """A run with sticky tokens and one without (its analyses use stand-in candidates)."""
    model = tiny_model
    base = tmp_path_factory.mktemp("runs")
    full = tiny_result(model, run_dir=str(base / "full"))
    bare = tiny_result(model, sticky_words=(), run_dir=str(base / "bare"))
    _analyse(full, model)
    _analyse(bare, model)
    return full, bare


def test_report_across_runs(runs, tmp_path):
    full, bare = runs
    paths = report.write_report([full.run_dir, bare.run_dir], str(tmp_path / "rep"))
    md = open(paths["markdown"], encoding="utf-8").read()
    html = open(paths["html"], encoding="utf-8").read()
    # the paper's table: one row per run
    assert md.count("| tiny-bert | 2 | 4 | 4 | 2 |") == 2
    for section in ("Sticky tokens (3)", "Attention analysis", "Downstream impact", "Retrieval hijack",
                    "No sticky tokens were found"):
        assert section in md and section in html
    # markdown links figures that exist; html embeds every figure and links none
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 2 * (1 + 5)    # per run: detection; attention overview/heads/heatmap, assess, hijack
    assert all(os.path.isfile(os.path.join(tmp_path / "rep", p)) for p in links)
    assert html.count("src='data:image/png;base64,") == len(links)
    assert "src='figures" not in html and "<table" in html
    # each analysis says where its controls came from (the run's default draw)
    assert md.count("Controls: a seeded draw from the run's lowest-scored tenth.") == 4
    # the downstream table names the token behind each group's worst change
    summary = json.load(open(os.path.join(full.run_dir, "assess", "assess.json")))["summary"][0]
    assert f"{100 * summary['worst_relative_change']:+.1f}% ({summary['worst_token']!r})" in md


def test_report_command_and_errors(runs, tmp_path, capsys):
    full, _ = runs
    parser = build_parser()
    args = parser.parse_args(["report", full.run_dir])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert os.path.join(full.run_dir, "report", "report.html") in out
    with pytest.raises(InputError, match="is not a detection run folder"):
        report.write_report([str(tmp_path)], str(tmp_path / "x"))
    with pytest.raises(InputError, match="does not exist"):
        report.write_report([str(tmp_path / "no-such-run")], str(tmp_path / "x"))
    with pytest.raises(InputError, match="run 2 is run 1 again"):
        report.write_report([full.run_dir, full.run_dir + "/."], str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def _run_sections(md):
    """The report's text per run ('## Run 1: ...' up to the next run)."""
    parts = re.split(r"^## Run \d+: ", md, flags=re.M)
    return parts[1:]


def test_stand_ins_are_recorded_said_and_captioned(runs, tmp_path):
    """A run without sticky tokens is analysed on stand-in candidates: the analysis folders
    record it, the report carries the note, its captions say so, and its guard columns do not
    read as a success."""
    full, bare = runs
    for sub, name in (("attention", "attention.json"), ("assess", "assess.json")):
        with open(os.path.join(bare.run_dir, sub, name), encoding="utf-8") as fh:
            assert json.load(fh)["stand_ins"] is True
        with open(os.path.join(full.run_dir, sub, name), encoding="utf-8") as fh:
            assert json.load(fh)["stand_ins"] is False
    paths = report.write_report([full.run_dir, bare.run_dir], str(tmp_path / "rep"))
    md = open(paths["markdown"], encoding="utf-8").read()
    html = open(paths["html"], encoding="utf-8").read()
    full_md, bare_md = _run_sections(md)
    note = "top verification candidates stand in for them"
    assert note in bare_md and note not in full_md and note in html
    assert "stand-in candidates vs control" in bare_md and "sticky vs control" not in bare_md
    assert "sticky vs control" in full_md and "stand-in" not in full_md
    assert "no sticky tokens: guard effect not measured; stand-ins shown" in bare_md
    # no guard cell of the stand-in run shows a number (a '+0.0%' would read as the guard working)
    bare_rows = [line for line in bare_md.splitlines() if line.startswith(("| candidate", "| control"))]
    assert bare_rows and all(line.rstrip(" |").endswith("not measured") for line in bare_rows)
    full_rows = [line for line in full_md.splitlines() if line.startswith("| sticky")]
    # sticky tokens: the guard is measured ('-' where the clean value is 0 and there is no relative change)
    assert all(re.search(r"([+-]?\d+\.\d%|-) \|$", line) for line in full_rows)
    assert any(re.search(r"[+-]?\d+\.\d% \|$", line) for line in full_rows)
    assert "nan%" not in md


class _Tables(HTMLParser):
    """Each <table>'s enclosing element classes, and the <style> text."""

    def __init__(self):
        super().__init__()
        self.stack, self.tables, self.style, self._in_style = [], [], "", False

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([dict(a).get("class", "") for t, a in self.stack])
        if tag == "style":
            self._in_style = True
        if tag not in ("meta", "img", "br"):
            self.stack.append((tag, attrs))

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        if self._in_style:
            self.style += data


def test_html_tables_cannot_widen_the_page(runs, tmp_path):
    """Every table sits in a horizontally scrolling wrapper and its cells may wrap anywhere,
    so a wide table (the summary) never makes the page wider than the window."""
    full, bare = runs
    paths = report.write_report([full.run_dir, bare.run_dir], str(tmp_path / "rep"))
    parser = _Tables()
    parser.feed(open(paths["html"], encoding="utf-8").read())
    assert parser.tables
    assert all("table-wrap" in classes for classes in parser.tables)
    css = re.sub(r"\s+", "", parser.style)
    assert re.search(r"\.table-wrap\{[^}]*overflow-x:auto", css)
    assert re.search(r"(th|td)[^{]*\{[^}]*overflow-wrap:anywhere", css)


def test_detection_plot_has_plain_ticks_and_labelled_count_axis(tiny_model):
    """The score histogram's log axis reads plain numbers ('6', '20'), not '6x10^0'; the
    verification panel has a y label and integer ticks."""
    from matplotlib.ticker import MaxNLocator

    from stickytoken.plotting import pyplot, use_agg

    use_agg()
    fig = tiny_result(tiny_model).plot()
    try:
        fig.canvas.draw()
        ax1, ax2 = fig.axes[:2]
        labels = [t.get_text() for t in ax1.yaxis.get_majorticklabels() + ax1.yaxis.get_minorticklabels()]
        shown = [t for t in labels if t]
        assert shown and not any("times" in t or "^" in t or "$" in t or "×" in t for t in shown), shown
        assert all(re.fullmatch(r"[\d,.]+", t) for t in shown), shown
        assert ax2.get_ylabel()
        loc = ax2.yaxis.get_major_locator()
        assert isinstance(loc, MaxNLocator) and loc._integer
        assert all(float(v).is_integer() for v in ax2.get_yticks())
    finally:
        pyplot().close(fig)


def test_hijack_guard_curve_is_drawn_on_top_and_distinguishable():
    """When the guard-on curve coincides with the control curve it stays visible: another line
    style and marker, drawn above the group curves."""
    from stickytoken.plotting import assess_hijack_figure, pyplot, use_agg

    use_agg()
    rows = [{"group": g, "token_id": i, "token": "t", "query_id": f"q{q}", "doc_id": "d", "copies_needed": c,
             "guard_copies_needed": None if g == "control" else gc}
            for g, i, c, gc in (("sticky", 1, 1, None), ("control", 2, None, None)) for q in range(3)]
    a = A.Assessment(model="m", params={"max_copies": 4, "guard": "remove", "copies": 1}, baselines={}, rows=[],
                     hijack=rows, tokens=[])
    fig = assess_hijack_figure(a)
    try:
        lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
        guard, control, sticky = lines["sticky, guard on"], lines["control"], lines["sticky"]
        assert guard.get_linestyle() != control.get_linestyle()
        assert guard.get_marker() not in (None, "", "None", " ")
        assert guard.get_zorder() > max(control.get_zorder(), sticky.get_zorder())
        # a share: the axis starts at 0, and a curve lying there is drawn over the x axis
        ax = fig.axes[0]
        assert ax.get_ylim()[0] == 0 and min(ax.get_yticks()[(ax.get_yticks() >= ax.get_ylim()[0])]) == 0
        assert all(not ln.get_clip_on() and ln.get_zorder() > ax.spines["bottom"].get_zorder() for ln in lines.values())
    finally:
        pyplot().close(fig)


@pytest.mark.slow
def test_real_default_model_end_to_end(demo_run, tmp_path):
    """A small detection of all-MiniLM-L6-v2 (the demo's, ``demo_run``), then the three
    commands as a user runs them."""
    import stickytoken
    from conftest import copy_run

    run_dir = copy_run(demo_run, tmp_path / "run")
    result = stickytoken.DetectionResult.load(run_dir)
    assert result.candidates
    parser = build_parser()
    for argv in (["attention", run_dir, "--n-tokens", "2", "--n-sentences", "6", "--max-copies", "3"],
                 ["assess", run_dir, "--n-tokens", "2", "--copies", "4", "--queries", "20", "--docs", "80",
                  "--texts", "80", "--hijack-queries", "3", "--max-copies", "3"],
                 ["report", run_dir]):
        args = parser.parse_args(argv)
        assert args.func(args) == 0
    for path in ("attention/overview.png", "attention/attention_layers.csv", "assess/assess.csv", "assess/assess.png",
                 "report/report.md", "report/report.html"):
        assert os.path.getsize(os.path.join(run_dir, path)) > 0
    import pandas as pd

    summary = pd.read_csv(os.path.join(run_dir, "assess", "assess.csv"))
    base = summary[(summary.task == "retrieval") & (summary.metric == "ndcg@10")].baseline.iloc[0]
    assert 0.2 < base <= 1.0                        # the built-in set is answerable by the default model
    layers = pd.read_csv(os.path.join(run_dir, "attention", "attention_layers.csv"))
    assert layers.layer.max() == 6 and layers.attention_ratio.dropna().gt(0).all()
