"""A complete synthetic sigstore PKI, made at test time, whose bundles the real verifier accepts.

Nothing here is mocked: it is a small Fulcio-like CA, a certificate-transparency log and a
Rekor-like transparency log, each with real keys made now, and a `trusted_root.json` that
names them. `SigstorePKI.make_bundle` does what Fulcio, the CT log and Rekor do for one
`sigstore sign` of a file, so that `sigstore.verify.Verifier` runs every one of its checks:

* the signing certificate chains to a CA certificate of the trusted root, at the log's
  integrated time (RFC 5280 path validation with cryptography's web-PKI profile, which is why
  every certificate carries the key identifiers and the leaf its SAN as a critical extension);
* the certificate embeds exactly one SCT, a precertificate SCT (RFC 6962) over the TBS
  certificate without the SCT list, signed by a CT log key of the trusted root;
* key usage, code-signing EKU, SAN (URI or e-mail) and the Fulcio OIDC issuer extensions
  (1.3.6.1.4.1.57264.1.1 raw, 1.3.6.1.4.1.57264.1.8 as a DER UTF8String);
* the hashedrekord log entry: an RFC 6962 Merkle inclusion proof in a log holding other
  entries, a signed checkpoint (signed note) over the root hash, and the signed entry
  timestamp (inclusion promise) binding the integrated time, all by the Rekor key;
* the artifact signature (ECDSA P-256 over the SHA-256 of the payload) and the consistency of
  the log entry's body with the certificate, signature and payload digest.

The knobs of `make_bundle` change one of these at a time, for the attack tests.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.hazmat.asn1 import encode_der
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

OIDC_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OIDC_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
SCT_LIST = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
TRUSTED_ROOT_MEDIA_TYPE = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"

# Long before any test runs, so that the trusted root's validity windows have begun.
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def spki_der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: ec.EllipticCurvePublicKey) -> bytes:
    """Log ID of a CT or transparency log: SHA-256 of its DER SubjectPublicKeyInfo."""
    return hashlib.sha256(spki_der(key)).digest()


def now_seconds() -> datetime:
    # Whole seconds: SCT and log times are integers, and the verifier converts them through
    # floats, which round-trip whole seconds exactly.
    return datetime.now(UTC).replace(microsecond=0)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefleet-test"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_identifiers(
    builder: x509.CertificateBuilder,
    subject_key: ec.EllipticCurvePublicKey,
    issuer_key: ec.EllipticCurvePublicKey,
) -> x509.CertificateBuilder:
    return builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False
    ).add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False)


def _ca_certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    path_length: int | None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(EPOCH)
        .not_valid_after(EPOCH + timedelta(days=365 * 30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    builder = _key_identifiers(builder, key.public_key(), issuer_key.public_key())
    return builder.sign(issuer_key, hashes.SHA384())


@dataclass
class SyntheticCA:
    """A Fulcio-like CA: a root and, optionally, the intermediate that issues leaves."""

    name: str = "edgefleet-test-fulcio"
    intermediate: bool = True
    root_key: ec.EllipticCurvePrivateKey = field(init=False)
    root: x509.Certificate = field(init=False)
    issuer_key: ec.EllipticCurvePrivateKey = field(init=False)
    issuer: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        root_name = _name(self.name)
        self.root = _ca_certificate(root_name, self.root_key, root_name, self.root_key, None)
        self.issuer_key, self.issuer = self.root_key, self.root
        if self.intermediate:
            self.issuer_key = ec.generate_private_key(ec.SECP384R1())
            self.issuer = _ca_certificate(
                _name(f"{self.name}-intermediate"), self.issuer_key, root_name, self.root_key, 0
            )

    @property
    def chain(self) -> list[x509.Certificate]:
        """Issuing certificate first, root last: the order of a trusted root's certChain."""
        return [self.issuer, self.root] if self.intermediate else [self.root]


