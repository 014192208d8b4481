"""The user's transform: a pandas function run in the reader's threads, never the training loop."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sparkfeed.types import ColumnSpec, NullValueError, to_numpy
from sparkfeed.writer import is_list_type, list_levels

EditField = tuple[str, Any, tuple[int | None, ...], bool]
"""Petastorm's ``(name, numpy_dtype, shape, is_nullable)``: a column the transform adds or changes."""


def edit_field(name: str, numpy_dtype: Any, shape: Sequence[int | None], nullable: bool = False) -> EditField:
    """One ``edit_fields`` entry, as Petastorm's ``petastorm.transform.edit_field`` makes it.

    Spelling the tuple out by position is easy to get wrong (the shape and the dtype swapped
    still make a 4-tuple); this names each part, and migrating code keeps its calls.

    Args:
        name: The column the transform adds or changes.
        numpy_dtype: What its values are cast to (a NumPy dtype or its name).
        shape: The shape of one row's value: ``()`` for a scalar, ``None`` for a dimension that
            varies (the column is then not reshaped, and stays rows of arrays in every chunk,
            even one whose rows happen to share a shape).
        nullable: Petastorm's flag, kept for the tuple's shape; tensors hold no nulls either way.

    Raises:
        ValueError: ``name`` is not a string, ``numpy_dtype`` no NumPy dtype or ``shape`` not a
            sequence of sizes.
    """
    if not isinstance(name, str):
        raise ValueError(f"edit_field name={name!r} is not allowed: it must be the column's name")
    _check_edit(f"edit_field {name!r}", numpy_dtype, shape)
    return name, numpy_dtype, tuple(shape), nullable


def _check_edit(where: str, numpy_dtype: Any, shape: Any) -> None:
    """Raises a ValueError starting with ``where`` unless the dtype is NumPy's (or None) and the shape one of sizes."""
    sizes = not isinstance(shape, str) and isinstance(shape, Sequence)
    if not sizes or not all(
        size is None or (isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size >= 0)
        for size in shape
    ):
        raise ValueError(
            f"{where}: shape={shape!r} is not allowed: it must be a tuple of sizes (integers >= 0, or None for a "
            "dimension that varies), such as (28, 28), or () for a scalar"
        )
    if numpy_dtype is not None:
        try:
            np.dtype(numpy_dtype)
        except TypeError as error:
            raise ValueError(
                f"{where}: numpy_dtype={numpy_dtype!r} is not a NumPy dtype ({error}): give one such as np.float32 "
                "or 'int64'"
            ) from None


