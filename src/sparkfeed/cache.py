"""Where caches live, how a complete one is recognised, and when they are deleted.

A cache is a directory of Parquet files plus a manifest, ``_sparkfeed_manifest.json``, that is
written last. No manifest, no cache: a materialization that crashed or was interrupted leaves at
most a directory that no later call will read, and the process that made it removes it.

Every cache directory also holds a marker, written first, that names its creator (host, pid and
start time: :class:`~sparkfeed.owner.Owner`). A process killed with SIGKILL cannot clean up, so
what it leaves is recognised by its marker: :func:`scan` lists a parent directory's caches with
their creators' liveness, and :func:`collect` removes those whose creator is gone, never one
whose creator may still run.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import uuid
import warnings
from collections.abc import Callable, Iterable
from typing import Any, Literal

import pyarrow as pa
import pyarrow.fs as pafs

from sparkfeed.lifecycle import at_exit, cover_sigterm
from sparkfeed.location import Location
from sparkfeed.owner import Liveness, Owner
from sparkfeed.writer import ShapeStats

log = logging.getLogger(__name__)

MANIFEST_NAME = "_sparkfeed_manifest.json"
MANIFEST_FORMAT = 1
RAGGED_MANIFEST_FORMAT = 2
"""The format of a manifest whose files pack arrays of varying length as ``binary`` (a packed
shape starting with ``-1``, see :mod:`sparkfeed.writer`): written only then, so that an older
sparkfeed, which would not know how to unpack them, refuses the cache instead of misreading it."""
CACHE_DIR_CONF = "sparkfeed.cacheDir"
PETASTORM_CACHE_DIR_CONF = "petastorm.spark.converter.parentCacheDirUrl"
CACHE_DIR_ENV = "SPARKFEED_CACHE_DIR"


def default_cache_dir() -> str:
    """The last resort: this user's own directory under the system's temporary directory.

    Per user (``sparkfeed-<uid>``), since a shared name in ``/tmp`` lets another user create it
    first, or plant a link there, and read or replace the caches; see :func:`private_dir`.
    """
    user = os.getuid() if hasattr(os, "getuid") else _login()
    return os.path.join(tempfile.gettempdir(), f"sparkfeed-{user}")


def _login() -> str:
    import getpass

    return re.sub(r"[^A-Za-z0-9_.-]", "_", getpass.getuser())


def private_dir(path: str) -> str:
    """Creates ``path`` readable by this user only (0700), or checks that the existing one is safe.

    Raises:
        PermissionError: It is a symbolic link, not a directory, owned by another user, or
            writable by other users: someone else could then read, replace or remove the caches.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    advice = "; pass cache_dir=, or set SPARKFEED_CACHE_DIR or the Spark conf sparkfeed.cacheDir, to use another"
    if stat.S_ISLNK(info.st_mode):
        raise PermissionError(
            f"the default cache directory {path} is a symbolic link, which sparkfeed does not follow{advice}"
        )
    if not stat.S_ISDIR(info.st_mode):
        raise PermissionError(f"the default cache directory {path} is not a directory{advice}")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise PermissionError(
            f"the default cache directory {path} belongs to user id {info.st_uid}, not to this one "
            f"({os.getuid()}){advice}"
        )
    if info.st_mode & 0o022:
        raise PermissionError(
            f"the default cache directory {path} is writable by other users (mode {stat.S_IMODE(info.st_mode):o}): "
            f"run chmod 700 {path}{advice}"
        )
    return path


def resolve_cache_dir(explicit: str | None, spark_conf: Callable[[str], str | None] | None) -> Location:
    """Picks the parent cache location: argument, Spark confs, environment, then this user's temp dir.

    Plain paths become absolute local locations, because on a cluster Spark would read a bare
    path against the default filesystem (often HDFS) while the reader would read it locally.
    The default directory is created private to this user (see :func:`private_dir`).
    """
    candidates = [explicit]
    if spark_conf is not None:
        candidates += [spark_conf(CACHE_DIR_CONF), spark_conf(PETASTORM_CACHE_DIR_CONF)]
    candidates += [os.environ.get(CACHE_DIR_ENV)]
    chosen = next((c for c in candidates if c), None)
    if chosen is None:
        chosen = private_dir(default_cache_dir())
        log.debug("no cache directory configured: using %s", chosen)
    return Location.parse(chosen)


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One Parquet file of a cache: its path relative to the cache root and its row groups' sizes.

    ``packed`` names the list columns this file stores as ``fixed_size_binary``, with their
    per-row shape, or as ``binary`` (arrays of varying length), whose shape starts with ``-1``
    (see :mod:`sparkfeed.writer`). ``partition`` holds the values of a
    hive-partitioned dataset's partition columns (``year=2024/``), which the file itself lacks.
    ``size`` is the file's length in bytes when the manifest was made (None in manifests made
    before it was recorded): with the row groups, what a reader checks the file against, so that
    a file replaced since (on a store, by a person or a lifecycle rule) is refused, not read by
    the manifest's counts as the cache's rows.
    """

    path: str
    row_groups: tuple[int, ...]
    packed: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    partition: dict[str, Any] = dataclasses.field(default_factory=dict)
    size: int | None = None

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

    @property
    def format(self) -> int:
        """The manifest's format: :data:`RAGGED_MANIFEST_FORMAT` when a file packs varying lengths."""
        ragged = any(shape and shape[0] < 0 for entry in self.files for shape in entry.packed.values())
        return RAGGED_MANIFEST_FORMAT if ragged else MANIFEST_FORMAT

    def to_json(self) -> str:
        """The manifest file's content."""
        return json.dumps(
            {
                "format": self.format,
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
                        **({"size": f.size} if f.size is not None else {}),
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
        if not isinstance(data, dict) or data.get("format") not in (MANIFEST_FORMAT, RAGGED_MANIFEST_FORMAT):
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            if isinstance(found, int) and not isinstance(found, bool) and found > RAGGED_MANIFEST_FORMAT:
                raise _NewerFormat(found)
            raise ValueError(
                f"cache manifest format {found!r} is not supported (expected {MANIFEST_FORMAT} or "
                f"{RAGGED_MANIFEST_FORMAT})"
            )
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(data["schema"])))
        files = tuple(
            FileEntry(
                str(f["path"]),
                tuple(int(rows) for rows in f["row_groups"]),
                {k: tuple(int(n) for n in v) for k, v in f["packed"].items()},
                dict(f.get("partition", {})),
                None if f.get("size") is None else int(f["size"]),
            )
            for f in data["files"]
        )
        if any(rows < 0 for entry in files for rows in entry.row_groups) or sum(e.num_rows for e in files) != int(
            data["num_rows"]
        ):
            raise ValueError("the files' row counts do not add up to the manifest's num_rows")
        outside = next((entry.path for entry in files if not _inside(entry.path)), None)
        if outside is not None:
            # sparkfeed writes the names of files in the cache; a manifest naming another place
            # (planted in a shared prefix, or damaged) would have its rows served as the cache's.
            raise ValueError(f"it names the file {outside!r}, which is not a path inside the cache")
        return cls(
            files=files,
            schema=schema,
            shapes={k: [(low, high) for low, high in v] for k, v in data["shapes"].items()},
            options=data["options"],
            key=data["key"],
            created_at=data["created_at"],
            created_by=data["created_by"],
        )


