"""The ordered worker map: order, bounded prefetch, errors with tracebacks, prompt shutdown.

Every behaviour is checked with threads, with worker processes, and without workers ("dummy").
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from concurrent.futures.process import BrokenProcessPool

import pytest

from sparkfeed.reader.pool import OrderedPool, WorkerError

POOL_TYPES = ["thread", "process", "dummy"]
NOTE_WHERE = {
    "thread": "a reader thread",
    "process": "a reader process",
    "dummy": "the reading thread (reader_pool_type='dummy')",
}


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sparkfeed-reader")]


def _no_workers_left() -> bool:
    return not _reader_threads() and not multiprocessing.active_children()


@pytest.mark.parametrize("pool_type", POOL_TYPES)
def test_results_come_in_submission_order_paired_with_their_items(pool_type) -> None:
    offset = 7  # a closure: forked workers inherit it, nothing is pickled

    def slow_shift(x: int) -> int:
        time.sleep(random.random() / 200)
        return x * x + offset

    results = list(OrderedPool(slow_shift, workers=2, prefetch=8, pool_type=pool_type).imap(range(100)))
    assert results == [(x, x * x + 7) for x in range(100)]
    assert _no_workers_left()


@pytest.mark.parametrize("pool_type", POOL_TYPES)
@pytest.mark.parametrize("prefetch", [1, 3, 50])
def test_an_error_of_the_items_themselves_comes_after_the_results_of_the_items_before_it(pool_type, prefetch) -> None:
    """The items' iterator raising while the pool fills its prefetch must not overtake results already submitted.

    It was raised as soon as the pool asked for the next item, up to ``prefetch`` results early:
    a reader lost the last batches of the epoch before the one whose plan raised.
    """

    def items() -> Iterator[int]:
        yield from range(10)
        raise ValueError("no more items")

    got = []
    with pytest.raises(ValueError, match="no more items"):
        for item, result in OrderedPool(lambda x: x + 100, workers=2, prefetch=prefetch, pool_type=pool_type).imap(
            items()
        ):
            got.append((item, result))
    assert got == [(x, x + 100) for x in range(10)]
    assert _no_workers_left()


def test_process_workers_run_in_other_processes() -> None:
    pids = {pid for _, pid in OrderedPool(lambda _: os.getpid(), 2, 4, pool_type="process").imap(range(20))}
    assert os.getpid() not in pids


def test_at_most_prefetch_items_are_in_flight() -> None:
    lock, running, peak = threading.Lock(), [0], [0]

    def work(x: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.002)
        with lock:
            running[0] -= 1
        return x

    submitted = []

    def items():
        for i in range(60):
            submitted.append(i)
            yield i

    results = OrderedPool(work, workers=8, prefetch=3).imap(items())
    for consumed, (_, value) in enumerate(results):
        assert len(submitted) <= consumed + 3 + 1
        assert value == consumed
    assert peak[0] <= 3


@pytest.mark.parametrize(("weights", "prefetch", "least"), [([3] * 30, 4, 1), ([3] * 30, 4, 2), ([1, 5, 2] * 10, 6, 1)])
def test_with_weights_the_pending_items_weigh_at_most_prefetch_or_are_the_least_kept(weights, prefetch, least) -> None:
    """A reader's shuffle window is one item of many row groups: prefetch must bound their weight, not their count."""
    submitted: list[int] = []

    def items() -> Iterator[int]:
        for i in range(len(weights)):
            submitted.append(i)
            yield i

    results = OrderedPool(lambda x: x, workers=2, prefetch=prefetch, weigh=weights.__getitem__, least=least).imap(
        items()
    )
    widest = 0
    for consumed, (item, value) in enumerate(results):
        assert item == value == consumed
        pending = submitted[consumed + 1 :]  # submitted, not yet yielded
        weight = sum(weights[i] for i in pending)
        widest = max(widest, len(pending))
        # one more was submitted only while the pending weighed less than prefetch, or were too few
        assert len(pending) <= least or weight - weights[pending[-1]] < prefetch
    assert widest >= least
    assert submitted == list(range(len(weights)))


