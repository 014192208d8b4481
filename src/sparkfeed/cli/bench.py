"""``sparkfeed bench [URL]``: how fast the reader feeds a framework, and whether a training step would wait on it.

The measure is what a training loop sees: whole batches taken from a loader, timed with
``perf_counter`` after a warm-up, over a few passes whose median is reported. MB/s counts the
bytes of the batches' fixed-size arrays (their ``nbytes``: numbers, bools, dates and fixed-shape
arrays; strings and arrays of varying length are not counted, since their size is not the
array's). Without a URL the data is a synthetic table written with pyarrow into a temporary
directory (removed afterwards): the benchmark harness's tabular shape, an int64 id, 16 float32
features and an int32 label, stored as sparkfeed stores a cache (uncompressed, no dictionary,
page checksums on).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import itertools
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import Any

import click

from sparkfeed.cli.inspect import human_bytes, open_converter
from sparkfeed.types import UnsupportedTypeError

FRAMEWORKS = {"numpy": None, "torch": "torch", "tf": "tensorflow", "jax": "jax"}
"""Each ``--framework`` and the module it needs (NumPy is always there)."""

EXTRAS = {"torch": "torch", "tensorflow": "tf", "jax": "jax"}
"""The extra that installs each framework module."""

SYNTHETIC_FEATURES = 16
SYNTHETIC_FILES = 4
ROW_GROUP_BYTES = 32 * 1024 * 1024
"""The synthetic table's row groups: the size make_spark_converter writes by default."""


@dataclasses.dataclass(frozen=True)
class Pass:
    """One timed pass: whole batches taken in ``seconds``."""

    seconds: float
    batches: int
    rows: int
    bytes: int

    def rates(self) -> dict[str, float]:
        """Rows, MB (10^6 bytes) and batches per second."""
        seconds = max(self.seconds, 1e-9)
        return {
            "rows_per_s": self.rows / seconds,
            "mb_per_s": self.bytes / seconds / 1e6,
            "batches_per_s": self.batches / seconds,
        }


@click.command("bench")
@click.argument("url", required=False)
@click.option(
    "--framework",
    type=click.Choice(list(FRAMEWORKS)),
    default="numpy",
    show_default=True,
    help="The loader to measure: make_numpy_iterator, make_torch_dataloader, make_tf_dataset, make_jax_iterator.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Rows per batch.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Reader workers (default: cores, at most 4).")
@click.option(
    "--reader-pool-type",
    type=click.Choice(["thread", "process", "dummy"]),
    default="thread",
    show_default=True,
    help="Workers as threads, processes, or none (reads in the loop's thread).",
)
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Time passes of this many whole epochs.")
@click.option(
    "--seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Time passes of this many seconds of continuous reading (default 3; not with --epochs).",
)
@click.option(
    "--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Timed passes; the median is reported."
)
@click.option(
    "--shuffle/--no-shuffle",
    default=True,
    show_default=True,
    help="Shuffle as training reads (row groups every epoch, rows across two row groups), or read in file order.",
)
@click.option(
    "--rows",
    type=click.IntRange(min=1),
    default=1_000_000,
    show_default=True,
    help="Rows of the synthetic table (without URL).",
)
@click.option(
    "--step-rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Your training step's batches per second: say whether the reader keeps up with it.",
)
@click.option(
    "--step-time",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="The same as a training step's seconds per batch.",
)
@click.option(
    "--column",
    "columns",
    multiple=True,
    help="Read only this column (repeat for more; a regular expression, as schema_fields takes): leaves out "
    "what no tensor holds, as a training job would.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text (for scripts).")
