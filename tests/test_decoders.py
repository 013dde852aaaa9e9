"""The whole detector on tiny decoder-based embedders shaped like gte-Qwen2, e5-mistral / SFR
and GritLM (tests/tinydecoders.py): vocabularies of 32,000 and 50,000 entries, an instruction
prompt by default, an eos appended by the tokenizer, last-token and mean pooling, a tokenizer
with no pad token.  Checked against direct computations from the Hugging Face model itself."""
import copy
import json
import os

import numpy as np
import pytest
import torch

import stickytoken
from stickytoken import _core
from stickytoken.attention import analyze
from stickytoken.encoder import Encoder
from stickytoken.metrics import retrieval_metrics
from stickytoken.pairs import builtin_sentences
from stickytoken.score import VariantSequences
from stickytoken.vocab import build_vocabulary
from tinydecoders import INSTRUCT

from test_pipeline_units import direct_score

PARAMS = dict(max_tokens=60, sent_pair_num=2, insert_num=3, verification_sent_pair_num=8, shortlist_percent=10.0,
              seed=3, bootstrap=50)
INSERTION = {"qwen2": "text", "mistral": "text", "mistral-mean": "token"}
TEXTS = ["a cat runs", "Water boils at a lower temperature on mountains.", "x", "Hello, world! 123"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and far faster than on two busy ones)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def corpus():
    return builtin_sentences()[:60]


@pytest.fixture(scope="module")
def run_of(tiny_decoders, corpus, tmp_path_factory):
    """name -> the DetectionResult of a small detect run on that decoder (run once)."""
    done = {}

    def get(name):
        if name not in done:
            out = tmp_path_factory.mktemp("decrun") / name
            done[name] = stickytoken.detect(tiny_decoders[name], sentences=corpus, output=str(out),
                                            show_progress_bar=False, insertion=INSERTION[name], **PARAMS)
        return done[name]
    return get


def _reference_embedding(model, ids: list[int], pooling: str, prompt_length: int) -> np.ndarray:
    """The sentence embedding straight from the HF model on one unpadded row: the last
    position's hidden state (last-token pooling) or the mean over the positions after the
    prompt, L2-normalised."""
    hf = model[0].auto_model
    with torch.inference_mode():
        h = hf(input_ids=torch.tensor([ids])).last_hidden_state[0].double()
    v = h[-1] if pooling == "lasttoken" else h[prompt_length:].mean(0)
    return (v / v.norm()).numpy()


def _pooling(model) -> str:
    return model[1].pooling_mode if isinstance(model[1].pooling_mode, str) else model[1].pooling_mode[0]


# ---- vocabulary ---------------------------------------------------------------------------------
def test_bytelevel_vocabulary(bytelevel_tokenizer):
    tok = bytelevel_tokenizer
    vocab = build_vocabulary(tok)
    assert vocab.size == tok.vocab_size == 50000 and tok.eos_token_id >= vocab.size   # added tokens left out
    counts = vocab.counts()
    assert sum(counts.values()) == vocab.size and counts["OK"] > 49000
    the = tok.convert_tokens_to_ids("\u0120the")
    assert vocab.texts[the] == " the" and vocab.categories[the] == _core.OK
    assert vocab.texts[tok.convert_tokens_to_ids("\u010a")] == "\n"                     # 'Ċ'
    assert vocab.categories[tok.convert_tokens_to_ids("\u010a")] == _core.MEANINGLESS
    lone = tok.convert_tokens_to_ids("\u00a1")                                         # byte 0xA1 alone
    assert vocab.texts[lone] == "\ufffd" and vocab.categories[lone] == _core.UNDECODEABLE
    ok = vocab.available_ids
    for i in np.random.default_rng(0).choice(ok, 300, replace=False).tolist():        # the defining property
        assert tok.encode(vocab.texts[i], add_special_tokens=False) == [i]
        assert tok.decode([i]) == vocab.texts[i]


