"""`edgefleet plan`: what a pull request does to the fleet, read from two commits.

The reading is here: both commits' files straight from git (one `git cat-file --batch` for
every document of both, a file whose blob is the same at both commits read and parsed once),
the head validated as `edgefleet validate` does, the status heads of the nodes that move
bytes. The deciding is `reconciler.change_plan`'s; the three output formats are below.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import git

from reconciler.change_plan import (
    ChangePlan,
    FileChange,
    RunningComponent,
    Snapshot,
    compare,
    format_bytes,
    make_plan,
)
from reconciler.errors import DocumentError, UsageError
from reconciler.fleet_repo import (
    CATALOG_FILE,
    FLEET_FILE,
    GROUPS_DIR,
    NODES_DIR,
    SIGNERS_FILE,
    TRUST_ROOT_FILE,
    FleetRepo,
    load_fleet_repo,
)
from reconciler.git_tree import GitTreeFiles
from reconciler.repo_files import EntryKind
from reconciler.status_source import (
    StatusRepo,
    allowed_signers,
    cat_batch,
    open_status_repo,
    principal,
    status_heads,
)
from reconciler.status_verdicts import head_verdicts
from reconciler.validate import validate
from reconciler.yaml_loader import load_yaml

# Rows and lines a pull-request comment shows before pointing at --format json: GitHub keeps
# comments under 65,536 characters, and a reviewer reads the first screen.
MAX_GROUP_ROWS = 25
MAX_LINES = 100
MAX_COMMENT = 60_000


class Tree(GitTreeFiles):
    """A commit's files whose bytes come from a table of blobs read in one batch."""

    def __init__(self, repo: git.Repo, rev: str, option: str, blobs: dict[str, bytes]) -> None:
        try:
            super().__init__(repo, rev)
        except (git.BadName, git.BadObject, ValueError, git.GitCommandError):
            raise UsageError(
                f"{option}: got {rev!r}, which is not a commit of"
                f" {repo.working_dir or repo.git_dir}, expected a branch, tag or commit (in CI,"
                " fetch the whole history: fetch-depth: 0)"
            ) from None
        self.blobs = blobs

    def blob(self, path: str) -> str | None:
        found = self.entries.get(path)
        return found[1] if found is not None and found[0] == "file" else None

    def read(self, path: str) -> bytes:
        found = self.entries.get(path)
        if found is None or found[0] != "file":
            raise FileNotFoundError(path)
        data = self.blobs.get(found[1])
        return data if data is not None else super().read(path)

    def documents(self) -> list[str]:
        """The paths `load_fleet_repo` and the checks read."""
        singles = (FLEET_FILE, CATALOG_FILE, TRUST_ROOT_FILE, SIGNERS_FILE)
        return [
            path
            for path, (kind, _) in self.entries.items()
            if kind == "file"
            and (path in singles or (path.count("/") == 1 and path.startswith(_FOLDERS)))
        ]

    def node_files(self) -> dict[str, str]:
        """node id -> path of every nodes/<id>.yaml, including ones that cannot be read."""
        return {
            name.removesuffix(".yaml"): f"{NODES_DIR}/{name}"
            for name, kind in self.listdir(NODES_DIR)
            if kind in ("file", "link") and name.endswith(".yaml") and not name.startswith(".")
        }


_FOLDERS = (f"{GROUPS_DIR}/", f"{NODES_DIR}/")


