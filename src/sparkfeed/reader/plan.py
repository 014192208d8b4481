"""Which rows a reader reads, in which order: shards, per-epoch shuffles, and resumed epochs.

An epoch of one shard is a list of :class:`Segment` objects, a pure function of the dataset's row
groups and the plan parameters (seed, epoch, shard, shuffle settings). Nothing random happens
anywhere else, which is what makes runs reproducible and mid-epoch resume exact: a position in
an epoch is a segment index and a row offset, and the rows after it can be recomputed.

Sharding splits rows, not row groups: a dataset with fewer row groups than shards still gives
every shard its share. Shards are contiguous in file order and stay the same every epoch (as
in Petastorm and ``tf.data.Dataset.shard``); the order inside a shard changes every epoch. A
``shard_seed`` (Petastorm's) deals the row groups out in an order drawn from it instead of file
order, still split evenly by rows and still the same every epoch.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Sequence

import numpy as np

from sparkfeed.options import ShardPolicy


@dataclasses.dataclass(frozen=True)
class Piece:
    """Rows ``[start, stop)`` of one row group of one file: the unit of reading."""

    file: int
    row_group: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        """Rows in the piece."""
        return self.stop - self.start


@dataclasses.dataclass(frozen=True)
class Segment:
    """Output rows ``[start, stop)`` of some pieces, read, joined and optionally permuted.

    Attributes:
        pieces: Read in this order and concatenated.
        shuffle_key: Spawn key of the permutation applied to the joined rows; None keeps order.
        start: First output row kept (after the permutation).
        stop: End of the kept rows; None means all of them.
        seed: Seed of that permutation: the seed of the shard whose plan made the window. It
            travels with the segment because a resharded epoch joins the remainders of shards
            that each drew their own seed (``seed=None``); None where nothing is permuted.
    """

    pieces: tuple[Piece, ...]
    shuffle_key: tuple[int, ...] | None = None
    start: int = 0
    stop: int | None = None
    seed: int | None = None

    @property
    def source_rows(self) -> int:
        """Rows read from the pieces."""
        return sum(piece.rows for piece in self.pieces)

    @property
    def rows(self) -> int:
        """Rows the segment yields, for transforms that keep every row."""
        return (self.source_rows if self.stop is None else self.stop) - self.start

    def cut(self, start: int, stop: int) -> Segment:
        """Rows ``[start, stop)`` of this segment's output, as a segment."""
        return dataclasses.replace(self, start=self.start + start, stop=self.start + stop)


MIN_WINDOW_PIECES = 2
"""Pieces a shuffle window joins at least (fewer only where the shard has fewer)."""


@dataclasses.dataclass(frozen=True)
class PlanSpec:
    """Everything that decides a shard's epochs."""

    seed: int
    cur_shard: int = 0
    shard_count: int = 1
    shard_policy: ShardPolicy = "pad"
    shuffle_row_groups: bool = True
    shuffle_rows: int = 0
    """Minimum rows of a shuffle window (Petastorm's ``shuffling_queue_capacity``); 0 disables."""
    shard_seed: int | None = None
    """Seed of the order row groups are dealt to shards in; None: file order."""


def _pieces_in(groups: Sequence[tuple[int, int, int]], low: int, high: int) -> list[Piece]:
    pieces, offset = [], 0
    for file, row_group, rows in groups:
        start, stop = max(low, offset), min(high, offset + rows)
        if start < stop:
            pieces.append(Piece(file, row_group, start - offset, stop - offset))
        offset += rows
    return pieces


def shard_order(row_groups: Sequence[tuple[int, int, int]], shard_seed: int | None) -> list[tuple[int, int, int]]:
    """The row groups in the order they are dealt to shards: file order, or a permutation drawn from ``shard_seed``.

    It depends on the seed alone, never on the shard or the epoch, so every rank deals the same
    order and shards stay a partition of the rows.
    """
    if shard_seed is None:
        return list(row_groups)
    rng = np.random.default_rng(np.random.SeedSequence(shard_seed, spawn_key=(2,)))
    return [row_groups[i] for i in rng.permutation(len(row_groups))]


def shard_pieces(
    row_groups: Sequence[tuple[int, int, int]],
    cur_shard: int,
    shard_count: int,
    policy: ShardPolicy = "exact",
    shard_seed: int | None = None,
) -> list[Piece]:
    """The pieces of one shard: rows ``[cur·N/n, (cur+1)·N/n)`` of the dataset in file order.

    Shard sizes differ by at most one row. ``exact`` keeps them so (every row in exactly one
    shard: inference); ``pad`` adds one row to the short shards, wrapping around to the start
    of the dataset as PyTorch's ``DistributedSampler`` does, and ``drop`` removes one from the
    long shards, so that every shard yields the same number of batches and DDP/Horovod ranks
    never wait on each other.

    Args:
        row_groups: ``(file, row_group, rows)`` for every row group, in file order.
        cur_shard: This shard's index.
        shard_count: How many shards share the dataset.
        policy: ``pad``, ``drop`` or ``exact``.
        shard_seed: With more than one shard, the rows are those of :func:`shard_order`
            instead of file order.
    """
    if shard_count > 1:
        row_groups = shard_order(row_groups, shard_seed)
    total = sum(rows for _, _, rows in row_groups)
    low, high = cur_shard * total // shard_count, (cur_shard + 1) * total // shard_count
    if policy == "drop":
        high = low + total // shard_count
    pieces = _pieces_in(row_groups, low, high)
    if policy == "pad" and total and high - low < math.ceil(total / shard_count):
        wrapped = cur_shard % total
        pieces += _pieces_in(row_groups, wrapped, wrapped + 1)
    return pieces


