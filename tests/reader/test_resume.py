"""Resume and reshard on the real reader, without Spark: Parquet written with pyarrow, a manifest made by hand."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparkfeed.cache import FileEntry, Manifest
from sparkfeed.options import reader_options
from sparkfeed.reader import Reader

from helpers import wait_until


def _write(root: Path, rows: int, row_group: int, files: int = 1, key: str = "k") -> Manifest:
    """``rows`` ids 0.. in ``files`` Parquet files of ``row_group``-row groups, and their manifest."""
    root.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, rows, files + 1).astype(int)
    entries = []
    for number, (low, high) in enumerate(itertools.pairwise(bounds)):
        name = f"part-{number}.parquet"
        table = pa.table({"id": pa.array(np.arange(low, high), pa.int64()), "x": pa.array(np.arange(low, high) * 0.5)})
        pq.write_table(table, root / name, row_group_size=row_group)
        groups = tuple(
            pq.ParquetFile(root / name).metadata.row_group(g).num_rows
            for g in range(pq.ParquetFile(root / name).metadata.num_row_groups)
        )
        entries.append(FileEntry(name, groups))
    schema = pa.schema([("id", pa.int64()), ("x", pa.float64())])
    return Manifest(files=tuple(entries), schema=schema, shapes={}, options={}, key=key)


def _reader(root: Path, manifest: Manifest, **options: Any) -> Reader[Any]:
    """The reader of a dataset; the one place that says how a location is given."""
    return Reader(root.as_uri(), manifest, reader_options(workers_count=1, **options))


def _ids(batches: Sequence[dict[str, np.ndarray]]) -> list[int]:
    return [int(i) for batch in batches for i in batch["id"]]


def _take(iterator: Iterator[dict[str, np.ndarray]], count: int) -> list[dict[str, np.ndarray]]:
    return list(itertools.islice(iterator, count))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    root = tmp_path_factory.mktemp("resume")
    return root, _write(root, 1000, 37, files=3)


# ---------------------------------------------------------------------------------- bug 1: unseeded ranks


@pytest.mark.parametrize(("old", "new"), [(2, 2), (3, 3), (2, 3), (3, 1)])
def test_unseeded_ranks_resume_from_every_state_exactly(dataset, old: int, new: int) -> None:
    """Each rank draws its own seed; resuming all ranks must permute each remainder with its own rank's seed."""
    root, manifest = dataset
    kwargs = {"batch_size": 25, "num_epochs": 1, "shuffling_queue_capacity": 100, "shard_policy": "exact"}
    seen, states = [], []
    for shard in range(old):
        reader = _reader(root, manifest, cur_shard=shard, shard_count=old, **kwargs)
        seen += _ids(_take(iter(reader), 4))
        states.append(json.loads(json.dumps(reader.state_dict())))
        reader.close()
    assert len({s["seed"] for s in states}) == old  # every rank drew its own
    rest = []
    for shard in range(new):
        with _reader(root, manifest, cur_shard=shard, shard_count=new, **kwargs) as reader:
            reader.load_state_dict(states)
            expected = len(reader)
            batches = list(reader)
            assert len(batches) == expected
            rest += _ids(batches)
    assert sorted(seen + rest) == list(range(1000))


def test_unseeded_resharded_later_epochs_still_partition_the_rows(dataset) -> None:
    root, manifest = dataset
    kwargs = {"batch_size": 30, "num_epochs": 3, "shuffling_queue_capacity": 80, "shard_policy": "exact"}
    states = []
    for shard in range(2):
        reader = _reader(root, manifest, cur_shard=shard, shard_count=2, **kwargs)
        _take(iter(reader), 3)
        states.append(reader.state_dict())
        reader.close()
    later: list[list[int]] = [[], []]
    runs = []
    for _ in range(2):  # twice: a resumed run is deterministic
        epochs = []
        for shard in range(3):
            with _reader(root, manifest, cur_shard=shard, shard_count=3, **kwargs) as reader:
                reader.load_state_dict(states)
                out = []
                for batch in reader:
                    out.append((reader.state_dict()["epoch"], _ids([batch])))
                epochs.append(out)
        runs.append(epochs)
    assert runs[0] == runs[1]
    for epoch in (1, 2):
        later[epoch - 1] = [i for shard in runs[0] for e, ids in shard if e == epoch for i in ids]
        assert sorted(later[epoch - 1]) == list(range(1000))


