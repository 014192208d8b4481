"""The mixer on real readers, without Spark: Parquet written with pyarrow, manifests made by hand.

Small datasets of any size are cheap this way, so the properties (exact resume, rows used at most
once per epoch, the exhausted source's exactly once) are checked by Hypothesis over sizes,
weights, batch sizes and both ways of ending an epoch.
"""

from __future__ import annotations

import itertools
import json
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sparkfeed import Sequence, SparkDatasetConverter, TransformSpec, mix
from sparkfeed.cache import FileEntry, Manifest
from sparkfeed.reader.draws import BLOCK, Draws
from sparkfeed.writer import list_shape_stats, pack_ragged

OFFSET = 1_000_000
"""Source k's ids start at k * OFFSET, so that an id names its source and its row."""


def _write(root: Path, rows: int, number: int, row_group: int, files: int = 1) -> SparkDatasetConverter:
    """A converter of ``rows`` rows (id, x) in ``files`` Parquet files of ``row_group``-row groups."""
    root.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, rows, files + 1).astype(int)
    entries = []
    for part, (low, high) in enumerate(itertools.pairwise(bounds)):
        name = f"part-{part}.parquet"
        ids = np.arange(low, high) + number * OFFSET
        table = pa.table({"id": pa.array(ids, pa.int64()), "x": pa.array(ids * 0.5, pa.float32())})
        pq.write_table(table, root / name, row_group_size=row_group)
        meta = pq.ParquetFile(root / name).metadata
        entries.append(FileEntry(name, tuple(meta.row_group(g).num_rows for g in range(meta.num_row_groups))))
    schema = pa.schema([("id", pa.int64()), ("x", pa.float32())])
    manifest = Manifest(files=tuple(entries), schema=schema, shapes={}, options={}, key=f"mix-{number}-{rows}")
    return SparkDatasetConverter(root.as_uri(), manifest)


def _mixture(
    converters: dict[str, SparkDatasetConverter],
    weights: list[float],
    seed: int,
    stop: str,
    rows_per_epoch: int,
    granularity: str,
    source_column: str | None = "src",
) -> Any:
    """A mixture of the drawn sources with the drawn weights; ``rows_per_epoch`` only where ``stop="never"``."""
    return mix(
        converters,
        {name: weights[k] for k, name in enumerate(converters)},
        seed=seed,
        stop=stop,  # type: ignore[arg-type]
        rows_per_epoch=rows_per_epoch if stop == "never" else None,
        source_column=source_column,
        granularity=granularity,  # type: ignore[arg-type]
    )


