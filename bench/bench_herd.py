"""Benchmark a herd: N agents returning at once after an outage, against a local `git daemon`.

Issue 8, point 5: when many nodes come back at once, their first polls are spread by
`startJitter` and their retries by jittered exponential backoff. The script builds a live
fleet of N nodes in a temporary directory (tests/agent_testing.py's `LiveFleet`: a bare
origin, real keys, one signed release whose only component is a small config file), serves
it with `git daemon --verbose` on 127.0.0.1 (every request stamped as it arrives), and runs N
agents, each with its own state directory, identity key and configuration. The agents are
threads of this process, each running the real `node_agent.poll_loop.poll_loop` with a real
`Agent`: N Python processes would swamp a small machine, and "at once" is then one barrier.
Each agent stops after the poll the experiment waits for. Two experiments:

1. First polls. All agents start at the same instant with the origin up, once with
   ``startJitter 0s`` (the baseline: everyone at once) and once with ``startJitter
   --jitter`` seconds. Reported: when each agent's first cycle began (as the agent decided:
   this is the policy), per one-second bucket; the peak first polls in any one-second window;
   the ratio of the peaks (no jitter / jitter). The daemon's own view (upload-pack requests a
   second) is shown too, but on one machine it is bounded by how fast this process serves N
   simulated nodes, not by the policy.
2. Retries. All agents start at once (``startJitter 0s``, so that only the backoff spreads
   them) with the daemon down; after ``--outage`` seconds the daemon comes up on the same
   port. Reported: when each agent's first successful cycle began, counted from the moment
   the daemon was up; the peak reconnections in any one-second window; the failed polls the
   down origin saw. Three policies, on the same code: the agent's own (full jitter, uniform
   between the floor and the ceiling); equal jitter (uniform between half the ceiling and
   the ceiling, the agent's previous policy) and no jitter (always the ceiling: lockstep),
   both obtained by giving `poll_loop` a random generator whose `uniform` is skewed.

No timing is asserted. The results replace the ``<!-- bench:herd -->`` section of
``bench/RESULTS.md``; other sections stay.

Usage::

    python bench/bench_herd.py [--agents 200] [--jitter 20] [--outage 20] [--interval 2]
                               [--max-backoff 16] [--no-write]
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import io
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from bench_validate import machine_info, write_section  # noqa: E402
from node_agent.agent import Agent  # noqa: E402
from node_agent.config import AgentConfig, load_config  # noqa: E402
from node_agent.logs import configure  # noqa: E402
from node_agent.poll_loop import Poll, poll_loop, retry_ceiling, retry_floor  # noqa: E402

from tests.agent_testing import LiveFleet, NodeAgent, free_port  # noqa: E402
from tests.test_herd import counting_git_daemon  # noqa: E402

RESULTS = HERE / "RESULTS.md"
SECTION = "bench:herd"
# Beyond the experiment's own length: how long N first installs may take on a slow machine.
GRACE_S = 240.0


class EqualJitter(random.Random):
    """Equal jitter, the agent's previous retry policy: uniform(ceiling / 2, ceiling)."""

    def uniform(self, a: float, b: float) -> float:
        return super().uniform(max(a, b / 2), b)


class Lockstep(random.Random):
    """No jitter at all: every draw is the top of its range, so a retry waits the ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


@dataclass
class Run:
    """One herd: every agent's cycles, from the instant they all started."""

    t0: float
    polls: dict[str, list[Poll]]
    stragglers: list[str] = field(default_factory=list)

    def first(self) -> list[float]:
        return sorted(p[0].started - self.t0 for p in self.polls.values() if p)

    def first_success(self, since: float) -> list[float]:
        return sorted(
            next(p.started for p in cycles if p.exit_code == 0) - since
            for cycles in self.polls.values()
            if any(p.exit_code == 0 for p in cycles)
        )