class Differing:
    """The files of `tree` that `other` lacks or holds with other bytes; the rest look absent.

    Loading the base through this reads only what the head does not already hold.
    """

    def __init__(self, tree: Tree, other: Tree) -> None:
        self.tree = tree
        self.paths = {p for p, e in tree.entries.items() if other.entries.get(p) != e}

    def entry(self, path: str) -> EntryKind | None:
        kind = self.tree.entry(path)
        if kind is None or kind == "dir":
            return kind
        clean = "/".join(p for p in path.split("/") if p)
        if clean not in self.tree.entries:
            return kind  # under a linked folder: a link, as the tree says
        return kind if clean in self.paths else None

    def listdir(self, folder: str) -> list[tuple[str, EntryKind]]:
        prefix = f"{folder}/" if folder else ""
        return [
            (name, kind)
            for name, kind in self.tree.listdir(folder)
            if kind == "dir" or f"{prefix}{name}" in self.paths
        ]

    def read(self, path: str) -> bytes:
        if path not in self.paths:
            raise FileNotFoundError(path)
        return self.tree.read(path)


def base_repo(tree: Tree, differing: Differing, head: FleetRepo) -> FleetRepo:
    """The base commit's repository: documents whose bytes differ parsed from `differing`,
    every other one the head's own `Document` object (so `change_plan` knows it unchanged)."""
    part, _ = load_fleet_repo(differing)
    here = tree.entries

    def same(file: str) -> bool:
        return file in here and file not in differing.paths

    def single(path: str, ours: Any, theirs: Any) -> Any:
        return ours if path in differing.paths else theirs if same(path) else None

    return FleetRepo(
        files=tree,
        fleet=single(FLEET_FILE, part.fleet, head.fleet),
        catalog=single(CATALOG_FILE, part.catalog, head.catalog),
        groups=[*part.groups, *(g for g in head.groups if same(g.file))],
        nodes=[*part.nodes, *(n for n in head.nodes if same(n.file))],
        trust_root=single(TRUST_ROOT_FILE, part.trust_root, head.trust_root),
        refused=sorted(
            {f for f in part.refused if f in differing.paths or f not in here}
            | {f for f in head.refused if same(f)}
        ),
    )


def file_changes(base: Tree, head: Tree) -> dict[str, FileChange]:
    out: dict[str, FileChange] = {}
    for path in sorted(set(base.entries) | set(head.entries)):
        before, after = base.entries.get(path), head.entries.get(path)
        if before == after:
            continue
        out[path] = "added" if before is None else "removed" if after is None else "modified"
    return out


def fleet_name(tree: Tree) -> str:
    if tree.entry(FLEET_FILE) != "file":
        return ""
    try:
        data = load_yaml(tree.read(FLEET_FILE), FLEET_FILE).data
    except DocumentError:  # a broken fleet.yaml is reported by validation; no name then
        return ""
    name = ((data if isinstance(data, dict) else {}).get("metadata") or {}).get("name")
    return name if isinstance(name, str) else ""


def running_components(
    status: StatusRepo, signers_text: str, fleet: str, nodes: Sequence[str]
) -> tuple[dict[str, dict[str, RunningComponent]], dict[str, str]]:
    """What each of `nodes` runs by its status head, for the heads signed by the node's key in
    `signers_text` (the base's trust/allowed_signers); and why the other heads were not used.

    Verdicts cached by `edgefleet status` are used but the cache is not rewritten: plan reads
    a few heads, and `status` keeps the verdicts of all of them.
    """
    heads = status_heads(status)
    wanted = [n for n in nodes if n in heads]
    if not wanted:
        return {}, {}
    signers = allowed_signers(signers_text)
    keys = {n: signers.get(principal(n, fleet)) for n in wanted}
    verdicts = head_verdicts(status, {n: heads[n] for n in wanted}, keys, keep=False)
    running: dict[str, dict[str, RunningComponent]] = {}
    untrusted: dict[str, str] = {}
    for node, verdict in verdicts.items():
        doc = verdict.doc
        if verdict.problem is not None or doc is None:
            untrusted[node] = verdict.problem or "no status document"
        elif doc.get("node") != node:
            untrusted[node] = f"status.json: node: got {doc.get('node')!r}, expected {node!r}"
        elif doc.get("fleet") != fleet:
            untrusted[node] = f"status.json: fleet: got {doc.get('fleet')!r}, expected {fleet!r}"
        else:
            running[node] = {
                name: RunningComponent(c.get("artifact"), str(c["sha256"]))
                for name, c in (doc.get("components") or {}).items()
                if isinstance(c, dict) and c.get("sha256")
            }
    return running, untrusted


