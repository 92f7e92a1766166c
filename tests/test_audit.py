"""`edgefleet audit` and `edgefleet status fold` against real repositories, keys and agents.

Covered: the verified timeline of a normal story (a release converged, a release rolled back)
in JSON and text, `--node` and `--since`; what the audit flags with exit 1: a status commit
signed by another node's key or not signed, a node claiming a release that does not exist, a
gap in the sequence numbers, a status branch rewritten at the origin (seen through an `audit`
fold or through the reflog of an earlier fetch); the `audit` branch that `status fold` builds
(its root, one merge per fold, a no-op when nothing moved, node commits untouched, `--push`);
and what plain `git log --show-signature` says about the same commits. Forged and rewritten
history is made with git plumbing in the bare origin, as someone with access to the server's
disk could.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler.keys import PublicKey
from tests.agent_testing import FLEET_NAME, LiveFleet, NodeAgent
from tests.status_testing import git, publish_unhealthy, put_status

EDGEFLEET = Path(sys.executable).parent / "edgefleet"
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


# --- helpers ---------------------------------------------------------------------------------


def edgefleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EDGEFLEET), *args], capture_output=True, text=True, check=False, timeout=60
    )


def audit_json(repo: Path, *args: str) -> tuple[int, dict[str, Any]]:
    done = edgefleet("audit", "--repo", str(repo), "--format", "json", *args)
    assert done.returncode in (0, 1), done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    # The problems list is, by contract, the events that carry a problem.
    assert doc["problems"] == [e for e in doc["events"] if e["problem"]]
    return done.returncode, doc


def utc(seconds: str | int) -> str:
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def commit_time(git_dir: Path, rev: str) -> str:
    return utc(git(git_dir, "log", "-1", "--format=%ct", rev))


def history(git_dir: Path, ref: str) -> list[str]:
    """The commits of `ref`, oldest first."""
    return git(git_dir, "rev-list", "--reverse", ref).split()


def status_at(git_dir: Path, rev: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(git(git_dir, "show", f"{rev}:status.json"))
    return doc


def parents(git_dir: Path, rev: str) -> list[str]:
    return git(git_dir, "log", "-1", "--format=%P", rev).split()


def all_refs(git_dir: Path) -> str:
    return git(git_dir, "for-each-ref", "--format=%(objectname) %(refname)")


def fingerprint(key: PublicKey) -> str:
    """The OpenSSH SHA256 fingerprint, as ssh-keygen and git print it."""
    blob = base64.b64decode(key.openssh().split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def as_node(doc: dict[str, Any], node: str, **changes: Any) -> dict[str, Any]:
    return {**doc, "node": node, **changes}


def report_again(node: NodeAgent, fleet: LiveFleet, heartbeat: str) -> None:
    """One more status commit from the real agent: heartbeatInterval is part of the document,
    so a new value is a change, without a release to apply."""
    node.write_config(str(fleet.origin), heartbeatInterval=heartbeat)
    code, info = node.once()
    assert code == 0, info["_stderr"]


def fold(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return edgefleet("status", "fold", "--repo", str(repo), *args)


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def fleet(tmp_path: Path) -> LiveFleet:
    return LiveFleet(tmp_path)


@pytest.fixture
def converged(fleet: LiveFleet) -> NodeAgent:
    """edge-1 converged on release 1: status/edge-1 at the origin is applying, converged."""
    fleet.standard()
    fleet.publish()
    node = NodeAgent(fleet, "edge-1")
    code, info = node.once()
    assert code == 0, info["_stderr"]
    assert len(history(fleet.origin, "status/edge-1")) == 2
    return node


# --- 1. the normal story -----------------------------------------------------------------------


def test_a_converged_release_and_a_rolled_back_one_in_time_order(
    fleet: LiveFleet, converged: NodeAgent
) -> None:
    assert publish_unhealthy(fleet) == 2
    code, info = converged.once()
    assert code == 1 and info["state"] == "rolled-back", info["_stderr"]

    code, doc = audit_json(fleet.path)
    assert code == 0
    events = doc["events"]
    assert doc["problems"] == []

    clone = fleet.path / ".git"
    changes = [
        {
            "at": utc(line.split(" ", 2)[1]),
            "kind": "change",
            "text": f"operator <operator@example.net> committed {line.split(' ', 2)[2]!r};"
            " unsigned",
            "commit": line.split(" ", 2)[0],
            "node": None,
            "release": None,
            "signer": None,
            "problem": None,
        }
        for line in git(clone, "log", "--reverse", "--format=%H %ct %s", "HEAD").splitlines()
    ]
    assert [c["text"] for c in changes] == [
        "operator <operator@example.net> committed 'fleet with its trust root'; unsigned",
        "operator <operator@example.net> committed 'desired state'; unsigned",
        "operator <operator@example.net> committed 'desired state'; unsigned",
    ]
    assert [e for e in events if e["kind"] == "change"] == changes

    # Signers are listed in key id order, each by its allowed_signers principal.
    names = ", ".join(
        f"{k.public.comment}@{FLEET_NAME}"
        for k in sorted(fleet.keys.release[:2], key=lambda k: k.keyid)
    )
    releases = []
    for version in (1, 2):
        tagged = git(clone, "rev-parse", f"release/{version}^{{commit}}")
        tagger = git(
            clone, "for-each-ref", "--format=%(taggerdate:unix)", f"refs/tags/release/{version}"
        )
        releases.append(
            {
                "at": utc(tagger),
                "kind": "release",
                "text": f"release/{version} of commit {tagged[:12]} signed by 2 release key(s)"
                f" ({names}); tagged by EdgeFleet release <release1@{FLEET_NAME}>",
                "commit": tagged,
                "node": None,
                "release": version,
                "signer": f"release1@{FLEET_NAME}",
                "problem": None,
            }
        )
    assert [e for e in events if e["kind"] == "release"] == releases

    began1, converged1, began2, rolled2 = history(fleet.origin, "status/edge-1")
    reason = status_at(fleet.origin, rolled2)["lastError"]["reason"]
    assert reason.startswith("app: ") and "exit 4" in reason
    node_events = [
        ("began", "edge-1 began release 1 (running nothing yet)", began1, None),
        ("converged", "edge-1 converged on release 1", converged1, 1),
        ("began", "edge-1 began release 2 (running 1)", began2, 1),
        ("rolled-back", f"edge-1 rolled back release 2 to 1: {reason}", rolled2, 1),
    ]
    assert [e for e in events if e["node"] == "edge-1"] == [
        {
            "at": commit_time(fleet.origin, sha),
            "kind": kind,
            "text": text,
            "commit": sha,
            "node": "edge-1",
            "release": release,
            "signer": "edge-1",
            "problem": None,
        }
        for kind, text, sha, release in node_events
    ]
    assert len(events) == len(changes) + len(releases) + len(node_events)

    # Time order: timestamps never go back, and what caused an event comes before it (within
    # one second the audit puts changes and releases before node status).
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    at = {(e["kind"], e["commit"]): i for i, e in enumerate(events)}
    release1, release2 = (at[("release", r["commit"])] for r in releases)
    assert (
        release1
        < at[("began", began1)]
        < at[("converged", converged1)]
        < at[("began", began2)]
        < at[("rolled-back", rolled2)]
    )
    assert release2 < at[("began", began2)]
    assert at[("change", releases[1]["commit"])] < release2

    text = edgefleet("audit", "--repo", str(fleet.path), "--format", "text")
    assert text.returncode == 0, text.stderr
    assert text.stdout == "".join(
        f"{e['at']}  {e['kind']:<11}  {e['text']}  [ok]\n" for e in events
    ) + (f"\n{len(events)} event(s), 0 problem(s); every signature checked\n")

    code, only = audit_json(fleet.path, "--node", "edge-1")
    assert code == 0
    assert only == {"events": [e for e in events if e["kind"] != "change"], "problems": []}

    since = commit_time(fleet.origin, began2)
    code, recent = audit_json(fleet.path, "--since", since)
    assert code == 0
    assert recent["events"] == [e for e in events if e["at"] >= since]
    assert recent["events"][-2:] == events[-2:]

    code, future = audit_json(fleet.path, "--since", "2099-01-01")
    assert code == 0 and future == {"events": [], "problems": []}


def test_audit_refuses_a_bad_since_and_an_unknown_node(fleet: LiveFleet) -> None:
    fleet.standard()
    fleet.publish()
    bad = edgefleet("audit", "--repo", str(fleet.path), "--since", "last tuesday")
    assert bad.returncode == 2 and bad.stdout == ""
    assert "--since: got 'last tuesday', expected a date like 2026-11-01" in bad.stderr
    unknown = edgefleet("audit", "--repo", str(fleet.path), "--node", "edge-9")
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert "edge-9: got a node the fleet does not have" in unknown.stderr


# --- 2-4. what the audit flags -----------------------------------------------------------------


@pytest.mark.parametrize("signed_by", ["edge-1", None], ids=["other-node-key", "unsigned"])
def test_a_status_commit_not_signed_by_its_node_is_flagged(
    fleet: LiveFleet, converged: NodeAgent, signed_by: str | None
) -> None:
    head = status_at(fleet.origin, "status/edge-1")
    signer = fleet.node_keys[signed_by] if signed_by else None
    forged = put_status(fleet, "edge-2", as_node(head, "edge-2", sequence=1), signer)
    why = (
        f"got a signature by key {fingerprint(fleet.node_keys['edge-1'].public)},"
        " expected one by edge-2"
        if signed_by
        else "got an unsigned commit, expected an SSH signature"
    )

    code, doc = audit_json(fleet.path)
    assert code == 1
    flagged = {
        "at": commit_time(fleet.origin, forged),
        "kind": "converged",
        "text": "edge-2 converged on release 1",
        "commit": forged,
        "node": "edge-2",
        "release": 1,
        "signer": None,
        "problem": f"status/edge-2: not signed by edge-2: {why}",
    }
    assert doc["problems"] == [flagged]
    assert [e for e in doc["events"] if e["node"] == "edge-2"] == [flagged]

    text = edgefleet("audit", "--repo", str(fleet.path))
    assert text.returncode == 1
    lines = text.stdout.splitlines()
    line = lines.index(f"{flagged['at']}  converged    edge-2 converged on release 1  [PROBLEM]")
    assert lines[line + 1] == f"{'':>22}  status/edge-2: not signed by edge-2: {why}"
    assert lines[-1] == f"{len(doc['events'])} event(s), 1 problem(s)"

    # edge-1's own history is clean: the forgery is charged to the branch it sits on.
    code, own = audit_json(fleet.path, "--node", "edge-1")
    assert code == 0 and own["problems"] == []


def test_a_node_claiming_a_release_that_does_not_exist_is_flagged(
    fleet: LiveFleet, converged: NodeAgent
) -> None:
    head = status_at(fleet.origin, "status/edge-1")
    claim = put_status(
        fleet, "edge-2", as_node(head, "edge-2", sequence=1, release=9), fleet.node_keys["edge-2"]
    )
    code, doc = audit_json(fleet.path)
    assert code == 1
    assert doc["problems"] == [
        {
            "at": commit_time(fleet.origin, claim),
            "kind": "converged",
            "text": "edge-2 converged on release 9",
            "commit": claim,
            "node": "edge-2",
            "release": 9,
            "signer": "edge-2",
            "problem": "claims release 9 (release), which does not exist",
        }
    ]


def test_a_gap_in_the_sequence_numbers_is_flagged(fleet: LiveFleet, converged: NodeAgent) -> None:
    applying, done = (status_at(fleet.origin, c) for c in history(fleet.origin, "status/edge-1"))
    key = fleet.node_keys["edge-2"]
    first = put_status(fleet, "edge-2", as_node(applying, "edge-2", sequence=1), key)
    third = put_status(fleet, "edge-2", as_node(done, "edge-2", sequence=3), key, parent=first)

    code, doc = audit_json(fleet.path)
    assert code == 1
    assert [e for e in doc["events"] if e["node"] == "edge-2"] == [
        {
            "at": commit_time(fleet.origin, first),
            "kind": "began",
            "text": "edge-2 began release 1 (running nothing yet)",
            "commit": first,
            "node": "edge-2",
            "release": None,
            "signer": "edge-2",
            "problem": None,
        },
        {
            "at": commit_time(fleet.origin, third),
            "kind": "converged",
            "text": "edge-2 converged on release 1",
            "commit": third,
            "node": "edge-2",
            "release": 1,
            "signer": "edge-2",
            "problem": "sequence: got 3, expected 2 (commits are missing)",
        },
    ]
    assert len(doc["problems"]) == 1


def test_a_gap_before_a_heartbeat_names_the_node_in_the_text(
    fleet: LiveFleet, converged: NodeAgent
) -> None:
    # A gap is flagged on whatever commit follows it; here a heartbeat, which by itself
    # records no event, so the problem is all the line shows.
    done = status_at(fleet.origin, "status/edge-1")
    key = fleet.node_keys["edge-2"]
    first = put_status(fleet, "edge-2", as_node(done, "edge-2", sequence=1), key)
    beat = as_node(done, "edge-2", sequence=3, event="heartbeat")
    put_status(fleet, "edge-2", beat, key, parent=first)

    code, doc = audit_json(fleet.path)
    assert code == 1
    [flagged] = doc["problems"]
    assert flagged["problem"] == "sequence: got 3, expected 2 (commits are missing)"
    assert flagged["node"] == "edge-2"
    # BUG: the event's text is "" (kind "status"), so the text format shows the gap under a
    # line naming neither the node nor the branch.
    assert "edge-2" in flagged["text"], flagged


def test_a_branch_whose_first_commit_is_not_sequence_1_is_flagged(
    fleet: LiveFleet, converged: NodeAgent
) -> None:
    # A branch's first commit is sequence 1 (status.json schema; the agent never starts
    # elsewhere): a first commit saying 3 means commits 1 and 2 are missing.
    done = status_at(fleet.origin, "status/edge-1")
    root = put_status(
        fleet, "edge-2", as_node(done, "edge-2", sequence=3), fleet.node_keys["edge-2"]
    )
    code, doc = audit_json(fleet.path)
    # BUG: exit 0 and no problem; only the step from one commit to the next is checked.
    assert code == 1, [e for e in doc["events"] if e["node"] == "edge-2"]
    [flagged] = doc["problems"]
    assert flagged["commit"] == root and flagged["node"] == "edge-2"
    assert "sequence: got 3, expected 1" in flagged["problem"]


# --- 5. rewritten branches ---------------------------------------------------------------------


def rewrite(fleet: LiveFleet, how: str) -> str:
    """Move the origin's status/edge-1 off its head: back to its first commit, or to a new,
    correctly signed commit that does not descend from it. Returns the head that is gone."""
    gone = git(fleet.origin, "rev-parse", "refs/heads/status/edge-1")
    first = history(fleet.origin, gone)[0]
    if how == "older":
        git(fleet.origin, "update-ref", "refs/heads/status/edge-1", first)
    else:
        doc = {**status_at(fleet.origin, gone), "sequence": 1}
        put_status(fleet, "edge-1", doc, fleet.node_keys["edge-1"])
    return gone


def rewritten(fleet: LiveFleet, gone: str, where: str) -> dict[str, Any]:
    head = git(fleet.origin, "rev-parse", "refs/heads/status/edge-1")
    return {
        "at": commit_time(fleet.origin, head),
        "kind": "rewritten",
        "text": f"status/edge-1 no longer contains {gone[:12]}, seen earlier in {where}",
        "commit": gone,
        "node": "edge-1",
        "release": None,
        "signer": None,
        "problem": f"status/edge-1 was rewritten: {gone[:12]} ({where}) is gone from it",
    }


@pytest.mark.parametrize("how", ["older", "diverged"])
def test_a_rewritten_status_branch_is_found_through_the_audit_fold(
    fleet: LiveFleet, converged: NodeAgent, tmp_path: Path, how: str
) -> None:
    folded = fold(fleet.path, "--push")
    assert folded.returncode == 0, folded.stderr
    fold_commit = git(fleet.origin, "rev-parse", "refs/heads/audit")
    gone = rewrite(fleet, how)

    # A new auditor's clone has no reflog from before the rewrite: only the fold remembers.
    auditor = tmp_path / "auditor"
    subprocess.run(
        ["git", "clone", "-q", str(fleet.origin), str(auditor)], check=True, capture_output=True
    )
    code, doc = audit_json(auditor)
    assert code == 1
    assert doc["problems"] == [rewritten(fleet, gone, f"audit fold {fold_commit[:12]}")]


@pytest.mark.parametrize("how", ["older", "diverged"])
def test_a_rewritten_status_branch_is_found_through_the_reflog_of_an_earlier_fetch(
    fleet: LiveFleet, converged: NodeAgent, how: str
) -> None:
    seen = edgefleet("status", "--repo", str(fleet.path))
    assert seen.returncode == 0, seen.stderr
    gone = rewrite(fleet, how)

    code, doc = audit_json(fleet.path)
    assert code == 1
    assert doc["problems"] == [rewritten(fleet, gone, "the reflog (origin/status/edge-1@{1})")]
    assert "audit" not in all_refs(fleet.path / ".git") + all_refs(fleet.origin)


# --- 6. status fold ----------------------------------------------------------------------------


def test_fold_merges_node_heads_into_audit_and_leaves_their_commits_alone(
    fleet: LiveFleet, converged: NodeAgent
) -> None:
    edge2 = NodeAgent(fleet, "edge-2")
    code, info = edge2.once()
    assert code == 0, info["_stderr"]
    clone = fleet.path / ".git"
    h1 = git(fleet.origin, "rev-parse", "refs/heads/status/edge-1")
    h2 = git(fleet.origin, "rev-parse", "refs/heads/status/edge-2")

    first = fold(fleet.path, "--push")
    assert first.returncode == 0, first.stderr
    f1 = git(clone, "rev-parse", "refs/heads/audit")
    assert first.stdout == (
        f"folded 2 node(s) into audit at {f1[:12]}: edge-1, edge-2\npushed audit to origin\n"
    )
    assert git(fleet.origin, "rev-parse", "refs/heads/audit") == f1
    start, *heads = parents(clone, f1)
    assert heads == [h1, h2]
    assert parents(clone, start) == []
    assert git(clone, "log", "-1", "--format=%T%n%B", start) == f"{EMPTY_TREE}\naudit: start"
    assert git(clone, "log", "-1", "--format=%an <%ae>%n%B", f1) == (
        f"EdgeFleet fold <fold@{FLEET_NAME}>\naudit: fold 2 node(s)\n\n"
        f"edge-1: {h1[:12]}\nedge-2: {h2[:12]}"
    )
    assert git(clone, "ls-tree", f1) == (
        f"100644 blob {git(clone, 'rev-parse', f'{h1}:status.json')}\tedge-1.json\n"
        f"100644 blob {git(clone, 'rev-parse', f'{h2}:status.json')}\tedge-2.json"
    )
    assert git(clone, "log", "--first-parent", "--format=%H %s", "audit").splitlines() == [
        f"{f1} audit: fold 2 node(s)",
        f"{start} audit: start",
    ]

    before = (all_refs(clone), all_refs(fleet.origin))
    again = fold(fleet.path, "--push")
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"nothing moved since the last fold (audit at {f1[:12]})\n"
    assert (all_refs(clone), all_refs(fleet.origin)) == before

    report_again(converged, fleet, "1s")
    h1b = git(fleet.origin, "rev-parse", "refs/heads/status/edge-1")
    assert parents(fleet.origin, h1b) == [h1]

    third = fold(fleet.path, "--push")
    assert third.returncode == 0, third.stderr
    f3 = git(fleet.origin, "rev-parse", "refs/heads/audit")
    assert third.stdout == (
        f"folded 1 node(s) into audit at {f3[:12]}: edge-1\npushed audit to origin\n"
    )
    assert git(clone, "rev-parse", "refs/heads/audit") == f3
    assert parents(fleet.origin, f3) == [f1, h1b]
    assert git(fleet.origin, "ls-tree", "--name-only", f3).splitlines() == [
        "edge-1.json",
        "edge-2.json",
    ]
    assert git(fleet.origin, "rev-parse", f"{f3}:edge-1.json") == git(
        fleet.origin, "rev-parse", f"{h1b}:status.json"
    )
    assert git(fleet.origin, "rev-parse", f"{f3}:edge-2.json") == git(
        fleet.origin, "rev-parse", f"{h2}:status.json"
    )
    assert git(fleet.origin, "log", "--first-parent", "--format=%H", "audit").split() == [
        f3,
        f1,
        start,
    ]

    # Every node commit is in audit under its own id, and the node branches did not move.
    node_commits = history(fleet.origin, "status/edge-1") + history(fleet.origin, "status/edge-2")
    assert len(node_commits) == 5
    assert set(history(fleet.origin, "audit")) == {start, f1, f3, *node_commits}
    assert git(fleet.origin, "rev-parse", "status/edge-1", "status/edge-2").split() == [h1b, h2]

    code, doc = audit_json(fleet.path)
    assert code == 0 and doc["problems"] == []


def test_a_fresh_clone_folds_on_top_of_the_origins_audit(
    fleet: LiveFleet, converged: NodeAgent, tmp_path: Path
) -> None:
    folded = fold(fleet.path, "--push")
    assert folded.returncode == 0, folded.stderr
    f1 = git(fleet.origin, "rev-parse", "refs/heads/audit")
    report_again(converged, fleet, "1s")
    head = git(fleet.origin, "rev-parse", "refs/heads/status/edge-1")

    # A scheduled CI job: a new clone each time, so no local audit branch, only origin/audit.
    job = tmp_path / "job"
    subprocess.run(
        ["git", "clone", "-q", str(fleet.origin), str(job)], check=True, capture_output=True
    )
    done = fold(job, "--push")
    # BUG: exit 2, "cannot lock ref 'refs/heads/audit': unable to resolve reference".
    assert done.returncode == 0, done.stderr
    f2 = git(fleet.origin, "rev-parse", "refs/heads/audit")
    assert done.stdout == (
        f"folded 1 node(s) into audit at {f2[:12]}: edge-1\npushed audit to origin\n"
    )
    assert parents(fleet.origin, f2) == [f1, head]


def test_a_clone_whose_audit_is_behind_the_origins_does_not_push_it_back(
    fleet: LiveFleet, converged: NodeAgent
) -> None:
    folded = fold(fleet.path, "--push")
    assert folded.returncode == 0, folded.stderr
    report_again(converged, fleet, "1s")
    # Someone else folds meanwhile (here a job on the server, in the origin itself).
    server = fold(fleet.origin)
    assert server.returncode == 0, server.stderr
    newer = git(fleet.origin, "rev-parse", "refs/heads/audit")

    done = fold(fleet.path, "--push")
    assert done.stdout == f"nothing moved since the last fold (audit at {newer[:12]})\n"
    # BUG: exit 2: it pushes its own, older refs/heads/audit, which the origin refuses.
    assert done.returncode == 0, done.stderr
    assert git(fleet.origin, "rev-parse", "refs/heads/audit") == newer


# --- 7. plain git ------------------------------------------------------------------------------


def test_plain_git_checks_the_signatures_but_not_whose_branch_they_are_on(
    fleet: LiveFleet, converged: NodeAgent
) -> None:
    signers = fleet.path / "trust" / "allowed_signers"
    edge1 = fingerprint(fleet.node_keys["edge-1"].public)
    head = status_at(fleet.origin, "status/edge-1")
    forged = put_status(
        fleet, "edge-2", as_node(head, "edge-2", sequence=1), fleet.node_keys["edge-1"]
    )

    def signature_lines(ref: str) -> list[tuple[str, str]]:
        done = subprocess.run(
            [
                "git",
                "-C",
                str(fleet.origin),
                "-c",
                f"gpg.ssh.allowedSignersFile={signers}",
                "log",
                "--show-signature",
                ref,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        return [
            (line.removeprefix("commit "), lines[i + 1])
            for i, line in enumerate(lines)
            if line.startswith("commit ")
        ]

    good = f'Good "git" signature for edge-1@{FLEET_NAME} with ED25519 key {edge1}'
    assert signature_lines("status/edge-1") == [
        (sha, good) for sha in reversed(history(fleet.origin, "status/edge-1"))
    ]
    # Git knows keys, not branches: edge-1's key is good wherever the commit sits.
    assert signature_lines("status/edge-2") == [(forged, good)]
    verify = subprocess.run(
        [
            "git",
            "-C",
            str(fleet.origin),
            "-c",
            f"gpg.ssh.allowedSignersFile={signers}",
            "verify-commit",
            forged,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0
    assert 'Good "git" signature for edge-2' not in verify.stdout + verify.stderr
