"""Every user-facing parameter, validated in one place.

Each ``make_*`` method and :func:`~sparkfeed.make_spark_converter` builds one of the frozen
dataclasses below; their ``__post_init__`` is the only place where values are checked, so every
front end reports a bad value with the same words: the parameter, the value received and the
range allowed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypedDict, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sparkfeed.distributed import AUTO, check_rank_variables, resolve_shards
from sparkfeed.sequence import Sequence as SequenceSpec
from sparkfeed.sequence import check_sequence
from sparkfeed.transform import TransformSpec, from_petastorm

ShardPolicy = Literal["pad", "drop", "exact"]
SHARD_POLICIES: tuple[ShardPolicy, ...] = ("pad", "drop", "exact")
Reuse = Literal["process", "auto"]
REUSE: tuple[Reuse, ...] = ("process", "auto")
PoolType = Literal["thread", "process", "dummy"]
POOL_TYPES: tuple[PoolType, ...] = ("thread", "process", "dummy")
COMPRESSION_CODECS = ("uncompressed", "snappy", "zstd", "lz4", "gzip")
FLOAT_DTYPES = ("float32", "float64")

_F = TypeVar("_F", bound=Callable[..., Any])


def _check_int(name: str, value: object, minimum: int, *, optional: bool = False) -> int | None:
    """The value as a plain Python int (None when optional and absent), or a ValueError naming the range.

    NumPy integers (``np.int64(32)`` from an array or a config loaded with NumPy) are as good as
    Python ones; they are returned as ``int`` so that state dicts, cache keys and JSON stay plain.
    Bools are refused, NumPy's too: ``True`` as a batch size is a mistake, not a 1.
    """
    if value is None and optional:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum:
        return int(value)
    allowed = f"an integer >= {minimum}" + (" or None" if optional else "")
    raise ValueError(f"{name}={value!r} is not allowed: it must be {allowed}")


def _check_bool(name: str, value: object) -> bool:
    """The value as a Python bool: ``bool`` or ``np.bool_``; not 0 or 1, which may be a misplaced argument."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}={value!r} is not allowed: it must be a bool")
    return bool(value)


def _check_filters(filters: object) -> pc.Expression | None:
    """Petastorm's (pyarrow's) ``filters`` as one Arrow expression; None stays None.

    Both of pyarrow's forms are taken: a ``pyarrow.compute.Expression``, or the DNF list of
    ``(column, op, value)`` tuples that ``pq.read_table(filters=...)`` and Petastorm take (a list
    of such lists is an OR of ANDs). Whether the columns exist is checked against the dataset
    by the reader.
    """
    if filters is None or isinstance(filters, pc.Expression):
        return filters
    allowed = (
        "it must be a pyarrow.compute.Expression, or pyarrow's list of (column, op, value) tuples "
        "(a list of such lists for OR), such as [('label', '=', 3), ('weight', '>', 0.5)]"
    )
    if isinstance(filters, str | bytes) or not isinstance(filters, Sequence) or not filters:
        raise ValueError(f"filters={filters!r} is not allowed: {allowed}")
    try:
        return pq.filters_to_expression([_sorted_sets(item) for item in filters])
    except OverflowError as error:  # an int beyond 64 bits, which no Parquet column holds
        raise ValueError(
            f"filters={filters!r} is not allowed: a value is beyond the 64-bit integers a column can hold ({error}); "
            "compare with the largest or smallest value of the column's type, or with a float"
        ) from error
    except (ValueError, TypeError, pa.ArrowException) as error:
        raise ValueError(f"filters={filters!r} is not allowed ({error}): {allowed}") from error


def _sorted_sets(item: Any) -> Any:
    """A DNF term with the set of an ``in`` test sorted, a list of terms term by term.

    The expression's text goes into the reader state, and a set of strings iterates in another
    order in every process (hash randomization): sorted, the same filters read the same.
    """
    if isinstance(item, list):
        return [_sorted_sets(term) for term in item]
    if isinstance(item, tuple) and len(item) == 3 and isinstance(item[2], set | frozenset):
        try:
            return (item[0], item[1], sorted(item[2]))
        except TypeError:  # values without an order: kept as they are
            return item
    return item


TF_AUTOTUNE = -1
"""``tf.data.AUTOTUNE`` (``tf.data.experimental.AUTOTUNE``), whose value TensorFlow has kept since 1.14."""