@dataclasses.dataclass(frozen=True)
class TransformSpec:
    """Petastorm's ``TransformSpec``: a function on a pandas DataFrame plus the schema it produces.

    Args:
        func: Takes a pandas DataFrame holding a chunk of rows and returns a pandas DataFrame, for
            example with image bytes decoded to arrays. It may add, drop or change columns.
        edit_fields: Columns the function adds or changes, as ``(name, numpy_dtype, shape,
            is_nullable)``. Each is cast to its dtype (a column of rows of varying length row by
            row) and, when the shape has no ``None``, reshaped to ``(rows, *shape)``: this is
            how a flat array column becomes an image tensor.
        removed_fields: Columns dropped after the function ran.
        selected_fields: The columns kept after the function ran, in this order. Give either
            this or ``removed_fields``, not both, as in Petastorm: the two would say the same
            thing twice, and disagree when a removed column is also selected.

    Raises:
        ValueError: A field is malformed, or both ``removed_fields`` and ``selected_fields`` are given.
    """

    func: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    edit_fields: Sequence[EditField] | None = None
    removed_fields: Sequence[str] | None = None
    selected_fields: Sequence[str] | None = None

    def __post_init__(self) -> None:
        if self.func is not None and not callable(self.func):
            raise ValueError(f"TransformSpec func={self.func!r} is not allowed: it must be callable or None")
        for name in ("removed_fields", "selected_fields"):
            fields = getattr(self, name)
            if isinstance(fields, str):
                raise ValueError(
                    f"TransformSpec {name}={fields!r} is not allowed: pass a list of column names, such as "
                    f"[{fields!r}] (a string would be read letter by letter)"
                )
            if fields is not None and not all(isinstance(field, str) for field in fields):
                raise ValueError(f"TransformSpec {name}={fields!r} is not allowed: it must be a list of column names")
        if self.removed_fields is not None and self.selected_fields is not None:
            raise ValueError(
                f"TransformSpec removed_fields={self.removed_fields!r} and selected_fields={self.selected_fields!r} "
                "are both given: give one of them, as Petastorm requires (selected_fields alone already leaves out "
                "every column it does not name)"
            )
        for field in self.edit_fields or ():
            if not (isinstance(field, tuple) and len(field) == 4 and isinstance(field[0], str)):
                raise ValueError(
                    f"TransformSpec edit_fields entry {field!r} is not allowed: it must be a tuple "
                    "(name, numpy_dtype, shape, is_nullable)"
                )
            _check_edit(f"TransformSpec edit_fields entry {field[0]!r}", field[1], field[2])

    def apply(self, frame: pd.DataFrame, held: Mapping[str, GivenArrays] | None = None) -> dict[str, np.ndarray]:
        """Runs the function and turns its output into one NumPy array per column.

        Args:
            frame: The chunk, as :func:`transform_frame` makes it.
            held: The array columns whose nulls the frame holds (see :func:`transform_frame`):
                those the function leaves in place are refused.

        Raises:
            NullValueError: A number, bool, date or timestamp column of the output holds a
                missing value, or an array column a null it was given.
        """
        given = [str(name) for name in frame.columns]
        if self.func is not None:
            frame = self.func(frame)
            if not isinstance(frame, pd.DataFrame):
                raise TypeError(
                    f"the transform function must return a pandas DataFrame, it returned {type(frame).__name__}"
                )
        unknown = [field[0] for field in self.edit_fields or () if field[0] not in frame.columns]
        if unknown:
            raise ValueError(
                f"TransformSpec edit_fields names {unknown[0]!r}, which the transform's output does not have: "
                f"its columns are {[str(name) for name in frame.columns]}"
            )
        if self.removed_fields:
            absent = [name for name in self.removed_fields if name not in frame.columns]
            if absent:  # nothing to remove is nothing lost: warned and ignored, as Petastorm does
                warnings.warn(
                    f"TransformSpec removed_fields {absent} are not in the transformed columns "
                    f"{[str(name) for name in frame.columns]}: ignored",
                    stacklevel=2,
                )
            frame = frame.drop(columns=[name for name in self.removed_fields if name not in absent])
        if self.selected_fields:
            missing = [name for name in self.selected_fields if name not in frame.columns]
            if missing:
                raise KeyError(
                    f"TransformSpec selected_fields {missing} are not in the transformed columns {list(frame.columns)}"
                )
            frame = frame[list(self.selected_fields)]
        else:
            frame = self._petastorm_order(frame, given)
        names = [str(name) for name in frame.columns]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:  # a batch is a dict: one of them would be lost
            raise ValueError(
                f"the transform's output has more than one column named {repeated} (as text): give each its own name"
            )
        edits = {field[0]: field for field in self.edit_fields or ()}
        columns = {}
        for name in frame.columns:
            if held and name in held:
                held[name].check(frame[name])
            if name in edits:
                _, dtype, shape, _ = edits[name]
                # A size None says the rows vary: a chunk whose rows happen to share one shape (a
                # chunk of one row, always) must stay rows too, or its batch would differ.
                array = series_to_numpy(frame[name], str(name), stack=None not in shape)
                array = _apply_edit(name, array, dtype, shape)
            else:
                kept = held is not None and name in held and held[name].untouched(frame[name])
                array = series_to_numpy(frame[name], str(name), stack=not kept)
            columns[str(name)] = array
        return columns

    def _petastorm_order(self, frame: pd.DataFrame, given: Sequence[str]) -> pd.DataFrame:
        """The output's columns in the order of Petastorm's transformed schema, whatever the function's order.

        Petastorm built each batch from its ``transform_schema``: the columns the transform was
        given, in their order, less those in ``edit_fields`` and ``removed_fields``, then the
        ``edit_fields`` in their order (a column it edits moves to the end); the function's own
        column order counted for nothing. That order is the TF namedtuple's field order, which
        code unpacks by position (``features, label = element``, Keras taking a 2-tuple as
        ``(x, y)``), and the torch dict's key order (``torch.stack(list(batch.values()))``), so a
        function returning another order must not reorder the batch. Columns the function adds
        without declaring them (Petastorm refused those) follow, in the function's order.
        ``selected_fields`` sets the order itself and is applied by the caller instead.
        """
        labels = {str(label): label for label in frame.columns}
        if len(labels) != len(frame.columns):
            return frame  # repeated names: refused by the caller, naming them
        edits = [field[0] for field in self.edit_fields or ()]
        order = [name for name in given if name in labels and name not in edits]
        order += [name for name in edits if name in labels and name not in order]
        order += [name for name in labels if name not in order]
        if order == list(labels):
            return frame
        return frame[[labels[name] for name in order]]


