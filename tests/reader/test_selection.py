"""Columns by pattern, rows by filters and predicates: on the real reader, Parquet written with pyarrow.

The invariants (every row that passes, exactly once per epoch over the shards; exact resume;
reshard losing and repeating nothing) are checked on random datasets, filters and reader
settings; the rest pins each documented behaviour and error.
"""

from __future__ import annotations

import datetime
import itertools
import json
import math
import operator
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from hypothesis import given
from hypothesis import strategies as st

from sparkfeed.cache import FileEntry, Manifest
from sparkfeed.location import Location
from sparkfeed.options import reader_options
from sparkfeed.predicates import in_lambda, in_set
from sparkfeed.reader import Reader
from sparkfeed.reader.selection import kept_positions, select_columns


def _v(ids: np.ndarray) -> np.ndarray:
    """A column unrelated to the file order, so that statistics rarely rule a row group out by it."""
    return (ids * 7919) % 101


def _write(root: Path, rows: int, row_group: int, files: int = 1) -> Manifest:
    """``rows`` ids 0.. with ``v`` and ``x`` in ``files`` Parquet files of ``row_group``-row groups; their manifest."""
    root.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, rows, files + 1).astype(int)
    entries = []
    for number, (low, high) in enumerate(itertools.pairwise(bounds)):
        ids = np.arange(low, high)
        table = pa.table({"id": pa.array(ids, pa.int64()), "v": pa.array(_v(ids), pa.int64()), "x": ids * 0.5})
        name = f"part-{number}.parquet"
        pq.write_table(table, root / name, row_group_size=row_group)
        metadata = pq.ParquetFile(root / name).metadata
        entries.append(FileEntry(name, tuple(metadata.row_group(g).num_rows for g in range(metadata.num_row_groups))))
    schema = pa.schema([("id", pa.int64()), ("v", pa.int64()), ("x", pa.float64())])
    return Manifest(files=tuple(entries), schema=schema, shapes={}, options={}, key="k")


def _reader(root: Path, manifest: Manifest, **options: Any) -> Reader[Any]:
    return Reader(root.as_uri(), manifest, reader_options(workers_count=1, **options))


def _ids(batches: Any) -> list[int]:
    return [int(i) for batch in batches for i in batch["id"]]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    root = tmp_path_factory.mktemp("selection")
    return root, _write(root, 1000, 37, files=3)


# ---------------------------------------------------------------------------------- columns


def test_schema_fields_are_names_or_whole_name_patterns_in_entry_order() -> None:
    names = ["id", "feature_1", "feature_2", "label", "a.b", "axb", "x[0]"]
    assert select_columns(None, names) is None
    assert select_columns(["label", "id"], names) == ["label", "id"]  # plain names, as before
    assert select_columns(["feature_.*", "id"], names) == ["feature_1", "feature_2", "id"]
    assert select_columns(["feat"], ["feat", "feature_1"]) == ["feat"]  # fullmatch: not a prefix match
    assert select_columns(["id", "i.", "feature_1", "feature_\\d"], names) == ["id", "feature_1", "feature_2"]
    assert select_columns(["a.b"], names) == ["a.b"]  # a name selects itself only, though '.' matches 'x' too
    assert select_columns(["a.."], names) == ["a.b", "axb"]
    assert select_columns(["x[0]"], names) == ["x[0]"]  # as a pattern, it would match "x0" and not itself
    with pytest.raises(ValueError, match=r"schema_fields \['lab', 'nope.\*'\] are not columns of the dataset, nor"):
        select_columns(["id", "lab", "nope.*"], names)
    with pytest.raises(ValueError, match=r"schema_fields entry 'feature_\[' is neither a column .* valid regular"):
        select_columns(["feature_["], names)


def test_patterns_select_the_reader_columns(dataset) -> None:
    root, manifest = dataset
    with _reader(root, manifest, batch_size=1000, num_epochs=1, schema_fields=["[vx]"]) as reader:
        (batch,) = list(reader)
    assert list(batch) == ["v", "x"] and len(batch["v"]) == 1000


# ---------------------------------------------------------------------------------- filters


OPS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "<": operator.lt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


