"""Benchmark ``edgefleet plan`` between two commits of a large fleet against ``validate``.

The script generates the fleet (10,000 nodes and 50 groups by default, ``gen_fleet.py``) in
a temporary git repository and commits it (the base). It then picks one group and one of its
components, and bumps that component's artifact to another version of the catalog (one with
a patch from the current version when there is one), and commits that (the head): the pull
request. The pick takes the component that the fewest nodes the group selects override (in
their own file, or through a group of higher priority that selects them too): with none, every
node the group selects must change. A 10,000-node fleet has a few overrides almost everywhere,
so the overriding nodes are counted, with a selector matcher of the bench's own, not the code
under test. `--pick most-nodes` takes instead the bump that changes the most nodes.

Then it times, each as its own subprocess, runs interleaved, best and median of ``--repeat``:

a. ``edgefleet validate DIR --format json``: the head, checked out;
b. ``edgefleet plan --repo DIR --base BASE --head HEAD --format json``.

The plan reads both commits from git, validates the head and renders what can differ; the
target is within 2x of validate. The run fails (exit 1) when validate does not exit 0, or
when the plan's answer is wrong: the nodes changing must be exactly the nodes the group
selects less those overriding the component, all of them in that group's row. The results
replace the ``<!-- bench:plan -->`` section of ``bench/RESULTS.md``; other sections stay.

Usage::

    python bench/bench_plan.py [--nodes 10000] [--groups 50] [--repeat 5] [--profile]
                               [--pick fewest-overrides|most-nodes]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_validate import (  # noqa: E402
    Timing,
    find_edgefleet,
    machine_info,
    run_timed,
    timed,
    write_section,
)
from gen_fleet import generate_fleet  # noqa: E402

SECTION = "bench:plan"
TARGET_RATIO = 2.0
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
T = TypeVar("T")


@dataclass(frozen=True)
class Bump:
    """The pull request: one group's component moved from one artifact to another."""

    group: str
    file: str
    component: str
    old: str
    new: str
    patched: bool  # the catalog offers a patch from the old version to the new one
    selected: int  # nodes the group selects
    # Of those, nodes that override the component (their own file, or a group of higher
    # priority that selects them too): they must not change. All others must, and no other.
    masked: int

    @property
    def expected(self) -> int:
        return self.selected - self.masked


def _load(path: Path) -> Any:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label selectors, written again here so the check does not trust the code
    it checks."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, present = expr["key"], expr["operator"], expr["key"] in labels
        if op == "In" and not (present and labels[key] in expr["values"]):
            return False
        if op == "NotIn" and present and labels[key] in expr["values"]:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def pick_bump(fleet: Path, most_nodes: bool = False) -> Bump:
    """The group and component to bump. By default the fewest nodes that override the
    component (their own file, or a group of higher priority that also selects them; none,
    when a group has no such node, so that every node it selects changes), then a new
    version the catalog has a patch to, then the most nodes. With `most_nodes`, the most
    nodes that must change: the heaviest plan."""
    catalog: dict[str, dict[str, Any]] = _load(fleet / "artifacts.yaml")["spec"]["artifacts"]
    groups = [(p, _load(p)) for p in sorted((fleet / "groups").glob("*.yaml"))]
    nodes = [_load(p) for p in sorted((fleet / "nodes").glob("*.yaml"))]
    labels = [(n["metadata"].get("labels") or {}) for n in nodes]
    own = [set(n["spec"].get("components") or {}) for n in nodes]
    best: tuple[tuple[int, int, int], Bump] | None = None
    for path, group in groups:
        spec = group["spec"]
        members = [i for i, lab in enumerate(labels) if _matches(spec["selector"], lab)]
        above = [
            g["spec"] for _, g in groups if g["spec"].get("priority", 0) > spec.get("priority", 0)
        ]
        for component, entry in (spec.get("components") or {}).items():
            old = entry.get("artifact")
            if not old:
                continue
            masked = sum(
                1
                for i in members
                if component in own[i]
                or any(
                    component in (g.get("components") or {}) and _matches(g["selector"], labels[i])
                    for g in above
                )
            )
            sha = catalog[old]["sha256"]
            others = [r for r in catalog if r.split("@")[0] == component and r != old]
            patched = [
                r for r in others if any(d["from"] == sha for d in catalog[r].get("deltas", []))
            ]
            # Released versions first: a pull request rarely moves a group to a pre-release.
            choices = sorted(patched or others, key=lambda r: "-" in r.split("@")[1])
            if not choices:
                continue
            bump = Bump(
                group["metadata"]["name"],
                f"groups/{path.name}",
                component,
                old,
                choices[0],
                bool(patched),
                len(members),
                masked,
            )
            score = (
                (bump.expected, int(bump.patched), 0)
                if most_nodes
                else (-masked, int(bump.patched), bump.selected)
            )
            if best is None or score > best[0]:
                best = (score, bump)
    if best is None:
        sys.exit("bench_plan: no group has a component with another catalog version")
    return best[1]


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.exit(f"bench_plan: git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(
        repo,
        "-c",
        "user.name=bench",
        "-c",
        "user.email=bench@example.net",
        "commit",
        "-qm",
        message,
    )
    return git(repo, "rev-parse", "HEAD")


