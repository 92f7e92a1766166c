"""A live fleet for the agent's end-to-end tests: a real origin, real artifacts, real agents.

`LiveFleet` keeps a working clone of a fleet repository with a signed trust root, pushes each
release tag to a bare origin on disk (served over `git daemon` when a test asks), and stores
artifacts by content in a folder that a real HTTP server (tests/artifact_server.py) or a
file:// source serves. `NodeAgent` writes an agent configuration and runs the real
`edgefleet-agent` command line against it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from reconciler.keys import SigningKey
from reconciler.release import unverified_payload
from tests.onnx_models import affine_golden, affine_model, npy_bytes, sample_input
from tests.trust_testing import FleetRepository, git_commit

FLEET_NAME = "test-fleet"
AGENT = Path(sys.executable).parent / "edgefleet-agent"
GOLDEN_X = sample_input(8, 4, seed=1)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tar_bytes(files: dict[str, bytes | str], modes: dict[str, int] | None = None) -> bytes:
    """A deterministic tar archive (plain, uncompressed) of `files`."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = (modes or {}).get(name, 0o755 if name.startswith("bin/") else 0o644)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def app_archive(version: str, healthy: bool = True, padding: int = 0) -> bytes:
    """A small application: a self-test script that passes (or fails) and its config."""
    return tar_bytes(
        {
            "bin/selftest": f"#!/bin/sh\necho app {version}\nexit {0 if healthy else 4}\n",
            "etc/app.conf": f"version = {version}\n",
            "share/app/data.bin": bytes(range(256)) * 4 + b"x" * padding,
        }
    )


@dataclass
class Artifact:
    ref: str
    data: bytes
    file: str
    unpack: str = "none"
    deltas: list[dict[str, Any]] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return sha256(self.data)

    def entry(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "sha256": self.digest,
            "size": len(self.data),
            "url": f"sha256/{self.digest}",
            "unpack": self.unpack,
            **({"deltas": self.deltas} if self.deltas else {}),
        }


