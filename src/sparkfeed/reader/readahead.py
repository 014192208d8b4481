"""Reading ahead on object stores: a run of row groups in one request, within a byte budget.

A remote read costs a round trip before its first byte, and some servers charge more per request
than per byte (moto copies the whole object for every ranged GET). pyarrow's ``pre_buffer``
coalesces the column chunks of one row group, but never across row groups, and splits ranges
above 32 MiB. When the plan reads a file's row groups one after another (no row-group shuffle,
or a shard's contiguous rows), the reader instead fetches the bytes of the next row groups of
that file in one request, up to ``read_ahead_bytes`` in all, and Parquet decodes each row group
from memory. The budget is a hard bound on what is held: a span that does not fit is cut short,
down to its own row group, fetched alone as pre-buffering would have.

Spans are fetched on I/O threads of their own as soon as the engine submits the work that needs
them (``prefetch`` pieces ahead), so that the next file's bytes arrive while the workers decode
this one's: fetching and decoding overlap instead of taking turns.

A span lives until each of its row groups has been read once; the bytes are then dropped (the
decoded arrays may still refer to them, as they refer to a memory-mapped local file).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.parquet as pq

from sparkfeed.reader.plan import Piece

DEFAULT_READ_AHEAD_BYTES = 128 * 1024 * 1024
"""The default budget: four row groups of the default size (32 MiB), so a request's round trip is small
beside its transfer, and a file of a typical Spark partition often comes whole."""

HOLE_BYTES = 1024 * 1024
"""Unread bytes between two wanted ranges that are fetched anyway to save a request."""

IO_THREADS = 4
"""Spans fetched at once, at most: they wait on the network, not on a core, and the budget bounds them."""

Ranges = Callable[[int], list[tuple[int, int]]]
"""The byte ranges ``(offset, length)`` a row group's read needs, by row group."""


def follow_counts(pieces: Sequence[Piece]) -> list[int]:
    """For each piece, how many of the pieces right after it read its file's next row groups in order.

    What a span may cover, computed from the plan alone (no I/O): ``(f, 3), (f, 4), (f, 5), (g, 0)``
    gives ``[2, 1, 0, 0]``.
    """
    counts = [0] * len(pieces)
    for i in range(len(pieces) - 2, -1, -1):
        here, after = pieces[i], pieces[i + 1]
        if after.file == here.file and after.row_group == here.row_group + 1:
            counts[i] = counts[i + 1] + 1
    return counts


def column_ranges(footer: pq.FileMetaData, row_group: int, columns: Sequence[str]) -> list[tuple[int, int]]:
    """``(offset, length)`` of the column chunks of ``columns`` (top-level names) in a row group."""
    group = footer.row_group(row_group)
    wanted = set(columns)
    ranges = []
    for index in range(group.num_columns):
        chunk = group.column(index)
        if chunk.path_in_schema.split(".")[0] not in wanted:
            continue
        start = chunk.data_page_offset
        if chunk.has_dictionary_page and chunk.dictionary_page_offset:
            start = min(start, chunk.dictionary_page_offset)
        ranges.append((start, chunk.total_compressed_size))
    return ranges


def coalesce(ranges: Sequence[tuple[int, int]], hole: int = HOLE_BYTES) -> list[tuple[int, int]]:
    """Ranges merged where they touch, overlap, or leave a gap of at most ``hole`` bytes."""
    merged: list[tuple[int, int]] = []
    for start, length in sorted(ranges):
        if merged and start <= merged[-1][0] + merged[-1][1] + hole:
            first, size = merged[-1]
            merged[-1] = (first, max(size, start + length - first))
        else:
            merged.append((start, length))
    return merged


class SpanFile(io.RawIOBase):
    """A remote Parquet file as far as one row group's reading needs it: fetched ranges, in memory.

    Handed to ``pq.ParquetFile`` with the footer already parsed, so Parquet asks only for the
    column chunks, which the span holds. A read outside them (a writer that put a chunk
    elsewhere than its metadata says) goes to the remote file: slower, never wrong.
    """

    def __init__(self, size: int, ranges: Sequence[tuple[int, memoryview]], remote: pa.NativeFile) -> None:
        super().__init__()
        self._size = size
        self._ranges = ranges
        self._remote = remote
        self._position = 0

    def readable(self) -> bool:
        """Yes: Parquet reads it."""
        return True

    def seekable(self) -> bool:
        """Yes: Parquet reads at offsets."""
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Moves the position, as a file's seek does."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        """The position."""
        return self._position

    def size(self) -> int:
        """The remote file's size."""
        return self._size

    def read(self, size: int | None = -1) -> memoryview | bytes:
        """``size`` bytes at the position: a view of the span, or a remote read outside it."""
        start = self._position
        if size is None or size < 0:
            size = self._size - start
        self._position = start + size
        for offset, data in self._ranges:
            if offset <= start and start + size <= offset + len(data):
                return data[start - offset : start - offset + size]
        return _read_range(self._remote, start, size)


