"""``sparkfeed cache ls|clean|rm`` on what real killed processes left, beside a live cache."""

from __future__ import annotations

import datetime
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from sparkfeed import make_spark_converter
from sparkfeed.cache import MARKER_NAME, USED_NAME, IncompleteCacheError, collect, find_kept, remove_orphans, scan
from sparkfeed.cli import main
from sparkfeed.location import Location
from sparkfeed.owner import Liveness
from test_cache import _made_by_a_process_that_ended


def _run(*args: str, env: dict[str, str] | None = None):
    result = CliRunner().invoke(main, list(args), env=env)
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture
def parent(spark, leftovers: Path) -> dict[str, Path]:
    """The killed processes' complete and partial caches, a cache of this (running) process, a user's file."""
    orphans = {e.state: Path(e.location.local_path) for e in scan(Location.parse(str(leftovers)))}
    made = Path(make_spark_converter(spark.range(7), cache_dir=str(leftovers.parent / "beside")).location.local_path)
    shutil.copytree(made, leftovers / made.name)
    (leftovers / "notes.txt").write_text("the user's")
    return {"root": leftovers, "running": leftovers / made.name, **orphans}


def test_ls_shows_state_rows_size_age_creator_and_whether_it_runs(parent) -> None:
    result = _run("cache", "ls", str(parent["root"]))
    assert result.exit_code == 0
    lines = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    assert lines.keys() == {"NAME", parent["complete"].name, parent["partial"].name, parent["running"].name}
    assert lines["NAME"].split() == ["NAME", "STATE", "ROWS", "SIZE", "AGE", "CREATOR"]
    complete, partial, running = (lines[parent[k].name].split() for k in ("complete", "partial", "running"))
    assert complete[1:3] == ["complete", "100"] and complete[-1] == "orphaned"
    assert partial[1:3] == ["partial", "-"] and partial[-1] == "orphaned"
    assert running[1:3] == ["complete", "7"] and running[-1] == "running"
    assert all(any(unit in line for unit in (" B", "KiB")) for line in (" ".join(complete), " ".join(running)))
    assert result.output.startswith(f"3 caches under {Location.parse(str(parent['root'])).url}, ")


def test_ls_json_and_the_default_directory_from_the_environment(parent) -> None:
    result = _run("cache", "ls", "--json", env={"SPARKFEED_CACHE_DIR": str(parent["root"])})
    report = json.loads(result.output)
    assert report["parent"] == Location.parse(str(parent["root"])).url
    by_name = {c["url"].rsplit("/", 1)[1]: c for c in report["caches"]}
    assert by_name[parent["running"].name]["creator_state"] == "running"
    assert by_name[parent["complete"].name]["orphaned"] and by_name[parent["complete"].name]["rows"] == 100
    assert by_name[parent["partial"].name]["state"] == "partial"
    assert {"bytes", "created_at", "creator"} <= by_name[parent["partial"].name].keys()


def test_clean_removes_orphans_and_partial_writes_only_and_dry_run_removes_nothing(parent) -> None:
    dry = _run("cache", "clean", "--dry-run", str(parent["root"]))
    assert dry.exit_code == 0 and dry.output.count("would remove file://") == 2
    assert parent["complete"].exists() and parent["partial"].exists()
    done = _run("cache", "clean", str(parent["root"]))
    assert done.exit_code == 0
    assert "removed 2 caches" in done.output and "left 1 caches whose creator runs" in done.output
    assert not parent["complete"].exists() and not parent["partial"].exists()
    assert parent["running"].exists() and (parent["root"] / "notes.txt").read_text() == "the user's"
    assert "removed 0 caches" in _run("cache", "clean", str(parent["root"])).output


def test_rm_removes_one_cache_and_refuses_with_one_line_errors(parent) -> None:
    refused = _run("cache", "rm", str(parent["running"]))
    assert (
        refused.exit_code == 1 and refused.output.startswith("Error: not deleting") and "still runs" in refused.output
    )
    assert _run("cache", "rm", str(parent["root"] / "notes.txt")).exit_code == 1
    assert "holds no sparkfeed marker" in _run("cache", "rm", str(parent["root"])).output
    assert (parent["root"] / "notes.txt").exists() and parent["running"].exists()
    removed = _run("cache", "rm", str(parent["complete"]))
    assert removed.exit_code == 0 and removed.output.startswith("removed file://") and not parent["complete"].exists()
    forced = _run("cache", "rm", "--force", str(parent["running"]))
    assert forced.exit_code == 0 and not parent["running"].exists()


