"""What the stability studies share (scripts/stability.py, scripts/pair_stability.py): the
phase cache in the output folder, the model with its seeded token sample and mean similarity,
distance sequences for a stage's pairs in chunks with progress, the comparison of two score
vectors, and the comparison of two verifications of the same tokens."""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def top_overlap(x: np.ndarray, y: np.ndarray, share: float) -> float:
    """The share of x's top `share` of tokens that are in y's top `share` too."""
    n = max(1, int(round(share * len(x))))
    a, b = set(np.argsort(-x, kind="stable")[:n]), set(np.argsort(-y, kind="stable")[:n])
    return len(a & b) / n


def add_study_arguments(ap) -> None:
    """The arguments every study takes: the model and how it runs, the token sample, the
    verification's size, and the output folder."""
    ap.add_argument("--model", default=None, help="model folder (default: the bundled all-MiniLM-L6-v2)")
    ap.add_argument("--tokens", type=int, default=1000, help="tokens scored, a seeded sample (default 1000)")
    ap.add_argument("--verify-tokens", type=int, default=30, help="best tokens verified (default 30)")
    ap.add_argument("--sample-seed", type=int, default=42, help="seed of the token sample")
    ap.add_argument("--verification-sent-pair-num", type=int, default=250)
    ap.add_argument("--insert-num", type=int, default=8)
    ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples behind P(sticky)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--sentences", default=None, help="corpus file (default: the built-in corpus)")
    ap.add_argument("--output", default=None, help="folder for the cache, the tables and the JSON")


class PhaseCache:
    """The arrays of a study's finished phases, in OUT/NAME.npz, kept only while the arguments
    (less `ignore`: those that cannot change a result) are the same.  Each save replaces the
    file whole, so an interrupted study resumes after its last finished phase.  Makes OUT."""

    def __init__(self, out: str | None, name: str, args, ignore=("output", "batch_size")):
        if out:
            os.makedirs(out, exist_ok=True)
        self.path = os.path.join(out, name) if out else None
        self.key = json.dumps({k: v for k, v in vars(args).items() if k not in ignore}, sort_keys=True)
        self.data: dict[str, np.ndarray] = {}
        if self.path and os.path.exists(self.path):
            with np.load(self.path) as z:
                if str(z["key"]) == self.key:
                    self.data = {k: z[k] for k in z.files if k != "key"}

    def __contains__(self, name: str) -> bool:
        return name in self.data

    def __getitem__(self, name: str) -> np.ndarray:
        return self.data[name]

    def __setitem__(self, name: str, value) -> None:
        self.data[name] = np.asarray(value)
        self.save()

    def save(self) -> None:
        if self.path:
            tmp = self.path + ".tmp.npz"
            np.savez(tmp, key=np.array(self.key), **self.data)
            os.replace(tmp, self.path)


@dataclass
class Study:
    """The model and the tokens a study scores: a seeded sample of the available tokens."""
    st: object
    enc: object
    vocab: object
    tokens: np.ndarray
    texts: list
    sentences: list
    mean_sim: float
    t0: float = field(default_factory=time.perf_counter)

    def variant_D(self, pairs, seed: int, ids: np.ndarray, texts, desc: str, *, insert_num: int,
                  insert_draws: int = 1, slots=None, step: int = 50):
        """D [T, P, 2 + R, K + 1, 3] and td [T, P, 3] for the tokens on the pairs, in chunks of
        `step` tokens, each chunk's progress on stderr."""
        from stickytoken.score import VariantSequences

        vs = VariantSequences(self.enc, pairs, insertion="text", insert_num=insert_num, seed=seed,
                              insert_draws=insert_draws)
        Ds, tds = [], []
        for i in range(0, len(ids), step):
            D, td = vs.sequences(ids[i:i + step], texts[i:i + step], slots=slots)
            Ds.append(D)
            tds.append(td)
            print(f"  {desc}: {min(i + step, len(ids))}/{len(ids)} tokens, {time.perf_counter() - self.t0:.0f} s",
                  file=sys.stderr, flush=True)
        return np.concatenate(Ds), np.concatenate(tds)

    def device_line(self, args) -> str:
        import torch

        return f"{args.device}, {args.dtype}, {torch.get_num_threads()} threads"


def open_study(args, cache: PhaseCache) -> Study:
    """Loads args.model on args.device in args.dtype (all threads), draws args.tokens of the
    available tokens with args.sample_seed, and takes the mean similarity from the cache or
    computes it over the whole vocabulary (and caches it)."""
    import torch

    from stickytoken import _core
    from stickytoken.encoder import Encoder
    from stickytoken.models import load_model
    from stickytoken.pairs import sentences_source
    from stickytoken.vocab import build_vocabulary

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    st = load_model(args.model, device=args.device, dtype=args.dtype)
    enc = Encoder(st, batch_size=args.batch_size, show_progress_bar=False)
    vocab = build_vocabulary(enc.tokenizer)
    avail = vocab.available_ids
    rng = np.random.default_rng(args.sample_seed)
    tokens = np.sort(rng.choice(avail, size=min(args.tokens, len(avail)), replace=False))
    sents, _ = sentences_source(args.sentences)
    t0 = time.perf_counter()
    if "mean_sim" not in cache:
        cache["mean_sim"] = float(_core.mean_similarity(enc.encode_texts(vocab.tokens)))
    return Study(st, enc, vocab, tokens, [vocab.texts[i] for i in tokens.tolist()], sents,
                 float(cache["mean_sim"]), t0)


def scoring_comparison(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Spearman and top-10% / top-2% overlaps of two score vectors over the same tokens."""
    return {"spearman": spearman(a, b), "top10": top_overlap(a, b, 0.10), "top2": top_overlap(a, b, 0.02)}


def verification_side(per_pair: np.ndarray, n_boot: int, seed: int) -> dict[str, np.ndarray | float]:
    """One verification of a set of tokens: per-pair values [T, P] -> each token's value (mean
    over the pairs), the fence over the set, the decisions, and the bootstrap P(sticky)."""
    from stickytoken.confidence import bootstrap
    from stickytoken.verify import fence

    values = per_pair.mean(axis=1)
    f = fence(values)
    return {"values": values, "fence": f, "sticky": values > f,
            "confidence": bootstrap(per_pair, n_boot, seed)["confidence"]}


def verification_comparison(a: dict, b: dict) -> dict[str, float]:
    """How two verifications of the same tokens (``verification_side``) agree."""
    da, db = a["sticky"], b["sticky"]
    union = (da | db).sum()
    return {"sticky_a": int(da.sum()), "sticky_b": int(db.sum()),
            "decision_agreement": float(np.mean(da == db)),
            "jaccard": float((da & db).sum() / union) if union else 1.0,
            "value_spearman": spearman(a["values"], b["values"]),
            "confidence_mean_abs_diff": float(np.mean(np.abs(a["confidence"] - b["confidence"]))),
            "robust_agreement": float(np.mean((a["confidence"] >= 0.9) == (b["confidence"] >= 0.9)))}
