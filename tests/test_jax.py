"""make_jax_iterator: dicts of jax.Array that train a model; the extra named when JAX is missing."""

from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

import sparkfeed.jax
from sparkfeed import make_spark_converter
from sparkfeed.jax import JaxChunk, JaxFormat, JaxIterator, jax_format, place
from sparkfeed.options import reader_options
from sparkfeed.reader import Reader
from sparkfeed.reader.batch import NUMPY, Batcher


@pytest.fixture(scope="module")
def regression(spark):
    df = spark.range(2000).select(
        "id", F.array(*[F.randn(seed=i) for i in range(3)]).alias("x"), F.lit("tag").alias("name")
    )
    df = df.withColumn("y", 3 * F.col("x")[0] - F.col("x")[1] + 2 * F.col("x")[2])
    return make_spark_converter(df)


def test_batches_are_jax_arrays_on_the_device(regression) -> None:
    device = jax.devices()[0]
    with regression.make_jax_iterator(batch_size=256, num_epochs=1, device=device) as loader:
        batches = list(loader)
        assert len(loader) == len(batches) == 8
    first = batches[0]
    assert isinstance(first["x"], jax.Array) and first["x"].shape == (256, 3) and first["x"].dtype == jnp.float32
    assert first["x"].devices() == {device}
    assert isinstance(first["name"], np.ndarray) and first["name"][0] == "tag"
    ids = np.concatenate([np.asarray(b["id"]) for b in batches])
    assert sorted(ids.tolist()) == list(range(2000))


def test_a_model_trains_with_jax_grad(regression) -> None:
    def loss(w, x, y):
        return jnp.mean((x @ w - y) ** 2)

    step = jax.jit(lambda w, x, y: w - 0.1 * jax.grad(loss)(w, x, y))
    w = jnp.zeros(3)
    losses = []
    with regression.make_jax_iterator(batch_size=100, num_epochs=5, seed=0) as loader:
        for batch in loader:
            losses.append(float(loss(w, batch["x"], batch["y"])))
            w = step(w, batch["x"], batch["y"])
    assert losses[-1] < 0.01 * losses[0]
    np.testing.assert_allclose(np.asarray(w), [3, -1, 2], atol=0.05)


@pytest.mark.parametrize("sharded", [False, True])
def test_a_long_beyond_int32_is_refused_rather_than_wrapped_without_x64(spark, sharded: bool) -> None:
    converter = make_spark_converter(spark.range(3000).select((F.col("id") * 2**31).alias("big"), "id"))
    target = {"sharding": jax.sharding.SingleDeviceSharding(jax.devices()[0])} if sharded else {}
    with converter.make_jax_iterator(batch_size=256, num_epochs=1, schema_fields=["id"], **target) as batches:
        assert sum(len(b["id"]) for b in batches) == 3000  # ids fit: narrowed to int32, exactly
    with pytest.raises(OverflowError, match=r"column 'big' holds \d+, beyond int32.*jax_enable_x64.*schema_fields"):
        with converter.make_jax_iterator(batch_size=256, num_epochs=1, **target) as batches:
            list(batches)
    with sparkfeed.jax._x64_scope(True), converter.make_jax_iterator(batch_size=256, num_epochs=1, **target) as batches:
        big = np.concatenate([np.asarray(b["big"]) for b in batches])
    assert big.dtype == np.int64 and sorted(big.tolist()) == [i * 2**31 for i in range(3000)]


@pytest.mark.parametrize("sharded", [False, True])
def test_a_double_beyond_float32_is_refused_rather_than_made_infinite_without_x64(tmp_path, sharded: bool) -> None:
    x = np.linspace(-1, 1, 600)
    x[0], x[1], x[2] = np.inf, 3.4e38, 1e300
    pq.write_table(pa.table({"id": np.arange(600), "x": x}), tmp_path / "part-0.parquet")
    converter = make_spark_converter(str(tmp_path), dtype="float64")
    target = {"sharding": jax.sharding.SingleDeviceSharding(jax.devices()[0])} if sharded else {}
    options = {"batch_size": 100, "num_epochs": 1, "shuffle_row_groups": False, **target}
    with pytest.raises(OverflowError, match=r"^column 'x' holds 1e\+300, beyond float32.*jax_enable_x64"):
        with converter.make_jax_iterator(**options) as batches:
            list(batches)
    with converter.make_jax_iterator(filters=[("id", "!=", 2)], **options) as batches:
        got = np.concatenate([np.asarray(b["x"]) for b in batches])
    assert got.dtype == np.float32 and got[0] == np.inf and got[1] == np.float32(3.4e38)  # values, rounded
    np.testing.assert_array_equal(got[2:], x[3:].astype(np.float32))


