"""Offline bundles: what a USB stick carries to a node that never sees the origin.

A bundle is one uncompressed tar file. Its first member, `manifest.json`, names every other
member with its size and SHA-256: `repo.bundle` (a `git bundle` of release tags) and
`blobs/<sha256>` (artifacts and patches, by content). The manifest is an index, not a
credential: it lets an agent refuse a bundle damaged on the way (a flipped byte, a copy cut
short) before it touches anything, and say which member is wrong. Everything the node applies
it verifies exactly as after a pull: release signatures and expiry, file digests, the
catalog's artifact digests.

This module decides; it reads no files. `reconciler.commands.bundle` writes bundles and
`node_agent.bundle_import` reads them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import EdgeFleetError
from reconciler.node_plan import Desired, choose_patch
from reconciler.ref_names import release_version
from reconciler.schema_check import schema_errors

BUNDLE_FORMAT = "edgefleet-bundle/1"
MANIFEST = "manifest.json"
GIT_BUNDLE = "repo.bundle"
BLOBS = "blobs"
MANIFEST_SCHEMA = "bundle-manifest.json"


class BundleInvalid(EdgeFleetError):
    """A bundle the node must not use: damaged, another fleet's, or older than what it runs.
    Nothing on the node changed when this is raised."""

    exit_code = 3

    def __init__(self, message: str, rule: str = "bundle") -> None:
        super().__init__(message)
        self.rule = rule


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    sha256: str

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Carried:
    """One component a node needs for the release it will take, and the blob that brings it."""

    artifact: str
    blob: str
    kind: str  # full | patch | missing (not in the bundle: the node's own sources must serve it)
    size: int

    def as_json(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "blob": self.blob, "kind": self.kind, "size": self.size}


@dataclass(frozen=True)
class NodeCargo:
    release: int
    components: Mapping[str, Carried] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "release": self.release,
            "components": {n: c.as_json() for n, c in sorted(self.components.items())},
        }


@dataclass(frozen=True)
class Manifest:
    fleet: str
    created_at: str
    since: int | None
    releases: tuple[int, ...]
    refs: Mapping[str, str]
    members: tuple[Member, ...]
    nodes: Mapping[str, NodeCargo]

    @property
    def newest(self) -> int:
        return max(self.releases)

    def as_json(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "fleet": self.fleet,
            "createdAt": self.created_at,
            "since": self.since,
            "releases": list(self.releases),
            "refs": dict(sorted(self.refs.items())),
            "members": [m.as_json() for m in self.members],
            "nodes": {n: c.as_json() for n, c in sorted(self.nodes.items())},
        }

    def encode(self) -> bytes:
        return (json.dumps(self.as_json(), indent=2) + "\n").encode()


def parse_manifest(data: bytes, where: str) -> Manifest:
    """The manifest's fields, checked against its schema and for consistency with itself."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleInvalid(f"{where}: got no readable JSON ({exc}), expected a manifest") from None
    problems = schema_errors(doc, MANIFEST_SCHEMA)
    if problems:
        path, message = problems[0]
        field_name = ".".join(str(p) for p in path) or "(top level)"
        raise BundleInvalid(f"{where}: {field_name}: {message}")
    refs = {str(k): str(v) for k, v in doc["refs"].items()}
    versions = sorted(v for r in refs if (v := release_version(r)) is not None)
    if versions != sorted(doc["releases"]):
        raise BundleInvalid(
            f"{where}: releases: got {sorted(doc['releases'])}, expected the versions of its"
            f" refs {versions}"
        )
    members = tuple(Member(m["name"], m["size"], m["sha256"]) for m in doc["members"])
    names = [m.name for m in members]
    if len(set(names)) != len(names) or GIT_BUNDLE not in names:
        raise BundleInvalid(
            f"{where}: members: got {len(names)} names with {len(set(names))} distinct, expected"
            f" distinct names including {GIT_BUNDLE}"
        )
    for member in members:
        if member.name.startswith(BLOBS + "/") and member.name != blob_name(member.sha256):
            raise BundleInvalid(
                f"{where}: members: {member.name}: got sha256 {member.sha256}, expected a blob"
                " named by its own digest"
            )
    nodes = {
        name: NodeCargo(
            cargo["release"],
            {
                comp: Carried(c["artifact"], c["blob"], c["kind"], c["size"])
                for comp, c in cargo["components"].items()
            },
        )
        for name, cargo in doc["nodes"].items()
    }
    return Manifest(
        doc["fleet"],
        doc["createdAt"],
        doc["since"],
        tuple(sorted(doc["releases"])),
        refs,
        members,
        nodes,
    )


def blob_name(sha256: str) -> str:
    return f"{BLOBS}/{sha256}"


def check_refs(manifest: Manifest, found: Mapping[str, str], where: str) -> None:
    """The git bundle's refs must be the ones the manifest lists: otherwise members were
    swapped or damaged, and the manifest describes another bundle."""
    if dict(found) != dict(manifest.refs):
        listed = ", ".join(f"{r} {s[:12]}" for r, s in sorted(found.items())) or "none"
        wanted = ", ".join(f"{r} {s[:12]}" for r, s in sorted(manifest.refs.items()))
        raise BundleInvalid(
            f"{where}: {GIT_BUNDLE} holds refs {listed}, expected the manifest's {wanted}"
        )


def check_fits(manifest: Manifest, fleet: str, running: int | None, where: str) -> bool:
    """Whether the bundle brings a release newer than `running`; raises when it belongs to
    another fleet or everything in it is older than what the node runs (a rollback)."""
    if manifest.fleet != fleet:
        raise BundleInvalid(
            f"{where}: got a bundle for fleet {manifest.fleet!r}, expected one for this node's"
            f" fleet {fleet!r} (its trust root); nothing was changed",
            rule="fleet",
        )
    if running is not None and manifest.newest < running:
        raise BundleInvalid(
            f"{where}: got a bundle whose newest release is {manifest.newest}, expected one at"
            f" or above release {running}, which this node already runs; an older bundle is"
            " refused as a rollback and nothing was changed",
            rule="rollback",
        )
    return running is None or manifest.newest > running


def cargo_for(
    release: int,
    wanted: Mapping[str, Desired],
    base: Mapping[str, Desired] | None,
    available: Sequence[str] | None,
) -> NodeCargo:
    """What one node needs to go from `base` (its desired state at the bundle's `since`
    release; None when unknown) to `wanted`: nothing for an unchanged component, a patch when
    the catalog has one from the base's artifact, else the full artifact. `available` lists
    the digests the artifact store holds (None: no store, nothing carried)."""
    components: dict[str, Carried] = {}
    held = set(available) if available is not None else None
    for name, want in sorted(wanted.items()):
        before = base.get(name) if base is not None else None
        if before is not None and before.sha256 == want.sha256:
            continue
        patch = choose_patch(want, {before.sha256: name}) if before is not None else None
        if patch is not None and (held is None or patch["sha256"] in held):
            carried = Carried(want.artifact, str(patch["sha256"]), "patch", int(patch["size"]))
        else:
            carried = Carried(want.artifact, want.sha256, "full", want.size)
        if held is None or carried.blob not in held:
            carried = Carried(carried.artifact, carried.blob, "missing", carried.size)
        components[name] = carried
    return NodeCargo(release, components)
