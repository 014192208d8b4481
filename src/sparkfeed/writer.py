"""The cache writer that runs inside Spark tasks: Arrow batches → Parquet files, tensors packed.

Spark stores ``array<float>`` as a Parquet list, which decodes value by value with repetition
levels: about 157,000 rows/s for 512 floats a row here. The same values as one
``fixed_size_binary`` cell per row decode at about 913,000 rows/s and become a NumPy array
without a copy. So every list column whose rows all have one shape, no nulls and a numeric leaf
is written packed; the manifest keeps its logical type (the list) and shape, and the reader
unpacks it. Arrays of numbers whose length varies (token ids) are packed the same way into
byte cells, one per row (shape ``(-1, *inner)`` in the manifest; ``binary_view`` in the Arrow
schema where pyarrow can, see :func:`pack_ragged`): they decode about 2.8x as fast as the list
(125 vs 354 million int32 values/s here), and a shuffle moves each row's bytes in one copy
instead of value by value. Each task also measures its rows' array shapes
and returns them with its files' row-group sizes, so the manifest needs no second pass over
the data.

This module is shipped to executors by value (see :func:`ship_by_value`): it imports nothing
from sparkfeed, so executors need only pyarrow and NumPy, which Spark's Arrow path needs anyway.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

RESULT_SCHEMA = "path string, row_groups string, shapes string, packed string, size bigint"
"""One row per written file: its name, row-group sizes, list shapes, packed columns (JSON)."""

ShapeStats = list[tuple[int | None, int | None]]
"""Per nesting level of a list column, the (min, max) length seen."""


def is_list_type(data_type: pa.DataType) -> bool:
    """Spark arrays arrive as ``list``; existing Parquet may hold large or fixed-size lists."""
    return bool(
        pa.types.is_list(data_type) or pa.types.is_large_list(data_type) or pa.types.is_fixed_size_list(data_type)
    )


def list_levels(array: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    """A list column, then each level below it flattened, down to its leaf values.

    What every look into nested arrays walks (their lengths, their nulls). A null list's values
    are left out of the level below it, as ``list_flatten`` leaves them.
    """
    if isinstance(array, pa.ChunkedArray):  # combine_chunks copies even a single chunk
        array = array.chunk(0) if array.num_chunks == 1 else array.combine_chunks()
    levels = [array]
    while is_list_type(levels[-1].type):
        levels.append(pc.list_flatten(levels[-1]))
    return levels


def list_shape_stats(array: pa.Array | pa.ChunkedArray) -> ShapeStats:
    """Minimum and maximum length per nesting level of a list column, from its offsets alone."""
    stats: ShapeStats = []
    for level in list_levels(array)[:-1]:
        bounds = pc.min_max(pc.list_value_length(level)).as_py()
        stats.append((bounds["min"], bounds["max"]))
    return stats


def _leaf(array: pa.Array) -> tuple[pa.Array, bool]:
    """The flattened leaf values of a list column, and whether any level holds a null."""
    levels = list_levels(array)
    return levels[-1], any(level.null_count for level in levels)


def packed_shape(array: pa.Array, stats: ShapeStats) -> tuple[int, ...] | None:
    """The per-row shape if this list column can be packed: one shape, no nulls, numeric leaf.

    Arrays with no values at all (every row ``[]``) stay lists: a zero-width binary cell has no
    data buffer to pack.
    """
    if not stats or any(low != high or low is None or low == 0 for low, high in stats):
        return None
    leaf, nulls = _leaf(array)
    if nulls or not (pa.types.is_integer(leaf.type) or pa.types.is_floating(leaf.type)):
        return None
    return tuple(int(low) for low, _ in stats)  # type: ignore[arg-type]


RAGGED = -1
"""The first dimension of a packed shape whose rows vary in length (see :func:`pack_ragged`)."""


def ragged_shape(array: pa.Array, stats: ShapeStats) -> tuple[int, ...] | None:
    """``(-1, *inner)`` if this list column can be packed as ``binary``: lengths vary, no nulls, numeric leaf.

    Only the outer length may vary: each value is a number, or an array of one shape
    (``array<array<float>>`` whose inner arrays all hold the same count).
    """
    if not stats or stats[0][0] == stats[0][1] or stats[0][1] is None:
        return None
    inner = stats[1:]
    if any(low != high or low is None or low == 0 for low, high in inner):
        return None
    leaf, nulls = _leaf(array)
    if nulls or not (pa.types.is_integer(leaf.type) or pa.types.is_floating(leaf.type)):
        return None
    return (RAGGED, *(int(low) for low, _ in inner))  # type: ignore[arg-type]


VIEWS = tuple(int(part) for part in pa.__version__.split(".")[:2]) >= (21, 0)
"""Whether pyarrow reads and writes ``binary_view`` in Parquet (Arrow 21, apache/arrow#46532)."""


def pack_ragged(array: pa.Array, shape: tuple[int, ...]) -> pa.Array:
    """A list column of varying length as one cell of raw values per row: ``binary_view`` where pyarrow can.

    The Parquet column is ``BYTE_ARRAY`` either way; the view type, kept in the file's Arrow
    schema, makes the reader decode it into a view per row over blocks it fills as it goes,
    instead of one buffer it reallocates (and copies) as it grows (measured 2.95 vs 3.9 ns a
    value with page checksums, one thread). ``binary`` before pyarrow 21, ``large_binary`` past
    2 GiB.
    """
    leaf, _ = _leaf(array)
    itemsize = leaf.type.bit_width // 8
    width = int(np.prod(shape[1:], dtype=np.int64)) * itemsize
    offsets = np.asarray(array.offsets, dtype=np.int64)
    offsets = (offsets - offsets[0]) * width
    data = leaf.buffers()[1].slice(leaf.offset * itemsize, len(leaf) * itemsize)
    large = offsets[-1] >= 2**31
    kind = pa.large_binary() if large else pa.binary()
    offsets_buffer = pa.py_buffer(offsets if large else offsets.astype(np.int32))
    packed = pa.Array.from_buffers(kind, len(array), [None, offsets_buffer, data])
    return packed.cast(pa.binary_view()) if VIEWS and not large else packed


def unpack_ragged(array: pa.Array, logical: pa.DataType, shape: tuple[int, ...]) -> pa.Array:
    """The inverse of :func:`pack_ragged`: the logical list type over the same value bytes (offsets recomputed)."""
    leaf_type = logical
    while is_list_type(leaf_type):
        leaf_type = leaf_type.value_type
    itemsize = leaf_type.bit_width // 8
    width = int(np.prod(shape[1:], dtype=np.int64)) * itemsize
    offsets, data = binary_buffers(array)
    # up to the last row's end, not the buffer's: an empty chunk's data buffer may be a few bytes long
    values: pa.Array = pa.Array.from_buffers(leaf_type, int(offsets[-1]) // itemsize, [None, data])
    for size in reversed(shape[1:]):
        values = pa.FixedSizeListArray.from_arrays(values, size)
    unpacked = pa.ListArray.from_arrays(pa.array(offsets // width, pa.int32()), values)
    return unpacked if unpacked.type == logical else unpacked.cast(logical)


def binary_buffers(array: pa.Array) -> tuple[np.ndarray, pa.Buffer]:
    """A binary array's byte offsets (``int64``, into the data buffer, one more than the rows) and its data buffer.

    A ``binary_view`` array is first copied into ``binary`` (its rows end to end), the one
    copy of its values the reader makes before padding.
    """
    if pa.types.is_binary_view(array.type):
        array = array.cast(pa.large_binary() if view_bytes(array) >= 2**31 else pa.binary())
    offset_type = np.int64 if pa.types.is_large_binary(array.type) else np.int32
    _, offsets, data = array.buffers()
    positions = np.frombuffer(
        offsets, dtype=offset_type, count=len(array) + 1, offset=array.offset * np.dtype(offset_type).itemsize
    )
    return positions.astype(np.int64), data if data is not None else pa.py_buffer(b"")


def view_lengths(array: pa.Array) -> np.ndarray:
    """A ``binary_view`` array's byte length per row (``int64``), read from its views: no copy of the values."""
    views = np.frombuffer(array.buffers()[1], dtype=np.int32, count=4 * len(array), offset=16 * array.offset)
    return views[::4].astype(np.int64)


def view_bytes(array: pa.Array) -> int:
    """The bytes of a ``binary_view`` array's values together."""
    return int(view_lengths(array).sum())


def take_views(array: pa.Array, indices: np.ndarray) -> pa.Array:
    """The rows of a ``binary_view`` array at ``indices``: its 16-byte views gathered, the values not moved.

    Arrow 26 has no ``take`` kernel for views; NumPy gathers them (a row's view holds its
    length, and its bytes inline or where in which data buffer they are, so it is valid in
    any order), over the same data buffers. An array with nulls goes through ``binary``'s
    ``take``, which keeps them for the reader to refuse.
    """
    if array.null_count:
        return array.cast(pa.large_binary()).take(pa.array(indices, pa.int64()))
    views = np.frombuffer(array.buffers()[1], dtype=np.int64, count=2 * len(array), offset=16 * array.offset)
    taken = views.reshape(-1, 2)[np.asarray(indices, dtype=np.int64)]
    return pa.Array.from_buffers(pa.binary_view(), len(taken), [None, pa.py_buffer(taken), *array.buffers()[2:]])


def pack(array: pa.Array, shape: tuple[int, ...]) -> pa.Array:
    """A fixed-shape list column as ``fixed_size_binary``, one cell of raw values per row."""
    leaf, _ = _leaf(array)
    itemsize = leaf.type.bit_width // 8
    width = int(np.prod(shape)) * itemsize
    data = leaf.buffers()[1].slice(leaf.offset * itemsize, len(leaf) * itemsize)
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(array), [None, data])


def unpack(array: pa.Array, logical: pa.DataType, shape: tuple[int, ...]) -> pa.Array:
    """The inverse of :func:`pack`, without a copy: nested fixed-size lists over the same bytes."""
    leaf_type = logical
    while is_list_type(leaf_type):
        leaf_type = leaf_type.value_type
    itemsize = leaf_type.bit_width // 8
    width = array.type.byte_width
    per_row = int(np.prod(shape))
    # The whole buffer with an offset, not a slice: a slice is never mutable, and the reader
    # hands mutable (decoded, or copy-on-write mapped) memory to the user as writable arrays.
    values: pa.Array = pa.Array.from_buffers(
        leaf_type, len(array) * per_row, [None, array.buffers()[1]], offset=array.offset * per_row
    )
    for size in reversed(shape):
        values = pa.FixedSizeListArray.from_arrays(values, size)
    assert len(values) == len(array) and itemsize * per_row == width
    return values


def merge_shape_stats(parts: Iterable[ShapeStats]) -> ShapeStats:
    """Combines the stats of several chunks of the same column."""
    merged: ShapeStats = []
    for part in parts:
        for level, (low, high) in enumerate(part):
            if level == len(merged):
                merged.append((low, high))
                continue
            old_low, old_high = merged[level]
            merged[level] = (
                low if old_low is None else old_low if low is None else min(low, old_low),
                high if old_high is None else old_high if high is None else max(high, old_high),
            )
    return merged


class _File:
    """One Parquet file being written, its row groups cut by size."""

    def __init__(
        self,
        fs: pafs.FileSystem,
        root: str,
        partition: int,
        number: int,
        schema: pa.Schema,
        codec: str,
        group_bytes: int,
    ) -> None:
        # Partition order first, then the task's files in the order it wrote them, so that the
        # manifest, which sorts them by name, lists them in the DataFrame's order.
        self.name = f"part-{partition:05d}-{number:06d}-{uuid.uuid4().hex}.parquet"
        self.schema = schema
        self._stream = fs.open_output_stream(f"{root}/{self.name}")
        # Dictionaries shrink repeated strings; on numbers they cost write time and rarely pay off.
        strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
        # Page checksums let the reader refuse flipped bits instead of serving wrong numbers.
        self._writer = pq.ParquetWriter(
            self._stream, schema, compression=codec, use_dictionary=strings, write_page_checksum=True
        )
        self._group_bytes = group_bytes
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._pending_bytes = 0
        self.row_groups: list[int] = []
        self.size = 0

    def write(self, batch: pa.RecordBatch) -> None:
        """Buffers a batch; writes every full row group (by in-memory Arrow size) it completes."""
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        self._pending_bytes += batch.nbytes
        group_rows = max(1, int(self._group_bytes * self._pending_rows / max(self._pending_bytes, 1)))
        if self._pending_rows >= group_rows:
            table = pa.Table.from_batches(self._pending)
            full = self._pending_rows // group_rows * group_rows
            self._writer.write_table(table.slice(0, full), row_group_size=group_rows)
            self.row_groups += [group_rows] * (full // group_rows)
            tail = table.slice(full)
            self._pending = tail.to_batches()
            self._pending_bytes = self._pending_bytes * tail.num_rows // self._pending_rows
            self._pending_rows = tail.num_rows

    def _flush(self) -> None:
        if self._pending_rows:
            table = pa.Table.from_batches(self._pending)
            self._writer.write_table(table, row_group_size=table.num_rows)
            self.row_groups.append(table.num_rows)
        self._pending, self._pending_rows, self._pending_bytes = [], 0, 0

    def close(self) -> None:
        self._flush()
        self._writer.close()
        self.size = self._stream.tell()  # the footer written: the manifest's fingerprint of the file
        self._stream.close()


def partition_writer(
    fs: pafs.FileSystem,
    root: str,
    codec: str,
    group_bytes: int,
    names: list[str],
    counters: tuple[Any, Any] = (None, None),
) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function that writes one partition into the cache directory.

    A task's batches usually share one encoding; a batch whose arrays differ in shape or hold
    nulls starts another file, and so does the next batch that packs again, so that the task's
    rows stay in their order, file after file (a file per encoding held a task's rows out of
    order). A batch of one length where the file packs lengths that vary is packed as they are,
    to keep to one file. Files of a failed task attempt are never in the manifest, which lists
    exactly the files that the successful tasks return.

    Args:
        fs: The cache's filesystem; it pickles with its options, so an executor reaches the cache
            as the driver does (credentials left out of them are read from the executor's
            environment).
        root: The cache directory on it.
        codec: Parquet compression codec.
        group_bytes: Target row-group size in bytes.
        names: The DataFrame's column names, written to the files. The batches arrive with
            positional stand-ins (see :func:`positional_names`), since pyspark's ``mapInArrow``
            cannot resolve a column whose name holds a dot.
        counters: Spark accumulators of the rows and the files written (or None), which the
            driver shows on its progress bar as each task ends.
    """
    rows_written, files_written = counters

    def write(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        context = TaskContext.get()
        partition = context.partitionId() if context is not None else 0
        files: list[tuple[_File, dict[str, list[int]]]] = []  # in the order of the rows they hold
        shapes: dict[str, ShapeStats] = {}
        for batch in batches:
            if not batch.num_rows:
                continue
            current = files[-1][1] if files else {}
            columns, packed = [], {}
            for name, column in zip(names, batch.columns, strict=True):
                if is_list_type(column.type):
                    stats = list_shape_stats(column)
                    shapes[name] = merge_shape_stats([shapes.get(name, []), stats])
                    shape = packed_shape(column, stats)
                    ragged = current.get(name)
                    if shape is not None and ragged and ragged[0] == RAGGED and tuple(ragged[1:]) == shape[1:]:
                        column = pack_ragged(column, tuple(ragged))  # one length among lengths that vary
                        packed[name] = ragged
                    elif shape is not None:
                        column = pack(column, shape)
                        packed[name] = list(shape)
                    elif (shape := ragged_shape(column, stats)) is not None:
                        column = pack_ragged(column, shape)
                        packed[name] = list(shape)
                columns.append(column)
            encoded = pa.RecordBatch.from_arrays(columns, names=names)
            if not files or packed != current or encoded.schema != files[-1][0].schema:
                file = _File(fs, root, partition, len(files), encoded.schema, codec, group_bytes)
                files.append((file, packed))
            files[-1][0].write(encoded)
        rows = []
        for file, packed in files:
            file.close()
            rows.append(
                {
                    "path": file.name,
                    "row_groups": json.dumps(file.row_groups),
                    "shapes": json.dumps(shapes),
                    "packed": json.dumps(packed),
                    "size": file.size,
                }
            )
        if rows_written is not None:  # each file is closed: its last row group is counted
            rows_written.add(sum(sum(file.row_groups) for file, _ in files))
        if files_written is not None:
            files_written.add(len(files))
        strings = [(name, pa.string()) for name in ("path", "row_groups", "shapes", "packed")]
        yield pa.RecordBatch.from_pylist(rows, schema=pa.schema([*strings, ("size", pa.int64())]))

    return write


def positional_names(count: int) -> list[str]:
    """Plain stand-ins for a DataFrame's column names while Spark hands its rows to the writer."""
    return [f"_sparkfeed_{i}" for i in range(count)]


def ship_by_value() -> None:
    """Makes Spark pickle this module's functions by value, so executors need not install sparkfeed."""
    import sys

    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # type: ignore[no-untyped-call]
