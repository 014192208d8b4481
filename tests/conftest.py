"""A real local Spark session for the whole test run, with its own cache directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from pyspark.sql import SparkSession

from helpers import free_port

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


@pytest.fixture(scope="session")
def standalone_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Spark standalone master and one 2-core worker, real JVMs on 127.0.0.1, stopped afterwards.

    Started the first time a test asks for it, and shared by every test that does (each starts
    its own driver, an application of its own on the cluster).
    """
    import pyspark

    home = Path(pyspark.__file__).parent
    logs = tmp_path_factory.mktemp("standalone")
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    url = f"spark://127.0.0.1:{free_port()}"
    port = url.rsplit(":", 1)[1]
    spark_class = str(home / "bin" / "spark-class")
    commands = {
        "master": [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", port],
        "worker": [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "2"],
    }
    commands["worker"] += ["--memory", "2g", url]
    processes = []
    try:
        for name, command in commands.items():
            log = logs / f"{name}.log"
            with open(log, "w") as out:
                processes.append(subprocess.Popen([*command, "--webui-port", "0"], env=env, stdout=out, stderr=out))
            ready = "I have been elected leader" if name == "master" else "Successfully registered with master"
            deadline = time.monotonic() + 90
            while ready not in log.read_text():
                assert time.monotonic() < deadline, f"the standalone {name} did not start:\n{log.read_text()[-3000:]}"
                assert processes[-1].poll() is None, f"the standalone {name} exited:\n{log.read_text()[-3000:]}"
                time.sleep(0.5)
        yield url
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
