"""Every common Spark type arrives as the documented NumPy/torch value, equal to df.collect()."""

from __future__ import annotations

import datetime
import decimal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyspark.errors import SparkRuntimeException
from pyspark.ml.linalg import Vectors as MLVectors
from pyspark.ml.linalg import VectorUDT as MLVectorUDT
from pyspark.mllib.linalg import Vectors as MLlibVectors
from pyspark.mllib.linalg import VectorUDT as MLlibVectorUDT
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from sparkfeed import NullValueError, UnsupportedTypeError, make_spark_converter
from sparkfeed.materialize import _session_conf
from sparkfeed.types import ColumnSpec, array_view, cast_column, column_specs, framework_view, to_numpy

from helpers import by_id, concat

SCHEMA = T.StructType(
    [
        T.StructField("id", T.LongType()),
        T.StructField("flag", T.BooleanType()),
        T.StructField("i8", T.ByteType()),
        T.StructField("i16", T.ShortType()),
        T.StructField("i32", T.IntegerType()),
        T.StructField("f", T.FloatType()),
        T.StructField("d", T.DoubleType()),
        T.StructField("dec", T.DecimalType(12, 3)),
        T.StructField("s", T.StringType()),
        T.StructField("bin", T.BinaryType()),
        T.StructField("day", T.DateType()),
        T.StructField("ts", T.TimestampType()),
        T.StructField("ntz", T.TimestampNTZType()),
        T.StructField("arr", T.ArrayType(T.DoubleType())),
        T.StructField("nested", T.ArrayType(T.ArrayType(T.IntegerType()))),
        T.StructField("ragged", T.ArrayType(T.LongType())),
        T.StructField("words", T.ArrayType(T.StringType())),
        T.StructField("vec", MLVectorUDT()),
        T.StructField("sparse", MLVectorUDT()),
        T.StructField("old_vec", MLlibVectorUDT()),
        T.StructField("old_sparse", MLlibVectorUDT()),
    ]
)


def _row(i: int) -> tuple:
    return (
        i,
        i % 3 == 0,
        i % 100 - 50,
        i * 7 - 300,
        i * 100_003,
        i / 7,
        i / 3 + 1e-12,
        decimal.Decimal(i * 1001) / 1000,
        f"row {i} é",
        bytes([i % 256, 0, 255]),
        datetime.date(2000, 1, 1) + datetime.timedelta(days=i),
        datetime.datetime(2024, 3, 1, 12, 0, 0, 123456) + datetime.timedelta(seconds=i * 3601),
        datetime.datetime(1999, 12, 31, 23, 59, 59) + datetime.timedelta(minutes=i),
        [i + 0.5, i + 1.5, -i / 9],
        [[i, i + 1, i + 2], [-i, -i - 1, -i - 2]],
        list(range(i % 4)),
        ["a", str(i)],
        MLVectors.dense([i, 0.25, -1.0, i / 3]),
        MLVectors.sparse(4, [1, 3], [float(i), 2.0]),
        MLlibVectors.dense([i, 1.0]),
        MLlibVectors.sparse(2, [0], [i / 5]),
    )


ROWS = [_row(i) for i in range(60)]


@pytest.fixture(scope="module")
def all_types(spark):
    return spark.createDataFrame(ROWS, SCHEMA).repartition(3)


@pytest.fixture(scope="module")
def expected(all_types) -> dict[str, list]:
    rows = sorted(all_types.collect(), key=lambda r: r.id)
    return {name: [row[name] for row in rows] for name in SCHEMA.names}


def _read(converter, **kwargs) -> dict[str, np.ndarray]:
    with converter.make_numpy_iterator(batch_size=7, num_epochs=1, **kwargs) as batches:
        return by_id(concat(batches))


def _as_utc(value: datetime.datetime) -> np.datetime64:
    # collect() gives naive local times for TimestampType; the cache holds UTC instants.
    return np.datetime64(value.astimezone(datetime.UTC).replace(tzinfo=None), "us")


def test_round_trip_equals_collect_float32(all_types, expected) -> None:
    got = _read(make_spark_converter(all_types))
    assert got["id"].dtype == np.int64
    np.testing.assert_array_equal(got["id"], expected["id"])
    assert got["flag"].dtype == np.bool_
    np.testing.assert_array_equal(got["flag"], expected["flag"])
    for name, dtype in [("i8", np.int8), ("i16", np.int16), ("i32", np.int32)]:
        assert got[name].dtype == dtype
        np.testing.assert_array_equal(got[name], expected[name])
    for name in ("f", "d"):
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], np.array(expected[name], dtype=np.float32))
    assert got["dec"].dtype == np.float32
    np.testing.assert_allclose(got["dec"], [float(v) for v in expected["dec"]], rtol=1e-6)
    assert list(got["s"]) == expected["s"]
    assert list(got["bin"]) == [bytes(v) for v in expected["bin"]]
    assert got["day"].dtype == np.dtype("datetime64[D]")
    np.testing.assert_array_equal(got["day"], np.array(expected["day"], dtype="datetime64[D]"))
    assert got["ts"].dtype == np.dtype("datetime64[us]")
    np.testing.assert_array_equal(got["ts"], [_as_utc(v) for v in expected["ts"]])
    np.testing.assert_array_equal(got["ntz"], np.array(expected["ntz"], dtype="datetime64[us]"))


