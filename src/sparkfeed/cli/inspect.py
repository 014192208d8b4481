"""``sparkfeed inspect URL``: what a cache or Parquet dataset holds, and what its batches will be.

The question it answers is the one asked before training: what shape and dtype will each column
have in a batch, how many rows are there, and how is the data laid out (row groups are the unit of
reading and shuffling). Everything comes from the manifest (a sparkfeed cache) or the files'
footers (a dataset read in place) plus one listing for the sizes; no row is read, no Spark runs.
"""

from __future__ import annotations

import json
import statistics
from typing import Any

import click
import numpy as np
import pyarrow as pa

from sparkfeed.types import ColumnSpec, UnsupportedTypeError, column_specs, leaf_type


@click.command("inspect")
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of text (for scripts).")
def inspect_command(url: str, as_json: bool) -> None:
    """Show the schema, tensor shapes, rows and row groups of a cache or Parquet dataset.

    URL is a sparkfeed cache (a converter's cache_dir_url) or any Parquet dataset: a
    directory, a single file, or an object-store URL (s3://, gs://, hdfs://, ...). Nothing is
    changed or read beyond the metadata.
    """
    report = describe_dataset(url)
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        click.echo(format_report(report))


def open_converter(url: str, *, record_use: bool = True) -> Any:
    """``make_spark_converter(url)`` with its errors as one-line CLI errors (exit code 1).

    With ``record_use=False`` a sparkfeed cache is opened from its manifest alone: opening a
    kept cache by path records a reuse in it (which ``cache clean --older-than`` measures) and
    a record of this process, which a command that only looks must not write.

    Raises:
        click.ClickException: Nothing is there, it is not Parquet, its manifest is damaged, a
            column has no tensor type, or the storage refused access.
    """
    from sparkfeed import make_spark_converter
    from sparkfeed.cache import read_cache
    from sparkfeed.converter import SparkDatasetConverter
    from sparkfeed.location import Location

    try:
        if not record_use:
            location = Location.parse(url)
            cache = read_cache(location)
            if cache is not None:
                return SparkDatasetConverter(location, cache[0])
        return make_spark_converter(url)
    except (OSError, ValueError, UnsupportedTypeError, pa.ArrowException) as error:
        # FileNotFoundError (nothing there), ValueError (not Parquet, files that disagree, a
        # CorruptManifestError), PermissionError: each message already names the file and the fix.
        raise click.ClickException(f"cannot open {url}: {error}") from error


def describe_dataset(url: str) -> dict[str, Any]:
    """The JSON-able description ``inspect`` prints: see the command's help."""
    converter = open_converter(url, record_use=False)  # inspecting is no reuse: the cache stays as it is
    manifest = converter.manifest
    location = converter.location
    groups = [rows for entry in manifest.files for rows in entry.row_groups]
    try:
        infos = location.filesystem.get_file_info([location.child(*e.path.split("/")).path for e in manifest.files])
        size: int | None = sum(max(info.size or 0, 0) for info in infos)
    except (OSError, pa.ArrowException):  # sizes are a courtesy: the layout is known without them
        size = None
    cache = bool(manifest.key)  # a cache sparkfeed wrote has its DataFrame's key; a dataset read in place has none
    dtype = manifest.options.get("dtype")
    report: dict[str, Any] = {
        "url": converter.cache_dir_url,
        "kind": "sparkfeed cache" if cache else "Parquet dataset read in place",
        "sparkfeed_cache": cache,
        "rows": manifest.num_rows,
        "files": len(manifest.files),
        "bytes_on_disk": size,
        "row_groups": {
            "count": len(groups),
            "min_rows": min(groups, default=0),
            "median_rows": statistics.median(groups) if groups else 0,
            "max_rows": max(groups, default=0),
        },
        "float_dtype": dtype,
        "columns": [_describe(manifest.schema, name, dtype, manifest.shapes) for name in manifest.schema.names],
    }
    if cache:
        report["options"] = manifest.options
        report["created_at"] = manifest.created_at
        report["created_by"] = manifest.created_by
    return report


def _describe(schema: pa.Schema, name: str, dtype: str | None, shapes: dict[str, Any]) -> dict[str, Any]:
    """One column's entry; one that no tensor holds is listed with the reason, not a failure.

    A loader refuses such a column only when it selects it, so the dataset stays readable with
    ``schema_fields``; ``inspect`` is how a user finds out which columns to leave out.
    """
    stored = schema.field(name).type
    try:
        spec = column_specs(schema, dtype, shapes, [name])[name]
    except UnsupportedTypeError as error:
        return {
            "name": name,
            "type": type_name(stored),
            "kind": "unsupported",
            "numpy": None,
            "shape": None,
            "lengths": None,
            "torch": None,
            "reason": str(error),
        }
    return _column(spec, stored, shapes.get(name))