@dataclass(frozen=True)
class Sides:
    repo: str
    base_ref: str
    base_commit: str
    head_ref: str
    head_commit: str

    def as_json(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "base": {"ref": self.base_ref, "commit": self.base_commit},
            "head": {"ref": self.head_ref, "commit": self.head_commit},
        }


def make(repo_dir: str, base_ref: str, head_ref: str) -> tuple[ChangePlan, Sides]:
    """Read both commits and the status, and plan."""
    try:
        repo = git.Repo(repo_dir)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise UsageError(
            f"--repo: got {repo_dir!r}, which is not a git repository, expected a clone of the"
            " fleet repository"
        ) from None
    blobs: dict[str, bytes] = {}
    base = Tree(repo, base_ref, "--base", blobs)
    head = Tree(repo, head_ref, "--head", blobs)
    status = open_status_repo(repo_dir, fetch=False)
    differing = Differing(base, head)
    wanted = {base.blob(p) for p in base.documents() if p in differing.paths}
    wanted |= {head.blob(p) for p in head.documents()}
    shas = sorted(s for s in wanted if s is not None)
    for sha, data in zip(shas, cat_batch(status, shas), strict=True):
        if data is not None:
            blobs[sha] = data

    report = validate(head)
    before = base_repo(base, differing, report.repo)
    diff = compare(
        Snapshot(before, base.node_files()),
        Snapshot(report.repo, head.node_files()),
        file_changes(base, head),
    )
    running: dict[str, dict[str, RunningComponent]] = {}
    untrusted: dict[str, str] = {}
    needing = diff.nodes_needing_status
    if needing:
        signers = base.read(SIGNERS_FILE) if base.entry(SIGNERS_FILE) == "file" else b""
        fleet = fleet_name(base) or report.repo.fleet_name
        running, untrusted = running_components(
            status, signers.decode(errors="replace"), fleet, needing
        )
    problems = [replace(p, file=os.path.normpath(Path(repo_dir) / p.file)) for p in report.problems]
    plan = make_plan(diff, problems, running, untrusted)
    return plan, Sides(repo_dir, base_ref, base.commit, head_ref, head.commit)


# --- output ------------------------------------------------------------------------------


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count:,} {word if count == 1 else plural or word + 's'}"


def _waves_phrase(plan: ChangePlan) -> str:
    exact = [f"{w.name} wave: {w.exact:,}" for w in plan.waves if w.exact]
    drawn = sum(1 for n in plan.nodes if n.drawn)
    if drawn:
        exact.append(f"{drawn:,} drawn when the release is signed")
    return "; ".join(exact)


def _validity(plan: ChangePlan, markdown: bool) -> str:
    warnings = len(plan.problems) - len(plan.errors)
    extra = f" ({_plural(warnings, 'warning')})" if warnings else ""
    if plan.valid:
        return ("✅ valid" if markdown else "valid") + extra
    return ("❌ " if markdown else "invalid: ") + _plural(len(plan.errors), "error") + extra


def _bytes_phrase(plan: ChangePlan) -> str:
    if not plan.patches and not plan.fulls:
        return "no bytes to move"
    return (
        f"{format_bytes(plan.patch_bytes)} in patches, {format_bytes(plan.full_bytes)} in full"
        f" ({format_bytes(plan.all_full_bytes)} if all full)"
    )


