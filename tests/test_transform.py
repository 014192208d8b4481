"""The user's transform runs in the reader threads and shapes what the batches hold."""

from __future__ import annotations

import datetime
import io
import re
import tempfile
import threading
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from pyspark.sql import functions as F

from sparkfeed import NullValueError, Sequence, TransformSpec, make_spark_converter
from sparkfeed.transform import edit_field

from helpers import by_id, concat


def _png(i: int) -> bytes:
    pixels = np.full((8, 6, 3), i % 256, dtype=np.uint8)
    pixels[0, 0] = [1, 2, 3]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def images(spark):
    rows = [(i, _png(i), [float(j) for j in range(12)]) for i in range(40)]
    return make_spark_converter(spark.createDataFrame(rows, "id long, png binary, flat array<double>"))


def test_transform_fn_decodes_images_into_a_batch_tensor(images) -> None:
    threads: set[str] = set()

    def decode(frame: pd.DataFrame) -> pd.DataFrame:
        threads.add(threading.current_thread().name)
        frame["png"] = [np.asarray(Image.open(io.BytesIO(data))) for data in frame["png"]]
        return frame

    with images.make_numpy_iterator(batch_size=16, num_epochs=1, transform_fn=decode) as batches:
        out = list(batches)
    assert [b["png"].shape for b in out] == [(16, 8, 6, 3), (16, 8, 6, 3), (8, 8, 6, 3)]
    got = by_id(concat(out))
    assert got["png"].dtype == np.uint8
    np.testing.assert_array_equal(got["png"][:, 1, 1, 0], np.arange(40))
    np.testing.assert_array_equal(got["png"][:, 0, 0], np.tile([1, 2, 3], (40, 1)))
    assert threads and all(name.startswith("sparkfeed-reader") for name in threads)


def test_transform_spec_edit_removed_and_selected_fields(images) -> None:
    def add(frame: pd.DataFrame) -> pd.DataFrame:
        frame["double_id"] = frame["id"] * 2
        return frame

    edits = [("flat", np.float32, (3, 4), False), ("double_id", np.int32, (), False)]
    selected = TransformSpec(add, edit_fields=edits, selected_fields=["double_id", "flat", "id"])
    removed = TransformSpec(add, edit_fields=edits, removed_fields=["png"])
    for spec, columns in ((selected, ["double_id", "flat", "id"]), (removed, ["id", "flat", "double_id"])):
        with images.make_numpy_iterator(batch_size=40, num_epochs=1, transform_spec=spec) as batches:
            (batch,) = list(batches)
        assert list(batch) == columns
        assert batch["flat"].shape == (40, 3, 4) and batch["flat"].dtype == np.float32
        np.testing.assert_array_equal(batch["flat"][0], np.arange(12, dtype=np.float32).reshape(3, 4))
        assert batch["double_id"].dtype == np.int32
        np.testing.assert_array_equal(batch["double_id"], batch["id"] * 2)


def test_removed_and_selected_fields_together_are_refused_as_in_petastorm() -> None:
    expected = "TransformSpec removed_fields=['png'] and selected_fields=['id'] are both given: give one of them"
    with pytest.raises(ValueError, match=re.escape(expected)):
        TransformSpec(removed_fields=["png"], selected_fields=["id"])
    with pytest.raises(ValueError, match="are both given"):  # Petastorm refuses an empty list too
        TransformSpec(removed_fields=[], selected_fields=["id"])


def test_edit_field_makes_the_tuple_petastorm_makes_and_it_reshapes(images) -> None:
    assert edit_field("flat", np.float32, [3, 4]) == ("flat", np.float32, (3, 4), False)
    assert edit_field("label", np.int64, (), nullable=True) == ("label", np.int64, (), True)
    spec = TransformSpec(edit_fields=[edit_field("flat", np.float32, (3, 4))], selected_fields=["flat"])
    with images.make_numpy_iterator(batch_size=40, num_epochs=1, transform_spec=spec) as batches:
        (batch,) = list(batches)
    assert batch["flat"].shape == (40, 3, 4) and batch["flat"].dtype == np.float32
    with pytest.raises(ValueError, match=re.escape("edit_field 'image': shape=28 is not allowed: it must be a tuple")):
        edit_field("image", np.uint8, 28)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("edit_field name=3 is not allowed")):
        edit_field(3, np.uint8, ())  # type: ignore[arg-type]


def test_schema_fields_apply_before_the_transform(images) -> None:
    seen: list[list[str]] = []

    def record(frame: pd.DataFrame) -> pd.DataFrame:
        seen.append(list(frame.columns))
        return frame

    with images.make_numpy_iterator(num_epochs=1, schema_fields=["id"], transform_fn=record) as batches:
        list(batches)
    assert seen and all(columns == ["id"] for columns in seen)


