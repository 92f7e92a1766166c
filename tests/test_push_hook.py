"""`edgefleet hook pre-receive` installed in a real bare origin, against real pushes.

The hook is the origin's `hooks/pre-receive`; pushes come from the fleet's own clone, from a
node's state repository, or from the real `edgefleet-agent`, with the pusher named by
`EDGEFLEET_USER` (git passes the environment of a push to a local-path remote on to the hook).
Each refusal asserts git's exit code, the hook's `edgefleet: refused` reason, and that no ref
of the origin moved.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.keys import SigningKey
from reconciler.release import sign_release, tag_message, tag_name, unverified_payload
from reconciler.release_tags import create_tag
from reconciler.timestamps import now
from tests.agent_testing import LiveFleet, NodeAgent
from tests.status_testing import converged_status, git, status_commit
from tests.trust_testing import git_commit

EDGEFLEET = Path(sys.executable).parent / "edgefleet"
STATUS_1 = "refs/heads/status/edge-1"
STATUS_2 = "refs/heads/status/edge-2"
REFUSED = "edgefleet: refused"


def refs(git_dir: Path) -> dict[str, str]:
    out = git(git_dir, "for-each-ref", "--format=%(refname) %(objectname)")
    return dict(line.split(" ") for line in out.splitlines())


def push_env(user: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEFLEET_USER", "REMOTE_USER")}
    if user is not None:
        env["EDGEFLEET_USER"] = user
    return env


def push(
    git_dir: Path, url: Path, *args: str, user: str | None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "--git-dir", str(git_dir), "push", str(url), *args],
        capture_output=True,
        text=True,
        env=push_env(user),
        check=False,
        timeout=60,
    )


def assert_refused(
    done: subprocess.CompletedProcess[str], reason: str, before: dict[str, str], origin: Path
) -> None:
    assert done.returncode == 1, done.stderr
    assert "pre-receive hook declined" in done.stderr
    refusals = [ln for ln in done.stderr.splitlines() if REFUSED in ln]
    assert refusals, done.stderr
    assert any(reason in ln for ln in refusals), done.stderr
    assert refs(origin) == before


def assert_accepted(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stderr
    assert REFUSED not in done.stderr


@pytest.fixture(autouse=True)
def _no_user_from_outside(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # LiveFleet.publish pushes with this process's environment: no pusher leaks in.
    monkeypatch.delenv("EDGEFLEET_USER", raising=False)
    monkeypatch.delenv("REMOTE_USER", raising=False)
    yield


@pytest.fixture
def fleet(tmp_path: Path) -> LiveFleet:
    """Release 1 at the origin, then the hook installed."""
    fleet = LiveFleet(tmp_path)
    fleet.standard()
    fleet.publish()
    hook = fleet.origin / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\nexec {EDGEFLEET} hook pre-receive\n")
    hook.chmod(0o755)
    return fleet


@pytest.fixture
def reported(fleet: LiveFleet, monkeypatch: pytest.MonkeyPatch) -> NodeAgent:
    """edge-1 converged on release 1 and pushed its status through the hook as itself."""
    node = NodeAgent(fleet, "edge-1")
    with monkeypatch.context() as env:
        env.setenv("EDGEFLEET_USER", "edge-1")
        code, info = node.once()
    assert code == 0, info["_stderr"]
    return node


@pytest.fixture
def git_dir(fleet: LiveFleet) -> Path:
    """The fleet clone's git directory, where test commits are made before a push."""
    return Path(fleet.repo.git_dir)


def status_doc(fleet: LiveFleet, node: str) -> dict[str, Any]:
    """A valid status.json for `node`: converged on release 1."""
    return converged_status(fleet, node)


# --- a node's own status ---------------------------------------------------------------------


def test_a_nodes_normal_status_push_is_accepted(fleet: LiveFleet, reported: NodeAgent) -> None:
    at_origin = refs(fleet.origin)
    local = git(reported.state / "repo", "rev-parse", STATUS_1)
    assert at_origin[STATUS_1] == local
    log = git(fleet.origin, "log", "--format=%s", STATUS_1).splitlines()
    assert log[0] == "edge-1: converged on release 1" and len(log) == 2
    # Nothing stayed queued: the node's record of the origin's head is its own head.
    assert git(reported.state / "repo", "rev-parse", "refs/remotes/origin/status/edge-1") == local


