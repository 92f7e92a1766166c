"""Which nodes a release made for a rollout wave reaches.

Waves are ordered in `fleet.yaml`; a release for wave W goes to every node of W and of the
waves before it. A wave names its nodes by a label selector or by a percentage of the fleet.
A node's place in the percentages is a hash of the fleet's and the node's names, so it is the
same on every run and every machine, and a node in the first 20 % stays in the first 50 %.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from reconciler.selectors import matches

# Buckets per percent: fine enough that 0.5 % of a large fleet is a real slice.
_SCALE = 100_000


def bucket(fleet: str, node: str) -> float:
    """The node's position in [0, 100): where it falls in every percentage wave."""
    digest = hashlib.sha256(f"{fleet}/{node}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") % (100 * _SCALE)) / _SCALE


def in_wave(
    fleet_spec: Mapping[str, Any],
    fleet: str,
    wave: str | None,
    node: str,
    labels: Mapping[str, str],
) -> bool:
    """True when a release made for `wave` (None: every node) reaches this node."""
    if wave is None:
        return True
    waves = (fleet_spec.get("rollout") or {}).get("waves") or []
    if wave not in {entry.get("name") for entry in waves}:
        # A wave the fleet does not declare reaches no one: safer than everyone.
        return False
    for entry in waves:
        selector = entry.get("selector")
        if selector is not None and matches(selector, labels):
            return True
        percent = entry.get("percent")
        if percent is not None and bucket(fleet, node) < float(percent):
            return True
        if entry.get("name") == wave:
            break
    return False
