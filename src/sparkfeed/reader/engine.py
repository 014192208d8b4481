"""The reader engine: plan → threaded segment reads → batches. Every adapter sits on it."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

import numpy as np

from sparkfeed.cache import Manifest
from sparkfeed.location import Location
from sparkfeed.options import ReaderOptions
from sparkfeed.reader.batch import NUMPY, Batcher, BatchFormat
from sparkfeed.reader.exchange import Exchange
from sparkfeed.reader.plan import (
    PlanSpec,
    Segment,
    epoch_segments,
    remainder,
    split_segments,
)
from sparkfeed.reader.pool import OrderedPool
from sparkfeed.reader.segments import SegmentReader, Work
from sparkfeed.types import ColumnSpec, column_specs

C = TypeVar("C")

STATE_FORMAT = "sparkfeed.reader/1"


@dataclasses.dataclass(frozen=True)
class Position:
    """Where a reader stands: the next row is ``offset`` rows into segment ``segment`` of ``epoch``."""

    epoch: int
    segment: int = 0
    offset: int = 0


class Reader(Generic[C]):
    """Batches from a cached Parquet dataset, as dicts of NumPy arrays or an adapter's format.

    Iterating runs ``num_epochs`` epochs (forever when None); iterating again continues with
    the following epochs, so a fixed seed still gives every epoch its own order. Batches never
    span two epochs: each epoch ends with its partial batch (left out with ``drop_last``).
    ``state_dict()`` after any batch and ``load_state_dict()`` on a new reader continue with
    exactly the batches that remained.

    Args:
        root_url: The dataset's directory URL.
        manifest: Its manifest.
        options: Validated reader options.
        fmt: The batches' array type (NumPy unless an adapter asks for another).
    """

    def __init__(
        self,
        root_url: Location | str,
        manifest: Manifest,
        options: ReaderOptions,
        fmt: BatchFormat[C] = NUMPY,  # type: ignore[assignment]
    ) -> None:
        self._options = options
        self._fmt = fmt
        self._num_rows = manifest.num_rows
        self._specs = column_specs(
            manifest.schema, manifest.options.get("dtype"), manifest.shapes, options.schema_fields
        )
        self._segment_reader = SegmentReader(root_url, manifest.files, self._specs, options.transform_spec)
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
        self._position = Position(0)
        self._end: int | None = None  # end epoch of the current (or resumed) iteration
        self._resumed = False
        self._derived: tuple[int, list[Segment], list[dict[str, Any]]] | None = None
        self._active: Iterator[C] | None = None
        self._pool: OrderedPool[Work, Any] | None = None

    # ------------------------------------------------------------------ iteration

    @property
    def num_rows(self) -> int:
        """Rows this reader yields per epoch (its shard's share of the dataset)."""
        return self._rows

    @property
    def columns(self) -> dict[str, ColumnSpec] | None:
        """What each column of a batch will be, known without reading; None when a transform decides."""
        return None if self._options.transform_spec is not None else dict(self._specs)

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
            batches += (math.floor if self._options.drop_last else math.ceil)(rows / self._options.batch_size)
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

    def _work(self, start: Position, end: int | None) -> Iterator[Work]:
        epochs = itertools.count(start.epoch) if end is None else range(start.epoch, end)
        for epoch in epochs:
            segments = self._segments(epoch)
            first = start.segment if epoch == start.epoch else 0
            for index in range(first, len(segments)):
                skip = start.offset if epoch == start.epoch and index == start.segment else 0
                yield Work(epoch, index, skip, segments[index], self._plan.seed)

    def _stream(self, start: Position, end: int | None) -> Iterator[C]:
        options = self._options
        segments, convert = self._segment_reader, self._fmt.convert
        # Worker processes hand NumPy over through shared memory, and the format is made here;
        # worker threads make it themselves.
        exchange = Exchange() if options.reader_pool_type == "process" else None
        if exchange is not None:
            export = exchange.export
            work_fn: Callable[[Work], Any] = lambda work: export(segments.read(work))  # noqa: E731
        else:
            work_fn = lambda work: convert(segments.read(work))  # noqa: E731
        pool: OrderedPool[Work, Any] = OrderedPool(
            work_fn, options.workers, options.prefetch_pieces, segments.describe, options.reader_pool_type
        )
        self._pool = pool
        raw = pool.imap(self._work(start, end))
        results = raw if exchange is None else ((w, convert(exchange.load(c))) for w, c in raw)
        batcher = Batcher(self._fmt, options.batch_size, options.drop_last)
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
            raw.close()  # type: ignore[attr-defined]
            if exchange is not None:
                exchange.close()

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
