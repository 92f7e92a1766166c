"""Benchmark ``edgefleet validate`` on a large generated fleet against YAML parsing alone.

The script generates a fleet (10,000 nodes and 50 groups by default) in a temporary
directory, then times, in the same run and each as its own subprocess so that
interpreter start-up is counted equally:

a. ``safe_load``: a Python process that reads every ``.yaml`` file of the fleet and
   parses it with ``yaml.safe_load`` (PyYAML's pure-Python SafeLoader) and nothing else;
b. ``CSafeLoader``: the same with ``yaml.load(data, Loader=yaml.CSafeLoader)`` (libyaml);
c. ``edgefleet validate DIR --format json``.

Runs are interleaved (a, b, c, a, b, c, ...) so that drift in machine load hits all
three alike; the best and the median of ``--repeat`` runs are reported, and the
ratios validate / safe_load and validate / CSafeLoader. The results replace the
``<!-- bench:validate -->`` section of ``bench/RESULTS.md``; other sections stay.

No time is asserted: machines are noisy, so the ratio against a baseline measured
in the same run is the figure to compare. The run does fail (exit 1) when validate
does not exit 0 on the generated fleet, because then the timing means nothing.

Usage::

    python bench/bench_validate.py [--nodes 10000] [--groups 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gen_fleet import generate_fleet  # noqa: E402

RESULTS = HERE / "RESULTS.md"
SECTION = "bench:validate"
TARGET_RATIO = 3.0
TARGET_WALL_S = 15.0
TIMEOUT_S = 600.0

# The baselines: read every .yaml file under the fleet and parse it, nothing else.
PARSE_SCRIPT = """\
import sys
from pathlib import Path
import yaml
root = Path(sys.argv[1])
count = 0
for path in sorted(root.rglob("*.yaml")):
    data = path.read_text(encoding="utf-8")
    {parse}
    count += 1
print(count)
"""
SAFE_LOAD = PARSE_SCRIPT.format(parse="yaml.safe_load(data)")
CSAFE_LOAD = PARSE_SCRIPT.format(parse="yaml.load(data, Loader=yaml.CSafeLoader)")


@dataclass
class Timing:
    """Wall times of one measured command over the repeats."""

    label: str
    command: str
    times: list[float]

    @property
    def best(self) -> float:
        """Fastest run, in seconds."""
        return min(self.times)

    @property
    def median(self) -> float:
        """Median run, in seconds."""
        return statistics.median(self.times)


def find_edgefleet(explicit: str | None) -> Path | None:
    """Locate the ``edgefleet`` console script: the flag, next to this Python, or PATH."""
    if explicit:
        return Path(explicit)
    beside = Path(sys.executable).parent / "edgefleet"
    if beside.exists():
        return beside
    found = shutil.which("edgefleet")
    return Path(found) if found else None


def run_timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run a command to completion and return its wall time and result."""
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    return time.perf_counter() - start, proc


def timed(job: Callable[[], object]) -> float:
    """Wall time of one call of `job`, in this process."""
    start = time.perf_counter()
    job()
    return time.perf_counter() - start


def subprocess_job(argv: list[str], label: str) -> Callable[[], float]:
    """A job that runs `argv` and returns its wall time; a failing run stops the benchmark."""

    def job() -> float:
        seconds, proc = run_timed(argv)
        if proc.returncode != 0:
            prog = Path(sys.argv[0]).stem or "bench"
            sys.exit(f"{prog}: {label} exited {proc.returncode}:\n{proc.stderr}")
        return seconds

    return job


def describe_problems(proc: subprocess.CompletedProcess[str], limit: int = 20) -> str:
    """Return the first problems a failed validate run reported, as readable lines."""
    lines: list[str] = []
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        report = None
    problems = None
    if isinstance(report, dict):
        problems = report.get("problems") or report.get("errors")
    elif isinstance(report, list):
        problems = report
    if isinstance(problems, list):
        # Errors first: they are why validate failed.
        problems = sorted(
            problems, key=lambda p: isinstance(p, dict) and p.get("severity") == "warning"
        )
        lines.append(f"{len(problems)} problem(s) reported; the first {min(limit, len(problems))}:")
        for problem in problems[:limit]:
            if isinstance(problem, dict):
                where = f"{problem.get('file', '?')}:{problem.get('line', '?')}"
                severity = problem.get("severity", "error")
                lines.append(f"  {where}: {severity}: {problem.get('message', problem)}")
            else:
                lines.append(f"  {problem}")
    else:
        lines.extend(proc.stdout.splitlines()[:limit])
    lines.extend(proc.stderr.splitlines()[:limit])
    return "\n".join(lines)


