"""The TensorFlow adapter: a ``tf.data.Dataset`` of namedtuples over the same reader engine.

Crossing from Python into tf.data costs far more per element than any slicing, so the reader
yields super-batches of about 64k rows (whole batches, never crossing an epoch), and tf.data
cuts each into batches in C++ with ``rebatch``. An epoch's last batch stays partial, as in the
other loaders.

Iterating a dataset eagerly (``for row in dataset``, as a custom training loop does) spends
most of its time in TensorFlow's Python, rebuilding each element component by component
(about 5 us a column, more than fetching it); the dataset returned here fetches its elements
the same way but builds each namedtuple in one call (see :func:`_eager_rows`).

Petastorm handed back ``tf.compat.v1`` datasets, and TF1 graph-mode code calls their methods
(``dataset.map(f).make_one_shot_iterator()`` in a ``tf.compat.v1.Session``). A dataset made in
graph mode is one here too; one made eagerly stays a TF2 dataset, since TF1's ``map`` forgets
the cardinality Keras reads, but it has the TF1 methods and attributes as well (see
:func:`_row_dataset_type`).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import warnings
import weakref
from collections.abc import Callable, Iterator
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

from sparkfeed.loader import Batches
from sparkfeed.options import check_tf_prefetch
from sparkfeed.reader.batch import Columns
from sparkfeed.reader.sequence import LENGTHS, SequencePlan
from sparkfeed.types import FrameworkView, array_view, framework_view

SUPER_BATCH_ROWS = 65536


def import_tf() -> ModuleType:
    """tensorflow, or an ImportError that names the extra to install."""
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(
            "make_tf_dataset needs TensorFlow, which is not installed: pip install 'sparkfeed[tf]'"
        ) from error
    module: ModuleType = tf
    return module


def _spec(tf: ModuleType, view: FrameworkView) -> Any:
    """The TensorSpec of a column, as its TF view says (strings: ``tf.string``; dates: int64)."""
    dtype = tf.string if view.carrier == "strings" else tf.as_dtype(view.dtype)
    return tf.TensorSpec((None, *view.shape), dtype, name=view.name)


def _sequence_specs(
    tf: ModuleType, plan: SequencePlan, name: str, dtype: np.dtype, inner: tuple[int, ...]
) -> list[tuple[str, Any]]:
    """``(name, spec)`` of what a sequence column becomes (see :meth:`SequencePlan.output_shapes`).

    A length that varies between batches is None; a ``ragged`` column is one
    ``tf.RaggedTensorSpec`` (its lengths are its row lengths, not a column of their own).
    """
    specs = []
    ragged = any(p.name == name and p.mode == "ragged" for p in plan.columns)
    for output, out_dtype, shape, kind in plan.output_shapes(name, dtype, inner):
        tf_dtype = tf.as_dtype(framework_view(output, np.dtype(out_dtype), (), "tf").dtype)
        if kind == "ragged":
            specs.append((output, tf.RaggedTensorSpec((None, *shape), tf_dtype, 1, tf.int64)))
        elif not (ragged and output == name + LENGTHS):
            specs.append((output, tf.TensorSpec((None, *shape), tf_dtype, name=output)))
    return specs


class TfDatasetContext:
    """What ``make_tf_dataset`` returns: entering gives the dataset, leaving stops the reader.

    Args:
        make_reader: ``(rows per batch, num_epochs, drop_last) -> Batches`` with the user's reader
            arguments: a reader, or a mixer, whose batches of ``rows`` rows are whole batches of
            ``batch_size`` rows but at the end of an epoch.
        batch_size: Rows per batch.
        num_epochs: Epochs per iteration of the dataset (None: forever).
        prefetch: tf.data prefetch buffer, or ``tf.data.AUTOTUNE`` (None: AUTOTUNE).
        drop_last: Leave out each epoch's short last batch.
        sequence: Whether the reader batches sequences (``sequence=``): it then reads each batch
            as it is yielded, padded to its own longest row, instead of larger ones to cut.
    """

    def __init__(
        self,
        make_reader: Callable[[int, int | None, bool], Batches[Columns]],
        batch_size: int,
        num_epochs: int | None,
        prefetch: int | None,
        drop_last: bool = False,
        sequence: bool = False,
    ) -> None:
        self._tf = import_tf()
        prefetch = check_tf_prefetch(prefetch)
        if not isinstance(drop_last, (bool, np.bool_)):
            raise ValueError(f"drop_last={drop_last!r} is not allowed: it must be a bool")
        drop_last = bool(drop_last)
        self._sequence = sequence
        # Sequences are padded batch by batch (to each batch's longest row), so tf.data cannot
        # cut them out of a larger one: the reader reads the batches themselves.
        per_super = 1 if sequence else max(1, SUPER_BATCH_ROWS // batch_size)
        # Super-batches hold whole batches, so only an epoch's last one has a short tail: rebatch
        # drops it there; the reader itself drops only when it reads batch by batch.
        self._reader = make_reader(batch_size * per_super, num_epochs, drop_last and per_super == 1)
        self._reader.show_progress_in(batch_size, drop_last)  # a progress bar counts the batches Keras sees
        self._batches = self._reader.batch_count(batch_size, drop_last)
        self._drop_last = drop_last
        self._batch_size = batch_size
        self._rebatch = per_super > 1
        self._prefetch = prefetch
        self._signature = self._infer_signature(make_reader)
        self._failure: BaseException | None = None

    def _infer_signature(self, make_reader: Callable[[int, int | None, bool], Batches[Columns]]) -> Any:
        """The element spec: from the cache's schema, or after a transform from one read batch."""
        known, plan = self._reader.columns, self._reader.sequence
        sequences = {} if plan is None else {p.name: p for p in plan.columns}
        specs: list[tuple[str, Any]] = []
        if known is not None:
            for name, column in known.items():
                if name in sequences:
                    column_plan = sequences[name]
                    inner, dtype = column_plan.inner or (), column_plan.dtype or column.numpy_dtype
                    specs += _sequence_specs(self._tf, plan, name, dtype, inner)  # type: ignore[arg-type]
                else:
                    specs.append((name, _spec(self._tf, column.view("tf"))))
        else:
            with make_reader(1 if plan is None else self._batch_size, 1, False) as probe:
                probe.show_progress_in(None)  # a look at one batch is no epoch to show
                first = next(iter(probe), None)
            if first is None:
                raise ValueError("make_tf_dataset needs at least one row to know the dataset's element spec")
            outputs = {o for p in sequences.values() for o in p.outputs()[1:]}
            for name, array in first.items():
                if name in sequences:
                    inner = tuple(array.shape[1 if sequences[name].mode == "ragged" else 2 :])
                    specs += _sequence_specs(self._tf, plan, name, array.dtype, inner)  # type: ignore[arg-type]
                elif name not in outputs:
                    specs.append((name, _spec(self._tf, array_view(name, array, "tf"))))
        names = [name for name, _ in specs]
        self._ragged = [name for name, spec in specs if isinstance(spec, self._tf.RaggedTensorSpec)]
        row = collections.namedtuple("Row", names, rename=True)  # type: ignore[misc]
        fields: tuple[str, ...] = row._fields
        renamed = {name: field for name, field in zip(names, fields, strict=True) if name != field}
        taken = {field: name for name, field in renamed.items() if field in names}
        if taken:  # batch._0 would be another column than the one named _0, without a word but the warning
            raise ValueError(
                f"columns that are not Python identifiers become fields {taken} of the dataset's namedtuples, which "
                "are other columns' names: rename them in Spark (df.withColumnRenamed), so that each field holds "
                "the column of its name"
            )
        if renamed:
            warnings.warn(
                f"columns that are not Python identifiers are these fields of the dataset's namedtuples: {renamed}; "
                "rename them in Spark to keep their names",
                stacklevel=4,
            )
        self._names = names
        # What each column's array must be before tf.data takes it (None: a string); see _check_dtypes.
        self._dtypes: list[np.dtype[Any] | None] = [
            None if spec.dtype == self._tf.string else np.dtype(spec.dtype.as_numpy_dtype) for _, spec in specs
        ]
        return row(*(spec for _, spec in specs))

    def _check_dtypes(self, arrays: list[Any]) -> None:
        """Raises a ValueError naming a column whose array is not of the element spec's dtype.

        tf.data casts what a generator yields to the spec's dtype without a word (a NaN float to
        int64's minimum, an int64 beyond 2**31 into int32). A transform's spec comes from a probe's
        first batch, and a transform whose dtype depends on the chunk (a lookup that misses is NaN,
        float64) gives others; the probe draws its own seed, so its first row group need not be the
        dataset's, and the reader's own check of its chunks comes only at the first of another kind.
        """
        for name, array, dtype in zip(self._names, arrays, self._dtypes, strict=True):
            string = array.dtype.kind in "OSU"
            if (dtype is None and string) or (dtype is not None and not string and array.dtype == dtype):
                continue
            raise ValueError(
                f"column {name!r} is {array.dtype} in this batch, not the {dtype or 'string'} of the dataset's element "
                "spec (from the cache's schema, or from the first batch a transform returned), which tf.data would "
                "cast it to without a word: make the transform return the same dtype for every chunk, for example "
                "by casting, or give the column in TransformSpec edit_fields"
            )

    def _generate(self) -> Iterator[Any]:
        self._failure = None
        row = type(self._signature)
        tf, names, ragged = self._tf, self._names, self._ragged
        # A batch's columns may come in another order than the element spec's (sequence= names its
        # columns in its own order; a transform may order them differently from chunk to chunk):
        # each field is filled by its column's name, never by position.
        expected = {*names, *(name + LENGTHS for name in ragged)}
        try:
            for batch in self._reader:
                if batch.keys() != expected:
                    raise ValueError(
                        f"the batch's columns {list(batch)} are not the dataset's element spec's {names}: "
                        "the transform must return the same columns for every chunk"
                    )
                arrays = [array_view(name, batch[name], "tf").prepare(batch[name]) for name in names]
                self._check_dtypes(arrays)
                if not ragged:
                    yield row(*arrays)
                    continue
                values = []
                for name, array in zip(names, arrays, strict=True):
                    if name in ragged:  # the values end to end and their row lengths: one RaggedTensor
                        lengths = batch[name + LENGTHS].astype(np.int64)
                        array = tf.RaggedTensor.from_row_lengths(array, lengths, validate=False)
                    values.append(array)
                yield row(*values)
        except Exception as error:
            # TensorFlow delivers it as one of its errors (InvalidArgumentError for a ValueError,
            # UnknownError for most others), its type lost: see _eager_rows.
            self._failure = error
            raise

    def __enter__(self) -> Any:
        tf = self._tf
        # TF1 graph mode (a tf.Graph, or eager execution disabled) gets a tf.compat.v1 dataset, as
        # Petastorm's, whose transformations keep the TF1 methods; TF2 gets a TF2 one (see the module).
        graph_mode = not tf.compat.v1.executing_eagerly_outside_functions()
        api = tf.compat.v1.data if graph_mode else tf.data
        dataset = api.Dataset.from_generator(_weak_generator(self), output_signature=self._signature)
        if self._rebatch:
            size, drop = self._batch_size, self._drop_last
            dataset = dataset.flat_map(lambda row: tf.data.Dataset.from_tensors(row).rebatch(size, drop))
        if self._batches is not None and not self._reader.filters_rows:
            # A known length lets Keras show progress and end epochs without a warning.
            dataset = dataset.apply(tf.data.experimental.assert_cardinality(self._batches))
        prefetched = dataset.prefetch(tf.data.AUTOTUNE if self._prefetch is None else self._prefetch)
        rows = prefetched if graph_mode else _eager_rows(prefetched, lambda: self._failure)
        # The generator holds this context weakly (see _weak_generator): the dataset holds it, so
        # a dataset kept beyond the ``with`` block (or made by __enter__() alone) still iterates.
        rows._sparkfeed_context = self
        return rows

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._reader.close()

    def stats(self) -> dict[str, Any]:
        """Whether the input is the bottleneck; see :meth:`sparkfeed.reader.Reader.stats`.

        tf.data pulls batches ahead of the model into its prefetch buffer, so waiting here means
        that buffer ran dry: the time tf.data waited on the reader, the pipeline's input-bound share.
        """
        return self._reader.stats()


