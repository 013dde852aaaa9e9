"""One report across detection runs: a Markdown file and a self-contained HTML file.

For every run: the paper's table row (``DetectionResult.summary_row``), the score
distribution with the shortlist threshold and the verification values with the fence
(``DetectionResult.plot``), the sticky tokens, and, where the run folder holds them, the
attention analysis (RUN/attention) and downstream assessment (RUN/assess) tables and figures.
The Markdown file links its figures from ``figures/`` beside it; the HTML file embeds them
as base64 PNG, so it can be sent on its own.
"""
from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import os
import shutil
from typing import Any, Sequence

from ._version import __version__
from .errors import InputError, check_output_folder
from .metrics import hijack_summary
from .plotting import pyplot, use_agg
from .results import atomic_write, audit_sentence
from .selection import finished_run
from .tables import fmt_value, markdown_table

# a report is a list of blocks: ("h1"|"h2"|"h3"|"p", text), ("table", header, rows), ("img", path, caption)


def _read_csv(path: str) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _num(s: str) -> float:
    try:
        return float(s)
    except (TypeError, ValueError):
        return float("nan")


def _analysis_meta(folder: str, name: str, groups_csv: str) -> tuple[list[str], bool, str]:
    """(notes, stand_ins, controls) of an analysis folder: its JSON's notes, whether the run had
    no sticky tokens so that its top candidates stood in for them (the JSON's ``stand_ins``;
    folders written before that field: a 'candidate' group in the JSON's tokens or the CSV),
    and where its controls came from (``params.controls``; '' before that was recorded)."""
    import json

    notes, stand_ins, controls = [], None, ""
    path = os.path.join(folder, name)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        notes = list(data.get("notes") or [])
        controls = (data.get("params") or {}).get("controls") or ""
        stand_ins = data.get("stand_ins")
        if stand_ins is None and data.get("tokens"):
            stand_ins = any(t.get("group") == "candidate" for t in data["tokens"])
    if stand_ins is None:
        csv_path = os.path.join(folder, groups_csv)
        stand_ins = os.path.isfile(csv_path) and any(r.get("group") == "candidate" for r in _read_csv(csv_path))
    return notes, bool(stand_ins), controls


STAND_IN_GUARD = "no sticky tokens: guard effect not measured; stand-ins shown"
NOT_MEASURED = "not measured"


def _pct(v: float, sign: bool = True) -> str:
    """A share or relative change in %, '-' when there is none (NaN: a clean value of 0)."""
    if v != v:
        return "-"
    return f"{100 * v:+.1f}%" if sign else f"{100 * v:.1f}%"


def _copy_figure(src: str, figures: str, name: str) -> str | None:
    if not os.path.isfile(src):
        return None
    dst = os.path.join(figures, name)
    shutil.copyfile(src, dst)
    return dst


