"""Petastorm's predicates answer per row on DataFrames, as Petastorm's answer each row, and filter real loaders."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyspark.sql import functions as F

from sparkfeed import make_spark_converter
from sparkfeed.predicates import (
    PredicateBase,
    as_mask,
    in_intersection,
    in_lambda,
    in_negate,
    in_pseudorandom_split,
    in_reduce,
    in_set,
)

from helpers import concat

IDS = np.arange(200)
FRAME = pd.DataFrame(
    {"id": IDS, "name": [f"n{i}" for i in IDS], "tags": [np.array([i % 10, (i + 3) % 10]) for i in IDS]}
)


def _petastorm_split(fractions: list[float], index: int, value: object) -> bool:
    """Petastorm's in_pseudorandom_split.do_include for one row, written out from petastorm/predicates.py."""
    borders = [sum(fractions[: i + 1]) for i in range(len(fractions))]
    low = borders[index - 1] if index else 0
    bucket = int(hashlib.md5(str(value).encode("utf-8")).hexdigest(), 16) % sys.maxsize
    return bool(low * (sys.maxsize - 1) <= bucket < borders[index] * (sys.maxsize - 1))


def test_pseudorandom_split_keeps_the_rows_petastorm_keeps() -> None:
    # Recorded with petastorm 0.13.1's own in_pseudorandom_split, one row at a time, over ids 0..39 and "n0".."n39".
    by_id = in_pseudorandom_split([0.3, 0.7], 1, "id").do_include(FRAME[:40])
    assert np.flatnonzero(by_id).tolist() == [2, 4, 7, 8, 9, 11, 12, *range(14, 22), 23, 24, *range(26, 40)]
    assert np.flatnonzero(in_pseudorandom_split([0.5, 0.5], 0, "name").do_include(FRAME[:40])).tolist() == [
        0, 1, 4, 6, 7, 9, 11, 14, 15, 16, 17, 18, 19, 21, 29, 32, 34, 36, 37, 38, 39
    ]  # fmt: skip


@given(
    st.lists(st.floats(0.05, 1.0), min_size=1, max_size=4).map(lambda f: [x / sum(f) for x in f]),
    st.data(),
)
def test_property_pseudorandom_parts_partition_the_rows_as_petastorm_splits_each(fractions, data) -> None:
    index = data.draw(st.integers(0, len(fractions) - 1))
    got = in_pseudorandom_split(fractions, index, "id").do_include(FRAME)
    assert got.tolist() == [_petastorm_split(fractions, index, i) for i in IDS]
    parts = [in_pseudorandom_split(fractions, k, "id").do_include(FRAME) for k in range(len(fractions))]
    assert (np.sum(parts, axis=0) <= 1).all()  # no row in two parts (the last border may fall short of 1)


def test_set_intersection_lambda_negate_and_reduce_answer_per_row() -> None:
    assert np.flatnonzero(in_set({3, 5, 9, 1000}, "id").do_include(FRAME)).tolist() == [3, 5, 9]
    inter = in_intersection([4, 7], "tags").do_include(FRAME)
    assert inter.tolist() == [bool({i % 10, (i + 3) % 10} & {4, 7}) for i in IDS]
    even = in_lambda(["id"], lambda i: i % 2 == 0)
    assert even.do_include(FRAME).tolist() == (IDS % 2 == 0).tolist()
    assert in_negate(even).do_include(FRAME).tolist() == (IDS % 2 == 1).tolist()
    low = in_set(range(10), "id")
    assert np.flatnonzero(in_reduce([low, in_negate(even)], all).do_include(FRAME)).tolist() == [1, 3, 5, 7, 9]
    either = in_reduce([low, in_set({150}, "id")], any).do_include(FRAME)
    assert np.flatnonzero(either).tolist() == [*range(10), 150]
    xor = in_reduce([low, even], lambda masks: masks[0] ^ masks[1]).do_include(FRAME)
    assert xor.tolist() == [(i < 10) != (i % 2 == 0) for i in IDS]
    assert in_reduce([low, even], all).get_fields() == {"id"}
    with_state = in_lambda(["id", "name"], lambda i, name, limit: (i < limit) & name.str.endswith("1"), 50)
    assert np.flatnonzero(with_state.do_include(FRAME)).tolist() == [1, 11, 21, 31, 41]
    assert with_state.get_fields() == {"id", "name"}


