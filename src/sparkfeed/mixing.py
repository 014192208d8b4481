"""Several converters mixed with weights into one stream of batches: :func:`mix`.

A mixture has the loader factories of a converter, with the same arguments. Each batch's rows
are drawn from the sources in proportion to the weights, by a seeded draw that depends on the
seed, the epoch and the batch's index only: every rank of a distributed job draws the same
counts, and a resumed run draws them again. Each source is read by a reader of its own, with
its own threads, shuffle and shard (see :mod:`sparkfeed.reader.mixer` for the engine).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Unpack

from sparkfeed.converter import SparkDatasetConverter
from sparkfeed.loader import DEFAULT_BATCH_SIZE, jax_iterator, tf_dataset, torch_dataloader
from sparkfeed.options import MixGranularity, MixOptions, MixStop, ReaderArgs, known_keywords, reader_options
from sparkfeed.reader import Reader
from sparkfeed.reader.batch import NUMPY, BatchFormat, Columns
from sparkfeed.reader.mixer import Mixer, SourceFormat, source_format
from sparkfeed.reader.plan import fresh_seed

if TYPE_CHECKING:
    from sparkfeed.jax import JaxIterator
    from sparkfeed.tf import TfDatasetContext
    from sparkfeed.torch import TorchDataLoader

log = logging.getLogger(__name__)


def mix(
    converters: Mapping[str, SparkDatasetConverter],
    weights: Mapping[str, float] | None = None,
    *,
    seed: int | None = None,
    stop: MixStop = "first_exhausted",
    rows_per_epoch: int | None = None,
    source_column: str | None = None,
    granularity: MixGranularity = "row",
) -> Mixture:
    """Mixes several converters into one stream whose batches' rows follow the weights.

    Every batch of ``batch_size`` rows takes from each source a number of rows drawn from the
    multinomial distribution of the weights (so a 0.7/0.3 mix gives 0.7 of the rows from the
    first on average, and every batch varies around it); inside a batch the rows come source
    after source (in the order of ``converters``, reversed in odd batches), each source's in its own
    order.

    Args:
        converters: The sources, by name: ``{"wiki": conv_a, "code": conv_b}``. They must agree
            on the selected columns' names, dtypes and per-row shapes (select the columns they
            share with ``schema_fields``, or make them agree with a transform).
        weights: Each source's weight, by the same names: positive, finite, any scale. None:
            proportional to the sources' sizes, as if their rows were pooled and shuffled.
        seed: Seed of the per-batch draws, and of the sources' shuffles where the loader is given
            no ``seed`` of its own. None: the loader's ``seed`` if given, else one drawn when the
            loader is made (and kept in its state). Sharded loaders need a seed, so that every
            rank draws the same counts.
        stop: When an epoch ends. ``"first_exhausted"``: epoch ``e`` of the mixture reads epoch
            ``e`` of every source and ends with the first batch that asks a source for more rows
            than it has left; that batch holds what the sources still have of their draws, every
            row of the exhausted source has been used once, and the rows the others did not give
            are not read in that epoch (the next starts every source's next epoch). ``"never"``
            (sampling with replacement): each source repeats its own epochs as long as the mixture
            runs, reshuffled each time, and an epoch of the mixture is ``rows_per_epoch`` rows.
        rows_per_epoch: With ``stop="never"``, the rows of one epoch of the mixture, on each shard
            (every rank yields as many). None: the sum of the sources' rows (their shard's). With
            ``sequence=``, required: an epoch is ``ceil(rows_per_epoch / batch_size)`` batches.
        source_column: Also give every batch an int32 column of this name: the index of each
            row's source in ``converters`` (for a loss per source). None: no such column.
        granularity: What the weights draw a source for. ``"row"`` (the default): every row, as
            above, so each batch mixes the sources; joining them costs a copy of every row.
            ``"batch"``: every batch, which comes whole from one source (Mosaic Streaming's
            ``per_stream``: one task or language per step, a loss per batch); the rows still
            follow the weights over many batches, the epochs end as above, and a batch is a view
            of its source's data like a single converter's, with no copy. The loaders'
            ``sequence=`` needs it: each source pads, buckets or packs its own batches, and the
            draws count batches (see the mixing guide's "Sequences").

    Raises:
        TypeError: A source is not a :class:`~sparkfeed.SparkDatasetConverter`.
        ValueError: A weight is not positive and finite, the weights name other sources, or an
            argument is out of range.
    """
    if not isinstance(converters, Mapping):
        raise TypeError(
            f"mix takes a mapping of names to converters, like {{'a': conv_a, 'b': conv_b}}, not "
            f"{type(converters).__name__}"
        )
    for name, converter in converters.items():
        if not isinstance(converter, SparkDatasetConverter):
            raise TypeError(
                f"mix: source {name!r} is a {type(converter).__name__}, not a converter from make_spark_converter"
            )
    names = tuple(converters)
    if weights is None:
        empty = [name for name in names if converters[name].dataset_size == 0]
        if empty:
            raise ValueError(
                f"mix: weights=None weighs each source by its size, and {empty} have no rows: leave them out"
            )
        given: tuple[float, ...] = tuple(float(converters[name].dataset_size) for name in names)
    else:
        if not isinstance(weights, Mapping) or set(weights) != set(names):
            have = sorted(weights) if isinstance(weights, Mapping) else weights
            raise ValueError(
                f"mix: weights={have!r} is not allowed: it must map each source, {sorted(names)}, to its weight"
            )
        given = tuple(weights[name] for name in names)
    options = MixOptions(names, given, seed, stop, rows_per_epoch, source_column, granularity)
    return Mixture({name: converters[name] for name in names}, options)


class Mixture:
    """Several converters mixed with weights; made by :func:`mix`, it makes loaders as a converter does.

    Small and picklable like its converters, so it travels to training processes as they do.
    """

    def __init__(self, converters: Mapping[str, SparkDatasetConverter], options: MixOptions) -> None:
        self._converters = dict(converters)
        self._options = options

    @property
    def converters(self) -> dict[str, SparkDatasetConverter]:
        """The sources, by name, in order."""
        return dict(self._converters)

    @property
    def names(self) -> tuple[str, ...]:
        """The sources' names, in order: ``source_column`` holds indices into it."""
        return self._options.names

    @property
    def weights(self) -> dict[str, float]:
        """Each source's expected share of a batch's rows (the weights normalised to sum to 1)."""
        return dict(zip(self._options.names, self._options.probabilities, strict=True))

    @property
    def options(self) -> MixOptions:
        """The validated arguments of :func:`mix`."""
        return self._options

    def __repr__(self) -> str:
        shares = ", ".join(f"{name!r}: {share:.3g}" for name, share in self.weights.items())
        return f"Mixture({{{shares}}}, stop={self._options.stop!r})"

    def _mixer(
        self,
        fmt: BatchFormat[Any],
        batch_size: int,
        num_epochs: int | None,
        workers_count: int | None,
        *,
        chunk_batches: int = 1,
        **kwargs: Any,
    ) -> Mixer[Any]:
        """The loaders' batch source (see :class:`~sparkfeed.loader.BatchesFactory`)."""
        for converter in self._converters.values():
            converter._check_alive()  # the converter's own check (one package)
        options = reader_options(batch_size=batch_size, num_epochs=num_epochs, workers_count=workers_count, **kwargs)
        mixing = self._options
        sequence = bool(options.sequence)
        cur_shard, shard_count = options.shard
        if shard_count > 1 and options.shard_policy == "exact":
            raise ValueError(
                "mix: shard_policy='exact' gives shards different numbers of rows, so ranks would end the mixture's "
                "epochs after different numbers of batches and wait on each other: use 'pad' (the default) or 'drop'"
            )
        seed = mixing.seed if mixing.seed is not None else options.seed
        if seed is None:
            if shard_count > 1:
                raise ValueError(
                    f"mix: shard {cur_shard} of {shard_count} without a seed would draw its own per-batch counts, and "
                    "ranks would get different batch counts: pass seed= to mix() or to the loader"
                )
            seed = fresh_seed()
        never = mixing.stop == "never"
        if sequence and never and mixing.rows_per_epoch is None:
            raise ValueError(
                "mix: sequence= with stop='never' needs rows_per_epoch: each batch comes whole from one source, "
                "so an epoch is rows_per_epoch / batch_size batches (packed rows, for 'pack'), and the sources' rows "
                "do not say how many batches they make"
            )
        readers: dict[str, Reader[Any]] = {}
        formats: dict[str, BatchFormat[Any]] = {}
        for index, ((name, converter), share) in enumerate(
            zip(self._converters.items(), mixing.probabilities, strict=True)
        ):
            source_options = dataclasses.replace(
                options,
                # With sequences, each source makes the mixture's batches itself, short last ones included.
                batch_size=options.batch_size if sequence else _source_batch_size(options.batch_size, converter),
                num_epochs=None if never else 1,
                drop_last=options.drop_last if sequence else False,
                progress=False,
                prefetch=options.prefetch or _source_prefetch(options.prefetch_pieces, share, len(self._converters)),
                # mix(seed=...) alone makes the whole stream reproducible, the sources' shuffles included.
                seed=options.seed if options.seed is not None else mixing.seed,
                # A mixture is for training ('exact' is refused above): pad's repeated row warns no one.
                explicit_shard_policy=True,
            )
            try:
                formats[name] = source_format(
                    fmt, mixing.granularity, chunk_batches, mixing.source_column, index, sequence
                )
                readers[name] = Reader(
                    converter.location,
                    converter.manifest,
                    source_options,
                    formats[name],
                    whole_chunks=isinstance(formats[name], SourceFormat) and not sequence,
                )
            except ValueError as error:
                error.add_note(f"(in the mix's source {name!r}, {converter.location})")
                raise
        rows_per_epoch = mixing.rows_per_epoch
        if never and rows_per_epoch is None:
            rows_per_epoch = sum(reader.num_rows for reader in readers.values())
        if (
            never
            and not sequence
            and options.drop_last
            and rows_per_epoch is not None
            and rows_per_epoch < options.batch_size
        ):
            raise ValueError(
                f"mix: rows_per_epoch={rows_per_epoch} is less than batch_size={options.batch_size}, so with "
                "drop_last=True every epoch would be empty"
            )
        return Mixer(
            readers,
            mixing.probabilities,
            fmt,
            batch_size=options.batch_size,
            num_epochs=options.num_epochs,
            drop_last=options.drop_last,
            stop=mixing.stop,
            rows_per_epoch=rows_per_epoch,
            seed=seed,
            seeded=mixing.seed is not None or options.seed is not None,
            source_column=mixing.source_column,
            chunk_batches=chunk_batches,
            granularity=mixing.granularity,
            source_formats=formats,
            progress=options.progress,
            shard=options.shard,
            sequence=next(iter(readers.values())).sequence if sequence else None,
        )

    @known_keywords
    def make_numpy_iterator(
        self,
        batch_size: int = 32,
        num_epochs: int | None = None,
        workers_count: int | None = None,
        **kwargs: Unpack[ReaderArgs],
    ) -> Mixer[Columns]:
        """Mixed batches as dicts of NumPy arrays; arguments as :meth:`SparkDatasetConverter.make_numpy_iterator`.

        Every source is read with these arguments (shard, shuffle, columns, transform, ...), by a
        reader of its own: ``workers_count`` and ``prefetch`` are per source.
        """
        return self._mixer(NUMPY, batch_size, num_epochs, workers_count, **kwargs)

    # The same signature as the converter's (see SparkDatasetConverter.make_torch_dataloader).
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
        """Mixed batches as dicts of ``torch.Tensor``.

        Arguments as :meth:`SparkDatasetConverter.make_torch_dataloader`.
        """
        return torch_dataloader(
            self._mixer, batch_size, num_epochs, workers_count, shuffling_queue_capacity, data_loader_fn, dict(kwargs)
        )

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
        """A context manager yielding a ``tf.data.Dataset`` of mixed namedtuples.

        Arguments as :meth:`SparkDatasetConverter.make_tf_dataset`. The batches are those of the
        other loaders: the mixer draws every batch's rows, and hands tf.data chunks of whole
        batches to cut.
        """
        return tf_dataset(
            self._mixer, batch_size, prefetch, num_epochs, workers_count, shuffling_queue_capacity, dict(kwargs)
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
        """Mixed batches as dicts of ``jax.Array``; arguments as :meth:`SparkDatasetConverter.make_jax_iterator`."""
        return jax_iterator(self._mixer, batch_size, num_epochs, workers_count, device, sharding, dict(kwargs))


SOURCE_BATCH_ROWS = 8192
"""Rows a source's reader cuts its chunks into, at most: the mixer takes each batch's rows from these."""


def _source_batch_size(batch_size: int, converter: SparkDatasetConverter) -> int:
    """Rows per batch of a source's reader: larger than the mixture's, but a small part of a row group.

    The mixer cuts its batches out of the source's batches, and each source batch costs a step of
    the reader and a piece more to join: a few large ones are cheaper than many small ones. But a
    reader's batch that spans two row groups is a copy, so they stay an eighth of a row group.
    It depends on the cache's row groups only, so that a saved state resumes with the same.
    (A mixture of whole batches reads whole chunks instead: see :class:`SourceFormat`.)
    """
    groups = sorted(rows for entry in converter.manifest.files for rows in entry.row_groups)
    median = groups[len(groups) // 2] if groups else 0
    return max(batch_size, min(SOURCE_BATCH_ROWS, median // 8))


def _source_prefetch(default: int, share: float, sources: int) -> int:
    """Row-group pieces a source reads ahead: the usual for an even share, fewer for a small one.

    A source that gives a tenth of the rows needs its next row group ten times less often; read
    as far ahead as the others, it would decode row groups that an epoch ending at its first
    exhausted source, or a loop that stops, never uses.
    """
    return max(1, min(default, math.ceil(default * share * sources)))
