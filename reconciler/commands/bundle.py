"""`edgefleet bundle create`: one file for a USB stick, holding what selected nodes need.

The git part is a `git bundle` of the release tags (from `--since`: only what a node running
that release lacks). The artifacts are those each selected node needs to reach the release it
will take, as a patch where the catalog has one from what the node ran at `--since`, else in
full. Every release carried is signature-checked here first, so a forged tag is caught before
it travels; the node checks everything again regardless.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import git

from reconciler.atomic import atomic_output, sha256_file
from reconciler.commands.artifacts import STORE_DIR
from reconciler.commands.release import head_root, open_repo
from reconciler.commands.rollout import verified_info
from reconciler.errors import EdgeFleetError, RenderError, UsageError
from reconciler.fleet_repo import FleetRepo, load_fleet_repo
from reconciler.git_tree import GitTreeFiles
from reconciler.node_plan import Desired, desired_components
from reconciler.offline_bundle import (
    GIT_BUNDLE,
    MANIFEST,
    Manifest,
    Member,
    NodeCargo,
    blob_name,
    cargo_for,
)
from reconciler.release import envelope_from_message, unverified_payload
from reconciler.release_tags import ReleaseTag, release_tags
from reconciler.render import render_node
from reconciler.rollout import in_wave
from reconciler.rollout_gate import ReleaseInfo
from reconciler.selectors import matches
from reconciler.timestamps import format_timestamp, now, parse_timestamp


class BundleFailed(EdgeFleetError):
    """The bundle cannot be made as asked; nothing was written."""

    exit_code = 1


def parse_selector(text: str | None) -> dict[str, Any]:
    """`key=value,key!=value,key,!key` as a label selector; the key `name` means the node id
    unless a node has a label of that name."""
    if not text:
        return {}
    labels: dict[str, str] = {}
    expressions: list[dict[str, Any]] = []
    for term in (t.strip() for t in text.split(",")):
        if not term:
            continue
        if "!=" in term:
            key, value = term.split("!=", 1)
            expressions.append({"key": key, "operator": "NotIn", "values": [value]})
        elif "=" in term:
            key, value = term.split("=", 1)
            labels[key.strip()] = value.strip()
        elif term.startswith("!"):
            expressions.append({"key": term[1:], "operator": "DoesNotExist"})
        else:
            expressions.append({"key": term, "operator": "Exists"})
    return {"matchLabels": labels, "matchExpressions": expressions}


def _fleet_at(repo: git.Repo, commit: str, where: str) -> FleetRepo:
    fleet, problems = load_fleet_repo(GitTreeFiles(repo, commit))
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        first = errors[0]
        raise BundleFailed(f"{where}: {first.file}:{first.line}: {first.message}")
    return fleet


def _desired(fleet: FleetRepo, node: str, where: str) -> dict[str, Desired] | None:
    if fleet.node(node) is None:
        return None
    try:
        return desired_components(render_node(fleet, node))
    except RenderError as exc:
        raise BundleFailed(f"{where}: {exc}") from None


def _store_digests(store: Path | None) -> list[str] | None:
    if store is None:
        return None
    folder = store / STORE_DIR
    if not folder.is_dir():
        raise UsageError(
            f"{store}: got no {STORE_DIR}/ folder, expected an artifact store made by"
            " `edgefleet artifacts add --store`"
        )
    return [p.name for p in folder.iterdir() if p.is_file() and len(p.name) == 64]


def plan_cargo(
    repo: git.Repo,
    releases: list[tuple[ReleaseTag, ReleaseInfo]],
    since: tuple[ReleaseTag, ReleaseInfo] | None,
    selector: Mapping[str, Any],
    available: list[str] | None,
) -> dict[str, NodeCargo]:
    """Per selected node: the newest carried release that reaches it (its wave, as the agent
    decides) and what it needs for it."""
    fleets = {info.version: _fleet_at(repo, info.commit, tag.name) for tag, info in releases}
    newest = fleets[releases[0][1].version]
    base = _fleet_at(repo, since[1].commit, since[0].name) if since is not None else None
    cargo: dict[str, NodeCargo] = {}
    for doc in newest.nodes:
        node = doc.name
        if not matches(selector, {"name": node, **doc.labels}):
            continue
        for tag, info in releases:
            fleet = fleets[info.version]
            found = fleet.node(node)
            spec = fleet.fleet.spec if fleet.fleet is not None else {}
            labels = found.labels if found is not None else {}
            if found is None or not in_wave(
                spec, fleet.fleet_name, info.wave, node, labels, info.commit
            ):
                continue
            wanted = _desired(fleet, node, tag.name)
            assert wanted is not None
            before = _desired(base, node, since[0].name) if base and since else None
            cargo[node] = cargo_for(info.version, wanted, before, available)
            break
    return cargo


def _git_bundle(repo: git.Repo, refs: list[str], since: str | None, out: Path) -> None:
    args = ["git", "-C", str(repo.git_dir), "bundle", "create", "-q", str(out), *refs]
    if since is not None:
        args.append(f"^{since}")
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BundleFailed(f"git bundle create failed: {done.stderr.strip()}")


def _tar_member(tar: tarfile.TarFile, name: str, size: int, data: IO[bytes]) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    # Fixed metadata: the same inputs make the same bytes.
    info.mtime = 0
    info.uname = info.gname = ""
    tar.addfile(info, data)


@contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="edgefleet-bundle-") as tmp:
        yield Path(tmp)


def create_bundle(
    repo: git.Repo,
    out: Path,
    store: Path | None,
    since_version: int | None,
    selector: Mapping[str, Any],
) -> Manifest:
    """Write the bundle to `out` (atomically) and return its manifest."""
    root = head_root(repo)
    tags = release_tags(repo)
    if not tags:
        raise UsageError(f"{repo.working_dir}: got no release/<N> tag, expected one to carry")
    since = None
    if since_version is not None:
        since_tag = next((t for t in tags if t.version == since_version), None)
        if since_tag is None:
            raise UsageError(
                f"--since {since_version}: got no tag release/{since_version}, expected one of"
                f" {', '.join(str(t.version) for t in tags[:10])}"
            )
        since = (since_tag, verified_info(since_tag, root))
    carried = [t for t in tags if since_version is None or t.version > since_version]
    if not carried:
        raise UsageError(
            f"--since {since_version}: got no release newer than it, expected at least one"
            f" (the newest is {tags[0].version})"
        )
    releases = [(tag, verified_info(tag, root)) for tag in carried]
    available = _store_digests(store)
    cargo = plan_cargo(repo, releases, since, selector, available)
    if not cargo:
        raise UsageError("--nodes: got a selector no node of the newest release matches")
    lacking = sorted(
        {
            f"{c.artifact} (sha256 {c.blob[:12]})"
            for node in cargo.values()
            for c in node.components.values()
            if c.kind == "missing"
        }
    )
    if store is not None and lacking:
        raise BundleFailed(
            f"{store}: lacks {', '.join(lacking)}, expected every artifact the selected nodes"
            " need (`edgefleet artifacts add --store`)"
        )
    refs = {f"refs/tags/{tag.name}": tag_object(repo, tag) for tag in carried}
    blobs = sorted(
        {c.blob for n in cargo.values() for c in n.components.values() if c.kind != "missing"}
    )
    with _scratch() as scratch:
        git_file = scratch / GIT_BUNDLE
        _git_bundle(repo, sorted(refs), f"refs/tags/{since[0].name}" if since else None, git_file)
        members = [Member(GIT_BUNDLE, git_file.stat().st_size, sha256_file(git_file))]
        sources = {GIT_BUNDLE: git_file}
        for digest in blobs:
            assert store is not None
            path = store / STORE_DIR / digest
            sources[blob_name(digest)] = path
            found = sha256_file(path)
            if found != digest:
                raise BundleFailed(
                    f"{path}: got content with sha256 {found}, expected {digest} (the file's"
                    " name); the store is damaged, re-add the artifact"
                )
            members.append(Member(blob_name(digest), path.stat().st_size, digest))
        manifest = Manifest(
            fleet=root.fleet,
            created_at=format_timestamp(now()),
            since=since_version,
            releases=tuple(sorted(info.version for _, info in releases)),
            refs=refs,
            members=tuple(members),
            nodes=cargo,
        )
        encoded = manifest.encode()
        with (
            atomic_output(out) as sink,
            tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            _tar_member(tar, MANIFEST, len(encoded), io.BytesIO(encoded))
            for member in members:
                with open(sources[member.name], "rb") as data:
                    _tar_member(tar, member.name, member.size, data)
    return manifest


def tag_object(repo: git.Repo, tag: ReleaseTag) -> str:
    sha: str = repo.git.rev_parse(f"refs/tags/{tag.name}")
    return sha


def expiry_warnings(repo: git.Repo, manifest: Manifest) -> list[str]:
    """Releases that expire soon: a stick that arrives later than that is refused."""
    out = []
    for tag in release_tags(repo):
        if tag.version != manifest.newest:
            continue
        payload = unverified_payload(envelope_from_message(tag.message, tag.name))
        expires = parse_timestamp(str(payload["expires"]))
        days = (expires - now()).total_seconds() / 86400
        out.append(
            f"release {tag.version} expires at {format_timestamp(expires)} (in {days:.0f} days):"
            " a node that imports this bundle later refuses it as expired"
        )
    return out


def cmd_bundle_create(args: argparse.Namespace) -> int:
    repo = open_repo(args.repo)
    out = Path(args.out)
    store = Path(args.artifacts) if args.artifacts else None
    manifest = create_bundle(repo, out, store, args.since, parse_selector(args.nodes))
    size = out.stat().st_size
    blobs = [m for m in manifest.members if m.name != GIT_BUNDLE]
    summary = {
        "bundle": str(out),
        "fleet": manifest.fleet,
        "releases": list(manifest.releases),
        "since": manifest.since,
        "nodes": len(manifest.nodes),
        "blobs": len(blobs),
        "bytes": size,
        "sha256": sha256_file(out),
    }
    print(json.dumps(summary, indent=2))
    for warning in expiry_warnings(repo, manifest):
        print(f"note: {warning}", file=sys.stderr)
    if store is None:
        print(
            "note: no --artifacts store given: the bundle carries releases only, and nodes"
            " fetch artifacts from their own sources",
            file=sys.stderr,
        )
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    bundle = sub.add_parser(
        "bundle",
        parents=[common],
        help="offline bundles for nodes that never see the origin",
    )
    actions = bundle.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create",
        parents=[common],
        help="one file holding the release tags and the artifacts the selected nodes need",
        description="Writes a tar file: manifest.json (an index of sizes and digests), a git"
        " bundle of the release tags, and every artifact or patch the selected nodes need to"
        " reach the newest release that reaches them. Exit 0 written, 1 cannot be made, 2"
        " usage.",
    )
    create.add_argument("--repo", default=".", help="the fleet repository (default: .)")
    create.add_argument("--out", required=True, help="the bundle file to write")
    create.add_argument(
        "--artifacts", help="the artifact store (`artifacts add --store`) to take artifacts from"
    )
    create.add_argument(
        "--since",
        type=int,
        metavar="VERSION",
        help="the release the nodes run: carry only what is newer, and patches from it",
    )
    create.add_argument(
        "--nodes",
        metavar="SELECTOR",
        help="label selector such as region=eu,tier=store (name=ID selects one node; default:"
        " every node)",
    )
    create.set_defaults(func=cmd_bundle_create)
