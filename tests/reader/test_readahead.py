"""Reading ahead: which row groups a span may cover, its byte ranges, the budget, and a failed fetch."""

from __future__ import annotations

import io
import itertools
import pathlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkfeed.reader.plan import Piece
from sparkfeed.reader.readahead import ReadAhead, SpanFile, coalesce, column_ranges, follow_counts


def test_follow_counts_count_the_next_row_groups_of_the_same_file_in_order() -> None:
    pieces = [Piece(0, 3, 0, 1), Piece(0, 4, 0, 1), Piece(0, 5, 0, 1), Piece(1, 0, 0, 1), Piece(1, 2, 0, 1)]
    assert follow_counts(pieces) == [2, 1, 0, 0, 0]
    assert follow_counts([Piece(0, 1, 0, 5), Piece(0, 1, 5, 9), Piece(0, 2, 0, 9)]) == [0, 1, 0]  # one group twice
    assert follow_counts([]) == []


@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 500)), max_size=30), st.integers(0, 300))
def test_coalesced_ranges_cover_every_range_in_order_and_leave_only_big_holes(
    ranges: list[tuple[int, int]], hole: int
) -> None:
    merged = coalesce(ranges, hole)
    for start, length in ranges:
        assert any(m <= start and start + length <= m + size for m, size in merged)
    for (first, size), (following, _) in itertools.pairwise(merged):
        assert following > first + size + hole  # otherwise they would have been one request
    assert sum(size for _, size in merged) <= sum(length for _, length in ranges) + hole * len(ranges)


def _parquet(tmp_path, groups: int = 6, rows: int = 1_000) -> tuple[str, pq.FileMetaData, pa.Table]:
    table = pa.table(
        {
            "id": np.arange(groups * rows),
            "x": np.arange(groups * rows, dtype=np.float64) / 3,
            "s": ["a"] * (groups * rows),
        }
    )
    path = str(tmp_path / "data.parquet")
    pq.write_table(table, path, row_group_size=rows)
    return path, pq.read_metadata(path), table


def _decode(footer: pq.FileMetaData, group: int, columns: list[str]):
    def decode(source: SpanFile) -> pa.Table:
        return pq.ParquetFile(source, metadata=footer, pre_buffer=False).read_row_group(group, columns=columns)

    return decode


def test_a_row_group_decoded_from_its_span_equals_a_plain_read(tmp_path) -> None:
    path, footer, _ = _parquet(tmp_path)
    read_ahead = ReadAhead(budget=10**9)
    with pa.OSFile(path) as remote:
        for columns in (["id", "x", "s"], ["x"], ["s", "id"]):
            ranges = lambda g, c=columns: column_ranges(footer, g, c)  # noqa: E731
            for group in range(footer.num_row_groups):
                got = read_ahead.read(
                    0, group, footer.num_row_groups - 1 - group, ranges, remote, _decode(footer, group, columns)
                )
                assert got.equals(pq.ParquetFile(path).read_row_group(group, columns=columns))
            assert read_ahead.held == 0  # every span dropped once its row groups were read


class _CountingFile(io.RawIOBase):
    """A file that counts its reads and can fail the first ``failures`` of them, as a lost connection would."""

    def __init__(self, data: bytes, failures: int = 0) -> None:
        super().__init__()
        self._data, self._position, self.reads, self._failures = data, 0, 0, failures
        self._lock = threading.Lock()
        self.failing = threading.Event()  # set when a read that will fail has begun
        self.fail = threading.Event()  # it fails when this is set

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self._position = (
            offset if whence == 0 else (self._position + offset if whence == 1 else len(self._data) + offset)
        )
        return self._position

    def tell(self) -> int:
        return self._position

    def read(self, size: int = -1) -> bytes:
        with self._lock:
            self.reads += 1
            failing = self._failures > 0
            self._failures -= failing
        if failing:
            self.failing.set()
            self.fail.wait()
            raise OSError("connection reset")
        out = self._data[self._position : self._position + size]
        self._position += len(out)
        return out