def _inside(path: str) -> bool:
    """Whether a manifest's file path is relative and stays in the cache: no ``..``, ``.`` or empty component."""
    return bool(path) and not path.startswith("/") and all(part not in ("", ".", "..") for part in path.split("/"))


class CorruptManifestError(ValueError):
    """A manifest file that exists but cannot be parsed: a torn write, or not ours."""


class UnsupportedManifestError(CorruptManifestError):
    """A manifest of a format this version does not know: written by a newer sparkfeed.

    Such a cache is whole, for the version that wrote it: no sparkfeed that cannot read it
    removes it on its own (only ``sparkfeed cache rm`` given its URL does).
    """


class _NewerFormat(ValueError):
    def __init__(self, found: int) -> None:
        super().__init__(found)
        self.found = found


def write_manifest(location: Location, manifest: Manifest) -> None:
    """Writes the manifest, the step that makes a cache complete: it must come last.

    On a local disk the files the manifest lists are flushed to the disk first, and the
    manifest itself before it is published: written, both sit in the page cache, and after a
    power loss or a kernel crash the manifest could have reached the disk without the data. That
    cache would be complete to every later look (a kept one, found by ``reuse="auto"``, would
    fail every job that found it). Flushing cost 4-5% of a conversion here (0.11 s of 2.5 s for
    a 140 MiB cache, 0.19 s of 3.9 s for 394 MiB). An object store's PUT and a closed HDFS file
    are durable already.
    """
    fs, path = location.filesystem, location.path
    target = f"{path}/{MANIFEST_NAME}"
    if isinstance(fs, pafs.LocalFileSystem):
        root = location.local_path
        _flush(root, (entry.path for entry in manifest.files))
        # Local rename is atomic, so a reader never sees half a manifest.
        staging = f".{MANIFEST_NAME}.{uuid.uuid4().hex}"
        with fs.open_output_stream(f"{path}/{staging}") as stream:
            stream.write(manifest.to_json().encode())
        _fsync(os.path.join(root, staging))
        fs.move(f"{path}/{staging}", target)
        _fsync(root)  # the rename
    else:
        # Object stores publish a single PUT atomically.
        with fs.open_output_stream(target) as stream:
            stream.write(manifest.to_json().encode())


def _flush(root: str, names: Iterable[str]) -> None:
    """``fsync`` of the files ``names`` (relative to the cache ``root``), then of their directories up to root's parent.

    A file's data is on the disk after its own ``fsync``, its name after its directory's (and a
    partition directory's name after its parent's, up to the cache directory's in the parent).
    """
    directories = {root, os.path.dirname(root)}
    for name in names:
        path = os.path.join(root, name)
        _fsync(path)
        folder = os.path.dirname(path)
        while folder not in directories:
            directories.add(folder)
            folder = os.path.dirname(folder)
    for directory in directories:
        _fsync(directory)


def _fsync(path: str) -> None:
    """``fsync`` of one file or directory; a filesystem that has none (some FUSE and network mounts) is let be.

    An error that says the data did not reach the disk (``EIO``, ``ENOSPC``) fails the conversion.
    """
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError as error:
        if error.errno not in _NO_FSYNC:
            raise
    finally:
        os.close(descriptor)


_NO_FSYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})
"""What ``fsync`` answers where a filesystem offers no such guarantee (and PostgreSQL lets be)."""


def read_manifest(location: Location) -> Manifest | None:
    """The manifest of a complete cache, or None when the cache is absent or incomplete.

    Raises:
        UnsupportedManifestError: The manifest is of a newer format than this version reads.
        CorruptManifestError: A manifest is there but cannot be read: the message names it.
    """
    fs, path = location.filesystem, location.path
    try:
        if location.is_local and not stat.S_ISREG(os.lstat(f"{path}/{MANIFEST_NAME}").st_mode):
            raise CorruptManifestError(
                f"the manifest {location.child(MANIFEST_NAME)} is not a regular file (a symbolic link or a directory): "
                "sparkfeed writes its manifests as files and never follows a link to one"
            )
        with fs.open_input_stream(f"{path}/{MANIFEST_NAME}") as stream:
            text = stream.read()
    except (FileNotFoundError, NotADirectoryError):  # nothing there, or a single file
        return None
    try:
        return Manifest.from_json(text.decode())
    except _NewerFormat as error:
        raise UnsupportedManifestError(
            f"the manifest {location.child(MANIFEST_NAME)} is of format {error.found}, written by a newer sparkfeed "
            f"(this one reads formats {MANIFEST_FORMAT} and {RAGGED_MANIFEST_FORMAT}): upgrade sparkfeed to read it"
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, pa.ArrowException) as error:
        raise CorruptManifestError(
            f"the manifest {location.child(MANIFEST_NAME)} cannot be read ({type(error).__name__}: {error})"
        ) from error


class IncompleteCacheError(ValueError):
    """A sparkfeed cache directory without its manifest, opened by path: being written, or cut short."""


def _holds_anything(location: Location) -> bool:
    """Whether a directory (an object store's prefix) holds anything; False when it is not there."""
    try:
        return bool(location.filesystem.get_file_info(pafs.FileSelector(location.path, allow_not_found=True)))
    except (NotADirectoryError, FileNotFoundError):
        return False


def read_cache(location: Location) -> tuple[Manifest, dict[str, Any] | None] | None:
    """The manifest and marker of a sparkfeed cache opened by path; None when it is no cache of sparkfeed's.

    The marker is None for a complete cache copied without it (its manifest still says what the
    files hold).

    Raises:
        IncompleteCacheError: The directory holds sparkfeed's marker but no manifest: its write
            is still under way, or was interrupted, and the files there are not the dataset. Or
            it is named as sparkfeed names caches and holds files but neither marker nor
            manifest: the remains of a cache, which would otherwise be read as a user's Parquet.
            Or its manifest lists files that are not there (a copy under way, files removed).
        CorruptManifestError: A manifest is there but cannot be read.
    """
    manifest = read_manifest(location)
    marker = _read_marker(location)
    if manifest is not None:
        missing = _missing_files(location, manifest)
        if missing:
            raise IncompleteCacheError(
                f"sparkfeed cache {location}: {len(missing)} of the {len(manifest.files)} files its manifest "
                f"({MANIFEST_NAME}) lists are not there, such as {missing[0]!r}: a copy still under way or cut short "
                "(a copy may bring the manifest before the files), or files removed since. Reading it would fail "
                "when an epoch reached them; open a complete copy, or convert the DataFrame again"
            )
        return manifest, marker
    if marker is None:
        if CACHE_NAME.match(location.name) and _holds_anything(location):
            raise IncompleteCacheError(
                f"{location} is named as sparkfeed names its caches but holds neither its marker ({MARKER_NAME}) nor "
                f"its manifest ({MANIFEST_NAME}): the remains of a cache, whose files are not known to be the whole "
                "dataset (a delete cut short by sparkfeed before it removed the marker last, or an object store's "
                "lifecycle rule, leaves them). Nothing there is known to be sparkfeed's, so sparkfeed never removes "
                "it: remove it with your storage's own tools once nobody needs it, and convert the DataFrame again"
            )
        return None
    owner = Owner.from_dict(marker.get("owner"))
    liveness = Liveness.UNKNOWN if owner is None else owner.liveness()
    who = "its creator" if owner is None else f"its creator ({owner})"
    remover = _withdrawer(location)
    if remover is not None and remover.liveness() is not Liveness.GONE:
        state = f"{remover} is removing it (`sparkfeed cache clean` or `rm`), and may put its manifest back"
    elif liveness is Liveness.GONE:
        state = f"{who} is gone, so it will never be complete; `sparkfeed cache rm {location}` removes it"
    elif liveness is Liveness.RUNNING:
        state = f"{who} still runs: wait for its conversion to finish"
    else:
        state = f"{who} cannot be checked from this host: wait for its conversion to finish"
    raise IncompleteCacheError(
        f"incomplete sparkfeed cache {location}: it holds sparkfeed's marker ({MARKER_NAME}) but no manifest "
        f"({MANIFEST_NAME}), which is written last, so its files are not the whole dataset; {state}. "
        "Open the URL of a complete cache, or convert the DataFrame again"
    )


