"""`edgefleet-agent`: the command every edge node runs."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node_agent import poll_loop as _poll_loop
from node_agent.config import AgentConfig, load_config
from node_agent.journal import Journal, JournalFile

from reconciler import __version__
from reconciler.cli import run

if TYPE_CHECKING:
    # The agent module loads what a cycle needs; `status` and `check-config` do without.
    from node_agent.agent import Agent, Outcome


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
        # None: the poll interval in effect, which may come from the fleet at run time.
        "startJitterSeconds": config.start_jitter,
        "maxBackoffSeconds": config.max_backoff,
        "busy": {
            "file": str(config.busy_file) if config.busy_file else None,
            "command": list(config.busy_command),
            "timeoutSeconds": config.busy_timeout,
        },
        "logFormat": config.log_format,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{config.path}: valid configuration for node {config.node}")
    return 0


def summary(journal: Journal, config: AgentConfig, checks: Sequence[Any] = ()) -> dict[str, Any]:
    """What `once --json` and `status --json` print, from the journal (DESIGN.md's contract)."""
    components: dict[str, Any] = {}
    for name, rec in sorted(journal.components.items()):
        bank = rec.banks.get(rec.current) if rec.current else None
        components[name] = {
            "artifact": bank.artifact if bank else None,
            "sha256": bank.sha256 if bank else None,
            "bank": rec.current,
            "health": rec.health,
        }
    txn = journal.transaction
    return {
        "node": journal.node,
        "state": journal.state,
        "release": journal.release,
        "commit": journal.commit,
        "components": components,
        "lastError": journal.last_error,
        "transfer": dict(journal.transfer),
        "failedReleases": {int(v): f for v, f in sorted(journal.failed.items(), key=_version)},
        "transaction": None
        if txn is None
        else {"release": txn.release, "phase": txn.phase, "attempts": txn.attempts},
        "lastSync": journal.last_sync,
        "trustedRootVersion": _root_version(journal),
        "checks": [{"component": c, **r.as_json()} for c, r in checks],
        "stateDir": str(config.state_dir),
    }


def _version(item: tuple[str, Any]) -> int:
    return int(item[0])


def _root_version(journal: Journal) -> int | None:
    if journal.trusted_root is None:
        return None
    version: int = json.loads(journal.trusted_root)["signed"]["version"]
    return version


def _print_summary(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(info, indent=2))
        return
    release = info["release"]
    print(f"node {info['node']}: {info['state']}, release {release if release else '(none)'}")
    for name, comp in info["components"].items():
        print(f"  {name}: {comp['artifact']} in bank {comp['bank']}, health {comp['health']}")
    txn = info["transaction"]
    if txn:
        print(
            f"  applying release {txn['release']}: phase {txn['phase']}, attempt {txn['attempts']}"
        )
    error = info["lastError"]
    if error:
        about = f" (release {error['release']})" if error.get("release") is not None else ""
        print(f"  last error{about}: {error['reason']}")


def _agent(args: argparse.Namespace) -> tuple[AgentConfig, Agent]:
    from node_agent.agent import Agent
    from node_agent.logs import configure

    config = load_config(Path(args.config))
    return config, Agent(config, configure(config.node, config.log_format))


def _report(config: AgentConfig, outcome: Outcome, as_json: bool) -> int:
    _print_summary(summary(outcome.journal, config, outcome.checks), as_json)
    return outcome.exit_code


def cmd_once(args: argparse.Namespace) -> int:
    config, agent = _agent(args)
    return _report(config, agent.once(), args.json)


def cmd_import(args: argparse.Namespace) -> int:
    config, agent = _agent(args)
    return _report(config, agent.import_bundle(Path(args.bundle)), args.json)


def cmd_export_status(args: argparse.Namespace) -> int:
    config, agent = _agent(args)
    count = agent.export_status(Path(args.out))
    if count:
        print(f"{args.out}: {count} status commit(s) of node {config.node}")
    else:
        print(f"node {config.node}: no status commit is queued; nothing written")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    config = load_config(Path(args.config))
    journal = JournalFile(config.state_dir / "state.json").load(config.node)
    _print_summary(summary(journal, config), args.json)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from node_agent.agent import Agent
    from node_agent.logs import configure

    config = load_config(Path(args.config))
    log = configure(config.node, config.log_format)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        # The step in hand finishes; the loop ends before the next one starts.
        log.info("agent.stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _poll_loop.poll_loop(Agent(config, log), config, log, stop)
    return 0


# The delay policy lives with the loop (node_agent.poll_loop); these names stay importable.
DEFAULT_POLL_S = _poll_loop.DEFAULT_POLL_S
next_delay = _poll_loop.next_delay


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

    once = sub.add_parser(
        "once",
        parents=[common],
        help="one cycle: fetch, verify, apply (exit 0 ok, 1 rolled back, 2 config, 3 rejected,"
        " 75 unreachable)",
    )
    once.add_argument("--config", required=True, help="the agent's configuration file")
    once.add_argument("--json", action="store_true", help="print the node's state as JSON")
    once.set_defaults(func=cmd_once)

    run_p = sub.add_parser(
        "run", parents=[common], help="cycle forever with a jittered interval; SIGTERM stops"
    )
    run_p.add_argument("--config", required=True, help="the agent's configuration file")
    run_p.set_defaults(func=cmd_run)

    status = sub.add_parser("status", parents=[common], help="the node's state, from its journal")
    status.add_argument("--config", required=True, help="the agent's configuration file")
    status.add_argument("--json", action="store_true", help="print it as JSON")
    status.set_defaults(func=cmd_status)

    imp = sub.add_parser(
        "import",
        parents=[common],
        help="apply an offline bundle (`edgefleet bundle create`); exit codes as `once`",
    )
    imp.add_argument("bundle", metavar="BUNDLE", help="the bundle file")
    imp.add_argument("--config", required=True, help="the agent's configuration file")
    imp.add_argument("--json", action="store_true", help="print the node's state as JSON")
    imp.set_defaults(func=cmd_import)

    export = sub.add_parser(
        "export-status",
        parents=[common],
        help="write the queued status commits as a bundle to carry back (`edgefleet status"
        " import`)",
    )
    export.add_argument("--config", required=True, help="the agent's configuration file")
    export.add_argument("--out", required=True, help="the file to write")
    export.set_defaults(func=cmd_export_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
