"""Attention analysis on a tiny random BERT: every metric against a direct recomputation from
the model's own outputs, the insertion positions, the files, the command and bad input."""
import json
import os
import warnings

import numpy as np
import pytest
import torch

from stickytoken import attention
from stickytoken.attention import analyze, insert_token_ids
from stickytoken.cli import build_parser
from stickytoken.errors import InputError
from stickytoken.plotting import drawable, pyplot, save_figure
from tinymodel import build_tiny_arch, tiny_result

SENTS = ["the cat ran to the old house", "a doctor read the study on diet and heart", "blue fish eat small fish"]


@pytest.fixture(scope="module")
def tiny(tiny_model, tiny_path):
    return tiny_model, tiny_path


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    model, _ = tiny
    folder = str(tmp_path_factory.mktemp("run") / "r")
    return tiny_result(model, run_dir=folder)


@pytest.fixture(scope="module")
def analysis(tiny, run):
    model, _ = tiny
    return analyze(run, model=model, sentences=SENTS, n_sentences=None, max_copies=3, n_tokens=2, seed=5,
                   batch_size=7)


def test_insert_positions_are_exact():
    assert insert_token_ids([5, 6, 7], 9, 2, "prefix") == ([9, 9, 5, 6, 7], [0, 1])
    assert insert_token_ids([5, 6, 7], 9, 2, "suffix") == ([5, 6, 7, 9, 9], [3, 4])
    ids, pos = insert_token_ids([5, 6, 7, 8], 9, 3, "random", np.random.default_rng(0))
    assert len(ids) == 7 and [ids[i] for i in pos] == [9, 9, 9]
    assert [i for i in ids if i != 9] == [5, 6, 7, 8]
    # cumulative random insertion: k copies extend the k-1 sequence by one copy
    seqs = attention._random_prefixes([5, 6, 7], 9, 3, np.random.default_rng(1))
    for (a, _), (b, _) in zip(seqs, seqs[1:]):
        assert len(b) == len(a) + 1 and b.count(9) == a.count(9) + 1
    with pytest.raises(InputError):
        insert_token_ids([1], 2, 1, "middle")


def _direct(model, seq, inserted, base):
    """ratio [layers, heads], norm ratio, similarity, similarity_original [layers+1] from a
    plain forward pass on one sequence, by loops."""
    hf = model[0].auto_model
    tok = model.tokenizer
    row = [tok.cls_token_id] + seq + [tok.sep_token_id]
    ins = [i + 1 for i in inserted]
    impl = hf.config._attn_implementation
    hf.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = hf(input_ids=torch.tensor([row]), output_attentions=True, output_hidden_states=True)
            bout = hf(input_ids=torch.tensor([[tok.cls_token_id] + base + [tok.sep_token_id]]), output_hidden_states=True)
    finally:
        hf.set_attn_implementation(impl)
    n = len(row)
    ratio = np.array([[sum(float(a[0, h, q, k]) for q in range(n) for k in ins) / n / (len(ins) / n)
                       for h in range(a.shape[1])] for a in out.attentions])
    content = list(range(1, n - 1))
    orig = [i for i in content if i not in ins]
    norm, sim, simo = [], [], []
    for h, bh in zip(out.hidden_states, bout.hidden_states):
        h, bh = h[0].numpy().astype(np.float64), bh[0].numpy().astype(np.float64)
        norms = np.linalg.norm(h, axis=-1)
        norm.append(norms[ins].mean() / norms[orig].mean())
        b = bh[1:-1].mean(0)
        for vec, out_list in ((h[content].mean(0), sim), (h[orig].mean(0), simo)):
            out_list.append(vec @ b / np.linalg.norm(vec) / np.linalg.norm(b))
    return ratio, np.array(norm), np.array(sim), np.array(simo)


