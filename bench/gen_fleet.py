"""Generate a large, realistic and valid EdgeFleet fleet repository for benchmarks.

The repository follows the contract in DESIGN.md ("The fleet repository"):
``fleet.yaml``, ``artifacts.yaml``, ``groups/*.yaml`` and ``nodes/<id>.yaml``.
Every document is valid against the JSON schemas in ``schemas/`` and against the
meaning checks: every artifact reference is in the catalog, every group has its own
priority (so no two matching groups of equal priority can conflict), every group
selects at least one node, and every node has a unique, well-formed (and real)
ed25519 public key derived from the seed and its id.

The output is a pure function of ``(nodes, groups, seed)``: the same arguments give
byte-identical files.

Usage::

    python bench/gen_fleet.py OUT --nodes 10000 --groups 50 [--seed 0]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import random
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

API_VERSION = "edgefleet/v1"
FLEET_NAME = "bench-fleet"

# Label values are plain DNS-ish words, none of which YAML 1.1 reads as a bool or number.
REGIONS: tuple[tuple[str, int], ...] = (("eu", 40), ("us", 30), ("apac", 20), ("latam", 10))
TIERS: tuple[tuple[str, int], ...] = (
    ("store", 60),
    ("kiosk", 20),
    ("warehouse", 15),
    ("hub", 5),
)
RINGS: tuple[tuple[str, int], ...] = (("canary", 2), ("early", 18), ("stable", 80))
HARDWARE: tuple[tuple[str, int], ...] = (("x86-64", 55), ("arm64", 45))

# component name -> (file name inside the bank, unpack mode, versions oldest first,
#                    health command, activate hook)
COMPONENTS: dict[str, tuple[str, str, tuple[str, ...], list[str], list[str]]] = {
    "anomaly-model": (
        "anomaly-model.onnx",
        "none",
        ("1.2.0", "1.3.0", "1.3.1", "1.4.0-rc1", "1.4.0"),
        ["/usr/local/bin/anomaly-filter", "--self-test"],
        ["systemctl", "restart", "anomaly-filter"],
    ),
    "vision-model": (
        "vision.onnx",
        "none",
        ("0.9.0", "1.0.0", "1.1.0", "1.2.0-beta.2"),
        ["/usr/local/bin/vision-probe", "--once"],
        ["systemctl", "restart", "vision"],
    ),
    "edge-gateway": (
        "edge-gateway.tar",
        "tar",
        ("2.0.0", "2.1.0", "2.1.1", "2.2.0"),
        ["/usr/bin/curl", "-fsS", "http://127.0.0.1:8080/healthz"],
        ["systemctl", "reload-or-restart", "edge-gateway"],
    ),
    "telemetry-agent": (
        "telemetry-agent",
        "none",
        ("3.4.0", "3.5.0", "3.5.2"),
        ["/opt/telemetry/bin/telemetry-agent", "--check-config"],
        ["systemctl", "restart", "telemetry-agent"],
    ),
    "pos-app": (
        "pos-app.tar",
        "tar",
        ("5.0.0", "5.1.0", "5.2.0", "5.2.1"),
        ["/opt/pos/bin/pos", "selftest"],
        ["systemctl", "restart", "pos"],
    ),
    "config-bundle": (
        "config.tar",
        "tar",
        ("2025.1.0", "2025.2.0", "2025.3.0"),
        ["/usr/local/bin/config-lint", "/etc/edge"],
        ["systemctl", "daemon-reload"],
    ),
    "label-printer": (
        "label-printer.tar",
        "tar",
        ("1.0.0", "1.0.1", "1.1.0"),
        ["/opt/printer/bin/printer-ctl", "status"],
        ["systemctl", "restart", "label-printer"],
    ),
    "legacy-app": (
        "legacy-app.bin",
        "none",
        ("0.7.3", "0.8.0"),
        ["/opt/legacy/bin/legacy", "--ping"],
        ["systemctl", "restart", "legacy"],
    ),
}

#: Components every node gets from fleet.yaml (group entries may override them).
FLEET_DEFAULTS: tuple[str, ...] = ("telemetry-agent", "config-bundle")


@dataclass(frozen=True)
class NodeInfo:
    """One generated node: its id and labels."""

    node_id: str
    labels: dict[str, str]


@dataclass
class Catalog:
    """The generated artifact catalog, kept for references from groups and nodes."""

    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, list[str]] = field(default_factory=dict)

    def ref(self, component: str, index: int) -> str:
        """Return ``component@version`` for a version index (negative counts from newest)."""
        return f"{component}@{self.versions[component][index]}"


def _hex(*parts: object) -> str:
    """Return a deterministic 64-hex digest of the parts (a stand-in for real content)."""
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()


def _weighted(rng: random.Random, table: tuple[tuple[str, int], ...]) -> str:
    """Pick one value from a (value, weight) table."""
    values = [v for v, _ in table]
    weights = [w for _, w in table]
    return rng.choices(values, weights=weights)[0]


def ssh_ed25519_identity(node_id: str, seed: int) -> str:
    """Return a real OpenSSH ed25519 public key line for a node, derived from its id.

    The private seed is ``sha256("edgefleet-bench:<seed>:<node id>")``; the public key
    is encoded in the OpenSSH wire format (string "ssh-ed25519", string key) and base64,
    followed by the node id as the comment.
    """
    private_seed = hashlib.sha256(f"edgefleet-bench:{seed}:{node_id}".encode()).digest()
    public = (
        Ed25519PrivateKey.from_private_bytes(private_seed)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )
    key_type = b"ssh-ed25519"
    blob = struct.pack(">I", len(key_type)) + key_type + struct.pack(">I", len(public)) + public
    return f"ssh-ed25519 {base64.b64encode(blob).decode('ascii')} {node_id}"


def _dump(path: Path, document: dict[str, Any]) -> None:
    """Write one YAML document in block style, keys in insertion order."""
    text = yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=100)
    path.write_text(text, encoding="utf-8")


def _build_catalog(seed: int) -> Catalog:
    """Build the artifact catalog: every version of every component, deltas between them."""
    rng = random.Random(f"catalog:{seed}")
    catalog = Catalog()
    for component, (file_name, unpack, versions, _, _) in COMPONENTS.items():
        catalog.versions[component] = list(versions)
        previous: tuple[str, int] | None = None
        base_size = rng.randrange(200_000, 80_000_000)
        for version in versions:
            digest = _hex("artifact", seed, component, version)
            size = base_size + rng.randrange(0, base_size // 10 + 1)
            entry: dict[str, Any] = {
                "file": file_name,
                "sha256": digest,
                "size": size,
                "url": f"sha256/{digest}",
            }
            if unpack != "none":
                entry["unpack"] = unpack
            entry["description"] = f"{component} {version}"
            if previous is not None and rng.random() < 0.7:
                base_digest, base_len = previous
                deltas = []
                for fmt in ("zstd-patch", "bsdiff4")[: rng.randint(1, 2)]:
                    patch = _hex("delta", seed, component, version, fmt)
                    deltas.append(
                        {
                            "from": base_digest,
                            "format": fmt,
                            "sha256": patch,
                            "size": max(1, min(size, base_len) // rng.randint(8, 40)),
                            "url": f"sha256/{patch}",
                        }
                    )
                entry["deltas"] = deltas
            catalog.artifacts[f"{component}@{version}"] = entry
            previous = (digest, size)
    return catalog


def _build_nodes(count: int, seed: int) -> list[NodeInfo]:
    """Draw ``count`` nodes with labels from the region/tier/ring/hw tables."""
    rng = random.Random(f"nodes:{seed}")
    nodes: list[NodeInfo] = []
    for i in range(count):
        region = _weighted(rng, REGIONS)
        tier = _weighted(rng, TIERS)
        labels = {
            "region": region,
            "tier": tier,
            "ring": _weighted(rng, RINGS),
            "hw": _weighted(rng, HARDWARE),
        }
        if tier == "store" and rng.random() < 0.3:
            labels["example.com/printer"] = "zebra" if rng.random() < 0.5 else "brother"
        nodes.append(NodeInfo(node_id=f"{region}-{tier}-{i:05d}", labels=labels))
    return nodes


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Return whether a label selector (matchLabels and matchExpressions) matches labels."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op = expr["key"], expr["operator"]
        present = key in labels
        if op == "In" and not (present and labels[key] in expr["values"]):
            return False
        if op == "NotIn" and present and labels[key] in expr["values"]:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def _others(table: tuple[tuple[str, int], ...], value: str) -> list[str]:
    """Return the values of a label table other than ``value``."""
    return [v for v, _ in table if v != value]


def _selector_for(anchor: NodeInfo, rng: random.Random, index: int) -> dict[str, Any]:
    """Build a selector that is guaranteed to match ``anchor`` (so no group is empty)."""
    labels = anchor.labels
    style = index % 5
    selector: dict[str, Any]
    if style == 0:
        selector = {"matchLabels": {"region": labels["region"], "tier": labels["tier"]}}
    elif style == 1:
        selector = {
            "matchLabels": {"tier": labels["tier"]},
            "matchExpressions": [
                {"key": "ring", "operator": "In", "values": [labels["ring"]]},
            ],
        }
    elif style == 2:
        other_regions = _others(REGIONS, labels["region"])
        selector = {
            "matchLabels": {"hw": labels["hw"]},
            "matchExpressions": [
                {"key": "region", "operator": "NotIn", "values": rng.sample(other_regions, 2)},
                {"key": "tier", "operator": "Exists"},
            ],
        }
    elif style == 3:
        other_tiers = _others(TIERS, labels["tier"])
        printer_op = "Exists" if "example.com/printer" in labels else "DoesNotExist"
        selector = {
            "matchLabels": {"region": labels["region"]},
            "matchExpressions": [
                {
                    "key": "tier",
                    "operator": "In",
                    "values": sorted([labels["tier"], rng.choice(other_tiers)]),
                },
                {"key": "example.com/printer", "operator": printer_op},
            ],
        }
    else:
        selector = {
            "matchLabels": {
                "region": labels["region"],
                "tier": labels["tier"],
                "ring": labels["ring"],
                "hw": labels["hw"],
            }
        }
    return selector


def _component_entry(
    component: str, catalog: Catalog, rng: random.Random, full: bool
) -> dict[str, Any]:
    """Return a group's component entry; ``full`` adds health checks and hooks."""
    _, _, versions, health_cmd, activate = COMPONENTS[component]
    # Prefer released versions; pre-releases are for overrides on a few nodes.
    released = [i for i, v in enumerate(versions) if "-" not in v]
    entry: dict[str, Any] = {"artifact": catalog.ref(component, rng.choice(released[-2:]))}
    if full:
        entry["health"] = [{"exec": {"argv": list(health_cmd), "timeoutSeconds": 30}}]
        entry["hooks"] = {"activate": list(activate)}
        if rng.random() < 0.3:
            entry["hooks"]["rollback"] = list(activate)
    return entry