def check_tf_prefetch(prefetch: object) -> int | None:
    """``make_tf_dataset``'s ``prefetch``: the tf.data buffer in batches, ``tf.data.AUTOTUNE``, or None (AUTOTUNE).

    Petastorm handed it to ``dataset.prefetch`` as it was, so ``tf.data.AUTOTUNE`` (-1) is
    accepted as TensorFlow takes it; other negative numbers are refused, as TensorFlow would.
    """
    if prefetch is None:
        return None
    if isinstance(prefetch, (int, np.integer)) and not isinstance(prefetch, bool) and prefetch >= TF_AUTOTUNE:
        return int(prefetch)
    raise ValueError(
        f"prefetch={prefetch!r} is not allowed: it must be an integer >= 0, tf.data.AUTOTUNE (-1), or None (AUTOTUNE)"
    )


def check_placement(jax: Any, device: object, sharding: object) -> None:
    """``make_jax_iterator``'s ``device`` and ``sharding``: at most one, each of its JAX type.

    Checked where the iterator is made: anything else reached ``jax.device_put`` in a reader
    thread, and failed only once iterated. ``jax`` is the module, imported by the caller.
    """
    if device is not None and sharding is not None:
        raise ValueError("give device or sharding, not both")
    if device is not None and not isinstance(device, jax.Device | jax.sharding.Sharding):
        raise ValueError(
            f"device={device!r} is not allowed: it must be a jax.Device, such as jax.devices()[0] "
            "(jax.devices('cpu')[0] for a platform by name), or None for JAX's default device"
        )
    if sharding is not None and not isinstance(sharding, jax.sharding.Sharding):
        raise ValueError(
            f"sharding={sharding!r} is not allowed: it must be a jax.sharding.Sharding, such as "
            "NamedSharding(mesh, PartitionSpec('batch')), or None"
        )


def is_field_predicate(predicate: object) -> bool:
    """Whether a predicate is Petastorm-style, with ``get_fields()`` and ``do_include(frame)``."""
    return callable(getattr(predicate, "get_fields", None)) and callable(getattr(predicate, "do_include", None))


def _store(options: object, name: str, value: object) -> None:
    """Sets a field of a frozen dataclass from its own ``__post_init__``: values are normalised there."""
    object.__setattr__(options, name, value)


@dataclasses.dataclass(frozen=True)
class MaterializeOptions:
    """How a DataFrame is written into the cache. Part of the cache key."""

    row_group_size_bytes: int = 32 * 1024 * 1024
    compression_codec: str | None = None
    dtype: str | None = "float32"

    def __post_init__(self) -> None:
        _store(self, "row_group_size_bytes", _check_int("parquet_row_group_size_bytes", self.row_group_size_bytes, 1))
        codec = self.compression_codec
        if codec is not None and (not isinstance(codec, str) or codec.lower() not in COMPRESSION_CODECS):
            raise ValueError(
                f"compression_codec={codec!r} is not allowed: it must be None or one of {COMPRESSION_CODECS}"
            )
        # One spelling per codec, so the cache key compares what is written: None and 'uncompressed' (as
        # Petastorm, which turns None into 'uncompressed' before comparing caches), 'SNAPPY' and 'snappy'.
        _store(self, "compression_codec", None if codec is None or codec.lower() == "uncompressed" else codec.lower())
        dtype = self.dtype
        if isinstance(dtype, np.dtype):
            # np.dtype("float32") equals "float32", so Petastorm took it; it is stored by its name, which
            # the manifest (JSON) and the cache key hold, rather than failing there.
            dtype = dtype.name
        elif isinstance(dtype, type) and issubclass(dtype, np.generic):
            # np.float32 too; an abstract type (np.floating) stays as it is, and is refused: NumPy 1
            # makes it float64 (with a DeprecationWarning), NumPy 2 refuses it.
            with warnings.catch_warnings(), contextlib.suppress(TypeError):
                warnings.simplefilter("ignore", DeprecationWarning)
                concrete = np.dtype(dtype)
                if concrete.type is dtype:
                    dtype = concrete.name
        if dtype is not None and (not isinstance(dtype, str) or dtype not in FLOAT_DTYPES):
            # Petastorm's words inside ours, for code and searches that know its message.
            raise ValueError(
                f"dtype={self.dtype!r} is not allowed: it must be None or one of {FLOAT_DTYPES} (dtype {self.dtype} "
                "is not supported: Spark writes the cache's floats as float32 or float64; cast to another "
                "precision in a transform_fn or in the training step)"
            )
        _store(self, "dtype", None if dtype is None else str(dtype))

    @property
    def codec(self) -> str:
        """The Parquet codec name Spark understands; ``None`` means uncompressed, as in Petastorm."""
        return (self.compression_codec or "uncompressed").lower()