def test_arrays_vectors_and_nested_arrays_become_nd_arrays(all_types, expected) -> None:
    got = _read(make_spark_converter(all_types))
    assert got["arr"].shape == (60, 3) and got["arr"].dtype == np.float32
    np.testing.assert_array_equal(got["arr"], np.array(expected["arr"], dtype=np.float32))
    assert got["nested"].shape == (60, 2, 3) and got["nested"].dtype == np.int32
    np.testing.assert_array_equal(got["nested"], np.array(expected["nested"]))
    for name, width in [("vec", 4), ("sparse", 4), ("old_vec", 2), ("old_sparse", 2)]:
        assert got[name].shape == (60, width) and got[name].dtype == np.float32, name
        np.testing.assert_array_equal(got[name], np.array([v.toArray() for v in expected[name]], dtype=np.float32))


def test_variable_length_arrays_are_object_arrays_of_arrays(all_types, expected) -> None:
    got = _read(make_spark_converter(all_types))
    assert got["ragged"].dtype == object
    assert [list(v) for v in got["ragged"]] == expected["ragged"]
    assert [list(v) for v in got["words"]] == expected["words"]


def test_varying_arrays_of_fixed_arrays_are_one_array_a_row(spark) -> None:
    """Points of 3 floats, a varying count a row: one (count, 3) array a row, in NumPy, torch and a transform."""
    import torch

    rows = [(i, None if i == 4 else [[float(i), float(j), -1.0] for j in range(i % 4)]) for i in range(24)]
    df = spark.createDataFrame(rows, "id long, pts array<array<float>>")
    expected = {i: pts for i, pts in rows}
    converter = make_spark_converter(df)
    given = []

    def look(frame: pd.DataFrame) -> pd.DataFrame:
        given.extend(frame["pts"])
        return frame

    for transform in (None, look):
        got = _read(converter, transform_fn=transform)
        for i, cell in zip(got["id"].tolist(), got["pts"], strict=True):
            if expected[i] is None:
                assert cell is None
                continue
            assert cell.dtype == np.float32 and cell.shape == (i % 4, 3), (i, cell)
            np.testing.assert_array_equal(cell, np.array(expected[i], dtype=np.float32).reshape(-1, 3))
    assert len(given) == 24 and all(c is None or (c.dtype == np.float32 and c.shape[1:] == (3,)) for c in given)
    with converter.make_torch_dataloader(batch_size=24, num_epochs=1) as loader:
        (batch,) = list(loader)
    for i, cell in zip(batch["id"].tolist(), batch["pts"], strict=True):
        assert cell is None if expected[i] is None else torch.equal(cell, torch.tensor(expected[i]).reshape(-1, 3))


def test_arrays_of_fixed_arrays_that_disagree_with_the_manifest_are_refused() -> None:
    spec = ColumnSpec("pts", pa.list_(pa.list_(pa.float32())), "ragged", inner=(3,))
    good = pa.array([[[1.0, 2.0, 3.0]], [], None], spec.arrow_type)
    assert [None if c is None else c.shape for c in to_numpy(spec, good)] == [(1, 3), (0, 3), None]
    with pytest.raises(ValueError, match=r"'pts' holds inner arrays of 2 to 3 values where the cache's manifest"):
        to_numpy(spec, pa.array([[[1.0, 2.0, 3.0], [4.0, 5.0]]], spec.arrow_type))


def test_dtype_float64_and_none(all_types, expected) -> None:
    wide = _read(make_spark_converter(all_types, dtype="float64"), schema_fields=["id", "f", "d", "dec", "vec"])
    assert {wide[n].dtype for n in ("f", "d", "dec", "vec")} == {np.dtype(np.float64)}
    np.testing.assert_array_equal(wide["d"], expected["d"])
    np.testing.assert_array_equal(wide["vec"], [v.toArray() for v in expected["vec"]])
    kept = _read(make_spark_converter(all_types, dtype=None), schema_fields=["id", "f", "d", "dec", "vec"])
    assert kept["f"].dtype == np.float32 and kept["d"].dtype == np.float64
    assert kept["dec"].dtype == np.float64 and kept["vec"].dtype == np.float64
    np.testing.assert_array_equal(kept["dec"], [float(v) for v in expected["dec"]])


def test_torch_types(all_types, expected) -> None:
    import torch

    converter = make_spark_converter(all_types)
    with converter.make_torch_dataloader(batch_size=60, num_epochs=1, shuffle_row_groups=False) as loader:
        (batch,) = list(loader)
    order = torch.argsort(batch["id"])
    assert batch["flag"].dtype == torch.bool
    assert batch["i16"].dtype == torch.int16
    assert batch["d"].dtype == torch.float32
    assert batch["nested"].shape == (60, 2, 3)
    assert batch["day"].dtype == torch.int64
    days = [(d - datetime.date(1970, 1, 1)).days for d in expected["day"]]
    assert batch["day"][order].tolist() == days
    micros = [int(_as_utc(v).astype(np.int64)) for v in expected["ts"]]
    assert batch["ts"][order].tolist() == micros
    assert isinstance(batch["s"], list) and sorted(batch["s"]) == sorted(expected["s"])
    assert isinstance(batch["ragged"], list) and all(isinstance(t, torch.Tensor) for t in batch["ragged"])