def test_petastorms_argument_errors_are_kept() -> None:
    with pytest.raises(ValueError, match="Predicate fields should be a list"):
        in_lambda("id", lambda i: i > 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Predicate is not derived from"):
        in_negate(lambda frame: frame)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Predicate is not derived from"):
        in_reduce([in_set({1}, "id"), "id"], all)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="subset_index is out of range"):
        in_pseudorandom_split([0.5, 0.5], 2, "id")
    with pytest.raises(ValueError, match="Tested values does not have split key: nope"):
        in_pseudorandom_split([1.0], 0, "nope").do_include(FRAME)
    with pytest.raises(ValueError, match="Predicate field should have iterable type"):
        in_intersection([1], "id").do_include(FRAME)
    with pytest.raises(TypeError, match="abstract"):
        PredicateBase()  # type: ignore[abstract]


def test_as_mask_takes_bool_answers_and_explains_the_rest() -> None:
    assert as_mask(pd.Series([True, False]), 2).tolist() == [True, False]
    assert as_mask(pd.Series([True, None], dtype="boolean"), 2).tolist() == [True, False]  # NA is no match
    assert as_mask(np.array([True, False], dtype=object), 2).tolist() == [True, False]
    with pytest.raises(TypeError, match=r"returned a single bool \(False\) for a chunk of 2 rows"):
        as_mask(False, 2)
    with pytest.raises(TypeError, match=r"returned a ndarray of int64 with shape \(2,\)"):
        as_mask(np.array([1, 0]), 2)
    with pytest.raises(TypeError, match=r"returned a list of bool with shape \(3,\) for a chunk of 2 rows"):
        as_mask([True, True, False], 2)


def test_a_series_answer_in_another_row_order_is_read_by_its_labels_as_pandas_reads_it() -> None:
    frame = pd.DataFrame({"x": [3, 1, 2, 5]})
    answer = frame.sort_values("x")["x"] > 2  # labels 1, 2, 0, 3: rows 0 and 3 match
    assert as_mask(answer, 4).tolist() == frame["x"].gt(2).tolist() == [True, False, False, True]
    with pytest.raises(TypeError, match=r"returned a Series labelled \[0, 0, 1, 2\] for a chunk of 4 rows"):
        as_mask(pd.Series([True, False, True, True], index=[0, 0, 1, 2]), 4)
    with pytest.raises(TypeError, match=r"labelled \['a', 'b'\]"):
        as_mask(pd.Series([True, False], index=["a", "b"]), 2)


def test_a_predicate_that_sorts_its_rows_keeps_the_rows_it_means(spark) -> None:
    converter = make_spark_converter(spark.range(300).withColumn("x", (F.col("id") * 37) % 101))
    expected = sorted(i for i in range(300) if (i * 37) % 101 > 50)
    with converter.make_numpy_iterator(
        batch_size=16, num_epochs=1, predicate=lambda frame: frame.sort_values("x")["x"] > 50
    ) as batches:
        assert sorted(concat(batches)["id"].tolist()) == expected


def test_predicates_filter_every_loader_of_a_converter(spark) -> None:
    converter = make_spark_converter(spark.range(300).withColumn("label", F.col("id") % 7))
    predicate = in_reduce([in_set({1, 2}, "label"), in_lambda(["id"], lambda i: i >= 100)], all)
    expected = [i for i in range(100, 300) if i % 7 in (1, 2)]
    with converter.make_numpy_iterator(batch_size=16, num_epochs=1, predicate=predicate) as batches:
        assert sorted(concat(batches)["id"].tolist()) == expected
    pytest.importorskip("torch")
    with converter.make_torch_dataloader(batch_size=16, num_epochs=1, predicate=predicate) as loader:
        assert sorted(i for batch in loader for i in batch["id"].tolist()) == expected
