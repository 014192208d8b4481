"""Converters pickled into Spark tasks that read a cache on S3 (a real moto server on 127.0.0.1).

The tasks run in the Python workers of the tests' ``local[2]`` session, whose environment is
fixed when they start (see :mod:`s3server`): what a driver puts in ``os.environ`` later does not
reach them, as on a real cluster; one test runs a driver on a standalone cluster (real JVMs on
127.0.0.1), whose executors never see the driver's environment.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from sparkfeed import make_spark_converter
from sparkfeed.location import Location

from s3server import S3Server

pytestmark = pytest.mark.slow

Outcome = tuple[int, list[list[int]] | None, str | None]
"""What a task saw: its shard, the ids of each batch it read (None if it failed), and the error."""


def _keys(server: S3Server, prefix: str) -> list[str]:
    selector = pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
    return sorted(i.path for i in server.filesystem().get_file_info(selector) if i.type == pafs.FileType.File)


def _read_in_task(blob: bytes, shards: int, kwargs: dict[str, Any]) -> Callable[[int, Any], Iterator[Outcome]]:
    """A task that unpickles the converter and reads its shard; self-contained, executors cannot import tests."""

    def task(index: int, _: Any) -> Iterator[Outcome]:
        try:
            with pickle.loads(blob).make_numpy_iterator(cur_shard=index, shard_count=shards, **kwargs) as batches:
                yield index, [[int(i) for i in batch["id"]] for batch in batches], None
        except Exception as error:  # noqa: BLE001 - the driver asserts on it
            yield index, None, f"{type(error).__name__}: {error}"

    return task


def _in_tasks(spark: Any, converter: Any, shards: int, **kwargs: Any) -> list[Outcome]:
    """Each shard read by a Spark task of its own, through the converter pickled once here."""
    blob = pickle.dumps(converter)
    rdd = spark.sparkContext.parallelize(range(shards), shards)
    return sorted(rdd.mapPartitionsWithIndex(_read_in_task(blob, shards, kwargs)).collect())


def test_an_executor_without_the_drivers_endpoint_variable_is_told_so_at_once(
    spark, s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # AWS_ENDPOINT_URL in the driver's os.environ only (set after the session started, as in a
    # notebook): the tasks asked AWS's endpoint for the bucket and failed ~10 s later with
    # "Could not resolve host <bucket>.s3.us-east-1.amazonaws.com", naming no cause or fix.
    with s3_server.use_env(spark):  # written by tasks that have the credentials (see s3server's notes)
        converter = make_spark_converter(spark.range(100, numPartitions=2), cache_dir=f"s3://{s3_bucket}/env")
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)  # the driver's os.environ only
    blob = pickle.dumps(converter)
    assert s3_server.secret_key.encode() not in blob  # the endpoint travels as a hint, the secret does not

    outcomes = _in_tasks(spark, converter, 2, batch_size=50, num_epochs=1)
    for _, batches, error in outcomes:
        assert batches is None and error is not None
        assert error.startswith("ValueError: s3://") and f"reached it at {s3_server.url}" in error
        assert "spark.executorEnv.AWS_ENDPOINT_URL_S3" in error and "endpoint_override" in error

    with s3_server.use_env(spark):  # the variables given to the executors: read
        outcomes = _in_tasks(spark, converter, 2, batch_size=50, num_epochs=1, shard_policy="exact")
    assert [error for _, _, error in outcomes] == [None, None]
    assert sorted(i for _, batches, _ in outcomes for batch in batches or [] for i in batch) == list(range(100))
    with_endpoint = pickle.loads(blob)  # an endpoint in the options wins over the hint, and needs no variable
    with_endpoint.location.options.update(endpoint_override=s3_server.endpoint, scheme="http")
    outcomes = _in_tasks(spark, with_endpoint, 1, batch_size=50, num_epochs=1)
    assert outcomes[0][2] is None and sum(map(len, outcomes[0][1] or [])) == 100
    converter.delete()


def test_shards_read_in_tasks_from_s3_agree_on_batches_and_cover_every_row_once_per_epoch(
    spark, s3_server: S3Server, s3_bucket: str
) -> None:
    options = s3_server.storage_options
    df = spark.range(1_003, numPartitions=5)
    converter = make_spark_converter(
        df, cache_dir=f"s3://{s3_bucket}/shards", storage_options=options, parquet_row_group_size_bytes=2_000
    )
    assert sum(len(entry.row_groups) for entry in converter.manifest.files) >= 5  # shards cut across row groups
    shuffled = {"batch_size": 16, "num_epochs": 2, "shuffle_row_groups": True, "seed": 7}
    for policy in ("exact", "pad"):
        outcomes = _in_tasks(spark, converter, 3, shard_policy=policy, **shuffled)
        assert [error for _, _, error in outcomes] == [None] * 3, policy
        counts = {len(batches or []) for _, batches, _ in outcomes}
        assert len(counts) == 1, (policy, counts)  # the same number of batches on every rank
        ids = sorted(i for _, batches, _ in outcomes for batch in batches or [] for i in batch)
        if policy == "exact":
            assert ids == sorted(list(range(1_003)) * 2)  # every row once per epoch
        else:
            assert set(ids) == set(range(1_003)) and len(ids) == 3 * 2 * 335  # pad repeats rows to equal shards
    again = _in_tasks(spark, converter, 3, shard_policy="exact", **shuffled)
    assert again == _in_tasks(spark, converter, 3, shard_policy="exact", **shuffled)  # the seed's order, each time
    converter.delete()


def test_a_converter_pickled_before_its_cache_was_deleted_fails_in_tasks_naming_the_file(
    spark, s3_server: S3Server, s3_bucket: str
) -> None:
    options = s3_server.storage_options
    converter = make_spark_converter(
        spark.range(500, numPartitions=3), cache_dir=f"s3://{s3_bucket}/deleted", storage_options=options
    )
    blob = pickle.dumps(converter)
    converter.delete()  # as the driver's exit does (owned caches are deleted at exit)
    outcomes = _in_tasks(spark, pickle.loads(blob), 2, batch_size=50, num_epochs=1)
    for _, batches, error in outcomes:
        assert batches is None and error is not None
        assert error.startswith("FileNotFoundError:") and converter.cache_dir_url.removeprefix("s3://") in error
    with pytest.raises(RuntimeError, match="was deleted"):  # the driver's own converter says so at once
        converter.make_numpy_iterator()


def test_a_kept_s3_cache_reused_by_another_conversion_reads_in_tasks(
    spark, s3_server: S3Server, s3_bucket: str
) -> None:
    options = s3_server.storage_options
    df = spark.range(400, numPartitions=4)
    first = make_spark_converter(df, cache_dir=f"s3://{s3_bucket}/kept", storage_options=options, keep=True)
    reused = make_spark_converter(
        df, cache_dir=f"s3://{s3_bucket}/kept", storage_options=options, keep=True, reuse="auto"
    )
    assert reused.cache_dir_url == first.cache_dir_url
    outcomes = _in_tasks(spark, reused, 2, batch_size=32, num_epochs=1, shard_policy="exact")
    assert [error for _, _, error in outcomes] == [None, None]
    assert sorted(i for _, batches, _ in outcomes for batch in batches or [] for i in batch) == list(range(400))
    first.delete()


def test_the_endpoint_hint_is_the_environments_never_a_credential_and_passes_through_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "s3://bucket/cache"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://user:pa55@minio.example:9000")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    location = Location.parse(url, options={"region": "us-east-1"})
    blob = pickle.dumps(location)
    assert b"pa55" not in blob and pickle.loads(blob)._sender_endpoint == "https://minio.example:9000"
    named = Location.parse(url, options={"endpoint_override": "minio.example:9000", "scheme": "https"})
    assert named.filesystem is not None and pickle.loads(pickle.dumps(named))._sender_endpoint is None
    assert pickle.loads(pickle.dumps(Location.parse("/tmp/cache")))._sender_endpoint is None

    monkeypatch.delenv("AWS_ENDPOINT_URL")  # an executor without it, that pickles the location on
    passed_on = pickle.loads(pickle.dumps(pickle.loads(blob)))
    assert passed_on._sender_endpoint == "https://minio.example:9000"
    with pytest.raises(ValueError, match=r"reached it at https://minio.example:9000, named by AWS_ENDPOINT_URL_S3"):
        passed_on.child("part-0.parquet").filesystem  # noqa: B018 - making it is what refuses
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")  # its own endpoint: used, no refusal
    assert pickle.loads(blob).filesystem.__reduce__()[1][0]["endpoint_override"] == "127.0.0.1:9000"


def test_a_location_repr_hides_the_credentials_of_its_query() -> None:
    location = Location.parse("s3://bucket/cache?endpoint_override=127.0.0.1:9000&secret_key=s3cr3t&access_key=AK")
    assert "s3cr3t" not in repr(location) and "AK" not in repr(location)
    assert "secret_key=***" in repr(location) and "endpoint_override=127.0.0.1:9000" in repr(location)
    assert "s3cr3t" in location.url  # still there, where it reaches the data


def _replace(server: S3Server, converter: Any, file: int, first_id: int, rows: int) -> None:
    """Overwrites one of the cache's files with ``rows`` rows of ids from ``first_id``, in one row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = f"{Location.parse(converter.cache_dir_url).path}/{converter.manifest.files[file].path}"
    ids = pa.array(range(first_id, first_id + rows), pa.int64())
    pq.write_table(pa.table({"id": ids}), path, filesystem=server.filesystem())


