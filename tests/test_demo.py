"""`edgefleet demo`, the README's main command: the whole story, exit 0, readable output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

EDGEFLEET = Path(sys.executable).with_name("edgefleet")


def test_demo_tells_the_whole_story(tmp_path: Path) -> None:
    base = tmp_path / "demo"
    done = subprocess.run(
        [str(EDGEFLEET), "demo", "--dir", str(base)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for expected in (
        "signed release 1 for every node",
        "signed release 2 for wave canary (baseline release 1)",
        "rolled-back",
        "got max |diff|",
        "outside the canary wave, nothing was downloaded: store-0101 0 bytes, wh-venlo-01 0 bytes",
        "gate: halt: wave canary of release 2",
        "halted: release 3 sends every node back to release 1's commit",
        "signed release 4 for every node",
        "every node converged on release 4",
        "anomaly-model arrived as a",  # a patch from the model the node ran
    ):
        assert expected in out, expected
    # What the story claims is what the nodes' journals say.
    for node in ("store-0042", "store-0101", "wh-venlo-01"):
        journal = json.loads((base / "nodes" / node / "state" / "state.json").read_text())
        assert journal["release"] == 4 and journal["state"] == "converged", node
        # Only the canary ever tried release 2; the others never fetched the broken model.
        assert ("2" in journal["failed"]) == (node == "store-0042"), node
    journal = json.loads((base / "nodes" / "store-0042" / "state" / "state.json").read_text())
    assert "max |diff|" in journal["failed"]["2"]["reason"]
    journal = json.loads((base / "nodes" / "store-0101" / "state" / "state.json").read_text())
    model = base / "nodes" / "store-0101" / "state" / "components" / "anomaly-model"
    assert str((model / "current").readlink()) == "b"
    transfer = journal["transfer"]
    assert transfer["patches"]["anomaly-model"]["bytes"] < transfer["fullBytes"] / 10
    log = (base / "nodes" / "store-0042" / "agent.log").read_text().splitlines()
    assert any(json.loads(line)["event"] == "rollback.done" for line in log)
    # The demo ends with the fleet table and the audit timeline, read from the status branches.
    table = out.split("edgefleet status:", 1)[1].split("edgefleet audit:", 1)[0]
    status_lines = {
        cells[0]: cells[1]
        for cells in (line.split() for line in table.splitlines()[1:])
        if cells and cells[0] in ("store-0042", "store-0101", "wh-venlo-01")
    }
    assert status_lines == dict.fromkeys(("store-0042", "store-0101", "wh-venlo-01"), "converged")
    assert "store-0042 rolled back release 2 to 1" in out
    assert "0 problem(s); every signature checked" in out
    origin = base / "origin.git"
    branches = subprocess.run(
        ["git", "--git-dir", str(origin), "for-each-ref", "--format=%(refname)", "refs/heads/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {"refs/heads/audit", "refs/heads/status/store-0101"} <= set(branches)


def test_demo_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("mine\\n")
    done = subprocess.run(
        [str(EDGEFLEET), "demo", "--dir", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "not empty" in done.stderr
    assert (tmp_path / "something").read_text() == "mine\\n"
