"""Shared test set-up: offline hub, and a random generator whose seed is printed (so a failure
can be replayed with STICKYTOKEN_TEST_SEED)."""
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def rng(request):
    seed = int(os.environ.get("STICKYTOKEN_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
    print(f"\n{request.node.name}: seed {seed}")
    return np.random.default_rng(seed)


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test, then as it was.  Runs with and without row-building
    workers compare bit for bit only at the same thread count: with workers the encoder gives
    their cores back (``cores - workers`` threads), and on some CPUs (AVX2-only ones, say)
    float32 matrix products round differently with another thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    """The folder of the tiny random BERT sentence-transformers model (tests/tinymodel.py),
    built once per test session; the model itself is at <folder>/st."""
    from tinymodel import build_tiny_model

    folder = str(tmp_path_factory.mktemp("tiny"))
    build_tiny_model(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_path(tiny_dir) -> str:
    """Path of the tiny model's sentence-transformers folder (what --model takes)."""
    return os.path.join(tiny_dir, "st")


@pytest.fixture(scope="session")
def thin_path(tmp_path_factory) -> str:
    """A thin copy of the bundled all-MiniLM-L6-v2 (scripts/thin_model.py: its tokenizer and
    modules, a 1-layer hidden-32 model of seeded random weights): the real vocabulary and
    row building at a fraction of the model's cost, for scripts whose plumbing is under test."""
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
    from thin_model import thin_copy

    from stickytoken.models import default_model_path

    return thin_copy(default_model_path(), str(tmp_path_factory.mktemp("thin") / "st"))


# the demo notebook's detection (its first call, notebooks/demo.ipynb): the real bundled model,
# a small sample; test_notebook and test_report start from one finished copy of it
DEMO_DETECT = dict(max_tokens=80, sent_pair_num=2, insert_num=4, verification_sent_pair_num=10,
                   shortlist_percent=10.0)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> str:
    """A finished run folder of ``stickytoken.detect(**DEMO_DETECT)`` on the real bundled
    all-MiniLM-L6-v2, made once per session (~35 s on a 2-core CPU).  Copy it (``copy_run``)
    before adding to it.  The demo notebook makes the same call: given a copy, its detect finds
    the finished run (the same parameters) and the rest of the notebook runs on it."""
    import stickytoken

    out = str(tmp_path_factory.mktemp("demo") / "run")
    stickytoken.detect(**DEMO_DETECT, output=out, show_progress_bar=False)
    return out


def copy_run(src: str, dst) -> str:
    """A copy of the run folder ``src`` at ``dst`` (made), for a test that writes into it."""
    import shutil

    return shutil.copytree(src, str(dst))


@pytest.fixture(scope="session")
def tiny_model(tiny_path):
    """The tiny model loaded once per session (CPU, float32, eval mode).  Tests must leave it
    as they found it."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_path, device="cpu")
    model.eval()
    return model


# ---- tiny decoder embedders (tests/tinydecoders.py), built once per session -----------------------
@pytest.fixture(scope="session")
def bytelevel_tokenizer():
    """A Qwen2-style byte-level BPE tokenizer with 50,000 entries (eos appended, pad = eos)."""
    from tinydecoders import bytelevel_tokenizer as build

    return build(50000)


@pytest.fixture(scope="session")
def sentencepiece_tokenizer():
    """A Mistral-style BPE tokenizer ('▁', byte fallback) with 32,000 entries (bos and eos
    added, no pad token)."""
    from tinydecoders import sentencepiece_tokenizer as build

    return build(32000)


@pytest.fixture(scope="session")
def tiny_decoders(tmp_path_factory, bytelevel_tokenizer, sentencepiece_tokenizer):
    """Three tiny random decoder embedders, by name: 'qwen2' (gte-Qwen2-like: byte-level, last
    token, eos appended, pad = eos), 'mistral' (e5-mistral / SFR-like: '▁' BPE, last token,
    bos + eos, no pad token) and 'mistral-mean' (GritLM-like: mean pooling without the
    prompt); all with an instruction prompt as the default prompt."""
    from tinydecoders import build_decoder

    folder = tmp_path_factory.mktemp("decoders")
    return {
        "qwen2": build_decoder(str(folder / "qwen2"), "qwen2", bytelevel_tokenizer, "lasttoken"),
        "mistral": build_decoder(str(folder / "mistral"), "mistral", sentencepiece_tokenizer, "lasttoken", seed=1),
        "mistral-mean": build_decoder(str(folder / "mistral-mean"), "mistral", sentencepiece_tokenizer, "mean",
                                      include_prompt=False, seed=2),
    }
