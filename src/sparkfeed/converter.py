"""The converter: a small, picklable handle on a cached dataset, and the loaders made from it."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Unpack

import pyarrow as pa

from sparkfeed.cache import (
    CACHE_DIR_CONF,
    PETASTORM_CACHE_DIR_CONF,
    CorruptManifestError,
    IncompleteCacheError,
    Manifest,
    claim,
    delete_cache,
    find_kept,
    owned_caches,
    read_cache,
    read_manifest,
    resolve_cache_dir,
)
from sparkfeed.cache import (
    register_delete_dir_handler as register_delete_dir_handler,  # Petastorm has it in its converter module
)
from sparkfeed.loader import DEFAULT_BATCH_SIZE, jax_iterator, tf_dataset, torch_dataloader
from sparkfeed.location import Location
from sparkfeed.materialize import (
    DataFrameIdentity,
    Materialized,
    describe,
    identify,
    materialize,
    registry,
    reuse_key,
)
from sparkfeed.options import ConversionRun, MaterializeOptions, ReaderArgs, Reuse, known_keywords, reader_options
from sparkfeed.reader import Reader
from sparkfeed.reader.batch import NUMPY, BatchFormat, Columns

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from sparkfeed.jax import JaxIterator
    from sparkfeed.tf import TfDatasetContext
    from sparkfeed.torch import TorchDataLoader


class SparkDatasetConverter:
    """A cached dataset and the factory of its loaders; made by :func:`make_spark_converter`.

    It holds only the cache's location and manifest (and, for a cache this process made, the
    token that lets it delete it), so it pickles cheaply to Spark executors or training
    processes, each of which can then read the whole dataset or its own shard.
    """

    PARENT_CACHE_DIR_URL_CONF = PETASTORM_CACHE_DIR_CONF
    """Petastorm's Spark conf key of the parent cache directory, under Petastorm's name: code that
    sets ``spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, url)`` keeps working.
    sparkfeed's own key, :attr:`CACHE_DIR_CONF`, wins where both are set."""
    CACHE_DIR_CONF = CACHE_DIR_CONF
    """sparkfeed's Spark conf key of the parent cache directory, ``sparkfeed.cacheDir``."""
    PETASTORM_PARENT_CACHE_DIR_URL_CONF = PETASTORM_CACHE_DIR_CONF
    """The same as :attr:`PARENT_CACHE_DIR_URL_CONF`, kept for code written against sparkfeed 0.1."""

    def __init__(
        self, location: Location | str, manifest: Manifest, token: str | None = None, *, reused: bool = False
    ) -> None:
        if not isinstance(manifest, Manifest):
            # Petastorm's constructor was SparkDatasetConverter(cache_dir_url, file_urls, dataset_size): its file
            # list here failed later, at the first attribute read, with an AttributeError that named nothing.
            raise TypeError(
                f"SparkDatasetConverter got a {type(manifest).__name__} where it takes a cache's Manifest: sparkfeed's "
                "converter is made from a cache's manifest, not from Petastorm's (cache_dir_url, file_urls, "
                "dataset_size); open "
                "a Parquet directory or a cache with make_spark_converter(cache_dir_url), which reads its files and "
                "row count itself"
            )
        self._location = Location.parse(location)
        self._manifest = manifest
        self._token = token
        self._reused = reused  # a kept cache an earlier process made, found by reuse="auto"
        self._deleted = False

    @property
    def cache_dir_url(self) -> str:
        """URL of the directory holding the cached Parquet files (percent-encoded, like any URL)."""
        return self._location.url

    @property
    def location(self) -> Location:
        """The cache directory, with its pyarrow filesystem and path and the form Spark reads."""
        return self._location

    @property
    def file_urls(self) -> list[str]:
        """URLs of the cached Parquet files."""
        return [self._location.child(*entry.path.split("/")).url for entry in self._manifest.files]

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
        return f"SparkDatasetConverter({str(self._location)!r}, rows={self.dataset_size})"  # credentials hidden

    def delete(self) -> None:
        """Deletes the cache now, if this process's sparkfeed created it.

        Datasets passed in by path, sparkfeed caches reopened by path among them, are never
        deleted (a warning says so). A directory that no longer holds the marker written when
        the cache was created is not deleted either.

        Raises:
            NotOursError: The directory is not the cache this converter made; nothing was deleted.
            PermissionError: It holds another process's cache (one an older sparkfeed nested in
                it) whose process may still read it; nothing was deleted, and the cleanup at exit
                tries again.
        """
        if self._token is None:
            how = (
                "it is a kept cache that another process made, reused here (reuse='auto'); `sparkfeed cache rm "
                f"{self._location}` removes it, or `sparkfeed cache clean --older-than` once it is idle"
                if getattr(self, "_reused", False)  # a converter pickled by an older version has no such field
                else "it was opened by path"
            )
            warnings.warn(f"not deleting {self._location}: this converter did not create it ({how})", stacklevel=2)
            return
        delete_cache(self._location, self._token)
        owned_caches.discard(self._location)
        registry.forget(self._location)
        self._deleted = True

    def _check_alive(self) -> None:
        """Raises a ``RuntimeError`` if :meth:`delete` removed the cache: no loader can read it any more."""
        if self._deleted:
            raise RuntimeError(f"this converter's cache {self._location} was deleted; convert the DataFrame again")

    def _reader(
        self,
        fmt: BatchFormat[Any],
        batch_size: int,
        num_epochs: int | None,
        workers_count: int | None,
        *,
        chunk_batches: int = 1,
        **kwargs: Any,
    ) -> Reader[Any]:
        """The loaders' batch source (see :class:`~sparkfeed.loader.BatchesFactory`)."""
        self._check_alive()
        owned_caches.cover_sigterm()  # the conversions may all have run in threads, where it could not
        if chunk_batches > 1:  # an epoch's short last batch stays in its chunk: see BatchesFactory
            kwargs["drop_last"] = False
            batch_size *= chunk_batches  # the TF dataset's, checked as the user gave it (see tf_dataset)
        # else the user's own value, which the options check: None * 1 would fail here, naming nothing
        options = reader_options(batch_size=batch_size, num_epochs=num_epochs, workers_count=workers_count, **kwargs)
        return Reader(self._location, self._manifest, options, fmt)

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

    # Petastorm's positional order makes shuffling_queue_capacity a parameter here, so it overlaps
    # ReaderArgs (mypy's misc): Python refuses it given twice, and known_keywords accepts it once.
    @known_keywords
    def make_torch_dataloader(  # type: ignore[misc]
        self,
        batch_size: int | None = DEFAULT_BATCH_SIZE,
        num_epochs: int | None = None,
        workers_count: int | None = None,
        shuffling_queue_capacity: int | None = 0,
        data_loader_fn: Callable[..., Any] | None = None,
        **kwargs: Unpack[ReaderArgs],
    ) -> TorchDataLoader:
        """Batches as dicts of ``torch.Tensor``; the positional order is Petastorm's.

        Strings and bytes, which tensors cannot hold, arrive as Python lists; dates as int64
        days and timestamps as int64 microseconds since the epoch. Bool columns are
        ``torch.bool`` tensors, a deliberate difference from Petastorm, which gave
        ``torch.uint8`` (PyTorch had no bool tensors then): masks and indexing work on them
        as they are; ``batch["flag"].to(torch.uint8)`` gives Petastorm's values.

        Args:
            batch_size: Rows per batch; the last batch of each epoch may be smaller. None means
                32, as in Petastorm.
            num_epochs: Passes over the data; None repeats forever, as in Petastorm.
            workers_count: Reader threads (default: cores, at most 4).
            shuffling_queue_capacity: Also shuffle rows across windows of at least this many
                rows; 0 (Petastorm's default) or None keeps each row group's order.
            data_loader_fn: Petastorm's loader class. None, ``petastorm.pytorch.DataLoader``
                and ``petastorm.pytorch.BatchedDataLoader`` all mean sparkfeed's loader, which
                is already batched; anything else is refused with what to write instead.
            **kwargs: The reader arguments of :class:`~sparkfeed.options.ReaderArgs`: sharding,
                shuffling, seed, columns, transform.

        Raises:
            ValueError: An argument is out of range, or ``data_loader_fn`` is another loader.
        """
        return torch_dataloader(
            self._reader, batch_size, num_epochs, workers_count, shuffling_queue_capacity, data_loader_fn, dict(kwargs)
        )

    # Petastorm's positional order makes prefetch and shuffling_queue_capacity parameters (see above).
    @known_keywords
    def make_tf_dataset(  # type: ignore[misc]
        self,
        batch_size: int | None = None,
        prefetch: int | None = None,
        num_epochs: int | None = None,
        workers_count: int | None = None,
        shuffling_queue_capacity: int | None = None,
        **kwargs: Unpack[ReaderArgs],
    ) -> TfDatasetContext:
        """A context manager yielding a ``tf.data.Dataset`` of namedtuples named after the columns.

        The positional order is Petastorm's. The dataset is a ``tf.compat.v1.data.Dataset``,
        as Petastorm's: TF2 code iterates it, maps it and fits Keras on it as any dataset, and
        TF1 code calls ``make_one_shot_iterator()``, ``make_initializable_iterator()``,
        ``output_types`` and ``output_shapes`` on it in graph mode (enter the context inside
        the graph, ``with tf.Graph().as_default():``, as any dataset must be made there).

        Its ``output_signature`` is explicit (batch dimension None, inner dimensions fixed), so
        Keras builds without a first pass. Strings and bytes are ``tf.string``; dates int64 days,
        timestamps int64 microseconds. Leaving the block stops the reader threads. A null in a
        string column raises :class:`~sparkfeed.NullValueError` when iterated eagerly, an error
        that is also TensorFlow's ``InvalidArgumentError``; in a graph-mode session, a
        ``tf.function`` or Keras, TensorFlow raises its own ``InvalidArgumentError`` with the
        same message.

        Args:
            batch_size: Rows per batch; the last batch of each epoch may be smaller. None means
                32, as in Petastorm.
            prefetch: The tf.data prefetch buffer, as in Petastorm (None or ``tf.data.AUTOTUNE``: autotuned);
                the reader reads ahead by its default.
            num_epochs: Passes over the data per iteration of the dataset; None repeats forever.
            workers_count: Reader threads.
            shuffling_queue_capacity: Also shuffle rows across windows of at least this many
                rows; None (Petastorm's default) or 0 keeps each row group's order.
            **kwargs: The reader arguments of :class:`~sparkfeed.options.ReaderArgs`.

        Raises:
            UnsupportedTypeError: A column holds arrays of varying length.
            ValueError: An argument is out of range.
        """
        return tf_dataset(
            self._reader, batch_size, prefetch, num_epochs, workers_count, shuffling_queue_capacity, dict(kwargs)
        )

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
        return jax_iterator(self._reader, batch_size, num_epochs, workers_count, device, sharding, dict(kwargs))