class LiveFleet(FleetRepository):
    """A fleet whose components are an ONNX model, an application archive and a config file."""

    CHAINED = True

    def __init__(self, base: Path, nodes: tuple[str, ...] = ("edge-1", "edge-2")) -> None:
        self.base = base
        self.store = base / "store"
        (self.store / "sha256").mkdir(parents=True)
        super().__init__(base / "fleet")
        self.origin = base / "origin.git"
        subprocess.run(
            ["git", "init", "-q", "--bare", str(self.origin)], check=True, capture_output=True
        )
        # Nodes fetch partially (`--filter=blob:none`), as from a real server that allows it.
        subprocess.run(
            ["git", "-C", str(self.origin), "config", "uploadpack.allowFilter", "true"],
            check=True,
        )
        self.repo.create_remote("origin", str(self.origin))
        self.sources = [self.store.as_uri() + "/"]
        self.artifacts: dict[str, Artifact] = {}
        self.node_keys = {n: SigningKey.generate(n) for n in nodes}
        self.components: dict[str, Any] = {}
        for path in ("groups", "nodes", "golden"):
            for old in (self.path / path).glob("*"):
                old.unlink()
        (self.path / "golden" / "in.npy").write_bytes(npy_bytes(GOLDEN_X))
        for node, key in self.node_keys.items():
            (self.path / "nodes" / f"{node}.yaml").write_text(
                yaml.safe_dump(
                    {
                        "apiVersion": "edgefleet/v1",
                        "kind": "Node",
                        "metadata": {"name": node, "labels": {"tier": "store"}},
                        "spec": {"identity": key.public.openssh()},
                    }
                )
            )

    # --- content -----------------------------------------------------------------------

    def add_artifact(self, ref: str, data: bytes, file: str, unpack: str = "none") -> Artifact:
        artifact = Artifact(ref, data, file, unpack)
        self.artifacts[ref] = artifact
        (self.store / "sha256" / artifact.digest).write_bytes(data)
        return artifact

    def add_delta(
        self, ref: str, base_ref: str, patch: bytes | None = None, size: int | None = None
    ) -> dict[str, Any]:
        """Offer a patch from `base_ref` to `ref` in the catalog (made with the real
        `make_patch` unless given), stored by content like an artifact."""
        from reconciler.deltas import make_patch

        target, base = self.artifacts[ref], self.artifacts[base_ref]
        made = make_patch(base.data, target.data)
        data = made.data if patch is None else patch
        digest = sha256(data)
        (self.store / "sha256" / digest).write_bytes(data)
        entry = {
            "from": base.digest,
            "format": made.format,
            "sha256": digest,
            "size": len(data) if size is None else size,
            "url": f"sha256/{digest}",
        }
        target.deltas.append(entry)
        return entry

    def model(self, version: str, bias: float = 0.5) -> Artifact:
        """An ONNX model y = 2x + bias; the golden output always expects bias 0.5."""
        return self.add_artifact(f"model@{version}", affine_model(2.0, bias), "model.onnx", "none")

    def app(self, version: str, healthy: bool = True, padding: int = 0) -> Artifact:
        return self.add_artifact(
            f"app@{version}", app_archive(version, healthy, padding), "app.tar", "tar"
        )

    def config_file(self, version: str, text: str) -> Artifact:
        return self.add_artifact(f"settings@{version}", text.encode(), "settings.conf")

    def use(self, component: str, ref: str | None, **extra: Any) -> None:
        """Set (or with None remove) a component of every node's desired state."""
        if ref is None:
            self.components.pop(component, None)
            return
        self.components[component] = {"artifact": ref, **extra}

    def standard(self, model_bias: float = 0.5, app_healthy: bool = True, v: str = "1.0.0") -> None:
        """The usual three components, each with the health checks a real fleet would use."""
        self.model(v, model_bias)
        self.app(v, app_healthy)
        self.config_file(v, f"threshold = {v}\n")
        self.use("model", f"model@{v}", health=[self.onnx_check()])
        self.use(
            "app",
            f"app@{v}",
            health=[{"exec": {"argv": ["sh", "bin/selftest"], "timeoutSeconds": 10}}],
            hooks={"activate": ["sh", "-c", "echo activated >> ../activations"]},
        )
        self.use("settings", f"settings@{v}")

    @staticmethod
    def onnx_check(**extra: Any) -> dict[str, Any]:
        return {
            "onnx": {
                "input": "golden/in.npy",
                "expected": "golden/out.npy",
                "atol": 1.0e-4,
                **extra,
            }
        }

    def write(self) -> None:
        expected = affine_golden(GOLDEN_X, 2.0, 0.5).astype(np.float32)
        (self.path / "golden" / "out.npy").write_bytes(npy_bytes(expected))
        fleet = yaml.safe_load((self.path / "fleet.yaml").read_text())
        fleet["spec"]["artifactSources"] = self.sources
        fleet["spec"]["components"] = {}
        (self.path / "fleet.yaml").write_text(yaml.safe_dump(fleet, sort_keys=False))
        catalog = {
            "apiVersion": "edgefleet/v1",
            "kind": "ArtifactCatalog",
            "metadata": {"name": FLEET_NAME},
            "spec": {"artifacts": {r: a.entry() for r, a in sorted(self.artifacts.items())}},
        }
        (self.path / "artifacts.yaml").write_text(yaml.safe_dump(catalog, sort_keys=False))
        group = {
            "apiVersion": "edgefleet/v1",
            "kind": "Group",
            "metadata": {"name": "stores"},
            "spec": {
                "priority": 10,
                "selector": {"matchLabels": {"tier": "store"}},
                "components": self.components,
            },
        }
        (self.path / "groups" / "stores.yaml").write_text(yaml.safe_dump(group, sort_keys=False))
        from reconciler.commands.trust import write_signers
        from reconciler.trust_root import parse_root

        write_signers(self.path, parse_root((self.path / "trust" / "root.json").read_bytes()))

    def publish(self, **payload: Any) -> int:
        """Commit the desired state, sign it as the next release, push the tag to the origin."""
        self.write()
        git_commit(self.repo, "desired state")
        envelope = self.release(**payload)
        version: int = unverified_payload(envelope)["version"]
        self.push()
        return version

    def push(self) -> None:
        self.repo.git.push("-q", "--force", "origin", "HEAD:refs/heads/main", "--tags")


