"""Sequences on the real reader, without Spark: Parquet written with pyarrow, a manifest made by hand.

Every token is ``row id * 10000 + its index in the row``, so any batch, padded, bucketed or
packed, says which rows and tokens it holds, and the properties are checked on that: every
token of every row once per epoch, under any batch size, shard count and shuffle window, and a
resume from any saved state gives exactly the batches that remained.
"""

from __future__ import annotations

import gc
import itertools
import json
import re
import sys
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkfeed import Sequence, TransformSpec
from sparkfeed import writer as writer_module
from sparkfeed.cache import FileEntry, Manifest
from sparkfeed.options import reader_options
from sparkfeed.reader import Reader
from sparkfeed.reader import sequence as sequence_module
from sparkfeed.writer import list_shape_stats, pack_ragged

ROWS = 300
SCALE = 10_000


def _lengths(rows: int, seed: int = 0) -> np.ndarray:
    """Heavy-tailed lengths, some rows empty, the longest 60."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(np.log(8), 1.0, rows)), 0, 60).astype(np.int64) * (rng.random(rows) > 0.05)


def _write(
    root: Path, storage: str, files: int = 2, row_group: int = 23, nested: bool = False, dtype: type = np.int64
) -> Manifest:
    """``ROWS`` rows (id, tok) in Parquet files: tok as a list column, or packed as the cache writer packs it.

    ``views`` is what the writer packs now (``binary_view``: bucketed and packed batches are
    made from the decoded pages), ``binary`` what it packed before.
    """
    root.mkdir(parents=True, exist_ok=True)
    lengths = _lengths(ROWS)
    ids = np.arange(ROWS)
    values = np.concatenate([i * SCALE + np.arange(n) for i, n in zip(ids, lengths, strict=True)]).astype(dtype)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    if nested:  # each value a pair: (token, -token)
        inner = pa.FixedSizeListArray.from_arrays(pa.array(np.stack([values, -values], 1).reshape(-1)), 2)
        logical = pa.ListArray.from_arrays(pa.array(offsets), inner.cast(pa.list_(pa.from_numpy_dtype(dtype))))
    else:
        logical = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    schema = pa.schema([("id", pa.int64()), ("tok", logical.type)])
    entries = []
    for number, (low, high) in enumerate(itertools.pairwise(np.linspace(0, ROWS, files + 1).astype(int))):
        column = logical.slice(low, high - low)
        packed = {}
        if storage in ("binary", "views"):
            shape = (-1, 2) if nested else (-1,)
            column, packed = pack_ragged(column, shape), {"tok": shape}
            if storage == "binary":  # what pyarrow before 21, and sparkfeed before views, wrote
                column = column.cast(pa.binary())
        name = f"part-{number}.parquet"
        pq.write_table(pa.table({"id": pa.array(ids[low:high]), "tok": column}), root / name, row_group_size=row_group)
        metadata = pq.ParquetFile(root / name).metadata
        groups = tuple(metadata.row_group(g).num_rows for g in range(metadata.num_row_groups))
        entries.append(FileEntry(name, groups, packed))
    key = f"k-{storage}-{nested}-{np.dtype(dtype).name}"
    return Manifest(tuple(entries), schema, {"tok": list_shape_stats(logical)}, {}, key=key)


@pytest.fixture(scope="module", params=["list", "binary", "views"])
def dataset(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    root = tmp_path_factory.mktemp(f"sequences-{request.param}")
    return root, _write(root, request.param)


def _reader(root: Path, manifest: Manifest, **options: Any) -> Reader[Any]:
    options.setdefault("workers_count", 2)
    return Reader(root.as_uri(), manifest, reader_options(**options))


EXPECTED = {i: [i * SCALE + j for j in range(n)] for i, n in enumerate(_lengths(ROWS))}


def _rows_of(batch: dict[str, np.ndarray], mode: str) -> Iterator[tuple[int, list[int]]]:
    """``(row id, its tokens)`` of each row in a batch, whatever the mode (pack: see :func:`_packed_rows`)."""
    tokens, lengths = batch["tok"], batch["tok_lengths"]
    if mode == "ragged":
        rows = np.split(tokens, np.cumsum(lengths)[:-1]) if len(lengths) else []
    else:
        assert tokens.shape[1] >= lengths.max(initial=0)
        rows = [row[:n] for row, n in zip(tokens, lengths, strict=True)]
    for row_id, row in zip(batch["id"], rows, strict=True):
        yield int(row_id), row.tolist()


def _packed_rows(batch: dict[str, np.ndarray]) -> dict[int, list[int]]:
    """The rows of a packed batch, put together again from its tokens, checking ids and positions on the way."""
    tokens, segments, positions = batch["tok"], batch["tok_segment_ids"], batch["tok_position_ids"]
    assert tokens.shape == segments.shape == positions.shape
    rows: dict[int, list[int]] = {}
    for packed, segment, position in zip(tokens, segments, positions, strict=True):
        holds = segment > 0
        assert (packed[~holds] == 0).all() and (position[~holds] == 0).all()
        assert np.array_equal(position[holds], packed[holds] % SCALE)  # a token's index in its row
        owners = packed[holds] // SCALE
        assert (np.diff(segment[holds]) >= 0).all()
        # a segment id per source row of the packed row, 1, 2, ...: rows change exactly where ids do
        assert np.array_equal(np.diff(owners) != 0, np.diff(segment[holds]) != 0)
        assert segment[holds][:1].tolist() in ([], [1])
        for owner, token in zip(owners.tolist(), packed[holds].tolist(), strict=True):
            rows.setdefault(owner, []).append(token)
    return rows


def _epoch_rows(batches: list[dict[str, np.ndarray]], mode: str) -> list[tuple[int, list[int]]]:
    if mode == "pack":
        out = []
        for batch in batches:  # a row is never split between two batches
            out += list(_packed_rows(batch).items())
        return out
    return [row for batch in batches for row in _rows_of(batch, mode)]


def _check_rows(rows: list[tuple[int, list[int]]], expected_ids: list[int], mode: str) -> None:
    ids = [row_id for row_id, _ in rows]
    if mode == "pack":  # empty rows leave no token to see
        expected_ids = [i for i in expected_ids if EXPECTED[i]]
    assert sorted(ids) == sorted(expected_ids)
    assert all(tokens == EXPECTED[row_id] for row_id, tokens in rows)


def _same(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(_equal(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)
    )


def _equal(x: np.ndarray, y: np.ndarray) -> bool:
    """Arrays equal, an object array's (one array a row) row by row."""
    if x.dtype == object and y.dtype == object:
        return len(x) == len(y) and all(np.array_equal(u, v) for u, v in zip(x, y, strict=True))
    return np.array_equal(x, y)


