"""Returning together (issue 8, point 5): nodes that come back at once do not poll at once.

The delay policy of `edgefleet-agent run` (node_agent.poll_loop) is checked with seeded random
generators: the first poll waits uniform(0, startJitter), retries back off with full jitter
between a floor and caps. Then `test_200_agents_returning_at_once_spread_their_first_polls`
starts 200 real agents at the same instant against a real `git daemon` and checks their first
polls against the configured jitter.
"""

from __future__ import annotations

import io
import json
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from node_agent.agent import Agent, Outcome
from node_agent.cli import main
from node_agent.config import AgentConfig, load_config
from node_agent.journal import Journal, JournalFile, Transaction
from node_agent.logs import configure
from node_agent.poll_loop import (
    DEFAULT_POLL_S,
    Poll,
    first_delay,
    next_delay,
    poll_loop,
    retry_ceiling,
    retry_floor,
)

from tests.agent_testing import LiveFleet, NodeAgent, daemon_command, free_port

# --- a git daemon whose every request is counted ----------------------------------------------


@dataclass
class DaemonLog:
    """What a `git daemon --verbose` said, each line stamped with time.monotonic()."""

    port: int
    lines: list[tuple[float, str]] = field(default_factory=list)

    def requests(self, service: str = "upload-pack") -> list[float]:
        """When each request for `service` arrived (a poll's ls-remote and fetch are two)."""
        return [at for at, line in self.lines if f"Request {service} for " in line]


