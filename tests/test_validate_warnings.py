"""Warnings are reported but do not fail validation; a valid fleet exits 0."""

from __future__ import annotations

import pytest

from reconciler.cli import main
from tests.conftest import FLEET, GROUP_CANARY, FleetFactory


def test_base_fleet_is_valid(make_fleet: FleetFactory, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_fleet()
    assert main(["validate", str(root)]) == 0
    out = capsys.readouterr().out
    assert "valid, 1 warning (2 groups, 3 nodes, 3 artifacts)" in out


@pytest.mark.parametrize(
    ("changes", "file", "line", "text"),
    [
        (
            {"groups/nobody.yaml": GROUP_CANARY.replace("canary", "nobody")},
            "groups/nobody.yaml",
            7,
            "warning: spec.selector: selects no node",
        ),
        (
            {"fleet.yaml": FLEET.replace("{name: all, percent: 100}", "{name: all, percent: 50}")},
            "fleet.yaml",
            11,
            "warning: spec.rollout.waves[1]: the last wave does not reach",
        ),
        (
            {"fleet.yaml": FLEET.replace("ring: canary}}}", "ring: nowhere}}}")},
            "fleet.yaml",
            10,
            "warning: spec.rollout.waves[0]: wave 'canary' selects no node",
        ),
        ({"nodes/README.md": "notes\n"}, "nodes/README.md", 1, "warning: ignored"),
        (
            {"trust/root.json": '{"signed": {"x": "\\ud83d\\ude00"}, "signatures": []}'},
            "trust/root.json",
            1,
            "signed: missing required field '_type'",
        ),
    ],
)
def test_warning_keeps_exit_zero(
    make_fleet: FleetFactory,
    capsys: pytest.CaptureFixture[str],
    changes: dict[str, str | bytes | None],
    file: str,
    line: int,
    text: str,
) -> None:
    root = make_fleet(changes)
    code = main(["validate", str(root)])
    out = capsys.readouterr().out
    assert f"{root / file}:{line}: {text}" in out, out
    if not text.startswith("warning"):
        assert code == 1  # an error that JSON parsing let through to the schema
        return
    assert code == 0
    assert main(["validate", str(root), "--format", "github"]) == 0
    assert f"::warning file={root / file},line={line}," in capsys.readouterr().out


def test_a_last_wave_selecting_everything_needs_no_warning(
    make_fleet: FleetFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet = FLEET.replace("{name: all, percent: 100}", "{name: all, selector: {matchLabels: {}}}")
    assert main(["validate", str(make_fleet({"fleet.yaml": fleet}))]) == 0
    assert "last wave" not in capsys.readouterr().out
