"""A reader's saved position as a value: what it indexes, where it stands, and how it resumes.

A position is an epoch, a segment index and a row offset into the epoch's segments (see
:mod:`sparkfeed.reader.plan`). It means something only for the exact rows and order it was taken
on, so a :class:`ReaderState` carries an :class:`Identity` (the cache's fingerprint, the plan's
settings, batch size, ...) and is refused wherever that differs: a cache with other row groups
has the same row count but other segments, and resuming there would repeat and lose rows.

Everything here is pure: loading is ``states + what this reader is → Resume``, resharding is
``every old shard's state → this shard's segments for the rest of the epoch``. A resharded
epoch's segments are stored in the state explicitly (a few small numbers each), never the old
states they came from, so resharding many times in one epoch does not make the state grow with
its history.

The dict form (``to_dict``), which goes into checkpoints::

    {"format": "sparkfeed.reader", "version": 2,
     "identity": {"fingerprint": "…", "num_rows": 1000, "batch_size": 32, "drop_last": false,
                  "num_epochs": 2, "columns": ["id", "x"], "transform": false,
                  "shard_policy": "pad", "shuffle_row_groups": true, "shuffle_rows": 0,
                  "shard_seed": null, "filters": null, "predicate": false, "sequence": null,
                  "row_groups": null},
     "seed": 7, "cur_shard": 0, "shard_count": 2,
     "epoch": 0, "segment": 3, "offset": 17, "end_epoch": 2,
     "segments": null}

``segments`` is null when the epoch's segments follow from the seed and shard; after a reshard
it lists them, each as ``[[[file, row_group, start, stop], ...], shuffle_key, seed, start, stop]``.

The identity's last five keys came after the first states of this version were saved; a state
without them was saved without shard seed, filters, predicate or sequence, and reads as such. A
state without ``row_groups`` reads as one whose reader planned every row group: one saved with
filters that left some out is refused, since what they left out is no longer known.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from sparkfeed.options import SHARD_POLICIES, ShardPolicy
from sparkfeed.reader.plan import (
    Piece,
    PlanSpec,
    Segment,
    epoch_segments,
    merge_adjacent,
    remainder,
    split_segments,
)

FORMAT = "sparkfeed.reader"
VERSION = 2

Groups = Sequence[tuple[int, int, int]]
"""``(file, row_group, rows)`` for every row group of the dataset, in file order."""


def fingerprint(key: str, files: Sequence[tuple[str, Sequence[int]]]) -> str:
    """What identifies a cache's rows and their layout: its key, file paths and row-group sizes.

    The same DataFrame materialized with another row-group size, or repartitioned, has the same
    rows in other row groups, so positions into one mean other rows in the other. The root
    directory is left out: a cache copied elsewhere is the same cache.
    """
    text = json.dumps([key, [[path, list(groups)] for path, groups in files]], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class Identity:
    """What a position indexes; a state resumes only on a reader with the same identity.

    Attributes:
        fingerprint: The cache's :func:`fingerprint`.
        num_rows: Rows in the dataset (also in the fingerprint; kept for a readable message).
        batch_size: Rows per batch: the remaining batches are counted in it.
        drop_last: Whether each epoch's short batch is left out.
        num_epochs: Epochs per iteration (None: forever).
        columns: The selected columns, in order.
        transform: Whether a transform runs (it may change what an offset counts).
        shard_policy: How rows are split into shards.
        shuffle_row_groups: Whether row groups are shuffled each epoch.
        shuffle_rows: Minimum rows of a shuffle window; 0 for none.
        shard_seed: The seed of the order row groups are dealt to shards in (None: file order).
        filters: The row filter's Arrow expression, as text: it decides which row groups the
            plan skips and which rows a position counts past.
        predicate: Whether a predicate selects rows (like a transform, it cannot be compared).
        sequence: The ``sequence`` argument as canonical text: bucketing reorders a segment's
            rows and bucketing and packing decide where batches end, so a position means other
            rows under another one.
        row_groups: Which row groups the plan reads when the filters' statistics left some out
            (:func:`planned_groups`); None when it reads them all. The same filters may leave out
            others (statistics of files rewritten in place, another pyarrow), and segment
            numbers then mean other rows.
    """

    fingerprint: str
    num_rows: int
    batch_size: int
    drop_last: bool
    num_epochs: int | None
    columns: tuple[str, ...]
    transform: bool
    shard_policy: ShardPolicy
    shuffle_row_groups: bool
    shuffle_rows: int
    shard_seed: int | None = None
    filters: str | None = None
    predicate: bool = False
    sequence: str | None = None
    row_groups: str | None = None


def planned_groups(planned: Groups, every: Groups) -> str | None:
    """The :attr:`Identity.row_groups` of a plan reading ``planned`` of the dataset's ``every`` row groups."""
    if len(planned) == len(every):
        return None
    text = json.dumps([[file, group] for file, group, _ in planned], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class ReaderState:
    """Where one shard's reader stands, and what it stands in.

    Attributes:
        identity: What the position indexes.
        seed: The seed of this shard's plan (drawn by the reader when the user gave none).
        cur_shard: This shard's index.
        shard_count: Shards of the run.
        epoch: The epoch of the next row.
        segment: Index of the next row's segment in that epoch.
        offset: Output rows of that segment already yielded.
        end_epoch: The epoch the current iteration ends before; None before the first
            iteration, or forever.
        segments: The epoch's segments when a reshard made them; None when they follow from
            ``seed`` and the shard.
        version: The state format's version.
    """

    identity: Identity
    seed: int
    cur_shard: int
    shard_count: int
    epoch: int
    segment: int = 0
    offset: int = 0
    end_epoch: int | None = None
    segments: tuple[Segment, ...] | None = None
    version: int = VERSION

    def plan(self) -> PlanSpec:
        """The plan this state's shard ran."""
        identity = self.identity
        return PlanSpec(
            seed=self.seed,
            cur_shard=self.cur_shard,
            shard_count=self.shard_count,
            shard_policy=identity.shard_policy,
            shuffle_row_groups=identity.shuffle_row_groups,
            shuffle_rows=identity.shuffle_rows,
            shard_seed=identity.shard_seed,
        )

    def to_dict(self) -> dict[str, Any]:
        """The state as plain JSON-able data (see the module docstring)."""
        identity = dataclasses.asdict(self.identity)
        identity["columns"] = list(self.identity.columns)
        return {
            "format": FORMAT,
            "version": self.version,
            "identity": identity,
            "seed": self.seed,
            "cur_shard": self.cur_shard,
            "shard_count": self.shard_count,
            "epoch": self.epoch,
            "segment": self.segment,
            "offset": self.offset,
            "end_epoch": self.end_epoch,
            "segments": None if self.segments is None else [_segment_to_list(s) for s in self.segments],
        }

    @classmethod
    def from_dict(cls, data: object) -> ReaderState:
        """A state from its dict form, every field checked.

        Raises:
            ValueError: ``data`` is not a state this version wrote, or any field is missing,
                of the wrong type or out of range; the message names it and its value.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a reader state is a dict from state_dict(); got {type(data).__name__} {data!r:.80}")
        if data.get("format") != FORMAT:
            old = data.get("format") == f"{FORMAT}/1"
            raise ValueError(
                "this reader state has version 1, from an older sparkfeed, which did not record which cache it "
                "indexes: it cannot be resumed safely; start the epoch again"
                if old
                else f"not a sparkfeed reader state (format {data.get('format')!r}, expected {FORMAT!r})"
            )
        if data.get("version") != VERSION:
            raise ValueError(
                f"reader state version {data.get('version')!r} is unknown: this sparkfeed reads version {VERSION}"
            )
        check_keys("reader state", data, {f.name for f in dataclasses.fields(cls)} | {"format"})
        identity = _identity(data["identity"])
        shard_count = int_field(data, "shard_count", 1)
        cur_shard = int_field(data, "cur_shard", 0)
        if cur_shard >= shard_count:
            raise ValueError(f"reader state: cur_shard={cur_shard} is out of range for shard_count={shard_count}")
        epoch = int_field(data, "epoch", 0)
        end_epoch = optional_int_field(data, "end_epoch", 0)
        if end_epoch is not None and (identity.num_epochs is None or epoch > end_epoch):
            raise ValueError(
                f"reader state: epoch={epoch} with end_epoch={end_epoch} and num_epochs={identity.num_epochs} "
                "is not a position any reader reaches"
            )
        segments = data["segments"]
        if segments is not None and not isinstance(segments, list):
            raise ValueError(f"reader state: segments={segments!r:.80} is not allowed: it must be a list or null")
        return cls(
            identity=identity,
            seed=int_field(data, "seed", 0),
            cur_shard=cur_shard,
            shard_count=shard_count,
            epoch=epoch,
            segment=int_field(data, "segment", 0),
            offset=int_field(data, "offset", 0),
            end_epoch=end_epoch,
            segments=None if segments is None else tuple(_segment_from_list(item) for item in segments),
        )


@dataclasses.dataclass(frozen=True)
class Resume:
    """What a reader does after loading states: its plan's seed and where it starts.

    Attributes:
        seed: The seed of this shard's plan for the epochs after the resumed one.
        epoch: The epoch it resumes in.
        segment: The segment it resumes at.
        offset: Rows of that segment already yielded.
        end_epoch: The end of the interrupted iteration.
        segments: The resumed epoch's segments when they are not the plan's (after a reshard).
    """

    seed: int
    epoch: int
    segment: int
    offset: int
    end_epoch: int | None
    segments: tuple[Segment, ...] | None


def iteration_end(state: ReaderState) -> int | None:
    """The epoch the state's iteration ends before; None for one without end (``num_epochs=None``).

    A state saved before its reader's first iteration took its first batch records none yet
    (``end_epoch`` None); that iteration runs ``num_epochs`` from the state's epoch, as a
    reader loading the state runs it.
    """
    if state.end_epoch is not None or state.identity.num_epochs is None:
        return state.end_epoch
    return state.epoch + state.identity.num_epochs


def epoch_of(state: ReaderState, groups: Groups) -> list[Segment]:
    """The segments of the epoch a state stands in, from the state alone."""
    if state.segments is not None:
        return list(state.segments)
    return epoch_segments(groups, state.plan(), state.epoch)


def advanced(state: ReaderState, rows: int, groups: Groups) -> ReaderState:
    """The same stream ``rows`` output rows further on: the state after reading them.

    For a reader whose positions count the rows it yields (no filters, no predicate, no
    transform that drops rows): a mixture's source position is its reader's state and the rows
    used since, and resharding needs the state alone. The rows may run into the following
    epochs, as far as the end of the iteration they belong to.

    The state returned names that end in ``end_epoch``. A state saved before its iteration's
    first batch (``end_epoch`` None) or after its last (``epoch == end_epoch``) stands before an
    iteration of ``num_epochs`` epochs from its epoch, and rows read from there are that
    iteration's: kept as it was, the first would run ``num_epochs`` more epochs from wherever the
    rows led (rows repeated), and the second would read as finished, so that the next iteration
    started its epoch again (the rows read repeated).

    Raises:
        ValueError: The stream has fewer rows left than ``rows``.
    """
    end = iteration_end(state)
    if end is not None and state.epoch >= end:  # a finished iteration: the rows are the next one's
        assert state.identity.num_epochs is not None  # an end_epoch is only recorded for a finite iteration
        end = state.epoch + state.identity.num_epochs
    current, offset = state, state.offset + rows
    while True:
        segments, segment = epoch_of(current, groups), current.segment
        while segment < len(segments) - 1 and offset >= segments[segment].rows:
            offset -= segments[segment].rows
            segment += 1
        left = segments[segment].rows - offset if segment < len(segments) else -offset
        if left >= 0:
            return dataclasses.replace(current, segment=segment, offset=offset, end_epoch=end)
        if (end is not None and current.epoch + 1 >= end) or not any(s.rows for s in segments):
            raise ValueError(
                f"a position {rows} rows past epoch {state.epoch}, segment {state.segment}, offset {state.offset} is "
                "past the end of the reader's epochs: the state does not belong to these rows"
            )
        # On into the next epoch, planned as usual (a resharded epoch's segments were its own).
        current, offset = dataclasses.replace(current, epoch=current.epoch + 1, segment=0, segments=None), -left


def reshard(states: Sequence[ReaderState], groups: Groups, cur_shard: int, shard_count: int) -> list[Segment]:
    """This new shard's share of what every old shard had left of the epoch.

    The old shards' remainders, in shard order, are one list of segments; it is split by rows
    the way a dataset is (:func:`~sparkfeed.reader.plan.split_segments`), so with ``exact`` no
    row is repeated or lost. Each segment keeps the seed of the shard that planned it.

    Args:
        states: The states of every old shard, in shard order, all in the same epoch.
        groups: The dataset's row groups.
        cur_shard: The new shard's index.
        shard_count: The new shard count.
    """
    rest = [seg for state in states for seg in remainder(epoch_of(state, groups), state.segment, state.offset)]
    return split_segments(merge_adjacent(rest), cur_shard, shard_count, states[0].identity.shard_policy)


def resume(
    states: Sequence[ReaderState],
    *,
    identity: Identity,
    groups: Groups,
    cur_shard: int,
    shard_count: int,
    seed: int | None,
    every_shard: bool,
) -> Resume:
    """Where a reader continues from saved states, every state checked against the reader first.

    With one state (``every_shard`` False) the reader must be that state's shard. With every
    shard's state, the shard count may differ: the rest of the epoch is resharded (see
    :func:`reshard`), unless a transform runs: its output rows, which positions count, need not
    be the rows the plan cuts (a transform yielding two views of each row would lose half).

    The seed for later epochs is the seed of the old shard ``cur_shard`` (modulo the old
    count): with ``seed=None`` each shard drew its own, and any seed keeps later epochs a
    partition (shards are fixed row ranges and a seed only orders a shard's rows), so this
    choice is just deterministic; with a seed, all are that seed.

    Args:
        states: One shard's state, or every shard's.
        identity: What this reader is.
        groups: The dataset's row groups.
        cur_shard: This reader's shard.
        shard_count: Its shard count.
        seed: The seed the user gave this reader; None when it draws its own.
        every_shard: Whether ``states`` are the states of every shard of the run.

    Raises:
        ValueError: A state does not belong to this reader, or they do not belong together, or
            they would be resharded with a transform.
    """
    if not states:
        raise ValueError("no states given: pass this shard's state, or the list of every shard's state")
    for state in states:
        _check_identity(state.identity, identity)
        if seed is not None and state.seed != seed:
            raise ValueError(f"this state was saved with seed={state.seed}, this reader has seed={seed}")
        _check_segments(state, groups)
    ordered = sorted(states, key=lambda s: s.cur_shard)
    first = ordered[0]
    if not every_shard:
        if (first.cur_shard, first.shard_count) != (cur_shard, shard_count):
            raise ValueError(
                f"this state was saved by shard {first.cur_shard} of {first.shard_count}, but this reader is shard "
                f"{cur_shard} of {shard_count}: pass the list of every shard's state"
            )
        return Resume(first.seed, first.epoch, first.segment, first.offset, first.end_epoch, first.segments)
    old_count = first.shard_count
    shards = [s.cur_shard for s in ordered]
    if shards != list(range(old_count)) or any(s.shard_count != old_count for s in ordered):
        raise ValueError(
            f"expected the states of all {old_count} shards, got shards {shards} "
            f"of counts {sorted({s.shard_count for s in ordered})}"
        )
    if len({(s.epoch, iteration_end(s)) for s in ordered}) != 1:
        found = [(s.epoch, iteration_end(s)) for s in ordered]
        raise ValueError(
            f"the shards' states are from different epochs ((epoch, end_epoch) by shard: {found}); "
            "save them at the same step"
        )
    own = ordered[cur_shard % old_count]
    if old_count == shard_count:
        return Resume(own.seed, own.epoch, own.segment, own.offset, own.end_epoch, own.segments)
    if identity.transform:
        raise ValueError(
            f"these states were saved by {old_count} shard(s) and this reader is shard {cur_shard} of {shard_count}, "
            "but a loader with a transform cannot be resharded: a transform may yield more or fewer rows than it "
            "reads, so a position counts rows that the plan's cuts, made in the rows read, cannot split without "
            f"losing some; resume with shard_count={old_count}, or start without the states"
        )
    mine = tuple(reshard(ordered, groups, cur_shard, shard_count))
    return Resume(own.seed, first.epoch, 0, 0, iteration_end(first), mine)


# ---------------------------------------------------------------------------------- checks


def _check_identity(saved: Identity, current: Identity) -> None:
    for field in dataclasses.fields(Identity):
        old, new = getattr(saved, field.name), getattr(current, field.name)
        if old != new:
            hint = (
                "it indexes another cache (other files or row groups): resume on the cache it was saved on"
                if field.name in ("fingerprint", "num_rows")
                else "resume with the same loader arguments"
            )
            if field.name == "row_groups":
                hint = (
                    "the filters' statistics left other row groups in the plan (None: every one) than when it was "
                    "saved (files rewritten in place, another pyarrow or sparkfeed), so its positions would mean "
                    "other rows; start the epoch again"
                )
            raise ValueError(
                f"this state was saved with {field.name}={old!r}, this reader has {field.name}={new!r}; {hint}"
            )


def _check_segments(state: ReaderState, groups: Groups) -> None:
    """The state's pieces exist in this dataset and its position lies inside its epoch."""
    sizes = {(file, group): rows for file, group, rows in groups}
    for segment in state.segments or ():
        for piece in segment.pieces:
            rows = sizes.get((piece.file, piece.row_group))
            if rows is None or piece.stop > rows:
                raise ValueError(
                    f"reader state: segments name file {piece.file}, row group {piece.row_group}, rows "
                    f"[{piece.start}, {piece.stop}), which this dataset does not have"
                )
        if segment.stop is not None and segment.stop > segment.source_rows:
            raise ValueError(f"reader state: a segment ends at row {segment.stop} of {segment.source_rows}")
    segments = epoch_of(state, groups)
    if state.segment > len(segments) or (state.segment == len(segments) and state.offset):
        raise ValueError(
            f"reader state: segment={state.segment}, offset={state.offset} is past the end of the epoch's "
            f"{len(segments)} segments"
        )
    # A transform may yield more rows than it reads, so only without one does the segment bound the offset.
    if state.segment < len(segments) and not state.identity.transform and state.offset > segments[state.segment].rows:
        raise ValueError(
            f"reader state: offset={state.offset} is past the end of segment {state.segment}, "
            f"which yields {segments[state.segment].rows} rows"
        )


def check_keys(what: str, data: Mapping[str, Any], expected: set[str], optional: frozenset[str] = frozenset()) -> None:
    """Refuses saved data with a key missing (but ``optional``) or unknown, naming them (also the mixer's states)."""
    missing = sorted(expected - optional - set(data))
    if missing:
        raise ValueError(f"{what} is missing {', '.join(repr(k) for k in missing)}")
    unknown = sorted(set(data) - expected, key=str)
    if unknown:
        raise ValueError(f"{what} has unknown keys {unknown}")


def is_int(value: object) -> bool:
    """An integer, NumPy's included (a checkpoint may hand them back), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def int_field(data: Mapping[str, Any], name: str, minimum: int, what: str = "reader state") -> int:
    """``data[name]`` as an int of at least ``minimum``, or a ValueError naming ``what``, the field and the value."""
    value = data[name]
    if not is_int(value) or value < minimum:
        raise ValueError(f"{what}: {name}={value!r} is not allowed: it must be an integer >= {minimum}")
    return int(value)


def optional_int_field(data: Mapping[str, Any], name: str, minimum: int, what: str = "reader state") -> int | None:
    """As :func:`int_field`, None allowed."""
    return None if data[name] is None else int_field(data, name, minimum, what)


def _bool(data: Mapping[str, Any], name: str, what: str) -> bool:
    value = data[name]
    if not isinstance(value, bool):
        raise ValueError(f"{what}: {name}={value!r} is not allowed: it must be a bool")
    return value


def _identity(data: object) -> Identity:
    what = "reader state identity"
    if not isinstance(data, Mapping):
        raise ValueError(f"reader state: identity={data!r:.80} is not allowed: it must be a dict")
    check_keys(what, data, {f.name for f in dataclasses.fields(Identity)}, _LATER_IDENTITY_KEYS)
    data = {"shard_seed": None, "filters": None, "predicate": False, "sequence": None, "row_groups": None, **data}
    fingerprint, columns, policy = data["fingerprint"], data["columns"], data["shard_policy"]
    for name in ("filters", "sequence", "row_groups"):
        if data[name] is not None and not isinstance(data[name], str):
            raise ValueError(f"{what}: {name}={data[name]!r:.80} is not allowed: it must be a string or null")
    if not isinstance(fingerprint, str):
        raise ValueError(f"{what}: fingerprint={fingerprint!r} is not allowed: it must be a string")
    if not isinstance(columns, list | tuple) or not all(isinstance(c, str) for c in columns):
        raise ValueError(f"{what}: columns={columns!r:.80} is not allowed: it must be a list of column names")
    if policy not in SHARD_POLICIES:
        raise ValueError(f"{what}: shard_policy={policy!r} is not allowed: it must be one of {SHARD_POLICIES}")
    return Identity(
        fingerprint=fingerprint,
        num_rows=int_field(data, "num_rows", 0, what),
        batch_size=int_field(data, "batch_size", 1, what),
        drop_last=_bool(data, "drop_last", what),
        num_epochs=optional_int_field(data, "num_epochs", 1, what),
        columns=tuple(columns),
        transform=_bool(data, "transform", what),
        shard_policy=policy,
        shuffle_row_groups=_bool(data, "shuffle_row_groups", what),
        shuffle_rows=int_field(data, "shuffle_rows", 0, what),
        shard_seed=optional_int_field(data, "shard_seed", 0, what),
        filters=data["filters"],
        predicate=_bool(data, "predicate", what),
        sequence=data["sequence"],
        row_groups=data["row_groups"],
    )


_LATER_IDENTITY_KEYS = frozenset({"shard_seed", "filters", "predicate", "sequence", "row_groups"})
"""Identity keys that version-2 states saved before them lack; they default to "none"."""


def _segment_to_list(segment: Segment) -> list[Any]:
    pieces = [[p.file, p.row_group, p.start, p.stop] for p in segment.pieces]
    key = None if segment.shuffle_key is None else list(segment.shuffle_key)
    return [pieces, key, segment.seed, segment.start, segment.stop]


def _segment_from_list(item: object) -> Segment:
    bad = ValueError(
        f"reader state: segments hold {item!r:.120}, which is not a segment "
        "([[[file, row_group, start, stop], ...], shuffle_key or null, seed or null, start, stop or null])"
    )
    if not isinstance(item, list) or len(item) != 5:
        raise bad
    pieces, key, seed, start, stop = item
    if not isinstance(pieces, list) or not pieces:
        raise bad
    parsed = []
    for piece in pieces:
        if not isinstance(piece, list) or len(piece) != 4 or not all(is_int(v) and v >= 0 for v in piece):
            raise bad
        if piece[2] > piece[3]:
            raise bad
        parsed.append(Piece(*(int(v) for v in piece)))
    if key is not None and (not isinstance(key, list) or not all(is_int(k) and k >= 0 for k in key)):
        raise bad
    if (seed is None) != (key is None) or (seed is not None and not (is_int(seed) and seed >= 0)):
        raise bad
    if not (is_int(start) and start >= 0) or (stop is not None and not (is_int(stop) and stop >= start)):
        raise bad
    return Segment(
        tuple(parsed),
        None if key is None else tuple(int(k) for k in key),
        int(start),
        None if stop is None else int(stop),
        None if seed is None else int(seed),
    )
