"""The converter object: its properties, and pickling to other processes and Spark executors."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
from pyspark.sql import functions as F

from sparkfeed import SparkDatasetConverter, make_spark_converter

from helpers import concat


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
    job = Path(__file__).with_name("spark_connect_job.py")
    done = subprocess.run(
        [sys.executable, str(job), cache.as_uri()], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["rows"] == 1000 and seen["ids_sorted"] and seen["pairs_match"] and seen["reused"]
    assert seen["cache_dir_url"].startswith(cache.as_uri() + "/")  # the cacheDir conf, read through Connect
    quarter = 250
    assert sum(seen["shard_id_sums"]) == sum(range(1000)) and len(seen["shard_id_sums"]) == 4
    assert seen["shard_id_sums"][0] == sum(range(quarter))  # exact shards: rows [0, 250) is the smallest sum
    assert not any(cache.iterdir())  # delete() removed the cache
