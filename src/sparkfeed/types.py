"""How each column travels: Spark type → cached Parquet/Arrow type → NumPy array → tensor.

The Spark half (:func:`normalize_dataframe`) runs once, before the cache is written, so that
the reader never pays for a cast. The Arrow half (:class:`ColumnSpec`, :func:`to_numpy`) runs
in the reader's threads for every row-group piece and is vectorised: no per-row Python for
anything a tensor can hold. The framework half (:class:`FrameworkView`) is the one policy every
adapter follows from NumPy to its tensors, so that a date is the same number in torch, TF and
JAX, and the same problem raises the same error (:class:`NullValueError`,
:class:`UnsupportedTypeError`) whichever framework meets it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sparkfeed.writer import ShapeStats, is_list_type, list_levels

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame
    from pyspark.sql.types import DataType

Kind = Literal["scalar", "tensor", "ragged", "object"]
"""scalar: one number/date per row; tensor: a fixed-shape array per row; ragged: arrays whose
length varies (an object array of NumPy arrays); object: strings and bytes."""


class UnsupportedTypeError(TypeError):
    """A column whose type has no tensor representation; the message says what to do.

    A ``TypeError``, so that code written for the plain errors Petastorm raised keeps catching it.
    """


# --------------------------------------------------------------------------- Spark side


def _refuse_repeated_names(df: DataFrame) -> None:
    """Refuses columns of one name (a join keeps both sides' ``x``): a batch is a dict by name.

    Spark itself failed on them with a page of ``AMBIGUOUS_REFERENCE`` that did not say what to
    do. Names that differ in case only are one name too, unless ``spark.sql.caseSensitive``.
    """
    sensitive = str(df.sparkSession.conf.get("spark.sql.caseSensitive", "false")).lower() == "true"
    seen: dict[str, list[str]] = {}
    for name in df.columns:
        seen.setdefault(name if sensitive else name.lower(), []).append(name)
    repeated = [names for names in seen.values() if len(names) > 1]
    if repeated:
        shown = "; ".join(" and ".join(repr(n) for n in names) for names in repeated)
        raise ValueError(
            f"the DataFrame has more than one column of the same name ({shown}"
            f"{'' if sensitive else ', which Spark compares ignoring case'}), as a join keeps both sides' columns; "
            "a batch is a dict of columns by name: rename or drop them before converting "
            "(df.toDF(*new_names), or select with .alias)"
        )


def normalize_dataframe(df: DataFrame, dtype: str | None) -> DataFrame:
    """Rewrites columns into types that Parquet, Arrow and tensors share.

    MLlib vectors become float arrays, floating columns take ``dtype``, decimals become floats.
    Every unsupported column is reported at once, before any work is done.

    A float32 cast that would make a finite double infinite fails the job (see
    :func:`_overflows`). That check reads the cast values several times, so it runs in a
    projection of its own over the cast columns: in the same projection Spark would cast
    (or run ``vector_to_array``) once per reference, which made converting vectors 1.7x slower.
    Spark does not merge the two projections, since that would repeat the casts.

    Scalar columns are written as SQL text, parsed in one call: pyspark 4 makes some 14 calls
    into the JVM for every Column function (it records the Python call site), so building
    1,000 double columns' casts and checks as Columns took 19 s, several times Spark's own write.
    """
    from pyspark.sql import functions as F

    if not df.schema.fields:  # Spark's own writer refused it with a page of EMPTY_SCHEMA_NOT_SUPPORTED_FOR_DATASOURCE
        raise ValueError(
            "the DataFrame has no columns (df.select() with no column, say), and a batch is a dict of columns: "
            "select at least one column before converting"
        )
    _refuse_repeated_names(df)
    normalized: list[_Normalized] = []
    errors: list[str] = []
    for field in df.schema.fields:
        try:
            normalized.append(_normalize_column(field.name, field.dataType, dtype))
        except UnsupportedTypeError as error:
            errors.append(str(error))
    if errors:
        raise UnsupportedTypeError("\n".join(errors))
    checked = [one for one in normalized if one.overflow is not None or one.overflow_sql is not None]
    if not checked:
        return _select(df, [one.selected() for one in normalized])
    taken = {name.lower() for name in df.columns}  # Spark resolves names regardless of case by default
    kept = {one.name: _fresh_name(f"__sparkfeed_source_{number}", taken) for number, one in enumerate(checked)}
    cast = _select(
        df,
        [
            *(one.selected() for one in normalized),
            *(one.kept_source(kept[one.name]) for one in checked),
        ],
    )
    out: list[str | Column] = []
    for one in normalized:
        name, source = quote_name(one.name), kept.get(one.name)
        if source is None:
            out.append(name)
        elif one.overflow_sql is not None:
            overflow = one.overflow_sql(name, quote_name(source))
            out.append(f"CASE WHEN {overflow} THEN raise_error({_sql_string(one.advice)}) ELSE {name} END AS {name}")
        else:
            assert one.overflow is not None
            column = F.col(name)
            overflow_column = one.overflow(column, F.col(quote_name(source)))
            out.append(F.when(overflow_column, F.raise_error(F.lit(one.advice))).otherwise(column).alias(one.name))
    return _select(cast, out)


def _select(df: DataFrame, columns: Sequence[str | Column]) -> DataFrame:
    """``df.select`` of Columns and SQL text (``"expr AS name"``): all text is one ``selectExpr``."""
    from pyspark.sql import functions as F

    if all(isinstance(column, str) for column in columns):
        return df.selectExpr(*columns)  # type: ignore[arg-type]
    return df.select(*(F.expr(column) if isinstance(column, str) else column for column in columns))


def _sql_string(text: str) -> str:
    """``text`` as a SQL string expression, whatever Spark's escaping settings: a hex literal cast."""
    return f"CAST(X'{text.encode().hex()}' AS STRING)"


@dataclasses.dataclass(frozen=True)
class _Normalized:
    """One column as :func:`normalize_dataframe` writes it.

    Attributes:
        name: The column.
        values: Its values in the cache's type: SQL text, or a Column where SQL cannot say it.
        source: The column before a cast that may overflow, kept for ``overflow``.
        overflow: ``(cast values, source) ->`` whether a finite value became infinite; None
            when no value can, or where ``overflow_sql`` checks.
        advice: The error the job fails with where one did.
        overflow_sql: ``overflow`` as SQL text, of the cast's and the source's quoted names.
    """

    name: str
    values: Column | str
    source: Column | None = None
    overflow: Callable[[Column, Column], Column] | None = None
    advice: str = ""
    overflow_sql: Callable[[str, str], str] | None = None

    def selected(self) -> str | Column:
        """The values under the column's name, for :func:`_select`."""
        if isinstance(self.values, str):
            return f"{self.values} AS {quote_name(self.name)}"
        return self.values.alias(self.name)

    def kept_source(self, kept: str) -> str | Column:
        """The source column under the name ``kept``, for the overflow check after the cast."""
        if self.overflow_sql is not None:
            return f"{quote_name(self.name)} AS {quote_name(kept)}"
        assert self.source is not None
        return self.source.alias(kept)


def _fresh_name(name: str, taken: set[str]) -> str:
    """``name``, lengthened until no name of ``taken`` (lower case) is it in any case: Spark would find both."""
    while name.lower() in taken:
        name += "_"
    taken.add(name.lower())
    return name


def _normalize_column(name: str, data_type: DataType, dtype: str | None) -> _Normalized:
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    quoted = quote_name(name)
    if _is_vector(data_type):
        column = F.col(quoted)
        # vector_to_array fails on a null deep inside Spark, naming nothing; a null array instead
        # reaches the reader, whose error names the column (or a transform may fill it).
        values = F.when(column.isNull(), F.lit(None)).otherwise(vector_to_array(column, dtype=dtype or "float64"))
        if dtype != "float32":
            return _Normalized(name, values)
        doubles, floats = T.ArrayType(T.DoubleType()), T.ArrayType(T.FloatType())

        def vector_overflows(cast: Column, source: Column) -> Column:
            exact = vector_to_array(source, dtype="float64")  # evaluated only where an infinity appeared
            overflow = _overflows(cast, exact, doubles, floats)
            assert overflow is not None  # doubles to floats may overflow
            return overflow

        return _Normalized(name, values, column, vector_overflows, _overflow_advice(name))
    target = _normalized_type(name, data_type, dtype)
    if target == data_type:
        return _Normalized(name, quoted)
    if not isinstance(target, T.ArrayType):  # an array's check needs a lambda, and its SQL cast loses containsNull
        cast_sql = f"CAST({quoted} AS {target.simpleString()})"
        if not _can_overflow(data_type, target):
            return _Normalized(name, cast_sql)
        advice = _advice(name, target)
        return _Normalized(name, cast_sql, advice=advice, overflow_sql=_scalar_overflow_sql(data_type))
    column = F.col(quoted)
    if not _can_overflow(data_type, target):
        return _Normalized(name, column.cast(target))
    advice = _advice(name, target)

    def overflows(cast: Column, source: Column) -> Column:
        overflow = _overflows(cast, source, data_type, target)
        assert overflow is not None
        return overflow

    return _Normalized(name, column.cast(target), column, overflows, advice)


def _advice(name: str, target: DataType) -> str:
    """What to do about an overflow of ``name``: formatted only for a cast that can overflow."""
    from pyspark.sql import types as T

    leaf = target
    while isinstance(leaf, T.ArrayType):
        leaf = leaf.elementType
    return _overflow_advice(name) if isinstance(leaf, T.FloatType) else _double_overflow_advice(name)


def _scalar_overflow_sql(source: DataType) -> Callable[[str, str], str]:
    """:func:`_overflows` of a scalar column in SQL text: ``(cast, source) ->`` the condition."""
    from pyspark.sql import types as T

    infinity = "CAST('Infinity' AS DOUBLE)"
    if isinstance(source, T.DoubleType):
        return lambda cast, value: f"(abs({cast}) = {infinity} AND abs({value}) != {infinity})"
    return lambda cast, value: f"(abs({cast}) = {infinity})"  # a decimal is always finite


FLOAT32_OVERFLOW = "column {name!r} holds a finite value beyond float32's range (about 3.4e38), which dtype='float32' "
"""The start of the error of a value that a float32 cast would make infinite."""


def _overflow_advice(name: str) -> str:
    return (
        FLOAT32_OVERFLOW.format(name=name) + "would make infinite: convert with dtype='float64' (or dtype=None to "
        "keep each column's own precision), or scale the column"
    )


def _double_overflow_advice(name: str) -> str:
    return (
        f"column {name!r} holds a decimal beyond float64's range (about 1.8e308), which would become infinite: "
        f"scale it down in Spark's decimal arithmetic first, convert it to a string (F.col('{name}').cast('string')), "
        f"or leave it out with df.drop('{name}')"
    )


_FLOAT_DIGITS = {"float": 38, "double": 308}
"""The most integer digits (precision - scale) of a decimal whose every value is finite as each float type.

A decimal's values are below ``10**(precision - scale)``, and 10**38 < 3.4e38, 10**308 < 1.8e308."""


def _overflows(cast: Column, column: Column, source: DataType, target: DataType) -> Column | None:
    """Whether a value of ``cast`` (``column`` as ``target``) is infinite where ``column``'s is not (None: never).

    A decimal of a negative scale (Spark's ``spark.sql.legacy.allowNegativeScaleOfDecimal``)
    reaches beyond 10**38: ``DecimalType(1, -45)`` holds 1e45, which Spark's cast to float makes
    ``inf`` without a word (and to double beyond 10**308).
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if not _can_overflow(source, target):
        return None
    if isinstance(source, T.ArrayType) and isinstance(target, T.ArrayType):
        pairs = F.arrays_zip(cast.alias("cast"), column.alias("value"))  # both arrays of one length
        exact = F.exists(
            pairs,
            lambda pair: F.coalesce(
                _overflows(pair["cast"], pair["value"], source.elementType, target.elementType),  # type: ignore[arg-type]
                F.lit(False),
            ),
        )
        if isinstance(target.elementType, T.ArrayType):
            return exact
        # A lambda per value is interpreted, and doubled the time of converting vectors: it runs
        # only on arrays where an infinity appeared (And stops at a false left side).
        infinity = F.lit(float("inf"))
        appeared = F.array_contains(cast, infinity) | F.array_contains(cast, -infinity)
        return F.coalesce(appeared, F.lit(False)) & exact  # null arrays (null AND x evaluates x) skip it too
    if isinstance(source, T.DoubleType):
        infinity = F.lit(float("inf"))
        return (F.abs(cast) == infinity) & (F.abs(column) != infinity)
    return F.abs(cast) == F.lit(float("inf"))  # a decimal is always finite


def _can_overflow(source: DataType, target: DataType) -> bool:
    """Whether a cast of ``source`` to ``target`` can make a finite value infinite, from the types alone.

    Asked of every column before :func:`_overflows` builds a check: building one costs some 25
    calls into Spark's JVM, which made a 1,000-column DataFrame's conversion seconds slower for
    an answer the types give.
    """
    from pyspark.sql import types as T

    if isinstance(source, T.ArrayType) and isinstance(target, T.ArrayType):
        return _can_overflow(source.elementType, target.elementType)
    if isinstance(target, T.FloatType) and isinstance(source, T.DoubleType):
        return True
    digits = _FLOAT_DIGITS.get(target.typeName())  # of float and double only
    # decimals of up to 38 integer digits and narrower floats never reach 3.4e38
    return isinstance(source, T.DecimalType) and digits is not None and source.precision - source.scale > digits


def quote_name(name: str) -> str:
    """A column name as Spark's parser reads it literally: in backticks, inner backticks doubled."""
    return "`" + name.replace("`", "``") + "`"


def _is_vector(data_type: DataType) -> bool:
    # Both pyspark.ml.linalg.VectorUDT and pyspark.mllib.linalg.VectorUDT.
    return type(data_type).__name__ == "VectorUDT"


def _normalized_type(name: str, data_type: DataType, dtype: str | None) -> DataType:
    from pyspark.sql import types as T

    float_type: T.DataType = T.FloatType() if dtype == "float32" else T.DoubleType()
    if isinstance(data_type, (T.FloatType, T.DoubleType)):
        return float_type if dtype else data_type
    if isinstance(data_type, T.DecimalType):
        return float_type
    if isinstance(
        data_type,
        (
            T.BooleanType,
            T.ByteType,
            T.ShortType,
            T.IntegerType,
            T.LongType,
            T.StringType,
            T.BinaryType,
            T.DateType,
            T.TimestampType,
            T.TimestampNTZType,
        ),
    ):
        return data_type
    if isinstance(data_type, T.ArrayType):
        if _is_vector(data_type.elementType):
            raise UnsupportedTypeError(
                f"column {name!r} has Spark type {data_type.simpleString()}, an array of vectors, which "
                f"sparkfeed cannot convert: explode it with F.explode('{name}') and convert each vector, "
                "or build one fixed-size array column per row instead"
            )
        try:
            element = _normalized_type(name, data_type.elementType, dtype)
        except UnsupportedTypeError:
            # The element's own advice (df.select('c.*'), F.map_keys('c')) fails on an array of them.
            raise UnsupportedTypeError(
                f"column {name!r} has Spark type {data_type.simpleString()}, an array of elements that sparkfeed "
                f"cannot turn into a tensor: serialize it with F.to_json('{name}'), or turn each element into a "
                f"number or string with F.transform('{name}', lambda x: ...), or drop it with df.drop('{name}')"
            ) from None
        return T.ArrayType(element, data_type.containsNull)
    hint = {
        "StructType": f"flatten it with df.select('{name}.*') or serialize it with F.to_json('{name}')",
        "MapType": f"serialize it with F.to_json('{name}'), or split keys and values with "
        f"F.map_keys('{name}') and F.map_values('{name}')",
        "NullType": f"cast it to a concrete type, e.g. F.col('{name}').cast('float')",
    }.get(
        type(data_type).__name__,
        f"cast it to a supported type, e.g. F.col('{name}').cast('long') or .cast('string'), "
        "or drop it with df.drop(...)",
    )
    raise UnsupportedTypeError(
        f"column {name!r} has Spark type {data_type.simpleString()}, which sparkfeed cannot turn into a tensor: {hint}"
    )


# --------------------------------------------------------------------------- Arrow side


def _is_numeric(data_type: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(data_type)
        or pa.types.is_floating(data_type)
        or pa.types.is_boolean(data_type)
        or pa.types.is_date(data_type)
        or pa.types.is_timestamp(data_type)
    )


INT96_UNIT = "us"
"""The unit Parquet's INT96 timestamps (Spark's default output type for years) are read in: Spark's.
pyarrow's default, nanoseconds, wraps every time outside 1677-2262 in silence: 9999-12-31, a
common "no end" date, read as 1816-03-29. Every Parquet read passes it."""


def normalize_arrow_type(name: str, data_type: pa.DataType, dtype: str | None) -> pa.DataType:
    """The Arrow twin of :func:`normalize_dataframe`, for Parquet that sparkfeed did not write.

    A dictionary-encoded column (a pandas categorical written by pyarrow) is its values: the
    encoding is how the file stores them, not what a row holds.
    """
    if pa.types.is_dictionary(data_type):
        return normalize_arrow_type(name, data_type.value_type, dtype)
    if pa.types.is_floating(data_type) or pa.types.is_decimal(data_type):
        if dtype:
            return pa.float32() if dtype == "float32" else pa.float64()
        return pa.float64() if pa.types.is_decimal(data_type) or pa.types.is_float16(data_type) else data_type
    if is_list_type(data_type):
        value_type = normalize_arrow_type(name, data_type.value_type, dtype)
        if value_type == data_type.value_type:
            return data_type
        return pa.list_(value_type)
    if _is_numeric(data_type) or _is_object(data_type):
        return data_type
    raise UnsupportedTypeError(
        f"column {name!r} has Arrow type {data_type}, which sparkfeed cannot turn into a tensor: "
        "leave it out with schema_fields, or rewrite the dataset with that column flattened, serialized to a "
        "string, or dropped"
    )


def readable_type(schema: pa.Schema, name: str) -> bool:
    """Whether column ``name`` has a type sparkfeed turns into a tensor (see :func:`normalize_arrow_type`)."""
    try:
        normalize_arrow_type(name, schema.field(name).type, None)
    except UnsupportedTypeError:
        return False
    return True


def cast_column(name: str, column: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    """A column of Parquet that sparkfeed did not write, cast to its normalized type (see :func:`normalize_arrow_type`).

    Arrow's cast, as NumPy's, makes a double beyond float32's range ``inf`` without a word;
    where one became infinite, the read is refused, as the Spark conversion is.

    Raises:
        OverflowError: A finite value would become infinite as float32.
    """
    if pa.types.is_dictionary(column.type):  # decoded first: its values are what the rows hold
        column = column.cast(column.type.value_type)
        if column.type == target:
            return column
    source_leaf, target_leaf = leaf_type(column.type), leaf_type(target)
    if pa.types.is_decimal(source_leaf):
        cast = pa.chunked_array([_decimals_as_floats(chunk, target) for chunk in column.chunks], type=target)
    else:
        cast = column.cast(target)
    narrowing = pa.types.is_float32(target_leaf) and (
        pa.types.is_float64(source_leaf) or pa.types.is_decimal(source_leaf)
    )
    if not narrowing or not len(cast):
        return cast
    values, before = list_levels(cast)[-1], list_levels(column)[-1]
    infinite = pc.is_inf(values)
    if not pc.any(infinite).as_py():  # the usual case: one pass over the values cast
        return cast
    grew = pc.and_(infinite, pc.invert(pc.is_inf(before))) if pa.types.is_floating(before.type) else infinite
    if pc.any(grew).as_py():
        value = before.filter(grew)[0].as_py()
        raise OverflowError(_overflow_advice(name).replace("holds a finite value", f"holds {value}, a finite value", 1))
    return cast


def _decimals_as_floats(array: pa.Array, target: pa.DataType) -> pa.Array:
    """Decimals (or lists of them) as the floats nearest their values, which Arrow's cast misses.

    Arrow's cast multiplies the unscaled integer by a rounded ``10**-scale``: ``0.70`` became
    0.7000000000000001, and so did 14% of random decimals of three places, where Spark's own
    conversion and ``float(Decimal(...))`` give the nearest double. Up to 15 digits the unscaled
    integer and the power of ten are exact doubles, so one division is correctly rounded (21 ns
    a value here, against Arrow's 6); otherwise Arrow writes each decimal out and parses it back,
    correctly rounded (120 ns a value). Float32 is then the float64 rounded again.
    """
    decimal = array.type
    if (
        pa.types.is_decimal128(decimal)
        and decimal.precision <= _EXACT_DIGITS
        and abs(decimal.scale) <= _EXACT_DIGITS
        and pa.types.is_floating(target)
    ):
        words = np.frombuffer(array.buffers()[1], dtype=np.int64, count=2 * (array.offset + len(array)))
        unscaled = words[2 * array.offset :: 2]  # little-endian: the low word holds any value of 18 digits or fewer
        scale = decimal.scale  # one exact power of ten: divided by, or multiplied by for a negative scale
        values = unscaled / 10.0**scale if scale >= 0 else unscaled * 10.0**-scale
        mask = array.is_null().to_numpy(zero_copy_only=False) if array.null_count else None
        return pa.array(values, type=pa.float64(), mask=mask).cast(target)
    return array.cast(_with_leaf(decimal, pa.string())).cast(target)


_EXACT_DIGITS = 15
"""Decimal digits every one of which a double holds exactly (2**53 > 10**15), and powers of ten up to 10**22."""


def _with_leaf(data_type: pa.DataType, leaf: pa.DataType) -> pa.DataType:
    """``data_type`` with its innermost values of type ``leaf`` (lists as ``list``, as :func:`normalize_arrow_type`)."""
    return pa.list_(_with_leaf(data_type.value_type, leaf)) if is_list_type(data_type) else leaf


def _is_object(data_type: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_binary(data_type)
        or pa.types.is_large_binary(data_type)
        or pa.types.is_fixed_size_binary(data_type)
    )


def list_depth(data_type: pa.DataType) -> int:
    """How many list levels a type nests: 1 for ``list<float>``, 2 for ``list<list<float>>``."""
    depth = 0
    while is_list_type(data_type):
        data_type, depth = data_type.value_type, depth + 1
    return depth


def leaf_type(data_type: pa.DataType) -> pa.DataType:
    """The type under every list level: ``float`` for ``list<list<float>>``."""
    while is_list_type(data_type):
        data_type = data_type.value_type
    return data_type


@dataclasses.dataclass(frozen=True)
class ColumnSpec:
    """What the reader makes of one column.

    Attributes:
        name: The column name.
        arrow_type: The type the reader casts the column to before it reaches NumPy.
        kind: See :data:`Kind`.
        shape: The per-row shape of a ``tensor`` column, ``()`` otherwise.
        inner: For a ``ragged`` array of arrays of numbers whose levels below the first are of
            one length across the dataset (``array<array<float>>`` of 3-vectors, varying in
            count): that shape, ``(3,)``; each row is then one ``(length, *inner)`` array, as a
            torch tensor or ``pad_sequence`` wants it. ``()`` otherwise.
    """

    name: str
    arrow_type: pa.DataType
    kind: Kind
    shape: tuple[int, ...] = ()
    inner: tuple[int, ...] = ()

    @classmethod
    def build(cls, name: str, arrow_type: pa.DataType, stats: ShapeStats | None) -> ColumnSpec:
        """Classifies a column from its (normalized) type and, for lists, its shape stats."""
        if _is_object(arrow_type):
            return cls(name, arrow_type, "object")
        if not is_list_type(arrow_type):
            return cls(name, arrow_type, "scalar")
        if stats and _is_numeric(leaf_type(arrow_type)) and all(low == high for low, high in stats):
            return cls(name, arrow_type, "tensor", tuple(low or 0 for low, _ in stats))
        inner = stats[1:] if stats else []
        if inner and _is_numeric(leaf_type(arrow_type)) and all(low == high is not None for low, high in inner):
            return cls(name, arrow_type, "ragged", inner=tuple(int(low) for low, _ in inner))  # type: ignore[arg-type]
        return cls(name, arrow_type, "ragged")

    @property
    def numpy_dtype(self) -> np.dtype:
        """The NumPy dtype of the column's values (``object`` for strings, bytes, ragged arrays)."""
        if self.kind in ("object", "ragged"):
            return np.dtype(object)
        leaf = leaf_type(self.arrow_type)
        if pa.types.is_date32(leaf):
            return np.dtype("datetime64[D]")
        if pa.types.is_timestamp(leaf):  # pandas would say datetime64[us, UTC]; NumPy has no zones
            return np.dtype(f"datetime64[{leaf.unit}]")
        return np.dtype(leaf.to_pandas_dtype())  # type: ignore[no-any-return]

    def view(self, framework: Framework, *, x64: bool = True) -> FrameworkView:
        """How this column reaches ``framework``: see :func:`framework_view`."""
        return framework_view(self.name, self.numpy_dtype, self.shape, framework, self.kind == "ragged", x64)


class NullValueError(ValueError):
    """A null in a column that must become a tensor; the message names the column and what to do.

    A ``ValueError``, so that ``except ValueError`` keeps catching it.
    """


def to_numpy(spec: ColumnSpec, column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Converts one column of a row-group piece, zero-copy where Arrow allows.

    Raises:
        NullValueError: The column would reach a tensor but holds nulls.
    """
    if isinstance(column, pa.ChunkedArray):  # combine_chunks copies even a single chunk
        array = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    else:
        array = column
    if spec.kind == "ragged" and _is_numeric(leaf_type(array.type)):
        # A null array is None, as a null string is; a null inside one has no place in its
        # values: pyarrow would make the column's cells float (2**53 + 1 another number) and it NaN.
        for inner in list_levels(array)[1:]:
            _check_nulls(spec, inner)
    if spec.inner:
        return _blocks(spec, array)
    if spec.kind in ("object", "ragged"):
        objects: np.ndarray = array.to_numpy(zero_copy_only=False)
        return objects
    rows = len(array)
    for _ in spec.shape:
        _check_nulls(spec, array)
        array = pc.list_flatten(array)
    _check_nulls(spec, array)
    values = _values(array)
    return values.reshape((rows, *spec.shape)) if spec.shape else values


def _blocks(spec: ColumnSpec, array: pa.Array) -> np.ndarray:
    """A ragged array of fixed-shape arrays as one ``(length, *spec.inner)`` view a row, None for a null row.

    pyarrow makes each row an object array of its inner arrays, which no framework takes as a
    tensor, at a Python object per inner array (3-4x the time of this, rows of ten 3-vectors).
    The rows are views of the flattened values, one slice each. Each level's lengths
    are checked against the manifest's shape, so that a file that disagrees is refused rather
    than cut into wrong rows.

    Raises:
        ValueError: An inner array of another length than the manifest's.
    """
    lengths = pc.list_value_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    level = array.flatten()  # the outer level's values, the null rows' left out
    for width in spec.inner:
        bounds = pc.min_max(pc.list_value_length(level)).as_py()
        if len(level) and not bounds["min"] == bounds["max"] == width:
            raise ValueError(
                f"column {spec.name!r} holds inner arrays of {bounds['min']} to {bounds['max']} values where the "
                f"cache's manifest says {width}: the file does not match its manifest; convert the DataFrame again"
            )
        level = level.flatten()
    values = _values(level).reshape((-1, *spec.inner))
    ends = np.cumsum(lengths)
    slices = (values[start:end] for start, end in zip((ends - lengths).tolist(), ends.tolist(), strict=True))
    rows = np.fromiter(slices, dtype=object, count=len(lengths))  # np.array would stack rows of one length
    if array.null_count:
        rows[array.is_null().to_numpy(zero_copy_only=False)] = None
    return rows


def _values(array: pa.Array) -> np.ndarray:
    """The values of a null-free array, zero-copy, and writable when Arrow's buffer is.

    A freshly decoded row group owns mutable buffers; exposing them writable spares torch's
    "non-writable array" warning without copying.
    """
    data_type = array.type
    if pa.types.is_integer(data_type) or pa.types.is_floating(data_type):
        data = array.buffers()[1]
        if data is not None and data.is_mutable:
            dtype = np.dtype(data_type.to_pandas_dtype())
            return np.frombuffer(data, dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)
    values: np.ndarray = array.to_numpy(zero_copy_only=False)
    return values


def _check_nulls(spec: ColumnSpec, array: pa.Array) -> None:
    if array.null_count:
        raise NullValueError(
            f"column {spec.name!r} ({spec.arrow_type} in the cache) holds {array.null_count} null value(s), which a "
            "tensor cannot represent: fill or drop them before converting (df.fillna / df.dropna), "
            "or replace them in a transform_fn"
        )


def column_specs(
    schema: pa.Schema, dtype: str | None, shapes: dict[str, ShapeStats], names: Sequence[str] | None = None
) -> dict[str, ColumnSpec]:
    """Specs for the chosen columns (all when ``names`` is None) of a cached dataset."""
    wanted = list(names) if names is not None else schema.names
    missing = [name for name in wanted if name not in schema.names]
    if missing:
        raise ValueError(f"schema_fields {missing} are not columns of the dataset; its columns are {schema.names}")
    specs = {}
    for name in wanted:
        field = schema.field(name)
        arrow_type = normalize_arrow_type(name, field.type, dtype)
        specs[name] = ColumnSpec.build(name, arrow_type, shapes.get(name))
    return specs


# --------------------------------------------------------------------------- framework side

Framework = Literal["torch", "tf", "jax"]
"""The frameworks with an adapter; NumPy's view is :attr:`ColumnSpec.numpy_dtype` itself."""

Carrier = Literal["tensor", "strings", "ragged", "host"]
"""How a framework holds a column: see :class:`FrameworkView`."""

_FRAMEWORK_NAMES = {"torch": "make_torch_dataloader", "tf": "make_tf_dataset", "jax": "make_jax_iterator"}


@dataclasses.dataclass(frozen=True)
class FrameworkView:
    """How one column reaches one framework: the type policy every adapter follows.

    One rule for all: dates and timestamps (and durations) are their int64 counts since the epoch
    (days; the timestamp's unit, microseconds in a sparkfeed cache), since no framework has a
    date tensor; numbers and bools keep their NumPy dtype. JAX without ``jax_enable_x64`` is the
    one exception, because ``device_put`` would wrap a 64-bit value into 32 bits silently.

    Attributes:
        name: The column name.
        framework: ``"torch"``, ``"tf"`` or ``"jax"``.
        dtype: NumPy dtype of the values handed to the framework (``object`` for strings,
            bytes and ragged arrays).
        shape: The per-row shape (``()`` for ragged arrays).
        carrier: ``"tensor"``: a tensor of ``dtype``. ``"strings"``: strings or bytes: a
            ``tf.string`` tensor in TF, a Python list in torch, a NumPy object array in JAX.
            ``"ragged"``: arrays of varying length: a list of tensors in torch, a NumPy object
            array in JAX (TF refuses them). ``"host"``: left in NumPy, as timestamps are in JAX
            without x64 (their microseconds do not fit in 32 bits).
        narrow: Whether 64-bit integers (and JAX's int64 days) become 32 bits, exactly, and
            float64 float32, within its range: JAX without x64.
    """

    name: str
    framework: Framework
    dtype: np.dtype
    shape: tuple[int, ...]
    carrier: Carrier
    narrow: bool = False

    def prepare(self, array: np.ndarray) -> np.ndarray:
        """The column's values as the framework takes them: a view, unless a check or cast needs more.

        Raises:
            NullValueError: A TF string column holds a null, which ``tf.string`` cannot hold.
            OverflowError: A value does not fit in the 32 bits it is narrowed to (for a float,
                a finite value beyond float32's range).
        """
        if self.carrier == "strings":
            if self.framework == "tf" and pd.isna(array).any():
                # TensorFlow would fail later with "Unsupported object type NoneType", naming nothing.
                raise NullValueError(
                    f"column {self.name!r} holds nulls, which a tf.string tensor cannot: fill them before "
                    f"converting (df.fillna('', subset=[{self.name!r}])), or leave the column out with schema_fields"
                )
            return array
        if self.carrier != "tensor":
            return array
        if array.dtype.kind in "Mm":
            array = array.view(np.int64)
        if self.narrow:
            return _narrow(self.name, array)
        return array


def _narrow(name: str, array: np.ndarray) -> np.ndarray:
    """A 64-bit column as 32 bits, or an OverflowError that says what to do.

    Integers narrow exactly or not at all. A float64 rounds to float32's precision, as JAX
    would round it, but a finite value beyond float32's range, which JAX would make ``inf``
    without a word, is refused as an integer beyond int32 is.
    """
    if array.dtype.kind == "f":
        with np.errstate(over="ignore"):
            narrowed = array.astype(np.float32)
        grew = np.isinf(narrowed) & np.isfinite(array)
        if grew.any():
            raise OverflowError(
                f"column {name!r} holds {array[grew].flat[0]}, beyond float32's range (about 3.4e38), which JAX "
                "would make inf: JAX keeps float64 only with jax.config.update('jax_enable_x64', True); turn that "
                "on, scale the column, or leave it out with schema_fields"
            )
        return narrowed
    narrow = np.dtype(np.int32 if array.dtype.kind == "i" else np.uint32)
    info = np.iinfo(narrow)
    if array.size and (array.min() < info.min or array.max() > info.max):
        outside = array[(array < info.min) | (array > info.max)].flat[0]
        raise OverflowError(
            f"column {name!r} holds {outside}, beyond {narrow}: JAX keeps 64-bit integers only with "
            "jax.config.update('jax_enable_x64', True); turn that on, or leave the column out with schema_fields"
        )
    return array.astype(narrow)


@functools.lru_cache(maxsize=4096)
def framework_view(
    name: str, dtype: np.dtype, shape: tuple[int, ...], framework: Framework, ragged: bool = False, x64: bool = True
) -> FrameworkView:
    """The view of a column of NumPy ``dtype`` whose rows have ``shape``; see :class:`FrameworkView`.

    Cached: the adapters ask for every column of every chunk, from the arrays themselves, since a
    transform may change what the cache's schema says.

    Args:
        name: The column name, for messages.
        dtype: The column's NumPy dtype.
        shape: Its per-row shape.
        framework: The framework it goes to.
        ragged: Whether an object column holds arrays of varying length (else strings or bytes).
        x64: For JAX: whether ``jax_enable_x64`` is on.

    Raises:
        UnsupportedTypeError: The framework cannot hold the column (TF and ragged arrays, or a
            NumPy kind no framework holds); the message says what to do.
    """
    if dtype.kind in "OSU":
        if not ragged:
            return FrameworkView(name, framework, np.dtype(object), shape, "strings")
        if framework == "tf":
            raise UnsupportedTypeError(
                f"column {name!r} holds arrays of varying length, which make_tf_dataset cannot batch as they are: "
                f"batch them as sequences, sequence={{{name!r}: 'pad'}} (or 'ragged' for a tf.RaggedTensor), "
                "or drop the column with schema_fields"
            )
        return FrameworkView(name, framework, np.dtype(object), (), "ragged")
    jax32 = framework == "jax" and not x64
    if dtype.kind in "Mm":
        if jax32 and np.datetime_data(dtype)[0] != "D":
            return FrameworkView(name, framework, dtype, shape, "host")
        dtype = np.dtype(np.int64)
    elif dtype.kind not in "biufc":
        raise UnsupportedTypeError(
            f"column {name!r} has NumPy dtype {dtype}, which {_FRAMEWORK_NAMES[framework]} cannot turn into a "
            "tensor: return numbers, bools, dates, strings or bytes from the transform_fn, or drop the column"
        )
    narrow = jax32 and dtype.kind in "iuf" and dtype.itemsize == 8
    if narrow:
        dtype = np.dtype({"i": np.int32, "u": np.uint32, "f": np.float32}[dtype.kind])
    return FrameworkView(name, framework, dtype, shape, "tensor", narrow)


def array_view(name: str, array: np.ndarray, framework: Framework, x64: bool = True) -> FrameworkView:
    """The view of a column as it arrives in a batch (after any transform): see :func:`framework_view`.

    An object column holds arrays (ragged) when its first non-null value is an array.
    """
    ragged = False
    if array.dtype.kind == "O":
        first = next((value for value in array if value is not None), None)
        ragged = isinstance(first, np.ndarray)
    return framework_view(name, array.dtype, tuple(array.shape[1:]), framework, ragged, x64)