@pytest.mark.parametrize("sharded", [False, True])
def test_a_complex128_beyond_complex64_is_refused_rather_than_made_infinite_without_x64(
    tmp_path, sharded: bool
) -> None:
    """A transform's complex128 column narrows as a float64 one does: JAX would make 1e300 inf without a word."""
    pq.write_table(pa.table({"id": np.arange(600)}), tmp_path / "part-0.parquet")
    converter = make_spark_converter(str(tmp_path))

    def complex_of(frame: pd.DataFrame) -> pd.DataFrame:
        frame["z"] = frame["id"].to_numpy() * (1.5 + 0.5j)  # complex128
        frame.loc[frame["id"] == 7, "z"] = 1 - 1e300j
        return frame

    target = {"sharding": jax.sharding.SingleDeviceSharding(jax.devices()[0])} if sharded else {}
    options = {"batch_size": 100, "num_epochs": 1, "shuffle_row_groups": False, **target}
    with pytest.raises(OverflowError, match=r"^column 'z' holds \(1-1e\+300j\), beyond complex64.*jax_enable_x64"):
        with converter.make_jax_iterator(transform_fn=complex_of, **options) as batches:
            list(batches)
    with converter.make_jax_iterator(transform_fn=complex_of, filters=[("id", "!=", 7)], **options) as batches:
        got = np.concatenate([np.asarray(b["z"]) for b in batches])
    want = np.delete(np.arange(600), 7) * (1.5 + 0.5j)
    assert got.dtype == np.complex64
    np.testing.assert_array_equal(got, want.astype(np.complex64))
    with sparkfeed.jax._x64_scope(True), converter.make_jax_iterator(transform_fn=complex_of, **options) as batches:
        got = np.concatenate([np.asarray(b["z"]) for b in batches])
    assert got.dtype == np.complex128 and got[7] == 1 - 1e300j


@pytest.mark.parametrize("transform", [None, lambda frame: frame], ids=["none", "identity"])
def test_timestamps_stay_numpy_microseconds_with_or_without_a_transform(tmp_path, transform) -> None:
    moments = np.array(["2024-01-01T12:00:00.123456", "1960-01-01T00:00:00"], "datetime64[us]")
    column = pa.array(moments.astype(np.int64), pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"id": [0, 1], "ts": column}), tmp_path / "part-0.parquet")
    options = {"batch_size": 2, "num_epochs": 1, "shuffle_row_groups": False, "transform_fn": transform}
    with make_spark_converter(str(tmp_path)).make_jax_iterator(**options) as loader:
        (batch,) = list(loader)
    assert isinstance(batch["ts"], np.ndarray) and batch["ts"].dtype == np.dtype("datetime64[us]")
    np.testing.assert_array_equal(batch["ts"], moments)


def test_device_and_sharding_are_exclusive(regression) -> None:
    with pytest.raises(ValueError, match="give device or sharding, not both"):
        regression.make_jax_iterator(
            device=jax.devices()[0], sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])
        )


def test_a_device_or_sharding_of_another_type_is_refused_when_the_iterator_is_made(regression) -> None:
    # They reached jax.device_put in a reader thread, and failed only once the loop had begun.
    cpu = jax.devices()[0]
    for kwargs, words in (
        ({"device": "cpu"}, "device='cpu' is not allowed: it must be a jax.Device"),
        ({"device": 0}, "device=0 is not allowed: it must be a jax.Device"),
        ({"sharding": "batch"}, "sharding='batch' is not allowed: it must be a jax.sharding.Sharding"),
        ({"sharding": cpu}, f"sharding={cpu!r} is not allowed: it must be a jax.sharding.Sharding"),
    ):
        with pytest.raises(ValueError, match=re.escape(words)):
            regression.make_jax_iterator(100, 1, **kwargs)
    for kwargs in ({"device": cpu}, {"device": jax.sharding.SingleDeviceSharding(cpu)}, {"sharding": None}):
        with regression.make_jax_iterator(1000, 1, **kwargs) as batches:
            assert sorted(int(i) for batch in batches for i in batch["id"]) == list(range(2000))


def test_missing_jax_names_the_extra(regression, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "jax", None)
    with pytest.raises(ImportError, match=r"pip install 'sparkfeed\[jax\]'"):
        regression.make_jax_iterator()


# --------------------------------------------------------------------------- batches cut on the device