def test_sentencepiece_vocabulary(sentencepiece_tokenizer):
    """'▁' tokenizers keep a word-initial token's space in its text (as the reference's
    clean_decode does), so '▁the' is ' the' and re-encodes to itself."""
    tok = sentencepiece_tokenizer
    vocab = build_vocabulary(tok)
    assert vocab.size == tok.vocab_size == 32000 and tok.pad_token_id is None
    counts = vocab.counts()
    assert sum(counts.values()) == vocab.size
    the = tok.convert_tokens_to_ids("\u2581the")
    assert vocab.texts[the] == " the" and vocab.categories[the] == _core.OK
    word_initial = [i for i, t in enumerate(vocab.tokens) if t.startswith("\u2581") and len(t) > 1]
    assert np.isin(vocab.categories[word_initial], [_core.OK]).mean() > 0.95
    assert counts["OK"] > 30000
    assert [vocab.categories[i] for i in (0, 1, 2)] == [_core.OK_SPECIAL] * 3            # <unk> <s> </s>
    assert vocab.categories[tok.convert_tokens_to_ids("<0x0A>")] == _core.MEANINGLESS
    assert vocab.categories[tok.convert_tokens_to_ids("<0x80>")] == _core.UNDECODEABLE
    prefix = tok.encode("\u00ab", add_special_tokens=False)
    for i in np.random.default_rng(0).choice(vocab.available_ids, 300, replace=False).tolist():
        if i > 2:
            assert tok.encode("\u00ab" + vocab.texts[i], add_special_tokens=False) == prefix + [i]


# ---- encoding -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["qwen2", "mistral", "mistral-mean"])
def test_rows_hold_the_prompt_and_one_eos_and_pooling_reads_them(tiny_decoders, name):
    model = tiny_decoders[name]
    tok = model.tokenizer
    enc = Encoder(model)
    assert enc.prompt == INSTRUCT                                  # the model's default prompt applies
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    eos = tok.eos_token_id
    assert enc.pad_id == (tok.pad_token_id if tok.pad_token_id is not None else eos)
    prompt_ids = tok.encode(INSTRUCT, add_special_tokens=False)
    fp, fs = enc.token_frame()
    assert fp.tolist() == bos + prompt_ids and fs.tolist() == [eos]
    ids, mask, lengths = enc.tokenize(TEXTS)
    pooling = _pooling(model)
    plen = len(bos) + len(prompt_ids)
    if pooling == "mean":
        assert enc._prompt_length == plen                          # GritLM: the prompt is left out of the mean
    emb = enc.encode_texts(TEXTS).numpy()
    for i, text in enumerate(TEXTS):
        row = ids[i, :lengths[i]].tolist()
        assert row == tok(INSTRUCT + text)["input_ids"]
        assert row[:len(bos)] == bos and row[len(bos):plen - 1] == prompt_ids[:-1]
        assert row[-1] == eos and row.count(eos) == 1              # appended exactly once
        np.testing.assert_allclose(emb[i], _reference_embedding(model, row, pooling, plen), atol=2e-5)
        # alone, in a batch of one, the same embedding (the batch's other rows do not matter)
        np.testing.assert_allclose(enc.encode_texts([text]).numpy()[0], emb[i], atol=1e-6)


def test_encoder_matches_model_encode_with_right_padding(tiny_decoders):
    """sentence-transformers' own encode pads on the right; with a pad token set it gives the
    encoder's embeddings (the Mistral tokenizer has none, so a copy gets eos as pad)."""
    for name in ("qwen2", "mistral"):
        model = tiny_decoders[name]
        ref = model
        if model.tokenizer.pad_token is None:
            ref = copy.deepcopy(model)
            ref.tokenizer.pad_token = ref.tokenizer.eos_token
        ours = Encoder(model).encode_texts(TEXTS).numpy()
        theirs = ref.encode(TEXTS, convert_to_numpy=True, batch_size=4)
        np.testing.assert_allclose(ours, theirs, atol=2e-5)


@pytest.mark.parametrize("name", ["bert", "qwen2", "mistral", "mistral-mean"])
def test_batches_without_padding_drop_the_mask_only_when_it_changes_nothing(tiny_decoders, tiny_model, name,
                                                                            monkeypatch):
    """Rows without padding go through the model without an attention mask (on CUDA,
    transformers' check of an all-ones mask waits for the GPU at every batch) once the first
    batch gave the same embeddings both ways: bit for bit those the mask gives, last-token and
    prompt-excluding pooling included.  A model that fails without its mask keeps it."""
    model = tiny_model if name == "bert" else tiny_decoders[name]
    enc = Encoder(model)
    assert enc.mask_free is None
    got = enc.encode_texts(TEXTS)
    assert enc.mask_free is True
    masked = Encoder(model)
    masked.mask_free = False
    np.testing.assert_array_equal(got.numpy(), masked.encode_texts(TEXTS).numpy())
    # a model that needs its mask: the first batch's check fails, and every batch keeps it
    model_on = Encoder._model_on

    def needs_mask(self, ids, mask):
        if mask is None:
            raise ValueError("attention_mask is required")
        return model_on(self, ids, mask)

    monkeypatch.setattr(Encoder, "_model_on", needs_mask)
    strict = Encoder(model)
    np.testing.assert_array_equal(strict.encode_texts(TEXTS).numpy(), got.numpy())
    assert strict.mask_free is False


