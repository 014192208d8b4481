"""Small helpers shared by the tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterable
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
