"""Why sticky tokens stick: what inserted copies of a token do inside the model, layer by layer.

For the run's sticky tokens and as many control tokens (``DetectionResult.control_ids``: a
seeded draw from the lowest-scored tokens), each token is inserted at the *token level* into
corpus sentences: its id is put ``k`` times (k = 1..K) as a prefix, as a suffix, or at random
positions (one more copy per k at a uniform position of the current sequence, as the
detector's insert variant does; seeded by (seed, token id, sentence index)).  The inserted
positions are tracked exactly.  The special tokens the tokenizer puts around content
([CLS] ... [SEP], <s> ... </s>) frame every sequence; no prompt is added.

Per sequence, with n real (non-padding) positions of which m are inserted copies:

- ``attention_ratio`` (per layer and head): the attention mass all n positions give to the m
  inserted positions, averaged over the n query positions, divided by m / n, the share the
  inserted positions have of the sequence.  1 means the copies get exactly their share;
  above 1, more.  ``attention_mass`` is the same mass before the division.  For causal
  (decoder) models, positions before a copy cannot attend to it, so the ratio is lower for
  prefix insertion by construction.
- ``hidden_norm_ratio`` (per hidden-state layer, 0 = embedding output): mean L2 norm of the
  hidden states at the inserted positions / mean norm at the sentence's other non-special
  positions.
- ``similarity`` (per hidden-state layer): cosine similarity between the sentence's pooled
  representation with and without the insertion, where pooled = mean of that layer's hidden
  states over *all non-special positions* (inserted copies included, as mean pooling sees
  them).  ``similarity_original`` pools over the original sentence's tokens only (copies
  excluded), showing how much the copies change the representation of the other tokens.

Attention weights need eager attention: a model running SDPA or flash attention is switched
to eager for the analysis and switched back afterwards.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .errors import InputError

logger = logging.getLogger(__name__)

POSITIONS = ("prefix", "suffix", "random")
DEFAULT_SENTENCES = 32
DEFAULT_MAX_COPIES = 8


# ---- token and data selection (shared with assess) -------------------------------------------
def resolve_result(result_or_run):
    """A DetectionResult, or a run folder path -> DetectionResult; anything else -> None."""
    from .results import DetectionResult

    if isinstance(result_or_run, DetectionResult):
        return result_or_run
    if isinstance(result_or_run, (str, os.PathLike)) and os.path.isdir(os.fspath(result_or_run)) \
            and os.path.isfile(os.path.join(os.fspath(result_or_run), "results.json")):
        return DetectionResult.load(os.fspath(result_or_run))
    return None


def finished_run(path: str):
    """The DetectionResult of a finished run folder, or a clear InputError."""
    result = resolve_result(path)
    if result is None:
        raise InputError(f"{path!r} is not a finished detection run folder (no results.json)")
    return result


def add_run_arguments(p: argparse.ArgumentParser, subdir: str, verb: str, batch_size: int) -> None:
    """The arguments every analysis command shares: RUN, --output, --tokens, --seed,
    --batch-size, --model, --device."""
    p.add_argument("run", help="a finished detection run folder")
    p.add_argument("--output", help=f"output folder (default RUN/{subdir})")
    p.add_argument("--tokens", type=int, default=None, help=f"{verb} at most this many sticky tokens (default all)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the run's seed)")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--model", default=None, help="model path or name (default: the run's model)")
    p.add_argument("--device", default=None)


def run_tokens(result, tokenizer, tokens, controls, n_tokens, seed):
    """(ids, texts, groups, notes) to analyse from a run: its sticky tokens and controls, or
    the ``tokens`` given (with ``controls``, or the run's seeded control draw)."""
    if tokens is None:
        return select_tokens(result, n_tokens, seed)
    ids = token_ids_from(tokenizer, tokens)
    ctrl = list(result.control_ids(len(ids), seed)) if controls is None else token_ids_from(tokenizer, controls)
    groups = ["sticky"] * len(ids) + ["control"] * len(ctrl)
    ids = ids + [int(c) for c in ctrl]
    return ids, [None] * len(ids), groups, []


def select_tokens(result, n_tokens: int | None = None, seed: int | None = None):
    """The run's sticky tokens (highest score first, at most ``n_tokens``) and as many control
    tokens.  A run with no sticky tokens falls back to its top verification candidates, in a
    group named 'candidate' (and says so).  Returns (ids, texts, groups, notes)."""
    notes = []
    picked = list(result.sticky_tokens)
    group = "sticky"
    if not picked:
        picked = list(result.candidates)
        group = "candidate"
        if not picked:
            raise InputError(f"run of {result.model!r} has no sticky tokens and no candidates to analyse")
        notes.append("the run found no sticky tokens; its top verification candidates stand in for them")
    picked.sort(key=lambda t: -t.score)
    if n_tokens is not None:
        if n_tokens < 1:
            raise InputError(f"the number of tokens must be at least 1, got {n_tokens}")
        picked = picked[:n_tokens]
    seed = result.params.get("seed", 42) if seed is None else seed
    controls = [int(i) for i in result.control_ids(len(picked), seed)]
    by_id = {c.id: c for c in result.candidates}
    ids = [t.id for t in picked] + controls
    texts = [t.text for t in picked] + [by_id[i].text if i in by_id else None for i in controls]
    groups = [group] * len(picked) + ["control"] * len(controls)
    return ids, texts, groups, notes


def token_ids_from(tokenizer, tokens) -> list[int]:
    """Ids, strings (each must be one vocabulary token) or TokenResult-like objects -> ids."""
    out = []
    vocab_size = len(tokenizer)
    for t in tokens:
        if hasattr(t, "id"):
            out.append(int(t.id))
        elif isinstance(t, (int, np.integer)):
            if not 0 <= int(t) < vocab_size:
                raise InputError(f"token id {int(t)} is outside the vocabulary (0..{vocab_size - 1})")
            out.append(int(t))
        elif isinstance(t, str):
            ids = tokenizer.encode(t, add_special_tokens=False)
            if len(ids) != 1:
                ids2 = tokenizer.convert_tokens_to_ids([t])
                if ids2 and ids2[0] is not None and ids2[0] != tokenizer.unk_token_id:
                    ids = ids2
                else:
                    raise InputError(f"token {t!r} is not a single vocabulary token (it encodes to {len(ids)} ids)")
            out.append(int(ids[0]))
        else:
            raise InputError(f"tokens must be ids, strings or TokenResults, got {type(t).__name__}")
    return out


def token_text(tokenizer, tid: int) -> str:
    return tokenizer.decode([int(tid)], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def load_sentences(sentences=None, n: int | None = DEFAULT_SENTENCES, seed: int = 42) -> list[str]:
    """Corpus sentences: the given list or file (one a line), else the built-in corpus; a
    seeded sample of ``n`` when there are more."""
    if sentences is None:
        sentences = os.path.join(os.path.dirname(__file__), "data", "sentences.txt")
    if isinstance(sentences, (str, os.PathLike)):
        path = os.fspath(sentences)
        if not os.path.isfile(path):
            raise InputError(f"sentence file {path!r} does not exist; give a text file with one sentence a line")
        with open(path, encoding="utf-8") as fh:
            sentences = [line.strip() for line in fh if line.strip()]
    sentences = [s for s in sentences if s and s.strip()]
    if not sentences:
        raise InputError("no sentences to insert tokens into; give a non-empty list or file")
    if n is not None:
        if n < 1:
            raise InputError(f"the number of sentences must be at least 1, got {n}")
        if n < len(sentences):
            idx = np.sort(np.random.default_rng(seed).choice(len(sentences), size=n, replace=False))
            sentences = [sentences[i] for i in idx]
    return list(sentences)


def tokenizer_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer puts before and after content."""
    probe = "stickytoken probe"
    inner = tokenizer.encode(probe, add_special_tokens=False)
    outer = tokenizer.encode(probe, add_special_tokens=True)
    for start in range(len(outer) - len(inner) + 1):
        if outer[start:start + len(inner)] == inner:
            return list(outer[:start]), list(outer[start + len(inner):])
    raise InputError("could not find how the tokenizer frames its input with special tokens")


def hf_model(model):
    """The Hugging Face model under a SentenceTransformer's first (Transformer) module."""
    first = model[0] if hasattr(model, "__getitem__") else model
    for name in ("auto_model", "model"):
        hf = getattr(first, name, None)
        if hf is not None and hasattr(hf, "config"):
            return hf
    raise InputError("the model's first module holds no Hugging Face transformer; "
                     "attention analysis needs a transformer-based sentence-transformers model")


# ---- building sequences -----------------------------------------------------------------------
def insert_token_ids(content: Sequence[int], token_id: int, copies: int, position: str,
                     rng: np.random.Generator | None = None) -> tuple[list[int], list[int]]:
    """``content`` with ``copies`` copies of ``token_id``; returns (ids, inserted positions).

    prefix: copies before the content; suffix: after; random: one copy at a time at a uniform
    position 0..len(current) (inclusive), as the detector's insert variant.
    """
    content = list(content)
    if position == "prefix":
        return [token_id] * copies + content, list(range(copies))
    if position == "suffix":
        return content + [token_id] * copies, list(range(len(content), len(content) + copies))
    if position != "random":
        raise InputError(f"position must be one of {', '.join(POSITIONS)}, got {position!r}")
    if rng is None:
        raise InputError("random insertion needs a random generator")
    ids = content
    flags = [False] * len(content)
    for _ in range(copies):
        at = int(rng.integers(0, len(ids) + 1))
        ids = ids[:at] + [token_id] + ids[at:]
        flags = flags[:at] + [True] + flags[at:]
    return ids, [i for i, f in enumerate(flags) if f]


def _random_prefixes(content, token_id, max_copies, rng):
    """For k = 1..K, the random-insertion sequences built cumulatively (k holds k copies)."""
    out = []
    ids, flags = list(content), [False] * len(content)
    for _ in range(max_copies):
        at = int(rng.integers(0, len(ids) + 1))
        ids = ids[:at] + [token_id] + ids[at:]
        flags = flags[:at] + [True] + flags[at:]
        out.append((list(ids), [i for i, f in enumerate(flags) if f]))
    return out


# ---- the forward pass and per-row metrics -----------------------------------------------------
class _Runner:
    """Runs framed id rows through the HF model with attentions and hidden states on."""

    def __init__(self, model, batch_size: int, device=None):
        import torch

        self.st = model
        self.hf = hf_model(model)
        self.tokenizer = model.tokenizer
        self.device = next(self.hf.parameters()).device if device is None else torch.device(device)
        self.batch_size = batch_size
        self.prefix, self.suffix = tokenizer_frame(self.tokenizer)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        self.max_length = int(getattr(model, "max_seq_length", None) or 512)
        self._impl = None

    def __enter__(self):
        cfg = self.hf.config
        self._impl = getattr(cfg, "_attn_implementation", None)
        if self._impl not in (None, "eager"):
            try:
                self.hf.set_attn_implementation("eager")
            except Exception:  # older transformers: the config field is the switch
                cfg._attn_implementation = "eager"
            logger.info("switched attention from %s to eager for the analysis", self._impl)
        return self

    def __exit__(self, *exc):
        if self._impl not in (None, "eager"):
            try:
                self.hf.set_attn_implementation(self._impl)
            except Exception:
                self.hf.config._attn_implementation = self._impl

    def frame(self, content_ids: Sequence[int]) -> list[int]:
        room = self.max_length - len(self.prefix) - len(self.suffix)
        return self.prefix + list(content_ids)[:room] + self.suffix

    def forward(self, rows: list[list[int]]):
        """rows of framed ids -> (attentions tuple [B,H,L,L] per layer, hidden states tuple
        [B,L,d] per layer incl. embeddings, mask [B,L])."""
        import torch

        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.as_tensor(r)
            mask[i, :len(r)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            out = self.hf(input_ids=ids, attention_mask=mask, output_attentions=True,
                          output_hidden_states=True, return_dict=True)
        att = getattr(out, "attentions", None)
        hs = getattr(out, "hidden_states", None)
        if not att or att[0] is None:
            raise InputError(f"the model ({type(self.hf).__name__}) returned no attention weights, even with "
                             "eager attention; it cannot be analysed")
        if not hs:
            raise InputError(f"the model ({type(self.hf).__name__}) returned no hidden states; it cannot be analysed")
        return att, hs, mask


def _row_metrics(att, hs, mask, special, inserted, original):
    """Per-row metrics for one batch.  special/inserted/original: float tensors [B, L]
    (1 where the position is a frame special token / an inserted copy / an original token).
    Returns numpy arrays: ratio [B, layers, H], mass [B, layers, H], norm_ratio [B, layers+1],
    pooled_all [B, layers+1, d], pooled_orig [B, layers+1, d]."""
    import torch

    real = mask.float()
    n = real.sum(-1)                                    # [B]
    m = inserted.sum(-1)                                # [B]
    masses = []
    for a in att:
        a = a.float()                                   # [B, H, L, L]
        to_ins = torch.einsum("bhqk,bk->bhq", a, inserted)
        masses.append((to_ins * real[:, None, :]).sum(-1) / n[:, None])
    mass = torch.stack(masses, 1)                       # [B, layers, H]
    share = (m / n).clamp_min(1e-12)
    ratio = mass / share[:, None, None]
    other = original                                    # content positions that are not copies
    norm_ratio, pooled_all, pooled_orig = [], [], []
    content = (1 - special) * real
    for h in hs:
        h = h.float()
        norms = h.norm(dim=-1)                          # [B, L]
        ins_norm = (norms * inserted).sum(-1) / m.clamp_min(1)
        oth_norm = (norms * other).sum(-1) / other.sum(-1).clamp_min(1)
        nr = ins_norm / oth_norm
        nr[(m == 0) | (other.sum(-1) == 0)] = float("nan")
        norm_ratio.append(nr)
        pooled_all.append((h * content[..., None]).sum(1) / content.sum(-1, keepdim=True).clamp_min(1))
        pooled_orig.append((h * other[..., None]).sum(1) / other.sum(-1, keepdim=True).clamp_min(1))
    return (ratio.cpu().numpy(), mass.cpu().numpy(), torch.stack(norm_ratio, 1).cpu().numpy(),
            torch.stack(pooled_all, 1).cpu().numpy(), torch.stack(pooled_orig, 1).cpu().numpy())


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


# ---- the result -------------------------------------------------------------------------------
@dataclass
class AttentionAnalysis:
    """Per-token, per-sentence, per-position, per-copies metrics of an attention analysis.

    Arrays are indexed [token, sentence, position, copies-1, ...]: ``attention_ratio`` and
    ``attention_mass`` [..., layer-1, head] over the attention layers; ``hidden_norm_ratio``,
    ``similarity`` and ``similarity_original`` [..., layer] over the hidden-state layers
    (0 = embedding output).  See the module docstring for the definitions.
    """

    model: str
    params: dict[str, Any]
    token_ids: list[int]
    token_texts: list[str]
    groups: list[str]
    sentences: list[str]
    attention_ratio: np.ndarray = field(repr=False)
    attention_mass: np.ndarray = field(repr=False)
    hidden_norm_ratio: np.ndarray = field(repr=False)
    similarity: np.ndarray = field(repr=False)
    similarity_original: np.ndarray = field(repr=False)
    example: dict[str, Any] = field(default_factory=dict, repr=False)
    notes: list[str] = field(default_factory=list)
    output: str | None = None

    @property
    def n_layers(self) -> int:
        return int(self.attention_ratio.shape[4])

    @property
    def n_heads(self) -> int:
        return int(self.attention_ratio.shape[5])

    def __repr__(self) -> str:
        return (f"AttentionAnalysis(model={self.model!r}, tokens={len(self.token_ids)} "
                f"({', '.join(sorted(set(self.groups)))}), sentences={len(self.sentences)}, "
                f"layers={self.n_layers}, heads={self.n_heads}, max_copies={self.params['max_copies']})")

    # per-token curves, averaged over sentences, positions and copies
    def token_curves(self, metric: str, position: str | None = None) -> np.ndarray:
        """[tokens, layers] mean of ``metric`` (heads averaged for attention metrics)."""
        arr = getattr(self, metric)
        if metric.startswith("attention"):
            arr = arr.mean(-1)
        if position is not None:
            p = list(self.params["positions"]).index(position)
            arr = arr[:, :, p:p + 1]
        return np.nanmean(arr, axis=(1, 2, 3))

    def to_pandas(self, kind: str = "layers"):
        """'layers': per token, position, copies and layer (sentences averaged); 'heads': per
        token, position, layer and head (sentences and copies averaged); 'summary': per group
        and layer, mean / std / quartiles over tokens."""
        import pandas as pd

        positions = list(self.params["positions"])
        K = self.params["max_copies"]
        if kind == "layers":
            rows = []
            ratio = np.nanmean(self.attention_ratio.mean(-1), axis=1)        # [T, P, K, layers]
            mass = np.nanmean(self.attention_mass.mean(-1), axis=1)
            norm = np.nanmean(self.hidden_norm_ratio, axis=1)                # [T, P, K, layers+1]
            sim = np.nanmean(self.similarity, axis=1)
            simo = np.nanmean(self.similarity_original, axis=1)
            for t, (tid, text, g) in enumerate(zip(self.token_ids, self.token_texts, self.groups)):
                for p, pos in enumerate(positions):
                    for k in range(K):
                        for layer in range(self.n_layers + 1):
                            rows.append({
                                "group": g, "token_id": tid, "token": text, "position": pos, "copies": k + 1,
                                "layer": layer,
                                "attention_ratio": float(ratio[t, p, k, layer - 1]) if layer else np.nan,
                                "attention_mass": float(mass[t, p, k, layer - 1]) if layer else np.nan,
                                "hidden_norm_ratio": float(norm[t, p, k, layer]),
                                "similarity": float(sim[t, p, k, layer]),
                                "similarity_original": float(simo[t, p, k, layer])})
            return pd.DataFrame(rows)
        if kind == "heads":
            ratio = np.nanmean(self.attention_ratio, axis=(1, 3))           # [T, P, layers, H]
            mass = np.nanmean(self.attention_mass, axis=(1, 3))
            rows = []
            for t, (tid, text, g) in enumerate(zip(self.token_ids, self.token_texts, self.groups)):
                for p, pos in enumerate(positions):
                    for layer in range(self.n_layers):
                        for h in range(self.n_heads):
                            rows.append({"group": g, "token_id": tid, "token": text, "position": pos,
                                         "layer": layer + 1, "head": h,
                                         "attention_ratio": float(ratio[t, p, layer, h]),
                                         "attention_mass": float(mass[t, p, layer, h])})
            return pd.DataFrame(rows)
        if kind == "summary":
            rows = []
            groups = np.asarray(self.groups)
            for metric in ("attention_ratio", "hidden_norm_ratio", "similarity", "similarity_original"):
                curves = self.token_curves(metric)
                offset = 1 if metric.startswith("attention") else 0
                for g in dict.fromkeys(self.groups):
                    sel = curves[groups == g]
                    for layer in range(curves.shape[1]):
                        v = sel[:, layer]
                        rows.append({"metric": metric, "group": g, "layer": layer + offset, "tokens": len(v),
                                     "mean": float(np.nanmean(v)), "std": float(np.nanstd(v)),
                                     "q25": float(np.nanpercentile(v, 25)), "median": float(np.nanmedian(v)),
                                     "q75": float(np.nanpercentile(v, 75))})
            return pd.DataFrame(rows)
        raise InputError(f"kind must be 'layers', 'heads' or 'summary', got {kind!r}")

    def summary(self) -> str:
        """Markdown: per group, the attention ratio, norm ratio and similarity averaged over layers."""
        groups = np.asarray(self.groups)
        lines = [f"# Attention analysis: {self.model}", "",
                 f"{sum(groups != 'control')} analysed and {sum(groups == 'control')} control tokens, "
                 f"{len(self.sentences)} sentences, positions {', '.join(self.params['positions'])}, "
                 f"1..{self.params['max_copies']} copies, seed {self.params['seed']}.", "",
                 "| group | attention ratio (mean over layers) | attention ratio (last layer) | "
                 "hidden-norm ratio (last layer) | similarity (last layer) |", "|---|---|---|---|---|"]
        ratio, norm, sim = (self.token_curves(m) for m in ("attention_ratio", "hidden_norm_ratio", "similarity"))
        for g in dict.fromkeys(self.groups):
            s = groups == g
            lines.append(f"| {g} | {np.nanmean(ratio[s]):.3f} | {np.nanmean(ratio[s, -1]):.3f} | "
                         f"{np.nanmean(norm[s, -1]):.3f} | {np.nanmean(sim[s, -1]):.4f} |")
        lines += ["", "attention ratio: attention mass all positions give to the inserted copies / the copies' "
                  "share of the sequence (1 = their share); similarity: cosine between the mean-pooled "
                  "hidden states (non-special positions) with and without the insertion.", ""]
        lines += [f"- note: {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    # ---- figures -----------------------------------------------------------------------------
    def plot(self, folder: str | None = None, kind: str = "overview"):
        """Draw a figure: 'overview' (three panels), 'attention_share', 'hidden_norm',
        'similarity', 'heads' or 'heatmap'.  With ``folder``, every figure is saved there as PNG
        and PDF and a dict name -> paths is returned; without, the Figure of ``kind``."""
        from .plotting import draw_or_save

        makers = {"overview": self._fig_overview, "attention_share": lambda: self._fig_metric("attention_ratio"),
                  "hidden_norm": lambda: self._fig_metric("hidden_norm_ratio"),
                  "similarity": lambda: self._fig_metric("similarity"), "heads": self._fig_heads,
                  "heatmap": self._fig_heatmap}
        return draw_or_save(makers, folder, kind)

    _LABELS = {"attention_ratio": "attention to copies / their share",
               "hidden_norm_ratio": "hidden-state norm, copies / other tokens",
               "similarity": "cosine(pooled with, pooled without)",
               "similarity_original": "cosine, original tokens only"}

    def _draw_metric(self, ax, metric):
        from .plotting import color

        curves = self.token_curves(metric)
        offset = 1 if metric.startswith("attention") else 0
        layers = np.arange(curves.shape[1]) + offset
        groups = np.asarray(self.groups)
        for g in dict.fromkeys(self.groups):
            sel = curves[groups == g]
            mean = np.nanmean(sel, 0)
            lo, hi = np.nanpercentile(sel, 25, axis=0), np.nanpercentile(sel, 75, axis=0)
            ax.plot(layers, mean, marker="o", color=color(g), label=f"{g} (n={len(sel)})")
            ax.fill_between(layers, lo, hi, color=color(g), alpha=0.2)
        if metric in ("attention_ratio", "hidden_norm_ratio"):
            ax.axhline(1.0, color="#444444", lw=0.8, ls=":")
        ax.set_xlabel("layer" if offset else "layer (0 = embeddings)")
        ax.set_ylabel(self._LABELS[metric])
        ax.set_xticks(layers)
        ax.legend(fontsize=8)

    def _fig_metric(self, metric):
        from .plotting import pyplot

        fig, ax = pyplot().subplots(figsize=(5.5, 4))
        self._draw_metric(ax, metric)
        ax.set_title(f"{self.model}\nmean and 25-75% band over tokens", fontsize=9)
        fig.tight_layout()
        return fig

    def _fig_overview(self):
        from .plotting import pyplot

        fig, axes = pyplot().subplots(1, 3, figsize=(15, 4))
        for ax, metric in zip(axes, ("attention_ratio", "hidden_norm_ratio", "similarity")):
            self._draw_metric(ax, metric)
        fig.suptitle(f"{self.model}: inserted tokens by layer (mean, 25-75% band over tokens; "
                     f"{len(self.sentences)} sentences, 1..{self.params['max_copies']} copies)", fontsize=10)
        fig.tight_layout()
        return fig

    def _fig_heads(self):
        from .plotting import pyplot

        groups = np.asarray(self.groups)
        names = list(dict.fromkeys(self.groups))
        per = {g: np.nanmean(self.attention_ratio[groups == g], axis=(0, 1, 2, 3)) for g in names}  # [layers, H]
        vmax = max(float(np.nanmax(v)) for v in per.values())
        fig, axes = pyplot().subplots(1, len(names), figsize=(4 + 2.5 * len(names), 3.5), squeeze=False,
                                      layout="constrained")
        for ax, g in zip(axes[0], names):
            im = ax.imshow(per[g], aspect="auto", cmap="magma", vmin=0, vmax=vmax)
            ax.set_title(f"{g}: attention ratio", fontsize=9)
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            ax.set_yticks(range(self.n_layers), [str(i + 1) for i in range(self.n_layers)])
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
        return fig

    def _fig_heatmap(self):
        from .plotting import pyplot

        ex = self.example
        if not ex or not ex.get("rows"):
            return None
        plt = pyplot()
        rows = ex["rows"]
        fig, axes = plt.subplots(len(rows), 1, figsize=(max(8, 0.45 * max(len(r["tokens"]) for r in rows)),
                                                       len(rows) * (1.6 + 0.3 * self.n_layers)), squeeze=False,
                                 layout="constrained")
        # the colour scale follows the content positions; frame tokens ([CLS], </s>) may saturate
        vmax = max(float(np.max(np.delete(np.asarray(r["received"]), r.get("special", []), axis=1)))
                   for r in rows if len(r["tokens"]) > len(r.get("special", [])))
        for ax, r in zip(axes[:, 0], rows):
            im = ax.imshow(np.asarray(r["received"]), aspect="auto", cmap="viridis", vmin=0, vmax=vmax)
            ax.set_xticks(range(len(r["tokens"])), r["tokens"], rotation=70, fontsize=7)
            for i in r["inserted"]:
                ax.get_xticklabels()[i].set_color("#c44e52")
                ax.get_xticklabels()[i].set_fontweight("bold")
            ax.set_yticks(range(self.n_layers), [str(i + 1) for i in range(self.n_layers)])
            ax.set_ylabel("layer")
            ax.set_title(f"{r['group']} token {r['token']!r}: attention received per position "
                         f"(x sequence length; 1 = uniform)", fontsize=9)
        fig.colorbar(im, ax=axes[:, 0].tolist(), shrink=0.8)
        fig.suptitle(f"{self.model}: {ex['copies']} copies at random positions (red); colour scale capped at the "
                     "content tokens' maximum (special tokens may saturate)", fontsize=9)
        return fig

    # ---- files -------------------------------------------------------------------------------
    def save(self, folder: str) -> dict[str, Any]:
        """Write attention_layers.csv, attention_heads.csv, attention_summary.csv, summary.md,
        attention.json and the figures (PNG + PDF) into ``folder``; returns the paths."""
        from .plotting import use_agg
        from .results import atomic_write

        use_agg()

        os.makedirs(folder, exist_ok=True)
        paths = {}
        for kind in ("layers", "heads", "summary"):
            path = os.path.join(folder, f"attention_{kind}.csv")
            atomic_write(path, self.to_pandas(kind).to_csv(index=False))
            paths[kind] = path
        paths["summary_md"] = os.path.join(folder, "summary.md")
        atomic_write(paths["summary_md"], self.summary())
        meta = {"model": self.model, "params": self.params, "notes": self.notes,
                "tokens": [{"id": i, "text": t, "group": g} for i, t, g in zip(self.token_ids, self.token_texts, self.groups)],
                "sentences": self.sentences, "n_layers": self.n_layers, "n_heads": self.n_heads}
        atomic_write(os.path.join(folder, "attention.json"), json.dumps(meta, indent=1, ensure_ascii=False))
        paths["figures"] = self.plot(folder)
        self.output = os.path.abspath(folder)
        return paths


# ---- the analysis -----------------------------------------------------------------------------
def analyze(result_or_model=None, *, tokens=None, controls=None, n_tokens: int | None = None,
            sentences=None, n_sentences: int | None = DEFAULT_SENTENCES, max_copies: int = DEFAULT_MAX_COPIES,
            positions: Sequence[str] = POSITIONS, seed: int | None = None, batch_size: int = 32,
            model=None, device: str | None = None, output: str | None = None,
            show_progress_bar: bool | None = None) -> AttentionAnalysis:
    """Insert sticky and control tokens into sentences and measure, per layer (and head), the
    attention the copies draw, their hidden-state norms and the pooled similarity.

    ``result_or_model`` is a DetectionResult or a run folder (tokens: its sticky tokens, at most
    ``n_tokens``; controls: as many from ``result.control_ids``), or a model (SentenceTransformer,
    path or name; then give ``tokens`` and optionally ``controls`` as ids or token strings).
    ``model`` overrides the model named by the run.  ``output`` (default RUN/attention for a
    run) receives the tables and figures; pass ``output=False`` to write nothing.
    """
    from tqdm.auto import tqdm

    from .encoder import _progress_enabled
    from .models import load_model, model_name

    result = resolve_result(result_or_model)
    notes: list[str] = []
    if max_copies < 1:
        raise InputError(f"max_copies must be at least 1, got {max_copies}")
    positions = tuple(positions)
    bad = [p for p in positions if p not in POSITIONS]
    if bad or not positions:
        raise InputError(f"positions must be some of {', '.join(POSITIONS)}, got {', '.join(map(str, positions)) or 'none'}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")

    if result is not None:
        seed = int(result.params.get("seed", 42)) if seed is None else int(seed)
        st = load_model(model if model is not None else result.model, device=device)
        name = result.model
        ids, texts, groups, notes = run_tokens(result, st.tokenizer, tokens, controls, n_tokens, seed)
        if output is None and result.run_dir:
            output = os.path.join(result.run_dir, "attention")
    else:
        seed = 42 if seed is None else int(seed)
        st = load_model(result_or_model if model is None else model, device=device)
        name = model_name(result_or_model if model is None else model)
        if tokens is None:
            raise InputError("give a detection result or run folder, or tokens to analyse")
        ids = token_ids_from(st.tokenizer, tokens)
        if n_tokens is not None:
            ids = ids[:n_tokens]
        if controls is None:
            ctrl = _random_controls(st.tokenizer, len(ids), seed, exclude=set(ids))
            notes.append("no detection result: control tokens are a seeded draw of single-token words")
        else:
            ctrl = token_ids_from(st.tokenizer, controls)
        groups = ["sticky"] * len(ids) + ["control"] * len(ctrl)
        ids = ids + list(ctrl)
        texts = [None] * len(ids)
    tok = st.tokenizer
    texts = [t if t is not None else token_text(tok, i) for t, i in zip(texts, ids)]
    sents = load_sentences(sentences, n_sentences, seed)
    content = [tok.encode(s, add_special_tokens=False) for s in sents]

    runner = _Runner(st, batch_size, None)
    T, S, P, K = len(ids), len(sents), len(positions), max_copies
    n_pre = len(runner.prefix)

    # every (t, s, p, k) row; random rows built cumulatively from one generator per (t, s)
    jobs: list[tuple[tuple[int, int, int, int], list[int], list[int]]] = []
    for t, tid in enumerate(ids):
        for s, c in enumerate(content):
            room = runner.max_length - len(runner.prefix) - len(runner.suffix) - K
            c = c[:max(room, 0)]
            for p, pos in enumerate(positions):
                if pos == "random":
                    rng = np.random.default_rng([seed, int(tid), s])
                    variants = _random_prefixes(c, int(tid), K, rng)
                else:
                    variants = [insert_token_ids(c, int(tid), k, pos) for k in range(1, K + 1)]
                for k, (seq, ins) in enumerate(variants):
                    jobs.append(((t, s, p, k), seq, ins))

    with runner:
        n_layers = None
        # baselines: each sentence alone
        base_all, base_orig = [], []
        for start in range(0, S, batch_size):
            chunk = content[start:start + batch_size]
            rows = [runner.frame(c) for c in chunk]
            att, hs, mask = runner.forward(rows)
            sp, ins, orig = _masks(rows, [[] for _ in rows], n_pre, len(runner.suffix), mask)
            _, _, _, pa, po = _row_metrics(att, hs, mask, sp, ins, orig)
            base_all.append(pa)
            base_orig.append(po)
            n_layers, n_heads = len(att), att[0].shape[1]
        base_all = np.concatenate(base_all)
        base_orig = np.concatenate(base_orig)

        ratio = np.full((T, S, P, K, n_layers, n_heads), np.nan, dtype=np.float32)
        mass = np.full_like(ratio, np.nan)
        norm = np.full((T, S, P, K, n_layers + 1), np.nan, dtype=np.float32)
        sim = np.full_like(norm, np.nan)
        simo = np.full_like(norm, np.nan)
        order = sorted(range(len(jobs)), key=lambda j: len(jobs[j][1]))
        bar = tqdm(total=len(jobs), desc="attention", unit="seq", disable=not _progress_enabled(show_progress_bar),
                   dynamic_ncols=True)
        for start in range(0, len(order), batch_size):
            batch = [jobs[j] for j in order[start:start + batch_size]]
            rows = [runner.frame(seq) for _, seq, _ in batch]
            att, hs, mask = runner.forward(rows)
            sp, insm, orig = _masks(rows, [ins for _, _, ins in batch], n_pre, len(runner.suffix), mask)
            r, ms, nr, pa, po = _row_metrics(att, hs, mask, sp, insm, orig)
            for b, ((t, s, p, k), _, _) in enumerate(batch):
                ratio[t, s, p, k] = r[b]
                mass[t, s, p, k] = ms[b]
                norm[t, s, p, k] = nr[b]
                sim[t, s, p, k] = _cos(pa[b], base_all[s])
                simo[t, s, p, k] = _cos(po[b], base_orig[s])
            bar.update(len(batch))
        bar.close()
        example = _example(runner, ids, texts, groups, content, sents, seed, K)

    analysis = AttentionAnalysis(
        model=name, params={"seed": seed, "max_copies": K, "positions": list(positions), "n_sentences": S,
                            "batch_size": batch_size, "pooling": "mean over non-special positions",
                            "insertion": "token ids; prefix, suffix, random (cumulative, seeded by seed, token id, sentence)"},
        token_ids=[int(i) for i in ids], token_texts=texts, groups=groups, sentences=sents,
        attention_ratio=ratio, attention_mass=mass, hidden_norm_ratio=norm, similarity=sim,
        similarity_original=simo, example=example, notes=notes)
    if output:
        analysis.save(output)
    return analysis


def _masks(rows, inserted, n_pre, n_suf, mask):
    """special / inserted / original-token float masks [B, L] for framed rows."""
    import torch

    B, L = mask.shape
    sp = torch.zeros((B, L))
    ins = torch.zeros((B, L))
    for b, (r, pos) in enumerate(zip(rows, inserted)):
        sp[b, :n_pre] = 1
        sp[b, len(r) - n_suf:len(r)] = 1
        for i in pos:
            if n_pre + i < len(r) - n_suf:
                ins[b, n_pre + i] = 1
    real = mask.float().cpu()
    orig = real * (1 - sp) * (1 - ins)
    dev = mask.device
    return sp.to(dev), ins.to(dev), orig.to(dev)


def _example(runner, ids, texts, groups, content, sents, seed, K):
    """Attention received per position and layer for one sentence, for the first analysed
    token and the first control token (random positions, min(3, K) copies)."""
    import torch

    picks = []
    for g in dict.fromkeys(groups):
        picks.append(groups.index(g))
    k = min(3, K)
    s = 0
    rows_out = []
    for t in picks:
        rng = np.random.default_rng([seed, int(ids[t]), s])
        seq, ins = _random_prefixes(content[s], int(ids[t]), k, rng)[-1]
        row = runner.frame(seq)
        att, _, mask = runner.forward([row])
        n = len(row)
        received = torch.stack([a[0].float().mean(0)[:n, :n].mean(0) * n for a in att]).cpu().numpy()  # [layers, n]
        toks = runner.tokenizer.convert_ids_to_tokens(row)
        special = list(range(len(runner.prefix))) + list(range(n - len(runner.suffix), n))
        rows_out.append({"token": texts[t], "group": groups[t], "tokens": toks, "special": special,
                         "inserted": [len(runner.prefix) + i for i in ins], "received": received.tolist()})
    return {"sentence": sents[s], "copies": k, "rows": rows_out}


def _random_controls(tokenizer, n, seed, exclude=()):
    """n seeded single-token alphabetic words from the vocabulary, for analyses without a run."""
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_ids)
    pool = sorted(i for t, i in vocab.items() if t.isalpha() and len(t) > 2 and i not in special and i not in exclude)
    if not pool:
        raise InputError("could not find control tokens in the vocabulary; pass controls explicitly")
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice(pool, size=min(n, len(pool)), replace=False)]


# ---- command line -----------------------------------------------------------------------------
def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``attention RUN``."""
    p = subparsers.add_parser(
        "attention", help="attention, hidden-state norms and similarity by layer for a run's sticky tokens",
        description="Insert a finished run's sticky tokens and as many control tokens into corpus sentences "
                    "and measure, by layer and head, the attention the copies draw, their hidden-state norms "
                    "and the pooled similarity; writes CSV tables and PNG/PDF figures.")
    add_run_arguments(p, "attention", "analyse", 32)
    p.add_argument("--sentences", type=int, default=DEFAULT_SENTENCES,
                   help=f"corpus sentences to insert into (default {DEFAULT_SENTENCES})")
    p.add_argument("--corpus", default=None, help="text file with one sentence a line (default: built-in corpus)")
    p.add_argument("--max-copies", type=int, default=DEFAULT_MAX_COPIES,
                   help=f"insert 1..K copies (default {DEFAULT_MAX_COPIES})")
    p.add_argument("--positions", default=",".join(POSITIONS), help="comma-separated: prefix,suffix,random")
    p.set_defaults(func=run_cli)
    return p


def run_cli(args) -> int:
    result = finished_run(args.run)
    output = args.output or os.path.join(args.run, "attention")
    a = analyze(result, n_tokens=args.tokens, sentences=args.corpus, n_sentences=args.sentences,
                max_copies=args.max_copies, positions=[p.strip() for p in args.positions.split(",") if p.strip()],
                seed=args.seed, batch_size=args.batch_size, model=args.model, device=args.device, output=output,
                show_progress_bar=True)
    print(a.summary())
    print(f"tables and figures written to {os.path.abspath(output)}")
    for name in ("attention_layers.csv", "attention_heads.csv", "attention_summary.csv", "overview.png", "heatmap.png"):
        print("  " + os.path.join(os.path.abspath(output), name))
    return 0
