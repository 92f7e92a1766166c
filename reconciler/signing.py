"""Signed documents: canonical bytes, signature envelopes, and counting toward a threshold.

Two envelopes, one per kind of document (docs/decisions.md says why):

- a trust root is TUF's `{"signed": ..., "signatures": [{"keyid", "sig"}]}`, signed over the
  RFC 8785 canonical JSON of `signed`, so that reviewers read it as JSON in a pull request;
- a release is a DSSE envelope `{"payloadType", "payload": base64, "signatures"}`, signed over
  DSSE's pre-authentication encoding of the exact payload bytes, so that a node checks the
  bytes it received and parses only what verified, without re-canonicalizing 10,000 entries.

A key counts once toward a threshold however many signatures name it, and only when it is
one of the role's keys.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import rfc8785

from reconciler.keys import PublicKey, SigningKey


def canonical(value: Any) -> bytes:
    return rfc8785.dumps(value)


def sign_envelope(signed: Mapping[str, Any], keys: Sequence[SigningKey]) -> dict[str, Any]:
    data = canonical(signed)
    return {
        "signed": dict(signed),
        "signatures": [
            {"keyid": key.keyid, "sig": base64.b64encode(key.sign(data)).decode()} for key in keys
        ],
    }


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's pre-authentication encoding: binds the payload type so bytes cannot change role."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(body), body)


def sign_dsse(payload_type: str, body: bytes, keys: Sequence[SigningKey]) -> dict[str, Any]:
    data = pae(payload_type, body)
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(body).decode(),
        "signatures": [
            {"keyid": key.keyid, "sig": base64.b64encode(key.sign(data)).decode()} for key in keys
        ],
    }


def valid_signers(
    data: bytes,
    signatures: Iterable[Mapping[str, Any]],
    allowed: Iterable[str],
    keys: Mapping[str, PublicKey],
) -> set[str]:
    """The distinct allowed key ids whose signature over `data` verifies."""
    allowed_ids = set(allowed)
    good: set[str] = set()
    for entry in signatures:
        keyid = entry.get("keyid")
        if not isinstance(keyid, str) or keyid not in allowed_ids or keyid in good:
            continue
        key = keys.get(keyid)
        try:
            sig = base64.b64decode(str(entry.get("sig", "")), validate=True)
        except (binascii.Error, ValueError):
            continue
        if key is not None and key.verify(sig, data):
            good.add(keyid)
    return good
