"""Run by test_remote_s3.py in a process of its own: a driver on a Spark standalone cluster, its cache on S3.

The driver's environment names the S3 endpoint and credentials from its start, as a user's
shell would; the executors' environment is the worker's plus ``spark.executorEnv.*``, which
gives them the credentials only. Their tasks read shards of the cache through the pickled
converter: first without the endpoint, then with it added to the tasks' environment. Prints
one JSON line of what they saw.
"""

from __future__ import annotations

import json
import os
import sys

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from sparkfeed import make_spark_converter

SHARDS = 4


def main(master: str, cache_dir: str) -> None:
    builder = (
        SparkSession.builder.master(master)
        .appName("sparkfeed-remote-s3-test")
        .config("spark.executor.memory", "1g")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
    )
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        builder = builder.config(f"spark.executorEnv.{name}", os.environ[name])
    spark = builder.getOrCreate()
    converter = make_spark_converter(spark.range(2_000, numPartitions=4), cache_dir=cache_dir)

    def read(frames):  # in an executor's Python worker: the converter arrives pickled in the closure
        for frame in frames:
            for shard in frame["shard"]:
                try:
                    with converter.make_numpy_iterator(
                        batch_size=100, num_epochs=1, cur_shard=int(shard), shard_count=SHARDS, shard_policy="exact"
                    ) as batches:
                        ids = [int(i) for batch in batches for i in batch["id"]]
                    error = ""
                except Exception as caught:  # noqa: BLE001 - reported to the driver
                    ids, error = [], f"{type(caught).__name__}: {caught}"
                yield pd.DataFrame(
                    {
                        "shard": [int(shard)],
                        "ids": [json.dumps(ids)],
                        "error": [error],
                        "endpoint": [os.environ.get("AWS_ENDPOINT_URL_S3", "")],
                    }
                )

    def run() -> list[dict[str, object]]:
        tasks = spark.range(SHARDS, numPartitions=SHARDS).select(F.col("id").alias("shard"))
        rows = tasks.mapInPandas(read, "shard long, ids string, error string, endpoint string").collect()
        return [{**row.asDict(), "ids": json.loads(row.ids)} for row in sorted(rows)]

    without = run()
    spark.sparkContext.environment["AWS_ENDPOINT_URL_S3"] = os.environ["AWS_ENDPOINT_URL_S3"]
    given = run()
    converter.delete()
    spark.stop()
    print(json.dumps({"driver_pid": os.getpid(), "without": without, "given": given}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
