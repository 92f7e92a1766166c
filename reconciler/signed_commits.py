"""Git commit and tag objects signed with SSH keys, made and checked as bytes, with no I/O.

A node's status commit is written as a raw commit object with a `gpgsig` header holding an
SSH signature (PROTOCOL.sshsig, namespace "git") of the object without that header: exactly
what `git commit -S` with `gpg.format=ssh` writes, so `git verify-commit` with the fleet's
`allowed_signers` checks it. Checking here, in-process, is what lets `edgefleet status` verify
thousands of branch heads without starting `ssh-keygen` once per commit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import sshsig

from reconciler import sshsig as ssh_signing
from reconciler.keys import PublicKey, SigningKey

SIGNATURE_HEADER = b"gpgsig"
_SSH_ARMOR = b"-----BEGIN SSH SIGNATURE-----"


@dataclass(frozen=True)
class CommitFields:
    """What a commit object says, parsed from its raw bytes."""

    tree: str
    parents: tuple[str, ...]
    author: str
    committer: str
    committed_at: int
    message: str
    payload: bytes
    signature: bytes | None


def person(name: str, email: str, when: datetime) -> str:
    return f"{name} <{email}> {int(when.timestamp())} +0000"


def commit_object(
    *, tree: str, parents: tuple[str, ...], author: str, message: str, signer: SigningKey | None
) -> bytes:
    """The raw bytes of a commit (author and committer the same), signed by `signer` if any."""
    if not message.endswith("\n"):
        message += "\n"
    headers = [f"tree {tree}", *(f"parent {p}" for p in parents)]
    headers += [f"author {author}", f"committer {author}"]
    payload = ("\n".join(headers) + "\n\n" + message).encode()
    if signer is None:
        return payload
    armored = ssh_signing.sign(signer, payload, "git").rstrip("\n")
    # Continuation lines of a header start with one space (git's own encoding of gpgsig).
    signature = b"gpgsig " + armored.encode().replace(b"\n", b"\n ") + b"\n"
    head, _, body = payload.partition(b"\n\n")
    return head + b"\n" + signature + b"\n" + body


def parse_commit(raw: bytes) -> CommitFields:
    """Split a raw commit into its fields, and the signed payload from its signature.

    Raises ValueError for bytes that are not a commit object.
    """
    head, sep, body = raw.partition(b"\n\n")
    if not sep and not raw.endswith(b"\n"):
        raise ValueError("got no blank line after the headers, expected a commit object")
    kept: list[bytes] = []
    signature: list[bytes] = []
    values: dict[bytes, list[bytes]] = {}
    in_signature = False
    for line in head.split(b"\n"):
        if line.startswith(b" "):
            # A continuation line belongs to the header before it.
            if in_signature:
                signature.append(line[1:])
            else:
                kept.append(line)
            continue
        key, _, value = line.partition(b" ")
        in_signature = key == SIGNATURE_HEADER
        if in_signature:
            signature.append(value)
        else:
            kept.append(line)
            values.setdefault(key, []).append(value)
    if b"tree" not in values or b"committer" not in values:
        raise ValueError("got no tree or committer header, expected a commit object")
    committer = values[b"committer"][0].decode(errors="replace")
    try:
        committed_at = int(committer.rsplit(" ", 2)[1])
    except (IndexError, ValueError):
        raise ValueError(
            f"got committer {committer!r}, expected 'name <email> time zone'"
        ) from None
    payload = b"\n".join(kept) + b"\n\n" + body
    return CommitFields(
        tree=values[b"tree"][0].decode(),
        parents=tuple(p.decode() for p in values.get(b"parent", [])),
        author=values.get(b"author", [b""])[0].decode(errors="replace"),
        committer=committer,
        committed_at=committed_at,
        message=body.decode(errors="replace"),
        payload=payload,
        signature=b"\n".join(signature) + b"\n" if signature else None,
    )


@dataclass(frozen=True)
class SignatureCheck:
    """Who signed a commit, if anyone we know: `signer` is the name of the key that verified."""

    signer: str | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.signer is not None


def check_commit(commit: CommitFields, keys: Mapping[str, PublicKey]) -> SignatureCheck:
    """Whether `commit` carries a valid SSH signature by one of `keys` (name -> key)."""
    if commit.signature is None:
        return SignatureCheck(None, "got an unsigned commit, expected an SSH signature")
    if not commit.signature.startswith(_SSH_ARMOR):
        return SignatureCheck(None, "got a non-SSH (OpenPGP or X.509) signature, expected SSH")
    try:
        found = sshsig.check_signature(commit.payload, commit.signature, namespace="git")
    except (sshsig.InvalidSignature, NotImplementedError, ValueError) as exc:
        return SignatureCheck(None, f"got an invalid signature ({exc or 'bad signature'})")
    blob = found.openssh_str().split()[1]
    for name, key in keys.items():
        if key.openssh().split()[1] == blob:
            return SignatureCheck(name, None)
    expected = ", ".join(sorted(keys)) or "no key"
    return SignatureCheck(
        None, f"got a signature by key {found.sha256_str()}, expected one by {expected}"
    )


def parse_tag(raw: bytes) -> CommitFields:
    """A raw annotated tag object as `CommitFields` (tree: the tagged object; committer: the
    tagger): git appends a tag's signature to its message, and signs what comes before it."""
    head, sep, body = raw.partition(b"\n\n")
    if not sep:
        raise ValueError("got no blank line after the headers, expected a tag object")
    values = dict(line.split(b" ", 1) for line in head.split(b"\n") if b" " in line)
    if b"object" not in values or b"tagger" not in values:
        raise ValueError("got no object or tagger header, expected an annotated tag")
    at = raw.find(b"\n" + _SSH_ARMOR)
    payload, signature = (raw[: at + 1], raw[at + 1 :]) if at >= 0 else (raw, None)
    tagger = values[b"tagger"].decode(errors="replace")
    try:
        tagged_at = int(tagger.rsplit(" ", 2)[1])
    except (IndexError, ValueError):
        raise ValueError(f"got tagger {tagger!r}, expected 'name <email> time zone'") from None
    return CommitFields(
        tree=values[b"object"].decode(),
        parents=(),
        author=tagger,
        committer=tagger,
        committed_at=tagged_at,
        message=body.decode(errors="replace"),
        payload=payload,
        signature=signature,
    )
