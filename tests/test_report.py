"""Reports: Markdown + self-contained HTML across runs on tiny-model runs; and, marked slow
(CI runs it), detect -> attention -> assess -> report on a small real run of the default model."""
import os
import re

import pytest

from stickytoken import assess as A
from stickytoken import datasets as D
from stickytoken import report
from stickytoken.attention import analyze
from stickytoken.cli import build_parser
from stickytoken.errors import InputError
from tinymodel import WORDS, tiny_result


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    model = tiny_model
    base = tmp_path_factory.mktemp("runs")
    full = tiny_result(model, run_dir=str(base / "full"))
    bare = tiny_result(model, sticky_words=(), run_dir=str(base / "bare"))
    analyze(full, model=model, sentences=["the cat ran home", "a big dog"], n_sentences=None, max_copies=2, n_tokens=1)
    words = WORDS[:40]
    corpus = {f"d{i}": " ".join(words[i:i + 6]) for i in range(30)}
    queries = {f"q{i}": " ".join(words[i:i + 2]) for i in range(8)}
    A.assess(full, model=model, n_tokens=1, copies=1, retrieval=D.RetrievalData(corpus, queries, {f"q{i}": {f"d{i}": 1} for i in range(8)}),
             clustering=D.ClusteringData([" ".join(words[i:i + 4]) for i in range(20)], ["x", "y"] * 10),
             hijack_queries=3, max_copies=2)
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
    assert len(links) == 2 + 5          # two detection figures; attention overview/heads/heatmap, assess, hijack
    assert all(os.path.isfile(os.path.join(tmp_path / "rep", p)) for p in links)
    assert html.count("src='data:image/png;base64,") == len(links)
    assert "src='figures" not in html and "<table>" in html


def test_report_command_and_errors(runs, tmp_path, capsys):
    full, _ = runs
    parser = build_parser()
    args = parser.parse_args(["report", full.run_dir])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert os.path.join(full.run_dir, "report", "report.html") in out
    with pytest.raises(InputError, match="not a finished detection run"):
        report.write_report([str(tmp_path)], str(tmp_path / "x"))


@pytest.mark.slow
def test_real_default_model_end_to_end(tmp_path):
    """A small detection of all-MiniLM-L6-v2, then the three commands as a user runs them."""
    import stickytoken

    run_dir = str(tmp_path / "run")
    result = stickytoken.detect(max_tokens=80, sent_pair_num=2, insert_num=4, verification_sent_pair_num=10,
                                shortlist_percent=10.0, output=run_dir, show_progress_bar=False)
    assert result.candidates
    parser = build_parser()
    for argv in (["attention", run_dir, "--tokens", "2", "--sentences", "6", "--max-copies", "3"],
                 ["assess", run_dir, "--tokens", "2", "--copies", "4", "--queries", "20", "--docs", "80",
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
