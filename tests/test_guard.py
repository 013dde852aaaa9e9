"""StickyGuard: what the remove mode deletes and keeps, the mask mode against a hand-masked
forward pass, pass-through of encode's arguments, and the inputs it accepts."""
import warnings

import numpy as np
import pytest
import torch

from stickytoken.errors import InputError
from stickytoken.guard import StickyGuard, build_pattern
from tinymodel import tiny_result


@pytest.mark.parametrize("text, expected", [
    ("the cat lucas ran", "the cat ran"),                 # a whole word
    ("lucas lucas lucas the cat", "the cat"),             # a run of copies with spaces
    ("lucaslucasThe cat", "The cat"),                     # two glued copies, glued to a word
    ("the cat ranlucaslucas", "the cat ran"),
    ("lucasThe cat", "lucasThe cat"),                     # one glued copy is left alone
    ("the lucasian era", "the lucasian era"),             # a word that merely starts with the token
    ("Lucas, LUCAS! the cat", ", ! the cat"),             # case-insensitive for a lowercasing tokenizer
    ("a [SEP][SEP] b [SEP]x", "a b x"),                   # punctuation-edged tokens match anywhere
    ("lucas", ""),
])
def test_remove_rules(tiny_model, text, expected):
    guard = StickyGuard(tiny_model, ["lucas", "[SEP]"])
    assert guard.clean(text) == expected


def test_case_sensitive_when_asked():
    pat = build_pattern(["Lucas"], ignore_case=False)
    assert pat.sub("", "lucas Lucas").strip() == "lucas"
    assert build_pattern(["", "  "]) is None


def test_encode_removes_and_passes_arguments(tiny_model):
    guard = StickyGuard(tiny_model, ["zorp", "quib"])
    got = guard.encode(["the cat zorp ran quibquib", "zorp"], batch_size=1, normalize_embeddings=True)
    want = tiny_model.encode(["the cat ran", ""], batch_size=1, normalize_embeddings=True)
    np.testing.assert_allclose(got, want, atol=1e-6)
    single = guard.encode("the zorp dog", convert_to_tensor=True)
    assert isinstance(single, torch.Tensor) and single.shape == (32,)
    np.testing.assert_allclose(single.numpy(), tiny_model.encode("the dog"), atol=1e-6)
    # behaves like the model elsewhere
    assert guard.tokenizer is tiny_model.tokenizer and guard.max_seq_length == tiny_model.max_seq_length
    assert "zorp" in repr(guard)


def test_mask_mode_matches_hand_masked_forward(tiny_model):
    guard = StickyGuard(tiny_model, ["zorp"], mode="mask")
    text = "the zorp cat zorp ran"
    got = guard.encode([text], convert_to_numpy=True)[0]
    feats = tiny_model.tokenize([text])
    zorp = tiny_model.tokenizer.convert_tokens_to_ids("zorp")
    feats["attention_mask"] = feats["attention_mask"].masked_fill(feats["input_ids"] == zorp, 0)
    with torch.no_grad():
        want = tiny_model(feats)["sentence_embedding"][0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got, tiny_model.encode([text])[0], atol=1e-3)
    # the hook is gone after encode
    np.testing.assert_allclose(tiny_model.encode([text])[0], tiny_model.encode([text])[0])
    assert len(tiny_model[0]._forward_pre_hooks) == 0


def test_sources_of_tokens(tiny_model, tmp_path):
    run = tiny_result(tiny_model, run_dir=str(tmp_path / "run"))
    for src in (run, str(tmp_path / "run"), run.sticky_tokens,
                [tiny_model.tokenizer.convert_tokens_to_ids(w) for w in ("zorp", "quib", "lucas")]):
        guard = StickyGuard(tiny_model, src)
        assert sorted(guard.texts) == ["lucas", "quib", "zorp"]
        assert len(guard.ids) == 3
    with pytest.raises(InputError, match="mode"):
        StickyGuard(tiny_model, run, mode="drop")
    with pytest.raises(InputError):
        StickyGuard(tiny_model, [1.5])
    zorp = tiny_model.tokenizer.convert_tokens_to_ids("zorp")
    for one in (zorp, np.int64(zorp), run.sticky_tokens[0] if run.sticky_tokens[0].text == "zorp" else "zorp"):
        assert StickyGuard(tiny_model, one).ids == [zorp]   # one token given bare
    for bad in (None, 5.5, True):   # (were TypeErrors: "'NoneType' object is not iterable")
        with pytest.raises(InputError, match="sticky tokens must be a DetectionResult, a run folder"):
            StickyGuard(tiny_model, bad)
    with pytest.warns(UserWarning, match=r"no sticky tokens to guard against \(none were given\)"):
        StickyGuard(tiny_model, [])
    n = len(tiny_model.tokenizer)
    for bad in (n, -1):   # (were accepted, decoding to '' and guarding nothing)
        with pytest.raises(InputError, match=rf"token id {bad} is not in the vocabulary \(0\.\.{n - 1}\)"):
            StickyGuard(tiny_model, [bad])


