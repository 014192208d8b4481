"""Which rows a reader reads, in which order: sharding by rows and per-epoch shuffling.

Sharding splits the dataset's rows, not its row groups, so a dataset with fewer row groups
than shards still gives every shard its share, and shards differ by at most one row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Piece:
    """Rows ``[start, stop)`` of one row group of one file: the unit of reading and shuffling."""

    file: int
    row_group: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        """Rows in the piece."""
        return self.stop - self.start


def shard_pieces(row_groups: Sequence[int | tuple[int, int, int]], cur_shard: int, shard_count: int) -> list[Piece]:
    """The pieces holding rows ``[cur·N/n, (cur+1)·N/n)`` of the dataset in file order.

    Args:
        row_groups: ``(file, row_group, rows)`` for every row group, in file order.
        cur_shard: This shard's index.
        shard_count: How many shards share the dataset.
    """
    groups = [g if isinstance(g, tuple) else (0, i, g) for i, g in enumerate(row_groups)]
    total = sum(rows for _, _, rows in groups)
    low, high = cur_shard * total // shard_count, (cur_shard + 1) * total // shard_count
    pieces = []
    offset = 0
    for file, row_group, rows in groups:
        start, stop = max(low, offset), min(high, offset + rows)
        if start < stop:
            pieces.append(Piece(file, row_group, start - offset, stop - offset))
        offset += rows
    return pieces


def epoch_order(pieces: Sequence[Piece], *, shuffle: bool, seed: int, epoch: int, shard: int) -> list[Piece]:
    """This epoch's piece order: a permutation drawn from ``(seed, epoch, shard)`` alone.

    The same seed gives the same order run after run; each epoch gets its own.
    """
    if not shuffle:
        return list(pieces)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch, shard)))
    return [pieces[i] for i in rng.permutation(len(pieces))]
