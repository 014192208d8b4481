"""Every script in examples/, run as a user runs it, in a process of its own, checked by what it printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"

pytestmark = pytest.mark.slow


def run_example(script: str, *args: str, tmp_path: Path) -> dict[str, Any]:
    """Runs ``examples/<script>`` with its caches under ``tmp_path``; the JSON line it printed last.

    Every example deletes its caches; the test checks that nothing is left in the cache directory.
    """
    caches = tmp_path / "caches"
    caches.mkdir()
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "SPARKFEED_CACHE_DIR": str(caches)},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert not any(caches.iterdir())
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def check_training(result: dict[str, Any], epochs: int) -> None:
    losses = result["epoch_losses"]
    assert len(losses) == epochs and losses[-1] < losses[0] / 4
    assert result["accuracy"] > 0.9


def test_pytorch_single_node(tmp_path: Path) -> None:
    result = run_example("pytorch_single_node.py", tmp_path=tmp_path)
    check_training(result, epochs=8)
    assert result["rows_per_epoch"] == result["train_rows"]  # one process reads every row once an epoch


def test_keras_fit(tmp_path: Path) -> None:
    check_training(run_example("keras_fit.py", tmp_path=tmp_path), epochs=8)


def test_jax_optax(tmp_path: Path) -> None:
    check_training(run_example("jax_optax.py", tmp_path=tmp_path), epochs=8)


def test_torch_distributor_local_mode(tmp_path: Path) -> None:
    result = run_example("torch_distributor.py", tmp_path=tmp_path)
    assert result["local_mode"] and result["world"] == 2
    check_training(result, epochs=8)
    # The two ranks read halves of the rows (a short shard repeats one row, so both take as many steps).
    assert result["train_rows"] <= result["rows_per_epoch"] <= result["train_rows"] + 1


def test_torch_distributor_on_a_standalone_cluster(standalone_master: str, tmp_path: Path) -> None:
    result = run_example("torch_distributor.py", standalone_master, tmp_path=tmp_path)
    assert not result["local_mode"] and result["world"] == 2
    check_training(result, epochs=8)
    assert result["train_rows"] <= result["rows_per_epoch"] <= result["train_rows"] + 1


def test_distributed_inference(tmp_path: Path) -> None:
    result = run_example("distributed_inference.py", tmp_path=tmp_path)
    # Every test row predicted exactly once by the shards' tasks, and once by predict_batch_udf.
    assert result["rows"] == result["ids"] == result["test_rows"] == sum(result["rows_per_shard"])
    assert result["shards"] == 4 and max(result["rows_per_shard"]) - min(result["rows_per_shard"]) <= 1
    assert result["missed_by_shards"] == result["missed_by_udf"] == 0
    assert result["accuracy_by_shards"] > 0.9
    # The same weights on the same pixels (float32 from the cache, float64 cast by make_predict_fn).
    assert result["agreement"] == 1.0 and result["accuracy_by_udf"] == result["accuracy_by_shards"]


def test_images_decoded_in_a_process_pool(tmp_path: Path) -> None:
    result = run_example("images_process_pool.py", tmp_path=tmp_path)
    assert result["rows"] == 1797 and result["every_row_once_per_epoch"]
    assert result["mismatched"] == 0  # each decoded PNG equals its row's pixel vector
    assert result["decoded_by"] and result["main_pid"] not in result["decoded_by"]  # by the worker processes
