"""The run folder: parameters, stage caches and chunked parts, written so that nothing is
ever half-written and an interrupted run resumes exactly where it stopped.

``run_parts`` is the one loop every chunked stage goes through (exhaustive scoring and
verification, and fast mode's pilot, pairs and rounds): tokens are cut into chunks whose size
depends on the run's parameters alone, each chunk's values are saved as a part, and parts
already on disk are read back instead of recomputed."""
from __future__ import annotations

import collections
import contextlib
import glob
import hashlib
import io
import json
import os
import re
import logging
import time
import zipfile
from concurrent.futures import Future
from typing import Any, Callable

import numpy as np

from .errors import InputError, RunFolderError, check_output_folder, first_line
from .results import atomic_write

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
LOCK_FILE = ".lock"        # held (flock) by the process working on the run; freed when it ends, however
CHUNK_ROWS_CPU = 8192      # sequences per saved part: ~15 s of CPU work lost at most on a kill
CHUNK_ROWS_CUDA = 131072   # large enough that per-part overhead is small on a GPU
CHUNK_ROWS_ENV = "STICKYTOKEN_CHUNK_ROWS"


def env_chunk_rows() -> int | None:
    """``STICKYTOKEN_CHUNK_ROWS`` (sequences per part for a new run) as a positive integer;
    None when unset; an InputError for anything else."""
    raw = os.environ.get(CHUNK_ROWS_ENV, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise InputError(f"{CHUNK_ROWS_ENV} must be a positive whole number of sequences per part, got {raw!r}")
    return n


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", os.path.basename(text.rstrip("/\\")) or "model").strip("-") or "model"


def fingerprint(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]


def default_folder(model_name: str, identity: dict[str, Any]) -> str:
    """stickytoken_runs/<model>-<hash of the parameters>: the same command finds the same folder."""
    return os.path.join("stickytoken_runs", f"{slug(model_name)}-{fingerprint(identity)}")


def opened_run(path: str, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The run.json that a RunFolder opened at ``path`` for ``identity`` would hold, checked as
    opening it checks, without making or changing anything: None where no run is there yet;
    RunFolderError for a folder it may not use: a file, a folder of someone's files,
    an unreadable run.json, a check where a detection run is wanted or the reverse, or a run with
    other parameters."""
    check_output_folder(path, "run folder")
    full = os.path.abspath(path)
    run_file = os.path.join(full, RUN_FILE)
    if not os.path.exists(run_file):
        if os.path.isdir(full) and any(n for n in os.listdir(full) if n not in ("parts", LOCK_FILE)):
            raise RunFolderError(f"{path!r} is not empty and holds no stickytoken run; choose another --output")
        return None
    try:
        with open(run_file, encoding="utf-8") as fh:
            run = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise RunFolderError(f"{run_file} cannot be read ({exc}); remove the folder or choose another") from exc
    old = run.get("identity", {})
    if bool(old.get("check")) != bool(identity.get("check")):
        kinds = ("a `check` of named tokens", "a detection run")
        there, now = (kinds if old.get("check") else kinds[::-1])
        raise RunFolderError(f"the folder {path!r} holds {there}, not {now}; give another --output folder")
    if old != identity:
        diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        shown = ", ".join(f"{k}: {old.get(k)!r} there, {identity.get(k)!r} now" for k in diff[:4])
        raise RunFolderError(f"the run folder {path!r} holds a run with other parameters ({shown}); "
                             "give another --output folder or the same parameters")
    return run


OUTCOMES_FILE = "verification_outcomes.npz"   # the candidates' cosine outcomes, kept beside results.json


def save_outcomes(folder: str, ids: np.ndarray, outcomes: np.ndarray) -> None:
    """The candidates' cosine verification outcomes ([C, P, 2 + R] of the verification parts'
    [C, P, 2 + R, 3]) in ``folder``'s OUTCOMES_FILE, compressed: what P(sticky) is computed
    from, kept with the results so that a copy without parts/ still gives it to ``check``."""
    buf = io.BytesIO()
    np.savez_compressed(buf, ids=np.asarray(ids, dtype=np.int64), cosine=np.ascontiguousarray(outcomes[..., 0]))
    atomic_write(os.path.join(folder, OUTCOMES_FILE), buf.getvalue())


def load_outcomes(folder: str, ids) -> np.ndarray | None:
    """The outcomes ``save_outcomes`` kept, as [C, P, 2 + R, 1] (cosine alone, in the order they
    were saved); None when the file is missing, unreadable or holds other candidates than ``ids``."""
    try:
        with np.load(os.path.join(folder, OUTCOMES_FILE)) as data:
            kept_ids, cosine = data["ids"], data["cosine"]
    except (OSError, ValueError, KeyError):
        return None
    if sorted(kept_ids.tolist()) != sorted(int(i) for i in ids) or len(cosine) != len(kept_ids):
        return None
    return cosine[..., None]


def lock_holder(path: str) -> str | None:
    """Whether another process holds the run folder ``path`` (``RunFolder.claim``), without
    taking it: its pid as text ('' when it wrote none), or None when no process holds it."""
    try:
        import fcntl
        fh = open(os.path.join(path, LOCK_FILE), encoding="ascii")
    except (ImportError, OSError):   # no lock file: never claimed
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = fh.read().strip()
            return holder if holder.isdigit() else ""
        except OSError:   # no locks here
            return None
        fcntl.flock(fh, fcntl.LOCK_UN)
        return None


class RunFolder:
    """A run folder bound to one set of identity parameters."""

    def __init__(self, path: str, identity: dict[str, Any], meta: dict[str, Any], ranks=None):
        from .distributed import SINGLE

        self.path = os.path.abspath(path)
        self.identity = identity
        self.ranks = ranks or SINGLE   # with several ranks, only rank 0 writes run.json and the caches
        self.created = not os.path.exists(self.path)   # made by this call (removable on a refused start)
        held = opened_run(path, identity)   # (refuses, before anything is made, a folder it may not use)
        try:
            os.makedirs(os.path.join(self.path, "parts"), exist_ok=True)
        except OSError as exc:
            raise RunFolderError(f"cannot create the run folder {path!r}: {exc.strerror}") from exc
        if held is not None:
            self.run = held
            self.run.setdefault("timings", {})
        else:
            self.run = {"identity": identity, "status": "running", "timings": {}, **meta}
            self.save_run()

    @classmethod
    def existing(cls, path: str) -> "RunFolder":
        """An existing run folder opened to read its parts, as it stands: nothing is made or
        changed in it by opening it (a folder this user may only read will do)."""
        from .distributed import SINGLE

        try:
            with open(os.path.join(path, RUN_FILE), encoding="utf-8") as fh:
                run = json.load(fh)
            identity = run["identity"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunFolderError(f"{path!r} is not a run folder ({RUN_FILE} is missing or unreadable)") from exc
        folder = cls.__new__(cls)
        folder.path, folder.identity, folder.ranks, folder.created = os.path.abspath(path), identity, SINGLE, False
        folder.run = run
        folder.run.setdefault("timings", {})
        return folder

    def claim(self) -> None:
        """Hold the folder for this process until ``release`` (or the process's end, even by
        kill -9): a second process on the same run (the same command started twice, a
        scheduler's retry while the first still runs) is refused instead of repeating its work
        and racing its writes.  Rank 0 alone claims under torchrun.  Where the filesystem has
        no locks (some network mounts), the run goes on unclaimed."""
        if not self.ranks.main or getattr(self, "_lock", None) is not None:
            return
        try:
            import fcntl
        except ImportError:   # (not on Windows)
            return
        fh = open(self.file(LOCK_FILE), "a+", encoding="ascii")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            raise RunFolderError(f"the run folder {self.path!r} is in use by another process"
                                 + (f" (pid {holder})" if holder.isdigit() else "")
                                 + "; wait for it to end or stop it, or give another --output") from None
        except OSError:   # no locks here: go on unclaimed
            fh.close()
            return
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock = fh

    def release(self) -> None:
        """Let another process take the folder (``claim``)."""
        fh, self._lock = getattr(self, "_lock", None), None
        if fh is not None:
            fh.close()   # (closing the file frees the lock)

    @property
    def finished(self) -> bool:
        """The folder holds this run, finished: its files are read, never rewritten."""
        return self.run.get("status") == "complete" and os.path.isfile(self.file("results.json"))

    def remove_if_unused(self) -> None:
        """Remove the folder when this call created it and no stage has saved work in it."""
        import shutil

        if not self.created or not self.ranks.main:
            return
        kept = [n for n in os.listdir(self.path) if n not in (RUN_FILE, "parts", LOCK_FILE)]
        if kept or os.listdir(os.path.join(self.path, "parts")):
            return
        shutil.rmtree(self.path, ignore_errors=True)

    # ---- run.json ---------------------------------------------------------------------------
    def save_run(self) -> None:
        if not self.ranks.main:
            return
        atomic_write(os.path.join(self.path, RUN_FILE), json.dumps(self.run, indent=1, ensure_ascii=False))

    def add_time(self, stage: str, seconds: float) -> None:
        self.run["timings"][stage] = round(self.run["timings"].get(stage, 0.0) + seconds, 3)
        self.save_run()

    # ---- stage caches -----------------------------------------------------------------------
    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def load_json(self, name: str) -> Any | None:
        """A stage's cached JSON (None when not yet written).  One that cannot be read is an
        error, not recomputed: the parts saved after it were computed with it, and a second
        computation could differ in its last bits (and pick other pairs)."""
        path = self.file(name)
        if not os.path.exists(path):
            return None
        try:
            with open(path, encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError) as exc:
            raise RunFolderError(f"{name} in {self.path!r} cannot be read ({first_line(exc, 120)}); the run's "
                                 "later stages were computed with it: restore it, or give another --output to "
                                 "start afresh") from exc

    def save_json(self, name: str, data: Any) -> None:
        if not self.ranks.main:
            return
        atomic_write(self.file(name), json.dumps(data, indent=1, ensure_ascii=False))

    # ---- chunked parts ----------------------------------------------------------------------
    def chunk_rows(self, device_type: str) -> int:
        """Sequences per part: fixed when the run is created (by its device), so that a
        resumed run cuts the same chunks."""
        if "chunk_rows" not in self.run:
            env = env_chunk_rows()
            self.run["chunk_rows"] = env or (CHUNK_ROWS_CUDA if device_type == "cuda" else CHUNK_ROWS_CPU)
            self.save_run()
        return int(self.run["chunk_rows"])

    def part_path(self, stage: str, index: int) -> str:
        return os.path.join(self.path, "parts", f"{stage}-{index:06d}.npz")

    def has_part(self, stage: str, index: int) -> bool:
        return os.path.exists(self.part_path(stage, index))

    def save_part(self, stage: str, index: int, **arrays: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write(self.part_path(stage, index), buf.getvalue())

    def load_part(self, stage: str, index: int) -> dict[str, np.ndarray]:
        with _reading_part(self.part_path(stage, index)) as data:
            return {k: data[k] for k in data.files}

    def n_parts(self, stage: str) -> int:
        """How many parts of ``stage`` are saved."""
        return len(glob.glob(os.path.join(self.path, "parts", f"{glob.escape(stage)}-[0-9][0-9][0-9][0-9][0-9][0-9].npz")))

    def part_keys(self, stage: str, index: int) -> list[str]:
        """The names of the arrays part ``index`` of ``stage`` holds (without reading them)."""
        with _reading_part(self.part_path(stage, index)) as data:
            return list(data.files)

    def gather(self, stage: str, key: str) -> np.ndarray | None:
        """Array ``key`` of every saved part of ``stage``, concatenated in part order; None when
        some part lacks it (written before the array was kept)."""
        out = []
        for i in range(self.n_parts(stage)):
            with _reading_part(self.part_path(stage, i)) as data:
                if key not in data.files:
                    return None
                out.append(data[key])
        return np.concatenate(out) if out else None

    def readable_part(self, stage: str, index: int) -> dict[str, np.ndarray] | None:
        """Part ``index`` of ``stage`` read back whole (every array, its checksum checked), or
        None when it is not saved.  A part that does not read back (cut short or damaged, e.g.
        by a copy that failed) is moved aside to ``<part>.unreadable``, with a warning, and None
        returned, so that it is computed again."""
        path = self.part_path(stage, index)
        if not os.path.exists(path):
            return None
        try:
            return self.load_part(stage, index)
        except UnreadablePart as exc:
            os.replace(path, path + ".unreadable")
            logger.warning("warning: %s: it is computed again (the file is kept as %s)", exc.what,
                           os.path.basename(path) + ".unreadable")
            return None

    def clean_temporaries(self) -> None:
        """Remove temporary files left by a run that was killed mid-write."""
        for tmp in glob.glob(os.path.join(self.path, ".tmp-*")) + glob.glob(os.path.join(self.path, "parts", ".tmp-*")):
            try:
                os.unlink(tmp)
            except OSError:
                pass


class UnreadablePart(RunFolderError):
    """A saved part that cannot be read back whole (``what`` says which and why)."""

    def __init__(self, path: str, exc: BaseException):
        reason = "not an .npz file" if isinstance(exc, ValueError) and "pickle" in str(exc) \
            else first_line(exc, 120)
        self.what = f"the part {path!r} cannot be read ({reason})"
        super().__init__(f"{self.what}; delete it and run the same command to compute it again")


# what reading a cut-short or damaged .npz raises (zipfile's BadZipFile on a bad checksum)
_PART_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


@contextlib.contextmanager
def _reading_part(path: str):
    """The part's arrays (``np.load``) for the block; opening it or reading an array that is
    cut short or damaged raises UnreadablePart."""
    try:
        with np.load(path, allow_pickle=False) as data:
            yield data
    except _PART_ERRORS as exc:
        raise UnreadablePart(path, exc) from exc


def _start_bar_at(bar, n: int) -> None:
    """Count ``n`` units of a resumed stage as done before the bar starts, so that its rate
    and time left come from the work that is left."""
    if getattr(bar, "disable", False):
        return
    if hasattr(bar, "initial") and hasattr(bar, "last_print_n"):   # tqdm
        bar.initial += n
        bar.n += n
        bar.last_print_n += n
        bar.refresh()
    else:
        bar.update(n)


def run_parts(run: RunFolder, stage: str, token_ids: np.ndarray, per: int,
              compute: Callable[..., Any], bar=None, timing: str | None = None,
              offset: int = 0, prepare: Callable[[np.ndarray], Any] | None = None,
              ahead: int = 2, profile: dict | None = None, trace=None) -> tuple[np.ndarray, np.ndarray]:
    """Process ``token_ids`` in chunks of ``per``, chunk c saved as part ``offset + c`` of
    ``stage``; parts already saved are read back (and must hold the same ids).

    ``compute(ids)`` returns the chunk's values, or (values, {name: array}) to keep more
    arrays in the part.  ``bar.update(n)`` is called with each chunk's token count; the
    compute time is added to ``run.json``'s timings under ``timing``.  With several ranks
    (``run.ranks``), chunk c is computed by rank c mod WORLD_SIZE; after a barrier every rank
    reads every part, and rank 0's bar shows the whole stage's progress (the parts on disk).
    With ``prepare``, the chunks this rank computes are started ``ahead`` at a time:
    ``prepare(ids)`` returns a handle (``RowPool.submit``) and ``compute(ids, handle)`` is
    called in chunk order, so the host builds the next chunks while the model runs.  When
    ``compute`` returns a ``Future`` (its host work running in another thread), the next chunk
    starts at once; parts are saved in chunk order as they finish, at most two in flight.
    ``profile`` (a ``collections.Counter``), when given, gets the seconds spent saving parts
    (``save``) and waiting here for chunks finishing in another thread (``host_wait``).
    ``trace`` (a ``trace.ChunkTrace``), when given, is told before each chunk computed here
    (``at_chunk``) and closed after the last; the seconds it spends writing are not counted.
    Returns (ids int64, values float64) concatenated over the chunks (values [0, 3] when there
    are none)."""
    ranks = run.ranks
    n_chunks = (len(token_ids) + per - 1) // per
    chunk_ids = [token_ids[c * per:(c + 1) * per] for c in range(n_chunks)]
    # the parts this rank would compute are read now (kept for the end); one that cannot be read
    # back is moved aside and computed again
    resumed = {c: part for c in range(n_chunks) if ranks.owns(c)
               and (part := run.readable_part(stage, offset + c)) is not None}
    done = [c for c in range(n_chunks) if c in resumed or (not ranks.owns(c) and run.has_part(stage, offset + c))]
    if done:
        logger.info("resuming %s: %d of %d parts done", timing or stage, len(done), n_chunks)
        if bar is not None:
            _start_bar_at(bar, sum(len(chunk_ids[c]) for c in done))
    shown = sum(len(chunk_ids[c]) for c in done)
    computed: dict[int, dict[str, np.ndarray]] = {}
    todo = [c for c in range(n_chunks) if c not in done and ranks.owns(c)]
    pending: dict[int, Any] = {}
    inflight: collections.deque = collections.deque()   # (chunk, ids, Future) finishing elsewhere
    mark = time.perf_counter()

    def finish(c: int, ids: np.ndarray, values) -> None:
        nonlocal shown, mark
        extra = {}
        if isinstance(values, tuple):
            values, extra = values
        t_save = time.perf_counter()
        run.save_part(stage, offset + c, ids=ids, values=values, **extra)
        now_t = time.perf_counter()
        if profile is not None:
            profile["save"] += now_t - t_save
        if timing is not None:   # wall time, each second counted once however the chunks overlap
            run.add_time(timing, now_t - mark)
        mark = now_t
        computed[c] = {"ids": ids, "values": values}
        if bar is not None:
            if ranks.world > 1:   # everyone's parts so far
                now = sum(len(chunk_ids[k]) for k in range(n_chunks) if run.has_part(stage, offset + k))
                bar.update(now - shown)
                shown = now
            else:
                bar.update(len(ids))
                shown += len(ids)

    def settle(keep: int) -> None:
        """Saves the chunks finishing elsewhere, in order, until at most ``keep`` are left."""
        while len(inflight) > keep or (inflight and inflight[0][2].done()):
            c, ids, fut = inflight.popleft()
            t_wait = time.perf_counter()
            values = fut.result()
            if profile is not None:
                profile["host_wait"] += time.perf_counter() - t_wait
            finish(c, ids, values)

    try:
        for i, c in enumerate(todo):
            if run.has_part(stage, offset + c):
                continue
            ids = chunk_ids[c]
            if trace is not None:   # (the seconds writing a trace are left out of the stage's)
                mark += trace.at_chunk(i, len(todo))
            if not inflight:
                mark = time.perf_counter()
            if prepare is None:
                values = compute(ids)
            else:
                for k in todo[i:i + 1 + max(0, int(ahead))]:
                    if k not in pending:
                        pending[k] = prepare(chunk_ids[k])
                values = compute(ids, pending.pop(c))
            if isinstance(values, Future):   # the host's part runs elsewhere while the next chunk starts
                inflight.append((c, ids, values))
                settle(keep=1)
            else:
                settle(keep=0)
                finish(c, ids, values)
        settle(keep=0)
        if trace is not None:
            trace.close()
    finally:
        for _, _, fut in inflight:   # an error: no chunk left running behind
            fut.cancel()
        if trace is not None:
            trace.discard()
    ranks.barrier()
    if bar is not None and shown < len(token_ids):
        bar.update(len(token_ids) - shown)
    ids_out, vals_out = [], []
    for c in range(n_chunks):
        part = computed.get(c)
        if part is None:
            index = offset + c
            if not run.has_part(stage, index):
                raise RunFolderError(f"part {index} of stage {stage} is missing from {run.path} after every rank "
                                     "finished; is the run folder on a filesystem every rank shares?")
            part = resumed.pop(c) if c in resumed else run.load_part(stage, index)
            if not np.array_equal(part["ids"], chunk_ids[c]):
                raise InputError(f"part {index} of stage {stage} in {run.path} does not match this run; "
                                 "remove the folder")
        ids_out.append(part["ids"])
        vals_out.append(part["values"])
    if not ids_out:
        return np.zeros(0, np.int64), np.zeros((0, 3))
    return np.concatenate(ids_out).astype(np.int64), np.concatenate(vals_out).astype(np.float64)