def test_the_budget_bounds_what_spans_hold_and_a_span_that_does_not_fit_is_cut(tmp_path) -> None:
    path, footer, _ = _parquet(tmp_path, groups=8)
    columns = ["id", "x", "s"]
    ranges = lambda g: column_ranges(footer, g, columns)  # noqa: E731
    group_bytes = max(sum(n for _, n in ranges(g)) for g in range(8))
    counting = _CountingFile(pathlib.Path(path).read_bytes())
    read_ahead = ReadAhead(budget=3 * group_bytes)
    remote = pa.PythonFile(counting, mode="r")
    highest = 0
    for group in range(8):
        read_ahead.read(0, group, 7 - group, ranges, remote, _decode(footer, group, columns))
        highest = max(highest, read_ahead.held)
    assert counting.reads == 3  # groups 0-2, 3-5, 6-7: one request each
    assert highest <= 3 * group_bytes


def test_workers_waiting_on_a_failed_span_ask_for_their_own_row_groups(tmp_path) -> None:
    path, footer, _ = _parquet(tmp_path, groups=4)
    columns = ["id"]
    ranges = lambda g: column_ranges(footer, g, columns)  # noqa: E731
    counting = _CountingFile(pathlib.Path(path).read_bytes(), failures=1)
    remote = pa.PythonFile(counting, mode="r")
    read_ahead = ReadAhead(budget=10**9)
    with ThreadPoolExecutor(4) as pool:
        owner = pool.submit(read_ahead.read, 0, 0, 3, ranges, remote, _decode(footer, 0, columns))
        counting.failing.wait()  # the owner's span (row groups 0-3) is claimed and its request under way
        others = [
            pool.submit(read_ahead.read, 0, g, 3 - g, ranges, remote, _decode(footer, g, columns)) for g in (1, 2, 3)
        ]
        counting.fail.set()
        with pytest.raises(OSError, match="connection reset"):
            owner.result()
        got = [future.result() for future in others]
    assert [t.column("id").to_pylist() for t in got] == [list(range(g * 1000, (g + 1) * 1000)) for g in (1, 2, 3)]
    assert read_ahead.held == 0


def test_a_scheduled_span_is_fetched_on_an_io_thread_and_read_from_memory(tmp_path) -> None:
    path, footer, _ = _parquet(tmp_path, groups=5)
    columns = ["id", "x"]
    ranges = lambda g: column_ranges(footer, g, columns)  # noqa: E731
    counting = _CountingFile(pathlib.Path(path).read_bytes())
    remote = pa.PythonFile(counting, mode="r")
    read_ahead = ReadAhead(budget=10**9)
    read_ahead.schedule(0, 0, 4, lambda: (ranges, remote))
    read_ahead.schedule(0, 0, 4, lambda: (ranges, remote))  # the same span again: nothing more is fetched
    deadline = time.monotonic() + 10
    while counting.reads < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    got = [read_ahead.read(0, g, 4 - g, ranges, remote, _decode(footer, g, columns)) for g in range(5)]
    assert counting.reads == 1
    assert pa.concat_tables(got).column("id").to_pylist() == list(range(5_000))
    assert read_ahead.held == 0
    read_ahead.clear()
    assert not [t for t in threading.enumerate() if t.name.startswith("sparkfeed-read-ahead")]


def test_scheduling_beyond_the_budget_fetches_nothing_ahead(tmp_path) -> None:
    path, footer, _ = _parquet(tmp_path, groups=4)
    ranges = lambda g: column_ranges(footer, g, ["id"])  # noqa: E731
    counting = _CountingFile(pathlib.Path(path).read_bytes())
    read_ahead = ReadAhead(budget=1)  # smaller than any row group
    read_ahead.schedule(0, 0, 3, lambda: (ranges, pa.PythonFile(counting, mode="r")))
    read_ahead.clear()  # waits for the I/O thread
    assert counting.reads == 0
    assert read_ahead.held == 0


def test_a_read_outside_the_span_goes_to_the_remote_file(tmp_path) -> None:
    path, footer, table = _parquet(tmp_path, groups=2)
    with pa.OSFile(path) as remote:
        empty = SpanFile(remote.size(), [], remote)  # as if the metadata had put a chunk elsewhere
        assert pq.ParquetFile(empty, metadata=footer, pre_buffer=False).read().equals(table)
        data = pathlib.Path(path).read_bytes()
        partial = SpanFile(len(data), [(4, memoryview(data)[4:100])], remote)
        partial.seek(50)
        assert bytes(partial.read(20)) == data[50:70]  # from the span
        assert bytes(partial.read(200)) == data[70:270]  # past its end: from the file


