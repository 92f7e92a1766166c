"""`edgefleet trust init|rotate|signers`: the trust root, its rotations, and allowed_signers.

In a fleet repository the root lives at trust/root.json, every version also at
trust/roots/<version>.json (the chain nodes walk), and trust/allowed_signers is generated from
the root and the nodes' identities so that plain git can check signatures.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reconciler.atomic import write_atomic
from reconciler.errors import UsageError
from reconciler.fleet_repo import (
    SIGNERS_FILE,
    TRUST_ROOT_FILE,
    load_fleet_repo,
    root_chain_file,
)
from reconciler.keyfiles import load_public_key, load_signing_key
from reconciler.keys import PublicKey, SigningKey
from reconciler.release_tags import allowed_signers
from reconciler.repo_files import DirectoryFiles
from reconciler.signing import sign_envelope
from reconciler.timestamps import expiry, format_timestamp, now
from reconciler.trust_root import TrustRoot, load_pinned_root, next_root, parse_root


def _identities(values: Sequence[str]) -> list[dict[str, str]]:
    out = []
    for value in values:
        issuer, sep, subject = value.partition("=")
        if not sep or not issuer or not subject:
            raise UsageError(f"--sigstore-identity: got {value!r}, expected ISSUER=SUBJECT")
        out.append({"issuer": issuer, "subject": subject})
    return out


def build_root(
    *,
    fleet: str,
    version: int,
    expires: str,
    root_keys: Sequence[PublicKey],
    root_threshold: int,
    release_keys: Sequence[PublicKey],
    release_threshold: int,
    sigstore_identities: Sequence[dict[str, str]] = (),
    sigstore_trusted_root: dict[str, Any] | None = None,
) -> dict[str, Any]:
    keys = {
        k.keyid: {
            "keytype": "ed25519",
            "public": PublicKey(k.raw).openssh(),
            **({"name": k.comment} if k.comment else {}),
        }
        for k in [*root_keys, *release_keys]
    }
    release: dict[str, Any] = {
        "keyids": sorted({k.keyid for k in release_keys}),
        "threshold": release_threshold,
    }
    if sigstore_identities:
        release["sigstore"] = list(sigstore_identities)
    signed: dict[str, Any] = {
        "_type": "edgefleet/root",
        "specVersion": 1,
        "fleet": fleet,
        "version": version,
        "expires": expires,
        "keys": keys,
        "roles": {
            "root": {"keyids": sorted({k.keyid for k in root_keys}), "threshold": root_threshold},
            "release": release,
        },
    }
    if sigstore_trusted_root is not None:
        signed["sigstoreTrustedRoot"] = sigstore_trusted_root
    return signed


def _encode(envelope: dict[str, Any]) -> bytes:
    return (json.dumps(envelope, indent=2, sort_keys=True) + "\n").encode()


def _repo_of(root_file: Path) -> Path | None:
    """The fleet repository a root file belongs to, when it sits at <repo>/trust/root.json."""
    repo = root_file.resolve().parent.parent
    if root_file.parent.name == "trust" and (repo / "fleet.yaml").exists():
        return repo
    return None


def write_signers(repo: Path, root: TrustRoot) -> Path:
    """Regenerate trust/allowed_signers from the root and every valid node's identity."""
    fleet, _ = load_fleet_repo(DirectoryFiles(repo))
    nodes = {n.name: PublicKey.from_openssh(n.spec["identity"]) for n in fleet.nodes}
    path = repo / SIGNERS_FILE
    write_atomic(path, allowed_signers(root, nodes).encode())
    return path


def _publish(out: Path, envelope: dict[str, Any], root: TrustRoot) -> list[str]:
    data = _encode(envelope)
    write_atomic(out, data)
    written = [str(out)]
    repo = _repo_of(out)
    if repo is not None:
        write_atomic(repo / root_chain_file(root.version), data)
        written += [str(repo / root_chain_file(root.version)), str(write_signers(repo, root))]
    return written


def _keys(paths: Sequence[str] | None) -> list[PublicKey]:
    return [load_public_key(Path(p)) for p in paths or ()]


def _signers(paths: Sequence[str]) -> list[SigningKey]:
    keys = [load_signing_key(Path(p)) for p in paths]
    if len({k.keyid for k in keys}) != len(keys):
        raise UsageError("--sign: the same key given twice, expected distinct keys")
    return keys


