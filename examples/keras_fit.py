"""Keras ``fit`` on sparkfeed's ``tf.data`` datasets: MLlib vectors from a Spark DataFrame train a classifier.

Run: python examples/keras_fit.py
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # fewer of TensorFlow's start-up notices

import keras

from sparkfeed import make_spark_converter

from shared import digits, report, spark_session

BATCH_SIZE = 32


def main() -> None:
    spark = spark_session()
    train_df, test_df = digits(spark)
    train_set = make_spark_converter(train_df.select("pixels", "label"))
    test_set = make_spark_converter(test_df.select("pixels", "label"))

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    # Endless datasets cut into epochs by steps_per_epoch and validation_steps, as in Petastorm's
    # examples: each epoch's last batch is its short one, so ceil(rows / batch) steps is one epoch.
    with (
        train_set.make_tf_dataset(batch_size=BATCH_SIZE, num_epochs=None, seed=0, shuffle_rows=True) as train_data,
        test_set.make_tf_dataset(batch_size=256, num_epochs=None, shuffle_row_groups=False) as test_data,
    ):
        history = model.fit(
            train_data.map(lambda batch: (batch.pixels, batch.label)),  # namedtuples, as Petastorm's
            epochs=8,
            steps_per_epoch=math.ceil(len(train_set) / BATCH_SIZE),
            validation_data=test_data.map(lambda batch: (batch.pixels, batch.label)),
            validation_steps=math.ceil(len(test_set) / 256),
            shuffle=False,  # sparkfeed shuffles; Keras cannot shuffle a tf.data dataset
            verbose=2,
        )
    train_set.delete()
    test_set.delete()
    spark.stop()
    report(epoch_losses=history.history["loss"], accuracy=history.history["val_accuracy"][-1])


if __name__ == "__main__":
    main()