@dataclasses.dataclass(frozen=True)
class ConversionRun:
    """How one ``make_spark_converter`` call runs, as opposed to what it writes: never part of the cache key."""

    progress: bool = False
    reuse: Reuse = "process"
    keep: bool = False

    def __post_init__(self) -> None:
        _store(self, "progress", _check_bool("progress", self.progress))
        _store(self, "keep", _check_bool("keep", self.keep))
        if self.reuse not in REUSE:
            raise ValueError(f"reuse={self.reuse!r} is not allowed: it must be one of {REUSE}")


@dataclasses.dataclass(frozen=True)
class ReaderOptions:
    """What to iterate and how: the arguments shared by every ``make_*`` loader."""

    batch_size: int = 32
    num_epochs: int | None = None
    workers_count: int | None = None
    prefetch: int | None = None
    cur_shard: int | None = None
    shard_count: int | None = None
    seed: int | None = None
    shuffle_row_groups: bool = True
    shuffling_queue_capacity: int | None = None
    shard_policy: ShardPolicy = "pad"
    explicit_shard_policy: bool = dataclasses.field(default=True, repr=False)
    """Whether the caller chose ``shard_policy``: the default's repeated rows warn (see :func:`reader_options`)."""
    schema_fields: tuple[str, ...] | None = None
    transform_spec: TransformSpec | None = None
    reader_pool_type: PoolType = "thread"
    drop_last: bool = False
    verify_checksums: bool = True
    read_ahead_bytes: int | None = None
    shuffle_rows: bool = False
    shard_seed: int | None = None
    progress: bool = False
    sequence: Mapping[str, SequenceSpec] | None = dataclasses.field(default=None, compare=False)
    filters: pc.Expression | None = dataclasses.field(default=None, compare=False)
    predicate: Any = dataclasses.field(default=None, compare=False)
    storage_options: Mapping[str, Any] | None = dataclasses.field(default=None, compare=False)
    filesystem: Any = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        _store(self, "batch_size", _check_int("batch_size", self.batch_size, 1))
        for name, minimum in (
            ("num_epochs", 1),
            ("workers_count", 1),
            ("prefetch", 1),
            ("seed", 0),
            ("shard_seed", 0),
            ("read_ahead_bytes", 0),
        ):
            _store(self, name, _check_int(name, getattr(self, name), minimum, optional=True))
        shards: tuple[object, object] = (self.cur_shard, self.shard_count)
        if AUTO in shards:
            raise ValueError(
                f"cur_shard={self.cur_shard!r}, shard_count={self.shard_count!r}: 'auto' is resolved by the make_* "
                "loaders (sparkfeed.options.reader_options); ReaderOptions takes the integers"
            )
        if (self.cur_shard is None) != (self.shard_count is None):
            raise ValueError(f"cur_shard={self.cur_shard!r} and shard_count={self.shard_count!r}: give both or neither")
        if self.shard_count is not None:
            _store(self, "shard_count", _check_int("shard_count", self.shard_count, 1))
            try:
                cur_shard = _check_int("cur_shard", self.cur_shard, 0)
            except ValueError:
                cur_shard = None
            if cur_shard is None or cur_shard >= self.shard_count:
                raise ValueError(
                    f"cur_shard={self.cur_shard!r} is not allowed: it must be an integer in "
                    f"[0, {self.shard_count - 1}] for shard_count={self.shard_count}"
                )
            _store(self, "cur_shard", cur_shard)
        _store(
            self,
            "shuffling_queue_capacity",
            _check_int("shuffling_queue_capacity", self.shuffling_queue_capacity, 0, optional=True),
        )
        if self.shard_policy not in SHARD_POLICIES:
            raise ValueError(f"shard_policy={self.shard_policy!r} is not allowed: it must be one of {SHARD_POLICIES}")
        if self.reader_pool_type not in POOL_TYPES:
            raise ValueError(
                f"reader_pool_type={self.reader_pool_type!r} is not allowed: it must be one of {POOL_TYPES}"
            )
        for name in ("shuffle_row_groups", "drop_last", "verify_checksums", "shuffle_rows", "progress"):
            _store(self, name, _check_bool(name, getattr(self, name)))
        _store(self, "filters", _check_filters(self.filters))
        _store(self, "sequence", check_sequence(self.sequence))
        if self.predicate is not None and not (is_field_predicate(self.predicate) or callable(self.predicate)):
            raise ValueError(
                f"predicate={self.predicate!r} is not allowed: it must be a function of a pandas DataFrame that "
                "returns one bool per row, or an object with get_fields() and do_include(frame), such as "
                "sparkfeed.predicates.in_lambda(['label'], lambda label: label > 3)"
            )
        if self.storage_options is not None and not isinstance(self.storage_options, Mapping):
            raise ValueError(
                f"storage_options={self.storage_options!r} is not allowed: it must be a dict (or None), and the "
                "same as make_spark_converter was given"
            )
        if self.schema_fields is not None:
            if isinstance(self.schema_fields, str) or not all(isinstance(f, str) for f in self.schema_fields):
                raise ValueError(
                    f"schema_fields={self.schema_fields!r} is not allowed: it must be a list of column names"
                )
            if not self.schema_fields:
                raise ValueError("schema_fields=[] is not allowed: name at least one column, or pass None for all")
            if isinstance(self.schema_fields, set | frozenset):
                # A set of strings iterates in the order of the process's string hashes: sorted, the
                # columns (which a saved state records) are the same in the process that resumes it.
                _store(self, "schema_fields", tuple(sorted(self.schema_fields)))
        _store(self, "transform_spec", from_petastorm(self.transform_spec))  # Petastorm's own class: the same spec
        if self.transform_spec is not None and not isinstance(self.transform_spec, TransformSpec):
            raise ValueError(
                f"transform_spec={self.transform_spec!r} is not allowed: it must be a sparkfeed.TransformSpec "
                "(from sparkfeed import TransformSpec), or Petastorm's petastorm.TransformSpec"
            )

    @property
    def workers(self) -> int:
        """Reader workers: pyarrow decodes with the GIL released, so one thread per core pays off.

        One for ``dummy``, which reads in the caller's thread.
        """
        if self.reader_pool_type == "dummy":
            return 1
        return self.workers_count or min(4, os.cpu_count() or 1)

    @property
    def shuffle_window(self) -> int:
        """Minimum rows of a shuffle window; 0 keeps rows in order.

        ``shuffling_queue_capacity`` sets it; Petastorm's ``shuffle_rows=True`` (shuffle inside
        each row group) asks for at least 1, the smallest window, which joins two row groups
        (see :data:`sparkfeed.reader.plan.MIN_WINDOW_PIECES`): every row group's rows come out
        shuffled, as in Petastorm, and mixed with one other's, for one row group more in memory.
        """
        return max(self.shuffling_queue_capacity or 0, 1 if self.shuffle_rows else 0)

    @property
    def filters_rows(self) -> bool:
        """Whether ``filters`` or a ``predicate`` select rows at read time."""
        return self.filters is not None or self.predicate is not None

    @property
    def prefetch_pieces(self) -> int:
        """Row groups in flight: enough to keep every worker busy, and a bound on memory.

        A shuffle window weighs as many as it joins (see :class:`~sparkfeed.reader.pool.OrderedPool`).
        """
        return self.prefetch or 2 * self.workers

    @property
    def shard(self) -> tuple[int, int]:
        """``(cur_shard, shard_count)``, with ``(0, 1)`` when the reader is not sharded."""
        if self.shard_count is None or self.cur_shard is None:
            return 0, 1
        return self.cur_shard, self.shard_count


