"""``sparkfeed demo``: real images from a Spark DataFrame to a trained CNN and back to Spark.

scikit-learn's bundled handwritten digits (1,797 8x8 images, no download) are stored in a Spark
DataFrame as a data pipeline would hold them: each image as PNG bytes, beside an MLlib vector of
its pixels, an id and a label. The demo converts the train and test splits with sparkfeed,
decodes the PNGs in the loader's transform, trains a small CNN with the chosen framework,
then runs inference on Spark: every task unpickles the converter and the trained weights
(plain NumPy), reads its exact shard and predicts; Spark joins the predictions with the labels
and computes the accuracy. Each framework's model is in its own module (:mod:`.torch_cnn`,
:mod:`.tf_cnn`, :mod:`.jax_cnn`), imported only when chosen.

The demo never prints: it reports through the ``echo`` callable it is given (the CLI passes
``click.echo``), so it can also run inside a program or a test.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import io
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import pandas as pd

from sparkfeed.transform import TransformSpec

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from sparkfeed.converter import SparkDatasetConverter

Framework = Literal["torch", "tf", "jax"]
FRAMEWORKS: tuple[Framework, ...] = ("torch", "tf", "jax")

Echo = Callable[[str], None]
Weights = dict[str, np.ndarray]
Predict = Callable[[np.ndarray], np.ndarray]

PIXEL_SCALE = 15
"""PNG value of one digits intensity step: the dataset's 0-16 become 0-240, exactly, in 8 bits."""

TEST_FOLDS = 5
"""One row in this many (chosen by a seeded hash of its id) is held out for testing."""

SHARDS = 2
"""Spark tasks of the inference job: one per core of the demo's ``local[2]`` session."""

BATCH_SIZE = 32

_EXTRAS: dict[Framework, tuple[str, ...]] = {"torch": ("torch",), "tf": ("tensorflow",), "jax": ("jax", "optax")}


class Model(Protocol):
    """What each framework module of the demo provides."""

    CHANNELS_FIRST: bool
    """Whether the model takes images as (1, 8, 8) (PyTorch's layout) or (8, 8, 1)."""

    def train(
        self,
        train: SparkDatasetConverter,
        test: SparkDatasetConverter,
        spec: TransformSpec,
        *,
        epochs: int,
        seed: int,
        echo: Echo,
    ) -> tuple[list[float], Weights]:
        """Trains the CNN on ``train``; returns each epoch's mean loss and the weights as NumPy."""
        ...

    def predictor(self, weights: Weights) -> Predict:
        """The model rebuilt from NumPy weights, as a function from images to predicted digits."""
        ...


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What the demo measured (also printed as JSON by ``sparkfeed demo --json``)."""

    framework: Framework
    train_rows: int
    test_rows: int
    epoch_losses: list[float]
    heldout_accuracy: float
    spark_accuracy: float
    spark_predictions: int
    spark_distinct_ids: int
    png_matches_vector: bool
    cache_deleted: bool
    seconds: float


def require(framework: Framework) -> None:
    """Checks that what the demo needs is installed, so that a missing package is named before Spark starts.

    Raises:
        ImportError: scikit-learn, Pillow or the framework is missing; the message names the
            extras to install.
        ValueError: ``framework`` is not one of :data:`FRAMEWORKS`.
    """
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework={framework!r} is not allowed: it must be one of {list(FRAMEWORKS)}")
    for module in ("sklearn", "PIL", *_EXTRAS[framework]):
        if importlib.util.find_spec(module) is None:  # found, not imported: TensorFlow takes seconds
            raise ImportError(
                f"sparkfeed demo --framework {framework} needs {module}, which is not installed: "
                f"pip install 'sparkfeed[demo,{framework}]'"
            )


def model_module(framework: Framework) -> Model:
    """The demo's module for one framework (imports the framework)."""
    names = {"torch": "torch_cnn", "tf": "tf_cnn", "jax": "jax_cnn"}
    module: ModuleType = importlib.import_module(f"sparkfeed.demo.{names[framework]}")
    return module