# --------------------------------------------------------------------------- what is ours

MARKER_NAME = "_sparkfeed_cache.json"
"""Written into every cache directory when it is created, before anything else."""
USED_NAME = "_sparkfeed_used.json"
"""When a kept cache was last reused by a later process: what ``cache clean --older-than`` measures."""

USER_PREFIX = "_sparkfeed_user-"
USER_NAME = re.compile(rf"^{USER_PREFIX}[0-9a-f]{{16}}\.json$")
"""One per process that reused a kept cache (its owner record): while one on this host runs, the
cache is in use, and ``cache clean --older-than`` leaves it however long ago that was."""


WITHDRAWN_NAME = "_sparkfeed_withdrawn.json"
"""The manifest of a cache that ``cache clean`` or ``rm`` is removing, set aside with who does it and when.

A remover takes the manifest away before it looks at the cache's reusers a last time, so that
no process can find the cache complete after that look (see :func:`_remove_orphan`); it puts
the manifest back if a reuser appeared. Until then the cache is incomplete to every reader, and
no other process collects it while the remover runs: it may yet put it back."""

CACHE_NAME = re.compile(r"^sparkfeed-\d{8}T\d{6}-[0-9a-f]{12}$")
"""The name of every cache directory sparkfeed creates: listings look at these and nothing else."""


def create_cache_dir(parent: Location, *, key: str | None = None, keep: bool = False) -> tuple[Location, str]:
    """A fresh, unique directory for one materialization, marked as sparkfeed's.

    Returns the directory and the token written into its marker: only a holder of the token
    (the converter this process made, and its pickled copies) may delete it. Locally the
    directory is created exclusively, so it cannot be one that existed before; on object
    stores, where directories do not exist, the prefix must hold nothing yet. The marker also
    names this process (host, pid, start time), so that what a killed process leaves can be
    told from a cache being written right now (:func:`scan`).

    Args:
        parent: Where the directory goes.
        key: The DataFrame's cross-process reuse key (see :func:`find_kept`), if it has one.
        keep: The cache outlives its process: not deleted at exit, found by later processes'
            ``reuse="auto"``, collected only by ``sparkfeed cache clean --older-than``.
    """
    inside = _cache_holding(parent)
    if inside is not None:
        raise ValueError(
            f"cache_dir {parent} {'is' if inside == parent else 'is inside'} the sparkfeed cache {inside} (it holds "
            "sparkfeed's marker or manifest): "
            "a cache made there would be removed with that one, by whoever removes it (`sparkfeed cache rm` or "
            f"`clean` of it, or its creator at exit), while this process reads it; pass the directory the caches "
            f"go in, such as {inside.parent}"
        )
    data = _dataset_file(parent)
    if data is not None:
        raise ValueError(
            f"cache_dir {parent} holds a dataset's files (such as {data!r}): a cache made there would be read as part "
            "of that dataset by whoever opens it by path (sparkfeed's reader lists its subdirectories too, and the "
            "cache's rows would come twice, or in place of others); pass a directory for caches, beside the dataset"
        )
    now = datetime.datetime.now(datetime.UTC)
    location = parent.child(f"sparkfeed-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}")
    token = uuid.uuid4().hex
    fs, path = location.filesystem, location.path
    if location.is_local:
        os.makedirs(parent.local_path, exist_ok=True)
        os.mkdir(path)  # FileExistsError rather than writing into a directory that is not ours
    elif fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        raise FileExistsError(f"{location} already holds objects; sparkfeed writes caches only into new prefixes")
    else:
        fs.create_dir(path, recursive=True)
    marker = {
        "sparkfeed": True,
        "token": token,
        "owner": Owner.current().to_dict(),
        "created_at": now.isoformat(timespec="seconds"),
        "key": key,
        "keep": keep,
    }
    try:
        with fs.open_output_stream(f"{path}/{MARKER_NAME}") as stream:
            stream.write(json.dumps(marker).encode())
    except BaseException:
        if location.is_local:
            with contextlib.suppress(OSError):
                os.rmdir(path)  # empty: it cannot hold anything but what we just failed to write
        raise
    if keep:
        # Not deleted at exit once complete; but a write that SIGTERM or the exit stops is.
        owned_caches.add(location, token, kept=True)
    return location, token


def _cache_holding(parent: Location) -> Location | None:
    """The sparkfeed cache that ``parent`` is, or lies in; None when it is in none.

    Passing a cache's URL as ``cache_dir`` (``cache_dir=converter.cache_dir_url``) nested the new
    cache in it, and removing the outer cache (``sparkfeed cache rm`` or ``clean`` of an orphan,
    without ``--force``) removed the inner one too, while the process that made it ran and read
    it. ``parent`` is looked at, and those of its ancestors named as sparkfeed names caches.
    """
    candidates, location = [], parent
    while True:
        if location == parent or CACHE_NAME.match(location.name):
            candidates.append(location)
        above = location.parent
        if above == location or not location.name:
            break
        location = above
    for candidate in candidates:
        names = [f"{candidate.path}/{name}" for name in (MARKER_NAME, MANIFEST_NAME)]
        try:
            infos = candidate.filesystem.get_file_info(names)
        except (OSError, pa.ArrowException):  # unreachable, or not a directory: the write says why
            continue
        if any(info.type != pafs.FileType.NotFound for info in infos):
            return candidate
    return None


DATASET_FILES = (".parquet", ".parq", "_SUCCESS", "_metadata", "_common_metadata")
"""Ends of the names of files that make a directory a Parquet dataset (Spark's and pyarrow's)."""


def _dataset_file(parent: Location) -> str | None:
    """The name of a Parquet dataset's file directly in ``parent``; None when it holds none (or is not there).

    ``cache_dir`` set to a dataset's own directory (the DataFrame's source, say) put the cache
    among its files, and opening that dataset by path then read the cache's files as its rows too.
    """
    try:
        children = parent.filesystem.get_file_info(pafs.FileSelector(parent.path, allow_not_found=True))
    except (OSError, pa.ArrowException):  # not a directory, or unreachable: creating the cache says why
        return None
    return next(
        (
            info.base_name
            for info in children
            if info.type == pafs.FileType.File and info.base_name.endswith(DATASET_FILES)
        ),
        None,
    )


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


