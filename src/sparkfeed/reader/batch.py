"""Fixed-size batches from variable-size chunks, in whatever array type an adapter wants.

A chunk is cut into batch-sized parts by one ``split`` call per group of batches rather than one
slice per batch: for NumPy the two cost the same, but a torch tensor view costs about a
microsecond per column, and ``Tensor.split`` makes a group's views in one call. Every split
names its rows by offset into the whole chunk, so cutting a chunk costs a constant per batch
whatever its size: no list of sizes, no rest of the chunk sliced off after each group.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from sparkfeed.reader.ragged import Ragged

Columns = dict[str, np.ndarray]
"""A chunk or a batch in NumPy: column name → array whose first dimension is the row.

A column named in ``sequence=`` is a :class:`~sparkfeed.reader.ragged.Ragged` instead until its
batch is finished; it slices, measures and joins like an array here."""

Signature = dict[str, tuple[str, tuple[int, ...]]]
"""Column name → (dtype, shape of one row): what must stay the same from chunk to chunk."""

C = TypeVar("C")
K = TypeVar("K")


class BatchFormat(Protocol[C]):
    """How an adapter's chunks are made, measured, cut and joined."""

    def convert(self, columns: Columns) -> C:
        """Turns a NumPy chunk into this format; runs in the reader threads."""

    def rows(self, chunk: C) -> int:
        """Rows in a chunk."""

    def split(self, chunk: C, start: int, size: int, count: int) -> list[C]:
        """``count`` consecutive parts of ``size`` rows each, the first starting at row ``start``.

        It must cost the parts it makes, not the rows before or after them: the batcher calls it
        once per group of batches of a chunk that may hold millions of rows.
        """

    def concat(self, parts: list[C]) -> C:
        """Parts joined in order."""

    def signature(self, chunk: C) -> Signature:
        """Each column's dtype and per-row shape; compared once per chunk, so it must be cheap."""


def numpy_signature(columns: Columns) -> Signature:
    """The NumPy chunk's signature; strings' widths may differ between chunks, so only their kind counts."""
    out: Signature = {}
    for name, array in columns.items():
        if isinstance(array, Ragged):  # a sequence: its length varies, its values' shape may not
            out[name] = (str(array.dtype), (-1, *array.inner))
            continue
        out[name] = (_dtype_name(array.dtype), array.shape[1:])
    return out


@functools.lru_cache(maxsize=512)
def _dtype_name(dtype: np.dtype[Any]) -> str:
    """A dtype's name in a signature: ``str(dtype)`` costs microseconds, and a chunk has a column per dtype."""
    kind = dtype.kind
    return "str" if kind == "U" else "bytes" if kind == "S" else str(dtype)


class NumpyFormat:
    """Dicts of NumPy arrays: batches inside one chunk are views, not copies."""

    def convert(self, columns: Columns) -> Columns:
        """NumPy chunks stay as they are."""
        return columns

    def rows(self, chunk: Columns) -> int:
        """Rows in a chunk (all its arrays share the first dimension)."""
        return len(next(iter(chunk.values()))) if chunk else 0

    def split(self, chunk: Columns, start: int, size: int, count: int) -> list[Columns]:
        """Views of consecutive rows."""
        items = chunk.items()
        return [{name: array[a : a + size] for name, array in items} for a in range(start, start + size * count, size)]

    def concat(self, parts: list[Columns]) -> Columns:
        """One copy per column, of parts that must agree in columns, dtypes and row shapes.

        NumPy would upcast float32 and float64 parts to float64 without a word, or fail with a
        bare KeyError or shape error; checking the few parts first names what differs.
        """
        if len(parts) == 1:
            return parts[0]
        first = numpy_signature(parts[0])
        for part in parts[1:]:
            check_signature(first, numpy_signature(part))
        return {
            n: Ragged.concat([p[n] for p in parts])
            if isinstance(column, Ragged)
            else np.concatenate([p[n] for p in parts])
            for n, column in parts[0].items()
        }

    def signature(self, chunk: Columns) -> Signature:
        """Each column's dtype and per-row shape."""
        return numpy_signature(chunk)


NUMPY = NumpyFormat()

SPLIT_GROUP = 64
"""Batches cut from a chunk per ``split`` call: enough to spread a call's cost, few enough that a
consumer that stops after one batch does not pay for views of a whole chunk."""


