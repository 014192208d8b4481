"""Cache location, completeness, reuse, staleness and deletion, on real Spark writes."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

import sparkfeed.materialize
from sparkfeed import SparkDatasetConverter, make_spark_converter, register_delete_dir_handler
from sparkfeed.cache import (
    MANIFEST_NAME,
    MARKER_NAME,
    USED_NAME,
    CorruptManifestError,
    FileEntry,
    IncompleteCacheError,
    Manifest,
    NotOursError,
    UnsupportedManifestError,
    collect,
    create_cache_dir,
    delete_cache,
    find_kept,
    mark_used,
    private_dir,
    read_manifest,
    remove,
    resolve_cache_dir,
    scan,
    write_manifest,
)
from sparkfeed.location import Location
from sparkfeed.owner import Liveness, Owner, _boot_id, _pid_namespace, start_time

from helpers import by_id, concat


def _ids(converter) -> list[int]:
    with converter.make_numpy_iterator(batch_size=100, num_epochs=1) as batches:
        return sorted(concat(batches)["id"].tolist())


def _local(url: str) -> Path:
    return Path(Location.parse(url).local_path)


def to_url(path: str) -> str:
    return Location.parse(path).url


def test_cache_dir_resolution_order(monkeypatch, tmp_path) -> None:
    conf = {"sparkfeed.cacheDir": "/a", "petastorm.spark.converter.parentCacheDirUrl": "file:///b"}
    monkeypatch.setenv("SPARKFEED_CACHE_DIR", "/c")
    assert resolve_cache_dir("s3://bucket/x/", conf.get).url == "s3://bucket/x"
    assert resolve_cache_dir(None, conf.get).url == "file:///a"
    conf.pop("sparkfeed.cacheDir")
    assert resolve_cache_dir(None, conf.get).url == "file:///b"
    assert resolve_cache_dir(None, {}.get).url == "file:///c"
    monkeypatch.delenv("SPARKFEED_CACHE_DIR")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert resolve_cache_dir(None, None).url == (tmp_path / f"sparkfeed-{os.getuid()}").as_uri()
    assert to_url("relative/dir") == "file://" + os.path.abspath("relative/dir")


def test_cache_lands_in_conf_dir_with_manifest(spark, cache_root) -> None:
    converter = make_spark_converter(spark.range(50))
    directory = _local(converter.cache_dir_url)
    assert directory.parent == cache_root
    assert (directory / MANIFEST_NAME).is_file()
    assert all(_local(url).is_file() for url in converter.file_urls)
    assert converter.dataset_size == len(converter) == 50
    manifest = read_manifest(converter.location)
    assert manifest is not None and manifest.num_rows == 50
    assert manifest.created_by["pid"] == os.getpid()
    assert manifest.created_by["spark_app_id"] == spark.sparkContext.applicationId


def test_explicit_cache_dir_and_options_are_recorded(spark, tmp_path) -> None:
    converter = make_spark_converter(
        spark.range(2000).select("id", (F.col("id") * 2.0).alias("x")),
        cache_dir=str(tmp_path),
        compression_codec="zstd",
        parquet_row_group_size_bytes=4096,
    )
    assert _local(converter.cache_dir_url).parent == tmp_path
    metadata = pq.read_metadata(_local(converter.file_urls[0]))
    assert metadata.row_group(0).column(0).compression == "ZSTD"
    assert sum(len(entry.row_groups) for entry in converter.manifest.files) > 2  # small row groups
    assert converter.manifest.options == {
        "row_group_size_bytes": 4096,
        "compression_codec": "zstd",
        "dtype": "float32",
    }


def test_same_dataframe_reuses_cache_other_options_do_not(spark) -> None:
    df = spark.range(30).withColumn("x", F.col("id") * 1.5)
    first = make_spark_converter(df)
    assert make_spark_converter(df).cache_dir_url == first.cache_dir_url
    again = spark.range(30).withColumn("x", F.col("id") * 1.5)  # a new but identical DataFrame
    assert make_spark_converter(again).cache_dir_url == first.cache_dir_url
    assert make_spark_converter(df, dtype="float64").cache_dir_url != first.cache_dir_url
    assert make_spark_converter(df, compression_codec="snappy").cache_dir_url != first.cache_dir_url


def test_in_memory_dataframes_with_different_data_get_different_caches(spark) -> None:
    one = make_spark_converter(spark.createDataFrame([(1,), (2,)], "id long"))
    two = make_spark_converter(spark.createDataFrame([(3,), (4,)], "id long"))
    assert one.cache_dir_url != two.cache_dir_url
    assert _ids(two) == [3, 4]


def test_rewritten_source_files_are_not_served_stale(spark, tmp_path) -> None:
    source = str(tmp_path / "source")
    spark.range(10).write.parquet(source)
    old_df = spark.read.parquet(source)
    old = make_spark_converter(old_df)
    spark.range(100, 105).write.mode("overwrite").parquet(source)
    new_df = spark.read.parquet(source)
    # The trap Petastorm fell into: the plans alone say "same result".
    assert old_df._jdf.queryExecution().analyzed().sameResult(new_df._jdf.queryExecution().analyzed())
    new = make_spark_converter(new_df)
    assert new.cache_dir_url != old.cache_dir_url
    assert _ids(new) == list(range(100, 105))


def test_delete_removes_directory_and_forgets_the_entry(spark) -> None:
    df = spark.range(7)
    converter = make_spark_converter(df)
    directory = _local(converter.cache_dir_url)
    converter.delete()
    assert not directory.exists()
    with pytest.raises(RuntimeError, match="was deleted"):
        converter.make_numpy_iterator()
    fresh = make_spark_converter(df)
    assert fresh.cache_dir_url != converter.cache_dir_url
    assert _ids(fresh) == list(range(7))


def test_cache_deleted_behind_our_back_is_written_again(spark) -> None:
    df = spark.range(9)
    converter = make_spark_converter(df)
    (_local(converter.cache_dir_url) / MANIFEST_NAME).unlink()
    again = make_spark_converter(df)
    assert again.cache_dir_url != converter.cache_dir_url
    assert _ids(again) == list(range(9))


@pytest.mark.parametrize("with_array", [False, True], ids=["spark-writer", "task-writer"])
def test_failed_write_leaves_no_cache(spark, tmp_path, with_array: bool) -> None:
    @F.udf("double")
    def explode(x):
        if x == 13:
            raise RuntimeError("bad row")
        return float(x)

    df = spark.range(20).select("id", explode("id").alias("x"))
    if with_array:
        df = df.withColumn("pair", F.array("x", "x"))
    with pytest.raises(Exception, match="bad row"):
        make_spark_converter(df, cache_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_interrupt_before_manifest_leaves_no_cache(spark, tmp_path, monkeypatch) -> None:
    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(sparkfeed.materialize, "write_manifest", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_spark_converter(spark.range(11), cache_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert _ids(make_spark_converter(spark.range(11), cache_dir=str(tmp_path))) == list(range(11))


@pytest.mark.parametrize("with_array", [False, True], ids=["spark-writer", "task-writer"])
def test_a_local_caches_files_reach_the_disk_before_its_manifest_is_published(
    spark, tmp_path, monkeypatch, with_array: bool
) -> None:
    # After a power loss, a manifest on the disk over data left in the page cache would be a
    # complete cache to every later look. Each fsync is recorded with whether the manifest was there.
    real_fsync = os.fsync
    synced: list[tuple[str, bool]] = []
    caches = tmp_path / "caches"

    def recording(descriptor: int) -> None:
        path = os.readlink(f"/proc/self/fd/{descriptor}")
        if path.startswith(str(caches)):
            published = any(caches.glob(f"*/{MANIFEST_NAME}"))
            synced.append((path, published))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording)
    df = spark.range(0, 50, 1, 3).withColumn("x", F.col("id") * 0.5)
    if with_array:
        df = df.withColumn("pair", F.array("x", "x"))
    converter = make_spark_converter(df, cache_dir=caches.as_uri())
    monkeypatch.undo()
    root = _local(converter.cache_dir_url)
    files = {str(root / entry.path) for entry in read_manifest(Location.parse(root)).files}
    assert len(files) >= 2
    before = {path for path, published in synced if not published}
    assert files | {str(root), str(caches)} <= before  # the data, its names and the cache's name first
    staged = [path for path in before if Path(path).name.startswith(f".{MANIFEST_NAME}.")]
    assert len(staged) == 1 and synced[-1] == (str(root), True)  # the manifest, then its rename
    assert sorted(_ids(converter)) == list(range(50))


def test_a_filesystem_without_fsync_still_converts_and_an_fsync_that_lost_data_fails_the_conversion(
    spark, tmp_path, monkeypatch
) -> None:
    # Some FUSE and network mounts answer EINVAL to fsync (of a directory, mostly): no guarantee
    # to wait for. EIO says written data did not reach the disk: no manifest may follow.
    def failing(code: int):
        def fsync(descriptor: int) -> None:
            raise OSError(code, os.strerror(code))

        return fsync

    monkeypatch.setattr(os, "fsync", failing(errno.EINVAL))
    converter = make_spark_converter(spark.range(7), cache_dir=(tmp_path / "fuse").as_uri())
    monkeypatch.undo()
    assert sorted(_ids(converter)) == list(range(7))
    monkeypatch.setattr(os, "fsync", failing(errno.EIO))
    with pytest.raises(OSError, match="Input/output error"):
        make_spark_converter(spark.range(8), cache_dir=(tmp_path / "failing").as_uri())
    monkeypatch.undo()
    assert list((tmp_path / "failing").iterdir()) == []


def test_directory_without_manifest_is_not_a_cache(spark, tmp_path) -> None:
    spark.range(3).write.parquet(str(tmp_path / "half"))
    assert read_manifest(Location.parse(tmp_path / "half")) is None


def _partial_cache(parent: Path) -> Location:
    """A cache whose write is under way or was cut short: marker, one part file, no manifest."""
    location, _ = create_cache_dir(Location.parse(str(parent)))
    pq.write_table(pa.table({"id": list(range(10))}), Path(location.local_path) / "part-00000.parquet")
    return location


def test_a_partial_cache_opened_by_path_is_refused(tmp_path) -> None:
    location = _partial_cache(tmp_path)
    with pytest.raises(IncompleteCacheError, match=r"incomplete sparkfeed cache .* no manifest") as caught:
        make_spark_converter(location.url)
    assert location.url in str(caught.value) and "still runs" in str(caught.value)


def test_unreadable_url_is_refused_before_spark_runs(spark) -> None:
    with pytest.raises(ValueError, match=r"pyarrow has no filesystem for 'nosuchfs'"):
        make_spark_converter(spark.range(3), cache_dir="nosuchfs://bucket/cache")


def test_existing_parquet_path_is_read_in_place_and_never_deleted(tmp_path) -> None:
    path = tmp_path / "data.parquet"
    table = pa.table(
        {
            "id": pa.array(range(20), pa.int64()),
            "x": pa.array(np.arange(20) / 4, pa.float64()),
            "img": pa.array([[i] * 6 for i in range(20)], pa.list_(pa.float64(), 6)),
        }
    )
    pq.write_table(table, path, row_group_size=6)
    converter = make_spark_converter(str(path))
    assert converter.dataset_size == 20 and converter.cache_dir_url == to_url(str(tmp_path))
    with converter.make_numpy_iterator(batch_size=8, num_epochs=1) as batches:
        got = by_id(concat(batches))
    assert got["x"].dtype == np.float32 and got["img"].shape == (20, 6)
    np.testing.assert_array_equal(got["x"], np.arange(20) / 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converter.delete()
    assert "did not create it" in str(caught[0].message)
    assert path.exists()
    directory = make_spark_converter(tmp_path, dtype=None)
    assert directory.dataset_size == 20
    with pytest.raises(FileNotFoundError):
        make_spark_converter(str(tmp_path / "missing"))


def test_options_that_cannot_apply_to_a_dataset_opened_by_path_are_refused_naming_them(tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"id": [1, 2, 3], "x": [0.5, 1.5, 2.5]}), data / "part-0.parquet")
    refused = {
        "parquet_row_group_size_bytes=1024": {"parquet_row_group_size_bytes": 1024},
        "compression_codec='zstd'": {"compression_codec": "zstd"},
        "cache_dir=": {"cache_dir": str(tmp_path / "caches")},
        "reuse='auto'": {"reuse": "auto"},
        "progress=True": {"progress": True},
    }
    for name, given in refused.items():
        with pytest.raises(ValueError, match=re.escape(name)) as caught:
            make_spark_converter(str(data), **given)
        assert "opened by path" in str(caught.value) and "read in place" in str(caught.value)
    with pytest.raises(ValueError, match=r"parquet_row_group_size_bytes=1024, compression_codec='zstd' cannot apply"):
        make_spark_converter(str(data), parquet_row_group_size_bytes=1024, compression_codec="zstd")
    # What does apply: dtype to plain Parquet, and keep (a dataset opened by path is never deleted anyway).
    with make_spark_converter(data, dtype="float64", keep=True).make_numpy_iterator(num_epochs=1) as batches:
        assert concat(batches)["x"].dtype == np.float64
    location, _ = _complete_cache(tmp_path / "caches")  # its manifest records dtype='float32'
    for dtype in ("float64", None):
        with pytest.raises(ValueError, match=rf"dtype={dtype!r} cannot apply .* written with dtype='float32'"):
            make_spark_converter(location.url, dtype=dtype)
    assert len(make_spark_converter(location.url)) == len(make_spark_converter(location.url, dtype="float32")) == 30


ATEXIT_SCRIPT = textwrap.dedent(
    """
    import sys
    from pyspark.sql import SparkSession
    from sparkfeed import make_spark_converter
    spark = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
    kept = make_spark_converter(sys.argv[2])
    converter = make_spark_converter(spark.range(5), cache_dir=sys.argv[1])
    print(converter.cache_dir_url, flush=True)
    """
)


def _run_to_exit(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs a script in a Python process of its own, to its exit (and its exit-time cleanup)."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYSPARK_PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_caches_are_deleted_at_interpreter_exit(tmp_path) -> None:
    user_data = tmp_path / "user.parquet"
    pq.write_table(pa.table({"id": [1, 2]}), user_data)
    cache = tmp_path / "#my cache%"  # exit-time cleanup goes through the same location layer
    done = _run_to_exit(ATEXIT_SCRIPT, str(cache), str(user_data))
    url = done.stdout.strip().splitlines()[-1]
    assert url.startswith(to_url(str(cache)))
    assert cache.is_dir() and list(cache.iterdir()) == []
    assert user_data.exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted([cache.name, user_data.name])
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- never touch what is not ours

AWKWARD_DIRS = ["#cache", "q?cache", "sp ace", "é", "50%off"]


@pytest.mark.parametrize("with_array", [False, True], ids=["spark-writer", "task-writer"])
@pytest.mark.parametrize("name", AWKWARD_DIRS)
def test_awkward_cache_dir_is_used_exactly_and_delete_spares_its_neighbours(
    spark, tmp_path, name: str, with_array: bool
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    precious = home / "precious.txt"
    precious.write_text("the user's")
    df = (
        spark.range(30).withColumn("pair", F.array(F.col("id") * 1.0, F.col("id") * 2.0))
        if with_array
        else spark.range(30)
    )
    converter = make_spark_converter(df, cache_dir=str(home / name))
    directory = _local(converter.cache_dir_url)
    assert directory.parent == home / name  # not the parent, not the cwd, not "%25"-doubled
    assert _ids(converter) == list(range(30))
    converter.delete()
    assert not directory.exists()
    assert precious.read_text() == "the user's"
    assert sorted(p.name for p in home.iterdir()) == sorted([name, "precious.txt"])
    assert list((home / name).iterdir()) == []  # nothing of Spark's left behind


@pytest.mark.parametrize("scheme", ["file:", "file://"])
def test_one_slash_and_three_slash_file_urls_land_where_they_say(spark, tmp_path, monkeypatch, scheme: str) -> None:
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "elsewhere" / "cache"
    converter = make_spark_converter(spark.range(4), cache_dir=scheme + str(target))
    assert _local(converter.cache_dir_url).parent == target
    assert not (tmp_path / "file:").exists()
    converter.delete()


def test_delete_refuses_a_directory_without_our_marker(spark, tmp_path) -> None:
    converter = make_spark_converter(spark.range(5), cache_dir=str(tmp_path))
    directory = _local(converter.cache_dir_url)
    (directory / MARKER_NAME).unlink()
    with pytest.raises(NotOursError, match="does not hold the marker"):
        converter.delete()
    assert directory.is_dir() and any(directory.glob("*.parquet"))


def _user_data_and_a_cache(spark, tmp_path: Path) -> tuple[Path, SparkDatasetConverter, Path]:
    user = tmp_path / "user-data"
    user.mkdir()
    (user / "keep.txt").write_text("x")
    converter = make_spark_converter(spark.range(5), cache_dir=str(tmp_path / "caches"))
    return user, converter, _local(converter.cache_dir_url)


def test_delete_never_follows_a_symlink_out_of_the_cache(spark, tmp_path) -> None:
    user, converter, directory = _user_data_and_a_cache(spark, tmp_path)
    (directory / "link").symlink_to(user, target_is_directory=True)
    converter.delete()
    assert not directory.exists() and (user / "keep.txt").read_text() == "x"


def test_delete_refuses_a_cache_directory_replaced_by_a_symlink(spark, tmp_path) -> None:
    user, converter, directory = _user_data_and_a_cache(spark, tmp_path)
    for item in directory.iterdir():  # the user's directory even gets a copy of our marker
        if item.name == MARKER_NAME:
            (user / MARKER_NAME).write_bytes(item.read_bytes())
    shutil.rmtree(directory)
    directory.symlink_to(user, target_is_directory=True)
    with pytest.raises(NotOursError, match="symbolic link"):
        converter.delete()
    assert (user / "keep.txt").read_text() == "x"


def test_a_corrupt_manifest_counts_as_no_cache_and_is_written_again(spark) -> None:
    df = spark.range(12)
    first = make_spark_converter(df)
    directory = _local(first.cache_dir_url)
    (directory / MANIFEST_NAME).write_text('{"format": 1, "files": [')
    with pytest.warns(UserWarning, match="cannot be read"):
        again = make_spark_converter(df)
    assert again.cache_dir_url != first.cache_dir_url and not directory.exists()
    assert _ids(again) == list(range(12))
    assert make_spark_converter(df).cache_dir_url == again.cache_dir_url


def test_reopening_a_corrupt_cache_by_path_names_the_manifest(spark, tmp_path) -> None:
    converter = make_spark_converter(spark.range(3), cache_dir=str(tmp_path))
    (_local(converter.cache_dir_url) / MANIFEST_NAME).write_text("not json")
    with pytest.raises(CorruptManifestError, match=MANIFEST_NAME):
        make_spark_converter(converter.cache_dir_url)


def test_a_sparkfeed_cache_reopened_by_path_reads_as_its_converter(spark) -> None:
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.sql.types import LongType, StructField, StructType

    rows = [(i, Vectors.dense([i, -i, 0.5]), [i * 1.0, i * 2.0]) for i in range(40)]
    schema = StructType([StructField("id", LongType()), StructField("v", VectorUDT())])
    df = spark.createDataFrame([r[:2] for r in rows], schema).withColumn(
        "pair", F.array(F.col("id") * 1.0, F.col("id") * 2.0)
    )
    original = make_spark_converter(df)
    reopened = make_spark_converter(original.cache_dir_url)
    with original.make_numpy_iterator(batch_size=40, num_epochs=1, shuffle_row_groups=False) as it:
        want = concat(it)
    with reopened.make_numpy_iterator(batch_size=40, num_epochs=1, shuffle_row_groups=False) as it:
        got = concat(it)
    assert want.keys() == got.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        np.testing.assert_array_equal(got[name], want[name])
    assert got["v"].shape == (40, 3) and got["v"].dtype == np.float32
    with pytest.warns(UserWarning, match="did not create it"):
        reopened.delete()
    assert _ids(original) == list(range(40))


def test_a_manifest_from_before_file_sizes_still_reads_and_a_dataset_in_place_records_them(spark, tmp_path) -> None:
    # Sizes are the manifest's fingerprint of each file (the reader refuses a file of another
    # length); a cache made before they were recorded has none to check, and reads as it did.
    original = make_spark_converter(spark.range(30, numPartitions=2), cache_dir=(tmp_path / "c").as_uri())
    manifest = _local(original.cache_dir_url) / "_sparkfeed_manifest.json"
    data = json.loads(manifest.read_text())
    assert [f["size"] for f in data["files"]] == [(manifest.parent / f["path"]).stat().st_size for f in data["files"]]
    for entry in data["files"]:
        del entry["size"]
    manifest.write_text(json.dumps(data))
    older = make_spark_converter(original.cache_dir_url)
    assert [entry.size for entry in older.manifest.files] == [None, None]
    assert _ids(older) == list(range(30))
    pq.write_table(pa.table({"id": pa.array(range(9), pa.int64())}), tmp_path / "d.parquet")
    in_place = make_spark_converter(str(tmp_path / "d.parquet"))
    assert [entry.size for entry in in_place.manifest.files] == [(tmp_path / "d.parquet").stat().st_size]
    original.delete()


# --------------------------------------------------------------------------- register_delete_dir_handler


@pytest.fixture
def trash(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A handler that moves deleted caches into a trash directory, registered for one test."""
    bin_, calls = tmp_path / "trash", []
    bin_.mkdir()

    def to_trash(url: str) -> None:
        calls.append(url)
        path = _local(url)
        shutil.move(path, bin_ / path.name)

    register_delete_dir_handler(to_trash)
    try:
        yield bin_, calls
    finally:
        register_delete_dir_handler(None)