def test_bad_transform_outputs_are_explained(images) -> None:
    with pytest.raises(TypeError, match="must return a pandas DataFrame, it returned list"):
        with images.make_numpy_iterator(num_epochs=1, transform_fn=lambda frame: [1]) as batches:
            list(batches)
    spec = TransformSpec(edit_fields=[("flat", np.float32, (5, 5), False)])
    with pytest.raises(ValueError, match=r"cannot be reshaped to the edit_fields shape \(5, 5\)"):
        with images.make_numpy_iterator(num_epochs=1, transform_spec=spec) as batches:
            list(batches)
    with pytest.raises(KeyError, match=r"selected_fields \['nope'\]"):
        with images.make_numpy_iterator(num_epochs=1, transform_spec=TransformSpec(selected_fields=["nope"])) as b:
            list(b)
    with pytest.raises(ValueError, match="edit_fields entry"):
        TransformSpec(edit_fields=["flat"])  # type: ignore[list-item]


def test_transform_can_filter_rows(spark) -> None:
    converter = make_spark_converter(spark.range(100).withColumn("x", F.col("id") % 3))
    keep = lambda frame: frame[frame["x"] == 0]  # noqa: E731
    with converter.make_numpy_iterator(batch_size=10, num_epochs=1, transform_fn=keep) as batches:
        ids = sorted(concat(batches)["id"].tolist())
    assert ids == list(range(0, 100, 3))


def test_nested_fixed_arrays_reach_the_transform_as_nd_cells_and_stay_tensors(spark) -> None:
    df = spark.range(30).selectExpr("id", "array(array(id, id + 1, id + 2), array(-id, 0, 1)) AS grid")
    seen = []

    def look(frame: pd.DataFrame) -> pd.DataFrame:
        seen.append(frame["grid"].iloc[0])
        frame["total"] = [cell.sum() for cell in frame["grid"]]
        return frame

    with make_spark_converter(df).make_numpy_iterator(batch_size=7, num_epochs=1, transform_fn=look) as batches:
        got = by_id(concat(batches))
    assert all(isinstance(cell, np.ndarray) and cell.shape == (2, 3) and cell.dtype == np.int64 for cell in seen)
    ids = np.arange(30)
    assert got["grid"].shape == (30, 2, 3) and got["grid"].dtype == np.int64
    np.testing.assert_array_equal(got["grid"][:, 0, 2], ids + 2)
    np.testing.assert_array_equal(got["total"], 2 * ids + 4)


def test_dates_keep_their_unit_through_a_transform(spark) -> None:
    df = spark.range(20).selectExpr("id", "date_add(date'2021-03-01', cast(id AS int)) AS day")

    def later(frame: pd.DataFrame) -> pd.DataFrame:
        frame["moment"] = frame["day"] + pd.Timedelta(hours=6)
        return frame

    converter = make_spark_converter(df)
    with converter.make_numpy_iterator(batch_size=8, num_epochs=1, transform_fn=later) as batches:
        got = by_id(concat(batches))
    expected = np.datetime64("2021-03-01") + np.arange(20)
    assert got["day"].dtype == np.dtype("datetime64[D]")
    np.testing.assert_array_equal(got["day"], expected)
    assert got["moment"].dtype.kind == "M"  # a new column keeps the unit the transform gave it
    np.testing.assert_array_equal(got["moment"], expected + np.timedelta64(6, "h"))
    with converter.make_torch_dataloader(batch_size=20, num_epochs=1, transform_fn=later) as loader:
        (batch,) = list(loader)
    days = (expected - np.datetime64("1970-01-01")).astype(np.int64)
    assert sorted(batch["day"].tolist()) == days.tolist()  # days, as without a transform


MOMENTS = np.array(
    ["2024-01-01T12:00:00.123456", "1960-01-01T00:00:00", "2038-06-01T23:59:59.999999"], "datetime64[us]"
)


def _utc_moments(directory) -> str:
    """Spark's timestamps as the cache holds them (UTC, microseconds), in Parquet written by pyarrow."""
    table = pa.table({"id": [0, 1, 2], "ts": pa.array(MOMENTS.astype(np.int64), pa.timestamp("us", tz="UTC"))})
    pq.write_table(table, directory / "part-0.parquet")
    return str(directory)


def _in_paris(frame: pd.DataFrame) -> pd.DataFrame:
    frame["paris"] = frame["ts"].dt.tz_convert("Europe/Paris")  # a zone of the transform's own
    return frame


