"""Fixed-size batches from variable-size chunks, as views wherever a batch lies in one chunk."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

Columns = dict[str, np.ndarray]
"""A chunk or a batch: column name → array whose first dimension is the row."""


def num_rows(columns: Columns) -> int:
    """Rows in a chunk (all its arrays share the first dimension)."""
    return len(next(iter(columns.values()))) if columns else 0


def _slice(columns: Columns, start: int, stop: int) -> Columns:
    return {name: array[start:stop] for name, array in columns.items()}


def _concat(parts: list[Columns]) -> Columns:
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def batches(chunks: Iterable[Columns], batch_size: int) -> Iterator[Columns]:
    """Re-cuts chunks into batches of ``batch_size`` rows; only the last may be smaller.

    A batch inside one chunk is a slice of it (no copy); a batch spanning chunks is one
    concatenation.
    """
    pending: list[Columns] = []
    pending_rows = 0
    for chunk in chunks:
        rows = num_rows(chunk)
        start = 0
        if pending_rows:
            take = min(batch_size - pending_rows, rows)
            pending.append(_slice(chunk, 0, take))
            pending_rows += take
            start = take
            if pending_rows < batch_size:
                continue
            yield _concat(pending)
            pending, pending_rows = [], 0
        while rows - start >= batch_size:
            yield _slice(chunk, start, start + batch_size)
            start += batch_size
        if start < rows:
            pending, pending_rows = [_slice(chunk, start, rows)], rows - start
    if pending_rows:
        yield _concat(pending)
