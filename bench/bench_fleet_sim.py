"""Simulate a fleet: N nodes polling the reference server, and a release going out to them.

Issue 9. For each N of ``--nodes``, the script builds a fleet of N nodes (tests/agent_testing.py's
`LiveFleet`: real keys, a signed trust root, one small config-file component `settings`, no
health checks), sets up the reference server (docs/deploy/reference-server.sh through
tests/reference_server.py: nginx, fcgiwrap, `git http-backend`, TLS, one basic-auth credential
per node, the `edgefleet hook pre-receive` hook, the artifact store as static files) from the
fleet's empty origin, and publishes release 1 to it over HTTPS as the operator.

A node is its own state directory, identity key, configuration and credential; a poll of a node
is one real ``edgefleet-agent once --json`` process run with that node's credential. 500
long-lived agents would not fit in this machine's memory, and a real fleet runs them on N
machines anyway, so a scheduler runs the polls with bounded concurrency (``--concurrency``),
every node polling once per round. Phases, each with the server's CPU seconds (its cgroup, or
nginx and fcgiwrap alone where it has none: see ``ReferenceServer.cpu_seconds``) and its access
log read before and after:

1. bootstrap: rounds until every node has converged on release 1 and reported it;
2. no-op: one round with nothing new, and the baseline in the same run: one
   ``git ls-remote URL 'refs/tags/release/*'`` per node with that node's credential, at the same
   concurrency;
3. release: release 2 (the settings component's next version: a new artifact) is published to
   the server, then rounds until every node's status branch on the server says release 2,
   converged; the time from the publication to the last node's poll that delivered it, the
   server's CPU in that window, and the bytes the server sent per node (access log, per user;
   an unauthenticated first request is the node's by its TLS connection);
4. status pushes: a round in which each node of a sample commits and pushes exactly one status
   commit (its ``heartbeatInterval`` set to 1s), so that the server's CPU per push is that round's
   less a no-op poll's, divided by the pushes the access log counts;
5. lost and failed pushes: every node's local ``status/<node>`` head against the server's, and
   the ``status.push_failed`` / ``status.push_refused`` events of every poll.

Then the bytes target: fleets of 10 and ``--big-fleet`` nodes in which ``--active`` nodes run, the
same settings change released in both, and what the server sent each node for it; with, for
information, what an unfiltered fetch of the same release tags costs.

No timing is asserted. The results replace the ``<!-- bench:fleet-sim -->`` section of
``bench/RESULTS.md``; other sections stay. ``--json-out FILE`` writes the raw figures.

Usage::

    python bench/bench_fleet_sim.py [--nodes 10,100,500] [--concurrency 4] [--big-fleet 10000]
                                    [--active 3] [--push-sample 100] [--json-out FILE]
                                    [--keep DIR] [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from bench_validate import machine_info, write_section  # noqa: E402

from tests.agent_testing import FLEET_NAME, LiveFleet, NodeAgent  # noqa: E402
from tests.reference_server import SCRIPT, ReferenceServer, reference_server  # noqa: E402

RESULTS = HERE / "RESULTS.md"
SECTION = "bench:fleet-sim"
RELEASE_REFS = "refs/tags/release/*"
# Rounds a phase may take before the script gives up on the nodes still behind.
MAX_ROUNDS = 3
# After a round, before reading the server's CPU: a backend that answered may still be exiting.
SETTLE_S = 0.3
POLL_TIMEOUT_S = 600.0
T = TypeVar("T")


# --- polls -------------------------------------------------------------------------------------


@dataclass
class Poll:
    """One `edgefleet-agent once --json` of one node."""

    node: str
    code: int
    started: float
    ended: float
    state: str | None = None
    release: int | None = None
    events: Counter[str] = field(default_factory=Counter)
    problem: str = ""

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def once(host: NodeAgent, env: dict[str, str]) -> Poll:
    started = time.monotonic()
    done = host.run("once", "--json", timeout=POLL_TIMEOUT_S, env=env)
    poll = Poll(host.node, done.returncode, started, time.monotonic())
    for line in done.stderr.splitlines():
        if line.startswith("{"):
            try:
                poll.events[json.loads(line).get("event", "?")] += 1
            except json.JSONDecodeError:
                continue
    try:
        info = json.loads(done.stdout)
        poll.state, poll.release = info.get("state"), info.get("release")
        if done.returncode != 0:
            poll.problem = str(info.get("lastError") or done.stderr.strip()[-400:])
    except json.JSONDecodeError:
        poll.problem = f"printed no JSON: {(done.stdout + done.stderr).strip()[-400:]}"
    return poll


def ls_remote(server: ReferenceServer, env: dict[str, str], *options: str) -> int:
    done = subprocess.run(
        ["git", "ls-remote", *options, server.git_url, RELEASE_REFS],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    return done.returncode


def in_parallel(jobs: Sequence[Callable[[], T]], concurrency: int) -> list[T]:
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(lambda job: job(), jobs))


# --- what the server saw -------------------------------------------------------------------


def kind_of(uri: str) -> str:
    if uri.startswith("/artifacts/"):
        return "artifacts"
    if "git-upload-pack" in uri:
        return "fetch"
    if "git-receive-pack" in uri:
        return "push"
    return "other"


@dataclass
class Traffic:
    """The access log of one phase, summed."""

    requests: Counter[str] = field(default_factory=Counter)
    sent: Counter[str] = field(default_factory=Counter)
    received: Counter[str] = field(default_factory=Counter)
    challenges: int = 0  # 401 answers to git's first, unauthenticated request
    bad: list[str] = field(default_factory=list)  # anything else that was not 2xx
    receive_packs: int = 0  # POST git-receive-pack answered 200: pushes delivered
    upload_packs: int = 0
    push_seconds: list[float] = field(default_factory=list)
    users: set[str] = field(default_factory=set)

    @property
    def git_sent(self) -> int:
        return self.sent["fetch"] + self.sent["push"]


def traffic(entries: Iterable[dict[str, Any]], users: set[str] | None = None) -> Traffic:
    """Sum `entries`; with `users`, only their requests (an anonymous request counts as the user
    who authenticated later on its TLS connection) and every artifact request."""
    entries = list(entries)
    owner = {e["connection"]: e["user"] for e in entries if e["user"]}
    out = Traffic()
    for e in entries:
        kind = kind_of(e["uri"])
        user = e["user"] or owner.get(e["connection"])
        if users is not None and kind != "artifacts" and user not in users:
            continue
        if user:
            out.users.add(user)
        out.requests[kind] += 1
        out.sent[kind] += e["bytes_sent"]
        out.received[kind] += e["request_length"]
        if e["status"] == 401 and kind != "artifacts":
            out.challenges += 1
        elif not 200 <= e["status"] < 300:
            out.bad.append(f"{e['status']} {e['method']} {e['uri']} ({user or 'anonymous'})")
        elif e["method"] == "POST" and kind == "push":
            out.receive_packs += 1
            out.push_seconds.append(e["request_time"])
        elif e["method"] == "POST" and kind == "fetch":
            out.upload_packs += 1
    return out


@dataclass
class Phase:
    name: str
    wall_s: float
    server_cpu_s: float
    agent_cpu_s: float  # this process's children: agents and git, for information
    traffic: Traffic
    entries: list[dict[str, Any]]
    # Loose objects in the served repository after the phase, and whether `git gc --auto`
    # (run by receive-pack after a push) packed them during it.
    loose_objects: int = 0
    gc_ran: bool = False
    # The machine's 1-minute load average at the end: other jobs share it.
    load: float = 0.0


def loose_objects(repo: Path) -> int:
    return sum(1 for d in (repo / "objects").glob("[0-9a-f][0-9a-f]") for _ in d.iterdir())


def measured(server: ReferenceServer, name: str, work: Callable[[], T]) -> tuple[T, Phase]:
    logged = len(server.access_log())
    loose = loose_objects(server.repo)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = server.cpu_seconds()
    started = time.monotonic()
    result = work()
    wall = time.monotonic() - started
    time.sleep(SETTLE_S)
    cpu = server.cpu_seconds() - cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    agent_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    entries = server.access_log()[logged:]
    now = loose_objects(server.repo)
    phase = Phase(
        name, wall, cpu, agent_cpu, traffic(entries), entries, now, now < loose, os.getloadavg()[0]
    )
    return result, phase


def server_status(server: ReferenceServer) -> dict[str, tuple[str, Any, Any]]:
    """node -> (head, release, state) of every status branch on the server."""
    heads = subprocess.run(
        [
            *("git", "--git-dir", str(server.repo), "for-each-ref"),
            *("--format=%(objectname) %(refname)", "refs/heads/status/"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    pairs = [line.split(" ", 1) for line in heads if line]
    if not pairs:
        return {}
    batch = subprocess.run(
        ["git", "--git-dir", str(server.repo), "cat-file", "--batch"],
        input="".join(f"{sha}:status.json\n" for sha, _ in pairs).encode(),
        capture_output=True,
        check=True,
    ).stdout
    found: dict[str, tuple[str, Any, Any]] = {}
    pos = 0
    for sha, ref in pairs:
        end = batch.index(b"\n", pos)
        header = batch[pos:end].split()
        pos = end + 1
        doc: dict[str, Any] = {}
        if len(header) == 3 and header[1] == b"blob":
            size = int(header[2])
            doc = json.loads(batch[pos : pos + size])
            pos += size + 1
        found[ref.removeprefix("refs/heads/status/")] = (sha, doc.get("release"), doc.get("state"))
    return found


def server_features(server: ReferenceServer) -> dict[str, Any]:
    """What of the server's configuration bears on the figures: whether git hides other nodes'
    status branches from a node (`receive.hideRefs` / `uploadpack.hideRefs`, in the served
    repository or per request from nginx), and which version of the setup script made it."""
    conf = (server.dir / "nginx.conf").read_text()
    repo = subprocess.run(
        ["git", "--git-dir", str(server.repo), "config", "--list"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.lower()
    found = {}
    for side in ("receive", "uploadpack"):
        found[f"{side}_hide_refs"] = (
            f"{side}.hiderefs" in conf.lower()
            or "transfer.hiderefs" in conf.lower()
            or f"{side}.hiderefs" in repo
            or "transfer.hiderefs" in repo
        )
    found["script_sha256"] = hashlib.sha256(SCRIPT.read_bytes()).hexdigest()[:12]
    return found


def local_head(host: NodeAgent) -> str | None:
    done = subprocess.run(
        [
            *("git", "--git-dir", str(host.state / "repo"), "rev-parse", "--verify"),
            *("--quiet", f"refs/heads/status/{host.node}"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or None


# --- one fleet ----------------------------------------------------------------------------------


class SimFleet:
    """A fleet of `n` nodes served by the reference server; `active` of them run."""

    def __init__(self, base: Path, n: int) -> None:
        self.nodes = tuple(f"node-{i:05d}" for i in range(n))
        started = time.monotonic()
        self.fleet = LiveFleet(base, nodes=self.nodes)
        self.fleet.config_file("1.0.0", "threshold = 1\n")
        self.fleet.use("settings", "settings@1.0.0")
        self.build_s = time.monotonic() - started
        self.hosts: dict[str, NodeAgent] = {}
        self.envs: dict[str, dict[str, str]] = {}
        self.polls: list[Poll] = []
        self.url = ""

    def publish(self, server: ReferenceServer) -> int:
        """Release the desired state and push main and the tag to the server over HTTPS as the
        operator (the pre-receive hook checks the tag's signature), then give every node of
        the pushed nodes/ its credential."""
        fleet = self.fleet
        fleet.sources = [server.artifacts_url]
        fleet.repo.remote("origin").set_url(server.git_url)
        with fleet.repo.git.custom_environment(
            GIT_CONFIG_GLOBAL=str(server.gitconfig("operator")),
            GIT_SSL_CAINFO=str(server.ca),
            GIT_TERMINAL_PROMPT="0",
        ):
            version = fleet.publish()
        server.add_users()
        return version

    def bump(self, server: ReferenceServer, version: str, text: str) -> int:
        self.fleet.config_file(version, text)
        self.fleet.use("settings", f"settings@{version}")
        return self.publish(server)

    def start(self, server: ReferenceServer, nodes: Iterable[str], pycache: Path) -> None:
        """Configure `nodes`. An installed agent imports compiled bytecode (pip compiles it
        on install); this environment says PYTHONDONTWRITEBYTECODE, so every agent process
        would compile the project's modules afresh: the agents cache bytecode under
        `pycache` instead (outside the source tree)."""
        self.url = server.git_url
        for node in nodes:
            host = NodeAgent(self.fleet, node, repo_url=server.git_url)
            self.hosts[node] = host
            env = server.env(node)
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(pycache)
            self.envs[node] = env

    def configure(self, nodes: Iterable[str], **extra: str) -> None:
        for node in nodes:
            self.hosts[node].write_config(self.url, **extra)

    def round(self, nodes: Sequence[str], concurrency: int) -> list[Poll]:
        polls = in_parallel(
            [lambda n=n: once(self.hosts[n], self.envs[n]) for n in nodes], concurrency
        )
        self.polls.extend(polls)
        return polls

    def until(
        self,
        server: ReferenceServer,
        release: int,
        nodes: Sequence[str],
        concurrency: int,
    ) -> tuple[dict[str, Poll], int]:
        """Poll rounds until the server shows every node of `nodes` converged on `release`;
        returns the poll that delivered it for each node, and the rounds."""
        reached: dict[str, Poll] = {}
        behind = list(nodes)
        rounds = 0
        while behind and rounds < MAX_ROUNDS:
            rounds += 1
            ends = {p.node: p for p in self.round(behind, concurrency)}
            shown = server_status(server)
            for node in behind:
                _, got, state = shown.get(node, (None, None, None))
                if got == release and state == "converged":
                    reached[node] = ends[node]
            behind = [n for n in behind if n not in reached]
        return reached, rounds


def per(value: float, count: int) -> float:
    return value / count if count else float("nan")


def pushes_failed(polls: Iterable[Poll]) -> int:
    return sum(p.events["status.push_failed"] + p.events["status.push_refused"] for p in polls)


def failures(polls: Iterable[Poll], limit: int = 20) -> tuple[int, list[dict[str, Any]]]:
    bad = [{"node": p.node, "code": p.code, "problem": p.problem} for p in polls if p.code != 0]
    return len(bad), bad[:limit]


def sample(nodes: Sequence[str], k: int) -> list[str]:
    """`k` nodes spread evenly over `nodes`."""
    if k >= len(nodes):
        return list(nodes)
    step = len(nodes) / k
    return [nodes[int(i * step)] for i in range(k)]


def bytes_per_node(t: Traffic, count: int) -> dict[str, float]:
    return {
        "git_fetch": per(t.sent["fetch"], count),
        "git_push": per(t.sent["push"], count),
        "git": per(t.git_sent, count),
        "artifacts": per(t.sent["artifacts"], count),
        "total": per(t.git_sent + t.sent["artifacts"], count),
        "uploaded_git": per(t.received["fetch"] + t.received["push"], count),
    }


def phase_summary(p: Phase, count: int, users: set[str] | None = None) -> dict[str, Any]:
    """A phase's figures, per node over `count` nodes (with `users`, their traffic alone)."""
    t = p.traffic if users is None else traffic(p.entries, users)
    return {
        "wall_s": p.wall_s,
        "server_cpu_s": p.server_cpu_s,
        "server_cpu_ms_per_node": 1000 * per(p.server_cpu_s, count),
        "agent_cpu_s": p.agent_cpu_s,
        "agent_cpu_ms_per_node": 1000 * per(p.agent_cpu_s, count),
        "requests": dict(t.requests),
        "requests_per_node": per(sum(t.requests.values()), count),
        "challenges_401": t.challenges,
        "bad_responses": t.bad[:20],
        "bad_response_count": len(t.bad),
        "receive_packs": t.receive_packs,
        "upload_packs": t.upload_packs,
        "bytes_per_node": bytes_per_node(t, count),
        "loose_objects_after": p.loose_objects,
        "gc_ran": p.gc_ran,
        "load_avg_1m": p.load,
    }


def noop_round(
    sim: SimFleet, server: ReferenceServer, nodes: Sequence[str], concurrency: int, repeat: int = 1
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], Phase, Phase]:
    """No-op polls of `nodes` against as many `git ls-remote URL 'refs/tags/release/*'` with the
    same credentials and concurrency (the baseline), `repeat` times interleaved; and, for
    information, `git ls-remote --tags` of the same pattern."""

    def calls(*options: str) -> Callable[[], list[int]]:
        return lambda: in_parallel(
            [lambda e=sim.envs[x]: ls_remote(server, e, *options) for x in nodes], concurrency
        )

    noops: list[tuple[list[Poll], Phase]] = []
    bases: list[tuple[list[int], Phase]] = []
    tagged: list[tuple[list[int], Phase]] = []
    for _ in range(repeat):
        noops.append(measured(server, "no-op", lambda: sim.round(nodes, concurrency)))
        bases.append(measured(server, "ls-remote", calls()))
        tagged.append(measured(server, "ls-remote --tags", calls("--tags")))
    polls = [p for ps, _ in noops for p in ps]
    count = len(polls)
    noop = merge([p for _, p in noops])
    summary = {
        **phase_summary(noop, count),
        "polls": count,
        "server_cpu_ms_per_poll": 1000 * per(noop.server_cpu_s, count),
        "server_cpu_ms_per_poll_runs": [1000 * per(p.server_cpu_s, len(nodes)) for _, p in noops],
        "exit_codes": dict(Counter(p.code for p in polls)),
        "pushes": noop.traffic.receive_packs,
        "poll_wall_ms_median": 1000 * statistics.median(p.seconds for p in polls),
    }

    def baseline(runs: list[tuple[list[int], Phase]]) -> tuple[dict[str, Any], Phase]:
        merged = merge([p for _, p in runs])
        return {
            **phase_summary(merged, count),
            "calls": count,
            "server_cpu_ms_per_call": 1000 * per(merged.server_cpu_s, count),
            "server_cpu_ms_per_call_runs": [
                1000 * per(p.server_cpu_s, len(nodes)) for _, p in runs
            ],
            "exit_codes": dict(Counter(c for cs, _ in runs for c in cs)),
        }, merged

    base, base_phase = baseline(bases)
    tags, _ = baseline(tagged)
    return summary, base, tags, noop, base_phase