def summary_line(plan: ChangePlan, markdown: bool = True) -> str:
    """One line a reviewer reads first."""
    bold = "**" if markdown else ""
    n = plan.changing
    if n:
        head = f"{bold}{_plural(n, 'node')} change{'s' if n == 1 else ''}{bold}"
        kinds = [f"{plan.count(k):,} {k}" for k in ("added", "removed") if plan.count(k)]
        if plan.config_only:
            kinds.append(f"{plan.config_only:,} only in checks, hooks or labels")
        if kinds:
            head += f" ({', '.join(kinds)})"
        touched = sum(1 for g in plan.groups if g.changing)
        if touched:
            head += f" in {_plural(touched, 'group')}"
        waves = _waves_phrase(plan)
        if waves:
            head += f" ({waves})"
    else:
        head = f"{bold}No node changes{bold}"
    parts = [head, _bytes_phrase(plan)]
    stuck = plan.count("unrenderable")
    if stuck:
        parts.append(("⚠️ " if markdown else "") + f"{_plural(stuck, 'node')} cannot be rendered")
    parts.append(_validity(plan, markdown))
    return " · ".join(parts)


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cell(text: str) -> str:
    return _esc(text).replace("|", "\\|").replace("\n", " ")


def _components_cell(items: Sequence[tuple[str, int]], limit: int = 3) -> str:
    shown = [f"{label} ({count:,})" for label, count in items[:limit]]
    if len(items) > limit:
        shown.append(f"+{len(items) - limit} more")
    return ", ".join(shown) or "-"


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "-"


def _wave_lines(plan: ChangePlan) -> list[str]:
    lines = []
    for w in plan.waves:
        if w.selector:
            text = f"{w.name} (selector): {_plural(w.exact, 'changing node')}"
            if w.expected:
                text += f", and about {w.expected:,.1f} more drawn when the release is signed"
        elif not w.expected:
            text = f"{w.name} ({w.percent:g} %): no changing node can be drawn into it"
        else:
            text = (
                f"{w.name} ({w.percent:g} %): drawn when the release is signed (the draw depends"
                f" on the released commit); about {w.expected:,.1f} of the changing nodes"
                f" expected here, about {w.expected_fleet or 0:,} nodes of the fleet up to it"
            )
        lines.append(text)
    outside = sum(
        1 for n in plan.nodes if n.change in ("added", "changed") and not n.wave and not n.drawn
    )
    if plan.waves and outside:
        lines.append(f"outside every wave (they keep the baseline): {_plural(outside, 'node')}")
    if not plan.waves:
        lines.append("the fleet has no rollout waves: a release goes to every node")
    return lines