MODES = {
    "pad": {"tok": "pad"},
    "bucket": {"tok": Sequence("bucket", buckets=(4, 16, 64))},
    "pack": {"tok": Sequence("pack", seq_len=16)},
    "ragged": {"tok": "ragged"},
}


@settings(max_examples=25)
@given(
    mode=st.sampled_from(sorted(MODES)),
    batch_size=st.integers(1, 40),
    shard_count=st.integers(1, 3),
    window=st.sampled_from([0, 1, 60]),
    stop=st.integers(0, 12),
)
@pytest.mark.filterwarnings("ignore:sequence .* with shard_count")
def test_every_token_once_per_shard_and_resume_gives_the_rest(
    dataset, mode: str, batch_size: int, shard_count: int, window: int, stop: int
) -> None:
    root, manifest = dataset
    if mode == "pack":
        batch_size = max(batch_size // 4, 4)  # a packed batch must hold the longest row: 4 x 16 values
    kwargs: dict[str, Any] = {
        "batch_size": batch_size,
        "num_epochs": 1,
        "seed": 3,
        "sequence": MODES[mode],
        "shuffling_queue_capacity": window,
        "shard_policy": "exact",
    }
    if mode == "pack":
        kwargs["schema_fields"] = ["tok"]
    seen: list[tuple[int, list[int]]] = []
    for shard in range(shard_count):
        shards = {"cur_shard": shard, "shard_count": shard_count} if shard_count > 1 else {}
        with _reader(root, manifest, **kwargs, **shards) as reader:
            count = len(reader)
            whole = [batch for batch in reader]
        assert count == len(whole)  # every mode counts its batches before reading them
        seen += _epoch_rows(whole, mode)
        with _reader(root, manifest, **kwargs, **shards) as first:
            head = list(itertools.islice(iter(first), stop))
            state = json.loads(json.dumps(first.state_dict()))
        with _reader(root, manifest, **kwargs, **shards) as resumed:
            resumed.load_state_dict(state)
            count = len(resumed)
            rest = [batch for batch in resumed]
        if state["epoch"] == state["end_epoch"]:  # saved after the loop ended: a restart goes on with the next
            with _reader(root, manifest, **kwargs, **shards) as reader:
                assert _same(list(reader), whole)
                assert _same(rest, list(reader))
        else:
            assert _same(head + rest, whole)
        assert count == len(rest)
    _check_rows(seen, list(range(ROWS)), mode)


@pytest.mark.parametrize("mode", ["pad", "bucket", "pack"])
@pytest.mark.filterwarnings("ignore:sequence .* with shard_count")
def test_a_reshard_mid_epoch_keeps_every_row_once(dataset, mode: str) -> None:
    root, manifest = dataset
    kwargs: dict[str, Any] = {
        "batch_size": 8,
        "num_epochs": 1,
        "sequence": MODES[mode],
        "shuffling_queue_capacity": 50,
        "shard_policy": "exact",
    }
    if mode == "pack":
        kwargs["schema_fields"] = ["tok"]
    seen, states = [], []
    for shard in range(2):
        with _reader(root, manifest, cur_shard=shard, shard_count=2, **kwargs) as reader:
            seen += _epoch_rows(list(itertools.islice(iter(reader), 3 + shard)), mode)
            states.append(reader.state_dict())
    for shard in range(3):
        with _reader(root, manifest, cur_shard=shard, shard_count=3, **kwargs) as reader:
            reader.load_state_dict(states)
            seen += _epoch_rows(list(reader), mode)
    _check_rows(seen, list(range(ROWS)), mode)


def _sequence_options(mode: str, **options: Any) -> dict[str, Any]:
    """A loader's options for ``mode``: batches of 6 rows; packed, 4 rows of 16 and the packed column alone.

    A packed batch must hold the longest row (60 values: 4 x 16), and only packed columns line up
    with packed rows.
    """
    base: dict[str, Any] = {"batch_size": 6, "sequence": MODES[mode]}
    if mode == "pack":
        base.update(schema_fields=["tok"], batch_size=4)
    return {**base, **options}


def _epochs(reader: Reader[Any], epochs: int) -> list[list[dict[str, np.ndarray]]]:
    """A reader of ``num_epochs=1`` iterated ``epochs`` times (each the next epoch), each as long as its len()."""
    out = []
    for _ in range(epochs):
        count = len(reader)
        out.append([batch for batch in reader])
        assert len(out[-1]) == count
    return out


@given(
    mode=st.sampled_from(["bucket", "pack"]),
    batch_size=st.integers(1, 12),
    shard_count=st.integers(2, 4),
    policy=st.sampled_from(["pad", "drop"]),
    window=st.sampled_from([0, 1, 60]),
    drop_last=st.booleans(),
    stop=st.integers(0, 30),
)
def test_sharded_bucketing_or_packing_gives_every_rank_the_same_batch_count(
    dataset,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    batch_size: int,
    shard_count: int,
    policy: str,
    window: int,
    drop_last: bool,
    stop: int,
) -> None:
    """Each epoch ends on every rank after the fewest batches any shard makes: its first ones, resumable anywhere."""
    root, manifest = dataset
    if mode == "pack":
        batch_size = max(batch_size // 3, 4)  # a packed batch must hold the longest row: 4 x 16 values
    kwargs: dict[str, Any] = {
        "batch_size": batch_size,
        "num_epochs": 1,
        "seed": 5,
        "sequence": MODES[mode],
        "shuffling_queue_capacity": window,
        "shard_policy": policy,
        "drop_last": drop_last,
        "shard_count": shard_count,
    }
    if mode == "pack":
        kwargs["schema_fields"] = ["tok"]
    shards = range(shard_count)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every rank can count every shard's batches: nothing to warn about
        limited = []
        for shard in shards:
            with _reader(root, manifest, cur_shard=shard, **kwargs) as reader:
                limited.append(_epochs(reader, 2))
    with monkeypatch.context() as patch:  # the same shards, each epoch to its end
        patch.setattr(Reader, "_limit", lambda self, epoch: None)
        whole = []
        for shard in shards:
            with _reader(root, manifest, cur_shard=shard, **kwargs) as reader:
                whole.append(_epochs(reader, 2))
    for epoch in range(2):
        fewest = min(len(whole[shard][epoch]) for shard in shards)
        for shard in shards:
            assert len(limited[shard][epoch]) == fewest
            assert _same(limited[shard][epoch], whole[shard][epoch][:fewest])
    # a rank saved after any batch of its first epoch goes on with exactly the rest, to the same end
    last = shard_count - 1
    with _reader(root, manifest, cur_shard=last, **kwargs) as first:
        head = list(itertools.islice(iter(first), stop))
        state = json.loads(json.dumps(first.state_dict()))
    with _reader(root, manifest, cur_shard=last, **kwargs) as resumed:
        resumed.load_state_dict(state)
        count = len(resumed)
        rest = [batch for batch in resumed]
        following = list(resumed)
    assert count == len(rest)
    if state["epoch"] == state["end_epoch"]:  # saved after the loop ended: a restart goes on with the next
        assert _same(head, limited[last][0]) and _same(rest, limited[last][1])
    else:
        assert _same(head + rest, limited[last][0])
        assert _same(following, limited[last][1])


@pytest.mark.parametrize("mode", ["bucket", "pack"])
def test_len_of_countless_epochs_of_bucketed_or_packed_batches_is_refused_not_counted_forever(
    dataset, mode: str
) -> None:
    root, manifest = dataset
    with _reader(root, manifest, **_sequence_options(mode, num_epochs=sys.maxsize)) as reader:
        with pytest.raises(TypeError, match=r"9223372036854775807 epochs are more than 10,000: pass fewer num_epochs"):
            len(reader)
        assert reader.batch_count(reader._options.batch_size, reader._options.drop_last) is None  # TF: unknown
    with _reader(root, manifest, **_sequence_options(mode, num_epochs=10_000)) as reader:
        assert reader.batch_count(reader._options.batch_size, reader._options.drop_last) is not None


@pytest.mark.parametrize("mode", ["bucket", "pack"])
def test_len_asked_mid_iteration_leaves_the_epochs_limits_alone(dataset, mode: str) -> None:
    """len() counts the next iteration's epochs, working out their limits; the running epochs keep theirs."""
    root, manifest = dataset
    kwargs = _sequence_options(mode, num_epochs=3, seed=4, shard_count=3, shuffling_queue_capacity=40)
    for shard in range(3):
        with _reader(root, manifest, cur_shard=shard, **kwargs) as reader:
            expected = [batch for batch in reader]
        with _reader(root, manifest, cur_shard=shard, **kwargs) as reader:
            got, counts = [], set()
            for batch in reader:
                got.append(batch)
                counts.add(len(reader))  # the next iteration's: epochs 3 to 5
            following = [batch for batch in reader]
        assert _same(got, expected)
        assert counts == {len(following)}


@pytest.mark.parametrize("mode", ["bucket", "pack"])
def test_the_progress_bar_of_bucketed_or_packed_batches_knows_its_total(dataset, capsys, mode: str) -> None:
    root, manifest = dataset
    kwargs = _sequence_options(mode, num_epochs=1, seed=4, progress=True, cur_shard=1, shard_count=2)

    def bar() -> str:
        frames = capsys.readouterr().err.replace("\r", "\n").splitlines()
        return [frame.strip() for frame in frames if frame.startswith("epoch 0 (shard 1 of 2)")][-1]

    with _reader(root, manifest, **kwargs) as reader:
        whole = sum(1 for _ in reader)
    assert f"| {whole}/{whole} [" in bar()
    with _reader(root, manifest, **kwargs) as reader:
        list(itertools.islice(iter(reader), 3))
        state = reader.state_dict()
    capsys.readouterr()
    with _reader(root, manifest, **kwargs) as reader:
        reader.load_state_dict(state)
        rest = sum(1 for _ in reader)
    assert rest == whole - 3 and f"| {rest}/{rest} [" in bar()  # a resumed epoch's bar counts what is left


@pytest.mark.parametrize("mode", ["bucket", "pack"])
def test_worker_processes_end_each_sharded_epoch_on_the_same_batch_as_threads(dataset, mode: str) -> None:
    root, manifest = dataset
    kwargs = _sequence_options(mode, num_epochs=2, seed=3, shuffling_queue_capacity=40, shard_count=3)
    counts = set()
    for shard in range(3):
        with _reader(root, manifest, cur_shard=shard, **kwargs) as reader:
            threads = [batch for batch in reader]
        with _reader(root, manifest, cur_shard=shard, reader_pool_type="process", **kwargs) as reader:
            count = len(reader)
            processes = [batch for batch in reader]
        assert count == len(processes) and _same(processes, threads)
        counts.add(count)
    assert len(counts) == 1


def test_the_lengths_every_rank_holds_take_two_bytes_a_row_unless_a_row_is_longer(tmp_path: Path) -> None:
    lengths = np.array([3, 70_000, 5, *[2] * 21])  # one row of 70,000 values, in the first row group
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    logical = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.arange(offsets[-1], dtype=np.int32)))
    pq.write_table(pa.table({"tok": logical}), tmp_path / "part-0.parquet", row_group_size=8)
    groups = (8, 8, 8)
    manifest = Manifest(
        (FileEntry("part-0.parquet", groups, {}),),
        pa.schema([("tok", logical.type)]),
        {"tok": list_shape_stats(logical)},
        {},
        key="k-long",
    )
    kwargs: dict[str, Any] = {"batch_size": 2, "num_epochs": 1, "seed": 1, "shard_count": 2}
    kwargs["sequence"] = {"tok": Sequence("pack", seq_len=40_000)}
    counts = []
    for shard in range(2):
        with _reader(tmp_path, manifest, cur_shard=shard, **kwargs) as reader:
            counts.append(len([batch for batch in reader]))
            held = [reader._segment_reader.key_lengths(0, group) for group in range(len(groups))]
    assert counts[0] == counts[1] > 0
    assert [h.dtype for h in held] == [np.dtype(np.int32), np.dtype(np.uint16), np.dtype(np.uint16)]
    assert np.concatenate(held).tolist() == lengths.tolist()


