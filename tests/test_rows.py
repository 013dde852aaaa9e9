"""Variant rows (stickytoken/rows.py): the ragged row helpers, the builder against the
tokenizer called text by text, and worker processes giving exactly the rows, and the results,
that one process gives."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import stickytoken
from stickytoken import _core
from stickytoken.encoder import Encoder
from stickytoken.errors import InputError
from stickytoken.pairs import builtin_sentences
from stickytoken.rows import RowPool, Rows
from stickytoken.score import VariantSequences
from stickytoken.pairs import Pair

PARAMS = dict(sent_pair_num=2, insert_num=3, verification_sent_pair_num=4, shortlist_percent=10.0, seed=7)


def _same(a: Rows, b: Rows) -> None:
    np.testing.assert_array_equal(a.lengths, b.lengths)
    np.testing.assert_array_equal(a.flat, b.flat)
    np.testing.assert_array_equal(a.index, b.index)


def test_ragged_rows_round_trip(rng):
    lengths = rng.integers(0, 7, size=40).astype(np.int64)
    flat = rng.integers(0, 1000, size=int(lengths.sum())).astype(np.int64)
    rows = Rows(flat, lengths, np.arange(160, dtype=np.int64).reshape(40, 4))
    ids, mask = rows.padded(pad_id=-5)
    assert ids.shape == (40, int(lengths.max())) and mask.sum() == lengths.sum()
    assert np.all(ids[mask == 0] == -5)
    back = Rows.from_padded(ids, mask, lengths, rows.index)
    _same(back, rows)
    sel = rng.permutation(40)[:17]
    picked = rows.select(sel)
    off = rows.offsets
    for j, i in enumerate(sel.tolist()):
        assert picked.flat[picked.offsets[j]:picked.offsets[j + 1]].tolist() == flat[off[i]:off[i + 1]].tolist()
    np.testing.assert_array_equal(picked.index, rows.index[sel])
    _same(Rows.concat([rows.select(np.arange(0, 13)), rows.select(np.arange(13, 40))]), rows)
    assert len(Rows.concat([])) == 0 and rows.select(np.zeros(0, np.int64)).flat.size == 0
    with pytest.raises(InputError, match="longer than its padded array"):
        Rows.from_padded(ids[:, :1], mask[:, :1], lengths + 1)


@pytest.fixture(scope="module")
def bundled():
    return stickytoken.load_model(None, device="cpu")


def _builder(model, contrasts, insertion="text", insert_draws=1, prompt=""):
    enc = Encoder(model, prompt=prompt, workers=0)
    pairs = [Pair(c, c, 0.0) for c in contrasts]
    return VariantSequences(enc, pairs, insertion=insertion, insert_num=4, seed=11, insert_draws=insert_draws).builder


def test_text_rows_are_the_tokenizers_own(bundled):
    """Each text-mode row is what the tokenizer gives that variant string on its own (special
    tokens, prompt and truncation included), in the C core's row order."""
    contrasts = builtin_sentences()[:3] + ["word " * 300]       # the last one is truncated
    b = _builder(bundled, contrasts, prompt="query: ")
    tok = bundled.tokenizer
    ids = np.array([2003, 7592, 999], dtype=np.int64)
    texts = [tok.convert_ids_to_tokens(int(i)) for i in ids]
    rows = b.build(ids, texts)
    strings, index = _core.build_text_variants(texts, ids, contrasts, insert_num=4, variants=(0, 1, 2), seed=11)
    np.testing.assert_array_equal(rows.index, np.asarray(index))
    off = rows.offsets
    for i, s in enumerate(strings):
        want = tok.encode("query: " + s, truncation=True, max_length=b.max_length)
        assert rows.flat[off[i]:off[i + 1]].tolist() == want
    assert int(rows.lengths.max()) == b.max_length


