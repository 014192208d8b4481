"""The reader end to end on a real cache: epochs, batches, shards, seeds, columns, shutdown."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import re
import threading
import time
import traceback
import warnings

import numpy as np
import pyarrow.fs as pafs
import pytest
from pyspark.sql import functions as F

from sparkfeed import make_spark_converter
from sparkfeed.transform import TransformSpec

from helpers import concat

ROWS = 3000


@pytest.fixture(scope="module")
def converter(spark):
    df = spark.range(ROWS, numPartitions=3).select(
        "id", (F.col("id") * 0.5).alias("x"), F.array(F.col("id"), F.col("id") + 1).alias("pair")
    )
    converter = make_spark_converter(df, parquet_row_group_size_bytes=2048)
    assert sum(len(f.row_groups) for f in converter.manifest.files) >= 6  # enough groups to shuffle
    return converter


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sparkfeed-reader")]


def _ids(converter, **kwargs) -> np.ndarray:
    with converter.make_numpy_iterator(**kwargs) as batches:
        return concat(batches)["id"]


def test_one_epoch_yields_every_row_once_with_a_last_partial_batch(converter) -> None:
    with converter.make_numpy_iterator(batch_size=128, num_epochs=1) as batches:
        out = list(batches)
        assert len(batches) == len(out) == 24
    assert [len(b["id"]) for b in out] == [128] * 23 + [ROWS - 23 * 128]
    ids = np.concatenate([b["id"] for b in out])
    assert sorted(ids.tolist()) == list(range(ROWS))
    x = np.concatenate([b["x"] for b in out])
    np.testing.assert_array_equal(x, ids * 0.5)
    pair = np.concatenate([b["pair"] for b in out])
    np.testing.assert_array_equal(pair, np.stack([ids, ids + 1], axis=1))


def test_len_of_a_loader_of_countless_epochs_is_computed_not_counted(converter) -> None:
    """num_epochs=sys.maxsize is a common "forever": len() (and a TF dataset's cardinality) must not loop over it."""
    with converter.make_numpy_iterator(batch_size=128, num_epochs=10**15) as batches:  # a loop: four years
        assert len(batches) == 10**15 * 24
        next(iter(batches))
        with converter.make_numpy_iterator(batch_size=128, num_epochs=3, drop_last=True) as few:
            assert len(few) == 3 * 23


def test_drop_last_leaves_out_only_each_epochs_short_batch(converter) -> None:
    kwargs = {"batch_size": 128, "num_epochs": 2, "seed": 5, "shuffling_queue_capacity": 500}
    with converter.make_numpy_iterator(**kwargs) as batches:
        kept = [b["id"] for b in batches]
    with converter.make_numpy_iterator(drop_last=True, **kwargs) as batches:
        dropped = [b["id"] for b in batches]
        assert len(batches) == len(dropped) == 2 * 23
    assert [len(ids) for ids in dropped] == [128] * 46
    short = [i for i, ids in enumerate(kept) if len(ids) < 128]
    assert short == [23, 47]  # each epoch's last batch, and only those, are left out
    expected = [ids for i, ids in enumerate(kept) if i not in short]
    assert all(np.array_equal(a, b) for a, b in zip(dropped, expected, strict=True))
    with pytest.raises(ValueError, match="drop_last='yes' is not allowed: it must be a bool"):
        converter.make_numpy_iterator(drop_last="yes")


def test_batches_do_not_span_epochs(converter) -> None:
    with converter.make_numpy_iterator(batch_size=1000, num_epochs=3, seed=1) as batches:
        sizes = [len(b["id"]) for b in batches]
        assert len(batches) == 9
    assert sizes == [1000] * 9
    with converter.make_numpy_iterator(batch_size=2048, num_epochs=2) as batches:
        assert [len(b["id"]) for b in batches] == [2048, 952, 2048, 952]


def test_each_epoch_covers_all_rows_in_a_new_order(converter) -> None:
    ids = _ids(converter, batch_size=500, num_epochs=3, seed=3)
    epochs = ids.reshape(3, ROWS)
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(ROWS))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