def _explode(x: int) -> int:
    if x == 5:
        raise ValueError("boom at 5")
    return x


@pytest.mark.parametrize("pool_type", POOL_TYPES)
def test_worker_exception_reaches_consumer_with_traceback_and_note(pool_type) -> None:
    pool = OrderedPool(_explode, workers=2, prefetch=4, describe=lambda x: f"item #{x}", pool_type=pool_type)
    seen = []
    with pytest.raises(ValueError, match="boom at 5") as error:
        for _, value in pool.imap(range(10)):
            seen.append(value)
    assert seen == [0, 1, 2, 3, 4]
    assert error.value.__notes__ == [f"sparkfeed: raised in {NOTE_WHERE[pool_type]} while reading item #5"]
    if pool_type != "process":
        frames = [frame.name for frame in traceback.extract_tb(error.value.__traceback__)]
    else:  # the worker's traceback travels as text, attached as the cause
        frames = [str(error.value.__cause__)]
    assert any("_explode" in frame for frame in frames)
    assert _no_workers_left()


@pytest.mark.parametrize("pool_type", POOL_TYPES)
def test_closing_early_stops_the_workers_promptly(pool_type) -> None:
    def work(x: int) -> int:
        if pool_type == "process" and x:
            time.sleep(30)  # worker processes are stopped in the middle of an item
        time.sleep(0.01)
        return x

    iterator = OrderedPool(work, workers=2, prefetch=16, pool_type=pool_type).imap(range(1000))
    assert next(iterator) == (0, 0)
    started = time.perf_counter()
    iterator.close()
    assert time.perf_counter() - started < 1.0
    assert _no_workers_left()


def test_spawned_workers_receive_closures_by_value(monkeypatch) -> None:
    """Where fork is unavailable (macOS, Windows), workers are spawned and get ``fn`` through cloudpickle."""
    import sparkfeed.reader.pool as pool_module

    monkeypatch.setattr(pool_module.sys, "platform", "darwin")
    offset = 11
    work = lambda x: (x + offset, type(multiprocessing.current_process()).__name__)  # noqa: E731
    results = list(OrderedPool(work, 1, 2, pool_type="process").imap(range(3)))
    assert [value for _, (value, _) in results] == [11, 12, 13]
    assert {kind for _, (_, kind) in results} == {"SpawnProcess"}
    assert _no_workers_left()


def test_the_dummy_pool_works_in_the_consumers_thread_only_when_asked() -> None:
    threads, submitted = set(), []

    def work(x: int) -> int:
        threads.add(threading.current_thread())
        return -x

    def items():
        for i in range(10):
            submitted.append(i)
            yield i

    results = OrderedPool(work, workers=4, prefetch=8, pool_type="dummy").imap(items())
    assert submitted == []  # nothing read ahead
    for consumed, (item, value) in enumerate(results, start=1):
        assert value == -item and len(submitted) == consumed
    assert threads == {threading.current_thread()}
    assert not _reader_threads()


def test_shutting_the_dummy_pool_down_from_another_thread_ends_its_iteration() -> None:
    pool = OrderedPool(lambda x: x, workers=1, prefetch=1, pool_type="dummy")
    iterator = pool.imap(range(100))
    assert next(iterator) == (0, 0)
    stopper = threading.Thread(target=pool.shutdown)
    stopper.start()
    stopper.join()
    assert list(iterator) == []


@pytest.mark.parametrize("pool_type", ["thread", "process"])
def test_shutting_a_pool_down_from_another_thread_ends_the_iteration_waiting_in_it(pool_type) -> None:
    """As ``loader.close()`` from another thread does: terminated worker processes are no broken pool then."""

    def work(x: int) -> int:
        time.sleep(0.5 if x else 0)
        return x

    pool = OrderedPool(work, workers=2, prefetch=4, pool_type=pool_type)
    outcome: list[object] = []

    def consume() -> None:
        try:
            outcome.append([value for _, value in pool.imap(range(20))])
        except BaseException as error:  # noqa: BLE001 (the test reports it)
            outcome.append(error)

    consumer = threading.Thread(target=consume)
    consumer.start()
    time.sleep(0.3)  # the consumer has item 0 and waits for item 1
    pool.shutdown()
    consumer.join(30)
    assert not consumer.is_alive()
    (ended,) = outcome
    assert isinstance(ended, list) and ended[:1] == [0] and len(ended) < 20, ended
    assert _no_workers_left()


