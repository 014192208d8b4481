"""Petastorm's converter idioms, run against sparkfeed with only the import changed.

A migrating user turns ``from petastorm.spark import SparkDatasetConverter, make_spark_converter``
and ``from petastorm import TransformSpec`` into the imports below, and nothing else. Each test is
one of Petastorm's own converter tests (uber/petastorm ``petastorm/tests/test_spark_dataset_converter.py``)
or one of its example programs (``examples/spark_dataset_converter/``), written as Petastorm's
users write them, and asserts what Petastorm documents. Tests of Petastorm's private helpers are
not ported. Where sparkfeed differs on purpose (README, CHANGELOG), the test asserts sparkfeed's
behaviour and a comment starting "Deliberate difference" says what Petastorm did.

The whole module runs as Petastorm's suite does: the parent cache directory comes from
``SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF`` on the Spark conf, with sparkfeed's own key
unset (see :func:`petastorm_conf`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
import tensorflow.compat.v1 as tf_v1
import torch
from pyspark import cloudpickle
from pyspark.sql import functions as F
from pyspark.sql.types import (
    BinaryType,
    BooleanType,
    ByteType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    ShortType,
    StringType,
    StructField,
    StructType,
)

import sparkfeed as petastorm_spark  # was: import petastorm.spark as petastorm_spark
from sparkfeed import SparkDatasetConverter, TransformSpec, make_spark_converter, register_delete_dir_handler
from sparkfeed.predicates import in_lambda  # was: from petastorm.predicates import in_lambda
from sparkfeed.transform import edit_field  # was: from petastorm.transform import edit_field

# --------------------------------------------------------------------------- the suite's setting


@pytest.fixture(scope="module", autouse=True)
def petastorm_conf(spark, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The parent cache directory set as Petastorm's suite (and every Petastorm user) sets it.

    Petastorm reads only ``petastorm.spark.converter.parentCacheDirUrl``; the session fixture
    also sets sparkfeed's own key, which would win, so it is unset for this module and restored
    after it. Yields the parent URL, ``file://`` plus the path, as Petastorm's ``temp_url``.
    """
    parent = "file://" + str(tmp_path_factory.mktemp("petastorm-parent"))
    ours = spark.conf.get(SparkDatasetConverter.CACHE_DIR_CONF)
    spark.conf.unset(SparkDatasetConverter.CACHE_DIR_CONF)
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, parent)
    try:
        yield parent
    finally:
        spark.conf.unset(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF)
        spark.conf.set(SparkDatasetConverter.CACHE_DIR_CONF, ours)


@pytest.fixture(scope="module", autouse=True)
def functions_travel_by_value() -> Iterator[None]:
    """Lets Spark tasks call this module's functions and classes (the examples' ``Net``, ``train``).

    A Petastorm example defines its model and training loop in the script Spark pickles from;
    here they live in a test module the executors cannot import, so cloudpickle sends them by
    value, as it sends a script's ``__main__`` functions.
    """
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def create_tf_graph(func: Callable[..., Any]) -> Callable[..., Any]:
    """Petastorm's decorator (``petastorm/tests/test_tf_utils.py``): the test runs in a TF1 graph."""

    @functools.wraps(func)
    def run_func_with_tf_graph(*args: Any, **kwargs: Any) -> Any:
        with tf.Graph().as_default():
            return func(*args, **kwargs)

    return run_func_with_tf_graph


def _local_path(url: str) -> Path:
    """The local path of a ``file:`` URL, as Petastorm's tests take ``urlparse(url).path``."""
    return Path(unquote(urlparse(url).path))


def _one_shot(dataset: Any) -> Any:
    """The first element of a TF1 dataset, read as Petastorm's tests read it: a one-shot iterator in a Session."""
    iterator = dataset.make_one_shot_iterator()
    tensor = iterator.get_next()
    with tf_v1.Session() as sess:
        return sess.run(tensor)


# --------------------------------------------------------------------------- Petastorm's converter tests


PRIMITIVE_SCHEMA = StructType(
    [
        StructField("bool_col", BooleanType(), False),
        StructField("float_col", FloatType(), False),
        StructField("double_col", DoubleType(), False),
        StructField("short_col", ShortType(), False),
        StructField("int_col", IntegerType(), False),
        StructField("long_col", LongType(), False),
        StructField("str_col", StringType(), False),
        StructField("bin_col", BinaryType(), False),
        StructField("byte_col", ByteType(), False),
    ]
)
PRIMITIVE_ROWS = [
    (True, 0.12, 432.1, 5, 5, 0, "hello", bytearray(b"spark\x01\x02"), -128),
    (False, 123.45, 0.987, 9, 908, 765, "petastorm", bytearray(b"\x0012345"), 127),
]


@create_tf_graph
def test_primitive(spark, petastorm_conf) -> None:
    """Petastorm's ``test_primitive``: every primitive type through ``make_tf_dataset()`` in a TF1 Session.

    The defaults (batch 32, endless epochs, float32 for doubles) and the NumPy dtypes a Session
    hands back are what TF1 training code was written against.
    """
    df = spark.createDataFrame(PRIMITIVE_ROWS, schema=PRIMITIVE_SCHEMA).coalesce(1)
    expected_df = df.collect()

    converter = make_spark_converter(df)
    assert converter.cache_dir_url.startswith(petastorm_conf + "/")  # Petastorm's conf key chose the directory
    with converter.make_tf_dataset() as dataset:
        ts = _one_shot(dataset)
        for i in range(converter.dataset_size):
            for col in df.schema.names:
                actual_ele = getattr(ts, col)[i]
                expected_ele = expected_df[i][col]
                if col == "str_col":
                    actual_ele = actual_ele.decode()
                if col == "bin_col":
                    actual_ele = bytearray(actual_ele)
                if col in ("float_col", "double_col"):
                    assert pytest.approx(expected_ele, rel=1e-6) == actual_ele  # the default dtype is float32
                else:
                    assert expected_ele == actual_ele
        assert len(expected_df) == len(converter)
    # Deliberate difference: an endless dataset's batches end with each epoch (2 rows here); Petastorm's
    # unbatched and rebatched the endless stream, so its first batch held 32 rows, the two repeating.
    assert len(ts.long_col) == 2

    assert np.bool_ == ts.bool_col.dtype.type
    assert np.float32 == ts.float_col.dtype.type
    assert np.float32 == ts.double_col.dtype.type  # default dtype float32
    assert np.int16 == ts.short_col.dtype.type
    assert np.int32 == ts.int_col.dtype.type
    assert np.int64 == ts.long_col.dtype.type
    assert np.int8 == ts.byte_col.dtype.type
    assert np.object_ == ts.str_col.dtype.type
    assert np.object_ == ts.bin_col.dtype.type


