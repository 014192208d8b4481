"""stats(): whether the loop waited on its input, counted exactly, and the verdict logged per epoch."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
from pyspark.sql import functions as F

from sparkfeed import make_spark_converter
from sparkfeed.reader.stats import Counters, bytes_per_row, verdict


@pytest.fixture(scope="module")
def converter(spark):
    """1,000 rows (id long, x float32, pair of 2 int64, name string) in 4 row groups."""
    df = spark.range(1000, numPartitions=4).select(
        "id",
        F.col("id").cast("float").alias("x"),
        F.array("id", "id").alias("pair"),
        F.col("id").cast("string").alias("name"),
    )
    return make_spark_converter(df)


def _slow(frame):
    time.sleep(0.05)  # a slow transform: the reader, not the loop, is the bottleneck
    return frame


def test_counts_are_exact_and_bytes_count_fixed_size_arrays_only(converter) -> None:
    with converter.make_numpy_iterator(batch_size=64, num_epochs=2) as batches:
        for _ in batches:
            pass
        stats = batches.stats()
    assert (stats["batches"], stats["rows"]) == (2 * 16, 2000)  # 15 full batches and one of 40, twice
    assert stats["bytes"] == 2000 * (8 + 4 + 16)  # id, x, pair; the string column is not counted
    assert stats["seconds"] == pytest.approx(stats["wait_seconds"] + stats["step_seconds"])
    assert stats["rows_per_second"] > 0 and 0 <= stats["input_bound"] <= 1 and stats["busy_seconds"] > 0


def test_a_slow_step_is_not_input_bound_and_says_so_after_each_epoch(converter, caplog) -> None:
    with (
        caplog.at_level(logging.INFO, logger="sparkfeed"),
        converter.make_torch_dataloader(batch_size=250, num_epochs=2) as loader,
    ):
        for _ in loader:
            time.sleep(0.05)  # the training step
        stats = loader.stats()
    assert stats["input_bound"] < 0.1 and stats["step_seconds"] >= 8 * 0.05
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 2 and all(": 4 batches, not input-bound: " in line for line in lines)


def test_a_slow_reader_is_input_bound_and_the_log_says_what_to_try(converter, caplog) -> None:
    with (
        caplog.at_level(logging.INFO, logger="sparkfeed"),
        converter.make_numpy_iterator(
            batch_size=250, num_epochs=1, workers_count=1, transform_fn=_slow, shuffle_row_groups=False
        ) as batches,
    ):
        assert sum(len(batch["id"]) for batch in batches) == 1000
        stats = batches.stats()
    assert stats["input_bound"] > 0.5 and stats["worker_utilization"] > 0.5
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 0")]
    assert "input-bound: " in line and "of step time waiting for data" in line
    assert "try workers_count=2" in line and "reader_pool_type='process'" in line


def _slow_first_file_only(frame):
    time.sleep(0.1)
    return frame[frame["id"] < 250]  # the rows of the other files are read, and dropped


def test_waiting_for_rows_that_a_transform_drops_at_an_epochs_end_counts_as_waiting(converter) -> None:
    """The loop's last ``next()`` of an epoch waits while the rest is read; without it the rates are inflated."""
    with converter.make_numpy_iterator(
        batch_size=250, num_epochs=1, workers_count=1, transform_fn=_slow_first_file_only, shuffle_row_groups=False
    ) as batches:
        started = time.perf_counter()
        assert sum(len(batch["id"]) for batch in batches) == 250  # the first file's rows come first
        elapsed = time.perf_counter() - started
        stats = batches.stats()
    assert stats["wait_seconds"] >= 4 * 0.1
    assert stats["seconds"] >= 0.8 * elapsed
    assert stats["rows_per_second"] <= 1.25 * 250 / elapsed


def test_an_epoch_left_early_still_counts(converter) -> None:
    with converter.make_numpy_iterator(batch_size=10, num_epochs=1) as batches:
        for number, _ in enumerate(batches, 1):
            if number == 7:
                break
        stats = batches.stats()
    assert (stats["batches"], stats["rows"]) == (7, 70)


def test_tf_counts_the_batches_its_user_receives(converter) -> None:
    context = converter.make_tf_dataset(batch_size=100, num_epochs=1)
    with context as dataset:
        assert sum(1 for _ in dataset) == 10
    stats = context.stats()
    assert (stats["batches"], stats["rows"]) == (10, 1000)  # not the reader's larger super-batches


def test_the_verdict_and_the_counters_arithmetic() -> None:
    counts = Counters(batches=10, rows=1000, bytes=8000, wait_seconds=3.0, step_seconds=1.0, busy_seconds=7.0)
    report = counts.report(workers=2)
    assert report["input_bound"] == 0.75 and report["worker_utilization"] == 7.0 / 8.0
    assert verdict(report, 2, "thread").startswith("input-bound: 75% of step time waiting for data (250 rows/s")
    assert "try workers_count=4" in verdict(report, 2, "thread")
    idle = Counters(batches=10, rows=1000, wait_seconds=3.0, step_seconds=1.0, busy_seconds=1.0).report(workers=2)
    assert "try a larger prefetch" in verdict(idle, 2, "thread")
    assert "reader_pool_type='thread'" in verdict(report, 1, "dummy")
    fast = Counters(batches=10, rows=1000, wait_seconds=0.01, step_seconds=1.0).report(workers=2)
    assert verdict(fast, 2, "thread").startswith("not input-bound: 1% of step time")
    assert bytes_per_row({"a": np.zeros((4, 3), np.float32), "s": np.array(["a"] * 4, dtype=object)}, 4) == 12