def apply_bump(fleet: Path, bump: Bump) -> None:
    path = fleet / bump.file
    text = path.read_text(encoding="utf-8")
    old_line = f"artifact: {bump.old}\n"
    if text.count(old_line) != 1:
        sys.exit(f"bench_plan: {bump.file}: expected one line {old_line.strip()!r}")
    path.write_text(text.replace(old_line, f"artifact: {bump.new}\n"), encoding="utf-8")


def check_plan(stdout: str, bump: Bump) -> tuple[bool, str, dict[str, Any]]:
    """Whether the plan is right: the nodes the group selects change, except those that
    override the component, and no other node."""
    doc: dict[str, Any] = json.loads(stdout)
    s = doc["summary"]
    rows = {g["name"]: g for g in doc["groups"]}
    row = rows.get(bump.group, {})
    labels = {c["label"] for c in doc["components"]}
    want = f"{bump.component} {bump.old.split('@')[1]} → {bump.new.split('@')[1]}"
    ok = (
        s["valid"]
        and s["nodesChanging"] == s["nodesChanged"] == bump.expected
        and row.get("nodesChanging") == bump.expected
        and row.get("selected") == bump.selected
        and row.get("fileChange") == "modified"
        and labels == {want}
    )
    verb = "overrides" if bump.masked == 1 else "override"
    overriding = f", of which {bump.masked:,} {verb} the component" if bump.masked else ""
    verdict = (
        f"{s['nodesChanging']:,} nodes change; the group selects {bump.selected:,}{overriding};"
        f" its row: {row.get('nodesChanging')} of {row.get('selected')}; components:"
        f" {', '.join(sorted(labels))}"
    )
    return ok, verdict, doc


