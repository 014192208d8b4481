"""Property: the torch, TF and JAX adapters yield exactly the NumPy loader's batches.

Every adapter is a thin layer over one reader engine, so for the same converter and options
each must give the same rows in the same order, the same batch count and ``len()``, the
same sequence lengths and masks, and resume from a saved state where the other stopped; only
the container and the documented type policy (:class:`sparkfeed.types.FrameworkView`) differ.
The adapters take paths of their own the NumPy loader never does (TF cuts super-batches with
``rebatch``, JAX cuts batches on the device in jitted groups), so those paths' sizes are drawn
too, small enough that a few hundred rows go through them.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import jax
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyspark.sql import SparkSession

import sparkfeed.jax
import sparkfeed.tf
from sparkfeed import Sequence, SparkDatasetConverter, TransformSpec, make_spark_converter
from sparkfeed.transform import edit_field

pytestmark = [
    pytest.mark.slow,
    # sharded loaders whose transform or sequence buckets change the counts are warned about: drawn on purpose
    pytest.mark.filterwarnings("ignore:.*(shard_count=|with shard_count).*:UserWarning"),
]

Batch = dict[str, Any]
FRAMEWORKS = ("torch", "tf", "jax")
EXAMPLES = max(4, settings.default.max_examples // 4)
"""Examples per property: each reads its dataset through all four loaders."""

FLAT_COLUMNS = ["id", "small", "f", "d", "b", "by", "sh", "name", "s", "bin", "dt", "ts", "arr", "big", "rag"]
TF_REFUSES = {"s", "rag"}
"""Columns TF cannot take as they are: ``s`` holds nulls (no ``tf.string`` null), ``rag`` varies in length."""


def _x64_scope(on: bool) -> contextlib.AbstractContextManager[Any]:
    """``jax_enable_x64`` set to ``on`` in this thread (``jax.enable_x64`` moved out of experimental)."""
    scope = getattr(jax, "enable_x64", None)
    if scope is None:
        from jax.experimental import enable_x64 as scope
    return scope(on)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def flat(spark: SparkSession) -> Iterator[dict[str, SparkDatasetConverter]]:
    """Every scalar type, strings with nulls, fixed and varying arrays; in float32 and in each column's own dtype."""
    rows = [
        (
            i,
            i % 7 - 3,
            i / 3,
            i * 1.5,
            i % 3 == 0,
            i % 100 - 50,
            (i * 37) % 30000 - 15000,
            f"n{i}",
            None if i % 11 == 0 else f"s{i}é",
            bytes([i % 256, 0, 7]),
            datetime.date(1969, 12, 1) + datetime.timedelta(days=i),
            datetime.datetime(2021, 1, 1) + datetime.timedelta(seconds=i * 997, microseconds=i),
            [float(i), -float(i)],
            2**31 + i if i % 2 else -i,
            None if i % 17 == 16 else [i * 10 + j for j in range(i % 5)],
        )
        for i in range(420)
    ]
    schema = (
        "id long, small int, f float, d double, b boolean, by tinyint, sh smallint, name string, s string, "
        "bin binary, dt date, ts timestamp, arr array<float>, big long, rag array<long>"
    )
    df = spark.createDataFrame(rows, schema).repartition(3)
    converters = {
        "float32": make_spark_converter(df, parquet_row_group_size_bytes=2048),
        "own": make_spark_converter(df, parquet_row_group_size_bytes=2048, dtype=None),
    }
    yield converters
    for converter in converters.values():
        converter.delete()


@pytest.fixture(scope="module")
def tokens(spark: SparkSession) -> Iterator[SparkDatasetConverter]:
    """Arrays of varying length for ``sequence=``; the first partition's all 5 long, so its file packs them fixed."""

    def length(i: int) -> int:
        return 5 if i < 80 else [0, 1, 2, 3, 7, 12, 40, 3, 2, 19][i % 10]

    rows = [
        (i, [i * 1000 + j for j in range(length(i))], [[float(j), float(-i)] for j in range(length(i) % 6)], i % 3)
        for i in range(320)
    ]
    df = spark.sparkContext.parallelize(rows, 4).toDF("id long, tok array<int>, pairs array<array<float>>, label int")
    converter = make_spark_converter(df, parquet_row_group_size_bytes=2048)
    yield converter
    converter.delete()


# ------------------------------------------------------------------------------------------- loaders


