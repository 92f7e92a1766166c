"""Progressive rollouts end to end: a real origin, real agents, the real `edgefleet` command.

Waves canary (selector ring=canary) then all (100 %); the gate reads the nodes' signed status
branches; advance and halt sign releases; a halt moves nodes back with no byte downloaded; a
busy node or one outside its maintenance window defers and counts as pending.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.release_tags import release_tags
from tests.agent_testing import LiveFleet, NodeAgent
from tests.trust_testing import git_commit

EDGEFLEET = Path(sys.executable).parent / "edgefleet"
NODES = ("canary-1", "store-1", "store-2")


class Rollout:
    def __init__(self, fleet: LiveFleet) -> None:
        self.fleet = fleet
        self.agents = {n: NodeAgent(fleet, n) for n in NODES}
        self.keys: list[str] = []
        for i, key in enumerate(fleet.keys.release[:2]):
            path = fleet.base / f"release-{i}"
            path.write_bytes(key.openssh_private())
            path.chmod(0o600)
            self.keys += ["--key", str(path)]

    def ef(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(EDGEFLEET), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def release(self, *extra: str) -> dict[str, Any]:
        done = self.ef("release", "--repo", str(self.fleet.path), *self.keys, "--push", *extra)
        assert done.returncode == 0, done.stderr
        made: dict[str, Any] = json.loads(done.stdout)
        return made

    def rollout(self, action: str, *extra: str) -> subprocess.CompletedProcess[str]:
        signing = self.keys if action in ("advance", "halt") else []
        push = ["--push"] if action in ("advance", "halt") else []
        return self.ef("rollout", action, "--repo", str(self.fleet.path), *signing, *push, *extra)

    def gate(self) -> dict[str, Any]:
        done = self.rollout("status", "--format", "json")
        assert done.returncode == 0, done.stderr
        found: dict[str, Any] = json.loads(done.stdout)
        return found

    def commit_change(self, message: str) -> None:
        self.fleet.write()
        git_commit(self.fleet.repo, message)
        self.fleet.push()

    def tags(self) -> int:
        self.fleet.repo.git.fetch("-q", "origin", "+refs/tags/*:refs/tags/*")
        return len(release_tags(self.fleet.repo))

    def once(self, node: str) -> tuple[int, dict[str, Any]]:
        return self.agents[node].once()


def waves_fleet(fleet: LiveFleet) -> None:
    path = fleet.path / "fleet.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["rollout"] = {
        "waves": [
            {"name": "canary", "selector": {"matchLabels": {"ring": "canary"}}},
            {"name": "all", "percent": 100},
        ],
        "maxFailurePercent": 5,
        "minHealthyPercent": 95,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    node = fleet.path / "nodes" / "canary-1.yaml"
    doc = yaml.safe_load(node.read_text())
    doc["metadata"]["labels"]["ring"] = "canary"
    node.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture
def live(tmp_path: Path) -> Rollout:
    """Three nodes converged on release 1, which went to every node."""
    fleet = LiveFleet(tmp_path, NODES)
    waves_fleet(fleet)
    fleet.standard()
    fleet.publish()
    live = Rollout(fleet)
    for node in NODES:
        code, info = live.once(node)
        assert code == 0 and info["release"] == 1, info["_stderr"]
    return live


def test_a_broken_model_stops_at_the_canary_and_the_gate_halts_the_rollout(live: Rollout) -> None:
    fleet = live.fleet
    broken = fleet.model("1.1.0", bias=3.0)
    fleet.use("model", "model@1.1.0", health=[fleet.onnx_check()])
    live.commit_change("model 1.1.0")
    made = live.release("--wave", "canary")
    assert (made["version"], made["wave"], made["baseline"]) == (2, "canary", 1)

    code, info = live.once("canary-1")
    assert code == 1 and info["state"] == "rolled-back" and info["release"] == 1, info["_stderr"]
    for node in ("store-1", "store-2"):
        code, info = live.once(node)
        assert code == 0 and info["release"] == 1, info["_stderr"]
        assert '"decide.not_in_wave"' in info["_stderr"]
        # Outside the canary, the broken model is never downloaded.
        cache = live.agents[node].state / "cache"
        assert not any(broken.digest in p.name for p in cache.rglob("*"))

    gate = live.gate()
    assert gate["decision"] == "halt" and gate["wave"] == "canary"
    assert gate["nodes"] == {"canary-1": "rolled-back"}
    assert gate["failurePercent"] == 100.0

    refused = live.rollout("advance")
    assert refused.returncode == 1
    assert "maxFailurePercent 5%" in refused.stderr and "rollout halt" in refused.stderr
    assert live.tags() == 2

    halted = live.rollout("advance", "--auto")
    assert halted.returncode == 0, halted.stderr
    halt = json.loads(halted.stdout)
    assert (halt["version"], halt["halts"], halt["wave"]) == (3, 2, None)
    assert halt["commit"] == fleet.repo.commit("release/1").hexsha
    # Idempotent: the rollout is halted, a second run signs nothing.
    again = live.rollout("advance", "--auto")
    assert again.returncode == 0 and "halted release 2" in again.stdout
    assert live.tags() == 3
    assert live.gate()["decision"] == "halted"

    for node in NODES:
        code, info = live.once(node)
        assert code == 0 and info["release"] == 3 and info["state"] == "converged", info["_stderr"]
        assert info["transfer"]["bytes"] == 0
        assert info["components"]["model"]["artifact"] == "model@1.0.0"


def test_advance_waits_below_the_healthy_threshold_then_advances_once(live: Rollout) -> None:
    fleet = live.fleet
    fleet.config_file("1.1.0", "threshold = 11\n")
    fleet.use("settings", "settings@1.1.0")
    live.commit_change("settings 1.1.0")
    live.release("--wave", "canary")

    # The canary has not polled yet: pending, below minHealthyPercent.
    gate = live.gate()
    assert gate["decision"] == "wait" and gate["nodes"] == {"canary-1": "pending"}
    refused = live.rollout("advance")
    assert refused.returncode == 1 and "minHealthyPercent 95%" in refused.stderr
    quiet = live.rollout("advance", "--auto")
    assert quiet.returncode == 0 and quiet.stdout.startswith("waiting:")
    assert live.tags() == 2

    code, info = live.once("canary-1")
    assert code == 0 and info["release"] == 2, info["_stderr"]
    gate = live.gate()
    assert gate["decision"] == "advance" and gate["healthyPercent"] == 100.0
    advanced = live.rollout("advance")
    assert advanced.returncode == 0, advanced.stderr
    made = json.loads(advanced.stdout)
    assert (made["version"], made["wave"], made["baseline"]) == (3, "all", 1)
    assert made["commit"] == fleet.repo.commit("release/2").hexsha
    # Running it again does nothing more: the new wave is pending.
    twice = live.rollout("advance")
    assert twice.returncode == 1 and "minHealthyPercent" in twice.stderr
    assert live.tags() == 3

    status = live.rollout("status")
    assert status.returncode == 0
    assert "*all" in status.stdout and "gate: wait" in status.stdout
    for node in NODES:
        code, info = live.once(node)
        assert code == 0 and info["release"] == 3, info["_stderr"]
    # The canary took release 3 without a byte: the same commit it already ran.
    assert live.gate()["decision"] == "complete"


def test_halt_moves_every_node_back_with_no_byte_downloaded(live: Rollout) -> None:
    fleet = live.fleet
    fleet.model("1.2.0", bias=0.5 + 1e-7)  # healthy, other bytes
    fleet.use("model", "model@1.2.0", health=[fleet.onnx_check()])
    fleet.config_file("1.2.0", "threshold = 12\n")
    fleet.use("settings", "settings@1.2.0")
    live.commit_change("model and settings 1.2.0")
    live.release("--wave", "canary")
    assert live.once("canary-1")[0] == 0
    assert live.rollout("advance").returncode == 0
    for node in NODES:
        code, info = live.once(node)
        assert code == 0 and info["release"] == 3, info["_stderr"]
        assert info["components"]["model"]["artifact"] == "model@1.2.0"
    before = {n: live.agents[n].journal()["counters"].get("downloadedBytes", 0) for n in NODES}

    halted = live.rollout("halt")
    assert halted.returncode == 0, halted.stderr
    made = json.loads(halted.stdout)
    assert (made["version"], made["halts"]) == (4, 3)
    assert "halted: release 4" in halted.stderr
    for node in NODES:
        code, info = live.once(node)
        assert code == 0 and info["release"] == 4 and info["state"] == "converged", info["_stderr"]
        assert info["components"]["model"]["artifact"] == "model@1.0.0"
        assert info["components"]["settings"]["artifact"] == "settings@1.0.0"
        assert info["transfer"] == {"bytes": 0, "fullBytes": info["transfer"]["fullBytes"]}
        assert info["transfer"]["fullBytes"] > 0
        assert '"stage.reused"' in info["_stderr"]
        after = live.agents[node].journal()["counters"].get("downloadedBytes", 0)
        assert after == before[node]
    again = live.rollout("halt")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert live.tags() == 4


def test_a_busy_node_defers_counts_as_pending_and_applies_after(live: Rollout) -> None:
    fleet = live.fleet
    busy = live.agents["canary-1"].dir / "busy"
    busy.write_text("procedure in theatre 2\n")
    agent = live.agents["canary-1"]
    agent.write_config(str(fleet.origin), busy={"file": str(busy)})
    fleet.config_file("1.1.0", "threshold = 11\n")
    fleet.use("settings", "settings@1.1.0")
    live.commit_change("settings 1.1.0")
    live.release("--wave", "canary")

    before = agent.snapshot()
    code, info = live.once("canary-1")
    assert code == 0 and info["state"] == "deferred" and info["release"] == 1, info["_stderr"]
    assert info["lastError"]["rule"] == "busy"
    assert "procedure in theatre 2" in info["lastError"]["reason"]
    assert agent.snapshot()["links"] == before["links"]
    gate = live.gate()
    assert gate["nodes"] == {"canary-1": "pending"} and gate["decision"] == "wait"

    busy.unlink()
    code, info = live.once("canary-1")
    assert code == 0 and info["state"] == "converged" and info["release"] == 2, info["_stderr"]
    assert live.gate()["decision"] == "advance"


def test_a_node_outside_its_maintenance_window_defers_until_it_opens(live: Rollout) -> None:
    fleet = live.fleet
    hour = datetime.now(UTC).hour
    closed = {
        "windows": [{"start": f"{(hour + 2) % 24:02d}:00", "end": f"{(hour + 3) % 24:02d}:00"}]
    }
    node_file = fleet.path / "nodes" / "store-1.yaml"
    doc = yaml.safe_load(node_file.read_text())
    doc["spec"]["maintenance"] = closed
    node_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    fleet.config_file("1.1.0", "threshold = 11\n")
    fleet.use("settings", "settings@1.1.0")
    live.commit_change("settings 1.1.0, store-1 updates at night")
    live.release()

    code, info = live.once("store-1")
    assert code == 0 and info["state"] == "deferred" and info["release"] == 1, info["_stderr"]
    assert info["lastError"]["rule"] == "maintenance"
    assert "outside the maintenance window; the next opens" in info["lastError"]["reason"]
    code, info = live.once("store-2")
    assert code == 0 and info["release"] == 2

    start = datetime.now(UTC) - timedelta(hours=1)
    doc["spec"]["maintenance"] = {
        "timezone": "UTC",
        "windows": [{"start": f"{start.hour:02d}:00", "end": f"{(start.hour + 3) % 24:02d}:00"}],
    }
    node_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    live.commit_change("store-1's window is open")
    live.release()
    code, info = live.once("store-1")
    assert code == 0 and info["state"] == "converged" and info["release"] == 3, info["_stderr"]


def test_a_forged_release_tag_cannot_steer_advance(live: Rollout) -> None:
    """A tag whose payload is signed by keys the root does not trust (here it names a wave,
    so that `advance` would sign its commit for the next one) is refused before anything is
    signed."""
    from reconciler.keys import SigningKey

    fleet = live.fleet
    fleet.config_file("6.6.6", "threshold = 666\n")
    fleet.use("settings", "settings@6.6.6")
    fleet.write()
    git_commit(fleet.repo, "an attacker's change")
    forgers = [SigningKey.generate("forger-1"), SigningKey.generate("forger-2")]
    fleet.release(signers=forgers, wave="canary")
    fleet.push()
    done = live.rollout("advance")
    assert done.returncode != 0
    assert "release/2" in done.stderr and "signature" in done.stderr
    assert live.tags() == 2
    gate = live.rollout("status")
    assert gate.returncode != 0 and "release/2" in gate.stderr


def test_an_expired_baseline_neither_blocks_the_gate_nor_the_halt(live: Rollout) -> None:
    from reconciler.timestamps import now

    fleet = live.fleet
    fleet.config_file("1.1.0", "threshold = 11\n")
    fleet.use("settings", "settings@1.1.0")
    long_ago = now() - timedelta(days=60)
    fleet.publish(issued=long_ago, expires=long_ago + timedelta(days=30))  # release 2, expired
    fleet.config_file("1.2.0", "threshold = 12\n")
    fleet.use("settings", "settings@1.2.0")
    live.commit_change("settings 1.2.0")
    made = live.release("--wave", "canary")
    assert (made["version"], made["baseline"]) == (3, 2)
    gate = live.gate()
    assert gate["decision"] == "wait" and gate["baseline"] == 2
    halted = live.rollout("halt")
    assert halted.returncode == 0, halted.stderr
    assert json.loads(halted.stdout)["commit"] == fleet.repo.commit("release/2").hexsha


def test_a_release_that_cannot_be_pushed_leaves_no_tag_behind(live: Rollout) -> None:
    fleet = live.fleet
    fleet.repo.create_remote("nowhere", str(fleet.base / "no-such-origin.git"))
    fleet.config_file("1.1.0", "threshold = 11\n")
    fleet.use("settings", "settings@1.1.0")
    live.commit_change("settings 1.1.0")
    done = live.ef(
        "release",
        "--repo",
        str(fleet.path),
        *live.keys,
        "--wave",
        "canary",
        "--push",
        "--remote",
        "nowhere",
    )
    assert done.returncode == 75
    assert "pushing release/2 to nowhere failed" in done.stderr
    assert "nothing was released and the tag was removed here" in done.stderr
    assert [t.version for t in release_tags(fleet.repo)] == [1]
