"""reuse="auto" and keep=True: caches that outlive their process, found again by later processes, never stale."""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from pyspark.sql import functions as F

import sparkfeed.cache
import sparkfeed.converter
from sparkfeed import make_spark_converter
from sparkfeed.cache import MARKER_NAME, USED_NAME, USER_NAME, collect, mark_used, owned_caches, scan
from sparkfeed.cli import main
from sparkfeed.location import Location
from sparkfeed.materialize import _session_conf, identify, reuse_key
from sparkfeed.options import MaterializeOptions

from helpers import JobProcess, run_job


def _write_source(path: Path, rows: int) -> None:
    path.mkdir(exist_ok=True)
    pq.write_table(pa.table({"id": list(range(rows))}), path / "part-0.parquet")


@pytest.fixture(scope="module")
def kept(tmp_path_factory) -> tuple[Path, Path, dict]:
    """A cache kept by a process that has ended: (its source, its parent, what that process saw)."""
    root = tmp_path_factory.mktemp("kept")
    source, parent = root / "source", root / "caches"
    _write_source(source, 1000)
    seen = run_job("reuse_job.py", str(source), str(parent), "keep", cwd=root)
    return source, parent, seen


def _copy(kept, tmp_path) -> tuple[Path, Path, dict]:
    """The kept cache, its source and parent copied for a test that changes them."""
    source, parent, seen = kept
    shutil.copytree(source, tmp_path / "source")
    shutil.copytree(parent, tmp_path / "caches")
    name = seen["url"].rsplit("/", 1)[1]
    return tmp_path / "source", tmp_path / "caches", {**seen, "url": (tmp_path / "caches" / name).as_uri()}


def _kept_frame(spark: Any, kept: Any) -> Any:
    """The DataFrame reuse_job.py kept, made again here: reuse='auto' finds its cache."""
    return spark.read.parquet(str(kept[0])).filter("id % 2 = 0").withColumn("twice", F.col("id") * 2)


def _ids(converter: Any) -> list[int]:
    with converter.make_numpy_iterator(batch_size=1000, num_epochs=1) as batches:
        return [int(i) for batch in batches for i in batch["id"]]


@pytest.mark.slow
def test_a_kept_cache_outlives_its_process_and_a_later_process_reuses_it(kept, tmp_path) -> None:
    source, parent, first = kept
    assert (first["rows"], first["id_sum"]) == (500, sum(range(0, 1000, 2)))
    (cache,) = [p for p in parent.iterdir() if p.name.startswith("sparkfeed-")]  # still there after its exit
    marker = json.loads((cache / MARKER_NAME).read_text())
    assert marker["keep"] is True and isinstance(marker["key"], str)
    again = run_job("reuse_job.py", str(source), str(parent), "no-keep", "delete", cwd=tmp_path)
    assert again["url"] == first["url"] and (again["rows"], again["id_sum"]) == (first["rows"], first["id_sum"])
    assert cache.exists() and json.loads((cache / USED_NAME).read_text())["at"]  # its reuse is recorded
    # delete() leaves it, and says why: another process made it (it was not opened by path)
    (warned,) = again["warned"]
    assert "reused" in warned and "kept" in warned and "by path" not in warned and "cache rm" in warned


@pytest.mark.slow
def test_a_changed_source_is_never_served_from_a_kept_cache(kept, tmp_path) -> None:
    source, parent, first = _copy(kept, tmp_path)
    _write_source(source, 1200)  # rewritten in place: other rows, same path
    seen = run_job("reuse_job.py", str(source), str(parent), "no-keep", cwd=tmp_path)
    assert seen["url"] != first["url"] and (seen["rows"], seen["id_sum"]) == (600, sum(range(0, 1200, 2)))
    assert [p.name for p in parent.iterdir()] == [first["url"].rsplit("/", 1)[1]]  # the new one was not kept


