"""Figures: the shared helpers (Agg backend, saving PNG + PDF, colours for sticky vs control),
and the figures of the attention analysis and the downstream assessment."""
from __future__ import annotations

import os

import numpy as np

from .errors import InputError

COLORS = {"sticky": "#c44e52", "candidate": "#dd8452", "control": "#4c72b0", "baseline": "#8c8c8c",
          "guard": "#55a868"}


def use_agg() -> None:
    """Switch matplotlib to the Agg backend unless a notebook backend (inline, widget) is in use;
    called before figures are written to files."""
    import matplotlib

    backend = matplotlib.get_backend().lower()
    if "inline" not in backend and "ipympl" not in backend and "widget" not in backend:
        matplotlib.use("Agg", force=True)


def pyplot():
    """matplotlib.pyplot, on whatever backend is active."""
    import matplotlib.pyplot as plt

    return plt


_FONT_CHARS: dict[str, frozenset] = {}


def drawable(text: str) -> str:
    """``text`` with every character the figures' font cannot draw written as ``U+XXXX``
    (a token such as ``'大'`` would otherwise show as an empty box, with a warning from
    matplotlib per character), and ``$`` escaped so that two of them do not start mathtext;
    characters the font has are kept as they are."""
    from matplotlib import font_manager, ft2font

    path = font_manager.findfont(font_manager.FontProperties())
    chars = _FONT_CHARS.get(path)
    if chars is None:
        chars = _FONT_CHARS[path] = frozenset(ft2font.FT2Font(path).get_charmap())
    out = "".join(c if ord(c) in chars or c in "\n\t" else f"U+{ord(c):04X}" for c in str(text))
    return out.replace("$", r"\$")     # a literal dollar, not the start of mathtext


def figure_path(path) -> str:
    """``path`` checked before a figure is drawn for it: a file name whose ending is a format
    matplotlib writes (or none: PNG), in a folder that can be made or written (made here);
    an InputError otherwise."""
    from matplotlib.backend_bases import FigureCanvasBase

    from .errors import check_output_folder

    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"path must be a file name, got {type(path).__name__}")
    path = os.fspath(path)
    ending = os.path.splitext(path)[1].lower().lstrip(".")
    formats = FigureCanvasBase.get_supported_filetypes()
    if ending and ending not in formats:
        raise InputError(f"cannot save a figure as {path!r}: end the name with one of {', '.join(sorted(formats))}")
    folder = os.path.dirname(os.path.abspath(path))
    check_output_folder(folder, "folder", hint="give another path")
    os.makedirs(folder, exist_ok=True)
    return path


