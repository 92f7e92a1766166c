"""A node's status document (`status.json` on `status/<node-id>`): built, compared, read.

The node writes one commit per change of its status and a heartbeat commit at most every
`heartbeatInterval` otherwise; this module decides which (no I/O). The fleet side reads the
same documents back with `parse_status`, which names the branch and the field of any problem.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from reconciler.errors import EdgeFleetError

STATUS_FILE = "status.json"
STATUS_SCHEMA = "status.json"
BRANCH_PREFIX = "status/"
# Fields that change on every cycle without the node's status changing: a new value of one of
# them alone is a heartbeat, not a change.
_VOLATILE = ("sequence", "event", "observedAt", "lastSync")


def branch(node: str) -> str:
    return f"{BRANCH_PREFIX}{node}"


def status_document(
    summary: Mapping[str, Any],
    *,
    fleet: str,
    target: Mapping[str, Any] | None,
    sequence: int,
    event: str,
    observed_at: str,
    poll_interval: int,
    heartbeat_interval: int,
    agent_version: str,
) -> dict[str, Any]:
    """status.json from the agent's summary of its journal (`edgefleet-agent status --json`)."""
    state = summary["state"]
    return {
        "node": summary["node"],
        "fleet": fleet,
        "sequence": sequence,
        "event": event,
        "state": state,
        "release": summary["release"],
        "commit": summary["commit"],
        "target": dict(target) if target else None,
        "components": {name: dict(c) for name, c in summary["components"].items()},
        "lastError": summary["lastError"],
        "failedReleases": {str(v): dict(f) for v, f in summary["failedReleases"].items()},
        "transfer": dict(summary["transfer"]),
        "lastSync": summary["lastSync"],
        "agentVersion": agent_version,
        "observedAt": observed_at,
        "pollInterval": poll_interval,
        "heartbeatInterval": heartbeat_interval,
    }


def _material(doc: Mapping[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in doc.items() if k not in _VOLATILE}
    error = kept.get("lastError")
    if isinstance(error, Mapping):
        # An origin that stays down fails again every cycle; the same failure is one status.
        kept["lastError"] = {k: v for k, v in error.items() if k != "at"}
    return kept


def is_change(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> bool:
    """Whether `current` says something `previous` (the branch head's document) did not."""
    return previous is None or _material(previous) != _material(current)


def encode(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def subject(doc: Mapping[str, Any]) -> str:
    """The commit's first line: what an auditor scanning `git log --oneline` needs."""
    node, state = doc["node"], doc["state"]
    release = doc["release"] if doc["release"] is not None else "none"
    target = (doc.get("target") or {}).get("release")
    error = doc.get("lastError") or {}
    if doc["event"] == "heartbeat":
        return f"{node}: heartbeat, {state} on release {release}"
    if state == "converged":
        return f"{node}: converged on release {release}"
    if state == "applying":
        return f"{node}: applying release {target} (running release {release})"
    if state == "rolled-back":
        return f"{node}: rolled back release {error.get('release')}, running {release}"
    if state == "rejected":
        return f"{node}: rejected release {error.get('release')}, running {release}"
    if state == "deferred":
        return f"{node}: deferred release {error.get('release')}, running {release}"
    return f"{node}: {state}, running release {release}"


def commit_message(doc: Mapping[str, Any]) -> str:
    """Subject, the reason of the last error, and trailers that `git log` can filter on."""
    lines = [subject(doc), ""]
    error = doc.get("lastError")
    if error and doc["state"] != "converged":
        lines += [str(error["reason"]), ""]
    target = doc.get("target") or {}
    lines += [
        f"Edgefleet-Node: {doc['node']}",
        f"Edgefleet-State: {doc['state']}",
        f"Edgefleet-Release: {doc['release'] if doc['release'] is not None else 'none'}",
        f"Edgefleet-Target: {target.get('release', 'none')}",
        f"Edgefleet-Event: {doc['event']}",
        f"Edgefleet-Sequence: {doc['sequence']}",
    ]
    return "\n".join(lines) + "\n"


class StatusInvalid(EdgeFleetError):
    """A status document that is not one: it names the branch, the file and the field."""


def parse_status(data: bytes, where: str) -> dict[str, Any]:
    """A status document checked against its schema; StatusInvalid names `where` and the field."""
    # Imported here: jsonschema is a fifth of `edgefleet status`'s start-up, and a run whose
    # verdicts are all cached never parses a status.
    from reconciler.schema_check import schema_errors

    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StatusInvalid(
            f"{where}: got invalid JSON ({exc}), expected a status document"
        ) from None
    if not isinstance(doc, dict):
        raise StatusInvalid(f"{where}: got {type(doc).__name__}, expected a JSON object")
    problems = [f"{where}: {message}" for _, message in schema_errors(doc, STATUS_SCHEMA)]
    if problems:
        raise StatusInvalid("; ".join(problems))
    return doc
