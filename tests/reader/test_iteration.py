"""Iterations: one live iteration at a time, tokens, and the wait for one closed from another thread."""

from __future__ import annotations

import threading
from collections.abc import Generator

import pytest

from sparkfeed.reader import iteration
from sparkfeed.reader.iteration import Iterations


def _counting(log: list[str], steps: int = 3) -> Generator[int, None, None]:
    try:
        yield from range(steps)
    finally:
        log.append("cleaned up")


def test_one_live_iteration_at_a_time_and_a_dropped_or_finished_one_no_longer_counts() -> None:
    iterations: Iterations[int] = Iterations()
    log: list[str] = []
    iterations.claim()
    first = iterations.start(lambda token: _counting(log))
    next(first)
    with pytest.raises(RuntimeError, match="already being iterated"):
        iterations.claim()
    del first  # dropped by its user: it ends, and another may start
    iterations.claim()
    second = iterations.start(lambda token: _counting(log))
    assert list(second) == [0, 1, 2] and log == ["cleaned up", "cleaned up"]
    iterations.claim()  # exhausted: no longer live


def test_only_the_live_iterations_token_is_owned() -> None:
    iterations: Iterations[int] = Iterations()
    tokens: list[object] = []

    def stream(token: object) -> Generator[int, None, None]:
        tokens.append(token)
        yield 1

    first = iterations.start(stream)
    next(first)
    assert iterations.owns(tokens[0])
    iterations.close(lambda: None)
    assert not iterations.owns(tokens[0])
    second = iterations.start(stream)
    next(second)
    assert iterations.owns(tokens[1]) and not iterations.owns(tokens[0])


def test_close_stops_then_closes_the_live_iteration_and_is_a_no_op_without_one() -> None:
    iterations: Iterations[int] = Iterations()
    log: list[str] = []
    iterations.close(lambda: log.append("stopped"))
    assert log == []
    stream = iterations.start(lambda token: _counting(log))
    next(stream)
    iterations.close(lambda: log.append("stopped"))
    assert log == ["stopped", "cleaned up"] and iterations.running() is None


def _held_in_another_thread(iterations: Iterations[int], log: list[str]) -> tuple[threading.Thread, threading.Event]:
    """An iteration whose thread is inside a step until the returned event is set."""
    inside, release = threading.Event(), threading.Event()

    def stream(token: object) -> Generator[int, None, None]:
        try:
            inside.set()
            release.wait()
            yield 0
            yield 1
        finally:
            log.append("cleaned up")

    live = iterations.start(stream)
    thread = threading.Thread(target=lambda: log.extend(str(value) for value in live))
    thread.start()
    assert inside.wait(10)
    return thread, release


def test_a_new_iteration_waits_for_one_closed_while_another_thread_ran_it() -> None:
    iterations: Iterations[int] = Iterations()
    log: list[str] = []
    thread, release = _held_in_another_thread(iterations, log)
    iterations.close(lambda: log.append("stopped"))  # cannot close it there: it ends at its next step
    assert log == ["stopped"]
    claimed = threading.Thread(target=lambda: (iterations.claim(), log.append("claimed")))
    claimed.start()
    claimed.join(0.3)
    assert claimed.is_alive() and log == ["stopped"]  # waits for the closed one's cleanup
    release.set()
    claimed.join(10)
    thread.join(10)
    assert log.index("cleaned up") < log.index("claimed")


def test_a_closed_iteration_that_never_ends_is_an_error_and_still_waited_for_next_time(monkeypatch) -> None:
    monkeypatch.setattr(iteration, "DRAIN_SECONDS", 0.2)
    iterations: Iterations[int] = Iterations()
    log: list[str] = []
    thread, release = _held_in_another_thread(iterations, log)
    iterations.close(lambda: None)
    with pytest.raises(RuntimeError, match="has not ended after 0 s"):
        iterations.claim()
    with pytest.raises(RuntimeError, match="has not ended"):
        iterations.claim()
    release.set()
    thread.join(10)
    iterations.claim()
    assert log[-1] == "cleaned up"
