"""make_predict_fn: Spark's predict_batch_udf feeding models the tensors they were trained on."""

from __future__ import annotations

import inspect
import pickle
import re

import numpy as np
import pandas as pd
import pytest
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.functions import predict_batch_udf, vector_to_array
from pyspark.sql import functions as F
from pyspark.sql.types import FloatType, LongType

from sparkfeed import make_predict_fn, make_spark_converter
from sparkfeed.inference import BatchPredictor, ModelInput


@pytest.fixture(scope="module")
def vectors(spark):
    """200 rows: an id, a 6-float MLlib vector (id + 0..5, as doubles), a label and a name."""
    df = spark.range(200, numPartitions=2).select(
        "id", *[(F.col("id") + i).cast("double").alias(f"x{i}") for i in range(6)], (F.col("id") % 3).alias("label")
    )
    df = VectorAssembler(inputCols=[f"x{i}" for i in range(6)], outputCol="features").transform(df)
    return df.select("id", "features", "label", F.concat(F.lit("row"), "id").alias("name"))


@pytest.fixture(scope="module")
def converter(vectors):
    converter = make_spark_converter(vectors)
    yield converter
    converter.delete()


def make_model():
    """A 'model' that checks it is given (rows, 2, 3) float32 tensors, returning each row's sum.

    Made in a function, so that Spark pickles it by value (the executors cannot import this module).
    """

    def shape_and_dtype(images: np.ndarray) -> np.ndarray:
        assert images.shape[1:] == (2, 3), images.shape
        assert images.dtype == np.float32, images.dtype
        return images.reshape(len(images), -1).sum(axis=1)

    return shape_and_dtype


def test_spark_vectors_arrive_as_the_tensors_the_converter_gave(spark, vectors, converter) -> None:
    shape_and_dtype = make_model()
    predictor = make_predict_fn(shape_and_dtype, converter, inputs="features", shapes={"features": (2, 3)})
    assert predictor.inputs == (ModelInput("features", (2, 3), np.dtype("float32")),)
    assert predictor.input_tensor_shapes == [[2, 3]]
    summed = predict_batch_udf(
        predictor, return_type=FloatType(), batch_size=32, input_tensor_shapes=predictor.input_tensor_shapes
    )
    rows = vectors.select("id", summed(vector_to_array("features")).alias("sum")).collect()  # doubles from Spark
    assert len(rows) == 200
    assert all(row["sum"] == 6 * row["id"] + 15 for row in rows)


def test_the_udf_method_passes_the_shapes_and_parses_a_type_string(spark, vectors, converter) -> None:
    shape_and_dtype = make_model()
    predictor = make_predict_fn(shape_and_dtype, converter, inputs=["features"], shapes={"features": [2, 3]})
    rows = vectors.select(
        "id", predictor.udf("double", batch_size=50)(vector_to_array("features")).alias("s")
    ).collect()
    assert sorted((row["id"], row["s"]) for row in rows) == [(i, 6.0 * i + 15) for i in range(200)]


def test_a_torch_module_runs_in_eval_mode_without_gradients(spark, vectors, converter) -> None:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))
    model.train()  # as it is left after training: the predictor must switch dropout off
    predictor = make_predict_fn(model, converter, inputs=["features"], postprocess=lambda logits: logits.argmax(1))
    rows = vectors.select(
        "id", "features", predictor.udf("long", batch_size=64)(vector_to_array("features")).alias("p")
    )
    got = {row["id"]: row["p"] for row in rows.collect()}
    model.eval()
    with torch.no_grad():
        features = torch.arange(200, dtype=torch.float32)[:, None] + torch.arange(6, dtype=torch.float32)
        expected = model(features).argmax(1).tolist()
    assert [got[i] for i in range(200)] == expected


def test_a_predict_function_made_in_the_driver_leaves_the_modules_training_mode_as_it_was() -> None:
    # Making the predict function switched the user's module to eval mode for good: tried out in a
    # notebook before training went on, it left dropout and batch norm off for the rest of training.
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.9), torch.nn.BatchNorm1d(4))
    model.train()
    model[2].eval()  # a frozen batch norm stays frozen
    predict = make_predict_fn(model, shapes={"input": (4,)})()
    rows = np.arange(8, dtype=np.float64).reshape(2, 4)
    first = predict(rows)
    np.testing.assert_array_equal(predict(rows), first)  # dropout off while predicting
    assert [m.training for m in model.modules()] == [True, True, True, False]


