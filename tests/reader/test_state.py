"""Resume for every iterator kind (state_dict() then load_state_dict() continues exactly), and the state value."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from sparkfeed import make_spark_converter
from sparkfeed.predicates import in_lambda
from sparkfeed.reader.plan import Segment, permutation
from sparkfeed.reader.state import Identity, ReaderState, advanced, epoch_of, reshard, resume

ROWS = 2000


@pytest.fixture(scope="module")
def converter(spark):
    df = spark.range(ROWS, numPartitions=2).select(
        "id", (F.col("id") % 7).alias("bucket"), F.array(F.col("id") * 1.0, F.col("id") * 2.0).alias("pair")
    )
    return make_spark_converter(df, parquet_row_group_size_bytes=2048)


def _double(frame: pd.DataFrame) -> pd.DataFrame:
    frame["twice"] = frame["id"] * 2
    return frame


# Rows whose bucket is below 4 and whose id is not a multiple of 5: a filter and a predicate together.
FILTERED = {"filters": [("bucket", "<", 4)], "predicate": in_lambda(["id"], lambda i: i % 5 != 0)}
PASSING = [i for i in range(ROWS) if i % 7 < 4 and i % 5 != 0]


# Every resumable iterator kind the converter makes (a tf.data pipeline prefetches past any
# position Python could record, so make_tf_dataset is not among them).
KINDS: dict[str, Callable] = {
    "numpy": lambda c, **kw: c.make_numpy_iterator(**kw),
    "torch": lambda c, **kw: c.make_torch_dataloader(**kw),
    "jax": lambda c, **kw: c.make_jax_iterator(**kw),
}

SETTINGS = {
    "plain": {"shuffle_row_groups": False},
    "shuffled": {"seed": 4, "shuffling_queue_capacity": 300},
    "unseeded": {"shuffling_queue_capacity": 300},
    "sharded+transform": {"seed": 1, "cur_shard": 1, "shard_count": 3, "transform_fn": _double},
    "drop_last": {"seed": 2, "shuffling_queue_capacity": 300, "cur_shard": 0, "shard_count": 3, "drop_last": True},
    "filtered": {"seed": 6, "shuffling_queue_capacity": 300, **FILTERED},
    "filtered+sharded+transform": {"seed": 8, "cur_shard": 2, "shard_count": 3, "transform_fn": _double, **FILTERED},
}


def _arrays(batch: dict) -> dict[str, np.ndarray]:
    return {name: np.asarray(value) for name, value in batch.items()}


def _assert_same(left: list[dict], right: list[dict]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.filterwarnings("ignore:filters or a predicate with shard_count")  # pad with filters: expected
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("stop", ["start", "first", "mid-epoch", "epoch-end", "second-epoch", "end"])
def test_resume_yields_exactly_the_remaining_batches(converter, kind: str, setting: str, stop: str) -> None:
    make = KINDS[kind]
    kwargs = {"batch_size": 100, "num_epochs": 2, **SETTINGS[setting]}
    with make(converter, **kwargs) as loader:
        total = len(loader)
        if "filters" in kwargs:  # len() is an upper bound: count what a whole run gives
            with make(converter, **kwargs) as counting:
                total = sum(1 for _ in counting)
        stop_after = {
            "start": 0,
            "first": 1,
            "mid-epoch": total // 4,
            "epoch-end": total // 2,
            "second-epoch": total // 2 + 2,
            "end": total,
        }[stop]
        iterator = iter(loader)
        head = [_arrays(next(iterator)) for _ in range(stop_after)]
        state = json.loads(json.dumps(loader.state_dict()))  # plain data: goes into any checkpoint
        tail = [_arrays(batch) for batch in iterator]
    if setting != "unseeded":
        with make(converter, **kwargs) as fresh:
            _assert_same(head + tail, [_arrays(b) for b in fresh])
    with make(converter, **kwargs) as resumed:
        resumed.load_state_dict(state)
        assert len(resumed) == len(tail) if "filters" not in kwargs else len(resumed) >= len(tail)
        _assert_same([_arrays(b) for b in resumed], tail)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize(("old", "new"), [(3, 2), (2, 3), (1, 4)])
@pytest.mark.parametrize("filtered", [False, True], ids=["all-rows", "filtered"])
def test_resume_onto_a_different_shard_count_loses_and_repeats_nothing(
    converter, kind: str, old: int, new: int, filtered: bool
) -> None:
    make = KINDS[kind]
    kwargs = {"batch_size": 50, "num_epochs": 2, "seed": 9, "shuffling_queue_capacity": 250, "shard_policy": "exact"}
    if filtered:
        kwargs.update(FILTERED)
    seen, states = [], []
    for shard in range(old):
        with make(converter, cur_shard=shard, shard_count=old, **kwargs) as loader:
            iterator = iter(loader)
            seen += [int(i) for _ in range(5) for i in next(iterator)["id"]]
            states.append(loader.state_dict())
    rest, second_epoch = [], []
    for shard in range(new):
        with make(converter, cur_shard=shard, shard_count=new, **kwargs) as loader:
            loader.load_state_dict(states)
            for batch in loader:  # the rest of epoch 0, then epoch 1 sharded the new way
                (rest if loader.state_dict()["epoch"] == 0 else second_epoch).extend(int(i) for i in batch["id"])
            assert loader.state_dict()["epoch"] == 2
    expected = PASSING if filtered else list(range(ROWS))
    assert sorted(seen + rest) == expected
    assert sorted(second_epoch) == expected


def test_state_of_a_resharded_epoch_resumes_again(converter) -> None:
    kwargs = {"batch_size": 40, "num_epochs": 1, "seed": 3, "shuffling_queue_capacity": 200, "shard_policy": "exact"}
    seen, states = [], []
    for shard in range(3):
        with converter.make_numpy_iterator(cur_shard=shard, shard_count=3, **kwargs) as loader:
            iterator = iter(loader)
            seen += [int(i) for _ in range(4) for i in next(iterator)["id"]]
            states.append(loader.state_dict())
    second = []
    for shard in range(2):
        with converter.make_numpy_iterator(cur_shard=shard, shard_count=2, **kwargs) as loader:
            loader.load_state_dict(states)
            iterator = iter(loader)
            seen += [int(i) for _ in range(3) for i in next(iterator)["id"]]
            second.append(json.loads(json.dumps(loader.state_dict())))
    with converter.make_numpy_iterator(**kwargs) as loader:  # and onto one shard
        loader.load_state_dict(second)
        seen += [int(i) for batch in loader for i in batch["id"]]
    assert sorted(seen) == list(range(ROWS))


def test_mismatched_states_are_refused(converter) -> None:
    with converter.make_numpy_iterator(batch_size=10, seed=1, cur_shard=0, shard_count=2) as loader:
        next(iter(loader))
        state = loader.state_dict()
    with converter.make_numpy_iterator(batch_size=10, seed=2, cur_shard=0, shard_count=2) as other:
        with pytest.raises(ValueError, match="saved with seed=1, this reader has seed=2"):
            other.load_state_dict(state)
    with converter.make_numpy_iterator(batch_size=10, seed=1, cur_shard=1, shard_count=2) as other:
        with pytest.raises(ValueError, match="saved by shard 0 of 2, but this reader is shard 1 of 2"):
            other.load_state_dict(state)
    with converter.make_numpy_iterator(
        batch_size=10, seed=1, cur_shard=0, shard_count=2, shuffling_queue_capacity=5
    ) as other:
        with pytest.raises(ValueError, match="saved with shuffle_rows=0"):
            other.load_state_dict(state)
    with converter.make_numpy_iterator(batch_size=10, seed=1, cur_shard=0, shard_count=3) as other:
        with pytest.raises(ValueError, match=r"expected the states of all 2 shards, got shards \[0\]"):
            other.load_state_dict([state])
    with pytest.raises(ValueError, match="not a sparkfeed reader state"):
        converter.make_numpy_iterator().load_state_dict({"epoch": 0})


# ---------------------------------------------------------------------------------- the state value, without Spark

GROUPS = [(0, 0, 100), (0, 1, 37), (1, 0, 5), (1, 1, 58)]
IDENTITY = Identity(
    fingerprint="f" * 32,
    num_rows=200,
    batch_size=10,
    drop_last=False,
    num_epochs=2,
    columns=("id",),
    transform=False,
    shard_policy="exact",
    shuffle_row_groups=True,
    shuffle_rows=30,
)


def _expand(segments: Sequence[Segment]) -> list[tuple[int, int, int]]:
    """The rows a segment list yields, permuted the way the reader does: with each segment's own seed."""
    rows = []
    for segment in segments:
        joined = [(p.file, p.row_group, r) for p in segment.pieces for r in range(p.start, p.stop)]
        if segment.shuffle_key is not None:
            assert segment.seed is not None
            joined = [joined[i] for i in permutation(segment.seed, segment.shuffle_key, len(joined))]
        rows += joined[segment.start : segment.stop]
    return rows


