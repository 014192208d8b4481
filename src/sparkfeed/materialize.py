"""DataFrame → cached Parquet: normalize types, write with Spark, describe, publish the manifest.

Also the in-process table of what was already materialized, so that converting the same
DataFrame twice costs one write. "The same" means the same analyzed plan (Spark's
``sameResult``), the same options and the same source files: names, sizes and modification
times. Petastorm compared the plan alone, so a DataFrame over files rewritten in place kept
serving the old data; the source fingerprint closes that hole.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import getpass
import hashlib
import inspect
import json
import logging
import os
import posixpath
import re
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sparkfeed import __version__, sparkjob
from sparkfeed.cache import (
    MANIFEST_FORMAT,
    MARKER_NAME,
    FileEntry,
    Manifest,
    create_cache_dir,
    delete_cache,
    is_leftover,
    owned_caches,
    remove_orphans,
    scan,
    write_manifest,
)
from sparkfeed.location import Location
from sparkfeed.options import ConversionRun, MaterializeOptions
from sparkfeed.types import INT96_UNIT, list_depth, normalize_dataframe
from sparkfeed.writer import (
    RESULT_SCHEMA,
    ShapeStats,
    is_list_type,
    list_shape_stats,
    merge_shape_stats,
    partition_writer,
    positional_names,
    ship_by_value,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Materialized:
    """A complete dataset: where it is, its manifest, and the token to delete it if it is ours.

    ``token`` is None for datasets sparkfeed did not create (read in place from a path).
    """

    location: Location
    manifest: Manifest
    token: str | None = None


# --------------------------------------------------------------------------- identity and reuse


@dataclasses.dataclass(frozen=True)
class DataFrameIdentity:
    """What makes two DataFrames "the same" for caching purposes."""

    plan: Any
    """Spark's analyzed plan (a JVM object) in classic Spark, else a plan hash string."""
    sources: tuple[tuple[str, int | None, int | None], ...]
    """(file, size, mtime) of every input file; empty for in-memory DataFrames."""
    stable: str | None = None
    """A digest of the plan that another process computes alike (see :func:`identify`); None when
    the DataFrame must never be reused by another process, for the reason in :attr:`unstable`."""
    unstable: str = ""
    """Why there is no :attr:`stable` digest."""
    schema: str = ""
    """The DataFrame's schema as JSON: column names (with their case), order and types."""
    frame: Any = dataclasses.field(default=None, compare=False, repr=False)
    """Under Spark Connect, the DataFrame itself: the server compares two plans (``sameSemantics``)
    where their hashes agree, since a hash alone is no proof that two plans are the same."""

    def same_as(self, other: DataFrameIdentity) -> bool:
        """Plans compared with Spark's own ``sameResult``, which also compares local data.

        ``sameResult`` compares canonicalized plans, which drop the names of columns: a
        ``select(col('id').alias('a'))`` is the same result as ``alias('b')``, and two columns
        whose names are swapped are too. The schemas must match as well, or the cache would
        serve one column's values under the other's name.

        Under Spark Connect the plans' ``semanticHash`` (taken when each was converted) must
        match, and then the server's ``sameSemantics``: the hash is 32 bits of the canonicalized
        plan, and equal for plans that differ (``id + 4294967297`` and ``id + 8589934594``, whose
        literals Java hashes alike), which served one DataFrame's cache for the other. A source
        file whose size or modification time is unknown is never taken as unchanged: a file
        rewritten in place under its name would serve the old rows.
        """
        if self.sources != other.sources or self.schema != other.schema or not self.sources_known:
            return False
        if isinstance(self.plan, str) or isinstance(other.plan, str):
            return self.plan == other.plan and _same_semantics(self.frame, other.frame)
        return bool(self.plan.sameResult(other.plan))

    @property
    def sources_known(self) -> bool:
        """Whether every source file's size and modification time are known, so that a change shows."""
        return all(size is not None and mtime is not None for _, size, mtime in self.sources)

    @property
    def digest(self) -> str:
        """A short stable digest for the manifest (informative: reuse uses :meth:`same_as`)."""
        text = (self.plan if isinstance(self.plan, str) else self.plan.toString()) + repr(self.sources)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _same_semantics(left: DataFrame | None, right: DataFrame | None) -> bool:
    """Spark Connect's ``sameSemantics`` of two DataFrames: the server's ``sameResult`` of their plans.

    Both plans are analyzed again now (the hashes :meth:`DataFrameIdentity.same_as` compared
    first were taken when each was converted). Any failure (a session since stopped, DataFrames
    of two servers) counts as not the same: the DataFrame is converted again.
    """
    if left is None or right is None:
        return False
    try:
        return bool(left.sameSemantics(right))
    except Exception as error:  # noqa: BLE001 - a comparison that fails never reuses a cache
        log.info("could not compare two DataFrames' plans (%s): converting again", error)
        return False


def identify(df: DataFrame, *, stable: bool = False) -> DataFrameIdentity:
    """The plan and the source-file fingerprint of a DataFrame.

    Args:
        df: The DataFrame.
        stable: Also compute the digest that another process would compute for the same
            DataFrame (for ``reuse="auto"`` and ``keep=True``): Spark's canonicalized plan
            (expression ids normalized), its leaves' classes and schemas, the output schema and
            the source files by name, size and modification time. DataFrames whose rows the plan
            does not determine get none: local data and RDDs (their rows are not in the plan),
            user functions (their code is not in the plan), non-deterministic expressions
            (``rand``, ``uuid``, ...: other rows every time), samples (seeded too: their rows
            depend on how Spark splits the input), streams, sources whose size or
            modification time cannot be read, and any DataFrame under Spark Connect, whose plan
            cannot be inspected from the client.
    """
    jdf = getattr(df, "_jdf", None)
    urls = df.inputFiles()
    sources = _fingerprint(urls, df) if jdf is not None else _fingerprint_on_server(urls, df)
    unknown = [url for url, size, mtime in sources if size is None or mtime is None]
    if unknown:
        log.info(
            "the size or modification time of the source %s cannot be read, so a change to it would not show: "
            "this DataFrame is converted again each time, never reused",
            unknown[0],
        )
    if jdf is None:  # Spark Connect: no JVM handle in this process.
        plan = f"{df.semanticHash()}:{df.schema.json()}"
        unstable = "under Spark Connect the plan cannot be inspected from the client" if stable else ""
        return DataFrameIdentity(plan=plan, sources=sources, unstable=unstable, schema=df.schema.json(), frame=df)
    analyzed = jdf.queryExecution().analyzed()
    schema = analyzed.schema().json()
    if not stable:
        return DataFrameIdentity(plan=analyzed, sources=sources, schema=schema)
    key, unstable = _stable_digest(analyzed, df, sources)
    return DataFrameIdentity(plan=analyzed, sources=sources, stable=key, unstable=unstable, schema=schema)


