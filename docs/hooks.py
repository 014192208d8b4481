"""MkDocs hooks: files the site shows that live elsewhere in the repository, kept there as one copy.

The benchmark plot is written by ``make bench`` into ``benchmarks/results/``; the site serves it
as ``assets/throughput.png`` without a second copy in ``docs/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]

OUTSIDE: dict[str, Path] = {"assets/throughput.png": ROOT / "benchmarks" / "results" / "throughput.png"}
"""Site path → the repository file it is."""


def on_files(files: Files, config: Any) -> Files:
    """Adds the files from outside ``docs/``, so that links to them are checked and they are copied."""
    for uri, source in OUTSIDE.items():
        files.append(File.generated(config, uri, abs_src_path=str(source)))
    return files
