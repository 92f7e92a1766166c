"""The agent applies binary patches when it holds their base, and falls back to the full
artifact, saying why, when anything about the patch is wrong."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.agent_testing import LiveFleet, NodeAgent
from tests.artifact_server import ArtifactServer


def blob(version: int, size: int = 1_500_000) -> bytes:
    """A large binary whose versions differ in a few places, like a rebuilt firmware."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"block-{counter}".encode()).digest()
        counter += 1
    data = bytearray(out[:size])
    for i in range(version):
        at = 100_000 + i * 400_000
        data[at : at + 8] = f"v{version:07d}".encode()
    return bytes(data)


@pytest.fixture
def fleet(tmp_path: Path) -> LiveFleet:
    return LiveFleet(tmp_path)


@pytest.fixture
def node(fleet: LiveFleet) -> NodeAgent:
    """A node running firmware 1 and settings 1, with firmware 2 offered as a patch from 1."""
    fleet.add_artifact("firmware@1.0.0", blob(1), "firmware.bin")
    fleet.config_file("1.0.0", "x = 1\n")
    fleet.use("firmware", "firmware@1.0.0")
    fleet.use("settings", "settings@1.0.0")
    fleet.publish()
    agent = NodeAgent(fleet, "edge-1")
    code, info = agent.once()
    assert code == 0, info["_stderr"]
    fleet.add_artifact("firmware@2.0.0", blob(2), "firmware.bin")
    fleet.use("firmware", "firmware@2.0.0")
    return agent


def firmware_sha(node: NodeAgent) -> str:
    return hashlib.sha256(node.bank_file("firmware", "firmware.bin").read_bytes()).hexdigest()


def test_the_agent_applies_a_patch_from_the_bank_it_runs(fleet: LiveFleet, node: NodeAgent) -> None:
    delta = fleet.add_delta("firmware@2.0.0", "firmware@1.0.0")
    fleet.publish()
    code, info = node.once()
    assert code == 0, info["_stderr"]
    transfer = info["transfer"]
    assert transfer["patches"]["firmware"]["format"] == delta["format"]
    assert transfer["bytes"] == delta["size"] < transfer["fullBytes"] // 20
    assert "deltaFallback" not in transfer
    assert firmware_sha(node) == fleet.artifacts["firmware@2.0.0"].digest
    assert info["components"]["firmware"]["bank"] == "b"


def test_a_drifted_base_falls_back_to_the_full_artifact_and_says_why(
    fleet: LiveFleet, node: NodeAgent
) -> None:
    fleet.add_delta("firmware@2.0.0", "firmware@1.0.0")
    fleet.publish()
    running = node.bank_file("firmware", "firmware.bin")
    data = bytearray(running.read_bytes())
    data[5] ^= 0xFF  # someone edited the running bank's file on disk
    running.write_bytes(bytes(data))
    (node.state / "cache" / fleet.artifacts["firmware@1.0.0"].digest).unlink()  # no 2nd copy
    code, info = node.once()
    assert code == 0, info["_stderr"]
    assert "drifted" in info["transfer"]["deltaFallback"]["firmware"]
    assert "patches" not in info["transfer"]
    assert info["transfer"]["bytes"] >= info["transfer"]["fullBytes"]
    assert firmware_sha(node) == fleet.artifacts["firmware@2.0.0"].digest


def test_a_corrupted_patch_falls_back_to_the_full_artifact(
    fleet: LiveFleet, node: NodeAgent
) -> None:
    from reconciler.deltas import make_patch

    good = make_patch(blob(1), blob(2)).data
    corrupt = good[:40] + bytes(b ^ 0x5A for b in good[40:80]) + good[80:]
    fleet.add_delta("firmware@2.0.0", "firmware@1.0.0", patch=corrupt)  # signed, but bad
    fleet.publish()
    code, info = node.once()
    assert code == 0, info["_stderr"]
    assert "firmware" in info["transfer"]["deltaFallback"]
    assert firmware_sha(node) == fleet.artifacts["firmware@2.0.0"].digest


def test_a_patch_larger_than_declared_is_cut_off_and_the_full_artifact_used(
    fleet: LiveFleet, node: NodeAgent
) -> None:
    with ArtifactServer() as server:
        delta = fleet.add_delta("firmware@2.0.0", "firmware@1.0.0")
        declared = delta["size"] // 2
        delta["size"] = declared  # the catalog says less than the server sends
        for artifact in fleet.artifacts.values():
            server.add(f"sha256/{artifact.digest}", artifact.data)
        server.add(delta["url"], (fleet.store / delta["url"]).read_bytes())
        fleet.sources = [server.url]
        fleet.publish()
        code, info = node.once()
        assert code == 0, info["_stderr"]
        reason = info["transfer"]["deltaFallback"]["firmware"]
        assert str(declared) in reason or "more than" in reason, reason
        assert firmware_sha(node) == fleet.artifacts["firmware@2.0.0"].digest
        assert info["transfer"]["bytes"] < declared + len(blob(2)) + 1


def test_no_base_at_hand_means_a_full_download(fleet: LiveFleet) -> None:
    fleet.add_artifact("firmware@1.0.0", blob(1), "firmware.bin")
    fleet.add_artifact("firmware@2.0.0", blob(2), "firmware.bin")
    fleet.add_delta("firmware@2.0.0", "firmware@1.0.0")
    fleet.use("firmware", "firmware@2.0.0")
    fleet.publish()
    node = NodeAgent(fleet, "edge-2")
    code, info = node.once()
    assert code == 0, info["_stderr"]
    assert "patches" not in info["transfer"] and "deltaFallback" not in info["transfer"]
    assert info["transfer"]["bytes"] == info["transfer"]["fullBytes"]


def test_a_drifted_bank_is_patched_from_the_cached_copy_of_its_base(
    fleet: LiveFleet, node: NodeAgent
) -> None:
    delta = fleet.add_delta("firmware@2.0.0", "firmware@1.0.0")
    fleet.publish()
    running = node.bank_file("firmware", "firmware.bin")
    running.write_bytes(running.read_bytes()[:-1])
    code, info = node.once()
    assert code == 0, info["_stderr"]
    assert info["transfer"]["patches"]["firmware"]["bytes"] == delta["size"]
    assert "drifted" in info["transfer"]["deltaFallback"]["firmware"]
    assert info["transfer"]["bytes"] == delta["size"]
    assert firmware_sha(node) == fleet.artifacts["firmware@2.0.0"].digest