_NOT_IN_THE_PLAN = ("LocalRelation", "RDD", "UDF", "UDTF", "Python", "InPandas", "InArrow", "Streaming")
"""Plan node and expression classes whose rows or code the plan's text does not hold."""

_CLOCK_OR_SESSION = ("Now", "LocalTimestamp", "SparkVersion")
"""Deterministic expressions whose value is the time, the session or the Spark build, not the plan
(with every class named ``Current...``: ``current_timestamp``, ``current_date``, ``current_user``,
``current_database``, ...): the same plan gives other rows tomorrow, or in another session."""

_SPLIT_DEPENDENT = ("Sample",)
"""Plan nodes whose rows depend on how the input is split into partitions: a sample draws each
partition's rows from its seed and the partition's index, so a seeded ``df.sample`` of the same
files keeps other rows where Spark splits them otherwise (a cluster of other cores, another
``maxPartitionBytes``), which the key leaves out as execution settings."""

_FILE_RELATIONS = ("org.apache.spark.sql.execution.datasources.HadoopFsRelation",)
"""The relations of ``LogicalRelation`` leaves whose rows are their files, which the key fingerprints."""

_SPARK_FILE_INDEXES = (
    "org.apache.spark.sql.execution.datasources.InMemoryFileIndex",
    "org.apache.spark.sql.execution.datasources.CatalogFileIndex",
    "org.apache.spark.sql.execution.streaming.MetadataLogFileIndex",  # Spark 4.0
    "org.apache.spark.sql.execution.streaming.runtime.MetadataLogFileIndex",  # Spark 4.1 on
)
"""Spark's own file indexes (by exact class), which serve every row of the files they list and no
other: a directory's files, a catalog table's, a streaming file sink's committed ones. A table
format brings its own index over the same relation (Delta's ``TahoeLogFileIndex``, Hudi's), and
its rows need not be its files': a Delta ``DELETE`` with deletion vectors hides rows and leaves
every data file as it was, so the key, which sees the files, would serve the deleted rows."""

_FILE_TABLE = "org.apache.spark.sql.execution.datasources.v2.FileTable"
"""The class of Spark's own file tables as DataSource V2 relations (Parquet, ORC, CSV, JSON, text)."""

_IN_THE_PLAN = (
    "org.apache.spark.sql.catalyst.plans.logical.Range",
    "org.apache.spark.sql.catalyst.plans.logical.OneRowRelation",
)
"""Leaves whose rows the plan's text holds whole."""

_EXECUTION_ONLY = (
    "spark.sql.adaptive.",
    "spark.sql.artifact.",
    "spark.sql.autoBroadcastJoinThreshold",
    "spark.sql.codegen.",
    "spark.sql.debug.maxToStringFields",
    "spark.sql.execution.arrow.",
    "spark.sql.files.maxPartitionBytes",
    "spark.sql.files.openCostInBytes",
    "spark.sql.maxPlanStringLength",
    "spark.sql.shuffle.partitions",
    "spark.sql.sources.parallelPartitionDiscovery.",
    "spark.sql.ui.",
    "spark.sql.warehouse.dir",
)
"""Prefixes of SQL settings that change how a plan runs, never its rows: left out of the key
(the warehouse directory also differs with each process's working directory; the two lengths of
a plan's text are lifted while the key's text is written)."""

_RESULT_SETTINGS = ("spark.sql.session.timeZone", "spark.sql.ansi.enabled")
"""SQL settings in the key by their value in effect, set or not: the same plan text casts
timestamps to strings in the session's time zone, and fails or gives nulls by ANSI mode."""


