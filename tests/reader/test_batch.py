"""Re-cutting chunks into fixed-size batches."""

from __future__ import annotations

import numpy as np
import pytest

from sparkfeed.reader.batch import batches, num_rows


def _chunks(sizes: list[int]) -> list[dict[str, np.ndarray]]:
    chunks, start = [], 0
    for size in sizes:
        ids = np.arange(start, start + size)
        chunks.append({"id": ids, "img": np.repeat(ids, 6).reshape(size, 2, 3), "s": ids.astype(str).astype(object)})
        start += size
    return chunks


@pytest.mark.parametrize("sizes", [[10], [3, 3, 3], [1] * 9, [0, 7, 0, 2], [25, 1, 4], []])
@pytest.mark.parametrize("batch_size", [1, 4, 9, 100])
def test_batches_are_full_except_the_last_and_keep_order(sizes: list[int], batch_size: int) -> None:
    out = list(batches(_chunks(sizes), batch_size))
    total = sum(sizes)
    assert [num_rows(b) for b in out] == [batch_size] * (total // batch_size) + (
        [total % batch_size] if total % batch_size else []
    )
    if out:
        ids = np.concatenate([b["id"] for b in out])
        np.testing.assert_array_equal(ids, np.arange(total))
        np.testing.assert_array_equal(np.concatenate([b["img"] for b in out])[:, 1, 2], ids)
        assert list(np.concatenate([b["s"] for b in out])) == [str(i) for i in range(total)]


def test_batches_inside_one_chunk_are_views() -> None:
    (chunk,) = _chunks([12])
    first, second, third = batches([chunk], 4)
    assert all(np.shares_memory(b["id"], chunk["id"]) for b in (first, second, third))
    spanning = next(iter(batches(_chunks([3, 3]), 4)))
    assert spanning["id"].tolist() == [0, 1, 2, 3]
