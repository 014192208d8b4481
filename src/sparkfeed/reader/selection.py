"""Which columns and rows a reader yields: ``schema_fields`` patterns, ``filters`` and ``predicate``.

Columns are chosen once, against the dataset's names. Rows are chosen in two places:

- at plan time, row groups whose Parquet statistics prove that no row passes ``filters`` are
  left out of the plan (pyarrow's own row-group pruning, on each file's footer), so they are
  never read and the shards split only what may match;
- at read time, each segment's rows are kept or dropped by the Arrow expression and then the
  predicate (:class:`RowFilter`), before the shuffle permutation and any transform.

A filter is a function of a row's values alone, so which rows a segment yields never depends on
how it was cut, resumed or resharded: positions keep counting the segment's unfiltered rows
(see :func:`kept_positions`), and everything the plan and the state know stays exact.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from sparkfeed.cache import FileEntry
from sparkfeed.location import Location
from sparkfeed.options import is_field_predicate
from sparkfeed.predicates import as_mask
from sparkfeed.types import INT96_UNIT, ColumnSpec

Groups = Sequence[tuple[int, int, int]]
"""``(file, row_group, rows)`` for every row group, in file order."""


def select_columns(entries: Sequence[str] | None, names: Sequence[str]) -> list[str] | None:
    """The columns ``schema_fields`` selects, as Petastorm's ``match_unischema_fields`` does, or None for all.

    Each entry is a column's name or a regular expression that must match a whole name
    (``re.fullmatch``, Petastorm's rule since 0.9). An entry that is a name selects only that
    column, so a name holding regex characters (``"a.b"``, ``"x[0]"``) keeps meaning itself,
    where Petastorm would also select ``"axb"``. Columns come in the order of the first entry
    that selects them, each once.

    Raises:
        ValueError: An entry matches no column (the message names it and the columns), or is
            neither a column's name nor a valid regular expression.
    """
    if entries is None:
        return None
    chosen: dict[str, None] = {}
    unmatched: list[str] = []
    for entry in entries:
        if entry in names:
            chosen.setdefault(entry, None)
            continue
        try:
            pattern = re.compile(entry)
        except re.error as error:
            raise ValueError(
                f"schema_fields entry {entry!r} is neither a column of the dataset nor a valid regular expression "
                f"({error}); its columns are {list(names)}"
            ) from error
        matches = [name for name in names if pattern.fullmatch(name)]
        if not matches:
            unmatched.append(entry)
        for name in matches:
            chosen.setdefault(name, None)
    if unmatched:
        raise ValueError(
            f"schema_fields {unmatched} are not columns of the dataset, nor regular expressions matching a whole "
            f"column name; its columns are {list(names)}"
        )
    return list(chosen)


def _empty(specs: Mapping[str, ColumnSpec], names: Sequence[str], rows: int = 0) -> pa.Table:
    """A table of the named columns holding ``rows`` nulls each."""
    return pa.table({name: pa.nulls(rows, specs[name].arrow_type) for name in names})


def _evaluate(expression: pc.Expression, table: pa.Table) -> pa.ChunkedArray:
    """The expression's value on every row of the table."""
    return ds.dataset(table).to_table(columns={"keep": expression}, use_threads=False).column("keep")


def _expression_columns(expression: pc.Expression, specs: Mapping[str, ColumnSpec]) -> list[str]:
    """The columns an expression reads, found by evaluating it on empty tables.

    Arrow has no public way to list an expression's field references; binding it to a table
    without a column fails exactly when it refers to that column. It is also where a filter on
    an unknown column, or of the wrong types, is reported: before anything is read. The types
    are checked on a row of nulls, not on no rows: some mismatches pass Arrow's kernel lookup
    and fail only on a value (a timestamp with a time zone against one without, as a Spark
    timestamp column against ``datetime(2024, 1, 1)``), and would otherwise surface from a
    reader thread after the plan was made.

    Raises:
        ValueError: The expression does not evaluate to a bool on this dataset's columns.
    """
    names = list(specs)
    try:
        result = _evaluate(expression, _empty(specs, names, rows=1))
    except (pa.ArrowException, TypeError) as error:
        detail = " ".join(str(error).split())  # Arrow lists a schema over several lines
        raise ValueError(
            f"filters {expression} cannot be evaluated on this dataset ({detail}); its columns are "
            f"{ {name: str(spec.arrow_type) for name, spec in specs.items()} }"
        ) from error
    if not pa.types.is_boolean(result.type):
        raise ValueError(f"filters {expression} evaluate to {result.type}, not to a bool per row")
    used = []
    for name in names:
        try:
            _evaluate(expression, _empty(specs, [n for n in names if n != name]))
        except (pa.ArrowException, TypeError):
            used.append(name)
    return used


def kept_positions(kept: np.ndarray) -> np.ndarray:
    """For each kept row, the position in the unfiltered rows after it; the last one's is their end.

    A reader's position counts a segment's rows before filtering, so the plan's arithmetic on
    segments (cuts, remainders, reshards) stays exact. After the k-th kept row of a chunk, the
    position is just past that row; after the last kept row it is the end of the chunk, rows
    dropped after it included, so that a finished segment reads as finished.
    """
    positions = np.flatnonzero(kept) + 1
    if len(positions):
        positions[-1] = len(kept)
    return positions


def _holds_floats(type_: pa.DataType) -> bool:
    """Whether a column's values are, or nest, floating-point numbers: their statistics say nothing of NaN."""
    if pa.types.is_floating(type_):
        return True
    if pa.types.is_struct(type_):
        return any(_holds_floats(field.type) for field in type_)
    if pa.types.is_map(type_):
        return _holds_floats(type_.key_type) or _holds_floats(type_.item_type)
    value = getattr(type_, "value_type", None)  # lists of every kind, dictionaries
    return value is not None and _holds_floats(value)


@dataclasses.dataclass(frozen=True)
class RowFilter:
    """The rows a reader keeps: an Arrow expression, then a predicate, each optional.

    Made by :meth:`build`, which checks both against the dataset. It pickles (for worker
    processes) when the predicate does.

    Attributes:
        expression: ``filters`` as one Arrow expression, or None.
        predicate: The user's predicate, or None.
        predicate_fields: The columns a ``get_fields()`` predicate's frame holds; None for a
            plain function, which receives the selected columns.
        selected: The columns the reader yields.
        extra: Columns read only to filter by, dropped before the transform and the batches.
        expression_columns: The columns the expression reads (for pruning).
    """

    expression: pc.Expression | None
    predicate: Any
    predicate_fields: tuple[str, ...] | None
    selected: tuple[str, ...]
    extra: tuple[str, ...]
    expression_columns: tuple[str, ...]

    @classmethod
    def build(
        cls, expression: pc.Expression | None, predicate: Any, specs: Mapping[str, ColumnSpec], selected: Sequence[str]
    ) -> RowFilter | None:
        """The filter of a reader of ``selected`` of the dataset's columns ``specs``; None when it keeps every row.

        Raises:
            ValueError: The expression cannot be evaluated on the dataset, or a predicate's
                ``get_fields()`` names no column or a column the dataset does not have.
        """
        if expression is None and predicate is None:
            return None
        used = _expression_columns(expression, specs) if expression is not None else []
        fields = None
        if predicate is not None and is_field_predicate(predicate):
            asked = predicate.get_fields()
            if isinstance(asked, str) or not asked:
                raise ValueError(
                    f"the predicate's get_fields() returned {asked!r}: it must name at least one column, as a set "
                    "or list of names (as in Petastorm)"
                )
            unknown = sorted(str(name) for name in asked if name not in specs)
            if unknown:
                raise ValueError(
                    f"the predicate's get_fields() names {unknown}, which are not columns of the dataset; "
                    f"its columns are {list(specs)}"
                )
            fields = tuple(name for name in specs if name in set(asked))  # dataset order: sets have none
        needed = {*used, *(fields or ())}
        extra = tuple(name for name in specs if name in needed and name not in selected)
        return cls(expression, predicate, fields, tuple(selected), extra, tuple(used))

    @property
    def description(self) -> str | None:
        """The expression as text, for the reader state's identity."""
        return None if self.expression is None else str(self.expression)

    def mask(self, table: pa.Table, to_frame: Callable[[pa.Table], pd.DataFrame]) -> np.ndarray:
        """Which rows of ``table`` (selected and extra columns) pass: the expression, then the predicate.

        The predicate sees only the rows the expression kept, in a pandas DataFrame made by
        ``to_frame`` (the transform's conversion, so it sees what a transform would).
        """
        keep = np.ones(table.num_rows, dtype=bool)
        if self.expression is not None:
            try:
                evaluated = _evaluate(self.expression, table)
            except pa.ArrowInvalid as error:  # a value the comparison's cast cannot hold: only the rows show it
                error.add_note(
                    f"sparkfeed: raised by Arrow evaluating filters {self.expression} on rows of the columns "
                    f"{ {name: str(table.schema.field(name).type) for name in self.expression_columns} }: Arrow "
                    "casts both sides of a comparison to one type and refuses a value that type cannot hold "
                    "exactly (an int64 beyond 2**53 against a float, a uint64 beyond 2**63 against an int); "
                    "write the value in the column's own type, e.g. pa.scalar(5, pa.uint64())"
                )
                raise
            keep = evaluated.fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
        if self.predicate is not None and keep.any():
            passed = table.filter(pa.array(keep)) if not keep.all() else table
            fields = list(self.selected if self.predicate_fields is None else self.predicate_fields)
            frame = to_frame(passed.select(fields))
            try:
                answer = self.predicate(frame) if self.predicate_fields is None else self.predicate.do_include(frame)
            except Exception as error:
                error.add_note(
                    f"sparkfeed: raised by the predicate, given a pandas DataFrame of {len(frame)} rows and the "
                    f"columns {fields} (one call per row group, not one per row)"
                )
                raise
            keep[keep] = as_mask(answer, passed.num_rows)
        return keep

    def prune(
        self, groups: Groups, files: Sequence[FileEntry], root: Location, specs: Mapping[str, ColumnSpec]
    ) -> list[tuple[int, int, int]]:
        """The row groups that Parquet statistics cannot rule out, in the same order.

        pyarrow reads each file's footer and compares the expression with every row group's
        min/max/null counts (and a hive partition's values). A file whose stored type of a
        filtered column differs from the type the reader filters (a cast on read, a packed
        tensor) keeps all its row groups: its statistics are of other values. So does a file
        whose filtered columns hold floating-point values: Parquet's min/max leave NaN out, so
        a group of 1.0 and NaN reads as all 1.0 and ``x != 1.0`` or ``is_nan()`` would rule out
        its NaN rows.

        Any other error of pyarrow's (an expression the statistics cannot decide) keeps every
        row group of the file, on every rank alike: pruning only saves reads.

        Raises:
            OSError: A footer could not be read (a network error, say).
                Going on with every row group of that file would plan other row groups than a
                rank that read it, and the shards would no longer split the rows: the error is
                raised, with a note naming the file.
        """
        if self.expression is None:
            return list(groups)
        fs, base = root.filesystem, root.path
        parquet = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(coerce_int96_timestamp_unit=INT96_UNIT))
        possible: dict[int, set[int] | None] = {}
        for file in sorted({file for file, _, _ in groups}):
            entry = files[file]
            try:
                partition = pc.scalar(True)
                for name, value in entry.partition.items():
                    partition = partition & (pc.field(name) == pa.scalar(value, specs[name].arrow_type))
                fragment = parquet.make_fragment(f"{base}/{entry.path}", fs, partition_expression=partition)
                physical = fragment.physical_schema
                stored = [name for name in self.expression_columns if name not in entry.partition]
                if any(
                    name in entry.packed
                    or physical.get_field_index(name) < 0
                    or physical.field(name).type != specs[name].arrow_type
                    or _holds_floats(specs[name].arrow_type)
                    for name in stored
                ):
                    possible[file] = None
                    continue
                schema = pa.schema([*physical, *(pa.field(name, specs[name].arrow_type) for name in entry.partition)])
                possible[file] = {group.id for group in fragment.subset(self.expression, schema=schema).row_groups}
            except OSError as error:  # pyarrow's I/O errors too: what one rank meets, its peers may not
                error.add_note(
                    f"sparkfeed: raised while reading the footer of {base}/{entry.path} to leave out the row groups "
                    "that the filters' statistics rule out; the reader stops rather than plan every row group of "
                    "that file, which would give it other shards than its peers: make the loader again"
                )
                raise
            except pa.ArrowException:  # the same on every rank (an expression statistics cannot decide)
                possible[file] = None  # pruning only saves reads: the rows are filtered as read
        return [
            (file, group, rows) for file, group, rows in groups if (kept := possible[file]) is None or group in kept
        ]
