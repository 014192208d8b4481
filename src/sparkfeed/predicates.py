"""Petastorm's predicates, for the ``predicate`` argument of every loader, one call per row group.

The classes keep the names, constructor arguments and ``get_fields()``/``do_include()``
interface of ``petastorm.predicates``, so a migrating user changes the import only. Their
``do_include`` takes what sparkfeed (and Petastorm's ``make_batch_reader``, which its converter
used) passes: a pandas DataFrame holding the ``get_fields()`` columns of a chunk of rows, and
returns one bool per row. Petastorm's own ``in_set``, ``in_negate``, ``in_reduce`` and
``in_pseudorandom_split`` were written for ``make_reader``'s one row at a time and fail, or
answer once for the whole chunk, on a DataFrame; these answer per row, with the same result for
each row as Petastorm's gives that row.

A plain function of the DataFrame (``predicate=lambda frame: frame["label"] < 5``) works as
well, and for the common comparisons ``filters`` is faster still: Arrow evaluates them without
pandas and skips whole row groups by their statistics.
"""

from __future__ import annotations

import abc
import builtins
import hashlib
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "PredicateBase",
    "in_intersection",
    "in_lambda",
    "in_negate",
    "in_pseudorandom_split",
    "in_reduce",
    "in_set",
]
assert __all__ == sorted(__all__), "keep __all__ sorted"

Mask = np.ndarray
"""One bool per row of the DataFrame a predicate was given."""


class PredicateBase(abc.ABC):
    """Petastorm's base of row predicates: the columns it reads, and which rows it keeps."""

    @abc.abstractmethod
    def get_fields(self) -> set[str]:
        """The names of the columns :meth:`do_include` needs."""

    @abc.abstractmethod
    def do_include(self, values: pd.DataFrame) -> Mask:
        """Which rows of ``values`` (a DataFrame of the :meth:`get_fields` columns) pass, one bool each."""


def as_mask(result: object, rows: int) -> Mask:
    """A predicate's answer as a bool array of ``rows``; anything else is a TypeError saying what came back.

    A boolean Series or array is the answer; pandas' nullable booleans count NA as no match, and
    an object array of bools is taken too. A single bool for the whole chunk, numbers or a wrong
    length are mistakes (often a predicate written for one row at a time), named in the error.
    """
    if isinstance(result, pd.Series) and len(result) == rows and not result.index.equals(pd.RangeIndex(rows)):
        result = _aligned(result, rows)
    if isinstance(result, pd.Series) and result.dtype == "boolean":  # pandas' nullable bool: NA is not a match
        result = result.fillna(False)
    values = result.to_numpy() if isinstance(result, pd.Series) else np.asarray(result)
    if values.dtype == object and values.shape == (rows,) and all(isinstance(v, bool | np.bool_) for v in values):
        values = values.astype(bool)
    if values.dtype != bool or values.shape != (rows,):
        got = (
            f"a {type(result).__name__} of {values.dtype} with shape {values.shape}"
            if values.ndim
            else f"a single {type(result).__name__} ({result!r:.40})"
        )
        raise TypeError(
            f"the predicate returned {got} for a chunk of {rows} rows: it must return one bool per row, a "
            "boolean pandas Series or NumPy array as long as the DataFrame it was given. Petastorm's "
            "make_batch_reader, which its converter used, called do_include with DataFrames too; "
            "sparkfeed.predicates has in_set, in_lambda, in_intersection, in_negate, in_reduce and "
            "in_pseudorandom_split written for them"
        )
    return values


def _aligned(result: pd.Series, rows: int) -> pd.Series:
    """A Series answer in the chunk's row order, by its labels, as ``frame[mask]`` reads it.

    The chunk's DataFrame is labelled ``0 .. rows - 1``. A predicate that sorts or regroups its
    rows (``frame.sort_values("t")["x"].diff() > 0``) answers in another order, which pandas
    aligns by label and position would misread: other rows kept, in silence.

    Raises:
        TypeError: Its labels are not each row's once.
    """
    index = result.index
    if index.is_unique and index.isin(range(rows)).all():
        return result.reindex(pd.RangeIndex(rows))
    raise TypeError(
        f"the predicate returned a Series labelled {list(index[:5])}{'...' if len(index) > 5 else ''} for a chunk "
        f"of {rows} rows labelled 0 to {rows - 1}: its labels must name each row of the DataFrame it was given once "
        "(return the mask computed from that DataFrame, or its .to_numpy() in the DataFrame's order)"
    )


