"""The detector's formulas against direct, loop-by-loop NumPy re-computations."""
import math
import os
import re

import numpy as np
import pytest

from stickytoken import pairs as pairs_mod
from stickytoken.errors import InputError
from stickytoken.pairs import Pair, read_pairs, read_sentences, spread_select, stage_pairs
from stickytoken.score import SCORE_CONSTANTS, shortlist, sticky_scores
from stickytoken.verify import fence, label, verification_values


def direct_score(seq, td, a, b, c0):
    fall = rise = 0.0
    n_fall = n_rise = 0
    for x, y in zip(seq[:-1], seq[1:]):
        if y < x:
            fall += x - y
            n_fall += 1
        elif y > x:
            rise += y - x
            n_rise += 1
    return (fall + a * n_fall + 0.1 * td) / (rise + b * n_rise + c0)


@pytest.fixture
def rng():
    seed = 20261123
    print("seed", seed)
    return np.random.default_rng(seed)


def test_sticky_scores_match_direct_formula(rng):
    T, P, K = 4, 3, 5
    D = rng.uniform(0, 1.5, size=(T, P, 3, K + 1, 3))
    D[0, :, :, :, :] = np.sort(D[0], axis=3)[..., ::-1]  # a monotone falling token
    td = rng.uniform(0, 1, size=(T, P, 3))
    got = sticky_scores(D, td)
    for t in range(T):
        for m, name in enumerate(("cosine", "euclidean", "manhattan")):
            a, b, c0 = SCORE_CONSTANTS[name]
            total = 0.0
            for p in range(P):
                total += sum(w * direct_score(D[t, p, v, :, m], td[t, p, m], a, b, c0)
                             for v, w in enumerate((0.35, 0.35, 0.3)))
            assert got[t, m] == pytest.approx(round(total / P, 6), abs=1e-6)
    assert got[0, 0] > got[1:, 0].max()  # falling distances score highest


def test_verification_values_match_direct(rng):
    T, P, K = 3, 7, 4
    D = rng.uniform(0, 1, size=(T, P, 3, K + 1, 3))
    got = verification_values(D)
    for t in range(T):
        for m in range(3):
            v = 0.0
            for p in range(P):
                for var, w in enumerate((4 / 11, 4 / 11, 3 / 11)):
                    seq = D[t, p, var, :, m]
                    v += w * (seq[1:].mean() - seq[0] < 0)
            assert got[t, m] == pytest.approx(v / P)
    assert ((got >= 0) & (got <= 1)).all()


def test_shortlist_is_numpy_percentile_highest_first(rng):
    ids = np.arange(1000, 1200, dtype=np.int64)
    scores = np.round(rng.gamma(2.0, 10.0, size=200), 6)
    cand, thr = shortlist(ids, scores, 2.0)
    assert thr == pytest.approx(np.percentile(scores, 98.0))
    assert set(cand.tolist()) == set(ids[scores >= thr].tolist())
    assert list(scores[cand - 1000]) == sorted(scores[cand - 1000], reverse=True)
    with pytest.raises(InputError):
        shortlist(ids, scores, 0)


def test_fence_and_labels():
    vals = np.array([0.5, 0.6, 0.62, 0.7, 0.71, 0.72, 0.9])
    q1, q3 = np.percentile(vals, [25, 75])
    assert fence(vals) == pytest.approx(q3 + 0.7 * (q3 - q1))
    assert label(0.9) == "strong_verified"
    assert label(0.85) == "weak_verified"
    assert label(0.5) == "strong_rejected"
    assert label(0.7) == "weak_verified"  # the reference's label between the two bounds
    assert 1 - 1 / (3 * math.e) == pytest.approx(0.877, abs=1e-3)


def test_spread_select_matches_brute_force(rng):
    values = rng.uniform(-0.2, 0.9, size=300)
    targets = np.linspace(values.min(), values.max(), 50)
    got = spread_select(values, targets)
    taken = set()
    for t, target in zip(got, targets):
        free = [i for i in range(len(values)) if i not in taken]
        best = min(abs(values[i] - target) for i in free)
        assert abs(values[t] - target) == pytest.approx(best)
        taken.add(int(t))
    assert len(set(got.tolist())) == len(got)


