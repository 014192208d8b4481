"""The reader engine: plan → threaded segment reads → batches. Every adapter sits on it."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import logging
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

import numpy as np
import pyarrow.fs as pafs

from sparkfeed.cache import Manifest
from sparkfeed.distributed import user_stacklevel
from sparkfeed.location import Location
from sparkfeed.options import ReaderOptions
from sparkfeed.reader.batch import NUMPY, Batcher, BatchFormat, Signature, check_signature, numpy_signature
from sparkfeed.reader.exchange import Exchange
from sparkfeed.reader.iteration import Iterations
from sparkfeed.reader.plan import PlanSpec, Segment, epoch_segments, fresh_seed, remainder
from sparkfeed.reader.pool import OrderedPool
from sparkfeed.reader.progress import EpochBar
from sparkfeed.reader.readahead import DEFAULT_READ_AHEAD_BYTES, follow_counts
from sparkfeed.reader.segments import SegmentReader, Work
from sparkfeed.reader.selection import RowFilter, select_columns
from sparkfeed.reader.sequence import SequencePlan
from sparkfeed.reader.state import Identity, ReaderState, advanced, fingerprint, planned_groups, resume
from sparkfeed.reader.stats import Counters, batch_bytes, bytes_per_row, verdict
from sparkfeed.types import ColumnSpec, column_specs, readable_type

C = TypeVar("C")

Steps = tuple[
    Callable[[Work], Any],
    Callable[[Any], Any] | None,
    Callable[[Iterator[tuple[Work, Any]]], Iterator[tuple[Any, int, int, int]]],
]
"""How a stream makes batches: the workers' function; what turns a worker process's result into
a worker thread's (None with threads); and what cuts an epoch's ``(work, result)`` items into
``(batch, segment, offset after its last row, rows)``."""

log = logging.getLogger(__name__)


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

    One iteration at a time: the position, which ``state_dict()`` saves, is the iteration's, so
    starting a second iteration while another is unfinished raises a ``RuntimeError`` rather than
    silently ending the first (or keeping two positions, either of which a checkpoint could
    mean). An iteration that is exhausted, closed (``close()``, or the iterator's own), or
    dropped (the iterator of a ``for`` loop left with ``break``) is no longer active: the reader
    keeps only a weak reference to it. For two independent streams, make two readers.

    Args:
        root_url: The dataset's directory URL.
        manifest: Its manifest.
        options: Validated reader options.
        fmt: The batches' array type (NumPy unless an adapter asks for another).
        whole_chunks: Yield the chunks as they are read, whole, rather than batches of
            ``options.batch_size`` rows: for a mixture of whole batches, which cuts its batches
            out of them (see :class:`~sparkfeed.reader.batch.Batcher`). Not with ``sequence``.
    """

    def __init__(
        self,
        root_url: Location | str,
        manifest: Manifest,
        options: ReaderOptions,
        fmt: BatchFormat[C] = NUMPY,  # type: ignore[assignment]
        *,
        whole_chunks: bool = False,
    ) -> None:
        if whole_chunks and options.sequence:
            raise ValueError("a reader of whole chunks does not batch sequences (sequence= is for batches)")
        self._options = options
        self._fmt = fmt
        self._whole_chunks = whole_chunks
        self._num_rows = manifest.num_rows
        location = Location.parse(root_url)
        _check_reach(location, options)
        dtype = manifest.options.get("dtype")
        names = select_columns(options.schema_fields, manifest.schema.names)
        self._specs = column_specs(manifest.schema, dtype, manifest.shapes, names)
        # Filters may name columns the batches leave out; a column no tensor holds is left to the
        # reader that selects it (Parquet opened by path may hold one: a time of day, say).
        every = self._specs
        if options.filters_rows:
            schema = manifest.schema
            readable = [name for name in schema.names if name in self._specs or readable_type(schema, name)]
            every = column_specs(schema, dtype, manifest.shapes, readable)
        self._row_filter = RowFilter.build(options.filters, options.predicate, every, list(self._specs))
        extra = {} if self._row_filter is None else {name: every[name] for name in self._row_filter.extra}
        self._sequence = None
        if options.sequence:
            self._sequence = SequencePlan.build(
                options.sequence,
                self._specs,
                manifest.shapes,
                options.batch_size,
                options.drop_last,
                transform=options.transform_spec is not None,
            )
        self._segment_reader = SegmentReader(
            location,
            manifest.files,
            {**self._specs, **extra},
            options.transform_spec,
            options.verify_checksums,
            immutable=bool(manifest.key),  # a cache sparkfeed wrote: its files are never rewritten
            read_ahead_bytes=DEFAULT_READ_AHEAD_BYTES if options.read_ahead_bytes is None else options.read_ahead_bytes,
            row_filter=self._row_filter,
            sequence=self._sequence,
            rows_changed_warning=(
                f"the transform returned another number of rows than it was given, with shard_count="
                f"{options.shard[1]}: shards then yield different numbers of rows, so shard_policy="
                f"{options.shard_policy!r} cannot give "
                "every rank the same number of batches, and DDP/Horovod ranks may wait on each other at the end of "
                "an epoch; drop or add rows in Spark before make_spark_converter instead"
                if options.transform_spec is not None and options.shard[1] > 1 and options.shard_policy != "exact"
                else None
            ),
        )
        every_group = [
            (f, g, rows) for f, entry in enumerate(manifest.files) for g, rows in enumerate(entry.row_groups)
        ]
        self._groups = every_group
        if self._row_filter is not None:  # row groups whose statistics rule every row out are never planned
            self._groups = self._row_filter.prune(every_group, manifest.files, location, every)
        cur_shard, shard_count = options.shard
        seed = options.seed
        if seed is None:  # Drawn once, and part of the state: a resumed unseeded run stays exact.
            seed = fresh_seed()
        self._plan = PlanSpec(
            seed=seed,
            cur_shard=cur_shard,
            shard_count=shard_count,
            shard_policy=options.shard_policy,
            shuffle_row_groups=options.shuffle_row_groups,
            shuffle_rows=options.shuffle_window,
            shard_seed=options.shard_seed,
        )
        self._rows = sum(s.rows for s in epoch_segments(self._groups, self._plan, 0))
        if self._rows == 0 and options.num_epochs is None:
            pruned = "" if self._row_filter is None else ", of which the filters' statistics rule out all but these"
            raise ValueError(
                f"shard {cur_shard} of {shard_count} holds no rows ({manifest.num_rows} rows in the dataset{pruned}, "
                f"shard_policy={options.shard_policy!r}), so num_epochs=None would wait forever: "
                "use fewer shards or a finite num_epochs"
            )
        if shard_count > 1 and options.shard_policy == "pad" and not options.explicit_shard_policy:
            self._warn_of_repeats(manifest.num_rows)
        if self._row_filter is not None and shard_count > 1 and options.shard_policy != "exact":
            warnings.warn(
                f"filters or a predicate with shard_count={shard_count}: shards keep different numbers of rows, so "
                f"shard_policy={options.shard_policy!r} cannot give every rank the same number of batches, and "
                "DDP/Horovod ranks may wait on each other at the end of an epoch; for equal counts, filter the "
                "DataFrame before make_spark_converter (df.filter(...)) instead",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
        # Bucketed or packed batches: how many a shard makes depends on its rows' lengths. Where
        # every rank can work out every shard's batches (the lengths, the same seed), each epoch
        # ends after the fewest any shard makes (see _limit); otherwise ranks may differ.
        grouping = None if self._sequence is None else self._sequence.key
        self._equal_batches = False
        if grouping is not None and shard_count > 1:
            why = _unequal_because(options, self._row_filter is not None)
            self._equal_batches = why is None
            if why is not None:
                warnings.warn(
                    f"sequence {grouping.spec.mode!r} with shard_count={shard_count} and {why}: how many batches a "
                    "shard makes depends on its rows' lengths, so ranks may get different numbers of batches and "
                    "DDP/Horovod ranks may wait on each other at the end of an epoch; run the same number of steps "
                    "on every rank instead",
                    UserWarning,
                    stacklevel=user_stacklevel(),
                )
        self._key_lengths: dict[tuple[int, int], np.ndarray] = {}  # row group -> its rows' key lengths
        # epoch -> last (segment, offset) yielded: a tuple an epoch, kept (len() may ask for any)
        self._limits: dict[int, tuple[int, int] | None] = {}
        self._every_state: list[ReaderState] | None = None  # every shard's states, after a resharded resume
        self._identity = Identity(
            fingerprint=fingerprint(manifest.key, [(entry.path, entry.row_groups) for entry in manifest.files]),
            num_rows=manifest.num_rows,
            batch_size=options.batch_size,
            drop_last=options.drop_last,
            num_epochs=options.num_epochs,
            columns=tuple(self._specs),
            transform=options.transform_spec is not None,
            shard_policy=options.shard_policy,
            shuffle_row_groups=options.shuffle_row_groups,
            shuffle_rows=self._plan.shuffle_rows,
            shard_seed=self._plan.shard_seed,
            filters=None if self._row_filter is None else self._row_filter.description,
            predicate=options.predicate is not None,
            sequence=None if self._sequence is None else self._sequence.describe(),
            row_groups=planned_groups(self._groups, every_group),
        )
        self._position = Position(0)
        self._end: int | None = None  # end epoch of the current (or resumed) iteration
        self._resumed = False
        # A resharded epoch: its number and segments, which the plan alone no longer gives.
        self._derived: tuple[int, tuple[Segment, ...]] | None = None
        self._iterations: Iterations[C] = Iterations()
        self._pool: OrderedPool[Work, Any] | None = None
        self._counters = Counters()  # every finished epoch's, and the current one's once it ends
        self._current = Counters()  # the epoch being iterated
        # The user's batches (rows, drop_last), which the bar and stats() count: see show_progress_in.
        self._unit = (options.batch_size, options.drop_last)
        self._progress = options.progress

    def _warn_of_repeats(self, total: int) -> None:
        """Warns where the default ``pad`` repeats rows of this shard: a count of them would be off."""
        exact = dataclasses.replace(self._plan, shard_policy="exact")
        held = sum(segment.rows for segment in epoch_segments(self._groups, exact, 0))
        if self._rows > held:
            warnings.warn(
                f"shard {self._plan.cur_shard} of {self._plan.shard_count} holds {held} of the {total} rows and "
                f"repeats {self._rows - held} of them in every epoch: shard_policy='pad', the default, gives every "
                "shard the same number of rows, so that DDP/Horovod ranks get the same number of batches; for "
                "inference, where each row must count once, pass shard_policy='exact' (or pass 'pad' to keep this "
                "without a warning)",
                UserWarning,
                stacklevel=user_stacklevel(),
            )

    # ------------------------------------------------------------------ iteration

    @property
    def num_rows(self) -> int:
        """Rows this reader yields per epoch (its shard's share of the dataset).

        With ``filters`` or a ``predicate``, the rows of the row groups their statistics could
        not rule out: an upper bound of what passes.
        """
        return self._rows

    @property
    def columns(self) -> dict[str, ColumnSpec] | None:
        """What each column of a batch will be, known without reading; None when a transform decides."""
        return None if self._options.transform_spec is not None else dict(self._specs)

    @property
    def sequence(self) -> SequencePlan | None:
        """The ``sequence`` columns and how they are batched; None without ``sequence``."""
        return self._sequence

    @property
    def counts_batches(self) -> bool:
        """Whether batches follow from row counts alone: not where bucketing or packing cut them by lengths."""
        return self._sequence is None or not self._sequence.whole_batches

    @property
    def filters_rows(self) -> bool:
        """Whether filters, a predicate or a transform may change the row count, making lengths an estimate."""
        return self._options.transform_spec is not None or self._row_filter is not None

    def state_after(self, state: ReaderState, rows: int) -> ReaderState:
        """``state`` moved ``rows`` yielded rows on in its epoch, without reading anything.

        What a mixture's source position (a reader state and the rows used since) is as a state
        alone, for resharding.

        Raises:
            ValueError: Filters, a predicate or a transform decide the rows (a position then counts
                the rows read, which only reading them tells), or the epoch has fewer rows left.
        """
        if self.filters_rows and rows:
            raise ValueError(
                "with filters, a predicate or a transform, which rows a position has passed is known only by "
                "reading them"
            )
        return advanced(state, rows, self._groups)

    def __len__(self) -> int:
        """Batches left in the next iteration, exact when nothing filters rows (see :attr:`filters_rows`).

        With filters or a predicate it is an upper bound: the batches of every row that the
        row groups' statistics could not rule out, as if all of them passed. Bucketed or packed
        sequences are counted from their lengths (the first ``len()`` reads that column), and
        have no ``len()`` with filters, a predicate or a transform.
        """
        if self._options.num_epochs is None:
            raise TypeError("a loader with num_epochs=None is infinite and has no len(); pass num_epochs")
        if not self.counts_batches:
            if self.filters_rows:
                raise TypeError(
                    "a loader with sequence 'bucket' or 'pack' and filters, a predicate or a transform has no len(): "
                    "how many batches its rows make depends on which rows there are and their lengths, known only "
                    "as they are read"
                )
            if self._epochs_left() > COUNTED_EPOCHS:
                raise TypeError(too_many_epochs(self._epochs_left()))
            return self._sequence_count()
        return self._count(self._options.batch_size, self._options.drop_last)

    def batch_count(self, batch_size: int, drop_last: bool) -> int | None:
        """Batches of ``batch_size`` rows that the next iteration's epochs make, each epoch cut on its own.

        ``len()`` in this reader's own batch size; an adapter that reads larger batches and cuts
        them itself (the TF dataset's super-batches) counts the batches its user receives.
        None when ``num_epochs=None`` (the iteration has no end). Bucketed or packed sequences
        are counted from their lengths (:meth:`_sequence_count`), in the reader's own batch size
        only, and not where :attr:`filters_rows` (None). An upper bound where :attr:`filters_rows`,
        as ``len()``.
        """
        if self._options.num_epochs is None:
            return None
        if not self.counts_batches:
            same = (batch_size, drop_last) == (self._options.batch_size, self._options.drop_last)
            countable = same and not self.filters_rows and self._epochs_left() <= COUNTED_EPOCHS
            return self._sequence_count() if countable else None
        return self._count(batch_size, drop_last)

    def _sequence_count(self) -> int:
        """Bucketed or packed batches left in the next iteration, counted from the key column's lengths.

        The same cuts the batches are made with (:meth:`_batch_ends`), from where the iteration
        starts, each epoch to its limit where shards are held to one count (:meth:`_limit`).
        The first call reads that column of every row group (:meth:`SegmentReader.key_lengths`).
        """
        start, end = self._iteration_range()
        return sum(self._sequence_batches(epoch, start) for epoch in range(start.epoch, end))

    def epoch_batches(self, epoch: int) -> int:
        """Bucketed or packed batches of the whole of ``epoch``, counted from the key column's lengths.

        What a mixture of such loaders needs to know when each source runs out. Not where
        :attr:`counts_batches` (count rows instead) or :attr:`filters_rows` (unknown until read).
        """
        assert not self.counts_batches and not self.filters_rows
        return self._sequence_batches(epoch, Position(epoch))

    def _sequence_batches(self, epoch: int, start: Position) -> int:
        """Bucketed or packed batches of ``epoch`` in an iteration starting at ``start`` (:meth:`_sequence_count`)."""
        first = start if epoch == start.epoch else Position(epoch)
        limit = self._limit(epoch) if self._equal_batches else None
        total = 0
        for index, ends in enumerate(self._batch_ends(epoch, self._segments(epoch))):
            if index >= first.segment:
                total += _within(index, ends[ends > first.offset] if index == first.segment else ends, limit)
        return total

    def _count(self, batch_size: int, drop_last: bool) -> int:
        start, end = self._iteration_range()
        if end <= start.epoch:
            return 0
        # Every epoch after the first (a resumed one may be partly read) holds the same rows: no
        # loop over them, which num_epochs=sys.maxsize ("forever") would never finish.
        first = batches_of(self._epoch_rows(start.epoch, start), batch_size, drop_last)
        return first + (end - start.epoch - 1) * batches_of(self._rows, batch_size, drop_last)

    def _epoch_rows(self, epoch: int, start: Position) -> int:
        """Rows of ``epoch`` in an iteration starting at ``start``: what remains of a resumed first epoch."""
        if epoch == start.epoch and (start.segment or start.offset or self._derived):
            return sum(s.rows for s in remainder(self._segments(epoch), start.segment, start.offset))
        return self._rows

    def show_progress_in(self, batch_size: int | None, drop_last: bool = False) -> None:
        """Counts the ``progress=True`` bar and :meth:`stats` in batches of ``batch_size`` rows; None: no bar at all.

        They count the user's batches. An adapter that reads larger batches and cuts them
        itself (the TF dataset's super-batches) gives the batch size and ``drop_last`` of what
        its user receives; a reader made for a look at the data (the TF element-spec probe)
        turns its bar off. Without ``progress=True``, a batch size changes only the counts.
        """
        if batch_size is None:
            self._progress = False
        else:
            self._unit = (batch_size, drop_last)

    def _iteration_range(self) -> tuple[Position, int]:
        if self._resumed:
            return self._position, self._end if self._end is not None else self._position.epoch + self._epochs()
        start = Position(self._position.epoch if self._end is None else self._end)
        return start, start.epoch + self._epochs()

    def _epochs_left(self) -> int:
        """Epochs the next iteration reads (a resumed one's first among them)."""
        start, end = self._iteration_range()
        return end - start.epoch

    def _epochs(self) -> int:
        return self._options.num_epochs or 0

    def __iter__(self) -> Iterator[C]:
        """A new iteration, continuing after the previous one.

        Raises:
            RuntimeError: Another iteration of this reader is still active (see the class
                docstring), or one closed from another thread has not ended.
        """
        self._iterations.claim()  # a closed one's cleanup (read-ahead, counters) comes first
        start, end = self._iteration_range()
        # The position is the new iteration's only from its first batch (see _move): an iterator
        # made and dropped unadvanced (PyTorch Lightning probes a loader so), or one whose first
        # step raised, leaves the reader where it was, resumed remainder included.
        last = None if self._options.num_epochs is None else end
        return self._iterations.start(lambda token: self._stream(start, last, token))

    def _segments(self, epoch: int) -> list[Segment]:
        if self._derived is not None and self._derived[0] == epoch:
            return list(self._derived[1])
        return epoch_segments(self._groups, self._plan, epoch)

    def _work(self, start: Position, end: int | None) -> Iterator[Work]:
        epochs = itertools.count(start.epoch) if end is None else range(start.epoch, end)
        # Worker processes would each fetch a span for the row groups they happen to get.
        spans = self._segment_reader.reads_ahead and self._options.reader_pool_type != "process"
        for epoch in epochs:
            segments = self._segments(epoch)
            last = len(segments)
            if self._equal_batches:
                limit = self._limit(epoch)
                if limit is not None:
                    last = min(last, limit[0] + 1)  # the segments after the epoch's last batch are not read
            first = start.segment if epoch == start.epoch else 0
            if first >= last and end is None and epoch > start.epoch:
                # An epoch with nothing to read never reaches _stream's check of epochs without a batch:
                # without this, an endless loader whose epochs are all cut to no batch (see _limit) would
                # go through epochs here forever, never yielding, while the shard that makes the fewest
                # batches raises. The pool raises it after the batches of the epochs before it.
                raise self._no_batch()
            follow = iter(follow_counts([p for s in segments[first:last] for p in s.pieces]) if spans else ())
            for index in range(first, last):
                skip = start.offset if epoch == start.epoch and index == start.segment else 0
                segment = segments[index]
                # The segment's own seed: after a reshard it is the seed of the shard that planned it.
                seed = self._plan.seed if segment.seed is None else segment.seed
                ahead = tuple(itertools.islice(follow, len(segment.pieces)))  # () without spans
                yield Work(epoch, index, skip, segment, seed, ahead)

    def _no_batch(self) -> ValueError:
        """The error of an endless loader whose whole epoch gave no batch: it would wait forever for one."""
        return ValueError(
            f"a whole epoch of shard {self._plan.cur_shard} of {self._plan.shard_count} gave no batch (no row passed "
            "the filters or predicate, a transform dropped every row, drop_last left out the one short batch, or "
            "some shard's bucketed or packed rows made none, which every shard then stops at), so num_epochs=None "
            "would wait forever: check the filters, or pass a finite num_epochs"
        )

    def _scheduled(self, works: Iterator[Work]) -> Iterator[Work]:
        """Work items as the pool submits them, each starting its read-ahead fetches on the way."""
        for work in works:
            self._segment_reader.schedule(work)
            yield work

    def _stream(self, start: Position, end: int | None, token: object) -> Generator[C, None, None]:
        options = self._options
        segments = self._segment_reader
        # Worker processes hand NumPy over through shared memory, and the format is made here;
        # worker threads make it themselves.
        exchange = Exchange() if options.reader_pool_type == "process" else None
        try:
            sequence = self._sequence
            if sequence is not None and sequence.whole_batches:
                work_fn, receive, cut = self._whole_batches(sequence, exchange)
            else:
                work_fn, receive, cut = self._cut_chunks(exchange)
            clock = time.perf_counter

            def timed(work: Work) -> tuple[Any, float]:  # what a worker returns, and its busy seconds
                started = clock()
                return work_fn(work), clock() - started

            # A prefetch the user sets counts row groups, as documented: a shuffle window of many
            # row groups is one work item, and counting items held that many whole windows
            # (prefetch=3 with windows of three row groups behind a slow step: 737 MiB, and 459
            # counting row groups, in the memory benchmark). The default keeps 2 x workers
            # items, windows or row groups: one per worker cut the shuffled tabular loader's
            # rows/s by a third.
            pool: OrderedPool[Work, Any] = OrderedPool(
                timed,
                options.workers,
                options.prefetch_pieces,
                segments.describe,
                options.reader_pool_type,
                weigh=lambda work: len(work.segment.pieces),
                least=1 if options.prefetch else 2 * options.workers,
            )
            self._pool = pool
            raw = pool.imap(self._scheduled(self._work(start, end)))
        except BaseException:
            if exchange is not None:  # its shared-memory directory, left otherwise until the process exits
                exchange.close()
            raise
        results = raw if receive is None else ((w, (receive(out), busy)) for w, (out, busy) in raw)
        bar: EpochBar | None = None
        # The epoch's counts, kept in locals (a batch costs two clock reads and two additions)
        # and published to self._current every 64 batches and at the end: see _tally.
        n, total, wait, step, last = 0, 0, 0.0, 0.0, None
        # Sequences' batches vary in width: their bytes are added up batch by batch, not estimated.
        varying, nbytes = sequence is not None, 0
        asked = clock()  # when the consumer asked for the next batch
        try:
            for epoch, items in itertools.groupby(results, key=lambda item: item[0].epoch):
                if not self._iterations.owns(token):  # closed from another thread: not this iteration's epoch
                    return
                counts = self._current = Counters()
                if self._progress:
                    bar = self._bar(epoch, start, *self._unit)
                for batch, index, offset, rows in cut(self._counted(items, counts)):
                    if not self._iterations.owns(token):
                        # Closed from another thread while this step waited: the pool stopped and the
                        # batcher made a short batch of the rows it held, as at an epoch's end. Not yielded.
                        return
                    self._move(token, Position(epoch, index, offset), end)
                    if bar is not None:
                        bar.step(self._user_batches(rows), rows)
                    n, total, last = n + 1, total + rows, batch
                    if varying:
                        nbytes += batch_bytes(batch)
                    if not n & 63:
                        self._tally(counts, n, total, wait, step, batch, nbytes if varying else None)
                    ready = clock()
                    wait += ready - asked
                    yield batch
                    asked = clock()
                    step += asked - ready
                if not self._iterations.owns(token):  # closed meanwhile: the epoch did not end
                    return
                ended = clock()  # the loop's last ask waited for the epoch's end (for rows filters drop, say)
                wait, asked = wait + ended - asked, ended
                if bar is not None:
                    bar.close()
                    bar = None
                self._tally(counts, n, total, wait, step, last, nbytes if varying else None)
                n, total, wait, step, last, nbytes = 0, 0, 0.0, 0.0, None, 0
                self._end_epoch(epoch, counts)
                if not counts.batches and end is None and epoch > start.epoch:
                    raise self._no_batch()
                self._move(token, Position(epoch + 1), end)
            if end is not None:
                self._move(token, Position(end), end)
        finally:
            if bar is not None:  # the loop stopped inside an epoch: the bar shows how far it got
                bar.close()
            if n:  # an epoch left early still counts in stats()
                self._tally(self._current, n, total, wait, step, last, nbytes if varying else None)
            self._counters.add(self._current)
            self._current = Counters()
            raw.close()  # type: ignore[attr-defined]
            segments.end_iteration()
            if exchange is not None:
                exchange.close()

    @staticmethod
    def _counted(items: Iterator[tuple[Work, tuple[Any, float]]], counts: Counters) -> Iterator[tuple[Work, Any]]:
        """The pool's results without their busy seconds, which are counted as each piece arrives."""
        for work, (out, busy) in items:
            counts.busy_seconds += busy
            yield work, out

    def _user_batches(self, rows: int) -> int:
        """The user's batches in a batch of ``rows`` rows (more than one where an adapter cuts it further)."""
        size, drop_last = self._unit
        return 1 if size == self._options.batch_size else batches_of(rows, size, drop_last)

    def _tally(
        self, counts: Counters, n: int, rows: int, wait: float, step: float, batch: Any, nbytes: int | None = None
    ) -> None:
        """Publishes an epoch's running counts: ``n`` batches and ``rows`` rows so far, ``batch`` the latest.

        Bytes are ``nbytes`` where the batches were added up (sequences, whose widths vary),
        else estimated from the latest batch's bytes per row (batches of one loader hold the
        same columns and shapes).
        """
        size = self._options.batch_size
        counts.rows, counts.wait_seconds, counts.step_seconds = rows, wait, step
        unit, drop_last = self._unit
        counts.batches = n if unit == size else batches_of(rows, unit, drop_last)
        if nbytes is not None:
            counts.bytes = nbytes
        else:
            counts.bytes = rows * bytes_per_row(batch, self._fmt.rows(batch)) if batch is not None else 0

    def _end_epoch(self, epoch: int, counts: Counters) -> None:
        """Adds the epoch's counts to the loader's and logs whether the loop waited on its input."""
        self._counters.add(counts)
        self._current = Counters()
        if counts.batches and log.isEnabledFor(logging.INFO):
            options = self._options
            report = counts.report(options.workers)
            shard = (
                "" if self._plan.shard_count == 1 else f" (shard {self._plan.cur_shard} of {self._plan.shard_count})"
            )
            log.info(
                "epoch %d%s: %d batches, %s",
                epoch,
                shard,
                counts.batches,
                verdict(report, options.workers, options.reader_pool_type),
            )

    def stats(self) -> dict[str, Any]:
        """Whether the input is the bottleneck: counters since this loader was made, with rates and shares.

        ``input_bound`` is the share of the loop's time spent waiting inside ``next()`` (0: the
        reader is always ahead; 1: the step never waits on anything else); ``worker_utilization``
        the share of the workers' time spent reading, decoding and transforming. Also logged at
        INFO after every epoch, with advice (see :mod:`sparkfeed.reader.stats`). The epoch in
        progress is included.
        """
        counts = Counters()
        counts.add(self._counters)
        counts.add(self._current)
        return counts.report(self._options.workers)

    def _cut_chunks(self, exchange: Exchange | None) -> Steps:
        """How chunks are read and cut into batches by the batcher (every mode but bucket and pack).

        Returns the workers' function, what turns a worker process's result into ``(chunk,
        ends)`` here (None with worker threads, whose results are ready), and what turns an
        epoch's ``(work, result)`` items into ``(batch, segment, offset, rows)``.
        """
        segments, fmt, sequence = self._segment_reader, self._fmt, self._sequence
        # Sequence columns stay Ragged until a batch is cut, so their chunks stay NumPy (which
        # slices and joins them) and the batch is finished, then converted, as it leaves.
        chunk_fmt: BatchFormat[Any] = fmt if sequence is None else NUMPY
        convert = chunk_fmt.convert
        finish = exchange.export if exchange is not None else convert

        def work_fn(work: Work) -> tuple[Any, np.ndarray | None]:
            # A filtered read also says where each of its rows leaves the position (None: one row each).
            columns, ends, _ = segments.read_rows(work)
            return finish(columns), ends

        def receive(payload: tuple[Any, np.ndarray | None]) -> tuple[Any, np.ndarray | None]:
            exported, ends = payload
            return convert(exchange.load(exported)), ends  # type: ignore[union-attr]

        batcher = Batcher(chunk_fmt, self._options.batch_size, self._options.drop_last, self._whole_chunks)

        def cut(items: Iterator[tuple[Work, Any]]) -> Iterator[tuple[Any, int, int, int]]:
            chunks = (((work.index, work.skip, ends), chunk) for work, (chunk, ends) in items)
            if sequence is None:
                for batch, (index, skip, ends), consumed, rows in batcher.batches(chunks):
                    yield batch, index, skip + (consumed if ends is None else int(ends[consumed - 1])), rows
                return
            for batch, (index, skip, ends), consumed, rows in batcher.batches(chunks):
                offset = consumed if ends is None else int(ends[consumed - 1])
                yield fmt.convert(sequence.finish(batch)), index, skip + offset, rows

        return work_fn, None if exchange is None else receive, cut

    def _whole_batches(self, sequence: SequencePlan, exchange: Exchange | None) -> Steps:
        """How bucketed or packed batches are made: whole, by the worker that read their segment.

        A worker thread reads the segment and makes its batches; a worker process reads it and
        hands the rows over, and the batches are made here. Each batch comes with the segment
        position after its last row, so a saved position says exactly which rows were yielded.
        """
        segments, fmt = self._segment_reader, self._fmt
        signature: list[Signature] = []

        def work_fn(work: Work) -> Any:
            columns, positions, numbers = segments.read_rows(work)
            if exchange is not None:
                return exchange.export(columns), positions, numbers
            return sequence.batches(columns, positions, numbers)

        def receive(payload: tuple[Any, np.ndarray, np.ndarray]) -> Any:
            exported, positions, numbers = payload
            return sequence.batches(exchange.load(exported), positions, numbers)  # type: ignore[union-attr]

        # Sequence arrays change length from batch to batch; their values' dtype may not.
        varying = {output for plan in sequence.columns for output in plan.outputs()}

        limits = self._limits

        def cut(items: Iterator[tuple[Work, Any]]) -> Iterator[tuple[Any, int, int, int]]:
            for work, (batches, ends) in items:
                limit = limits.get(work.epoch)
                if limit is not None:  # the epoch's last segment: up to its last batch
                    kept = _within(work.index, work.skip + np.asarray(ends, dtype=np.int64), limit)
                    del batches[kept:]
                    ends = ends[:kept]
                if batches:  # a segment's batches are made alike: checking its first one is enough
                    now = {
                        name: (dtype, () if name in varying else shape)
                        for name, (dtype, shape) in numpy_signature(batches[0]).items()
                    }
                    if not signature:
                        signature.append(now)
                    else:
                        check_signature(signature[0], now)
                # Each batch leaves the list as it is yielded, so the arrays a group of batches shares
                # are freed once the loop is done with that group, not held until the segment's last
                # batch (the peak, a segment's batches when they arrive, stays what it was).
                for number, end in enumerate(ends.tolist()):
                    batch, batches[number] = batches[number], None
                    yield fmt.convert(batch), work.index, work.skip + end, NUMPY.rows(batch)

        return work_fn, None if exchange is None else receive, cut

    def _limit(self, epoch: int) -> tuple[int, int] | None:
        """Where this shard ends ``epoch`` so that every shard yields the same number of batches.

        Bucketed and packed batches are cut by the rows' lengths, so shards of equal rows make
        different numbers of them, and a DDP/Horovod rank with more would wait forever for the
        others at its next collective. Every rank works out every shard's batches from the key
        column's lengths (read once, see :meth:`SegmentReader.key_lengths`) and the shared seed,
        and ends the epoch after the fewest any shard makes: the ``(segment, offset)`` of its
        last batch, ``(-1, 0)`` for none; None where this shard makes the fewest. The batches
        left out differ from epoch to epoch where the rows are shuffled. In the epoch a
        resharded resume continues, each shard's segments come from every shard's saved states
        (:meth:`_shard_segments`); a single state saved in such an epoch says only its own
        shard's, and that epoch is not limited (:meth:`load_state_dict` warns).
        """
        if epoch in self._limits:
            return self._limits[epoch]
        plan = self._plan
        derived = self._derived is not None and self._derived[0] == epoch
        if derived and self._every_state is None:  # only this shard's part of a resharded epoch is known
            return None
        every = [self._batch_ends(epoch, self._shard_segments(epoch, shard)) for shard in range(plan.shard_count)]
        fewest = min(sum(len(ends) for ends in shard) for shard in every)
        own = every[plan.cur_shard]
        limit: tuple[int, int] | None = None
        if sum(len(ends) for ends in own) > fewest:
            limit, left = (-1, 0), fewest
            for index, ends in enumerate(own):
                if left <= len(ends):
                    if left:
                        limit = (index, int(ends[left - 1]))
                    break
                left -= len(ends)
            log.debug("epoch %d: shard %d stops at %d batches, the fewest of any shard", epoch, plan.cur_shard, fewest)
        self._limits[epoch] = limit
        return limit

    def _shard_segments(self, epoch: int, shard: int) -> list[Segment]:
        """Shard ``shard``'s segments of ``epoch``: the plan's, or in a resharded epoch what its reader resumed with."""
        plan = dataclasses.replace(self._plan, cur_shard=shard)
        if self._derived is None or self._derived[0] != epoch or self._every_state is None:
            return epoch_segments(self._groups, plan, epoch)
        if shard == self._plan.cur_shard:
            return list(self._derived[1])
        resumed = resume(
            self._every_state,
            identity=self._identity,
            groups=self._groups,
            cur_shard=shard,
            shard_count=plan.shard_count,
            seed=self._options.seed,
            every_shard=True,
        )
        return [] if resumed.segments is None else list(resumed.segments)

    def _batch_ends(self, epoch: int, segments: Sequence[Segment]) -> list[np.ndarray]:
        """Where the batches of a shard's ``segments`` of ``epoch`` end, segment by segment, as its reader cuts them."""
        if not self._key_lengths:
            groups = ((file, group) for file, group, _ in self._groups)
            self._key_lengths = dict(zip(groups, self._read_key_lengths(), strict=True))
        lengths, seed = self._key_lengths, self._plan.seed
        return [
            self._segment_reader.batch_ends(
                Work(epoch, index, 0, segment, seed if segment.seed is None else segment.seed, ()),
                np.concatenate([lengths[p.file, p.row_group][p.start : p.stop] for p in segment.pieces]),
            )
            for index, segment in enumerate(segments)
        ]

    def _read_key_lengths(self) -> list[np.ndarray]:
        """Every row group's key lengths (:meth:`SegmentReader.key_lengths`), read by the workers' count of threads."""
        reader = self._segment_reader
        with concurrent.futures.ThreadPoolExecutor(self._options.workers) as pool:
            return list(pool.map(lambda group: reader.key_lengths(group[0], group[1]), self._groups))

    def _bar(self, epoch: int, start: Position, batch_size: int, drop_last: bool) -> EpochBar:
        """The bar of one epoch; its total is unknown where filters or a predicate decide the rows."""
        total = None
        if self._row_filter is None and self.counts_batches:
            total = batches_of(self._epoch_rows(epoch, start), batch_size, drop_last)
        elif not self.counts_batches and not self.filters_rows:  # bucketed or packed: from the rows' lengths
            total = self._sequence_batches(epoch, start)
        return EpochBar(epoch, total, (self._plan.cur_shard, self._plan.shard_count))

    # ------------------------------------------------------------------ state

    def _move(self, token: object, position: Position, end: int | None) -> None:
        """Records the position of the iteration that ends before epoch ``end``, unless it was closed meanwhile.

        Its first batch (or its end, where it has none) makes the iteration the reader's: from
        then on the next one starts after it, not at a resumed position.
        """
        if self._iterations.owns(token):
            self._position, self._end, self._resumed = position, end, False

    def state(self) -> ReaderState:
        """Where this reader stands, as a :class:`~sparkfeed.reader.state.ReaderState`."""
        position, derived = self._position, self._derived
        return ReaderState(
            identity=self._identity,
            seed=self._plan.seed,
            cur_shard=self._plan.cur_shard,
            shard_count=self._plan.shard_count,
            epoch=position.epoch,
            segment=position.segment,
            offset=position.offset,
            end_epoch=self._end,
            segments=derived[1] if derived is not None and derived[0] == position.epoch else None,
        )

    def state_dict(self) -> dict[str, Any]:
        """Where this reader stands, as plain JSON-able data: save it with the model's checkpoint.

        The format is described in :mod:`sparkfeed.reader.state`; it records what it indexes
        (the cache's fingerprint and the loader's arguments), so that it cannot resume elsewhere.
        """
        return self.state().to_dict()

    def load_state_dict(self, state: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
        """Continues where a saved reader stopped: the next batches are exactly those that remained.

        Ends this reader's current iteration, if any. Every state is checked before anything
        changes, so a refused state leaves the reader as it was.

        Args:
            state: This shard's saved state; or the states of every shard of a run, which also
                allows a different ``shard_count`` now: the rest of the interrupted epoch is split
                among the new shards with no row repeated or lost, and later epochs shard as usual.
                Each saved segment keeps the seed it was planned with; for later epochs this reader
                takes the seed of old shard ``cur_shard % old_count`` (the user's seed, when given),
                so an unseeded run resumes deterministically (see :func:`sparkfeed.reader.state.resume`).

        Raises:
            ValueError: A state is malformed, or was saved on another cache, with other loader
                arguments, or by another shard; the message names the field and both values.
        """
        if isinstance(state, Mapping):
            states, every_shard = [ReaderState.from_dict(state)], False
        elif isinstance(state, Sequence) and not isinstance(state, str | bytes):
            if not state:
                raise ValueError("no states given: pass this shard's state, or the list of every shard's state")
            states, every_shard = [], True
            for number, saved in enumerate(state):
                if not isinstance(saved, Mapping):
                    raise ValueError(f"state {number} of the list is not a dict from state_dict(): {saved!r:.80}")
                states.append(ReaderState.from_dict(saved))
        else:
            raise ValueError(
                f"load_state_dict takes a dict or a list of dicts from state_dict(), got {type(state).__name__}"
            )
        resumed = resume(
            states,
            identity=self._identity,
            groups=self._groups,
            cur_shard=self._plan.cur_shard,
            shard_count=self._plan.shard_count,
            seed=self._options.seed,
            every_shard=every_shard,
        )
        self.close()
        self._plan = dataclasses.replace(self._plan, seed=resumed.seed)
        self._end = resumed.end_epoch
        # A state saved once its iteration had finished resumes as that loader goes on: with the
        # next iteration's epochs, not with what remains of the finished one (nothing).
        self._resumed = resumed.end_epoch is None or resumed.epoch < resumed.end_epoch
        self._position = Position(resumed.epoch, resumed.segment, resumed.offset)
        self._derived = None if resumed.segments is None else (resumed.epoch, resumed.segments)
        self._limits.clear()
        self._every_state = states if every_shard else None
        if self._equal_batches and self._derived is not None and not every_shard:
            warnings.warn(
                "this state was saved in an epoch resharded from another shard count, and only the list of every "
                "shard's state tells each rank what the other shards read in it: ranks may get different numbers "
                f"of bucketed or packed batches until epoch {resumed.epoch + 1}; pass every shard's state to "
                "load_state_dict",
                UserWarning,
                stacklevel=user_stacklevel(),
            )

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Ends the current iteration, if any, and stops its reader threads; safe from any thread."""
        self._iterations.close(self._stop_pool)

    def _stop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def __enter__(self) -> Reader[C]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


COUNTED_EPOCHS = 10_000
"""The most epochs whose batches ``len()`` counts one by one (bucketed or packed sequences,
mixtures: each epoch's draws or lengths differ): a count of ``num_epochs=sys.maxsize`` would
never end. More is refused by ``len()`` and leaves a TF dataset's cardinality unknown."""


def too_many_epochs(epochs: int) -> str:
    """Why ``len()`` of an iteration of ``epochs`` epochs, counted one by one, is refused."""
    return (
        f"len() counts the batches of each epoch of this loader one by one (their number varies from epoch to "
        f"epoch), and {epochs} epochs are more than {COUNTED_EPOCHS:,}: pass fewer num_epochs, or num_epochs=None "
        "for an endless loader"
    )


def _within(index: int, ends: np.ndarray, limit: tuple[int, int] | None) -> int:
    """How many of segment ``index``'s batches, ending at ``ends`` (increasing), an epoch ending at ``limit`` yields."""
    if limit is None or index < limit[0]:
        return len(ends)
    if index > limit[0]:
        return 0
    return int(np.searchsorted(ends, limit[1], side="right"))


def _unequal_because(options: ReaderOptions, filtered: bool) -> str | None:
    """Why the shards of a bucketed or packed loader cannot be held to one number of batches; None if they can.

    Every rank must know every shard's rows' lengths and order: not when filters or a
    transform decide the rows (known only by reading them), not where each rank drew its own
    seed for a shuffle, and not with ``shard_policy='exact'``, which yields every row.
    """
    if options.shard_policy == "exact":
        return "shard_policy='exact' (every row yielded)"
    if filtered or options.transform_spec is not None:
        return "filters, a predicate or a transform (the rows are known only once read)"
    if options.seed is None and (options.shuffle_row_groups or options.shuffle_window):
        return "a shuffle without seed= (each rank draws its own order: pass the same seed on every rank)"
    return None


def batches_of(rows: int, batch_size: int, drop_last: bool) -> int:
    """Batches that ``rows`` rows make: the short last one counts unless ``drop_last`` leaves it out."""
    return rows // batch_size if drop_last else -(-rows // batch_size)


def _check_reach(location: Location, options: ReaderOptions) -> None:
    """``storage_options``/``filesystem`` given to a loader must be how its converter reaches the cache already.

    Petastorm's reader took them for every read; a sparkfeed converter carries them from
    ``make_spark_converter`` to every process it is pickled to, so a loader has nothing to add.
    The same values (or None) are accepted so that Petastorm calls keep working; other values
    would mean another way to the same cache, which this loader would silently not use.

    Raises:
        ValueError: They differ from the converter's; the message names the keys, not the values,
            which may be credentials.
    """
    given = options.storage_options
    if given is not None and dict(given) != location.options:
        raise ValueError(
            f"storage_options with keys {sorted(given)} differ from those of this converter's cache {location} "
            f"(keys {sorted(location.options)}): a converter reaches its cache with what make_spark_converter "
            "was given; pass storage_options to make_spark_converter, and leave them out here"
        )
    fs = options.filesystem
    if fs is None or fs is location.given_filesystem:
        return
    known = location.given_filesystem
    if known is not None:
        same = bool(fs == known)
    else:
        same = isinstance(fs, pafs.FileSystem) and fs.equals(location.filesystem)
    if not same:
        raise ValueError(
            f"filesystem={fs!r} is not the filesystem this converter reaches its cache {location} with: pass "
            "filesystem to make_spark_converter, and leave it out here"
        )