def delete_cache(location: Location, token: str, *, force: bool = False) -> None:
    """Removes a cache directory that this process created; a missing one is not an error.

    It must hold the marker written by :func:`create_cache_dir` with this token, and locally
    it must be a real directory, not a symbolic link: the removal never follows a link out of
    the cache (``shutil.rmtree`` unlinks links inside it and does not descend into them). Nor
    may it hold another process's cache that may still be read (:func:`_live_nested`: what
    sparkfeed made before it refused a cache's URL as ``cache_dir``), which its removal would
    take along: ``converter.delete()`` and the cleanup at exit leave it, as ``cache rm`` and
    ``clean`` do. A handler given to :func:`register_delete_dir_handler` then removes it
    instead, if there is one. Otherwise the manifest goes first and, locally, the marker last:
    a delete cut short leaves an incomplete cache of sparkfeed's, which nothing reads and
    :func:`collect` removes.

    Args:
        location: The cache directory.
        token: The token :func:`create_cache_dir` wrote into its marker.
        force: Also when it holds a cache that a process that may still run made or reused
            (``cache rm --force``).

    Raises:
        NotOursError: The directory is not a sparkfeed cache made with this token; nothing
            was deleted.
        PermissionError: It holds such a cache, and ``force`` is not set; nothing was deleted.
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
    nested = None if force else _live_nested(location)
    if nested is not None:
        raise PermissionError(f"not deleting {location}: {nested}; it is left until that process has ended")
    handler = _delete_dir_handler
    if handler is not None:
        handler(location.url)
        return
    # The manifest goes first: a delete cut short (SIGKILL, an I/O error) leaves an incomplete
    # cache, never read and collected once its creator is gone, not a manifest whose files are gone.
    if location.is_local:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):  # a link is unlinked, never followed
            os.unlink(os.path.join(path, MANIFEST_NAME))
        _delete_local(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(f"{path}/{MANIFEST_NAME}")
        _delete_remote(fs, path)


REMOTE_DELETE_THREADS = 16
"""Objects of a cache on an object store deleted at once: each is a request of its own (see :func:`_delete_remote`)."""


def _delete_remote(fs: pafs.FileSystem, path: str) -> None:
    """Removes a cache off local disk whose manifest is gone, its marker last: what an interruption leaves stays ours.

    pyarrow's ``delete_dir`` on an object store deletes the objects a listing page at a time
    (1,000 on S3, the pages' requests in flight together), where the marker
    (``_sparkfeed_cache.json``) sorts before the ``part-`` files: a delete cut short after one
    page (SIGKILL, Ctrl-C, a failed request) could leave data files with neither marker nor
    manifest. ``cache ls`` and ``clean`` no longer saw them (stored, and billed, for ever), and
    opening the cache's URL read them as a user's Parquet dataset: a part of the rows, in
    silence. So the files go one by one, in threads, before the marker; on S3 only those beyond
    one page's worth (:data:`S3_LAST_BATCH`): the rest and the marker go in one request, as
    before (1,000 objects one by one took 7.7 s against moto here, in one request 0.2 s). HDFS
    removes a directory in one operation of its namenode, so there the directory goes at once.
    """
    if not isinstance(fs, pafs.HadoopFileSystem):
        marker = f"{path}/{MARKER_NAME}"
        try:
            listed = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
        except (FileNotFoundError, NotADirectoryError):
            listed = []
        files = [info.path for info in listed if info.type == pafs.FileType.File and info.path != marker]
        last_batch = S3_LAST_BATCH if isinstance(fs, pafs.S3FileSystem) else 0
        alone = files[: max(len(listed) - last_batch, 0)] if last_batch else files

        def delete(name: str) -> None:
            with contextlib.suppress(FileNotFoundError):  # another cleaner was first
                fs.delete_file(name)

        _each(delete, alone, REMOTE_DELETE_THREADS)  # the first failure is raised, the marker kept
    with contextlib.suppress(FileNotFoundError):
        fs.delete_dir(path)  # the marker, what is left, and what the store keeps as directories


S3_LAST_BATCH = 900
"""Objects of a cache that pyarrow's ``delete_dir`` removes with its marker on S3: fewer than a
listing page (1,000 keys, and one ``DeleteObjects`` request), so they all go in that one request."""


def _each(function: Callable[[str], None], items: list[str], threads: int) -> None:
    """``function`` of every item, in up to ``threads`` threads; the first exception is raised once all stopped.

    Plain threads, not a ``ThreadPoolExecutor``: caches are deleted at exit too, from ``atexit``,
    when the executors refuse new work (``cannot schedule new futures after interpreter
    shutdown``); and where a thread cannot be started then (Python 3.12 refuses), the calling
    thread does the work alone.
    """
    pending = iter(items)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        while not errors:
            with lock:
                item = next(pending, None)
            if item is None:
                return
            try:
                function(item)
            except BaseException as error:  # noqa: BLE001 - handed to the caller below
                errors.append(error)

    workers = []
    for _ in range(min(threads, len(items)) - 1):  # the calling thread is one of them
        worker = threading.Thread(target=work, name="sparkfeed-delete", daemon=True)
        try:
            worker.start()
        except RuntimeError:  # at interpreter shutdown
            break
        workers.append(worker)
    work()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]


def _delete_local(path: str) -> None:
    """Removes a local cache whose manifest is gone, its marker last: what an interruption leaves stays ours."""
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name == MARKER_NAME:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, onerror=_gone_is_fine)  # refuses a link swapped in meanwhile
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
    for attempt in range(3):
        try:
            shutil.rmtree(path, onerror=_gone_is_fine)  # the marker, and the directory
            return
        except OSError as error:
            # A reuser's record written meanwhile (it then finds the manifest gone and takes it back).
            if error.errno != errno.ENOTEMPTY or attempt == 2:
                raise


def _gone_is_fine(function: Any, path: str, exc_info: Any) -> None:
    """``rmtree``'s error handler: what another cleaner removed first is removed; anything else is raised."""
    if not issubclass(exc_info[0], FileNotFoundError):
        raise exc_info[1]


def _read_json(location: Location, name: str) -> Any:
    """A small JSON file of a cache directory; None when it is missing, not a regular file or not JSON."""
    fs, path = location.filesystem, f"{location.path}/{name}"
    try:
        if location.is_local and not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        with fs.open_input_stream(path) as stream:
            return json.loads(stream.read().decode())
    except (OSError, ValueError, UnicodeDecodeError, pa.ArrowException):
        return None


def _read_marker(location: Location) -> dict[str, Any] | None:
    """The marker's content; None when there is none (or it is not a regular file, or not ours)."""
    data = _read_json(location, MARKER_NAME)
    if not isinstance(data, dict) or data.get("sparkfeed") is not True or not isinstance(data.get("token"), str):
        return None
    return data


def _marker_token(location: Location) -> str | None:
    marker = _read_marker(location)
    return None if marker is None else str(marker["token"])


# --------------------------------------------------------------------------- listing and collecting


CacheState = Literal["complete", "partial", "corrupt", "unsupported"]


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """One cache directory under a parent, as :func:`scan` found it.

    Attributes:
        location: The cache directory.
        owner: The process that created it (None for markers of sparkfeed before 0.2, which
            recorded no start time and are never collected).
        liveness: Whether that process still runs, seen from here.
        state: ``complete`` (its manifest is there), ``partial`` (no manifest: being written,
            or left by an interrupted write), ``corrupt`` (a manifest that cannot be read) or
            ``unsupported`` (a manifest of a newer sparkfeed's format, never collected).
        created_at: ISO time its directory was made, UTC.
        num_rows: Rows in a complete cache.
        size_bytes: Bytes of every file in it.
        token: The marker's token, which deleting it requires.
        kept: Made with ``keep=True``: it outlives its creator on purpose.
        last_used: ISO time it was last reused by a later process (None: never), UTC.
        users: The processes that reused it (a kept cache), as far as they were recorded.
        withdrawn_by: The process removing it, which set its manifest aside (:data:`WITHDRAWN_NAME`)
            and may yet put it back; None when none.
    """

    location: Location
    owner: Owner | None
    liveness: Liveness
    state: CacheState
    created_at: str | None
    num_rows: int | None
    size_bytes: int
    token: str
    kept: bool = False
    last_used: str | None = None
    users: tuple[Owner, ...] = ()
    withdrawn_by: Owner | None = None

    @property
    def in_use(self) -> bool:
        """A process on this host that reused it, or opened it by its URL, still runs (perhaps reading it for days).

        A reuser on another host cannot be seen from here: its reuse counts by its time alone.
        """
        return any(user.liveness() is Liveness.RUNNING for user in self.users)

    @property
    def orphaned(self) -> bool:
        """Its creator is gone and did not keep it (or it is incomplete): :func:`collect` removes it.

        Never a cache of a newer format (``unsupported``): it is whole for the sparkfeed that made it.
        """
        if self.liveness is not Liveness.GONE or self.state == "unsupported":
            return False
        if self.withdrawn_by is not None and self.withdrawn_by.liveness() is not Liveness.GONE:
            return False  # another process is removing it, and may put its manifest back
        return not (self.kept and self.state == "complete")

    def idle_since(self) -> datetime.datetime | None:
        """When it was made or last reused, whichever is later (None when neither is recorded, or readable)."""
        times = [parse_time(t) for t in (self.created_at, self.last_used)]
        known = [t for t in times if t is not None]
        return max(known) if known else None


def parse_time(text: str | None) -> datetime.datetime | None:
    """A recorded ISO time, in UTC when it names no zone; None when it is missing or not a time."""
    if text is None:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=datetime.UTC)


