"""The node's signed status branch, `status/<node>`, as the origin sees it, and `edgefleet status`.

Every test runs the real `edgefleet-agent` against a bare origin on disk (or over `git daemon`,
which takes no pushes) and asserts what `git log`, `git show` and `git verify-commit` say at the
origin: one signed commit per change of status, queued while the origin is away and delivered
in order afterwards, heartbeats rate-limited, a re-provisioned node (or one restored from a
backup) continuing the origin's history, never rewriting it. The fleet-side `edgefleet status`
is checked against forged, unsigned and stale branch heads made with git plumbing.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.timestamps import format_timestamp, now
from tests.agent_testing import LiveFleet, NodeAgent, git_daemon
from tests.status_testing import git, publish_unhealthy, put_status
from tests.trust_testing import git_commit

EDGEFLEET = Path(sys.executable).parent / "edgefleet"
BRANCH = "refs/heads/status/edge-1"


@dataclass(frozen=True)
class Entry:
    sha: str
    parents: tuple[str, ...]
    subject: str


def history(git_dir: Path, ref: str = BRANCH) -> list[Entry]:
    """The branch's commits, oldest first."""
    out = git(git_dir, "log", "--reverse", "--format=%H%x00%P%x00%s", ref)
    entries = []
    for line in out.splitlines():
        sha, parents, subject = line.split("\x00")
        entries.append(Entry(sha, tuple(parents.split()), subject))
    return entries


