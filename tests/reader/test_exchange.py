"""Shared-memory hand-over of chunks: every dtype round-trips, files are removed, arrays stay writable."""

from __future__ import annotations

import os

import numpy as np

from sparkfeed.reader.exchange import Exchange


def test_every_kind_of_column_round_trips_in_order_and_writable() -> None:
    columns = {
        "id": np.arange(5, dtype=np.int64),
        "image": np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3),
        "name": np.array(["a", "bb", None, "d", "e"], dtype=object),
        "when": np.arange(5).astype("datetime64[us]"),
        "x": np.linspace(0, 1, 10, dtype=np.float32)[::2],  # not contiguous
        "empty": np.zeros((5, 0), dtype=np.float64),
    }
    exchange = Exchange()
    try:
        shared = exchange.export(columns)
        assert os.path.exists(shared.path)
        loaded = exchange.load(shared)
        assert not os.path.exists(shared.path)  # unlinked once mapped
        assert list(loaded) == list(columns)
        for name, array in columns.items():
            assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
            np.testing.assert_array_equal(loaded[name], array)
        loaded["image"][0, 0, 0, 0] = 200  # copy-on-write: writable, the worker's bytes untouched
        assert loaded["image"][0, 0, 0, 0] == 200
    finally:
        exchange.close()
    assert not os.path.exists(exchange.directory)


def test_close_removes_chunks_never_loaded() -> None:
    exchange = Exchange()
    shared = [exchange.export({"x": np.ones(10)}) for _ in range(3)]
    exchange.close()
    assert not any(os.path.exists(s.path) for s in shared)


def test_a_chunk_of_objects_only_needs_no_file() -> None:
    exchange = Exchange()
    shared = exchange.export({"s": np.array(["x"], dtype=object)})
    assert shared.path is None
    assert exchange.load(shared)["s"].tolist() == ["x"]
    exchange.close()
