"""The run folder: parameters, stage caches and chunked parts, written so that nothing is
ever half-written and an interrupted run resumes exactly where it stopped."""
from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
from typing import Any

import numpy as np

from .errors import RunFolderError
from .results import atomic_write

RUN_FILE = "run.json"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", os.path.basename(text.rstrip("/\\")) or "model").strip("-") or "model"


def fingerprint(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]


def default_folder(model_name: str, identity: dict[str, Any]) -> str:
    """stickytoken_runs/<model>-<hash of the parameters>: the same command finds the same folder."""
    return os.path.join("stickytoken_runs", f"{slug(model_name)}-{fingerprint(identity)}")


class RunFolder:
    """A run folder bound to one set of identity parameters."""

    def __init__(self, path: str, identity: dict[str, Any], meta: dict[str, Any]):
        self.path = os.path.abspath(path)
        self.identity = identity
        try:
            os.makedirs(os.path.join(self.path, "parts"), exist_ok=True)
        except OSError as exc:
            raise RunFolderError(f"cannot create the run folder {path!r}: {exc.strerror}") from exc
        if not os.access(self.path, os.W_OK):
            raise RunFolderError(f"the run folder {path!r} is not writable; choose another with --output")
        run_file = os.path.join(self.path, RUN_FILE)
        if os.path.exists(run_file):
            try:
                with open(run_file, encoding="utf-8") as fh:
                    self.run = json.load(fh)
            except (OSError, json.JSONDecodeError) as exc:
                raise RunFolderError(f"{run_file} cannot be read ({exc}); remove the folder or choose another") from exc
            old = self.run.get("identity", {})
            if old != identity:
                diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
                shown = ", ".join(f"{k}: {old.get(k)!r} there, {identity.get(k)!r} now" for k in diff[:4])
                raise RunFolderError(
                    f"the run folder {path!r} holds a run with other parameters ({shown}); "
                    "give another --output folder or the same parameters")
            self.run.setdefault("timings", {})
        else:
            if any(n for n in os.listdir(self.path) if n != "parts"):
                raise RunFolderError(f"{path!r} is not empty and holds no stickytoken run; choose another --output")
            self.run = {"identity": identity, "status": "running", "timings": {}, **meta}
            self.save_run()

    # ---- run.json ---------------------------------------------------------------------------
    def save_run(self) -> None:
        atomic_write(os.path.join(self.path, RUN_FILE), json.dumps(self.run, indent=1, ensure_ascii=False))

    def add_time(self, stage: str, seconds: float) -> None:
        self.run["timings"][stage] = round(self.run["timings"].get(stage, 0.0) + seconds, 3)
        self.save_run()

    # ---- stage caches -----------------------------------------------------------------------
    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def load_json(self, name: str) -> Any | None:
        path = self.file(name)
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)

    def save_json(self, name: str, data: Any) -> None:
        atomic_write(self.file(name), json.dumps(data, indent=1, ensure_ascii=False))

    # ---- chunked parts ----------------------------------------------------------------------
    def part_path(self, stage: str, index: int) -> str:
        return os.path.join(self.path, "parts", f"{stage}-{index:06d}.npz")

    def has_part(self, stage: str, index: int) -> bool:
        return os.path.exists(self.part_path(stage, index))

    def save_part(self, stage: str, index: int, **arrays: np.ndarray) -> None:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write(self.part_path(stage, index), buf.getvalue())

    def load_part(self, stage: str, index: int) -> dict[str, np.ndarray]:
        with np.load(self.part_path(stage, index)) as data:
            return {k: data[k] for k in data.files}

    def clean_temporaries(self) -> None:
        """Remove temporary files left by a run that was killed mid-write."""
        for tmp in glob.glob(os.path.join(self.path, ".tmp-*")) + glob.glob(os.path.join(self.path, "parts", ".tmp-*")):
            try:
                os.unlink(tmp)
            except OSError:
                pass
