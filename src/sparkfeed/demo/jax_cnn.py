"""The demo's CNN in JAX: plain ``jax.lax`` layers, optax's Adam, a jitted step over sparkfeed's JAX iterator."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparkfeed.demo import BATCH_SIZE, Echo, Predict, Weights, accuracy

if TYPE_CHECKING:
    from sparkfeed.converter import SparkDatasetConverter
    from sparkfeed.transform import TransformSpec

CHANNELS_FIRST = False

Params = dict[str, Any]


def init(seed: int) -> Params:
    """Two 3x3 convolutions, a 2x2 max-pool and a dense layer, He-initialized: 10k weights."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    he = jax.nn.initializers.he_normal()
    return {
        "conv1_w": he(keys[0], (3, 3, 1, 16)),
        "conv1_b": jnp.zeros(16),
        "conv2_w": he(keys[1], (3, 3, 16, 32)),
        "conv2_b": jnp.zeros(32),
        "dense_w": he(keys[2], (4 * 4 * 32, 10)),
        "dense_b": jnp.zeros(10),
    }


def forward(params: Params, images: Any) -> Any:
    """Logits of (rows, 8, 8, 1) images."""
    layout = ("NHWC", "HWIO", "NHWC")
    x = jax.lax.conv_general_dilated(images, params["conv1_w"], (1, 1), "SAME", dimension_numbers=layout)
    x = jax.nn.relu(x + params["conv1_b"])
    x = jax.lax.conv_general_dilated(x, params["conv2_w"], (1, 1), "SAME", dimension_numbers=layout)
    x = jax.nn.relu(x + params["conv2_b"])
    x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return x.reshape(x.shape[0], -1) @ params["dense_w"] + params["dense_b"]


def _loss(params: Params, images: Any, labels: Any) -> Any:
    return optax.softmax_cross_entropy_with_integer_labels(forward(params, images), labels).mean()


def train(
    train: SparkDatasetConverter,
    test: SparkDatasetConverter,
    spec: TransformSpec,
    *,
    epochs: int,
    seed: int,
    echo: Echo,
) -> tuple[list[float], Weights]:
    """Trains with optax's Adam; each epoch's mean loss and held-out accuracy are echoed."""
    params = init(seed)
    optimizer = optax.adam(3e-3)
    state = optimizer.init(params)

    @jax.jit
    def step(params: Params, state: Any, images: Any, labels: Any) -> tuple[Params, Any, Any]:
        loss, grads = jax.value_and_grad(_loss)(params, images, labels)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    # drop_last: one batch shape, so the step compiles once; each pass over the iterator is the next epoch.
    with train.make_jax_iterator(
        batch_size=BATCH_SIZE,
        num_epochs=1,
        seed=seed,
        shuffle_rows=True,
        drop_last=True,
        transform_spec=spec,
    ) as batches:
        for epoch in range(1, epochs + 1):
            epoch_losses = []
            for batch in batches:
                params, state, loss = step(params, state, batch["image"], batch["label"])
                epoch_losses.append(loss)
            losses.append(float(jnp.mean(jnp.stack(epoch_losses))))
            heldout = accuracy(test, spec, predictor(_weights(params)))
            echo(f"  epoch {epoch}: loss {losses[-1]:.4f}, held-out accuracy {heldout:.4f}")
    return losses, _weights(params)


def _weights(params: Params) -> Weights:
    return {name: np.asarray(value) for name, value in params.items()}


def predictor(weights: Weights) -> Predict:
    """The CNN with NumPy weights, predicting digits from (rows, 8, 8, 1) images (jitted)."""
    params = {name: jnp.asarray(value) for name, value in weights.items()}
    logits = jax.jit(functools.partial(forward, params))

    def predict(images: np.ndarray) -> np.ndarray:
        result: np.ndarray = np.asarray(logits(images)).argmax(1)
        return result

    return predict