class ReaderArgs(TypedDict, total=False):
    """The keyword arguments every ``make_*`` loader accepts besides batch size, epochs, workers.

    Attributes:
        prefetch: Row groups read ahead; bounds memory. A shuffle window counts as its row
            groups, and one window is always read ahead. None: twice the threads, row groups
            or, with ``shuffling_queue_capacity``, windows. For ``make_tf_dataset``, the tf.data
            prefetch buffer instead (default AUTOTUNE).
        cur_shard: This shard's index, with ``shard_count``: shards split the rows. ``"auto"``
            (with ``shard_count="auto"``): this process's rank, read from an initialized
            ``torch.distributed`` group, else the Horovod/Open MPI/PMI variables
            (``HOROVOD_RANK``, ``OMPI_COMM_WORLD_RANK``, ``PMI_RANK``), else Spark's
            ``BarrierTaskContext`` in a barrier task; unsharded where none is found. As in
            Petastorm, explicit values that disagree with those variables warn.
        shard_count: Number of shards, or ``"auto"``: the size of the same job.
        shard_seed: Petastorm's seed of which row groups go to which shard. With it, row groups
            are dealt to the shards in an order drawn from it (the same on every rank and every
            epoch) rather than in file order, so a dataset sorted by a column does not give each
            rank one range of it; rows are still split evenly, each row in one shard. None
            (default): contiguous ranges in file order. No effect without ``shard_count``.
        shard_policy: ``pad`` (default): every shard yields the same number of rows, short shards
            repeating one row, so distributed ranks get equal batch counts; ``drop``: equal
            counts by leaving out at most one row per shard; ``exact``: every row in exactly
            one shard (inference), counts may differ by one row.
        seed: Seed of every shuffle; the same seed gives the same batches.
        shuffle_row_groups: Shuffle the order of row groups every epoch (default True).
        shuffling_queue_capacity: Also shuffle rows across windows of at least this many rows
            (and at least two row groups). None or 0: rows keep their order in a row group.
        shuffle_rows: Petastorm's flag to shuffle the rows inside each row group: the smallest
            shuffle window, two row groups (see ``ReaderOptions.shuffle_window``); with a larger
            ``shuffling_queue_capacity`` that one applies.
        schema_fields: Columns to read (default: all): names, or regular expressions matched
            against whole names as in Petastorm (``"feature_.*"``). An entry that is a column's
            name selects that column only, even where it holds regex characters (``"a.b"``);
            columns come in the order of the entries that select them; an entry that matches
            nothing is an error naming it. A set's entries are taken in sorted order.
        filters: Rows to read, as pyarrow's ``filters``: a ``pyarrow.compute.Expression``
            (``pc.field("label") == 3``) or the list of ``(column, op, value)`` tuples
            ``pq.read_table`` takes (a list of lists: OR of ANDs). Row groups whose Parquet
            statistics rule every row out are never read; the other rows are filtered as they
            are read, before any transform. Columns may be outside ``schema_fields``.
        predicate: Rows to read, decided in pandas, after ``filters`` and before the transform:
            a function of a DataFrame of the selected columns returning one bool per row
            (a boolean Series or array), or Petastorm's ``PredicateBase`` interface: an object
            whose ``get_fields()`` names the columns its ``do_include(frame)`` receives (see
            :mod:`sparkfeed.predicates`). Filters and predicates make ``len()`` an upper bound,
            as a transform that drops rows does, and the shards' row counts unequal: for equal
            batch counts across DDP/Horovod ranks, filter the DataFrame before
            ``make_spark_converter`` instead. Resuming stays exact.
        transform_spec: A :class:`~sparkfeed.TransformSpec` run on each chunk of rows.
        transform_fn: Shorthand for ``TransformSpec(transform_fn)``.
        reader_pool_type: ``"thread"`` (default): workers are threads, best for reading, where
            pyarrow releases the GIL. ``"process"``: forked worker processes (spawned off Linux)
            read and transform, for transforms that hold the GIL, such as decoding many small
            images with Pillow; each chunk is written once to shared memory (``/dev/shm``).
            ``"dummy"``: no workers, every row group read in the thread that iterates (as in
            Petastorm), for debugging a transform or where threads are not wanted.
        drop_last: Leave out each epoch's last batch when it is short (as torch's ``drop_last``
            and tf.data's ``drop_remainder``): every batch then has one shape, which jitted
            steps compile once for and a sharding can always split.
        verify_checksums: Check every Parquet page's CRC as it is read (default True): a flipped
            bit on disk or in transit is then an error naming the file, not a wrong number. It
            costs decode speed on uncompressed tabular caches (see the benchmark's checksum
            case); turn it off only for data whose storage verifies itself.
        read_ahead_bytes: On object stores and HDFS, the bytes of a file's upcoming row groups
            fetched in one request when the plan reads them one after another (no row-group
            shuffle), and a hard bound on what is held so (default 128 MiB). A span that does not
            fit is cut short, down to one row group. 0: every row group alone, its columns
            pre-buffered by pyarrow. Local files are memory-mapped and ignore it.
        storage_options: Accepted as in Petastorm when it is what the converter was made with
            (or None): the converter already knows how to reach its cache. Anything else is
            refused: pass it to ``make_spark_converter``.
        filesystem: The same, for the filesystem.
        progress: Show a tqdm bar per epoch on stderr (default False): batches done of the
            epoch's total (unknown with ``filters`` or a ``predicate``), and rows/s. Redrawn at
            most every 0.1 s, so it costs the loop nothing measurable; it changes neither the
            batches nor the resume state.
        sequence: Columns of arrays of varying length to batch as sequences, and how: a dict of
            column name -> ``"pad"``, ``"bucket"``, ``"ragged"``, or a :class:`sparkfeed.Sequence`
            (or a dict of its fields) for the options: ``max_length`` (truncate),
            ``pad_to_multiple_of``, ``pad_value``, ``mask``, ``buckets``, and ``"pack"`` with
            ``seq_len``. ``pad``: ``(batch, longest row of the batch)`` arrays with
            ``<column>_lengths``; ``bucket``: batches of one length bucket each, padded to its
            bound; ``pack``: rows end to end in ``(batch, seq_len)`` rows with
            ``<column>_segment_ids`` and ``<column>_position_ids``; ``ragged``: a
            ``tf.RaggedTensor`` in TF, values and lengths elsewhere. Made from Arrow's offsets,
            with no Python step per row; resuming, sharding and shuffling stay exact (see
            docs/sequences.md). None (default): such columns arrive as object arrays of
            arrays (lists of tensors in torch) and TF refuses them.
    """

    prefetch: int | None
    cur_shard: int | Literal["auto"] | None
    shard_count: int | Literal["auto"] | None
    shard_seed: int | None
    shard_policy: ShardPolicy
    seed: int | None
    shuffle_row_groups: bool
    shuffling_queue_capacity: int | None
    shuffle_rows: bool
    schema_fields: Sequence[str] | None
    filters: pc.Expression | Sequence[Any] | None
    predicate: Any
    transform_spec: TransformSpec | None
    transform_fn: Callable[[Any], Any] | None
    reader_pool_type: PoolType
    drop_last: bool
    verify_checksums: bool
    read_ahead_bytes: int | None
    storage_options: Mapping[str, Any] | None
    filesystem: Any
    progress: bool
    sequence: Mapping[str, str | SequenceSpec | Mapping[str, Any]] | None


