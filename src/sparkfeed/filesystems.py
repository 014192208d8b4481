"""Which pyarrow filesystem serves a URL's scheme, made from the user's options, never guessed.

``pyarrow.fs.FileSystem.from_uri`` is not used for object stores: it may ask the network
(AWS's public endpoint, for a bucket's region) before the user's endpoint or credentials are
known, and it knows neither ``s3a://`` (what Spark users write) nor ``az://``. Here each scheme
maps to one constructor, its URL query and the user's ``storage_options`` become keyword
arguments, and a scheme pyarrow lacks goes through fsspec when its package is installed.

Secrets in ``storage_options`` travel with the pickled converter (a pyarrow filesystem pickles
with its options) and are never written into a manifest or a cache directory; credentials from
the environment are read where the filesystem is made: on each executor, from its environment.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import shutil
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import pyarrow.fs as pafs

S3_SCHEMES = ("s3", "s3a", "s3n")
"""One bucket to the reader under any of its Hadoop names."""
GCS_SCHEMES = ("gs", "gcs")
AZURE_SCHEMES = ("abfs", "abfss")
FSSPEC_PACKAGES = {"az": "adlfs", "adl": "adlfs", "gs": "gcsfs", "s3": "s3fs"}

DEFAULT_S3_TIMEOUTS = {"connect_timeout": 10.0, "request_timeout": 60.0}
"""Seconds: a server that is gone fails a read within a bounded time instead of hanging."""
S3_RETRIES = 4
"""Attempts per request (with AWS's exponential backoff) before a transient error is final."""

_NUMBERS = {"connect_timeout", "request_timeout"}
_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no")
_FLAGS = {"allow_bucket_creation", "allow_bucket_deletion", "background_writes", "force_virtual_addressing"}


def make_filesystem(
    url: str, options: Mapping[str, Any] | None = None, filesystem: Any = None
) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of a non-local canonical URL.

    Args:
        url: A canonical URL (see :class:`~sparkfeed.location.Location`).
        options: Keyword arguments of the scheme's pyarrow filesystem (for S3: ``access_key``,
            ``secret_key``, ``session_token``, ``region``, ``endpoint_override``, ``scheme``,
            ...), merged over the URL's query string.
        filesystem: A ready pyarrow or fsspec filesystem to use instead of making one.

    Raises:
        ValueError: The scheme has no filesystem here, or its options are refused; the message
            says what to install or pass.
    """
    parts = urlsplit(url)
    scheme, host, path = parts.scheme, parts.netloc, unquote(parts.path)
    merged = {**_query_options(parts.query), **(options or {})}
    if scheme in S3_SCHEMES or scheme in GCS_SCHEMES:
        fs_path = f"{host}{path}".rstrip("/")
    elif scheme in AZURE_SCHEMES:
        container, _, account = host.partition("@")
        fs_path = f"{container}{path}".rstrip("/")
        if account and "account_name" not in merged:
            merged["account_name"] = account.split(".", 1)[0]
    elif scheme in ("hdfs", "viewfs"):
        fs_path = path.rstrip("/") or "/"
    else:  # fsspec's convention: the host is the path's first component (a bucket, a container)
        fs_path = (f"{host}{path}" if host else path).rstrip("/")
    if filesystem is not None:
        return as_pyarrow(filesystem), fs_path
    try:
        if scheme in S3_SCHEMES:
            return _s3(merged), fs_path
        if scheme in GCS_SCHEMES:
            return pafs.GcsFileSystem(**merged), fs_path
        if scheme in AZURE_SCHEMES:
            return pafs.AzureFileSystem(**merged), fs_path
        if scheme in ("hdfs", "viewfs"):
            return _hdfs(host, merged), fs_path
    except TypeError as error:  # an option the constructor does not take
        raise ValueError(f"{url}: storage_options {sorted(merged)} are not accepted ({error})") from error
    return _fsspec(url, scheme, merged), fs_path


def as_pyarrow(filesystem: Any) -> pafs.FileSystem:
    """A pyarrow filesystem as it is; an fsspec one wrapped, as Petastorm's reader accepted both."""
    if isinstance(filesystem, pafs.FileSystem):
        return filesystem
    if hasattr(filesystem, "open") and hasattr(filesystem, "ls"):
        return pafs.PyFileSystem(LiteralFSSpecHandler(filesystem))
    raise ValueError(f"filesystem={filesystem!r} is not allowed: it must be a pyarrow or fsspec filesystem")


GLOB_CHARACTERS = ("*", "?", "[")