def _weak_generator(context: TfDatasetContext) -> Callable[[], Iterator[Any]]:
    """``context``'s generator for ``from_generator``, holding the context weakly.

    TensorFlow keeps the callable given to ``Dataset.from_generator`` for the life of the
    process (measured with TF 2.21: none of 120 generator owners was ever collected, dataset
    and iterators long gone). Given the bound ``_generate``, that kept every dataset's context
    and, through it, its reader, plan and transform (with whatever the transform's closure
    holds, a tokenizer, a model): a job that makes a dataset per epoch or per validation pass
    grew without bound. The dataset itself holds the context, so it lives as long as the dataset
    is used; the callable left behind holds nothing.
    """
    ref = weakref.ref(context)

    def generate() -> Iterator[Any]:
        held = ref()
        if held is None:  # only once nothing can iterate the dataset any more; said plainly all the same
            raise RuntimeError("this sparkfeed dataset's TfDatasetContext is gone: keep it while iterating")
        yield from held._generate()

    return generate


def _eager_rows(dataset: Any, failure: Callable[[], BaseException | None]) -> Any:
    """``dataset``, made to build each element in one call when iterated eagerly.

    TensorFlow's iterator rebuilds an element from its flat list of tensors component by
    component (a shape check and ``set_shape`` each): for 18 columns that is about 100 us a
    batch, more than fetching it. Every component here is a plain tensor whose shape the
    element spec already bounds, so the namedtuple can be made from the list as it comes.
    An exception raised in the generator (a :class:`~sparkfeed.NullValueError`, an error of the
    transform), which TensorFlow delivers as one of its own errors (``InvalidArgumentError``,
    ``UnknownError``), comes out of this iterator as an error that is both, where Python allows
    a class of both (see :func:`_both_errors`); its cause is the original exception. The
    wrapper also has the TF1 methods of Petastorm's datasets (see :func:`_row_dataset_type`).
    This relies on TensorFlow internals (those of 2.21, long unchanged); where they are missing
    the dataset is returned as it is. Only direct eager iteration of this very dataset is
    affected: a transformation of it, or an iterator used inside a ``tf.function``, goes
    TensorFlow's way.

    Args:
        dataset: The dataset to wrap (the wrapper is the same graph node).
        failure: The exception the dataset's generator last raised, if any.
    """
    try:
        row_dataset = _row_dataset_type()
    except (ImportError, AttributeError):
        return dataset
    return row_dataset(dataset, failure)


