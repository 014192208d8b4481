"""How far two cores can take the targets issue 13 misses: each loader's work, measured in one thread.

A loader on two cores is at best twice as fast as the same loader doing all its work in one
thread (``reader_pool_type="dummy"``: reading, decoding and batching in the loop's thread). Its
anchor's two-core speed-up is measured too, so the best a case can reach against its anchor is

    best two-core share = one-thread share x 2 / (the anchor's two-core speed-up)

where a share is the case's throughput over its anchor's. A target above that bound needs less
work per token (or row), not more parallelism. Printed for the sequences group (pad, bucket and
pack against fixed-length rows of the same tokens) and the mixing group (the plain cache mixed
with itself, rows and whole batches, against the cache alone), with each case's measured
two-core share beside it.

Usage (after ``make bench`` made the datasets; about a minute, alone on the machine)::

    .venv/bin/python benchmarks/bounds.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import source_path, spark_session, stop_spark

RUNS = 5
"""Epochs timed per loader, after one warm-up epoch. The fastest counts: on a shared machine noise
only ever slows a run, and best against best is the comparison most favourable to the case."""


def rate(make: Callable[[], Any], count: Callable[[dict[str, Any]], int]) -> float:
    """Units a second (``count`` of each batch: rows or tokens) of the fastest epoch of ``make``'s loader."""
    rates = []
    for run in range(RUNS + 1):
        units = 0
        started = time.perf_counter()
        with make() as batches:
            for batch in batches:
                units += count(batch)
        if run:
            rates.append(units / (time.perf_counter() - started))
    return max(rates)


def rows(batch: dict[str, Any]) -> int:
    """Rows in a batch."""
    return len(next(iter(batch.values())))


def tokens(batch: dict[str, Any]) -> int:
    """Values a batch carries: padded rows say their lengths, packed ones hold a value where the segment id is not 0."""
    if "tokens_lengths" in batch:
        return int(batch["tokens_lengths"].sum())
    if "tokens_segment_ids" in batch:
        return int((batch["tokens_segment_ids"] != 0).sum())
    return int(batch["tokens"].size)


def bound_row(name: str, one: float, two: float, anchor_one: float, anchor_two: float) -> str:
    """A table row from rates: the case's one-thread and two-core shares of its anchor, and the two-core bound."""
    share_one, share_two = one / anchor_one, two / anchor_two
    best = share_one * 2 / (anchor_two / anchor_one)
    return f"| {name} | {share_one:.0%} | {best:.0%} | {share_two:.0%} |"


def sequences(converters: dict[str, Any]) -> list[str]:
    from sparkfeed import Sequence

    modes = {
        "pad": ({"tokens": "pad"}, 256),
        "bucket": ({"tokens": "bucket"}, 256),
        "pack (16 x 4096)": ({"tokens": Sequence("pack", seq_len=4096)}, 16),
    }

    def epoch(converter: Any, pool: str, **kwargs: Any) -> float:
        kwargs.setdefault("batch_size", 256)
        return rate(lambda: converter.make_numpy_iterator(num_epochs=1, reader_pool_type=pool, **kwargs), tokens)

    fixed = converters["sequences_fixed"]
    anchor = epoch(fixed, "dummy"), epoch(fixed, "thread")
    table = [f"| fixed-length rows (the anchor): two-core speed-up {anchor[1] / anchor[0]:.2f} | 100% | — | 100% |"]
    for name, (sequence, batch_size) in modes.items():
        one = epoch(converters["sequences"], "dummy", sequence=sequence, batch_size=batch_size)
        two = epoch(converters["sequences"], "thread", sequence=sequence, batch_size=batch_size)
        table.append(bound_row(name, one, two, *anchor))
    return table


def mixing(converters: dict[str, Any]) -> list[str]:
    import sparkfeed

    plain = converters["tabular"]

    def epoch(source: Any, pool: str) -> float:
        return rate(lambda: source.make_numpy_iterator(batch_size=1024, num_epochs=1, reader_pool_type=pool), rows)

    anchor = epoch(plain, "dummy"), epoch(plain, "thread")
    table = [f"| the plain cache alone (the anchor): two-core speed-up {anchor[1] / anchor[0]:.2f} | 100% | — | 100% |"]
    for granularity, unit in (("row", "rows"), ("batch", "whole batches")):
        mixture = sparkfeed.mix({"a": plain, "b": plain}, {"a": 0.5, "b": 0.5}, seed=0, granularity=granularity)
        one, two = epoch(mixture, "dummy"), epoch(mixture, "thread")
        table.append(bound_row(f"mixed with itself, 0.5/0.5, {unit}", one, two, *anchor))
    return table


def main() -> None:
    from sparkfeed import make_spark_converter

    spark = spark_session("sparkfeed-bench-bounds")
    with tempfile.TemporaryDirectory(prefix="sparkfeed-bounds-") as scratch:
        converters = {
            name: make_spark_converter(spark.read.parquet(str(source_path(name))), cache_dir=scratch)
            for name in ("sequences", "sequences_fixed", "tabular")
        }
        stop_spark(spark)
        header = ["| case | one-thread share | best two-core share | measured two-core share |", "|---|---|---|---|"]
        print("\n".join(["Sequences: tokens/s against fixed-length rows of the same tokens", *header]))
        print("\n".join(sequences(converters)), flush=True)
        print("\n".join(["", "Mixing: rows/s against the plain cache alone (tabular, batch 1024)", *header]))
        print("\n".join(mixing(converters)), flush=True)
        for converter in converters.values():
            converter.delete()


if __name__ == "__main__":
    main()