def save_figure(fig, folder: str, name: str, close: bool = True) -> list[str]:
    """Save ``fig`` as folder/name.png and folder/name.pdf; returns both paths."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = os.path.join(folder, f"{name}.{ext}")
        tmp = os.path.join(folder, f".tmp-{name}.{ext}")
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=ext)
        os.replace(tmp, path)
        paths.append(path)
    if close:
        pyplot().close(fig)
    return paths


def color(group: str) -> str:
    return COLORS.get(group, "#937860")


# a run without sticky tokens is analysed on its top candidates (selection.select_tokens), in a
# group named 'candidate': figures call them what they are
GROUP_LABELS = {"candidate": "stand-in candidate"}
STAND_IN_TITLE = "no sticky tokens: top candidates stand in; guard effect not measured"


def group_label(group: str) -> str:
    return GROUP_LABELS.get(group, group)


def _plain_number(v: float) -> str:
    if v >= 1:
        return f"{v:,.0f}"
    return f"{v:.6f}".rstrip("0").rstrip(".")


def plain_log_axis(axis) -> None:
    """Label a log-scaled axis with plain numbers ('0.1', '6', '20', '1,000') instead of
    matplotlib's 6x10^0 notation; the ticks that get a label are matplotlib's usual choice."""
    from matplotlib.ticker import LogFormatterSciNotation

    class _Plain(LogFormatterSciNotation):
        def __call__(self, x, pos=None):
            return _plain_number(x) if super().__call__(x, pos) else ""

    axis.set_major_formatter(_Plain(10))
    axis.set_minor_formatter(_Plain(10, labelOnlyBase=False))


def draw_or_save(makers: dict, folder, kind: str):
    """Without ``folder``: the Figure ``makers[kind]()`` (InputError for an unknown kind).
    With ``folder``: every figure saved there as PNG and PDF; returns a dict name -> paths."""
    if folder is None:
        if kind not in makers:
            raise InputError(f"kind must be one of {', '.join(makers)}, got {kind!r}")
        return makers[kind]()
    out = {}
    for name, make in makers.items():
        fig = make()
        if fig is not None:
            out[name] = save_figure(fig, folder, name)
    return out


# ---- attention analysis figures ----------------------------------------------------------------
def attention_figures(a) -> dict:
    """Figure makers of an AttentionAnalysis, by name (``draw_or_save`` draws or saves them)."""
    return {"overview": lambda: attention_overview_figure(a),
            "attention_share": lambda: attention_metric_figure(a, "attention_ratio"),
            "hidden_norm": lambda: attention_metric_figure(a, "hidden_norm_ratio"),
            "similarity": lambda: attention_metric_figure(a, "similarity"),
            "heads": lambda: attention_heads_figure(a), "heatmap": lambda: attention_heatmap_figure(a)}


ATTENTION_LABELS = {"attention_ratio": "attention to copies / their share",
                    "hidden_norm_ratio": "hidden-state norm, copies / other tokens",
                    "similarity": "cosine(pooled with, pooled without)",
                    "similarity_original": "cosine, original tokens only"}


def _attention_axes(a, ax, metric):
    """Draw ``metric`` by layer into ``ax``: per group, the mean and the 25-75% band over tokens."""
    curves = a.token_curves(metric)
    offset = 1 if metric.startswith("attention") else 0
    layers = np.arange(curves.shape[1]) + offset
    groups = np.asarray(a.groups)
    for g in dict.fromkeys(a.groups):
        sel = curves[groups == g]
        mean = np.nanmean(sel, 0)
        lo, hi = np.nanpercentile(sel, 25, axis=0), np.nanpercentile(sel, 75, axis=0)
        ax.plot(layers, mean, marker="o", color=color(g), label=f"{group_label(g)} (n={len(sel)})")
        ax.fill_between(layers, lo, hi, color=color(g), alpha=0.2)
    if metric in ("attention_ratio", "hidden_norm_ratio"):
        ax.axhline(1.0, color="#444444", lw=0.8, ls=":")
    ax.set_xlabel("layer" if offset else "layer (0 = embeddings)")
    ax.set_ylabel(ATTENTION_LABELS[metric])
    ax.set_xticks(layers)
    ax.legend(fontsize=8)


def attention_metric_figure(a, metric):
    """One metric by layer, per group (mean and 25-75% band over tokens)."""
    fig, ax = pyplot().subplots(figsize=(5.5, 4))
    _attention_axes(a, ax, metric)
    ax.set_title(f"{a.model}\nmean and 25-75% band over tokens", fontsize=9)
    fig.tight_layout()
    return fig


def attention_overview_figure(a):
    """Attention ratio, hidden-norm ratio and similarity by layer, side by side."""
    fig, axes = pyplot().subplots(1, 3, figsize=(15, 4))
    for ax, metric in zip(axes, ("attention_ratio", "hidden_norm_ratio", "similarity")):
        _attention_axes(a, ax, metric)
    stand_in = "; no sticky tokens: top candidates stand in" if "candidate" in a.groups else ""
    fig.suptitle(f"{a.model}: inserted tokens by layer (mean, 25-75% band over tokens; "
                 f"{len(a.sentences)} sentences, 1..{a.params['max_copies']} copies{stand_in})", fontsize=10)
    fig.tight_layout()
    return fig


def attention_heads_figure(a):
    """Attention ratio per layer and head, one panel per group."""
    groups = np.asarray(a.groups)
    names = list(dict.fromkeys(a.groups))
    per = {g: np.nanmean(a.attention_ratio[groups == g], axis=(0, 1, 2, 3)) for g in names}  # [layers, H]
    vmax = max(float(np.nanmax(v)) for v in per.values())
    fig, axes = pyplot().subplots(1, len(names), figsize=(4 + 2.5 * len(names), 3.5), squeeze=False,
                                  layout="constrained")
    for ax, g in zip(axes[0], names):
        im = ax.imshow(per[g], aspect="auto", cmap="magma", vmin=0, vmax=vmax)
        ax.set_title(f"{group_label(g)}: attention ratio", fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_yticks(range(a.n_layers), [str(i + 1) for i in range(a.n_layers)])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    return fig


def attention_heatmap_figure(a):
    """Attention received per position and layer for the analysis' example sentence."""
    ex = a.example
    if not ex or not ex.get("rows"):
        return None
    rows = ex["rows"]
    fig, axes = pyplot().subplots(len(rows), 1, figsize=(max(8, 0.45 * max(len(r["tokens"]) for r in rows)),
                                                         len(rows) * (1.6 + 0.3 * a.n_layers)),
                                  squeeze=False, layout="constrained")
    # the colour scale follows the content positions; frame tokens ([CLS], </s>) may saturate
    vmax = max(float(np.max(np.delete(np.asarray(r["received"]), r.get("special", []), axis=1)))
               for r in rows if len(r["tokens"]) > len(r.get("special", [])))
    for ax, r in zip(axes[:, 0], rows):
        im = ax.imshow(np.asarray(r["received"]), aspect="auto", cmap="viridis", vmin=0, vmax=vmax)
        ax.set_xticks(range(len(r["tokens"])), [drawable(t) for t in r["tokens"]], rotation=70, fontsize=7)
        for i in r["inserted"]:
            ax.get_xticklabels()[i].set_color("#c44e52")
            ax.get_xticklabels()[i].set_fontweight("bold")
        ax.set_yticks(range(a.n_layers), [str(i + 1) for i in range(a.n_layers)])
        ax.set_ylabel("layer")
        ax.set_title(f"{group_label(r['group'])} token {drawable(repr(r['token']))}: attention received per position "
                     f"(x sequence length; 1 = uniform)", fontsize=9)
    fig.colorbar(im, ax=axes[:, 0].tolist(), shrink=0.8)
    fig.suptitle(f"{a.model}: {ex['copies']} copies at random positions (red); colour scale capped at the "
                 "content tokens' maximum (special tokens may saturate)", fontsize=9)
    return fig


