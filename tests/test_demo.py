"""sparkfeed demo, run for real as a user runs it: ``python -m sparkfeed demo --framework X``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sparkfeed.cli import main


def run_demo(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    """The demo in a process of its own, its caches under ``tmp_path``; its JSON summary and its output."""
    cache = tmp_path / "caches"
    done = subprocess.run(
        [sys.executable, "-m", "sparkfeed", "demo", "--json", "--cache-dir", str(cache), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not any(cache.iterdir())  # both caches deleted, and nothing else left in the directory given
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout


def check(result: dict[str, Any], framework: str, epochs: int) -> None:
    assert result["framework"] == framework
    assert result["train_rows"] + result["test_rows"] == 1797  # every digit, in one split or the other
    assert 300 < result["test_rows"] < 420  # one in five held out
    losses = result["epoch_losses"]
    assert len(losses) == epochs and losses[-1] < losses[0] / 3
    assert result["png_matches_vector"]
    assert result["heldout_accuracy"] > 0.9
    # Spark's tasks predicted every test row exactly once, with the driver's weights: the same accuracy.
    assert result["spark_predictions"] == result["spark_distinct_ids"] == result["test_rows"]
    assert result["spark_accuracy"] == pytest.approx(result["heldout_accuracy"], abs=1.5 / result["test_rows"])
    assert result["cache_deleted"]


@pytest.mark.slow
def test_demo_trains_pytorch_and_infers_on_spark(tmp_path: Path) -> None:
    result, output = run_demo(tmp_path)  # the default framework and epochs, as `make demo` runs it
    check(result, "torch", epochs=5)
    assert "epoch 5: loss" in output and "accuracy from a Spark join of" in output and "caches deleted" in output


@pytest.mark.slow
def test_demo_trains_keras_and_infers_on_spark(tmp_path: Path) -> None:
    result, _ = run_demo(tmp_path, "--framework", "tf", "--epochs", "3")
    check(result, "tf", epochs=3)


@pytest.mark.slow
def test_demo_trains_jax_with_optax_and_infers_on_spark(tmp_path: Path) -> None:
    result, _ = run_demo(tmp_path, "--framework", "jax", "--epochs", "3", "--seed", "1")
    check(result, "jax", epochs=3)


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optax", None)  # as if not installed
    done = CliRunner().invoke(main, ["demo", "--framework", "jax"])
    assert done.exit_code == 1
    assert "needs optax, which is not installed: pip install 'sparkfeed[demo,jax]'" in done.output


def test_demo_options_are_checked_before_anything_starts() -> None:
    done = CliRunner().invoke(main, ["demo", "--framework", "mxnet"])
    assert done.exit_code == 2 and "'mxnet' is not one of 'torch', 'tf', 'jax'" in done.output
    done = CliRunner().invoke(main, ["demo", "--epochs", "0"])
    assert done.exit_code == 2 and "0 is not in the range x>=1" in done.output