FIXED = [name for name in SCHEMA.names if name not in ("ragged", "words")]
"""The columns every framework batches (TF refuses arrays of varying length)."""


def _expected_numbers(expected: dict[str, list], name: str) -> np.ndarray:
    """A column of collect() as the numbers a framework holds (dates in days, times in microseconds)."""
    values = expected[name]
    if name == "day":
        return np.array([(d - datetime.date(1970, 1, 1)).days for d in values])
    if name == "ts":
        return np.array([_as_utc(v) for v in values]).astype(np.int64)
    if name == "ntz":
        return np.array(values, dtype="datetime64[us]").astype(np.int64)
    if name in ("vec", "sparse", "old_vec", "old_sparse"):
        return np.array([v.toArray() for v in values], dtype=np.float32)
    if name == "dec":
        return np.array([float(v) for v in values], dtype=np.float32)
    return np.array(values, dtype=np.float32 if name in ("f", "d", "arr") else None)


def test_tf_types(all_types, expected) -> None:
    import tensorflow as tf

    converter = make_spark_converter(all_types)
    with converter.make_tf_dataset(batch_size=60, num_epochs=1, schema_fields=FIXED) as dataset:
        (batch,) = list(dataset)
    order = np.argsort(batch.id.numpy())
    dtypes = {"flag": tf.bool, "i8": tf.int8, "i16": tf.int16, "day": tf.int64, "ts": tf.int64, "s": tf.string}
    for name in FIXED:
        column = getattr(batch, name)
        if name in dtypes:
            assert column.dtype == dtypes[name], name
        if name in ("s", "bin"):
            raw = [v.encode() if isinstance(v, str) else bytes(v) for v in expected[name]]
            assert column.numpy()[order].tolist() == raw, name
        else:
            np.testing.assert_array_equal(column.numpy()[order], _expected_numbers(expected, name), err_msg=name)


@pytest.mark.parametrize("x64", [False, True])
def test_jax_types(all_types, expected, x64: bool) -> None:
    import jax

    import sparkfeed.jax

    converter = make_spark_converter(all_types)
    with sparkfeed.jax._x64_scope(x64):  # jax.enable_x64 from JAX 0.5, jax.experimental's before
        with converter.make_jax_iterator(batch_size=60, num_epochs=1, schema_fields=FIXED) as batches:
            (batch,) = list(batches)
        order = np.argsort(np.asarray(batch["id"]))
        wide = np.int64 if x64 else np.int32
        assert batch["id"].dtype == wide and batch["day"].dtype == wide
        assert batch["i16"].dtype == np.int16 and batch["flag"].dtype == np.bool_
        assert isinstance(batch["s"], np.ndarray) and batch["s"][order].tolist() == expected["s"]
        assert batch["bin"][order].tolist() == [bytes(v) for v in expected["bin"]]
        for name in FIXED:
            if name in ("s", "bin"):
                continue
            column = batch[name]
            if not x64 and name in ("ts", "ntz"):
                assert isinstance(column, np.ndarray) and column.dtype == np.dtype("datetime64[us]"), name
                column = column.astype(np.int64)
            else:
                assert isinstance(column, jax.Array), name
            np.testing.assert_array_equal(np.asarray(column)[order], _expected_numbers(expected, name), err_msg=name)