class _LabelError(Exception):
    """An exception whose ``__init__`` takes arguments it does not pass on: it pickles, but is not rebuilt."""

    def __init__(self, label: str, row: int) -> None:
        super().__init__(f"bad label {label!r} at row {row}")
        self.label, self.row = label, row


class _LockedError(Exception):
    """An exception holding a lock: it does not pickle."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def _unrebuildable_at_3(x: int) -> int:
    if x == 3:
        raise _LabelError("cat", x)
    return x


def _unpicklable_at_3(x: int) -> int:
    if x == 3:
        raise _LockedError("bad label 'cat' at row 3")
    return x


@pytest.mark.parametrize("fn", [_unrebuildable_at_3, _unpicklable_at_3], ids=["not rebuilt", "not pickled"])
def test_a_process_worker_exception_that_cannot_travel_arrives_with_its_type_message_and_traceback(fn) -> None:
    """Not as the pickling error, nor as a pool "terminated abruptly" (which reads as the OOM killer)."""
    pool = OrderedPool(fn, workers=2, prefetch=4, describe=lambda x: f"item #{x}", pool_type="process")
    seen = []
    with pytest.raises(WorkerError) as error:
        for _, value in pool.imap(range(10)):
            seen.append(value)
    assert seen == [0, 1, 2]
    kind = "_LabelError" if fn is _unrebuildable_at_3 else "_LockedError"
    assert f"{kind}: bad label 'cat' at row 3 (this exception cannot be sent from the worker" in str(error.value)
    assert error.value.__notes__ == ["sparkfeed: raised in a reader process while reading item #3"]
    assert f"in {fn.__name__}" in str(error.value.__cause__)  # the worker's own traceback
    assert _no_workers_left()


def _slow(item: int) -> int:
    time.sleep(1.1)
    return item


def test_long_waits_for_a_piece_are_logged_as_stalls_after_the_first_and_at_most_every_30_seconds(caplog) -> None:
    pool: OrderedPool[int, int] = OrderedPool(_slow, workers=1, prefetch=1, describe=lambda i: f"piece {i}")
    with caplog.at_level(logging.INFO, logger="sparkfeed"):
        assert [result for _, result in pool.imap(range(3))] == [0, 1, 2]
    (stall,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reader stall")]
    assert "waited 1." in stall and "for piece 1 " in stall  # not piece 0: starting up is no stall
    assert "more workers_count" in stall and "reader_pool_type='process'" in stall


def test_a_fast_pool_logs_no_stall(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="sparkfeed"):
        list(OrderedPool(lambda i: i, workers=2, prefetch=4).imap(range(100)))
    assert not [r for r in caplog.records if "stall" in r.getMessage()]


def _sigterm_is_default(_: int) -> bool:
    import signal

    return signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_process_workers_die_of_sigterm_whatever_handler_their_parent_has() -> None:
    import signal

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)  # a user's handler that does not exit
    try:
        pool: OrderedPool[int, bool] = OrderedPool(_sigterm_is_default, workers=2, prefetch=4, pool_type="process")
        assert all(result for _, result in pool.imap(range(8)))  # so the pool's terminate() stops them at once
    finally:
        signal.signal(signal.SIGTERM, previous)


def _dies_at_2(item: int) -> int:
    if item == 2:
        time.sleep(0.3)
        os._exit(1)  # as the OOM killer or a segfault ends a worker: no exception, no result
    return item


def _killed_at_2(item: int) -> int:
    if item == 2:
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGKILL)
    return item


@pytest.mark.parametrize("fn", [_dies_at_2, _killed_at_2], ids=["os._exit", "SIGKILL"])
def test_a_worker_process_that_dies_raises_in_the_consumer_instead_of_ending_the_iteration(fn) -> None:
    pool: OrderedPool[int, int] = OrderedPool(fn, workers=2, prefetch=4, pool_type="process")
    seen = []
    with pytest.raises(RuntimeError, match="worker pool broke") as error:
        for _, value in pool.imap(range(10)):
            seen.append(value)
            time.sleep(1.0)  # a training step: the pool breaks meanwhile, noticed when the next item is submitted
    assert seen == [0]  # nothing after the last item the pool could take more work after
    assert isinstance(error.value.__cause__, BrokenProcessPool)
    assert _no_workers_left()


_AFTER_MAIN = """
import sys, threading, time
from sparkfeed.reader.pool import OrderedPool, WorkerError