def reader_options(
    *,
    transform_fn: Callable[..., Any] | None = None,
    transform_spec: TransformSpec | None = None,
    schema_fields: Sequence[str] | None = None,
    cur_shard: int | str | None = None,
    shard_count: int | str | None = None,
    **kwargs: Any,
) -> ReaderOptions:
    """Builds :class:`ReaderOptions`: folds the ``transform_fn`` shorthand into a spec, resolves ``"auto"`` shards.

    This is where a loader learns its shard, so it is also where, as in Petastorm, a shard that
    disagrees with the Horovod/MPI/PMI rank variables warns (see :mod:`sparkfeed.distributed`).
    It also records whether ``shard_policy`` was given: Petastorm's shards of one epoch held
    every row once, so its inference idiom (``cur_shard=i, shard_count=n, num_epochs=1``) would
    count the rows that the default ``pad`` repeats; the reader warns where one is repeated.
    """
    if transform_fn is not None:
        if transform_spec is not None:
            raise ValueError("give transform_fn or transform_spec, not both")
        if not callable(transform_fn):
            raise ValueError(f"transform_fn={transform_fn!r} is not allowed: it must be callable")
        transform_spec = TransformSpec(transform_fn)
    fields: object = schema_fields
    if schema_fields is not None and not isinstance(schema_fields, str):
        named = [_unischema_field_name(entry) for entry in schema_fields]
        fields = set(named) if isinstance(schema_fields, set | frozenset) else tuple(named)  # a set: sorted later
    shard, count = resolve_shards(cur_shard, shard_count)
    options = ReaderOptions(
        transform_spec=transform_spec,
        schema_fields=fields,  # type: ignore[arg-type]
        cur_shard=shard,  # type: ignore[arg-type]
        shard_count=count,  # type: ignore[arg-type]
        explicit_shard_policy="shard_policy" in kwargs,
        **kwargs,
    )
    check_rank_variables(options.cur_shard, options.shard_count)
    return options