def _batches(fmt: JaxFormat, chunk_sizes: list[int], batch_size: int) -> list[dict[str, np.ndarray]]:
    chunks, start = [], 0
    for key, size in enumerate(chunk_sizes):
        ids = np.arange(start, start + size)
        columns = {
            "id": ids,
            "x": (ids * 0.5).astype(np.float32),
            "m": np.repeat(ids, 4).reshape(size, 2, 2).astype(np.int16),
            "day": ids.astype("datetime64[D]"),
            "s": ids.astype(str).astype(object),
        }
        chunks.append((key, fmt.convert(columns)))
        start += size
    parts = [batch for batch, *_ in Batcher(fmt, batch_size).batches(chunks)]
    if max(chunk_sizes) >= 4 * batch_size:  # a chunk with two groups of batches (GROUP = 2 below)
        assert any(part.placed is not None for part in parts)
    return [{name: np.asarray(value) for name, value in place(part).items()} for part in parts]


@pytest.mark.parametrize(
    "chunk_sizes", [[1000], [37, 500, 3, 260, 129, 0, 131], [128] * 5, [900, 1], [5] * 40, [255, 257, 2000]]
)
@pytest.mark.parametrize("batch_size", [1, 16, 64, 100])
def test_device_cut_batches_equal_numpy_batches(monkeypatch, chunk_sizes: list[int], batch_size: int) -> None:
    # Small groups and blocks, so that these small chunks get several blocks, a padded one, none.
    monkeypatch.setattr(sparkfeed.jax, "GROUP", 2)
    monkeypatch.setattr(sparkfeed.jax, "BLOCK_GROUPS", 2)
    batches = _batches(JaxFormat(batch_size), chunk_sizes, batch_size)
    total = sum(chunk_sizes)
    assert [len(b["id"]) for b in batches] == [batch_size] * (total // batch_size) + (
        [total % batch_size] if total % batch_size else []
    )
    assert [list(b) for b in batches[:1]] == [["id", "x", "m", "day", "s"]]
    ids = np.concatenate([b["id"] for b in batches])
    np.testing.assert_array_equal(ids, np.arange(total))
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), ids * 0.5)
    m = np.concatenate([b["m"] for b in batches])
    assert m.shape == (total, 2, 2) and m.dtype == np.int16
    np.testing.assert_array_equal(m[:, 1, 1], ids)
    np.testing.assert_array_equal(np.concatenate([b["day"] for b in batches]), ids)  # days since the epoch
    assert [str(s) for b in batches for s in b["s"]] == [str(i) for i in range(total)]


def test_blocks_cover_every_group_without_padding_a_long_chunk(monkeypatch) -> None:
    monkeypatch.setattr(sparkfeed.jax, "GROUP", 2)
    monkeypatch.setattr(sparkfeed.jax, "BLOCK_GROUPS", 2)
    fmt = JaxFormat(10)  # groups of 20 rows, blocks of 60 rows every 40
    chunk = fmt.convert({"id": np.arange(150), "s": np.arange(150).astype(str).astype(object)})
    blocks = chunk.blocks
    assert blocks is not None and blocks.names == ("id",) and blocks.starts == (0, 40, 80, 90)
    assert all(len(arrays[0]) == 60 for arrays in blocks.arrays)
    for row in range(0, 141):
        block, offset = blocks.locate(row)
        assert blocks.starts[block] + offset == row and offset + min(20, 150 - row) <= 60
    assert fmt.convert({"id": np.arange(19)}).blocks is None  # shorter than a group: cut in NumPy
    short = fmt.convert({"id": np.arange(30)}).blocks  # shorter than a block: one, zero-padded
    assert short is not None and short.starts == (0,)
    np.testing.assert_array_equal(np.asarray(short.arrays[0][0]), np.r_[np.arange(30), np.zeros(30)])


def _device_cut_iterator(converter, **kwargs) -> JaxIterator:
    """What make_jax_iterator returns once it reads in jax_format (the converter's one-line change)."""
    options = reader_options(**kwargs)
    return JaxIterator(Reader(converter.cache_dir_url, converter.manifest, options, jax_format(options.batch_size)))


@pytest.fixture(scope="module")
def mixed(spark):
    df = spark.range(3000, numPartitions=3).select(
        "id",
        (F.col("id") / 4).alias("x"),
        (F.col("id") % 3 == 0).alias("flag"),
        F.expr("date_add(date'2020-01-01', cast(id as int))").alias("day"),
        F.concat(F.lit("s"), F.col("id").cast("string")).alias("s"),
        F.array(F.col("id"), F.col("id") + 1).alias("pair"),
    )
    return make_spark_converter(df, parquet_row_group_size_bytes=16384)


