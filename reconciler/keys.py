"""ed25519 keys in OpenSSH format: the same files serve EdgeFleet, `ssh-keygen -Y` and git.

A key's id is the hex SHA-256 of its 32 raw public bytes, so that the id never depends on a
comment or an encoding.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from reconciler.errors import UsageError

KEY_TYPE = "ssh-ed25519"


class KeyError_(UsageError):
    """A key file or key line that cannot be used."""


def ssh_string(data: bytes) -> bytes:
    """The SSH wire encoding of a string: a 32-bit big-endian length, then the bytes."""
    return struct.pack(">I", len(data)) + data


@dataclass(frozen=True)
class PublicKey:
    raw: bytes
    comment: str = field(default="", compare=False)

    @property
    def keyid(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    def wire(self) -> bytes:
        """The SSH wire blob: string "ssh-ed25519", string key."""
        return ssh_string(KEY_TYPE.encode()) + ssh_string(self.raw)

    def openssh(self) -> str:
        line = f"{KEY_TYPE} {base64.b64encode(self.wire()).decode()}"
        return f"{line} {self.comment}" if self.comment else line

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True

    @classmethod
    def from_openssh(cls, line: str, where: str = "public key") -> PublicKey:
        parts = line.strip().split(None, 2)
        if len(parts) < 2 or parts[0] != KEY_TYPE:
            got = parts[0] if parts else "nothing"
            raise KeyError_(f"{where}: got {got!r}, expected an OpenSSH line 'ssh-ed25519 AAAA...'")
        try:
            key = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
        except (ValueError, TypeError) as exc:
            raise KeyError_(f"{where}: not a valid ssh-ed25519 key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):  # pragma: no cover - the type was checked
            raise KeyError_(f"{where}: got another key type, expected ssh-ed25519")
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(raw, parts[2] if len(parts) == 3 else "")


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey = field(repr=False)
    public: PublicKey

    @classmethod
    def generate(cls, comment: str = "") -> SigningKey:
        return cls.from_private(Ed25519PrivateKey.generate(), comment)

    @classmethod
    def from_private(cls, private: Ed25519PrivateKey, comment: str = "") -> SigningKey:
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls(private, PublicKey(raw, comment))

    @classmethod
    def from_openssh(cls, data: bytes, where: str = "private key") -> SigningKey:
        try:
            key = serialization.load_ssh_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyError_(
                f"{where}: not an unencrypted OpenSSH private key ({exc}); expected a file made"
                " by `edgefleet keys generate` or `ssh-keygen -t ed25519 -N ''`"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyError_(f"{where}: got a {type(key).__name__}, expected an ed25519 key")
        return cls.from_private(key)

    @property
    def keyid(self) -> str:
        return self.public.keyid

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)

    def openssh_private(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
