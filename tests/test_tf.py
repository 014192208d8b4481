"""make_tf_dataset: namedtuples with an explicit signature, Keras training, prompt shutdown."""

from __future__ import annotations

import datetime
import gc
import itertools
import pickle
import sys
import threading
import traceback
import warnings
import weakref

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import functions as F

import sparkfeed.reader.engine
import sparkfeed.tf
from sparkfeed import NullValueError, UnsupportedTypeError, make_spark_converter

from helpers import run_job


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
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history2 = model.fit(dataset.map(lambda r: (r.features, r.y)), epochs=3, verbose=0)
    # The mapped dataset keeps its cardinality, so Keras ends each epoch at the end of the data, unwarned.
    assert not [w for w in caught if "ran out of data" in str(w.message)]
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


def test_a_dataset_made_and_dropped_leaves_neither_its_context_nor_its_reader_behind(regression) -> None:
    """TensorFlow keeps from_generator's callable for good: it must not hold the reader or the transform's closure."""
    made = []
    for stop in (None, 3, 0):  # exhausted, left mid-epoch, never iterated
        context = regression.make_tf_dataset(batch_size=500, num_epochs=1)
        made.append((weakref.ref(context), weakref.ref(context._reader)))
        with context as dataset:
            for step, _ in enumerate(dataset):
                if step == stop:
                    break
        del context, dataset
    gc.collect()
    assert [(ctx(), reader()) for ctx, reader in made] == [(None, None)] * 3


def test_a_dataset_outlives_its_context_object_while_it_is_used(regression) -> None:
    """The dataset itself holds what its generator reads, however the context was dropped."""
    dataset = regression.make_tf_dataset(batch_size=500, num_epochs=1).__enter__()
    gc.collect()
    assert sum(len(row.y) for row in dataset) == 3000


def test_ragged_columns_are_refused_with_advice(spark) -> None:
    converter = make_spark_converter(spark.createDataFrame([(1, [1.0]), (2, [1.0, 2.0])], "id long, r array<double>"))
    with pytest.raises(UnsupportedTypeError, match="column 'r' holds arrays of varying length") as error:
        converter.make_tf_dataset()
    assert isinstance(error.value, TypeError)  # what code written for the plain TypeError catches
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
    with pytest.raises(UnsupportedTypeError, match="column 'r' holds arrays of varying length"):
        mixed.make_tf_dataset(transform_fn=_ragged)


def test_nested_arrays_stay_tensors_through_a_transform(mixed) -> None:
    with mixed.make_tf_dataset(batch_size=300, num_epochs=1, transform_fn=lambda f: f, schema_fields=["id", "m"]) as ds:
        assert ds.element_spec.m.shape.as_list() == [None, 2, 2]
        (batch,) = list(ds)
    ids = batch.id.numpy()
    np.testing.assert_array_equal(batch.m.numpy(), np.stack([[[i, i + 1], [i + 2, i + 3]] for i in ids]))


@pytest.mark.parametrize("transform", [None, lambda frame: frame], ids=["none", "identity"])
def test_timestamps_are_int64_microseconds_with_or_without_a_transform(tmp_path, transform) -> None:
    moments = np.array(["2024-01-01T12:00:00.123456", "1960-01-01T00:00:00"], "datetime64[us]").astype(np.int64)
    pq.write_table(pa.table({"ts": pa.array(moments, pa.timestamp("us", tz="UTC"))}), tmp_path / "part-0.parquet")
    options = {"batch_size": 2, "num_epochs": 1, "shuffle_row_groups": False, "transform_fn": transform}
    with make_spark_converter(str(tmp_path)).make_tf_dataset(**options) as dataset:
        assert dataset.element_spec.ts.dtype == tf.int64
        (batch,) = list(dataset)
    assert batch.ts.numpy().tolist() == moments.tolist()


