"""Reading an offline bundle into a scratch folder, refusing it whole at the first fault.

Members are read in one pass and each is checked against the manifest (its name, its size,
its SHA-256) as it is written out; a member the manifest does not list, a link, a size that
differs, a copy cut short: the bundle is refused, the scratch folder removed, and nothing else
on the node was touched. Only then does the agent fetch from the git bundle and stage from the
blobs, verifying both as it would after a pull (`Agent.import_bundle`).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import UsageError
from reconciler.git_bundles import BundleUnreadable, list_heads
from reconciler.offline_bundle import (
    GIT_BUNDLE,
    MANIFEST,
    BundleInvalid,
    Manifest,
    check_refs,
    parse_manifest,
)


@dataclass(frozen=True)
class BundleLimits:
    # A manifest lists members and nodes; a fleet of 100,000 nodes stays well under this.
    max_manifest_bytes: int = 64 * 1024 * 1024
    chunk_bytes: int = 1024 * 1024


DEFAULT_BUNDLE_LIMITS = BundleLimits()


def _read_manifest(tar: tarfile.TarFile, where: str, limits: BundleLimits) -> Manifest:
    try:
        first = tar.next()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleInvalid(
            f"{where}: got no readable bundle ({exc}), expected a tar file made by"
            " `edgefleet bundle create`; nothing was changed"
        ) from None
    if first is None or first.name != MANIFEST or not first.isreg():
        raise BundleInvalid(
            f"{where}: got {first.name if first else 'an empty archive'} as its first member,"
            f" expected {MANIFEST}; nothing was changed"
        )
    if first.size > limits.max_manifest_bytes:
        raise BundleInvalid(
            f"{where}: {MANIFEST}: got {first.size} bytes, expected at most"
            f" {limits.max_manifest_bytes}; nothing was changed"
        )
    source = tar.extractfile(first)
    assert source is not None
    try:
        data = source.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise _cut_short(where, MANIFEST, exc) from None
    if len(data) != first.size:
        raise _cut_short(where, MANIFEST, f"got {len(data)} of {first.size} bytes")
    return parse_manifest(data, f"{where}: {MANIFEST}")


def _cut_short(where: str, member: str, why: object) -> BundleInvalid:
    return BundleInvalid(
        f"{where}: {member}: the bundle is cut short or damaged ({why}), expected the whole"
        " file; copy it again. Nothing was changed",
        rule="bundle",
    )


def unpack_bundle(path: Path, dest: Path, limits: BundleLimits = DEFAULT_BUNDLE_LIMITS) -> Manifest:
    """Every member of the bundle at `path`, checked, under `dest` (made afresh); raises
    BundleInvalid, with `dest` removed, at the first fault."""
    where = str(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file, expected an offline bundle")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            manifest = _read_manifest(tar, where, limits)
            _extract(tar, manifest, dest, where, limits)
        found = git_bundle_refs(dest / GIT_BUNDLE, where)
        check_refs(manifest, found, where)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return manifest


def _extract(
    tar: tarfile.TarFile, manifest: Manifest, dest: Path, where: str, limits: BundleLimits
) -> None:
    expected = {m.name: m for m in manifest.members}
    seen: set[str] = set()
    while True:
        try:
            info = tar.next()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise _cut_short(
                where, "after " + (sorted(seen)[-1] if seen else MANIFEST), exc
            ) from None
        if info is None:
            break
        member = expected.get(info.name)
        if member is None or info.name in seen:
            raise BundleInvalid(
                f"{where}: got a member {info.name!r} the manifest does not list (or lists"
                " once), expected only its members; nothing was changed"
            )
        if not info.isreg():
            raise BundleInvalid(
                f"{where}: {info.name}: got a link or special file, expected a regular file;"
                " nothing was changed"
            )
        if info.size != member.size:
            raise BundleInvalid(
                f"{where}: {info.name}: got {info.size} bytes, expected {member.size} (the"
                " manifest); nothing was changed"
            )
        seen.add(info.name)
        target = dest / info.name
        target.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(info)
        assert source is not None
        hasher = hashlib.sha256()
        written = 0
        try:
            with open(target, "wb") as sink:
                while block := source.read(min(limits.chunk_bytes, member.size - written)):
                    hasher.update(block)
                    sink.write(block)
                    written += len(block)
        except (tarfile.TarError, EOFError) as exc:
            raise _cut_short(where, info.name, exc) from None
        if written != member.size:
            raise _cut_short(where, info.name, f"got {written} of {member.size} bytes")
        if hasher.hexdigest() != member.sha256:
            raise BundleInvalid(
                f"{where}: {info.name}: got content with sha256 {hasher.hexdigest()}, expected"
                f" {member.sha256} (the manifest); the copy is damaged, nothing was changed"
            )
    missing = sorted(set(expected) - seen)
    if missing:
        raise _cut_short(
            where,
            missing[0],
            f"{len(missing)} of {len(expected)} members missing, the first {missing[0]}",
        )


def git_bundle_refs(bundle: Path, where: str) -> dict[str, str]:
    """The refs the bundle's git part offers, name -> object id."""
    try:
        return list_heads(bundle)
    except BundleUnreadable as exc:
        raise BundleInvalid(
            f"{where}: {GIT_BUNDLE}: git cannot read it ({exc}), expected a git bundle;"
            " nothing was changed"
        ) from None


def missing_prerequisites(git_dir: Path, bundle: Path) -> str | None:
    """Why this repository cannot take the bundle (it lacks the commits the bundle builds on),
    or None when it can."""
    done = subprocess.run(
        ["git", "--git-dir", str(git_dir), "bundle", "verify", "--quiet", str(bundle)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode == 0:
        return None
    lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
    return "; ".join(lines[-3:]) or f"git bundle verify exited {done.returncode}"
