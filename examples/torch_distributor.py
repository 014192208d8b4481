"""Distributed PyTorch with Spark's TorchDistributor: the single-node example's ``train``, on two processes.

TorchDistributor launches ``train`` with torchrun: on the driver (``local_mode=True``), or as
one Spark barrier task per process on the cluster's executors (``local_mode=False``). Each
process reads its own shard of the converter's cache, which must be on storage every executor
reaches (a shared filesystem, HDFS, S3; on one machine, the local disk).

Run: python examples/torch_distributor.py                      # local mode, local[2]
     python examples/torch_distributor.py spark://host:7077    # on a standalone cluster
"""

from __future__ import annotations

import sys

from pyspark import cloudpickle
from pyspark.ml.torch.distributor import TorchDistributor

from sparkfeed import make_spark_converter

import pytorch_single_node
from pytorch_single_node import accuracy, load, train
from shared import digits, report, spark_session

# torchrun's processes and the executors cannot import this directory's modules: send the
# training function (and what it calls) by value, as a notebook's own functions are sent.
cloudpickle.register_pickle_by_value(pytorch_single_node)


def main(master: str | None = None) -> None:
    spark = spark_session(master or "local[2]")
    train_df, test_df = digits(spark)
    train_set = make_spark_converter(train_df.select("pixels", "label"))
    test_set = make_spark_converter(test_df.select("pixels", "label"))
    local_mode = master is None
    print(f"TorchDistributor: 2 processes, {'on the driver' if local_mode else 'as barrier tasks on ' + master}")
    distributor = TorchDistributor(num_processes=2, local_mode=local_mode, use_gpu=False)
    result = distributor.run(train, train_set, epochs=8)  # rank 0's return value
    held_out = accuracy(load(result["weights"]), test_set)
    print(f"held-out accuracy: {held_out:.4f}")
    train_set.delete()
    test_set.delete()
    spark.stop()
    report(
        local_mode=local_mode,
        world=result["world"],
        epoch_losses=result["epoch_losses"],
        rows_per_epoch=result["rows_per_epoch"],
        train_rows=len(train_set),
        accuracy=held_out,
    )


if __name__ == "__main__":
    main(*sys.argv[1:2])