def test_values_at_the_edges_of_their_types_reach_every_loader_as_collect_gives_them(spark) -> None:
    # Day 1 and 9999-12-31 (beyond pandas' nanosecond range), -0.0 and NaN (equal to 0.0 and to
    # nothing), int64's ends, a 38-digit decimal: what a cast or a view could lose in silence.
    import sparkfeed.jax

    df = spark.sql(
        "SELECT id, IF(id = 0, DATE'0001-01-01', DATE'9999-12-31') AS day,"
        " IF(id = 0, TIMESTAMP'0001-01-01 00:00:00', TIMESTAMP'9999-12-31 23:59:59.999999') AS ts,"
        " IF(id = 0, TIMESTAMP_NTZ'0001-01-01 00:00:00', TIMESTAMP_NTZ'9999-12-31 23:59:59.999999') AS ntz,"
        " IF(id = 0, -0.0D, double('NaN')) AS d, IF(id = 0, float('-0.0'), float('NaN')) AS f,"
        " IF(id = 0, -9223372036854775808L, 9223372036854775807L) AS lo, CAST(IF(id = 0, -128, 127) AS TINYINT) AS i8,"
        " IF(id = 0, CAST('-99999999999999999999999999999999999999' AS DECIMAL(38, 0)), 0.5BD) AS dec, id = 0 AS flag"
        " FROM range(2)"
    )
    rows = df.drop("ts", "ntz").orderBy("id").collect()  # pyspark cannot collect year 1 as a local time
    micros = df.orderBy("id").selectExpr("unix_micros(ts)", "unix_micros(CAST(ntz AS TIMESTAMP))").collect()
    want = {
        "day": np.array([(row.day - datetime.date(1970, 1, 1)).days for row in rows]),
        "ts": np.array([m[0] for m in micros]),
        "ntz": np.array([m[1] for m in micros]),  # the session is in UTC
        "d": np.array([row.d for row in rows], np.float32),
        "f": np.array([row.f for row in rows], np.float32),
        "lo": np.array([row.lo for row in rows]),
        "i8": np.array([row.i8 for row in rows], np.int8),
        "dec": np.array([float(row.dec) for row in rows], np.float32),
        "flag": np.array([row.flag for row in rows]),
    }
    assert want["day"].tolist() == [-719162, 2932896] and want["lo"].tolist() == [-(2**63), 2**63 - 1]
    converter = make_spark_converter(df)

    def numbers(column) -> np.ndarray:  # NumPy's and JAX's dates (days) and times (microseconds) as torch's and TF's
        values = np.asarray(column)
        return values.astype(np.int64) if values.dtype.kind == "M" else values

    batches = {}
    with converter.make_numpy_iterator(batch_size=2, num_epochs=1, shuffle_row_groups=False) as loader:
        batches["numpy"] = by_id(concat(loader))
    with converter.make_torch_dataloader(batch_size=2, num_epochs=1, shuffle_row_groups=False) as loader:
        batches["torch"] = by_id({name: tensor.numpy() for name, tensor in next(iter(loader)).items()})
    with converter.make_tf_dataset(batch_size=2, num_epochs=1, shuffle_row_groups=False) as dataset:
        batches["tf"] = by_id({name: tensor.numpy() for name, tensor in next(iter(dataset))._asdict().items()})
    with sparkfeed.jax._x64_scope(True):
        with converter.make_jax_iterator(batch_size=2, num_epochs=1, shuffle_row_groups=False) as loader:
            batches["jax"] = by_id({name: np.asarray(v) for name, v in next(iter(loader)).items()})
    for framework, batch in batches.items():
        for name, values in want.items():
            have = numbers(batch[name])
            np.testing.assert_array_equal(have, values, err_msg=f"{framework} {name}")
            assert np.signbit(have[0]) == np.signbit(values[0]), (framework, name)  # -0.0 stays negative


def test_struct_and_map_columns_are_refused_with_column_type_and_advice(spark) -> None:
    df = spark.range(2).select(
        F.struct(F.col("id").alias("a")).alias("point"),
        F.create_map(F.lit("k"), F.col("id")).alias("tags"),
        "id",
    )
    with pytest.raises(UnsupportedTypeError) as error:
        make_spark_converter(df)
    message = str(error.value)
    assert "column 'point' has Spark type struct<a:bigint>" in message
    assert "df.select('point.*')" in message
    assert "column 'tags' has Spark type map<string,bigint>" in message
    assert "F.to_json('tags')" in message


def test_arrays_of_structs_and_maps_are_refused_with_their_own_type_and_advice_that_works(spark) -> None:
    # The element's message named struct<a:bigint> and advised df.select('points.*'), which fails on an array
    df = spark.range(2).select(
        "id",
        F.array(F.struct(F.col("id").alias("a"))).alias("points"),
        F.array(F.array(F.create_map(F.lit("k"), F.col("id")))).alias("tags"),
    )
    with pytest.raises(UnsupportedTypeError) as error:
        make_spark_converter(df)
    message = str(error.value)
    assert "column 'points' has Spark type array<struct<a:bigint>>, an array of elements" in message
    assert "column 'tags' has Spark type array<array<map<string,bigint>>>, an array of elements" in message
    assert "select('points.*')" not in message and "F.map_keys" not in message
    fixed = df.select("id", F.to_json("points").alias("points"), F.to_json("tags").alias("tags"))
    assert _read(make_spark_converter(fixed))["points"].tolist() == ['[{"a":0}]', '[{"a":1}]']


def test_a_dataframe_without_columns_is_refused_saying_so(spark, cache_root) -> None:
    before = set(cache_root.iterdir())
    for df in (spark.range(5).select(), spark.range(0).select()):
        with pytest.raises(ValueError, match=r"the DataFrame has no columns .*select at least one column"):
            make_spark_converter(df)
    assert set(cache_root.iterdir()) == before  # refused before a cache was made