@create_tf_graph
def test_array_field(spark) -> None:
    """Petastorm's ``test_array_field``: an array column made by a pandas UDF, its length inferred."""

    @F.pandas_udf("array<float>")
    def gen_array(v: pd.Series) -> pd.Series:
        return v.map(lambda x: np.random.rand(10))

    df1 = spark.range(10).withColumn("v", gen_array("id")).repartition(2)
    cv1 = make_spark_converter(df1)
    with cv1.make_tf_dataset(batch_size=4, num_epochs=1) as dataset:
        batch1 = _one_shot(dataset)
    assert batch1.v.shape == (4, 10) and batch1.v.dtype == np.float32


@create_tf_graph
def test_dtype(spark) -> None:
    """Petastorm's ``test_dtype`` and ``test_array``: ``dtype`` sets the precision of floats and float arrays.

    'float32' (the default) narrows doubles, 'float64' widens floats, None keeps each column's
    own; float16 is refused in Petastorm's words.
    """
    df = spark.range(10)
    df = (
        df.withColumn("float_col", df.id.cast(FloatType()))
        .withColumn("double_col", df.id.cast(DoubleType()))
        .withColumn("c1", F.array(df.id.cast(DoubleType()), F.lit(1.0), F.lit(2.0)))
    )

    converter1 = make_spark_converter(df)
    with converter1.make_tf_dataset() as dataset:
        ts = _one_shot(dataset)
    assert np.float32 == ts.double_col.dtype.type
    assert np.float32 == ts.c1.dtype.type and ts.c1.shape == (10, 3)  # test_array: array<double> as float32

    converter2 = make_spark_converter(df, dtype="float64")
    with converter2.make_tf_dataset() as dataset:
        ts = _one_shot(dataset)
    assert np.float64 == ts.float_col.dtype.type
    assert np.float64 == ts.c1.dtype.type

    converter3 = make_spark_converter(df, dtype=None)
    with converter3.make_tf_dataset() as dataset:
        ts = _one_shot(dataset)
    assert np.float32 == ts.float_col.dtype.type
    assert np.float64 == ts.double_col.dtype.type

    with pytest.raises(ValueError, match="dtype float16 is not supported"):
        make_spark_converter(df, dtype="float16")


@create_tf_graph
def test_vector_to_array(spark) -> None:
    """Petastorm's ``test_vector_to_array``: MLlib vectors, new and old API, become float32 arrays."""
    from pyspark.ml.linalg import Vectors
    from pyspark.mllib.linalg import Vectors as OldVectors

    df = spark.createDataFrame(
        [
            (Vectors.dense(1.0, 2.0, 3.0), OldVectors.dense(10.0, 20.0, 30.0)),
            (Vectors.dense(5.0, 6.0, 7.0), OldVectors.dense(50.0, 60.0, 70.0)),
        ],
        ["vec", "oldVec"],
    )
    converter1 = make_spark_converter(df)
    with converter1.make_tf_dataset(num_epochs=1) as dataset:
        ts = _one_shot(dataset)
    assert np.float32 == ts.vec.dtype.type
    assert np.float32 == ts.oldVec.dtype.type
    vec_col = ts.vec[ts.vec[:, 0].argsort()]
    old_vec_col = ts.oldVec[ts.oldVec[:, 0].argsort()]
    assert ts.vec.shape == (2, 3)
    assert ts.oldVec.shape == (2, 3)
    assert (vec_col[0] == [1.0, 2.0, 3.0]).all() and (vec_col[1] == [5.0, 6.0, 7.0]).all()
    assert (old_vec_col[0] == [10.0, 20.0, 30.0]).all() and (old_vec_col[1] == [50.0, 60.0, 70]).all()


def test_torch_primitive(spark) -> None:
    """Petastorm's ``test_torch_primitive``: the tensor dtype of every numeric Spark type."""
    df = spark.createDataFrame(
        [row[:6] + row[8:] for row in PRIMITIVE_ROWS],
        schema=StructType([f for f in PRIMITIVE_SCHEMA.fields if f.name not in ("str_col", "bin_col")]),
    ).coalesce(1)
    expected_df = df.collect()

    converter = make_spark_converter(df)
    batch = None
    with converter.make_torch_dataloader(num_epochs=1) as dataloader:
        for batch in dataloader:  # batch_size=32: one batch of both rows
            for i, expected in enumerate(expected_df):
                for col in df.schema.names:
                    actual_ele = batch[col][i]
                    if col in ("float_col", "double_col"):
                        assert pytest.approx(expected[col], rel=1e-6) == actual_ele  # the default dtype is float32
                    else:
                        assert expected[col] == actual_ele
        assert len(expected_df) == len(converter)
    assert batch is not None
    # Deliberate difference (README, Types): bool columns are torch.bool; Petastorm gave torch.uint8.
    assert torch.bool == batch["bool_col"].dtype
    assert torch.int8 == batch["byte_col"].dtype
    assert torch.float32 == batch["double_col"].dtype
    assert torch.float32 == batch["float_col"].dtype
    assert torch.int32 == batch["int_col"].dtype
    assert torch.int64 == batch["long_col"].dtype
    assert torch.int16 == batch["short_col"].dtype


def _transform_row(df_row: pd.DataFrame) -> pd.DataFrame:
    # Petastorm's test composes torchvision's transforms.Lambda(lambda x: x * 0.1), which calls the lambda.
    return df_row * 0.1


def test_torch_batch_size_and_transform_spec(spark) -> None:
    """Petastorm's ``test_torch_batch_size`` and ``test_torch_transform_spec``.

    ``TransformSpec(func)`` runs the function on pandas frames of rows; its output is what the
    batches hold.
    """
    conv = make_spark_converter(spark.range(8))
    with conv.make_torch_dataloader(batch_size=2, num_epochs=1) as dataloader:
        sizes = [batch["id"].shape[0] for batch in dataloader]
    assert sizes == [2, 2, 2, 2]

    transform = TransformSpec(_transform_row)
    with conv.make_torch_dataloader(transform_spec=transform, num_epochs=1) as dataloader:
        ids = [i for batch in dataloader for i in batch["id"].tolist()]
    assert min(ids) >= 0 and max(ids) < 1
    assert sorted(ids) == pytest.approx([i * 0.1 for i in range(8)])

    # removed_fields: the columns dropped after the function ran; edit_fields: the dtype of the one it added.
    doubled = TransformSpec(
        lambda frame: frame.assign(double=frame["id"] * 2),
        edit_fields=[("double", np.int32, (), False)],
        removed_fields=["id"],
    )
    with conv.make_torch_dataloader(transform_spec=doubled, num_epochs=1) as dataloader:
        (batch,) = list(dataloader)
    assert list(batch) == ["double"] and batch["double"].dtype == torch.int32
    assert sorted(batch["double"].tolist()) == list(range(0, 16, 2))


