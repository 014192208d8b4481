"""Small helpers shared by the tests."""

from __future__ import annotations

import socket
from collections.abc import Iterable

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
