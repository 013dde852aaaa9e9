"""Downstream assessment: the metrics against small hand computations, V-measure against
sklearn, data loading, insertion, and assess() on a tiny model against a direct
recomputation of baselines, one token's metrics, the hijack count and the guard."""
import copy
import json
import math
import os

import numpy as np
import pytest
import torch

from stickytoken import assess as A
from stickytoken import datasets as D
from stickytoken import metrics as M
from stickytoken.cli import build_parser, main
from stickytoken.errors import InputError
from stickytoken.guard import StickyGuard
from tinymodel import STICKY_WORDS, WORDS, tiny_result


# ---- metrics ---------------------------------------------------------------------------------
def test_ndcg_small_cases():
    rels = {"a": 2, "b": 1, "z": 0}
    assert M.ndcg_at_k(["a", "b", "c"], rels, 10) == pytest.approx(1.0)
    dcg = 1 / math.log2(2) * 0 + 1 / math.log2(3) * 1 + 2 / math.log2(4)   # ranking c, b, a
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert M.ndcg_at_k(["c", "b", "a"], rels, 10) == pytest.approx(dcg / idcg)
    assert M.ndcg_at_k(["c", "b", "a"], rels, 2) == pytest.approx((1 / math.log2(3)) / idcg)
    assert M.ndcg_at_k(["c"], {"z": 0}, 10) == 0.0


def test_mrr_and_recall_small_cases():
    rels = {"a": 1, "b": 1, "c": 0}
    assert M.mrr_at_k(["c", "x", "b", "a"], rels, 10) == pytest.approx(1 / 3)
    assert M.mrr_at_k(["c", "x", "b"], rels, 2) == 0.0
    assert M.recall_at_k(["c", "x", "b"], rels, 100) == pytest.approx(0.5)
    assert M.recall_at_k(["a", "x", "b"], rels, 2) == pytest.approx(0.5)
    assert M.recall_at_k(["a"], {"c": 0}, 100) == 0.0


def test_retrieval_metrics_rank_by_dot_product():
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    d = np.array([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5]])
    m = M.retrieval_metrics(q, d, ["q1", "q2"], ["d1", "d2", "d3"], {"q1": {"d3": 1}, "q2": {"d2": 1}})
    # q1 ranks d1, d3, d2 -> relevant at rank 2; q2 ranks d2 first
    assert m["mrr@10"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1) / 2)
    assert m["recall@100"] == 1.0


def test_v_measure_matches_entropy_formula_and_sklearn():
    from sklearn.metrics import v_measure_score

    true, pred = [0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]
    # by hand: H(C) = ln 2; H(K) = ln 3; H(C|K) = (2/6) ln 2; H(K|C) = 2 * (3/6) * H(2/3, 1/3)
    hc, hk = math.log(2), math.log(3)
    hck = 2 / 6 * math.log(2)
    h23 = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    hkc = h23
    hom, com = 1 - hck / hc, 1 - hkc / hk
    assert M.v_measure(true, pred) == pytest.approx(2 * hom * com / (hom + com))
    rng = np.random.default_rng(3)
    for _ in range(5):
        t, p = rng.integers(0, 5, 60), rng.integers(0, 4, 60)
        assert M.v_measure(t, p) == pytest.approx(v_measure_score(t, p), abs=1e-12)
    assert M.v_measure(["a", "a", "b"], [5, 5, 7]) == pytest.approx(1.0)


def test_insert_copies_is_seeded_and_counts():
    t1 = A.insert_copies("a b c d", "zorp", 3, np.random.default_rng(1))
    assert t1 == A.insert_copies("a  b c\td", " zorp ", 3, np.random.default_rng(1))
    words = t1.split()
    assert words.count("zorp") == 3 and [w for w in words if w != "zorp"] == ["a", "b", "c", "d"]
    cum = A.insert_cumulative("a b", "x", 4, np.random.default_rng(2))
    assert [c.split().count("x") for c in cum] == [1, 2, 3, 4]


