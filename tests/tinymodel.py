"""A tiny random BERT sentence-transformers model and a matching detection result, built
locally (no downloads) for fast unit tests of the analysis modules.

``build_tiny_model(folder)`` writes a 2-layer, hidden-32 BERT with a WordPiece tokenizer over
a small vocabulary and returns it loaded as a ``SentenceTransformer`` with mean pooling.
``tiny_result(model)`` builds a ``DetectionResult`` over that vocabulary with a few tokens
marked sticky, without running detection.
"""
from __future__ import annotations

import os

import numpy as np

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ("the a of and to in is was for on with as by at from cat dog bird fish tree house car road "
         "city river sea sun moon star red blue green big small old new fast slow run runs ran walk "
         "eat eats sleep sleeps read reads book books paper music song film game team ball play plays "
         "doctor patient drug cancer cell gene protein study result risk diet vitamin heart brain "
         "zorp quib lucas zzz").split()
LETTERS = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
STICKY_WORDS = ("zorp", "quib", "lucas")


def tiny_vocab() -> list[str]:
    pieces = SPECIALS + WORDS + LETTERS + ["##" + c for c in LETTERS if c.isalnum()] + ["##s", "##ing", "##ed"]
    return list(dict.fromkeys(pieces))  # no repeats: every id 0..V-1 names one piece


def st_modules():
    """sentence-transformers' Transformer, Pooling and Normalize modules, from where this
    version keeps them (``sentence_transformers.models`` is deprecated from version 6)."""
    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:   # sentence-transformers before 6
        from sentence_transformers.models import Normalize, Pooling, Transformer
    return Transformer, Pooling, Normalize


def build_tiny_model(folder: str, seed: int = 0, layers: int = 2, hidden: int = 32, heads: int = 4):
    """Write a random tiny BERT + WordPiece tokenizer under ``folder``; return the
    SentenceTransformer (mean pooling, normalised embeddings, CPU, eval mode)."""
    import torch
    from sentence_transformers import SentenceTransformer
    Transformer, Pooling, Normalize = st_modules()
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = tiny_vocab()
    vocab_map = {t: i for i, t in enumerate(vocab)}
    tok = Tokenizer(WordPiece(vocab_map, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab_map["[CLS]"]), ("[SEP]", vocab_map["[SEP]"])])
    tok.decoder = decoders.WordPiece(prefix="##")
    hf_tok = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                               cls_token="[CLS]", mask_token="[MASK]", do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=128,
                        pad_token_id=0)
    bert = BertModel(config).eval()
    hf_dir = os.path.join(folder, "hf")
    bert.save_pretrained(hf_dir)
    hf_tok.save_pretrained(hf_dir)
    transformer = Transformer(hf_dir, max_seq_length=128)
    dim = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
    pooling = Pooling(dim(), pooling_mode="mean")
    st = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")
    st_dir = os.path.join(folder, "st")
    st.save(st_dir)
    st = SentenceTransformer(st_dir, device="cpu")
    st.eval()
    return st


def tiny_result(model, sticky_words=STICKY_WORDS, run_dir: str | None = None, seed: int = 42):
    """A DetectionResult over the tiny model's vocabulary: every plain word scored (random
    scores), the ``sticky_words`` at the top and marked sticky.  Saved to ``run_dir`` if given."""
    from stickytoken.results import DetectionResult, TokenResult

    tok = model.tokenizer
    vocab = tok.get_vocab()
    words = [w for w in WORDS if w in vocab]
    ids = np.asarray(sorted(vocab[w] for w in words), dtype=np.int64)
    rng = np.random.default_rng(seed)
    scores = rng.uniform(1.0, 10.0, size=(len(ids), 3))
    sticky_ids = [vocab[w] for w in sticky_words]
    for rank, tid in enumerate(sticky_ids):
        scores[np.searchsorted(ids, tid)] = 100.0 - rank
    order = np.argsort(-scores[:, 0], kind="stable")
    candidates = []
    for j in order[: len(sticky_ids) + 2]:
        tid = int(ids[j])
        text = tok.convert_ids_to_tokens(tid)
        sticky = tid in sticky_ids
        candidates.append(TokenResult(id=tid, token=text, text=text, score=float(scores[j, 0]),
                                      score_euclidean=float(scores[j, 1]), score_manhattan=float(scores[j, 2]),
                                      verification=0.9 if sticky else 0.5, verification_euclidean=0.9,
                                      verification_manhattan=0.9, max_prob=0.9 if sticky else 0.5,
                                      label="strong_verified" if sticky else "strong_rejected", sticky=sticky))
    result = DetectionResult(
        model="tiny-bert", params={"seed": seed, "insert_num": 4, "insertion": "token", "sent_pair_num": 2,
                                   "verification_sent_pair_num": 4, "shortlist_percent": 2.0},
        vocab_size=len(vocab), category_counts={"OK": len(ids)}, mean_similarity=0.3,
        shortlist_threshold=float(np.percentile(scores[:, 0], 98)), fence=0.8, candidates=candidates,
        scored_ids=ids, scores=scores)
    if run_dir is not None:
        result.save(run_dir)
        result.run_dir = os.path.abspath(run_dir)
    return result


def build_tiny_arch(folder: str, arch: str, seed: int = 0):
    """A tiny random model of another architecture ('mpnet', 't5' encoder, or 'llama' as a
    decoder-based embedder) with the tiny WordPiece tokenizer and mean pooling."""
    import torch
    from sentence_transformers import SentenceTransformer
    Transformer, Pooling, _ = st_modules()

    base = build_tiny_model(os.path.join(folder, "bert"), seed=seed)
    tok = base.tokenizer
    V = len(tok)
    torch.manual_seed(seed)
    if arch == "mpnet":
        from transformers import MPNetConfig, MPNetModel

        hf = MPNetModel(MPNetConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=64, max_position_embeddings=130, pad_token_id=0))
    elif arch == "t5":
        from transformers import T5Config, T5EncoderModel

        hf = T5EncoderModel(T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                     pad_token_id=0, decoder_start_token_id=0))
    elif arch == "llama":
        from transformers import LlamaConfig, LlamaModel

        hf = LlamaModel(LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                    pad_token_id=0, bos_token_id=2, eos_token_id=3))
    else:
        raise ValueError(arch)
    hf_dir = os.path.join(folder, arch)
    hf.eval().save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    transformer = Transformer(hf_dir, max_seq_length=128)
    dim = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
    st = SentenceTransformer(modules=[transformer, Pooling(dim(), pooling_mode="mean")], device="cpu")
    st.eval()
    return st
