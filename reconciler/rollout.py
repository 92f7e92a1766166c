"""Which nodes a release made for a rollout wave reaches. No I/O.

Waves are ordered in `fleet.yaml`; a release for wave W goes to every node of W and of the
waves before it (waves are cumulative). A wave names its nodes by a label selector or by a
percentage of the fleet.

A node's place in the percentages is a hash of the fleet, the node and the rollout's key: the
commit being rolled out. So it is the same on every poll and every machine, and the same for
each release that advances one rollout (they sign the same commit); a node in the first 20 %
stays in the first 50 %, so a percentage grows by adding nodes, never by swapping them. The
next rollout, another commit, draws its canaries anew, so that the same stores do not take
every first risk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from reconciler.selectors import matches

# Buckets per percent: fine enough that 0.5 % of a large fleet is a real slice.
_SCALE = 100_000


def bucket(fleet: str, node: str, key: str) -> float:
    """The node's position in [0, 100) in the rollout of `key`: where it falls in every
    percentage wave."""
    digest = hashlib.sha256(f"{fleet}/{key}/{node}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") % (100 * _SCALE)) / _SCALE


def waves(fleet_spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found: list[Mapping[str, Any]] = (fleet_spec.get("rollout") or {}).get("waves") or []
    return found


def wave_of(
    fleet_spec: Mapping[str, Any], fleet: str, node: str, labels: Mapping[str, str], key: str
) -> str | None:
    """The first wave that reaches this node in the rollout of `key`; None when none does."""
    for entry in waves(fleet_spec):
        selector = entry.get("selector")
        if selector is not None and matches(selector, labels):
            return str(entry["name"])
        percent = entry.get("percent")
        if percent is not None and bucket(fleet, node, key) < float(percent):
            return str(entry["name"])
    return None


def in_wave(
    fleet_spec: Mapping[str, Any],
    fleet: str,
    wave: str | None,
    node: str,
    labels: Mapping[str, str],
    key: str,
) -> bool:
    """True when a release made for `wave` (None: every node) reaches this node."""
    if wave is None:
        return True
    names = [str(entry.get("name")) for entry in waves(fleet_spec)]
    if wave not in names:
        # A wave the fleet does not declare reaches no one: safer than everyone.
        return False
    first = wave_of(fleet_spec, fleet, node, labels, key)
    return first is not None and names.index(first) <= names.index(wave)