def merge(phases: Sequence[Phase]) -> Phase:
    entries = [e for p in phases for e in p.entries]
    return Phase(
        phases[0].name,
        sum(p.wall_s for p in phases),
        sum(p.server_cpu_s for p in phases),
        sum(p.agent_cpu_s for p in phases),
        traffic(entries),
        entries,
        phases[-1].loose_objects,
        any(p.gc_ran for p in phases),
        max(p.load for p in phases),
    )


def push_round(
    sim: SimFleet,
    server: ReferenceServer,
    pushers: Sequence[str],
    concurrency: int,
    noop_cpu_per_poll: float,
) -> tuple[dict[str, Any], Phase]:
    """A round in which each of `pushers` commits and pushes exactly one status commit (its
    heartbeatInterval is 1s for that poll, and more than a second has passed): the server's CPU
    per push is the round's less a no-op poll's per poll, over the pushes the access log
    counts."""
    sim.configure(pushers, heartbeatInterval="1s")
    time.sleep(1.2)
    polls, push = measured(server, "pushes", lambda: sim.round(pushers, concurrency))
    sim.configure(pushers)
    pushes = push.traffic.receive_packs
    seconds = push.traffic.push_seconds
    return {
        **phase_summary(push, len(pushers)),
        "sample": len(pushers),
        "pushes": pushes,
        "pushed_events": sum(p.events["status.pushed"] for p in polls),
        "exit_codes": dict(Counter(p.code for p in polls)),
        "server_cpu_ms_per_push": 1000
        * per(push.server_cpu_s - noop_cpu_per_poll * len(pushers), pushes),
        "server_cpu_ms_per_push_poll": 1000 * per(push.server_cpu_s, len(pushers)),
        "receive_pack_request_s_median": statistics.median(seconds) if seconds else None,
    }, push