@functools.cache
def _row_dataset_type() -> type:
    """The ``tf.data.Dataset`` subclass of :func:`_eager_rows` (made once, TF imported lazily).

    Besides its iterator, it has what Petastorm's ``tf.compat.v1`` datasets offered TF1-style
    code: ``make_one_shot_iterator()`` (the same fast iterator, eagerly),
    ``make_initializable_iterator()`` (which TensorFlow allows in graph mode only, as for any
    dataset), ``output_types``, ``output_shapes`` and ``output_classes``, through
    ``tf.compat.v1.data``'s public functions. It stays a TF2 dataset, so its transformations
    keep TF2's semantics (``map`` keeps the cardinality Keras reads).
    """
    from tensorflow.python.data.ops import dataset_ops, iterator_ops
    from tensorflow.python.eager import context
    from tensorflow.python.framework import errors, tensor_spec
    from tensorflow.python.ops import gen_dataset_ops

    tf_v1 = import_tf().compat.v1

    class RowIterator(iterator_ops.OwnedIterator):  # type: ignore[misc]
        """TensorFlow's iterator, but for its eager ``next``: one namedtuple made from the list."""

        def __init__(self, dataset: Any) -> None:
            super().__init__(dataset)
            # What _next_internal reads: an AttributeError now, in a TensorFlow without it,
            # sends the dataset back to TensorFlow's own iterator.
            _ = (self._iterator_resource, self._flat_output_types, self._flat_output_shapes)
            if not all(isinstance(spec, tensor_spec.TensorSpec) for spec in self._element_spec):
                # a RaggedTensor's components travel encoded: TensorFlow's own iterator decodes them
                raise AttributeError("an element of tensors only is made from its flat list")
            self._make = type(self._element_spec)._make
            self._failure = dataset._failure

        def _next_internal(self) -> Any:
            if not context.executing_eagerly():
                return super()._next_internal()
            try:
                with context.execution_mode(context.SYNC):  # as TensorFlow's: errors raise here
                    flat = gen_dataset_ops.iterator_get_next(
                        self._iterator_resource,
                        output_types=self._flat_output_types,
                        output_shapes=self._flat_output_shapes,
                    )
            except errors.OpError as delivered:
                failure = self._failure()
                if (
                    failure is None
                    or isinstance(delivered, errors.OutOfRangeError)
                    or f"{type(failure).__name__}: {failure}" not in delivered.message
                ):
                    raise
                both = _both_errors(type(failure), type(delivered))  # type: ignore[arg-type]
                if both is None:
                    raise
                raise both(delivered, failure) from failure
            return self._make(flat)

    class RowDataset(dataset_ops.UnaryUnchangedStructureDataset):  # type: ignore[misc]
        """The same dataset (the same graph node), iterated eagerly by :class:`RowIterator`."""

        def __init__(self, dataset: Any, failure: Callable[[], BaseException | None]) -> None:
            super().__init__(dataset, dataset._variant_tensor)
            self._failure = failure

        def __iter__(self) -> Any:
            if context.executing_eagerly():
                try:
                    return RowIterator(self)
                except AttributeError:
                    pass
            return super().__iter__()

        def _make_one_shot_iterator(self) -> Any:
            # What tf.compat.v1.data.make_one_shot_iterator(dataset) calls first. Eagerly, TF1's
            # one-shot iterator is TF2's: this dataset's own.
            if context.executing_eagerly():
                return iter(self)
            return dataset_ops.DatasetV1Adapter(self)._make_one_shot_iterator()

        def make_one_shot_iterator(self) -> Any:
            """TF1's ``Dataset.make_one_shot_iterator()``, as on Petastorm's datasets."""
            return self._make_one_shot_iterator()

        def make_initializable_iterator(self, shared_name: str | None = None) -> Any:
            """TF1's ``Dataset.make_initializable_iterator()``: graph mode only, as TensorFlow rules."""
            return tf_v1.data.make_initializable_iterator(self, shared_name)

        @property
        def output_types(self) -> Any:
            """TF1's ``Dataset.output_types``: the element's ``tf.DType`` structure."""
            return tf_v1.data.get_output_types(self)

        @property
        def output_shapes(self) -> Any:
            """TF1's ``Dataset.output_shapes``: the element's ``tf.TensorShape`` structure."""
            return tf_v1.data.get_output_shapes(self)

        @property
        def output_classes(self) -> Any:
            """TF1's ``Dataset.output_classes``: the element's Python classes structure."""
            return tf_v1.data.get_output_classes(self)

    return RowDataset