PETASTORM_TRANSFORM_SPEC = ("petastorm.transform", "TransformSpec")
"""Module and name of Petastorm's ``TransformSpec``, recognised without importing Petastorm."""


def from_petastorm(spec: object) -> object:
    """Petastorm's own ``TransformSpec`` as sparkfeed's, anything else as it is.

    A Petastorm program that changes only its converter import still builds its transforms with
    ``from petastorm import TransformSpec``. That class holds the same four things sparkfeed's
    does, with the same meaning (a function of a pandas DataFrame, ``(name, numpy_dtype, shape,
    is_nullable)`` edits, removed or selected names), so it is taken as it is rather than
    refused. It is recognised by module and name, as ``data_loader_fn`` is, so Petastorm need
    not be importable. Two of Petastorm's spellings are normalised: its ``removed_fields``
    default ``[]`` means none (beside ``selected_fields`` it is not a second choice), and an
    edit given as a ``UnischemaField`` (``name, numpy_dtype, shape, codec, nullable``) keeps its
    name, dtype, shape and nullable flag.

    Raises:
        ValueError: The spec's fields are malformed, as :class:`TransformSpec` says.
    """
    kind = type(spec)
    if (getattr(kind, "__module__", None), getattr(kind, "__name__", None)) != PETASTORM_TRANSFORM_SPEC:
        return spec
    edits = []
    for field in getattr(spec, "edit_fields", None) or ():
        if isinstance(field, tuple) and len(field) == 5:  # a UnischemaField: its codec has no meaning here
            name, numpy_dtype, shape, _codec, nullable = field
            field = (name, numpy_dtype, shape, nullable)
        edits.append(tuple(field) if isinstance(field, list) else field)
    return TransformSpec(
        func=getattr(spec, "func", None),
        edit_fields=edits or None,
        removed_fields=getattr(spec, "removed_fields", None) or None,
        selected_fields=getattr(spec, "selected_fields", None),
    )


def series_to_numpy(series: pd.Series, name: str | None = None, *, stack: bool = True) -> np.ndarray:
    """One column of the transform's output as an array with a leading row dimension.

    A column whose cells are equally shaped arrays (decoded images, say) is stacked into one
    ``(rows, *shape)`` array, unless ``stack`` is False; cells of different shapes stay an
    object array, whose nulls are all ``None``. A column of zoned timestamps (pandas' form of
    Spark's) becomes naive ``datetime64`` in UTC, as timestamps are without a transform:
    ``to_numpy`` would give an object array of ``pd.Timestamp``, which no framework takes.
    pandas' nullable numbers and bools (which a column holding nulls arrives as) become their
    NumPy dtype, and a categorical its categories' dtype.

    Raises:
        NullValueError: A number, bool, date or timestamp column holds a missing value (NA,
            NaT): no tensor can hold it, and any number put in its place would be made up.
            A NaN in a float column is a value, not a missing one.
    """
    name = str(series.name) if name is None else name
    given = series.dtype
    if isinstance(series.dtype, pd.CategoricalDtype):  # its values; NumPy would make a null of ints a NaN
        categories = series.dtype.categories.dtype
        if categories.kind in "biufMm":
            _refuse_missing(series, name, given)
        series = series.astype(categories)
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
    nullable = isinstance(series.array, (pd.arrays.IntegerArray, pd.arrays.FloatingArray, pd.arrays.BooleanArray))
    arrow = isinstance(series.dtype, pd.ArrowDtype) and series.dtype.kind in "biuf"
    if nullable or arrow or series.dtype.kind in "Mm":
        _refuse_missing(series, name, given)
        if nullable or arrow:
            converted: np.ndarray = series.to_numpy(dtype=series.dtype.numpy_dtype)  # type: ignore[union-attr]
            return converted
    values = series.to_numpy()
    if stack and values.dtype == object and len(values) and isinstance(values[0], np.ndarray):
        first = values[0].shape
        if all(isinstance(v, np.ndarray) and v.shape == first for v in values):
            stacked: np.ndarray = np.stack(list(values))
            return stacked
    if values.dtype != object and values.dtype.kind not in "biufcMm":
        # other pandas extension types (strings, say) come back as objects.
        values = np.asarray(values, dtype=object)
    if values.dtype == object:
        # Strings and bytes show a null as NaN (pandas 3's strings, pandas' own fills), NA or
        # None; without a transform it is None, so it is here too, never a float among strings.
        missing = pd.isna(values)
        if missing.any():
            values = values.copy()
            values[missing] = None
    return values