@pytest.mark.parametrize("insertion,draws", [("text", 1), ("text", 3), ("token", 2)])
def test_worker_processes_build_the_same_rows(bundled, insertion, draws):
    contrasts = builtin_sentences()[:4]
    b = _builder(bundled, contrasts, insertion=insertion, insert_draws=draws)
    vocab_ids = np.array([1996, 2003, 2022, 7592, 999, 102, 2158], dtype=np.int64)
    texts = [bundled.tokenizer.convert_ids_to_tokens(int(i)) for i in vocab_ids]
    keep = np.ones((4, 2 + draws), bool)
    keep[1] = False          # a pair left out
    keep[:, 1] = False       # a variant slot left out
    keep[3, 0] = False       # one pair's prefix rows (shared with another pair)
    with RowPool(bundled.tokenizer, workers=3) as pool:
        for k in (None, keep):
            want = b.build(vocab_ids, texts, k)
            got = pool.submit(b, vocab_ids, texts, k).result()
            _same(got, want)
            if k is not None:
                assert {(p, v) for p, v in want.index[:, 1:3].tolist()} == {tuple(x) for x in np.argwhere(keep)}
        one = pool.submit(b, vocab_ids[:1], texts[:1]).result()   # fewer tokens than workers
        _same(one, b.build(vocab_ids[:1], texts[:1]))


def test_bad_worker_counts_are_refused(tiny_model):
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(InputError, match="workers must be"):
            Encoder(tiny_model, workers=bad)
    assert Encoder(tiny_model).workers == 0   # none by default on CPU


def test_workers_take_their_cores_from_torchs_threads(tiny_model, monkeypatch):
    """While row-building workers run, this process's torch threads leave their cores to them
    (cores - workers, at least 1, never more than before): on 2 cores, a worker and two torch
    threads made the CPU model ~1.6x slower (README, "Cores left to the workers").  Restored on close."""
    import torch

    from stickytoken import encoder as encoder_mod

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        monkeypatch.setattr(encoder_mod, "rank_cores", lambda: 4)
        for workers, want in ((1, 3), (3, 1), (6, 1)):
            enc = Encoder(tiny_model, workers=workers)
            assert torch.get_num_threads() == 4          # nothing changes until the workers start
            enc.row_pool
            assert torch.get_num_threads() == want
            enc.close()
            assert torch.get_num_threads() == 4
        enc = Encoder(tiny_model, workers=0)
        enc.row_pool
        enc.close()
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_detect_with_workers_is_bit_identical(tiny_model, tmp_path, one_torch_thread):
    """The same run with 0 and 2 row-building workers: the same scores, verification values and
    parts, bit for bit; a run interrupted under one resumes under the other."""
    corpus = builtin_sentences()[:80]
    a = stickytoken.detect(tiny_model, **PARAMS, sentences=corpus, output=str(tmp_path / "a"), workers=0,
                           show_progress_bar=False)
    b = stickytoken.detect(tiny_model, **PARAMS, sentences=corpus, output=str(tmp_path / "b"), workers=2,
                           show_progress_bar=False)
    ta = [json.loads(x) for x in open(tmp_path / "a" / "tokens.jsonl")]
    tb = [json.loads(x) for x in open(tmp_path / "b" / "tokens.jsonl")]
    assert ta == tb and len(ta) > 100
    assert [t.text for t in a.sticky_tokens] == [t.text for t in b.sticky_tokens]
    parts = sorted(os.listdir(tmp_path / "a" / "parts"))
    assert parts == sorted(os.listdir(tmp_path / "b" / "parts")) and parts
    for name in parts:
        pa, pb = np.load(tmp_path / "a" / "parts" / name), np.load(tmp_path / "b" / "parts" / name)
        assert sorted(pa.files) == sorted(pb.files)
        for k in pa.files:
            np.testing.assert_array_equal(pa[k], pb[k])