DEFAULT_ROW_GROUP_SIZE_BYTES = 32 * 1024 * 1024
DEFAULT_DTYPE = "float32"


@known_keywords
def make_spark_converter(
    df: DataFrame | str | os.PathLike[str],
    parquet_row_group_size_bytes: int = DEFAULT_ROW_GROUP_SIZE_BYTES,
    compression_codec: str | None = None,
    dtype: str | None = DEFAULT_DTYPE,
    *,
    cache_dir: str | None = None,
    storage_options: dict[str, Any] | None = None,
    filesystem: Any = None,
    progress: bool = False,
    reuse: Reuse = "process",
    keep: bool = False,
) -> SparkDatasetConverter:
    """Materializes a DataFrame once as Parquet and returns a converter to load it.

    Converting the same DataFrame again in this process (same plan, same source files, same
    options) returns the first cache. Caches made here are deleted at interpreter exit, or
    earlier by :meth:`SparkDatasetConverter.delete`.

    Args:
        df: A Spark DataFrame, or the path/URL of an existing Parquet dataset (read in place,
            never deleted). A sparkfeed cache opened this way (``converter.cache_dir_url``, from
            another job) reads as its converter did, from its manifest. Given a path, only
            ``dtype`` (for Parquet that is not a sparkfeed cache), ``storage_options``,
            ``filesystem`` and ``keep`` (it holds already) apply: any other option given
            another value than its default is refused, naming it, and so is a ``dtype`` other
            than the one a sparkfeed cache was written with.
        parquet_row_group_size_bytes: Target row-group size; a row group is the unit of reading
            and shuffling.
        compression_codec: None or 'uncompressed', 'snappy', 'zstd', 'lz4', 'gzip'.
        dtype: Precision of floating columns, vectors and decimals: 'float32', 'float64' (or
            their NumPy dtypes, taken by name), or None to keep each column's own (decimals then
            become float64).
        cache_dir: Parent directory URL of the cache. Defaults to the Spark conf
            ``sparkfeed.cacheDir``, then ``petastorm.spark.converter.parentCacheDirUrl``, then
            the ``SPARKFEED_CACHE_DIR`` environment variable, then this user's own directory
            under the system temp dir (``sparkfeed-<uid>``, mode 0700).
        storage_options: How to reach an object store or HDFS location (the cache directory, or
            ``df`` when it is a URL): keyword arguments of its pyarrow filesystem, e.g. for S3
            ``access_key``, ``secret_key``, ``region``, ``endpoint_override``, ``scheme``. They
            travel with the pickled converter to executors and are never written into the cache;
            leave credentials out to have each process read its own environment instead.
        filesystem: A pyarrow or fsspec filesystem to reach that location with, instead.
        progress: Show the Spark job's progress while the cache is written (a tqdm bar on
            stderr: tasks done, rows and files written).
        reuse: ``"process"`` (default): the same DataFrame converted again in this process gets
            its cache back. ``"auto"``: also a cache kept by an earlier process (``keep=True``)
            under the same parent, for the same plan, source files (by name, size and
            modification time) and options; DataFrames whose rows the plan does not determine
            (local data, RDDs, user functions, non-deterministic expressions, samples, Spark
            Connect) are never reused across processes (the log says why).
        keep: Keep the cache when this process ends, for later processes' ``reuse="auto"`` (or
            to open by its URL). ``delete()`` still removes it, and ``sparkfeed cache clean
            --older-than`` collects it once its creator is gone, no process that reused it (or
            opened it by its URL) still runs, and it was not made or reused for that long. A
            DataFrame this process converted before without ``keep`` is written again, kept (the
            first cache is still deleted at exit).

    Raises:
        UnsupportedTypeError: A column has no tensor representation; the message names it,
            its type and what to do.
        ValueError: A parameter is out of range, or cannot apply to a dataset opened by path;
            the DataFrame has no columns, two of one name, or is a stream.
        RuntimeError: The DataFrame's Spark session was stopped.
        IncompleteCacheError: ``df`` is the path of a sparkfeed cache still being written, or
            whose write was cut short.
    """
    options = MaterializeOptions(parquet_row_group_size_bytes, compression_codec, dtype)
    run = ConversionRun(progress, reuse, keep)
    if isinstance(df, (str, os.PathLike)):
        location = Location.parse(df, options=storage_options, filesystem=filesystem)
        # The options that only writing a cache uses, by name, with their values where not the default.
        given = {
            name: value
            for name, value, default in (
                ("parquet_row_group_size_bytes", parquet_row_group_size_bytes, DEFAULT_ROW_GROUP_SIZE_BYTES),
                ("compression_codec", compression_codec, None),
                ("cache_dir", cache_dir, None),
                ("reuse", reuse, "process"),
                ("progress", progress, False),
            )
            if value != default
        }
        if given:
            named = ", ".join(f"{name}={value!r}" for name, value in given.items())
            raise ValueError(
                f"{named} cannot apply to a dataset opened by path ({location}): it is read in place, as it was "
                "written, and nothing is written or reused; leave them out, or convert a DataFrame to write a cache "
                "with them"
            )
        cache = read_cache(location)  # A sparkfeed cache: its manifest says what the files hold.
        if cache is not None:
            manifest, marker = cache
            written = manifest.options.get("dtype")
            if options.dtype != DEFAULT_DTYPE and options.dtype != written:
                raise ValueError(
                    f"dtype={options.dtype!r} cannot apply to the sparkfeed cache {location} opened by path: it was "
                    f"written with dtype={written!r} and is read as it was written; leave dtype out, or convert the "
                    f"DataFrame again with dtype={options.dtype!r}"
                )
            if marker is not None and not claim(location, manifest):
                # Recorded as read, `cache clean` and `rm` leave it while this process runs (unless being removed).
                raise IncompleteCacheError(
                    f"sparkfeed cache {location} is being removed (`sparkfeed cache clean` or `rm`, in another "
                    "process): open a complete cache, or convert the DataFrame again"
                )
            log.info("opened the sparkfeed cache %s by path: it is read in place and never deleted", location)
            return SparkDatasetConverter(location, manifest)
        done = describe(location, options={"dtype": options.dtype, "source": "path"})
        _note_narrowed_floats(done.manifest, options.dtype)
        return SparkDatasetConverter(done.location, done.manifest)
    # the class's: a stream's `write` property raises Spark's error about calling write on a stream
    if not (hasattr(df, "sparkSession") and hasattr(type(df), "write")):
        raise TypeError(f"make_spark_converter takes a Spark DataFrame or a Parquet path, not {type(df).__name__}")
    _refuse_unconvertible(df)
    spark = df.sparkSession
    parent = resolve_cache_dir(cache_dir, lambda key: spark.conf.get(key, None))
    if storage_options is not None or filesystem is not None:
        parent = Location.parse(parent, options=storage_options, filesystem=filesystem)
    return _convert(df, options, parent, run)


