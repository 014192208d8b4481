"""The user's transform: a pandas function run in the reader's threads, never the training loop."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

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
            varies (the column is then not reshaped).
        nullable: Petastorm's flag, kept for the tuple's shape; tensors hold no nulls either way.

    Raises:
        ValueError: ``name`` is not a string or ``shape`` is not a sequence of sizes.
    """
    if not isinstance(name, str):
        raise ValueError(f"edit_field name={name!r} is not allowed: it must be the column's name")
    if isinstance(shape, str) or not isinstance(shape, Sequence):
        raise ValueError(f"edit_field shape={shape!r} is not allowed: it must be a tuple of sizes, such as (28, 28)")
    return name, numpy_dtype, tuple(shape), nullable


@dataclasses.dataclass(frozen=True)
class TransformSpec:
    """Petastorm's ``TransformSpec``: a function on a pandas DataFrame plus the schema it produces.

    Args:
        func: Takes a pandas DataFrame holding a chunk of rows and returns a pandas DataFrame, for
            example with image bytes decoded to arrays. It may add, drop or change columns.
        edit_fields: Columns the function adds or changes, as ``(name, numpy_dtype, shape,
            is_nullable)``. Each is cast to its dtype and, when the shape has no ``None``, reshaped
            to ``(rows, *shape)``: this is how a flat array column becomes an image tensor.
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

    def apply(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Runs the function and turns its output into one NumPy array per column."""
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
        edits = {field[0]: field for field in self.edit_fields or ()}
        columns = {}
        for name in frame.columns:
            array = series_to_numpy(frame[name])
            if name in edits:
                _, dtype, shape, _ = edits[name]
                array = _apply_edit(name, array, dtype, shape)
            columns[str(name)] = array
        return columns


def series_to_numpy(series: pd.Series) -> np.ndarray:
    """One column of the transform's output as an array with a leading row dimension.

    A column whose cells are equally shaped arrays (decoded images, say) is stacked into one
    ``(rows, *shape)`` array; cells of different shapes stay an object array. A column of
    zoned timestamps (pandas' form of Spark's) becomes naive ``datetime64`` in UTC, as
    timestamps are without a transform: ``to_numpy`` would give an object array of
    ``pd.Timestamp``, which no framework takes.
    """
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        series = series.dt.tz_convert("UTC").dt.tz_localize(None)
    values = series.to_numpy()
    if values.dtype == object and len(values) and isinstance(values[0], np.ndarray):
        first = values[0].shape
        if all(isinstance(v, np.ndarray) and v.shape == first for v in values):
            stacked: np.ndarray = np.stack(list(values))
            return stacked
    if values.dtype != object and values.dtype.kind not in "biufcMm":
        # pandas extension types (strings, nullable integers) come back as objects.
        return np.asarray(values, dtype=object)
    return values


def _apply_edit(name: str, array: np.ndarray, dtype: Any, shape: tuple[int | None, ...]) -> np.ndarray:
    if dtype is not None and np.dtype(dtype).kind in "biufc" and array.dtype != object:
        array = array.astype(dtype, copy=False)
    if shape and None not in shape:
        try:
            array = array.reshape((len(array), *shape))  # type: ignore[arg-type]
        except ValueError as error:
            raise ValueError(
                f"transformed column {name!r} has shape {array.shape[1:]} per row, which cannot be "
                f"reshaped to the edit_fields shape {tuple(shape)}"
            ) from error
    return array
