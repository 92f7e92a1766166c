"""`edgefleet status --format html` on a real fleet, opened in a real browser (headless
Chromium): the page states what the fleet is, a forged status never looks healthy, the page
needs no network, and its sorting script runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from reconciler.status_html import render_html
from reconciler.timestamps import format_timestamp, parse_timestamp
from tests.agent_testing import LiveFleet, NodeAgent
from tests.status_testing import git, put_status

EDGEFLEET = Path(sys.executable).parent / "edgefleet"
# The forged status claims a report this much older than edge-1's, so sorting by age shows.
FORGED_LAG = 100


def forge_status(fleet: LiveFleet) -> None:
    """status/edge-2 in the origin: a valid status document for edge-2, signed by edge-1."""
    doc = json.loads(git(fleet.origin, "show", "status/edge-1:status.json"))
    observed = parse_timestamp(doc["observedAt"]) - timedelta(seconds=FORGED_LAG)
    doc.update(node="edge-2", observedAt=format_timestamp(observed))
    put_status(fleet, "edge-2", doc, fleet.node_keys["edge-1"], when=observed)


class Page(HTMLParser):
    """What a test reads from a dumped DOM: the elements with an id, the release bars, the
    state chart's bars and the node rows, each as its attributes plus its text ("text")."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str] = {}
        self.by_id: dict[str, dict[str, str]] = {}
        self.releases: dict[str, dict[str, str]] = {}
        self.bars: dict[str, int] = {}
        self.rows: list[dict[str, str]] = []
        # [tag, how many of that tag are open inside it, record] of each element being read.
        self._reading: list[tuple[str, list[int], dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for open_tag, depth, _ in self._reading:
            if open_tag == tag:
                depth[0] += 1
        record = {k: v or "" for k, v in attrs}
        record["text"] = ""
        classes = record.get("class", "").split()
        wanted = False
        if tag == "body":
            self.body = record
        if "id" in record:
            self.by_id[record["id"]] = record
            wanted = True
        if "release-progress" in classes:
            self.releases[record["data-version"]] = record
            wanted = True
        if "state-bar" in classes:
            self.bars[record["data-state"]] = int(record["data-count"])
        if tag == "tr" and "data-node" in record:
            self.rows.append(record)
            wanted = True
        if wanted:
            self._reading.append((tag, [1], record))

    def handle_endtag(self, tag: str) -> None:
        for open_tag, depth, _ in self._reading:
            if open_tag == tag:
                depth[0] -= 1
        self._reading = [r for r in self._reading if r[1][0] > 0]

    def handle_data(self, data: str) -> None:
        for _, _, record in self._reading:
            record["text"] += data


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("no chromium on PATH: .ci/run installs Debian's chromium package for this test")
    return found


def dump_dom(page: Path, fragment: str = "") -> str:
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [
                chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={profile}",
                "--dump-dom",
                page.as_uri() + fragment,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    return done.stdout


def write_page(fleet: LiveFleet, out: Path) -> str:
    """The page the real command line writes for this fleet."""
    argv = ["status", "--repo", str(fleet.path), "--format", "html", "--out", str(out)]
    done = subprocess.run(
        [str(EDGEFLEET), *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return out.read_text()


def parse(dom: str) -> Page:
    page = Page()
    page.feed(dom)
    page.close()
    return page


def test_html_page_shows_the_fleet_and_marks_forged_status(tmp_path: Path) -> None:
    fleet = LiveFleet(tmp_path)
    fleet.standard()
    fleet.publish()
    code, info = NodeAgent(fleet, "edge-1").once()
    assert code == 0 and info["release"] == 1, info
    out = tmp_path / "page.html"

    before = Page()
    before.feed(write_page(fleet, out))
    assert {r["data-node"]: r["data-state"] for r in before.rows} == {
        "edge-1": "converged",
        "edge-2": "unreported",
    }
    assert "flagged" in before.rows[1]["class"].split()
    assert before.bars == {"converged": 1, "unreported": 1}

    forge_status(fleet)
    source = write_page(fleet, out)
    # Self-contained: nothing is fetched, from anywhere.
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?:""", source, re.I)
    assert "://" not in source and "url(" not in source

    # Opened sorted by last report, newest last: the script ran, and sorted by number.
    page = parse(dump_dom(out, "#sort=-age"))
    assert page.body.get("data-ready") == "1", "the page's script did not run to its end"
    assert [r["data-node"] for r in page.rows] == ["edge-2", "edge-1"]

    summary = page.by_id["summary"]
    assert (summary["data-nodes"], summary["data-healthy"]) == ("2", "1")
    assert re.search(r"\b2 nodes\b.*\b1 healthy\b", summary["text"]), summary["text"]

    rows = {r["data-node"]: r for r in page.rows}
    assert rows["edge-1"]["data-state"] == "converged"
    assert rows["edge-1"]["data-healthy"] == "true"
    assert "converged" in rows["edge-1"]["text"]
    forged = rows["edge-2"]
    assert forged["data-state"] == "unverified" and forged["data-healthy"] == "false"
    assert "flagged" in forged["class"].split()
    assert "unverified" in forged["text"] and "converged" not in forged["text"]
    assert "\u26a0" in forged["text"]

    assert page.bars == {"converged": 1, "unverified": 1}
    release = page.releases["1"]
    assert (release["data-converged"], release["data-nodes"]) == ("1", "2")
    assert "1 of 2 converged" in release["text"], release["text"]

    by_name = parse(dump_dom(out, "#sort=-node"))
    assert by_name.body.get("data-ready") == "1"
    assert [r["data-node"] for r in by_name.rows] == ["edge-2", "edge-1"]


def test_report_values_are_text_never_markup() -> None:
    hostile = '<script>alert("x")</script>'
    node = {
        "node": "edge-1",
        "shown": "rolled-back",
        "release": 1,
        "expected": 2,
        "target": 2,
        "components": {"app": {"artifact": hostile, "bank": "a", "health": "failed"}},
        "lastError": {"release": 2, "reason": hostile, "at": "2026-11-23T00:00:00Z"},
        "observedAt": "2026-11-23T00:00:00Z",
        "ageSeconds": 5.0,
        "problem": None,
    }
    report = {
        "fleet": hostile,
        "repo": hostile,
        "generatedAt": "2026-11-23T00:00:05Z",
        "expectedRelease": 2,
        "summary": {
            "nodes": 1,
            "healthy": 0,
            "onExpected": 0,
            "expectedRelease": 2,
            "byState": {"rolled-back": 1},
        },
        "releases": [
            {"version": 2, "commit": None, "nodes": 1, "converged": 0, "targeting": 1, "failed": 1}
        ],
        "nodes": [node],
    }
    text = render_html(report)
    assert "<script>" in text and text.count("<script") == 1
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    page = Page()
    page.feed(text)
    assert page.rows[0]["data-state"] == "rolled-back" and page.rows[0]["data-healthy"] == "false"
    assert hostile in page.rows[0]["text"]
    assert page.releases["2"]["data-failed"] == "1"