def _run_blocks(i: int, result, figures: str) -> list[tuple]:
    blocks: list[tuple] = []
    run_dir = result.run_dir or ""
    blocks.append(("h2", f"Run {i + 1}: {result.model}"))
    blocks.append(("p", f"Run folder: {run_dir}. Mean similarity {result.mean_similarity:.5f}; shortlist "
                        f"threshold {result.shortlist_threshold:.4f}; fence "
                        + (f"{result.fence:.4f}" if result.fence is not None else "n/a")
                        + f"; seed {result.params.get('seed')}."))
    for note in result.notes:
        blocks.append(("p", f"Note: {note}"))
    fig = result.plot(os.path.join(figures, f"run{i + 1}_detection.png"))
    pyplot().close(fig)
    blocks.append(("img", os.path.join(figures, f"run{i + 1}_detection.png"),
                   "Sticky score distribution with the shortlist threshold (left); cosine verification values "
                   "of the candidates with the fence (right)."))
    if result.has_confidence:
        fig = result.plot_confidence(os.path.join(figures, f"run{i + 1}_confidence.png"))
        pyplot().close(fig)
        robust = result.robust_sticky_tokens(0.9)
        blocks.append(("img", os.path.join(figures, f"run{i + 1}_confidence.png"),
                       f"Candidates' cosine verification values with 95% bootstrap intervals against the fence "
                       f"(P(sticky) from {result.params.get('bootstrap')} resamples of the verification pairs; "
                       f"{len(robust)} candidates have P >= 0.9)."))
    if result.audit:
        blocks.append(("p", audit_sentence(result.audit) + "."))
    if result.sticky_tokens:
        conf = result.has_confidence
        blocks.append(("h3", f"Sticky tokens ({len(result.sticky_tokens)})"))
        blocks.append(("table", ["id", "token", "text", "score", "verification (cos)", "max_prob", "label"]
                       + (["P(sticky)"] if conf else []),
                       [[t.id, t.token, repr(t.text), t.score, t.verification, t.max_prob, t.label]
                        + ([t.confidence] if conf else []) for t in result.sticky_tokens]))
    else:
        blocks.append(("p", "No sticky tokens were found in this run."))

    att = os.path.join(run_dir, "attention")
    if os.path.isfile(os.path.join(att, "attention_summary.csv")):
        notes, stand_ins, controls = _analysis_meta(att, "attention.json", "attention_summary.csv")
        who = "stand-in candidates" if stand_ins else "sticky"
        blocks.append(("h3", "Attention analysis"))
        blocks += [("p", f"Controls: {controls}.")] if controls else []
        blocks += [("p", f"Note: {n.rstrip('.')}.") for n in notes]
        rows = [r for r in _read_csv(os.path.join(att, "attention_summary.csv"))]
        metrics = {"attention_ratio": "attention ratio", "hidden_norm_ratio": "hidden-norm ratio",
                   "similarity": "similarity"}
        layers = sorted({int(r["layer"]) for r in rows})
        table = []
        for m, label in metrics.items():
            for g in dict.fromkeys(r["group"] for r in rows):
                by_layer = {int(r["layer"]): _num(r["mean"]) for r in rows if r["metric"] == m and r["group"] == g}
                table.append([label, g] + [by_layer.get(layer) for layer in layers])
        blocks.append(("table", ["metric", "group"] + [f"L{layer}" for layer in layers], table))
        blocks.append(("p", "Attention ratio: attention mass all positions give to the inserted copies divided by "
                            "their share of the sequence (1 = their share). Hidden-norm ratio: mean hidden-state "
                            "norm at the copies over the other tokens. Similarity: cosine between the mean-pooled "
                            "hidden states with and without the insertion. Means over tokens; layer 0 is the "
                            "embedding output."))
        for name, caption in (("overview", "Attention share, hidden-state norm and similarity by layer, "
                                           f"{who} vs control (mean, 25-75% band)."),
                              ("heads", f"Attention ratio per layer and head, {who} vs control."),
                              ("heatmap", "Attention received per position and layer for one example sentence.")):
            path = _copy_figure(os.path.join(att, f"{name}.png"), figures, f"run{i + 1}_attention_{name}.png")
            if path:
                blocks.append(("img", path, caption))

    ass = os.path.join(run_dir, "assess")
    if os.path.isfile(os.path.join(ass, "assess.csv")):
        notes, stand_ins, controls = _analysis_meta(ass, "assess.json", "assess.csv")
        blocks.append(("h3", "Downstream impact"))
        blocks += [("p", f"Controls: {controls}.")] if controls else []
        # assess's own note on the guard over stand-ins is said once, in the 'Guard:' line below
        blocks += [("p", f"Note: {n.rstrip('.')}.") for n in notes
                   if not (stand_ins and "guard effect not measured" in n)]
        if stand_ins:
            # the guard removes the stand-ins themselves: a '+0.0%' would read as the guard working
            blocks.append(("p", f"Guard: {STAND_IN_GUARD} (the run's top candidates, which the guard itself "
                                "removes, so its values say nothing about sticky tokens)."))

        def guard_cells(r):
            if stand_ins:
                return [NOT_MEASURED, NOT_MEASURED]
            return [_num(r["guard_value"]), _pct(_num(r["guard_relative_change"]))]

        rows = _read_csv(os.path.join(ass, "assess.csv"))
        doses = len({r.get("copies") for r in rows}) > 1   # a copies column only for several doses
        blocks.append(("table", ["group", "task", "target", "metric", *(["copies"] if doses else []), "clean",
                                 "with tokens", "change", "worst", "guard on", "change, guard on"],
                       [[r["group"], r["task"], r["target"], r["metric"], *([r["copies"]] if doses else []),
                         _num(r["baseline"]), _num(r["value"]),
                         _pct(_num(r["relative_change"])),
                         _pct(_num(r["worst_relative_change"])) + (f" ({r['worst_token']!r})"
                                                                   if r.get("worst_token") else ""),
                         *guard_cells(r)] for r in rows]))
        hij = os.path.join(ass, "hijack.csv")
        if os.path.isfile(hij):
            hrows = _read_csv(hij)
            if hrows:
                table = [[h["group"], h["pairs"], _pct(h["hijacked"], False), h["median_copies"],
                          NOT_MEASURED if stand_ins else _pct(h["guard_hijacked"], False)]
                         for h in hijack_summary(hrows, None)]
                blocks.append(("p", "Retrieval hijack: copies of a token inserted into an irrelevant document until "
                                    "it enters the query's top 10."))
                blocks.append(("table", ["group", "token x query pairs", "hijacked within cap", "median copies",
                                         "hijacked, guard on"], table))
        if stand_ins:
            figs = (("assess", "Relative change of each metric with stand-in candidates and control tokens inserted "
                               f"({STAND_IN_GUARD})."),
                    ("hijack", "Share of (token, query) pairs hijacked by at most c copies, stand-in candidates vs "
                               f"control ({STAND_IN_GUARD})."))
        else:
            figs = (("assess", "Relative change of each metric with the tokens inserted, sticky vs control "
                               "(diamonds: guard on)."),
                    ("hijack", "Share of (token, query) pairs hijacked by at most c copies, sticky vs control "
                               "(dashed with markers: guard on)."))
        for name, caption in figs:
            path = _copy_figure(os.path.join(ass, f"{name}.png"), figures, f"run{i + 1}_{name}.png")
            if path:
                blocks.append(("img", path, caption))
    return blocks


