"""Row-based sharding and seeded per-epoch ordering."""

from __future__ import annotations

import numpy as np
import pytest

from sparkfeed.reader.plan import Piece, epoch_order, shard_pieces

GROUPS = [(0, 0, 100), (0, 1, 37), (1, 0, 5), (2, 0, 0), (2, 1, 58)]


def _rows(pieces: list[Piece]) -> list[tuple[int, int, int]]:
    return [(p.file, p.row_group, row) for p in pieces for row in range(p.start, p.stop)]


@pytest.mark.parametrize("shard_count", [1, 2, 3, 7, 200, 250])
def test_shards_cover_every_row_exactly_once_and_differ_by_at_most_one(shard_count: int) -> None:
    shards = [shard_pieces(GROUPS, shard, shard_count) for shard in range(shard_count)]
    every_row = [row for pieces in shards for row in _rows(pieces)]
    assert every_row == _rows([Piece(f, g, 0, n) for f, g, n in GROUPS])
    sizes = [sum(p.rows for p in pieces) for pieces in shards]
    assert max(sizes) - min(sizes) <= 1


def test_fewer_row_groups_than_shards_still_splits_rows() -> None:
    shards = [shard_pieces([(0, 0, 10)], shard, 4) for shard in range(4)]
    assert [[(p.start, p.stop) for p in pieces] for pieces in shards] == [[(0, 2)], [(2, 5)], [(5, 7)], [(7, 10)]]


def test_bare_row_counts_are_accepted() -> None:
    assert shard_pieces([3, 4], 0, 1) == [Piece(0, 0, 0, 3), Piece(0, 1, 0, 4)]


def test_epoch_order_is_seeded_per_epoch_and_shard() -> None:
    pieces = [Piece(0, g, 0, 10) for g in range(50)]
    first = epoch_order(pieces, shuffle=True, seed=7, epoch=0, shard=0)
    assert first == epoch_order(pieces, shuffle=True, seed=7, epoch=0, shard=0)
    assert sorted(first, key=lambda p: p.row_group) == pieces
    assert first != pieces
    assert first != epoch_order(pieces, shuffle=True, seed=7, epoch=1, shard=0)
    assert first != epoch_order(pieces, shuffle=True, seed=8, epoch=0, shard=0)
    assert first != epoch_order(pieces, shuffle=True, seed=7, epoch=0, shard=1)
    assert epoch_order(pieces, shuffle=False, seed=7, epoch=3, shard=0) == pieces


def test_epoch_orders_are_spread_over_permutations() -> None:
    pieces = [Piece(0, g, 0, 1) for g in range(4)]
    orders = {
        tuple(p.row_group for p in epoch_order(pieces, shuffle=True, seed=1, epoch=e, shard=0)) for e in range(200)
    }
    assert len(orders) == 24
    firsts = np.bincount([epoch_order(pieces, shuffle=True, seed=1, epoch=e, shard=0)[0].row_group for e in range(400)])
    assert firsts.min() > 60
