"""Status commits made by hand for the status, audit and hook tests: what a node writes, or a
forgery of it, committed with git plumbing into any repository."""

from __future__ import annotations

import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

from reconciler.keys import SigningKey
from reconciler.signed_commits import commit_object, person
from reconciler.status_doc import commit_message, encode
from reconciler.timestamps import now
from tests.agent_testing import FLEET_NAME, LiveFleet


def git(git_dir: Path, *args: str, data: bytes | None = None) -> str:
    done = subprocess.run(
        ["git", "--git-dir", str(git_dir), *args], input=data, capture_output=True, check=False
    )
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr.decode()}"
    return done.stdout.decode().strip()


def converged_status(
    fleet: LiveFleet, node: str, components: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A valid status.json for `node`: converged on release 1 at the fleet's HEAD, with
    `components` (none by default)."""
    commit = fleet.repo.head.commit.hexsha
    return {
        "node": node,
        "fleet": FLEET_NAME,
        "sequence": 1,
        "event": "change",
        "state": "converged",
        "release": 1,
        "commit": commit,
        "target": {"release": 1, "commit": commit},
        "components": components or {},
        "lastError": None,
        "transfer": {"bytes": 0, "fullBytes": 0},
        "agentVersion": "0.1.0",
        "observedAt": "2026-01-01T00:00:00Z",
        "pollInterval": 60,
        "heartbeatInterval": 3600,
    }


def status_commit(
    git_dir: Path,
    doc: dict[str, Any],
    signer: SigningKey | None,
    parents: tuple[str, ...] = (),
    when: datetime | None = None,
) -> str:
    """A commit holding `doc` as status.json, authored as its node, signed by `signer` or not
    at all; no ref is moved."""
    node = doc["node"]
    blob = git(git_dir, "hash-object", "-w", "--stdin", data=encode(doc))
    tree = git(git_dir, "mktree", data=f"100644 blob {blob}\tstatus.json\n".encode())
    raw = commit_object(
        tree=tree,
        parents=parents,
        author=person(node, f"{node}@{FLEET_NAME}", when or now()),
        message=commit_message(doc),
        signer=signer,
    )
    return git(git_dir, "hash-object", "-t", "commit", "-w", "--stdin", data=raw)


def put_status(
    fleet: LiveFleet,
    node: str,
    doc: dict[str, Any],
    signer: SigningKey | None,
    parent: str | None = None,
    when: datetime | None = None,
) -> str:
    """`status_commit` in the origin, set as its status/<node> head whatever the head was, as
    someone with write access to the server's disk could."""
    commit = status_commit(fleet.origin, doc, signer, (parent,) if parent else (), when)
    git(fleet.origin, "update-ref", f"refs/heads/status/{node}", commit)
    return commit


def publish_unhealthy(fleet: LiveFleet) -> int:
    """The next release, whose app fails its self-test: nodes roll it back."""
    fleet.app("1.1.0", healthy=False)
    fleet.use(
        "app",
        "app@1.1.0",
        health=[{"exec": {"argv": ["sh", "bin/selftest"], "timeoutSeconds": 10}}],
    )
    return fleet.publish()