def hook_cpu(server: ReferenceServer, node: str, repeat: int = 7) -> dict[str, float]:
    """CPU milliseconds of the server's pre-receive hook alone, run as fcgiwrap runs it (a bare
    environment), the least of `repeat` runs: once for the node's last status commit (the update its
    last push made, checked again) and once with no update (start-up and imports only)."""
    head = f"refs/heads/status/{node}"
    git_dir = str(server.repo)
    new = subprocess.run(
        ["git", "--git-dir", git_dir, "rev-parse", head], capture_output=True, text=True
    ).stdout.strip()
    old = subprocess.run(
        ["git", "--git-dir", git_dir, "rev-parse", f"{head}~1"], capture_output=True, text=True
    ).stdout.strip()
    hook = server.repo / "hooks" / "pre-receive"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(server.dir / "home"),
        "LANG": "C.UTF-8",
        "GIT_DIR": git_dir,
        "REMOTE_USER": node,
    }
    out: dict[str, float] = {}
    for label, stdin in (("update", f"{old} {new} {head}\n"), ("startup", "")):
        spent = []
        for _ in range(repeat):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            done = subprocess.run(
                [str(hook)], input=stdin, capture_output=True, text=True, env=env, check=False
            )
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if done.returncode != 0:
                raise RuntimeError(f"the pre-receive hook refused {stdin!r}: {done.stderr}")
            spent.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        out[f"{label}_cpu_ms"] = 1000 * min(spent)
    return out


def lost_pushes(sim: SimFleet, server: ReferenceServer) -> list[str]:
    """Nodes whose local status branch head is not the server's."""
    shown = server_status(server)
    return [
        node for node, host in sim.hosts.items() if local_head(host) != shown.get(node, (None,))[0]
    ]