def test_cli_refuses_negative_workers(tmp_path):
    out = subprocess.run([sys.executable, "-m", "stickytoken", "detect", "--workers", "-1", "--output",
                          str(tmp_path / "run")], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "workers" in lines[0]
    assert not (tmp_path / "run").exists()


def test_default_workers(monkeypatch):
    """None on CPU; on CUDA the rank's cores but two (at most 16), and none when the main
    module is a script that spawned workers would run again."""
    from stickytoken import rows

    monkeypatch.setattr(rows.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(rows, "_main_is_safe", lambda: True)
    assert rows.default_workers("cpu") == 0
    assert rows.default_workers("cuda") == 14
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert rows.default_workers("cuda") == 2
    monkeypatch.setattr(rows, "_main_is_safe", lambda: False)
    assert rows.default_workers("cuda") == 0


def test_main_is_safe_only_for_the_cli_and_interactive(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text("from stickytoken.rows import _main_is_safe\nprint(_main_is_safe())\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "False"
    out = subprocess.run([sys.executable, "-c", "from stickytoken.rows import _main_is_safe; print(_main_is_safe())"],
                         capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "True"


def test_run_parts_pipelined_saves_in_order_and_resumes(tmp_path):
    """run_parts with chunks prepared ahead and host work finishing in another thread (as with
    workers): the values of the plain loop, parts on disk in chunk order; a failure in one
    chunk's host work keeps the parts before it, and the next call computes only the rest."""
    import threading
    import time as _time
    from concurrent.futures import ThreadPoolExecutor

    from stickytoken.runfolder import RunFolder, run_parts

    ids = np.arange(23, dtype=np.int64)
    want = np.stack([ids * 1.0, ids * 2.0, ids * 3.0], axis=1)
    prepared = []

    class Handle:
        def __init__(self, chunk):
            self.chunk = chunk

        def result(self):
            return self.chunk * 2

    def prepare(chunk):
        prepared.append(int(chunk[0]))
        return Handle(chunk)

    fail_at = {"chunk": 3}
    pool = ThreadPoolExecutor(1)
    order = []
    lock = threading.Lock()

    def compute(chunk, handle):
        doubled = handle.result()
        first = int(chunk[0])

        def host():
            _time.sleep(0.01 * (first % 3))
            if first // 5 == fail_at["chunk"]:
                raise RuntimeError("host work failed")
            with lock:
                order.append(first)
            return np.stack([chunk * 1.0, doubled * 1.0, chunk * 3.0], axis=1)
        return pool.submit(host)

    run = RunFolder(str(tmp_path / "r"), {"x": 1}, {})
    with pytest.raises(RuntimeError, match="host work failed"):
        run_parts(run, "s", ids, 5, compute, prepare=prepare, ahead=2)
    assert [run.has_part("s", c) for c in range(5)] == [True, True, True, False, False]
    assert prepared[:3] == [0, 5, 10]
    fail_at["chunk"] = -1
    got_ids, got = run_parts(run, "s", ids, 5, compute, prepare=prepare, ahead=2)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got, want)
    assert order[:3] == [0, 5, 10] and {15, 20} <= set(order[3:])   # the second call did only the rest
    plain = RunFolder(str(tmp_path / "p"), {"x": 1}, {})
    _, again = run_parts(plain, "s", ids, 5, lambda c: np.stack([c * 1.0, c * 2.0, c * 3.0], axis=1))
    np.testing.assert_array_equal(again, want)
    pool.shutdown()


def test_workers_start_from_a_thread_of_their_own(bundled):
    """``start`` hands the workers' start to a thread of its own (starting a worker holds up
    the thread that starts it until the new process has imported its main module), returns,
    and the workers then build the same rows; starting twice starts nothing more, and closing
    right after the start waits for it."""
    import threading

    b = _builder(bundled, builtin_sentences()[:2])
    ids = np.array([2003, 7592, 999], dtype=np.int64)
    texts = ["is", "hello", "!"]
    for close_at_once in (True, False):
        pool = RowPool(bundled.tokenizer, workers=2)
        spawned_in = []
        spawn = pool._pool._spawn_process

        def recording_spawn():
            spawned_in.append(threading.current_thread().name)
            spawn()

        pool._pool._spawn_process = recording_spawn
        pool.start()
        pool.start()
        if close_at_once:
            pool.close()
            assert set(spawned_in) <= {"stickytoken-workers-start"}
            continue
        got = pool.submit(b, ids, texts).result()
        pool.close()
        _same(got, b.build(ids, texts))
        assert 1 <= len(spawned_in) <= 2   # (the first submit may start one itself, if it comes first)


def test_a_dead_worker_is_one_clear_error(bundled):
    """A worker killed mid-run (say by the out-of-memory killer) gives a StickyTokenError that
    says how to go on, not a traceback from concurrent.futures."""
    import signal

    from stickytoken.errors import StickyTokenError

    b = _builder(bundled, builtin_sentences()[:2])
    ids = np.array([2003, 7592], dtype=np.int64)
    texts = ["is", "hello"]
    with RowPool(bundled.tokenizer, workers=2) as pool:
        pool.submit(b, ids, texts).result()
        for pid in list(pool._pool._processes):
            os.kill(pid, signal.SIGKILL)
        for _ in range(2):   # whether the pool notices at the next submit or at its result
            with pytest.raises(StickyTokenError, match="worker process died.*--workers 0.*resumes"):
                pool.submit(b, ids, texts).result()


def test_cli_detect_with_workers(tiny_path, tmp_path):
    """`python -m stickytoken detect --workers 2`, as a user runs it: the workers start from the
    command line's process (spawned, the CLI's main module guarded) and the run folder holds
    the same tokens as with --workers 0."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(builtin_sentences()[:80]) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    outs = {}
    for w in (0, 2):
        out = tmp_path / f"w{w}"
        proc = subprocess.run([sys.executable, "-m", "stickytoken", "detect", "--model", tiny_path, "--sent-pair-num", "2",
                               "--insert-num", "3", "--verification-sent-pair-num", "4", "--shortlist-percent", "10",
                               "--seed", "7", "--sentences", str(corpus), "--workers", str(w), "--output", str(out),
                               "--json", "--quiet"], capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs[w] = json.loads(proc.stdout)
        run = json.load(open(out / "run.json"))
        assert run["profile"]["scoring"]["workers"] == w
        assert (run["profile"]["scoring"]["rows_wait"] > 0) == (w > 0)
        assert ("host_thread" in run["profile"]["scoring"]) == (w > 0)
        assert run["profile"]["scoring"]["save"] > 0   # (parts are written either way)
        assert run["profile"]["write_results"] > 0
        assert (run["profile"]["scoring"]["host_wait"] > 0) == (w > 0)
        if w:
            assert run["profile"]["scoring"]["host_thread"] > 0
        load = run["profile"]["load"]   # where the load stage's seconds went, adding up to it
        assert list(load) == ["corpus", "device", "import", "model", "encoder", "run_folder"]
        assert sum(load.values()) == pytest.approx(run["timings"]["load"], abs=0.01)
    assert open(tmp_path / "w0" / "tokens.jsonl").read() == open(tmp_path / "w2" / "tokens.jsonl").read()
    assert outs[0]["sticky_tokens"] == outs[2]["sticky_tokens"]


def test_tokenize_rows_matches_the_tokenizer_call(bundled, tiny_model):
    """The fast path (the tokenizers backend called directly) gives the ids of the tokenizer's
    own call: special tokens, prompt, truncation, accents and CJK; a slow tokenizer takes the call."""
    from stickytoken.tokenizing import tokenize_rows

    texts = ["Café déjà vu", "中文 text, mixed!", "word " * 300, "", "  spaces  ", "[CLS] literal [SEP]"]
    for tok in (bundled.tokenizer, tiny_model.tokenizer):
        for prompt, max_length in (("", 256), ("query: ", 16)):
            rows = tokenize_rows(tok, texts, prompt, max_length)
            want = tok([prompt + t for t in texts], truncation=True, max_length=max_length)["input_ids"]
            off = rows.offsets
            assert [rows.flat[off[i]:off[i + 1]].tolist() for i in range(len(texts))] == want


AWKWARD_CONTRASTS = ["Café, déjà-vu! (naïve) résumé.", "中文 text, mixed：全角！", "tab\there and\nnewline",
                     "two  spaces   and trailing ", " leading space", "e\u0301 combining \u0301mark",
                     "[MASK] literal [SEP] and [UNK]x", "ctrl\x00char \ufffd", "x" * 120 + " long word",
                     "It's 3.14 o'clock... #hash @at $5 50% {b} [c] <d>", "Ünïcödé ΣΑΣ straße ﬁ"]


def _every_row(tok, texts, prompt, max_length, **kw):
    from stickytoken.tokenizing import tokenize_rows

    rows = tokenize_rows(tok, texts, prompt, max_length, **kw)
    off = rows.offsets
    return [rows.flat[off[i]:off[i + 1]].tolist() for i in range(len(texts))]


@pytest.mark.parametrize("side", ["right", "left"])
def test_spliced_rows_are_the_tokenizers_own_on_every_row(bundled, side):
    """Tokenizing a space-separated piece at a time (tokenizing._Splicer) gives, row for row, the
    tokenizer's own ids: every kind of vocabulary entry (special tokens, punctuation, CJK,
    accents, ## pieces) in every variant of awkward contrast sentences, truncated on either
    side, with and without a prompt; and it is used, not silently turned off, with the C core's
    WordPiece splitting the plain words (``tokenizing._wordpiece``)."""
    import copy

    from stickytoken.tokenizing import _splicer
    from stickytoken.vocab import build_vocabulary

    tok = copy.deepcopy(bundled.tokenizer)
    tok.truncation_side = side
    vocab = build_vocabulary(tok)
    avail = np.asarray(vocab.available_ids)
    rng = np.random.default_rng(3)
    ids = np.unique(np.r_[rng.choice(avail, 150, replace=False), [i for i in (0, 100, 101, 102, 103) if i in avail],
                          avail[:20], avail[-20:]]).astype(np.int64)
    texts = [vocab.texts[i] for i in ids.tolist()]
    contrasts = builtin_sentences()[:2] + AWKWARD_CONTRASTS
    strings, _ = _core.build_text_variants(texts, ids, contrasts, insert_num=4, variants=(0, 1, 2), seed=5)
    strings = list(strings) + texts + contrasts
    for prompt, max_length in (("", 256), ("query: ", 12)):
        assert _splicer(tok, max_length) is not None
        got = _every_row(tok, strings, prompt, max_length)
        assert _splicer(tok, max_length) is not None   # not turned off by its own check
        assert _splicer(tok, max_length).wordpiece is not None
        want = tok([prompt + s for s in strings], truncation=True, max_length=max_length)["input_ids"]
        bad = [i for i, (g, w) in enumerate(zip(got, want)) if g != w]
        assert not bad, (len(bad), repr(strings[bad[0]]), got[bad[0]], want[bad[0]])
        assert got == _every_row(tok, strings, prompt, max_length, splice=False)


def test_tokenizers_where_spaces_belong_to_words_are_not_spliced(tiny_model, bytelevel_tokenizer,
                                                                 sentencepiece_tokenizer):
    """Byte-level and '▁' tokenizers keep a word's space with it, so they tokenize whole texts;
    the tiny model's WordPiece tokenizer is spliced; each gives the tokenizer's own ids."""
    from stickytoken.tokenizing import _splicer

    texts = ["The cat sat.", "tok" * 5 + "The cat", "The cat sat." + " tok" * 3, "a tok b  tok c"]
    for tok, spliced in ((tiny_model.tokenizer, True), (bytelevel_tokenizer, False), (sentencepiece_tokenizer, False)):
        assert (_splicer(tok, 64) is not None) == spliced
        want = tok(texts, truncation=True, max_length=64)["input_ids"]
        assert _every_row(tok, texts, "", 64) == want


@pytest.mark.parametrize("cfg, safe", [
    ({"normalizer": {"type": "BertNormalizer"}, "pre_tokenizer": {"type": "BertPreTokenizer"},
      "model": {"type": "WordPiece"}}, True),
    ({"normalizer": {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "Lowercase"}]},
      "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, {"type": "Digits"}]},
      "model": {"type": "WordLevel"}}, True),
    ({"normalizer": None, "pre_tokenizer": {"type": "Metaspace"}, "model": {"type": "Unigram"}}, False),
    ({"normalizer": None, "pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE"}}, False),
    ({"normalizer": {"type": "Replace"}, "pre_tokenizer": {"type": "Whitespace"}, "model": {"type": "BPE"}}, False),
    ({"normalizer": None, "pre_tokenizer": {"type": "Punctuation"}, "model": {"type": "BPE"}}, False),
    ({"normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "model": {"type": "BPE", "dropout": 0.1}}, False),
    ({"normalizer": None, "pre_tokenizer": None, "model": {"type": "WordPiece"}}, False),
])
def test_which_tokenizers_may_be_spliced(cfg, safe):
    from stickytoken.tokenizing import _splice_safe

    assert _splice_safe(cfg) == safe


def test_a_splice_that_disagrees_with_the_tokenizer_is_turned_off(bundled, caplog, monkeypatch):
    """The rows' own check: should a piece's ids ever differ from the tokenizer's, the rows
    come from whole texts, with a warning, and the splice stays off for that tokenizer."""
    import copy

    from stickytoken.tokenizing import _splicer

    tok = copy.deepcopy(bundled.tokenizer)
    sp = _splicer(tok, 32)
    sp.cache["cat"] = [7]   # a wrong entry, as a tokenizer the rules missed would give
    texts = ["the cat sat", "a cat", "cat"]
    with caplog.at_level("WARNING"):
        assert _every_row(tok, texts, "", 32) == tok(texts, truncation=True, max_length=32)["input_ids"]
    assert "the splice path" in caplog.text and _splicer(tok, 32) is None


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _gone(pids, within: float) -> list[int]:
    """Those of ``pids`` still alive (not zombies) after ``within`` seconds at the most."""
    import time

    def alive(p):
        try:
            with open(f"/proc/{p}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    end = time.time() + within
    while time.time() < end and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_a_stopped_command_leaves_no_worker_behind(thin_path, tmp_path):
    """`kill PID` (SIGTERM) stops a run with workers as Ctrl-C does: exit 143, parts kept, the
    workers stopped with it.  After `kill -9`, which the run cannot see, each worker ends
    itself within seconds (it watches its parent): none is left waiting for work forever."""
    import signal
    import time

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "STICKYTOKEN_CHUNK_ROWS": "2048"}
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "stickytoken", "detect", "--model", thin_path, "--max-tokens", "3000",
           "--workers", "2", "--output", str(out), "--quiet"]
    for sig, part in ((signal.SIGTERM, 1), (signal.SIGKILL, 3)):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        while not (out / "parts" / f"score-{part:06d}.npz").exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.time() - t0 < 300
            time.sleep(0.1)
        kids = _children(proc.pid)
        assert len(kids) >= 2   # the two workers (and multiprocessing's resource tracker)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        if sig == signal.SIGTERM:
            assert proc.returncode == 143 and "terminated (SIGTERM)" in err and "resume" in err, err[-2000:]
            assert "Traceback" not in err
        else:
            assert proc.returncode == -signal.SIGKILL
        assert _gone(kids, within=10) == [], sig
    assert not (out / "results.json").exists() and (out / "parts" / "score-000003.npz").exists()


def test_more_workers_than_cores_are_cut_to_the_cores(tiny_model, caplog):
    from stickytoken.rows import rank_cores

    cores = rank_cores()
    with caplog.at_level("WARNING", logger="stickytoken"):
        enc = Encoder(tiny_model, workers=cores + 5)
    assert enc.workers == cores
    assert f"{cores + 5} row-building workers asked for, on {cores} CPU cores; using {cores}" in caplog.text
