"""Ragged columns: every operation the reader applies equals the same on a list of per-row arrays."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparkfeed import NullValueError
from sparkfeed.reader.ragged import Ragged, Views, ranges, repeated
from sparkfeed.writer import VIEWS, list_shape_stats, pack_ragged, ragged_shape, take_views, unpack_ragged

rows_strategy = st.lists(st.lists(st.integers(-1000, 1000), max_size=12), max_size=30)


def _ragged(rows: list[list[int]]) -> Ragged:
    lengths = np.array([len(row) for row in rows], dtype=np.int64)
    values = np.array([v for row in rows for v in row], dtype=np.int64)
    return Ragged.from_lengths(values, lengths)


def _rows(ragged: Ragged) -> list[list[int]]:
    return [ragged.values[a:b].tolist() for a, b in zip(ragged.offsets[:-1], ragged.offsets[1:], strict=True)]


@given(rows=rows_strategy, data=st.data())
def test_slices_gathers_and_joins_are_those_of_the_rows(rows: list[list[int]], data: st.DataObject) -> None:
    ragged = _ragged(rows)
    assert len(ragged) == len(rows) and ragged.lengths.tolist() == [len(r) for r in rows]
    start = data.draw(st.integers(0, len(rows)))
    stop = data.draw(st.integers(start, len(rows)))
    part = ragged[start:stop]
    assert _rows(part) == rows[start:stop] and part.values is ragged.values  # a view
    assert part.flat().tolist() == [v for row in rows[start:stop] for v in row]
    indices = data.draw(st.lists(st.integers(0, max(len(rows) - 1, 0)), max_size=40)) if rows else []
    assert _rows(ragged.take(np.array(indices, dtype=np.int64))) == [rows[i] for i in indices]
    assert _rows(ragged[np.array(indices, dtype=np.int64)]) == [rows[i] for i in indices]
    joined = Ragged.concat([ragged[:start], part, ragged[stop:]])
    assert _rows(joined) == rows


@given(rows=rows_strategy, limit=st.integers(0, 14), extra=st.integers(0, 3), pad=st.integers(-5, 5))
def test_truncate_pad_and_mask(rows: list[list[int]], limit: int, extra: int, pad: int) -> None:
    cut = _ragged(rows)[1:].truncate(limit)  # a slice: offsets that do not start at 0
    expected = [row[:limit] for row in rows[1:]]
    assert _rows(cut) == expected
    length = max([len(r) for r in expected], default=0) + extra
    padded = cut.padded(length, pad)
    assert padded.shape == (len(expected), length)
    assert padded.tolist() == [row + [pad] * (length - len(row)) for row in expected]
    assert cut.mask(length).tolist() == [[j < len(row) for j in range(length)] for row in expected]


def test_padding_by_mask_and_by_index_agree() -> None:
    rng = np.random.default_rng(0)
    lengths = np.r_[rng.integers(1, 5, 200), 400]  # one long row among short ones: scattered by index
    ragged = Ragged.from_lengths(rng.integers(0, 9, int(lengths.sum())).astype(np.int32), lengths)
    wide = ragged.padded(400, -1)
    narrow = ragged[:200].padded(4, -1)  # little padding: by mask
    assert wide.dtype == narrow.dtype == np.int32
    np.testing.assert_array_equal(wide[:200, :4], narrow)
    assert (wide[:200, 4:] == -1).all() and wide[200].tolist() == ragged[200:].flat().tolist()


@given(
    lengths=st.lists(st.integers(0, 9), min_size=1, max_size=40),
    dtype=st.sampled_from(["int8", "uint8", "int32", "int64", "float32", "float64", "bool"]),
    inner=st.sampled_from([(), (3,)]),
    pad=st.sampled_from([0, 1, 7, -1, 2.5]),
    extra=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_padding_by_arrow_and_by_numpy_agree_on_any_bytes(
    lengths: list[int], dtype: str, inner: tuple[int, ...], pad: float, extra: int, seed: int
) -> None:
    """Arrow pads zeros and other one-byte values (ascii_rpad on the rows' raw bytes); NumPy the rest."""
    if dtype in ("uint8", "bool") and pad == -1:
        pad = 0
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (sum(lengths) * int(np.prod(inner)) + 1) * np.dtype(dtype).itemsize, dtype=np.uint8)
    values = raw.view(dtype)[1:] if dtype != "bool" else raw[1:].astype(bool)  # bytes past 0x7f, NaN patterns
    ragged = Ragged.from_lengths(values.reshape((-1, *inner)), np.array(lengths))[1:]
    length = max(ragged.lengths, default=0) + extra
    padded = ragged.padded(int(length), pad)
    expected = np.full((len(ragged), length, *inner), pad, dtype=dtype)
    for i, (low, high) in enumerate(zip(ragged.offsets[:-1], ragged.offsets[1:], strict=True)):
        expected[i, : high - low] = ragged.values[low:high]
    assert padded.dtype == np.dtype(dtype) and padded.flags.writeable
    np.testing.assert_array_equal(padded.view(np.uint8), expected.view(np.uint8))


