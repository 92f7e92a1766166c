"""A node cut off for 90 days: it keeps running, never applies an expired release, bounds its
status queue without dropping a change, and catches up to the newest release in one cycle.

The agent runs in this process with its clock injected (`Agent(clock=...)`), so that three
months pass in a few seconds: the journal, the banks, the signatures and the git repositories
are all real, only the node's idea of "now" is simulated, including a jump of 40 days.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from node_agent.agent import Agent
from node_agent.config import load_config
from node_agent.logs import configure

from reconciler.timestamps import now
from tests.agent_testing import LiveFleet, NodeAgent, free_port

EDGEFLEET = Path(sys.executable).parent / "edgefleet"
QUEUE_LIMIT = 16


def git(git_dir: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(git_dir), *args], capture_output=True, text=True, check=True
    ).stdout


class Clock:
    def __init__(self, start: datetime) -> None:
        self.start = start
        self.day = 0.0

    def __call__(self) -> datetime:
        return self.start + timedelta(days=self.day)


def agent_for(node: NodeAgent, clock: Clock) -> tuple[Agent, io.StringIO]:
    stream = io.StringIO()
    log = configure(node.node, "json", stream)
    agent = Agent(load_config(node.config), log, clock=clock, status_queue_limit=QUEUE_LIMIT)
    return agent, stream


def queued(node: NodeAgent) -> int:
    repo = node.state / "repo"
    pushed = git(repo, "for-each-ref", "--format=%(objectname)", "refs/remotes/origin/status/")
    span = ["refs/heads/status/edge-1", *(f"^{p}" for p in pushed.split())]
    return int(git(repo, "rev-list", "--count", *span))


def history(origin: Path) -> list[dict[str, Any]]:
    """The origin's status/edge-1, oldest first: each commit's document and message."""
    out = []
    for sha in git(origin, "rev-list", "--reverse", "status/edge-1").split():
        doc = json.loads(git(origin, "show", f"{sha}:status.json"))
        doc["_message"] = git(origin, "log", "-1", "--format=%B", sha)
        out.append(doc)
    return out


def test_a_90_day_partition_with_a_clock_jump(tmp_path: Path) -> None:
    start = now()
    fleet = LiveFleet(tmp_path, nodes=("edge-1",))
    fleet.standard()
    assert fleet.publish(expires=start + timedelta(days=400)) == 1
    node = NodeAgent(fleet, "edge-1")
    clock = Clock(start)
    agent, _ = agent_for(node, clock)
    assert agent.once().exit_code == 0
    running = node.snapshot()
    assert running["release"] == 1

    # Releases made while the node is away: 2 reaches it by stick on day 45; 3 expires on day
    # 80, before it returns; 4 is good until day 120.
    fleet.model("2.0.0", bias=0.50001)
    fleet.use("model", "model@2.0.0", health=[fleet.onnx_check()])
    assert fleet.publish(issued=start, expires=start + timedelta(days=60)) == 2
    stick = tmp_path / "to-2.efb"
    subprocess.run(
        [str(EDGEFLEET), "bundle", "create", "--repo", str(fleet.path), "--out", str(stick),
         "--artifacts", str(fleet.store), "--since", "1"],
        check=True, capture_output=True,
    )  # fmt: skip
    fleet.config_file("3.0.0", "threshold = 3\n")
    fleet.use("settings", "settings@3.0.0")
    assert fleet.publish(issued=start, expires=start + timedelta(days=80)) == 3
    fleet.config_file("4.0.0", "threshold = 4\n")
    fleet.use("settings", "settings@4.0.0")
    assert fleet.publish(issued=start, expires=start + timedelta(days=120)) == 4

    node.write_config(f"git://127.0.0.1:{free_port()}/fleet.git")
    agent, _ = agent_for(node, clock)
    for day in range(1, 51):
        clock.day = day
        if day == 45:
            outcome = agent.import_bundle(stick)
            assert outcome.exit_code == 0 and outcome.journal.release == 2
            running = node.snapshot()
            continue
        outcome = agent.once()
        # Offline, it keeps running what it ran, and says so.
        assert outcome.exit_code == 75 and outcome.journal.state == "offline", day
        assert node.snapshot() == running, day
        assert queued(node) <= QUEUE_LIMIT, day

    # The clock jumps 40 days (a node powered down, or its clock stepped), then the route
    # comes back: one cycle takes it from release 2 straight to 4, never to the expired 3.
    clock.day = 90
    node.write_config(str(fleet.origin))
    agent, log = agent_for(node, clock)
    outcome = agent.once()
    assert outcome.exit_code == 0, log.getvalue()[-3000:]
    assert outcome.journal.release == 4 and outcome.journal.state == "converged"
    assert queued(node) == 0
    events = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [e["release"] for e in events if e["event"] == "commit.done"] == [4]

    # The origin's history tells the whole story, every change of state in order, with the
    # months of heartbeats coalesced, and the sequence still unbroken.
    docs = history(fleet.origin)
    changes = [(d["state"], d["release"]) for d in docs if d["event"] == "change"]
    assert changes == [
        ("applying", None),
        ("converged", 1),
        ("offline", 1),
        ("applying", 1),
        ("converged", 2),
        ("offline", 2),
        ("applying", 2),
        ("converged", 4),
    ], changes
    assert not any(d["release"] == 3 or (d["target"] or {}).get("release") == 3 for d in docs)
    assert [d["sequence"] for d in docs] == list(range(1, len(docs) + 1))
    heartbeats = [d for d in docs if d["event"] == "heartbeat"]
    assert heartbeats and len(docs) <= QUEUE_LIMIT + 4
    assert any("Edgefleet-Coalesced:" in d["_message"] for d in heartbeats)
    audit = subprocess.run(
        [str(EDGEFLEET), "audit", "--repo", str(fleet.origin), "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(audit.stdout)["problems"] == []