def simulate(base: Path, n: int, concurrency: int, push_sample: int) -> dict[str, Any]:
    """Every phase for a fleet of `n` nodes, every node running."""
    print(f"\n== N = {n}", flush=True)
    sim = SimFleet(base, n)
    out: dict[str, Any] = {"n": n, "concurrency": concurrency, "build_s": sim.build_s}
    with reference_server(base, sim.fleet.origin, sim.fleet.store) as server:
        out["cpu_accounting"] = server.cpu_accounting
        out["server"] = server_features(server)
        started = time.monotonic()
        _, pub = measured(server, "publish 1", lambda: sim.publish(server))
        out["publish1"] = {"wall_s": pub.wall_s, "server_cpu_s": pub.server_cpu_s}
        sim.start(server, sim.nodes, base.parent / "pycache")
        print(f"fleet, server and release 1 in {time.monotonic() - started + sim.build_s:.1f} s")

        (reached, rounds), boot = measured(
            server, "bootstrap", lambda: sim.until(server, 1, sim.nodes, concurrency)
        )
        out["bootstrap"] = {**phase_summary(boot, n), "rounds": rounds, "converged": len(reached)}
        print(
            f"bootstrap: {len(reached)}/{n} converged in {rounds} round(s), {boot.wall_s:.1f} s;"
            f" server CPU {boot.server_cpu_s:.2f} s;"
            f" {out['bootstrap']['bytes_per_node']['total']:.0f} B/node",
            flush=True,
        )

        out["noop"], out["ls_remote"], out["ls_remote_tags"], noop, lsr = noop_round(
            sim, server, sim.nodes, concurrency
        )
        out["noop_vs_ls_remote"] = per(noop.server_cpu_s, lsr.server_cpu_s)
        print(
            f"no-op: {out['noop']['server_cpu_ms_per_poll']:.2f} ms server CPU per poll,"
            f" ls-remote {out['ls_remote']['server_cpu_ms_per_call']:.2f} ms:"
            f" {out['noop_vs_ls_remote']:.2f}x ({noop.wall_s:.1f} s + {lsr.wall_s:.1f} s)",
            flush=True,
        )

        # The release: published, then rounds until the server shows every node on it.
        _, pub2 = measured(
            server, "publish 2", lambda: sim.bump(server, "1.1.0", "threshold = 2\n")
        )
        released = time.monotonic()
        (reached, rounds), rel = measured(
            server, "release", lambda: sim.until(server, 2, sim.nodes, concurrency)
        )
        times = sorted(p.ended - released for p in reached.values())
        took = sorted(p.seconds for p in reached.values())
        out["publish2"] = {"wall_s": pub2.wall_s, "server_cpu_s": pub2.server_cpu_s}
        out["release"] = {
            **phase_summary(rel, n),
            "rounds": rounds,
            "converged": len(reached),
            "convergence_s": times[-1] if len(reached) == n else None,
            "last_reported_s": times[-1] if times else None,
            "median_node_s": statistics.median(times) if times else None,
            "poll_s_median": statistics.median(took) if took else None,
            "poll_s_max": took[-1] if took else None,
            "pushes": rel.traffic.receive_packs,
        }
        print(
            f"release 2: {len(reached)}/{n} converged and reported in {rounds} round(s),"
            f" last at {times[-1] if times else float('nan'):.1f} s; server CPU"
            f" {rel.server_cpu_s:.2f} s; git {out['release']['bytes_per_node']['git']:.0f}"
            f" B/node, artifacts {out['release']['bytes_per_node']['artifacts']:.0f} B/node",
            flush=True,
        )

        pushers = sample(sim.nodes, push_sample)
        out["pushes"], push = push_round(
            sim, server, pushers, concurrency, per(noop.server_cpu_s, out["noop"]["polls"])
        )
        print(
            f"pushes: {push.traffic.receive_packs} from {len(pushers)} nodes,"
            f" {out['pushes']['server_cpu_ms_per_push']:.1f} ms server CPU each",
            flush=True,
        )

        out["pushes"]["hook"] = hook_cpu(server, pushers[0])
        lost = lost_pushes(sim, server)
        out["lost_pushes"] = len(lost)
        out["lost_nodes"] = lost[:20]
        out["failed_pushes"] = pushes_failed(sim.polls)
        out["bad_responses"] = sum(len(p.traffic.bad) for p in (boot, noop, lsr, rel, push))
        out["agent_failure_count"], out["agent_failures"] = failures(sim.polls)
        out["polls"] = len(sim.polls)
        print(
            f"lost pushes {len(lost)}, failed pushes {out['failed_pushes']},"
            f" bad responses {out['bad_responses']}, failed polls {out['agent_failure_count']}"
        )
    return out


# --- 10 against 10,000 ---------------------------------------------------------------------------


def git_fetch_bytes(
    server: ReferenceServer, env: dict[str, str], repo: Path, refspec: str, user: str
) -> int:
    """Bytes the server sent for one unfiltered `git fetch --depth=1` of `refspec` into `repo`."""
    logged = len(server.access_log())
    subprocess.run(
        ["git", "--git-dir", str(repo), "fetch", "--depth=1", "--no-tags", server.git_url, refspec],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=600,
    )
    return traffic(server.access_log()[logged:], {user}).git_sent


def object_size(server: ReferenceServer, rev: str) -> int | None:
    """Uncompressed size of the object `rev` names in the served repository."""
    done = subprocess.run(
        ["git", "--git-dir", str(server.repo), "cat-file", "-s", rev],
        capture_output=True,
        text=True,
        check=False,
    )
    return int(done.stdout) if done.returncode == 0 else None


def seed_status(server: ReferenceServer, nodes: Sequence[str], fleet: str) -> float:
    """One status commit per node of `nodes`, written straight into the server's repository
    (`git fast-import`, no hook, unsigned) and its refs packed as `git gc` would: the status
    branches the nodes that do not run here would have in a real fleet, so that every ref
    advertisement is the size it would be. Returns the seconds it took."""
    started = time.monotonic()
    stamp = int(time.time())
    chunks = []
    for node in nodes:
        doc = json.dumps(
            {
                "node": node,
                "fleet": fleet,
                "sequence": 2,
                "event": "change",
                "state": "converged",
                "release": 1,
                "commit": "0" * 40,
                "target": {"release": 1},
                "components": {"settings": {"artifact": "settings@1.0.0", "health": "ok"}},
                "lastError": None,
                "transfer": {"bytes": 14, "fullBytes": 14},
                "agentVersion": "sim",
                "observedAt": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "pollInterval": 60,
                "heartbeatInterval": 3600,
            },
            indent=2,
        ).encode()
        message = b"status: converged on release 1 (seeded by bench_fleet_sim)\n"
        chunks += [
            b"blob\nmark :1\n",
            b"data %d\n%s\n" % (len(doc), doc),
            b"commit refs/heads/status/%s\n" % node.encode(),
            b"committer %s <%s@%s> %d +0000\n"
            % (node.encode(), node.encode(), fleet.encode(), stamp),
            b"data %d\n%s\n" % (len(message), message),
            b"M 100644 :1 status.json\n\n",
        ]
    git_dir = str(server.repo)
    subprocess.run(
        ["git", "--git-dir", git_dir, "fast-import", "--quiet"],
        input=b"".join(chunks),
        capture_output=True,
        check=True,
    )
    subprocess.run(["git", "--git-dir", git_dir, "pack-refs", "--all"], check=True)
    return time.monotonic() - started


