"""Signed releases: the payload that pins a commit, and the one function that verifies it.

`verify_release` is the whole decision, used by the agent and by `edgefleet verify`: it takes
the trusted root, the tag's message and name, and what the node last accepted, and returns the
release or raises the `TrustError` that names the rule it broke. It does no I/O; the files of
the commit are checked as they are read, through `VerifiedFiles`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from reconciler.errors import (
    ExpiredError,
    MixAndMatchError,
    ReleaseChainError,
    RollbackError,
    SignatureError,
    TamperedError,
    TrustError,
)
from reconciler.keys import SigningKey
from reconciler.repo_files import EntryKind, RepoFiles
from reconciler.schema_check import load_schema, schema_errors
from reconciler.signing import canonical, pae, sign_dsse, valid_signers
from reconciler.timestamps import format_timestamp, parse_timestamp
from reconciler.trust_root import TrustRoot

RELEASE_TYPE = "edgefleet/release"
RELEASE_PAYLOAD_TYPE = "application/vnd.edgefleet.release+json"
TAG_PREFIX = "release/"
# A verifier of sigstore bundles: (bundle, payload bytes, root) -> the (issuer, subject) it found.
SigstoreCheck = Callable[[bytes, bytes, TrustRoot], tuple[str, str]]


def tag_name(version: int) -> str:
    return f"{TAG_PREFIX}{version}"


def build_payload(
    *,
    fleet: str,
    version: int,
    commit: str,
    files: Mapping[str, str],
    issued_at: datetime,
    expires: datetime,
    wave: str | None = None,
    baseline: int | None = None,
    halts: int | None = None,
    base: ChainBase | None = None,
) -> dict[str, Any]:
    """The payload to sign. With `base`, `files` is every file of the commit, and the payload
    lists only those added or changed since the base release, and those removed."""
    rollout: dict[str, Any] = {"wave": wave, "baseline": baseline}
    if halts is not None:
        rollout["halts"] = halts
    listed = dict(files)
    chained: dict[str, Any] = {}
    if base is not None:
        listed = {p: d for p, d in files.items() if base.files.get(p) != d}
        chained = {
            "base": {"version": base.version, "sha256": base.digest},
            "removed": sorted(set(base.files) - set(files)),
        }
    return {
        "_type": RELEASE_TYPE,
        "specVersion": 1,
        "fleet": fleet,
        "version": version,
        "commit": commit,
        "files": dict(sorted(listed.items())),
        **chained,
        "issuedAt": format_timestamp(issued_at),
        "expires": format_timestamp(expires),
        "rollout": rollout,
    }


@dataclass(frozen=True)
class ChainBase:
    """An earlier release a new one is written against: its version, the SHA-256 of its
    payload's bytes, every file it signs, and how many releases deep its own chain is."""

    version: int
    digest: str
    files: Mapping[str, str]
    depth: int


# A node follows at most this many earlier releases to learn a chained release's files. The
# release command lists every file again once a chain is half as long: a node then reads at most
# 32 small payloads, and one release in 32 costs a listing of the whole fleet.
MAX_CHAIN = 64
RESTART_CHAIN = MAX_CHAIN // 2


def chain_base(
    fleet: str, version: int, tag: str, load_payload: Callable[[int], bytes | None]
) -> ChainBase | None:
    """Release `version` as the base of the next one, or None when the next must list every
    file: no such release, one that is unreadable or of another fleet, or a chain that long.

    The base need not be trusted: the next release lists every file whose digest differs from
    what the base resolves to, so it signs exactly the commit's files whatever the base says.
    """
    body = load_payload(version)
    if body is None:
        return None
    try:
        payload = _parse_payload(body, tag)
        files, depth = resolve_files(payload, tag, load_payload)
    except TrustError:
        return None
    if payload["fleet"] != fleet or payload["version"] != version or depth + 1 >= RESTART_CHAIN:
        return None
    return ChainBase(version, hashlib.sha256(body).hexdigest(), files, depth)


