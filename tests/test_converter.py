"""The converter object: its properties, and pickling to other processes and Spark executors."""

from __future__ import annotations

import inspect
import logging
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from sparkfeed import SparkDatasetConverter, make_spark_converter

from helpers import concat, run_job


def test_properties(spark) -> None:
    converter = make_spark_converter(spark.range(25, numPartitions=2))
    assert isinstance(converter, SparkDatasetConverter)
    assert len(converter) == converter.dataset_size == 25
    assert len(converter.file_urls) == 2
    assert all(
        url.startswith(converter.cache_dir_url + "/") and url.endswith(".parquet") for url in converter.file_urls
    )
    assert "rows=25" in repr(converter)


def test_pickled_converter_reads_the_same_data(spark) -> None:
    converter = make_spark_converter(spark.range(40).withColumn("x", F.col("id") / 2))
    clone = pickle.loads(pickle.dumps(converter))
    assert clone.cache_dir_url == converter.cache_dir_url and len(clone) == 40
    with clone.make_numpy_iterator(batch_size=8, num_epochs=1, shuffle_row_groups=False) as batches:
        got = concat(batches)
    np.testing.assert_array_equal(np.sort(got["id"]), np.arange(40))


def test_converter_reads_in_another_process(spark, tmp_path) -> None:
    converter = make_spark_converter(spark.range(33))
    blob = tmp_path / "converter.pkl"
    blob.write_bytes(pickle.dumps(converter))
    code = (
        "import pickle, sys; c = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "with c.make_numpy_iterator(batch_size=5, num_epochs=1) as it: print(sum(int(b['id'].sum()) for b in it))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(blob)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == sum(range(33))


def test_each_spark_task_reads_its_own_shard(spark) -> None:
    converter = make_spark_converter(spark.range(1000).withColumn("x", F.col("id") * 2.0))

    def read_shard(index: int):
        with converter.make_numpy_iterator(batch_size=64, num_epochs=1, cur_shard=index, shard_count=4) as batches:
            ids = np.concatenate([b["id"] for b in batches])
        yield index, ids.tolist()

    shards = dict(
        spark.sparkContext.parallelize(range(4), 4).mapPartitionsWithIndex(lambda i, _: read_shard(i)).collect()
    )
    assert sorted(shards) == [0, 1, 2, 3]
    assert sorted(i for ids in shards.values() for i in ids) == list(range(1000))
    assert {len(ids) for ids in shards.values()} == {250}


def test_a_spark_connect_session_converts_reuses_and_reads_in_tasks(tmp_path) -> None:
    cache = tmp_path / "connect-cache"
    seen = run_job("spark_connect_job.py", cache.as_uri(), cwd=tmp_path)
    assert seen["rows"] == 1000 and seen["ids_sorted"] and seen["pairs_match"] and seen["reused"]
    assert seen["cache_dir_url"].startswith(cache.as_uri() + "/")  # the cacheDir conf, read through Connect
    (last,) = seen["progress"]  # progress=True: the bar follows the server's progress messages
    assert last.startswith("sparkfeed: writing the cache: 100%") and "4/4" in last
    quarter = 250
    assert sum(seen["shard_id_sums"]) == sum(range(1000)) and len(seen["shard_id_sums"]) == 4
    assert seen["shard_id_sums"][0] == sum(range(quarter))  # exact shards: rows [0, 250) is the smallest sum
    assert not any(cache.iterdir())  # delete() removed the cache


def test_executors_of_a_standalone_cluster_read_exact_shards(standalone_master, tmp_path) -> None:
    cache = tmp_path / "standalone-cache"
    seen = run_job("standalone_job.py", standalone_master, cache.as_uri(), cwd=tmp_path)
    quarters = [sum(range(q * 2500, (q + 1) * 2500)) for q in range(4)]
    assert seen["shards"] == [[q, 2500, quarters[q], True] for q in range(4)]
    assert seen["driver_pid"] not in seen["executors"]  # read in the cluster's executor processes
    assert not any(cache.iterdir())  # delete() from the driver removed the cache


def test_column_names_with_dots_spaces_and_keywords(spark) -> None:
    df = spark.range(100).select(
        F.col("id").alias("a.b"), (F.col("id") / 2).alias("my col"), F.array("id", "id").alias("class")
    )
    converter = make_spark_converter(df)  # array columns: written by the tasks' pyarrow writer
    with converter.make_numpy_iterator(batch_size=100, num_epochs=1, schema_fields=["class", "a.b"]) as batches:
        (batch,) = list(batches)
    assert list(batch) == ["class", "a.b"]
    np.testing.assert_array_equal(batch["class"][:, 1], batch["a.b"])
    plain = make_spark_converter(df.drop("class"))  # no arrays: written by Spark's own writer
    with plain.make_numpy_iterator(batch_size=100, num_epochs=1) as batches:
        (batch,) = list(batches)
    np.testing.assert_array_equal(batch["my col"], batch["a.b"] / 2)


PETASTORM_TF_ORDER = [
    ("batch_size", None),
    ("prefetch", None),
    ("num_epochs", None),
    ("workers_count", None),
    ("shuffling_queue_capacity", None),
]
PETASTORM_TORCH_ORDER = [
    ("batch_size", 32),
    ("num_epochs", None),
    ("workers_count", None),
    ("shuffling_queue_capacity", 0),
    ("data_loader_fn", None),
]


@pytest.mark.parametrize(
    ("method", "order"),
    [("make_tf_dataset", PETASTORM_TF_ORDER), ("make_torch_dataloader", PETASTORM_TORCH_ORDER)],
)
def test_loaders_take_petastorms_positional_order_and_defaults(method: str, order: list) -> None:
    parameters = list(inspect.signature(getattr(SparkDatasetConverter, method)).parameters.values())
    positional = [(p.name, p.default) for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD][1:]  # after self
    assert positional == order
    assert parameters[-1].kind is inspect.Parameter.VAR_KEYWORD  # then the reader keywords, as Petastorm's


def test_float16_is_refused_in_petastorms_words(spark) -> None:
    with pytest.raises(ValueError, match=r"dtype float16 is not supported") as error:
        make_spark_converter(spark.range(3), dtype="float16")
    assert "dtype='float16' is not allowed: it must be None or one of ('float32', 'float64')" in str(error.value)


def test_parent_cache_dir_conf_is_petastorms_key_and_sparkfeeds_key_still_wins(spark, tmp_path, cache_root) -> None:
    assert SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF == "petastorm.spark.converter.parentCacheDirUrl"
    assert SparkDatasetConverter.PETASTORM_PARENT_CACHE_DIR_URL_CONF == SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF
    assert SparkDatasetConverter.CACHE_DIR_CONF == "sparkfeed.cacheDir"
    petastorms, ours = tmp_path / "petastorm-parent", spark.conf.get(SparkDatasetConverter.CACHE_DIR_CONF)
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, petastorms.as_uri())  # Petastorm's idiom
    try:
        both = make_spark_converter(spark.range(11))  # sparkfeed.cacheDir is set too, by the fixture: it wins
        assert Path(both.location.local_path).parent == cache_root
        spark.conf.unset(SparkDatasetConverter.CACHE_DIR_CONF)
        only_petastorms = make_spark_converter(spark.range(12))
        assert Path(only_petastorms.location.local_path).parent == petastorms
        with only_petastorms.make_numpy_iterator(batch_size=12, num_epochs=1) as batches:
            assert sorted(concat(batches)["id"].tolist()) == list(range(12))
        only_petastorms.delete()
    finally:
        spark.conf.set(SparkDatasetConverter.CACHE_DIR_CONF, ours)
        spark.conf.unset(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF)