def test_a_row_longer_than_the_padding_is_refused() -> None:
    with pytest.raises(ValueError, match="a row of 3 values does not fit a padded length of 2"):
        _ragged([[1, 2, 3]]).padded(2)


def test_values_may_be_fixed_shape_arrays() -> None:
    values = np.arange(30, dtype=np.float32).reshape(10, 3)
    ragged = Ragged.from_lengths(values, np.array([2, 0, 5, 3]))
    assert ragged.inner == (3,)
    padded = ragged.padded(5)
    assert padded.shape == (4, 5, 3)
    np.testing.assert_array_equal(padded[2], values[2:7])
    assert (padded[1] == 0).all() and (padded[0, 2:] == 0).all()
    np.testing.assert_array_equal(ragged.take(np.array([3, 0])).flat(), np.concatenate([values[7:], values[:2]]))


@pytest.mark.parametrize("offset_type", [pa.list_, pa.large_list])
def test_from_arrow_reads_the_slice_without_copying_its_values(offset_type) -> None:
    array = pa.array([[1, 2], None, [3], [4, 5, 6], []], offset_type(pa.int32()))
    ragged = Ragged.from_arrow("x", array.slice(2, 3), (), np.dtype(np.int32))  # the null row is outside
    assert _rows(ragged) == [[3], [4, 5, 6], []] and ragged.dtype == np.int32
    assert np.shares_memory(ragged.values, np.frombuffer(array.values.buffers()[1], dtype=np.int32))
    with pytest.raises(NullValueError, match=r"column 'x' \(list<item: int32>\) holds 1 null value"):
        Ragged.from_arrow("x", pa.array([[1], None], pa.list_(pa.int32())), (), np.dtype(np.int32))
    with pytest.raises(NullValueError, match="holds 1 null value"):
        Ragged.from_arrow("x", pa.array([[1, None]], pa.list_(pa.int32())), (), np.dtype(np.int32))


def test_from_arrow_reads_nested_and_fixed_size_lists() -> None:
    nested = pa.array([[[1.0, 2.0, 3.0]], [], [[4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]], pa.list_(pa.list_(pa.float32())))
    ragged = Ragged.from_arrow("m", nested.slice(1), (3,), np.dtype(np.float32))
    assert ragged.lengths.tolist() == [0, 2] and ragged.flat().tolist() == [[4, 5, 6], [7, 8, 9]]
    with pytest.raises(
        ValueError, match="column 'm' holds inner arrays of 3 to 3 values where every one should hold 2"
    ):
        Ragged.from_arrow("m", nested, (2,), np.dtype(np.float32))
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(12, dtype=np.int64)), 4)
    assert _rows(Ragged.from_arrow("f", fixed.slice(1), (), np.dtype(np.int64))) == [[4, 5, 6, 7], [8, 9, 10, 11]]


@pytest.mark.parametrize("kind", ["binary", "binary_view"])
@pytest.mark.parametrize("inner", [(), (2,)])
def test_the_caches_binary_cells_read_back_as_the_lists(inner: tuple[int, ...], kind: str) -> None:
    rows = [[[i, -i]] * (i % 4) if inner else list(range(i % 5)) for i in range(9)]
    logical = pa.list_(pa.list_(pa.int64())) if inner else pa.list_(pa.int64())
    array = pa.array(rows, logical).slice(2)
    shape = ragged_shape(array, list_shape_stats(array))
    assert shape == (-1, *inner)
    packed = pack_ragged(array, shape)
    assert packed.type == (pa.binary_view() if VIEWS else pa.binary()) and len(packed) == 7
    packed = packed.cast(getattr(pa, kind)())  # the caches of either pyarrow read alike
    assert unpack_ragged(packed, logical, shape).to_pylist() == rows[2:]
    ragged = Ragged.from_arrow("x", packed.slice(1, 4), inner, np.dtype(np.int64))
    assert [r.tolist() for r in np.split(ragged.flat(), np.cumsum(ragged.lengths)[:-1])] == [
        np.array(row, dtype=np.int64).reshape(-1, *inner).tolist() for row in rows[3:7]
    ]
    lengths = Ragged.arrow_lengths("x", packed.slice(1, 4), inner, np.dtype(np.int64))
    assert lengths.tolist() == ragged.lengths.tolist() == [len(row) for row in rows[3:7]]