def test_a_null_string_is_refused_naming_the_column(spark) -> None:
    converter = make_spark_converter(
        spark.createDataFrame([(1, "a", b"x"), (2, "b", None)], "id long, s string, b binary")
    )
    with converter.make_tf_dataset(batch_size=2, num_epochs=1, schema_fields=["id", "s"]) as dataset:
        assert sorted(v.decode() for b in dataset for v in b.s.numpy()) == ["a", "b"]
    with converter.make_tf_dataset(batch_size=2, num_epochs=1) as dataset:
        with pytest.raises(NullValueError, match=r"^column 'b' holds nulls.*fillna.*schema_fields") as error:
            list(dataset)
    # The error the other loaders raise, and still the one TensorFlow's own iterator raises.
    assert isinstance(error.value, ValueError) and isinstance(error.value, tf.errors.InvalidArgumentError)
    assert isinstance(error.value.__cause__, NullValueError)  # raised in the generator, with its traceback
    with converter.make_tf_dataset(batch_size=2, num_epochs=1) as dataset:
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"column 'b' holds nulls"):
            list(dataset.map(lambda row: row))  # TensorFlow's iterator: its error, with the same words


def test_packed_columns_named_in_another_order_keep_their_own_values(tmp_path) -> None:
    # The reader yields columns in the order sequence= names them; the element spec has the
    # dataset's order. Values must land in their own fields, not by position.
    lengths = [3, 5, 2, 4, 1, 6, 2, 3] * 4
    a = [list(range(1, n + 1)) for n in lengths]
    pq.write_table(pa.table({"a": a, "b": [[-v for v in row] for row in a]}), tmp_path / "part-0.parquet")
    sequence = {"b": {"mode": "pack", "seq_len": 8}, "a": {"mode": "pack", "seq_len": 8}}
    converter = make_spark_converter(str(tmp_path))
    with converter.make_tf_dataset(batch_size=2, num_epochs=1, shuffle_row_groups=False, sequence=sequence) as ds:
        rows = list(ds)
    assert rows[0].a.numpy()[0].tolist() == [1, 2, 3, 1, 2, 3, 4, 5]
    for row in rows:
        a_values, b_values = row.a.numpy(), row.b.numpy()
        assert (a_values >= 0).all() and (b_values <= 0).all()
        np.testing.assert_array_equal(a_values, -b_values)


def test_a_transform_whose_column_order_changes_keeps_each_columns_values(tmp_path) -> None:
    ids = np.arange(100)
    pq.write_table(pa.table({"id": ids, "a": ids * 1.0, "b": ids * -1.0}), tmp_path / "part-0.parquet")
    calls = itertools.count()

    def reorder(frame):  # the first call (the element spec's) in one order, later ones in another
        return frame[["id", "a", "b"] if next(calls) == 0 else ["id", "b", "a"]]

    converter = make_spark_converter(str(tmp_path))
    options = {"batch_size": 10, "num_epochs": 1, "workers_count": 1, "shuffle_row_groups": False}
    with converter.make_tf_dataset(transform_fn=reorder, **options) as dataset:
        assert dataset.element_spec._fields == ("id", "a", "b")
        rows = list(dataset)
    assert next(calls) > 1  # the dataset's chunks did come in the other order
    np.testing.assert_array_equal(np.concatenate([r.a.numpy() for r in rows]), ids * 1.0)
    np.testing.assert_array_equal(np.concatenate([r.b.numpy() for r in rows]), ids * -1.0)

    def rename(frame):  # other columns than the element spec's: refused, naming both
        return frame if next(calls) == 0 else frame.rename(columns={"b": "c"})

    calls = itertools.count()
    with converter.make_tf_dataset(transform_fn=rename, **options) as dataset:
        with pytest.raises(
            tf.errors.InvalidArgumentError, match=r"columns \['id', 'a', 'c'\].*element spec's \['id', 'a', 'b'\]"
        ):
            list(dataset)


def _failing(frame):
    if frame["id"].max() >= 200:
        raise ZeroDivisionError("the transform failed at row 200")
    return frame