def test_columns_of_one_name_are_refused_naming_them_and_how_to_rename(spark) -> None:
    joined = spark.range(3).withColumn("x", F.col("id") * 2).join(spark.range(3).withColumn("x", F.col("id")), "id")
    with pytest.raises(ValueError, match=r"more than one column of the same name \('x' and 'x'.*df.toDF"):
        make_spark_converter(joined)
    cased = spark.range(3).select("id", F.col("id").alias("ID"))
    with pytest.raises(ValueError, match="'id' and 'ID', which Spark compares ignoring case"):
        make_spark_converter(cased)
    renamed = make_spark_converter(joined.toDF("id", "x2", "x3"))  # what the message says to do
    try:
        with renamed.make_numpy_iterator(batch_size=3, num_epochs=1, shuffle_row_groups=False) as batches:
            (batch,) = list(batches)
        assert sorted(zip(batch["id"].tolist(), batch["x2"].tolist(), batch["x3"].tolist(), strict=True)) == [
            (0, 0, 0),
            (1, 2, 1),
            (2, 4, 2),
        ]
    finally:
        renamed.delete()


def test_null_in_numeric_column_names_the_column(spark) -> None:
    df = spark.createDataFrame([(1, 1.0, "a"), (2, None, None)], "id long, x double, s string")
    converter = make_spark_converter(df)
    with pytest.raises(
        NullValueError, match=r"column 'x' \(float in the cache\) holds 1 null value\(s\).*fillna"
    ) as error:
        _read(converter)
    assert any("sparkfeed: raised in a reader thread while reading" in note for note in error.value.__notes__)
    strings = _read(converter, schema_fields=["id", "s"])
    assert list(strings["s"]) == ["a", None]
    filled = _read(converter, transform_fn=lambda frame: frame.fillna({"x": -1.0}))
    assert filled["x"].tolist() == [1.0, -1.0]


def test_null_inside_a_fixed_array_is_refused(spark) -> None:
    df = spark.createDataFrame([(1, [1.0, None]), (2, [2.0, 3.0])], "id long, a array<double>")
    with pytest.raises(NullValueError, match="column 'a'"):
        _read(make_spark_converter(df))


def test_null_inside_an_array_of_varying_length_is_refused_and_a_null_array_is_none(tmp_path) -> None:
    # pyarrow would make every cell float64, the null a NaN and 2**53 + 1 another number
    big = 2**53 + 1
    column = pa.array([[big], [1, None, 3], None], pa.list_(pa.int64()))
    pq.write_table(pa.table({"id": [0, 1, 2], "r": column}), tmp_path / "part-0.parquet")
    converter = make_spark_converter(str(tmp_path))
    with pytest.raises(NullValueError, match=r"^column 'r' \(list<element: int64> in the cache\) holds 1 null"):
        _read(converter)
    rows = _read(converter, filters=[("id", "!=", 1)])
    assert rows["r"][0].dtype == np.int64 and rows["r"][0].tolist() == [big] and rows["r"][1] is None


def _huge(column: str):
    """Row 1 holds -1e300 (finite, beyond float32), row 0 inf and row 2 NaN, in a double, an array or a vector."""
    from pyspark.ml.functions import array_to_vector

    value = F.when(F.col("id") == 1, F.lit(-1e300)).when(F.col("id") == 0, F.lit(float("inf"))).otherwise(F.lit(np.nan))
    return {"x": value, "a": F.array(F.lit(3.4e38), value), "v": array_to_vector(F.array(F.lit(3.4e38), value))}[column]


@pytest.mark.parametrize("column", ["x", "a", "v"], ids=["double", "array", "vector"])
def test_a_finite_double_beyond_float32_fails_the_conversion_naming_the_column(spark, column: str) -> None:
    df = spark.range(3).select("id", _huge(column).alias(column))
    with pytest.raises(
        SparkRuntimeException, match=rf"column '{column}' holds a finite value beyond float32.*'float64'"
    ):
        make_spark_converter(df)
    kept = _read(make_spark_converter(df, dtype="float64"))[column]
    assert np.ravel(kept[1])[-1] == -1e300
    rest = _read(make_spark_converter(df.where("id != 1")))[column]  # infinities, NaN and float32's largest: values
    assert np.ravel(rest[0])[-1] == np.inf and np.isnan(np.ravel(rest[1])[-1])
    if column != "x":
        assert rest.dtype == np.float32 and rest[0][0] == np.float32(3.4e38)


@pytest.mark.parametrize("array", [False, True], ids=["decimal", "array"])
def test_a_decimal_of_negative_scale_beyond_a_floats_range_fails_the_conversion(spark, array: bool) -> None:
    # DecimalType(1, -45) holds 1e45 (and (1, -400) 1e400): Spark's cast made them inf without a word
    def frame(literal: str) -> DataFrame:
        value = F.lit(decimal.Decimal(literal))
        return spark.range(2).select("id", F.array(value).alias("d") if array else value.alias("d"))

    with _session_conf(spark, {"spark.sql.legacy.allowNegativeScaleOfDecimal": "true"}):
        with pytest.raises(SparkRuntimeException, match=r"column 'd' holds a finite value beyond float32.*'float64'"):
            make_spark_converter(frame("1E+45"))
        assert np.ravel(_read(make_spark_converter(frame("1E+45"), dtype="float64"))["d"])[0] == 1e45
        with pytest.raises(SparkRuntimeException, match=r"column 'd' holds a decimal beyond float64's range"):
            make_spark_converter(frame("1E+400"), dtype="float64")
        assert np.ravel(_read(make_spark_converter(frame("1E+38")))["d"])[0] == np.float32(1e38)  # 38 digits: in range


