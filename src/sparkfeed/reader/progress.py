"""A per-epoch progress bar for the loaders (``progress=True``), drawn with tqdm on stderr.

The bar counts what the training loop receives: batches, and the rows they hold as a rows/s
postfix. It must not slow the loop it measures, so a batch costs one clock read and two
additions; tqdm itself is touched at most every :data:`REFRESH_SECONDS`, when the batches
counted since are handed to it at once.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

REFRESH_SECONDS = 0.1
"""How often the bar is redrawn at most: often enough to look alive, rarely enough to cost nothing."""


class EpochBar:
    """One epoch's bar: made when the epoch's first batch is ready, closed when it ends or the loop stops.

    Args:
        epoch: The epoch's number (from 0), shown as the bar's label.
        total: Batches the epoch will yield, or None where filters make it unknown until read.
        shard: ``(cur_shard, shard_count)``; a sharded reader says which shard it is.
        file: Where the bar goes (stderr by default, resolved now so a redirected stderr is honoured).
    """

    def __init__(self, epoch: int, total: int | None, shard: tuple[int, int], file: TextIO | None = None) -> None:
        from tqdm import tqdm  # only loaders that ask for a bar pay for the import

        label = f"epoch {epoch}" if shard[1] == 1 else f"epoch {epoch} (shard {shard[0]} of {shard[1]})"
        self._bar: Any = tqdm(
            total=total,
            desc=label,
            unit="batch",
            file=file if file is not None else sys.stderr,
            mininterval=REFRESH_SECONDS,
            dynamic_ncols=True,
        )
        self._started = time.perf_counter()
        self._next = self._started + REFRESH_SECONDS
        self._rows = 0
        self._pending = 0  # batches counted here, not yet handed to tqdm

    def step(self, batches: int, rows: int) -> None:
        """Counts one batch of the loop (``batches`` steps of the bar: an adapter may cut it further)."""
        self._pending += batches
        self._rows += rows
        now = time.perf_counter()
        if now >= self._next:
            self._flush(now)

    def _flush(self, now: float) -> None:
        self._next = now + REFRESH_SECONDS
        elapsed = now - self._started
        if elapsed > 0:
            self._bar.set_postfix_str(f"{self._rows / elapsed:,.0f} rows/s", refresh=False)
        pending, self._pending = self._pending, 0
        self._bar.update(pending)

    def close(self) -> None:
        """Shows the last counts and leaves the bar on its line; safe to call twice."""
        if self._bar is None:
            return
        self._flush(time.perf_counter())
        self._bar.close()
        self._bar = None