def _make(converter: SparkDatasetConverter, framework: str, options: dict[str, Any]) -> Any:
    """The loader of ``framework`` (``np``, ``torch``, ``jax``); TF's is a context, see :func:`_tf_batches`."""
    make: Callable[..., Any] = {
        "np": converter.make_numpy_iterator,
        "torch": converter.make_torch_dataloader,
        "jax": converter.make_jax_iterator,
    }[framework]
    return make(**options)


def _tf_batches(converter: SparkDatasetConverter, options: dict[str, Any]) -> tuple[list[Batch], int]:
    """The TF dataset's elements as dicts (fields in order), and its cardinality."""
    with converter.make_tf_dataset(**{"shuffling_queue_capacity": 0, **options}) as dataset:
        return [row._asdict() for row in dataset], int(dataset.cardinality())


def _all_batches(converter: SparkDatasetConverter, framework: str, options: dict[str, Any]) -> tuple[list[Batch], int]:
    """Every batch of one iteration, and ``len()`` (TF: the cardinality) asked before it."""
    if framework == "tf":
        return _tf_batches(converter, options)
    with _make(converter, framework, options) as loader:
        count = _len(loader)
        return list(loader), count


def _len(loader: Any) -> int | None:
    """``len(loader)``; None where it has none (a transform under bucketed or packed sequences: asserted by callers)."""
    try:
        return len(loader)
    except TypeError as error:
        assert "has no len()" in str(error), error
        return None


# ------------------------------------------------------------------------------------------- the oracle


def _expected(array: np.ndarray, framework: str, x64: bool) -> tuple[np.dtype[Any] | None, np.ndarray]:
    """What ``framework`` should hold for a NumPy loader's column: its dtype (None: not a tensor) and values.

    Dates and timestamps are their int64 counts everywhere; JAX without x64 narrows 64 bits to 32
    (dates to int32 days) and leaves timestamps NumPy ``datetime64``, which 32 bits cannot hold.
    """
    if array.dtype.kind == "O":
        return None, array
    if framework == "jax" and not x64:
        if array.dtype.kind == "M" and np.datetime_data(array.dtype)[0] != "D":
            return array.dtype, array
        if array.dtype.kind == "M":
            array = array.view(np.int64)
        if array.dtype.itemsize == 8 and array.dtype.kind in "iuf":
            narrow = np.dtype(f"{array.dtype.kind}4")
            return narrow, array.astype(narrow)
        return array.dtype, array
    if array.dtype.kind in "Mm":
        array = array.view(np.int64)
    return array.dtype, array


def _cell(value: Any) -> Any:
    """A row of an object column as plain Python, tensors and arrays alike (with their dtype and shape)."""
    if isinstance(value, torch.Tensor):
        value = value.numpy()
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "O":
            return [_cell(item) for item in value]
        return (str(value.dtype), value.shape, value.tolist())
    return value


def _host(value: Any) -> np.ndarray:
    """A framework's column as NumPy, whatever carries it."""
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, tf.Tensor):
        return value.numpy()  # type: ignore[no-any-return]
    return np.asarray(value)


def _assert_batch(want: Batch, got: Batch, framework: str, x64: bool, where: str) -> None:
    """One framework batch is the NumPy batch in the framework's container and documented dtype."""
    assert list(got) == list(want), f"{where}: columns {list(got)} != {list(want)}"
    for name, array in want.items():
        dtype, values = _expected(array, framework, x64)
        column = got[name]
        if dtype is None:  # strings, bytes, ragged rows: lists (torch), tf.string, NumPy objects (JAX)
            if framework == "tf":
                cells = [v.encode() if isinstance(v, str) else v for v in values.tolist()]
                assert column.dtype == tf.string and column.numpy().tolist() == cells, f"{where}: {name}"
                continue
            if framework == "torch":
                assert isinstance(column, list), f"{where}: {name} is {type(column)}"
            else:
                assert isinstance(column, np.ndarray) and column.dtype == object, f"{where}: {name}"
            assert [_cell(v) for v in column] == [_cell(v) for v in values], f"{where}: {name}"
            continue
        carrier = {"torch": torch.Tensor, "tf": tf.Tensor, "jax": jax.Array}[framework]
        if framework == "jax" and dtype.kind == "M":
            carrier = np.ndarray  # timestamps stay on the host without x64
        assert isinstance(column, carrier), f"{where}: {name} is {type(column)}"
        host = _host(column)
        assert host.dtype == dtype, f"{where}: {name} is {host.dtype}, not {dtype}"
        assert host.shape == values.shape, f"{where}: {name} has shape {host.shape}, not {values.shape}"
        np.testing.assert_array_equal(host, values, err_msg=f"{where}: {name}")
        # no value changed on the way: what was narrowed widens back to the original exactly
        np.testing.assert_array_equal(host.astype(array.dtype), array, err_msg=f"{where}: {name}")


