"""Rendering: the merge rules of DESIGN.md, table-driven, plus properties checked by hypothesis."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.cli import main
from reconciler.render import merge, merge_layers, render_node
from reconciler.repo_files import DirectoryFiles
from reconciler.schema_check import validator
from reconciler.validate import load_for_node
from tests.conftest import FleetFactory, node_yaml

MERGE_CASES: list[tuple[str, list[dict[str, Any]], dict[str, Any]]] = [
    (
        "fleet default applies",
        [{"app": {"artifact": "app@1.0.0"}}],
        {"app": {"artifact": "app@1.0.0"}},
    ),
    (
        "later layer overrides a scalar",
        [{"app": {"artifact": "app@1.0.0"}}, {"app": {"artifact": "app@2.0.0"}}],
        {"app": {"artifact": "app@2.0.0"}},
    ),
    (
        "mappings merge deeply",
        [{"app": {"hooks": {"activate": ["a"]}}}, {"app": {"hooks": {"rollback": ["r"]}}}],
        {"app": {"hooks": {"activate": ["a"], "rollback": ["r"]}}},
    ),
    (
        "lists replace, never append",
        [
            {"app": {"health": [{"exec": {"argv": ["one"]}}]}},
            {"app": {"health": [{"exec": {"argv": ["two"]}}]}},
        ],
        {"app": {"health": [{"exec": {"argv": ["two"]}}]}},
    ),
    (
        "null removes a component",
        [{"app": {"artifact": "app@1.0.0"}, "x": {}}, {"app": None}],
        {"x": {}},
    ),
    (
        "null removes a nested key",
        [
            {"app": {"hooks": {"activate": ["a"], "rollback": ["r"]}}},
            {"app": {"hooks": {"activate": None}}},
        ],
        {"app": {"hooks": {"rollback": ["r"]}}},
    ),
    ("null on something absent is nothing", [{}, {"app": {"hooks": None}}], {"app": {}}),
    (
        "a mapping replaces a scalar below it",
        [{"app": {"hooks": None}}, {"app": {"hooks": {"activate": ["a"]}}}],
        {"app": {"hooks": {"activate": ["a"]}}},
    ),
    (
        "a later removal then a re-add",
        [{"app": {"artifact": "app@1.0.0"}}, {"app": None}, {"app": {"artifact": "app@3.0.0"}}],
        {"app": {"artifact": "app@3.0.0"}},
    ),
]


@pytest.mark.parametrize(
    ("layers", "expected"), [c[1:] for c in MERGE_CASES], ids=[c[0] for c in MERGE_CASES]
)
def test_merge_rules(layers: list[dict[str, Any]], expected: dict[str, Any]) -> None:
    snapshot = json.dumps(layers, sort_keys=True)
    assert merge_layers(layers) == expected
    assert json.dumps(layers, sort_keys=True) == snapshot, "merging must not change its inputs"


def render(root: Any, node_id: str) -> dict[str, Any]:
    return render_node(load_for_node(DirectoryFiles(root), node_id), node_id)


def test_render_applies_fleet_then_groups_by_priority_then_node(make_fleet: FleetFactory) -> None:
    root = make_fleet(
        {
            "nodes/store-1.yaml": node_yaml(
                "store-1",
                "{tier: store, ring: canary}",
                "  components:\n    model: {health: null}\n"
                "    app:\n      hooks: {rollback: [/bin/undo]}\n",
            )
        }
    )
    state = render(root, "store-1")
    assert state["metadata"]["groups"] == ["models", "canary"]  # priority 10, then 20
    app = state["spec"]["components"]["app"]
    assert app["artifact"] == "app@1.1.0"  # canary group (20) over fleet default
    assert app["resolved"]["sha256"] == "2" * 64
    assert app["hooks"] == {"activate": ["systemctl", "restart", "app"], "rollback": ["/bin/undo"]}
    assert state["spec"]["components"]["model"]["health"] == []  # removed by the node
    assert not list(validator("rendered-node.json").iter_errors(state))


def test_render_node_outside_every_group_gets_fleet_defaults(make_fleet: FleetFactory) -> None:
    state = render(make_fleet(), "depot-1")
    assert state["metadata"]["groups"] == []
    assert list(state["spec"]["components"]) == ["app"]
    assert state["spec"]["components"]["app"]["artifact"] == "app@1.0.0"


def test_equal_priority_groups_merge_in_name_order(make_fleet: FleetFactory) -> None:
    other = (
        "apiVersion: edgefleet/v1\nkind: Group\nmetadata: {name: aaa}\nspec:\n  priority: 10\n"
        "  selector: {matchLabels: {tier: store}}\n  components:\n"
        "    model: {hooks: {activate: [/bin/reload]}}\n"
    )
    state = render(make_fleet({"groups/aaa.yaml": other}), "store-2")
    assert state["metadata"]["groups"] == ["aaa", "models"]
    assert state["spec"]["components"]["model"]["hooks"] == {"activate": ["/bin/reload"]}


def test_render_removing_a_component(make_fleet: FleetFactory) -> None:
    root = make_fleet(
        {
            "nodes/store-2.yaml": node_yaml(
                "store-2", "{tier: store}", "  components:\n    app: null\n"
            )
        }
    )
    assert list(render(root, "store-2")["spec"]["components"]) == ["model"]


def test_render_cli_json_and_yaml(
    make_fleet: FleetFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_fleet()
    assert main(["render", "store-2", "--repo", str(root), "--format", "json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert main(["render", "store-2", "--repo", str(root)]) == 0
    import yaml

    assert yaml.safe_load(capsys.readouterr().out) == as_json


def test_render_unknown_node_is_a_clear_error(
    make_fleet: FleetFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["render", "store-404", "--repo", str(make_fleet())]) == 1
    err = capsys.readouterr().err
    assert "node 'store-404'" in err and "expected one of the repository's nodes" in err


def test_render_refuses_an_invalid_repository(
    make_fleet: FleetFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_fleet({"golden/in.npy": None})
    assert main(["render", "store-2", "--repo", str(root)]) == 1
    err = capsys.readouterr().err
    assert f"{root / 'groups/models.yaml'}:14:" in err and "cannot render store-2" in err


# --- properties ------------------------------------------------------------------------------

keys = st.sampled_from(["a", "b", "c", "d"])
leaves = st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2))
trees = st.recursive(
    st.dictionaries(keys, st.one_of(leaves, st.none()), max_size=3),
    lambda inner: st.dictionaries(keys, st.one_of(leaves, st.none(), inner), max_size=3),
    max_leaves=12,
)


def leaf_paths(
    tree: dict[str, Any], prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], Any]]:
    out: list[tuple[tuple[str, ...], Any]] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out.extend(leaf_paths(value, (*prefix, key)))
        else:
            out.append(((*prefix, key), value))
    return out


def lookup(tree: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return False, None
        tree = tree[key]
    return True, tree


@settings(max_examples=300, deadline=None)
@given(st.lists(trees, max_size=4), trees)
def test_rendering_is_deterministic_and_the_node_always_wins(
    layers: list[dict[str, Any]], node: dict[str, Any]
) -> None:
    first = merge_layers([*layers, node])
    again = merge_layers(json.loads(json.dumps([*layers, node])))
    assert first == again
    assert json.dumps(first, sort_keys=True) == json.dumps(again, sort_keys=True)
    for path, value in leaf_paths(node):
        found, got = lookup(first, path)
        if value is None:
            assert not found, f"{path} set to null by the node must be absent"
        else:
            assert found and got == value, f"{path}: the node's own setting must win"
    assert "None" not in json.dumps(first) and None not in [v for _, v in leaf_paths(first)]


@given(trees, trees)
def test_merge_with_empty_overlay_only_drops_nulls(
    base: dict[str, Any], other: dict[str, Any]
) -> None:
    once = merge({}, base)
    assert merge(once, {}) == once
    assert merge(merge(once, other), other) == merge(once, other)  # idempotent overlay


@pytest.mark.parametrize("bad", ["../fleet", "../../etc/passwd", "Store-1", "a/b"])
def test_render_refuses_a_node_id_that_is_not_one(
    bad: str, make_fleet: FleetFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["render", bad, "--repo", str(make_fleet())]) == 2
    assert "expected a DNS label" in capsys.readouterr().err


def test_unknown_node_lists_some_known_ones(
    make_fleet: FleetFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["render", "store-404", "--repo", str(make_fleet())]) == 1
    assert "(depot-1, store-1, store-2)" in capsys.readouterr().err
