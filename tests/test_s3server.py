"""The moto S3 server of the tests, checked with pyarrow alone: what the S3 tests rely on."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from s3server import S3Server, parse_recording  # its fixtures come through conftest's pytest_plugins


def write(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as out:
        out.write(data)


def read(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_file(path) as handle:
        return bytes(handle.read())


def moto_processes(port: int) -> list[int]:
    """Pids of live processes whose command line is a moto server on ``port`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue  # gone meanwhile
        if state != "Z" and b"moto.server" in argv and str(port).encode() in argv:
            found.append(int(entry.name))
    return found


def test_an_object_is_written_read_and_listed(s3_server: S3Server, s3_bucket: str) -> None:
    fs = s3_server.filesystem()
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one part of a multipart upload buffer
    write(fs, f"{s3_bucket}/dir/blob.bin", data)
    write(fs, f"{s3_bucket}/dir/sub/small.txt", b"hello")
    assert read(fs, f"{s3_bucket}/dir/blob.bin") == data
    listed = fs.get_file_info(pafs.FileSelector(f"{s3_bucket}/dir", recursive=True))
    files = {info.path: info.size for info in listed if info.type == pafs.FileType.File}
    assert files == {f"{s3_bucket}/dir/blob.bin": len(data), f"{s3_bucket}/dir/sub/small.txt": 5}


def test_delete_dir_of_a_prefix_leaves_its_sibling_prefix(s3_server: S3Server, s3_bucket: str) -> None:
    fs = s3_server.filesystem()
    for prefix in ("p/cache", "p/cache-2"):
        write(fs, f"{s3_bucket}/{prefix}/part-0.parquet", b"x")
        write(fs, f"{s3_bucket}/{prefix}/_sparkfeed_manifest.json", b"{}")
    write(fs, f"{s3_bucket}/p/cache.txt", b"a sibling object that starts with the same characters")
    fs.delete_dir(f"{s3_bucket}/p/cache")
    left = fs.get_file_info(pafs.FileSelector(f"{s3_bucket}/p", recursive=True))
    assert sorted(info.path for info in left if info.type == pafs.FileType.File) == [
        f"{s3_bucket}/p/cache-2/_sparkfeed_manifest.json",
        f"{s3_bucket}/p/cache-2/part-0.parquet",
        f"{s3_bucket}/p/cache.txt",
    ]
    assert fs.get_file_info(f"{s3_bucket}/p/cache").type == pafs.FileType.NotFound


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"])
def test_from_uri_finds_the_server_through_the_environment(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    write(s3_server.filesystem(), f"{s3_bucket}/env/key", b"found")
    for name, value in s3_server.env.items():
        if not name.startswith("AWS_ENDPOINT_URL"):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv(variable, s3_server.url)  # one of the two is enough, its http:// is honoured
    fs, path = pafs.FileSystem.from_uri(f"s3://{s3_bucket}/env/key")
    assert read(fs, path) == b"found"


def test_use_env_sets_and_restores_the_environment(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with s3_server.use_env() as env:
        assert os.environ["AWS_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL"] == s3_server.url
        assert os.environ["AWS_REGION"] == "us-east-1"
    assert "AWS_ENDPOINT_URL" not in os.environ
    assert os.environ["AWS_REGION"] == "eu-west-3"


def test_the_recorder_counts_requests_and_range_bytes(s3_server: S3Server, s3_bucket: str) -> None:
    fs = s3_server.filesystem()
    write(fs, f"{s3_bucket}/rec/obj", bytes(range(256)) * 4096)  # 1 MiB
    s3_server.start_recording()
    try:
        with fs.open_input_file(f"{s3_bucket}/rec/obj") as handle:  # HEAD for the size
            handle.read_at(1000, 0)
            handle.read_at(5000, 500_000)
        recorded = s3_server.requests()
    finally:
        s3_server.stop_recording()
    assert recorded.by_method.get("HEAD", 0) == 1
    assert recorded.ranged_gets == 2
    assert recorded.range_bytes == 6000
    assert recorded.total == 3
    assert [entry[2] for entry in recorded.entries if entry[0] == "GET"] == ["bytes=0-999", "bytes=500000-504999"]
    s3_server.start_recording()  # starting again forgets the previous requests
    s3_server.stop_recording()
    assert s3_server.requests().total == 0


def test_parse_recording_skips_blank_lines_and_counts_writes() -> None:
    text = (
        '{"method": "PUT", "url": "http://h/b/k", "headers": {"Content-Length": "12"}}\n\n'
        '{"method": "GET", "url": "http://h/b/k", "headers": {"Range": "bytes=2-5"}}\n'
        '{"method": "GET", "url": "http://h/b?list-type=2", "headers": {}}\n'
    )
    recorded = parse_recording(text)
    assert (recorded.total, recorded.gets, recorded.ranged_gets, recorded.range_bytes) == (3, 2, 1, 4)
    assert recorded.put_bytes == 12
    assert recorded.entries[2] == ("GET", "/b?list-type=2", "")


def test_after_stop_reads_fail_fast_and_no_process_is_left() -> None:
    server = S3Server().start()
    try:
        port, pid = server.port, server.pid
        assert moto_processes(port) == [pid]
        bucket = server.create_bucket()
        fs = server.filesystem(
            connect_timeout=1.0,
            request_timeout=1.0,  # ignored on Linux by pyarrow; a refused connection needs no timeout
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=2),
        )
        write(fs, f"{bucket}/k", b"data")
        assert read(fs, f"{bucket}/k") == b"data"
        server.stop()
        assert not server.running
        started = time.monotonic()
        with pytest.raises(OSError):
            read(fs, f"{bucket}/k")
        elapsed = time.monotonic() - started
        assert elapsed < 5.0, f"a read against a stopped server took {elapsed:.1f} s to fail"
        assert moto_processes(port) == []
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # stopped and reaped
    finally:
        server.stop()


def test_the_context_manager_stops_the_server_on_an_error() -> None:
    with pytest.raises(ZeroDivisionError), S3Server() as server:
        port = server.port
        assert moto_processes(port)
        1 / 0  # noqa: B018
    assert moto_processes(port) == []
