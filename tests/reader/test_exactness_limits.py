"""Bucketed batches held to one count per shard: an endless loader must end where some shard makes none.

Real Parquet written with pyarrow and a manifest made by hand, no Spark. Shard 0's rows fill a
batch of their bucket, shard 1's rows are one or two per bucket: with ``drop_last`` shard 1 makes
no batch in any epoch, so every shard is held to none (see ``Reader._limit``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparkfeed import Sequence
from sparkfeed.cache import FileEntry, Manifest
from sparkfeed.options import reader_options
from sparkfeed.reader import Reader
from sparkfeed.writer import list_shape_stats

LENGTHS = [1, 2, 3, 4, 1, 9, 20, 12]
"""Shard 0 of 2: four rows of bucket 8. Shard 1: one of bucket 8, two of 16, one of 64."""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    root = tmp_path_factory.mktemp("limits")
    offsets = np.concatenate([[0], np.cumsum(LENGTHS)]).astype(np.int32)
    tokens = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.arange(offsets[-1], dtype=np.int64)))
    table = pa.table({"id": pa.array(np.arange(len(LENGTHS)), pa.int64()), "tok": tokens})
    pq.write_table(table, root / "p.parquet", row_group_size=4)
    manifest = Manifest(
        files=(FileEntry("p.parquet", (4, 4)),),
        schema=table.schema,
        shapes={"tok": list_shape_stats(tokens)},
        options={},
        key="limits",
    )
    return root, manifest


def _reader(dataset: tuple[Path, Manifest], shard: int, num_epochs: int | None) -> Reader[Any]:
    root, manifest = dataset
    options = reader_options(
        batch_size=3,
        drop_last=True,
        num_epochs=num_epochs,
        seed=1,
        shuffle_row_groups=False,
        workers_count=1,
        cur_shard=shard,
        shard_count=2,
        shard_policy="drop",
        sequence={"tok": Sequence("bucket", buckets=(8, 16, 64))},
    )
    return Reader(root.as_uri(), manifest, options)


def test_every_shard_is_held_to_the_fewest_batches_even_none(dataset) -> None:
    """The premise: shard 1 makes no batch, so shard 0, which could make one, yields none either."""
    assert [len(_reader(dataset, shard, 2)) for shard in range(2)] == [0, 0]
    assert [len(list(_reader(dataset, shard, 2))) for shard in range(2)] == [0, 0]


@pytest.mark.parametrize("shard", [0, 1])
def test_an_endless_loader_held_to_no_batch_raises_on_every_shard_instead_of_hanging(dataset, shard: int) -> None:
    """Shard 0 had no segment to read in any epoch, so nothing ever reached the check of epochs without a batch.

    Its iterator went through epochs forever inside ``next()`` without yielding or raising,
    while shard 1, which reads its rows and makes no batch, raised: a DDP rank that hung.
    """
    reader = _reader(dataset, shard, None)
    outcome: list[BaseException | object] = []

    def first() -> None:
        try:
            outcome.append(next(iter(reader)))
        except BaseException as error:  # noqa: BLE001 (the test looks at what it was)
            outcome.append(error)

    thread = threading.Thread(target=first, daemon=True)
    thread.start()
    thread.join(30)
    assert outcome, "next() neither yielded nor raised in 30 s"
    assert isinstance(outcome[0], ValueError)
    assert "gave no batch" in str(outcome[0]) and "num_epochs=None would wait forever" in str(outcome[0])
