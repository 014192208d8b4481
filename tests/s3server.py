"""A real S3-compatible server for the tests and the benchmark: moto in server mode, on 127.0.0.1.

``S3Server`` starts ``python -m moto.server`` as a subprocess on a free loopback port, waits until it
answers, and stops it (terminate, then kill) on exit, so no process outlives the test run. Buckets
and objects live in that process's memory; every request travels over a real TCP connection, signed
with fixed fake credentials, exactly as against AWS.

How a client finds the server (measured with pyarrow 26.0.1, moto 5.2.5):

- ``storage_options``: the keyword arguments of ``pyarrow.fs.S3FileSystem`` (access_key, secret_key,
  region, endpoint_override, scheme="http"). The explicit way, the one that travels with a pickled
  converter.
- ``env``: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION (and AWS_REGION), and the
  endpoint as AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_S3 (``http://127.0.0.1:PORT``; either one alone
  is enough, its scheme is honoured). ``pyarrow.fs.FileSystem.from_uri("s3://bucket/key")`` honours
  all of them. The bare constructor ``pyarrow.fs.S3FileSystem()`` honours the credentials and the
  region but NOT the endpoint variables: it goes to ``<bucket>.s3.<region>.amazonaws.com``, so code
  that builds its S3FileSystem itself must pass ``endpoint_override``/``scheme`` (or go through
  ``from_uri``).
- Spark executors: a Python worker's environment is fixed when Spark launches it, from the JVM's
  environment (the driver's ``os.environ`` when the session started) plus
  ``spark.sparkContext.environment``. Variables put in ``os.environ`` after the session started do
  NOT reach tasks; entries added to ``spark.sparkContext.environment`` do (new workers are launched
  for the new environment). ``S3Server.use_env(spark)`` does both and undoes both. A Spark Connect
  server's executors see only the environment its server process was started with.
- A client without credentials (no options, no variables in its environment) is not refused: it
  sends unsigned, ``aws-chunked`` uploads, which moto stores with their chunk framing (``357\r\n``
  before the data), so an object written that way is not what was written (a Parquet file's
  magic bytes are missing) and reads fail later. Real S3 refuses such a write. This is what a
  conversion whose Spark tasks lack the credentials makes here: give the tasks the credentials
  (``use_env(spark)`` or ``storage_options``) whenever they write.
- ``request_timeout`` of ``S3FileSystem`` is ignored on Linux (pyarrow's docstring says so). A
  stopped server refuses connections at once, so how long a read takes to fail is set by the retry
  strategy's backoff: measured here ~1 ms with ``AwsStandardS3RetryStrategy(max_attempts=1)``,
  ~0.9 s with 2 attempts, ~2.4 s with the default (3). A server that accepts connections but never
  answers is not what ``stop()`` simulates.

Counting requests: moto's recorder (``/moto-api/recorder/...``) appends one JSON line per request
(method, URL, headers, and the body of writes) to a file. ``start_recording()`` clears that file and
starts; ``requests()`` reads it back and counts: per method, and the bytes asked for by GETs with a
``Range`` header (what pyarrow sends for every read). It records PUT bodies base64-encoded, so keep it
off while uploading large files.

A moto artefact that matters when timing reads: moto answers a ranged GET by copying the WHOLE object
out of its store and slicing it, so the server's cost of a small range read grows with the object's
size. Reads of many small ranges of a big object are slower through moto than through real S3.

Tests use the fixtures at the end of this module: ``tests/conftest.py`` names this module in
``pytest_plugins``, so every test can ask for ``s3_server`` (one server for the session) and
``s3_bucket`` (a fresh bucket per test)::

    from s3server import S3Server

    def test_roundtrip(spark, s3_server: S3Server, s3_bucket: str) -> None:
        url = f"s3://{s3_bucket}/cache"
        converter = make_spark_converter(df, cache_dir=url, storage_options=s3_server.storage_options)
        ...
        with s3_server.use_env(spark):  # the same through the environment, driver and executors
            ...
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers import free_port

ACCESS_KEY = "sparkfeed-test-access-key"
SECRET_KEY = "sparkfeed-test-secret-key"
REGION = "us-east-1"

_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""An opener that ignores any proxy settings: our requests go to 127.0.0.1 and nowhere else."""


