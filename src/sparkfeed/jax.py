"""The JAX adapter: the engine's batches as dicts of ``jax.Array`` on a device or a sharding."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from sparkfeed.loader import ReaderLoader
from sparkfeed.reader import Reader
from sparkfeed.reader.batch import Columns


def import_jax() -> ModuleType:
    """jax, or an ImportError that names the extra to install."""
    try:
        import jax
    except ImportError as error:
        raise ImportError(
            "make_jax_iterator needs JAX, which is not installed: pip install 'sparkfeed[jax]'"
        ) from error
    return jax


class JaxIterator(ReaderLoader):
    """Iterates dicts of ``jax.Array`` (strings and bytes stay NumPy object arrays).

    Dates become int64 days and timestamps int64 microseconds; like every 64-bit array they are
    narrowed to 32 bits unless ``jax_enable_x64`` is on, as ``jax.device_put`` always does.
    A context manager; ``state_dict()`` / ``load_state_dict()`` as on the other loaders.
    """

    def __init__(self, reader: Reader[Columns], device: Any = None, sharding: Any = None) -> None:
        if device is not None and sharding is not None:
            raise ValueError("give device or sharding, not both")
        self._jax = import_jax()
        super().__init__(reader)
        self._numpy_reader = reader
        self._target = sharding if sharding is not None else device

    def __iter__(self) -> Iterator[dict[str, Any]]:
        put = self._jax.device_put
        for batch in self._numpy_reader:
            numeric = {
                name: array.view(np.int64) if array.dtype.kind in "Mm" else array
                for name, array in batch.items()
                if array.dtype != object
            }
            placed = put(numeric, self._target)
            yield {name: placed.get(name, array) for name, array in batch.items()}
