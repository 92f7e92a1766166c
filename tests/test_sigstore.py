"""Sigstore-signed releases: bundles from a synthetic sigstore PKI made now, checked OFFLINE by
sigstore-python's real `Verifier` (nothing mocked), and every way of forging one refused."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import rfc8785
from cryptography import x509

from reconciler.errors import EdgeFleetError, SigstoreError, TrustError
from reconciler.sigstore_release import sign_with_sigstore, verify_sigstore_bundle
from tests.sigstore_testing import (
    SigstorePKI,
    SyntheticCA,
    SyntheticCTLog,
    SyntheticRekor,
    edit_bundle,
    flip_byte,
)

GITHUB = "https://token.actions.githubusercontent.com"
WORKFLOW = "https://github.com/example/fleet/.github/workflows/release.yml@refs/heads/main"
GOOGLE = "https://accounts.google.com"
BOT = "release-bot@example.net"

PAYLOAD = rfc8785.dumps({"fleet": "retail-eu", "version": 7, "commit": "a" * 40})
ALLOWED = [(GOOGLE, BOT), (GITHUB, WORKFLOW)]


@pytest.fixture(scope="module")
def pki() -> SigstorePKI:
    return SigstorePKI()


@pytest.fixture(scope="module")
def root(pki: SigstorePKI) -> dict[str, Any]:
    return pki.trusted_root()


@pytest.fixture(scope="module")
def bundle(pki: SigstorePKI) -> bytes:
    return pki.make_bundle(PAYLOAD, WORKFLOW, GITHUB)


def refused(bundle: bytes, root: dict[str, Any], *, payload: bytes = PAYLOAD) -> str:
    """The message of the `SigstoreError` that verifying `bundle` raises."""
    with pytest.raises(SigstoreError) as caught:
        verify_sigstore_bundle(bundle, payload, root, ALLOWED)
    return str(caught.value)


def entry(document: dict[str, Any]) -> dict[str, Any]:
    tlog: dict[str, Any] = document["verificationMaterial"]["tlogEntries"][0]
    return tlog


# (a) a genuine bundle verifies and names its signer


def test_allowed_identity_verifies_and_is_returned(bundle: bytes, root: dict[str, Any]) -> None:
    assert verify_sigstore_bundle(bundle, PAYLOAD, root, ALLOWED) == (GITHUB, WORKFLOW)


@pytest.mark.parametrize(
    ("subject", "issuer", "options"),
    [
        (BOT, GOOGLE, {}),  # e-mail SAN
        (WORKFLOW, GITHUB, {"issuer_v1": False}),  # only the v2 issuer extension
        (WORKFLOW, GITHUB, {"issuer_v2": False}),  # only the deprecated v1 one
    ],
)
def test_identity_forms_fulcio_issues_verify(
    pki: SigstorePKI, root: dict[str, Any], subject: str, issuer: str, options: dict[str, Any]
) -> None:
    signed = pki.make_bundle(PAYLOAD, subject, issuer, **options)
    assert verify_sigstore_bundle(signed, PAYLOAD, root, ALLOWED) == (issuer, subject)


def test_ca_without_intermediate_verifies() -> None:
    pki = SigstorePKI(ca=SyntheticCA(intermediate=False))
    signed = pki.make_bundle(PAYLOAD, WORKFLOW, GITHUB)
    assert verify_sigstore_bundle(signed, PAYLOAD, pki.trusted_root(), ALLOWED) == (
        GITHUB,
        WORKFLOW,
    )


def test_bundle_survives_being_embedded_in_a_release_envelope(
    bundle: bytes, root: dict[str, Any]
) -> None:
    # The release tag carries the bundle as a JSON object and re-serializes it for checking.
    reserialized = json.dumps(json.loads(bundle)).encode()
    assert verify_sigstore_bundle(reserialized, PAYLOAD, root, ALLOWED) == (GITHUB, WORKFLOW)


def test_refusals_are_trust_errors_of_the_sigstore_rule(root: dict[str, Any]) -> None:
    with pytest.raises(TrustError) as caught:
        verify_sigstore_bundle(b"{", PAYLOAD, root, ALLOWED)
    assert isinstance(caught.value, SigstoreError)
    assert caught.value.rule == "sigstore"
    assert caught.value.exit_code == 3


# (b) and (c) a genuine certificate for an identity the trust root does not allow


def test_subject_not_allowed_is_refused(pki: SigstorePKI, root: dict[str, Any]) -> None:
    intruder = "https://github.com/example/fleet/.github/workflows/fork.yml@refs/heads/evil"
    message = refused(pki.make_bundle(PAYLOAD, intruder, GITHUB), root)
    assert message.startswith("sigstore identity: got subject")
    assert intruder in message and GITHUB in message
    assert f"expected one of: subject {BOT!r} issued by {GOOGLE!r}; subject {WORKFLOW!r}" in message


def test_issuer_differs_is_refused(pki: SigstorePKI, root: dict[str, Any]) -> None:
    rogue_issuer = "https://oidc.evil.example"
    message = refused(pki.make_bundle(PAYLOAD, WORKFLOW, rogue_issuer), root)
    assert f"got subject {WORKFLOW!r} issued by {rogue_issuer!r}" in message
    assert f"subject {WORKFLOW!r} issued by {GITHUB!r}" in message


def test_issuer_differs_in_a_v2_only_certificate_is_refused(
    pki: SigstorePKI, root: dict[str, Any]
) -> None:
    signed = pki.make_bundle(PAYLOAD, WORKFLOW, "https://oidc.evil.example", issuer_v1=False)
    assert "issued by 'https://oidc.evil.example', expected one of" in refused(signed, root)


def test_subject_of_one_pair_with_issuer_of_another_is_refused(
    pki: SigstorePKI, root: dict[str, Any]
) -> None:
    # Both values are allowed, but never together: pairs are matched whole.
    assert "sigstore identity" in refused(pki.make_bundle(PAYLOAD, WORKFLOW, GOOGLE), root)


def test_no_allowed_identity_refuses_every_bundle(bundle: bytes, root: dict[str, Any]) -> None:
    with pytest.raises(SigstoreError, match="allows no sigstore identity"):
        verify_sigstore_bundle(bundle, PAYLOAD, root, [])


# (d) the payload changed after signing


def test_changed_payload_is_refused(bundle: bytes, root: dict[str, Any]) -> None:
    changed = rfc8785.dumps({"fleet": "retail-eu", "version": 8, "commit": "a" * 40})
    message = refused(bundle, root, payload=changed)
    assert "sigstore bundle signs sha256:" in message
    assert "expected the release payload's sha256:" in message


def test_changed_payload_is_refused_without_a_stated_digest(
    bundle: bytes, root: dict[str, Any]
) -> None:
    def drop_digest(document: dict[str, Any]) -> None:
        del document["messageSignature"]["messageDigest"]

    stripped = edit_bundle(bundle, drop_digest)
    assert verify_sigstore_bundle(stripped, PAYLOAD, root, ALLOWED) == (GITHUB, WORKFLOW)
    message = refused(stripped, root, payload=PAYLOAD + b" ")
    assert "over the release payload (sha256:" in message
    assert "does not verify: VerificationError: Signature is invalid for input" in message


def test_signature_logged_for_another_artifact_is_refused(
    pki: SigstorePKI, root: dict[str, Any]
) -> None:
    # Everything is genuinely signed, but the log entry records another payload's signature.
    signed = pki.make_bundle(PAYLOAD, WORKFLOW, GITHUB, logged_payload=b"another release")
    assert "transparency log entry is inconsistent" in refused(signed, root)


# (e) a corrupted bundle


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda b: b[: len(b) // 2],
        lambda b: b"",
        lambda b: b"not json",
        lambda b: b"[]",
        lambda b: b.replace(b"bundle.v0.3+json", b"bundle.v9.9+json"),
    ],
    ids=["truncated", "empty", "not-json", "not-an-object", "unknown-media-type"],
)
def test_malformed_bundle_is_refused(
    bundle: bytes, root: dict[str, Any], corrupt: Callable[[bytes], bytes]
) -> None:
    assert refused(corrupt(bundle), root).startswith("sigstore bundle: expected a sigstore bundle")


def test_flipped_signature_byte_is_refused(bundle: bytes, root: dict[str, Any]) -> None:
    def flip(document: dict[str, Any]) -> None:
        signature = document["messageSignature"]
        signature["signature"] = flip_byte(signature["signature"], 40)

    message = refused(edit_bundle(bundle, flip), root)
    assert f"sigstore bundle for subject {WORKFLOW!r} issued by {GITHUB!r}" in message
    assert "Signature is invalid for input" in message


def test_flipped_certificate_byte_is_refused(bundle: bytes, root: dict[str, Any]) -> None:
    # A bit of the SAN: the DER still parses, but the CA never signed this certificate.
    raw = json.loads(bundle)["verificationMaterial"]["certificate"]["rawBytes"]
    at = base64.b64decode(raw).index(b"release.yml")

    def flip(document: dict[str, Any]) -> None:
        document["verificationMaterial"]["certificate"]["rawBytes"] = flip_byte(raw, at)

    message = refused(edit_bundle(bundle, flip), root)
    # The message quotes what the (unauthenticated) certificate claims: the flipped SAN.
    forged = WORKFLOW.replace("release.yml", "selease.yml")
    assert f"sigstore certificate for subject {forged!r} issued by {GITHUB!r}" in message
    assert "expected a chain to a certificate authority of the sigstore trusted root" in message


def test_certificate_that_does_not_parse_is_refused(bundle: bytes, root: dict[str, Any]) -> None:
    def flip(document: dict[str, Any]) -> None:
        certificate = document["verificationMaterial"]["certificate"]
        certificate["rawBytes"] = flip_byte(certificate["rawBytes"], 1)  # the outer length

    assert "does not parse" in refused(edit_bundle(bundle, flip), root)


def test_corrupted_bytes_raise_only_sigstore_errors(bundle: bytes, root: dict[str, Any]) -> None:
    # A bit flipped anywhere in the JSON: refused with SigstoreError (never another exception),
    # or, where the encoding is loose (base64 padding bits), the very same signed content.
    positions = random.Random(8785).sample(range(len(bundle)), 120)
    for at in positions:
        corrupted = bytearray(bundle)
        corrupted[at] ^= 0x04
        try:
            result = verify_sigstore_bundle(bytes(corrupted), PAYLOAD, root, ALLOWED)
        except SigstoreError:
            continue
        assert result == (GITHUB, WORKFLOW)


# (f) a certificate from a CA that the trusted root does not name


def test_certificate_from_unknown_ca_is_refused(pki: SigstorePKI, root: dict[str, Any]) -> None:
    # Same CA name, its own keys; the CT log and Rekor are the genuine ones.
    impostor = SyntheticCA(name=pki.ca.name)
    message = refused(pki.make_bundle(PAYLOAD, WORKFLOW, GITHUB, ca=impostor), root)
    assert f"sigstore certificate for subject {WORKFLOW!r} issued by {GITHUB!r}" in message
    assert "expected a chain to a certificate authority of the sigstore trusted root" in message


def test_whole_rogue_sigstore_instance_is_refused(root: dict[str, Any]) -> None:
    rogue = SigstorePKI()
    assert "expected a chain" in refused(rogue.make_bundle(PAYLOAD, WORKFLOW, GITHUB), root)


def test_sct_from_unknown_ct_log_is_refused(pki: SigstorePKI, root: dict[str, Any]) -> None:
    signed = pki.make_bundle(PAYLOAD, WORKFLOW, GITHUB, ctlog=SyntheticCTLog())
    assert "failed to verify SCT" in refused(signed, root)


def test_certificate_without_sct_is_refused(pki: SigstorePKI, root: dict[str, Any]) -> None:
    signed = pki.make_bundle(PAYLOAD, WORKFLOW, GITHUB, sct=False)
    assert "does not contain a signed certificate timestamp" in refused(signed, root)


def test_certificate_without_code_signing_usage_is_refused(
    pki: SigstorePKI, root: dict[str, Any]
) -> None:
    signed = pki.make_bundle(PAYLOAD, WORKFLOW, GITHUB, code_signing=False)
    assert "code signing" in refused(signed, root)


def test_certificate_expired_when_logged_is_refused(pki: SigstorePKI, root: dict[str, Any]) -> None:
    # Logged after the 10-minute certificate expired: a stolen ephemeral key used too late.
    signed = pki.make_bundle(
        PAYLOAD, WORKFLOW, GITHUB, lifetime=timedelta(minutes=1), log_delay=timedelta(minutes=5)
    )
    assert "expected a chain" in refused(signed, root)


# (g) a tampered log entry or checkpoint


def test_tampered_checkpoint_is_refused(bundle: bytes, root: dict[str, Any]) -> None:
    def retarget(document: dict[str, Any]) -> None:
        checkpoint = entry(document)["inclusionProof"]["checkpoint"]
        origin, size, root_hash, rest = checkpoint["envelope"].split("\n", 3)
        checkpoint["envelope"] = "\n".join([origin, str(int(size) + 1), root_hash, rest])

    assert "checkpoint: invalid signature" in refused(edit_bundle(bundle, retarget), root)


def test_checkpoint_signed_by_unknown_log_key_is_refused(
    pki: SigstorePKI, root: dict[str, Any]
) -> None:
    signed = pki.make_bundle(PAYLOAD, WORKFLOW, GITHUB, checkpoint_signer=SyntheticRekor())
    assert "checkpoint: invalid signature" in refused(signed, root)


def test_inclusion_proof_hash_flipped_is_refused(bundle: bytes, root: dict[str, Any]) -> None:
    def flip(document: dict[str, Any]) -> None:
        hashes = entry(document)["inclusionProof"]["hashes"]
        hashes[0] = flip_byte(hashes[0], 0)

    assert "inclusion proof contains invalid root hash" in refused(edit_bundle(bundle, flip), root)


def test_proof_and_checkpoint_for_another_tree_are_refused(
    pki: SigstorePKI, root: dict[str, Any]
) -> None:
    # A genuine checkpoint of the log, but for a tree that the proof does not lead to.
    first = pki.make_bundle(PAYLOAD, WORKFLOW, GITHUB)
    later = pki.make_bundle(b"a later release", WORKFLOW, GITHUB)

    def swap(document: dict[str, Any]) -> None:
        entry(document)["inclusionProof"]["checkpoint"] = entry(json.loads(later))[
            "inclusionProof"
        ]["checkpoint"]

    assert "invalid root hash" in refused(edit_bundle(first, swap), root)


def test_changed_integrated_time_is_refused(bundle: bytes, root: dict[str, Any]) -> None:
    def backdate(document: dict[str, Any]) -> None:
        tlog = entry(document)
        tlog["integratedTime"] = str(int(tlog["integratedTime"]) - 30)

    assert "invalid inclusion promise" in refused(edit_bundle(bundle, backdate), root)


def test_inclusion_promise_signed_by_unknown_log_key_is_refused(
    pki: SigstorePKI, root: dict[str, Any]
) -> None:
    signed = pki.make_bundle(PAYLOAD, WORKFLOW, GITHUB, set_signer=SyntheticRekor())
    assert "invalid inclusion promise" in refused(signed, root)


def test_entry_in_an_unknown_log_is_refused(pki: SigstorePKI, root: dict[str, Any]) -> None:
    signed = pki.make_bundle(
        PAYLOAD, WORKFLOW, GITHUB, rekor=SyntheticRekor(origin=pki.rekor.origin)
    )
    assert "invalid log entry" in refused(signed, root)


def test_swapped_log_entry_body_is_refused(pki: SigstorePKI, root: dict[str, Any]) -> None:
    mine = pki.make_bundle(PAYLOAD, WORKFLOW, GITHUB)
    theirs = pki.make_bundle(PAYLOAD, WORKFLOW, GITHUB)

    def swap(document: dict[str, Any]) -> None:
        entry(document)["canonicalizedBody"] = entry(json.loads(theirs))["canonicalizedBody"]

    assert "inclusion proof contains invalid root hash" in refused(edit_bundle(mine, swap), root)


def test_missing_inclusion_proof_is_refused(bundle: bytes, root: dict[str, Any]) -> None:
    def drop(document: dict[str, Any]) -> None:
        del entry(document)["inclusionProof"]

    message = refused(edit_bundle(bundle, drop), root)
    assert "verificationMaterial.tlogEntries.0.inclusionProof: Field required" in message


# The trusted root itself


def test_malformed_trusted_root_is_refused(bundle: bytes, root: dict[str, Any]) -> None:
    for broken in ({}, {**root, "mediaType": "text/plain"}, {**root, "tlogs": []}):
        with pytest.raises(SigstoreError, match=r"^sigstore trusted root"):
            verify_sigstore_bundle(bundle, PAYLOAD, broken, ALLOWED)


def test_trusted_root_certificates_are_real_ca_certificates(pki: SigstorePKI) -> None:
    # The synthetic CA is what the verifier's chain building trusts: guard its profile.
    chain = pki.trusted_root()["certificateAuthorities"][0]["certChain"]["certificates"]
    for item in chain:
        certificate = x509.load_der_x509_certificate(base64.b64decode(item["rawBytes"]))
        assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


# Signing talks to Fulcio and Rekor; offline, only its refusal of a bad token can run.


def test_signing_with_a_malformed_token_fails_before_any_network() -> None:
    with pytest.raises(EdgeFleetError, match="sigstore signing failed: IdentityError"):
        sign_with_sigstore(PAYLOAD, "not-a-jwt")