def _assert_same_batches(want: list[Batch], got: list[Batch], framework: str, x64: bool = False) -> None:
    assert [len(next(iter(b.values()))) for b in got] == [len(next(iter(b.values()))) for b in want], framework
    for index, (w, g) in enumerate(zip(want, got, strict=True)):
        _assert_batch(w, g, framework, x64, f"{framework} batch {index}")


# ------------------------------------------------------------------------------------------- strategies


def _reversed(frame: pd.DataFrame) -> pd.DataFrame:
    """A transform that changes nothing but the columns' order: the TF spec then comes from a probe's batch."""
    return frame[list(reversed(frame.columns))]


def _thinned(frame: pd.DataFrame) -> pd.DataFrame:
    """A transform that leaves out a third of each chunk's rows: lengths become upper bounds."""
    return frame.iloc[[row for row in range(len(frame)) if row % 3 != 1]]


@st.composite
def reader_options(draw: st.DrawFn, columns: list[str]) -> dict[str, Any]:
    """Random batching, shuffling, sharding and columns: the options every loader takes alike."""
    options: dict[str, Any] = {
        "batch_size": draw(st.integers(1, 40) | st.sampled_from([64, 1000])),
        "num_epochs": draw(st.integers(1, 2)),
        "seed": draw(st.integers(0, 2**16)),
        "drop_last": draw(st.booleans()),
        "workers_count": draw(st.sampled_from([1, 2])),
    }
    shuffle = draw(st.sampled_from(["none", "row groups", "rows", "queue"]))
    options["shuffle_row_groups"] = shuffle != "none"
    if shuffle == "rows":
        options["shuffle_rows"] = True
    elif shuffle == "queue":
        options["shuffling_queue_capacity"] = draw(st.sampled_from([8, 100, 1000]))
    if draw(st.booleans()):
        count = draw(st.integers(2, 4))
        options |= {"cur_shard": draw(st.integers(0, count - 1)), "shard_count": count}
        options["shard_policy"] = draw(st.sampled_from(["pad", "drop", "exact"]))
        if draw(st.booleans()):
            options["shard_seed"] = draw(st.integers(0, 99))
    transform = draw(st.sampled_from([None, _reversed, _thinned]))
    if transform is not None:
        options["transform_fn"] = transform
    picked = draw(st.lists(st.sampled_from(columns), unique=True, min_size=1, max_size=min(6, len(columns))))
    options["schema_fields"] = sorted(picked, key=columns.index)
    return options


def _scaled(frame: pd.DataFrame) -> pd.DataFrame:
    """A transform that edits the sequences' values, cell by cell as pandas does arithmetic on object cells.

    ``tok`` (int32) times -3 stays int32; ``pairs`` (array<array<float>>: each cell an object array
    of float32 inner arrays) times 0.5 stays rows of float32 pairs, stacked per row by ``sequence=``.
    """
    edited = {name: frame[name] * factor for name, factor in (("tok", -3), ("pairs", 0.5)) if name in frame}
    return frame.assign(**edited)


def _shortened(frame: pd.DataFrame) -> pd.DataFrame:
    """A transform that drops each sequence row's last value: lengths differ from the cache's statistics."""
    return frame.assign(**{name: [cell[:-1] for cell in frame[name]] for name in ("tok", "pairs") if name in frame})


SEQUENCE_CASTS = {"tok": edit_field("tok", np.int64, (None,)), "pairs": edit_field("pairs", np.float64, (None, 2))}
"""``edit_fields`` that widen the sequence columns a transform hands back (JAX without x64 narrows them back)."""