def test_a_registered_handler_deletes_caches_instead_of_sparkfeed(spark, trash) -> None:
    bin_, calls = trash
    converter = make_spark_converter(spark.range(9))
    directory = _local(converter.cache_dir_url)
    converter.delete()
    assert calls == [converter.cache_dir_url]
    assert not directory.exists() and (bin_ / directory.name / MANIFEST_NAME).is_file()  # moved, not removed
    with pytest.raises(RuntimeError, match="was deleted"):
        converter.make_numpy_iterator()


def test_the_handler_is_never_given_what_is_not_ours(spark, tmp_path, trash) -> None:
    _, calls = trash
    user = tmp_path / "user.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3]}), user)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_spark_converter(str(user)).delete()
    assert "did not create it" in str(caught[0].message) and user.exists()
    converter = make_spark_converter(spark.range(6), cache_dir=str(tmp_path / "caches"))
    directory = _local(converter.cache_dir_url)
    (directory / MARKER_NAME).unlink()
    with pytest.raises(NotOursError, match="does not hold the marker"):
        converter.delete()
    assert calls == [] and directory.is_dir()


def test_none_restores_the_default_deletion_and_bad_handlers_are_refused(spark) -> None:
    register_delete_dir_handler(lambda url: None)  # a handler that deletes nothing...
    register_delete_dir_handler(None)  # ...replaced by the default again
    converter = make_spark_converter(spark.range(8))
    directory = _local(converter.cache_dir_url)
    converter.delete()
    assert not directory.exists()
    with pytest.raises(ValueError, match=re.escape("handler='rm -rf' is not allowed: it must be a function")):
        register_delete_dir_handler("rm -rf")  # type: ignore[arg-type]


