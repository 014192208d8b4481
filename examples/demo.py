"""make demo: a DataFrame with an MLlib feature vector becomes PyTorch batches that train a model.

Starts a local Spark session, builds a regression dataset in Spark (features assembled into an
MLlib vector, as a Spark ML pipeline would), converts it with sparkfeed, trains a small linear
model for a few epochs and prints the loss going down.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

import torch
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from sparkfeed import make_spark_converter

ROWS, FEATURES, EPOCHS, BATCH = 100_000, 8, 3, 256


def main() -> None:
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("sparkfeed-demo")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    weights = [0.5 * (i + 1) * (-1) ** i for i in range(FEATURES)]
    df = spark.range(ROWS).select(*[F.rand(seed=i).alias(f"x{i}") for i in range(FEATURES)])
    df = df.withColumn("label", sum(F.col(f"x{i}") * w for i, w in enumerate(weights)) + 0.01 * F.randn(seed=99))
    df = VectorAssembler(inputCols=[f"x{i}" for i in range(FEATURES)], outputCol="features").transform(df)
    df = df.select("features", "label")
    print(f"Spark DataFrame: {ROWS:,} rows, schema {df.schema.simpleString()}")

    started = time.perf_counter()
    converter = make_spark_converter(df, cache_dir=os.path.join(tempfile.gettempdir(), "sparkfeed-demo"))
    print(f"materialized in {time.perf_counter() - started:.1f} s at {converter.cache_dir_url}")
    print(f"{len(converter):,} rows in {len(converter.file_urls)} Parquet file(s)")

    torch.manual_seed(0)
    model = torch.nn.Linear(FEATURES, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with converter.make_torch_dataloader(batch_size=BATCH, num_epochs=EPOCHS, seed=0) as loader:
        print(f"training for {EPOCHS} epochs, {len(loader)} batches of {BATCH}")
        started, rows, first_loss, epoch_loss, steps = time.perf_counter(), 0, None, 0.0, 0
        for step, batch in enumerate(loader, 1):
            prediction = model(batch["features"]).squeeze(1)
            loss = torch.nn.functional.mse_loss(prediction, batch["label"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            first_loss = loss.item() if first_loss is None else first_loss
            epoch_loss, steps, rows = epoch_loss + loss.item(), steps + 1, rows + len(batch["label"])
            if step % (len(loader) // EPOCHS) == 0:
                print(f"  epoch {step * EPOCHS // len(loader)}: mean loss {epoch_loss / steps:.4f}")
                epoch_loss, steps = 0.0, 0
        elapsed = time.perf_counter() - started
    print(f"loss went from {first_loss:.4f} (first batch) to {loss.item():.4f} (last batch)")
    print(f"read and trained on {rows:,} rows in {elapsed:.1f} s ({rows / elapsed:,.0f} rows/s)")
    learned = [round(w, 2) for w in model.weight.detach().squeeze(0).tolist()]
    print(f"learned weights {learned}\ntrue weights    {weights}")
    converter.delete()
    print("cache deleted")
    spark.stop()


if __name__ == "__main__":
    main()
