"""Shared fixtures: a small valid fleet repository written fresh for each test, real keys."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "fleet-repo-example"

D1 = "1" * 64
D2 = "2" * 64
D3 = "3" * 64
D4 = "4" * 64


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own $XDG_CACHE_HOME (fetched remotes, status verdicts), for the commands it
    runs in-process and as subprocesses: nothing leaks between tests or into the home folder."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


def ssh_public_key(comment: str) -> str:
    """A real OpenSSH ed25519 public key line, made now."""
    key = Ed25519PrivateKey.generate().public_key()
    raw = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{raw.decode()} {comment}"


FLEET = """\
apiVersion: edgefleet/v1
kind: Fleet
metadata:
  name: test-fleet
spec:
  artifactSources: ["https://artifacts.example.net/test/"]
  pollInterval: 60s
  rollout:
    waves:
      - {name: canary, selector: {matchLabels: {ring: canary}}}
      - {name: all, percent: 100}
  components:
    app:
      artifact: app@1.0.0
      hooks:
        activate: [systemctl, restart, app]
"""

CATALOG = f"""\
apiVersion: edgefleet/v1
kind: ArtifactCatalog
metadata:
  name: test-fleet
spec:
  artifacts:
    app@1.0.0:
      file: app.tar.gz
      sha256: "{D1}"
      size: 1000
      url: sha256/{D1}
      unpack: tar
    app@1.1.0:
      file: app.tar.gz
      sha256: "{D2}"
      size: 1100
      url: sha256/{D2}
      unpack: tar
      deltas:
        - from: "{D1}"
          format: zstd-patch
          sha256: "{D4}"
          size: 90
          url: sha256/{D4}
    model@1.0.0:
      file: model.onnx
      sha256: "{D3}"
      size: 5000
      url: https://cdn.example.net/{D3}
"""

GROUP_CANARY = """\
apiVersion: edgefleet/v1
kind: Group
metadata:
  name: canary
spec:
  priority: 20
  selector:
    matchLabels: {ring: canary}
  components:
    app:
      artifact: app@1.1.0
"""

GROUP_MODELS = """\
apiVersion: edgefleet/v1
kind: Group
metadata:
  name: models
spec:
  priority: 10
  selector:
    matchExpressions:
      - {key: tier, operator: In, values: [store]}
  components:
    model:
      artifact: model@1.0.0
      health:
        - onnx: {input: golden/in.npy, expected: golden/out.npy, atol: 1.0e-4}
        - exec: {argv: [/usr/bin/true], timeoutSeconds: 5}
"""


def node_yaml(name: str, labels: str, extra: str = "", identity: str | None = None) -> str:
    key = identity or ssh_public_key(name)
    text = f"""\
apiVersion: edgefleet/v1
kind: Node
metadata:
  name: {name}
  labels: {labels}
spec:
  identity: "{key}"
"""
    return text + extra


def base_files() -> dict[str, str | bytes]:
    return {
        "fleet.yaml": FLEET,
        "artifacts.yaml": CATALOG,
        "groups/canary.yaml": GROUP_CANARY,
        "groups/models.yaml": GROUP_MODELS,
        "nodes/store-1.yaml": node_yaml("store-1", "{tier: store, ring: canary}"),
        "nodes/store-2.yaml": node_yaml("store-2", "{tier: store, ring: stable}"),
        "nodes/depot-1.yaml": node_yaml("depot-1", "{tier: warehouse, ring: stable}"),
        "golden/in.npy": b"\x93NUMPY-in",
        "golden/out.npy": b"\x93NUMPY-out",
    }


def write_files(root: Path, files: dict[str, str | bytes | None]) -> None:
    for rel, content in files.items():
        path = root / rel
        if content is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


FleetFactory = Callable[..., Path]


@pytest.fixture
def make_fleet(tmp_path: Path) -> FleetFactory:
    """Write the base fleet, with some files replaced (None deletes one), and return its folder."""

    def make(changes: dict[str, str | bytes | None] | None = None) -> Path:
        root = tmp_path / "fleet"
        files: dict[str, str | bytes | None] = dict(base_files())
        files.update(changes or {})
        write_files(root, {k: v for k, v in files.items() if v is not None})
        return root

    return make