@pytest.mark.parametrize("transform", [None, lambda frame: frame, _in_paris], ids=["none", "identity", "zoned"])
def test_timestamps_come_out_of_a_transform_as_without_one(tmp_path, transform) -> None:
    converter = make_spark_converter(_utc_moments(tmp_path))
    options = {"batch_size": 3, "num_epochs": 1, "shuffle_row_groups": False, "transform_fn": transform}
    with converter.make_numpy_iterator(**options) as batches:
        (batch,) = list(batches)
    assert batch["ts"].dtype == np.dtype("datetime64[us]")
    np.testing.assert_array_equal(batch["ts"], MOMENTS)
    if transform is _in_paris:  # the same instants, naive in UTC as every timestamp column
        assert batch["paris"].dtype.kind == "M"
        np.testing.assert_array_equal(batch["paris"], MOMENTS)
    with converter.make_torch_dataloader(**options) as loader:
        (batch,) = list(loader)
    assert batch["ts"].dtype == torch.int64  # microseconds since the epoch
    assert batch["ts"].tolist() == MOMENTS.astype(np.int64).tolist()


BIG = 2**53 + 1  # the first integer float64 cannot hold


@pytest.fixture
def nulls(tmp_path) -> str:
    """A null in the second row of each column but id, as pyarrow writes it (read in place: float32)."""
    table = pa.table(
        {
            "id": [0, 1, 2],
            "big": pa.array([BIG, None, -BIG], pa.int64()),
            "flag": pa.array([True, None, False]),
            "x": pa.array([1.5, None, float("nan")], pa.float32()),  # a NaN value is no null
            "day": pa.array([datetime.date(2020, 1, 1), None, datetime.date(1950, 1, 1)], pa.date32()),
            "ts": pa.array([int(MOMENTS[0].astype(np.int64)), None, 0], pa.timestamp("us", tz="UTC")),
            "arr": pa.array([[1, 2], [3, None], [5, 6]], pa.list_(pa.int64())),
            "rag": pa.array([[1.5], [2.5, None, 3.5], None], pa.list_(pa.float32())),
            "vec": pa.array([[1.5, 2.5], None, [3.5, 4.5]], pa.list_(pa.float32())),  # fixed shape, a null array
        }
    )
    pq.write_table(table, tmp_path / "part-0.parquet")
    return str(tmp_path)


@pytest.mark.parametrize("column", ["big", "flag", "x", "day", "ts", "arr", "rag", "vec"])
def test_a_null_a_transform_leaves_in_place_is_refused_naming_the_column(nulls, column: str) -> None:
    options = {"batch_size": 3, "num_epochs": 1, "schema_fields": ["id", column], "transform_fn": lambda f: f}
    with make_spark_converter(nulls).make_numpy_iterator(**options) as batches:
        with pytest.raises(NullValueError, match=rf"^column '{column}' .*null.* in the transform_fn"):
            list(batches)


@pytest.mark.parametrize(
    "kind", ["as given", "string", "string[pyarrow]", "arrow string", "arrow binary", "category", "object"]
)
def test_a_null_string_a_transform_returns_is_none_as_without_a_transform(tmp_path, kind: str) -> None:
    # pandas 3 gives a string column with nulls as `str`, whose null is NaN: a float came out
    # among the strings, where the same rows without a transform hold None.
    pq.write_table(pa.table({"id": [0, 1, 2], "s": ["a", None, "c"], "b": [b"a", None, b"c"]}), tmp_path / "p.parquet")
    dtypes = {
        "string": "string",
        "string[pyarrow]": "string[pyarrow]",
        "arrow string": pd.ArrowDtype(pa.string()),
        "category": "category",
        "object": object,
    }

    def retype(frame: pd.DataFrame) -> pd.DataFrame:
        if kind == "arrow binary":
            frame["s"] = pd.array(list(frame["b"]), pd.ArrowDtype(pa.binary()))
        elif kind in dtypes:
            frame["s"] = frame["s"].astype(dtypes[kind])
        return frame

    options = {"batch_size": 3, "num_epochs": 1, "shuffle_row_groups": False, "schema_fields": ["id", "s", "b"]}
    converter = make_spark_converter(str(tmp_path))
    with converter.make_numpy_iterator(**options) as batches:
        (plain,) = list(batches)
    with converter.make_numpy_iterator(**options, transform_fn=retype) as batches:
        (batch,) = list(batches)
    expected = [b"a", None, b"c"] if kind == "arrow binary" else ["a", None, "c"]
    assert plain["s"].tolist() == ["a", None, "c"] and batch["s"].dtype == object
    assert batch["s"].tolist() == expected and batch["s"][1] is None
    assert batch["b"].tolist() == [b"a", None, b"c"]


