"""A node's desired state: fleet defaults < matching groups by ascending priority < the node.

Mappings merge deeply, lists replace, and `null` removes. Groups of equal priority are merged in
name order so that the result never depends on the order files are listed; when two of them
set the same field differently, validation reports it (`semantic_checks.group_conflicts`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from reconciler.errors import RenderError
from reconciler.fleet_repo import Document, FleetRepo


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """`overlay` over `base`, as new mappings; leaves (and lists) are shared, never mutated."""
    out = dict(base)
    for key, value in overlay.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):  # documents hold plain dicts; the ABC check costs 3x
            below = out.get(key)
            out[key] = merge(below if isinstance(below, dict) else {}, value)
        else:
            out[key] = value
    return out


def merge_layers(layers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for layer in layers:
        result = merge(result, layer)
    return result


def layers(repo: FleetRepo, node: Document) -> list[Document]:
    """The documents whose components make up this node, lowest precedence first."""
    out: list[Document] = [repo.fleet] if repo.fleet is not None else []
    return [*out, *repo.groups_of(node), node]


def merged_components(repo: FleetRepo, node: Document) -> dict[str, Any]:
    return merge_layers(doc.components for doc in layers(repo, node))


def unresolved(repo: FleetRepo, components: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(component, reason) for every merged component that names no artifact in the catalog."""
    out: list[tuple[str, str]] = []
    for name, component in sorted(components.items()):
        ref = component.get("artifact")
        if ref is None:
            out.append((name, "has no artifact after merging, expected one set at some level"))
        elif ref not in repo.artifacts:
            out.append((name, f"names artifact '{ref}', which is not in artifacts.yaml"))
    return out


def render_node(repo: FleetRepo, node_id: str) -> dict[str, Any]:
    """The desired state of one node, every artifact resolved from the catalog."""
    node = repo.node(node_id)
    if node is None:
        names = [
            n.removesuffix(".yaml")
            for n, kind in repo.files.listdir("nodes")
            if kind == "file" and n.endswith(".yaml")
        ]
        known = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise RenderError(
            f"node '{node_id}': got no nodes/{node_id}.yaml, expected one of the repository's"
            f" nodes ({known or 'it has none'})"
        )
    chain = layers(repo, node)
    components = merge_layers(doc.components for doc in chain)
    missing = unresolved(repo, components)
    if missing:
        order = " < ".join(d.file for d in chain)
        raise RenderError(
            "; ".join(f"{node.file}: component '{c}' {why}" for c, why in missing)
            + f" (merged {order})"
        )
    rendered: dict[str, Any] = {}
    for name, component in sorted(components.items()):
        rendered[name] = {
            "artifact": component["artifact"],
            "resolved": repo.artifacts[component["artifact"]],
            "health": component.get("health", []),
            "hooks": component.get("hooks", {}),
        }
    return {
        "apiVersion": "edgefleet/v1",
        "kind": "NodeState",
        "metadata": {
            "name": node.name,
            "fleet": repo.fleet_name,
            "labels": dict(node.labels),
            "groups": [d.name for d in chain if d.kind == "Group"],
        },
        "spec": {
            "identity": node.spec["identity"],
            **({"maintenance": window} if (window := maintenance(chain)) else {}),
            "components": rendered,
        },
    }


def maintenance(chain: list[Document]) -> dict[str, Any] | None:
    """The maintenance window of the most specific layer that sets one: a node's own, else its
    highest-priority group's, else the fleet's. Windows replace, never merge: a node with
    `maintenance: null` has none."""
    for doc in reversed(chain):
        if "maintenance" in doc.spec:
            found: dict[str, Any] | None = doc.spec["maintenance"]
            return found
    return None
