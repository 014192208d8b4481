"""Run by the lifecycle tests in a process of their own, which they then signal or kill.

Modes (first argument):
- ``convert PARENT ARRAYS PROBE [keep]``: converts a slow DataFrame (each partition touches a
  file in PROBE, then sleeps before its rows come) into PARENT, so that a signal lands
  mid-write; ARRAYS ``1`` gives it an array column (sparkfeed's task writer), ``0`` none
  (Spark's writer); ``keep`` converts with ``keep=True``. On KeyboardInterrupt it prints what
  it saw: the exception, Spark's active jobs, what is left.
- ``converted PARENT HANDLER``: converts a small DataFrame into PARENT, prints the cache URL,
  then waits to be signalled. HANDLER: ``default`` (SIGTERM as it comes), ``user`` (a handler
  installed before sparkfeed, that writes a file and exits with 3), ``ignore`` (SIGTERM ignored),
  ``thread`` (a first cache converted in another thread, where no handler can be installed),
  ``thread-only`` (the only cache converted in another thread, and read from the main one).
- ``read CACHE``: opens CACHE by its URL, reads one epoch, prints its rows, then waits to be
  killed (a job still reading it, as far as anyone can tell).
- ``pool CACHE``: iterates a loader on CACHE with worker processes, prints their pids and its
  shared-memory directory, then waits to be killed.

Each mode prints JSON lines, flushed, which the test reads as they come.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path


def say(**values: object) -> None:
    print(json.dumps(values), flush=True)


def session():  # type: ignore[no-untyped-def]
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("OFF")
    return spark


def convert(parent: str, arrays: str, probe: str, keep: str = "") -> None:
    import pandas as pd
    from pyspark.sql import functions as F

    from sparkfeed import make_spark_converter

    spark = session()

    def slow(frames):  # type: ignore[no-untyped-def]
        for frame in frames:
            Path(probe, f"task-{os.getpid()}-{time.monotonic_ns()}").touch()  # the job runs
            time.sleep(3)
            yield pd.DataFrame({"id": frame["id"]})

    df = spark.range(0, 64, numPartitions=8).mapInPandas(slow, "id long")
    if arrays == "1":
        df = df.withColumn("a", F.array("id", "id"))
    say(started=True)
    try:
        make_spark_converter(df, cache_dir=parent, keep=keep == "keep")
    except KeyboardInterrupt:
        say(
            raised="KeyboardInterrupt",
            active_jobs=spark.sparkContext.statusTracker().getActiveJobsIds(),
            left=sorted(os.listdir(parent)),
        )
        return
    say(raised=None)


def converted(parent: str, handler: str) -> None:
    if handler == "user":

        def graceful(signum, frame):  # type: ignore[no-untyped-def]
            Path(parent, "user-handler-ran").write_text("yes")
            sys.exit(3)

        signal.signal(signal.SIGTERM, graceful)
    elif handler == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    from sparkfeed import make_spark_converter

    spark = session()
    if handler == "thread":
        import threading

        first = threading.Thread(target=lambda: make_spark_converter(spark.range(50), cache_dir=parent))
        first.start()
        first.join()
    if handler == "thread-only":
        import threading

        made = []
        only = threading.Thread(target=lambda: made.append(make_spark_converter(spark.range(100), cache_dir=parent)))
        only.start()
        only.join()
        converter = made[0]
        with converter.make_numpy_iterator(batch_size=10, num_epochs=1) as batches:
            next(iter(batches))  # the training loop, in the main thread
    else:
        converter = make_spark_converter(spark.range(100), cache_dir=parent)
    say(cache=converter.cache_dir_url, pid=os.getpid())
    time.sleep(300)


def read(cache: str) -> None:
    from sparkfeed import make_spark_converter

    converter = make_spark_converter(cache)
    with converter.make_numpy_iterator(batch_size=10, num_epochs=1) as batches:
        rows = sum(len(batch["id"]) for batch in batches)
    say(rows=rows, pid=os.getpid())
    time.sleep(300)


def pool(cache: str) -> None:
    from sparkfeed import make_spark_converter

    converter = make_spark_converter(cache)
    loader = converter.make_numpy_iterator(batch_size=10, num_epochs=None, workers_count=2, reader_pool_type="process")
    batches = iter(loader)
    next(batches)
    next(batches)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    mine = [n for n in os.listdir(shm)] if shm else []
    say(
        workers=sorted(child.pid for child in multiprocessing.active_children()),
        exchanges=[os.path.join(shm, n) for n in mine if n.startswith(f"sparkfeed-exchange-{os.getpid()}-")],
    )
    time.sleep(300)


if __name__ == "__main__":
    {"convert": convert, "converted": converted, "read": read, "pool": pool}[sys.argv[1]](*sys.argv[2:])
