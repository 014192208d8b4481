"""An ordered, bounded worker map: the reader's only source of parallelism.

pyarrow releases the GIL while it reads and decodes Parquet, so threads give real parallelism
without the copying and start-up cost of processes: they are the default. A transform that
holds the GIL (Pillow decoding small images, pandas code) cannot scale on threads, so worker
processes are the alternative, as in Petastorm's ``reader_pool_type="process"``: each reads
and transforms whole pieces and sends back whatever ``fn`` returns, pickled (the reader
makes that a small handle to shared memory: see :mod:`sparkfeed.reader.exchange`).

Results come back in submission order, which keeps the output deterministic, and at most
``prefetch`` items are in flight, which bounds memory. ``"dummy"``, as in Petastorm, has no
workers: each item is worked on in the consuming thread when it is asked for, nothing ahead.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import BrokenExecutor, CancelledError, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing.reduction import ForkingPickler
from typing import Any, Generic, TypeVar

from sparkfeed.options import PoolType

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

STALL_SECONDS = 1.0
"""A wait for one piece this long, after the first, is a stall worth logging."""
STALL_LOG_INTERVAL = 30.0
"""Stalls are logged at most this often (with how many there were), so slow storage does not flood the log."""

_worker_fn: Callable[[Any], Any] | None = None
"""The work function of this worker process, installed once when it starts."""


_PARENT_POLL_SECONDS = 0.2


def _install(fn: Callable[[Any], Any] | bytes, parent: int) -> None:
    global _worker_fn
    # A forked worker inherits its parent's Python SIGTERM handler (sparkfeed's cleanup, see
    # sparkfeed.lifecycle), which has nothing to clean here and runs only when the main thread
    # reaches the interpreter: if the kernel hands the pool's terminate() to the watching thread
    # while the main thread waits on a queue lock that a terminated sibling held, it never does,
    # and the reader's shutdown waits forever (seen as a rare hang). The default action ends the
    # worker at once, whichever thread receives it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with(parent)
    if isinstance(fn, bytes):
        from pyspark import cloudpickle

        fn = cloudpickle.loads(fn)
    _worker_fn = fn  # type: ignore[assignment]


def _die_with(parent: int) -> None:
    """Ends this worker process as soon as its parent is gone, however the parent ended.

    A reader killed with SIGKILL never stops its pool, and its workers, blocked on a queue that
    nobody will write to, would wait forever. Linux's ``PR_SET_PDEATHSIG`` is not used: it fires
    when the *thread* that forked the worker ends, and the reader's pool may be started by a
    short-lived thread (tf.data's). A watching thread notices the parent's death by the worker
    being re-parented (to init or a subreaper), within a fifth of a second.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="sparkfeed-parent-watch", daemon=True).start()


class WorkerError(Exception):
    """Stands in for a worker process's exception that cannot travel to the reader as itself.

    A worker's exception reaches the reader pickled. One that does not pickle (it holds a lock,
    an open file, a generator) would arrive as the pickling error, its own traceback lost; one
    that pickles but cannot be rebuilt (an ``__init__`` taking arguments it does not pass on to
    ``Exception``, common in user code) breaks the whole pool, reported as a worker "terminated
    abruptly", which reads as the OOM killer. This one carries its type and message, and its
    traceback travels as the cause's text, as every worker exception's does.
    """


def _call(item: Any) -> Any:
    assert _worker_fn is not None
    try:
        return _worker_fn(item)
    except BaseException as error:
        why = _unsendable(error)
        if why is None:
            raise
        what = "".join(traceback.format_exception_only(type(error), error)).strip()
        raise WorkerError(
            f"{what} (this exception cannot be sent from the worker process to the reader as itself, "
            f"{type(why).__name__}: {why}; its traceback is the cause)"
        ) from error


def _unsendable(error: BaseException) -> BaseException | None:
    """Why ``error`` would not reach the reader as itself (pickled there and rebuilt), or None if it would."""
    try:
        pickle.loads(ForkingPickler.dumps(error))
    except BaseException as why:  # noqa: BLE001 (whatever fails, the stand-in is sent instead)
        return why
    return None


def _process_executor(fn: Callable[[Any], Any], workers: int) -> ProcessPoolExecutor:
    """Worker processes that run ``fn``: forked where the platform allows, else spawned.

    Forked workers inherit ``fn`` (closures and lambdas in a transform work, nothing is
    pickled and nothing is imported again); spawned ones receive it through cloudpickle.
    """
    if sys.platform == "linux":
        context = multiprocessing.get_context("fork")
        payload: Callable[[Any], Any] | bytes = fn
    else:
        from pyspark import cloudpickle

        context = multiprocessing.get_context("spawn")
        payload = cloudpickle.dumps(fn)
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_install, initargs=(payload, os.getpid()))


