"""Batches mixed from several readers with weights: deterministic, resumable, equal across ranks.

Each source is a :class:`~sparkfeed.reader.Reader` of its own (NumPy, but see below), reading ahead in its own
threads. Batch ``b`` of epoch ``e`` takes from each source the number of rows that
:class:`~sparkfeed.reader.draws.Draws` gives it, a seeded draw that depends on ``(seed, e, b)``
only; inside the batch, the rows come source after source (in the mixture's order, reversed in
odd batches: see :meth:`Mixer._assemble`), each source's in its own stream order.

Batches are assembled a group at a time: the rows of up to :data:`MAX_GROUP` batches are copied
into one block, one ``np.concatenate`` per column, which the batch format converts once and cuts
into batches the way the reader cuts its chunks (views in NumPy, one ``split_with_sizes`` per
column in torch, device cuts in JAX). A copy per batch and column would cost more than reading.
A mixture of whole batches (``granularity="batch"``) copies nothing: its sources' readers hand
over whole chunks already in the batches' format, and each batch is a view of one of them (see
:meth:`Mixer._whole_batches`). With ``sequence=`` the sources' readers make the batches
themselves (padded, bucketed or packed), and each draw hands on one whole (see
:class:`SourceBatches`).

Resuming is exact: a source's position is the state of its reader from *before* the batch it is
being read from, plus the rows of that stream already used (see :class:`MixerState`); the reader
cuts the same batches again from that state, and the mixer skips the rows used.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

import numpy as np
import pyarrow as pa

from sparkfeed.reader.batch import NUMPY, BatchFormat, Columns, Signature, numpy_signature
from sparkfeed.reader.draws import GRANULARITIES, STOPS, Draws, Granularity, Stop
from sparkfeed.reader.engine import (
    COUNTED_EPOCHS,
    Reader,
    batches_of,
    too_many_epochs,
)
from sparkfeed.reader.iteration import Iterations
from sparkfeed.reader.progress import EpochBar
from sparkfeed.reader.sequence import SequencePlan
from sparkfeed.reader.state import Identity, ReaderState, check_keys, int_field, optional_int_field
from sparkfeed.reader.stats import Counters, batch_bytes, bytes_per_row, verdict
from sparkfeed.types import ColumnSpec, leaf_type, list_depth

log = logging.getLogger(__name__)

C = TypeVar("C")

FORMAT = "sparkfeed.mixture"
VERSION = 1

MAX_GROUP = 64
"""Most batches assembled at once: enough to spread the per-column cost of a copy."""

GROUP_BYTES = 4 << 20
"""Fewer batches per group when they are big, so that a group's block stays about this size."""

Piece = tuple[Any, int, int]
"""Rows ``[start, stop)`` of a buffered source batch: NumPy, or the mixture's format (see :class:`SourceFormat`)."""

SourcePosition = tuple[ReaderState, int] | None
"""A source's reader state from before the batch it is read from, and the rows of its stream already
used from there. Inside a mixer, None stands for "where a new epoch starts it": the start of its
own epoch with ``"first_exhausted"``, where its reader stands with ``"never"``; a saved state
always spells the position out, with the seed the reader shuffles with."""


class SourceFormat(Generic[C]):
    """The format of a source's reader with ``granularity="batch"``: the mixture's, made in its threads.

    A batch of such a mixture is cut from one source's chunk, so that chunk can be in the
    mixture's format already, converted by the source's reader threads as a single converter's
    are; the mixer then cuts views of it and converts nothing. This format also puts the
    columns in the mixture's one order, and adds the source column.

    Args:
        fmt: The mixture's batch format.
        source_column: The column of the source's index to add; None for none.
        index: The source's index in the mixture.
    """

    def __init__(self, fmt: BatchFormat[C], source_column: str | None, index: int) -> None:
        self.fmt = fmt
        self.source_column = source_column
        self.index = index
        self.names: list[str] | None = None  # the mixture's column order, set by the mixer; None: the source's

    def convert(self, columns: Columns) -> C:
        """The source's NumPy chunk in the mixture's columns and format; runs in the source's reader threads."""
        picked = columns if self.names is None else {name: columns[name] for name in self.names}
        column = self.source_column
        if column is not None:
            if column in columns:
                raise ValueError(
                    f"mix: source_column={column!r} is also a column of source {self.index} of the mixture: "
                    "choose another name for the column of sources"
                )
            rows = len(next(iter(columns.values()))) if columns else 0
            picked = {**picked, column: np.full(rows, self.index, dtype=np.int32)}
        return self.fmt.convert(picked)

    def rows(self, chunk: C) -> int:
        """Rows in a chunk."""
        return self.fmt.rows(chunk)

    def split(self, chunk: C, start: int, size: int, count: int) -> list[C]:
        """The mixture format's split."""
        return self.fmt.split(chunk, start, size, count)

    def concat(self, parts: list[C]) -> C:
        """The mixture format's concat."""
        return self.fmt.concat(parts)

    def signature(self, chunk: C) -> Signature:
        """The mixture format's signature."""
        return self.fmt.signature(chunk)


class SourceBatches(SourceFormat[C]):
    """The format of a source's reader in a mixture of sequences: each of its batches is one unit.

    With ``sequence=``, a source's reader pads, buckets or packs its batches itself, and the mixer
    hands each on whole (a batch never joins rows padded or packed apart). The draws then count
    batches, so to the mixer a batch is one "row", which it cuts and joins as it is.
    """

    def rows(self, chunk: C) -> int:
        """One: the batch is the unit the draws count."""
        return 1

    def split(self, chunk: C, start: int, size: int, count: int) -> list[C]:
        """The batch itself: it is never cut."""
        if (start, size, count) != (0, 1, 1):
            raise AssertionError(f"a source's sequence batch is taken whole, not cut at {(start, size, count)}")
        return [chunk]

    def concat(self, parts: list[C]) -> C:
        """The one batch: batches are never joined."""
        if len(parts) != 1:
            raise AssertionError(f"a source's sequence batches are never joined ({len(parts)} given)")
        return parts[0]


def source_format(
    fmt: BatchFormat[C],
    granularity: Granularity,
    chunk_batches: int,
    source_column: str | None,
    index: int,
    sequence: bool = False,
) -> BatchFormat[Any]:
    """The format of source ``index``'s reader: NumPy, whose rows the mixer joins, or the mixture's own.

    Only a mixture of whole batches (``granularity="batch"``) handed out one batch at a time
    (``chunk_batches=1``) takes its batches as views of its sources' chunks (see
    :class:`SourceFormat`; their readers then read whole chunks), or with ``sequence``, as the
    sources' own batches (:class:`SourceBatches`); the others copy rows into blocks, which NumPy
    joins.

    Raises:
        ValueError: ``sequence`` in a mixture that is not one of whole batches, one at a time.
    """
    if sequence:
        if granularity != "batch" or chunk_batches != 1:
            raise ValueError(
                "mix: sequence= needs mix(..., granularity='batch'): each batch then comes whole from one source, "
                "whose reader pads, buckets or packs it; with granularity='row' a batch would join rows of "
                "several sources, padded or packed apart"
            )
        return SourceBatches(fmt, source_column, index)
    if granularity == "batch" and chunk_batches == 1:
        return SourceFormat(fmt, source_column, index)
    return NUMPY


