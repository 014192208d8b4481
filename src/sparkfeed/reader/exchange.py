"""Hands NumPy columns from worker processes to the reader through shared memory.

Pickling a chunk of decoded images through a pipe costs four copies (pickle, pipe write, pipe
read, unpickle) and about a third of the time of decoding them; here a worker writes each
array once into a file in a RAM-backed directory (``/dev/shm``) and the reader maps it
copy-on-write: no copy on the reader's side, and the arrays stay writable for the user. The
reader unlinks each file as soon as it is mapped, and removes the directory, with whatever
was never collected, when the iteration ends, or when the process ends (normally or by
SIGTERM, :mod:`sparkfeed.lifecycle`).

A reader killed by SIGKILL removes nothing, so each directory is named after its owner, the
reader process (pid, start time and pid namespace:
``sparkfeed-exchange-<pid>-<start>-n<namespace>-<random>``), and every new exchange first
sweeps the directories of owners that are gone. The namespace matters where ``/dev/shm`` is
shared by processes that each have their own pids (containers run with the host's IPC, or a
pod's shared memory volume): a pid from another namespace says nothing here, so such a
directory is left alone. RAM given to files in ``/dev/shm`` is not freed until they are removed.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import logging
import mmap
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import threading
import weakref
from typing import Any

import numpy as np

from sparkfeed.lifecycle import at_exit, cover_sigterm
from sparkfeed.owner import Liveness, Owner
from sparkfeed.reader.batch import Columns
from sparkfeed.reader.ragged import Ragged, Views

log = logging.getLogger(__name__)

PREFIX = "sparkfeed-exchange-"
_NAME = re.compile(rf"^{PREFIX}(\d+)-(\d+)-(?:n(\d+)-)?")
"""pid, start time and, in names made since it was recorded, pid namespace (the random part has no ``-``)."""

_ALIGN = 64
"""Arrays start at multiples of a cache line, as Arrow and NumPy prefer."""


@dataclasses.dataclass(frozen=True)
class SharedColumns:
    """A chunk written by a worker: where its arrays lie, plus the ones that cannot be mapped.

    Attributes:
        path: The file holding the arrays' bytes (None when it holds none).
        layout: ``(name, part, dtype, shape, offset)`` of each mapped array, in column order;
            ``part`` is ``""`` for a plain array, ``"values"`` and ``"offsets"`` for the two
            arrays of a sequence column (:class:`~sparkfeed.reader.ragged.Ragged`).
        inline: Object arrays (strings, arrays of varying length), pickled as they are.
        order: The column names in order.
    """

    path: str | None
    layout: tuple[tuple[str, str, str, tuple[int, ...], int], ...]
    inline: dict[str, np.ndarray]
    order: tuple[str, ...]


def shm_root() -> str:
    """Where exchanges live: RAM-backed ``/dev/shm`` where there is one, else the temp directory."""
    root = "/dev/shm"
    return root if os.path.isdir(root) and os.access(root, os.W_OK) else tempfile.gettempdir()


def sweep(root: str | None = None, *, dry_run: bool = False) -> list[str]:
    """Removes the exchange directories whose reader process is gone; returns their paths.

    Only directories named by :class:`Exchange`, owned by this user and not links, are looked
    at; one whose owner may still run (or whose start time does not match) is left alone.
    """
    root = root or shm_root()
    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return []
    host = socket.gethostname()
    for name in names:
        match = _NAME.match(name)
        if match is None:
            continue
        path = os.path.join(root, name)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
            continue
        namespace = int(match.group(3)) if match.group(3) is not None else None
        owner = Owner(host, int(match.group(1)), float(match.group(2)), pid_ns=namespace)
        if owner.liveness() is not Liveness.GONE:
            continue
        if not dry_run:
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s, the shared-memory chunks of reader process %d, which is gone", path, owner.pid)
        removed.append(path)
    return removed


def map_copy(fd: int) -> Any:
    """The whole of an open file mapped copy-on-write, without holding a file descriptor.

    ``mmap.mmap`` keeps a duplicate of the file's descriptor for as long as the mapping lives,
    and a chunk's mapping lives as long as any batch cut from it: a loop that keeps its batches
    (an evaluation's outputs, a list of an epoch) held one descriptor per chunk, and a few
    thousand chunks hit the usual limit of 1024 ("Too many open files") though nothing leaked.
    Python 3.13 maps without one (``trackfd=False``); before it, POSIX's ``mmap`` is called
    through ctypes, the mapping unmapped once nothing refers to its buffer any more. Elsewhere
    (Windows) the mapping keeps its descriptor, as before.

    Returns:
        A writable buffer: writes stay in this process, never reaching the file.
    """
    size = os.fstat(fd).st_size
    if sys.version_info >= (3, 13):
        return mmap.mmap(fd, size, access=mmap.ACCESS_COPY, trackfd=False)
    libc = _libc()
    if libc is None:
        return mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
    address = libc.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, fd, 0)
    if address is None or address == ctypes.c_void_p(-1).value:
        error = ctypes.get_errno()
        raise OSError(error, f"mmap of {size} bytes failed: {os.strerror(error)}")
    buffer = (ctypes.c_char * size).from_address(address)
    weakref.finalize(buffer, libc.munmap, address, size)
    return buffer


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library's ``mmap`` and ``munmap``, typed; None where there are none (not POSIX)."""
    if os.name != "posix" or not hasattr(mmap, "MAP_PRIVATE"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
        libc.munmap.restype = ctypes.c_int
        libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    except (OSError, AttributeError):
        return None
    return libc


_open: weakref.WeakSet[Exchange] = weakref.WeakSet()
_open_lock = threading.Lock()
_cleanup_in: int | None = None  # the pid whose exit removes the open exchanges


def _close_open() -> None:
    for exchange in list(_open):
        exchange.close()


class Exchange:
    """A directory for one iteration's chunks; :meth:`close` removes what is left in it."""

    def __init__(self) -> None:
        global _cleanup_in
        root = shm_root()
        sweep(root)
        me = Owner.current()
        started = int(me.started) if me.started is not None else 0
        namespace = f"n{me.pid_ns}-" if me.pid_ns is not None else ""
        self.directory = tempfile.mkdtemp(prefix=f"{PREFIX}{me.pid}-{started}-{namespace}", dir=root)
        with _open_lock:
            _open.add(self)
            register, _cleanup_in = _cleanup_in != os.getpid(), os.getpid()
        if register:
            at_exit(_close_open)
        else:
            cover_sigterm()

    def export(self, columns: Columns) -> SharedColumns:
        """Runs in a worker: writes the chunk's arrays to one new file, once each."""
        layout, inline, offset = [], {}, 0
        mapped = []
        for name, column in columns.items():
            if isinstance(column, Views):  # rows left in decoded pages: copied end to end to cross processes
                column = column.to_ragged()
            if isinstance(column, Ragged):  # its values and offsets, rebased to start at 0
                parts = [("values", column.flat()), ("offsets", column.offsets - column.offsets[0])]
            elif column.dtype == object or column.dtype.hasobject:
                inline[name] = column
                continue
            else:
                parts = [("", column)]
            for part, array in parts:
                array = np.ascontiguousarray(array)
                offset = -(-offset // _ALIGN) * _ALIGN
                layout.append((name, part, array.dtype.str, tuple(array.shape), offset))
                mapped.append((offset, array))
                offset += array.nbytes
        path = None
        if mapped:
            fd, path = tempfile.mkstemp(dir=self.directory)
            with os.fdopen(fd, "wb") as handle:
                for start, array in mapped:
                    handle.seek(start)
                    handle.write(array.reshape(-1).view(np.uint8).data)
                handle.truncate(max(offset, 1))
        return SharedColumns(path, tuple(layout), inline, tuple(columns))

    @staticmethod
    def load(shared: SharedColumns) -> Columns:
        """Maps a chunk copy-on-write and unlinks its file: the mapping lives as long as its arrays."""
        arrays: dict[str, Any] = dict(shared.inline)
        if shared.path is not None:
            with open(shared.path, "rb") as handle:
                buffer = map_copy(handle.fileno())
            os.unlink(shared.path)
            parts: dict[str, np.ndarray] = {}
            for name, part, dtype, shape, offset in shared.layout:
                count = int(np.prod(shape, dtype=np.int64))
                array = np.frombuffer(buffer, dtype=np.dtype(dtype), count=count, offset=offset).reshape(shape)
                if part == "values":
                    parts[name] = array
                elif part == "offsets":
                    arrays[name] = Ragged(parts.pop(name), array)
                else:
                    arrays[name] = array
        return {name: arrays[name] for name in shared.order}

    def close(self) -> None:
        """Removes the directory and every chunk never loaded (cancelled or interrupted work)."""
        shutil.rmtree(self.directory, ignore_errors=True)
