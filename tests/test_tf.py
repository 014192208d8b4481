"""make_tf_dataset: namedtuples with an explicit signature, Keras training, prompt shutdown."""

from __future__ import annotations

import datetime
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import functions as F

from sparkfeed import make_spark_converter


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sparkfeed-reader")]


@pytest.fixture(scope="module")
def mixed(spark):
    rows = [
        (
            i,
            i / 4,
            f"s{i}",
            datetime.date(2020, 1, 1) + datetime.timedelta(days=i),
            [[i, i + 1], [i + 2, i + 3]],
            i % 2 == 0,
        )
        for i in range(300)
    ]
    df = spark.createDataFrame(rows, "id long, x double, s string, day date, m array<array<int>>, flag boolean")
    return make_spark_converter(df)


@pytest.fixture(scope="module")
def regression(spark):
    df = spark.range(3000).select(*[F.randn(seed=i).alias(f"x{i}") for i in range(3)])
    df = df.withColumn("y", 1.5 * F.col("x0") - 2 * F.col("x1") + 0.5)
    df = VectorAssembler(inputCols=["x0", "x1", "x2"], outputCol="features").transform(df)
    return make_spark_converter(df.select("features", "y"))


def test_elements_are_namedtuples_with_a_known_signature_and_collect_values(mixed) -> None:
    with mixed.make_tf_dataset(batch_size=64, num_epochs=1, seed=0) as dataset:
        spec = dataset.element_spec
        assert type(spec).__name__ == "Row" and spec._fields == ("id", "x", "s", "day", "m", "flag")
        assert spec.m.shape.as_list() == [None, 2, 2] and spec.m.dtype == tf.int32
        assert spec.x.dtype == tf.float32 and spec.s.dtype == tf.string and spec.day.dtype == tf.int64
        batches = list(dataset)
    assert [int(b.id.shape[0]) for b in batches] == [64, 64, 64, 64, 44]
    ids = np.concatenate([b.id.numpy() for b in batches])
    order = np.argsort(ids)
    assert ids[order].tolist() == list(range(300))
    np.testing.assert_array_equal(np.concatenate([b.x.numpy() for b in batches])[order], np.arange(300) / 4)
    assert [v.decode() for v in np.concatenate([b.s.numpy() for b in batches])[order]] == [f"s{i}" for i in range(300)]
    days = np.concatenate([b.day.numpy() for b in batches])[order]
    assert days[0] == (datetime.date(2020, 1, 1) - datetime.date(1970, 1, 1)).days and days[299] - days[0] == 299
    m = np.concatenate([b.m.numpy() for b in batches])[order]
    np.testing.assert_array_equal(m[7], [[7, 8], [9, 10]])
    assert np.concatenate([b.flag.numpy() for b in batches])[order].tolist() == [i % 2 == 0 for i in range(300)]


def test_big_batches_and_epochs_keep_their_partial_last_batch(mixed) -> None:
    with mixed.make_tf_dataset(batch_size=7, num_epochs=2) as dataset:
        sizes = [int(b.id.shape[0]) for b in dataset]
    assert sizes == ([7] * 42 + [6]) * 2
    with mixed.make_tf_dataset(batch_size=100000, num_epochs=1) as dataset:
        assert [int(b.id.shape[0]) for b in dataset] == [300]


def test_map_and_tf_function(mixed) -> None:
    with mixed.make_tf_dataset(batch_size=50, num_epochs=1) as dataset:
        doubled = dataset.map(lambda row: row.x * 2)

        @tf.function
        def total(ds: tf.data.Dataset) -> tf.Tensor:
            result = tf.constant(0.0)
            for x in ds:
                result += tf.reduce_sum(x)
            return result

        assert float(total(doubled)) == pytest.approx(2 * np.arange(300).sum() / 4)


def test_keras_fit_on_infinite_and_finite_datasets(regression) -> None:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    with regression.make_tf_dataset(batch_size=100, seed=1) as dataset:  # infinite
        history = model.fit(dataset.map(lambda r: (r.features, r.y)), steps_per_epoch=30, epochs=3, verbose=0)
    with regression.make_tf_dataset(batch_size=100, num_epochs=1, seed=1) as dataset:  # finite: one pass a Keras epoch
        history2 = model.fit(dataset.map(lambda r: (r.features, r.y)), epochs=3, verbose=0)
    losses = history.history["loss"] + history2.history["loss"]
    assert losses[-1] < 0.05 * losses[0]
    np.testing.assert_allclose(model.layers[0].kernel.numpy()[:, 0], [1.5, -2.0, 0.0], atol=0.1)


def test_leaving_the_context_stops_the_threads_of_a_partly_read_dataset(regression) -> None:
    with regression.make_tf_dataset(batch_size=10, seed=2) as dataset:
        iterator = iter(dataset)
        next(iterator)
        assert _reader_threads()
    del iterator
    for _ in range(50):
        if not _reader_threads():
            break
        threading.Event().wait(0.1)
    assert not _reader_threads()