@pytest.mark.parametrize("mode", ["bucket", "pack"])
def test_a_resharded_epoch_of_bucketed_or_packed_batches_ends_on_the_same_batch_on_every_rank(
    dataset, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    root, manifest = dataset
    kwargs = _sequence_options(mode, num_epochs=1, seed=2)
    states = []
    for shard in range(2):
        with _reader(root, manifest, cur_shard=shard, shard_count=2, **kwargs) as reader:
            list(itertools.islice(iter(reader), 3))
            states.append(reader.state_dict())
    rests, whole = [], []
    for shard in range(3):
        with _reader(root, manifest, cur_shard=shard, shard_count=3, **kwargs) as reader:
            reader.load_state_dict(states)
            count = len(reader)
            rests.append([batch for batch in reader])
        assert count == len(rests[-1])
        with monkeypatch.context() as patch:  # the same rank's rest of the epoch, to its end
            patch.setattr(Reader, "_limit", lambda self, epoch: None)
            with _reader(root, manifest, cur_shard=shard, shard_count=3, **kwargs) as reader:
                reader.load_state_dict(states)
                whole.append(list(reader))
    fewest = min(len(rest) for rest in whole)
    assert len({len(rest) for rest in whole}) > 1  # the new shards' rests do differ
    for rest, full in zip(rests, whole, strict=True):
        assert len(rest) == fewest and _same(rest, full[:fewest])
    with _reader(root, manifest, cur_shard=0, shard_count=3, **kwargs) as reader:
        reader.load_state_dict(states)
        next(iter(reader))
        saved = reader.state_dict()
    with _reader(root, manifest, cur_shard=0, shard_count=3, **kwargs) as reader:
        with pytest.warns(UserWarning, match="until epoch 1; pass every shard's state"):
            reader.load_state_dict(saved)  # its own state alone: the other shards' part of the epoch is unknown
        assert _same(list(reader), whole[0][1:])


@pytest.mark.parametrize("mode", ["bucket", "pack"])
@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"shard_policy": "exact", "seed": 1}, "shard_policy='exact'"),
        ({}, "a shuffle without seed="),
        ({"seed": 1, "transform_spec": TransformSpec(lambda frame: frame)}, "filters, a predicate or a transform"),
    ],
)
def test_sharded_bucketing_or_packing_warns_where_ranks_cannot_count_each_others_batches(
    dataset, mode: str, options: dict[str, Any], reason: str
) -> None:
    root, manifest = dataset
    kwargs: dict[str, Any] = {"batch_size": 8, "sequence": MODES[mode], "cur_shard": 0, "shard_count": 2}
    if mode == "pack":
        kwargs["schema_fields"] = ["tok"]
    message = f"sequence '{mode}' with shard_count=2 and {re.escape(reason)}.* DDP/Horovod ranks may wait"
    with pytest.warns(UserWarning, match=message):
        _reader(root, manifest, num_epochs=1, **kwargs, **options).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a seed, or no shuffle: every rank counts every shard's batches
        _reader(root, manifest, num_epochs=1, seed=1, **kwargs).close()
        _reader(root, manifest, num_epochs=1, shuffle_row_groups=False, **kwargs).close()
        _reader(root, manifest, num_epochs=1, **{**kwargs, "sequence": MODES["pad"], "schema_fields": None}).close()