def test_a_nodes_status_under_another_credential_is_refused_and_stays_queued(
    fleet: LiveFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = refs(fleet.origin)
    node = NodeAgent(fleet, "edge-1")
    with monkeypatch.context() as env:
        env.setenv("EDGEFLEET_USER", "edge-2")
        code, info = node.once()
    # A refused status push never fails the cycle: the node converged all the same.
    assert code == 0 and info["state"] == "converged", info["_stderr"]
    assert '"status.push_refused"' in info["_stderr"]
    assert f"{REFUSED} {STATUS_1}: node credential 'edge-2'" in info["_stderr"]
    assert refs(fleet.origin) == before
    queued = git(node.state / "repo", "rev-list", STATUS_1).split()
    assert len(queued) == 2
    with monkeypatch.context() as env:
        env.setenv("EDGEFLEET_USER", "edge-1")
        code, info = node.once()
    assert code == 0, info["_stderr"]
    assert refs(fleet.origin)[STATUS_1] == queued[0]


def test_a_node_credential_cannot_push_the_main_branch(fleet: LiveFleet, git_dir: Path) -> None:
    before = refs(fleet.origin)
    fleet.change("README.md", "a node writes here\n")
    done = push(git_dir, fleet.origin, "HEAD:refs/heads/main", user="edge-1")
    assert_refused(
        done,
        "node credential 'edge-1' may update only refs/heads/status/edge-1",
        before,
        fleet.origin,
    )


def test_a_node_credential_cannot_push_another_nodes_status(
    fleet: LiveFleet, git_dir: Path
) -> None:
    before = refs(fleet.origin)
    # A commit edge-2 itself could push: only the credential is wrong.
    commit = status_commit(git_dir, status_doc(fleet, "edge-2"), fleet.node_keys["edge-2"])
    done = push(git_dir, fleet.origin, f"{commit}:{STATUS_2}", user="edge-1")
    assert_refused(done, f"may update only {STATUS_1}, got {STATUS_2}", before, fleet.origin)


# --- forged and rewritten status -------------------------------------------------------------


def test_a_status_commit_signed_by_another_node_is_refused(fleet: LiveFleet, git_dir: Path) -> None:
    before = refs(fleet.origin)
    forged = status_commit(git_dir, status_doc(fleet, "edge-2"), fleet.node_keys["edge-1"])
    done = push(git_dir, fleet.origin, f"{forged}:{STATUS_2}", user="alice")
    assert_refused(done, "expected one by edge-2", before, fleet.origin)
    assert "user 'alice'" in done.stderr


def test_an_unsigned_status_commit_is_refused(fleet: LiveFleet, git_dir: Path) -> None:
    before = refs(fleet.origin)
    unsigned = status_commit(git_dir, status_doc(fleet, "edge-2"), None)
    done = push(git_dir, fleet.origin, f"{unsigned}:{STATUS_2}", user="edge-2")
    assert_refused(done, "got an unsigned commit", before, fleet.origin)


def test_a_non_fast_forward_status_update_is_refused(
    fleet: LiveFleet, reported: NodeAgent, git_dir: Path
) -> None:
    before = refs(fleet.origin)
    # Properly signed by edge-1, but a new root: it would throw the branch's history away.
    rewrite = status_commit(git_dir, status_doc(fleet, "edge-1"), fleet.node_keys["edge-1"])
    done = push(git_dir, fleet.origin, "--force", f"{rewrite}:{STATUS_1}", user="edge-1")
    assert_refused(done, "got a non-fast-forward update", before, fleet.origin)


def test_deleting_a_status_branch_is_refused(
    fleet: LiveFleet, reported: NodeAgent, git_dir: Path
) -> None:
    before = refs(fleet.origin)
    assert STATUS_1 in before
    for user in ("edge-1", "alice"):
        done = push(git_dir, fleet.origin, f":{STATUS_1}", user=user)
        assert_refused(done, "got a deletion", before, fleet.origin)


def test_a_status_branch_cannot_be_pointed_at_another_nodes_commits(
    fleet: LiveFleet, reported: NodeAgent, git_dir: Path
) -> None:
    """Every commit on status/edge-2 must be edge-2's: edge-1's history, already at the origin
    on status/edge-1, is no more edge-2's than a freshly forged commit is."""
    before = refs(fleet.origin)
    theirs = before[STATUS_1]
    # The clone needs edge-1's objects to push them.
    git(git_dir, "fetch", "-q", str(fleet.origin), f"{STATUS_1}:refs/theirs")
    done = push(git_dir, fleet.origin, f"{theirs}:{STATUS_2}", user="alice")
    assert_refused(done, "expected one by edge-2", before, fleet.origin)


def test_a_forged_commit_staged_on_another_branch_cannot_become_a_status_head(
    fleet: LiveFleet, git_dir: Path
) -> None:
    """The hook polices status branches, not other branches: a forged commit parked on one
    first must still be checked when it is pushed onto a status branch."""
    unsigned = status_commit(git_dir, status_doc(fleet, "edge-2"), None)
    assert_accepted(push(git_dir, fleet.origin, f"{unsigned}:refs/heads/scratch", user="alice"))
    before = refs(fleet.origin)
    done = push(git_dir, fleet.origin, f"{unsigned}:{STATUS_2}", user="alice")
    assert_refused(done, "got an unsigned commit", before, fleet.origin)


# --- an operator landing a node's status -----------------------------------------------------


def test_an_operator_may_push_a_nodes_correctly_signed_status(
    fleet: LiveFleet, reported: NodeAgent
) -> None:
    state_repo = reported.state / "repo"
    head = git(state_repo, "rev-parse", STATUS_1)
    first = git(state_repo, "rev-parse", f"{STATUS_1}~1")
    # The server forgets the newest commit, as if it had been carried back on a USB stick.
    git(fleet.origin, "update-ref", STATUS_1, first, head)
    done = push(state_repo, fleet.origin, f"{STATUS_1}:{STATUS_1}", user="alice")
    assert_accepted(done)
    assert refs(fleet.origin)[STATUS_1] == head


# --- release tags ----------------------------------------------------------------------------


def signed_release_tag(fleet: LiveFleet, signer: SigningKey) -> str:
    """A release payload with a threshold of release signatures inside, in a tag object whose
    own signature is `signer`'s; the ref is written in the fleet clone."""
    envelope = sign_release(fleet.payload(), fleet.keys.release[:2])
    return create_tag(
        fleet.repo,
        name=tag_name(unverified_payload(envelope)["version"]),
        commit=fleet.repo.head.commit.hexsha,
        message=tag_message(envelope),
        signer=signer,
        tagger="someone <someone@test-fleet>",
        when=now(),
    )


def test_a_release_tag_signed_by_a_key_that_is_not_a_release_key_is_refused(
    fleet: LiveFleet, git_dir: Path
) -> None:
    before = refs(fleet.origin)
    git_commit(fleet.repo, "a change")
    # A root key is trusted for roots, not releases; a node key for status only.
    for signer in (fleet.keys.root[0], fleet.node_keys["edge-1"]):
        signed_release_tag(fleet, signer)
        done = push(git_dir, fleet.origin, "refs/tags/release/2", user="alice")
        assert_refused(done, "tag signature: got a signature by key", before, fleet.origin)
        assert "(a release key)" in done.stderr
        git(git_dir, "update-ref", "-d", "refs/tags/release/2")


def test_moving_an_existing_release_tag_is_refused(fleet: LiveFleet, git_dir: Path) -> None:
    before = refs(fleet.origin)
    git_commit(fleet.repo, "a change")
    git(git_dir, "update-ref", "-d", "refs/tags/release/1")
    # Re-signed properly by a release key: moving it is refused all the same.
    envelope = sign_release(fleet.payload(version=1), fleet.keys.release[:2])
    create_tag(
        fleet.repo,
        name="release/1",
        commit=fleet.repo.head.commit.hexsha,
        message=tag_message(envelope),
        signer=fleet.keys.release[0],
        tagger="EdgeFleet release <release1@test-fleet>",
        when=now(),
    )
    done = push(git_dir, fleet.origin, "--force", "refs/tags/release/1", user="alice")
    assert_refused(done, "got an update of an existing release tag", before, fleet.origin)
    done = push(git_dir, fleet.origin, ":refs/tags/release/1", user="alice")
    assert_refused(done, "got an update of an existing release tag", before, fleet.origin)


def test_a_proper_release_is_accepted(fleet: LiveFleet) -> None:
    old_main = refs(fleet.origin)["refs/heads/main"]
    fleet.config_file("1.1.0", "threshold = 2\n")
    fleet.use("settings", "settings@1.1.0")
    # LiveFleet.publish pushes main and the new tag with plain `git push`, through the hook.
    version = fleet.publish()
    at_origin = refs(fleet.origin)
    assert at_origin[f"refs/tags/release/{version}"] == git(
        Path(fleet.repo.git_dir), "rev-parse", f"refs/tags/release/{version}"
    )
    assert at_origin["refs/heads/main"] == fleet.repo.head.commit.hexsha != old_main


def test_a_proper_release_pushed_as_an_operator_is_accepted(
    fleet: LiveFleet, git_dir: Path
) -> None:
    git_commit(fleet.repo, "a change")
    sha = signed_release_tag(fleet, fleet.keys.release[1])
    done = push(git_dir, fleet.origin, "HEAD:refs/heads/main", "refs/tags/release/2", user="alice")
    assert_accepted(done)
    at_origin = refs(fleet.origin)
    assert at_origin["refs/tags/release/2"] == sha
    assert at_origin["refs/heads/main"] == fleet.repo.head.commit.hexsha


def test_the_first_push_to_an_empty_origin_takes_its_rules_from_the_main_it_brings(
    tmp_path: Path,
) -> None:
    """Bootstrap: with the hook installed before anything is pushed, the first push of main
    and release 1 is judged by the trust root and nodes that main brings."""
    fleet = LiveFleet(tmp_path)
    hook = fleet.origin / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\nexec {EDGEFLEET} hook pre-receive\n")
    hook.chmod(0o755)
    fleet.standard()
    version = fleet.publish()
    assert refs(fleet.origin)[f"refs/tags/release/{version}"] == git(
        Path(fleet.repo.git_dir), "rev-parse", f"refs/tags/release/{version}"
    )
