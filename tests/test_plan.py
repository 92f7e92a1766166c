"""`edgefleet plan`: real git repositories, two commits, the real command line.

The small fleet of tests/conftest.py: store-1 (canary, store), store-2 (stable, store) and
depot-1 (warehouse); fleet.yaml gives every node app@1.0.0, groups/canary.yaml app@1.1.0 to
the canary ring (a 90-byte patch from 1.0.0 is offered), groups/models.yaml model@1.0.0 to
stores. Waves: canary by selector, then all at 100 %.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import git
import pytest

from reconciler.change_plan import format_bytes
from reconciler.commands.plan import Differing, Tree, base_repo
from reconciler.commands.trust import write_signers
from reconciler.status_source import cat_batch, open_status_repo
from reconciler.trust_root import parse_root
from reconciler.validate import validate
from tests.agent_testing import LiveFleet
from tests.conftest import CATALOG, D1, D2, D3, GROUP_MODELS, node_yaml, write_files
from tests.status_testing import converged_status, put_status
from tests.status_testing import git as git_in
from tests.trust_testing import FleetRepository, git_commit

EDGEFLEET = Path(sys.executable).parent / "edgefleet"
D5, D6, D7 = "5" * 64, "6" * 64, "7" * 64

# Two more artifacts: sensor (new component) and model@1.1.0 with a 400-byte patch from 1.0.0.
MORE_ARTIFACTS = f"""\
    sensor@1.0.0:
      file: sensor.bin
      sha256: "{D5}"
      size: 700
      url: sha256/{D5}
    model@1.1.0:
      file: model.onnx
      sha256: "{D6}"
      size: 5200
      url: sha256/{D6}
      deltas:
        - from: "{D3}"
          format: zstd-patch
          sha256: "{D7}"
          size: 400
          url: sha256/{D7}
