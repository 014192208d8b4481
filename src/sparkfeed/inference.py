"""Inference with Spark's ``predict_batch_udf``: its ``make_predict_fn`` built from a trained model.

``pyspark.ml.functions.predict_batch_udf`` hands the model flat NumPy arrays: a tensor column
arrives as ``(rows, n)``, in the precision Spark stored (often float64), and a scalar column as
``(rows,)``. A model trained on sparkfeed's batches expects the tensors it was trained on: the
shapes and dtypes a converter's manifest records (or a transform made). :func:`make_predict_fn`
returns a small picklable object that Spark ships to the executors: called there, it makes the
predict function, which reshapes and casts each input, runs the model without gradients and
returns NumPy.

Example::

    predictor = make_predict_fn(model, converter, inputs=["features"], postprocess=lambda y: y.argmax(1))
    classify = predictor.udf(return_type="long", batch_size=256)
    df.withColumn("prediction", classify(vector_to_array("features")))
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import keyword
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from sparkfeed.types import column_specs

if TYPE_CHECKING:
    from pyspark.sql.types import DataType

    from sparkfeed.converter import SparkDatasetConverter

__all__ = ["BatchPredictor", "ModelInput", "make_predict_fn"]


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """One input of the model: the column it comes from and the tensor the model takes per row.

    Attributes:
        name: The column (and the predict function's parameter, where it is an identifier).
        shape: The shape of one row's value; ``()`` for a scalar. None: passed as Spark gives it.
        dtype: What the values are cast to; None: left as Spark gives them.
        explicit: Whether ``dtype`` was given (``dtypes=``): a torch module then takes it as
            it is, where it otherwise takes floats in its weights' precision.
        instant: Whether the converter's column is a timestamp of instants (UTC in the cache):
            Spark hands those to ``predict_batch_udf`` as wall times of its session time zone,
            which are turned back into the UTC the model was trained on.
        timezone: The driver JVM's default time zone, which Spark converts in where the session
            sets none (and then does not name one to the task).
    """

    name: str
    shape: tuple[int, ...] | None = None
    dtype: np.dtype | None = None
    explicit: bool = False
    instant: bool = False
    timezone: str | None = None

    def prepare(self, values: Any, wall_times: bool = False) -> np.ndarray:
        """Spark's array for this input as the model's tensor: reshaped and cast, copied only if needed.

        ``wall_times``: the array comes from ``predict_batch_udf``, whose timestamps are wall
        times of the session time zone; otherwise (a loader's batch) they are UTC already.
        """
        array = np.asarray(values)
        if wall_times and self.instant and array.dtype.kind == "M":
            array = self._as_utc(array)
        if self.shape is not None and array.dtype != object:
            try:
                array = array.reshape((len(array), *self.shape))
            except ValueError as error:
                raise ValueError(
                    f"input {self.name!r}: a batch of shape {array.shape} cannot be reshaped to rows of "
                    f"{self.shape}; does the column hold {math.prod(self.shape)} values per row?"
                ) from error
        if self.dtype is not None and array.dtype != self.dtype:
            if array.size and self.dtype.kind in "iubmM":
                self._refuse_lossy_cast(array, self.dtype)
            array = array.astype(self.dtype)
        return array

    def _as_utc(self, array: np.ndarray) -> np.ndarray:
        """A Spark task's timestamps, wall times of the session time zone, as the UTC the cache holds.

        Spark's Arrow conversion for pandas UDFs shifts each instant to the session time zone and
        drops the zone, so outside UTC the model saw other values than in training (8 hours off
        in Los Angeles). A wall time that a change to summer time made twice is refused: which
        instant it was is lost.
        """
        module = sys.modules.get("pyspark.taskcontext")
        context = None if module is None else module.TaskContext.get()
        zone = (None if context is None else context.getLocalProperty("spark.sql.session.timeZone")) or self.timezone
        if zone is None:
            raise ValueError(
                f"input {self.name!r} is a timestamp, which Spark passes as wall times of the session time zone, "
                "but the task does not say which: set spark.sql.session.timeZone (to 'UTC', say) before the query"
            )
        if zone in ("UTC", "Etc/UTC", "Z"):
            return array
        import pandas

        errors: tuple[type[Exception], ...] = (ValueError, LookupError, *_pytz_time_errors())
        try:
            wall = pandas.DatetimeIndex(array.reshape(-1))
            utc = wall.tz_localize(zone, ambiguous="raise", nonexistent="raise").tz_convert("UTC").tz_localize(None)
        except errors as error:
            raise ValueError(
                f"input {self.name!r}: Spark passes timestamps as wall times of the session time zone {zone!r}, and "
                f"they cannot be turned back into instants ({error}): set spark.sql.session.timeZone to 'UTC' for "
                "the query"
            ) from None
        return utc.to_numpy().reshape(array.shape)

    def _refuse_lossy_cast(self, array: np.ndarray, dtype: np.dtype) -> None:
        """Refuses a batch that the cast to an integer, bool or date ``dtype`` would change in silence.

        Spark hands a column's nulls to ``predict_batch_udf`` as NaN (integer columns become
        float64), NaT (timestamps) or None (booleans, dates, decimals), and a cast makes each an
        arbitrary value: ``False``, ``-2**63``, a date the model predicts on. A training loader
        refuses nulls in a tensor; inference must not predict on what stood for one. Floats cast
        to integers must also come back unchanged: a fraction would be truncated, and an integer
        column passed as float64 (for a null elsewhere in its Arrow batch) is exact only up to
        2**53, so larger values may not be the ones the column held.
        """
        rows = len(array)
        if array.dtype.kind in "fc":
            missing, marker = np.isnan(array), "NaN"
        elif array.dtype.kind in "mM":
            missing, marker = np.isnat(array), "NaT"
        elif array.dtype == object:
            import pandas

            missing, marker = np.asarray(pandas.isna(array), dtype=bool), "None"
        else:
            missing, marker = None, ""
        if missing is not None:
            null_rows = np.flatnonzero(missing.reshape(rows, -1).any(axis=1))
            if len(null_rows):
                raise ValueError(
                    f"input {self.name!r} holds a null ({marker}) in row {int(null_rows[0])} of this batch "
                    f"({len(null_rows)} of {rows} rows), which cannot be cast to {dtype}: filter the nulls out "
                    "(df.dropna(subset=[...])) or fill them (df.fillna(...)) first"
                )
        if array.dtype.kind != "f" or dtype.kind not in "iub":
            return
        with np.errstate(invalid="ignore", over="ignore"):
            changed = array.astype(dtype).astype(array.dtype) != array
        exact = 2.0 ** (np.finfo(array.dtype).nmant + 1)  # past it, a float may be a neighbouring integer
        if dtype.kind != "b" and np.iinfo(dtype).max > exact:
            changed |= np.abs(array) >= exact
        bad_rows = np.flatnonzero(changed.reshape(rows, -1).any(axis=1))
        if len(bad_rows):
            row = int(bad_rows[0])
            value = float(array.reshape(rows, -1)[row][changed.reshape(rows, -1)[row]][0])
            raise ValueError(
                f"input {self.name!r} holds {value!r} in row {row} of this batch ({len(bad_rows)} of "
                f"{rows} rows), which {dtype} does not hold exactly: a fraction, a value out of its range, or an "
                f"integer beyond {int(exact)} that {array.dtype} may have rounded (Spark passes an integer column "
                "as float64 where its batch holds a null). Fill or filter the nulls first, or give the input's "
                "dtype in dtypes="
            )


@dataclasses.dataclass(frozen=True)
class BatchPredictor:
    """The ``make_predict_fn`` of ``predict_batch_udf``: picklable, it makes the predict function in each executor.

    Made by :func:`make_predict_fn`. Calling it (Spark does, once per Python worker) returns a
    function of one NumPy array per input, in :attr:`inputs` order, that returns the model's
    output as NumPy (after ``postprocess``).

    Attributes:
        model: A ``torch.nn.Module``, a Keras model, or any callable taking and returning arrays
            (a jitted JAX function, a NumPy function).
        inputs: The model's inputs, in the order of the columns given to the UDF.
        postprocess: Applied to the model's NumPy output, e.g. ``lambda logits: logits.argmax(1)``
            for a scalar ``return_type``.
    """

    model: Any
    inputs: tuple[ModelInput, ...]
    postprocess: Callable[[Any], Any] | None = None

    @property
    def input_tensor_shapes(self) -> list[list[int] | None] | None:
        """``predict_batch_udf``'s ``input_tensor_shapes``: each tensor input's shape, None for scalars.

        None when no input is a tensor, which is what Spark requires then.
        """
        shapes = [list(spec.shape) if spec.shape else None for spec in self.inputs]
        return shapes if any(shape is not None for shape in shapes) else None

    def __call__(self) -> Callable[..., Any]:
        """The predict function, made where it runs: the model switched to inference, one parameter an input."""
        run = _runner(self.model, [spec.explicit for spec in self.inputs])
        inputs, postprocess = self.inputs, self.postprocess
        wall_times = _made_by_predict_batch_udf()

        def predict(*arrays: np.ndarray) -> Any:
            prepared = [spec.prepare(array, wall_times) for spec, array in zip(inputs, arrays, strict=True)]
            output = _to_numpy(run(prepared))
            return postprocess(output) if postprocess is not None else output

        # predict_batch_udf counts the predict function's parameters to decide how to pass the columns.
        predict.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [
                inspect.Parameter(name, inspect.Parameter.POSITIONAL_ONLY)
                for name in _parameter_names([spec.name for spec in inputs])
            ]
        )
        return predict

    def udf(self, return_type: DataType | str, batch_size: int) -> Any:
        """``pyspark.ml.functions.predict_batch_udf`` of this predictor, with its ``input_tensor_shapes``.

        Args:
            return_type: The UDF's Spark type: a scalar type for one value per row, an
                ``ArrayType`` for a 2-D output, a ``StructType`` for a dict of outputs.
            batch_size: Rows per call of the model.
        """
        from pyspark.ml.functions import predict_batch_udf
        from pyspark.sql.types import _parse_datatype_string

        if isinstance(return_type, str):
            return_type = _parse_datatype_string(return_type)
        return predict_batch_udf(
            self, return_type=return_type, batch_size=batch_size, input_tensor_shapes=self.input_tensor_shapes
        )


def make_predict_fn(
    model: Any,
    converter: SparkDatasetConverter | None = None,
    *,
    inputs: Sequence[str] | str | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    dtypes: Mapping[str, Any] | None = None,
    postprocess: Callable[[Any], Any] | None = None,
) -> BatchPredictor:
    """A ``make_predict_fn`` for ``predict_batch_udf`` that feeds ``model`` the tensors it was trained on.

    With a converter, each input's shape and dtype are those of the converter's column, as its
    loaders gave them in training (MLlib vectors as float arrays of the converter's ``dtype``).
    ``shapes`` and ``dtypes`` set or override them, for what a training transform changed (a
    flat vector reshaped to an image, say). Frameworks are not imported here: the model is used
    as it is, in the executors.

    Args:
        model: A ``torch.nn.Module`` (run in eval mode under ``torch.inference_mode``), a Keras
            model (``predict_on_batch``), or a callable taking one array per input.
        converter: The converter the model was trained from, for the inputs' shapes and dtypes.
        inputs: The columns the model takes, in the order they are given to the UDF. Default:
            the converter's only column, or one input left as Spark gives it.
        shapes: Per input, the shape of one row (``()`` for a scalar).
        dtypes: Per input, the dtype to cast to (a NumPy dtype or its name).
        postprocess: Applied to the model's output (NumPy) before it goes back to Spark.

    Returns:
        The predictor: pass it as ``make_predict_fn`` with its ``input_tensor_shapes``, or call
        its :meth:`~BatchPredictor.udf`.

    Raises:
        TypeError: The model or ``postprocess`` is not callable.
        ValueError: An input is not a column of the converter, holds arrays of varying length,
            or is given a shape that does not hold its values; ``shapes`` or ``dtypes`` name a
            column that is not an input, a shape is not a tuple of sizes or a dtype not NumPy's.
    """
    if not callable(model):
        raise TypeError(f"the model must be a torch module, a Keras model or a callable, not {type(model).__name__}")
    if postprocess is not None and not callable(postprocess):
        raise TypeError(
            f"postprocess={postprocess!r} is not allowed: it must be a function of the model's NumPy output, "
            "e.g. postprocess=lambda logits: logits.argmax(1), or None"
        )
    names = _input_names(inputs, converter)
    for given, label in ((shapes, "shapes"), (dtypes, "dtypes")):
        if given is not None and not isinstance(given, Mapping):
            raise ValueError(f"{label}={given!r} is not allowed: it must be a dict of input name to {label[:-1]}")
        unknown = sorted(set(given or {}) - set(names))
        if unknown:
            raise ValueError(f"{label} names {unknown}, which are not among the inputs {names}")
    for name, row_shape in (shapes or {}).items():
        sizes = not isinstance(row_shape, str) and isinstance(row_shape, Sequence)
        if not sizes or not all(
            isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size >= 0 for size in row_shape
        ):
            raise ValueError(
                f"shapes[{name!r}]={row_shape!r} is not allowed: it must be a tuple of sizes (integers >= 0) of one "
                "row's value, such as (28, 28), or () for a scalar"
            )
    for name, given_dtype in (dtypes or {}).items():
        try:
            np.dtype(given_dtype)
        except TypeError as error:
            raise ValueError(
                f"dtypes[{name!r}]={given_dtype!r} is not a NumPy dtype ({error}): give one such as np.float32 or "
                "'int64'"
            ) from None
    specs = (
        column_specs(
            converter.manifest.schema, converter.manifest.options.get("dtype"), converter.manifest.shapes, names
        )
        if converter is not None
        else {}
    )
    model_inputs = []
    for name in names:
        spec = specs.get(name)
        if spec is not None and spec.kind == "ragged":
            raise ValueError(
                f"input {name!r} holds arrays of varying length, which predict_batch_udf cannot pass as a "
                "tensor: pad them to one length first"
            )
        shape = None if spec is None else (() if spec.kind == "object" else spec.shape)
        dtype = None if spec is None or spec.kind == "object" else spec.numpy_dtype
        if shapes is not None and name in shapes:
            wanted = tuple(int(size) for size in shapes[name])
            if shape is not None and math.prod(wanted) != math.prod(shape):
                raise ValueError(
                    f"shapes[{name!r}]={wanted} holds {math.prod(wanted)} values per row, but the converter's "
                    f"column {name!r} has shape {shape} ({math.prod(shape)} values)"
                )
            shape = wanted
        explicit = False
        if dtypes is not None and name in dtypes:
            dtype, explicit = np.dtype(dtypes[name]), True
        instant = spec is not None and pa.types.is_timestamp(spec.arrow_type) and spec.arrow_type.tz is not None
        timezone = _default_timezone() if instant else None
        model_inputs.append(ModelInput(name, shape, dtype, explicit, instant, timezone))
    return BatchPredictor(model, tuple(model_inputs), postprocess)


def _pytz_time_errors() -> tuple[type[Exception], ...]:
    """The error of pytz for a wall time that is ambiguous or does not exist, which pandas 2 raises.

    It is no ``ValueError`` (pandas 3 raises its own, which is), and pandas 3 needs no pytz.
    """
    try:
        exceptions = importlib.import_module("pytz.exceptions")
    except ImportError:
        return ()
    return (exceptions.InvalidTimeError,)


def _made_by_predict_batch_udf() -> bool:
    """Whether ``predict_batch_udf`` (in ``pyspark.ml.functions``) is making the predict function.

    Its function is fed Spark's pandas arrays, whose timestamps are wall times of the session
    time zone; one the user makes (in ``mapInPandas`` over a loader's shard, say) is fed the
    loader's UTC batches. The whole stack is looked at, so a wrapper around the predictor
    (``make_predict_fn=lambda: predictor()``) is seen through.
    """
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "pyspark.ml.functions":
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _default_timezone() -> str | None:
    """The time zone Spark converts timestamps in where the session sets none: its JVM's default.

    Spark propagates ``spark.sql.session.timeZone`` to the tasks only where it was set; unset,
    the zone is the driver JVM's default, asked of the JVM here (a Spark Connect client has no
    JVM: it asks the session, which says that default unless the zone is set now). None where no
    session is active: a task that names no zone then refuses timestamps.
    """
    try:
        from pyspark.sql import SparkSession

        session = SparkSession.getActiveSession()
        if session is None:
            return None
        jvm = getattr(session, "_jvm", None)
        if jvm is not None:
            return str(jvm.java.util.TimeZone.getDefault().getID())
        return session.conf.get("spark.sql.session.timeZone")
    except Exception:  # noqa: BLE001 - no session to ask: a task then needs the zone set
        return None


def _input_names(inputs: Sequence[str] | str | None, converter: SparkDatasetConverter | None) -> list[str]:
    columns = None if converter is None else list(converter.manifest.schema.names)
    if isinstance(inputs, str):
        inputs = [inputs]
    if inputs is None:
        if columns is None:
            return ["input"]
        if len(columns) != 1:
            raise ValueError(f"give inputs=[...]: the converter has the columns {columns}; which does the model take?")
        return columns
    names = list(inputs)
    if not names or not all(isinstance(name, str) for name in names):
        raise ValueError(f"inputs={inputs!r} is not allowed: it must be one or more column names")
    if len(set(names)) != len(names):
        raise ValueError(f"inputs={names!r} names a column twice")
    missing = [name for name in names if columns is not None and name not in columns]
    if missing:
        raise ValueError(f"inputs {missing} are not columns of the converter; its columns are {columns}")
    return names


def _parameter_names(names: Sequence[str]) -> list[str]:
    """The predict function's parameter names: each input's, or ``input_<index>`` where it is no identifier.

    A made-up name never repeats another input's (``["a b", "input_0"]``): a signature with a
    name twice cannot be built.
    """

    def usable(name: str) -> bool:
        return name.isidentifier() and not keyword.iskeyword(name)

    taken = {name for name in names if usable(name)}
    parameters = []
    for index, name in enumerate(names):
        if not usable(name):
            name = f"input_{index}"
            while name in taken:
                name += "_"
            taken.add(name)
        parameters.append(name)
    return parameters


def _runner(model: Any, explicit: Sequence[bool]) -> Callable[[list[np.ndarray]], Any]:
    """How to call the model on a list of arrays, chosen by its type (frameworks already imported by it).

    ``explicit`` says, per input, whether its dtype was given (``dtypes=``): a torch module
    then gets that dtype, not its weights'.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        # Spark passes floats as float64; a module's float inputs take its weights' precision,
        # unless dtypes= named one.
        weights = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)

        def tensor(array: np.ndarray, given: bool) -> Any:
            value = torch.from_numpy(_epoch_counts(np.ascontiguousarray(array)))
            return value.to(weights) if weights is not None and not given and value.is_floating_point() else value

        def run_torch(arrays: list[np.ndarray]) -> Any:
            # In eval mode for the call only: a predict function made in the driver (to try it out)
            # must not leave the user's module, still to be trained, with dropout and batch norm off.
            modes = [(module, module.training) for module in model.modules()]
            model.eval()
            try:
                with torch.inference_mode():
                    return model(*(tensor(array, given) for array, given in zip(arrays, explicit, strict=True)))
            finally:
                for module, training in modes:
                    module.training = training

        return run_torch
    keras = sys.modules.get("keras")
    if keras is not None and isinstance(model, keras.Model):
        return lambda arrays: model.predict_on_batch(
            _epoch_counts(arrays[0]) if len(arrays) == 1 else [_epoch_counts(array) for array in arrays]
        )
    return lambda arrays: model(*arrays)


def _epoch_counts(array: np.ndarray) -> np.ndarray:
    """Dates and timestamps as their int64 counts since the epoch, as torch and TF loaders gave them in training.

    Neither framework has a date tensor (``torch.from_numpy`` refuses ``datetime64``), so their
    loaders hand dates as days and timestamps in their unit, microseconds in a cache; other
    arrays pass unchanged.
    """
    return np.ascontiguousarray(array).view(np.int64) if array.dtype.kind in "mM" else array


def _to_numpy(output: Any) -> Any:
    """The model's output as NumPy: tensors and device arrays converted, dicts, lists and tuples kept."""
    if isinstance(output, Mapping):
        return {key: _to_numpy(value) for key, value in output.items()}
    if isinstance(output, list):
        return [_to_numpy(value) for value in output]
    if isinstance(output, tuple):
        return tuple(_to_numpy(value) for value in output)
    if hasattr(output, "detach"):  # a torch tensor: NumPy needs it off the autograd graph and on the CPU
        output = output.detach().cpu()
        if str(output.dtype) == "torch.bfloat16":  # NumPy has no bfloat16; float32 holds each value exactly
            output = output.float()
    return np.asarray(output)