def _stable_digest(analyzed: Any, df: DataFrame, sources: tuple[Any, ...]) -> tuple[str | None, str]:
    """The cross-process digest of a classic DataFrame, or None and why it must not be reused.

    Reuse by another process must never serve rows other than the DataFrame's own, so what may
    be reused is an allowlist, not a list of exceptions: every leaf is files read through one
    of Spark's own file indexes (fingerprinted by name, size and modification time) or rows
    written in the plan (``range``, a ``SELECT`` without ``FROM``). A JDBC table, a table format
    (Delta, Iceberg, Hudi, ...) or any other source can change with no trace in the plan or in
    files the key can see. The key also holds the
    Spark version and the SQL settings in effect that change rows (see :data:`_RESULT_SETTINGS`,
    and every SQL setting the session sets but :data:`_EXECUTION_ONLY`): a session in another
    time zone or ANSI mode computes other rows from the same plan text.
    """
    if analyzed.isStreaming():
        return None, "it is a streaming DataFrame"
    if not analyzed.deterministic():
        return None, "it holds non-deterministic expressions (rand, uuid, monotonically_increasing_id, ...)"
    try:
        classes = {name.rsplit(".", 1)[-1] for name in re.findall(r'"class":"([\w.$]+)"', analyzed.toJSON())}
    except Exception as error:  # noqa: BLE001 - a Py4J error: a plan Spark cannot describe is not reused
        return None, f"Spark cannot describe its plan ({type(error).__name__})"
    opaque = sorted(c for c in classes if any(word in c for word in _NOT_IN_THE_PLAN))
    if opaque:
        return (
            None,
            f"its plan holds {', '.join(opaque)}: local data, an RDD or user code, which the plan does not describe",
        )
    clock = sorted(c for c in classes if c.startswith("Current") or c in _CLOCK_OR_SESSION)
    if clock:
        return (
            None,
            f"its plan holds {', '.join(clock)}: the time, the session or Spark's version, not rows of the plan",
        )
    sampled = sorted(c for c in classes if c in _SPLIT_DEPENDENT)
    if sampled:
        return (
            None,
            f"its plan holds {', '.join(sampled)} (df.sample, randomSplit, TABLESAMPLE), whose rows depend on how "
            "Spark splits the input into partitions (by cores and spark.sql.files.maxPartitionBytes), not only on "
            "its seed",
        )
    unknown = [url for url, size, mtime in sources if size is None or mtime is None]
    if unknown:
        return None, f"the size or modification time of its source {unknown[0]} cannot be read"
    leaves = []
    iterator = analyzed.collectLeaves().iterator()
    while iterator.hasNext():
        leaf = iterator.next()
        unchecked = _unchecked_source(leaf, df)
        if unchecked:
            return None, f"its source {unchecked}"
        leaves.append((leaf.getClass().getName(), leaf.schema().json(), _read_options(leaf)))
    session = df.sparkSession
    # The whole tree: ``toString`` writes 25 fields of a node or an expression at most
    # (``spark.sql.debug.maxToStringFields``), and "... 5 more fields" hid the 26th column's
    # expression, or a ``coalesce``'s 26th argument: DataFrames that differ past it shared a key.
    with _session_conf(session, {_MAX_FIELDS: str(_ALL_FIELDS), _MAX_PLAN_LENGTH: str(_LONGEST_TEXT)}):
        plan = _tree_string(analyzed.canonicalized())
    if re.search(r"\.\.\. \d+ more characters$", plan.rstrip()):
        return None, "its plan's text is cut short by spark.sql.maxPlanStringLength"
    settings = {key: session.conf.get(key) for key in _RESULT_SETTINGS}
    settings.update(
        (key, value)
        for key, value in session.conf.getAll.items()
        if key.startswith("spark.sql.") and not key.startswith(_EXECUTION_ONLY)
    )
    text = json.dumps(
        [
            plan,
            leaves,
            df.schema.json(),
            sources,
            session.version,
            sorted(settings.items()),
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest(), ""


_ALL_FIELDS = 2**31 - 1
"""``maxFields`` for Spark's ``treeString``: every field of every node written out."""

_MAX_FIELDS, _MAX_PLAN_LENGTH = "spark.sql.debug.maxToStringFields", "spark.sql.maxPlanStringLength"
"""The settings that cut a plan's text short, lifted while the key's text is written."""

_LONGEST_TEXT = 2**31 - 16
"""The largest ``spark.sql.maxPlanStringLength`` Spark takes (its default: the longest array it makes)."""


def _tree_string(plan: Any) -> str:
    """A plan's tree, every field written: ``treeString`` of Spark 4 (five arguments) or of Spark 3 (four)."""
    try:  # Spark 4.x
        return str(plan.treeString(False, False, _ALL_FIELDS, False, False))
    except Exception:  # noqa: BLE001 - a Py4J error: no such overload, Spark 3's four arguments then
        return str(plan.treeString(False, False, _ALL_FIELDS, False))


def _unchecked_source(leaf: Any, df: DataFrame) -> str:
    """Why a leaf is neither files Spark's own index lists nor rows in the plan ("its source ..."); "" if it is."""
    name = str(leaf.getClass().getName())
    if name in _IN_THE_PLAN:
        return ""
    index = _file_index(leaf, df)
    if index is not None:
        kind = str(index.getClass().getName())
        if kind in _SPARK_FILE_INDEXES:
            return ""
        return (
            f"is read through {kind.rsplit('.', 1)[-1]}, a file index not Spark's own, whose rows need not be "
            "its files' (a Delta table's deletion vectors hide rows and leave every file as it was)"
        )
    if name.endswith(".LogicalRelation"):
        what = f"{str(leaf.relation().getClass().getName()).rsplit('.', 1)[-1]} (a {name.rsplit('.', 1)[-1]})"
    elif name.endswith(".DataSourceV2Relation"):
        table = leaf.table()
        what = f"{table.name()} ({str(table.getClass().getName()).rsplit('.', 1)[-1]})"
    else:
        what = name.rsplit(".", 1)[-1]
    return f"{what} is not files whose sizes and modification times sparkfeed can check"


_LOCATION_OPTIONS = ("path", "paths")
"""Reader options that name the files, which the key already holds by name, size and time
(left out so that the same files named from another working directory are still reused)."""


def _read_options(leaf: Any) -> list[tuple[str, str]]:
    """The reader options of a file leaf (``header``, ``sep``, ``nullValue``, ``mode``, ...), sorted.

    The plan's text names a file relation by its format alone (``Relation [...] csv``), yet the
    options decide its rows: with the schema given, ``header`` drops the first line and
    ``nullValue`` turns values into nulls with the same files and the same columns. Keys are
    compared as Spark reads them, regardless of case.
    """
    name = str(leaf.getClass().getName())
    pairs: list[tuple[str, str]] = []
    if name.endswith(".LogicalRelation"):
        relation = leaf.relation()
        if str(relation.getClass().getName()) in _FILE_RELATIONS:
            pairs.append(("format", str(relation.fileFormat().getClass().getName())))
            iterator = relation.options().iterator()  # a Scala Map
            while iterator.hasNext():
                pair = iterator.next()
                pairs.append((str(pair._1()).lower(), str(pair._2())))
    elif name.endswith(".DataSourceV2Relation"):
        pairs.append(("format", str(leaf.table().getClass().getName())))
        entries = leaf.options().entrySet().iterator()  # a Java CaseInsensitiveStringMap
        while entries.hasNext():
            entry = entries.next()
            pairs.append((str(entry.getKey()).lower(), str(entry.getValue())))
    return sorted(pair for pair in pairs if pair[0] not in _LOCATION_OPTIONS)


def _file_index(leaf: Any, df: DataFrame) -> Any:
    """The ``FileIndex`` of a plan leaf that reads Spark's file sources (V1 or V2); None for any other leaf."""
    name = str(leaf.getClass().getName())
    if name.endswith(".LogicalRelation"):
        relation = leaf.relation()
        return relation.location() if str(relation.getClass().getName()) in _FILE_RELATIONS else None
    if name.endswith(".DataSourceV2Relation"):
        table = leaf.table()
        jvm = df.sparkSession.sparkContext._jvm
        if jvm is not None and jvm.java.lang.Class.forName(_FILE_TABLE).isInstance(table):
            return table.fileIndex()
    return None


def reuse_key(identity: DataFrameIdentity, options: MaterializeOptions) -> str | None:
    """What a kept cache's marker records and a later process looks for: plan, sources and options together.

    Also sparkfeed's version: a cache written before an upgrade is converted again rather than
    trusted to hold what the new version would write (a fixed conversion bug stays fixed).
    """
    if identity.stable is None:
        return None
    text = json.dumps([MANIFEST_FORMAT, __version__, identity.stable, dataclasses.asdict(options)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _fingerprint(urls: list[str], df: DataFrame | None) -> tuple[tuple[str, int | None, int | None], ...]:
    """Each source file's URL, size and modification time (ns), sorted by URL.

    Local files are looked at now (``os.stat``). Files elsewhere (``s3a://``, ``abfss://``,
    ``hdfs://``, ...) are taken from the listing Spark made when the DataFrame was defined,
    with Spark's own credentials and endpoints: asking the store again from here would cost a
    request per file, and pyarrow would guess the endpoint (AWS's, for ``s3://``, which timed
    out after 6 s a file where AWS is not reachable) and knows no ``s3a://``. Under Spark
    Connect, see :func:`_fingerprint_on_server`.
    """
    local = {"", "file"}
    remote = [url for url in urls if urlparse(url).scheme not in local]
    listed = _listed_by_spark(df) if remote and df is not None else {}
    rows = []
    for url in sorted(urls):
        size = mtime = None
        parsed = urlparse(url)
        if parsed.scheme in local:
            with contextlib.suppress(OSError):  # gone since Spark listed it: the name alone still counts
                stat = os.stat(unquote(parsed.path))
                size, mtime = stat.st_size, stat.st_mtime_ns
        else:
            size, mtime = listed.get(url, (None, None))
        rows.append((url, size, mtime))
    return tuple(rows)


_GLOB = re.compile(r"([\\\[\]{}*?])")
"""The characters Hadoop's paths read as a glob, each escaped with a backslash to name a file literally."""


def _fingerprint_on_server(urls: list[str], df: DataFrame) -> tuple[tuple[str, int | None, int | None], ...]:
    """Under Spark Connect: each source file's URL, size and modification time (ns), as the server sees them.

    The files are the server's, not this client's: a Connect client elsewhere cannot look at
    them (an object store's, or a path of the server's machine), and one it can look at may be
    another file of the same name. Left unknown, a file rewritten in place under its name
    served the old cache, in silence. So the server lists them, in one Spark job that reads no
    file's contents (a ``binaryFile`` read of their metadata only). Where it cannot (a file
    gone since), they stay unknown, and the DataFrame is converted again each time.
    """
    if not urls:
        return ()
    from pyspark.sql import functions as F

    def key(url: str) -> tuple[str, str, str]:  # Spark writes file:/x here and file:///x there
        parsed = urlparse(url)
        return parsed.scheme, parsed.netloc, parsed.path

    listed: dict[tuple[str, str, str], tuple[int, int]] = {}
    try:
        # load() takes Hadoop paths (not percent-encoded), and expands globs: escaped, a [ is a [.
        paths = [_GLOB.sub(r"\\\1", unquote(url)) for url in urls]
        metadata = (
            df.sparkSession.read.format("binaryFile")
            .load(paths)
            .select(
                F.col("_metadata.file_path"),
                F.col("_metadata.file_size"),
                F.unix_micros(F.col("_metadata.file_modification_time")),
            )
        )
        for path, size, micros in metadata.collect():
            listed[key(path)] = (int(size), int(micros) * 1000)
    except Exception as error:  # noqa: BLE001 - unknown files are never reused: a failure costs a conversion only
        log.info("the Spark Connect server could not list the source files: %s", error)
    rows: list[tuple[str, int | None, int | None]] = []
    for url in sorted(urls):
        size, mtime = listed.get(key(url), (None, None))
        rows.append((url, size, mtime))
    return tuple(rows)


def _listed_by_spark(df: DataFrame) -> dict[str, tuple[int, int]]:
    """Size and modification time (ns) of every file Spark listed for the plan's file sources, by URL.

    The URLs are written as ``Dataset.inputFiles`` writes them (``getPath.toUri.toString``).
    """
    listed: dict[str, tuple[int, int]] = {}
    try:
        leaves = df._jdf.queryExecution().analyzed().collectLeaves().iterator()
        while leaves.hasNext():
            index = _file_index(leaves.next(), df)
            files = index.allFiles().iterator() if index is not None else None
            while files is not None and files.hasNext():
                status = files.next()
                listed[str(status.getPath().toUri().toString())] = (
                    int(status.getLen()),
                    int(status.getModificationTime()) * 1_000_000,
                )
    except Exception as error:  # noqa: BLE001 - a Py4J error: the files stay unknown, never reused across processes
        log.debug("could not read Spark's listing of the source files: %s", error)
    return listed


class _Registry:
    """Caches materialized by this process, looked up by identity, options and parent dir."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[tuple[DataFrameIdentity, MaterializeOptions, Location, Materialized]] = []

    def find(self, identity: DataFrameIdentity, options: MaterializeOptions, parent: Location) -> Materialized | None:
        with self._lock:
            for known, known_options, known_parent, done in self._entries:
                if known_options == options and known_parent == parent and known.same_as(identity):
                    return done
        return None

    def add(
        self, identity: DataFrameIdentity, options: MaterializeOptions, parent: Location, done: Materialized
    ) -> None:
        with self._lock:
            self._entries.append((identity, options, parent, done))

    def forget(self, location: Location) -> None:
        with self._lock:
            self._entries = [e for e in self._entries if e[3].location != location]


registry = _Registry()


# --------------------------------------------------------------------------- writing


def materialize(
    df: DataFrame,
    parent: Location,
    options: MaterializeOptions,
    identity: DataFrameIdentity,
    run: ConversionRun | None = None,
) -> Materialized:
    """Writes ``df`` into a new cache directory under ``parent`` and publishes its manifest.

    A DataFrame with array columns is written by Spark tasks with pyarrow (:mod:`sparkfeed.writer`:
    fixed-shape arrays packed, 2x faster to write than Spark's own writer and 6x faster to read);
    one without is written by Spark's own Parquet writer, which measured faster for plain columns
    than the round trip through Python. Any failure, an interrupt included, removes the directory
    before the error propagates; Ctrl-C first cancels the Spark job (:mod:`sparkfeed.sparkjob`).
    On its way it removes the partial caches that killed processes left under ``parent``. A
    kept cache (``run.keep``) is not deleted when this process ends: its marker records the
    DataFrame's reuse key, for later processes (:func:`sparkfeed.cache.find_kept`).
    """
    parent.filesystem  # noqa: B018 - fail before Spark runs anything if the reader could not read it back
    run = run or ConversionRun()
    normalized = normalize_dataframe(df, options.dtype)
    spark = df.sparkSession
    _collect_leftovers(parent)
    location, token = create_cache_dir(parent, key=reuse_key(identity, options), keep=run.keep)
    if not run.keep:
        owned_caches.add(location, token)  # deleted when this process ends
    log.info("writing the DataFrame into a new cache %s%s", location, " (kept after this process)" if run.keep else "")
    started = time.perf_counter()
    try:
        _refuse_a_directory_the_server_does_not_see(spark, location)
        # Spark's own writer measured faster for plain columns on local disk, but reaches object
        # stores only through Hadoop connectors a cluster may lack: elsewhere the tasks write with
        # pyarrow, which reaches whatever the reader reaches.
        if not location.is_local or any(_is_array(field.dataType) for field in normalized.schema.fields):
            manifest = _write_with_tasks(normalized, location, options, identity, spark, run)
        else:
            manifest = _write_with_spark(normalized, location, options, identity, spark, run)
        if location.is_local:
            _apply_umask(location.local_path)
        write_manifest(location, manifest)
    except BaseException:
        with contextlib.suppress(Exception):
            delete_cache(location, token)
        owned_caches.discard(location)
        raise
    log.info(
        "cache %s complete: %d rows in %d files, %.1f s",
        location,
        manifest.num_rows,
        len(manifest.files),
        time.perf_counter() - started,
    )
    return Materialized(location, manifest, token)


def _refuse_a_directory_the_server_does_not_see(spark: SparkSession, location: Location) -> None:
    """Under Spark Connect, refuses a local cache directory that the server does not see.

    The server's tasks write the cache and this process reads it: on another machine (a remote
    Connect server, the default cache directory being this client's temp dir), the write either
    failed in every task with a pyarrow ``FileNotFoundError``, or Spark's writer wrote the whole
    cache into a directory of that name on the server's machine, where nobody removes it, and
    then this client found "no Parquet files" in its own. The directory was just made here
    under a name of its own (a time and a random part), so the server finding it is the server
    seeing this process's files: Spark's analysis of a read of it, which runs no job, says so.

    Raises:
        ValueError: The server finds no such directory, or may not list it.
    """
    if sparkjob.is_classic(spark) or not location.is_local:
        return
    try:
        spark.read.format("binaryFile").load(_GLOB.sub(r"\\\1", location.hadoop_path)).schema  # noqa: B018
    except Exception as error:  # noqa: BLE001 - whatever the server says (PATH_NOT_FOUND, mostly) is the cause shown
        cause = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"the Spark Connect server does not see the cache directory {location} that this process made ({cause}): "
            "the server and this process are on different machines or see different filesystems, or the server "
            "(another user) may not read it. Under Spark "
            "Connect the server's tasks write the cache and this process reads it: pass a cache_dir both reach (an "
            "object store or HDFS URL such as cache_dir='s3://bucket/sparkfeed', or the Spark conf "
            "sparkfeed.cacheDir), or a directory of a filesystem both mount under the same path"
        ) from None


def _collect_leftovers(parent: Location) -> None:
    """Removes partial caches of processes that are gone; points at the other orphans, which stay.

    Only what can never be read is removed (:func:`sparkfeed.cache.is_leftover`): a complete
    cache whose creator was killed may still be read by a job that knows its URL, and a kept or
    damaged one deserves a person's decision, so only ``sparkfeed cache clean`` (or
    :func:`sparkfeed.cache.collect`) removes those. The markers are read once, and the
    manifests and sizes of the orphans alone.
    """
    try:
        orphans = scan(parent, orphans_only=True)  # one look at the markers serves both steps
        remove_orphans([entry for entry in orphans if is_leftover(entry)])
    except (OSError, pa.ArrowException, ValueError, TypeError, OverflowError) as error:  # never fails a conversion
        log.warning("could not look for leftover caches under %s: %s", parent, error)
        return
    orphans = [entry for entry in orphans if not is_leftover(entry)]
    if orphans:
        states = collections.Counter(f"{'kept ' if entry.kept else ''}{entry.state}" for entry in orphans)
        log.warning(
            "%d caches (%s; %.0f MiB) under %s were left by processes that are gone; "
            "`sparkfeed cache clean %s` removes them",
            len(orphans),
            ", ".join(f"{count} {state}" for state, count in sorted(states.items())),
            sum(entry.size_bytes for entry in orphans) / 2**20,
            parent,
            parent.url,
        )


def _is_array(data_type: Any) -> bool:
    return type(data_type).__name__ == "ArrayType"


def _write_with_tasks(
    df: DataFrame,
    location: Location,
    options: MaterializeOptions,
    identity: DataFrameIdentity,
    spark: SparkSession,
    run: ConversionRun,
) -> Manifest:
    fs, root = location.filesystem, location.path
    ship_by_value()
    codec = "none" if options.codec == "uncompressed" else options.codec
    counters = sparkjob.Counters.make(spark)
    writer = partition_writer(
        fs, root, codec, options.row_group_size_bytes, df.columns, (counters.rows, counters.files)
    )
    frame = df.toDF(*positional_names(len(df.columns))).mapInArrow(writer, RESULT_SCHEMA)
    results = sparkjob.run(
        spark, frame.collect, "sparkfeed: writing the cache", progress=run.progress, counters=counters
    )
    manifest = _manifest(results, _logical_schema(df), options, identity, spark)
    _remove_strays(fs, root, {entry.path for entry in manifest.files})
    return manifest


def _write_with_spark(
    df: DataFrame,
    location: Location,
    options: MaterializeOptions,
    identity: DataFrameIdentity,
    spark: SparkSession,
    run: ConversionRun,
) -> Manifest:
    # INT96, Spark's default, is deprecated and reads back as nanoseconds; write microseconds.
    # Dates and times as they are (proleptic Gregorian, what pyarrow reads): a session's LEGACY
    # rebase mode would shift those before 1582 into the Julian calendar, days off when read back.
    written = {
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.parquet.datetimeRebaseModeInWrite": "CORRECTED",
        "spark.sql.parquet.int96RebaseModeInWrite": "CORRECTED",  # no INT96 is written, nor its LEGACY key
    }
    with _session_conf(spark, written):
        writer = (
            df.write.option("parquet.block.size", str(options.row_group_size_bytes))
            .option("compression", options.codec)
            # Append: the directory exists already, holding only the marker that makes it ours.
            .mode("append")
        )
        # Hadoop's form: Spark does not percent-decode, so it gets the decoded path.
        sparkjob.run(
            spark, lambda: writer.parquet(location.hadoop_path), "sparkfeed: writing the cache", progress=run.progress
        )
    # Spark writes at least one file, also for an empty DataFrame, so the footers give the schema.
    return describe(
        location, options=dataclasses.asdict(options), key=identity.digest, created_by=_creator(spark)
    ).manifest


def _apply_umask(root: str) -> None:
    """Gives what Spark wrote the permissions this process's umask asks for.

    Neither writer honours it: Hadoop's local filesystem sets its own (0644 files, 0755
    directories, from its ``fs.permissions.umask-mask`` of 022, read once per cached
    filesystem), and the tasks' pyarrow writer runs in Python workers that took the umask the
    JVM had when it started. While Spark writes, the cache directory itself, made here under
    this process's umask, keeps others out; links are never followed.
    """
    mask = _umask()
    for directory, subdirectories, files in os.walk(root):
        for name, default in [(d, 0o777) for d in subdirectories] + [(f, 0o666) for f in files]:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if not stat.S_ISLNK(info.st_mode):
                os.chmod(path, default & ~mask)


def _umask() -> int:
    """This process's umask, read without changing it where the system allows (changing it races other threads)."""
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _session_conf(spark: SparkSession, values: dict[str, str]) -> Iterator[None]:
    previous = {key: spark.conf.get(key, None) for key in values}
    for key, value in values.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, old in previous.items():
            if old is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, old)


def _logical_schema(df: DataFrame) -> pa.Schema:
    """The Arrow schema of the DataFrame's batches: the cache's logical schema.

    Spark's own mapping, whose signature changed in pyspark 4.3 (a ``timezone`` in place of
    ``timestamp_utc``, with no default for timestamps): timestamps are UTC instants either way.
    """
    from pyspark.sql.pandas.types import to_arrow_schema

    convert: Callable[..., pa.Schema] = to_arrow_schema  # typed by whichever pyspark is installed
    utc = {"timezone": "UTC"} if "timezone" in inspect.signature(convert).parameters else {"timestamp_utc": True}
    return convert(df.schema, **utc)


def _manifest(
    results: list[Any],
    schema: pa.Schema,
    options: MaterializeOptions,
    identity: DataFrameIdentity,
    spark: SparkSession,
) -> Manifest:
    files = sorted(
        (
            FileEntry(
                row["path"],
                tuple(json.loads(row["row_groups"])),
                {name: tuple(shape) for name, shape in json.loads(row["packed"]).items()},
                size=int(row["size"]),
            )
            for row in results
        ),
        key=lambda entry: entry.path,
    )
    parts: dict[str, list[ShapeStats]] = {}
    for row in results:
        for name, stats in json.loads(row["shapes"]).items():
            parts.setdefault(name, []).append([(low, high) for low, high in stats])
    shapes = {name: merge_shape_stats(part) for name, part in parts.items()}
    for field in schema:  # list columns of an empty DataFrame
        if is_list_type(field.type) and field.name not in shapes:
            shapes[field.name] = [(None, None)] * list_depth(field.type)
    return Manifest(
        files=tuple(files),
        schema=schema,
        shapes=shapes,
        options=dataclasses.asdict(options),
        key=identity.digest,
        created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        created_by=_creator(spark),
    )


def _remove_strays(fs: pafs.FileSystem, root: str, keep: set[str]) -> None:
    """Deletes files of failed or speculative task attempts: only the manifest's files stay."""
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if info.type == pafs.FileType.File and info.base_name not in keep and info.base_name != MARKER_NAME:
            fs.delete_file(info.path)


def _creator(spark: SparkSession | None) -> dict[str, Any]:
    app_id = None
    if spark is not None:
        with contextlib.suppress(Exception):
            app_id = spark.conf.get("spark.app.id", None)
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "user": _user(),
        "spark_app_id": app_id,
        "sparkfeed": __version__,
    }


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def _local_shape_stats(fs: pafs.FileSystem, root: str, files: list[str], names: list[str]) -> dict[str, ShapeStats]:
    """Array shapes of Parquet that sparkfeed did not write, scanned here with pyarrow."""
    parts: dict[str, list[ShapeStats]] = {name: [] for name in names}
    for relative in files:
        with fs.open_input_file(f"{root}/{relative}") as handle:
            parquet = pq.ParquetFile(handle, coerce_int96_timestamp_unit=INT96_UNIT)
            for batch in parquet.iter_batches(columns=names, batch_size=65536):
                for name in names:
                    parts[name].append(list_shape_stats(batch.column(name)))
    return {name: merge_shape_stats(part) for name, part in parts.items()}


# --------------------------------------------------------------------------- describing


def describe(
    location: Location,
    *,
    options: dict[str, Any],
    key: str = "",
    created_by: dict[str, Any] | None = None,
) -> Materialized:
    """Builds the manifest of a Parquet dataset from its footers; list columns' shapes are scanned here.

    Files must agree on their columns' types, up to Arrow's lossless widening (a null column
    takes the other files' type, integers of one signedness the widest width, floats the widest
    precision); anything else is refused naming the two files, since casting an int64 5 to the
    first file's bool, or the string '1e3' to a float, would serve wrong values without a word.
    Hive-style directories (``year=2024/``) add their partition columns; pandas' index columns
    (``__index_level_0__``) are not features and are left out.

    Args:
        location: The dataset directory or single file.
        options: Recorded materialization options.
        key: Recorded cache key.
        created_by: Recorded creator.

    Raises:
        FileNotFoundError: Nothing is there.
        ValueError: No Parquet file, a file that is not Parquet, or files that disagree.
    """
    fs, root = location.filesystem, location.path
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no Parquet dataset at {location}")
    if info.type == pafs.FileType.File:
        root, names = posixpath.dirname(root), [info.base_name]
    else:
        selector = pafs.FileSelector(root, recursive=True)
        listed = [_relative(i.path, root) for i in fs.get_file_info(selector) if i.type == pafs.FileType.File]
        names = sorted(n for n in listed if not any(part.startswith(("_", ".")) for part in n.split("/")))
        _refuse_mixed_depths(names, listed, location)
    if not names:
        raise ValueError(f"no Parquet files under {location}")

    def footer(relative: str) -> tuple[pq.FileMetaData, pa.Schema, int]:
        try:
            with fs.open_input_file(f"{root}/{relative}") as handle:
                parquet = pq.ParquetFile(handle, coerce_int96_timestamp_unit=INT96_UNIT)
                return parquet.metadata, parquet.schema_arrow, handle.size()
        except (OSError, pa.ArrowException) as error:
            raise ValueError(
                f"{relative} under {location} is not a Parquet file ({error}); remove it, or point at a "
                "directory that holds Parquet files only (names starting with '_' or '.' are skipped)"
            ) from error

    with ThreadPoolExecutor(max_workers=8) as pool:
        described = list(pool.map(footer, names))
    footers = [md for md, _, _ in described]
    schemas = [_feature_schema(schema) for _, schema, _ in described]
    schema = _unified_schema(names, schemas, location)
    partitions = _hive_partitions(names, location)
    if partitions is not None:
        fields = partitions[0]
        clash = [f.name for f in fields if f.name in schema.names]
        if clash:
            raise ValueError(f"{location}: partition column(s) {clash} are also columns of the files")
        schema = pa.schema([*schema, *fields])
    entries = tuple(
        FileEntry(
            name,
            tuple(md.row_group(i).num_rows for i in range(md.num_row_groups)),
            partition={} if partitions is None else partitions[1][index],
            size=size,
        )
        for index, (name, (md, _, size)) in enumerate(zip(names, described, strict=True))
    )
    _refuse_julian_dates(fs, root, names, footers, location)
    depths = {f.name: list_depth(f.type) for f in schema if is_list_type(f.type)}
    measured: dict[str, ShapeStats] = {}
    if depths:
        measured = _local_shape_stats(fs, root, names, list(depths))
    if info.type == pafs.FileType.File:
        location = location.parent
    return Materialized(
        location,
        Manifest(
            files=entries,
            schema=schema,
            shapes=measured,
            options=options,
            key=key,
            created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            created_by=created_by or _creator(None),
        ),
    )


_JULIAN_BEFORE = {"date": datetime.date(1582, 10, 15), "timestamp": datetime.datetime(1900, 1, 1)}
"""Where Spark's LEGACY files may differ from their values: dates before the Gregorian calendar,
and timestamps before 1900 (Spark's own bound for them: a time zone's rebase ends by then)."""


def _refuse_julian_dates(
    fs: pafs.FileSystem, root: str, names: list[str], footers: list[pq.FileMetaData], location: Location
) -> None:
    """Refuses files Spark wrote in its LEGACY calendar mode that hold dates or times it would shift.

    Spark 2 wrote dates and timestamps in the hybrid Julian calendar, and Spark 3 and 4 do with
    ``datetimeRebaseModeInWrite`` or ``int96RebaseModeInWrite`` set to LEGACY (their footer says
    so, or its Spark version is below 3). Spark rebases such values when it reads them; pyarrow
    does not, so 1500-01-01 came out as 1500-01-10, in silence. Only such files' date and
    timestamp columns are read here, once, and only values before :data:`_JULIAN_BEFORE` differ.

    Raises:
        ValueError: A LEGACY file holds such a value; the message says how to read it.
    """
    for name, md in zip(names, footers, strict=True):
        meta = md.metadata or {}
        version = meta.get(b"org.apache.spark.version", b"").decode(errors="replace")
        spark2 = version.split(".")[0].isdigit() and int(version.split(".")[0]) < 3
        # Each key covers its own columns: INT96 timestamps, or dates and the other timestamps.
        legacy_int96 = spark2 or b"org.apache.spark.legacyINT96" in meta
        legacy_other = spark2 or b"org.apache.spark.legacyDateTime" in meta
        if not legacy_int96 and not legacy_other:
            continue
        physical = {md.schema.column(i).path: md.schema.column(i).physical_type for i in range(md.num_columns)}
        kinds = {}
        for field in md.schema.to_arrow_schema():
            int96 = physical.get(field.name) == "INT96"
            if pa.types.is_date(field.type) and legacy_other:
                kinds[field.name] = "date"
            elif pa.types.is_timestamp(field.type) and (legacy_int96 if int96 else legacy_other):
                kinds[field.name] = "timestamp"
        if not kinds:
            continue
        with fs.open_input_file(f"{root}/{name}") as handle:
            table = pq.ParquetFile(handle, coerce_int96_timestamp_unit=INT96_UNIT).read(columns=list(kinds))
        for column, kind in kinds.items():
            values = table.column(column)
            if kind == "timestamp":
                values = values.cast(pa.timestamp("us", tz=values.type.tz))
            early = pc.min(values)
            if early.is_valid and pc.less(early, pa.scalar(_JULIAN_BEFORE[kind], values.type)).as_py():
                raise ValueError(
                    f"{name} under {location} was written by Spark {version or '(version unknown)'} in its LEGACY "
                    f"calendar mode (hybrid Julian), and its column {column!r} holds {early.as_py()}, before "
                    f"{_JULIAN_BEFORE[kind]}: Spark shifts such values when it reads them, and pyarrow does not. "
                    f"Convert it through Spark instead: make_spark_converter(spark.read.parquet({location.url!r}))"
                )


def _relative(path: str, root: str) -> str:
    """A listed file's path below the root; filesystems differ on a leading slash (fsspec adds one)."""
    inner, top = path.lstrip("/"), root.strip("/")
    return inner[len(top) + 1 :] if top and inner.startswith(top + "/") else inner


_PANDAS_INDEX = re.compile(r"^__index_level_\d+__$")


def _feature_schema(schema: pa.Schema) -> pa.Schema:
    """A file's columns less pandas' stored index, without metadata.

    The index is what the file's pandas metadata names as one (``index_columns``), by pandas'
    name for an unnamed index: a column of that name in a file pandas did not write, as
    Spark's, is the user's, and was dropped in silence.
    """
    try:
        index = schema.pandas_metadata.get("index_columns", []) if schema.pandas_metadata else []
    except (ValueError, AttributeError):  # metadata that is not pandas' JSON: nothing is an index
        index = []
    stored = {name for name in index if isinstance(name, str) and _PANDAS_INDEX.match(name)}
    return pa.schema([f for f in schema.remove_metadata() if f.name not in stored])


def _widened(left: pa.DataType, right: pa.DataType) -> pa.DataType | None:
    """The type both files' values fit into without loss, or None when there is none."""
    if left == right:
        return left
    if pa.types.is_null(left) or pa.types.is_null(right):
        return right if pa.types.is_null(left) else left
    integers = pa.types.is_integer(left) and pa.types.is_integer(right)
    if integers and pa.types.is_signed_integer(left) == pa.types.is_signed_integer(right):
        return left if left.bit_width >= right.bit_width else right
    if pa.types.is_floating(left) and pa.types.is_floating(right):
        return left if left.bit_width >= right.bit_width else right
    return None


def _unified_schema(names: list[str], schemas: list[pa.Schema], location: Location) -> pa.Schema:
    unified = schemas[0]
    owner = dict.fromkeys(unified.names, names[0])  # which file decided each column's type
    for name, schema in zip(names[1:], schemas[1:], strict=True):
        if set(schema.names) != set(unified.names):
            extra = sorted(set(schema.names) ^ set(unified.names))
            raise ValueError(
                f"the files of {location} do not have the same columns: {names[0]} and {name} differ in "
                f"{extra}; rewrite the dataset with one schema, or read the files as separate datasets"
            )
        fields = []
        for field in unified:
            other = schema.field(field.name).type
            widened = _widened(field.type, other)
            if widened is None:
                raise ValueError(
                    f"the files of {location} disagree on column {field.name!r}: {owner[field.name]} has "
                    f"{field.type}, {name} has {other}, and one cannot hold the other's values without loss; "
                    "rewrite the dataset with one type for that column (e.g. df.withColumn(..., col.cast(...)))"
                )
            if widened != field.type:
                owner[field.name] = name
            fields.append(pa.field(field.name, widened))
        unified = pa.schema(fields)
    return unified


_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def _refuse_mixed_depths(names: list[str], listed: list[str], location: Location) -> None:
    """Refuses files at more than one depth: which of them make the dataset is a guess.

    Spark reads one level (the files beside others only, or only the partition directories'),
    pyarrow every file; a sparkfeed cache written inside the dataset's directory (as an older
    version allowed) would add its rows to the dataset's. Hive partitions of one set of keys
    put every file at one depth.
    """
    depths = {name.count("/") for name in names}
    if len(depths) < 2:
        return
    shallow = next(name for name in names if name.count("/") == min(depths))
    deep = next(name for name in names if name.count("/") == max(depths))
    caches = sorted(
        directory
        for directory in {posixpath.dirname(name) for name in listed if posixpath.basename(name) == MARKER_NAME}
        if directory and any(name.startswith(f"{directory}/") for name in names)
    )
    ours = (
        f"; {caches[0]} is a sparkfeed cache, not part of the dataset: remove it (sparkfeed cache rm "
        f"{location.child(*caches[0].split('/'))}) or move it out"
        if caches
        else ""
    )
    raise ValueError(
        f"the Parquet files of {location} lie at different depths ({shallow} and {deep}), so which of them make the "
        "dataset is a guess (Spark reads one level of them, pyarrow every file): point at the directory that holds "
        f"the dataset's files, or move the others out{ours}"
    )


def _hive_partitions(names: list[str], location: Location) -> tuple[list[pa.Field], list[dict[str, Any]]] | None:
    """Partition columns of ``key=value`` directories, typed int64 when every value is an integer."""
    keyed = [[part.split("=", 1) for part in posixpath.dirname(name).split("/") if "=" in part] for name in names]
    if not any(keyed):
        return None
    keys = [tuple(key for key, _ in parts) for parts in keyed]
    if len(set(keys)) != 1:
        raise ValueError(
            f"the files of {location} sit under different partition directories ({sorted(set(keys))}); "
            "a hive-partitioned dataset has the same partition keys above every file"
        )
    raw = [{key: unquote(value) for key, value in parts} for parts in keyed]
    fields, values = [], [dict[str, Any]() for _ in names]
    for key in keys[0]:
        column = [None if row[key] == _HIVE_NULL else row[key] for row in raw]
        integral = all(v is None or re.fullmatch(r"[+-]?\d+", v) for v in column)
        fields.append(pa.field(key, pa.int64() if integral else pa.string()))
        for row, value in zip(values, column, strict=True):
            row[key] = int(value) if integral and value is not None else value
    return fields, values
