"""Owner: a creator recognised across pid reuse, on real processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

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


WRITER = """
import sys, time
from sparkfeed.cache import create_cache_dir
from sparkfeed.location import Location
location, _ = create_cache_dir(Location.parse(sys.argv[1]))  # a cache being written: its marker names this process
print(location.local_path, flush=True)
time.sleep(120)
"""


def test_a_creator_in_another_pid_namespace_or_boot_is_never_gone(tmp_path) -> None:
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None
        recorded = json.loads((Path(writer.stdout.readline().strip()) / "_sparkfeed_cache.json").read_text())["owner"]
    finally:
        writer.kill()
        writer.wait()
    here = Owner.current()
    assert (recorded["boot_id"], recorded["pid_ns"]) == (here.boot_id, here.pid_ns) and here.pid_ns is not None
    assert Owner.from_dict(recorded).liveness() is Liveness.GONE  # this host, this namespace: certainly gone
    # The same record as a process of another container (same hostname, its own pid namespace) or of
    # another machine (its own boot) would write it: its pid means nothing here.
    assert Owner.from_dict({**recorded, "pid_ns": here.pid_ns + 1}).liveness() is Liveness.UNKNOWN
    assert Owner.from_dict({**recorded, "boot_id": "another-boot"}).liveness() is Liveness.UNKNOWN
    old = {key: recorded[key] for key in ("host", "pid", "started", "user")}  # sparkfeed before the fields
    assert Owner.from_dict(old).liveness() is Liveness.GONE
    assert Owner.from_dict(recorded) == Owner(**{**old, "boot_id": here.boot_id, "pid_ns": here.pid_ns})
