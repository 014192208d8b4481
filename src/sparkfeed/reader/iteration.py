"""The one live iteration of a loader, and the handover from a closed one to the next.

A :class:`~sparkfeed.reader.engine.Reader` and a :class:`~sparkfeed.reader.mixer.Mixer` each
yield one iteration at a time, and only that iteration moves their position. What makes that
hold is the same in both, and lives here:

- an iteration dropped by its user (no longer referenced, or exhausted, or closed) is no longer
  live, so a new one may start; one still live is refused, since two would share the position;
- each iteration carries a token, and it moves the position only while the token is the
  current one: an iteration closed from another thread may still be inside a step, and must
  not move what is now the next iteration's position;
- an iteration closed from another thread (``tf.data`` iterates in its own threads) cannot be
  closed there and ends at its next step; its cleanup (the sources' iterators, the read-ahead,
  the counters) is its own, so the next iteration waits for it to end before starting.
"""

from __future__ import annotations

import gc
import inspect
import threading
import weakref
from collections.abc import Callable, Generator
from typing import Generic, TypeVar

C = TypeVar("C")

DRAIN_SECONDS = 60.0
"""How long a new iteration waits for one closed in another thread to end (its reader threads are
stopped: it ends at its next step, unless that step is a long transform or read)."""


class Iterations(Generic[C]):
    """Which iteration of a loader is live, its token, and the wait for one closed elsewhere."""

    def __init__(self) -> None:
        # The live iteration, weakly: an iterator its user dropped ends and no longer counts.
        self._active: weakref.ref[Generator[C, None, None]] | None = None
        self._token: object | None = None
        self._finished: threading.Event | None = None  # set once the live iteration has cleaned up
        self._draining: threading.Event | None = None  # one closed while it ran in another thread

    def running(self) -> Generator[C, None, None] | None:
        """The live iteration: started here, still referenced, and neither exhausted nor closed."""
        stream = None if self._active is None else self._active()
        if stream is None or inspect.getgeneratorstate(stream) == inspect.GEN_CLOSED:
            return None
        return stream

    def owns(self, token: object) -> bool:
        """Whether ``token`` is the live iteration's: only it may move the position."""
        return self._token is token

    def claim(self) -> None:
        """Makes way for a new iteration: none may be live, and one closed elsewhere must have ended.

        Raises:
            RuntimeError: An iteration is still live, or one closed while another thread
                iterated it has not ended within :data:`DRAIN_SECONDS`.
        """
        if self.running() is not None:
            gc.collect()  # an iterator dropped inside a reference cycle is no longer the user's either
            if self.running() is not None:
                raise RuntimeError(
                    "this loader is already being iterated, and that iteration is not finished: finish it, "
                    "close it (loader.close() or iterator.close()), or make a second loader for a second stream"
                )
        draining, self._draining = self._draining, None
        if draining is not None and not draining.wait(DRAIN_SECONDS):
            self._draining = draining
            raise RuntimeError(
                f"this loader was closed while another thread iterated it, and that iteration has not ended "
                f"after {DRAIN_SECONDS:.0f} s (its thread is still inside a step: a transform, a read): iterate "
                "again once it has"
            )

    def start(self, stream_for: Callable[[object], Generator[C, None, None]]) -> Generator[C, None, None]:
        """The new live iteration: ``stream_for(token)``, marked finished however it ends.

        Call :meth:`claim` first, before anything that the previous iteration's cleanup touches.
        """
        token = self._token = object()
        finished = self._finished = threading.Event()
        stream = _signalling_end(stream_for(token), finished)
        self._active = weakref.ref(stream)
        return stream

    def close(self, stop: Callable[[], None]) -> None:
        """Ends the live iteration, if any: ``stop()`` (its reader threads), then the iteration itself.

        Safe from any thread. An iteration running in another thread cannot be closed from this
        one; stopped, it ends at its next step, and :meth:`claim` waits for that.
        """
        active, finished = self.running(), self._finished
        self._active, self._token = None, None
        if active is None:
            return
        stop()
        try:
            active.close()
        except ValueError:  # running in another thread (tf.data): it ends at its next step
            self._draining = finished


def _signalling_end(stream: Generator[C, None, None], finished: threading.Event) -> Generator[C, None, None]:
    """``stream``, setting ``finished`` once it has ended and cleaned up, however it ends."""
    try:
        yield from stream
    finally:
        finished.set()
