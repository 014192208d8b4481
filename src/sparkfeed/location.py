"""Where a dataset or cache lives: a path or URL turned into (filesystem, path) exactly once.

Three parties name the same directory in three ways, and every data-loss bug this module
replaces came from translating between them by string concatenation:

- the user writes a plain path (``/home/me/#cache``) or a URL (``file:///home/me/%23cache``,
  ``file:/x``, ``s3://bucket/prefix``);
- pyarrow wants a filesystem and a decoded path, and reads a URL's ``#`` as a fragment;
- Spark (Hadoop's ``Path``) wants ``scheme://authority`` followed by the decoded path, and never
  percent-decodes (``%23`` stays three characters).

A :class:`Location` holds the one canonical form, a percent-encoded URL, and derives each of
those views from it, so ``/tmp/#c`` is the same directory to the writer, the reader and
``delete()``. A URL with a raw ``#`` is refused rather than guessed at: it names another
directory than the user may think.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pyarrow.fs as pafs

from sparkfeed.filesystems import ENDPOINT_VARIABLES, endpoint_from_env, make_filesystem, takes_env_endpoint

DATABRICKS_ENV = "DATABRICKS_RUNTIME_VERSION"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
"""A URL scheme of two or more letters: ``C:`` stays a (Windows) path, ``file:/x`` is a URL."""
_DROPPED_BY_URLSPLIT = frozenset("\t\r\n")
"""Removed from anywhere in a URL by ``urlsplit`` (WHATWG's rule): ``file:///tmp/a\\nb`` named ``/tmp/ab``."""


class Location:
    """A directory or file as a canonical, percent-encoded URL and the views derived from it.

    Made by :meth:`parse`; cheap to pickle: the URL and the user's storage options (or
    filesystem) travel, and the filesystem is made again where it is used, on an executor or
    in a worker process. Two locations are equal when their URLs are: options say how to reach
    a place, not which place it is.

    Args:
        url: A canonical URL as :meth:`parse` makes it.
        options: Keyword arguments of the scheme's pyarrow filesystem (see
            :func:`~sparkfeed.filesystems.make_filesystem`).
        filesystem: A pyarrow or fsspec filesystem to reach the URL with, instead.
    """

    def __init__(self, url: str, options: Mapping[str, Any] | None = None, filesystem: Any = None) -> None:
        self.url = url
        self.options = dict(options or {})
        self.given_filesystem = filesystem
        self._sender_endpoint: str | None = None  # set by unpickling: see __getstate__
        self._env_endpoint: str | None = None  # the environment's endpoint this process reached the data at

    # ------------------------------------------------------------------ making

    @classmethod
    def parse(
        cls,
        path_or_url: str | os.PathLike[str] | Location,
        *,
        options: Mapping[str, Any] | None = None,
        filesystem: Any = None,
    ) -> Location:
        """A location from what a user wrote: a plain path (relative ones against the cwd) or a URL.

        ``options`` and ``filesystem`` say how to reach a non-local URL (credentials, endpoint);
        they are refused for local paths, which need neither.

        Raises:
            ValueError: The text is empty, or a URL that names something other than it seems to:
                a ``file:`` URL with a query, any URL with a fragment (a raw ``#``), a ``file:``
                URL of another host, or ``dbfs:`` outside Databricks.
        """
        if isinstance(path_or_url, Location):
            if options is None and filesystem is None:
                return path_or_url
            path_or_url = path_or_url.url
        location = cls._parse(path_or_url)
        if options is not None and not isinstance(options, Mapping):
            raise ValueError(f"storage_options={options!r} is not allowed: it must be a dict of keyword arguments")
        if (options or filesystem is not None) and location.is_local:
            raise ValueError(
                f"{location.url} is a local path: storage_options and filesystem are for object stores and HDFS"
            )
        return cls(location.url, options, filesystem)

    @classmethod
    def _parse(cls, path_or_url: str | os.PathLike[str]) -> Location:
        text = os.fspath(path_or_url)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path_or_url!r} is not a path or URL")
        match = _SCHEME.match(text)
        if match is None:
            return cls._local(os.path.abspath(os.path.expanduser(text)))
        scheme = match.group(1).lower()
        dropped = sorted({repr(character) for character in text if character in _DROPPED_BY_URLSPLIT})
        if dropped:
            raise ValueError(
                f"{text!r} is a URL holding {', '.join(dropped)}, which URL parsing drops (a tab or line break "
                "is never part of a URL), so it would name another place: write them as %09, %0A and %0D, "
                "or pass a plain path"
            )
        parts = urlsplit(text)
        if parts.fragment or text.endswith("#"):
            raise ValueError(
                f"{text!r} is a URL with a fragment (the part after '#'), so it does not name the directory "
                "it seems to: in a URL, write '#' in a path as %23, or pass a plain path"
            )
        if scheme == "file":
            if parts.query or text.endswith("?"):
                raise ValueError(
                    f"{text!r} is a file URL with a query (the part after '?'): in a URL, write '?' in a path "
                    "as %3F, or pass a plain path"
                )
            if parts.netloc not in ("", "localhost"):
                raise ValueError(f"{text!r} names the host {parts.netloc!r}; a file URL can only name this machine")
            return cls._local(os.path.normpath(unquote(parts.path) or "/"))
        if scheme == "dbfs":
            return cls._dbfs(text, unquote(parts.path))
        path = unquote(parts.path)
        if any(segment in ("", ".", "..") for segment in path.rstrip("/").split("/")[1:]):
            # Spark's writer (Hadoop's Path) resolves them; pyarrow's object stores list them literally.
            raise ValueError(
                f"{text!r} has a '.', '..' or empty path segment, which Spark resolves and an object store's "
                "listing does not, so the two would name different places: write the path without them"
            )
        return cls(_join(scheme, parts.netloc, quote(path, safe="/").rstrip("/"), parts.query))

    @classmethod
    def _local(cls, path: str) -> Location:
        if not path.startswith("/"):
            raise ValueError(f"{path!r} is not an absolute path")
        return cls("file://" + quote(path.rstrip("/") or "/", safe="/"))

    @classmethod
    def _dbfs(cls, text: str, path: str) -> Location:
        """Databricks' ``dbfs:/x`` is the FUSE path ``/dbfs/x`` on its clusters, and nothing elsewhere."""
        if not os.environ.get(DATABRICKS_ENV):
            raise ValueError(
                f"{text!r}: dbfs: URLs exist on Databricks only (where {DATABRICKS_ENV} is set), "
                "which this process is not running on; pass a local path or a URL this machine reaches"
            )
        return cls._local(os.path.normpath("/dbfs/" + path.lstrip("/")))

    def child(self, *names: str) -> Location:
        """A location inside this one; each name is one path component, taken literally."""
        for name in names:
            if not name or "/" in name or name in (".", ".."):
                raise ValueError(f"{name!r} is not a single path component")
        parts = urlsplit(self.url)
        path = parts.path.rstrip("/") + "".join("/" + quote(name, safe="") for name in names)
        return self._moved(_join(parts.scheme, parts.netloc, path, parts.query))

    def _moved(self, url: str) -> Location:
        moved = Location(url, self.options, self.given_filesystem)
        moved._sender_endpoint = self._sender_endpoint
        return moved

    @property
    def parent(self) -> Location:
        """The directory holding this location."""
        parts = urlsplit(self.url)
        path = parts.path.rstrip("/").rsplit("/", 1)[0] or ("/" if parts.scheme == "file" else "")
        return self._moved(_join(parts.scheme, parts.netloc, path, parts.query))

    # ------------------------------------------------------------------ views

    @property
    def scheme(self) -> str:
        """The URL scheme: ``file`` for local paths."""
        return urlsplit(self.url).scheme

    @property
    def is_local(self) -> bool:
        """Whether this names a path on this machine's own filesystem."""
        return self.scheme == "file"

    @property
    def local_path(self) -> str:
        """The decoded path on this machine (only for local locations)."""
        if not self.is_local:
            raise ValueError(f"{self.url} is not a local path")
        return unquote(urlsplit(self.url).path)

    @property
    def hadoop_path(self) -> str:
        """The form Spark's writers and readers take: no percent-decoding happens there."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}{unquote(parts.path)}"

    @property
    def name(self) -> str:
        """The last path component, decoded."""
        return unquote(urlsplit(self.url).path.rstrip("/").rsplit("/", 1)[-1])

    @functools.cached_property
    def _resolved(self) -> tuple[pafs.FileSystem, str]:
        if self.is_local:
            return pafs.LocalFileSystem(), self.local_path
        self._env_endpoint = endpoint_from_env(self.url, self.options, self.given_filesystem)
        if self._sender_endpoint is not None and self._env_endpoint is None and self._takes_env_endpoint:
            self._refuse_missing_endpoint(self._sender_endpoint)
        return make_filesystem(self.url, self.options, self.given_filesystem)

    @property
    def _takes_env_endpoint(self) -> bool:
        """Whether the environment says where this location's data is (S3 with no endpoint in the options)."""
        return takes_env_endpoint(self.url, self.options, self.given_filesystem)

    def _refuse_missing_endpoint(self, endpoint: str) -> None:
        """The process that pickled this location reached it at ``endpoint`` by its environment, this one cannot.

        Without the variable, pyarrow asks AWS's public endpoint for the bucket: a read on a
        Spark executor whose environment lacked the driver's ``AWS_ENDPOINT_URL`` failed
        after ~10 s with "Could not resolve host <bucket>.s3.us-east-1.amazonaws.com" (or
        AWS's NoSuchBucket/AccessDenied), which named neither the cause nor the fix.

        Raises:
            ValueError: always, naming the endpoint and the ways to give it to this process.
        """
        raise ValueError(
            f"{self}: the process that made this converter reached it at {endpoint}, named by "
            f"{' or '.join(ENDPOINT_VARIABLES)} in its environment, but this process's environment names no endpoint, "
            "so it would ask AWS's own endpoint instead. A Spark executor's environment is fixed when the session "
            "starts (os.environ set on the driver later does not reach it): set spark.executorEnv.AWS_ENDPOINT_URL_S3 "
            "(and the credentials' variables) when creating the session, or pass "
            f"storage_options={{'endpoint_override': ..., 'scheme': ...}} to make_spark_converter (which travel with "
            "the converter; credentials may stay in each process's environment)"
        )

    @property
    def filesystem(self) -> pafs.FileSystem:
        """The pyarrow filesystem."""
        return self._resolved[0]

    @property
    def path(self) -> str:
        """The path on :attr:`filesystem` (decoded)."""
        return self._resolved[1]

    # ------------------------------------------------------------------ value semantics

    def __getstate__(self) -> dict[str, Any]:
        """The URL, options and filesystem, and the endpoint this process's environment gave it, if any.

        The endpoint (never a credential) lets a process without it refuse with a clear error
        (see :meth:`_refuse_missing_endpoint`); it is not used to reach the data: a process's
        own environment or the options still decide where it reads.
        """
        state = {"url": self.url, "options": self.options, "filesystem": self.given_filesystem}
        if "_resolved" in self.__dict__:
            endpoint = self._env_endpoint
        else:
            endpoint = endpoint_from_env(self.url, self.options, self.given_filesystem)
            if endpoint is None and self._takes_env_endpoint:
                endpoint = self._sender_endpoint  # passed on, e.g. by an executor that pickles it again
        if endpoint is not None:
            state["env_endpoint"] = endpoint
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state.get("options"), state.get("filesystem"))  # type: ignore[misc]
        self._sender_endpoint = state.get("env_endpoint")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __str__(self) -> str:
        """The URL as logs and messages show it: credentials given in its query are hidden (see :func:`shown`)."""
        return shown(self.url)

    def __repr__(self) -> str:
        """As :meth:`__str__`, credentials in the URL's query hidden: a repr lands in tracebacks and logs."""
        return f"Location({shown(self.url)!r})"


_SECRET_WORDS = ("secret", "token", "password", "passwd", "credential", "sas", "key")
"""Parts of a query option's name that say its value is a credential (``secret_key``, ``session_token``)."""


def shown(url: str) -> str:
    """``url`` with the values of its query's credentials replaced by ``***``, for logs and messages.

    A URL's query may carry its filesystem's options (``s3://b/c?access_key=…&secret_key=…``,
    see :func:`~sparkfeed.filesystems.make_filesystem`); the URL itself still holds them, where
    it is used to reach the data.
    """
    head, mark, query = url.partition("?")
    if not mark:
        return url
    parts = []
    for item in query.split("&"):
        name, equals, value = item.partition("=")
        secret = equals and value and any(word in name.lower() for word in _SECRET_WORDS)
        parts.append(f"{name}=***" if secret else item)
    return f"{head}?{'&'.join(parts)}"


def _join(scheme: str, netloc: str, path: str, query: str) -> str:
    """``scheme://netloc/path?query``, always with the two slashes.

    ``urlunsplit`` drops them for an empty host, and ``hdfs:/x`` is then read as a relative path.
    """
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")