def test_mask_mode_keeps_the_tokenizers_own_frame(tiny_model):
    # a sticky [CLS] or [SEP] is masked where it was inserted, never in the frame every text has
    # (before, mask mode masked every text's own [CLS], changing clean texts' embeddings)
    tok = tiny_model.tokenizer
    cls, sep = tok.cls_token_id, tok.sep_token_id
    guard = StickyGuard(tiny_model, [cls, sep, "zorp"], mode="mask")
    clean = ["the cat ran", "a dog"]      # two lengths: padding in the batch
    np.testing.assert_allclose(guard.encode(clean), tiny_model.encode(clean), atol=1e-6)
    text = "the [CLS] cat [SEP] zorp ran"
    got = guard.encode([text, "a dog"])[0]
    feats = tiny_model.tokenize([text])
    ids, mask = feats["input_ids"][0], feats["attention_mask"][0].clone()
    inner = torch.arange(len(ids))[1:-1]              # the frame is the first and the last position
    hit = torch.isin(ids[inner], torch.tensor([cls, sep, tok.convert_tokens_to_ids("zorp")]))
    assert int(hit.sum()) == 3
    mask[inner[hit]] = 0
    with torch.no_grad():
        want = tiny_model({"input_ids": ids[None], "attention_mask": mask[None]})["sentence_embedding"][0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_mask_mode_says_which_texts_it_cannot_mask(tiny_model):
    # "lucas zorp" is two tokens: mask mode cannot mask it (it used to drop it silently)
    with pytest.warns(UserWarning, match=r"1 of the texts given are not one token and are not masked \('lucas zorp'\)"):
        guard = StickyGuard(tiny_model, ["quib", "lucas zorp"], mode="mask")
    assert guard.ids == [tiny_model.tokenizer.convert_tokens_to_ids("quib")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        StickyGuard(tiny_model, ["lucas zorp"], mode="remove")   # remove mode deletes any text


@pytest.mark.filterwarnings("ignore:The `encode_multi_process` method has been deprecated:DeprecationWarning")
def test_a_process_pool_is_guarded_or_refused(tiny_path):
    # remove mode cleans the texts before they reach the pool's processes; mask mode's hook would
    # not reach them, so it refuses instead of encoding unguarded (it used to, silently).
    # A model of its own: once asked for attentions (test_attention), transformers hangs hooks on
    # the session's model that cannot be pickled into a pool's processes.
    from sentence_transformers import SentenceTransformer

    tiny_model = SentenceTransformer(tiny_path, device="cpu")
    texts = ["the cat zorp ran", "zorp zorp a dog"]
    guard = StickyGuard(tiny_model, ["zorp"])
    pool = tiny_model.start_multi_process_pool(["cpu", "cpu"])
    try:
        np.testing.assert_allclose(guard.encode(texts, pool=pool), guard.encode(texts), atol=1e-6)
        np.testing.assert_allclose(guard.encode_multi_process(texts, pool), guard.encode(texts), atol=1e-6)
        masked = StickyGuard(tiny_model, ["zorp"], mode="mask")
        for call in (lambda: masked.encode(texts, pool=pool), lambda: masked.encode_multi_process(texts, pool),
                     lambda: masked.encode(texts, device=["cpu", "cpu"])):
            with pytest.raises(InputError, match="mask mode guards the model in this process only"):
                call()
    finally:
        tiny_model.stop_multi_process_pool(pool)