def test_same_seed_same_batches_and_iterating_again_continues_with_new_epochs(converter) -> None:
    first = _ids(converter, batch_size=100, num_epochs=2, seed=11)
    np.testing.assert_array_equal(first, _ids(converter, batch_size=100, num_epochs=2, seed=11))
    assert not np.array_equal(first, _ids(converter, batch_size=100, num_epochs=2, seed=12))
    with converter.make_numpy_iterator(batch_size=100, num_epochs=1, seed=11) as loader:
        epoch0 = concat(loader)["id"]
        epoch1 = concat(loader)["id"]
    np.testing.assert_array_equal(np.concatenate([epoch0, epoch1]), first)


def test_no_shuffle_reads_in_file_order_and_unseeded_shuffles_differ(converter) -> None:
    ordered = _ids(converter, batch_size=256, num_epochs=1, shuffle_row_groups=False)
    np.testing.assert_array_equal(ordered, np.sort(ordered))
    runs = [_ids(converter, batch_size=256, num_epochs=1) for _ in range(3)]
    assert any(not np.array_equal(runs[0], other) for other in runs[1:])


@pytest.mark.parametrize("shard_count", [2, 3, 7])
@pytest.mark.parametrize("capacity", [None, 1000])
def test_exact_shards_cover_every_row_exactly_once(converter, shard_count: int, capacity) -> None:
    shards = [
        _ids(
            converter,
            batch_size=64,
            num_epochs=1,
            cur_shard=s,
            shard_count=shard_count,
            shard_policy="exact",
            seed=5,
            shuffling_queue_capacity=capacity,
        )
        for s in range(shard_count)
    ]
    assert sorted(np.concatenate(shards).tolist()) == list(range(ROWS))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("policy", ["pad", "drop"])
