"""What a change to the fleet repository does to the fleet: the deciding half of `edgefleet plan`.

No I/O. It takes the repository as parsed at two commits (base and head), the list of files
that differ between them, what each node runs according to its signed status, and the head's
validation problems, and returns a `ChangePlan`: the nodes that change (added, removed, or
whose rendered desired state differs), their components from which artifact to which, the
bytes that will move (a patch where the catalog offers one from the base the node runs, else
the full artifact), and the groups and rollout waves the change touches.

Rendering is `render.render_node`'s, so a node's two states are exactly what
`edgefleet render` prints at each commit. A node changes when they differ in its labels,
groups or identity, or in a component's artifact, bytes, health checks or hooks; the other
fields of a catalog entry (a patch newly offered, a URL, a description) change nothing a node
does or will run, so they alone change no node. Only nodes whose state can differ are rendered:
when the caller shares one `Document` object for a file whose bytes are the same at both
commits (as `edgefleet plan` does), a node whose own file, fleet.yaml, matching groups and
catalog entries are all unchanged is known to render the same without rendering it.
Without shared objects every node is rendered at both commits, which gives the same result.

Percentage waves are not decided here: a node's place in them hangs on the commit the
release will sign, unknown while the change is a pull request. They are reported as drawn
at signing, with the number of nodes to expect.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from reconciler.errors import RenderError
from reconciler.fleet_repo import CATALOG_FILE, FLEET_FILE, GROUPS_DIR, Document, FleetRepo
from reconciler.node_plan import Installed, desired_components, plan, transfers
from reconciler.problems import Problem, errors
from reconciler.render import render_node
from reconciler.rollout import wave_of
from reconciler.selectors import matches

FileChange = Literal["added", "removed", "modified"]
NodeChangeKind = Literal["added", "removed", "changed", "unrenderable"]
ComponentChangeKind = Literal["added", "removed", "changed", "config"]
BaseSource = Literal["status", "base", "none"]


@dataclass(frozen=True)
class Snapshot:
    """The repository at one commit, as parsed, and the node files it lists.

    `node_files` maps every node id (the name of `nodes/<id>.yaml`) to its path, including
    files that failed to parse: such a node is unrenderable, not absent.
    """

    repo: FleetRepo
    node_files: Mapping[str, str]


@dataclass(frozen=True)
class RunningComponent:
    """What a node's signed status says one of its components runs."""

    artifact: str | None
    sha256: str


@dataclass(frozen=True)
class Bytes:
    """The bytes one component moves to one node."""

    bytes: int
    full_bytes: int
    patch_format: str | None
    patch_from: str | None
    # Where the base this patch would start from was learnt: the node's signed status, the
    # base commit's desired state (no trusted status), or nowhere (a new component).
    base_source: BaseSource
    base_sha256: str | None

    @property
    def patched(self) -> bool:
        return self.patch_format is not None