def _states(seeds: Sequence[int], offsets: Sequence[tuple[int, int]]) -> list[ReaderState]:
    return [
        ReaderState(IDENTITY, seed, shard, len(seeds), epoch=1, segment=segment, offset=offset, end_epoch=2)
        for shard, (seed, (segment, offset)) in enumerate(zip(seeds, offsets, strict=True))
    ]


@pytest.mark.parametrize("new", [1, 2, 3, 5])
def test_reshard_keeps_each_old_shards_seed_and_loses_nothing(new: int) -> None:
    positions = [(0, 5), (0, 3), (1, 0)]
    states = _states([11, 12345, 7], positions)  # every shard drew its own seed
    consumed, rest = [], []
    for state in states:
        done = _expand(epoch_of(state, GROUPS))
        upto = sum(s.rows for s in epoch_of(state, GROUPS)[: state.segment]) + state.offset
        consumed += done[:upto]
        rest += done[upto:]
    resharded = [reshard(states, GROUPS, shard, new) for shard in range(new)]
    assert [row for segments in resharded for row in _expand(segments)] == rest  # the same rows in the same order
    assert sorted(consumed + rest) == sorted((f, g, r) for f, g, n in GROUPS for r in range(n))
    resumed = [
        resume(states, identity=IDENTITY, groups=GROUPS, cur_shard=s, shard_count=new, seed=None, every_shard=True)
        for s in range(new)
    ]
    assert [r.seed for r in resumed] == [states[s % 3].seed for s in range(new)]  # deterministic, documented
    if new == len(states):  # the same count: each shard simply continues
        assert [(r.epoch, r.segment, r.offset, r.segments) for r in resumed] == [(1, *p, None) for p in positions]
    else:
        assert all((r.epoch, r.segment, r.offset, r.end_epoch) == (1, 0, 0, 2) for r in resumed)
        assert [list(r.segments or ()) for r in resumed] == resharded


