"""The JAX adapter: the engine's batches as dicts of ``jax.Array`` on a device or a sharding."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

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


class JaxIterator:
    """Iterates dicts of ``jax.Array`` (strings and bytes stay NumPy object arrays).

    Dates become int64 days and timestamps int64 microseconds; like every 64-bit array they are
    narrowed to 32 bits unless ``jax_enable_x64`` is on, as ``jax.device_put`` always does.
    A context manager; ``state_dict()`` / ``load_state_dict()`` as on the other loaders.
    """

    def __init__(self, reader: Reader[Columns], device: Any = None, sharding: Any = None) -> None:
        if device is not None and sharding is not None:
            raise ValueError("give device or sharding, not both")
        self._jax = import_jax()
        self._reader = reader
        self._target = sharding if sharding is not None else device

    def __iter__(self) -> Iterator[dict[str, Any]]:
        put = self._jax.device_put
        for batch in self._reader:
            numeric = {
                name: array.view(np.int64) if array.dtype.kind in "Mm" else array
                for name, array in batch.items()
                if array.dtype != object
            }
            placed = put(numeric, self._target)
            yield {name: placed.get(name, array) for name, array in batch.items()}

    def __len__(self) -> int:
        return len(self._reader)

    def state_dict(self) -> dict[str, Any]:
        """The reader's position; see :meth:`sparkfeed.reader.Reader.state_dict`."""
        return self._reader.state_dict()

    def load_state_dict(self, state: Any) -> None:
        """Continues from a saved position; see :meth:`sparkfeed.reader.Reader.load_state_dict`."""
        self._reader.load_state_dict(state)

    def close(self) -> None:
        """Stops the reader threads."""
        self._reader.close()

    def __enter__(self) -> JaxIterator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
