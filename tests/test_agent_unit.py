"""The systemd unit shipped with the agent: it parses, runs commands the agent accepts, and
keeps the hardening options an operator would expect."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from node_agent.cli import build_parser

UNIT = Path(__file__).resolve().parent.parent / "node-agent" / "edgefleet-agent.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_the_unit_runs_commands_the_agent_accepts() -> None:
    service = unit()["Service"]
    for key in ("ExecStartPre", "ExecStart"):
        argv = shlex.split(service[key])
        assert argv[0].endswith("/edgefleet-agent"), key
        args = build_parser().parse_args(argv[1:])
        assert args.config == "/etc/edgefleet/agent.yaml"
    assert shlex.split(service["ExecStart"])[1] == "run"
    assert service["KillSignal"] == "SIGTERM"
    assert service["RestartPreventExitStatus"] == "2"  # a bad config is not retried in a loop


def test_the_unit_is_hardened() -> None:
    service = unit()["Service"]
    expected = {
        "ProtectSystem": "strict",
        "PrivateTmp": "true",
        "PrivateDevices": "true",
        "NoNewPrivileges": "true",
        "ProtectKernelModules": "true",
        "RestrictSUIDSGID": "true",
        "StateDirectory": "edgefleet",
    }
    for key, value in expected.items():
        assert service.get(key) == value, key
    assert "/var/lib/edgefleet" in service["ReadWritePaths"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_accepts_the_unit() -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(UNIT)], capture_output=True, text=True
    )
    assert "Unknown key" not in done.stderr and "Invalid" not in done.stderr, done.stderr