def test_kept_caches_are_not_orphans_and_clean_older_than_removes_them(kept, tmp_path) -> None:
    _, parent, _ = _copy(kept, tmp_path)
    location = Location.parse(str(parent))
    (entry,) = scan(location)
    assert entry.kept and entry.state == "complete" and entry.liveness.value == "gone" and not entry.orphaned
    assert collect(location) == [] and collect(location, older_than=datetime.timedelta(days=1)) == []
    listed = CliRunner().invoke(main, ["cache", "ls", str(parent)])
    assert listed.output.splitlines()[-1].endswith("  kept")
    kept_note = CliRunner().invoke(main, ["cache", "clean", str(parent)])
    assert (
        "left 1 kept caches (keep=True)" in kept_note.output
        and (parent / entry.location.url.rsplit("/", 1)[1]).exists()
    )
    removed = CliRunner().invoke(main, ["cache", "clean", "--older-than", "0s", str(parent)])
    assert removed.exit_code == 0 and "removed 1 caches" in removed.output and not any(parent.iterdir())
    assert CliRunner().invoke(main, ["cache", "clean", "--older-than", "soon", str(parent)]).exit_code == 2


@pytest.mark.slow
def test_clean_older_than_leaves_a_kept_cache_while_a_process_that_reused_it_runs(kept, tmp_path) -> None:
    _, parent, first = _copy(kept, tmp_path)  # the kept cache, for the original source
    location = Location.parse(str(parent))
    with JobProcess("reuse_job.py", str(kept[0]), str(parent), "no-keep", "stay") as job:
        assert job.line()["url"] == first["url"]  # reused, and still running (reading, for all we know)
        (entry,) = scan(location)
        assert entry.in_use and [user.pid for user in entry.users] == [job.process.pid]
        assert collect(location, older_than=datetime.timedelta(0)) == []
        job.kill_group()
    (entry,) = scan(location)
    assert not entry.in_use and len(entry.users) == 1  # its record stays, its process is gone
    mark_used(entry.location)  # a new reuse (this process) drops the records of reusers gone
    (entry,) = scan(location)
    assert entry.in_use and [user.pid for user in entry.users] == [os.getpid()]
    assert collect(location, older_than=datetime.timedelta(0)) == []
    users = [p for p in (parent / entry.location.url.rsplit("/", 1)[1]).iterdir() if USER_NAME.match(p.name)]
    for user in users:
        user.unlink()  # as if this process had ended: what was reused long enough ago is collected
    assert [e.location for e in collect(location, older_than=datetime.timedelta(0))] == [entry.location]


def test_the_stable_key_is_the_same_for_the_same_dataframe_and_differs_for_any_change(spark, tmp_path) -> None:
    _write_source(tmp_path / "s", 100)

    def df(limit: int = 10):
        return spark.read.parquet(str(tmp_path / "s")).filter(F.col("id") < limit)

    options = MaterializeOptions()
    key = reuse_key(identify(df(), stable=True), options)
    assert key is not None and key == reuse_key(identify(df(), stable=True), options)
    assert reuse_key(identify(df(20), stable=True), options) != key
    assert reuse_key(identify(df(), stable=True), MaterializeOptions(dtype="float64")) != key
    assert reuse_key(identify(df().select(F.col("id").cast("int")), stable=True), options) != key
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sparkfeed.materialize.__version__", "99.0")  # another sparkfeed
        assert reuse_key(identify(df(), stable=True), options) != key
    _write_source(tmp_path / "s", 101)  # the same path, rewritten
    assert reuse_key(identify(df(), stable=True), options) != key


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda spark: spark.createDataFrame([(1, 2)], "a int, b int"), "LogicalRDD"),
        # An RDD of the rows up to pyspark 4.2, rows in the plan (LocalRelation) from 4.3 on: never reused either way.
        (lambda spark: spark.createDataFrame(pd.DataFrame({"a": [1]})), "LogicalRDD|LocalRelation"),
        (lambda spark: spark.range(5).withColumn("r", F.rand(1)), "non-deterministic"),
        (lambda spark: spark.range(5).withColumn("u", F.udf(lambda x: x + 1, "long")("id")), "PythonUDF"),
        (lambda spark: spark.range(5).mapInPandas(lambda frames: frames, "id long"), "MapInPandas"),
        (lambda spark: spark.range(5).withColumn("t", F.current_timestamp()), "CurrentTimestamp"),
        (lambda spark: spark.range(5).withColumn("d", F.current_date()), "CurrentDate"),
        (lambda spark: spark.range(5).withColumn("db", F.current_database()), "CurrentDatabase"),
        (lambda spark: spark.range(5).withColumn("v", F.version()), "SparkVersion"),
    ],
    ids=["local-rows", "pandas", "rand", "python-udf", "map-in-pandas", "clock", "date", "database", "version"],
)
def test_dataframes_whose_rows_the_plan_does_not_determine_are_never_reused_across_processes(spark, make, why) -> None:
    identity = identify(make(spark), stable=True)
    assert identity.stable is None and re.search(why, identity.unstable)


