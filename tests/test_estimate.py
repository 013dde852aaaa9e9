"""``detect --estimate`` (stickytoken/estimate.py): its sequence counts equal what a real run
encodes, it writes nothing, and the command prints a table or refuses bad flags the usual way."""
import json
import os

import numpy as np
import pytest

import stickytoken
from stickytoken import cli, estimate as est_mod
from stickytoken.errors import InputError, RunFolderError
from stickytoken.estimate import estimate, shortlist_count
from stickytoken.pairs import builtin_sentences
from stickytoken.runfolder import RunFolder
from stickytoken.score import shortlist

BASE = dict(sent_pair_num=2, insert_num=3, verification_sent_pair_num=2, shortlist_percent=10.0, seed=7)
CASES = {
    "text-audit": dict(audit=5),
    "token-draws": dict(insertion="token", insert_draws=2, max_tokens=40, shortlist_percent=20.0),
    "fast": dict(fast=True, max_tokens=60),
    # on the tiny model only 2 pool pairs lie below the mean similarity: the run uses those 2 (the
    # estimate previews the pairs against the same mean, exact for a vocabulary this small)
    "short-pairs": dict(verification_sent_pair_num=4, audit=3),
}


@pytest.fixture(autouse=True)
def quick_calibration(monkeypatch):
    monkeypatch.setattr(est_mod, "CALIBRATION_SECONDS", 0.05)


@pytest.fixture(scope="module")
def corpus():
    return builtin_sentences()[:80]


def test_shortlist_count_is_the_shortlists_size(rng):
    for _ in range(300):
        n = int(rng.integers(1, 3000))
        percent = float(rng.choice([0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 20.0, 33.3, 50.0, 100.0, rng.uniform(0.01, 100)]))
        scores = np.round(rng.normal(30, 10, n), 6)
        while len(np.unique(scores)) < n:     # the count is exact when no scores tie
            scores = np.round(rng.normal(30, 10, n), 6)
        cand, _ = shortlist(np.arange(n, dtype=np.int64), scores, percent)
        assert shortlist_count(n, percent) == len(cand), (n, percent)
    assert shortlist_count(23699, 2.0) == 474    # the paper's 474 candidates


def test_predicted_sequences_count_pairs_sharing_a_contrast(tiny_model, tmp_path):
    """Pairs that repeat a contrast share its prefix and suffix rows (score.VariantSequences):
    the estimate counts the rows the run embeds, no more."""
    s = builtin_sentences()
    pairs = [(s[2 * i], s[1] if i % 3 == 0 else s[2 * i + 1], 0.01 * i) for i in range(16)]
    kw = {**BASE, "verification_sent_pair_num": 8, "pairs": pairs}
    out = tmp_path / "r"
    e = estimate(tiny_model, output=str(out), **kw)
    stickytoken.detect(tiny_model, output=str(out), show_progress_bar=False, **kw)
    run = json.loads((out / "run.json").read_text())
    chosen = json.loads((out / "pairs.json").read_text())
    contrasts = [p["contrast"] for p in chosen["verification"]]
    assert len(set(contrasts)) < len(contrasts)        # some verification pairs share a contrast
    assert any("are another pair's" in s.detail for s in e.stages)
    assert e.total_sequences == run["sequences_encoded_this_session"]
    _stage_sequences_match(e, run)


def _stage_sequences_match(e, run):
    """run.json's profile counts the sequences each variant stage embedded: the estimate's."""
    counted = {k: v["sequences"] for k, v in run["profile"].items() if isinstance(v, dict) and "sequences" in v}
    assert {"scoring", "verification"} <= set(counted)
    assert counted == {k: e.stage(k).sequences for k in counted}


@pytest.mark.parametrize("case", sorted(CASES))
def test_predicted_sequences_equal_a_real_runs(tiny_model, corpus, tmp_path, case):
    kw = {**BASE, **CASES[case]}
    out = tmp_path / "r"
    e = estimate(tiny_model, sentences=corpus, output=str(out), **kw)
    assert not out.exists(), "the estimate wrote a folder"
    result = stickytoken.detect(tiny_model, sentences=corpus, output=str(out), show_progress_bar=False, **kw)
    run = json.loads((out / "run.json").read_text())
    pairs = json.loads((out / "pairs.json").read_text())
    assert (e.scoring_pairs, e.verification_pairs) == (len(pairs["scoring"]), len(pairs["verification"]))
    if case == "short-pairs":
        assert pairs["short_verification"] and any("only about 2 pairs" in n for n in e.notes)
    assert e.candidates == len(result.candidates)
    assert e.tested == len(result.scored_ids) or kw.get("fast")
    if kw.get("audit"):
        assert e.audited == result.audit["audited"]
    if kw.get("fast"):   # the tiny run is under fast mode's pilot minimums: it does all the work it could
        assert all(s.lower_sequences == s.sequences for s in e.stages if s.lower_sequences is not None)
    assert e.total_sequences == run["sequences_encoded_this_session"]
    if not kw.get("fast"):
        _stage_sequences_match(e, run)
    for s in e.stages:
        assert s.seconds >= 0 and (s.rate is None or s.rate > 0)
        assert s.rank_sequences == s.sequences and s.rank_seconds == pytest.approx(s.seconds)
    assert {s.stage for s in e.stages} - {"load"} <= set(run["timings"])


