"""The README's usage example runs as written, so the README never lies."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs(spark) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    usage = blocks[0]
    assert "make_spark_converter(df)" in usage
    exec(compile(usage, str(README), "exec"), {})


def test_readme_names_the_test_command_ci_runs() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in README.read_text() and "make test" in ci