def test_a_cache_file_changed_on_s3_after_pickling_is_refused_not_read_by_the_manifests_counts(
    spark, s3_server: S3Server, s3_bucket: str
) -> None:
    # A file replaced since the manifest was written was read by the manifest's row counts: a
    # row group of 70 rows instead of 100 gave an epoch of 270 rows, one of 130 was cut to 100,
    # in silence, and the shards' batch counts no longer agreed.
    options = s3_server.storage_options
    converter = make_spark_converter(
        spark.range(300, numPartitions=3), cache_dir=f"s3://{s3_bucket}/changed", storage_options=options
    )
    assert [entry.row_groups for entry in converter.manifest.files] == [(100,), (100,), (100,)]
    try:
        blob = pickle.dumps(converter)  # pickled before the change, as a job's tasks would hold it
        _replace(s3_server, converter, 1, 10_000, 70)
        _replace(s3_server, converter, 2, 20_000, 130)

        outcomes = _in_tasks(spark, pickle.loads(blob), 3, batch_size=50, num_epochs=1, shard_policy="exact")
        assert [batches for _, batches, _ in outcomes] == [[list(range(0, 50)), list(range(50, 100))], None, None]
        for _, _, error in outcomes[1:]:
            assert error is not None and error.startswith("ValueError: s3://") and "was changed since" in error
        with pytest.raises(ValueError, match=r"row groups hold \[70\] rows, but the manifest counts \[100\]"):
            with make_spark_converter(converter.cache_dir_url, storage_options=options).make_numpy_iterator(
                num_epochs=1, cur_shard=1, shard_count=3, shard_policy="exact"
            ) as batches:
                list(batches)
    finally:
        converter.delete()


