"""make_jax_iterator: dicts of jax.Array that train a model; the extra named when JAX is missing."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pyspark.sql import functions as F

from sparkfeed import make_spark_converter


@pytest.fixture(scope="module")
def regression(spark):
    df = spark.range(2000).select(
        "id", F.array(*[F.randn(seed=i) for i in range(3)]).alias("x"), F.lit("tag").alias("name")
    )
    df = df.withColumn("y", 3 * F.col("x")[0] - F.col("x")[1] + 2 * F.col("x")[2])
    return make_spark_converter(df)


def test_batches_are_jax_arrays_on_the_device(regression) -> None:
    device = jax.devices()[0]
    with regression.make_jax_iterator(batch_size=256, num_epochs=1, device=device) as loader:
        batches = list(loader)
        assert len(loader) == len(batches) == 8
    first = batches[0]
    assert isinstance(first["x"], jax.Array) and first["x"].shape == (256, 3) and first["x"].dtype == jnp.float32
    assert first["x"].devices() == {device}
    assert isinstance(first["name"], np.ndarray) and first["name"][0] == "tag"
    ids = np.concatenate([np.asarray(b["id"]) for b in batches])
    assert sorted(ids.tolist()) == list(range(2000))


def test_a_model_trains_with_jax_grad(regression) -> None:
    def loss(w, x, y):
        return jnp.mean((x @ w - y) ** 2)

    step = jax.jit(lambda w, x, y: w - 0.1 * jax.grad(loss)(w, x, y))
    w = jnp.zeros(3)
    losses = []
    with regression.make_jax_iterator(batch_size=100, num_epochs=5, seed=0) as loader:
        for batch in loader:
            losses.append(float(loss(w, batch["x"], batch["y"])))
            w = step(w, batch["x"], batch["y"])
    assert losses[-1] < 0.01 * losses[0]
    np.testing.assert_allclose(np.asarray(w), [3, -1, 2], atol=0.05)


def test_device_and_sharding_are_exclusive(regression) -> None:
    with pytest.raises(ValueError, match="give device or sharding, not both"):
        regression.make_jax_iterator(
            device=jax.devices()[0], sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])
        )


def test_missing_jax_names_the_extra(regression, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "jax", None)
    with pytest.raises(ImportError, match=r"pip install 'sparkfeed\[jax\]'"):
        regression.make_jax_iterator()
