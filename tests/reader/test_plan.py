"""Row-based sharding with its three policies, seeded per-epoch ordering, shuffle windows, resharding."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparkfeed.reader.plan import (
    Piece,
    PlanSpec,
    Segment,
    epoch_order,
    epoch_segments,
    merge_adjacent,
    permutation,
    remainder,
    shard_order,
    shard_pieces,
    split_segments,
)

GROUPS = [(0, 0, 100), (0, 1, 37), (1, 0, 5), (2, 0, 0), (2, 1, 58)]
TOTAL = 200


def _rows(pieces: list[Piece]) -> list[tuple[int, int, int]]:
    return [(p.file, p.row_group, row) for p in pieces for row in range(p.start, p.stop)]


ALL_ROWS = _rows([Piece(f, g, 0, n) for f, g, n in GROUPS])


@pytest.mark.parametrize("shard_count", [1, 2, 3, 7, 200, 250])
def test_exact_shards_cover_every_row_once_and_differ_by_at_most_one(shard_count: int) -> None:
    shards = [shard_pieces(GROUPS, shard, shard_count, "exact") for shard in range(shard_count)]
    assert [row for pieces in shards for row in _rows(pieces)] == ALL_ROWS
    sizes = [sum(p.rows for p in pieces) for pieces in shards]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("shard_count", [1, 3, 7, 200, 250])
def test_pad_and_drop_give_every_shard_the_same_rows(shard_count: int) -> None:
    padded = [_rows(shard_pieces(GROUPS, s, shard_count, "pad")) for s in range(shard_count)]
    assert {len(rows) for rows in padded} == {math.ceil(TOTAL / shard_count)}
    counts = Counter(row for rows in padded for row in rows)
    assert set(counts) == set(ALL_ROWS)
    assert sum(counts.values()) - TOTAL == shard_count * math.ceil(TOTAL / shard_count) - TOTAL
    assert max(counts.values()) <= 1 + math.ceil(shard_count / TOTAL)
    dropped = [_rows(shard_pieces(GROUPS, s, shard_count, "drop")) for s in range(shard_count)]
    assert {len(rows) for rows in dropped} == {TOTAL // shard_count}
    assert len({row for rows in dropped for row in rows}) == sum(len(rows) for rows in dropped)


def test_fewer_row_groups_than_shards_still_splits_rows() -> None:
    shards = [shard_pieces([(0, 0, 10)], shard, 4, "exact") for shard in range(4)]
    assert [[(p.start, p.stop) for p in pieces] for pieces in shards] == [[(0, 2)], [(2, 5)], [(5, 7)], [(7, 10)]]


GROUP_LISTS = st.lists(st.integers(0, 30), min_size=1, max_size=12).map(
    lambda sizes: [(g // 4, g % 4, rows) for g, rows in enumerate(sizes)]
)


@given(GROUP_LISTS, st.integers(1, 6), st.sampled_from(["exact", "pad", "drop"]), st.integers(0, 2**32), st.data())
def test_property_shard_seed_shards_still_partition_the_rows_the_same_every_epoch(
    groups, shard_count: int, policy, shard_seed: int, data
) -> None:
    total = sum(rows for _, _, rows in groups)
    everything = _rows([Piece(f, g, 0, n) for f, g, n in groups])
    shards = [_rows(shard_pieces(groups, s, shard_count, policy, shard_seed)) for s in range(shard_count)]
    counts = Counter(row for rows in shards for row in rows)
    if policy == "exact":
        assert sorted(counts.elements()) == sorted(everything)
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    elif policy == "drop":
        assert {len(rows) for rows in shards} == {total // shard_count} and max(counts.values(), default=1) == 1
    elif total:
        assert {len(rows) for rows in shards} == {math.ceil(total / shard_count)} and set(counts) == set(everything)
    spec = PlanSpec(
        seed=data.draw(st.integers(0, 99)), shard_count=shard_count, shard_policy=policy, shard_seed=shard_seed
    )
    for shard in range(shard_count):  # every epoch reads the same rows of a shard, in its own order
        epochs = [epoch_segments(groups, dataclasses.replace(spec, cur_shard=shard), epoch) for epoch in range(3)]
        assert all(Counter(_rows([p for seg in e for p in seg.pieces])) == Counter(shards[shard]) for e in epochs)


def test_shard_seed_deals_row_groups_in_a_seeded_order_the_same_on_every_rank() -> None:
    groups = [(0, g, 10) for g in range(20)]
    assert shard_order(groups, None) == groups
    dealt = shard_order(groups, 7)
    assert dealt == shard_order(groups, 7) != groups and sorted(dealt) == groups
    assert shard_order(groups, 8) != dealt
    first = shard_pieces(groups, 0, 2, "exact", shard_seed=7)
    assert [p.row_group for p in first] == [g for _, g, _ in dealt[:10]]  # the first half of the dealt order
    assert shard_pieces(groups, 0, 2, "exact") == [Piece(0, g, 0, 10) for g in range(10)]  # None: file order
    assert shard_pieces(groups, 0, 1, "exact", shard_seed=7) == shard_pieces(groups, 0, 1, "exact")  # one shard


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


def test_shuffle_windows_hold_at_least_the_capacity_and_two_pieces() -> None:
    spec = PlanSpec(seed=3, shuffle_rows=60, shuffle_row_groups=False, shard_policy="exact")
    segments = epoch_segments(GROUPS, spec, epoch=2)
    assert [s.source_rows for s in segments] == [137, 63]  # 100+37, then 5+58; the empty group is skipped
    assert [len(s.pieces) for s in segments] == [2, 2]
    assert [s.shuffle_key for s in segments] == [(2, 0, 0), (2, 0, 1)]
    spec = PlanSpec(seed=3, shuffle_rows=140, shuffle_row_groups=False, shard_policy="exact")
    assert [s.source_rows for s in epoch_segments(GROUPS, spec, epoch=0)] == [142, 58]  # the rest stays smaller
    assert epoch_segments(GROUPS, PlanSpec(seed=3, shuffle_row_groups=False), epoch=0)[0] == Segment(
        (Piece(0, 0, 0, 100),)
    )
    assert sorted(permutation(3, (2, 0, 0), 100)) == list(range(100))
    assert list(permutation(3, (2, 0, 0), 100)) != list(permutation(3, (2, 0, 1), 100))


def _expand(segments: list[Segment]) -> list[tuple]:
    """Rows a segment list yields, computed the way the engine does."""
    rows = []
    for segment in segments:
        joined = _rows(list(segment.pieces))
        if segment.shuffle_key is not None:
            joined = [joined[i] for i in permutation(5, segment.shuffle_key, len(joined))]
        rows += joined[segment.start : segment.stop]
    return rows


@pytest.mark.parametrize(("old", "new"), [(3, 2), (2, 5), (4, 4), (1, 3)])
def test_remainders_resplit_across_a_new_shard_count_lose_and_repeat_nothing(old: int, new: int) -> None:
    specs = [PlanSpec(seed=5, cur_shard=s, shard_count=old, shard_policy="exact", shuffle_rows=30) for s in range(old)]
    epochs = [epoch_segments(GROUPS, spec, epoch=1) for spec in specs]
    positions = [(min(1, len(e) - 1), 7) for e in epochs]  # part-way into each shard's epoch
    consumed = []
    rest = []
    for segments, (index, offset) in zip(epochs, positions, strict=True):
        done = _expand(segments)
        upto = sum(s.rows for s in segments[:index]) + offset
        consumed += done[:upto]
        rest += remainder(segments, index, offset)
        assert _expand(remainder(segments, index, offset)) == done[upto:]
    resumed = [split_segments(rest, s, new, "exact") for s in range(new)]
    resumed_rows = [row for segments in resumed for row in _expand(segments)]
    assert sorted(consumed + resumed_rows) == sorted(ALL_ROWS)
    sizes = [sum(s.rows for s in segments) for segments in resumed]
    assert max(sizes) - min(sizes) <= 1
    padded = [sum(s.rows for s in split_segments(rest, s, new, "pad")) for s in range(new)]
    assert len(set(padded)) == 1


def test_shuffle_windows_carry_the_seed_of_their_plan() -> None:
    for seed in (3, 4):
        segments = epoch_segments(GROUPS, PlanSpec(seed=seed, shuffle_rows=60, shard_policy="exact"), epoch=0)
        assert {s.seed for s in segments} == {seed}
        assert {s.seed for s in split_segments(segments, 1, 3)} == {seed}  # cuts keep it
    assert {s.seed for s in epoch_segments(GROUPS, PlanSpec(seed=3), epoch=0)} == {None}  # nothing to permute


def test_merge_adjacent_joins_cuts_that_meet_and_nothing_else() -> None:
    window = Segment((Piece(0, 0, 0, 100), Piece(0, 1, 0, 37)), (0, 0, 0), seed=5)
    other = dataclasses.replace(window, seed=6)
    assert merge_adjacent([window.cut(0, 40), window.cut(40, 90), window.cut(90, 137)]) == [window.cut(0, 137)]
    assert merge_adjacent([window.cut(0, 40), window.cut(50, 90)]) == [window.cut(0, 40), window.cut(50, 90)]
    assert merge_adjacent([window.cut(0, 40), other.cut(40, 90)]) == [window.cut(0, 40), other.cut(40, 90)]
    parts = [split_segments([window], s, 4, "exact")[0] for s in range(4)]
    assert _expand(merge_adjacent(parts)) == _expand([window])