class NodeAgent:
    """One node: its configuration, state directory and the real `edgefleet-agent` command."""

    def __init__(self, fleet: LiveFleet, node: str, repo_url: str | None = None) -> None:
        self.fleet = fleet
        self.node = node
        self.dir = fleet.base / "nodes" / node
        self.state = self.dir / "state"
        self.dir.mkdir(parents=True, exist_ok=True)
        pinned = self.dir / "root.json"
        pinned.write_bytes(fleet.pinned_root())
        key = self.dir / "node_ed25519"
        key.write_bytes(fleet.node_keys[node].openssh_private())
        key.chmod(0o600)
        self.config = self.dir / "agent.yaml"
        self.write_config(repo_url or str(fleet.origin))

    def write_config(self, repo: str, **extra: Any) -> None:
        config = {
            "node": self.node,
            "repo": repo,
            "trustRoot": str(self.dir / "root.json"),
            "stateDir": str(self.state),
            "identityKey": str(self.dir / "node_ed25519"),
            **extra,
        }
        self.config.write_text(yaml.safe_dump(config))

    def run(
        self, *args: str, timeout: float = 120, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
        return subprocess.run(
            [str(AGENT), *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )

    def once(self) -> tuple[int, dict[str, Any]]:
        done = self.run("once", "--json")
        try:
            info = json.loads(done.stdout)
        except json.JSONDecodeError:
            raise AssertionError(
                f"once printed no JSON (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
            ) from None
        info["_stderr"] = done.stderr
        return done.returncode, info

    def journal(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state / "state.json").read_text())
        return data

    def current(self, component: str) -> Path:
        return self.state / "components" / component / "current"

    def bank_file(self, component: str, name: str) -> Path:
        return self.current(component).resolve() / name

    def snapshot(self) -> dict[str, Any]:
        """Everything a rejected update must leave alone: journal floor, links, bank files."""
        journal = self.journal() if (self.state / "state.json").exists() else {}
        links = {}
        files = {}
        comps = self.state / "components"
        if comps.is_dir():
            for comp in sorted(comps.iterdir()):
                link = comp / "current"
                links[comp.name] = str(link.readlink()) if link.is_symlink() else None
                for f in sorted(comp.rglob("*")):
                    if f.is_file() and not f.is_symlink():
                        st = f.stat()
                        files[str(f.relative_to(comps))] = (st.st_ino, st.st_mtime_ns)
        return {
            "release": journal.get("release"),
            "accepted": journal.get("acceptedVersion"),
            "components": journal.get("components"),
            "links": links,
            "files": files,
        }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def daemon_command(base: Path, port: int, *extra: str) -> list[str]:
    """`git daemon` exporting every repository under `base` on 127.0.0.1:`port` only."""
    return [
        "git",
        "daemon",
        "--reuseaddr",
        "--export-all",
        *extra,
        "--listen=127.0.0.1",
        f"--port={port}",
        f"--base-path={base}",
        str(base),
    ]


@contextmanager
def git_daemon(base: Path) -> Iterator[int]:
    """`git daemon` serving every repository under `base` on 127.0.0.1; yields its port and
    stops it at the end."""
    port = free_port()
    proc = subprocess.Popen(
        daemon_command(base, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("git daemon did not start listening") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
