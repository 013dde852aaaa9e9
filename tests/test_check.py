"""``check``: the detector's values for named tokens, the same as ``detect`` gives them, judged
against a run's fence; the CLI's table, JSON, folder and exit codes."""
import json
import os

import numpy as np
import pytest

import stickytoken
from stickytoken import cli
from stickytoken.check import LABELS, resolve_tokens
from stickytoken.errors import InputError
from stickytoken.pairs import builtin_sentences

PARAMS = dict(sent_pair_num=2, insert_num=3, verification_sent_pair_num=16, shortlist_percent=10.0, seed=7)


def _pairs():
    s = builtin_sentences()[:80]
    return [(s[2 * i], s[2 * i + 1], 0.02 * i) for i in range(40)]


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("chk") / "run"
    stickytoken.detect(tiny_model, pairs=_pairs(), output=str(out), show_progress_bar=False, **PARAMS)
    return str(out)


@pytest.fixture(scope="module")
def run_result(run_dir):
    return stickytoken.DetectionResult.load(run_dir)


def test_check_gives_exactly_detects_values(tiny_model, run_dir, run_result, tmp_path):
    cands = run_result.candidates
    assert len(cands) >= 4 and run_result.has_confidence
    picked = [cands[0], cands[len(cands) // 2], cands[-1]]
    # recompute: the scores and verification computed again, bit for bit the run's values (by default
    # they are read from the run: the same values, and for candidates no model work at all)
    res = stickytoken.check(tiny_model, ids=[c.id for c in picked], run=run_dir, show_progress_bar=False,
                            recompute=True)
    read = stickytoken.check(tiny_model, ids=[c.id for c in picked], run=run_dir, show_progress_bar=False,
                             output=str(tmp_path / "read"))
    assert [t.__dict__ for t in read.tokens] == [t.__dict__ for t in res.tokens]
    assert not list((tmp_path / "read" / "parts").iterdir())
    assert res.fence == run_result.fence
    for c, t in zip(picked, res.tokens):
        assert t.id == c.id and t.token == c.token
        assert (t.score, t.score_euclidean, t.score_manhattan) == (c.score, c.score_euclidean, c.score_manhattan)
        assert (t.verification, t.verification_euclidean, t.verification_manhattan) == \
            (c.verification, c.verification_euclidean, c.verification_manhattan)
        assert t.label == c.label and t.max_prob == c.max_prob
        assert t.clears_fence == c.sticky == t.run_sticky
        assert t.confidence == c.confidence          # the run's own bootstrap resamples
        assert t.shortlisted


def test_a_token_outside_the_shortlist_is_scored_as_detect_scored_it(tiny_model, run_dir, run_result, tmp_path):
    cand = {c.id for c in run_result.candidates}
    other = next(int(i) for i in run_result.scored_ids if int(i) not in cand)
    res = stickytoken.check(tiny_model, ids=[other], run=run_dir, show_progress_bar=False, recompute=True,
                            output=str(tmp_path / "recomputed"))
    k = int(np.flatnonzero(run_result.scored_ids == other)[0])
    assert res.tokens[0].score == run_result.scores[k, 0]
    read = stickytoken.check(tiny_model, ids=[other], run=run_dir, show_progress_bar=False,
                             output=str(tmp_path / "read"))
    assert read.tokens[0].__dict__ == res.tokens[0].__dict__
    # read, the score costs no model work: no scoring part at all (recomputed, the token's chunk)
    assert not list((tmp_path / "read" / "parts").glob("score*"))
    assert list((tmp_path / "recomputed" / "parts").glob("score-0*"))
    assert res.tokens[0].shortlisted is False and res.tokens[0].run_sticky is None
    assert 0.0 <= res.tokens[0].confidence <= 1.0


def test_tokens_by_name_and_refusals(tiny_model, run_dir):
    from stickytoken.vocab import build_vocabulary

    vocab = build_vocabulary(tiny_model.tokenizer)
    assert resolve_tokens(vocab, tiny_model.tokenizer, ["zorp", "[SEP]", "##ing"]) == \
        [vocab.tokens.index("zorp"), vocab.tokens.index("[SEP]"), vocab.tokens.index("##ing")]
    with pytest.raises(InputError, match=r"'zorpquib' \(it tokenizes as 'zorp' '##q'"):
        resolve_tokens(vocab, tiny_model.tokenizer, ["zorpquib"])
    with pytest.raises(InputError, match="not in the vocabulary"):
        resolve_tokens(vocab, tiny_model.tokenizer, None, [10**6])
    for bad in ("5", 5.0):   # (a string id was reported as "not in the vocabulary")
        with pytest.raises(InputError, match=r"token ids must be whole numbers, got "):
            resolve_tokens(vocab, tiny_model.tokenizer, None, [bad])
    with pytest.raises(InputError, match="no tokens to check"):
        stickytoken.check(tiny_model, [], run=run_dir)
    with pytest.raises(InputError, match="these differ: seed=6"):
        stickytoken.check(tiny_model, ["zorp"], run=run_dir, seed=6)
    with pytest.raises(InputError, match="the run folder .*nothing-here' does not exist"):
        stickytoken.check(tiny_model, ["zorp"], run=os.path.dirname(run_dir) + "/nothing-here")


def test_a_run_of_another_model_is_refused(tiny_dir, run_dir, tmp_path):
    from tinymodel import build_tiny_model

    other = build_tiny_model(str(tmp_path / "other"), seed=3, hidden=48)
    with pytest.raises(InputError, match="is of model"):
        stickytoken.check(str(tmp_path / "other" / "st"), ["zorp"], run=run_dir, show_progress_bar=False)
    del other

    # the run's own model under another name (moved, or a hub name and its folder) is taken as the run's,
    # with a note, when it embeds the run's pairs as the run recorded them (it was refused by name)
    import shutil

    own = str(tmp_path / "own")   # a run whose pool similarities are the model's own
    stickytoken.detect(os.path.join(tiny_dir, "st"), sentences=builtin_sentences()[:80], output=own,
                       show_progress_bar=False, **PARAMS)
    moved = os.path.join(shutil.copytree(tiny_dir, str(tmp_path / "moved")), "st")
    res = stickytoken.check(moved, ["zorp"], run=own, show_progress_bar=False)
    assert res.notes[0].startswith("the run was made with ") and "is taken as that model: it embeds 16" in res.notes[0]
    assert res.tokens == stickytoken.check(os.path.join(tiny_dir, "st"), ["zorp"], run=own,
                                           show_progress_bar=False).tokens
    build_tiny_model(str(tmp_path / "same-shape"), seed=5)        # same vocabulary and shape, other weights
    with pytest.raises(InputError, match=r"is of model .* \(it embeds 16 of the run's pairs up to .* away"):
        stickytoken.check(str(tmp_path / "same-shape" / "st"), ["zorp"], run=own, show_progress_bar=False)
    # pairs given with their similarities cannot tell a model: refused by name, saying why
    with pytest.raises(InputError, match=r"came with their similarities, so they cannot tell the models apart"):
        stickytoken.check(moved, ["zorp"], run=run_dir, show_progress_bar=False)


def test_check_without_a_run_uses_the_labels(tiny_model, tmp_path):
    res = stickytoken.check(tiny_model, ["zorp", "cat"], pairs=_pairs(), show_progress_bar=False,
                            output=str(tmp_path / "c"), **{k: v for k, v in PARAMS.items() if k != "shortlist_percent"})
    assert res.fence is None and all(t.clears_fence is None for t in res.tokens)
    assert all(t.label in LABELS for t in res.tokens)
    assert {"check.json", "check.csv", "summary.md", "run.json"} <= set(os.listdir(tmp_path / "c"))
    assert json.loads((tmp_path / "c" / "run.json").read_text())["status"] == "complete"
    again = stickytoken.check(tiny_model, ["zorp", "cat"], pairs=_pairs(), show_progress_bar=False,
                              output=str(tmp_path / "c"), **{k: v for k, v in PARAMS.items() if k != "shortlist_percent"})
    assert again.tokens == res.tokens   # read back from its parts
    # the stages' seconds are the folder's compute time (run.json's), not the rerun's reading back
    stages = ("mean_similarity", "pairs", "scoring", "verification")
    assert [again.timings[k] for k in stages] == [res.timings[k] for k in stages]
    assert json.loads((tmp_path / "c" / "check.json").read_text())["timings"] == again.timings
    # a check folder given where a detection run is wanted says what it is (it said "results.json is missing")
    with pytest.raises(InputError, match=r"is a `check` folder \(the values of named tokens\), not a detection run"):
        stickytoken.DetectionResult.load(str(tmp_path / "c"))
    with pytest.raises(InputError, match="needs a run"):
        res.gate(fail_if_sticky=True)
    assert res.gate(fail_at="strong_rejected") == res.tokens


def _cli(capsys, *argv):
    code = cli.main(["check", "--quiet", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_table_json_and_gates(tiny_path, run_dir, run_result, capsys, tmp_path):
    # the run's model is the tiny model's folder, so --run alone names the model
    sticky = [c for c in run_result.candidates if c.sticky]
    plain = [c for c in run_result.candidates if not c.sticky]
    assert sticky and plain, "the tiny run should have both sticky and non-sticky candidates"
    code, out, _ = _cli(capsys, "--run", run_dir, "--ids", str(plain[0].id))
    assert code == 0 and "clears fence" in out and plain[0].token in out
    code, out, _ = _cli(capsys, "--run", run_dir, "--ids", f"{plain[0].id},{sticky[0].id}", "--fail-if-sticky")
    assert code == 1 and "gate: 1 token(s) fail" in out
    code, out, _ = _cli(capsys, "--run", run_dir, "--ids", str(plain[0].id), "--fail-if-sticky", "--json")
    data = json.loads(out)
    assert code == 0 and data["failing"] == [] and data["tokens"][0]["verification"] == plain[0].verification
    tokens_file = tmp_path / "tokens.txt"
    tokens_file.write_bytes(b"\xef\xbb\xbf" + f"{sticky[0].token}\r\n".encode())   # as Notepad saves it
    code, out, _ = _cli(capsys, "--run", run_dir, "--tokens-file", str(tokens_file), "--fail-at", "strong_rejected",
                        "--output", str(tmp_path / "out"))
    assert code == 1 and os.path.isfile(tmp_path / "out" / "check.json")


@pytest.mark.parametrize("argv,msg", [
    ([], "no tokens to check"),
    (["--tokens", "zorpquib"], "not one vocabulary token"),
    (["--ids", "x"], "--ids takes"),
    (["--tokens", "zorp", "--fail-if-sticky"], "needs --run"),
    (["--tokens", "zorp", "--recompute"], "recompute computes again the values a run recorded; give the run"),
    (["--tokens", "zorp", "--seed", "9"], "these differ"),
    (["--tokens", "zorp", "--tokens-file", "/no/such/file"], "tokens file '/no/such/file' does not exist"),
])
def test_cli_errors_are_one_line_exit_2(capsys, run_dir, argv, msg):
    without_run = "--fail-if-sticky" in argv or "--recompute" in argv
    code, out, err = _cli(capsys, *([] if without_run else ["--run", run_dir]), *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0], err


def test_cli_refuses_a_folder_that_is_not_a_run(capsys, tmp_path):
    code, _, err = _cli(capsys, "--run", str(tmp_path), "--tokens", "zorp")
    assert code == 2 and "is not a detection run folder (no results.json)" in err


def test_a_run_copied_without_its_pairs_is_checked_with_them_drawn_again(thin_path, tmp_path):
    """A run on the built-in corpus kept without mean_similarity.json and pairs.json (as a trimmed
    copy): check computes both again as detect did, holds them to what the run recorded, and
    gives the values a complete copy gives; where they are not what the run recorded, it refuses
    and keeps nothing of them."""
    import shutil

    run = tmp_path / "run"
    stickytoken.detect(thin_path, output=str(run), show_progress_bar=False, sent_pair_num=2, insert_num=3,
                       verification_sent_pair_num=6, max_tokens=40, seed=3, shortlist_percent=10.0)
    result = stickytoken.DetectionResult.load(str(run))
    ids = [result.candidates[0].id, next(int(i) for i in result.scored_ids
                                         if int(i) not in {c.id for c in result.candidates})]
    caches = ("mean_similarity.json", "pairs.json")
    trimmed = shutil.copytree(run, tmp_path / "trimmed", ignore=shutil.ignore_patterns(*caches))
    whole = stickytoken.check(thin_path, ids=ids, run=str(run), show_progress_bar=False)
    again = stickytoken.check(thin_path, ids=ids, run=trimmed, show_progress_bar=False, output=str(tmp_path / "c"))
    assert [t.__dict__ for t in again.tokens] == [t.__dict__ for t in whole.tokens]
    assert "computed again here, they match what the run recorded" in again.notes[0]
    for name in caches:    # the check folder holds them as the run did
        assert (tmp_path / "c" / name).read_bytes() == (run / name).read_bytes(), name

    other = shutil.copytree(run, tmp_path / "other", ignore=shutil.ignore_patterns(*caches))
    data = json.loads((other / "results.json").read_text())
    data["verification_pairs"][0]["contrast"] = "a sentence the run never used"
    (other / "results.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="not what the run recorded"):
        stickytoken.check(thin_path, ids=ids, run=str(other), show_progress_bar=False, output=str(tmp_path / "d"))
    assert not any((tmp_path / "d" / name).exists() for name in caches)


def test_a_run_made_before_its_outcomes_were_kept_gives_p_sticky_from_its_parts(tiny_model, run_dir, run_result,
                                                                               tmp_path):
    """Without verification_outcomes.npz (runs made before it was kept), P(sticky) comes from the
    verification parts, the same as from the file."""
    import shutil

    older = shutil.copytree(run_dir, tmp_path / "older", ignore=shutil.ignore_patterns("verification_outcomes.npz"))
    other = next(int(i) for i in run_result.scored_ids if int(i) not in {c.id for c in run_result.candidates})
    from_file = stickytoken.check(tiny_model, ids=[other], run=run_dir, show_progress_bar=False)
    from_parts = stickytoken.check(tiny_model, ids=[other], run=str(older), show_progress_bar=False)
    assert from_file.tokens[0].confidence is not None
    assert from_parts.tokens[0].confidence == from_file.tokens[0].confidence
