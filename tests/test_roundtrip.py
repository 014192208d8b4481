"""Property: random schemas of the supported types and random rows come back equal to ``df.collect()``."""

from __future__ import annotations

import datetime
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql import types as T

from sparkfeed import make_spark_converter

from helpers import by_id, concat

pytestmark = pytest.mark.slow

UTF8 = st.characters(blacklist_categories=("Cs",))
DATES = st.dates(datetime.date(1900, 1, 1), datetime.date(2100, 12, 31))
TIMES = st.datetimes(datetime.datetime(1900, 1, 2), datetime.datetime(2100, 12, 30))
FLOAT32 = st.floats(width=32, allow_nan=False)
# dtype="float32" rounds a double to the nearest float32; a finite one beyond float32's range fails the
# conversion (tests/test_types.py), an infinity stays one
FLOAT32_MAX = float(np.finfo(np.float32).max)
DOUBLES_IN_FLOAT32 = st.floats(-FLOAT32_MAX, FLOAT32_MAX) | st.sampled_from([float("inf"), float("-inf")])

# kind -> (Spark type for a given width, value strategy for that width, expected cell from a collected value)
KINDS: dict[str, Any] = {
    "bool": (lambda k: T.BooleanType(), lambda k: st.booleans(), lambda v: np.bool_(v)),
    "byte": (lambda k: T.ByteType(), lambda k: st.integers(-(2**7), 2**7 - 1), np.int8),
    "short": (lambda k: T.ShortType(), lambda k: st.integers(-(2**15), 2**15 - 1), np.int16),
    "int": (lambda k: T.IntegerType(), lambda k: st.integers(-(2**31), 2**31 - 1), np.int32),
    "long": (lambda k: T.LongType(), lambda k: st.integers(-(2**63), 2**63 - 1), np.int64),
    "float": (lambda k: T.FloatType(), lambda k: FLOAT32, np.float32),
    "double": (lambda k: T.DoubleType(), lambda k: DOUBLES_IN_FLOAT32, np.float32),  # dtype="float32"
    "decimal": (
        lambda k: T.DecimalType(10, 3),
        lambda k: st.decimals(-(10**6), 10**6, places=3, allow_nan=False, allow_infinity=False),
        lambda v: np.float32(float(v)),
    ),
    "string": (lambda k: T.StringType(), lambda k: st.none() | st.text(UTF8, max_size=8), lambda v: v),
    # pyspark 4.0 collects a bytearray, later ones bytes: compared as bytes
    "binary": (lambda k: T.BinaryType(), lambda k: st.none() | st.binary(max_size=8), bytes),
    "date": (lambda k: T.DateType(), lambda k: DATES, lambda v: np.datetime64(v, "D")),
    "timestamp": (
        lambda k: T.TimestampType(),
        lambda k: TIMES,
        lambda v: np.datetime64(round(v.timestamp() * 1_000_000), "us"),  # pyspark collects local naive times
    ),
    "array": (
        lambda k: T.ArrayType(T.FloatType()),
        lambda k: st.lists(FLOAT32, min_size=k, max_size=k),
        lambda v: np.asarray(v, np.float32),
    ),
    "ragged": (
        lambda k: T.ArrayType(T.LongType()),
        lambda k: st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3),
        lambda v: np.asarray(v, np.int64),
    ),
    "vector": (
        lambda k: VectorUDT(),
        lambda k: st.lists(FLOAT32, min_size=k, max_size=k).map(Vectors.dense),
        lambda v: v.toArray().astype(np.float32),
    ),
}


@st.composite
def datasets(draw: st.DrawFn) -> tuple[T.StructType, list[tuple[Any, ...]], int]:
    kinds = draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=5))
    widths = [draw(st.integers(1, 4)) for _ in kinds]
    fields = [T.StructField("id", T.LongType(), False)]
    fields += [
        T.StructField(f"c{i}_{kind}", KINDS[kind][0](k)) for i, (kind, k) in enumerate(zip(kinds, widths, strict=True))
    ]
    count = draw(st.integers(0, 25))
    rows = [(row, *(draw(KINDS[kind][1](k)) for kind, k in zip(kinds, widths, strict=True))) for row in range(count)]
    return T.StructType(fields), rows, draw(st.integers(1, 3))


@settings(max_examples=max(5, settings.default.max_examples // 2), suppress_health_check=list(HealthCheck))
@given(data=datasets())
def test_random_dataframes_round_trip_equal_to_collect(spark, data) -> None:
    schema, rows, partitions = data
    df = spark.createDataFrame(rows, schema).repartition(partitions)
    collected = sorted(df.collect(), key=lambda row: row["id"])
    converter = make_spark_converter(df, parquet_row_group_size_bytes=512)
    try:
        with converter.make_numpy_iterator(batch_size=7, num_epochs=1) as batches:
            got = concat(batches) if rows else {}
        assert converter.dataset_size == len(rows)
        if not rows:
            return
        got = by_id(got)
        assert list(got) == schema.names
        for name in schema.names[1:]:
            expect = KINDS[name.split("_", 1)[1]][2]
            for index, row in enumerate(collected):
                want, have = expect(row[name]) if row[name] is not None else None, got[name][index]
                if isinstance(want, np.ndarray):
                    np.testing.assert_array_equal(np.asarray(have), want, err_msg=name)
                    assert np.asarray(have).dtype == want.dtype, name
                else:
                    assert have == want, (name, index, have, want)
                    if want is not None and not isinstance(want, (str, bytes)):
                        assert got[name].dtype == np.asarray(want).dtype, name
    finally:
        converter.delete()
