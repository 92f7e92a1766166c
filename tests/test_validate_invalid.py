"""Table-driven invalid fleets: each must fail with exit 1 and name the file, the line and why.

Every case starts from the valid base fleet of conftest.py and changes one thing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reconciler.cli import main
from tests.conftest import CATALOG, D1, FLEET, GROUP_CANARY, GROUP_MODELS, FleetFactory, node_yaml


@dataclass(frozen=True)
class Case:
    id: str
    changes: dict[str, str | bytes | None]
    file: str
    line: int
    text: str
    setup: Callable[[Path], None] | None = field(default=None)


def node(
    extra: str = "", labels: str = "{tier: store, ring: stable}", name: str = "store-2"
) -> str:
    return node_yaml(name, labels, extra)


def replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)
)

GROUP_CONFLICT = """\
apiVersion: edgefleet/v1
kind: Group
metadata:
  name: models-b
spec:
  priority: 10
  selector:
    matchLabels: {tier: store}
  components:
    model:
      artifact: model@1.0.0
      health:
        - exec: {argv: [/bin/other-check]}
"""


def symlink_golden(root: Path) -> None:
    (root / "golden" / "in.npy").unlink()
    (root / "golden" / "in.npy").symlink_to("/etc/passwd")


def symlink_node(root: Path) -> None:
    target = root / "nodes" / "store-2.yaml"
    (root / "elsewhere.yaml").write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(root / "elsewhere.yaml")


def huge_node(root: Path) -> None:
    with open(root / "nodes" / "store-2.yaml", "a", encoding="utf-8") as out:
        line = "# " + "x" * 1021 + "\n"
        for _ in range(50 * 1024):
            out.write(line)


CASES = [
    Case(
        "malformed-yaml",
        {"nodes/store-2.yaml": node("  components: {app: [\n")},
        "nodes/store-2.yaml",
        9,
        "malformed YAML",
    ),
    Case(
        "duplicate-key",
        {"nodes/store-2.yaml": replace(node(), "kind: Node\n", "kind: Node\nkind: Node\n")},
        "nodes/store-2.yaml",
        3,
        "duplicate key 'kind' (first at line 2)",
    ),
    Case(
        "python-object-tag",
        {"nodes/store-2.yaml": node("  components: !!python/object:os.system {}\n")},
        "nodes/store-2.yaml",
        8,
        "tag tag:yaml.org,2002:python/object:os.system is not allowed",
    ),
    Case("alias-bomb", {"groups/bomb.yaml": BOMB}, "groups/bomb.yaml", 6, "billion laughs"),
    Case(
        "fifty-megabytes", {}, "nodes/store-2.yaml", 1, "bytes, expected at most", setup=huge_node
    ),
    Case(
        "dotdot-path",
        {"groups/models.yaml": replace(GROUP_MODELS, "golden/in.npy", "../../etc/passwd")},
        "groups/models.yaml",
        14,
        "expected a relative path inside the repository",
    ),
    Case(
        "absolute-file",
        {"artifacts.yaml": replace(CATALOG, "file: model.onnx", "file: /usr/lib/model.onnx")},
        "artifacts.yaml",
        26,
        'file: got "/usr/lib/model.onnx"',
    ),
    Case(
        "unknown-field",
        {"fleet.yaml": replace(FLEET, "pollInterval", "polInterval")},
        "fleet.yaml",
        7,
        "unknown field 'polInterval' (did you mean 'pollInterval'?)",
    ),
    Case(
        "missing-identity",
        {
            "nodes/store-2.yaml": "\n".join(
                line for line in node("  components: {}\n").splitlines() if "identity" not in line
            )
            + "\n"
        },
        "nodes/store-2.yaml",
        6,
        "spec: missing required field 'identity'",
    ),
    Case(
        "duration-space",
        {"fleet.yaml": replace(FLEET, "60s", "60 s")},
        "fleet.yaml",
        7,
        'got "60 s", expected a duration',
    ),
    Case(
        "duration-number",
        {"fleet.yaml": replace(FLEET, "60s", "60")},
        "fleet.yaml",
        7,
        "got 60 (integer), expected string",
    ),
    Case(
        "digest-short",
        {"artifacts.yaml": replace(CATALOG, f'"{D1}"', f'"{D1[:63]}"')},
        "artifacts.yaml",
        9,
        "expected a SHA-256 digest: 64 lower-case hex digits",
    ),
    Case(
        "digest-upper",
        {"artifacts.yaml": replace(CATALOG, f'"{D1}"', f'"{"A" * 64}"')},
        "artifacts.yaml",
        9,
        "64 lower-case hex digits",
    ),
    Case(
        "ref-near-miss",
        {"nodes/store-2.yaml": node("  components:\n    app: {artifact: app@1.0}\n")},
        "nodes/store-2.yaml",
        9,
        "expected an artifact reference name@version",
    ),
    Case(
        "ref-not-in-catalog",
        {"nodes/store-2.yaml": node("  components:\n    app: {artifact: app@9.9.9}\n")},
        "nodes/store-2.yaml",
        9,
        "known versions of app: 1.0.0, 1.1.0",
    ),
    Case(
        "file-name-differs",
        {"nodes/store-2.yaml": node(name="store-9")},
        "nodes/store-2.yaml",
        4,
        'got "store-9", expected "store-2"',
    ),
    Case(
        "duplicate-node-id",
        {"nodes/store-3.yaml": node(name="store-2")},
        "nodes/store-3.yaml",
        4,
        'duplicate node id "store-2"',
    ),
    Case(
        "equal-priority-conflict",
        {"groups/models-b.yaml": GROUP_CONFLICT},
        "groups/models.yaml",
        13,
        "conflicts with groups/models-b.yaml:12 on nodes store-1, store-2",
    ),
    Case(
        "missing-health-file",
        {"golden/out.npy": None},
        "groups/models.yaml",
        14,
        '"golden/out.npy" does not exist in the repository',
    ),
    Case("health-file-link", {}, "groups/models.yaml", 14, "is a link", setup=symlink_golden),
    Case(
        "node-id-not-dns",
        {"nodes/Store_2.yaml": node(name="Store_2")},
        "nodes/Store_2.yaml",
        4,
        "expected a DNS label",
    ),
    Case(
        "wrong-kind",
        {"nodes/store-2.yaml": replace(node(), "kind: Node", "kind: Group")},
        "nodes/store-2.yaml",
        2,
        'kind: got "Group", expected "Node"',
    ),
    Case(
        "wrong-api-version",
        {"fleet.yaml": replace(FLEET, "edgefleet/v1", "edgefleet/v2")},
        "fleet.yaml",
        1,
        'apiVersion: got "edgefleet/v2", expected "edgefleet/v1"',
    ),
    Case(
        "label-norway",
        {"nodes/store-2.yaml": node(labels="{tier: store, ring: stable, open: no}")},
        "nodes/store-2.yaml",
        5,
        "got false (boolean), expected string",
    ),
    Case(
        "two-documents",
        {"nodes/store-2.yaml": node() + "---\nkind: Node\n"},
        "nodes/store-2.yaml",
        8,
        "a second YAML document",
    ),
    Case(
        "not-utf8",
        {"nodes/store-2.yaml": node().encode() + b"# \xff\xfe\n"},
        "nodes/store-2.yaml",
        8,
        "not UTF-8 text",
    ),
    Case(
        "empty-file",
        {"nodes/store-2.yaml": "# nothing here\n"},
        "nodes/store-2.yaml",
        1,
        "empty file",
    ),
    Case(
        "deep-nesting",
        {"nodes/store-2.yaml": node("  x: " + "[" * 80 + "]" * 80 + "\n")},
        "nodes/store-2.yaml",
        8,
        "nesting deeper than 64 levels",
    ),
    Case(
        "yml-ending",
        {"nodes/store-4.yml": node(name="store-4")},
        "nodes/store-4.yml",
        1,
        "expected the ending .yaml",
    ),
    Case(
        "fleet-missing",
        {"fleet.yaml": None},
        "fleet.yaml",
        1,
        "missing: every fleet repository has a Fleet here",
    ),
    Case(
        "merge-key",
        {"fleet.yaml": FLEET + "  x: {<<: {a: 1}}\n"},
        "fleet.yaml",
        17,
        "merge key '<<' is not supported",
    ),
    Case(
        "delta-format",
        {"artifacts.yaml": replace(CATALOG, "zstd-patch", "xdelta3")},
        "artifacts.yaml",
        21,
        'got "xdelta3", expected one of "zstd-patch", "bsdiff4", "hdiffpatch"',
    ),
    Case(
        "wave-selector-and-percent",
        {
            "fleet.yaml": replace(
                FLEET, "{name: all, percent: 100}", "{name: all, percent: 100, selector: {}}"
            )
        },
        "fleet.yaml",
        11,
        "exactly one of selector or percent",
    ),
    Case(
        "in-without-values",
        {
            "groups/models.yaml": replace(
                GROUP_MODELS,
                "{key: tier, operator: In, values: [store]}",
                "{key: tier, operator: In}",
            )
        },
        "groups/models.yaml",
        9,
        "missing required field 'values'",
    ),
    Case("duplicate-identity", {}, "nodes/store-2.yaml", 7, "the same key as nodes/depot-1.yaml"),
    Case(
        "two-checks-in-one",
        {
            "groups/models.yaml": replace(
                GROUP_MODELS,
                "- exec: {argv: [/usr/bin/true], timeoutSeconds: 5}",
                "- exec: {argv: [/usr/bin/true]}\n"
                "          onnx: {input: golden/in.npy, expected: golden/out.npy}",
            )
        },
        "groups/models.yaml",
        15,
        "one health check",
    ),
    Case(
        "component-name",
        {"nodes/store-2.yaml": node("  components:\n    My_App: null\n")},
        "nodes/store-2.yaml",
        9,
        'bad name "My_App"',
    ),
    Case(
        "negative-size",
        {"artifacts.yaml": replace(CATALOG, "size: 1000", "size: -1")},
        "artifacts.yaml",
        10,
        "got -1, expected at least 0",
    ),
    Case(
        "hook-not-list",
        {"fleet.yaml": replace(FLEET, "[systemctl, restart, app]", "systemctl restart app")},
        "fleet.yaml",
        16,
        "expected array or null",
    ),
    Case(
        "waves-shrink",
        {
            "fleet.yaml": replace(
                FLEET,
                "- {name: all, percent: 100}",
                "- {name: half, percent: 50}\n      - {name: tenth, percent: 10}",
            )
        },
        "fleet.yaml",
        12,
        "got 10, expected at least 50",
    ),
    Case(
        "no-artifact-after-merge",
        {
            "nodes/store-2.yaml": node(
                "  components:\n    extra:\n      hooks: {activate: [/bin/true]}\n"
            )
        },
        "nodes/store-2.yaml",
        9,
        "component 'extra' has no artifact after merging",
    ),
    Case(
        "url-dotdot",
        {"artifacts.yaml": replace(CATALOG, f"url: sha256/{D1}", "url: ../../secrets/key")},
        "artifacts.yaml",
        11,
        "a path relative to an artifact source",
    ),
    Case("node-file-link", {}, "nodes/store-2.yaml", 1, "is a link", setup=symlink_node),
    Case(
        "list-document",
        {"groups/canary.yaml": "- a\n- b\n"},
        "groups/canary.yaml",
        1,
        "expected a mapping with apiVersion",
    ),
    Case(
        "selector-typo",
        {"groups/canary.yaml": replace(GROUP_CANARY, "matchLabels", "matchLabel")},
        "groups/canary.yaml",
        8,
        "unknown field 'matchLabel' (did you mean 'matchLabels'?)",
    ),
]


def link_nodes_folder(root: Path) -> None:
    moved = root.parent / "nodes-elsewhere"
    (root / "nodes").rename(moved)
    (root / "nodes").symlink_to(moved)


CASES += [
    Case(
        "label-trailing-newline",
        {"nodes/store-2.yaml": node(labels='{tier: store, ring: "canary\\n"}')},
        "nodes/store-2.yaml",
        5,
        'metadata.labels.ring: got "canary\\n"',
    ),
    Case(
        "digest-trailing-newline",
        {"artifacts.yaml": replace(CATALOG, f'"{D1}"', f'"{D1}\\n"')},
        "artifacts.yaml",
        9,
        "64 lower-case hex digits",
    ),
    Case(
        "path-newline-dotdot",
        {"artifacts.yaml": replace(CATALOG, "file: model.onnx", 'file: "x\\n/../../etc/evil"')},
        "artifacts.yaml",
        26,
        "expected a relative path",
    ),
    Case("nodes-folder-link", {}, "nodes", 1, "is a link", setup=link_nodes_folder),
    Case(
        "catalog-of-another-fleet",
        {"artifacts.yaml": replace(CATALOG, "name: test-fleet", "name: other-fleet")},
        "artifacts.yaml",
        4,
        'got "other-fleet", expected "test-fleet" (the name in fleet.yaml)',
    ),
    Case(
        "root-json-duplicate-key",
        {"trust/root.json": '{"signed": {}, "signed": {}}'},
        "trust/root.json",
        1,
        "duplicate key 'signed'",
    ),
]


def _duplicate_identity(root: Path) -> None:
    text = (root / "nodes" / "depot-1.yaml").read_text()
    key = next(line for line in text.splitlines() if "identity" in line)
    lines = (root / "nodes" / "store-2.yaml").read_text().splitlines()
    lines = [key if "identity" in line else line for line in lines]
    (root / "nodes" / "store-2.yaml").write_text("\n".join(lines) + "\n")


CASES = [
    Case(c.id, c.changes, c.file, c.line, c.text, _duplicate_identity)
    if c.id == "duplicate-identity"
    else c
    for c in CASES
]


def test_there_are_at_least_thirty_distinct_cases() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_invalid_fleet_is_rejected_with_file_and_line(
    case: Case, make_fleet: FleetFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_fleet(case.changes)
    if case.setup is not None:
        case.setup(root)
    code = main(["validate", str(root)])
    out = capsys.readouterr().out
    assert code == 1, out
    expected_prefix = f"{root / case.file}:{case.line}: "
    matching = [line for line in out.splitlines() if line.startswith(expected_prefix)]
    assert matching, f"no problem at {case.file}:{case.line} in:\n{out}"
    assert any(case.text in line for line in matching), f"{case.text!r} not in:\n{out}"


@pytest.mark.parametrize("case", CASES[:8], ids=[c.id for c in CASES[:8]])
def test_json_and_github_formats_carry_the_same_problems(
    case: Case, make_fleet: FleetFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_fleet(case.changes)
    if case.setup is not None:
        case.setup(root)
    assert main(["validate", str(root), "--format", "json"]) == 1
    problems = json.loads(capsys.readouterr().out)
    hits = [p for p in problems if p["file"] == str(root / case.file) and p["line"] == case.line]
    assert hits and all(p["severity"] in ("error", "warning") for p in problems)
    assert main(["validate", str(root), "--format", "github"]) == 1
    annotations = capsys.readouterr().out.splitlines()
    assert any(
        a.startswith(f"::error file={root / case.file},line={case.line},") for a in annotations
    ), annotations


def test_a_refused_shared_document_does_not_echo_through_every_node(
    make_fleet: FleetFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_fleet({"fleet.yaml": replace(FLEET, "60s", "60 s")})
    assert main(["validate", str(root)]) == 1
    out = capsys.readouterr().out
    assert "duration" in out and "no artifact" not in out, out
    assert "invalid: 1 error" in out


def test_all_problems_are_reported_in_one_run(
    make_fleet: FleetFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_fleet(
        {
            "fleet.yaml": replace(FLEET, "60s", "60 s"),
            "nodes/store-2.yaml": node(
                "  components:\n    app: {artifact: app@9.9.9}\n",
                labels="{tier: store, ring: stable, open: yes}",
                name="store-7",
            ),
            "golden/out.npy": None,
        }
    )
    assert main(["validate", str(root)]) == 1
    out = capsys.readouterr().out
    for expected in (
        "duration",
        "expected string",
        'expected "store-2"',
        "app@9.9.9",
        "golden/out.npy",
    ):
        assert expected in out, out
    assert "invalid: 5 errors" in out