def test_every_shard_yields_the_same_number_of_batches_by_default(converter, policy: str) -> None:
    counts, seen = set(), []
    for shard in range(7):  # 3000 rows: shards of 428 and 429
        with converter.make_torch_dataloader(
            batch_size=107, num_epochs=2, cur_shard=shard, shard_count=7, shard_policy=policy
        ) as loader:
            batches = list(loader)
            assert len(loader) == len(batches)
        counts.add(len(batches))
        seen += [int(i) for b in batches[: len(batches) // 2] for i in b["id"]]
    assert len(counts) == 1
    if policy == "pad":
        assert set(seen) == set(range(ROWS)) and len(seen) == 7 * 429
    else:
        assert len(set(seen)) == len(seen) == 7 * 428


def test_more_shards_than_row_groups(spark) -> None:
    tiny = make_spark_converter(spark.range(10, numPartitions=1))
    assert sum(len(f.row_groups) for f in tiny.manifest.files) == 1
    shards = [
        _ids(tiny, batch_size=2, num_epochs=1, cur_shard=s, shard_count=4, shard_policy="exact") for s in range(4)
    ]
    assert [len(s) for s in shards] == [2, 3, 2, 3]
    assert sorted(np.concatenate(shards).tolist()) == list(range(10))
    padded = [_ids(tiny, batch_size=2, num_epochs=1, cur_shard=s, shard_count=4) for s in range(4)]
    assert [len(s) for s in padded] == [3, 3, 3, 3]
    with pytest.raises(ValueError, match="shard 0 of 20 holds no rows"):
        tiny.make_numpy_iterator(cur_shard=0, shard_count=20, shard_policy="drop")


def test_shuffle_buffer_mixes_rows_reproducibly(converter) -> None:
    plain = _ids(converter, batch_size=100, num_epochs=1, seed=2)
    mixed = _ids(converter, batch_size=100, num_epochs=1, seed=2, shuffling_queue_capacity=1200)
    np.testing.assert_array_equal(
        mixed, _ids(converter, batch_size=100, num_epochs=1, seed=2, shuffling_queue_capacity=1200)
    )
    assert sorted(mixed.tolist()) == list(range(ROWS))
    # Without the buffer, rows keep their order inside a row group: most neighbours are consecutive ids.
    assert np.mean(np.diff(plain) == 1) > 0.9
    assert np.mean(np.diff(mixed) == 1) < 0.05
    position = np.empty(ROWS)
    position[mixed] = np.arange(ROWS)
    assert abs(np.corrcoef(np.arange(ROWS), position)[0, 1]) < 0.3


@pytest.mark.parametrize(("prefetch", "windows"), [(4, 2), (8, 3), (1, 2), (None, 5)])
def test_prefetch_bounds_the_row_groups_read_ahead_of_a_shuffle_window(converter, prefetch, windows) -> None:
    """prefetch counts row groups, not windows: prefetch=4 held four whole windows ahead.

    A window here joins four row groups (256 rows of 73-row groups): with prefetch=4 the reader
    holds the window it serves and one more, with 8 two more, and with 1 still one (a window is
    read whole). By default (None) it reads twice the workers' windows ahead, as its shuffled
    loaders need to keep pace. Each row group read passes once through the transform, which
    counts them while the consumer sleeps on its first batch.
    """
    assert max(rg for file in converter.manifest.files for rg in file.row_groups) == 73
    reads, lock = [], threading.Lock()

    def count(frame):
        with lock:
            reads.append(len(frame))
        return frame

    with converter.make_numpy_iterator(
        batch_size=10,
        num_epochs=1,
        seed=1,
        shuffling_queue_capacity=256,
        prefetch=prefetch,
        workers_count=2,
        transform_spec=TransformSpec(count),
    ) as batches:
        iterator = iter(batches)
        next(iterator)
        seen, deadline = -1, time.monotonic() + 30
        while len(reads) != seen and time.monotonic() < deadline:  # until the workers read no more
            seen = len(reads)
            time.sleep(0.5)
        assert len(reads) == 4 * windows


@pytest.mark.parametrize("filters", [None, [("id", ">", 100)]], ids=["all", "filtered"])
def test_shuffled_strings_bytes_and_varying_arrays_keep_their_rows(spark, filters) -> None:
    """Such columns are converted to Python objects before the window's permutation, not taken in Arrow first."""
    df = spark.range(600, numPartitions=2).select(
        "id",
        F.when(F.col("id") % 7 == 0, None).otherwise(F.concat(F.lit("s"), F.col("id").cast("string"))).alias("text"),
        F.when(F.col("id") % 5 == 0, None).otherwise(F.col("id").cast("string").cast("binary")).alias("blob"),
        F.sequence(F.lit(0), F.col("id") % 4).alias("counts"),
    )
    converter = make_spark_converter(df, parquet_row_group_size_bytes=1024)
    try:
        assert sum(len(f.row_groups) for f in converter.manifest.files) >= 6
        expected = {row.id: row for row in df.collect()}
        with converter.make_numpy_iterator(
            batch_size=64, num_epochs=1, seed=3, shuffling_queue_capacity=200, filters=filters
        ) as batches:
            got = concat(batches)
        ids = got["id"].tolist()
        assert sorted(ids) == sorted(i for i in expected if filters is None or i > 100)
        assert np.mean(np.diff(got["id"]) == 1) < 0.1  # shuffled
        for i, text, blob, counts in zip(ids, got["text"], got["blob"], got["counts"], strict=True):
            row = expected[i]
            assert text == row.text
            assert blob == (None if row.blob is None else bytes(row.blob))
            assert counts.tolist() == row.counts
    finally:
        converter.delete()


def test_schema_fields_reads_only_those_columns(converter) -> None:
    with converter.make_numpy_iterator(batch_size=10, num_epochs=1, schema_fields=["x"]) as batches:
        assert set(next(iter(batches))) == {"x"}


def test_infinite_epochs_and_early_break_stop_the_threads(converter) -> None:
    with converter.make_numpy_iterator(batch_size=50, workers_count=2) as batches:
        with pytest.raises(TypeError, match="infinite"):
            len(batches)
        iterator = iter(batches)
        taken = list(itertools.islice(iterator, 200))
        assert len(taken) == 200  # 10,000 rows: more than three epochs
        assert _reader_threads()
    assert not _reader_threads()
    loader = converter.make_numpy_iterator(batch_size=50)
    for _ in loader:
        break
    assert not _reader_threads()  # the reader holds its iteration weakly: the loop's end is the iteration's
    iterator = iter(loader)
    next(iterator)
    assert _reader_threads()
    loader.close()
    assert not _reader_threads()


def _broken_transform(frame):
    raise ArithmeticError("transform failed")


def test_transform_exception_surfaces_with_traceback_and_location(converter) -> None:
    with pytest.raises(ArithmeticError, match="transform failed") as error:
        with converter.make_numpy_iterator(num_epochs=1, transform_fn=_broken_transform) as batches:
            list(batches)
    assert "_broken_transform" in [f.name for f in traceback.extract_tb(error.value.__traceback__)]
    (note,) = error.value.__notes__
    assert ".parquet, row group" in note and "rows [" in note
    assert not _reader_threads()


@pytest.mark.parametrize("transform", [False, True])
def test_process_workers_yield_exactly_the_thread_batches(converter, transform) -> None:
    scale = 3.0  # a closure in the transform: forked workers inherit it

    def triple(frame):
        frame["x"] = frame["x"] * scale
        return frame

    kwargs = dict(batch_size=100, num_epochs=2, seed=5, shuffling_queue_capacity=700, cur_shard=1, shard_count=2)
    if transform:
        kwargs["transform_fn"] = triple
    with converter.make_numpy_iterator(**kwargs) as batches:
        by_threads = list(batches)
    with converter.make_numpy_iterator(reader_pool_type="process", workers_count=2, **kwargs) as batches:
        by_processes = list(batches)
        assert len(batches) == len(by_processes)
    assert len(by_threads) == len(by_processes)
    for ours, theirs in zip(by_threads, by_processes, strict=True):
        assert ours.keys() == theirs.keys()
        for name in ours:
            np.testing.assert_array_equal(ours[name], theirs[name])
    ids = np.concatenate([b["id"] for b in by_processes])
    x = np.concatenate([b["x"] for b in by_processes])
    np.testing.assert_array_equal(x, ids * 0.5 * (scale if transform else 1))
    assert not multiprocessing.active_children()


def test_process_workers_stop_on_early_break_and_report_transform_errors(converter) -> None:
    with converter.make_numpy_iterator(batch_size=50, reader_pool_type="process", workers_count=2) as batches:
        iterator = iter(batches)
        assert len(list(itertools.islice(iterator, 100))) == 100
        assert multiprocessing.active_children()
    assert not multiprocessing.active_children()
    with pytest.raises(ArithmeticError, match="transform failed") as error:
        with converter.make_numpy_iterator(
            num_epochs=1, transform_fn=_broken_transform, reader_pool_type="process"
        ) as batches:
            list(batches)
    assert "_broken_transform" in str(error.value.__cause__)  # the worker's traceback
    (note,) = error.value.__notes__
    assert "reader process" in note and ".parquet, row group" in note
    assert not multiprocessing.active_children()


def test_batches_are_writable_and_writes_never_reach_the_cache(converter) -> None:
    """Local files are mapped copy-on-write: arrays may be views of the file's pages."""
    rows = converter.manifest.files[0].row_groups[0]  # a batch that is a view of one row group
    with converter.make_numpy_iterator(batch_size=rows, num_epochs=1, shuffle_row_groups=False) as batches:
        first = next(iter(batches))
    for name in ("id", "x", "pair"):
        assert first[name].flags.writeable
        first[name][...] = -1
    with converter.make_numpy_iterator(batch_size=rows, num_epochs=1, shuffle_row_groups=False) as batches:
        again = next(iter(batches))
    assert (again["id"] >= 0).all() and len(set(again["id"].tolist())) == rows
    np.testing.assert_array_equal(again["pair"], np.stack([again["id"], again["id"] + 1], axis=1))


# ---------------------------------------------------------------------------------- Petastorm's reader keywords


def test_the_dummy_pool_reads_in_the_iterating_thread_and_yields_the_thread_pools_batches(converter) -> None:
    threads: set[str] = set()

    def record(frame):
        threads.add(threading.current_thread().name)
        return frame

    kwargs = dict(batch_size=100, num_epochs=2, seed=5, shuffling_queue_capacity=700, transform_fn=record)
    with converter.make_numpy_iterator(**kwargs) as batches:
        by_threads = list(batches)
    threads.clear()
    with converter.make_numpy_iterator(reader_pool_type="dummy", **kwargs) as batches:
        inline = list(batches)
        assert not _reader_threads()
    assert threads == {threading.current_thread().name}
    assert len(inline) == len(by_threads)
    for ours, theirs in zip(by_threads, inline, strict=True):
        np.testing.assert_array_equal(ours["id"], theirs["id"])


def test_shuffle_rows_shuffles_inside_row_groups_with_the_smallest_window(converter) -> None:
    plain = _ids(converter, batch_size=100, num_epochs=1, shuffle_row_groups=False)
    shuffled = _ids(converter, batch_size=100, num_epochs=1, shuffle_row_groups=False, seed=3, shuffle_rows=True)
    assert sorted(shuffled.tolist()) == list(range(ROWS)) and np.mean(np.diff(shuffled) == 1) < 0.05
    # The smallest window joins two row groups: each stretch of two groups holds the same rows, in another order.
    offset = 0
    for entry in converter.manifest.files:
        sizes = list(entry.row_groups)
        for pair in range(0, len(sizes) - 1, 2):
            width = sizes[pair] + sizes[pair + 1]
            assert set(shuffled[offset : offset + width]) == set(plain[offset : offset + width])
            offset += width
        if len(sizes) % 2:
            break  # a lone last group joins the next file's first: the stretches no longer line up
    assert offset >= 2 * min(converter.manifest.files[0].row_groups)
    with converter.make_numpy_iterator(shuffle_rows=True) as batches:
        assert batches.state_dict()["identity"]["shuffle_rows"] == 1
    with converter.make_numpy_iterator(shuffle_rows=True, shuffling_queue_capacity=700) as batches:
        assert batches.state_dict()["identity"]["shuffle_rows"] == 700  # the larger window applies


def test_shard_seed_deals_other_rows_to_shards_which_still_partition_them_and_resume(converter) -> None:
    kwargs = dict(batch_size=50, num_epochs=1, shard_count=3, shard_policy="exact", seed=1)
    contiguous = [set(_ids(converter, cur_shard=s, **kwargs).tolist()) for s in range(3)]
    dealt = [set(_ids(converter, cur_shard=s, shard_seed=11, **kwargs).tolist()) for s in range(3)]
    assert sorted(i for shard in dealt for i in shard) == list(range(ROWS)) and dealt != contiguous
    assert dealt == [set(_ids(converter, cur_shard=s, shard_seed=11, **kwargs).tolist()) for s in range(3)]
    with converter.make_numpy_iterator(cur_shard=0, shard_seed=11, **kwargs) as batches:
        head = [b["id"] for b in itertools.islice(iter(batches), 3)]
        state = batches.state_dict()
    assert state["identity"]["shard_seed"] == 11
    with converter.make_numpy_iterator(cur_shard=0, shard_seed=11, **kwargs) as batches:
        batches.load_state_dict(state)
        assert set(np.concatenate(head + [b["id"] for b in batches]).tolist()) == dealt[0]
    with pytest.raises(ValueError, match="saved with shard_seed=11, this reader has shard_seed=12"):
        converter.make_numpy_iterator(cur_shard=0, shard_seed=12, **kwargs).load_state_dict(state)


def test_loaders_accept_the_converters_own_storage_options_and_filesystem_only(converter) -> None:
    for same in ({"storage_options": None}, {"storage_options": {}}, {"filesystem": pafs.LocalFileSystem()}):
        assert len(_ids(converter, batch_size=1000, num_epochs=1, **same)) == ROWS
    secret = {"access_key": "AKIA-SECRET", "region": "eu-west-1"}
    with pytest.raises(ValueError, match=r"storage_options with keys \['access_key', 'region'\] differ") as error:
        converter.make_numpy_iterator(storage_options=secret)
    assert "AKIA-SECRET" not in str(error.value) and "pass storage_options to make_spark_converter" in str(error.value)
    other = pafs.SubTreeFileSystem("/", pafs.LocalFileSystem())
    with pytest.raises(ValueError, match=r"is not the filesystem this converter reaches its cache .* with: pass"):
        converter.make_torch_dataloader(filesystem=other)


def _bars(stderr: str) -> dict[str, str]:
    """Each progress bar's last drawing, by its label ("epoch 0"); tqdm redraws a line after a carriage return."""
    frames = [frame.strip() for line in stderr.split("\n") for frame in line.split("\r") if frame.strip()]
    return {frame.split(":", 1)[0]: frame for frame in frames if frame.startswith("epoch ")}


def test_progress_draws_one_bar_per_epoch_with_its_batches_and_rows_per_second(converter, capsys) -> None:
    with converter.make_numpy_iterator(batch_size=128, num_epochs=2, seed=1, progress=True) as batches:
        assert sum(1 for _ in batches) == 48
    bars = _bars(capsys.readouterr().err)
    assert list(bars) == ["epoch 0", "epoch 1"]
    for bar in bars.values():
        assert "100%" in bar and "| 24/24 [" in bar and "batch/s" in bar and "rows/s]" in bar
    with converter.make_numpy_iterator(batch_size=128, num_epochs=1, progress=True) as batches:
        for _ in itertools.islice(batches, 5):  # a loop left early closes its bar where it stood
            pass
    assert "| 5/24 [" in _bars(capsys.readouterr().err)["epoch 0"]
    with converter.make_torch_dataloader(batch_size=100, num_epochs=1, progress=True, drop_last=True) as loader:
        assert len(list(loader)) == 30  # torch: the same bar, from the same engine
    assert "| 30/30 [" in _bars(capsys.readouterr().err)["epoch 0"]
    with converter.make_numpy_iterator(batch_size=128, num_epochs=1, cur_shard=1, shard_count=2, progress=True) as b:
        assert len(list(b)) == 12
    assert "| 12/12 [" in _bars(capsys.readouterr().err)["epoch 0 (shard 1 of 2)"]
    with converter.make_numpy_iterator(batch_size=500, num_epochs=1, filters=[("id", "<", 1000)], progress=True) as b:
        assert len(list(b)) == 2
    assert "epoch 0: 2batch [" in _bars(capsys.readouterr().err)["epoch 0"]  # filters: no total before reading


def test_progress_is_off_by_default_and_changes_neither_batches_nor_state(converter, capsys) -> None:
    kwargs = dict(batch_size=64, num_epochs=2, seed=4, shuffling_queue_capacity=300)
    with converter.make_numpy_iterator(**kwargs) as batches:
        quiet = [b["id"] for b in batches]
        quiet_state = batches.state_dict()
    assert capsys.readouterr().err == ""
    with converter.make_numpy_iterator(progress=True, **kwargs) as batches:
        shown = [b["id"] for b in batches]
        assert batches.state_dict() == quiet_state  # progress is not part of what a state indexes
    assert len(shown) == len(quiet) and all(np.array_equal(a, b) for a, b in zip(shown, quiet, strict=True))
    with converter.make_numpy_iterator(**kwargs) as batches:
        head = [b["id"] for b in itertools.islice(iter(batches), 10)]
        state = batches.state_dict()
    capsys.readouterr()
    with converter.make_numpy_iterator(progress=True, **kwargs) as batches:
        batches.load_state_dict(state)  # a state saved without a bar resumes with one, and the bar counts the rest
        rest = [b["id"] for b in batches]
    assert all(np.array_equal(a, b) for a, b in zip(head + rest, quiet, strict=True))
    bars = _bars(capsys.readouterr().err)
    assert "| 37/37 [" in bars["epoch 0"] and "| 47/47 [" in bars["epoch 1"]
    with pytest.raises(ValueError, match=re.escape("progress='yes' is not allowed: it must be a bool")):
        converter.make_numpy_iterator(progress="yes")


def test_a_reader_of_whole_chunks_yields_every_row_once_as_read_and_refuses_sequences(converter) -> None:
    from sparkfeed.options import reader_options
    from sparkfeed.reader import Reader

    options = reader_options(batch_size=7, num_epochs=1, workers_count=2)
    reader = Reader(converter.location, converter.manifest, options, whole_chunks=True)
    chunks = [batch["id"] for batch in reader]
    groups = [rows for entry in converter.manifest.files for rows in entry.row_groups]
    assert sorted(len(chunk) for chunk in chunks) == sorted(groups)  # a row group each, not cut in 7s
    assert sorted(np.concatenate(chunks).tolist()) == list(range(ROWS))
    with pytest.raises(ValueError, match="whole chunks does not batch sequences"):
        Reader(
            converter.location,
            converter.manifest,
            reader_options(batch_size=7, sequence={"pair": "pad"}),
            whole_chunks=True,
        )


@pytest.mark.parametrize("rows", [100, 70])
def test_a_cache_file_changed_since_its_manifest_is_refused_not_served(spark, tmp_path, rows: int) -> None:
    # The manifest's row counts cut every read plan: a file rewritten since (other rows in the
    # same counts, or other counts) was read by them, its rows served as the cache's in silence.
    import pyarrow as pa
    import pyarrow.parquet as pq

    converter = make_spark_converter(spark.range(200, numPartitions=2), cache_dir=tmp_path.as_uri())
    try:
        root = converter.cache_dir_url.removeprefix("file://")
        entry = converter.manifest.files[0]
        assert entry.row_groups == (100,) and entry.size == os.path.getsize(f"{root}/{entry.path}")
        assert sorted(_ids(converter, batch_size=50, num_epochs=1).tolist()) == list(range(200))
        pq.write_table(pa.table({"id": pa.array(range(10_000, 10_000 + rows))}), f"{root}/{entry.path}")
        differs = (
            r"it is \d+ bytes long, but the manifest records \d+" if rows == 100 else r"its row groups hold \[70\] rows"
        )
        with pytest.raises(ValueError, match=rf"{entry.path}: {differs}.*: the file was changed since"):
            _ids(converter, batch_size=50, num_epochs=1)
    finally:
        converter.delete()


def test_the_default_pad_warns_where_it_repeats_a_row_and_a_chosen_policy_does_not(converter) -> None:
    # Petastorm's inference idiom (cur_shard=i, shard_count=n, num_epochs=1) with no shard_policy
    # got pad's repeated rows and counted them: the shards that repeat one say so, by how many.
    def run(shard: int, **kwargs) -> tuple[int, list[str]]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rows = len(_ids(converter, batch_size=500, num_epochs=1, cur_shard=shard, shard_count=7, **kwargs))
        return rows, [str(w.message) for w in caught if "shard_policy" in str(w.message)]

    assert ROWS % 7 == 4  # shards of 429 rows and of 428, which pad makes 429 with a repeated row
    short = []
    for shard in range(7):
        rows, said = run(shard)
        assert rows == 429 and len(said) <= 1
        if said:
            short.append(shard)
            assert said[0].startswith(f"shard {shard} of 7 holds 428 of the {ROWS} rows and repeats 1 of them")
            assert "pass shard_policy='exact'" in said[0]
        assert run(shard, shard_policy="pad") == (429, [])
        assert run(shard, shard_policy="exact") == (428 if said else 429, [])
    assert len(short) == 3