def test_advanced_moves_a_position_over_segments_and_into_later_epochs() -> None:
    """``advanced(state, n)`` is where the state's reader stands after yielding ``n`` more rows."""
    state = _states([11], [(0, 5)])[0]
    rows = _expand(epoch_of(state, GROUPS))
    for n in (0, 1, len(rows) - 5 - 1, len(rows) - 5):
        moved = advanced(state, n, GROUPS)
        upto = sum(s.rows for s in epoch_of(moved, GROUPS)[: moved.segment]) + moved.offset
        assert (moved.epoch, upto) == (1, 5 + n)
    # past the end of epoch 1: only a reader that goes on (end_epoch None) has those rows
    endless = dataclasses.replace(state, end_epoch=None)
    later = advanced(endless, len(rows) - 5 + 3, GROUPS)
    assert (later.epoch, later.segment, later.offset) == (2, 0, 3)
    with pytest.raises(ValueError, match="past the end of the reader's epochs"):
        advanced(state, len(rows) - 5 + 1, GROUPS)


def test_a_state_round_trips_through_json_and_resharded_segments_stay_explicit() -> None:
    states = _states([1, 2], [(1, 4), (0, 9)])
    mine = tuple(reshard(states, GROUPS, 0, 3))
    state = dataclasses.replace(states[0], shard_count=3, segments=mine, epoch=1, segment=0, offset=2)
    data = json.loads(json.dumps(state.to_dict()))
    assert ReaderState.from_dict(data) == state
    assert ReaderState.from_dict({**data, "epoch": np.int64(1)}) == state  # NumPy integers, as a checkpoint may hold
    assert data["version"] == 2 and data["identity"]["columns"] == ["id"]
    assert ReaderState.from_dict(json.loads(json.dumps(states[1].to_dict()))) == states[1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "sparkfeed.reader/1"}, "version 1, from an older sparkfeed"),
        ({"format": "other"}, "not a sparkfeed reader state"),
        ({"version": 3}, "version 3 is unknown"),
        ({"extra": 1}, r"unknown keys \['extra'\]"),
        ({"shard_count": 0}, "shard_count=0 is not allowed"),
        ({"end_epoch": 0}, "epoch=1 with end_epoch=0"),
        ({"seed": -1}, "seed=-1 is not allowed"),
        ({"segments": {}}, "segments={} is not allowed"),
        ({"segments": [[[[0, 0, 5, 2]], None, None, 0, None]]}, "is not a segment"),
        ({"segments": [[[[0, 0, 0, 2]], [1], None, 0, None]]}, "is not a segment"),  # a shuffle without its seed
    ],
)
def test_from_dict_refuses_malformed_data_naming_the_field(change: dict[str, Any], message: str) -> None:
    data = {**_states([1], [(0, 0)])[0].to_dict(), **change}
    with pytest.raises(ValueError, match=message):
        ReaderState.from_dict(data)
    good = _states([1], [(0, 0)])[0].to_dict()
    identity = {**good["identity"], "shard_policy": "some"}
    with pytest.raises(ValueError, match="shard_policy='some' is not allowed"):
        ReaderState.from_dict({**good, "identity": identity})


