"""compare: two finished tiny-model runs side by side (shared / only-A / only-B sticky tokens,
Spearman of the scores, differing parameters), matching by text across vocabularies, the
Markdown / JSON / files output, the --fail-on-new gate and the errors."""
import json
import os
import re
import shutil

import numpy as np
import pytest
from scipy.stats import spearmanr

import stickytoken
from stickytoken.cli import main
from stickytoken.compare import rank_average, spearman
from stickytoken.errors import InputError, RunFolderError
from stickytoken.pairs import builtin_sentences
from stickytoken.results import DetectionResult

PARAMS = dict(sent_pair_num=2, insert_num=3, verification_sent_pair_num=4, shortlist_percent=10.0,
              bootstrap=50, show_progress_bar=False)


def with_sticky(src: str, dst: str, sticky_ids) -> str:
    """A copy of run folder ``src`` whose candidates ``sticky_ids`` (and only those) are sticky.
    (The tiny random model verifies no token as sticky, so the tests mark them.)"""
    shutil.copytree(src, dst)
    r = DetectionResult.load(dst)
    ids = set(int(i) for i in sticky_ids)
    assert ids <= {c.id for c in r.candidates}
    for c in r.candidates:
        c.sticky = c.id in ids
    r.save(dst)
    return dst


def other_vocabulary(src: str, dst: str, rename_id: int, extra: int = 3) -> str:
    """A copy of run folder ``src`` as if run on another vocabulary: ``extra`` new tokens at
    the front, the old ids reversed after them, and token ``rename_id`` given a text no token
    of the original vocabulary has."""
    shutil.copytree(src, dst)
    r = DetectionResult.load(dst)
    V = r.vocab_size
    new = lambda i: extra + (V - 1 - int(i))  # noqa: E731
    rows = [json.loads(line) for line in open(os.path.join(dst, "tokens.jsonl"), encoding="utf-8") if line.strip()]
    out = [{"id": k, "token": f"[NEW{k}]", "text": f"[NEW{k}]", "category": "OK"} for k in range(extra)]
    for row in rows:
        row = dict(row, id=new(row["id"]))
        if row["id"] == new(rename_id):
            row["token"] = row["text"] = "renamed-token"
        out.append(row)
    out.sort(key=lambda row: row["id"])
    with open(os.path.join(dst, "tokens.jsonl"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(json.dumps(row, ensure_ascii=False) for row in out) + "\n")
    for c in r.candidates:
        if c.id == rename_id:
            c.token = c.text = "renamed-token"
        c.id = new(c.id)
    r.scored_ids = np.asarray([new(i) for i in r.scored_ids], dtype=np.int64)
    r.vocab_size = V + extra
    r.save(dst)
    return dst


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """Two real detections of the tiny model (seed 7 on every token; seed 8 on a 100-token
    sample), and copies of them with sticky tokens marked."""
    base = tmp_path_factory.mktemp("cmp")
    corpus = builtin_sentences()[:80]
    a = stickytoken.detect(tiny_model, sentences=corpus, output=str(base / "a"), seed=7, **PARAMS)
    b = stickytoken.detect(tiny_model, sentences=corpus, output=str(base / "b"), seed=8, max_tokens=100, **PARAMS)
    ca = [c.id for c in a.candidates]
    cb = [c.id for c in b.candidates]
    assert len(ca) >= 4 and len(cb) >= 4
    shared = [i for i in ca if i in cb][:1]
    sa = list(dict.fromkeys(ca[:3] + shared))
    sb = list(dict.fromkeys(shared + [i for i in cb if i not in sa][:2]))
    return {
        "a": a.run_dir, "b": b.run_dir,
        "a_sticky": with_sticky(a.run_dir, str(base / "a_sticky"), sa),
        "b_sticky": with_sticky(b.run_dir, str(base / "b_sticky"), sb),
        "a_sub": with_sticky(a.run_dir, str(base / "a_sub"), ca[:2]),
        "a_sup": with_sticky(a.run_dir, str(base / "a_sup"), ca[:3]),
        "base": base,
    }


def test_rank_correlation_matches_scipy(rng):
    x = rng.integers(0, 6, size=60).astype(float)          # many ties
    y = x + rng.normal(0, 2, size=60)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert list(rank_average([3.0, 1.0, 3.0, 2.0])) == [3.5, 1.0, 3.5, 2.0]
    assert spearman([1.0], [2.0]) is None and spearman([1.0, 1.0], [1.0, 2.0]) is None


def test_sets_spearman_and_parameters(runs):
    a, b = DetectionResult.load(runs["a_sticky"]), DetectionResult.load(runs["b_sticky"])
    c = stickytoken.compare(runs["a_sticky"], runs["b_sticky"])
    sa, sb = {t.id for t in a.sticky_tokens}, {t.id for t in b.sticky_tokens}
    assert c.same_vocabulary and c.matched_by == "id"
    assert {t.id_a for t in c.shared} == sa & sb and all(t.id_a == t.id_b for t in c.shared)
    assert {t.id_a for t in c.only_a} == sa - sb
    assert {t.id_b for t in c.only_b} == sb - sa
    assert sb - sa and not c.unmatched_a and not c.unmatched_b
    assert [t.text for t in c.new_in_b] == [t.text for t in c.only_b]
    # what each run says of a token, side by side (both runs bootstrapped, so P(sticky) of candidates)
    by_a = {t.id: t for t in a.candidates}
    by_b = {t.id: t for t in b.candidates}
    for t in c.tokens:
        if t.id_a in by_a:
            assert t.verification_a == by_a[t.id_a].verification and t.confidence_a == by_a[t.id_a].confidence
        if t.id_b in by_b:
            assert t.confidence_b == by_b[t.id_b].confidence
        assert t.sticky_a == (t.id_a in sa) and t.sticky_b == (t.id_b in sb)
    assert c.has_confidence
    # Spearman over the tokens both runs scored (B scored a 100-token sample)
    common = np.intersect1d(a.scored_ids, b.scored_ids)
    assert c.n_common_scored == len(common) == 100
    sa_map = dict(zip(a.scored_ids.tolist(), a.scores[:, 0]))
    sb_map = dict(zip(b.scored_ids.tolist(), b.scores[:, 0]))
    expect = spearmanr([sa_map[i] for i in common], [sb_map[i] for i in common]).statistic
    assert c.spearman == pytest.approx(expect, abs=1e-10)
    # the parameters that differ, and only those
    diff = {n: (x, y) for n, x, y in c.differing_parameters}
    assert diff["seed"] == (7, 8) and diff["max_tokens"] == (None, 100)
    assert "sent_pair_num" not in diff and "model" not in diff
    md = c.summary()
    assert "## Parameters that differ" in md and "| seed | 7 | 8 |" in md and "| max_tokens | None | 100 |" in md
    assert "P(sticky) A" in md and f"{len(c.shared)} shared, {len(c.only_a)} only in A" in md
    assert "Spearman rank correlation" in md and "100 tokens both runs scored" in md
    # DetectionResults work as well as folders
    c2 = stickytoken.compare(a, b)
    assert [t.to_dict() for t in c2.tokens] == [t.to_dict() for t in c.tokens]


def test_same_run_twice_is_all_shared(runs, capsys):
    c = stickytoken.compare(runs["a_sticky"], runs["a_sticky"])
    assert len(c.shared) == len(DetectionResult.load(runs["a_sticky"]).sticky_tokens) > 0
    assert not c.only_a and not c.only_b and not c.differing_parameters
    assert c.spearman == pytest.approx(1.0)
    assert main(["compare", runs["a_sticky"], runs["a_sticky"], "--fail-on-new"]) == 0
    assert "None: the runs have the same parameters." in capsys.readouterr().out


def test_fail_on_new_gate(runs, capsys):
    # B (a_sup) has one sticky token more than A (a_sub): the gate fails
    assert main(["compare", runs["a_sub"], runs["a_sup"]]) == 0
    capsys.readouterr()
    assert main(["compare", runs["a_sub"], runs["a_sup"], "--fail-on-new"]) == 1
    err = capsys.readouterr().err
    assert "B has 1 sticky token(s) A lacks" in err and not err.startswith("error:")
    # the other way round B lacks one of A's, which is no regression
    assert main(["compare", runs["a_sup"], runs["a_sub"], "--fail-on-new"]) == 0
    c = stickytoken.compare(runs["a_sup"], runs["a_sub"])
    assert len(c.only_a) == 1 and len(c.shared) == 2 and not c.new_in_b


def test_json_and_output_files(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", runs["a_sticky"], runs["b_sticky"], "--json", "--output", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    c = stickytoken.compare(runs["a_sticky"], runs["b_sticky"])
    assert data["counts"]["shared"] == len(c.shared) and data["counts"]["only_b"] == len(c.only_b)
    assert data["new_sticky_in_b"] == len(c.new_in_b) and data["matched_by"] == "id"
    assert {d["name"]: (d["a"], d["b"]) for d in data["differing_parameters"]}["seed"] == (7, 8)
    assert data["spearman"]["n"] == 100 and data["spearman"]["rho"] == pytest.approx(c.spearman)
    assert [t["id_b"] for t in data["only_b"]] == [t.id_b for t in c.only_b]
    assert data["run_a"]["run_dir"] == os.path.abspath(runs["a_sticky"])
    for name in ("compare.md", "compare.html", "compare.png"):
        assert os.path.getsize(out / name) > 0
    md = (out / "compare.md").read_text(encoding="utf-8")
    html = (out / "compare.html").read_text(encoding="utf-8")
    assert re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md) == ["compare.png"]
    assert html.count("src='data:image/png;base64,") == 1 and "<table>" in html
    assert "Parameters that differ" in html
    # Markdown on stdout without --json, then the files written
    assert main(["compare", runs["a_sticky"], runs["b_sticky"], "--output", str(tmp_path / "cmp2")]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# Comparison:") and str(tmp_path / "cmp2" / "compare.html") in text


def test_different_vocabularies_match_by_text(runs):
    a = DetectionResult.load(runs["a_sticky"])
    sticky = [t.id for t in a.sticky_tokens]
    renamed = sticky[-1]
    b_dir = other_vocabulary(runs["a_sticky"], str(runs["base"] / "a_other_vocab"), renamed)
    c = stickytoken.compare(runs["a_sticky"], b_dir)
    V = a.vocab_size
    assert not c.same_vocabulary and c.matched_by == "text" and "sizes differ" in c.vocabulary_note
    # every sticky token but the renamed one is found again under its new id
    assert sorted((t.id_a, t.id_b) for t in c.shared) == sorted((i, 3 + V - 1 - i) for i in sticky[:-1])
    assert [t.id_a for t in c.unmatched_a] == [renamed]
    assert [t.text for t in c.unmatched_b] == ["renamed-token"]
    assert not c.only_a and not c.only_b and len(c.new_in_b) == 1
    # the same scores, under other ids: the correlation is 1 over every token matched
    assert c.n_common_scored == len(a.scored_ids) - (renamed in set(a.scored_ids.tolist()))
    assert c.spearman == pytest.approx(1.0)
    md = c.summary()
    assert "Matched by token text" in md and "1 of A's and 1 of B's sticky tokens could not be matched" in md
    assert main(["compare", runs["a_sticky"], b_dir, "--fail-on-new"]) == 1


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def test_errors(runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["compare", runs["a"], str(empty)]) == 2
    assert "is not a detection run folder" in _one_error_line(capsys)
    assert main(["compare", str(tmp_path / "missing"), runs["a"]]) == 2
    assert "does not exist" in _one_error_line(capsys)
    # an unfinished run: run.json says running, no results.json yet
    unfinished = str(tmp_path / "unfinished")
    shutil.copytree(runs["a"], unfinished)
    os.unlink(os.path.join(unfinished, "results.json"))
    run = json.load(open(os.path.join(unfinished, "run.json"), encoding="utf-8"))
    run["status"] = "running"
    json.dump(run, open(os.path.join(unfinished, "run.json"), "w", encoding="utf-8"))
    assert main(["compare", runs["a"], unfinished, "--fail-on-new"]) == 2
    assert "unfinished run" in _one_error_line(capsys)
    with pytest.raises(RunFolderError, match="unfinished"):
        stickytoken.compare(unfinished, runs["a"])
    with pytest.raises(InputError):
        stickytoken.compare(runs["a"], 42)


def test_agreement_counts_each_token_over_the_runs(runs, tmp_path):
    # three runs of one vocabulary: a_sticky (3 or 4 sticky), a_sup (a's first 3), b_sticky (a 100-token sample)
    paths = [runs["a_sticky"], runs["a_sup"], runs["b_sticky"]]
    results = [DetectionResult.load(p) for p in paths]
    ag = stickytoken.agreement(paths)
    sticky = [{t.id for t in r.sticky_tokens} for r in results]
    scored = [set(r.scored_ids.tolist()) for r in results]
    cands = [{c.id for c in r.candidates} for r in results]
    assert {t.id for t in ag.tokens} == set().union(*sticky)        # every token sticky somewhere, once
    for t in ag.tokens:
        assert t.sticky_in == sum(t.id in s for s in sticky)
        assert t.candidate_in == sum(t.id in c for c in cands)
        assert t.scored_in == sum(t.id in s for s in scored)
        want = [("sticky" if t.id in s else "candidate" if t.id in c else "scored" if t.id in sc else "not scored")
                for s, c, sc in zip(sticky, cands, scored)]
        assert t.statuses == want
        confs = [c.confidence for r in results for c in r.candidates if c.id == t.id and c.confidence is not None]
        assert t.mean_confidence == pytest.approx(np.mean(confs))
    shares = [(t.sticky_in / t.scored_in, t.sticky_in) for t in ag.tokens]
    assert shares == sorted(shares, reverse=True)                    # most consistent first
    assert {t.id for t in ag.sticky_in_all} == set.intersection(*sticky)
    assert ag.differing == ["seed", "max_tokens"]
    assert f"{len(ag.tokens)} tokens are sticky in at least one of the 3 runs" in ag.summary()
    assert json.loads(json.dumps(ag.to_json()))["tokens"][0]["statuses"] == ag.tokens[0].statuses
    assert list(ag.to_pandas().columns[-3:]) == ["run1", "run2", "run3"]
    # report across runs shows it; across vocabularies it says why not
    paths_md = stickytoken.write_report(paths, str(tmp_path / "rep"))["markdown"]
    assert "## Sticky tokens across the 3 runs" in open(paths_md, encoding="utf-8").read()
    other = other_vocabulary(runs["b_sticky"], str(tmp_path / "other"), rename_id=results[2].candidates[0].id)
    with pytest.raises(InputError, match="run 2 .* has another vocabulary than run 1: vocabulary sizes differ"):
        stickytoken.agreement([paths[0], other])
    md = open(stickytoken.write_report([paths[0], other], str(tmp_path / "rep2"))["markdown"], encoding="utf-8").read()
    assert "Not shown: run 2" in md
    for bad in (paths[0], [paths[0]]):
        with pytest.raises(InputError, match="two or more"):
            stickytoken.agreement(bad)
    with pytest.raises(InputError, match=r"run 3 is run 1 again .*give each run once"):
        stickytoken.agreement([paths[0], paths[1], paths[0] + os.sep])   # (the same folder, spelled otherwise)
    with pytest.raises(InputError, match="run 2 is run 1 again"):
        stickytoken.agreement([results[0], results[0]])


def test_agreement_command(runs, tmp_path, capsys):
    paths = [runs["a_sticky"], runs["a_sup"], runs["b_sticky"]]
    ag = stickytoken.agreement(paths)
    assert main(["agreement", *paths]) == 0
    assert "## Sticky tokens across the 3 runs" in capsys.readouterr().out
    out = tmp_path / "ag"
    assert main(["agreement", *paths, "--json", "-o", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [t["id"] for t in printed["tokens"]] == [t.id for t in ag.tokens]
    assert json.loads((out / "agreement.json").read_text()) == {k: v for k, v in printed.items() if k != "files"}
    assert (out / "agreement.csv").read_text().count("\n") == len(ag.tokens) + 1
    # the gate: a token sticky in K runs or more fails it
    top = ag.tokens[0].sticky_in
    assert main(["agreement", *paths, "--fail-if-sticky-in", str(top)]) == 1
    assert f"sticky in {top} or more of the 3 runs: {ag.tokens[0].text!r}" in capsys.readouterr().err
    if top < 3:
        assert main(["agreement", *paths, "--fail-if-sticky-in", str(top + 1)]) == 0
    for argv, msg in ((["agreement", paths[0]], "two or more runs"),
                      (["agreement", *paths, "--fail-if-sticky-in", "4"], "between 1 and 3, got 4")):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and msg in err[0], err


def with_fence(src: str, dst: str, quantile: float) -> str:
    """A copy of run folder ``src`` whose fence is the ``quantile`` of its candidates'
    verification values, with sticky meaning a value above it, as detect decides. (The tiny
    random model's own fence leaves no token sticky.)"""
    shutil.copytree(src, dst)
    r = DetectionResult.load(dst)
    r.fence = float(np.quantile([c.verification for c in r.candidates], quantile))
    for c in r.candidates:
        c.sticky = c.verification > r.fence
    r.save(dst)
    return dst


def test_agreement_keeps_each_runs_check_under_the_runs_name(tmp_path):
    """check-<run folder's name>, whatever the runs' order; -2 after a name two runs share; a
    folder of the earlier naming by position (check-runK) is used where it alone is there."""
    from stickytoken.agreement import check_folders

    out = str(tmp_path)
    runs = ["/x/seed 42/", "/y/seed43", "/z/seed 42"]
    assert check_folders(out, runs) == [os.path.join(out, n) for n in ("check-seed-42", "check-seed43",
                                                                        "check-seed-42-2")]
    assert check_folders(out, runs[1::-1]) == [os.path.join(out, n) for n in ("check-seed43", "check-seed-42")]
    os.mkdir(os.path.join(out, "check-run2"))
    assert check_folders(out, runs[:2])[1] == os.path.join(out, "check-run2")
    os.mkdir(os.path.join(out, "check-seed43"))
    assert check_folders(out, runs[:2])[1] == os.path.join(out, "check-seed43")


def test_agreement_check_verifies_every_token_against_every_run(demo_run, tmp_path, capsys):
    """Two small runs of the real default model on one token sample (seeds 42 and 43; fences
    moved so that several tokens are sticky), every token sticky in either verified against
    both runs: as ``check`` gives it, or as the run verified it."""
    from conftest import DEMO_DETECT

    other = stickytoken.detect(**DEMO_DETECT, seed=43, sample_seed=42, output=str(tmp_path / "run43"),
                               show_progress_bar=False)
    a = with_fence(demo_run, str(tmp_path / "a"), 0.3)
    b = with_fence(other.run_dir, str(tmp_path / "b"), 0.3)
    results = [DetectionResult.load(p) for p in (a, b)]
    out = tmp_path / "checks"
    ag = stickytoken.agreement([a, b], check=True, check_output=str(out))
    assert ag.checked and {t.id for t in ag.tokens} == {c.id for r in results for c in r.sticky_tokens}
    cands = [{c.id: c for c in r.candidates} for r in results]
    todo = [[t.id for t in ag.tokens if t.id not in c] for c in cands]
    assert any(todo)            # some token sticky in one run was not verified by the other
    for k, (r, cand) in enumerate(zip(results, cands)):
        direct = {c.id: c for c in stickytoken.check(ids=todo[k], run=r).tokens} if todo[k] else {}
        for t in ag.tokens:
            want = cand[t.id].verification if t.id in cand else direct[t.id].verification
            assert t.verifications[k] == pytest.approx(want, abs=1e-12)
            assert t.clears[k] == (want > r.fence)
            if t.id in direct:
                assert t.confidences[k] == direct[t.id].confidence
        assert (out / f"check-{os.path.basename(r.run_dir)}").is_dir() == bool(todo[k])
    for t in ag.tokens:
        assert t.clears_in == sum(t.clears)
        assert t.checked_confidence == pytest.approx(np.mean([p for p in t.confidences if p is not None]))
        assert t.clears[:1] == [t.statuses[0] == "sticky"] or t.statuses[0] != "sticky"
    assert [t.clears_in for t in ag.tokens] == sorted((t.clears_in for t in ag.tokens), reverse=True)
    both = {t.id for t in ag.tokens if all(t.clears)}
    assert {t.id for t in ag.clearing_at_least(2)} == both
    assert f"Verified against every run, {len(both)} clear both fences" in ag.summary()
    assert "clears" in ag.summary() and "run2_verification" in ag.to_pandas().columns
    again = stickytoken.agreement([a, b], check=True, check_output=str(out))   # read back from check-<run>
    assert [t.verifications for t in again.tokens] == [t.verifications for t in ag.tokens]
    before = sorted(os.listdir(out))
    swapped = stickytoken.agreement([b, a], check=True, check_output=str(out))   # the same folders, in any order
    assert sorted(os.listdir(out)) == before
    assert {t.id: t.verifications[::-1] for t in swapped.tokens} == {t.id: t.verifications for t in ag.tokens}
    with pytest.raises(InputError, match="only when every token was checked"):
        stickytoken.agreement([a, b]).clearing_at_least(1)
    # a run copied without its parts: P(sticky) comes from the outcomes kept beside results.json; without
    # those too, the values stand, P(sticky) cannot be had, and the check's note says why
    no_parts = shutil.copytree(b, str(tmp_path / "b-no-parts"), ignore=shutil.ignore_patterns("parts"))
    kept = stickytoken.agreement([a, no_parts], check=True)
    assert [(t.verifications, t.confidences) for t in kept.tokens] == [(t.verifications, t.confidences)
                                                                        for t in ag.tokens]
    assert all(t.confidences[1] is not None for t in kept.tokens)
    trimmed = shutil.copytree(b, str(tmp_path / "b-trimmed"),
                              ignore=shutil.ignore_patterns("parts", "verification_outcomes.npz"))
    cut = stickytoken.agreement([a, trimmed], check=True)
    assert not os.path.exists(os.path.join(trimmed, "parts"))   # checking against a run writes nothing into it
    assert [t.verifications for t in cut.tokens] == [t.verifications for t in ag.tokens]
    assert all(t.confidences[1] is None for t in cut.tokens if t.id in todo[1])
    assert any(n.startswith("check against run 2: the run's verification parts are missing") for n in cut.notes)

    # the command: --check with its gate
    top = ag.tokens[0].clears_in
    assert main(["agreement", a, b, "--check", "--quiet", "-o", str(out), "--fail-if-clears", str(top)]) == 1
    captured = capsys.readouterr()
    assert "clear the fence of" in captured.err and "Verified against every run" in captured.out
    assert json.loads((out / "agreement.json").read_text())["checked"] is True
    for argv, msg in (([a, b, "--fail-if-clears", "1"], "--fail-if-clears needs --check"),
                      ([a, b, "--device", "cpu"], "--device is for --check"),
                      ([a, b, "--check", "--fail-if-clears", "3"], "between 1 and 2, got 3")):
        capsys.readouterr()
        assert main(["agreement", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and msg in err[0], err
