"""The checks of meaning that a schema cannot express, over schema-valid documents.

Each check is a small function from the repository to problems, so that `validate` runs them
all and `render` runs the ones about a single node.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from itertools import combinations
from typing import Any

from reconciler.errors import EdgeFleetError
from reconciler.fleet_repo import SIGNERS_FILE, TRUST_ROOT_FILE, Document, FleetRepo, priority
from reconciler.keys import PublicKey
from reconciler.maintenance import WindowInvalid, zone
from reconciler.problems import Problem
from reconciler.release_tags import allowed_signers
from reconciler.render import layers, merge_layers, unresolved
from reconciler.schema_check import dotted, shown
from reconciler.selectors import matches
from reconciler.trust_root import parse_root
from reconciler.yaml_loader import FieldPath

Check = Callable[[FleetRepo], list[Problem]]


def _component_docs(repo: FleetRepo) -> Iterator[Document]:
    """Documents that carry components, including the sound parts of off-schema ones."""
    if repo.fleet is not None:
        yield repo.fleet
    yield from repo.groups
    yield from repo.nodes
    yield from (d for d in repo.partial if d.kind in ("Fleet", "Group", "Node"))


def _nodes(repo: FleetRepo) -> Iterator[Document]:
    yield from repo.nodes
    yield from (d for d in repo.partial if d.kind == "Node")


def _artifact_fields(doc: Document) -> Iterator[tuple[FieldPath, str]]:
    for name, component in doc.components.items():
        path: FieldPath = ("spec", "components", name, "artifact")
        if isinstance(component, dict) and doc.sound(path):
            ref = component.get("artifact")
            if isinstance(ref, str):
                yield path, ref


def artifact_references(repo: FleetRepo) -> list[Problem]:
    """Every `artifact:` anywhere names an entry of the catalog."""
    if repo.catalog is None:
        return []
    versions: dict[str, list[str]] = defaultdict(list)
    for ref in repo.artifacts:
        name, _, version = ref.partition("@")
        versions[name].append(version)
    problems = []
    for doc in _component_docs(repo):
        for path, ref in _artifact_fields(doc):
            if ref in repo.artifacts:
                continue
            name = ref.partition("@")[0]
            known = versions.get(name)
            hint = (
                f"known versions of {name}: {', '.join(sorted(known))}"
                if known
                else f"the catalog has no artifact named {name}"
            )
            problems.append(
                Problem(
                    doc.file,
                    doc.line(*path),
                    f"{dotted(path)}: got {shown(ref)}, expected an entry of artifacts.yaml"
                    f" ({hint})",
                    "error",
                    "unknown-artifact",
                )
            )
    return problems


def _health_files(doc: Document) -> Iterator[tuple[FieldPath, str]]:
    for name, component in doc.components.items():
        if not isinstance(component, dict):
            continue
        if not doc.sound(("spec", "components", name, "health")):
            continue
        for index, health in enumerate(component.get("health") or ()):
            onnx = health.get("onnx")
            if onnx is None:
                continue
            for key in ("input", "expected"):
                path: FieldPath = ("spec", "components", name, "health", index, "onnx", key)
                if doc.sound(path):
                    yield path, onnx[key]


def health_check_files(repo: FleetRepo) -> list[Problem]:
    """Golden files named by health checks exist in the repository, as regular files."""
    problems = []
    seen: dict[str, str | None] = {}
    for doc in _component_docs(repo):
        for path, file in _health_files(doc):
            if file not in seen:
                seen[file] = repo.files.entry(file)
            entry = seen[file]
            if entry == "file":
                continue
            if entry == "link":
                why, rule = "is a link (links can point outside the repository)", "unsafe-path"
            elif entry is None:
                why, rule = "does not exist in the repository", "missing-file"
            else:
                why, rule = f"is a {entry}", "missing-file"
            problems.append(
                Problem(
                    doc.file,
                    doc.line(*path),
                    f"{dotted(path)}: {shown(file)} {why}, expected a file committed in the"
                    " repository (e.g. under golden/)",
                    "error",
                    rule,
                )
            )
    return problems


def node_file_names(repo: FleetRepo) -> list[Problem]:
    """nodes/<id>.yaml holds the node whose metadata.name is <id>; ids and identities unique."""
    problems = []
    by_name: dict[str, Document] = {}
    by_identity: dict[str, Document] = {}
    for node in _nodes(repo):
        stem = node.file.rsplit("/", 1)[-1].removesuffix(".yaml")
        if not node.sound(("metadata", "name")):
            continue
        if node.name != stem:
            problems.append(
                Problem(
                    node.file,
                    node.line("metadata", "name"),
                    f"metadata.name: got {shown(node.name)}, expected {shown(stem)} (a node file is"
                    " named after its node id)",
                    "error",
                    "node-name",
                )
            )
        first = by_name.setdefault(node.name, node)
        if first is not node:
            problems.append(
                Problem(
                    node.file,
                    node.line("metadata", "name"),
                    f"metadata.name: duplicate node id {shown(node.name)} (also"
                    f" {first.file}:{first.line('metadata', 'name')}), expected each id once",
                    "error",
                    "duplicate-node",
                )
            )
        if not node.sound(("spec", "identity")):
            continue
        key = " ".join(node.spec["identity"].split()[:2])
        owner = by_identity.setdefault(key, node)
        if owner is not node:
            problems.append(
                Problem(
                    node.file,
                    node.line("spec", "identity"),
                    f"spec.identity: the same key as {owner.file} (node {owner.name}), expected a"
                    " key of this node's own (one node could sign status as another)",
                    "error",
                    "duplicate-identity",
                )
            )
    return problems


def group_names(repo: FleetRepo) -> list[Problem]:
    problems = []
    first: dict[str, Document] = {}
    for group in repo.groups:
        seen = first.setdefault(group.name, group)
        if seen is not group:
            problems.append(
                Problem(
                    group.file,
                    group.line("metadata", "name"),
                    f"metadata.name: duplicate group name {shown(group.name)} (also {seen.file}),"
                    " expected each name once",
                    "error",
                    "duplicate-group",
                )
            )
    return problems


def empty_selections(repo: FleetRepo) -> list[Problem]:
    """A group or wave that selects no node is legal but usually a typo in a label."""
    if not repo.nodes:
        return []
    problems = []
    used = {g.file for node in repo.nodes for g in repo.groups_of(node)}
    for group in repo.groups:
        if group.file not in used:
            problems.append(
                Problem(
                    group.file,
                    group.line("spec", "selector"),
                    "spec.selector: selects no node (check the labels it names)",
                    "warning",
                    "empty-group",
                )
            )
    if repo.fleet is not None:
        waves = repo.fleet.spec.get("rollout", {}).get("waves", [])
        for index, wave in enumerate(waves):
            selector = wave.get("selector")
            if selector is not None and not any(matches(selector, n.labels) for n in repo.nodes):
                problems.append(
                    Problem(
                        repo.fleet.file,
                        repo.fleet.line("spec", "rollout", "waves", index),
                        f"spec.rollout.waves[{index}]: wave '{wave['name']}' selects no node",
                        "warning",
                        "empty-wave",
                    )
                )
    return problems


def rollout_waves(repo: FleetRepo) -> list[Problem]:
    """Wave names are unique, percentages never shrink, and the last wave reaches every node."""
    if repo.fleet is None:
        return []
    fleet = repo.fleet
    waves = fleet.spec.get("rollout", {}).get("waves", [])
    problems = []
    names: set[str] = set()
    last_percent = 0.0
    for index, wave in enumerate(waves):
        line = fleet.line("spec", "rollout", "waves", index)
        if wave["name"] in names:
            problems.append(
                Problem(
                    fleet.file,
                    line,
                    f"spec.rollout.waves[{index}].name: duplicate wave {shown(wave['name'])},"
                    " expected each name once",
                    "error",
                    "rollout",
                )
            )
        names.add(wave["name"])
        percent = wave.get("percent")
        if percent is not None:
            if percent < last_percent:
                problems.append(
                    Problem(
                        fleet.file,
                        line,
                        f"spec.rollout.waves[{index}].percent: got {percent}, expected at least"
                        f" {last_percent} (waves are cumulative: a later wave never covers fewer"
                        " nodes)",
                        "error",
                        "rollout",
                    )
                )
            last_percent = max(last_percent, percent)
    if waves:
        final = waves[-1]
        selector = final.get("selector")
        covers_all = final.get("percent") == 100 or (
            selector is not None
            and not selector.get("matchLabels")
            and not selector.get("matchExpressions")
        )
        if not covers_all:
            problems.append(
                Problem(
                    fleet.file,
                    fleet.line("spec", "rollout", "waves", len(waves) - 1),
                    f"spec.rollout.waves[{len(waves) - 1}]: the last wave does not reach every"
                    " node, expected percent: 100 (nodes outside every wave keep the baseline"
                    " forever)",
                    "warning",
                    "rollout",
                )
            )
    return problems


def _differences(
    a: Mapping[str, Any], b: Mapping[str, Any], path: FieldPath
) -> Iterator[tuple[FieldPath, Any, Any]]:
    for key in a.keys() & b.keys():
        left, right = a[key], b[key]
        if isinstance(left, Mapping) and isinstance(right, Mapping):
            yield from _differences(left, right, (*path, key))
        elif left != right:
            yield (*path, key), left, right


def _tied_fields(group: Document) -> dict[str, Any]:
    """What two groups of equal priority must agree on: components, and the maintenance
    window when both set one."""
    fields: dict[str, Any] = {"components": group.components}
    if "maintenance" in group.spec:
        # Compared whole, as rendering takes it whole: a window is never merged.
        fields["maintenance"] = json.dumps(group.spec["maintenance"], sort_keys=True)
    return fields


def group_conflicts(repo: FleetRepo) -> list[Problem]:
    """Two groups of equal priority that set the same field differently, on a node both select."""
    pair_cache: dict[tuple[str, str], list[tuple[FieldPath, Any, Any]]] = {}
    hits: dict[tuple[str, str, FieldPath], list[str]] = defaultdict(list)
    docs: dict[str, Document] = {}
    for node in repo.nodes:
        by_priority: dict[int, list[Document]] = defaultdict(list)
        for group in repo.groups_of(node):
            by_priority[priority(group)].append(group)
        tied = [pair for same in by_priority.values() for pair in combinations(same, 2)]
        for first, second in tied:
            key = (first.file, second.file)
            if key not in pair_cache:
                pair_cache[key] = sorted(
                    _differences(_tied_fields(first), _tied_fields(second), ("spec",)),
                    key=lambda d: [str(p) for p in d[0]],
                )
                docs[first.file], docs[second.file] = first, second
            for path, _, _ in pair_cache[key]:
                hits[(first.file, second.file, path)].append(node.name)
    problems = []
    for (file_a, file_b, path), nodes in hits.items():
        a, b = docs[file_a], docs[file_b]
        left = next(d for d in pair_cache[(file_a, file_b)] if d[0] == path)
        shown_nodes = ", ".join(nodes[:3]) + (
            f" (+{len(nodes) - 3} more)" if len(nodes) > 3 else ""
        )
        problems.append(
            Problem(
                a.file,
                a.line(*path),
                f"{dotted(path)}: conflicts with {b.file}:{b.line(*path)} on node"
                f"{'s' if len(nodes) > 1 else ''} {shown_nodes}: both groups have priority"
                f" {priority(a)}, got {shown(left[1])} here and {shown(left[2])} there, expected"
                " different priorities or the same value",
                "error",
                "group-conflict",
            )
        )
    return problems


def rendered_components(repo: FleetRepo) -> list[Problem]:
    """After merging, every component of every node names an artifact the catalog has."""
    shared = ("fleet.yaml", "artifacts.yaml", "groups/")
    if repo.catalog is None or any(f.startswith(shared) for f in repo.refused):
        # A refused shared document would make every node that relies on it look incomplete:
        # its own problems are the ones to fix first, not thousands of echoes.
        return []
    problems = []
    for node in repo.nodes:
        chain = layers(repo, node)
        components = merge_layers(doc.components for doc in chain)
        for name, why in unresolved(repo, components):
            if "not in artifacts.yaml" in why:
                continue  # reported where the reference is written
            origin = next((d for d in reversed(chain) if name in d.components), node)
            path = ("spec", "components", name)
            order = " < ".join(d.file if d.kind != "Group" else d.name for d in chain)
            where = (
                node.file,
                node.line(*path) if origin is node else node.line("metadata", "name"),
            )
            problems.append(
                Problem(
                    where[0],
                    where[1],
                    f"component '{name}' {why} (merged {order}; last set in {origin.file})",
                    "error",
                    "no-artifact",
                )
            )
    return problems


def fleet_names(repo: FleetRepo) -> list[Problem]:
    """The catalog belongs to the fleet: a copied artifacts.yaml of another fleet is a mistake."""
    if repo.fleet is None or repo.catalog is None or repo.catalog.name == repo.fleet.name:
        return []
    return [
        Problem(
            repo.catalog.file,
            repo.catalog.line("metadata", "name"),
            f"metadata.name: got {shown(repo.catalog.name)}, expected {shown(repo.fleet.name)}"
            " (the name in fleet.yaml)",
            "error",
            "fleet-name",
        )
    ]


def allowed_signers_file(repo: FleetRepo) -> list[Problem]:
    """trust/allowed_signers is what the root and the nodes' identities generate, so that
    `git verify-tag` and `git verify-commit` audits trust exactly the keys the root names."""
    if repo.trust_root is None or repo.refused:
        return []
    try:
        root = parse_root(repo.files.read(TRUST_ROOT_FILE))
        nodes = {n.name: PublicKey.from_openssh(n.spec["identity"]) for n in repo.nodes}
    except EdgeFleetError as exc:
        return [Problem(TRUST_ROOT_FILE, 1, str(exc), "error", "trust-root")]
    expected = allowed_signers(root, nodes)
    entry = repo.files.entry(SIGNERS_FILE)
    if entry is None:
        return [
            Problem(
                SIGNERS_FILE,
                1,
                "missing: plain-git audits cannot check signatures (run `edgefleet trust signers`)",
                "warning",
                "allowed-signers",
            )
        ]
    got = repo.files.read(SIGNERS_FILE).decode("utf-8", "replace") if entry == "file" else ""
    if got != expected:
        return [
            Problem(
                SIGNERS_FILE,
                1,
                "stale: got a file that differs from what trust/root.json"
                " and nodes/*.yaml generate, expected it regenerated (`edgefleet trust"
                " signers`)",
                "error",
                "allowed-signers",
            )
        ]
    return []


def maintenance_zones(repo: FleetRepo) -> list[Problem]:
    """Every maintenance window names a time zone this machine's zoneinfo knows: an unknown
    one would make every node it reaches defer every release."""
    problems = []
    for doc in [d for d in (repo.fleet,) if d is not None] + repo.groups + repo.nodes:
        window = doc.spec.get("maintenance")
        if not isinstance(window, Mapping) or "timezone" not in window:
            continue
        try:
            zone(window)
        except WindowInvalid as exc:
            problems.append(
                Problem(
                    doc.file,
                    doc.line("spec", "maintenance", "timezone"),
                    f"spec.{exc}",
                    "error",
                    "maintenance",
                )
            )
    return problems


ALL_CHECKS: tuple[Check, ...] = (
    fleet_names,
    allowed_signers_file,
    artifact_references,
    health_check_files,
    node_file_names,
    group_names,
    rollout_waves,
    group_conflicts,
    maintenance_zones,
    rendered_components,
    empty_selections,
)


def run_checks(repo: FleetRepo, checks: tuple[Check, ...] = ALL_CHECKS) -> list[Problem]:
    problems: list[Problem] = []
    for check in checks:
        problems.extend(check(repo))
    return problems
