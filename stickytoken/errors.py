"""Exceptions raised by stickytoken.

Every error a user can cause by bad input is a :class:`StickyTokenError` carrying one
sentence that names the input and what would fix it.  The CLI prints that sentence and exits
with status 2 instead of showing a traceback.
"""


class StickyTokenError(Exception):
    """Base class of stickytoken's user-facing errors."""


class InputError(StickyTokenError, ValueError):
    """A parameter, file or model given by the user cannot be used."""


class RunFolderError(StickyTokenError, ValueError):
    """A run folder holds a run with other parameters, or cannot be written."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message cut to its first line (at most ``limit`` characters), or its
    type's name when it has none: what a log line or a report shows of it."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


def read_user_file(path: str, what: str, hint: str = "") -> str:
    """The UTF-8 text of a file the user named (gzip-compressed where its name ends in .gz),
    without a leading byte-order mark.  A missing path, a folder, a file that cannot be
    read or bytes that are not UTF-8 text raise an InputError naming it as ``what`` (e.g.
    "sentences file"), followed by ``hint``; a pipe (``<(zcat corpus.gz)``, ``/dev/stdin``) reads
    as a file does."""
    import os

    tail = f"; {hint}" if hint else ""
    if not os.path.exists(path):
        raise InputError(f"{what} {path!r} does not exist{tail}")
    if os.path.isdir(path):
        raise InputError(f"{what} {path!r} is a folder, not a file{tail}")
    try:
        if path.lower().endswith(".gz"):   # corpus.txt.gz, stsbenchmark.tsv.gz: read as the name without .gz
            import gzip

            with gzip.open(path, "rt", encoding="utf-8-sig") as fh:
                return fh.read()
        with open(path, encoding="utf-8-sig") as fh:   # a leading byte-order mark (Excel's CSVs) is not text
            return fh.read()
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path!r} is not UTF-8 text") from exc
    except EOFError as exc:   # a .gz cut short
        raise InputError(f"the {what} {path!r} is cut short ({exc})") from exc
    except OSError as exc:
        raise InputError(f"cannot read the {what} {path!r}: {exc.strerror or exc}") from exc


def check_output_folder(path, what: str = "output folder", hint: str = "give another --output") -> None:
    """Refuses, before any work is done, a folder to write into that is a file, or that cannot
    be made or written (an InputError naming it, then ``hint``); nothing is created here."""
    import os

    shown = os.fspath(path)
    probe = os.path.abspath(shown)
    if os.path.exists(probe):
        if not os.path.isdir(probe):
            raise InputError(f"the {what} {shown!r} is a file, not a folder; {hint}")
        if not os.access(probe, os.W_OK):
            raise InputError(f"the {what} {shown!r} is not writable; {hint}")
        return
    parent = os.path.dirname(probe)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise InputError(f"the {what} {shown!r} cannot be made: {parent!r} is a file; {hint}")
    if not os.access(parent, os.W_OK):
        raise InputError(f"the {what} {shown!r} cannot be made: {parent!r} is not writable; {hint}")


def check_int(name: str, value, lo: int = 1, hi: int | None = None) -> int:
    """``value`` as an int in [lo, hi], or an InputError naming ``name`` (a bool is not a
    number here; NumPy's integers are)."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(f"{name} must be a whole number, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise InputError(f"{name} must be {rng}, got {value}")
    return int(value)


def check_texts(name: str, items) -> list:
    """``items`` as a list, or an InputError naming ``name`` and the first item that is not a
    string (a number or None would otherwise be embedded as its printed form)."""
    if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__"):
        raise InputError(f"{name} must be a list of strings (or a file's path), got {type(items).__name__}")
    items = list(items)
    for k, item in enumerate(items):
        if not isinstance(item, str):
            raise InputError(f"{name} must hold strings; item {k} is {type(item).__name__} ({item!r:.60})")
    return items