def _refuse_unconvertible(df: DataFrame) -> None:
    """Refuses, saying what to do, a DataFrame no conversion can write.

    Spark's own errors came late and named no way out: a stream failed with
    ``CALL_ON_STREAMING_DATASET_UNSUPPORTED`` about ``write``, a DataFrame of a stopped session
    with a bare ``AssertionError`` from deep in pyspark.

    Raises:
        ValueError: ``df`` is a streaming DataFrame, which has no end to write.
        RuntimeError: ``df``'s Spark session was stopped.
    """
    session = df.sparkSession
    stopped = getattr(session, "is_stopped", None)  # Spark Connect's; classic sessions lose their JVM handle
    if stopped is True or (stopped is None and getattr(getattr(session, "_sc", None), "_jsc", True) is None):
        raise RuntimeError(
            "the DataFrame's Spark session was stopped (spark.stop()), so nothing can compute its rows: "
            "make the DataFrame again in an active session, or convert it before stopping the session"
        )
    if df.isStreaming:
        raise ValueError(
            "a streaming DataFrame (spark.readStream) has no end, so it cannot be converted: write it out with "
            "writeStream (a trigger(availableNow=True) query to Parquet, say) and convert what it wrote, "
            "make_spark_converter(spark.read.parquet(path)), or convert each micro-batch in foreachBatch"
        )


