"""`edgefleet status --format html`: the fleet report as one self-contained page; no I/O.

The page has a progress bar for each release (converged and failed nodes as shares of the
fleet), a bar chart of nodes per shown state, and a node table sorted by clicking a column
header. It decides only how things look:

* no value from the report is markup: every one is escaped, and the page loads nothing (its
  Content-Security-Policy forbids any fetch), so it opens offline and a node id or an error
  reason cannot inject anything;
* a node is drawn healthy only when shown ``converged``; ``unverified``, ``stale`` and
  ``unreported`` rows carry a warning marker, and an unverified node's release, components and
  report time are drawn as claims, since no key of the node vouches for them;
* the table opens sorted as the fragment ``#sort=<column>`` (``#sort=-<column>`` descending)
  says, so a sorted view can be bookmarked; clicking a header sets it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape
from typing import Any

from reconciler.fleet_status import SHOWN_STATES, span

# States whose row values cannot be taken as the node's current truth, with why for the marker.
FLAGGED = {
    "unverified": "status not signed by this node's key: its values are claims, not facts",
    "stale": "no report within heartbeat + 3 polls: the node may have stopped",
    "unreported": "no status branch yet: the node never reported",
}
# Sorting the state column puts the states that need someone first, healthy last.
STATE_RANK = (
    "rejected",
    "rolled-back",
    "unverified",
    "stale",
    "offline",
    "unreported",
    "deferred",
    "applying",
    "new",
    "converged",
)
COLUMNS = (
    ("node", "Node", "text"),
    ("state", "State", "number"),
    ("release", "Release", "number"),
    ("expected", "Should run", "number"),
    ("age", "Last report", "number"),
    ("components", "Components", "text"),
    ("error", "Last error / problem", "text"),
)
CHART_LABEL = 120
CHART_BAR = 400
CHART_ROW = 24

STYLE = """
:root { font-family: system-ui, sans-serif; color: #1b1f23; background: #fff; }
body { margin: 1.5rem auto; max-width: 80rem; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; }
h2 { margin-top: 2rem; font-size: 1.2rem; }
.generated, footer { color: #57606a; font-size: 0.9rem; }
#summary { font-size: 1.1rem; }
.state-converged { --c: #2e7d32; }
.state-applying { --c: #1565c0; }
.state-new { --c: #5c9ded; }
.state-deferred { --c: #7b5ea7; }
.state-offline { --c: #6e7781; }
.state-rolled-back { --c: #c62828; }
.state-rejected { --c: #8e0000; }
.state-stale { --c: #b26a00; }
.state-unverified { --c: #d1242f; }
.state-unreported { --c: #9aa1a8; }
.release-progress { margin: 0.8rem 0; max-width: 40rem; }
.bar { display: flex; height: 1.1rem; background: #e6e8eb; border-radius: 3px;
  overflow: hidden; }
.seg.converged { background: #2e7d32; }
.seg.failed { background: repeating-linear-gradient(45deg, #c62828 0 6px, #e57373 6px 12px); }
.key { display: inline-block; width: 0.8em; height: 0.8em; vertical-align: baseline; }
.key.converged { background: #2e7d32; }
.key.failed { background: #c62828; }
.expected-tag { font-size: 0.8rem; border: 1px solid #57606a; border-radius: 3px;
  padding: 0 0.3em; }
#state-chart text { font-size: 13px; fill: #1b1f23; }
#state-chart rect { fill: var(--c); }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; }
th, td { text-align: left; vertical-align: top; padding: 0.35rem 0.5rem;
  border-bottom: 1px solid #d0d7de; }
th button { font: inherit; font-weight: 600; background: none; border: 0; padding: 0;
  cursor: pointer; }
th[aria-sort="ascending"] button::after { content: " \\25B2"; }
th[aria-sort="descending"] button::after { content: " \\25BC"; }
.badge { display: inline-block; color: #fff; background: var(--c); border-radius: 3px;
  padding: 0 0.4em; white-space: nowrap; }
tr.flagged { background: #fff4e5; }
td:first-child, td time, .badge { white-space: nowrap; }
td:last-child { overflow-wrap: anywhere; }
tbody tr:hover { outline: 1px solid #8c959f; }
tr.state-unverified { background: #ffebe9; }
.marker { font-weight: bold; }
.claim { font-style: italic; color: #6e7781; }
.components { margin: 0; padding: 0; list-style: none; }
.meta { color: #57606a; }
.health-failed, .health-pending, .health-unknown { color: #c62828; font-weight: 600; }
.muted { color: #6e7781; }
"""

SCRIPT = """
(() => {
  "use strict";
  const table = document.getElementById("nodes");
  const body = table.tBodies[0];
  const heads = Array.from(table.tHead.rows[0].cells);
  const value = (row, index, numeric) => {
    const cell = row.cells[index];
    const raw = cell.dataset.value ?? cell.textContent.trim();
    if (!numeric) return raw;
    const n = parseFloat(raw);
    return Number.isNaN(n) ? null : n;
  };
  const sortBy = (key, descending) => {
    const index = heads.findIndex((h) => h.dataset.key === key);
    if (index < 0) return false;
    const numeric = heads[index].dataset.type === "number";
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const x = value(a, index, numeric);
      const y = value(b, index, numeric);
      // A node with no value (never reported) stays last whichever way the column sorts.
      if (x === null || y === null) return (x === null) - (y === null);
      const order = numeric ? x - y : x.localeCompare(y, undefined, { numeric: true });
      return descending ? -order : order;
    });
    rows.forEach((row) => body.appendChild(row));
    heads.forEach((h) => h.setAttribute("aria-sort",
      h === heads[index] ? (descending ? "descending" : "ascending") : "none"));
    return true;
  };
  heads.forEach((h) => h.querySelector("button").addEventListener("click", () => {
    const descending = h.getAttribute("aria-sort") === "ascending";
    if (sortBy(h.dataset.key, descending)) {
      history.replaceState(null, "", "#sort=" + (descending ? "-" : "") + h.dataset.key);
    }
  }));
  const asked = /^#sort=(-?)([a-z]+)$/.exec(location.hash);
  if (asked) sortBy(asked[2], asked[1] === "-");
  document.body.dataset.ready = "1";
})();
"""


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _maybe(value: Any) -> str:
    return "-" if value is None else _e(value)


def _attr(value: Any) -> str:
    return "" if value is None else _e(value)


def _share(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole > 0 else 0.0


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def render_html(report: Mapping[str, Any]) -> str:
    """The whole page for a report as `fleet_report` builds it."""
    fleet = report.get("fleet") or "(unnamed fleet)"
    summary = report["summary"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        # Nothing may be fetched: the page must open offline, and report values never load.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\';'
        " style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(fleet)}: fleet status</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        "<header>",
        f"<h1>{_e(fleet)}</h1>",
        f'<p class="generated">generated <time id="generated">{_e(report["generatedAt"])}'
        f"</time> from {_e(report.get('repo', ''))}</p>",
        _summary(summary),
        "</header>",
        "<section>",
        "<h2>Rollout per release</h2>",
        *_releases(report.get("releases") or [], report.get("expectedRelease")),
        "</section>",
        "<section>",
        "<h2>Nodes per state</h2>",
        _state_chart(summary["byState"], int(summary["nodes"])),
        "</section>",
        "<section>",
        "<h2>Nodes</h2>",
        _node_table(report.get("nodes") or []),
        _legend(),
        "</section>",
        "<footer>written by <code>edgefleet status --format html</code></footer>",
        f"<script>{SCRIPT}</script>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


def _summary(summary: Mapping[str, Any]) -> str:
    nodes = int(summary["nodes"])
    healthy = int(summary["healthy"])
    on_expected = int(summary["onExpected"])
    expected = summary.get("expectedRelease")
    where = (
        f"{on_expected} on the expected release {_e(expected)}"
        if expected is not None
        else "no release published yet"
    )
    return (
        f'<p id="summary" data-nodes="{nodes}" data-healthy="{healthy}"'
        f' data-on-expected="{on_expected}" data-expected-release="{_attr(expected)}">'
        f"{_plural(nodes, 'node')}: {healthy} healthy (converged), {where}.</p>"
    )


def _releases(releases: Iterable[Mapping[str, Any]], expected: Any) -> list[str]:
    out: list[str] = []
    for r in releases:
        version = r["version"]
        nodes = int(r["nodes"])
        converged = int(r["converged"])
        failed = min(int(r["failed"]), max(nodes - converged, 0))
        targeting = int(r["targeting"])
        commit = r.get("commit")
        tag = ' <span class="expected-tag">expected</span>' if version == expected else ""
        code = f' <code title="{_e(commit)}">{_e(str(commit)[:12])}</code>' if commit else ""
        label = f"release {_e(version)}: {converged} of {nodes} converged"
        out.append(
            f'<div class="release-progress" data-version="{_e(version)}"'
            f' data-converged="{converged}" data-failed="{int(r["failed"])}"'
            f' data-targeting="{targeting}" data-nodes="{nodes}">'
            f"<div><strong>Release {_e(version)}</strong>{tag}{code}</div>"
            f'<div class="bar" role="progressbar" aria-valuemin="0" aria-valuemax="{nodes}"'
            f' aria-valuenow="{converged}" aria-label="{label}">'
            f'<span class="seg converged" style="width: {_share(converged, nodes):.2f}%"></span>'
            f'<span class="seg failed" style="width: {_share(failed, nodes):.2f}%"></span>'
            "</div>"
            f'<div class="release-numbers"><span class="key converged"></span>'
            f' <span class="converged-count">{converged} of {nodes} converged</span>'
            f" ({_share(converged, nodes):.0f}%) · {targeting} targeting ·"
            f' <span class="key failed"></span> {int(r["failed"])} failed</div>'
            "</div>"
        )
    if not out:
        out.append('<p class="muted">no release published yet</p>')
    return out


def _state_chart(by_state: Mapping[str, Any], nodes: int) -> str:
    states = [s for s in SHOWN_STATES if by_state.get(s)]
    states += sorted(s for s in by_state if s not in SHOWN_STATES and by_state[s])
    height = max(len(states), 1) * CHART_ROW
    width = CHART_LABEL + 8 + CHART_BAR + 60
    bars: list[str] = []
    for i, state in enumerate(states):
        count = int(by_state[state])
        # Bars are shares of the whole fleet, so one node of a thousand looks like one.
        length = max(CHART_BAR * count / nodes if nodes else 0.0, 2.0)
        bars.append(
            f'<g class="state-bar state-{_e(state)}" data-state="{_e(state)}"'
            f' data-count="{count}" transform="translate(0 {i * CHART_ROW})">'
            f'<text class="state-name" x="{CHART_LABEL}" y="16" text-anchor="end">{_e(state)}'
            f"</text>"
            f'<rect x="{CHART_LABEL + 8}" y="4" width="{length:.1f}" height="16" rx="2"></rect>'
            f'<text class="state-count" x="{CHART_LABEL + 14 + length:.1f}" y="16">{count}</text>'
            "</g>"
        )
    if not bars:
        bars.append('<text x="0" y="16">no nodes</text>')
    return (
        f'<svg id="state-chart" width="{width}"'
        f' height="{height}" viewBox="0 0 {width} {height}" role="img"'
        ' aria-labelledby="state-chart-title">'
        '<title id="state-chart-title">nodes per shown state</title>' + "".join(bars) + "</svg>"
    )


def _node_table(nodes: Iterable[Mapping[str, Any]]) -> str:
    head = "".join(
        f'<th scope="col" data-key="{key}" data-type="{kind}" aria-sort="none">'
        f'<button type="button">{title}</button></th>'
        for key, title, kind in COLUMNS
    )
    rows = "\n".join(_node_row(n) for n in nodes)
    return (
        f'<table id="nodes">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>'
    )


def _node_row(n: Mapping[str, Any]) -> str:
    shown = str(n["shown"])
    flagged = shown in FLAGGED
    # An unverified node's document is not the node's word: show its values as claims only.
    claim = (
        ' class="claim" title="claimed by a status no key of this node signed"'
        if shown == "unverified"
        else ""
    )
    rank = STATE_RANK.index(shown) if shown in STATE_RANK else len(STATE_RANK)
    marker = (
        f'<span class="marker" title="{_e(FLAGGED[shown])}" aria-label="warning">&#9888;</span> '
        if flagged
        else ""
    )
    age = n.get("ageSeconds")
    if n.get("observedAt") is None:
        report = '<span class="muted">never</span>'
    else:
        ago = f" ({span(age)} ago)" if age is not None else ""
        via = f"status/{n['node']}@{str(n.get('head') or '')[:12]} seq {n.get('sequence')}"
        report = f'<time title="{_e(via)}">{_e(n["observedAt"])}</time>{ago}'
    expected = n.get("expected")
    target = n.get("target")
    should = _maybe(expected)
    if target is not None and target != expected:
        should += f' <span class="meta">(node targets {_e(target)})</span>'
    classes = f"node-row state-{_e(shown)}" + (" flagged" if flagged else "")
    healthy = "true" if shown == "converged" else "false"
    cells = [
        f"<td>{_e(n['node'])}</td>",
        f'<td data-value="{rank}"><span class="badge state-{_e(shown)}">{marker}{_e(shown)}'
        "</span></td>",
        f'<td data-value="{_attr(n.get("release"))}"{claim}>{_maybe(n.get("release"))}</td>',
        f'<td data-value="{_attr(expected)}">{should}</td>',
        f'<td data-value="{_attr(age)}"{claim}>{report}</td>',
        f"<td{claim}>{_components(n.get('components') or {})}</td>",
        f"<td>{_error(n, flagged)}</td>",
    ]
    return (
        f'<tr class="{classes}" data-node="{_e(n["node"])}" data-state="{_e(shown)}"'
        f' data-healthy="{healthy}">' + "".join(cells) + "</tr>"
    )


def _components(components: Mapping[str, Any]) -> str:
    if not components:
        return '<span class="muted">-</span>'
    items = []
    for name, c in sorted(components.items()):
        health = str(c.get("health") or "unknown")
        items.append(
            f"<li><b>{_e(name)}</b> {_maybe(c.get('artifact'))}"
            f' <span class="meta">bank {_maybe(c.get("bank"))} ·</span>'
            f' <span class="health-{_e(health)}">health {_e(health)}</span></li>'
        )
    return '<ul class="components">' + "".join(items) + "</ul>"


def _error(n: Mapping[str, Any], flagged: bool) -> str:
    # For a flagged node the problem is ours to state; its own lastError is not to be trusted.
    if flagged:
        return _maybe(n.get("problem"))
    error = n.get("lastError")
    if error:
        at = f' <span class="meta">at {_e(error.get("at"))}</span>' if error.get("at") else ""
        return f"release {_maybe(error.get('release'))}: {_e(error.get('reason', ''))}{at}"
    return _maybe(n.get("problem"))


def _legend() -> str:
    notes = "".join(
        f'<li><span class="badge state-{state}"><span class="marker">&#9888;</span> {state}'
        f"</span> {_e(why)}</li>"
        for state, why in FLAGGED.items()
    )
    return (
        f'<ul class="legend">{notes}</ul>'
        '<p class="meta">Only <span class="badge state-converged">converged</span> counts as'
        " healthy. Click a column header to sort; the sorted view is kept in the address"
        " (#sort=column, #sort=-column descending).</p>"
    )
