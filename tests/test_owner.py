"""Owner: a creator recognised across pid reuse, on real processes."""

from __future__ import annotations

import os
import socket
import subprocess

from sparkfeed.owner import Liveness, Owner, start_time


def test_this_process_is_running_and_round_trips() -> None:
    me = Owner.current()
    assert (me.host, me.pid) == (socket.gethostname(), os.getpid()) and me.started is not None
    assert me.liveness() is Liveness.RUNNING
    assert Owner.from_dict(me.to_dict()) == me


def test_a_live_pid_with_another_start_time_is_not_the_creator() -> None:
    me = Owner.current()
    assert me.started is not None
    assert Owner(me.host, me.pid, me.started - 1).liveness() is Liveness.GONE


def test_a_process_is_running_until_it_ends_and_gone_after(tmp_path) -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        owner = Owner(socket.gethostname(), child.pid, start_time(child.pid))
        assert owner.started is not None and owner.liveness() is Liveness.RUNNING
        child.kill()
        child.wait()
        assert owner.liveness() is Liveness.GONE
    finally:
        child.kill()
        child.wait()


def test_a_zombie_counts_as_gone() -> None:
    child = subprocess.Popen(["sleep", "60"])
    owner = Owner(socket.gethostname(), child.pid, start_time(child.pid))
    os.kill(child.pid, 9)
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # ended, not reaped: a zombie
    try:
        assert owner.liveness() is Liveness.GONE
    finally:
        child.wait()


def test_another_host_or_a_record_without_start_time_is_never_gone_while_unsure() -> None:
    me = Owner.current()
    assert Owner("another-host.invalid", me.pid, me.started).liveness() is Liveness.UNKNOWN
    assert Owner(me.host, me.pid, None).liveness() is Liveness.UNKNOWN  # its pid lives: maybe the creator
    ended = subprocess.Popen(["true"])
    ended.wait()
    assert Owner(me.host, ended.pid, None).liveness() is Liveness.GONE  # no process has that pid


def test_records_that_are_not_owners_read_as_none() -> None:
    assert Owner.from_dict(None) is None
    assert Owner.from_dict({"host": "h", "pid": "12"}) is None
    assert Owner.from_dict({"host": "h", "pid": True}) is None
    assert Owner.from_dict({"host": "h", "pid": 12}) == Owner("h", 12)


def test_damaged_records_are_not_owners_and_are_never_gone() -> None:
    host = socket.gethostname()
    for pid in (2**70, 2**63, 0, -1):
        assert Owner.from_dict({"host": host, "pid": pid}) is None
        assert Owner(host, pid).liveness() is Liveness.UNKNOWN  # no process, but not a creator known gone
    assert Owner.from_dict({"host": host, "pid": 12, "started": 10**400}) == Owner(host, 12)
    assert Owner.from_dict({"host": host, "pid": 12, "started": float("nan")}) == Owner(host, 12)