def test_a_dataset_read_in_place_says_which_float64_columns_it_narrows(tmp_path, caplog) -> None:
    pq.write_table(
        pa.table({"x": [1.5], "v": [[1.0, 2.0]], "n": [1], "f": pa.array([1.0], pa.float32())}), tmp_path / "a.parquet"
    )
    with caplog.at_level(logging.INFO, logger="sparkfeed"):
        make_spark_converter(str(tmp_path))
        make_spark_converter(str(tmp_path), dtype=None)
        make_spark_converter(str(tmp_path), dtype="float64")
    notes = [r.getMessage() for r in caplog.records if "float64 columns" in r.getMessage()]
    assert notes == [
        "reading the float64 columns ['x', 'v'] as float32 (dtype='float32'); pass dtype=None to keep them"
    ]


def test_a_stream_and_a_stopped_sessions_dataframe_are_refused_saying_what_to_do(spark, monkeypatch) -> None:
    stream = spark.readStream.format("rate").load()
    with pytest.raises(ValueError, match=r"a streaming DataFrame .* cannot be converted: write it out"):
        make_spark_converter(stream)
    df = spark.range(3)
    monkeypatch.setattr(spark.sparkContext, "_jsc", None)  # what spark.stop() leaves; pyspark raised a bare assert
    with pytest.raises(RuntimeError, match=r"the DataFrame's Spark session was stopped \(spark.stop\(\)\)"):
        make_spark_converter(df)
