"""Images decoded in a process pool: PNG bytes from a Spark DataFrame, decoded with Pillow by worker processes.

Pillow holds the GIL while it decodes a small image, so decoding in threads runs on one core;
``reader_pool_type="process"`` decodes in forked worker processes that hand their chunks back
through shared memory. The transform records which process decoded each row, to show it.

Run: python examples/images_process_pool.py
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pandas as pd
from PIL import Image

from sparkfeed import TransformSpec, make_spark_converter

from shared import digits, report, spark_session


def decode(frame: pd.DataFrame) -> pd.DataFrame:
    """PNG bytes to (1, 8, 8) float32 images in [0, 1]; runs in the reader's worker processes."""
    images = [np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32) / 240 for data in frame["png"]]
    return frame.drop(columns=["png"]).assign(image=images, decoded_by=os.getpid())


def main() -> None:
    spark = spark_session()
    train_df, test_df = digits(spark)
    converter = make_spark_converter(train_df.unionByName(test_df).select("id", "png", "pixels"))
    spec = TransformSpec(decode, edit_fields=[("image", np.float32, (1, 8, 8), False)])

    started = time.perf_counter()
    ids, mismatched, pids = [], 0, set()
    with converter.make_torch_dataloader(
        batch_size=64, num_epochs=2, reader_pool_type="process", workers_count=2, transform_spec=spec, seed=0
    ) as loader:
        for batch in loader:  # torch tensors: "image" (64, 1, 8, 8) float32, "pixels" (64, 64), ...
            ids.extend(batch["id"].tolist())
            same = (batch["image"].reshape(len(batch["id"]), 64) == batch["pixels"]).all(dim=1)
            mismatched += int((~same).sum())
            pids.update(batch["decoded_by"].tolist())
    seconds = time.perf_counter() - started
    print(f"decoded {len(ids)} images (2 epochs) in {seconds:.2f} s by worker processes {sorted(pids)}")
    print(f"images that differ from their pixel vector: {mismatched}")
    converter.delete()
    spark.stop()
    epochs = [sorted(ids[: len(converter)]), sorted(ids[len(converter) :])]
    report(
        rows=len(converter),
        every_row_once_per_epoch=all(epoch == list(range(len(converter))) for epoch in epochs),
        mismatched=mismatched,
        decoded_by=sorted(pids),
        main_pid=os.getpid(),
    )


if __name__ == "__main__":
    main()