def test_a_torch_module_takes_sparks_float64_in_its_weights_precision_without_dtypes() -> None:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(6, 2)  # float32 weights; Spark gives float64, and no converter says otherwise
    predict = make_predict_fn(model, shapes={"input": (6,)})()
    rows = np.arange(24, dtype=np.float64).reshape(4, 6)
    with torch.no_grad():
        expected = model(torch.from_numpy(rows).float()).numpy()
    np.testing.assert_allclose(predict(rows), expected)
    doubled = make_predict_fn(torch.nn.Linear(6, 2).double(), shapes={"input": (6,)})()
    assert doubled(rows).dtype == np.float64  # a float64 model keeps float64


def test_a_torch_module_takes_the_dtype_dtypes_names_not_its_weights() -> None:
    import torch

    class Probe(torch.nn.Module):  # float32 weights, given float64 on purpose (a float64 head, say)
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale.to(x.dtype)

    rows = np.array([[1 + 2**-40, 2.0]])  # a difference float32 cannot hold
    predict = make_predict_fn(Probe(), shapes={"input": (2,)}, dtypes={"input": "float64"})()
    out = predict(rows)
    assert out.dtype == np.float64 and out[0, 0] == 1 + 2**-40


def test_several_scalar_columns_are_several_parameters(spark, vectors, converter) -> None:
    predictor = make_predict_fn(lambda ids, labels: ids * 10 + labels, converter, inputs=["id", "label"])
    assert predictor.input_tensor_shapes is None  # scalars only: what predict_batch_udf requires
    predict = predictor()
    assert [p.name for p in inspect.signature(predict).parameters.values()] == ["id", "label"]
    rows = vectors.select("id", "label", predictor.udf("long", batch_size=40)("id", "label").alias("p")).collect()
    assert all(row["p"] == row["id"] * 10 + row["label"] for row in rows)


def test_dict_outputs_become_struct_fields(spark, vectors, converter) -> None:
    def stats(features: np.ndarray) -> dict[str, np.ndarray]:
        return {"low": features.min(axis=1), "high": features.max(axis=1)}

    predictor = make_predict_fn(stats, converter, inputs="features")
    out = vectors.select(
        "id", predictor.udf("low float, high float", batch_size=64)(vector_to_array("features")).alias("s")
    )
    assert all(row["s"]["low"] == row["id"] and row["s"]["high"] == row["id"] + 5 for row in out.collect())


def test_a_keras_model_predicts_on_batches(spark, vectors, converter) -> None:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(1)])
    predictor = make_predict_fn(model, converter, inputs="features")
    local = predictor()(np.arange(12, dtype=np.float64).reshape(2, 6))  # doubles, as Spark gives them
    np.testing.assert_allclose(local, model.predict_on_batch(np.arange(12, dtype=np.float32).reshape(2, 6)))
    assert pickle.loads(pickle.dumps(predictor)).inputs == predictor.inputs


def test_without_a_converter_inputs_pass_through_unless_given_a_shape_or_dtype() -> None:
    plain = make_predict_fn(lambda x: x * 2)
    assert plain.inputs == (ModelInput("input"),) and plain.input_tensor_shapes is None
    np.testing.assert_array_equal(plain()(np.array([1, 2])), [2, 4])
    shaped = make_predict_fn(lambda x: x, inputs="image", shapes={"image": (1, 2, 2)}, dtypes={"image": "float16"})
    out = shaped()(np.arange(8.0).reshape(2, 4))
    assert out.shape == (2, 1, 2, 2) and out.dtype == np.float16


def test_a_predictor_pickles_with_its_model_and_postprocess() -> None:
    import torch

    predictor = make_predict_fn(
        torch.nn.Linear(3, 2), inputs="x", shapes={"x": (3,)}, dtypes={"x": "float32"}, postprocess=np.argmax
    )
    clone = pickle.loads(pickle.dumps(predictor))
    assert isinstance(clone, BatchPredictor) and clone.inputs == predictor.inputs
    assert clone()(np.ones((1, 3))) == predictor()(np.ones((1, 3)))