@dataclass
class SyntheticCTLog:
    """A certificate-transparency log that hands out SCTs (it never really logs anything)."""

    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    def sct_list_extension(
        self, tbs_precertificate: bytes, issuer_key: ec.EllipticCurvePublicKey, when: datetime
    ) -> x509.UnrecognizedExtension:
        """The X.509 SCT list extension holding one precertificate SCT (RFC 6962 3.2, 3.3)."""
        timestamp_ms = int(when.timestamp()) * 1000
        extensions = b""
        # digitally-signed struct: version, signature_type, timestamp, entry_type, PreCert
        # {issuer_key_hash, opaque TBSCertificate<1..2^24-1>}, CtExtensions.
        signed = (
            struct.pack("!BBQH", 0, 0, timestamp_ms, 1)
            + key_id(issuer_key)
            + len(tbs_precertificate).to_bytes(3, "big")
            + tbs_precertificate
            + struct.pack("!H", len(extensions))
            + extensions
        )
        signature = self.key.sign(signed, ec.ECDSA(hashes.SHA256()))
        sct = (
            struct.pack("!B", 0)
            + key_id(self.key.public_key())
            + struct.pack("!QH", timestamp_ms, len(extensions))
            + extensions
            # SignatureAndHashAlgorithm: sha256(4), ecdsa(3).
            + struct.pack("!BBH", 4, 3, len(signature))
            + signature
        )
        sct_list = struct.pack("!HH", len(sct) + 2, len(sct)) + sct
        # extnValue holds an OCTET STRING that holds the TLS-encoded list.
        return x509.UnrecognizedExtension(SCT_LIST, encode_der(sct_list))


