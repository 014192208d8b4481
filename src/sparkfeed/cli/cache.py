"""``sparkfeed cache ls|clean|rm``: the caches under a parent directory, and the leftovers of killed processes.

A process that ends normally or by SIGTERM removes its caches; one killed by SIGKILL (the
out-of-memory killer, a preempted node) cannot. Its caches stay, and each one's marker says who
made it (host, pid, start time), so ``ls`` can tell a cache being used from an orphan, and
``clean`` removes orphans only: never a cache whose creator runs, or may run on another host.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

import click

from sparkfeed.cache import (
    CACHE_DIR_ENV,
    CacheEntry,
    NotOursError,
    collect,
    parse_time,
    remove,
    resolve_cache_dir,
    scan,
)
from sparkfeed.location import Location
from sparkfeed.owner import Liveness

_DIR_HELP = f"DIR is the parent directory of the caches (default: ${CACHE_DIR_ENV}, else this user's temp directory)."


@click.group("cache")
def cache_command() -> None:
    """List, clean up and remove sparkfeed caches."""


def _parent(directory: str | None) -> Location:
    try:
        return resolve_cache_dir(directory, None)
    except (ValueError, PermissionError) as error:
        raise click.ClickException(str(error)) from error


@cache_command.command("ls")
@click.argument("directory", metavar="[DIR]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of a table.")
def ls_command(directory: str | None, as_json: bool) -> None:
    """List the caches under DIR: size, rows, age, creator, whether it still runs, complete or partial.

    \b
    STATE     complete, partial (being written, or left by an interrupted write), corrupt,
              unsupported (a newer sparkfeed's format: never cleaned, `cache rm URL` removes it)
    CREATOR   running; orphaned (gone: `sparkfeed cache clean` removes it); unknown (another host);
              kept (made with keep=True, for later processes: `cache clean --older-than` removes it);
              being removed (by `cache clean` or `rm` in another process)
    """  # noqa: D301 - \b keeps click from rewrapping the legend
    parent = _parent(directory)
    entries = scan(parent)
    if as_json:
        click.echo(json.dumps({"parent": str(parent), "caches": [_as_dict(e) for e in entries]}, indent=1))
        return
    if not entries:
        click.echo(f"no sparkfeed caches under {parent}")
        return
    rows = [("NAME", "STATE", "ROWS", "SIZE", "AGE", "CREATOR", "")]
    rows += [
        (
            entry.location.name,
            entry.state,
            "-" if entry.num_rows is None else f"{entry.num_rows:,}",
            _size(entry.size_bytes),
            _age(entry.created_at),
            str(entry.owner or "-"),
            _liveness(entry),
        )
        for entry in entries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    click.echo(f"{len(entries)} caches under {parent}, {_size(sum(e.size_bytes for e in entries))} in all")
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@cache_command.command("clean")
@click.argument("directory", metavar="[DIR]", required=False)
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option(
    "--older-than",
    "older_than",
    metavar="AGE",
    default=None,
    help="Also remove kept caches (keep=True) not made or reused for AGE (e.g. 90m, 12h, 7d, 2w), "
    "whose creator is gone and that no running process on this host reused.",
)
def clean_command(directory: str | None, dry_run: bool, older_than: str | None) -> None:
    """Remove the caches under DIR whose creator is gone: orphans and partial writes.

    Caches of running processes, and of processes on other hosts (which cannot be checked from
    here), are kept; so are kept caches (keep=True), unless --older-than says otherwise. Also
    removes the shared-memory files (/dev/shm) of reader processes that are gone.
    """
    from sparkfeed.reader.exchange import sweep

    parent = _parent(directory)
    entries = collect(parent, dry_run=dry_run, older_than=None if older_than is None else _duration(older_than))
    verb = "would remove" if dry_run else "removed"
    for entry in entries:
        click.echo(f"{verb} {entry.location} ({entry.state}, {_size(entry.size_bytes)}, {entry.owner})")
    exchanges = sweep(dry_run=dry_run)
    for path in exchanges:
        click.echo(f"{verb} {path} (shared memory of a reader process that is gone)")
    left = [] if dry_run else scan(parent)
    total = _size(sum(entry.size_bytes for entry in entries))
    click.echo(f"{verb} {len(entries)} caches ({total}) and {len(exchanges)} shared-memory directories")
    live = [entry for entry in left if entry.liveness is not Liveness.GONE]
    if live:
        click.echo(f"left {len(live)} caches whose creator runs or cannot be checked from this host")
    newer = [entry for entry in left if entry.state == "unsupported"]
    if newer:
        click.echo(f"left {len(newer)} caches of a newer sparkfeed's format; `sparkfeed cache rm URL` removes one")
    kept = [entry for entry in left if entry.kept and entry.state == "complete" and entry.liveness is Liveness.GONE]
    if kept:
        click.echo(f"left {len(kept)} kept caches (keep=True); --older-than AGE removes those unused for AGE")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(text: str) -> datetime.timedelta:
    """``90m``, ``12h``, ``7d``, ``2w`` or seconds as a number."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if match is None:
        raise click.BadParameter(f"{text!r} is not an age: give a number and a unit, such as 90m, 12h, 7d or 2w")
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds > _LONGEST.total_seconds():  # timedelta and the date it is taken from have bounds
        raise click.BadParameter(f"{text!r} is longer than any cache has been around: give at most 36525d (100 years)")
    return datetime.timedelta(seconds=seconds)


_LONGEST = datetime.timedelta(days=36525)


@cache_command.command("rm")
@click.argument("url")
@click.option(
    "--force",
    is_flag=True,
    help="Also when its creator, or a process that reused it, may still be running and reading it.",
)
def rm_command(url: str, force: bool) -> None:
    """Remove the sparkfeed cache at URL (a directory holding sparkfeed's marker, nothing else).

    A cache whose creator still runs (or runs on another host) is refused without --force: that
    process deletes it when it ends, and may be reading it now. So is a kept cache that a running
    process on this host reused (reuse="auto", or opened by its URL).
    """
    try:
        entry = remove(Location.parse(url), force=force)
    except (NotOursError, FileNotFoundError, PermissionError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"removed {entry.location} ({entry.state}, {_size(entry.size_bytes)})")


def _as_dict(entry: CacheEntry) -> dict[str, Any]:
    return {
        "url": str(entry.location),
        "state": entry.state,
        "rows": entry.num_rows,
        "bytes": entry.size_bytes,
        "created_at": entry.created_at,
        "creator": None if entry.owner is None else entry.owner.to_dict(),
        "creator_state": entry.liveness.value,
        "orphaned": entry.orphaned,
        "kept": entry.kept,
        "last_used": entry.last_used,
        "being_removed_by": None if entry.withdrawn_by is None else entry.withdrawn_by.to_dict(),
    }


def _liveness(entry: CacheEntry) -> str:
    if entry.withdrawn_by is not None and not entry.orphaned and entry.liveness is Liveness.GONE:
        return "being removed"  # by `clean` or `rm` in another process, which may yet put it back
    if entry.kept and entry.state == "complete":
        return "running, kept" if entry.liveness is Liveness.RUNNING else "kept"
    if entry.liveness is Liveness.GONE and not entry.orphaned:
        return "gone"  # but not an orphan: `cache clean` leaves it
    return {Liveness.RUNNING: "running", Liveness.GONE: "orphaned", Liveness.UNKNOWN: "unknown"}[entry.liveness]


def _size(size: int) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    scaled, index = float(size), 0
    while scaled >= 1024 and index < len(units) - 1:
        scaled, index = scaled / 1024, index + 1
    return f"{size} B" if index == 0 else f"{scaled:,.1f} {units[index]}"


def _age(created_at: str | None) -> str:
    created = parse_time(created_at)
    if created is None:
        return "-"
    seconds = (datetime.datetime.now(datetime.UTC) - created).total_seconds()
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{seconds / length:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"