def test_wrong_inputs_are_refused_naming_the_columns(converter) -> None:
    with pytest.raises(ValueError, match=r"give inputs=\[...\].*'features'"):
        make_predict_fn(abs, converter)
    with pytest.raises(ValueError, match=r"inputs \['pixels'\] are not columns of the converter"):
        make_predict_fn(abs, converter, inputs=["pixels"])
    with pytest.raises(ValueError, match=r"shapes names \['label'\], which are not among the inputs \['features'\]"):
        make_predict_fn(abs, converter, inputs="features", shapes={"label": ()})
    with pytest.raises(ValueError, match=r"shapes\['features'\]=\(4, 2\) holds 8 values per row.*shape \(6,\)"):
        make_predict_fn(abs, converter, inputs="features", shapes={"features": (4, 2)})
    with pytest.raises(ValueError, match="names a column twice"):
        make_predict_fn(abs, converter, inputs=["id", "id"])
    with pytest.raises(TypeError, match="must be a torch module, a Keras model or a callable"):
        make_predict_fn(42, inputs="x")


def test_ragged_arrays_are_refused(spark) -> None:
    ragged = make_spark_converter(spark.range(4).select(F.sequence(F.lit(0), "id").alias("seq")))
    try:
        with pytest.raises(ValueError, match="'seq' holds arrays of varying length"):
            make_predict_fn(abs, ragged)
    finally:
        ragged.delete()


def test_a_batch_that_does_not_fit_the_shape_names_the_input() -> None:
    predict = make_predict_fn(lambda x: x, inputs="image", shapes={"image": (2, 2)})()
    with pytest.raises(ValueError, match=r"input 'image': a batch of shape \(3, 5\) cannot be reshaped to rows of"):
        predict(np.zeros((3, 5)))