@pytest.mark.parametrize(
    "make", [lambda f: pd.concat([f, f[["id"]]], axis=1), lambda f: f.assign(**{"5": 1}).rename(columns={"id": 5})]
)
def test_columns_of_one_name_in_a_transforms_output_are_refused(tmp_path, make) -> None:
    # Two columns "id" failed with an AttributeError; 5 and "5" (both "5" in a batch) kept one in silence.
    pq.write_table(pa.table({"id": [0, 1, 2]}), tmp_path / "p.parquet")
    with make_spark_converter(str(tmp_path)).make_numpy_iterator(
        batch_size=3, num_epochs=1, transform_fn=make
    ) as batches:
        with pytest.raises(ValueError, match=r"the transform's output has more than one column named \['(id|5)'\]"):
            list(batches)


def test_rows_declared_varying_stay_rows_in_a_chunk_whose_rows_share_a_shape(tmp_path) -> None:
    # Decoded audio of varying length, declared with a None size: the last chunk (one row, as the
    # 10 rows make 3-row row groups) was stacked into a (1, n) array, and the loader failed
    # with "the transform's output changed between chunks".
    pq.write_table(pa.table({"id": np.arange(10)}), tmp_path / "p.parquet", row_group_size=3)

    def decode(frame: pd.DataFrame) -> pd.DataFrame:
        frame["wave"] = [np.full(i % 4 + 1, i, np.float64) for i in frame["id"]]
        return frame

    spec = TransformSpec(decode, edit_fields=[edit_field("wave", np.float32, (None,))])
    options = {"batch_size": 4, "num_epochs": 1, "shuffle_row_groups": False, "transform_spec": spec}
    with make_spark_converter(str(tmp_path)).make_numpy_iterator(**options) as batches:
        got = concat(batches)
    assert got["wave"].dtype == object and got["id"].tolist() == list(range(10))
    assert [row.dtype for row in got["wave"]] == [np.float32] * 10
    assert [row.tolist() for row in got["wave"]] == [[float(i)] * (i % 4 + 1) for i in range(10)]


def test_a_column_of_varying_rows_the_transform_leaves_stays_rows_in_every_chunk(tmp_path) -> None:
    # The last row group holds one row, whose one cell was stacked into a (1, 2) array; the
    # loader failed with "the transform's output changed between chunks". A column the
    # transform replaces is still stacked where its rows share a shape (padded in place here).
    tokens = [list(range(i % 3 + 1)) for i in range(10)]
    table = pa.table({"id": np.arange(10), "tok": pa.array(tokens, pa.list_(pa.int64()))})
    pq.write_table(table, tmp_path / "p.parquet", row_group_size=3)
    converter = make_spark_converter(str(tmp_path))
    options = {"batch_size": 4, "num_epochs": 1, "shuffle_row_groups": False}

    def keep(frame: pd.DataFrame) -> pd.DataFrame:
        frame["twice"] = frame["id"] * 2
        return frame[frame["id"] != 4]

    with converter.make_numpy_iterator(**options, transform_fn=keep) as batches:
        got = concat(batches)
    assert got["tok"].dtype == object and got["id"].tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert [row.tolist() for row in got["tok"]] == [tokens[i] for i in got["id"]]

    def pad(frame: pd.DataFrame) -> pd.DataFrame:
        frame["tok"] = [np.pad(row, (0, 4 - len(row))) for row in frame["tok"]]
        return frame

    with converter.make_numpy_iterator(**options, transform_fn=pad) as batches:
        padded = concat(batches)
    assert padded["tok"].dtype == np.int64 and padded["tok"].shape == (10, 4)
    assert padded["tok"].tolist() == [row + [0] * (4 - len(row)) for row in tokens]