@contextmanager
def counting_git_daemon(base: Path, port: int | None = None) -> Iterator[DaemonLog]:
    """`git daemon --verbose` on 127.0.0.1 serving every repository under `base`, with no cap
    on connections (git's default of 32 would turn a slow test machine into refused polls);
    yields its log, filled as it runs, and stops it at the end. `port` lets a caller bring a
    daemon back on the port it was on."""
    log = DaemonLog(port or free_port())
    proc = subprocess.Popen(
        daemon_command(base, log.port, "--verbose", "--max-connections=0"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.lines.append((time.monotonic(), line.rstrip("\n")))
            if "Ready to rumble" in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not ready.wait(10):
            raise RuntimeError(f"git daemon did not start: {log.lines}")
        yield log
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        reader.join(timeout=10)


# --- the delay policy ---------------------------------------------------------------------------


def config(tmp_path: Path, **extra: Any) -> AgentConfig:
    fields: dict[str, Any] = {
        "path": tmp_path / "agent.yaml",
        "node": "edge-1",
        "repo": str(tmp_path / "origin.git"),
        "trust_root": tmp_path / "root.json",
        "state_dir": tmp_path / "state",
        "identity_key": tmp_path / "key",
        "artifact_sources": (),
        "poll_interval": None,
        "heartbeat_interval": 3600,
        "log_format": "json",
    }
    return AgentConfig(**{**fields, **extra})


def test_the_first_poll_waits_up_to_the_start_jitter(tmp_path: Path) -> None:
    rng = random.Random(1)
    jittered = config(tmp_path, start_jitter=30)
    draws = [first_delay(jittered, 60, rng) for _ in range(2000)]
    assert all(0 <= d <= 30 for d in draws)
    # Spread over the whole window, not bunched at one end.
    assert min(draws) < 1 and max(draws) > 29
    assert 0.45 < sum(d < 15 for d in draws) / len(draws) < 0.55
    # Without startJitter, the interval in effect; 0s turns it off.
    default = [first_delay(config(tmp_path), 300, rng) for _ in range(2000)]
    assert all(0 <= d <= 300 for d in default) and max(default) > 290
    assert first_delay(config(tmp_path, start_jitter=0), 300, rng) == 0


def test_a_good_cycle_waits_the_interval_give_or_take_ten_percent() -> None:
    rng = random.Random(2)
    draws = [next_delay(60, 0, rng) for _ in range(1000)]
    assert all(54 <= d <= 66 for d in draws)
    assert min(draws) < 55 and max(draws) > 65


def test_retries_back_off_between_a_floor_and_a_doubling_ceiling() -> None:
    rng = random.Random(3)
    assert [retry_ceiling(60, f, 3600) for f in range(1, 8)] == [
        60,
        120,
        240,
        480,
        960,
        1920,
        1920,
    ]
    for failures in range(1, 12):
        ceiling = retry_ceiling(60, failures, 3600)
        draws = [next_delay(60, failures, rng, 3600) for _ in range(500)]
        assert all(6 <= d <= ceiling for d in draws), failures
        # Full jitter: a good share of retries come before half the ceiling, which equal
        # jitter (uniform between half and all of it) would never draw.
        assert sum(d < ceiling / 2 for d in draws) > 150, failures
        assert max(draws) > 0.95 * ceiling, failures


def test_the_backoff_reaches_its_caps_and_stays_there() -> None:
    rng = random.Random(4)
    # 32 intervals when they are shorter than maxBackoff...
    assert retry_ceiling(60, 6, 3600) == retry_ceiling(60, 10_000, 3600) == 32 * 60
    # ...and maxBackoff when 32 intervals would be longer (here 32 x 5 min = 160 min).
    assert retry_ceiling(300, 5, 3600) == retry_ceiling(300, 10_000, 3600) == 3600
    draws = [next_delay(300, 40, rng, 3600) for _ in range(2000)]
    assert max(draws) <= 3600 and max(draws) > 3500
    assert retry_ceiling(60, 3, 100) == 100


def test_a_retry_is_never_instant() -> None:
    rng = random.Random(5)
    # A tenth of the interval, and never under a second.
    assert retry_floor(60, 60) == 6 and retry_floor(1, 1) == 1 and retry_floor(5, 5) == 1
    # Even when maxBackoff is shorter than the floor would be: then the ceiling is the floor.
    assert retry_floor(600, 30) == 30
    draws = [next_delay(1, f, rng, 3600) for f in range(1, 8) for _ in range(300)]
    assert min(draws) >= 1.0
    assert next_delay(60, 1, rng, max_backoff=1) == 1.0


def test_next_delay_is_still_importable_from_the_cli() -> None:
    from node_agent import cli

    assert cli.next_delay is next_delay and cli.DEFAULT_POLL_S == DEFAULT_POLL_S == 60


# --- the loop, with a stand-in agent and a clock that does not wait ---------------------------


class Instant(threading.Event):
    """A stop event whose waits return at once, recorded; it is set after `polls` waits."""

    def __init__(self, polls: int) -> None:
        super().__init__()
        self.waits: list[float] = []
        self.polls = polls

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        if len(self.waits) > self.polls:
            self.set()
        return self.is_set()


class Scripted:
    """An agent whose cycles end with the given exit codes (then 0)."""

    def __init__(self, codes: list[int], fleet_interval: int | None = None) -> None:
        self.codes = codes
        self.journal = Journal(node="edge-1", poll_interval=fleet_interval)

    def once(self) -> Outcome:
        return Outcome(self.codes.pop(0) if self.codes else 0, self.journal)


def run_loop(
    tmp_path: Path, agent: Scripted, polls: int, **extra: Any
) -> tuple[Instant, list[Poll], list[dict[str, Any]]]:
    out = io.StringIO()
    log = configure("edge-1", "json", stream=out)
    stop = Instant(polls)
    seen: list[Poll] = []
    poll_loop(agent, config(tmp_path, **extra), log, stop, random.Random(6), seen.append)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    return stop, seen, events


def test_the_loop_waits_its_jitter_then_backs_off_and_recovers(tmp_path: Path) -> None:
    agent = Scripted([75, 75, 75, 75, 0], fleet_interval=None)
    stop, seen, events = run_loop(tmp_path, agent, 6, poll_interval=10, start_jitter=20)
    first = next(e for e in events if e["event"] == "agent.first_poll_in")
    assert first["start_jitter"] == 20 and 0 <= first["next_in"] <= 20
    assert 0 <= stop.waits[0] <= 20
    assert [p.exit_code for p in seen] == [75, 75, 75, 75, 0, 0]
    assert [p.failures for p in seen] == [1, 2, 3, 4, 0, 0]
    for poll, ceiling in zip(seen[:4], (10, 20, 40, 80), strict=True):
        assert 1 <= poll.next_in <= ceiling
    assert all(9 <= p.next_in <= 11 for p in seen[4:])
    assert [p.number for p in seen] == list(range(1, 7))
    assert stop.waits[1:] == [p.next_in for p in seen]
    assert events[-1]["event"] == "agent.stopped"


def test_the_default_start_jitter_is_the_fleets_interval_once_known(tmp_path: Path) -> None:
    # A node that has never synced: 60 s.
    _, _, events = run_loop(tmp_path, Scripted([]), 1)
    assert next(e for e in events if e["event"] == "agent.first_poll_in")["start_jitter"] == 60
    # A node whose journal holds the fleet's spec.pollInterval: that interval.
    state = tmp_path / "state"
    state.mkdir()
    JournalFile(state / "state.json").save(Journal(node="edge-1", poll_interval=900))
    stop, _, events = run_loop(tmp_path, Scripted([], fleet_interval=900), 1)
    assert next(e for e in events if e["event"] == "agent.first_poll_in")["start_jitter"] == 900
    assert 0 <= stop.waits[0] <= 900
    # startJitter 0s: the first poll at once.
    stop, _, _ = run_loop(tmp_path, Scripted([]), 1, start_jitter=0)
    assert stop.waits[0] == 0


def test_a_trial_cut_short_is_finished_without_waiting_for_the_jitter(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    txn = Transaction(release=2, commit="c" * 40, digest="d" * 64, phase="trial", steps={})
    JournalFile(state / "state.json").save(Journal(node="edge-1", transaction=txn))
    stop, _, events = run_loop(tmp_path, Scripted([]), 1, start_jitter=600)
    assert stop.waits[0] == 0
    assert next(e for e in events if e["event"] == "agent.first_poll_in")["reason"] == (
        "a trial to finish"
    )
    # A half-staged bank is only discarded: that can wait for the jitter like any start.
    txn.phase = "staging"
    JournalFile(state / "state.json").save(Journal(node="edge-1", transaction=txn))
    stop, _, _ = run_loop(tmp_path, Scripted([]), 1, start_jitter=600)
    assert stop.waits[0] > 0


def test_a_surprise_in_a_cycle_is_a_failure_and_the_loop_goes_on(tmp_path: Path) -> None:
    class Crashing(Scripted):
        def once(self) -> Outcome:
            raise RuntimeError("disk on fire")

    _, seen, events = run_loop(tmp_path, Crashing([]), 3, poll_interval=10)
    assert [(p.exit_code, p.failures) for p in seen] == [(70, 1), (70, 2), (70, 3)]
    assert sum(e["event"] == "cycle.crashed" for e in events) == 3


# --- the configuration ----------------------------------------------------------------------

AGENT_YAML = """\
node: store-0042
repo: ../fleet.git
trustRoot: root.json
stateDir: state
identityKey: node_ed25519
"""


def check_config(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    assert main(["check-config", "--config", str(path), "--json"]) == 0
    shown: dict[str, Any] = json.loads(capsys.readouterr().out)
    return shown


def test_check_config_shows_jitter_backoff_and_busy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = check_config(tmp_path, AGENT_YAML, capsys)
    assert shown["startJitterSeconds"] is None  # the poll interval in effect
    assert shown["maxBackoffSeconds"] == 3600
    assert shown["busy"] == {"file": None, "command": [], "timeoutSeconds": 10.0}
    shown = check_config(
        tmp_path,
        AGENT_YAML + "startJitter: 2m\nmaxBackoff: 15m\n"
        "busy: {file: busy.flag, command: [/bin/is-busy], timeoutSeconds: 3}\n",
        capsys,
    )
    assert shown["startJitterSeconds"] == 120 and shown["maxBackoffSeconds"] == 900
    assert shown["busy"] == {
        "file": str((tmp_path / "busy.flag").resolve()),
        "command": ["/bin/is-busy"],
        "timeoutSeconds": 3.0,
    }
    assert (
        check_config(tmp_path, AGENT_YAML + "startJitter: 0s\n", capsys)["startJitterSeconds"] == 0
    )
    assert load_config(tmp_path / "agent.yaml").start_jitter == 0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("startJitter: 30", "expected string"),
        ("startJitter: 30 seconds", "or 0s to poll at once"),
        ("startJitter: -5s", "or 0s to poll at once"),
        ("maxBackoff: 0s", "expected a duration"),
    ],
)
def test_bad_jitter_or_backoff_exits_2_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(AGENT_YAML + line + "\n")
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:6: " in err and message in err, err


# --- 200 agents returning at once ---------------------------------------------------------------

HERD = 200
JITTER_S = 20
# How late a thread may wake behind its drawn delay on a loaded two-core machine (the GIL,
# the other 199 agents' cycles, other tests under xdist): generous, it bounds no performance.
SLACK_S = 5.0


@pytest.mark.slow
def test_200_agents_returning_at_once_spread_their_first_polls(tmp_path: Path) -> None:
    """200 nodes come back from a regional outage at the same instant, each with its own state
    directory, identity key and configuration (startJitter 20s, pollInterval 1h), against a
    real `git daemon` on 127.0.0.1. Their first polls must fall within the jitter window and
    spread over it, and the daemon must have served them.

    The agents are 200 threads of this process, each running the real `poll_loop` with a real
    `Agent`: 200 Python processes would swamp a two-core machine, and the start instant is
    then one barrier, not 200 process start-ups. A poll's time is the moment its cycle begins,
    which is what the policy decides; how fast this machine then serves 200 simulated nodes
    is not what is measured.
    """
    nodes = tuple(f"store-{i:03d}" for i in range(HERD))
    fleet = LiveFleet(tmp_path, nodes=nodes)
    # The cheapest release that still makes every node download, switch and report.
    fleet.config_file("1.0.0", "threshold = 1\n")
    fleet.use("settings", "settings@1.0.0")
    version = fleet.publish()
    out = io.StringIO()
    log = configure("herd", "json", stream=out)
    with counting_git_daemon(fleet.origin.parent) as daemon:
        url = f"git://127.0.0.1:{daemon.port}/{fleet.origin.name}"
        agents = []
        for node in nodes:
            host = NodeAgent(fleet, node, repo_url=url)
            host.write_config(url, pollInterval="1h", startJitter=f"{JITTER_S}s")
            cfg = load_config(host.config)
            agents.append((host, cfg, Agent(cfg, log.bind(node=node))))
        first: dict[str, Poll] = {}
        lock = threading.Lock()
        stop = threading.Event()
        barrier = threading.Barrier(HERD + 1)

        def returning(node: str, agent: Agent, cfg: AgentConfig) -> None:
            def on_poll(poll: Poll) -> None:
                with lock:
                    first.setdefault(node, poll)

            barrier.wait()
            poll_loop(agent, cfg, log.bind(node=node), stop, on_poll=on_poll)

        threads = [
            threading.Thread(target=returning, args=(host.node, agent, cfg), name=host.node)
            for host, cfg, agent in agents
        ]
        for thread in threads:
            thread.start()
        try:
            barrier.wait()
            t0 = time.monotonic()
            deadline = t0 + JITTER_S + 120
            while len(first) < HERD and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a poll loop did not stop"
        served = daemon.requests()

    assert len(first) == HERD, f"only {len(first)} of {HERD} agents polled"
    offsets = sorted(p.started - t0 for p in first.values())
    # Every first poll within the window (give or take a thread's wake-up)...
    assert offsets[0] >= -0.1 and offsets[-1] <= JITTER_S + SLACK_S, offsets
    # ...and at the delay its agent drew and logged.
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    drawn = {e["node"]: e["next_in"] for e in events if e["event"] == "agent.first_poll_in"}
    assert len(drawn) == HERD
    late = [first[n].started - t0 - drawn[n] for n in nodes]
    assert min(late) >= -0.1 and max(late) <= SLACK_S, (min(late), max(late))
    # Spread over the window: 200 uniform draws put 50 +- 6 in each quarter. No quarter with
    # more than 45% or fewer than 8% (over five standard deviations either way); polls
    # without jitter would all fall in the first quarter.
    quarters = [0] * 4
    for offset in offsets:
        quarters[min(max(int(offset / (JITTER_S / 4)), 0), 3)] += 1
    assert all(0.08 * HERD <= q <= 0.45 * HERD for q in quarters), quarters
    # Kolmogorov-Smirnov distance to uniform(0, jitter): about 0.06 for a correct spread,
    # over 0.2 with odds below one in a million.
    ks = max(
        max(abs((i + 1) / HERD - x / JITTER_S), abs(i / HERD - x / JITTER_S))
        for i, x in enumerate(offsets)
    )
    assert ks < 0.2, (ks, quarters)
    # Every node converged, and the daemon served each one's poll.
    assert all(p.exit_code == 0 for p in first.values()), {
        n: p.exit_code for n, p in first.items() if p.exit_code
    }
    for host, _, _ in agents:
        journal = host.journal()
        assert journal["release"] == version and journal["state"] == "converged", host.node
    assert len(served) >= HERD, len(served)
    assert all(served_at >= t0 for served_at in served)
    print(
        f"first polls over {offsets[-1]:.1f} s (jitter {JITTER_S} s): quarters {quarters},"
        f" KS {ks:.3f}, wake-up lateness max {max(late):.2f} s;"
        f" daemon served {len(served)} upload-pack requests"
    )


def test_the_daemon_log_counts_requests(tmp_path: Path) -> None:
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    with counting_git_daemon(tmp_path) as daemon:
        for _ in range(3):
            subprocess.run(
                ["git", "ls-remote", f"git://127.0.0.1:{daemon.port}/origin.git"],
                check=True,
                capture_output=True,
            )
        # Lines arrive through a pipe: give the last one a moment.
        deadline = time.monotonic() + 5
        while len(daemon.requests()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(daemon.requests()) == 3
    assert any(line.endswith("Request upload-pack for '/origin.git'") for _, line in daemon.lines)