@dataclasses.dataclass(eq=False)
class _Span:
    """Consecutive row groups of one file, fetched together."""

    file: int
    row_groups: set[int]
    """Those not yet read; the span is dropped when none is left."""
    size: int
    shared: bool
    """Registered for other workers and counted against the budget (a span cut to its own row
    group when the budget is spent is neither)."""
    ranges: list[tuple[int, memoryview]] = dataclasses.field(default_factory=list)
    ready: threading.Event = dataclasses.field(default_factory=threading.Event)
    failed: bool = False


@dataclasses.dataclass(eq=False)
class _Wanted:
    """A row group the engine has submitted work for, waiting for room in the budget."""

    file: int
    row_group: int
    ahead: int
    open_file: Callable[[], tuple[Ranges, pa.NativeFile]]
    opened: tuple[Ranges, pa.NativeFile] | None
    opening: bool = False


class ReadAhead:
    """The spans of one reader's remote files: which thread fetches what, and the byte budget.

    Row groups are claimed in the order the engine submits them: the first one waiting gets a
    span as soon as the budget has room for it (when an earlier span has been read), and none
    after it jumps the queue, so the budget always goes to the bytes needed next.

    Args:
        budget: Bytes held in spans at most.
    """

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._held = 0
        self._spans: dict[tuple[int, int], _Span] = {}
        self._wanted: collections.deque[_Wanted] = collections.deque()
        self._lock = threading.Lock()
        self._io: ThreadPoolExecutor | None = None

    @property
    def held(self) -> int:
        """Bytes held in spans now."""
        return self._held

    def schedule(
        self,
        file: int,
        row_group: int,
        ahead: int,
        open_file: Callable[[], tuple[Ranges, pa.NativeFile]],
        opened: tuple[Ranges, pa.NativeFile] | None = None,
    ) -> None:
        """Queues the span a row group will be read from, fetched on an I/O thread when the budget allows.

        A file not yet open is opened (its footer read) on an I/O thread, not in the training
        loop. A row group that a worker reaches before there is room is fetched by that
        worker, alone, as without read-ahead.

        Args:
            file: The file's index.
            row_group: The row group.
            ahead: How many of the file's next row groups the plan reads right after this one.
            open_file: Opens the file: its ranges and remote handle.
            opened: The same, where the file is open already.
        """
        with self._lock:
            if self._io is None:
                self._io = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="sparkfeed-read-ahead")
            self._wanted.append(_Wanted(file, row_group, ahead, open_file, opened))
            self._pump()

    def read(
        self,
        file: int,
        row_group: int,
        ahead: int,
        ranges_of: Ranges,
        remote: pa.NativeFile,
        decode: Callable[[SpanFile], pa.Table],
    ) -> pa.Table:
        """One row group decoded from its span, fetching the span first if no thread has.

        Args:
            file: The file's index.
            row_group: The row group to read.
            ahead: How many of the file's next row groups the plan reads right after this one.
            ranges_of: The byte ranges a row group's reading needs.
            remote: The open remote file.
            decode: Reads the row group from the span's file.
        """
        with self._lock:
            for wanted in [w for w in self._wanted if w.file == file and w.row_group == row_group][:1]:
                self._wanted.remove(wanted)  # this worker is here first: it fetches it now
            span, owner = self._claim(file, row_group, ahead, ranges_of)
        assert span is not None
        try:
            if owner:
                self._fetch(span, ranges_of, remote)
            else:
                span.ready.wait()
                if span.failed:  # the fetch failed: this worker asks for its own row group
                    return self.read(file, row_group, 0, ranges_of, remote, decode)
            return decode(SpanFile(remote.size(), span.ranges, remote))
        finally:
            self._release(span, row_group)

    def clear(self) -> None:
        """Stops the I/O threads and drops every span: the iteration ended, its rows will not be read.

        A worker may still be waiting on a span whose queued fetch this cancels (after
        ``loader.close()`` from another thread, the next iteration can be reading when the old
        one's end clears): such a span is marked failed, so that the worker reads its row group
        alone instead of waiting forever.
        """
        with self._lock:
            io_threads, self._io = self._io, None  # _pump claims nothing more
        if io_threads is not None:
            io_threads.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for span in self._spans.values():
                if not span.ready.is_set():
                    span.failed = True
                    span.ready.set()
            self._spans.clear()
            self._wanted.clear()
            self._held = 0

    def _pump(self) -> None:
        """Claims spans for the waiting row groups, in order, while the budget has room; lock held."""
        while self._wanted and self._io is not None:
            wanted = self._wanted[0]
            if (wanted.file, wanted.row_group) in self._spans:
                self._wanted.popleft()
                continue
            if wanted.opened is None:
                if not wanted.opening:
                    wanted.opening = True
                    self._io.submit(self._open, wanted)
                return
            ranges_of, remote = wanted.opened
            span, _ = self._claim(wanted.file, wanted.row_group, wanted.ahead, ranges_of, only_shared=True)
            if span is None:
                return  # no room: a span read to its end makes some
            self._wanted.popleft()
            self._io.submit(self._fetch_quietly, span, ranges_of, remote)

    def _open(self, wanted: _Wanted) -> None:
        try:
            opened: tuple[Ranges, pa.NativeFile] | None = wanted.open_file()
        except Exception:  # noqa: BLE001 (the worker reading the row group opens it again, and raises)
            opened = None
        with self._lock:
            if opened is None:
                with contextlib.suppress(ValueError):
                    self._wanted.remove(wanted)
            else:
                for waiting in self._wanted:  # the other row groups of the file are open now too
                    if waiting.file == wanted.file and waiting.opened is None:
                        waiting.opened = opened
            self._pump()

    def _fetch_quietly(self, span: _Span, ranges_of: Ranges, remote: pa.NativeFile) -> None:
        # A failure here is not lost: the worker reading the row group falls back to its own
        # request, and that one raises in the training loop if the store is really gone.
        with contextlib.suppress(Exception):
            self._fetch(span, ranges_of, remote)

    def _claim(
        self, file: int, row_group: int, ahead: int, ranges_of: Ranges, only_shared: bool = False
    ) -> tuple[_Span | None, bool]:
        """The span holding a row group, and whether the caller must fetch it (a new span); lock held.

        With ``only_shared``, None where the budget has no room for the row group.
        """
        span = self._spans.get((file, row_group))
        if span is not None:
            return span, False
        groups, size = [row_group], _size(ranges_of(row_group))
        for following in range(row_group + 1, row_group + ahead + 1):
            extra = _size(ranges_of(following))
            if (file, following) in self._spans or self._held + size + extra > self._budget:
                break
            groups.append(following)
            size += extra
        shared = self._held + size <= self._budget
        if only_shared and not shared:
            return None, False
        span = _Span(file, set(groups), size, shared)
        if shared:
            self._held += size
            for group in groups:
                self._spans[(file, group)] = span
        return span, True

    def _fetch(self, span: _Span, ranges_of: Ranges, remote: pa.NativeFile) -> None:
        wanted = [r for group in sorted(span.row_groups) for r in ranges_of(group)]
        try:
            span.ranges = [(start, _read_range(remote, start, length)) for start, length in coalesce(wanted)]
        except BaseException:
            with self._lock:  # no longer anyone's span: the waiting workers ask for their own row groups
                span.failed = True
                self._forget(span)
                self._pump()
            raise
        finally:
            span.ready.set()

    def _release(self, span: _Span, row_group: int) -> None:
        with self._lock:
            span.row_groups.discard(row_group)
            if self._spans.get((span.file, row_group)) is span:
                del self._spans[(span.file, row_group)]
                if not span.row_groups:
                    self._held -= span.size
                    self._pump()

    def _forget(self, span: _Span) -> None:
        """Unregisters a span and returns its bytes to the budget; lock held."""
        registered = [group for group in span.row_groups if self._spans.get((span.file, group)) is span]
        for group in registered:
            del self._spans[(span.file, group)]
        if registered:
            self._held -= span.size


def _read_range(remote: pa.NativeFile, start: int, length: int) -> memoryview:
    """Bytes of a remote file in one request, at their offset whatever the shared handle's position.

    Into Arrow's memory: ``read_at`` would copy them into a Python ``bytes``, holding the GIL.
    """
    return memoryview(remote.get_stream(start, length).read_buffer(length))


def _size(ranges: Sequence[tuple[int, int]]) -> int:
    return sum(length for _, length in ranges)