def test_overflow_checks_in_sql_text_keep_odd_names_and_mix_with_vectors(spark) -> None:
    # Scalar columns' casts and checks are SQL text (one JVM call for them all); names of quotes and
    # backticks stay literal, and beside a vector (checked as Columns) both kinds run in one projection.
    from pyspark.ml.functions import array_to_vector

    name = "it's `x`"
    vector = array_to_vector(F.array(F.col("id").cast("double"))).alias("v")
    df = spark.range(3).select("id", F.col("id").cast("double").alias(name), vector, F.lit(1.5).alias("d"))
    got = _read(make_spark_converter(df))
    np.testing.assert_array_equal(got[name], np.arange(3, dtype=np.float32))
    assert got[name].dtype == np.float32 and got["d"].dtype == np.float32 and got["v"].dtype == np.float32
    huge = df.select("id", F.when(F.col("id") == 2, F.lit(-1e300)).otherwise(F.lit(1.0)).alias(name), "v")
    with pytest.raises(SparkRuntimeException, match=r"column \"it's `x`\" holds a finite value beyond float32"):
        make_spark_converter(huge)


def test_a_column_named_as_the_overflow_checks_own_column_in_another_case_converts(spark) -> None:
    # The check's __sparkfeed_source_0 and the user's __SPARKFEED_SOURCE_0 were one ambiguous name to Spark
    x, internal = F.col("id").cast("double").alias("x"), (-F.col("id")).alias("__SPARKFEED_SOURCE_0")
    df = spark.range(3).select("id", x, internal)
    got = _read(make_spark_converter(df))
    np.testing.assert_array_equal(got["x"], np.arange(3, dtype=np.float32))
    np.testing.assert_array_equal(got["__SPARKFEED_SOURCE_0"], -np.arange(3))


def test_a_path_read_double_beyond_float32_is_refused_naming_the_column(tmp_path) -> None:
    table = pa.table({"id": [0, 1], "x": [1.0, 1e300], "a": [[1.0], [-1e300]], "ok": [np.inf, 3.4e38]})
    pq.write_table(table, tmp_path / "part-0.parquet")
    converter = make_spark_converter(str(tmp_path))  # dtype='float32'
    for column in ("x", "a"):
        with pytest.raises(OverflowError, match=rf"^column '{column}' holds .*1e\+300.*float32.*dtype='float64'"):
            _read(converter, schema_fields=["id", column])
    got = _read(converter, schema_fields=["id", "ok"])
    assert got["ok"].dtype == np.float32 and got["ok"][0] == np.inf  # an infinity is a value
    assert _read(make_spark_converter(str(tmp_path), dtype="float64"), schema_fields=["id", "x"])["x"][1] == 1e300


@settings(max_examples=200)
@given(
    precision=st.integers(1, 38),
    data=st.data(),
)
def test_path_read_decimals_are_the_floats_nearest_their_values(precision: int, data: st.DataObject) -> None:
    # Arrow's own cast multiplies by a rounded 10**-scale: 0.70 came out 0.7000000000000001.
    scale = data.draw(st.integers(-3 if precision <= 18 else 0, precision))  # pyarrow 19 builds no wide negative ones
    digits = st.integers(-(10**precision) + 1, 10**precision - 1)
    unscaled = data.draw(st.lists(st.one_of(st.none(), digits), min_size=1, max_size=30))
    exact = decimal.Context(prec=80)  # the default context rounds to 28 digits
    values = [None if u is None else decimal.Decimal(u).scaleb(-scale, exact) for u in unscaled]
    column = pa.chunked_array([pa.array(values, pa.decimal128(precision, scale))])
    offset = data.draw(st.integers(0, len(values) - 1))
    column = column.slice(offset)  # a slice's buffers start before its first value
    expected = [None if v is None else float(v) for v in values[offset:]]
    assert cast_column("d", column, pa.float64()).to_pylist() == expected
    assert cast_column("d", column, pa.float32()).to_pylist() == [
        None if v is None else float(np.float32(v)) for v in expected
    ]
    nested = pa.chunked_array([pa.array([values[offset:], None, []], pa.list_(pa.decimal128(precision, scale)))])
    assert cast_column("d", nested, pa.list_(pa.float64())).to_pylist() == [expected, None, []]


def test_a_path_read_decimal_column_reads_as_spark_converts_decimals(tmp_path) -> None:
    amounts = [decimal.Decimal(text) for text in ("0.70", "0.30", "-12.35", "1234567.89")]
    pq.write_table(
        pa.table({"id": range(4), "amount": pa.array(amounts, pa.decimal128(10, 2))}), tmp_path / "p.parquet"
    )
    got = _read(make_spark_converter(str(tmp_path), dtype="float64"))
    assert got["amount"].tolist() == [0.7, 0.3, -12.35, 1234567.89]
    kept = _read(make_spark_converter(str(tmp_path), dtype="float64"), filters=[("amount", "==", 0.7)])
    assert kept["id"].tolist() == [0]


