"""Run by test_reuse.py in a process of its own: converts a Parquet source with reuse="auto".

Arguments: the source directory, the caches' parent, ``keep`` or ``no-keep``, and optionally
``stay`` (then it waits to be killed, as a long training job would still be reading) or
``delete`` (then it calls ``converter.delete()``). Prints one JSON line: the cache's URL, its
rows and their id sum, the seconds make_spark_converter took, and what ``delete()`` warned.

Or ``clean HOOK FLAGS ARGS...``: ``sparkfeed cache clean ARGS`` paused at one step (see :func:`clean`).
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
    # The tests' own session's time zone: a test may reuse in its process what a job kept.
    builder = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
    spark = builder.config("spark.sql.session.timeZone", "UTC").getOrCreate()
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


def clean(hook: str, flags: str, *args: str) -> None:
    """``sparkfeed cache clean ARGS``, paused once where it calls ``sparkfeed.cache.<hook>``.

    Only a pause, the real function runs after it: the job writes ``flags/paused`` and waits for
    ``flags/go``, so a test can run a reuse at that point of a real removal.
    """
    import sparkfeed.cache
    from sparkfeed.cli import main as cli

    real = getattr(sparkfeed.cache, hook)

    def paused(*args: object, **kwargs: object) -> object:
        if not os.path.exists(os.path.join(flags, "paused")):
            open(os.path.join(flags, "paused"), "w").close()
            deadline = time.monotonic() + 240
            while not os.path.exists(os.path.join(flags, "go")):
                assert time.monotonic() < deadline, "not told to go on"
                time.sleep(0.05)
        return real(*args, **kwargs)

    setattr(sparkfeed.cache, hook, paused)
    cli(["cache", "clean", *args])


if __name__ == "__main__":
    if sys.argv[1] == "clean":
        clean(*sys.argv[2:])
    else:
        main(*sys.argv[1:])