def row_array(name: str, value: Any) -> np.ndarray:
    """One row of an array column of the transform's output as one array, a row of equal arrays stacked.

    pandas holds an ``array<array<float>>`` cell as an object array of its inner arrays, and a
    transform that leaves the column alone (or scales it cell by cell) hands those back:
    ``np.asarray`` would keep them objects, no numbers at all. ``tolist`` leaves the inner
    arrays whole and ``np.array`` stacks them, a level at a time, into one ``(length, *inner)``
    array. Objects that are not arrays (None, strings) stay objects, for the caller to refuse.

    Raises:
        ValueError: The row's inner arrays differ in shape, naming the column.
    """
    try:
        row = np.asarray(value)
        while row.dtype == object and row.size:
            stacked = np.array(row.tolist())
            if stacked.dtype == object and stacked.ndim == row.ndim:
                break
            row = stacked
    except ValueError as error:  # NumPy's "inhomogeneous shape"
        raise ValueError(
            f"column {name!r} holds a row whose values differ in shape ({error}): a sequence's values must all share "
            "one shape (an array<array<float>>'s inner arrays one length); keep it so in the transform_fn"
        ) from None
    return row


def _refuse_missing(series: pd.Series, name: str, given: Any) -> None:
    """Raises a NullValueError if a column that becomes numbers, bools or times holds a missing value."""
    missing = int(series.isna().sum())
    if missing:
        raise NullValueError(
            f"column {name!r} ({given}) holds {missing} null value(s) (NA, NaT) after the transform_fn, which a "
            f"tensor cannot represent: fill them in the transform_fn (frame[{name!r}] = frame[{name!r}]"
            ".fillna(...)) or drop those rows there"
        )


# --------------------------------------------------------------------------- the transform's input

_NULLABLE = {
    pa.int8(): pd.Int8Dtype(),
    pa.int16(): pd.Int16Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(),
    pa.uint8(): pd.UInt8Dtype(),
    pa.uint16(): pd.UInt16Dtype(),
    pa.uint32(): pd.UInt32Dtype(),
    pa.uint64(): pd.UInt64Dtype(),
    pa.bool_(): pd.BooleanDtype(),
}
"""pandas' nullable dtype of each Arrow type a column that holds nulls reaches the transform as."""

EXACT_FLOAT = 2**53
"""Integers up to this magnitude are exact in float64, the cells of an integer array with nulls."""