# ---- data ------------------------------------------------------------------------------------
def _write_beir(folder, corpus, queries, qrels):
    os.makedirs(os.path.join(folder, "qrels"), exist_ok=True)
    with open(os.path.join(folder, "corpus.jsonl"), "w") as fh:
        for i, t in corpus.items():
            fh.write(json.dumps({"_id": i, "title": "", "text": t}) + "\n")
    with open(os.path.join(folder, "queries.jsonl"), "w") as fh:
        for i, t in queries.items():
            fh.write(json.dumps({"_id": i, "text": t}) + "\n")
    with open(os.path.join(folder, "qrels", "test.tsv"), "w") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for q, rel in qrels.items():
            for d, r in rel.items():
                fh.write(f"{q}\t{d}\t{r}\n")


def test_load_beir_and_clustering(tmp_path):
    _write_beir(str(tmp_path / "b"), {"d1": "x y", "d2": "z"}, {"q1": "x", "q2": "nothing"}, {"q1": {"d1": 1, "d9": 1}})
    data = D.load_beir(str(tmp_path / "b"))
    assert data.corpus == {"d1": "x y", "d2": "z"} and data.queries == {"q1": "x"} and data.qrels == {"q1": {"d1": 1}}
    with pytest.raises(InputError, match="qrels"):
        D.load_beir(str(tmp_path))
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):   # byte-order marks are not data
        f = tmp_path / "b" / name
        f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    bom = D.load_beir(str(tmp_path / "b"))
    assert (bom.corpus, bom.queries, bom.qrels) == (data.corpus, data.queries, data.qrels)
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbftext,label\na b,x\nc d,y\n")
    assert D.load_clustering(str(tmp_path / "bom.csv")).labels == ["x", "y"]
    (tmp_path / "c.csv").write_text("text,label\na b,x\nc d,y\n")
    c = D.load_clustering(str(tmp_path / "c.csv"))
    assert c.texts == ["a b", "c d"] and c.labels == ["x", "y"]
    (tmp_path / "bad.csv").write_text("sentence,cls\na,b\n")
    with pytest.raises(InputError, match="text"):
        D.load_clustering(str(tmp_path / "bad.csv"))
    with pytest.raises(InputError, match="mteb"):
        D.get_retrieval("mteb:NoSuchTaskXYZ")


def test_builtin_data_loads():
    if not os.path.isfile(os.path.join(D.DATA_DIR, "retrieval", "corpus.jsonl")):
        pytest.skip("built-in retrieval set not present")
    r = D.get_retrieval("builtin")
    assert len(r.corpus) >= 100 and len(r.queries) >= 50
    if os.path.isfile(os.path.join(D.DATA_DIR, "clustering.csv")):
        c = D.get_clustering("builtin")
        assert len(set(c.labels)) >= 2


# ---- assess on a tiny model ------------------------------------------------------------------
PLAIN = [w for w in WORDS if w not in STICKY_WORDS]


@pytest.fixture(scope="module")
def tiny(tiny_model, tiny_path):
    return tiny_model, tiny_path


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    corpus = {f"d{i}": " ".join(rng.choice(PLAIN, 10)) for i in range(30)}
    queries = {f"q{i}": " ".join(corpus[f"d{i}"].split()[:4]) for i in range(12)}
    qrels = {f"q{i}": {f"d{i}": 1, f"d{(i + 1) % 30}": 2 if i % 3 == 0 else 0} for i in range(12)}
    retrieval = D.RetrievalData(corpus, queries, qrels, "tiny")
    clustering = D.ClusteringData([" ".join(rng.choice(PLAIN[:25] if i % 2 else PLAIN[25:], 6)) for i in range(24)],
                                  ["a", "b"] * 12, "tinyclust")
    return retrieval, clustering


@pytest.fixture(scope="module")
def assessed(tiny, data, tmp_path_factory):
    model, _ = tiny
    run = tiny_result(model, run_dir=str(tmp_path_factory.mktemp("run") / "r"))
    a = A.assess(run, model=model, n_tokens=2, copies=2, retrieval=data[0], clustering=data[1], hijack_queries=4,
                 max_copies=3, seed=11)
    return run, a


def _enc(model, texts):
    return model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)