def _convert(df: DataFrame, options: MaterializeOptions, parent: Location, run: ConversionRun) -> SparkDatasetConverter:
    identity = identify(df, stable=run.reuse == "auto" or run.keep)
    known = registry.find(identity, options, parent)
    replaced = None
    if known is not None and run.keep and known.location in owned_caches:
        # Written here without keep, so deleted at exit: not what keep=True asks for. A kept one
        # is written (or found) and takes its place for this process's later conversions.
        log.info("keep=True: the cache %s of this DataFrame is deleted at exit; writing a kept one", known.location)
        replaced, known = known, None
    if known is not None and _still_complete(known):
        log.info("reusing cache %s, written earlier in this process for the same DataFrame", known.location)
        # no token: a kept cache of an earlier process, which reuse="auto" found for this DataFrame
        return SparkDatasetConverter(known.location, known.manifest, known.token, reused=known.token is None)
    if known is not None:
        log.info("cache %s of this DataFrame is gone or damaged: writing it again", known.location)
        registry.forget(known.location)  # Deleted or damaged behind our back: write it again.
    if run.reuse == "auto":
        kept = _find_kept(identity, options, parent)
        if kept is not None:
            if replaced is not None:
                registry.forget(replaced.location)
            registry.add(identity, options, parent, kept)
            return SparkDatasetConverter(kept.location, kept.manifest, reused=True)
    elif run.keep and identity.stable is None:
        log.warning("keep=True: the cache is kept, but no later process will reuse it: %s", identity.unstable)
    done = materialize(df, parent, options, identity, run)
    if replaced is not None:
        registry.forget(replaced.location)  # the converters made from it read it until this process ends
    registry.add(identity, options, parent, done)
    return SparkDatasetConverter(done.location, done.manifest, done.token)