@st.composite
def sequence_options(draw: st.DrawFn) -> dict[str, Any]:
    """Random ``sequence=`` of the tokens dataset: pad, bucket, pack or ragged, with their settings and transforms.

    A transform may change any row's length, so the cache's longest row says nothing certain:
    bucketing then needs its bounds given (``buckets`` or ``max_length``; without either, every
    loader refuses alike).
    """
    options = draw(reader_options(["id", "label"]))
    options.pop("transform_fn", None)  # drawn below, with transforms of the sequences' own
    transform = draw(st.sampled_from([None, _reversed, _thinned, _scaled, _shortened]))
    options["batch_size"] = draw(st.integers(1, 24))
    mode = draw(st.sampled_from(["pad", "bucket", "pack", "ragged"]))
    key = draw(st.sampled_from(["tok", "pairs"]), "key")  # int32 tokens or array<array<float>> pairs: (L, 2) per row
    if mode == "pack":
        options["schema_fields"] = [key]
        seq_len = draw(st.sampled_from([8, 20, 64]))
        # a row must fit in one batch's packed rows (tok's longest is 40 values, pairs' 5): else truncated to fit
        longest = draw(st.integers(1, seq_len)) if options["batch_size"] * seq_len < 40 else None
        options["sequence"] = {key: Sequence("pack", max_length=longest, seq_len=seq_len)}
    else:
        max_length = draw(st.none() | st.integers(1, 12))
        if mode == "pad":
            multiple = draw(st.none() | st.integers(1, 8))
            first = Sequence("pad", max_length, multiple, draw(st.integers(-2, 2)), draw(st.booleans()))
        elif mode == "bucket":
            buckets = draw(st.none() | st.sampled_from([(2, 4, 64), (1, 8, 16, 32, 64), (40,)]))
            limit = draw(st.none() | st.integers(1, 40)) if transform is None or buckets is not None else max_length
            first = Sequence("bucket", max_length=limit, mask=draw(st.booleans()), buckets=buckets)
        else:
            first = Sequence("ragged")
        options["sequence"] = {key: first}
        if draw(st.booleans()):  # the other column, padded or ragged
            other = Sequence("pad", mask=draw(st.booleans())) if draw(st.booleans()) else Sequence("ragged")
            options["sequence"][next(c for c in ("tok", "pairs") if c != key)] = other
        options["schema_fields"] = ["id", *options["sequence"], "label"]
    if transform is not None:
        casts = [SEQUENCE_CASTS[name] for name in options["sequence"] if draw(st.booleans())]
        options["transform_spec"] = TransformSpec(transform, edit_fields=casts)
    return options


@contextlib.contextmanager
def _adapter_paths(draw: st.DataObject, batch_size: int) -> Iterator[None]:
    """Small TF super-batches and JAX device groups, so that a few hundred rows take the adapters' own paths."""
    rows = draw.draw(st.sampled_from([batch_size, 2 * batch_size, 3 * batch_size + 1, 65536]), "super-batch rows")
    group = draw.draw(st.sampled_from([1, 2, 16]), "jax group")
    blocks = draw.draw(st.sampled_from([1, 4]), "jax block groups")
    with (
        mock.patch.object(sparkfeed.tf, "SUPER_BATCH_ROWS", rows),
        mock.patch.object(sparkfeed.jax, "GROUP", group),
        mock.patch.object(sparkfeed.jax, "BLOCK_GROUPS", blocks),
    ):
        yield


# ------------------------------------------------------------------------------------------- properties


@settings(max_examples=EXAMPLES)
@given(data=st.data(), precision=st.sampled_from(["float32", "own"]), x64=st.booleans())
def test_every_adapter_yields_the_numpy_loaders_batches(flat, data, precision: str, x64: bool) -> None:
    """Same rows, order, batch sizes, ``len()``, columns; dtypes as documented; every rank the same count."""
    converter = flat[precision]
    options = data.draw(reader_options(FLAT_COLUMNS), "options")
    with converter.make_numpy_iterator(**options) as loader:
        count = len(loader)
        want = list(loader)
    assert count == len(want) or options.get("transform_fn") is _thinned
    with _adapter_paths(data, options["batch_size"]):
        for framework in FRAMEWORKS:
            these = options
            if framework == "tf":
                these = {**options, "schema_fields": [c for c in options["schema_fields"] if c not in TF_REFUSES]}
                if not these["schema_fields"]:
                    continue
            if framework == "jax" and not x64 and {"big"} & set(options["schema_fields"]):
                with pytest.raises(OverflowError, match="'big' holds"):  # never wrapped into int32
                    _all_batches(converter, framework, these)
                these = {**options, "schema_fields": [c for c in options["schema_fields"] if c != "big"]}
                if not these["schema_fields"]:
                    continue
            with _x64_scope(x64 and framework == "jax"):
                got, got_count = _all_batches(converter, framework, these)
            expected = [{c: v for c, v in b.items() if c in these["schema_fields"]} for b in want]
            _assert_same_batches(expected, got, framework, x64)
            if framework == "tf" and "transform_fn" in options:  # a transform may change the count: TF says unknown
                assert got_count == tf.data.UNKNOWN_CARDINALITY
            else:
                assert got_count == count, f"{framework}: len {got_count}, NumPy's {count}"
    if options.get("shard_policy") in ("pad", "drop"):  # DDP ranks must agree on the number of batches
        counts = set()
        for shard in range(options["shard_count"]):
            with converter.make_torch_dataloader(**{**options, "cur_shard": shard}) as loader:
                counts.add(len(loader))
        assert counts == {count}