HANDLER_AT_EXIT_SCRIPT = textwrap.dedent(
    """
    import shutil, sys
    from urllib.parse import unquote, urlsplit
    from pyspark.sql import SparkSession
    from sparkfeed import make_spark_converter, register_delete_dir_handler
    spark = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
    register_delete_dir_handler(lambda url: shutil.move(unquote(urlsplit(url).path), sys.argv[2]))
    converter = make_spark_converter(spark.range(5), cache_dir=sys.argv[1])
    print(converter.cache_dir_url, flush=True)
    """
)


def test_the_handler_also_deletes_at_interpreter_exit(tmp_path) -> None:
    caches, bin_ = tmp_path / "caches", tmp_path / "trash"
    bin_.mkdir()
    done = _run_to_exit(HANDLER_AT_EXIT_SCRIPT, str(caches), str(bin_))
    name = _local(done.stdout.strip().splitlines()[-1]).name
    assert list(caches.iterdir()) == [] and (bin_ / name / MANIFEST_NAME).is_file()


# --------------------------------------------------------------------------- deleting, interrupted


def _complete_cache(
    parent: Path, parts: int = 3, *, key: str | None = None, keep: bool = False
) -> tuple[Location, str]:
    """A complete cache made the way a conversion lays it out (marker first, manifest last), without Spark."""
    location, token = create_cache_dir(Location.parse(str(parent)), key=key, keep=keep)
    entries, run = [], uuid.uuid4().hex  # names as Spark's: each write's own
    for index in range(parts):
        name = f"part-{index:05d}-{run}.parquet"
        pq.write_table(pa.table({"id": list(range(index * 10, index * 10 + 10))}), Path(location.local_path) / name)
        entries.append(FileEntry(name, (10,)))
    manifest = Manifest(tuple(entries), pa.schema([("id", pa.int64())]), {}, {"dtype": "float32"}, key=key or "")
    write_manifest(location, manifest)
    return location, token


