"""Insertion kernels of stickytoken._core: token batches, text variants, length order.

Pins: rows equal the NumPy/Python twin's (same splitmix64 stream, so same insert positions)
for random ragged bases, every variant subset, frames and truncation; the insert positions
for a fixed (seed, token, pair) are pinned to literal values; a row does not depend on what
else is in the batch; text variants follow Python's str.split / ' '.join exactly, unicode
whitespace included; length_order is numpy's stable argsort.
"""
import gc
import os
import sys

import numpy as np
import pytest

from stickytoken import _core as C
from stickytoken import _reference as R

EMPTY = np.zeros(0, np.int64)


def ragged(rng, P, max_len, low=1000, high=2000):
    lens = rng.integers(0, max_len + 1, P)
    offsets = np.zeros(P + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    return rng.integers(low, high, int(offsets[-1])).astype(np.int64), offsets


def assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype == np.int64
        assert g.shape == w.shape
        np.testing.assert_array_equal(g, w)


def test_constants():
    assert (C.PREFIX, C.SUFFIX, C.INSERT) == (0, 1, 2)


# ---- the generator ----------------------------------------------------------------------------
def test_generator_stream_and_positions_are_pinned():
    r = R.SplitMix64(42, 1000, 0)
    assert [r.next() for _ in range(3)] == [12360305002117935715, 11314266278219191049, 11531793480608335134]
    r = R.SplitMix64(42, 1000, 0)
    assert [r.uniform(4 + k) for k in range(8)] == [0, 5, 4, 4, 2, 1, 6, 10]
    r = R.SplitMix64(42, 1000, 3)
    assert [r.uniform(4 + k) for k in range(8)] == [2, 0, 6, 4, 3, 7, 8, 9]
    # the C core draws the same positions: base of 4 ids, token 1000, pair 0, seed 42
    ids, mask, lengths, index = C.build_token_batch(
        np.arange(10, 14), np.array([0, 4]), np.array([1000]), insert_num=8, variants=[C.INSERT],
        frame_prefix=EMPTY, frame_suffix=EMPTY, pad_id=-1, max_length=100, seed=42)
    cur = [10, 11, 12, 13]
    for k, pos in enumerate([0, 5, 4, 4, 2, 1, 6, 10]):
        cur.insert(pos, 1000)
        np.testing.assert_array_equal(ids[k, :len(cur)], cur)
        assert lengths[k] == len(cur) == k + 5


def test_uniform_is_unbiased_and_in_range():
    r = R.SplitMix64(7, 1, 2)
    draws = np.array([r.uniform(4) for _ in range(20000)])
    assert draws.min() == 0 and draws.max() == 4
    counts = np.bincount(draws)
    chi2 = ((counts - 4000) ** 2 / 4000).sum()
    assert chi2 < 25   # 4 dof: p < 1e-4 for a fair generator
    r = R.SplitMix64(2**64 - 1, 2**64 - 5, 0)
    assert [r.uniform(2**64 - 1) for _ in range(2)] == [494536342532936093, 16873351295653588650]


# ---- build_token_batch ------------------------------------------------------------------------
@pytest.mark.parametrize("variants", [(0, 1, 2), (2,), (1, 0), (2, 2)])
@pytest.mark.parametrize("K", [1, 3, 8])
def test_token_batch_matches_twin(rng, variants, K):
    base_ids, offsets = ragged(rng, P=int(rng.integers(1, 6)), max_len=12)
    tokens = rng.integers(0, 30000, int(rng.integers(1, 5))).astype(np.int64)
    kw = dict(insert_num=K, variants=variants, frame_prefix=np.array([101]), frame_suffix=np.array([102]),
              pad_id=0, max_length=int(rng.integers(2, 30)), seed=int(rng.integers(0, 2**63)))
    got = C.build_token_batch(base_ids, offsets, tokens, **kw)
    assert_same(got, R.build_token_batch(base_ids, offsets, tokens, **kw))
    ids, mask, lengths, index = got
    assert (mask.sum(axis=1) == lengths).all()
    assert (lengths <= kw["max_length"]).all()
    assert (ids[:, 0] == 101).all()
    np.testing.assert_array_equal(ids[np.arange(len(ids)), lengths - 1], 102)   # frame kept when cut


def test_token_batch_row_order_and_layout():
    ids, mask, lengths, index = C.build_token_batch(
        np.array([7, 8, 9]), np.array([0, 1, 3]), np.array([50, 60]), insert_num=2,
        frame_prefix=np.array([1]), frame_suffix=np.array([2]), pad_id=-9, max_length=64, seed=0)
    assert ids.shape == (2 * 2 * 3 * 2, 2 + 2 + 2)
    np.testing.assert_array_equal(index[:6], [[0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 1, 1], [0, 0, 1, 2],
                                              [0, 0, 2, 1], [0, 0, 2, 2]])
    np.testing.assert_array_equal(index[12], [1, 0, 0, 1])
    np.testing.assert_array_equal(ids[0], [1, 50, 7, 2, -9, -9])
    np.testing.assert_array_equal(ids[1], [1, 50, 50, 7, 2, -9])
    np.testing.assert_array_equal(ids[3], [1, 7, 50, 50, 2, -9])
    np.testing.assert_array_equal(ids[7], [1, 50, 50, 8, 9, 2])     # pair 1, prefix, k=2
    np.testing.assert_array_equal(mask[0], [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(lengths[:6], [4, 5, 4, 5, 4, 5])


def test_token_batch_row_does_not_depend_on_the_rest_of_the_batch(rng):
    base_ids, offsets = ragged(rng, P=4, max_len=10)
    tokens = np.array([11, 22, 33, 44])
    kw = dict(insert_num=5, frame_prefix=EMPTY, frame_suffix=EMPTY, pad_id=0, max_length=40, seed=9)
    full = C.build_token_batch(base_ids, offsets, tokens, **kw)
    alone = C.build_token_batch(base_ids, offsets, tokens[2:3], **kw)
    sel = full[3][:, 0] == 2
    width = alone[0].shape[1]
    np.testing.assert_array_equal(full[0][sel][:, :width], alone[0])
    np.testing.assert_array_equal(full[2][sel], alone[2])


def test_token_batch_truncation_and_empty_edges(rng):
    # content cut from the end, frame kept; max_length == frame leaves only the frame
    ids, _, lengths, _ = C.build_token_batch(
        np.arange(20), np.array([0, 20]), np.array([5]), insert_num=1, variants=[C.SUFFIX],
        frame_prefix=np.array([1]), frame_suffix=np.array([2]), pad_id=0, max_length=6, seed=1)
    np.testing.assert_array_equal(ids, [[1, 0, 1, 2, 3, 2]])
    ids, _, lengths, _ = C.build_token_batch(
        np.arange(3), np.array([0, 3]), np.array([5]), insert_num=2, frame_prefix=np.array([1]),
        frame_suffix=np.array([2]), pad_id=0, max_length=2, seed=1)
    assert (ids == [1, 2]).all() and (lengths == 2).all()
    # no tokens, no pairs, no variants, empty bases
    for base, off, tok, var in [(EMPTY, np.array([0]), np.array([5]), (0, 1, 2)),
                                (np.arange(3), np.array([0, 3]), EMPTY, (0, 1, 2)),
                                (np.arange(3), np.array([0, 3]), np.array([5]), ())]:
        got = C.build_token_batch(base, off, tok, insert_num=3, variants=var, frame_prefix=EMPTY,
                                  frame_suffix=EMPTY, pad_id=0, max_length=10, seed=1)
        assert [a.shape for a in got] == [(0, 0), (0, 0), (0,), (0, 4)]
    kw = dict(insert_num=3, frame_prefix=EMPTY, frame_suffix=EMPTY, pad_id=0, max_length=10, seed=1)
    assert_same(C.build_token_batch(EMPTY, np.array([0, 0, 0]), np.array([5]), **kw),
                R.build_token_batch(EMPTY, np.array([0, 0, 0]), np.array([5]), **kw))


def test_token_batch_accepts_strided_and_torch_inputs(rng):
    torch = pytest.importorskip("torch")
    base_ids, offsets = ragged(rng, P=3, max_len=8)
    tokens = np.array([4, 5, 6, 7, 8, 9])
    kw = dict(insert_num=4, frame_prefix=np.array([101, 7])[::-1], frame_suffix=np.array([102]),
              pad_id=0, max_length=30, seed=3)
    want = R.build_token_batch(base_ids, offsets, tokens[::2], **kw)
    assert_same(C.build_token_batch(torch.from_numpy(base_ids), torch.from_numpy(offsets),
                                    torch.from_numpy(tokens)[::2], **kw), want)


def test_token_batch_errors():
    ok = dict(insert_num=2, frame_prefix=EMPTY, frame_suffix=EMPTY, pad_id=0, max_length=8, seed=1)
    args = (np.arange(3), np.array([0, 3]), np.array([5]))
    with pytest.raises(TypeError, match=r"missing required keyword-only argument 'seed'"):
        C.build_token_batch(*args, **{k: v for k, v in ok.items() if k != "seed"})
    with pytest.raises(TypeError):
        C.build_token_batch(*args, 2, **ok)
    with pytest.raises(ValueError, match=r"insert_num must be >= 1, got 0"):
        C.build_token_batch(*args, **{**ok, "insert_num": 0})
    with pytest.raises(TypeError, match=r"insert_num must be an int, got float"):
        C.build_token_batch(*args, **{**ok, "insert_num": 2.0})
    with pytest.raises(ValueError, match=r"variants\[1\] must be 0 \(PREFIX\), 1 \(SUFFIX\) or 2 \(INSERT\), got 3"):
        C.build_token_batch(*args, **{**ok, "variants": [0, 3]})
    with pytest.raises(TypeError, match=r"variants must be a sequence of int"):
        C.build_token_batch(*args, **{**ok, "variants": 2})
    with pytest.raises(ValueError, match=r"max_length \(1\) must be at least len\(frame_prefix\) \+ len\(frame_suffix\) = 2"):
        C.build_token_batch(*args, **{**ok, "frame_prefix": np.array([1]), "frame_suffix": np.array([2]),
                                      "max_length": 1})
    with pytest.raises(ValueError, match=r"base_offsets\[1\] = 4 is out of range or decreasing"):
        C.build_token_batch(np.arange(3), np.array([0, 4]), np.array([5]), **ok)
    with pytest.raises(ValueError, match=r"base_offsets\[2\] = 1 is out of range or decreasing"):
        C.build_token_batch(np.arange(3), np.array([0, 2, 1]), np.array([5]), **ok)
    with pytest.raises(ValueError, match=r"base_offsets must hold P \+ 1 >= 1 entries"):
        C.build_token_batch(np.arange(3), EMPTY, np.array([5]), **ok)
    with pytest.raises(ValueError, match=r"token_ids must be an int64 array, got int32"):
        C.build_token_batch(np.arange(3), np.array([0, 3]), np.array([5], np.int32), **ok)
    with pytest.raises(ValueError, match=r"base_ids must be 1-D, got 2-D"):
        C.build_token_batch(np.zeros((1, 3), np.int64), np.array([0, 3]), np.array([5]), **ok)
    with pytest.raises(TypeError, match=r"frame_prefix must be a NumPy array, a buffer or a DLPack tensor, got list"):
        C.build_token_batch(*args, **{**ok, "frame_prefix": [101]})


def test_token_batch_negative_and_huge_seeds_wrap_modulo_2_64(rng):
    base_ids, offsets = ragged(rng, P=2, max_len=6)
    kw = dict(insert_num=4, variants=[2], frame_prefix=EMPTY, frame_suffix=EMPTY, pad_id=0, max_length=20)
    a = C.build_token_batch(base_ids, offsets, np.array([3, -4]), seed=-1, **kw)
    b = C.build_token_batch(base_ids, offsets, np.array([3, -4]), seed=2**64 - 1, **kw)
    c = C.build_token_batch(base_ids, offsets, np.array([3, -4]), seed=np.int64(-1), **kw)
    assert_same(a, b)
    assert_same(a, c)
    assert_same(a, R.build_token_batch(base_ids, offsets, np.array([3, -4]), seed=-1, **kw))


def test_token_batch_at_scale_matches_twin_sample(rng):
    # the caller's size: 256 tokens x 5 pairs x 3 variants x 8
    base_ids, offsets = ragged(rng, P=5, max_len=30)
    tokens = rng.integers(0, 30000, 256).astype(np.int64)
    kw = dict(insert_num=8, frame_prefix=np.array([101]), frame_suffix=np.array([102]), pad_id=0,
              max_length=512, seed=42)
    got = C.build_token_batch(base_ids, offsets, tokens, **kw)
    assert got[0].shape[0] == 256 * 5 * 3 * 8
    want = R.build_token_batch(base_ids, offsets, tokens[250:], **kw)
    n = 6 * 5 * 3 * 8
    width = want[0].shape[1]
    np.testing.assert_array_equal(got[0][-n:, :width], want[0])
    np.testing.assert_array_equal(got[2][-n:], want[2])


# ---- build_text_variants ----------------------------------------------------------------------
BASES = ["a b  c", " héllo\u3000wörld \xa0", "", "one", "tab\tsep\nnew\u2028line", "emoji 😀 here"]
TOKENS = ["x", "yy ", "", "##s", "\u2581the", "😀", " ", "[unused1]"]


@pytest.mark.parametrize("variants", [(0, 1, 2), (2,), (1,)])
def test_text_variants_match_twin(rng, variants):
    T = int(rng.integers(1, len(TOKENS) + 1))
    tokens = list(rng.choice(TOKENS, T, replace=False))
    ids = rng.integers(-5, 50000, T).astype(np.int64)
    kw = dict(insert_num=int(rng.integers(1, 9)), variants=variants, seed=int(rng.integers(0, 2**32)))
    got_texts, got_index = C.build_text_variants(tokens, ids, BASES, **kw)
    want_texts, want_index = R.build_text_variants(tokens, ids, BASES, **kw)
    assert got_texts == want_texts
    np.testing.assert_array_equal(got_index, want_index)


def test_text_variants_known_strings():
    texts, index = C.build_text_variants(["X"], np.array([1000]), ["a b  c"], insert_num=2, seed=42)
    assert texts[:4] == ["Xa b  c", "XXa b  c", "a b  cX", "a b  cXX"]
    assert texts[4].split().count("X") == 1 and texts[5].split().count("X") == 2
    assert texts[4].replace("X", "").split() == ["a", "b", "c"]
    np.testing.assert_array_equal(index[:, 2], [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(index[:, 3], [1, 2, 1, 2, 1, 2])


def test_text_and_token_inserts_share_the_stream():
    # a base of four one-token words: the word positions equal the token positions
    texts, _ = C.build_text_variants(["T"], np.array([1000]), ["a b c d"], insert_num=8, variants=[2], seed=42)
    cur = ["a", "b", "c", "d"]
    for k, pos in enumerate([0, 5, 4, 4, 2, 1, 6, 10]):
        cur.insert(pos, "T")
        assert texts[k] == " ".join(cur)


def test_text_variants_lone_surrogates_and_errors():
    texts, _ = C.build_text_variants(["\ud800"], np.array([1]), ["a \udfff b"], insert_num=2, seed=0)
    want, _ = R.build_text_variants(["\ud800"], np.array([1]), ["a \udfff b"], insert_num=2, seed=0)
    assert texts == want
    with pytest.raises(ValueError, match=r"token_ids must have one id per token text \(2\), got 1"):
        C.build_text_variants(["a", "b"], np.array([1]), ["c"], insert_num=1, seed=0)
    with pytest.raises(TypeError, match=r"base_texts must be a sequence of str, got str"):
        C.build_text_variants(["a"], np.array([1]), "c", insert_num=1, seed=0)
    with pytest.raises(TypeError, match=r"token_texts\[1\] must be str, got int"):
        C.build_text_variants(["a", 3], np.array([1, 2]), ["c"], insert_num=1, seed=0)
    with pytest.raises(TypeError, match=r"missing required keyword-only argument 'insert_num'"):
        C.build_text_variants(["a"], np.array([1]), ["c"], seed=0)
    texts, index = C.build_text_variants([], EMPTY, ["c"], insert_num=3, seed=0)
    assert texts == [] and index.shape == (0, 4)


# ---- length_order -----------------------------------------------------------------------------
@pytest.mark.parametrize("spread", [3, 600, 2**62])
def test_length_order_is_numpy_stable_argsort(rng, spread):
    for n in (0, 1, 2, 17, 5000):
        lengths = rng.integers(-spread // 3, spread, n).astype(np.int64)
        got = C.length_order(lengths)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, np.argsort(lengths, kind="stable"))
        np.testing.assert_array_equal(C.length_order(lengths[::-1]), np.argsort(lengths[::-1], kind="stable"))
    extreme = np.array([2**63 - 1, -2**63, 0, -2**63, 2**63 - 1])
    np.testing.assert_array_equal(C.length_order(extreme), [1, 3, 2, 0, 4])


# ---- hygiene ----------------------------------------------------------------------------------
def test_refcounts_and_memory_flat(rng):
    base_ids, offsets = ragged(rng, P=5, max_len=10)
    tokens = rng.integers(0, 30000, 16).astype(np.int64)
    fp, fs = np.array([101]), np.array([102])
    texts, bases = ["ab", "c d"], ["one two", "three"]
    tid = np.array([1, 2])
    args = [base_ids, offsets, tokens, fp, fs, texts, bases, tid]
    counts = [sys.getrefcount(a) for a in args]
    before = [a.copy() for a in args]

    def once():
        C.build_token_batch(base_ids, offsets, tokens, insert_num=8, frame_prefix=fp, frame_suffix=fs,
                            pad_id=0, max_length=64, seed=1)
        C.build_text_variants(texts, tid, bases, insert_num=8, seed=1)
        C.length_order(tokens)
        try:
            C.build_token_batch(base_ids, offsets[::-1], tokens, insert_num=8, frame_prefix=fp,
                                frame_suffix=fs, pad_id=0, max_length=64, seed=1)
        except ValueError:
            pass

    for _ in range(20):
        once()
    gc.collect()
    with open("/proc/self/statm") as f:
        start = int(f.read().split()[1])
    for _ in range(500):
        once()
    gc.collect()
    with open("/proc/self/statm") as f:
        grown = (int(f.read().split()[1]) - start) * os.sysconf("SC_PAGE_SIZE")
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):   # ASan's quarantine holds freed memory
        assert grown < 4 * 2**20
    assert [sys.getrefcount(a) for a in args] == counts
    for b, a in zip(before, args):
        assert (np.asarray(a) == np.asarray(b)).all() if isinstance(a, np.ndarray) else a == b