def test_streamed_mean_similarity_is_the_direct_one(tiny_decoders):
    """Chunk by chunk (here 700 rows a chunk) the mean similarity is |sum u|^2 / V^2 of the
    whole [V, dim] matrix, as _core.mean_similarity computes it."""
    model = tiny_decoders["qwen2"]
    enc = Encoder(model)
    entries = build_vocabulary(model.tokenizer).tokens[:1600]
    direct = float(_core.mean_similarity(enc.encode_texts(entries)))
    enc.STREAM_ROWS = (700, 700)
    assert enc.stream_rows() == 700
    assert enc.mean_similarity(entries) == pytest.approx(direct, abs=1e-12)
    u = enc.encode_texts(entries).double().numpy()
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    assert direct == pytest.approx((u @ u.T).mean(), abs=1e-9)


# ---- detect, check, analyze ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["qwen2", "mistral", "mistral-mean"])
def test_detect_runs_and_is_sane(tiny_decoders, run_of, name):
    res = run_of(name)
    tok = tiny_decoders[name].tokenizer
    assert res.vocab_size == tok.vocab_size and sum(res.category_counts.values()) == res.vocab_size
    assert res.params["prompt"] == INSTRUCT and res.params["insertion"] == INSERTION[name]
    assert len(res.scored_ids) == PARAMS["max_tokens"] and np.isfinite(res.scores).all()
    assert -1 < res.mean_similarity <= 1 and np.isfinite(res.shortlist_threshold)
    assert res.candidates and res.fence is not None and np.isfinite(res.fence)
    assert np.isfinite([[c.verification, c.verification_euclidean, c.verification_manhattan]
                        for c in res.candidates]).all()
    assert all(p["similarity"] < res.mean_similarity for p in res.scoring_pairs + res.verification_pairs)
    with open(os.path.join(res.run_dir, "mean_similarity.json")) as fh:
        assert json.load(fh)["n"] == res.vocab_size
    for fname in ("run.json", "results.json"):
        with open(os.path.join(res.run_dir, fname)) as fh:
            assert json.load(fh)["peak_memory"]["peak_host_memory_mb"] > 0


@pytest.mark.parametrize("name", ["qwen2", "mistral"])
def test_text_variants_contain_the_token_and_scores_match_direct(tiny_decoders, run_of, name):
    """The top candidate's text variants hold k copies of its text, each encoded row ends in
    one eos, and its sticky score is the one recomputed from the model's own forward pass."""
    model = tiny_decoders[name]
    res = run_of(name)
    tok = model.tokenizer
    c = res.candidates[0]
    K, seed = PARAMS["insert_num"], PARAMS["seed"]
    contrasts = [p["contrast"] for p in res.scoring_pairs]
    texts, index = _core.build_text_variants([c.text], np.array([c.id]), contrasts, insert_num=K, seed=seed)
    enc = Encoder(model)
    ids, mask, lengths = enc.tokenize(texts)
    for row, (t, p, v, k) in enumerate(np.asarray(index).tolist()):
        assert texts[row].count(c.text) >= k
        r = ids[row, :lengths[row]].tolist()
        assert r[-1] == tok.eos_token_id and r.count(tok.eos_token_id) == 1
    # the cosine sticky score, from per-row forward passes of the HF model
    pooling, plen = _pooling(model), None

    def embed(text):
        return _reference_embedding(model, tok(INSTRUCT + text)["input_ids"], pooling, plen)

    refs = [embed(p["reference"]) for p in res.scoring_pairs]
    var = {tuple(ix): embed(texts[row]) for row, ix in enumerate(np.asarray(index).tolist())}
    alone = embed(c.text)
    terms = []
    for p, pair in enumerate(res.scoring_pairs):
        g = refs[p]
        d0 = 1 - embed(pair["contrast"]) @ g
        td = 1 - alone @ g
        per_variant = [direct_score([d0] + [1 - var[(0, p, v, k)] @ g for k in range(1, K + 1)], td, 0.1, 0.05, 0.01)
                       for v in range(3)]
        terms.append(0.35 * per_variant[0] + 0.35 * per_variant[1] + 0.3 * per_variant[2])
    assert c.score == pytest.approx(np.mean(terms), rel=2e-3, abs=2e-3)