UNISCHEMA_FIELD = ("petastorm.unischema", "UnischemaField")
"""Module and name of Petastorm's ``UnischemaField``, recognised without importing Petastorm."""


def _unischema_field_name(entry: object) -> object:
    """A Petastorm ``UnischemaField`` in ``schema_fields`` as its name; any other entry as it is.

    ``make_batch_reader`` took fields beside regular expressions and selected each by its exact
    name, as a name selects here (see :func:`sparkfeed.reader.selection.select_columns`). The
    field is recognised by its class's module and name, so Petastorm need not be importable;
    a plain tuple stays refused, since nothing says which of its items is a name.
    """
    kind = type(entry)
    if (getattr(kind, "__module__", None), getattr(kind, "__name__", None)) == UNISCHEMA_FIELD:
        return getattr(entry, "name", entry)
    return entry


PETASTORM_ONLY = {
    "data_loader_fn": "sparkfeed's loader is already batched (as BatchedDataLoader): drop it",
    "results_queue_size": "prefetch bounds what is read ahead",
    "cache_type": "the converter's Parquet cache is the only cache: drop it",
    "cache_location": "the converter's Parquet cache is the only cache: drop it",
    "cache_size_limit": "the converter's Parquet cache is the only cache: drop it",
    "cache_row_size_estimate": "the converter's Parquet cache is the only cache: drop it",
    "cache_extra_settings": "the converter's Parquet cache is the only cache: drop it",
    "hdfs_driver": "Arrow's filesystems read the cache URL",
    "shuffle_row_drop_partitions": "shuffle rows across row groups with shuffling_queue_capacity instead",
    "rowgroup_selector": "select rows with filters, which skip the row groups their statistics rule out",
    "zmq_copy_buffers": "process workers hand chunks over through shared memory: drop it",
    "pyarrow_serialize": "process workers hand chunks over through shared memory: drop it",
    "convert_early_to_numpy": "the workers already convert to NumPy: drop it",
}
"""Petastorm arguments without a sparkfeed counterpart, and what to do instead."""