def test_ragged_columns_are_refused_with_advice(spark) -> None:
    converter = make_spark_converter(spark.createDataFrame([(1, [1.0]), (2, [1.0, 2.0])], "id long, r array<double>"))
    with pytest.raises(TypeError, match="column 'r' holds arrays of varying length"):
        converter.make_tf_dataset()
    with converter.make_tf_dataset(schema_fields=["id"], num_epochs=1) as dataset:
        assert sorted(int(i) for b in dataset for i in b.id.numpy()) == [1, 2]


def _reshaped(frame):
    frame["grid"] = [np.full((2, 3), i % 200, np.uint8) for i in frame["id"]]
    frame["half"] = frame["x"] / 2
    return frame.drop(columns=["m"])


def _ragged(frame):
    frame["r"] = [np.arange(i % 3) for i in frame["id"]]
    return frame


def test_a_transform_decides_the_signature(mixed) -> None:
    with mixed.make_tf_dataset(batch_size=100, num_epochs=1, transform_fn=_reshaped) as dataset:
        spec = dataset.element_spec
        assert "m" not in spec._fields and spec.grid.shape.as_list() == [None, 2, 3] and spec.grid.dtype == tf.uint8
        assert spec.half.dtype == tf.float32 and spec.day.dtype == tf.int64
        rows = list(dataset)
    ids = np.concatenate([b.id.numpy() for b in rows])
    np.testing.assert_array_equal(np.concatenate([b.grid.numpy()[:, 1, 2] for b in rows]), (ids % 200).astype(np.uint8))
    with pytest.raises(TypeError, match="column 'r' holds arrays of varying length"):
        mixed.make_tf_dataset(transform_fn=_ragged)


def test_nested_arrays_stay_tensors_through_a_transform(mixed) -> None:
    with mixed.make_tf_dataset(batch_size=300, num_epochs=1, transform_fn=lambda f: f, schema_fields=["id", "m"]) as ds:
        assert ds.element_spec.m.shape.as_list() == [None, 2, 2]
        (batch,) = list(ds)
    ids = batch.id.numpy()
    np.testing.assert_array_equal(batch.m.numpy(), np.stack([[[i, i + 1], [i + 2, i + 3]] for i in ids]))


def test_a_null_string_is_refused_naming_the_column(spark) -> None:
    converter = make_spark_converter(
        spark.createDataFrame([(1, "a", b"x"), (2, "b", None)], "id long, s string, b binary")
    )
    with converter.make_tf_dataset(batch_size=2, num_epochs=1, schema_fields=["id", "s"]) as dataset:
        assert sorted(v.decode() for b in dataset for v in b.s.numpy()) == ["a", "b"]
    with converter.make_tf_dataset(batch_size=2, num_epochs=1) as dataset:
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"column 'b' holds nulls.*fillna.*schema_fields"):
            list(dataset)


def test_columns_that_are_not_identifiers_are_renamed_with_a_warning(spark) -> None:
    converter = make_spark_converter(spark.range(10).select(F.col("id").alias("a.b"), F.col("id").alias("ok")))
    with pytest.warns(UserWarning, match=r"\{'a.b': '_0'\}"):
        context = converter.make_tf_dataset(batch_size=10, num_epochs=1)
    with context as dataset:
        (batch,) = list(dataset)
    assert batch._fields == ("_0", "ok") and batch._0.numpy().tolist() == batch.ok.numpy().tolist()


def test_drop_last_leaves_out_each_epochs_short_batch(mixed) -> None:
    with mixed.make_tf_dataset(batch_size=64, num_epochs=2, drop_last=True, seed=1) as dataset:
        assert int(dataset.cardinality()) == 8
        sizes = [int(b.id.shape[0]) for b in dataset]
    assert sizes == [64] * 8  # 300 rows an epoch: 4 full batches, the 44-row tail left out
    with pytest.raises(ValueError, match="drop_last=1 is not allowed"):
        mixed.make_tf_dataset(drop_last=1)


def test_missing_tensorflow_names_the_extra(mixed, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(ImportError, match=r"pip install 'sparkfeed\[tf\]'"):
        mixed.make_tf_dataset()


def test_eager_iteration_builds_the_same_rows_as_tensorflows_own_iterator(mixed) -> None:
    with mixed.make_tf_dataset(batch_size=64, num_epochs=1, shuffle_row_groups=False) as dataset:
        direct = list(dataset)  # built in one call per row (sparkfeed's iterator)
        mapped = list(dataset.map(lambda row: row))  # any transformation: TensorFlow's own iterator
    assert type(iter(dataset)).__name__ == "RowIterator" and type(direct[0]) is type(dataset.element_spec)
    assert len(direct) == len(mapped) == 5
    for ours, theirs in zip(direct, mapped, strict=True):
        assert type(ours) is type(theirs)
        for a, b in zip(ours, theirs, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_an_eager_iterator_also_steps_inside_a_tf_function(mixed) -> None:
    with mixed.make_tf_dataset(batch_size=100, num_epochs=1, shuffle_row_groups=False) as dataset:
        iterator = iter(dataset)

        @tf.function
        def step(it: tf.data.Iterator) -> tf.Tensor:
            return next(it).id

        first = next(iterator).id.numpy()
        second = step(iterator).numpy()
        third = next(iterator).id.numpy()
    np.testing.assert_array_equal(np.concatenate([first, second, third]), np.arange(300))
