"""The agent's configuration file: checked against its schema, exit 2 on anything wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from node_agent.cli import main

GOOD = """\
node: store-0042
repo: ../fleet.git
trustRoot: root.json
stateDir: /var/lib/edgefleet
identityKey: node_ed25519
artifactSources: ["file:///media/usb/artifacts/"]
pollInterval: 5m
"""


def test_valid_config_resolves_paths_from_its_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "etc" / "agent.yaml"
    config.parent.mkdir()
    config.write_text(GOOD)
    assert main(["check-config", "--config", str(config), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["repo"] == str((tmp_path / "fleet.git").resolve())
    assert shown["trustRoot"] == str((tmp_path / "etc" / "root.json").resolve())
    assert shown["pollIntervalSeconds"] == 300 and shown["heartbeatIntervalSeconds"] == 3600


@pytest.mark.parametrize(
    ("change", "line", "message"),
    [
        (("pollInterval: 5m", "pollInterval: 5 minutes"), 7, "expected a duration"),
        (("node: store-0042", "node: Store_42"), 1, "expected a DNS label"),
        (("stateDir: /var/lib/edgefleet\n", ""), 1, "missing required field 'stateDir'"),
        (("pollInterval", "polInterval"), 7, "unknown field 'polInterval'"),
        (('["file:///media/usb/artifacts/"]', "[usb]"), 6, "expected an absolute URL"),
    ],
)
def test_bad_config_exits_2_naming_the_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: tuple[str, str],
    line: int,
    message: str,
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(GOOD.replace(*change))
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}:{line}: " in err and message in err, err


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read the configuration" in capsys.readouterr().err


def test_scp_style_repo_is_an_ssh_address_not_a_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(GOOD.replace("repo: ../fleet.git", "repo: git.example.net:fleet.git"))
    assert main(["check-config", "--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["repo"] == "git.example.net:fleet.git"


def test_without_a_poll_interval_the_agent_follows_the_fleet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("\n".join(ln for ln in GOOD.splitlines() if "pollInterval" not in ln) + "\n")
    assert main(["check-config", "--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pollIntervalSeconds"] is None
