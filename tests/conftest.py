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