def test_a_sharded_loader_warns_once_when_the_transform_changes_the_number_of_rows(tmp_path) -> None:
    # Ranks then yield different numbers of batches and DDP waits at the end of the epoch;
    # filters warn when the loader is made, a transform can only be seen doing it.
    pq.write_table(pa.table({"id": np.arange(40)}), tmp_path / "p.parquet", row_group_size=5)
    converter = make_spark_converter(str(tmp_path))
    options = {"batch_size": 4, "num_epochs": 1, "shard_count": 2}

    def drop(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[frame["id"] % 3 != 0]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with converter.make_numpy_iterator(**options, cur_shard=0, transform_fn=drop) as batches:
            ids = concat(batches)["id"]
        with converter.make_numpy_iterator(**options, cur_shard=0, transform_fn=lambda f: f.assign(x=1)) as batches:
            assert len(concat(batches)["id"]) == 20  # the same rows: no warning
        with converter.make_numpy_iterator(batch_size=4, num_epochs=1, transform_fn=drop) as batches:
            list(batches)  # one shard: nothing to wait on
    assert len(ids) < 20 and not np.any(ids % 3 == 0)
    messages = [str(w.message) for w in caught if "number of rows" in str(w.message)]
    assert len(messages) == 1, messages
    assert messages[0].startswith("the transform returned another number of rows than it was given, with shard_count=2")
    assert "DDP/Horovod ranks may wait on each other" in messages[0]


def test_a_null_in_a_categorical_of_numbers_is_refused_not_made_nan(tmp_path) -> None:
    pq.write_table(pa.table({"id": [0, 1, 2]}), tmp_path / "p.parquet")

    def categories(frame: pd.DataFrame) -> pd.DataFrame:
        frame["label"] = pd.Categorical([1, None, 2][: len(frame)])
        return frame

    def complete(frame: pd.DataFrame) -> pd.DataFrame:
        frame["label"] = pd.Categorical([7, 8, 7][: len(frame)])
        return frame

    converter = make_spark_converter(str(tmp_path))
    options = {"batch_size": 3, "num_epochs": 1, "shuffle_row_groups": False}
    with converter.make_numpy_iterator(**options, transform_fn=categories) as batches:
        with pytest.raises(NullValueError, match=r"^column 'label' \(category\) holds 1 null value"):
            list(batches)
    with converter.make_numpy_iterator(**options, transform_fn=complete) as batches:
        (batch,) = list(batches)
    assert batch["label"].dtype == np.int64 and batch["label"].tolist() == [7, 8, 7]


def test_a_transform_sees_nulls_as_missing_values_beside_exact_ones_and_fills_them(nulls) -> None:
    seen: dict[str, object] = {}

    def fill(frame: pd.DataFrame) -> pd.DataFrame:
        seen.update({name: str(frame[name].dtype) for name in frame}, big_values=frame["big"].tolist())
        seen["x_missing"] = frame["x"].isna().tolist()
        frame = frame.fillna({"big": 0, "flag": False, "x": 0, "day": pd.Timestamp(0), "ts": pd.Timestamp(0, tz="UTC")})
        frame["arr"] = [np.nan_to_num(cell).astype(np.int64) for cell in frame["arr"]]
        frame["vec"] = [np.zeros(2, np.float32) if cell is None else cell for cell in frame["vec"]]
        for cell in frame["rag"]:  # in place: the same cells, their nulls filled
            if cell is not None:
                cell[np.isnan(cell)] = -1
        return frame

    options = {"batch_size": 3, "num_epochs": 1, "shuffle_row_groups": False, "transform_fn": fill}
    with make_spark_converter(nulls).make_numpy_iterator(**options) as batches:
        (batch,) = list(batches)
    assert seen["id"] == "int64"  # a column without nulls is as it was
    assert [seen[n] for n in ("big", "flag", "x")] == ["Int64", "boolean", "Float32"]
    assert seen["big_values"] == [BIG, pd.NA, -BIG] and seen["x_missing"] == [False, True, False]
    assert batch["big"].dtype == np.int64 and batch["big"].tolist() == [BIG, 0, -BIG]
    assert batch["flag"].dtype == bool and batch["flag"].tolist() == [True, False, False]
    assert batch["x"].dtype == np.float32 and batch["x"][:2].tolist() == [1.5, 0] and np.isnan(batch["x"][2])
    assert batch["day"].dtype == np.dtype("datetime64[D]")
    assert batch["day"].astype(np.int64).tolist() == [18262, 0, -7305]
    assert batch["ts"].dtype == np.dtype("datetime64[us]") and batch["ts"][1] == np.datetime64(0, "us")
    assert batch["arr"].dtype == np.int64 and batch["arr"].tolist() == [[1, 2], [3, 0], [5, 6]]
    assert batch["rag"][1].tolist() == [2.5, -1, 3.5] and batch["rag"][2] is None  # a null array stays None
    assert batch["vec"].dtype == np.float32 and batch["vec"].tolist() == [[1.5, 2.5], [0, 0], [3.5, 4.5]]


def test_integers_beyond_float64_in_arrays_with_nulls_are_refused_before_the_transform(tmp_path) -> None:
    column = pa.array([[BIG, 1], [2, None]], pa.list_(pa.int64()))
    pq.write_table(pa.table({"id": [0, 1], "arr": column}), tmp_path / "part-0.parquet")
    calls = []
    options = {"batch_size": 2, "num_epochs": 1, "transform_fn": lambda frame: calls.append(1) or frame}
    with make_spark_converter(str(tmp_path)).make_numpy_iterator(**options) as batches:
        with pytest.raises(NullValueError, match=r"^column 'arr' .*nulls.*9007199254740993.*float64"):
            list(batches)
    assert not calls


@pytest.mark.parametrize("capacity", [None, 15], ids=["row_groups", "shuffle_window"])
def test_a_transform_that_drops_every_row_of_a_row_group_is_joined_with_the_others(tmp_path, capacity) -> None:
    ids = np.arange(40)
    pq.write_table(pa.table({"id": ids, "x": ids * 0.5}), tmp_path / "part-0.parquet", row_group_size=10)

    def vectors(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame[frame["id"] >= 10].copy()  # all of the first row group, say unreadable images
        frame["vec"] = [np.full(3, i, dtype=np.float32) for i in frame["id"]]
        return frame

    options = {"batch_size": 8, "num_epochs": 1, "seed": 1, "shuffling_queue_capacity": capacity}
    with make_spark_converter(str(tmp_path)).make_numpy_iterator(transform_fn=vectors, **options) as batches:
        got = by_id(concat(batches))
    np.testing.assert_array_equal(got["id"], np.arange(10, 40))
    assert got["vec"].shape == (30, 3) and got["vec"].dtype == np.float32
    np.testing.assert_array_equal(got["vec"][:, 2], np.arange(10, 40))


def _ids(directory) -> str:
    pq.write_table(pa.table({"id": np.arange(10)}), directory / "part-0.parquet")
    return str(directory)


@pytest.mark.parametrize(
    ("fits", "values", "dtype", "message"),
    [
        (255, lambda ids: ids + 250, np.uint8, "column 'v' to uint8, but it holds 256, outside uint8's range [0, 255]"),
        (
            -(2**31),
            lambda ids: ids * 1e10,
            np.int32,
            "column 'v' to int32, but it holds 10000000000.0, outside int32's",
        ),
        (2**40, lambda ids: np.where(ids == 3, np.nan, ids), np.int64, "column 'v' to int64, but it holds nan, which"),
        (np.inf, lambda ids: ids * 1e300, np.float32, "column 'v' to float32, but it holds 1e+300, beyond float32's"),
    ],
    ids=["wraps", "overflows", "nan", "inf"],
)
def test_an_edit_fields_cast_that_cannot_hold_a_value_is_refused_naming_it(
    tmp_path, fits, values, dtype, message
) -> None:
    converter = make_spark_converter(_ids(tmp_path))
    spec = TransformSpec(lambda frame: frame.assign(v=np.where(frame["id"] == 0, fits, 1)), [("v", dtype, (), False)])
    with converter.make_numpy_iterator(num_epochs=1, transform_spec=spec) as batches:
        got = by_id(concat(batches))["v"]  # a value at the edge of the range fits, exactly (an infinity is a value)
    assert got.dtype == dtype and got[0] == fits and got[1:].tolist() == [1] * 9
    spec = TransformSpec(lambda frame: frame.assign(v=values(frame["id"].to_numpy())), [("v", dtype, (), False)])
    with converter.make_numpy_iterator(num_epochs=1, transform_spec=spec) as batches:
        with pytest.raises(ValueError, match=re.escape(f"TransformSpec edit_fields casts {message}")):
            list(batches)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (("x", np.float32, 5, False), "TransformSpec edit_fields entry 'x': shape=5 is not allowed"),
        (("x", np.float32, (2, -1), False), "TransformSpec edit_fields entry 'x': shape=(2, -1) is not allowed"),
        (("x", np.float32, (2, 1.5), False), "TransformSpec edit_fields entry 'x': shape=(2, 1.5) is not allowed"),
        (
            ("x", "flaot32", (), False),
            "TransformSpec edit_fields entry 'x': numpy_dtype='flaot32' is not a NumPy dtype",
        ),
    ],
    ids=["int_shape", "negative", "fraction", "dtype"],
)
def test_edit_fields_entries_are_checked_when_the_spec_is_made(entry, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        TransformSpec(edit_fields=[entry])
    with pytest.raises(ValueError, match=re.escape(message.replace("TransformSpec edit_fields entry", "edit_field"))):
        edit_field(*entry)


@pytest.fixture(scope="module")
def chunked(spark):
    """600 rows in row groups of about a hundred, so that a transform sees several chunks."""
    df = spark.range(600).selectExpr("id", "cast(id AS double) AS x", "array(id, id, id) AS v")
    return make_spark_converter(df.coalesce(1), parquet_row_group_size_bytes=1024)


def _later(frame: pd.DataFrame) -> bool:
    """Whether this chunk is not the first (which holds id 0: row groups are read in order here)."""
    return bool(len(frame)) and 0 not in frame["id"].values


def _int_later(frame: pd.DataFrame) -> pd.DataFrame:
    if _later(frame):
        frame["x"] = frame["x"].astype(np.int64)
    return frame


def _no_x_later(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["x"]) if _later(frame) else frame


def _longer_v_later(frame: pd.DataFrame) -> pd.DataFrame:
    if _later(frame):
        frame["v"] = [np.append(cell, 0) for cell in frame["v"]]
    return frame


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (_int_later, "column 'x' was float32 with shape () and is now int64 with shape ()"),
        (_no_x_later, "column 'x' was float32 with shape () and is now missing"),
        (_longer_v_later, "column 'v' was int64 with shape (3,) and is now int64 with shape (4,)"),
    ],
    ids=["dtype", "dropped", "shape"],
)
@pytest.mark.parametrize("loader", ["numpy", "torch"])
@pytest.mark.parametrize("batch_size", [7, 1000], ids=["inside_chunks", "joining_chunks"])
def test_a_transform_whose_output_changes_between_chunks_is_refused(
    chunked, transform, message: str, loader: str, batch_size: int
) -> None:
    assert len(chunked.manifest.files[0].row_groups) >= 4
    make = chunked.make_numpy_iterator if loader == "numpy" else chunked.make_torch_dataloader
    settings = {"batch_size": batch_size, "num_epochs": 1, "workers_count": 1, "shuffle_row_groups": False}
    expected = f"the transform's output changed between chunks: {message}"
    with make(**settings, transform_fn=transform) as batches:
        with pytest.raises(ValueError, match=re.escape(expected)):
            for _ in batches:
                pass
    with make(**settings, transform_fn=lambda frame: frame) as batches:  # the same chunks, unchanged: fine
        assert sum(len(batch["id"]) for batch in batches) == 600