@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_a_state_saved_by_any_loader_resumes_any_other_exactly(flat, data) -> None:
    """Stopped after any batch, saved as JSON and loaded into any framework's loader: the NumPy rest follows."""
    converter = flat["float32"]
    options = data.draw(reader_options([c for c in FLAT_COLUMNS if c != "big"]), "options")
    with converter.make_numpy_iterator(**options) as loader:
        want = list(loader)
    stop = data.draw(st.integers(0, len(want)), "stop after")
    first = data.draw(st.sampled_from(["np", "torch", "jax"]), "first")
    then = data.draw(st.sampled_from(["torch", "jax"]), "then")
    with _adapter_paths(data, options["batch_size"]):
        with _make(converter, first, options) as loader:
            got = list(itertools.islice(loader, stop))
            state = json.loads(json.dumps(loader.state_dict()))
        with _make(converter, then, options) as loader:
            loader.load_state_dict(state)
            assert len(loader) == len(want) - stop or options.get("transform_fn") is _thinned
            rest = list(loader)
    if first == "np":
        assert [{k: _cell(v) for k, v in b.items()} for b in got] == [
            {k: _cell(v) for k, v in b.items()} for b in want[:stop]
        ]
    else:
        _assert_same_batches(want[:stop], got, first)
    _assert_same_batches(want[stop:], rest, then)


def _assert_same_sequences(want: list[Batch], got: list[Batch], framework: str, options: dict[str, Any]) -> None:
    """As :func:`_assert_same_batches`; TF's ragged columns are one RaggedTensor of the values and their lengths."""
    ragged = [name for name, seq in options["sequence"].items() if getattr(seq, "mode", seq) == "ragged"]
    if framework != "tf" or not ragged:
        _assert_same_batches(want, got, framework)
        return
    assert len(got) == len(want)
    for index, (w, g) in enumerate(zip(want, got, strict=True)):
        for name in ragged:
            column = g[name]
            assert isinstance(column, tf.RaggedTensor), name
            np.testing.assert_array_equal(column.row_lengths().numpy(), w[f"{name}_lengths"])
            np.testing.assert_array_equal(column.flat_values.numpy(), w[name])
            assert column.flat_values.dtype.as_numpy_dtype == w[name].dtype
            g = {k: v for k, v in g.items() if k != name}
            w = {k: v for k, v in w.items() if k not in (name, f"{name}_lengths")}
        _assert_batch(w, g, framework, False, f"tf batch {index}")


def _assert_sequence_count(count: int | None, batches: int, options: dict[str, Any]) -> None:
    """``len()`` counts the batches; under a transform bucketed or packed ones have none, thinned rows a bound."""
    transform = options.get("transform_spec")
    if transform is not None and {seq.mode for seq in options["sequence"].values()} & {"bucket", "pack"}:
        assert count is None, f"len {count} under a transform with bucket or pack"
    elif transform is not None and transform.func is _thinned:
        assert count is not None and count >= batches, f"len {count} < {batches} batches"
    else:
        assert count == batches, f"len {count} != {batches} batches"


def _bounds_unknown(options: dict[str, Any]) -> bool:
    """Whether a transform leaves a bucketed column without bounds: neither ``buckets`` nor ``max_length``."""
    return "transform_spec" in options and any(
        seq.mode == "bucket" and seq.buckets is None and seq.max_length is None for seq in options["sequence"].values()
    )