def test_a_null_in_an_integer_input_is_refused_not_cast_to_a_number(spark, converter) -> None:
    # Spark passes a long column with nulls as float64 with NaN; cast to the converter's int64,
    # the null reached the model as -9223372036854775808, and its prediction came back in silence.
    predictor = make_predict_fn(lambda label: label * 10, converter, inputs="label")
    assert predictor.inputs == (ModelInput("label", (), np.dtype("int64")),)
    df = spark.createDataFrame([(0, 1), (1, None), (2, 2)], "id long, label long")
    with pytest.raises(Exception, match=r"input 'label' holds a null \(NaN\)"):
        df.select("id", predictor.udf("long", 8)("label")).collect()
    assert [
        row[1] for row in df.where("label is not null").select("id", predictor.udf("long", 8)("label")).collect()
    ] == [10, 20]
    with pytest.raises(ValueError, match=r"input 'label' holds a null \(NaN\) in row 1"):
        predictor()(np.array([1.0, np.nan]))


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"postprocess": "argmax"}, TypeError, "postprocess='argmax' is not allowed: it must be a function"),
        ({"shapes": {"input": (2, -1)}}, ValueError, "shapes['input']=(2, -1) is not allowed: it must be a tuple"),
        ({"shapes": {"input": 5}}, ValueError, "shapes['input']=5 is not allowed"),
        ({"shapes": {"input": (2.5,)}}, ValueError, "shapes['input']=(2.5,) is not allowed"),
        ({"dtypes": {"input": "flaot32"}}, ValueError, "dtypes['input']='flaot32' is not a NumPy dtype"),
    ],
    ids=["postprocess", "negative", "int", "fraction", "dtype"],
)
def test_bad_arguments_are_refused_when_the_predictor_is_made(arguments, error, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        make_predict_fn(lambda x: x, **arguments)


def test_nulls_and_values_the_cast_would_change_are_refused_not_predicted_on(spark, converter) -> None:
    # Spark hands a boolean or date column's nulls to the model as None: the cast to the
    # converter's bool made each null False (and a date's NaT), and its prediction came back in
    # silence; a double given to a long input was truncated (1.5 predicted on as 1).
    import datetime

    typed = make_spark_converter(
        spark.createDataFrame([(True, datetime.date(2020, 1, 2))], "flag boolean, day date"), dtype=None
    )
    try:
        flag = make_predict_fn(lambda flag: flag.astype(np.int64), typed, inputs="flag")
        day = make_predict_fn(
            lambda day: (day - np.datetime64("2020-01-01", "D")).astype(np.int64), typed, inputs="day"
        )
        assert [spec.dtype for spec in (*flag.inputs, *day.inputs)] == [np.dtype(bool), np.dtype("datetime64[D]")]
        df = spark.createDataFrame(
            [(0, True, datetime.date(2020, 1, 3)), (1, None, None), (2, False, datetime.date(2020, 1, 1))],
            "id long, flag boolean, day date",
        ).coalesce(1)
        with pytest.raises(Exception, match=r"input 'flag' holds a null \(None\) in row 1 of this batch"):
            df.select("id", flag.udf("long", 8)("flag")).collect()
        with pytest.raises(Exception, match=r"input 'day' holds a null \(None\) in row 1 of this batch"):
            df.select("id", day.udf("long", 8)("day")).collect()
        kept = df.where("id != 1")
        assert [row[1] for row in kept.select("id", flag.udf("long", 8)("flag")).orderBy("id").collect()] == [1, 0]
        assert [row[1] for row in kept.select("id", day.udf("long", 8)("day")).orderBy("id").collect()] == [2, 0]
    finally:
        typed.delete()
    label = make_predict_fn(lambda label: label * 10, converter, inputs="label")  # the converter's int64
    doubles = spark.createDataFrame([(0, 1.0), (1, 1.5)], "id long, label double").coalesce(1)
    with pytest.raises(Exception, match=r"input 'label' holds 1.5 in row 1 of this batch .*int64 does not hold"):
        doubles.select("id", label.udf("long", 8)("label")).collect()
    predict = label()
    np.testing.assert_array_equal(predict(np.array([3.0, -4.0])), [30, -40])
    # A long column with a null elsewhere in its Arrow batch comes as float64, exact only up to 2**53.
    with pytest.raises(ValueError, match=r"holds 9007199254740996.0 in row 0 .*may have rounded"):
        predict(np.array([2.0**53 + 4]))
    with pytest.raises(ValueError, match=r"input 'label' holds a null \(NaT\) in row 0"):
        make_predict_fn(lambda day: day, inputs="label", dtypes={"label": "datetime64[us]"})()(
            np.array(["NaT"], dtype="datetime64[ns]")
        )


def test_timestamps_reach_the_model_as_the_utc_it_was_trained_on_in_any_session_time_zone(spark) -> None:
    # Spark hands a pandas UDF each timestamp as a wall time of the session time zone, zone dropped:
    # in Los Angeles the model predicted on values 8 hours off those it was trained on, in silence.
    import datetime

    micros = [int(datetime.datetime(2020, month, 1, 12, tzinfo=datetime.UTC).timestamp() * 1e6) for month in (1, 7)]
    df = spark.createDataFrame([(i, m) for i, m in enumerate(micros)], "id long, m long").select(
        "id", F.timestamp_micros("m").alias("t")
    )
    converter = make_spark_converter(df)
    zone = spark.conf.get("spark.sql.session.timeZone")
    try:
        with converter.make_numpy_iterator(batch_size=2, num_epochs=1) as batches:
            trained = {int(i): t for batch in batches for i, t in zip(batch["id"], batch["t"], strict=True)}
        predictor = make_predict_fn(lambda t: t.astype(np.int64), converter, inputs="t")  # microseconds since 1970
        assert predictor.inputs[0].dtype == np.dtype("datetime64[us]") and predictor.inputs[0].instant
        for session_zone in ("America/Los_Angeles", "Asia/Kolkata", "UTC"):
            spark.conf.set("spark.sql.session.timeZone", session_zone)
            wrapped = predict_batch_udf(lambda: predictor(), return_type=LongType(), batch_size=8)
            for udf in (predictor.udf("long", 8), wrapped):
                rows = df.select("id", udf("t").alias("p")).collect()
                assert {row["id"]: row["p"] for row in rows} == {i: int(t.astype(np.int64)) for i, t in trained.items()}
            assert sorted(trained.values()) == [np.datetime64(m, "us") for m in micros]
        # Unset, the zone is the JVM's default, which Spark names to no task: not the zone the session
        # had when the predictor was made.
        spark.conf.set("spark.sql.session.timeZone", "America/Los_Angeles")
        made_in_los_angeles = make_predict_fn(lambda t: t.astype(np.int64), converter, inputs="t")
        spark.conf.unset("spark.sql.session.timeZone")
        rows = df.select("id", made_in_los_angeles.udf("long", 8)("t").alias("p")).collect()
        assert {row["id"]: row["p"] for row in rows} == {i: int(t.astype(np.int64)) for i, t in trained.items()}
        # 01:30 on the night summer time ends happens twice in Los Angeles: which one Spark meant is lost.
        spark.conf.set("spark.sql.session.timeZone", "America/Los_Angeles")
        # Made by the user in a task (mapInPandas over a loader's shard), it is fed UTC: left as it is.
        utc = np.array(sorted(trained.values()))
        in_task = spark.range(1).mapInPandas(
            lambda frames: (pd.DataFrame({"p": predictor()(utc)}) for _ in frames), "p long"
        )
        assert [row["p"] for row in in_task.collect()] == micros
        twice = spark.range(1).select(F.timestamp_micros(F.lit(1604219400000000)).alias("t"))  # 08:30Z, 01:30 PDT
        with pytest.raises(
            Exception, match=r"input 't': Spark passes timestamps as wall times .*'America/Los_Angeles'"
        ):
            twice.select(predictor.udf("long", 8)("t")).collect()
    finally:
        spark.conf.set("spark.sql.session.timeZone", zone)
        converter.delete()
    outside = predictor()(np.array(["2020-01-01T12:00"], dtype="datetime64[ns]"))  # outside Spark: taken as UTC
    assert outside.tolist() == [micros[0]]


def test_a_bfloat16_torch_module_returns_its_outputs_as_float32() -> None:
    # NumPy has no bfloat16: a module trained and kept in bfloat16 failed every batch with
    # "Got unsupported ScalarType BFloat16" when its output was turned into NumPy.
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 3).to(torch.bfloat16)
    rows = np.arange(8, dtype=np.float64).reshape(4, 2)
    out = make_predict_fn(model, shapes={"input": (2,)})()(rows)
    with torch.no_grad():
        expected = model(torch.from_numpy(rows).to(torch.bfloat16)).float().numpy()
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    pair = make_predict_fn(lambda x: {"y": torch.from_numpy(x).to(torch.bfloat16)})()(np.array([1.5, 2.0]))
    assert pair["y"].dtype == np.float32 and pair["y"].tolist() == [1.5, 2.0]