def _matches(dnf: list[list[tuple[str, str, int]]], ids: np.ndarray) -> np.ndarray:
    """The rows a DNF filter keeps, computed with NumPy from the columns' definitions."""
    columns = {"id": ids, "v": _v(ids)}
    keep = np.zeros(len(ids), dtype=bool)
    for conjunction in dnf:
        term = np.ones(len(ids), dtype=bool)
        for name, op, value in conjunction:
            term &= OPS[op](columns[name], value)
        keep |= term
    return keep


def test_filters_keep_what_pq_read_table_keeps_in_both_forms(dataset) -> None:
    root, manifest = dataset
    files = [str(root / entry.path) for entry in manifest.files]
    dnf = [[("v", "<", 30), ("id", ">=", 200)], [("id", "==", 5)]]
    expected = sorted(pq.read_table(files, filters=dnf).column("id").to_pylist())
    assert expected == np.flatnonzero(_matches(dnf, np.arange(1000))).tolist() and len(expected) > 100
    expression = ((pc.field("v") < 30) & (pc.field("id") >= 200)) | (pc.field("id") == 5)
    for filters in (dnf, expression):
        with _reader(root, manifest, batch_size=64, num_epochs=1, filters=filters, seed=3) as reader:
            assert sorted(_ids(reader)) == expected
    with _reader(root, manifest, batch_size=64, num_epochs=1, filters=[("id", "in", {5, 7, 900})]) as reader:
        assert sorted(_ids(reader)) == [5, 7, 900]


def test_row_groups_the_statistics_rule_out_are_not_planned(dataset) -> None:
    root, manifest = dataset
    with _reader(root, manifest, batch_size=10, num_epochs=1, filters=[("id", "<", 100)]) as reader:
        assert reader.num_rows == 3 * 37  # only the groups [0, 37), [37, 74), [74, 111) may hold id < 100
        assert len(reader) == 12 and reader.filters_rows  # an upper bound: ceil(111 / 10)
        batches = list(reader)
    assert len(batches) == 10 and sorted(_ids(batches)) == list(range(100))
    with _reader(root, manifest, batch_size=10, num_epochs=1, filters=[("v", "!=", 7)]) as reader:
        assert reader.num_rows == 1000  # every group's v spans 7 and others: nothing to rule out
        assert len(list(reader)) == math.ceil((1000 - int((_v(np.arange(1000)) == 7).sum())) / 10)


def test_a_column_cast_on_read_is_filtered_on_its_read_values_not_its_stored_statistics(tmp_path) -> None:
    # Stored as float64, read as float32 (a dataset opened in place with dtype="float32"): 0.1 becomes
    # 0.10000000149, which is > 0.1. The stored statistics (max 0.1) would rule the group out.
    values = np.array([0.1] * 10 + [0.05] * 10)
    pq.write_table(pa.table({"id": np.arange(20), "x": values}), tmp_path / "part.parquet", row_group_size=10)
    manifest = Manifest(
        files=(FileEntry("part.parquet", (10, 10)),),
        schema=pa.schema([("id", pa.int64()), ("x", pa.float64())]),
        shapes={},
        options={"dtype": "float32"},
    )
    with _reader(tmp_path, manifest, batch_size=20, num_epochs=1, filters=pc.field("x") > 0.1) as reader:
        (batch,) = list(reader)
    assert batch["x"].dtype == np.float32 and sorted(batch["id"].tolist()) == list(range(10))


def test_hive_partition_values_filter_and_prune_whole_files(tmp_path) -> None:
    entries = []
    for year in (2023, 2024):
        (tmp_path / f"year={year}").mkdir()
        pq.write_table(pa.table({"id": np.arange(10) + year}), tmp_path / f"year={year}" / "part.parquet")
        entries.append(FileEntry(f"year={year}/part.parquet", (10,), partition={"year": year}))
    schema = pa.schema([("id", pa.int64()), ("year", pa.int64())])
    manifest = Manifest(files=tuple(entries), schema=schema, shapes={}, options={})
    with _reader(tmp_path, manifest, batch_size=50, num_epochs=1, filters=[("year", "=", 2024)]) as reader:
        assert reader.num_rows == 10  # the other file's partition value rules it out
        (batch,) = list(reader)
    assert batch["year"].tolist() == [2024] * 10 and sorted(batch["id"].tolist()) == list(range(2024, 2034))