def _double(frame: pd.DataFrame) -> pd.DataFrame:
    frame["twice"] = frame["id"] * 2
    frame["tag"] = "t" + frame["s"]
    return frame.drop(columns=["pair"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shuffle_row_groups": False},
        {"seed": 3, "shuffling_queue_capacity": 700},
        {"seed": 1, "cur_shard": 1, "shard_count": 3},
        {"seed": 2, "transform_fn": _double},
    ],
    ids=["plain", "shuffled", "sharded", "transform"],
)
def test_device_cut_iterator_yields_the_numpy_batches(monkeypatch, mixed, kwargs) -> None:
    monkeypatch.setattr(sparkfeed.jax, "GROUP", 3)
    monkeypatch.setattr(sparkfeed.jax, "BLOCK_GROUPS", 2)
    cut_on_device = []
    split = JaxFormat.split

    def counting_split(self: JaxFormat, chunk: JaxChunk, start: int, size: int, count: int) -> list[JaxChunk]:
        parts = split(self, chunk, start, size, count)
        cut_on_device.extend(part for part in parts if part.placed is not None)
        return parts

    monkeypatch.setattr(JaxFormat, "split", counting_split)
    settings = {"batch_size": 50, "num_epochs": 2, **kwargs}
    with mixed.make_numpy_iterator(**settings) as loader:
        expected = list(loader)
    with _device_cut_iterator(mixed, **settings) as loader:
        assert len(loader) == len(expected)
        got = list(loader)
    assert len(got) == len(expected)
    for batch, numpy_batch in zip(got, expected, strict=True):
        assert list(batch) == list(numpy_batch)
        for name, value in batch.items():
            if numpy_batch[name].dtype == object:
                assert isinstance(value, np.ndarray) and value.tolist() == numpy_batch[name].tolist()
            else:
                assert isinstance(value, jax.Array)
                host = numpy_batch[name].view(np.int64) if numpy_batch[name].dtype.kind == "M" else numpy_batch[name]
                np.testing.assert_array_equal(np.asarray(value), host.astype(value.dtype))
    assert len(cut_on_device) > len(got) // 2


@pytest.mark.parametrize("stop", [1, 7, 40, 75])
def test_device_cut_iterator_resumes_exactly(monkeypatch, mixed, stop: int) -> None:
    monkeypatch.setattr(sparkfeed.jax, "GROUP", 3)
    monkeypatch.setattr(sparkfeed.jax, "BLOCK_GROUPS", 2)
    settings = {"batch_size": 64, "num_epochs": 2, "seed": 5, "shuffling_queue_capacity": 500}
    with _device_cut_iterator(mixed, **settings) as loader:
        iterator = iter(loader)
        head = [np.asarray(next(iterator)["id"]) for _ in range(stop)]
        state = loader.state_dict()
        tail = [np.asarray(batch["id"]) for batch in iterator]
    with _device_cut_iterator(mixed, **settings) as resumed:
        resumed.load_state_dict(state)
        rest = [np.asarray(batch["id"]) for batch in resumed]
    assert [a.tolist() for a in rest] == [a.tolist() for a in tail]
    assert sorted(np.concatenate(head + tail).tolist()) == sorted(list(range(3000)) * 2)


def test_a_sharding_places_each_batch_from_numpy(regression) -> None:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    assert jax_format(100, sharding=sharding) is NUMPY
    with regression.make_jax_iterator(batch_size=100, num_epochs=1, sharding=sharding) as loader:
        batch = next(iter(loader))
    assert batch["x"].sharding == sharding and batch["x"].shape == (100, 3)
    with pytest.raises(ValueError, match="give device or sharding, not both"):
        jax_format(100, device=jax.devices()[0], sharding=sharding)


def test_a_sharding_over_two_devices_splits_every_batch(spark, tmp_path) -> None:
    converter = make_spark_converter(spark.range(101).select(F.array(F.col("id") * 1.0, F.lit(1.0)).alias("x")))
    blob = tmp_path / "converter.pkl"
    blob.write_bytes(pickle.dumps(converter))
    job = Path(__file__).with_name("jax_sharding_job.py")
    done = subprocess.run([sys.executable, str(job), str(blob)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["devices"] == 2 and seen["batches"] == seen["expected"] == 5 and seen["equal"]
    assert seen["shard_shapes"] == [[0, [10, 2]], [1, [10, 2]]]  # half a batch on each device
    # Without drop_last the epoch's 1-row batch cannot be split in two: said so, with the fix.
    assert "a batch of 1 rows cannot be placed" in seen["error"] and "drop_last=True" in seen["error"]
