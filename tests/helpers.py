"""Small helpers shared by the tests."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np


def concat(batches: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """All batches of a loader joined into one dict of arrays."""
    parts: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        for name, array in batch.items():
            parts.setdefault(name, []).append(np.asarray(array))
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


def by_id(columns: dict[str, np.ndarray], key: str = "id") -> dict[str, np.ndarray]:
    """Columns reordered by ascending ``key``: shuffled reads compare with sorted collects."""
    order = np.argsort(columns[key], kind="stable")
    return {name: array[order] for name, array in columns.items()}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for the test's own servers)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_job(script: str, *args: str, cwd: Path, timeout: float = 300) -> dict[str, Any]:
    """Runs one of the tests' job scripts in a process of its own; returns the JSON line it printed last."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name(script)), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def join_gloo_rank(converter_path: str) -> tuple[int, int, Any]:
    """In a job started by :func:`run_gloo_ranks`: this rank, the world size, and the pickled converter, gloo joined."""
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    with open(converter_path, "rb") as handle:
        return rank, world, pickle.load(handle)


def leave_gloo(batches: int, world: int) -> list[int]:
    """Every rank's batch count (an all-gather: a rank short of batches would hang the others first), then leave."""
    import torch
    import torch.distributed as dist

    counts = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([float(batches)]))
    dist.destroy_process_group()
    return [int(count) for count in counts]


def run_gloo_ranks(script: str, *args: str, world: int = 2, timeout: float = 240) -> list[dict[str, Any]]:
    """Runs a job script as ``world`` real torch.distributed ranks on 127.0.0.1; their last JSON lines, by rank."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(world)}
    job = Path(__file__).with_name(script)
    ranks = [
        subprocess.Popen(
            [sys.executable, str(job), *args],
            env={**env, "RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]
    outputs = []
    try:
        for process in ranks:
            out, err = process.communicate(timeout=timeout)
            assert process.returncode == 0, err[-3000:]
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in ranks:
            process.kill()
    return outputs


class JobProcess:
    """One of the tests' job scripts in a process group of its own, read line by line as it runs.

    For tests that signal or kill a job mid-way: :meth:`line` waits for its next JSON line,
    :meth:`kill_group` ends it with everything it started (its JVM, Spark's Python workers, its
    reader processes), as an out-of-memory kill or a lost node would. Leaving the ``with``
    block kills whatever is left.
    """

    def __init__(self, script: str, *args: str, umask: int | None = None) -> None:
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - open as long as the job runs
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name(script)), *args],
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            start_new_session=True,
            env={**os.environ, "PYSPARK_PYTHON": sys.executable},
            preexec_fn=None if umask is None else (lambda: os.umask(umask)),
        )

    def line(self, timeout: float = 180) -> dict[str, Any]:
        """The job's next JSON line (other output is skipped)."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.process.stdout], [], [], max(left, 0))
            assert ready, f"no line from the job within {timeout} s:\n{self.errors()}"
            text = self.process.stdout.readline()
            assert text, f"the job ended (rc {self.process.wait()}) without the line expected:\n{self.errors()}"
            if text.startswith("{"):
                return dict(json.loads(text))

    def errors(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-4000:]

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 120) -> int:
        return self.process.wait(timeout)

    def kill_group(self) -> None:
        """SIGKILL to the job and all it started; returns once the job itself is reaped."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(60)

    def __enter__(self) -> JobProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None or _group_alive(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(60)
        self.stderr.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(condition: Callable[[], bool], timeout: float = 60, what: str = "the condition") -> None:
    """Polls ``condition`` until it holds; fails naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.1)