def _markdown(plan: ChangePlan, sides: Sides, limit: int) -> str:
    out = ["<!-- edgefleet-plan -->"]
    if not plan.valid:
        out.append(
            f"❌ **The head fails validation: {_plural(len(plan.errors), 'error')}.** Fix"
            f" {'it' if len(plan.errors) == 1 else 'them'} before merging: see Validation"
            " below."
        )
        out.append("")
    out.append(summary_line(plan))
    out.append("")
    rows = [g for g in plan.groups if g.changing or g.file_change]
    if rows:
        out.append("| group | nodes changing | components | bytes |")
        out.append("|---|---:|---|---:|")
        for g in rows[:MAX_GROUP_ROWS]:
            name = f"`{g.name}`" + (f" ({g.file_change})" if g.file_change else "")
            out.append(
                f"| {name} | {g.changing:,} of {g.selected:,} |"
                f" {_cell(_components_cell(g.components))} | {format_bytes(g.bytes)} |"
            )
        if len(rows) > MAX_GROUP_ROWS:
            out.append(f"| … {len(rows) - MAX_GROUP_ROWS} more groups (`--format json`) | | | |")
        loose = [n for n in plan.nodes if not n.groups and not n.base_groups]
        if loose:
            out.append(
                f"| (no group) | {len(loose):,} | | {format_bytes(sum(n.bytes for n in loose))} |"
            )
        out.append("")
        out.append(
            "<sub>A node counts under the changed group files that touch it; a node changed"
            " otherwise (fleet.yaml, the catalog, its own file) under each group selecting"
            " it. Bytes are what its changing components move.</sub>"
        )
        out.append("")

    def details(title: str, body: list[str], opened: bool = False) -> None:
        out.append(f"<details{' open' if opened else ''}><summary>{title}</summary>")
        out.append("")
        out.extend(body)
        out.append("")
        out.append("</details>")
        out.append("")

    if plan.components:
        body = [
            "| component | change | from | to | nodes | patches | full |",
            "|---|---|---|---|---:|---:|---:|",
        ]
        for c in plan.components[:limit]:
            before = f"`{c.before.artifact}` {_short(c.before.sha256)}" if c.before else "-"
            after = f"`{c.after.artifact}` {_short(c.after.sha256)}" if c.after else "-"
            body.append(
                f"| `{c.name}` | {_cell(c.change if c.change != 'config' else c.label)} |"
                f" {before} | {after} | {c.nodes:,} |"
                f" {c.patches:,} ({format_bytes(c.patch_bytes)}) |"
                f" {c.full:,} ({format_bytes(c.full_bytes)}) |"
            )
        details(f"Components: {_plural(len(plan.components), 'change')}", body)
    if plan.changing:
        details("Rollout waves", [f"- {_esc(line)}" for line in _wave_lines(plan)])
    if plan.nodes:
        lines = [f"- `{n.node}` {_esc(n.line)}" for n in plan.nodes[:limit]]
        if len(plan.nodes) > limit:
            lines.append(f"- … and {len(plan.nodes) - limit:,} more (`--format json`)")
        details(f"Nodes: {len(plan.nodes):,}", lines)
    if plan.untrusted_status:
        lines = [
            f"- `{node}`: {_esc(why)}" for node, why in list(plan.untrusted_status.items())[:limit]
        ]
        details(
            f"Status heads not trusted: {len(plan.untrusted_status):,} (their bytes assume the"
            " base commit's state)",
            lines,
        )
    if plan.problems:
        lines = [
            f"- `{p.file}:{p.line}` {'warning: ' * (p.severity == 'warning')}{_esc(p.message)}"
            for p in plan.problems[:limit]
        ]
        if len(plan.problems) > limit:
            lines.append(f"- … and {len(plan.problems) - limit} more")
        details(f"Validation: {_validity(plan, True)}", lines, opened=not plan.valid)
    out.append(
        f"<sub>edgefleet plan · base `{_esc(sides.base_ref)}` {sides.base_commit[:12]} · head"
        f" `{_esc(sides.head_ref)}` {sides.head_commit[:12]} · {_plural(plan.fleet_size, 'node')}"
        " · bytes from each node's signed status where it has one, else from the base commit."
        " Percentage waves are drawn from the released commit.</sub>"
    )
    return "\n".join(out) + "\n"


def render_markdown(plan: ChangePlan, sides: Sides) -> str:
    """The pull-request comment: a summary line, a table by group, details folded; fewer
    detail lines when a long list would break the forge's size limit for a comment."""
    limit = MAX_LINES
    text = _markdown(plan, sides, limit)
    while len(text) > MAX_COMMENT and limit > 5:
        limit //= 2
        text = _markdown(plan, sides, limit)
    return text


