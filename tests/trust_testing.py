"""A fleet repository with real keys, a trust root and releases, and a simulated node.

The node keeps its pinned root and what it accepted in a state file and replaces it only when
a release verifies, so every attack test can assert both the error and an unchanged file.
"""

from __future__ import annotations

import base64
import json
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import git

from reconciler.atomic import write_atomic
from reconciler.commands.trust import build_root, write_signers
from reconciler.git_tree import GitTreeFiles
from reconciler.keys import SigningKey
from reconciler.release import (
    Accepted,
    VerifiedRelease,
    build_payload,
    chain_base,
    file_digest,
    sign_release,
    tag_message,
    tag_name,
    unverified_payload,
)
from reconciler.release_tags import create_tag, payload_loader, release_tags
from reconciler.signing import sign_envelope
from reconciler.timestamps import format_timestamp, now, parse_timestamp
from reconciler.trust_root import load_pinned_root, parse_root
from reconciler.verify import verify_tree
from tests.conftest import base_files, write_files

FLEET_NAME = "test-fleet"


def git_commit(repo: git.Repo, message: str) -> str:
    repo.git.add("-A")
    repo.git.commit("-qm", message, "--allow-empty")
    return repo.head.commit.hexsha


@dataclass
class Keys:
    root: list[SigningKey] = field(
        default_factory=lambda: [SigningKey.generate(f"root{i}") for i in range(1, 4)]
    )
    release: list[SigningKey] = field(
        default_factory=lambda: [SigningKey.generate(f"release{i}") for i in range(1, 4)]
    )


class FleetRepository:
    """A real git repository holding a valid fleet, a signed root, and release tags."""

    # Whether releases list only what changed since the newest one (`edgefleet release` does).
    CHAINED = False

    def __init__(
        self,
        path: Path,
        keys: Keys | None = None,
        root_threshold: int = 2,
        release_threshold: int = 2,
    ) -> None:
        self.path = path
        self.keys = keys or Keys()
        write_files(path, dict(base_files()))
        self.repo = git.Repo.init(path)
        with self.repo.config_writer() as config:
            config.set_value("user", "name", "operator")
            config.set_value("user", "email", "operator@example.net")
        self.root_version = 0
        self.write_root(
            self.keys.root,
            root_threshold,
            self.keys.release,
            release_threshold,
            signers=self.keys.root[:root_threshold],
        )
        git_commit(self.repo, "fleet with its trust root")

    def root_doc(
        self,
        root_keys: list[SigningKey],
        root_threshold: int,
        release_keys: list[SigningKey],
        release_threshold: int,
        version: int,
        expires: datetime | None = None,
    ) -> dict[str, Any]:
        return build_root(
            fleet=FLEET_NAME,
            version=version,
            expires=format_timestamp(expires or now() + timedelta(days=365)),
            root_keys=[k.public for k in root_keys],
            root_threshold=root_threshold,
            release_keys=[k.public for k in release_keys],
            release_threshold=release_threshold,
        )

    def write_root(
        self,
        root_keys: list[SigningKey],
        root_threshold: int,
        release_keys: list[SigningKey],
        release_threshold: int,
        signers: list[SigningKey],
        version: int | None = None,
    ) -> bytes:
        version = version or self.root_version + 1
        signed = self.root_doc(root_keys, root_threshold, release_keys, release_threshold, version)
        data = (json.dumps(sign_envelope(signed, signers), indent=2) + "\n").encode()
        write_atomic(self.path / "trust" / "root.json", data)
        write_atomic(self.path / "trust" / "roots" / f"{version}.json", data)
        write_signers(self.path, parse_root(data))
        self.root_version = version
        return data

    def pinned_root(self) -> bytes:
        return (self.path / "trust" / "roots" / "1.json").read_bytes()

    def payload(
        self,
        version: int | None = None,
        commit: str | None = None,
        fleet: str = FLEET_NAME,
        issued: datetime | None = None,
        expires: datetime | None = None,
        wave: str | None = None,
        chained: bool | None = None,
    ) -> dict[str, Any]:
        """A release payload of `commit`; `chained` (default: the class's CHAINED) lists only
        what changed since the newest release, as `edgefleet release` does."""
        commit = commit or self.repo.head.commit.hexsha
        tree = GitTreeFiles(self.repo, commit)
        issued = issued or now()
        tags = release_tags(self.repo)
        base = (
            chain_base(fleet, tags[0].version, tags[0].name, payload_loader(tags))
            if tags and (self.CHAINED if chained is None else chained)
            else None
        )
        return build_payload(
            fleet=fleet,
            version=version or self.next_version(),
            commit=commit,
            files={p: file_digest(tree.read(p)) for p in tree.paths()},
            issued_at=issued,
            expires=expires or issued + timedelta(days=30),
            wave=wave,
            base=base,
        )

    def next_version(self) -> int:
        tags = release_tags(self.repo)
        return tags[0].version + 1 if tags else 1

    def tag(
        self,
        envelope: dict[str, Any],
        name: str | None = None,
        commit: str | None = None,
        message: str | None = None,
    ) -> str:
        signed = unverified_payload(envelope)
        name = name or tag_name(signed["version"])
        return create_tag(
            self.repo,
            name=name,
            commit=commit or signed["commit"],
            message=message or tag_message(envelope),
            signer=self.keys.release[0],
            tagger="EdgeFleet release <release1@test-fleet>",
            when=parse_timestamp(signed["issuedAt"]),
        )

    def release(self, signers: list[SigningKey] | None = None, **payload: Any) -> dict[str, Any]:
        envelope = sign_release(self.payload(**payload), signers or self.keys.release[:2])
        self.tag(envelope)
        return envelope

    def change(self, path: str, text: str) -> str:
        (self.path / path).write_text(text)
        return git_commit(self.repo, f"change {path}")


