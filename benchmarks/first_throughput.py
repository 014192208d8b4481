"""First throughput figure (issue 2): 1M rows x 16 float32 columns, batch 1024, one epoch.

sparkfeed's NumPy iterator and torch loader next to raw pyarrow on the same cached files, in
one run, page cache warm. Prints median rows/s over repeats. The full harness (with Petastorm)
is benchmarks/ proper.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

import pyarrow.parquet as pq
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from sparkfeed import make_spark_converter

ROWS, COLUMNS, BATCH, REPEATS = 1_000_000, 16, 1024, 5


def timed(fn) -> float:
    rates = []
    for _ in range(REPEATS + 1):
        started = time.perf_counter()
        rows = fn()
        rates.append(rows / (time.perf_counter() - started))
    assert rows == ROWS, rows
    return statistics.median(rates[1:])  # first run is warm-up


def main() -> None:
    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    df = spark.range(ROWS).select(
        "id", *[F.rand(seed=i).cast("float").alias(f"f{i}") for i in range(COLUMNS)], (F.col("id") % 2).alias("label")
    )
    converter = make_spark_converter(df)
    files = [url.removeprefix("file://") for url in converter.file_urls]

    def sparkfeed_numpy() -> int:
        with converter.make_numpy_iterator(batch_size=BATCH, num_epochs=1, shuffle_row_groups=False) as it:
            return sum(len(b["id"]) for b in it)

    def sparkfeed_torch() -> int:
        with converter.make_torch_dataloader(batch_size=BATCH, num_epochs=1, shuffle_row_groups=False) as it:
            return sum(len(b["id"]) for b in it)

    def arrow_iter_batches() -> int:
        rows = 0
        for path in files:
            for batch in pq.ParquetFile(path).iter_batches(BATCH):
                columns = {name: batch.column(name).to_numpy() for name in batch.schema.names}
                rows += len(columns["id"])
        return rows

    def arrow_limit() -> int:
        rows = 0
        for path in files:
            parquet = pq.ParquetFile(path)
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group)
                columns = {name: table.column(name).to_numpy() for name in table.schema.names}
                n = len(columns["id"])
                for start in range(0, n, BATCH):
                    batch = {name: array[start : start + BATCH] for name, array in columns.items()}
                    rows += len(batch["id"])
        return rows

    results = {
        "pyarrow iter_batches(1024) -> NumPy": timed(arrow_iter_batches),
        "pyarrow row group -> NumPy -> slices (Arrow limit)": timed(arrow_limit),
        "sparkfeed make_numpy_iterator": timed(sparkfeed_numpy),
        "sparkfeed make_torch_dataloader": timed(sparkfeed_torch),
    }
    limit = results["pyarrow row group -> NumPy -> slices (Arrow limit)"]
    groups = sum(len(f.row_groups) for f in converter.manifest.files)
    print(f"{ROWS:,} rows x {COLUMNS} float32 (+ id, label), {len(files)} files, {groups} row groups, batch {BATCH}")
    print(f"| reader | rows/s (median of {REPEATS}) | vs Arrow limit |\n|---|---|---|")
    for name, rate in results.items():
        print(f"| {name} | {rate:,.0f} | {rate / limit:.0%} |")
    converter.delete()
    spark.stop()


if __name__ == "__main__":
    main()