def test_a_source_that_is_not_files_is_never_reused_across_processes_since_its_changes_leave_no_trace(
    spark, tmp_path
) -> None:
    # A JDBC table (Derby, in this JVM): its rows change with no file and no plan text to show it.
    spark.sparkContext._jvm.java.lang.System.setProperty("derby.stream.error.file", str(tmp_path / "derby.log"))
    url = "jdbc:derby:memory:sparkfeed_reuse;create=true"
    spark.range(3).write.jdbc(url, "T", mode="overwrite")
    table = spark.read.jdbc(url, "T")
    identity = identify(table, stable=True)
    assert identity.stable is None and "its source JDBCRelation" in identity.unstable
    converter = make_spark_converter(table)
    spark.range(5).write.jdbc(url, "T", mode="append")
    assert table.count() == 8  # the same plan, other rows: what a kept cache would have hidden
    # In this process the same DataFrame reuses its cache, as in Petastorm; delete() reads it anew.
    assert make_spark_converter(table).cache_dir_url == converter.cache_dir_url and len(converter) == 3
    converter.delete()
    again = make_spark_converter(table)
    assert again.cache_dir_url != converter.cache_dir_url and len(again) == 8
    again.delete()


def test_the_stable_key_holds_the_settings_that_change_rows_and_not_those_that_tune_execution(spark, tmp_path) -> None:
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    at_noon = pa.array([datetime.datetime(2020, 1, 1, 12)], pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"ts": at_noon, "s": ["x"]}), stamps / "part-0.parquet")

    def key_and_rows(df) -> tuple[str, Any]:
        key = identify(df, stable=True).stable
        assert key is not None
        try:
            return key, df.collect()
        except Exception as error:  # noqa: BLE001 - ANSI mode fails where the legacy mode gives null
            return key, type(error).__name__

    as_text = lambda: spark.read.parquet(str(stamps)).select(F.col("ts").cast("string"))  # noqa: E731
    utc = key_and_rows(as_text())
    with _session_conf(spark, {"spark.sql.session.timeZone": "America/New_York"}):
        new_york = key_and_rows(as_text())
    assert utc[1] != new_york[1] and utc[0] != new_york[0]  # other rows from the same plan text: another key

    as_int = lambda: spark.read.parquet(str(stamps)).select(F.col("s").cast("int"))  # noqa: E731
    with _session_conf(spark, {"spark.sql.ansi.enabled": "true"}):
        ansi = key_and_rows(as_int())
    with _session_conf(spark, {"spark.sql.ansi.enabled": "false"}):
        legacy = key_and_rows(as_int())
    assert legacy[1] != ansi[1] and legacy[0] != ansi[0]

    with _session_conf(spark, {"spark.sql.shuffle.partitions": "7"}):
        assert identify(as_text(), stable=True).stable == utc[0]  # how it runs, not what it gives
    with _session_conf(spark, {"spark.sql.legacy.timeParserPolicy": "LEGACY"}):
        assert identify(as_text(), stable=True).stable != utc[0]  # any other setting: not reused