def compare(base: Path, size: int, active: int, concurrency: int) -> dict[str, Any]:
    """A fleet of `size` nodes of which `active` run: what each is sent for one release, and
    the server's CPU per no-op poll and per status push at that size."""
    print(f"\n== bytes: a fleet of {size} nodes, {active} of them running", flush=True)
    sim = SimFleet(base, size)
    out: dict[str, Any] = {"fleet": size, "active": active, "build_s": sim.build_s}
    with reference_server(base, sim.fleet.origin, sim.fleet.store) as server:
        out["cpu_accounting"] = server.cpu_accounting
        out["server"] = server_features(server)
        _, pub = measured(server, "publish 1", lambda: sim.publish(server))
        out["publish1"] = {"wall_s": pub.wall_s, "server_cpu_s": pub.server_cpu_s}
        runners = sample(sim.nodes, active)
        users = set(runners)
        others = [n for n in sim.nodes if n not in users]
        out["seeded_status_branches"] = len(others)
        out["seed_s"] = seed_status(server, others, FLEET_NAME)
        sim.start(server, runners, base.parent / "pycache")
        (reached, _), boot = measured(
            server, "bootstrap", lambda: sim.until(server, 1, runners, concurrency)
        )
        out["bootstrap"] = {**phase_summary(boot, active, users), "converged": len(reached)}
        _, pub2 = measured(
            server, "publish 2", lambda: sim.bump(server, "1.1.0", "threshold = 2\n")
        )
        out["publish2"] = {"wall_s": pub2.wall_s, "server_cpu_s": pub2.server_cpu_s}
        (reached, _), rel = measured(
            server, "release", lambda: sim.until(server, 2, runners, concurrency)
        )
        out["release"] = {**phase_summary(rel, active, users), "converged": len(reached)}

        # The server's cost per request at this size (htpasswd and allowed_signers grow with
        # the fleet): a few no-op rounds and one push round of the running nodes.
        out["noop"], out["ls_remote"], out["ls_remote_tags"], noop, lsr = noop_round(
            sim, server, runners, concurrency, repeat=5
        )
        out["noop_vs_ls_remote"] = per(noop.server_cpu_s, lsr.server_cpu_s)
        out["pushes"], _ = push_round(
            sim, server, runners, concurrency, per(noop.server_cpu_s, out["noop"]["polls"])
        )
        out["pushes"]["hook"] = hook_cpu(server, runners[0])

        # For information: the same release tags fetched without a filter, as the agent did
        # before the partial clone (`fetch --depth=1` of refs/tags/release/*).
        user = runners[0]
        env = server.env(user)
        full, fresh = base / "unfiltered.git", base / "unfiltered-fresh.git"
        for repo in (full, fresh):
            subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
        first = git_fetch_bytes(server, env, full, "+refs/tags/release/1:refs/tags/release/1", user)
        second = git_fetch_bytes(server, env, full, f"+{RELEASE_REFS}:{RELEASE_REFS}", user)
        both = git_fetch_bytes(server, env, fresh, f"+{RELEASE_REFS}:{RELEASE_REFS}", user)
        out["unfiltered"] = {
            "release1_fresh": first,
            "release2_after_release1": second,
            "both_fresh": both,
        }
        out["object_sizes"] = {
            name: object_size(server, rev)
            for name, rev in (
                ("release1_tag", "refs/tags/release/1"),
                ("release2_tag", "refs/tags/release/2"),
                ("nodes_tree", "refs/tags/release/1^{tree}:nodes"),
            )
        }
        lost = lost_pushes(sim, server)
        out["lost_pushes"] = len(lost)
        out["failed_pushes"] = pushes_failed(sim.polls)
        out["agent_failure_count"], out["agent_failures"] = failures(sim.polls)
        rb = out["release"]["bytes_per_node"]
        print(
            f"release 2: git {rb['git']:.0f} B/node (fetch {rb['git_fetch']:.0f}), artifacts"
            f" {rb['artifacts']:.0f}; unfiltered {second} B; bootstrap git"
            f" {out['bootstrap']['bytes_per_node']['git']:.0f} B/node, unfiltered {first} B;"
            f" no-op {out['noop']['server_cpu_ms_per_poll']:.1f} ms, push"
            f" {out['pushes']['server_cpu_ms_per_push']:.1f} ms server CPU",
            flush=True,
        )
    return out


# --- the section --------------------------------------------------------------------------------


def _n(value: float | None, digits: int = 0) -> str:
    """A number with thousands separators, or a dash."""
    if value is None or value != value:
        return "-"
    return f"{value:,.{digits}f}"


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def command(args: argparse.Namespace) -> str:
    if args.quick:
        return f"python bench/bench_fleet_sim.py --quick --big-fleet {args.big_fleet}"
    return (
        f"python bench/bench_fleet_sim.py --nodes {','.join(map(str, args.sizes))}"
        f" --concurrency {args.concurrency} --big-fleet {args.big_fleet} --active {args.active}"
        f" --push-sample {args.push_sample}"
    )


def fleet_rows(fleets: Sequence[dict[str, Any]]) -> tuple[str, str]:
    main, detail = [], []
    for f in fleets:
        rel, noop, lsr, push = f["release"], f["noop"], f["ls_remote"], f["pushes"]
        converged = (
            _n(rel["convergence_s"], 1)
            if rel["convergence_s"] is not None
            else f"{rel['converged']}/{f['n']} converged"
        )
        main.append(
            f"| {f['n']:,} | {_n(f['bootstrap']['bytes_per_node']['total'])} |"
            f" {_n(noop['server_cpu_ms_per_poll'], 2)} | {_n(lsr['server_cpu_ms_per_call'], 2)} |"
            f" **{f['noop_vs_ls_remote']:.2f}x** | {converged} |"
            f" {_n(push['server_cpu_ms_per_push'], 0)} |"
            f" {_n(rel['bytes_per_node']['git'])} | {_n(rel['bytes_per_node']['artifacts'])} |"
            f" {f['failed_pushes']} | **{f['lost_pushes']}** |"
        )
        gc = [name for name in ("bootstrap", "noop", "release", "pushes") if f[name]["gc_ran"]]
        detail.append(
            f"| {f['n']:,} | {_n(rel['server_cpu_s'], 1)} ({_n(rel['server_cpu_ms_per_node'])}) |"
            f" {per(rel['receive_packs'], f['n']):.1f} |"
            f" {rel['requests_per_node']:.0f} ({per(rel['challenges_401'], f['n']):.0f}) |"
            f" {_n(rel['poll_s_median'], 2)} / {_n(rel['poll_s_max'], 2)} |"
            f" {_n(rel['wall_s'], 0)} |"
            f" {_n(noop['agent_cpu_ms_per_node'])} / {_n(rel['agent_cpu_ms_per_node'])} |"
            f" {_n(noop['bytes_per_node']['git'])} |"
            f" {_n(push['hook']['update_cpu_ms'])} ({_n(push['hook']['startup_cpu_ms'])}) |"
            f" {_n(f['bootstrap']['server_cpu_ms_per_node'])} |"
            f" {', '.join(gc) or 'no'} |"
        )
    return "\n".join(main), "\n".join(detail)


def bytes_rows(compared: Sequence[dict[str, Any]]) -> str:
    rows = []
    for c in compared:
        rel, boot, un = (
            c["release"]["bytes_per_node"],
            c["bootstrap"]["bytes_per_node"],
            c["unfiltered"],
        )
        rows.append(
            f"| {c['fleet']:,} ({c['active']}) | {c['seeded_status_branches'] + c['active']:,} |"
            f" **{_n(rel['git'])}** | {_n(rel['git_fetch'])} | {_n(rel['git_push'])} |"
            f" {_n(rel['artifacts'])} | {_n(un['release2_after_release1'])} |"
            f" {_n(boot['git'])} | {_n(un['release1_fresh'])} |"
            f" {_n(c['noop']['bytes_per_node']['git'])} |"
            f" {_n(c['ls_remote_tags']['bytes_per_node']['git'])} |"
            f" {_n(c['noop']['server_cpu_ms_per_poll'], 1)} /"
            f" {_n(c['ls_remote']['server_cpu_ms_per_call'], 1)} |"
            f" {_n(c['pushes']['server_cpu_ms_per_push'])}"
            f" ({_n(c['pushes']['hook']['update_cpu_ms'])}) |"
        )
    return "\n".join(rows)


