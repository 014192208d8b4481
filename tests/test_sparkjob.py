"""The conversion's Spark job: Ctrl-C cancels it (real processes), its progress bar and its log."""

from __future__ import annotations

import logging
import signal

import pytest
from pyspark.sql import functions as F

from sparkfeed import make_spark_converter
from sparkfeed.cache import MARKER_NAME

from helpers import JobProcess, wait_until


@pytest.mark.slow
@pytest.mark.parametrize("arrays", ["1", "0"], ids=["task-writer", "spark-writer"])
def test_ctrl_c_mid_conversion_cancels_the_job_raises_keyboard_interrupt_and_leaves_nothing(tmp_path, arrays) -> None:
    parent, probe = tmp_path / "caches", tmp_path / "probe"
    parent.mkdir()
    probe.mkdir()
    with JobProcess("lifecycle_job.py", "convert", str(parent), arrays, str(probe)) as job:
        job.line()  # the Spark session is up; the conversion starts now
        wait_until(lambda: any(parent.glob(f"sparkfeed-*/{MARKER_NAME}")), what="the cache directory")
        wait_until(lambda: any(probe.iterdir()), what="the first task of the write")
        job.signal(signal.SIGINT)
        seen = job.line()
        assert job.wait() == 0, job.errors()
        assert "Py4J" not in job.errors()
    assert seen == {"raised": "KeyboardInterrupt", "active_jobs": [], "left": []}
    assert len(list(probe.iterdir())) < 8  # interrupted: not every partition ran


def test_progress_shows_tasks_rows_and_files_of_each_writer(spark, tmp_path, capfd) -> None:
    df = spark.range(1000, numPartitions=4).withColumn("a", F.array("id", "id"))
    make_spark_converter(df, cache_dir=str(tmp_path), progress=True)
    shown = capfd.readouterr().err
    assert "sparkfeed: writing the cache" in shown and "4/4" in shown
    assert "rows=1,000" in shown and "files=4" in shown
    make_spark_converter(df.drop("a"), cache_dir=str(tmp_path), progress=True)  # Spark's own writer
    shown = capfd.readouterr().err
    assert "4/4" in shown and "rows=1,000" in shown and "MiB" in shown


def test_no_progress_by_default_and_a_bad_value_is_refused(spark, tmp_path, capfd) -> None:
    make_spark_converter(spark.range(10), cache_dir=str(tmp_path))
    assert "sparkfeed" not in capfd.readouterr().err
    with pytest.raises(ValueError, match=r"progress='yes' is not allowed: it must be a bool"):
        make_spark_converter(spark.range(10), cache_dir=str(tmp_path), progress="yes")


def test_conversion_and_reuse_are_logged(spark, tmp_path, caplog) -> None:
    df = spark.range(10).withColumn("x", F.lit(1.0))
    with caplog.at_level(logging.INFO, logger="sparkfeed"):
        converter = make_spark_converter(df, cache_dir=str(tmp_path))
        again = make_spark_converter(df, cache_dir=str(tmp_path))
    assert again.cache_dir_url == converter.cache_dir_url
    messages = [record.getMessage() for record in caplog.records if record.name.startswith("sparkfeed")]
    assert any(m.startswith(f"writing the DataFrame into a new cache {converter.cache_dir_url}") for m in messages)
    assert any(m.startswith(f"cache {converter.cache_dir_url} complete: 10 rows") for m in messages)
    assert any(m.startswith(f"reusing cache {converter.cache_dir_url}") for m in messages)