@pytest.mark.parametrize("pos", ["prefix", "suffix", "random"])
def test_metrics_match_direct_computation(tiny, analysis, pos):
    model, _ = tiny
    tok = model.tokenizer
    p = analysis.params["positions"].index(pos)
    for t in (0, len(analysis.token_ids) - 1):           # one sticky, one control token
        tid = analysis.token_ids[t]
        for s, sent in enumerate(SENTS):
            base = tok.encode(sent, add_special_tokens=False)
            if pos == "random":
                seqs = attention._random_prefixes(base, tid, 3, np.random.default_rng([5, tid, s]))
            else:
                seqs = [insert_token_ids(base, tid, k, pos) for k in (1, 2, 3)]
            for k, (seq, ins) in enumerate(seqs):
                ratio, norm, sim, simo = _direct(model, seq, ins, base)
                np.testing.assert_allclose(analysis.attention_ratio[t, s, p, k], ratio, rtol=1e-4, atol=1e-5)
                np.testing.assert_allclose(analysis.hidden_norm_ratio[t, s, p, k], norm, rtol=1e-4)
                np.testing.assert_allclose(analysis.similarity[t, s, p, k], sim, rtol=1e-4, atol=1e-5)
                np.testing.assert_allclose(analysis.similarity_original[t, s, p, k], simo, rtol=1e-4, atol=1e-5)
    # attention mass is the ratio times the copies' share
    mass = analysis.attention_mass[0, 0, p, 0]
    assert np.all(mass > 0) and np.all(mass < 1)


def test_tokens_controls_and_model_state(tiny, run, analysis):
    model, _ = tiny
    sticky = sorted(run.sticky_tokens, key=lambda t: -t.score)[:2]
    assert analysis.token_ids[:2] == [t.id for t in sticky]
    assert analysis.token_ids[2:] == [int(i) for i in run.control_ids(2, 5)]
    assert analysis.groups == ["sticky", "sticky", "control", "control"]
    assert analysis.attention_ratio.shape == (4, 3, 3, 3, 2, 4)
    assert analysis.similarity.shape == (4, 3, 3, 3, 3)
    # the model's attention implementation is restored after the analysis
    assert model[0].auto_model.config._attn_implementation == "sdpa"