def _sigstore_root(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(
            f"--sigstore-trusted-root {path}: cannot read it as JSON ({exc})"
        ) from None
    if not isinstance(value, dict):
        raise UsageError(f"--sigstore-trusted-root {path}: expected a JSON object")
    return value


def cmd_init(args: argparse.Namespace) -> int:
    out = Path(args.out)
    fleet = args.fleet
    repo = _repo_of(out)
    if fleet is None and repo is not None:
        fleet_doc, _ = load_fleet_repo(DirectoryFiles(repo))
        fleet = fleet_doc.fleet_name or None
    if fleet is None:
        raise UsageError(
            "--fleet: missing, expected the fleet's name (or --out <repo>/trust/root.json)"
        )
    if not args.release_key and not args.sigstore_identity:
        raise UsageError("--release-key: missing, expected at least one release key (.pub)")
    signed = build_root(
        fleet=fleet,
        version=1,
        expires=format_timestamp(expiry(args.expires, now())),
        root_keys=_keys(args.root_key),
        root_threshold=args.root_threshold,
        release_keys=_keys(args.release_key),
        release_threshold=args.release_threshold,
        sigstore_identities=_identities(args.sigstore_identity or ()),
        sigstore_trusted_root=_sigstore_root(args.sigstore_trusted_root),
    )
    envelope = sign_envelope(signed, _signers(args.sign))
    root = load_pinned_root(_encode(envelope), str(out))  # refuses a root its own keys did not sign
    for path in _publish(out, envelope, root):
        print(f"wrote {path}")
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    repo = Path(args.repo)
    current_file = repo / TRUST_ROOT_FILE
    try:
        current = parse_root(current_file.read_bytes(), str(current_file))
    except OSError as exc:
        raise UsageError(f"{current_file}: cannot read the current root ({exc.strerror})") from None
    old_signed = current.envelope["signed"]
    root_keys = _keys(args.root_key) or [current.keys[k] for k in current.root.keyids]
    release_keys = _keys(args.release_key) or [current.keys[k] for k in current.release.keyids]
    identities = (
        _identities(args.sigstore_identity)
        if args.sigstore_identity
        else old_signed["roles"]["release"].get("sigstore", [])
    )
    signed = build_root(
        fleet=current.fleet,
        version=current.version + 1,
        expires=format_timestamp(expiry(args.expires, now())),
        root_keys=root_keys,
        root_threshold=args.root_threshold or current.root.threshold,
        release_keys=release_keys,
        release_threshold=args.release_threshold or current.release.threshold,
        sigstore_identities=identities,
        sigstore_trusted_root=_sigstore_root(args.sigstore_trusted_root)
        or old_signed.get("sigstoreTrustedRoot"),
    )
    envelope = sign_envelope(signed, _signers(args.sign))
    new = next_root(current, _encode(envelope))  # the same rule every node applies
    for path in _publish(current_file, envelope, new):
        print(f"wrote {path}")
    return 0


def cmd_signers(args: argparse.Namespace) -> int:
    repo = Path(args.repo)
    root = parse_root((repo / TRUST_ROOT_FILE).read_bytes(), str(repo / TRUST_ROOT_FILE))
    print(f"wrote {write_signers(repo, root)}")
    return 0


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    trust = sub.add_parser("trust", parents=[common], help="the fleet's trust root")
    trust_sub = trust.add_subparsers(dest="trust_command", required=True, metavar="ACTION")

    def key_flags(parser: argparse.ArgumentParser, required: bool) -> None:
        parser.add_argument(
            "--root-key",
            action="append",
            required=required,
            metavar="PUB",
            help="a root key (.pub); repeat for several",
        )
        parser.add_argument("--root-threshold", type=int, default=None if not required else 1)
        parser.add_argument(
            "--release-key",
            action="append",
            metavar="PUB",
            required=False,
            help="a release key (.pub); repeat for several",
        )
        parser.add_argument("--release-threshold", type=int, default=None if not required else 1)
        parser.add_argument(
            "--sign",
            action="append",
            required=True,
            metavar="KEY",
            help="a private root key that signs; repeat to meet the threshold",
        )
        parser.add_argument("--expires", default="365d", help="e.g. 365d or 2027-12-31T00:00:00Z")
        parser.add_argument(
            "--sigstore-identity",
            action="append",
            metavar="ISSUER=SUBJECT",
            help="a sigstore identity allowed to sign releases",
        )
        parser.add_argument(
            "--sigstore-trusted-root",
            metavar="FILE",
            help="sigstore trusted_root.json for offline verification",
        )

    init = trust_sub.add_parser("init", parents=[common], help="write a signed root, version 1")
    init.add_argument("--out", required=True, help="e.g. <repo>/trust/root.json")
    init.add_argument("--fleet", help="the fleet's name (default: from <repo>/fleet.yaml)")
    key_flags(init, required=True)
    init.set_defaults(func=cmd_init)

    rotate = trust_sub.add_parser(
        "rotate",
        parents=[common],
        help="write root N+1, signed by thresholds of root N's and its own root keys",
    )
    rotate.add_argument("--repo", default=".", help="the fleet repository (default: .)")
    key_flags(rotate, required=False)
    rotate.set_defaults(func=cmd_rotate)

    signers = trust_sub.add_parser(
        "signers",
        parents=[common],
        help="regenerate trust/allowed_signers from the root and the nodes' identities",
    )
    signers.add_argument("--repo", default=".", help="the fleet repository (default: .)")
    signers.set_defaults(func=cmd_signers)
