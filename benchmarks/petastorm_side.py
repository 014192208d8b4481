"""Petastorm's side of the benchmark, run with the anchor venv (.anchors/petastorm/bin/python).

Petastorm 0.13.1 on pyspark 3.5 / pyarrow 12 / numpy 1.26: this file imports Petastorm and
pyspark, never sparkfeed. Same commands and output as sparkfeed_side.py:

    serve --dataset tabular --handle F    convert once with petastorm.spark.make_spark_converter,
                                          pickle the converter to F, hold the cache until stdin closes
    case --handle F --reader batched ...  one measured case: ``default`` is Petastorm's row-by-row
                                          petastorm.pytorch.DataLoader, ``batched`` its BatchedDataLoader,
                                          ``tf`` its make_tf_dataset iterated eagerly
    materialize --dataset tabular         make_spark_converter time, a new parent cache dir per repeat
"""

from __future__ import annotations

import argparse
import pickle
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CACHE_DIR,
    IMAGE_SHAPE,
    QUALITY_EPOCHS,
    SHUFFLE_BUFFER,
    TMP_DIR,
    collect_ids,
    consume,
    decode_png,
    emit,
    measure,
    peak_rss_bytes,
    rss_bytes,
    shuffle_quality,
    source_path,
    spark_session,
    stop_spark,
    versions,
)

CACHE_CONF = "petastorm.spark.converter.parentCacheDirUrl"
"""SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF; spelled out so the session is built before importing petastorm."""


def petastorm_session(app: str, parent: Path) -> Any:
    spark = spark_session(app, **{CACHE_CONF: parent.as_uri()})
    from petastorm.spark import SparkDatasetConverter

    assert SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF == CACHE_CONF
    return spark


def decode_frame(frame: Any) -> Any:
    """TransformSpec function of the images case: PNG bytes -> (64, 64, 3) uint8 cells.

    Petastorm's process pool ships this function by value (dill) to workers that cannot import
    ``common``, so it carries its own copy of ``decode_png``, the function the thread pool uses.
    """
    if "decode_png" in globals():
        decode = decode_png
    else:  # in a Petastorm worker process
        import io

        import numpy as np
        from PIL import Image

        def decode(data: bytes) -> Any:
            with Image.open(io.BytesIO(data)) as image:
                return np.asarray(image.convert("RGB"), dtype=np.uint8)

    frame["png"] = frame["png"].map(decode)
    return frame


def serve(args: argparse.Namespace) -> None:
    spark = petastorm_session(f"petastorm-bench-serve-{args.dataset}", CACHE_DIR / "petastorm")
    from petastorm.spark import make_spark_converter

    started = time.perf_counter()
    converter = make_spark_converter(spark.read.parquet(str(source_path(args.dataset))))
    convert_s = time.perf_counter() - started
    stop_spark(spark)
    Path(args.handle).write_bytes(pickle.dumps(converter))
    files = [url.split(":", 1)[1].lstrip("/") for url in converter.file_urls]
    files = ["/" + f for f in files]
    import pyarrow.parquet as pq

    emit(
        {
            "ready": True,
            "convert_s": convert_s,
            "cache_url": converter.cache_dir_url,
            "rows": len(converter),
            "files": len(files),
            "row_groups": sum(pq.ParquetFile(f).num_row_groups for f in files),
            "cache_bytes": sum(Path(f).stat().st_size for f in files),
            "versions": versions(),
        }
    )
    sys.stdin.read()
    converter.delete()


def petastorm_loader(converter: Any, args: argparse.Namespace) -> Any:
    """The Petastorm loader under test, through the converter as its users call it."""
    from petastorm import TransformSpec

    kwargs: dict[str, Any] = {"batch_size": args.batch_size, "num_epochs": 1}
    if args.workers is not None:
        kwargs["workers_count"] = args.workers
    if args.shuffle == "none":
        kwargs["shuffle_row_groups"] = False  # Like for like with sparkfeed's no-shuffle cases.
    elif args.shuffle == "buffer":
        kwargs.update(shuffling_queue_capacity=SHUFFLE_BUFFER, seed=0)  # shuffle_row_groups defaults to True
    if args.shard:
        cur_shard, shard_count = (int(x) for x in args.shard.split("/"))
        kwargs.update(cur_shard=cur_shard, shard_count=shard_count)
    if args.reader == "batched":
        from petastorm.pytorch import BatchedDataLoader

        kwargs["data_loader_fn"] = BatchedDataLoader
    if args.transform == "png":
        import numpy as np

        kwargs["transform_spec"] = TransformSpec(decode_frame, edit_fields=[("png", np.uint8, IMAGE_SHAPE, False)])
    if args.pool:
        kwargs["reader_pool_type"] = args.pool
    if args.reader == "tf":
        return tf_batches(converter, kwargs)
    return converter.make_torch_dataloader(**kwargs)