def test_per_rank_split_by_chunk(tiny_model, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("STICKYTOKEN_CHUNK_ROWS", "200")    # several chunks on the tiny vocabulary
    e1 = estimate(tiny_model, sentences=corpus, **BASE)
    e3 = estimate(tiny_model, sentences=corpus, world_size=3, **BASE)
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert estimate(tiny_model, sentences=corpus, **BASE).world_size == 3
    assert e1.world_size == 1 and e3.world_size == 3
    per = 200 // (2 * 3 * 3)                     # tokens a chunk: rows // (P (2 + R) K)
    T = e3.tested
    sizes = [min(per, T - c * per) for c in range(-(-T // per))]
    busiest = max(sum(sizes[r::3]) for r in range(3))
    scoring = e3.stage("scoring")
    assert scoring.sequences == e1.stage("scoring").sequences
    assert scoring.rank_sequences == 2 * 2 + busiest * (2 * 3 * 3 + 1) < scoring.sequences
    for name in ("mean_similarity", "pairs"):    # every rank does these whole
        assert e3.stage(name).rank_sequences == e3.stage(name).sequences
    assert e3.rank_seconds < e3.total_seconds
    table = e3.table()
    assert "sequences per rank (W=3)" in table and "time per rank" in table
    with pytest.raises(InputError, match="fast mode runs in one process"):
        estimate(tiny_model, sentences=corpus, fast=True, **BASE)
    with pytest.raises(InputError, match="world_size"):
        estimate(tiny_model, sentences=corpus, world_size=0, **BASE)


def test_api_checks_arguments_like_detect(tiny_model, corpus):
    with pytest.raises(TypeError):
        estimate(tiny_model, sentences=corpus, no_such_argument=1)
    with pytest.raises(InputError, match="insert_num"):
        estimate(tiny_model, sentences=corpus, insert_num=0)


def _write_corpus(tmp_path, corpus):
    f = tmp_path / "s.txt"
    f.write_text("\n".join(corpus) + "\n")
    return str(f)


def test_cli_prints_a_table_and_writes_nothing(tiny_path, corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sents = _write_corpus(tmp_path, corpus)
    args = ["detect", "--estimate", "--quiet", "--model", tiny_path, "--sentences", sents, "--device", "cpu",
            "--sent-pair-num", "2", "--insert-num", "3", "--verification-sent-pair-num", "2", "--max-tokens", "30"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "| stage | sequences | rate (seq/s) | predicted time |" in out
    for row in ("| mean similarity", "| pair pool", "| scoring", "| verification", "| **total**"):
        assert row in out
    assert "Nothing was written" in out
    assert sorted(os.listdir(tmp_path)) == ["s.txt"]        # no stickytoken_runs/ or any folder
    assert cli.main(args + ["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tested"] == 30 and data["total_sequences"] == sum(
        s["sequences"] for s in data["stages"] if s["rate"] is not None)
    assert sorted(os.listdir(tmp_path)) == ["s.txt"]


@pytest.mark.parametrize("flags, expect", [
    (["--insert-num", "0"], "insert_num"),                    # checked by the package: InputError
    (["--shortlist-percent", "0"], "shortlist_percent"),
    (["--sent-pair-num", "100000"], "largest possible value"),
    (["--insert-num", "x"], "invalid int value"),             # refused by argparse
])
def test_cli_bad_flags_error_the_usual_way(tiny_path, tmp_path, monkeypatch, capsys, flags, expect):
    monkeypatch.chdir(tmp_path)

    def boom(*a, **k):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr("stickytoken.models.load_model", boom)
    try:
        code = cli.main(["detect", "--estimate", "--model", tiny_path, *flags])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and expect in err[0]
    assert os.listdir(tmp_path) == []


def test_without_a_pair_preview_random_corpus_pairs_stand_in(tiny_model, corpus, monkeypatch):
    monkeypatch.setattr(est_mod, "PREVIEW_POOL", 0)    # as for a pool too large to preview
    e = estimate(tiny_model, sentences=corpus, **BASE)
    assert (e.scoring_pairs, e.verification_pairs) == (BASE["sent_pair_num"], BASE["verification_sent_pair_num"])
    assert list(e.calibration["rows"]) == ["random"] and any("random corpus pairs" in n for n in e.notes)
    assert e.total_seconds > 0 and "| **total** |" in e.table()


def test_an_estimate_for_a_compiled_run_says_it_timed_the_plain_model(tiny_model, corpus):
    plain = estimate(tiny_model, sentences=corpus, **BASE)
    compiled = estimate(tiny_model, sentences=corpus, compile=True, **BASE)
    assert not any("--compile" in n for n in plain.notes)
    assert any(n.startswith("timed uncompiled: --compile adds") for n in compiled.notes)
    assert "timed uncompiled" in compiled.table()


def test_workers_overlap_the_row_building_with_the_model(tiny_model, corpus):
    """With row-building workers a chunk takes the longer of the model's time and the workers'
    share of building its rows, plus the rest of the time outside the model."""
    from stickytoken.estimate import variant_stage_seconds

    class Cost:   # a fixed model time per row, to check the arithmetic
        def seconds(self, encoder, lengths):
            return 1e-3 * len(lengths)

    rng = np.random.default_rng(0)
    lengths = np.full(10, 12)
    args = (Cost(), None, 10, 2, 3, 1, 10, lengths, lengths, lengths)
    rows = 10 * 2 * 3 * 3
    model = 1e-3 * (rows + 10)
    plain, _ = variant_stage_seconds(*args, 5e-3, 1, rng, build_per_row=4e-3)
    assert plain == pytest.approx(model + 5e-3 * rows + 1e-3 * 4)
    two, _ = variant_stage_seconds(*args, 5e-3, 1, rng, build_per_row=4e-3, workers=2)
    assert two == pytest.approx(max(model, 4e-3 * rows / 2) + 1e-3 * rows + 1e-3 * 4)
    many, _ = variant_stage_seconds(*args, 5e-3, 1, rng, build_per_row=4e-3, workers=100)
    assert many == pytest.approx(model + 1e-3 * rows + 1e-3 * 4)   # the model is the bound
    e = estimate(tiny_model, sentences=corpus, workers=2, **BASE)
    assert e.workers == 2 and "spread over 2 workers" in e.table()
    assert e.calibration["build_per_row"] > 0
    assert "in this process" in estimate(tiny_model, sentences=corpus, **BASE).table()


def _interrupt(out, keep_scoring: int) -> None:
    """Makes a finished run folder look interrupted during scoring: results gone, status
    running, the scoring parts from ``keep_scoring`` on and every verification part removed."""
    (out / "results.json").unlink()
    run = json.loads((out / "run.json").read_text())
    run["status"] = "running"
    (out / "run.json").write_text(json.dumps(run))
    parts = out / "parts"
    for f in parts.iterdir():
        stage, index = f.stem.rsplit("-", 1)
        if stage == "verify" or (stage == "score" and int(index) >= keep_scoring):
            f.unlink()


def test_an_estimate_on_a_run_folder_counts_the_work_left(tiny_model, corpus, tmp_path, monkeypatch):
    """On a folder that holds the run, the estimate is of what detect would do there: nothing
    for a finished run, only the missing parts for an interrupted one (the resumed run encodes
    exactly that many sequences), and a folder detect would refuse is refused the same way."""
    monkeypatch.setenv("STICKYTOKEN_CHUNK_ROWS", "200")    # several parts on the tiny vocabulary
    out = tmp_path / "r"
    kw = dict(BASE, sentences=corpus, output=str(out))
    whole = estimate(tiny_model, **kw)
    assert any(f"would be written to {out}" in n for n in whole.notes)
    stickytoken.detect(tiny_model, show_progress_bar=False, **kw)

    finished = estimate(tiny_model, **kw)
    assert finished.total_sequences == 0 and all(s.seconds == 0 for s in finished.stages if s.rate is not None)
    assert any("holds this run, finished" in n for n in finished.notes)

    n_score = len(list((out / "parts").glob("score-*.npz")))
    assert n_score >= 4
    _interrupt(out, keep_scoring=3)
    partial = estimate(tiny_model, **kw)
    assert partial.stage("mean_similarity").sequences == partial.stage("pairs").sequences == 0
    scoring = partial.stage("scoring")
    assert 0 < scoring.sequences < whole.stage("scoring").sequences
    assert f"3 of {n_score} parts done" in scoring.detail
    assert partial.stage("verification").sequences == whole.stage("verification").sequences
    assert any("unfinished: detect resumes it" in n and f"scoring 3 of {n_score} parts" in n for n in partial.notes)
    holder = RunFolder.existing(str(out))
    holder.claim()          # another process on the run: detect would be refused, and the estimate says so
    try:
        assert any(f"in use by another process (pid {os.getpid()})" in n
                   for n in estimate(tiny_model, **kw).notes)
    finally:
        holder.release()
    assert not any("in use" in n for n in partial.notes)
    stickytoken.detect(tiny_model, show_progress_bar=False, **kw)
    run = json.loads((out / "run.json").read_text())
    assert run["sequences_encoded_this_session"] == partial.total_sequences
    assert run["profile"]["scoring"]["sequences"] == scoring.sequences

    with pytest.raises(RunFolderError, match="holds a run with other parameters"):
        estimate(tiny_model, **{**kw, "seed": 8})
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="holds no stickytoken run"):
        estimate(tiny_model, **{**kw, "output": str(mine)})
    assert sorted(os.listdir(mine)) == ["notes.txt"]
