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
import shutil
import socket
import stat
import tempfile
import threading
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from sparkfeed.location import Location
from sparkfeed.writer import ShapeStats

MANIFEST_NAME = "_sparkfeed_manifest.json"
MANIFEST_FORMAT = 1
CACHE_DIR_CONF = "sparkfeed.cacheDir"
PETASTORM_CACHE_DIR_CONF = "petastorm.spark.converter.parentCacheDirUrl"
CACHE_DIR_ENV = "SPARKFEED_CACHE_DIR"


def default_cache_dir() -> str:
    """The last resort: a directory under the system's temporary directory."""
    return os.path.join(tempfile.gettempdir(), "sparkfeed-cache")


def resolve_cache_dir(explicit: str | None, spark_conf: Callable[[str], str | None] | None) -> Location:
    """Picks the parent cache location: argument, Spark confs, environment, then the temp dir.

    Plain paths become absolute local locations, because on a cluster Spark would read a bare
    path against the default filesystem (often HDFS) while the reader would read it locally.
    """
    candidates = [explicit]
    if spark_conf is not None:
        candidates += [spark_conf(CACHE_DIR_CONF), spark_conf(PETASTORM_CACHE_DIR_CONF)]
    candidates += [os.environ.get(CACHE_DIR_ENV), default_cache_dir()]
    chosen = next(c for c in candidates if c)
    return Location.parse(chosen)


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One Parquet file of a cache: its path relative to the cache root and its row groups' sizes.

    ``packed`` names the list columns this file stores as ``fixed_size_binary``, with their
    per-row shape (see :mod:`sparkfeed.writer`). ``partition`` holds the values of a
    hive-partitioned dataset's partition columns (``year=2024/``), which the file itself lacks.
    """

    path: str
    row_groups: tuple[int, ...]
    packed: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    partition: dict[str, Any] = dataclasses.field(default_factory=dict)

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
                        **({"partition": f.partition} if f.partition else {}),
                    }
                    for f in self.files
                ],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parses a manifest file; refuses formats this version does not know.

        Raises:
            ValueError, KeyError, TypeError: The text is not a whole manifest (see
                :func:`read_manifest`, which reports them as one error).
        """
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"cache manifest format {found!r} is not supported (expected {MANIFEST_FORMAT})")
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(data["schema"])))
        files = tuple(
            FileEntry(
                str(f["path"]),
                tuple(int(rows) for rows in f["row_groups"]),
                {k: tuple(int(n) for n in v) for k, v in f["packed"].items()},
                dict(f.get("partition", {})),
            )
            for f in data["files"]
        )
        if any(rows < 0 for entry in files for rows in entry.row_groups) or sum(e.num_rows for e in files) != int(
            data["num_rows"]
        ):
            raise ValueError("the files' row counts do not add up to the manifest's num_rows")
        return cls(
            files=files,
            schema=schema,
            shapes={k: [(low, high) for low, high in v] for k, v in data["shapes"].items()},
            options=data["options"],
            key=data["key"],
            created_at=data["created_at"],
            created_by=data["created_by"],
        )


class CorruptManifestError(ValueError):
    """A manifest file that exists but cannot be parsed: a torn write, or not ours."""


def write_manifest(location: Location, manifest: Manifest) -> None:
    """Writes the manifest, the step that makes a cache complete: it must come last."""
    fs, path = location.filesystem, location.path
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


def read_manifest(location: Location) -> Manifest | None:
    """The manifest of a complete cache, or None when the cache is absent or incomplete.

    Raises:
        CorruptManifestError: A manifest is there but cannot be read: the message names it.
    """
    fs, path = location.filesystem, location.path
    try:
        with fs.open_input_stream(f"{path}/{MANIFEST_NAME}") as stream:
            text = stream.read()
    except (FileNotFoundError, NotADirectoryError):  # nothing there, or a single file
        return None
    try:
        return Manifest.from_json(text.decode())
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, pa.ArrowException) as error:
        raise CorruptManifestError(
            f"the manifest {location.child(MANIFEST_NAME)} cannot be read ({type(error).__name__}: {error})"
        ) from error


# --------------------------------------------------------------------------- what is ours

MARKER_NAME = "_sparkfeed_cache.json"
"""Written into every cache directory when it is created, before anything else."""


def create_cache_dir(parent: Location) -> tuple[Location, str]:
    """A fresh, unique directory for one materialization, marked as sparkfeed's.

    Returns the directory and the token written into its marker: only a holder of the token
    (the converter this process made, and its pickled copies) may delete it. Locally the
    directory is created exclusively, so it cannot be one that existed before; on object
    stores, where directories do not exist, the prefix must hold nothing yet.
    """
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    location = parent.child(f"sparkfeed-{stamp}-{uuid.uuid4().hex[:12]}")
    token = uuid.uuid4().hex
    fs, path = location.filesystem, location.path
    if location.is_local:
        os.makedirs(parent.local_path, exist_ok=True)
        os.mkdir(path)  # FileExistsError rather than writing into a directory that is not ours
    elif fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        raise FileExistsError(f"{location} already holds objects; sparkfeed writes caches only into new prefixes")
    else:
        fs.create_dir(path, recursive=True)
    marker = {"sparkfeed": True, "token": token, "pid": os.getpid(), "host": socket.gethostname()}
    try:
        with fs.open_output_stream(f"{path}/{MARKER_NAME}") as stream:
            stream.write(json.dumps(marker).encode())
    except BaseException:
        if location.is_local:
            with contextlib.suppress(OSError):
                os.rmdir(path)  # empty: it cannot hold anything but what we just failed to write
        raise
    return location, token


