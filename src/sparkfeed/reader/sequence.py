"""Sequences in the reader: arrays of varying length batched padded, bucketed or packed.

A column named in ``sequence=`` travels from Arrow to the batch as a :class:`~sparkfeed.reader.ragged.Ragged`
(values and offsets) or, bucketed or packed from a cache of ``binary_view`` cells, as
:class:`~sparkfeed.reader.ragged.Views` (each row where Parquet decoded it), never as one object
per row; :class:`SequencePlan` decides what each batch becomes. Two ways of cutting batches,
chosen so that a saved position stays what it always was, "rows consumed of segment ``s`` in
its output order" (see :mod:`sparkfeed.reader.plan`), and resume, sharding and shuffling stay
exact:

- ``pad`` and ``ragged`` change what a batch holds, not which rows: the batcher cuts batches
  exactly as for any other column (only an epoch's last batch is short, so DDP ranks keep equal
  batch counts), and each batch is padded when it leaves the batcher (:meth:`SequencePlan.finish`).
- ``bucket`` and ``pack`` decide which rows make a batch from the rows' lengths, so their
  batches are made inside one segment, by the worker that read it, and never span two: the
  position after a batch is the segment row its last row came from. ``bucket`` reorders a
  segment's rows, a stable, deterministic function of the whole window's rows like the shuffle
  permutation (:meth:`SequencePlan.bucket_order`), so a cut, a remainder or a reshard of a
  segment means the same rows in the same order; ``pack`` keeps the order and fills each batch
  greedily from where the segment (or the resumed position) starts, never splitting a row
  between two batches, so every batch ends on a row boundary.

The rows' lengths decide how many bucketed or packed batches there are, so the loader counts
them from the key column's lengths alone (:meth:`SequencePlan.batch_ends`, the same cuts as
:meth:`SequencePlan.batches`): for ``len()``, the progress bar, and, sharded, to end each epoch
after the fewest batches any shard makes, so that DDP ranks stay in step.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from sparkfeed.reader.ragged import Ragged, Views, cell_width, length_mask, ranges, repeated, zero_pad
from sparkfeed.sequence import Sequence
from sparkfeed.types import ColumnSpec
from sparkfeed.writer import ShapeStats, is_list_type

Columns = dict[str, Any]
"""A chunk or batch whose sequence columns may be :class:`Ragged`."""

LENGTHS, MASK, SEGMENT_IDS, POSITION_IDS = "_lengths", "_mask", "_segment_ids", "_position_ids"
INDEX_DTYPE = np.dtype(np.int32)
"""Lengths, segment ids and position ids: int32, what JAX holds without x64 and embeddings take."""

SMALLEST_BUCKET = 8

GROUP_BYTES = 8 << 20
"""At most this many bytes in each array that a segment's packed or bucketed batches are cut
from: a segment is batched a few batches at a time. A row group's outputs made at once (33 MB a
column for 8M tokens) were faulted in and zeroed by the kernel page by page on every use (Arrow's
allocator hands allocations that large back to the system when they are freed); in groups of
8 MiB the same packed ids and values took 1.5-1.7 instead of 2.4 ns a token in one thread.
Smaller groups cost more in per-group steps (2 MiB: +7%, 512 KiB: +60% a packed epoch)."""


@dataclasses.dataclass(frozen=True)
class ColumnPlan:
    """One sequence column: its options and what the dataset says of it.

    Attributes:
        name: The column.
        spec: Its :class:`~sparkfeed.Sequence`.
        inner: The shape of each value (``()`` for ``array<number>``); None when a transform
            makes the column.
        bounds: ``bucket``: the padded length of each bucket, increasing.
        dtype: The values' dtype; None when a transform makes the column.
        given: When a transform makes the column, the inner shape and dtype of the cache's
            column of that name (None if it has none, or not one of numbers): what a chunk of
            rows that say nothing of theirs takes (see :meth:`Ragged.from_objects`).
    """

    name: str
    spec: Sequence
    inner: tuple[int, ...] | None = ()
    bounds: tuple[int, ...] = ()
    dtype: np.dtype | None = None
    given: tuple[tuple[int, ...], np.dtype] | None = None

    @property
    def mode(self) -> str:
        """The column's mode."""
        return self.spec.mode

    def outputs(self) -> list[str]:
        """The batch entries this column becomes, in order."""
        name, spec = self.name, self.spec
        extra = [name + SEGMENT_IDS, name + POSITION_IDS] if spec.mode == "pack" else [name + LENGTHS]
        if spec.mask:
            extra.append(name + MASK)
        return [name, *extra]


