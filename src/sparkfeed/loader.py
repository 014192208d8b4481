"""What every framework loader shares: a reader underneath, its length, state and lifetime."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

from sparkfeed.reader import Reader


class ReaderLoader:
    """Base of the framework loaders: delegates length, resume state and closing to the reader.

    A context manager: leaving the ``with`` block stops the reader threads. One iteration at a
    time, as the reader (whose position ``state_dict()`` saves): starting a second while one is
    unfinished raises a ``RuntimeError``; a finished, closed or dropped one does not count.
    """

    def __init__(self, reader: Reader[Any]) -> None:
        self._reader = reader

    def __len__(self) -> int:
        return len(self._reader)

    def state_dict(self) -> dict[str, Any]:
        """The reader's position; see :meth:`sparkfeed.reader.Reader.state_dict`."""
        return self._reader.state_dict()

    def load_state_dict(self, state: dict[str, Any] | Sequence[dict[str, Any]]) -> None:
        """Continues from a saved position; see :meth:`sparkfeed.reader.Reader.load_state_dict`.

        Raises:
            ValueError: The state is malformed or belongs to another cache, loader or shard.
        """
        self._reader.load_state_dict(state)

    def stats(self) -> dict[str, Any]:
        """Whether the input is the bottleneck; see :meth:`sparkfeed.reader.Reader.stats`."""
        return self._reader.stats()

    def close(self) -> None:
        """Stops the reader threads."""
        self._reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