def summarize_verdict(proc: subprocess.CompletedProcess[str], root: Path) -> str:
    """Summarize a successful validate run: its exit status and the warnings it gave."""
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return f"exit {proc.returncode} (output not JSON)"
    if not isinstance(report, list):
        return f"exit {proc.returncode}"
    warnings = [p for p in report if isinstance(p, dict) and p.get("severity") == "warning"]
    if not warnings:
        return f"exit {proc.returncode}, no warnings"
    shown = "; ".join(
        f"{str(w.get('file', '?')).removeprefix(f'{root}/')}: {w.get('message', '')}"
        for w in warnings[:3]
    )
    return f"exit {proc.returncode}, {len(warnings)} warning(s): {shown}"


def machine_info() -> dict[str, str]:
    """Describe the machine: CPUs, CPU model, OS, Python and PyYAML."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        nproc = os.cpu_count() or 0
    libyaml = "with libyaml" if getattr(yaml, "__with_libyaml__", False) else "without libyaml"
    return {
        "nproc": str(nproc),
        "cpu": cpu,
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "pyyaml": f"{yaml.__version__} ({libyaml})",
    }


def fleet_size(root: Path) -> tuple[int, int]:
    """Return the number of .yaml files under ``root`` and their total size in bytes."""
    files = list(root.rglob("*.yaml"))
    return len(files), sum(f.stat().st_size for f in files)


def render_section(
    timings: list[Timing],
    info: dict[str, str],
    nodes: int,
    groups: int,
    repeat: int,
    files: int,
    size: int,
    gen_seconds: float,
    verdict: str,
) -> str:
    """Render the RESULTS.md section, markers included."""
    by_label = {t.label: t for t in timings}
    validate = by_label["edgefleet validate"]
    safe = by_label["yaml.safe_load"]
    csafe = by_label["yaml CSafeLoader"]
    ratio_safe = validate.best / safe.best
    ratio_csafe = validate.best / csafe.best
    verdict_ratio = "met" if ratio_safe <= TARGET_RATIO else "NOT met"
    verdict_wall = "met" if validate.best <= TARGET_WALL_S else "NOT met"
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = "\n".join(
        f"| {t.label} | `{t.command}` | {t.best:.2f} | {t.median:.2f} | {t.best / safe.best:.2f}x |"
        for t in timings
    )
    return f"""<!-- {SECTION} -->
## `edgefleet validate` on {nodes:,} nodes and {groups} groups

- Date: {now}
- Machine: {info["nproc"]} CPUs ({info["cpu"]}), {info["os"]}
- Python: {info["python"]}; PyYAML {info["pyyaml"]}
- Fleet: {files:,} YAML files, {size / 1e6:.1f} MB, generated by `bench/gen_fleet.py`
  (seed 0) in {gen_seconds:.2f} s
- Reproduce: `python bench/bench_validate.py --nodes {nodes} --groups {groups} --repeat {repeat}`
  (with the project's virtualenv Python)

Each command is a separate subprocess (interpreter start-up counted alike), runs
interleaved, {repeat} runs each; wall times in seconds.

| command | what it runs | best | median | / safe_load (best) |
|---|---|---:|---:|---:|
{rows}

- validate / safe_load: **{ratio_safe:.2f}x** (target: within {TARGET_RATIO:.0f}x, {verdict_ratio})
- validate wall time: **{validate.best:.2f} s** (target < {TARGET_WALL_S:.0f} s, {verdict_wall})
- validate verdict on the generated fleet: {verdict}
- validate / CSafeLoader (libyaml), for honesty: **{ratio_csafe:.2f}x**
<!-- /{SECTION} -->
"""


def profile_rows(
    job: Callable[[], object], runs: int = 1, limit: int = 10, unit: str = "s"
) -> list[str]:
    """`job` run `runs` times under cProfile: the functions with the most own time, as rows of
    a table `| function | calls | own | share | cumulative |`, per run, in `unit` (s or ms)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        job()
    profiler.disable()
    entries = pstats.Stats(profiler, stream=io.StringIO()).stats  # type: ignore[attr-defined]
    scale, digits = (1e3, 2) if unit == "ms" else (1.0, 3)
    total = sum(own for _, _, own, _, _ in entries.values())
    rows = []
    ranked = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)
    for (file, line, func), (_, calls, own, cumulative, _) in ranked[:limit]:
        where = f" ({Path(file).name}:{line})" if line else ""
        rows.append(
            f"| `{func[:60]}`{where} | {calls / runs:,g} | {own / runs * scale:.{digits}f} |"
            f" {own / total * 100:.0f}% | {cumulative / runs * scale:.{digits}f} |"
        )
    rows.append(
        f"| all functions (profiled, so slower than timed) | | {total / runs * scale:.{digits}f}"
        " | 100% | |"
    )
    return rows