def test_a_batch_of_another_dtype_than_the_element_spec_is_refused_not_cast(tmp_path, monkeypatch) -> None:
    """A transform whose dtype depends on the chunk, unseeded: tf.data would cast its NaN prices to int64's minimum.

    The element spec comes from a first batch of a probe reader, which draws its own seed, so its
    first row group may not be the dataset's. Where the NumPy loader fails at the first batch of
    the other dtype, the dataset must too, rather than hand tf.data an array it casts in silence.
    """
    pq.write_table(pa.table({"id": np.arange(20)}), tmp_path / "part-0.parquet", row_group_size=10)
    prices = {i: i * 10 for i in range(10)}  # the second row group's ids have none: NaN, float64

    def priced(frame):
        frame["price"] = frame["id"].map(prices)
        return frame

    converter = make_spark_converter(str(tmp_path))

    def first_id(seed: int) -> int:
        with converter.make_numpy_iterator(batch_size=1, num_epochs=1, seed=seed) as loader:
            return int(next(iter(loader))["id"][0])

    float_first = next(seed for seed in range(100) if first_id(seed) >= 10)
    int_first = next(seed for seed in range(100) if first_id(seed) < 10)
    seeds = iter([float_first, int_first])  # the dataset's reader draws first, then the probe of its element spec
    monkeypatch.setattr(sparkfeed.reader.engine, "fresh_seed", lambda: next(seeds))
    monkeypatch.setattr(sparkfeed.tf, "SUPER_BATCH_ROWS", 10)  # as a large dataset's: several super-batches
    seen = []
    with converter.make_tf_dataset(batch_size=5, num_epochs=1, transform_fn=priced) as dataset:
        assert dataset.element_spec.price.dtype == tf.int64
        with pytest.raises(ValueError, match=r"column 'price' is float64 in this batch, not the int64 of the .*spec"):
            for row in dataset:
                seen.append(row.price.numpy().tolist())
    assert seen == []


def test_an_error_of_the_transform_keeps_its_type_when_iterated_eagerly(mixed) -> None:
    options = {"batch_size": 50, "num_epochs": 1, "shuffle_row_groups": False, "transform_fn": _failing}
    with mixed.make_tf_dataset(**options) as dataset:
        with pytest.raises(ZeroDivisionError, match=r"^the transform failed at row 200") as error:
            list(dataset)
    assert isinstance(error.value, tf.errors.OpError)  # what TensorFlow's own iterator raises, still caught
    cause = error.value.__cause__  # the transform's own exception, with its traceback and the reader's note
    assert type(cause) is ZeroDivisionError and "_failing" in "".join(traceback.format_tb(cause.__traceback__))
    assert any("sparkfeed: raised in a reader thread" in note for note in cause.__notes__)
    with mixed.make_tf_dataset(**options) as dataset:
        with pytest.raises(tf.errors.OpError, match=r"the transform failed at row 200"):
            list(dataset.map(lambda row: row))  # TensorFlow's iterator: its error, with the same words


def test_columns_that_are_not_identifiers_are_renamed_with_a_warning(spark) -> None:
    converter = make_spark_converter(spark.range(10).select(F.col("id").alias("a.b"), F.col("id").alias("ok")))
    with pytest.warns(UserWarning, match=r"\{'a.b': '_0'\}"):
        context = converter.make_tf_dataset(batch_size=10, num_epochs=1)
    with context as dataset:
        (batch,) = list(dataset)
    assert batch._fields == ("_0", "ok") and batch._0.numpy().tolist() == batch.ok.numpy().tolist()


def test_a_renamed_field_that_is_another_columns_name_is_refused(spark) -> None:
    # namedtuple's rename makes 'a b' (index 0) the field _0, and the column _0 (index 1) the field _1:
    # batch._0 was then 'a b', named as another column, with a warning only.
    df = spark.range(4).select(F.col("id").alias("a b"), (-F.col("id")).alias("_0"))
    with pytest.raises(ValueError, match=r"\{'_0': 'a b'\}.* other columns' names: rename them in Spark"):
        make_spark_converter(df).make_tf_dataset(batch_size=4, num_epochs=1)
    ok = make_spark_converter(df.select((-F.col("a b")).alias("_0"), "a b"))  # _0 at index 0 is its own field
    with pytest.warns(UserWarning, match=r"\{'a b': '_1'\}"), ok.make_tf_dataset(batch_size=4, num_epochs=1) as dataset:
        (batch,) = list(dataset)
    assert sorted(batch._0.numpy().tolist()) == [-3, -2, -1, 0]