@dataclasses.dataclass(frozen=True)
class SequencePlan:
    """The sequence columns of one reader and how its batches are made of them.

    Made by :meth:`build` when the loader is made, from the ``sequence`` argument, the columns
    and the lengths the cache's manifest measured; it pickles into worker processes.

    Attributes:
        columns: The sequence columns, in ``sequence`` order.
        batch_size: Rows per batch (``pack``: packed rows per batch).
        drop_last: ``bucket``: leave out the batches with fewer rows; else the batcher's rule.
        checked: Whether the dataset's columns were checked already (not when a transform
            makes them: then each chunk is checked as it comes).
    """

    columns: tuple[ColumnPlan, ...]
    batch_size: int
    drop_last: bool = False
    checked: bool = True

    # ---------------------------------------------------------------- building

    @classmethod
    def build(
        cls,
        sequence: Mapping[str, Sequence],
        specs: Mapping[str, ColumnSpec],
        shapes: Mapping[str, ShapeStats],
        batch_size: int,
        drop_last: bool,
        transform: bool,
    ) -> SequencePlan:
        """Checks ``sequence`` against the dataset and works out the bucket bounds.

        Args:
            sequence: The validated ``sequence`` argument.
            specs: The selected columns (what the cache holds; a transform may change it).
            shapes: The manifest's length statistics per list column.
            batch_size: Rows per batch.
            drop_last: The loader's ``drop_last``.
            transform: Whether a transform makes the batches' columns: the cache's columns
                then say nothing certain, and checks wait for the first chunk.

        Raises:
            ValueError: A column is missing or not an array of numbers, its inner arrays vary
                in length, a bucket or a packed batch cannot hold its longest row, other columns
                would not line up with packed rows, or an output name is taken.
        """
        plans = []
        for name, spec in sequence.items():
            longest, inner, dtype, given = None, None, None, None
            if not transform:
                longest = _longest(name, spec, specs, shapes)
                inner = _inner(specs[name])
                dtype = _leaf_dtype(specs[name].arrow_type)
                _check_pad_value(name, spec.pad_value, dtype)
            else:
                given = _given(name, spec, specs, shapes)
            bounds: tuple[int, ...] = ()
            if spec.mode == "bucket":
                bounds = _bucket_bounds(name, spec, longest, cached=name in specs)
            if spec.mode == "pack" and longest is not None:
                limit = min(longest, spec.max_length or longest)
                grid = batch_size * (spec.seq_len or 0)
                if limit > grid:
                    raise ValueError(
                        f"sequence: column {name!r} has rows of up to {limit} values, more than one packed batch holds "
                        f"(batch_size {batch_size} x seq_len {spec.seq_len} = {grid}); a row is never split between "
                        "two batches: raise seq_len or batch_size, or truncate rows with max_length"
                    )
            plans.append(ColumnPlan(name, spec, inner, bounds, dtype, given))
        plan = cls(tuple(plans), batch_size, drop_last, checked=not transform)
        if not transform:
            plan.check_columns(list(specs))
        return plan

    def check_columns(self, names: list[str]) -> None:
        """Checks a batch's column names: pack lines up with nothing else, and no output name is taken.

        Raises:
            ValueError: What is wrong, and what to do.
        """
        if self.mode == "pack":
            others = [name for name in names if name not in self.names]
            if others:
                raise ValueError(
                    f"sequence: packed rows mix several source rows, so columns {others} would not line up with them; "
                    "leave them out with schema_fields (or pack them too: every packed column needs the same lengths)"
                )
            modes = {plan.mode for plan in self.columns}
            if modes != {"pack"}:
                raise ValueError(
                    "sequence: with 'pack', every sequence column is packed: the same rows, the same packed layout"
                )
        taken = set(names)
        for plan in self.columns:
            for output in plan.outputs()[1:]:
                if output in taken:
                    raise ValueError(
                        f"sequence: column {plan.name!r} yields {output!r}, which is already a column of the batch: "
                        "rename that column in Spark, or leave it out with schema_fields"
                    )
                taken.add(output)

    # ---------------------------------------------------------------- describing

    @property
    def names(self) -> frozenset[str]:
        """The sequence columns."""
        return frozenset(plan.name for plan in self.columns)

    @property
    def mode(self) -> str | None:
        """``bucket`` or ``pack`` when one of them cuts the batches; None when the batcher does."""
        for plan in self.columns:
            if plan.mode in ("bucket", "pack"):
                return plan.mode
        return None

    @property
    def whole_batches(self) -> bool:
        """Whether batches are made inside each segment by its worker (``bucket``, ``pack``)."""
        return self.mode is not None

    @property
    def key(self) -> ColumnPlan | None:
        """The column whose lengths cut the batches (the bucketed one, the first packed one)."""
        return next((plan for plan in self.columns if plan.mode in ("bucket", "pack")), None)

    def describe(self) -> str:
        """The plan as canonical text, for the reader state's identity: it decides the batches."""
        return json.dumps({plan.name: plan.spec.describe() for plan in self.columns}, sort_keys=True)

    def outputs(self, names: list[str]) -> list[str]:
        """The names of a finished batch made from columns ``names``, in order."""
        plans = {plan.name: plan for plan in self.columns}
        return [out for name in names for out in (plans[name].outputs() if name in plans else [name])]

    def output_shapes(
        self, name: str, dtype: np.dtype, row_shape: tuple[int, ...]
    ) -> list[tuple[str, np.dtype, tuple[int | None, ...], str]]:
        """What a column becomes in a finished batch: ``(name, dtype, per-row shape, kind)`` per output.

        ``None`` in a shape is a length that varies from batch to batch; ``kind`` is
        ``"tensor"``, or ``"ragged"`` for a ``ragged``-mode column's values (a
        ``tf.RaggedTensor`` in TF). ``row_shape`` is the column's inner shape (each value's).
        """
        plans = {plan.name: plan for plan in self.columns}
        plan = plans.get(name)
        if plan is None:
            return [(name, dtype, row_shape, "tensor")]
        index, spec = INDEX_DTYPE, plan.spec
        if spec.mode == "ragged":
            return [(name, dtype, (None, *row_shape), "ragged"), (name + LENGTHS, index, (), "tensor")]
        length: int | None = spec.seq_len if spec.mode == "pack" else None
        out = [(name, dtype, (length, *row_shape), "tensor")]
        if spec.mode == "pack":
            out += [(name + SEGMENT_IDS, index, (length,), "tensor"), (name + POSITION_IDS, index, (length,), "tensor")]
        else:
            out.append((name + LENGTHS, index, (), "tensor"))
        if spec.mask:
            out.append((name + MASK, np.dtype(bool), (length,), "tensor"))
        return out

    # ---------------------------------------------------------------- worker side

    def arrow_lengths(self, column: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """The key column's row lengths, from its Arrow offsets, once cut to ``max_length``."""
        key = self.key
        assert key is not None and key.inner is not None and key.dtype is not None
        return self._kept(Ragged.arrow_lengths(key.name, column, key.inner, key.dtype))

    def ragged_lengths(self, column: Ragged) -> np.ndarray:
        """The key column's row lengths, once cut to ``max_length``."""
        return self._kept(column.lengths)

    def _kept(self, lengths: np.ndarray) -> np.ndarray:
        key = self.key
        limit = None if key is None else key.spec.max_length
        return lengths if limit is None else np.minimum(lengths, limit)

    def bucket_order(
        self, order: np.ndarray, lengths: np.ndarray, kept: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """A window's output order when bucketing, and each output row's batch number.

        The window's rows, in the order the shuffle (or the file) gives them, are grouped by
        bucket: each bucket's rows, in that order, make batches of ``batch_size``. Batches come
        out in the order they fill up (a full batch when its last row arrives, as a streaming
        bucketer would emit it); each bucket's short last batch comes after all full ones, in
        bucket order. Rows a filter drops come last, in their order, with batch number -1.

        Everything here depends only on the window's rows, never on where the segment was cut
        or resumed, so positions into this order mean the same rows in any run.

        Args:
            order: The window's rows in their (shuffled) order, as indices.
            lengths: Every window row's length (indexed by row, not by ``order``).
            kept: Which window rows a filter keeps (indexed by row); None for all.

        Raises:
            ValueError: A row is longer than the last bucket's bound.
        """
        key = self.key
        assert key is not None and key.bounds
        size, bounds = self.batch_size, np.asarray(key.bounds)
        keep = np.ones(len(order), dtype=bool) if kept is None else kept[order]
        rows = order[keep]
        bucket = np.searchsorted(bounds, lengths[rows], side="left")
        if len(bucket) and int(bucket.max()) >= len(bounds):
            longest = int(lengths[rows].max())
            raise ValueError(
                f"sequence: column {key.name!r} has a row of {longest} values, longer than its last bucket "
                f"({int(bounds[-1])}): add a bucket of at least {longest}, or truncate rows with max_length"
            )
        count = len(rows)
        # positions among the kept rows, bucket by bucket (16-bit keys sort by radix: one pass)
        narrow = bucket.astype(np.int16) if len(bounds) < 2**15 else bucket
        grouped = np.argsort(narrow, kind="stable")
        sizes = np.bincount(bucket, minlength=len(bounds))
        starts = np.cumsum(sizes) - sizes
        in_bucket = bucket[grouped]
        rank = np.arange(count) - starts[in_bucket]
        full = rank < (sizes // size * size)[in_bucket]
        last = starts[in_bucket] + np.minimum((rank // size + 1) * size, sizes[in_bucket]) - 1
        # A full batch is keyed by the position of its last row, a short one after every full one.
        batch_key = np.where(full, grouped[last], count + in_bucket)
        # A batch's rows are consecutive and in position order already: a stable sort by key keeps them so.
        ranked = np.argsort(batch_key, kind="stable")
        output = grouped[ranked]
        keys = batch_key[ranked]
        number = np.zeros(count, dtype=np.int64)
        if count:
            number[1:] = np.cumsum(keys[1:] != keys[:-1])
        dropped = order[~keep]
        return (
            np.concatenate([rows[output], dropped]),
            np.concatenate([number, np.full(len(dropped), -1, dtype=np.int64)]),
        )

    def to_ragged(self, columns: Columns, specs: Mapping[str, ColumnSpec]) -> Columns:
        """A transform's output with its sequence columns as :class:`Ragged` (a Python step per row)."""
        out = dict(columns)
        for plan in self.columns:
            if plan.name not in out:
                raise ValueError(
                    f"sequence names {plan.name!r}, which the transform's output does not have: its columns are "
                    f"{list(out)}"
                )
            value = out[plan.name]
            if not isinstance(value, Ragged):
                out[plan.name] = Ragged.from_objects(plan.name, value, plan.given)
            _check_numbers(plan.name, out[plan.name].dtype)
            _check_pad_value(plan.name, plan.spec.pad_value, out[plan.name].dtype)
        if not self.checked:
            self.check_columns(list(out))
        return out

    def batches(
        self, columns: Columns, positions: np.ndarray | None, numbers: np.ndarray | None
    ) -> tuple[list[Columns], np.ndarray]:
        """A segment's rows, in output order, made into finished batches (``bucket``, ``pack``).

        Args:
            columns: The rows, sequence columns as :class:`Ragged`.
            positions: For each row, the segment position after it (filters); None: its index + 1.
            numbers: ``bucket``: each row's batch number (:meth:`bucket_order`).

        Returns:
            The batches, and for each the position after its last row, relative to the rows'
            first (what the reader adds to the segment's skipped rows).
        """
        rows = len(next(iter(columns.values()))) if columns else 0
        if not rows:
            return [], np.zeros(0, dtype=np.int64)
        if self.mode == "pack":
            batches, cuts = self._pack(columns)
        else:
            assert numbers is not None
            cuts, keep = self._bucket_cuts(numbers)
            ready = self._padded_segment(columns, cuts)
            batches = []
            for number, (start, stop) in enumerate(itertools.pairwise(cuts)):
                if keep[number]:
                    # A column padded already needs no slice of its rows: its batch is in ``ready``.
                    part = {name: None if name in ready else value[start:stop] for name, value in columns.items()}
                    batches.append(self.finish(part, {name: padded[number] for name, padded in ready.items()}))
            cuts = np.concatenate([[0], cuts[1:][keep]])
        ends = cuts[1:]
        if positions is not None:
            ends = positions[ends - 1]
        return batches, np.asarray(ends, dtype=np.int64)

    def batch_ends(self, lengths: np.ndarray, numbers: np.ndarray | None) -> np.ndarray:
        """Where :meth:`batches` would end each batch of a segment, from its rows' lengths alone.

        What a sharded loader counts, for every shard, to end each epoch after the same number
        of batches on every rank: the same cuts as :meth:`batches`, without reading values.

        Args:
            lengths: The key column's row lengths, in output order, cut to ``max_length``.
            numbers: ``bucket``: each row's batch number (:meth:`bucket_order`).

        Returns:
            For each batch, the position after its last row (as :meth:`batches` gives, unfiltered).
        """
        if not len(lengths):
            return np.zeros(0, dtype=np.int64)
        if self.mode == "pack":
            return self._pack_bounds(lengths)[0][1:]
        assert numbers is not None
        cuts, keep = self._bucket_cuts(numbers)
        ends: np.ndarray = cuts[1:][keep]
        return ends

    def _bucket_cuts(self, numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bucketed batches' row bounds from each row's batch number, and which of them ``drop_last`` keeps."""
        rows = len(numbers)
        cuts = np.concatenate([[0], np.flatnonzero(numbers[1:] != numbers[:-1]) + 1, [rows]]).astype(np.int64)
        keep = np.ones(len(cuts) - 1, dtype=bool)
        if self.drop_last:
            keep = np.diff(cuts) >= self.batch_size
        return cuts, keep

    def _padded_segment(self, columns: Columns, cuts: np.ndarray) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
        """Every batch of a segment padded at once, for the columns still in decoded pages (:class:`Views`).

        One copy of the segment's rows, each followed by its padding (:meth:`Views.joined`),
        instead of a copy end to end and then one per batch; each batch is a view of it
        (measured: 1.1 instead of 2.8 ns a token, one thread). For zero padding and rows no
        longer than ``max_length``; other columns are padded batch by batch by :meth:`finish`.

        Returns:
            For each such column, per batch (between consecutive ``cuts``): its padded array
            and its rows' lengths (``INDEX_DTYPE``), both views of arrays made once a segment.
        """
        ready: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for plan in self.columns:
            value = columns.get(plan.name)
            if plan.mode not in ("pad", "bucket") or not isinstance(value, Views) or len(cuts) < 2:
                continue
            lengths = value.lengths
            limit = plan.spec.max_length
            if not zero_pad(plan.spec.pad_value, value.dtype) or (limit is not None and int(lengths.max()) > limit):
                continue
            rows = np.diff(cuts)
            widths = np.array([_padded_length_of(plan, int(n)) for n in np.maximum.reduceat(lengths, cuts[:-1])])
            size = value.width // value.dtype.itemsize
            kept = lengths.astype(INDEX_DTYPE)
            padded = []
            for low, high in _groups(rows * widths * value.width):
                first, last = int(cuts[low]), int(cuts[high])
                part = value[first:last]
                flat = part.joined((np.repeat(widths[low:high], rows[low:high]) - lengths[first:last]) * value.width)
                ends = np.cumsum(rows[low:high] * widths[low:high] * size).tolist()
                padded += [
                    (flat[end - n * width * size : end].reshape((n, width, *value.inner)), kept[start : start + n])
                    for end, n, width, start in zip(
                        ends, rows[low:high].tolist(), widths[low:high].tolist(), cuts[low:high].tolist(), strict=True
                    )
                ]
            ready[plan.name] = padded
        return ready

    def _pack(self, columns: Columns) -> tuple[list[Columns], np.ndarray]:
        """Packs rows end to end into batches of ``batch_size`` rows of ``seq_len`` values.

        Each batch takes the rows that fit whole in its ``batch_size x seq_len`` values, from
        where the previous one stopped; a row continues from the end of one packed row into the
        next (its segment id there restarts at 1 with the next row's numbering, its position
        ids go on counting), and what a batch cannot fill is padding (segment id 0). Every
        batch has ``batch_size`` packed rows, the segment's last one padded with empty ones.
        """
        plans = [plan for plan in self.columns if plan.mode == "pack"]
        first = plans[0]
        seq_len = first.spec.seq_len
        assert seq_len is not None
        size = self.batch_size
        grid = size * seq_len
        packed = {plan.name: columns[plan.name].truncate(plan.spec.max_length) for plan in plans}
        lengths = packed[first.name].lengths
        for plan in plans[1:]:
            if not np.array_equal(packed[plan.name].lengths, lengths):
                raise ValueError(
                    f"sequence: packed columns {first.name!r} and {plan.name!r} differ in length on some rows; "
                    "columns packed together need the same length on every row"
                )
        bounds, cum = self._pack_bounds(lengths)
        count = len(bounds) - 1
        # A few batches at a time, so that no output array is a "huge" allocation (see GROUP_BYTES).
        widest = max(cell_width(packed[plan.name].dtype, packed[plan.name].inner) for plan in plans)
        batches = []
        for low, high in _groups(np.full(count, grid * max(widest, INDEX_DTYPE.itemsize))):
            first_row, last_row = int(bounds[low]), int(bounds[high])
            part = {name: value[first_row:last_row] for name, value in packed.items()}
            batches.extend(
                self._packed_batches(
                    part, cum[first_row : last_row + 1] - cum[first_row], bounds[low : high + 1] - first_row
                )
            )
        return batches, bounds

    def _pack_bounds(self, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Packed batches' row bounds: batch ``i`` holds rows ``bounds[i]:bounds[i+1]``, all that fit whole.

        Args:
            lengths: The packed rows' lengths, cut to ``max_length``.

        Returns:
            The bounds, and the lengths' running sum from 0 (``len(lengths) + 1`` values).

        Raises:
            ValueError: A row is longer than a whole batch holds.
        """
        key = self.key
        assert key is not None and key.spec.seq_len is not None
        size, seq_len = self.batch_size, key.spec.seq_len
        grid = size * seq_len
        rows = len(lengths)
        cum = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(lengths, out=cum[1:])
        if rows and int(lengths.max()) > grid:
            raise ValueError(
                f"sequence: column {key.name!r} has a row of {int(lengths.max())} values, more than one packed batch "
                f"holds (batch_size {size} x seq_len {seq_len} = {grid}); a row is never split between two batches: "
                "raise seq_len or batch_size, or truncate rows with max_length"
            )
        cuts = [0]
        while cuts[-1] < rows:  # one step per batch, not per row
            cuts.append(int(np.searchsorted(cum, cum[cuts[-1]] + grid, side="right")) - 1)
        return np.asarray(cuts, dtype=np.int64), cum

    def _packed_batches(
        self, packed: Mapping[str, Ragged | Views], cum: np.ndarray, bounds: np.ndarray
    ) -> list[Columns]:
        """The packed batches of consecutive rows (:meth:`_pack`), batch ``i`` holding rows ``bounds[i]:bounds[i+1]``.

        Args:
            packed: The packed columns' rows, cut to ``max_length``.
            cum: The rows' lengths summed, from 0 (one more than rows).
            bounds: The first row of each batch, then the end.
        """
        plans = [plan for plan in self.columns if plan.mode == "pack"]
        seq_len = plans[0].spec.seq_len
        assert seq_len is not None
        size = self.batch_size
        grid = size * seq_len
        count = len(bounds) - 1
        lengths = np.diff(cum)
        segment_ids, position_ids = _pack_ids(lengths, cum, bounds, seq_len, grid)
        shape = (count * size, seq_len)
        arrays: dict[str, np.ndarray] = {}
        for plan in plans:
            ragged = packed[plan.name]
            if isinstance(ragged, Views) and zero_pad(plan.spec.pad_value, ragged.dtype):
                # The rows as decoded, each batch's last one followed by zeros to the end of its grid: one copy.
                gaps = np.zeros(len(ragged), dtype=np.int64)
                gaps[bounds[1:] - 1] = (grid - (cum[bounds[1:]] - cum[bounds[:-1]])) * ragged.width
                arrays[plan.name] = ragged.joined(gaps).reshape((*shape, *ragged.inner))
                continue
            flat = ragged.flat()
            values = np.empty((count * grid, *ragged.inner), dtype=ragged.dtype)
            for number in range(count):  # a batch's values are one run of the rows' values: one copy
                low, high = int(cum[bounds[number]]), int(cum[bounds[number + 1]])
                values[number * grid : number * grid + high - low] = flat[low:high]
                values[number * grid + high - low : (number + 1) * grid] = plan.spec.pad_value
            arrays[plan.name] = values.reshape((*shape, *ragged.inner))
        segment_ids, position_ids = segment_ids.reshape(shape), position_ids.reshape(shape)
        mask = segment_ids > 0 if any(plan.spec.mask for plan in plans) else None
        batches = []
        for number in range(count):
            rows_of = slice(number * size, (number + 1) * size)
            batch: Columns = {}
            for plan in plans:
                batch[plan.name] = arrays[plan.name][rows_of]
                batch[plan.name + SEGMENT_IDS] = segment_ids[rows_of]
                batch[plan.name + POSITION_IDS] = position_ids[rows_of]
                if plan.spec.mask and mask is not None:
                    batch[plan.name + MASK] = mask[rows_of]
            batches.append(batch)
        return batches

    # ---------------------------------------------------------------- finishing a batch

    def finish(self, batch: Columns, ready: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None) -> Columns:
        """A batch whose sequence columns are :class:`Ragged` as its user receives it: padded, bucketed or flat.

        ``pad``: ``(rows, L, *inner)`` with L the longest row, rounded up to
        ``pad_to_multiple_of``, at most ``max_length``; ``bucket``: L the bound of the rows'
        bucket; ``ragged``: the values end to end. Each with ``<name>_lengths`` (the lengths
        kept) and, if asked, ``<name>_mask``.

        Args:
            batch: The batch's rows (None for a column in ``ready``).
            ready: Columns padded already, with their lengths (:meth:`_padded_segment`), by name.
        """
        plans = {plan.name: plan for plan in self.columns}
        out: Columns = {}
        for name, value in batch.items():
            plan = plans.get(name)
            if plan is not None and ready is not None and name in ready:
                padded, lengths = ready[name]
                out[name], out[name + LENGTHS] = padded, lengths
                if plan.spec.mask:
                    out[name + MASK] = length_mask(lengths, padded.shape[1])
                continue
            if plan is None or not isinstance(value, Ragged | Views):
                out[name] = value
                continue
            spec = plan.spec
            ragged = value.truncate(spec.max_length)
            lengths = ragged.lengths
            if spec.mode == "ragged":
                out[name] = ragged.flat()
                out[name + LENGTHS] = lengths.astype(INDEX_DTYPE)
                continue
            length = _padded_length_of(plan, int(lengths.max()) if len(lengths) else 0)
            out[name] = ragged.padded(length, spec.pad_value)
            out[name + LENGTHS] = lengths.astype(INDEX_DTYPE)
            if spec.mask:
                out[name + MASK] = ragged.mask(length)
        return out


def _groups(sizes: np.ndarray) -> list[tuple[int, int]]:
    """Runs of consecutive batches ``[low, high)`` whose ``sizes`` (bytes) add up to at most ``GROUP_BYTES``.

    A batch larger than that is a run of its own.
    """
    groups, low, total = [], 0, 0
    for number, size in enumerate(sizes.tolist()):
        if number > low and total + size > GROUP_BYTES:
            groups.append((low, number))
            low, total = number, 0
        total += size
    if len(sizes):
        groups.append((low, len(sizes)))
    return groups


def _padded_length_of(plan: ColumnPlan, longest: int) -> int:
    """The padded length of a batch whose longest row (cut to ``max_length``) is ``longest``."""
    spec = plan.spec
    if spec.mode == "bucket":
        return int(plan.bounds[int(np.searchsorted(plan.bounds, longest, side="left"))])
    length = longest
    if spec.pad_to_multiple_of:
        length = -(-length // spec.pad_to_multiple_of) * spec.pad_to_multiple_of
    if spec.max_length is not None:
        length = min(length, spec.max_length)
    return length


def _pack_ids(
    lengths: np.ndarray, cum: np.ndarray, bounds: np.ndarray, seq_len: int, grid: int
) -> tuple[np.ndarray, np.ndarray]:
    """Segment ids and position ids of packed batches, flat: ``len(bounds) - 1`` grids of ``grid`` cells.

    Worked out per run of cells: a piece (the part of a row inside one packed row: a row
    crossing the end of a packed row makes two) or the padding that ends a batch. There are
    about as many runs as rows, and each output is then one ``np.repeat`` over them, which
    writes every cell once: no zeroed array, no copy per batch.
    """
    rows, count = len(lengths), len(bounds) - 1
    batch_of_row = np.repeat(np.arange(count, dtype=np.int64), np.diff(bounds))
    cell = batch_of_row * grid + cum[:-1] - cum[bounds[:-1]][batch_of_row]  # each row's first cell
    first_row = cell // seq_len
    pieces = np.where(lengths > 0, (cell + lengths - 1) // seq_len - first_row + 1, 0)
    piece_row = np.repeat(np.arange(rows, dtype=np.int64), pieces)
    index = np.arange(len(piece_row), dtype=np.int64) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    packed_row = first_row[piece_row] + index
    start = np.maximum(cell[piece_row], packed_row * seq_len)
    stop = np.minimum(cell[piece_row] + lengths[piece_row], (packed_row + 1) * seq_len)
    run_start = np.ones(len(packed_row), dtype=bool)
    run_start[1:] = packed_row[1:] != packed_row[:-1]
    segment = np.arange(len(packed_row), dtype=np.int64) - np.flatnonzero(run_start)[np.cumsum(run_start) - 1] + 1
    # The padding that ends each batch is one more run, of segment id 0, after the batch's last piece.
    used = cum[bounds[1:]] - cum[bounds[:-1]]
    pad_at = np.searchsorted(start, np.arange(1, count + 1, dtype=np.int64) * grid)  # where each batch's pieces end
    run_segment = np.insert(segment, pad_at, 0)
    run_width = np.insert(stop - start, pad_at, grid - used)
    segment_ids = repeated(run_segment, run_width)
    # A piece's positions count on from where it starts in its row (past 0 for a continued row);
    # the padding's are 0.
    run_first = np.insert(start - cell[piece_row], pad_at, 0)
    padding = np.insert(np.zeros(len(start), dtype=bool), pad_at, True)
    position_ids = ranges(run_first, run_width, padding)
    return segment_ids, position_ids


def _check_numbers(name: str, dtype: np.dtype) -> None:
    if dtype.kind not in "biuf":
        raise ValueError(
            f"sequence: column {name!r} holds arrays of {dtype}, not of numbers: sequence= batches arrays of numbers "
            "(or of fixed-shape arrays of numbers)"
        )


def _check_pad_value(name: str, pad_value: float, dtype: np.dtype) -> None:
    """Refuses a ``pad_value`` the column's values cannot hold, which a cast would change silently.

    Integers (and bools) take only whole numbers in their range (0.5 would pad with 0, -1 with
    255 in uint8); floats take any number that stays finite (1e300 would pad float32 with inf).

    Raises:
        ValueError: The value, the column and its dtype, and the range allowed.
    """
    if dtype.kind == "f":
        if np.isfinite(pad_value) and abs(pad_value) > float(np.finfo(dtype).max):
            raise ValueError(
                f"sequence: column {name!r} holds {dtype} values, which cannot hold pad_value={pad_value!r} "
                f"(at most {float(np.finfo(dtype).max):g} in magnitude): choose a smaller pad_value"
            )
        return
    low, high = (0, 1) if dtype.kind == "b" else (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
    if not (float(pad_value).is_integer() and low <= pad_value <= high):
        raise ValueError(
            f"sequence: column {name!r} holds {dtype} values, which cannot hold pad_value={pad_value!r}: "
            f"it must be a whole number from {low} to {high}"
        )


def _longest(name: str, spec: Sequence, specs: Mapping[str, ColumnSpec], shapes: Mapping[str, ShapeStats]) -> int:
    """The column's longest row, from the manifest; checks that it is a sequence of numbers.

    Raises:
        ValueError: It is not a selected column, not an array of numbers, or its inner arrays vary.
    """
    column = specs.get(name)
    if column is None:
        raise ValueError(f"sequence names {name!r}, which is not among the selected columns {list(specs)}")
    if column.kind not in ("ragged", "tensor") or not is_list_type(column.arrow_type):
        raise ValueError(
            f"sequence: column {name!r} is {column.arrow_type}, not an array: sequence= batches array columns "
            "(array<number>, or arrays of fixed-shape arrays of numbers)"
        )
    leaf = column.arrow_type
    while is_list_type(leaf):
        leaf = leaf.value_type
    if not (pa.types.is_integer(leaf) or pa.types.is_floating(leaf) or pa.types.is_boolean(leaf)):
        raise ValueError(
            f"sequence: column {name!r} is {column.arrow_type}, not an array of numbers: sequence= batches arrays of "
            "numbers (or of fixed-shape arrays of numbers)"
        )
    if column.kind == "tensor":
        return column.shape[0]
    stats = shapes.get(name) or []
    if any(low != high for low, high in stats[1:]):
        varying = [(low, high) for low, high in stats[1:]]
        raise ValueError(
            f"sequence: column {name!r} has inner arrays of varying length (min, max per level below the first: "
            f"{varying}); only the outer length of a sequence may vary"
        )
    return int(stats[0][1] or 0) if stats else 0


def _given(
    name: str, spec: Sequence, specs: Mapping[str, ColumnSpec], shapes: Mapping[str, ShapeStats]
) -> tuple[tuple[int, ...], np.dtype] | None:
    """The inner shape and dtype of the cache's column ``name`` as a transform receives it; None if not a sequence."""
    if name not in specs:
        return None
    try:
        _longest(name, spec, specs, shapes)
    except ValueError:  # not a sequence of numbers in the cache: the transform makes it one, or it is refused later
        return None
    return _inner(specs[name]), _leaf_dtype(specs[name].arrow_type)


def _leaf_dtype(data_type: pa.DataType) -> np.dtype:
    while is_list_type(data_type):
        data_type = data_type.value_type
    dtype: np.dtype = np.dtype(data_type.to_pandas_dtype())
    return dtype


def _inner(column: ColumnSpec) -> tuple[int, ...]:
    """The shape of each value of a sequence column (``()`` for ``array<number>``).

    :meth:`ColumnSpec.build` knows it for a ragged column with inner arrays; one whose rows are
    all empty has none to measure, and its values are taken as zero-size at each level below the
    first, so that padding makes arrays of the column's rank.
    """
    if column.kind == "tensor":
        return tuple(column.shape[1:])
    if column.inner:
        return column.inner
    levels, data_type = 0, column.arrow_type.value_type
    while is_list_type(data_type):
        levels, data_type = levels + 1, data_type.value_type
    return (0,) * levels


def _bucket_bounds(name: str, spec: Sequence, longest: int | None, cached: bool) -> tuple[int, ...]:
    """The bucket bounds: given, or powers of two from 8 up to the longest row (or ``max_length``).

    Each is rounded up to ``pad_to_multiple_of``, and one within ``max_length`` stays within it.
    ``longest`` is None under a transform; ``cached`` says whether the cache has the column (the
    transform changes it) or not (the transform makes it).

    Raises:
        ValueError: Given bounds that cannot hold the longest row, or none to go by.
    """
    limit = (
        longest if spec.max_length is None else (spec.max_length if longest is None else min(longest, spec.max_length))
    )
    if spec.buckets is not None:
        bounds = list(spec.buckets)
        if limit is not None and limit > bounds[-1]:
            raise ValueError(
                f"sequence: column {name!r} has rows of up to {limit} values, more than its last bucket "
                f"({bounds[-1]}): add a bucket of at least {limit}, or truncate rows with max_length"
            )
    else:
        if limit is None:
            how = (
                "goes through the transform, which may change its rows' lengths"
                if cached
                else "is made by the transform"
            )
            raise ValueError(
                f"sequence: column {name!r} {how}, so its longest row is unknown: give the bucket bounds "
                "(Sequence('bucket', buckets=(64, 128, 256))) or max_length"
            )
        bounds = []
        bound = SMALLEST_BUCKET
        while bound < limit:
            bounds.append(bound)
            bound *= 2
        bounds.append(max(limit, 1))
    if spec.pad_to_multiple_of:
        # Rounded up, then capped by max_length as a padded batch's length is: a bound within
        # max_length never grows past it (a model's position table may end there).
        multiple, cap = spec.pad_to_multiple_of, spec.max_length
        rounded = [-(-bound // multiple) * multiple for bound in bounds]
        bounds = [up if cap is None or bound > cap else min(up, cap) for bound, up in zip(bounds, rounded, strict=True)]
    return tuple(sorted(set(bounds)))
