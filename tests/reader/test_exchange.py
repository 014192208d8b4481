"""Shared-memory hand-over of chunks: every dtype round-trips, files are removed, arrays stay writable,
and what a killed reader leaves is swept."""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess

import numpy as np
import pytest
from pyspark.sql import functions as F

from sparkfeed import make_spark_converter
from sparkfeed.owner import Liveness, Owner, start_time
from sparkfeed.reader.exchange import PREFIX, Exchange, sweep

from helpers import JobProcess, wait_until


def test_every_kind_of_column_round_trips_in_order_and_writable() -> None:
    columns = {
        "id": np.arange(5, dtype=np.int64),
        "image": np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3),
        "name": np.array(["a", "bb", None, "d", "e"], dtype=object),
        "when": np.arange(5).astype("datetime64[us]"),
        "x": np.linspace(0, 1, 10, dtype=np.float32)[::2],  # not contiguous
        "empty": np.zeros((5, 0), dtype=np.float64),
    }
    exchange = Exchange()
    try:
        shared = exchange.export(columns)
        assert os.path.exists(shared.path)
        loaded = exchange.load(shared)
        assert not os.path.exists(shared.path)  # unlinked once mapped
        assert list(loaded) == list(columns)
        for name, array in columns.items():
            assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
            np.testing.assert_array_equal(loaded[name], array)
        loaded["image"][0, 0, 0, 0] = 200  # copy-on-write: writable, the worker's bytes untouched
        assert loaded["image"][0, 0, 0, 0] == 200
    finally:
        exchange.close()
    assert not os.path.exists(exchange.directory)


def test_loaded_chunks_hold_no_file_descriptor_and_are_unmapped_once_dropped() -> None:
    """A loop that keeps its batches keeps their chunks mapped: not a descriptor each (1024 is the usual limit)."""
    exchange = Exchange()

    def mapped() -> int:
        with open("/proc/self/maps") as maps:
            return sum(exchange.directory in line for line in maps)

    try:
        before = len(os.listdir("/proc/self/fd"))
        kept = [exchange.load(exchange.export({"x": np.full(1000, n, dtype=np.int64)})) for n in range(64)]
        assert len(os.listdir("/proc/self/fd")) <= before + 2
        assert mapped() == 64
        kept[5]["x"][0] = -1  # copy-on-write, as ever
        assert [int(chunk["x"][1]) for chunk in kept] == list(range(64)) and kept[5]["x"][0] == -1
        del kept
        gc.collect()
        assert mapped() == 0  # each mapping goes with the last array cut from it
    finally:
        exchange.close()


def test_close_removes_chunks_never_loaded() -> None:
    exchange = Exchange()
    shared = [exchange.export({"x": np.ones(10)}) for _ in range(3)]
    exchange.close()
    assert not any(os.path.exists(s.path) for s in shared)


def test_a_chunk_of_objects_only_needs_no_file() -> None:
    exchange = Exchange()
    shared = exchange.export({"s": np.array(["x"], dtype=object)})
    assert shared.path is None
    assert exchange.load(shared)["s"].tolist() == ["x"]
    exchange.close()


def test_each_directory_names_its_reader_process_and_a_sweep_keeps_live_and_foreign_ones(tmp_path) -> None:
    exchange = Exchange()
    try:
        me = Owner.current()
        assert os.path.basename(exchange.directory).startswith(f"{PREFIX}{me.pid}-{int(me.started or 0)}-")
        ended = subprocess.Popen(["true"])
        ended.wait()
        dead = tmp_path / f"{PREFIX}{ended.pid}-12345-abc"  # a reader process that is gone
        reused = tmp_path / f"{PREFIX}{me.pid}-{int(me.started or 0) - 1}-abc"  # this pid, another start: gone too
        live = tmp_path / os.path.basename(exchange.directory)
        other = tmp_path / f"{PREFIX}old-style"  # no owner in the name: never touched
        for path in (dead, reused, live, other):
            path.mkdir()
            (path / "chunk").write_bytes(b"x")
        (tmp_path / f"{PREFIX}{ended.pid}-1-file").write_text("a file, not a directory")
        assert sorted(sweep(str(tmp_path), dry_run=True)) == sorted([str(dead), str(reused)])
        assert dead.exists()
        assert sorted(sweep(str(tmp_path))) == sorted([str(dead), str(reused)])
        assert not dead.exists() and not reused.exists() and live.exists() and other.exists()
    finally:
        exchange.close()


def test_a_directory_from_another_pid_namespace_is_left_alone_though_its_pid_is_gone_here(tmp_path) -> None:
    """A shared ``/dev/shm`` (a container with the host's IPC) holds directories of readers whose pids mean others."""
    me = Owner.current()
    assert me.pid_ns is not None  # Linux: the name records it
    exchange = Exchange()
    try:
        assert os.path.basename(exchange.directory).startswith(f"{PREFIX}{me.pid}-{int(me.started or 0)}-n{me.pid_ns}-")
    finally:
        exchange.close()
    ended = subprocess.Popen(["true"])
    ended.wait()
    here = tmp_path / f"{PREFIX}{ended.pid}-12345-n{me.pid_ns}-abc"  # gone, in this namespace
    foreign = tmp_path / f"{PREFIX}{ended.pid}-12345-n{me.pid_ns + 1}-abc"  # that pid means another process there
    for path in (here, foreign):
        path.mkdir()
    assert sweep(str(tmp_path)) == [str(here)]
    assert foreign.exists()


@pytest.mark.slow
def test_workers_die_with_a_killed_reader_and_its_shared_memory_is_swept(spark, tmp_path) -> None:
    df = spark.range(2000, numPartitions=2).withColumn("a", F.array("id", "id"))
    cache = make_spark_converter(df, parquet_row_group_size_bytes=1024)
    with JobProcess("lifecycle_job.py", "pool", cache.cache_dir_url) as job:
        seen = job.line()
        host = socket.gethostname()
        workers = [Owner(host, pid, start_time(pid)) for pid in seen["workers"]]
        assert len(workers) == 2 and all(w.liveness() is Liveness.RUNNING for w in workers)
        assert len(seen["exchanges"]) == 1 and os.path.isdir(seen["exchanges"][0])
        os.kill(job.process.pid, signal.SIGKILL)  # the reader alone, as the out-of-memory killer picks it
        job.wait()
        wait_until(lambda: all(w.liveness() is Liveness.GONE for w in workers), timeout=30, what="the workers' exit")
        assert os.path.isdir(seen["exchanges"][0])  # nobody removed it: the reader was killed
        assert seen["exchanges"][0] in sweep()
    assert not os.path.exists(seen["exchanges"][0])
