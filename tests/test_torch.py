"""The PyTorch adapter: tensors without copies, a real model that learns, a clear ImportError."""

from __future__ import annotations

import functools
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import functions as F

from sparkfeed import Sequence, make_spark_converter
from sparkfeed.reader import Reader

from helpers import run_gloo_ranks


@pytest.fixture(scope="module")
def regression(spark):
    df = spark.range(4000).select(*[F.randn(seed=i).alias(f"x{i}") for i in range(4)])
    df = df.withColumn("y", 2 * F.col("x0") - 3 * F.col("x1") + F.col("x2") * 0.5 + 1.0)
    df = VectorAssembler(inputCols=["x0", "x1", "x2", "x3"], outputCol="features").transform(df)
    return make_spark_converter(df.select("features", "y"))


def test_batches_are_tensors_with_a_batch_dimension(regression) -> None:
    with regression.make_torch_dataloader(batch_size=512, num_epochs=1) as loader:
        batches = list(loader)
        assert len(loader) == len(batches) == 8
    assert all(isinstance(b["features"], torch.Tensor) for b in batches)
    assert batches[0]["features"].shape == (512, 4) and batches[0]["features"].dtype == torch.float32
    assert batches[0]["y"].shape == (512,)
    assert sum(len(b["y"]) for b in batches) == 4000