class _Source:
    """One source's stream of rows: its reader's batches, buffered, taken from the front."""

    def __init__(self, name: str, reader: Reader[Any], fmt: BatchFormat[Any]) -> None:
        self.name = name
        self.reader = reader
        self.fmt = fmt  # the reader's
        self.iterator: Iterator[Columns] | None = None
        self.buffers: collections.deque[tuple[ReaderState, Columns, int]] = collections.deque()
        self.head = 0  # rows of buffers[0] already taken
        self.available = 0  # rows buffered and not taken
        self.last: tuple[ReaderState, int] | None = None  # the batch taken last: its state before, its rows
        self.ended = False
        self.first_seen = False

    def open(self, state: ReaderState | None, skip: int) -> None:
        """Starts the reader at ``state`` (None: where it stands) and drops the ``skip`` rows already used."""
        self.close()
        if state is not None:
            self.reader.load_state_dict(state.to_dict())
        self.iterator = iter(self.reader)
        self.buffers.clear()
        self.head = self.available = 0
        self.last = None
        self.ended = False
        if skip:
            if self.fill(skip) < skip:
                raise ValueError(
                    f"mixture state: source {self.name!r} is said to have used {skip} rows past its saved position, "
                    f"but it has only {self.available} there: the state does not belong to these sources"
                )
            self.cut([skip])

    def fill(self, rows: int) -> int:
        """Reads until ``rows`` rows are buffered or the reader ends; the rows buffered."""
        reader, buffers, iterator = self.reader, self.buffers, self.iterator
        assert iterator is not None
        while self.available < rows and not self.ended:
            before = reader.state()
            batch = next(iterator, None)
            if batch is None:
                self.ended = True
                break
            count = self.fmt.rows(batch)
            buffers.append((before, batch, count))
            self.available += count
        return self.available

    def anchor(self) -> tuple[ReaderState, int]:
        """This stream's position: the reader state before the front batch, and the rows taken of it.

        With nothing buffered, the batch taken last, all its rows taken: not the reader's state
        after it, which after an epoch's last batch is the next epoch's start. Resumed from that,
        a source that ``"first_exhausted"`` holds to one epoch would have read the next one (its
        rows a second time in the mixture's epoch); resumed from the batch, it is exhausted.
        """
        if self.buffers:
            return self.buffers[0][0], self.head
        if self.last is not None:
            return self.last
        return self.reader.state(), 0

    def cut(self, counts: Sequence[int]) -> list[list[Piece]]:
        """Takes ``counts[i]`` rows for batch ``i``, as views of the buffered batches; they must be buffered."""
        buffers, head = self.buffers, self.head
        out: list[list[Piece]] = []
        for count in counts:
            pieces: list[Piece] = []
            while count:
                _, columns, rows = buffers[0]
                taken = min(count, rows - head)
                pieces.append((columns, head, head + taken))
                head += taken
                count -= taken
                if head == rows:
                    self.last = buffers.popleft()[0], rows
                    head = 0
            out.append(pieces)
        self.available -= sum(counts)
        self.head = head
        return out

    def close(self) -> None:
        self.reader.close()
        self.iterator = None
        self.buffers.clear()
        self.head = self.available = 0
        self.last = None


@dataclasses.dataclass
class _Group:
    """Batches assembled together, and what the position is after each of them.

    Attributes:
        epoch: Their epoch.
        first: Index of the first in the epoch.
        count: Batches the group yields.
        ends_epoch: Whether the epoch ends after them.
        anchors: Each source's position before the group.
        cumsum: Rows each source gave, cumulated batch by batch: ``(count, sources)``.
        rows: Rows of what the group yields, in order: each batch's, or the chunk's.
        done: Batches of the group yielded so far.
    """

    epoch: int
    first: int
    count: int
    ends_epoch: bool
    anchors: list[tuple[ReaderState, int]]
    cumsum: np.ndarray
    rows: list[int]
    done: int = 0


@dataclasses.dataclass(frozen=True)
class MixIdentity:
    """What a mixture's position indexes, besides each source's own reader identity.

    Attributes:
        sources: The sources' names, in order.
        probabilities: Each source's share of the rows.
        stop: ``"first_exhausted"`` or ``"never"``.
        batch_size: Rows per batch.
        drop_last: Whether each epoch's short last batch is left out.
        num_epochs: Epochs per iteration (None: forever).
        rows_per_epoch: Rows per epoch with ``stop="never"``; None otherwise.
        source_column: The column naming each row's source; None for none.
        granularity: ``"row"`` or ``"batch"``: what the draws pick a source for.
        sequence: How the sources batch ``sequence=`` columns (:meth:`SequencePlan.describe`);
            None without them. With them, a source's ``skip`` counts its batches, not rows.
    """

    sources: tuple[str, ...]
    probabilities: tuple[float, ...]
    stop: Stop
    batch_size: int
    drop_last: bool
    num_epochs: int | None
    rows_per_epoch: int | None
    source_column: str | None
    granularity: Granularity = "row"
    sequence: str | None = None