def _has_glob(path: str) -> bool:
    return any(character in path for character in GLOB_CHARACTERS)


class LiteralFSSpecHandler(pafs.FSSpecHandler):  # type: ignore[misc]
    """pyarrow's handler for an fsspec filesystem, whose deletes take every path literally.

    pyarrow's deletes call fsspec's ``rm``, which expands ``*``, ``?`` and ``[...]`` as a glob:
    deleting ``bucket/c[1]`` removed ``bucket/c1`` instead. A path holding one of them is
    deleted entry by entry here (``find``, ``rm_file`` and ``rmdir`` take it literally), and a
    move or copy of one, which sparkfeed never does on an object store, is refused.
    """

    def delete_file(self, path: str) -> None:
        """Deletes the one file named ``path``."""
        if not _has_glob(path):
            super().delete_file(path)
            return
        if not self.fs.exists(path):
            raise FileNotFoundError(path)
        if self.fs.isdir(path):
            raise IsADirectoryError(path)
        self.fs.rm_file(path)

    def delete_dir(self, path: str) -> None:
        """Deletes the directory named ``path`` and everything in it."""
        if not _has_glob(path):
            super().delete_dir(path)
            return
        if not self.fs.exists(path):
            raise FileNotFoundError(path)
        self._delete_literally(path)

    def _delete_dir_contents(self, path: str, missing_dir_ok: bool) -> None:
        try:
            names = self.fs.listdir(path, detail=False)
        except FileNotFoundError:
            if missing_dir_ok:
                return
            raise
        for name in names:
            if self.fs.isdir(name):
                self.delete_dir(name)
            elif self.fs.isfile(name):
                self.delete_file(name)

    def _delete_literally(self, path: str) -> None:
        entries = self.fs.find(path, withdirs=True, detail=True)
        directories = [name for name, info in entries.items() if info.get("type") == "directory"]
        for name, info in entries.items():
            if info.get("type") != "directory":
                self.fs.rm_file(name)
        if self.fs.isdir(path):
            directories.append(path)
        for name in sorted(set(directories), key=len, reverse=True):  # the deepest first
            # An object store's directories are only prefixes, gone with their objects.
            with contextlib.suppress(FileNotFoundError, NotImplementedError):
                self.fs.rmdir(name)
        left = self.fs.find(path)
        if left:
            raise OSError(f"could not delete {path!r}: {len(left)} entries are left, such as {left[0]!r}")

    def move(self, src: str, dest: str) -> None:
        """A move through fsspec's ``mv``, refused for a path it would expand as a glob."""
        self._refuse_glob("move", src, dest)
        super().move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        """A copy through fsspec's ``copy``, refused for a path it would expand as a glob."""
        self._refuse_glob("copy", src, dest)
        super().copy_file(src, dest)

    @staticmethod
    def _refuse_glob(action: str, *paths: str) -> None:
        for path in paths:
            if _has_glob(path):
                raise ValueError(
                    f"not going to {action} {path!r} through fsspec: it holds one of {', '.join(GLOB_CHARACTERS)}, "
                    "which fsspec expands as a glob, so another path could be hit"
                )


def _query_options(query: str) -> dict[str, Any]:
    """``?endpoint_override=…&scheme=http`` as keyword arguments, with pyarrow's types."""
    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in _NUMBERS:
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not math.isfinite(number) or number <= 0:
                raise ValueError(
                    f"{key}={value!r} in the URL's query is not allowed: it must be a number of seconds > 0"
                )
            options[key] = number
        elif key in _FLAGS:
            if value.lower() not in _TRUE + _FALSE:
                raise ValueError(
                    f"{key}={value!r} in the URL's query is not allowed: it must be one of {', '.join(_TRUE + _FALSE)}"
                )
            options[key] = value.lower() in _TRUE
        else:
            options[key] = value
    return options


ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
"""The AWS SDKs' endpoint variables, the first one set wins."""


def s3_env_endpoint() -> str | None:
    """The S3 endpoint URL this process's environment names (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``)."""
    return next((os.environ[name] for name in ENDPOINT_VARIABLES if os.environ.get(name)), None)


def takes_env_endpoint(url: str, options: Mapping[str, Any] | None = None, filesystem: Any = None) -> bool:
    """Whether :func:`make_filesystem` reaches ``url`` at the endpoint the environment names, if any.

    True for S3 URLs whose options and query name no ``endpoint_override`` and with no
    ``filesystem`` given: there the environment decides which server holds the data.
    """
    parts = urlsplit(url)
    if parts.scheme not in S3_SCHEMES or filesystem is not None:
        return False
    return "endpoint_override" not in {**_query_options(parts.query), **(options or {})}


