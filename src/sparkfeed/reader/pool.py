"""An ordered, bounded thread map: the reader's only source of parallelism.

pyarrow releases the GIL while it reads and decodes Parquet, so threads give real parallelism
without the copying and start-up cost of processes. Results come back in submission order,
which keeps the output deterministic, and at most ``prefetch`` items are in flight, which
bounds memory.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class OrderedPool(Generic[T, R]):
    """Maps ``fn`` over items on a thread pool, yielding results in order.

    Args:
        fn: The work for one item; it runs in a worker thread.
        workers: Number of threads.
        prefetch: Items submitted ahead of the consumer.
        describe: Names an item in the note added to a worker's exception.
    """

    def __init__(self, fn: Callable[[T], R], workers: int, prefetch: int, describe: Callable[[T], str] = repr) -> None:
        self._fn = fn
        self._workers = workers
        self._prefetch = max(prefetch, 1)
        self._describe = describe
        self._executor: ThreadPoolExecutor | None = None

    def shutdown(self) -> None:
        """Stops the threads from any thread: queued reads are cancelled, running ones finish.

        The consumer may be inside :meth:`imap` in another thread (tf.data runs generators in
        its own threads); its iteration then ends at its next step.
        """
        executor = self._executor
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def imap(self, items: Iterable[T]) -> Iterator[R]:
        """Results of ``fn`` over ``items``. Closing the iterator stops the threads.

        An exception in a worker is re-raised here, with its own traceback and a note naming
        the item it came from.
        """
        executor = self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="sparkfeed-reader")
        pending: collections.deque[tuple[T, Future[R]]] = collections.deque()
        source = iter(items)
        try:
            for item in source:
                pending.append((item, executor.submit(self._fn, item)))
                if len(pending) >= self._prefetch:
                    break
            while pending:
                item, future = pending.popleft()
                try:
                    result = future.result()
                except CancelledError:
                    return  # shut down from another thread
                except BaseException as error:
                    error.add_note(f"sparkfeed: raised in a reader thread while reading {self._describe(item)}")
                    raise
                for following in source:
                    try:
                        pending.append((following, executor.submit(self._fn, following)))
                    except RuntimeError:  # shut down from another thread
                        return
                    break
                yield result
        finally:
            for _, future in pending:
                future.cancel()
            executor.shutdown(wait=True, cancel_futures=True)