def _find_kept(identity: DataFrameIdentity, options: MaterializeOptions, parent: Location) -> Materialized | None:
    """A cache an earlier process kept for this DataFrame (plan, sources, options), marked as used now."""
    key = reuse_key(identity, options)
    if key is None:
        log.info("reuse='auto': not looking for a kept cache, since %s; converting in this process", identity.unstable)
        return None
    found = find_kept(parent, key)  # which records this process as its reader
    if found is None:
        log.info("reuse='auto': no kept cache of this DataFrame under %s; converting", parent)
        return None
    entry, manifest = found
    log.info(
        "reuse='auto': reusing the cache %s kept by %s (made %s); it is not this process's to delete",
        entry.location,
        entry.owner,
        entry.created_at,
    )
    return Materialized(entry.location, manifest)


def _note_narrowed_floats(manifest: Manifest, dtype: str | None) -> None:
    """Logs the float64 columns of a dataset read in place that ``dtype='float32'`` (the default) narrows.

    Petastorm's default, kept for code that relies on it; but a user pointing at their own
    Parquet may not expect their doubles to arrive as float32, so the log says which and how
    to keep them.
    """
    if dtype != "float32":
        return
    narrowed = []
    for field in manifest.schema:
        leaf = field.type
        while pa.types.is_list(leaf) or pa.types.is_large_list(leaf) or pa.types.is_fixed_size_list(leaf):
            leaf = leaf.value_type
        if pa.types.is_float64(leaf):
            narrowed.append(field.name)
    if narrowed:
        log.info("reading the float64 columns %s as float32 (dtype='float32'); pass dtype=None to keep them", narrowed)


def _still_complete(known: Materialized) -> bool:
    """Whether a cache made earlier in this process is still there, whole.

    A damaged manifest counts as no cache: the cache is removed (it is ours) and written again,
    rather than every later conversion of the DataFrame failing on it.
    """
    try:
        return read_manifest(known.location) is not None
    except CorruptManifestError as error:
        warnings.warn(f"{error}; writing the cache again", stacklevel=3)
        if known.token is not None:
            with contextlib.suppress(Exception):
                delete_cache(known.location, known.token)
            owned_caches.discard(known.location)
        return False