def test_filter_and_predicate_columns_outside_schema_fields_are_read_and_not_yielded(dataset) -> None:
    root, manifest = dataset
    kwargs: dict[str, Any] = {"batch_size": 1000, "num_epochs": 1, "schema_fields": ["x"]}
    predicate = in_lambda(["id"], lambda i: i % 2 == 0)
    with _reader(root, manifest, filters=[("v", "<", 50)], predicate=predicate, **kwargs) as reader:
        (batch,) = list(reader)
    ids = np.arange(1000)
    expected = ids[(_v(ids) < 50) & (ids % 2 == 0)] * 0.5
    assert list(batch) == ["x"] and sorted(batch["x"].tolist()) == expected.tolist()


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ([("nope", "=", 1)], r"filters \(nope == 1\) cannot be evaluated on this dataset .*its columns are"),
        (pc.field("id") > "a", r"filters \(id > \"a\"\) cannot be evaluated on this dataset"),
        (pc.field("id") + 1, r"filters add_checked\(id, 1\) evaluate to int64, not to a bool per row"),
    ],
)
def test_bad_filters_are_refused_before_anything_is_read(dataset, filters: Any, message: str) -> None:
    root, manifest = dataset
    with pytest.raises(ValueError, match=message):
        _reader(root, manifest, filters=filters)


def test_a_naive_datetime_against_a_spark_timestamp_column_is_refused_before_anything_is_read(tmp_path) -> None:
    # A Spark timestamp is a UTC instant (timestamp[us, tz=UTC] in the cache). Arrow finds a kernel for it
    # and a naive datetime and fails only on a value: the check on no rows let the reader plan, and the
    # error came from a reader thread on the first row group read.
    at = pa.array(
        [datetime.datetime(2024, 1, 1, hour, tzinfo=datetime.UTC) for hour in range(4)], pa.timestamp("us", "UTC")
    )
    pq.write_table(pa.table({"id": np.arange(4), "at": at}), tmp_path / "part.parquet", row_group_size=2)
    schema = pa.schema([("id", pa.int64()), ("at", at.type)])
    manifest = Manifest(files=(FileEntry("part.parquet", (2, 2)),), schema=schema, shapes={}, options={}, key="k")
    with pytest.raises(ValueError, match=r"filters \(at > .*cannot be evaluated .*Cannot compare timestamp with tim"):
        _reader(tmp_path, manifest, filters=[("at", ">", datetime.datetime(2024, 1, 1, 1))])
    aware = datetime.datetime(2024, 1, 1, 1, tzinfo=datetime.UTC)
    with _reader(tmp_path, manifest, batch_size=10, num_epochs=1, filters=[("at", ">", aware)]) as reader:
        assert sorted(_ids(reader)) == [2, 3]


def test_a_value_the_filters_comparison_cannot_cast_is_explained(tmp_path) -> None:
    # Arrow compares int64 with a float as doubles and refuses 2**53 + 1, which no double holds; only the
    # rows show it, so it is raised while reading, and the note says why and what to write instead.
    pq.write_table(pa.table({"id": pa.array([5, 2**53 + 1], pa.int64())}), tmp_path / "part.parquet")
    manifest = Manifest(
        files=(FileEntry("part.parquet", (2,)),), schema=pa.schema([("id", pa.int64())]), shapes={}, options={}
    )
    with _reader(tmp_path, manifest, batch_size=10, num_epochs=1, filters=[("id", ">", 4.5)]) as reader:
        with pytest.raises(pa.ArrowInvalid, match="not in range") as error:
            list(reader)
    notes = "\n".join(error.value.__notes__)
    assert "evaluating filters (id > 4.5) on rows of the columns {'id': 'int64'}" in notes
    assert "an int64 beyond 2**53 against a float" in notes


def test_pruning_every_row_group_with_unbounded_epochs_is_refused_at_once(dataset) -> None:
    root, manifest = dataset
    with pytest.raises(ValueError, match=r"holds no rows .*of which the filters' statistics rule out all"):
        _reader(root, manifest, filters=[("id", ">", 5000)])
    with _reader(root, manifest, filters=[("id", ">", 5000)], num_epochs=2) as reader:
        assert list(reader) == [] and len(reader) == 0


