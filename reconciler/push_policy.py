"""What a push may change on the fleet's Git server: decided from the updates and the facts the
server's repository gives, with no I/O of its own (`edgefleet hook pre-receive` is the shell).

* A node's credential (a user that is a node id) updates only `refs/heads/status/<its id>`.
* A status branch only moves forward, is never deleted, stays linear, and every new commit on
  it is signed by that node's key (`trust/allowed_signers`) and holds that node's valid
  `status.json`. That holds whoever pushes, so an operator landing status carried back from an
  offline node (`status import`) passes, and nobody can forge a node's history.
* A `release/*` tag is created once, never moved or deleted, and is an annotated tag signed by
  a release key of the trust root on the main branch. The threshold of signatures inside it is
  what nodes check; the server keeps out tags that no release signer made at all.
* The `audit` branch only moves forward.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from reconciler.keys import PublicKey
from reconciler.ref_names import RELEASE_REF
from reconciler.signed_commits import check_commit, parse_commit, parse_tag
from reconciler.status_doc import BRANCH_PREFIX, StatusInvalid, parse_status

ZERO = "0" * 40
STATUS_REF = "refs/heads/" + BRANCH_PREFIX
AUDIT_REF = "refs/heads/audit"


@dataclass(frozen=True)
class RefUpdate:
    old: str
    new: str
    ref: str


@dataclass(frozen=True)
class Refusal:
    ref: str
    reason: str

    def __str__(self) -> str:
        return f"{self.ref}: {self.reason}"


class PushFacts(Protocol):
    """What the server's repository knows, including the objects being pushed."""

    def is_ancestor(self, old: str, new: str) -> bool: ...

    def new_commits(self, update: RefUpdate) -> list[str]:
        """Commits this update brings that no existing ref reaches, oldest first."""
        ...

    def raw_object(self, name: str) -> tuple[str, bytes] | None:
        """(type, contents) of an object name such as `<sha>` or `<sha>:status.json`."""
        ...


@dataclass(frozen=True)
class Trust:
    """Who is who, from the main branch: the fleet, node ids, their keys, the release keys."""

    fleet: str
    nodes: frozenset[str]
    node_keys: Mapping[str, PublicKey]
    release_keys: Mapping[str, PublicKey]


def check_push(
    user: str | None, updates: Sequence[RefUpdate], trust: Trust, facts: PushFacts
) -> list[Refusal]:
    """Every reason to refuse this push; an empty list accepts it (git's pre-receive is all or
    nothing, so one refusal refuses every update)."""
    refusals: list[Refusal] = []
    for update in updates:
        if user is not None and user in trust.nodes and update.ref != STATUS_REF + user:
            refusals.append(
                Refusal(
                    update.ref,
                    f"node credential {user!r} may update only {STATUS_REF}{user},"
                    f" got {update.ref}",
                )
            )
            continue
        if update.ref.startswith(STATUS_REF):
            refusals.extend(_status_update(update, trust, facts))
        elif update.ref.startswith("refs/tags/release/"):
            refusals.extend(_release_tag(update, trust, facts))
        elif update.ref == AUDIT_REF:
            refusals.extend(_forward_only(update, facts, "the audit branch"))
    return refusals


def _forward_only(update: RefUpdate, facts: PushFacts, what: str) -> list[Refusal]:
    if update.new == ZERO:
        return [Refusal(update.ref, f"got a deletion, expected {what} never to be deleted")]
    if update.old != ZERO and not facts.is_ancestor(update.old, update.new):
        return [
            Refusal(
                update.ref,
                f"got a non-fast-forward update {update.old[:12]} -> {update.new[:12]},"
                f" expected {what} only ever to move forward (history is never rewritten)",
            )
        ]
    return []


def _status_update(update: RefUpdate, trust: Trust, facts: PushFacts) -> list[Refusal]:
    node = update.ref.removeprefix(STATUS_REF)
    if node not in trust.nodes:
        return [
            Refusal(update.ref, f"got a status branch for {node!r}, expected a node id of nodes/")
        ]
    moved = _forward_only(update, facts, "a status branch")
    if moved:
        return moved
    key = trust.node_keys.get(node)
    if key is None:
        return [
            Refusal(
                update.ref, f"{node} has no key in trust/allowed_signers, expected its identity"
            )
        ]
    refusals: list[Refusal] = []
    for sha in facts.new_commits(update):
        found = facts.raw_object(sha)
        where = f"commit {sha[:12]}"
        if found is None or found[0] != "commit":
            refusals.append(Refusal(update.ref, f"{where}: got no commit, expected one"))
            continue
        try:
            commit = parse_commit(found[1])
        except ValueError as exc:
            refusals.append(Refusal(update.ref, f"{where}: {exc}"))
            continue
        if len(commit.parents) > 1:
            refusals.append(
                Refusal(update.ref, f"{where}: got a merge, expected a linear status history")
            )
        check = check_commit(commit, {node: key})
        if not check.ok:
            refusals.append(Refusal(update.ref, f"{where}: {check.problem}"))
            continue
        blob = facts.raw_object(f"{sha}:status.json")
        if blob is None:
            refusals.append(Refusal(update.ref, f"{where}: got no status.json, expected one"))
            continue
        try:
            doc = parse_status(blob[1], f"{where}:status.json")
        except StatusInvalid as exc:
            refusals.append(Refusal(update.ref, str(exc)))
            continue
        if doc["fleet"] != trust.fleet:
            refusals.append(
                Refusal(
                    update.ref,
                    f"{where}:status.json: fleet: got {doc['fleet']!r}, expected {trust.fleet!r}",
                )
            )
        if doc["node"] != node:
            refusals.append(
                Refusal(
                    update.ref, f"{where}:status.json: node: got {doc['node']!r}, expected {node!r}"
                )
            )
    return refusals


def _release_tag(update: RefUpdate, trust: Trust, facts: PushFacts) -> list[Refusal]:
    if not RELEASE_REF.match(update.ref):
        return [Refusal(update.ref, "got a release tag name, expected release/<positive number>")]
    if update.old != ZERO:
        return [
            Refusal(
                update.ref,
                "got an update of an existing release tag, expected release tags never to move"
                " or be deleted (sign a new version instead)",
            )
        ]
    found = facts.raw_object(update.new)
    if found is None or found[0] != "tag":
        got = found[0] if found else "nothing"
        return [Refusal(update.ref, f"got a {got}, expected an annotated, signed tag")]
    try:
        tag = parse_tag(found[1])
    except ValueError as exc:
        return [Refusal(update.ref, str(exc))]
    check = check_commit(tag, trust.release_keys)
    if not check.ok:
        return [Refusal(update.ref, f"tag signature: {check.problem} (a release key)")]
    return []
