"""Caches on object storage as the first rule wants them: nothing that is not ours touched, no wrong row served.

Against a real S3-compatible server (moto) on 127.0.0.1, as ``tests/test_s3.py``.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import socket
import subprocess
import sys

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from sparkfeed import cache, make_spark_converter
from sparkfeed.location import Location
from test_reuse import PausedClean
from test_s3 import FlakyProxy

from s3server import S3Server

pytestmark = pytest.mark.slow


def _files(server: S3Server, prefix: str) -> list[str]:
    selector = pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
    return sorted(i.path for i in server.filesystem().get_file_info(selector) if i.type == pafs.FileType.File)


class CutProxy(FlakyProxy):
    """A TCP proxy that forwards the first ``deletes`` delete requests (and all others before), then none.

    moto answers each request on a connection of its own, so a connection's first line is its
    request: what a client sees of a process killed, or a network lost, midway through a delete.
    """

    def __init__(self, target: str, deletes: int) -> None:
        self._deletes = deletes
        super().__init__(target, 0)

    def _admit(self, client: socket.socket) -> bytes | None:
        head = client.recv(65536)
        if self._deletes <= 0:
            return None
        line = head.split(b"\r\n", 1)[0]
        if line.startswith(b"DELETE ") or (line.startswith(b"POST ") and b"?delete" in line):
            self._deletes -= 1
        return head


def test_a_delete_cut_short_on_s3_leaves_a_marked_incomplete_cache_never_bare_parquet(
    s3_server: S3Server, s3_bucket: str
) -> None:
    # More files than one listing page (1,000): pyarrow's delete_dir removed the first page, the
    # marker in it, first, and a cut there left the other files unmarked, read by URL as a dataset.
    options = s3_server.storage_options
    parent = Location.parse(f"s3://{s3_bucket}/caches", options=options)
    location, token = cache.create_cache_dir(parent)
    fs = s3_server.filesystem()
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": [1, 2]}), buffer)

    def put(index: int) -> None:
        with fs.open_output_stream(f"{location.path}/part-{index:05d}-c.parquet") as stream:
            stream.write(buffer.getvalue())

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(1_010)))
    with fs.open_output_stream(f"{location.path}/{cache.MANIFEST_NAME}") as stream:
        stream.write(b"{}")
    with fs.open_output_stream(f"{s3_bucket}/caches/user.txt") as stream:
        stream.write(b"the user's")

    proxy = CutProxy(s3_server.endpoint, deletes=2)  # the manifest's, then one more
    try:
        retry = pafs.AwsStandardS3RetryStrategy(max_attempts=1)
        cut = Location.parse(
            location.url, options={**options, "endpoint_override": proxy.endpoint, "retry_strategy": retry}
        )
        with pytest.raises(OSError):
            cache.delete_cache(cut, token)
    finally:
        proxy.close()

    left = _files(s3_server, location.path)
    assert f"{location.path}/{cache.MARKER_NAME}" in left  # still ours, and known as ours
    assert f"{location.path}/{cache.MANIFEST_NAME}" not in left
    assert any(name.endswith(".parquet") for name in left)
    (entry,) = cache.scan(parent)
    assert entry.location == location and entry.state == "partial"
    with pytest.raises(cache.IncompleteCacheError):
        make_spark_converter(location.url, storage_options=options)

    cache.delete_cache(location, token)  # a later delete finishes it
    assert _files(s3_server, f"{s3_bucket}/caches") == [f"{s3_bucket}/caches/user.txt"]


def test_reuse_auto_passes_over_a_kept_s3_cache_whose_files_are_gone(
    spark, s3_server: S3Server, s3_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A file of a kept cache removed since (a lifecycle rule, a person): it was served, and every
    # job that reused it failed with FileNotFoundError when its epoch reached that file.
    from sparkfeed.materialize import registry

    options = s3_server.storage_options
    parent = f"s3a://{s3_bucket}/kept"
    df = spark.range(1_000, numPartitions=4)
    first = make_spark_converter(df, cache_dir=parent, storage_options=options, keep=True, reuse="auto")
    location = Location.parse(first.cache_dir_url, options=options)
    key = cache._read_marker(location)["key"]
    assert key and cache.find_kept(Location.parse(parent, options=options), key) is not None
    s3_server.filesystem().delete_file(f"{location.path}/{first.manifest.files[2].path}")

    with caplog.at_level("WARNING", logger="sparkfeed.cache"):
        assert cache.find_kept(Location.parse(parent, options=options), key) is None
    assert "1 of the files its manifest lists are gone" in caplog.text and first.manifest.files[2].path in caplog.text

    registry.forget(location)  # as a later process, which knows only what it finds under the parent
    again = make_spark_converter(df, cache_dir=parent, storage_options=options, keep=True, reuse="auto")
    assert again.cache_dir_url != first.cache_dir_url
    with again.make_numpy_iterator(batch_size=128, num_epochs=1) as batches:
        assert sorted(int(i) for batch in batches for i in batch["id"]) == list(range(1_000))
    for converter in (again, first):
        converter.delete()


def test_the_remains_of_a_cache_without_marker_or_manifest_are_refused_by_url_not_read_as_parquet(
    s3_server: S3Server, s3_bucket: str
) -> None:
    # What a delete cut short by an earlier sparkfeed, or a lifecycle rule, leaves: part files alone,
    # which opening the URL read as the user's Parquet dataset, a part of the rows in silence.
    fs = s3_server.filesystem()
    table = pa.table({"id": list(range(10))})
    remains = f"{s3_bucket}/caches/sparkfeed-20260101T000000-0123456789ab"
    for prefix in (remains, f"{s3_bucket}/mine"):
        pq.write_table(table, f"{prefix}/part-00001-c.parquet", filesystem=fs)
    options = s3_server.storage_options
    with pytest.raises(cache.IncompleteCacheError, match="neither its marker"):
        make_spark_converter(f"s3://{remains}", storage_options=options)
    assert len(_files(s3_server, remains)) == 1  # not ours to remove
    mine = make_spark_converter(f"s3://{s3_bucket}/mine", storage_options=options)  # the user's, named as they like
    assert mine.manifest.num_rows == 10
    with pytest.raises(FileNotFoundError):  # nothing there: as before
        make_spark_converter(f"s3://{s3_bucket}/caches/sparkfeed-20260101T000000-ffffffffffff", storage_options=options)


def test_a_cache_on_s3_is_deleted_when_its_process_exits(s3_server: S3Server, s3_bucket: str, tmp_path) -> None:
    # The files are deleted in threads: at exit (atexit), a ThreadPoolExecutor refuses new work,
    # and the cache was left behind with a warning.
    script = tmp_path / "exits.py"
    script.write_text(
        "import json, sys\n"
        "from sparkfeed import cache\n"
        "from sparkfeed.location import Location\n"
        "parent = Location.parse(sys.argv[1], options=json.loads(sys.argv[2]))\n"
        "location, token = cache.create_cache_dir(parent)\n"
        "for index in range(40):\n"
        "    with location.filesystem.open_output_stream(f'{location.path}/part-{index:05d}.parquet') as stream:\n"
        "        stream.write(b'rows')\n"
        "cache.owned_caches.add(location, token)\n"
        "print(location.url)\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-W",
            "error::UserWarning",
            str(script),
            f"s3://{s3_bucket}/exits",
            json.dumps(s3_server.storage_options),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "could not delete" not in done.stderr
    assert done.stdout.strip().startswith(f"s3://{s3_bucket}/exits/sparkfeed-")
    assert _files(s3_server, f"{s3_bucket}/exits") == []


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_cache_dir_inside_a_cache_is_refused_since_removing_that_cache_would_remove_the_new_one(
    spark, s3_server: S3Server, s3_bucket: str, tmp_path, where: str
) -> None:
    # cache_dir=converter.cache_dir_url nested the new cache in the first; `cache rm` of the
    # first (an orphan, no --force needed) then removed the new one while its process read it.
    options = s3_server.storage_options if where == "s3" else None
    parent = f"s3a://{s3_bucket}/nest" if where == "s3" else str(tmp_path)
    outer = make_spark_converter(spark.range(10), cache_dir=parent, storage_options=options)
    for inside in (outer.cache_dir_url, f"{outer.cache_dir_url}/sub"):
        with pytest.raises(ValueError, match=r"(is|is inside) the sparkfeed cache \S+/sparkfeed-"):
            make_spark_converter(spark.range(20), cache_dir=inside, storage_options=options)
    location = Location.parse(outer.cache_dir_url, options=options)
    assert cache.scan(location) == []
    listed = location.filesystem.get_file_info(pafs.FileSelector(location.path, recursive=True))
    assert not [info.path for info in listed if "sparkfeed-" in info.path.removeprefix(location.path)]
    outer.delete()


def test_a_cache_opened_by_url_whose_files_are_not_all_there_is_refused_when_opened(
    spark, s3_server: S3Server, s3_bucket: str
) -> None:
    # A copy that brought the manifest first (aws s3 sync has no order) and not yet every file, or
    # a file removed since: it opened, counted every row, and failed when an epoch reached the gap.
    options = s3_server.storage_options
    converter = make_spark_converter(
        spark.range(400, numPartitions=4), cache_dir=f"s3a://{s3_bucket}/copy", storage_options=options
    )
    location = Location.parse(converter.cache_dir_url, options=options)
    assert make_spark_converter(converter.cache_dir_url, storage_options=options).manifest.num_rows == 400
    gone = converter.manifest.files[3].path
    s3_server.filesystem().delete_file(f"{location.path}/{gone}")
    with pytest.raises(cache.IncompleteCacheError, match=rf"1 of the 4 files .* such as '{gone}'"):
        make_spark_converter(converter.cache_dir_url, storage_options=options)
    converter.delete()


@pytest.mark.parametrize("named", ["../../private/secret.parquet", "/bucket/private/secret.parquet", "a//b.parquet"])
def test_a_manifest_naming_a_file_outside_its_cache_is_corrupt(s3_server: S3Server, s3_bucket: str, named: str) -> None:
    # A manifest planted in a shared prefix (or damaged) named the user's file elsewhere, whose rows were served.
    fs = s3_server.filesystem()
    options = s3_server.storage_options
    pq.write_table(pa.table({"id": [100, 101]}), f"{s3_bucket}/private/secret.parquet", filesystem=fs)
    location, _ = cache.create_cache_dir(Location.parse(f"s3://{s3_bucket}/c", options=options))
    manifest = cache.Manifest(
        files=(cache.FileEntry(named, (2,)),), schema=pa.schema([("id", pa.int64())]), shapes={}, options={}
    )
    with fs.open_output_stream(f"{location.path}/{cache.MANIFEST_NAME}") as stream:
        stream.write(manifest.to_json().encode())
    with pytest.raises(cache.CorruptManifestError, match="not a path inside the cache"):
        make_spark_converter(location.url, storage_options=options)
    assert [entry.state for entry in cache.scan(Location.parse(f"s3://{s3_bucket}/c", options=options))] == ["corrupt"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_cache_dir_holding_a_dataset_is_refused_since_the_dataset_would_read_the_cache_as_its_rows(
    spark, s3_server: S3Server, s3_bucket: str, tmp_path, where: str
) -> None:
    # cache_dir set to the DataFrame's own source: opening that dataset by path read 20 rows, not 10.
    options = s3_server.storage_options if where == "s3" else None
    data = f"s3a://{s3_bucket}/data" if where == "s3" else str(tmp_path / "data")
    location = Location.parse(data, options=options)
    location.filesystem.create_dir(location.path, recursive=True)
    pq.write_table(pa.table({"id": list(range(10))}), f"{location.path}/part-0.parquet", filesystem=location.filesystem)
    with pytest.raises(ValueError, match=r"holds a dataset's files \(such as 'part-0.parquet'\)"):
        make_spark_converter(spark.range(10), cache_dir=data, storage_options=options)
    assert make_spark_converter(data, storage_options=options).manifest.num_rows == 10
    beside = make_spark_converter(spark.range(10), cache_dir=location.parent.url, storage_options=options)
    assert make_spark_converter(data, storage_options=options).manifest.num_rows == 10
    beside.delete()


def test_a_cache_holding_a_running_processs_cache_is_neither_removed_nor_cleaned(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What sparkfeed made before it refused a cache_dir inside a cache: removing the outer cache
    # (an orphan, so no --force was needed) removed the inner one, while its process read it.
    options = s3_server.storage_options
    parent = Location.parse(f"s3://{s3_bucket}/nested", options=options)
    outer, _ = cache.create_cache_dir(parent)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    marker = cache._read_marker(outer)
    marker["owner"]["pid"] = int(gone.stdout)
    with s3_server.filesystem().open_output_stream(f"{outer.path}/{cache.MARKER_NAME}") as stream:
        stream.write(json.dumps(marker).encode())
    monkeypatch.setattr(cache, "_cache_holding", lambda parent: None)  # as the older sparkfeed did
    inner, inner_token = cache.create_cache_dir(outer)  # this process's, running
    monkeypatch.undo()
    assert [entry.location for entry in cache.scan(parent) if entry.orphaned] == [outer]

    with pytest.raises(PermissionError, match=r"holds the sparkfeed cache .*which a process that may still run"):
        cache.remove(outer)
    assert cache.collect(parent) == []
    assert cache._read_marker(inner) is not None
    cache.delete_cache(inner, inner_token)
    assert cache.remove(outer).location == outer  # once the inner cache is gone
    assert _files(s3_server, f"{s3_bucket}/nested") == []


def _kept_by_a_process_gone(s3_server: S3Server, parent: str) -> Location:
    """A complete kept cache of 10 rows under ``parent``, for the key ``k``, made by a process that has ended."""
    script = (
        "import json, sys\n"
        "import pyarrow as pa, pyarrow.parquet as pq\n"
        "from sparkfeed import cache\n"
        "from sparkfeed.location import Location\n"
        "parent = Location.parse(sys.argv[1], options=json.loads(sys.argv[2]))\n"
        "location, token = cache.create_cache_dir(parent, key='k', keep=True)\n"
        "table = pa.table({'id': list(range(10))})\n"
        "pq.write_table(table, f'{location.path}/part-0.parquet', filesystem=location.filesystem)\n"
        "files = (cache.FileEntry('part-0.parquet', (10,)),)\n"
        "cache.write_manifest(location, cache.Manifest(files, table.schema, {}, {}, key='k'))\n"
        "print(location.url)\n"
    )
    options = s3_server.storage_options
    done = subprocess.run(
        [sys.executable, "-c", script, parent, json.dumps(options)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return Location.parse(done.stdout.strip(), options=options)


def _clean(s3_server: S3Server, parent: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "sparkfeed", "cache", "clean", "--older-than", "0s", parent],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **s3_server.env},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_kept_s3_cache_clean_removes_before_its_reuse_is_recorded_is_not_handed_out(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found complete, then removed by `cache clean --older-than` before the reuse was recorded:
    # the reuse was handed a cache that was gone, and its records stayed alone in the prefix.
    url = f"s3://{s3_bucket}/found"
    _kept_by_a_process_gone(s3_server, url)
    real, cleaned = cache.mark_used, []

    def paused(location: Location) -> None:  # a pause: the real record is written after the clean
        if not cleaned:
            cleaned.append(_clean(s3_server, url))
        real(location)

    monkeypatch.setattr(cache, "mark_used", paused)
    assert cache.find_kept(Location.parse(url, options=s3_server.storage_options), "k") is None
    assert "removed 1 caches" in cleaned[0]
    assert _files(s3_server, f"{s3_bucket}/found") == []


def test_a_kept_s3_cache_clean_has_begun_to_remove_is_not_handed_out(
    s3_server: S3Server, s3_bucket: str, tmp_path
) -> None:
    # The clean's last look at the reusers was done, its delete about to start, when the reuse found it.
    url = f"s3://{s3_bucket}/begun"
    _kept_by_a_process_gone(s3_server, url)
    parent = Location.parse(url, options=s3_server.storage_options)
    clean = PausedClean("delete_cache", tmp_path / "flags", "--older-than", "0s", url, env=s3_server.env)
    with clean:
        found = cache.find_kept(parent, "k")
    assert "removed 1 caches" in clean.output
    assert found is None  # before the fix: found, and its files deleted right after
    assert _files(s3_server, f"{s3_bucket}/begun") == []


def test_a_kept_s3_cache_reused_while_clean_decides_keeps_its_manifest(
    s3_server: S3Server, s3_bucket: str, tmp_path
) -> None:
    url = f"s3://{s3_bucket}/decides"
    location = _kept_by_a_process_gone(s3_server, url)
    parent = Location.parse(url, options=s3_server.storage_options)
    clean = PausedClean("_withdraw", tmp_path / "flags", "--older-than", "0s", url, env=s3_server.env)
    with clean:
        found = cache.find_kept(parent, "k")
        assert found is not None and found[0].location == location
    assert "removed 0 caches" in clean.output
    (entry,) = cache.scan(parent)
    assert entry.state == "complete" and entry.in_use and entry.withdrawn_by is None
    assert cache.read_manifest(location) == found[1]
    assert f"{location.path}/{cache.WITHDRAWN_NAME}" not in _files(s3_server, location.path)
