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
  representation with and without the insertion, pooled as the model's Pooling module pools:
  for mean (and any other) pooling, the mean of that layer's hidden states over *all
  non-special positions* (inserted copies included, as mean pooling sees them); for
  last-token pooling (decoder embedders such as e5-mistral, SFR, gte-Qwen2) the hidden state
  at the last position, the appended eos where the tokenizer appends one; for cls pooling the
  first position.  ``similarity_original`` pools over the original sentence's tokens only (copies
  excluded), showing how much the copies change the representation of the other tokens.

Attention weights need eager attention: a model running SDPA or flash attention is switched
to eager for the analysis and switched back afterwards.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .encoder import progress_enabled, tokenizer_frame
from .errors import InputError, check_output_folder
from .options import DEFAULT_MAX_COPIES, POSITIONS
from .plotting import attention_figures, draw_or_save, use_agg
from .results import atomic_write
from .selection import DEFAULT_SENTENCES, analysis_inputs, controls_said, load_sentences
from .tables import json_ready, markdown_table

logger = logging.getLogger(__name__)

POOLED = {"mean": "mean over non-special positions", "lasttoken": "last position (last-token pooling)",
          "cls": "first position (cls pooling)"}


# ---- the model ------------------------------------------------------------------------------
def hf_model(model):
    """The Hugging Face model under a SentenceTransformer's first (Transformer) module."""
    first = model[0] if hasattr(model, "__getitem__") else model
    for name in ("auto_model", "model"):
        hf = getattr(first, name, None)
        if hf is not None and hasattr(hf, "config"):
            return hf
    raise InputError("the model's first module holds no Hugging Face transformer; "
                     "attention analysis needs a transformer-based sentence-transformers model")


@contextlib.contextmanager
def attention_implementation(hf, impl: str):
    """``hf`` (a Hugging Face model) with its attention implementation switched to ``impl``
    ("eager", "sdpa", ...) for the block, and switched back after."""
    before = getattr(hf.config, "_attn_implementation", None)
    if before in (None, impl):
        yield hf
        return
    _set_attention(hf, impl)
    logger.info("switched attention from %s to %s", before, impl)
    try:
        yield hf
    finally:
        _set_attention(hf, before)


def _set_attention(hf, impl: str) -> None:
    try:
        hf.set_attn_implementation(impl)
    except Exception:  # older transformers: the config field is the switch
        hf.config._attn_implementation = impl


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
        self._switch = None

    def __enter__(self):
        self._switch = attention_implementation(self.hf, "eager")
        self._switch.__enter__()
        return self

    def __exit__(self, *exc):
        self._switch.__exit__(*exc)

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


def pooling_mode(model) -> str:
    """'lasttoken', 'cls' or 'mean': how the model's sentence-transformers Pooling module pools
    (mean for any other mode, or when there is no Pooling module)."""
    for module in (model if hasattr(model, "__iter__") else []):
        mode = getattr(module, "pooling_mode", None)
        if mode is None and hasattr(module, "get_pooling_mode_str"):
            mode = module.get_pooling_mode_str()
        if mode is not None:
            modes = (mode,) if isinstance(mode, str) else tuple(mode)
            if modes in (("lasttoken",), ("cls",)):
                return modes[0]
            return "mean"
    return "mean"


def _pool(h, mask, content, pooling: str):
    """[B, L, d] hidden states -> [B, d] as ``pooling`` pools (right-padded rows)."""
    import torch

    if pooling == "lasttoken":
        last = mask.sum(-1).long().clamp_min(1) - 1
        return h[torch.arange(h.shape[0], device=h.device), last]
    if pooling == "cls":
        return h[:, 0]
    return (h * content[..., None]).sum(1) / content.sum(-1, keepdim=True).clamp_min(1)