def test_delete_and_the_delete_dir_handler(spark, petastorm_conf) -> None:
    """Petastorm's ``test_delete``, ``test_set_delete_handler`` and ``test_df_delete_caching_meta``.

    ``delete()`` removes the cache now; a handler given to ``register_delete_dir_handler`` does
    the removal instead (its error reaches the caller), None restores the default; a DataFrame
    converted after its cache was deleted is written again, and other caches stay reused.
    """
    df = spark.createDataFrame([(1, 2), (4, 5)], ["col1", "col2"])
    converter = make_spark_converter(df)
    other = make_spark_converter(spark.range(20))
    local_path = _local_path(converter.cache_dir_url)
    assert local_path.parent == _local_path(petastorm_conf) and os.path.exists(local_path)
    assert len(converter) == 2

    def test_delete_handler(dir_url: str) -> None:
        raise RuntimeError("Not implemented delete handler.")

    register_delete_dir_handler(test_delete_handler)
    try:
        with pytest.raises(RuntimeError, match="Not implemented delete handler"):
            converter.delete()
        assert os.path.exists(local_path)  # the handler decides how, and it deleted nothing
    finally:
        register_delete_dir_handler(None)  # restore the default handler (other tests use it)

    converter.delete()
    assert not os.path.exists(local_path)
    again = make_spark_converter(df)  # recreating the deleted converter works
    assert again.cache_dir_url != converter.cache_dir_url and os.path.exists(_local_path(again.cache_dir_url))
    assert make_spark_converter(spark.range(20)).cache_dir_url == other.cache_dir_url


def _codecs(converter: SparkDatasetConverter) -> set[str]:
    return {pq.ParquetFile(_local_path(url)).metadata.row_group(0).column(0).compression for url in converter.file_urls}


def test_compression_and_row_group_size(spark) -> None:
    """Petastorm's ``test_compression``, and what ``parquet_row_group_size_bytes`` documents.

    None leaves the data uncompressed, a codec name compresses with it (case-insensitive, as
    Petastorm lowers it); the row-group size bounds the bytes of each written row group.
    """
    df1 = spark.range(10)
    assert _codecs(make_spark_converter(df1)) == {"UNCOMPRESSED"}
    assert _codecs(make_spark_converter(df1, compression_codec="snappy")) == {"SNAPPY"}
    assert _codecs(make_spark_converter(df1, compression_codec="GZIP")) == {"GZIP"}
    # Deliberate difference: Petastorm's list also names 'bzip2' and 'deflate', which it passes on to Spark,
    # whose Parquet writer refuses them (an IllegalArgumentException: "The codec bzip2 is not available");
    # sparkfeed refuses them itself, with a ValueError naming the codecs that work.
    for codec in ("bzip2", "deflate"):
        with pytest.raises(ValueError, match=rf"compression_codec='{codec}' is not allowed: it must be None or one of"):
            make_spark_converter(df1, compression_codec=codec)

    big = spark.range(200_000, numPartitions=1)
    whole, small = make_spark_converter(big), make_spark_converter(big, parquet_row_group_size_bytes=256 * 1024)
    groups = [pq.ParquetFile(_local_path(c.file_urls[0])).metadata.num_row_groups for c in (whole, small)]
    assert groups[0] == 1 and groups[1] >= 4  # 1.6 MB of ids: one default 32 MiB group, several of 256 KiB
    with small.make_torch_dataloader(batch_size=50_000, num_epochs=1) as loader:
        assert sorted(i for batch in loader for i in batch["id"].tolist()) == list(range(200_000))


def test_df_caching(spark, petastorm_conf, tmp_path) -> None:
    """Petastorm's ``test_df_caching``: the same DataFrame with the same options reuses its cache.

    Another DataFrame, row-group size, codec or parent directory gets its own; parent URLs that
    differ only by a trailing slash are the same directory.
    """
    df1 = spark.range(10)
    df2 = spark.range(10)
    df3 = spark.range(20)

    converter1 = make_spark_converter(df1)
    converter2 = make_spark_converter(df2)
    assert converter1.cache_dir_url == converter2.cache_dir_url  # the same logical plan

    converter3 = make_spark_converter(df3)
    assert converter1.cache_dir_url != converter3.cache_dir_url

    converter11 = make_spark_converter(df1, parquet_row_group_size_bytes=8 * 1024 * 1024)
    converter21 = make_spark_converter(df1, parquet_row_group_size_bytes=16 * 1024 * 1024)
    assert converter11.cache_dir_url != converter21.cache_dir_url

    converter12 = make_spark_converter(df1, compression_codec=None)
    converter22 = make_spark_converter(df1, compression_codec="snappy")
    assert converter12.cache_dir_url != converter22.cache_dir_url
    assert converter12.cache_dir_url == converter1.cache_dir_url  # None is the default
    # Petastorm turns None into 'uncompressed' before comparing: both name the same cache.
    assert make_spark_converter(df1, compression_codec="uncompressed").cache_dir_url == converter1.cache_dir_url

    new_temp_url = "file://" + str(tmp_path)
    try:
        spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, new_temp_url)
        converter13 = make_spark_converter(df1)
        assert converter1.cache_dir_url != converter13.cache_dir_url
        assert converter13.cache_dir_url.startswith(new_temp_url + "/")

        spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, new_temp_url + os.sep)
        converter14 = make_spark_converter(df1)
        assert converter13.cache_dir_url == converter14.cache_dir_url
    finally:
        spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, petastorm_conf)


# Petastorm's make_batch_reader keywords (petastorm/reader.py) with Petastorm's defaults, which its converter's
# loaders forward; workers_count and num_epochs are the loaders' own parameters, dataset_url_or_urls theirs.
ACCEPTED_READER_KEYWORDS: dict[str, Any] = {
    "schema_fields": None,
    "reader_pool_type": "thread",
    "seed": None,
    "shuffle_rows": False,
    "shuffle_row_groups": True,
    "predicate": None,
    "cur_shard": None,
    "shard_count": None,
    "shard_seed": None,
    "transform_spec": None,
    "filters": None,
    "storage_options": None,
    "filesystem": None,
}
IGNORED_READER_KEYWORDS: dict[str, tuple[Any, Any]] = {
    # name: (Petastorm's default, which asks for nothing sparkfeed lacks; another value, which does)
    "results_queue_size": (50, 10),
    "shuffle_row_drop_partitions": (1, 2),
    "rowgroup_selector": (None, "a selector"),
    "cache_type": ("null", "local-disk"),
    "cache_location": (None, "/tmp/petastorm-cache"),
    "cache_size_limit": (None, 10**9),
    "cache_row_size_estimate": (None, 100),
    "cache_extra_settings": (None, {}),
    "hdfs_driver": ("libhdfs3", "libhdfs"),
    "zmq_copy_buffers": (True, False),
    "convert_early_to_numpy": (False, True),
}