PETASTORM_DEFAULTS: dict[str, object] = {
    "results_queue_size": 50,
    "cache_type": "null",
    "cache_location": None,
    "cache_size_limit": None,
    "cache_row_size_estimate": None,
    "cache_extra_settings": None,
    "hdfs_driver": "libhdfs3",
    "shuffle_row_drop_partitions": 1,
    "rowgroup_selector": None,
    "zmq_copy_buffers": True,
    "pyarrow_serialize": False,
    "convert_early_to_numpy": False,
}
"""Petastorm's defaults of those of its reader arguments that sparkfeed has no use for.

Code that spells one out at its default asks for nothing sparkfeed does not do, so the
argument is accepted and ignored: changing the import is then enough. Any other value asks
for a behaviour sparkfeed lacks and is refused with the advice of :data:`PETASTORM_ONLY`.
"""


def _petastorm_default(name: str, value: object) -> bool:
    """Whether ``value`` is Petastorm's default of ``name`` (by type and value: ``True`` is not ``1``)."""
    if name not in PETASTORM_DEFAULTS:
        return False
    default = PETASTORM_DEFAULTS[name]
    return value is default if default is None else type(value) is type(default) and value == default


def known_keywords(fn: _F) -> _F:
    """Turns Python's terse unexpected-keyword error into one that lists what is accepted.

    Petastorm users pass reader arguments through ``**kwargs``; a typo there used to vanish.
    Here a wrong name says which names would have worked: the function's own parameters and,
    for ``**kwargs: Unpack[ReaderArgs]``, the keys of that TypedDict. Petastorm's arguments
    that sparkfeed has no use for are ignored at their Petastorm default (see
    :data:`PETASTORM_DEFAULTS`) and refused otherwise.
    """
    signature = inspect.signature(fn)
    accepted = sorted(
        name
        for name, p in signature.parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name != "self"
    )
    if any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
        accepted = sorted({*accepted, *ReaderArgs.__annotations__})

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ignored = [name for name in kwargs if name not in accepted and _petastorm_default(name, kwargs[name])]
        for name in ignored:
            del kwargs[name]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            # Python's own phrase, once per name, so that code matching the standard message still matches.
            got = " and ".join(f"an unexpected keyword argument {name!r}" for name in unknown)
            hints = "".join(
                f"; {name}: {PETASTORM_ONLY[name]}"
                + (
                    f" (only Petastorm's default, {PETASTORM_DEFAULTS[name]!r}, is accepted)"
                    if name in PETASTORM_DEFAULTS
                    else ""
                )
                for name in unknown
                if name in PETASTORM_ONLY
            )
            raise TypeError(f"{fn.__qualname__}() got {got}{hints}; accepted keywords: {', '.join(accepted)}")
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


