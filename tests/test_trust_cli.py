"""Keys, roots and releases through the commands, checked by ssh-keygen and git themselves."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
from pathlib import Path

import git
import pytest

from reconciler import sshsig
from reconciler.cli import main
from reconciler.keyfiles import load_signing_key
from reconciler.keys import PublicKey
from tests.conftest import base_files, write_files
from tests.trust_testing import git_commit, ssh_keygen_verify


def edgefleet(*argv: str) -> int:
    return main(list(argv))


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    for name in ("root1", "root2", "release1", "release2"):
        assert edgefleet("keys", "generate", "--out", str(folder / name)) == 0
    return folder


def test_keys_generate_writes_openssh_files_and_prints_the_key_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "k"
    assert edgefleet("keys", "generate", "--out", str(out)) == 0
    keyid = capsys.readouterr().out.strip()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    pub_lines = (tmp_path / "k.pub").read_text().splitlines()
    assert len(pub_lines) == 1 and pub_lines[0].startswith("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5")
    assert keyid == hashlib.sha256(PublicKey.from_openssh(pub_lines[0]).raw).hexdigest()
    # ssh-keygen reads both halves: the public key derived from the private one is identical.
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(out)], capture_output=True, text=True, check=True
    ).stdout.split()[:2]
    assert derived == pub_lines[0].split()[:2]
    assert edgefleet("keys", "generate", "--out", str(out)) == 2  # never overwrites a key


def test_ssh_keygen_verifies_a_signature_made_by_our_code(tmp_path: Path, keys: Path) -> None:
    key = load_signing_key(keys / "release1")
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f'alice@fleet namespaces="git" {key.public.openssh()}\n')
    message = b"the bytes of a tag\n"
    assert 'Good "git" signature' in ssh_keygen_verify(
        allowed, "alice@fleet", sshsig.sign(key, message, "git"), message
    )
    assert (
        ssh_keygen_verify(allowed, "alice@fleet", sshsig.sign(key, b"other", "git"), message)
        == "FAILED"
    )


def test_git_signs_and_verifies_commits_with_our_key_files(tmp_path: Path, keys: Path) -> None:
    repo = git.Repo.init(tmp_path / "r")
    key = keys / "release1"
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f'op@fleet namespaces="git" {(keys / "release1.pub").read_text()}')
    with repo.config_writer() as config:
        config.set_value("user", "name", "op")
        config.set_value("user", "email", "op@fleet")
        config.set_value("gpg", "format", "ssh")
        config.set_value("user", "signingkey", str(key))
        config.set_value("gpg.ssh", "allowedSignersFile", str(allowed))
    (tmp_path / "r" / "f").write_text("x")
    repo.git.add("f")
    repo.git.commit("-S", "-qm", "signed by git with an edgefleet key")
    assert 'Good "git" signature' in repo.git.verify_commit("HEAD", with_extended_output=True)[2]


@pytest.fixture
def fleet_repo(tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "fleet"
    write_files(path, dict(base_files()))
    assert (
        edgefleet(
            "trust",
            "init",
            "--out",
            str(path / "trust" / "root.json"),
            "--root-key",
            str(keys / "root1.pub"),
            "--root-key",
            str(keys / "root2.pub"),
            "--root-threshold",
            "2",
            "--release-key",
            str(keys / "release1.pub"),
            "--release-key",
            str(keys / "release2.pub"),
            "--release-threshold",
            "2",
            "--sign",
            str(keys / "root1"),
            "--sign",
            str(keys / "root2"),
        )
        == 0
    )
    repo = git.Repo.init(path)
    with repo.config_writer() as config:
        config.set_value("user", "name", "op")
        config.set_value("user", "email", "op@fleet")
    git_commit(repo, "fleet")
    capsys.readouterr()
    return path


def test_release_then_verify_then_plain_git_verify_tag(
    fleet_repo: Path, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert edgefleet("validate", str(fleet_repo)) == 0
    capsys.readouterr()
    assert (
        edgefleet(
            "release",
            "--repo",
            str(fleet_repo),
            "--key",
            str(keys / "release1"),
            "--key",
            str(keys / "release2"),
            "--expires",
            "10d",
        )
        == 0
    )
    made = json.loads(capsys.readouterr().out)
    repo = git.Repo(fleet_repo)
    assert made == {**made, "version": 1, "tag": "release/1", "commit": repo.head.commit.hexsha}
    assert (
        edgefleet(
            "verify",
            "--repo",
            str(fleet_repo),
            "--trust",
            str(fleet_repo / "trust" / "roots" / "1.json"),
        )
        == 0
    )
    checked = json.loads(capsys.readouterr().out)
    assert checked["verified"] and checked["version"] == 1 and len(checked["signers"]) == 2
    out = subprocess.run(
        [
            "git",
            "-c",
            "gpg.ssh.allowedSignersFile=trust/allowed_signers",
            "verify-tag",
            "release/1",
        ],
        cwd=fleet_repo,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and 'Good "git" signature' in out.stderr, out.stderr
    # The next release numbers itself.
    git_commit(repo, "an empty change")
    assert (
        edgefleet(
            "release",
            "--repo",
            str(fleet_repo),
            "--key",
            str(keys / "release1"),
            "--key",
            str(keys / "release2"),
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["version"] == 2


def test_release_refuses_too_few_keys_an_unknown_key_and_an_invalid_fleet(
    fleet_repo: Path, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = str(fleet_repo)
    assert edgefleet("release", "--repo", repo, "--key", str(keys / "release1")) == 2
    assert "expected at least 2" in capsys.readouterr().err
    assert (
        edgefleet(
            "release", "--repo", repo, "--key", str(keys / "root1"), "--key", str(keys / "release1")
        )
        == 2
    )
    assert "is not a release key" in capsys.readouterr().err
    (keys / "release2").chmod(0o644)
    assert (
        edgefleet(
            "release",
            "--repo",
            repo,
            "--key",
            str(keys / "release1"),
            "--key",
            str(keys / "release2"),
        )
        == 2
    )
    assert "permissions 0644 are too open" in capsys.readouterr().err
    (keys / "release2").chmod(0o600)
    (fleet_repo / "fleet.yaml").write_text(
        (fleet_repo / "fleet.yaml").read_text().replace("60s", "60 s")
    )
    git_commit(git.Repo(fleet_repo), "break the fleet")
    assert (
        edgefleet(
            "release",
            "--repo",
            repo,
            "--key",
            str(keys / "release1"),
            "--key",
            str(keys / "release2"),
        )
        == 1
    )
    assert "fleet.yaml:7:" in capsys.readouterr().err
    assert not git.Repo(fleet_repo).tags


def test_verify_exits_3_on_a_refused_release(
    fleet_repo: Path, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        edgefleet(
            "release",
            "--repo",
            str(fleet_repo),
            "--key",
            str(keys / "release1"),
            "--key",
            str(keys / "release2"),
        )
        == 0
    )
    other = tmp_path / "other-root.json"
    for name in ("o1", "o2"):
        edgefleet("keys", "generate", "--out", str(tmp_path / name))
    assert (
        edgefleet(
            "trust",
            "init",
            "--out",
            str(other),
            "--fleet",
            "test-fleet",
            "--root-key",
            str(tmp_path / "o1.pub"),
            "--release-key",
            str(tmp_path / "o2.pub"),
            "--sign",
            str(tmp_path / "o1"),
        )
        == 0
    )
    capsys.readouterr()
    assert edgefleet("verify", "--repo", str(fleet_repo), "--trust", str(other)) == 3
    err = capsys.readouterr().err
    assert "signed by the old root's keys" in err or "valid signature" in err, err


def test_trust_rotate_through_the_command(
    fleet_repo: Path, keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edgefleet("keys", "generate", "--out", str(tmp_path / "new-root"))
    # Old threshold (root1, root2) and the new root's own threshold (new-root, root1).
    assert (
        edgefleet(
            "trust",
            "rotate",
            "--repo",
            str(fleet_repo),
            "--root-key",
            str(tmp_path / "new-root.pub"),
            "--root-key",
            str(keys / "root1.pub"),
            "--sign",
            str(keys / "root1"),
            "--sign",
            str(keys / "root2"),
            "--sign",
            str(tmp_path / "new-root"),
        )
        == 0
    )
    assert json.loads((fleet_repo / "trust" / "root.json").read_text())["signed"]["version"] == 2
    assert (fleet_repo / "trust" / "roots" / "2.json").exists()
    capsys.readouterr()
    # Signed by the old keys only: the new root's own threshold is missing.
    assert (
        edgefleet(
            "trust",
            "rotate",
            "--repo",
            str(fleet_repo),
            "--root-key",
            str(tmp_path / "new-root.pub"),
            "--root-threshold",
            "1",
            "--sign",
            str(keys / "root1"),
            "--sign",
            str(keys / "root2"),
        )
        == 3
    )
    assert "signed by" in capsys.readouterr().err
    assert json.loads((fleet_repo / "trust" / "root.json").read_text())["signed"]["version"] == 2


def test_validate_keeps_allowed_signers_in_step_with_the_root_and_nodes(
    fleet_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signers = fleet_repo / "trust" / "allowed_signers"
    assert edgefleet("validate", str(fleet_repo)) == 0
    assert "store-1@test-fleet" in signers.read_text()
    signers.write_text(
        signers.read_text() + 'mallory@test-fleet namespaces="git" ssh-ed25519 AAAA\n'
    )
    capsys.readouterr()
    assert edgefleet("validate", str(fleet_repo)) == 1
    assert "trust/allowed_signers:1: stale" in capsys.readouterr().out
    assert edgefleet("trust", "signers", "--repo", str(fleet_repo)) == 0
    assert edgefleet("validate", str(fleet_repo)) == 0
    signers.unlink()
    capsys.readouterr()
    assert edgefleet("validate", str(fleet_repo)) == 0
    assert "allowed_signers:1: warning: missing" in capsys.readouterr().out
