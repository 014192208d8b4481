"""Source datasets of the benchmark, generated once with Spark 4 into benchmarks/data/source/.

Both converters read these with their own Spark (4.x here, 3.5 in the Petastorm venv), so they
are plain Parquet written by Spark; vectors keep Spark's VectorUDT metadata so both versions
read the column back as a vector. A dataset is regenerated only when missing, incomplete or
its spec changed. Content is deterministic (seeded), so reruns compare the same bytes.

    .venv/bin/python benchmarks/datasets.py tabular vectors images onegroup big sequences sequences_fixed

``BENCH_SEQUENCE_ROWS`` sets the rows of the two sequence datasets (default 200,000), for a
quick check of the group on a small one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import IMAGE_SHAPE, source_path, spark_session

FLOAT_COLUMNS = 16
VECTOR_SIZE = 512
SEQUENCE_ROWS = int(os.environ.get("BENCH_SEQUENCE_ROWS", "200000"))
SEQUENCE_MEAN = 200
SEQUENCE_SIGMA = 1.0
SEQUENCE_MAX = 4096

SPECS: dict[str, dict[str, Any]] = {
    "tabular": {"rows": 2_000_000, "partitions": 4, "schema": "id long, f0..f15 float, label int", "version": 1},
    "vectors": {
        "rows": 200_000,
        "partitions": 4,
        "schema": f"id long, features VectorUDT({VECTOR_SIZE})",
        "version": 1,
    },
    "images": {"rows": 20_000, "partitions": 4, "schema": "id long, png binary (64x64 RGB), label int", "version": 1},
    "onegroup": {
        "rows": 3_000_000,
        "partitions": 1,
        "schema": "id long, f0..f3 float, label int; uncompressed, no dictionary, one row group",
        "version": 1,
    },
    "sequences": {
        "rows": SEQUENCE_ROWS,
        "partitions": 4,
        "schema": f"tokens array<int>: lengths log-normal (mean {SEQUENCE_MEAN}, sigma {SEQUENCE_SIGMA}) rounded, "
        f"clipped to [1, {SEQUENCE_MAX}]; token ids hashed in [0, 50000)",
        "version": 1,
    },
    "sequences_fixed": {
        "rows": SEQUENCE_ROWS,
        "partitions": 4,
        "schema": f"tokens array<int> of {SEQUENCE_MEAN}: the same number of tokens, every row one length",
        "version": 1,
    },
    "big": {
        "rows": 60_000_000,
        "partitions": 16,
        "schema": "id long, f0..f15 float, label int; uncompressed, no dictionary, 32 MiB row groups",
        "version": 1,
    },
}
"""What each dataset is; a change here regenerates it."""

SPEC_FILE = "_bench_spec.json"


def is_ready(name: str) -> bool:
    """True when the dataset was completely written with the current spec."""
    path = source_path(name)
    spec = path / SPEC_FILE
    return (path / "_SUCCESS").exists() and spec.exists() and json.loads(spec.read_text())["spec"] == SPECS[name]


def describe(name: str) -> dict[str, Any]:
    """The dataset's spec, file count and bytes on disk, as recorded when it was written."""
    return json.loads((source_path(name) / SPEC_FILE).read_text())


def _tabular(spark: Any, rows: int, partitions: int, floats: int = FLOAT_COLUMNS) -> Any:
    from pyspark.sql import functions as F

    return spark.range(0, rows, numPartitions=partitions).select(
        "id",
        *[F.rand(seed=i).cast("float").alias(f"f{i}") for i in range(floats)],
        (F.col("id") % 10).cast("int").alias("label"),
    )


def _vectors(spark: Any, rows: int, partitions: int) -> Any:
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    # Deterministic pseudo-random doubles in [0, 1): a hash per (row, element), no Python UDF.
    values = F.expr(
        f"transform(sequence(0, {VECTOR_SIZE - 1}), i -> cast(pmod(xxhash64(id, i), 1000003) AS double) / 1000003.0)"
    )
    return spark.range(0, rows, numPartitions=partitions).select("id", array_to_vector(values).alias("features"))