def endpoint_from_env(url: str, options: Mapping[str, Any] | None = None, filesystem: Any = None) -> str | None:
    """The endpoint :func:`make_filesystem` takes from the environment for ``url``, shown without user info.

    None when the URL is not S3's, a filesystem is given, or the options or the URL's query
    name the endpoint: then the environment plays no part in where the data is. A process
    that pickles a converter records this (it is no secret), so that a process whose
    environment lacks it can say so instead of asking AWS's endpoint for the cache.
    """
    endpoint = s3_env_endpoint() if takes_env_endpoint(url, options, filesystem) else None
    if endpoint is None:
        return None
    parsed = urlsplit(endpoint)
    host = parsed.netloc.rpartition("@")[2] or parsed.path  # user:password@ never leaves the process
    return f"{parsed.scheme}://{host}" if parsed.scheme else host


def _s3(options: dict[str, Any]) -> pafs.FileSystem:
    settings = {**DEFAULT_S3_TIMEOUTS, **options}
    settings.setdefault("retry_strategy", pafs.AwsStandardS3RetryStrategy(max_attempts=S3_RETRIES))
    endpoint = s3_env_endpoint()
    if endpoint and "endpoint_override" not in settings:
        # The AWS SDKs' variable, which from_uri honours and S3FileSystem() does not: with it,
        # executors configured by their environment alone reach the same server as the driver.
        parsed = urlsplit(endpoint)
        settings["endpoint_override"] = parsed.netloc or parsed.path
        settings.setdefault("scheme", parsed.scheme or "https")
    if "region" not in settings and "endpoint_override" not in settings:
        # Without one, pyarrow asks AWS's public endpoint for the bucket's region.
        settings["region"] = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return pafs.S3FileSystem(**settings)


def java_home() -> str | None:
    """``JAVA_HOME``, or the installation that ``java`` on the PATH belongs to."""
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    java = shutil.which("java")
    if java is None:
        return None
    home = os.path.dirname(os.path.dirname(os.path.realpath(java)))
    return home if os.path.isdir(home) else None


def _hdfs(host: str, options: dict[str, Any]) -> pafs.FileSystem:
    """HDFS through libhdfs, which needs a JVM: found from ``JAVA_HOME`` or ``java`` on the PATH."""
    home = java_home()
    if home is None:
        raise ValueError(
            "hdfs:// needs Java: set JAVA_HOME or put java on the PATH (sparkfeed's Spark needs Java 17 anyway)"
        )
    os.environ.setdefault("JAVA_HOME", home)
    name, _, port = host.partition(":")
    try:
        return pafs.HadoopFileSystem(name or "default", int(port) if port else 8020, **options)
    except OSError as error:
        hadoop = os.environ.get("HADOOP_HOME")
        raise ValueError(
            f"hdfs://{host}: pyarrow could not start libhdfs ({error}). JAVA_HOME is {home}; libhdfs.so is "
            f"looked up in ARROW_LIBHDFS_DIR ({os.environ.get('ARROW_LIBHDFS_DIR')!r}) and HADOOP_HOME/lib/native "
            f"(HADOOP_HOME={hadoop!r}), and CLASSPATH must hold Hadoop's jars "
            "(export CLASSPATH=$(hadoop classpath --glob)): install a Hadoop client or point these at one"
        ) from error


@functools.cache
def _fsspec_available(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _fsspec(url: str, scheme: str, options: dict[str, Any]) -> pafs.FileSystem:
    package = FSSPEC_PACKAGES.get(scheme)
    if not _fsspec_available("fsspec") or (package is not None and not _fsspec_available(package)):
        need = f"pip install fsspec {package}" if package else "pip install fsspec and its package for this scheme"
        raise ValueError(
            f"{url}: pyarrow has no filesystem for {scheme!r}:// and fsspec cannot serve it here ({need}); "
            "or pass filesystem= (a pyarrow or fsspec filesystem)"
        )
    import fsspec

    try:
        return as_pyarrow(fsspec.filesystem(scheme, **options))
    except (ValueError, ImportError) as error:
        raise ValueError(
            f"{url}: pyarrow has no filesystem for {scheme!r}:// and fsspec cannot open it either ({error}); "
            "choose a location both Spark and pyarrow reach (a local or shared path, s3://, gs://, abfs://, "
            "hdfs://), or pass filesystem="
        ) from error
