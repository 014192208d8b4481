"""The reader engine: plan → threaded segment reads → batches. Every adapter sits on it."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import threading
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sparkfeed.cache import Manifest, filesystem
from sparkfeed.options import ReaderOptions
from sparkfeed.reader.batch import NUMPY, Batcher, BatchFormat
from sparkfeed.reader.plan import (
    PlanSpec,
    Segment,
    epoch_segments,
    permutation,
    remainder,
    split_segments,
)
from sparkfeed.reader.pool import OrderedPool
from sparkfeed.types import column_specs, to_numpy
from sparkfeed.writer import unpack

C = TypeVar("C")

STATE_FORMAT = "sparkfeed.reader/1"


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a reader stands: the next row is ``offset`` rows into segment ``segment`` of ``epoch``."""

    epoch: int
    segment: int = 0
    offset: int = 0


@dataclasses.dataclass(frozen=True)
class _Work:
    epoch: int
    index: int
    skip: int
    segment: Segment


class Reader(Generic[C]):
    """Batches from a cached Parquet dataset, as dicts of NumPy arrays or an adapter's format.

    Iterating runs ``num_epochs`` epochs (forever when None); iterating again continues with
    the following epochs, so a fixed seed still gives every epoch its own order. Batches never
    span two epochs: each epoch ends with its partial batch. ``state_dict()`` after any batch and
    ``load_state_dict()`` on a new reader continue with exactly the batches that remained.

    Args:
        root_url: The dataset's directory URL.
        manifest: Its manifest.
        options: Validated reader options.
        fmt: The batches' array type (NumPy unless an adapter asks for another).
    """

    def __init__(
        self,
        root_url: str,
        manifest: Manifest,
        options: ReaderOptions,
        fmt: BatchFormat[C] = NUMPY,  # type: ignore[assignment]
    ) -> None:
        self._options = options
        self._fmt = fmt
        self._fs, self._root = filesystem(root_url)
        self._files = manifest.files
        self._num_rows = manifest.num_rows
        self._specs = column_specs(
            manifest.schema, manifest.options.get("dtype"), manifest.shapes, options.schema_fields
        )
        self._schema = pa.schema([(spec.name, spec.arrow_type) for spec in self._specs.values()])
        self._columns = list(self._specs)
        self._groups = [
            (f, g, rows) for f, entry in enumerate(manifest.files) for g, rows in enumerate(entry.row_groups)
        ]
        cur_shard, shard_count = options.shard
        seed = options.seed
        if seed is None:  # Drawn once, and part of the state: a resumed unseeded run stays exact.
            seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 1)
        self._plan = PlanSpec(
            seed=seed,
            cur_shard=cur_shard,
            shard_count=shard_count,
            shard_policy=options.shard_policy,
            shuffle_row_groups=options.shuffle_row_groups,
            shuffle_rows=options.shuffling_queue_capacity or 0,
        )
        self._rows = sum(s.rows for s in epoch_segments(self._groups, self._plan, 0))
        if self._rows == 0 and options.num_epochs is None:
            raise ValueError(
                f"shard {cur_shard} of {shard_count} holds no rows ({manifest.num_rows} rows in the dataset, "
                f"shard_policy={options.shard_policy!r}), so num_epochs=None would wait forever: "
                "use fewer shards or a finite num_epochs"
            )
        self._footers: dict[int, pq.FileMetaData] = {}
        self._footer_lock = threading.Lock()
        self._position = Position(0)
        self._end: int | None = None  # end epoch of the current (or resumed) iteration
        self._resumed = False
        self._derived: tuple[int, list[Segment], list[dict[str, Any]]] | None = None
        self._active: Iterator[C] | None = None
        self._pool: OrderedPool[_Work, tuple[_Work, C]] | None = None

    # ------------------------------------------------------------------ iteration

    @property
    def num_rows(self) -> int:
        """Rows this reader yields per epoch (its shard's share of the dataset)."""
        return self._rows

    @property
    def filters_rows(self) -> bool:
        """Whether a transform may change the row count, making lengths an estimate."""
        return self._options.transform_spec is not None

    def __len__(self) -> int:
        """Batches left in the next iteration, exact when the transform keeps every row."""
        if self._options.num_epochs is None:
            raise TypeError("a loader with num_epochs=None is infinite and has no len(); pass num_epochs")
        start, end = self._iteration_range()
        batches = 0
        for epoch in range(start.epoch, end):
            if epoch == start.epoch and (start.segment or start.offset or self._derived):
                rows = sum(s.rows for s in remainder(self._segments(epoch), start.segment, start.offset))
            else:
                rows = self._rows
            batches += math.ceil(rows / self._options.batch_size)
        return batches

    def _iteration_range(self) -> tuple[Position, int]:
        if self._resumed:
            return self._position, self._end if self._end is not None else self._position.epoch + self._epochs()
        start = Position(self._position.epoch if self._end is None else self._end)
        return start, start.epoch + self._epochs()

    def _epochs(self) -> int:
        return self._options.num_epochs or 0

    def __iter__(self) -> Iterator[C]:
        self.close()
        start, end = self._iteration_range()
        self._resumed = False
        self._position, self._end = start, (None if self._options.num_epochs is None else end)
        self._active = self._stream(start, self._end)
        return self._active

    def _segments(self, epoch: int) -> list[Segment]:
        if self._derived is not None and self._derived[0] == epoch:
            return self._derived[1]
        return epoch_segments(self._groups, self._plan, epoch)

    def _work(self, start: Position, end: int | None) -> Iterator[_Work]:
        epochs = itertools.count(start.epoch) if end is None else range(start.epoch, end)
        for epoch in epochs:
            segments = self._segments(epoch)
            first = start.segment if epoch == start.epoch else 0
            for index in range(first, len(segments)):
                skip = start.offset if epoch == start.epoch and index == start.segment else 0
                yield _Work(epoch, index, skip, segments[index])

    def _stream(self, start: Position, end: int | None) -> Iterator[C]:
        options = self._options
        pool: OrderedPool[_Work, tuple[_Work, C]] = OrderedPool(
            self._read, options.workers, options.prefetch_pieces, describe=self._describe
        )
        self._pool = pool
        batcher = Batcher(self._fmt, options.batch_size)
        results = pool.imap(self._work(start, end))
        try:
            for epoch, items in itertools.groupby(results, key=lambda item: item[0].epoch):
                chunks = (((work.index, work.skip), chunk) for work, chunk in items)
                for batch, (index, skip), consumed in batcher.batches(chunks):
                    self._position = Position(epoch, index, skip + consumed)
                    yield batch
                self._position = Position(epoch + 1)
            if end is not None:
                self._position = Position(end)
        finally:
            results.close()  # type: ignore[attr-defined]

    def _describe(self, work: _Work) -> str:
        where = "; ".join(
            f"{self._root}/{self._files[p.file].path}, row group {p.row_group}, rows [{p.start}, {p.stop})"
            for p in work.segment.pieces
        )
        return f"{where} (epoch {work.epoch})"

    def _footer(self, file: int) -> pq.FileMetaData:
        footer = self._footers.get(file)
        if footer is None:
            with self._fs.open_input_file(f"{self._root}/{self._files[file].path}") as handle:
                footer = pq.read_metadata(handle)
            with self._footer_lock:
                self._footers[file] = footer
        return footer

    def _read_table(self, file: int, row_group: int, start: int, stop: int) -> pa.Table:
        """One piece as an Arrow table of the logical column types."""
        with self._fs.open_input_file(f"{self._root}/{self._files[file].path}") as handle:
            table = pq.ParquetFile(handle, metadata=self._footer(file)).read_row_group(
                row_group, columns=self._columns, use_threads=False
            )
        if start or stop != table.num_rows:
            table = table.slice(start, stop - start)
        packed = self._files[file].packed
        if packed or table.schema != self._schema:
            table = pa.table(
                [self._logical(name, table.column(name), packed) for name in self._columns], names=self._columns
            )
        return table

    def _logical(self, name: str, column: pa.ChunkedArray, packed: dict[str, tuple[int, ...]]) -> pa.ChunkedArray:
        """A column in its logical type: packed tensors unpacked (no copy), other types cast."""
        target = self._specs[name].arrow_type
        if name in packed:
            return pa.chunked_array([unpack(chunk, target, packed[name]) for chunk in column.chunks])
        return column if column.type == target else column.cast(target)

    def _read(self, work: _Work) -> tuple[_Work, C]:
        """Runs in a worker thread: one segment read, transformed, shuffled and formatted.

        Without a transform, the shuffle is an Arrow ``take`` before conversion (C++, GIL
        released, twice NumPy's fancy indexing here); with one, it permutes the NumPy output.
        """
        tables = [self._read_table(p.file, p.row_group, p.start, p.stop) for p in work.segment.pieces]
        transform = self._options.transform_spec
        if transform is None and all(t.schema == tables[0].schema for t in tables):
            table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
            rows = self._rows_of(work, table.num_rows)
            if isinstance(rows, np.ndarray):
                table = table.take(rows)
            elif rows is not None:
                table = table.slice(rows.start, rows.stop - rows.start)
            columns = {name: to_numpy(spec, table.column(name)) for name, spec in self._specs.items()}
        else:
            if transform is not None:
                frames = [t.to_pandas(date_as_object=False, coerce_temporal_nanoseconds=False) for t in tables]
                parts = [transform.apply(frame) for frame in frames]
            else:  # files of one window that store a column differently
                parts = [{n: to_numpy(spec, t.column(n)) for n, spec in self._specs.items()} for t in tables]
            columns = NUMPY.concat(parts)
            rows = self._rows_of(work, NUMPY.rows(columns))
            if rows is not None:
                columns = {name: array[rows] for name, array in columns.items()}
        return work, self._fmt.convert(columns)

    def _rows_of(self, work: _Work, rows: int) -> np.ndarray | slice | None:
        """Which of a segment's ``rows`` it yields, in order.

        A shuffle window's permutation cut to ``[start, stop)``, a plain slice, or None for all
        of them as they are.
        """
        segment = work.segment
        low = segment.start + work.skip
        high = rows if segment.stop is None else min(segment.stop, rows)
        if segment.shuffle_key is not None:
            order: np.ndarray = permutation(self._plan.seed, segment.shuffle_key, rows)[low:high]
            return order
        return slice(low, high) if low or high < rows else None

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Where this reader stands, as plain data: save it with the model's checkpoint."""
        state: dict[str, Any] = {
            "format": STATE_FORMAT,
            "epoch": self._position.epoch,
            "segment": self._position.segment,
            "offset": self._position.offset,
            "end_epoch": self._end,
            "num_rows": self._num_rows,
            **dataclasses.asdict(self._plan),
        }
        if self._derived is not None and self._derived[0] == self._position.epoch:
            state["resharded_from"] = self._derived[2]
        return state

    def load_state_dict(self, state: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
        """Continues where a saved reader stopped: the next batches are exactly those that remained.

        Args:
            state: This shard's saved state; or the states of every shard of a run, which also
                allows a different ``shard_count`` now: the rest of the interrupted epoch is split
                among the new shards with no row repeated or lost, and later epochs shard as usual.
        """
        self.close()
        every_shard = not isinstance(state, dict)
        states: list[dict[str, Any]] = (
            [state] if isinstance(state, dict) else sorted(state, key=lambda s: int(s["cur_shard"]))
        )
        for saved in states:
            self._check_state(saved)
        first = states[0]
        old_count = first["shard_count"]
        if not every_shard and (first["cur_shard"], old_count) != (self._plan.cur_shard, self._plan.shard_count):
            raise ValueError(
                f"this state was saved by shard {first['cur_shard']} of {old_count}, but this reader is shard "
                f"{self._plan.cur_shard} of {self._plan.shard_count}: pass the list of every shard's state"
            )
        if every_shard:
            if [s["cur_shard"] for s in states] != list(range(old_count)):
                raise ValueError(
                    f"expected the states of all {old_count} shards, got shards {[s['cur_shard'] for s in states]}"
                )
            if len({(s["epoch"], s["end_epoch"]) for s in states}) != 1:
                raise ValueError("the shards' states are from different epochs; save them at the same step")
        self._plan = dataclasses.replace(self._plan, seed=first["seed"])
        self._end = first["end_epoch"]
        self._resumed = True
        if old_count == self._plan.shard_count:
            mine = states[self._plan.cur_shard] if every_shard else first
            self._position = Position(mine["epoch"], mine["segment"], mine["offset"])
            self._derived = (
                (mine["epoch"], self._saved_segments(mine), mine["resharded_from"])
                if "resharded_from" in mine
                else None
            )
            return
        rest = [
            seg for saved in states for seg in remainder(self._saved_segments(saved), saved["segment"], saved["offset"])
        ]
        mine_segments = split_segments(rest, self._plan.cur_shard, self._plan.shard_count, self._plan.shard_policy)
        self._derived = (first["epoch"], mine_segments, [dict(s) for s in states])
        self._position = Position(first["epoch"])

    def _check_state(self, saved: dict[str, Any]) -> None:
        if saved.get("format") != STATE_FORMAT:
            raise ValueError(
                f"not a sparkfeed reader state (format {saved.get('format')!r}, expected {STATE_FORMAT!r})"
            )
        if saved["num_rows"] != self._num_rows:
            raise ValueError(f"this state is for a dataset of {saved['num_rows']} rows, this one has {self._num_rows}")
        if self._options.seed is not None and saved["seed"] != self._options.seed:
            raise ValueError(
                f"this state was saved with seed={saved['seed']}, this reader has seed={self._options.seed}"
            )
        for name in ("shard_policy", "shuffle_row_groups", "shuffle_rows"):
            if saved[name] != getattr(self._plan, name):
                raise ValueError(
                    f"this state was saved with {name}={saved[name]!r}, this reader has {getattr(self._plan, name)!r}; "
                    "resume with the same shuffle and shard settings"
                )

    def _saved_segments(self, saved: dict[str, Any]) -> list[Segment]:
        """The segments of the epoch a saved state stands in, recomputed from the state alone."""
        if "resharded_from" in saved:
            olds = saved["resharded_from"]
            rest = [seg for old in olds for seg in remainder(self._saved_segments(old), old["segment"], old["offset"])]
            return split_segments(rest, saved["cur_shard"], saved["shard_count"], saved["shard_policy"])
        spec = PlanSpec(**{f.name: saved[f.name] for f in dataclasses.fields(PlanSpec)})
        return epoch_segments(self._groups, spec, saved["epoch"])

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Stops the reader threads of the current iteration, if any; safe from any thread."""
        active, self._active = self._active, None
        if active is None:
            return
        if self._pool is not None:
            self._pool.shutdown()
        with contextlib.suppress(ValueError):  # running in another thread (tf.data): it ends at its next step
            active.close()  # type: ignore[attr-defined]

    def __enter__(self) -> Reader[C]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
