"""The wheel ``pip install`` builds: what an installed sparkfeed holds, beyond the checkout the tests import."""

from __future__ import annotations

import configparser
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

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


def test_the_oldest_constraints_test_the_floors_pyproject_declares() -> None:
    """``make test-oldest`` tests what ``pyproject.toml`` allows: each floor's release, not a later one."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    # Not torch: its floor (2.2) is allowed but untested, since only the 2.13 CPU build is on CI's disk.
    declared = [Requirement(text) for text in [*project["dependencies"], *extras["tf"], *extras["jax"]]]
    pins = {}
    for line in (ROOT / "constraints-oldest.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    for requirement in declared:
        (floor,) = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        pinned = pins[canonicalize_name(requirement.name)]
        release = Version(floor).release
        assert pinned.release[: len(release)] == release, f"{requirement}: constraints-oldest.txt pins {pinned}"
