"""Issue 14, a new user's first hour: each test here failed before its fix.

No side effects on the caller's model, no silent failures on bad input, run folders others
can read and that stay as they are once finished, and output that says what it used."""
import copy
import json
import logging
import os
import stat

import numpy as np
import pytest
import torch

import stickytoken
from stickytoken import cli
from stickytoken.errors import InputError
from stickytoken.pairs import builtin_sentences

PARAMS = dict(sent_pair_num=2, insert_num=3, verification_sent_pair_num=4, shortlist_percent=10.0, seed=7)


@pytest.fixture(scope="module")
def corpus():
    return builtin_sentences()[:80]


@pytest.fixture(scope="module")
def finished(tiny_model, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("fh") / "run"
    stickytoken.detect(tiny_model, sentences=corpus, output=str(out), show_progress_bar=False, **PARAMS)
    return str(out)


def _state(model):
    p = next(model.parameters())
    return (p.dtype, p.device, model.training, model.max_seq_length,
            {k: v.clone() for k, v in model.state_dict().items()})


def _same_state(a, b):
    return a[:4] == b[:4] and all(torch.equal(a[4][k], b[4][k]) for k in a[4])


# ---- the API leaves the caller's model as it was -------------------------------------------------
def test_detect_leaves_the_callers_model_as_given(tiny_model, corpus, tmp_path):
    model = copy.deepcopy(tiny_model)
    model.train()                      # a model mid-workflow: training mode, float32
    model.max_seq_length = 77
    before = _state(model)
    stickytoken.detect(model, dtype="bfloat16", sentences=corpus, output=str(tmp_path / "r"),
                       show_progress_bar=False, max_tokens=20, **PARAMS)
    assert _same_state(before, _state(model))


def test_load_model_copies_only_when_something_must_change(tiny_model):
    assert stickytoken.load_model(tiny_model, device="cpu", dtype="float32") is tiny_model
    other = stickytoken.load_model(tiny_model, device="cpu", dtype="bfloat16")
    assert other is not tiny_model and next(other.parameters()).dtype == torch.bfloat16
    assert next(tiny_model.parameters()).dtype == torch.float32


def test_assess_and_guard_leave_the_callers_model_as_given(tiny_model, finished):
    from stickytoken.assess import assess

    model = copy.deepcopy(tiny_model)
    model.train()
    before = _state(model)
    assess(finished, model=model, n_tokens=1, retrieval="builtin", clustering=None, max_queries=3, max_docs=20,
           hijack=False, show_progress_bar=False, output=None)
    assert _same_state(before, _state(model))
    # the guard calls model.encode, which (sentence-transformers' own rule) switches to eval
    # mode; beyond that the model is as it was, with no hook left behind
    model.eval()
    before = _state(model)
    for mode in ("mask", "remove"):
        guard = stickytoken.StickyGuard(model, ["zorp"], mode=mode)
        guard.encode(["zorp zorp the cat"])
        guard(model.tokenize(["zorp the cat"]))
    assert _same_state(before, _state(model))
    assert not model[0]._forward_pre_hooks


# ---- StickyGuard -----------------------------------------------------------------------------------
def test_guard_refuses_a_mistyped_run_folder(tiny_model, finished):
    typo = os.path.join(os.path.dirname(finished), "rnu")
    with pytest.raises(InputError, match="looks like a path"):
        stickytoken.StickyGuard(tiny_model, typo)
    with pytest.raises(InputError, match="looks like a path"):
        stickytoken.StickyGuard(tiny_model, "./stickytoken_runs/typo")
    g = stickytoken.StickyGuard(tiny_model, "</s>")        # a token with a slash stays a token
    assert g.texts == ["</s>"]


def test_guard_without_sticky_tokens_says_so(tiny_model, finished):
    result = stickytoken.DetectionResult.load(finished)
    for c in result.candidates:
        c.sticky = False
    with pytest.warns(UserWarning, match="no sticky tokens"):
        g = stickytoken.StickyGuard(tiny_model, result)
    assert "no sticky tokens" in repr(g) and not g.active


def test_guard_is_callable_like_the_model(tiny_model):
    g = stickytoken.StickyGuard(tiny_model, ["zorp"], mode="remove")
    np.testing.assert_allclose(g(["zorp the cat"]), tiny_model.encode(["the cat"]), atol=1e-6)
    features = tiny_model.tokenize(["zorp zorp the cat"])
    with torch.no_grad():
        out = g(features)["sentence_embedding"]
    masked = stickytoken.StickyGuard(tiny_model, ["zorp"], mode="mask").encode(["zorp zorp the cat"],
                                                                              convert_to_tensor=True)
    np.testing.assert_allclose(out.detach().numpy(), masked.numpy(), atol=1e-6)


# ---- bad input is refused before any model work ---------------------------------------------------
def _no_model_load(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr("stickytoken.api.load_model", boom)


def test_sent_pair_num_beyond_the_pool_is_refused_first(monkeypatch, tmp_path, capsys):
    _no_model_load(monkeypatch)
    with pytest.raises(InputError, match="largest possible value is 1000"):
        stickytoken.detect(sent_pair_num=100000, output=str(tmp_path / "r"))
    sents = tmp_path / "s.txt"
    sents.write_text("\n".join(f"sentence number {i}" for i in range(5)))
    with pytest.raises(InputError, match="verification_sent_pair_num is 250 .* only 10 pairs"):
        stickytoken.detect(sentences=str(sents), output=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()
    assert cli.main(["detect", "--sent-pair-num", "100000", "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "1000" in err[0]


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "1.5"])
def test_pairs_with_bad_similarities_are_refused_first(monkeypatch, tmp_path, bad):
    _no_model_load(monkeypatch)
    f = tmp_path / "pairs.csv"
    f.write_text(f"sentence1,sentence2,similarity\na b,c d,0.1\ne f,g h,{bad}\n")
    with pytest.raises(InputError, match=f"row 3 has similarity {float(bad)!r}: similarities must be finite"):
        stickytoken.detect(pairs=str(f), output=str(tmp_path / "r"), sent_pair_num=1, verification_sent_pair_num=1)
    assert not (tmp_path / "r").exists()


def test_a_refused_start_after_loading_leaves_no_folder(tiny_model, tmp_path):
    # every pair is more similar than the mean: refused in the pairs stage, after the folder
    # was made but before any saved work other than the mean similarity... which is kept
    out = tmp_path / "r"
    with pytest.raises(InputError):
        stickytoken.detect(tiny_model, pairs=[("a", "b", 0.99)] * 3, output=str(out), show_progress_bar=False,
                           sent_pair_num=1, verification_sent_pair_num=1, max_tokens=5)
    # the mean similarity was computed and saved: that work is kept for the next attempt
    assert (out / "mean_similarity.json").exists()

def test_a_refused_start_before_any_saved_work_leaves_no_folder(tiny_model, corpus, tmp_path, monkeypatch):
    def refuse(*a, **k):
        raise InputError("no token of this tokenizer can be tested")
    monkeypatch.setattr("stickytoken.api.vocabulary_stage", refuse)
    out = tmp_path / "r"
    with pytest.raises(InputError):
        stickytoken.detect(tiny_model, sentences=corpus, output=str(out), show_progress_bar=False, **PARAMS)
    assert not out.exists()


def test_dtype_float8_is_one_error_line(capsys):
    assert cli.main(["detect", "--dtype", "float8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "float8" in err[0]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_16_bit_dtype_without_native_cpu_kernels_is_warned(tiny_path, dtype, caplog):
    """On a CPU that oneDNN says has no native kernels for the dtype (AVX2-only, as some CI
    machines), loading warns that float32 is faster; with native kernels (AVX512/AMX), and in
    float32 or on CUDA, it says nothing."""
    from stickytoken.models import cpu_half_note

    probe = torch.ops.mkldnn._is_mkldnn_bf16_supported if dtype == "bfloat16" else \
        torch.ops.mkldnn._is_mkldnn_fp16_supported
    with caplog.at_level(logging.WARNING, logger="stickytoken"):
        st = stickytoken.load_model(tiny_path, device="cpu", dtype=dtype)
    assert next(st.parameters()).dtype == getattr(torch, dtype)
    warned = [r.getMessage() for r in caplog.records if "no native kernels" in r.getMessage()]
    if probe():
        assert warned == [] and cpu_half_note("cpu", dtype) is None
    else:
        assert len(warned) == 1 and warned[0].startswith(f"warning: {dtype} has no native kernels on this CPU (")
        assert warned[0].endswith("--dtype float32 is faster")
    assert cpu_half_note("cpu", "float32") is None and cpu_half_note("cuda", dtype) is None


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5"])
def test_a_bad_chunk_rows_setting_is_one_error_line_before_any_work(tiny_path, tmp_path, monkeypatch, capsys, value):
    monkeypatch.setenv("STICKYTOKEN_CHUNK_ROWS", value)
    out = tmp_path / "r"
    assert cli.main(["detect", "--model", tiny_path, "--max-tokens", "5", "--output", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: STICKYTOKEN_CHUNK_ROWS must be a positive whole number")
    assert repr(value) in err[0] and not out.exists()


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["detect", "--seed", "x"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "usage" not in err[0]


def test_unknown_hub_name_fails_at_once_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_loader(*a, **k):
        raise AssertionError("the hub loader was tried")
    monkeypatch.setattr("sentence_transformers.SentenceTransformer", no_loader)
    with pytest.raises(InputError, match="not in the Hugging Face cache"):
        stickytoken.load_model("some-org/surely-unknown-model")


# ---- few candidates, pairs used -----------------------------------------------------------------
def test_fence_over_few_candidates_is_warned_and_pairs_used_are_stated(finished, caplog):
    r = stickytoken.DetectionResult.load(finished)
    assert len(r.candidates) < 20
    assert any("fence rests on only" in n for n in r.notes)
    s = r.summary()
    assert f"pairs used: {len(r.scoring_pairs)} scoring (asked for 2), {len(r.verification_pairs)} verification" in s


# ---- run folders others can use --------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_follow_the_umask(tiny_model, corpus, tmp_path, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "r"
        stickytoken.detect(tiny_model, sentences=corpus, output=str(out), show_progress_bar=False, max_tokens=30,
                           **PARAMS)
    finally:
        os.umask(old)
    files = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs]
    assert files
    for f in files:
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o666 & ~umask, f


def test_rerunning_a_finished_folder_rewrites_nothing(tiny_model, corpus, finished):
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(finished) for f in fs)
    before = {f: (os.stat(f).st_mtime_ns, open(f, "rb").read()) for f in files}
    again = stickytoken.detect(tiny_model, sentences=corpus, output=finished, show_progress_bar=False, **PARAMS)
    after = {f: (os.stat(f).st_mtime_ns, open(f, "rb").read()) for f in files}
    assert before == after
    assert sorted(os.path.join(d, f) for d, _, fs in os.walk(finished) for f in fs) == files
    assert [t.id for t in again.candidates] == [t.id for t in stickytoken.DetectionResult.load(finished).candidates]


def test_peak_memory_has_its_own_field(finished):
    data = json.load(open(os.path.join(finished, "results.json")))
    assert not any("memory" in k for k in data["timings"])
    assert data["peak_memory"]["peak_host_memory_mb"] > 0
    r = stickytoken.DetectionResult.load(finished)
    assert "memory" not in "".join(r.timings) and "Peak memory: host" in r.summary()


def test_resuming_says_so_and_the_bar_counts_only_what_is_left(tiny_model, corpus, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr("stickytoken.runfolder.CHUNK_ROWS_CPU", 360)   # 20 tokens a part: several parts
    out = tmp_path / "r"
    kw = dict(sentences=corpus, output=str(out), show_progress_bar=False, **PARAMS)
    first = stickytoken.detect(tiny_model, **kw)
    parts = sorted(os.listdir(out / "parts"))
    scoring = [p for p in parts if p.startswith("score-")]
    assert len(scoring) >= 2
    for p in scoring[1:] + [p for p in parts if p.startswith("verify-")]:
        os.unlink(out / "parts" / p)
    os.unlink(out / "results.json")
    run = json.load(open(out / "run.json"))
    run["status"] = "running"
    (out / "run.json").write_text(json.dumps(run))

    from tqdm.auto import tqdm
    from stickytoken import runfolder
    bars = []
    real = runfolder._start_bar_at

    def spy(bar, n):
        bars.append((bar.total, n))
        real(bar, n)
    caplog.set_level(logging.INFO, logger="stickytoken")
    import unittest.mock as um
    with um.patch.object(runfolder, "_start_bar_at", spy):
        again = stickytoken.detect(tiny_model, **kw)
    assert f"resuming scoring: 1 of {len(scoring)} parts done" in caplog.text
    assert bars and bars[0][1] == len(np.load(out / "parts" / scoring[0])["ids"])
    assert [t.id for t in again.candidates] == [t.id for t in first.candidates]
    bar = tqdm(total=10, disable=False, file=open(os.devnull, "w"))
    real(bar, 4)
    assert bar.n == 4 and bar.initial == 4      # the rate is measured from here
    bar.close()


def test_json_output_has_the_measured_figures(finished):
    r = stickytoken.DetectionResult.load(finished)
    data = cli.summary_json(r)
    for key in ("mean_similarity", "shortlist_threshold", "fence", "scoring_pairs_used", "verification_pairs_used"):
        assert key in data
    assert data["mean_similarity"] == pytest.approx(r.mean_similarity)
    assert data["fence"] == pytest.approx(r.fence)


# ---- help -----------------------------------------------------------------------------------------
def _commands(parser, name=""):
    """(command, its parser) for every command and subcommand of the command line."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield f"{name} {sub_name}".strip(), sub
                yield from _commands(sub, f"{name} {sub_name}".strip())


def test_every_flag_of_every_command_has_help_and_its_default():
    # check's --tokens, --tokens-file and --ids form a group of which one is needed: no default
    needed = {("check", "tokens"), ("check", "tokens_file"), ("check", "ids")}
    commands = dict(_commands(cli.build_parser()))
    assert {"detect", "check", "compare", "agreement", "attention", "assess", "report", "models get"} <= set(commands)
    for name, parser in commands.items():
        for action in parser._actions:
            if action.dest in ("help",) or action.__class__.__name__ == "_SubParsersAction":
                continue
            assert action.help, (name, action.dest)
            if action.option_strings and action.nargs != 0 and (name, action.dest) not in needed:
                assert "default" in action.help, (name, action.dest)


def test_every_command_that_writes_takes_o_for_its_output():
    commands = dict(_commands(cli.build_parser()))
    for name in ("detect", "check", "compare", "agreement", "attention", "assess", "report"):
        flags = {s for a in commands[name]._actions for s in a.option_strings if a.dest == "output"}
        assert flags == {"--output", "-o"}, name


def test_attention_takes_a_sentence_count_and_a_corpus_file_under_distinct_names():
    parser = cli.build_parser()
    args = parser.parse_args(["attention", "RUN", "--n-sentences", "5", "--sentences", "my.txt"])
    assert args.n_sentences == 5 and args.corpus == "my.txt"


def test_readme_documents_what_a_new_user_needs():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    for needle in ("HF_HUB_OFFLINE=1", "--index-url https://download.pytorch.org/whl/cpu", "SentenceTransformer(",
                   "--fast", "--max-tokens 200", "weak_verified", "the fence decides"):
        assert needle in readme, needle


def test_a_finished_run_that_lost_its_results_json_writes_it_again(tiny_model, corpus, finished, tmp_path):
    import shutil

    out = str(tmp_path / "copy")
    shutil.copytree(finished, out, ignore=shutil.ignore_patterns("results.json"))
    with pytest.raises(stickytoken.RunFolderError, match="results.json is missing"):
        stickytoken.compare(out, finished)
    again = stickytoken.detect(tiny_model, sentences=corpus, output=out, show_progress_bar=False, **PARAMS)
    want = json.load(open(os.path.join(finished, "results.json")))
    got = json.load(open(os.path.join(out, "results.json")))
    for key in ("candidates", "mean_similarity", "fence", "n_sticky", "scoring_pairs", "verification_pairs"):
        assert got[key] == want[key], key
    assert [t.id for t in again.candidates] == [c["id"] for c in want["candidates"]]
    cmp = stickytoken.compare(out, finished)
    assert len(cmp.shared) == want["n_sticky"] and not cmp.only_a and not cmp.only_b


def test_a_finished_run_without_its_scores_or_with_damaged_results_is_one_error(tiny_model, corpus, finished,
                                                                                tmp_path, capsys):
    """results.json without scores.csv beside it, or a damaged one, is one ``error:`` line
    naming what is wrong (it was a FileNotFoundError or JSONDecodeError traceback); the way
    back the first message gives works."""
    import shutil

    no_scores = shutil.copytree(finished, str(tmp_path / "no-scores"), ignore=shutil.ignore_patterns("scores.csv"))
    damaged = shutil.copytree(finished, str(tmp_path / "damaged"))
    with open(os.path.join(damaged, "results.json"), "r+", encoding="utf-8") as fh:
        fh.truncate(100)
    for folder, msg in ((no_scores, "holds results.json but not scores.csv"),
                        (damaged, "cannot be read .*results.json or scores.csv is damaged")):
        with pytest.raises(stickytoken.RunFolderError, match=msg):
            stickytoken.DetectionResult.load(folder)
        assert cli.main(["compare", folder, finished]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:"), err
    trimmed = shutil.copytree(finished, str(tmp_path / "trimmed"),
                              ignore=shutil.ignore_patterns("results.json", "parts"))
    with pytest.raises(stickytoken.RunFolderError, match="kept without results.json and without its parts"):
        stickytoken.DetectionResult.load(trimmed)
    no_pairs = shutil.copytree(finished, str(tmp_path / "no-pairs"), ignore=shutil.ignore_patterns("pairs.json"))
    token = stickytoken.DetectionResult.load(finished).candidates[0].token
    assert cli.main(["check", "--run", no_pairs, "--tokens", token, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lacks pairs.json (a copy without it?)" in err[0] and "corpus of its own" in err[0], err
    reused = stickytoken.detect(tiny_model, pairs=finished, output=str(tmp_path / "reused"), show_progress_bar=False,
                                **PARAMS)   # its pairs taken from the finished run, then copied without them
    os.remove(os.path.join(reused.run_dir, "pairs.json"))
    capsys.readouterr()
    assert cli.main(["check", "--run", reused.run_dir, "--tokens", token, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "taken from an earlier run (detect --pairs RUN): copy that run's pairs.json" in err[0], err
    shutil.copy(os.path.join(finished, "pairs.json"), reused.run_dir)   # as it says
    assert cli.main(["check", "--run", reused.run_dir, "--tokens", token, "--quiet"]) == 0
    os.remove(os.path.join(no_scores, "results.json"))      # as the message says: both are written again
    stickytoken.detect(tiny_model, sentences=corpus, output=no_scores, show_progress_bar=False, **PARAMS)
    again = stickytoken.DetectionResult.load(no_scores)
    assert np.array_equal(again.scored_ids, stickytoken.DetectionResult.load(finished).scored_ids)


def test_a_full_disk_is_one_error_line_and_the_run_resumes(tiny_path, corpus, tmp_path):
    """A write the disk refuses (here a file-size limit: EFBIG, as ENOSPC would be) ends the
    command with one ``error:`` line naming the file, exit 2, the parts kept; the same command
    then finishes the run, with the results of a run that never stopped."""
    import subprocess
    import sys

    sentences = tmp_path / "corpus.txt"
    sentences.write_text("\n".join(corpus[:12]) + "\n", encoding="utf-8")

    def argv(out, quiet=True):
        return ["detect", "--model", tiny_path, "--sentences", str(sentences), "--output", str(out),
                "--sent-pair-num", "2", "--insert-num", "3", "--verification-sent-pair-num", "4",
                "--shortlist-percent", "10", "--seed", "7"] + (["--quiet"] if quiet else [])

    whole = tmp_path / "whole"
    assert cli.main(argv(whole)) == 0
    # a limit that the pairs and the parts fit under and a result file does not
    before = [whole / "pairs.json", *(whole / "parts").iterdir()]
    limit = max(p.stat().st_size for p in before) + 1
    assert max(p.stat().st_size for p in whole.iterdir() if p.is_file()) > limit

    out = tmp_path / "run"
    limited = ("import resource, signal, sys\n"
               "from stickytoken import cli\n"
               "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG\n"
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))\n"
               f"sys.exit(cli.main({argv(out, quiet=False)!r}))\n")   # with its progress bars
    proc = subprocess.run([sys.executable, "-c", limited], capture_output=True, text=True)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1 and proc.stderr.strip().endswith(errors[0]), proc.stderr   # after the bars
    assert errors[0].startswith(f"error: File too large (writing '{out}{os.sep}"), errors[0]
    assert errors[0].endswith("run the same command to resume")
    assert not (out / "results.json").exists()
    assert sorted(os.listdir(out / "parts")) == sorted(os.listdir(whole / "parts"))
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")]
    assert cli.main(argv(out)) == 0
    got = json.loads((out / "results.json").read_text())
    want = json.loads((whole / "results.json").read_text())
    for key in ("candidates", "mean_similarity", "fence", "n_sticky", "scoring_pairs", "verification_pairs"):
        assert got[key] == want[key], key


def test_bars_still_open_when_a_command_fails_are_closed_before_its_last_line():
    from tqdm.auto import tqdm

    with pytest.raises(OSError):
        with cli._bars_closed_on_failure():
            bar = tqdm(total=10, desc="scoring")
            bar.update(3)
            raise OSError(28, "No space left on device")
    assert bar.disable and bar not in getattr(tqdm, "_instances", ())   # closed: nothing more is drawn


def test_a_damaged_part_is_computed_again_on_resume(tiny_model, corpus, finished, tmp_path, caplog):
    """A part that cannot be read back whole (cut short, or a byte changed: its checksum fails)
    is moved aside with a warning and computed again; the run ends as the undamaged one did.
    Read elsewhere, such a part is one clear error."""
    import shutil

    from stickytoken.runfolder import RunFolder, UnreadablePart

    out = tmp_path / "copy"
    shutil.copytree(finished, out, ignore=shutil.ignore_patterns("results.json"))
    parts = sorted((out / "parts").iterdir())
    score, verify = [p for p in parts if p.name.startswith("score-")][0], [p for p in parts if p.name.startswith("verify-")][0]
    score.write_bytes(score.read_bytes()[: score.stat().st_size // 2])          # cut short
    data = bytearray(verify.read_bytes())
    data[len(data) // 2] ^= 0xFF                                                  # one byte changed
    verify.write_bytes(bytes(data))
    for damaged in (score, verify):
        with pytest.raises(UnreadablePart, match="cannot be read .*delete it and run the same command"):
            RunFolder.existing(str(out)).load_part(damaged.name.split("-")[0], 0)
    with caplog.at_level(logging.WARNING, logger="stickytoken"):
        again = stickytoken.detect(tiny_model, sentences=corpus, output=str(out), show_progress_bar=False, **PARAMS)
    for damaged in (score, verify):
        assert (out / "parts" / (damaged.name + ".unreadable")).exists() and damaged.exists()
        assert any(damaged.name in r.getMessage() and "computed again" in r.getMessage() for r in caplog.records)
    want = json.loads(open(os.path.join(finished, "results.json")).read())
    got = json.loads((out / "results.json").read_text())
    for key in ("candidates", "mean_similarity", "shortlist_threshold", "fence", "n_scored", "n_sticky"):
        assert got[key] == want[key], key
    assert np.array_equal(again.scored_ids, stickytoken.DetectionResult.load(finished).scored_ids)


def test_a_damaged_stage_cache_is_an_error_not_a_recomputation(tiny_model, corpus, finished, tmp_path):
    """pairs.json or mean_similarity.json that does not read back stops the run with a clear
    error: its later parts were computed with it, and a recomputation could pick other pairs."""
    import shutil

    for name in ("pairs.json", "mean_similarity.json"):
        out = tmp_path / name
        shutil.copytree(finished, out, ignore=shutil.ignore_patterns("results.json"))
        text = (out / name).read_text()
        (out / name).write_text(text[: len(text) // 2])
        with pytest.raises(stickytoken.RunFolderError, match=f"{name} in .* cannot be read .*restore it"):
            stickytoken.detect(tiny_model, sentences=corpus, output=str(out), show_progress_bar=False, **PARAMS)
        (out / name).write_text(text)   # restored: the run finishes as it was
        again = stickytoken.detect(tiny_model, sentences=corpus, output=str(out), show_progress_bar=False, **PARAMS)
        assert again.fence == stickytoken.DetectionResult.load(finished).fence


def test_a_run_folder_in_use_by_another_process_is_refused(tiny_model, corpus, finished, tmp_path):
    """The same command started twice: the second is refused (naming the first's pid) instead
    of repeating its work and racing its writes; once the first ends, even by kill -9, the run
    goes on.  A finished run is read back whoever holds it."""
    import shutil
    import subprocess
    import sys

    out = tmp_path / "copy"
    shutil.copytree(finished, out, ignore=shutil.ignore_patterns("results.json"))
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time\n"
                               "from stickytoken.runfolder import RunFolder\n"
                               f"run = RunFolder.existing({str(out)!r})\n"
                               "run.claim()\n"
                               "print('held', flush=True)\n"
                               "time.sleep(120)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(stickytoken.RunFolderError, match=rf"is in use by another process \(pid {holder.pid}\)"):
            stickytoken.detect(tiny_model, sentences=corpus, output=str(out), show_progress_bar=False, **PARAMS)
        assert stickytoken.detect(tiny_model, sentences=corpus, output=finished, show_progress_bar=False,
                                  **PARAMS).fence is not None   # (another folder, and a finished one, go on)
    finally:
        holder.kill()
        holder.wait()
    again = stickytoken.detect(tiny_model, sentences=corpus, output=str(out), show_progress_bar=False, **PARAMS)
    assert again.fence == stickytoken.DetectionResult.load(finished).fence
    # released when detect returns: the same process may open the folder again at once
    stickytoken.detect(tiny_model, sentences=corpus, output=str(out), show_progress_bar=False, **PARAMS)


def test_an_output_that_is_a_file_is_refused_before_any_work(tiny_model, corpus, finished, tmp_path):
    """--output naming a file (or a folder under one) is one error before the model works, for
    every command that writes, and for the results' save methods (it was a FileExistsError or
    NotADirectoryError traceback, after the work)."""
    from stickytoken.report import write_report

    afile = tmp_path / "afile"
    afile.write_text("x")
    for where in (afile, afile / "below"):
        calls = {
            "detect": lambda: stickytoken.detect(tiny_model, sentences=corpus, output=str(where), max_tokens=5,
                                                 show_progress_bar=False, **PARAMS),
            "analyze": lambda: stickytoken.analyze(finished, model=tiny_model, n_tokens=1, n_sentences=2,
                                                   output=str(where), show_progress_bar=False),
            "assess": lambda: stickytoken.assess.assess(finished, model=tiny_model, n_tokens=1, output=str(where),
                                                        show_progress_bar=False),
            "compare": lambda: stickytoken.compare(finished, finished, output=str(where)),
            "report": lambda: write_report([finished], str(where)),
            "save": lambda: stickytoken.DetectionResult.load(finished).save(str(where)),
        }
        for name, call in calls.items():
            with pytest.raises(InputError, match="is a file, not a folder|cannot be made: .* is a file"):
                call()
    assert afile.read_text() == "x"
    code = cli.main(["compare", finished, finished, "--output", str(afile)])
    assert code == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"max_queries": 0}, "max_queries must be at least 1, got 0"),      # was a matmul ValueError
    ({"max_docs": -1}, "max_docs must be at least 1, got -1"),          # was taken as it came
    ({"max_texts": 0}, "max_texts must be at least 2, got 0"),          # was KMeans' error
    ({"hijack_queries": -1}, "hijack_queries must be at least 0"),
    ({"seed": -1}, "seed must be between 0 and"),                       # was numpy's ValueError
])
def test_assess_and_attention_refuse_bad_counts_before_the_model_loads(finished, kwargs, message):
    import stickytoken.assess

    with pytest.raises(InputError, match=message):
        stickytoken.assess.assess(finished, model="/no/such/model", output=False, **kwargs)
    if "seed" in kwargs:
        with pytest.raises(InputError, match=message):
            stickytoken.analyze(finished, model="/no/such/model", output=False, **kwargs)


def test_a_figure_path_is_checked_before_drawing(finished, tmp_path):
    """plot(path): its folder is made when missing; a folder that is a file, an ending no
    format has, or a path that is not a name is one InputError (they were FileNotFoundError,
    NotADirectoryError, matplotlib's ValueError and an AttributeError)."""
    r = stickytoken.DetectionResult.load(finished)
    (tmp_path / "afile").write_text("x")
    r.plot(str(tmp_path / "new" / "deeper" / "scores.png"))
    assert (tmp_path / "new" / "deeper" / "scores.png").stat().st_size > 0
    for path, message in ((tmp_path / "afile" / "x.png", "is a file, not a folder"),
                          (tmp_path / "x.jpgz", "end the name with one of .*png"),
                          (123, "path must be a file name")):
        for plot in (r.plot, r.plot_confidence, stickytoken.compare(finished, finished).plot):
            with pytest.raises(InputError, match=message):
                plot(path)


@pytest.mark.parametrize("command, argv, resumable", [
    ("_run_detect", ["detect"], True), ("_run_check", ["check", "--tokens", "a"], True),
    ("_run_attention", ["attention", "RUN"], False), ("_run_assess", ["assess", "RUN"], False),
    ("_run_report", ["report", "RUN"], False), ("_run_compare", ["compare", "A", "B"], False),
])
def test_a_stopped_command_says_resume_only_where_it_resumes(monkeypatch, capsys, command, argv, resumable):
    def stopped(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, command, stopped)
    assert cli.main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("interrupted") and ("run the same command to resume" in err) == resumable, err


def test_a_run_resumed_with_another_batch_size_says_its_bits_may_differ(tiny_model, corpus, finished, tmp_path,
                                                                        caplog):
    import shutil

    assert json.loads(open(os.path.join(finished, "run.json")).read())["batch_size"] == 64
    for batch_size, warned in ((64, False), (16, True)):
        out = tmp_path / f"bs{batch_size}"
        shutil.copytree(finished, out, ignore=shutil.ignore_patterns("results.json", "verify-*"))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="stickytoken"):
            stickytoken.detect(tiny_model, sentences=corpus, output=str(out), show_progress_bar=False,
                               batch_size=batch_size, **PARAMS)
        said = [r.getMessage() for r in caplog.records if "resumes with another" in r.getMessage()]
        assert bool(said) == warned, said
        if warned:
            assert "batch_size 64 then, 16 now" in said[0] and "--batch-size" in said[0]


def test_a_runs_model_that_is_gone_is_named_and_a_device_refused_is_not_blamed_on_it(finished, tmp_path, capsys):
    """check --run on a run whose model is no longer where it was: the error says to give it
    with --model. A device refused (CUDA on a machine without it) is said as such, not as a
    missing model."""
    import shutil

    gone = shutil.copytree(finished, str(tmp_path / "gone"))
    results = json.load(open(os.path.join(gone, "results.json"), encoding="utf-8"))
    results["model"] = str(tmp_path / "no-such-model")
    with open(os.path.join(gone, "results.json"), "w", encoding="utf-8") as fh:
        json.dump(results, fh)
    token = results["candidates"][0]["token"]
    assert cli.main(["check", "--run", gone, "--tokens", token, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0] and "give the model with --model" in err[0], err
    if not torch.cuda.is_available():
        assert cli.main(["check", "--run", finished, "--tokens", token, "--device", "cuda", "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "CUDA is not available" in err[0] and "--model" not in err[0], err
