"""Run by test_spark_connect.py in a process of its own: the caller's Spark Connect tag cancels a conversion.

Under Spark Connect a tag (``spark.addTag``) belongs to the thread that added it; the
conversion's Spark job runs in a thread of sparkfeed's own. The caller tags its work, a
conversion of slow rows starts, and another thread cancels the tag as a scheduler's timeout
would. Prints one JSON line. Arguments: the server's ``sc://`` URL and the cache directory.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from sparkfeed import make_spark_converter

TAG = "the-callers-own-work"


def main(url: str, cache_dir: str) -> None:
    spark = SparkSession.builder.remote(url).getOrCreate()

    @F.udf("long")
    def slow(value: int) -> int:  # 8 rows of a second each, 2 at a time: the job runs 4 s at least
        time.sleep(1)
        return value

    df = spark.range(8, numPartitions=4).select(slow("id").alias("x"))
    spark.addTag(TAG)
    interrupted: list[str] = []
    finished = threading.Event()

    def cancel() -> None:  # until an operation of the tag is interrupted, or the conversion ends
        while not interrupted and not finished.is_set():
            interrupted.extend(spark.interruptTag(TAG))
            time.sleep(0.2)

    canceller = threading.Thread(target=cancel)
    canceller.start()
    out: dict[str, Any] = {}
    started = time.monotonic()
    try:
        converter = make_spark_converter(df, cache_dir=cache_dir)
        out["outcome"] = f"converted {len(converter)} rows"
    except Exception as error:  # noqa: BLE001 - what the caller sees is what the test checks
        out["outcome"] = f"{type(error).__name__}: {error}"
    finished.set()
    canceller.join()
    out["seconds"] = time.monotonic() - started
    out["interrupted"] = len(interrupted)
    out["tags_after"] = sorted(spark.getTags())
    out["left"] = sorted(os.listdir(cache_dir))
    spark.stop()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