@dataclass(frozen=True)
class ArtifactInfo:
    artifact: str
    sha256: str
    size: int

    def as_json(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class ComponentChange:
    name: str
    change: ComponentChangeKind
    before: ArtifactInfo | None
    after: ArtifactInfo | None
    # For "config": which parts differ (health checks, hooks); empty otherwise.
    parts: tuple[str, ...] = ()
    # None when nothing moves: removed, config only, or the node already runs the new bytes.
    transfer: Bytes | None = None
    # True when the node's status says it already runs the new artifact's bytes.
    already_running: bool = False

    @property
    def label(self) -> str:
        """One short phrase: `app 1.0.0 → 1.1.0`, `+ model@1.0.0`, `- legacy@0.8.0`."""
        if self.change == "added" and self.after is not None:
            return f"+ {self.after.artifact}"
        if self.change == "removed" and self.before is not None:
            return f"- {self.before.artifact}"
        if self.change == "config":
            return f"{self.name} ({', '.join(self.parts)})"
        before = self.before.artifact if self.before else "?"
        after = self.after.artifact if self.after else "?"
        return f"{self.name} {_version(before, self.name)} → {_version(after, self.name)}"

    def as_json(self) -> dict[str, Any]:
        t = self.transfer
        return {
            "name": self.name,
            "change": self.change,
            "from": self.before.as_json() if self.before else None,
            "to": self.after.as_json() if self.after else None,
            "parts": list(self.parts),
            "alreadyRunning": self.already_running,
            "transfer": None
            if t is None
            else {
                "bytes": t.bytes,
                "fullBytes": t.full_bytes,
                "patch": {"format": t.patch_format, "from": t.patch_from} if t.patched else None,
                "base": {"source": t.base_source, "sha256": t.base_sha256},
            },
        }


def _version(ref: str, name: str) -> str:
    base, _, version = ref.partition("@")
    return version if base == name and version else ref


@dataclass(frozen=True)
class NodeChange:
    node: str
    change: NodeChangeKind
    components: tuple[ComponentChange, ...]
    # The groups selecting the node at head (at base for a removed node), in merge order.
    groups: tuple[str, ...]
    base_groups: tuple[str, ...]
    # What else of the rendered state differs: labels, groups, identity.
    metadata: tuple[str, ...]
    # Changed files among those the node's state is made of, at either commit.
    causes: tuple[str, ...]
    # The rollout wave the node is in exactly (selector waves), else None.
    wave: str | None
    # Percentage waves: wave -> probability that the release's draw puts the node there.
    drawn: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None
    base_error: str | None = None
    status: str | None = None  # "trusted", an untrusted head's problem, or None (no status)

    @property
    def bytes(self) -> int:
        return sum(c.transfer.bytes for c in self.components if c.transfer is not None)

    @property
    def line(self) -> str:
        """The node's change in one line, for terminals and the PR comment's details."""
        if self.change == "unrenderable":
            return f"cannot be rendered at head: {self.error}"
        parts = [c.label for c in self.components if c.change != "config"]
        parts += [c.label for c in self.components if c.change == "config"]
        parts += [f"{m} changed" for m in self.metadata]
        text = "; ".join(parts) or "no component changes"
        if self.change == "added":
            text = f"new node: {text}"
        elif self.change == "removed":
            text = f"removed from the fleet ({text})"
        moved = [c.transfer for c in self.components if c.transfer is not None]
        if moved:
            patches = sum(1 for t in moved if t.patched)
            text += f" · {format_bytes(self.bytes)}"
            if patches:
                text += f" ({patches} patch{'es' * (patches != 1)})"
        if self.base_error:
            text += f" · base not renderable: {self.base_error}"
        return text

    def as_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "change": self.change,
            "groups": list(self.groups),
            "baseGroups": list(self.base_groups),
            "metadata": list(self.metadata),
            "causes": list(self.causes),
            "wave": self.wave,
            "drawn": dict(self.drawn),
            "bytes": self.bytes,
            "status": self.status,
            "error": self.error,
            "baseError": self.base_error,
            "components": [c.as_json() for c in self.components],
        }


@dataclass(frozen=True)
class GroupImpact:
    name: str
    file: str
    file_change: FileChange | None
    selected: int  # nodes the group selects at head (at base for a removed group)
    # Changing nodes counted under this group: those this group's changed file touches, or,
    # for a node changed by something else (fleet.yaml, the catalog, its own file), every
    # group selecting it.
    changing: int
    members_changing: int  # every changing node the group selects, whatever the cause
    components: tuple[tuple[str, int], ...]  # (change label, nodes), most nodes first
    bytes: int

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "fileChange": self.file_change,
            "selected": self.selected,
            "nodesChanging": self.changing,
            "membersChanging": self.members_changing,
            "components": [{"change": c, "nodes": n} for c, n in self.components],
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class WaveImpact:
    name: str
    selector: bool
    percent: float | None
    exact: int  # changing nodes whose wave is certain
    expected: float  # changing nodes the draw at signing is expected to put here
    expected_fleet: int | None  # percent waves: about percent x fleet size

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "selector" if self.selector else "percent",
            "percent": self.percent,
            "nodesChanging": self.exact,
            "expectedDrawn": round(self.expected, 1),
            "expectedFleetNodes": self.expected_fleet,
        }


