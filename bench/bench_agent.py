"""Benchmark the node agent: a no-op cycle against `git ls-remote`, and an idle agent's memory.

The script builds a live fleet in a temporary directory (tests/agent_testing.py: a bare
origin, real keys, a signed release whose components are an ONNX model with an `onnx`
health check, an application archive with an `exec` check and an activate hook, and a config
file), serves the origin over `git daemon` on 127.0.0.1, and converges two nodes on the
release with `edgefleet-agent once`: one whose `repo` is the `git://` URL, one whose `repo`
is the origin's path. Nothing changes at the origin afterwards. Then, for each origin, it
times, interleaved, best and median of `--rounds` rounds:

a. ``git ls-remote ORIGIN`` as a subprocess (wall time): the baseline, one round trip;
b. one no-op cycle of the running agent: ``Agent(config, log).once()`` in this long-lived
   process, the agent object created once (as ``edgefleet-agent run`` does) and its log
   written to /dev/null; every cycle must return exit code 0 and leave the journal's bytes
   unchanged;
c. ``edgefleet-agent once --config F`` as a fresh process (pays interpreter start-up and
   imports), for reference.

The target is (b) within 2x of (a), best against best. When it is missed (or with
``--profile``), each step of a cycle is timed on its own and some cycles are profiled with
cProfile, so that the section says where the time goes.

Then it measures the resident memory of ``edgefleet-agent run`` (pollInterval 1h, so it
idles after its first cycle), read from /proc/<pid>/status one second after the first
``cycle.done`` log line: VmRSS and VmHWM (the peak), for

i. a fresh node whose first cycle installs the release and so runs the ONNX check
   (onnxruntime and numpy are imported for it): does the resident set drop back?
ii. the already-converged node over ``git daemon``: its first cycle is a no-op, no check
    runs. This is the idle agent; the target is under 60 MB.

Each process must exit 0 on SIGTERM. When (ii) misses the target (or with ``--profile``), a
probe process reports the resident set after each import stage and one cycle, the top-level
packages loaded, and each third-party package's cost imported alone. The results replace the
``<!-- bench:agent -->`` section of ``bench/RESULTS.md``; other sections stay.

Usage::

    python bench/bench_agent.py [--rounds 20] [--profile] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from bench_validate import (  # noqa: E402
    Timing,
    machine_info,
    profile_rows,
    subprocess_job,
    timed,
    write_section,
)
from node_agent.agent import Agent  # noqa: E402
from node_agent.config import load_config  # noqa: E402
from node_agent.logs import configure  # noqa: E402

from tests.agent_testing import AGENT, LiveFleet, NodeAgent, git_daemon  # noqa: E402

RESULTS = HERE / "RESULTS.md"
SECTION = "bench:agent"
TARGET_RATIO = 2.0
TARGET_RSS_MB = 60.0
TIMEOUT_S = 120.0
PROFILE_CYCLES = 20

A = "(a) git ls-remote"
B = "(b) agent no-op cycle"
C = "(c) edgefleet-agent once"
A0 = "(a0) ls-remote, protocol v0"

MEM_HEADER = (
    "| process | VmRSS (MB) | VmHWM, peak (MB) | child processes | onnxruntime / numpy mapped"
    " | checks its first cycle ran | start to first `cycle.done` (s) | exit on SIGTERM |\n"
    "|---|---:|---:|---|---|---|---:|---:|"
)

# The probe: the idle agent's resident set after each stage, and the modules it holds.
PROBE_SCRIPT = """\
import json, os, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
stages = [("interpreter started", rss())]
import node_agent.cli
stages.append(("+ import node_agent.cli (what `edgefleet-agent` loads first)", rss()))
from node_agent.agent import Agent
from node_agent.logs import configure
stages.append(("+ import node_agent.agent, node_agent.logs (what `run` loads)", rss()))
config = node_agent.cli.load_config(__import__("pathlib").Path(sys.argv[1]))
log = configure(config.node, config.log_format, stream=open(os.devnull, "w"))
code = Agent(config, log).once().exit_code
stages.append((f"+ one no-op cycle (exit {code})", rss()))
print(json.dumps({"stages": stages, "modules": sorted(sys.modules)}))
"""

RSS_SCRIPT = """\
import sys
for name in sys.argv[1:]:
    try:
        __import__(name)
    except Exception:
        pass
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        print(int(line.split()[1]) / 1024)
"""


@dataclass
class Memory:
    """What one `edgefleet-agent run` process held, one second after its first cycle."""

    label: str
    rss_mb: float
    hwm_mb: float
    children_mb: float
    children: int
    onnx_loaded: bool
    numpy_loaded: bool
    first_cycle_s: float
    checks: list[str]
    exit_code: int


# --- setup ---------------------------------------------------------------------------------


def converge(node: NodeAgent) -> None:
    """One `edgefleet-agent once` that installs the release; the benchmark stops otherwise."""
    code, info = node.once()
    if code != 0 or info.get("state") != "converged" or info.get("release") != 1:
        sys.exit(
            f"bench_agent: {node.node} did not converge on release 1 (exit {code}, state"
            f" {info.get('state')}):\n{info.get('_stderr', '')}"
        )


class RunningAgent:
    """The agent object as `edgefleet-agent run` holds it, logging to /dev/null."""

    def __init__(self, node: NodeAgent, devnull: io.TextIOBase) -> None:
        self.node = node
        self.journal = node.state / "state.json"
        config = load_config(node.config)
        self.agent = Agent(config, configure(config.node, config.log_format, stream=devnull))
        self.before = self.journal.read_bytes()

    def cycle(self) -> None:
        code = self.agent.once().exit_code
        if code != 0:
            sys.exit(f"bench_agent: a no-op cycle of {self.node.node} exited {code}, expected 0")
        if self.journal.read_bytes() != self.before:
            sys.exit(f"bench_agent: a no-op cycle of {self.node.node} changed the journal")


# --- timing --------------------------------------------------------------------------------


def steps(running: RunningAgent, rounds: int) -> list[tuple[str, float]]:
    """Each step of a no-op cycle timed on its own, best of `rounds`, in seconds."""
    agent = running.agent
    transport = agent.transport
    journal = agent.journal_file.load(agent.config.node)

    def locked() -> None:
        with agent.locked():
            pass

    jobs: list[tuple[str, Callable[[], object]]] = [
        ("`Transport.remote_tags()`: `git ls-remote` through GitPython", transport.remote_tags),
        (
            "`Transport.local_tags()`: the local release tags through GitPython",
            transport.local_tags,
        ),
        (
            "`JournalFile.load` (read and parse state.json)",
            lambda: agent.journal_file.load(agent.config.node),
        ),
        ("`Agent.locked()`: take and drop the state directory's lock", locked),
        (
            "`Agent._write_metrics` (render and write metrics.prom)",
            lambda: _metrics(agent, journal),
        ),
    ]
    best: dict[str, float] = {label: float("inf") for label, _ in jobs}
    for _ in range(rounds):
        for label, job in jobs:
            best[label] = min(best[label], timed(job))
    return [(label, best[label]) for label, _ in jobs]


def _metrics(agent: Agent, journal: Any) -> None:
    agent._write_metrics(journal, 0)


# --- memory --------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found.append(child)
            found.extend(descendants(child))
    return found


def idle_memory(node: NodeAgent, label: str, log_file: Path) -> Memory:
    """Start `edgefleet-agent run`, wait for its first cycle, read its memory, SIGTERM it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_file.open("w") as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            [str(AGENT), "run", "--config", str(node.config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
    try:
        events: list[dict[str, Any]] = []
        deadline = started + TIMEOUT_S
        while not any(e.get("event") == "cycle.done" for e in events):
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(
                    f"bench_agent: `edgefleet-agent run` ({label}) ended or hung before its"
                    f" first cycle was done:\n{log_file.read_text()}"
                )
            time.sleep(0.05)
            events = [
                json.loads(line)
                for line in log_file.read_text().splitlines()
                if line.startswith("{") and line.endswith("}")
            ]
        first_cycle = time.monotonic() - started
        done = next(e for e in events if e.get("event") == "cycle.done")
        if done.get("exit_code") != 0:
            sys.exit(f"bench_agent: the first cycle ({label}) exited {done.get('exit_code')}")
        time.sleep(1.0)
        status = proc_status(proc.pid)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        kids = descendants(proc.pid)
        kids_mb = 0.0
        for kid in kids:
            with suppress(OSError):
                kids_mb += proc_status(kid).get("VmRSS", 0.0)
        checks = [
            f"{e.get('component')}: {e.get('kind')}"
            for e in events
            if e.get("event") == "health.check" and e.get("kind") != "hook"
        ]
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if code != 0:
        sys.exit(f"bench_agent: `edgefleet-agent run` ({label}) exited {code} on SIGTERM")
    return Memory(
        label,
        status["VmRSS"],
        status["VmHWM"],
        kids_mb,
        len(kids),
        "onnxruntime" in maps,
        "/numpy/" in maps,
        first_cycle,
        checks,
        code,
    )


def where_memory_goes(config: Path) -> tuple[list[tuple[str, float]], list[str], list[str]]:
    """The probe: resident set per stage, top-level packages loaded, third-party costs alone."""
    probe = subprocess.run(
        [sys.executable, "-c", PROBE_SCRIPT, str(config)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    if probe.returncode != 0:
        sys.exit(f"bench_agent: the memory probe failed:\n{probe.stderr}")
    report = json.loads(probe.stdout.splitlines()[-1])
    stages = [(label, float(mb)) for label, mb in report["stages"]]
    counts: dict[str, int] = {}
    for name in report["modules"]:
        top = name.split(".")[0]
        counts[top] = counts.get(top, 0) + 1
    stdlib = sys.stdlib_module_names
    ours = {"node_agent", "reconciler", "__main__", "cython_runtime"}
    third = sorted(
        (n for n in counts if n not in stdlib and n not in ours and not n.startswith("_")),
        key=lambda n: -counts[n],
    )
    stdlib_loaded = [n for n in counts if n in stdlib or n.startswith("_")]
    packages = [f"{n} ({counts[n]})" for n in third] + [
        f"stdlib: {len(stdlib_loaded)} top-level modules,"
        f" {sum(counts[n] for n in stdlib_loaded)} in all"
    ]
    bare = _rss_of([])
    costs: list[tuple[str, float]] = []
    for name in third:
        loaded = [m for m in report["modules"] if m == name or m.startswith(f"{name}.")]
        costs.append((name, _rss_of(loaded) - bare))
    costs.sort(key=lambda item: -item[1])
    cost_rows = [f"| `{n}` | {mb:+.1f} |" for n, mb in costs]
    everything = _rss_of([m for m in report["modules"] if m.split(".")[0] not in ours])
    cost_rows.append(
        f"| every module the probe held, ours excepted, together | {everything - bare:+.1f} |"
    )
    cost_rows.append(f"| bare interpreter, for reference | {bare:.1f} |")
    return stages, packages, cost_rows


def _rss_of(modules: list[str]) -> float:
    """Best of three: the resident set of a fresh interpreter after importing `modules`, MB."""
    values = []
    for _ in range(3):
        proc = subprocess.run(
            [sys.executable, "-c", RSS_SCRIPT, *modules],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0:
            return float("nan")
        values.append(float(proc.stdout.split()[-1]))
    return min(values)


# --- report --------------------------------------------------------------------------------


def render_section(
    timings: dict[str, dict[str, Timing]],
    origins: dict[str, str],
    memory: list[Memory],
    info: dict[str, str],
    args: argparse.Namespace,
    breakdown: dict[str, tuple[list[tuple[str, float]], list[str]]],
    probe: tuple[list[tuple[str, float]], list[str], list[str]] | None,
    setup_seconds: float,
) -> str:
    """The RESULTS.md section, markers included."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    verdicts = []
    for origin, by_label in timings.items():
        base = by_label[A]
        for label in (A, B, C, A0):
            t = by_label[label]
            rows.append(
                f"| {origin} | {t.label} | {t.command} | {t.best * 1e3:.1f} |"
                f" {t.median * 1e3:.1f} | {t.best / base.best:.2f}x |"
            )
        ratio = by_label[B].best / base.best
        met = "met" if ratio <= TARGET_RATIO else "NOT met"
        verdicts.append(
            f"- **{origin}: (b) no-op cycle / (a) ls-remote: {ratio:.2f}x** (target: within"
            f" {TARGET_RATIO:.0f}x, {met}); medians {by_label[B].median / base.median:.2f}x;"
            f" (c) fresh `once` / (a): {by_label[C].best / base.best:.2f}x;"
            f" (b) / (a0) protocol v0: {by_label[B].best / by_label[A0].best:.2f}x"
        )
    table = "\n".join(rows)
    where = ""
    for origin, (step_rows, profiled) in breakdown.items():
        b = timings[origin][B]
        missed = b.best / timings[origin][A].best > TARGET_RATIO
        why = "The target is missed" if missed else "Asked with --profile"
        lines = "\n".join(
            f"| {label} | {seconds * 1e3:.2f} | {seconds / b.best * 100:.0f}% |"
            for label, seconds in step_rows
        )
        where += f"""

{why} for {origin}. Where the time of (b) goes: each step timed on its own, best of
{args.rounds} (ms):

| step | best (ms) | of (b) best |
|---|---:|---:|
{lines}
| (b) whole, for reference | {b.best * 1e3:.2f} | 100% |
| (a) `git ls-remote` subprocess, for reference | {timings[origin][A].best * 1e3:.2f} | \
{timings[origin][A].best / b.best * 100:.0f}% |

{PROFILE_CYCLES} cycles under cProfile, the functions with the most own time (per cycle;
calls per cycle, ms):

| function | calls | own (ms) | share | cumulative (ms) |
|---|---:|---:|---:|---:|
{chr(10).join(profiled)}"""
    mem_rows = "\n".join(
        f"| {m.label} | {m.rss_mb:.1f} | {m.hwm_mb:.1f} | {m.children} ({m.children_mb:.1f} MB) |"
        f" {'yes' if m.onnx_loaded else 'no'} / {'yes' if m.numpy_loaded else 'no'} |"
        f" {', '.join(m.checks) or 'none'} | {m.first_cycle_s:.1f} | {m.exit_code} |"
        for m in memory
    )
    onnx, idle = memory
    rss_met = "met" if idle.rss_mb < TARGET_RSS_MB else "NOT met"
    drop = onnx.hwm_mb - onnx.rss_mb
    dropped = (
        "it does not drop back (modules once imported stay loaded, and freed heap is kept)"
        if onnx.rss_mb - idle.rss_mb > 5
        else "it drops back"
    )
    mem_notes = (
        f"- **idle agent (ii): VmRSS {idle.rss_mb:.1f} MB** (target: under {TARGET_RSS_MB:.0f}"
        f" MB, {rss_met}); peak {idle.hwm_mb:.1f} MB; onnxruntime loaded:"
        f" {'yes' if idle.onnx_loaded else 'no'}, numpy: {'yes' if idle.numpy_loaded else 'no'}\n"
        f"- after an ONNX check (i): VmRSS {onnx.rss_mb:.1f} MB, peak {onnx.hwm_mb:.1f} MB:"
        f" {drop:.1f} MB below its peak, {onnx.rss_mb - idle.rss_mb:+.1f} MB against the idle"
        f" agent (ii): {dropped}"
    )
    probe_text = ""
    if probe is not None:
        stages, packages, cost_rows = probe
        stage_rows = "\n".join(f"| {label} | {mb:.1f} |" for label, mb in stages)
        why = "The memory target is missed" if idle.rss_mb >= TARGET_RSS_MB else "With --profile"
        probe_text = f"""

{why}: where the idle agent's memory goes. A probe process (`python -c`, the same
imports as `edgefleet-agent run`, then one no-op cycle of the converged node over
`git daemon`) read its VmRSS after each stage (MB):

| stage | VmRSS (MB) |
|---|---:|
{stage_rows}

Third-party top-level packages it holds (modules loaded of each): {", ".join(packages)}.

Each package imported alone in a fresh interpreter (every one of its modules the probe
held), the resident set it adds (MB, best of 3; shared dependencies are counted in each):

| package | MB |
|---|---:|
{chr(10).join(cost_rows)}"""
    return f"""<!-- {SECTION} -->
## The node agent: a no-op cycle against `git ls-remote`, and idle memory

- Date: {stamp}
- Machine: {info["nproc"]} CPUs ({info["cpu"]}), {info["os"]}
- Python: {info["python"]}; {info["git"]}
- Fleet: `tests/agent_testing.py`'s `LiveFleet.standard()`: release 1 with an ONNX model
  (`onnx` check), an application archive (`exec` check, activate hook) and a config file;
  two nodes converged on it by `edgefleet-agent once` (setup {setup_seconds:.1f} s)
- Origins: {"; ".join(f"{k}: `{v}`" for k, v in origins.items())}
- Reproduce: `python bench/bench_agent.py --rounds {args.rounds}{
        " --profile" if args.profile else ""
    }` (with the project's virtualenv Python)

Nothing changes at the origin. Runs interleaved, {args.rounds} rounds; wall times in ms.
(b) runs in the benchmark's own long-lived process: one `Agent` per node, created once as
`edgefleet-agent run` does, its log written to /dev/null, every cycle checked to exit 0 and
to leave `state.json` byte for byte as it was. (a), (c) and (a0) are subprocesses. (a0) is
the baseline with git's older wire protocol v0 instead of v2 (git's default, which the
agent's own `git ls-remote` uses too): a reference for how much of (a) is the protocol.

| origin | measurement | what it runs | best | median | best / (a) |
|---|---|---|---:|---:|---:|
{table}

{chr(10).join(verdicts)}{where}

Resident memory of `edgefleet-agent run --config F` (pollInterval 1h), read from
`/proc/<pid>/status` one second after its first `cycle.done` log line; then SIGTERM. Child
processes (GitPython's persistent `git cat-file`) are counted apart, not in VmRSS.

{MEM_HEADER}
{mem_rows}

{mem_notes}{probe_text}
<!-- /{SECTION} -->
"""


def main(argv: list[str] | None = None) -> int:
    """Build the fleet and nodes, time the cycles, measure memory, record the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (20)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="break down the cycle's time and the idle memory even when the targets are met",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the section instead of updating RESULTS.md"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not AGENT.exists():
        sys.exit(
            f"bench_agent: {AGENT} not found; install the project (pip install -e .) and rerun"
            " with the same Python"
        )

    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-agent-") as tmp:
        base = Path(tmp)
        started = time.perf_counter()
        fleet = LiveFleet(base, nodes=("edge-1", "edge-2", "edge-3"))
        fleet.standard()
        fleet.publish()
        with git_daemon(fleet.origin.parent) as port, open(os.devnull, "w") as devnull:
            url = f"git://127.0.0.1:{port}/{fleet.origin.name}"
            origins = {"git daemon": url, "file path": str(fleet.origin)}
            shown_origins = {
                "git daemon": f"git://127.0.0.1:PORT/{fleet.origin.name}",
                "file path": f"TMP/{fleet.origin.name}",
            }
            nodes = {
                "git daemon": NodeAgent(fleet, "edge-1", repo_url=url),
                "file path": NodeAgent(fleet, "edge-2", repo_url=str(fleet.origin)),
            }
            for origin, node in nodes.items():
                node.write_config(origins[origin], pollInterval="1h", startJitter="0s")
                converge(node)
            setup_seconds = time.perf_counter() - started
            print(f"setup: fleet, release 1 and two converged nodes in {setup_seconds:.1f} s")

            running = {origin: RunningAgent(node, devnull) for origin, node in nodes.items()}
            jobs: dict[str, dict[str, Callable[[], float]]] = {}
            shown: dict[str, dict[str, str]] = {}
            for origin, node in nodes.items():
                agent = running[origin]
                jobs[origin] = {
                    A: subprocess_job(["git", "ls-remote", origins[origin]], A),
                    A0: subprocess_job(
                        ["git", "-c", "protocol.version=0", "ls-remote", origins[origin]], A0
                    ),
                    B: functools.partial(timed, agent.cycle),
                    C: subprocess_job([str(AGENT), "once", "--config", str(node.config)], C),
                }
                shown[origin] = {
                    A: "`git ls-remote ORIGIN` subprocess",
                    A0: "`git -c protocol.version=0 ls-remote ORIGIN`, for reference",
                    B: "`Agent(config, log).once()` in a long-lived process",
                    C: "`edgefleet-agent once --config F`, a fresh process",
                }
            # Untimed first runs: each must succeed, and they warm caches, .pyc files and the
            # agent's GitPython objects (a running agent has done its first cycle).
            for by_label in jobs.values():
                for job in by_label.values():
                    job()
            times = {o: {label: [] for label in by_label} for o, by_label in jobs.items()}
            for round_no in range(1, args.rounds + 1):
                for origin, by_label in jobs.items():
                    for label, job in by_label.items():
                        seconds = job()
                        times[origin][label].append(seconds)
                print(
                    f"round {round_no:>2}: "
                    + "; ".join(
                        f"{o}: "
                        + ", ".join(f"{lbl.split()[0]} {t[-1] * 1e3:.1f}" for lbl, t in ts.items())
                        for o, ts in times.items()
                    )
                    + " ms",
                    flush=True,
                )
            timings = {
                origin: {
                    label: Timing(label, shown[origin][label], times[origin][label])
                    for label in by_label
                }
                for origin, by_label in times.items()
            }
            breakdown = {}
            for origin, by_label in timings.items():
                if args.profile or by_label[B].best / by_label[A].best > TARGET_RATIO:
                    breakdown[origin] = (
                        steps(running[origin], args.rounds),
                        profile_rows(running[origin].cycle, PROFILE_CYCLES, 12, "ms"),
                    )
            del running  # the in-process agents hold no lock between cycles; drop them anyway

            fresh = NodeAgent(fleet, "edge-3", repo_url=url)
            fresh.write_config(url, pollInterval="1h", startJitter="0s")
            memory = [
                idle_memory(
                    fresh, "(i) fresh node: first cycle installs, runs the ONNX check", base / "i"
                ),
                idle_memory(
                    nodes["git daemon"],
                    "(ii) converged node (git daemon): first cycle is a no-op",
                    base / "ii",
                ),
            ]
            for m in memory:
                print(f"{m.label}: VmRSS {m.rss_mb:.1f} MB, VmHWM {m.hwm_mb:.1f} MB")
            probe = None
            if args.profile or memory[1].rss_mb >= TARGET_RSS_MB:
                probe = where_memory_goes(nodes["git daemon"].config)

    info = machine_info()
    info["git"] = subprocess.run(
        ["git", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    section = render_section(
        timings, shown_origins, memory, info, args, breakdown, probe, setup_seconds
    )
    print()
    print(section)
    if not args.no_write:
        write_section(section, RESULTS, SECTION)
        print(f"updated {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
