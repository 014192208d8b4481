"""Run by test_spark_connect.py in a process of its own: which DataFrames a Spark Connect client takes as "the same".

A Connect client cannot hold the server's plans, so in-process reuse compares what the server
tells it: each plan's ``semanticHash``, the schema, and the source files. Prints one JSON line
of what it saw. Arguments: the server's ``sc://`` URL, and a scratch directory (the cache
directory and the source files go under it).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from sparkfeed import make_spark_converter

# Two long literals whose Java hashCode (the low 32 bits of v ^ v >>> 32) is 0 for both: Spark's
# semanticHash of plans that differ only in them is the same. Epoch milliseconds about 50 days
# apart can collide alike (a `ts_ms > T` filter).
COLLIDING = (4294967297, 8589934594)


def values(converter: Any, column: str) -> list[int]:
    """Every value of one column of a converter's cache, sorted."""
    with converter.make_numpy_iterator(batch_size=1000, num_epochs=1, shuffle_row_groups=False) as batches:
        return sorted(int(value) for batch in batches for value in batch[column])


def main(url: str, scratch: str) -> None:
    spark = SparkSession.builder.remote(url).getOrCreate()
    spark.conf.set("sparkfeed.cacheDir", Path(scratch, "caches").as_uri())
    out: dict[str, Any] = {}

    frames = [spark.range(3).select((F.col("id") + F.lit(value)).alias("y")) for value in COLLIDING]
    out["hashes_equal"] = frames[0].semanticHash() == frames[1].semanticHash()
    colliding = [make_spark_converter(frame, dtype=None) for frame in frames]
    out["colliding_rows"] = [values(converter, "y") for converter in colliding]
    out["colliding_one_cache"] = colliding[0].cache_dir_url == colliding[1].cache_dir_url
    again = make_spark_converter(spark.range(3).select((F.col("id") + F.lit(COLLIDING[0])).alias("y")), dtype=None)
    out["rebuilt_reused"] = again.cache_dir_url == colliding[0].cache_dir_url

    # A source the client cannot look at itself: Hadoop's viewfs, mounted on a directory here, as
    # an object store's or a remote server's files are. Rewritten in place under its name, which
    # holds what Hadoop reads as a glob and what a URL percent-encodes.
    source = Path(scratch, "source")
    source.mkdir()
    spark.conf.set("fs.viewfs.mounttable.sparkfeed.link./data", source.as_uri())
    name = "part [0] {a}*.parquet"
    pq.write_table(pa.table({"x": [1, 2, 3]}), source / name)
    first = make_spark_converter(spark.read.parquet("viewfs://sparkfeed/data"))
    unchanged = make_spark_converter(spark.read.parquet("viewfs://sparkfeed/data"))
    time.sleep(0.01)  # a later modification time too, as any rewrite
    pq.write_table(pa.table({"x": [7, 8, 9, 10]}), source / name)
    rewritten = make_spark_converter(spark.read.parquet("viewfs://sparkfeed/data"))
    out["viewfs_unchanged_reused"] = unchanged.cache_dir_url == first.cache_dir_url
    out["viewfs_rows"] = [values(first, "x"), values(rewritten, "x")]
    out["viewfs_one_cache"] = rewritten.cache_dir_url == first.cache_dir_url
    spark.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
