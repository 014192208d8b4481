"""Run by test_converter.py in a process of its own: a driver on a Spark standalone cluster.

The test starts the master and a worker (real JVMs on 127.0.0.1); this driver converts a
DataFrame, then has the cluster's executors read it: each task unpickles the converter and
reads its exact shard, as distributed inference does. Prints one JSON line of what it saw.
"""

from __future__ import annotations

import json
import os
import sys

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from sparkfeed import make_spark_converter


def main(master: str, cache_dir: str) -> None:
    spark = (
        SparkSession.builder.master(master)
        .appName("sparkfeed-standalone-test")
        .config("spark.executor.memory", "1g")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    df = spark.range(10_000, numPartitions=4).select("id", (F.col("id") * 0.5).alias("x"))
    converter = make_spark_converter(df, cache_dir=cache_dir)
    shards = 4

    def infer(frames):  # in an executor's Python worker: the converter arrives pickled in the closure
        for frame in frames:
            for shard in frame["shard"]:
                with converter.make_numpy_iterator(
                    batch_size=256, num_epochs=1, cur_shard=int(shard), shard_count=shards, shard_policy="exact"
                ) as batches:
                    parts = [(b["id"], b["x"]) for b in batches]
                yield pd.DataFrame(
                    {
                        "shard": [int(shard)],
                        "rows": [sum(len(ids) for ids, _ in parts)],
                        "id_sum": [int(sum(int(ids.sum()) for ids, _ in parts))],
                        "x_ok": [all(bool((x == ids * 0.5).all()) for ids, x in parts)],
                        "pid": [os.getpid()],
                    }
                )

    tasks = spark.range(shards, numPartitions=shards).select(F.col("id").alias("shard"))
    rows = tasks.mapInPandas(infer, "shard long, rows long, id_sum long, x_ok boolean, pid long").collect()
    out = {
        "driver_pid": os.getpid(),
        "executors": sorted({row.pid for row in rows}),
        "shards": sorted((row.shard, row.rows, row.id_sum, row.x_ok) for row in rows),
    }
    converter.delete()
    spark.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