def status_at(git_dir: Path, commit: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(git(git_dir, "show", f"{commit}:status.json"))
    return doc


def assert_chained(entries: list[Entry], git_dir: Path) -> None:
    """Each commit's only parent is the one before it; sequence numbers go up by one."""
    for before, after in itertools.pairwise(entries):
        assert after.parents == (before.sha,), (before, after)
    sequences = [status_at(git_dir, e.sha)["sequence"] for e in entries]
    assert sequences == list(range(sequences[0], sequences[0] + len(entries)))


def assert_only_fast_forwards(origin: Path, ref: str = BRANCH) -> None:
    """Every value the origin's ref ever had descends from the one before (its reflog)."""
    values = git(origin, "reflog", "show", "--format=%H", ref).split()[::-1]
    assert len(values) >= 2
    for old, new in itertools.pairwise(values):
        done = subprocess.run(
            ["git", "--git-dir", str(origin), "merge-base", "--is-ancestor", old, new],
            capture_output=True,
            check=False,
        )
        assert done.returncode == 0, f"{ref} moved {old} -> {new}, not a fast-forward"


@pytest.fixture
def fleet(tmp_path: Path) -> LiveFleet:
    fleet = LiveFleet(tmp_path)
    # A bare repository keeps no reflog unless asked: the tests read every value a ref had.
    git(fleet.origin, "config", "core.logAllRefUpdates", "always")
    return fleet


@pytest.fixture
def installed(fleet: LiveFleet) -> NodeAgent:
    """edge-1 converged on release 1, its status pushed."""
    fleet.standard()
    fleet.publish()
    node = NodeAgent(fleet, "edge-1")
    code, info = node.once()
    assert code == 0, info["_stderr"]
    return node


def publish_under_signed(fleet: LiveFleet) -> int:
    """A release signed by one release key, one short of the threshold: nodes refuse it."""
    fleet.config_file("1.2.0", "threshold = 12\n")
    fleet.use("settings", "settings@1.2.0")
    fleet.write()
    git_commit(fleet.repo, "signed by too few")
    version: int = fleet.next_version()
    fleet.release(signers=fleet.keys.release[:1])
    fleet.push()
    return version


# --- 1. convergence -------------------------------------------------------------------------


def test_convergence_is_two_signed_commits_at_the_origin(
    fleet: LiveFleet, installed: NodeAgent
) -> None:
    assert git(fleet.origin, "for-each-ref", "--format=%(refname)", "refs/heads/status/") == BRANCH
    entries = history(fleet.origin)
    # The applying subject's wording after the release number is not the contract.
    assert entries[0].subject.startswith("edge-1: applying release 1 ")
    assert entries[1].subject == "edge-1: converged on release 1"
    assert len(entries) == 2 and entries[0].parents == ()
    assert_chained(entries, fleet.origin)
    applying = status_at(fleet.origin, entries[0].sha)
    head = status_at(fleet.origin, entries[1].sha)
    assert applying["state"] == "applying" and applying["sequence"] == 1
    assert applying["target"]["release"] == 1 and applying["release"] is None
    assert head["state"] == "converged" and head["release"] == 1
    assert head["sequence"] == applying["sequence"] + 1 == 2
    assert head["event"] == "change" and head["node"] == "edge-1"
    assert head["fleet"] == "test-fleet" and head["lastError"] is None
    assert head["commit"] == fleet.repo.head.commit.hexsha
    assert set(head["components"]) == {"model", "app", "settings"}
    # The node's own clone has the same head: nothing is left queued.
    assert git(installed.state / "repo", "rev-parse", BRANCH) == entries[1].sha
    signers = fleet.path / "trust" / "allowed_signers"
    done = subprocess.run(
        [
            "git",
            "--git-dir",
            str(fleet.origin),
            "-c",
            f"gpg.ssh.allowedSignersFile={signers}",
            "verify-commit",
            entries[1].sha,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert 'Good "git" signature for edge-1@test-fleet' in done.stderr


# --- 2. rollback and rejection ----------------------------------------------------------------


def test_a_rollback_is_a_new_commit_naming_the_failed_release(
    fleet: LiveFleet, installed: NodeAgent
) -> None:
    before = history(fleet.origin)
    version = publish_unhealthy(fleet)
    code, info = installed.once()
    assert code == 1, info["_stderr"]
    entries = history(fleet.origin)
    assert entries[: len(before)] == before
    new = [e.subject for e in entries[len(before) :]]
    assert len(new) == 2
    assert new[0].startswith(f"edge-1: applying release {version} ")
    assert new[1].startswith(f"edge-1: rolled back release {version}")
    assert_chained(entries, fleet.origin)
    head = status_at(fleet.origin, entries[-1].sha)
    assert head["state"] == "rolled-back" and head["release"] == 1
    assert head["lastError"]["release"] == version
    assert "exit 4" in head["lastError"]["reason"]
    assert head["failedReleases"][str(version)]["outcome"] == "rolled-back"
    assert head["components"]["app"]["artifact"] == "app@1.0.0"
    message = git(fleet.origin, "log", "-1", "--format=%B", entries[-1].sha)
    assert "Edgefleet-State: rolled-back" in message and "exit 4" in message


def test_a_rejected_release_is_a_new_commit(fleet: LiveFleet, installed: NodeAgent) -> None:
    before = history(fleet.origin)
    version = publish_under_signed(fleet)
    code, info = installed.once()
    assert code == 3, info["_stderr"]
    entries = history(fleet.origin)
    assert entries[:-1] == before
    assert entries[-1].subject.startswith(f"edge-1: rejected release {version}")
    assert_chained(entries, fleet.origin)
    head = status_at(fleet.origin, entries[-1].sha)
    assert head["state"] == "rejected" and head["release"] == 1
    assert head["lastError"]["release"] == version
    assert head["lastError"]["rule"] == "threshold"


# --- 3. queued while the origin is away ----------------------------------------------------


@pytest.fixture
def daemon_url(fleet: LiveFleet) -> Iterator[str]:
    with git_daemon(fleet.origin.parent) as port:
        yield f"git://127.0.0.1:{port}/{fleet.origin.name}"


def test_status_queued_while_pushes_fail_is_delivered_in_order(
    fleet: LiveFleet, installed: NodeAgent, daemon_url: str
) -> None:
    pushed = history(fleet.origin)
    local_git = installed.state / "repo"
    # git daemon serves fetches but takes no pushes: the node updates and cannot report.
    installed.write_config(daemon_url)
    fleet.config_file("1.1.0", "threshold = 11\n")
    fleet.use("settings", "settings@1.1.0")
    version = fleet.publish()
    code, info = installed.once()
    assert code == 0 and info["release"] == version, info["_stderr"]
    assert "status.push_failed" in info["_stderr"] or "status.push_refused" in info["_stderr"]
    # Then the origin is gone altogether: the fetch fails too, and the node is offline.
    aside = fleet.origin.with_name("aside.git")
    fleet.origin.rename(aside)
    try:
        code, info = installed.once()
        assert code == 75 and info["state"] == "offline", info["_stderr"]
    finally:
        aside.rename(fleet.origin)
    queued = history(local_git)
    assert history(fleet.origin) == pushed
    assert queued[: len(pushed)] == pushed
    assert [status_at(local_git, e.sha)["state"] for e in queued[len(pushed) :]] == [
        "applying",
        "converged",
        "offline",
    ]
    assert_chained(queued, local_git)

    installed.write_config(str(fleet.origin))
    code, info = installed.once()
    assert code == 0 and info["state"] == "converged", info["_stderr"]
    delivered = history(fleet.origin)
    local = history(local_git)
    assert delivered == local
    # Nothing was rewritten: the commits made while away reached the origin as they were.
    assert delivered[: len(queued)] == queued
    assert len(delivered) == len(queued) + 1
    assert status_at(fleet.origin, delivered[-1].sha)["state"] == "converged"
    assert [status_at(fleet.origin, e.sha)["sequence"] for e in delivered] == list(
        range(1, len(delivered) + 1)
    )
    assert_chained(delivered, fleet.origin)
    assert_only_fast_forwards(fleet.origin)


# --- 4. heartbeats ---------------------------------------------------------------------------


def test_heartbeats_are_rate_limited(fleet: LiveFleet, installed: NodeAgent) -> None:
    before = history(fleet.origin)
    for _ in range(2):
        code, _info = installed.once()
        assert code == 0
    assert history(fleet.origin) == before

    installed.write_config(str(fleet.origin), heartbeatInterval="1s")
    code, _info = installed.once()
    assert code == 0
    # The document carries heartbeatInterval, so a new interval is itself a change.
    changed = history(fleet.origin)
    assert len(changed) == len(before) + 1
    head = status_at(fleet.origin, changed[-1].sha)
    assert head["event"] == "change" and head["heartbeatInterval"] == 1

    time.sleep(1.2)
    code, _info = installed.once()
    assert code == 0
    entries = history(fleet.origin)
    assert entries[:-1] == changed
    beat = status_at(fleet.origin, entries[-1].sha)
    assert beat["event"] == "heartbeat"
    assert beat["state"] == head["state"] == "converged" and beat["release"] == 1
    assert beat["sequence"] == head["sequence"] + 1
    assert beat["observedAt"] > head["observedAt"]
    assert entries[-1].subject == "edge-1: heartbeat, converged on release 1"
    assert_chained(entries, fleet.origin)


# --- 5. re-provisioned -----------------------------------------------------------------------


def test_a_reprovisioned_node_continues_the_origins_branch(
    fleet: LiveFleet, installed: NodeAgent
) -> None:
    old = history(fleet.origin)
    shutil.rmtree(installed.state)
    code, info = installed.once()
    assert code == 0 and info["release"] == 1, info["_stderr"]
    assert '"status.adopted"' in info["_stderr"]
    entries = history(fleet.origin)
    assert entries[: len(old)] == old
    new = [e.subject for e in entries[len(old) :]]
    assert len(new) == 2 and new[0].startswith("edge-1: applying release 1 ")
    assert new[1] == "edge-1: converged on release 1"
    assert_chained(entries, fleet.origin)
    assert_only_fast_forwards(fleet.origin)


def test_a_reprovisioned_node_that_starts_offline_continues_the_branch_once_back(
    fleet: LiveFleet, installed: NodeAgent
) -> None:
    old = history(fleet.origin)
    shutil.rmtree(installed.state)
    aside = fleet.origin.with_name("aside.git")
    fleet.origin.rename(aside)
    try:
        code, info = installed.once()
        assert code == 75 and info["state"] == "offline", info["_stderr"]
    finally:
        aside.rename(fleet.origin)
    # The offline commit starts a second history locally; it was never published.
    orphan = history(installed.state / "repo")
    assert len(orphan) == 1 and orphan[0].parents == ()
    code, info = installed.once()
    assert code == 0 and info["state"] == "converged", info["_stderr"]
    assert '"status.rebuilt"' in info["_stderr"]
    entries = history(fleet.origin)
    assert entries[: len(old)] == old
    assert [status_at(fleet.origin, e.sha)["state"] for e in entries[len(old) :]] == [
        "offline",
        "applying",
        "converged",
    ]
    assert_chained(entries, fleet.origin)
    assert_only_fast_forwards(fleet.origin)
    assert history(installed.state / "repo")[-1] == entries[-1]


def test_a_node_restored_from_a_backup_remakes_its_queue_on_the_origins_head(
    fleet: LiveFleet, installed: NodeAgent
) -> None:
    backup = installed.dir / "backup"
    shutil.copytree(installed.state, backup, symlinks=True)
    fleet.config_file("1.1.0", "threshold = 11\n")
    fleet.use("settings", "settings@1.1.0")
    version = fleet.publish()
    code, info = installed.once()
    assert code == 0 and info["release"] == version, info["_stderr"]
    published = history(fleet.origin)
    shutil.rmtree(installed.state)
    backup.rename(installed.state)
    # Status commits are deterministic (ed25519, times in whole seconds): within the same
    # second the restored node would re-make byte-identical commits that the origin already
    # has, and there would be nothing to remake. A later second makes them differ.
    time.sleep(1.1)
    # The restored node applies the release again, on top of a head the origin moved past.
    code, info = installed.once()
    assert code == 0 and info["release"] == version, info["_stderr"]
    assert '"status.rebuilt"' in info["_stderr"]
    entries = history(fleet.origin)
    assert entries[: len(published)] == published
    added = [status_at(fleet.origin, e.sha) for e in entries[len(published) :]]
    # Only what the restored node did since is new: what the origin already had is not re-made.
    assert [(d["state"], d["release"]) for d in added] == [("applying", 1), ("converged", 2)], info[
        "_stderr"
    ]
    observed = [status_at(fleet.origin, e.sha)["observedAt"] for e in entries]
    assert observed == sorted(observed)
    assert_chained(entries, fleet.origin)
    assert_only_fast_forwards(fleet.origin)
    assert history(installed.state / "repo")[-1] == entries[-1]


# --- 6. edgefleet status ---------------------------------------------------------------------


def fleet_status(fleet: LiveFleet, fmt: str, *extra: str, repo: Path | None = None) -> str:
    done = subprocess.run(
        [str(EDGEFLEET), "status", "--repo", str(repo or fleet.path), "--format", fmt, *extra],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["node"]: n for n in report["nodes"]}


def table_row(table: str, node: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(f"{node} "))


def as_edge_2(fleet: LiveFleet) -> dict[str, Any]:
    """edge-1's genuine converged status, rewritten to speak for edge-2."""
    genuine = status_at(fleet.origin, BRANCH)
    doc = {**genuine, "node": "edge-2", "sequence": 1, "observedAt": format_timestamp(now())}
    assert doc["state"] == "converged"
    return doc


def test_status_shows_forged_and_unsigned_heads_as_unverified(
    fleet: LiveFleet, installed: NodeAgent
) -> None:
    report = json.loads(fleet_status(fleet, "json"))
    nodes = rows(report)
    assert nodes["edge-1"]["shown"] == "converged" and nodes["edge-1"]["healthy"] is True
    assert nodes["edge-1"]["release"] == 1 and nodes["edge-1"]["signer"] == "edge-1"
    assert nodes["edge-1"]["head"] == history(fleet.origin)[-1].sha
    assert nodes["edge-2"]["shown"] == "unreported" and nodes["edge-2"]["healthy"] is False
    assert report["summary"]["healthy"] == 1 and report["summary"]["nodes"] == 2

    forged = put_status(fleet, "edge-2", as_edge_2(fleet), fleet.node_keys["edge-1"])
    # --no-fetch reads what the clone already has: not yet the forged branch.
    unfetched = rows(json.loads(fleet_status(fleet, "json", "--no-fetch")))
    assert unfetched["edge-2"]["shown"] == "unreported"
    # The bare origin itself, read in place, sees it at once.
    in_place = rows(json.loads(fleet_status(fleet, "json", repo=fleet.origin)))
    assert in_place["edge-2"]["shown"] == "unverified" and in_place["edge-2"]["head"] == forged
    assert in_place["edge-1"]["shown"] == "converged"
    report = json.loads(fleet_status(fleet, "json"))
    edge_2 = rows(report)["edge-2"]
    assert edge_2["shown"] == "unverified" and edge_2["healthy"] is False
    assert edge_2["head"] == forged and edge_2["reported"] == "converged"
    assert "expected one by edge-2" in edge_2["problem"]
    assert report["summary"]["healthy"] == 1
    assert report["summary"]["byState"] == {"converged": 1, "unverified": 1}
    table = fleet_status(fleet, "table")
    assert "unverified" in table_row(table, "edge-2")
    assert "converged" in table_row(table, "edge-1")
    assert "unverified" not in table_row(table, "edge-1")

    unsigned = put_status(fleet, "edge-2", as_edge_2(fleet), None)
    report = json.loads(fleet_status(fleet, "json"))
    edge_2 = rows(report)["edge-2"]
    assert edge_2["shown"] == "unverified" and edge_2["healthy"] is False
    assert edge_2["head"] == unsigned and "unsigned" in edge_2["problem"]
    assert report["summary"]["healthy"] == 1


def test_status_shows_a_silent_node_as_stale(fleet: LiveFleet, installed: NodeAgent) -> None:
    three_hours_ago = format_timestamp(now() - timedelta(hours=3))
    old = {
        **as_edge_2(fleet),
        "observedAt": three_hours_ago,
        "pollInterval": 60,
        "heartbeatInterval": 3600,
    }
    stale = put_status(fleet, "edge-2", old, fleet.node_keys["edge-2"])
    report = json.loads(fleet_status(fleet, "json"))
    edge_2 = rows(report)["edge-2"]
    assert edge_2["shown"] == "stale" and edge_2["healthy"] is False
    assert edge_2["head"] == stale and edge_2["reported"] == "converged"
    assert edge_2["signer"] == "edge-2" and edge_2["observedAt"] == three_hours_ago
    assert edge_2["ageSeconds"] >= 3 * 3600
    assert report["summary"]["healthy"] == 1
    assert report["summary"]["byState"] == {"converged": 1, "stale": 1}
    table = fleet_status(fleet, "table")
    assert "stale" in table_row(table, "edge-2") and "3.0h ago" in table_row(table, "edge-2")
    assert "stale" not in table_row(table, "edge-1")


def test_status_without_fetch_reads_a_cloned_servers_own_branches(
    fleet: LiveFleet, installed: NodeAgent, tmp_path: Path
) -> None:
    """A server repository that was itself cloned keeps an `origin` remote; with --no-fetch
    its own status branches are what there is to read, not empty remote-tracking refs."""
    mirror = tmp_path / "mirror.git"
    subprocess.run(
        ["git", "clone", "-q", "--mirror", str(fleet.origin), str(mirror)],
        check=True,
        capture_output=True,
    )
    report = json.loads(fleet_status(fleet, "json", "--no-fetch", repo=mirror))
    assert rows(report)["edge-1"]["shown"] == "converged"


def verdict_file(cache: Path) -> Path:
    files = sorted((cache / "edgefleet" / "verdicts").glob("*.txt"))
    assert len(files) == 1, files
    return files[0]


def cached(path: Path) -> tuple[dict[str, Any], list[list[str]], list[list[str]]]:
    """The cache file's header, its rows and its verdicts (node, head, key, value)."""
    data = path.read_bytes()
    first, _, rest = data.partition(b"\n")
    header = json.loads(first)
    size = header["rowsBytes"]
    sections = rest[:size].decode(), rest[size:].decode()
    rows, verdicts = ([line.split("\t", 3) for line in s.splitlines()] for s in sections)
    return header, rows, verdicts


def write_cache(
    path: Path, header: dict[str, Any], rows: list[list[str]], verdicts: list[list[str]]
) -> None:
    body = "".join("\t".join(r) + "\n" for r in rows).encode()
    tail = "".join("\t".join(v) + "\n" for v in verdicts).encode()
    path.write_bytes(json.dumps({**header, "rowsBytes": len(body)}).encode() + b"\n" + body + tail)


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """The report without what moves with the clock between two runs."""
    nodes = [{k: v for k, v in n.items() if k != "ageSeconds"} for n in report["nodes"]]
    return {**{k: v for k, v in report.items() if k != "generatedAt"}, "nodes": nodes}


def test_cached_verdicts_never_vouch_for_a_head_they_were_not_made_for(
    fleet: LiveFleet, installed: NodeAgent, own_cache: Path
) -> None:
    cold = json.loads(fleet_status(fleet, "json", repo=fleet.origin))
    _, kept_rows, kept_verdicts = cached(verdict_file(own_cache))
    edge_1 = rows(cold)["edge-1"]
    assert [r[:2] for r in kept_rows] == [["edge-1", edge_1["head"]]]
    assert [v[:2] for v in kept_verdicts] == [["edge-1", edge_1["head"]]]
    warm = json.loads(fleet_status(fleet, "json", repo=fleet.origin))
    assert comparable(warm) == comparable(cold)

    genuine = put_status(fleet, "edge-2", as_edge_2(fleet), fleet.node_keys["edge-2"])
    assert (
        rows(json.loads(fleet_status(fleet, "json", repo=fleet.origin)))["edge-2"]["shown"]
        == "converged"
    )
    # A head the cache vouched for is replaced by a forgery: a new head, checked afresh.
    forged = put_status(fleet, "edge-2", as_edge_2(fleet), fleet.node_keys["edge-1"])
    edge_2 = rows(json.loads(fleet_status(fleet, "json", repo=fleet.origin)))["edge-2"]
    assert edge_2["shown"] == "unverified" and edge_2["head"] == forged
    assert "expected one by edge-2" in edge_2["problem"]
    # The cache holds the heads of the last run only: the genuine head's verdict is gone.
    _, kept_rows, kept_verdicts = cached(verdict_file(own_cache))
    assert {r[1] for r in kept_rows} == {v[1] for v in kept_verdicts} == {edge_1["head"], forged}
    git(fleet.origin, "update-ref", "refs/heads/status/edge-2", genuine)
    assert (
        rows(json.loads(fleet_status(fleet, "json", repo=fleet.origin)))["edge-2"]["shown"]
        == "converged"
    )


def test_a_verdict_is_made_again_for_another_key(
    fleet: LiveFleet, installed: NodeAgent, own_cache: Path
) -> None:
    """A key changed in trust/allowed_signers is a new cache key: a head signed by the old key
    is not taken on the old verdict."""
    from reconciler.status_source import local_status_repo, status_heads
    from reconciler.status_verdicts import head_verdicts

    repo = local_status_repo(fleet.origin)
    heads = status_heads(repo)
    own = {"edge-1": fleet.node_keys["edge-1"].public.openssh()}
    assert head_verdicts(repo, heads, own)["edge-1"].problem is None
    other = {"edge-1": fleet.node_keys["edge-2"].public.openssh()}
    verdict = head_verdicts(repo, heads, other)["edge-1"]
    assert verdict.problem is not None and "expected one by edge-1" in verdict.problem
    assert head_verdicts(repo, heads, own)["edge-1"].problem is None


def test_status_recheck_ignores_the_cache_and_a_broken_cache_is_rebuilt(
    fleet: LiveFleet, installed: NodeAgent, own_cache: Path
) -> None:
    forged = put_status(fleet, "edge-2", as_edge_2(fleet), None)
    first = json.loads(fleet_status(fleet, "json", repo=fleet.origin))
    assert rows(first)["edge-2"]["shown"] == "unverified"
    path = verdict_file(own_cache)
    header, kept_rows, kept_verdicts = cached(path)
    # Someone with write access to the operator's cache (as to the clone beside it) can make
    # this operator's `status` lie; --recheck trusts nothing it did not check itself. Here the
    # forged head's verdict is made good and its row dropped, so that it is judged again.
    for row in kept_rows:
        if row[1] == forged:
            row[3] = ""
    for entry in kept_verdicts:
        if entry[1] == forged:
            verdict = json.loads(entry[3])
            verdict["problem"], verdict["signer"] = None, "edge-2"
            entry[3] = json.dumps(verdict)
    write_cache(path, header, kept_rows, kept_verdicts)
    fooled = rows(json.loads(fleet_status(fleet, "json", repo=fleet.origin)))["edge-2"]
    assert fooled["shown"] == "converged"
    rechecked = rows(json.loads(fleet_status(fleet, "json", "--recheck", repo=fleet.origin)))
    assert (
        rechecked["edge-2"]["shown"] == "unverified"
        and "unsigned" in rechecked["edge-2"]["problem"]
    )
    # --recheck also rewrote the cache with what it found.
    again = rows(json.loads(fleet_status(fleet, "json", repo=fleet.origin)))
    assert again["edge-2"]["shown"] == "unverified"

    path.write_bytes(b"\x00 not json")
    broken = json.loads(fleet_status(fleet, "json", repo=fleet.origin))
    assert comparable(broken) == comparable(first)
    assert len(cached(path)[2]) == 2


def test_status_never_counts_a_claim_of_a_release_that_does_not_exist_as_healthy(
    fleet: LiveFleet, installed: NodeAgent
) -> None:
    doc = {**as_edge_2(fleet), "release": 9}
    put_status(fleet, "edge-2", doc, fleet.node_keys["edge-2"])
    report = json.loads(fleet_status(fleet, "json"))
    edge_2 = rows(report)["edge-2"]
    assert edge_2["shown"] == "unverified" and not edge_2["healthy"]
    assert "release: got 9, a release that does not exist" in edge_2["problem"]
    assert report["summary"]["healthy"] == 1


def test_a_kept_row_turns_stale_with_the_clock_and_follows_a_new_release(
    fleet: LiveFleet, installed: NodeAgent, own_cache: Path
) -> None:
    """Rows are kept between runs as text; one is used again only while its node is not stale
    and the main branch's releases are those it was made with."""
    doc = {**as_edge_2(fleet), "release": 9, "pollInterval": 1, "heartbeatInterval": 1}
    put_status(fleet, "edge-2", doc, fleet.node_keys["edge-2"])
    first = rows(json.loads(fleet_status(fleet, "json", repo=fleet.origin)))
    assert first["edge-2"]["shown"] == "unverified"
    assert "a release that does not exist" in first["edge-2"]["problem"]
    assert first["edge-1"]["shown"] == "converged"
    _, kept_rows, _ = cached(verdict_file(own_cache))
    assert all(row[3] for row in kept_rows)

    # Release 9 now exists: every kept row was made for other releases, so each is judged again.
    git(fleet.origin, "tag", "-a", "-m", "release 9", "release/9", "main")
    second = json.loads(fleet_status(fleet, "json", repo=fleet.origin))
    assert second["expectedRelease"] == 9
    edge_2 = rows(second)["edge-2"]
    assert edge_2["shown"] == "converged" and edge_2["problem"] is None
    assert edge_2["expected"] == rows(second)["edge-1"]["expected"] == 9

    # edge-2 said it reports every second: silent for more than four, it is stale, kept row
    # or not, while edge-1 (hourly heartbeats) is not.
    time.sleep(5)
    third = json.loads(fleet_status(fleet, "json", repo=fleet.origin))
    edge_2 = rows(third)["edge-2"]
    assert edge_2["shown"] == "stale" and not edge_2["healthy"]
    assert "expected one within 4s" in edge_2["problem"]
    assert rows(third)["edge-1"]["shown"] == "converged"
    assert third["summary"]["byState"] == {"converged": 1, "stale": 1}
    fresh = json.loads(fleet_status(fleet, "json", "--recheck", repo=fleet.origin))
    assert comparable_at(fresh, third) == comparable(third)


def comparable_at(report: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """`report` as `comparable` makes it, with the stale problems of `other` (they name the
    age, which moved between the two runs)."""
    problems = {n["node"]: n["problem"] for n in other["nodes"] if n["shown"] == "stale"}
    nodes = [
        {**n, "problem": problems.get(n["node"], n["problem"])} for n in comparable(report)["nodes"]
    ]
    return {**comparable(report), "nodes": nodes}
