"""``Reader.state_after``: a state moved on by some rows resumes exactly after those rows, whatever the state.

Real Parquet written with pyarrow and a manifest made by hand, no Spark: each case reads a few
dozen rows. The ground truth is the uninterrupted reader's rows (batches of one row), and a
moved state is judged by what a new reader that loads it yields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkfeed.cache import FileEntry, Manifest
from sparkfeed.options import reader_options
from sparkfeed.reader import Reader
from sparkfeed.reader.state import ReaderState

ROWS = 10


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    """Ids 0..9 in one file of row groups of 4, 4 and 2 rows."""
    root = tmp_path_factory.mktemp("state_after")
    pq.write_table(pa.table({"id": pa.array(np.arange(ROWS), pa.int64())}), root / "p.parquet", row_group_size=4)
    manifest = Manifest(
        files=(FileEntry("p.parquet", (4, 4, 2)),),
        schema=pa.schema([("id", pa.int64())]),
        shapes={},
        options={},
        key="state-after",
    )
    return root, manifest


def _reader(dataset: tuple[Path, Manifest], **options: Any) -> Reader[Any]:
    root, manifest = dataset
    return Reader(root.as_uri(), manifest, reader_options(batch_size=1, workers_count=1, **options))


def _ids(reader: Reader[Any]) -> list[int]:
    return [int(batch["id"][0]) for batch in reader]


def _resumed(dataset: tuple[Path, Manifest], state: ReaderState, **options: Any) -> list[int]:
    reader = _reader(dataset, **options)
    reader.load_state_dict(state.to_dict())
    return _ids(reader)


@pytest.mark.parametrize("num_epochs", [1, 2, 3])
def test_rows_moved_on_from_a_state_saved_before_the_first_batch_keep_the_iterations_end(dataset, num_epochs) -> None:
    """Before its first batch a state records no end; rows moved on past an epoch must not start ``num_epochs`` anew.

    The state said "an iteration of ``num_epochs`` epochs from epoch 0": moved past epoch 0, it
    kept no end, and the reader loading it ran ``num_epochs`` more epochs from there.
    """
    options = {"num_epochs": num_epochs, "seed": 3, "shuffling_queue_capacity": 3}
    whole = _ids(_reader(dataset, **options))
    reader = _reader(dataset, **options)
    before = ReaderState.from_dict(reader.state_dict())
    for rows in (0, 3, ROWS, ROWS + 3, ROWS * num_epochs):
        if rows <= len(whole):
            assert _resumed(dataset, reader.state_after(before, rows), **options) == whole[rows:]


def test_rows_moved_on_from_a_state_saved_after_the_last_batch_are_the_next_iterations(dataset) -> None:
    """A finished iteration's state moved on by rows stands inside the next iteration, not at its start again.

    It kept ``end_epoch`` equal to its epoch, so a reader loading it took it for a finished
    iteration and started the next epoch from its first row: the rows moved past came again.
    """
    options = {"num_epochs": 2, "seed": 5, "shuffling_queue_capacity": 3}
    reader = _reader(dataset, **options)
    _ids(reader)
    after = ReaderState.from_dict(reader.state_dict())
    following = _ids(reader)  # the next iteration, uninterrupted
    for rows in (0, 1, 7, ROWS, ROWS + 4, 2 * ROWS):
        assert _resumed(dataset, reader.state_after(after, rows), **options) == following[rows:]


@settings(max_examples=30, deadline=None)
@given(
    num_epochs=st.integers(1, 3),
    shuffle=st.booleans(),
    window=st.sampled_from([0, 1, 5]),
    saved_at=st.one_of(st.sampled_from([0, -2, -1]), st.integers(0, 40)),
    moved=st.integers(0, 40),
)
def test_property_a_moved_state_resumes_after_exactly_the_rows_moved_past(
    dataset, num_epochs: int, shuffle: bool, window: int, saved_at: int, moved: int
) -> None:
    """Saved after any batch, before the first or after the end, and moved on by any rows the iteration has left."""
    options = {"num_epochs": num_epochs, "seed": 8, "shuffle_row_groups": shuffle, "shuffling_queue_capacity": window}
    reader = _reader(dataset, **options)
    states = [ReaderState.from_dict(reader.state_dict())]
    whole = []
    for batch in reader:
        whole.append(int(batch["id"][0]))
        states.append(ReaderState.from_dict(reader.state_dict()))
    states.append(ReaderState.from_dict(reader.state_dict()))  # after the iteration ended
    saved_at %= len(states)  # 0: before the first batch; -2: after the last; -1: after the iteration's end
    rest = whole[saved_at:]
    if saved_at == len(states) - 1:  # the finished iteration's state: the rows are the next iteration's
        rest = _ids(reader)
    moved %= len(rest) + 1
    state = reader.state_after(states[saved_at], moved)
    assert _resumed(dataset, state, **options) == rest[moved:]
