"""`edgefleet-agent`: the command every edge node runs."""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from node_agent.config import AgentConfig, load_config
from node_agent.journal import Journal, JournalFile

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


def cmd_once(args: argparse.Namespace) -> int:
    from node_agent.agent import Agent
    from node_agent.logs import configure

    config = load_config(Path(args.config))
    log = configure(config.node, config.log_format)
    outcome = Agent(config, log).once()
    _print_summary(summary(outcome.journal, config, outcome.checks), args.json)
    return outcome.exit_code


def cmd_status(args: argparse.Namespace) -> int:
    config = load_config(Path(args.config))
    journal = JournalFile(config.state_dir / "state.json").load(config.node)
    _print_summary(summary(journal, config), args.json)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from node_agent.agent import Agent
    from node_agent.logs import configure

    from reconciler.errors import EdgeFleetError

    config = load_config(Path(args.config))
    log = configure(config.node, config.log_format)
    agent = Agent(config, log)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        # The step in hand finishes; the loop ends before the next one starts.
        log.info("agent.stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    failures = 0
    log.info("agent.start", interval=config.poll_interval or "fleet", origin=config.repo)
    while not stop.is_set():
        interval = config.poll_interval or DEFAULT_POLL_S
        try:
            outcome = agent.once()
            code = outcome.exit_code
            interval = config.poll_interval or outcome.journal.poll_interval or DEFAULT_POLL_S
        except EdgeFleetError as exc:
            log.error("cycle.error", reason=str(exc), exit_code=exc.exit_code)
            code = exc.exit_code
        except Exception as exc:
            # A service that dies on a surprise is restarted in a loop by systemd; one that
            # logs it and backs off keeps its state and its schedule.
            log.exception("cycle.crashed", reason=f"{type(exc).__name__}: {exc}")
            code = 70
        failures = failures + 1 if code in (1, 70, 75) else 0
        delay = next_delay(interval, failures)
        log.info("cycle.done", exit_code=code, next_in=round(delay, 1))
        stop.wait(delay)
    log.info("agent.stopped")
    return 0


DEFAULT_POLL_S = 60


def next_delay(interval: float, failures: int, rng: random.Random | None = None) -> float:
    """The poll interval with +-10% jitter; after failures, jittered exponential backoff
    (capped at 32 intervals), so that nodes returning from an outage do not stampede."""
    rng = rng or random.Random()
    if failures <= 0:
        return float(interval * rng.uniform(0.9, 1.1))
    ceiling = interval * min(2 ** (failures - 1), 32)
    return float(rng.uniform(ceiling / 2, ceiling))


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run(argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())
