"""Helpers shared by every benchmark process, in both virtual environments.

This module must import neither sparkfeed nor anything newer than the Petastorm anchor venv has
(Python 3.11, numpy 1.26, pyspark 3.5): ``petastorm_side.py`` imports it too. Heavy modules
(pyspark, PIL, psutil) are imported inside the functions that need them.
"""

from __future__ import annotations

import io
import json
import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DATA_DIR = BENCH_DIR / "data"
SOURCE_DIR = DATA_DIR / "source"
"""Source datasets, generated once by datasets.py and kept between runs."""
CACHE_DIR = DATA_DIR / "cache"
"""Converter caches; wiped at the start of every run (they belong to the processes that made them)."""
TMP_DIR = DATA_DIR / "tmp"
"""Scratch space of the materialization case."""
RESULTS_DIR = BENCH_DIR / "results"

JSON_MARKER = "BENCH_JSON "
"""Prefix of the one line a side process prints for the orchestrator; Spark may print other lines."""

IMAGE_SHAPE = (64, 64, 3)
SHUFFLE_BUFFER = 10_000
MAX_RUNS = 30


def source_path(name: str) -> Path:
    """Directory of a source dataset (Parquet written by Spark)."""
    return SOURCE_DIR / name


def spark_session(app: str, **conf: str) -> Any:
    """A local[2] session configured the same way in Spark 4 and Spark 3.5, so that
    materialization times of the two converters are comparable.
    """
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master("local[2]")
        .appName(app)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "6g")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
    )
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def stop_spark(spark: Any) -> None:
    """Stops Spark and its JVM: a process that outlives its Spark work (a cache holder) should
    leave no idle JVM competing with the measured process for the two cores.
    """
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    spark.stop()
    process = getattr(gateway, "proc", None)
    if gateway is not None:
        gateway.shutdown()
        SparkContext._gateway = None
        SparkContext._jvm = None
    if process is not None:
        process.terminate()
        process.wait(timeout=60)