class Herd:
    """N nodes of one fleet, each with its folder, key and configuration."""

    def __init__(self, base: Path, agents: int) -> None:
        self.nodes = tuple(f"store-{i:04d}" for i in range(agents))
        self.fleet = LiveFleet(base, nodes=self.nodes)
        self.fleet.config_file("1.0.0", "threshold = 1\n")
        self.fleet.use("settings", "settings@1.0.0")
        self.version = self.fleet.publish()
        self.hosts = [NodeAgent(self.fleet, node) for node in self.nodes]
        self.out = io.StringIO()
        self.log = configure("herd", "json", stream=self.out)

    def configs(self, url: str, **settings: str) -> list[AgentConfig]:
        """Fresh state for every node (a node back from an outage, or a new one) and its
        configuration with `settings`."""
        configs = []
        for host in self.hosts:
            shutil.rmtree(host.state, ignore_errors=True)
            host.write_config(url, **settings)
            configs.append(load_config(host.config))
        return configs

    def run(
        self,
        configs: Sequence[AgentConfig],
        done: Callable[[Poll], bool],
        rng: Callable[[int], random.Random],
        meanwhile: Callable[[ExitStack, float], None],
        timeout: float,
    ) -> Run:
        """Start every agent's loop at one instant; each stops after a poll `done` accepts.
        `meanwhile(stack, t0)` runs in this thread once they are off (to bring a daemon up)."""
        polls: dict[str, list[Poll]] = {c.node: [] for c in configs}
        stops = {c.node: threading.Event() for c in configs}
        barrier = threading.Barrier(len(configs) + 1)

        def agent(cfg: AgentConfig, seed: int) -> None:
            log = self.log.bind(node=cfg.node)
            mine, stop = polls[cfg.node], stops[cfg.node]

            def on_poll(poll: Poll) -> None:
                mine.append(poll)
                if done(poll):
                    stop.set()

            live = Agent(cfg, log)
            barrier.wait()
            poll_loop(live, cfg, log, stop, rng(seed), on_poll)

        threads = [
            threading.Thread(target=agent, args=(cfg, i), daemon=True)
            for i, cfg in enumerate(configs)
        ]
        for thread in threads:
            thread.start()
        with ExitStack() as stack:
            barrier.wait()
            t0 = time.monotonic()
            meanwhile(stack, t0)
            deadline = t0 + timeout
            while any(not s.is_set() for s in stops.values()) and time.monotonic() < deadline:
                time.sleep(0.1)
            stragglers = [n for n, s in stops.items() if not s.is_set()]
            for stop in stops.values():
                stop.set()
            for thread in threads:
                thread.join(timeout=120)
        return Run(t0, polls, stragglers=stragglers)


# --- figures -----------------------------------------------------------------------------------


