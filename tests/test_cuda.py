"""The GPU path (issue 13): the encoder on CUDA, device tensors refused by the C core with
their message, and dtype agreement.  Every test here skips where torch sees no CUDA device,
as on CI; on a GPU machine run ``python -m pytest tests/test_cuda.py``."""
import json

import numpy as np
import pytest
import torch

import stickytoken
from stickytoken import _core
from stickytoken.encoder import Encoder
from stickytoken.pairs import builtin_sentences

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

PARAMS = dict(sent_pair_num=2, insert_num=3, verification_sent_pair_num=4, shortlist_percent=10.0, seed=7)
TEXTS = ["a cat sat on the mat", "sticky tokens pull sentences to the mean", "x", "word " * 40]


@pytest.fixture(scope="module")
def cuda_tiny(tiny_path):
    return stickytoken.load_model(tiny_path, device="cuda", dtype="float32")


def test_encoder_on_cuda_matches_encode(cuda_tiny):
    enc = Encoder(cuda_tiny)
    assert enc.device.type == "cuda" and enc.batch_size == 2048
    ours = enc.encode_texts(TEXTS)
    assert ours.device.type == "cpu" and ours.dtype == torch.float32
    ref = cuda_tiny.encode(TEXTS, convert_to_tensor=True).float().cpu()
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    assert enc.peak_memory()["peak_device_memory_mb"] > 0
    assert enc.profile["embed"] > 0


def test_default_dtype_on_cuda_is_bfloat16(tiny_path):
    model = stickytoken.load_model(tiny_path, device="cuda")
    assert next(model.parameters()).dtype == torch.bfloat16
    emb = Encoder(model).encode_texts(TEXTS)
    assert emb.dtype == torch.bfloat16 and emb.device.type == "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_c_core_refuses_cuda_tensors_with_its_message(dtype):
    x = torch.ones(4, 3, device="cuda", dtype=dtype)
    ref = torch.ones(2, 3)
    with pytest.raises(BufferError, match=r"row_distances: x: tensor is on cuda; call \.cpu\(\) first"):
        _core.row_distances(x, ref, np.zeros(4, dtype=np.int64))
    with pytest.raises(BufferError, match=r"tensor is on cuda; call \.cpu\(\) first"):
        _core.mean_similarity(x)
    # the tensor is untouched and still usable
    assert float(x.sum()) == 12.0


def _tokens(run_dir):
    return {t["id"]: t for t in (json.loads(x) for x in open(f"{run_dir}/tokens.jsonl"))}


def test_cuda_float32_agrees_with_cpu_float32(tiny_model, tiny_path, tmp_path):
    corpus = builtin_sentences()[:80]
    cpu = stickytoken.detect(tiny_model, **PARAMS, sentences=corpus, output=str(tmp_path / "cpu"),
                             show_progress_bar=False)
    gpu = stickytoken.detect(tiny_path, **PARAMS, sentences=corpus, device="cuda", dtype="float32",
                             output=str(tmp_path / "gpu"), show_progress_bar=False)
    assert abs(cpu.mean_similarity - gpu.mean_similarity) < 1e-5
    a, b = _tokens(tmp_path / "cpu"), _tokens(tmp_path / "gpu")
    assert a.keys() == b.keys()
    sa = np.array([a[i]["score"] for i in sorted(a) if a[i].get("score") is not None])
    sb = np.array([b[i]["score"] for i in sorted(b) if b[i].get("score") is not None])
    np.testing.assert_allclose(sa, sb, rtol=1e-3, atol=1e-3)
    assert len(set(c.id for c in cpu.candidates) ^ set(c.id for c in gpu.candidates)) <= 2
    assert gpu.peak_memory.get("peak_device_memory_mb", 0) > 0


def test_bfloat16_ranks_like_float32(tiny_path, tmp_path):
    corpus = builtin_sentences()[:80]
    runs = {}
    for dtype in ("float32", "bfloat16"):
        stickytoken.detect(tiny_path, **PARAMS, sentences=corpus, device="cuda", dtype=dtype,
                           output=str(tmp_path / dtype), show_progress_bar=False)
        runs[dtype] = _tokens(tmp_path / dtype)
    ids = sorted(i for i in runs["float32"] if runs["float32"][i].get("score") is not None)
    f = np.array([runs["float32"][i]["score"] for i in ids])
    b = np.array([runs["bfloat16"][i]["score"] for i in ids])
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    rho = np.corrcoef(rank(f), rank(b))[0, 1]
    assert rho > 0.9, rho