def _to_markdown(blocks, base: str) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out += ["#" * int(kind[1]) + " " + b[1], ""]
        elif kind == "p":
            out += [b[1], ""]
        elif kind == "table":
            out += [markdown_table(b[1], b[2], fmt_value), ""]
        elif kind == "img":
            out += [f"![{b[2]}]({os.path.relpath(b[1], base).replace(os.sep, '/')})", "", f"*{b[2]}*", ""]
    return "\n".join(out) + "\n"


# tables sit in a wrapper that scrolls sideways rather than widening the page, and their cells
# may wrap (headers after their underscores, see _breakable; other cells anywhere: paths, token
# lists), so that a wide table such as the summary fits the page; tables with many columns use
# a smaller font
_CSS = """body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;overflow-wrap:anywhere}
.table-wrap{max-width:100%;overflow-x:auto;margin:1em 0}
table{border-collapse:collapse;font-size:0.9em;max-width:100%}table.wide{font-size:0.78em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top;overflow-wrap:anywhere;
word-break:normal}table.wide th,table.wide td{padding:2px 5px}
th{background:#f2f2f2;overflow-wrap:break-word}img{max-width:100%;height:auto;border:1px solid #eee}
figure{margin:1em 0}figcaption{color:#555;font-size:0.9em}h2{border-bottom:1px solid #ddd;padding-bottom:3px}"""
WIDE_TABLE = 8          # columns from which a table gets the smaller font


def _breakable(header) -> str:
    """A header cell's HTML: escaped, with a line-break opportunity after each underscore
    (verification_sent_pair_num wraps at its parts, not mid-word)."""
    return html.escape(str(header)).replace("_", "_<wbr>")


def _to_html(blocks, title: str) -> str:
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{html.escape(title)}</title>",
           f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{html.escape(b[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{html.escape(b[1])}</p>")
        elif kind == "table":
            cls = " class='wide'" if len(b[1]) >= WIDE_TABLE else ""
            out.append(f"<div class='table-wrap'><table{cls}><thead><tr>"
                       + "".join(f"<th>{_breakable(h)}</th>" for h in b[1]) + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{html.escape(fmt_value(v))}</td>" for v in row) + "</tr>" for row in b[2]]
            out.append("</tbody></table></div>")
        elif kind == "img":
            with open(b[1], "rb") as fh:
                data = base64.b64encode(fh.read()).decode("ascii")
            out.append(f"<figure><img alt='{html.escape(b[2])}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(b[2])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def blocks_markdown(blocks, base: str = ".") -> str:
    """Report blocks as Markdown; figures are linked relative to ``base``."""
    return _to_markdown(blocks, base)


def write_blocks(blocks, output: str, name: str, title: str) -> tuple[str, str]:
    """Write report blocks as OUTPUT/NAME.md (figures linked relative to OUTPUT) and
    OUTPUT/NAME.html (self-contained: figures embedded as base64 PNG); returns both paths."""
    md_path, html_path = os.path.join(output, f"{name}.md"), os.path.join(output, f"{name}.html")
    atomic_write(md_path, _to_markdown(blocks, output))
    atomic_write(html_path, _to_html(blocks, title))
    return md_path, html_path


def write_report(runs: Sequence[Any], output: str, title: str | None = None) -> dict[str, str]:
    """Write report.md (+ figures/) and report.html into ``output`` for the given run folders
    or DetectionResults; returns {'markdown': path, 'html': path, 'figures': folder}."""
    if isinstance(runs, (str, os.PathLike)) or not isinstance(runs, Sequence):
        runs = [runs]
    if not runs:
        raise InputError("give at least one run folder to report on")
    results = [finished_run(r) for r in runs]
    from .agreement import agreement, check_distinct

    check_distinct(results)
    check_output_folder(output)
    figures = os.path.join(output, "figures")
    os.makedirs(figures, exist_ok=True)
    use_agg()
    title = title or ("Sticky token report: " + ", ".join(dict.fromkeys(r.model for r in results)))
    blocks: list[tuple] = [("h1", title),
                           ("p", f"Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by stickytoken "
                                 f"{__version__} from {len(results)} run(s).")]
    rows = [r.summary_row() for r in results]
    header = list(rows[0])
    blocks += [("h2", "Summary"), ("table", ["run"] + header + ["mean_similarity"],
                                   [[i + 1] + [row.get(h) for h in header] + [r.mean_similarity]
                                    for i, (row, r) in enumerate(zip(rows, results))])]
    if len(results) >= 2:
        try:
            blocks += agreement(results).blocks()
        except InputError as exc:   # runs of other vocabularies: no token is matched across them
            blocks += [("h2", f"Sticky tokens across the {len(results)} runs"), ("p", f"Not shown: {exc}.")]
    for i, r in enumerate(results):
        blocks += _run_blocks(i, r, figures)
    md_path, html_path = write_blocks(blocks, output, "report", title)
    return {"markdown": md_path, "html": html_path, "figures": figures}
