"""Whether the input is the bottleneck: a loader's counters, and the verdict logged after each epoch.

A training loop alternates between waiting for a batch (inside ``next()``) and its step (the
time from receiving one batch to asking for the next). The share of waiting is the answer to
"is my input the bottleneck?": near 0, the reader keeps ahead of the step; large, the step
idles while the reader works. Worker busy time then says why: workers busy all the time need
more of them (or processes, for a transform holding the GIL); idle workers with a waiting loop
need a deeper ``prefetch`` (latency, not throughput, is short).

The engine counts with two clock reads per batch and one per piece of work, so the counters
are always on; nothing is formatted unless the ``sparkfeed`` logger wants INFO.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

log = logging.getLogger(__name__)

INPUT_BOUND = 0.10
"""A share of waiting above which the log says the loop is input-bound and what may help."""


@dataclasses.dataclass
class Counters:
    """What a loader did, since it was made or since an epoch began.

    Attributes:
        batches: Batches yielded.
        rows: Rows in them.
        bytes: Bytes of their fixed-size arrays (numbers, dates, tensors; not strings or ragged).
        wait_seconds: Time the consumer spent inside ``next()`` waiting for a batch.
        step_seconds: Time between batches: the consumer's own work (the training step).
        busy_seconds: Time the workers spent reading, decoding and transforming pieces.
    """

    batches: int = 0
    rows: int = 0
    bytes: int = 0
    wait_seconds: float = 0.0
    step_seconds: float = 0.0
    busy_seconds: float = 0.0

    def add(self, other: Counters) -> None:
        """Adds another period's counts into these."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def report(self, workers: int) -> dict[str, Any]:
        """The counters with their rates and shares, as plain JSON-able numbers.

        Args:
            workers: The reader's workers, for their utilization (busy time over the time they had).
        """
        elapsed = self.wait_seconds + self.step_seconds
        return {
            **dataclasses.asdict(self),
            "seconds": elapsed,
            "input_bound": self.wait_seconds / elapsed if elapsed else 0.0,
            "rows_per_second": self.rows / elapsed if elapsed else 0.0,
            "bytes_per_second": self.bytes / elapsed if elapsed else 0.0,
            "workers": workers,
            "worker_utilization": self.busy_seconds / (workers * elapsed) if elapsed and workers else 0.0,
        }


def verdict(report: dict[str, Any], workers: int, pool_type: str) -> str:
    """One line saying whether the loop waited on its input, and what to try if it did."""
    share = report["input_bound"]
    rates = f"{report['rows_per_second']:,.0f} rows/s, {report['bytes_per_second'] / 1e6:,.1f} MB/s"
    if share < INPUT_BOUND:
        return f"not input-bound: {share:.0%} of step time waiting for data ({rates})"
    if pool_type == "dummy":
        advice = "reading happens in the loop's own thread: try reader_pool_type='thread'"
    elif report["worker_utilization"] >= 0.8:
        advice = f"the workers were busy: try workers_count={workers * 2}"
        if pool_type == "thread":
            advice += ", or reader_pool_type='process' for a transform that holds the GIL"
    else:
        advice = "the workers were idle part of the time: try a larger prefetch (latency, not throughput, is short)"
    return f"input-bound: {share:.0%} of step time waiting for data ({rates}); {advice}"


def bytes_per_row(batch: Any, rows: int) -> int:
    """The bytes a row adds to a batch's fixed-size arrays (NumPy, torch and JAX arrays have ``nbytes``)."""
    return batch_bytes(batch) // rows if rows else 0


def batch_bytes(batch: Any) -> int:
    """The bytes of a batch's fixed-size arrays: what the loader handed over, padding included."""
    if not isinstance(batch, dict):
        return 0
    total = 0
    for array in batch.values():
        dtype = getattr(array, "dtype", None)
        if dtype is None or getattr(dtype, "hasobject", False):
            continue  # strings, bytes and ragged arrays: their size is not the array's
        total += int(getattr(array, "nbytes", 0))
    return total