def _describe(entry: tuple[str, tuple[int, ...]] | None) -> str:
    return "missing" if entry is None else f"{entry[0]} with shape {entry[1]}"


def check_signature(first: Signature, now: Signature) -> None:
    """Raises a ValueError naming the first column whose dtype or row shape differs from the first chunk's."""
    if now == first:
        return
    for name in [*first, *(n for n in now if n not in first)]:
        was, is_now = first.get(name), now.get(name)
        if was != is_now:
            advice = (
                "make the transform return the same every time, for example by casting, or give the column in "
                "TransformSpec edit_fields"
            )
            rows = ("object", "list")  # NumPy's column of rows, and torch's
            if (
                was is not None
                and is_now is not None
                and ((was[0] in rows and is_now[1]) or (is_now[0] in rows and was[1]))
            ):
                # Rows of arrays are stacked where a chunk's share one shape; one chunk's did, another's not.
                advice = (
                    f"if its rows are arrays whose shape varies, declare it in TransformSpec edit_fields as "
                    f"({name!r}, <dtype>, (None,), False): every chunk then keeps them as rows"
                )
            raise ValueError(
                f"the transform's output changed between chunks: column {name!r} was {_describe(was)} and is now "
                f"{_describe(is_now)}; every chunk must have the same columns, dtypes and per-row shapes (only the "
                f"contents of strings and objects may vary): {advice}"
            )


class Batcher(Generic[C]):
    """Re-cuts a stream of chunks into batches of ``batch_size`` rows; only the last may be smaller.

    Every chunk must have the first chunk's signature (see :meth:`BatchFormat.signature`): a
    transform whose output changes between chunks would otherwise give batches of alternating
    types, or fail where two chunks meet in one batch.

    Args:
        fmt: The chunks' format.
        batch_size: Rows per batch.
        drop_last: Leave the last batch out when it is smaller.
        whole: Yield each chunk whole instead, as a batch of its rows (``batch_size`` and
            ``drop_last`` unused): for a consumer that cuts them itself, as a mixture of whole
            batches does, and would otherwise pay for this cut, and for a copy where a batch
            spans two chunks.
    """

    def __init__(self, fmt: BatchFormat[C], batch_size: int, drop_last: bool = False, whole: bool = False) -> None:
        self._fmt = fmt
        self._batch_size = batch_size
        self._drop_last = drop_last
        self._whole = whole
        self._signature: Signature | None = None

    def _check(self, chunk: C) -> None:
        signature = self._fmt.signature(chunk)
        if self._signature is None:
            self._signature = signature
        else:
            check_signature(self._signature, signature)

    def batches(self, chunks: Iterable[tuple[K, C]]) -> Iterator[tuple[C, K, int, int]]:
        """Yields ``(batch, key, consumed, rows)``: a batch, a resumable position after it, and its rows.

        ``key`` names the chunk the batch's last row came from, ``consumed`` how many of that
        chunk's rows have been consumed; ``rows`` is ``batch_size`` but for the short last batch
        (counted here, where it is known, rather than measured from each batch).
        """
        if self._whole:
            for whole_key, whole in chunks:
                rows = self._fmt.rows(whole)
                if rows:  # an empty chunk moves no position
                    self._check(whole)
                    yield whole, whole_key, rows, rows
            return
        size, split, concat = self._batch_size, self._fmt.split, self._fmt.concat
        pending: list[C] = []
        pending_rows = 0
        key: Any = None
        consumed = 0
        for chunk_key, chunk in chunks:
            rows = self._fmt.rows(chunk)
            if not rows:
                continue  # an empty chunk moves no position: the last batch's key stays its rows' chunk
            key = chunk_key
            self._check(chunk)
            consumed = 0
            if pending_rows:  # the batch that spans chunks
                consumed = min(size - pending_rows, rows)
                pending += split(chunk, 0, consumed, 1)
                pending_rows += consumed
                if pending_rows < size:
                    continue
                yield concat(pending), key, consumed, size
                pending, pending_rows = [], 0
            full = (rows - consumed) // size
            while full:
                count = min(full, SPLIT_GROUP)
                for part in split(chunk, consumed, size, count):
                    consumed += size
                    yield part, key, consumed, size
                full -= count
            if consumed < rows:
                pending, pending_rows = split(chunk, consumed, rows - consumed, 1), rows - consumed
                consumed = rows
        if pending_rows and not self._drop_last:
            yield concat(pending), key, consumed, pending_rows
