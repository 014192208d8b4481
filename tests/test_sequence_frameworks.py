"""Sequences end to end: a real Spark DataFrame of arrays of varying length, compared with ``df.collect()``,
through every framework's loader."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import tensorflow as tf
import torch

from sparkfeed import Sequence, TransformSpec, UnsupportedTypeError, make_spark_converter
from sparkfeed.cache import RAGGED_MANIFEST_FORMAT, read_manifest
from sparkfeed.transform import edit_field


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


def _nested_row(i: int) -> list[list[float]]:
    """Rows 0-99 (the first partition, a chunk of its own) all empty; the others 0 to 6 pairs."""
    return [] if i < 100 else [[float(i), float(j)] for j in range(i % 7)]


@pytest.fixture(scope="module")
def nested(spark):
    rows = [(i, _nested_row(i)) for i in range(400)]
    df = spark.sparkContext.parallelize(rows, 4).toDF("id long, pairs array<array<float>>")
    converter = make_spark_converter(df)
    yield converter
    converter.delete()


def _doubled(frame):
    # cell by cell, as pandas does arithmetic on object cells: each cell stays a row of inner arrays
    return frame.assign(pairs=frame["pairs"] * 2)


def _padded_rows(batches, framework: str, dtype: type = np.float32) -> dict[int, list[list[float]]]:
    """Each row's pairs, cut to its length, from padded batches of any framework."""
    seen = {}
    for batch in batches:
        if framework == "tf":
            batch = batch._asdict()
        ids, pairs, lengths = (np.asarray(batch[key]) for key in ("id", "pairs", "pairs_lengths"))
        assert pairs.dtype == dtype and pairs.ndim == 3 and pairs.shape[2] == 2
        for i, row, n in zip(ids.tolist(), pairs, lengths.tolist(), strict=True):
            seen[i] = row[:n].tolist()
    return seen


@pytest.mark.parametrize("transform", [lambda frame: frame, _doubled], ids=["identity", "scaled"])
@pytest.mark.parametrize("framework", ["numpy", "torch", "tf", "jax"])
def test_a_transform_keeps_a_nested_sequence_padded(nested, transform, framework: str) -> None:
    # pandas holds an array<array<float>> cell as an object array of its inner arrays: handed back,
    # it was refused as "arrays of object", in every loader, even by an identity transform.
    factor = 2 if transform is _doubled else 1
    make = {
        "numpy": nested.make_numpy_iterator,
        "torch": nested.make_torch_dataloader,
        "tf": nested.make_tf_dataset,
        "jax": nested.make_jax_iterator,
    }[framework]
    options = {
        "batch_size": 48,
        "num_epochs": 1,
        "shuffle_row_groups": False,
        "transform_spec": TransformSpec(transform),
    }
    with make(sequence={"pairs": "pad"}, **options) as batches:
        seen = _padded_rows(batches, framework)
    assert seen == {i: [[v * factor for v in pair] for pair in _nested_row(i)] for i in range(400)}


@pytest.mark.parametrize("mode", ["bucket", "pack"])
def test_a_transform_keeps_a_nested_sequence_bucketed_or_packed(nested, mode: str) -> None:
    spec = Sequence("bucket", buckets=(2, 8)) if mode == "bucket" else Sequence("pack", seq_len=16)
    options = {"batch_size": 8, "num_epochs": 1, "schema_fields": ["pairs"] if mode == "pack" else None}
    with nested.make_numpy_iterator(transform_spec=TransformSpec(_doubled), sequence={"pairs": spec}, **options) as it:
        batches = list(it)
    assert {batch["pairs"].dtype for batch in batches} == {np.dtype(np.float32)}
    if mode == "pack":
        values = sorted(tuple(pair) for b in batches for pair in b["pairs"][b["pairs_segment_ids"] > 0].tolist())
    else:
        values = sorted(
            tuple(pair)
            for b in batches
            for row, n in zip(b["pairs"], b["pairs_lengths"], strict=True)
            for pair in row[:n].tolist()
        )
    assert values == sorted((2 * x, 2 * y) for i in range(400) for x, y in _nested_row(i))


def _one_short_pair(frame):
    return frame.assign(pairs=[[cell[0][:1], *cell[1:]] if len(cell) else cell for cell in frame["pairs"]])


def _three_long_pairs_in_one_row(frame):
    return frame.assign(
        pairs=[
            [np.append(p, 0) for p in cell] if i == 108 else cell
            for i, cell in zip(frame["id"], frame["pairs"], strict=True)
        ]
    )


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (_one_short_pair, "column 'pairs' holds a row whose values differ in shape"),
        (_three_long_pairs_in_one_row, "column 'pairs' holds rows of shapes"),
    ],
    ids=["inside_a_row", "between_rows"],
)
def test_a_transform_that_breaks_a_nested_sequences_inner_shape_is_refused(nested, transform, message: str) -> None:
    options = {"batch_size": 48, "num_epochs": 1, "transform_spec": TransformSpec(transform)}
    with nested.make_numpy_iterator(sequence={"pairs": "pad"}, **options) as batches:
        with pytest.raises(ValueError, match=message):
            list(batches)


@pytest.mark.parametrize("sequence", [None, "pad"], ids=["rows", "pad"])
def test_edit_fields_cast_a_nested_column_a_transform_hands_back(nested, sequence) -> None:
    # Its rows, object arrays of inner arrays, were no numbers to cast: left float32 in silence.
    spec = TransformSpec(lambda frame: frame, edit_fields=[edit_field("pairs", np.float64, (None, 2))])
    options = {"batch_size": 48, "num_epochs": 1, "shuffle_row_groups": False, "transform_spec": spec}
    seen = {}
    with nested.make_numpy_iterator(sequence=None if sequence is None else {"pairs": sequence}, **options) as batches:
        for batch in batches:
            if sequence is None:
                assert {(row.dtype, row.shape[1:]) for row in batch["pairs"]} == {(np.dtype(np.float64), (2,))}
                seen.update(zip(batch["id"].tolist(), (row.tolist() for row in batch["pairs"]), strict=True))
            else:
                seen.update(_padded_rows([batch], "numpy", np.float64))
    assert seen == {i: _nested_row(i) for i in range(400)}
