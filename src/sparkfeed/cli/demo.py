"""``sparkfeed demo``: scikit-learn's digits from a Spark DataFrame to a trained CNN and back to Spark."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click


@click.command(short_help="Digits from a DataFrame train a small CNN; inference on Spark.")
@click.option(
    "--framework",
    type=click.Choice(["torch", "tf", "jax"]),
    default="torch",
    show_default=True,
    help="Train with PyTorch, TensorFlow (Keras) or JAX (optax).",
)
@click.option(
    "--epochs", type=click.IntRange(min=1), default=5, show_default=True, help="Passes over the training split."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split, the weights and the shuffle.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Parent directory of the caches (default: a new temporary one, removed at the end). The caches are "
    "deleted at the end either way.",
)
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of the results, for scripts.")
def demo(framework: str, epochs: int, seed: int, cache_dir: Path | None, as_json: bool) -> None:
    """Convert scikit-learn's digits (PNG bytes and an MLlib vector in a DataFrame), train a CNN, infer on Spark.

    Runs on a local Spark session of two cores; needs the demo extra and the framework:
    pip install 'sparkfeed[demo,torch]' (or tf, jax).
    """
    from sparkfeed.demo import require, run_demo

    try:
        require(framework)  # type: ignore[arg-type]  # click.Choice checked the value
    except ImportError as error:
        raise click.ClickException(str(error)) from error
    result = run_demo(
        framework,  # type: ignore[arg-type]
        epochs=epochs,
        seed=seed,
        cache_dir=None if cache_dir is None else str(cache_dir.resolve()),
        echo=click.echo,
        progress=True,
    )
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(result)))