@dataclasses.dataclass(frozen=True)
class MixerState:
    """Where a mixer stands.

    Its dict form, which goes into checkpoints::

        {"format": "sparkfeed.mixture", "version": 1,
         "identity": {"sources": ["a", "b"], "probabilities": [0.7, 0.3], "stop": "first_exhausted",
                      "batch_size": 32, "drop_last": false, "num_epochs": 2, "rows_per_epoch": null,
                      "source_column": null, "granularity": "row"},
         "seed": 7, "cur_shard": 0, "shard_count": 1, "epoch": 0, "batch": 12, "end_epoch": 2,
         "sources": {"a": {"reader": {...a reader state...}, "skip": 100},
                     "b": {"reader": {...}, "skip": 0}}}

    A source's entry is its reader's state (:class:`~sparkfeed.reader.state.ReaderState`) from
    before the batch it is being read from, and the rows of its stream used since.
    """

    identity: MixIdentity
    seed: int
    cur_shard: int
    shard_count: int
    epoch: int
    batch: int
    end_epoch: int | None
    sources: dict[str, tuple[ReaderState, int]]

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form (see the class docstring)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "identity": {**dataclasses.asdict(self.identity), "sources": list(self.identity.sources)}
            | {"probabilities": list(self.identity.probabilities)},
            "seed": self.seed,
            "cur_shard": self.cur_shard,
            "shard_count": self.shard_count,
            "epoch": self.epoch,
            "batch": self.batch,
            "end_epoch": self.end_epoch,
            "sources": {
                name: {"reader": state.to_dict(), "skip": skip} for name, (state, skip) in self.sources.items()
            },
        }

    @classmethod
    def from_dict(cls, data: object) -> MixerState:
        """A state from its dict form, every field checked.

        Raises:
            ValueError: ``data`` is not a mixture state this version wrote, or a field is missing,
                of the wrong type or out of range; the message names it.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a mixture state is a dict from state_dict(); got {type(data).__name__} {data!r:.80}")
        if data.get("format") != FORMAT:
            hint = (
                ": this is the state of a single converter's loader, not of a mixture"
                if data.get("format") == "sparkfeed.reader"
                else ""
            )
            raise ValueError(
                f"not a sparkfeed mixture state (format {data.get('format')!r}, expected {FORMAT!r}){hint}"
            )
        if data.get("version") != VERSION:
            raise ValueError(
                f"mixture state version {data.get('version')!r} is unknown: this sparkfeed reads version {VERSION}"
            )
        what = "mixture state"
        check_keys(what, data, {f.name for f in dataclasses.fields(cls)} | {"format", "version"})
        identity = _identity(data["identity"])
        shard_count = int_field(data, "shard_count", 1, what)
        cur_shard = int_field(data, "cur_shard", 0, what)
        if cur_shard >= shard_count:
            raise ValueError(f"mixture state: cur_shard={cur_shard} is out of range for shard_count={shard_count}")
        epoch, end_epoch = int_field(data, "epoch", 0, what), optional_int_field(data, "end_epoch", 0, what)
        if end_epoch is not None and (identity.num_epochs is None or epoch > end_epoch):
            raise ValueError(f"mixture state: epoch={epoch} with end_epoch={end_epoch} is not a position of a mixer")
        sources = data["sources"]
        if not isinstance(sources, Mapping) or list(sources) != list(identity.sources):
            raise ValueError(
                f"mixture state: sources={sources!r:.120} is not allowed: it must map each of the sources "
                f"{list(identity.sources)} to its position"
            )
        return cls(
            identity=identity,
            seed=int_field(data, "seed", 0, what),
            cur_shard=cur_shard,
            shard_count=shard_count,
            epoch=epoch,
            batch=int_field(data, "batch", 0, what),
            end_epoch=end_epoch,
            sources={name: _source_position(name, entry) for name, entry in sources.items()},
        )


class Mixer(Generic[C]):
    """Batches whose rows come from several NumPy readers in seeded proportions.

    Iteration, ``len()``, ``state_dict()``, ``load_state_dict()`` and ``close()`` behave as a
    :class:`~sparkfeed.reader.Reader`'s: iterating runs ``num_epochs`` epochs and iterating again
    continues with the following ones; one iteration at a time.

    Epochs: with ``stop="first_exhausted"``, epoch ``e`` of the mixture reads epoch ``e`` of every
    source and ends with the first batch whose draw asks a source for more rows than it has left;
    that batch holds what the sources still have of their draws, and the rows the other sources did
    not give are not read in that epoch. With ``stop="never"``, the sources' readers repeat their
    own epochs independently (each reshuffled as usual) and an epoch of the mixture is
    ``rows_per_epoch`` rows.

    Args:
        sources: Each source's NumPy reader, built with ``num_epochs=1`` for ``"first_exhausted"``
            and None for ``"never"``, ``drop_last=False``, and this mixer's batch size.
        probabilities: Each source's share of the rows, in the sources' order.
        fmt: The batches' array type.
        batch_size: Rows per batch.
        num_epochs: Epochs per iteration; None: forever.
        drop_last: Leave out each epoch's short last batch.
        stop: ``"first_exhausted"`` or ``"never"``.
        rows_per_epoch: Rows per epoch with ``stop="never"``.
        seed: The seed of the draws.
        seeded: Whether the user chose ``seed`` (a state of another seed is then refused).
        source_column: Also give each batch this int32 column: the index of each row's source.
        chunk_batches: Yield chunks of this many whole batches (the TF dataset cuts them itself).
        granularity: ``"row"``: each batch's rows are drawn from the sources and copied together.
            ``"batch"``: each batch is drawn from one source, and is a view of that source's
            chunk where it lies inside one (no copy).
        source_formats: Each source reader's format, by name, from :func:`source_format`; None:
            NumPy for all (only right where that function says so).
        progress: Show a bar per epoch.
        shard: ``(cur_shard, shard_count)`` of the sources' readers.
        sequence: How the sources batch their ``sequence=`` columns (the first source's plan):
            each source's reader pads, buckets or packs its own batches, and each draw takes the
            next whole batch of the source it picks (see :class:`SourceBatches`). The draws then
            count batches, not rows: ``rows_per_epoch`` is an epoch of ``ceil(rows_per_epoch /
            batch_size)`` batches, and ``drop_last`` is the sources' (they leave out their short
            last batches). Needs ``granularity="batch"`` and ``chunk_batches=1``.
    """

    def __init__(
        self,
        sources: Mapping[str, Reader[Any]],
        probabilities: Sequence[float],
        fmt: BatchFormat[C],
        *,
        batch_size: int,
        num_epochs: int | None,
        drop_last: bool,
        stop: Stop,
        rows_per_epoch: int | None,
        seed: int,
        seeded: bool,
        source_column: str | None = None,
        chunk_batches: int = 1,
        granularity: Granularity = "row",
        source_formats: Mapping[str, BatchFormat[Any]] | None = None,
        progress: bool = False,
        shard: tuple[int, int] = (0, 1),
        sequence: SequencePlan | None = None,
    ) -> None:
        if stop not in STOPS:
            raise ValueError(f"stop={stop!r} is not allowed: it must be one of {STOPS}")
        formats = dict(source_formats or {})
        self._sources = [_Source(name, reader, formats.get(name, NUMPY)) for name, reader in sources.items()]
        # Sources that hand out batches in this mixer's format: cut into views, never joined in NumPy.
        self._converted = granularity == "batch" and chunk_batches == 1
        for source in self._sources:
            if isinstance(source.fmt, SourceFormat) != self._converted or (
                isinstance(source.fmt, SourceBatches) != (sequence is not None)
            ):
                raise ValueError(f"mix source {source.name!r}: its reader's format is not source_format()'s")
        self._sequence = sequence
        self._fmt = fmt
        self._num_epochs = num_epochs
        self._stop: Stop = stop
        rows_per_epoch = rows_per_epoch if stop == "never" else None
        # What the draws count: rows; or with sequences, the sources' whole batches (a unit each).
        self._batch_size, self._drop_last, self._rows_per_epoch = batch_size, drop_last, rows_per_epoch
        if sequence is not None:
            units = None if rows_per_epoch is None else -(-rows_per_epoch // batch_size)
            self._batch_size, self._drop_last, self._rows_per_epoch = 1, False, units
        self._seeded = seeded
        self._source_column = source_column
        self._chunk_batches = chunk_batches
        self._progress = progress
        self._counts = Counters()  # the mixture's batches and the loop's waits, since it was made
        self._shard = shard
        self._identity = MixIdentity(
            sources=tuple(sources),
            probabilities=tuple(float(p) for p in probabilities),
            stop=stop,
            batch_size=batch_size,
            drop_last=drop_last,
            num_epochs=num_epochs,
            rows_per_epoch=rows_per_epoch,
            source_column=source_column,
            granularity=granularity,
            sequence=None if sequence is None else sequence.describe(),
        )
        self._draws = self._make_draws(seed)
        self._specs = _common_columns(self._sources, source_column, sequence)
        self._signature: tuple[str, Signature] | None = None  # the first source batch's, with a transform
        self._kinds: dict[str, str] = {}  # what its object columns hold (see _object_kinds)
        # The sources' columns in one order, whichever source a block starts with.
        self._names = None if self._specs is None else [name for name in self._specs if name != source_column]
        if sequence is not None and self._names is not None:
            self._names = sequence.outputs(self._names)
        for source in self._sources:
            if isinstance(source.fmt, SourceFormat):
                source.fmt.names = self._names
        self._group_size = (
            chunk_batches if chunk_batches > 1 else 1 if sequence is not None else _group_size(self._specs, batch_size)
        )
        # The position between iterations; during one, the live group says it (see _where).
        self._epoch, self._batch = 0, 0
        self._pending: dict[str, SourcePosition] = dict.fromkeys(sources)
        self._group: _Group | None = None
        self._end: int | None = None
        self._resumed = False
        self._supplies: tuple[int, list[int]] | None = None  # a resharded epoch's rows per source, see len()
        self._iterations: Iterations[C] = Iterations()

    def _make_draws(self, seed: int) -> Draws:
        return Draws(
            seed,
            self._identity.probabilities,
            self._batch_size,
            self._stop,
            self._rows_per_epoch,
            self._drop_last,
            self._identity.granularity,
        )

    # ------------------------------------------------------------------ what it yields

    @property
    def names(self) -> tuple[str, ...]:
        """The sources' names, in order: a row's ``source_column`` value indexes this."""
        return self._identity.sources

    @property
    def columns(self) -> dict[str, ColumnSpec] | None:
        """What each column of a batch will be, known without reading; None when a transform decides."""
        return None if self._specs is None else dict(self._specs)

    @property
    def sequence(self) -> SequencePlan | None:
        """How the sources batch ``sequence=`` columns; None without them."""
        return self._sequence

    @property
    def filters_rows(self) -> bool:
        """Whether a source's filters, predicate or transform may change its row count: lengths are then estimates."""
        return any(source.reader.filters_rows for source in self._sources)

    def __len__(self) -> int:
        """Batches left in the next iteration: exact unless :attr:`filters_rows`.

        Where a source filters rows, it is the count as if each source gave all its
        :attr:`Reader.num_rows <sparkfeed.reader.Reader.num_rows>`: with ``"first_exhausted"``
        an upper bound for filters and predicates, which only make a source run out sooner.
        """
        (start, _), end = self._iteration_range()
        if self._num_epochs is not None and end - start > COUNTED_EPOCHS:
            raise TypeError(too_many_epochs(end - start))
        count = self.batch_count(self._identity.batch_size, self._identity.drop_last)
        if count is None and self._num_epochs is not None:
            raise TypeError(
                "a mixture of sequence 'bucket' or 'pack' batches whose sources have filters, a predicate or a "
                "transform has no len(): how many batches those sources make depends on which rows there are and "
                "their lengths, known only as they are read"
            )
        if count is None:
            raise TypeError("a loader with num_epochs=None is infinite and has no len(); pass num_epochs")
        return count

    def batch_count(self, batch_size: int, drop_last: bool) -> int | None:
        """Batches of ``batch_size`` rows that the next iteration's epochs make; None when it has no end.

        None too past :data:`~sparkfeed.reader.engine.COUNTED_EPOCHS` epochs, each counted one by one.
        With ``stop="first_exhausted"`` each epoch's end follows from the draws and the sources'
        rows per epoch (see :meth:`__len__`). With sequences, the sources' own batches are
        counted (``batch_size`` and ``drop_last`` are theirs; bucketed or packed ones from their
        rows' lengths), and None where such a source filters rows (its count is unknown until read).
        """
        if self._num_epochs is None:
            return None
        if self._sequence is not None:
            if not self._counts_sequences:
                return None
            batch_size, drop_last = 1, False  # the draws count the sources' batches
        (start, first), end = self._iteration_range()
        if end - start > COUNTED_EPOCHS:
            return None  # each epoch's draws differ: counted one by one (see COUNTED_EPOCHS)
        epochs = range(start, end)
        return sum(batches_of(self._epoch_rows(e, first if e == start else 0), batch_size, drop_last) for e in epochs)

    @property
    def _counts_sequences(self) -> bool:
        """Whether each source of a sequence mixture can count its batches before reading (not when filtered)."""
        return all(s.reader.counts_batches or not s.reader.filters_rows for s in self._sources)

    def _epoch_rows(self, epoch: int, first: int) -> int:
        """Rows the mixer yields in ``epoch`` from its batch ``first`` on."""
        size = self._batch_size
        if self._stop == "never":
            assert self._draws.batches is not None
            rows = (self._draws.batches - 1) * size + self._draws.last_size if self._draws.batches else 0
            return max(0, rows - first * size)
        supplies = [source.reader.num_rows for source in self._sources]
        if self._supplies is not None and self._supplies[0] == epoch:  # resharded in this epoch
            supplies = list(self._supplies[1])
        if self._sequence is not None:  # in the sources' batches: bucketed or packed ones counted from their lengths
            own = self._identity.batch_size, self._identity.drop_last
            supplies = [
                batches_of(rows, *own) if source.reader.counts_batches else source.reader.epoch_batches(epoch)
                for rows, source in zip(supplies, self._sources, strict=True)
            ]
        end = self._draws.exhausted(epoch, supplies)
        last = 0 if self._drop_last else end.last_rows
        return max(0, (end.last - first) * size + last) if first <= end.last else 0

    def show_progress_in(self, batch_size: int | None, drop_last: bool = False) -> None:
        """Turns the ``progress=True`` bar off (None); the mixer counts its own batches in any case."""
        if batch_size is None:
            self._progress = False

    # ------------------------------------------------------------------ iteration

    def _iteration_range(self) -> tuple[tuple[int, int], int]:
        """``((epoch, batch), end epoch)`` of the next iteration."""
        epochs = self._num_epochs or 0
        if self._resumed:
            return (self._epoch, self._batch), self._end if self._end is not None else self._epoch + epochs
        epoch = self._where()[0] if self._end is None else self._end
        return (epoch, 0), epoch + epochs

    def __iter__(self) -> Iterator[C]:
        """A new iteration, continuing after the previous one.

        Raises:
            RuntimeError: Another iteration of this mixer is still active, or one closed from
                another thread has not ended.
        """
        self._iterations.claim()  # a closed one's cleanup closes the sources: before this one opens them
        (epoch, batch), end = self._iteration_range()
        if self._resumed:
            sources = dict(self._pending)
        else:
            where = self._where()[2]
            # A new epoch of "first_exhausted" starts every source afresh; "never" streams go on.
            sources = dict.fromkeys(where) if self._stop == "first_exhausted" else where
        # The position is the new iteration's only from its first batch (see _take_over): an
        # iterator made and dropped unadvanced (PyTorch Lightning probes a loader so), or one
        # whose first step raised, leaves the mixer where it was, resumed remainder included.
        last = None if self._num_epochs is None else end
        return self._iterations.start(lambda token: self._stream(epoch, batch, sources, last, token))

    def _take_over(
        self, token: object, epoch: int, batch: int, sources: dict[str, SourcePosition], end: int | None
    ) -> None:
        """Makes the iteration starting at ``(epoch, batch)`` the mixer's, unless it was closed meanwhile."""
        if self._iterations.owns(token):
            self._resumed = False
            self._group = None
            self._epoch, self._batch, self._pending, self._end = epoch, batch, sources, end

    def _open(self, positions: Mapping[str, SourcePosition], epoch: int) -> None:
        for source in self._sources:
            position = positions[source.name]
            if position is None and self._stop == "first_exhausted":
                source.open(_epoch_start(source.reader, epoch), 0)
            elif position is None:
                source.open(None, 0)
            else:
                source.open(*position)

    def _stream(
        self, start: int, first: int, positions: Mapping[str, SourcePosition], end: int | None, token: object
    ) -> Generator[C, None, None]:
        epochs = itertools.count(start) if end is None else range(start, end)
        bar: EpochBar | None = None
        varying = self._sequence is not None
        taken = False
        try:
            self._open(positions, start)
            for epoch in epochs:
                if epoch > start and self._stop == "first_exhausted":
                    self._open(dict.fromkeys(positions), epoch)
                batch = first if epoch == start else 0
                if self._progress:
                    total = (
                        None
                        if self.filters_rows or (self._sequence is not None and not self._counts_sequences)
                        else batches_of(self._epoch_rows(epoch, batch), self._batch_size, self._drop_last)
                    )
                    bar = EpochBar(epoch, total, self._shard)
                yielded = 0
                epoch_counts = Counters()
                width = -1  # bytes per row of the batches' fixed-size arrays, from the first one
                asked = time.perf_counter()
                while True:
                    group, parts = self._next_group(epoch, batch)
                    if not self._iterations.owns(token):
                        return  # closed from another thread while reading: what was read may be cut short
                    if not taken:
                        self._take_over(token, start, first, dict(positions), end)
                        taken = True
                    self._group = group
                    step = group.count if self._chunk_batches > 1 else 1
                    for part, rows in zip(parts, group.rows, strict=True):
                        group.done += step
                        if bar is not None:
                            bar.step(step, rows)
                        ready = time.perf_counter()
                        epoch_counts.batches += step
                        epoch_counts.rows += rows
                        if varying:  # sequences' batches vary in width: their bytes are counted one by one
                            epoch_counts.bytes += batch_bytes(part)
                        else:
                            if width < 0:
                                width = bytes_per_row(part, rows)
                            epoch_counts.bytes += rows * width
                        epoch_counts.wait_seconds += ready - asked
                        yield part
                        asked = time.perf_counter()
                        epoch_counts.step_seconds += asked - ready
                    yielded += group.count
                    batch = group.first + group.count
                    if group.ends_epoch:
                        break
                if bar is not None:
                    bar.close()
                    bar = None
                self._end_epoch(epoch, epoch_counts)
                if not yielded and end is None and epoch > start:
                    raise ValueError(
                        "a whole epoch of the mixture gave no batch (a source has no rows, filters or a transform "
                        "dropped them, or drop_last left out the one short batch), so num_epochs=None would wait "
                        "forever: check the sources, or pass a finite num_epochs"
                    )
            if not taken:  # no epoch to read
                self._take_over(token, start, first, dict(positions), end)
        finally:
            if bar is not None:
                bar.close()
            for source in self._sources:
                source.close()

    def _end_epoch(self, epoch: int, counts: Counters) -> None:
        """Adds the epoch's counts to the mixture's and logs whether the loop waited on its input."""
        self._counts.add(counts)
        if counts.batches and log.isEnabledFor(logging.INFO):
            report = self.stats(counts)
            log.info(
                "mixture epoch %d: %d batches, %s", epoch, counts.batches, verdict(report, report["workers"], "thread")
            )

    def stats(self, counts: Counters | None = None) -> dict[str, Any]:
        """Whether the input is the bottleneck, as :meth:`sparkfeed.reader.Reader.stats`, for the mixture.

        The loop's waits are the mixture's (drawing, reading and assembling); the workers are
        every source's, and so is their busy time. Counted per group of assembled batches,
        and at each epoch's end (an epoch left early is not counted).
        """
        counts = counts or self._counts
        sources = [source.reader.stats() for source in self._sources]
        total = Counters(**{**dataclasses.asdict(counts), "busy_seconds": sum(s["busy_seconds"] for s in sources)})
        return total.report(sum(s["workers"] for s in sources))

    def _next_group(self, epoch: int, first: int) -> tuple[_Group, list[C]]:
        """Assembles the batches from ``first`` on: the group, and the batches (or chunk) it yields."""
        sources = self._sources
        counts = self._draws.counts(epoch, first, self._group_size)
        ends = self._draws.batches is not None and first + len(counts) >= self._draws.batches
        if len(counts):
            needed = counts.sum(axis=0)
            available = np.array([source.fill(int(n)) for source, n in zip(sources, needed, strict=True)])
            if (available < needed).any():
                if self._stop == "never":
                    short = [s.name for s, a, n in zip(sources, available, needed, strict=True) if a < n]
                    raise RuntimeError(f"mix sources {short} ended, but with stop='never' they repeat forever")
                counts = _truncate(counts, available, self._drop_last)
                ends = True
        anchors = [source.anchor() for source in sources]
        sizes = counts.sum(axis=1)
        rows = [int(sizes.sum())] if self._chunk_batches > 1 and len(counts) else sizes.tolist()
        group = _Group(epoch, first, len(counts), ends, anchors, counts.cumsum(axis=0), rows)
        if not len(counts):
            return group, []
        pieces = [source.cut(counts[:, k].tolist()) for k, source in enumerate(sources)]
        for source in sources:
            if not source.first_seen:
                self._check_first(source, pieces)
        if self._sequence is not None:  # each draw took one whole batch of its source: handed on as it is
            parts = [pieces[k][i][0][0] for i, k in enumerate(counts.argmax(axis=1).tolist())]
            group.rows = [self._fmt.rows(part) for part in parts]
            if self._group_size == 1:
                self._group_size = _group_size_of(batch_bytes(parts[0]), 1)
            return group, parts
        if self._converted:
            return group, self._whole_batches(counts, pieces)
        block = self._assemble(first, counts, pieces)
        chunk = self._fmt.convert(block)
        if self._chunk_batches > 1:
            return group, [chunk]
        size = self._batch_size
        full = len(sizes) if sizes[-1] == size else len(sizes) - 1
        parts = self._fmt.split(chunk, 0, size, full) if full else []
        if full < len(sizes):
            parts += self._fmt.split(chunk, full * size, int(sizes[-1]), 1)
        return group, parts

    def _assemble(self, first: int, counts: np.ndarray, pieces: list[list[list[Piece]]]) -> Columns:
        """One block of the group's rows, batch after batch; one copy per column.

        Inside a batch the rows come source after source: in the mixture's order in even batches,
        in reverse in odd ones. So the last source of a batch is the first of the next, and its
        rows of the two batches, consecutive in its stream, are one piece to copy: a group of
        two sources is about one piece per batch rather than two, and a piece costs each column a
        slice and a step of ``np.concatenate``, more than its bytes.
        """
        sources = len(self._sources)
        forward, backward = list(range(sources)), list(range(sources - 1, -1, -1))
        plan: list[Piece] = []
        for i in range(len(counts)):
            for k in forward if (first + i) % 2 == 0 else backward:
                for piece in pieces[k][i]:
                    last = plan[-1] if plan else None
                    if last is not None and last[0] is piece[0] and last[2] == piece[1]:
                        plan[-1] = (last[0], last[1], piece[2])
                    else:
                        plan.append(piece)
        names = self._names or []
        block = {name: np.concatenate([columns[name][a:b] for columns, a, b in plan]) for name in names}
        if self._source_column is not None:
            order = np.array([forward if (first + i) % 2 == 0 else backward for i in range(len(counts))], np.int32)
            block[self._source_column] = np.repeat(order.ravel(), np.take_along_axis(counts, order, axis=1).ravel())
        if self._chunk_batches == 1 and self._group_size == 1 and plan:
            rows = len(next(iter(block.values())))
            self._group_size = _group_size_of(sum(a.nbytes for a in block.values()) / max(rows, 1), self._batch_size)
        return block

    def _whole_batches(self, counts: np.ndarray, pieces: list[list[list[Piece]]]) -> list[C]:
        """The batches of a group whose batches each come from one source, without a copy where possible.

        The sources' chunks are in this mixer's format already (see :class:`SourceFormat`). A
        full batch that lies inside one chunk is a view of it, as a single converter's batches are
        views of its chunks: a source's batches in the group are consecutive rows of its stream,
        so each run of them inside one chunk is cut by one ``split`` (a torch split costs a few
        microseconds per column, however many views it makes). Only a batch that straddles two
        chunks is copied. Views are cut for this group only: kept for later groups, thousands of
        tensors would outlive their batches and Python's garbage collector would scan them again
        and again (measured: it doubled the loop's time in torch).
        """
        fmt, size = self._fmt, self._batch_size
        which = counts.argmax(axis=1).tolist()
        parts: list[Any] = [None] * len(which)
        runs: list[tuple[Any, int, list[int]]] = []  # a chunk, the run's first row, its batches' places
        for source, mine in enumerate(pieces):
            for i, batch in enumerate(mine):
                if which[i] != source:
                    continue
                if len(batch) == 1 and batch[0][2] - batch[0][1] == size:
                    chunk, start, _ = batch[0]
                    last = runs[-1] if runs else None
                    if last is not None and last[0] is chunk and start == last[1] + size * len(last[2]):
                        last[2].append(i)
                    else:
                        runs.append((chunk, start, [i]))
                else:
                    parts[i] = fmt.concat([fmt.split(chunk, a, b - a, 1)[0] for chunk, a, b in batch])
        for chunk, start, slots in runs:
            for slot, view in zip(slots, fmt.split(chunk, start, size, len(slots)), strict=True):
                parts[slot] = view
        if self._group_size == 1 and parts:
            first = pieces[which[0]][0][0][0]
            self._group_size = _group_size_of(bytes_per_row(first, fmt.rows(first)), size)
        return parts

    def _check_first(self, source: _Source, pieces: list[list[list[Piece]]]) -> None:
        """With a transform, the sources' columns are known when read: each source's first batch is compared."""
        source.first_seen = True
        if self._specs is not None:
            return
        first = next((p for per_batch in pieces[self._sources.index(source)] for p in per_batch), None)
        if first is None:
            source.first_seen = False
            return
        column = self._source_column
        if self._converted:  # its format added the source column, where the source had none of that name
            signature = source.fmt.signature(first[0])
        else:
            signature = numpy_signature(first[0])
            if column is not None and column in signature:
                raise ValueError(
                    f"mix: source_column={column!r} is also a column of source {source.name!r}: "
                    "choose another name for the column of sources"
                )
        if self._sequence is not None:  # padded widths vary from batch to batch
            varying = {output for plan in self._sequence.columns for output in plan.outputs()}
            signature = {name: (dtype, () if name in varying else shape) for name, (dtype, shape) in signature.items()}
        if self._signature is None:
            self._signature = (source.name, signature)
            self._kinds = _object_kinds(first[0])
            self._names = [name for name in signature if name != column]
            return
        _compare(self._signature[0], self._signature[1], source.name, signature)
        kinds = _object_kinds(first[0])
        for name in sorted(self._kinds.keys() & kinds.keys()):
            if self._kinds[name] != kinds[name]:
                raise ValueError(
                    f"mix: column {name!r} holds {self._kinds[name]} in source {self._signature[0]!r} but "
                    f"{kinds[name]} in source {source.name!r} (after the transform); {_ADVICE}"
                )

    # ------------------------------------------------------------------ state

    def _where(self) -> tuple[int, int, dict[str, SourcePosition]]:
        """``(epoch, batch, each source's position)`` after the last batch yielded."""
        group = self._group
        if group is None:
            return self._epoch, self._batch, dict(self._pending)
        names = self._identity.sources
        if group.done >= group.count and group.ends_epoch:
            if self._stop == "first_exhausted":
                return group.epoch + 1, 0, dict.fromkeys(names)
            epoch, batch = group.epoch + 1, 0
        else:
            epoch, batch = group.epoch, group.first + group.done
        used = group.cumsum[group.done - 1] if group.done else np.zeros(len(names), dtype=np.int64)
        return (
            epoch,
            batch,
            {
                name: (state, skip + int(extra))
                for name, (state, skip), extra in zip(names, group.anchors, used, strict=True)
            },
        )

    def state(self) -> MixerState:
        """Where this mixer stands, as a :class:`MixerState`."""
        epoch, batch, positions = self._where()
        sources: dict[str, tuple[ReaderState, int]] = {}
        for source in self._sources:
            position = positions[source.name]
            if position is None:
                start = _epoch_start(source.reader, epoch) if self._stop == "first_exhausted" else source.reader.state()
                position = (start, 0)
            sources[source.name] = position
        return MixerState(
            identity=self._identity,
            seed=self._draws.seed,
            cur_shard=self._shard[0],
            shard_count=self._shard[1],
            epoch=epoch,
            batch=batch,
            end_epoch=self._end,
            sources=sources,
        )

    def state_dict(self) -> dict[str, Any]:
        """Where this mixer stands, as plain JSON-able data (see :class:`MixerState`): save it with the model."""
        return self.state().to_dict()

    def load_state_dict(self, state: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
        """Continues where a saved mixer stopped: the next batches are exactly those that remained.

        Ends this mixer's current iteration, if any. The state's format, identity, shard and seed
        and each source's reader identity are checked before anything changes; the sources'
        positions are then checked by their readers.

        Args:
            state: This shard's saved state; or the states of every shard of a run, which also
                allows another ``shard_count`` now (see :meth:`_load_every_shard`).

        Raises:
            ValueError: The state is malformed, or was saved with other sources, weights or loader
                arguments, by another shard or with another seed; the message names the field.
        """
        if not isinstance(state, Mapping):
            if isinstance(state, Sequence) and not isinstance(state, str | bytes):
                self._load_every_shard(state)
                return
            raise ValueError(
                f"load_state_dict takes a dict or a list of dicts from state_dict(), got {type(state).__name__}"
            )
        saved = MixerState.from_dict(state)
        _same("", saved.identity, self._identity, "resume with the same sources, weights and loader arguments")
        if (saved.cur_shard, saved.shard_count) != self._shard:
            raise ValueError(
                f"this state was saved by shard {saved.cur_shard} of {saved.shard_count}, but this mixture is shard "
                f"{self._shard[0]} of {self._shard[1]}: pass the list of every shard's state"
            )
        if self._seeded and saved.seed != self._draws.seed:
            raise ValueError(f"this state was saved with seed={saved.seed}, this mixture has seed={self._draws.seed}")
        for source in self._sources:
            reader_state = saved.sources[source.name][0]
            _same(f"source {source.name!r}: ", reader_state.identity, source.reader.state().identity, "")
            if (reader_state.cur_shard, reader_state.shard_count) != self._shard:
                raise ValueError(f"source {source.name!r}: its state was saved by another shard")
        self.close()
        for source in self._sources:  # the readers check the rest (segments, offsets) before the mixer changes
            source.reader.load_state_dict(saved.sources[source.name][0].to_dict())
        if saved.seed != self._draws.seed:
            self._draws = self._make_draws(saved.seed)
        self._group = None
        self._epoch, self._batch, self._pending = saved.epoch, saved.batch, dict(saved.sources)
        self._end = saved.end_epoch
        # A state saved once its iteration had finished resumes as that mixer goes on: with the
        # next iteration's epochs, not with what remains of the finished one (nothing).
        self._resumed = saved.end_epoch is None or saved.epoch < saved.end_epoch
        self._supplies = None

    def _load_every_shard(self, states: Sequence[Any]) -> None:
        """Continues from the states of every shard of a run, saved at the same step, on any shard count.

        Every rank of a mixture stands at the same batch of the same epoch (the draws are the
        same everywhere), so the mixture goes on from there, and each source's rest of the epoch
        is resharded as a single reader's is: each old shard's position becomes a reader state
        alone (its reader state moved on by the rows used since), and the source's reader splits
        what all of them had left among the new shards, no row repeated or lost (see
        :func:`~sparkfeed.reader.state.reshard`). The new shards hold equal rows, so they end
        the epoch after the same batch. Positions must count rows: refused with a source's
        filters, predicate or transform, and for mixtures of sequences (whose positions count
        batches).
        """
        if not states:
            raise ValueError("no states given: pass this shard's state, or the list of every shard's state")
        saved = []
        for number, item in enumerate(states):
            if not isinstance(item, Mapping):
                raise ValueError(f"state {number} of the list is not a dict from state_dict(): {item!r:.80}")
            saved.append(MixerState.from_dict(item))
        for one in saved:
            _same("", one.identity, self._identity, "resume with the same sources, weights and loader arguments")
        ordered = sorted(saved, key=lambda one: one.cur_shard)
        old_count = ordered[0].shard_count
        shards = [one.cur_shard for one in ordered]
        if shards != list(range(old_count)) or any(one.shard_count != old_count for one in ordered):
            counts = sorted({one.shard_count for one in ordered})
            raise ValueError(f"expected the states of all {old_count} shards, got shards {shards} of counts {counts}")
        steps = [(one.seed, one.epoch, one.batch, one.end_epoch) for one in ordered]
        if len(set(steps)) != 1:
            raise ValueError(
                f"the shards' states are from different steps ((seed, epoch, batch, end_epoch) by shard: {steps}); "
                "save them at the same step"
            )
        first = ordered[0]
        if old_count == self._shard[1]:  # the same shards: each continues from its own state
            self.load_state_dict(ordered[self._shard[0]].to_dict())
            return
        if self._seeded and first.seed != self._draws.seed:
            raise ValueError(f"this state was saved with seed={first.seed}, this mixture has seed={self._draws.seed}")
        if self._sequence is not None:
            raise ValueError(
                "a mixture of sequences resumes on the shard it was saved on (its sources' positions count batches, "
                "which do not split among other shards): pass this shard's state"
            )
        moved: dict[str, list[ReaderState]] = {}
        for source in self._sources:
            moved[source.name] = []
            for one in ordered:
                reader_state, skip = one.sources[source.name]
                _same(f"source {source.name!r}: ", reader_state.identity, source.reader.state().identity, "")
                try:
                    moved[source.name].append(source.reader.state_after(reader_state, skip))
                except ValueError as error:
                    raise ValueError(f"source {source.name!r} cannot be resharded: {error}") from None
        self.close()
        for source in self._sources:  # its reader checks and reshards the rest of the epoch
            source.reader.load_state_dict([state.to_dict() for state in moved[source.name]])
        if first.seed != self._draws.seed:
            self._draws = self._make_draws(first.seed)
        self._group = None
        self._epoch, self._batch, self._end = first.epoch, first.batch, first.end_epoch
        self._pending = {source.name: (source.reader.state(), 0) for source in self._sources}
        # States saved once their iteration had finished resume as the uninterrupted mixers go on,
        # as on the same shard count and as a reader's: with the next iteration's epochs, not with
        # an empty iteration (a training loop's whole epoch of nothing). Those of "first_exhausted"
        # start every source's next epoch afresh; those of "never" go on where the sources stood.
        finished = first.end_epoch is not None and first.epoch >= first.end_epoch
        if finished and self._stop == "first_exhausted":
            self._pending = dict.fromkeys(self._identity.sources)
        self._resumed = not finished
        self._supplies = None
        if self._stop == "first_exhausted" and not finished:
            # This epoch's sources hold what the old shards left, split: for len(), what each
            # would have held from the epoch's start to leave that after the batches drawn so far.
            drawn = self._draws.counts(first.epoch, 0, first.batch).sum(axis=0)
            left = [source.reader.batch_count(1, False) for source in self._sources]
            if all(rows is not None for rows in left):
                self._supplies = (first.epoch, [int(d) + int(r or 0) for d, r in zip(drawn, left, strict=True)])

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Ends the current iteration, if any, and stops every source's reader threads; safe from any thread."""
        self._iterations.close(self._close_sources)

    def _close_sources(self) -> None:
        for source in self._sources:
            source.reader.close()

    def __enter__(self) -> Mixer[C]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------------- helpers


def _truncate(counts: np.ndarray, available: np.ndarray, drop_last: bool) -> np.ndarray:
    """The group's counts cut at the first batch that asks a source for more rows than it has.

    That batch, the epoch's last, takes what is left (and is left out with ``drop_last``, or when
    nothing is left).
    """
    total = counts.cumsum(axis=0)
    last = int((total > available).any(axis=1).argmax())
    before = total[last - 1] if last else np.zeros_like(available)
    out = counts[: last + 1].copy()
    out[last] = np.minimum(out[last], available - before)
    if drop_last or not out[last].sum():
        out = out[:last]
    return out


def _epoch_start(reader: Reader[Columns], epoch: int) -> ReaderState:
    """The state of ``reader`` at the start of its ``epoch``, in an iteration of that one epoch."""
    return dataclasses.replace(reader.state(), epoch=epoch, segment=0, offset=0, end_epoch=epoch + 1, segments=None)


def _group_size_of(row_bytes: float, batch_size: int) -> int:
    return int(max(1, min(MAX_GROUP, GROUP_BYTES // max(1.0, row_bytes * batch_size))))


def _group_size(specs: Mapping[str, ColumnSpec] | None, batch_size: int) -> int:
    """Batches per group from the columns' sizes; 1 until the first block says, where a transform decides."""
    if specs is None:
        return 1
    row_bytes = sum(spec.numpy_dtype.itemsize * math.prod(spec.shape) for spec in specs.values())
    return _group_size_of(row_bytes, batch_size)


def _object_kinds(chunk: Any) -> dict[str, str]:
    """What the first value of each object column of a NumPy chunk holds: ``str``, ``bytes`` or an array's dtype.

    After a transform the columns' Arrow types are unknown, and NumPy's object dtype is the same
    for strings, bytes and arrays of any dtype: the first value of a source's first chunk tells
    them apart, one look a source. Other values (lists, None, empty arrays) are not compared.
    """
    kinds: dict[str, str] = {}
    if not isinstance(chunk, dict):  # a framework's format: its signature alone is compared
        return kinds
    for name, values in chunk.items():
        if not isinstance(values, np.ndarray) or values.dtype != object or not len(values):
            continue
        value = values[0]
        if isinstance(value, str):
            kinds[name] = "str"
        elif isinstance(value, bytes | bytearray):
            kinds[name] = "bytes"
        elif isinstance(value, np.ndarray) and value.size:
            kinds[name] = f"arrays of {value.dtype}"
    return kinds


def _values_of(spec: ColumnSpec) -> tuple[object, ...]:
    """What a column of a batch holds, which every source must give alike.

    ``numpy_dtype`` is ``object`` for strings, bytes and ragged arrays alike, so it alone would let
    one batch's column hold ``str`` from one source and ``bytes`` from another, or int32 arrays
    next to float64 ones. Strings of either Arrow width are the same Python ``str`` (binaries
    ``bytes``), and ragged arrays are compared by their nesting and their values. Timestamps are
    ``datetime64`` whether they are instants (Spark's ``TIMESTAMP``, in UTC) or wall-clock times
    (``TIMESTAMP_NTZ``): one column mixing both would read noon in Paris and noon in UTC alike.
    """
    if spec.kind == "object":
        arrow_type = spec.arrow_type
        return ("object", "str" if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) else "bytes")
    if spec.kind == "ragged":
        leaf = ColumnSpec.build(spec.name, leaf_type(spec.arrow_type), None)
        return ("ragged", list_depth(spec.arrow_type), _values_of(leaf))
    if pa.types.is_timestamp(spec.arrow_type):  # Spark's TIMESTAMP (instants, in UTC) or TIMESTAMP_NTZ (wall clock)
        return (spec.kind, spec.numpy_dtype, spec.shape, spec.arrow_type.tz is not None)
    return (spec.kind, spec.numpy_dtype, spec.shape)


def _describe(spec: ColumnSpec | tuple[str, tuple[int, ...]] | None) -> str:
    if spec is None:
        return "missing"
    if isinstance(spec, ColumnSpec):
        if spec.kind in ("ragged", "object"):  # their NumPy dtype is object, whatever they hold
            return f"{spec.kind} {spec.arrow_type}"
        if pa.types.is_timestamp(spec.arrow_type):  # datetime64 either way: instants or wall-clock times
            return f"{spec.numpy_dtype} from {spec.arrow_type} with per-row shape {spec.shape}"
        return f"{spec.numpy_dtype} with per-row shape {spec.shape}"
    return f"{spec[0]} with per-row shape {spec[1]}"


_ADVICE = (
    "the sources of a mixture must agree on the selected columns' names, dtypes and per-row shapes: select the "
    "columns they share with schema_fields, or make them agree with a transform"
)


def _common_columns(
    sources: Sequence[_Source], source_column: str | None, sequence: SequencePlan | None = None
) -> dict[str, ColumnSpec] | None:
    """The batches' columns: the first source's, which every other must match; None where a transform decides.

    A ``sequence=`` column must agree on its values' dtype and shape only: its rows' lengths are
    the source's own (one source's may all be alike where another's vary).
    """
    specs = [source.reader.columns for source in sources]
    if any(spec is None for spec in specs):
        return None
    first = specs[0]
    assert first is not None
    for source, spec in zip(sources[1:], specs[1:], strict=True):
        assert spec is not None
        theirs = source.reader.sequence if sequence is not None else None
        plans = {plan.name: plan for plan in theirs.columns} if theirs is not None else {}
        for name in [*first, *(n for n in spec if n not in first)]:
            was, now = first.get(name), spec.get(name)
            if name in plans and was is not None and now is not None:
                ours = next(plan for plan in sequence.columns if plan.name == name)  # type: ignore[union-attr]
                same = (ours.dtype, ours.inner) == (plans[name].dtype, plans[name].inner)
            else:
                same = was is not None and now is not None and _values_of(was) == _values_of(now)
            if not same:
                raise ValueError(
                    f"mix: column {name!r} is {_describe(was)} in source {sources[0].name!r} but {_describe(now)} in "
                    f"source {source.name!r}; {_ADVICE}"
                )
    if source_column is not None:
        if source_column in first:
            raise ValueError(
                f"mix: source_column={source_column!r} is also a column of the sources: choose another name for the "
                "column of sources"
            )
        return {**first, source_column: ColumnSpec(source_column, pa.int32(), "scalar")}
    return dict(first)


def _compare(first_name: str, first: Signature, name: str, now: Signature) -> None:
    for column in [*first, *(n for n in now if n not in first)]:
        was, is_now = first.get(column), now.get(column)
        if was != is_now:
            raise ValueError(
                f"mix: column {column!r} is {_describe(was)} in source {first_name!r} but {_describe(is_now)} in "
                f"source {name!r} (after the transform); {_ADVICE}"
            )


def _same(prefix: str, saved: MixIdentity | Identity, current: MixIdentity | Identity, hint: str) -> None:
    for field in dataclasses.fields(saved):
        old, new = getattr(saved, field.name), getattr(current, field.name)
        if old != new:
            advice = hint or (
                "it indexes another cache: resume on the sources it was saved on"
                if field.name in ("fingerprint", "num_rows")
                else "resume with the same loader arguments"
            )
            raise ValueError(
                f"{prefix}this state was saved with {field.name}={old!r}, this mixture has {new!r}; {advice}"
            )


def _identity(data: object) -> MixIdentity:
    what = "mixture state identity"
    if not isinstance(data, Mapping):
        raise ValueError(f"mixture state: identity={data!r:.80} is not allowed: it must be a dict")
    # States saved before granularity and sequence existed were all of row mixtures, without sequences.
    fields = {f.name for f in dataclasses.fields(MixIdentity)}
    check_keys(what, data, fields, optional=frozenset({"granularity", "sequence"}))
    sources, probabilities, stop = data["sources"], data["probabilities"], data["stop"]
    if not isinstance(sources, list | tuple) or not sources or not all(isinstance(s, str) for s in sources):
        raise ValueError(f"{what}: sources={sources!r:.80} is not allowed: it must be a list of names")
    if (
        not isinstance(probabilities, list | tuple)
        or len(probabilities) != len(sources)
        or not all(isinstance(p, float | int) and not isinstance(p, bool) for p in probabilities)
    ):
        raise ValueError(f"{what}: probabilities={probabilities!r:.80} is not allowed: one number per source")
    if stop not in STOPS:
        raise ValueError(f"{what}: stop={stop!r} is not allowed: it must be one of {STOPS}")
    drop_last = data["drop_last"]
    if not isinstance(drop_last, bool):
        raise ValueError(f"{what}: drop_last={drop_last!r} is not allowed: it must be a bool")
    column = data["source_column"]
    if column is not None and not isinstance(column, str):
        raise ValueError(f"{what}: source_column={column!r} is not allowed: it must be a string or null")
    granularity = data.get("granularity", "row")
    if granularity not in GRANULARITIES:
        raise ValueError(f"{what}: granularity={granularity!r} is not allowed: it must be one of {GRANULARITIES}")
    sequence = data.get("sequence")
    if sequence is not None and not isinstance(sequence, str):
        raise ValueError(f"{what}: sequence={sequence!r:.80} is not allowed: it must be a string or null")
    return MixIdentity(
        sources=tuple(sources),
        probabilities=tuple(float(p) for p in probabilities),
        stop=stop,
        batch_size=int_field(data, "batch_size", 1, what),
        drop_last=drop_last,
        num_epochs=optional_int_field(data, "num_epochs", 1, what),
        rows_per_epoch=optional_int_field(data, "rows_per_epoch", 1, what),
        source_column=column,
        granularity=granularity,
        sequence=sequence,
    )


def _source_position(name: str, entry: object) -> tuple[ReaderState, int]:
    if not isinstance(entry, Mapping) or set(entry) != {"reader", "skip"}:
        raise ValueError(f"mixture state: source {name!r} is {entry!r:.80}, not {{'reader': ..., 'skip': ...}}")
    return ReaderState.from_dict(entry["reader"]), int_field(entry, "skip", 0, f"mixture state, source {name!r}")
