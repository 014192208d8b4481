"""Resources over many loader lifecycles: threads, file descriptors, memory, and interrupted loops.

A training job makes loaders again and again (every epoch, every validation pass, a notebook
cell run again), leaves loops with ``break``, Ctrl-C or an exception of its transform, and runs
for days. Whatever way a loop ends, the reader's threads must stop, nothing may pile up, and the
loader (or a new one) must work again. Waits for threads to end are bounded polls, never sleeps.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import os
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from pyspark.sql import functions as F

from sparkfeed import make_spark_converter
from sparkfeed.reader.exchange import PREFIX, shm_root

ROWS = 20_000


@pytest.fixture(scope="module")
def converter(spark):
    df = spark.range(ROWS, numPartitions=2).select("id", (F.col("id") * 0.5).alias("x"))
    converter = make_spark_converter(df, parquet_row_group_size_bytes=16 * 1024)
    assert sum(len(f.row_groups) for f in converter.manifest.files) >= 8
    return converter


def _reader_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("sparkfeed")]


def _stopped() -> bool:
    """Whether every reader thread and worker process has ended, waiting up to 10 s for them."""
    deadline = time.monotonic() + 10
    while (_reader_threads() or multiprocessing.active_children()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return not _reader_threads() and not multiprocessing.active_children()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _broken_transform(frame):
    if frame["id"].iloc[0] > ROWS // 4:
        raise ArithmeticError("the user's transform failed")
    return frame


def _lifecycle(converter, how: str, **kwargs: Any) -> weakref.ref[Any]:
    """Makes a loader, ends its loop as ``how`` says, drops it; returns a weak reference to it."""
    loader = converter.make_numpy_iterator(batch_size=100, **kwargs)
    if how == "exhausted":
        with loader:
            for _ in loader:
                pass
    elif how == "break":
        for step, _ in enumerate(loader):
            if step == 3:
                break
    elif how == "ctrl-c":
        with pytest.raises(KeyboardInterrupt):
            for step, _ in enumerate(loader):
                if step == 3:
                    raise KeyboardInterrupt  # as Ctrl-C in the loop's body
    elif how == "transform error":
        with pytest.raises(ArithmeticError):
            for _ in loader:
                pass
    else:  # an iterator still held, the loader closed
        iterator = iter(loader)
        next(iterator)
        loader.close()
        assert next(iterator, None) is None
    return weakref.ref(loader)


HOWS = ["exhausted", "break", "ctrl-c", "transform error", "closed"]


def test_many_lifecycles_ended_every_way_leave_no_threads_descriptors_or_loaders(converter) -> None:
    def one(how: str) -> weakref.ref[Any]:
        kwargs: dict[str, Any] = {"num_epochs": 1 if how in ("exhausted", "transform error") else None}
        if how == "transform error":
            kwargs["transform_fn"] = _broken_transform
        return _lifecycle(converter, how, **kwargs)

    for how in HOWS:  # warm-up: whatever is opened once for good (imports, Spark's connections)
        one(how)
    assert _stopped()
    fds, threads = _fds(), threading.active_count()
    loaders = []
    for how in itertools.islice(itertools.cycle(HOWS), 150):
        loaders.append(one(how))
        assert _stopped(), f"reader threads still running after a loop that ended as {how!r}"
    gc.collect()
    assert [ref() for ref in loaders] == [None] * len(loaders)  # nothing keeps a loader (its plan, its transform)
    assert threading.active_count() <= threads
    assert _fds() <= fds + 2  # one descriptor a lifecycle would be 150


def test_a_transform_error_carries_the_users_frame_and_the_loader_works_again(converter) -> None:
    loader = converter.make_numpy_iterator(batch_size=100, num_epochs=1, transform_fn=_broken_transform, seed=0)
    with pytest.raises(ArithmeticError, match="the user's transform failed") as error:
        for _ in loader:
            pass
    assert "_broken_transform" in [frame.name for frame in traceback.extract_tb(error.value.__traceback__)]
    assert _stopped()
    with converter.make_numpy_iterator(batch_size=1000, num_epochs=1) as fresh:
        ids = np.concatenate([batch["id"] for batch in fresh])
    assert np.array_equal(np.sort(ids), np.arange(ROWS))


def test_after_ctrl_c_in_the_loop_the_threads_stop_and_the_same_loader_reads_a_whole_epoch(converter) -> None:
    loader = converter.make_numpy_iterator(batch_size=100, num_epochs=1)
    with pytest.raises(KeyboardInterrupt):
        for step, _ in enumerate(loader):
            if step == 5:
                raise KeyboardInterrupt
    assert _stopped()
    ids = np.concatenate([batch["id"] for batch in loader])  # the next iteration is the next epoch, whole
    assert np.array_equal(np.sort(ids), np.arange(ROWS))
    assert _stopped()


def test_two_iterations_of_one_loader_never_mix_their_rows(converter) -> None:
    loader = converter.make_numpy_iterator(batch_size=100, num_epochs=1, seed=3)
    first = iter(loader)
    head = next(first)["id"]
    with pytest.raises(RuntimeError, match="already being iterated"):
        iter(loader)
    tail = [batch["id"] for batch in first]  # the refused second iteration took nothing from the first
    assert np.array_equal(np.sort(np.concatenate([head, *tail])), np.arange(ROWS))
    again = np.concatenate([batch["id"] for batch in loader])  # an exhausted iteration makes way for the next
    assert np.array_equal(np.sort(again), np.arange(ROWS))
    loader.close()
    assert _stopped()


def _torch(converter) -> Iterator[Any]:
    pytest.importorskip("torch")
    return converter.make_torch_dataloader(batch_size=100)


def _jax(converter) -> Iterator[Any]:
    pytest.importorskip("jax")
    return converter.make_jax_iterator(batch_size=100)


def _processes(converter) -> Iterator[Any]:
    return converter.make_numpy_iterator(batch_size=100, reader_pool_type="process", workers_count=2)


@pytest.mark.parametrize("make", [_processes, _torch, _jax], ids=["worker processes", "torch", "jax"])
def test_a_loader_dropped_mid_epoch_stops_its_workers_every_time(converter, make: Callable[[Any], Any]) -> None:
    def mine() -> set[str]:
        return {name for name in os.listdir(shm_root()) if name.startswith(f"{PREFIX}{os.getpid()}-")}

    make(converter)  # warm-up: the framework's own imports and threads
    fds, exchanges = _fds(), mine()
    for _ in range(8):
        loader = make(converter)
        for step, _ in enumerate(loader):
            if step == 2:
                break
        del loader
        assert _stopped()
    assert _fds() <= fds + 2
    assert mine() <= exchanges  # worker processes' shared-memory directories are removed with them