def render_section(
    timings: list[Timing],
    info: dict[str, str],
    args: argparse.Namespace,
    bump: Bump,
    verdict: str,
    summary: dict[str, Any],
    summary_line: str,
    profile: list[str],
) -> str:
    by_label = {t.label: t for t in timings}
    validate, plan = by_label["edgefleet validate"], by_label["edgefleet plan"]
    ratio = plan.best / validate.best
    ratio_median = plan.median / validate.median
    met = "met" if ratio <= TARGET_RATIO else "NOT met"
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = "\n".join(
        f"| {t.label} | `{t.command}` | {t.best:.2f} | {t.median:.2f} |"
        f" {t.best / validate.best:.2f}x |"
        for t in timings
    )
    extra = "\n".join(profile)
    overrides = (
        f"{bump.masked:,} of which {'overrides' if bump.masked == 1 else 'override'} the"
        " component (their own file or a group of higher priority): those must not change,"
        " all the others must"
        if bump.masked
        else "none of which overrides the component: all must change"
    )
    reproduce = (
        f"python bench/bench_plan.py --nodes {args.nodes} --groups {args.groups}"
        f" --repeat {args.repeat} --pick {args.pick}{' --profile' if args.profile else ''}"
    )
    return f"""<!-- {SECTION} -->
## `edgefleet plan` between two commits of {args.nodes:,} nodes and {args.groups} groups

- Date: {now}
- Machine: {info["nproc"]} CPUs ({info["cpu"]}), {info["os"]}
- Python: {info["python"]}; PyYAML {info["pyyaml"]}
- Fleet: `bench/gen_fleet.py` (seed 0), committed as the base; the head bumps
  `{bump.component}` in `{bump.file}` from `{bump.old}` to `{bump.new}`
  ({"the catalog has a patch between them" if bump.patched else "no patch between them"});
  the group selects {bump.selected:,} nodes, {overrides}
- Reproduce: `{reproduce}`
  (with the project's virtualenv Python)

Each command is a separate subprocess, runs interleaved, {args.repeat} runs each; wall times
in seconds. `validate` checks the head's checkout; `plan` reads both commits from git,
validates the head, renders the nodes that can differ at both commits and prints JSON.

| command | what it runs | best | median | / validate (best) |
|---|---|---:|---:|---:|
{rows}

- plan / validate: **{ratio:.2f}x** (target: within {TARGET_RATIO:.0f}x, {met});
  medians: {ratio_median:.2f}x
- plan's answer, checked: {verdict}
- plan's summary: {summary_line}
- nodes rendered at both commits: {summary["nodesRendered"]:,} of {summary["fleetNodes"]:,}
{extra}<!-- /{SECTION} -->
"""