@dataclasses.dataclass(frozen=True)
class Requests:
    """What moto's recorder saw since ``start_recording()``.

    Attributes:
        total: requests of every kind (the recorder's own endpoints excluded).
        by_method: request count per HTTP method ("GET", "HEAD", "PUT", ...).
        gets: GET requests (reads and listings).
        ranged_gets: GETs with a ``Range: bytes=a-b`` header (pyarrow's reads of object data).
        range_bytes: bytes those ranges asked for (the server returns at most that).
        put_bytes: bytes of request bodies of PUTs and POSTs, by their Content-Length.
        entries: (method, path and query, range header or "") of every request, in order.
    """

    total: int
    by_method: dict[str, int]
    gets: int
    ranged_gets: int
    range_bytes: int
    put_bytes: int
    entries: list[tuple[str, str, str]]


def _range_size(header: str) -> int:
    """Bytes asked for by ``bytes=a-b`` (0 for suffix or open ranges, which pyarrow does not send)."""
    unit, _, spec = header.partition("=")
    total = 0
    if unit.strip() != "bytes":
        return 0
    for part in spec.split(","):
        start, _, end = part.strip().partition("-")
        if start and end:
            total += int(end) - int(start) + 1
    return total


def parse_recording(text: str) -> Requests:
    """Counts the requests of a moto recording (one JSON object per line)."""
    methods: Counter[str] = Counter()
    entries: list[tuple[str, str, str]] = []
    ranged = range_bytes = put_bytes = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        entry = json.loads(line)
        method = entry["method"]
        headers = {key.lower(): value for key, value in entry.get("headers", {}).items()}
        url = entry.get("url", "")
        path = url.split("//", 1)[-1].partition("/")[2]
        rng = headers.get("range", "")
        methods[method] += 1
        entries.append((method, "/" + path, rng))
        if method == "GET" and rng:
            ranged += 1
            range_bytes += _range_size(rng)
        if method in ("PUT", "POST"):
            put_bytes += int(headers.get("content-length", 0) or 0)
    return Requests(
        total=sum(methods.values()),
        by_method=dict(methods),
        gets=methods["GET"],
        ranged_gets=ranged,
        range_bytes=range_bytes,
        put_bytes=put_bytes,
        entries=entries,
    )


