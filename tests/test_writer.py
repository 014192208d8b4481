"""The in-task cache writer: tensors packed as fixed_size_binary, shapes measured, files listed."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparkfeed import make_spark_converter
from sparkfeed.materialize import _session_conf
from sparkfeed.writer import VIEWS, list_shape_stats, pack, pack_ragged, packed_shape, unpack, unpack_ragged

from helpers import by_id, concat


def test_pack_and_unpack_round_trip_without_copies() -> None:
    values = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2 * 3, 4, 5)
    nested = pa.array(values.tolist(), pa.list_(pa.list_(pa.float32()))).slice(1, 4)  # an offset too
    stats = list_shape_stats(nested)
    assert stats == [(4, 4), (5, 5)]
    shape = packed_shape(nested, stats)
    assert shape == (4, 5)
    packed = pack(nested, shape)
    assert packed.type == pa.binary(4 * 5 * 4) and len(packed) == 4
    unpacked = unpack(packed, nested.type, shape)
    assert unpacked.type == pa.list_(pa.list_(pa.float32(), 5), 4)
    np.testing.assert_array_equal(np.stack(unpacked.to_numpy(zero_copy_only=False)).tolist(), values[1:5].tolist())


@pytest.mark.parametrize(
    ("rows", "data_type"),
    [
        ([[1.0, 2.0], [3.0]], pa.list_(pa.float64())),  # lengths differ
        ([[1.0, None], [3.0, 4.0]], pa.list_(pa.float64())),  # a null value
        ([[1.0, 2.0], None], pa.list_(pa.float64())),  # a null row
        ([["a", "b"], ["c", "d"]], pa.list_(pa.string())),  # not numeric
    ],
)
def test_what_is_not_packed(rows: list, data_type: pa.DataType) -> None:
    array = pa.array(rows, data_type)
    assert packed_shape(array, list_shape_stats(array)) is None


def test_fixed_shape_arrays_are_stored_packed_and_read_back(spark) -> None:
    df = spark.createDataFrame(
        [(i, [float(i)] * 8, [[i, i], [i, i]]) for i in range(50)], "id long, v array<double>, m array<array<int>>"
    )
    converter = make_spark_converter(df)
    assert all(entry.packed == {"v": (8,), "m": (2, 2)} for entry in converter.manifest.files)
    schema = pq.read_schema(converter.file_urls[0].removeprefix("file://"))
    assert schema.field("v").type == pa.binary(8 * 4) and schema.field("m").type == pa.binary(4 * 4)
    assert converter.manifest.schema.field("v").type == pa.list_(pa.float32())  # the logical type stays
    with converter.make_numpy_iterator(batch_size=16, num_epochs=1) as batches:
        got = by_id(concat(batches))
    np.testing.assert_array_equal(got["v"], np.repeat(np.arange(50, dtype=np.float32)[:, None], 8, axis=1))
    assert got["m"].shape == (50, 2, 2)


def test_a_partition_with_ragged_rows_makes_the_column_ragged_everywhere(spark) -> None:
    rows = [(i, [1.0, 2.0] if i < 10 else [1.0] * (i % 3 + 1)) for i in range(20)]
    df = spark.sparkContext.parallelize(rows, 2).toDF("id long, v array<double>")  # rows 0-9, then 10-19
    converter = make_spark_converter(df)
    # one file packs fixed-size cells, the other cells of varying length
    assert sorted(entry.packed["v"] for entry in converter.manifest.files) == [(-1,), (2,)]
    assert converter.manifest.shapes["v"] == [(1, 3)]
    with converter.make_numpy_iterator(batch_size=20, num_epochs=1, shuffle_row_groups=False) as batches:
        got = by_id(concat(batches))
    assert got["v"].dtype == object
    assert [list(v) for v in got["v"]] == [r[1] for r in rows]


def test_a_task_whose_batches_change_encoding_keeps_its_rows_in_order(spark) -> None:
    # Batches of 2 rows: fixed 3, varying, fixed 3 (into the varying file), a null array, fixed 3 again.
    # A file per encoding served ids 2, 3, 6, 7, 0, 1, ... with shuffle_row_groups=False.
    lengths = [3, 3, 1, 2, 3, 3, None, 3, 3, 3]
    rows = [(i, None if n is None else [float(i)] * n) for i, n in enumerate(lengths)]
    df = spark.sparkContext.parallelize(rows, 1).toDF("id long, a array<double>")
    with _session_conf(spark, {"spark.sql.execution.arrow.maxRecordsPerBatch": "2"}):
        converter = make_spark_converter(df)
    assert [entry.packed.get("a") for entry in converter.manifest.files] == [(3,), (-1,), None, (3,)]
    with converter.make_numpy_iterator(batch_size=4, num_epochs=1, shuffle_row_groups=False) as batches:
        got = concat(batches)
    assert got["id"].tolist() == list(range(10))
    assert [None if v is None else v.tolist() for v in got["a"]] == [r[1] for r in rows]


def test_rows_of_varying_length_are_stored_as_views_of_raw_bytes(spark) -> None:
    """One BYTE_ARRAY cell per row, declared binary_view in the file's Arrow schema (pyarrow >= 21), read in place."""
    rows = [(i, [i] * (i % 5)) for i in range(30)]
    converter = make_spark_converter(spark.createDataFrame(rows, "id long, t array<int>"))
    (entry,) = {entry.packed["t"]: entry for entry in converter.manifest.files}.values()
    path = converter.file_urls[0].removeprefix("file://")
    stored = pq.ParquetFile(path).schema_arrow.field("t").type
    assert stored == (pa.binary_view() if VIEWS else pa.binary()) and entry.packed["t"] == (-1,)
    assert pq.ParquetFile(path).schema.column(1).physical_type == "BYTE_ARRAY"
    with converter.make_numpy_iterator(
        batch_size=30, num_epochs=1, shuffle_row_groups=False, sequence={"t": "pad"}
    ) as batches:
        got = by_id(concat(batches))
    assert got["t"].tolist() == [[i] * (i % 5) + [0] * (4 - i % 5) for i in range(30)]


def test_empty_dataframe(spark) -> None:
    converter = make_spark_converter(spark.range(0).selectExpr("id", "array(id) AS a"))
    assert len(converter) == 0
    with converter.make_numpy_iterator(num_epochs=1) as batches:
        assert list(batches) == []


def test_unpack_ragged_reads_values_up_to_the_last_rows_end() -> None:
    # An empty chunk's data buffer can be a few bytes long (Arrow leaves 4): read as values, one
    # float32 that no pair of the inner shape took, and FixedSizeListArray refused the chunk.
    logical = pa.list_(pa.list_(pa.float32()))
    rows = [[[1.0, 2.0]], [], [[3.0, 4.0], [5.0, 6.0]]]
    assert unpack_ragged(pack_ragged(pa.array(rows, logical), (-1, 2)), logical, (-1, 2)).to_pylist() == rows
    offsets = pa.py_buffer(np.zeros(1, np.int32))
    empty = pa.Array.from_buffers(pa.binary(), 0, [None, offsets, pa.py_buffer(b"\0\0\0\0")])
    assert unpack_ragged(empty, logical, (-1, 2)).to_pylist() == []
