"""The gate's arithmetic, maintenance windows and the busy command, without a fleet."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from node_agent.busy import busy_reason
from node_agent.config import AgentConfig

from reconciler.fleet_status import NodeStatus
from reconciler.maintenance import WindowInvalid, window_state
from reconciler.rollout_gate import ReleaseInfo, assess_rollout, category

C = "c" * 40
SPEC: dict[str, Any] = {
    "rollout": {
        "waves": [
            {"name": "canary", "selector": {"matchLabels": {"ring": "canary"}}},
            {"name": "all", "percent": 100},
        ],
        "minHealthyPercent": 80,
        "maxFailurePercent": 10,
    }
}
CANARIES = {f"c{i}": {"ring": "canary"} for i in range(10)}
OTHERS = {f"s{i}": {} for i in range(30)}
LABELS = {**CANARIES, **OTHERS}
RELEASES = [ReleaseInfo(1, "b" * 40, None, None), ReleaseInfo(2, C, "canary", 1)]


def row(node: str, shown: str, commit: str = C, **extra: Any) -> NodeStatus:
    return NodeStatus(node, shown, reported=shown, release=2, commit=commit, **extra)


def rows(converged: int, rolled_back: int = 0, deferred: int = 0) -> dict[str, NodeStatus]:
    out = {}
    names = sorted(CANARIES)
    for i, node in enumerate(names):
        if i < converged:
            out[node] = row(node, "converged")
        elif i < converged + rolled_back:
            failed = {"2": {"reason": "onnx check failed", "at": "x", "outcome": "rolled-back"}}
            out[node] = row(node, "rolled-back", "b" * 40, failed_releases=failed)
        elif i < converged + rolled_back + deferred:
            out[node] = row(node, "deferred", "b" * 40)
    return out


def test_advance_is_refused_below_the_healthy_threshold_and_allowed_above() -> None:
    below = assess_rollout(SPEC, "f", LABELS, RELEASES, rows(converged=7))
    assert below.decision == "wait" and "70.0% < minHealthyPercent 80%" in below.reason
    above = assess_rollout(SPEC, "f", LABELS, RELEASES, rows(converged=8))
    assert above.decision == "advance" and above.next_wave == "all"
    assert above.healthy_percent == 80.0
    # Only the canary wave's nodes are judged; the others have not been offered it.
    assert set(above.nodes) == set(CANARIES)


def test_failures_over_the_limit_halt_and_at_the_limit_do_not() -> None:
    at_limit = assess_rollout(SPEC, "f", LABELS, RELEASES, rows(converged=9, rolled_back=1))
    assert at_limit.decision == "advance" and at_limit.failure_percent == 10.0
    over = assess_rollout(SPEC, "f", LABELS, RELEASES, rows(converged=8, rolled_back=2))
    assert over.decision == "halt" and "20.0% > maxFailurePercent 10%" in over.reason


def test_deferred_nodes_are_pending_not_failed() -> None:
    gate = assess_rollout(SPEC, "f", LABELS, RELEASES, rows(converged=5, deferred=5))
    assert gate.decision == "wait" and gate.failure_percent == 0.0
    assert sorted(gate.nodes.values()).count("pending") == 5


def test_the_last_wave_completes_and_a_halt_is_reported_as_such() -> None:
    advanced = [*RELEASES, ReleaseInfo(3, C, "all", 1)]
    everyone = {n: row(n, "converged") for n in LABELS}
    assert assess_rollout(SPEC, "f", LABELS, advanced, everyone).decision == "complete"
    halted = [*advanced, ReleaseInfo(4, "b" * 40, None, None, halts=3)]
    gate = assess_rollout(SPEC, "f", LABELS, halted, everyone)
    assert gate.decision == "halted" and "halted release 3" in gate.reason


def test_stale_and_unverified_nodes_are_neither_healthy_nor_failed() -> None:
    assert category(row("c0", "stale"), C, frozenset({2})) == "stale"
    assert category(row("c0", "unverified"), C, frozenset({2})) == "stale"
    assert category(None, C, frozenset({2})) == "pending"
    # Converged, but on another commit: not yet on the rollout.
    assert category(row("c0", "converged", "b" * 40), C, frozenset({2})) == "pending"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_windows_open_and_close_in_their_time_zone_across_midnight() -> None:
    night = {"timezone": "Europe/Berlin", "windows": [{"start": "22:00", "end": "06:00"}]}
    # 22:30 in Berlin in winter is 21:30 UTC.
    assert window_state(night, at("2026-11-23T21:30:00"))[0]
    assert window_state(night, at("2026-11-24T04:59:00"))[0]
    is_open, why = window_state(night, at("2026-11-24T05:00:00"))
    assert not is_open and "next opens Tue 2026-11-24 22:00 CET" in why
    weekdays = {"windows": [{"days": ["sat", "sun"], "start": "00:00", "end": "24:00"}]}
    assert not window_state(weekdays, at("2026-11-27T12:00:00"))[0]  # a Friday
    assert window_state(weekdays, at("2026-11-28T12:00:00"))[0]
    assert window_state(None, at("2026-11-28T12:00:00")) == (
        True,
        "no maintenance window: any time",
    )
    with pytest.raises(WindowInvalid, match="got 'Europe/Berln', expected an IANA time zone"):
        window_state(
            {"timezone": "Europe/Berln", "windows": night["windows"]}, at("2026-11-28T12:00:00")
        )


def config(tmp_path: Path, **busy: Any) -> AgentConfig:
    return AgentConfig(
        path=tmp_path / "agent.yaml",
        node="n",
        repo="x",
        trust_root=tmp_path,
        state_dir=tmp_path,
        identity_key=tmp_path,
        artifact_sources=(),
        poll_interval=None,
        heartbeat_interval=3600,
        log_format="json",
        **busy,
    )


def test_the_busy_command_answers_busy_free_or_is_taken_as_busy(tmp_path: Path) -> None:
    said = config(tmp_path, busy_command=("sh", "-c", "echo store open until 21:00; exit 0"))
    assert busy_reason(said) == "busy: store open until 21:00"
    assert busy_reason(config(tmp_path, busy_command=("sh", "-c", "exit 1"))) is None
    broken = busy_reason(config(tmp_path, busy_command=("sh", "-c", "exit 3")))
    assert broken is not None and "exited 3, expected 0 (busy) or 1 (free)" in broken
    slow = config(tmp_path, busy_command=("sleep", "5"), busy_timeout=0.2)
    assert "gave no answer within 0.2s" in (busy_reason(slow) or "")
    flag = tmp_path / "busy"
    assert busy_reason(config(tmp_path, busy_file=flag)) is None
    flag.write_text("")
    assert busy_reason(config(tmp_path, busy_file=flag)) == f"busy: {flag} exists (no reason given)"


def _example_with(tmp_path: Path, edits: dict[str, dict[str, Any]]) -> str:
    """The example fleet with `spec.maintenance` set in some files; `edgefleet validate`'s
    output."""
    import shutil
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parent.parent / "fleet-repo-example"
    fleet = tmp_path / "fleet"
    shutil.copytree(root, fleet, ignore=shutil.ignore_patterns(".store"))
    for name, window in edits.items():
        path = fleet / name
        doc = yaml.safe_load(path.read_text())
        doc["spec"]["maintenance"] = window
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    done = subprocess.run(
        [str(Path(sys.executable).parent / "edgefleet"), "validate", str(fleet)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stdout
    return done.stdout


def test_validate_refuses_an_unknown_time_zone_and_tied_groups_that_disagree(
    tmp_path: Path,
) -> None:
    out = _example_with(
        tmp_path,
        {
            "groups/canary.yaml": {"windows": [{"start": "01:00", "end": "02:00"}]},
            "groups/pos-pilot.yaml": {"windows": [{"start": "03:00", "end": "04:00"}]},
            "nodes/store-0102.yaml": {
                "timezone": "Europe/Berln",
                "windows": [{"start": "01:00", "end": "02:00"}],
            },
        },
    )
    assert "groups/canary.yaml:" in out and "spec.maintenance: conflicts with" in out
    assert "both groups have priority 20" in out
    assert (
        "nodes/store-0102.yaml:" in out
        and "spec.maintenance.timezone: got 'Europe/Berln', expected an IANA time zone" in out
    )