def _sequences(spark: Any, rows: int, partitions: int, fixed: bool = False) -> Any:
    """Token ids of heavy-tailed lengths, deterministic: a log-normal length per row by Box-Muller
    on two hashed uniforms, no Python UDF. ``fixed``: every row ``SEQUENCE_MEAN`` long instead."""
    from pyspark.sql import functions as F

    mu = math.log(SEQUENCE_MEAN) - SEQUENCE_SIGMA**2 / 2  # the log-normal's mean is SEQUENCE_MEAN
    uniform = "(pmod(xxhash64(id, {k}), 1000003) + 0.5) / 1000003.0"
    normal = f"sqrt(-2 * ln({uniform.format(k=1)})) * cos(2 * pi() * {uniform.format(k=2)})"
    length = (
        str(SEQUENCE_MEAN)
        if fixed
        else f"least({SEQUENCE_MAX}, greatest(1, cast(round(exp({mu} + {SEQUENCE_SIGMA} * {normal})) AS int)))"
    )
    tokens = F.expr(f"transform(sequence(1, {length}), i -> cast(pmod(xxhash64(id, i), 50000) AS int))")
    return spark.range(0, rows, numPartitions=partitions).select(tokens.alias("tokens"))


def _png_batches(frames: Any) -> Any:
    """Runs in Spark's Python workers: a seeded, smooth-plus-noise image per id, PNG-encoded (~10 KB,
    so that decoding is real work and the files are not trivially compressible).
    """
    import io

    import numpy as np
    import pandas as pd
    from PIL import Image

    height, width, channels = IMAGE_SHAPE
    y, x = np.mgrid[0:height, 0:width]
    for frame in frames:
        pngs = []
        for row_id in frame["id"]:
            rng = np.random.default_rng(int(row_id))
            a, b, c = rng.uniform(0.02, 0.3, 3)
            phase = rng.uniform(0, 6)
            base = np.stack([np.sin(x * a + y * b + k * c + phase) for k in range(channels)], -1) * 100 + 128
            pixels = np.clip(base + rng.normal(0, 12, IMAGE_SHAPE), 0, 255).astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            pngs.append(buffer.getvalue())
        yield pd.DataFrame({"id": frame["id"], "png": pngs, "label": (frame["id"] % 10).astype("int32")})


def _images(spark: Any, rows: int, partitions: int) -> Any:
    return spark.range(0, rows, numPartitions=partitions).mapInPandas(_png_batches, "id long, png binary, label int")


def generate(spark: Any, name: str) -> dict[str, Any]:
    """Writes one dataset and records its spec last, so a crash leaves it marked incomplete."""
    spec = SPECS[name]
    path = source_path(name)
    shutil.rmtree(path, ignore_errors=True)
    started = time.perf_counter()
    if name == "big":
        # The layout make_spark_converter itself writes (uncompressed, 32 MiB row groups), read
        # in place by the memory case; no dictionary, so the bytes on disk are the bytes decoded.
        writer = (
            _tabular(spark, spec["rows"], spec["partitions"])
            .write.option("compression", "none")
            .option("parquet.enable.dictionary", "false")
            .option("parquet.block.size", str(32 * 1024 * 1024))
        )
    elif name == "onegroup":
        # One file holding one row group of every row (~60 MiB): the batching case cuts it into
        # batches of 1, 32 and 1024 rows, read in place like the big dataset.
        writer = (
            _tabular(spark, spec["rows"], spec["partitions"], floats=4)
            .write.option("compression", "none")
            .option("parquet.enable.dictionary", "false")
            .option("parquet.block.size", str(1024 * 1024 * 1024))
        )
    else:
        build = {
            "tabular": _tabular,
            "vectors": _vectors,
            "images": _images,
            "sequences": _sequences,
            "sequences_fixed": lambda s, rows, parts: _sequences(s, rows, parts, fixed=True),
        }[name]
        writer = build(spark, spec["rows"], spec["partitions"]).write
    writer.parquet(str(path))
    files = sorted(path.glob("*.parquet"))
    record = {
        "name": name,
        "spec": spec,
        "files": len(files),
        "bytes_on_disk": sum(f.stat().st_size for f in files),
        "seconds": time.perf_counter() - started,
    }
    (path / SPEC_FILE).write_text(json.dumps(record, indent=1))
    return record


def ensure(names: list[str]) -> list[dict[str, Any]]:
    """Generates the datasets that are missing, in one Spark session; returns every record."""
    missing = [name for name in names if not is_ready(name)]
    if missing:
        spark = spark_session("sparkfeed-bench-datasets")
        try:
            for name in missing:
                print(f"generating {name} ({SPECS[name]['rows']:,} rows) ...", file=sys.stderr, flush=True)
                record = generate(spark, name)
                print(
                    f"  {name}: {record['bytes_on_disk'] / 2**20:,.0f} MiB in {record['files']} files, "
                    f"{record['seconds']:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            spark.stop()
    return [describe(name) for name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", choices=sorted(SPECS))
    args = parser.parse_args()
    print(json.dumps(ensure(args.names)))


if __name__ == "__main__":
    main()
