"""The attacks TUF names, against a real git repository: each asserts the error it raises and
that the node's accepted state (its state file) did not change."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from reconciler.commands.trust import write_signers
from reconciler.errors import (
    ExpiredError,
    MixAndMatchError,
    RollbackError,
    RootChainError,
    SignatureError,
    SigstoreError,
    TamperedError,
    TrustError,
    ValidationFailed,
)
from reconciler.keys import SigningKey
from reconciler.release import RELEASE_PAYLOAD_TYPE, payload_bytes, sign_release
from reconciler.signing import sign_dsse, sign_envelope
from reconciler.timestamps import now
from reconciler.trust_root import load_pinned_root, parse_root, walk_roots
from tests.sigstore_testing import SigstorePKI
from tests.trust_testing import FleetRepository, Keys, Node, git_commit


@pytest.fixture
def fleet(tmp_path: Path) -> FleetRepository:
    return FleetRepository(tmp_path / "repo")


@pytest.fixture
def node(tmp_path: Path, fleet: FleetRepository) -> Node:
    return Node(tmp_path / "node-state.json", fleet.pinned_root())


def refused(
    node: Node, fleet: FleetRepository, error: type[TrustError], match: str, **update: object
) -> None:
    before = node.snapshot()
    with pytest.raises(error, match=match):
        node.update(fleet.repo, **update)  # type: ignore[arg-type]
    assert node.snapshot() == before, "a refused release must leave the node's state unchanged"


def test_a_good_release_is_accepted_and_recorded(fleet: FleetRepository, node: Node) -> None:
    fleet.release()
    release = node.update(fleet.repo)
    assert release.version == 1 and len(release.signers) == 2
    _, accepted = node.load()
    assert accepted.version == 1 and accepted.digest == release.digest


def test_unsigned_tag(fleet: FleetRepository, node: Node) -> None:
    fleet.tag(sign_release(fleet.payload(), []))
    refused(node, fleet, SignatureError, "got 0 valid signature")


def test_signature_from_an_untrusted_key(fleet: FleetRepository, node: Node) -> None:
    strangers = [SigningKey.generate("mallory"), SigningKey.generate("eve")]
    fleet.tag(sign_release(fleet.payload(), strangers))
    refused(node, fleet, SignatureError, "expected at least 2")


def test_one_signature_short_of_the_threshold(fleet: FleetRepository, node: Node) -> None:
    fleet.tag(sign_release(fleet.payload(), fleet.keys.release[:1]))
    refused(node, fleet, SignatureError, "got 1 valid signature")


def test_the_same_key_counted_twice(fleet: FleetRepository, node: Node) -> None:
    key = fleet.keys.release[0]
    fleet.tag(sign_release(fleet.payload(), [key, key]))
    refused(node, fleet, SignatureError, "got 1 valid signature")


def test_an_older_release_after_a_newer_one(fleet: FleetRepository, node: Node) -> None:
    fleet.release()
    fleet.change("nodes/store-1.yaml", (fleet.path / "nodes/store-1.yaml").read_text() + "\n")
    fleet.release()
    assert node.update(fleet.repo).version == 2
    refused(node, fleet, RollbackError, "got version 1 \\(an older version\\)", version=1)


def test_an_equal_version_with_different_content(fleet: FleetRepository, node: Node) -> None:
    fleet.release()
    node.update(fleet.repo)
    fleet.repo.git.tag("-d", "release/1")
    fleet.change("nodes/store-2.yaml", (fleet.path / "nodes/store-2.yaml").read_text() + "\n")
    fleet.release(version=1)
    refused(node, fleet, RollbackError, "the same version with different content")


def test_an_expired_release(fleet: FleetRepository, node: Node) -> None:
    issued = now() - timedelta(days=40)
    fleet.release(issued=issued, expires=issued + timedelta(days=30))
    refused(node, fleet, ExpiredError, "expired at")


def test_a_release_of_another_fleet(fleet: FleetRepository, node: Node) -> None:
    fleet.release(fleet="other-fleet")
    refused(node, fleet, MixAndMatchError, "got a release of fleet 'other-fleet'")


def test_tag_name_and_payload_version_disagree(fleet: FleetRepository, node: Node) -> None:
    envelope = sign_release(fleet.payload(version=7), fleet.keys.release[:2])
    fleet.tag(envelope, name="release/1")
    refused(node, fleet, MixAndMatchError, "its payload says version 7")


def test_a_file_changed_after_signing_under_the_old_signature(
    fleet: FleetRepository, node: Node
) -> None:
    envelope = fleet.release()
    fleet.repo.git.tag("-d", "release/1")
    tampered = fleet.change(
        "artifacts.yaml", (fleet.path / "artifacts.yaml").read_text().replace("1000", "1001")
    )
    fleet.tag(envelope, commit=tampered)  # the old signed message, over the new commit
    refused(node, fleet, MixAndMatchError, "expected .* the commit its payload signs")


def test_same_commit_id_different_content_as_a_sha1_collision_would_give(
    fleet: FleetRepository, node: Node
) -> None:
    fleet.release()
    # `git replace` serves other bytes under the original object id: what a SHA-1 collision
    # would do. The commit and tree ids stay those the release signed.
    original = fleet.repo.git.rev_parse("HEAD:artifacts.yaml")
    forged_path = fleet.path / "forged.yaml"
    forged_path.write_text((fleet.path / "artifacts.yaml").read_text().replace("1000", "1"))
    forged = fleet.repo.git.hash_object("-w", str(forged_path))
    forged_path.unlink()
    fleet.repo.git.replace(original, forged)
    refused(node, fleet, TamperedError, "artifacts.yaml: got content with SHA-256")


def test_an_extra_file_slipped_into_the_signed_commit_list(
    fleet: FleetRepository, node: Node
) -> None:
    payload = fleet.payload()
    (fleet.path / "groups" / "evil.yaml").write_text("apiVersion: edgefleet/v1\n")
    commit = git_commit(fleet.repo, "add a group after computing the digests")
    payload["commit"] = commit
    fleet.tag(sign_release(payload, fleet.keys.release[:2]))
    refused(node, fleet, TamperedError, "groups/evil.yaml: in the commit but not in release")


def test_a_payload_signature_copied_onto_another_payload(
    fleet: FleetRepository, node: Node
) -> None:
    good = sign_release(fleet.payload(), fleet.keys.release[:2])
    other = fleet.payload(expires=now() + timedelta(days=3650))  # a forged, longer freshness
    forged = {**good, "payload": base64.b64encode(payload_bytes(other)).decode()}
    fleet.tag(forged)
    refused(node, fleet, SignatureError, "got 0 valid signature")


def test_signatures_over_the_same_bytes_under_another_payload_type(
    fleet: FleetRepository, node: Node
) -> None:
    # DSSE binds the type into what is signed: bytes signed as something else are not a release.
    body = payload_bytes(fleet.payload())
    other = sign_dsse("application/vnd.edgefleet.status+json", body, fleet.keys.release[:2])
    fleet.tag({**other, "payloadType": RELEASE_PAYLOAD_TYPE})
    refused(node, fleet, SignatureError, "got 0 valid signature")


def test_a_signed_payload_naming_a_key_twice(fleet: FleetRepository, node: Node) -> None:
    # Two parsers may pick different values for a repeated key; a signed payload means one thing.
    payload = fleet.payload()
    body = payload_bytes(payload).replace(
        b'"expires":', b'"expires":"2099-01-01T00:00:00Z","expires":', 1
    )
    fleet.tag(sign_dsse(RELEASE_PAYLOAD_TYPE, body, fleet.keys.release[:2]))
    refused(node, fleet, SignatureError, "names 'expires' twice")


def rotate(
    fleet: FleetRepository, keys: Keys, signers: list[SigningKey], version: int | None = None
) -> None:
    fleet.write_root(keys.root, 2, keys.release, 2, signers, version)
    git_commit(fleet.repo, "rotate the root")


def test_a_root_rotation_signed_only_by_the_new_keys(fleet: FleetRepository, node: Node) -> None:
    new = Keys()
    rotate(fleet, new, new.root[:2])
    fleet.release(signers=new.release[:2])
    refused(node, fleet, SignatureError, "signed by the old root's keys")


def test_a_rotation_signed_only_by_the_old_keys(fleet: FleetRepository, node: Node) -> None:
    new = Keys()
    rotate(fleet, new, fleet.keys.root[:2])
    fleet.release(signers=new.release[:2])
    refused(node, fleet, SignatureError, "signed by its own root keys")


def test_a_rotation_skipping_a_version(fleet: FleetRepository, node: Node) -> None:
    new = Keys()
    signed = fleet.root_doc(new.root, 2, new.release, 2, version=3)
    data = json.dumps(sign_envelope(signed, fleet.keys.root[:2] + new.root[:2])).encode()
    (fleet.path / "trust" / "roots" / "2.json").write_bytes(data)
    (fleet.path / "trust" / "root.json").write_bytes(data)
    git_commit(fleet.repo, "jump to root 3")
    fleet.release(signers=new.release[:2])
    refused(node, fleet, RootChainError, "got version 3, expected 2")


def test_a_proper_rotation_is_followed_and_persisted(fleet: FleetRepository, node: Node) -> None:
    new = Keys()
    rotate(fleet, new, fleet.keys.root[:2] + new.root[:2])
    fleet.release(signers=new.release[:2])
    release = node.update(fleet.repo)
    assert release.version == 1
    pinned, _ = node.load()
    assert json.loads(pinned)["signed"]["version"] == 2


def test_a_release_signed_by_a_key_the_newer_root_revoked(
    fleet: FleetRepository, node: Node
) -> None:
    new = Keys()
    kept = Keys(root=fleet.keys.root, release=[fleet.keys.release[0], *new.release[:2]])
    rotate(fleet, kept, fleet.keys.root[:2])  # release2 and release3 are revoked
    fleet.release(signers=fleet.keys.release[:2])
    refused(node, fleet, SignatureError, "got 1 valid signature.* root version 2")


def test_a_clock_set_back_before_the_last_signed_time(fleet: FleetRepository, node: Node) -> None:
    issued = now() - timedelta(days=20)
    fleet.release(issued=issued, expires=issued + timedelta(days=30))
    node.update(fleet.repo)  # accepted: signed time `issued`
    fleet.change("nodes/store-1.yaml", (fleet.path / "nodes/store-1.yaml").read_text() + "\n")
    # Version 2 expires before a signed time the node has seen; the node's clock is set back
    # to a moment when it had not expired yet.
    fleet.release(issued=issued - timedelta(days=10), expires=issued - timedelta(days=1))
    refused(
        node,
        fleet,
        ExpiredError,
        "a signed time of .* was already seen",
        at=issued - timedelta(days=5),
    )


@pytest.mark.parametrize(
    "mangle",
    [
        lambda m: m.replace('"payloadType"', '"payloadTpye"'),
        lambda m: m.split("\n\n")[0] + "\n\nnot json at all\n",
        lambda m: m[: len(m) // 2],
    ],
    ids=["off-schema", "not-json", "truncated"],
)
def test_a_corrupted_tag_message(
    fleet: FleetRepository, node: Node, mangle: Callable[[str], str]
) -> None:
    envelope = sign_release(fleet.payload(), fleet.keys.release[:2])
    from reconciler.release import tag_message

    fleet.tag(envelope, message=mangle(tag_message(envelope)))
    refused(node, fleet, SignatureError, "tag release/1")


# --- sigstore: a release signed by a CI identity instead of (or besides) keys ----------------

CI_ISSUER = "https://token.actions.githubusercontent.com"
CI_SUBJECT = "https://github.com/retail/fleet/.github/workflows/release.yml@refs/heads/main"


@pytest.fixture
def sigstore_fleet(tmp_path: Path) -> tuple[FleetRepository, SigstorePKI]:
    pki = SigstorePKI()
    fleet = FleetRepository(tmp_path / "repo", root_threshold=2, release_threshold=2)
    signed = fleet.root_doc(fleet.keys.root, 2, fleet.keys.release, 2, version=1)
    signed["roles"]["release"]["sigstore"] = [{"issuer": CI_ISSUER, "subject": CI_SUBJECT}]
    signed["sigstoreTrustedRoot"] = pki.trusted_root()
    data = json.dumps(sign_envelope(signed, fleet.keys.root[:2]), indent=2).encode()
    (fleet.path / "trust" / "root.json").write_bytes(data)
    (fleet.path / "trust" / "roots" / "1.json").write_bytes(data)
    write_signers(fleet.path, parse_root(data))
    git_commit(fleet.repo, "allow the CI identity to sign releases")
    return fleet, pki


def sigstore_release(
    fleet: FleetRepository, pki: SigstorePKI, subject: str, issuer: str, keys: int = 1
) -> None:
    payload = fleet.payload()
    bundle = json.loads(pki.make_bundle(payload_bytes(payload), subject, issuer))
    fleet.tag(sign_release(payload, fleet.keys.release[:keys], [bundle]))


def test_one_key_and_the_ci_identity_meet_a_threshold_of_two(
    tmp_path: Path, sigstore_fleet: tuple[FleetRepository, SigstorePKI]
) -> None:
    fleet, pki = sigstore_fleet
    node = Node(tmp_path / "state.json", fleet.pinned_root())
    sigstore_release(fleet, pki, CI_SUBJECT, CI_ISSUER)
    release = node.update(fleet.repo)
    assert f"sigstore:{CI_ISSUER}:{CI_SUBJECT}" in release.signers and len(release.signers) == 2


@pytest.mark.parametrize(
    ("subject", "issuer", "match"),
    [
        (CI_SUBJECT.replace("retail/fleet", "mallory/fork"), CI_ISSUER, "sigstore identity: got"),
        (CI_SUBJECT, "https://accounts.example.com", "sigstore identity: got"),
    ],
    ids=["another-subject", "another-issuer"],
)
def test_a_sigstore_identity_the_root_does_not_allow(
    tmp_path: Path,
    sigstore_fleet: tuple[FleetRepository, SigstorePKI],
    subject: str,
    issuer: str,
    match: str,
) -> None:
    fleet, pki = sigstore_fleet
    node = Node(tmp_path / "state.json", fleet.pinned_root())
    sigstore_release(fleet, pki, subject, issuer)
    refused(node, fleet, SigstoreError, match)


def test_a_corrupted_sigstore_bundle(
    tmp_path: Path, sigstore_fleet: tuple[FleetRepository, SigstorePKI]
) -> None:
    fleet, pki = sigstore_fleet
    node = Node(tmp_path / "state.json", fleet.pinned_root())
    payload = fleet.payload()
    bundle = json.loads(pki.make_bundle(payload_bytes(payload), CI_SUBJECT, CI_ISSUER))
    bundle["messageSignature"]["signature"] = bundle["messageSignature"]["signature"][::-1]
    fleet.tag(sign_release(payload, fleet.keys.release[:1], [bundle]))
    refused(node, fleet, SigstoreError, "sigstore")


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/shadow", "nodes/x.yaml\n", "a//b"])
def test_a_signed_file_map_naming_an_unsafe_path(
    fleet: FleetRepository, node: Node, path: str
) -> None:
    payload = fleet.payload()
    payload["files"][path] = "0" * 64
    fleet.tag(sign_release(payload, fleet.keys.release[:2]))  # validly signed, but unsafe
    refused(node, fleet, SignatureError, "expected a safe relative path")


# --- the remaining rules of the threat table -----------------------------------------------


def test_an_expired_root(fleet: FleetRepository, node: Node) -> None:
    signed = fleet.root_doc(
        fleet.keys.root, 2, fleet.keys.release, 2, version=2, expires=now() - timedelta(days=1)
    )
    data = json.dumps(sign_envelope(signed, fleet.keys.root[:2])).encode()
    for name in ("root.json", "roots/2.json"):
        (fleet.path / "trust" / name).write_bytes(data)
    write_signers(fleet.path, parse_root(data))
    git_commit(fleet.repo, "a root that has already expired")
    fleet.release()
    refused(node, fleet, ExpiredError, "root version 2: expired at")


def test_a_root_of_another_fleet_in_the_chain(fleet: FleetRepository, node: Node) -> None:
    signed = fleet.root_doc(fleet.keys.root, 2, fleet.keys.release, 2, version=2)
    signed["fleet"] = "other-fleet"
    data = json.dumps(sign_envelope(signed, fleet.keys.root[:2])).encode()
    (fleet.path / "trust" / "roots" / "2.json").write_bytes(data)
    git_commit(fleet.repo, "another fleet's root")
    fleet.release()
    refused(node, fleet, MixAndMatchError, "got fleet 'other-fleet'")


def test_root_json_that_disagrees_with_the_chain(fleet: FleetRepository, node: Node) -> None:
    root = fleet.path / "trust" / "root.json"
    root.write_text(root.read_text() + "\n")
    git_commit(fleet.repo, "root.json is no longer roots/1.json")
    fleet.release()
    refused(node, fleet, MixAndMatchError, "differs from trust/roots/1.json")


def test_one_key_under_two_ids_is_refused_when_the_root_is_read(fleet: FleetRepository) -> None:
    signed = fleet.root_doc(fleet.keys.root, 2, fleet.keys.release, 2, version=1)
    key = fleet.keys.release[0]
    signed["keys"]["f" * 64] = {"keytype": "ed25519", "public": key.public.openssh()}
    signed["roles"]["release"]["keyids"].append("f" * 64)
    data = json.dumps(sign_envelope(signed, fleet.keys.root[:2])).encode()
    with pytest.raises(RootChainError, match="one key, one id"):
        load_pinned_root(data)


def test_an_endless_rotation_chain_is_bounded(fleet: FleetRepository) -> None:
    pinned = load_pinned_root(fleet.pinned_root())
    chain: dict[int, bytes] = {}
    for version in range(2, 7):
        signed = fleet.root_doc(fleet.keys.root, 2, fleet.keys.release, 2, version=version)
        chain[version] = json.dumps(sign_envelope(signed, fleet.keys.root[:2])).encode()
    with pytest.raises(RootChainError, match="more than 3 root rotations"):
        walk_roots(pinned, chain.get, now(), max_rotations=3)
    assert walk_roots(pinned, chain.get, now(), max_rotations=5).version == 6


def test_a_signed_file_missing_from_the_tree(fleet: FleetRepository, node: Node) -> None:
    payload = fleet.payload()
    payload["files"]["golden/extra.npy"] = "0" * 64
    fleet.tag(sign_release(payload, fleet.keys.release[:2]))
    refused(node, fleet, TamperedError, "golden/extra.npy: signed by release 1 but missing")


def test_a_signed_version_beyond_what_json_numbers_carry_exactly(
    fleet: FleetRepository, node: Node
) -> None:
    # Above 2^53 - 1 other JSON parsers round the version; RFC 8785 cannot write it at all.
    payload = fleet.payload()
    payload["version"] = 2**55
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    fleet.tag(sign_dsse(RELEASE_PAYLOAD_TYPE, body, fleet.keys.release[:2]))
    refused(node, fleet, SignatureError, "not a well-formed signed release")


def test_a_validly_signed_but_invalid_desired_state(fleet: FleetRepository, node: Node) -> None:
    fleet.change("fleet.yaml", (fleet.path / "fleet.yaml").read_text().replace("60s", "60 s"))
    fleet.release()  # signed without `edgefleet release`, which would have refused it
    before = node.snapshot()
    with pytest.raises(ValidationFailed, match="release 1: the fleet repository is invalid") as err:
        node.update(fleet.repo)
    assert err.value.exit_code == 3  # rejected by validation: the contract's exit code 3
    assert node.snapshot() == before