@dataclasses.dataclass(frozen=True)
class GivenArrays:
    """An array column's cells as the transform received them, checked against what it returns.

    Two checks need the given cells. First, nulls: pandas has no nullable form of an array
    cell, so the transform gets what pyarrow makes: NaN (NaT, None) where an element is null,
    in floats for integer arrays, and None for a null array. A transform that leaves those
    cells in place would hand the nulls on as made-up numbers; it must replace them (new cells,
    or these cells filled in place).

    Second, varying lengths: a column of arrays whose length varies is held here with or
    without nulls, with its cells as given. One the transform leaves as it was stays rows of
    varying length, even in a chunk whose rows happen to share one length (a chunk of one row,
    always), which would otherwise be stacked into an array and differ from the other chunks.

    Attributes:
        name: The column.
        cells: ``id(cell) -> (cell, positions of its nulls)`` for each cell holding null elements.
        fixed: Whether the column has a fixed shape: a null array (None) must not stay either,
            as it does not without a transform. (In an array column whose length varies, a null
            array arrives as None with or without a transform.)
        given: A varying column's cells as the transform received them (None for a fixed one);
            held, so that no cell the transform makes can take the id of one of them.
    """

    name: str
    cells: dict[int, tuple[np.ndarray, np.ndarray]]
    fixed: bool
    given: np.ndarray | None = None

    def untouched(self, series: pd.Series) -> bool:
        """Whether every cell of the output column is a cell the transform was given (rows may be dropped)."""
        if self.given is None or series.dtype != object:
            return False
        ids = {id(cell) for cell in self.given if cell is not None}
        return all(cell is None or id(cell) in ids for cell in series.to_numpy())

    def check(self, series: pd.Series) -> None:
        """Raises a NullValueError if the transform's output column still holds a null it was given."""
        if series.dtype != object:
            return  # replaced by a column of another kind
        for cell in series.to_numpy():
            if cell is None and self.fixed:
                self._refuse("a null array (None)")
            entry = self.cells.get(id(cell))
            if entry is not None and entry[0] is cell and bool(pd.isna(cell[entry[1]]).any()):
                self._refuse("null elements")

    def _refuse(self, what: str) -> None:
        raise NullValueError(
            f"column {self.name!r} still holds {what} after the transform_fn: an array column with nulls reaches "
            "the transform with NaN (NaT, None) for a null element, floats for integers, and None for a null array; "
            f"replace those cells in the transform_fn (frame[{self.name!r}] = [np.nan_to_num(cell).astype(...) for "
            f"cell in frame[{self.name!r}]]), or fill or drop the nulls before converting"
        )


def transform_frame(
    table: pa.Table, specs: Mapping[str, ColumnSpec], held: dict[str, GivenArrays] | None = None
) -> pd.DataFrame:
    """A piece as the transform's pandas DataFrame, every value exact, every null visible.

    A column without nulls is what ``to_pandas`` makes (NumPy dtypes, dates as
    ``datetime64[ms]``, timestamps zoned in UTC). A number or bool column that holds nulls
    is pandas' nullable dtype (``Int64``, ``Float32``, ``boolean``): a long stays exact and
    a null stays NA, apart from a float's NaN value; dates and timestamps show a null as NaT.
    A fixed-shape array of two or more dimensions arrives as one N-d array per cell, as it
    would batch: ``to_pandas`` would make each cell an object array of row arrays, which
    the transform's output could no longer stack into a tensor. So does a row of an array of
    fixed-shape arrays whose count varies (:attr:`ColumnSpec.inner`), ``(length, *inner)``,
    unless nulls inside it need ``to_pandas``'s NaN and None to show.

    Args:
        table: The piece.
        specs: The specs of its columns.
        held: Filled with the array columns that hold nulls or vary in length (see
            :class:`GivenArrays`), for :meth:`TransformSpec.apply` to check; None (a
            predicate's frame) skips that.

    Raises:
        NullValueError: An array column holds nulls that no cell can show exactly: nested
            arrays with nulls inside, or integers beyond 2**53 beside a null.
    """
    apart: dict[str, Any] = {}  # columns made one by one, inserted in their place
    arrays = []
    for name in table.column_names:
        spec, column = specs[name], table.column(name)
        if spec.kind == "tensor" and len(spec.shape) > 1:
            if _nulls_below(column) or column.null_count:
                raise _nested_nulls(spec)
            values = to_numpy(spec, column)
            cells = np.empty(len(values), dtype=object)
            for row, value in enumerate(values):  # one view per row: an object column cannot be filled at once
                cells[row] = value
            apart[name] = cells
        elif spec.kind == "scalar" and column.null_count:
            nullable = _nullable(column)
            if nullable is not None:
                apart[name] = nullable
        elif held is not None and spec.kind in ("tensor", "ragged") and is_list_type(column.type):
            arrays.append(name)
        if spec.inner and not _nulls_below(column):  # a row as the loader gives it: one (length, *inner) array
            apart[name] = to_numpy(spec, column)
    frame: pd.DataFrame = table.drop_columns(list(apart)).to_pandas(
        date_as_object=False, coerce_temporal_nanoseconds=False
    )
    for name, cells in apart.items():
        frame.insert(table.schema.get_field_index(name), name, cells)
    for name in arrays:
        cells = frame[name].to_numpy()
        holding = _held(specs[name], table.column(name), cells)
        if specs[name].kind == "ragged":
            holding = GivenArrays(name, {} if holding is None else holding.cells, False, cells)
        if holding is not None:
            held[name] = holding  # type: ignore[index]
    return frame


