"""`edgefleet-agent`: the command every edge node runs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from node_agent.config import load_config

from reconciler import __version__
from reconciler.cli import run


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(Path(args.config))
    summary = {
        "config": str(config.path),
        "node": config.node,
        "repo": config.repo,
        "trustRoot": str(config.trust_root),
        "stateDir": str(config.state_dir),
        "identityKey": str(config.identity_key),
        "artifactSources": list(config.artifact_sources),
        "pollIntervalSeconds": config.poll_interval,
        "heartbeatIntervalSeconds": config.heartbeat_interval,
        "logFormat": config.log_format,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{config.path}: valid configuration for node {config.node}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks of errors",
    )
    parser = argparse.ArgumentParser(
        prog="edgefleet-agent",
        description="The EdgeFleet node agent: pulls signed releases and applies them.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"edgefleet-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = sub.add_parser(
        "check-config",
        parents=[common],
        help="check a configuration file (exit 0 valid, 2 invalid), as `sshd -t` does",
    )
    check.add_argument("--config", required=True, help="the agent's configuration file")
    check.add_argument("--json", action="store_true", help="print the resolved settings as JSON")
    check.set_defaults(func=cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