class NotOursError(ValueError):
    """A directory that sparkfeed was asked to delete but did not create."""


DeleteDirHandler = Callable[[str], object]
"""Deletes the directory at a URL; see :func:`register_delete_dir_handler`."""

_delete_dir_handler: DeleteDirHandler | None = None


def register_delete_dir_handler(handler: DeleteDirHandler | None) -> None:
    """Petastorm's hook: ``handler(url)`` deletes cache directories instead of sparkfeed's own code.

    For storage where a recursive delete through pyarrow is not the way to remove a directory:
    a store with its own tool or API (a trash, soft delete, a lifecycle rule), or a site that
    logs every removal. The handler decides only *how* a cache is deleted, never *whether*:
    sparkfeed calls it only for a directory that passed the checks of :func:`delete_cache`
    (a cache this process created, still holding its marker and token), so a dataset read in
    place or anything else that is not sparkfeed's is never handed to it. It serves every
    deletion: :meth:`SparkDatasetConverter.delete`, the cleanup at interpreter exit (where an
    exception it raises becomes a warning) and the removal of a failed write.

    Args:
        handler: Called with the cache's URL, as ``SparkDatasetConverter.cache_dir_url`` shows
            it (percent-encoded); it must remove the directory and everything in it. None
            restores sparkfeed's own deletion, as in Petastorm.

    Raises:
        ValueError: ``handler`` is neither callable nor None.
    """
    global _delete_dir_handler
    if handler is not None and not callable(handler):
        raise ValueError(f"handler={handler!r} is not allowed: it must be a function of the directory URL, or None")
    _delete_dir_handler = handler


def delete_cache(location: Location, token: str) -> None:
    """Removes a cache directory that this process created; a missing one is not an error.

    It must hold the marker written by :func:`create_cache_dir` with this token, and locally
    it must be a real directory, not a symbolic link: the removal never follows a link out of
    the cache (``shutil.rmtree`` unlinks links inside it and does not descend into them). A
    handler given to :func:`register_delete_dir_handler` then removes it instead, if there is one.

    Raises:
        NotOursError: The directory is not a sparkfeed cache made with this token; nothing
            was deleted.
    """
    fs, path = location.filesystem, location.path
    if location.is_local:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(info.st_mode):
            raise NotOursError(f"not deleting {path}: it is not a directory (a symbolic link or a file)")
    elif fs.get_file_info(path).type == pafs.FileType.NotFound and not fs.get_file_info(
        pafs.FileSelector(path, allow_not_found=True)
    ):
        return
    if _marker_token(location) != token:
        raise NotOursError(
            f"not deleting {location}: it does not hold the marker sparkfeed wrote when it created this cache, "
            "so it is not (or no longer) sparkfeed's"
        )
    handler = _delete_dir_handler
    if handler is not None:
        handler(location.url)
    elif location.is_local:
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            fs.delete_dir(path)


def _marker_token(location: Location) -> str | None:
    fs, path = location.filesystem, location.path
    marker = f"{path}/{MARKER_NAME}"
    try:
        if location.is_local and not stat.S_ISREG(os.lstat(marker).st_mode):
            return None
        with fs.open_input_stream(marker) as stream:
            data = json.loads(stream.read().decode())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    token = data.get("token") if isinstance(data, dict) else None
    return token if isinstance(token, str) else None


class _Owned:
    """Caches this process created, removed at interpreter exit (best effort, never raising)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._caches: dict[Location, tuple[str, int]] = {}
        atexit.register(self.delete_all)

    def add(self, location: Location, token: str) -> None:
        with self._lock:
            self._caches[location] = (token, os.getpid())

    def discard(self, location: Location) -> None:
        with self._lock:
            self._caches.pop(location, None)

    def __contains__(self, location: object) -> bool:
        return location in self._caches

    def delete_all(self) -> None:
        with self._lock:
            # A forked child inherits this table but must not delete its parent's caches.
            caches = [(loc, token) for loc, (token, pid) in self._caches.items() if pid == os.getpid()]
            self._caches.clear()
        for location, token in caches:
            try:
                delete_cache(location, token)
            except Exception as error:  # noqa: BLE001 - at exit, a warning is all we may do
                warnings.warn(f"sparkfeed could not delete cache {location} at exit: {error}", stacklevel=1)


owned_caches = _Owned()