def _nullable(column: pa.ChunkedArray) -> Any:
    """A number or bool column with nulls as pandas' nullable array; None for other types.

    A float column is built from its values and validity, not by ``to_pandas``, which would
    make its NaN values NA too.
    """
    if pa.types.is_floating(column.type):
        array = column.combine_chunks()
        mask = array.is_null().to_numpy(zero_copy_only=False)
        values = array.fill_null(0).to_numpy(zero_copy_only=False)
        return pd.arrays.FloatingArray(values, mask)
    dtype = _NULLABLE.get(column.type)
    if dtype is None:
        return None
    return column.to_pandas(types_mapper={column.type: dtype}.get).array


def _nulls_below(column: pa.ChunkedArray) -> int:
    """The nulls inside a list column's arrays (elements, and nested arrays), not the null arrays themselves."""
    return sum(level.null_count for level in list_levels(column)[1:])


def _nested_nulls(spec: ColumnSpec) -> NullValueError:
    return NullValueError(
        f"column {spec.name!r} ({spec.arrow_type} in the cache) holds nulls in nested arrays, which reach a "
        "transform_fn in no exact form: fill or drop them before converting (df.fillna / df.dropna)"
    )


def _held(spec: ColumnSpec, column: pa.ChunkedArray, cells: np.ndarray) -> GivenArrays | None:
    """The cells of a list column that hold nulls, as the transform received them; None if it has none."""
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    fixed = spec.kind == "tensor"
    if not _nulls_below(column):
        return GivenArrays(spec.name, {}, fixed) if fixed and array.null_count else None
    values = pc.list_flatten(array)
    if is_list_type(values.type):
        raise _nested_nulls(spec)
    if pa.types.is_integer(values.type) and values.type.bit_width == 64:
        beyond = pc.greater(values, pa.scalar(EXACT_FLOAT, values.type))
        if pa.types.is_signed_integer(values.type):
            beyond = pc.or_(beyond, pc.less(values, pa.scalar(-EXACT_FLOAT, values.type)))
        outside = values.filter(beyond)
        if len(outside):
            raise NullValueError(
                f"column {spec.name!r} ({spec.arrow_type} in the cache) holds nulls beside integers such as "
                f"{outside[0].as_py()}, beyond 2**53: a transform_fn receives an integer array with nulls as float64 "
                "cells, which cannot hold them exactly; fill or drop the nulls before converting (df.fillna / "
                "df.dropna)"
            )
    lengths = pc.list_value_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    ends = np.cumsum(lengths)
    flat = np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))
    rows = np.searchsorted(ends, flat, side="right")
    within = flat - (ends[rows] - lengths[rows])
    held: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for row in np.unique(rows):
        cell = cells[row]
        held[id(cell)] = (cell, within[rows == row])
    return GivenArrays(spec.name, held, fixed)


def _apply_edit(name: str, array: np.ndarray, dtype: Any, shape: tuple[int | None, ...]) -> np.ndarray:
    if dtype is not None and np.dtype(dtype).kind in "biufc":
        array = (
            _cast(name, array, np.dtype(dtype))
            if array.dtype != object
            else _cast_rows(name, array, np.dtype(dtype), shape[1:])
        )
    if shape and None not in shape:
        try:
            array = array.reshape((len(array), *shape))  # type: ignore[arg-type]
        except ValueError as error:
            raise ValueError(
                f"transformed column {name!r} has shape {array.shape[1:]} per row, which cannot be "
                f"reshaped to the edit_fields shape {tuple(shape)}"
            ) from error
    return array