@pytest.fixture(scope="module")
def six_groups(tmp_path_factory) -> tuple[str, pq.FileMetaData]:
    path, footer, _ = _parquet(tmp_path_factory.mktemp("readahead"), groups=6, rows=500)
    return path, footer


@settings(deadline=None, max_examples=30)
@given(
    order=st.lists(st.integers(0, 5), min_size=1, max_size=14),
    budget_groups=st.integers(0, 7),
    workers=st.integers(1, 3),
)
def test_property_every_scheduled_read_is_right_and_the_budget_holds(
    six_groups: tuple[str, pq.FileMetaData], order: list[int], budget_groups: int, workers: int
) -> None:
    path, footer = six_groups
    columns = ["id", "s"]
    ranges = lambda g: column_ranges(footer, g, columns)  # noqa: E731
    group_bytes = max(sum(n for _, n in ranges(g)) for g in range(6))
    pieces = [Piece(0, g, 0, 500) for g in order]
    follow = follow_counts(pieces)
    read_ahead = ReadAhead(budget=budget_groups * group_bytes)
    highest = [0]
    with pa.OSFile(path) as remote, ThreadPoolExecutor(workers) as pool:
        opened = (ranges, remote)

        def read(g: int, ahead: int) -> pa.Table:
            table = read_ahead.read(0, g, ahead, ranges, remote, _decode(footer, g, columns))
            highest[0] = max(highest[0], read_ahead.held)
            return table

        futures = []
        for g, ahead in zip(order, follow, strict=True):
            read_ahead.schedule(0, g, ahead, lambda: opened, opened if g % 2 else None)
            futures.append(pool.submit(read, g, ahead))
        got = [future.result() for future in futures]
    assert read_ahead.held == 0  # every span dropped once its row groups were read
    read_ahead.clear()
    plain = pq.ParquetFile(path)
    assert [t.column("id").to_pylist() for t in got] == [
        plain.read_row_group(g, columns=["id"]).column("id").to_pylist() for g in order
    ]
    assert highest[0] <= budget_groups * group_bytes


def test_clearing_while_a_worker_waits_on_a_span_not_yet_fetched_lets_it_read_its_row_group_alone(tmp_path) -> None:
    """A span whose queued fetch ``clear`` cancels is never fetched: a worker waiting on it must not wait forever.

    The reader clears when an iteration ends; after ``loader.close()`` from another thread the next
    iteration may already be reading when the old one's end clears.
    """
    path, footer, _ = _parquet(tmp_path, groups=2)
    columns = ["id"]
    ranges = lambda g: column_ranges(footer, g, columns)  # noqa: E731
    data = pathlib.Path(path).read_bytes()
    read_ahead = ReadAhead(budget=10**9)
    busy = [_CountingFile(data, failures=1) for _ in range(4)]  # their fetches hold every I/O thread
    for file, counting in enumerate(busy, start=1):
        remote = pa.PythonFile(counting, mode="r")
        read_ahead.schedule(file, 0, 0, lambda r=remote: (ranges, r), (ranges, remote))
    for counting in busy:
        assert counting.failing.wait(10)
    last = pa.PythonFile(_CountingFile(data), mode="r")
    read_ahead.schedule(0, 1, 0, lambda: (ranges, last), (ranges, last))  # claimed, its fetch queued behind them
    got: list[pa.Table] = []
    worker = threading.Thread(
        target=lambda: got.append(read_ahead.read(0, 1, 0, ranges, last, _decode(footer, 1, columns))), daemon=True
    )
    worker.start()
    time.sleep(0.2)  # the worker waits on the queued span
    clearing = threading.Thread(target=read_ahead.clear)
    clearing.start()
    time.sleep(0.2)  # clear() has cancelled the queued fetch and waits for the I/O threads
    for counting in busy:
        counting.fail.set()
    clearing.join(10)
    worker.join(10)
    assert not clearing.is_alive() and not worker.is_alive()
    assert got[0].column("id").to_pylist() == list(range(1000, 2000))
    assert read_ahead.held == 0
