"""The fleet's verified timeline, decided from parsed Git objects: no I/O.

Three histories are joined: the main branch (who changed the fleet, and whose signature the
commit carries), the release tags (which keys signed each release, checked against the trust
root of the release's own commit), and the status branches (when each node began, finished,
failed or rolled back each release, each commit checked against the node's key). Anything that
does not add up is a problem, not a footnote: a status commit not signed by its node, a gap in a
node's sequence numbers, a node claiming a release that does not exist, a status branch whose
earlier head (seen in the reflog or folded into `audit`) is no longer in its history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from reconciler.errors import EdgeFleetError
from reconciler.keys import PublicKey
from reconciler.release import Accepted, envelope_from_message, verify_release
from reconciler.signed_commits import CommitFields, check_commit
from reconciler.status_doc import StatusInvalid, parse_status
from reconciler.timestamps import format_timestamp
from reconciler.trust_root import load_pinned_root

# Releases are judged as of their own signing time, not today: an expired release was valid.
_LONG_AGO = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Event:
    at: str
    kind: str  # change, release, began, converged, rolled-back, rejected, deferred, offline
    text: str
    commit: str
    node: str | None = None
    release: int | None = None
    signer: str | None = None
    problem: str | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ReleaseTagFacts:
    version: int
    tag: CommitFields  # the tag object: its tree is the tagged commit
    root_json: bytes | None  # trust/root.json at the tagged commit


@dataclass(frozen=True)
class StatusCommit:
    sha: str
    fields: CommitFields
    blob: bytes | None


def _when(seconds: int) -> str:
    return format_timestamp(datetime.fromtimestamp(seconds, UTC))


def _name(person: str) -> str:
    return person.rsplit(" ", 2)[0]


def main_events(
    commits: Sequence[tuple[str, CommitFields]], keys: Mapping[str, PublicKey]
) -> list[Event]:
    """Who changed the fleet: one event per commit of the main branch."""
    events = []
    for sha, fields in commits:
        check = check_commit(fields, keys)
        if check.ok:
            signed = f"signed by {check.signer}"
        elif fields.signature is None:
            signed = "unsigned"
        else:
            signed = f"signature not from a fleet key ({check.problem})"
        subject = fields.message.split("\n", 1)[0]
        merged = " (merge)" if len(fields.parents) > 1 else ""
        events.append(
            Event(
                _when(fields.committed_at),
                "change",
                f"{_name(fields.author)} committed{merged} {subject!r}; {signed}",
                sha,
                signer=check.signer,
            )
        )
    return events


def release_events(
    releases: Sequence[ReleaseTagFacts],
    release_keys: Mapping[str, PublicKey],
    key_names: Mapping[str, str],
) -> list[Event]:
    """Which keys signed each release, each signature checked; a problem when they fall short.
    `key_names` maps key ids to the names people know them by (allowed_signers principals)."""
    events = []
    for facts in releases:
        tag = facts.tag
        commit = tag.tree
        name = f"release/{facts.version}"
        at = _when(tag.committed_at)
        problems = []
        tag_check = check_commit(tag, release_keys)
        if not tag_check.ok:
            problems.append(f"tag signature: {tag_check.problem}")
        signers: tuple[str, ...] = ()
        if facts.root_json is None:
            problems.append(f"{commit[:12]} has no trust/root.json to check the release with")
        else:
            try:
                root = load_pinned_root(facts.root_json, f"{commit[:12]}:trust/root.json")
                envelope = envelope_from_message(tag.message, name)
                verified = verify_release(
                    root, envelope, name, Accepted(), _LONG_AGO, target=commit
                )
                signers = tuple(key_names.get(k, k[:16]) for k in verified.signers)
            except EdgeFleetError as exc:
                problems.append(str(exc))
        signed_by = ", ".join(signers) or "no valid key"
        events.append(
            Event(
                at,
                "release",
                f"{name} of commit {commit[:12]} signed by {len(signers)} release key(s)"
                f" ({signed_by}); tagged by {_name(tag.author)}",
                commit,
                release=facts.version,
                signer=tag_check.signer,
                problem="; ".join(problems) or None,
            )
        )
    return events


def status_events(
    node: str,
    commits: Sequence[StatusCommit],
    key: PublicKey | None,
    releases: set[int],
    earlier_heads: Mapping[str, str],
) -> list[Event]:
    """A node's history: transitions between states, and every problem with its branch.

    `commits` oldest first; `earlier_heads` maps heads seen before (reflog, audit folds) to
    where they were seen.
    """
    events: list[Event] = []
    history = {c.sha for c in commits}
    for sha, where in earlier_heads.items():
        if sha not in history:
            events.append(
                Event(
                    _when(commits[-1].fields.committed_at) if commits else _when(0),
                    "rewritten",
                    f"status/{node} no longer contains {sha[:12]}, seen earlier in {where}",
                    sha,
                    node=node,
                    problem=f"status/{node} was rewritten: {sha[:12]} ({where}) is gone from it",
                )
            )
    keys = {node: key} if key is not None else {}
    previous: dict[str, Any] | None = None
    expected_parent: str | None = None
    for commit in commits:
        fields = commit.fields
        at = _when(fields.committed_at)
        problems: list[str] = []
        check = check_commit(fields, keys)
        if not check.ok:
            problems.append(f"status/{node}: not signed by {node}: {check.problem}")
        if len(fields.parents) > 1:
            problems.append("a merge in a status branch, expected a linear history")
        elif expected_parent is not None and fields.parents[:1] != (expected_parent,):
            problems.append("its parent is not the previous status commit")
        expected_parent = commit.sha
        doc: dict[str, Any] | None = None
        if commit.blob is None:
            problems.append("no status.json")
        else:
            try:
                doc = parse_status(commit.blob, f"status/{node}@{commit.sha[:12]}:status.json")
            except StatusInvalid as exc:
                problems.append(str(exc))
        if doc is not None:
            if doc["node"] != node:
                problems.append(f"node: got {doc['node']!r}, expected {node!r}")
            if previous is None and not fields.parents and doc["sequence"] != 1:
                problems.append(
                    f"sequence: got {doc['sequence']}, expected 1 on the branch's first commit"
                    " (commits are missing)"
                )
            if previous is not None and doc["sequence"] != previous["sequence"] + 1:
                problems.append(
                    f"sequence: got {doc['sequence']}, expected {previous['sequence'] + 1}"
                    " (commits are missing)"
                )
            for field in ("release", "target", "lastError"):
                value = doc[field]
                number = value.get("release") if isinstance(value, dict) else value
                if number is not None and number not in releases:
                    problems.append(f"claims release {number} ({field}), which does not exist")
        kind, text = _transition(node, previous, doc)
        if kind is None and problems:
            state = doc["state"] if doc is not None else "unreadable"
            text = f"{node}: status commit {commit.sha[:12]} ({state})"
        if kind is not None or problems:
            events.append(
                Event(
                    at,
                    kind or "status",
                    text,
                    commit.sha,
                    node=node,
                    release=(doc or {}).get("release"),
                    signer=check.signer,
                    problem="; ".join(problems) or None,
                )
            )
        if doc is not None:
            previous = doc
    return events


def _transition(
    node: str, previous: Mapping[str, Any] | None, doc: Mapping[str, Any] | None
) -> tuple[str | None, str]:
    """The event a status commit records, or (None, ...) for a heartbeat or a repeat."""
    if doc is None:
        return None, f"{node}: unreadable status"
    state = doc["state"]
    error = doc.get("lastError") or {}
    target = (doc.get("target") or {}).get("release")
    same = previous is not None and previous["state"] == state
    same = same and previous is not None and previous["release"] == doc["release"]
    if same and doc["event"] == "heartbeat":
        return None, ""
    if state == "applying":
        running = doc["release"] if doc["release"] is not None else "nothing yet"
        return "began", f"{node} began release {target} (running {running})"
    if state == "converged":
        if same:
            return None, ""
        return "converged", f"{node} converged on release {doc['release']}"
    if state == "rolled-back":
        return (
            "rolled-back",
            f"{node} rolled back release {error.get('release')} to {doc['release']}:"
            f" {error.get('reason')}",
        )
    if state in ("rejected", "deferred"):
        return state, f"{node} {state} release {error.get('release')}: {error.get('reason')}"
    if state == "offline" and not same:
        return "offline", f"{node} could not reach the origin: {error.get('reason')}"
    return None, ""


def render_text(events: Sequence[Event]) -> str:
    lines = []
    for event in events:
        mark = "PROBLEM" if event.problem else "ok"
        line = f"{event.at}  {event.kind:<11}  {event.text}  [{mark}]"
        if event.problem:
            line += f"\n{'':>22}  {event.problem}"
        lines.append(line)
    problems = sum(1 for e in events if e.problem)
    lines.append("")
    lines.append(
        f"{len(events)} event(s), {problems} problem(s)"
        + ("" if problems else "; every signature checked")
    )
    return "\n".join(lines)