MixStop = Literal["first_exhausted", "never"]
MIX_STOPS: tuple[MixStop, ...] = ("first_exhausted", "never")
MixGranularity = Literal["row", "batch"]
MIX_GRANULARITIES: tuple[MixGranularity, ...] = ("row", "batch")


@dataclasses.dataclass(frozen=True)
class MixOptions:
    """How :func:`sparkfeed.mix` mixes its sources, validated once; the loaders' arguments are :class:`ReaderOptions`.

    Attributes:
        names: The sources' names, in order.
        weights: Each source's weight, in the same order: positive and finite; normalised to
            :attr:`probabilities`.
        seed: The seed of the per-batch draws; None: the loader's ``seed``, else one drawn.
        stop: ``"first_exhausted"`` or ``"never"`` (see :func:`sparkfeed.mix`).
        rows_per_epoch: With ``stop="never"``, rows per epoch of the mixture; None: the sum of the
            sources' rows (their shard's).
        source_column: Name of a column added to every batch: the index in :attr:`names` of each
            row's source. None: no such column.
        granularity: What the weights draw a source for: ``"row"`` (each batch mixes the sources)
            or ``"batch"`` (each batch comes whole from one source).
    """

    names: tuple[str, ...]
    weights: tuple[float, ...]
    seed: int | None = None
    stop: MixStop = "first_exhausted"
    rows_per_epoch: int | None = None
    source_column: str | None = None
    granularity: MixGranularity = "row"

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("mix needs at least one converter: pass {'name': converter, ...}")
        for name in self.names:
            if not isinstance(name, str) or not name:
                raise ValueError(f"mix: the source name {name!r} is not allowed: names are non-empty strings")
        if len(self.weights) != len(self.names):
            raise ValueError(f"mix: {len(self.weights)} weights for {len(self.names)} sources")
        weights = []
        for name, weight in zip(self.names, self.weights, strict=True):
            real = isinstance(weight, (int, float, np.integer, np.floating)) and not isinstance(
                weight, (bool, np.bool_)
            )
            if not real or not np.isfinite(weight) or weight <= 0:
                raise ValueError(
                    f"mix: weights[{name!r}]={weight!r} is not allowed: every weight must be a finite number > 0 "
                    "(leave a source out of the mix rather than give it weight 0)"
                )
            weights.append(float(weight))
        _store(self, "weights", tuple(weights))
        _store(self, "seed", _check_int("seed", self.seed, 0, optional=True))
        if self.stop not in MIX_STOPS:
            raise ValueError(f"stop={self.stop!r} is not allowed: it must be one of {MIX_STOPS}")
        _store(self, "rows_per_epoch", _check_int("rows_per_epoch", self.rows_per_epoch, 1, optional=True))
        if self.rows_per_epoch is not None and self.stop != "never":
            raise ValueError(
                f"rows_per_epoch={self.rows_per_epoch} is not allowed with stop={self.stop!r}: an epoch that stops at "
                "its first exhausted source has the length the draws give it; pass stop='never' for a fixed length"
            )
        if self.source_column is not None and (not isinstance(self.source_column, str) or not self.source_column):
            raise ValueError(f"source_column={self.source_column!r} is not allowed: it must be a column name or None")
        if self.granularity not in MIX_GRANULARITIES:
            raise ValueError(
                f"granularity={self.granularity!r} is not allowed: it must be one of {MIX_GRANULARITIES} (what the "
                "weights draw a source for: each row, or each whole batch)"
            )

    @property
    def probabilities(self) -> tuple[float, ...]:
        """The weights normalised to sum to 1: each source's expected share of a batch's rows.

        Scaled by the largest first: finite weights near the largest float (``1e308``) would
        overflow their sum.
        """
        largest = max(self.weights)
        scaled = [weight / largest for weight in self.weights]
        total = math.fsum(scaled)
        return tuple(weight / total for weight in scaled)
