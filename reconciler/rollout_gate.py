"""Where a rollout stands and what its gate allows: no I/O.

A rollout is the run of newest releases that sign one commit for successive waves
(`edgefleet release --wave canary`, then `rollout advance` for each next wave). Its nodes
are those its current wave reaches (waves are cumulative). Each is counted, from its signed
status, as one of:

* ``converged``: converged on the rollout's commit;
* ``failed``: refused one of the rollout's releases (`rejected`);
* ``rolled-back``: took one of them and rolled it back;
* ``stale``: its status is stale or does not verify: nothing can be said of it;
* ``pending``: everything else: not there yet, applying, deferred (busy or outside its
  maintenance window), offline, never reported.

The gate: the wave may advance when converged nodes are at least `minHealthyPercent` of it;
it must halt when failed and rolled-back nodes are over `maxFailurePercent`; otherwise it
waits. Deferred nodes count as pending, never as failed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from reconciler.fleet_status import NodeStatus
from reconciler.rollout import wave_of

CATEGORIES = ("converged", "failed", "rolled-back", "pending", "stale")
DEFAULT_MAX_FAILURE_PERCENT = 5.0
DEFAULT_MIN_HEALTHY_PERCENT = 95.0
Decision = Literal["advance", "halt", "wait", "complete", "halted", "none"]


@dataclass(frozen=True)
class ReleaseInfo:
    """What a release tag's payload says of the rollout (read after its signature is checked)."""

    version: int
    commit: str
    wave: str | None
    baseline: int | None
    halts: int | None = None


@dataclass(frozen=True)
class WaveRow:
    name: str
    # The nodes this wave adds; the gate judges the cumulative set up to the current wave.
    nodes: tuple[str, ...]
    counts: Mapping[str, int]
    cumulative: Mapping[str, int]
    selector: bool


@dataclass(frozen=True)
class Gate:
    decision: Decision
    reason: str
    # The rollout, newest release first; empty when there is none.
    releases: tuple[ReleaseInfo, ...] = ()
    wave: str | None = None
    next_wave: str | None = None
    waves: tuple[WaveRow, ...] = ()
    nodes: Mapping[str, str] = field(default_factory=dict)
    healthy_percent: float | None = None
    failure_percent: float | None = None
    min_healthy: float = DEFAULT_MIN_HEALTHY_PERCENT
    max_failure: float = DEFAULT_MAX_FAILURE_PERCENT

    @property
    def current(self) -> ReleaseInfo | None:
        return self.releases[0] if self.releases else None

    def as_json(self) -> dict[str, Any]:
        current = self.current
        return {
            "decision": self.decision,
            "reason": self.reason,
            "release": current.version if current else None,
            "commit": current.commit if current else None,
            "baseline": current.baseline if current else None,
            "releases": [r.version for r in self.releases],
            "wave": self.wave,
            "nextWave": self.next_wave,
            "healthyPercent": self.healthy_percent,
            "failurePercent": self.failure_percent,
            "minHealthyPercent": self.min_healthy,
            "maxFailurePercent": self.max_failure,
            "waves": [
                {
                    "name": w.name,
                    "nodes": list(w.nodes),
                    "counts": dict(w.counts),
                    "cumulative": dict(w.cumulative),
                    "selector": w.selector,
                }
                for w in self.waves
            ],
            "nodes": dict(self.nodes),
        }


def rollout_of(releases: Sequence[ReleaseInfo]) -> tuple[ReleaseInfo, ...]:
    """The newest releases that roll out one commit wave by wave, newest first; empty when
    the newest release goes to every node (no rollout in progress, or a halt)."""
    found: list[ReleaseInfo] = []
    for info in sorted(releases, key=lambda r: -r.version):
        if info.wave is None or (found and info.commit != found[0].commit):
            break
        found.append(info)
    return tuple(found)


def category(row: NodeStatus | None, commit: str, versions: frozenset[int]) -> str:
    """Where one node of the rollout stands."""
    if row is None or row.shown == "unreported":
        return "pending"
    if row.shown in ("stale", "unverified"):
        return "stale"
    failed = {
        int(v): f for v, f in row.failed_releases.items() if v.isdigit() and int(v) in versions
    }
    if failed:
        newest = failed[max(failed)]
        return "failed" if newest.get("outcome") == "rejected" else "rolled-back"
    error_release = (row.last_error or {}).get("release")
    if row.shown == "rejected" and error_release in versions:
        return "failed"
    if row.shown == "rolled-back" and error_release in versions:
        return "rolled-back"
    if row.shown == "converged" and row.commit == commit:
        return "converged"
    return "pending"


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 100.0


