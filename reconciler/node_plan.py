"""What a node must change to reach a release: the difference between desired and applied.

Pure: it takes the rendered desired state and what the journal says is installed, and
returns one decision per component. A component whose bytes (digest, file name, unpacking)
are the same is kept, never restaged, even when its health checks or hooks changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Action = Literal["add", "change", "remove", "keep"]


@dataclass(frozen=True)
class Desired:
    """One component of a node's desired state, with its artifact resolved from the catalog."""

    name: str
    artifact: str
    sha256: str
    size: int
    url: str
    file: str
    unpack: str
    deltas: tuple[Mapping[str, Any], ...] = ()
    health: tuple[Mapping[str, Any], ...] = ()
    hooks: Mapping[str, Any] = field(default_factory=dict)

    @property
    def content(self) -> tuple[str, str, str]:
        """What decides whether a bank must be restaged."""
        return (self.sha256, self.file, self.unpack)

    def as_json(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "sha256": self.sha256,
            "size": self.size,
            "url": self.url,
            "file": self.file,
            "unpack": self.unpack,
            "health": [dict(c) for c in self.health],
            "hooks": dict(self.hooks),
        }


@dataclass(frozen=True)
class Installed:
    """What the journal says a component runs: enough to compare and to roll back to."""

    artifact: str
    sha256: str
    file: str
    unpack: str

    @property
    def content(self) -> tuple[str, str, str]:
        return (self.sha256, self.file, self.unpack)


@dataclass(frozen=True)
class Change:
    name: str
    action: Action
    desired: Desired | None
    installed: Installed | None


def desired_components(rendered: Mapping[str, Any]) -> dict[str, Desired]:
    """The components of `render_node`'s output, schema defaults applied."""
    out: dict[str, Desired] = {}
    for name, component in rendered["spec"]["components"].items():
        resolved = component["resolved"]
        out[name] = Desired(
            name=name,
            artifact=component["artifact"],
            sha256=resolved["sha256"],
            size=resolved["size"],
            url=resolved["url"],
            file=resolved["file"],
            unpack=resolved.get("unpack", "none"),
            deltas=tuple(resolved.get("deltas", ())),
            health=tuple(component.get("health") or ()),
            hooks=dict(component.get("hooks") or {}),
        )
    return out


def plan(desired: Mapping[str, Desired], installed: Mapping[str, Installed]) -> list[Change]:
    """One change per component named on either side, sorted by name."""
    changes: list[Change] = []
    for name in sorted(set(desired) | set(installed)):
        want = desired.get(name)
        have = installed.get(name)
        action: Action
        if want is None:
            action = "remove"
        elif have is None:
            action = "add"
        elif want.content != have.content:
            action = "change"
        else:
            action = "keep"
        changes.append(Change(name, action, want, have))
    return changes


@dataclass(frozen=True)
class Transfer:
    """How one changed component's bytes reach a node: a patch from a base it has, or full."""

    name: str
    artifact: str
    full_bytes: int
    patch: Mapping[str, Any] | None  # the catalog's `deltas` entry used, or None for full

    @property
    def bytes(self) -> int:
        return int(self.patch["size"]) if self.patch is not None else self.full_bytes


def choose_patch(want: Desired, bases: Mapping[str, str]) -> Mapping[str, Any] | None:
    """The smallest offered patch whose base the node has; `bases` maps SHA-256 to where."""
    usable = [d for d in want.deltas if d.get("from") in bases and d["size"] < want.size]
    return min(usable, key=lambda d: int(d["size"])) if usable else None


def transfers(changes: list[Change], bases: Mapping[str, str]) -> list[Transfer]:
    """For every component to add or change, the bytes it moves: what `edgefleet plan` sums
    across a fleet and what the agent does. `bases` are the digests the node holds (its
    banks' artifacts, its cache)."""
    out: list[Transfer] = []
    for change in changes:
        want = change.desired
        if change.action not in ("add", "change") or want is None:
            continue
        out.append(Transfer(change.name, want.artifact, want.size, choose_patch(want, bases)))
    return out