REUSER = """
import sys, time
from sparkfeed.cache import mark_used
from sparkfeed.location import Location
mark_used(Location.parse(sys.argv[1]))  # what reuse="auto" records when it reuses a kept cache
print("reading", flush=True)
time.sleep(120)
"""


@pytest.fixture
def reused(tmp_path: Path) -> Iterator[Path]:
    """A kept cache whose creator has ended, reused by a process that still runs (reading it)."""
    cache = _made_by_a_process_that_ended(tmp_path, keep=True)
    reader = subprocess.Popen([sys.executable, "-c", REUSER, str(cache)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None and reader.stdout.readline() == "reading\n"
        yield cache
    finally:
        reader.kill()
        reader.wait()


def test_rm_refuses_a_kept_cache_a_running_process_reused_without_force(reused) -> None:
    (entry,) = scan(Location.parse(str(reused.parent)))
    assert entry.in_use and entry.kept
    refused = _run("cache", "rm", str(reused))
    assert refused.exit_code == 1 and "in use" in refused.output and "--force" in refused.output
    assert reused.is_dir()
    assert _run("cache", "rm", "--force", str(reused)).exit_code == 0 and not reused.exists()


OPENER = """
import sys, time
from sparkfeed import make_spark_converter
converter = make_spark_converter(sys.argv[1])  # a kept cache opened by its URL, as keep=True's doc offers
with converter.make_numpy_iterator(batch_size=5, num_epochs=1) as batches:
    next(iter(batches))
    print("reading", flush=True)
    time.sleep(120)
"""


def test_clean_older_than_leaves_a_kept_cache_opened_by_its_url_while_it_is_read(tmp_path) -> None:
    cache = _made_by_a_process_that_ended(tmp_path, keep=True)
    reader = subprocess.Popen(
        [sys.executable, "-c", OPENER, Location.parse(str(cache)).url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert reader.stdout is not None and reader.stdout.readline() == "reading\n"
        (entry,) = scan(Location.parse(str(tmp_path)))
        assert entry.in_use and entry.last_used is not None
        done = _run("cache", "clean", "--older-than", "0s", str(tmp_path))
        assert done.exit_code == 0 and "removed 0 caches" in done.output and cache.is_dir()
    finally:
        reader.kill()
        reader.wait()
    assert "removed 1 caches" in _run("cache", "clean", "--older-than", "0s", str(tmp_path)).output  # read no more


def _edit_marker(cache: Path, **changes: object) -> None:
    marker = json.loads((cache / MARKER_NAME).read_text())
    for key, value in changes.items():
        if key == "pid":
            marker["owner"]["pid"] = value
        elif key == "started":
            marker["owner"]["started"] = value
        else:
            marker[key] = value
    (cache / MARKER_NAME).write_text(json.dumps(marker))


def test_damaged_markers_break_neither_a_conversion_nor_ls_nor_clean(spark, tmp_path) -> None:
    huge_pid, naive, odd = (_made_by_a_process_that_ended(tmp_path, keep=True) for _ in range(3))
    _edit_marker(huge_pid, pid=2**70)
    _edit_marker(naive, created_at="2026-01-01T00:00:00")  # no offset: read as UTC
    _edit_marker(odd, started=10**400, created_at="yesterday")
    (odd / USED_NAME).write_text(json.dumps({"at": "not a time"}))
    listed = _run("cache", "ls", str(tmp_path))
    assert listed.exit_code == 0 and listed.output.startswith("3 caches under")
    entries = {Path(e.location.local_path): e for e in scan(Location.parse(str(tmp_path)))}
    assert entries[huge_pid].owner is None and entries[huge_pid].liveness is Liveness.UNKNOWN  # never collected
    converter = make_spark_converter(spark.range(3), cache_dir=str(tmp_path))
    assert len(converter) == 3
    cleaned = _run("cache", "clean", "--older-than", "1d", str(tmp_path))
    assert cleaned.exit_code == 0 and "removed 1 caches" in cleaned.output and not naive.exists()
    assert huge_pid.is_dir() and odd.is_dir()  # its times cannot be read: its age is unknown


def test_a_kept_cache_reused_between_the_choice_and_the_removal_is_not_removed(tmp_path) -> None:
    """`cache clean --older-than` chooses from a listing, then removes: a reuse may come in between."""
    cache = _made_by_a_process_that_ended(tmp_path, keep=True)
    parent = Location.parse(str(tmp_path))
    (chosen,) = collect(parent, older_than=datetime.timedelta(0), dry_run=True)  # what clean decides first
    reader = subprocess.Popen([sys.executable, "-c", REUSER, str(cache)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None and reader.stdout.readline() == "reading\n"
        assert remove_orphans([chosen]) == [] and cache.is_dir()  # then removes: in use now
    finally:
        reader.kill()
        reader.wait()
    assert remove_orphans([chosen]) == [] and cache.is_dir()  # reused since the choice: a new look decides
    assert [e.location for e in collect(parent, older_than=datetime.timedelta(0))] == [chosen.location]


@pytest.mark.parametrize("age", ["99999999999d", "999999999d", "36526d"])
def test_an_age_beyond_any_cache_is_a_usage_error_not_a_traceback(tmp_path, age: str) -> None:
    # 99999999999d raised OverflowError from timedelta, 999999999d from the date it is taken from.
    done = _run("cache", "clean", "--older-than", age, str(tmp_path))
    assert done.exit_code == 2 and f"'{age}' is longer than any cache has been around" in done.output
    assert _run("cache", "clean", "--older-than", "36525d", str(tmp_path)).exit_code == 0


def _kept_by_a_process_gone(parent: Path) -> Path:
    """A complete kept cache of 10 rows under ``parent``, for the key ``k``, made by a process that has ended."""
    script = (
        "import sys\n"
        "import pyarrow as pa, pyarrow.parquet as pq\n"
        "from sparkfeed import cache\n"
        "from sparkfeed.location import Location\n"
        "location, token = cache.create_cache_dir(Location.parse(sys.argv[1]), key='k', keep=True)\n"
        "table = pa.table({'id': list(range(10))})\n"
        "pq.write_table(table, f'{location.path}/part-0.parquet')\n"
        "files = (cache.FileEntry('part-0.parquet', (10,)),)\n"
        "cache.write_manifest(location, cache.Manifest(files, table.schema, {}, {}))\n"
        "print(location.local_path)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(parent)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


@pytest.mark.slow
def test_a_cache_another_clean_is_removing_is_left_to_it_by_conversions_rm_and_reuse(tmp_path) -> None:
    # Its manifest set aside for the clean's last look at its reusers, the cache is partial and its
    # creator gone: what a conversion's collection of leftovers removes. It is the clean's to
    # remove or put back, and a reuse must find nothing there meanwhile.
    from test_reuse import PausedClean

    root = tmp_path / "caches"
    made = _kept_by_a_process_gone(root)
    parent = Location.parse(str(root))
    clean = PausedClean("_still_unused", tmp_path / "flags", "--older-than", "0s", str(root))
    with clean:
        (entry,) = scan(parent)
        assert entry.state == "partial" and entry.withdrawn_by is not None and not entry.orphaned
        assert collect(parent, partial_only=True) == [] and collect(parent) == []
        assert find_kept(parent, "k") is None
        removing = _run("cache", "rm", str(made))
        assert removing.exit_code == 1 and "is removing it" in removing.output
        assert "being removed" in _run("cache", "ls", str(root)).output
        assert (made / "part-0.parquet").exists()
    assert "removed 1 caches" in clean.output and not made.exists()


@pytest.mark.slow
def test_a_cache_clean_has_begun_to_remove_is_refused_when_opened_by_its_url(tmp_path) -> None:
    # Opened by its URL after the clean's last look at its reusers: the converter was handed a
    # cache whose files went right after, and its job failed on the first of them.
    from test_reuse import PausedClean

    root = tmp_path / "caches"
    made = _kept_by_a_process_gone(root)
    clean = PausedClean("delete_cache", tmp_path / "flags", "--older-than", "0s", str(root))
    with clean, pytest.raises(IncompleteCacheError, match="is removing it"):
        make_spark_converter(str(made))
    assert "removed 1 caches" in clean.output and not made.exists()


def test_a_cache_opened_by_its_url_while_a_clean_decides_is_read_whole_and_kept(tmp_path) -> None:
    from test_reuse import PausedClean

    root = tmp_path / "caches"
    made = _kept_by_a_process_gone(root)
    clean = PausedClean("_withdraw", tmp_path / "flags", "--older-than", "0s", str(root))
    with clean:
        converter = make_spark_converter(str(made))
    assert "removed 0 caches" in clean.output
    with converter.make_numpy_iterator(batch_size=4, num_epochs=1) as batches:
        assert sorted(int(i) for batch in batches for i in batch["id"]) == list(range(10))
