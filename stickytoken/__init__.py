"""stickytoken: find sticky tokens in text embedding models, fast.

>>> import stickytoken
>>> result = stickytoken.detect()            # bundled all-MiniLM-L6-v2, built-in corpus
>>> result.sticky_tokens

The names below are imported when first used: ``import stickytoken`` (and the command line's
``--help``, ``compare``, ``report`` and ``models``, and the row-building worker processes)
does not import PyTorch or sentence-transformers.
"""
import importlib
import importlib.util
import sys
import types

from ._version import __version__
from .errors import InputError, RunFolderError, StickyTokenError

# public name -> (module, attribute; None: the module itself)
_LAZY = {
    "detect": ("api", "detect"),
    "DetectionResult": ("results", "DetectionResult"),
    "TokenResult": ("results", "TokenResult"),
    "load_model": ("models", "load_model"),
    "analyze": ("attention", "analyze"),
    "assess": ("assess", None),            # the module, callable as its assess(): stickytoken.assess(run)
    "StickyGuard": ("guard", "StickyGuard"),
    "write_report": ("report", "write_report"),
    "compare": ("compare", "compare"),     # the function, not its module
    "Comparison": ("compare", "Comparison"),
    "check": ("check", "check"),           # the function, not its module
    "CheckResult": ("check", "CheckResult"),
    "agreement": ("agreement", "agreement"),   # the function, not its module
    "Agreement": ("agreement", "Agreement"),
}
# functions that share their module's name: the package attribute stays the function
_FUNCTIONS_NAMED_LIKE_MODULES = frozenset(n for n, (mod, attr) in _LAZY.items() if n == mod and attr == n)

__all__ = ["__version__", "detect", "DetectionResult", "TokenResult", "load_model", "analyze",
           "StickyGuard", "write_report", "compare", "Comparison", "check", "CheckResult", "agreement",
           "Agreement", "StickyTokenError", "InputError", "RunFolderError"]


def __getattr__(name: str):
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        # a submodule not imported yet (stickytoken.models.default_model_path(), as the README shows)
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f".{name}", __name__)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    module = importlib.import_module(f".{module_name}", __name__)
    value = module if attr is None else getattr(module, attr)
    setattr(sys.modules[__name__], name, value)
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """The package: importing ``stickytoken.compare`` or ``stickytoken.check`` as a module
    (``from stickytoken.check import LABELS``) would put the module where the function of
    that name is; it puts the function there."""

    def __setattr__(self, name, value):
        if name in _FUNCTIONS_NAMED_LIKE_MODULES and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
