"""Exit cleanup: at a normal exit and on SIGTERM, chained, never in a forked child; real processes."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from sparkfeed import lifecycle, make_spark_converter
from sparkfeed.cache import collect, remove, scan
from sparkfeed.location import Location
from sparkfeed.owner import Liveness

from helpers import JobProcess, wait_until


def _cache_dirs(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("sparkfeed-"))


@pytest.fixture
def own_cleanups(monkeypatch) -> None:
    """A cleanup list of the test's own: running it must not delete the other tests' caches."""
    monkeypatch.setattr(lifecycle, "_cleanups", [])


def test_cleanups_run_once_in_reverse_order(own_cleanups) -> None:
    ran: list[str] = []
    lifecycle.at_exit(lambda: ran.append("first"))
    lifecycle.at_exit(lambda: ran.append("second"))
    lifecycle.run_cleanups()
    lifecycle.run_cleanups()
    assert ran == ["second", "first"]


def test_a_forked_child_does_not_run_its_parents_cleanups(own_cleanups, tmp_path) -> None:
    flag = tmp_path / "parent-cleanup-ran"
    lifecycle.at_exit(flag.touch)
    pid = os.fork()
    if pid == 0:  # the child: its exit must not run what the parent registered
        try:
            lifecycle.run_cleanups()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert not flag.exists()
    lifecycle.run_cleanups()
    assert flag.exists()


@pytest.mark.parametrize(
    "first",
    ["default", "thread", "thread-only"],
    ids=["main-thread", "first-cache-from-a-thread", "only-cache-from-a-thread-read-in-the-main-one"],
)
def test_sigterm_removes_the_caches_and_still_ends_the_process_by_sigterm(tmp_path, first) -> None:
    with JobProcess("lifecycle_job.py", "converted", str(tmp_path), first) as job:
        job.line()
        assert len(_cache_dirs(tmp_path)) == (2 if first == "thread" else 1)
        job.signal(signal.SIGTERM)
        assert job.wait() == -signal.SIGTERM, job.errors()
    assert _cache_dirs(tmp_path) == []


def test_a_users_sigterm_handler_is_kept_and_the_exit_it_chooses_cleans_up(tmp_path) -> None:
    with JobProcess("lifecycle_job.py", "converted", str(tmp_path), "user") as job:
        job.line()
        job.signal(signal.SIGTERM)
        assert job.wait() == 3, job.errors()  # the user's handler decided: sys.exit(3)
    assert (tmp_path / "user-handler-ran").read_text() == "yes"
    assert _cache_dirs(tmp_path) == []  # its normal exit ran the cleanup


def test_an_ignored_sigterm_stays_ignored_and_sigkill_leaves_an_orphan_for_collect(tmp_path) -> None:
    with JobProcess("lifecycle_job.py", "converted", str(tmp_path), "ignore") as job:
        job.line()
        job.signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            job.wait(timeout=3)  # still running: SIGTERM stays ignored, as the user set it
        (left,) = _cache_dirs(tmp_path)
        job.kill_group()
    parent = Location.parse(str(tmp_path))
    (entry,) = scan(parent)
    assert entry.location.url.endswith(left) and entry.state == "complete" and entry.liveness is Liveness.GONE
    assert [e.location for e in collect(parent)] == [entry.location]
    assert _cache_dirs(tmp_path) == []


def test_a_forked_child_does_not_keep_the_sigterm_handler() -> None:
    script = textwrap.dedent(
        """
        import os, signal
        from sparkfeed import lifecycle
        lifecycle.at_exit(lambda: None)  # from the main thread, over the default action: installed
        assert signal.getsignal(signal.SIGTERM) is lifecycle._on_sigterm
        pid = os.fork()
        if pid == 0:
            os._exit(0 if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL else 1)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"  # the child dies of SIGTERM at once, even blocked in C


