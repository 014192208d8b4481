"""Datasets read in place and caches written: schemas agree or are refused, valid input converts, bits verified."""

from __future__ import annotations

import glob

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, LongType, StructField, StructType

from sparkfeed import NullValueError, make_spark_converter
from sparkfeed.location import Location
from sparkfeed.materialize import _session_conf, identify

from helpers import by_id, concat


def _read(converter, **kwargs) -> dict[str, np.ndarray]:
    with converter.make_numpy_iterator(batch_size=1000, num_epochs=1, **kwargs) as batches:
        return by_id(concat(batches))


# --------------------------------------------------------------------------- path datasets


@pytest.mark.parametrize(
    ("first", "second", "values"),
    [
        (pa.bool_(), pa.int64(), ([True, False], [5, 0])),  # int64 5 would become True
        (pa.float64(), pa.string(), ([1.5, 2.0], ["1e3", "x"])),  # '1e3' would become 1000.0
        (pa.int64(), pa.float64(), ([2**60, 1], [0.5, 1.0])),  # 2**60 + 1 has no float64
        (pa.int64(), pa.uint64(), ([-1, 1], [2**63, 1])),
    ],
)
def test_files_that_disagree_on_a_type_are_refused_naming_both(tmp_path, first, second, values) -> None:
    pq.write_table(pa.table({"id": [0, 1], "x": pa.array(values[0], first)}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": [2, 3], "x": pa.array(values[1], second)}), tmp_path / "b.parquet")
    with pytest.raises(ValueError, match=r"column 'x': a\.parquet has .*, b\.parquet has"):
        make_spark_converter(str(tmp_path))


def test_files_missing_a_column_are_refused(tmp_path) -> None:
    pq.write_table(pa.table({"id": [0], "x": [1.0]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"id": [1]}), tmp_path / "b.parquet")
    with pytest.raises(ValueError, match=r"a\.parquet and b\.parquet differ in \['x'\]"):
        make_spark_converter(str(tmp_path))


def test_lossless_widening_unifies_files(tmp_path) -> None:
    pq.write_table(
        pa.table({"id": pa.array([0, 1], pa.int32()), "x": pa.array([None, None], pa.null())}), tmp_path / "a.parquet"
    )
    pq.write_table(
        pa.table({"id": pa.array([2**40, 3], pa.int64()), "x": pa.array([1.5, 2.5], pa.float64())}),
        tmp_path / "b.parquet",
    )
    converter = make_spark_converter(str(tmp_path), dtype=None)
    assert converter.manifest.schema.field("id").type == pa.int64()
    got = concat(
        converter.make_numpy_iterator(batch_size=10, num_epochs=1, shuffle_row_groups=False, schema_fields=["id"])
    )
    assert got["id"].dtype == np.int64 and sorted(got["id"].tolist()) == [0, 1, 3, 2**40]


def test_hive_partitions_become_columns(tmp_path) -> None:
    for year in (2023, 2024):
        for region in ("eu", "us west"):
            directory = tmp_path / f"year={year}" / f"region={region.replace(' ', '%20')}"
            directory.mkdir(parents=True)
            ids = [year * 10 + len(region), year * 10 + len(region) + 100]
            pq.write_table(pa.table({"id": ids}), directory / "part-0.parquet")
    converter = make_spark_converter(str(tmp_path))
    got = _read(converter)
    assert got["year"].dtype == np.int64
    rows = sorted(zip(got["id"].tolist(), got["year"].tolist(), got["region"].tolist(), strict=True))
    assert len(rows) == 8
    for id_, year, region in rows:
        assert (id_ % 100 - len(region)) == (year * 10) % 100 and region in ("eu", "us west")


def test_files_at_more_than_one_depth_are_refused_a_cache_among_them_named(spark, tmp_path) -> None:
    # Spark reads 10 rows of this directory (its own files, not the subdirectory's); sparkfeed
    # read 15, the rows of a cache an older version wrote inside the dataset's directory included.
    dataset = tmp_path / "data"
    spark.range(10).write.parquet(str(dataset))
    assert spark.read.parquet(str(dataset)).count() == 10
    cache = dataset / "sparkfeed-20260101T000000-0123456789ab"
    cache.mkdir()
    pq.write_table(pa.table({"id": np.arange(5)}), cache / "part-0.parquet")
    (cache / "_sparkfeed_cache.json").write_text("{}")
    with pytest.raises(
        ValueError, match=r"lie at different depths \(part-.*\.parquet and sparkfeed-.*/part-0\.parquet\)"
    ) as refused:
        make_spark_converter(str(dataset))
    assert str(refused.value).endswith(
        f"; sparkfeed-20260101T000000-0123456789ab is a sparkfeed cache, not part of the dataset: remove it (sparkfeed "
        f"cache rm {Location.parse(str(cache)).url}) or move it out"
    )
    assert sorted(p.name for p in cache.iterdir()) == ["_sparkfeed_cache.json", "part-0.parquet"]  # nothing removed
    other = tmp_path / "other"  # files beside a directory that is no partition: Spark reads the top level only
    other.mkdir()
    pq.write_table(pa.table({"id": [1]}), other / "a.parquet")
    (other / "more").mkdir()
    pq.write_table(pa.table({"id": [2]}), other / "more" / "b.parquet")
    with pytest.raises(
        ValueError, match=r"lie at different depths \(a\.parquet and more/b\.parquet\).*move the others out$"
    ):
        make_spark_converter(str(other))


def test_pandas_index_is_not_a_feature_and_non_parquet_files_are_named(tmp_path) -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0]}, index=pd.Index([10, 20, 30]))
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=True), tmp_path / "a.parquet")
    assert "__index_level_0__" in pq.read_schema(tmp_path / "a.parquet").names
    converter = make_spark_converter(str(tmp_path))
    assert converter.manifest.schema.names == ["x"]
    np.testing.assert_array_equal(np.sort(concat(converter.make_numpy_iterator(num_epochs=1))["x"]), [1, 2, 3])
    (tmp_path / "notes.txt").write_text("not parquet")
    with pytest.raises(ValueError, match=r"notes\.txt under .* is not a Parquet file"):
        make_spark_converter(str(tmp_path))


