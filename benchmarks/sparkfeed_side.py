"""sparkfeed's side of the benchmark, and the pyarrow anchors on sparkfeed's cache (our venv).

Each invocation does one thing and prints one ``BENCH_JSON`` line, so every measured case runs in
a fresh process and its peak RSS is its own:

    serve --dataset tabular [--codec zstd] --handle F   convert once, pickle the converter to F, then
                                                         hold the cache until stdin closes (the cache
                                                         lives as long as the process that made it);
                                                         --codec plain+zstd: one converter per codec,
                                                         pickled as a dict by codec
    case --handle F --reader torch [...]                 one measured case on that cache
    case --handle F --reader torch --mix plain:0.9,zstd:0.1 --steady-rows N
                                                         a mixture of a plain+zstd holder's converters
                                                         (or one alone: --mix zstd), N rows per timed
                                                         run of one long-lived loader
    memory                                               stream the big dataset once, peak RSS
    batching --reader numpy --batch-size 1               batches/s cutting one 3M-row row group
    materialize --dataset tabular                        make_spark_converter vs df.write.parquet
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import math
import pickle
import shutil
import statistics
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CACHE_DIR,
    MAX_RUNS,
    QUALITY_EPOCHS,
    SHUFFLE_BUFFER,
    TMP_DIR,
    batch_rows,
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

READERS = (
    *("numpy", "torch", "tf", "tf_graph", "tf_ceiling", "jax", "jax_ceiling", "first_batch"),
    *("arrow_iter_batches", "arrow_limit", "arrow_read_table"),
    *("s3_download", "s3_row_groups", "local_download"),
)
PLAIN_READS = ("s3_download", "s3_row_groups", "local_download")
"""The anchors of the s3 group: bytes read with pyarrow.fs alone, nothing decoded."""


def decode_frame(frame: Any) -> Any:
    """transform_fn of the images case: PNG bytes -> (64, 64, 3) uint8 cells, stacked by sparkfeed."""
    frame["png"] = [decode_png(cell) for cell in frame["png"]]
    return frame


# --------------------------------------------------------------------------- serve


def serve(args: argparse.Namespace) -> None:
    from sparkfeed import make_spark_converter

    spark = spark_session(f"sparkfeed-bench-serve-{args.dataset}")
    started = time.perf_counter()
    # "plain+zstd" (the mixing group): the same source converted once per codec, both held at once.
    codecs = args.codec.split("+") if args.codec and "+" in args.codec else [args.codec]
    converters = {
        codec: make_spark_converter(
            spark.read.parquet(str(source_path(args.dataset))),
            compression_codec=None if codec == "plain" else codec,
            cache_dir=str(CACHE_DIR / "sparkfeed"),
        )
        for codec in codecs
    }
    convert_s = time.perf_counter() - started
    stop_spark(spark)  # Reading needs no Spark; an idle JVM would only add noise.
    held = converters if len(codecs) > 1 else converters[codecs[0]]
    Path(args.handle).write_bytes(pickle.dumps(held))
    files = [url.removeprefix("file://") for converter in converters.values() for url in converter.file_urls]
    first = next(iter(converters.values()))
    emit(
        {
            "ready": True,
            "convert_s": convert_s,
            "cache_url": first.cache_dir_url,
            "rows": len(first),
            "files": len(files),
            "row_groups": sum(len(entry.row_groups) for c in converters.values() for entry in c.manifest.files),
            "cache_bytes": sum(Path(f).stat().st_size for f in files),
            "versions": versions(),
        }
    )
    sys.stdin.read()  # The orchestrator closes our stdin when the dataset's cases are done.
    for converter in converters.values():
        converter.delete()


# --------------------------------------------------------------------------- loaders


def sparkfeed_loader(converter: Any, args: argparse.Namespace) -> Any:
    """The loader under test, configured from the command line exactly as a user would."""
    kwargs = loader_kwargs(args)
    if args.reader == "tf":
        return tf_batches(converter, kwargs)
    make = {
        "numpy": converter.make_numpy_iterator,
        "torch": converter.make_torch_dataloader,
        "jax": converter.make_jax_iterator,
    }[args.reader]
    return make(**kwargs)


def loader_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The reader arguments a user would pass for this case."""
    kwargs: dict[str, Any] = {"batch_size": args.batch_size, "num_epochs": 1, "workers_count": args.workers}
    if args.shuffle == "none":
        kwargs["shuffle_row_groups"] = False
    elif args.shuffle == "rowgroups":
        kwargs.update(shuffle_row_groups=True, seed=0)
    else:
        kwargs.update(shuffle_row_groups=True, shuffling_queue_capacity=SHUFFLE_BUFFER, seed=0)
    if args.shard:
        cur_shard, shard_count = (int(x) for x in args.shard.split("/"))
        kwargs.update(cur_shard=cur_shard, shard_count=shard_count)
    if args.transform == "png":
        kwargs["transform_fn"] = decode_frame
    if args.pool:
        kwargs["reader_pool_type"] = args.pool
    if getattr(args, "no_verify", False):
        kwargs["verify_checksums"] = False
    if getattr(args, "prefetch", None):
        kwargs["prefetch"] = args.prefetch
    if getattr(args, "read_ahead_mb", None) is not None:
        kwargs["read_ahead_bytes"] = args.read_ahead_mb * 1024 * 1024
    if getattr(args, "steady_rows", None):
        kwargs["num_epochs"] = None  # one loader for every run: see steady()
    mode = getattr(args, "sequence", None)
    if mode:
        from sparkfeed import Sequence

        kwargs["sequence"] = {"tokens": Sequence("pack", seq_len=args.seq_len) if mode == "pack" else mode}
    return kwargs


