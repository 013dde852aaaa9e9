"""Benchmark of every C kernel in stickytoken._core against its float64 NumPy twin.

One row per kernel: the C kernel and its twin in ``stickytoken/_reference.py`` (same name,
same signature, written to be obviously correct rather than fast) run on the same inputs of
realistic size -- a 30,522-entry vocabulary (bert-base / all-MiniLM-L6-v2), GPT-2's 50,257
byte-level tokens, [8192, 384] float32 embeddings, ... -- and the table shows the best of
several timeit repeats of each, their ratio, and a verdict.  Before timing, every pair of
results is checked to agree, so the two sides compute the same thing.

The verdict names the part of the project's mission that keeps a kernel in C (token
filtering, insertion, similarity statistics: the C kernels release the GIL, read float16 /
bfloat16 / strided tensors without a float64 copy, and draw the same seeded positions on
every platform), and says plainly where NumPy is as fast or faster.

    python scripts/bench_core.py                    # realistic sizes, about a minute
    python scripts/bench_core.py --quick            # small sizes, a few seconds (a smoke run)
    python scripts/bench_core.py --json bench.json  # also write the raw numbers
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import timeit
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from stickytoken import _core, _reference

TOKEN_FILTERING = "token filtering"
INSERTION = "insertion"
SIMILARITY = "similarity statistics"

# ratios twin / C inside this band count as "as fast"
AS_FAST = (1 / 1.25, 1.25)


@dataclass
class Case:
    kernel: str
    size: str
    area: str                          # the mission area that keeps the kernel in C
    args: tuple
    kwargs: dict
    same: Callable[[Any, Any], bool]   # do the C and the twin results agree?
    # for a class (WordPiece): the function to time, from the class (the object is made once)
    method: Callable[[Any], Callable] | None = None


# ---- inputs ----------------------------------------------------------------------------------
def _words(rng: np.random.Generator, n: int, lo: int = 2, hi: int = 10) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lens = rng.integers(lo, hi + 1, size=n)
    return ["".join(rng.choice(letters, size=k)) for k in lens]


def vocabulary(rng: np.random.Generator, V: int):
    """A WordPiece-like vocabulary of V texts with re-encodings that hit every category."""
    words = _words(rng, V)
    texts, pieces = [], []
    kinds = rng.random(V)
    for i in range(V):
        w = words[i]
        if i < 5:
            texts.append(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"][i])
        elif kinds[i] < 0.03:
            texts.append(f"[unused{i}]")
        elif kinds[i] < 0.04:
            texts.append(" " * (1 + i % 3))
        elif kinds[i] < 0.05:
            texts.append(w[:2] + "\ufffd")
        elif kinds[i] < 0.10:
            texts.append(w + "\u00e9\u6f22")
        elif kinds[i] < 0.40:
            texts.append("##" + w)
        else:
            texts.append(w)
        r = rng.random()
        if r < 0.75:
            pieces.append([i])
        elif r < 0.85:
            pieces.append([int(rng.integers(V))])
        elif r < 0.97:
            pieces.append(rng.integers(V, size=int(rng.integers(2, 5))).tolist())
        else:
            pieces.append([])
    offsets = np.zeros(V + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in pieces])
    reencoded = np.array([t for p in pieces for t in p], dtype=np.int64)
    special = np.array([0, 1, 2, 3, 4], dtype=np.int64)
    return texts, reencoded, offsets, special


def bytelevel_tokens(rng: np.random.Generator, n: int) -> list[str]:
    """n GPT-2 byte-level stand-in strings: words with a leading space, some non-ASCII, some
    holding UTF-8 cut in the middle of a character (as real byte-level vocabularies do)."""
    to_char = {b: ch for ch, b in _reference._byte_decoder().items()}
    words = _words(rng, n, 1, 9)
    kinds = rng.random(n)
    out = []
    for i, w in enumerate(words):
        raw = ((" " if kinds[i] < 0.6 else "") + w).encode()
        if kinds[i] > 0.9:
            raw += "\u00e9\u6f22".encode()
        elif kinds[i] > 0.85:
            raw += "\u6f22".encode()[:2]          # a cut character
        out.append("".join(to_char[b] for b in raw))
    return out


def id_sequences(rng: np.random.Generator, P: int, vocab: int = 30522):
    lens = rng.integers(8, 31, size=P)
    offsets = np.zeros(P + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lens)
    return rng.integers(1000, vocab, size=int(offsets[-1])).astype(np.int64), offsets


def sentences(rng: np.random.Generator, P: int) -> list[str]:
    return [" ".join(_words(rng, int(rng.integers(8, 21)))) for _ in range(P)]


def _equal(a, b) -> bool:
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


def _close(rtol: float, atol: float = 0.0):
    def same(a, b) -> bool:
        return bool(np.allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64),
                                rtol=rtol, atol=atol, equal_nan=True))
    return same


def cases(quick: bool, seed: int = 0) -> list[Case]:
    rng = np.random.default_rng(seed)
    s = (lambda full, small: small if quick else full)
    V, G = s(30522, 2000), s(50257, 2000)
    T, P, K = s(128, 8), 10, 8
    n_rows = s(8192, 256)
    d = s(384, 64)
    n_seq = s(262144, 4096)
    n_pair = s(2048, 128)

    texts, reencoded, offsets, special = vocabulary(rng, V)
    gpt2 = bytelevel_tokens(rng, G)
    base_ids, base_offsets = id_sequences(rng, P)
    token_ids = rng.choice(np.arange(1000, 30522), size=T, replace=False).astype(np.int64)
    token_texts = _words(rng, T, 1, 8)
    bases = sentences(rng, P)
    lengths = rng.integers(8, 65, size=n_seq).astype(np.int64)
    x = rng.standard_normal((n_rows, d)).astype(np.float32)
    refs = rng.standard_normal((2 * P, d)).astype(np.float32)
    ref_index = rng.integers(0, 2 * P, size=n_rows).astype(np.int64)
    seqs = rng.random((n_seq, K + 1))
    td = rng.random(n_seq)
    emb = rng.standard_normal((V, d)).astype(np.float32)
    corpus = rng.standard_normal((n_pair, d)).astype(np.float32)
    scores = rng.gamma(2.0, 1.0, size=V)
    scores[rng.random(V) < 0.01] = np.nan

    pieces = sorted(set(_words(rng, s(30000, 2000), 1, 9)))
    wp_vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(pieces)},
                **{"##" + w: len(pieces) + i + 1 for i, w in enumerate(pieces[::3])}}
    glued = [t * int(rng.integers(1, 9)) + w for t, w in zip(_words(rng, s(50000, 2000), 3, 12),
                                                             _words(rng, s(50000, 2000), 0, 8))]

    batch = dict(insert_num=K, frame_prefix=np.array([101], dtype=np.int64),
                 frame_suffix=np.array([102], dtype=np.int64), pad_id=0, max_length=128, seed=42)
    rows = T * P * 3 * K
    return [
        Case("token_categories", f"{V:,} ids", TOKEN_FILTERING,
             (texts, reencoded, offsets, special), {}, _equal),
        Case("bytelevel_decode", f"{G:,} tokens", TOKEN_FILTERING, (gpt2,), {}, _equal),
        Case("build_token_batch", f"{T} tok x {P} seq x 3 x {K} = {rows:,} rows", INSERTION,
             (base_ids, base_offsets, token_ids), batch, _equal),
        Case("build_text_variants", f"{T} tok x {P} sent x 3 x {K} = {rows:,} texts", INSERTION,
             (token_texts, token_ids, bases), dict(insert_num=K, seed=42), _equal),
        Case("length_order", f"{n_seq:,} lengths", INSERTION, (lengths,), {}, _equal),
        Case("WordPiece", f"{len(glued):,} glued words, {len(wp_vocab):,} entries", INSERTION, (glued,), {},
             _equal, method=lambda cls: cls(wp_vocab, unk_id=0).encode),
        Case("row_distances", f"[{n_rows:,}, {d}] f32", SIMILARITY, (x, refs, ref_index), {},
             _close(1e-9, 1e-9)),
        Case("sticky_score", f"[{n_seq:,}, {K + 1}] f64", SIMILARITY, (seqs, td, 0.1, 0.05, 0.01), {},
             _close(1e-12)),
        Case("verify_counts", f"[{n_seq:,}, {K + 1}] f64", SIMILARITY, (seqs,), {}, _equal),
        Case("mean_similarity", f"[{V:,}, {d}] f32", SIMILARITY, (emb,), {}, _close(1e-9, 1e-12)),
        Case("pairwise_cosine", f"[{n_pair:,}, {d}] f32", SIMILARITY, (corpus,), {}, _close(1e-9, 1e-12)),
        Case("percentile", f"{V:,} scores, q=99", SIMILARITY, (scores, 99.0), {}, _close(1e-12)),
        Case("iqr_fence", f"{V:,} scores", SIMILARITY, (scores,), {}, _close(1e-12)),
    ]


# ---- timing ----------------------------------------------------------------------------------
def best_time(fn: Callable[[], Any], repeat: int, min_time: float) -> float:
    """Best seconds per call over `repeat` timeit runs of enough calls to last min_time."""
    timer = timeit.Timer(fn)
    number = 1
    while True:
        t = timer.timeit(number)
        if t >= min_time or number >= 1 << 20:
            break
        number *= 2 if t * 4 >= min_time else 10
    return min([t / number] + [r / number for r in timer.repeat(repeat - 1, number)])


def verdict(area: str, ratio: float) -> str:
    if ratio >= AS_FAST[1]:
        return f"C (mission: {area})"
    if ratio > AS_FAST[0]:
        return f"NumPy as fast; C kept (mission: {area})"
    return f"NumPy {1 / ratio:.1f}x faster; C kept (mission: {area})"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(repeat: int) -> list[str]:
    import stickytoken

    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load average {os.getloadavg()[0]:.2f} at start"
    return [
        f"stickytoken {stickytoken.__version__} C kernels vs their float64 NumPy twins "
        f"(stickytoken/_reference.py)",
        "",
        f"NumPy {np.__version__}, Python {platform.python_version()}, {platform.system()}, "
        f"CPU: {cpu_name()} ({os.cpu_count()} logical cores){load}; "
        f"best of {repeat} timeit repeats; twin / C > 1: the C kernel is faster",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a few seconds")
    ap.add_argument("--repeat", type=int, default=None, help="timeit repeats (default 5, 3 with --quick)")
    ap.add_argument("--json", metavar="PATH", help="also write the raw numbers to PATH")
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated inputs")
    args = ap.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 5)
    if repeat < 1:
        ap.error("--repeat must be >= 1")
    min_time = 0.005 if args.quick else 0.2

    todo = cases(args.quick, args.seed)
    exposed = sorted(n for n in dir(_core) if not n.startswith("_") and callable(getattr(_core, n)))
    missing = sorted(set(exposed) - {c.kernel for c in todo})
    if missing:
        print(f"bench_core: no benchmark case for {', '.join(missing)}", file=sys.stderr)
        return 2

    lines = header(repeat)
    lines += ["| kernel | size | C (ms) | NumPy twin (ms) | twin / C | verdict |",
              "|---|---|---:|---:|---:|---|"]
    print("\n".join(lines), flush=True)
    records = []
    for case in todo:
        c_fn = getattr(_core, case.kernel)
        twin_fn = getattr(_reference, case.kernel)
        if case.method is not None:
            c_fn, twin_fn = case.method(c_fn), case.method(twin_fn)
        c_out = c_fn(*case.args, **case.kwargs)
        twin_out = twin_fn(*case.args, **case.kwargs)
        if not case.same(c_out, twin_out):
            print(f"bench_core: {case.kernel}: the C kernel and its twin disagree on {case.size}",
                  file=sys.stderr)
            return 1
        t_c = best_time(lambda: c_fn(*case.args, **case.kwargs), repeat, min_time)
        t_twin = best_time(lambda: twin_fn(*case.args, **case.kwargs), repeat, min_time)
        ratio = t_twin / t_c
        row = dict(kernel=case.kernel, size=case.size, area=case.area, c_s=t_c, twin_s=t_twin,
                   ratio=ratio, verdict=verdict(case.area, ratio))
        records.append(row)
        print(f"| {case.kernel} | {case.size} | {t_c * 1e3:.3g} | {t_twin * 1e3:.3g} | "
              f"{ratio:.2f} | {row['verdict']} |", flush=True)

    if args.json:
        import stickytoken

        meta = dict(stickytoken=stickytoken.__version__, numpy=np.__version__,
                    python=platform.python_version(), cpu=cpu_name(), cpu_count=os.cpu_count(),
                    load_average=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                    quick=args.quick, repeat=repeat, seed=args.seed)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(dict(meta=meta, kernels=records), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