def test_unexpected_param_and_petastorms_reader_keywords(spark) -> None:
    """Petastorm's ``test_torch_unexpected_param``, and every keyword its loaders forward to its reader.

    A typo is Python's ``TypeError`` with its standard phrase; Petastorm's reader keywords
    spelled out with their defaults change nothing; the ones without a sparkfeed meaning are
    refused with what to do instead, never silently ignored.
    """
    conv = make_spark_converter(spark.range(8))
    with pytest.raises(TypeError, match="unexpected keyword argument 'xyz'"):
        with conv.make_torch_dataloader(xyz=1) as _:
            pass
    with pytest.raises(TypeError, match="unexpected keyword argument 'xyz'"):
        with conv.make_tf_dataset(xyz=1) as _:
            pass

    with conv.make_torch_dataloader(num_epochs=1, workers_count=None, **ACCEPTED_READER_KEYWORDS) as loader:
        assert sorted(i for batch in loader for i in batch["id"].tolist()) == list(range(8))
    with conv.make_tf_dataset(num_epochs=1, workers_count=None, **ACCEPTED_READER_KEYWORDS) as dataset:
        assert sorted(i for batch in dataset for i in batch.id.numpy().tolist()) == list(range(8))

    # Petastorm's reader-cache, queue, HDFS-driver and process-pool tuning keywords have no counterpart
    # (sparkfeed.options.PETASTORM_ONLY): at Petastorm's default they ask for nothing and are ignored;
    # any other value is refused with Python's phrase and advice (a deliberate difference).
    defaults = {name: default for name, (default, _) in IGNORED_READER_KEYWORDS.items()}
    with conv.make_torch_dataloader(num_epochs=1, **defaults) as loader:
        assert sorted(i for batch in loader for i in batch["id"].tolist()) == list(range(8))
    with conv.make_tf_dataset(num_epochs=1, **defaults) as dataset:
        assert sorted(i for batch in dataset for i in batch.id.numpy().tolist()) == list(range(8))
    for name, (_, other) in IGNORED_READER_KEYWORDS.items():
        for make in (conv.make_torch_dataloader, conv.make_tf_dataset):
            with pytest.raises(
                TypeError, match=rf"unexpected keyword argument '{name}'; {name}: \w.*only Petastorm's default"
            ):
                make(**{name: other})
    with pytest.raises(TypeError, match="dataset_url_or_urls"):  # Petastorm: "excluding dataset_url"
        conv.make_torch_dataloader(dataset_url_or_urls=conv.cache_dir_url)


def test_petastorm_args_reach_the_reader(spark) -> None:
    """Petastorm's ``test_tf_dataset_petastorm_args`` and ``test_torch_dataloader_advanced_params``.

    Petastorm mocked its reader to see the forwarded arguments; here their effects are read:
    ``reader_pool_type='dummy'`` with ``cur_shard``/``shard_count`` reads one shard, each row in
    one of them, endless by default; ``num_epochs=1, workers_count=2`` reads every row once.
    """
    df1 = spark.range(100).repartition(4)
    conv1 = make_spark_converter(df1)

    shards = []
    for cur_shard in range(4):
        with conv1.make_torch_dataloader(reader_pool_type="dummy", cur_shard=cur_shard, shard_count=4) as loader:
            batches = [batch["id"].tolist() for _, batch in zip(range(3), loader, strict=False)]
        assert len(batches) == 3 and all(set(b) == set(batches[0]) for b in batches)  # endless: the shard again
        shards.append(set(batches[0]))
    assert sorted(i for shard in shards for i in shard) == list(range(100))
    # Deliberate difference (README, cur_shard): shards split the rows evenly; Petastorm's were whole row
    # groups, here the four files that repartition(4) wrote, whose sizes vary from run to run.
    assert [len(shard) for shard in shards] == [25] * 4 and len(conv1.file_urls) == 4

    with conv1.make_tf_dataset(reader_pool_type="dummy", cur_shard=1, shard_count=4) as dataset:
        taken = [set(batch.id.numpy().tolist()) for batch in dataset.take(3)]
    assert all(ids == shards[1] for ids in taken)  # the same shard, endless

    with conv1.make_torch_dataloader(num_epochs=1, workers_count=2) as loader:
        assert sorted(i for batch in loader for i in batch["id"].tolist()) == list(range(100))
    with conv1.make_tf_dataset(num_epochs=1, workers_count=2) as dataset:
        assert sorted(i for batch in dataset for i in batch.id.numpy().tolist()) == list(range(100))


def _scale(frame: pd.DataFrame) -> pd.DataFrame:
    frame["scaled"] = frame["feature_b"] / 2
    return frame


@pytest.fixture(scope="module")
def features(spark) -> SparkDatasetConverter:
    df = spark.range(400, numPartitions=4).selectExpr(
        "id", "id % 10 AS feature_a", "CAST(id * 2 AS DOUBLE) AS feature_b", "id % 3 AS label"
    )
    return make_spark_converter(df)  # four files of one row group each: row groups to shuffle and shard


SPEC = TransformSpec(
    _scale, edit_fields=[edit_field("scaled", np.float32, (), False)], selected_fields=["id", "scaled", "label"]
)
SELECTING = {  # every keyword that selects or changes rows and columns, as a Petastorm user passes them
    "schema_fields": ["id", "feature_.*", "label"],
    "filters": [("feature_a", "<", 5)],
    "predicate": in_lambda(["label"], lambda label: label != 0),
    "transform_spec": SPEC,
    "reader_pool_type": "thread",
    "seed": 3,
    "shuffle_rows": True,
    "shuffle_row_groups": True,
    "storage_options": None,
    "filesystem": None,
}
KEPT = [i for i in range(400) if i % 10 < 5 and i % 3 != 0]


def test_torch_dataloader_with_every_keyword_positionally(features) -> None:
    """``make_torch_dataloader(batch_size, num_epochs, workers_count, shuffling_queue_capacity, data_loader_fn)``.

    Petastorm's positional order, with every reader keyword: the rows ``filters`` and the
    predicate keep, the columns the TransformSpec selects (its edit_fields dtype), shuffled,
    every kept row once an epoch; shards by ``cur_shard``/``shard_count``/``shard_seed`` split
    the rows, each row in one shard.
    """
    with features.make_torch_dataloader(16, 2, 2, 64, None, **SELECTING) as loader:
        batches = list(loader)
    assert list(batches[0]) == ["id", "scaled", "label"]
    assert batches[0]["scaled"].dtype == torch.float32 and batches[0]["id"].dtype == torch.int64
    ids = [i for batch in batches for i in batch["id"].tolist()]
    half = len(ids) // 2
    assert sorted(ids[:half]) == sorted(ids[half:]) == KEPT and ids[:half] != KEPT  # two shuffled epochs
    assert all(len(batch["id"]) <= 16 for batch in batches) and len(batches[0]["id"]) == 16
    for batch in batches:
        assert batch["scaled"].tolist() == [float(i) for i in batch["id"].tolist()]
        assert batch["label"].tolist() == [i % 3 for i in batch["id"].tolist()]

    shards = []
    for cur_shard in range(4):
        with features.make_torch_dataloader(
            10, 1, 1, 0, None, reader_pool_type="dummy", cur_shard=cur_shard, shard_count=4, shard_seed=5
        ) as loader:
            shards.append([i for batch in loader for i in batch["id"].tolist()])
    assert sorted(i for shard in shards for i in shard) == list(range(400)) and {len(s) for s in shards} == {100}