@given(
    lengths=st.lists(st.integers(0, 20), min_size=1, max_size=30),
    data=st.data(),
)
def test_taking_views_is_taking_the_rows(lengths: list[int], data: st.DataObject) -> None:
    """Views of short rows hold their bytes inline, longer ones point into a data buffer: both move."""
    rows = [bytes(range(i, i + n)) for i, n in enumerate(lengths)]
    views = pa.array(rows, pa.binary()).cast(pa.binary_view()).slice(1)
    indices = data.draw(st.lists(st.integers(0, len(rows) - 2), max_size=40)) if len(rows) > 1 else []
    taken = take_views(views, np.array(indices, dtype=np.int64))
    assert taken.type == pa.binary_view() and taken.to_pylist() == [rows[1:][i] for i in indices]


@given(
    lengths=st.lists(st.integers(0, 9), min_size=1, max_size=40),
    dtype=st.sampled_from(["int8", "int32", "int64", "float32"]),
    inner=st.sampled_from([(), (3,)]),
    data=st.data(),
)
def test_views_pad_join_and_cut_as_the_rows_they_view(
    lengths: list[int], dtype: str, inner: tuple[int, ...], data: st.DataObject
) -> None:
    """Rows viewed where they lie (inline up to 12 bytes, else in a data buffer) pad and join as the rows."""
    size = int(np.prod(inner, dtype=np.int64))
    values = np.arange(sum(lengths) * size).astype(dtype).reshape((-1, *inner))
    ragged = Ragged.from_lengths(values, np.array(lengths))
    rows = [ragged.values[a:b] for a, b in zip(ragged.offsets[:-1], ragged.offsets[1:], strict=True)]
    cells = pa.array([row.tobytes() for row in rows], pa.binary()).cast(pa.binary_view())
    views = Views.from_arrow("x", cells, inner, np.dtype(dtype))
    assert len(views) == len(rows) and views.lengths.tolist() == lengths and views.tokens == sum(lengths)
    start = data.draw(st.integers(0, len(rows)))
    part = views[start:]
    if len(part):
        split = np.split(part.flat(), np.cumsum(part.lengths)[:-1])
        assert [r.tolist() for r in split] == [r.tolist() for r in rows[start:]]
    length = max(lengths) + data.draw(st.integers(0, 5))
    pad = data.draw(st.sampled_from([0, 3]))
    np.testing.assert_array_equal(views.padded(length, pad), ragged.padded(length, pad))
    np.testing.assert_array_equal(views.mask(length), ragged.mask(length))
    gaps = np.array(data.draw(st.lists(st.integers(0, 40), min_size=len(rows), max_size=len(rows)))) * values.itemsize
    gaps *= size
    joined = views.joined(gaps)
    expected = np.concatenate(
        [
            np.concatenate([row.reshape(-1), np.zeros(gap // values.itemsize, dtype)])
            for row, gap in zip(rows, gaps, strict=True)
        ]
    )
    np.testing.assert_array_equal(joined, expected)
    limit = data.draw(st.integers(0, 9))
    cut = views.truncate(limit)
    assert cut.lengths.tolist() == np.minimum(lengths, limit).tolist()


def test_taking_views_keeps_a_null_for_the_reader_to_refuse() -> None:
    views = pa.array([b"abcd" * 5, None], pa.binary()).cast(pa.binary_view())
    taken = take_views(views, np.array([1, 0]))
    assert taken.to_pylist() == [None, b"abcd" * 5]
    with pytest.raises(NullValueError, match="column 'x'"):
        Ragged.from_arrow("x", taken, (), np.dtype(np.int32))


@pytest.mark.parametrize("kind", ["binary", "binary_view"])
def test_cells_that_the_shape_does_not_divide_are_refused_not_misread(kind: str) -> None:
    packed = pa.array([b"\x01\x00\x00\x00\x02\x00\x00\x00", b"\x03\x00\x00\x00"], pa.binary())
    packed = packed.cast(getattr(pa, kind)())
    assert Ragged.from_arrow("x", packed, (), np.dtype(np.int32)).lengths.tolist() == [2, 1]
    for read in (Ragged.from_arrow, Ragged.arrow_lengths):
        with pytest.raises(ValueError, match="column 'x': a packed cell's size is not a whole number of int32 values"):
            read("x", packed, (2,), np.dtype(np.int32))


def test_from_objects_takes_a_transforms_output() -> None:
    objects = np.empty(3, dtype=object)
    objects[:] = [np.arange(2), np.arange(0), np.arange(4)]
    assert _rows(Ragged.from_objects("t", objects)) == [[0, 1], [], [0, 1, 2, 3]]
    assert _rows(Ragged.from_objects("t", np.arange(6).reshape(2, 3))) == [[0, 1, 2], [3, 4, 5]]
    objects[1] = None
    with pytest.raises(NullValueError, match="column 't' holds a null where a sequence was expected"):
        Ragged.from_objects("t", objects)
    with pytest.raises(ValueError, match="column 't' holds one int64 value per row, not an array"):
        Ragged.from_objects("t", np.arange(3))


def _objects(rows: list) -> np.ndarray:
    objects = np.empty(len(rows), dtype=object)
    for index, row in enumerate(rows):  # one by one: NumPy would make equal arrays one 2-D block
        objects[index] = row
    return objects


def test_empty_python_lists_take_the_other_rows_dtype_and_inner_shape() -> None:
    """A tokenizer's ``[]`` is float64 of shape (0,) to NumPy: it must not make token ids float, nor refuse pairs."""
    ids = Ragged.from_objects("t", _objects([[1, 2], [], [3]]))
    assert ids.values.dtype == np.int64 and _rows(ids) == [[1, 2], [], [3]]
    pairs = Ragged.from_objects("t", _objects([np.ones((2, 2), np.int32), [], np.zeros((1, 2), np.int32)]))
    assert pairs.values.dtype == np.int32 and pairs.values.shape == (3, 2) and pairs.lengths.tolist() == [2, 0, 1]


def test_rows_of_inner_arrays_are_stacked_and_inner_arrays_of_two_shapes_refused() -> None:
    """pandas' cell of an array<array<float>>: an object array of its inner arrays, not an array of numbers."""
    pair = np.ones(2, np.float32)
    rows = _objects([_objects([pair, 2 * pair]), _objects([]), [pair]])
    pairs = Ragged.from_objects("t", rows)
    assert pairs.values.dtype == np.float32 and pairs.inner == (2,) and pairs.lengths.tolist() == [2, 0, 1]
    assert _rows(pairs) == [[[1, 1], [2, 2]], [], [[1, 1]]]
    with pytest.raises(ValueError, match="column 't' holds a row whose values differ in shape"):
        Ragged.from_objects("t", _objects([_objects([pair, pair[:1]])]))


def test_a_chunk_of_empty_object_rows_takes_the_given_columns_dtype_and_inner_shape() -> None:
    empty = _objects([_objects([]), _objects([])])
    given = Ragged.from_objects("t", empty, ((2,), np.dtype(np.float32)))
    assert given.values.shape == (0, 2) and given.dtype == np.float32 and given.lengths.tolist() == [0, 0]
    assert Ragged.from_objects("t", empty).dtype == np.float64  # nothing to go by: NumPy's guess for []


def test_a_chunk_the_transform_left_without_rows_is_an_empty_sequence_not_an_error() -> None:
    assert len(Ragged.from_objects("t", np.zeros(0, dtype=np.float64))) == 0  # pandas' dtype of an empty column
    assert len(Ragged.from_objects("t", np.empty(0, dtype=object))) == 0


@given(
    runs=st.lists(
        st.tuples(st.integers(0, 5000), st.integers(0, 40), st.booleans()),
        max_size=60,
    )
)
def test_ranges_writes_each_run_as_numpy_would(runs: list[tuple[int, int, bool]]) -> None:
    """Runs of counting values and of zeros, short ones (held inside a view) and long ones alike."""
    starts = np.array([start for start, _, _ in runs], dtype=np.int64)
    widths = np.array([width for _, width, _ in runs], dtype=np.int64)
    zeros = np.array([zero for _, _, zero in runs], dtype=bool)
    expected = [
        np.zeros(width, np.int32) if zero else np.arange(start, start + width, dtype=np.int32)
        for start, width, zero in runs
    ]
    got = ranges(starts, widths, zeros)
    assert got.dtype == np.int32
    assert np.array_equal(got, np.concatenate(expected) if expected else np.zeros(0, np.int32))
    assert got.flags.writeable or not len(got)


@given(runs=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 3000)), max_size=60), distinct=st.integers(1, 301))
def test_repeated_is_numpys_repeat(runs: list[tuple[int, int]], distinct: int) -> None:
    """Short runs (held inside a view), long ones, few values (a table) and many (NumPy's repeat then)."""
    values = np.array([value % distinct for value, _ in runs], dtype=np.int64)
    widths = np.array([width for _, width in runs], dtype=np.int64)
    got = repeated(values, widths)
    assert got.dtype == np.int32
    assert np.array_equal(got, np.repeat(values, widths).astype(np.int32))
