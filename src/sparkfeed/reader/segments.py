"""Reading one planned segment: Parquet pieces → logical Arrow columns → shuffle → NumPy.

This is the work a reader worker does, kept apart from the engine's iteration and state so
that it can run in a worker thread or, for GIL-bound transforms, in a worker process: a
:class:`SegmentReader` pickles (without its file handles and footer cache) and a
:class:`Work` item is a few small numbers.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import mmap
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sparkfeed.cache import FileEntry
from sparkfeed.location import Location
from sparkfeed.reader.batch import NUMPY, Columns
from sparkfeed.reader.plan import Segment, permutation
from sparkfeed.reader.ragged import Ragged, Views
from sparkfeed.reader.readahead import DEFAULT_READ_AHEAD_BYTES, ReadAhead, SpanFile, column_ranges
from sparkfeed.reader.selection import RowFilter, kept_positions
from sparkfeed.reader.sequence import SequencePlan
from sparkfeed.transform import GivenArrays, TransformSpec, transform_frame
from sparkfeed.types import INT96_UNIT, ColumnSpec, cast_column, to_numpy
from sparkfeed.writer import RAGGED, take_views, unpack, unpack_ragged


class _SharedRemoteFiles:
    """Open handles and footers of remote files that never change, shared by this process's readers.

    A sparkfeed cache's files are written once under unique names and never rewritten, so each
    loader made from its converter (one per epoch, often) need not ask the object store again
    for every file's size (a HEAD) and footer (a ranged GET). Files of datasets read in place
    are the user's and may be rewritten: they are not shared. Entries are per process: a forked
    worker must not use its parent's connections.
    """

    def __init__(self, capacity: int = 512) -> None:
        self._capacity = capacity
        self._entries: collections.OrderedDict[tuple[str, str], tuple[pa.NativeFile, pq.FileMetaData]] = (
            collections.OrderedDict()
        )
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _here(self) -> collections.OrderedDict[tuple[str, str], tuple[pa.NativeFile, pq.FileMetaData]]:
        """This process's entries (a forked child starts empty); call with the lock held."""
        if self._pid != os.getpid():
            self._entries.clear()
            self._pid = os.getpid()
        return self._entries

    def get(self, key: tuple[str, str]) -> tuple[pa.NativeFile, pq.FileMetaData] | None:
        with self._lock:
            entries = self._here()
            entry = entries.get(key)
            if entry is not None:
                entries.move_to_end(key)
            return entry

    def put(self, key: tuple[str, str], handle: pa.NativeFile, footer: pq.FileMetaData) -> None:
        with self._lock:
            entries = self._here()
            entries[key] = (handle, footer)
            entries.move_to_end(key)
            while len(entries) > self._capacity:
                entries.popitem(last=False)


_shared_remote = _SharedRemoteFiles()


@dataclasses.dataclass(frozen=True)
class Work:
    """One segment to read: where it stands in the epoch and the seed of its shuffle.

    Attributes:
        epoch: The epoch it belongs to.
        index: Its index in the epoch's segments.
        skip: Output rows already consumed before a resume; they are not yielded again.
        segment: What to read.
        seed: The plan's seed, for the segment's row permutation.
        ahead: For each piece, how many of its file's next row groups the plan reads right after
            it: what a remote read may fetch with it (see :mod:`sparkfeed.reader.readahead`).
            Empty: none.
    """

    epoch: int
    index: int
    skip: int
    segment: Segment
    seed: int
    ahead: tuple[int, ...] = ()