def bench_command(
    url: str | None,
    framework: str,
    batch_size: int,
    workers: int | None,
    reader_pool_type: str,
    epochs: int | None,
    seconds: float | None,
    repeats: int,
    shuffle: bool,
    rows: int,
    step_rate: float | None,
    step_time: float | None,
    columns: tuple[str, ...],
    as_json: bool,
) -> None:
    """Measure the reader's rows/s and MB/s on a cache (URL) or a synthetic table, and whether a step is input-bound.

    URL is a sparkfeed cache (a converter's cache_dir_url) or any Parquet dataset. Without it, a
    synthetic table of --rows rows (an id, 16 float32 features, a label) is written to a
    temporary directory and removed afterwards. No Spark session is needed.

    Each timed pass follows a warm-up (one epoch with --epochs, a second otherwise); the median
    of --repeats passes is reported. With --step-rate (or --step-time), the report compares the
    reader's batches/s with the step's.
    """
    if epochs is not None and seconds is not None:
        raise click.UsageError("give --epochs or --seconds, not both")
    if step_rate is not None and step_time is not None:
        raise click.UsageError("give --step-rate or --step-time, not both")
    if step_time is not None:
        step_rate = 1 / step_time
    if epochs is None and seconds is None:
        seconds = 3.0
    _import_framework(framework)
    with _dataset(url, rows) as (location, synthetic):
        converter = open_converter(location)
        loader_args: dict[str, Any] = {
            "batch_size": batch_size,
            "workers_count": workers,
            "reader_pool_type": reader_pool_type,
            "shuffle_row_groups": shuffle,
            "shuffle_rows": shuffle,
            "seed": 0,
        }
        if columns:
            loader_args["schema_fields"] = list(columns)
        counter = _Counter()
        try:
            passes = _measure(converter, framework, loader_args, epochs, seconds, repeats, counter)
        except UnsupportedTypeError as error:  # a column no tensor holds: it says which, and --column leaves it out
            raise click.ClickException(f"{error}\n(sparkfeed bench: --column reads only the columns named)") from error
        except (OSError, ValueError) as error:  # an empty dataset, a file gone or damaged since: the reader says which
            raise click.ClickException(f"cannot read {location}: {error}") from error
        report = _report(converter, synthetic, framework, loader_args, epochs, seconds, passes, step_rate)
        report["uncounted_columns"] = counter.uncounted
    click.echo(json.dumps(report, indent=1) if as_json else format_report(report))


def _import_framework(framework: str) -> None:
    """Imports the framework now, so that a missing one is a one-line error naming the extra, before any work."""
    module = FRAMEWORKS[framework]
    if module is None:
        return
    try:
        importlib.import_module(module)
    except ImportError as error:
        raise click.ClickException(
            f"--framework {framework} needs {module}, which cannot be imported ({error}): "
            f"pip install 'sparkfeed[{EXTRAS[module]}]'"
        ) from error


@contextlib.contextmanager
def _dataset(url: str | None, rows: int) -> Iterator[tuple[str, bool]]:
    """The dataset to read: the user's, or a synthetic table in a temporary directory removed at the end."""
    if url is not None:
        yield url, False
        return
    directory = tempfile.mkdtemp(prefix="sparkfeed-bench-")
    try:
        write_synthetic_table(directory, rows)
        yield directory, True
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def write_synthetic_table(directory: str, rows: int, files: int = SYNTHETIC_FILES) -> None:
    """The benchmark harness's tabular dataset, written as sparkfeed writes a cache.

    ``id`` int64, ``f0``..``f15`` float32 (seeded uniform), ``label`` int32 (``id % 10``), in up
    to ``files`` files whose row groups hold about 32 MiB, uncompressed, without dictionary
    encoding, with page checksums: what the reader meets in a cache of such a DataFrame.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    row_bytes = 8 + 4 * SYNTHETIC_FEATURES + 4
    group_rows = max(1, ROW_GROUP_BYTES // row_bytes)
    files = max(1, min(files, rows))
    bounds = [rows * i // files for i in range(files + 1)]
    for number, (start, stop) in enumerate(itertools.pairwise(bounds)):
        ids = np.arange(start, stop, dtype=np.int64)
        columns: dict[str, Any] = {"id": ids}
        columns |= {f"f{i}": rng.random(stop - start, dtype=np.float32) for i in range(SYNTHETIC_FEATURES)}
        columns["label"] = (ids % 10).astype(np.int32)
        pq.write_table(
            pa.table(columns),
            os.path.join(directory, f"part-{number:05d}.parquet"),
            row_group_size=group_rows,
            compression="none",
            use_dictionary=False,
            write_page_checksum=True,
        )


# --------------------------------------------------------------------------- measuring


@contextlib.contextmanager
def _loader(converter: Any, framework: str, args: dict[str, Any], num_epochs: int | None) -> Iterator[Iterable[Any]]:
    """The framework's loader over the dataset, open for the block."""
    if framework == "numpy":
        context: Any = converter.make_numpy_iterator(num_epochs=num_epochs, **args)
    elif framework == "torch":
        context = converter.make_torch_dataloader(num_epochs=num_epochs, **args)
    elif framework == "tf":
        context = converter.make_tf_dataset(num_epochs=num_epochs, **args)
    else:
        context = converter.make_jax_iterator(num_epochs=num_epochs, **args)
    with context as loader:
        yield loader


