"""Tiny random decoder-based embedders (Qwen2 / Mistral architecture) with realistic,
large tokenizers, built locally (no downloads) for the decoder tests and scripts/vocab_memory.py.

What they share with e5-mistral, SFR, GritLM and gte-Qwen2: a causal decoder, last-token (or
mean) pooling, an instruction prompt applied by default, an eos appended by the tokenizer's
post-processor, and a vocabulary of tens of thousands of entries:

- ``bytelevel_tokenizer``: a Qwen2-style byte-level BPE (Qwen2's pre-tokenizer regex, GPT-2
  byte alphabet, no prefix space), trained on the package's corpus plus generated words; the
  special tokens are *added* tokens beyond ``vocab_size`` as in Qwen2, ``<|endoftext|>`` is
  appended to every encoded text (TemplateProcessing, as gte-Qwen2's tokenizer does) and is
  also the pad token.
- ``sentencepiece_tokenizer``: a Mistral/Llama-style BPE ('▁' for spaces, a '▁' prepended,
  byte fallback ``<0x00>``..``<0xFF>``), with ``<unk> <s> </s>`` at ids 0-2 inside the
  vocabulary, ``<s>`` prepended and ``</s>`` appended, and *no pad token* (as Mistral's).
- ``build_decoder``: a 2-layer, hidden-32 Qwen2Model / MistralModel over one of these, with
  Pooling (lasttoken or mean) and Normalize, saved and loaded back as a SentenceTransformer
  whose default prompt is an e5-mistral style instruction.
"""
from __future__ import annotations

import json
import os

import numpy as np

INSTRUCT = "Instruct: Retrieve semantically similar text.\nQuery: "   # e5-mistral's STS instruction
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
_ONSETS = ("b c d f g h j k l m n p r s t v w z ch sh th st tr pl gr br kr fl sl sp qu").split()
_NUCLEI = ("a e i o u ai ou ea ie oo y").split()
_CODAS = ["", "", "", "n", "s", "t", "r", "l", "m", "ng", "st", "x"]


def generated_words(n: int, seed: int = 0) -> list[str]:
    """``n`` pronounceable random words (1-4 syllables), distinct, seeded (vectorised)."""
    rng = np.random.default_rng(seed)
    m = int(n * 1.6) + 100
    syl = np.char.add(np.asarray(_ONSETS)[rng.integers(0, len(_ONSETS), (m, 4))],
                      np.asarray(_NUCLEI)[rng.integers(0, len(_NUCLEI), (m, 4))])
    k = rng.integers(1, 5, m)
    words = np.where(k[:, None] > np.arange(4), syl, "")
    words = np.char.add(np.char.add(np.char.add(words[:, 0], words[:, 1]), np.char.add(words[:, 2], words[:, 3])),
                        np.asarray(_CODAS)[rng.integers(0, len(_CODAS), m)])
    return list(dict.fromkeys(words.tolist()))[:n]


def training_text(seed: int = 0, n_words: int = 60000) -> list[str]:
    """The built-in corpus (three times, so its words merge first) and lines of generated
    words, plain, capitalised, with punctuation and digits, so that BPE training goes well past
    50,000 merges."""
    from stickytoken.pairs import builtin_sentences

    words = generated_words(n_words, seed)
    lines = []
    for i in range(0, len(words), 8):
        w = words[i:i + 8]
        lines.append(" ".join(w))
        lines.append(" ".join(x.capitalize() for x in w) + f", {i % 997}.")
        lines.append("(" + "-".join(w[:3]) + ") \u00ab" + w[-1] + "\u00bb")
    return builtin_sentences() * 3 + lines


def _wrap(tok, **specials):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


