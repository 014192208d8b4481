"""Sequences end to end: a real Spark DataFrame of arrays of varying length, compared with ``df.collect()``,
through every framework's loader."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import tensorflow as tf
import torch

from sparkfeed import Sequence, UnsupportedTypeError, make_spark_converter
from sparkfeed.cache import RAGGED_MANIFEST_FORMAT, read_manifest


def _length(i: int) -> int:
    """Heavy-tailed lengths; rows 0-99 (the first partition) all 5 long, so their file packs them fixed-size."""
    return 5 if i < 100 else [0, 1, 2, 3, 7, 12, 40, 3, 2, 90][i % 10]


@pytest.fixture(scope="module")
def tokens(spark):
    rows = [
        (i, [i * 1000 + j for j in range(_length(i))], [[float(j), float(-j)] for j in range(_length(i) % 7)], i % 3)
        for i in range(400)
    ]
    df = spark.sparkContext.parallelize(rows, 4).toDF("id long, tok array<int>, pairs array<array<float>>, label int")
    converter = make_spark_converter(df)
    yield converter, {row.id: row for row in df.collect()}
    converter.delete()


def test_the_cache_packs_varying_lengths_and_says_so(tokens) -> None:
    converter, _ = tokens
    shapes = sorted({entry.packed["tok"] for entry in converter.manifest.files})
    assert shapes == [(-1,), (5,)]  # the first partition's rows are all 5 long
    assert json.loads(read_manifest(converter.location).to_json())["format"] == RAGGED_MANIFEST_FORMAT


def test_pad_gives_the_collected_rows_through_shuffles_and_shards(tokens) -> None:
    converter, collected = tokens
    seen = {}
    for shard in range(2):
        with converter.make_numpy_iterator(
            batch_size=16,
            num_epochs=1,
            seed=4,
            shuffling_queue_capacity=90,
            cur_shard=shard,
            shard_count=2,
            shard_policy="exact",
            sequence={"tok": "pad", "pairs": Sequence("pad", mask=True)},
        ) as batches:
            for batch in batches:
                assert batch["tok"].dtype == np.int32 and batch["pairs"].dtype == np.float32
                assert batch["tok"].shape[1] == batch["tok_lengths"].max(initial=0)
                assert batch["pairs"].ndim == 3 and batch["pairs"].shape[2] == 2
                for k, row_id in enumerate(batch["id"].tolist()):
                    n, m = batch["tok_lengths"][k], batch["pairs_lengths"][k]
                    seen[row_id] = (
                        batch["tok"][k, :n].tolist(),
                        batch["pairs"][k, :m].tolist(),
                        int(batch["label"][k]),
                    )
                    assert batch["pairs_mask"][k].tolist() == [j < m for j in range(batch["pairs"].shape[1])]
    assert sorted(seen) == sorted(collected)
    for row_id, row in collected.items():
        assert seen[row_id] == (row.tok, row.pairs, row.label)


def test_torch_gets_tensors_padded_packed_or_flat(tokens) -> None:
    converter, collected = tokens
    sequence = {"tok": Sequence("pad", pad_to_multiple_of=8, mask=True)}
    with converter.make_torch_dataloader(batch_size=32, num_epochs=1, sequence=sequence) as loader:
        batch = next(iter(loader))
    assert batch["tok"].dtype == torch.int32 and batch["tok"].shape[1] % 8 == 0
    assert batch["tok_lengths"].dtype == torch.int32 and batch["tok_mask"].dtype == torch.bool
    assert batch["tok_mask"].sum().item() == batch["tok_lengths"].sum().item()
    packed = {"tok": Sequence("pack", seq_len=64)}
    with converter.make_torch_dataloader(batch_size=4, num_epochs=1, schema_fields=["tok"], sequence=packed) as loader:
        batches = list(loader)
    assert {tuple(b["tok"].shape) for b in batches} == {(4, 64)}
    tokens_seen = sorted(int(t) for b in batches for t in b["tok"][b["tok_segment_ids"] > 0])
    assert tokens_seen == sorted(t for row in collected.values() for t in row.tok)
    with converter.make_torch_dataloader(batch_size=32, num_epochs=1, sequence={"tok": "ragged"}) as loader:
        batch = next(iter(loader))
    rows = torch.split(batch["tok"], batch["tok_lengths"].tolist())
    assert [r.tolist() for r in rows] == [collected[int(i)].tok for i in batch["id"]]


def test_tf_gets_padded_tensors_or_a_ragged_tensor(tokens) -> None:
    converter, collected = tokens
    with pytest.raises(UnsupportedTypeError, match=r"sequence=\{'tok': 'pad'\} \(or 'ragged' for a tf.RaggedTensor\)"):
        converter.make_tf_dataset(num_epochs=1, schema_fields=["id", "tok"])
    with converter.make_tf_dataset(
        batch_size=50, num_epochs=1, schema_fields=["id", "tok"], sequence={"tok": Sequence("pad", mask=True)}
    ) as dataset:
        spec = dataset.element_spec
        assert spec._fields == ("id", "tok", "tok_lengths", "tok_mask")
        assert spec.tok.shape.as_list() == [None, None] and spec.tok.dtype == tf.int32
        assert spec.tok_lengths.dtype == tf.int32 and spec.tok_mask.dtype == tf.bool
        padded = list(dataset)
    assert len(padded) == 8
    got = {
        int(i): row[:n].tolist()
        for b in padded
        for i, row, n in zip(b.id.numpy(), b.tok.numpy(), b.tok_lengths.numpy(), strict=True)
    }
    assert got == {i: row.tok for i, row in collected.items()}
    with converter.make_tf_dataset(
        batch_size=50, num_epochs=1, schema_fields=["id", "tok"], sequence={"tok": "ragged"}
    ) as dataset:
        assert isinstance(dataset.element_spec.tok, tf.RaggedTensorSpec) and dataset.element_spec._fields == (
            "id",
            "tok",
        )
        ragged = list(dataset)
    assert isinstance(ragged[0].tok, tf.RaggedTensor)
    got = {int(i): row for b in ragged for i, row in zip(b.id.numpy(), b.tok.to_list(), strict=True)}
    assert got == {i: row.tok for i, row in collected.items()}


def test_tf_bucketed_batches_run_in_a_tf_function(tokens) -> None:
    converter, collected = tokens

    @tf.function
    def count(dataset):
        total = tf.constant(0, tf.int64)
        for row in dataset:
            total += tf.reduce_sum(tf.cast(row.tok_lengths, tf.int64))
        return total

    sequence = {"tok": Sequence("bucket", buckets=(4, 16, 128))}
    with converter.make_tf_dataset(batch_size=16, num_epochs=1, schema_fields=["tok"], sequence=sequence) as dataset:
        assert int(count(dataset)) == sum(len(row.tok) for row in collected.values())
        # the batches are counted from the rows' lengths before reading: the cardinality Keras reads
        assert int(dataset.cardinality()) == len(list(dataset)) > 0
    options = {"schema_fields": ["tok"], "sequence": sequence}
    with converter.make_torch_dataloader(batch_size=16, num_epochs=2, **options) as loader:
        assert len(loader) == len([batch for batch in loader])


def test_jax_gets_arrays_narrowed_as_its_other_columns(tokens) -> None:
    converter, collected = tokens
    with converter.make_jax_iterator(batch_size=64, num_epochs=1, sequence={"tok": "bucket"}) as batches:
        seen = {}
        for batch in batches:
            assert isinstance(batch["tok"], jax.Array) and batch["tok"].dtype == np.int32
            assert isinstance(batch["tok_lengths"], jax.Array)
            arrays = (np.asarray(batch["id"]), np.asarray(batch["tok"]), np.asarray(batch["tok_lengths"]))
            for i, row, n in zip(*arrays, strict=True):
                seen[int(i)] = row[:n].tolist()
    assert seen == {i: row.tok for i, row in collected.items()}
