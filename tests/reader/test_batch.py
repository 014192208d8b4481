"""Re-cutting chunks into fixed-size batches, with a resumable position after each batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparkfeed.reader.batch import NUMPY, Batcher, NumpyFormat
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
    assert [fmt.rows(batch) for batch, _, _ in out] == expected
    if not out:
        return
    ids = np.concatenate([np.asarray(batch["id"]) for batch, _, _ in out])
    np.testing.assert_array_equal(ids, np.arange(total))
    img = np.concatenate([np.asarray(batch["img"]) for batch, _, _ in out])
    np.testing.assert_array_equal(img[:, 1, 2], ids)
    assert [str(s) for batch, _, _ in out for s in batch["s"]] == [str(i) for i in range(total)]


@pytest.mark.parametrize("batch_size", [1, 3, 4, 7])
def test_positions_say_where_the_next_row_is(batch_size: int) -> None:
    chunks = _chunks([5, 0, 3, 6])
    starts = {key: int(columns["id"][0]) if len(columns["id"]) else None for key, columns in chunks}
    for batch, key, consumed in Batcher(NUMPY, batch_size).batches(chunks):
        assert batch["id"][-1] == starts[key] + consumed - 1  # the last row handed out


def test_batches_inside_one_chunk_are_views() -> None:
    chunk = _chunks([12])
    parts = [batch for batch, _, _ in Batcher(NUMPY, 4).batches(chunk)]
    assert all(np.shares_memory(b["id"], chunk[0][1]["id"]) for b in parts)
    torch_format = TorchFormat()
    converted = torch_format.convert(chunk[0][1])
    views = [batch for batch, _, _ in Batcher(torch_format, 4).batches([(0, converted)])]
    assert all(v["img"].data_ptr() != 0 and v["img"]._base is converted["img"] for v in views)
    assert isinstance(views[0]["img"], torch.Tensor) and isinstance(views[0]["s"], list)


def test_a_consumer_that_stops_early_does_not_pay_for_the_whole_chunk() -> None:
    calls: list[int] = []

    class Counting(NumpyFormat):
        def split(self, chunk, sizes):
            calls.append(len(sizes))
            return super().split(chunk, sizes)

    batches = Batcher(Counting(), 1).batches(_chunks([100_000]))
    next(batches)
    assert calls == [65]  # 64 one-row batches and the rest, not 100,000 views
