"""SSH signatures (OpenSSH's PROTOCOL.sshsig), as `ssh-keygen -Y sign` makes them.

Git signs tags and commits this way when `gpg.format=ssh`, and `git verify-tag` checks them
with an allowed-signers file. Making them here means a release can be signed on a machine
without ssh-keygen, from the same key file. The `sshsig` package on PyPI only verifies.
"""

from __future__ import annotations

import base64
import hashlib
import textwrap

from reconciler.keys import SigningKey, ssh_string

MAGIC = b"SSHSIG"
VERSION = 1
HASH = "sha512"
BEGIN = "-----BEGIN SSH SIGNATURE-----"
END = "-----END SSH SIGNATURE-----"


def sign(key: SigningKey, message: bytes, namespace: str) -> str:
    """An armored SSH signature of `message` in `namespace` ("git" for git objects)."""
    digest = hashlib.sha512(message).digest()
    signed = (
        MAGIC
        + ssh_string(namespace.encode())
        + ssh_string(b"")
        + ssh_string(HASH.encode())
        + ssh_string(digest)
    )
    signature = ssh_string(b"ssh-ed25519") + ssh_string(key.sign(signed))
    blob = (
        MAGIC
        + VERSION.to_bytes(4, "big")
        + ssh_string(key.public.wire())
        + ssh_string(namespace.encode())
        + ssh_string(b"")
        + ssh_string(HASH.encode())
        + ssh_string(signature)
    )
    body = "\n".join(textwrap.wrap(base64.b64encode(blob).decode(), 70))
    return f"{BEGIN}\n{body}\n{END}\n"