def test_stage_pairs_spread_below_mean():
    pool = [Pair(f"a{i}", f"b{i}", s) for i, s in enumerate(np.linspace(-0.1, 0.9, 101))]
    chosen, short = stage_pairs(pool, 0.3, 5, "scoring")
    assert not short
    sims = [p.similarity for p in chosen]
    lo, hi = -0.1, -0.1 + 0.8 * (0.3 + 0.1)
    assert sims[0] == pytest.approx(lo) and sims[-1] == pytest.approx(hi, abs=0.006)
    assert all(s < 0.3 for s in sims)
    few, short = stage_pairs(pool, -0.05, 10, "verification")
    assert short and len(few) == 5
    with pytest.raises(InputError, match="mean similarity"):
        stage_pairs(pool, -0.5, 5, "scoring")


def test_read_sentences_formats(tmp_path):
    (tmp_path / "a.txt").write_text("One sentence here.\n\nTwo sentences here.\nOne sentence here.\n")
    assert read_sentences(str(tmp_path / "a.txt")) == ["One sentence here.", "Two sentences here."]
    (tmp_path / "b.csv").write_text('id,text\n1,"Hello, there."\n2,General Kenobi.\n')
    assert read_sentences(str(tmp_path / "b.csv")) == ["Hello, there.", "General Kenobi."]
    (tmp_path / "c.jsonl").write_text('{"text": "x y z"}\n{"sentence": "p q r"}\n')
    assert read_sentences(str(tmp_path / "c.jsonl")) == ["x y z", "p q r"]
    # JSON null is an empty line; a number or a list is not a sentence (they were read as '5', "['a']", 'None')
    (tmp_path / "n.jsonl").write_text('{"text": null}\nnull\n"plain"\n')
    assert read_sentences(str(tmp_path / "n.jsonl")) == ["plain"]
    for line, msg in (('{"text": 5}', "line 1's 'text' is int 5, not a string"), ('[1, 2]', "line 1 is list")):
        (tmp_path / "odd.jsonl").write_text(line + "\n")
        with pytest.raises(InputError, match=re.escape(msg)):
            read_sentences(str(tmp_path / "odd.jsonl"))
    # a leading byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name or line
    bom = b"\xef\xbb\xbf"
    (tmp_path / "bom.csv").write_bytes(bom + b'text\nHello there.\nGeneral Kenobi.\n')
    (tmp_path / "bom.jsonl").write_bytes(bom + b'{"text": "x y z"}\n')
    (tmp_path / "bom.txt").write_bytes(bom + b'one line\n')
    (tmp_path / "bom-pairs.csv").write_bytes(bom + b"sentence1,sentence2\na b,c d\n")
    assert read_sentences(str(tmp_path / "bom.csv")) == ["Hello there.", "General Kenobi."]
    assert read_sentences(str(tmp_path / "bom.jsonl")) == ["x y z"]
    assert read_sentences(str(tmp_path / "bom.txt")) == ["one line"]
    assert read_pairs(str(tmp_path / "bom-pairs.csv"))[0] == [("a b", "c d")]
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n{oops\n')
    with pytest.raises(InputError, match="line 2"):
        read_sentences(str(tmp_path / "bad.jsonl"))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(InputError, match="no sentences"):
        read_sentences(str(tmp_path / "empty.txt"))
    with pytest.raises(InputError, match="does not exist"):
        read_sentences(str(tmp_path / "missing.txt"))
    with pytest.raises(InputError, match="is a folder, not a file"):
        read_sentences(str(tmp_path))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8 text"):
        read_sentences(str(tmp_path / "latin1.txt"))


def test_files_named_by_the_user_may_be_pipes(tmp_path):
    """A shell's ``<(zcat corpus.gz)`` is a pipe, not a regular file: it reads as one."""
    import threading

    from stickytoken.errors import read_user_file

    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)

    def feed(text):
        with open(fifo, "w", encoding="utf-8") as fh:
            fh.write(text)

    writer = threading.Thread(target=feed, args=("First sentence here.\nSecond one, in a pipe.\n",))
    writer.start()
    assert read_sentences(fifo) == ["First sentence here.", "Second one, in a pipe."]
    writer.join()
    writer = threading.Thread(target=feed, args=("sentence1,sentence2\na b,c d\n",))
    writer.start()
    assert read_pairs(fifo) == ([("a b", "c d")], None)
    writer.join()
    with pytest.raises(InputError, match="^pairs file '.*' is a folder, not a file; see here$"):
        read_user_file(str(tmp_path), "pairs file", "see here")


