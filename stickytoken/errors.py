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