"""


def edgefleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EDGEFLEET), *args], capture_output=True, text=True, check=False, timeout=120
    )


def plan(repo: Path, *args: str, fmt: str = "json", base: str = "HEAD~1") -> tuple[int, str]:
    done = edgefleet("plan", "--repo", str(repo), "--base", base, "--format", fmt, *args)
    assert done.returncode in (0, 1), done.stderr
    assert done.stderr == "", done.stderr
    return done.returncode, done.stdout


def plan_json(repo: Path, *args: str, base: str = "HEAD~1") -> tuple[int, dict[str, Any]]:
    code, out = plan(repo, *args, base=base)
    doc: dict[str, Any] = json.loads(out)
    return code, doc


def by_node(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["node"]: n for n in doc["nodes"]}


def components(node: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in node["components"]}


def change(fleet: FleetRepository, files: dict[str, str | None], message: str) -> str:
    """Write (None: delete) files, regenerate trust/allowed_signers, commit."""
    write_files(fleet.path, {k: v for k, v in files.items() if v is not None})
    for path, text in files.items():
        if text is None:
            (fleet.path / path).unlink()
    root = parse_root((fleet.path / "trust" / "root.json").read_bytes())
    write_signers(fleet.path, root)
    return git_commit(fleet.repo, message)


@pytest.fixture
def fleet(tmp_path: Path) -> FleetRepository:
    """The small fleet with a trust root, committed, then a commit adding two artifacts."""
    repo = FleetRepository(tmp_path / "fleet")
    change(repo, {"artifacts.yaml": CATALOG + MORE_ARTIFACTS}, "more artifacts")
    return repo


def read(fleet: FleetRepository, path: str) -> str:
    return (fleet.path / path).read_text()


# --- additions, removals, a group, a node ----------------------------------------------------


def test_an_added_node_and_an_added_component_move_their_artifacts_in_full(
    fleet: FleetRepository,
) -> None:
    change(
        fleet,
        {
            "nodes/store-3.yaml": node_yaml("store-3", "{tier: store, ring: stable}"),
            "groups/models.yaml": GROUP_MODELS + "    sensor:\n      artifact: sensor@1.0.0\n",
        },
        "a new store, and a sensor on every store",
    )
    code, doc = plan_json(fleet.path)
    assert code == 0
    s = doc["summary"]
    assert (s["nodesChanging"], s["nodesAdded"], s["nodesChanged"], s["nodesRemoved"]) == (
        3,
        1,
        2,
        0,
    )
    assert (s["patchBytes"], s["fullBytes"], s["allFullBytes"]) == (0, 1000 + 5000 + 700 * 3, 8100)
    nodes = by_node(doc)
    assert sorted(nodes) == ["store-1", "store-2", "store-3"]  # depot-1 is no store
    new = nodes["store-3"]
    assert new["change"] == "added"
    assert new["groups"] == ["models"]
    assert {n: (c["change"], c["to"]["artifact"], c["transfer"]["bytes"]) for n, c in
            components(new).items()} == {
        "app": ("added", "app@1.0.0", 1000),
        "model": ("added", "model@1.0.0", 5000),
        "sensor": ("added", "sensor@1.0.0", 700),
    }  # fmt: skip
    assert components(new)["model"]["to"]["sha256"] == D3
    assert components(new)["model"]["transfer"]["base"] == {"source": "none", "sha256": None}
    for name in ("store-1", "store-2"):
        only = components(nodes[name])
        assert list(only) == ["sensor"]
        assert only["sensor"]["change"] == "added"
        assert only["sensor"]["from"] is None
        assert only["sensor"]["to"] == {"artifact": "sensor@1.0.0", "sha256": D5, "size": 700}
        assert nodes[name]["causes"] == ["groups/models.yaml"]
    assert nodes["store-3"]["causes"] == ["groups/models.yaml", "nodes/store-3.yaml"]
    files = {f["path"]: f["change"] for f in doc["files"]}
    assert files["nodes/store-3.yaml"] == "added"
    assert files["groups/models.yaml"] == "modified"
    assert "artifacts.yaml" not in files  # the fixture's second commit added sensor
    groups = {g["name"]: g for g in doc["groups"]}
    assert groups["models"]["fileChange"] == "modified"
    assert (groups["models"]["selected"], groups["models"]["nodesChanging"]) == (3, 3)
    assert groups["models"]["bytes"] == 8100
    assert "canary" not in groups  # store-1 changed through models, not canary
    waves = {w["name"]: w for w in doc["waves"]}
    assert waves["canary"]["nodesChanging"] == 1  # store-1, by its ring label: exact
    assert waves["all"]["kind"] == "percent"
    assert waves["all"]["expectedDrawn"] == 2.0  # store-2 and store-3, drawn at signing
    assert waves["all"]["expectedFleetNodes"] == 4
    assert nodes["store-1"]["wave"] == "canary"
    assert nodes["store-3"]["wave"] is None
    assert nodes["store-3"]["drawn"] == {"all": 1.0}


def test_a_removed_node_and_a_removed_component_move_nothing(fleet: FleetRepository) -> None:
    models = GROUP_MODELS.split("  components:")[0]
    change(
        fleet,
        {"nodes/depot-1.yaml": None, "groups/models.yaml": models},
        "retire the depot; no more models",
    )
    code, doc = plan_json(fleet.path)
    assert code == 0
    s = doc["summary"]
    assert (s["nodesChanging"], s["nodesRemoved"], s["nodesChanged"]) == (3, 1, 2)
    assert (s["patchBytes"], s["fullBytes"], s["allFullBytes"]) == (0, 0, 0)
    nodes = by_node(doc)
    assert nodes["depot-1"]["change"] == "removed"
    assert components(nodes["depot-1"])["app"]["change"] == "removed"
    assert components(nodes["depot-1"])["app"]["from"]["artifact"] == "app@1.0.0"
    for name in ("store-1", "store-2"):
        model = components(nodes[name])["model"]
        assert (model["change"], model["from"]["artifact"], model["to"]) == (
            "removed",
            "model@1.0.0",
            None,
        )
        assert model["transfer"] is None
    _, text = plan(fleet.path, fmt="text")
    assert "depot-1: removed from the fleet (- app@1.0.0)" in text
    assert "store-2: - model@1.0.0" in text
    _, markdown = plan(fleet.path, fmt="markdown")
    # store-1 and store-2 count under models, whose file changed; depot-1 is in no group.
    assert markdown.splitlines()[1] == (
        "**3 nodes change** (1 removed) in 1 group (canary wave: 1; 1 drawn when the release is"
        " signed) · no bytes to move · ✅ valid"
    )
    assert "| (no group) | 1 | | 0 B |" in markdown  # depot-1 matched no group


@pytest.fixture
def many(fleet: FleetRepository) -> FleetRepository:
    """Twenty more stores, committed."""
    stores = {
        f"nodes/shop-{i:02d}.yaml": node_yaml(f"shop-{i:02d}", "{tier: store, ring: stable}")
        for i in range(20)
    }
    change(fleet, dict(stores), "twenty shops")
    return fleet


def test_a_group_change_touches_every_node_the_group_selects(many: FleetRepository) -> None:
    change(
        many,
        {"groups/models.yaml": read(many, "groups/models.yaml").replace("@1.0.0", "@1.1.0")},
        "model 1.1.0 for stores",
    )
    code, doc = plan_json(many.path)
    assert code == 0
    s = doc["summary"]
    assert s["nodesChanging"] == s["nodesChanged"] == 22
    # Without status, each store runs what the base renders: model@1.0.0, which the catalog
    # has a 400-byte patch from.
    assert (s["patches"], s["patchBytes"], s["fullBytes"]) == (22, 22 * 400, 0)
    assert s["allFullBytes"] == 22 * 5200
    # Only the nodes the changed group selects were rendered: depot-1 is known unchanged.
    assert s["nodesRendered"] == 22
    assert "depot-1" not in by_node(doc)
    model = components(by_node(doc)["shop-07"])["model"]
    assert model["change"] == "changed"
    assert model["from"] == {"artifact": "model@1.0.0", "sha256": D3, "size": 5000}
    assert model["to"] == {"artifact": "model@1.1.0", "sha256": D6, "size": 5200}
    assert model["transfer"]["patch"] == {"format": "zstd-patch", "from": D3}
    assert model["transfer"]["base"] == {"source": "base", "sha256": D3}
    [row] = [g for g in doc["groups"] if g["nodesChanging"]]
    assert (row["name"], row["selected"], row["nodesChanging"], row["bytes"]) == (
        "models",
        22,
        22,
        8800,
    )
    assert row["components"] == [{"change": "model 1.0.0 → 1.1.0", "nodes": 22}]
    [summary] = doc["components"]
    assert (summary["nodes"], summary["patches"], summary["full"]) == (22, 22, 0)

    code, markdown = plan(many.path, fmt="markdown")
    assert code == 0
    lines = markdown.splitlines()
    assert lines[0] == "<!-- edgefleet-plan -->"
    assert lines[1] == (
        "**22 nodes change** in 1 group (canary wave: 1; 21 drawn when the release is signed)"
        " · 8.8 kB in patches, 0 B in full (114.4 kB if all full) · ✅ valid"
    )
    assert "| group | nodes changing | components | bytes |" in lines
    assert "| `models` (modified) | 22 of 22 | model 1.0.0 → 1.1.0 (22) | 8.8 kB |" in lines
    assert "<details><summary>Nodes: 22</summary>" in lines
    assert "- `shop-07` model 1.0.0 → 1.1.0 · 400 B (1 patch)" in lines


def test_a_node_override_changes_that_node_only(fleet: FleetRepository) -> None:
    text = read(fleet, "nodes/store-2.yaml") + "  components:\n    app: {artifact: app@1.1.0}\n"
    change(fleet, {"nodes/store-2.yaml": text}, "store-2 tries app 1.1.0")
    code, doc = plan_json(fleet.path)
    assert code == 0
    assert doc["summary"]["nodesRendered"] == 1
    [node] = doc["nodes"]
    assert (node["node"], node["change"], node["causes"]) == (
        "store-2",
        "changed",
        ["nodes/store-2.yaml"],
    )
    app = components(node)["app"]
    assert (app["from"]["sha256"], app["to"]["sha256"]) == (D1, D2)
    assert app["transfer"] == {
        "bytes": 90,
        "fullBytes": 1100,
        "patch": {"format": "zstd-patch", "from": D1},
        "base": {"source": "base", "sha256": D1},
    }
    s = doc["summary"]
    assert (s["patchBytes"], s["fullBytes"], s["allFullBytes"]) == (90, 0, 1100)
    _, text_out = plan(fleet.path, fmt="text")
    assert "  store-2: app 1.0.0 → 1.1.0 · 90 B (1 patch)" in text_out.splitlines()


def test_hooks_only_change_every_node_and_move_no_bytes(fleet: FleetRepository) -> None:
    fleet_yaml = read(fleet, "fleet.yaml").replace("restart, app]", "reload, app]")
    change(fleet, {"fleet.yaml": fleet_yaml}, "reload instead of restart")
    code, doc = plan_json(fleet.path)
    assert code == 0
    assert doc["summary"]["nodesRendered"] == 3
    assert sorted(by_node(doc)) == ["depot-1", "store-1", "store-2"]
    for node in doc["nodes"]:
        [app] = node["components"]
        assert (app["name"], app["change"], app["parts"], app["transfer"]) == (
            "app",
            "config",
            ["hooks"],
            None,
        )
    assert doc["summary"]["allFullBytes"] == 0
    assert doc["summary"]["nodesConfigOnly"] == 3
    _, markdown = plan(fleet.path, fmt="markdown")
    assert markdown.splitlines()[1].startswith(
        "**3 nodes change** (3 only in checks, hooks or labels) in 2 groups"
    )


def test_a_catalog_entry_that_keeps_its_bytes_changes_no_node(fleet: FleetRepository) -> None:
    catalog = read(fleet, "artifacts.yaml").replace(
        f"url: sha256/{D2}\n", f"url: https://mirror.example.net/{D2}\n      description: x\n"
    )
    change(fleet, {"artifacts.yaml": catalog}, "app 1.1.0 from a mirror")
    code, doc = plan_json(fleet.path)
    assert code == 0
    assert doc["nodes"] == []
    # Only store-1 (canary) names app@1.1.0: the only node rendered at both commits.
    assert doc["summary"]["nodesRendered"] == 1
    assert doc["files"] == [{"path": "artifacts.yaml", "change": "modified"}]


# --- status: which base each node really runs ------------------------------------------------


def status_doc(fleet: LiveFleet, node: str, ref: str, digest: str) -> dict[str, Any]:
    """A converged status of release 1 that says which app the node runs."""
    app = {"artifact": ref, "sha256": digest, "bank": "a", "health": "ok"}
    return converged_status(fleet, node, {"app": app})


def test_signed_status_decides_between_patch_and_full(tmp_path: Path) -> None:
    fleet = LiveFleet(tmp_path, nodes=("edge-1", "edge-2", "edge-3", "edge-4"))
    fleet.standard()
    old, new = fleet.app("0.9.0"), fleet.app("1.1.0", padding=3000)
    fleet.publish()  # release 1: app@1.0.0 everywhere
    current = fleet.artifacts["app@1.0.0"]
    keys = fleet.node_keys
    # edge-1 runs 1.0.0, edge-2 was left on 0.9.0, edge-4 already runs 1.1.0 (as a pilot);
    # edge-3's head is signed by edge-1's key: a forgery, not believed.
    put_status(
        fleet, "edge-1", status_doc(fleet, "edge-1", current.ref, current.digest), keys["edge-1"]
    )
    put_status(fleet, "edge-2", status_doc(fleet, "edge-2", old.ref, old.digest), keys["edge-2"])
    put_status(fleet, "edge-3", status_doc(fleet, "edge-3", old.ref, old.digest), keys["edge-1"])
    put_status(fleet, "edge-4", status_doc(fleet, "edge-4", new.ref, new.digest), keys["edge-4"])
    git_in(
        Path(fleet.repo.git_dir), "fetch", "-q", "origin",
        "+refs/heads/status/*:refs/remotes/origin/status/*",
    )  # fmt: skip

    patch = fleet.add_delta("app@1.1.0", "app@1.0.0")
    fleet.use(
        "app", "app@1.1.0", **{k: v for k, v in fleet.components["app"].items() if k != "artifact"}
    )
    fleet.write()
    git_commit(fleet.repo, "app 1.1.0, with a patch from 1.0.0")  # the pull request

    code, doc = plan_json(fleet.path)
    assert code == 0, doc["problems"]
    nodes = by_node(doc)
    assert sorted(nodes) == ["edge-1", "edge-2", "edge-3", "edge-4"]
    apps = {n: components(nodes[n])["app"] for n in nodes}
    size = len(new.data)
    assert patch["size"] < size
    assert apps["edge-1"]["transfer"] == {
        "bytes": patch["size"],
        "fullBytes": size,
        "patch": {"format": patch["format"], "from": current.digest},
        "base": {"source": "status", "sha256": current.digest},
    }
    assert apps["edge-2"]["transfer"] == {
        "bytes": size,
        "fullBytes": size,
        "patch": None,
        "base": {"source": "status", "sha256": old.digest},
    }
    # The forged head is not used: edge-3 is assumed to run what the base commit renders.
    assert apps["edge-3"]["transfer"]["base"] == {"source": "base", "sha256": current.digest}
    assert apps["edge-3"]["transfer"]["bytes"] == patch["size"]
    assert "edge-3" in doc["untrustedStatus"]
    assert nodes["edge-3"]["status"] == doc["untrustedStatus"]["edge-3"]
    assert nodes["edge-1"]["status"] == "trusted"
    assert (apps["edge-4"]["transfer"], apps["edge-4"]["alreadyRunning"]) == (None, True)
    s = doc["summary"]
    assert (s["patches"], s["patchBytes"]) == (2, 2 * patch["size"])
    assert (s["fullTransfers"], s["fullBytes"]) == (1, size)
    assert s["allFullBytes"] == 3 * size
    assert s["untrustedStatus"] == 1

    _, markdown = plan(fleet.path, fmt="markdown")
    summary = markdown.splitlines()[1]
    assert (
        f"{format_bytes(2 * patch['size'])} in patches, {format_bytes(size)} in full"
        f" ({format_bytes(3 * size)} if all full)"
    ) in summary
    assert "<details><summary>Status heads not trusted: 1" in markdown


# --- a head that fails validation ------------------------------------------------------------


def test_a_head_that_fails_validation_exits_1_and_says_so_first(fleet: FleetRepository) -> None:
    canary = read(fleet, "groups/canary.yaml").replace("app@1.1.0", "app@9.9.9")
    change(
        fleet,
        {"groups/canary.yaml": canary, "nodes/depot-1.yaml": "metadata: [\n"},
        "a typo and a broken file",
    )
    code, doc = plan_json(fleet.path)
    assert code == 1
    assert doc["summary"]["valid"] is False
    errors = [p for p in doc["problems"] if p["severity"] == "error"]
    # As `edgefleet validate` shows them: under the repository as --repo named it.
    where = {(str(Path(p["file"]).relative_to(fleet.path)), p["rule"]) for p in errors}
    assert ("groups/canary.yaml", "unknown-artifact") in where
    assert ("nodes/depot-1.yaml", "yaml") in where
    nodes = by_node(doc)
    assert nodes["store-1"]["change"] == "unrenderable"
    assert "app@9.9.9" in nodes["store-1"]["error"]
    assert nodes["depot-1"]["change"] == "unrenderable"
    assert nodes["depot-1"]["error"] == "nodes/depot-1.yaml fails validation"
    assert "store-2" not in nodes  # renders the same at both commits
    assert doc["summary"]["nodesUnrenderable"] == 2

    code, text = plan(fleet.path, fmt="text")
    assert code == 1
    lines = text.splitlines()
    assert lines[1] == f"THE HEAD FAILS VALIDATION: {len(errors)} errors (listed under problems)"
    canary = str(fleet.path / "groups" / "canary.yaml")
    canary_line = next(p["line"] for p in errors if p["file"] == canary)
    assert f"  {canary}:{canary_line}: spec.components.app.artifact: got" in text
    assert "  depot-1: cannot be rendered at head: nodes/depot-1.yaml fails validation" in lines

    code, markdown = plan(fleet.path, fmt="markdown")
    assert code == 1
    lines = markdown.splitlines()
    assert lines[1].startswith(f"❌ **The head fails validation: {len(errors)} errors.**")
    assert f"❌ {len(errors)} errors" in lines[3]
    assert "2 nodes cannot be rendered" in lines[3]
    assert f"<details open><summary>Validation: ❌ {len(errors)} errors</summary>" in lines
    assert any(line.startswith(f"- `{canary}:{canary_line}`") for line in lines)


def test_a_broken_shared_file_makes_every_node_unrenderable_not_a_crash(
    fleet: FleetRepository,
) -> None:
    models = read(fleet, "groups/models.yaml").replace("priority: 10", "priority: ten")
    change(fleet, {"groups/models.yaml": models}, "a schema error in a group")
    code, doc = plan_json(fleet.path)
    assert code == 1
    assert [(n["node"], n["change"], n["error"]) for n in doc["nodes"]] == [
        (name, "unrenderable", "groups/models.yaml fails validation")
        for name in ("depot-1", "store-1", "store-2")
    ]
    assert doc["summary"]["nodesChanging"] == 0


def test_usage_errors_exit_2(fleet: FleetRepository, tmp_path: Path) -> None:
    done = edgefleet("plan", "--repo", str(fleet.path), "--base", "no-such-branch")
    assert done.returncode == 2
    assert "--base: got 'no-such-branch', which is not a commit" in done.stderr
    done = edgefleet("plan", "--repo", str(fleet.path), "--base", "HEAD", "--head", "nope")
    assert done.returncode == 2
    assert "--head: got 'nope'" in done.stderr
    (tmp_path / "plain").mkdir()
    done = edgefleet("plan", "--repo", str(tmp_path / "plain"), "--base", "HEAD")
    assert done.returncode == 2
    assert "not a git repository" in done.stderr
    done = edgefleet("plan", "--repo", str(fleet.path))
    assert done.returncode == 2
    assert "--base" in done.stderr


def test_no_change_is_a_plan_too(fleet: FleetRepository) -> None:
    git_commit(fleet.repo, "nothing")
    code, markdown = plan(fleet.path, fmt="markdown")
    assert code == 0
    assert markdown.splitlines()[1] == "**No node changes** · no bytes to move · ✅ valid"


# --- parsing once ----------------------------------------------------------------------------


def test_a_file_with_the_same_blob_at_both_commits_is_parsed_once(
    fleet: FleetRepository,
) -> None:
    text = read(fleet, "nodes/store-2.yaml") + "  components:\n    app: {artifact: app@1.1.0}\n"
    change(fleet, {"nodes/store-2.yaml": text}, "store-2 tries app 1.1.0")
    repo = git.Repo(fleet.path)
    blobs: dict[str, bytes] = {}
    base, head = Tree(repo, "HEAD~1", "--base", blobs), Tree(repo, "HEAD", "--head", blobs)
    shas = sorted({head.blob(p) or "" for p in head.documents()} - {""})
    found = cat_batch(open_status_repo(str(fleet.path), fetch=False), shas)
    blobs.update((sha, data) for sha, data in zip(shas, found, strict=True) if data is not None)
    differing = Differing(base, head)
    assert differing.paths == {"nodes/store-2.yaml"}
    report = validate(head)
    before = base_repo(base, differing, report.repo)
    head_nodes = {n.file: n for n in report.repo.nodes}
    base_nodes = {n.file: n for n in before.nodes}
    assert base_nodes["nodes/store-1.yaml"] is head_nodes["nodes/store-1.yaml"]
    assert base_nodes["nodes/depot-1.yaml"] is head_nodes["nodes/depot-1.yaml"]
    assert base_nodes["nodes/store-2.yaml"] is not head_nodes["nodes/store-2.yaml"]
    assert "app" not in base_nodes["nodes/store-2.yaml"].components
    assert before.fleet is report.repo.fleet
    assert before.catalog is report.repo.catalog
    assert {g.file for g in before.groups} == {"groups/canary.yaml", "groups/models.yaml"}
    assert all(g in report.repo.groups for g in before.groups)
