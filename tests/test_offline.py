"""Offline bundles both ways: a node with no route to the origin, served by a USB stick.

The node converges on release 1 from its origin, then loses its route for good (its origin
is a closed port). Releases 2 and 3 reach it only as `edgefleet bundle create` files imported
with `edgefleet-agent import`; its status goes back with `export-status` and lands with
`edgefleet status import`. Every refusal asserts the exit code, the reason, and that the
node's journal, banks and status branch are exactly as before.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.atomic import sha256_file
from reconciler.keys import SigningKey
from reconciler.offline_bundle import Manifest, Member, NodeCargo
from reconciler.release import sign_release
from tests.agent_testing import FLEET_NAME, LiveFleet, NodeAgent, free_port
from tests.trust_testing import git_commit

EDGEFLEET = Path(sys.executable).parent / "edgefleet"


def edgefleet(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(EDGEFLEET), *args], capture_output=True, text=True, check=False, timeout=120
    )
    if check:
        assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def make_bundle(fleet: LiveFleet, out: Path, *extra: str) -> dict[str, Any]:
    done = edgefleet(
        "bundle", "create", "--repo", str(fleet.path), "--out", str(out), "--artifacts",
        str(fleet.store), *extra,
    )  # fmt: skip
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def imported(node: NodeAgent, bundle: Path) -> tuple[int, dict[str, Any], str]:
    done = node.run("import", str(bundle), "--json")
    info = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
    return done.returncode, info, done.stderr


def state_of(node: NodeAgent) -> dict[str, Any]:
    """Everything a refused bundle must leave as it was."""
    git_dir = node.state / "repo"
    refs = subprocess.run(
        ["git", "--git-dir", str(git_dir), "for-each-ref", "--format=%(refname) %(objectname)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {
        "journal": (node.state / "state.json").read_bytes(),
        "snapshot": node.snapshot(),
        "refs": refs,
        "cache": sorted(p.name for p in (node.state / "cache").glob("*")),
        "import": (node.state / "import").exists(),
    }


def rewrite(bundle: Path, out: Path, change: Callable[[str, bytes], bytes]) -> None:
    """A copy of `bundle` with each member's bytes passed through `change` (tar headers are
    made anew, so sizes follow the new bytes)."""
    with tarfile.open(bundle) as src, tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as dst:
        for info in src.getmembers():
            data = src.extractfile(info)
            assert data is not None
            body = change(info.name, data.read())
            info.size = len(body)
            dst.addfile(info, io.BytesIO(body))


@pytest.fixture
def offline(tmp_path: Path) -> tuple[LiveFleet, NodeAgent]:
    """A node on release 1 whose origin then became unreachable."""
    fleet = LiveFleet(tmp_path, nodes=("edge-1",))
    fleet.standard()
    assert fleet.publish() == 1
    node = NodeAgent(fleet, "edge-1")
    code, info = node.once()
    assert code == 0 and info["release"] == 1, info["_stderr"]
    node.write_config(f"git://127.0.0.1:{free_port()}/fleet.git")
    code, info = node.once()
    assert code == 75 and info["state"] == "offline", info["_stderr"]
    return fleet, node


def publish_v2_v3(fleet: LiveFleet) -> None:
    fleet.model("2.0.0", bias=0.50001)
    fleet.use("model", "model@2.0.0", health=[fleet.onnx_check()])
    assert fleet.publish() == 2
    fleet.config_file("3.0.0", "threshold = 3\n")
    fleet.use("settings", "settings@3.0.0")
    assert fleet.publish() == 3


def test_bundle_brings_a_node_from_1_to_3_and_its_status_comes_back(
    offline: tuple[LiveFleet, NodeAgent], tmp_path: Path
) -> None:
    fleet, node = offline
    publish_v2_v3(fleet)
    stick = tmp_path / "stick"
    summary = make_bundle(fleet, stick / "to-3.efb", "--since", "1")
    assert summary["releases"] == [2, 3] and summary["nodes"] == 1
    with tarfile.open(stick / "to-3.efb") as tar:
        first = tar.getmembers()[0]
        assert first.name == "manifest.json"
        member = tar.extractfile(first)
        assert member is not None
        manifest = json.loads(member.read())
    carried = manifest["nodes"]["edge-1"]
    assert carried["release"] == 3
    # Only what changed since release 1 travels: the app did not change.
    assert set(carried["components"]) == {"model", "settings"}
    # The artifact store is gone from the node's reach: only the stick can serve it.
    fleet.store.rename(tmp_path / "store-elsewhere")

    code, info, log = imported(node, stick / "to-3.efb")
    assert code == 0, log
    assert info["state"] == "converged" and info["release"] == 3, log
    assert info["components"]["model"]["artifact"] == "model@2.0.0"
    assert info["components"]["settings"]["artifact"] == "settings@3.0.0"
    assert info["transfer"]["bytes"] > 0
    events = [json.loads(ln) for ln in log.splitlines() if ln.startswith("{")]
    sources = {e.get("source", "") for e in events if e["event"] == "download.done"}
    assert sources and all("/import/blobs/" in s for s in sources), sources
    assert not (node.state / "import").exists()

    # The same stick a second time: nothing happens.
    before = state_of(node)
    code, info, log = imported(node, stick / "to-3.efb")
    assert code == 0 and info["release"] == 3, log
    assert state_of(node) == before

    # The status goes back the same way and lands on the node's branch, in order, once.
    out = stick / "edge-1.status"
    done = node.run("export-status", "--out", str(out))
    assert done.returncode == 0 and "status commit(s)" in done.stdout, done.stderr
    origin = str(fleet.origin)
    # From the operator's clone: checked here, then pushed to the origin.
    landed = edgefleet("status", "import", str(out), "--repo", str(fleet.path))
    assert "landed" in landed.stdout, landed.stdout
    # In the origin's own repository: it already has every commit, and nothing is added.
    again = edgefleet("status", "import", str(out), "--repo", origin)
    assert "already has every commit" in again.stdout, again.stdout
    log_lines = subprocess.run(
        ["git", "--git-dir", origin, "log", "--format=%s", "status/edge-1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert log_lines[0] == "edge-1: converged on release 3", log_lines
    assert len(log_lines) == len(set(log_lines)) or log_lines.count(log_lines[0]) == 1

    report = json.loads(edgefleet("status", "--repo", origin, "--format", "json").stdout)
    row = {n["node"]: n for n in report["nodes"]}["edge-1"]
    assert row["release"] == 3 and row["shown"] == "converged" and row["problem"] is None, row
    audit = edgefleet("audit", "--repo", origin, "--node", "edge-1", "--format", "json")
    events_json = json.loads(audit.stdout)
    finished = [e for e in events_json["events"] if e.get("release") == 3]
    assert finished, audit.stdout
    assert not events_json.get("problems"), events_json.get("problems")


def test_an_older_bundle_is_refused_as_a_rollback(
    offline: tuple[LiveFleet, NodeAgent], tmp_path: Path
) -> None:
    fleet, node = offline
    fleet.model("2.0.0", bias=0.50001)
    fleet.use("model", "model@2.0.0", health=[fleet.onnx_check()])
    assert fleet.publish() == 2
    make_bundle(fleet, tmp_path / "to-2.efb", "--since", "1")
    fleet.config_file("3.0.0", "threshold = 3\n")
    fleet.use("settings", "settings@3.0.0")
    assert fleet.publish() == 3
    make_bundle(fleet, tmp_path / "to-3.efb", "--since", "1")
    code, info, log = imported(node, tmp_path / "to-3.efb")
    assert code == 0 and info["release"] == 3, log

    before = state_of(node)
    code, _, log = imported(node, tmp_path / "to-2.efb")
    assert code == 3, log
    assert "newest release is 2" in log and "rollback" in log, log
    assert state_of(node) == before


@pytest.mark.parametrize("fault", ["flipped-artifact-byte", "cut-short", "other-fleet"])
def test_a_damaged_or_foreign_bundle_is_refused_with_nothing_changed(
    offline: tuple[LiveFleet, NodeAgent], tmp_path: Path, fault: str
) -> None:
    fleet, node = offline
    publish_v2_v3(fleet)
    good = tmp_path / "good.efb"
    make_bundle(fleet, good, "--since", "1")
    bad = tmp_path / "bad.efb"
    if fault == "flipped-artifact-byte":

        def flip(name: str, data: bytes) -> bytes:
            if not name.startswith("blobs/"):
                return data
            middle = len(data) // 2
            return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]

        rewrite(good, bad, flip)
        expected = "got content with sha256"
    elif fault == "cut-short":
        data = good.read_bytes()
        bad.write_bytes(data[: len(data) * 2 // 3])
        expected = "cut short"
    else:

        def other(name: str, data: bytes) -> bytes:
            if name != "manifest.json":
                return data
            doc = json.loads(data)
            doc["fleet"] = "someone-elses-fleet"
            return json.dumps(doc).encode()

        rewrite(good, bad, other)
        expected = "for fleet 'someone-elses-fleet'"
    before = state_of(node)
    code, _, log = imported(node, bad)
    assert code == 3, log
    assert expected in log, log
    assert str(bad) in log
    # Recorded in the agent's log, and nowhere on the node.
    assert '"import.refused"' in log, log
    assert state_of(node) == before
    # The undamaged copy still works afterwards: a refusal leaves nothing in the way.
    code, info, log = imported(node, good)
    assert code == 0 and info["release"] == 3, log


def test_a_forged_release_in_a_well_formed_bundle_is_rejected_as_a_pull_would_be(
    offline: tuple[LiveFleet, NodeAgent], tmp_path: Path
) -> None:
    """The manifest and git bundle are consistent, but release 2 is signed by a key the
    node does not trust: the bundle is only a transport, so verification refuses it."""
    fleet, node = offline
    fleet.model("2.0.0", bias=0.50001)
    fleet.use("model", "model@2.0.0", health=[fleet.onnx_check()])
    fleet.write()
    git_commit(fleet.repo, "desired state")
    intruder = SigningKey.generate("intruder")
    fleet.tag(sign_release(fleet.payload(), [intruder, intruder]))
    work = tmp_path / "forge"
    (work / "blobs").mkdir(parents=True)
    subprocess.run(
        ["git", "-C", str(fleet.path), "bundle", "create", "-q", str(work / "repo.bundle"),
         "refs/tags/release/2", "^refs/tags/release/1"],
        check=True,
    )  # fmt: skip
    blob = fleet.artifacts["model@2.0.0"]
    (work / "blobs" / blob.digest).write_bytes(blob.data)
    tag = fleet.repo.git.rev_parse("refs/tags/release/2")
    git_file = work / "repo.bundle"
    members = (
        Member("repo.bundle", git_file.stat().st_size, sha256_file(git_file)),
        Member(f"blobs/{blob.digest}", len(blob.data), blob.digest),
    )
    manifest = Manifest(
        fleet=FLEET_NAME,
        created_at="2026-01-01T00:00:00Z",
        since=1,
        releases=(2,),
        refs={"refs/tags/release/2": tag},
        members=members,
        nodes={"edge-1": NodeCargo(2)},
    )
    forged = tmp_path / "forged.efb"
    with tarfile.open(forged, "w", format=tarfile.PAX_FORMAT) as tar:
        data = manifest.encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        tar.add(work / "repo.bundle", "repo.bundle")
        tar.add(work / "blobs" / blob.digest, f"blobs/{blob.digest}")
    before = node.snapshot()
    code, info_json, log = imported(node, forged)
    assert code == 3, log
    assert info_json["state"] == "rejected" and info_json["release"] == 1, log
    error = info_json["lastError"]
    assert error["release"] == 2 and error["rule"] == "threshold", error
    assert "got 0 valid signature(s)" in error["reason"], error
    assert node.snapshot() == before


def test_status_carried_under_another_nodes_name_is_refused_and_nothing_lands(
    tmp_path: Path,
) -> None:
    fleet = LiveFleet(tmp_path)
    fleet.standard()
    fleet.publish()
    node = NodeAgent(fleet, "edge-1")
    code, info = node.once()
    assert code == 0, info["_stderr"]
    repo = node.state / "repo"
    # edge-1's genuinely signed commits, offered as edge-2's history.
    subprocess.run(
        ["git", "--git-dir", str(repo), "update-ref", "refs/heads/status/edge-2",
         "refs/heads/status/edge-1"],
        check=True,
    )  # fmt: skip
    forged = tmp_path / "edge-2.status"
    subprocess.run(
        ["git", "--git-dir", str(repo), "bundle", "create", "-q", str(forged),
         "refs/heads/status/edge-2"],
        check=True,
    )  # fmt: skip
    refs_before = subprocess.run(
        ["git", "--git-dir", str(fleet.origin), "for-each-ref"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    done = edgefleet("status", "import", str(forged), "--repo", str(fleet.origin), check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "refs/heads/status/edge-2" in done.stderr and "nothing landed" in done.stderr
    refs_after = subprocess.run(
        ["git", "--git-dir", str(fleet.origin), "for-each-ref"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert refs_after == refs_before


def test_bundle_create_says_what_is_wrong(
    offline: tuple[LiveFleet, NodeAgent], tmp_path: Path
) -> None:
    fleet, _ = offline
    publish_v2_v3(fleet)
    unknown = edgefleet(
        "bundle", "create", "--repo", str(fleet.path), "--out", str(tmp_path / "x.efb"),
        "--since", "9", check=False,
    )  # fmt: skip
    assert unknown.returncode == 2 and "got no tag release/9" in unknown.stderr
    nobody = edgefleet(
        "bundle", "create", "--repo", str(fleet.path), "--out", str(tmp_path / "x.efb"),
        "--nodes", "region=mars", check=False,
    )  # fmt: skip
    assert nobody.returncode == 2 and "no node" in nobody.stderr
    (fleet.store / "sha256" / fleet.artifacts["settings@3.0.0"].digest).unlink()
    lacking = edgefleet(
        "bundle", "create", "--repo", str(fleet.path), "--out", str(tmp_path / "x.efb"),
        "--artifacts", str(fleet.store), "--since", "1", check=False,
    )  # fmt: skip
    assert lacking.returncode == 1 and "lacks settings@3.0.0" in lacking.stderr, lacking.stderr
    assert not (tmp_path / "x.efb").exists()
    # Without a store the bundle carries releases only, and says so.
    bare = edgefleet(
        "bundle", "create", "--repo", str(fleet.path), "--out", str(tmp_path / "x.efb"),
        "--nodes", "name=edge-1",
    )  # fmt: skip
    assert json.loads(bare.stdout)["blobs"] == 0 and "no --artifacts" in bare.stderr
