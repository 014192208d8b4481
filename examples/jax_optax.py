"""JAX and optax: MLlib vectors from a Spark DataFrame train a classifier through sparkfeed's JAX iterator.

Run: python examples/jax_optax.py
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from sparkfeed import make_spark_converter

from shared import digits, report, spark_session


def init(key: jax.Array) -> dict[str, jax.Array]:
    """A two-layer perceptron over the 64 pixels."""
    first, second = jax.random.split(key)
    he = jax.nn.initializers.he_normal()
    return {"w1": he(first, (64, 64)), "b1": jnp.zeros(64), "w2": he(second, (64, 10)), "b2": jnp.zeros(10)}


def forward(params: dict[str, jax.Array], pixels: jax.Array) -> jax.Array:
    return jax.nn.relu(pixels @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def loss_fn(params: dict[str, jax.Array], pixels: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(forward(params, pixels), labels).mean()


optimizer = optax.adam(0.01)


@jax.jit
def step(params: dict[str, jax.Array], state: Any, pixels: jax.Array, labels: jax.Array) -> tuple[Any, Any, jax.Array]:
    loss, grads = jax.value_and_grad(loss_fn)(params, pixels, labels)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss


def main() -> None:
    spark = spark_session()
    train_df, test_df = digits(spark)
    train_set = make_spark_converter(train_df.select("pixels", "label"))
    test_set = make_spark_converter(test_df.select("pixels", "label"))

    params = init(jax.random.PRNGKey(0))
    state = optimizer.init(params)
    losses = []
    # drop_last: every batch has one shape, so `step` compiles once; each pass is the next epoch.
    with train_set.make_jax_iterator(batch_size=32, num_epochs=1, seed=0, shuffle_rows=True, drop_last=True) as batches:
        for epoch in range(1, 9):
            epoch_losses = []
            for batch in batches:  # dicts of jax.Array: "pixels" (32, 64) float32, "label" (32,) int32
                params, state, loss = step(params, state, batch["pixels"], batch["label"])
                epoch_losses.append(loss)
            losses.append(float(jnp.mean(jnp.stack(epoch_losses))))
            print(f"epoch {epoch}: loss {losses[-1]:.4f} over {len(epoch_losses)} batches")

    right = rows = 0
    with test_set.make_jax_iterator(batch_size=256, num_epochs=1) as batches:
        for batch in batches:
            right += int((forward(params, batch["pixels"]).argmax(1) == batch["label"]).sum())
            rows += len(batch["label"])
    print(f"held-out accuracy: {right / rows:.4f}")
    train_set.delete()
    test_set.delete()
    spark.stop()
    report(epoch_losses=losses, accuracy=right / rows)


if __name__ == "__main__":
    main()