@contextmanager
def tf_batches(converter: Any, kwargs: dict[str, Any]) -> Iterator[Iterator[dict[str, Any]]]:
    """The tf.data dataset iterated eagerly, as a custom training loop would; tensors stay tensors.

    The same loop as sparkfeed_side.tf_batches. Petastorm's dataset reads row-group batches with
    make_batch_reader, unbatches them to rows (``flat_map(from_tensor_slices)``), re-batches and prefetches
    (AUTOTUNE), all inside tf.data.
    """
    with converter.make_tf_dataset(**kwargs) as dataset:
        yield (dict(zip(row._fields, row, strict=True)) for row in dataset)


def case(args: argparse.Namespace) -> None:
    import numpy as np
    import petastorm

    np.random.seed(0)  # Petastorm's DataLoader shuffles with np.random, BatchedDataLoader with torch.
    if args.reader == "tf":
        import tensorflow  # noqa: F401  (imported before the baseline, as in any training script)
    else:
        import torch

        torch.manual_seed(0)
    converter = pickle.loads(Path(args.handle).read_bytes())
    result: dict[str, Any] = {"petastorm": petastorm.__version__, "rows_total": len(converter)}
    baseline = rss_bytes()

    def run() -> tuple[int, int]:
        with petastorm_loader(converter, args) as loader:
            return consume(loader, args.max_rows)

    result.update(measure(run, args.repeats, args.min_time))
    result.update(baseline_rss=baseline, peak_rss=peak_rss_bytes())
    if args.quality:
        epochs = []
        for _ in range(QUALITY_EPOCHS):  # a new loader draws a new order (Petastorm's loaders are unseeded)
            with petastorm_loader(converter, args) as loader:
                epochs.append(collect_ids(loader))
        result["shuffle_quality"] = shuffle_quality(epochs)
    emit(result)


def materialize(args: argparse.Namespace) -> None:
    """Petastorm's make_spark_converter, timed like sparkfeed's (new DataFrame, new parent dir)."""
    scratch = TMP_DIR / f"petastorm-{args.dataset}"
    shutil.rmtree(scratch, ignore_errors=True)
    spark = petastorm_session(f"petastorm-bench-materialize-{args.dataset}", scratch / "cache-0")
    from petastorm.spark import make_spark_converter

    times = []
    for repeat in range(args.repeats + 1):
        # Petastorm reuses a cache for the same plan and parent dir: a new parent dir per repeat.
        spark.conf.set(CACHE_CONF, (scratch / f"cache-{repeat}").as_uri())
        df = spark.read.parquet(str(source_path(args.dataset)))
        started = time.perf_counter()
        converter = make_spark_converter(df)
        times.append(time.perf_counter() - started)
        converter.delete()
    spark.stop()
    shutil.rmtree(scratch, ignore_errors=True)
    emit({"convert_s": statistics.median(times[1:]), "convert_times_s": times})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("serve")
    p.add_argument("--dataset", required=True)
    p.add_argument("--handle", required=True)
    p = commands.add_parser("case")
    p.add_argument("--handle", required=True)
    p.add_argument("--reader", choices=("default", "batched", "tf"), required=True)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--shuffle", choices=("none", "buffer"), default="none")
    p.add_argument("--shard", default=None, help="cur/count, e.g. 0/2")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--transform", choices=("png",), default=None)
    p.add_argument("--pool", choices=("thread", "process", "dummy"), default=None)
    p.add_argument("--max-rows", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-time", type=float, default=0.0)
    p.add_argument("--quality", action="store_true")
    p = commands.add_parser("materialize")
    p.add_argument("--dataset", required=True)
    p.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    {"serve": serve, "case": case, "materialize": materialize}[args.command](args)


if __name__ == "__main__":
    main()