@contextmanager
def tf_batches(converter: Any, kwargs: dict[str, Any]) -> Iterator[Iterator[dict[str, Any]]]:
    """The tf.data dataset iterated eagerly, as a custom training loop would; tensors stay tensors."""

    with converter.make_tf_dataset(**kwargs) as dataset:
        yield (dict(zip(row._fields, row, strict=True)) for row in dataset)


@contextmanager
def tf_ceiling_batches(converter: Any, args: argparse.Namespace) -> Iterator[Iterator[dict[str, Any]]]:
    """What eager tf.data iteration alone costs here: the dataset's first batch, held in memory and
    repeated as often as the epoch has batches, iterated exactly as the tf case (reading nothing).

    No dataset with this element can be iterated eagerly faster on this machine, whatever feeds it.
    """
    import tensorflow as tf

    from sparkfeed.tf import _eager_rows

    with converter.make_numpy_iterator(batch_size=args.batch_size, num_epochs=1, shuffle_row_groups=False) as it:
        first = next(iter(it))
    row = collections.namedtuple("Row", list(first))  # type: ignore[misc]
    element = row(*(tf.convert_to_tensor(array) for array in first.values()))
    batches = -(-len(converter) // args.batch_size)
    dataset = _eager_rows(tf.data.Dataset.from_tensors(element).repeat(batches), lambda: None)
    yield (dict(zip(r._fields, r, strict=True)) for r in dataset)


@contextmanager
def jax_ceiling_batches(converter: Any, args: argparse.Namespace) -> Iterator[Iterator[dict[str, Any]]]:
    """What making JAX batches alone costs here: the cheapest way we know to get a batch's fresh
    ``jax.Array`` per column (one jitted call slices 16 batches out of a block already on the
    device), repeated over one block of the dataset's first rows as often as an epoch needs,
    reading nothing: no loader of dicts of per-column arrays is faster on this machine.
    """
    import jax

    from sparkfeed.jax import _cut_function

    group = 16
    with converter.make_numpy_iterator(
        batch_size=args.batch_size * group, num_epochs=1, shuffle_row_groups=False
    ) as it:
        first = next(iter(it))
    narrow = {name: a.astype(np.int32) if a.dtype == np.int64 else a for name, a in first.items()}
    block = jax.device_put(tuple(narrow.values()))
    cut = _cut_function(jax)
    groups = -(-len(converter) // (args.batch_size * group))

    def batches() -> Iterator[dict[str, Any]]:
        for _ in range(groups):
            for arrays in cut(block, 0, args.batch_size, group):
                yield dict(zip(narrow, arrays, strict=True))

    yield batches()


@functools.cache
def graph_row_counter() -> Any:
    """A ``tf.function`` that iterates a dataset in-graph and counts its rows.

    This is how Keras' ``fit`` consumes a dataset (its train step runs in a ``tf.function`` that
    takes the next element itself): no Python runs per batch. Made once, so it is traced once
    per element spec, in the warm-up run.
    """
    import tensorflow as tf

    @tf.function
    def count(dataset: Any) -> Any:
        rows = tf.constant(0, tf.int64)
        for row in dataset:
            rows += tf.shape(row[0], out_type=tf.int64)[0]
        return rows

    return count


def tf_graph_rows(converter: Any, args: argparse.Namespace) -> tuple[int, int]:
    """(rows, bytes) of one pass over the dataset, consumed inside a ``tf.function``."""
    with converter.make_tf_dataset(**loader_kwargs(args)) as dataset:
        rows = int(graph_row_counter()(dataset))
        per_row = sum(spec.dtype.size * math.prod(spec.shape[1:]) for spec in dataset.element_spec)
    return rows, rows * per_row


LIST_TYPES = ("is_list", "is_large_list", "is_fixed_size_list")


def is_list(data_type: Any) -> bool:
    import pyarrow as pa

    return any(getattr(pa.types, check)(data_type) for check in LIST_TYPES)


def fixed_shapes(converter: Any) -> dict[str, tuple[Any, tuple[int, ...]]]:
    """(leaf dtype, shape) of each fixed-shape array column, from the cache's manifest.

    sparkfeed may store such a column packed, one ``fixed_size_binary`` cell of raw values per row;
    its manifest keeps the logical list type and the shape. A hand-written reader of that cache
    needs the same two facts, so the anchors take them from the manifest too.
    """
    import numpy as np

    manifest = converter.manifest
    out = {}
    for field in manifest.schema:
        leaf, depth = field.type, 0
        while is_list(leaf):
            leaf, depth = leaf.value_type, depth + 1
        dims = manifest.shapes.get(field.name)
        if depth and dims and all(low == high for low, high in dims):
            out[field.name] = (np.dtype(leaf.to_pandas_dtype()), tuple(int(high) for _, high in dims))
    return out


def arrow_numpy(column: Any, fixed: tuple[Any, tuple[int, ...]] | None = None) -> Any:
    """One Arrow column as NumPy, the way a hand-written reader would: lists flattened and
    reshaped, packed fixed-shape cells viewed in place.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    rows = len(array)
    if pa.types.is_fixed_size_binary(array.type) and fixed is not None:
        dtype, shape = fixed
        width = array.type.byte_width
        values = np.frombuffer(
            array.buffers()[1], dtype=dtype, count=rows * width // dtype.itemsize, offset=array.offset * width
        )
        return values.reshape((rows, *shape))
    depth = 0
    while is_list(array.type):
        array, depth = pc.list_flatten(array), depth + 1
    values = array.to_numpy(zero_copy_only=False)
    if not depth:
        return values
    return values.reshape((rows, *fixed[1]) if fixed else (rows, -1))


def slices(columns: dict[str, Any], batch_size: int) -> Iterator[dict[str, Any]]:
    rows = len(next(iter(columns.values())))
    for start in range(0, rows, batch_size):
        yield {name: values[start : start + batch_size] for name, values in columns.items()}


@contextmanager
def arrow_reader(
    kind: str, files: list[str], batch_size: int, fixed: dict[str, Any]
) -> Iterator[Iterator[dict[str, Any]]]:
    """The pyarrow anchors, all single-consumer loops over the same cache files."""
    import pyarrow.parquet as pq

    def numpy_columns(table: Any) -> dict[str, Any]:
        return {name: arrow_numpy(table.column(name), fixed.get(name)) for name in table.schema.names}

    def iter_batches() -> Iterator[dict[str, Any]]:
        for path in files:
            for batch in pq.ParquetFile(path).iter_batches(batch_size):
                yield numpy_columns(batch)

    def limit() -> Iterator[dict[str, Any]]:
        # The Arrow limit: one thread, whole row groups decoded, then zero-copy 1024-row views.
        for path in files:
            parquet = pq.ParquetFile(path)
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, use_threads=False)
                yield from slices(numpy_columns(table), batch_size)

    def read_table() -> Iterator[dict[str, Any]]:
        yield from slices(numpy_columns(pq.read_table(files)), batch_size)

    yield {"arrow_iter_batches": iter_batches, "arrow_limit": limit, "arrow_read_table": read_table}[kind]()


def batch_tokens(batch: dict[str, Any]) -> tuple[int, int]:
    """(tokens, cells) of a batch of the sequences group: the values it carries, and its arrays' size.

    Padded and bucketed batches say their lengths; packed ones hold a value where the segment id
    is not 0; object arrays (no ``sequence=``) and lists of tensors hold one array per row; a
    fixed-length batch is all values.
    """
    tokens = batch["tokens"]
    if "tokens_lengths" in batch:
        count = int(np.asarray(batch["tokens_lengths"]).sum())
    elif "tokens_segment_ids" in batch:
        count = int((np.asarray(batch["tokens_segment_ids"]) > 0).sum())
    elif isinstance(tokens, list) or (isinstance(tokens, np.ndarray) and tokens.dtype == object):
        count = sum(map(len, tokens))
        return count, count
    else:
        count = int(np.asarray(tokens).size)
    return count, int(np.asarray(tokens).size)


def sequence_totals(converter: Any, args: argparse.Namespace) -> dict[str, Any]:
    """One pass of the case's own loader, untimed: the rows, tokens and padded cells of an epoch.

    Timed passes then only iterate; an epoch always yields every row once (tested), so its
    tokens are these.
    """
    tokens = cells = batches = 0
    with open_reader(converter, args) as loader:
        for batch in loader:
            counted, size = batch_tokens(batch)
            tokens, cells, batches = tokens + counted, cells + size, batches + 1
    return {"rows": len(converter), "tokens": tokens, "cells": cells, "batches": batches}


def cache_files(args: argparse.Namespace, converter: Any) -> tuple[Any, list[str]]:
    """The filesystem and every file of the cache (its manifest included), local or on S3."""
    import pyarrow.fs as pafs

    if args.reader.startswith("s3_"):
        fs = pafs.S3FileSystem(**json.loads(args.storage_options))
        root = args.s3_url.removeprefix("s3://")
    else:
        fs, root = pafs.LocalFileSystem(), converter.cache_dir_url.removeprefix("file://")
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return fs, sorted(info.path for info in infos if info.type == pafs.FileType.File)


def download(fs: Any, files: list[str], rows: int) -> tuple[int, int]:
    """The anchor: every file read whole, one after another, the bytes thrown away.

    ``open_input_file(path).read()`` knows the size, so an S3 object is one GET. (An input
    stream's ``read()`` without a size reads in 256 KiB GETs: ~560 requests for the tabular cache,
    each of which costs moto a copy of the whole object; that is not a fair anchor.)
    Returns the cache's rows (what one epoch yields) and the bytes read.
    """
    nbytes = 0
    for path in files:
        with fs.open_input_file(path) as handle:
            nbytes += len(handle.read())
    return rows, nbytes


def row_group_spans(converter: Any, root: str) -> list[tuple[str, int, int]]:
    """(object path, offset, length) of every row group's bytes on S3, from the local files' footers."""
    import pyarrow.parquet as pq

    spans = []
    for url in converter.file_urls:
        local = url.removeprefix("file://")
        meta = pq.ParquetFile(local).metadata
        for group in range(meta.num_row_groups):
            columns = [meta.row_group(group).column(i) for i in range(meta.num_columns)]
            starts = [c.dictionary_page_offset or c.data_page_offset for c in columns]
            ends = [start + c.total_compressed_size for start, c in zip(starts, columns, strict=True)]
            spans.append((f"{root}/{Path(local).name}", min(starts), max(ends) - min(starts)))
    return spans


def read_spans(fs: Any, spans: list[tuple[str, int, int]], rows: int) -> tuple[int, int]:
    """The second anchor: one ranged GET per row group, in order, one at a time (no decoding)."""
    nbytes = 0
    for path, offset, length in spans:
        with fs.open_input_file(path) as handle:
            nbytes += len(handle.read_at(length, offset))
    return rows, nbytes


def open_reader(converter: Any, args: argparse.Namespace) -> Any:
    if args.reader == "tf_ceiling":
        return tf_ceiling_batches(converter, args)
    if args.reader == "jax_ceiling":
        return jax_ceiling_batches(converter, args)
    if args.reader.startswith("arrow_"):
        files = [url.removeprefix("file://") for url in converter.file_urls]
        return arrow_reader(args.reader, files, args.batch_size, fixed_shapes(converter))
    return sparkfeed_loader(converter, args)


# --------------------------------------------------------------------------- cases


def mixed(held: dict[str, Any], spec: str) -> Any:
    """What a mixing case reads: one of the holder's converters alone (``zstd``), or a mixture of them
    (``plain:0.9,zstd:0.1``, ``...@batch`` for ``granularity="batch"``) that samples with replacement, so
    that it runs as long as asked."""
    import sparkfeed

    spec, _, granularity = spec.partition("@")
    parts = [part.split(":") for part in spec.split(",")]
    if len(parts) == 1:
        return held[parts[0][0]]
    # A cache named twice (``plain:0.5,plain:0.5``) is two sources of one cache, each its own reader.
    names = [name if [n for n, _ in parts].count(name) == 1 else f"{name}{i}" for i, (name, _) in enumerate(parts)]
    sources = {key: held[name] for key, (name, _) in zip(names, parts, strict=True)}
    weights = {key: float(weight) for key, (_, weight) in zip(names, parts, strict=True)}
    return sparkfeed.mix(sources, weights, seed=0, stop="never", granularity=granularity or "row")


def steady(loader: Any, rows: int) -> Any:
    """A timed run of ``rows`` rows from a loader that lives across runs: throughput in steady state.

    The loader repeats forever (``num_epochs=None``), and each run continues where the previous one
    stopped, so no run pays for starting the reader threads, nor for row groups read ahead and left
    unused by a loop that stops: a mixture's sources each read ahead, and a short run would charge
    it for that more than a single reader.
    """
    batches = iter(loader)

    def run() -> tuple[int, int]:
        return consume(batches, rows)

    return run


def case(args: argparse.Namespace) -> None:
    import sparkfeed

    converter = pickle.loads(Path(args.handle).read_bytes())
    if args.mix:
        converter = mixed(converter, args.mix)
    if getattr(args, "mix_self", False):
        # Two sources of one cache, each its own reader, sampled with replacement: one endless epoch.
        converter = sparkfeed.mix(
            {"a": converter, "b": converter}, seed=0, granularity="batch", stop="never", rows_per_epoch=2**40
        )
    local = converter
    if args.s3_url and args.reader not in PLAIN_READS:
        # The uploaded cache read in place, as a user would point at an existing dataset.
        converter = sparkfeed.make_spark_converter(args.s3_url, storage_options=json.loads(args.storage_options))
    if args.reader == "torch" or args.reader == "first_batch":
        import torch  # noqa: F401  (imported before the baseline, as in any training script)
    elif args.reader in ("tf", "tf_graph", "tf_ceiling"):
        import tensorflow  # noqa: F401
    elif args.reader in ("jax", "jax_ceiling"):
        import jax  # noqa: F401
    result: dict[str, Any] = {"sparkfeed": sparkfeed.__version__}
    if not args.mix and not getattr(args, "mix_self", False):
        result["rows_total"] = len(converter)
    baseline = rss_bytes()
    if args.reader == "first_batch":

        def first_batch() -> float:
            started = time.perf_counter()
            with converter.make_torch_dataloader(
                batch_size=args.batch_size, num_epochs=1, shuffle_row_groups=False
            ) as loader:
                next(iter(loader))
                return time.perf_counter() - started

        first_batch()  # warm-up
        latencies = [first_batch() for _ in range(max(args.repeats, 5))]
        result.update(latency_s=statistics.median(latencies), latencies_s=latencies)
    else:
        files: list[str] = []
        spans: list[tuple[str, int, int]] = []
        if args.reader in PLAIN_READS:
            fs, files = cache_files(args, local)
        if args.reader == "s3_row_groups":
            spans = row_group_spans(local, args.s3_url.removeprefix("s3://"))

        totals = sequence_totals(converter, args) if args.tokens else None

        def run() -> tuple[int, int]:
            if totals is not None:  # the sequences group: rows and tokens of an epoch, iterated as a loop would
                with open_reader(converter, args) as batches:
                    for _ in batches:
                        pass
                return totals["rows"], totals["tokens"]
            if spans:
                return read_spans(fs, spans, len(local))
            if files:
                return download(fs, files, len(local))
            if args.reader == "tf_graph":
                return tf_graph_rows(converter, args)
            with open_reader(converter, args) as batches:
                return consume(batches, args.max_rows)

        if args.steady_rows:
            with sparkfeed_loader(converter, args) as loader:
                result.update(measure(steady(loader, args.steady_rows), args.repeats, args.min_time))
        else:
            result.update(measure(run, args.repeats, args.min_time))
        if totals is not None:
            # measure() counts the second number as bytes: here it is tokens
            result["tokens"] = result.pop("bytes")
            result["tokens_per_s"] = result.pop("mb_per_s") * 1e6
            result.update(batches=totals["batches"], cells_per_token=totals["cells"] / max(totals["tokens"], 1))
        if args.s3_url or files or args.file_mb:
            # The cache's size on disk per second of the same median run: comparable across the
            # download anchors (whose bytes are files) and the loaders (whose MB/s are decoded arrays).
            cache_bytes = sum(Path(url.removeprefix("file://")).stat().st_size for url in local.file_urls)
            result["cache_bytes"] = cache_bytes
            result["file_mb_per_s"] = statistics.median(cache_bytes / t / 1e6 for t in result["times_s"])
            if files:
                result["downloaded_bytes"] = result["bytes"]
    result.update(baseline_rss=baseline, peak_rss=peak_rss_bytes())
    if args.quality:  # After the peak RSS is taken: holding every id is the harness's memory, not the reader's.
        with open_reader(converter, args) as batches:  # iterating again runs the next epoch, same seed
            result["shuffle_quality"] = shuffle_quality([collect_ids(batches) for _ in range(QUALITY_EPOCHS)])
    emit(result)


def _stepping(batches: Iterable[Any], seconds: float) -> Iterator[Any]:
    """The batches, each after a pause, as a training step would take: the reader then fills its prefetch."""
    for batch in batches:
        time.sleep(seconds)
        yield batch


def memory(args: argparse.Namespace) -> None:
    """Streams the big dataset once through the NumPy iterator: does memory stay bounded?

    With ``--shuffle``, rows are also shuffled in windows of that many rows: the windows read
    ahead (one per worker, or ``prefetch`` row groups) are what memory holds then. ``--step-ms``
    pauses before each batch, as a training step does: a reader faster than its consumer holds
    every window it may read ahead, which one that keeps up never does.

    The big source is read in place (``make_spark_converter(path)``): it already has the layout the
    converter writes, and converting 4 GiB again would only add minutes. The page cache is warmed
    by plain reads into one reused buffer, which adds nothing to this process's RSS.
    """
    from sparkfeed import make_spark_converter

    path = source_path("big")
    converter = make_spark_converter(str(path))
    buffer = bytearray(8 << 20)
    for url in converter.file_urls:
        with open(url.removeprefix("file://"), "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass
    del buffer
    baseline = rss_bytes()
    started = time.perf_counter()
    shuffled = {"seed": 0, "shuffling_queue_capacity": args.shuffle} if args.shuffle else {"shuffle_row_groups": False}
    if args.prefetch:
        shuffled["prefetch"] = args.prefetch
    with converter.make_numpy_iterator(batch_size=args.batch_size, num_epochs=1, **shuffled) as it:
        rows, nbytes = consume(_stepping(it, args.step_ms / 1000) if args.step_ms else it, args.max_rows)
    seconds = time.perf_counter() - started
    emit(
        {
            "rows": rows,
            "bytes": nbytes,
            "times_s": [seconds],
            "rows_per_s": rows / seconds,
            "mb_per_s": nbytes / seconds / 1e6,
            "baseline_rss": baseline,
            "peak_rss": peak_rss_bytes(),
            "bytes_on_disk": sum(f.stat().st_size for f in path.glob("*.parquet")),
        }
    )


def batching(args: argparse.Namespace) -> None:
    """Cuts one 3M-row row group into batches: the Batcher's own cost per batch, whatever the chunk size.

    The onegroup source is read in place (it is a single row group, so the whole epoch is one
    chunk). The first batch waits for the row group to be decoded (~0.2 s here), which says
    nothing about batching, so the rate is timed from the first batch to the last; the time to
    the first batch is reported beside it. Small batch sizes read only the first ``--max-rows``.
    """
    from sparkfeed import make_spark_converter

    if args.reader == "torch":
        import torch  # noqa: F401  (imported before any timing, as in any training script)
    converter = make_spark_converter(str(source_path("onegroup")))
    groups = [rows for entry in converter.manifest.files for rows in entry.row_groups]
    assert len(groups) == 1, f"the onegroup dataset should be one row group, it has {groups}"
    make = {"numpy": converter.make_numpy_iterator, "torch": converter.make_torch_dataloader}[args.reader]

    def run() -> tuple[int, int, float, float]:
        started = time.perf_counter()
        with make(batch_size=args.batch_size, num_epochs=1, shuffle_row_groups=False) as loader:
            batches = iter(loader)
            rows = batch_rows(next(batches))
            first = time.perf_counter()
            count = 1
            for batch in batches:
                rows += batch_rows(batch)
                count += 1
                if args.max_rows is not None and rows >= args.max_rows:
                    break
            done = time.perf_counter()
        return rows, count, first - started, done - first

    run()  # warm-up: imports, page cache, thread start-up
    runs = []
    while len(runs) < args.repeats or (sum(r[2] + r[3] for r in runs) < args.min_time and len(runs) < MAX_RUNS):
        runs.append(run())
    emit(
        {
            "batch_size": args.batch_size,
            "rows": runs[0][0] - args.batch_size,  # timed: the rows after the first batch
            "batches": runs[0][1] - 1,
            "first_batch_s": statistics.median(r[2] for r in runs),
            "times_s": [r[3] for r in runs],
            "batches_per_s": statistics.median((r[1] - 1) / r[3] for r in runs),
            "rows_per_s": statistics.median((r[0] - args.batch_size) / r[3] for r in runs),
            "peak_rss": peak_rss_bytes(),
        }
    )


def materialize(args: argparse.Namespace) -> None:
    """make_spark_converter(df) vs df.write.parquet(tmp), both with their defaults, alternated.

    Every repeat reads the source into a new DataFrame and converts into a new cache_dir, so
    the in-process cache reuse never kicks in. The first pair is a warm-up (JIT, file listing).
    """
    from sparkfeed import make_spark_converter

    spark = spark_session(f"sparkfeed-bench-materialize-{args.dataset}")
    scratch = TMP_DIR / f"sparkfeed-{args.dataset}"
    shutil.rmtree(scratch, ignore_errors=True)
    convert_times, write_times = [], []
    for repeat in range(args.repeats + 1):
        df = spark.read.parquet(str(source_path(args.dataset)))
        started = time.perf_counter()
        converter = make_spark_converter(df, cache_dir=str(scratch / f"cache-{repeat}"))
        convert_times.append(time.perf_counter() - started)
        converter.delete()
        df = spark.read.parquet(str(source_path(args.dataset)))
        started = time.perf_counter()
        df.write.parquet(str(scratch / f"plain-{repeat}"))
        write_times.append(time.perf_counter() - started)
        shutil.rmtree(scratch, ignore_errors=True)
    spark.stop()
    emit(
        {
            "convert_s": statistics.median(convert_times[1:]),
            "write_s": statistics.median(write_times[1:]),
            "convert_times_s": convert_times,
            "write_times_s": write_times,
        }
    )


def reuse(args: argparse.Namespace) -> None:
    """A cache kept by this process (keep=True), found by fresh processes with reuse="auto".

    Each probe is a new Python process with its own Spark session: what it times is the call a
    restarted job makes, ``make_spark_converter(df, reuse="auto")``, in a JVM that has analyzed
    nothing yet (its session's start-up is not counted: the job pays it with or without sparkfeed).
    """
    import subprocess

    from sparkfeed import make_spark_converter

    spark = spark_session(f"sparkfeed-bench-reuse-{args.dataset}")
    parent = TMP_DIR / f"sparkfeed-reuse-{args.dataset}"
    shutil.rmtree(parent, ignore_errors=True)
    started = time.perf_counter()
    converter = make_spark_converter(
        spark.read.parquet(str(source_path(args.dataset))), cache_dir=str(parent), keep=True
    )
    convert_s = time.perf_counter() - started
    times, same = [], True
    for _ in range(args.repeats):
        probe = [sys.executable, __file__, "reuse-probe", "--dataset", args.dataset, "--parent", str(parent)]
        done = subprocess.run(probe, capture_output=True, text=True, check=True)
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        times.append(seen["seconds"])
        same = same and seen["url"] == converter.cache_dir_url
    converter.delete()
    stop_spark(spark)
    shutil.rmtree(parent, ignore_errors=True)
    emit({"convert_s": convert_s, "reuse_s": statistics.median(times), "reuse_times_s": times, "same_cache": same})


def reuse_probe(args: argparse.Namespace) -> None:
    """One fresh process of :func:`reuse`: prints the cache it got and the seconds the call took."""
    from sparkfeed import make_spark_converter

    spark = spark_session(f"sparkfeed-bench-reuse-probe-{args.dataset}")
    df = spark.read.parquet(str(source_path(args.dataset)))
    started = time.perf_counter()
    converter = make_spark_converter(df, cache_dir=args.parent, reuse="auto")
    seconds = time.perf_counter() - started
    stop_spark(spark)
    print(json.dumps({"url": converter.cache_dir_url, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("serve")
    p.add_argument("--dataset", required=True)
    p.add_argument("--codec", default=None)
    p.add_argument("--handle", required=True)
    p = commands.add_parser("case")
    p.add_argument("--handle", required=True)
    p.add_argument("--reader", choices=READERS, required=True)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--shuffle", choices=("none", "rowgroups", "buffer"), default="none")
    p.add_argument("--shard", default=None, help="cur/count, e.g. 0/2")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--transform", choices=("png",), default=None)
    p.add_argument("--pool", choices=("thread", "process"), default=None)
    p.add_argument("--max-rows", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-time", type=float, default=0.0, help="keep timing runs until they add up to this")
    p.add_argument("--quality", action="store_true", help="also measure the shuffle quality of one epoch")
    p.add_argument("--no-verify", action="store_true", help="verify_checksums=False: the cost of page CRCs")
    p.add_argument("--prefetch", type=int, default=None, help="row-group pieces read ahead (default: the reader's)")
    p.add_argument("--read-ahead-mb", type=int, default=None, help="read_ahead_bytes in MiB (default: the reader's)")
    p.add_argument("--s3-url", default=None, help="read the cache uploaded here (s3://bucket/name) instead")
    p.add_argument("--storage-options", default="{}", help="JSON: pyarrow S3FileSystem keyword arguments")
    p.add_argument("--file-mb", action="store_true", help="also report the cache's file bytes per second")
    p.add_argument("--mix", default=None, help="with a plain+zstd holder: 'zstd', or weights 'plain:0.9,zstd:0.1'")
    p.add_argument("--steady-rows", type=int, default=None, help="rows per timed run of one long-lived loader")
    p.add_argument("--sequence", choices=("pad", "bucket", "pack", "ragged"), default=None, help="sequence= mode")
    p.add_argument("--seq-len", type=int, default=4096, help="packed rows' length (--sequence pack)")
    p.add_argument(
        "--mix-self",
        action="store_true",
        help="the sequences group: the cache mixed with itself, whole batches, stop='never' (with --steady-rows)",
    )
    p.add_argument("--tokens", action="store_true", help="the sequences group: report tokens/s and padding")
    p = commands.add_parser("memory")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--shuffle", type=int, default=0, help="shuffling_queue_capacity (0: in file order)")
    p.add_argument("--step-ms", type=float, default=0, help="a pause before each batch, as a training step")
    p.add_argument("--max-rows", type=int, default=None, help="stop after this many rows")
    p.add_argument("--prefetch", type=int, default=None, help="the reader's prefetch, in row groups")
    p = commands.add_parser("batching")
    p.add_argument("--reader", choices=("numpy", "torch"), required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--max-rows", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-time", type=float, default=0.0)
    p = commands.add_parser("materialize")
    p.add_argument("--dataset", required=True)
    p.add_argument("--repeats", type=int, default=3)
    p = commands.add_parser("reuse")
    p.add_argument("--dataset", required=True)
    p.add_argument("--repeats", type=int, default=3)
    p = commands.add_parser("reuse-probe")
    p.add_argument("--dataset", required=True)
    p.add_argument("--parent", required=True)
    args = parser.parse_args()
    commands_by_name = {
        "serve": serve,
        "case": case,
        "memory": memory,
        "batching": batching,
        "materialize": materialize,
        "reuse": reuse,
        "reuse-probe": reuse_probe,
    }
    commands_by_name[args.command](args)


if __name__ == "__main__":
    main()