# ---- assessment figures ------------------------------------------------------------------------
def assess_figures(a) -> dict:
    """Figure makers of an Assessment, by name."""
    return {"assess": lambda: assess_bars_figure(a), "hijack": lambda: assess_hijack_figure(a)}


def assess_bars_figure(a):
    """Each metric's relative change with the tokens inserted, per group (guard on as diamonds);
    of several doses, the largest."""
    df = a.to_pandas("summary")
    if df.empty:
        return None
    dose = int(df["copies"].max())
    several = df["copies"].nunique() > 1
    df = df[df["copies"] == dose]
    cond = list(dict.fromkeys(zip(df["task"], df["target"], df["metric"])))
    groups = list(dict.fromkeys(df["group"]))
    width = 0.8 / len(groups)
    fig, ax = pyplot().subplots(figsize=(max(7, 1.0 * len(cond)), 4.2))
    x = np.arange(len(cond))
    for i, g in enumerate(groups):
        sub = df[df["group"] == g].set_index(["task", "target", "metric"])
        xs = x + (i - (len(groups) - 1) / 2) * width
        vals = [100 * sub.loc[c, "relative_change"] for c in cond]
        errs = [100 * np.nan_to_num(sub.loc[c, "relative_change_std"]) for c in cond]
        ax.bar(xs, vals, width, yerr=errs, capsize=2, color=color(g), label=group_label(g))
        if a.params.get("guard") and g not in ("control", "candidate"):    # stand-ins: guard not measured
            ax.scatter(xs, [100 * sub.loc[c, "guard_relative_change"] for c in cond], marker="D", s=28,
                       color=color("guard"), edgecolor="black", zorder=3, label=f"{g}, guard on")
    ax.axhline(0, color="#444444", lw=0.8)
    ax.set_xticks(x, [f"{m}\n{tg}" if t == "retrieval" else f"{m}\n{t}" for t, tg, m in cond], fontsize=7)
    ax.set_ylabel("relative change vs clean (%)")
    ax.set_title(f"{a.model}: {dose} copies inserted{' (the largest dose)' if several else ''} "
                 "(mean, std over tokens)"
                 + (f"\n{STAND_IN_TITLE}" if "candidate" in groups else ""), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def assess_hijack_figure(a):
    """Share of (token, query) pairs hijacked by at most c copies, per group."""
    if not a.hijack:
        return None
    cap = a.params["max_copies"]
    cs = np.arange(1, cap + 1)
    fig, ax = pyplot().subplots(figsize=(5.5, 4))
    def share_hijacked(sel, key):
        need = np.array([np.inf if h[key] is None else h[key] for h in sel])
        return [100 * np.mean(need <= c) for c in cs]

    groups = list(dict.fromkeys(h["group"] for h in a.hijack))
    for grp in groups:
        sel = [h for h in a.hijack if h["group"] == grp]
        # analysed tokens: thick and solid; control: dotted, on top; so coinciding curves stay apart
        # (all above the axes' spines, unclipped: a curve at 0% runs along the x axis, visible)
        style = dict(ls=":", lw=1.8, zorder=3) if grp == "control" else dict(ls="-", lw=3, alpha=0.85, zorder=2.6)
        ax.step(cs, share_hijacked(sel, "copies_needed"), where="post", color=color(grp), label=group_label(grp),
                clip_on=False, **style)
        if a.params.get("guard") and grp not in ("control", "candidate"):    # stand-ins: guard not measured
            # dashed with markers, above the group curves: visible where it coincides with the control curve
            ax.step(cs, share_hijacked(sel, "guard_copies_needed"), where="post", color=color("guard"), ls="--",
                    lw=1.5, marker="D", markersize=4, markeredgecolor="black", markeredgewidth=0.5, zorder=4, clip_on=False,
                    label=f"{group_label(grp)}, guard on")
    top = max(max(line.get_ydata().max() for line in ax.get_lines()), 0)
    ax.set_ylim(0, max(10.0, 1.08 * top))           # a share in %: from 0, even when nothing is hijacked
    ax.set_xlabel("copies inserted into an irrelevant document")
    ax.set_ylabel("queries hijacked (% of token x query pairs)")
    ax.set_title(f"{a.model}: irrelevant document enters the top 10"
                 + (f"\n{STAND_IN_TITLE}" if "candidate" in groups else ""), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---- detection figures -------------------------------------------------------------------------
def confidence_figure(result):
    """The candidates' cosine verification values (highest first) with their 95% bootstrap
    intervals, against the fence and its bootstrap interval; sticky tokens in red."""
    cands = sorted((c for c in result.candidates if c.verification_low is not None),
                   key=lambda c: -c.verification)
    if not cands:
        return None
    x = np.arange(len(cands))
    v = np.array([c.verification for c in cands])
    err = np.array([[c.verification - c.verification_low for c in cands],
                    [c.verification_high - c.verification for c in cands]])
    colors = [color("sticky") if c.sticky else color("control") for c in cands]
    fig, ax = pyplot().subplots(figsize=(max(6.0, min(16.0, 0.05 * len(cands) + 6)), 4))
    ax.errorbar(x, v, yerr=err, fmt="none", ecolor="#999999", elinewidth=0.8, zorder=1)
    ax.scatter(x, v, c=colors, s=12, zorder=2)
    if result.fence is not None:
        ax.axhline(result.fence, color=color("sticky"), ls="--", lw=1, label=f"fence {result.fence:.3f}")
    if result.fence_interval:
        ax.axhspan(*result.fence_interval, color=color("sticky"), alpha=0.12, label="fence, 95% bootstrap interval")
    ax.set_xlabel("candidates, by cosine verification value")
    ax.set_ylabel("cosine verification value")
    ax.set_title(f"{result.model}:\nverification values with 95% bootstrap intervals "
                 f"({len(result.sticky_tokens)} sticky in red)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---- comparison of two runs --------------------------------------------------------------------
def compare_figure(c, max_labels: int = 25):
    """B's cosine sticky scores against A's over the tokens both runs scored (a Comparison):
    each run's shortlist threshold (A vertical, B horizontal) and the sticky tokens
    highlighted (shared, only in A, only in B), the highest-scored of them labelled."""
    scores = np.asarray(c.common_scores, dtype=np.float64).reshape(-1, 2)
    flags = np.asarray(c.common_sticky)
    fig, ax = pyplot().subplots(figsize=(6.5, 5.5))
    styles = {0: ("neither", "#b0b0b0", 8), 1: ("sticky in A only", "#dd8452", 28),
              2: ("sticky in B only", "#8172b3", 28), 3: ("sticky in both", color("sticky"), 34)}
    for flag, (label, col, size) in styles.items():
        sel = flags == flag
        if sel.any():
            ax.scatter(scores[sel, 0], scores[sel, 1], s=size, color=col, alpha=0.6 if flag == 0 else 0.9,
                       edgecolor="none" if flag == 0 else "black", linewidth=0.4, label=f"{label} ({int(sel.sum())})",
                       zorder=1 if flag == 0 else 3)
    ax.axvline(c.a.shortlist_threshold, color="#4c72b0", ls="--", lw=1,
               label=f"A's threshold {c.a.shortlist_threshold:.3g}")
    ax.axhline(c.b.shortlist_threshold, color="#55a868", ls="--", lw=1,
               label=f"B's threshold {c.b.shortlist_threshold:.3g}")
    texts = list(c.common_texts)
    marked = np.flatnonzero(flags > 0)
    if len(marked) and len(texts) == len(flags):
        top = marked[np.argsort(-scores[marked].max(axis=1), kind="stable")[:max_labels]]
        for j in top:
            ax.annotate(drawable(repr(texts[j])), (scores[j, 0], scores[j, 1]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    rho = "n/a" if c.spearman is None else f"{c.spearman:.3f}"
    ax.set_xlabel(f"A: cosine sticky score ({c.a.model})", fontsize=8)
    ax.set_ylabel(f"B: cosine sticky score ({c.b.model})", fontsize=8)
    ax.set_title(f"sticky scores, B against A: Spearman {rho} over {c.n_common_scored} tokens both scored", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig
