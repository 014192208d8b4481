"""Caches and datasets on object storage, against a real S3-compatible server (moto) on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import pickle
import socket
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from sparkfeed import Sequence, make_spark_converter
from sparkfeed.location import Location

from helpers import concat, run_job
from s3server import S3Server

pytestmark = pytest.mark.slow


def _ids(converter, **kwargs) -> list[int]:
    with converter.make_numpy_iterator(batch_size=64, num_epochs=1, **kwargs) as batches:
        return sorted(int(i) for b in batches for i in b["id"])


def _keys(server: S3Server, prefix: str) -> list[str]:
    selector = pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
    return sorted(i.path for i in server.filesystem().get_file_info(selector) if i.type == pafs.FileType.File)


@pytest.mark.parametrize("with_array", [False, True], ids=["tabular", "arrays"])
def test_dataframes_materialize_on_s3_read_back_reuse_and_delete(
    spark, s3_server: S3Server, s3_bucket: str, with_array: bool
) -> None:
    df = spark.range(300, numPartitions=3).withColumn("x", F.col("id") * 0.5)
    if with_array:
        df = df.withColumn("v", F.array(F.col("id") * 1.0, F.col("id") * 2.0))
    options = s3_server.storage_options
    converter = make_spark_converter(df, cache_dir=f"s3a://{s3_bucket}/caches", storage_options=options)
    assert converter.cache_dir_url.startswith(f"s3a://{s3_bucket}/caches/sparkfeed-")
    with converter.make_numpy_iterator(batch_size=64, num_epochs=1, shuffle_row_groups=False) as batches:
        got = concat(batches)
    np.testing.assert_array_equal(np.sort(got["id"]), np.arange(300))
    np.testing.assert_array_equal(got["x"], got["id"] * 0.5)
    if with_array:
        assert got["v"].shape == (300, 2) and got["v"].dtype == np.float32
    again = make_spark_converter(df, cache_dir=f"s3a://{s3_bucket}/caches", storage_options=options)
    assert again.cache_dir_url == converter.cache_dir_url
    root = Location.parse(converter.cache_dir_url, options=options).path
    assert any(key.endswith(".parquet") for key in _keys(s3_server, root))
    converter.delete()
    assert _keys(s3_server, root) == []


def test_s3_s3a_and_s3n_are_one_bucket_to_the_reader(spark, s3_server: S3Server, s3_bucket: str) -> None:
    options = s3_server.storage_options
    converter = make_spark_converter(spark.range(40), cache_dir=f"s3://{s3_bucket}/schemes", storage_options=options)
    path = converter.cache_dir_url.removeprefix("s3://")
    for scheme in ("s3", "s3a", "s3n"):
        assert _ids(make_spark_converter(f"{scheme}://{path}", storage_options=options)) == list(range(40))
    converter.delete()


def test_delete_removes_the_prefix_and_spares_its_siblings(spark, s3_server: S3Server, s3_bucket: str) -> None:
    options = s3_server.storage_options
    converter = make_spark_converter(spark.range(10), cache_dir=f"s3://{s3_bucket}/del", storage_options=options)
    root = Location.parse(converter.cache_dir_url, options=options).path
    fs = s3_server.filesystem()
    for sibling in (f"{root}-2/keep.txt", f"{root}x", f"{root.rsplit('/', 1)[0]}/user.txt"):
        with fs.open_output_stream(sibling) as stream:
            stream.write(b"the user's")
    converter.delete()
    assert _keys(s3_server, root) == []
    assert _keys(s3_server, f"{s3_bucket}/del") == sorted(
        [f"{root}-2/keep.txt", f"{root}x", f"{s3_bucket}/del/user.txt"]
    )


def test_an_existing_dataset_is_read_in_place_and_never_deleted(s3_server: S3Server, s3_bucket: str) -> None:
    fs = s3_server.filesystem()
    table = pa.table({"id": np.arange(50), "x": np.arange(50) / 4})
    for part in range(2):
        pq.write_table(table.slice(part * 25, 25), f"{s3_bucket}/existing/part-{part}.parquet", filesystem=fs)
    converter = make_spark_converter(f"s3://{s3_bucket}/existing", storage_options=s3_server.storage_options)
    assert _ids(converter) == list(range(50))
    with pytest.warns(UserWarning, match="did not create it"):
        converter.delete()
    assert len(_keys(s3_server, f"{s3_bucket}/existing")) == 2


def test_spark_tasks_read_shards_through_the_pickled_converter(spark, s3_server: S3Server, s3_bucket: str) -> None:
    converter = make_spark_converter(
        spark.range(400).withColumn("v", F.array("id", "id")),
        cache_dir=f"s3://{s3_bucket}/tasks",
        storage_options=s3_server.storage_options,
    )
    blob = pickle.dumps(converter)
    assert s3_server.storage_options["secret_key"].encode() in blob  # they travel with it, on purpose

    def read_shard(index: int):
        clone = pickle.loads(blob)
        with clone.make_numpy_iterator(batch_size=50, num_epochs=1, cur_shard=index, shard_count=4) as batches:
            yield index, [int(i) for b in batches for i in b["id"]]

    shards = dict(
        spark.sparkContext.parallelize(range(4), 4).mapPartitionsWithIndex(lambda i, _: read_shard(i)).collect()
    )
    assert sorted(i for ids in shards.values() for i in ids) == list(range(400))
    manifest = s3_server.filesystem().open_input_stream(
        Location.parse(converter.cache_dir_url, options=s3_server.storage_options).path + "/_sparkfeed_manifest.json"
    )
    assert s3_server.storage_options["secret_key"].encode() not in manifest.read()  # never written down
    converter.delete()


def test_credentials_and_endpoint_from_the_environment_alone(spark, s3_server: S3Server, s3_bucket: str) -> None:
    with s3_server.use_env(spark):
        converter = make_spark_converter(spark.range(120), cache_dir=f"s3a://{s3_bucket}/env")
        assert _ids(converter) == list(range(120))
        blob = pickle.dumps(converter)
        assert s3_server.storage_options["secret_key"].encode() not in blob

        def read(index: int):  # self-contained: executors cannot import this test module
            with pickle.loads(blob).make_numpy_iterator(
                batch_size=64, num_epochs=1, cur_shard=index, shard_count=2
            ) as it:
                yield sum(int(b["id"].sum()) for b in it)

        assert sum(
            spark.sparkContext.parallelize(range(2), 2).mapPartitionsWithIndex(lambda i, _: read(i)).collect()
        ) == sum(range(120))
        converter.delete()


def test_a_server_stopped_mid_epoch_is_a_clear_error_within_a_bounded_time(tmp_path) -> None:
    with S3Server() as server:
        server.create_bucket("gone")
        fs = server.filesystem()
        table = pa.table({"id": np.arange(20_000)})
        pq.write_table(table, "gone/data/part.parquet", filesystem=fs, row_group_size=1_000)
        converter = make_spark_converter("s3://gone/data", storage_options=server.storage_options)
        before = threading.active_count()
        loader = converter.make_numpy_iterator(batch_size=500, num_epochs=1, workers_count=1, prefetch=1)
        iterator = iter(loader)
        next(iterator)
        server.stop()
        started = time.monotonic()
        with pytest.raises(OSError) as caught:
            for _ in iterator:
                pass
        assert time.monotonic() - started < 60
        assert "gone/data" in "".join(getattr(caught.value, "__notes__", [])) + str(caught.value)
        loader.close()
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before


def test_a_spark_connect_session_converts_to_s3_and_reads_in_tasks(
    s3_server: S3Server, s3_bucket: str, tmp_path
) -> None:
    cache = f"s3a://{s3_bucket}/connect"
    seen = run_job("spark_connect_job.py", cache, json.dumps(s3_server.storage_options), cwd=tmp_path)
    assert seen["rows"] == 1000 and seen["ids_sorted"] and seen["pairs_match"] and seen["reused"]
    assert seen["cache_dir_url"].startswith(cache + "/")
    assert sum(seen["shard_id_sums"]) == sum(range(1000)) and len(seen["shard_id_sums"]) == 4
    assert _keys(s3_server, f"{s3_bucket}/connect") == []  # delete() removed every object


class FlakyProxy:
    """A TCP proxy on 127.0.0.1 that drops its first ``fail`` connections unanswered, then forwards."""

    def __init__(self, target: str, fail: int) -> None:
        host, port = target.split(":")
        self._target = (host, int(port))
        self._left = fail
        self.dropped = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.endpoint = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._running = True
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self._running:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            head = self._admit(client)
            if head is None:
                self.dropped += 1
                client.close()  # a transient fault: the connection ends before any answer
                continue
            upstream = socket.create_connection(self._target, timeout=10)
            upstream.sendall(head)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _admit(self, client: socket.socket) -> bytes | None:
        """What of a new connection was read before forwarding it (nothing here); None drops it."""
        if self._left > 0:
            self._left -= 1
            return None
        return b""

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._running = False
        self._thread.join(5)
        self._listener.close()


def test_a_transient_fault_is_retried_and_the_epoch_completes(s3_server: S3Server, s3_bucket: str) -> None:
    table = pa.table({"id": np.arange(5_000)})
    pq.write_table(table, f"{s3_bucket}/flaky/part.parquet", filesystem=s3_server.filesystem(), row_group_size=1_000)
    proxy = FlakyProxy(s3_server.endpoint, fail=2)
    try:
        options = {**s3_server.storage_options, "endpoint_override": proxy.endpoint}
        converter = make_spark_converter(f"s3://{s3_bucket}/flaky", storage_options=options)
        assert _ids(converter) == list(range(5_000))
        assert proxy.dropped == 2
    finally:
        proxy.close()


@pytest.mark.parametrize("read_ahead", [0, None], ids=["row_group_alone", "read_ahead"])
def test_later_loaders_of_a_cache_ask_the_store_for_row_groups_only(
    spark, s3_server: S3Server, s3_bucket: str, read_ahead: int | None
) -> None:
    converter = make_spark_converter(
        spark.range(30_000, numPartitions=2),
        cache_dir=f"s3://{s3_bucket}/requests",
        storage_options=s3_server.storage_options,
        parquet_row_group_size_bytes=40_000,
    )
    row_groups = sum(len(entry.row_groups) for entry in converter.manifest.files)
    assert row_groups > 2 * len(converter.manifest.files)
    options = {"shuffle_row_groups": False, "read_ahead_bytes": read_ahead}
    assert _ids(converter, **options) == list(range(30_000))  # the first loader opens the files
    s3_server.start_recording()
    assert _ids(converter, **options) == list(range(30_000))
    seen = s3_server.requests()
    # No HEAD, no footer: one GET per row group, or with the default window one per file.
    assert seen.by_method == {"GET": row_groups if read_ahead == 0 else len(converter.manifest.files)}
    converter.delete()


def _row_group_dataset(s3_server: S3Server, prefix: str, groups: int, rows: int) -> tuple[str, int, pa.Table]:
    """One uncompressed file of ``groups`` equal row groups of random floats; its URL and a row group's bytes."""
    table = pa.table({"id": np.arange(groups * rows), "x": np.random.default_rng(0).random((groups * rows,))})
    key = f"{prefix}/data.parquet"
    pq.write_table(table, key, filesystem=s3_server.filesystem(), row_group_size=rows, compression="none")
    footer = pq.read_metadata(key, filesystem=s3_server.filesystem())
    return f"s3://{prefix}", max(footer.row_group(g).total_byte_size for g in range(groups)), table


def test_a_run_of_row_groups_arrives_in_requests_of_the_window(s3_server: S3Server, s3_bucket: str) -> None:
    url, group_bytes, table = _row_group_dataset(s3_server, f"{s3_bucket}/window", groups=12, rows=5_000)
    converter = make_spark_converter(url, storage_options=s3_server.storage_options)
    options = {"shuffle_row_groups": False, "workers_count": 1, "read_ahead_bytes": 4 * group_bytes + 1_000}
    assert _ids(converter, **options) == list(range(table.num_rows))
    s3_server.start_recording()
    with converter.make_numpy_iterator(batch_size=1_000, num_epochs=1, **options) as batches:
        got = concat(list(batches))
    # A dataset read in place is the user's: its footer is fetched again (HEAD, GET), then 12 / 4 spans.
    assert s3_server.requests().by_method == {"GET": 1 + 3, "HEAD": 1}
    assert np.array_equal(got["id"], table.column("id").to_numpy())
    assert np.array_equal(got["x"], table.column("x").to_numpy().astype(np.float32))  # the default dtype


def test_every_row_once_when_read_ahead_meets_shuffles_and_shards(s3_server: S3Server, s3_bucket: str) -> None:
    url, group_bytes, table = _row_group_dataset(s3_server, f"{s3_bucket}/mixed", groups=10, rows=2_000)
    converter = make_spark_converter(url, storage_options=s3_server.storage_options)
    window = {"read_ahead_bytes": 3 * group_bytes}
    every = list(range(table.num_rows))
    assert _ids(converter, seed=1, **window) == every
    assert _ids(converter, seed=1, shuffle_row_groups=False, shuffling_queue_capacity=4_000, **window) == every
    shards = [
        _ids(converter, cur_shard=k, shard_count=3, shard_policy="exact", shuffle_row_groups=False, **window)
        for k in range(3)
    ]
    assert sorted(i for shard in shards for i in shard) == every
    assert _ids(converter, reader_pool_type="process", shuffle_row_groups=False, **window) == every