@functools.cache
def _both_errors(failure: type[BaseException], delivered: type[BaseException]) -> type[BaseException] | None:
    """A class that is both ``failure`` (the generator's exception) and ``delivered`` (TensorFlow's error for it).

    ``except ZeroDivisionError`` (or ``except NullValueError``, ``except ValueError``) then
    catches the error as in the other loaders, and ``except tf.errors.UnknownError`` (what
    TensorFlow's own iterator raises) still does. An instance has the original's ``args``,
    attributes and notes, and TensorFlow's ``node_def``, ``op`` and ``message`` (the original's
    words). None where Python cannot make such a class (two built-in layouts, a final class):
    the error is then TensorFlow's, its message holding the original's traceback.
    """

    def __init__(self: Any, delivered_error: Any, original: BaseException) -> None:
        # the original's own fields (OSError's errno), where its __init__ takes its args
        with contextlib.suppress(Exception):
            failure.__init__(self, *original.args)
        self.__dict__.update(original.__dict__)
        delivered.__init__(self, delivered_error.node_def, delivered_error.op, str(original))
        self.args = original.args
        if hasattr(original, "__notes__"):
            self.__notes__ = list(original.__notes__)

    def __new__(cls: type, delivered_error: Any, original: BaseException) -> Any:
        return failure.__new__(cls, *original.args)

    name = f"Tf{failure.__name__}"
    namespace = {"__init__": __init__, "__new__": __new__, "__module__": __name__, "__qualname__": name}
    try:
        return type(name, (failure, delivered), namespace)
    except TypeError:
        return None
