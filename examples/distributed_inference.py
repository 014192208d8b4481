"""Distributed inference on Spark, two ways, with a model trained by the single-node example.

1. ``mapInPandas`` over shards: each task unpickles the converter (a URL and a manifest) and
   the model, reads its exact shard of the cache (``shard_policy="exact"``: every row once) and
   predicts; the predictions are joined with the labels in Spark.
2. ``pyspark.ml.functions.predict_batch_udf`` on the DataFrame itself, with
   ``sparkfeed.make_predict_fn``: Spark hands the model flat float64 arrays, which the predictor
   reshapes and casts to what the converter gave in training (float32 vectors).

Run: python examples/distributed_inference.py
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import torch
from pyspark.ml.functions import vector_to_array
from pyspark.sql import functions as F

from sparkfeed import make_predict_fn, make_spark_converter

from pytorch_single_node import load, train
from shared import digits, report, spark_session

SHARDS = 4


def main() -> None:
    spark = spark_session()
    train_df, test_df = digits(spark)
    train_set = make_spark_converter(train_df.select("pixels", "label"))
    model = load(train(train_set, epochs=8)["weights"])  # a torch.nn.Module: it pickles into the tasks
    test_set = make_spark_converter(test_df.select("id", "pixels"))  # the cache holds no labels

    def predict_shards(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        """Runs in the executors: the converter and the model arrive pickled in this closure."""
        torch.set_num_threads(1)
        for frame in frames:
            for shard in frame["shard"]:
                with (
                    test_set.make_torch_dataloader(
                        batch_size=128, num_epochs=1, cur_shard=int(shard), shard_count=SHARDS, shard_policy="exact"
                    ) as batches,
                    torch.inference_mode(),
                ):
                    for batch in batches:
                        predicted = model(batch["pixels"]).argmax(1).numpy()
                        yield pd.DataFrame({"id": batch["id"].numpy(), "shard": int(shard), "by_shards": predicted})

    shards = spark.range(SHARDS, numPartitions=SHARDS).withColumnRenamed("id", "shard")
    by_shards = shards.mapInPandas(predict_shards, "id long, shard long, by_shards long")

    # The same model through predict_batch_udf, on the DataFrame's own vectors.
    predictor = make_predict_fn(model, test_set, inputs="pixels", postprocess=lambda logits: logits.argmax(1))
    classify = predictor.udf(return_type="long", batch_size=128)
    by_udf = test_df.select("id", "label", classify(vector_to_array("pixels")).alias("by_udf"))

    joined = by_udf.join(by_shards, "id", "full_outer")
    counts = joined.agg(
        F.count("*").alias("rows"),
        F.countDistinct("id").alias("ids"),
        F.countDistinct("shard").alias("shards"),
        F.sum(F.col("by_shards").isNull().cast("int")).alias("missed_by_shards"),
        F.sum(F.col("by_udf").isNull().cast("int")).alias("missed_by_udf"),
        F.avg((F.col("by_shards") == F.col("label")).cast("double")).alias("accuracy_by_shards"),
        F.avg((F.col("by_udf") == F.col("label")).cast("double")).alias("accuracy_by_udf"),
        F.avg((F.col("by_udf") == F.col("by_shards")).cast("double")).alias("agreement"),
    ).first()
    assert counts is not None
    result = counts.asDict()
    for name, value in result.items():
        print(f"{name}: {value}")
    rows_per_shard = by_shards.groupBy("shard").count().orderBy("shard").collect()
    print("rows per shard:", [row["count"] for row in rows_per_shard])
    train_set.delete()
    test_set.delete()
    spark.stop()
    report(test_rows=len(test_set), rows_per_shard=[row["count"] for row in rows_per_shard], **result)


if __name__ == "__main__":
    main()