def test_tables_and_figures(analysis, run):
    out = os.path.join(run.run_dir, "attention")
    for name in ("attention_layers.csv", "attention_heads.csv", "attention_summary.csv", "summary.md",
                 "attention.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    for fig in ("overview", "attention_share", "hidden_norm", "similarity", "heads", "heatmap"):
        for ext in ("png", "pdf"):
            assert os.path.getsize(os.path.join(out, f"{fig}.{ext}")) > 1000
    layers = analysis.to_pandas("layers")
    assert len(layers) == 4 * 3 * 3 * 3                  # tokens x positions x copies x (layers + 1)
    row = layers[(layers.token_id == analysis.token_ids[0]) & (layers.position == "suffix") & (layers.copies == 2)
                 & (layers.layer == 1)].iloc[0]
    assert row.attention_ratio == pytest.approx(float(analysis.attention_ratio[0, :, 1, 1, 0].mean(-1).mean()), rel=1e-5)
    summary = analysis.to_pandas("summary")
    assert set(summary.metric) == {"attention_ratio", "hidden_norm_ratio", "similarity", "similarity_original"}
    assert "| sticky |" in analysis.summary()


def test_model_and_token_strings(tiny):
    model, _ = tiny
    a = analyze(model, tokens=["zorp"], controls=["cat"], sentences=SENTS[:1], n_sentences=None, max_copies=1,
                positions=["suffix"], output=False)
    assert a.token_texts == ["zorp", "cat"] and a.groups == ["sticky", "control"]
    # one token given bare is one token (a string was split into its characters, an id was a TypeError)
    for one in ("zorp", model.tokenizer.convert_tokens_to_ids("zorp")):
        a = analyze(model, tokens=one, controls="cat", sentences=SENTS[:1], n_sentences=None, max_copies=1,
                    positions=["suffix"], output=False)
        assert a.token_texts == ["zorp", "cat"]
    with pytest.raises(InputError, match="a token cannot be its own control: 'zorp' given as both"):
        analyze(model, tokens=["zorp"], controls=["cat", "zorp"], output=False)


def test_a_sentence_too_long_for_the_copies_is_cut_and_said_so(tiny):
    """Every copy is kept: a sentence longer than the model's limit leaves room for is cut, and
    the analysis says how many were (the tiny model's limit is 128 tokens)."""
    model, _ = tiny
    long = " ".join(["cat"] * 200)
    a = analyze(model, tokens=["zorp"], controls=["cat"], sentences=[SENTS[0], long], n_sentences=None,
                max_copies=3, positions=["suffix"], output=False)
    room = 128 - 2 - 3     # the limit, less [CLS] and [SEP], less the copies
    assert any("1 of the 2 sentences is too long to hold 3 copies" in n and f"cut to {room} tokens" in n
               for n in a.notes)
    assert a.example is not None and not np.isnan(a.similarity).any()
    short = analyze(model, tokens=["zorp"], controls=["cat"], sentences=SENTS, n_sentences=None, max_copies=3,
                    positions=["suffix"], output=False)
    assert not any("too long" in n for n in short.notes)


def test_bad_input(tiny, run):
    model, _ = tiny
    with pytest.raises(InputError, match="positions"):
        analyze(run, model=model, positions=["inside"], output=False)
    with pytest.raises(InputError, match="max_copies"):
        analyze(run, model=model, max_copies=0, output=False)
    with pytest.raises(InputError, match="single vocabulary token"):
        analyze(model, tokens=["zorpquibzorp"], output=False)
    with pytest.raises(InputError, match="tokens to analyse"):
        analyze(model, output=False)


def test_command(tiny, run, tmp_path, capsys):
    _, path = tiny
    parser = build_parser()
    args = parser.parse_args(["attention", run.run_dir, "--model", path, "--n-sentences", "2", "--max-copies", "2",
                              "--n-tokens", "1", "--output", str(tmp_path / "att")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "Attention analysis" in out and str(tmp_path / "att") in out
    assert (tmp_path / "att" / "overview.png").exists()
    args = parser.parse_args(["attention", run.run_dir, "--model", path, "--n-sentences", "2", "--max-copies", "2",
                              "--n-tokens", "1", "--output", str(tmp_path / "att2"), "--json", "-q"])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    saved = json.loads((tmp_path / "att2" / "attention.json").read_text())
    assert printed.pop("output") == str(tmp_path / "att2") and printed == saved
    assert {r["metric"] for r in printed["summary"]} == {"attention_ratio", "hidden_norm_ratio", "similarity",
                                                         "similarity_original"}
    args = parser.parse_args(["attention", str(tmp_path)])
    with pytest.raises(InputError, match="is not a detection run folder"):
        args.func(args)


@pytest.mark.parametrize("arch", ["mpnet", "t5", "llama"])
def test_other_architectures_match_direct(arch, tmp_path):
    """MPNet, a T5 encoder and a decoder (Llama) embedder: eager attention switched on and
    back, and the metrics equal the direct computation."""
    model = build_tiny_arch(str(tmp_path), arch)
    hf = model[0].auto_model
    impl = hf.config._attn_implementation
    a = analyze(model, tokens=["zorp"], controls=["cat"], sentences=SENTS[:1], n_sentences=None, max_copies=2,
                positions=["prefix", "random"], seed=3, output=False)
    assert hf.config._attn_implementation == impl
    base = model.tokenizer.encode(SENTS[0], add_special_tokens=False)
    tid = a.token_ids[0]
    seqs = attention._random_prefixes(base, tid, 2, np.random.default_rng([3, tid, 0]))
    for k, (seq, ins) in enumerate(seqs):
        ratio, norm, sim, simo = _direct(model, seq, ins, base)
        np.testing.assert_allclose(a.attention_ratio[0, 0, 1, k], ratio, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.hidden_norm_ratio[0, 0, 1, k], norm, rtol=1e-4)
        np.testing.assert_allclose(a.similarity[0, 0, 1, k], sim, rtol=1e-4, atol=1e-5)


def test_controls_drawn_around_the_median_score(tiny, run, analysis):
    """control_draw='middle' draws the controls (seeded) from the tenth of the scored tokens
    around the median score instead of the lowest tenth; the summary says which; a draw needs a
    run and is not given with controls named."""
    model, _ = tiny
    order = np.argsort(run.scores[:, 0], kind="stable")
    n = len(order)
    k = max(2, n // 10)
    middle = set(run.scored_ids[order[n // 2 - k // 2: n // 2 - k // 2 + k]].tolist())
    lowest = set(run.scored_ids[order[:k]].tolist())
    got = run.control_ids(2, 5, "middle")
    assert set(got.tolist()) <= middle and not set(got.tolist()) & lowest
    assert set(run.control_ids(2, 5).tolist()) <= lowest
    a = analyze(run, model=model, sentences=SENTS, n_sentences=None, max_copies=2, n_tokens=2, seed=5,
                control_draw="middle", output=False)
    assert a.token_ids[2:] == [int(i) for i in got]
    assert a.params["controls"] == "a seeded draw from the tenth around the run's median score"
    assert "2 control tokens (a seeded draw from the tenth around the run's median score)" in a.summary()
    assert analysis.params["controls"] == "a seeded draw from the run's lowest-scored tenth"
    for kwargs, message in (({"control_draw": "median"}, "control_draw must be one of lowest, middle"),
                            ({"control_draw": "middle", "controls": ["dog"]}, "not both")):
        with pytest.raises(InputError, match=message):
            analyze(run, model=model, output=False, **kwargs)
    with pytest.raises(InputError, match="draws from a run's scores: give a run folder"):
        analyze(model, tokens=["zorp"], control_draw="middle", output=False)


def test_command_takes_tokens_named_as_check_does_with_or_without_a_run(tiny, run, tmp_path, capsys, monkeypatch):
    """attention RUN --tokens/--ids/--controls analyses the tokens named, exactly as the API
    does with tokens= and controls=; without a run it works on --model against the seeded
    control words and writes ./attention; --tokens with a number names that token and says
    how to ask for a count instead; the mistakes are one error line each."""
    from stickytoken.cli import main

    model, path = tiny
    common = ["--model", path, "--n-sentences", "2", "--max-copies", "2", "--json", "-q"]
    quib = model.tokenizer.convert_tokens_to_ids("quib")
    assert main(["attention", run.run_dir, "--tokens", "zorp", "--ids", str(quib), "--controls", "dog,cat",
                 "-o", str(tmp_path / "named"), *common]) == 0
    printed = json.loads(capsys.readouterr().out)
    want = analyze(run, model=model, tokens=["zorp", quib], controls=["dog", "cat"], n_sentences=2, max_copies=2,
                   output=False).to_json()
    assert [(t["text"], t["group"]) for t in printed["tokens"]] == \
        [("zorp", "sticky"), ("quib", "sticky"), ("dog", "control"), ("cat", "control")]
    assert {k: v for k, v in printed.items() if k != "output"} == json.loads(json.dumps(want))

    monkeypatch.chdir(tmp_path)
    (tmp_path / "names.txt").write_text("zorp\n")
    assert main(["attention", "--tokens-file", "names.txt", *common]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["output"] == str(tmp_path / "attention") and (tmp_path / "attention" / "attention.json").exists()
    want = analyze(model, tokens=["zorp"], n_sentences=2, max_copies=2, output=False).to_json()
    assert [t["group"] for t in printed["tokens"]] == ["sticky", "control"]
    assert {k: v for k, v in printed.items() if k != "output"} == json.loads(json.dumps(want))

    assert main(["attention", run.run_dir, "--n-tokens", "1", "--control-draw", "middle", "-o", str(tmp_path / "mid"),
                 *common]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [t["id"] for t in printed["tokens"] if t["group"] == "control"] == [int(i) for i in
                                                                              run.control_ids(1, None, "middle")]
    assert main(["attention", run.run_dir, "--tokens", "1", "-o", str(tmp_path / "one"), *common]) == 0
    captured = capsys.readouterr()
    assert [t["text"] for t in json.loads(captured.out)["tokens"]][:1] == ["1"]
    assert "--tokens '1' names the vocabulary token '1'; for at most 1 of the run's sticky tokens, give " \
        "--n-tokens 1" in captured.err
    for argv, message in ((["attention"], "attention needs a RUN folder, or tokens named"),
                          (["attention", run.run_dir, "--tokens", "zorp", "--n-tokens", "1"],
                           "--n-tokens picks among the run's sticky tokens"),
                          (["attention", run.run_dir, "--controls", ","], "--controls names no token"),
                          (["attention", run.run_dir, "--ids", "zorp"], "--ids takes comma-separated whole numbers")):
        assert main([*argv, "--model", path, "-q"]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "zorp").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_analysis_on_cuda_matches_the_cpu(tiny, run, analysis):
    """The same analysis on CUDA (float32) gives the CPU's metrics, and leaves the caller's
    model where it was."""
    model, _ = tiny
    gpu = analyze(run, model=model, sentences=SENTS, n_sentences=None, max_copies=3, n_tokens=2, seed=5,
                  batch_size=7, device="cuda")
    assert gpu.token_ids == analysis.token_ids and gpu.groups == analysis.groups
    for name in ("attention_ratio", "attention_mass", "hidden_norm_ratio", "similarity", "similarity_original"):
        np.testing.assert_allclose(getattr(gpu, name), getattr(analysis, name), rtol=1e-3, atol=1e-4, err_msg=name)
    assert next(model.parameters()).device.type == "cpu"


def test_token_labels_the_font_lacks_are_spelled_out(tmp_path):
    # a CJK token drew an empty box with a matplotlib warning per character; '$' pairs began mathtext
    assert drawable("大h₂o") == "U+5927h₂o" and drawable("$x$") == r"\$x\$"
    fig, ax = pyplot().subplots()
    ax.set_xticks([0, 1, 2], [drawable(t) for t in ("大", "。", "$5$")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_figure(fig, str(tmp_path), "labels")
