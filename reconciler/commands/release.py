"""`edgefleet release` signs HEAD as the next version; `edgefleet verify` checks one as a node.

Both read the committed tree, never the working tree, and `verify` applies exactly the rules of
`reconciler.release.verify_release` that every agent applies.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import git

from reconciler.errors import EdgeFleetError, UsageError
from reconciler.fleet_repo import TRUST_ROOT_FILE
from reconciler.git_tree import GitTreeFiles
from reconciler.keyfiles import load_signing_key
from reconciler.keys import SigningKey
from reconciler.release import (
    Accepted,
    build_payload,
    chain_base,
    envelope_from_message,
    file_digest,
    payload_bytes,
    sign_release,
    tag_message,
    tag_name,
    unverified_payload,
)
from reconciler.release_tags import create_tag, payload_loader, release_tags
from reconciler.status_source import principal
from reconciler.timestamps import expiry, format_timestamp, now
from reconciler.trust_root import TrustRoot, load_pinned_root
from reconciler.verify import refuse_invalid, verify_tree
from reconciler.yaml_loader import load_yaml


def open_repo(path: str) -> git.Repo:
    try:
        return git.Repo(path)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise UsageError(
            f"{path}: not a git repository, expected a fleet repository clone"
        ) from None


def _baseline(repo: git.Repo, last_wave: str | None) -> int | None:
    """The newest release that went to every node: nodes outside a new wave keep it."""
    for tag in release_tags(repo):
        try:
            rollout = unverified_payload(envelope_from_message(tag.message, tag.name))["rollout"]
        except (KeyError, TypeError, ValueError):
            continue
        if rollout.get("wave") in (None, last_wave):
            return tag.version
    return None


def release_keys_for(root: TrustRoot, paths: list[str] | None, sigstore: bool) -> list[SigningKey]:
    """The release keys given by path, checked against the root: distinct, release keys of
    this root, and enough with sigstore to meet the release threshold."""
    keys = [load_signing_key(Path(k)) for k in paths or ()]
    ids = [k.keyid for k in keys]
    if len(set(ids)) != len(ids):
        raise UsageError("--key: the same key given twice, expected distinct release keys")
    for key in keys:
        if key.keyid not in root.release.keyids:
            raise UsageError(
                f"--key: key {key.keyid[:16]}... is not a release key of root version"
                f" {root.version}, expected one of {', '.join(k[:16] for k in root.release.keyids)}"
            )
    signers = len(keys) + (1 if sigstore else 0)
    if signers < root.release.threshold:
        raise UsageError(
            f"--key: got {signers} signer(s), expected at least {root.release.threshold}"
            " (the release threshold of the root)"
        )
    if not keys:
        raise UsageError("--key: a release key is needed to sign the tag itself for git")
    return keys


class ReleasePushFailed(EdgeFleetError):
    """The release was signed but could not be pushed: nothing was released."""

    exit_code = 75


def head_root(repo: git.Repo) -> TrustRoot:
    """The trust root at HEAD: the keys that may sign the next release."""
    try:
        tree = GitTreeFiles(repo, "HEAD")
    except (ValueError, git.BadName):
        raise UsageError(
            f"{repo.working_dir}: HEAD names no commit, expected a checked-out branch (a clone"
            " of an origin whose HEAD is unborn needs `git clone -b main`)"
        ) from None
    if tree.entry(TRUST_ROOT_FILE) != "file":
        raise UsageError(
            f"{TRUST_ROOT_FILE}: missing at HEAD, expected a root (`edgefleet trust init`)"
        )
    root = load_pinned_root(tree.read(TRUST_ROOT_FILE), f"{TRUST_ROOT_FILE} at HEAD")
    if now() >= root.expires:
        raise UsageError(
            f"{TRUST_ROOT_FILE}: expired at {format_timestamp(root.expires)}; rotate it first"
            " (`edgefleet trust rotate`)"
        )
    return root


def sign_next_release(
    repo: git.Repo,
    rev: str,
    root: TrustRoot,
    keys: list[SigningKey],
    *,
    expires: str,
    wave: str | None,
    baseline: int | None,
    halts: int | None = None,
    sigstore: bool = False,
    push_to: str | None = None,
) -> dict[str, Any]:
    """Sign commit `rev` as the next release version and tag it (pushing the tag to
    `push_to`); what `edgefleet release` prints. `rev` must pass validation."""
    tree = GitTreeFiles(repo, rev)
    refuse_invalid(tree, f"{rev} ({tree.commit[:12]})")
    started = now()
    digests: dict[str, str] = {}
    for path in tree.paths():
        kind = tree.entry(path)
        if kind != "file":
            raise UsageError(f"{path}: a {kind} in the commit, expected only regular files")
        digests[path] = file_digest(tree.read(path))
    tags = release_tags(repo)
    version = tags[0].version + 1 if tags else 1
    # Listing only what changed since the newest release keeps a release tag small in a big
    # fleet; what a node downloads for a release then does not grow with the fleet.
    base = (
        chain_base(root.fleet, tags[0].version, tags[0].name, payload_loader(tags))
        if tags
        else None
    )
    payload = build_payload(
        fleet=root.fleet,
        version=version,
        commit=tree.commit,
        files=digests,
        issued_at=started,
        expires=expiry(expires, started),
        wave=wave,
        baseline=baseline,
        halts=halts,
        base=base,
    )
    bundles: list[dict[str, Any]] = []
    if sigstore:
        from reconciler.sigstore_release import sign_with_sigstore

        bundles.append(json.loads(sign_with_sigstore(payload_bytes(payload))))
    envelope = sign_release(payload, keys, bundles)
    name = tag_name(version)
    create_tag(
        repo,
        name=name,
        commit=tree.commit,
        message=tag_message(envelope),
        signer=keys[0],
        tagger=f"EdgeFleet release <{principal(keys[0].public.comment or 'release', root.fleet)}>",
        when=started,
    )
    if push_to is not None:
        try:
            repo.git.push(push_to, f"refs/tags/{name}")
        except git.GitCommandError as exc:
            # An unpushed release tag left here would look like the newest release to the
            # next `rollout advance` in this clone.
            repo.git.tag("-d", name)
            said = (exc.stderr or "").strip().splitlines()
            raise ReleasePushFailed(
                f"pushing {name} to {push_to} failed ({said[-1] if said else exc.status});"
                f" nothing was released and the tag was removed here; expected {push_to}"
                " reachable and writable"
            ) from None
    return {
        "version": version,
        "commit": tree.commit,
        "tag": name,
        "expires": payload["expires"],
        "wave": wave,
        "baseline": baseline,
        "halts": halts,
        "signers": [k.keyid for k in keys],
    }


def cmd_release(args: argparse.Namespace) -> int:
    repo = open_repo(args.repo)
    root = head_root(repo)
    keys = release_keys_for(root, args.key, args.sigstore)
    fleet_spec = fleet_spec_at(repo, "HEAD")
    waves = [w["name"] for w in fleet_spec.get("rollout", {}).get("waves", [])]
    if args.wave is not None and args.wave not in waves:
        raise UsageError(
            f"--wave: got {args.wave!r}, expected one of {', '.join(waves) or '(none)'}"
        )
    made = sign_next_release(
        repo,
        "HEAD",
        root,
        keys,
        expires=args.expires,
        wave=args.wave,
        baseline=_baseline(repo, waves[-1] if waves else None) if args.wave else None,
        sigstore=args.sigstore,
        push_to=args.remote if args.push else None,
    )
    print(json.dumps(made, indent=2))
    return 0


def fleet_spec_at(repo: git.Repo, rev: str) -> dict[str, Any]:
    """fleet.yaml's spec at `rev`, or {} when it has none."""
    tree = GitTreeFiles(repo, rev)
    if tree.entry("fleet.yaml") != "file":
        return {}
    loaded = load_yaml(tree.read("fleet.yaml"), f"{rev}:fleet.yaml").data
    spec = loaded.get("spec") if isinstance(loaded, dict) else None
    return spec if isinstance(spec, dict) else {}