def _row_metrics(att, hs, mask, special, inserted, original, pooling: str = "mean"):
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
        pooled_all.append(_pool(h, mask, content, pooling))
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
                 f"{sum(groups != 'control')} analysed and {sum(groups == 'control')} control tokens"
                 f"{controls_said(self.params)}, "
                 f"{len(self.sentences)} sentences, positions {', '.join(self.params['positions'])}, "
                 f"1..{self.params['max_copies']} copies, seed {self.params['seed']}.", ""]
        ratio, norm, sim = (self.token_curves(m) for m in ("attention_ratio", "hidden_norm_ratio", "similarity"))
        rows = []
        for g in dict.fromkeys(self.groups):
            s = groups == g
            rows.append([g, f"{np.nanmean(ratio[s]):.3f}", f"{np.nanmean(ratio[s, -1]):.3f}",
                         f"{np.nanmean(norm[s, -1]):.3f}", f"{np.nanmean(sim[s, -1]):.4f}"])
        lines.append(markdown_table(["group", "attention ratio (mean over layers)", "attention ratio (last layer)",
                                     "hidden-norm ratio (last layer)", "similarity (last layer)"], rows))
        lines += ["", "attention ratio: attention mass all positions give to the inserted copies / the copies' "
                  "share of the sequence (1 = their share); similarity: cosine between the pooled hidden "
                  f"states ({self.params.get('pooling', 'mean over non-special positions')}) with and "
                  "without the insertion.", ""]
        lines += [f"- note: {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    # ---- figures -----------------------------------------------------------------------------
    def plot(self, folder: str | None = None, kind: str = "overview"):
        """Draw a figure: 'overview' (three panels), 'attention_share', 'hidden_norm',
        'similarity', 'heads' or 'heatmap'.  With ``folder``, every figure is saved there as PNG
        and PDF and a dict name -> paths is returned; without, the Figure of ``kind``."""
        return draw_or_save(attention_figures(self), folder, kind)

    def to_json(self) -> dict[str, Any]:
        """What attention.json holds and ``attention --json`` prints: the parameters, the
        tokens, the sentences and the summary rows (``to_pandas("summary")``); NaN is null."""
        return json_ready({
            "model": self.model, "params": self.params, "notes": self.notes,
            "stand_ins": "candidate" in self.groups,     # no sticky tokens: top candidates stood in
            "tokens": [{"id": i, "text": t, "group": g} for i, t, g in zip(self.token_ids, self.token_texts, self.groups)],
            "sentences": self.sentences, "n_layers": self.n_layers, "n_heads": self.n_heads,
            "summary": self.to_pandas("summary").to_dict("records")})

    # ---- files -------------------------------------------------------------------------------
    def save(self, folder: str) -> dict[str, Any]:
        """Write attention_layers.csv, attention_heads.csv, attention_summary.csv, summary.md,
        attention.json and the figures (PNG + PDF) into ``folder``; returns the paths."""
        use_agg()

        check_output_folder(folder, hint="give another folder")
        os.makedirs(folder, exist_ok=True)
        paths = {}
        for kind in ("layers", "heads", "summary"):
            path = os.path.join(folder, f"attention_{kind}.csv")
            atomic_write(path, self.to_pandas(kind).to_csv(index=False))
            paths[kind] = path
        paths["summary_md"] = os.path.join(folder, "summary.md")
        atomic_write(paths["summary_md"], self.summary())
        atomic_write(os.path.join(folder, "attention.json"), json.dumps(self.to_json(), indent=1, ensure_ascii=False))
        paths["figures"] = self.plot(folder)
        self.output = os.path.abspath(folder)
        return paths


# ---- the analysis -----------------------------------------------------------------------------
def analyze(result_or_model=None, *, tokens=None, controls=None, n_tokens: int | None = None,
            sentences=None, n_sentences: int | None = DEFAULT_SENTENCES, max_copies: int = DEFAULT_MAX_COPIES,
            positions: Sequence[str] = POSITIONS, seed: int | None = None, batch_size: int = 32,
            model=None, device: str | None = None, output: str | None = None,
            show_progress_bar: bool | None = None, control_draw: str = "lowest") -> AttentionAnalysis:
    """Insert sticky and control tokens into sentences and measure, per layer (and head), the
    attention the copies draw, their hidden-state norms and the pooled similarity.

    ``result_or_model`` is a DetectionResult or a run folder (tokens: its sticky tokens, at most
    ``n_tokens``; controls: as many from ``result.control_ids``, its lowest-scored tenth or with
    ``control_draw="middle"`` the tenth around its median score), or a model (SentenceTransformer,
    path or name; then give ``tokens`` and optionally ``controls`` as ids or token strings).
    ``model`` overrides the model named by the run.  ``output`` (default RUN/attention for a
    run) receives the tables and figures; pass ``output=False`` to write nothing.
    """
    from tqdm.auto import tqdm

    if max_copies < 1:
        raise InputError(f"max_copies must be at least 1, got {max_copies}")
    positions = tuple(positions)
    bad = [p for p in positions if p not in POSITIONS]
    if bad or not positions:
        raise InputError(f"positions must be some of {', '.join(POSITIONS)}, got {', '.join(map(str, positions)) or 'none'}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")

    sel = analysis_inputs(result_or_model, tokens=tokens, controls=controls, n_tokens=n_tokens, seed=seed,
                          model=model, device=device, subdir="attention", verb="analyse", control_draw=control_draw)
    st, name, seed, ids, texts, groups, notes = sel.model, sel.name, sel.seed, sel.ids, sel.texts, sel.groups, sel.notes
    if output is None:
        output = sel.output
    if output:
        check_output_folder(output)   # (before the model work, not after it)
    tok = st.tokenizer
    sents = load_sentences(sentences, n_sentences, seed)
    content = [tok.encode(s, add_special_tokens=False) for s in sents]

    runner = _Runner(st, batch_size, None)
    pooling = pooling_mode(st)
    T, S, P, K = len(ids), len(sents), len(positions), max_copies
    n_pre = len(runner.prefix)

    # every (t, s, p, k) row; random rows built cumulatively from one generator per (t, s)
    jobs: list[tuple[tuple[int, int, int, int], list[int], list[int]]] = []
    room = max(runner.max_length - len(runner.prefix) - len(runner.suffix) - K, 0)
    cut = sum(len(c) > room for c in content)
    if cut:   # every copy is kept; the sentence gives way
        notes = [*notes, f"{cut} of the {S} sentences {'is' if cut == 1 else 'are'} too long to hold {K} copies "
                         f"within the model's limit of {runner.max_length} tokens: cut to {room} tokens, so that "
                         "every copy is kept"]
        logger.warning("warning: %s", notes[-1])
    for t, tid in enumerate(ids):
        for s, c in enumerate(content):
            c = c[:room]
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
            _, _, _, pa, po = _row_metrics(att, hs, mask, sp, ins, orig, pooling)
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
        bar = tqdm(total=len(jobs), desc="attention", unit="seq", disable=not progress_enabled(show_progress_bar),
                   dynamic_ncols=True)
        for start in range(0, len(order), batch_size):
            batch = [jobs[j] for j in order[start:start + batch_size]]
            rows = [runner.frame(seq) for _, seq, _ in batch]
            att, hs, mask = runner.forward(rows)
            sp, insm, orig = _masks(rows, [ins for _, _, ins in batch], n_pre, len(runner.suffix), mask)
            r, ms, nr, pa, po = _row_metrics(att, hs, mask, sp, insm, orig, pooling)
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
                            "batch_size": batch_size, "pooling": POOLED[pooling], "controls": sel.controls,
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
