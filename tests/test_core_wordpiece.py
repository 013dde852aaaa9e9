"""The C core's WordPiece (``_core.WordPiece``), against its Python twin (the tokenizers
library's search as written there) and against the real all-MiniLM-L6-v2 tokenizer itself.

Pins: greedy longest match, the continuation prefix, capitals, unknown positions and words past
max_chars becoming [unk_id], words that are not plain ASCII left to the caller (-1), bad
arguments raising; and, on the bundled tokenizer, the pieces a full run's variant texts glue
together ("replayreplayThe") split exactly as the tokenizer splits them.
"""
import copy
import random

import numpy as np
import pytest

from stickytoken import _core as C
from stickytoken import _reference as R

TOY = {"[UNK]": 0, "a": 1, "ab": 2, "abc": 3, "##b": 4, "##c": 5, "##bc": 6, "x": 7, "##x": 8, "1": 9, "##1": 10,
       "é": 11}


def both(vocab, words, **kw):
    kw.setdefault("unk_id", vocab.get("[UNK]", 0))
    got = C.WordPiece(vocab, **kw).encode(words)
    want = R.WordPiece(vocab, **kw).encode(words)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[0].dtype == got[1].dtype == np.int64
    return [list(map(int, got[0][a:b])) if c >= 0 else None
            for a, b, c in zip(np.r_[0, np.cumsum(np.maximum(got[1], 0))][:-1],
                               np.cumsum(np.maximum(got[1], 0)), got[1])]


def test_longest_match_first_and_the_prefix():
    assert both(TOY, ["abc", "abcbc", "abbc", "ax", "xx", "a1", "", "ABC"]) == [
        [3], [3, 6], [2, 6], [1, 8], [7, 8], [1, 10], [], [3]]


def test_unknown_positions_long_words_and_case():
    assert both(TOY, ["ad", "da", "abcd"]) == [[0], [0], [0]]   # one unknown position: the whole word
    assert both(TOY, ["x" * 5], max_chars=5) == [[7, 8, 8, 8, 8]]
    assert both(TOY, ["x" * 6], max_chars=5) == [[0]]
    assert both(TOY, ["ABC"], lowercase=False) == [[0]]
    assert both({**TOY, "A": 12}, ["Ab"], lowercase=False) == [[12, 4]]


def test_words_that_are_not_plain_ascii_are_left_to_the_caller():
    assert both(TOY, ["é", "a-b", "a b", "ab\u0301", "ab", "\t"]) == [None, None, None, None, [2], None]


def test_random_words_against_the_twin():
    rng = random.Random(0)
    alphabet = "abcxyz1AB"
    vocab = {"[UNK]": 0}
    for _ in range(300):
        w = "".join(rng.choice(alphabet.lower()) for _ in range(rng.randint(1, 4)))
        vocab.setdefault(w if rng.random() < 0.5 else "##" + w, len(vocab))
    words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(3000)]
    both(vocab, words)
    both(vocab, words, lowercase=False, max_chars=12)
    both(vocab, words, prefix="@@")


def test_bad_arguments():
    with pytest.raises(TypeError, match="vocab must be a dict"):
        C.WordPiece([("a", 1)], unk_id=0)
    with pytest.raises(TypeError, match="unk_id"):
        C.WordPiece(TOY)
    with pytest.raises(ValueError, match=r"vocab\['b'\] = -3: ids must be >= 0"):
        C.WordPiece({"a": 1, "b": -3}, unk_id=0)
    with pytest.raises(ValueError, match="unk_id must be >= 0"):
        C.WordPiece(TOY, unk_id=-1)
    with pytest.raises(ValueError, match="max_chars must be >= 0"):
        C.WordPiece(TOY, unk_id=0, max_chars=-1)
    with pytest.raises(TypeError):
        C.WordPiece({1: 1}, unk_id=0)
    with pytest.raises(TypeError):
        C.WordPiece({"a": 1.5}, unk_id=0)
    with pytest.raises(TypeError):
        C.WordPiece(TOY, unk_id=0, prefix=b"##")
    wp = C.WordPiece(TOY, unk_id=0)
    with pytest.raises(TypeError):
        wp.encode("abc")   # a str is not a sequence of words
    with pytest.raises(TypeError):
        wp.encode([b"abc"])
    assert (wp.unk_id, wp.max_chars, wp.lowercase) == (0, 100, True)
    assert "12 entries" in repr(wp)


def test_entries_that_all_carry_the_prefix():
    """Each goes under both roots (more trie nodes than bytes: the allocation must count both)."""
    vocab = {"##" + "".join(random.Random(i).choices("abcdefgh", k=12)): i for i in range(200)}
    vocab["a"] = 200
    both(vocab, ["abcdefgh" * 2, "a", "b"] + [w[2:] for w in vocab if w.startswith("##")][:20], unk_id=999)


def test_an_empty_vocabulary_makes_every_word_unknown():
    assert both({}, ["a", "", "zz"], unk_id=5) == [[5], [], [5]]


@pytest.fixture(scope="module")
def bundled():
    import json

    from transformers import AutoTokenizer

    from stickytoken.models import default_model_path
    from stickytoken.tokenizing import _fast_backend, _wordpiece

    tok = AutoTokenizer.from_pretrained(default_model_path())
    backend = copy.deepcopy(_fast_backend(tok))
    backend.no_padding()
    backend.no_truncation()
    cfg = json.loads(backend.to_str())
    return backend, cfg, _wordpiece(cfg)


def test_the_bundled_tokenizers_own_split_of_glued_pieces(bundled):
    backend, cfg, wp = bundled
    assert wp is not None and wp.lowercase and wp.max_chars == 100
    vocab = cfg["model"]["vocab"]
    rng = random.Random(1)
    plain = [t for t in vocab if t.isascii() and t.isalnum()]
    words = ["The", "Why", "Magnets", "Light", "x" * 101, "x" * 100, "qzxqzx", "ABC123", "2026"]
    for _ in range(3000):
        t = rng.choice(plain)
        words.append(t * rng.randint(1, 8) + rng.choice(["", "The", "Why", "sentence"]))
        words.append(rng.choice(["", "The", "a"]) + t.upper() * rng.randint(1, 3))
    ids, counts = wp.encode(words)
    assert (counts >= 0).all()
    off = np.r_[0, np.cumsum(counts)]
    for i, w in enumerate(words):
        assert ids[off[i]:off[i + 1]].tolist() == backend.encode(w, add_special_tokens=False).ids, w


def test_a_tokenizer_whose_words_are_not_plain_gets_no_wordpiece(bundled):
    from stickytoken.tokenizing import _wordpiece

    _, cfg, _ = bundled
    assert _wordpiece({**cfg, "model": {**cfg["model"], "type": "BPE"}}) is None
    assert _wordpiece({**cfg, "pre_tokenizer": {"type": "Metaspace"}}) is None
    assert _wordpiece({**cfg, "normalizer": {"type": "Replace"}}) is None
    added = cfg["added_tokens"] + [{"content": "foo", "special": False}]
    assert _wordpiece({**cfg, "added_tokens": added}) is None   # "foo" would be found inside "foobar"
    assert _wordpiece({**cfg, "normalizer": None}).lowercase is False