def cmd_verify(args: argparse.Namespace) -> int:
    repo = open_repo(args.repo)
    try:
        pinned = load_pinned_root(Path(args.trust).read_bytes(), args.trust)
    except OSError as exc:
        raise UsageError(f"{args.trust}: cannot read the trust root ({exc.strerror})") from None
    every = release_tags(repo)
    tags = every
    if args.version is not None:
        tags = [t for t in tags if t.version == args.version]
    if not tags:
        wanted = f"release/{args.version}" if args.version is not None else "a release/<N> tag"
        raise UsageError(f"{args.repo}: got no {wanted}, expected one (`edgefleet release`)")
    tag = tags[0]
    tree = GitTreeFiles(repo, tag.target)
    root, release, verified = verify_tree(
        pinned,
        tag.name,
        tag.message,
        tag.target,
        tree,
        tree.paths(),
        Accepted(),
        load_payload=payload_loader(every),
    )
    print(
        json.dumps(
            {
                "verified": True,
                "tag": tag.name,
                "version": release.version,
                "fleet": release.fleet,
                "commit": release.commit,
                "files": len(verified.digests),
                "listsChangesSince": (release.payload.get("base") or {}).get("version"),
                "expires": release.payload["expires"],
                "wave": release.wave,
                "baseline": release.baseline,
                "signers": list(release.signers),
                "rootVersion": root.version,
            },
            indent=2,
        )
    )
    return 0


def signing_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of every command that signs a release: keys, expiry, sigstore, push."""
    parser.add_argument(
        "--key",
        action="append",
        metavar="KEY",
        help="a private release key; repeat to meet the threshold",
    )
    parser.add_argument("--expires", default="30d", help="e.g. 30d or 2027-01-31T00:00:00Z")
    parser.add_argument(
        "--sigstore",
        action="store_true",
        help="also sign with the ambient sigstore (OIDC) identity, as CI does",
    )
    parser.add_argument("--push", action="store_true", help="push the tag to --remote")
    parser.add_argument("--remote", default="origin")


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    release = sub.add_parser(
        "release", parents=[common], help="sign HEAD as the next release (tag release/<version>)"
    )
    release.add_argument("--repo", default=".", help="the fleet repository (default: .)")
    signing_arguments(release)
    release.add_argument("--wave", help="the rollout wave this release goes to (default: all)")
    release.set_defaults(func=cmd_release)

    verify = sub.add_parser(
        "verify",
        parents=[common],
        help="check a release as an agent would (exit 0 good, 3 refused)",
    )
    verify.add_argument("--repo", default=".", help="the fleet repository (default: .)")
    verify.add_argument("--trust", required=True, metavar="ROOT", help="the pinned root.json")
    verify.add_argument("version", nargs="?", type=int, help="the release (default: newest)")
    verify.set_defaults(func=cmd_verify)