@dataclass(frozen=True)
class ComponentSummary:
    """One distinct component change across the fleet, with the nodes it reaches."""

    name: str
    change: ComponentChangeKind
    label: str
    before: ArtifactInfo | None
    after: ArtifactInfo | None
    nodes: int
    patches: int
    patch_bytes: int
    full: int
    full_bytes: int

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "change": self.change,
            "label": self.label,
            "from": self.before.as_json() if self.before else None,
            "to": self.after.as_json() if self.after else None,
            "nodes": self.nodes,
            "patches": self.patches,
            "patchBytes": self.patch_bytes,
            "full": self.full,
            "fullBytes": self.full_bytes,
        }


@dataclass(frozen=True)
class ChangePlan:
    nodes: tuple[NodeChange, ...]
    groups: tuple[GroupImpact, ...]
    waves: tuple[WaveImpact, ...]
    components: tuple[ComponentSummary, ...]
    files: Mapping[str, FileChange]
    problems: tuple[Problem, ...]
    fleet_size: int
    base_fleet_size: int
    rendered: int  # nodes rendered at both commits (the others are known unchanged)
    untrusted_status: Mapping[str, str]  # node -> why its status head was not used

    @property
    def valid(self) -> bool:
        return not errors(self.problems)

    @property
    def errors(self) -> list[Problem]:
        return errors(self.problems)

    def count(self, kind: NodeChangeKind) -> int:
        return sum(1 for n in self.nodes if n.change == kind)

    @property
    def config_only(self) -> int:
        """Changed nodes that restage nothing: only checks, hooks or metadata differ."""
        return sum(
            1
            for n in self.nodes
            if n.change == "changed" and all(c.change == "config" for c in n.components)
        )

    @property
    def changing(self) -> int:
        """Nodes added, removed or changed (not those that cannot be rendered)."""
        return sum(1 for n in self.nodes if n.change != "unrenderable")

    def _moved(self) -> list[Bytes]:
        return [c.transfer for n in self.nodes for c in n.components if c.transfer is not None]

    @property
    def patch_bytes(self) -> int:
        return sum(t.bytes for t in self._moved() if t.patched)

    @property
    def full_bytes(self) -> int:
        return sum(t.bytes for t in self._moved() if not t.patched)

    @property
    def all_full_bytes(self) -> int:
        return sum(t.full_bytes for t in self._moved())

    @property
    def patches(self) -> int:
        return sum(1 for t in self._moved() if t.patched)

    @property
    def fulls(self) -> int:
        return sum(1 for t in self._moved() if not t.patched)

    def summary_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "errors": len(self.errors),
            "warnings": len(self.problems) - len(self.errors),
            "fleetNodes": self.fleet_size,
            "baseFleetNodes": self.base_fleet_size,
            "nodesChanging": self.changing,
            "nodesAdded": self.count("added"),
            "nodesRemoved": self.count("removed"),
            "nodesChanged": self.count("changed"),
            "nodesUnrenderable": self.count("unrenderable"),
            "nodesConfigOnly": self.config_only,
            "groupsTouched": sum(1 for g in self.groups if g.changing or g.file_change),
            "patchBytes": self.patch_bytes,
            "fullBytes": self.full_bytes,
            "allFullBytes": self.all_full_bytes,
            "patches": self.patches,
            "fullTransfers": self.fulls,
            "nodesRendered": self.rendered,
            "untrustedStatus": len(self.untrusted_status),
        }


def format_bytes(count: int) -> str:
    """Decimal units, as download sizes are quoted: 950 B, 14.2 kB, 1.2 MB, 3.40 GB."""
    if count < 1000:
        return f"{count} B"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if count < scale * 1000 or unit == "GB":
            value = count / scale
            return f"{value:.2f} {unit}" if unit == "GB" else f"{value:.1f} {unit}"
    return f"{count} B"  # pragma: no cover - the loop always returns


