"""Cleanup that runs however the interpreter ends: at a normal exit, and on SIGTERM.

``atexit`` covers a normal exit and an unhandled exception, but not a process that a signal's
default action ends: SIGTERM, which ``kill``, Kubernetes, YARN and Spark send to stop a
process, left every cache behind. So the first cleanup registered from the main thread also
installs a SIGTERM handler, and only where SIGTERM still has its default action: the handler
runs the cleanup, restores the default and sends the signal again, so the process still ends
by SIGTERM, as its parent expects. A handler the user installed is never replaced: it decides
what SIGTERM means (a graceful shutdown that finishes the epoch and exits normally, say, which
then runs the cleanup through ``atexit``), and an ignored SIGTERM stays ignored.

SIGKILL cannot be caught: what a killed process leaves behind, the next conversion into the
same parent directory and ``sparkfeed cache clean`` remove (see :mod:`sparkfeed.cache`).

A forked child does not keep the handler: it has no caches of its own to clean, and a Python
handler runs only when the child's main thread returns to Python, so a child blocked in C (a
reader worker waiting on its queue) would not die of the SIGTERM its pool sends to stop it.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import warnings
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)

_lock = threading.RLock()  # re-entrant: the signal handler may interrupt the main thread holding it
_cleanups: list[tuple[int, Callable[[], None]]] = []
_atexit_registered = False
_sigterm_installed = False


def at_exit(cleanup: Callable[[], None]) -> None:
    """Runs ``cleanup`` once when this process ends normally or by SIGTERM.

    Cleanups run in reverse order of registration, each at most once, and only in the process
    that registered them: a forked child (a reader worker process) inherits the list, and must
    not delete its parent's caches when it is stopped.

    Args:
        cleanup: A function of no arguments; its exceptions become warnings.
    """
    global _atexit_registered
    with _lock:
        _cleanups.append((os.getpid(), cleanup))
        if not _atexit_registered:
            atexit.register(run_cleanups)
            _atexit_registered = True
    cover_sigterm()


def run_cleanups() -> None:
    """Runs and forgets every cleanup this process registered (a forked child's inherited ones are dropped)."""
    with _lock:
        mine = [cleanup for pid, cleanup in _cleanups if pid == os.getpid()]
        _cleanups.clear()
    for cleanup in reversed(mine):
        try:
            cleanup()
        except Exception as error:  # noqa: BLE001 - at exit, a warning is all we may do
            warnings.warn(f"sparkfeed's cleanup {cleanup!r} failed: {error}", stacklevel=1)


def cover_sigterm() -> None:
    """Installs the SIGTERM handler if it is not yet and may be: from the main thread, over the default action.

    Cheap to call again: callers whose first registration may come from another thread (a
    conversion started in a worker thread) call it on every use, so the main thread installs it.
    """
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers
    with _lock:
        if _sigterm_installed:
            return
        _sigterm_installed = True
        current = signal.getsignal(signal.SIGTERM)
        if current is not signal.SIG_DFL:
            # The user's handler, an ignored SIGTERM, or one set outside Python: theirs to keep.
            log.debug("SIGTERM already has a handler (%r): sparkfeed's cleanup runs at exit only", current)
            return
        signal.signal(signal.SIGTERM, _on_sigterm)


def _forget_in_child() -> None:
    """In a forked child: SIGTERM's default action back, and a lock of its own (see the module).

    Registered at import, whatever SIGTERM's handler: a child forked while another thread of
    the parent held the lock (registering a cleanup) waited on it forever at its exit, where
    the user's SIGTERM handler had kept this hook from being registered.
    """
    global _lock, _sigterm_installed
    _lock = threading.RLock()  # the parent's may have been held by another thread at the fork
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _sigterm_installed = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Cleans up, then ends the process by SIGTERM, as the default action would have."""
    log.info("SIGTERM: removing the caches this process created before it ends")
    run_cleanups()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