def write_section(section: str, path: Path = RESULTS, name: str = SECTION) -> None:
    """Replace the section ``name`` in ``path`` (or append it), keeping the rest."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if path.exists():
        text = path.read_text(encoding="utf-8")
    else:
        text = (
            "# Benchmark results\n\n"
            "Recorded by the scripts in this directory; each script replaces only its own\n"
            "section. See README.md for what they measure.\n"
        )
    i, j = text.find(start), text.find(end)
    if i != -1 and j != -1 and j > i:
        text = text[:i] + section.rstrip("\n") + text[j + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    if not text.endswith("\n"):
        text += "\n"
    path.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Generate the fleet, time the three commands, check validate, record the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000, help="nodes to generate (10000)")
    parser.add_argument("--groups", type=int, default=50, help="groups to generate (50)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each command (3)")
    parser.add_argument("--edgefleet", help="path of the edgefleet command (default: found)")
    parser.add_argument(
        "--no-write", action="store_true", help="print the section instead of updating RESULTS.md"
    )
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.groups < 0 or args.repeat < 1:
        parser.error("--nodes and --repeat must be at least 1, --groups not negative")

    edgefleet = find_edgefleet(args.edgefleet)
    if edgefleet is None or not edgefleet.exists():
        print(
            "bench_validate: the `edgefleet` command was not found (looked next to "
            f"{sys.executable} and on PATH).\n"
            "Install the project first: pip install -e . (then rerun with the same Python), "
            "or pass --edgefleet PATH.",
            file=sys.stderr,
        )
        return 2

    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        fleet = Path(tmp) / "fleet"
        start = time.perf_counter()
        generate_fleet(fleet, args.nodes, args.groups, seed=0)
        gen_seconds = time.perf_counter() - start
        files, size = fleet_size(fleet)
        print(f"generated {files} files ({size / 1e6:.1f} MB) in {gen_seconds:.2f} s")

        commands: list[tuple[str, str, list[str]]] = [
            (
                "yaml.safe_load",
                "python -c <read + yaml.safe_load every .yaml>",
                [sys.executable, "-c", SAFE_LOAD, str(fleet)],
            ),
            (
                "yaml CSafeLoader",
                "python -c <read + yaml.load(CSafeLoader) every .yaml>",
                [sys.executable, "-c", CSAFE_LOAD, str(fleet)],
            ),
            (
                "edgefleet validate",
                "edgefleet validate DIR --format json",
                [str(edgefleet), "validate", str(fleet), "--format", "json"],
            ),
        ]

        # One untimed run of validate first: it checks the fleet is valid (so the timing
        # means something) and warms the page cache and the .pyc files.
        _, proc = run_timed(commands[2][2])
        if proc.returncode != 0:
            print(
                f"bench_validate: `edgefleet validate` exited {proc.returncode} on the "
                "generated fleet; expected 0.",
                file=sys.stderr,
            )
            if "Traceback (most recent call last)" in proc.stderr:
                print(
                    "validate crashed (is the `edgefleet validate` command written yet?):",
                    file=sys.stderr,
                )
            elif proc.returncode == 1:
                print(
                    "The generator wrote files validate considers invalid (or validate has a bug):",
                    file=sys.stderr,
                )
            print(describe_problems(proc), file=sys.stderr)
            return 1
        verdict = summarize_verdict(proc, fleet)

        times: dict[str, list[float]] = {label: [] for label, _, _ in commands}
        for round_no in range(1, args.repeat + 1):
            for label, _, cmd in commands:
                seconds, proc = run_timed(cmd)
                if proc.returncode != 0:
                    print(
                        f"bench_validate: {label} exited {proc.returncode} "
                        f"(round {round_no}):\n{describe_problems(proc)}",
                        file=sys.stderr,
                    )
                    return 1
                times[label].append(seconds)
                print(f"round {round_no}: {label:<20} {seconds:7.2f} s", flush=True)

    timings = [Timing(label, shown, times[label]) for label, shown, _ in commands]
    section = render_section(
        timings,
        machine_info(),
        args.nodes,
        args.groups,
        args.repeat,
        files,
        size,
        gen_seconds,
        verdict,
    )
    print()
    print(section)
    if not args.no_write:
        write_section(section)
        print(f"updated {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