class _Counter:
    """Rows and bytes of batches, from the first batch's layout: one length lookup a batch, nothing more.

    The bytes a row holds in fixed-size arrays do not change from batch to batch (the reader
    checks every chunk's dtypes and row shapes), so they are measured once, from ``nbytes``.

    Attributes:
        row_bytes: Bytes per row in fixed-size arrays; None until a batch was seen.
        uncounted: The columns left out of the bytes: strings, bytes, arrays of varying length.
    """

    def __init__(self) -> None:
        self.row_bytes: float | None = None
        self.uncounted: list[str] = []

    def rows(self, batch: Any) -> int:
        """Rows in a batch: the leading dimension of its first column."""
        first = batch[next(iter(batch))] if isinstance(batch, dict) else batch[0]
        shape = getattr(first, "shape", None)
        return int(shape[0]) if shape is not None and len(shape) else len(first)

    def learn(self, batch: Any) -> None:
        """Measures the bytes per row of the batch's fixed-size arrays."""
        # A dict (NumPy, torch, JAX) or a namedtuple (TF).
        named = batch.items() if isinstance(batch, dict) else zip(batch._fields, batch, strict=True)
        total = 0
        for name, column in named:
            size = _nbytes(column)
            if size is None:
                self.uncounted.append(name)
            else:
                total += size
        rows = self.rows(batch)
        self.row_bytes = total / rows if rows else 0.0


def _nbytes(column: Any) -> int | None:
    """A fixed-size array's bytes (NumPy, torch, TF, JAX); None for strings, bytes and ragged arrays."""
    dtype = getattr(column, "dtype", None)
    if dtype is None or str(dtype) in ("object", "<dtype: 'string'>"):
        return None  # a list (torch's strings, ragged arrays), an object array or tf.string
    nbytes = getattr(column, "nbytes", None)
    if nbytes is not None:
        return int(nbytes)
    # A TensorFlow tensor has no nbytes: elements times the dtype's size.
    return int(column.shape.num_elements()) * int(column.dtype.size)


def _block(batch: Any, framework: str) -> None:
    """Waits until the batch is really there: JAX places arrays asynchronously."""
    if framework == "jax":
        import jax

        jax.block_until_ready(batch)  # type: ignore[no-untyped-call]


def _measure(
    converter: Any,
    framework: str,
    args: dict[str, Any],
    epochs: int | None,
    seconds: float | None,
    repeats: int,
    counter: _Counter,
) -> list[Pass]:
    if epochs is not None:
        return _measure_epochs(converter, framework, args, epochs, repeats, counter)
    assert seconds is not None
    return _measure_seconds(converter, framework, args, seconds, repeats, counter)


def _measure_epochs(
    converter: Any, framework: str, args: dict[str, Any], epochs: int, repeats: int, counter: _Counter
) -> list[Pass]:
    """A fresh loader per pass, iterated to its end: each pass pays the first read's wait, as each epoch loop does."""
    with _loader(converter, framework, args, 1) as loader:  # warm-up: threads, imports, the page cache
        for batch in loader:
            if counter.row_bytes is None:
                counter.learn(batch)
    passes = []
    for _ in range(repeats):
        batches = rows = 0
        last = None
        with _loader(converter, framework, args, epochs) as loader:
            started = time.perf_counter()
            for last in loader:
                batches += 1
                rows += counter.rows(last)
            _block(last, framework)
            elapsed = time.perf_counter() - started
        passes.append(Pass(elapsed, batches, rows, round(rows * (counter.row_bytes or 0))))
    return passes


def _measure_seconds(
    converter: Any, framework: str, args: dict[str, Any], seconds: float, repeats: int, counter: _Counter
) -> list[Pass]:
    """One endless loader: a warm-up, then consecutive windows of ``seconds``, each ending on a whole batch."""
    passes = []
    with _loader(converter, framework, args, None) as loader:
        stream = iter(loader)
        warm_until = time.perf_counter() + min(1.0, seconds)
        for batch in stream:
            if counter.row_bytes is None:
                counter.learn(batch)
            if time.perf_counter() >= warm_until:
                break
        for _ in range(repeats):
            batches = rows = 0
            started = time.perf_counter()
            until = started + seconds
            for batch in stream:
                batches += 1
                rows += counter.rows(batch)
                if time.perf_counter() >= until:
                    _block(batch, framework)
                    break
            passes.append(Pass(time.perf_counter() - started, batches, rows, round(rows * (counter.row_bytes or 0))))
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    return passes