# --- comparing the two commits ----------------------------------------------------------


@dataclass
class _Rendered:
    """One node at one commit: its state, or why it cannot be rendered."""

    present: bool  # the commit has a file for this node
    state: dict[str, Any] | None
    error: str | None
    doc: Document | None


@dataclass
class NodeDiff:
    """A node whose rendered state differs (or cannot be compared), before the bytes."""

    node: str
    base: _Rendered
    head: _Rendered
    components: list[tuple[str, ComponentChangeKind, tuple[str, ...]]]
    metadata: tuple[str, ...]
    causes: tuple[str, ...]

    @property
    def kind(self) -> NodeChangeKind:
        if not self.head.present:
            return "removed"
        if self.head.state is None:
            return "unrenderable"
        return "changed" if self.base.present else "added"

    @property
    def needs_status(self) -> bool:
        """Whether this node moves bytes, so what it runs matters."""
        return self.head.state is not None and any(
            kind in ("added", "changed") for _, kind, _ in self.components
        )


@dataclass
class Diff:
    base: Snapshot
    head: Snapshot
    files: Mapping[str, FileChange]
    nodes: list[NodeDiff]
    rendered: int

    @property
    def nodes_needing_status(self) -> list[str]:
        return [d.node for d in self.nodes if d.needs_status]


def _shared_broken(repo: FleetRepo) -> str | None:
    """A shared document (fleet, catalog, a group) that failed to load: every node's state
    depends on it, so none can be rendered faithfully."""
    for file in repo.refused:
        if file in (FLEET_FILE, CATALOG_FILE) or file.startswith(f"{GROUPS_DIR}/"):
            return f"{file} fails validation"
    return None


def _render(repo: FleetRepo, doc: Document) -> dict[str, Any]:
    # A one-node view of the repository: render_node finds the node without a linear search,
    # and the view shares the repository's cache of which groups select which node.
    return render_node(replace(repo, nodes=[doc]), doc.name)


def _side(
    snapshot: Snapshot, node: str, docs: Mapping[str, Document], broken: str | None
) -> _Rendered:
    path = snapshot.node_files.get(node)
    if path is None:
        return _Rendered(False, None, None, None)
    doc = docs.get(path)
    if broken is not None:
        return _Rendered(True, None, broken, doc)
    if doc is None:
        return _Rendered(True, None, f"{path} fails validation", None)
    try:
        return _Rendered(True, _render(snapshot.repo, doc), None, doc)
    except RenderError as exc:
        return _Rendered(True, None, str(exc), doc)


def _artifact_refs(doc: Document) -> set[str]:
    refs = set()
    for component in doc.components.values():
        if isinstance(component, dict) and isinstance(component.get("artifact"), str):
            refs.add(component["artifact"])
    return refs