def test_spark_int96_timestamps_opened_by_path_read_as_spark_reads_them(spark, tmp_path) -> None:
    # INT96, Spark's default output type, read in pyarrow's default nanoseconds wrapped every time
    # outside 1677-2262: 9999-12-31 came out as 1816-03-29.
    stamps = [datetime.datetime(9999, 12, 31), datetime.datetime(1500, 1, 1), datetime.datetime(2024, 1, 1, 12)]
    df = spark.createDataFrame(list(enumerate(stamps)), "id long, ts timestamp")
    with _session_conf(spark, {"spark.sql.parquet.outputTimestampType": "INT96"}):
        df.coalesce(1).write.parquet(str(tmp_path / "int96"))
    (file,) = (tmp_path / "int96").glob("*.parquet")
    assert pq.ParquetFile(file).schema.column(1).physical_type == "INT96"
    got = _read(make_spark_converter(str(tmp_path / "int96")))
    assert got["ts"].astype("datetime64[us]").tolist() == stamps
    kept = _read(make_spark_converter(str(tmp_path / "int96")), filters=[("ts", ">", datetime.datetime(3000, 1, 1))])
    assert kept["id"].tolist() == [0]


@pytest.mark.parametrize("mode", ["datetimeRebaseModeInWrite", "int96RebaseModeInWrite"])
def test_a_file_spark_wrote_in_its_legacy_calendar_is_refused_where_it_holds_values_spark_would_shift(
    spark, tmp_path, mode: str
) -> None:
    # Spark shifts these values when it reads them; pyarrow read 1500-01-01 as 1500-01-10.
    conf = {f"spark.sql.parquet.{mode}": "LEGACY"}
    if mode == "int96RebaseModeInWrite":
        conf["spark.sql.parquet.outputTimestampType"] = "INT96"
    rows = [(0, datetime.datetime(1500, 1, 1), datetime.date(1500, 1, 1))]
    modern = [(1, datetime.datetime(2024, 1, 1), datetime.date(2024, 1, 1))]
    with _session_conf(spark, conf):
        spark.createDataFrame(rows + modern, "id long, ts timestamp, d date").coalesce(1).write.parquet(
            str(tmp_path / "old")
        )
        spark.createDataFrame(modern, "id long, ts timestamp, d date").coalesce(1).write.parquet(str(tmp_path / "new"))
    with pytest.raises(ValueError, match=r"in its LEGACY calendar mode .* column '(ts|d)' holds 1500-01-"):
        make_spark_converter(str(tmp_path / "old"))
    got = _read(make_spark_converter(str(tmp_path / "new")))  # nothing Spark would shift: read as it is
    assert got["d"].tolist() == [datetime.date(2024, 1, 1)]


def test_a_legacy_key_covers_only_its_own_columns_and_a_cache_never_carries_one(spark, tmp_path) -> None:
    # int96RebaseModeInWrite=LEGACY marks every file, yet only INT96 columns are rebased: a
    # TIMESTAMP_MICROS column of 1500 is read by Spark as written. A session so set must not make
    # sparkfeed refuse its own caches either.
    stamps = [(0, datetime.datetime(1500, 1, 1), datetime.date(1500, 1, 1))]
    df = spark.createDataFrame(stamps, "id long, ts timestamp, d date")
    conf = {
        "spark.sql.parquet.int96RebaseModeInWrite": "LEGACY",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    }
    with _session_conf(spark, conf):
        df.coalesce(1).write.parquet(str(tmp_path / "micros"))
        converter = make_spark_converter(df.withColumn("x", F.lit(1.0)))  # Spark's own writer
    (file,) = (tmp_path / "micros").glob("*.parquet")
    assert b"org.apache.spark.legacyINT96" in pq.read_metadata(file).metadata
    for got in (_read(make_spark_converter(str(tmp_path / "micros"))), _read(converter)):
        assert got["ts"].astype("datetime64[us]").tolist() == [datetime.datetime(1500, 1, 1)]
        assert got["d"].tolist() == [datetime.date(1500, 1, 1)]


def test_a_path_read_dictionary_column_is_its_values(tmp_path) -> None:
    # A pandas categorical, as pyarrow writes it: refused before, though its values are plain strings.
    import pandas as pd

    frame = pd.DataFrame({"id": range(6), "cat": pd.Categorical(["a", "b", "a", "c", "b", "a"])})
    frame.to_parquet(tmp_path / "p.parquet")
    assert pa.types.is_dictionary(pq.read_schema(tmp_path / "p.parquet").field("cat").type)
    converter = make_spark_converter(str(tmp_path))
    got = _read(converter)
    assert got["cat"].tolist() == ["a", "b", "a", "c", "b", "a"]
    assert _read(converter, filters=[("cat", "==", "a")])["id"].tolist() == [0, 2, 5]


