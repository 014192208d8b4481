"""Where caches live, how a complete one is recognised, and when they are deleted.

A cache is a directory of Parquet files plus a manifest, ``_sparkfeed_manifest.json``, that is
written last. No manifest, no cache: a materialization that crashed or was interrupted leaves at
most a directory that no later call will read, and the process that made it removes it.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import dataclasses
import datetime
import json
import os
import tempfile
import threading
import uuid
import warnings
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from sparkfeed.writer import ShapeStats

MANIFEST_NAME = "_sparkfeed_manifest.json"
MANIFEST_FORMAT = 1
CACHE_DIR_CONF = "sparkfeed.cacheDir"
PETASTORM_CACHE_DIR_CONF = "petastorm.spark.converter.parentCacheDirUrl"
CACHE_DIR_ENV = "SPARKFEED_CACHE_DIR"


def default_cache_dir() -> str:
    """The last resort: a directory under the system's temporary directory."""
    return os.path.join(tempfile.gettempdir(), "sparkfeed-cache")


def resolve_cache_dir(explicit: str | None, spark_conf: Callable[[str], str | None] | None) -> str:
    """Picks the parent cache URL: argument, Spark confs, environment, then the temp dir.

    Plain paths become absolute ``file://`` URLs, because on a cluster Spark would read a bare
    path against the default filesystem (often HDFS) while the reader would read it locally.
    """
    candidates = [explicit]
    if spark_conf is not None:
        candidates += [spark_conf(CACHE_DIR_CONF), spark_conf(PETASTORM_CACHE_DIR_CONF)]
    candidates += [os.environ.get(CACHE_DIR_ENV), default_cache_dir()]
    chosen = next(c for c in candidates if c)
    return to_url(chosen)


def to_url(path_or_url: str) -> str:
    """A URL with a scheme; plain paths are made absolute and get ``file://``."""
    if "://" in path_or_url:
        return path_or_url.rstrip("/")
    return "file://" + os.path.abspath(os.path.expanduser(path_or_url))


def filesystem(url: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and path of a URL, or an error that says what would work.

    Raises:
        ValueError: pyarrow cannot open this URL. Spark may still be able to write it, but the
            reader could not read the cache back.
    """
    try:
        fs, path = pafs.FileSystem.from_uri(url)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as error:
        scheme = urlparse(url).scheme
        raise ValueError(
            f"cache directory {url!r}: pyarrow cannot open the scheme {scheme!r} ({error}). The reader "
            "reads the cache with pyarrow, so choose a location both Spark and pyarrow reach: a local or "
            "shared path (file://), or s3://, gs://, hdfs:// where pyarrow has support built in"
        ) from error
    return fs, path


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One Parquet file of a cache: its path relative to the cache root and its row groups' sizes.

    ``packed`` names the list columns this file stores as ``fixed_size_binary``, with their
    per-row shape (see :mod:`sparkfeed.writer`).
    """

    path: str
    row_groups: tuple[int, ...]
    packed: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        """Rows in the file."""
        return sum(self.row_groups)


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Everything a reader needs to know about a cache without opening a Parquet file.

    Attributes:
        files: The Parquet files in a stable order, with their row-group row counts.
        schema: The Arrow schema of the files.
        shapes: For each list column, its min and max length per nesting level.
        options: The materialization options (dtype, codec, row-group size).
        key: The cache key this materialization was made for.
        created_at: ISO time of creation, UTC.
        created_by: Who made it: host, pid, Spark application id, sparkfeed version.
    """

    files: tuple[FileEntry, ...]
    schema: pa.Schema
    shapes: dict[str, ShapeStats]
    options: dict[str, Any]
    key: str = ""
    created_at: str = ""
    created_by: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        """Rows in the whole dataset."""
        return sum(entry.num_rows for entry in self.files)

    def to_json(self) -> str:
        """The manifest file's content."""
        return json.dumps(
            {
                "format": MANIFEST_FORMAT,
                "key": self.key,
                "created_at": self.created_at,
                "created_by": self.created_by,
                "options": self.options,
                "num_rows": self.num_rows,
                "schema": base64.b64encode(self.schema.serialize().to_pybytes()).decode("ascii"),
                "shapes": self.shapes,
                "files": [
                    {
                        "path": f.path,
                        "row_groups": list(f.row_groups),
                        "packed": {k: list(v) for k, v in f.packed.items()},
                    }
                    for f in self.files
                ],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parses a manifest file; refuses formats this version does not know."""
        data = json.loads(text)
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"cache manifest format {data.get('format')!r} is not supported (expected 1)")
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(data["schema"])))
        return cls(
            files=tuple(
                FileEntry(f["path"], tuple(f["row_groups"]), {k: tuple(v) for k, v in f["packed"].items()})
                for f in data["files"]
            ),
            schema=schema,
            shapes={k: [(low, high) for low, high in v] for k, v in data["shapes"].items()},
            options=data["options"],
            key=data["key"],
            created_at=data["created_at"],
            created_by=data["created_by"],
        )


def write_manifest(cache_url: str, manifest: Manifest) -> None:
    """Writes the manifest, the step that makes a cache complete: it must come last."""
    fs, path = filesystem(cache_url)
    target = f"{path}/{MANIFEST_NAME}"
    if isinstance(fs, pafs.LocalFileSystem):
        # Local rename is atomic, so a reader never sees half a manifest.
        staging = f"{path}/.{MANIFEST_NAME}.{uuid.uuid4().hex}"
        with fs.open_output_stream(staging) as stream:
            stream.write(manifest.to_json().encode())
        fs.move(staging, target)
    else:
        # Object stores publish a single PUT atomically.
        with fs.open_output_stream(target) as stream:
            stream.write(manifest.to_json().encode())


def read_manifest(cache_url: str) -> Manifest | None:
    """The manifest of a complete cache, or None when the cache is absent or incomplete."""
    fs, path = filesystem(cache_url)
    try:
        with fs.open_input_stream(f"{path}/{MANIFEST_NAME}") as stream:
            return Manifest.from_json(stream.read().decode())
    except FileNotFoundError:
        return None


def new_cache_url(parent_url: str) -> str:
    """A fresh, unique directory for one materialization: concurrent writers never collide."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{parent_url}/sparkfeed-{stamp}-{uuid.uuid4().hex[:12]}"


def delete_cache(cache_url: str) -> None:
    """Removes a cache directory; a missing one is not an error."""
    fs, path = filesystem(cache_url)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_dir(path)


class _Owned:
    """Caches this process created, removed at interpreter exit (best effort, never raising)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._urls: dict[str, int] = {}
        atexit.register(self.delete_all)

    def add(self, cache_url: str) -> None:
        with self._lock:
            self._urls[cache_url] = os.getpid()

    def discard(self, cache_url: str) -> None:
        with self._lock:
            self._urls.pop(cache_url, None)

    def __contains__(self, cache_url: object) -> bool:
        return cache_url in self._urls

    def delete_all(self) -> None:
        with self._lock:
            # A forked child inherits this table but must not delete its parent's caches.
            urls = [url for url, pid in self._urls.items() if pid == os.getpid()]
            self._urls.clear()
        for url in urls:
            try:
                delete_cache(url)
            except Exception as error:  # noqa: BLE001 - at exit, a warning is all we may do
                warnings.warn(f"sparkfeed could not delete cache {url} at exit: {error}", stacklevel=1)


owned_caches = _Owned()