def _stop(executor: Executor) -> list[Any]:
    """Stops an executor without waiting for running work: worker processes are terminated.

    Returns:
        What to join, in order, to wait for the stop: the executor's manager thread (which
        reaps the workers; joining them alongside it would race it), then the workers.
    """
    stopping = []
    if isinstance(executor, ProcessPoolExecutor):
        manager = getattr(executor, "_executor_manager_thread", None)
        processes = list((getattr(executor, "_processes", None) or {}).values())
        for process in processes:
            process.terminate()
        stopping = [manager, *processes] if manager is not None else processes
    executor.shutdown(wait=False, cancel_futures=True)
    return stopping


class _Stalls:
    """Logs the consumer's long waits for a piece: the input, not the training step, is then the bottleneck."""

    def __init__(self, describe: Callable[[Any], str], pool_type: str) -> None:
        self._describe = describe
        self._pool_type = pool_type
        self._first = True
        self._count = 0
        self._logged_at = -STALL_LOG_INTERVAL

    def note(self, item: Any, waited: float, ahead: int) -> None:
        first, self._first = self._first, False
        if waited < STALL_SECONDS or first:  # the first piece is the start-up, not a stall
            return
        self._count += 1
        now = time.monotonic()
        if now - self._logged_at < STALL_LOG_INTERVAL:
            return
        advice = "more workers_count or a larger prefetch"
        if self._pool_type == "thread":
            advice += ", or reader_pool_type='process' for a transform that holds the GIL"
        log.info(
            "reader stall: the loop waited %.1f s for %s (%d stalls since the last report, %d pieces in flight); "
            "input is the bottleneck here: %s may help",
            waited,
            self._describe(item),
            self._count,
            ahead,
            advice,
        )
        self._count, self._logged_at = 0, now


def _raised_by(future: Future[Any], error: BaseException) -> bool:
    """Whether ``future.result()`` raised ``error`` because the work raised it (not because the wait was interrupted).

    A KeyboardInterrupt reaches the consumer while it waits for a worker's result: labelled
    "raised in a reader thread while reading <row group>" it would send the user looking for a
    fault in their data or transform, when they pressed Ctrl-C.
    """
    return future.done() and not future.cancelled() and future.exception() is error


_END: Any = object()
"""What ``next(items, _END)`` gives once the items are done."""


class _Deferring(Generic[T]):
    """An iterator that ends where its source raises, keeping the error for :meth:`raise_failure`."""

    def __init__(self, source: Iterator[T]) -> None:
        self._source = source
        self._failure: Exception | None = None

    def __iter__(self) -> _Deferring[T]:
        return self

    def __next__(self) -> T:
        if self._failure is not None:
            raise StopIteration
        try:
            return next(self._source)
        except StopIteration:
            raise
        except Exception as error:  # noqa: BLE001 (kept, and raised by raise_failure in its turn)
            self._failure = error
            raise StopIteration from None

    def raise_failure(self) -> None:
        """Raises the source's error, if it raised one; nothing otherwise."""
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure


class OrderedPool(Generic[T, R]):
    """Maps ``fn`` over items on worker threads or processes, yielding results in order.

    Args:
        fn: The work for one item. With processes it must return picklable results.
        workers: Number of workers.
        prefetch: What is submitted ahead of the consumer, in the units of ``weigh``: items
            are submitted while the pending ones weigh less than this, or are fewer than
            ``least``.
        describe: Names an item in the note added to a worker's exception.
        pool_type: ``"thread"`` or ``"process"``.
        weigh: An item's weight (default 1 each, so ``prefetch`` counts items). A reader weighs
            a shuffle window by its row groups, so that ``prefetch`` bounds the row groups held,
            however many a window joins.
        least: Items kept pending whatever they weigh (at least 1): by default a reader keeps
            two per worker, windows or row groups, which its shuffled loaders need to keep pace.
    """

    def __init__(
        self,
        fn: Callable[[T], R],
        workers: int,
        prefetch: int,
        describe: Callable[[T], str] = repr,
        pool_type: PoolType = "thread",
        weigh: Callable[[T], int] | None = None,
        least: int = 1,
    ) -> None:
        self._fn = fn
        self._workers = workers
        self._prefetch = max(prefetch, 1)
        self._weigh: Callable[[T], int] = weigh or (lambda _: 1)
        self._least = max(least, 1)
        self._describe = describe
        self._pool_type = pool_type
        self._executor: Executor | None = None
        self._stopped: list[Any] = []
        self._shut = False

    def shutdown(self) -> None:
        """Stops the workers from any thread: queued items are cancelled, processes terminated.

        The consumer may be inside :meth:`imap` in another thread (tf.data runs generators in
        its own threads); its iteration then ends at its next step.
        """
        self._shut = True
        executor = self._executor
        if executor is not None:
            self._stopped += _stop(executor)

    def _start(self) -> tuple[Executor, Callable[[T], R]]:
        if self._pool_type == "process":
            return _process_executor(self._fn, self._workers), _call
        return ThreadPoolExecutor(self._workers, thread_name_prefix="sparkfeed-reader"), self._fn

    def imap(self, items: Iterable[T]) -> Iterator[tuple[T, R]]:
        """``(item, fn(item))`` for each item, in order. Closing the iterator stops the workers.

        An exception in a worker is re-raised here, with its own traceback (a process worker's
        is attached as the cause) and a note naming the item it came from.
        """
        self._shut = False
        if self._pool_type == "dummy":
            return self._inline(items)
        return self._pooled(items)

    def _inline(self, items: Iterable[T]) -> Iterator[tuple[T, R]]:
        """The ``dummy`` pool: ``fn`` runs in the consumer's thread, one item when it is asked for."""
        for item in items:
            if self._shut:
                return  # shut down from another thread
            try:
                result = self._fn(item)
            except BaseException as error:
                error.add_note(
                    f"sparkfeed: raised in the reading thread (reader_pool_type='dummy') while reading "
                    f"{self._describe(item)}"
                )
                raise
            yield item, result

    def _pooled(self, items: Iterable[T]) -> Iterator[tuple[T, R]]:
        """The thread or process pool's :meth:`imap`.

        An error from ``items`` itself (not from a worker) is raised in its place in the order:
        once the results of the items submitted before it have been yielded. Raised as soon as
        it happens, it would overtake them, and a consumer would stop short of results that
        came before it (a reader's last batches of an epoch).
        """
        executor, fn = self._start()
        self._executor = executor
        pending: collections.deque[tuple[T, Future[R]]] = collections.deque()
        source = _Deferring(iter(items))
        weigh = self._weigh
        weight = 0  # of the pending items

        def full() -> bool:
            return len(pending) >= self._least and weight >= self._prefetch

        try:
            for item in source:
                pending.append((item, executor.submit(fn, item)))
                weight += weigh(item)
                if full():
                    break
            stalls = _Stalls(self._describe, self._pool_type)
            while pending:
                item, future = pending.popleft()
                weight -= weigh(item)
                waited = time.perf_counter()
                try:
                    result = future.result()
                    stalls.note(item, time.perf_counter() - waited, len(pending))
                except BaseException as error:
                    if self._shut and isinstance(error, CancelledError | BrokenExecutor):
                        # Shut down from another thread, which cancelled the futures and, with
                        # processes, terminated the workers: the pool then breaks on purpose.
                        return
                    if not _raised_by(future, error):
                        # The wait itself was interrupted (Ctrl-C's KeyboardInterrupt, a signal
                        # handler's exception) in the consumer's thread: no worker raised it.
                        raise
                    where = "thread" if self._pool_type == "thread" else "process"
                    error.add_note(f"sparkfeed: raised in a reader {where} while reading {self._describe(item)}")
                    raise
                while not full():
                    following: T = next(source, _END)
                    if following is _END:
                        break
                    try:
                        pending.append((following, executor.submit(fn, following)))
                    except RuntimeError as error:
                        if self._shut:  # shut down from another thread: the iteration ends here
                            return
                        raise self._broken(following, error) from error
                    weight += weigh(following)
                yield item, result
            source.raise_failure()
        finally:
            for _, future in pending:
                future.cancel()
            if pending and self._pool_type == "process":
                self._stopped += _stop(executor)
            executor.shutdown(wait=True, cancel_futures=True)
            for worker in self._stopped:
                worker.join()

    def _broken(self, item: T, error: RuntimeError) -> RuntimeError:
        """The error of a pool that refuses ``item`` without having been shut down: the epoch cannot go on.

        A process pool breaks when a worker dies without an exception (the OOM killer, a
        signal, a crash in native code); Python refuses new work in thread pools once the
        interpreter has begun to exit (a loop in a thread that outlives the main thread).
        Ending the iteration there would end the epoch early with rows missing.
        """
        why = "a worker process died, killed by a signal or the OOM killer, or crashed"
        if self._pool_type == "thread":
            why = "the interpreter is exiting, as it does once the main thread has returned"
        return RuntimeError(
            f"sparkfeed: the reader's worker pool broke before the epoch ended: {why}; it refused "
            f"{self._describe(item)} ({type(error).__name__}: {error})"
        )
