"""Releases that list only what changed since an earlier release: what a node resolves, and the
attacks on the chain. Each refusal asserts the error and that the node's state is unchanged."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import MixAndMatchError, ReleaseChainError, TamperedError, TrustError
from reconciler.release import (
    MAX_CHAIN,
    RESTART_CHAIN,
    envelope_payload,
    file_digest,
    resolve_files,
    sign_release,
    tag_message,
    unverified_payload,
)
from reconciler.release_tags import payload_loader, release_tags
from tests.trust_testing import FleetRepository, Node, git_commit

EF = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "edgefleet"


@pytest.fixture
def fleet(tmp_path: Path) -> FleetRepository:
    repo = FleetRepository(tmp_path / "repo")
    repo.CHAINED = True
    return repo


@pytest.fixture
def node(tmp_path: Path, fleet: FleetRepository) -> Node:
    return Node(tmp_path / "node-state.json", fleet.pinned_root())


def refused(node: Node, fleet: FleetRepository, error: type[TrustError], match: str) -> None:
    before = node.snapshot()
    with pytest.raises(error, match=match):
        node.update(fleet.repo)
    assert node.snapshot() == before, "a refused release must leave the node's state unchanged"


def commit_digests(fleet: FleetRepository) -> dict[str, str]:
    out = fleet.repo.git.ls_tree("-r", "--name-only", "HEAD").splitlines()
    return {p: file_digest((fleet.path / p).read_bytes()) for p in out}


def signed(fleet: FleetRepository, version: int) -> dict[str, Any]:
    tag = next(t for t in release_tags(fleet.repo) if t.version == version)
    body = envelope_payload(tag.message, tag.name)
    assert body is not None
    payload: dict[str, Any] = json.loads(body)
    return payload


def test_a_chained_release_lists_only_changes_and_resolves_to_every_file(
    fleet: FleetRepository, node: Node
) -> None:
    fleet.release()
    first = signed(fleet, 1)
    assert "base" not in first and len(first["files"]) > 5
    fleet.change("artifacts.yaml", (fleet.path / "artifacts.yaml").read_text() + "\n# two\n")
    group = next((fleet.path / "groups").glob("*.yaml"))
    group.unlink()
    git_commit(fleet.repo, "drop a group")
    fleet.release()
    second = signed(fleet, 2)
    assert set(second["files"]) == {"artifacts.yaml"}
    assert second["removed"] == [f"groups/{group.name}"]
    release = node.update(fleet.repo)
    assert release.version == 2
    resolved, depth = resolve_files(second, "release/2", payload_loader(release_tags(fleet.repo)))
    assert depth == 1 and resolved == commit_digests(fleet)


def test_a_file_removed_then_added_back_takes_its_new_digest(
    fleet: FleetRepository, node: Node
) -> None:
    fleet.release()
    fleet.change("golden.txt", "one\n")
    fleet.release()
    (fleet.path / "golden.txt").unlink()
    git_commit(fleet.repo, "remove")
    fleet.release()
    fleet.change("golden.txt", "two\n")
    fleet.release()
    payload = signed(fleet, 4)
    resolved, depth = resolve_files(payload, "release/4", payload_loader(release_tags(fleet.repo)))
    assert depth == 3 and resolved["golden.txt"] == file_digest(b"two\n")
    assert resolved == commit_digests(fleet)
    assert node.update(fleet.repo).version == 4


def test_the_release_command_lists_every_file_again_before_the_chain_grows_long(
    fleet: FleetRepository,
) -> None:
    for i in range(RESTART_CHAIN + 1):
        fleet.change("counter.txt", f"{i}\n")
        fleet.release()
    depths = [
        resolve_files(signed(fleet, v), f"release/{v}", payload_loader(release_tags(fleet.repo)))[1]
        for v in range(1, RESTART_CHAIN + 2)
    ]
    assert depths[0] == 0 and max(depths) == RESTART_CHAIN - 1 < MAX_CHAIN
    assert depths[RESTART_CHAIN] == 0 or depths[RESTART_CHAIN - 1] == 0


def test_an_altered_base_tag(fleet: FleetRepository, node: Node) -> None:
    first = fleet.release()
    fleet.change("artifacts.yaml", (fleet.path / "artifacts.yaml").read_text() + "\n# two\n")
    fleet.release()
    # Release 1 re-tagged with another payload, validly signed: its bytes are not those that
    # release 2 names, so nothing it lists is believed.
    payload = unverified_payload(first)
    payload["files"]["fleet.yaml"] = "0" * 64
    fleet.repo.git.tag("-d", "release/1")
    fleet.tag(sign_release(payload, fleet.keys.release[:2]))
    refused(node, fleet, ReleaseChainError, r"tag release/1: its payload has SHA-256 .*altered")


def test_a_missing_base_tag(fleet: FleetRepository, node: Node) -> None:
    fleet.release()
    fleet.change("artifacts.yaml", (fleet.path / "artifacts.yaml").read_text() + "\n# two\n")
    fleet.release()
    fleet.repo.git.tag("-d", "release/1")
    refused(node, fleet, ReleaseChainError, "release/1 is missing here")


def test_a_chain_longer_than_a_node_follows(fleet: FleetRepository) -> None:
    fleet.release()
    body = envelope_payload(release_tags(fleet.repo)[0].message, "release/1")
    assert body is not None
    loader_payloads = {1: body}
    payload: dict[str, Any] = json.loads(body)
    for version in range(2, MAX_CHAIN + 3):
        previous = loader_payloads[version - 1]
        payload = {
            **payload,
            "version": version,
            "files": {},
            "base": {"version": version - 1, "sha256": hashlib.sha256(previous).hexdigest()},
            "removed": [],
        }
        loader_payloads[version] = json.dumps(payload).encode()
    with pytest.raises(ReleaseChainError, match=f"more than {MAX_CHAIN} releases"):
        resolve_files(payload, f"release/{MAX_CHAIN + 2}", loader_payloads.get)


def test_a_base_of_another_fleet(tmp_path: Path, fleet: FleetRepository, node: Node) -> None:
    fleet.release()
    fleet.change("artifacts.yaml", (fleet.path / "artifacts.yaml").read_text() + "\n# two\n")
    # Release 2 names, by digest, a release 1 of another fleet: mix and match.
    other = FleetRepository(tmp_path / "other")
    other.release(fleet="other-fleet")
    foreign = release_tags(other.repo)[0]
    body = envelope_payload(foreign.message, foreign.name)
    assert body is not None
    payload = fleet.payload()
    payload["base"]["sha256"] = hashlib.sha256(body).hexdigest()
    fleet.repo.git.tag("-d", "release/1")
    fleet.repo.git.fetch(str(other.path), "tag", "release/1")
    fleet.tag(sign_release(payload, fleet.keys.release[:2]))
    refused(node, fleet, MixAndMatchError, "expected release 1 of 'test-fleet'")


def test_a_chained_release_cannot_hide_an_extra_file(fleet: FleetRepository, node: Node) -> None:
    fleet.release()
    payload = fleet.payload()
    (fleet.path / "groups" / "evil.yaml").write_text("apiVersion: edgefleet/v1\n")
    payload["commit"] = git_commit(fleet.repo, "add a group after computing the digests")
    fleet.tag(sign_release(payload, fleet.keys.release[:2]))
    refused(node, fleet, TamperedError, "groups/evil.yaml: in the commit but not in release 2")


def test_edgefleet_verify_resolves_a_chain_and_the_tag_message_says_so(
    fleet: FleetRepository, tmp_path: Path
) -> None:
    fleet.release()
    fleet.change("artifacts.yaml", (fleet.path / "artifacts.yaml").read_text() + "\n# two\n")
    envelope = fleet.release()
    assert "Files: 1 changed, 0 removed since release 1" in tag_message(envelope)
    pinned = tmp_path / "root.json"
    pinned.write_bytes(fleet.pinned_root())
    done = subprocess.run(
        [str(EF), "verify", "--repo", str(fleet.path), "--trust", str(pinned)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["version"] == 2 and out["listsChangesSince"] == 1
    assert out["files"] == len(commit_digests(fleet))