def test_memory_stays_within_the_read_ahead_window(s3_server: S3Server, s3_bucket: str) -> None:
    url, group_bytes, table = _row_group_dataset(s3_server, f"{s3_bucket}/big", groups=24, rows=32_768)
    converter = make_spark_converter(url, storage_options=s3_server.storage_options)
    window = 3 * group_bytes  # the dataset is eight windows
    options = {"workers_count": 1, "prefetch": 2, "read_ahead_bytes": window, "shuffle_row_groups": False}
    s3_server.start_recording()
    baseline = pa.total_allocated_bytes()
    peak, rows = 0, 0
    with converter.make_numpy_iterator(batch_size=4096, num_epochs=1, **options) as batches:
        for batch in batches:
            rows += len(batch["id"])
            peak = max(peak, pa.total_allocated_bytes() - baseline)
    assert rows == table.num_rows
    assert s3_server.requests().by_method["GET"] < 24  # it did read ahead
    # The window, plus the prefetched row groups decoded (2) and the one being batched.
    assert peak <= window + 3 * group_bytes, (peak, window, group_bytes)
    assert peak < table.nbytes / 3, (peak, table.nbytes)


def test_files_of_a_dataset_read_in_place_are_not_shared_between_loaders(s3_server: S3Server, s3_bucket: str) -> None:
    fs = s3_server.filesystem()
    key = f"{s3_bucket}/rewritten/part-0.parquet"
    pq.write_table(pa.table({"id": np.arange(10)}), key, filesystem=fs)
    first = make_spark_converter(f"s3://{s3_bucket}/rewritten", storage_options=s3_server.storage_options)
    assert _ids(first) == list(range(10))
    pq.write_table(pa.table({"id": np.arange(100, 130)}), key, filesystem=fs)  # the user rewrites it in place
    again = make_spark_converter(f"s3://{s3_bucket}/rewritten", storage_options=s3_server.storage_options)
    assert _ids(again) == list(range(100, 130))


