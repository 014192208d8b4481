"""Run by test_converter.py in a process of its own: the converter under a Spark Connect session.

A Connect session has no JVM in the Python process (``df._jdf`` and ``sparkContext`` do not
exist), which is where Petastorm's converter fails. Prints one JSON line of what it saw.
Arguments: the cache directory URL, and optionally the storage options (JSON) to reach it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from sparkfeed import make_spark_converter


def main(cache_dir: str, storage_options: dict | None = None) -> None:
    # Spark's own switch for parallel test runs (SPARK-42272): the local Connect server binds an
    # ephemeral port, which the client asks it for, instead of 15002 that another run may hold.
    os.environ["SPARK_TESTING"] = "1"
    spark = (
        SparkSession.builder.remote("local[2]")
        .config("spark.sql.session.timeZone", "UTC")
        .config("sparkfeed.cacheDir", cache_dir)
        .getOrCreate()
    )
    df = spark.range(1000, numPartitions=4).select(
        "id", (F.col("id") / 4).alias("x"), F.array(F.col("id"), -F.col("id")).alias("pair")
    )
    shown = io.StringIO()
    with contextlib.redirect_stderr(shown):  # the progress bar, drawn from Connect's progress messages
        converter = make_spark_converter(df, storage_options=storage_options, progress=True)
    with converter.make_numpy_iterator(batch_size=100, num_epochs=1, shuffle_row_groups=False) as batches:
        read = list(batches)
    ids = np.concatenate([b["id"] for b in read])
    pairs = np.concatenate([b["pair"] for b in read])

    def count_shard(frames):  # runs in a Spark task: the pickled converter reads one shard there
        for frame in frames:
            for shard in frame["shard"]:
                with converter.make_numpy_iterator(
                    batch_size=64, num_epochs=1, cur_shard=int(shard), shard_count=4, shard_policy="exact"
                ) as shard_batches:
                    yield pd.DataFrame({"shard": [shard], "ids": [int(sum(b["id"].sum() for b in shard_batches))]})

    shards = spark.range(4, numPartitions=4).select(F.col("id").alias("shard"))
    per_shard = shards.mapInPandas(count_shard, "shard long, ids long").collect()
    again = make_spark_converter(df, storage_options=storage_options)
    out = {
        "rows": len(converter),
        "cache_dir_url": converter.cache_dir_url,
        "ids_sorted": bool((np.sort(ids) == np.arange(1000)).all()),
        "pairs_match": bool((pairs[:, 0] == ids).all() and (pairs[:, 1] == -ids).all()),
        "shard_id_sums": sorted(int(row.ids) for row in per_shard),
        "reused": again.cache_dir_url == converter.cache_dir_url,
        "progress": shown.getvalue().replace("\r", "\n").strip().splitlines()[-1:],
    }
    converter.delete()
    spark.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else None)