def _token_lists(frame: pd.DataFrame) -> pd.DataFrame:
    """Python lists of ids, as a tokenizer gives them; every row of the first chunk empty."""
    return frame.assign(tok=[[] if i < 100 else [i + k for k in range(i % 5)] for i in frame["id"].tolist()])


@pytest.mark.parametrize("sequence", [None, "pad", Sequence("bucket", buckets=(2, 8))], ids=["ragged", "pad", "bucket"])
def test_edit_fields_cast_the_rows_of_a_varying_length_column_also_in_a_chunk_of_empty_rows(chunked, sequence) -> None:
    # NumPy makes a list of ints int64 and an empty one float64: uncast, the declared int32 was
    # ignored, and a chunk of empty rows was refused as a change of dtype between chunks.
    spec = TransformSpec(
        _token_lists, edit_fields=[edit_field("tok", np.int32, (None,))], selected_fields=["id", "tok"]
    )
    options = {"batch_size": 64, "num_epochs": 1, "workers_count": 1, "shuffle_row_groups": False}
    if sequence is not None:
        options["sequence"] = {"tok": sequence}
    rows: dict[int, list[int]] = {}
    with chunked.make_numpy_iterator(transform_spec=spec, **options) as batches:
        for batch in batches:
            if sequence is None:
                assert {row.dtype for row in batch["tok"]} == {np.dtype(np.int32)}
                rows.update(zip(batch["id"].tolist(), (row.tolist() for row in batch["tok"]), strict=True))
            else:
                assert batch["tok"].dtype == np.int32
                for i, row, n in zip(batch["id"].tolist(), batch["tok"], batch["tok_lengths"], strict=True):
                    rows[i] = row[:n].tolist()
    assert rows == {i: [] if i < 100 else [i + k for k in range(i % 5)] for i in range(600)}
    huge = TransformSpec(
        lambda frame: frame.assign(tok=[[2**40] if i == 150 else [1] for i in frame["id"].tolist()]),
        edit_fields=[edit_field("tok", np.int32, (None,))],
    )
    with chunked.make_numpy_iterator(transform_spec=huge, **options) as batches:
        with pytest.raises(ValueError, match=re.escape("casts column 'tok' to int32, but it holds 1099511627776")):
            list(batches)


