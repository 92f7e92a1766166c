"""Signed documents: canonical bytes, signature envelopes, and counting toward a threshold.

Everything EdgeFleet signs is the RFC 8785 canonical JSON of a `signed` object, carried in an
envelope `{"signed": ..., "signatures": [{"keyid", "sig"}]}` as TUF does. A key counts once
toward a threshold however many signatures name it, and only when it is one of the role's keys.
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
