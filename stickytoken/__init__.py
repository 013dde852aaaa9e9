"""stickytoken: find sticky tokens in text embedding models, fast.

>>> import stickytoken
>>> result = stickytoken.detect()            # bundled all-MiniLM-L6-v2, built-in corpus
>>> result.sticky_tokens
"""
from ._version import __version__
from .errors import InputError, RunFolderError, StickyTokenError
from .api import detect
from .results import DetectionResult, TokenResult
from .models import load_model
from .attention import analyze
from . import assess  # the module: stickytoken.assess.assess(...)
from .guard import StickyGuard
from .report import write_report
from .compare import Comparison, compare  # stickytoken.compare is the function
from .check import CheckResult, check      # stickytoken.check is the function

__all__ = ["__version__", "detect", "DetectionResult", "TokenResult", "load_model", "analyze",
           "StickyGuard", "write_report", "compare", "Comparison", "check", "CheckResult", "StickyTokenError", "InputError", "RunFolderError"]