def _build_groups(
    count: int, nodes: list[NodeInfo], catalog: Catalog, seed: int
) -> list[dict[str, Any]]:
    """Build ``count`` groups with distinct priorities, each selecting at least one node."""
    rng = random.Random(f"groups:{seed}")
    names = list(COMPONENTS)
    groups: list[dict[str, Any]] = []
    for i in range(count):
        anchor = nodes[rng.randrange(len(nodes))]
        selector = _selector_for(anchor, rng, i)
        assert _matches(selector, anchor.labels), (selector, anchor)
        chosen = rng.sample(names, rng.randint(1, 3))
        components = {
            name: _component_entry(name, catalog, rng, full=rng.random() < 0.6) for name in chosen
        }
        groups.append(
            {
                "apiVersion": API_VERSION,
                "kind": "Group",
                "metadata": {
                    "name": f"g-{i:03d}",
                    "labels": {"owner": rng.choice(["platform", "retail-ops", "ml-team"])},
                },
                "spec": {
                    "priority": 10 * (i + 1),
                    "selector": selector,
                    "components": components,
                },
            }
        )
    return groups


def _node_text(node: NodeInfo, catalog: Catalog, rng: random.Random, seed: int) -> str:
    """Render one node file by template (yaml.dump is too slow for 10,000 files)."""
    lines = [
        f"apiVersion: {API_VERSION}",
        "kind: Node",
        "metadata:",
        f"  name: {node.node_id}",
        "  labels:",
    ]
    lines.extend(f"    {key}: {value}" for key, value in node.labels.items())
    lines.append("spec:")
    lines.append(f'  identity: "{ssh_ed25519_identity(node.node_id, seed)}"')
    roll = rng.random()
    if roll < 0.05:
        # Pin a component to another version (canaries try the pre-release).
        component = rng.choice(list(COMPONENTS))
        index = (
            -1
            if node.labels["ring"] == "canary"
            else rng.randrange(len(catalog.versions[component]))
        )
        lines.append("  components:")
        lines.append(f"    {component}:")
        lines.append(f"      artifact: {catalog.ref(component, index)}")
    elif roll < 0.07:
        lines.append("  components:")
        lines.append("    legacy-app: null")
    return "\n".join(lines) + "\n"


