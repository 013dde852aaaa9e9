"""The hot path: token-id batches through a sentence-transformers model, in length order.

Texts are tokenized once (batched, by the fast tokenizer); token-level variants arrive as
ready id batches from the C core.  Rows are sorted by length so batches carry little padding,
each batch is trimmed to its own longest row.  On CUDA a call's ids go to the device once
and each batch is gathered there; embeddings stay on the device until the whole call is done
and come back in one copy, into pinned memory (with ``wait=False`` a ``Pending`` copy, waited
for by whoever reads it, so the next call's work queues behind it with no pause); attention
avoids cuDNN's kernel (a plan per new shape) and float32 runs exactly (``cuda_kernels``).
Batch size backs off on out-of-memory.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import resource
import sys
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import _core
from .errors import InputError, first_line
from .ragged import Rows
from .rows import RowPool, default_workers, rank_cores
from .tokenizing import tokenize_rows
from .trace import phase

logger = logging.getLogger(__name__)


def progress_enabled(show_progress_bar: bool | None) -> bool:
    """Whether to draw progress bars: as asked, or (None) when the log level shows INFO."""
    if show_progress_bar is None:
        return logging.getLogger("stickytoken").getEffectiveLevel() <= logging.INFO
    return bool(show_progress_bar)


def peak_host_mb() -> float:
    """This process's peak resident memory in MiB: VmHWM from /proc/self/status on Linux (the
    high-water mark of its own memory), else ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def tokenizer_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer puts before and after content, e.g. [CLS] ... [SEP]."""
    probe = "stickytoken probe"
    inner = tokenizer.encode(probe, add_special_tokens=False)
    outer = tokenizer.encode(probe, add_special_tokens=True)
    for start in range(len(outer) - len(inner) + 1):
        if outer[start:start + len(inner)] == inner:
            return list(outer[:start]), list(outer[start + len(inner):])
    raise InputError("could not find how the tokenizer frames its input with special tokens")


class Pending:
    """Embeddings on their way to the host (``Encoder.embed_rows(..., wait=False)``).

    On CUDA the copy back into pinned memory was queued behind the forward passes, with an
    event after it; ``result()`` waits for that event (its seconds go to the encoder's profile
    as ``gpu_wait``) and gives the host tensor.  ``source`` is the tensor being copied (on the
    device; on the CPU the result itself), for more work queued on it before the wait."""

    __slots__ = ("source", "_host", "_event", "_profile")

    def __init__(self, host: torch.Tensor, event=None, source: torch.Tensor | None = None, profile=None):
        self._host, self._event, self._profile = host, event, profile
        self.source = host if source is None else source

    def result(self) -> torch.Tensor:
        if self._event is not None:
            t0 = time.perf_counter()
            with phase("gpu_wait"):
                self._event.synchronize()   # (waits without the GIL)
            if self._profile is not None:
                self._profile["gpu_wait"] += time.perf_counter() - t0
            self._event = None
            self.source = self._host
        return self._host


def ready(x):
    """``x.result()`` for a ``Pending``, else ``x`` itself (a tensor, or None)."""
    return x.result() if isinstance(x, Pending) else x


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``; to CUDA from pinned memory, without waiting."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


ATTENTION_KERNELS = ("flash", "efficient", "math", "cudnn")
DEFAULT_ATTENTION = "flash,efficient,math"


def attention_backends(spec: str | None = None) -> tuple:
    """The SDPA backends named in ``spec`` (comma-separated, of ``ATTENTION_KERNELS``, in the
    order torch should try them); None: the environment's ``STICKYTOKEN_ATTENTION``, else
    ``DEFAULT_ATTENTION``.  Raises InputError on an unknown name."""
    if spec is None:
        spec = os.environ.get("STICKYTOKEN_ATTENTION", "").strip() or DEFAULT_ATTENTION
    return _attention_backends(spec)


@functools.lru_cache(maxsize=None)
def _attention_backends(spec: str) -> tuple:
    names = [n.strip().lower() for n in spec.split(",") if n.strip()]
    bad = [n for n in names if n not in ATTENTION_KERNELS]
    if bad or not names:
        raise InputError(f"unknown attention kernel {(bad or [spec])[0]!r} (STICKYTOKEN_ATTENTION); "
                         f"choose from {', '.join(ATTENTION_KERNELS)}")
    table = _sdpa_backends()
    return tuple(dict.fromkeys(table[n] for n in names))


def _sdpa_backends() -> dict:
    """``ATTENTION_KERNELS``' names -> torch's SDPA backends."""
    from torch.nn.attention import SDPBackend

    return {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION}


@contextlib.contextmanager
def cuda_kernels(device: torch.device, dtype: torch.dtype, attention: str | None = None):
    """The kernels the encoder's forward passes use on CUDA, for the block (settings restored
    after):
    - attention by ``attention`` (``attention_backends``; by default flash, then
      memory-efficient, then math), without cuDNN's: torch 2.11 tries cuDNN first on Hopper,
      and cuDNN builds an execution plan for every new (rows, width) shape, while a detect run
      meets new shapes all along (each length's last batch); on an H100 in bf16, embed_rows
      ran 266k seq/s on shapes already seen and ~23k inside detect runs
      (docs/results/gpu/NOTES.md);
    - float32 exactly: matrix products without TF32, attention by the plain ("math") kernel
      whatever ``attention`` says, so that a float32 run on the GPU gives the values of a
      float32 run on the CPU."""
    if device.type != "cuda":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    exact = dtype == torch.float32
    backends = [SDPBackend.MATH] if exact else list(attention_backends(attention))
    before = torch.backends.cuda.matmul.allow_tf32
    if exact:
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with sdpa_kernel(backends):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


class Encoder:
    """Embeds texts or token-id rows with one model, exactly as ``model.encode`` would.

    ``prompt`` (text) or ``prompt_name`` (a key of ``model.prompts``) is put before every
    text; when neither is given the model's ``default_prompt_name`` applies, as in ``encode``.
    """

    BUDGET_WIDTH = 32   # tokens per row at which a batch holds exactly batch_size rows
    ROW_GROWTH = 8      # a batch of short rows holds at most ROW_GROWTH * batch_size rows

    def __init__(self, model, *, batch_size: int | None = None, show_progress_bar: bool | None = None,
                 prompt: str | None = None, prompt_name: str | None = None, max_length: int | None = None,
                 workers: int | None = None, compile: bool = False):
        self.model = model
        self.tokenizer = model.tokenizer
        if self.tokenizer is None:
            raise InputError("the model has no tokenizer; stickytoken needs a text model with a tokenizer")
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        attention_backends()   # an unknown kernel in STICKYTOKEN_ATTENTION fails here, before any work
        # torch.compile: the same model with fused kernels (values within float rounding of the
        # plain model's), compiled at the first batch and again for a new kind of batch (one
        # row, or with a mask); the model given is left as it is
        self.compiled = torch.compile(model, dynamic=True) if compile else None
        # what came of it, for run.json: None (not asked), "pending", the first compiled pass's
        # seconds (compiling included), or why it failed
        self.compile_state: float | str | None = "pending" if compile else None
        if batch_size is not None and batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        # CUDA: 2048 rows (the bare forward rate on an H100, bf16: 188k seq/s at 512, 230k at 2048,
        # 224k at 4096; docs/results/gpu)
        self.batch_size = batch_size or (2048 if self.device.type == "cuda" else 64)
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer))
                                    or workers < 0):
            raise InputError(f"workers must be a whole number, 0 or more, got {workers!r}")
        # processes that build and tokenize variant rows ahead of the model (stickytoken/rows.py)
        self.workers = default_workers(self.device.type) if workers is None else int(workers)
        cores = rank_cores()
        if self.workers > cores:   # each is busy on a core when it works: more only cost memory and start-up
            logger.warning("warning: %d row-building workers asked for, on %d CPU cores; using %d (results are "
                           "the same with any number)", self.workers, cores, cores)
            self.workers = cores
        self._row_pool: RowPool | None = None
        self._host_thread: ThreadPoolExecutor | None = None
        self._threads_before: int | None = None   # torch's threads before the workers took their cores
        # token budget: a batch of short rows takes more of them (the mean-similarity stage
        # encodes 1-3 token strings), up to ROW_GROWTH x batch_size rows; rows of
        # BUDGET_WIDTH tokens or more go batch_size at a time, as before
        self.token_budget = self.batch_size * self.BUDGET_WIDTH
        self.sequences_done = 0
        self.profile: collections.Counter = collections.Counter()   # seconds: embed, rows_build, rows_wait, host
        self.show_progress_bar = show_progress_bar
        self.max_length = int(max_length or getattr(model, "max_seq_length", None) or 512)
        self.prompt = self._resolve_prompt(prompt, prompt_name)
        names = list(getattr(self.tokenizer, "model_input_names", []) or [])
        self._token_type_ids = "token_type_ids" in names
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        prefix, suffix = tokenizer_frame(self.tokenizer)
        self.frame_prefix = np.asarray(prefix, dtype=np.int64)
        self.frame_suffix = np.asarray(suffix, dtype=np.int64)
        self.prompt_ids = np.asarray(
            self.tokenizer.encode(self.prompt, add_special_tokens=False) if self.prompt else [], dtype=np.int64)
        self._prompt_length = self._pooling_prompt_length()
        # batches without padding drop the all-ones attention mask once the first has shown that this
        # gives the same embeddings (``_forward``): None until then
        self.mask_free: bool | None = None

    # ---- set-up -----------------------------------------------------------------------------
    def _resolve_prompt(self, prompt, prompt_name) -> str:
        prompts = dict(getattr(self.model, "prompts", None) or {})
        if prompt is not None and prompt_name is not None:
            raise InputError("give either prompt or prompt_name, not both")
        if prompt is not None:
            return prompt
        if prompt_name is not None:
            if prompt_name not in prompts:
                raise InputError(f"prompt_name {prompt_name!r} is not one of the model's prompts: {sorted(prompts)}")
            return prompts[prompt_name]
        default = getattr(self.model, "default_prompt_name", None)
        return prompts.get(default, "") if default else ""

    def _pooling_prompt_length(self) -> int | None:
        """Prompt length to hand to a Pooling module that excludes the prompt, else None."""
        if not self.prompt:
            return None
        for module in self.model:
            if getattr(module, "include_prompt", True) is False:
                return len(self.frame_prefix) + len(self.prompt_ids)
        return None

    @property
    def row_pool(self) -> RowPool:
        """The worker processes that build variant rows (started on first use; ``close``
        stops them)."""
        if self._row_pool is None:
            self._row_pool = RowPool(self.tokenizer, self.workers)
            weakref.finalize(self, self._row_pool.close)
            if self.workers:   # the cores the workers take are not this process's: fewer torch threads
                self._threads_before = torch.get_num_threads()
                torch.set_num_threads(max(1, min(self._threads_before, rank_cores() - self.workers)))
        return self._row_pool

    def start_workers(self) -> None:
        """Starts the row-building workers, if any, in the background (``RowPool.start``), so
        that they are ready when the first variant rows are wanted."""
        if self.workers:
            self.row_pool.start()

    @property
    def host_thread(self) -> ThreadPoolExecutor:
        """One thread for a chunk's host work (distances, scores), so that the next chunk's
        forward passes start while it runs; used with workers (``close`` stops it)."""
        if self._host_thread is None:
            self._host_thread = ThreadPoolExecutor(1, thread_name_prefix="stickytoken-host")
            weakref.finalize(self, self._host_thread.shutdown, wait=False)
        return self._host_thread

    def close(self) -> None:
        """Stops the row-building workers and the host thread, if any were started."""
        if self._row_pool is not None:
            self._row_pool.close()
            self._row_pool = None
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)
            self._threads_before = None
        if self._host_thread is not None:
            self._host_thread.shutdown(wait=True)
            self._host_thread = None

    @property
    def dim(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())

    # ---- tokenizing -------------------------------------------------------------------------
    def tokenize_rows(self, texts: Sequence[str]) -> Rows:
        """Texts (prompt added) -> their ids with special tokens, as ragged ``Rows``."""
        return tokenize_rows(self.tokenizer, texts, self.prompt, self.max_length)

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Texts (prompt added) -> padded input_ids, attention_mask (int64) and lengths."""
        rows = self.tokenize_rows(texts)
        ids, mask = rows.padded(self.pad_id)
        return ids, mask, rows.lengths

    def content_ids(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts -> (flat ids, offsets) without special tokens, for build_token_batch."""
        enc = self.tokenizer(list(texts), add_special_tokens=False, padding=False,
                             return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        offsets = np.zeros(len(enc) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(r) for r in enc])
        flat = np.fromiter((i for r in enc for i in r), dtype=np.int64, count=int(offsets[-1]))
        return flat, offsets

    def token_frame(self) -> tuple[np.ndarray, np.ndarray]:
        """Frame for token-level rows: special prefix plus the prompt's ids, special suffix."""
        return np.concatenate([self.frame_prefix, self.prompt_ids]), self.frame_suffix

    # ---- embedding --------------------------------------------------------------------------
    def embed_ids(self, input_ids: np.ndarray, attention_mask: np.ndarray, lengths: np.ndarray,
                  desc: str | None = None, wait: bool = True):
        """Embed right-padded id rows (row i is the first lengths[i] ids); returns a CPU
        tensor [N, dim] in the model's dtype, in row order (a ``Pending`` one without wait)."""
        return self.embed_rows(Rows.from_padded(input_ids, attention_mask, lengths), desc=desc, wait=wait)

    @torch.inference_mode()
    def embed_rows(self, rows: Rows, desc: str | None = None, wait: bool = True):
        """Embed ragged id rows; returns a CPU tensor [N, dim] in the model's dtype, in row
        order.  Rows go through the model in length order, in batches of rows of one length
        (``_batch_stop``), so no batch holds padding.  With ``wait=False`` it returns a
        ``Pending`` (``to_host``): on CUDA the call then ends once its work is queued."""
        with phase("embed_rows"):
            return self._embed_rows(rows, desc, wait)

    def _embed_rows(self, rows: Rows, desc: str | None, wait: bool):
        n = len(rows)
        out = torch.empty((n, self.dim), dtype=self.dtype, device=self.device)
        if n == 0:
            return self.to_host(out, wait)
        t_start = time.perf_counter()
        lengths = rows.lengths
        order = _core.length_order(lengths)
        offsets = rows.offsets
        flat = rows.flat
        cuda = self.device.type == "cuda"
        bar = tqdm(total=n, desc=desc, unit="seq", disable=not (progress_enabled(self.show_progress_bar) and desc),
                   leave=False, dynamic_ncols=True)
        start = 0
        order_t = torch.from_numpy(order)
        sorted_lengths = np.asarray(lengths)[order]
        if cuda:   # the ids go over once, and each batch is gathered on the device: no per-batch copies
            order_t = _to_device(order_t, self.device)
            flat_d = _to_device(torch.from_numpy(np.ascontiguousarray(flat, dtype=np.int64)), self.device)
            starts_d = _to_device(torch.from_numpy(np.ascontiguousarray(offsets[:-1][order])), self.device)
            steps_d = torch.arange(int(sorted_lengths[-1]), device=self.device)
        while start < n:
            stop = self._batch_stop(sorted_lengths, start)
            width = int(sorted_lengths[stop - 1])
            if cuda:
                ids = flat_d[starts_d[start:stop, None] + steps_d[:width]]
            else:
                ids = torch.from_numpy(flat[offsets[order[start:stop]][:, None] + np.arange(width)])
            single = stop - start == 1
            if single:   # a lone row runs as two copies: a one-row batch takes another kernel path
                ids = ids.repeat(2, 1)
            try:
                emb = self._forward(ids)
                if single:
                    emb = emb[:1]
            except torch.OutOfMemoryError:
                rows_n = stop - start
                if rows_n == 1:
                    raise
                if cuda:
                    torch.cuda.empty_cache()
                self.batch_size = max(1, min(self.batch_size, rows_n // 2))
                self.token_budget = max(1, min(self.token_budget, rows_n * width) // 2)
                logger.warning("out of memory; batch size lowered to %d", self.batch_size)
                continue
            out.index_copy_(0, order_t[start:stop], emb.to(self.dtype))
            bar.update(stop - start)
            self.sequences_done += stop - start
            start = stop
        bar.close()
        out = self.to_host(out, wait)
        self.profile["embed"] += time.perf_counter() - t_start
        return out

    def to_host(self, t: torch.Tensor, wait: bool = True):
        """``t`` on the host.  From CUDA it goes into pinned memory (a pageable copy ran at ~1
        GB/s): with ``wait``, the one synchronisation of a call; without, the copy is queued
        and a ``Pending`` returned, so that work queued next follows it on the GPU with no
        pause, and the thread that reads the result waits for it.  On the CPU ``t`` itself
        (in a finished ``Pending`` without wait)."""
        if t.device.type != "cuda":
            return t if wait else Pending(t)
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        if wait:
            return host.copy_(t)
        host.copy_(t, non_blocking=True)
        event = torch.cuda.Event(blocking=True)   # the waiting thread sleeps, leaving its core to the workers
        event.record(torch.cuda.current_stream(t.device))
        return Pending(host, event, t, self.profile)

    def _batch_stop(self, sorted_lengths: np.ndarray, start: int) -> int:
        """End of the batch that starts at ``start`` (rows sorted by length, ascending): as
        many rows as fit the token budget at the batch's widest row, between batch_size and
        ROW_GROWTH * batch_size rows, and never past the rows of the same length (fewer only
        there).  Batches of equal-length rows hold no padding, so a row's embedding does not
        depend on which other rows are encoded with it: ``check`` gives a token exactly the
        values ``detect`` gives it, whatever else either encodes (on one device)."""
        n = int(np.searchsorted(sorted_lengths, sorted_lengths[start], side="right"))
        lo = min(n, start + self.batch_size)
        hi = min(n, start + self.batch_size * self.ROW_GROWTH)
        if hi <= lo:
            return lo
        # rows [start, stop) fit when (stop - start) * sorted_lengths[stop - 1] <= budget;
        # widths grow with stop, so the largest such stop is found by bisection
        a, b = lo, hi
        while a < b:
            mid = (a + b + 1) // 2
            if (mid - start) * int(sorted_lengths[mid - 1]) <= self.token_budget:
                a = mid
            else:
                b = mid - 1
        return max(lo, a)

    def peak_memory(self) -> dict[str, float]:
        """Peak memory of this process so far in MiB: host and, on CUDA, device
        (torch.cuda.max_memory_allocated).  Host is the resident high-water mark: VmHWM on
        Linux, else ru_maxrss (on Linux ru_maxrss of a process started from a larger one
        reports the parent's size, which Linux records at exec)."""
        out = {"peak_host_memory_mb": round(peak_host_mb(), 1)}
        if self.device.type == "cuda":
            out["peak_device_memory_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return out

    def describe(self) -> dict:
        """How the forward passes run, for run.json: the device; with torch.compile asked, what
        came of it (``compile_state``); and on CUDA below float32 the attention kernels tried
        (``STICKYTOKEN_ATTENTION``), which round differently."""
        out = {"device": str(self.device)}
        if self.compile_state is not None:
            out["compile"] = self.compile_state
        if self.device.type == "cuda" and self.dtype != torch.float32:
            names = {b: n for n, b in _sdpa_backends().items()}
            out["attention"] = ",".join(names[b] for b in attention_backends())
        return out

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The model on one batch (moved to the model's device when it is not there), with
        the encoder's kernels (``cuda_kernels``).  ``mask`` None: the rows hold no padding.
        Such a batch goes without an attention mask once the first one has given the very
        same embeddings both ways (``mask_free``): given an all-ones mask, transformers checks
        it (``mask.all()``), which on CUDA waits for the GPU at every batch."""
        if ids.device != self.device:
            ids = _to_device(ids, self.device)
            mask = None if mask is None else _to_device(mask, self.device)
        if mask is None and self.mask_free is None:
            return self._settle_mask_on(ids)
        if mask is not None or not self.mask_free:
            return self._model_on(ids, torch.ones_like(ids) if mask is None else mask)
        return self._model_on(ids, None)

    def settle_mask(self, ids: torch.Tensor) -> None:
        """Decides ``mask_free`` on ``ids`` (a batch without padding) if no batch has yet: the
        one forward pass that also runs without the mask, done here, so that a timing of the
        passes after it (bench, estimate) times what a run does."""
        if self.mask_free is None:
            with torch.inference_mode():
                self._settle_mask_on(ids if ids.device == self.device else _to_device(ids, self.device))

    def _settle_mask_on(self, ids: torch.Tensor) -> torch.Tensor:
        """The batch's embeddings with the all-ones mask, and ``mask_free`` set: whether the
        model gives them bit for bit without it."""
        out = self._model_on(ids, torch.ones_like(ids))
        self.mask_free = self._same_without_mask(ids, out)
        return out

    def _model_on(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        features = {"input_ids": ids}
        if mask is not None:
            features["attention_mask"] = mask
        if self._token_type_ids:
            features["token_type_ids"] = torch.zeros_like(ids)
        if self._prompt_length is not None:
            features["prompt_length"] = torch.full((ids.shape[0],), self._prompt_length, device=ids.device)
        with cuda_kernels(self.device, self.dtype):
            if self.compiled is None:
                return self.model(features)["sentence_embedding"]
            return self._compiled_on(features)

    def _compiled_on(self, features: dict) -> torch.Tensor:
        """The compiled model on one batch.  Its first pass compiles, and a compiler that
        fails there (no C compiler, an unsupported model) leaves the plain model, said once."""
        if self.compile_state != "pending":
            return self.compiled(features)["sentence_embedding"]
        logger.info("compiling the model (torch.compile); the first batches wait for it")
        t0 = time.perf_counter()
        try:
            out = self.compiled(features)["sentence_embedding"]
        except torch.OutOfMemoryError:   # the batch, not the compiler: the caller backs off
            raise
        except Exception as exc:   # torch's compiler raises many kinds
            self.compile_state = "failed: " + first_line(exc)
            logger.warning("warning: torch.compile %s; the model runs uncompiled", self.compile_state)
            self.compiled = None
            return self.model(features)["sentence_embedding"]
        self.compile_state = round(time.perf_counter() - t0, 3)
        return out

    def _same_without_mask(self, ids: torch.Tensor, with_mask: torch.Tensor) -> bool:
        """Whether the model gives ``with_mask`` bit for bit without the attention mask."""
        try:
            same = bool(torch.equal(self._model_on(ids, None), with_mask))
        except Exception as exc:   # a model that needs its mask
            logger.debug("batches keep their attention mask: %s", exc)
            return False
        logger.debug("batches without padding go %s the attention mask", "without" if same else "with")
        return same

    def encode_texts(self, texts: Sequence[str], desc: str | None = None, wait: bool = True):
        """Texts -> CPU tensor [N, dim], the same embeddings ``model.encode`` gives (a
        ``Pending`` one without wait)."""
        return self.embed_rows(self.tokenize_rows(texts), desc=desc, wait=wait)

    # ---- streaming reductions ---------------------------------------------------------------
    # a streaming reduction tokenizes and embeds at most STREAM_ROWS[1] texts at a time (the
    # tokenizer's per-text objects dominate host memory there), and at most STREAM_VALUES
    # embedding values (64 MiB in bfloat16), but never fewer than STREAM_ROWS[0] texts
    STREAM_VALUES = 1 << 25
    STREAM_ROWS = (1024, 8192)

    def stream_rows(self) -> int:
        """Texts per chunk of a streaming reduction: STREAM_VALUES / dim, within STREAM_ROWS."""
        lo, hi = self.STREAM_ROWS
        return int(min(hi, max(lo, self.STREAM_VALUES // max(1, self.dim))))

    def unit_sum(self, texts: Sequence[str], desc: str | None = None) -> np.ndarray:
        """The sum over ``texts`` of their unit-normalised embeddings, in float64 ([dim]; a zero
        embedding adds zero), computed chunk by chunk: the texts are tokenized and embedded
        ``stream_rows()`` at a time, so memory does not grow with len(texts).  Each row is
        widened to float64 and divided by its norm before it is added, as
        ``st_stats_mean_similarity`` does (docs/algorithm.md §2)."""
        total = torch.zeros(self.dim, dtype=torch.float64)
        rows = self.stream_rows()
        bar = tqdm(total=len(texts), desc=desc, unit="seq",
                   disable=not (progress_enabled(self.show_progress_bar) and desc), dynamic_ncols=True)
        for start in range(0, len(texts), rows):
            chunk = texts[start:start + rows]
            emb = self.encode_texts(chunk)
            for b in range(0, len(emb), 4096):   # float64 copies of at most 4096 rows at a time
                e = emb[b:b + 4096].to(torch.float64)
                norm = (e * e).sum(dim=1, keepdim=True).sqrt()
                total += torch.where(norm > 0, e / torch.where(norm > 0, norm, 1.0), 0.0).sum(dim=0)
            bar.update(len(chunk))
            del emb
        bar.close()
        return total.numpy()

    def mean_similarity(self, texts: Sequence[str], desc: str | None = None) -> float:
        """Mean cosine similarity over all ordered pairs of the texts' embeddings, diagonal
        included: |sum of unit embeddings|^2 / N^2, the value ``_core.mean_similarity`` gives on
        the [N, dim] embeddings, streamed so that they are never all held at once."""
        n = len(texts)
        if n == 0:
            raise InputError("the mean similarity of no texts is undefined")
        total = self.unit_sum(texts, desc=desc)
        return float(np.dot(total, total)) / (float(n) * float(n))
