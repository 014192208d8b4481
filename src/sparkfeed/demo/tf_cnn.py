"""The demo's CNN in Keras: ``model.fit`` on sparkfeed's ``tf.data`` datasets."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

# Fewer of TensorFlow's start-up notices, here and in Spark's workers (started later, with this environment).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from sparkfeed.demo import BATCH_SIZE, Echo, Predict, Weights

if TYPE_CHECKING:
    from sparkfeed.converter import SparkDatasetConverter
    from sparkfeed.transform import TransformSpec

CHANNELS_FIRST = False


def build() -> Any:
    """Two 3x3 convolutions, a 2x2 max-pool and a dense layer: 10k weights, enough for 8x8 digits."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )


class _Report(keras.callbacks.Callback):  # type: ignore[misc]  # keras is untyped
    """Echoes each epoch's loss and held-out accuracy, as the other frameworks' loops do."""

    def __init__(self, echo: Echo, losses: list[float]) -> None:
        super().__init__()
        self.echo, self.losses = echo, losses

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        self.losses.append(float(logs["loss"]))
        self.echo(f"  epoch {epoch + 1}: loss {logs['loss']:.4f}, held-out accuracy {logs['val_accuracy']:.4f}")


def train(
    train: SparkDatasetConverter,
    test: SparkDatasetConverter,
    spec: TransformSpec,
    *,
    epochs: int,
    seed: int,
    echo: Echo,
) -> tuple[list[float], Weights]:
    """Keras ``fit`` with Adam, validated on the held-out split every epoch."""
    keras.utils.set_random_seed(seed)
    model = build()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    losses: list[float] = []
    # Endless datasets cut into epochs by steps_per_epoch and validation_steps (Petastorm's and
    # Databricks' recipe): each epoch's last batch is its short one, so every step count is one epoch.
    with (
        train.make_tf_dataset(
            batch_size=BATCH_SIZE, num_epochs=None, seed=seed, shuffle_rows=True, transform_spec=spec
        ) as train_set,
        test.make_tf_dataset(
            batch_size=256, num_epochs=None, shuffle_row_groups=False, transform_spec=spec
        ) as test_set,
    ):
        model.fit(
            train_set.map(lambda batch: (batch.image, batch.label)),
            epochs=epochs,
            steps_per_epoch=math.ceil(len(train) / BATCH_SIZE),
            validation_data=test_set.map(lambda batch: (batch.image, batch.label)),
            validation_steps=math.ceil(len(test) / 256),
            shuffle=False,  # sparkfeed shuffles (Keras cannot shuffle a tf.data dataset and says so)
            callbacks=[_Report(echo, losses)],
            verbose=0,
        )
    return losses, {str(index): array for index, array in enumerate(model.get_weights())}


def predictor(weights: Weights) -> Predict:
    """The CNN rebuilt from NumPy weights, predicting digits from (rows, 8, 8, 1) images."""
    model = build()
    model.set_weights([weights[str(index)] for index in range(len(weights))])

    def predict(images: np.ndarray) -> np.ndarray:
        result: np.ndarray = np.asarray(model.predict_on_batch(images)).argmax(1)
        return result

    return predict