def consume():
    seen = []
    try:
        for _, value in OrderedPool(lambda x: x, workers=1, prefetch=1).imap(range(20)):
            seen.append(value)
            time.sleep(0.1)
    except RuntimeError as error:
        print("raised", len(seen), type(error.__cause__).__name__, error, flush=True)
    else:
        print("ended", len(seen), flush=True)

threading.Thread(target=consume).start()
time.sleep(0.3)  # the main thread returns: Python refuses new work in thread pools from then on
"""


def test_a_thread_pool_refusing_work_at_interpreter_exit_raises_instead_of_ending_the_iteration() -> None:
    done = subprocess.run([sys.executable, "-c", _AFTER_MAIN], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("raised "), done.stdout
    assert "worker pool broke" in done.stdout and "interpreter is exiting" in done.stdout


def _cancelled_at_5(x: int) -> int:
    if x == 5:
        waited: Future[int] = Future()
        waited.cancel()
        waited.result()  # the work waited on a future that other code cancelled
    return x


@pytest.mark.parametrize("pool_type", POOL_TYPES)
def test_a_cancelled_error_raised_by_the_work_reaches_the_consumer_instead_of_ending_the_iteration(pool_type) -> None:
    pool = OrderedPool(_cancelled_at_5, workers=2, prefetch=4, describe=lambda x: f"item #{x}", pool_type=pool_type)
    seen = []
    with pytest.raises(CancelledError) as error:
        for _, value in pool.imap(range(10)):
            seen.append(value)
    assert seen == [0, 1, 2, 3, 4]
    assert error.value.__notes__ == [f"sparkfeed: raised in {NOTE_WHERE[pool_type]} while reading item #5"]
    assert _no_workers_left()


def _waits_for(thread: threading.Thread, function: str) -> bool:
    """Whether ``thread`` is inside ``function`` now (a frame of it is on the thread's stack)."""
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


@pytest.mark.parametrize("pool_type", ["thread", "process"])
def test_ctrl_c_while_waiting_for_a_worker_is_not_labelled_a_worker_error_and_stops_the_workers(pool_type) -> None:
    """The KeyboardInterrupt is the consumer's own: no note sends the user to a row group, and the workers stop."""
    slow = threading.Event()  # not a process's: terminating a worker that waits on one would break it

    def work(x: int) -> int:
        if x == 0:  # item 0 keeps the consumer waiting until Ctrl-C has arrived
            if pool_type == "process":
                time.sleep(30)  # the worker process is terminated in the middle of it
            slow.wait(10)
        return x

    main, seen = threading.current_thread(), []

    def press_ctrl_c() -> None:
        deadline = time.monotonic() + 10
        while not _waits_for(main, "result") and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(_waits_for(main, "result"))
        os.kill(os.getpid(), signal.SIGINT)
        while _waits_for(main, "result") and time.monotonic() < deadline:
            time.sleep(0.01)  # item 0 ends only once the interrupt has left the wait
        slow.set()

    pool = OrderedPool(work, workers=2, prefetch=4, describe=lambda x: f"item #{x}", pool_type=pool_type)
    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt) as error:
            next(pool.imap(range(100)))
    finally:
        slow.set()
        presser.join(20)
    assert seen == [True]  # the interrupt arrived while the consumer waited in Future.result()
    assert not getattr(error.value, "__notes__", [])
    deadline = time.monotonic() + 10
    while not _no_workers_left() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _no_workers_left()