class in_set(PredicateBase):
    """Rows whose ``predicate_field`` value is one of ``inclusion_values``.

    Args:
        inclusion_values: The values to keep.
        predicate_field: The column to test.
    """

    def __init__(self, inclusion_values: Iterable[Any], predicate_field: str) -> None:
        self._inclusion_values = set(inclusion_values)
        self._predicate_field = predicate_field

    def get_fields(self) -> set[str]:
        """The tested column."""
        return {self._predicate_field}

    def do_include(self, values: pd.DataFrame) -> Mask:
        """``value in inclusion_values`` for every row."""
        return as_mask(values[self._predicate_field].isin(self._inclusion_values), len(values))


class in_intersection(PredicateBase):
    """Rows whose ``predicate_field`` list holds at least one of ``inclusion_values``.

    Args:
        inclusion_values: The values any one of which keeps a row.
        _predicate_field: The list (array) column to test; Petastorm's argument name.

    Raises:
        ValueError: From :meth:`do_include`, where a value is not a list, as in Petastorm.
    """

    def __init__(self, inclusion_values: Iterable[Any], _predicate_field: str) -> None:
        self._inclusion_values = list(inclusion_values)
        self._predicate_field = _predicate_field

    def get_fields(self) -> set[str]:
        """The tested column."""
        return {self._predicate_field}

    def do_include(self, values: pd.DataFrame) -> Mask:
        """Whether each row's list and ``inclusion_values`` meet."""
        keep = np.zeros(len(values), dtype=bool)
        for row, cell in enumerate(values[self._predicate_field]):
            if isinstance(cell, str | bytes) or not isinstance(cell, Iterable):
                raise ValueError(f"Predicate field should have iterable type: {self._predicate_field!r} holds {cell!r}")
            keep[row] = bool(np.isin(np.asarray(cell), self._inclusion_values).any())
        return keep


class in_lambda(PredicateBase):
    """Rows for which ``predicate_func`` says so, given the columns as pandas Series.

    As in Petastorm's batch reader, the function receives one Series per field (and
    ``state_arg`` after them, when it is not None) and returns a bool per row:
    ``in_lambda(["label"], lambda label: label < 5)``.

    Args:
        predicate_fields: The columns passed to the function, in this order.
        predicate_func: The function.
        state_arg: An extra last argument, passed only when not None.

    Raises:
        ValueError: ``predicate_fields`` is not a list, as in Petastorm.
    """

    def __init__(self, predicate_fields: list[str], predicate_func: Callable[..., Any], state_arg: Any = None) -> None:
        if not isinstance(predicate_fields, list):
            raise ValueError(f"Predicate fields should be a list, not {predicate_fields!r}")
        self._predicate_fields = predicate_fields
        self._predicate_func = predicate_func
        self._state_arg = state_arg

    def get_fields(self) -> set[str]:
        """The function's columns."""
        return set(self._predicate_fields)

    def do_include(self, values: pd.DataFrame) -> Mask:
        """The function's answer for the chunk."""
        args = [values[field] for field in self._predicate_fields]
        if self._state_arg is not None:
            args.append(self._state_arg)
        return as_mask(self._predicate_func(*args), len(values))


class in_negate(PredicateBase):
    """The rows another predicate leaves out.

    Raises:
        ValueError: ``predicate`` is not a :class:`PredicateBase`.
    """

    def __init__(self, predicate: PredicateBase) -> None:
        if not isinstance(predicate, PredicateBase):
            raise ValueError(f"Predicate is not derived from sparkfeed.predicates.PredicateBase: {predicate!r}")
        self._predicate = predicate

    def get_fields(self) -> set[str]:
        """The other predicate's columns."""
        return self._predicate.get_fields()

    def do_include(self, values: pd.DataFrame) -> Mask:
        """``not`` the other predicate, row by row."""
        return ~as_mask(self._predicate.do_include(values), len(values))


