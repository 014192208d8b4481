"""Runs the Spark action that writes a cache: cancelled by Ctrl-C, and showing its progress.

A Spark action blocks the calling thread inside a py4j call. Ctrl-C there ran pyspark's SIGINT
handler, whose own py4j call (``cancelAllJobs``) then shared the blocked thread's connection:
the conversion died with a ``Py4JError`` and the job ran on. So the action runs in a thread of
its own, tagged, while the calling thread waits in Python, where a signal is handled cleanly:
on KeyboardInterrupt the tagged job is cancelled (``interruptTag``, classic and Connect alike),
the action is waited for, and the KeyboardInterrupt is raised, so that the caller removes what
was written and the user sees the interrupt they made.

The waiting thread also draws the progress bar: tasks done out of the job's tasks (from the
status tracker in classic Spark, from the server's progress messages under Spark Connect), with
the rows and files written where the writer counts them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

T = TypeVar("T")

_POLL_SECONDS = 0.25
_CANCEL_WAIT_SECONDS = 60.0
_SETTLE_SECONDS = 1.0


@dataclasses.dataclass
class Counters:
    """Rows and files written so far, where the writer reports them (Spark accumulators, classic only)."""

    rows: Any = None
    files: Any = None

    @classmethod
    def make(cls, spark: SparkSession) -> Counters:
        """Accumulators on a classic session; empty counters under Spark Connect, which has none."""
        if not is_classic(spark):
            return cls()
        context = spark.sparkContext
        return cls(context.accumulator(0), context.accumulator(0))

    def read(self) -> dict[str, int]:
        """The counts known now (accumulators merge as each task ends)."""
        return {name: int(acc.value) for name, acc in (("rows", self.rows), ("files", self.files)) if acc is not None}


def is_classic(spark: SparkSession) -> bool:
    """A session with a JVM in this process (not a Spark Connect client)."""
    return getattr(spark, "_jsparkSession", None) is not None


def run(
    spark: SparkSession,
    action: Callable[[], T],
    description: str,
    *,
    progress: bool = False,
    counters: Counters | None = None,
) -> T:
    """Runs ``action`` (which starts Spark jobs) so that Ctrl-C cancels its jobs, with a progress bar.

    Args:
        spark: The session the action's jobs run in.
        action: Starts the jobs and returns their result.
        description: What the jobs do, for the Spark UI and the progress bar.
        progress: Show a tqdm bar on stderr while the jobs run.
        counters: Rows and files the writer counts, shown on the bar.

    Raises:
        KeyboardInterrupt: Ctrl-C while the jobs ran; they were cancelled first.
        Exception: Whatever the action raised.
    """
    tag = f"sparkfeed-{uuid.uuid4().hex[:16]}"
    watch = _Watch(spark, tag, description)
    outcome: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            watch.enter()
            try:
                outcome.append((True, action()))
            finally:
                watch.leave()
        except BaseException as error:  # noqa: BLE001 - handed to the waiting thread, which raises it
            outcome.append((False, error))

    thread = _thread(spark, target)
    bar = _bar(description) if progress else None
    try:
        thread.start()
        while thread.is_alive():
            thread.join(_POLL_SECONDS)
            if bar is not None:
                watch.show(bar, counters)  # once more after the end: the final counts
        if bar is not None and outcome and outcome[0][0]:
            watch.settle(bar, counters)
    except BaseException:
        log.info("interrupted: cancelling the Spark jobs of %s", description)
        deadline = time.monotonic() + _CANCEL_WAIT_SECONDS
        while thread.is_alive() and time.monotonic() < deadline:
            watch.cancel()  # again each second: a job submitted after the first cancel carries the tag too
            thread.join(1.0)
        watch.wait_for_jobs()
        raise
    finally:
        if bar is not None:
            bar.close()
    succeeded, value = outcome[0]
    if not succeeded:
        raise value
    return value  # type: ignore[no-any-return]


def _thread(spark: SparkSession, target: Callable[[], None]) -> threading.Thread:
    """A thread that carries the caller's Spark local properties (job group, scheduler pool) along, or Connect tags.

    Under Spark Connect a tag (``spark.addTag``) is the calling thread's own: left behind, the
    conversion's operation was not the caller's, and ``spark.interruptTag(tag)``, which cancels
    the caller's other actions, left the conversion running to its end. The tags are copied
    here rather than by pyspark's ``InheritableThread(session=...)``, which copies them only
    where Connect mode is switched on for the whole process (``is_remote``).
    """
    if is_classic(spark):
        from pyspark import InheritableThread

        return InheritableThread(target, name="sparkfeed-spark-job", daemon=True)
    tags = set(spark.getTags())

    def tagged() -> None:
        for tag in tags:
            with contextlib.suppress(Exception):  # a tag not carried costs the caller's cancel only
                spark.addTag(tag)
        target()

    return threading.Thread(target=tagged, name="sparkfeed-spark-job", daemon=True)


def _bar(description: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=None, desc=description, unit="task", file=sys.stderr, dynamic_ncols=True, leave=True)


def _postfix(counts: dict[str, int]) -> dict[str, str]:
    """Counts as people read them: thousands separated, bytes in MiB."""
    return {name: f"{value / 2**20:,.1f} MiB" if name == "bytes" else f"{value:,}" for name, value in counts.items()}


class _Watch:
    """The jobs of one action: tagged for cancelling, looked up for progress."""

    def __init__(self, spark: SparkSession, tag: str, description: str) -> None:
        self._spark = spark
        self._tag = tag
        self._description = description
        self._classic = is_classic(spark)
        self._group: str | None = None
        self._jobs_before: set[int] = set()
        self._jobs: set[int] = set()
        self._stages: set[int] = set()
        self._connect_tasks: tuple[int, int] = (0, 0)
        self._handler: Any = None  # a callable; pyspark 4.3's stubs name it ProgressHandler, 4.0-4.2's Callable
        self._shown: tuple[Any, ...] | None = None

    def enter(self) -> None:
        """In the action's thread: tag its jobs, make them interruptible, note what ran before."""
        spark = self._spark
        spark.addTag(self._tag)
        if not self._classic:
            self._handler = self._on_connect_progress
            spark.registerProgressHandler(self._handler)
            return
        context = spark.sparkContext
        context.setLocalProperty("spark.job.interruptOnCancel", "true")
        context.setJobDescription(self._description)
        self._group = context.getLocalProperty("spark.jobGroup.id")
        if self._group is None:  # the caller's group, if any, stays: cancelling it still cancels us
            self._group = self._tag
            context.setLocalProperty("spark.jobGroup.id", self._group)
        self._jobs_before = set(context.statusTracker().getJobIdsForGroup(self._group))

    def leave(self) -> None:
        with contextlib.suppress(Exception):
            self._spark.removeTag(self._tag)
        if self._handler is not None:
            with contextlib.suppress(Exception):
                self._spark.removeProgressHandler(self._handler)

    def cancel(self) -> None:
        with contextlib.suppress(Exception):
            self._spark.interruptTag(self._tag)

    def _on_connect_progress(self, stages: Any, inflight_tasks: int, operation_id: Any, done: bool) -> None:
        stages = list(stages or ())
        self._connect_tasks = (sum(s.num_completed_tasks for s in stages), sum(s.num_tasks for s in stages))

    def tasks(self) -> tuple[int, int]:
        """Tasks done and tasks known of the action's jobs so far."""
        if not self._classic:
            return self._connect_tasks
        if self._group is None:
            return 0, 0
        tracker = self._spark.sparkContext.statusTracker()
        self._jobs.update(set(tracker.getJobIdsForGroup(self._group)) - self._jobs_before)
        for job in self._jobs:
            info = tracker.getJobInfo(job)
            if info is not None:
                self._stages.update(info.stageIds)
        done = total = 0
        for stage in self._stages:
            stage_info = tracker.getStageInfo(stage)
            if stage_info is not None:
                done, total = done + stage_info.numCompletedTasks, total + stage_info.numTasks
        return done, total

    def written(self) -> dict[str, int]:
        """Rows and bytes Spark's own writer reports for the stages (the live status store); empty elsewhere.

        The store is Spark's internal API (the Spark UI's source): where it is missing or
        changed, the bar shows tasks alone.
        """
        if not self._classic or not self._stages:
            return {}
        try:
            store = self._spark.sparkContext._jsc.sc().statusStore()
            attempts = [store.lastStageAttempt(stage) for stage in self._stages]
            rows = sum(int(attempt.outputRecords()) for attempt in attempts)
            size = sum(int(attempt.outputBytes()) for attempt in attempts)
        except Exception:  # noqa: BLE001 - Py4J errors of an internal API: show less, never fail
            return {}
        return {"rows": rows, "bytes": size} if rows else {}

    def show(self, bar: Any, counters: Counters | None) -> None:
        try:
            done, total = self.tasks()
            counts = {**self.written(), **(counters.read() if counters is not None else {})}
        except Exception:  # noqa: BLE001 - a progress bar never fails a conversion
            return
        if self._shown == (done, total, counts):
            return  # redrawn only when something moved: a log file gets one line per change
        self._shown = (done, total, counts)
        if total:
            bar.total = total
        bar.n = done
        if counts:
            bar.set_postfix(_postfix(counts), refresh=False)
        bar.refresh()

    def settle(self, bar: Any, counters: Counters | None) -> None:
        """The final counts of an action that succeeded, once Spark's status tracker has them.

        The tracker learns of the last tasks from Spark's listener bus, a little after the
        action returns: shown at once, a finished write's bar could stay at 3/4. It waits at most
        :data:`_SETTLE_SECONDS` (a skipped stage's tasks never complete), and only with a bar.
        """
        deadline = time.monotonic() + _SETTLE_SECONDS
        while True:
            self.show(bar, counters)
            try:
                done, total = self.tasks()
            except Exception:  # noqa: BLE001 - a progress bar never fails a conversion
                return
            if done >= total or time.monotonic() >= deadline:
                return
            time.sleep(_POLL_SECONDS / 5)

    def wait_for_jobs(self) -> None:
        """After a cancel, waits (a bounded time) until Spark shows none of the jobs running, nor their tasks.

        The action returns as soon as its job is failed, while the tasks are still being killed,
        and the status tracker learns both from Spark's listener bus, a little later: so the
        caller removes the partial cache only once nothing of the job can still write into it,
        and the user's session shows no job of it left.
        """
        deadline = time.monotonic() + _CANCEL_WAIT_SECONDS
        while self._classic and time.monotonic() < deadline:
            try:
                self.tasks()
                tracker = self._spark.sparkContext.statusTracker()
                jobs = [tracker.getJobInfo(job) for job in self._jobs]
                stages = [tracker.getStageInfo(stage) for stage in self._stages]
            except Exception:  # noqa: BLE001 - the session may be going down with the interrupt
                return
            running = any(job is not None and job.status == "RUNNING" for job in jobs)
            if not running and not any(stage is not None and stage.numActiveTasks for stage in stages):
                return
            time.sleep(_POLL_SECONDS)
