"""Every bad parameter is refused with its name, its value and the allowed range."""

from __future__ import annotations

import re

import numpy as np
import pytest

from sparkfeed import TransformSpec, make_spark_converter
from sparkfeed.distributed import RANK_VARIABLES
from sparkfeed.options import MaterializeOptions, MixOptions, ReaderOptions, reader_options

from helpers import concat


@pytest.fixture(autouse=True)
def _no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about values, not about the rank a launcher may have set around the test run."""
    for pair in RANK_VARIABLES:
        for name in pair:
            monkeypatch.delenv(name, raising=False)


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
            {"reader_pool_type": "fork"},
            "reader_pool_type='fork' is not allowed: it must be one of ('thread', 'process', 'dummy')",
        ),
        ({"shard_seed": -1}, "shard_seed=-1 is not allowed: it must be an integer >= 0 or None"),
        ({"shuffle_rows": 1}, "shuffle_rows=1 is not allowed: it must be a bool"),
        ({"filters": "id > 3"}, "filters='id > 3' is not allowed: it must be a pyarrow.compute.Expression, or"),
        ({"filters": []}, "filters=[] is not allowed"),
        ({"filters": [("id", "~", 3)]}, "filters=[('id', '~', 3)] is not allowed ("),
        ({"filters": [("id", ">")]}, "filters=[('id', '>')] is not allowed (not enough values to unpack"),
        ({"predicate": 3}, "predicate=3 is not allowed: it must be a function of a pandas DataFrame"),
        ({"storage_options": "key=x"}, "storage_options='key=x' is not allowed: it must be a dict"),
        ({"cur_shard": "auto", "shard_count": 2}, "'auto' found no rank"),
        ({"cur_shard": 0, "shard_count": "auto"}, "'auto' found no rank"),
    ],
)
def test_bad_reader_option_names_value_and_range(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        reader_options(**kwargs)


def test_a_bad_filter_operator_is_named_in_pyarrows_words() -> None:
    # pyarrow words it differently across versions ('"~" is not ...' or "('id', '~', 3)" is not ...').
    words = r"filters=\[\('id', '~', 3\)\] is not allowed \(.*~.* is not a valid operator"
    with pytest.raises(ValueError, match=words):
        reader_options(filters=[("id", "~", 3)])


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
    # The same cache key for the same bytes: Petastorm reused None's cache for 'uncompressed'.
    assert MaterializeOptions(compression_codec="Uncompressed") == MaterializeOptions(compression_codec=None)
    assert MaterializeOptions(compression_codec="SNAPPY") == MaterializeOptions(compression_codec="snappy")


def test_unknown_keyword_lists_the_accepted_ones(spark) -> None:
    with pytest.raises(
        TypeError,
        match=r"^make_spark_converter\(\) got an unexpected keyword argument 'compresion'; accepted keywords: .*dtype",
    ):
        make_spark_converter(spark.range(3), compresion="zstd")
    converter = make_spark_converter(spark.range(3))
    with pytest.raises(
        TypeError, match=r"unexpected keyword argument 'shuffle'; accepted keywords: batch_size, cur_shard"
    ):
        converter.make_numpy_iterator(shuffle=True)
    with pytest.raises(TypeError, match=r"argument 'data_loader_fn'; data_loader_fn: .*already batched.*drop it"):
        converter.make_numpy_iterator(data_loader_fn=list)
    with pytest.raises(TypeError, match=r"argument 'results_queue_size'; results_queue_size: prefetch bounds"):
        converter.make_torch_dataloader(results_queue_size=10)


def test_several_unknown_keywords_each_keep_pythons_phrase(spark) -> None:
    converter = make_spark_converter(spark.range(3))
    expected = (
        "got an unexpected keyword argument 'cache_type' and an unexpected keyword argument 'shufle'; cache_type:"
    )
    with pytest.raises(TypeError, match=re.escape(expected)):
        converter.make_numpy_iterator(shufle=True, cache_type="local-disk")


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


def test_batch_size_none_is_refused_by_name_where_it_does_not_mean_32(spark) -> None:
    # make_torch_dataloader and make_tf_dataset take None as 32 (Petastorm's meaning); the NumPy and JAX
    # loaders, which Petastorm did not have, failed on it with "unsupported operand type(s) for *".
    pytest.importorskip("jax")
    converter = make_spark_converter(spark.range(3))
    for make in (converter.make_numpy_iterator, converter.make_jax_iterator):
        with pytest.raises(ValueError, match=re.escape("batch_size=None is not allowed: it must be an integer >= 1")):
            make(None, 1)  # type: ignore[arg-type]
    with converter.make_torch_dataloader(None, 1) as loader:
        assert [len(batch["id"]) for batch in loader] == [3]


INT_OPTIONS = {
    "batch_size": 32,
    "num_epochs": 2,
    "workers_count": 3,
    "prefetch": 4,
    "seed": 1,
    "shuffling_queue_capacity": 1000,
}
NUMPY_INTS = (np.int64, np.int32, np.uint16, np.int16)


@pytest.mark.parametrize("name", [*INT_OPTIONS, "cur_shard", "shard_count"])
@pytest.mark.parametrize("kind", NUMPY_INTS, ids=lambda kind: kind.__name__)
def test_numpy_integers_are_accepted_and_stored_as_python_ints(name: str, kind: type) -> None:
    kwargs = {"cur_shard": 1, "shard_count": 3} if name in ("cur_shard", "shard_count") else {}
    value = kwargs.get(name, INT_OPTIONS.get(name))
    options = ReaderOptions(**{**kwargs, name: kind(value)})
    assert getattr(options, name) == value and type(getattr(options, name)) is int


@pytest.mark.parametrize("name", [*INT_OPTIONS, "cur_shard", "shard_count"])
@pytest.mark.parametrize("value", [True, np.True_, 32.0, np.float64(2.0), "3"], ids=repr)
def test_bools_floats_and_strings_are_still_refused_as_integers(name: str, value: object) -> None:
    kwargs: dict[str, object] = {"cur_shard": 0, "shard_count": 3} if name in ("cur_shard", "shard_count") else {}
    with pytest.raises(ValueError, match=re.escape(f"{name}={value!r} is not allowed")):
        ReaderOptions(**{**kwargs, name: value})


@pytest.mark.parametrize("name", ["shuffle_row_groups", "drop_last", "verify_checksums", "progress"])
def test_numpy_bools_are_accepted_and_stored_as_python_bools(name: str) -> None:
    for value in (np.True_, np.False_):
        stored = getattr(ReaderOptions(**{name: value}), name)
        assert stored is bool(value)
    for bad in (1, np.int64(1), 1.0):
        with pytest.raises(ValueError, match=re.escape(f"{name}={bad!r} is not allowed: it must be a bool")):
            ReaderOptions(**{name: bad})


def test_numpy_row_group_size_is_stored_as_a_python_int() -> None:
    size = MaterializeOptions(np.int64(4096)).row_group_size_bytes
    assert size == 4096 and type(size) is int
    for bad in (np.True_, 4096.0):
        with pytest.raises(ValueError, match=re.escape(f"parquet_row_group_size_bytes={bad!r} is not allowed")):
            MaterializeOptions(bad)  # type: ignore[arg-type]


def test_a_numpy_dtype_is_stored_by_its_name(spark) -> None:
    # np.dtype("float64") == "float64", so Petastorm took it; here it reached the manifest's JSON and failed there.
    for given, name in ((np.dtype("float64"), "float64"), (np.dtype("float32"), "float32"), (np.float64, "float64")):
        stored = MaterializeOptions(dtype=given).dtype  # type: ignore[arg-type]
        assert stored == name and type(stored) is str
    for bad in (np.dtype("float16"), np.floating, float):
        with pytest.raises(ValueError, match=re.escape(f"dtype={bad!r} is not allowed: it must be None or one of")):
            MaterializeOptions(dtype=bad)  # type: ignore[arg-type]
    df = spark.range(6).selectExpr("id", "CAST(id AS DOUBLE) / 3 AS x")
    converter = make_spark_converter(df, dtype=np.dtype("float64"))
    assert converter.manifest.options["dtype"] == "float64"
    assert make_spark_converter(df, dtype="float64").cache_dir_url == converter.cache_dir_url
    with converter.make_numpy_iterator(6, 1, shuffle_row_groups=False) as batches:
        assert next(iter(batches))["x"].tolist() == [i / 3 for i in range(6)]
    reopened = make_spark_converter(converter.cache_dir_url, dtype=np.dtype("float64"))  # as it was written
    assert reopened.manifest.options["dtype"] == "float64"


def test_numpy_scalars_through_the_public_api(spark) -> None:
    df = spark.range(40)
    converter = make_spark_converter(df, parquet_row_group_size_bytes=np.int64(1024))
    same_key = make_spark_converter(df, parquet_row_group_size_bytes=1024)
    assert same_key.cache_dir_url == converter.cache_dir_url
    settings = {
        "batch_size": np.int64(16),
        "num_epochs": np.int32(1),
        "workers_count": np.int64(1),
        "seed": np.uint32(1),
        "cur_shard": np.int64(0),
        "shard_count": np.int8(2),
        "shuffle_row_groups": np.True_,
        "drop_last": np.True_,
    }
    with converter.make_numpy_iterator(**settings) as batches:
        assert [len(batch["id"]) for batch in batches] == [16]
        assert batches.state_dict()["seed"] == 1 and type(batches.state_dict()["seed"]) is int
    with converter.make_torch_dataloader(**settings) as loader:
        assert len(loader) == 1 and [len(batch["id"]) for batch in loader] == [16]


def test_numpy_scalars_through_make_tf_dataset(spark) -> None:
    pytest.importorskip("tensorflow")
    converter = make_spark_converter(spark.range(40))
    settings = {"batch_size": np.int64(16), "num_epochs": np.int32(1), "drop_last": np.True_, "prefetch": np.int64(2)}
    with converter.make_tf_dataset(**settings) as dataset:
        assert [int(batch.id.shape[0]) for batch in dataset] == [16, 16]


def test_shuffle_rows_asks_for_the_smallest_window_and_a_larger_capacity_wins() -> None:
    assert ReaderOptions().shuffle_window == 0
    assert ReaderOptions(shuffle_rows=True).shuffle_window == 1
    assert ReaderOptions(shuffle_rows=True, shuffling_queue_capacity=0).shuffle_window == 1  # Petastorm's torch default
    assert ReaderOptions(shuffle_rows=True, shuffling_queue_capacity=500).shuffle_window == 500
    assert ReaderOptions(shuffling_queue_capacity=500).shuffle_window == 500


def test_filters_become_one_expression_whatever_the_form_and_sets_are_sorted() -> None:
    import pyarrow.compute as pc

    dnf = ReaderOptions(filters=[("label", "=", 3), ("weight", ">", 0.5)]).filters
    assert isinstance(dnf, pc.Expression) and str(dnf) == "((label == 3) and (weight > 0.5))"
    nested = ReaderOptions(filters=[[("label", "=", 3)], [("label", "=", 4)]]).filters
    assert str(nested) == "((label == 3) or (label == 4))"
    expression = pc.field("label") < 2
    assert ReaderOptions(filters=expression).filters is expression
    text = str(ReaderOptions(filters=[("name", "in", {"c", "b", "a"})]).filters)
    assert text.index('"a"') < text.index('"b"') < text.index('"c"')  # the same text in every process
    for value in (2**63, -(2**64)):
        with pytest.raises(ValueError, match=r"is not allowed: a value is beyond the 64-bit integers"):
            ReaderOptions(filters=[("x", ">", value)])


def test_predicates_are_functions_or_petastorm_style_objects() -> None:
    from sparkfeed.predicates import in_set

    assert ReaderOptions(predicate=lambda frame: frame["id"] > 0).filters_rows
    assert ReaderOptions(predicate=in_set({1}, "id")).filters_rows
    assert not ReaderOptions().filters_rows


def test_auto_is_for_the_loaders_and_dummy_has_one_worker() -> None:
    with pytest.raises(ValueError, match=re.escape("'auto' is resolved by the make_* loaders")):
        ReaderOptions(cur_shard="auto", shard_count="auto")  # type: ignore[arg-type]
    assert ReaderOptions(reader_pool_type="dummy", workers_count=8).workers == 1


def test_every_loader_takes_petastorms_reader_keywords(spark) -> None:
    from sparkfeed.predicates import in_lambda

    converter = make_spark_converter(spark.range(100).selectExpr("id", "id % 10 AS feature_a", "id * 2 AS feature_b"))
    kwargs = {
        "num_epochs": 1,
        "schema_fields": ["id", "feature_.*"],
        "filters": [("feature_a", "<", 5)],
        "predicate": in_lambda(["id"], lambda i: i < 50),
        "reader_pool_type": "dummy",
        "shuffle_rows": True,
        "shard_seed": 3,
        "storage_options": None,
        "filesystem": None,
        "seed": 1,
    }
    expected = [i for i in range(50) if i % 10 < 5]
    with converter.make_numpy_iterator(batch_size=8, **kwargs) as batches:
        got = concat(batches)
    assert list(got) == ["id", "feature_a", "feature_b"] and sorted(got["id"].tolist()) == expected
    pytest.importorskip("torch")
    with converter.make_torch_dataloader(batch_size=8, **kwargs) as loader:
        assert sorted(i for batch in loader for i in batch["id"].tolist()) == expected
    pytest.importorskip("jax")
    with converter.make_jax_iterator(batch_size=8, **kwargs) as batches:
        assert sorted(i for batch in batches for i in np.asarray(batch["id"]).tolist()) == expected
    pytest.importorskip("tensorflow")
    with converter.make_tf_dataset(batch_size=8, **kwargs) as dataset:
        assert sorted(i for batch in dataset for i in batch.id.numpy().tolist()) == expected


def test_schema_fields_given_as_a_set_are_sorted_so_that_every_process_reads_the_same_columns() -> None:
    # A set of strings iterates in an order of the process's string hashes: the columns, which a saved
    # state records, would differ between the process that saved it and the one resuming it.
    names = [f"feature_{letter}" for letter in "qwertyuiopasdfghjklzxcvbnm"]
    assert reader_options(schema_fields=set(names)).schema_fields == tuple(sorted(names))
    assert ReaderOptions(schema_fields=frozenset(names)).schema_fields == tuple(sorted(names))  # type: ignore[arg-type]
    assert reader_options(schema_fields=names).schema_fields == tuple(names)  # a list keeps its order
    with pytest.raises(ValueError, match="it must be a list of column names"):
        reader_options(schema_fields={"id", 3})


@pytest.mark.parametrize(
    ("weights", "probabilities"),
    [((1e308, 1e308), (0.5, 0.5)), ((3.0, 1.0), (0.75, 0.25)), ((1e-320, 1e-320, 2e-320), (0.25, 0.25, 0.5))],
    ids=["near-the-largest-float", "plain", "subnormal"],
)
def test_mix_weights_are_normalised_whatever_their_scale(weights, probabilities) -> None:
    names = tuple("abc"[: len(weights)])
    assert MixOptions(names, weights).probabilities == pytest.approx(probabilities)