def test_token_insertion_rows_are_framed(tiny_decoders, run_of):
    """Token mode on a bos/eos decoder: bos, the prompt's ids, the contrast with k copies of the
    id, eos; nothing truncated, one eos."""
    model = tiny_decoders["mistral-mean"]
    res = run_of("mistral-mean")
    tok = model.tokenizer
    from stickytoken.pairs import Pair
    pairs = [Pair.from_dict(p) for p in res.scoring_pairs]
    seqs = VariantSequences(Encoder(model), pairs, insertion="token", insert_num=3, seed=PARAMS["seed"])
    tid = int(res.candidates[0].id)
    rows = seqs.builder.build(np.array([tid]), [res.candidates[0].text])
    (ids, mask), lengths, index = rows.padded(seqs.encoder.pad_id), rows.lengths, rows.index
    assert np.array_equal(np.asarray(mask).sum(1), np.asarray(lengths))   # the mask covers each row's own tokens
    head = [tok.bos_token_id] + tok.encode(INSTRUCT, add_special_tokens=False)
    for row, (t, p, v, k) in enumerate(index.tolist()):
        r = ids[row, :lengths[row]].tolist()
        base = tok.encode(pairs[p].contrast, add_special_tokens=False)
        assert r[:len(head)] == head and r[-1] == tok.eos_token_id and r.count(tok.eos_token_id) == 1
        content = r[len(head):-1]
        assert len(content) == len(base) + k and content.count(tid) == base.count(tid) + k
        if v == 0:
            assert content == [tid] * k + base
        elif v == 1:
            assert content == base + [tid] * k


@pytest.mark.parametrize("name", ["qwen2", "mistral-mean"])
def test_check_gives_the_runs_values(tiny_decoders, run_of, name):
    model = tiny_decoders[name]
    res = run_of(name)
    vocab_tokens = model.tokenizer.convert_ids_to_tokens([c.id for c in res.candidates])
    cand = res.candidates[0]
    scored = {int(i): s for i, s in zip(res.scored_ids, res.scores)}
    other = next(int(i) for i in res.scored_ids if int(i) not in {c.id for c in res.candidates})
    out = stickytoken.check(model, tokens=[vocab_tokens[0]], ids=[other], run=res.run_dir, show_progress_bar=False,
                            recompute=True)   # computed again, not read from the run: bit for bit its values
    a, b = out.tokens
    assert a.id == cand.id and b.id == other
    assert (a.score, a.score_euclidean, a.score_manhattan) == (cand.score, cand.score_euclidean,
                                                               cand.score_manhattan)
    assert (a.verification, a.max_prob, a.label) == (cand.verification, cand.max_prob, cand.label)
    assert a.clears_fence == cand.sticky and a.run_sticky == cand.sticky
    assert np.array_equal([b.score, b.score_euclidean, b.score_manhattan], scored[other])
    assert out.mean_similarity == res.mean_similarity


