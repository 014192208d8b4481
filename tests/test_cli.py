"""The ``sparkfeed`` command line: ``inspect`` and ``bench``, in process (click's runner) and as real commands."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from pyspark.ml.functions import array_to_vector
from pyspark.sql import functions as F

from sparkfeed import make_spark_converter
from sparkfeed.cli import main

ROWS = 600


@pytest.fixture(scope="module")
def cache(spark):
    """A sparkfeed cache with an MLlib vector, a fixed-size array, a ragged array, a string and a date."""
    df = spark.range(ROWS, numPartitions=2).select(
        "id",
        array_to_vector(F.array(F.col("id") * 1.0, F.lit(2.0), F.lit(3.0))).alias("features"),
        F.array(F.col("id").cast("int"), F.lit(7)).alias("pair"),
        F.expr("slice(array(1, 2, 3), 1, cast(id % 3 AS int))").alias("ragged"),
        F.concat(F.lit("s"), F.col("id").cast("string")).alias("name"),
        F.date_add(F.lit("2024-01-01").cast("date"), F.col("id").cast("int")).alias("day"),
    )
    return make_spark_converter(df, parquet_row_group_size_bytes=2048)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """A Parquet directory written with pyarrow, read in place: 1,000 rows in 2 files of 300-row row groups."""
    root = tmp_path_factory.mktemp("plain")
    for number in range(2):
        ids = np.arange(number * 500, (number + 1) * 500)
        table = pa.table({"id": ids, "x": ids * 0.5, "label": (ids % 10).astype(np.int32)})
        pq.write_table(table, root / f"part-{number}.parquet", row_group_size=300)
    return root


def _run(*args: str):
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output, result.output
    return result


def _columns(report: dict) -> dict[str, dict]:
    return {column["name"]: column for column in report["columns"]}


# --------------------------------------------------------------------------- the command itself


def test_python_dash_m_sparkfeed_lists_the_commands() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sparkfeed", "--help"], capture_output=True, text=True, timeout=60, check=True
    )
    assert "inspect" in done.stdout and "bench" in done.stdout and "Usage: sparkfeed" in done.stdout
    version = subprocess.run(
        [sys.executable, "-m", "sparkfeed", "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0 and re.fullmatch(r"sparkfeed, version \S+\n", version.stdout)


def test_the_installed_console_script_runs_the_same_commands() -> None:
    # pyproject's [project.scripts]; installed with the venv, next to its python (or on the PATH).
    beside = Path(sys.executable).parent / "sparkfeed"
    script = str(beside) if beside.exists() else shutil.which("sparkfeed")
    assert script is not None, "no sparkfeed command: install the package (pip install -e .) to get it"
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60, check=True)
    assert "inspect" in done.stdout and "bench" in done.stdout


# --------------------------------------------------------------------------- inspect


def test_inspect_a_cache_shows_each_columns_batch_dtype_and_shape(cache) -> None:
    result = _run("inspect", "--json", cache.cache_dir_url)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["sparkfeed_cache"] is True and report["kind"] == "sparkfeed cache"
    assert report["rows"] == ROWS and report["files"] == len(cache.manifest.files)
    groups = [rows for entry in cache.manifest.files for rows in entry.row_groups]
    assert report["row_groups"]["count"] == len(groups) > 2
    assert (report["row_groups"]["min_rows"], report["row_groups"]["max_rows"]) == (min(groups), max(groups))
    assert report["bytes_on_disk"] == sum(Path(url.removeprefix("file://")).stat().st_size for url in cache.file_urls)
    assert report["options"]["dtype"] == "float32" and report["created_by"]["pid"] == os.getpid()
    assert report["created_at"] == cache.manifest.created_at
    columns = _columns(report)
    assert list(columns) == ["id", "features", "pair", "ragged", "name", "day"]
    assert (columns["features"]["numpy"], columns["features"]["shape"]) == ("float32", [3])  # the MLlib vector
    assert columns["features"]["torch"] == "torch.float32"
    assert (columns["pair"]["numpy"], columns["pair"]["shape"], columns["pair"]["kind"]) == ("int32", [2], "tensor")
    assert columns["ragged"]["shape"] is None and columns["ragged"]["lengths"] == [[0, 2]]
    assert columns["ragged"]["torch"] == "list of tensors"
    assert (columns["name"]["numpy"], columns["name"]["torch"]) == ("object: str", "list of str")
    assert columns["day"]["numpy"] == "datetime64[D]" and columns["day"]["torch"].startswith("torch.int64 (days")
    # The same facts as text, one line per column.
    text = _run("inspect", cache.cache_dir_url).output
    assert "sparkfeed cache" in text and f"rows        {ROWS:,}" in text and f"pid {os.getpid()}" in text
    assert re.search(r"\n  features +list<float> +float32 +\(3,\)\n", text), text
    assert re.search(r"\n  pair +list<int32> +int32 +\(2,\)\n", text), text
    assert re.search(r"\n  ragged .* varying: 0\.\.2 +list of tensors\n", text), text


def test_inspect_changes_nothing_in_a_kept_cache(spark) -> None:
    # Opening a kept cache by path records a reuse (for `cache clean --older-than`) and a reuser
    # file of its process: `inspect`, which changes nothing, refreshed the cache's last use and
    # left a record of its own, gone process behind.
    kept = make_spark_converter(spark.range(50), keep=True)
    directory = Path(kept.cache_dir_url.removeprefix("file://"))
    try:

        def files() -> dict[str, int]:
            return {path.name: path.stat().st_mtime_ns for path in directory.rglob("*")}

        before = files()
        result = subprocess.run(
            [sys.executable, "-m", "sparkfeed", "inspect", "--json", kept.cache_dir_url],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["rows"] == 50
        assert files() == before
    finally:
        shutil.rmtree(directory)


def test_inspect_a_parquet_directory_read_in_place(plain) -> None:
    result = _run("inspect", "--json", str(plain))
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["sparkfeed_cache"] is False and report["kind"] == "Parquet dataset read in place"
    assert "created_by" not in report and "options" not in report  # no manifest: nothing was created by sparkfeed
    assert (report["rows"], report["files"]) == (1000, 2)
    assert report["row_groups"] == {"count": 4, "min_rows": 200, "median_rows": 250.0, "max_rows": 300}
    columns = _columns(report)
    assert columns["x"]["type"] == "double" and columns["x"]["numpy"] == "float32"  # read as dtype='float32'
    assert columns["label"]["numpy"] == "int32" and columns["label"]["shape"] == []
    text = _run("inspect", str(plain / "part-0.parquet")).output  # one file of it
    assert "Parquet dataset read in place" in text and "rows        500" in text
    assert "read with   dtype='float32'" in text


def test_inspect_lists_a_column_no_tensor_holds_with_its_reason(tmp_path) -> None:
    # A loader refuses such a column only when it selects it; inspect failed on it with a
    # traceback, though it is how a user finds out which columns to leave out.
    table = pa.table(
        {"x": [1, 2, 3], "t": pa.array([0, 1, None], pa.time64("us")), "d": pa.array([5] * 3, pa.duration("us"))}
    )
    pq.write_table(table, tmp_path / "part-0.parquet")
    result = _run("inspect", "--json", str(tmp_path))
    assert result.exit_code == 0, result.output
    columns = _columns(json.loads(result.output))
    assert list(columns) == ["x", "t", "d"] and columns["x"]["numpy"] == "int64"
    for name, stored in (("t", "time64[us]"), ("d", "duration[us]")):
        assert columns[name]["kind"] == "unsupported" and columns[name]["type"] == stored
        assert columns[name]["numpy"] is None and "leave it out with schema_fields" in columns[name]["reason"]
    text = _run("inspect", str(tmp_path)).output
    assert re.search(r"^  t +time64\[us\] +unsupported +- +leave it out with schema_fields$", text, re.MULTILINE), text
    assert "columns (3):" in text


def test_inspect_errors_are_one_line_with_exit_code_1(plain, tmp_path) -> None:
    missing = _run("inspect", str(tmp_path / "nothing"))
    assert missing.exit_code == 1 and missing.output.startswith("Error: cannot open ")
    assert "no Parquet dataset at" in missing.output and len(missing.output.strip().splitlines()) == 1
    (tmp_path / "notes.txt").write_text("not parquet")
    wrong = _run("inspect", str(tmp_path))
    assert wrong.exit_code == 1 and "notes.txt" in wrong.output and "is not a Parquet file" in wrong.output
    damaged = tmp_path / "damaged"
    shutil.copytree(plain, damaged)
    (damaged / "_sparkfeed_manifest.json").write_text("{ torn")
    corrupt = _run("inspect", str(damaged))
    assert corrupt.exit_code == 1 and "_sparkfeed_manifest.json cannot be read" in corrupt.output
    assert _run("inspect").exit_code == 2  # click's usage error: the URL is missing


# --------------------------------------------------------------------------- bench


def test_bench_on_a_synthetic_table_measures_whole_epochs_and_says_whether_a_step_is_input_bound(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the synthetic table goes, to see it removed
    args = ["bench", "--rows", "20000", "--epochs", "1", "--repeats", "2", "--json"]
    slow = _run(*args, "--step-rate", "0.001")
    assert slow.exit_code == 0, slow.output
    report = json.loads(slow.output)
    assert report["data"] == {"url": None, "synthetic": True, "rows": 20000, "columns": 18, "files": 4, "row_groups": 4}
    assert len(report["passes"]) == 2
    for one in report["passes"]:  # every row once per epoch, in whole batches of 32: 8+64+4 bytes a row
        assert (one["batches"], one["rows"], one["bytes"]) == (math.ceil(20000 / 32), 20000, 20000 * 76)
        assert one["seconds"] > 0 and one["rows_per_s"] > 0 and one["mb_per_s"] > 0 and one["batches_per_s"] > 0
    assert all(value > 0 for value in report["median"].values())
    assert report["step"]["input_bound"] is False and report["step"]["headroom"] > 1
    fast = json.loads(_run(*args, "--step-time", "1e-9").output)  # a step of a nanosecond: no reader keeps up
    assert fast["step"]["input_bound"] is True and fast["step"]["headroom"] < 1
    assert fast["step"]["verdict"].startswith("input-bound: the reader gives ")
    assert list(tmp_path.iterdir()) == []  # the synthetic tables were removed


def test_bench_text_report_over_seconds(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = _run("bench", "--rows", "20000", "--seconds", "0.2", "--repeats", "2", "--no-shuffle", "--step-rate", "5")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("data: synthetic table") and "20,000 rows x 18 columns" in lines[0]
    assert "numpy, batch size 32" in lines[1] and "file order" in lines[1] and "2 timed pass(es) of 0.2 s" in lines[1]
    passes = [line for line in lines if line.startswith("  pass ")]
    assert len(passes) == 2
    median = re.fullmatch(r"median: ([\d,]+) rows/s, ([\d,.]+) (KB|MB|GB)/s, ([\d,]+) batches/s", lines[4])
    assert median is not None, lines[4]
    assert float(median[1].replace(",", "")) > 0 and float(median[4].replace(",", "")) > 0
    assert re.fullmatch(
        r"reader: [\d,]+ batches/s; your step: 5 batches/s -> not input-bound \([\d,.]+x headroom\)", lines[5]
    )
    assert list(tmp_path.iterdir()) == []


def test_bench_on_a_cache_url_with_torch(cache) -> None:
    result = _run("bench", cache.cache_dir_url, "--framework", "torch", "--batch-size", "64", "--epochs", "1", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["data"]["url"] == cache.cache_dir_url and report["data"]["synthetic"] is False
    assert report["framework"] == "torch" and report["step"] is None
    per_row = 8 + 3 * 4 + 2 * 4 + 8  # id, features (float32), pair (int32), day (int64 days in torch)
    for one in report["passes"]:
        assert (one["batches"], one["rows"], one["bytes"]) == (math.ceil(ROWS / 64), ROWS, ROWS * per_row)
    assert report["uncounted_columns"] == ["ragged", "name"]  # lists in torch: their bytes are not the array's
    text = _run("bench", cache.cache_dir_url, "--epochs", "1", "--repeats", "1").output
    assert "left out: ragged, name" in text


def test_bench_on_a_dataset_with_a_column_no_tensor_holds_says_so_and_column_leaves_it_out(tmp_path) -> None:
    pq.write_table(pa.table({"id": np.arange(100), "point": [{"a": i} for i in range(100)]}), tmp_path / "p.parquet")
    refused = _run("bench", str(tmp_path), "--epochs", "1", "--repeats", "1")
    assert refused.exit_code == 1 and "Traceback" not in refused.output, refused.output
    assert "'point'" in refused.output and "--column" in refused.output
    chosen = _run("bench", str(tmp_path), "--epochs", "1", "--repeats", "1", "--column", "id", "--json")
    assert chosen.exit_code == 0, chosen.output
    assert [one["rows"] for one in json.loads(chosen.output)["passes"]] == [100]


def test_bench_refuses_bad_arguments_and_names_a_missing_frameworks_extra(monkeypatch) -> None:
    both = _run("bench", "--epochs", "1", "--seconds", "1")
    assert both.exit_code == 2 and "give --epochs or --seconds, not both" in both.output
    assert _run("bench", "--step-rate", "2", "--step-time", "0.5").exit_code == 2
    assert _run("bench", "--framework", "mxnet").exit_code == 2
    assert _run("bench", "--batch-size", "0").exit_code == 2
    monkeypatch.setitem(sys.modules, "jax", None)  # as if JAX were not installed
    missing = _run("bench", "--framework", "jax", "--rows", "10")
    assert missing.exit_code == 1 and "pip install 'sparkfeed[jax]'" in missing.output
    nothing = _run("bench", "/nonexistent/sparkfeed-cache")
    assert nothing.exit_code == 1 and "no Parquet dataset at" in nothing.output
