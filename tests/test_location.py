"""Paths and URLs become one location: the same directory to pyarrow, Spark and delete()."""

from __future__ import annotations

import os
import pickle

import pyarrow.fs as pafs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparkfeed.location import Location, shown

AWKWARD = ["#cache", "q?cache", "sp ace", "é-ü", "50%off", "50%25off", "a&b=c;d", "[x]", "tab\tname"]


@pytest.mark.parametrize("name", AWKWARD)
def test_a_plain_path_is_the_same_directory_in_every_view(tmp_path, name: str) -> None:
    path = str(tmp_path / name / "sub")
    location = Location.parse(path)
    assert location.local_path == location.path == path
    assert isinstance(location.filesystem, pafs.LocalFileSystem)
    assert location.hadoop_path == "file://" + path  # Spark never percent-decodes
    assert "#" not in location.url and "?" not in location.url and " " not in location.url
    assert Location.parse(location.url) == location  # the URL reads back as the same directory
    _, decoded = pafs.FileSystem.from_uri(location.url)  # and pyarrow's own parser agrees
    assert decoded == path


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1))
def test_any_component_round_trips_through_the_url(name: str) -> None:
    if name in (".", ".."):
        return
    parent = Location.parse("/data")
    child = parent.child(name)
    assert child.local_path == "/data/" + name
    assert Location.parse(child.url) == child
    assert child.parent == parent
    assert child.name == name


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("file:/x/y", "/x/y"),  # the one-slash form Petastorm documents
        ("file:///x/y/", "/x/y"),
        ("file://localhost/x/y", "/x/y"),
        ("file:///x/%23y", "/x/#y"),
        ("file:///x/a%20b", "/x/a b"),
        ("file:///x/%C3%A9", "/x/é"),
        ("file:///x/50%25", "/x/50%"),
    ],
)
def test_file_urls_are_decoded_once(text: str, path: str) -> None:
    assert Location.parse(text).local_path == path


def test_relative_paths_are_made_absolute() -> None:
    assert Location.parse("rel/dir").local_path == os.path.join(os.getcwd(), "rel", "dir")
    assert Location.parse("~/x").local_path == os.path.expanduser("~/x")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("file:///home/me/#cache", "fragment"),
        ("file:///home/me/q?cache", "query"),
        ("s3://bucket/a#b", "fragment"),
        ("file://otherhost/x", "host"),
        ("", "not a path"),
        # urlsplit drops tabs and line breaks anywhere: these named /tmp/ab, s3://bucket/ab, s3://bucket/data.
        ("file:///tmp/a\nb", "drops"),
        ("s3://bucket/a\tb", "drops"),
        ("s3://bucket/data\r\n", "drops"),
    ],
)
def test_urls_that_name_another_place_than_they_seem_are_refused(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Location.parse(text)


def test_tabs_and_line_breaks_are_taken_from_a_plain_path_or_percent_encoded_in_a_url() -> None:
    assert Location.parse("/tmp/a\nb").local_path == "/tmp/a\nb"
    assert Location.parse("file:///tmp/a%0Ab%09c").local_path == "/tmp/a\nb\tc"


def test_other_schemes_keep_host_and_query_and_get_two_slashes() -> None:
    assert Location.parse("hdfs:/x").url == "hdfs:///x"
    s3 = Location.parse("s3://bucket/p q/?endpoint_override=127.0.0.1%3A9&scheme=http")
    assert s3.url == "s3://bucket/p%20q?endpoint_override=127.0.0.1%3A9&scheme=http"
    child = s3.child("c#1")
    assert child.url == "s3://bucket/p%20q/c%231?endpoint_override=127.0.0.1%3A9&scheme=http"
    assert child.hadoop_path == "s3://bucket/p q/c#1"


def test_dbfs_is_the_fuse_path_on_databricks_and_refused_elsewhere(monkeypatch) -> None:
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    with pytest.raises(ValueError, match="Databricks only"):
        Location.parse("dbfs:/ml/cache")
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    assert Location.parse("dbfs:/ml/cache").local_path == "/dbfs/ml/cache"
    assert Location.parse("dbfs:///ml/cache").local_path == "/dbfs/ml/cache"


@pytest.mark.parametrize("name", ["", "a/b", ".", ".."])
def test_child_takes_one_component(name: str) -> None:
    with pytest.raises(ValueError, match="single path component"):
        Location.parse("/x").child(name)


def test_pickles_as_its_url() -> None:
    location = Location.parse("/tmp/#c")
    location.filesystem  # noqa: B018 - resolved once; the pickle still carries the URL alone
    clone = pickle.loads(pickle.dumps(location))
    assert clone == location and clone.local_path == "/tmp/#c"
    assert len(pickle.dumps(location)) < 200


@pytest.mark.parametrize("path", ["a/../b", "a/./b", "a//b", "a/%2E%2E/b"])
def test_object_store_urls_with_dot_or_empty_segments_are_refused(spark, path: str) -> None:
    # Spark's writer (Hadoop's Path) resolves them, pyarrow's S3 lists them literally: the cache
    # Spark writes under s3a://bucket/b is not what sparkfeed lists, reads and deletes under a/../b.
    hadoop = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(f"s3a://bucket/{path.replace('%2E', '.')}")
    assert hadoop.toString() in ("s3a://bucket/b", "s3a://bucket/a/b")
    with pytest.raises(ValueError, match=r"s3a://bucket/a/.*'\.', '\.\.' or empty"):
        Location.parse(f"s3a://bucket/{path}")
    assert Location.parse("s3a://bucket/a/b/").url == "s3a://bucket/a/b"  # a trailing slash is no segment


def test_credentials_in_a_query_are_hidden_where_the_url_is_shown() -> None:
    url = (
        "s3://bkt/caches?endpoint_override=127.0.0.1:9000&scheme=http&access_key=AKIA1&secret_key=s%2F3&session_token=t"
    )
    location = Location.parse(url)
    assert location.url == url  # still reaches the data
    assert str(location) == (
        "s3://bkt/caches?endpoint_override=127.0.0.1:9000&scheme=http&access_key=***&secret_key=***&session_token=***"
    )
    child = location.child("sparkfeed-x")
    assert "s%2F3" not in str(child) and child.name == "sparkfeed-x" and "s%2F3" in child.url
    assert (
        shown("s3://b/c") == "s3://b/c" and shown("s3://b/c?region=us&scheme=http") == "s3://b/c?region=us&scheme=http"
    )


def test_cache_commands_do_not_print_a_query_s_credentials(s3_server, s3_bucket) -> None:
    from click.testing import CliRunner

    from sparkfeed.cli import main

    options = s3_server.storage_options
    url = f"s3://{s3_bucket}/caches?" + "&".join(f"{k}={v}" for k, v in options.items())
    for args in (
        ["cache", "ls", url],
        ["cache", "ls", "--json", url],
        ["cache", "rm", f"{url[: url.index('?')]}/x?{url.split('?')[1]}"],
    ):
        output = CliRunner().invoke(main, args).output
        assert options["secret_key"] not in output and "secret_key=***" in output, output