def test_transform_spec_field_lists_must_be_lists() -> None:
    for name in ("selected_fields", "removed_fields"):
        with pytest.raises(ValueError, match=re.escape(f"TransformSpec {name}='id' is not allowed: pass a list")):
            TransformSpec(**{name: "id"})
        with pytest.raises(ValueError, match=re.escape(f"TransformSpec {name}=[1] is not allowed")):
            TransformSpec(**{name: [1]})
    assert TransformSpec(selected_fields=("id",)).selected_fields == ("id",)
    assert TransformSpec(removed_fields=("id",)).removed_fields == ("id",)


def test_edit_fields_must_name_columns_of_the_transform_output(images) -> None:
    spec = TransformSpec(lambda frame: frame, edit_fields=[("pixels", np.float32, (3,), False)])
    expected = "TransformSpec edit_fields names 'pixels', which the transform's output does not have: its columns are"
    with pytest.raises(ValueError, match=re.escape(expected) + r".*\['id', 'png', 'flat'\]"):
        with images.make_numpy_iterator(num_epochs=1, transform_spec=spec) as batches:
            list(batches)


def test_a_removed_field_that_is_not_there_is_warned_about_and_ignored_as_in_petastorm(images) -> None:
    spec = TransformSpec(removed_fields=["png", "not_a_column"])
    with pytest.warns(UserWarning, match=r"removed_fields \['not_a_column'\] are not in the transformed columns"):
        with images.make_numpy_iterator(batch_size=40, num_epochs=1, transform_spec=spec, workers_count=1) as batches:
            (batch,) = list(batches)
    assert "png" not in batch and len(batch["id"]) == 40


