"""What every framework loader shares: a batch source underneath, its length, state and lifetime.

The loaders of a converter and those of a mixture of converters are made here, by the same
code, from a factory of batch sources (:class:`BatchesFactory`): a converter's makes a
:class:`~sparkfeed.reader.Reader`, a mixture's a :class:`~sparkfeed.reader.mixer.Mixer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

from sparkfeed.options import reader_options
from sparkfeed.reader.batch import NUMPY, BatchFormat, Columns
from sparkfeed.types import ColumnSpec

if TYPE_CHECKING:
    from sparkfeed.jax import JaxIterator
    from sparkfeed.reader.sequence import SequencePlan
    from sparkfeed.tf import TfDatasetContext
    from sparkfeed.torch import TorchDataLoader

C = TypeVar("C")
C_co = TypeVar("C_co", covariant=True)

DEFAULT_BATCH_SIZE = 32
"""Rows per batch when none is given, or None is (Petastorm's default, and its meaning of None)."""


class Batches(Protocol[C_co]):
    """What the adapters need of the stream of batches they wrap.

    A :class:`~sparkfeed.reader.Reader` of one cache is one; a
    :class:`~sparkfeed.reader.mixer.Mixer` of several is another: the adapters hold nothing
    that assumes which.
    """

    def __iter__(self) -> Iterator[C_co]: ...

    def __len__(self) -> int: ...

    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch, as plain JSON-able data."""

    def load_state_dict(self, state: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
        """Continues exactly where a saved source of the same arguments stopped."""

    def close(self) -> None:
        """Ends the iteration and stops the reader threads; safe from any thread."""

    def stats(self) -> dict[str, Any]:
        """Whether the input is the bottleneck: counts, waits, rates (see :mod:`sparkfeed.reader.stats`)."""

    @property
    def columns(self) -> dict[str, ColumnSpec] | None:
        """What each column of a batch will be, known without reading; None when a transform decides."""

    @property
    def filters_rows(self) -> bool:
        """Whether filters, a predicate or a transform may change the row count, making lengths an estimate."""

    @property
    def sequence(self) -> SequencePlan | None:
        """How ``sequence=`` columns are batched; None without them."""

    def batch_count(self, batch_size: int, drop_last: bool) -> int | None:
        """Batches of ``batch_size`` rows the next iteration's epochs make; None when it has no end."""

    def show_progress_in(self, batch_size: int | None, drop_last: bool = False) -> None:
        """Counts the ``progress=True`` bar in batches of ``batch_size`` rows; None: no bar at all."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class ReaderLoader:
    """Base of the framework loaders: delegates length, resume state and closing to the batch source.

    A context manager: leaving the ``with`` block stops the reader threads. One iteration at a
    time, as the reader (whose position ``state_dict()`` saves): starting a second while one is
    unfinished raises a ``RuntimeError``; a finished, closed or dropped one does not count.
    """

    def __init__(self, reader: Batches[Any]) -> None:
        self._reader = reader

    def __len__(self) -> int:
        return len(self._reader)

    def state_dict(self) -> dict[str, Any]:
        """The reader's position; see :meth:`sparkfeed.reader.Reader.state_dict`."""
        return self._reader.state_dict()

    def load_state_dict(self, state: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
        """Continues from a saved position; see :meth:`sparkfeed.reader.Reader.load_state_dict`.

        Raises:
            ValueError: The state is malformed or belongs to another cache, loader or shard.
        """
        self._reader.load_state_dict(state)

    def stats(self) -> dict[str, Any]:
        """Whether the input is the bottleneck; see :meth:`sparkfeed.reader.Reader.stats`."""
        return self._reader.stats()

    def close(self) -> None:
        """Stops the reader threads."""
        self._reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class BatchesFactory(Protocol):
    """Makes the batch source of one loader from the user's arguments, validated where it is made.

    ``chunk_batches`` asks for chunks of that many whole batches of ``batch_size`` rows (only an
    epoch's last may be shorter), which the TF dataset cuts into batches itself: for a reader that
    is one batch of ``batch_size * chunk_batches`` rows; a mixer draws each batch's rows per batch
    of ``batch_size`` all the same, so that every adapter yields the same batches. With
    ``drop_last``, a mixer leaves out the short batch itself, as in its other loaders (with
    ``stop="never"`` its rows are then not drawn); a reader keeps it in its last chunk, since it
    would drop the whole chunk's tail, and tf.data's ``rebatch`` drops it.
    """

    def __call__(
        self,
        fmt: BatchFormat[C],
        batch_size: int,
        num_epochs: int | None,
        workers_count: int | None,
        *,
        chunk_batches: int = 1,
        **kwargs: Any,
    ) -> Batches[C]:
        """The batch source, ``fmt``'s batches of the user's reader arguments ``kwargs``."""


def torch_dataloader(
    make: BatchesFactory,
    batch_size: int | None,
    num_epochs: int | None,
    workers_count: int | None,
    shuffling_queue_capacity: int | None,
    data_loader_fn: Callable[..., Any] | None,
    kwargs: dict[str, Any],
) -> TorchDataLoader:
    """What ``make_torch_dataloader`` returns; see :meth:`sparkfeed.SparkDatasetConverter.make_torch_dataloader`."""
    from sparkfeed.torch import TorchDataLoader, TorchFormat, check_data_loader_fn

    check_data_loader_fn(data_loader_fn)
    batch = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    capacity = shuffling_queue_capacity
    reader = make(TorchFormat(), batch, num_epochs, workers_count, shuffling_queue_capacity=capacity, **kwargs)
    return TorchDataLoader(reader)


def tf_dataset(
    make: BatchesFactory,
    batch_size: int | None,
    prefetch: int | None,
    num_epochs: int | None,
    workers_count: int | None,
    shuffling_queue_capacity: int | None,
    kwargs: dict[str, Any],
) -> TfDatasetContext:
    """What ``make_tf_dataset`` returns; see :meth:`sparkfeed.SparkDatasetConverter.make_tf_dataset`."""
    from sparkfeed.tf import TfDatasetContext

    batch = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    drop_last = kwargs.pop("drop_last", False)
    # Every argument checked as the user gave it, before the reader's super-batches are sized from it.
    reader_options(
        batch_size=batch,
        num_epochs=num_epochs,
        workers_count=workers_count,
        shuffling_queue_capacity=shuffling_queue_capacity,
        **kwargs,
    )

    def reader(rows: int, epochs: int | None, drop: bool) -> Batches[Columns]:
        size = min(batch, rows)  # the element-spec probe asks for one row
        chunks = rows // size
        return make(
            NUMPY,
            size,
            epochs,
            workers_count,
            chunk_batches=chunks,
            # The user's drop_last, which a factory applies batch by batch where it can (see BatchesFactory).
            drop_last=drop or (drop_last and chunks > 1),
            shuffling_queue_capacity=shuffling_queue_capacity,
            **kwargs,
        )

    return TfDatasetContext(reader, batch, num_epochs, prefetch, drop_last, sequence=bool(kwargs.get("sequence")))


def jax_iterator(
    make: BatchesFactory,
    batch_size: int,
    num_epochs: int | None,
    workers_count: int | None,
    device: Any,
    sharding: Any,
    kwargs: dict[str, Any],
) -> JaxIterator:
    """What ``make_jax_iterator`` returns; see :meth:`sparkfeed.SparkDatasetConverter.make_jax_iterator`."""
    from sparkfeed.jax import JaxIterator, jax_format

    fmt = jax_format(batch_size, device, sharding, sequence=bool(kwargs.get("sequence")))
    return JaxIterator(make(fmt, batch_size, num_epochs, workers_count, **kwargs), device, sharding)
