"""The reader engine: plan → threaded row-group reads → NumPy batches. Every adapter sits on it."""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Iterator
from types import TracebackType

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sparkfeed.cache import Manifest, filesystem
from sparkfeed.options import ReaderOptions
from sparkfeed.reader.batch import Columns, batches
from sparkfeed.reader.plan import Piece, epoch_order, shard_pieces
from sparkfeed.reader.pool import OrderedPool
from sparkfeed.types import column_specs, to_numpy


class Reader:
    """Batches of NumPy arrays (a dict per batch) from a cached Parquet dataset.

    Iterating runs ``num_epochs`` epochs (forever when None); iterating again continues with
    the following epochs, so a fixed seed still gives every epoch its own order. Batches never
    span two epochs: each epoch ends with its partial batch.

    Args:
        root_url: The dataset's directory URL.
        manifest: Its manifest.
        options: Validated reader options.
    """

    def __init__(self, root_url: str, manifest: Manifest, options: ReaderOptions) -> None:
        self._options = options
        self._fs, self._root = filesystem(root_url)
        self._files = manifest.files
        self._specs = column_specs(
            manifest.schema, manifest.options.get("dtype"), manifest.shapes, options.schema_fields
        )
        self._schema = pa.schema([(spec.name, spec.arrow_type) for spec in self._specs.values()])
        self._columns = list(self._specs)
        cur_shard, shard_count = options.shard
        self._pieces = shard_pieces(
            [(f, g, rows) for f, entry in enumerate(manifest.files) for g, rows in enumerate(entry.row_groups)],
            cur_shard,
            shard_count,
        )
        self._rows = sum(piece.rows for piece in self._pieces)
        if self._rows == 0 and options.num_epochs is None:
            raise ValueError(
                f"shard {cur_shard} of {shard_count} holds no rows ({manifest.num_rows} rows in the dataset), "
                "so num_epochs=None would wait forever: use fewer shards or a finite num_epochs"
            )
        self._seed = options.seed if options.seed is not None else int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]
        self._footers: dict[int, pq.FileMetaData] = {}
        self._footer_lock = threading.Lock()
        self._next_epoch = 0
        self._active: Iterator[Columns] | None = None

    @property
    def num_rows(self) -> int:
        """Rows this reader yields per epoch (its shard's share of the dataset)."""
        return self._rows

    def __len__(self) -> int:
        """Batches per iteration, exact when the transform keeps every row."""
        if self._options.num_epochs is None:
            raise TypeError("a loader with num_epochs=None is infinite and has no len(); pass num_epochs")
        return self._options.num_epochs * math.ceil(self._rows / self._options.batch_size)

    def __iter__(self) -> Iterator[Columns]:
        self.close()
        first = self._next_epoch
        epochs = (
            itertools.count(first)
            if self._options.num_epochs is None
            else range(first, first + self._options.num_epochs)
        )
        if self._options.num_epochs is not None:
            self._next_epoch += self._options.num_epochs
        self._active = self._stream(epochs)
        return self._active

    def _stream(self, epochs: Iterator[int] | range) -> Iterator[Columns]:
        options = self._options
        cur_shard, _ = options.shard
        work = (
            (epoch, piece)
            for epoch in epochs
            for piece in epoch_order(
                self._pieces, shuffle=options.shuffle_row_groups, seed=self._seed, epoch=epoch, shard=cur_shard
            )
        )
        pool: OrderedPool[tuple[int, Piece], tuple[int, Columns]] = OrderedPool(
            self._read, options.workers, options.prefetch_pieces, describe=self._describe
        )
        chunks = pool.imap(work)
        try:
            for _, epoch_chunks in itertools.groupby(chunks, key=lambda item: item[0]):
                yield from batches((columns for _, columns in epoch_chunks), options.batch_size)
        finally:
            chunks.close()  # type: ignore[attr-defined]

    def _describe(self, item: tuple[int, Piece]) -> str:
        epoch, piece = item
        return (
            f"{self._root}/{self._files[piece.file].path}, row group {piece.row_group}, "
            f"rows [{piece.start}, {piece.stop}) (epoch {epoch})"
        )

    def _footer(self, file: int) -> pq.FileMetaData:
        footer = self._footers.get(file)
        if footer is None:
            with self._fs.open_input_file(f"{self._root}/{self._files[file].path}") as handle:
                footer = pq.read_metadata(handle)
            with self._footer_lock:
                self._footers[file] = footer
        return footer

    def _read(self, item: tuple[int, Piece]) -> tuple[int, Columns]:
        """Runs in a worker thread: one piece read, cast, transformed and converted to NumPy."""
        epoch, piece = item
        footer = self._footer(piece.file)
        with self._fs.open_input_file(f"{self._root}/{self._files[piece.file].path}") as handle:
            table = pq.ParquetFile(handle, metadata=footer).read_row_group(
                piece.row_group, columns=self._columns, use_threads=False
            )
        if piece.start or piece.stop != table.num_rows:
            table = table.slice(piece.start, piece.rows)
        if table.schema != self._schema:
            table = table.cast(self._schema)
        transform = self._options.transform_spec
        if transform is not None:
            frame = table.to_pandas(date_as_object=False, coerce_temporal_nanoseconds=False)
            return epoch, transform.apply(frame)
        return epoch, {name: to_numpy(spec, table.column(name)) for name, spec in self._specs.items()}

    def close(self) -> None:
        """Stops the reader threads of the current iteration, if any."""
        if self._active is not None:
            self._active.close()  # type: ignore[attr-defined]
            self._active = None

    def __enter__(self) -> Reader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
