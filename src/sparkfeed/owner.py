"""Who made a thing on disk, and whether that process still runs.

Caches and shared-memory directories record their creator: host, pid and the process's start
time. A pid alone is not an identity: pids are reused, so a directory left by a process killed
yesterday could look like today's shell's. With the start time (``/proc/<pid>/stat`` on Linux,
``ps`` elsewhere) a live process with that pid is the creator only if it started when the
creator did. Anything on another host cannot be checked from here and counts as running:
sparkfeed removes another process's leftovers only when it is sure that process is gone.

A hostname does not name one pid space: containers of one pod, or run with the host's network,
share it but each has its own pid namespace, and two machines may share a name. So on Linux the
record also holds the kernel's boot id and the pid namespace; a record whose boot or namespace
is not this process's cannot be checked from here either. Records without them (written before
they were) are judged by host, pid and start time, as they were.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import getpass
import math
import os
import socket
import subprocess
import sys
import time
from typing import Any


class Liveness(enum.Enum):
    """What can be said of a creator from this process."""

    RUNNING = "running"
    """This host, that pid, that start time: the creator itself is alive."""
    GONE = "gone"
    """This host, and no process with that pid and start time exists: its leftovers are orphans."""
    UNKNOWN = "unknown"
    """Another host, or a record without a start time whose pid is in use: treated as running."""


@dataclasses.dataclass(frozen=True)
class Owner:
    """A process, identified across pid reuse.

    Attributes:
        host: ``socket.gethostname()`` of the process.
        pid: Its process id.
        started: Its start time, as :func:`start_time` gives it; None when it could not be read.
        user: The login name it ran as, for people reading listings.
        boot_id: The kernel's boot id (Linux), which tells two machines, or two boots, apart.
        pid_ns: The inode of its pid namespace (Linux), in which ``pid`` means that process.
    """

    host: str
    pid: int
    started: float | None = None
    user: str | None = None
    boot_id: str | None = None
    pid_ns: int | None = None

    @classmethod
    def current(cls) -> Owner:
        """This process (computed per call: a forked child is another process)."""
        return _current(os.getpid())

    def liveness(self) -> Liveness:
        """Whether this process is still running, seen from here."""
        if self.host != socket.gethostname() or not 0 < self.pid <= _PID_MAX or not self._seen_from_here():
            return Liveness.UNKNOWN
        if not _exists(self.pid):
            return Liveness.GONE
        started = start_time(self.pid)
        if started is None:  # ended (a zombie), or its start time cannot be read here
            fields = _proc_stat(self.pid)
            ended = not _exists(self.pid) or (fields is not None and fields[0] in _ENDED)
            return Liveness.GONE if ended else Liveness.UNKNOWN
        if self.started is None:
            return Liveness.UNKNOWN  # a live process with that pid: it may or may not be the creator
        return Liveness.RUNNING if started == self.started else Liveness.GONE

    def _seen_from_here(self) -> bool:
        """Whether its pid names a process this one can see: same boot, same pid namespace, as far as recorded."""
        boot_id, pid_ns = _boot_id(), _pid_namespace()
        return (self.boot_id is None or self.boot_id == boot_id) and (self.pid_ns is None or self.pid_ns == pid_ns)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written into markers."""
        return {
            "host": self.host,
            "pid": self.pid,
            "started": self.started,
            "user": self.user,
            "boot_id": self.boot_id,
            "pid_ns": self.pid_ns,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Owner | None:
        """Reads :meth:`to_dict`'s form back; None when it is not one (an older or foreign record)."""
        if not isinstance(data, dict):
            return None
        host, pid, started, user = data.get("host"), data.get("pid"), data.get("started"), data.get("user")
        if not isinstance(host, str) or not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid <= _PID_MAX:
            return None
        boot_id, pid_ns = data.get("boot_id"), data.get("pid_ns")
        return cls(
            host=host,
            pid=pid,
            started=_start(started),
            user=user if isinstance(user, str) else None,
            boot_id=boot_id if isinstance(boot_id, str) else None,
            pid_ns=pid_ns if isinstance(pid_ns, int) and not isinstance(pid_ns, bool) else None,
        )

    def __str__(self) -> str:
        who = f"{self.user}@" if self.user else ""
        return f"{who}{self.host} pid {self.pid}"


_PID_MAX = 2**31 - 1
"""No pid is larger (Linux allows 2**22, others less): a larger one in a record is damage, not a process."""


def _start(value: Any) -> float | None:
    """A recorded start time; None when it is not a finite number (a damaged or foreign record)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        started = float(value)
    except OverflowError:
        return None
    return started if math.isfinite(started) else None


@functools.lru_cache(maxsize=4)
def _current(pid: int) -> Owner:
    try:
        user: str | None = getpass.getuser()
    except (KeyError, OSError):
        user = None
    return Owner(
        host=socket.gethostname(),
        pid=pid,
        started=start_time(pid),
        user=user,
        boot_id=_boot_id(),
        pid_ns=_pid_namespace(),
    )


@functools.lru_cache(maxsize=1)
def _boot_id() -> str | None:
    """This kernel's boot id (Linux; None elsewhere): another machine, or this one booted again, has another."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip() or None
    except (OSError, ValueError):
        return None


def _pid_namespace() -> int | None:
    """The inode of this process's pid namespace (Linux; None elsewhere): each container has its own."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def start_time(pid: int) -> float | None:
    """When a process started, comparable between calls on one host; None if it cannot be read or has ended.

    On Linux the 22nd field of ``/proc/<pid>/stat``, clock ticks since boot: exact, and the same
    for every reader; a zombie (ended, not yet reaped by its parent) counts as ended. Elsewhere
    ``ps -o lstart=``, to the second.
    """
    if sys.platform.startswith("linux"):
        fields = _proc_stat(pid)
        return None if fields is None or fields[0] in _ENDED else float(fields[19])
    try:
        done = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    text = done.stdout.strip()
    if done.returncode != 0 or not text:
        return None
    try:
        return time.mktime(time.strptime(text))
    except ValueError:
        return None


_ENDED = (b"Z", b"X")
"""``/proc`` states of a process that has ended: a zombie waits only for its parent to read its status."""


def _proc_stat(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or parentheses itself.
    return stat[stat.rindex(b")") + 2 :].split()


def _exists(pid: int) -> bool:
    """Whether a process with this pid exists (another user's too: signal 0 is then refused, not missing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # refused (another user's), or no pid at all: not known to be gone
        return True
    return True
