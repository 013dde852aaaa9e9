"""stickytoken: find sticky tokens in text embedding models, fast.

>>> import stickytoken
>>> result = stickytoken.detect()            # bundled all-MiniLM-L6-v2, built-in corpus
>>> result.sticky_tokens
"""
__version__ = "0.1.0"

from .errors import InputError, RunFolderError, StickyTokenError  # noqa: E402
from .api import detect  # noqa: E402
from .results import DetectionResult, TokenResult  # noqa: E402
from .models import load_model  # noqa: E402
from .attention import analyze  # noqa: E402
from . import assess  # noqa: E402  (the module: stickytoken.assess.assess(...))
from .guard import StickyGuard  # noqa: E402
from .report import write_report  # noqa: E402

__all__ = ["__version__", "detect", "DetectionResult", "TokenResult", "load_model", "analyze",
           "StickyGuard", "write_report", "StickyTokenError", "InputError", "RunFolderError"]
