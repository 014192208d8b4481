"""The ordered thread map: order, bounded prefetch, errors with tracebacks, prompt shutdown."""

from __future__ import annotations

import random
import threading
import time
import traceback

import pytest

from sparkfeed.reader.pool import OrderedPool


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sparkfeed-reader")]


def test_results_come_in_submission_order() -> None:
    def slow_square(x: int) -> int:
        time.sleep(random.random() / 200)
        return x * x

    assert list(OrderedPool(slow_square, workers=4, prefetch=8).imap(range(100))) == [x * x for x in range(100)]


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
    for consumed, value in enumerate(results):
        assert len(submitted) <= consumed + 3 + 1
        assert value == consumed
    assert peak[0] <= 3


def _explode(x: int) -> int:
    if x == 5:
        raise ValueError("boom at 5")
    return x


def test_worker_exception_reaches_consumer_with_traceback_and_note() -> None:
    pool = OrderedPool(_explode, workers=2, prefetch=4, describe=lambda x: f"item #{x}")
    seen = []
    with pytest.raises(ValueError, match="boom at 5") as error:
        for value in pool.imap(range(10)):
            seen.append(value)
    assert seen == [0, 1, 2, 3, 4]
    assert error.value.__notes__ == ["sparkfeed: raised in a reader thread while reading item #5"]
    frames = [frame.name for frame in traceback.extract_tb(error.value.__traceback__)]
    assert "_explode" in frames
    assert not _reader_threads()


def test_closing_early_stops_the_threads_promptly() -> None:
    def work(x: int) -> int:
        time.sleep(0.01)
        return x

    iterator = OrderedPool(work, workers=4, prefetch=16).imap(iter(int, 1))  # infinite input
    assert [next(iterator) for _ in range(5)] == [0, 0, 0, 0, 0]
    started = time.perf_counter()
    iterator.close()
    assert time.perf_counter() - started < 1.0
    assert not _reader_threads()