class SegmentReader:
    """Reads :class:`Work` items of one dataset into NumPy columns.

    Args:
        root: The dataset's directory.
        files: The manifest's file entries.
        specs: The columns to yield, by name.
        transform_spec: The user's transform, run on each piece as a pandas DataFrame.
        verify_checksums: Verify Parquet page CRCs where the files have them.
        immutable: The files are a sparkfeed cache's, never rewritten: remote handles and
            footers may be shared with this process's other readers.
        read_ahead_bytes: Remote files only: bytes of upcoming row groups fetched together and
            held at most; 0 leaves each row group to pyarrow's pre-buffering.
        row_filter: The rows to keep (see :meth:`read_filtered`); ``specs`` then also holds
            its extra columns, which are read to filter by and never yielded.
        sequence: The ``sequence`` columns, read as :class:`~sparkfeed.reader.ragged.Ragged`
            (values and offsets, never an object per row), and when bucketing, how a window's
            rows are regrouped.
        rows_changed_warning: Given once, the first time the transform returns another number of
            rows than it was given: a sharded loader's ranks may then get different numbers of
            batches, which nothing can know before the transform runs.
    """

    def __init__(
        self,
        root: Location | str,
        files: Sequence[FileEntry],
        specs: dict[str, ColumnSpec],
        transform_spec: TransformSpec | None,
        verify_checksums: bool = True,
        immutable: bool = False,
        read_ahead_bytes: int = DEFAULT_READ_AHEAD_BYTES,
        row_filter: RowFilter | None = None,
        sequence: SequencePlan | None = None,
        rows_changed_warning: str | None = None,
    ) -> None:
        self._location = Location.parse(root)
        self._rows_changed_warning = rows_changed_warning
        self._sequence = sequence
        self._sequence_columns = {plan.name: plan for plan in sequence.columns} if sequence is not None else {}
        self._read_ahead_bytes = read_ahead_bytes if not self._location.is_local else 0
        self._read_ahead = ReadAhead(self._read_ahead_bytes) if self._read_ahead_bytes else None
        self._verify = verify_checksums
        self._immutable = immutable
        self._files = files
        self._specs = specs
        self._transform = transform_spec
        self._columns = list(specs)
        self._schema = pa.schema([(spec.name, spec.arrow_type) for spec in specs.values()])
        self._fs: pafs.FileSystem | None = None
        self._root = ""
        self._footers: dict[int, pq.FileMetaData] = {}
        self._remote: dict[int, pa.NativeFile] = {}
        self._ranges: dict[tuple[int, int], list[tuple[int, int]]] = {}
        self._lock = threading.Lock()
        self._footer_locks: dict[int, threading.Lock] = {}
        self._filter = row_filter
        self._outputs = [name for name in specs if row_filter is None or name not in row_filter.extra]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # the location pickles as its URL; handles, footers, locks and spans are per process
        state.update(_fs=None, _footers={}, _remote={}, _ranges={}, _lock=None, _footer_locks={}, _read_ahead=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._read_ahead = ReadAhead(self._read_ahead_bytes) if self._read_ahead_bytes else None

    @property
    def reads_ahead(self) -> bool:
        """Whether a read fetches the following row groups of its file with it (remote files)."""
        return self._read_ahead is not None

    def schedule(self, work: Work) -> None:
        """Starts fetching what a submitted work item will read, where reading ahead applies."""
        if self._read_ahead is None:
            return
        for piece, ahead in zip(work.segment.pieces, work.ahead, strict=False):
            file = piece.file
            opened = self._prepare(file) if file in self._footers and file in self._remote else None
            self._read_ahead.schedule(file, piece.row_group, ahead, functools.partial(self._prepare, file), opened)

    def _prepare(self, file: int) -> tuple[Callable[[int], list[tuple[int, int]]], pa.NativeFile]:
        """A remote file's byte ranges by row group, and its open handle (read ahead on an I/O thread)."""
        footer = self._footer(file)
        with self._open(file) as handle:
            return functools.partial(self._column_ranges, file, footer, self._stored(file)), handle

    def _stored(self, file: int) -> list[str]:
        """The columns to read from a file: all but the hive partition values its directory holds."""
        return [name for name in self._columns if name not in self._files[file].partition]

    def end_iteration(self) -> None:
        """Drops what was read ahead for an iteration that ended: its rows will not be asked for."""
        if self._read_ahead is not None:
            self._read_ahead.clear()

    def describe(self, work: Work) -> str:
        """The files, row groups and rows of a work item, for error notes."""
        where = "; ".join(
            f"{self._location}/{self._files[p.file].path}, row group {p.row_group}, rows [{p.start}, {p.stop})"
            for p in work.segment.pieces
        )
        return f"{where} (epoch {work.epoch})"

    def read(self, work: Work) -> Columns:
        """One segment read, transformed and shuffled.

        Without a transform, the shuffle is an Arrow ``take`` before conversion (C++, GIL
        released, twice NumPy's fancy indexing here); with one, it permutes the NumPy output.
        """
        return self.read_rows(work)[0]

    def read_filtered(self, work: Work) -> tuple[Columns, np.ndarray | None]:
        """One segment read with the row filter applied, and where each of its rows leaves the reader.

        The filter is decided on the rows of the pieces as read (the shuffle window joined, in
        file order), then the segment's rows are taken as without a filter (permuted, cut,
        resumed) and those that fail it are dropped, so a segment yields the same rows in the
        same order however it was cut. The second value gives, for each yielded row, the
        position in the segment's unfiltered rows just after it (:func:`kept_positions`), which
        is what the reader's position counts. With a transform the filter runs before it, on
        each piece; a transform that changes the number of rows makes its output what the
        position counts, as without a filter, and the second value None.
        """
        columns, positions, _ = self.read_rows(work)
        return columns, positions

    def read_rows(self, work: Work) -> tuple[Columns, np.ndarray | None, np.ndarray | None]:
        """One segment's rows, where each leaves the reader, and, when bucketing, each one's batch.

        Returns:
            The columns (sequence columns as :class:`~sparkfeed.reader.ragged.Ragged`); for
            each row the segment position after it, or None where that is its index + 1 (no
            filter, see :meth:`read_filtered`); and with ``sequence`` bucketing, each row's
            batch number (see :meth:`sparkfeed.reader.sequence.SequencePlan.bucket_order`).
        """
        if self._filter is not None:
            return self._read_filtered(work)
        tables = self._read_tables(work)
        if self._transform is None and all(t.schema == tables[0].schema for t in tables):
            table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
            lengths = self._arrow_lengths(table)
            rows, numbers = self._rows_of(work, table.num_rows, lengths)
            if isinstance(rows, np.ndarray):
                return self._taken(table, rows, self._specs), None, numbers
            if rows is not None:
                table = table.slice(rows.start, rows.stop - rows.start)
            return {name: self._convert(name, table.column(name)) for name in self._specs}, None, numbers
        if self._transform is not None:
            parts = [self._transformed(t) for t in tables]
        else:  # files of one window that store a column differently
            parts = [{n: self._convert(n, t.column(n), views=False) for n in self._specs} for t in tables]
        columns = NUMPY.concat(_with_rows(parts))
        rows, numbers = self._rows_of(work, NUMPY.rows(columns), self._ragged_lengths(columns))
        if rows is not None:
            columns = {name: array[rows] for name, array in columns.items()}
        return columns, None, numbers

    def _read_filtered(self, work: Work) -> tuple[Columns, np.ndarray | None, np.ndarray | None]:
        assert self._filter is not None
        tables = self._read_tables(work)
        masks = [self._filter.mask(table, self._frame) for table in tables]
        mask = np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
        same = all(t.schema == tables[0].schema for t in tables)
        if self._transform is None:
            if same:
                table = (tables[0] if len(tables) == 1 else pa.concat_tables(tables)).select(self._outputs)
                lengths = self._arrow_lengths(table)
            else:
                parts = [{n: self._convert(n, t.column(n), views=False) for n in self._outputs} for t in tables]
                joined = NUMPY.concat(parts)
                lengths = self._ragged_lengths(joined)
            # the segment's rows as without a filter, as indices
            order, numbers = self._rows_of(work, len(mask), lengths, mask)
            indices = order if isinstance(order, np.ndarray) else np.arange(len(mask))[order or slice(None)]
            kept = mask[indices]
            chosen, positions = indices[kept], kept_positions(kept)
            numbers = None if numbers is None else numbers[kept]
            if same:
                return self._taken(table, chosen, self._outputs), positions, numbers
            return {name: array[chosen] for name, array in joined.items()}, positions, numbers
        outputs = [
            self._transformed(t.filter(pa.array(m)).select(self._outputs))
            for t, m in zip(tables, masks, strict=True)
            if m.any()
        ]
        columns = NUMPY.concat(_with_rows(outputs)) if outputs else {}
        if [NUMPY.rows(part) for part in outputs] == [int(m.sum()) for m in masks if m.any()]:
            lengths = None
            if self._bucketing:
                lengths = np.zeros(len(mask), dtype=np.int64)
                if columns:
                    lengths[mask] = self._ragged_lengths(columns)
            order, numbers = self._rows_of(work, len(mask), lengths, mask)
            indices = order if isinstance(order, np.ndarray) else np.arange(len(mask))[order or slice(None)]
            kept = mask[indices]
            chosen, positions = indices[kept], kept_positions(kept)
            numbers = None if numbers is None else numbers[kept]
            rank = np.cumsum(mask) - 1  # a kept row's index among the kept rows, which the transform kept 1:1
            return {name: array[rank[chosen]] for name, array in columns.items()}, positions, numbers
        rows, numbers = self._rows_of(work, NUMPY.rows(columns), self._ragged_lengths(columns))
        if rows is not None:
            columns = {name: array[rows] for name, array in columns.items()}
        return columns, None, numbers

    # ---------------------------------------------------------------- sequences

    @property
    def _bucketing(self) -> bool:
        return self._sequence is not None and self._sequence.mode == "bucket"

    def key_lengths(self, file: int, row_group: int) -> np.ndarray:
        """Every row's length in the column that cuts bucketed or packed batches, cut to ``max_length``.

        One read of that column alone: what a sharded loader needs of every row group to count
        each shard's batches before reading them (see :meth:`batch_ends`).
        """
        assert self._sequence is not None and self._sequence.key is not None
        name = self._sequence.key.name
        footer = self._footer(file)
        with self._open(file) as handle:
            parquet = pq.ParquetFile(
                handle,
                metadata=footer,
                page_checksum_verification=self._verify,
                coerce_int96_timestamp_unit=INT96_UNIT,
            )
            column = parquet.read_row_group(row_group, columns=[name], use_threads=False).column(name)
        lengths = self._sequence.arrow_lengths(self._logical(name, column, self._files[file].packed))
        # Every rank holds every row's: 2 bytes a row where no row is 65,536 values or longer, else 4.
        return lengths.astype(np.uint16 if int(lengths.max(initial=0)) < 2**16 else np.int32)

    def batch_ends(self, work: Work, lengths: np.ndarray) -> np.ndarray:
        """Where the batches of a segment end (as :meth:`read_rows` then the sequence plan cut them), unread.

        Args:
            work: The segment, as it would be read.
            lengths: Its pieces' rows' :meth:`key_lengths`, end to end (before any shuffle).
        """
        assert self._sequence is not None and self._filter is None and self._transform is None
        rows, numbers = self._rows_of(work, len(lengths), lengths if self._bucketing else None)
        ordered = lengths if rows is None else lengths[rows]
        return self._sequence.batch_ends(ordered, numbers)

    def _convert(self, name: str, column: pa.ChunkedArray, views: bool = True) -> Any:
        """A column as NumPy, or as a :class:`Ragged` when it is a sequence (:class:`Views` when bucketed or packed).

        ``views=False`` for pieces to be joined with others: a file may store a sequence column
        otherwise (all its rows one length, or all empty), and only :class:`Ragged` joins.
        """
        plan = self._sequence_columns.get(name)
        if plan is not None and plan.inner is not None and plan.dtype is not None:
            whole = self._sequence is not None and self._sequence.whole_batches
            if views and whole and pa.types.is_binary_view(column.type):
                return Views.from_arrow(name, column, plan.inner, plan.dtype)  # padded or packed in one copy
            return Ragged.from_arrow(name, column, plan.inner, plan.dtype)
        return to_numpy(self._specs[name], column)

    def _taken(self, table: pa.Table, rows: np.ndarray, names: Iterable[str]) -> Columns:
        """The columns ``names`` of ``table`` converted, in the order of ``rows``.

        Columns of strings and bytes become Python objects: they are converted first and then
        permuted, which moves pointers. Taken in Arrow first, their bytes were copied twice more
        (the take, and the chunks it joins): two shuffle windows of images as bytes, 0.8 GB in
        all, held 3.1 GB while they were read, and 1.5 GB now. Arrays of varying length are
        taken first still: their conversion refuses nulls, which must be looked for in the
        chosen rows only (a filter may have left out the row that holds one).
        """
        objects = [name for name in names if self._specs[name].kind == "object"]  # see to_numpy
        taken = take_rows(table.drop_columns(objects), rows) if len(objects) < table.num_columns else table
        columns = {}
        for name in names:
            if name in objects:
                column = table.column(name)
                chunks = [to_numpy(self._specs[name], chunk) for chunk in column.chunks] or [
                    to_numpy(self._specs[name], column)
                ]
                whole = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
                columns[name] = whole[rows]
            else:
                columns[name] = self._convert(name, taken.column(name))
        return columns

    def _transformed(self, table: pa.Table) -> Columns:
        """A piece through the user's transform, its sequence columns as :class:`Ragged`."""
        assert self._transform is not None
        held: dict[str, GivenArrays] = {}
        frame = transform_frame(table, self._specs, held)
        columns = self._dates_as_days(self._transform.apply(frame, held))
        if self._rows_changed_warning is not None and NUMPY.rows(columns) != table.num_rows:
            with self._lock:
                message, self._rows_changed_warning = self._rows_changed_warning, None
            if message is not None:
                warnings.warn(message, UserWarning, stacklevel=2)
        if self._sequence is not None and columns:
            columns = self._sequence.to_ragged(columns, self._specs)
        return columns

    def _arrow_lengths(self, table: pa.Table) -> np.ndarray | None:
        """The bucketed column's row lengths, from its Arrow offsets; None when not bucketing."""
        if not self._bucketing:
            return None
        assert self._sequence is not None and self._sequence.key is not None
        return self._sequence.arrow_lengths(table.column(self._sequence.key.name))

    def _ragged_lengths(self, columns: Columns) -> np.ndarray | None:
        if not self._bucketing or not columns:
            return None
        assert self._sequence is not None and self._sequence.key is not None
        value = columns[self._sequence.key.name]
        assert isinstance(value, Ragged)
        return self._sequence.ragged_lengths(value)

    def _read_tables(self, work: Work) -> list[pa.Table]:
        """The segment's pieces as read, in order, each with what the plan reads after it."""
        pieces = work.segment.pieces
        ahead = work.ahead or (0,) * len(pieces)
        return [self._read_table(p.file, p.row_group, p.start, p.stop, a) for p, a in zip(pieces, ahead, strict=True)]

    def _frame(self, table: pa.Table) -> pd.DataFrame:
        """A piece as the transform's (and a predicate's) pandas DataFrame: see :func:`transform_frame`."""
        return transform_frame(table, self._specs)

    def _dates_as_days(self, columns: Columns) -> Columns:
        """Date columns back in days after a transform, as they are without one.

        pandas holds dates as ``datetime64[ms]``, so a transform hands them back in milliseconds
        even when it did not touch them; a column that was a date and still holds whole days
        becomes ``datetime64[D]`` again, so a transform does not change its unit downstream.
        """
        days = np.dtype("datetime64[D]")
        for name, array in columns.items():
            spec = self._specs.get(name)
            already_days_or_not_a_date = array.dtype.kind != "M" or array.dtype == days
            if already_days_or_not_a_date or spec is None or spec.kind != "scalar" or spec.numpy_dtype != days:
                continue
            whole = array.astype(days)
            if bool((whole == array).all()):
                columns[name] = whole
        return columns

    def _open(self, file: int) -> contextlib.AbstractContextManager[pa.NativeFile]:
        """A local file is memory-mapped copy-on-write rather than read through a buffer.

        Arrow then decodes straight from the page cache and leaves uncompressed fixed-size
        values (packed tensors) in place: vectors read ~1.3x as fast here. Copy-on-write, not
        Arrow's read-only map, because the arrays handed to the user must be writable (torch
        warns on read-only ones), and a write must never reach the cache file.

        A remote file is opened once per reader and its handle shared by the workers (Arrow's
        remote files serve concurrent positioned reads, which is all Parquet reading uses): an
        object store then answers one HEAD per file instead of one before every row group.
        """
        fs, path = self._filesystem(), self._path(file)
        if isinstance(fs, pafs.LocalFileSystem):
            with open(path, "rb") as local:
                mapped = mmap.mmap(local.fileno(), 0, access=mmap.ACCESS_COPY)
            reader: contextlib.AbstractContextManager[pa.NativeFile] = pa.BufferReader(pa.py_buffer(mapped))
            return reader
        remote = self._remote.get(file)
        if remote is None:
            opened = fs.open_input_file(path)
            with self._lock:
                remote = self._remote.setdefault(file, opened)
        return contextlib.nullcontext(remote)  # shared: leaving the block must not close it

    def _filesystem(self) -> pafs.FileSystem:
        if self._fs is None:
            self._fs, self._root = self._location.filesystem, self._location.path
        return self._fs

    def _path(self, file: int) -> str:
        self._filesystem()
        return f"{self._root}/{self._files[file].path}"

    def _footer(self, file: int) -> pq.FileMetaData:
        """A file's footer, read once per reader; a cache's remote ones once per process.

        Every read asks for the footer before it opens the file, so a shared entry also hands
        this reader the open handle, and the store is asked for neither again.
        """
        footer = self._footers.get(file)
        if footer is not None:
            return footer
        with self._lock:
            lock = self._footer_locks.setdefault(file, threading.Lock())
        with lock:  # two workers starting on one file: the second waits for the first's footer
            footer = self._footers.get(file)
            return footer if footer is not None else self._fetch_footer(file)

    def _fetch_footer(self, file: int) -> pq.FileMetaData:
        key = (self._location.url, self._path(file))
        share = self._immutable and not self._location.is_local
        shared = _shared_remote.get(key) if share else None
        if shared is not None:
            handle, footer = shared
            with self._lock:
                self._remote.setdefault(file, handle)
        else:
            with self._open(file) as handle:
                footer = pq.read_metadata(handle)
                self._check_unchanged(file, footer, handle.size())  # before it is shared: a changed file is nobody's
                if share:
                    _shared_remote.put(key, handle, footer)
        with self._lock:
            self._footers[file] = footer
        return footer

    def _check_unchanged(self, file: int, footer: pq.FileMetaData, size: int) -> None:
        """The file must be the one its manifest entry describes: its row groups and its size.

        A file replaced or rewritten since the manifest was written (a cache's, on S3 by a
        lifecycle rule or a person; a dataset's, read in place) was read by the manifest's
        counts: a row group of more rows was cut to them, one of fewer served as it was, and
        one of other rows served as the cache's, in silence. The size (recorded since manifests
        had it) tells a rewrite of the same counts; one of the very same length gets through.

        Raises:
            ValueError: The counts or the size differ; the file and both values are named.
        """
        entry = self._files[file]
        found = tuple(footer.row_group(index).num_rows for index in range(footer.num_row_groups))
        if found != tuple(entry.row_groups):
            differs = f"its row groups hold {list(found)} rows, but the manifest counts {list(entry.row_groups)}"
        elif entry.size is not None and size != entry.size:
            differs = f"it is {size} bytes long, but the manifest records {entry.size}"
        else:
            return
        raise ValueError(
            f"{self._location.child(*entry.path.split('/'))}: {differs}: the file was changed since the manifest "
            "was written, so its rows are not the ones the plan was cut from; not reading it (convert the "
            "DataFrame again, or reopen the dataset)"
        )

    def _read_table(self, file: int, row_group: int, start: int, stop: int, ahead: int = 0) -> pa.Table:
        """One piece as an Arrow table of the logical column types.

        Page checksums are verified where the file has them (sparkfeed's writer and Spark's
        both write them) unless the user turned it off: a flipped bit fails the read, naming
        the file, instead of arriving as a wrong number.
        """
        footer = self._footer(file)
        entry = self._files[file]
        stored = self._stored(file)

        def decode(source: pa.NativeFile | SpanFile, pre_buffer: bool) -> pa.Table:
            parquet = pq.ParquetFile(
                source,
                metadata=footer,
                page_checksum_verification=self._verify,
                pre_buffer=pre_buffer,
                coerce_int96_timestamp_unit=INT96_UNIT,
            )
            return parquet.read_row_group(row_group, columns=stored, use_threads=False)

        with self._open(file) as handle:
            if self._read_ahead is not None:
                ranges = functools.partial(self._column_ranges, file, footer, stored)
                table = self._read_ahead.read(
                    file, row_group, ahead, ranges, handle, functools.partial(decode, pre_buffer=False)
                )
            else:
                # Locally, slices of the memory map; remotely without read-ahead, a row group's
                # column chunks in a few concurrent, coalesced range requests (pyarrow's default).
                table = decode(handle, pre_buffer=True)
        if start or stop != table.num_rows:
            table = table.slice(start, stop - start)
        if entry.packed or entry.partition or table.schema != self._schema:
            table = pa.table(
                [
                    self._constant(name, entry.partition[name], table.num_rows)
                    if name in entry.partition
                    else self._logical(name, table.column(name), entry.packed)
                    for name in self._columns
                ],
                names=self._columns,
            )
        return table

    def _column_ranges(
        self, file: int, footer: pq.FileMetaData, stored: list[str], row_group: int
    ) -> list[tuple[int, int]]:
        """The byte ranges a row group's read needs, worked out once per reader."""
        ranges = self._ranges.get((file, row_group))
        if ranges is None:
            ranges = self._ranges[(file, row_group)] = column_ranges(footer, row_group, stored)
        return ranges

    def _constant(self, name: str, value: Any, rows: int) -> pa.Array:
        """A hive partition column: the directory's value on every row of the piece."""
        return pa.repeat(pa.scalar(value, self._specs[name].arrow_type), rows)

    def _logical(self, name: str, column: pa.ChunkedArray, packed: dict[str, tuple[int, ...]]) -> pa.ChunkedArray:
        """A column in its logical type: packed tensors unpacked (no copy), other types cast.

        A sequence column packed as ``binary`` stays so when nothing but the reader looks at it
        (no transform, no filter): a shuffle then moves each row's bytes in one copy, and
        :meth:`Ragged.from_arrow` reads the values in place.
        """
        target = self._specs[name].arrow_type
        if name in packed and packed[name][0] == RAGGED:
            if name in self._sequence_columns and self._transform is None and self._filter is None:
                return column
            return pa.chunked_array([unpack_ragged(chunk, target, packed[name]) for chunk in column.chunks])
        if name in packed:
            return pa.chunked_array([unpack(chunk, target, packed[name]) for chunk in column.chunks])
        return column if column.type == target else cast_column(name, column, target)

    def _rows_of(
        self, work: Work, rows: int, lengths: np.ndarray | None = None, kept: np.ndarray | None = None
    ) -> tuple[np.ndarray | slice | None, np.ndarray | None]:
        """Which of a segment's ``rows`` it yields, in order, and when bucketing each one's batch.

        A shuffle window's permutation cut to ``[start, stop)``, a plain slice, or None for all
        of them as they are. When bucketing, the window's whole order (permuted or not) is
        first regrouped by bucket (:meth:`~sparkfeed.reader.sequence.SequencePlan.bucket_order`,
        given every row's ``lengths`` and which rows the filter ``kept``), and the cut applies
        to that order: so positions, cuts and remainders mean the same rows in any run.
        """
        segment = work.segment
        low = segment.start + work.skip
        high = rows if segment.stop is None else min(segment.stop, rows)
        order: np.ndarray | None = None
        if segment.shuffle_key is not None:
            order = permutation(work.seed, segment.shuffle_key, rows)
        if self._bucketing:
            assert self._sequence is not None and lengths is not None
            window = order if order is not None else np.arange(rows)
            bucketed, numbers = self._sequence.bucket_order(window, lengths, kept)
            return bucketed[low:high], numbers[low:high]
        if order is not None:
            return order[low:high], None
        return (slice(low, high) if low or high < rows else None), None


def _with_rows(parts: list[Columns]) -> list[Columns]:
    """The parts that hold rows (the first if none does), to be joined.

    A transform that drops every row of a piece returns columns typed from nothing (an empty
    list of arrays is a float64 column of no shape): joining them would refuse the other
    pieces as a change of output, yet they add nothing.
    """
    return [part for part in parts if NUMPY.rows(part)] or parts[:1]


def take_rows(table: pa.Table, indices: np.ndarray) -> pa.Table:
    """``table.take(indices)``, also where a column is ``binary_view`` (a packed sequence), which Arrow cannot take."""
    if not any(pa.types.is_binary_view(field.type) for field in table.schema):
        return table.take(indices)
    columns = [
        take_views(column.combine_chunks(), indices) if pa.types.is_binary_view(column.type) else column.take(indices)
        for column in table.columns
    ]
    return pa.table(columns, schema=table.schema)