def resolve_files(
    payload: Mapping[str, Any],
    tag: str,
    load_payload: Callable[[int], bytes | None] | None,
    max_chain: int = MAX_CHAIN,
) -> tuple[dict[str, str], int]:
    """Every file a release signs, and its chain's depth (0 for a full listing).

    A chained payload lists what changed since its base and names the base by version and the
    SHA-256 of the base's payload bytes. So the base is authenticated by this release's
    signatures, not by its own: a base whose keys have since been rotated out still serves,
    and a base altered in any byte is refused. `load_payload(version)` returns the payload
    bytes inside that release's tag, or None when there is no such tag.
    """
    files: dict[str, str] = {}
    removed: set[str] = set()
    current: Mapping[str, Any] = payload
    name = tag
    depth = 0
    while True:
        for path, digest in current["files"].items():
            if path not in files and path not in removed:
                files[path] = digest
        base = current.get("base")
        if base is None:
            return files, depth
        removed.update(current.get("removed", ()))
        depth += 1
        wanted = tag_name(base["version"])
        if depth > max_chain:
            raise ReleaseChainError(
                f"tag {tag}: its file list goes back more than {max_chain} releases (to"
                f" {wanted}), expected at most {max_chain}; sign a new release"
            )
        if base["version"] >= current["version"]:
            raise ReleaseChainError(
                f"tag {name}: builds on {wanted}, expected an earlier release than its own"
                f" version {current['version']}"
            )
        body = load_payload(base["version"]) if load_payload is not None else None
        if body is None:
            raise ReleaseChainError(
                f"tag {name}: lists only the files changed since {wanted}, but {wanted} is"
                " missing here; expected every release tag of the origin (release tags are"
                " never deleted)"
            )
        got = hashlib.sha256(body).hexdigest()
        if got != base["sha256"]:
            raise ReleaseChainError(
                f"tag {wanted}: its payload has SHA-256 {got[:16]}..., expected"
                f" {base['sha256'][:16]}... as {tag} signed it (the tag was altered)"
            )
        current = _parse_payload(body, wanted)
        if current["fleet"] != payload["fleet"] or current["version"] != base["version"]:
            raise MixAndMatchError(
                f"tag {wanted}: holds release {current['version']} of fleet"
                f" {current['fleet']!r}, expected release {base['version']} of"
                f" {payload['fleet']!r} that {tag} builds on"
            )
        name = wanted


def envelope_payload(message: str, tag: str) -> bytes | None:
    """The payload bytes inside a tag's message, unverified; None when there are none."""
    try:
        envelope = envelope_from_message(message, tag)
        return base64.b64decode(str(envelope.get("payload", "")), validate=True)
    except (SignatureError, binascii.Error, ValueError):
        return None


def payload_bytes(payload: Mapping[str, Any]) -> bytes:
    """The bytes a release signs: RFC 8785 canonical JSON, so one payload has one digest."""
    return canonical(payload)