# --------------------------------------------------------------------------- valid input that used to fail


def test_arrays_empty_in_a_whole_partition_convert(spark) -> None:
    schema = StructType([StructField("id", LongType()), StructField("a", ArrayType(FloatType()))])
    rows = [(i, [] if i < 10 else [float(i)] * 3) for i in range(20)]
    df = spark.createDataFrame(rows, schema).repartition(2, F.col("id") >= 10)
    got = _read(make_spark_converter(df))
    assert [len(cell) for cell in got["a"]] == [0] * 10 + [3] * 10
    empty = spark.createDataFrame([(i, []) for i in range(6)], schema).repartition(2)
    got = _read(make_spark_converter(empty))
    assert got["a"].shape == (6, 0)


def test_a_column_name_with_a_backtick_converts(spark) -> None:
    df = spark.range(5).select(F.col("id"), (F.col("id") * 2).alias("we`ird"), F.array("id", "id").alias("a`b"))
    got = _read(make_spark_converter(df))
    np.testing.assert_array_equal(got["we`ird"], np.arange(5) * 2)
    assert got["a`b"].shape == (5, 2)


def test_a_column_named_as_pandas_names_its_index_is_kept_where_pandas_did_not_write_it(spark, tmp_path) -> None:
    # Spark's writer (a DataFrame without arrays) wrote it, and the cache's manifest left it out in silence
    df = spark.range(4).select("id", (F.col("id") * 10).alias("__index_level_0__"))
    got = _read(make_spark_converter(df))
    np.testing.assert_array_equal(got["__index_level_0__"], np.arange(4) * 10)
    df.write.parquet(str(tmp_path / "spark"))
    assert make_spark_converter(str(tmp_path / "spark")).manifest.schema.names == ["id", "__index_level_0__"]


def test_a_null_mllib_vector_is_named_when_read(spark) -> None:
    schema = StructType([StructField("id", LongType()), StructField("features", VectorUDT())])
    df = spark.createDataFrame([(1, Vectors.dense([1.0, 2.0])), (2, None), (3, Vectors.sparse(2, [1], [3.0]))], schema)
    converter = make_spark_converter(df)
    with pytest.raises(NullValueError, match="column 'features'"):
        _read(converter)
    filled = _read(
        converter,
        transform_fn=lambda f: f.assign(
            features=[v if v is not None else np.zeros(2, np.float32) for v in f["features"]]
        ),
    )
    assert filled["features"].tolist() == [[1.0, 2.0], [0.0, 0.0], [0.0, 3.0]]


# --------------------------------------------------------------------------- integrity


def _flip_a_value_byte(path: str, value: bytes) -> None:
    with open(path, "rb") as handle:
        data = bytearray(handle.read())
    at = data.find(value)
    assert at > 0, "the value's bytes are not in the file"
    data[at] ^= 0x01
    with open(path, "wb") as handle:
        handle.write(bytes(data))


@pytest.mark.parametrize("with_array", [False, True], ids=["spark-writer", "task-writer"])
def test_a_flipped_bit_in_a_cache_file_is_an_error_not_a_wrong_number(spark, with_array: bool) -> None:
    df = spark.range(64, numPartitions=1).select("id", (F.col("id") + 0.25).cast("float").alias("x"))
    if with_array:
        df = df.withColumn("pair", F.array("x", "x"))
    converter = make_spark_converter(df)
    assert _read(converter)["x"].tolist() == [i + 0.25 for i in range(64)]
    (path,) = glob.glob(Location.parse(converter.cache_dir_url).local_path + "/*.parquet")
    _flip_a_value_byte(path, np.arange(10.25, 14, dtype=np.float32).tobytes())
    with pytest.raises(OSError, match=r"(?i)crc|checksum"):
        _read(converter)
    unverified = _read(converter, verify_checksums=False)["x"].tolist()  # the opt-out serves what is on disk
    assert unverified != [i + 0.25 for i in range(64)] and len(unverified) == 64


