"""The converter: a small, picklable handle on a cached dataset, and the loaders made from it."""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any, Unpack

from sparkfeed.cache import (
    CACHE_DIR_CONF,
    PETASTORM_CACHE_DIR_CONF,
    Manifest,
    delete_cache,
    owned_caches,
    read_manifest,
    resolve_cache_dir,
    to_url,
)
from sparkfeed.materialize import describe, identify, materialize, registry
from sparkfeed.options import MaterializeOptions, ReaderArgs, known_keywords, reader_options
from sparkfeed.reader import Reader
from sparkfeed.reader.batch import NUMPY, BatchFormat, Columns
from sparkfeed.types import column_specs

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from sparkfeed.jax import JaxIterator
    from sparkfeed.tf import TfDatasetContext
    from sparkfeed.torch import TorchDataLoader


class SparkDatasetConverter:
    """A cached dataset and the factory of its loaders; made by :func:`make_spark_converter`.

    It holds only the cache URL and its manifest, so it pickles cheaply to Spark executors or
    training processes, each of which can then read the whole dataset or its own shard.
    """

    PARENT_CACHE_DIR_URL_CONF = CACHE_DIR_CONF
    """Spark conf key of the parent cache directory (Petastorm's name for this attribute)."""
    PETASTORM_PARENT_CACHE_DIR_URL_CONF = PETASTORM_CACHE_DIR_CONF
    """Petastorm's conf key, honoured as a fallback so migrating jobs keep their settings."""

    def __init__(self, cache_dir_url: str, manifest: Manifest) -> None:
        column_specs(manifest.schema, manifest.options.get("dtype"), manifest.shapes)  # Reject bad types now.
        self._cache_dir_url = cache_dir_url
        self._manifest = manifest
        self._deleted = False

    @property
    def cache_dir_url(self) -> str:
        """URL of the directory holding the cached Parquet files."""
        return self._cache_dir_url

    @property
    def file_urls(self) -> list[str]:
        """URLs of the cached Parquet files."""
        return [f"{self._cache_dir_url}/{entry.path}" for entry in self._manifest.files]

    @property
    def dataset_size(self) -> int:
        """Number of rows in the dataset."""
        return self._manifest.num_rows

    @property
    def manifest(self) -> Manifest:
        """The cache's manifest: schema, files, row groups, array shapes, options."""
        return self._manifest

    def __len__(self) -> int:
        return self.dataset_size

    def __repr__(self) -> str:
        return f"SparkDatasetConverter({self._cache_dir_url!r}, rows={self.dataset_size})"

    def delete(self) -> None:
        """Deletes the cache now. Datasets passed in by path are the user's and are never deleted."""
        if self._manifest.options.get("source") == "path":
            warnings.warn(f"not deleting {self._cache_dir_url}: sparkfeed did not create it", stacklevel=2)
            return
        delete_cache(self._cache_dir_url)
        owned_caches.discard(self._cache_dir_url)
        registry.forget(self._cache_dir_url)
        self._deleted = True

    def _reader(
        self, fmt: BatchFormat[Any], batch_size: int, num_epochs: int | None, workers_count: int | None, **kwargs: Any
    ) -> Reader[Any]:
        if self._deleted:
            raise RuntimeError(f"this converter's cache {self._cache_dir_url} was deleted; convert the DataFrame again")
        options = reader_options(batch_size=batch_size, num_epochs=num_epochs, workers_count=workers_count, **kwargs)
        return Reader(self._cache_dir_url, self._manifest, options, fmt)

    @known_keywords
    def make_numpy_iterator(
        self,
        batch_size: int = 32,
        num_epochs: int | None = None,
        workers_count: int | None = None,
        **kwargs: Unpack[ReaderArgs],
    ) -> Reader[Columns]:
        """Batches as dicts of NumPy arrays: the engine every other loader is built on.

        Use it as a context manager (``with converter.make_numpy_iterator() as it:``) so that
        its reader threads stop when the block ends.

        Args:
            batch_size: Rows per batch; the last batch of each epoch may be smaller.
            num_epochs: Passes over the data; None repeats forever, as in Petastorm.
            workers_count: Reader threads (default: cores, at most 4).
            **kwargs: The reader arguments of :class:`~sparkfeed.options.ReaderArgs`: sharding,
                shuffling, seed, columns, transform.
        """
        return self._reader(NUMPY, batch_size, num_epochs, workers_count, **kwargs)

    @known_keywords
    def make_torch_dataloader(
        self,
        batch_size: int = 32,
        num_epochs: int | None = None,
        workers_count: int | None = None,
        **kwargs: Unpack[ReaderArgs],
    ) -> TorchDataLoader:
        """Batches as dicts of ``torch.Tensor``; arguments as :meth:`make_numpy_iterator`.

        Strings and bytes, which tensors cannot hold, arrive as Python lists; dates as int64
        days and timestamps as int64 microseconds since the epoch.
        """
        from sparkfeed.torch import TorchDataLoader, TorchFormat

        return TorchDataLoader(self._reader(TorchFormat(), batch_size, num_epochs, workers_count, **kwargs))

    @known_keywords
    def make_tf_dataset(
        self,
        batch_size: int = 32,
        num_epochs: int | None = None,
        workers_count: int | None = None,
        **kwargs: Unpack[ReaderArgs],
    ) -> TfDatasetContext:
        """A context manager yielding a ``tf.data.Dataset`` of namedtuples named after the columns.

        Its ``output_signature`` is explicit (batch dimension None, inner dimensions fixed), so
        Keras builds without a first pass. Strings and bytes are ``tf.string``; dates int64 days,
        timestamps int64 microseconds. Leaving the block stops the reader threads.

        Args:
            batch_size: Rows per batch; the last batch of each epoch may be smaller.
            num_epochs: Passes over the data per iteration of the dataset; None repeats forever.
            workers_count: Reader threads.
            **kwargs: The reader arguments of :class:`~sparkfeed.options.ReaderArgs`, except
                that ``prefetch`` is the tf.data prefetch buffer here, as in Petastorm (None:
                ``tf.data.AUTOTUNE``); the reader reads ahead by its default.
        """
        from sparkfeed.tf import TfDatasetContext

        prefetch = kwargs.pop("prefetch", None)
        drop_last = kwargs.pop("drop_last", False)

        def reader(rows: int, epochs: int | None, drop: bool) -> Reader[Columns]:
            return self._reader(NUMPY, rows, epochs, workers_count, drop_last=drop, **kwargs)

        return TfDatasetContext(reader, batch_size, num_epochs, prefetch, drop_last)

    @known_keywords
    def make_jax_iterator(
        self,
        batch_size: int = 32,
        num_epochs: int | None = None,
        workers_count: int | None = None,
        *,
        device: Any = None,
        sharding: Any = None,
        **kwargs: Unpack[ReaderArgs],
    ) -> JaxIterator:
        """Batches as dicts of ``jax.Array``; arguments as :meth:`make_numpy_iterator`.

        64-bit types follow ``jax_enable_x64`` as it is set where this is called (also inside a
        ``with jax.enable_x64():``): without it, no value is wrapped into 32 bits silently (see
        :class:`~sparkfeed.jax.JaxIterator`).

        Args:
            batch_size: Rows per batch; the last batch of each epoch may be smaller.
            num_epochs: Passes over the data; None repeats forever.
            workers_count: Reader threads.
            device: Where the arrays go (default: JAX's default device).
            sharding: A ``jax.sharding.Sharding`` to place each batch with, instead of a device.
            **kwargs: The reader arguments of :class:`~sparkfeed.options.ReaderArgs`.
        """
        from sparkfeed.jax import JaxIterator, jax_format

        fmt = jax_format(batch_size, device, sharding)
        return JaxIterator(self._reader(fmt, batch_size, num_epochs, workers_count, **kwargs), device, sharding)