def assess_rollout(
    fleet_spec: Mapping[str, Any],
    fleet: str,
    labels: Mapping[str, Mapping[str, str]],
    releases: Sequence[ReleaseInfo],
    rows: Mapping[str, NodeStatus],
) -> Gate:
    """The rollout's waves, its nodes' categories and the gate's decision.

    `fleet_spec` and `labels` (node -> labels) are the fleet at the rollout's commit;
    `rows` each node's shown status (`fleet_status.judge`)."""
    rollout = fleet_spec.get("rollout") or {}
    min_healthy = float(rollout.get("minHealthyPercent", DEFAULT_MIN_HEALTHY_PERCENT))
    max_failure = float(rollout.get("maxFailurePercent", DEFAULT_MAX_FAILURE_PERCENT))
    newest = max(releases, key=lambda r: r.version, default=None)
    if newest is None:
        return Gate("none", "no release yet", min_healthy=min_healthy, max_failure=max_failure)
    if newest.halts is not None:
        return Gate(
            "halted",
            f"release {newest.version} halted release {newest.halts}: every node goes back to"
            f" the commit {newest.commit[:12]}",
            min_healthy=min_healthy,
            max_failure=max_failure,
        )
    ours = rollout_of(releases)
    if not ours:
        return Gate(
            "none",
            f"release {newest.version} goes to every node: no rollout in progress",
            min_healthy=min_healthy,
            max_failure=max_failure,
        )
    current = ours[0]
    names = [str(w["name"]) for w in rollout.get("waves") or []]
    if current.wave not in names:
        return Gate(
            "none",
            f"release {current.version} names wave {current.wave!r}, which fleet.yaml at"
            f" {current.commit[:12]} does not declare; expected one of {', '.join(names)}",
            releases=ours,
            min_healthy=min_healthy,
            max_failure=max_failure,
        )
    index = names.index(current.wave)
    versions = frozenset(r.version for r in ours)
    first_wave = {
        node: wave_of(fleet_spec, fleet, node, node_labels, current.commit)
        for node, node_labels in labels.items()
    }
    nodes = {
        node: category(rows.get(node), current.commit, versions)
        for node, wave in first_wave.items()
        if wave is not None and names.index(wave) <= index
    }
    rows_out: list[WaveRow] = []
    running: Counter[str] = Counter()
    for position, name in enumerate(names):
        members = tuple(sorted(n for n, w in first_wave.items() if w == name))
        counts: Counter[str] = Counter(
            nodes[n] if position <= index else "pending" for n in members
        )
        running.update(counts)
        selector = "selector" in (rollout.get("waves") or [])[position]
        rows_out.append(
            WaveRow(
                name,
                members,
                {c: counts[c] for c in CATEGORIES},
                {c: running[c] for c in CATEGORIES},
                selector,
            )
        )
    total = Counter(nodes.values())
    size = len(nodes)
    healthy = _percent(total["converged"], size)
    failures = total["failed"] + total["rolled-back"]
    failure = 100.0 * failures / size if size else 0.0
    next_wave = names[index + 1] if index + 1 < len(names) else None
    base = Gate(
        "wait",
        "",
        releases=ours,
        wave=current.wave,
        next_wave=next_wave,
        waves=tuple(rows_out),
        nodes=nodes,
        healthy_percent=healthy,
        failure_percent=failure,
        min_healthy=min_healthy,
        max_failure=max_failure,
    )
    tally = ", ".join(f"{total[c]} {c}" for c in CATEGORIES if total[c]) or "no nodes"
    where = f"wave {current.wave} of release {current.version} ({size} node(s): {tally})"
    if failure > max_failure:
        return replace(
            base,
            decision="halt",
            reason=f"{where}: {failures} failed or rolled back, {failure:.1f}% > maxFailurePercent"
            f" {max_failure:g}%",
        )
    if healthy < min_healthy:
        return replace(
            base,
            decision="wait",
            reason=f"{where}: {total['converged']} converged, {healthy:.1f}% < minHealthyPercent"
            f" {min_healthy:g}%; {total['pending']} pending, {total['stale']} stale",
        )
    if next_wave is None:
        return replace(
            base,
            decision="complete",
            reason=f"{where}: {healthy:.1f}% converged at the last wave, the rollout is complete",
        )
    return replace(
        base,
        decision="advance",
        reason=f"{where}: {healthy:.1f}% converged >= minHealthyPercent {min_healthy:g}%,"
        f" {failure:.1f}% failed <= maxFailurePercent {max_failure:g}%; next: wave {next_wave}",
    )
