"""The trust root: keys and thresholds for the roles `root` and `release`, rotated as TUF does.

A node pins one root at provisioning. A newer root is accepted only as the next version,
signed by a threshold of the old root's root keys and a threshold of its own, so keys rotate
through the repository itself and a thief of the new keys alone cannot take over a fleet.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from reconciler.errors import ExpiredError, MixAndMatchError, RootChainError, SignatureError
from reconciler.keys import PublicKey
from reconciler.schema_check import schema_errors
from reconciler.signing import canonical, valid_signers
from reconciler.timestamps import format_timestamp, parse_timestamp

ROOT_TYPE = "edgefleet/root"
# How many rotations one update may walk: a bound on work and on how far a stale node trusts
# a chain it has never seen; past it, re-provision the node's pinned root.
MAX_ROTATIONS = 32


@dataclass(frozen=True)
class Role:
    keyids: tuple[str, ...]
    threshold: int
    sigstore: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TrustRoot:
    fleet: str
    version: int
    expires: datetime
    keys: Mapping[str, PublicKey]
    roles: Mapping[str, Role]
    sigstore_trusted_root: Mapping[str, Any] | None
    envelope: Mapping[str, Any] = field(repr=False)

    @property
    def root(self) -> Role:
        return self.roles["root"]

    @property
    def release(self) -> Role:
        return self.roles["release"]


def _parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RootChainError(f"{what}: not JSON ({exc})") from None


def parse_root(data: bytes, what: str = "root.json") -> TrustRoot:
    """The root's content, checked for shape and consistency; signatures are not checked here."""
    envelope = _parse_json(data, what)
    problems = schema_errors(envelope, "root.json")
    if problems:
        _, message = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise RootChainError(f"{what}: {message}{more}")
    signed = envelope["signed"]
    keys: dict[str, PublicKey] = {}
    for keyid, entry in signed["keys"].items():
        key = PublicKey.from_openssh(entry["public"], f"{what}: keys.{keyid[:12]}")
        if key.keyid != keyid:
            raise RootChainError(
                f"{what}: keys.{keyid[:12]}...: got a key whose id is {key.keyid[:12]}...,"
                " expected the id to be the SHA-256 of the key (one key, one id)"
            )
        keys[keyid] = PublicKey(key.raw, entry.get("name", ""))
    roles: dict[str, Role] = {}
    for name, role in signed["roles"].items():
        missing = [k for k in role["keyids"] if k not in keys]
        if missing:
            raise RootChainError(
                f"{what}: roles.{name} names key {missing[0][:12]}..., which keys does not list"
            )
        identities = tuple((i["issuer"], i["subject"]) for i in role.get("sigstore", ()))
        usable = len(role["keyids"]) + len(identities)
        if role["threshold"] > usable:
            raise RootChainError(
                f"{what}: roles.{name}.threshold: got {role['threshold']}, expected at most"
                f" {usable} (the role's keys and identities)"
            )
        roles[name] = Role(tuple(role["keyids"]), role["threshold"], identities)
    return TrustRoot(
        fleet=signed["fleet"],
        version=signed["version"],
        expires=parse_timestamp(signed["expires"]),
        keys=keys,
        roles=roles,
        sigstore_trusted_root=signed.get("sigstoreTrustedRoot"),
        envelope=envelope,
    )


def _require(root: TrustRoot, signer_root: TrustRoot, what: str) -> None:
    data = canonical(root.envelope["signed"])
    role = signer_root.root
    good = valid_signers(data, root.envelope["signatures"], role.keyids, signer_root.keys)
    if len(good) < role.threshold:
        raise SignatureError(
            f"{what}: got {len(good)} valid signature(s) from root keys of version"
            f" {signer_root.version}, expected at least {role.threshold}"
        )


def load_pinned_root(data: bytes, what: str = "pinned root") -> TrustRoot:
    """The root a node was provisioned with: its own threshold must sign it (no corruption)."""
    root = parse_root(data, what)
    _require(root, root, what)
    return root


def next_root(trusted: TrustRoot, data: bytes) -> TrustRoot:
    """Root N+1, accepted only when thresholds of root N's and its own root keys signed it."""
    what = f"root version {trusted.version + 1}"
    new = parse_root(data, what)
    if new.version != trusted.version + 1:
        raise RootChainError(
            f"{what}: got version {new.version}, expected {trusted.version + 1} (roots rotate"
            " one version at a time)"
        )
    if new.fleet != trusted.fleet:
        raise MixAndMatchError(f"{what}: got fleet {new.fleet!r}, expected {trusted.fleet!r}")
    _require(new, trusted, f"{what} (signed by the old root's keys)")
    _require(new, new, f"{what} (signed by its own root keys)")
    return new


def walk_roots(
    trusted: TrustRoot,
    fetch: Callable[[int], bytes | None],
    now: datetime,
    max_rotations: int = MAX_ROTATIONS,
) -> TrustRoot:
    """Follow the chain from `trusted` through every newer root `fetch` has, then check expiry."""
    current = trusted
    for _ in range(max_rotations):
        data = fetch(current.version + 1)
        if data is None:
            break
        current = next_root(current, data)
    else:
        if fetch(current.version + 1) is not None:
            raise RootChainError(
                f"more than {max_rotations} root rotations after version {trusted.version},"
                " expected fewer: provision this node with a newer root"
            )
    if now >= current.expires:
        raise ExpiredError(
            f"root version {current.version}: expired at {format_timestamp(current.expires)},"
            f" now is {format_timestamp(now)}; expected a root that has not expired"
            " (`edgefleet trust rotate` renews it)"
        )
    return current


def advance_root(
    trusted: TrustRoot,
    candidates: Callable[[int], list[bytes]],
    max_rotations: int = MAX_ROTATIONS,
) -> tuple[TrustRoot, bytes | None]:
    """The newest root reachable from `trusted` through any of the offered files.

    A node gathers root files from every release it fetched, not only from the one it is about
    to apply, so that a key revoked by a newer root is refused even in a release whose own
    commit still carries the older root. An offered file that does not chain is skipped:
    anyone can put bytes in a tag, only the chain's signatures make them a root. Returns the
    root and its bytes (None when no rotation was found).
    """
    current, data = trusted, None
    for _ in range(max_rotations):
        for offered in candidates(current.version + 1):
            try:
                current, data = next_root(current, offered), offered
                break
            except (RootChainError, SignatureError, MixAndMatchError):
                continue
        else:
            return current, data
    return current, data