# --------------------------------------------------------------------------- an identity transform changes nothing

_FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
_KINDS: dict[str, tuple[pa.DataType, Any]] = {
    "i64": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "i32": (pa.int32(), st.integers(-(2**31), 2**31 - 1)),
    "f32": (pa.float32(), _FLOATS),
    "f64": (pa.float64(), st.floats(allow_nan=True, allow_infinity=True)),
    "bool": (pa.bool_(), st.booleans()),
    "str": (pa.string(), st.none() | st.text(max_size=4)),
    "bin": (pa.binary(), st.none() | st.binary(max_size=4)),
    "date": (pa.date32(), st.dates()),
    "ts": (pa.timestamp("us", tz="UTC"), st.integers(-(2**50), 2**50)),
    "ntz": (pa.timestamp("us"), st.integers(-(2**50), 2**50)),
    "fixed": (pa.list_(pa.float32()), st.lists(_FLOATS, min_size=3, max_size=3)),
    "ragged": (pa.list_(pa.int64()), st.none() | st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4)),
}


@st.composite
def _tables(draw: st.DrawFn) -> tuple[pa.Table, int]:
    kinds = draw(st.lists(st.sampled_from(sorted(_KINDS)), min_size=1, max_size=5, unique=True))
    rows = draw(st.integers(1, 20))
    columns = {"id": pa.array(range(rows), pa.int64())}
    for kind in kinds:
        arrow_type, values = _KINDS[kind]
        columns[kind] = pa.array(draw(st.lists(values, min_size=rows, max_size=rows)), arrow_type)
    return pa.table(columns), draw(st.integers(1, 8))


def _same(name: str, plain: np.ndarray, transformed: np.ndarray) -> None:
    assert plain.dtype == transformed.dtype and plain.shape == transformed.shape, name
    if plain.dtype != object:
        np.testing.assert_array_equal(transformed, plain, err_msg=name)  # NaN equals NaN here
        return
    for row, (want, have) in enumerate(zip(plain, transformed, strict=True)):
        assert type(have) is type(want), (name, row, have, want)
        if isinstance(want, np.ndarray):
            assert have.dtype == want.dtype, (name, row)
            np.testing.assert_array_equal(have, want, err_msg=f"{name} row {row}")
        else:
            assert have == want, (name, row, have, want)


@given(data=_tables())
def test_an_identity_transform_gives_what_the_loader_gives_without_one(data) -> None:
    table, batch_size = data
    with tempfile.TemporaryDirectory() as root:
        pq.write_table(table, f"{root}/part-0.parquet", row_group_size=7)
        converter = make_spark_converter(root, dtype=None)  # each column's own precision
        options = {"batch_size": batch_size, "num_epochs": 1, "shuffle_row_groups": False}
        try:
            with converter.make_numpy_iterator(**options) as batches:
                plain = concat(batches)
        except NullValueError:  # an array column whose rows all have one length holds a null array
            with converter.make_numpy_iterator(**options, transform_fn=lambda frame: frame) as batches:
                with pytest.raises(NullValueError):
                    list(batches)
            return
        with converter.make_numpy_iterator(**options, transform_fn=lambda frame: frame) as batches:
            transformed = concat(batches)
    assert list(transformed) == list(plain) == table.column_names
    for name in plain:
        _same(name, plain[name], transformed[name])
