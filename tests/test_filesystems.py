"""Each scheme's filesystem: paths, options, fsspec filesystems, and what HDFS needs said clearly."""

from __future__ import annotations

import os
import re
import shutil

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from sparkfeed import make_spark_converter
from sparkfeed.filesystems import _query_options, java_home, make_filesystem
from sparkfeed.location import Location


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("s3://bucket/a%20b/c", "bucket/a b/c"),
        ("s3a://bucket/p", "bucket/p"),
        ("s3n://bucket/p/", "bucket/p"),
        ("gs://bucket/p", "bucket/p"),
        ("abfss://container@account.dfs.core.windows.net/p/q", "container/p/q"),
        ("hdfs://namenode:8020/user/me", "/user/me"),
    ],
)
def test_each_scheme_maps_to_its_filesystem_path(url: str, path: str) -> None:
    given = pafs.LocalFileSystem()
    assert make_filesystem(url, filesystem=given) == (given, path)


def test_query_options_take_pyarrow_types() -> None:
    assert _query_options(
        "endpoint_override=127.0.0.1%3A9&scheme=http&connect_timeout=2&allow_bucket_creation=true"
    ) == {
        "endpoint_override": "127.0.0.1:9",
        "scheme": "http",
        "connect_timeout": 2.0,
        "allow_bucket_creation": True,
    }


def test_unknown_storage_options_are_refused_naming_them() -> None:
    with pytest.raises(ValueError, match=r"storage_options \[.*'no_such_option'"):
        make_filesystem("s3://bucket/p", {"no_such_option": 1})


def test_storage_options_are_refused_for_local_paths(tmp_path) -> None:
    with pytest.raises(ValueError, match="is a local path"):
        Location.parse(tmp_path, options={"access_key": "x"})
    with pytest.raises(ValueError, match="must be a dict"):
        Location.parse("s3://bucket/p", options=["access_key"])  # type: ignore[arg-type]


def test_an_fsspec_filesystem_reads_a_dataset_in_place() -> None:
    memory = fsspec.filesystem("memory")
    table = pa.table({"id": np.arange(30), "x": np.arange(30) * 0.5})
    with memory.open("/sf-test/data/part-0.parquet", "wb") as handle:
        pq.write_table(table, handle)
    converter = make_spark_converter("memory://sf-test/data", filesystem=memory)
    with converter.make_numpy_iterator(batch_size=7, num_epochs=1, shuffle_row_groups=False) as batches:
        ids = np.concatenate([b["id"] for b in batches])
    np.testing.assert_array_equal(ids, np.arange(30))
    memory.rm("/sf-test", recursive=True)


def test_a_scheme_nothing_serves_is_refused_with_what_to_do() -> None:
    with pytest.raises(ValueError, match=r"pyarrow has no filesystem for 'nosuchfs'.*filesystem="):
        Location.parse("nosuchfs://bucket/p").filesystem  # noqa: B018


def test_hdfs_finds_java_from_the_path_and_names_what_libhdfs_needs(monkeypatch) -> None:
    java = shutil.which("java")
    assert java is not None, "the test machine has Java (Spark needs it)"
    monkeypatch.delenv("JAVA_HOME", raising=False)
    expected = os.path.dirname(os.path.dirname(os.path.realpath(java)))
    assert java_home() == expected
    with pytest.raises(ValueError) as caught:  # no Hadoop client here: a clear error, not "Unable to load libjvm"
        Location.parse("hdfs://127.0.0.1:1/user/me").filesystem  # noqa: B018
    message = str(caught.value)
    assert f"JAVA_HOME is {expected}" in message and "libhdfs" in message and "HADOOP_HOME" in message
    assert os.environ["JAVA_HOME"] == expected


def test_hdfs_without_java_says_so(monkeypatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert java_home() is None
    with pytest.raises(ValueError, match="hdfs:// needs Java"):
        Location.parse("hdfs:/user/me").filesystem  # noqa: B018


def test_deleting_through_fsspec_never_expands_glob_characters_into_other_paths() -> None:
    # fsspec's rm expands `*`, `?` and `[...]` as a glob: deleting the cache `sf-glob/c[1]`
    # removed `sf-glob/c1`, a directory sparkfeed did not create, and kept its own.
    from sparkfeed.cache import create_cache_dir, delete_cache

    memory = fsspec.filesystem("memory")
    memory.pipe("/sf-glob/c1/part-0.parquet", b"someone else's")
    memory.pipe("/sf-glob/c1/_manifest.json", b"someone else's")
    try:
        parent = Location.parse("memory://sf-glob/c[1]", filesystem=memory)
        cache, token = create_cache_dir(parent)
        memory.pipe(f"/{cache.path}/part-0.parquet", b"ours")
        delete_cache(cache, token)
        assert not memory.exists(f"/{cache.path}")
        parent.filesystem.delete_dir(parent.path)
        assert not memory.exists("/sf-glob/c[1]")
        fs = Location.parse("memory://sf-glob/f[1]", filesystem=memory).filesystem
        memory.pipe("/sf-glob/f[1]", b"ours")
        memory.pipe("/sf-glob/f1", b"someone else's")
        fs.delete_file("sf-glob/f[1]")
        assert not memory.exists("/sf-glob/f[1]")
        memory.pipe("/sf-glob/d/x[1]/y", b"ours")
        memory.pipe("/sf-glob/d/x1", b"someone else's")
        with pytest.raises(ValueError, match=r"\[1\]"):
            fs.move("sf-glob/d/x[1]", "sf-glob/e")
        fs.delete_dir_contents("sf-glob/d/x[1]")
        assert not memory.find("/sf-glob/d/x[1]")
        assert sorted(memory.find("/sf-glob")) == [
            "/sf-glob/c1/_manifest.json",
            "/sf-glob/c1/part-0.parquet",
            "/sf-glob/d/x1",
            "/sf-glob/f1",
        ]
    finally:
        memory.rm("/sf-glob", recursive=True)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            "connect_timeout=abc",
            "connect_timeout='abc' in the URL's query is not allowed: it must be a number of seconds > 0",
        ),
        (
            "request_timeout=-5",
            "request_timeout='-5' in the URL's query is not allowed: it must be a number of seconds > 0",
        ),
        ("connect_timeout=nan", "connect_timeout='nan' in the URL's query is not allowed"),
        (
            "allow_bucket_creation=maybe",
            "allow_bucket_creation='maybe' in the URL's query is not allowed: it must be one of",
        ),
    ],
)
def test_bad_query_options_are_refused_naming_the_value_and_what_is_allowed(query: str, message: str) -> None:
    # 'abc' failed with float()'s bare message, -5 reached pyarrow, and 'maybe' became False in silence.
    with pytest.raises(ValueError, match=re.escape(message)):
        _ = Location.parse(f"s3://bucket/p?{query}").filesystem