def test_a_tiny_model_learns(regression) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    with regression.make_torch_dataloader(batch_size=128, num_epochs=6, seed=0) as loader:
        for batch in loader:
            loss = torch.nn.functional.mse_loss(model(batch["features"]).squeeze(1), batch["y"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert np.mean(losses[-20:]) < 0.01 * np.mean(losses[:5])
    np.testing.assert_allclose(model.weight.detach().numpy()[0], [2, -3, 0.5, 0], atol=0.05)


def test_missing_torch_names_the_extra(regression, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install 'sparkfeed\[torch\]'"):
        regression.make_torch_dataloader()


def test_import_sparkfeed_does_not_import_frameworks() -> None:
    code = "import sys, sparkfeed; print(sorted({'torch', 'tensorflow', 'jax', 'pyspark'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_loader_closes_with_the_context_and_reports_len(regression) -> None:
    loader = regression.make_torch_dataloader(batch_size=1000, num_epochs=2)
    with loader as entered:
        assert entered is loader and len(loader) == 8
        next(iter(loader))
    assert not [t for t in threading.enumerate() if t.name.startswith("sparkfeed-reader")]


def test_ddp_ranks_train_in_lockstep_on_shards_of_unequal_size(spark, tmp_path) -> None:
    # 1,001 rows: one shard holds 501, the other 500; the default policy pads the short one to 501 rows,
    # so both ranks take the same number of DDP steps (an uneven count would hang the all-reduce).
    df = spark.range(1001).select("id", *[F.randn(seed=i).alias(f"x{i}") for i in range(3)])
    df = df.withColumn("y", F.col("x0") - 2 * F.col("x1") + 0.5 * F.col("x2"))
    df = VectorAssembler(inputCols=["x0", "x1", "x2"], outputCol="features").transform(df)
    blob = tmp_path / "converter.pkl"
    blob.write_bytes(pickle.dumps(make_spark_converter(df.select("id", "features", "y"))))
    outputs = run_gloo_ranks("ddp_job.py", str(blob))
    assert [o["all_batches"] for o in outputs] == [[33, 33], [33, 33]]  # 3 epochs x ceil(501 / 50)
    assert all(o["batches"] == o["planned"] == 33 for o in outputs)
    for o in outputs:
        assert o["last_loss"] < 0.1 * o["first_loss"]
    first_epoch = [set(o["ids"][:501]) for o in outputs]
    assert sorted(len(ids) for ids in first_epoch) == [500, 501]  # the short shard repeats one of its rows
    assert not first_epoch[0] & first_epoch[1] and len(first_epoch[0] | first_epoch[1]) == 1001


def test_ddp_ranks_train_in_lockstep_on_packed_sequences(spark, tmp_path, monkeypatch) -> None:
    # Rows of 1 to 41 tokens packed into batches of 3 x 32: three shards of 200 rows make different
    # numbers of packed batches; each epoch ends on every rank after the fewest, or DDP would hang.
    tokens = "transform(sequence(0, CAST(pow(id % 23, 2) / 12 AS INT)), j -> CAST(j AS INT)) AS tok"
    converter = make_spark_converter(spark.range(600, numPartitions=3).selectExpr("id", tokens))
    options = {"batch_size": 3, "seed": 7, "schema_fields": ["tok"], "shard_count": 3}
    options["sequence"] = {"tok": Sequence("pack", seq_len=32)}
    with monkeypatch.context() as patch:  # what each shard makes on its own, epoch by epoch
        patch.setattr(Reader, "_limit", lambda self, epoch: None)
        own = []
        for rank in range(3):
            with converter.make_numpy_iterator(num_epochs=1, cur_shard=rank, **options) as loader:
                own.append([len(list(loader)) for _ in range(2)])
    assert len({tuple(counts) for counts in own}) > 1  # the shards do differ
    blob = tmp_path / "converter.pkl"
    blob.write_bytes(pickle.dumps(converter))
    outputs = run_gloo_ranks("ddp_pack_job.py", str(blob), world=3)
    fewest = sum(min(counts[epoch] for counts in own) for epoch in range(2))
    assert [o["all_batches"] for o in outputs] == [[fewest] * 3] * 3
    assert all(o["tokens"] > 0 for o in outputs)


@pytest.fixture(scope="module")
def counted(spark):
    return make_spark_converter(spark.range(100).withColumn("flag", F.col("id") % 3 == 0))


def test_positional_arguments_are_petastorms(counted) -> None:
    # (batch_size, num_epochs, workers_count, shuffling_queue_capacity, data_loader_fn), as in Petastorm.
    with counted.make_torch_dataloader(10, 2, 1, 0, None, shuffle_row_groups=False) as loader:
        batches = list(loader)
    assert [len(b["id"]) for b in batches] == [10] * 20  # two epochs of ten 10-row batches
    assert torch.cat([b["id"] for b in batches]).tolist() == list(range(100)) * 2
    with counted.make_torch_dataloader(None, 1) as loader:  # None: Petastorm's documented 32
        assert [len(b["id"]) for b in loader] == [32, 32, 32, 4]
    with counted.make_torch_dataloader(100, 1, None, 100, shuffle_row_groups=False, seed=0) as loader:
        (batch,) = list(loader)  # the fourth: rows shuffled across a window of all 100
    assert batch["id"].tolist() != list(range(100)) and sorted(batch["id"].tolist()) == list(range(100))


# Petastorm cannot be installed beside sparkfeed (it pins numpy 1 and pyspark 3), and its classes are
# recognised by where they live and their names, so these stand in for them: same module, same names.
class DataLoader:
    __module__ = "petastorm.pytorch"


class BatchedDataLoader:
    __module__ = "petastorm.pytorch"


class InMemBatchedDataLoader:
    __module__ = "petastorm.pytorch"


def test_data_loader_fn_means_petastorms_batched_loaders_or_is_refused_with_advice(counted) -> None:
    for fn in (None, DataLoader, BatchedDataLoader):
        with counted.make_torch_dataloader(batch_size=25, num_epochs=1, data_loader_fn=fn) as loader:
            assert [len(b["id"]) for b in loader] == [25] * 4, fn
    with pytest.raises(ValueError, match=r"InMemBatchedDataLoader.*is not allowed.*make_torch_dataloader\(num_epochs="):
        counted.make_torch_dataloader(data_loader_fn=InMemBatchedDataLoader)
    for other in (torch.utils.data.DataLoader, list, functools.partial(BatchedDataLoader)):
        with pytest.raises(ValueError, match=r"is not allowed: .*already batched.*drop data_loader_fn") as error:
            counted.make_torch_dataloader(data_loader_fn=other)
        assert "with converter.make_torch_dataloader(...) as loader: for batch in loader" in str(error.value)


def test_bool_columns_are_torch_bool_a_documented_difference_from_petastorm(counted) -> None:
    with counted.make_torch_dataloader(batch_size=100, num_epochs=1, shuffle_row_groups=False) as loader:
        (batch,) = list(loader)
    assert batch["flag"].dtype == torch.bool and batch["flag"].tolist() == [i % 3 == 0 for i in range(100)]
    petastorms = batch["flag"].to(torch.uint8)  # what the docstring says gives Petastorm's torch.uint8
    assert petastorms.dtype == torch.uint8 and petastorms.tolist() == [int(i % 3 == 0) for i in range(100)]
    doc = " ".join(counted.make_torch_dataloader.__doc__.split())
    assert "``torch.bool`` tensors, a deliberate difference from Petastorm, which gave ``torch.uint8``" in doc
