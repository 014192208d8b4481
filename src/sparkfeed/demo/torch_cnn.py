"""The demo's CNN in PyTorch: a training loop over sparkfeed's torch loader."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sparkfeed.demo import BATCH_SIZE, Echo, Predict, Weights, accuracy

if TYPE_CHECKING:
    from sparkfeed.converter import SparkDatasetConverter
    from sparkfeed.transform import TransformSpec

CHANNELS_FIRST = True


def build() -> Any:
    """Two 3x3 convolutions, a 2x2 max-pool and a linear layer: 10k weights, enough for 8x8 digits."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 4 * 4, 10),
    )


def train(
    train: SparkDatasetConverter,
    test: SparkDatasetConverter,
    spec: TransformSpec,
    *,
    epochs: int,
    seed: int,
    echo: Echo,
) -> tuple[list[float], Weights]:
    """Trains with Adam; each epoch's mean loss and held-out accuracy are echoed."""
    torch.manual_seed(seed)
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    # One finite loader iterated once per epoch: each pass is the next epoch, in a new seeded order.
    with train.make_torch_dataloader(
        batch_size=BATCH_SIZE, num_epochs=1, seed=seed, shuffle_rows=True, transform_spec=spec
    ) as loader:
        for epoch in range(1, epochs + 1):
            model.train()
            total, rows = 0.0, 0
            for batch in loader:
                loss = torch.nn.functional.cross_entropy(model(batch["image"]), batch["label"])
                optimizer.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                total, rows = total + loss.item() * len(batch["label"]), rows + len(batch["label"])
            losses.append(total / rows)
            heldout = accuracy(test, spec, predictor(_weights(model)))
            echo(f"  epoch {epoch}: loss {losses[-1]:.4f}, held-out accuracy {heldout:.4f}")
    return losses, _weights(model)


def _weights(model: Any) -> Weights:
    return {name: tensor.detach().numpy().copy() for name, tensor in model.state_dict().items()}


def predictor(weights: Weights) -> Predict:
    """The CNN rebuilt from NumPy weights, predicting digits from (rows, 1, 8, 8) images."""
    model = build()
    model.load_state_dict({name: torch.from_numpy(np.asarray(array)) for name, array in weights.items()})
    model.eval()

    def predict(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            result: np.ndarray = model(torch.from_numpy(images)).argmax(1).numpy()
        return result

    return predict