class Node:
    """What an agent keeps between updates: its pinned root and what it last accepted."""

    def __init__(self, state: Path, pinned: bytes) -> None:
        self.state = state
        self._save(pinned, Accepted())

    def _save(self, root: bytes, accepted: Accepted) -> None:
        data = {
            "root": base64.b64encode(root).decode(),
            "version": accepted.version,
            "digest": accepted.digest,
            "newestSignedTime": format_timestamp(accepted.newest_signed_time)
            if accepted.newest_signed_time
            else None,
        }
        write_atomic(self.state, json.dumps(data, sort_keys=True).encode())

    def load(self) -> tuple[bytes, Accepted]:
        data = json.loads(self.state.read_bytes())
        newest = data["newestSignedTime"]
        return base64.b64decode(data["root"]), Accepted(
            data["version"], data["digest"], parse_timestamp(newest) if newest else None
        )

    def snapshot(self) -> bytes:
        return self.state.read_bytes()

    def update(
        self, repo: git.Repo, version: int | None = None, at: datetime | None = None
    ) -> VerifiedRelease:
        pinned_bytes, accepted = self.load()
        repo = git.Repo(repo.working_dir)  # a fresh reader, as a node's own process would be
        tags = release_tags(repo)
        tag = next(t for t in tags if version is None or t.version == version)
        tree = GitTreeFiles(repo, tag.target)
        root, release, _ = verify_tree(
            load_pinned_root(pinned_bytes),
            tag.name,
            tag.message,
            tag.target,
            tree,
            tree.paths(),
            accepted,
            at,
            payload_loader(tags),
        )
        self._save(json.dumps(root.envelope, indent=2).encode(), release.accepted(accepted))
        return release


def ssh_keygen_verify(allowed: Path, principal: str, signature: str, message: bytes) -> str:
    sig = allowed.parent / "message.sig"
    sig.write_text(signature)
    out = subprocess.run(
        [
            "ssh-keygen",
            "-Y",
            "verify",
            "-f",
            str(allowed),
            "-I",
            principal,
            "-n",
            "git",
            "-s",
            str(sig),
        ],
        input=message,
        capture_output=True,
        check=False,
    )
    return out.stdout.decode() + out.stderr.decode() if out.returncode == 0 else "FAILED"
