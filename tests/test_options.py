"""Every bad parameter is refused with its name, its value and the allowed range."""

from __future__ import annotations

import re

import pytest

from sparkfeed import SparkDatasetConverter, TransformSpec, make_spark_converter
from sparkfeed.options import MaterializeOptions, ReaderOptions, reader_options


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size=0 is not allowed: it must be an integer >= 1"),
        ({"batch_size": 2.5}, "batch_size=2.5 is not allowed"),
        ({"batch_size": True}, "batch_size=True is not allowed"),
        ({"num_epochs": 0}, "num_epochs=0 is not allowed: it must be an integer >= 1 or None"),
        ({"workers_count": -1}, "workers_count=-1 is not allowed: it must be an integer >= 1 or None"),
        ({"prefetch": 0}, "prefetch=0 is not allowed: it must be an integer >= 1 or None"),
        ({"seed": -3}, "seed=-3 is not allowed: it must be an integer >= 0 or None"),
        ({"cur_shard": 0}, "cur_shard=0 and shard_count=None: give both or neither"),
        ({"shard_count": 2}, "cur_shard=None and shard_count=2: give both or neither"),
        ({"cur_shard": 2, "shard_count": 2}, "cur_shard=2 is not allowed: it must be an integer in [0, 1]"),
        ({"cur_shard": -1, "shard_count": 2}, "cur_shard=-1 is not allowed"),
        ({"cur_shard": 0, "shard_count": 0}, "shard_count=0 is not allowed: it must be an integer >= 1"),
        ({"shuffle_row_groups": "yes"}, "shuffle_row_groups='yes' is not allowed: it must be a bool"),
        ({"schema_fields": "id"}, "schema_fields='id' is not allowed: it must be a list of column names"),
        ({"schema_fields": []}, "schema_fields=[] is not allowed"),
        ({"transform_spec": len}, "transform_spec=<built-in function len> is not allowed"),
        (
            {"reader_pool_type": "dummy"},
            "reader_pool_type='dummy' is not allowed: it must be one of ('thread', 'process')",
        ),
    ],
)
def test_bad_reader_option_names_value_and_range(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        reader_options(**kwargs)


def test_defaults_are_valid_and_resolve_workers_and_prefetch() -> None:
    options = ReaderOptions()
    assert options.workers >= 1
    assert options.prefetch_pieces == 2 * options.workers
    assert options.shard == (0, 1)
    assert ReaderOptions(workers_count=3, prefetch=5).prefetch_pieces == 5


def test_transform_fn_and_transform_spec_are_exclusive() -> None:
    with pytest.raises(ValueError, match="give transform_fn or transform_spec, not both"):
        reader_options(transform_fn=lambda df: df, transform_spec=TransformSpec(lambda df: df))
    assert reader_options(transform_fn=len).transform_spec == TransformSpec(len)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"compression_codec": "brotli"}, "compression_codec='brotli' is not allowed: it must be None or one of"),
        ({"dtype": "float16"}, "dtype='float16' is not allowed: it must be None or one of ('float32', 'float64')"),
        ({"row_group_size_bytes": 0}, "parquet_row_group_size_bytes=0 is not allowed"),
    ],
)
def test_bad_materialize_option(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        MaterializeOptions(**kwargs)


def test_codecs_are_case_insensitive_and_none_means_uncompressed() -> None:
    assert MaterializeOptions(compression_codec=None).codec == "uncompressed"
    assert MaterializeOptions(compression_codec="ZSTD").codec == "zstd"


def test_unknown_keyword_lists_the_accepted_ones(spark) -> None:
    with pytest.raises(
        TypeError, match=r"unexpected keyword argument\(s\) \['compresion'\]; accepted keywords: .*dtype"
    ):
        make_spark_converter(spark.range(3), compresion="zstd")
    converter = make_spark_converter(spark.range(3))
    with pytest.raises(TypeError, match=r"\['shuffle'\]; accepted keywords: batch_size, cur_shard"):
        converter.make_numpy_iterator(shuffle=True)
    with pytest.raises(TypeError, match=r"\['data_loader_fn'\]; data_loader_fn: .*already batched.*drop it"):
        converter.make_torch_dataloader(data_loader_fn=list)


def test_bad_values_through_the_public_api(spark) -> None:
    converter = make_spark_converter(spark.range(3))
    with pytest.raises(ValueError, match=re.escape("batch_size=0 is not allowed")):
        converter.make_torch_dataloader(batch_size=0)
    with pytest.raises(ValueError, match=re.escape("cur_shard=5 is not allowed")):
        converter.make_numpy_iterator(cur_shard=5, shard_count=2)
    with pytest.raises(ValueError, match=re.escape("compression_codec='rar' is not allowed")):
        make_spark_converter(spark.range(3), compression_codec="rar")
    with pytest.raises(ValueError, match=r"schema_fields \['nope'\] are not columns of the dataset"):
        converter.make_numpy_iterator(schema_fields=["nope"])


def test_converter_exposes_petastorm_conf_names() -> None:
    assert SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF == "sparkfeed.cacheDir"
    assert SparkDatasetConverter.PETASTORM_PARENT_CACHE_DIR_URL_CONF == "petastorm.spark.converter.parentCacheDirUrl"