def _copy(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """A batch's arrays copied: a loader's batches may be views of data it reuses."""
    return {name: np.array(value, copy=True) for name, value in batch.items()}


def _stream(loader: Any) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Every batch as (its epoch, ids, sources), the epoch read from the state after it."""
    out = []
    for batch in loader:
        state = loader.state_dict()
        epoch = state["epoch"] if state["batch"] else state["epoch"] - 1
        out.append((epoch, batch["id"].copy(), batch["src"].copy()))
    return out


def _same(a: list[tuple[int, np.ndarray, np.ndarray]], b: list[tuple[int, np.ndarray, np.ndarray]]) -> bool:
    return len(a) == len(b) and all(
        x[0] == y[0] and np.array_equal(x[1], y[1]) and np.array_equal(x[2], y[2]) for x, y in zip(a, b, strict=True)
    )


def _finished(state: dict[str, Any]) -> bool:
    """Whether a mixer's state is one of an iteration that had reached its end."""
    return state["end_epoch"] is not None and state["epoch"] >= state["end_epoch"]


@given(
    sizes=st.lists(st.integers(1, 150), min_size=1, max_size=3),
    groups=st.lists(st.integers(1, 60), min_size=3, max_size=3),
    weights=st.lists(st.floats(0.05, 1.0), min_size=3, max_size=3),
    batch_size=st.integers(1, 40),
    stop=st.sampled_from(["first_exhausted", "never"]),
    rows_per_epoch=st.integers(1, 400),
    num_epochs=st.integers(1, 3),
    drop_last=st.booleans(),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**32),
    cut=st.integers(0, 10_000),
    granularity=st.sampled_from(["row", "batch"]),
)
def test_resuming_after_any_batch_continues_the_stream_and_every_row_is_used_once_an_epoch(
    sizes: list[int],
    groups: list[int],
    weights: list[float],
    batch_size: int,
    stop: str,
    rows_per_epoch: int,
    num_epochs: int,
    drop_last: bool,
    shuffle: bool,
    seed: int,
    cut: int,
    granularity: str,
) -> None:
    if stop == "never" and drop_last and rows_per_epoch < batch_size:
        rows_per_epoch = batch_size  # refused otherwise (an empty epoch): tested on its own
    with tempfile.TemporaryDirectory() as tmp:
        converters = {
            f"s{k}": _write(Path(tmp) / f"s{k}", rows, k, groups[k], files=1 + k % 2) for k, rows in enumerate(sizes)
        }
        mixture = _mixture(converters, weights, seed, stop, rows_per_epoch, granularity)
        kwargs: dict[str, Any] = {
            "batch_size": batch_size,
            "num_epochs": num_epochs,
            "drop_last": drop_last,
            "workers_count": 1,
            "shuffle_row_groups": shuffle,
            "shuffling_queue_capacity": 25 if shuffle else 0,
            "seed": 11,
        }
        with mixture.make_numpy_iterator(**kwargs) as loader:
            expected_len = len(loader)
            full = _stream(loader)
            stop_at = cut % (len(full) + 1)
            # Saved after the last batch, a state may be one of a finished iteration (the epoch's
            # end known): the loader then goes on with the next one, restarted or not.
            following = _stream(loader) if full and stop_at == len(full) else []
        assert len(full) == expected_len

        # Stopped after any batch (or before the first), saved through JSON, resumed by a new loader.
        with mixture.make_numpy_iterator(**kwargs) as loader:
            iterator = iter(loader)
            head = []
            for _ in range(stop_at):
                batch = next(iterator)
                state = loader.state_dict()
                epoch = state["epoch"] if state["batch"] else state["epoch"] - 1
                head.append((epoch, batch["id"].copy(), batch["src"].copy()))
            saved = json.loads(json.dumps(loader.state_dict()))
        with mixture.make_numpy_iterator(**kwargs) as loader:
            loader.load_state_dict(saved)
            assert len(loader) == (len(following) if _finished(saved) else len(full) - stop_at)
            rest = _stream(loader)
        assert _same(head + rest, full + (following if _finished(saved) else []))

    # Rows follow their sources, and each batch's source column says where each came from.
    for number, (_, ids, src) in enumerate(full):
        assert np.array_equal(ids // OFFSET, src)
        # Source after source inside a batch: in the mixture's order, reversed in odd batches (of an epoch).
        steps = np.diff(src)
        assert np.all(steps >= 0) or np.all(steps <= 0), number
        if granularity == "batch":
            assert len(set(src.tolist())) == 1, number  # a whole batch from one source
    sizes_of = dict(enumerate(sizes))
    if stop == "first_exhausted":
        for epoch in range(num_epochs):
            batches = [(ids, src) for e, ids, src in full if e == epoch]
            ids = np.concatenate([b[0] for b in batches]) if batches else np.zeros(0, np.int64)
            assert len(set(ids.tolist())) == len(ids)  # at most once per epoch
            counts = Counter((ids // OFFSET).tolist())
            if not drop_last:  # the source that ran out gave every row it has
                assert any(counts[k] == sizes_of[k] for k in sizes_of)
            assert all(len(b[0]) == batch_size for b in batches[:-1])
    else:
        rows = [len(ids) for _, ids, _ in full]
        per_epoch = (rows_per_epoch // batch_size) * batch_size if drop_last else rows_per_epoch
        assert sum(rows) == num_epochs * per_epoch
        # Each source goes through its own epochs one after another, whatever the mixture's epochs.
        every = np.concatenate([ids for _, ids, _ in full])
        for k, size in sizes_of.items():
            used = every[every // OFFSET == k]
            for start in range(0, len(used), size):
                window = used[start : start + size].tolist()
                assert len(set(window)) == len(window)
                if len(window) == size:
                    assert set(window) == set(range(k * OFFSET, k * OFFSET + size))


def test_the_draws_depend_on_seed_epoch_and_batch_only() -> None:
    draws = Draws(5, [0.25, 0.75], 64, "first_exhausted")
    again = Draws(5, [0.25, 0.75], 64, "first_exhausted")
    across = draws.counts(0, BLOCK - 3, 6)  # across a block boundary
    assert np.array_equal(across, np.concatenate([again.counts(0, BLOCK - 3, 3), again.counts(0, BLOCK, 3)]))
    assert (across.sum(axis=1) == 64).all()
    assert not np.array_equal(draws.counts(0, 0, 50), draws.counts(1, 0, 50))
    assert not np.array_equal(draws.counts(0, 0, 50), Draws(6, [0.25, 0.75], 64, "first_exhausted").counts(0, 0, 50))
    shares = draws.counts(3, 0, 2000).sum(axis=0) / (2000 * 64)
    assert abs(shares[0] - 0.25) < 0.01


def test_granularity_batch_draws_one_source_a_batch_with_the_weights() -> None:
    draws = Draws(5, [0.25, 0.75], 64, "first_exhausted", granularity="batch")
    counts = draws.counts(2, BLOCK - 500, 1000)  # across a block boundary
    assert ((counts == 0) | (counts == 64)).all() and (counts.sum(axis=1) == 64).all()
    assert abs((counts[:, 0] == 64).mean() - 0.25) < 0.07  # 1000 draws: 5 sigma is 0.07
    assert np.array_equal(
        counts, Draws(5, [0.25, 0.75], 64, "first_exhausted", granularity="batch").counts(2, BLOCK - 500, 1000)
    )
    with pytest.raises(ValueError, match="granularity='rows' is not allowed"):
        Draws(5, [0.5, 0.5], 8, "never", rows_per_epoch=80, granularity="rows")  # type: ignore[arg-type]


def test_a_never_epoch_is_rows_per_epoch_rows_with_a_short_last_batch() -> None:
    draws = Draws(1, [0.5, 0.5], 100, "never", rows_per_epoch=2_550)
    counts = draws.counts(0, 0, 10_000)
    assert len(counts) == 26 and counts.sum() == 2_550 and counts[-1].sum() == 50
    dropped = Draws(1, [0.5, 0.5], 100, "never", rows_per_epoch=2_550, drop_last=True)
    assert dropped.counts(0, 0, 10_000).sum() == 2_500


@pytest.mark.parametrize("granularity", ["row", "batch"])
def test_the_epoch_end_computed_from_the_draws_is_where_the_mixer_ends(tmp_path: Path, granularity: Any) -> None:
    a, b = _write(tmp_path / "a", 300, 0, 40), _write(tmp_path / "b", 120, 1, 25, files=2)
    mixture = mix({"a": a, "b": b}, {"a": 0.5, "b": 0.5}, seed=4, granularity=granularity)
    with mixture.make_numpy_iterator(batch_size=16, num_epochs=1, workers_count=1) as loader:
        batches = list(loader)
    end = Draws(4, [0.5, 0.5], 16, "first_exhausted", granularity=granularity).exhausted(0, [300, 120])
    assert len(batches) == end.last + 1 and len(batches[-1]["id"]) == end.last_rows
    assert sum(len(x["id"]) for x in batches) == end.last * 16 + end.last_rows
    used_b = [i for x in batches for i in x["id"].tolist() if i >= OFFSET]
    assert sorted(used_b) == list(range(OFFSET, OFFSET + 120))


def test_a_mixer_state_is_refused_by_another_mixture_naming_the_field(tmp_path: Path) -> None:
    a, b = _write(tmp_path / "a", 100, 0, 30), _write(tmp_path / "b", 80, 1, 30)
    with mix({"a": a, "b": b}, {"a": 1, "b": 1}, seed=2).make_numpy_iterator(batch_size=8, num_epochs=1) as loader:
        next(iter(loader))
        state = loader.state_dict()
    with (
        mix({"a": a, "b": b}, {"a": 2, "b": 1}, seed=2).make_numpy_iterator(batch_size=8, num_epochs=1) as other,
        pytest.raises(ValueError, match="probabilities"),
    ):
        other.load_state_dict(state)
    with (
        mix({"a": a, "b": b}, {"a": 1, "b": 1}, seed=3).make_numpy_iterator(batch_size=8, num_epochs=1) as other,
        pytest.raises(ValueError, match="seed=2"),
    ):
        other.load_state_dict(state)
    whole = mix({"a": a, "b": b}, {"a": 1, "b": 1}, seed=2, granularity="batch")
    with whole.make_numpy_iterator(batch_size=8, num_epochs=1) as other, pytest.raises(ValueError, match="granularity"):
        other.load_state_dict(state)
    # A state saved before granularity existed is a row mixture's.
    older = json.loads(json.dumps(state))
    del older["identity"]["granularity"]
    with mix({"a": a, "b": b}, {"a": 1, "b": 1}, seed=2).make_numpy_iterator(batch_size=8, num_epochs=1) as same:
        same.load_state_dict(older)
        assert same.state_dict() == state
    with a.make_numpy_iterator(batch_size=8, num_epochs=1) as single:
        next(iter(single))
        with (
            mix({"a": a, "b": b}, {"a": 1, "b": 1}, seed=2).make_numpy_iterator(batch_size=8, num_epochs=1) as other,
            pytest.raises(ValueError, match="single converter's loader"),
        ):
            other.load_state_dict(single.state_dict())


def _write_column(root: Path, name: str, column: pa.Array) -> SparkDatasetConverter:
    """A converter of one Parquet file: ``column`` and nothing else."""
    root.mkdir(parents=True)
    pq.write_table(pa.table({name: column}), root / "part-0.parquet")
    entry = FileEntry("part-0.parquet", (len(column),))
    manifest = Manifest(files=(entry,), schema=pa.schema([(name, column.type)]), shapes={}, options={}, key=root.name)
    return SparkDatasetConverter(root.as_uri(), manifest)


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        # NumPy holds both as object arrays: only the Arrow types tell str from bytes, int32 from float64 arrays.
        (pa.array(["a", "bc"]), pa.array([b"a", b"bc"]), "object string in source 'a' but object binary"),
        (pa.array([[1], [2, 3]], pa.list_(pa.int32())), pa.array([[1.0], [2.0, 3.0]]), "ragged list<item: int32>"),
        (pa.array([[1], [2, 3]]), pa.array([[[1]], [[2], [3]]]), "ragged list<item: int64> in source 'a' but ragged"),
        # Both datetime64[us]: instants in UTC (Spark's TIMESTAMP) against wall-clock times (TIMESTAMP_NTZ).
        (
            pa.array([0, 1], pa.timestamp("us", tz="UTC")),
            pa.array([0, 1], pa.timestamp("us")),
            r"datetime64\[us\] from timestamp\[us, tz=UTC\] .* in source 'a' but datetime64\[us\] from timestamp\[us\]",
        ),
    ],
)
@pytest.mark.parametrize("granularity", ["row", "batch"])
def test_sources_whose_object_columns_hold_other_values_are_refused(
    tmp_path: Path, first: pa.Array, second: pa.Array, message: str, granularity: Any
) -> None:
    a, b = _write_column(tmp_path / "a", "c", first), _write_column(tmp_path / "b", "c", second)
    mixture = mix({"a": a, "b": b}, seed=1, granularity=granularity)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"column 'c' is {message}"):
        mixture.make_numpy_iterator(batch_size=2, num_epochs=1)
    # Strings of either Arrow width are the same Python str, in a ragged column too.
    wide = _write_column(tmp_path / "wide", "c", pa.array(["d", "ef"], pa.large_string()))
    nested = _write_column(tmp_path / "nested", "c", pa.array([["d"], ["e", "f"]], pa.list_(pa.large_string())))
    if pa.types.is_string(first.type):
        with mix({"a": a, "wide": wide}, seed=1).make_numpy_iterator(batch_size=4, num_epochs=1) as loader:
            values = [v for batch in loader for v in batch["c"]]
        assert values and set(values) <= {"a", "bc", "d", "ef"} and all(isinstance(v, str) for v in values)
        other = _write_column(tmp_path / "other", "c", pa.array([["a"], ["b", "c"]]))
        with mix({"o": other, "n": nested}, seed=1).make_numpy_iterator(batch_size=4, num_epochs=1) as loader:
            arrays = [v for batch in loader for v in batch["c"]]
        assert arrays and all(isinstance(s, str) for v in arrays for s in v)
    if pa.types.is_timestamp(first.type):  # instants in any zone are instants alike
        paris = _write_column(tmp_path / "paris", "c", pa.array([2, 3], pa.timestamp("us", tz="Europe/Paris")))
        with mix({"a": a, "paris": paris}, seed=1).make_numpy_iterator(batch_size=4, num_epochs=1) as loader:
            stamps = np.concatenate([batch["c"] for batch in loader])
        assert (
            stamps.dtype == np.dtype("datetime64[us]")
            and len(stamps)
            and set(stamps.astype(np.int64).tolist()) <= {0, 1, 2, 3}
        )


def test_an_unseeded_mixture_resumes_exactly_with_the_seeds_it_drew(tmp_path: Path) -> None:
    a, b = _write(tmp_path / "a", 200, 0, 30), _write(tmp_path / "b", 150, 1, 20)
    mixture = mix({"a": a, "b": b})
    kwargs = {"batch_size": 10, "num_epochs": 2, "shuffling_queue_capacity": 40, "workers_count": 1}
    with mixture.make_numpy_iterator(**kwargs) as loader:
        iterator = iter(loader)
        for _ in range(7):
            next(iterator)
        state = json.loads(json.dumps(loader.state_dict()))
        rest = [x["id"].copy() for x in iterator]
    with mixture.make_numpy_iterator(**kwargs) as resumed:  # draws its own seeds, then takes the saved ones
        resumed.load_state_dict(state)
        again = [x["id"] for x in resumed]
    assert len(rest) == len(again) and all(np.array_equal(x, y) for x, y in zip(rest, again, strict=True))


def test_iterating_again_continues_with_the_next_epochs(tmp_path: Path) -> None:
    a, b = _write(tmp_path / "a", 60, 0, 30), _write(tmp_path / "b", 60, 1, 30)
    mixture = mix({"a": a, "b": b}, seed=1)
    with mixture.make_numpy_iterator(batch_size=7, num_epochs=2, workers_count=1) as loader:
        both = [x["id"] for x in loader]
    with mixture.make_numpy_iterator(batch_size=7, num_epochs=1, workers_count=1) as loader:
        first, second = [x["id"] for x in loader], [x["id"] for x in loader]
        iterator = iter(loader)
        next(iterator)
        with pytest.raises(RuntimeError, match="already being iterated"):
            iter(loader)
    assert all(np.array_equal(x, y) for x, y in zip(first + second, both, strict=True))


def test_an_iterator_dropped_unadvanced_leaves_the_resumed_remainder_for_the_next(tmp_path: Path) -> None:
    """PyTorch Lightning probes a loader with iter() and drops the iterator: the resumed rest must stay."""
    a, b = _write(tmp_path / "a", 60, 0, 30), _write(tmp_path / "b", 60, 1, 30)
    mixture = mix({"a": a, "b": b}, seed=1)
    kwargs = {"batch_size": 7, "num_epochs": 1, "workers_count": 1}
    with mixture.make_numpy_iterator(**kwargs) as loader:
        iterator = iter(loader)
        head = [next(iterator)["id"].copy() for _ in range(3)]
        state = loader.state_dict()
        rest = [x["id"].copy() for x in iterator]
    with mixture.make_numpy_iterator(**kwargs) as resumed:
        resumed.load_state_dict(state)
        iter(resumed)  # made and dropped, never advanced
        again = [x["id"] for x in resumed]
    assert head and rest and len(again) == len(rest)
    assert all(np.array_equal(x, y) for x, y in zip(rest, again, strict=True))


def test_a_state_saved_after_a_finished_iteration_resumes_with_the_next_epoch(tmp_path: Path) -> None:
    """A checkpoint at the end of a training epoch: the restarted loader goes on as the uninterrupted one would."""
    a, b = _write(tmp_path / "a", 60, 0, 30), _write(tmp_path / "b", 60, 1, 30)
    mixture = mix({"a": a, "b": b}, seed=1)
    kwargs = {"batch_size": 7, "num_epochs": 1, "workers_count": 1}
    with mixture.make_numpy_iterator(**kwargs) as loader:
        list(loader)
        state = json.loads(json.dumps(loader.state_dict()))
        second = [x["id"].copy() for x in loader]
    with mixture.make_numpy_iterator(**kwargs) as resumed:
        resumed.load_state_dict(state)
        assert len(resumed) == len(second) > 0
        again = [x["id"] for x in resumed]
    assert len(again) == len(second) and all(np.array_equal(x, y) for x, y in zip(second, again, strict=True))


@pytest.mark.parametrize("stop", ["first_exhausted", "never"])
def test_states_of_a_finished_iteration_resume_on_another_shard_count_with_the_next_epoch(
    tmp_path: Path, stop: str
) -> None:
    """Checkpoints at the end of a training epoch, resumed on more ranks: the next epoch, not an empty loop."""
    a, b = _write(tmp_path / "a", 100, 0, 10), _write(tmp_path / "b", 60, 1, 10, files=2)
    mixture = mix({"a": a, "b": b}, seed=1, stop=stop, rows_per_epoch=120 if stop == "never" else None)  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {"batch_size": 8, "num_epochs": 1, "workers_count": 1, "shard_policy": "drop"}
    states, first = [], []
    for rank in range(2):
        with mixture.make_numpy_iterator(cur_shard=rank, shard_count=2, **kwargs) as loader:
            first += [int(i) for batch in loader for i in batch["id"]]
            states.append(json.loads(json.dumps(loader.state_dict())))
    counts, after = [], []
    for rank in range(3):
        with mixture.make_numpy_iterator(cur_shard=rank, shard_count=3, **kwargs) as loader:
            loader.load_state_dict(states)
            expected = len(loader)
            rest = [batch["id"].copy() for batch in loader]
        assert len(rest) == expected > 0
        counts.append(len(rest))
        if stop == "first_exhausted":  # epoch 1 of the mixture, as three ranks from the start read it
            with mixture.make_numpy_iterator(cur_shard=rank, shard_count=3, **{**kwargs, "num_epochs": 2}) as fresh:
                both = [batch["id"].copy() for batch in fresh]
            assert len(both) > len(rest)
            assert all(np.array_equal(x, y) for x, y in zip(both[len(both) - len(rest) :], rest, strict=True))
        after += [int(i) for ids in rest for i in ids]
    if stop == "first_exhausted":
        assert len(set(counts)) == 1 and len(set(after)) == len(after)  # no row twice in the new epoch
    else:  # an epoch of 120 rows on every rank, each source going on where the old ranks left it
        assert counts == [15, 15, 15]


def test_an_iteration_after_close_from_another_thread_reads_every_row_of_its_epoch(tmp_path: Path) -> None:
    """A loop closed while inside a step ends at that step's end: its cleanup must not close the next iteration's."""
    a, b = _write(tmp_path / "a", 60, 0, 10), _write(tmp_path / "b", 60, 1, 10)
    release, blocked = threading.Event(), threading.Event()

    def transform(frame: Any) -> Any:
        if 30 in frame["id"].values:  # source a's fourth row group: not needed for the first batch
            blocked.set()
            release.wait(30)
        return frame

    mixture = mix({"a": a, "b": b}, seed=1)
    kwargs = {"batch_size": 7, "num_epochs": 1, "workers_count": 1, "prefetch": 1, "transform_fn": transform}
    with mixture.make_numpy_iterator(**kwargs) as loader:
        seen: list[np.ndarray] = []
        consumer = threading.Thread(target=lambda: seen.extend(x["id"].copy() for x in loader))
        consumer.start()
        deadline = time.monotonic() + 30
        while not (blocked.is_set() and seen) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # the loop has used what was read before and waits inside a step
        loader.close()  # the loop waits for a source's row group: it ends once that read does
        threading.Timer(0.5, release.set).start()
        asked = time.monotonic()
        iterator = iter(loader)  # waits for the closed iteration to end: its cleanup closes the sources
        assert time.monotonic() - asked >= 0.4
        again = [x["id"].copy() for x in iterator]
        consumer.join(30)
    assert not consumer.is_alive() and seen
    with mixture.make_numpy_iterator(**{**kwargs, "transform_fn": None}) as loader:
        next(iter(loader))
        loader.close()  # in this thread: the closed iteration ends at once
        expected = [x["id"].copy() for x in loader]
    assert len(again) == len(expected) and all(np.array_equal(x, y) for x, y in zip(again, expected, strict=True))


def test_len_of_countless_epochs_of_a_mixture_is_refused_not_counted_forever(tmp_path: Path) -> None:
    a, b = _write(tmp_path / "a", 60, 0, 30), _write(tmp_path / "b", 60, 1, 30)
    mixture = mix({"a": a, "b": b}, seed=1)
    with mixture.make_numpy_iterator(batch_size=7, num_epochs=2**63 - 1, workers_count=1) as loader:
        with pytest.raises(TypeError, match=r"epochs are more than 10,000: pass fewer num_epochs"):
            len(loader)
        assert loader.batch_count(7, False) is None  # a TF dataset's cardinality: unknown
        assert next(iter(loader))["id"].shape == (7,)


def _drop_thirds(frame: Any) -> Any:
    return frame[frame["id"] % 3 != 0]


@pytest.mark.parametrize("stop", ["first_exhausted", "never"])
def test_a_transform_that_drops_rows_resumes_exactly_and_len_is_an_upper_bound(tmp_path: Path, stop: str) -> None:
    a, b = _write(tmp_path / "a", 240, 0, 25), _write(tmp_path / "b", 90, 1, 20, files=2)
    mixture = mix({"a": a, "b": b}, {"a": 0.6, "b": 0.4}, seed=3, stop=stop)  # type: ignore[arg-type]
    kwargs = {"batch_size": 9, "num_epochs": 2, "workers_count": 1, "transform_fn": _drop_thirds, "seed": 1}
    with mixture.make_numpy_iterator(**kwargs) as loader:
        bound = len(loader)
        full = [x["id"].copy() for x in loader]
    assert len(full) <= bound and all(i % 3 for batch in full for i in batch.tolist())
    for cut in (1, len(full) // 2, len(full) - 1):
        with mixture.make_numpy_iterator(**kwargs) as loader:
            iterator = iter(loader)
            head = [next(iterator)["id"].copy() for _ in range(cut)]
            state = json.loads(json.dumps(loader.state_dict()))
        with mixture.make_numpy_iterator(**kwargs) as loader:
            loader.load_state_dict(state)
            rest = [x["id"] for x in loader]
        assert len(head) + len(rest) == len(full)
        assert all(np.array_equal(x, y) for x, y in zip(head + rest, full, strict=True))


# ---------------------------------------------------------------- sequences: each batch whole from one source

TOKEN_SCALE = 100
"""Token ``j`` of the row with id ``i`` is ``i * TOKEN_SCALE + j``: any batch says which rows and tokens it holds."""

SEQUENCE_MODES: dict[str, Any] = {
    "pad": {"tok": Sequence("pad", mask=True)},
    "bucket": {"tok": Sequence("bucket", buckets=(4, 16, 64))},
    "pack": {"tok": Sequence("pack", seq_len=16)},
}


def _write_sequences(root: Path, rows: int, number: int, row_group: int) -> SparkDatasetConverter:
    """A converter of ``rows`` rows (id, tok), tok of 0-40 tokens, stored as the cache stores them (views)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(number * 7 + rows)
    lengths = np.minimum(np.round(rng.lognormal(np.log(6), 1.0, rows)), 40).astype(np.int64) * (rng.random(rows) > 0.1)
    ids = np.arange(rows, dtype=np.int64) + number * OFFSET
    values = np.concatenate([[0], *(i * TOKEN_SCALE + np.arange(n) for i, n in zip(ids, lengths, strict=True))])[1:]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    logical = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(np.int64)))
    table = pa.table({"id": pa.array(ids), "tok": pack_ragged(logical, (-1,))})
    pq.write_table(table, root / "part-0.parquet", row_group_size=row_group)
    meta = pq.ParquetFile(root / "part-0.parquet").metadata
    groups = tuple(meta.row_group(g).num_rows for g in range(meta.num_row_groups))
    schema = pa.schema([("id", pa.int64()), ("tok", logical.type)])
    manifest = Manifest(
        files=(FileEntry("part-0.parquet", groups, {"tok": (-1,)}),),
        schema=schema,
        shapes={"tok": list_shape_stats(logical)},
        options={},
        key=f"seq-{number}-{rows}",
    )
    return SparkDatasetConverter(root.as_uri(), manifest)


def _sequence_rows(batch: dict[str, np.ndarray], mode: str) -> dict[int, list[int]]:
    """Each row's tokens in a padded, bucketed or packed batch, by row id (a packed row's from its tokens)."""
    tokens = batch["tok"]
    if mode == "pack":
        rows: dict[int, list[int]] = {}
        for token in tokens[batch["tok_segment_ids"] > 0].tolist():
            rows.setdefault(token // TOKEN_SCALE, []).append(token)
        return rows
    return {int(i): row[:n].tolist() for i, row, n in zip(batch["id"], tokens, batch["tok_lengths"], strict=True)}


def _own_batches(converter: SparkDatasetConverter, count: int, options: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    """The first ``count`` batches of a converter's own endless loader."""
    with converter.make_numpy_iterator(num_epochs=None, **options) as loader:
        return [_copy(batch) for batch in itertools.islice(loader, count)]


def _own_epoch(converter: SparkDatasetConverter, epoch: int, options: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    """The batches of a converter's own loader in its epoch ``epoch``."""
    with converter.make_numpy_iterator(num_epochs=epoch + 1, **options) as loader:
        out = []
        for batch in loader:
            state = loader.state_dict()
            if (state["epoch"] if state["segment"] or state["offset"] else state["epoch"] - 1) == epoch:
                out.append(_copy(batch))
        return out


@pytest.mark.parametrize("mode", ["pad", "bucket"])
def test_a_sequence_source_used_up_within_the_epoch_stays_used_up_when_resumed(tmp_path: Path, mode: str) -> None:
    # s2's one row comes first; saved after a later batch, s2's position was its reader's state
    # after its last batch: the next epoch's start. Resumed from it, s2 read its next epoch, and
    # its row came a second time in the same mixture epoch (found by the property test below).
    converters = {f"s{k}": _write_sequences(tmp_path / f"s{k}", rows, k, 17) for k, rows in enumerate([1, 2, 1])}
    mixture = _mixture(converters, [1.0, 1.0, 1.0], 0, "first_exhausted", 1, "batch")
    kwargs: dict[str, Any] = {"batch_size": 1, "workers_count": 1, "seed": 11, "sequence": SEQUENCE_MODES[mode]}
    with mixture.make_numpy_iterator(num_epochs=1, **kwargs) as loader:
        full = [batch["id"].tolist() for batch in loader]
    assert sorted(full) == [[0], [OFFSET], [OFFSET + 1], [2 * OFFSET]]
    for stop_at in range(len(full)):
        with mixture.make_numpy_iterator(num_epochs=1, **kwargs) as loader:
            iterator = iter(loader)
            head = [next(iterator)["id"].tolist() for _ in range(stop_at)]
            saved = json.loads(json.dumps(loader.state_dict()))
        with mixture.make_numpy_iterator(num_epochs=1, **kwargs) as loader:
            loader.load_state_dict(saved)
            assert len(loader) == len(full) - stop_at
            assert head + [batch["id"].tolist() for batch in loader] == full


@settings(deadline=None)
@given(
    mode=st.sampled_from(sorted(SEQUENCE_MODES)),
    sizes=st.lists(st.integers(1, 120), min_size=1, max_size=3),
    weights=st.lists(st.floats(0.05, 1.0), min_size=3, max_size=3),
    batch_size=st.integers(1, 12),
    stop=st.sampled_from(["first_exhausted", "never"]),
    rows_per_epoch=st.integers(1, 300),
    num_epochs=st.integers(1, 3),
    drop_last=st.booleans(),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**32),
    cut=st.integers(0, 10_000),
)
def test_a_sequence_mixture_hands_on_its_sources_own_batches_and_resumes_exactly(
    mode: str,
    sizes: list[int],
    weights: list[float],
    batch_size: int,
    stop: str,
    rows_per_epoch: int,
    num_epochs: int,
    drop_last: bool,
    shuffle: bool,
    seed: int,
    cut: int,
) -> None:
    if mode == "pack":
        batch_size = max(batch_size // 3, 3)  # a packed batch must hold the longest row: 3 x 16 values
    assume(not (stop == "never" and drop_last))  # a source whose epochs give no batch is refused: tested on its own
    with tempfile.TemporaryDirectory() as tmp:
        converters = {f"s{k}": _write_sequences(Path(tmp) / f"s{k}", rows, k, 17) for k, rows in enumerate(sizes)}
        mixture = _mixture(converters, weights, seed, stop, rows_per_epoch, "batch")
        kwargs: dict[str, Any] = {
            "batch_size": batch_size,
            "drop_last": drop_last,
            "workers_count": 1,
            "shuffle_row_groups": shuffle,
            "shuffling_queue_capacity": 25 if shuffle else 0,
            "seed": 11,
            "sequence": SEQUENCE_MODES[mode],
        }
        if mode == "pack":
            kwargs["schema_fields"] = ["tok"]

        def stream(loader: Any) -> list[tuple[int, dict[str, np.ndarray]]]:
            out = []
            for batch in loader:
                state = loader.state_dict()
                epoch = state["epoch"] if state["batch"] else state["epoch"] - 1
                out.append((epoch, _copy(batch)))
            return out

        with mixture.make_numpy_iterator(num_epochs=num_epochs, **kwargs) as loader:
            expected_len = len(loader)  # bucketed and packed sources count their batches from the rows' lengths
            full = stream(loader)
            stop_at = cut % (len(full) + 1)
            # Saved after the last batch, a state may be one of a finished iteration (the epoch's
            # end known): the loader then goes on with the next one, restarted or not.
            following = stream(loader) if full and stop_at == len(full) else []
        assert len(full) == expected_len

        # Stopped after any batch (or before the first), saved through JSON, resumed by a new loader.
        with mixture.make_numpy_iterator(num_epochs=num_epochs, **kwargs) as loader:
            iterator = iter(loader)
            head = [(0, next(iterator)) for _ in range(stop_at)]
            saved = json.loads(json.dumps(loader.state_dict()))
        with mixture.make_numpy_iterator(num_epochs=num_epochs, **kwargs) as loader:
            loader.load_state_dict(saved)
            left = len(loader)
            rest = stream(loader)
        assert left == len(rest)
        resumed = [batch for _, batch in head] + [batch for _, batch in rest]
        expected = full + (following if _finished(saved) else [])
        assert len(resumed) == len(expected)
        for mine, theirs in zip(resumed, expected, strict=True):
            assert mine.keys() == theirs[1].keys()
            assert all(np.array_equal(mine[name], theirs[1][name]) for name in mine)

        # Each batch is whole from one source, and source k's batches are its own loader's, in order:
        # with "first_exhausted" a prefix of its epoch e in the mixture's epoch e, all of it for the
        # source that ran out; with "never" a prefix of its endless stream.
        assert all(len(set(batch["src"].tolist())) == 1 for _, batch in full)
        for epoch in range(num_epochs if stop == "first_exhausted" else 1):
            given = [batch for e, batch in full if e == epoch or stop == "never"]
            whole_epoch = []
            for k in range(len(sizes)):
                mine = [batch for batch in given if int(batch["src"][0]) == k]
                if stop == "first_exhausted":
                    own = _own_epoch(converters[f"s{k}"], epoch, kwargs)
                else:
                    own = _own_batches(converters[f"s{k}"], len(mine), kwargs)
                assert len(mine) <= len(own)
                whole_epoch.append(len(mine) == len(own))
                for batch, theirs in zip(mine, own, strict=False):
                    assert set(batch) == {*theirs, "src"}
                    assert all(np.array_equal(batch[name], theirs[name]) for name in theirs)
                    rows = _sequence_rows(batch, mode)
                    assert all(
                        tokens == list(range(i * TOKEN_SCALE, i * TOKEN_SCALE + len(tokens)))
                        for i, tokens in rows.items()
                    )
            if stop == "first_exhausted":
                assert any(whole_epoch)


def _tokens_from_ids(frame: Any) -> Any:
    """A transform that makes the sequence from each row's id, as a tokenizer would from text."""
    frame["tok"] = [np.arange(int(i) * TOKEN_SCALE, int(i) * TOKEN_SCALE + int(i) % 13) for i in frame["id"]]
    return frame


@pytest.mark.parametrize("mode", ["pad", "bucket"])
def test_a_transform_may_make_the_sequences_of_a_mixture(tmp_path: Path, mode: str) -> None:
    """Columns are known once read; the sources' first batches agree though their padded widths differ."""
    converters = {f"s{k}": _write_sequences(tmp_path / f"s{k}", 60 + 40 * k, k, 17) for k in range(2)}
    mixture = mix(converters, seed=3, granularity="batch", source_column="src")
    spec = TransformSpec(_tokens_from_ids, selected_fields=["id", "tok"])
    kwargs: dict[str, Any] = {
        "batch_size": 8,
        "num_epochs": 1,
        "workers_count": 1,
        "schema_fields": ["id"],
        "transform_spec": spec,
        "sequence": SEQUENCE_MODES[mode],
    }
    with mixture.make_numpy_iterator(**kwargs) as loader:
        batches = list(loader)
    assert {int(b["src"][0]) for b in batches} == {0, 1}
    assert len({b["tok"].shape[1] for b in batches}) > 1  # widths vary from batch to batch and source to source
    for batch in batches:
        assert list(batch)[:2] == ["id", "tok"]
        for row_id, tokens in _sequence_rows(batch, mode).items():
            assert tokens == list(range(row_id * TOKEN_SCALE, row_id * TOKEN_SCALE + row_id % 13))


@settings(deadline=None)
@given(
    sizes=st.lists(st.integers(20, 150), min_size=1, max_size=2),
    weights=st.lists(st.floats(0.1, 1.0), min_size=2, max_size=2),
    batch_size=st.integers(1, 16),
    stop=st.sampled_from(["first_exhausted", "never"]),
    rows_per_epoch=st.integers(40, 300),
    old_count=st.integers(1, 3),
    new_count=st.integers(1, 3),
    shuffle=st.booleans(),
    granularity=st.sampled_from(["row", "batch"]),
    seed=st.integers(0, 2**32),
    cut=st.integers(0, 10_000),
)
def test_a_mixture_saved_on_some_shards_resumes_on_any_number_with_no_row_twice_and_equal_counts(
    sizes: list[int],
    weights: list[float],
    batch_size: int,
    stop: str,
    rows_per_epoch: int,
    old_count: int,
    new_count: int,
    shuffle: bool,
    granularity: str,
    seed: int,
    cut: int,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        converters = {
            f"s{k}": _write(Path(tmp) / f"s{k}", rows, k, 13, files=1 + k % 2) for k, rows in enumerate(sizes)
        }
        mixture = _mixture(converters, weights, seed, stop, rows_per_epoch, granularity, source_column=None)
        kwargs: dict[str, Any] = {
            "batch_size": batch_size,
            "num_epochs": 1,
            "workers_count": 1,
            "shard_policy": "drop",  # no row repeated, so "no row twice" is exact
            "shuffle_row_groups": shuffle,
            "shuffling_queue_capacity": 20 if shuffle else 0,
            "seed": 11,
        }
        used: list[int] = []
        states = []
        with mixture.make_numpy_iterator(cur_shard=0, shard_count=old_count, **kwargs) as loader:
            # Saved after the last batch, a state is one of a finished iteration, which goes on
            # with the next epoch (its own test): here, inside the epoch.
            stop_at = cut % len(loader) if len(loader) else 0
        for rank in range(old_count):
            with mixture.make_numpy_iterator(cur_shard=rank, shard_count=old_count, **kwargs) as loader:
                batches = iter(loader)
                used += [int(i) for _ in range(stop_at) for i in next(batches)["id"]]
                states.append(json.loads(json.dumps(loader.state_dict())))
        counts = []
        for rank in range(new_count):
            with mixture.make_numpy_iterator(cur_shard=rank, shard_count=new_count, **kwargs) as loader:
                loader.load_state_dict(states)
                expected = len(loader)
                rest = [batch["id"].copy() for batch in loader]
            assert len(rest) == expected
            counts.append(len(rest))
            used += [int(i) for ids in rest for i in ids]
        assert len(set(counts)) == 1  # every new rank ends the epoch after the same batch
        if stop == "first_exhausted":
            assert len(set(used)) == len(used)  # no row twice in the epoch, across the reshard
        else:  # an epoch of rows_per_epoch rows on every rank, before and after
            whole = rows_per_epoch // batch_size + (rows_per_epoch % batch_size > 0)
            assert stop_at + counts[0] == whole