def scan(parent: Location, *, orphans_only: bool = False) -> list[CacheEntry]:
    """The sparkfeed caches directly under ``parent``, oldest first.

    Only directories named as sparkfeed names caches and holding its marker are listed:
    anything else under the parent is not sparkfeed's and is never looked into further.

    Args:
        parent: The directory holding the caches.
        orphans_only: Only the caches whose creator is gone, found from the markers alone: the
            manifests and sizes of the others are never read (what every conversion does).
    """
    fs = parent.filesystem
    try:
        children = fs.get_file_info(pafs.FileSelector(parent.path, allow_not_found=True))
    except (NotADirectoryError, FileNotFoundError):
        return []
    entries = []
    for info in children:
        if info.type != pafs.FileType.Directory or not CACHE_NAME.match(info.base_name):
            continue
        location = parent.child(info.base_name)
        if not _real_dir(location):
            continue  # a link named like a cache (not ours), or removed since the listing
        entry = _entry(location, orphans_only)
        if entry is not None and (entry.orphaned or not orphans_only):
            entries.append(entry)
    return sorted(entries, key=lambda entry: (entry.created_at or "", entry.location.url))


def _real_dir(location: Location) -> bool:
    """Whether a listed cache directory is a directory still, locally not a link (a store has none)."""
    if not location.is_local:
        return True
    try:
        return stat.S_ISDIR(os.lstat(location.path).st_mode)
    except FileNotFoundError:
        return False


def _entry(location: Location, orphan_only: bool = False) -> CacheEntry | None:
    """A cache directory's entry; None when it is not one (or not an orphan, with ``orphan_only``)."""
    marker = _read_marker(location)
    if marker is None:
        return None
    owner = Owner.from_dict(marker.get("owner"))
    liveness = Liveness.UNKNOWN if owner is None else owner.liveness()
    if orphan_only and liveness is not Liveness.GONE:
        return None  # only the markers of the others are read
    state: CacheState
    num_rows = None
    try:
        manifest = read_manifest(location)
    except UnsupportedManifestError:
        state = "unsupported"
    except CorruptManifestError:
        state = "corrupt"
    else:
        state = "partial" if manifest is None else "complete"
        num_rows = None if manifest is None else manifest.num_rows
    try:
        files = location.filesystem.get_file_info(pafs.FileSelector(location.path, recursive=True))
    except FileNotFoundError:
        return None  # removed while we looked
    created = marker.get("created_at")
    used = _read_json(location, USED_NAME)
    users = [_reuser(location, info.base_name) for info in files if USER_NAME.match(info.base_name)]
    return CacheEntry(
        location=location,
        owner=owner,
        liveness=liveness,
        state=state,
        created_at=created if isinstance(created, str) else None,
        num_rows=num_rows,
        size_bytes=sum(info.size or 0 for info in files if info.type == pafs.FileType.File),
        token=str(marker["token"]),
        kept=marker.get("keep") is True,
        last_used=used.get("at") if isinstance(used, dict) and isinstance(used.get("at"), str) else None,
        users=tuple(user for user in users if user is not None),
        withdrawn_by=_withdrawer(location) if state == "partial" else None,
    )


def collect(
    parent: Location,
    *,
    partial_only: bool = False,
    dry_run: bool = False,
    older_than: datetime.timedelta | None = None,
) -> list[CacheEntry]:
    """Removes the caches under ``parent`` whose creator is gone; returns what it removed (or would).

    A process killed by SIGKILL, or a machine that lost power, runs no cleanup: its caches stay,
    complete or partial, and are never read again by anyone who did not open them by path.
    Their creator is known from the marker (host, pid, start time), so they are removed only
    when that process is certainly gone: on this host, no process with that pid and start time
    runs. A cache whose creator runs, or runs on another host, or is unknown, is left alone, and
    so is a kept one (``keep=True``), unless ``older_than`` says otherwise, and one of a newer
    sparkfeed's format (``unsupported``), always. So is one that a running process on this host
    opened by its URL or reused (:attr:`CacheEntry.in_use`): it may be reading it.

    Args:
        parent: The directory holding the caches.
        partial_only: Remove only the incomplete caches (what a new conversion collects on
            its way: a complete orphan may still be opened by path by a job that knows its URL,
            a damaged manifest may deserve a look).
        dry_run: Remove nothing; return what would be removed.
        older_than: Also remove the kept caches neither made nor reused for this long, whose
            creator is gone (a kept cache of a running process is its own to delete) and that
            no running process on this host reused (:attr:`CacheEntry.in_use`: a training job
            that reused it a day ago may still read it).
    """
    if older_than is None:
        chosen = [e for e in scan(parent, orphans_only=True) if (not partial_only or is_leftover(e)) and not e.in_use]
    else:
        limit = datetime.datetime.now(datetime.UTC) - older_than
        chosen = [
            entry
            for entry in scan(parent)
            if (entry.orphaned and not entry.in_use)
            or (
                entry.kept
                and entry.state == "complete"
                and entry.liveness is Liveness.GONE
                and (entry.idle_since() or limit) < limit
                and not entry.in_use
            )
        ]
    return chosen if dry_run else remove_orphans(chosen)