@pytest.mark.parametrize("name", ["qwen2", "mistral"])
def test_attention_analysis_on_decoders(tiny_decoders, run_of, name):
    """Eager attention on Qwen2 / Mistral: per layer and head, finite; with causal attention a
    single suffix copy (just before eos) is attended only by itself and the eos; the pooled
    similarity is that of the eos position, which last-token pooling reads."""
    model = tiny_decoders[name]
    res = run_of(name)
    hf = model[0].auto_model
    impl = hf.config._attn_implementation
    a = analyze(res, model=model, n_sentences=2, max_copies=2, n_tokens=1, output=False, show_progress_bar=False)
    assert hf.config._attn_implementation == impl                  # switched back
    assert a.n_layers == 2 and a.n_heads == 4
    assert np.isfinite(a.attention_ratio).all() and np.isfinite(a.hidden_norm_ratio).all()
    assert np.isfinite(a.similarity).all() and (np.abs(a.similarity) <= 1 + 1e-5).all()
    tok = model.tokenizer
    tid = a.token_ids[0]
    p = a.params["positions"].index("suffix")
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    base = bos + tok.encode(a.sentences[0], add_special_tokens=False) + [tok.eos_token_id]
    row = base[:-1] + [tid, tok.eos_token_id]
    hf.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            out = hf(input_ids=torch.tensor([row]), output_attentions=True, output_hidden_states=True)
            ref = hf(input_ids=torch.tensor([base]), output_hidden_states=True)
    finally:
        hf.set_attn_implementation(impl)
    att = out.attentions
    # last-token pooling: the similarity is that of the last position's (the eos's) hidden states
    assert a.params["pooling"].startswith("last position")
    sim = [torch.nn.functional.cosine_similarity(h[0, -1], g[0, -1], dim=0).item()
           for h, g in zip(out.hidden_states, ref.hidden_states)]
    np.testing.assert_allclose(a.similarity[0, 0, p, 0], sim, atol=1e-5)
    n, at = len(row), len(row) - 2
    for layer in range(2):
        w = att[layer][0].double()                                   # [H, L, L]
        assert torch.all(w[:, :at, at] == 0)                         # causal: no earlier position sees it
        mass = (w[:, at, at] + w[:, n - 1, at]) / n
        np.testing.assert_allclose(a.attention_mass[0, 0, p, 0, layer], mass.numpy(), atol=1e-5)


@pytest.mark.parametrize("mode", ["remove", "mask"])
def test_guard_and_assess_batch_without_a_pad_token(tiny_decoders, run_of, mode):
    """The Mistral tokenizer has no pad token, so sentence-transformers' own encode refuses a
    batch of texts of different lengths.  The guard and assess batch anyway (eos stands in as
    the pad while they encode, then the tokenizer is as it was): each text's embedding is the
    one it gets alone (no padding), and assess's baseline is the direct one."""
    from stickytoken import StickyGuard
    from stickytoken.assess import assess
    from stickytoken.datasets import RetrievalData

    model = tiny_decoders["mistral"]
    assert model.tokenizer.pad_token is None
    with pytest.raises(ValueError, match="pad"):
        model.encode(TEXTS, batch_size=4)
    res = run_of("mistral")
    tokens = [int(c.id) for c in res.candidates[:2]]
    guard = StickyGuard(model, tokens, mode=mode)
    got = guard.encode(TEXTS, batch_size=4, convert_to_numpy=True)
    assert model.tokenizer.pad_token is None
    alone = np.stack([guard.encode([t], batch_size=1, convert_to_numpy=True)[0] for t in TEXTS])
    np.testing.assert_allclose(got, alone, atol=2e-5)

    sents = builtin_sentences()[:12]
    data = RetrievalData({f"d{i}": s for i, s in enumerate(sents)}, {f"q{i}": sents[i][:30] for i in range(6)},
                         {f"q{i}": {f"d{i}": 1} for i in range(6)}, "tiny")
    a = assess(model=model, tokens=tokens[:1], controls=tokens[1:], copies=2, retrieval=data, clustering=None,
               hijack=False, guard=mode, seed=5, batch_size=8, output=False)
    assert model.tokenizer.pad_token is None
    enc = Encoder(model)   # no padding: rows of one length per batch
    qids, dids = list(data.queries), list(data.corpus)
    direct = retrieval_metrics(enc.encode_texts([data.queries[q] for q in qids]).numpy(),
                               enc.encode_texts([data.corpus[d] for d in dids]).numpy(), qids, dids, data.qrels)
    for metric, value in direct.items():
        assert a.baselines["retrieval"][metric] == pytest.approx(value, abs=1e-6)
    assert a.rows and all(np.isfinite(r["value"]) for r in a.rows)


def test_vocab_memory_script_runs(tmp_path):
    """scripts/vocab_memory.py end to end on a small vocabulary: a table per stage, and the
    streamed mean similarity equal to the all-at-once one."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "vm.json"
    proc = subprocess.run([sys.executable, os.path.join(root, "scripts", "vocab_memory.py"), "--sizes", "2000",
                           "--max-tokens", "8", "--verification-sent-pair-num", "4", "--threads", "1",
                           "--old-mean-similarity", "--json", str(out)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| mean similarity |" in proc.stdout and "2,000 entries: peak MiB" in proc.stdout
    data = json.load(open(out))
    assert [r["vocab_size"] for r in data["results"]] == [2000]
    assert all(r["same_value"] and r["stages"]["mean_similarity_stage"]["peak_mb"] > 0 for r in data["results"])