class in_reduce(PredicateBase):
    """Predicates combined row by row: ``in_reduce([a, b], all)`` is AND, ``in_reduce([a, b], any)`` is OR.

    Python's ``all`` and ``any``, which Petastorm's examples pass, are applied per row. Any
    other ``reduce_func`` receives the list of the predicates' bool arrays (one per predicate,
    one bool per row) and must return one bool per row, e.g. ``lambda masks: masks[0] ^ masks[1]``.

    Raises:
        ValueError: An element of ``predicate_list`` is not a :class:`PredicateBase`.
    """

    def __init__(self, predicate_list: Sequence[PredicateBase], reduce_func: Callable[[list[Mask]], Any]) -> None:
        if not all(isinstance(p, PredicateBase) for p in predicate_list):
            raise ValueError("Predicate is not derived from sparkfeed.predicates.PredicateBase")
        self._predicate_list = list(predicate_list)
        self._reduce_func = reduce_func

    def get_fields(self) -> set[str]:
        """Every predicate's columns."""
        fields: set[str] = set()
        for predicate in self._predicate_list:
            fields |= predicate.get_fields()
        return fields

    def do_include(self, values: pd.DataFrame) -> Mask:
        """The predicates' answers, reduced row by row."""
        masks = [as_mask(p.do_include(values), len(values)) for p in self._predicate_list]
        if self._reduce_func is builtins.all:
            return np.logical_and.reduce(masks) if masks else np.ones(len(values), dtype=bool)
        if self._reduce_func is builtins.any:
            return np.logical_or.reduce(masks) if masks else np.zeros(len(values), dtype=bool)
        return as_mask(self._reduce_func(masks), len(values))


def _string_to_bucket(string: str, bucket_num: int) -> int:
    """Petastorm's hash of a value: MD5 of its text, as an integer, modulo ``bucket_num``."""
    return int(hashlib.md5(string.encode("utf-8")).hexdigest(), 16) % bucket_num


class in_pseudorandom_split(PredicateBase):
    """One part of a deterministic split by the hash of a column's value, as Petastorm splits.

    ``in_pseudorandom_split([0.8, 0.2], 0, "id")`` keeps about 80% of the rows and index 1 the
    other 20%: a value's part is decided by the MD5 hash of ``str(value)``, the same hash as
    Petastorm's, so a row lands in the same part as it did there (for a value whose text is the
    same: NumPy scalars print as Python's, a float32 prints shortest, as NumPy does).

    Args:
        fraction_list: The parts' fractions (summing to at most 1).
        subset_index: The part to keep.
        predicate_field: The column whose value is hashed.

    Raises:
        ValueError: ``subset_index`` is out of range, as in Petastorm; from :meth:`do_include`,
            when the column is missing.
    """

    def __init__(self, fraction_list: Sequence[float], subset_index: int, predicate_field: str) -> None:
        if subset_index >= len(fraction_list):
            raise ValueError(f"subset_index is out of range: {subset_index} for {len(fraction_list)} fractions")
        self._predicate_field = predicate_field
        borders = [sum(fraction_list[: i + 1]) for i in range(len(fraction_list))]
        low = borders[subset_index - 1] if subset_index else 0
        self._bucket_low = low * (sys.maxsize - 1)
        self._bucket_high = borders[subset_index] * (sys.maxsize - 1)

    def get_fields(self) -> set[str]:
        """The hashed column."""
        return {self._predicate_field}

    def do_include(self, values: pd.DataFrame) -> Mask:
        """Whether each row's value hashes into the kept part."""
        if self._predicate_field not in values.columns:
            raise ValueError(f"Tested values does not have split key: {self._predicate_field}")
        buckets = [_string_to_bucket(str(value), sys.maxsize) for value in values[self._predicate_field].to_numpy()]
        return np.array([self._bucket_low <= bucket < self._bucket_high for bucket in buckets], dtype=bool)