def test_a_cache_file_rewritten_on_s3_with_the_same_row_groups_is_refused_not_served(
    spark, s3_server: S3Server, s3_bucket: str
) -> None:
    # Other rows in the same row-group layout (a person's or a tool's rewrite of the prefix):
    # served as the cache's rows, in silence.
    options = s3_server.storage_options
    converter = make_spark_converter(
        spark.range(200, numPartitions=2), cache_dir=f"s3://{s3_bucket}/rewritten", storage_options=options
    )
    try:
        blob = pickle.dumps(converter)
        _replace(s3_server, converter, 0, 10_000, converter.manifest.files[0].num_rows)
        outcomes = _in_tasks(spark, pickle.loads(blob), 1, batch_size=50, num_epochs=1)
        assert outcomes[0][1] is None and "was changed since" in (outcomes[0][2] or "")
    finally:
        converter.delete()


def test_credentials_in_a_urls_query_stay_out_of_the_converters_repr_warnings_and_errors(
    s3_server: S3Server, s3_bucket: str
) -> None:
    # A URL may carry its filesystem's options (?secret_key=...), and a converter's repr, its
    # delete() warning and the loader's storage_options error printed them into logs.
    import warnings

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [1, 2, 3]}), f"{s3_bucket}/data/part-0.parquet", filesystem=s3_server.filesystem())
    options = s3_server.storage_options
    query = "&".join(f"{name}={options[name]}" for name in ("endpoint_override", "scheme", "access_key", "secret_key"))
    converter = make_spark_converter(f"s3://{s3_bucket}/data?{query}")
    assert s3_server.secret_key in converter.cache_dir_url  # where it reaches the data
    shown = [repr(converter)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converter.delete()
    shown += [str(warning.message) for warning in caught]
    with pytest.raises(ValueError) as error:
        converter.make_numpy_iterator(storage_options={"region": "elsewhere"})
    shown.append(str(error.value))
    assert len(shown) == 3 and all("secret_key=***" in text for text in shown)
    assert not any(s3_server.secret_key in text for text in shown)


def test_executors_of_a_standalone_cluster_without_the_drivers_endpoint_are_told_then_read_exact_shards(
    standalone_master: str, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    # On a cluster the executors never see the driver's environment: only the worker's and
    # spark.executorEnv.* (the credentials here). Their reads asked AWS's endpoint and failed
    # ~10 s later with "Could not resolve host"; told now, and read once they have the variable.
    env = {**os.environ, **s3_server.env}
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("remote_s3_standalone_job.py")),
            standalone_master,
            f"s3://{s3_bucket}/standalone",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    for task in seen["without"]:
        assert task["ids"] == [] and task["endpoint"] == ""
        assert task["error"].startswith("ValueError: s3://") and f"reached it at {s3_server.url}" in task["error"]
    assert [task["error"] for task in seen["given"]] == [""] * 4
    assert {task["endpoint"] for task in seen["given"]} == {s3_server.url}
    assert sorted(i for task in seen["given"] for i in task["ids"]) == list(range(2_000))
    assert [len(task["ids"]) for task in seen["given"]] == [500] * 4
    assert _keys(s3_server, f"{s3_bucket}/standalone") == []  # delete() removed every object