def _content(component: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    resolved = component["resolved"]
    return (resolved.get("sha256"), resolved.get("file"), resolved.get("unpack", "none"))


def _same_component(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """The same artifact, bytes, checks and hooks. The rest of the catalog entry (a patch
    newly offered, another URL, a description) changes nothing a node does or will run: nodes
    fetch by digest, and use patches only when they restage."""
    return (
        before["artifact"] == after["artifact"]
        and _content(before) == _content(after)
        and before["resolved"].get("size") == after["resolved"].get("size")
        and before.get("health") == after.get("health")
        and before.get("hooks") == after.get("hooks")
    )


def _same_state(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    if before == after:
        return True
    if (
        before["metadata"] != after["metadata"]
        or before["spec"]["identity"] != after["spec"]["identity"]
    ):
        return False
    old, new = before["spec"]["components"], after["spec"]["components"]
    return old.keys() == new.keys() and all(_same_component(old[n], new[n]) for n in old)


def _component_changes(
    base: Mapping[str, Any] | None, head: Mapping[str, Any] | None
) -> list[tuple[str, ComponentChangeKind, tuple[str, ...]]]:
    before = base["spec"]["components"] if base is not None else {}
    after = head["spec"]["components"] if head is not None else {}
    out: list[tuple[str, ComponentChangeKind, tuple[str, ...]]] = []
    for name in sorted(set(before) | set(after)):
        b, h = before.get(name), after.get(name)
        if b == h or (b is not None and h is not None and _same_component(b, h)):
            continue
        if b is None:
            out.append((name, "added", ()))
        elif h is None:
            out.append((name, "removed", ()))
        elif b["artifact"] != h["artifact"] or _content(b) != _content(h):
            out.append((name, "changed", ()))
        else:
            parts = tuple(
                label
                for key, label in (("health", "health checks"), ("hooks", "hooks"))
                if b.get(key) != h.get(key)
            )
            out.append((name, "config", parts))
    return out


def _metadata_changes(base: Mapping[str, Any], head: Mapping[str, Any]) -> tuple[str, ...]:
    out = []
    if base["metadata"].get("labels") != head["metadata"].get("labels"):
        out.append("labels")
    if base["metadata"].get("groups") != head["metadata"].get("groups"):
        out.append("groups")
    if base["spec"].get("identity") != head["spec"].get("identity"):
        out.append("identity")
    return tuple(out)


def compare(base: Snapshot, head: Snapshot, files: Mapping[str, FileChange]) -> Diff:
    """Every node whose rendered desired state differs between the two commits, or that
    cannot be rendered at head."""
    base_docs = {d.file: d for d in base.repo.nodes}
    head_docs = {d.file: d for d in head.repo.nodes}
    base_broken = _shared_broken(base.repo)
    head_broken = _shared_broken(head.repo)

    base_groups = {g.file: g for g in base.repo.groups}
    head_groups = {g.file: g for g in head.repo.groups}
    changed_groups = [
        g
        for file in sorted(set(base_groups) | set(head_groups))
        if base_groups.get(file) is not head_groups.get(file)
        for g in (base_groups.get(file), head_groups.get(file))
        if g is not None
    ]
    same_fleet = base.repo.fleet is head.repo.fleet
    same_catalog = base.repo.catalog is head.repo.catalog
    changed_refs: set[str] = set()
    if not same_catalog:
        old, new = base.repo.artifacts, head.repo.artifacts
        changed_refs = {r for r in set(old) | set(new) if old.get(r) != new.get(r)}
    refs_of: dict[int, set[str]] = {}

    def mentions_changed_ref(docs: Iterable[Document]) -> bool:
        for doc in docs:
            refs = refs_of.get(id(doc))
            if refs is None:
                refs = refs_of[id(doc)] = _artifact_refs(doc)
            if refs & changed_refs:
                return True
        return False

    def surely_same(doc: Document) -> bool:
        """The node's file, fleet.yaml, the groups selecting it and the catalog entries it
        can name are the same objects at both commits: its state cannot differ."""
        if not same_fleet or base_broken is not None or head_broken is not None:
            return False
        labels = doc.labels
        if any(matches(g.spec["selector"], labels) for g in changed_groups):
            return False
        if same_catalog:
            return True
        chain = [*([head.repo.fleet] if head.repo.fleet else []), *head.repo.groups_of(doc), doc]
        return not mentions_changed_ref(chain)

    nodes: list[NodeDiff] = []
    rendered = 0
    for node in sorted(set(base.node_files) | set(head.node_files)):
        bpath, hpath = base.node_files.get(node), head.node_files.get(node)
        bdoc = base_docs.get(bpath) if bpath else None
        hdoc = head_docs.get(hpath) if hpath else None
        if bdoc is not None and bdoc is hdoc and surely_same(hdoc):
            continue
        rendered += 1
        before = _side(base, node, base_docs, base_broken)
        after = _side(head, node, head_docs, head_broken)
        if (
            before.state is not None
            and after.state is not None
            and _same_state(before.state, after.state)
        ):
            continue
        # A node that cannot be rendered at head is listed even when it could not be at base
        # either: the head must be fixed before it is released.
        # What an unrenderable node would change is unknown: no component is listed for it.
        unknown = after.present and after.state is None
        components = [] if unknown else _component_changes(before.state, after.state)
        metadata = (
            _metadata_changes(before.state, after.state)
            if before.state is not None and after.state is not None
            else ()
        )
        nodes.append(
            NodeDiff(
                node,
                before,
                after,
                components,
                metadata,
                _causes(base.repo, head.repo, before, after, files),
            )
        )
    return Diff(base, head, files, nodes, rendered)


def _chain_files(repo: FleetRepo, side: _Rendered) -> list[str]:
    if side.doc is None:
        return []
    files = [FLEET_FILE, CATALOG_FILE, side.doc.file]
    if side.state is not None:
        names = set(side.state["metadata"]["groups"])
        files += [g.file for g in repo.groups if g.name in names]
    return files


def _causes(
    base: FleetRepo,
    head: FleetRepo,
    before: _Rendered,
    after: _Rendered,
    files: Mapping[str, FileChange],
) -> tuple[str, ...]:
    chain = set(_chain_files(base, before)) | set(_chain_files(head, after))
    return tuple(sorted(f for f in chain if f in files))


# --- what each node runs, and the bytes -------------------------------------------------


def _info(component: Mapping[str, Any] | None) -> ArtifactInfo | None:
    if component is None:
        return None
    resolved = component["resolved"]
    return ArtifactInfo(str(component["artifact"]), str(resolved["sha256"]), int(resolved["size"]))


def _installed(
    name: str,
    head_component: Mapping[str, Any],
    base_state: Mapping[str, Any] | None,
    running: Mapping[str, RunningComponent] | None,
    catalogs: Sequence[Mapping[str, Mapping[str, Any]]],
) -> tuple[Installed | None, BaseSource]:
    """What the node runs for this component: from its trusted status when it has one, else
    what the base commit renders for it."""
    if running is not None:
        have = running.get(name)
        if have is None:
            return None, "status"
        # The status names the artifact and its digest; the file name and unpacking that also
        # decide a restage come from the catalog entry of the same bytes, else from the head's.
        resolved = head_component["resolved"]
        file, unpack = resolved["file"], resolved.get("unpack", "none")
        for catalog in catalogs:
            entry = catalog.get(have.artifact or "")
            if entry is not None and entry.get("sha256") == have.sha256:
                file, unpack = entry["file"], entry.get("unpack", "none")
                break
        return Installed(have.artifact or "", have.sha256, file, unpack), "status"
    component = (base_state or {}).get("spec", {}).get("components", {}).get(name)
    if component is None:
        return None, "none"
    resolved = component["resolved"]
    return (
        Installed(
            component["artifact"],
            resolved["sha256"],
            resolved["file"],
            resolved.get("unpack", "none"),
        ),
        "base",
    )


def _node_change(
    diff: NodeDiff,
    running: Mapping[str, RunningComponent] | None,
    catalogs: Sequence[Mapping[str, Mapping[str, Any]]],
) -> list[ComponentChange]:
    base_state, head_state = diff.base.state, diff.head.state
    before = base_state["spec"]["components"] if base_state is not None else {}
    after = head_state["spec"]["components"] if head_state is not None else {}
    desired = desired_components(head_state) if head_state is not None else {}
    out = []
    for name, kind, parts in diff.components:
        transfer: Bytes | None = None
        already = False
        if kind in ("added", "changed"):
            installed, source = _installed(name, after[name], base_state, running, catalogs)
            want = desired[name]
            have = {name: installed} if installed is not None else {}
            changes = plan({name: want}, have)
            moves = transfers(changes, {installed.sha256: name} if installed else {})
            if moves:
                move = moves[0]
                if installed is None:
                    source = "none"
                transfer = Bytes(
                    bytes=move.bytes,
                    full_bytes=move.full_bytes,
                    patch_format=str(move.patch["format"]) if move.patch is not None else None,
                    patch_from=str(move.patch["from"]) if move.patch is not None else None,
                    base_source=source,
                    base_sha256=installed.sha256 if installed is not None else None,
                )
            else:
                already = True  # the node already runs these bytes
        out.append(
            ComponentChange(
                name,
                kind,
                _info(before.get(name)),
                _info(after.get(name)),
                parts,
                transfer,
                already,
            )
        )
    return out


def _waves(
    fleet_spec: Mapping[str, Any], fleet: str, node: str, labels: Mapping[str, str]
) -> tuple[str | None, dict[str, float]]:
    """The node's wave when a selector decides it, else the chance of each percentage wave."""
    waves: list[Mapping[str, Any]] = list((fleet_spec.get("rollout") or {}).get("waves") or [])
    first_percent = next((i for i, w in enumerate(waves) if "percent" in w), len(waves))
    # The selector waves before any percentage wave decide exactly, whatever the draw.
    exact = wave_of(
        {"rollout": {"waves": waves[:first_percent]}}, fleet, node, labels, key="not-drawn"
    )
    if exact is not None or first_percent == len(waves):
        return exact, {}
    shares: dict[str, float] = defaultdict(float)
    taken = 0.0  # the share of draws an earlier wave already took
    for wave in waves[first_percent:]:
        name = str(wave.get("name"))
        selector = wave.get("selector")
        if selector is not None:
            if matches(selector, labels):
                shares[name] += (100.0 - taken) / 100.0
                taken = 100.0
                break
            continue
        percent = float(wave.get("percent", 0))
        if percent > taken:
            shares[name] += (percent - taken) / 100.0
            taken = percent
    return None, dict(shares)


def make_plan(
    diff: Diff,
    problems: Sequence[Problem],
    running: Mapping[str, Mapping[str, RunningComponent]],
    untrusted: Mapping[str, str],
) -> ChangePlan:
    """The plan, from the comparison, the head's validation problems, what each node with a
    trusted status runs (`running`), and why the other status heads were not trusted."""
    base, head = diff.base.repo, diff.head.repo
    catalogs = (head.artifacts, base.artifacts)
    fleet_spec = head.fleet.spec if head.fleet is not None else {}
    fleet = head.fleet_name
    nodes: list[NodeChange] = []
    for d in diff.nodes:
        components = _node_change(d, running.get(d.node), catalogs)
        labels = (
            d.head.state["metadata"]["labels"]
            if d.head.state is not None
            else (d.head.doc.labels if d.head.doc is not None else {})
        )
        # Waves matter for nodes a release will reach: not removed nor unrenderable ones.
        wave, drawn = (
            _waves(fleet_spec, fleet, d.node, labels)
            if d.kind in ("added", "changed")
            else (None, {})
        )
        status = (
            "trusted" if d.node in running else untrusted.get(d.node) if d.needs_status else None
        )
        nodes.append(
            NodeChange(
                node=d.node,
                change=d.kind,
                components=tuple(components),
                groups=_groups(d.head) or (_groups(d.base) if d.kind == "removed" else ()),
                base_groups=_groups(d.base),
                metadata=d.metadata,
                causes=d.causes,
                wave=wave,
                drawn=drawn,
                error=d.head.error,
                base_error=d.base.error if d.kind != "added" else None,
                status=status,
            )
        )
    return ChangePlan(
        nodes=tuple(nodes),
        groups=_group_impacts(diff, nodes),
        waves=_wave_impacts(fleet_spec, nodes, len(diff.head.node_files)),
        components=_component_summaries(nodes),
        files=diff.files,
        problems=tuple(sorted(problems)),
        fleet_size=len(diff.head.node_files),
        base_fleet_size=len(diff.base.node_files),
        rendered=diff.rendered,
        untrusted_status={n: untrusted[n] for n in sorted(untrusted)},
    )


def _groups(side: _Rendered) -> tuple[str, ...]:
    if side.state is None:
        return ()
    return tuple(side.state["metadata"]["groups"])


def _group_impacts(diff: Diff, nodes: Sequence[NodeChange]) -> tuple[GroupImpact, ...]:
    base, head = diff.base.repo, diff.head.repo
    by_name: dict[str, tuple[Document, FleetRepo]] = {g.name: (g, base) for g in base.groups}
    by_name.update({g.name: (g, head) for g in head.groups})
    selected: Counter[str] = Counter()
    for doc in head.nodes:
        selected.update(g.name for g in head.groups_of(doc))
    head_names = {g.name for g in head.groups}
    for name, (group, repo) in by_name.items():
        if name not in head_names:
            selected[name] = sum(1 for n in repo.nodes if matches(group.spec["selector"], n.labels))
    names_of_files = {g.file: g.name for g in (*base.groups, *head.groups)}
    # A node is counted under the changed group files its state is made of; a node that
    # changes for another reason (fleet.yaml, the catalog, its own file) under every group
    # selecting it, so that a fleet-wide change is broken down by group.
    members: dict[str, list[NodeChange]] = defaultdict(list)
    counted: dict[str, list[NodeChange]] = defaultdict(list)
    for node in nodes:
        if node.change == "unrenderable":
            continue  # listed apart: what it would change is unknown
        names = list(dict.fromkeys((*node.groups, *node.base_groups)))
        for name in names:
            members[name].append(node)
        causes = [names_of_files[f] for f in node.causes if f in names_of_files]
        for name in causes or names:
            counted[name].append(node)
    group_files = {f: c for f, c in diff.files.items() if f.startswith(f"{GROUPS_DIR}/")}
    out = []
    for name in sorted(set(counted) | {names_of_files.get(f, f) for f in group_files}):
        found = by_name.get(name)
        file = found[0].file if found is not None else name
        changing = counted.get(name, [])
        labels: Counter[str] = Counter()
        for node in changing:
            labels.update({c.label for c in node.components})
            if not node.components:
                labels.update({f"{m} changed" for m in node.metadata})
        out.append(
            GroupImpact(
                name=name,
                file=file,
                file_change=diff.files.get(file),
                selected=selected.get(name, 0),
                changing=len(changing),
                members_changing=len(members.get(name, [])),
                components=tuple(labels.most_common()),
                bytes=sum(n.bytes for n in changing),
            )
        )
    out.sort(key=lambda g: (g.file_change is None, -g.changing, g.name))
    return tuple(out)


def _wave_impacts(
    fleet_spec: Mapping[str, Any], nodes: Sequence[NodeChange], fleet_size: int
) -> tuple[WaveImpact, ...]:
    exact: Counter[str] = Counter(n.wave for n in nodes if n.wave is not None)
    expected: dict[str, float] = defaultdict(float)
    for node in nodes:
        for name, share in node.drawn.items():
            expected[name] += share
    out = []
    for wave in (fleet_spec.get("rollout") or {}).get("waves") or []:
        name = str(wave.get("name"))
        percent = wave.get("percent")
        out.append(
            WaveImpact(
                name=name,
                selector=percent is None,
                percent=float(percent) if percent is not None else None,
                exact=exact.get(name, 0),
                expected=expected.get(name, 0.0),
                expected_fleet=round(float(percent) / 100 * fleet_size)
                if percent is not None
                else None,
            )
        )
    return tuple(out)


def _component_summaries(nodes: Sequence[NodeChange]) -> tuple[ComponentSummary, ...]:
    groups: dict[tuple[Any, ...], list[ComponentChange]] = defaultdict(list)
    for node in nodes:
        for c in node.components:
            key = (c.name, c.change, c.label, c.before, c.after)
            groups[key].append(c)
    out = []
    for (name, change, label, before, after), items in groups.items():
        moved = [c.transfer for c in items if c.transfer is not None]
        out.append(
            ComponentSummary(
                name=name,
                change=change,
                label=label,
                before=before,
                after=after,
                nodes=len(items),
                patches=sum(1 for t in moved if t.patched),
                patch_bytes=sum(t.bytes for t in moved if t.patched),
                full=sum(1 for t in moved if not t.patched),
                full_bytes=sum(t.bytes for t in moved if not t.patched),
            )
        )
    out.sort(key=lambda s: (-s.nodes, s.name, s.label))
    return tuple(out)