def test_drop_last_leaves_out_each_epochs_short_batch(mixed) -> None:
    with mixed.make_tf_dataset(batch_size=64, num_epochs=2, drop_last=True, seed=1) as dataset:
        assert int(dataset.cardinality()) == 8
        sizes = [int(b.id.shape[0]) for b in dataset]
    assert sizes == [64] * 8  # 300 rows an epoch: 4 full batches, the 44-row tail left out
    with pytest.raises(ValueError, match="drop_last=1 is not allowed"):
        mixed.make_tf_dataset(drop_last=1)


def test_progress_counts_the_batches_the_dataset_yields_not_the_readers_larger_ones(mixed, capsys) -> None:
    # The reader reads super-batches of many batches and TensorFlow cuts them; the bar counts what Keras sees.
    transform = {"transform_fn": lambda frame: frame}  # a transform: one row is read first for the signature
    with mixed.make_tf_dataset(batch_size=64, num_epochs=2, drop_last=True, progress=True, **transform) as dataset:
        assert len(list(dataset)) == 8
    err = capsys.readouterr().err
    bars = [line.rsplit("\r", 1)[-1] for line in err.split("\n") if line.strip()]  # a closed bar ends its line
    assert [bar.split(":")[0] for bar in bars] == ["epoch 0", "epoch 1"]  # none for the signature's one-row look
    assert all("| 4/4 [" in bar for bar in bars)  # 300 rows: 4 batches of 64, the tail dropped


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


# --------------------------------------------------------------------------- Petastorm's calls


def _ids(batches) -> list[int]:
    return [int(i) for b in batches for i in b.id.numpy()]


def test_positional_arguments_are_petastorms(mixed) -> None:
    # (batch_size, prefetch, num_epochs, workers_count, shuffling_queue_capacity): make_tf_dataset(10, 2) is
    # prefetch=2 and endless epochs, as in Petastorm; in the old order it meant two epochs (60 batches).
    with mixed.make_tf_dataset(10, 2, shuffle_row_groups=False) as dataset:
        taken = list(dataset.take(61))
    assert len(taken) == 61 and all(int(b.id.shape[0]) == 10 for b in taken)
    with mixed.make_tf_dataset(None, None, 1, 1, None, shuffle_row_groups=False) as dataset:  # None: 32 rows
        batches = list(dataset)
    assert [int(b.id.shape[0]) for b in batches] == [32] * 9 + [12] and _ids(batches) == list(range(300))
    with mixed.make_tf_dataset(100, None, 1, None, 300, shuffle_row_groups=False, seed=0) as dataset:
        shuffled = _ids(dataset)  # the fifth: rows shuffled across a window of all 300
    assert shuffled != list(range(300)) and sorted(shuffled) == list(range(300))


def test_batch_size_none_means_32_and_a_bad_one_names_itself(mixed) -> None:
    with mixed.make_tf_dataset(num_epochs=1) as dataset:
        assert int(next(iter(dataset)).id.shape[0]) == 32
    with pytest.raises(ValueError, match=r"^batch_size=0 is not allowed: it must be an integer >= 1$"):
        mixed.make_tf_dataset(batch_size=0)


def test_prefetch_takes_tf_data_autotune_as_petastorm_passed_it_on(mixed) -> None:
    # Petastorm handed prefetch to dataset.prefetch as it was: tf.data.AUTOTUNE (-1) was refused here.
    for prefetch in (tf.data.AUTOTUNE, tf.data.experimental.AUTOTUNE, 0, 3):
        with mixed.make_tf_dataset(32, prefetch, 1, shuffle_row_groups=False) as dataset:
            assert _ids(dataset) == list(range(300))
    for bad in (-2, 2.0, True, "auto"):
        with pytest.raises(ValueError, match=rf"^prefetch={bad!r} is not allowed: it must be an integer >= 0, tf"):
            mixed.make_tf_dataset(32, bad, 1)


def test_graph_mode_one_shot_iterator_in_a_session(mixed) -> None:
    # Petastorm's test_primitive, as its users write it: TF1 graph mode, a Session, namedtuples of NumPy.
    with tf.Graph().as_default():
        with mixed.make_tf_dataset(num_epochs=1, shuffle_row_groups=False) as dataset:
            assert not tf.executing_eagerly()
            iterator = dataset.make_one_shot_iterator()
            tensor = iterator.get_next()
            with tf.compat.v1.Session() as session:
                first = session.run(tensor)
                second = session.run(tensor)
    assert type(first).__name__ == "Row" and first.id.tolist() == list(range(32))
    assert second.id.tolist() == list(range(32, 64))
    assert first.x.dtype == np.float32 and first.id.dtype == np.int64 and first.flag.dtype == np.bool_
    assert first.s.dtype == np.object_ and first.s[3] == b"s3" and first.m.shape == (32, 2, 2)
    assert first.day[0] == (datetime.date(2020, 1, 1) - datetime.date(1970, 1, 1)).days