def test_a_torch_module_takes_dates_and_timestamps_as_the_int64_counts_its_loader_gave(spark) -> None:
    # torch has no date tensor: the torch loader gives dates as days and timestamps as microseconds
    # since 1970, but the predictor handed torch.from_numpy the datetime64 arrays, which it refused.
    import torch

    df = spark.range(3).selectExpr(
        "id", "date_add(DATE'2020-01-01', CAST(id AS INT)) AS day", "timestamp_micros(id * 1000001) AS t"
    )
    converter = make_spark_converter(df)
    try:
        with converter.make_torch_dataloader(batch_size=3, num_epochs=1) as loader:
            trained = next(iter(loader))
        order = trained["id"].argsort()

        class Echo(torch.nn.Module):
            def forward(self, day: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                assert day.dtype == t.dtype == torch.int64
                return torch.stack([day, t], 1)

        predictor = make_predict_fn(Echo(), converter, inputs=["day", "t"])
        rows = df.orderBy("id").select(predictor.udf("array<long>", 8)("day", "t").alias("p")).collect()
        assert [row["p"] for row in rows] == torch.stack([trained["day"][order], trained["t"][order]], 1).tolist()
        assert [row["p"][1] for row in rows] == [0, 1000001, 2000002]
    finally:
        converter.delete()


def test_inputs_whose_names_are_no_identifiers_get_parameter_names_of_their_own(spark) -> None:
    # "a b" became the parameter input_0, as the next input was named: the predict function could
    # not be made ("duplicate parameter name: 'input_0'"), so every task failed.
    predictor = make_predict_fn(lambda a, b, c: a * 100 + b * 10 + c, inputs=["a b", "input_0", "class"])
    predict = predictor()
    assert [p.name for p in inspect.signature(predict).parameters.values()] == ["input_0_", "input_0", "input_2"]
    df = spark.createDataFrame([(1, 2, 3), (4, 5, 6)], "`a b` long, input_0 long, class long")
    rows = df.select(predictor.udf("long", 8)(F.col("`a b`"), "input_0", "class").alias("p")).collect()
    assert sorted(row["p"] for row in rows) == [123, 456]
