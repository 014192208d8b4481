"""The converter under Spark Connect: a real Connect server on 127.0.0.1, clients in processes of their own.

The server is Spark's own (``SparkConnectServer`` through ``spark-submit``, a JVM of its own),
started once for the module. Each client runs in a process of its own: a Connect session
switches pyspark's functions into Connect mode for the whole process, which the classic
session of the other tests' modules cannot share.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import free_port, run_job

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def connect_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Spark Connect server (local[2]) on 127.0.0.1 for this module's tests, stopped afterwards."""
    import pyspark

    home = Path(pyspark.__file__).parent
    log = tmp_path_factory.mktemp("connect-server") / "server.log"
    port = free_port()
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    settings = {
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
        "spark.ui.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": "2",
    }
    command = [str(home / "bin" / "spark-submit"), "--master", "local[2]"]
    command += [part for key, value in settings.items() for part in ("--conf", f"{key}={value}")]
    command += ["--class", "org.apache.spark.sql.connect.service.SparkConnectServer"]
    with open(log, "w") as out:
        # A session of its own: the JVM and the Python workers it starts are stopped together.
        server = subprocess.Popen(command, env=env, stdout=out, stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Spark Connect server started at" not in log.read_text():
            assert server.poll() is None, f"the Connect server exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the Connect server did not start:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield f"sc://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture(scope="module")
def identity_seen(connect_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What one client saw converting DataFrames whose hashes the server cannot tell apart, or files it cannot see."""
    scratch = tmp_path_factory.mktemp("connect-identity")
    return run_job("spark_connect_identity_job.py", connect_url, str(scratch), cwd=scratch)


def test_connect_plans_of_one_hash_get_their_own_rows(identity_seen: dict) -> None:
    # semanticHash is 32 bits of the canonicalized plan: these two plans share it, and the
    # second DataFrame was served the first one's cache (its rows off by 2**32 + 1, in silence).
    assert identity_seen["hashes_equal"]
    assert identity_seen["colliding_rows"] == [
        [4294967297, 4294967298, 4294967299],
        [8589934594, 8589934595, 8589934596],
    ]
    assert not identity_seen["colliding_one_cache"]
    assert identity_seen["rebuilt_reused"]  # the same DataFrame, built again, still gets its cache back


def test_connect_source_rewritten_in_place_is_converted_again(identity_seen: dict) -> None:
    # viewfs:// files, which the client cannot stat (as an object store's or a remote server's
    # files): their sizes and times were unknown, so a rewrite under the same name kept the old cache.
    assert identity_seen["viewfs_rows"] == [[1, 2, 3], [7, 8, 9, 10]]
    assert not identity_seen["viewfs_one_cache"]
    assert identity_seen["viewfs_unchanged_reused"]  # the server's listing: unchanged files are still reused


def _private_mount_prefix() -> list[str] | None:
    """``unshare`` arguments that give a command a mount namespace of its own, or None where it is not allowed."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for flags in (["--mount", "--propagation", "private"], ["--user", "--map-root-user", "--mount"]):
        probe = subprocess.run([unshare, *flags, "true"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [unshare, *flags]
    return None


def test_connect_server_that_does_not_see_the_cache_dir_is_refused_before_writing(
    connect_url: str, tmp_path: Path
) -> None:
    prefix = _private_mount_prefix()
    if prefix is None:
        pytest.skip("no mount namespace here (unshare is missing or not permitted)")
    shared = tmp_path / "caches"  # the server's view; the client sees a tmpfs mounted over it
    shared.mkdir()
    script = 'mount -t tmpfs sparkfeed "$1" && exec "$2" "$3" "$4" "$1"'
    job = [sys.executable, str(HERE / "spark_connect_split_job.py"), connect_url]
    done = subprocess.run(
        [*prefix, "sh", "-c", script, "sh", str(shared), *job],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    for writer in ("plain", "arrays"):  # Spark's writer, and the tasks' pyarrow writer
        assert seen[writer].startswith("ValueError: the Spark Connect server does not see the cache directory")
        assert "cache_dir='s3://bucket/sparkfeed'" in seen[writer]
    assert seen["left_here"] == "[]"  # the refused caches were removed on the client's side
    # Spark's writer had written a whole cache on the server's side, under the same name, which
    # nobody removed; now nothing runs there.
    assert list(shared.iterdir()) == []


def test_connect_callers_tag_cancels_the_conversion(connect_url: str, tmp_path: Path) -> None:
    # The conversion's job ran in a thread without the caller's tags: interruptTag found nothing
    # of it to cancel, and the conversion ran to its end.
    cache = tmp_path / "caches"
    seen = run_job("spark_connect_tags_job.py", connect_url, str(cache), cwd=tmp_path)
    assert seen["interrupted"] == 1
    assert "OPERATION_CANCELED" in seen["outcome"]
    assert seen["tags_after"] == ["the-callers-own-work"]  # sparkfeed's own tag is gone, the caller's stays
    assert seen["left"] == []  # the cancelled cache was removed
