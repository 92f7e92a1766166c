"""Key files on disk: written atomically with the private half 0600, read as OpenSSH does."""

from __future__ import annotations

import stat
from pathlib import Path

from reconciler.atomic import write_atomic
from reconciler.errors import UsageError
from reconciler.keys import PublicKey, SigningKey


def write_key_pair(path: Path, key: SigningKey, force: bool = False) -> None:
    pub = path.with_name(path.name + ".pub")
    if not force and (path.exists() or pub.exists()):
        raise UsageError(f"{path}: already exists, expected a new path (or --force to replace it)")
    write_atomic(path, key.openssh_private(), mode=0o600)
    write_atomic(pub, (key.public.openssh() + "\n").encode(), mode=0o644)


def load_signing_key(path: Path) -> SigningKey:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the key ({exc.strerror})") from None
    if mode & 0o077:
        # As ssh does: a private key others can read is no longer private.
        raise UsageError(
            f"{path}: permissions {mode:04o} are too open, expected 0600 (chmod 600 {path})"
        )
    key = SigningKey.from_openssh(data, str(path))
    pub = path.with_name(path.name + ".pub")
    comment = ""
    if pub.exists():
        comment = PublicKey.from_openssh(pub.read_text(), str(pub)).comment
    return SigningKey(key.private, PublicKey(key.public.raw, comment))


def load_public_key(path: Path) -> PublicKey:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the public key ({exc.strerror})") from None
    if "PRIVATE KEY" in text:
        raise UsageError(f"{path}: got a private key, expected the .pub file")
    return PublicKey.from_openssh(text, str(path))