def generate_fleet(out: Path, nodes: int, groups: int, seed: int = 0) -> None:
    """Write a valid fleet repository with ``nodes`` nodes and ``groups`` groups into ``out``.

    ``out`` is created if needed; files the generator writes are overwritten, other
    files are left alone (use an empty directory). Deterministic for a given seed.
    """
    if nodes < 1:
        raise ValueError("nodes must be at least 1")
    if groups < 0:
        raise ValueError("groups must not be negative")
    out = Path(out)
    (out / "groups").mkdir(parents=True, exist_ok=True)
    (out / "nodes").mkdir(parents=True, exist_ok=True)

    catalog = _build_catalog(seed)
    node_infos = _build_nodes(nodes, seed)
    group_docs = _build_groups(groups, node_infos, catalog, seed)

    fleet_components = {
        name: {
            "artifact": catalog.ref(name, -1),
            "health": [{"exec": {"argv": list(COMPONENTS[name][3]), "timeoutSeconds": 20}}],
            "hooks": {"activate": list(COMPONENTS[name][4])},
        }
        for name in FLEET_DEFAULTS
    }
    _dump(
        out / "fleet.yaml",
        {
            "apiVersion": API_VERSION,
            "kind": "Fleet",
            "metadata": {"name": FLEET_NAME},
            "spec": {
                "artifactSources": [
                    f"https://artifacts.example.net/{FLEET_NAME}/",
                    f"file:///srv/edgefleet/{FLEET_NAME}/",
                ],
                "pollInterval": "60s",
                "heartbeatInterval": "1h",
                "rollout": {
                    "waves": [
                        {"name": "canary", "selector": {"matchLabels": {"ring": "canary"}}},
                        {"name": "early", "percent": 20},
                        {"name": "all", "percent": 100},
                    ],
                    "maxFailurePercent": 5,
                    "minHealthyPercent": 95,
                },
                "components": fleet_components,
            },
        },
    )
    _dump(
        out / "artifacts.yaml",
        {
            "apiVersion": API_VERSION,
            "kind": "ArtifactCatalog",
            "metadata": {"name": FLEET_NAME},
            "spec": {"artifacts": catalog.artifacts},
        },
    )
    for doc in group_docs:
        _dump(out / "groups" / f"{doc['metadata']['name']}.yaml", doc)

    rng = random.Random(f"overrides:{seed}")
    node_dir = out / "nodes"
    for node in node_infos:
        (node_dir / f"{node.node_id}.yaml").write_text(
            _node_text(node, catalog, rng, seed), encoding="utf-8"
        )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``gen_fleet.py OUT --nodes N --groups G [--seed S]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to write the fleet repository into")
    parser.add_argument("--nodes", type=int, default=10_000, help="number of nodes (10000)")
    parser.add_argument("--groups", type=int, default=50, help="number of groups (50)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.groups < 0:
        parser.error("--nodes must be at least 1 and --groups must not be negative")
    start = time.perf_counter()
    generate_fleet(args.out, args.nodes, args.groups, args.seed)
    elapsed = time.perf_counter() - start
    print(
        f"wrote {args.nodes} nodes and {args.groups} groups to {args.out} in {elapsed:.2f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
