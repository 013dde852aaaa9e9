"""Ragged token-id rows (``Rows``): the ids of every row one after another and each row's
length, with what each row is when rows are variants.  What the tokenizing fast paths
(``tokenizing.py``) give and the encoder takes; the variant rows themselves are built in
``rows.py``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import InputError


@dataclass
class Rows:
    """Ragged token-id rows: row i is ``flat[offsets[i]:offsets[i + 1]]`` (special tokens
    and prompt included), and ``index`` [N, 4] says what each row is (token, pair, variant
    slot, k) where rows are variants."""

    flat: np.ndarray      # int64 [total ids]
    lengths: np.ndarray   # int64 [N]
    index: np.ndarray | None = None

    @property
    def offsets(self) -> np.ndarray:
        off = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=off[1:])
        return off

    def __len__(self) -> int:
        return int(len(self.lengths))

    def select(self, sel: np.ndarray) -> "Rows":
        """The rows ``sel`` (indices), in that order."""
        off = self.offsets
        lengths = self.lengths[sel]
        flat = self.flat[_ragged_positions(off[sel], lengths)]
        return Rows(flat, lengths, None if self.index is None else self.index[sel])

    def padded(self, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded (ids, attention mask), int64 [N, longest row]."""
        n = len(self.lengths)
        width = int(self.lengths.max()) if n else 1
        mask = np.arange(width)[None, :] < self.lengths[:, None]
        ids = np.full((n, width), int(pad_id), dtype=np.int64)
        ids[mask] = self.flat
        return ids, mask.astype(np.int64)

    @staticmethod
    def from_padded(ids: np.ndarray, mask: np.ndarray, lengths: np.ndarray, index=None) -> "Rows":
        """Rows whose ids are the first ``lengths[i]`` entries of each padded row."""
        lengths = np.asarray(lengths, dtype=np.int64)
        width = ids.shape[1] if ids.ndim == 2 else 0
        if len(lengths) and int(lengths.max()) > width:
            raise InputError("a row is longer than its padded array")
        keep = np.arange(width)[None, :] < lengths[:, None]
        return Rows(np.ascontiguousarray(np.asarray(ids)[keep], dtype=np.int64), lengths, index)

    @staticmethod
    def concat(parts: Sequence["Rows"]) -> "Rows":
        if not parts:
            return Rows(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4), np.int64))
        index = None if any(p.index is None for p in parts) else np.concatenate([p.index for p in parts])
        return Rows(np.concatenate([p.flat for p in parts]), np.concatenate([p.lengths for p in parts]), index)


def _ragged_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat positions of rows starting at ``starts`` with ``lengths``, one row after another."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    row_start = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + (np.arange(total, dtype=np.int64) - row_start)
