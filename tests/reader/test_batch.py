"""Re-cutting chunks into fixed-size batches, with a resumable position after each batch."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sparkfeed.reader.batch import NUMPY, SPLIT_GROUP, Batcher, NumpyFormat
from sparkfeed.torch import TorchFormat


def _chunks(sizes: list[int]) -> list[tuple[int, dict[str, np.ndarray]]]:
    chunks, start = [], 0
    for index, size in enumerate(sizes):
        ids = np.arange(start, start + size)
        img = np.repeat(ids, 6).reshape(size, 2, 3).astype(np.float32)
        chunks.append((index, {"id": ids, "img": img, "s": ids.astype(str).astype(object)}))
        start += size
    return chunks


@pytest.mark.parametrize("fmt", [NUMPY, TorchFormat()], ids=["numpy", "torch"])
@pytest.mark.parametrize("sizes", [[10], [3, 3, 3], [1] * 9, [0, 7, 0, 2], [25, 1, 4], [], [300, 5, 131]])
@pytest.mark.parametrize("batch_size", [1, 4, 9, 100])
def test_batches_are_full_except_the_last_and_keep_order(fmt, sizes: list[int], batch_size: int) -> None:
    chunks = [(key, fmt.convert(columns)) for key, columns in _chunks(sizes)]
    out = list(Batcher(fmt, batch_size).batches(chunks))
    total = sum(sizes)
    expected = [batch_size] * (total // batch_size) + ([total % batch_size] if total % batch_size else [])
    assert [fmt.rows(batch) for batch, *_ in out] == expected
    assert [rows for *_, rows in out] == expected  # the rows it says are the rows it holds
    if not out:
        return
    ids = np.concatenate([np.asarray(batch["id"]) for batch, *_ in out])
    np.testing.assert_array_equal(ids, np.arange(total))
    img = np.concatenate([np.asarray(batch["img"]) for batch, *_ in out])
    np.testing.assert_array_equal(img[:, 1, 2], ids)
    assert [str(s) for batch, *_ in out for s in batch["s"]] == [str(i) for i in range(total)]


@pytest.mark.parametrize("batch_size", [1, 3, 4, 7])
def test_positions_say_where_the_next_row_is(batch_size: int) -> None:
    chunks = _chunks([5, 0, 3, 6])
    starts = {key: int(columns["id"][0]) if len(columns["id"]) else None for key, columns in chunks}
    for batch, key, consumed, _ in Batcher(NUMPY, batch_size).batches(chunks):
        assert batch["id"][-1] == starts[key] + consumed - 1  # the last row handed out


def test_batches_inside_one_chunk_are_views() -> None:
    chunk = _chunks([12])
    parts = [batch for batch, *_ in Batcher(NUMPY, 4).batches(chunk)]
    assert all(np.shares_memory(b["id"], chunk[0][1]["id"]) for b in parts)
    torch_format = TorchFormat()
    converted = torch_format.convert(chunk[0][1])
    views = [batch for batch, *_ in Batcher(torch_format, 4).batches([(0, converted)])]
    assert all(v["img"].data_ptr() != 0 and v["img"]._base is converted["img"] for v in views)
    assert isinstance(views[0]["img"], torch.Tensor) and isinstance(views[0]["s"], list)


def _reference(sizes: list[int], batch_size: int, drop_last: bool) -> list[tuple[list[int], int, int]]:
    """The batches cut from all rows at once: ids, and the chunk and rows of it consumed by the last id."""
    owner = [(key, row + 1) for key, size in enumerate(sizes) for row in range(size)]
    total = len(owner)
    starts = range(0, total - total % batch_size if drop_last else total, batch_size)
    return [
        (list(range(start, min(start + batch_size, total))), *owner[min(start + batch_size, total) - 1])
        for start in starts
    ]


@pytest.mark.parametrize("fmt", [NUMPY, TorchFormat()], ids=["numpy", "torch"])
@pytest.mark.parametrize("sizes", [[5, 0, 3, 6], [1] * 7, [200, 3, 0, 129, 64], [4, 4], [0]])
@pytest.mark.parametrize("batch_size", [1, 2, 4, 7, 64, 1000])
@pytest.mark.parametrize("drop_last", [False, True], ids=["keep_last", "drop_last"])
def test_batches_and_positions_equal_a_plain_recut(fmt, sizes: list[int], batch_size: int, drop_last: bool) -> None:
    chunks = [(key, fmt.convert(columns)) for key, columns in _chunks(sizes)]
    got = [
        (np.asarray(batch["id"]).tolist(), key, consumed)
        for batch, key, consumed, _ in Batcher(fmt, batch_size, drop_last).batches(chunks)
    ]
    assert got == _reference(sizes, batch_size, drop_last)


@given(
    sizes=st.lists(st.integers(0, 300), max_size=12),
    batch_size=st.integers(1, 130),
    drop_last=st.booleans(),
)
def test_any_chunking_gives_the_batches_and_positions_of_a_plain_recut(
    sizes: list[int], batch_size: int, drop_last: bool
) -> None:
    got = [
        (batch["id"].tolist(), key, consumed)
        for batch, key, consumed, _ in Batcher(NUMPY, batch_size, drop_last).batches(_chunks(sizes))
    ]
    assert got == _reference(sizes, batch_size, drop_last)


def test_positions_name_the_chunk_of_the_last_row_and_rows_consumed_of_it() -> None:
    out = [
        (b["id"].tolist(), key, consumed) for b, key, consumed, _ in Batcher(NUMPY, 4).batches(_chunks([5, 0, 3, 6]))
    ]
    assert out == [([0, 1, 2, 3], 0, 4), ([4, 5, 6, 7], 2, 3), ([8, 9, 10, 11], 3, 4), ([12, 13], 3, 6)]
    dropped = [
        (key, consumed) for _, key, consumed, _ in Batcher(NUMPY, 4, drop_last=True).batches(_chunks([5, 0, 3, 6]))
    ]
    assert dropped == [(0, 4), (2, 3), (3, 4)]


class _CountingViews(NumpyFormat):
    """The NumPy format, counting the batch views its splits make."""

    def __init__(self) -> None:
        self.views = 0

    def split(self, chunk, *args):  # type: ignore[no-untyped-def]
        parts = super().split(chunk, *args)
        self.views += len(parts)
        return parts


HUGE = 10**12
"""Rows of a chunk whose arrays are broadcast (no memory): any per-row work would never end."""


def test_batches_of_a_huge_chunk_cost_only_their_own_views() -> None:
    fmt = _CountingViews()
    chunk = {"x": np.broadcast_to(np.float32(1.5), (HUGE,)), "v": np.broadcast_to(np.arange(3), (HUGE, 3))}
    batches = Batcher(fmt, 1).batches([("only", chunk)])
    first = list(itertools.islice(batches, 200))
    assert [(len(b["x"]), key, consumed) for b, key, consumed, _ in first] == [(1, "only", n) for n in range(1, 201)]
    assert first[0][0]["v"].tolist() == [[0, 1, 2]]
    assert fmt.views <= 200 + SPLIT_GROUP  # a split per SPLIT_GROUP batches, nothing per row of the chunk


def test_torch_batches_of_a_huge_chunk_cost_only_their_own_views() -> None:
    chunk = {"x": torch.ones(1).expand(HUGE), "m": torch.arange(6).reshape(1, 2, 3).expand(HUGE, 2, 3)}
    batches = Batcher(TorchFormat(), 3).batches([(7, chunk)])
    first = list(itertools.islice(batches, 100))
    assert [(b["x"].shape, b["m"].shape, key, consumed) for b, key, consumed, _ in first] == [
        (torch.Size([3]), torch.Size([3, 2, 3]), 7, 3 * n) for n in range(1, 101)
    ]


class _CountingList(list):  # type: ignore[type-arg]
    """A list column that counts the elements its slices copy."""

    copied = 0

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        item = super().__getitem__(index)
        if isinstance(index, slice):
            _CountingList.copied += len(item)
        return item


def test_string_columns_are_copied_once_per_batch_not_once_per_split() -> None:
    rows = 100_000
    fmt = TorchFormat()
    chunk = fmt.convert({"id": np.arange(rows)})
    chunk["s"] = _CountingList(str(i) for i in range(rows))
    _CountingList.copied = 0
    batches = Batcher(fmt, 1).batches([(0, chunk)])
    assert next(batches)[0]["s"] == ["0"]
    assert _CountingList.copied <= SPLIT_GROUP  # not the 99,936 rows that follow the first split
    assert sum(len(batch["s"]) for batch, *_ in batches) == rows - 1
    assert _CountingList.copied == rows


def test_a_consumer_that_stops_early_does_not_pay_for_the_whole_chunk() -> None:
    fmt = _CountingViews()
    batches = Batcher(fmt, 1).batches(_chunks([100_000]))
    next(batches)
    assert fmt.views <= SPLIT_GROUP  # one split of SPLIT_GROUP one-row batches, not 100,000 views


@pytest.mark.parametrize("fmt", [NUMPY, TorchFormat()], ids=["numpy", "torch"])
def test_chunks_must_keep_the_first_chunks_dtypes_and_row_shapes(fmt) -> None:
    def run(*chunks: dict[str, np.ndarray]) -> int:
        converted = [(key, fmt.convert(columns)) for key, columns in enumerate(chunks)]
        return sum(fmt.rows(batch) for batch, *_ in Batcher(fmt, 2).batches(converted))

    first = {"x": np.zeros(3, np.float32), "s": np.array(["a", "b", "c"], dtype=object), "m": np.zeros((3, 2))}
    widths = {"x": np.ones(2, np.float32), "s": np.array(["long", 7, None], dtype=object)[:2], "m": np.ones((2, 2))}
    empty = {"x": np.zeros(0, np.int8)}
    rows = "object" if fmt is NUMPY else "list"  # a column of rows: strings, bytes, arrays
    assert run(first, empty, widths, first) == 8  # strings and objects vary in content, empty chunks are skipped
    changed = [
        (
            {**first, "x": np.zeros(3, np.float64)},
            "column 'x' was float32 with shape () and is now float64 with shape ()",
        ),
        ({**first, "m": np.zeros((3, 3))}, "column 'm' was float64 with shape (2,) and is now float64 with shape (3,)"),
        ({"x": first["x"], "m": first["m"]}, "column 's' was "),
        ({**first, "y": np.zeros(3)}, "column 'y' was missing and is now float64 with shape ()"),
        (  # rows of arrays one chunk stacked (they shared a shape) and another could not
            {**first, "m": np.array([np.zeros(1), np.zeros(2), np.zeros(3)], dtype=object)},
            f"column 'm' was float64 with shape (2,) and is now {rows} with shape (); every chunk must have the same "
            "columns, dtypes and per-row shapes (only the contents of strings and objects may vary): if its rows are "
            "arrays whose shape varies, declare it in TransformSpec edit_fields as ('m', <dtype>, (None,), False)",
        ),
        (  # strings then numbers: no arrays, no such advice
            {**first, "s": np.zeros(3)},
            f"column 's' was {rows} with shape () and is now float64 with shape (); every chunk must have the same "
            "columns, dtypes and per-row shapes (only the contents of strings and objects may vary): make the "
            "transform return",
        ),
    ]
    for chunk, message in changed:
        with pytest.raises(ValueError, match=re.escape(f"the transform's output changed between chunks: {message}")):
            run(first, chunk)


def test_numpy_concat_names_the_column_whose_parts_differ() -> None:
    parts = [{"x": np.zeros(2, np.float32)}, {"x": np.zeros(2, np.int64)}]
    with pytest.raises(ValueError, match=re.escape("column 'x' was float32 with shape () and is now int64")):
        NUMPY.concat(parts)  # the reader joins a shuffle window's pieces with it, before any batch
    strings = [{"s": np.array(["a"])}, {"s": np.array(["bcd"])}]
    assert NUMPY.concat(strings)["s"].tolist() == ["a", "bcd"]


def test_whole_batcher_yields_each_chunk_as_it_is_and_checks_its_columns() -> None:
    """``whole=True`` (a mixture of whole batches cuts the chunks itself): no cut, no join, no empty chunk."""
    chunks = [np.arange(5), np.arange(0), np.arange(5, 12)]
    batcher = Batcher(NUMPY, 4, whole=True)
    out = list(batcher.batches((k, {"x": c}) for k, c in enumerate(chunks)))
    assert [(key, consumed, rows) for _, key, consumed, rows in out] == [(0, 5, 5), (2, 7, 7)]
    assert out[0][0]["x"] is chunks[0] and out[1][0]["x"] is chunks[2]
    with pytest.raises(ValueError, match="column 'x' was int64"):
        list(Batcher(NUMPY, 4, whole=True).batches([(0, {"x": np.arange(3)}), (1, {"x": np.zeros(3)})]))
