"""Arrays of varying length carried through the reader as two arrays, never one object per row.

A :class:`Ragged` column is Arrow's list layout in NumPy: every row's values laid end to end
in one array and the offsets where each row starts. It comes from a Parquet list column
without a copy of the values (:meth:`Ragged.from_arrow` keeps Arrow's buffers), and supports
what the reader does to a column between reading and batching (``len``, slices, a gather by an
index array for the shuffle, concatenation where a batch spans two chunks), each with a few
whole-array NumPy calls whatever the number of rows: the row structure lives in the offsets,
and a gather expands them to token positions with ``np.repeat``/``cumsum``. Only at the end is
a batch turned into what a model takes (:meth:`Ragged.padded`, :meth:`Ragged.mask`).

NumPy's object arrays of per-row arrays (what a ragged column was before, and still is for
columns not named in ``sequence``) cost a Python object per row to make, to gather and to turn
into tensors; this costs a few array operations per chunk.

:class:`Views` is the other form, for bucketed and packed batches made in the worker: the rows
left in the pages Parquet decoded them into (``binary_view``), so that the padded batches are
written from there in one copy instead of two.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sparkfeed.transform import row_array
from sparkfeed.types import NullValueError, _values
from sparkfeed.writer import binary_buffers, is_list_type, view_lengths

_NOT_WHOLE = (
    "column {name!r}: a packed cell's size is not a whole number of {dtype} values of shape {inner}: the cache's "
    "manifest does not describe this file; convert the DataFrame again"
)

MASK_RATIO = 4
"""Up to this many output cells per value, :meth:`Ragged.padded` fills by mask; beyond, by index
(measured: the mask 1.7x as fast at 1.04 cells per value, the index 2.5x as fast at 15)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Ragged:
    """Rows of varying length: row ``i`` is ``values[offsets[i]:offsets[i + 1]]``.

    ``offsets`` need not start at 0: a slice is a view of the same values with fewer offsets,
    which is what lets the batcher cut a chunk into batches without copying. Each value may
    itself be a fixed-shape array (``values.shape[1:]``, the rows' inner shape), as for
    ``array<array<float>>`` whose inner arrays all have one length.

    Attributes:
        values: The rows' values end to end, shape ``(n, *inner)``; may hold values outside
            the rows (before the first offset, after the last).
        offsets: ``int64``, one more than the rows, non-decreasing, indices into ``values``.
    """

    values: np.ndarray
    offsets: np.ndarray

    # ---------------------------------------------------------------- building

    @classmethod
    def from_lengths(cls, values: np.ndarray, lengths: np.ndarray) -> Ragged:
        """Rows of the given lengths, taken from ``values`` in order."""
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(values, offsets)

    @classmethod
    def from_fixed(cls, array: np.ndarray) -> Ragged:
        """An array of shape ``(rows, n, *inner)``: every row of length ``n`` (a view of it when contiguous)."""
        rows, length = array.shape[0], array.shape[1]
        return cls(array.reshape((rows * length, *array.shape[2:])), np.arange(rows + 1, dtype=np.int64) * length)

    @classmethod
    def from_arrow(
        cls, name: str, array: pa.Array | pa.ChunkedArray, inner: tuple[int, ...], dtype: np.dtype
    ) -> Ragged:
        """A list column (``list``, ``large_list`` or ``fixed_size_list``) without a copy of its values.

        Also the cache's packed form of arrays of varying length, one ``binary`` cell of raw
        values per row (:func:`sparkfeed.writer.pack_ragged`): its data buffer is the values,
        and its byte offsets divided by a row's item size are the offsets.

        Args:
            name: The column, for messages.
            array: The column of one chunk.
            inner: The shape of each value: ``()`` for ``list<number>``, ``(3,)`` for a
                ``list<list<number>>`` whose inner lists all hold 3 values.
            dtype: The values' dtype (what a packed column's bytes hold).

        Raises:
            NullValueError: A row or a value is null.
            ValueError: An inner list does not have the length ``inner`` says.
        """
        if isinstance(array, pa.ChunkedArray):
            array = array.chunk(0) if array.num_chunks == 1 else array.combine_chunks()
        if _is_packed(array.type):
            _no_nulls(name, array)
            positions, data = binary_buffers(array)
            width = cell_width(dtype, inner)
            if width > 1 and (positions % width).any():  # one step per row: a wrong shape is never misread
                raise ValueError(_NOT_WHOLE.format(name=name, dtype=dtype, inner=inner))
            # up to the last row's end, not the buffer's: Arrow leaves an empty chunk's data buffer a
            # few bytes long (4), which as float32 pairs was one value that no reshape took
            values = np.frombuffer(data, dtype=dtype, count=int(positions[-1]) // dtype.itemsize)
            return cls(values.reshape((-1, *inner)), positions // width)
        if not is_list_type(array.type):
            raise TypeError(f"column {name!r} is {array.type}, not a list column")
        _no_nulls(name, array)
        if pa.types.is_fixed_size_list(array.type):
            size = array.type.list_size
            offsets = (np.arange(len(array) + 1, dtype=np.int64) + array.offset) * size
        else:
            offsets = np.asarray(array.offsets, dtype=np.int64)  # of this slice, into the whole child
        # Only the rows' own values: a piece is a slice of its row group, whose other rows are not ours to check.
        first = int(offsets[0])
        child = array.values.slice(first, int(offsets[-1]) - first)
        offsets = offsets - first
        leaf = child
        for level, size in enumerate(inner):
            if not is_list_type(leaf.type):
                raise ValueError(f"column {name!r} nests {level + 1} list level(s), its shape says {len(inner) + 1}")
            _no_nulls(name, leaf)
            if not pa.types.is_fixed_size_list(leaf.type) or leaf.type.list_size != size:
                bounds = pc.min_max(pc.list_value_length(leaf)).as_py()
                if len(leaf) and (bounds["min"] != size or bounds["max"] != size):
                    raise ValueError(
                        f"column {name!r} holds inner arrays of {bounds['min']} to {bounds['max']} values where every "
                        f"one should hold {size}: only the outer length of a sequence may vary"
                    )
            leaf = pc.list_flatten(leaf)
        _no_nulls(name, leaf)
        values = _values(leaf)
        if inner:
            values = values.reshape((len(child), *inner))
        return cls(values, offsets)

    @staticmethod
    def arrow_lengths(
        name: str, array: pa.Array | pa.ChunkedArray, inner: tuple[int, ...], dtype: np.dtype
    ) -> np.ndarray:
        """Each row's length in a list column (as :meth:`from_arrow` reads it), without moving values.

        A ``binary_view`` column's lengths come from its views: :meth:`from_arrow` would copy
        its values end to end first, which the shuffle's gather would then copy again.
        """
        if isinstance(array, pa.ChunkedArray):
            array = array.chunk(0) if array.num_chunks == 1 else array.combine_chunks()
        if not pa.types.is_binary_view(array.type):
            return Ragged.from_arrow(name, array, inner, dtype).lengths
        _no_nulls(name, array)
        width = cell_width(dtype, inner)
        sizes = view_lengths(array)
        if width > 1 and (sizes % width).any():
            raise ValueError(_NOT_WHOLE.format(name=name, dtype=dtype, inner=inner))
        return sizes // width

    @classmethod
    def from_objects(
        cls, name: str, objects: np.ndarray, given: tuple[tuple[int, ...], np.dtype] | None = None
    ) -> Ragged:
        """A transform's output column: an object array of arrays (or an N-d array of equal rows).

        A row may itself be a row of arrays: pandas holds an ``array<array<float>>`` cell as an
        object array of its inner arrays, and a transform that leaves the column alone (or
        scales it cell by cell) hands those back. Such a row is stacked into one
        ``(length, *inner)`` array; one whose inner arrays differ in shape is refused, naming
        the column, as is a chunk whose rows' inner shapes differ.

        This one costs a Python step per row, as the transform that made the objects did.

        Args:
            name: The column, for messages.
            objects: The column as the transform returned it (see :func:`sparkfeed.transform.series_to_numpy`).
            given: The inner shape and dtype of the column the transform was given: what a chunk
                whose rows are all empty object arrays (which say nothing of either) takes, so
                that it matches the other chunks.

        Raises:
            NullValueError: A row is None.
            ValueError: The rows' inner shapes or kinds differ.
        """
        if not len(objects):  # a chunk whose rows the transform all dropped: pandas makes the column float64
            return cls(
                np.zeros(0, dtype=objects.dtype if objects.dtype != object else np.float64), np.zeros(1, np.int64)
            )
        if objects.dtype != object:
            if objects.ndim < 2:
                raise ValueError(f"column {name!r} holds one {objects.dtype} value per row, not an array")
            return cls.from_fixed(objects)
        rows = [row_array(name, value) if value is not None else None for value in objects]
        if any(row is None for row in rows):
            raise NullValueError(
                f"column {name!r} holds a null where a sequence was expected: fill or drop it, or replace it in the "
                "transform_fn"
            )
        arrays: list[np.ndarray] = rows  # type: ignore[assignment]
        if any(a.ndim == 0 for a in arrays):
            raise ValueError(
                f"column {name!r} holds rows of shapes {sorted({a.shape for a in arrays})[:4]}: a sequence's rows must "
                "be arrays whose values share one shape"
            )
        arrays = _typed_empty_rows(arrays, given)
        inner = {a.shape[1:] for a in arrays}
        if len(inner) > 1:
            raise ValueError(
                f"column {name!r} holds rows of shapes {sorted({a.shape for a in arrays})[:4]}: a sequence's rows must "
                "be arrays whose values share one shape"
            )
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        return cls.from_lengths(np.concatenate(arrays), lengths)

    # ---------------------------------------------------------------- measuring

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Each row's length (``int64``)."""
        return np.diff(self.offsets)

    @property
    def dtype(self) -> np.dtype:
        """The values' dtype."""
        return self.values.dtype

    @property
    def inner(self) -> tuple[int, ...]:
        """The shape of each value (``()`` for rows of numbers)."""
        return tuple(self.values.shape[1:])

    @property
    def tokens(self) -> int:
        """Values in all rows together."""
        return int(self.offsets[-1] - self.offsets[0]) if len(self.offsets) else 0

    def flat(self) -> np.ndarray:
        """The rows' values end to end, a view."""
        return self.values[self.offsets[0] : self.offsets[-1]]

    # ---------------------------------------------------------------- reshaping

    def __getitem__(self, key: slice | np.ndarray) -> Ragged:
        """A slice of rows (a view) or the rows at an index array (a gather), as NumPy indexes."""
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return self.take(np.arange(start, stop, step))
            return Ragged(self.values, self.offsets[start : max(start, stop) + 1])
        return self.take(np.asarray(key))

    def take(self, indices: np.ndarray) -> Ragged:
        """The rows at ``indices``, in that order: one gather of their values.

        Each row's values move by ``new start - old start``; ``np.repeat`` spreads that shift
        over the row's values, so the gather indices take three array operations, not a loop.
        """
        indices = np.asarray(indices, dtype=np.int64)
        starts = self.offsets[indices]
        lengths = self.offsets[indices + 1] - starts
        out = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum(lengths, out=out[1:])
        total = int(out[-1])
        gather = np.arange(total, dtype=np.int64)
        gather += np.repeat(starts - out[:-1], lengths)
        return Ragged(self.values[gather], out)

    @staticmethod
    def concat(parts: Sequence[Ragged]) -> Ragged:
        """Rows of the parts in order, their values copied once into one array."""
        if len(parts) == 1:
            return parts[0]
        inner = {part.inner for part in parts}
        if len(inner) > 1:
            raise ValueError(f"cannot join sequences whose values have different shapes {sorted(inner)}")
        values = np.concatenate([part.flat() for part in parts])
        lengths = np.concatenate([part.lengths for part in parts])
        return Ragged.from_lengths(values, lengths)

    def truncate(self, max_length: int | None) -> Ragged:
        """Each row cut to its first ``max_length`` values (a gather, or itself when none is longer)."""
        lengths = self.lengths
        if max_length is None or not len(lengths) or int(lengths.max()) <= max_length:
            return self
        kept = np.minimum(lengths, max_length)
        out = np.zeros(len(kept) + 1, dtype=np.int64)
        np.cumsum(kept, out=out[1:])
        gather = np.arange(int(out[-1]), dtype=np.int64)
        gather += np.repeat(self.offsets[:-1] - out[:-1], kept)
        return Ragged(self.values[gather], out)

    def padded(self, length: int, pad_value: Any = 0) -> np.ndarray:
        """The rows as one ``(rows, length, *inner)`` array, each row's values first, then ``pad_value``.

        Every row must be at most ``length`` long (see :meth:`truncate`). Where the pad value
        is one repeated ASCII byte (0, the usual one), Arrow pads: the rows' bytes as strings
        through ``ascii_rpad``, one ``memcpy`` and one fill per row in C++, out of the GIL,
        measured 2x as fast as the NumPy ways below (1.1 vs 2.2 ns a token, bucketed batches).
        ``ascii_rpad`` counts and pads bytes and never decodes them, so any values' bytes come
        out as they went in (tested over random bytes).

        Otherwise two NumPy ways, both one pass over the output: where padding is a small part
        of it (bucketed batches), a mask of the cells that hold values takes the values in
        order, which costs a bool per cell; where it dominates (a long row among short ones),
        the values are scattered by index, which costs an index per value instead: row ``i``'s
        value ``j`` lands at ``i * length + j``, a running count shifted per row, as in
        :meth:`take`.
        """
        rows, lengths = len(self), self.lengths
        total = self.tokens
        if total and int(lengths.max()) > length:
            raise ValueError(f"a row of {int(lengths.max())} values does not fit a padded length of {length}")
        fill = _pad_byte(pad_value, self.dtype)
        if fill is not None and rows and length:
            return self._padded_by_arrow(length, fill)
        if total and rows * length <= MASK_RATIO * total:
            out = _filled((rows, length, *self.inner), pad_value, self.dtype)
            out[self.mask(length)] = self.flat()
            return out
        flat = _filled((rows * length, *self.inner), pad_value, self.dtype)
        if total:
            scatter = np.arange(total, dtype=np.int64)
            scatter += np.repeat(
                np.arange(rows, dtype=np.int64) * length - (self.offsets[:-1] - self.offsets[0]), lengths
            )
            flat[scatter] = self.flat()
        return flat.reshape((rows, length, *self.inner))

    def _padded_by_arrow(self, length: int, fill: str) -> np.ndarray:
        """:meth:`padded` by Arrow's ``ascii_rpad``: each row's bytes, then ``fill`` up to ``length`` values."""
        rows, inner, dtype = len(self), self.inner, self.dtype
        width = cell_width(dtype, inner)
        values = np.ascontiguousarray(self.flat())
        positions = (self.offsets - self.offsets[0]) * width
        large = int(positions[-1]) >= 2**31 or rows * length * width >= 2**31
        kind, offset_type = (pa.large_string(), np.int64) if large else (pa.string(), np.int32)
        strings = pa.Array.from_buffers(
            kind, rows, [None, pa.py_buffer(positions.astype(offset_type)), pa.py_buffer(values)]
        )
        data = pc.ascii_rpad(strings, width=length * width, padding=fill).buffers()[2]
        out = np.frombuffer(data, dtype=dtype, count=rows * length * (width // dtype.itemsize))
        return out.reshape((rows, length, *inner))

    def mask(self, length: int) -> np.ndarray:
        """``(rows, length)`` bools: True where a row has a value, False over its padding."""
        return length_mask(self.lengths, length)


@dataclasses.dataclass(frozen=True, eq=False)
class Views:
    """Rows of varying length left where Parquet decoded them: ``binary_view`` views of raw values.

    What a bucketed or packed loader's sequence column is between reading and batching (the
    cache stores rows of varying length as ``binary_view``, :func:`sparkfeed.writer.pack_ragged`):
    each row a 16-byte view of its bytes in a decoded block. A :class:`Ragged` would copy every
    row end to end once for the segment, then again into each padded batch; here a segment's
    batches are made by one copy (:meth:`joined`): Arrow's cast to ``binary`` of the rows'
    views, each followed by a view of zeros as long as its padding, writes every padded batch
    of the segment in one pass, one call. Anything else asked of it goes through :meth:`to_ragged`.

    The views are kept as NumPy and the data buffers as a tuple, taken from Arrow once per
    segment: an Arrow slice lists all of a row group's data buffers (a thousand here), and
    every ``buffers()`` call or cast of one pays for each of them.

    Attributes:
        raw: The rows' views, ``(rows, 4)`` int32: the length, then the bytes inline (up to
            12) or a prefix, the data buffer and the offset in it.
        data: The data buffers the views point into.
        inner: The shape of each value.
        dtype: The values' dtype.
    """

    raw: np.ndarray
    data: tuple[pa.Buffer, ...]
    inner: tuple[int, ...]
    dtype: np.dtype

    @classmethod
    def from_arrow(cls, name: str, array: pa.Array | pa.ChunkedArray, inner: tuple[int, ...], dtype: np.dtype) -> Views:
        """A packed ``binary_view`` column, its cells checked to hold whole values of ``inner``.

        Raises:
            NullValueError: A row is null.
            ValueError: A cell is not a whole number of values.
        """
        if isinstance(array, pa.ChunkedArray):
            array = array.chunk(0) if array.num_chunks == 1 else array.combine_chunks()
        Ragged.arrow_lengths(name, array, inner, dtype)  # nulls and cell sizes, from the views alone
        buffers = array.buffers()
        raw = np.frombuffer(buffers[1], dtype=np.int32, count=4 * len(array), offset=16 * array.offset)
        return cls(raw.reshape(-1, 4), tuple(buffers[2:]), inner, dtype)

    @property
    def width(self) -> int:
        """Bytes per value."""
        return cell_width(self.dtype, self.inner)

    def __len__(self) -> int:
        return len(self.raw)

    @property
    def lengths(self) -> np.ndarray:
        """Each row's length (``int64``)."""
        return self.raw[:, 0].astype(np.int64) // self.width

    @property
    def tokens(self) -> int:
        """Values in all rows together."""
        return int(self.raw[:, 0].sum(dtype=np.int64)) // self.width

    def __getitem__(self, key: slice) -> Views:
        """A slice of rows, sharing the views."""
        return Views(self.raw[key], self.data, self.inner, self.dtype)

    def to_ragged(self) -> Ragged:
        """The rows as a :class:`Ragged`: their values copied end to end."""
        values = self.joined(np.zeros(len(self), dtype=np.int64)).reshape((-1, *self.inner))
        return Ragged.from_lengths(values, self.lengths)

    def flat(self) -> np.ndarray:
        """The rows' values end to end (a copy)."""
        return self.to_ragged().flat()

    def truncate(self, max_length: int | None) -> Views | Ragged:
        """Each row cut to ``max_length`` values: itself when none is longer, else a :class:`Ragged`."""
        lengths = self.lengths
        if max_length is None or not len(lengths) or int(lengths.max()) <= max_length:
            return self
        return self.to_ragged().truncate(max_length)

    def mask(self, length: int) -> np.ndarray:
        """``(rows, length)`` bools: True where a row has a value."""
        return length_mask(self.lengths, length)

    def padded(self, length: int, pad_value: Any = 0) -> np.ndarray:
        """The rows as one ``(rows, length, *inner)`` array, each row's values first, then ``pad_value``."""
        lengths = self.lengths
        if len(lengths) and int(lengths.max()) > length:
            raise ValueError(f"a row of {int(lengths.max())} values does not fit a padded length of {length}")
        if not zero_pad(pad_value, self.dtype) or not len(self) or not length:
            return self.to_ragged().padded(length, pad_value)
        return self.joined((length - lengths) * self.width).reshape((len(self), length, *self.inner))

    def joined(self, gaps: np.ndarray) -> np.ndarray:
        """The rows' values end to end, row ``i`` followed by ``gaps[i]`` zero bytes: one copy, by Arrow's cast.

        Args:
            gaps: Zero bytes after each row (``int64``, one per row).
        """
        rows = len(self)
        total = int(self.raw[:, 0].sum(dtype=np.int64)) + int(gaps.sum())
        if not total:
            return np.zeros(0, dtype=self.dtype)
        widest = int(gaps.max())
        zeros = pa.py_buffer(np.zeros(max(widest, 1), dtype=np.uint8))
        both = np.zeros((2 * rows, 4), dtype=np.int32)
        both[0::2] = self.raw
        both[1::2, 0] = gaps
        both[1::2, 2] = np.where(gaps > INLINE, len(self.data), 0)  # too long to hold inline: in the zero buffer
        return _cast_views(both, [*self.data, zeros], total, self.dtype)


INLINE = 12
"""Bytes a ``binary_view`` view holds inline; a longer value's view points into a data buffer."""


def ranges(starts: np.ndarray, widths: np.ndarray, zeros: np.ndarray) -> np.ndarray:
    """Runs end to end, int32: ``starts[i], starts[i] + 1, ...`` (``widths[i]`` of them), or zeros where ``zeros[i]``.

    Packed rows' position ids are such runs, one per piece of a row (and zeros over the padding).
    NumPy writes them in four passes over the cells (a counter, the runs' bases repeated, their
    difference, the padding); here one Arrow cast of ``binary_view`` views into one small table
    (``0, 1, 2, ...`` as far as the longest run reaches, then zeros as many as the longest
    padding: it stays in the CPU's cache) writes each cell once, as :meth:`Views.joined` writes
    values (see :func:`_runs`).

    Args:
        starts: Each run's first value (``int64``, ``>= 0``; unused where ``zeros``).
        widths: Each run's length in values (``int64``, ``>= 0``).
        zeros: Where a run is zeros instead (``bool``).
    """
    counted = ~zeros
    reach = int((starts + widths)[counted].max()) if counted.any() else 0
    padding = int(widths[zeros].max()) if zeros.any() else 0
    # The counting values, then the zeros: a counted run starts at its first value, a zero run at the zeros.
    offsets = np.where(zeros, reach, starts)
    table = np.concatenate([np.arange(reach, dtype=np.int32), np.zeros(padding, dtype=np.int32)])
    return _runs(table, offsets, widths, np.where(zeros, 0, starts), np.where(zeros, 0, 1))


def repeated(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """``values[i]`` repeated ``widths[i]`` times, end to end, int32: ``np.repeat``, written by one Arrow cast.

    Packed rows' segment ids are such runs. ``np.repeat`` copies each output value on its own
    (about 2 ns a cell); here each run is a view into a table holding every value as many times
    as its longest run, which the cast copies from in blocks. A table more than a quarter of the
    output (few runs a value: the table costs what it saves) is not built: ``np.repeat`` then.

    Args:
        values: Each run's value (``>= 0``, int32 range).
        widths: Each run's length (``int64``, ``>= 0``).
    """
    total = int(widths.sum())
    if not total:
        return np.zeros(0, dtype=np.int32)
    top = int(values.max())
    longest = np.zeros(top + 1, dtype=np.int64)
    np.maximum.at(longest, values, widths)
    if int(longest.sum()) > total // 4:
        return np.repeat(values.astype(np.int32), widths)
    base = np.cumsum(longest) - longest  # where each value's copies start in the table
    table = np.repeat(np.arange(top + 1, dtype=np.int32), longest)
    return _runs(table, base[values], widths, values, np.zeros(len(values), dtype=np.int64))


def _runs(
    table: np.ndarray, offsets: np.ndarray, widths: np.ndarray, first: np.ndarray, step: np.ndarray
) -> np.ndarray:
    """``table[offsets[i] : offsets[i] + widths[i]]`` end to end: one Arrow cast of views into ``table`` (int32).

    A run of at most three values is held inside its view, which must then spell them out:
    ``first[i] + k * step[i]`` for its ``k``-th value (the table's own values there).
    """
    nbytes = widths.astype(np.int64) * 4
    total = int(nbytes.sum())
    if not total:
        return np.zeros(0, dtype=np.int32)
    views = np.zeros((len(widths), 4), dtype=np.int32)
    views[:, 0] = nbytes
    long = nbytes > INLINE
    views[long, 1] = first[long]  # the prefix: the run's first value; the buffer is 0
    views[long, 3] = offsets[long] * 4
    short = ~long
    start, width, stride = first[short], widths[short], step[short]
    for k in range(INLINE // 4):
        views[short, 1 + k] = np.where(width > k, start + k * stride, 0)
    return _cast_views(views, [pa.py_buffer(table if len(table) else np.zeros(1, np.int32))], total, np.dtype(np.int32))


def _cast_views(views: np.ndarray, data: list[pa.Buffer], total: int, dtype: np.dtype) -> np.ndarray:
    """The bytes ``views`` (``(n, 4)`` int32 ``binary_view`` views into ``data``) name, end to end, as ``dtype``.

    Arrow's cast of the views to ``binary`` is the one copy: its output buffer is fresh and
    writable, so the arrays handed out from it are too.
    """
    array = pa.Array.from_buffers(pa.binary_view(), len(views), [None, pa.py_buffer(views), *data])
    joined = array.cast(pa.large_binary() if total >= 2**31 else pa.binary())
    return np.frombuffer(joined.buffers()[2], dtype=dtype, count=total // dtype.itemsize)


def cell_width(dtype: np.dtype, inner: tuple[int, ...]) -> int:
    """Bytes of one value of shape ``inner``: what a packed row's byte size is a multiple of."""
    return dtype.itemsize * int(np.prod(inner, dtype=np.int64))


def length_mask(lengths: np.ndarray, length: int) -> np.ndarray:
    """``(rows, length)`` bools: True where a row of ``lengths`` has a value, False over its padding."""
    # int32 on both sides: twice as fast as NumPy's default int64 (a row's length fits int32)
    return np.arange(length, dtype=np.int32) < lengths.astype(np.int32, copy=False)[:, None]


def zero_pad(pad_value: Any, dtype: np.dtype) -> bool:
    """Whether ``pad_value`` as ``dtype`` is all zero bytes (what :meth:`Views.joined` pads with)."""
    return _pad_byte(pad_value, dtype) == "\x00"


def _typed_empty_rows(
    arrays: list[np.ndarray], given: tuple[tuple[int, ...], np.dtype] | None = None
) -> list[np.ndarray]:
    """Rows with empty ones given the others' dtype and inner shape.

    An empty Python list is a ``float64`` array of shape ``(0,)`` to NumPy, which would make a
    chunk of token ids float64 (``np.concatenate`` promotes) or refuse nested rows as of
    another shape; it says nothing of either, so it takes the rows' that do. Rows all empty
    keep NumPy's guess, but for empty object arrays (pandas' empty cell of a nested array),
    which take ``given``, the column's as the transform received it, or else NumPy's guess
    for ``[]``: objects would be no numbers at all.
    """
    filled = [a for a in arrays if len(a)]
    if not filled:
        if given is not None:
            inner, dtype = given
            return [np.zeros((0, *inner), dtype) if a.dtype == object else a for a in arrays]
        return [np.zeros(a.shape, np.float64) if a.dtype == object else a for a in arrays]
    if len(filled) == len(arrays):
        return arrays
    dtype, inner = np.result_type(*filled), filled[0].shape[1:]
    return [a if len(a) else np.zeros((0, *inner), dtype=dtype) for a in arrays]


def _pad_byte(pad_value: Any, dtype: np.dtype) -> str | None:
    """The one ASCII byte every byte of ``pad_value`` is as ``dtype`` (0 for zeros), or None."""
    try:
        raw = np.asarray(pad_value, dtype=dtype).tobytes()
    except (TypeError, ValueError, OverflowError):
        return None
    if dtype.kind not in "biuf" or len(set(raw)) != 1 or raw[0] >= 0x80:
        return None
    return chr(raw[0])


def _is_packed(data_type: pa.DataType) -> bool:
    """Whether a column is the cache's packed form of arrays of varying length (a bytes type)."""
    return bool(
        pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type) or pa.types.is_binary_view(data_type)
    )


def _filled(shape: tuple[int, ...], value: Any, dtype: np.dtype) -> np.ndarray:
    """A new array of ``value``: zeros come from ``np.zeros``, whose fresh pages are zero already (no fill pass)."""
    return np.zeros(shape, dtype) if value == 0 else np.full(shape, value, dtype)


def _no_nulls(name: str, array: pa.Array) -> None:
    if array.null_count:
        raise NullValueError(
            f"column {name!r} ({array.type}) holds {array.null_count} null value(s), which a sequence cannot "
            "represent: fill or drop them before converting (df.fillna / df.dropna, or "
            "F.coalesce(col, F.array()) for a null array), or replace them in a transform_fn"
        )
