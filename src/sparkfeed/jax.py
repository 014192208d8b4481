"""The JAX adapter: the engine's batches as dicts of ``jax.Array`` on a device or a sharding.

Making a ``jax.Array`` from NumPy costs 20-40 us per array whatever its size (``device_put``
of a dict costs the same per leaf), and a batch holds one array per column: with 18 columns,
putting batches of 1024 rows cost about 400 us each. So :class:`JaxFormat` puts each chunk on
the device whole, in the reader threads (on CPU without a copy when Arrow's buffers are
aligned), and the consumer cuts up to :data:`GROUP` batches out of it with one jitted call,
whose outputs cost a few microseconds each. The jitted cut sees blocks of one fixed shape, so
it compiles once per batch size and schema (a fraction of a second), not once per chunk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import numpy as np

from sparkfeed.loader import Batches, ReaderLoader
from sparkfeed.options import check_placement
from sparkfeed.reader.batch import NUMPY, BatchFormat, Columns, Signature, numpy_signature
from sparkfeed.types import array_view

GROUP = 16
"""Most batches cut per jitted call: each call costs about as much as a few batches' outputs."""

GROUP_BYTES = 4 << 20
"""Fewer batches per call when they are big, so that one call's outputs stay about this size."""

BLOCK_GROUPS = 4
"""Groups of batches that may start in one device block (see :meth:`JaxFormat.convert`)."""


def import_jax() -> ModuleType:
    """jax, or an ImportError that names the extra to install."""
    try:
        import jax
    except ImportError as error:
        raise ImportError(
            "make_jax_iterator needs JAX, which is not installed: pip install 'sparkfeed[jax]'"
        ) from error
    return jax


def _target(device: Any, sharding: Any) -> Any:
    """Where batches go: the sharding, else the device (None: JAX's default device); checked by the options."""
    check_placement(import_jax(), device, sharding)
    return sharding if sharding is not None else device


def x64_enabled() -> bool:
    """Whether JAX keeps 64-bit types here and now (``jax_enable_x64``, global or in a ``with``)."""
    return bool(import_jax().config.jax_enable_x64)


def _x64_scope(x64: bool) -> contextlib.AbstractContextManager[Any]:
    """``jax_enable_x64`` set to ``x64`` in this thread.

    The setting is read once, where the iterator is made: a ``with jax.enable_x64():`` there is
    thread-local, and the reader threads that put chunks on the device must follow it too.
    """
    jax = import_jax()
    scope: Any = getattr(jax, "enable_x64", None)
    if scope is None:  # older JAX has it as an experimental context manager
        scope = importlib.import_module("jax.experimental").enable_x64
    return scope(x64)  # type: ignore[no-any-return]


def _host(columns: Columns, x64: bool) -> Columns:
    """The columns in the form that reaches JAX, as :class:`~sparkfeed.types.FrameworkView` says.

    With ``jax_enable_x64`` on, dates and timestamps become their int64 counts. With it off
    (JAX's default), ``device_put`` would wrap every int64 into int32 without a word (2**40
    becomes 0), so the view narrows instead, where it is exact: int64 columns and dates
    (int32 days) whose values all fit become int32, a value that does not fit raises an
    ``OverflowError`` naming the column, and timestamps, whose microseconds never fit, stay
    NumPy ``datetime64`` arrays on the host, like strings. float64 and complex128 round to 32-bit
    parts, but a finite value beyond float32's range raises an ``OverflowError`` (JAX: ``inf``).
    """
    host = {}
    for name, array in columns.items():
        prepared = array_view(name, array, "jax", x64).prepare(array)
        host[name] = prepared if x64 or prepared.dtype != np.complex128 else _complex64(name, prepared)
    return host


def _complex64(name: str, array: np.ndarray) -> np.ndarray:
    """A complex128 column as complex64, as JAX without x64 would make it, or an OverflowError.

    The view narrows float64 but not complex128 (no Spark type makes one; a transform can), and
    ``device_put`` would make a finite part beyond float32's range ``inf`` without a word: it is
    refused as a float64 one is. The parts round to float32's precision otherwise.
    """
    with np.errstate(over="ignore"):
        narrowed = array.astype(np.complex64)
    grew = (np.isinf(narrowed.real) & np.isfinite(array.real)) | (np.isinf(narrowed.imag) & np.isfinite(array.imag))
    if grew.any():
        raise OverflowError(
            f"column {name!r} holds {array[grew].flat[0]}, beyond complex64's range (parts of about 3.4e38), which "
            "JAX would make inf: JAX keeps complex128 only with jax.config.update('jax_enable_x64', True); turn "
            "that on, scale the column, or leave it out with schema_fields"
        )
    return narrowed


def _is_numeric(array: np.ndarray) -> bool:
    """Whether JAX can hold the column; strings, bytes and ragged arrays stay NumPy."""
    return array.dtype.kind in "biufc"