def test_baselines_match_direct(tiny, data, assessed):
    model, _ = tiny
    r, c = data
    _, a = assessed
    qids, dids = list(r.queries), list(r.corpus)
    Q, D = _enc(model, [r.queries[q] for q in qids]), _enc(model, [r.corpus[d] for d in dids])
    scores = Q @ D.T
    ndcg = np.mean([M.ndcg_at_k([dids[j] for j in np.argsort(-scores[i], kind="stable")], r.qrels[q], 10)
                    for i, q in enumerate(qids)])
    assert a.baselines["retrieval"]["ndcg@10"] == pytest.approx(ndcg, abs=1e-6)
    assert a.baselines["clustering"]["v_measure"] == pytest.approx(
        M.clustering_v_measure(_enc(model, c.texts), c.labels, 11), abs=1e-9)


def test_token_row_matches_direct(tiny, data, assessed):
    model, _ = tiny
    r, c = data
    _, a = assessed
    tok = a.tokens[0]
    qids, dids = list(r.queries), list(r.corpus)
    qt = [A.insert_copies(r.queries[q], tok["text"], 2, np.random.default_rng([11, tok["id"], i, 0]))
          for i, q in enumerate(qids)]
    m = M.retrieval_metrics(_enc(model, qt), _enc(model, [r.corpus[d] for d in dids]), qids, dids, r.qrels)
    rows = {(x["target"], x["metric"]): x for x in a.rows if x["token_id"] == tok["id"]}
    assert rows["queries", "mrr@10"]["value"] == pytest.approx(m["mrr@10"], abs=1e-6)
    base = a.baselines["retrieval"]["mrr@10"]
    assert rows["queries", "mrr@10"]["relative_change"] == pytest.approx((m["mrr@10"] - base) / base, abs=1e-6)
    ct = [A.insert_copies(t, tok["text"], 2, np.random.default_rng([11, tok["id"], i, 2])) for i, t in enumerate(c.texts)]
    assert rows["texts", "v_measure"]["value"] == pytest.approx(M.clustering_v_measure(_enc(model, ct), c.labels, 11))


def test_guard_restores_sticky_and_leaves_controls(assessed):
    _, a = assessed
    assert a.params["guard"] == "remove"
    for row in a.rows:
        if row["group"] == "sticky":
            # the remove guard takes the inserted copies out again: the clean guarded metric
            assert row["guard_value"] == pytest.approx(row["guard_baseline"], abs=1e-6)
        else:
            assert row["guard_value"] == pytest.approx(row["value"], abs=1e-6)
    summary = a.to_pandas("summary")
    assert set(summary.group) == {"sticky", "control"}
    assert len(summary) == 2 * (3 * 3 + 1)
    # each group's worst change is named by the token that gave it, in the table too
    rows = a.to_pandas("tokens")
    for r in summary.itertuples():
        sub = rows[(rows.group == r.group) & (rows.task == r.task) & (rows.target == r.target)
                   & (rows.metric == r.metric)]
        assert r.worst_relative_change == sub.relative_change.min()
        assert r.worst_token == sub.token[sub.relative_change.idxmin()]
    assert f"{100 * summary.worst_relative_change[0]:+.1f}% ({summary.worst_token[0]!r})" in a.table()


def test_hijack_matches_direct(tiny, data, assessed):
    model, _ = tiny
    r, _ = data
    _, a = assessed
    assert len(a.hijack) == 4 * 4                            # 4 tokens x 4 queries
    qids, dids = list(r.queries), list(r.corpus)
    Q, D = _enc(model, [r.queries[q] for q in qids]), _enc(model, [r.corpus[d] for d in dids])
    for h in a.hijack[:4]:
        qi, dj = qids.index(h["query_id"]), dids.index(h["doc_id"])
        s = Q[qi] @ D.T
        assert dj not in np.argsort(-s, kind="stable")[:10] and r.qrels[h["query_id"]].get(h["doc_id"], 0) == 0
        thr = np.sort(s)[::-1][9]
        texts = A.insert_cumulative(r.corpus[h["doc_id"]], h["token"], 3, np.random.default_rng([11, h["token_id"], dj, 3]))
        sc = _enc(model, texts) @ Q[qi]
        want = next((k + 1 for k, v in enumerate(sc) if v > thr), None)
        assert h["copies_needed"] == want
    hs = a.to_pandas("hijack_summary")
    assert set(hs.group) == {"sticky", "control"}


