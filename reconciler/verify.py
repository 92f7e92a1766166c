"""Verification of a release tree, as an agent and `edgefleet verify` both run it.

The order matters: the root chain first, then the release's signatures and rules, then every
file against its signed digest, and only then validation, which reads files only through
`VerifiedFiles`. No network I/O: the caller hands in the tag and the tree's files.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from reconciler.errors import (
    MixAndMatchError,
    ReleaseInvalid,
    SigstoreError,
    TamperedError,
    ValidationFailed,
)
from reconciler.fleet_repo import NODES_DIR, TRUST_ROOT_FILE, FleetRepo, root_chain_file
from reconciler.release import (
    Accepted,
    VerifiedFiles,
    VerifiedRelease,
    envelope_from_message,
    resolve_files,
    verify_release,
)
from reconciler.repo_files import RepoFiles
from reconciler.timestamps import now
from reconciler.trust_root import TrustRoot, walk_roots
from reconciler.validate import Report, load_for_node, validate


def sigstore_check(bundle: bytes, payload: bytes, root: TrustRoot) -> tuple[str, str]:
    """Adapter from the release rules to the sigstore verifier; imported only when needed."""
    if root.sigstore_trusted_root is None:
        raise SigstoreError(
            "the release carries a sigstore bundle, but the trust root has no"
            " sigstoreTrustedRoot to verify it with"
        )
    from reconciler.sigstore_release import verify_sigstore_bundle

    return verify_sigstore_bundle(
        bundle, payload, dict(root.sigstore_trusted_root), root.release.sigstore
    )


def refuse_invalid(
    files: RepoFiles, what: str, error: type[ValidationFailed] = ValidationFailed
) -> Report:
    report = validate(files)
    if not report.ok:
        raise error(
            [p for p in report.problems if p.severity == "error"],
            f"{what}: the fleet repository is invalid, expected `edgefleet validate` to pass",
        )
    return report


def verify_signed_tree(
    pinned: TrustRoot,
    tag: str,
    message: str,
    target: str,
    files: RepoFiles,
    all_paths: list[str] | None,
    accepted: Accepted,
    checked_at: datetime | None = None,
    load_payload: Callable[[int], bytes | None] | None = None,
    needed: Callable[[str], bool] | None = None,
) -> tuple[TrustRoot, VerifiedRelease, VerifiedFiles]:
    """Walk the root chain in the release's tree, verify the release, then every file it signs
    that `needed` selects (default: all).

    `load_payload(version)` gives the payload bytes of an earlier release tag, for a release
    that lists only what changed since it. Returns the files through which everything after
    this point must read the tree: a file not checked here is checked when it is read.
    """

    def fetch(version: int) -> bytes | None:
        path = root_chain_file(version)
        return files.read(path) if files.entry(path) == "file" else None

    checked_at = checked_at or now()
    envelope = envelope_from_message(message, tag)
    root = walk_roots(pinned, fetch, max(checked_at, accepted.newest_signed_time or checked_at))
    release = verify_release(root, envelope, tag, accepted, checked_at, sigstore_check, target)
    digests, _ = resolve_files(release.payload, tag, load_payload)
    verified = VerifiedFiles(release, files, digests)
    if all_paths is not None:
        extra = sorted(set(all_paths) - set(digests))
        if extra:
            raise TamperedError(
                f"{extra[0]}: in the commit but not in release {release.version}'s signed file"
                f" list ({len(extra)} such file(s)), expected exactly the signed files"
            )
    verified.verify_all(None if needed is None else [p for p in digests if needed(p)])
    if verified.entry(TRUST_ROOT_FILE) == "file" and fetch(root.version) != verified.read(
        TRUST_ROOT_FILE
    ):
        raise MixAndMatchError(
            f"{TRUST_ROOT_FILE}: differs from {root_chain_file(root.version)}, expected the newest"
            " root"
        )
    return root, release, verified


def verify_tree(
    pinned: TrustRoot,
    tag: str,
    message: str,
    target: str,
    files: RepoFiles,
    all_paths: list[str] | None,
    accepted: Accepted,
    checked_at: datetime | None = None,
    load_payload: Callable[[int], bytes | None] | None = None,
) -> tuple[TrustRoot, VerifiedRelease, VerifiedFiles]:
    """`verify_signed_tree`, then validation of the whole verified tree."""
    root, release, verified = verify_signed_tree(
        pinned, tag, message, target, files, all_paths, accepted, checked_at, load_payload
    )
    refuse_invalid(verified, f"release {release.version}", ReleaseInvalid)
    return root, release, verified


def verify_for_node(
    pinned: TrustRoot,
    tag: str,
    message: str,
    target: str,
    files: RepoFiles,
    all_paths: list[str] | None,
    accepted: Accepted,
    node: str,
    checked_at: datetime | None = None,
    load_payload: Callable[[int], bytes | None] | None = None,
) -> tuple[TrustRoot, VerifiedRelease, VerifiedFiles, FleetRepo]:
    """What an agent runs: `verify_signed_tree` over the files this node reads (every file but
    the other nodes' own), then validation of what it renders. So neither what it downloads nor
    what it checks grows with the fleet."""
    root, release, verified = verify_signed_tree(
        pinned,
        tag,
        message,
        target,
        files,
        all_paths,
        accepted,
        checked_at,
        load_payload,
        lambda path: reads(path, node),
    )
    try:
        repo = load_for_node(verified, node)
    except ValidationFailed as exc:
        raise ReleaseInvalid(exc.problems, f"release {release.version}: {exc}") from None
    return root, release, verified, repo


def reads(path: str, node: str) -> bool:
    """Whether a node may read this file of the fleet repository: all but other nodes' files."""
    return not path.startswith(f"{NODES_DIR}/") or path == f"{NODES_DIR}/{node}.yaml"
