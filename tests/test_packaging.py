"""The wheel ``pip install`` builds: what an installed sparkfeed holds, beyond the checkout the tests import."""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w"]
    subprocess.run([*command, str(out)], check=True, capture_output=True, timeout=300, cwd=out)
    (built,) = out.glob("sparkfeed-*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


def test_the_wheel_holds_every_module_and_the_typed_marker(wheel: zipfile.ZipFile) -> None:
    source = ROOT / "src"
    modules = {str(path.relative_to(source)) for path in (source / "sparkfeed").rglob("*.py")}
    held = set(wheel.namelist())
    assert modules <= held, sorted(modules - held)
    # Without it, a user's mypy calls sparkfeed untyped ("missing library stubs or py.typed marker").
    assert "sparkfeed/py.typed" in held


def test_the_wheel_installs_the_command_line(wheel: zipfile.ZipFile) -> None:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    entry_points = configparser.ConfigParser()
    entry_points.read_string(wheel.read(name).decode())
    assert entry_points["console_scripts"]["sparkfeed"] == "sparkfeed.cli:main"