def test_filters_on_an_object_store_never_fetch_the_row_groups_they_rule_out(
    spark, s3_server: S3Server, s3_bucket: str
) -> None:
    options = s3_server.storage_options
    converter = make_spark_converter(
        spark.range(30_000, numPartitions=1),
        cache_dir=f"s3://{s3_bucket}/filtered",
        storage_options=options,
        parquet_row_group_size_bytes=40_000,
    )
    (entry,) = converter.manifest.files
    assert len(entry.row_groups) >= 4
    first = entry.row_groups[0]
    assert _ids(converter) == list(range(30_000))  # the first loader opens the file
    s3_server.start_recording()
    kwargs = {"filters": [("id", "<", first // 2)], "storage_options": options}  # Petastorm passed them per reader
    assert _ids(converter, **kwargs) == list(range(first // 2))
    seen = s3_server.requests()
    # One GET for the one row group that may match, and the footer the statistics come from: not the other groups.
    assert seen.gets <= 1 + 2 and seen.by_method.get("GET", 0) < len(entry.row_groups)
    with pytest.raises(ValueError, match=r"storage_options with keys \[.*\] differ from those of this converter's"):
        converter.make_numpy_iterator(storage_options={**options, "region": "elsewhere"})
    converter.delete()


def test_sharded_packed_sequences_on_s3_give_every_rank_the_same_batch_count(
    spark, s3_server: S3Server, s3_bucket: str
) -> None:
    # Every rank reads the packed column's lengths of every row group from the store, to count each shard's batches.
    tokens = "transform(sequence(0, CAST(pow(id % 23, 2) / 12 AS INT)), j -> CAST(id * 100 + j AS INT)) AS tok"
    df = spark.range(400, numPartitions=4).selectExpr("id", tokens)
    options = s3_server.storage_options
    converter = make_spark_converter(df, cache_dir=f"s3a://{s3_bucket}/packed", storage_options=options)
    loader_options = {"batch_size": 3, "seed": 1, "shard_count": 3, "schema_fields": ["tok"], "num_epochs": 2}
    loader_options["sequence"] = {"tok": Sequence("pack", seq_len=32)}
    counts = []
    for rank in range(3):
        with converter.make_numpy_iterator(cur_shard=rank, **loader_options) as loader:
            expected = len(loader)
            batches = [batch for batch in loader]
        assert len(batches) == expected > 0
        assert all(batch["tok"].shape == (3, 32) for batch in batches)
        counts.append(expected)
    assert len(set(counts)) == 1
    converter.delete()