def test_read_pairs(tmp_path):
    (tmp_path / "p.csv").write_text("sentence1,sentence2,similarity\na b,c d,0.5\ne f,g h,-0.1\n")
    plist, sims = read_pairs(str(tmp_path / "p.csv"))
    assert plist == [("a b", "c d"), ("e f", "g h")] and sims.tolist() == [0.5, -0.1]
    (tmp_path / "q.csv").write_text("s1,s2\na,b\n")
    with pytest.raises(InputError, match="sentence1 and sentence2"):
        read_pairs(str(tmp_path / "q.csv"))
    # a TSV as STS-B writes it: a sentence may begin with a quote that does not close a field
    (tmp_path / "sts-b.tsv").write_text('genre\tscore\tsentence1\tsentence2\n'
                                        'news\t3.2\t"Hello," she said.\tShe greeted them.\n'
                                        'forum\t0.4\tRain today.\tStocks fell.\n')
    assert read_pairs(str(tmp_path / "sts-b.tsv")) == (
        [('"Hello," she said.', "She greeted them."), ("Rain today.", "Stocks fell.")], None)
    # and one as pandas writes it (to_csv(sep="\t")): a field with a quote in it is quoted whole
    import pandas as pd

    pd.DataFrame({"sentence1": ['He said "hi".', "plain"], "sentence2": ["x, y", '"Quoted," she said.']}).to_csv(
        tmp_path / "pandas.tsv", sep="\t", index=False)
    assert read_pairs(str(tmp_path / "pandas.tsv"))[0] == [('He said "hi".', "x, y"), ("plain", '"Quoted," she said.')]
    (tmp_path / "corpus.tsv").write_text('text\n"Hello," she said.\n"a ""b"" c"\n')
    assert read_sentences(str(tmp_path / "corpus.tsv")) == ['"Hello," she said.', 'a "b" c']
    # JSONL pairs: the same fields, rows counted from 1
    (tmp_path / "p.jsonl").write_text('{"sentence1": "a b", "sentence2": "c d", "similarity": 0.5}\n\n'
                                      '{"sentence1": "e f", "sentence2": "g h", "similarity": -0.1}\n')
    plist, sims = read_pairs(str(tmp_path / "p.jsonl"))
    assert plist == [("a b", "c d"), ("e f", "g h")] and sims.tolist() == [0.5, -0.1]
    (tmp_path / "q.jsonl").write_text('{"sentence1": "a", "sentence2": "b", "similarity": 0.5}\n'
                                      '{"sentence1": "c", "sentence2": "d"}\n')
    with pytest.raises(InputError, match="row 2 has a similarity that is not a number: None"):
        read_pairs(str(tmp_path / "q.jsonl"))
    (tmp_path / "r.jsonl").write_text('{"sentence1": "a", "sentence2": 5}\n')
    with pytest.raises(InputError, match="row 1 has a sentence that is not a string"):
        read_pairs(str(tmp_path / "r.jsonl"))
    # gzip-compressed files are read as the name without .gz says
    import gzip

    with gzip.open(tmp_path / "sts-b.tsv.gz", "wt", encoding="utf-8") as fh:
        fh.write((tmp_path / "sts-b.tsv").read_text())
    assert read_pairs(str(tmp_path / "sts-b.tsv.gz")) == read_pairs(str(tmp_path / "sts-b.tsv"))
    with gzip.open(tmp_path / "c.txt.gz", "wt", encoding="utf-8") as fh:
        fh.write("first line\nsecond line\n")
    assert read_sentences(str(tmp_path / "c.txt.gz")) == ["first line", "second line"]
    (tmp_path / "bad.txt.gz").write_bytes(gzip.compress(b"one\ntwo\n")[:12])
    with pytest.raises(InputError, match="bad.txt.gz"):
        read_sentences(str(tmp_path / "bad.txt.gz"))
    (tmp_path / "plain.txt.gz").write_text("not compressed\n")
    with pytest.raises(InputError, match="plain.txt.gz"):
        read_sentences(str(tmp_path / "plain.txt.gz"))
    (tmp_path / "sts.csv").write_text("sentence1,sentence2,similarity\na,b,4.8\nc,d,0.2\n")
    with pytest.raises(InputError, match=r"row 2 has similarity 4.8.*look like STS gold scores \(0 to 5\)"):
        read_pairs(str(tmp_path / "sts.csv"))
    (tmp_path / "r.csv").write_text("sentence1,sentence2,similarity\na,b,high\n")
    with pytest.raises(InputError, match="not a number"):
        read_pairs(str(tmp_path / "r.csv"))