def test_tf_dataset_with_every_keyword_positionally(features) -> None:
    """``make_tf_dataset(batch_size, prefetch, num_epochs, workers_count, shuffling_queue_capacity)``.

    Petastorm's positional order (``make_tf_dataset(16, 2, ...)`` is batch 16, prefetch 2), with
    every reader keyword, giving what the torch loader gives; ``dataset.map(...)`` over it, as
    Keras input pipelines do; shards split the rows.
    """
    with features.make_tf_dataset(16, 2, 2, 2, 64, **SELECTING) as dataset:
        assert dataset.element_spec._fields == ("id", "scaled", "label")
        assert dataset.element_spec.scaled.dtype == tf.float32
        pairs = list(dataset.map(lambda x: (x.id, x.scaled)))
    ids = [i for batch_ids, _ in pairs for i in batch_ids.numpy().tolist()]
    half = len(ids) // 2
    assert sorted(ids[:half]) == sorted(ids[half:]) == KEPT and ids[:half] != KEPT
    assert int(pairs[0][0].shape[0]) == 16
    for batch_ids, scaled in pairs:
        np.testing.assert_array_equal(scaled.numpy(), batch_ids.numpy().astype(np.float32))

    shards = []
    for cur_shard in range(4):
        with features.make_tf_dataset(
            10, None, 1, 1, None, reader_pool_type="dummy", cur_shard=cur_shard, shard_count=4, shard_seed=5
        ) as dataset:
            shards.append([i for batch in dataset for i in batch.id.numpy().tolist()])
    assert sorted(i for shard in shards for i in shard) == list(range(400)) and {len(s) for s in shards} == {100}


