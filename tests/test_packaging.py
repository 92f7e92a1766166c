"""The wheel a user installs: both packages, the schemas inside, both commands."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import EXAMPLE, ROOT


def test_wheel_ships_both_packages_and_every_schema(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("edgefleet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    schemas = {p.name for p in (ROOT / "schemas").glob("*.json")}
    assert {f"reconciler/schemas/{s}" for s in schemas} <= names
    # Every module of both packages, subpackages included: a wheel missing one installs
    # fine and then fails at the first import.
    modules = {
        f"reconciler/{p.relative_to(ROOT / 'reconciler')}"
        for p in (ROOT / "reconciler").rglob("*.py")
    }
    modules |= {
        f"node_agent/{p.relative_to(ROOT / 'node-agent')}"
        for p in (ROOT / "node-agent").rglob("*.py")
    }
    assert not {m for m in modules if "__pycache__" not in m} - names
    assert "node_agent/edgefleet-agent.service" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "edgefleet = reconciler.cli:main" in text
    assert "edgefleet-agent = node_agent.cli:main" in text


def test_console_scripts_run(tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent
    out = subprocess.run(
        [bindir / "edgefleet", "validate", str(EXAMPLE)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    usage = subprocess.run(
        [bindir / "edgefleet", "validate", "--format", "xml"], capture_output=True, text=True
    )
    assert usage.returncode == 2 and "invalid choice" in usage.stderr
    agent = subprocess.run(
        [bindir / "edgefleet-agent", "--version"], capture_output=True, text=True
    )
    assert agent.returncode == 0 and agent.stdout.startswith("edgefleet-agent ")