@known_keywords
def make_spark_converter(
    df: DataFrame | str | os.PathLike[str],
    parquet_row_group_size_bytes: int = 32 * 1024 * 1024,
    compression_codec: str | None = None,
    dtype: str | None = "float32",
    *,
    cache_dir: str | None = None,
) -> SparkDatasetConverter:
    """Materializes a DataFrame once as Parquet and returns a converter to load it.

    Converting the same DataFrame again in this process (same plan, same source files, same
    options) returns the first cache. Caches made here are deleted at interpreter exit, or
    earlier by :meth:`SparkDatasetConverter.delete`.

    Args:
        df: A Spark DataFrame, or the path/URL of an existing Parquet dataset (read in place,
            never deleted).
        parquet_row_group_size_bytes: Target row-group size; a row group is the unit of reading
            and shuffling.
        compression_codec: None or 'uncompressed', 'snappy', 'zstd', 'lz4', 'gzip'.
        dtype: Precision of floating columns, vectors and decimals: 'float32', 'float64', or
            None to keep each column's own (decimals then become float64).
        cache_dir: Parent directory URL of the cache. Defaults to the Spark conf
            ``sparkfeed.cacheDir``, then ``petastorm.spark.converter.parentCacheDirUrl``, then
            the ``SPARKFEED_CACHE_DIR`` environment variable, then the system temp dir.

    Raises:
        UnsupportedTypeError: A column has no tensor representation; the message names it,
            its type and what to do.
        ValueError: A parameter is out of range.
    """
    options = MaterializeOptions(parquet_row_group_size_bytes, compression_codec, dtype)
    if isinstance(df, (str, os.PathLike)):
        recorded: dict[str, Any] = {"dtype": dtype, "source": "path"}
        done = describe(to_url(os.fspath(df)), options=recorded)
        return SparkDatasetConverter(done.cache_url, done.manifest)
    if not (hasattr(df, "sparkSession") and hasattr(df, "write")):
        raise TypeError(f"make_spark_converter takes a Spark DataFrame or a Parquet path, not {type(df).__name__}")
    return _convert(df, options, cache_dir)


def _convert(df: DataFrame, options: MaterializeOptions, cache_dir: str | None) -> SparkDatasetConverter:
    spark = df.sparkSession
    parent = resolve_cache_dir(cache_dir, lambda key: spark.conf.get(key, None))
    identity = identify(df)
    known = registry.find(identity, options, parent)
    if known is not None and read_manifest(known.cache_url) is not None:
        return SparkDatasetConverter(known.cache_url, known.manifest)
    if known is not None:
        registry.forget(known.cache_url)  # Deleted behind our back: write it again.
    done = materialize(df, parent, options, identity)
    registry.add(identity, options, parent, done)
    return SparkDatasetConverter(done.cache_url, done.manifest)