def _reversed_columns(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[list(reversed(frame.columns))]


def _with_id_twice(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(twice=frame["id"] * 2)[["twice", "label", "id", "feature_a", "feature_b"]]


# (TransformSpec, the batch's columns in Petastorm 0.13.1's order), as Petastorm's transform_schema orders them:
# the columns given, less the edited and removed ones, then edit_fields in their order; run against Petastorm.
PETASTORM_TRANSFORM_ORDERS = [
    (TransformSpec(_reversed_columns), ["id", "feature_a", "feature_b", "label"]),
    (TransformSpec(edit_fields=[edit_field("id", np.int64, ())]), ["feature_a", "feature_b", "label", "id"]),
    (
        TransformSpec(
            _with_id_twice,
            edit_fields=[edit_field("twice", np.int64, ()), edit_field("feature_a", np.int64, ())],
            removed_fields=["feature_b"],
        ),
        ["id", "label", "twice", "feature_a"],
    ),
]


@pytest.mark.parametrize(("spec", "columns"), PETASTORM_TRANSFORM_ORDERS, ids=["reordered", "edited", "added"])
def test_a_transforms_columns_come_in_petastorms_order_not_the_functions(features, spec, columns) -> None:
    """The batch's columns after a TransformSpec are in the order Petastorm's transformed schema gives them.

    Petastorm built every batch from its transformed schema, so the function's own column order
    never showed, and an edited column moved after the others. The order is what positional code
    reads: a TF element is a namedtuple that ``a, b, *rest = element`` and Keras (a 2-tuple as
    ``(x, y)``) unpack by position, and ``list(batch.values())`` of a torch batch. sparkfeed
    followed the function's order, so the same code silently took other columns.
    """
    options = {"batch_size": 400, "num_epochs": 1, "shuffle_row_groups": False, "transform_spec": spec}
    with features.make_torch_dataloader(**options) as loader:
        (batch,) = list(loader)
    assert list(batch) == columns
    with features.make_tf_dataset(**options) as dataset:
        assert list(dataset.element_spec._fields) == columns
        (element,) = list(dataset)
    first, *_ = element  # positional, as Petastorm's namedtuple unpacked
    np.testing.assert_array_equal(first.numpy(), batch[columns[0]].numpy())
    with features.make_numpy_iterator(**options) as batches:
        assert list(next(iter(batches))) == columns  # every loader alike


def test_petastorms_converter_constructor_is_refused_saying_what_to_call(spark, tmp_path) -> None:
    """``SparkDatasetConverter(cache_dir_url, file_urls, dataset_size)``, Petastorm's constructor, is refused.

    Code (test doubles, mostly) that built Petastorm's converter by hand got an object whose
    first attribute read failed with ``AttributeError: 'list' object has no attribute
    'num_rows'``; now the call itself says to open the directory with ``make_spark_converter``.
    """
    spark.range(5).write.parquet(str(tmp_path / "saved"))
    opened = make_spark_converter(str(tmp_path / "saved"))
    with pytest.raises(TypeError, match=r"got a list where it takes a cache's Manifest: .* make_spark_converter\("):
        SparkDatasetConverter(opened.cache_dir_url, opened.file_urls, len(opened))
    assert len(SparkDatasetConverter(opened.cache_dir_url, opened.manifest)) == 5  # sparkfeed's own form


class PetastormTransformSpec:
    """``petastorm.transform.TransformSpec`` of Petastorm 0.13.1, its constructor as written there.

    Petastorm cannot be installed beside sparkfeed (numpy 2, pyarrow 26), so its class is
    reproduced under its own module and name, by which sparkfeed recognises it.
    """

    __module__ = "petastorm.transform"

    def __init__(
        self,
        func: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
        edit_fields: list[Any] | None = None,
        removed_fields: list[str] | None = None,
        selected_fields: list[str] | None = None,
    ) -> None:
        self.func = func
        self.edit_fields = edit_fields or []
        if removed_fields is not None and selected_fields is not None:
            raise ValueError("User can only specify one of removed_fields and selected_fields in TransformSpec.")
        self.removed_fields = removed_fields or []
        self.selected_fields = selected_fields


PetastormTransformSpec.__name__ = PetastormTransformSpec.__qualname__ = "TransformSpec"


def test_petastorms_own_transform_spec_works_when_only_the_converter_import_changed(features) -> None:
    """``from petastorm import TransformSpec`` kept: its spec does what sparkfeed's does, in every loader.

    Changing ``from petastorm.spark import ...`` is the one change a migration promises, so a
    program's transforms are still Petastorm's objects; they were refused ("it must be a
    sparkfeed.TransformSpec"). The Databricks notebook's form (func, edit_fields, selected_fields:
    Petastorm's ``removed_fields`` is then ``[]``, not None) and removed_fields with an edit given
    as Petastorm's five-field ``UnischemaField`` both read as sparkfeed's spec reads.
    """
    selected = PetastormTransformSpec(
        _scale, edit_fields=[("scaled", np.float32, (), False)], selected_fields=["scaled", "label"]
    )
    unischema_field = (
        "scaled",
        np.float32,
        (),
        None,
        False,
    )  # UnischemaField(name, numpy_dtype, shape, codec, nullable)
    removed = PetastormTransformSpec(_scale, edit_fields=[unischema_field], removed_fields=["feature_a", "feature_b"])
    options = {"batch_size": 400, "num_epochs": 1, "shuffle_row_groups": False}
    for spec, columns in ((selected, ["scaled", "label"]), (removed, ["id", "label", "scaled"])):
        with features.make_torch_dataloader(transform_spec=spec, **options) as loader:
            (batch,) = list(loader)
        assert list(batch) == columns and batch["scaled"].dtype == torch.float32
        ids = torch.arange(400) if "id" not in batch else batch["id"]
        assert batch["scaled"].tolist() == ids.float().tolist()
        with features.make_tf_dataset(transform_spec=spec, **options) as dataset:
            assert list(dataset.element_spec._fields) == columns
            assert dataset.element_spec.scaled.dtype == tf.float32
    with pytest.raises(
        ValueError, match=r"it must be a sparkfeed.TransformSpec \(from sparkfeed import TransformSpec\)"
    ):
        features.make_numpy_iterator(transform_spec=_scale)  # a bare function: transform_fn= takes it


class UnischemaField(NamedTuple):
    """``petastorm.unischema.UnischemaField`` of Petastorm 0.13.1, its fields as declared there."""

    name: str
    numpy_dtype: Any
    shape: tuple[int | None, ...]
    codec: Any = None
    nullable: bool | None = False


UnischemaField.__module__ = "petastorm.unischema"


def test_unischema_fields_in_schema_fields_select_their_columns(features) -> None:
    """``schema_fields=[UnischemaField(...), "feature_.*"]``: Petastorm's fields select by name beside patterns.

    ``make_batch_reader`` took its fields and regular expressions together; the fields were
    refused (``it must be a list of column names``). A set of them is read in sorted order, as a
    set of names is; a plain tuple, which names nothing, is still refused.
    """
    label = UnischemaField("label", np.int64, (), None, False)
    options = {"batch_size": 400, "num_epochs": 1, "shuffle_row_groups": False}
    with features.make_torch_dataloader(schema_fields=[label, "feature_.*"], **options) as loader:
        (batch,) = list(loader)
    assert list(batch) == ["label", "feature_a", "feature_b"]
    assert batch["label"].tolist() == [i % 3 for i in range(400)]
    with features.make_tf_dataset(schema_fields={label, UnischemaField("id", np.int64, ())}, **options) as dataset:
        assert dataset.element_spec._fields == ("id", "label")
    with pytest.raises(ValueError, match="it must be a list of column names"):
        features.make_numpy_iterator(schema_fields=[tuple(label)])


# --------------------------------------------------------------------------- converters pickled into Spark tasks


def test_pickling_remotely(spark, tmp_path) -> None:
    """Petastorm's ``test_pickling_remotely``, ``test_torch_pickling_remotely`` and ``..._from_saved_df_path``.

    A converter captured by a Spark task's closure reads in the executor: a TF1 graph and
    Session there, a torch loader there, and a converter of a Parquet path saved with
    ``df.write.parquet``.
    """
    df1 = spark.range(100, 101)
    converter1 = make_spark_converter(df1)

    @create_tf_graph
    def map_fn(_: int) -> int:
        with converter1.make_tf_dataset() as dataset:
            iterator = dataset.make_one_shot_iterator()
            tensor = iterator.get_next()
            with tf_v1.Session() as sess:
                ts = sess.run(tensor)
        return int(ts.id[0])

    result = spark.sparkContext.parallelize(range(1), 1).map(map_fn).collect()[0]
    assert result == 100

    def torch_map_fn(converter: Any) -> Callable[[int], torch.Tensor]:
        def first_id(_: int) -> torch.Tensor:
            with converter.make_torch_dataloader(num_epochs=1) as dataloader:
                for batch in dataloader:
                    ret = batch["id"][0]
            return ret

        return first_id

    result = spark.sparkContext.parallelize(range(1), 1).map(torch_map_fn(converter1)).collect()[0]
    assert result == 100

    output_path = os.path.join(tmp_path, "test_make_spark_convert_from_saved_df_path")
    spark.range(200, 201).write.parquet("file:" + output_path)
    converter2 = make_spark_converter(output_path)
    result = spark.sparkContext.parallelize(range(1), 1).map(torch_map_fn(converter2)).collect()[0]
    assert result == 200


def test_inference_over_shards_in_map_in_pandas(spark) -> None:
    """The inference idiom: a pickled converter and model, one ``cur_shard`` per ``mapInPandas`` task.

    Every row is scored by the driver's model, in the executors. With Petastorm's sharding the
    shards held each row once; here the default shard policy pads short shards (see the comment).
    """
    df = spark.range(1002).selectExpr("id", "CAST(id AS DOUBLE) / 1000 AS x")
    converter = make_spark_converter(df)
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)

    def predict(frames: Iterator[pd.DataFrame], **policy: str) -> Iterator[pd.DataFrame]:
        for frame in frames:
            for shard in frame["shard"]:
                with converter.make_torch_dataloader(
                    batch_size=100, num_epochs=1, cur_shard=int(shard), shard_count=4, **policy
                ) as loader:
                    for batch in loader:
                        with torch.no_grad():
                            score = model(batch["x"][:, None])[:, 0]
                        yield pd.DataFrame({"id": batch["id"].numpy(), "score": score.numpy().astype(np.float64)})

    shards = spark.range(4, numPartitions=4).withColumnRenamed("id", "shard")
    scored = shards.mapInPandas(predict, "id long, score double").toPandas()
    with torch.no_grad():
        expected = model(torch.arange(1002, dtype=torch.float32)[:, None] / 1000)[:, 0].numpy()
    np.testing.assert_allclose(scored["score"], expected[scored["id"]], rtol=1e-5)
    # Deliberate difference (README, shard_policy): of four shards of 1,002 rows, the two of 250 are padded to
    # 251, so that DDP ranks get equal batch counts; shard_policy="exact" scores each row once, as Petastorm did.
    assert len(scored) == 1004 and sorted(set(scored["id"])) == list(range(1002))
    exact = shards.mapInPandas(functools.partial(predict, shard_policy="exact"), "id long, score double")
    assert sorted(exact.toPandas()["id"]) == list(range(1002))


# --------------------------------------------------------------------------- the example programs, on MNIST's shape

MNIST_ROWS = 600


def _mnist_like(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic MNIST: 28x28 uint8 images, mostly zeros, each class a bright band of its own rows."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, rows)
    images = np.where(rng.random((rows, 28, 28)) < 0.05, rng.integers(1, 120, (rows, 28, 28)), 0).astype(np.uint8)
    for image, label in zip(images, labels, strict=True):
        image[2 + 2 * label : 4 + 2 * label, 4:24] = rng.integers(150, 256, (2, 20))
    return images, labels


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """What the examples' ``get_mnist_dir()`` gives: a directory holding ``mnist.bz2``, MNIST in LIBSVM format.

    LIBSVM lines are ``label index:value ...`` with 1-based indices of the non-zero pixels, so
    Spark's ``libsvm`` source reads each image as a 784-long ``SparseVector``, as for the real file.
    """
    import bz2

    images, labels = _mnist_like(MNIST_ROWS, seed=0)
    lines = []
    for image, label in zip(images, labels, strict=True):
        flat = image.ravel()
        lines.append(f"{label} " + " ".join(f"{j + 1}:{flat[j]}" for j in np.flatnonzero(flat)))
    directory = tmp_path_factory.mktemp("mnist")
    (directory / "mnist.bz2").write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))
    return str(directory)