KILLED_DELETE = textwrap.dedent(
    """
    import os, signal, sys
    from sparkfeed.cache import delete_cache
    from sparkfeed.location import Location

    removed = 0

    def kill_at_the_third_removal(event, args):
        global removed
        if event == "os.remove":
            removed += 1
            if removed == 3:
                os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would, mid-delete

    sys.addaudithook(kill_at_the_third_removal)
    delete_cache(Location.parse(sys.argv[1]), sys.argv[2])
    """
)


def test_a_delete_killed_midway_leaves_an_incomplete_cache_never_a_manifest_without_its_files(tmp_path) -> None:
    for _ in range(20):  # a directory listing that starts with two data files, as a deleter walks it
        location, token = _complete_cache(tmp_path, parts=8, key="k", keep=True)
        if all(name.startswith("part-") for name in os.listdir(location.local_path)[:2]):
            break
        shutil.rmtree(location.local_path)
    else:
        pytest.fail("no listing started with two data files")
    done = subprocess.run([sys.executable, "-c", KILLED_DELETE, location.url, token], timeout=60)
    assert done.returncode == -9
    left = set(os.listdir(location.local_path))
    assert MARKER_NAME in left and len([name for name in left if name.startswith("part-")]) < 8  # cut short
    assert read_manifest(location) is None and MANIFEST_NAME not in left
    (entry,) = scan(Location.parse(str(tmp_path)))
    assert entry.state == "partial"
    assert find_kept(Location.parse(str(tmp_path)), "k") is None
    with pytest.raises(IncompleteCacheError):
        make_spark_converter(location.url)
    delete_cache(location, token)  # still ours: the marker goes last
    assert list(tmp_path.iterdir()) == []