def sign_release(
    payload: Mapping[str, Any],
    keys: Sequence[SigningKey],
    sigstore_bundles: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    envelope = sign_dsse(RELEASE_PAYLOAD_TYPE, payload_bytes(payload), keys)
    if sigstore_bundles:
        envelope["sigstore"] = [dict(b) for b in sigstore_bundles]
    return envelope


def unverified_payload(envelope: Mapping[str, Any]) -> dict[str, Any]:
    """The payload without checking a signature: for tools that show or name a release, never
    for deciding what a node runs."""
    value = json.loads(base64.b64decode(str(envelope["payload"])))
    if not isinstance(value, dict):
        raise ValueError(f"got {type(value).__name__}, expected a JSON object")
    return value


def tag_message(envelope: Mapping[str, Any]) -> str:
    """The annotated tag's message: a subject line and a summary for `git log` and
    `git show`, then the envelope as JSON. Only the envelope is trusted by a node."""
    signed = unverified_payload(envelope)
    subject = (
        f"EdgeFleet release {signed['version']} of {signed['fleet']} ({signed['commit'][:12]})"
    )
    rollout = signed["rollout"]
    wave = (
        "every node"
        if rollout["wave"] is None
        else f"wave {rollout['wave']}, baseline {rollout['baseline'] or 'none'}"
    )
    if rollout.get("halts") is not None:
        wave += f" (halts release {rollout['halts']}: back to its baseline)"
    files = f"{len(signed['files'])}"
    base = signed.get("base")
    if base is not None:
        files += (
            f" changed, {len(signed['removed'])} removed since release {base['version']}"
            f" (sha256 {base['sha256'][:16]}...)"
        )
    summary = (
        f"Commit: {signed['commit']}\n"
        f"Files: {files}\n"
        f"Issued: {signed['issuedAt']}\n"
        f"Expires: {signed['expires']}\n"
        f"Rollout: {wave}\n"
    )
    return f"{subject}\n\n{summary}\n{json.dumps(envelope, indent=2, sort_keys=True)}\n"


def envelope_from_message(message: str, tag: str) -> dict[str, Any]:
    """The envelope in a tag's message: the JSON object after the subject and summary."""
    _, _, body = message.partition("\n\n")
    start = body.find("{")
    end = body.rfind("}")
    if start < 0 or end < start:
        raise SignatureError(f"tag {tag}: got no signed release in its message, expected JSON")
    try:
        envelope = json.loads(body[start : end + 1])
    except json.JSONDecodeError as exc:
        raise SignatureError(f"tag {tag}: the release in its message is not JSON ({exc})") from None
    if not isinstance(envelope, dict):
        raise SignatureError(f"tag {tag}: got {type(envelope).__name__}, expected a JSON object")
    return envelope


@dataclass(frozen=True)
class Accepted:
    """What a node last accepted, from its journal: the floor for the next release."""

    version: int | None = None
    digest: str | None = None
    newest_signed_time: datetime | None = None


@dataclass(frozen=True)
class VerifiedRelease:
    payload: Mapping[str, Any]
    digest: str
    signers: tuple[str, ...]

    @property
    def version(self) -> int:
        value: int = self.payload["version"]
        return value

    @property
    def fleet(self) -> str:
        value: str = self.payload["fleet"]
        return value

    @property
    def commit(self) -> str:
        value: str = self.payload["commit"]
        return value

    @property
    def issued_at(self) -> datetime:
        return parse_timestamp(self.payload["issuedAt"])

    @property
    def expires(self) -> datetime:
        return parse_timestamp(self.payload["expires"])

    @property
    def wave(self) -> str | None:
        value: str | None = self.payload["rollout"]["wave"]
        return value

    @property
    def baseline(self) -> int | None:
        value: int | None = self.payload["rollout"]["baseline"]
        return value

    @property
    def halts(self) -> int | None:
        value: int | None = self.payload["rollout"].get("halts")
        return value

    def accepted(self, before: Accepted) -> Accepted:
        """The journal's new floor once this release is applied."""
        times = [t for t in (before.newest_signed_time, self.issued_at) if t is not None]
        return Accepted(self.version, self.digest, max(times))


def verify_release(
    root: TrustRoot,
    envelope: Mapping[str, Any],
    tag: str,
    accepted: Accepted,
    now: datetime,
    sigstore_check: SigstoreCheck | None = None,
    target: str | None = None,
) -> VerifiedRelease:
    """The release, if every rule holds; else the TrustError of the first rule it breaks.

    The payload is parsed only after a threshold of signatures verified over its exact bytes.
    """
    problems = [message for _, message in schema_errors(envelope, "release.json")]
    if problems:
        raise SignatureError(f"tag {tag}: not a well-formed signed release ({problems[0]})")
    try:
        body = base64.b64decode(envelope["payload"], validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(
            f"tag {tag}: payload: got text that is not base64, expected the base64 of the"
            " signed payload"
        ) from None
    release_role = root.release
    signers = sorted(
        valid_signers(
            pae(RELEASE_PAYLOAD_TYPE, body),
            envelope["signatures"],
            release_role.keyids,
            root.keys,
        )
    )
    bundles = envelope.get("sigstore", ())
    if bundles:
        if sigstore_check is None:
            raise SignatureError(f"tag {tag}: carries sigstore bundles, but no verifier was given")
        for bundle in bundles:
            issuer, subject = sigstore_check(json.dumps(bundle).encode(), body, root)
            identity = f"sigstore:{issuer}:{subject}"
            if identity not in signers:
                signers.append(identity)
    if len(signers) < release_role.threshold:
        raise SignatureError(
            f"tag {tag}: got {len(signers)} valid signature(s) from distinct release keys of"
            f" root version {root.version}, expected at least {release_role.threshold}"
        )
    payload = _parse_payload(body, tag)
    digest = hashlib.sha256(body).hexdigest()
    if payload["fleet"] != root.fleet:
        raise MixAndMatchError(
            f"tag {tag}: got a release of fleet {payload['fleet']!r}, expected {root.fleet!r}"
        )
    if tag != tag_name(payload["version"]):
        raise MixAndMatchError(
            f"tag {tag}: its payload says version {payload['version']}, expected the tag"
            f" {tag_name(payload['version'])}"
        )
    if target is not None and target != payload["commit"]:
        raise MixAndMatchError(
            f"tag {tag}: points at commit {target[:12]}, expected {payload['commit'][:12]}, the"
            " commit its payload signs"
        )
    version = payload["version"]
    if accepted.version is not None and version <= accepted.version:
        if version == accepted.version and digest == accepted.digest:
            raise RollbackError(f"tag {tag}: version {version} is already applied")
        what = (
            "the same version with different content"
            if version == accepted.version
            else ("an older version")
        )
        raise RollbackError(
            f"tag {tag}: got version {version} ({what}), expected a version above"
            f" {accepted.version}, the last accepted"
        )
    issued = parse_timestamp(payload["issuedAt"])
    # The node's clock is never believed earlier than a time it has seen signed.
    effective = max(t for t in (now, accepted.newest_signed_time, issued) if t is not None)
    expires = parse_timestamp(payload["expires"])
    if effective >= expires:
        clock = (
            ""
            if effective == now
            else f" (the clock says {format_timestamp(now)}, but a"
            f" signed time of {format_timestamp(effective)} was already seen)"
        )
        raise ExpiredError(
            f"tag {tag}: expired at {format_timestamp(expires)}, now is"
            f" {format_timestamp(effective)}{clock}; expected an unexpired release (the node"
            " keeps running what it runs)"
        )
    return VerifiedRelease(payload, digest, tuple(signers))


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which of two equal keys wins; a signed payload must mean one thing.
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return value


def _parse_payload(body: bytes, tag: str) -> dict[str, Any]:
    try:
        payload = json.loads(body, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise SignatureError(
            f"tag {tag}: the signed payload names {exc.args[0]!r} twice, expected each key once"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SignatureError(
            f"tag {tag}: the signed payload is not UTF-8 JSON ({exc}), expected a release"
        ) from None
    problems = _payload_problems(payload)
    if problems:
        raise SignatureError(f"tag {tag}: not a well-formed signed release ({problems[0]})")
    assert isinstance(payload, dict)
    return payload


def _payload_problems(payload: object) -> list[str]:
    """Schema problems of a payload; its file map is checked with the schema's own patterns
    in one loop, because jsonschema spends most of a 10,000-file verification walking it."""
    files = payload.get("files") if isinstance(payload, dict) else None
    if not isinstance(payload, dict) or not isinstance(files, dict):
        return [message for _, message in schema_errors(payload, "release-payload.json")]
    shell = {**payload, "files": {}}
    problems = [message for _, message in schema_errors(shell, "release-payload.json")]
    path_ok, digest_ok = _file_patterns()
    for path, digest in files.items():
        if not (isinstance(digest, str) and path_ok(path) and digest_ok(digest)):
            problems.append(
                f"files: got {path!r}: {digest!r}, expected a safe relative"
                " path and a SHA-256 digest"
            )
            break
    return problems


@cache
def _file_patterns() -> tuple[Callable[[str], object], Callable[[str], object]]:
    defs = load_schema("defs.json")["$defs"]
    return (
        re.compile(defs["relativePath"]["pattern"].removesuffix("$") + r"\Z").match,
        re.compile(defs["sha256"]["pattern"].removesuffix("$") + r"\Z").match,
    )


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class VerifiedFiles:
    """The files of a release's commit, each served only if its bytes match the signed digest.

    Paths the payload does not name do not exist here, so an extra file slipped into a commit
    cannot reach rendering; a file whose bytes changed raises `TamperedError` when read.
    """

    def __init__(
        self, release: VerifiedRelease, files: RepoFiles, digests: Mapping[str, str]
    ) -> None:
        self.release = release
        self.files = files
        self.digests = digests
        self.folders = {
            "/".join(p.split("/")[:i]) for p in self.digests for i in range(1, p.count("/") + 1)
        }
        # Bytes already checked: validation after verify_all reads them again, and each file
        # is read and hashed once, not twice.
        self._verified: dict[str, bytes] = {}

    def entry(self, path: str) -> EntryKind | None:
        if path in self.digests:
            kind = self.files.entry(path)
            return "link" if kind == "link" else "file"
        return "dir" if path in self.folders else None

    def listdir(self, folder: str) -> list[tuple[str, EntryKind]]:
        prefix = f"{folder}/" if folder else ""
        names: dict[str, EntryKind] = {}
        for path in self.digests:
            if path.startswith(prefix):
                rest = path[len(prefix) :]
                name, _, deeper = rest.partition("/")
                names[name] = "dir" if deeper else "file"
        return sorted(names.items())

    def read(self, path: str) -> bytes:
        known = self._verified.get(path)
        if known is not None:
            return known
        expected = self.digests.get(path)
        if expected is None:
            raise FileNotFoundError(path)
        try:
            data = self.files.read(path)
        except FileNotFoundError:
            raise TamperedError(
                f"{path}: signed by release {self.release.version} but missing from the tree"
                " (or not a regular file), expected it present"
            ) from None
        got = file_digest(data)
        if got != expected:
            raise TamperedError(
                f"{path}: got content with SHA-256 {got[:16]}..., expected {expected[:16]}... as"
                f" release {self.release.version} signed it"
            )
        self._verified[path] = data
        return data

    def verify_all(self, paths: Iterable[str] | None = None) -> int:
        """Read and check every signed file (or the given ones); returns the bytes checked."""
        total = 0
        for path in self.digests if paths is None else paths:
            total += len(self.read(path))
        return total
