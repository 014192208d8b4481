"""Every user-facing parameter, validated in one place.

Each ``make_*`` method and :func:`~sparkfeed.make_spark_converter` builds one of the frozen
dataclasses below; their ``__post_init__`` is the only place where values are checked, so every
front end reports a bad value with the same words: the parameter, the value received and the
range allowed.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypedDict, TypeVar

import numpy as np

from sparkfeed.transform import TransformSpec

ShardPolicy = Literal["pad", "drop", "exact"]
SHARD_POLICIES: tuple[ShardPolicy, ...] = ("pad", "drop", "exact")
PoolType = Literal["thread", "process"]
POOL_TYPES: tuple[PoolType, ...] = ("thread", "process")
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
        if self.dtype is not None and self.dtype not in FLOAT_DTYPES:
            # Petastorm's words inside ours, for code and searches that know its message.
            raise ValueError(
                f"dtype={self.dtype!r} is not allowed: it must be None or one of {FLOAT_DTYPES} (dtype {self.dtype} "
                "is not supported: Spark writes the cache's floats as float32 or float64; cast to another "
                "precision in a transform_fn or in the training step)"
            )

    @property
    def codec(self) -> str:
        """The Parquet codec name Spark understands; ``None`` means uncompressed, as in Petastorm."""
        return (self.compression_codec or "uncompressed").lower()


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
    schema_fields: tuple[str, ...] | None = None
    transform_spec: TransformSpec | None = None
    reader_pool_type: PoolType = "thread"
    drop_last: bool = False
    verify_checksums: bool = True
    read_ahead_bytes: int | None = None

    def __post_init__(self) -> None:
        _store(self, "batch_size", _check_int("batch_size", self.batch_size, 1))
        for name, minimum in (
            ("num_epochs", 1),
            ("workers_count", 1),
            ("prefetch", 1),
            ("seed", 0),
            ("read_ahead_bytes", 0),
        ):
            _store(self, name, _check_int(name, getattr(self, name), minimum, optional=True))
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
        for name in ("shuffle_row_groups", "drop_last", "verify_checksums"):
            _store(self, name, _check_bool(name, getattr(self, name)))
        if self.schema_fields is not None:
            if isinstance(self.schema_fields, str) or not all(isinstance(f, str) for f in self.schema_fields):
                raise ValueError(
                    f"schema_fields={self.schema_fields!r} is not allowed: it must be a list of column names"
                )
            if not self.schema_fields:
                raise ValueError("schema_fields=[] is not allowed: name at least one column, or pass None for all")
        if self.transform_spec is not None and not isinstance(self.transform_spec, TransformSpec):
            raise ValueError(
                f"transform_spec={self.transform_spec!r} is not allowed: it must be a sparkfeed.TransformSpec"
            )

    @property
    def workers(self) -> int:
        """Reader workers: pyarrow decodes with the GIL released, so one thread per core pays off."""
        return self.workers_count or min(4, os.cpu_count() or 1)

    @property
    def prefetch_pieces(self) -> int:
        """Row-group pieces in flight: enough to keep every worker busy, and a bound on memory."""
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
        prefetch: Row-group pieces read ahead (default: twice the threads); bounds memory. For
            ``make_tf_dataset``, the tf.data prefetch buffer instead (default AUTOTUNE).
        cur_shard: This shard's index, with ``shard_count``: shards split the rows.
        shard_count: Number of shards.
        shard_policy: ``pad`` (default): every shard yields the same number of rows, short shards
            repeating one row, so distributed ranks get equal batch counts; ``drop``: equal
            counts by leaving out at most one row per shard; ``exact``: every row in exactly
            one shard (inference), counts may differ by one row.
        seed: Seed of every shuffle; the same seed gives the same batches.
        shuffle_row_groups: Shuffle the order of row groups every epoch (default True).
        shuffling_queue_capacity: Also shuffle rows across windows of at least this many rows
            (at least one row group). None or 0: rows keep their order in a row group.
        schema_fields: Column names to read (default: all).
        transform_spec: A :class:`~sparkfeed.TransformSpec` run on each chunk of rows.
        transform_fn: Shorthand for ``TransformSpec(transform_fn)``.
        reader_pool_type: ``"thread"`` (default): workers are threads, best for reading, where
            pyarrow releases the GIL. ``"process"``: forked worker processes (spawned off Linux)
            read and transform, for transforms that hold the GIL, such as decoding many small
            images with Pillow; each chunk is written once to shared memory (``/dev/shm``).
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
    """

    prefetch: int | None
    cur_shard: int | None
    shard_count: int | None
    shard_policy: ShardPolicy
    seed: int | None
    shuffle_row_groups: bool
    shuffling_queue_capacity: int | None
    schema_fields: Sequence[str] | None
    transform_spec: TransformSpec | None
    transform_fn: Callable[[Any], Any] | None
    reader_pool_type: PoolType
    drop_last: bool
    verify_checksums: bool
    read_ahead_bytes: int | None


def reader_options(
    *,
    transform_fn: Callable[..., Any] | None = None,
    transform_spec: TransformSpec | None = None,
    schema_fields: Sequence[str] | None = None,
    **kwargs: Any,
) -> ReaderOptions:
    """Builds :class:`ReaderOptions`, folding the ``transform_fn`` shorthand into a spec."""
    if transform_fn is not None:
        if transform_spec is not None:
            raise ValueError("give transform_fn or transform_spec, not both")
        if not callable(transform_fn):
            raise ValueError(f"transform_fn={transform_fn!r} is not allowed: it must be callable")
        transform_spec = TransformSpec(transform_fn)
    fields = (
        None if schema_fields is None else (schema_fields if isinstance(schema_fields, str) else tuple(schema_fields))
    )
    return ReaderOptions(transform_spec=transform_spec, schema_fields=fields, **kwargs)  # type: ignore[arg-type]


PETASTORM_ONLY = {
    "data_loader_fn": "sparkfeed's loader is already batched (as BatchedDataLoader): drop it",
    "shard_seed": "shards split rows in order, and seed shuffles within them: drop it",
    "results_queue_size": "prefetch bounds what is read ahead",
    "cache_type": "the converter's Parquet cache is the only cache",
    "hdfs_driver": "Arrow's filesystems read the cache URL",
}
"""Petastorm arguments without a sparkfeed counterpart, and what to do instead."""


def known_keywords(fn: _F) -> _F:
    """Turns Python's terse unexpected-keyword error into one that lists what is accepted.

    Petastorm users pass reader arguments through ``**kwargs``; a typo there used to vanish.
    Here a wrong name says which names would have worked: the function's own parameters and,
    for ``**kwargs: Unpack[ReaderArgs]``, the keys of that TypedDict.
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
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            hints = "".join(f"; {name}: {PETASTORM_ONLY[name]}" for name in unknown if name in PETASTORM_ONLY)
            raise TypeError(
                f"{fn.__qualname__}() got unexpected keyword argument(s) {unknown}{hints}; "
                f"accepted keywords: {', '.join(accepted)}"
            )
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