def is_leftover(entry: CacheEntry) -> bool:
    """What a conversion removes on its way: an incomplete cache whose creator is gone.

    It can never become complete, and nothing reads it, kept or not: a kept one whose writer
    was killed holds nothing to keep. Anything else is left to ``sparkfeed cache clean``: a
    complete orphan may still be opened by its URL, and a damaged or complete kept one
    deserves a person's decision.
    """
    return entry.state == "partial" and entry.liveness is Liveness.GONE


def find_kept(parent: Location, key: str) -> tuple[CacheEntry, Manifest] | None:
    """The newest complete kept cache under ``parent`` made for ``key``, and its manifest; None when there is none.

    ``key`` is :func:`sparkfeed.materialize.reuse_key`: the same DataFrame plan, source files and
    options. Only the markers are read, and the manifest of a match. A kept cache that is not
    complete (its creator died while writing it) is not one. The one returned has this process
    recorded as its reader (:func:`claim`), so ``cache clean`` and ``rm`` leave it while this
    process runs; one that another process is removing is passed over.
    """
    try:
        children = parent.filesystem.get_file_info(pafs.FileSelector(parent.path, allow_not_found=True))
    except (NotADirectoryError, FileNotFoundError):
        return None
    for info in sorted(children, key=lambda info: info.base_name, reverse=True):  # names start with the time
        if info.type != pafs.FileType.Directory or not CACHE_NAME.match(info.base_name):
            continue
        location = parent.child(info.base_name)
        if not _real_dir(location):
            continue
        marker = _read_marker(location)
        if marker is None or marker.get("keep") is not True or marker.get("key") != key:
            continue
        doubt = _planted(location, parent)
        if doubt is not None:
            log.warning(
                "not reusing the kept cache %s: %s, so a cache planted there would be served as this "
                "DataFrame's; converting anew (open it by its URL, make_spark_converter(url), to read it anyway)",
                location,
                doubt,
            )
            continue
        try:
            manifest = read_manifest(location)
        except CorruptManifestError as error:
            log.warning("not reusing the kept cache %s: %s", location, error)
            continue
        missing = [] if manifest is None else _missing_files(location, manifest)
        if missing:
            log.warning(
                "not reusing the kept cache %s: %d of the files its manifest lists are gone (such as %s), removed "
                "since it was made (by a person, or an object store's lifecycle rule); converting anew "
                "(`sparkfeed cache rm %s` removes it)",
                location,
                len(missing),
                missing[0],
                location,
            )
            continue
        if manifest is None:
            continue
        entry = _entry(location)
        if entry is not None and claim(location, manifest):
            return entry, manifest
    return None


def claim(location: Location, manifest: Manifest) -> bool:
    """Records this process as a reader of a complete cache, then looks again that it is whole; False when not.

    Finding a kept cache complete and recording its reuse were two steps, and ``cache clean
    --older-than`` in another process could judge the cache unused between them and remove it:
    the job that found it then failed on its first file. Recorded first, the reuse is seen by a
    remover that has not yet taken the manifest away, which then leaves the cache (see
    :func:`_remove_orphan`); and a remover that has taken it away is seen here, by the manifest
    or a file gone. Either way no reader is handed a cache that is being removed. On False the
    record is taken back, and the caller converts anew (or refuses a cache opened by path).

    Args:
        location: The cache directory.
        manifest: Its manifest as it was found (an equal one must still be there).
    """
    mark_used(location)
    try:
        now = read_manifest(location)
    except CorruptManifestError:
        now = None
    if now == manifest and not _missing_files(location, manifest):
        return True
    log.warning("not reading the cache %s: another process is removing it (`sparkfeed cache clean` or `rm`)", location)
    _unmark(location)
    return False


def _unmark(location: Location) -> None:
    """Takes back this process's reuse record of a cache it does not read (best effort).

    Where the cache's marker is gone (removed meanwhile), the last reuse's record goes too:
    written into an object store's prefix after the removal, the two would stay there alone.
    """
    names = [_user_record(Owner.current())]
    if _read_marker(location) is None:
        names.append(USED_NAME)
    for name in names:
        with contextlib.suppress(OSError, pa.ArrowException):
            location.filesystem.delete_file(f"{location.path}/{name}")


def _missing_files(location: Location, manifest: Manifest) -> list[str]:
    """The files a cache's manifest lists that its directory no longer holds (one listing of it).

    A kept cache lives for days or weeks: a file removed from it meanwhile (a person tidying a
    bucket, a lifecycle rule that expires objects) made every job that ``reuse="auto"`` served
    it fail, at whatever point of its epochs it reached that file, until someone removed it.
    """
    try:
        listed = location.filesystem.get_file_info(pafs.FileSelector(location.path, recursive=True))
    except FileNotFoundError:
        return [entry.path for entry in manifest.files]
    there = {info.path for info in listed if info.type == pafs.FileType.File}
    return [entry.path for entry in manifest.files if f"{location.path}/{entry.path}" not in there]


def _planted(location: Location, parent: Location) -> str | None:
    """Why a local kept cache may be another user's plant rather than this user's; None when it is not.

    The key a cache is found by is computable by anyone who can read the DataFrame's sources,
    so in a parent other users can write into, one of them could leave a directory with the
    right key and other rows. A cache is trusted when this user made it (its directory, marker
    and manifest are this user's), or when its maker owns the parent and nobody else can write
    there (a directory one account curates). A team's shared, group-writable directory
    therefore serves each member only their own caches by ``reuse="auto"``; another member's is
    read by its URL, deliberately. Object stores and HDFS have no owner to compare: their
    permissions decide who can write a cache there.
    """
    if not location.is_local or not hasattr(os, "getuid"):
        return None
    try:
        owners = {os.lstat(os.path.join(location.path, name)).st_uid for name in (".", MARKER_NAME, MANIFEST_NAME)}
        above = os.stat(parent.path)
    except FileNotFoundError:
        return None  # no manifest (not complete) or removed since: not served either way
    if len(owners) > 1:
        return f"its files belong to several users (ids {sorted(owners)})"
    (maker,) = owners
    if maker == os.getuid():
        return None
    if maker == above.st_uid and not above.st_mode & 0o022:
        return None
    where = "other users can write to" if above.st_mode & 0o022 else f"belongs to user id {above.st_uid}"
    return f"it was made by user id {maker}, not this one ({os.getuid()}), in {parent.path}, which {where}"


