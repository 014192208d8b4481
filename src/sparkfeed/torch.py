"""The PyTorch adapter: the engine's NumPy batches as dicts of tensors, without copies."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

from sparkfeed.reader import Reader


def import_torch() -> ModuleType:
    """torch, or an ImportError that names the extra to install."""
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "make_torch_dataloader needs PyTorch, which is not installed: pip install 'sparkfeed[torch]'"
        ) from error
    return torch


def to_torch(array: np.ndarray) -> Any:
    """One column of a batch as a tensor; strings and bytes, which torch cannot hold, as a list."""
    torch = import_torch()
    kind = array.dtype.kind
    if kind in "biufc":
        return torch.from_numpy(array)
    if kind in "Mm":
        # Dates become int64 days, timestamps int64 microseconds (the unit the cache holds).
        return torch.from_numpy(array.view(np.int64))
    return [torch.from_numpy(v) if isinstance(v, np.ndarray) and v.dtype.kind in "biuf" else v for v in array]


class TorchDataLoader:
    """Iterates dicts of ``torch.Tensor`` with a leading batch dimension.

    A context manager like Petastorm's loader: leaving the ``with`` block stops the reader.
    """

    def __init__(self, reader: Reader) -> None:
        import_torch()
        self._reader = reader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self._reader:
            with warnings.catch_warnings():
                # Arrow's buffers are read-only; the tensors share them, and writing to a batch
                # in place is not something a loader's consumer does.
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                tensors = {name: to_torch(array) for name, array in batch.items()}
            yield tensors

    def __len__(self) -> int:
        return len(self._reader)

    def close(self) -> None:
        """Stops the reader threads."""
        self._reader.close()

    def __enter__(self) -> TorchDataLoader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