def fresh_seed() -> int:
    """A seed for a run not given one: drawn once and kept in its state, so that a resumed run stays exact.

    63 bits, so that it is a non-negative int64 wherever it is stored (a JSON state, an int64 column).
    """
    return secrets.randbits(63)


def epoch_order(pieces: Sequence[Piece], *, shuffle: bool, seed: int, epoch: int, shard: int) -> list[Piece]:
    """This epoch's piece order: a permutation drawn from ``(seed, epoch, shard)`` alone."""
    if not shuffle:
        return list(pieces)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch, shard)))
    return [pieces[i] for i in rng.permutation(len(pieces))]


def epoch_segments(row_groups: Sequence[tuple[int, int, int]], spec: PlanSpec, epoch: int) -> list[Segment]:
    """One shard's epoch: its pieces in this epoch's order, grouped into shuffle windows.

    A window is the fewest consecutive pieces, and at least :data:`MIN_WINDOW_PIECES`, holding
    at least ``shuffle_rows`` rows; its rows are permuted together. A row group is read whole
    anyway, so a window of one would cost no memory beyond reading, but every batch would then
    come from one place of the dataset; two row groups drawn from anywhere in the shard make a
    batch span far more of it (the benchmark's "batch spread") for one more row group in memory.
    """
    pieces = shard_pieces(row_groups, spec.cur_shard, spec.shard_count, spec.shard_policy, spec.shard_seed)
    order = epoch_order(pieces, shuffle=spec.shuffle_row_groups, seed=spec.seed, epoch=epoch, shard=spec.cur_shard)
    if not spec.shuffle_rows:
        return [Segment((piece,)) for piece in order]
    segments: list[Segment] = []
    window: list[Piece] = []
    for piece in order:
        window.append(piece)
        if len(window) >= MIN_WINDOW_PIECES and sum(p.rows for p in window) >= spec.shuffle_rows:
            segments.append(Segment(tuple(window), (epoch, spec.cur_shard, len(segments)), seed=spec.seed))
            window = []
    if window:
        segments.append(Segment(tuple(window), (epoch, spec.cur_shard, len(segments)), seed=spec.seed))
    return segments


def permutation(seed: int, key: tuple[int, ...], rows: int) -> np.ndarray:
    """The permutation of a shuffle window, from the seed and the window's key alone."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(*key, 1))).permutation(rows)


def remainder(segments: Sequence[Segment], segment: int, offset: int) -> list[Segment]:
    """The segments left after ``offset`` output rows of segment number ``segment``."""
    if segment >= len(segments):
        return []
    first = segments[segment]
    rest = [first.cut(offset, first.rows)] if offset < first.rows else []
    return rest + list(segments[segment + 1 :])


def split_segments(
    segments: Sequence[Segment], cur_shard: int, shard_count: int, policy: ShardPolicy = "exact"
) -> list[Segment]:
    """Rows ``[cur·R/n, (cur+1)·R/n)`` of a segment list, cutting segments where needed.

    Used to hand the rest of an epoch to a different number of shards: the union of the old
    shards' remainders is split again, so no row is repeated or lost (for ``exact``).
    """
    total = sum(s.rows for s in segments)
    low, high = cur_shard * total // shard_count, (cur_shard + 1) * total // shard_count
    if policy == "drop":
        high = low + total // shard_count
    out: list[Segment] = []
    offset = 0
    for segment in segments:
        start, stop = max(low, offset), min(high, offset + segment.rows)
        if start < stop:
            out.append(segment.cut(start - offset, stop - offset))
        offset += segment.rows
    if policy == "pad" and total and high - low < math.ceil(total / shard_count):
        out += split_segments(segments, cur_shard % total, total, "exact")  # one wrapped row
    return out


def merge_adjacent(segments: Sequence[Segment]) -> list[Segment]:
    """Consecutive cuts of one window that meet, joined again into one segment.

    A reshard cuts windows at the new shard boundaries; where no row was consumed in between,
    the next reshard puts the two cuts side by side again, and joining them keeps a state from
    growing with every reshard that changes nothing.
    """
    out: list[Segment] = []
    for segment in segments:
        last = out[-1] if out else None
        if (
            last is not None
            and last.stop is not None
            and last.stop == segment.start
            and (last.pieces, last.shuffle_key, last.seed) == (segment.pieces, segment.shuffle_key, segment.seed)
        ):
            out[-1] = dataclasses.replace(last, stop=segment.stop)
        else:
            out.append(segment)
    return out
