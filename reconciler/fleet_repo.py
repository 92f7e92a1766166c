"""The documents of a fleet repository, read by location and checked against their schemas.

Only documents that pass their schema enter the model, so every later check and the renderer
can rely on the shapes the schemas promise; the problems of the others are reported instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from reconciler.errors import DocumentError
from reconciler.limits import DEFAULT_LIMITS, Limits
from reconciler.problems import Problem
from reconciler.repo_files import RepoFiles
from reconciler.schema_check import KIND_SCHEMAS, schema_errors, shown
from reconciler.selectors import matches
from reconciler.yaml_loader import FieldPath, Loaded, load_json, load_yaml

FLEET_FILE = "fleet.yaml"
CATALOG_FILE = "artifacts.yaml"
GROUPS_DIR = "groups"
NODES_DIR = "nodes"
TRUST_ROOT_FILE = "trust/root.json"
SIGNERS_FILE = "trust/allowed_signers"


def root_chain_file(version: int) -> str:
    """Where every version of the root stays, for nodes to walk the chain."""
    return f"trust/roots/{version}.json"


@dataclass(frozen=True)
class Document:
    file: str
    kind: str
    loaded: Loaded
    # Fields the schema refused; empty for a valid document. Checks skip what lies under them.
    broken: frozenset[FieldPath] = frozenset()

    def sound(self, path: FieldPath) -> bool:
        """No schema error at, above or below this field: checks may read it as the schema says."""
        return not any(path[: len(bad)] == bad or bad[: len(path)] == path for bad in self.broken)

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = self.loaded.data
        return data

    # The accessors below answer for partial documents too, with empty values where the
    # shape is wrong, because per-document checks also run on documents the schema refused.
    @cached_property
    def name(self) -> str:
        name = _mapping(self.data.get("metadata")).get("name")
        return name if isinstance(name, str) else ""

    @cached_property
    def spec(self) -> dict[str, Any]:
        return _mapping(self.data.get("spec"))

    @cached_property
    def labels(self) -> dict[str, str]:
        return _mapping(_mapping(self.data.get("metadata")).get("labels"))

    @cached_property
    def components(self) -> dict[str, Any]:
        return _mapping(self.spec.get("components"))

    def line(self, *path: str | int) -> int:
        return self.loaded.line_of(path)


def priority(group: Document) -> int:
    value = group.spec.get("priority", 0)
    return value if isinstance(value, int) else 0


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass
class FleetRepo:
    files: RepoFiles
    fleet: Document | None = None
    catalog: Document | None = None
    groups: list[Document] = field(default_factory=list)
    nodes: list[Document] = field(default_factory=list)
    trust_root: Document | None = None
    # Documents present but refused (unreadable or off-schema): their problems are reported.
    refused: list[str] = field(default_factory=list)
    # Off-schema documents of a known kind: per-document checks still look at their sound parts.
    partial: list[Document] = field(default_factory=list)

    @property
    def artifacts(self) -> dict[str, dict[str, Any]]:
        if self.catalog is None:
            return {}
        artifacts: dict[str, dict[str, Any]] = self.catalog.spec["artifacts"]
        return artifacts

    @property
    def fleet_name(self) -> str:
        return self.fleet.name if self.fleet is not None else ""

    # Which groups select each node, in merge order; computed once, asked by several checks.
    _groups_of: dict[str, list[Document]] = field(default_factory=dict, repr=False)

    def node(self, node_id: str) -> Document | None:
        return next((n for n in self.nodes if n.name == node_id), None)

    def groups_of(self, node: Document) -> list[Document]:
        """The groups whose selector matches the node: ascending priority, then name."""
        found = self._groups_of.get(node.file)
        if found is None:
            if len(self._ordered_groups) != len(self.groups):
                self._ordered_groups[:] = sorted(self.groups, key=lambda g: (priority(g), g.name))
            labels = node.labels
            found = [g for g in self._ordered_groups if matches(g.spec["selector"], labels)]
            self._groups_of[node.file] = found
        return found

    _ordered_groups: list[Document] = field(default_factory=list, repr=False)


class _Reader:
    def __init__(self, files: RepoFiles, limits: Limits, problems: list[Problem]) -> None:
        self.files = files
        self.limits = limits
        self.problems = problems
        self.refused: list[str] = []
        self.partial: list[Document] = []

    def problem(self, file: str, line: int, message: str, rule: str) -> None:
        self.problems.append(Problem(file, line, message, "error", rule))
        self.refused.append(file)

    def document(self, path: str, kind: str, required: bool, schema: str = "") -> Document | None:
        entry = self.files.entry(path)
        if entry is None:
            if required:
                self.problem(
                    path, 1, f"missing: every fleet repository has a {kind} here", "layout"
                )
            return None
        if entry == "link":
            self.problem(
                path,
                1,
                "is a link, expected a regular file (a link can point outside the repository)",
                "unsafe-path",
            )
            return None
        if entry != "file":
            self.problem(path, 1, f"is a {entry}, expected a regular file", "layout")
            return None
        try:
            load = load_json if path.endswith(".json") else load_yaml
            loaded = load(self.files.read(path), path, self.limits)
        except DocumentError as exc:
            self.problem(exc.file, exc.line, exc.message, "yaml")
            return None
        if not isinstance(loaded.data, dict):
            self.problem(
                path,
                loaded.line_of(()),
                f"got {shown(loaded.data)}, expected a mapping with apiVersion, kind, metadata"
                " and spec",
                "schema",
            )
            return None
        if not schema:
            got = loaded.data.get("kind")
            if got != kind:
                where = f"{path.split('/')[0]}/" if "/" in path else path
                self.problem(
                    path,
                    loaded.line_of(("kind",)),
                    f"kind: got {shown(got)}, expected {shown(kind)} (the kind that {where} holds)",
                    "schema",
                )
                return None
        found = schema_errors(loaded.data, schema or KIND_SCHEMAS[kind])
        if found:
            self.problems.extend(
                Problem(path, loaded.line_of(where), message, "error", "schema")
                for where, message in found
            )
            self.refused.append(path)
            self.partial.append(Document(path, kind, loaded, frozenset(w for w, _ in found)))
            return None
        return Document(path, kind, loaded)

    def folder(self, folder: str, kind: str, only: str | None = None) -> list[Document]:
        documents: list[Document] = []
        if only is not None:
            doc = self.document(f"{folder}/{only}.yaml", kind, required=False)
            return [doc] if doc is not None else []
        if self.files.entry(folder) == "link":
            self.problem(
                folder,
                1,
                "is a link, expected a folder in the repository (a link can point outside it)",
                "unsafe-path",
            )
            return documents
        listing = self.files.listdir(folder)
        if len(listing) > self.limits.max_repo_files:
            self.problem(
                folder,
                1,
                f"holds {len(listing)} entries, expected at most {self.limits.max_repo_files}",
                "layout",
            )
            return documents
        for name, entry in listing:
            path = f"{folder}/{name}"
            if name.startswith("."):
                continue
            if entry == "dir":
                self.problem(
                    path, 1, f"is a folder, expected only <name>.yaml files in {folder}/", "layout"
                )
                continue
            if name.endswith(".yml"):
                self.problem(
                    path, 1, f"file name: got '{name}', expected the ending .yaml", "layout"
                )
                continue
            if not name.endswith(".yaml"):
                self.problems.append(
                    Problem(
                        path,
                        1,
                        f"ignored: only .yaml files are read in {folder}/",
                        "warning",
                        "layout",
                    )
                )
                continue
            doc = self.document(path, kind, required=False)
            if doc is not None:
                documents.append(doc)
        return documents


def load_fleet_repo(
    files: RepoFiles,
    limits: Limits = DEFAULT_LIMITS,
    only_node: str | None = None,
) -> tuple[FleetRepo, list[Problem]]:
    """Read and schema-check every document; with `only_node`, read just that node's file."""
    problems: list[Problem] = []
    reader = _Reader(files, limits, problems)
    repo = FleetRepo(files)
    repo.fleet = reader.document(FLEET_FILE, "Fleet", required=True)
    repo.catalog = reader.document(CATALOG_FILE, "ArtifactCatalog", required=True)
    repo.groups = reader.folder(GROUPS_DIR, "Group")
    repo.nodes = reader.folder(NODES_DIR, "Node", only=only_node)
    repo.trust_root = reader.document(TRUST_ROOT_FILE, "Root", required=False, schema="root.json")
    if repo.trust_root is None and files.entry(TRUST_ROOT_FILE) is None:
        problems.append(
            Problem(
                TRUST_ROOT_FILE,
                1,
                "missing: without a trust root no agent can verify a release"
                " (create one with `edgefleet trust init`)",
                "warning",
                "layout",
            )
        )
    repo.refused = reader.refused
    repo.partial = reader.partial
    return repo, problems
