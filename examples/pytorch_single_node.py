"""Single-node PyTorch: MLlib vectors from a Spark DataFrame train a classifier through sparkfeed.

``train`` is also the training function of ``torch_distributor.py``, unchanged: it reads its
rank's shard (``cur_shard="auto"``) and wraps the model in DistributedDataParallel when it runs
under torchrun (TorchDistributor's launcher), and is plain one-process training otherwise.

Run: python examples/pytorch_single_node.py
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any

import numpy as np
import torch

from sparkfeed import SparkDatasetConverter, make_spark_converter

from shared import digits, report, spark_session


def make_model() -> torch.nn.Module:
    """A two-layer perceptron over the 64 pixels: enough for > 90% on the digits."""
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def train(
    converter: SparkDatasetConverter, epochs: int = 5, batch_size: int = 32, lr: float = 0.01, seed: int = 0
) -> dict[str, Any]:
    """Trains on the converter's ``pixels`` and ``label``; on every rank when torch.distributed is launched.

    Returns each epoch's mean loss over all ranks, the rows an epoch read over all ranks, and
    the trained weights as NumPy (TorchDistributor returns rank 0's result to the driver).
    """
    import torch.distributed as dist

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1  # torchrun's environment
    if distributed:
        dist.init_process_group("gloo")
        torch.set_num_threads(1)  # one core per process
    torch.manual_seed(seed)  # the same initial weights everywhere (DDP broadcasts rank 0's anyway)
    model = make_model()
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    # "auto": this rank's shard under torch.distributed, the whole dataset otherwise. Every shard
    # gives the same number of batches (shard_policy="pad"), so DDP's all-reduce never waits forever.
    with converter.make_torch_dataloader(
        batch_size=batch_size, num_epochs=1, seed=seed, shuffle_rows=True, cur_shard="auto", shard_count="auto"
    ) as loader:
        for epoch in range(1, epochs + 1):  # each pass over the finite loader is the next epoch
            totals = torch.zeros(2, dtype=torch.float64)  # loss sum, rows
            for batch in loader:
                loss = torch.nn.functional.cross_entropy(net(batch["pixels"]), batch["label"])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                totals += torch.tensor([loss.item() * len(batch["label"]), len(batch["label"])])
            if distributed:
                dist.all_reduce(totals)
            losses.append(float(totals[0] / totals[1]))
            if not distributed or dist.get_rank() == 0:
                print(f"epoch {epoch}: loss {losses[-1]:.4f} over {int(totals[1])} rows", flush=True)
    result = {
        "world": dist.get_world_size() if distributed else 1,
        "epoch_losses": losses,
        "rows_per_epoch": int(totals[1]),
        "weights": {name: tensor.detach().numpy().copy() for name, tensor in model.state_dict().items()},
    }
    if distributed:
        # Reference cycles keep DDP (and the tensors its gloo work holds) alive until a garbage
        # collection. Left to the one at interpreter exit, a gloo thread can be releasing such a
        # tensor while Python shuts down, which aborts the process ("terminate called without an
        # active exception"), and under torchrun the other nodes wait five minutes at its exit
        # barrier. Collected here, while Python is whole.
        del net, optimizer, loss, batch
        gc.collect()
        dist.destroy_process_group()
    return result


def load(weights: dict[str, np.ndarray]) -> torch.nn.Module:
    """The model with trained weights, ready for inference."""
    model = make_model()
    model.load_state_dict({name: torch.from_numpy(array) for name, array in weights.items()})
    return model.eval()


def accuracy(model: torch.nn.Module, converter: SparkDatasetConverter) -> float:
    """The share of the converter's rows the model classifies right."""
    right = rows = 0
    with converter.make_torch_dataloader(batch_size=256, num_epochs=1) as loader, torch.inference_mode():
        for batch in loader:
            right += int((model(batch["pixels"]).argmax(1) == batch["label"]).sum())
            rows += len(batch["label"])
    return right / rows


def main() -> None:
    spark = spark_session()
    train_df, test_df = digits(spark)
    started = time.perf_counter()
    train_set = make_spark_converter(train_df.select("pixels", "label"))
    test_set = make_spark_converter(test_df.select("pixels", "label"))
    print(f"converted {len(train_set)} training and {len(test_set)} test rows in {time.perf_counter() - started:.1f} s")
    result = train(train_set, epochs=8)
    held_out = accuracy(load(result["weights"]), test_set)
    print(f"held-out accuracy: {held_out:.4f}")
    train_set.delete()
    test_set.delete()
    spark.stop()
    report(
        epoch_losses=result["epoch_losses"],
        rows_per_epoch=result["rows_per_epoch"],
        train_rows=len(train_set),
        accuracy=held_out,
    )


if __name__ == "__main__":
    main()