class S3Server:
    """moto's S3 in a subprocess on 127.0.0.1; a context manager that always stops it.

    Args:
        startup_timeout: seconds to wait for the server to answer before giving up.
        env: extra environment variables for the server process (e.g.
            ``MOTO_S3_DEFAULT_KEY_BUFFER_SIZE`` to keep larger objects in memory).
    """

    access_key = ACCESS_KEY
    secret_key = SECRET_KEY
    region = REGION

    def __init__(self, *, startup_timeout: float = 20.0, env: dict[str, str] | None = None) -> None:
        self.startup_timeout = startup_timeout
        self._extra_env = dict(env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._log: Any = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> S3Server:
        """Starts the server and waits until it answers; retries on another port if it dies at once.

        Raises:
            RuntimeError: if it did not answer within ``startup_timeout`` (its log is in the message).
        """
        if self._process is not None:
            raise RuntimeError("this S3Server is already started")
        self._workdir = Path(tempfile.mkdtemp(prefix="sparkfeed-moto-"))
        errors = []
        for _ in range(3):  # free_port() can race with another process binding the same port
            try:
                self._launch()
                return self
            except RuntimeError as error:
                errors.append(str(error))
                self._terminate()
        self._cleanup()
        raise RuntimeError("moto server did not start:\n" + "\n---\n".join(errors))

    def _launch(self) -> None:
        assert self._workdir is not None
        self.port = free_port()
        env = dict(os.environ)
        env.update(
            MOTO_RECORDER_FILEPATH=str(self._workdir / "recording.jsonl"),
            MOTO_ENABLE_RECORDING="",
            PYTHONUNBUFFERED="1",
            TMPDIR=str(self._workdir),  # moto spills objects above its buffer size to temp files
        )
        env.update(self._extra_env)
        for name in [n for n in env if n.lower() in ("http_proxy", "https_proxy", "all_proxy")]:
            del env[name]
        log_path = self._workdir / f"moto-{self.port}.log"
        self._log = log_path.open("wb")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            cwd=self._workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        atexit.register(self.stop)  # an interrupted run still leaves no server behind
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"exited with status {self._process.returncode}: {self.log_tail()}")
            try:
                with _LOOPBACK.open(self.url + "/moto-api/", timeout=1.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"no answer on {self.url} within {self.startup_timeout:.0f} s: {self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the server (terminate, kill after ``timeout`` s); later requests are refused.

        Idempotent: the fixture's teardown may call it again after a test stopped the server.
        """
        self._terminate(timeout)
        self._cleanup()

    def _terminate(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _cleanup(self) -> None:
        atexit.unregister(self.stop)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The server process's id while it runs."""
        return self._process.pid if self._process is not None else None

    def log_tail(self, lines: int = 20) -> str:
        """The end of the server's log (werkzeug prints one line per request)."""
        if self._workdir is None:
            return ""
        logs = sorted(self._workdir.glob(f"moto-{self.port}.log"))
        if not logs:
            return ""
        return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-lines:])

    # ------------------------------------------------------------------ how clients reach it

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT``: pyarrow's ``endpoint_override``."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the endpoint URL of AWS SDKs and ``AWS_ENDPOINT_URL``."""
        return f"http://{self.endpoint}"

    @property
    def storage_options(self) -> dict[str, str]:
        """Keyword arguments of ``pyarrow.fs.S3FileSystem`` that reach this server."""
        return {
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "region": self.region,
            "endpoint_override": self.endpoint,
            "scheme": "http",
        }

    @property
    def env(self) -> dict[str, str]:
        """Environment variables with which ``FileSystem.from_uri("s3://...")`` reaches this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ENDPOINT_URL_S3": self.url,
        }

    @contextlib.contextmanager
    def use_env(self, spark: Any = None) -> Iterator[dict[str, str]]:
        """Puts ``env`` into ``os.environ`` and, given a session, into the environment of the Python
        workers Spark launches from now on (``spark.sparkContext.environment``); restores both after.
        """
        contexts = [os.environ]
        if spark is not None:
            contexts.append(spark.sparkContext.environment)
        saved = [{name: target.get(name) for name in self.env} for target in contexts]
        try:
            for target in contexts:
                target.update(self.env)
            yield self.env
        finally:
            for target, before in zip(contexts, saved, strict=True):
                for name, value in before.items():
                    if value is None:
                        target.pop(name, None)
                    else:
                        target[name] = value

    def filesystem(self, **overrides: Any) -> Any:
        """A ``pyarrow.fs.S3FileSystem`` for this server; ``overrides`` are more keyword arguments."""
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(**(self.storage_options | overrides))

    def create_bucket(self, name: str | None = None) -> str:
        """Creates a bucket (a fresh unique name when none is given) and returns its name."""
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self.filesystem(allow_bucket_creation=True).create_dir(name)
        return name

    # ------------------------------------------------------------------ counting requests

    def _recorder(self, action: str, method: str = "POST") -> str:
        request = urllib.request.Request(f"{self.url}/moto-api/recorder/{action}", method=method)
        with _LOOPBACK.open(request, timeout=10.0) as response:
            return str(response.read().decode())

    def start_recording(self) -> None:
        """Forgets what was recorded so far and records every request from now on."""
        self._recorder("reset-recording")
        self._recorder("start-recording")

    def stop_recording(self) -> None:
        """Stops recording; ``requests()`` still returns what was recorded."""
        self._recorder("stop-recording")

    def requests(self) -> Requests:
        """The requests recorded since ``start_recording()`` (recording goes on)."""
        return parse_recording(self._recorder("download-recording", method="GET"))


# ---------------------------------------------------------------------- pytest fixtures


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One running moto S3 server for the whole test run, stopped at its end.

    A test that stops it (a fault test) must use its own ``S3Server`` instead.
    """
    with S3Server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the session's server, its name (no ``s3://``)."""
    return s3_server.create_bucket()
