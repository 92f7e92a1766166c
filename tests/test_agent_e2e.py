"""The node agent end to end: the real `edgefleet-agent` against real origins and artifact servers.

Each test builds a fleet with real keys, real ONNX models and real archives, publishes signed
releases to a bare origin (and over `git daemon` for the network path), and runs the agent's
command line. Refusals assert the exit code, the reason, and that the node's state is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import resource
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent_testing import AGENT, LiveFleet, NodeAgent, git_daemon, tar_bytes
from tests.artifact_server import ArtifactServer


@pytest.fixture
def fleet(tmp_path: Path) -> LiveFleet:
    return LiveFleet(tmp_path)


@pytest.fixture
def installed(fleet: LiveFleet) -> NodeAgent:
    """A node that converged on release 1 (model, app, settings)."""
    fleet.standard()
    fleet.publish()
    node = NodeAgent(fleet, "edge-1")
    code, info = node.once()
    assert code == 0, info
    return node


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def activations(node: NodeAgent) -> list[str]:
    path = node.state / "components" / "app" / "activations"
    return path.read_text().splitlines() if path.exists() else []


def test_first_install(fleet: LiveFleet) -> None:
    fleet.standard()
    fleet.publish()
    node = NodeAgent(fleet, "edge-1")
    code, info = node.once()
    assert code == 0, info["_stderr"]
    assert info["state"] == "converged" and info["release"] == 1
    assert info["commit"] == fleet.repo.head.commit.hexsha
    assert set(info["components"]) == {"model", "app", "settings"}
    for name, comp in info["components"].items():
        assert comp["bank"] == "a" and comp["health"] == "ok", name
        assert comp["sha256"] == fleet.artifacts[comp["artifact"]].digest
    assert file_sha(node.bank_file("model", "model.onnx")) == fleet.artifacts["model@1.0.0"].digest
    assert (node.bank_file("app", "bin/selftest")).read_text().startswith("#!/bin/sh")
    assert node.current("app").is_symlink() and str(node.current("app").readlink()) == "a"
    assert info["transfer"]["bytes"] == info["transfer"]["fullBytes"] > 0
    assert info["lastError"] is None
    assert [c["kind"] for c in info["checks"]] == ["onnx", "hook", "exec"] or {
        c["kind"] for c in info["checks"]
    } == {"onnx", "hook", "exec"}
    assert activations(node) == ["activated"]
    assert node.journal()["pollInterval"] == 60  # the fleet's spec.pollInterval, signed
    status = node.run("status", "--json")
    assert status.returncode == 0
    metrics = (node.state / "metrics.prom").read_text()
    assert "edgefleet_agent_applied_release 1" in metrics
    assert 'edgefleet_agent_state{state="converged"} 1' in metrics
    assert "edgefleet_agent_health_check_duration_seconds{" in metrics
    # Logs are JSON lines, one event per step, each naming the node.
    events = [json.loads(line) for line in info["_stderr"].splitlines() if line.startswith("{")]
    assert {"verify.accepted", "stage.done", "switch.done", "commit.done"} <= {
        e["event"] for e in events
    }
    assert all(e["node"] == "edge-1" for e in events)


def test_a_second_cycle_with_nothing_new_changes_nothing(installed: NodeAgent) -> None:
    before = installed.snapshot()
    code, info = installed.once()
    assert code == 0 and info["state"] == "converged"
    assert installed.snapshot() == before
    assert activations(installed) == ["activated"]


def test_an_update_of_one_component_leaves_the_others_untouched(
    fleet: LiveFleet, installed: NodeAgent
) -> None:
    before = installed.snapshot()
    fleet.config_file("1.1.0", "threshold = 7\n")
    fleet.use("settings", "settings@1.1.0")
    fleet.publish()
    code, info = installed.once()
    assert code == 0, info["_stderr"]
    assert info["release"] == 2 and info["components"]["settings"]["bank"] == "b"
    after = installed.snapshot()
    for name in ("model", "app"):
        assert after["links"][name] == before["links"][name]
        untouched = {k: v for k, v in before["files"].items() if k.startswith(f"{name}/")}
        assert untouched and all(after["files"][k] == v for k, v in untouched.items()), name
    assert installed.bank_file("settings", "settings.conf").read_text() == "threshold = 7\n"
    assert activations(installed) == ["activated"]  # the app's hook did not run again
    assert info["transfer"]["fullBytes"] == len(b"threshold = 7\n")


def test_a_failing_exec_check_rolls_back_everything(fleet: LiveFleet, installed: NodeAgent) -> None:
    fleet.model("1.1.0", bias=0.5 + 1e-6)  # new bytes, still healthy
    fleet.app("1.1.0", healthy=False)
    fleet.use("model", "model@1.1.0", health=[fleet.onnx_check()])
    fleet.use(
        "app",
        "app@1.1.0",
        health=[{"exec": {"argv": ["sh", "bin/selftest"], "timeoutSeconds": 10}}],
        hooks={"activate": ["sh", "-c", "echo activated >> ../activations"]},
    )
    fleet.publish()
    code, info = installed.once()
    assert code == 1, info["_stderr"]
    assert info["state"] == "rolled-back" and info["release"] == 1
    assert "app" in info["lastError"]["reason"] and "exit 4" in info["lastError"]["reason"]
    assert info["lastError"]["release"] == 2
    for name in ("model", "app"):
        assert str(installed.current(name).readlink()) == "a", name
    assert (
        file_sha(installed.bank_file("model", "model.onnx"))
        == fleet.artifacts["model@1.0.0"].digest
    )
    assert "2" in installed.journal()["failed"]
    # activated by 1, by the trial of 2, then again on the old bank after the rollback
    assert activations(installed) == ["activated"] * 3
    # the banks that run again are the healthy ones of release 1
    assert {c["health"] for c in info["components"].values()} == {"ok"}


def test_a_failing_onnx_check_rolls_back_everything(fleet: LiveFleet, installed: NodeAgent) -> None:
    fleet.model("1.1.0", bias=1.5)  # a broken model: off by one everywhere
    fleet.app("1.1.0")
    fleet.use("model", "model@1.1.0", health=[fleet.onnx_check()])
    fleet.use(
        "app",
        "app@1.1.0",
        health=[{"exec": {"argv": ["sh", "bin/selftest"], "timeoutSeconds": 10}}],
    )
    fleet.publish()
    code, info = installed.once()
    assert code == 1, info["_stderr"]
    assert "model" in info["lastError"]["reason"] and "max |diff|" in info["lastError"]["reason"]
    assert str(installed.current("model").readlink()) == "a"
    assert str(installed.current("app").readlink()) == "a"
    assert info["components"]["app"]["artifact"] == "app@1.0.0"


def test_a_failed_release_is_not_retried_and_a_newer_one_is_applied(
    fleet: LiveFleet, installed: NodeAgent
) -> None:
    fleet.model("1.1.0", bias=1.5)
    fleet.use("model", "model@1.1.0", health=[fleet.onnx_check()])
    fleet.publish()
    assert installed.once()[0] == 1
    before = installed.snapshot()
    code, info = installed.once()
    assert code == 0 and info["state"] == "rolled-back" and info["release"] == 1
    assert installed.snapshot() == before
    fleet.model("1.2.0", bias=0.5 - 1e-6)
    fleet.use("model", "model@1.2.0", health=[fleet.onnx_check()])
    fleet.publish()
    code, info = installed.once()
    assert code == 0, info["_stderr"]
    assert info["release"] == 3 and info["state"] == "converged"
    assert info["components"]["model"]["artifact"] == "model@1.2.0"
    assert info["failedReleases"] == {"2": info["failedReleases"]["2"]}


def test_a_download_interrupted_is_resumed(fleet: LiveFleet, tmp_path: Path) -> None:
    with ArtifactServer() as server:
        big = fleet.app("1.0.0", padding=3_000_000)
        fleet.config_file("1.0.0", "x = 1\n")
        fleet.use("app", "app@1.0.0")
        fleet.use("settings", "settings@1.0.0")
        path = f"sha256/{big.digest}"
        server.add(path, big.data)
        server.add(
            f"sha256/{fleet.artifacts['settings@1.0.0'].digest}",
            fleet.artifacts["settings@1.0.0"].data,
        )
        server.drop(path, after=1_000_000, times=1)
        fleet.sources = [server.url]
        fleet.publish()
        node = NodeAgent(fleet, "edge-1")
        before = node.snapshot() if node.state.exists() else None
        code, info = node.once()
        assert code == 75, info["_stderr"]
        assert info["state"] == "deferred" and info["release"] is None
        assert before is None or node.snapshot()["links"] == {}
        code, info = node.once()
        assert code == 0, info["_stderr"]
        ranges = [r.range for r in server.requests_for(path) if r.range]
        assert ranges and int(ranges[-1].split("=")[1].split("-")[0]) >= 1_000_000
        assert info["transfer"]["bytes"] < len(big.data)
        assert (
            file_sha(node.bank_file("app", "share/app/data.bin"))
            == hashlib.sha256(bytes(range(256)) * 4 + b"x" * 3_000_000).hexdigest()
        )


def test_a_wrong_digest_at_the_first_source_and_the_right_bytes_at_the_second(
    fleet: LiveFleet,
) -> None:
    with ArtifactServer() as server:
        fleet.standard()
        for artifact in fleet.artifacts.values():
            server.add(f"sha256/{artifact.digest}", artifact.data[::-1] + b"!")
        fleet.sources = [server.url, fleet.store.as_uri() + "/"]
        fleet.publish()
        node = NodeAgent(fleet, "edge-1")
        code, info = node.once()
        assert code == 0, info["_stderr"]
        assert "download.source_failed" in info["_stderr"]
        assert (
            file_sha(node.bank_file("model", "model.onnx")) == fleet.artifacts["model@1.0.0"].digest
        )


def test_an_archive_with_dotdot_is_rejected(fleet: LiveFleet, installed: NodeAgent) -> None:
    before = installed.snapshot()
    evil = tar_bytes({"bin/selftest": "#!/bin/sh\nexit 0\n", "../../evil": "owned\n"})
    fleet.add_artifact("app@6.6.6", evil, "app.tar", "tar")
    fleet.use("app", "app@6.6.6")
    fleet.publish()
    code, info = installed.once()
    assert code == 3, info["_stderr"]
    assert info["state"] == "rejected" and "../../evil" in info["lastError"]["reason"]
    assert not (installed.state / "components" / "evil").exists()
    assert not (installed.state / "evil").exists()
    after = installed.snapshot()
    assert after["links"] == before["links"] and after["release"] == before["release"]
    assert {k: v for k, v in after["files"].items() if "/a/" in k} == {
        k: v for k, v in before["files"].items() if "/a/" in k
    }
    assert "2" in installed.journal()["failed"]


def test_an_unreachable_origin_keeps_the_node_running(
    fleet: LiveFleet, installed: NodeAgent
) -> None:
    before = installed.snapshot()
    installed.write_config("git://127.0.0.1:9/nowhere.git")
    code, info = installed.once()
    assert code == 75, info["_stderr"]
    assert info["state"] == "offline" and info["release"] == 1
    assert "got no answer from the origin" in info["lastError"]["reason"]
    assert installed.snapshot() == before
    installed.write_config(str(fleet.origin))
    code, info = installed.once()
    assert code == 0 and info["state"] == "converged" and info["lastError"] is None


def test_a_refused_newest_release_is_reported_and_the_newest_valid_one_applied(
    fleet: LiveFleet,
) -> None:
    fleet.standard()
    fleet.publish()
    fleet.config_file("1.1.0", "threshold = 2\n")
    fleet.use("settings", "settings@1.1.0")
    fleet.write()
    from tests.trust_testing import git_commit

    git_commit(fleet.repo, "unsigned change")
    fleet.release(signers=fleet.keys.release[:1])  # one short of the threshold
    fleet.push()
    node = NodeAgent(fleet, "edge-1")
    code, info = node.once()
    assert code == 3, info["_stderr"]
    assert info["release"] == 1 and info["state"] == "rejected"
    assert info["lastError"]["release"] == 2 and info["lastError"]["rule"] == "threshold"
    assert info["components"]["settings"]["artifact"] == "settings@1.0.0"


@pytest.fixture
def daemon_url(fleet: LiveFleet) -> Iterator[str]:
    with git_daemon(fleet.origin.parent) as port:
        yield f"git://127.0.0.1:{port}/{fleet.origin.name}"


def test_over_git_daemon_on_loopback(fleet: LiveFleet, daemon_url: str) -> None:
    fleet.standard()
    fleet.publish()
    node = NodeAgent(fleet, "edge-1", repo_url=daemon_url)
    code, info = node.once()
    assert code == 0, info["_stderr"]
    assert info["release"] == 1
    fleet.config_file("1.1.0", "threshold = 3\n")
    fleet.use("settings", "settings@1.1.0")
    fleet.publish()
    code, info = node.once()
    assert code == 0 and info["release"] == 2
    # Only release tags were fetched, at depth one; the one branch is the node's own status,
    # queued: this git daemon does not take pushes.
    refs = subprocess.run(
        ["git", "-C", str(node.state / "repo"), "for-each-ref", "--format=%(refname)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {r for r in refs if not r.startswith("refs/tags/release/")} == {
        "refs/heads/status/edge-1"
    }
    assert "status.push_refused" in info["_stderr"] or "status.push_failed" in info["_stderr"]
    assert (node.state / "repo" / "shallow").exists()


def test_run_converges_and_stops_on_sigterm(fleet: LiveFleet) -> None:
    fleet.standard()
    fleet.publish()
    node = NodeAgent(fleet, "edge-1")
    node.write_config(str(fleet.origin), pollInterval="1s")
    proc = subprocess.Popen(
        [str(AGENT), "run", "--config", str(node.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (node.state / "state.json").exists() and node.journal().get("release") == 1:
                break
            time.sleep(0.2)
        assert node.journal()["release"] == 1
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "agent.stopped" in err


def test_status_reads_the_journal_without_the_origin(installed: NodeAgent) -> None:
    installed.write_config("git://127.0.0.1:9/nowhere.git")
    done = installed.run("status")
    assert done.returncode == 0
    assert "node edge-1: converged, release 1" in done.stdout
    assert "app: app@1.0.0 in bank a, health ok" in done.stdout


def test_a_removed_component_is_switched_off_and_its_banks_deleted(
    fleet: LiveFleet, installed: NodeAgent
) -> None:
    before = installed.snapshot()
    fleet.use("settings", None)
    fleet.publish()
    code, info = installed.once()
    assert code == 0, info["_stderr"]
    assert set(info["components"]) == {"model", "app"}
    assert not (installed.state / "components" / "settings").exists()
    after = installed.snapshot()
    assert {k: v for k, v in after["files"].items() if not k.startswith("settings/")} == {
        k: v for k, v in before["files"].items() if not k.startswith("settings/")
    }


def test_a_component_added_by_a_failing_release_leaves_no_trace(
    fleet: LiveFleet, installed: NodeAgent
) -> None:
    before = installed.snapshot()
    fleet.app("9.0.0", healthy=False)
    fleet.use(
        "extra",
        "app@9.0.0",
        health=[{"exec": {"argv": ["sh", "bin/selftest"], "timeoutSeconds": 10}}],
    )
    fleet.publish()
    code, info = installed.once()
    assert code == 1, info["_stderr"]
    assert "extra" not in info["components"]
    assert not (installed.state / "components" / "extra").exists()
    after = installed.snapshot()
    assert after["links"] == before["links"] and after["files"] == before["files"]


def test_a_file_url_origin(fleet: LiveFleet) -> None:
    fleet.standard()
    fleet.publish()
    node = NodeAgent(fleet, "edge-2", repo_url=fleet.origin.as_uri())
    code, info = node.once()
    assert code == 0, info["_stderr"]
    assert info["node"] == "edge-2" and info["release"] == 1


def test_a_release_for_a_wave_the_node_is_not_in_is_left_alone(
    fleet: LiveFleet, installed: NodeAgent
) -> None:
    before = installed.snapshot()
    fleet.config_file("2.0.0", "threshold = canary\n")
    fleet.use("settings", "settings@2.0.0")
    fleet.publish(wave="canary")  # fleet.yaml: canary = nodes labelled ring: canary
    code, info = installed.once()
    assert code == 0, info["_stderr"]
    assert info["release"] == 1 and info["state"] == "converged"
    assert installed.snapshot() == before
    assert '"decide.not_in_wave"' in info["_stderr"]
    fleet.publish()  # the same state for every node
    code, info = installed.once()
    assert code == 0 and info["release"] == 3
    assert info["components"]["settings"]["artifact"] == "settings@2.0.0"


def test_a_rolled_back_node_that_goes_offline_comes_back_rolled_back(
    fleet: LiveFleet, installed: NodeAgent
) -> None:
    fleet.model("1.1.0", bias=1.5)
    fleet.use("model", "model@1.1.0", health=[fleet.onnx_check()])
    fleet.publish()
    assert installed.once()[0] == 1
    installed.write_config("git://127.0.0.1:9/nowhere.git")
    assert installed.once()[0] == 75
    installed.write_config(str(fleet.origin))
    code, info = installed.once()
    assert code == 0 and info["state"] == "rolled-back" and info["release"] == 1
    assert info["lastError"]["release"] == 2 and "max |diff|" in info["lastError"]["reason"]


def test_a_full_disk_while_staging_defers_the_update_and_keeps_the_node_running(
    fleet: LiveFleet, installed: NodeAgent
) -> None:
    before = installed.snapshot()
    big = fleet.app("2.0.0", padding=2_000_000)
    fleet.use("app", "app@2.0.0")
    fleet.publish()
    # The bytes are already in the cache, so the disk fills while writing the bank itself.
    cache = installed.state / "cache"
    cache.mkdir(exist_ok=True)
    (cache / big.digest).write_bytes(big.data)
    limit = 1_000_000

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [str(AGENT), "once", "--json", "--config", str(installed.config)],
        capture_output=True,
        text=True,
        preexec_fn=small_disk,
        timeout=120,
    )
    info = json.loads(done.stdout)
    assert done.returncode == 75, done.stderr
    assert info["state"] == "deferred" and "disk" in info["lastError"]["reason"]
    assert info["transaction"] is None and info["release"] == 1
    after = installed.snapshot()
    assert after["links"] == before["links"]
    assert {k: v for k, v in after["files"].items() if k.startswith("app/a/")} == {
        k: v for k, v in before["files"].items() if k.startswith("app/a/")
    }
    code, info = installed.once()
    assert code == 0 and info["release"] == 2, info["_stderr"]


def test_a_key_revoked_by_a_newer_root_is_refused_even_where_that_root_is_missing(
    fleet: LiveFleet, installed: NodeAgent
) -> None:
    keys = fleet.keys
    before_rotation = fleet.repo.head.commit.hexsha  # carries root version 1 only
    # Root 2 drops release1 (say its laptop was stolen): signed by the old and new root keys.
    fleet.write_root(keys.root, 2, keys.release[1:], 2, keys.root[:2])
    fleet.config_file("1.1.0", "threshold = 5\n")
    fleet.use("settings", "settings@1.1.0")
    fleet.publish(signers=keys.release[1:3])
    # The thief signs an old commit, whose tree knows nothing of root 2, with release1 and
    # release2: enough under root 1.
    fleet.release(signers=keys.release[:2], commit=before_rotation)
    fleet.push()
    code, info = installed.once()
    assert code == 3, info["_stderr"]
    assert info["lastError"]["release"] == 3 and info["lastError"]["rule"] == "threshold"
    assert info["release"] == 2 and info["trustedRootVersion"] == 2
    assert info["components"]["settings"]["artifact"] == "settings@1.1.0"
