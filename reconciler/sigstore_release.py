"""Releases signed by a sigstore identity (an OIDC issuer and subject, such as a CI workflow).

A release payload may carry, instead of (or besides) ed25519 signatures, a sigstore bundle: a
short-lived Fulcio certificate for the signer's OIDC identity, a signature over the payload
bytes (the RFC 8785 canonical JSON of the release) and the Rekor log entry proving that the
signature was published while the certificate was valid.

Nodes verify such bundles OFFLINE: the sigstore trusted root (the `trusted_root.json` of a
sigstore instance: Fulcio CAs, Rekor and CT log keys) comes from the node's pinned trust root,
field `sigstoreTrustedRoot`, never from the network, and the identities allowed to sign are the
trust root's `roles.release.sigstore` list. Verification is sigstore-python's own `Verifier`;
this module only feeds it the pinned material and turns every refusal into `SigstoreError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat import asn1
from cryptography.x509 import (
    Certificate,
    ExtensionNotFound,
    InvalidVersion,
    ObjectIdentifier,
    OtherName,
    RFC822Name,
    SubjectAlternativeName,
    UniformResourceIdentifier,
    UnrecognizedExtension,
    UnsupportedGeneralNameType,
)
from pydantic import ValidationError
from sigstore.errors import CertValidationError, VerificationError
from sigstore.errors import Error as SigstoreLibraryError
from sigstore.models import Bundle, ClientTrustConfig, TrustedRoot
from sigstore.oidc import IdentityToken, detect_credential
from sigstore.sign import SigningContext
from sigstore.verify import Verifier
from sigstore.verify.policy import AllOf, AnyOf, Identity, OIDCIssuerV2, VerificationPolicy
from sigstore_models.trustroot import v1 as trustroot_v1

from reconciler.errors import EdgeFleetError, SigstoreError

__all__ = ["sign_with_sigstore", "verify_sigstore_bundle"]

# Fulcio's certificate extensions (https://github.com/sigstore/fulcio/blob/main/docs/oid-info.md):
# the OIDC issuer as raw bytes (1.1, deprecated but still issued) and as a DER UTF8String (1.8).
_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
_USERNAME_OTHERNAME = ObjectIdentifier("1.3.6.1.4.1.57264.1.7")

# Hostile bundles can trip parsers anywhere below the library's API (DER, base64, JSON, X.509
# extensions); each of these means "this bundle is refused", never "carry on". The list is what
# a bit-flip sweep over a bundle raised; code on hostile input also ends in a catch-all, since a
# library update may raise something new, and a refusal must stay a SigstoreError.
_MALFORMED = (
    SigstoreLibraryError,
    InvalidVersion,
    ValueError,  # also binascii.Error, json.JSONDecodeError, pydantic.ValidationError
    TypeError,
    KeyError,
    IndexError,
    ExtensionNotFound,
    InvalidSignature,
    UnsupportedGeneralNameType,
)


class _IdentityRefused(VerificationError):
    """The certificate is genuine but names an identity the trust root does not allow."""


class _Recorded:
    """A child policy of `AnyOf` that remembers which allowed identity matched."""

    def __init__(
        self, pair: tuple[str, str], policy: VerificationPolicy, seen: list[tuple[str, str]]
    ) -> None:
        self._pair = pair
        self._policy = policy
        self._seen = seen

    def verify(self, cert: Certificate) -> None:
        self._policy.verify(cert)
        self._seen.append(self._pair)


class _AllowedIdentities:
    """The identity policy: any one of the trust root's (issuer, subject) pairs.

    The verifier calls it only once the certificate has chained to a trusted CA and its SCT
    verified, so the identity it reports on refusal is the one the CA vouched for.
    """

    def __init__(self, allowed: Sequence[tuple[str, str]]) -> None:
        self._allowed = allowed
        self.matched: list[tuple[str, str]] = []

    def verify(self, cert: Certificate) -> None:
        # `Identity` checks the issuer in extension 1.1 only; a certificate without 1.1 (Fulcio
        # may stop issuing it) is held to 1.8 instead, never to neither.
        has_v1 = _has_extension(cert, _ISSUER_V1)
        children: list[VerificationPolicy] = []
        for issuer, subject in self._allowed:
            policy: VerificationPolicy = (
                Identity(identity=subject, issuer=issuer)
                if has_v1
                else AllOf([Identity(identity=subject), OIDCIssuerV2(issuer)])
            )
            children.append(_Recorded((issuer, subject), policy, self.matched))
        try:
            AnyOf(children).verify(cert)
        except VerificationError as exc:
            raise _IdentityRefused(
                f"sigstore identity: got {_describe(cert)}, expected one of: "
                f"{_describe_allowed(self._allowed)}"
            ) from exc


def verify_sigstore_bundle(
    bundle: bytes,
    payload: bytes,
    trusted_root: Mapping[str, Any],
    identities: Sequence[tuple[str, str]],
) -> tuple[str, str]:
    """Verify a sigstore `bundle` (JSON) over `payload`; the (issuer, subject) that signed it.

    `trusted_root` is the sigstore `trusted_root.json` document pinned in the trust root and
    `identities` the (issuer, subject) pairs allowed to sign releases. Offline: nothing is
    fetched. Raises `SigstoreError`, saying what was expected and what was found, for a
    malformed bundle, a certificate not from a trusted CA or for another identity, a bad
    signature, another payload, or a log entry or checkpoint that does not verify.
    """
    allowed = _allowed_identities(identities)
    verifier = _load_verifier(trusted_root)
    parsed = _load_bundle(bundle)
    cert = parsed.signing_certificate

    digest = hashlib.sha256(payload).hexdigest()
    signed = _signed_digest(bundle)
    if signed is not None and signed != digest:
        raise SigstoreError(
            f"sigstore bundle signs sha256:{signed}, expected the release payload's "
            f"sha256:{digest} (the payload was changed after signing, or the bundle is "
            "another release's)"
        )

    policy = _AllowedIdentities(allowed)
    try:
        verifier.verify_artifact(payload, parsed, policy)
    except _IdentityRefused as exc:
        raise SigstoreError(str(exc)) from exc
    except CertValidationError as exc:
        raise SigstoreError(
            f"sigstore certificate for {_describe(cert)}, from {_issuer_dn(cert)}: "
            f"expected a chain to a certificate authority of the sigstore trusted root, "
            f"valid at the log's time: {_one_line(exc)}"
        ) from exc
    except VerificationError as exc:
        raise SigstoreError(
            f"sigstore bundle for {_describe(cert)} over the release payload "
            f"(sha256:{digest}) does not verify: {_one_line(exc)}"
        ) from exc
    except Exception as exc:  # _MALFORMED and anything new: see there
        raise SigstoreError(
            f"sigstore bundle for {_describe(cert)} refused: {_one_line(exc)}"
        ) from exc
    if not policy.matched:
        # verify_artifact returned, so the policy ran and passed: unreachable unless the
        # library stops calling the policy, in which case nothing may be accepted.
        raise SigstoreError("sigstore identity: the verifier did not check the identity policy")
    return policy.matched[0]


def sign_with_sigstore(
    payload: bytes, identity_token: str | None = None, *, staging: bool = False
) -> bytes:
    """Sign `payload` with a sigstore identity; the bundle JSON (what `sigstore sign` writes).

    `identity_token` is a raw OIDC token; without one, the ambient credential of the CI job is
    used (GitHub Actions with `id-token: write`, GitLab, Buildkite, Google Cloud...). Talks to
    the public-good instance (or its staging one): Fulcio, Rekor and the TUF repository.
    Raises `EdgeFleetError` when no identity is at hand or any service refuses.
    """
    try:
        raw = identity_token if identity_token is not None else detect_credential()
    except SigstoreLibraryError as exc:
        raise EdgeFleetError(f"sigstore signing: ambient OIDC credential: {exc}") from exc
    if raw is None:
        raise EdgeFleetError(
            "sigstore signing: expected an OIDC identity token, found none given and no "
            "ambient credential (in GitHub Actions, grant the job `permissions: id-token: write`)"
        )
    try:
        token = IdentityToken(raw)
        config = ClientTrustConfig.staging() if staging else ClientTrustConfig.production()
        context = SigningContext.from_trust_config(config)
        # cache=False: one release, one short-lived certificate.
        with context.signer(token, cache=False) as signer:
            signed = signer.sign_artifact(payload)
    # The flow spans OIDC, TUF, Fulcio and Rekor clients whose errors share no base class
    # (several live in sigstore._internal); whatever failed, CI gets one message, cause chained.
    except Exception as exc:
        raise EdgeFleetError(f"sigstore signing failed: {type(exc).__name__}: {exc}") from exc
    return signed.to_json().encode()


def _allowed_identities(identities: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    allowed = [(str(issuer), str(subject)) for issuer, subject in identities]
    if not allowed:
        raise SigstoreError(
            "sigstore identity: the trust root allows no sigstore identity to sign releases "
            "(roles.release.sigstore is empty), found a sigstore bundle"
        )
    for issuer, subject in allowed:
        if not issuer or not subject:
            raise SigstoreError(
                f"sigstore identity: expected a non-empty issuer and subject in the trust root, "
                f"got issuer {issuer!r} and subject {subject!r}"
            )
    return allowed


def _load_verifier(document: Mapping[str, Any]) -> Verifier:
    try:
        inner = trustroot_v1.TrustedRoot.from_json(json.dumps(document))
        # No public from-JSON constructor in sigstore 4.x; `from_file` would need a temporary
        # file on every verification. The constructor still checks the media type.
        root = TrustedRoot(inner)
        # Built from the pinned root alone: no TUF refresh, no network. The constructor also
        # refuses a root without transparency logs or Fulcio certificates.
        return Verifier(trusted_root=root)
    except _MALFORMED as exc:
        raise SigstoreError(
            f"sigstore trusted root (sigstoreTrustedRoot of the trust root): expected a "
            f"sigstore trusted_root.json document: {_one_line(exc)}"
        ) from exc


def _load_bundle(bundle: bytes) -> Bundle:
    try:
        return Bundle.from_json(bundle)
    except Exception as exc:  # _MALFORMED and anything new: see there
        raise SigstoreError(
            f"sigstore bundle: expected a sigstore bundle (JSON), got one that does not parse: "
            f"{_one_line(exc)}"
        ) from exc


def _signed_digest(bundle: bytes) -> str | None:
    """The payload digest the bundle says it signs (hex), when it says one."""
    try:
        document = json.loads(bundle)
        digest = document["messageSignature"]["messageDigest"]
    except (ValueError, KeyError, TypeError):
        # No digest stated (it is optional, or this is a DSSE bundle): the verifier's own
        # signature check decides alone.
        return None
    if not isinstance(digest, dict) or digest.get("algorithm") != "SHA2_256":
        return None
    try:
        return base64.b64decode(str(digest.get("digest", "")), validate=True).hex()
    except binascii.Error as exc:
        raise SigstoreError(f"sigstore bundle: message digest is not base64: {exc}") from exc


def _has_extension(cert: Certificate, oid: ObjectIdentifier) -> bool:
    try:
        cert.extensions.get_extension_for_oid(oid)
    except ExtensionNotFound:
        return False
    return True


def _identity_of(cert: Certificate) -> tuple[list[str], str | None]:
    """The certificate's identities (SAN values sigstore matches on) and its OIDC issuer."""
    sans = cert.extensions.get_extension_for_class(SubjectAlternativeName).value
    subjects: list[str] = [*sans.get_values_for_type(RFC822Name)]
    subjects += sans.get_values_for_type(UniformResourceIdentifier)
    subjects += [
        name.value.decode()
        for name in sans.get_values_for_type(OtherName)
        if name.type_id == _USERNAME_OTHERNAME
    ]
    issuer: str | None = None
    for oid in (_ISSUER_V1, _ISSUER_V2):
        try:
            value = cert.extensions.get_extension_for_oid(oid).value
        except ExtensionNotFound:
            continue
        if isinstance(value, UnrecognizedExtension):
            raw = value.value
            issuer = raw.decode() if oid == _ISSUER_V1 else asn1.decode_der(str, raw)
            break
    return subjects, issuer