def mark_used(location: Location) -> None:
    """Records that this process reads a cache now (best effort: a read-only store stays as it is).

    Called for a kept cache reused by ``reuse="auto"`` and for any cache opened by its URL: an
    orphan read that way (what ``cache ls`` points at) was removed by ``cache clean`` under the
    process reading it.

    Two records: the cache's last reuse (:data:`USED_NAME`, what ``--older-than`` measures) and
    this process's own (:data:`USER_NAME`), which keeps the cache from being collected while the
    process runs; the records of reusers on this host that are gone are removed on the way.
    """
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    me = Owner.current().to_dict()
    record = json.dumps({"at": now, "by": me}).encode()
    mine = _user_record(Owner.current())
    fs = location.filesystem
    try:
        for name in (USED_NAME, mine):
            _write_record(location, name, record)
        for info in fs.get_file_info(pafs.FileSelector(location.path)):
            if USER_NAME.match(info.base_name) and info.base_name != mine:
                owner = _reuser(location, info.base_name)
                if owner is not None and owner.liveness() is Liveness.GONE:
                    fs.delete_file(info.path)
    except (OSError, pa.ArrowException) as error:
        log.debug("could not record the reuse of %s: %s", location, error)


def _user_record(owner: Owner) -> str:
    """The name of a process's reuser record (:data:`USER_NAME`): one per process, whatever its pid's reuse."""
    return f"{USER_PREFIX}{hashlib.sha256(json.dumps(owner.to_dict(), sort_keys=True).encode()).hexdigest()[:16]}.json"


def _write_record(location: Location, name: str, data: bytes) -> None:
    """Writes a small file of a cache directory; locally never through a link planted under its name.

    A new file is written beside and renamed over the name, which replaces a link (or a file)
    there instead of writing where it points.
    """
    if not location.is_local:
        with location.filesystem.open_output_stream(f"{location.path}/{name}") as stream:
            stream.write(data)
        return
    target = os.path.join(location.path, name)
    staging = os.path.join(location.path, f".{name}.{uuid.uuid4().hex}")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(staging, target)  # refused, not followed, where a directory sits under the name
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staging)
        raise


def _reuser(location: Location, name: str) -> Owner | None:
    """The process a reuser record (:data:`USER_NAME`) names; None when the file is not such a record."""
    record = _read_json(location, name)
    return Owner.from_dict(record.get("by")) if isinstance(record, dict) else None


def remove_orphans(entries: list[CacheEntry]) -> list[CacheEntry]:
    """Removes these entries of :func:`scan`; returns those removed (a failure is logged and skipped).

    Each is looked at again just before: one that changed since the listing (another process
    reused a kept cache, or removed or replaced it) is left for a new look to decide.
    """
    return [entry for entry in entries if _remove_orphan(entry)]


def _remove_orphan(entry: CacheEntry) -> bool:
    """Removes one cache :func:`collect` chose, unless a process reused it meanwhile, or is removing it.

    A reuser records itself, then looks again that the manifest is there (:func:`claim`); so
    this takes the manifest away (set aside, :data:`WITHDRAWN_NAME`), then looks at the reusers
    a last time, and only then deletes. A reuse recorded before that look is seen, and the
    manifest is put back; one recorded after it finds no manifest, and converts anew. Looking
    first and deleting next, as before, let a reuse in between read a cache being removed.
    """
    now = _entry(entry.location)
    if now is None or now.token != entry.token or now.state != entry.state:
        return False  # removed, or no longer this cache (completed, withdrawn by another remover), since the listing
    if now.in_use or not now.orphaned:
        idle = now.kept and now.state == "complete" and now.liveness is Liveness.GONE
        if now.in_use or not idle or _reused_since(entry, now):
            log.info("not removing the cache %s: it was reused, or changed, since it was chosen", entry.location)
            return False
    nested = _live_nested(entry.location)
    if nested is not None:
        log.warning("not removing the cache %s: %s", entry.location, nested)
        return False
    try:
        taken = _withdraw(entry.location)
        if not _still_unused(entry, taken):
            return False
        delete_cache(entry.location, entry.token)
    except (NotOursError, OSError, pa.ArrowException) as error:
        log.warning("could not remove the orphaned cache %s: %s", entry.location, error)
        return False
    log.info("removed the %s cache %s of %s, which is gone", entry.state, entry.location, entry.owner)
    return True


def _reused_since(before: CacheEntry, after: CacheEntry) -> bool:
    """Whether a process recorded a reuse of the cache between two looks (on any host: by the records alone)."""
    return after.in_use or after.last_used != before.last_used or set(after.users) != set(before.users)


def _withdraw(location: Location) -> bytes | None:
    """Sets a cache's manifest aside and removes it, so that nothing finds the cache complete; its bytes (None: none).

    The copy goes first (:data:`WITHDRAWN_NAME`, with this process and the time), the manifest
    next: an object store renames by copying, so an interruption between the two leaves both,
    a complete cache, never a cache without either. Locally the copy is created exclusively, so
    of two removers at once one goes on and the other leaves the cache to it; an object store
    has no such write through pyarrow, and there the last to set it aside goes on (see
    :func:`_still_unused`).

    Raises:
        PermissionError: Another process that may still run withdrew it first: it is that one's to remove.
    """
    fs, path = location.filesystem, f"{location.path}/{MANIFEST_NAME}"
    try:
        if location.is_local and not stat.S_ISREG(os.lstat(path).st_mode):
            return None  # a link or a directory: not a manifest to put back (delete_cache unlinks it)
        with fs.open_input_stream(path) as stream:
            data = bytes(stream.read())
    except (FileNotFoundError, NotADirectoryError):
        other = _withdrawer(location)
        if other is not None and other != Owner.current() and other.liveness() is not Liveness.GONE:
            raise PermissionError(f"{other} is removing it") from None
        return None
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    aside = {"by": Owner.current().to_dict(), "at": now, "manifest": base64.b64encode(data).decode("ascii")}
    if location.is_local:
        _create_local(location, WITHDRAWN_NAME, json.dumps(aside).encode())
    else:
        _write_record(location, WITHDRAWN_NAME, json.dumps(aside).encode())
    with contextlib.suppress(FileNotFoundError):  # another remover was first: the copy set aside holds it
        fs.delete_file(path)
    return data


def _create_local(location: Location, name: str, data: bytes) -> None:
    """Writes a new small file of a local cache directory whole, or raises PermissionError where one is there.

    A copy of a remover that is gone (it died between setting the manifest aside and removing
    the cache) is replaced: it holds a manifest that is still there, or the cache is partial.
    """
    staging = os.path.join(location.path, f".{name}.{uuid.uuid4().hex}")
    target = os.path.join(location.path, name)
    with open(staging, "xb") as handle:
        handle.write(data)
    try:
        for _ in range(2):
            try:
                os.link(staging, target)  # refused where the name is taken: one remover wins
                return
            except FileExistsError:
                other = _withdrawer(location)
                if other is not None and other != Owner.current() and other.liveness() is not Liveness.GONE:
                    raise PermissionError(f"{other} is removing it") from None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)
        raise PermissionError("another process is removing it")
    finally:
        os.unlink(staging)


def _withdrawer(location: Location) -> Owner | None:
    """The process that set a cache's manifest aside (:func:`_withdraw`); None when none did."""
    record = _read_json(location, WITHDRAWN_NAME)
    return Owner.from_dict(record.get("by")) if isinstance(record, dict) else None