@pytest.fixture
def example_cache(spark, petastorm_conf, tmp_path) -> Iterator[str]:
    """The examples' ``spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, "file:///tmp/...")``.

    Set to a directory of the test's own and reset to the module's afterwards.
    """
    url = "file://" + str(tmp_path / "example-cache")
    yield url
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, petastorm_conf)


def _load_mnist(spark, data_dir: str) -> Any:
    """The examples' "Load and preprocess data using Spark" step."""
    return (
        spark.read.format("libsvm")
        .option("numFeatures", "784")
        .load(data_dir)
        .select(F.col("features"), F.col("label").cast("long").alias("label"))
    )


class Net(torch.nn.Module):
    """The PyTorch example's ``Net``, smaller (one narrow convolution), for a test's few seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, 2)
        self.fc1 = torch.nn.Linear(8 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view((-1, 1, 28, 28)) / 255
        x = torch.nn.functional.relu(self.conv1(x))
        x = torch.nn.functional.max_pool2d(x, 2)
        x = torch.flatten(x, 1)
        return torch.nn.functional.log_softmax(self.fc1(x), dim=1)


def train(data_loader: Any, steps: int = 100, lr: float = 0.05, momentum: float = 0.5) -> tuple[Net, list[float]]:
    """The PyTorch example's ``train`` (its loss history returned too); breaks out of an endless loader."""
    from torch.autograd import Variable

    torch.manual_seed(0)
    model = Net()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loss_hist = []
    with _one_torch_thread():
        for batch_idx, batch in enumerate(data_loader):
            if batch_idx > steps:
                break
            data, target = Variable(batch["features"]), Variable(batch["label"])
            optimizer.zero_grad()
            output = model(data)
            loss = torch.nn.functional.nll_loss(output, target)
            loss.backward()
            optimizer.step()
            if batch_idx % 10 == 0:
                loss_hist.append(loss.data.item())
    return model, loss_hist


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Torch on one thread for a tiny model: two threads on two shared cores ran its steps 25x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def evaluate(model: Net, test_loader: Any) -> float:
    """The PyTorch example's ``test``: accuracy over one epoch of the test loader."""
    model.eval()
    correct = 0
    test_len = 0
    with torch.no_grad():
        for batch in test_loader:
            data, target = batch["features"], batch["label"]
            output = model(data)
            pred = output.argmax(dim=1, keepdim=True)
            correct += pred.eq(target.view_as(pred)).sum().item()
            test_len += data.shape[0]
    return correct / test_len


def test_pytorch_converter_example(spark, mnist_dir, example_cache) -> None:
    """``examples/spark_dataset_converter/pytorch_converter_example.py``'s ``run``, on synthetic MNIST.

    LIBSVM through Spark, a random split, two converters, training on an endless loader and
    evaluating on a one-epoch one, on the driver and then in a Spark task (the example's remote
    run, "for distributed hyperparameter tuning"), and both caches deleted.
    """
    df = _load_mnist(spark, mnist_dir)
    df_train, df_test = df.randomSplit([0.9, 0.1], seed=12345)
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, example_cache)

    converter_train = make_spark_converter(df_train)
    converter_test = make_spark_converter(df_test)
    assert len(converter_train) + len(converter_test) == MNIST_ROWS and len(converter_test) > 30

    def train_and_evaluate(_: int | None = None) -> tuple[float, list[float]]:
        with converter_train.make_torch_dataloader() as loader:
            model, losses = train(loader)
        with converter_test.make_torch_dataloader(num_epochs=1) as loader:
            accuracy = evaluate(model, loader)
        return accuracy, losses

    with converter_train.make_torch_dataloader() as loader:
        batch = next(iter(loader))
    assert batch["features"].shape == (32, 784) and batch["features"].dtype == torch.float32  # SparseVector: dense
    assert batch["label"].dtype == torch.int64  # what nll_loss takes as its target

    accuracy, losses = train_and_evaluate()  # on the local machine
    assert np.mean(losses[-3:]) < 0.2 * losses[0] and accuracy > 0.9
    # One partition, one task (the example leaves the default two, one of them empty).
    remote, remote_losses = spark.sparkContext.parallelize(range(1), 1).map(train_and_evaluate).collect()[0]
    assert remote > 0.9 and np.mean(remote_losses[-3:]) < 0.2 * remote_losses[0]  # trained on a Spark worker

    directories = [_local_path(c.cache_dir_url) for c in (converter_train, converter_test)]
    assert all(d.parent == _local_path(example_cache) for d in directories)
    converter_train.delete()
    converter_test.delete()
    assert not any(d.exists() for d in directories)


def get_compiled_model(lr: float = 0.001) -> Any:
    """The TensorFlow example's model, as it is: the Keras beginner's MNIST classifier."""
    from tensorflow import keras

    keras.utils.set_random_seed(0)
    model = keras.models.Sequential(
        [
            keras.Input((28, 28)),  # the example: Flatten(input_shape=(28, 28)), which Keras 3 spells so
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def train_keras(dataset: Any, steps: int = 20, epochs: int = 3, lr: float = 0.001) -> tuple[Any, list[float]]:
    """The TensorFlow example's ``train``: ``model.fit(dataset, steps_per_epoch=steps)`` (fewer steps, 3 epochs)."""
    model = get_compiled_model(lr=lr)
    history = model.fit(dataset, steps_per_epoch=steps, epochs=epochs, verbose=0)
    return model, history.history["loss"]


def test_tensorflow_converter_example(spark, mnist_dir, example_cache) -> None:
    """``examples/spark_dataset_converter/tensorflow_converter_example.py``'s ``run``, on synthetic MNIST.

    ``dataset.map`` reshapes the vectors into images with ``tf.compat.v1``, Keras fits on the
    endless dataset for ``steps_per_epoch`` and evaluates on a one-epoch one, on the driver and
    in a Spark task; both caches are deleted.
    """
    df = _load_mnist(spark, mnist_dir)
    df_train, df_test = df.randomSplit([0.9, 0.1], seed=12345)
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, example_cache)

    converter_train = make_spark_converter(df_train)
    converter_test = make_spark_converter(df_test)

    def train_and_evaluate(_: int | None = None) -> tuple[float, list[float]]:
        import tensorflow.compat.v1 as tf

        with converter_train.make_tf_dataset() as dataset:
            dataset = dataset.map(lambda x: (tf.reshape(x.features, [-1, 28, 28]), x.label))
            model, losses = train_keras(dataset)

        with converter_test.make_tf_dataset(num_epochs=1) as dataset:
            dataset = dataset.map(lambda x: (tf.reshape(x.features, [-1, 28, 28]), x.label))
            hist = model.evaluate(dataset, verbose=0)
        return hist[1], losses

    accuracy, losses = train_and_evaluate()  # on the local machine
    assert losses[-1] < 0.5 * losses[0] and accuracy > 0.9
    remote, remote_losses = spark.sparkContext.parallelize(range(1), 1).map(train_and_evaluate).collect()[0]
    assert remote > 0.9 and remote_losses[-1] < 0.5 * remote_losses[0]  # trained on a Spark worker

    directories = [_local_path(c.cache_dir_url) for c in (converter_train, converter_test)]
    converter_train.delete()
    converter_test.delete()
    assert not any(d.exists() for d in directories)


# --------------------------------------------------------------------------- Databricks' notebooks' flows

BATCH_SIZE = 32
NUM_EPOCHS = 3


@pytest.fixture(scope="module")
def mnist_images(spark) -> Any:
    """MNIST-shaped images as PNG bytes in a ``content`` column, with a ``label``: the notebooks' input."""
    from PIL import Image

    images, labels = _mnist_like(MNIST_ROWS, seed=1)
    pngs = []
    for image in images:
        out = io.BytesIO()
        Image.fromarray(image).save(out, format="PNG")
        pngs.append(out.getvalue())
    return spark.createDataFrame(pd.DataFrame({"content": pngs, "label": labels}), "content binary, label long")


def _decode(content: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(content)), dtype=np.float32)