@pytest.mark.parametrize("handler", ["default", "user"])
def test_a_child_forked_while_another_thread_holds_the_cleanup_locks_exits(handler) -> None:
    """The child gets locks of its own, also where the user's SIGTERM handler kept sparkfeed's off.

    The hook that gives them was registered only with sparkfeed's handler: under the user's, a
    child forked while a thread of the parent held the lock (registering a cache's cleanup)
    waited forever on it at its exit.
    """
    script = textwrap.dedent(
        f"""
        import os, signal, sys, threading
        from sparkfeed import lifecycle
        from sparkfeed.cache import owned_caches
        if {handler!r} == "user":
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
        lifecycle.at_exit(lambda: None)
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with lifecycle._lock, owned_caches._lock:
                held.set()
                release.wait()

        threading.Thread(target=hold, daemon=True).start()
        held.wait()
        pid = os.fork()
        if pid == 0:  # what a child's exit runs
            lifecycle.run_cleanups()
            owned_caches.delete_all()
            os._exit(0)
        release.set()
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as job:
        try:
            out, errors = job.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)  # the parent, and its child stuck on the lock
            job.communicate()
            pytest.fail("the forked child never exited: it waited on a lock its parent's thread held")
    assert job.returncode == 0, errors
    assert out.strip() == "0"


def test_clean_leaves_an_orphan_that_a_running_process_opened_by_its_url(tmp_path) -> None:
    # A killed job's complete cache may be read by its URL (what `cache ls` points at); `cache
    # clean` removed it under a job reading it, which then failed mid-epoch.
    with JobProcess("lifecycle_job.py", "converted", str(tmp_path), "default") as creator:
        url = creator.line()["cache"]
        creator.kill_group()
    parent = Location.parse(str(tmp_path))
    with JobProcess("lifecycle_job.py", "read", url) as reader:
        assert reader.line()["rows"] == 100
        (entry,) = scan(parent)
        assert entry.orphaned and entry.in_use
        assert collect(parent) == [] and collect(parent, older_than=datetime.timedelta(0)) == []
        with pytest.raises(PermissionError, match="in use"):
            remove(entry.location)
        assert len(_cache_dirs(tmp_path)) == 1
        reader.kill_group()
    assert [e.location for e in collect(parent)] == [entry.location]  # once nobody reads it
    assert _cache_dirs(tmp_path) == []


def _stopped_mid_keep(parent: Path, probe: Path, stop: Callable[[JobProcess], None]) -> None:
    """A keep=True conversion into ``parent``, stopped by ``stop`` once its first task runs."""
    with JobProcess("lifecycle_job.py", "convert", str(parent), "0", str(probe), "keep") as job:
        job.line()
        wait_until(lambda: any(probe.iterdir()), what="the first task of the write")
        assert len(_cache_dirs(parent)) == 1
        stop(job)


def test_sigterm_mid_write_of_a_kept_cache_removes_it(tmp_path) -> None:
    # keep=True caches were never this process's to remove, so SIGTERM mid-write left a partial
    # one, which no later conversion removed either (only `cache clean` did).
    parent, probe = tmp_path / "caches", tmp_path / "probe"
    probe.mkdir()

    def terminate(job: JobProcess) -> None:
        job.signal(signal.SIGTERM)
        assert job.wait() == -signal.SIGTERM, job.errors()

    _stopped_mid_keep(parent, probe, terminate)
    assert _cache_dirs(parent) == []


def test_a_kept_cache_whose_writer_was_killed_is_removed_by_the_next_conversion(spark, tmp_path) -> None:
    parent, probe = tmp_path / "caches", tmp_path / "probe"
    probe.mkdir()
    _stopped_mid_keep(parent, probe, JobProcess.kill_group)
    (entry,) = scan(Location.parse(str(parent)))
    assert (entry.state, entry.kept, entry.liveness) == ("partial", True, Liveness.GONE)
    converter = make_spark_converter(spark.range(3), cache_dir=str(parent))  # collects on its way
    assert _cache_dirs(parent) == [converter.location.name]
    converter.delete()