def _restore(location: Location, data: bytes | None) -> None:
    """Puts back a manifest :func:`_withdraw` took, then drops the copy set aside.

    Locally it is flushed to the disk, as :func:`write_manifest` does: a manifest lost to a
    power cut would leave a kept cache incomplete, collected as a leftover.
    """
    if data is None:
        return
    _write_record(location, MANIFEST_NAME, data)
    if location.is_local:
        _fsync(os.path.join(location.path, MANIFEST_NAME))
        _fsync(location.path)
    with contextlib.suppress(FileNotFoundError):
        location.filesystem.delete_file(f"{location.path}/{WITHDRAWN_NAME}")


def _still_unused(entry: CacheEntry, taken: bytes | None) -> bool:
    """The last look, with the manifest withdrawn: True when no process reused the cache since ``entry``.

    Otherwise the manifest is put back, and the cache stays as it was; also when the look fails
    (a store's error, Ctrl-C), since nothing was deleted yet: left without its manifest, a kept
    cache would be collected as a leftover once this process is gone, under any job reading it.
    """
    try:
        again = _entry(entry.location)
        if taken is not None and _withdrawer(entry.location) != Owner.current():
            # Another remover set it aside after this one (on an object store): it decides, and puts it back.
            log.info("not removing the cache %s: another process is removing it", entry.location)
            return False
    except BaseException:
        if taken is not None:
            with contextlib.suppress(Exception):
                _restore(entry.location, taken)
        raise
    if again is not None and again.token == entry.token and not _reused_since(entry, again):
        return True
    _restore(entry.location, taken)
    log.info("not removing the cache %s: a process reused it while it was being removed", entry.location)
    return False


def remove(location: Location, *, force: bool = False) -> CacheEntry:
    """Removes one sparkfeed cache by its URL, as the CLI's ``cache rm`` does.

    Args:
        location: The cache directory.
        force: Also when its creator may still run, or a running process reused it (either
            would lose the cache mid-read).

    Raises:
        NotOursError: It is not a sparkfeed cache directory (no marker): nothing was deleted.
        FileNotFoundError: Nothing is there.
        PermissionError: Its creator still runs, or cannot be checked from here, or a process
            on this host that reused it still runs (:attr:`CacheEntry.in_use`), and ``force``
            is not set.
    """
    if location.is_local and os.path.islink(location.path):
        raise NotOursError(f"not deleting {location}: it is a symbolic link, not a sparkfeed cache directory")
    if location.filesystem.get_file_info(location.path).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no cache at {location}")
    entry = _entry(location)
    if entry is None:
        raise NotOursError(
            f"not deleting {location}: it holds no sparkfeed marker ({MARKER_NAME}), so it is not a sparkfeed cache"
        )
    if entry.liveness is not Liveness.GONE and not force:
        who = "its creator" if entry.owner is None else f"its creator ({entry.owner})"
        state = "still runs" if entry.liveness is Liveness.RUNNING else "cannot be checked from this host"
        raise PermissionError(
            f"not deleting {location}: {who} {state} and deletes it when it ends; pass force to delete it anyway"
        )
    if entry.in_use and not force:
        readers = ", ".join(str(user) for user in entry.users if user.liveness() is Liveness.RUNNING)
        raise PermissionError(
            f"not deleting {location}: it is in use, reused by a process that still runs ({readers}) and may be "
            "reading it; pass force (--force) to delete it anyway"
        )
    nested = None if force else _live_nested(location)
    if nested is not None:
        raise PermissionError(f"not deleting {location}: {nested}; pass force (--force) to delete it anyway")
    if not force:
        try:
            taken = _withdraw(location)
        except PermissionError as error:
            raise PermissionError(
                f"not deleting {location}: {error}; pass force (--force) to delete it anyway"
            ) from None
        if not _still_unused(entry, taken):
            raise PermissionError(
                f"not deleting {location}: a process reused it just now, and may be reading it; pass force (--force) "
                "to delete it anyway"
            )
    delete_cache(location, entry.token, force=force)
    return entry


def _live_nested(location: Location) -> str | None:
    """Why a cache holds another that must not go with it (its creator or a reuser may run); None when none.

    sparkfeed before the check of :func:`create_cache_dir` made a cache inside another when
    given its URL as ``cache_dir``: removing the outer one removed the inner one too.
    """
    for inner in scan(location):
        if inner.liveness is not Liveness.GONE or inner.in_use:
            return (
                f"it holds the sparkfeed cache {inner.location}, which a process that may still run made (its creator "
                f"is {inner.owner}) or reused, and may be reading"
            )
    return None


class _Owned:
    """Caches this process created, removed when it ends normally or by SIGTERM (best effort, never raising).

    A kept cache (``keep=True``) is here from its creation too, but removed only if its write
    did not finish (no manifest): a process stopped by SIGTERM while it wrote one left a
    partial cache, which no later call reads, for ``cache clean`` to find.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()  # re-entrant: the SIGTERM cleanup may run in the thread holding it
        self._caches: dict[Location, tuple[str, int, bool]] = {}
        self._registered_in: int | None = None  # the pid whose exit deletes them (a forked child registers anew)
        if hasattr(os, "register_at_fork"):
            # A child forked while another thread held the lock would wait on it forever at its exit.
            os.register_at_fork(after_in_child=self._new_lock)

    def _new_lock(self) -> None:
        self._lock = threading.RLock()

    def add(self, location: Location, token: str, *, kept: bool = False) -> None:
        """Deletes ``location`` when this process ends; with ``kept``, only if it holds no manifest then."""
        with self._lock:
            self._caches[location] = (token, os.getpid(), kept)
            register, self._registered_in = self._registered_in != os.getpid(), os.getpid()
        if register:
            at_exit(self.delete_all)
        else:
            cover_sigterm()  # the first cache may have come from a thread that could not install it

    def discard(self, location: Location) -> None:
        with self._lock:
            self._caches.pop(location, None)

    def cover_sigterm(self) -> None:
        """Has SIGTERM delete these caches, once this is called from the main thread (cheap; see below).

        A conversion made in another thread cannot install the SIGTERM handler (only the main
        thread may); where every conversion ran in threads, a SIGTERM left every cache behind.
        So using a converter (making a loader) calls this too, from wherever the training loop
        runs. A process without caches of its own keeps SIGTERM's default action.
        """
        if self._registered_in == os.getpid():
            cover_sigterm()

    def __contains__(self, location: object) -> bool:
        """Whether this process deletes the cache at ``location`` when it ends (a kept one: no)."""
        known = self._caches.get(location) if isinstance(location, Location) else None
        return known is not None and not known[2]

    def delete_all(self) -> None:
        with self._lock:
            # A forked child inherits this table but must not delete its parent's caches.
            caches = [(loc, token, kept) for loc, (token, pid, kept) in self._caches.items() if pid == os.getpid()]
            self._caches.clear()
            self._registered_in = None
        for location, token, kept in caches:
            try:
                if kept and _written(location):
                    continue
                delete_cache(location, token)
            except Exception as error:  # noqa: BLE001 - at exit, a warning is all we may do
                warnings.warn(f"sparkfeed could not delete cache {location} at exit: {error}", stacklevel=1)


def _written(location: Location) -> bool:
    """Whether a cache's write finished: its manifest is there (a damaged one too: not ours to judge at exit)."""
    try:
        return read_manifest(location) is not None
    except CorruptManifestError:
        return True


owned_caches = _Owned()