def test_a_path_read_column_no_tensor_holds_is_refused_only_where_a_loader_selects_it(tmp_path) -> None:
    # A time of day: no framework tensor type holds it. The dataset opened at all was refused
    # before, whatever the loaders would select.
    table = pa.table({"id": [0, 1, 2], "at": pa.array([0, 1, 2], pa.time64("us")), "x": [0.5, 1.5, 2.5]})
    pq.write_table(table, tmp_path / "p.parquet")
    converter = make_spark_converter(str(tmp_path))
    assert len(converter) == 3
    got = _read(converter, schema_fields=["id", "x"], filters=[("x", ">", 1.0)])
    assert got["id"].tolist() == [1, 2]
    with pytest.raises(UnsupportedTypeError, match=r"column 'at' has Arrow type time64\[us\].*schema_fields"):
        converter.make_numpy_iterator(batch_size=2, num_epochs=1)


# --------------------------------------------------------------------------- one policy, one error type


def test_the_errors_are_the_builtin_types_existing_code_catches() -> None:
    assert issubclass(NullValueError, ValueError) and issubclass(UnsupportedTypeError, TypeError)


def test_one_view_per_framework_for_every_kind_of_column(all_types) -> None:
    manifest = make_spark_converter(all_types).manifest
    specs = column_specs(manifest.schema, manifest.options.get("dtype"), manifest.shapes)
    for framework in ("torch", "tf", "jax"):  # jax with jax_enable_x64: as the other two
        for name in ("day", "ts", "ntz"):  # dates and timestamps: int64 counts, in every framework
            assert (specs[name].view(framework).dtype, specs[name].view(framework).carrier) == (np.int64, "tensor")
        assert specs["flag"].view(framework).dtype == np.bool_ and specs["i16"].view(framework).dtype == np.int16
        assert specs["nested"].view(framework).shape == (2, 3) and specs["s"].view(framework).carrier == "strings"
    assert specs["ragged"].view("torch").carrier == specs["ragged"].view("jax").carrier == "ragged"
    with pytest.raises(UnsupportedTypeError, match="column 'ragged' holds arrays of varying length"):
        specs["ragged"].view("tf")
    # JAX without x64: what fits is narrowed exactly, timestamps stay NumPy (their microseconds never fit).
    narrow = {name: specs[name].view("jax", x64=False) for name in ("id", "day", "ts", "i32")}
    assert (narrow["id"].dtype, narrow["id"].narrow) == (np.int32, True)
    assert (narrow["day"].dtype, narrow["day"].narrow) == (np.int32, True)
    assert (narrow["ts"].dtype, narrow["ts"].carrier) == (np.dtype("datetime64[us]"), "host")
    assert (narrow["i32"].dtype, narrow["i32"].narrow) == (np.int32, False)


def test_a_view_prepares_values_as_its_framework_takes_them() -> None:
    days = np.array(["2020-01-01", "1970-01-02"], dtype="datetime64[D]")
    assert framework_view("day", days.dtype, (), "torch").prepare(days).tolist() == [18262, 1]
    assert framework_view("day", days.dtype, (), "jax", x64=False).prepare(days).dtype == np.int32
    with pytest.raises(OverflowError, match=r"column 'big' holds 1099511627776, beyond int32"):
        framework_view("big", np.dtype(np.int64), (), "jax", x64=False).prepare(np.array([1, 2**40]))
    strings = np.array(["a", None], dtype=object)
    assert framework_view("s", strings.dtype, (), "torch").prepare(strings) is strings  # torch: a list of them
    with pytest.raises(NullValueError, match=r"column 's' holds nulls, which a tf.string tensor cannot"):
        framework_view("s", strings.dtype, (), "tf").prepare(strings)
    ragged = np.array([None, np.arange(2)], dtype=object)  # the first non-null value decides
    assert array_view("r", ragged, "torch").carrier == "ragged"


def test_a_numpy_kind_no_framework_holds_is_refused_naming_the_column() -> None:
    loaders = {"torch": "make_torch_dataloader", "tf": "make_tf_dataset", "jax": "make_jax_iterator"}
    for framework, loader in loaders.items():
        with pytest.raises(UnsupportedTypeError, match=rf"column 'raw' has NumPy dtype \|V8, which {loader} cannot"):
            framework_view("raw", np.dtype("V8"), (), framework)


def test_a_null_raises_null_value_error_from_every_loader(spark) -> None:
    import tensorflow as tf

    converter = make_spark_converter(spark.createDataFrame([(1, 1.0), (2, None)], "id long, x double"))
    for make in (converter.make_numpy_iterator, converter.make_torch_dataloader, converter.make_jax_iterator):
        with make(batch_size=2, num_epochs=1) as batches, pytest.raises(NullValueError, match="column 'x'"):
            list(batches)  # the reader's check, the same for every loader
    with converter.make_tf_dataset(batch_size=2, num_epochs=1) as dataset:
        with pytest.raises(NullValueError, match=r"column 'x' \(float in the cache\) holds 1 null value\(s\)") as error:
            list(dataset)
    assert isinstance(error.value, tf.errors.InvalidArgumentError)  # TensorFlow's own error type as well
    assert any("sparkfeed: raised in a reader thread" in note for note in error.value.__notes__)