@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_sequences_reach_every_framework_as_numpy_batches_them(tokens, data) -> None:
    """Padded, bucketed, packed and ragged batches: the same values, lengths, masks and ids in every framework."""
    options = data.draw(sequence_options(), "options")
    if _bounds_unknown(options):
        for framework in ("np", *FRAMEWORKS):  # the cache's lengths bound no transform's rows: bounds needed
            with pytest.raises(ValueError, match=r"column '(tok|pairs)' goes through the transform, .*: give the"):
                _all_batches(tokens, framework, options) if framework == "tf" else _make(tokens, framework, options)
        return
    with tokens.make_numpy_iterator(**options) as loader:
        count = _len(loader)
        want = list(loader)
    _assert_sequence_count(count, len(want), options)
    with _adapter_paths(data, options["batch_size"]):
        for framework in FRAMEWORKS:
            got, got_count = _all_batches(tokens, framework, options)
            _assert_same_sequences(want, got, framework, options)
            if framework == "tf" and "transform_spec" in options:  # a transform may change the count: TF says unknown
                assert got_count == tf.data.UNKNOWN_CARDINALITY
            else:
                assert got_count == count, f"{framework}: len {got_count}, NumPy's {count}"


@settings(max_examples=max(3, EXAMPLES // 2))
@given(data=st.data())
def test_a_state_saved_mid_sequence_epoch_resumes_in_another_framework(tokens, data) -> None:
    options = data.draw(sequence_options().filter(lambda o: not _bounds_unknown(o)), "options")
    with tokens.make_numpy_iterator(**options) as loader:
        want = list(loader)
    stop = data.draw(st.integers(0, len(want)), "stop after")
    first, then = data.draw(st.permutations(["torch", "jax"]), "frameworks")
    with _make(tokens, first, options) as loader:
        got = list(itertools.islice(loader, stop))
        state = json.loads(json.dumps(loader.state_dict()))
    with _make(tokens, then, options) as loader:
        loader.load_state_dict(state)
        count = _len(loader)
        rest = list(loader)
    _assert_sequence_count(count, len(want) - stop, options)
    _assert_same_batches(want[:stop], got, first)
    _assert_same_batches(want[stop:], rest, then)


# ------------------------------------------------------------------------------------------- by hand


def _ids(batches: Any, column: Callable[[Any], Any]) -> list[int]:
    return [int(i) for batch in batches for i in _host(column(batch))]


def test_a_tf_dataset_iterated_again_repeated_or_taken_from_follows_the_numpy_loaders_epochs(flat) -> None:
    """Each pass over the dataset is the loader's next iteration, as NumPy's: again, repeat, take, tf.function."""
    converter = flat["float32"]
    options = {"batch_size": 50, "num_epochs": 1, "seed": 8, "schema_fields": ["id", "f"]}
    with converter.make_numpy_iterator(**options) as loader:
        passes = [_ids(loader, lambda b: b["id"]) for _ in range(2)]
        passes.append(_ids(loader, lambda b: b["id"]) + _ids(loader, lambda b: b["id"]))
        taken = _ids(itertools.islice(loader, 2), lambda b: b["id"])
        passes.append(_ids(loader, lambda b: b["id"]))
        passes.append(_ids(loader, lambda b: b["id"]))
    assert all(sorted(p) == list(range(420)) for p in passes[:2])

    @tf.function
    def ids_of(dataset: tf.data.Dataset) -> tf.Tensor:
        ids = tf.TensorArray(tf.int64, size=0, dynamic_size=True, infer_shape=False)
        for index, row in dataset.enumerate():
            ids = ids.write(tf.cast(index, tf.int32), row.id)
        return ids.concat()

    with converter.make_tf_dataset(**options) as dataset:
        assert [_ids(dataset, lambda r: r.id) for _ in range(2)] == passes[:2]
        assert _ids(dataset.repeat(2), lambda r: r.id) == passes[2]
        assert _ids(dataset.take(2), lambda r: r.id) == taken
        assert _ids(dataset, lambda r: r.id) == passes[3]  # the abandoned pass counts, as NumPy's
        assert ids_of(dataset).numpy().tolist() == passes[4]


def test_a_torch_loaders_len_counts_every_epoch_of_each_iteration(flat) -> None:
    converter = flat["float32"]
    options = {"batch_size": 32, "num_epochs": 3, "seed": 1, "schema_fields": ["id"], "drop_last": True}
    with converter.make_numpy_iterator(**options) as loader:
        want = [_ids(loader, lambda b: b["id"]) for _ in range(2)]
    with converter.make_torch_dataloader(**options) as loader:
        for epochs in want:
            assert len(loader) == 3 * (420 // 32)
            batches = list(loader)
            assert len(batches) == len(loader) and _ids(batches, lambda b: b["id"]) == epochs