def profile_phases(fleet: Path, base: str, head: str) -> list[str]:
    """Where one in-process plan spends its time, phase by phase (best of 3)."""
    import git as gitpython

    from reconciler.change_plan import Snapshot, compare, make_plan
    from reconciler.commands import plan as cmd
    from reconciler.status_source import cat_batch, open_status_repo
    from reconciler.validate import validate

    phases: dict[str, list[float]] = {}

    def lap(name: str, job: Callable[[], T]) -> T:
        start = time.perf_counter()
        result = job()
        phases.setdefault(name, []).append(time.perf_counter() - start)
        return result

    def one_plan() -> None:
        repo = gitpython.Repo(fleet)
        blobs: dict[str, bytes] = {}
        old, new = lap(
            "list both trees (git ls-tree)",
            lambda: (cmd.Tree(repo, base, "--base", blobs), cmd.Tree(repo, head, "--head", blobs)),
        )
        status = open_status_repo(str(fleet), fetch=False)
        differing = cmd.Differing(old, new)

        def read_blobs() -> None:
            wanted = {new.blob(p) for p in new.documents()} | {old.blob(p) for p in differing.paths}
            shas = sorted(s for s in wanted if s is not None)
            for sha, data in zip(shas, cat_batch(status, shas), strict=True):
                if data is not None:
                    blobs[sha] = data

        lap("read every document's blob (one git cat-file --batch)", read_blobs)
        report = lap("validate the head", lambda: validate(new))
        before = lap(
            "load the base (changed files only)",
            lambda: cmd.base_repo(old, differing, report.repo),
        )
        diff = lap(
            "compare (render what can differ, at both commits)",
            lambda: compare(
                Snapshot(before, old.node_files()),
                Snapshot(report.repo, new.node_files()),
                cmd.file_changes(old, new),
            ),
        )
        plan = lap("make_plan (bytes, groups, waves)", lambda: make_plan(diff, [], {}, {}))
        sides = cmd.Sides(str(fleet), base, "0" * 40, head, "0" * 40)
        lap("render JSON", lambda: cmd.render_json(plan, sides))

    for _ in range(3):
        one_plan()
    total = sum(min(v) for v in phases.values())
    rows = [
        "",
        "Asked with --profile: one plan in this process, phase by phase (best of 3; imports",
        "and interpreter start-up not included).",
        "",
        "| phase | best (s) | share |",
        "|---|---:|---:|",
    ]
    rows += [
        f"| {name} | {min(v):.3f} | {min(v) / total * 100:.0f}% |" for name, v in phases.items()
    ]
    rows.append(f"| all phases | {total:.3f} | 100% |")
    return [*rows, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000, help="nodes to generate (10000)")
    parser.add_argument("--groups", type=int, default=50, help="groups to generate (50)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each command (5)")
    parser.add_argument("--edgefleet", help="path of the edgefleet command (default: found)")
    parser.add_argument("--profile", action="store_true", help="also time plan's phases")
    parser.add_argument(
        "--pick",
        choices=["fewest-overrides", "most-nodes"],
        default="fewest-overrides",
        help="the group to bump: the one whose nodes least override the component (default),"
        " or the one that changes the most nodes",
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the section instead of updating RESULTS.md"
    )
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.groups < 1 or args.repeat < 1:
        parser.error("--nodes, --groups and --repeat must be at least 1")
    edgefleet = find_edgefleet(args.edgefleet)
    if edgefleet is None or not edgefleet.exists():
        print(
            "bench_plan: the `edgefleet` command was not found; pip install -e . first, or"
            " pass --edgefleet PATH",
            file=sys.stderr,
        )
        return 2

    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-plan-") as tmp:
        fleet = Path(tmp) / "fleet"
        gen_seconds = timed(lambda: generate_fleet(fleet, args.nodes, args.groups, seed=0))
        git(fleet, "init", "-q")
        base = commit(fleet, "the generated fleet")
        bump = pick_bump(fleet, most_nodes=args.pick == "most-nodes")
        apply_bump(fleet, bump)
        head = commit(fleet, f"{bump.group}: {bump.old} -> {bump.new}")
        print(
            f"generated in {gen_seconds:.2f} s; head bumps {bump.component} in {bump.file}:"
            f" {bump.old} -> {bump.new} ({bump.selected} nodes select it, {bump.masked} override)"
        )
        commands = [
            (
                "edgefleet validate",
                "edgefleet validate DIR --format json",
                [str(edgefleet), "validate", str(fleet), "--format", "json"],
            ),
            (
                "edgefleet plan",
                "edgefleet plan --repo DIR --base BASE --head HEAD --format json",
                [
                    str(edgefleet),
                    "plan",
                    "--repo",
                    str(fleet),
                    "--base",
                    base,
                    "--head",
                    head,
                    "--format",
                    "json",
                ],
            ),
        ]
        # Untimed runs first: they check the answers (so the timing means something) and warm
        # the page cache and the .pyc files.
        _, done = run_timed(commands[0][2])
        if done.returncode != 0:
            print(f"bench_plan: validate exited {done.returncode}:\n{done.stderr}", file=sys.stderr)
            return 1
        _, done = run_timed(commands[1][2])
        if done.returncode != 0:
            print(f"bench_plan: plan exited {done.returncode}:\n{done.stderr}", file=sys.stderr)
            return 1
        ok, verdict, doc = check_plan(done.stdout, bump)
        print(f"plan: {verdict}")
        if not ok:
            print("bench_plan: the plan's answer is wrong; no timing recorded", file=sys.stderr)
            return 1
        times: dict[str, list[float]] = {label: [] for label, _, _ in commands}
        for round_no in range(1, args.repeat + 1):
            for label, _, argv_ in commands:
                seconds, done = run_timed(argv_)
                if done.returncode != 0:
                    print(f"bench_plan: {label} exited {done.returncode}", file=sys.stderr)
                    return 1
                times[label].append(seconds)
                print(f"round {round_no}: {label:<20} {seconds:7.2f} s", flush=True)
        profile = profile_phases(fleet, base, head) if args.profile else []

    timings = [Timing(label, shown, times[label]) for label, shown, _ in commands]
    section = render_section(
        timings,
        machine_info(),
        args,
        bump,
        verdict,
        doc["summary"],
        doc["summaryLine"],
        profile,
    )
    print()
    print(section)
    ratio = statistics.median(times["edgefleet plan"]) / statistics.median(
        times["edgefleet validate"]
    )
    print(f"plan / validate, medians: {ratio:.2f}x")
    if not args.no_write:
        write_section(section, name=SECTION)
        print(f"updated {HERE / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
