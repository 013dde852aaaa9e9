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
def tiny_model(tiny_path):
    """The tiny model loaded once per session (CPU, float32, eval mode).  Tests must leave it
    as they found it."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_path, device="cpu")
    model.eval()
    return model