def test_files_and_command(tiny, data, assessed, tmp_path, capsys):
    run, a = assessed
    out = os.path.join(run.run_dir, "assess")
    for name in ("assess.csv", "assess_tokens.csv", "hijack.csv", "summary.md", "assess.json",
                 "assess.png", "assess.pdf", "hijack.png", "hijack.pdf"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    assert "| sticky | retrieval | queries | ndcg@10 |" in a.summary()
    _, path = tiny
    r, c = data
    _write_beir(str(tmp_path / "beir"), r.corpus, r.queries, r.qrels)
    with open(tmp_path / "c.csv", "w") as fh:
        fh.write("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in zip(c.texts, c.labels)))
    parser = build_parser()
    args = parser.parse_args(["assess", run.run_dir, "--model", path, "--retrieval", str(tmp_path / "beir"),
                              "--clustering", str(tmp_path / "c.csv"), "--n-tokens", "1", "--copies", "1",
                              "--targets", "documents", "--hijack-queries", "2", "--max-copies", "2",
                              "--guard", "mask", "--output", str(tmp_path / "out")])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "Downstream impact" in printed and str(tmp_path / "out") in printed
    df = A.Assessment  # noqa: F841
    import pandas as pd
    summary = pd.read_csv(tmp_path / "out" / "assess.csv")
    assert set(summary.target) == {"documents", "texts"}
    # --json prints assess.json's contents (strict JSON: NaN is null) and the folder; --quiet draws no bar
    assert main(["assess", run.run_dir, "--model", path, "--retrieval", "none", "--n-tokens", "1",
                 "--copies", "1", "--hijack-queries", "2", "--max-copies", "2",
                 "--output", str(tmp_path / "out2"), "--json", "--quiet"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    # no bar and no log line; only the warning that copies fell past the model's limit (the
    # tiny tokenizer spells most of the built-in clustering set's words out letter by letter)
    assert all(line.startswith("warning: clustering texts:") for line in captured.err.splitlines())
    assert printed["params"]["copies_cut"]["clustering"]["copies_cut"] == len(captured.err.splitlines())
    assert printed["output"] == str(tmp_path / "out2")
    saved = json.loads((tmp_path / "out2" / "assess.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert {k: v for k, v in printed.items() if k != "output"} == saved
    table = pd.read_csv(tmp_path / "out2" / "assess.csv")
    assert [(r["group"], r["task"], r["metric"]) for r in printed["summary"]] == list(
        zip(table.group, table.task, table.metric))
    assert [r["value"] for r in printed["summary"]] == pytest.approx(list(table.value))
    assert printed["hijack_summary"] == [] and printed["baselines"].keys() == {"clustering"}   # no retrieval, no hijack


def test_command_assesses_tokens_named(tiny, data, assessed, tmp_path, capsys):
    """assess RUN --tokens ... --controls ... gives what the API gives for tokens= and controls=."""
    from stickytoken.cli import main

    model, path = tiny
    run, _ = assessed
    clustering = tmp_path / "c.csv"
    clustering.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in zip(data[1].texts, data[1].labels)))
    assert main(["assess", run.run_dir, "--model", path, "--tokens", "quib", "--controls", "dog",
                 "--retrieval", "none", "--clustering", str(clustering), "--copies", "2",
                 "--output", str(tmp_path / "named"), "--json", "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    want = A.assess(run, model=model, tokens=["quib"], controls=["dog"], retrieval=None, clustering=data[1],
                    copies=2, output=False)
    assert [(t["text"], t["group"]) for t in printed["tokens"]] == [("quib", "sticky"), ("dog", "control")]
    assert printed["summary"] == json.loads(json.dumps(want.to_json()["summary"]))


def test_the_package_name_assess_is_the_module_and_callable(tiny, data, assessed):
    """stickytoken.assess(run, ...) is stickytoken.assess.assess(run, ...); the module's other
    names stay where they were."""
    import stickytoken

    model, _ = tiny
    run, want = assessed
    assert stickytoken.assess is A and callable(stickytoken.assess) and stickytoken.assess.insert_copies
    got = stickytoken.assess(run, model=model, n_tokens=2, copies=2, retrieval=data[0], clustering=data[1],
                             hijack_queries=4, max_copies=3, seed=11, output=False)
    assert isinstance(got, A.Assessment) and got.to_json() == want.to_json()
    with pytest.raises(InputError, match="copies"):
        stickytoken.assess(run, model=model, copies=0, output=False)


def test_several_doses_are_each_measured(tiny, data, assessed, tmp_path, capsys):
    """copies=[1, 2]: every row and summary line of the 2-copy dose is the single-dose run's
    (the same seeded positions); the 1-copy rows are assess(copies=1)'s; the table and the
    report gain a copies column; the figure shows the largest dose; the CLI takes --copies 1,2."""
    from stickytoken import report
    from stickytoken.cli import main

    model, path = tiny
    run, two = assessed
    kw = dict(model=model, n_tokens=2, retrieval=data[0], clustering=data[1], hijack_queries=4, max_copies=3, seed=11)
    both = A.assess(run, copies=[2, 1, 2], output=str(tmp_path / "doses"), **kw)
    one = A.assess(run, copies=1, output=False, **kw)
    assert both.params["copies"] == [1, 2] and both.hijack == two.hijack
    key = ("group", "token_id", "task", "target", "metric")
    for dose, single in ((1, one), (2, two)):
        got = [r for r in both.rows if r["copies"] == dose]
        assert [(tuple(r[k] for k in key), r["value"], r["guard_value"]) for r in got] == \
            [(tuple(r[k] for k in key), r["value"], r["guard_value"]) for r in single.rows]
    summary = both.to_pandas("summary")
    assert list(summary.copies[:2]) == [1, 2] and len(summary) == 2 * len(two.to_pandas("summary"))
    pd_two = two.to_pandas("summary")
    mine = summary[summary.copies == 2].reset_index(drop=True)
    assert list(mine.relative_change) == list(pd_two.relative_change)
    assert "| metric | copies | baseline |" in both.table() and "1 and 2 copies inserted" in both.summary()
    assert "| copies |" not in two.table()
    fig = both.plot()
    assert "2 copies inserted (the largest dose)" in fig.axes[0].get_title()
    md = open(report.write_report([run.run_dir], str(tmp_path / "rep"))["markdown"], encoding="utf-8").read()
    assert "| copies |" not in md                  # RUN/assess holds the single dose
    import shutil

    doses_run = shutil.copytree(run.run_dir, str(tmp_path / "doses-run"))
    both.save(os.path.join(doses_run, "assess"))
    md = open(report.write_report([doses_run], str(tmp_path / "rep2"))["markdown"], encoding="utf-8").read()
    assert "| group | task | target | metric | copies | clean |" in md
    clustering = tmp_path / "c.csv"
    clustering.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in zip(data[1].texts, data[1].labels)))
    assert main(["assess", run.run_dir, "--model", path, "--n-tokens", "1", "--copies", "2, 1", "--retrieval",
                 "none", "--clustering", str(clustering), "--json", "-q", "-o", str(tmp_path / "cli")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["params"]["copies"] == [1, 2] and [r["copies"] for r in printed["summary"]] == [1, 2, 1, 2]
    for bad in ("0,2", "two", ""):
        assert main(["assess", run.run_dir, "--model", path, "--copies", bad, "-q", "-o", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "copies" in err, (bad, err)


def test_bad_input(tiny, assessed):
    model, _ = tiny
    run, _ = assessed
    with pytest.raises(InputError, match="copies"):
        A.assess(run, model=model, copies=0, output=False)
    with pytest.raises(InputError, match="targets"):
        A.assess(run, model=model, targets=["titles"], output=False)
    with pytest.raises(InputError, match="nothing to assess"):
        A.assess(run, model=model, retrieval=None, clustering=None, output=False)
    with pytest.raises(InputError, match="guard"):
        A.assess(run, model=model, guard="strip", output=False)


def test_copies_past_the_models_limit_are_counted_and_noted(tiny, data, assessed):
    """A model that keeps 10 tokens of each text sees none of the copies inserted after them:
    assess counts those copies per role on the tokenizer's offsets (every tiny word is one
    token, so a copy is cut exactly when it lands at word 8 or later), says so in a note, and
    leaves the metrics as they were (the model's own truncation is what was measured)."""
    model, _ = tiny
    run, full = assessed
    short = copy.deepcopy(model)
    short.max_seq_length = 10
    a = A.assess(run, model=short, n_tokens=2, copies=2, retrieval=data[0], clustering=data[1], hijack_queries=4,
                 max_copies=3, seed=11, output=False)
    assert model.max_seq_length == 128 and short.max_seq_length == 10
    r, c = data
    tok = model.tokenizer
    want = {}
    for t in a.tokens:
        roles = [("query", 0, list(r.queries.values()), 2), ("document", 1, list(r.corpus.values()), 2),
                 ("clustering", 2, c.texts, 2)]
        roles += [("hijack", 3, {h["doc_id"]: r.corpus[h["doc_id"]] for h in a.hijack
                                 if h["token_id"] == t["id"]}, 3)]
        for role, k, texts, n in roles:
            items = texts.items() if isinstance(texts, dict) else enumerate(texts)
            for i, clean in items:
                index = list(r.corpus).index(i) if role == "hijack" else i
                words, marks, _ = A._insert_words(clean, t["text"], n, np.random.default_rng([11, t["id"], index, k]))
                text = " ".join(words)
                assert text == A.insert_copies(clean, t["text"], n, np.random.default_rng([11, t["id"], index, k]))
                assert len(tok(text)["input_ids"]) == len(words) + 2   # one token a word, and [CLS] [SEP]
                n_cut = sum(marks[8:])
                w = want.setdefault(role, {"texts": 0, "texts_cut": 0, "copies": 0, "copies_cut": 0})
                w["texts"] += 1
                w["copies"] += n
                w["texts_cut"] += n_cut > 0
                w["copies_cut"] += n_cut
    assert a.params["copies_cut"] == want
    assert want["document"]["copies_cut"] > 0 and want["query"]["copies_cut"] == 0   # queries are 4 words + 2
    notes = [n for n in a.notes if "never reached it" in n]
    assert len(notes) == sum(w["copies_cut"] > 0 for w in want.values())
    d = want["document"]
    assert any(n.startswith(f"document texts: {d['copies_cut']} of the {d['copies']} inserted copies") for n in notes)
    assert "limit of 10 tokens" in notes[0]
    # the full model cuts nothing, and says nothing
    assert all(v["copies_cut"] == 0 for v in full.params["copies_cut"].values())
    assert not any("never reached it" in n for n in full.notes)
    assert full.params["copies_cut"]["document"]["copies"] == 2 * len(r.corpus) * len(full.tokens)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_assess_and_the_guard_on_cuda_match_the_cpu(tiny, data, assessed):
    """assess on CUDA (float32) gives the CPU's metrics and hijack copies; the guard wraps a
    CUDA model as it wraps a CPU one."""
    model, _ = tiny
    run, cpu = assessed
    gpu = A.assess(run, model=model, n_tokens=2, copies=2, retrieval=data[0], clustering=data[1], hijack_queries=4,
                   max_copies=3, seed=11, device="cuda", output=False)
    assert next(model.parameters()).device.type == "cpu"   # the caller's model stays where it was
    for task in cpu.baselines:
        for metric, value in cpu.baselines[task].items():
            assert gpu.baselines[task][metric] == pytest.approx(value, abs=1e-3), (task, metric)
    key = ("group", "token_id", "task", "target", "metric")
    want = {tuple(r[k] for k in key): r for r in cpu.rows}
    got = {tuple(r[k] for k in key): r for r in gpu.rows}
    assert got.keys() == want.keys()
    for k, r in want.items():
        assert got[k]["value"] == pytest.approx(r["value"], abs=1e-3), k
        assert got[k]["guard_value"] == pytest.approx(r["guard_value"], abs=1e-3), k
    assert [(h["token_id"], h["query_id"], h["doc_id"]) for h in gpu.hijack] == \
        [(h["token_id"], h["query_id"], h["doc_id"]) for h in cpu.hijack]
    same = sum(g["copies_needed"] == c["copies_needed"] for g, c in zip(gpu.hijack, cpu.hijack))
    assert same >= len(cpu.hijack) - 1   # (a count of copies may flip at a near tie)
    texts = ["some text zorp zorp", "a cat sat on the mat"]
    on_gpu = copy.deepcopy(model).to("cuda")
    for mode in ("remove", "mask"):
        want_emb = StickyGuard(model, run, mode=mode).encode(texts, convert_to_numpy=True)
        got_emb = StickyGuard(on_gpu, run, mode=mode).encode(texts, convert_to_numpy=True)
        np.testing.assert_allclose(got_emb, want_emb, rtol=1e-4, atol=1e-5, err_msg=mode)