def _twice(frame: pd.DataFrame) -> pd.DataFrame:
    """An augmentation that yields two views of each row: more rows than it reads."""
    return pd.concat([frame, frame], ignore_index=True)


def _same(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(y=frame["x"] + 1)


@pytest.mark.parametrize("transform", [_twice, _same], ids=["more-rows", "same-rows"])
def test_a_reader_with_a_transform_is_not_resharded_but_resumes_on_its_shard_count(dataset, transform) -> None:
    root, manifest = dataset
    kwargs = {"batch_size": 25, "num_epochs": 1, "seed": 3, "shard_policy": "exact", "transform_fn": transform}
    seen, states = [], []
    for shard in range(2):
        reader = _reader(root, manifest, cur_shard=shard, shard_count=2, **kwargs)
        seen += _ids(_take(iter(reader), 3))
        states.append(json.loads(json.dumps(reader.state_dict())))
        reader.close()
    for count in (1, 3):  # a transform may yield other rows than it reads: positions would be cut wrongly
        with _reader(root, manifest, cur_shard=0, shard_count=count, **kwargs) as reader:
            with pytest.raises(ValueError, match="a loader with a transform cannot be resharded") as error:
                reader.load_state_dict(states)
            assert "saved by 2 shard(s)" in str(error.value) and "shard_count=2" in str(error.value)
    rest = []
    for shard in range(2):
        with _reader(root, manifest, cur_shard=shard, shard_count=2, **kwargs) as reader:
            reader.load_state_dict(states)  # every shard's states on their own shard count: resumed as saved
            rest += _ids(list(reader))
    views = 2 if transform is _twice else 1
    assert sorted(seen + rest) == sorted(list(range(1000)) * views)


# ---------------------------------------------------------------------------------- bug 2: another cache


def test_a_state_of_another_cache_is_refused_naming_the_field(tmp_path: Path) -> None:
    first = _write(tmp_path / "a", 500, 50)
    other_groups = _write(tmp_path / "b", 500, 70)  # same rows, other row groups
    other_files = _write(tmp_path / "c", 500, 50, files=2)  # a repartition
    reader = _reader(tmp_path / "a", first, batch_size=20, seed=1, num_epochs=1)
    _take(iter(reader), 3)
    state = reader.state_dict()
    reader.close()
    for root, manifest in ((tmp_path / "b", other_groups), (tmp_path / "c", other_files)):
        with pytest.raises(ValueError, match=r"saved with fingerprint='[0-9a-f]+', this reader has fingerprint="):
            _reader(root, manifest, batch_size=20, seed=1, num_epochs=1).load_state_dict(state)
    same = _write(tmp_path / "d", 500, 50)  # another directory with the same content is the same cache
    resumed = _reader(tmp_path / "d", same, batch_size=20, seed=1, num_epochs=1)
    resumed.load_state_dict(state)
    assert len(resumed) == 25 - 3


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"batch_size": 21}, "batch_size=20"),
        ({"drop_last": True}, "drop_last=False"),
        ({"num_epochs": 2}, "num_epochs=1"),
        ({"schema_fields": ["id"]}, r"columns=\('id', 'x'\)"),
        ({"transform_fn": lambda frame: frame}, "transform=False"),
        ({"shuffle_row_groups": False}, "shuffle_row_groups=True"),
        ({"seed": 2}, "seed=1"),
    ],
)
def test_a_state_of_other_reader_settings_is_refused(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    manifest = _write(tmp_path, 300, 40)
    kwargs: dict[str, Any] = {"batch_size": 20, "seed": 1, "num_epochs": 1}
    reader = _reader(tmp_path, manifest, **kwargs)
    _take(iter(reader), 2)
    state = reader.state_dict()
    reader.close()
    with pytest.raises(ValueError, match=f"saved with {field}, this reader has"):
        _reader(tmp_path, manifest, **{**kwargs, **change}).load_state_dict(state)


def _tampered(state: dict[str, Any]) -> Iterator[tuple[Any, str]]:
    yield None, "a dict or a list"
    yield [], "no states"
    yield [None], "not a dict"
    yield "state", "a dict or a list"
    yield {**state, "version": 99}, "version 99"
    for key in ("epoch", "seed", "identity", "segment", "offset", "cur_shard"):
        yield {k: v for k, v in state.items() if k != key}, f"missing {key!r}"
    yield {**state, "epoch": -1}, "epoch=-1"
    yield {**state, "epoch": "0"}, "epoch='0'"
    yield {**state, "offset": -3}, "offset=-3"
    yield {**state, "offset": 10**6}, "offset=1000000"
    yield {**state, "segment": 10**6}, "segment=1000000"
    yield {**state, "segment": True}, "segment=True"
    yield {**state, "epoch": 5}, "epoch=5"
    yield {**state, "cur_shard": 3}, "cur_shard=3"
    yield {**state, "identity": {**state["identity"], "batch_size": None}}, "batch_size=None"
    yield {**state, "identity": "x"}, "identity"
    yield {**state, "segments": [[1]]}, "segments"
    yield {**state, "segments": [[[[9, 0, 0, 5]], None, None, 0, None]]}, "file 9"


def test_tampered_or_malformed_states_are_refused_with_a_value_error(tmp_path: Path) -> None:
    manifest = _write(tmp_path, 300, 40)
    kwargs: dict[str, Any] = {"batch_size": 20, "seed": 1, "num_epochs": 1}
    reader = _reader(tmp_path, manifest, **kwargs)
    _take(iter(reader), 2)
    state = json.loads(json.dumps(reader.state_dict()))
    reader.close()
    for bad, message in _tampered(state):
        fresh = _reader(tmp_path, manifest, **kwargs)
        with pytest.raises(ValueError, match=message):
            fresh.load_state_dict(bad)
        fresh.load_state_dict(state)  # a refused state leaves the reader as it was, and a good one still loads
        assert len(fresh) == 15 - 2


# ---------------------------------------------------------------------------------- bug 3: bounded reshards


def test_resharding_ten_times_in_one_epoch_keeps_the_state_small_and_exact(tmp_path: Path) -> None:
    manifest = _write(tmp_path, 2000, 50, files=2)
    kwargs = {"batch_size": 10, "num_epochs": 1, "seed": 4, "shuffling_queue_capacity": 120, "shard_policy": "exact"}
    counts = [3, 2, 4, 3, 5, 2, 3, 4, 2, 3, 1]
    seen: list[int] = []
    states: list[dict[str, Any]] | None = None
    sizes = []
    for count in counts:
        new_states = []
        for shard in range(count):
            reader = _reader(tmp_path, manifest, cur_shard=shard, shard_count=count, **kwargs)
            if states is not None:
                reader.load_state_dict(states)
            if count == counts[-1]:
                seen += _ids(list(reader))
            else:
                seen += _ids(_take(iter(reader), 2))
            new_states.append(json.loads(json.dumps(reader.state_dict())))
            reader.close()
        states = new_states
        sizes.append(max(len(json.dumps(s)) for s in states))
        # At most one segment per row group (40) plus one cut per shard boundary so far, whatever the history.
        assert all(len(s["segments"] or ()) <= 40 + sum(counts) for s in states)
    assert sorted(seen) == list(range(2000))
    assert max(sizes) < 4 * sizes[1]  # grows at most with the cuts, not with the history
    assert max(sizes) < 8000


# ---------------------------------------------------------------------------------- bug 4: two iterators


def test_a_second_iteration_while_one_is_active_is_refused(dataset) -> None:
    root, manifest = dataset
    reader = _reader(root, manifest, batch_size=100, num_epochs=1, seed=3)
    first = iter(reader)
    head = _take(first, 2)
    with pytest.raises(RuntimeError, match="already being iterated"):
        iter(reader)
    head += list(first)  # the first iteration was not disturbed
    assert sorted(_ids(head)) == list(range(1000))
    again = list(reader)  # finished: a new iteration starts, with the next epoch
    assert sorted(_ids(again)) == list(range(1000))
    assert _ids(again) != _ids(head)


def test_a_closed_or_abandoned_iteration_does_not_block_the_next(dataset) -> None:
    root, manifest = dataset
    reader = _reader(root, manifest, batch_size=100, num_epochs=1, seed=3)
    for _ in reader:
        break  # the dropped iterator ends with the loop
    assert len(list(reader)) == 10
    iterator = iter(reader)
    next(iterator)
    reader.close()  # an explicit close ends it too
    assert len(list(reader)) == 10
    with pytest.raises(StopIteration):
        next(iterator)
    broken = iter(reader)
    next(broken)
    broken.close()
    assert len(list(reader)) == 10


def test_an_iterator_made_and_dropped_unadvanced_leaves_the_resumed_position(dataset) -> None:
    root, manifest = dataset
    kwargs = {"batch_size": 40, "num_epochs": 2, "seed": 5, "shuffling_queue_capacity": 100}
    with _reader(root, manifest, **kwargs) as run:
        iterator = iter(run)
        _take(iterator, 7)
        state = json.loads(json.dumps(run.state_dict()))
        remaining = _ids(list(iterator))
    with _reader(root, manifest, **kwargs) as resumed:
        resumed.load_state_dict(state)
        expected = len(resumed)
        probe = iter(resumed)  # what PyTorch Lightning does to check that a loader is iterable
        del probe
        assert resumed.state_dict() == state and len(resumed) == expected
        unstarted = iter(resumed)
        unstarted.close()  # closed before its first batch: nothing was read
        assert len(resumed) == expected
        assert _ids(list(resumed)) == remaining


def _fails_once() -> Any:
    calls = [0]

    def transform(frame: pd.DataFrame) -> pd.DataFrame:
        calls[0] += 1
        if calls[0] == 1:
            raise OSError("a transient read error")
        return frame

    return transform


@pytest.mark.parametrize("resumed", [False, True], ids=["fresh", "resumed"])
def test_a_loop_retried_after_an_error_before_its_first_batch_starts_where_the_failed_one_did(
    dataset, resumed: bool
) -> None:
    root, manifest = dataset
    kwargs = {"batch_size": 40, "num_epochs": 1, "seed": 5, "prefetch": 1}
    with _reader(root, manifest, transform_fn=_same, **kwargs) as whole:
        expected = _ids(list(whole))
    state = None
    if resumed:
        with _reader(root, manifest, transform_fn=_same, **kwargs) as run:
            _take(iter(run), 4)
            state = run.state_dict()
        expected = expected[4 * 40 :]
    with _reader(root, manifest, transform_fn=_fails_once(), **kwargs) as reader:
        if state is not None:
            reader.load_state_dict(state)
        with pytest.raises(OSError, match="a transient read error"):
            list(reader)
        assert _ids(list(reader)) == expected  # the retry: the same batches, none skipped


@pytest.mark.parametrize("count", [1, 2])
def test_a_state_saved_after_an_iteration_resumes_into_the_next_one_as_without_a_restart(dataset, count: int) -> None:
    root, manifest = dataset
    kwargs = {"batch_size": 64, "num_epochs": 1, "seed": 2, "shuffling_queue_capacity": 100, "shard_policy": "exact"}
    states, following, lengths = [], [], []
    for shard in range(2):
        with _reader(root, manifest, cur_shard=shard, shard_count=2, **kwargs) as loader:
            list(loader)  # a training epoch, then the checkpoint
            states.append(json.loads(json.dumps(loader.state_dict())))
            lengths.append(len(loader))
            following.append(_ids(list(loader)))  # the next training epoch, without a restart
    for shard in range(count):
        with _reader(root, manifest, cur_shard=shard, shard_count=count, **kwargs) as resumed:
            resumed.load_state_dict(states if count != 2 else states[shard])
            if count == 2:
                assert len(resumed) == lengths[shard]
                assert _ids(list(resumed)) == following[shard]
            else:  # resharded: the next epoch still holds every row once
                assert sorted(_ids(list(resumed))) == list(range(1000))


def test_states_of_shards_that_did_and_did_not_start_their_iteration_reshard_together(dataset) -> None:
    root, manifest = dataset
    kwargs = {"batch_size": 50, "num_epochs": 2, "seed": 4, "shard_policy": "exact"}
    seen, states = [], []
    for shard, taken in enumerate([3, 0]):  # the second rank saved before its first batch
        with _reader(root, manifest, cur_shard=shard, shard_count=2, **kwargs) as reader:
            seen += _ids(_take(iter(reader), taken))
            states.append(json.loads(json.dumps(reader.state_dict())))
    rest: list[int] = []
    for shard in range(3):
        with _reader(root, manifest, cur_shard=shard, shard_count=3, **kwargs) as reader:
            reader.load_state_dict(states)
            rest += [i for batch in reader if reader.state_dict()["epoch"] == 0 for i in _ids([batch])]
    assert sorted(seen + rest) == list(range(1000))


def _loop_inside_a_step(
    dataset: tuple[Path, Manifest],
) -> tuple[Reader[Any], threading.Event, list[int], threading.Thread]:
    """A loop in its own thread that has one batch and waits for the second row group, held until ``release``."""
    root, manifest = dataset
    release, calls = threading.Event(), [0]

    def transform(frame: pd.DataFrame) -> pd.DataFrame:
        calls[0] += 1
        if calls[0] == 2:  # the second row group: the loop waits for it when close() comes
            release.wait(30)
        return frame

    kwargs = {"batch_size": 30, "num_epochs": 1, "shuffle_row_groups": False, "prefetch": 1}
    reader = _reader(root, manifest, transform_fn=transform, **kwargs)
    sizes: list[int] = []
    consumer = threading.Thread(target=lambda: sizes.extend(len(batch["id"]) for batch in reader))
    consumer.start()
    wait_until(lambda: calls[0] == 2 and len(sizes) == 1, what="the loop waiting for the second row group")
    time.sleep(0.2)
    return reader, release, sizes, consumer


def test_close_from_another_thread_ends_the_iteration_without_a_short_batch(dataset) -> None:
    reader, release, sizes, consumer = _loop_inside_a_step(dataset)
    reader.close()  # from another thread than the loop's, as a tf.data or a signal handler may
    release.set()
    consumer.join(30)
    assert sizes == [30]  # not the 7 rows left over from the first row group of 37, as if the epoch ended


def test_an_iteration_after_close_from_another_thread_starts_once_the_closed_one_has_ended(dataset) -> None:
    reader, release, sizes, consumer = _loop_inside_a_step(dataset)
    reader.close()  # the loop is inside a step: it ends once that step does
    threading.Timer(0.5, release.set).start()
    asked = time.monotonic()
    again = iter(reader)  # its cleanup (read-ahead, counters) is the closed iteration's, not this one's
    assert time.monotonic() - asked >= 0.4
    consumer.join(30)
    assert not consumer.is_alive() and sizes == [30]
    ids = _ids(list(again))
    assert sorted(ids) == list(range(1000))  # the next epoch, whole
    assert reader.stats()["batches"] == 1 + -(-1000 // 30)


# ---------------------------------------------------------------------------------- properties


@st.composite
def _runs(draw: st.DrawFn) -> dict[str, Any]:
    rows = draw(st.integers(0, 120))
    shard_count = draw(st.integers(1, 4))
    policy = draw(st.sampled_from(["exact", "exact", "pad", "drop"]))  # exact, where every row counts, the most
    return {
        "rows": rows,
        "row_group": draw(st.integers(1, 40)),
        "files": draw(st.integers(1, 3)),
        "batch_size": draw(st.integers(1, 17)),
        "shard_count": shard_count,
        "shard_policy": policy,
        "shuffle_row_groups": draw(st.booleans()),
        "shuffling_queue_capacity": draw(st.sampled_from([None, 0, 1, 15, 60])),
        "seed": draw(st.one_of(st.none(), st.none(), st.integers(0, 2**32))),  # unseeded ranks differ: most bugs
        "num_epochs": draw(st.integers(1, 2)),
        "drop_last": draw(st.sampled_from([False, False, True])),
        "stop": draw(st.integers(0, 12)),
        "new_count": draw(st.integers(1, 4)),
    }


_DATASETS: dict[tuple[int, int, int], tuple[Path, Manifest]] = {}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("property")

    def get(rows: int, row_group: int, files: int) -> tuple[Path, Manifest]:
        key = (rows, row_group, files)
        if key not in _DATASETS:
            root = base / f"{rows}-{row_group}-{files}"
            _DATASETS[key] = (root, _write(root, rows, row_group, files))
        return _DATASETS[key]

    return get


def _options(run: dict[str, Any]) -> dict[str, Any]:
    keys = ("batch_size", "shard_policy", "shuffle_row_groups", "shuffling_queue_capacity", "seed", "num_epochs")
    return {key: run[key] for key in keys} | {"drop_last": run["drop_last"]}


def _epochs(reader: Reader[Any], batches: Iterator[dict[str, np.ndarray]]) -> dict[int, list[list[int]]]:
    """Batches by the epoch they belong to (read from the state right after each)."""
    out: dict[int, list[list[int]]] = {}
    for batch in batches:
        out.setdefault(reader.state_dict()["epoch"], []).append(_ids([batch]))
    return out


def _check_epoch(run: dict[str, Any], shards: list[list[int]], batch_counts: list[int]) -> None:
    """One epoch's ids over all shards: exact covers every row once; pad/drop give equal batch counts."""
    rows, policy = run["rows"], run["shard_policy"]
    counts = Counter(i for ids in shards for i in ids)
    if policy == "exact" and not run["drop_last"]:
        assert sorted(counts.elements()) == list(range(rows))
    else:
        assert set(counts) <= set(range(rows))
    if policy == "drop":
        assert max(counts.values(), default=1) == 1
    if policy in ("pad", "drop"):
        assert len(set(batch_counts)) <= 1


def _fresh_epochs(datasets: Any, run: dict[str, Any], count: int) -> list[dict[int, list[list[int]]]]:
    root, manifest = datasets(run["rows"], run["row_group"], run["files"])
    out = []
    for shard in range(count):
        with _reader(root, manifest, cur_shard=shard, shard_count=count, **_options(run)) as reader:
            out.append(_epochs(reader, iter(reader)))
    return out


@given(_runs())
def test_property_every_epoch_partitions_the_rows(datasets, run: dict[str, Any]) -> None:
    shards = _fresh_epochs(datasets, run, run["shard_count"])
    for epoch in range(run["num_epochs"]):
        per_shard = [[i for ids in shard.get(epoch, []) for i in ids] for shard in shards]
        _check_epoch(run, per_shard, [len(shard.get(epoch, [])) for shard in shards])


def _stop_all(datasets: Any, run: dict[str, Any]) -> tuple[list[list[list[int]]], list[dict[str, Any]]]:
    """Every shard stopped after ``stop`` batches (at most its first epoch's), and its JSON round-tripped state."""
    root, manifest = datasets(run["rows"], run["row_group"], run["files"])
    heads, states = [], []
    for shard in range(run["shard_count"]):
        reader = _reader(root, manifest, cur_shard=shard, shard_count=run["shard_count"], **_options(run))
        total = len(reader) // run["num_epochs"]
        iterator = iter(reader)
        heads.append([_ids([b]) for b in _take(iterator, min(run["stop"], total))])
        states.append(json.loads(json.dumps(reader.state_dict())))
        reader.close()
    return heads, states


@given(_runs())
def test_property_save_and_resume_continues_exactly(datasets, run: dict[str, Any]) -> None:
    root, manifest = datasets(run["rows"], run["row_group"], run["files"])
    heads, states = _stop_all(datasets, run)
    for shard, state in enumerate(states):
        with _reader(root, manifest, cur_shard=shard, shard_count=run["shard_count"], **_options(run)) as resumed:
            resumed.load_state_dict(state)
            expected = len(resumed)
            tail = [_ids([b]) for b in resumed]
            assert len(tail) == expected  # len() is exact after resume
        with _reader(root, manifest, cur_shard=shard, shard_count=run["shard_count"], **_options(run)) as fresh:
            whole = [_ids([b]) for b in fresh]
        if run["seed"] is not None:
            assert heads[shard] + tail == whole
        elif not run["drop_last"]:  # another seed: another order of the same rows, epoch by epoch
            assert Counter(i for ids in heads[shard] + tail for i in ids) == Counter(i for ids in whole for i in ids)
        assert len(heads[shard]) + len(tail) == len(whole)


@given(_runs())
def test_property_reshard_and_resume_loses_and_repeats_nothing(datasets, run: dict[str, Any]) -> None:
    root, manifest = datasets(run["rows"], run["row_group"], run["files"])
    heads, states = _stop_all(datasets, run)
    new = run["new_count"]
    rest: list[list[int]] = []
    later: list[dict[int, list[list[int]]]] = []
    for shard in range(new):
        with _reader(root, manifest, cur_shard=shard, shard_count=new, **_options(run)) as reader:
            reader.load_state_dict(states)
            expected = len(reader)
            epochs = _epochs(reader, iter(reader))
            assert sum(len(b) for b in epochs.values()) == expected
            rest.append([i for ids in epochs.pop(0, []) for i in ids])
            later.append(epochs)
    first = [i for shard in heads for ids in shard for i in ids] + [i for ids in rest for i in ids]
    if run["shard_policy"] == "exact" and not run["drop_last"]:
        assert sorted(first) == list(range(run["rows"]))
    elif run["shard_policy"] == "drop":  # each old and each new shard leaves out at most a row
        assert len(set(first)) == len(first)
        assert run["drop_last"] or len(first) >= run["rows"] - run["shard_count"] - new
    elif not run["drop_last"]:  # pad: repeats a row for a short shard, loses none
        assert set(first) == set(range(run["rows"]))
    later_run = {**run, "shard_count": new}
    for epoch in range(1, run["num_epochs"]):
        per_shard = [[i for ids in shard.get(epoch, []) for i in ids] for shard in later]
        _check_epoch(later_run, per_shard, [len(shard.get(epoch, [])) for shard in later])


def test_a_tf_dataset_iterates_again_after_a_break_and_refuses_two_live_iterators(tmp_path: Path) -> None:
    """tf.data runs the reader in its own threads and ends a generator when its iterator goes."""
    pytest.importorskip("tensorflow")
    from sparkfeed.tf import TfDatasetContext

    manifest = _write(tmp_path, 200, 30)

    def make(batch_size: int, num_epochs: int | None, drop_last: bool) -> Reader[Any]:
        return _reader(tmp_path, manifest, batch_size=batch_size, num_epochs=num_epochs, drop_last=drop_last, seed=1)

    with TfDatasetContext(make, 10, 1, None) as dataset:
        for _ in range(2):
            for number, _row in enumerate(dataset):
                if number == 3:
                    break
        assert sum(1 for _ in dataset) == 20
        held = iter(dataset)
        next(held)
        with pytest.raises(Exception, match="already being iterated"):
            list(dataset)
        del held
        assert sum(1 for _ in dataset) == 20
