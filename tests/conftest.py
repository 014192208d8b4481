"""A real local Spark session for the whole test run, with its own cache directory."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from pyspark.sql import SparkSession

pytest_plugins = ["s3server"]  # the s3_server and s3_bucket fixtures: moto on 127.0.0.1

# Property tests: a bounded 'ci' profile by default (CI has 90 minutes on 2 cores), a 'deep' one for
# local runs: HYPOTHESIS_PROFILE=deep make pytest.
settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.register_profile(
    "deep", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sparkfeed-cache")


@pytest.fixture(scope="session")
def spark(cache_root: Path) -> Iterator[SparkSession]:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (
        SparkSession.builder.master("local[2]")
        .appName("sparkfeed-tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", "2g")
        .config("spark.sql.session.timeZone", "UTC")
        .config("sparkfeed.cacheDir", cache_root.as_uri())
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def killed_caches(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What SIGKILLed converters leave in a parent directory: one complete cache and one partial one.

    Real processes: one converts and waits, one is killed mid-write; each is killed with all it
    started (its JVM, Spark's Python workers), as the out-of-memory killer would.
    """
    from helpers import JobProcess, wait_until

    parent, probe = tmp_path_factory.mktemp("killed-caches"), tmp_path_factory.mktemp("probe")
    with JobProcess("lifecycle_job.py", "converted", str(parent), "default") as job:
        job.line()
        job.kill_group()
    with JobProcess("lifecycle_job.py", "convert", str(parent), "1", str(probe)) as job:
        job.line()
        wait_until(lambda: any(probe.iterdir()), what="the first task of the write")
        job.kill_group()
    return parent


@pytest.fixture
def leftovers(killed_caches: Path, tmp_path: Path) -> Path:
    """A copy of :func:`killed_caches` of the test's own, to list, collect and remove from."""
    copy = tmp_path / "caches"
    shutil.copytree(killed_caches, copy, symlinks=True)
    return copy