def emit(result: dict[str, Any]) -> None:
    """Prints the result line the orchestrator parses."""
    sys.stdout.write(JSON_MARKER + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()


def rss_bytes() -> int:
    """Current resident set size of this process."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def column_nbytes(value: Any) -> int:
    """Bytes of one decoded column of a batch: a NumPy array, a tensor, or a list of cells."""
    if hasattr(value, "nbytes") and not callable(value.nbytes):
        return int(value.nbytes)  # numpy
    if hasattr(value, "element_size"):
        return int(value.element_size() * value.nelement())  # torch
    if hasattr(value, "dtype") and hasattr(value.dtype, "size") and hasattr(value, "shape"):
        return int(value.dtype.size * math.prod(value.shape))  # tf.Tensor
    if isinstance(value, (list, tuple)):
        return sum(len(v) if isinstance(v, (bytes, str)) else column_nbytes(v) for v in value)
    return 0


def batch_rows(batch: dict[str, Any]) -> int:
    return len(next(iter(batch.values())))


def consume(batches: Iterable[dict[str, Any]], max_rows: int | None = None) -> tuple[int, int]:
    """Iterates a loader the way a training loop would, touching nothing but the batch count.

    Bytes are the decoded bytes per row of the first batch times the rows: every column here is
    fixed-width once decoded, and counting per batch would cost the fastest readers ~20% of
    their time.

    Returns:
        (rows, bytes) read; stops after ``max_rows`` when given.
    """
    rows = 0
    per_row = 0.0
    for batch in batches:
        n = batch_rows(batch)
        if not rows:
            per_row = sum(column_nbytes(v) for v in batch.values()) / max(n, 1)
        rows += n
        if max_rows is not None and rows >= max_rows:
            break
    return rows, int(rows * per_row)


def collect_ids(batches: Iterable[dict[str, Any]]) -> list[Any]:
    """The ``id`` column in epoch order, as a list of NumPy arrays (one per batch)."""
    import numpy as np

    out = []
    for batch in batches:
        ids = batch["id"]
        out.append(ids.numpy() if hasattr(ids, "numpy") else np.asarray(ids))
    return out


QUALITY_EPOCHS = 3
"""Epochs the shuffle quality is averaged over: one epoch's correlation is mostly the row-group draw."""


def _epoch_quality(id_chunks: list[Any]) -> dict[str, float]:
    import numpy as np

    ids = np.concatenate(id_chunks).astype(np.float64)
    n = len(ids)
    position = np.arange(n, dtype=np.float64)
    source_position = np.empty(n, dtype=np.float64)
    source_position[np.argsort(ids, kind="stable")] = position
    uniform_std = n / np.sqrt(12)
    spread = [np.std(source_position[start : start + len(chunk)]) / uniform_std for start, chunk in _starts(id_chunks)]
    return {
        "rows": n,
        "spearman": float(np.corrcoef(source_position, position)[0, 1]),
        "pearson": float(np.corrcoef(ids, position)[0, 1]),
        "mean_abs_displacement_over_n": float(np.mean(np.abs(source_position - position)) / n),
        "adjacent_kept": float(np.mean(np.diff(source_position) == 1)),
        "batch_spread": float(np.mean(spread)),
    }


def _starts(chunks: list[Any]) -> Iterator[tuple[int, Any]]:
    start = 0
    for chunk in chunks:
        yield start, chunk
        start += len(chunk)


def shuffle_quality(epochs: list[list[Any]]) -> dict[str, Any]:
    """How far each epoch's order is from the source order, averaged over epochs; numpy only.

    Each epoch is the ``id`` column batch by batch. The source is sorted by ``id``, so a row's
    source position is the rank of its id. For a uniformly random permutation: Spearman and
    Pearson ~ 0, mean |displacement| / N ~ 1/3, adjacent_kept ~ 0, batch_spread (the standard
    deviation of a batch's source positions over a uniform sample's) ~ 1. For no shuffle: 1, 1,
    0, 1, ~0. Batch spread is what SGD feels: how much of the dataset one batch mixes.
    """
    import numpy as np

    per_epoch = [_epoch_quality(chunks) for chunks in epochs]
    summary: dict[str, Any] = {"epochs": len(per_epoch), "rows": per_epoch[0]["rows"], "per_epoch": per_epoch}
    for key in ("spearman", "pearson"):
        summary[f"mean_abs_{key}"] = float(np.mean([abs(q[key]) for q in per_epoch]))
        summary[f"max_abs_{key}"] = float(np.max([abs(q[key]) for q in per_epoch]))
    for key in ("mean_abs_displacement_over_n", "adjacent_kept", "batch_spread"):
        summary[key] = float(np.mean([q[key] for q in per_epoch]))
    return summary


def measure(run: Callable[[], tuple[int, int]], repeats: int, min_time: float = 0.0) -> dict[str, Any]:
    """Warm-up once (page cache, imports, thread start-up), then at least ``repeats`` timed runs.

    Runs of a fast reader last ~0.1 s, where a scheduler hiccup is 20%: timed runs go on until
    they add up to ``min_time`` seconds too (at most MAX_RUNS), as timeit's autorange does.
    Returns medians (rows/s, MB/s with MB = 10^6 bytes) and every raw time.
    """
    started = time.perf_counter()
    warm_rows, _ = run()
    warmup_s = time.perf_counter() - started
    times: list[float] = []
    rows = nbytes = 0
    while len(times) < repeats or (sum(times) < min_time and len(times) < MAX_RUNS):
        started = time.perf_counter()
        rows, nbytes = run()
        times.append(time.perf_counter() - started)
    return {
        "rows": rows,
        "bytes": nbytes,
        "warmup_rows": warm_rows,
        "warmup_s": warmup_s,
        "times_s": times,
        "rows_per_s": statistics.median(rows / t for t in times),
        "mb_per_s": statistics.median(nbytes / t / 1e6 for t in times),
    }


def decode_png(data: bytes) -> Any:
    """A PNG cell as a (64, 64, 3) uint8 array; the same function on both sides."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def versions() -> dict[str, str]:
    """Versions of the libraries under test in this interpreter."""
    import platform

    out = {"python": platform.python_version()}
    for name in ("pyspark", "pyarrow", "numpy", "pandas", "torch", "PIL", "petastorm", "sparkfeed"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        out[name] = getattr(module, "__version__", "?")
    from importlib import metadata

    for dist in ("tensorflow-cpu", "tensorflow"):  # from its metadata: importing it takes seconds
        try:
            out["tensorflow"] = metadata.version(dist)
            break
        except metadata.PackageNotFoundError:
            continue
    return out