def test_files_elsewhere_are_fingerprinted_from_sparks_own_listing(spark, tmp_path) -> None:
    # viewfs: a Hadoop filesystem only Spark knows (here a mount of a local directory), as
    # s3a://, abfss:// or hdfs:// are to sparkfeed: their sizes and times come from Spark's listing.
    _write_source(tmp_path / "s", 10)
    config = spark.sparkContext._jsc.hadoopConfiguration()
    config.set("fs.viewfs.mounttable.sparkfeedtest.link./data", (tmp_path / "s").as_uri())
    source = lambda: spark.read.parquet("viewfs://sparkfeedtest/data")  # noqa: E731
    identity = identify(source(), stable=True)
    file = (tmp_path / "s" / "part-0.parquet").stat()
    assert identity.sources == (
        ("viewfs://sparkfeedtest/data/part-0.parquet", file.st_size, file.st_mtime_ns // 10**6 * 10**6),
    )
    assert identity.stable is not None  # reusable across processes, as local files are
    _write_source(tmp_path / "s", 11)  # rewritten in place: Spark lists it anew for a new DataFrame
    again = identify(source(), stable=True)
    assert again.sources != identity.sources and again.stable not in (None, identity.stable)


def test_spark_file_tables_read_as_datasource_v2_are_reused_by_their_files(spark, tmp_path) -> None:
    _write_source(tmp_path / "s", 10)
    with _session_conf(spark, {"spark.sql.sources.useV1SourceList": ""}):
        df = spark.read.parquet(str(tmp_path / "s"))
        assert "RelationV2" in df._jdf.queryExecution().analyzed().toString()  # read as DataSource V2
        key = identify(df, stable=True).stable
        assert key is not None
        _write_source(tmp_path / "s", 11)
        assert identify(spark.read.parquet(str(tmp_path / "s")), stable=True).stable not in (None, key)


def _file_index_class(df) -> str:
    leaf = df._jdf.queryExecution().analyzed().collectLeaves().iterator().next()
    return str(leaf.relation().location().getClass().getName()).rsplit(".", 1)[-1]


def test_catalog_tables_and_streaming_sink_output_are_reused_by_their_files(spark, tmp_path) -> None:
    # Spark's own file indexes besides a directory's: a partitioned catalog table's, and a
    # streaming file sink's (only the files of its committed batches are its rows).
    spark.range(10).withColumn("p", F.col("id") % 2).write.partitionBy("p").option(
        "path", str(tmp_path / "table")
    ).saveAsTable("sparkfeed_reuse_table")
    try:
        table = spark.table("sparkfeed_reuse_table")
        assert _file_index_class(table) == "CatalogFileIndex"
        assert identify(table, stable=True).stable is not None
    finally:
        spark.sql("DROP TABLE sparkfeed_reuse_table")

    _write_source(tmp_path / "in", 10)

    def sink_once() -> str | None:
        query = (
            spark.readStream.schema("id long")
            .parquet(str(tmp_path / "in"))
            .writeStream.format("parquet")
            .option("checkpointLocation", str(tmp_path / "checkpoint"))
            .trigger(availableNow=True)
            .start(str(tmp_path / "sink"))
        )
        query.awaitTermination()
        sink = spark.read.parquet(str(tmp_path / "sink"))
        assert _file_index_class(sink) == "MetadataLogFileIndex"
        return identify(sink, stable=True).stable

    first = sink_once()
    pq.write_table(pa.table({"id": [10, 11]}), tmp_path / "in" / "part-1.parquet")
    assert first is not None and sink_once() not in (None, first)  # a batch committed since: another key


class _ForeignFileIndex:
    """A file index that is not Spark's own, as a table format brings (Delta's, Hudi's), written in
    Python through Py4J: it lists the files of Spark's index it wraps and serves their rows."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def rootPaths(self) -> Any:
        return self.inner.rootPaths()

    def listFiles(self, partition_filters: Any, data_filters: Any) -> Any:
        return self.inner.listFiles(partition_filters, data_filters)

    def inputFiles(self) -> Any:
        return self.inner.inputFiles()

    def refresh(self) -> None:
        self.inner.refresh()

    def sizeInBytes(self) -> int:
        return int(self.inner.sizeInBytes())

    def partitionSchema(self) -> Any:
        return self.inner.partitionSchema()

    def metadataOpsTimeNs(self) -> Any:
        return self.inner.metadataOpsTimeNs()

    def toString(self) -> str:
        return "ForeignFileIndex"

    class Java:
        implements: ClassVar[list[str]] = ["org.apache.spark.sql.execution.datasources.FileIndex"]


def test_files_read_through_a_file_index_not_sparks_own_are_never_reused_across_processes(spark, tmp_path) -> None:
    # A Delta DELETE with deletion vectors hides rows and leaves every data file as it was: a key
    # that sees the files would serve the deleted rows. So only Spark's own file indexes count.
    from pyspark.java_gateway import ensure_callback_server_started
    from pyspark.sql import DataFrame

    _write_source(tmp_path / "s", 10)
    df = spark.read.parquet(str(tmp_path / "s"))
    assert identify(df, stable=True).stable is not None
    ensure_callback_server_started(spark.sparkContext._gateway)
    relation = df._jdf.queryExecution().analyzed().collectLeaves().iterator().next().relation()
    foreign = relation.copy(
        _ForeignFileIndex(relation.location()),
        relation.partitionSchema(),
        relation.dataSchema(),
        relation.bucketSpec(),
        relation.fileFormat(),
        relation.options(),
        spark._jsparkSession,
    )
    through = DataFrame(spark._jsparkSession.baseRelationToDataFrame(foreign), spark)
    assert through.inputFiles() == df.inputFiles() and sorted(through.collect()) == sorted(df.collect())
    identity = identify(through, stable=True)
    assert identity.stable is None
    assert re.search(r"^its source is read through \S*Proxy\S*, a file index not Spark's own", identity.unstable)


def test_keep_keeps_the_cache_past_the_process_and_warns_when_no_process_could_reuse_it(
    spark, tmp_path, caplog
) -> None:
    converter = make_spark_converter(
        spark.range(50).withColumn("x", F.col("id") + 1), cache_dir=str(tmp_path), keep=True
    )
    assert converter.location not in owned_caches  # not deleted at exit
    assert json.loads(Path(converter.location.local_path, MARKER_NAME).read_text())["keep"] is True
    converter.delete()  # its creator may still delete it
    assert not Path(converter.location.local_path).exists()
    with caplog.at_level(logging.WARNING, logger="sparkfeed"):
        local = make_spark_converter(spark.createDataFrame([(1,)], "a int"), cache_dir=str(tmp_path), keep=True)
    assert any("no later process will reuse it: its plan holds LogicalRDD" in r.getMessage() for r in caplog.records)
    local.delete()


def test_keep_after_the_same_dataframe_was_converted_without_it_writes_a_kept_cache(spark, tmp_path) -> None:
    df = spark.range(30).withColumn("x", F.col("id") * 2)
    first = make_spark_converter(df, cache_dir=str(tmp_path))
    kept = make_spark_converter(df, cache_dir=str(tmp_path), keep=True)
    assert kept.cache_dir_url != first.cache_dir_url  # the first is deleted at exit: not the one asked for
    assert kept.location not in owned_caches and first.location in owned_caches
    marker = json.loads(Path(kept.location.local_path, MARKER_NAME).read_text())
    assert marker["keep"] is True and isinstance(marker["key"], str)
    assert make_spark_converter(df, cache_dir=str(tmp_path), keep=True).cache_dir_url == kept.cache_dir_url
    assert make_spark_converter(df, cache_dir=str(tmp_path)).cache_dir_url == kept.cache_dir_url
    assert len(first) == len(kept) == 30  # the first still reads until it is deleted
    first.delete()
    kept.delete()


def test_reuse_and_keep_are_validated(spark) -> None:
    with pytest.raises(ValueError, match=r"reuse='always' is not allowed: it must be one of \('process', 'auto'\)"):
        make_spark_converter(spark.range(3), reuse="always")
    with pytest.raises(ValueError, match=r"keep='yes' is not allowed: it must be a bool"):
        make_spark_converter(spark.range(3), keep="yes")


def _clean_in_another_process(parent: Path, *args: str) -> str:
    """``sparkfeed cache clean`` run as a user would, in a process of its own; its output."""
    done = subprocess.run(
        [sys.executable, "-m", "sparkfeed", "cache", "clean", *args, str(parent)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _before_the_reuse_is_recorded(monkeypatch: pytest.MonkeyPatch, action: Callable[[], object]) -> None:
    """Runs ``action`` once, when this process has found a kept cache and is about to record its reuse.

    Only a pause: the real :func:`~sparkfeed.cache.mark_used` runs right after, so the real code
    of both processes meets at the window a real interleaving would open.
    """
    real = sparkfeed.cache.mark_used
    done: list[Location] = []

    def paused(location: Location) -> None:
        if not done:
            done.append(location)
            action()
        real(location)

    monkeypatch.setattr(sparkfeed.cache, "mark_used", paused)
    monkeypatch.setattr(sparkfeed.converter, "mark_used", paused, raising=False)


@pytest.mark.slow
def test_a_kept_cache_clean_removes_between_its_finding_and_its_reuse_is_converted_anew(
    kept, spark, tmp_path, monkeypatch
) -> None:
    # reuse="auto" found the cache, then `cache clean --older-than` (another process) judged it
    # idle and removed it before the reuse was recorded: the converter read a cache that was gone.
    _, parent, first = _copy(kept, tmp_path)  # the kept cache, for the original source
    cleaned: list[str] = []
    _before_the_reuse_is_recorded(
        monkeypatch, lambda: cleaned.append(_clean_in_another_process(parent, "--older-than", "0s"))
    )
    df = _kept_frame(spark, kept)
    converter = make_spark_converter(df, cache_dir=str(parent), reuse="auto")
    try:
        assert "removed 1 caches" in cleaned[0]
        ids = _ids(converter)
        assert (len(ids), sum(ids)) == (first["rows"], first["id_sum"])
        assert converter.cache_dir_url != first["url"]  # converted anew
    finally:
        converter.delete()
    assert not any(parent.iterdir())  # nothing left of the removed one, not even a record of the reuse


class PausedClean:
    """``sparkfeed cache clean ARGS`` in a process of its own, paused where it calls ``sparkfeed.cache.<hook>``.

    Entering waits for the pause (the real function runs when the block leaves it); ``output``
    is what the clean printed once it ended.
    """

    def __init__(self, hook: str, flags: Path, *args: str, env: dict[str, str] | None = None) -> None:
        flags.mkdir()
        self.flags, self.output = flags, ""
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("reuse_job.py")), "clean", hook, str(flags), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )

    def __enter__(self) -> PausedClean:
        deadline = time.monotonic() + 120
        while not (self.flags / "paused").exists():
            assert self.process.poll() is None, f"the clean ended before its pause:\n{self.process.communicate()}"
            assert time.monotonic() < deadline, "the clean did not reach its pause"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        (self.flags / "go").touch()
        out, err = self.process.communicate(timeout=120)
        assert self.process.returncode == 0, err[-3000:]
        self.output = out


@pytest.mark.slow
def test_a_kept_cache_clean_has_begun_to_remove_is_never_handed_to_a_reuse(kept, spark, tmp_path) -> None:
    # `cache clean --older-than` had looked at the cache's reusers a last time (none) and was
    # about to delete it when reuse="auto" found it complete: the job then read a cache deleted under it.
    _, parent, first = _copy(kept, tmp_path)
    df = _kept_frame(spark, kept)
    clean = PausedClean("delete_cache", tmp_path / "flags", "--older-than", "0s", str(parent))
    with clean:
        converter = make_spark_converter(df, cache_dir=str(parent), reuse="auto")
    try:
        assert "removed 1 caches" in clean.output and converter.cache_dir_url != first["url"]  # converted anew
        ids = _ids(converter)
        assert (len(ids), sum(ids)) == (first["rows"], first["id_sum"])
    finally:
        converter.delete()
    assert not any(parent.iterdir())


@pytest.mark.slow
def test_a_kept_cache_reused_while_clean_decides_is_put_back_whole(kept, spark, tmp_path) -> None:
    # The reuse is recorded after the clean chose the cache, before it took the manifest away:
    # the clean sees the new reader at its last look and leaves the cache as it was.
    _, parent, first = _copy(kept, tmp_path)
    df = _kept_frame(spark, kept)
    clean = PausedClean("_withdraw", tmp_path / "flags", "--older-than", "0s", str(parent))
    with clean:
        converter = make_spark_converter(df, cache_dir=str(parent), reuse="auto")
        assert converter.cache_dir_url == first["url"]  # reused
    assert "removed 0 caches" in clean.output
    ids = _ids(converter)
    assert (len(ids), sum(ids)) == (first["rows"], first["id_sum"])
    (entry,) = scan(Location.parse(str(parent)))
    assert entry.state == "complete" and entry.in_use and entry.withdrawn_by is None
    name = first["url"].rsplit("/", 1)[1]
    assert not (parent / name / "_sparkfeed_withdrawn.json").exists()