def test_workers_on_cuda_are_bit_identical(tiny_path, tmp_path):
    corpus = builtin_sentences()[:80]
    for w in (0, 2):
        stickytoken.detect(tiny_path, **PARAMS, sentences=corpus, device="cuda", workers=w,
                           output=str(tmp_path / f"w{w}"), show_progress_bar=False)
    assert _tokens(tmp_path / "w0") == _tokens(tmp_path / "w2")


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_forward_passes_avoid_cudnn_attention(tiny_path, dtype):
    """cuDNN's attention builds a plan per new shape (seconds lost over a run); float32 runs
    the plain kernel, and TF32 stays as the caller set it."""
    from torch.profiler import ProfilerActivity, profile

    model = stickytoken.load_model(tiny_path, device="cuda", dtype=dtype)
    enc = Encoder(model, batch_size=3)
    before = torch.backends.cuda.matmul.allow_tf32
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        enc.encode_texts(TEXTS * 5)
    names = {e.key for e in prof.key_averages()}
    assert not any("cudnn_attention" in n for n in names), sorted(names)
    if dtype == "float32":
        assert not any("flash_attention" in n or "efficient_attention" in n for n in names)
    assert torch.backends.cuda.matmul.allow_tf32 == before



def test_the_cuda_context_is_made_beside_the_import(tiny_path, tmp_path):
    """On CUDA ``warm_cuda`` makes the context in a thread of its own, and a detect run's
    load profile says how long the run waited for it after the import."""
    from stickytoken.models import warm_cuda

    thread = warm_cuda("cuda")
    assert thread is not None and thread.name == "stickytoken-cuda-context"
    thread.join()
    assert torch.cuda.is_initialized()
    stickytoken.detect(tiny_path, **PARAMS, sentences=builtin_sentences()[:80], device="cuda", max_tokens=20,
                       output=str(tmp_path / "r"), show_progress_bar=False)
    load = json.load(open(tmp_path / "r" / "run.json"))["profile"]["load"]
    assert list(load) == ["corpus", "device", "import", "cuda_context", "model", "encoder", "run_folder"]


def test_copies_back_queued_behind_more_work_are_waited_for(cuda_tiny):
    """A ``Pending`` copy back from CUDA, with more forward passes queued behind it, reads
    the same embeddings as a waited-for copy, and its wait is profiled (``gpu_wait``)."""
    from stickytoken.encoder import Pending

    enc = Encoder(cuda_tiny)
    texts = [f"sentence number {i} " + "word " * (i % 40) for i in range(20000)]
    want = enc.encode_texts(texts)
    first = enc.encode_texts(texts, wait=False)
    second = enc.encode_texts(texts[::-1], wait=False)
    assert isinstance(first, Pending) and first.source.device.type == "cuda"
    assert torch.equal(second.result(), want.flip(0)) and torch.equal(first.result(), want)
    assert first.result().is_pinned() and enc.profile["gpu_wait"] >= 0


def test_attention_kernels_follow_the_setting_and_run_json_names_them(tiny_path, tmp_path, monkeypatch):
    from torch.profiler import ProfilerActivity, profile

    monkeypatch.setenv("STICKYTOKEN_ATTENTION", "efficient")
    model = stickytoken.load_model(tiny_path, device="cuda", dtype="bfloat16")
    enc = Encoder(model, batch_size=3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        enc.encode_texts(TEXTS * 5)
    names = {e.key for e in prof.key_averages()}
    assert any("efficient_attention" in n for n in names) and not any("flash_attention" in n for n in names), \
        sorted(names)
    assert enc.describe() == {"device": "cuda:0", "attention": "efficient"}
    stickytoken.detect(tiny_path, **PARAMS, sentences=builtin_sentences()[:80], device="cuda", max_tokens=20,
                       output=str(tmp_path / "r"), show_progress_bar=False)
    assert json.load(open(tmp_path / "r" / "run.json"))["attention"] == "efficient"


def test_a_traced_cuda_run_sees_the_device_and_changes_nothing(tiny_path, tmp_path, monkeypatch):
    """STICKYTOKEN_TRACE on CUDA: the traced chunks record device work (busy share, kernels),
    and the results are those of an untraced run, bit for bit."""
    corpus = builtin_sentences()[:80]
    kw = dict(device="cuda", dtype="float32", sentences=corpus, max_tokens=120, show_progress_bar=False, workers=1,
              **PARAMS)
    monkeypatch.setattr("stickytoken.runfolder.CHUNK_ROWS_CUDA", 720)   # several chunks a stage
    stickytoken.detect(tiny_path, output=str(tmp_path / "plain"), **kw)
    monkeypatch.setenv("STICKYTOKEN_TRACE", "1")
    stickytoken.detect(tiny_path, output=str(tmp_path / "traced"), **kw)
    assert (tmp_path / "plain" / "scores.csv").read_bytes() == (tmp_path / "traced" / "scores.csv").read_bytes()
    profile = json.loads((tmp_path / "traced" / "run.json").read_text())["profile"]
    for stage in ("scoring", "verification"):
        tr = profile[stage]["trace"]
        assert "failed" not in tr, tr
        assert 0 < tr["device_busy"] <= 1 and tr["device_ops"] > 0 and tr["kernels"], tr
        assert tr["sequences"] > 0 and tr["seq_per_device_s"] >= tr["seq_per_s"] > 0, tr
        assert tr["phases_ms"]["embed_rows"] and tr["phases_ms"]["rows_wait"]