def _leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two below n (RFC 6962 2.1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def merkle_root(leaves: list[bytes]) -> bytes:
    if len(leaves) == 1:
        return _leaf_hash(leaves[0])
    k = _split(len(leaves))
    return _node_hash(merkle_root(leaves[:k]), merkle_root(leaves[k:]))


def inclusion_path(index: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 2.1.1 PATH(m, D[n]): sibling hashes from the leaf level up."""
    if len(leaves) == 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*inclusion_path(index, leaves[:k]), merkle_root(leaves[k:])]
    return [*inclusion_path(index - k, leaves[k:]), merkle_root(leaves[:k])]


@dataclass
class SyntheticRekor:
    """A Rekor-like transparency log: an append-only Merkle tree and a signing key."""

    origin: str = "rekor.edgefleet.test - 1234567890"
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    # Other people's entries, so that inclusion proofs have inner and border hashes.
    leaves: list[bytes] = field(
        default_factory=lambda: [f"someone else's entry {i}".encode() for i in range(5)]
    )

    @property
    def log_id(self) -> bytes:
        return key_id(self.key.public_key())

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))

    def checkpoint(
        self, tree_size: int, root_hash: bytes, signer: SyntheticRekor | None = None
    ) -> str:
        """A signed note (transparency-dev checkpoint format) over the tree head."""
        note = f"{self.origin}\n{tree_size}\n{b64(root_hash)}\n"
        # The key hint is always this log's: a forger copies it, but cannot make the signature.
        signature = self.log_id[:4] + (signer or self).sign(note.encode())
        return f"{note}\n\u2014 {self.origin.split()[0]} {b64(signature)}\n"

    def log(
        self,
        body: bytes,
        integrated_time: int,
        *,
        checkpoint_signer: SyntheticRekor | None = None,
        set_signer: SyntheticRekor | None = None,
    ) -> dict[str, Any]:
        """Append `body` and return its bundle `tlogEntries` item (protobuf-specs JSON)."""
        self.leaves.append(body)
        index, size = len(self.leaves) - 1, len(self.leaves)
        root = merkle_root(self.leaves)
        promise = rfc8785.dumps(
            {
                "body": b64(body),
                "integratedTime": integrated_time,
                "logID": self.log_id.hex(),
                "logIndex": index,
            }
        )
        return {
            "logIndex": str(index),
            "logId": {"keyId": b64(self.log_id)},
            "kindVersion": {"kind": "hashedrekord", "version": "0.0.1"},
            "integratedTime": str(integrated_time),
            "inclusionPromise": {"signedEntryTimestamp": b64((set_signer or self).sign(promise))},
            "inclusionProof": {
                "logIndex": str(index),
                "rootHash": b64(root),
                "treeSize": str(size),
                "hashes": [b64(h) for h in inclusion_path(index, self.leaves)],
                "checkpoint": {"envelope": self.checkpoint(size, root, checkpoint_signer)},
            },
            "canonicalizedBody": b64(body),
        }


def _public_key_entry(key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    return {
        "rawBytes": b64(spki_der(key)),
        "keyDetails": "PKIX_ECDSA_P256_SHA_256",
        "validFor": {"start": EPOCH.isoformat().replace("+00:00", "Z")},
    }


def hashedrekord_body(digest: bytes, signature: bytes, certificate: x509.Certificate) -> bytes:
    """What Rekor stores for a hashedrekord v0.0.1 entry, canonicalized."""
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    return rfc8785.dumps(
        {
            "apiVersion": "0.0.1",
            "kind": "hashedrekord",
            "spec": {
                "data": {"hash": {"algorithm": "sha256", "value": digest.hex()}},
                "signature": {"content": b64(signature), "publicKey": {"content": b64(pem)}},
            },
        }
    )


@dataclass
class SigstorePKI:
    """One sigstore instance: CA, CT log and transparency log, and the trusted root naming them."""

    ca: SyntheticCA = field(default_factory=SyntheticCA)
    ctlog: SyntheticCTLog = field(default_factory=SyntheticCTLog)
    rekor: SyntheticRekor = field(default_factory=SyntheticRekor)

    def trusted_root(self) -> dict[str, Any]:
        """The `trusted_root.json` document (protobuf-specs `TrustedRoot`, JSON form)."""
        return {
            "mediaType": TRUSTED_ROOT_MEDIA_TYPE,
            "tlogs": [
                {
                    "baseUrl": "https://rekor.edgefleet.test",
                    "hashAlgorithm": "SHA2_256",
                    "publicKey": _public_key_entry(self.rekor.key.public_key()),
                    "logId": {"keyId": b64(self.rekor.log_id)},
                }
            ],
            "certificateAuthorities": [
                {
                    "subject": {"organization": "edgefleet-test", "commonName": self.ca.name},
                    "uri": "https://fulcio.edgefleet.test",
                    "certChain": {
                        "certificates": [
                            {"rawBytes": b64(c.public_bytes(serialization.Encoding.DER))}
                            for c in self.ca.chain
                        ]
                    },
                    "validFor": {"start": EPOCH.isoformat().replace("+00:00", "Z")},
                }
            ],
            "ctlogs": [
                {
                    "baseUrl": "https://ctfe.edgefleet.test",
                    "hashAlgorithm": "SHA2_256",
                    "publicKey": _public_key_entry(self.ctlog.key.public_key()),
                    "logId": {"keyId": b64(key_id(self.ctlog.key.public_key()))},
                }
            ],
            "timestampAuthorities": [],
        }

    def leaf_certificate(
        self,
        key: ec.EllipticCurvePublicKey,
        subject: str,
        issuer: str,
        when: datetime,
        *,
        ca: SyntheticCA | None = None,
        ctlog: SyntheticCTLog | None = None,
        issuer_v1: bool = True,
        issuer_v2: bool = True,
        code_signing: bool = True,
        sct: bool = True,
        lifetime: timedelta = timedelta(minutes=10),
    ) -> x509.Certificate:
        """A Fulcio-profile leaf certificate for `key` with an embedded SCT."""
        ca = ca or self.ca
        ctlog = ctlog or self.ctlog
        san: x509.GeneralName = (
            x509.RFC822Name(subject)
            if "@" in subject and "://" not in subject
            else x509.UniformResourceIdentifier(subject)
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(ca.issuer.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(when - timedelta(seconds=30))
            .not_valid_after(when - timedelta(seconds=30) + lifetime)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CODE_SIGNING]
                    if code_signing
                    else [ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        builder = _key_identifiers(builder, key, ca.issuer_key.public_key())
        # An empty subject makes the SAN the certificate's only name, hence critical.
        builder = builder.add_extension(x509.SubjectAlternativeName([san]), critical=True)
        if issuer_v1:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(OIDC_ISSUER_V1, issuer.encode()), critical=False
            )
        if issuer_v2:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(OIDC_ISSUER_V2, encode_der(issuer)), critical=False
            )
        if not sct:
            return builder.sign(ca.issuer_key, hashes.SHA384())
        # The SCT signs the TBS certificate as it will be without the SCT list: sign a
        # precertificate now, then the final certificate with the same fields plus the list.
        precertificate = builder.sign(ca.issuer_key, hashes.SHA384())
        extension = ctlog.sct_list_extension(
            precertificate.tbs_certificate_bytes, ca.issuer_key.public_key(), when
        )
        return builder.add_extension(extension, critical=False).sign(ca.issuer_key, hashes.SHA384())

    def make_bundle(
        self,
        payload: bytes,
        subject: str,
        issuer: str,
        *,
        ca: SyntheticCA | None = None,
        ctlog: SyntheticCTLog | None = None,
        rekor: SyntheticRekor | None = None,
        issuer_v1: bool = True,
        issuer_v2: bool = True,
        code_signing: bool = True,
        sct: bool = True,
        lifetime: timedelta = timedelta(minutes=10),
        log_delay: timedelta = timedelta(seconds=1),
        logged_payload: bytes | None = None,
        checkpoint_signer: SyntheticRekor | None = None,
        set_signer: SyntheticRekor | None = None,
    ) -> bytes:
        """Sign `payload` as `sigstore sign` would for `subject` at `issuer`; the bundle JSON.

        `ca`, `ctlog`, `rekor`: issue, timestamp or log with another instance's keys (one that
        the trusted root does not name). `issuer_v1`/`issuer_v2`: which OIDC issuer extensions
        the certificate carries. `lifetime`, `log_delay`: the certificate's validity and when,
        after issuance, the log integrates the entry. `logged_payload`: the log records a
        signature over other bytes (a correctly signed entry that belongs to another artifact).
        `checkpoint_signer`, `set_signer`: who signs the checkpoint and the inclusion promise.
        """
        rekor = rekor or self.rekor
        issued = now_seconds() - timedelta(minutes=1)
        ephemeral = ec.generate_private_key(ec.SECP256R1())
        certificate = self.leaf_certificate(
            ephemeral.public_key(),
            subject,
            issuer,
            issued,
            ca=ca,
            ctlog=ctlog,
            issuer_v1=issuer_v1,
            issuer_v2=issuer_v2,
            code_signing=code_signing,
            sct=sct,
            lifetime=lifetime,
        )
        digest = hashlib.sha256(payload).digest()
        signature = ephemeral.sign(payload, ec.ECDSA(hashes.SHA256()))
        if logged_payload is None:
            logged_digest, logged_signature = digest, signature
        else:
            logged_digest = hashlib.sha256(logged_payload).digest()
            logged_signature = ephemeral.sign(logged_payload, ec.ECDSA(hashes.SHA256()))
        entry = rekor.log(
            hashedrekord_body(logged_digest, logged_signature, certificate),
            int((issued + log_delay).timestamp()),
            checkpoint_signer=checkpoint_signer,
            set_signer=set_signer,
        )
        bundle = {
            "mediaType": BUNDLE_MEDIA_TYPE,
            "verificationMaterial": {
                "certificate": {
                    "rawBytes": b64(certificate.public_bytes(serialization.Encoding.DER))
                },
                "tlogEntries": [entry],
            },
            "messageSignature": {
                "messageDigest": {"algorithm": "SHA2_256", "digest": b64(digest)},
                "signature": b64(signature),
            },
        }
        return json.dumps(bundle, indent=2).encode()


def edit_bundle(bundle: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """A copy of the bundle JSON with `edit` applied to its parsed form."""
    document = copy.deepcopy(json.loads(bundle))
    edit(document)
    return json.dumps(document, indent=2).encode()


def flip_byte(encoded: str, index: int) -> str:
    """Base64 `encoded` with one bit of its decoded byte at `index` flipped."""
    raw = bytearray(base64.b64decode(encoded))
    raw[index] ^= 0x01
    return b64(bytes(raw))