def tf_transform_row(pd_batch: pd.DataFrame) -> pd.DataFrame:
    """The notebook's ``transform_row``: decode each image in the reader's workers, drop the bytes."""
    pd_batch["features"] = pd_batch["content"].map(lambda x: _decode(x) / 255)
    pd_batch = pd_batch.drop(labels=["content"], axis=1)
    return pd_batch


def torch_transform_row(pd_batch: pd.DataFrame) -> pd.DataFrame:
    """The same for PyTorch, leaving flat pixels: ``edit_fields`` reshapes them to ``(1, 28, 28)``."""
    pd_batch["features"] = pd_batch["content"].map(lambda x: _decode(x).ravel())
    return pd_batch.drop(labels=["content"], axis=1)


def test_keras_fit_with_a_transform_spec_and_steps_per_epoch(mnist_images, example_cache, spark) -> None:
    """The Keras flow of Databricks' "simplify data conversion from Spark to TensorFlow" notebook.

    A ``TransformSpec`` decodes images with ``edit_fields`` and ``selected_fields``;
    ``steps_per_epoch = len(converter_train) // BATCH_SIZE``; ``model.fit`` on the endless
    training dataset for several epochs, with an endless validation dataset and
    ``validation_steps``: the loss falls epoch by epoch and the validation accuracy is high.
    """
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, example_cache)
    df_train, df_val = mnist_images.randomSplit([0.9, 0.1], seed=12345)
    converter_train = petastorm_spark.make_spark_converter(df_train)
    converter_val = petastorm_spark.make_spark_converter(df_val)
    transform_spec_fn = TransformSpec(
        tf_transform_row,
        edit_fields=[("features", np.float32, (28, 28), False)],
        selected_fields=["features", "label"],
    )
    model = get_compiled_model()
    with (
        converter_train.make_tf_dataset(transform_spec=transform_spec_fn, batch_size=BATCH_SIZE) as train_dataset,
        converter_val.make_tf_dataset(transform_spec=transform_spec_fn, batch_size=BATCH_SIZE) as val_dataset,
    ):
        assert train_dataset.element_spec._fields == ("features", "label")
        assert train_dataset.element_spec.features.shape.as_list() == [None, 28, 28]
        assert train_dataset.element_spec.features.dtype == tf.float32
        assert train_dataset.element_spec.label.dtype == tf.int64
        train_dataset = train_dataset.map(lambda x: (x.features, x.label))
        val_dataset = val_dataset.map(lambda x: (x.features, x.label))
        steps_per_epoch = len(converter_train) // BATCH_SIZE
        validation_steps = max(1, len(converter_val) // BATCH_SIZE)
        hist = model.fit(
            train_dataset,
            steps_per_epoch=steps_per_epoch,
            epochs=NUM_EPOCHS,
            validation_data=val_dataset,
            validation_steps=validation_steps,
            verbose=0,
        )
    losses = hist.history["loss"]
    assert len(losses) == NUM_EPOCHS and all(loss < losses[0] for loss in losses[1:]) and losses[-1] < 0.5 * losses[0]
    assert hist.history["val_accuracy"][-1] > 0.9


def train_one_epoch(model: Net, optimizer: Any, train_dataloader_iter: Iterator[Any], steps_per_epoch: int) -> float:
    """The PyTorch notebook's ``train_one_epoch``: ``steps_per_epoch`` batches from one endless loader's iterator."""
    model.train()
    running_loss = 0.0
    rows = 0
    with _one_torch_thread():
        for _ in range(steps_per_epoch):
            pd_batch = next(train_dataloader_iter)
            inputs, labels = pd_batch["features"], pd_batch["label"]
            optimizer.zero_grad()
            loss = torch.nn.functional.nll_loss(model(inputs), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item() * inputs.size(0)
            rows += inputs.size(0)
    return running_loss / rows


def test_torch_epochs_from_one_endless_loader_with_a_transform_spec(mnist_images, example_cache, spark) -> None:
    """The PyTorch flow of Databricks' notebook: epochs of ``len(converter) // BATCH_SIZE`` steps.

    ``edit_fields`` reshapes the transform's flat pixels to ``(1, 28, 28)`` images; one
    endless loader's iterator feeds every epoch; the epoch loss falls and the model then
    classifies the validation split.
    """
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, example_cache)
    df_train, df_val = mnist_images.randomSplit([0.9, 0.1], seed=12345)
    converter_train = make_spark_converter(df_train)
    converter_val = make_spark_converter(df_val)
    spec = TransformSpec(
        torch_transform_row,
        edit_fields=[edit_field("features", np.float32, (1, 28, 28))],
        selected_fields=["features", "label"],
    )
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    with converter_train.make_torch_dataloader(transform_spec=spec, batch_size=BATCH_SIZE) as train_dataloader:
        train_dataloader_iter = iter(train_dataloader)
        first = next(train_dataloader_iter)
        assert list(first) == ["features", "label"]
        assert first["features"].shape == (BATCH_SIZE, 1, 28, 28) and first["features"].dtype == torch.float32
        steps_per_epoch = len(converter_train) // BATCH_SIZE
        losses = [train_one_epoch(model, optimizer, train_dataloader_iter, steps_per_epoch) for _ in range(NUM_EPOCHS)]
    assert all(loss < losses[0] for loss in losses[1:]) and losses[-1] < 0.5 * losses[0]
    with converter_val.make_torch_dataloader(transform_spec=spec, batch_size=BATCH_SIZE, num_epochs=1) as loader:
        assert evaluate(model, loader) > 0.9