def _place(columns: Columns, target: Any, x64: bool) -> dict[str, Any]:
    """One batch put on ``target`` array by array: the slow path, for batches not cut on the device."""
    host = _host(columns, x64)
    numeric = {name: array for name, array in host.items() if _is_numeric(array)}
    try:
        with _x64_scope(x64):
            placed = import_jax().device_put(numeric, target)
    except ValueError as error:
        if not numeric or not any(word in str(error) for word in ("divide", "divisible")):  # JAX >= 0.5, 0.4
            raise
        rows = len(next(iter(numeric.values())))
        raise ValueError(
            f"a batch of {rows} rows cannot be placed with {target}, which splits the batch dimension "
            "evenly: pass drop_last=True to leave out each epoch's short last batch, and a batch_size "
            "that the sharding divides"
        ) from error
    return {name: placed.get(name, array) for name, array in host.items()}


@dataclasses.dataclass(frozen=True)
class DeviceBlocks:
    """A chunk's numeric columns on the device, in overlapping blocks of ``span`` rows each.

    Block ``i`` starts at row ``min(i * stride, chunk rows - span)`` and holds ``span = stride +
    group * batch_size`` rows, so that ``group`` consecutive batches starting in the chunk lie
    inside the block :meth:`locate` names for their first row; the last block ends where the
    chunk does, so none needs padding (a chunk shorter than ``span`` has one, zero-padded).

    Attributes:
        names: The columns, in order.
        arrays: One tuple of device arrays (in the order of ``names``) per block.
        starts: The chunk row each block starts at.
        group: Batches cut per jitted call.
        stride: Rows between the starts of two blocks, but the last.
    """

    names: tuple[str, ...]
    arrays: tuple[tuple[Any, ...], ...]
    starts: tuple[int, ...]
    group: int
    stride: int

    def locate(self, row: int) -> tuple[int, int]:
        """``(block, offset in it)`` of a group of batches whose first row is chunk row ``row``."""
        block = min(row // self.stride, len(self.starts) - 1)
        return block, row - self.starts[block]


@dataclasses.dataclass(frozen=True)
class JaxChunk:
    """Rows ``[start, start + rows)`` of a chunk, or one batch of it already cut on the device.

    Attributes:
        host: The whole chunk's columns in NumPy, dates as int64.
        blocks: Its numeric columns on the device; None for a chunk too short to be worth it.
        start: First row, in the chunk.
        rows: Number of rows.
        placed: The batch's numeric columns on the device, when :meth:`JaxFormat.split` cut it.
    """

    host: Columns
    blocks: DeviceBlocks | None
    start: int
    rows: int
    placed: dict[str, Any] | None = None

    def columns(self) -> Columns:
        """These rows in NumPy (views of the chunk)."""
        return {name: array[self.start : self.start + self.rows] for name, array in self.host.items()}


class JaxFormat:
    """Chunks put on the device in the reader threads; batches cut from them in jitted groups.

    Full batches are cut on the device. The few others (the one that spans two chunks, an
    epoch's partial last batch) stay NumPy and :class:`JaxIterator` puts them array by array.

    Args:
        batch_size: Rows per batch.
        device: The device the chunks go to (None: JAX's default device).
    """

    def __init__(self, batch_size: int, device: Any = None) -> None:
        self._jax = import_jax()
        self._batch_size = batch_size
        self._device = device
        self._cut = _cut_function(self._jax)
        self._x64 = x64_enabled()

    def convert(self, columns: Columns) -> JaxChunk:
        """Runs in a reader thread: the chunk's numeric columns go to the device in blocks.

        The blocks are views of the chunk, put without a copy on CPU where they are aligned.
        A chunk shorter than one group of batches gets none: all its batches are cut in NumPy.
        """
        host = _host(columns, self._x64)
        rows = len(next(iter(host.values()))) if host else 0
        numeric = {name: array for name, array in host.items() if _is_numeric(array)}
        size = self._batch_size
        row_bytes = sum(array[:1].nbytes for array in numeric.values())
        group = max(1, min(GROUP, GROUP_BYTES // max(1, size * row_bytes)))
        if not numeric or rows < group * size:
            return JaxChunk(host, None, 0, rows)
        stride = BLOCK_GROUPS * group * size
        span = stride + group * size
        last = max(0, rows - span)
        starts = (*range(0, last, stride), last)
        with _x64_scope(self._x64):
            arrays = tuple(
                self._jax.device_put(tuple(_window(array, start, span) for array in numeric.values()), self._device)
                for start in starts
            )
        return JaxChunk(host, DeviceBlocks(tuple(numeric), arrays, starts, group, stride), 0, rows)

    def rows(self, chunk: JaxChunk) -> int:
        """Rows in a chunk."""
        return chunk.rows

    def split(self, chunk: JaxChunk, start: int, size: int, count: int) -> list[JaxChunk]:
        """Consecutive parts; full batches are cut on the device, up to a group per call."""
        blocks, row = chunk.blocks, chunk.start + start
        if blocks is None or size != self._batch_size:
            return [JaxChunk(chunk.host, blocks, row + k * size, size) for k in range(count)]
        parts: list[JaxChunk] = []
        while count:
            cut_rows = min(count, blocks.group)
            block, offset = blocks.locate(row)
            with _x64_scope(self._x64):
                cut = self._cut(blocks.arrays[block], offset, size, blocks.group)
            for arrays in cut[:cut_rows]:
                parts.append(JaxChunk(chunk.host, None, row, size, dict(zip(blocks.names, arrays, strict=True))))
                row += size
            count -= cut_rows
        return parts

    def concat(self, parts: list[JaxChunk]) -> JaxChunk:
        """Parts joined in NumPy: only the batch that spans two chunks needs it."""
        if len(parts) == 1:
            return parts[0]
        joined = NUMPY.concat([part.columns() for part in parts])
        return JaxChunk(joined, None, 0, NUMPY.rows(joined))

    def signature(self, chunk: JaxChunk) -> Signature:
        """The host columns' dtypes and per-row shapes (after the narrowing of 64-bit integers)."""
        return numpy_signature(chunk.host)


def _window(array: np.ndarray, start: int, span: int) -> np.ndarray:
    """Rows ``[start, start + span)`` of ``array``: a view, or a zero-padded copy if it is shorter."""
    if start + span <= len(array):
        return array[start : start + span]
    padded = np.zeros((span, *array.shape[1:]), array.dtype)
    padded[: len(array) - start] = array[start:]
    return padded


@functools.cache
def _cut_function(jax: ModuleType) -> Callable[..., list[tuple[Any, ...]]]:
    """The jitted cut: ``count`` consecutive batches from ``offset`` in a block.

    One function for the process, so that its compilations are shared by every iterator. The
    offset is traced, so one compilation serves every group of every chunk of a schema and
    batch size; batches past the rows asked for are cut anyway (and dropped) to keep
    ``count`` fixed.
    """

    @functools.partial(jax.jit, static_argnames=("size", "count"))
    def cut(block: tuple[Any, ...], offset: Any, size: int, count: int) -> list[tuple[Any, ...]]:
        slice_rows = jax.lax.dynamic_slice_in_dim
        return [tuple(slice_rows(array, offset + k * size, size) for array in block) for k in range(count)]

    return cut  # type: ignore[no-any-return]


def jax_format(batch_size: int, device: Any = None, sharding: Any = None, sequence: bool = False) -> BatchFormat[Any]:
    """The format a JAX iterator's reader should make its chunks in.

    Batches are cut on the device for a device; with a sharding they are placed one by one
    from NumPy, since a cut of a sharded block would not keep the sharding asked for. So are
    batches of sequences (``sequence=``), which are padded batch by batch and whose arrays
    need not share their first dimension (a ``ragged`` column's values).
    """
    _target(device, sharding)
    if sharding is not None or sequence:
        import_jax()
        return NUMPY
    return JaxFormat(batch_size, device)


class JaxIterator(ReaderLoader):
    """Iterates dicts of ``jax.Array`` (strings and bytes stay NumPy object arrays).

    With ``jax_enable_x64`` on, dates become int64 days and timestamps int64 microseconds.
    With it off (JAX's default), 64-bit integers and dates become int32 where every value fits
    (an ``OverflowError`` names a column where one does not: JAX itself would wrap it silently),
    and timestamps stay NumPy ``datetime64[us]`` arrays, which 32 bits cannot hold.
    A context manager; ``state_dict()`` / ``load_state_dict()`` as on the other loaders.

    Args:
        reader: The reader, in :class:`JaxFormat` (fast: see the module's docstring) or in
            NumPy (each batch put array by array); :func:`jax_format` picks.
        device: Where the arrays go (default: JAX's default device).
        sharding: A ``jax.sharding.Sharding`` to place each batch with, instead of a device.
    """

    def __init__(self, reader: Batches[JaxChunk] | Batches[Columns], device: Any = None, sharding: Any = None) -> None:
        target = _target(device, sharding)
        import_jax()
        super().__init__(reader)
        self._batches: Batches[Any] = reader
        self._target = target
        self._x64 = x64_enabled()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        target, x64 = self._target, self._x64
        for batch in self._batches:
            yield place(batch, target, x64)


def place(batch: JaxChunk | Columns, target: Any = None, x64: bool | None = None) -> dict[str, Any]:
    """A batch of either reader format as column name → ``jax.Array`` (NumPy for strings, bytes).

    Batches cut on the device are returned as they are; the others are put on ``target``, with
    64-bit types as ``x64`` says (None: as JAX is set now).
    """
    x64 = x64_enabled() if x64 is None else x64
    if not isinstance(batch, JaxChunk):
        return _place(batch, target, x64)
    if batch.placed is None:
        return _place(batch.columns(), target, x64)
    if len(batch.placed) == len(batch.host):
        return batch.placed
    placed, start, stop = batch.placed, batch.start, batch.start + batch.rows
    return {name: placed.get(name, array[start:stop]) for name, array in batch.host.items()}
