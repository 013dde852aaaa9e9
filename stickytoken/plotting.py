"""Shared figure helpers: the Agg backend, saving PNG + PDF, colours for sticky vs control."""
from __future__ import annotations

import os

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


def draw_or_save(makers: dict, folder, kind: str):
    """Without ``folder``: the Figure ``makers[kind]()`` (InputError for an unknown kind).
    With ``folder``: every figure saved there as PNG and PDF; returns a dict name -> paths."""
    from .errors import InputError

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
