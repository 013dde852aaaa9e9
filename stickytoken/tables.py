"""Markdown tables, written one way everywhere (summaries, reports)."""
from __future__ import annotations

from typing import Any, Sequence


def fmt_value(v: Any) -> str:
    """A table cell: '-' for None / NaN, integers without decimals, 4 decimals below 1000."""
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "-"
        if v.is_integer() and abs(v) < 1e6:
            return f"{v:g}"
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return str(v)


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], fmt=str) -> str:
    """A Markdown table; each cell goes through ``fmt`` (default ``str``), pipes are escaped
    and newlines flattened so a cell never breaks the table."""
    def cell(v: Any) -> str:
        return fmt(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def json_ready(v: Any) -> Any:
    """``v`` as strict JSON takes it, recursively: NaN and infinities -> None, NumPy scalars
    and arrays -> Python numbers and lists, tuples -> lists."""
    if isinstance(v, dict):
        return {k: json_ready(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_ready(x) for x in v]
    if hasattr(v, "tolist") and type(v).__module__ == "numpy":   # NumPy scalar or array (no NumPy import here)
        return json_ready(v.tolist())
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return None
    return v