def _cast_rows(name: str, objects: np.ndarray, target: np.dtype, inner: tuple[int | None, ...] = ()) -> np.ndarray:
    """An object column of number arrays or lists (rows of varying length) with each row cast to ``target``.

    Rows come from the transform as Python lists (a tokenizer's ids) or arrays whose dtype NumPy
    infers: ``int64`` for a list of ints, ``float64`` for an empty one; a nested array's rows as
    pandas holds them, object arrays of inner arrays, are stacked first (:func:`row_array`).
    Cast, every chunk has the declared dtype, including one whose rows are all empty, which
    also take the declared ``inner`` shape where it has no ``None``. The values are checked as
    :func:`_cast` checks them, all rows at once. Rows of anything but numbers, rows whose inner
    arrays differ in shape, and nulls (which later steps refuse, naming them), are left as they are.
    """
    try:
        rows = [None if row is None else row_array(name, row) for row in objects]
    except ValueError:  # inner arrays of two shapes: no one dtype to cast to (a sequence refuses them, naming them)
        return objects
    numbers = [row for row in rows if row is not None and row.size and row.dtype.kind in "biuf"]
    if any(row is not None and row.size and row.dtype.kind not in "biuf" for row in rows):
        return objects
    flat = _cast(name, np.concatenate([row.reshape(-1) for row in numbers]), target) if numbers else None
    out = np.empty(len(rows), dtype=object)
    start = 0
    for index, row in enumerate(rows):
        if row is None:
            out[index] = None
        elif not row.size:
            empty = (0, *[size or 0 for size in inner])  # no None here: the declared inner shape
            out[index] = row.astype(target) if len(row) or None in inner else np.zeros(empty, target)
        else:
            out[index] = flat[start : start + row.size].reshape(row.shape)  # type: ignore[index]
            start += row.size
    return out


def _cast(name: str, array: np.ndarray, target: np.dtype) -> np.ndarray:
    """``array`` as ``target``, or a ValueError naming a value that ``target`` cannot hold.

    NumPy's ``astype`` wraps integers (256 as uint8 is 0), makes NaN and out-of-range floats
    ``INT_MIN``, and a finite float beyond float32's range infinite, all without a word. An
    integer target takes finite values in its range (a float's fraction is cut, as ``astype``
    does); a float target takes any value but a finite one it would make infinite.
    """
    if array.dtype == target:
        return array
    source = array.dtype
    outside: Any = None
    if target.kind in "iu" and source.kind in "iuf" and array.size:
        info = np.iinfo(target)
        if source.kind == "f":
            finite = np.isfinite(array)
            if not finite.all():
                value = array[~finite].flat[0]
                raise ValueError(
                    f"TransformSpec edit_fields casts column {name!r} to {target}, but it holds {value}, which "
                    f"{target} cannot hold: fill or drop it in the transform_fn, or cast to a float dtype"
                )
            beyond = (array < float(info.min)) | (array >= float(info.max) + 1)  # both bounds powers of 2: exact
            if beyond.any():
                outside = array[beyond].flat[0]
        elif not np.can_cast(source, target, "safe") and (int(array.min()) < info.min or int(array.max()) > info.max):
            outside = array[(array < info.min) | (array > info.max)].flat[0]
        if outside is not None:
            raise ValueError(
                f"TransformSpec edit_fields casts column {name!r} to {target}, but it holds {outside}, outside "
                f"{target}'s range [{info.min}, {info.max}]: give a wider dtype, or change the value in the "
                "transform_fn"
            )
    with np.errstate(over="ignore", invalid="ignore"):
        cast = array.astype(target)
    if target.kind in "fc" and source.kind in "iuf" and array.size:
        overflowed = np.isinf(cast) & np.isfinite(array)
        if overflowed.any():
            value = array[overflowed].flat[0]
            raise ValueError(
                f"TransformSpec edit_fields casts column {name!r} to {target}, but it holds {value}, beyond {target}'s "
                f"largest finite value {np.finfo(target).max}: give a wider dtype (float64), or scale the values in "
                "the transform_fn"
            )
    return cast