MAIN_HEAD = (
    "| N | bootstrap: bytes/node | no-op poll: server CPU ms/poll | `git ls-remote`: server CPU"
    " ms/call | no-op / ls-remote | release: publication to last node reported, s |"
    " server CPU ms per status push | release: git bytes/node | release: artifact bytes/node |"
    " failed pushes | lost pushes |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)
DETAIL_HEAD = (
    "| N | release window: server CPU s (ms per node) | release: pushes per node |"
    " release: requests per node (401 challenges) | one node's release poll, s (median / max) |"
    " release round wall, s | agent CPU ms per poll: no-op / release | no-op poll: bytes |"
    " pre-receive hook CPU ms (start-up alone) | bootstrap: server CPU ms per node |"
    " `git gc --auto` ran in |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)
BYTES_HEAD = (
    "| fleet (running) | status branches on the server | release: git bytes/node |"
    " of which ls-remote + fetch | of which pushes | artifact bytes/node |"
    " unfiltered fetch of release 2 after 1 | bootstrap: git bytes/node |"
    " unfiltered fetch of release 1 | no-op poll: bytes | `ls-remote --tags`: bytes |"
    " server CPU ms: no-op poll / ls-remote | server CPU ms per push (hook) |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _hides(x: dict[str, Any], side: str) -> str:
    """Whether the server hid other nodes' status branches from a node on `side`."""
    found = x.get("server", {}).get(f"{side}_hide_refs")
    return "not recorded" if found is None else ("yes" if found else "no")


def _without_listing(c: dict[str, Any]) -> float:
    """Bytes per node for the release had the poll's `ls-remote` sent a `refs/tags/` prefix:
    the release's bytes, less a no-op poll's, plus an `ls-remote --tags`. An estimate."""
    rel = c["release"]["bytes_per_node"]
    return (
        rel["git"]
        + rel["artifacts"]
        - c["noop"]["bytes_per_node"]["git"]
        + c["ls_remote_tags"]["bytes_per_node"]["git"]
    )


def _adverts(small: dict[str, Any], big: dict[str, Any], ratio: float) -> str:
    """What grows with the fleet in what a node is sent for a release, from the figures."""
    listed = big["noop"]["bytes_per_node"]["git"]
    prefixed = big["ls_remote_tags"]["bytes_per_node"]["git"]
    pushes = (
        big["release"]["bytes_per_node"]["git_push"],
        small["release"]["bytes_per_node"]["git_push"],
    )
    lines = [
        f"""- The partial clone does its part: the objects of a release do not grow with the
  fleet (even an unfiltered fetch of release 2 on top of release 1 is
  {_n(big["unfiltered"]["release2_after_release1"])} B at {big["fleet"]:,} nodes and
  {_n(small["unfiltered"]["release2_after_release1"])} B at {small["fleet"]:,})."""
    ]
    if listed > 10 * prefixed:
        estimate = per(_without_listing(big), _without_listing(small))
        lines.append(
            f"""  What grows is a **ref listing**: the agent's `git ls-remote URL
  'refs/tags/release/*'` (a tail-matched pattern, so git cannot send the server a prefix;
  it asks for every ref and filters them itself) lists every node's `status/<node>` branch on
  every poll: {_n(listed)} B per no-op poll at {big["fleet"]:,} nodes, against
  {_n(prefixed)} B for `git ls-remote --tags` of the same pattern, which sends the server a
  `refs/tags/` prefix. With that one option the release would cost about
  {_n(_without_listing(big))} B per node at {big["fleet"]:,} nodes against
  {_n(_without_listing(small))} B at {small["fleet"]:,}, **{estimate:.1f}x** (an estimate:
  the release's bytes, less a no-op poll's listing, plus an `ls-remote --tags`); a no-op poll
  would cost the server {_n(big["ls_remote_tags"]["server_cpu_ms_per_call"], 1)} ms of CPU
  instead of {_n(big["noop"]["server_cpu_ms_per_poll"], 1)} ms. `uploadpack.hideRefs` on the
  server, per node as for pushes, would do the same without the agent. A node's first
  poll lists every ref twice (the release tags, then its own status branch before its first
  status commit): {_n(2 * listed)} B of the {_n(big["bootstrap"]["bytes_per_node"]["git"])} B
  its bootstrap costs at {big["fleet"]:,} nodes, where an unfiltered fetch of release 1 is
  {_n(big["unfiltered"]["release1_fresh"])} B."""
        )
    if pushes[0] > 10 * max(pushes[1], 1):
        lines.append(
            f"""  Each status push also receives the server's full ref advertisement
  (`git-receive-pack` has no ref filter): {_n(pushes[0])} B of pushes per node per release
  at {big["fleet"]:,} nodes against {_n(pushes[1])} B at {small["fleet"]:,}; hiding other
  nodes' branches from a node (`receive.hideRefs` of `refs/heads/status/` with
  `!refs/heads/status/<that node>`, per request from `$remote_user`) fixes it."""
        )
    elif _hides(big, "receive") == "yes":
        lines.append(
            f"""  Status pushes do not grow ({_n(pushes[0])} B per node per release at
  {big["fleet"]:,} nodes, {_n(pushes[1])} B at {small["fleet"]:,}): the server hides other
  nodes' status branches from a node's push (`receive.hideRefs`, per request)."""
        )
    if len(lines) == 1:
        lines.append(f"  Nothing else grows much: {ratio:.1f}x in all.")
    return "\n".join(lines)


def section(args: argparse.Namespace, results: dict[str, Any]) -> str:
    info = results["machine"]
    stamp = results.get("date") or dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    fleets, compared = results["fleets"], results["bytes"]
    main_rows, detail_rows = fleet_rows(fleets)
    small, big = compared[0], compared[-1]
    rel_small, rel_big = small["release"]["bytes_per_node"], big["release"]["bytes_per_node"]
    ratio = per(rel_big["git"] + rel_big["artifacts"], rel_small["git"] + rel_small["artifacts"])
    fetch_ratio = per(rel_big["git_fetch"], rel_small["git_fetch"])
    push_ratio = per(rel_big["git_push"], rel_small["git_push"])
    noop_ok = all(f["noop_vs_ls_remote"] <= 2 for f in fleets)
    lost = sum(f["lost_pushes"] for f in fleets)
    failed = sum(f["failed_pushes"] for f in fleets) + sum(c["failed_pushes"] for c in compared)
    lost += sum(c["lost_pushes"] for c in compared)
    largest = fleets[-1]
    rel = largest["release"]
    per_node_s = per(rel["server_cpu_s"], largest["n"])
    noop_s = largest["noop"]["server_cpu_ms_per_poll"] / 1000
    push_ms = largest["pushes"]["server_cpu_ms_per_push"]
    hook = largest["pushes"]["hook"]
    cores = int(info["nproc"])
    ten_k = 10_000
    release_10k = ten_k * per_node_s
    noop_10k = ten_k / 60 * noop_s
    accounting = {
        "cgroup": "its own cgroup's `cpu.stat`: nginx, fcgiwrap, `git http-backend`, upload-pack,"
        " receive-pack, `git gc --auto` and the pre-receive hook, every process of the server",
        "proc": "`/proc` of nginx and fcgiwrap and their reaped children only: **git's own"
        " processes are not counted** (no cgroup could be made), so every server CPU figure is"
        " low",
    }[largest["cpu_accounting"]]
    failures = sum(f["agent_failure_count"] for f in fleets) + sum(
        c["agent_failure_count"] for c in compared
    )
    bad = sum(f["bad_responses"] for f in fleets)
    pushes_per_node = per(rel["receive_packs"], largest["n"])
    ratios = ", ".join(f"{f['noop_vs_ls_remote']:.2f}x" for f in fleets)
    adverts = _adverts(small, big, ratio)
    loads = [
        x[name]["load_avg_1m"]
        for x in [*fleets, *compared]
        for name in ("bootstrap", "noop", "release", "pushes")
        if "load_avg_1m" in x.get(name, {})
    ]
    load = (
        f"; shared with other jobs: 1-minute load average {min(loads):.1f} to {max(loads):.1f}"
        " at the end of the phases"
        if loads
        else ""
    )
    noop_ms = [f["noop"]["server_cpu_ms_per_poll"] for f in fleets]
    noop_each = ", ".join(
        f"{_n(ms, 1)} ms at N = {f['n']:,}" for ms, f in zip(noop_ms, fleets, strict=True)
    )
    at_big = (
        f"{_n(big['noop']['server_cpu_ms_per_poll'], 1)} ms among {big['fleet']:,} status"
        f" branches (packed), where `ls-remote --tags` costs"
        f" {_n(big['ls_remote_tags']['server_cpu_ms_per_call'], 1)} ms and a plain `ls-remote`"
        f" {_n(big['ls_remote']['server_cpu_ms_per_call'], 1)} ms"
    )
    if max(noop_ms) > 1.5 * min(noop_ms):
        noop_growth = (
            f"It grows with the fleet: {noop_each} (status branches as loose refs, as"
            f" receive-pack writes them); {at_big}"
        )
    else:
        noop_growth = f"It hardly grows with the fleet: {noop_each}; {at_big}"
    hook_small = small["pushes"]["hook"]["update_cpu_ms"]
    hook_big = big["pushes"]["hook"]["update_cpu_ms"]
    hook_growth = (
        f"The hook grows with the fleet ({_n(hook_small)} ms at {small['fleet']:,} nodes,"
        f" {_n(hook_big)} ms at {big['fleet']:,}: for each push it reads and"
        " parses every node's key in `trust/allowed_signers` on the main branch and lists"
        " `nodes/`), and so does the push"
        if hook_big > 1.3 * hook_small
        else f"The hook costs {_n(hook_small)} ms at {small['fleet']:,} nodes and"
        f" {_n(hook_big)} ms at {big['fleet']:,}; the push"
    )
    boot_small = small["bootstrap"]["bytes_per_node"]["git"]
    boot_big = big["bootstrap"]["bytes_per_node"]["git"]
    sizes = big.get("object_sizes") or {}
    if sizes.get("release1_tag") and sizes.get("nodes_tree"):
        why = (
            f"release 1's signed tag lists every file of the fleet with its digest"
            f" ({_n(sizes['release1_tag'])} B uncompressed at {big['fleet']:,} nodes, against"
            f" {_n(sizes.get('release2_tag'))} B for the chained release 2) and the `nodes/`"
            f" tree names every node ({_n(sizes['nodes_tree'])} B)"
        )
    else:
        why = (
            "release 1's signed tag lists every file of the fleet with its digest (later"
            " releases are chained: only what changed) and the `nodes/` tree names every node"
        )
    first_clone = (
        f"- A node's first clone does grow with the fleet: {_n(boot_small)} B of git at"
        f" {small['fleet']:,} nodes, {_n(boot_big)} B at {big['fleet']:,}, against"
        f" {_n(big['unfiltered']['release1_fresh'])} B for an unfiltered fetch there: {why}."
        " A node pays it once."
        if boot_big > 2 * boot_small
        else ""
    )
    gc_phases = [
        f"N = {f['n']:,} {name}"
        for f in fleets
        for name in ("bootstrap", "noop", "release", "pushes")
        if f[name]["gc_ran"]
    ]
    gc_note = (
        f"; `git gc --auto` (run by receive-pack after a push) packed the served repository"
        f" during {', '.join(gc_phases)}, and its CPU is in that phase's figures"
        if gc_phases
        else ""
    )
    dearer = (
        ", and more for the dearer pushes of a big fleet"
        if big["pushes"]["server_cpu_ms_per_push"] > 1.3 * push_ms
        else ""
    )
    tag_ratios = ", ".join(
        f"{per(f['noop']['server_cpu_s'], f['ls_remote_tags']['server_cpu_s']):.2f}x"
        for f in fleets
        if "ls_remote_tags" in f
    )
    servers = {json.dumps(x.get("server"), sort_keys=True) for x in [*fleets, *compared]}
    hiding = "; ".join(
        f"{side}.hideRefs for nodes: {_hides(big, side)}" for side in ("receive", "uploadpack")
    )
    if len(servers) > 1:
        hiding = (
            "**the setup script changed during the run** (another engineer's work in progress),"
            " so the fleets were served differently: "
            + "; ".join(
                f"{x.get('n', x.get('fleet')):,}: receive.hideRefs"
                f" {_hides(x, 'receive')}, uploadpack.hideRefs {_hides(x, 'uploadpack')}"
                for x in [*fleets, *compared]
            )
        )
    return f"""<!-- {SECTION} -->
## A simulated fleet against the reference server (issue 9)

- Date: {stamp}; the run took {results["elapsed_s"] / 60:.1f} min
- Machine: {info["nproc"]} CPUs ({info["cpu"]}), {info["os"]}{load}
- Python: {info["python"]}; git {info["git"]}; nginx {info["nginx"]}
- Server: `docs/deploy/reference-server.sh` through `tests/reference_server.py` (nginx with 2
  workers, TLS, basic auth, one credential per node; fcgiwrap with 8 children running
  `git http-backend`; the `edgefleet hook pre-receive --require-user` hook; the artifact store
  as static files), on 127.0.0.1; {hiding}. Server CPU is read from {accounting}.
- Fleet: `tests/agent_testing.py`'s `LiveFleet` with N nodes, one component `settings` (a
  14-byte config file), no health checks, chained releases; release 1 is `settings@1.0.0`,
  release 2 `settings@1.1.0` (a new artifact). Each release is pushed to the server over HTTPS
  by the operator's credential (the hook checks its signature).
- Agents: **each node is its own state directory, identity key, configuration and
  credential; each poll is one real `edgefleet-agent once --json` process for that node**,
  with that node's credential. A long-lived agent holds about 49 MB (`bench:agent`), so 500
  of them would not fit in this machine's {info["memory_gib"]} GiB next to the server, and a
  real fleet has a machine per node anyway: a scheduler runs the polls, {args.concurrency} at
  a time, each node once per round. Agents share the {info["nproc"]} CPUs with the server.
  They cache their bytecode outside the source tree (`PYTHONPYCACHEPREFIX`), as an installed
  agent would have it compiled.
- Reproduce: `{command(args)}` (with the project's virtualenv Python; `--json-out FILE`
  writes every raw figure)

Phases per N: bootstrap (rounds until every node is converged on release 1 and has reported
it); a no-op round (nothing new) and its baseline, one `git ls-remote URL 'refs/tags/release/*'`
per node with that node's credential at the same concurrency; the release (publish release
2, then rounds until every node's `status/<node>` branch on the server holds a `status.json`
with release 2, converged: the time is from the moment the tag was on the server to the end of
the poll that delivered the last node's status); a push round in which
{largest["pushes"]["sample"]} nodes (spread over the fleet) each commit and push exactly one
status commit (`heartbeatInterval: 1s` for that poll): server CPU per push = (the round's
CPU - a no-op poll's times the polls) / `git-receive-pack` POSTs counted in the access log.
The hook's own CPU is the least of 7 runs of it by hand, as fcgiwrap runs it, on a node's last
update (and with no update: start-up and imports). Bytes are what the server sent
(`$bytes_sent`), per node from the access log; git's first, unauthenticated request on each
connection (401) counts for the node that authenticates next on it. Lost pushes: nodes whose
local `status/<node>` head differs from the server's at the end; failed pushes:
`status.push_failed` / `status.push_refused` events of every poll.

{MAIN_HEAD}
{main_rows}

{DETAIL_HEAD}
{detail_rows}

- **no-op poll / `git ls-remote`, server CPU: {ratios}**
  at N = {", ".join(f"{f['n']:,}" for f in fleets)} (target: within 2x, {_met(noop_ok)});
  against `git ls-remote --tags` of the same pattern (a `refs/tags/` prefix sent to the
  server): {tag_ratios or "not measured"}
- **lost status pushes: {lost}; failed: {failed}** over every poll of every phase and fleet
  (target: zero lost at every N, {_met(lost == 0)}); HTTP answers other than 2xx and git's
  401 challenges: {bad}; polls that did not exit 0: {failures}

### Bytes per node per release: {small["fleet"]:,} against {big["fleet"]:,} nodes

A fleet of each size is built and served the same way; {big["active"]} of its nodes
(spread over it) run, the others' status branches are on the server as they would be in a
real fleet (one commit each, written straight into the served repository with
`git fast-import`, refs packed as `git gc` would). The same change is released in both
(settings 1.0.0 → 1.1.0) and the running nodes poll until they have reported it. For
information, the same release tags fetched without a filter by one node's credential
(`git fetch --depth=1` of `refs/tags/release/*`, as the agent did before the partial clone).

{BYTES_HEAD}
{bytes_rows(compared)}

- **bytes per node for the release, {big["fleet"]:,} / {small["fleet"]:,} nodes:
  {ratio:.1f}x** (target: within 2x, {_met(ratio <= 2)}); the ls-remote and fetch side alone
  {fetch_ratio:.1f}x, the status pushes alone {push_ratio:.1f}x
- server CPU per status push at {big["fleet"]:,} nodes:
  {_n(big["pushes"]["server_cpu_ms_per_push"])} ms, at {small["fleet"]:,}:
  {_n(small["pushes"]["server_cpu_ms_per_push"])} ms

### What this says

{adverts}
{first_clone}
- Server CPU per no-op poll is that of the `git ls-remote` it is made of (two requests, each
  a `git http-backend` process, plus the 401 challenge that git's first request on a
  connection always gets, since git sends a credential only when asked for one; git 2.46's
  `http.proactiveAuth` would save that round trip). {noop_growth}. At
  {_n(noop_s * 1000, 1)} ms, {ten_k:,} nodes polling every 60 s would keep
  {noop_10k:.1f} of this machine's {cores} CPUs busy doing nothing.
- A status push costs the server {_n(push_ms)} ms of CPU at N = {largest["n"]:,}, of which
  the pre-receive hook is {_n(hook["update_cpu_ms"])} ms and its Python start-up and imports
  alone {_n(hook["startup_cpu_ms"])} ms. {hook_growth}
  ({_n(small["pushes"]["server_cpu_ms_per_push"])} ms and
  {_n(big["pushes"]["server_cpu_ms_per_push"])} ms). A release means {pushes_per_node:.1f}
  pushes per node (`applying`, then `converged`), about {_n(pushes_per_node * push_ms)} ms at
  that rate, against **{_n(per_node_s * 1000)} ms of server CPU per node per release**
  measured at N = {largest["n"]:,} ({_n(rel["server_cpu_s"], 1)} CPU-seconds in the release
  window): the figure that projects to bigger fleets. At that rate a release to {ten_k:,}
  nodes costs the server at least {_n(release_10k)} CPU-seconds,
  {release_10k / cores / 60:.0f} minutes of both CPUs of this machine, however the nodes
  spread their polls{dearer}; a hook that starts
  faster and reads only the pushing node's key (or a long-lived one) is the first lever.
- The convergence time is this machine's, not the design's: every poll runs here, on the
  same {cores} CPUs as the server, {args.concurrency} at a time, each costing the agent
  {_n(largest["noop"]["agent_cpu_ms_per_node"])} ms of CPU for a no-op and
  {_n(rel["agent_cpu_ms_per_node"])} ms for the release, so the last node reports about
  (N times that) / {cores} CPUs after the release. On N machines each node takes its own poll
  ({_n(rel["poll_s_median"], 2)} s median here, under load), so a real fleet converges within
  about one poll interval plus that, for as long as the server keeps up with the CPU above.
- Caveats: one machine, loopback network, no latency or loss; the server's CPU is measured
  while the agents (and, here, other jobs: see the load average above) compete for the same
  CPUs: CPU time, not wall time, yet a busy machine inflates it too (caches, frequency), so
  compare ratios taken in one run; N = {largest["n"]:,} is the largest fleet in which every
  node runs, the {big["fleet"]:,}-node figures come from {big["active"]} running nodes among
  seeded branches;
  the agent's push after `applying` and after `converged` is the agent's design, measured as
  it is{gc_note}.
<!-- /{SECTION} -->
"""


def versions() -> dict[str, str]:
    git = subprocess.run(["git", "--version"], capture_output=True, text=True, check=False)
    nginx = subprocess.run(
        [shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin") or "nginx", "-v"],
        capture_output=True,
        text=True,
        check=False,
    )
    memory = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) // (1024 * 1024)
    return {
        "memory_gib": str(memory),
        "git": git.stdout.strip().removeprefix("git version "),
        "nginx": nginx.stderr.strip().rpartition("/")[2],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--nodes", default="10,100,500", help="fleet sizes, every node running (10,100,500)"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="agent processes at a time (4)")
    parser.add_argument(
        "--big-fleet",
        type=int,
        default=None,
        help="the large fleet of the bytes comparison against 10 nodes (10000; 200 with --quick)",
    )
    parser.add_argument(
        "--active", type=int, default=3, help="nodes running in the bytes comparison (3)"
    )
    parser.add_argument(
        "--push-sample",
        type=int,
        default=100,
        help="nodes of each fleet that push in the status-push round (100)",
    )
    parser.add_argument("--json-out", type=Path, help="write the raw figures here as JSON")
    parser.add_argument("--keep", type=Path, help="work in this (new or empty) folder and keep it")
    parser.add_argument("--quick", action="store_true", help="N = 10 only: a smoke run")
    parser.add_argument(
        "--from-json",
        type=Path,
        help="run nothing: write the section again from the raw figures of an earlier"
        " --json-out (with that run's options)",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the section instead of updating RESULTS.md"
    )
    args = parser.parse_args(argv)
    if args.from_json is not None:
        return rewrite(args)
    try:
        sizes = [int(x) for x in args.nodes.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--nodes: expected numbers separated by commas, got {args.nodes!r}")
    if args.quick:
        sizes = [10]
    if args.big_fleet is None:
        args.big_fleet = 200 if args.quick else 10_000
    if not sizes or min(*sizes, args.concurrency, args.active, args.push_sample) < 1:
        parser.error("every number must be at least 1")
    args.sizes = sizes
    if args.keep is not None:
        if args.keep.exists() and any(args.keep.iterdir()):
            parser.error(f"--keep: expected a new or empty folder, found {args.keep} not empty")
        args.keep.mkdir(parents=True, exist_ok=True)
        work = args.keep.resolve()
    else:
        # Short: the server's socket path must stay under 108 bytes.
        work = Path(tempfile.mkdtemp(prefix="efsim-", dir="/tmp"))
    started = time.monotonic()
    results: dict[str, Any] = {"fleets": [], "bytes": []}
    try:
        for n in sizes:
            results["fleets"].append(
                simulate(work / f"n{n}", n, args.concurrency, args.push_sample)
            )
        for size in (10, args.big_fleet):
            results["bytes"].append(compare(work / f"b{size}", size, args.active, args.concurrency))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    results["elapsed_s"] = time.monotonic() - started
    results["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    results["machine"] = {**machine_info(), **versions()}
    results["args"] = {
        "sizes": sizes,
        "concurrency": args.concurrency,
        "big_fleet": args.big_fleet,
        "active": args.active,
        "push_sample": args.push_sample,
        "quick": args.quick,
    }
    print(f"\ndone in {results['elapsed_s'] / 60:.1f} min")
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(results, indent=1, default=str) + "\n")
        print(f"wrote {args.json_out}")
    return publish(section(args, results), args.no_write, "")


def rewrite(args: argparse.Namespace) -> int:
    """The section again from an earlier run's raw figures, with that run's options."""
    results = json.loads(args.from_json.read_text())
    if "date" not in results:
        written = dt.datetime.fromtimestamp(args.from_json.stat().st_mtime, dt.UTC)
        results["date"] = written.strftime("%Y-%m-%d %H:%M UTC")
    saved = results["args"]

    def value(key: str) -> Any:
        raw = saved[key]
        return (
            json.loads(raw.lower() if raw in ("True", "False") else raw)
            if isinstance(raw, str)
            else raw
        )

    ran = argparse.Namespace(
        **{k: value(k) for k in ("sizes", "concurrency", "big_fleet", "active", "push_sample")},
        quick=value("quick"),
    )
    return publish(section(ran, results), args.no_write, f" from {args.from_json}")


def publish(text: str, no_write: bool, source: str) -> int:
    """Print the section, or write it into RESULTS.md."""
    if no_write:
        print(text)
    else:
        write_section(text, RESULTS, SECTION)
        print(f"updated {RESULTS}{source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
