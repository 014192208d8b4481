"""Fixed-size batches from variable-size chunks, in whatever array type an adapter wants.

A chunk is cut into batch-sized parts with one ``split`` call per chunk rather than one slice
per batch: for NumPy the two cost the same, but a torch tensor view costs about a microsecond
per column, and ``torch.split`` makes all of a chunk's views in one call.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

Columns = dict[str, np.ndarray]
"""A chunk or a batch in NumPy: column name → array whose first dimension is the row."""

C = TypeVar("C")
K = TypeVar("K")


class BatchFormat(Protocol[C]):
    """How an adapter's chunks are made, measured, cut and joined."""

    def convert(self, columns: Columns) -> C:
        """Turns a NumPy chunk into this format; runs in the reader threads."""

    def rows(self, chunk: C) -> int:
        """Rows in a chunk."""

    def split(self, chunk: C, sizes: list[int]) -> list[C]:
        """Consecutive parts of ``sizes`` rows each (they add up to the chunk's rows)."""

    def concat(self, parts: list[C]) -> C:
        """Parts joined in order."""


class NumpyFormat:
    """Dicts of NumPy arrays: batches inside one chunk are views, not copies."""

    def convert(self, columns: Columns) -> Columns:
        """NumPy chunks stay as they are."""
        return columns

    def rows(self, chunk: Columns) -> int:
        """Rows in a chunk (all its arrays share the first dimension)."""
        return len(next(iter(chunk.values()))) if chunk else 0

    def split(self, chunk: Columns, sizes: list[int]) -> list[Columns]:
        """Views of consecutive rows."""
        parts, start = [], 0
        for size in sizes:
            parts.append({name: array[start : start + size] for name, array in chunk.items()})
            start += size
        return parts

    def concat(self, parts: list[Columns]) -> Columns:
        """One copy per column."""
        return parts[0] if len(parts) == 1 else {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}


NUMPY = NumpyFormat()

SPLIT_GROUP = 64
"""Batches cut from a chunk per ``split`` call."""


class Batcher(Generic[C]):
    """Re-cuts a stream of chunks into batches of ``batch_size`` rows; only the last may be smaller.

    Args:
        fmt: The chunks' format.
        batch_size: Rows per batch.
        drop_last: Leave the last batch out when it is smaller.
    """

    def __init__(self, fmt: BatchFormat[C], batch_size: int, drop_last: bool = False) -> None:
        self._fmt = fmt
        self._batch_size = batch_size
        self._drop_last = drop_last

    def _parts(self, chunk: C, sizes: list[int]) -> Iterator[C]:
        """The chunk cut into ``sizes``, at most :data:`SPLIT_GROUP` parts per split call.

        Bounded so that a small batch size, or a consumer that stops after one batch, does not
        pay for views of the whole chunk up front.
        """
        rest: C | None = chunk
        for start in range(0, len(sizes), SPLIT_GROUP):
            group = sizes[start : start + SPLIT_GROUP]
            left = sum(sizes[start + SPLIT_GROUP :])
            assert rest is not None
            parts = self._fmt.split(rest, [*group, left] if left else group)
            rest = parts[-1] if left else None
            yield from parts[: len(group)]

    def batches(self, chunks: Iterable[tuple[K, C]]) -> Iterator[tuple[C, K, int]]:
        """Yields ``(batch, key, rows)``, a resumable position after each batch.

        ``key`` names the chunk the batch's last row came from, ``rows`` how many of that
        chunk's rows have been consumed.
        """
        size = self._batch_size
        pending: list[C] = []
        pending_rows = 0
        key: Any = None
        consumed = 0
        for key, chunk in chunks:
            rows = self._fmt.rows(chunk)
            if not rows:
                continue
            first = min(size - pending_rows, rows) if pending_rows else 0
            sizes = [first] if first else []
            sizes += [size] * ((rows - first) // size)
            if rows - sum(sizes):
                sizes.append(rows - sum(sizes))
            consumed = 0
            for part_rows, part in zip(sizes, self._parts(chunk, sizes), strict=True):
                consumed += part_rows
                if not pending_rows and part_rows == size:
                    yield part, key, consumed
                    continue
                pending.append(part)
                pending_rows += part_rows
                if pending_rows == size:
                    yield self._fmt.concat(pending), key, consumed
                    pending, pending_rows = [], 0
        if pending_rows and not self._drop_last:
            yield self._fmt.concat(pending), key, consumed