def _column(spec: ColumnSpec, stored: pa.DataType, stats: list[tuple[int | None, int | None]] | None) -> dict[str, Any]:
    """One column: its type in the files, what a NumPy batch holds, and what a torch batch holds."""
    leaf = leaf_type(spec.arrow_type)
    values = "str" if pa.types.is_string(leaf) or pa.types.is_large_string(leaf) else "bytes"
    if spec.kind == "ragged":
        lengths = [[low, high] for low, high in (stats or [])]
        numpy = f"object: 1-D arrays of {_leaf_dtype(leaf)}, varying length"
        torch = "list of tensors"
        shape: list[int] | None = None
    elif spec.kind == "object":
        lengths = None
        numpy = f"object: {values}"
        torch = f"list of {values}"
        shape = []
    else:
        lengths = None
        dtype = spec.numpy_dtype
        numpy = str(dtype)
        view = spec.view("torch")
        torch = f"torch.{view.dtype}"
        if dtype.kind == "M":  # no framework has a date tensor: counts since 1970
            unit = np.datetime_data(dtype)[0]
            torch += " (days since 1970-01-01)" if unit == "D" else f" ({unit} since 1970-01-01)"
        shape = list(spec.shape)
    return {
        "name": spec.name,
        "type": type_name(stored),
        "kind": spec.kind,
        "numpy": numpy,
        "shape": shape,  # per row: [] a scalar, [n] a vector, None for arrays of varying length
        "lengths": lengths,  # ragged only: [min, max] length at each nesting level
        "torch": torch,
    }


def type_name(data_type: pa.DataType) -> str:
    """An Arrow type as a short name: ``list<float>`` for Arrow's ``list<element: float not null>``."""
    if pa.types.is_fixed_size_list(data_type):
        return f"list<{type_name(data_type.value_type)}>[{data_type.list_size}]"
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return f"list<{type_name(data_type.value_type)}>"
    return str(data_type)


def _leaf_dtype(leaf: pa.DataType) -> str:
    try:
        return str(np.dtype(leaf.to_pandas_dtype()))
    except (NotImplementedError, TypeError):
        return str(leaf)


def human_bytes(count: int | None) -> str:
    """Bytes in decimal units (MB = 10^6 bytes, as MB/s is counted)."""
    if count is None:
        return "size unknown"
    if count < 1000:
        return f"{count:,} B"
    value = float(count)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            break
    return f"{value:,.1f} {unit}"


def format_report(report: dict[str, Any]) -> str:
    """The text ``inspect`` prints: a header, the layout, then one line per column."""
    groups = report["row_groups"]
    median = groups["median_rows"]
    lines = [
        f"{report['url']}",
        f"  {report['kind']}",
        f"  rows        {report['rows']:,}",
        f"  files       {report['files']:,} ({human_bytes(report['bytes_on_disk'])} on disk)",
        f"  row groups  {groups['count']:,} (rows per group: min {groups['min_rows']:,}, "
        f"median {median:,.0f}, max {groups['max_rows']:,})",
    ]
    if report["sparkfeed_cache"]:
        creator = report["created_by"]
        who = f"{creator.get('user') or '?'}@{creator.get('host') or '?'}"
        details = ", ".join(
            f"{label} {creator[key]}"
            for key, label in (("pid", "pid"), ("spark_app_id", "Spark app"), ("sparkfeed", "sparkfeed"))
            if creator.get(key) is not None
        )
        lines.append(f"  created     {report['created_at']} by {who}" + (f" ({details})" if details else ""))
        options = ", ".join(f"{key}={value!r}" for key, value in report["options"].items())
        lines.append(f"  options     {options}")
    else:
        lines.append(f"  read with   dtype={report['float_dtype']!r} (floating columns as this precision)")
    rows = [("column", "stored as", "NumPy batch", "per row", "torch (where it differs)")]
    for column in report["columns"]:
        shape = column["shape"]
        if column["kind"] == "unsupported":
            rows.append((column["name"], column["type"], "unsupported", "-", "leave it out with schema_fields"))
            continue
        if shape is None:
            per_row = "varying: " + " x ".join(f"{low}..{high}" for low, high in column["lengths"] or [])
        else:
            per_row = "scalar" if not shape else str(tuple(shape))
        torch = column["torch"]
        same = torch == f"torch.{column['numpy']}"
        rows.append((column["name"], column["type"], column["numpy"], per_row, "" if same else torch))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines.append("")
    lines.append(f"columns ({len(report['columns'])}):")
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append(("  " + "  ".join([*cells, row[-1]])).rstrip())
    return "\n".join(lines)
