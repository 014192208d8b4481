"""Run by test_reuse.py in a process of its own: converts a Parquet source with reuse="auto".

Arguments: the source directory, the caches' parent, ``keep`` or ``no-keep``, and optionally
``stay`` (then it waits to be killed, as a long training job would still be reading) or
``delete`` (then it calls ``converter.delete()``). Prints one JSON line: the cache's URL, its
rows and their id sum, the seconds make_spark_converter took, and what ``delete()`` warned.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from sparkfeed import make_spark_converter


def main(source: str, parent: str, keep: str, stay: str = "") -> None:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    spark.sparkContext.setLogLevel("OFF")
    df = spark.read.parquet(source).filter("id % 2 = 0").withColumn("twice", F.col("id") * 2)
    started = time.perf_counter()
    converter = make_spark_converter(df, cache_dir=parent, reuse="auto", keep=keep == "keep")
    seconds = time.perf_counter() - started
    with converter.make_numpy_iterator(batch_size=1000, num_epochs=1) as batches:
        ids = [int(i) for batch in batches for i in batch["id"]]
    warned = []
    if stay == "delete":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            converter.delete()
        warned = [str(w.message) for w in caught]
    seen = {"url": converter.cache_dir_url, "rows": len(ids), "id_sum": sum(ids), "seconds": seconds, "warned": warned}
    print(json.dumps(seen))
    sys.stdout.flush()
    while stay == "stay":
        time.sleep(1)


if __name__ == "__main__":
    main(*sys.argv[1:])