def test_pad_pads_each_batch_to_its_longest_row_rounded_and_capped(dataset) -> None:
    root, manifest = dataset
    spec = Sequence("pad", pad_to_multiple_of=8, max_length=30, pad_value=-1, mask=True)
    with _reader(root, manifest, batch_size=16, num_epochs=1, shuffle_row_groups=False, sequence={"tok": spec}) as r:
        batches = list(r)
    assert [len(b["id"]) for b in batches] == [16] * (ROWS // 16) + [ROWS % 16]  # as without sequence
    for batch in batches:
        lengths = [len(EXPECTED[int(i)]) for i in batch["id"]]
        kept = np.minimum(lengths, 30)
        assert batch["tok_lengths"].tolist() == kept.tolist() and batch["tok_lengths"].dtype == np.int32
        assert batch["tok"].shape[1] == min(-(-max(lengths) // 8) * 8, 30)
        assert np.array_equal(batch["tok_mask"], np.arange(batch["tok"].shape[1]) < kept[:, None])
        assert (batch["tok"][~batch["tok_mask"]] == -1).all()
        for row_id, row, n in zip(batch["id"], batch["tok"], kept, strict=True):
            assert row[:n].tolist() == EXPECTED[int(row_id)][:n]  # truncated: the first max_length values


@pytest.mark.parametrize("storage", ["binary", "views"])
@pytest.mark.parametrize("mode", ["pad", "bucket"])
def test_nested_values_of_one_shape_pad_to_three_dimensions(tmp_path: Path, storage: str, mode: str) -> None:
    manifest = _write(tmp_path, storage, nested=True)
    with _reader(
        tmp_path, manifest, batch_size=10, num_epochs=1, shuffle_row_groups=False, sequence={"tok": mode}
    ) as r:
        batch = next(iter(r))
    assert batch["tok"].ndim == 3 and batch["tok"].shape[2] == 2
    for row_id, row, n in zip(batch["id"], batch["tok"], batch["tok_lengths"], strict=True):
        assert row[:n, 0].tolist() == EXPECTED[int(row_id)] and (row[:n, 1] == -row[:n, 0]).all()
        assert (row[n:] == 0).all()


@pytest.mark.parametrize("mode", ["pad", "bucket", "ragged"])
def test_a_nested_column_with_no_inner_array_keeps_its_rank(tmp_path: Path, mode: str) -> None:
    # Every row empty: the manifest knows no inner length, and the values are taken as zero-size,
    # so a padded batch is (rows, length, 0) as an array<array<int>> batch always has three axes.
    tok = pa.array([[] for _ in range(30)], pa.list_(pa.list_(pa.int64())))
    pq.write_table(pa.table({"id": pa.array(np.arange(30)), "tok": tok}), tmp_path / "p.parquet", row_group_size=7)
    groups = tuple(g.num_rows for g in map(pq.ParquetFile(tmp_path / "p.parquet").metadata.row_group, range(5)))
    schema = pa.schema([("id", pa.int64()), ("tok", tok.type)])
    manifest = Manifest((FileEntry("p.parquet", groups, {}),), schema, {"tok": list_shape_stats(tok)}, {}, key="empty")
    with _reader(
        tmp_path, manifest, batch_size=10, num_epochs=1, shuffle_row_groups=False, sequence={"tok": mode}
    ) as r:
        batches = list(r)
    assert sorted(int(i) for batch in batches for i in batch["id"]) == list(range(30))
    for batch in batches:
        assert batch["tok"].ndim == (2 if mode == "ragged" else 3) and batch["tok"].size == 0
        assert batch["tok"].shape[-1] == 0 and (batch["tok_lengths"] == 0).all()


@pytest.mark.parametrize("storage", ["binary", "views"])
@pytest.mark.parametrize("mode", ["pad", "ragged", None])
def test_nested_values_resume_at_the_end_of_a_row_group(tmp_path: Path, storage: str, mode: str | None) -> None:
    # Saved after a batch that ends a row group, the rest of that group is read as no row: an
    # empty packed chunk, whose data buffer Arrow leaves 4 bytes long, was read as one float32
    # value, which no reshape makes pairs of (int64's 4 bytes made no value: nothing showed).
    manifest = _write(tmp_path, storage, nested=True, dtype=np.float32)
    kwargs: dict[str, Any] = {"batch_size": 23, "num_epochs": 1, "shuffle_row_groups": False}
    if mode is not None:  # None: the plain reader's rows, unpacked from the cache's cells (writer.unpack_ragged)
        kwargs["sequence"] = {"tok": mode}
    with _reader(tmp_path, manifest, **kwargs) as reader:
        whole = list(reader)
    with _reader(tmp_path, manifest, **kwargs) as first:
        head = list(itertools.islice(iter(first), 1))  # the first row group, 23 rows
        state = first.state_dict()
    with _reader(tmp_path, manifest, **kwargs) as resumed:
        resumed.load_state_dict(state)
        assert _same(head + list(resumed), whole)


@pytest.mark.parametrize("drop_last", [False, True])
def test_bucket_batches_never_mix_buckets_and_have_one_shape_per_bucket(dataset, drop_last: bool) -> None:
    root, manifest = dataset
    bounds = (4, 16, 64)
    with _reader(
        root,
        manifest,
        batch_size=8,
        num_epochs=1,
        seed=1,
        shuffling_queue_capacity=100,
        drop_last=drop_last,
        sequence={"tok": Sequence("bucket", buckets=bounds)},
    ) as reader:
        count = len(reader)  # from the rows' lengths
        batches = list(reader)
    assert count == len(batches)
    shapes = set()
    for batch in batches:
        width = batch["tok"].shape[1]
        assert width in bounds
        lower = (0, *bounds)[bounds.index(width)]
        assert all(lower < n <= width or (n == 0 and width == bounds[0]) for n in batch["tok_lengths"])
        shapes.add(batch["tok"].shape)
    if drop_last:
        assert {shape[0] for shape in shapes} == {8} and len(shapes) <= len(bounds)
    else:
        _check_rows(_epoch_rows(batches, "bucket"), list(range(ROWS)), "bucket")
    # stats() counts the rows each batch holds: buckets leave short batches in every segment
    stats = reader.stats()
    assert stats["batches"] == len(batches) and stats["rows"] == sum(len(b["tok_lengths"]) for b in batches)
    # and the bytes each one holds (widths vary: added up, not estimated from one batch)
    assert stats["bytes"] == sum(sum(array.nbytes for array in b.values()) for b in batches)


def test_bucketed_batches_with_a_mask_hold_every_row_once_padded_with_zeros(dataset) -> None:
    """The mask, lengths and zero padding of bucketed batches (made a segment at a time from a views cache)."""
    root, manifest = dataset
    with _reader(
        root, manifest, batch_size=8, num_epochs=1, seed=3, sequence={"tok": Sequence("bucket", mask=True)}
    ) as reader:
        batches = list(reader)
    for batch in batches:
        lengths = batch["tok_lengths"]
        assert batch["tok_mask"].dtype == bool and batch["tok_mask"].shape == batch["tok"].shape
        assert np.array_equal(batch["tok_mask"], np.arange(batch["tok"].shape[1]) < lengths[:, None])
        assert (batch["tok"][~batch["tok_mask"]] == 0).all()
    _check_rows(_epoch_rows(batches, "bucket"), list(range(ROWS)), "bucket")


def test_default_buckets_are_powers_of_two_up_to_the_longest_row(dataset) -> None:
    root, manifest = dataset
    with _reader(root, manifest, batch_size=4, num_epochs=1, sequence={"tok": "bucket"}) as reader:
        widths = {batch["tok"].shape[1] for batch in reader}
        (plan,) = reader.sequence.columns
    assert plan.bounds == (8, 16, 32, 60) and widths <= set(plan.bounds)


@pytest.mark.parametrize(
    ("spec", "bounds"),
    [
        (Sequence("bucket", max_length=30, pad_to_multiple_of=8), (8, 16, 30)),  # 30 rounds to 32, past max_length
        (Sequence("bucket", max_length=32, pad_to_multiple_of=8), (8, 16, 32)),
        (Sequence("bucket", pad_to_multiple_of=8), (8, 16, 32, 64)),  # the longest row, 60, rounded up
        (Sequence("bucket", buckets=(10, 100), max_length=30, pad_to_multiple_of=8), (16, 104)),  # given past it
    ],
)
def test_bucket_bounds_are_rounded_to_the_multiple_and_kept_within_max_length_as_pad_is(
    dataset, spec: Sequence, bounds: tuple[int, ...]
) -> None:
    root, manifest = dataset
    with _reader(root, manifest, batch_size=4, num_epochs=1, sequence={"tok": spec}) as reader:
        widths = {batch["tok"].shape[1] for batch in reader}
        (plan,) = reader.sequence.columns
    assert plan.bounds == bounds and widths <= set(bounds)
    with _reader(root, manifest, batch_size=4, num_epochs=1, sequence={"tok": Sequence("pad", **_pad_of(spec))}) as r:
        assert max(batch["tok"].shape[1] for batch in r) <= (spec.max_length or 64)


def _pad_of(spec: Sequence) -> dict[str, Any]:
    return {"max_length": spec.max_length, "pad_to_multiple_of": spec.pad_to_multiple_of}


def test_pack_fills_fixed_rows_and_continues_a_row_in_the_next_packed_row(dataset) -> None:
    root, manifest = dataset
    spec = Sequence("pack", seq_len=16, mask=True)
    with _reader(
        root,
        manifest,
        batch_size=4,
        num_epochs=1,
        shuffle_row_groups=False,
        schema_fields=["tok"],
        sequence={"tok": spec},
    ) as reader:
        batches = list(reader)
    assert {b["tok"].shape for b in batches} == {(4, 16)}
    assert all(np.array_equal(b["tok_mask"], b["tok_segment_ids"] > 0) for b in batches)
    continued = 0
    for batch in batches:
        _packed_rows(batch)
        starts = batch["tok_position_ids"][1:, 0]  # a packed row that starts mid-row continues its positions
        continued += int(((starts > 0) & (batch["tok_segment_ids"][1:, 0] == 1)).sum())
    assert continued
    _check_rows(_epoch_rows(batches, "pack"), list(range(ROWS)), "pack")
    tokens = sum(len(v) for v in EXPECTED.values())
    filled = sum(int((b["tok_segment_ids"] > 0).sum()) for b in batches)
    # dense: a batch ends only where the next row would not fit, or its segment ends (23-row row groups here)
    assert filled == tokens and filled / (len(batches) * 64) > 0.7


@pytest.mark.parametrize("group_bytes", [1, 2 * 64 * 8])
def test_a_segment_batched_a_few_batches_at_a_time_gives_the_same_batches(
    dataset, monkeypatch: pytest.MonkeyPatch, group_bytes: int
) -> None:
    """Packed and bucketed batches are made a few at a time (``GROUP_BYTES``): in groups of one or two, the same."""
    root, manifest = dataset
    kwargs = {"batch_size": 4, "num_epochs": 1, "seed": 5, "shuffling_queue_capacity": 30}
    cases = [  # packed from the views, packed by a copy (not zero padded), bucketed from the views
        ("pack", MODES["pack"]),
        ("pack", {"tok": Sequence("pack", seq_len=16, pad_value=-1, mask=True)}),
        ("bucket", MODES["bucket"]),
    ]
    for mode, sequence in cases:
        fields = {"schema_fields": ["tok"]} if mode == "pack" else {}
        with _reader(root, manifest, sequence=sequence, **fields, **kwargs) as reader:
            whole = list(reader)
        monkeypatch.setattr(sequence_module, "GROUP_BYTES", group_bytes)
        with _reader(root, manifest, sequence=sequence, **fields, **kwargs) as reader:
            grouped = list(reader)
        monkeypatch.undo()
        assert len(whole) > 20
        assert _same(grouped, whole)
        if sequence is MODES[mode]:
            _check_rows(_epoch_rows(grouped, mode), list(range(ROWS)), mode)


@pytest.mark.parametrize("mode", ["bucket", "pack"])
def test_a_bucketed_or_packed_batch_the_loop_lets_go_of_is_freed_before_its_segment_ends(dataset, mode: str) -> None:
    """A segment's batches are made at once; each is released as it is yielded, not when the segment ends."""
    root, manifest = dataset
    fields = {"schema_fields": ["tok"]} if mode == "pack" else {}
    with _reader(root, manifest, sequence=MODES[mode], batch_size=4, num_epochs=1, **fields) as reader:
        batches = iter(reader)
        first = next(batches)
        released = weakref.ref(first["tok_lengths"] if mode == "bucket" else first["tok_segment_ids"])
        del first
        next(batches)
        assert reader.state().segment == 0  # both batches came from the first segment
        gc.collect()
        assert released() is None


def test_filters_and_a_process_pool_stay_exact(dataset) -> None:
    root, manifest = dataset
    for mode in ("pad", "bucket"):
        kwargs = {
            "batch_size": 7,
            "num_epochs": 1,
            "seed": 2,
            "shuffling_queue_capacity": 40,
            "filters": [("id", ">=", 100)],
            "sequence": MODES[mode],
        }
        with _reader(root, manifest, reader_pool_type="process", **kwargs) as reader:
            whole = list(reader)
        _check_rows(_epoch_rows(whole, mode), list(range(100, ROWS)), mode)
        with _reader(root, manifest, **kwargs) as first:
            head = list(itertools.islice(iter(first), 5))
            state = first.state_dict()
        with _reader(root, manifest, **kwargs) as resumed:
            resumed.load_state_dict(state)
            assert _same(head + list(resumed), whole)


def test_nested_values_pack_and_bucket_with_their_inner_shape(tmp_path: Path) -> None:
    manifest = _write(tmp_path, "list", nested=True)
    kwargs = {"num_epochs": 1, "seed": 1, "shuffling_queue_capacity": 50, "schema_fields": ["tok"]}
    with _reader(tmp_path, manifest, batch_size=4, sequence={"tok": Sequence("pack", seq_len=16)}, **kwargs) as r:
        packed = list(r)
    assert {b["tok"].shape for b in packed} == {(4, 16, 2)}
    for batch in packed:
        holds = batch["tok_segment_ids"] > 0
        assert (batch["tok"][..., 1][holds] == -batch["tok"][..., 0][holds]).all()
        _packed_rows({**batch, "tok": batch["tok"][..., 0]})
    tokens = sorted(int(t) for b in packed for t in b["tok"][..., 0][b["tok_segment_ids"] > 0])
    assert tokens == sorted(t for row in EXPECTED.values() for t in row)
    with _reader(tmp_path, manifest, batch_size=8, sequence={"tok": "bucket"}, **kwargs) as r:
        widths = {b["tok"].shape[1:] for b in r}
    assert all(inner == 2 and width in r.sequence.columns[0].bounds for width, inner in widths)


def test_pack_with_filters_resumes_exactly(dataset) -> None:
    root, manifest = dataset
    kwargs = {
        "batch_size": 4,
        "num_epochs": 1,
        "seed": 7,
        "shuffling_queue_capacity": 40,
        "schema_fields": ["tok"],
        "filters": [("id", "<", 200)],
        "sequence": MODES["pack"],
    }
    with _reader(root, manifest, **kwargs) as reader:
        whole = list(reader)
    _check_rows(_epoch_rows(whole, "pack"), list(range(200)), "pack")
    with _reader(root, manifest, **kwargs) as first:
        head = list(itertools.islice(iter(first), 6))
        state = first.state_dict()
    with _reader(root, manifest, **kwargs) as resumed:
        resumed.load_state_dict(state)
        assert _same(head + list(resumed), whole)


def _tokenize(frame: Any) -> Any:
    """A transform that makes the sequence: each row's tokens from its id, as a tokenizer would from text."""
    frame["tok"] = [np.array(EXPECTED[int(i)], dtype=np.int64) for i in frame["id"]]
    return frame


@pytest.mark.parametrize("mode", ["pad", "bucket"])
def test_a_transform_may_make_the_sequence(dataset, mode: str) -> None:
    root, manifest = dataset
    sequence = {"tok": Sequence("bucket", buckets=(4, 16, 64))} if mode == "bucket" else {"tok": "pad"}
    kwargs = {"batch_size": 9, "num_epochs": 1, "seed": 5, "shuffling_queue_capacity": 30, "sequence": sequence}
    spec = TransformSpec(_tokenize, selected_fields=["id", "tok"])
    with _reader(root, manifest, schema_fields=["id"], transform_spec=spec, **kwargs) as reader:
        whole = list(reader)
    _check_rows(_epoch_rows(whole, mode), list(range(ROWS)), mode)
    with _reader(root, manifest, schema_fields=["id"], transform_spec=spec, **kwargs) as first:
        head = list(itertools.islice(iter(first), 4))
        state = first.state_dict()
    with _reader(root, manifest, schema_fields=["id"], transform_spec=spec, **kwargs) as resumed:
        resumed.load_state_dict(state)
        assert _same(head + list(resumed), whole)


@pytest.mark.parametrize(
    ("fields", "how"),
    [(["id"], "is made by the transform"), (["id", "tok"], "goes through the transform, which may change its rows")],
    ids=["made", "changed"],
)
def test_buckets_without_bounds_under_a_transform_are_refused_saying_why(dataset, fields, how: str) -> None:
    # The cache's lengths bound no transform's rows. A cached column was said to be "made by the
    # transform", which sent its owner looking for a transform that made nothing.
    root, manifest = dataset
    spec = TransformSpec(_tokenize, selected_fields=["id", "tok"])
    with pytest.raises(ValueError, match=rf"column 'tok' {how}.*, so its longest row is unknown: give the bucket"):
        with _reader(root, manifest, schema_fields=fields, transform_spec=spec, sequence={"tok": "bucket"}) as reader:
            list(reader)


# ---------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("sequence", "message"),
    [
        ({"tok": "zip"}, r"the mode must be one of \('pad', 'bucket', 'pack', 'ragged'\)"),
        ({"tok": "pack"}, r"needs the packed rows' length: \{'tok': sparkfeed.Sequence\('pack', seq_len=512\)\}"),
        (["tok"], "it must be a dict of column name -> mode or Sequence"),
        ({"tok": {"mode": "pad", "width": 3}}, r"has unknown keys \['width'\]"),
        ({"tok": {"mode": "pad", "max_length": 0}}, "max_length=0 is not allowed: it must be an integer >= 1"),
        ({"tok": {"mode": "pad", "seq_len": 8}}, "seq_len=8 does nothing with mode='pad'"),
        ({"tok": {"mode": "bucket", "buckets": (8, 4)}}, "buckets=.* is not allowed: it must be increasing"),
        ({"tok": {"mode": "pad", "pad_value": "x"}}, "pad_value='x' is not allowed: it must be a number"),
        ({"a": "bucket", "b": "bucket"}, "batches are bucketed by one column's lengths"),
    ],
)
def test_bad_sequence_arguments_say_what_is_allowed(sequence: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        reader_options(sequence=sequence)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sequence": {"id": "pad"}}, "column 'id' is int64, not an array"),
        (
            {"sequence": {"nope": "pad"}},
            r"sequence names 'nope', which is not among the selected columns \['id', 'tok'\]",
        ),
        ({"sequence": {"tok": Sequence("pack", seq_len=8)}}, r"columns \['id'\] would not line up"),
        (
            {"sequence": {"tok": Sequence("pack", seq_len=8)}, "schema_fields": ["tok"], "batch_size": 2},
            r"rows of up to 60 values, more than one packed batch holds \(batch_size 2 x seq_len 8 = 16\)",
        ),
        ({"sequence": {"tok": Sequence("bucket", buckets=(8, 16))}}, "more than its last bucket \\(16\\)"),
    ],
)
def test_what_the_dataset_cannot_do_is_refused_when_the_loader_is_made(dataset, options: dict, message: str) -> None:
    root, manifest = dataset
    with pytest.raises(ValueError, match=message):
        _reader(root, manifest, num_epochs=1, **options)


def test_an_output_name_already_taken_is_refused(tmp_path: Path) -> None:
    table = pa.table({"tok": pa.array([[1], [2, 3]]), "tok_lengths": pa.array([1, 2])})
    pq.write_table(table, tmp_path / "p.parquet")
    stats = {"tok": list_shape_stats(table.column("tok"))}
    manifest = Manifest((FileEntry("p.parquet", (2,)),), table.schema, stats, {}, key="taken")
    with pytest.raises(ValueError, match="column 'tok' yields 'tok_lengths', which is already a column of the batch"):
        _reader(tmp_path, manifest, sequence={"tok": "pad"})


def test_a_state_saved_with_another_sequence_is_refused(dataset) -> None:
    root, manifest = dataset
    with _reader(root, manifest, batch_size=8, num_epochs=1, seed=1, sequence={"tok": "pad"}) as reader:
        next(iter(reader))
        state = reader.state_dict()
    assert json.loads(state["identity"]["sequence"]) == {"tok": {"mode": "pad"}}
    with pytest.raises(ValueError, match="this state was saved with sequence="):
        _reader(root, manifest, batch_size=8, num_epochs=1, seed=1, sequence={"tok": "bucket"}).load_state_dict(state)


def test_a_state_resumes_with_the_same_pad_value_spelled_otherwise(dataset) -> None:
    # 1 and 1.0 pad alike; the identity is compared as text, and "1.0" != "1" refused the state.
    root, manifest = dataset
    sequence = {"tok": Sequence("pad", pad_value=1.0)}
    with _reader(root, manifest, batch_size=8, num_epochs=1, seed=1, sequence=sequence) as reader:
        batches = iter(reader)
        next(batches)
        state = reader.state_dict()
        rest = [batch["tok_lengths"].tolist() for batch in batches]
    with _reader(root, manifest, batch_size=8, num_epochs=1, seed=1, sequence={"tok": {"pad_value": 1}}) as resumed:
        resumed.load_state_dict(state)
        assert [batch["tok_lengths"].tolist() for batch in resumed] == rest
    with pytest.raises(ValueError, match="this state was saved with sequence="):  # another value is another option
        _reader(root, manifest, batch_size=8, num_epochs=1, seed=1, sequence={"tok": {"pad_value": 2}}).load_state_dict(
            state
        )


@pytest.mark.parametrize("mode", ["pad", "bucket", "pack"])
@pytest.mark.parametrize(("pad_value", "allowed"), [(0.5, "a whole number"), (2.0**63, "a whole number")])
def test_a_pad_value_the_values_cannot_hold_is_refused_when_the_loader_is_made(
    dataset, mode: str, pad_value: float, allowed: str
) -> None:
    root, manifest = dataset
    options: dict[str, Any] = {"seq_len": 64} if mode == "pack" else {}
    sequence = {"tok": Sequence(mode, pad_value=pad_value, **options)}
    with pytest.raises(
        ValueError,
        match=rf"column 'tok' holds int64 values, which cannot hold pad_value={re.escape(repr(pad_value))}: "
        rf".*{allowed}",
    ):
        _reader(root, manifest, schema_fields=["tok"], sequence=sequence)


def _tokenize_small(frame: Any) -> Any:
    """Token ids a tokenizer gives as uint8."""
    frame["tok"] = [np.array(EXPECTED[int(i)], dtype=np.int64).astype(np.uint8) for i in frame["id"]]
    return frame


def test_a_pad_value_a_transform_made_column_cannot_hold_is_refused_not_wrapped(dataset) -> None:
    root, manifest = dataset
    spec = TransformSpec(_tokenize_small, selected_fields=["id", "tok"])
    sequence = {"tok": Sequence("pad", pad_value=-1)}
    with (
        _reader(root, manifest, schema_fields=["id"], transform_spec=spec, sequence=sequence, num_epochs=1) as reader,
        pytest.raises(
            ValueError, match=r"column 'tok' holds uint8 values, which cannot hold pad_value=-1: .* from 0 to 255"
        ),
    ):
        list(reader)


def test_a_float_pad_value_is_kept_to_the_nearest_value_and_refused_only_past_the_range(tmp_path: Path) -> None:
    table = pa.table({"x": pa.array([[1.0], [2.0, 3.0]], pa.list_(pa.float32()))})
    pq.write_table(table, tmp_path / "p.parquet")
    manifest = Manifest(
        (FileEntry("p.parquet", (2,)),), table.schema, {"x": list_shape_stats(table.column("x"))}, {}, key="floats"
    )
    with _reader(
        tmp_path, manifest, sequence={"x": Sequence("pad", pad_value=0.1)}, batch_size=2, num_epochs=1
    ) as reader:
        (batch,) = list(reader)
    assert batch["x"][0, 1] == np.float32(0.1)
    with pytest.raises(ValueError, match=r"float32 values, which cannot hold pad_value=1e\+300 \(at most 3.40282e\+38"):
        _reader(tmp_path, manifest, sequence={"x": Sequence("pad", pad_value=1e300)})


@pytest.mark.parametrize("mode", ["pad", "bucket", "pack"])
def test_a_shuffle_window_joins_files_that_store_the_sequence_differently(tmp_path: Path, mode: str) -> None:
    """The writer stores each Arrow batch as it fits: rows of varying length as views, of one length as fixed-size
    binary, all empty as a list; one window over such files must give every token once."""
    lengths_of_file = [[1, 4, 2, 0, 5, 3], [3, 3, 3, 3], [0, 0, 0]]
    entries, stats, first = [], [], 0
    for number, lengths in enumerate(lengths_of_file):
        ids = np.arange(first, first + len(lengths))
        first += len(lengths)
        logical = pa.array(
            [[int(i) * SCALE + j for j in range(n)] for i, n in zip(ids, lengths, strict=True)], pa.list_(pa.int64())
        )
        stats.append(list_shape_stats(logical))
        column, packed = logical, {}
        if (shape := writer_module.packed_shape(logical, stats[-1])) is not None:
            column, packed = writer_module.pack(logical, shape), {"tok": tuple(shape)}
        elif (shape := writer_module.ragged_shape(logical, stats[-1])) is not None:
            column, packed = pack_ragged(logical, shape), {"tok": tuple(shape)}
        pq.write_table(pa.table({"id": ids, "tok": column}), tmp_path / f"p{number}.parquet", row_group_size=3)
        metadata = pq.ParquetFile(tmp_path / f"p{number}.parquet").metadata
        groups = tuple(metadata.row_group(g).num_rows for g in range(metadata.num_row_groups))
        entries.append(FileEntry(f"p{number}.parquet", groups, packed))
    kinds = {str(pq.read_schema(tmp_path / f"p{n}.parquet").field("tok").type).split("[")[0] for n in range(3)}
    varying = "binary_view" if writer_module.VIEWS else "binary"  # as Parquet stores it (views from pyarrow 21)
    assert kinds == {varying, "fixed_size_binary", "list<element: int64>"}
    schema = pa.schema([("id", pa.int64()), ("tok", pa.list_(pa.int64()))])
    manifest = Manifest(tuple(entries), schema, {"tok": writer_module.merge_shape_stats(stats)}, {}, key="mixed")
    sequence = {"pad": "pad", "bucket": Sequence("bucket", buckets=(2, 8)), "pack": Sequence("pack", seq_len=8)}[mode]
    options: dict[str, Any] = {"schema_fields": ["tok"]} if mode == "pack" else {}
    with _reader(
        tmp_path,
        manifest,
        batch_size=2,
        num_epochs=1,
        seed=1,
        shuffling_queue_capacity=20,
        sequence={"tok": sequence},
        **options,
    ) as reader:
        batches = list(reader)
    if mode == "pack":
        tokens = [int(t) for b in batches for t in b["tok"][b["tok_segment_ids"] > 0]]
    else:
        tokens = [int(t) for b in batches for row, n in zip(b["tok"], b["tok_lengths"], strict=True) for t in row[:n]]
    lengths = [n for file in lengths_of_file for n in file]
    assert sorted(tokens) == sorted(i * SCALE + j for i, n in enumerate(lengths) for j in range(n))