def test_an_unbounded_run_in_which_no_row_passes_raises_instead_of_spinning(dataset) -> None:
    root, manifest = dataset
    with _reader(root, manifest, predicate=lambda frame: frame["id"] < 0) as reader:
        with pytest.raises(ValueError, match=r"a whole epoch of shard 0 of 1 gave no batch .*num_epochs=None would"):
            next(iter(reader))


def test_filters_with_shards_warn_that_batch_counts_differ_unless_exact(dataset) -> None:
    root, manifest = dataset
    with pytest.warns(UserWarning, match=r"shard_policy='pad' cannot give every rank the same number of batches"):
        _reader(root, manifest, cur_shard=0, shard_count=2, filters=[("v", "<", 9)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _reader(root, manifest, cur_shard=0, shard_count=2, filters=[("v", "<", 9)], shard_policy="exact")
        _reader(root, manifest, filters=[("v", "<", 9)])


def test_kept_positions_count_the_unfiltered_rows() -> None:
    kept = np.array([False, True, False, False, True, False, False])
    assert kept_positions(kept).tolist() == [2, 7]  # after the last kept row: the chunk's end
    assert kept_positions(np.zeros(3, dtype=bool)).tolist() == []
    assert kept_positions(np.ones(3, dtype=bool)).tolist() == [1, 2, 3]


# ---------------------------------------------------------------------------------- predicates


def test_predicates_run_after_filters_and_before_the_transform_in_the_reader_threads(dataset) -> None:
    root, manifest = dataset
    seen: dict[str, list[Any]] = {"predicate": [], "transform": [], "threads": []}

    def predicate(frame: pd.DataFrame) -> pd.Series:
        seen["predicate"].append(frame["id"].to_numpy())
        seen["threads"].append(threading.current_thread().name)
        return frame["id"] % 3 == 0

    def transform(frame: pd.DataFrame) -> pd.DataFrame:
        seen["transform"].append(frame["id"].to_numpy())
        return frame.assign(twice=frame["id"] * 2)

    kwargs = {"batch_size": 100, "num_epochs": 1, "filters": [("id", "<", 500)], "predicate": predicate}
    with _reader(root, manifest, transform_fn=transform, **kwargs) as reader:
        out = list(reader)
    ids = sorted(_ids(out))
    assert ids == list(range(0, 500, 3))
    assert all((part < 500).all() for part in seen["predicate"])  # the filter ran first
    assert all((part % 3 == 0).all() for part in seen["transform"])  # the transform sees what passed
    assert all(name.startswith("sparkfeed-reader") for name in seen["threads"])
    np.testing.assert_array_equal(np.concatenate([b["twice"] for b in out]), np.concatenate([b["id"] for b in out]) * 2)


@pytest.mark.parametrize(
    ("predicate", "message"),
    [
        (
            lambda frame: True,
            r"returned a single bool \(True\) for a chunk of 37 rows: it must return one bool per row",
        ),
        (lambda frame: frame["id"], r"returned a Series of int64 with shape \(37,\)"),
        (lambda frame: frame["id"].head(3) > 0, r"returned a Series of bool with shape \(3,\) for a chunk of 37 rows"),
    ],
)
def test_a_predicate_answering_other_than_a_bool_per_row_is_explained(dataset, predicate, message) -> None:
    root, manifest = dataset
    with _reader(root, manifest, num_epochs=1, shuffle_row_groups=False, predicate=predicate) as reader:
        with pytest.raises(TypeError, match=message):
            list(reader)


def test_a_predicate_error_names_the_frame_it_was_given(dataset) -> None:
    root, manifest = dataset
    broken = in_lambda(["v"], lambda v: v.no_such_method())
    with _reader(root, manifest, num_epochs=1, shuffle_row_groups=False, predicate=broken) as reader:
        with pytest.raises(AttributeError, match="no_such_method") as error:
            list(reader)
    assert "sparkfeed: raised by the predicate, given a pandas DataFrame of 37 rows and the columns ['v']" in str(
        error.value.__notes__
    )


def test_predicate_fields_are_checked_against_the_dataset(dataset) -> None:
    root, manifest = dataset
    with pytest.raises(ValueError, match=r"get_fields\(\) names \['nope'\], which are not columns of the dataset"):
        _reader(root, manifest, predicate=in_set([1], "nope"))
    empty = in_lambda([], lambda: True)
    with pytest.raises(ValueError, match=r"get_fields\(\) returned set\(\): it must name at least one column"):
        _reader(root, manifest, predicate=empty)


def test_a_state_saved_with_other_filters_or_predicate_is_refused(dataset) -> None:
    root, manifest = dataset
    kwargs: dict[str, Any] = {"batch_size": 20, "seed": 1, "num_epochs": 1, "filters": [("v", "<", 60)]}
    reader = _reader(root, manifest, **kwargs)
    next(iter(reader))
    state = reader.state_dict()
    reader.close()
    assert state["identity"]["filters"] == "(v < 60)" and state["identity"]["predicate"] is False
    changes = [
        ({"filters": [("v", "<", 61)]}, r"saved with filters='\(v < 60\)', this reader has filters='\(v < 61\)'"),
        ({"filters": None}, r"saved with filters='\(v < 60\)', this reader has filters=None"),
        ({"predicate": lambda frame: frame["v"] > 0}, "saved with predicate=False, this reader has predicate=True"),
    ]
    for change, message in changes:
        with pytest.raises(ValueError, match=message):
            _reader(root, manifest, **{**kwargs, **change}).load_state_dict(state)
    resumed = _reader(root, manifest, **{**kwargs, "filters": pc.field("v") < 60})  # the same filter, as an expression
    resumed.load_state_dict(state)


# ---------------------------------------------------------------------------------- properties


def _dnf(draw: st.DrawFn) -> list[list[tuple[str, str, int]]]:
    term = st.tuples(st.sampled_from(["id", "v"]), st.sampled_from(list(OPS)), st.integers(-5, 130))
    conjunctions = draw(st.lists(st.lists(term, min_size=1, max_size=2), min_size=1, max_size=2))
    return conjunctions


PREDICATES: dict[str, tuple[Any, Callable[[np.ndarray], np.ndarray]]] = {
    "none": (None, lambda ids: np.ones(len(ids), dtype=bool)),
    "function": (lambda frame: frame["v"] % 3 != 0, lambda ids: _v(ids) % 3 != 0),
    "fields": (in_lambda(["id"], lambda i: i % 4 != 1), lambda ids: ids % 4 != 1),
}


def _keep_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(twice=frame["id"] * 2)


@st.composite
def _runs(draw: st.DrawFn) -> dict[str, Any]:
    rows = draw(st.integers(0, 150))
    return {
        "rows": rows,
        "row_group": draw(st.integers(1, 40)),
        "files": draw(st.integers(1, 3)),
        "shard_count": draw(st.integers(1, 4)),
        "new_count": draw(st.integers(1, 4)),
        "dnf": _dnf(draw) if draw(st.booleans()) else None,
        "as_expression": draw(st.booleans()),
        "predicate": draw(st.sampled_from(list(PREDICATES))),
        "transform": draw(st.booleans()),
        "batch_size": draw(st.integers(1, 17)),
        "shuffle_row_groups": draw(st.booleans()),
        "shuffling_queue_capacity": draw(st.sampled_from([None, 1, 15, 60])),
        "seed": draw(st.integers(0, 2**32)),
        "num_epochs": draw(st.integers(1, 2)),
        "stop": draw(st.integers(0, 12)),
        "pool": draw(st.sampled_from(["thread", "thread", "dummy"])),
    }


_DATASETS: dict[tuple[int, int, int], tuple[Path, Manifest]] = {}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("selection-property")

    def get(run: dict[str, Any]) -> tuple[Path, Manifest]:
        key = (run["rows"], run["row_group"], run["files"])
        if key not in _DATASETS:
            root = base / "-".join(map(str, key))
            _DATASETS[key] = (root, _write(root, *key))
        return _DATASETS[key]

    return get


def _options(run: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {
        key: run[key] for key in ("batch_size", "shuffle_row_groups", "shuffling_queue_capacity", "seed", "num_epochs")
    }
    dnf = run["dnf"]
    if dnf is not None:
        options["filters"] = pq.filters_to_expression(dnf) if run["as_expression"] else dnf
    if run["predicate"] != "none":
        options["predicate"] = PREDICATES[run["predicate"]][0]
    if run["transform"]:
        options["transform_fn"] = _keep_rows
    return options | {"shard_policy": "exact", "reader_pool_type": run["pool"]}


def _expected(run: dict[str, Any]) -> list[int]:
    ids = np.arange(run["rows"])
    keep = PREDICATES[run["predicate"]][1](ids)
    if run["dnf"] is not None:
        keep &= _matches(run["dnf"], ids)
    return ids[keep].tolist()


def _make(datasets: Any, run: dict[str, Any], shard: int, count: int) -> Reader[Any]:
    root, manifest = datasets(run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no warning with shard_policy="exact"; unbounded runs are not drawn
        return _reader(root, manifest, cur_shard=shard, shard_count=count, **_options(run))


@given(_runs())
def test_property_every_row_that_passes_comes_once_per_epoch_over_the_shards(datasets, run) -> None:
    expected = _expected(run)
    per_shard = []
    for shard in range(run["shard_count"]):
        with _make(datasets, run, shard, run["shard_count"]) as reader:
            bound = len(reader)
            epochs: dict[int, list[int]] = {}
            batches = 0
            for batch in reader:
                batches += 1
                epochs.setdefault(reader.state_dict()["epoch"], []).extend(_ids([batch]))
                if run["transform"]:
                    np.testing.assert_array_equal(batch["twice"], batch["id"] * 2)
            assert batches <= bound  # len() is an upper bound with filters
            per_shard.append(epochs)
    for epoch in range(run["num_epochs"]):
        assert sorted(i for shard in per_shard for i in shard.get(epoch, [])) == expected


@given(_runs())
def test_property_save_and_resume_continues_exactly_with_filters(datasets, run) -> None:
    count = run["shard_count"]
    for shard in range(count):
        with _make(datasets, run, shard, count) as fresh:
            whole = [_ids([b]) for b in fresh]
        reader = _make(datasets, run, shard, count)
        head = [_ids([b]) for b in itertools.islice(iter(reader), run["stop"])]
        state = json.loads(json.dumps(reader.state_dict()))
        reader.close()
        with _make(datasets, run, shard, count) as resumed:
            resumed.load_state_dict(state)
            bound = len(resumed)
            tail = [_ids([b]) for b in resumed]
        if state["epoch"] == state["end_epoch"]:  # saved after the loop ended: a restart goes on with the next
            with _make(datasets, run, shard, count) as reader:
                assert [_ids([b]) for b in reader] == whole
                assert tail == [_ids([b]) for b in reader]
        else:
            assert head + tail == whole
        assert len(tail) <= bound


@given(_runs())
def test_property_reshard_with_filters_loses_and_repeats_nothing(datasets, run) -> None:
    run = {**run, "num_epochs": 1}
    count, new = run["shard_count"], run["new_count"]
    consumed, states = [], []
    for shard in range(count):
        with _make(datasets, run, shard, count) as fresh:
            available = sum(1 for _ in fresh)
        reader = _make(datasets, run, shard, count)
        # At most every batch of the shard, never one more: the state stays inside the epoch.
        consumed += _ids(itertools.islice(iter(reader), min(run["stop"], available)))
        states.append(json.loads(json.dumps(reader.state_dict())))
        reader.close()
    rest: list[int] = []
    for shard in range(new):
        with _make(datasets, run, shard, new) as reader:
            if run["transform"] and new != count:  # its output rows need not be the rows the cuts count
                with pytest.raises(ValueError, match="a loader with a transform cannot be resharded"):
                    reader.load_state_dict(states)
                return
            reader.load_state_dict(states)
            rest += _ids(reader)
    assert sorted(consumed + rest) == _expected(run)


@pytest.mark.parametrize(
    "filters",
    [
        [("x", "!=", 1.0)],
        [("x", "not in", [1.0])],
        ~(pc.field("x") == 1.0),
        pc.field("x").is_nan(),
    ],
    ids=["!=", "not in", "not ==", "is_nan"],
)
def test_rows_of_nan_pass_filters_that_parquet_statistics_leave_nan_out_of(tmp_path, filters: Any) -> None:
    # Parquet's min/max ignore NaN: the groups [1.0, NaN] and [2.0, NaN] say min = max = 1.0 and 2.0.
    x = pa.array([1.0, math.nan, 2.0, math.nan])
    pq.write_table(pa.table({"id": np.arange(4), "x": x}), tmp_path / "part.parquet", row_group_size=2)
    schema = pa.schema([("id", pa.int64()), ("x", pa.float64())])
    manifest = Manifest(files=(FileEntry("part.parquet", (2, 2)),), schema=schema, shapes={}, options={}, key="k")
    expression = filters if isinstance(filters, pc.Expression) else pq.filters_to_expression(filters)
    expected = sorted(ds.dataset(pa.table({"id": np.arange(4), "x": x})).to_table(filter=expression)["id"].to_pylist())
    assert 1 in expected and 3 in expected
    with _reader(tmp_path, manifest, batch_size=10, num_epochs=1, filters=filters) as reader:
        assert sorted(_ids(reader)) == expected


class _FooterFailsOnce(MemoryFileSystem):
    """An in-memory store whose first read of one file fails, as an object store's connection may."""

    cachable = False

    def __init__(self, failing: str) -> None:
        super().__init__()
        self.failing: str | None = failing

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if self.failing is not None and path.endswith(self.failing) and "r" in mode:
            self.failing = None
            raise OSError(f"connection reset reading {path}")
        return super()._open(path, mode, **kwargs)


def test_a_footer_that_cannot_be_read_while_pruning_raises_instead_of_planning_other_shards() -> None:
    store = _FooterFailsOnce("part-0.parquet")
    entries = []
    for number in range(2):
        with store.open(f"/sf-prune-error/part-{number}.parquet", "wb") as handle:
            pq.write_table(pa.table({"id": np.arange(number * 30, number * 30 + 30)}), handle, row_group_size=10)
        entries.append(FileEntry(f"part-{number}.parquet", (10, 10, 10)))
    manifest = Manifest(files=tuple(entries), schema=pa.schema([("id", pa.int64())]), shapes={}, options={}, key="k")
    location = Location.parse("memory://sf-prune-error", filesystem=store)
    options = reader_options(
        batch_size=5, num_epochs=1, filters=[("id", ">=", 20)], cur_shard=0, shard_count=2, shard_policy="exact"
    )
    with pytest.raises(OSError, match="connection reset") as error:
        Reader(location, manifest, options)
    assert "the footer of sf-prune-error/part-0.parquet" in error.value.__notes__[0]
    with Reader(location, manifest, options) as reader:  # the store answers again: the plan every rank makes
        assert reader.num_rows == 20  # groups [20, 30) and [30, 40), of the four that may hold id >= 20
    store.rm("/sf-prune-error", recursive=True)


def test_a_state_is_refused_where_the_filters_statistics_plan_other_row_groups(tmp_path) -> None:
    # A dataset read in place (no cache key) whose files are rewritten with the same row-group sizes: its
    # fingerprint is the same, but the filters rule out other row groups, and positions mean other rows.
    def write(ids: np.ndarray) -> Manifest:
        pq.write_table(pa.table({"id": ids}), tmp_path / "part.parquet", row_group_size=10)
        schema = pa.schema([("id", pa.int64())])
        return Manifest(files=(FileEntry("part.parquet", (10,) * 6),), schema=schema, shapes={}, options={}, key="")

    kwargs = {"batch_size": 5, "num_epochs": 1, "shuffle_row_groups": False, "filters": [("id", ">=", 30)]}
    with _reader(tmp_path, write(np.arange(60)), **kwargs) as reader:
        next(iter(reader))
        state = json.loads(json.dumps(reader.state_dict()))
    with _reader(tmp_path, write(np.arange(60)[::-1].copy()), **kwargs) as rewritten:
        with pytest.raises(ValueError, match=r"saved with row_groups='[0-9a-f]+', this reader has row_groups='"):
            rewritten.load_state_dict(state)
    with _reader(tmp_path, write(np.arange(60)), **kwargs) as same:
        same.load_state_dict(state)
        assert sorted(_ids(same)) == list(range(35, 60))
