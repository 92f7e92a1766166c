"""What a node downloads from a big fleet: a partial clone over a real `git daemon`, holding the
blobs of the files it renders from and of no other node's file; and a full fetch, said in the
log, from a server that does not allow filters."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_testing import LiveFleet, NodeAgent, git_daemon

NODES = 2000
ME = "edge-0042"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout


def present_blobs(repo: Path) -> set[str]:
    """Blob ids stored in the repository; lists, never fetches a missing object."""
    out = git(repo, "cat-file", "--batch-all-objects", "--batch-check=%(objectname) %(objecttype)")
    return {line.split()[0] for line in out.splitlines() if line.endswith(" blob")}


def blob_ids(repo: Path, rev: str) -> dict[str, str]:
    """path -> blob id of every file of `rev`, from its trees."""
    found = {}
    for line in git(repo, "ls-tree", "-r", "-z", rev).split("\0"):
        if line:
            meta, path = line.split("\t", 1)
            found[path] = meta.split()[2]
    return found


@pytest.fixture(scope="module")
def big_fleet(tmp_path_factory: pytest.TempPathFactory) -> LiveFleet:
    base = tmp_path_factory.mktemp("big")
    fleet = LiveFleet(base, nodes=tuple(f"edge-{i:04d}" for i in range(NODES)))
    fleet.standard()
    fleet.publish()
    return fleet


@pytest.fixture(scope="module")
def daemon(big_fleet: LiveFleet) -> Iterator[str]:
    with git_daemon(big_fleet.origin.parent) as port:
        yield f"git://127.0.0.1:{port}/{big_fleet.origin.name}"


def test_a_node_of_2000_fetches_only_its_own_node_file(big_fleet: LiveFleet, daemon: str) -> None:
    node = NodeAgent(big_fleet, ME, repo_url=daemon)
    code, info = node.once()
    assert code == 0, info["_stderr"]
    assert info["state"] == "converged"
    assert "fetch.full" not in info["_stderr"]
    repo = node.state / "repo"
    tree = blob_ids(repo, f"release/{info['release']}")
    assert sum(p.startswith("nodes/") for p in tree) == NODES, "every node file is in the tree"
    have = present_blobs(repo)
    others = {sha for path, sha in tree.items() if path.startswith("nodes/") and ME not in path}
    shared = {sha for path, sha in tree.items() if not path.startswith("nodes/")}
    assert tree[f"nodes/{ME}.yaml"] in have
    assert not have & others, f"{len(have & others)} other nodes' files were fetched"
    assert shared <= have, "every file the node renders from, and only those, is here"
    # Status commits add their own status.json blobs; nothing else is stored.
    assert len(have - shared - {tree[f"nodes/{ME}.yaml"]}) <= 2


def test_the_next_release_fetches_only_what_changed(big_fleet: LiveFleet, daemon: str) -> None:
    node = NodeAgent(big_fleet, "edge-0007", repo_url=daemon)
    assert node.once()[0] == 0
    repo = node.state / "repo"
    before = present_blobs(repo)
    big_fleet.config_file("1.1.0", "threshold = 3\n")
    big_fleet.use("settings", "settings@1.1.0")
    version = big_fleet.publish()
    code, info = node.once()
    assert code == 0 and info["release"] == version, info["_stderr"]
    tree = blob_ids(repo, f"release/{version}")
    added = present_blobs(repo) - before
    changed = {tree["artifacts.yaml"], tree["groups/stores.yaml"]}
    assert changed <= added
    assert not added & {s for p, s in tree.items() if p.startswith("nodes/")}
    assert len(added - changed) <= 2  # the node's new status.json blobs


def test_a_server_without_filters_gets_a_full_fetch_said_in_the_log(tmp_path: Path) -> None:
    fleet = LiveFleet(tmp_path, nodes=("edge-1", "edge-2", "edge-3"))
    git(fleet.origin, "config", "uploadpack.allowFilter", "false")
    fleet.standard()
    fleet.publish()
    with git_daemon(fleet.origin.parent) as port:
        node = NodeAgent(fleet, "edge-1", repo_url=f"git://127.0.0.1:{port}/{fleet.origin.name}")
        code, info = node.once()
    assert code == 0, info["_stderr"]
    assert info["state"] == "converged"
    assert "fetch.full" in info["_stderr"]
    assert "uploadpack.allowFilter" in info["_stderr"]
    repo = node.state / "repo"
    tree = blob_ids(repo, "release/1")
    assert set(tree.values()) <= present_blobs(repo), "a full fetch brings every file"


def test_a_server_refusing_single_objects_gets_a_full_refetch(tmp_path: Path) -> None:
    """Protocol v0 without `uploadpack.allowAnySHA1InWant` filters but refuses blob ids."""
    fleet = LiveFleet(tmp_path, nodes=("edge-1", "edge-2", "edge-3"))
    fleet.standard()
    fleet.publish()
    config = tmp_path / "gitconfig"
    config.write_text("[protocol]\n\tversion = 0\n")
    env = {**os.environ, "GIT_CONFIG_GLOBAL": str(config)}
    with git_daemon(fleet.origin.parent) as port:
        node = NodeAgent(fleet, "edge-1", repo_url=f"git://127.0.0.1:{port}/{fleet.origin.name}")
        done = node.run("once", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert "fetch.full" in done.stderr and "fetching files failed" in done.stderr
    repo = node.state / "repo"
    tree = blob_ids(repo, "release/1")
    assert set(tree.values()) <= present_blobs(repo)


def test_a_poll_is_not_told_about_every_nodes_status_branch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a status branch per node, a listing of every ref grows with the fleet; the poll
    and the status fetch ask the server for their own refs only (protocol v2 prefixes)."""
    from node_agent.transport import Transport

    fleet = LiveFleet(tmp_path, nodes=("edge-1", "edge-2"))
    fleet.standard()
    fleet.publish()
    head = git(fleet.origin, "rev-parse", "refs/tags/release/1^{commit}").strip()
    updates = "".join(f"create refs/heads/status/node-{i:04d} {head}\n" for i in range(2000))
    subprocess.run(
        ["git", "-C", str(fleet.origin), "update-ref", "--stdin"],
        input=updates,
        text=True,
        check=True,
    )
    trace = tmp_path / "packets"
    monkeypatch.setenv("GIT_TRACE_PACKET", str(trace))
    with git_daemon(fleet.origin.parent) as port:
        transport = Transport(tmp_path / "repo", f"git://127.0.0.1:{port}/{fleet.origin.name}")
        assert set(transport.remote_tags()) == {"refs/tags/release/1"}
        got = transport.fetch_ref("refs/heads/status/node-0007", "refs/heads/mine")
        assert got == head
        assert transport.fetch_ref("refs/heads/status/none", "refs/heads/none") is None
    received = [ln for ln in trace.read_text().splitlines() if "refs/heads/status/" in ln]
    told = {ln.split()[-1] for ln in received if " upload-pack> " in ln or "< " in ln}
    assert not {r for r in told if r.startswith("refs/heads/status/node-")} - {
        "refs/heads/status/node-0007"
    }, "the server listed other nodes' status branches"