def test_a_state_saved_before_shard_seed_filters_and_predicate_were_recorded_still_loads() -> None:
    state = _states([1], [(0, 3)])[0]
    data = json.loads(json.dumps(state.to_dict()))
    later = {"shard_seed": None, "filters": None, "predicate": False, "row_groups": None}
    assert later.items() <= data["identity"].items()
    for key in later:
        del data["identity"][key]  # as sparkfeed 0.1 wrote them
    assert ReaderState.from_dict(data) == state
    recorded = dataclasses.replace(
        state, identity=dataclasses.replace(IDENTITY, shard_seed=4, filters="(v < 3)", row_groups="ab" * 16)
    )
    assert ReaderState.from_dict(json.loads(json.dumps(recorded.to_dict()))) == recorded
    assert recorded.plan().shard_seed == 4
    bad = recorded.to_dict()
    for key, value, message in (
        ("filters", 3, "filters=3 is not allowed: it must be a string or null"),
        ("row_groups", [0, 1], "row_groups=[0, 1] is not allowed: it must be a string or null"),
        ("shard_seed", -1, "shard_seed=-1 is not allowed"),
        ("predicate", "yes", "predicate='yes' is not allowed: it must be a bool"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            ReaderState.from_dict({**bad, "identity": {**bad["identity"], key: value}})


def test_resume_refuses_states_that_do_not_belong_together() -> None:
    kwargs: dict[str, Any] = {"identity": IDENTITY, "groups": GROUPS, "seed": None}
    states = _states([1, 2], [(0, 0), (0, 0)])
    with pytest.raises(ValueError, match="different epochs"):
        resume(
            [states[0], dataclasses.replace(states[1], epoch=0)], cur_shard=0, shard_count=2, every_shard=True, **kwargs
        )
    with pytest.raises(ValueError, match=r"expected the states of all 2 shards, got shards \[0, 0\]"):
        resume([states[0], states[0]], cur_shard=0, shard_count=2, every_shard=True, **kwargs)
    with pytest.raises(ValueError, match="saved by shard 1 of 2, but this reader is shard 0 of 2"):
        resume([states[1]], cur_shard=0, shard_count=2, every_shard=False, **kwargs)
    with pytest.raises(ValueError, match="saved with num_rows=200, this reader has num_rows=201"):
        resume(
            states,
            cur_shard=0,
            shard_count=2,
            every_shard=True,
            **{**kwargs, "identity": dataclasses.replace(IDENTITY, num_rows=201)},
        )
    with pytest.raises(ValueError, match="no states given"):
        resume([], cur_shard=0, shard_count=2, every_shard=True, **kwargs)