def test_sentences_and_pairs_given_in_python_must_be_strings():
    # (numbers and None were embedded as their printed form, "1", "None")
    from stickytoken.selection import load_sentences

    assert pairs_mod.sentences_source(["a b", " a b ", "c d"])[0] == ["a b", "c d"]
    for bad in ([1, 2, 3], ["a", None]):
        with pytest.raises(InputError, match=r"sentences must hold strings; item \d is (int|NoneType)"):
            pairs_mod.sentences_source(bad)
        with pytest.raises(InputError, match="sentences must hold strings"):
            load_sentences(bad)
    with pytest.raises(InputError, match=r"pair 1 must hold two strings, got \(str, int\)"):
        pairs_mod.pairs_source([("a", "b"), ("c", 4)])
    assert pairs_mod.pairs_source([("a", "b", 0.5)])[0] == [("a", "b")]


def test_builtin_corpus_is_large_and_varied():
    sents = pairs_mod.builtin_sentences()
    assert len(sents) >= 1000
    lengths = [len(s.split()) for s in sents]
    assert min(lengths) >= 4 and max(lengths) <= 40


def test_alias_rows_are_each_shared_pairs_canonical_prefix_and_suffix_rows(rng):
    """score._alias_rows against the row-by-row definition: for each (shared pair q, canonical
    pair c), the rows of c's prefix and suffix (variant slots 0 and 1), ascending, measured
    against q; a canonical pair may serve several shared pairs."""
    from stickytoken.score import _alias_rows

    n = 500
    index = np.stack([rng.integers(0, 7, n), rng.integers(0, 6, n), rng.integers(0, 4, n), rng.integers(0, 9, n)],
                     axis=1).astype(np.int64)
    aliases = np.array([[3, 0], [4, 1], [5, 0], [2, 1]], dtype=np.int64)
    rows, refs = _alias_rows(index, aliases)
    want_rows, want_refs = [], []
    for q, c in aliases.tolist():
        for i in range(n):
            if index[i, 2] < 2 and index[i, 1] == c:
                want_rows.append(i)
                want_refs.append(q)
    assert rows.tolist() == want_rows and refs.tolist() == want_refs
    empty = _alias_rows(index, np.zeros((0, 2), np.int64))
    assert len(empty[0]) == 0 and len(empty[1]) == 0


def test_devices_are_checked_before_the_model_loads(monkeypatch):
    import torch

    from stickytoken.models import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("cpu:0") == resolve_device(" CPU ") == resolve_device(torch.device("cpu")) == "cpu"
    for name in ("cpu:1", "cuda:x", "gpu", "cuda:-1"):
        with pytest.raises(InputError, match="is not known"):
            resolve_device(name)
    if not torch.backends.mps.is_available():
        with pytest.raises(InputError, match="MPS is not available"):
            resolve_device("mps")
    if not torch.cuda.is_available():
        assert resolve_device(None) == "cpu"
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda:0")
    # a CUDA index the machine does not have, on a machine said to hold two devices
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == "cuda:1"
    assert resolve_device("cuda") == resolve_device("CUDA") == "cuda"
    assert resolve_device(torch.device("cuda", 1)) == "cuda:1"
    with pytest.raises(InputError, match=r"has 2 CUDA device\(s\): cuda:0 to cuda:1"):
        resolve_device("cuda:2")