# --------------------------------------------------------------------------- reporting


def verdict(reader_batches_per_s: float, step_batches_per_s: float, workers: int) -> dict[str, Any]:
    """Whether a step of this rate would wait on the reader, with the ratio and a sentence saying so."""
    headroom = reader_batches_per_s / step_batches_per_s
    bound = headroom < 1
    if bound:
        cores = os.cpu_count() or 1
        more = f"--workers {min(2 * workers, cores)} (workers_count) or " if workers < cores else ""
        text = (
            f"input-bound: the reader gives {reader_batches_per_s:,.0f} batches/s, the step wants "
            f"{step_batches_per_s:,.0f}; try {more}reader_pool_type='process' (for a transform that holds the "
            "GIL), and check the storage's speed"
        )
    else:
        ratio = f"{headroom:,.0f}" if headroom >= 10 else f"{headroom:.1f}"
        text = (
            f"reader: {reader_batches_per_s:,.0f} batches/s; your step: {step_batches_per_s:,.0f} batches/s -> "
            f"not input-bound ({ratio}x headroom)"
        )
    return {"batches_per_s": step_batches_per_s, "input_bound": bound, "headroom": headroom, "verdict": text}


def _report(
    converter: Any,
    synthetic: bool,
    framework: str,
    args: dict[str, Any],
    epochs: int | None,
    seconds: float | None,
    passes: list[Pass],
    step_rate: float | None,
) -> dict[str, Any]:
    from sparkfeed.options import ReaderOptions

    workers = ReaderOptions(workers_count=args["workers_count"], reader_pool_type=args["reader_pool_type"]).workers
    rates = [p.rates() for p in passes]
    median = {key: statistics.median(rate[key] for rate in rates) for key in rates[0]}
    manifest = converter.manifest
    return {
        "data": {
            "url": None if synthetic else converter.cache_dir_url,
            "synthetic": synthetic,
            "rows": manifest.num_rows,
            "columns": len(manifest.schema),
            "files": len(manifest.files),
            "row_groups": sum(len(entry.row_groups) for entry in manifest.files),
        },
        "framework": framework,
        "batch_size": args["batch_size"],
        "workers": workers,
        "reader_pool_type": args["reader_pool_type"],
        "shuffle": args["shuffle_row_groups"],
        "epochs": epochs,
        "seconds": seconds,
        "passes": [{**dataclasses.asdict(p), **rate} for p, rate in zip(passes, rates, strict=True)],
        "median": median,
        "step": None if step_rate is None else verdict(median["batches_per_s"], step_rate, workers),
    }


def format_report(report: dict[str, Any]) -> str:
    """The text ``bench`` prints: what was measured, each pass, the median and the verdict."""
    data = report["data"]
    source = "synthetic table (id, f0..f15 float32, label)" if data["synthetic"] else data["url"]
    how = f"{report['epochs']} epoch(s)" if report["epochs"] is not None else f"{report['seconds']:g} s"
    lines = [
        f"data: {source}: {data['rows']:,} rows x {data['columns']} columns, {data['files']} file(s), "
        f"{data['row_groups']} row group(s)",
        f"loader: {report['framework']}, batch size {report['batch_size']}, {report['workers']} "
        f"{report['reader_pool_type']} worker(s), {'shuffled' if report['shuffle'] else 'file order'}; "
        f"{len(report['passes'])} timed pass(es) of {how} after a warm-up",
    ]
    for number, one in enumerate(report["passes"], start=1):
        lines.append(f"  pass {number}: {_rates(one)}  ({one['batches']:,} batches in {one['seconds']:.2f} s)")
    lines.append(f"median: {_rates(report['median'])}")
    if report["uncounted_columns"]:
        left_out = ", ".join(report["uncounted_columns"])
        lines.append(
            f"  (MB/s counts the arrays' nbytes; left out: {left_out}: strings, bytes, arrays of varying length)"
        )
    if report["step"] is not None:
        lines.append(report["step"]["verdict"])
    return "\n".join(lines)


def _rates(rates: dict[str, Any]) -> str:
    mb = human_bytes(round(rates["mb_per_s"] * 1e6))
    return f"{rates['rows_per_s']:,.0f} rows/s, {mb}/s, {rates['batches_per_s']:,.0f} batches/s"
