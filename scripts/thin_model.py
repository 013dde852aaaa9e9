"""Writes a copy of a sentence-transformers folder (default: the bundled all-MiniLM-L6-v2) with
its tokenizer and pooling but a 1-layer, hidden-32 model of random weights: a forward pass
costs next to nothing, so a detect run on it shows the host's share of the pipeline (rows,
workers, distances) as a GPU would, on any machine.

    python scripts/thin_model.py /tmp/thin_model
    STICKYTOKEN_CHUNK_ROWS=131072 python -m stickytoken detect --model /tmp/thin_model --max-tokens 2200 --workers 1
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def random_copy(src: str, dst: str, seed: int = 0, **config) -> str:
    """A sentence-transformers folder like ``src`` (tokenizer, modules) with freshly initialised
    weights drawn from ``seed`` (the same folder every time), its model config changed by ``config``."""
    import torch
    from transformers import AutoConfig, AutoModel

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "onnx", "openvino"))
    cfg = AutoConfig.from_pretrained(src)
    for key, value in config.items():
        setattr(cfg, key, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        AutoModel.from_config(cfg).save_pretrained(dst)
    return dst


def thin_copy(src: str, dst: str, layers: int = 1, hidden: int = 32) -> str:
    random_copy(src, dst, num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=2,
                intermediate_size=2 * hidden)
    pooling = os.path.join(dst, "1_Pooling", "config.json")
    if os.path.exists(pooling):
        with open(pooling) as fh:
            conf = json.load(fh)
        conf["word_embedding_dimension"] = hidden
        with open(pooling, "w") as fh:
            json.dump(conf, fh, indent=2)
    return dst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--model", help="sentence-transformers folder (default: the bundled model)")
    args = ap.parse_args(argv)
    from stickytoken.models import default_model_path

    print(thin_copy(args.model or default_model_path(), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