ENDED_CREATOR = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    import test_cache
    parent, keep, parts = Path(sys.argv[2]), sys.argv[3] == "keep", int(sys.argv[4])
    if parts:
        print(test_cache._complete_cache(parent, parts, key="k" if keep else None, keep=keep)[0].url)
    else:
        print(test_cache._partial_cache(parent).url)
    """
)


def _made_by_a_process_that_ended(parent: Path, *, keep: bool = False, parts: int = 2) -> Path:
    """A cache made by a real process that has ended (complete, or with ``parts=0`` partial): its creator is gone."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            ENDED_CREATOR,
            str(Path(__file__).parent),
            str(parent),
            "keep" if keep else "-",
            str(parts),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return _local(done.stdout.strip().splitlines()[-1])


def _set_manifest(cache: Path, change: Callable[[dict], object]) -> None:
    manifest = json.loads((cache / MANIFEST_NAME).read_text())
    change(manifest)
    (cache / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_caches_of_a_newer_format_and_kept_ones_are_never_collected_by_a_conversion(spark, tmp_path) -> None:
    parent = Location.parse(str(tmp_path))
    newer = {keep: _made_by_a_process_that_ended(tmp_path, keep=keep) for keep in (True, False)}
    for cache in newer.values():
        _set_manifest(cache, lambda manifest: manifest.update(format=3))  # what a later sparkfeed may write
    kept_corrupt = _made_by_a_process_that_ended(tmp_path, keep=True)
    (kept_corrupt / MANIFEST_NAME).write_text('{"format": 1, "files": [')
    partial = _made_by_a_process_that_ended(tmp_path, parts=0)
    states = {Path(e.location.local_path): (e.state, e.liveness, e.orphaned) for e in scan(parent)}
    assert states[newer[True]] == states[newer[False]] == ("unsupported", Liveness.GONE, False)
    assert states[kept_corrupt] == ("corrupt", Liveness.GONE, True) and states[partial][:2] == (
        "partial",
        Liveness.GONE,
    )
    make_spark_converter(spark.range(3), cache_dir=str(tmp_path))
    assert not partial.exists()  # never complete: what a conversion collects
    assert newer[True].is_dir() and newer[False].is_dir() and kept_corrupt.is_dir()
    assert {Path(e.location.local_path) for e in collect(parent)} == {kept_corrupt}  # `cache clean`
    assert newer[True].is_dir() and newer[False].is_dir()
    with pytest.raises(UnsupportedManifestError, match=r"format 3, written by a newer sparkfeed"):
        make_spark_converter(Location.parse(str(newer[False])).url)
    assert remove(Location.parse(str(newer[False]))).state == "unsupported"  # by its URL, on purpose
    assert not newer[False].exists()


def test_recording_a_reuse_never_writes_through_a_link_and_a_linked_manifest_is_refused(tmp_path) -> None:
    location, _ = _complete_cache(tmp_path / "caches", keep=True, key="k")
    cache, victim = Path(location.local_path), tmp_path / "victim.txt"
    victim.write_text("the user's own file")
    (cache / USED_NAME).symlink_to(victim)  # planted by whoever made the kept cache
    mark_used(location)
    assert victim.read_text() == "the user's own file"
    assert not (cache / USED_NAME).is_symlink() and json.loads((cache / USED_NAME).read_text())["at"]
    (entry,) = scan(Location.parse(str(tmp_path / "caches")))
    assert entry.last_used is not None and entry.users == (Owner.current(),)
    elsewhere = tmp_path / MANIFEST_NAME
    shutil.move(cache / MANIFEST_NAME, elsewhere)
    (cache / MANIFEST_NAME).symlink_to(elsewhere)
    with pytest.raises(CorruptManifestError, match="not a regular file"):
        read_manifest(location)
    with pytest.raises(CorruptManifestError, match="not a regular file"):
        make_spark_converter(location.url)


def _hand_to(path: Path, uid: int) -> None:
    for item in [path, *path.rglob("*")]:
        os.chown(item, uid, -1, follow_symlinks=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can make files that belong to another user")
def test_reuse_auto_serves_another_users_kept_cache_only_from_a_directory_its_maker_alone_writes(
    tmp_path, caplog
) -> None:
    nobody, me = 65534, os.getuid()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: anyone may add a directory
    location, _ = _complete_cache(shared, keep=True, key="k")
    cache, parent = Path(location.local_path), Location.parse(str(shared))
    assert find_kept(parent, "k") is not None  # this user's own cache: served
    _hand_to(cache, nobody)  # as if another user had left it there, with the key anyone can compute
    with caplog.at_level(logging.WARNING, logger="sparkfeed.cache"):
        assert find_kept(parent, "k") is None
    assert f"made by user id {nobody}, not this one ({me})" in caplog.text
    assert "other users can write to" in caplog.text and "make_spark_converter(url)" in caplog.text
    curated = tmp_path / "curated"
    shutil.copytree(shared, curated, symlinks=True)
    curated.chmod(0o755)
    _hand_to(curated, nobody)  # one account's directory, and its caches: only it could have put them there
    found = find_kept(Location.parse(str(curated)), "k")
    assert found is not None and found[0].location.url == Location.parse(str(curated / cache.name)).url
    os.chown(curated, me, -1)  # the parent is this user's, the cache another's: how it got there is unknown
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sparkfeed.cache"):
        assert find_kept(Location.parse(str(curated)), "k") is None
    assert f"which belongs to user id {me}" in caplog.text
    _hand_to(cache, me)
    os.chown(cache / MANIFEST_NAME, nobody, -1)  # this user's cache, its manifest replaced by another's
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sparkfeed.cache"):
        assert find_kept(parent, "k") is None
    assert f"belong to several users (ids [{me}, {nobody}])" in caplog.text


CHURN = textwrap.dedent(
    """
    import os, sys, time
    parent, names = sys.argv[1], [f"sparkfeed-20260101T000000-{i:012x}" for i in range(100)]
    print("churning", flush=True)
    while True:  # another process's caches, made and deleted (the marker is gone first)
        for name in names:
            os.mkdir(os.path.join(parent, name))
        for name in names:
            os.rmdir(os.path.join(parent, name))
    """
)


def test_listing_skips_caches_removed_while_it_looks(tmp_path) -> None:
    parent = Location.parse(str(tmp_path))
    location, _ = _complete_cache(tmp_path, key="k", keep=True)
    churn = subprocess.Popen([sys.executable, "-c", CHURN, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert churn.stdout is not None and churn.stdout.readline() == "churning\n"
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert [e.location for e in scan(parent)] == [location]
            found = find_kept(parent, "k")
            assert found is not None and found[0].location == location
    finally:
        churn.kill()
        churn.wait()


# --------------------------------------------------------------------------- leftovers of killed processes


def _marker(cache: Path) -> dict:
    return json.loads((cache / MARKER_NAME).read_text())


def _on_another_host(cache: Path) -> None:
    marker = _marker(cache)
    marker["owner"]["host"] = "another-host.invalid"
    (cache / MARKER_NAME).write_text(json.dumps(marker))


@pytest.fixture
def mixed(spark, leftovers: Path) -> dict[str, Path]:
    """The killed processes' complete and partial caches, beside this process's, another host's and not ours."""
    parent = Location.parse(str(leftovers))
    orphans = {e.state: Path(e.location.local_path) for e in scan(parent)}
    # Made beside, then copied in: a conversion into the parent would collect the partial orphan now.
    made = Path(make_spark_converter(spark.range(7), cache_dir=str(leftovers.parent / "beside")).location.local_path)
    running = leftovers / made.name
    shutil.copytree(made, running)
    writing, _ = create_cache_dir(parent)  # being written by this process: no manifest yet
    other = leftovers / "sparkfeed-20260101T000000-0123456789ab"
    shutil.copytree(orphans["complete"], other)
    _on_another_host(other)
    foreign = leftovers / "sparkfeed-20260101T000000-ffffffffffff"
    foreign.mkdir()
    (foreign / "data.parquet").write_text("not sparkfeed's")
    link = leftovers / "sparkfeed-20260101T000000-aaaaaaaaaaaa"
    link.symlink_to(orphans["complete"])
    (leftovers / "notes.txt").write_text("the user's")
    return {
        "complete orphan": orphans["complete"],
        "partial orphan": orphans["partial"],
        "running": running,
        "writing": Path(writing.local_path),
        "other host": other,
        "foreign": foreign,
        "link": link,
    }


def test_scan_tells_what_killed_processes_left_from_live_caches_and_lists_nothing_else(mixed, leftovers) -> None:
    found = {Path(e.location.local_path): e for e in scan(Location.parse(str(leftovers)))}
    expected = {
        "complete orphan": ("complete", Liveness.GONE, 100),
        "partial orphan": ("partial", Liveness.GONE, None),
        "running": ("complete", Liveness.RUNNING, 7),
        "writing": ("partial", Liveness.RUNNING, None),
        "other host": ("complete", Liveness.UNKNOWN, 100),
    }
    assert set(found) == {mixed[name] for name in expected}  # not the foreign directory, nor the link
    for name, (state, liveness, rows) in expected.items():
        entry = found[mixed[name]]
        assert (entry.state, entry.liveness, entry.num_rows) == (state, liveness, rows), name
        assert entry.orphaned == (liveness is Liveness.GONE) and entry.size_bytes > 0
    assert found[mixed["running"]].owner == Owner.current()


def test_a_new_conversion_removes_partial_orphans_and_points_at_complete_ones(spark, mixed, leftovers, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="sparkfeed"):
        make_spark_converter(spark.range(3), cache_dir=str(leftovers))
    assert not mixed["partial orphan"].exists()
    kept = ["complete orphan", "running", "writing", "other host", "foreign", "link"]
    assert all(mixed[name].exists() or mixed[name].is_symlink() for name in kept)
    assert (leftovers / "notes.txt").read_text() == "the user's"
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert f"removed the partial cache {Location.parse(str(mixed['partial orphan'])).url}" in messages
    assert "1 caches (1 complete;" in messages and "`sparkfeed cache clean" in messages


def test_collect_removes_only_what_processes_that_are_gone_left(mixed, leftovers) -> None:
    parent = Location.parse(str(leftovers))
    orphans = {mixed["complete orphan"], mixed["partial orphan"]}
    assert {Path(e.location.local_path) for e in collect(parent, dry_run=True)} == orphans
    assert all(path.exists() for path in orphans)  # a dry run removes nothing
    assert {Path(e.location.local_path) for e in collect(parent)} == orphans
    assert not any(path.exists() for path in orphans)
    assert all(mixed[name].exists() for name in ("running", "writing", "other host", "foreign"))
    assert mixed["link"].is_symlink() and (leftovers / "notes.txt").exists()
    assert collect(parent) == []


def test_remove_takes_orphans_refuses_what_is_not_ours_and_live_caches_without_force(mixed) -> None:
    with pytest.raises(NotOursError, match="holds no sparkfeed marker"):
        remove(Location.parse(str(mixed["foreign"])))
    with pytest.raises(NotOursError, match="symbolic link"):
        remove(Location.parse(str(mixed["link"])))
    with pytest.raises(PermissionError, match=r"its creator \(.*pid \d+\) still runs"):
        remove(Location.parse(str(mixed["running"])))
    with pytest.raises(PermissionError, match="cannot be checked from this host"):
        remove(Location.parse(str(mixed["other host"])))
    with pytest.raises(FileNotFoundError):
        remove(Location.parse(str(mixed["foreign"].parent / "sparkfeed-20260101T000000-000000000000")))
    assert remove(Location.parse(str(mixed["complete orphan"]))).state == "complete"
    assert remove(Location.parse(str(mixed["writing"])), force=True).state == "partial"
    assert not mixed["complete orphan"].exists() and not mixed["writing"].exists()
    assert mixed["foreign"].exists() and mixed["running"].exists() and mixed["link"].is_symlink()


WRITER_ELSEWHERE = textwrap.dedent(
    """
    import sys, time
    from sparkfeed.cache import create_cache_dir
    from sparkfeed.location import Location
    location, _ = create_cache_dir(Location.parse(sys.argv[1]))
    print(location.local_path, flush=True)  # being written: more files to come, the manifest last
    time.sleep(120)
    """
)


def _unshare_works() -> bool:
    try:
        return (
            subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode == 0
        )
    except OSError:
        return False


@pytest.mark.skipif(not _unshare_works(), reason="needs `unshare --pid --mount-proc` (root, or a user namespace)")
def test_a_cache_being_written_in_another_pid_namespace_is_never_collected(tmp_path) -> None:
    """Two containers of one pod: one hostname, two pid namespaces, one cache volume."""
    command = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", WRITER_ELSEWHERE, str(tmp_path)]
    writer = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None
        cache = Path(writer.stdout.readline().strip())
        (entry,) = scan(Location.parse(str(tmp_path)))
        assert entry.state == "partial" and entry.liveness is Liveness.UNKNOWN and not entry.orphaned
        assert collect(Location.parse(str(tmp_path))) == [] and cache.is_dir()
    finally:
        writer.kill()
        writer.wait()


# --------------------------------------------------------------------------- permissions


def test_the_default_cache_dir_is_private_to_its_user(tmp_path) -> None:
    path = tmp_path / "sparkfeed-me"
    assert private_dir(str(path)) == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert private_dir(str(path)) == str(path)  # the same directory again: fine
    path.chmod(0o770)
    with pytest.raises(PermissionError, match=r"writable by other users \(mode 770\): run chmod 700"):
        private_dir(str(path))
    link = tmp_path / "sparkfeed-link"
    link.symlink_to(path)
    with pytest.raises(PermissionError, match="is a symbolic link"):
        private_dir(str(link))


def test_a_default_cache_dir_owned_by_another_user_is_refused(tmp_path) -> None:
    if os.geteuid() == 0:
        path = tmp_path / "sparkfeed-other"
        path.mkdir(mode=0o700)
        os.chown(path, 65534, -1)  # root can hand it to 'nobody', as another user would have made it
    else:
        path = Path("/")  # not root: the root directory belongs to someone else
    with pytest.raises(PermissionError, match=r"belongs to user id \d+, not to this one"):
        private_dir(str(path))


@pytest.mark.parametrize("arrays", [True, False], ids=["task-writer", "spark-writer"])
def test_caches_honour_the_umask(spark, tmp_path, arrays) -> None:
    df = spark.range(100, numPartitions=2)
    df = df.withColumn("a", F.array("id", "id")) if arrays else df
    previous = os.umask(0o077)  # after Spark started: its JVM and Python workers keep the old one
    try:
        converter = make_spark_converter(df, cache_dir=str(tmp_path / "private"))
    finally:
        os.umask(previous)
    root = Path(converter.location.local_path)
    modes = {p.relative_to(root).as_posix(): stat.S_IMODE(p.lstat().st_mode) for p in [root, *root.rglob("*")]}
    assert len(modes) > 3
    assert {path: mode for path, mode in modes.items() if mode & 0o077} == {}
    assert all(mode == (0o700 if (root / path).is_dir() else 0o600) for path, mode in modes.items())


NESTED_CREATOR = textwrap.dedent(
    """
    import sys
    from sparkfeed.cache import create_cache_dir
    from sparkfeed.location import Location
    location, _ = create_cache_dir(Location.parse(sys.argv[1]))
    print(location.local_path, flush=True)
    sys.stdin.read()  # runs, its cache with it, until the test closes its input
    """
)


def test_delete_leaves_a_cache_that_holds_a_running_processs_cache(spark, tmp_path) -> None:
    # What sparkfeed made before it refused a cache_dir inside a cache: a cache in another. Its
    # creator's delete() (or its exit) removed the inner cache too, while that process read it.
    converter = make_spark_converter(spark.range(5), cache_dir=str(tmp_path / "caches"))
    outer = _local(converter.cache_dir_url)
    with subprocess.Popen(
        [sys.executable, "-c", NESTED_CREATOR, str(tmp_path / "elsewhere")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as creator:
        assert creator.stdout is not None and creator.stdin is not None
        made = Path(creator.stdout.readline().strip())
        inner = outer / made.name
        made.rename(inner)  # a running process's cache, inside ours
        with pytest.raises(PermissionError, match=r"holds the sparkfeed cache .*which a process that may still run"):
            converter.delete()
        assert (inner / MARKER_NAME).is_file() and (outer / MANIFEST_NAME).is_file()
        with pytest.raises(PermissionError, match="holds the sparkfeed cache"):
            delete_cache(converter.location, converter._token or "")  # what this process's exit runs
        assert (inner / MARKER_NAME).is_file()
        creator.stdin.close()
        assert creator.wait(60) == 0
    converter.delete()  # its creator gone, the inner cache goes with the outer one
    assert not outer.exists()


def test_one_remover_at_a_time_sets_a_local_cache_aside_and_one_that_died_is_taken_over(tmp_path) -> None:
    # Two `clean`s (or a clean and an rm) at once must not both decide: the second one would put
    # back a manifest the first is deleting the files of. A remover that died is not waited for.
    from sparkfeed.cache import WITHDRAWN_NAME, _withdraw, _withdrawer, _write_record

    made = _made_by_a_process_that_ended(tmp_path, keep=True)
    location = Location.parse(str(made))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        owner = Owner(socket.gethostname(), other.pid, start_time(other.pid), None, _boot_id(), _pid_namespace())
        assert owner.liveness() is Liveness.RUNNING
        aside = {"by": owner.to_dict(), "at": "2026-01-01T00:00:00+00:00", "manifest": ""}
        _write_record(location, WITHDRAWN_NAME, json.dumps(aside).encode())  # set aside, manifest not yet removed
        with pytest.raises(PermissionError, match=f"pid {other.pid} is removing it"):
            _withdraw(location)
        assert (made / MANIFEST_NAME).exists() and _withdrawer(location) == owner
    finally:
        other.kill()
        other.wait()
    manifest = (made / MANIFEST_NAME).read_bytes()
    assert _withdraw(location) == manifest  # its remover is gone: this one takes it over
    assert not (made / MANIFEST_NAME).exists() and _withdrawer(location) == Owner.current()
