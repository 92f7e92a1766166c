"""The reference server (docs/deploy/reference-server.sh), for real: nginx, fcgiwrap,
`git http-backend`, TLS from a CA made by setup, one basic-auth credential per node, the
pre-receive hook, and the artifact store over HTTPS with range requests.

Each test sets up its own server on a free port in its own folder and stops it at the end.
A fleet is published to it by the operator's credential; nodes use their own. Refusals assert
git's exit code, the server's reason, and that no ref of the served repository moved.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.agent_testing import LiveFleet, NodeAgent
from tests.reference_server import ReferenceServer, reference_server
from tests.trust_testing import git_commit

EDGEFLEET = Path(sys.executable).parent / "edgefleet"
REFUSED = "edgefleet: refused"


def refs(git_dir: Path) -> dict[str, str]:
    out = subprocess.run(
        ["git", "--git-dir", str(git_dir), "for-each-ref", "--format=%(refname) %(objectname)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split(" ") for line in out.splitlines())


def publish(fleet: LiveFleet, server: ReferenceServer) -> int:
    """Release the fleet's desired state and push main and the tags as the operator, then give
    the nodes of the pushed nodes/ their credentials."""
    fleet.repo.remote("origin").set_url(server.git_url)
    operator = server.env("operator")
    with fleet.repo.git.custom_environment(
        GIT_CONFIG_GLOBAL=operator["GIT_CONFIG_GLOBAL"],
        GIT_SSL_CAINFO=str(server.ca),
        GIT_TERMINAL_PROMPT="0",
    ):
        version = fleet.publish()
    server.add_users()
    return version


def once(node: NodeAgent, server: ReferenceServer) -> tuple[int, dict[str, Any]]:
    """`edgefleet-agent once --json` with the node's own credential and the server's CA."""
    node.write_config(server.git_url, artifactSources=[server.artifacts_url])
    done = node.run("once", "--json", env=server.env(node.node))
    try:
        info: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise AssertionError(
            f"once printed no JSON (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
        ) from None
    info["_stderr"] = done.stderr
    return done.returncode, info


def git(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60, check=False
    )


@pytest.fixture
def fleet(tmp_path: Path) -> LiveFleet:
    fleet = LiveFleet(tmp_path)
    fleet.standard()
    return fleet


@pytest.fixture
def server(fleet: LiveFleet, tmp_path: Path) -> Iterator[ReferenceServer]:
    """A server set up from the fleet's still empty origin: only the operator has a
    credential until the first publish brings nodes/."""
    with reference_server(tmp_path, fleet.origin, fleet.store) as server:
        yield server


@pytest.fixture
def reported(fleet: LiveFleet, server: ReferenceServer) -> NodeAgent:
    """Release 1 on the server, and edge-1 converged on it and pushed its status."""
    publish(fleet, server)
    node = NodeAgent(fleet, "edge-1", server.git_url)
    code, info = once(node, server)
    assert code == 0, info["_stderr"]
    return node


def test_a_node_converges_over_the_reference_server_and_its_status_lands_there(
    fleet: LiveFleet, server: ReferenceServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (server.dir / "auth" / "htpasswd").read_text().count("\n") == 1  # the operator
    assert publish(fleet, server) == 1
    assert {"edge-1", "edge-2"} <= {
        line.split(":")[0] for line in (server.dir / "auth" / "htpasswd").read_text().splitlines()
    }
    node = NodeAgent(fleet, "edge-1", server.git_url)
    code, info = once(node, server)
    assert code == 0, info["_stderr"]
    assert info["state"] == "converged" and info["release"] == 1
    assert set(info["components"]) == {"model", "app", "settings"}
    events = [json.loads(ln) for ln in info["_stderr"].splitlines() if ln.startswith("{")]
    downloads = [e for e in events if e["event"] == "download.done"]
    assert downloads and all(e["source"].startswith(server.artifacts_url) for e in downloads)
    assert "status.pushed" in {e["event"] for e in events}

    # The signed status branch is on the server, and verifies there.
    local = refs(node.state / "repo")["refs/heads/status/edge-1"]
    assert refs(server.repo)["refs/heads/status/edge-1"] == local
    status = subprocess.run(
        [str(EDGEFLEET), "status", "--repo", str(server.repo), "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    shown = {n["node"]: n for n in json.loads(status.stdout)["nodes"]}
    assert shown["edge-1"]["shown"] == "converged", shown["edge-1"]
    assert shown["edge-1"]["head"] == local and shown["edge-1"]["problem"] is None

    # The node's git requests carry its user; its artifact downloads need none.
    log = server.access_log()
    by_node = [e for e in log if e["user"] == "edge-1"]
    assert {e["uri"].split("?")[0] for e in by_node} >= {
        "/git/fleet.git/info/refs",
        "/git/fleet.git/git-upload-pack",
        "/git/fleet.git/git-receive-pack",
    }
    assert all(e["status"] == 200 for e in by_node)
    artifacts = [e for e in log if e["uri"].startswith("/artifacts/")]
    assert artifacts and all(e["user"] is None and e["status"] in (200, 206) for e in artifacts)

    # Range requests, with the CA trusted the way the agent's httpx trusts it: SSL_CERT_FILE.
    data = fleet.artifacts["app@1.0.0"].data
    url = f"{server.artifacts_url}sha256/{fleet.artifacts['app@1.0.0'].digest}"
    monkeypatch.setenv("SSL_CERT_FILE", str(server.ca))
    with httpx.Client() as client:
        full = client.get(url)
        part = client.get(url, headers={"Range": "bytes=100-"})
    assert full.status_code == 200 and full.content == data
    assert full.headers["accept-ranges"] == "bytes"
    assert "immutable" in full.headers["cache-control"]
    assert part.status_code == 206, part.headers
    assert part.headers["content-range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    assert part.content == data[100:]
    path = f"/artifacts/sha256/{fleet.artifacts['app@1.0.0'].digest}"
    assert [e["status"] for e in server.access_log() if e["uri"] == path][-2:] == [200, 206]
    # The hook (a Python program) ran for each push; only a cgroup sees the CPU of git and of
    # what git starts (tests/reference_server.py says why).
    if server.cpu_accounting == "cgroup":
        assert server.cpu_seconds() > 0.1


def test_a_node_credential_is_refused_on_another_node_branch_and_on_main(
    fleet: LiveFleet, server: ReferenceServer, reported: NodeAgent
) -> None:
    env = server.env("edge-1")
    before = refs(server.repo)
    assert "refs/heads/status/edge-1" in before
    state = str(reported.state / "repo")

    # Its own signed status commit, onto edge-2's branch.
    done = git(
        "--git-dir", state, "push", server.git_url,
        "refs/heads/status/edge-1:refs/heads/status/edge-2", env=env,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    # Refused twice over: the branch is hidden from this node (receive.hideRefs), and the hook
    # refuses it, as it does on a server without that setting.
    assert "(deny updating a hidden ref)" in done.stderr
    assert (
        f"remote: {REFUSED} refs/heads/status/edge-2: node credential 'edge-1' may update only"
        " refs/heads/status/edge-1, got refs/heads/status/edge-2"
    ) in done.stderr
    assert refs(server.repo) == before

    # A change of the desired state, onto main.
    (fleet.path / "README.md").write_text("a node edits main\n")
    git_commit(fleet.repo, "node edits main")
    done = git("push", server.git_url, "HEAD:refs/heads/main", env=env, cwd=fleet.path)
    assert done.returncode == 1, done.stderr
    assert (
        f"remote: {REFUSED} refs/heads/main: node credential 'edge-1' may update only"
        " refs/heads/status/edge-1, got refs/heads/main"
    ) in done.stderr
    assert refs(server.repo) == before

    # Authenticated as itself every time: the refusals are the hook's, not the password's.
    pushes = [e for e in server.access_log() if e["uri"] == "/git/fleet.git/git-receive-pack"]
    assert [e["user"] for e in pushes[-2:]] == ["edge-1", "edge-1"]
    assert all(e["status"] == 200 for e in pushes)


def test_a_wrong_password_or_no_credential_gets_401_and_changes_nothing(
    fleet: LiveFleet, server: ReferenceServer, tmp_path: Path
) -> None:
    publish(fleet, server)
    git_commit(fleet.repo, "a branch the operator may push")
    push = ("push", server.git_url, "HEAD:refs/heads/scratch")
    before = refs(server.repo)

    # Copies of the operator's configuration: one whose stored password is wrong, one that
    # trusts the CA but holds no credential at all.
    real = (server.dir / "auth" / "operator.credentials").read_text()
    password = real.split(":")[2].split("@")[0]
    wrong = tmp_path / "wrong.credentials"
    wrong.write_text(real.replace(password, "0" * len(password)))
    own = str(server.dir / "auth" / "operator.credentials")
    cases = [
        (
            "wrong-password",
            server.gitconfig("operator").read_text().replace(own, str(wrong)),
            "Authentication failed",
            {"operator", None},  # git's first request of each command carries no credential
        ),
        (
            "no-credential",
            f"[http]\n\tsslCAInfo = {server.ca}\n",
            "could not read Username",
            {None},
        ),
    ]
    for case, text, message, users in cases:
        gitconfig = tmp_path / f"{case}.gitconfig"
        gitconfig.write_text(text)
        env = {**server.env("operator"), "GIT_CONFIG_GLOBAL": str(gitconfig), "GIT_ASKPASS": ""}
        env.pop("SSH_ASKPASS", None)
        logged = len(server.access_log())
        done = git(*push, env=env, cwd=fleet.path)
        assert done.returncode == 128 and message in done.stderr, (case, done.stderr)
        assert refs(server.repo) == before, case
        new = server.access_log()[logged:]
        assert new and all(e["status"] == 401 for e in new), (case, new)
        assert {e["user"] for e in new} == users, (case, new)

    # The same without git: a Basic challenge, and 401 for a wrong password.
    url = f"{server.git_url}/info/refs?service=git-receive-pack"
    with httpx.Client(verify=ssl.create_default_context(cafile=str(server.ca))) as client:
        anonymous = client.get(url)
        guessed = client.get(url, auth=("operator", "0" * len(password)))
        right = client.get(url, auth=("operator", password))
    assert anonymous.status_code == 401 and guessed.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Basic realm="EdgeFleet fleet repository"'
    assert right.status_code == 200
    assert refs(server.repo) == before

    # With the right password the same push goes through: the password was all that differed.
    done = git(*push, env=server.env("operator"), cwd=fleet.path)
    assert done.returncode == 0, done.stderr
    assert refs(server.repo)["refs/heads/scratch"] == fleet.repo.head.commit.hexsha


def test_setup_refuses_a_used_folder_and_the_scripts_errors_are_one_line(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parent.parent / "docs" / "deploy" / "reference-server.sh"
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    env = {**os.environ, "PATH": f"{EDGEFLEET.parent}:{os.environ['PATH']}"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env)

    done = run("setup", "--dir", str(tmp_path / "used"), "--fleet", str(tmp_path))
    assert done.returncode == 1
    assert (
        done.stderr.count("\n") == 1
        and "expected --dir to be absent or an empty folder" in done.stderr
    )
    done = run("setup", "--dir", str(tmp_path / "new"))
    assert done.returncode == 2 and "expected --fleet" in done.stderr
    done = run("start", str(tmp_path / "used"))
    assert done.returncode == 1 and "made by 'reference-server.sh setup'" in done.stderr


def test_a_node_with_a_wrong_password_says_its_credential_was_refused_and_keeps_running(
    fleet: LiveFleet, server: ReferenceServer, reported: NodeAgent, tmp_path: Path
) -> None:
    before = reported.snapshot()
    server_refs = refs(server.repo)
    creds = server.dir / "auth" / "edge-1.credentials"
    real = creds.read_text()
    password = real.split(":")[2].split("@")[0]
    wrong = tmp_path / "edge-1.credentials"
    wrong.write_text(real.replace(password, "0" * len(password)))
    gitconfig = tmp_path / "edge-1.gitconfig"
    gitconfig.write_text(server.gitconfig("edge-1").read_text().replace(str(creds), str(wrong)))
    env = {**server.env("edge-1"), "GIT_CONFIG_GLOBAL": str(gitconfig)}
    done = reported.run("once", "--json", env=env)
    assert done.returncode == 75, done.stderr
    info = json.loads(done.stdout)
    assert info["state"] == "offline"
    assert "the origin refused this node's credential" in info["lastError"]["reason"]
    assert reported.snapshot() == {**before}, "a refused credential changes nothing it runs"
    assert refs(server.repo) == server_refs


def advertised(server: ReferenceServer, user: str) -> set[str]:
    """The refs the server lists to `user` before a push (git's receive-pack advertisement)."""
    line = (server.dir / "auth" / f"{user}.credentials").read_text().strip()
    password = line.split(":")[2].split("@")[0]
    url = f"{server.git_url}/info/refs?service=git-receive-pack"
    with httpx.Client(verify=ssl.create_default_context(cafile=str(server.ca))) as client:
        body = client.get(url, auth=(user, password)).content
    found = set()
    while body:
        size = int(body[:4], 16)
        if size >= 4 and body[4:size]:
            words = body[4:size].split(b"\0")[0].split()
            if len(words) == 2 and words[1].startswith(b"refs/"):
                found.add(words[1].decode())
        body = body[max(size, 4) :]
    return found


def test_a_node_is_shown_only_its_own_status_branch_before_a_push(
    fleet: LiveFleet, server: ReferenceServer, reported: NodeAgent
) -> None:
    """Git lists every ref before a push; with a branch per node that would grow with the
    fleet, so a node sees only its own, and the operator (who lands carried status) all."""
    other = NodeAgent(fleet, "edge-2", server.git_url)
    code, info = once(other, server)
    assert code == 0, info["_stderr"]
    every = set(refs(server.repo))
    assert {"refs/heads/status/edge-1", "refs/heads/status/edge-2"} <= every
    assert advertised(server, "operator") == every
    shown = advertised(server, "edge-1")
    assert "refs/heads/status/edge-1" in shown and "refs/heads/main" in shown
    assert not {r for r in shown if r.startswith("refs/heads/status/")} - {
        "refs/heads/status/edge-1"
    }
    # Its next status still lands: the push updates the one branch it sees.
    fleet.config_file("1.1.0", "threshold = 3\n")
    fleet.use("settings", "settings@1.1.0")
    publish(fleet, server)
    code, info = once(reported, server)
    assert code == 0 and info["release"] == 2, info["_stderr"]
    assert (
        refs(server.repo)["refs/heads/status/edge-1"]
        == refs(reported.state / "repo")["refs/heads/status/edge-1"]
    )