def test_graph_mode_initializable_iterator_restarts_the_reader(mixed) -> None:
    with tf.Graph().as_default():
        with mixed.make_tf_dataset(batch_size=50, num_epochs=1, shuffle_row_groups=False) as dataset:
            iterator = dataset.make_initializable_iterator()
            tensor = iterator.get_next()
            with tf.compat.v1.Session() as session:
                session.run(iterator.initializer)
                partial = session.run(tensor).id.tolist()
                session.run(iterator.initializer)  # back to the start, the unfinished pass dropped
                ids = []
                with pytest.raises(tf.errors.OutOfRangeError):
                    while True:
                        ids.extend(session.run(tensor).id.tolist())
    assert partial == list(range(50)) and ids == list(range(300))


def test_tf1_attributes_and_functions_in_graph_mode(mixed) -> None:
    with tf.Graph().as_default():
        with mixed.make_tf_dataset(batch_size=100, num_epochs=1, shuffle_row_groups=False) as dataset:
            assert isinstance(dataset, tf.compat.v1.data.Dataset)
            assert dataset.output_types._fields == dataset.output_shapes._fields == dataset.element_spec._fields
            assert dataset.output_types.s == tf.string and dataset.output_types.day == tf.int64
            assert dataset.output_shapes.m.as_list() == [None, 2, 2]
            doubled = dataset.map(lambda row: row.id * 2)
            assert isinstance(doubled, tf.compat.v1.data.Dataset)  # transformations stay TF1 datasets
            tensor = tf.compat.v1.data.make_one_shot_iterator(doubled).get_next()
            with tf.compat.v1.Session() as session:
                assert session.run(tensor).tolist() == list(range(0, 200, 2))


def test_tf1_methods_also_work_eagerly(mixed) -> None:
    with mixed.make_tf_dataset(batch_size=100, num_epochs=1, shuffle_row_groups=False) as dataset:
        assert dataset.output_types.id == tf.int64 and dataset.output_shapes.m.as_list() == [None, 2, 2]
        assert dataset.output_classes.id is tf.Tensor
        iterator = dataset.make_one_shot_iterator()
        assert type(iterator).__name__ == "RowIterator"  # the fast eager iterator, as iter(dataset)
        assert type(tf.compat.v1.data.make_one_shot_iterator(dataset)).__name__ == "RowIterator"
        assert [int(next(iterator).id.numpy()[0]) for _ in range(3)] == [0, 100, 200]
        with pytest.raises(RuntimeError, match="not supported in eager mode"):
            dataset.make_initializable_iterator()  # TensorFlow's rule, with Petastorm's datasets too
        # Still a TF2 dataset: TF1's map would forget the cardinality Keras reads to end its epochs.
        assert not isinstance(dataset, tf.compat.v1.data.Dataset)
        assert int(dataset.map(lambda row: row.id).cardinality()) == 3


def test_autograph_transforms_everything(mixed, caplog) -> None:
    # Petastorm's test_tf_autograph: iterating the dataset leaves no "AutoGraph could not transform" warning.
    caplog.clear()
    with mixed.make_tf_dataset(batch_size=7, num_epochs=1) as dataset:
        assert len(_ids(dataset)) == 300
    assert "AutoGraph could not transform" not in " ".join(caplog.messages)


def test_a_tf1_program_with_eager_execution_disabled(mixed, tmp_path) -> None:
    blob = tmp_path / "converter.pkl"
    blob.write_bytes(pickle.dumps(mixed))
    seen = run_job("tf1_job.py", str(blob), cwd=tmp_path)
    assert seen["eager"] is False and seen["v1"] is True
    assert seen["types"] == ["int64", "float32", "string", "int64", "int32", "bool"]
    assert seen["first"] == list(range(0, 50, 2)) and seen["ids"] == list(range(300))