# --------------------------------------------------------------------------- reuse keys


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "datasource-v2"])
def test_reader_options_that_change_rows_change_the_stable_key(spark, tmp_path, v2: bool) -> None:
    # The same files, the same given schema, the same plan text ("Relation [a,b] csv"), other rows.
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "a.csv").write_text("a,b\n1,NA\n2,x\n")
    conf = {"spark.sql.sources.useV1SourceList": ""} if v2 else {}
    with _session_conf(spark, conf):
        read = lambda **options: spark.read.schema("a string, b string").options(**options).csv(str(tmp_path / "csv"))  # noqa: E731
        variants = [{}, {"header": "true"}, {"nullValue": "NA"}, {"sep": ";"}]
        frames = [read(**options) for options in variants]
        assert len({tuple(df.collect()) for df in frames}) == len(variants)
        keys = [identify(df, stable=True).stable for df in frames]
        assert None not in keys and len(set(keys)) == len(variants)
        assert identify(read(HEADER="true"), stable=True).stable == keys[1]  # Spark reads keys regardless of case
        assert identify(read(), stable=True).stable == keys[0]


def test_dates_before_1582_read_back_as_spark_gives_them_whatever_the_sessions_rebase_mode(spark) -> None:
    # A session migrating from Spark 2 writes LEGACY: Julian-calendar days, which pyarrow reads five days off.
    df = spark.sql("SELECT 1 AS id, DATE'1000-01-01' AS d, TIMESTAMP_NTZ'1000-01-01 12:00:00' AS t")
    with _session_conf(spark, {"spark.sql.parquet.datetimeRebaseModeInWrite": "LEGACY"}):
        converter = make_spark_converter(df)
    try:
        values = _read(converter)
        assert values["d"].tolist() == [np.datetime64("1000-01-01", "D")]
        assert values["t"].tolist() == [np.datetime64("1000-01-01T12:00:00", "us")]
    finally:
        converter.delete()


def test_wide_dataframes_that_differ_past_the_25th_field_have_other_stable_keys(spark) -> None:
    # Spark's plan text stops at 25 fields ("... 5 more fields"): of a node (the 30th column) or of
    # an expression (a coalesce's 31st argument); what differed past them was not in the key.
    def wide(offset: int):
        return spark.range(5).select(
            *[F.col("id").alias(f"c{i}") for i in range(29)], (F.col("id") + offset).alias("z")
        )

    def late(value: int):
        return spark.range(5).select(F.coalesce(*[F.lit(None).cast("long")] * 30, F.lit(value)).alias("z"))

    for make in (wide, late):
        assert make(1).collect() != make(2).collect()
        keys = [identify(make(value), stable=True).stable for value in (1, 2, 1)]
        assert None not in keys and keys[0] != keys[1] and keys[0] == keys[2]
        # The settings that cut the text short are lifted while it is written, and are not in the key.
        with _session_conf(spark, {"spark.sql.maxPlanStringLength": "100", "spark.sql.debug.maxToStringFields": "5"}):
            assert identify(make(1), stable=True).stable == keys[0]


def test_dataframes_that_differ_only_in_column_names_get_their_own_caches(spark) -> None:
    # Spark's sameResult compares canonicalized plans, which drop names: columns renamed, or two
    # swapped, were served from the first cache, one column's values under the other's name.
    def frame(one: str, two: str):
        return spark.range(5).select("id", (F.col("id") + 1).alias(one), (F.col("id") * 2).alias(two))

    first = make_spark_converter(frame("a", "b"))
    swapped = make_spark_converter(frame("b", "a"))
    assert swapped.cache_dir_url != first.cache_dir_url
    values = _read(swapped)
    assert values["b"].tolist() == [1, 2, 3, 4, 5] and values["a"].tolist() == [0, 2, 4, 6, 8]
    spark.conf.set("spark.sql.caseSensitive", "true")
    try:
        upper = make_spark_converter(frame("A", "b"))
    finally:
        spark.conf.unset("spark.sql.caseSensitive")
    assert upper.cache_dir_url != first.cache_dir_url and list(_read(upper)) == ["id", "A", "b"]
    assert make_spark_converter(frame("a", "b")).cache_dir_url == first.cache_dir_url  # the same DataFrame: reused


def test_a_seeded_sample_is_never_reused_across_processes_since_its_rows_follow_the_split(spark, tmp_path) -> None:
    # The same files and seed keep other rows where Spark splits the files otherwise (a cluster of
    # other cores, another maxPartitionBytes: execution settings the stable key leaves out).
    spark.range(20000).coalesce(1).write.parquet(str(tmp_path / "src"))

    def sample():
        return spark.read.parquet(str(tmp_path / "src")).sample(fraction=0.1, seed=3)

    whole = sorted(row.id for row in sample().collect())
    with _session_conf(spark, {"spark.sql.files.maxPartitionBytes": "20000"}):
        assert sample().rdd.getNumPartitions() > 1
        assert sorted(row.id for row in sample().collect()) != whole
    identity = identify(sample(), stable=True)
    assert identity.stable is None and "Sample (df.sample, randomSplit, TABLESAMPLE)" in identity.unstable
