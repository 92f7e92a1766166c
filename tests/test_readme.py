"""The README's two quick-start commands are what CI and a newcomer actually run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    commands = quick_start()
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci == commands[1]
    assert "pytest" in ci


def test_the_first_command_sets_up_and_runs_the_demo() -> None:
    first = quick_start()[0]
    assert first.startswith("python3 -m venv .venv && ")
    assert first.endswith("edgefleet demo")
    assert "'.[demo]'" in first
