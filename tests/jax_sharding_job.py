"""Run by test_jax.py in a process of its own, where JAX sees two CPU devices.

``XLA_FLAGS`` must be set before JAX starts, hence the process. Reads a pickled converter with
a sharding that splits the batch dimension over both devices. Prints one JSON line.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import json
import pickle
import sys

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def main(converter_path: str) -> None:
    with open(converter_path, "rb") as handle:
        converter = pickle.load(handle)
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), PartitionSpec("data"))
    settings = {"batch_size": 20, "num_epochs": 1, "shuffle_row_groups": False}
    with converter.make_numpy_iterator(drop_last=True, **settings) as batches:
        expected = [b["x"] for b in batches]
    shard_shapes, equal = set(), True
    with converter.make_jax_iterator(sharding=sharding, drop_last=True, **settings) as batches:
        got = list(batches)
    for batch, want in zip(got, expected, strict=True):
        shard_shapes |= {(s.device.id, s.data.shape) for s in batch["x"].addressable_shards}
        equal &= bool(np.array_equal(np.asarray(batch["x"]), want))
    try:
        with converter.make_jax_iterator(sharding=sharding, **settings) as batches:
            list(batches)
        error = ""
    except ValueError as exc:
        error = str(exc)
    print(
        json.dumps(
            {
                "devices": len(jax.devices()),
                "batches": len(got),
                "expected": len(expected),
                "equal": equal,
                "shard_shapes": sorted(shard_shapes),
                "error": error,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