def peak(times: Sequence[float], window: float = 1.0) -> int:
    """The most events in any window of `window` seconds (`times` sorted)."""
    return max((bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


def buckets(times: Sequence[float]) -> Counter[int]:
    return Counter(int(t // 1) for t in times)


def quantile(times: Sequence[float], q: float) -> float:
    if len(times) < 2:
        return times[0] if times else float("nan")
    return statistics.quantiles(times, n=100, method="inclusive")[round(q * 100) - 1]


def histogram(columns: Mapping[str, Sequence[float]], label: str) -> str:
    counts = {name: buckets(times) for name, times in columns.items()}
    last = max((max(c) for c in counts.values() if c), default=0)
    first = min((min(c) for c in counts.values() if c), default=0)
    head = f"| {label} | " + " | ".join(columns) + " |"
    rule = "|---:|" + "---:|" * len(columns)
    rows = [
        f"| {s} | " + " | ".join(str(c[s]) if c[s] else "" for c in counts.values()) + " |"
        for s in range(first, last + 1)
    ]
    return "\n".join([head, rule, *rows])


# --- the experiments -------------------------------------------------------------------------


@dataclass
class FirstPolls:
    label: str
    run: Run
    served: list[float]
    unreachable: Counter[str]

    @property
    def first(self) -> list[float]:
        return self.run.first()


def first_polls(herd: Herd, jitter: int, agents: int) -> FirstPolls:
    def nothing(_stack: ExitStack, _t0: float) -> None:
        # The daemon is up all along: the agents return to an origin that never left.
        pass

    with counting_git_daemon(herd.fleet.origin.parent) as daemon:
        url = f"git://127.0.0.1:{daemon.port}/{herd.fleet.origin.name}"
        configs = herd.configs(url, pollInterval="1h", startJitter=f"{jitter}s")
        before = len(daemon.lines)
        logged = len(herd.out.getvalue())
        run = herd.run(
            configs,
            done=lambda poll: True,
            rng=lambda seed: random.Random(),
            meanwhile=nothing,
            timeout=jitter + GRACE_S,
        )
        served = [
            at - run.t0 for at, line in daemon.lines[before:] if "Request upload-pack" in line
        ]
    label = f"startJitter {jitter}s" if jitter else "startJitter 0s (baseline)"
    codes = Counter(p[0].exit_code for p in run.polls.values() if p)
    first = run.first()
    # Why first polls failed, as the agents logged it (the origin's address made generic).
    events = [json.loads(line) for line in herd.out.getvalue()[logged:].splitlines()]
    unreachable = Counter(
        str(e.get("reason", "")).replace(url, "ORIGIN")
        for e in events
        if e.get("event") == "fetch.unreachable"
    )
    print(
        f"{label}: {len(first)}/{agents} first polls over {first[-1] - first[0]:.1f} s,"
        f" peak {peak(first)}/s; exit codes {dict(codes)}; daemon peak {peak(served)}/s;"
        f" unreachable: {dict(unreachable)}",
        flush=True,
    )
    return FirstPolls(label, run, served, unreachable)


@dataclass
class Reconnect:
    label: str
    run: Run
    up_at: float
    failures_before_up: int

    @property
    def back(self) -> list[float]:
        return self.run.first_success(self.up_at)


def reconnect(
    herd: Herd, label: str, rng: Callable[[int], random.Random], args: argparse.Namespace
) -> Reconnect:
    port = free_port()
    url = f"git://127.0.0.1:{port}/{herd.fleet.origin.name}"
    configs = herd.configs(
        url, pollInterval=f"{args.interval}s", startJitter="0s", maxBackoff=f"{args.max_backoff}s"
    )
    up: list[float] = []

    def outage(stack: ExitStack, t0: float) -> None:
        time.sleep(max(0.0, t0 + args.outage - time.monotonic()))
        stack.enter_context(counting_git_daemon(herd.fleet.origin.parent, port))
        up.append(time.monotonic())

    run = herd.run(
        configs,
        done=lambda poll: poll.exit_code == 0,
        rng=rng,
        meanwhile=outage,
        timeout=args.outage + 4 * args.max_backoff + GRACE_S,
    )
    failures = sum(1 for c in run.polls.values() for p in c if p.exit_code and p.started < up[0])
    result = Reconnect(label, run, up[0], failures)
    back = result.back
    print(
        f"{label}: {len(back)}/{len(configs)} back over {back[-1] - back[0]:.1f} s after the"
        f" daemon came up, peak {peak(back)}/s; {failures} failed polls during the outage",
        flush=True,
    )
    return result


# --- the section -----------------------------------------------------------------------------

FIRST_HEAD = (
    "| run | first polls | earliest (s) | latest (s) | median (s) | peak first polls in 1 s"
    " | failed: origin unreachable | daemon peak requests in 1 s |"
    "\n|---|---:|---:|---:|---:|---:|---:|---:|"
)
BACK_HEAD = (
    "| retry policy | back | median (s) | 90th percentile (s) | last (s)"
    " | peak back in 1 s, each run | peak back in 1 s | failed polls during the outage |"
    "\n|---|---:|---:|---:|---:|---:|---:|---:|"
)


def _failures(f: FirstPolls) -> str:
    if not f.unreachable:
        return f"- {f.label}: every first poll reached the origin"
    why = "; ".join(f"{n} x `{reason}`" for reason, n in f.unreachable.most_common(3))
    return f"- {f.label}: {sum(f.unreachable.values())} first polls failed: {why}"


def section(
    args: argparse.Namespace,
    info: dict[str, str],
    git_version: str,
    setup_s: float,
    firsts: list[FirstPolls],
    backs: dict[str, list[Reconnect]],
) -> str:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    base, jittered = firsts
    base_peak, jit_peak = peak(base.first), peak(jittered.first)
    first_rows = "\n".join(
        f"| {f.label} | {len(f.first)} | {f.first[0]:.2f} | {f.first[-1]:.2f} |"
        f" {quantile(f.first, 0.5):.1f} | **{peak(f.first)}** |"
        f" {sum(1 for p in f.run.polls.values() if p and p[0].exit_code == 75)} |"
        f" {peak(f.served)} |"
        for f in firsts
    )

    # Each figure is the median over the runs of a policy: one run's peak second is noisy.
    def mid(values: Sequence[float]) -> float:
        return statistics.median(values)

    peaks = {label: [peak(r.back) for r in runs] for label, runs in backs.items()}
    back_rows = "\n".join(
        f"| {label} | {sum(len(r.back) for r in runs)} |"
        f" {mid([quantile(r.back, 0.5) for r in runs]):.1f} |"
        f" {mid([quantile(r.back, 0.9) for r in runs]):.1f} |"
        f" {max(r.back[-1] for r in runs):.1f} |"
        f" {', '.join(map(str, peaks[label]))} | **{mid(peaks[label]):g}** |"
        f" {mid([r.failures_before_up for r in runs]):g} |"
        for label, runs in backs.items()
    )
    full = next(label for label in backs if label.startswith("full"))
    others = [label for label in backs if label != full]
    ratios = "; ".join(
        f"{label}: {mid(peaks[label]):g} / {mid(peaks[full]):g} ="
        f" {mid(peaks[label]) / max(mid(peaks[full]), 1):.1f}x"
        for label in others
    )
    medians = "; ".join(
        f"{label} {mid([quantile(r.back, 0.5) for r in runs]):.1f} s"
        for label, runs in backs.items()
    )
    failed = {label: mid([r.failures_before_up for r in runs]) for label, runs in backs.items()}
    runs_n = len(backs[full])
    pooled = {label: [t for r in runs for t in r.back] for label, runs in backs.items()}
    command = (
        f"python bench/bench_herd.py --agents {args.agents} --jitter {args.jitter}"
        f" --outage {args.outage} --interval {args.interval} --max-backoff {args.max_backoff}"
        f" --repeat {args.repeat}"
    )
    ceilings = sorted({retry_ceiling(args.interval, f, args.max_backoff) for f in range(1, 8)})
    return f"""<!-- {SECTION} -->
## Returning together (issue 8)

- Date: {stamp}
- Machine: {info["nproc"]} CPUs ({info["cpu"]}), {info["os"]}
- Python: {info["python"]}; {git_version}
- Fleet: `tests/agent_testing.py`'s `LiveFleet` with {args.agents} nodes; release 1 holds
  one small config file, so every first poll clones, verifies, installs and reports
  (setup {setup_s:.1f} s)
- Agents: {args.agents}, each with its own state directory, identity key and
  configuration; threads of one process running the real `poll_loop` and `Agent` (that many
  Python processes would swamp {info["nproc"]} CPUs), all released by one barrier; fresh
  state directories for each run. Origin: `git daemon --verbose --max-connections=0` on
  127.0.0.1, every request stamped as it arrives.
- Reproduce: `{command}` (with the project's virtualenv Python)

### First polls: startJitter {args.jitter}s against everyone at once

A first poll's time is when its cycle began, counted from the instant all agents started:
the policy's decision. "daemon peak" counts upload-pack requests at the origin in any one
second (a fresh node's poll makes three); on one machine it is bounded by how fast this
process serves {args.agents} simulated nodes, so it is shown, not compared.

{FIRST_HEAD}
{first_rows}

- **peak first polls per second, no jitter / startJitter {args.jitter}s: {base_peak} /
  {jit_peak} = {base_peak / max(jit_peak, 1):.1f}x**. A uniform spread puts
  {args.agents / args.jitter:.0f} in each second on average.
- With startJitter 0s every agent decided to poll at once; the baseline still spreads over
  {base.first[-1]:.1f} s because {args.agents} threads of one process take that long to
  get going. Nodes on their own CPUs would all poll in the same second, so the ratio
  understates the difference.
{_failures(base)}
{_failures(jittered)}

First polls per one-second bucket (second after the start):

{histogram({f.label: f.first for f in firsts}, "second")}

### Retries: the origin down for {args.outage} s, then back on the same port

pollInterval {args.interval}s, maxBackoff {args.max_backoff}s, startJitter 0s (all start
together, so only the backoff spreads them). The retry ceiling after 1, 2, 3... failures:
{", ".join(f"{c:g}" for c in ceilings)} s; the floor {retry_floor(args.interval, 1e9):g} s.
Times are counted from the moment the daemon was up; "back" is the start of an agent's first
successful cycle. Each policy ran {runs_n} times, interleaved; a figure is the median of its
runs, "back" the total. Equal jitter (uniform between half the ceiling and the ceiling, the
agent's previous policy) and no jitter (always the ceiling) are the same loop given a
random generator whose draws are skewed (`EqualJitter`, `Lockstep` in bench_herd.py).

{BACK_HEAD}
{back_rows}

- **peak reconnections per second against full jitter (the agent's policy): {ratios}**
- median time to reconnect: {medians}
- failed polls while the origin was down: {"; ".join(f"{o} {failed[o]:g}" for o in backs)}.
  Full jitter's mean wait is the middle of [floor, ceiling], equal jitter's three quarters of
  the ceiling: full jitter knocks more often on a door that is shut, each knock a refused
  connection, the price of coming back sooner.
- Without jitter every agent retries at the same instants: the origin meets the herd at
  each retry and again when it returns. Here the lockstep is already loosened by the time
  {args.agents} threads take to fail their first cycle, so real nodes would be in tighter
  step than measured.

Reconnections per one-second bucket (second after the daemon was up), the {runs_n} runs of
each policy summed:

{histogram(pooled, "second")}
<!-- /{SECTION} -->
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=200, help="agents in the herd (200)")
    parser.add_argument("--jitter", type=int, default=20, help="startJitter, seconds (20)")
    parser.add_argument("--outage", type=int, default=20, help="seconds the origin is down (20)")
    parser.add_argument("--interval", type=int, default=2, help="pollInterval, seconds (2)")
    parser.add_argument("--max-backoff", type=int, default=16, help="maxBackoff, seconds (16)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each retry policy (3); medians reported"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the section instead of updating RESULTS.md"
    )
    args = parser.parse_args(argv)
    if min(args.agents, args.jitter, args.outage, args.interval, args.max_backoff, args.repeat) < 1:
        parser.error("every number must be at least 1")
    git_version = subprocess.run(
        ["git", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-herd-") as tmp:
        started = time.monotonic()
        herd = Herd(Path(tmp), args.agents)
        setup_s = time.monotonic() - started
        print(f"setup: fleet of {args.agents} nodes and release {herd.version} in {setup_s:.1f} s")
        firsts = [first_polls(herd, j, args.agents) for j in (0, args.jitter)]
        policies: list[tuple[str, Callable[[int], random.Random]]] = [
            ("no jitter (lockstep)", Lockstep),
            ("equal jitter (previous)", EqualJitter),
            ("full jitter (the agent's)", lambda seed: random.Random()),
        ]
        backs: dict[str, list[Reconnect]] = {label: [] for label, _ in policies}
        # Interleaved, so that a slow spell of the machine does not fall on one policy.
        for _ in range(args.repeat):
            for label, rng in policies:
                backs[label].append(reconnect(herd, label, rng, args))
    for run in [f.run for f in firsts] + [r.run for runs in backs.values() for r in runs]:
        if run.stragglers:
            sys.exit(
                f"bench_herd: {len(run.stragglers)} agents never finished: {run.stragglers[:5]}"
            )
    text = section(args, machine_info(), git_version, setup_s, firsts, backs)
    if args.no_write:
        print(text)
    else:
        write_section(text, RESULTS, SECTION)
        print(f"updated {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