def bytelevel_tokenizer(vocab_size: int = 50000, seed: int = 0, n_words: int | None = None):
    """A Qwen2-style byte-level BPE tokenizer whose vocabulary (without the added special
    tokens) has exactly ``vocab_size`` entries; returns a transformers fast tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE

    tok = Tokenizer(BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, min_frequency=1)
    tok.train_from_iterator(training_text(seed, n_words or max(3000, int(vocab_size * 1.2))), trainer)
    if tok.get_vocab_size() != vocab_size:
        raise RuntimeError(f"BPE training reached {tok.get_vocab_size()} entries, not {vocab_size}")
    eos = "<|endoftext|>"
    tok.add_special_tokens([eos, "<|im_start|>", "<|im_end|>"])
    eos_id = tok.token_to_id(eos)
    tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A {eos} $B:1 {eos}:1",
                                                       special_tokens=[(eos, eos_id)])
    return _wrap(tok, eos_token=eos, pad_token=eos, additional_special_tokens=["<|im_start|>", "<|im_end|>"])


def sentencepiece_tokenizer(vocab_size: int = 32000, seed: int = 0, n_words: int | None = None):
    """A Mistral/Llama-style BPE: '▁' word marks, byte fallback, <unk> <s> </s> at ids 0-2,
    <0x00>..<0xFF> at 3-258, merges after; ``<s>`` prepended, ``</s>`` appended, no pad token."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE

    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    probe = Tokenizer(BPE(unk_token="<unk>"))   # trained on '▁word' pieces: no merge crosses a space
    probe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(specials) - len(byte_tokens) + 200,
                                  show_progress=False, min_frequency=1, limit_alphabet=200)
    probe.train_from_iterator(training_text(seed, n_words or max(3000, int(vocab_size * 1.2))), trainer)
    model = json.loads(probe.to_str())["model"]
    vocab = {t: i for i, t in enumerate(specials + byte_tokens)}
    merges = []
    for piece, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
        if piece not in vocab and len(vocab) < vocab_size:
            vocab[piece] = len(vocab)
    kept = set(vocab)
    for m in model["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ")
        if a in kept and b in kept and a + b in kept:
            merges.append((a, b))
    if len(vocab) != vocab_size:
        raise RuntimeError(f"BPE training reached {len(vocab)} entries, not {vocab_size}")
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> <s>:1 $B:1 </s>:1", special_tokens=[("<s>", 1), ("</s>", 2)])
    return _wrap(tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def build_decoder(folder: str, arch: str = "qwen2", tokenizer=None, pooling: str = "lasttoken",
                  include_prompt: bool = True, prompt: str | None = INSTRUCT, seed: int = 0, hidden: int = 32,
                  layers: int = 2, max_seq_length: int = 128):
    """Write a random tiny ``arch`` ('qwen2' or 'mistral') decoder with ``tokenizer`` under
    ``folder`` and return it loaded as a SentenceTransformer (Transformer, Pooling(``pooling``),
    Normalize; default prompt ``prompt`` named 'query'; CPU, float32, eval mode)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from tinymodel import st_modules
    Transformer, Pooling, Normalize = st_modules()

    if tokenizer is None:
        tokenizer = bytelevel_tokenizer() if arch == "qwen2" else sentencepiece_tokenizer()
    V = len(tokenizer)
    torch.manual_seed(seed)
    common = dict(vocab_size=V, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_seq_length + 64,
                  eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    # no pad_token_id in the config, as in Qwen2's and Mistral's: with pad = eos it would zero the eos embedding
    if arch == "qwen2":
        from transformers import Qwen2Config, Qwen2Model

        hf = Qwen2Model(Qwen2Config(**common))
    elif arch == "mistral":
        from transformers import MistralConfig, MistralModel

        hf = MistralModel(MistralConfig(**common, sliding_window=None))
    else:
        raise ValueError(arch)
    hf_dir = os.path.join(folder, "hf")
    hf.eval().save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    transformer = Transformer(hf_dir, max_seq_length=max_seq_length)
    dim = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
    modules = [transformer, Pooling(dim(), pooling_mode=pooling, include_prompt=include_prompt), Normalize()]
    prompts = {"query": prompt, "document": ""} if prompt else None
    st = SentenceTransformer(modules=modules, device="cpu", prompts=prompts,
                             default_prompt_name="query" if prompt else None)
    st_dir = os.path.join(folder, "st")
    st.save(st_dir)
    st = SentenceTransformer(st_dir, device="cpu")
    st.eval()
    return st