def digits_dataframe(spark: SparkSession) -> DataFrame:
    """scikit-learn's digits as a Spark DataFrame: ``id``, ``label``, ``png`` (bytes), ``pixels`` (vector).

    The PNG holds each pixel's intensity times :data:`PIXEL_SCALE` (lossless in 8 bits); the
    MLlib ``DenseVector`` holds the same intensities scaled to [0, 1], so a decoded image can be
    checked against it exactly.
    """
    from pyspark.ml.linalg import DenseVector, VectorUDT
    from pyspark.sql.types import BinaryType, LongType, StructField, StructType
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = [
        (index, int(label), _png(image), DenseVector(image.ravel() / 16.0))
        for index, (image, label) in enumerate(zip(digits.images, digits.target, strict=True))
    ]
    schema = StructType(
        [
            StructField("id", LongType(), False),
            StructField("label", LongType(), False),
            StructField("png", BinaryType(), False),
            StructField("pixels", VectorUDT(), False),
        ]
    )
    return spark.createDataFrame(rows, schema)


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray((image * PIXEL_SCALE).astype(np.uint8), mode="L").save(out, format="PNG")
    return out.getvalue()


def decode_png(frame: pd.DataFrame, channels_first: bool) -> pd.DataFrame:
    """The loader's transform: PNG bytes become float images in [0, 1], in the model's layout.

    It runs in the reader's workers (threads here; ``reader_pool_type="process"`` for big images),
    never in the training loop.
    """
    from PIL import Image

    shape = (1, 8, 8) if channels_first else (8, 8, 1)
    images = [
        (np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32) / (16 * PIXEL_SCALE)).reshape(shape)
        for data in frame["png"]
    ]
    return frame.drop(columns=["png"]).assign(image=pd.Series(images, index=frame.index, dtype=object))


def image_spec(channels_first: bool) -> TransformSpec:
    """The transform that decodes the PNGs, with the image's shape declared for the loaders."""
    shape = (1, 8, 8) if channels_first else (8, 8, 1)
    return TransformSpec(
        functools.partial(decode_png, channels_first=channels_first),
        edit_fields=[("image", np.float32, shape, False)],
        selected_fields=["id", "label", "image", "pixels"],
    )


def accuracy(converter: SparkDatasetConverter, spec: TransformSpec, predict: Predict) -> float:
    """The share of the converter's rows whose predicted digit is the label, read on this machine."""
    right = total = 0
    with converter.make_numpy_iterator(
        batch_size=256, num_epochs=1, transform_spec=spec, shuffle_row_groups=False
    ) as batches:
        for batch in batches:
            right += int((predict(batch["image"]) == batch["label"]).sum())
            total += len(batch["label"])
    return right / total


def predict_shards(
    frames: Iterator[pd.DataFrame],
    converter: SparkDatasetConverter,
    framework: Framework,
    weights: Weights,
    channels_first: bool,
) -> Iterator[pd.DataFrame]:
    """Spark's ``mapInPandas`` function: each task predicts the rows of the shards it is given.

    It runs in Spark's Python workers: the converter and the weights arrive pickled (a URL, a
    manifest and NumPy arrays), the model is rebuilt once per task, and each shard is read with
    ``shard_policy="exact"``, so every row of the test set is predicted exactly once.
    """
    predict = model_module(framework).predictor(weights)
    spec = image_spec(channels_first)
    for frame in frames:
        for shard in frame["shard"]:
            with converter.make_numpy_iterator(
                batch_size=256,
                num_epochs=1,
                cur_shard=int(shard),
                shard_count=SHARDS,
                shard_policy="exact",
                transform_spec=spec,
            ) as batches:
                for batch in batches:
                    yield pd.DataFrame({"id": batch["id"], "prediction": predict(batch["image"]).astype(np.int64)})


