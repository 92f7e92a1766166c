"""Lint, format and strict typing are part of the test command, so CI and a newcomer run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

BIN = Path(sys.executable).parent
SOURCES = ["reconciler", "node-agent", "tests", "bench", "fleet-repo-example"]


def run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env})


def test_ruff_lint_is_clean() -> None:
    out = run([str(BIN / "ruff"), "check", *SOURCES])
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format_is_clean() -> None:
    out = run([str(BIN / "ruff"), "format", "--check", *SOURCES])
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_strict_on_both_packages() -> None:
    out = run(["bash", str(ROOT / ".ci" / "typecheck")], PYTHON=sys.executable)
    assert out.returncode == 0, out.stdout + out.stderr