def _describe(cert: Certificate) -> str:
    """'subject S issued by I', for messages; never raises, whatever the certificate holds."""
    try:
        subjects, issuer = _identity_of(cert)
    except _MALFORMED as exc:
        return f"a certificate whose identity cannot be read ({type(exc).__name__}: {exc})"
    subject = " or ".join(repr(s) for s in subjects) or "(none)"
    return f"subject {subject} issued by {issuer!r}" if issuer else f"subject {subject} (no issuer)"


def _describe_allowed(allowed: Sequence[tuple[str, str]]) -> str:
    return "; ".join(f"subject {subject!r} issued by {issuer!r}" for issuer, subject in allowed)


def _issuer_dn(cert: Certificate) -> str:
    try:
        return f"CA {cert.issuer.rfc4514_string()!r}"
    except ValueError as exc:
        return f"an unreadable CA name ({exc})"


def _one_line(exc: BaseException) -> str:
    """The error on one short line: pydantic's span many, quoting the whole input."""
    cause: BaseException | None = exc
    for _ in range(4):  # the library wraps pydantic's error (implicitly chained) at most twice
        if cause is None or isinstance(cause, ValidationError):
            break
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ValidationError):
        problems = [
            f"{'.'.join(str(part) for part in error['loc']) or '(document)'}: {error['msg']}"
            for error in cause.errors()
        ]
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        text = "; ".join(problems[:3]) + more
    elif all(isinstance(arg, str) for arg in exc.args):
        # Some library errors are raised with several string arguments; join, not repr, them.
        text = " ".join(" ".join(str(arg).split()) for arg in exc.args)
    else:
        text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(exc).__name__}: {text}"