def local_spark() -> SparkSession:
    """The demo's own Spark session: two local cores, no UI, errors only."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Spark's workers use this interpreter too
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # one machine: no warning about which address to use
    spark = (
        SparkSession.builder.master(f"local[{SHARDS}]")
        .appName("sparkfeed-demo")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(SHARDS))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def run_demo(
    framework: Framework = "torch",
    *,
    epochs: int = 5,
    seed: int = 0,
    cache_dir: str | None = None,
    spark: SparkSession | None = None,
    echo: Echo = lambda line: None,
    progress: bool = False,
) -> DemoResult:
    """Runs the demo from DataFrame to Spark-side accuracy; see the module's description.

    Args:
        framework: ``"torch"``, ``"tf"`` (Keras) or ``"jax"`` (with optax).
        epochs: Passes over the training split.
        seed: Seed of the split, the model's initial weights and the loader's shuffle.
        cache_dir: Parent directory of the caches; default: a new temporary directory, removed
            at the end. The caches are deleted either way.
        spark: A session to use (left running); default: a ``local[2]`` one, stopped at the end.
        echo: Receives each line of the report.
        progress: Show the conversions' progress bars (on stderr).

    Raises:
        ImportError: A package the demo needs is missing (the message names the extra).
        ValueError: ``framework`` or ``epochs`` is out of range.
    """
    from pyspark.sql import functions as F

    from sparkfeed.converter import make_spark_converter

    require(framework)
    if epochs < 1:
        raise ValueError(f"epochs={epochs!r} is not allowed: it must be an integer >= 1")
    started = time.perf_counter()
    model = model_module(framework)
    own_session = spark is None
    session = local_spark() if spark is None else spark
    own_dir = tempfile.mkdtemp(prefix="sparkfeed-demo-") if cache_dir is None else None
    parent = own_dir or str(cache_dir)
    converters: list[SparkDatasetConverter] = []
    try:
        digits = digits_dataframe(session)
        held_out = F.pmod(F.xxhash64("id", F.lit(seed)), F.lit(TEST_FOLDS)) == 0
        train_df, test_df = digits.filter(~held_out), digits.filter(held_out)
        echo(f"Spark DataFrame of scikit-learn's digits: {digits.schema.simpleString()}")
        echo(f"converting the train and test splits with sparkfeed (cache under {parent})")
        for df in (train_df, test_df):
            converters.append(make_spark_converter(df, cache_dir=parent, progress=progress))
        train, test = converters
        echo(f"  {len(train):,} training rows, {len(test):,} held out")

        spec = image_spec(model.CHANNELS_FIRST)
        matches = _png_matches_vector(test, spec)
        echo(f"PNGs decoded in the loader's transform {'match' if matches else 'DO NOT match'} the vector column")
        echo(f"training a small CNN with {framework} for {epochs} epochs")
        losses, weights = model.train(train, test, spec, epochs=epochs, seed=seed, echo=echo)
        heldout = accuracy(test, spec, model.predictor(weights))
        echo(f"held-out accuracy on the driver: {heldout:.4f}")

        echo(f"distributed inference on Spark: {SHARDS} tasks, each reading its exact shard of the test cache")
        predict = functools.partial(
            predict_shards,
            converter=test,
            framework=framework,
            weights=weights,
            channels_first=model.CHANNELS_FIRST,
        )
        shards = session.range(SHARDS, numPartitions=SHARDS).withColumnRenamed("id", "shard")
        predictions = shards.mapInPandas(predict, "id long, prediction long").cache()
        joined = predictions.join(test_df.select("id", "label"), "id")
        summary = joined.agg(
            F.avg((F.col("prediction") == F.col("label")).cast("double")).alias("accuracy"),
            F.count("*").alias("rows"),
        ).first()
        counts = predictions.agg(F.count("*").alias("rows"), F.countDistinct("id").alias("ids")).first()
        assert summary is not None and counts is not None
        spark_accuracy = float(summary["accuracy"])
        echo(
            f"accuracy from a Spark join of {counts['rows']} predictions ({counts['ids']} distinct ids) "
            f"with the labels: {spark_accuracy:.4f}"
        )
        predictions.unpersist()
    finally:
        for converter in converters:
            converter.delete()
        deleted = all(not os.path.exists(c.location.local_path) for c in converters)
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
        if own_session:
            session.stop()
    echo(f"caches deleted; {time.perf_counter() - started:.0f} s in all")
    return DemoResult(
        framework=framework,
        train_rows=len(train),
        test_rows=len(test),
        epoch_losses=losses,
        heldout_accuracy=heldout,
        spark_accuracy=spark_accuracy,
        spark_predictions=int(counts["rows"]),
        spark_distinct_ids=int(counts["ids"]),
        png_matches_vector=matches,
        cache_deleted=deleted,
        seconds=time.perf_counter() - started,
    )


def _png_matches_vector(converter: SparkDatasetConverter, spec: TransformSpec) -> bool:
    """Whether the decoded images equal the MLlib vector column, pixel for pixel, in the first batch."""
    with converter.make_numpy_iterator(batch_size=BATCH_SIZE, num_epochs=1, transform_spec=spec) as batches:
        batch = next(iter(batches))
    return bool(np.array_equal(batch["image"].reshape(len(batch["image"]), -1), batch["pixels"]))