def render_text(plan: ChangePlan, sides: Sides) -> str:
    out = [
        f"edgefleet plan: base {sides.base_ref} ({sides.base_commit[:12]}) -> head"
        f" {sides.head_ref} ({sides.head_commit[:12]}), {_plural(plan.fleet_size, 'node')}"
    ]
    if not plan.valid:
        out.append(
            f"THE HEAD FAILS VALIDATION: {_plural(len(plan.errors), 'error')} (listed under"
            " problems)"
        )
    out.append(summary_line(plan, markdown=False))
    out.append(
        f"bytes: {format_bytes(plan.patch_bytes)} in {_plural(plan.patches, 'patch', 'patches')},"
        f" {format_bytes(plan.full_bytes)} in {_plural(plan.fulls, 'full download')};"
        f" {format_bytes(plan.all_full_bytes)} if all full"
    )
    if plan.changing:
        out.append("waves:")
        out.extend(f"  {line}" for line in _wave_lines(plan))
    rows = [g for g in plan.groups if g.changing or g.file_change]
    if rows:
        out.append("groups:")
        for g in rows:
            change = f" ({g.file} {g.file_change})" if g.file_change else ""
            out.append(
                f"  {g.name}{change}: {g.changing:,} of {g.selected:,} nodes change;"
                f" {_components_cell(g.components, 5)}; {format_bytes(g.bytes)}"
            )
    if plan.components:
        out.append("components:")
        for c in plan.components:
            moved = (
                f"; {c.patches:,} patches {format_bytes(c.patch_bytes)},"
                f" {c.full:,} full {format_bytes(c.full_bytes)}"
                if c.patches or c.full
                else ""
            )
            out.append(f"  {c.label}: {_plural(c.nodes, 'node')}{moved}")
            if c.before is not None or c.after is not None:
                before = f"{c.before.artifact} {_short(c.before.sha256)}" if c.before else "-"
                after = f"{c.after.artifact} {_short(c.after.sha256)}" if c.after else "-"
                out.append(f"    {before} -> {after}")
    if plan.nodes:
        out.append("nodes:")
        out.extend(f"  {n.node}: {n.line}" for n in plan.nodes)
    if plan.untrusted_status:
        out.append("status heads not trusted (bytes assume the base commit's state):")
        out.extend(f"  {node}: {why}" for node, why in plan.untrusted_status.items())
    if plan.problems:
        out.append("problems:")
        out.extend(f"  {p.text()}" for p in plan.problems)
    return "\n".join(out) + "\n"


def render_json(plan: ChangePlan, sides: Sides) -> str:
    doc = {
        **sides.as_json(),
        "summary": plan.summary_json(),
        "summaryLine": summary_line(plan, markdown=False),
        "files": [{"path": p, "change": c} for p, c in plan.files.items()],
        "groups": [g.as_json() for g in plan.groups],
        "waves": [w.as_json() for w in plan.waves],
        "components": [c.as_json() for c in plan.components],
        "untrustedStatus": dict(plan.untrusted_status),
        "problems": [asdict(p) for p in plan.problems],
        "nodes": [n.as_json() for n in plan.nodes],
    }
    return json.dumps(doc, indent=2) + "\n"


FORMATS = {"text": render_text, "markdown": render_markdown, "json": render_json}


def cmd_plan(args: argparse.Namespace) -> int:
    plan, sides = make(args.repo, args.base, args.head)
    sys.stdout.write(FORMATS[args.format](plan, sides))
    return 0 if plan.valid else 1


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    plan = sub.add_parser(
        "plan",
        parents=[common],
        help="what a change does to the fleet: nodes and components that change, bytes to move",
        description="Renders every node at --base and at --head (both read from git, not the"
        " working tree) and reports the nodes that are added, removed or change, their"
        " components from which artifact to which, the bytes that will move (patch or full,"
        " from the base each node's signed status says it runs), the groups and rollout waves"
        " touched, and every validation problem of the head. Exit 0 when the head is valid,"
        " 1 when it is not (the plan is still printed), 2 on bad usage.",
    )
    plan.add_argument("--base", required=True, help="the commit merged into (e.g. origin/main)")
    plan.add_argument("--head", default="HEAD", help="the commit proposed (default: HEAD)")
    plan.add_argument("--repo", default=".", help="the fleet repository clone (default: .)")
    plan.add_argument(
        "--format",
        choices=list(FORMATS),
        default="text",
        help="text (default), markdown (a pull-request comment) or json (everything)",
    )
    plan.set_defaults(func=cmd_plan)
