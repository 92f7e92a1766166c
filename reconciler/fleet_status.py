"""The fleet at a glance, decided from status branch heads: no I/O.

Each node's shown state is what its signed `status.json` says, unless one of these overrides
it, in this order:

* ``unreported``: the fleet has the node, but it has no status branch;
* ``unverified``: the head commit is unsigned, signed by a key other than the node's
  (`trust/allowed_signers`), or its `status.json` is not a valid status of this node;
* ``stale``: its newest status is older than its heartbeat interval plus three poll intervals
  (both from its own status), so a node that stopped reporting is never shown healthy.

A node is counted healthy only when it is shown ``converged``.

A node's report row is JSON text (what `status --format json` prints), with the few fields the
counts need beside it (`Tally`); `status_verdicts` keeps rows between runs as records, which
`reuse` turns back into rows at a later time without parsing them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

from reconciler.status_doc import STATUS_FILE, branch
from reconciler.status_verdicts import Verdict, decide
from reconciler.timestamps import format_timestamp, parse_timestamp

# How many poll intervals past its heartbeat a node may be silent before it is stale.
STALE_POLLS = 3
SHOWN_STATES = (
    "converged",
    "applying",
    "deferred",
    "offline",
    "rolled-back",
    "rejected",
    "new",
    "stale",
    "unverified",
    "unreported",
)


# A NamedTuple, not a frozen dataclass: `status` makes one per node, and a NamedTuple is made
# in less than half the time (and spares importing `dataclasses`).
class NodeStatus(NamedTuple):
    node: str
    shown: str
    reported: str | None = None
    release: int | None = None
    target: int | None = None
    expected: int | None = None
    # Read-only, like the defaults shared by every row that has none.
    components: Mapping[str, Any] = {}
    last_error: dict[str, Any] | None = None
    observed_at: str | None = None
    age_seconds: float | None = None
    head: str | None = None
    signer: str | None = None
    problem: str | None = None
    sequence: int | None = None
    commit: str | None = None
    # release version -> {reason, at, outcome}: what failed on this node, as it reported.
    failed_releases: Mapping[str, Any] = {}

    @property
    def healthy(self) -> bool:
        return self.shown == "converged"

    def as_json(self) -> dict[str, Any]:
        # Shallow: the components are the status document's own, which nobody changes.
        out = dict(zip(_CAMEL, self, strict=True))
        out["healthy"] = self.healthy
        return out

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> NodeStatus:
        values: list[Any] = [row.get(camel) for camel in _CAMEL]
        return cls(*values)

    def tally(self) -> Tally:
        failed = (self.last_error or {}).get("release") if self.shown in FAILED else None
        return Tally(self.shown, self.release, self.target, failed)


FAILED = ("rolled-back", "rejected")


class Tally(NamedTuple):
    """What the report's counts need of a node's row."""

    shown: str
    release: int | None
    target: int | None
    # The release its last error names, when it rolled back or rejected one.
    failed: int | None

    @property
    def healthy(self) -> bool:
        return self.shown == "converged"


class Row(NamedTuple):
    """A node's line of the report: its JSON text, and what the counts need of it."""

    node: str
    text: str
    tally: Tally


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


_CAMEL = tuple(_camel(name) for name in NodeStatus._fields)


def stale_after(doc: Mapping[str, Any]) -> int:
    """Seconds of silence after which this node is stale."""
    return int(doc["heartbeatInterval"]) + STALE_POLLS * int(doc["pollInterval"])


def assess(
    node: str,
    *,
    head: str | None,
    raw_commit: bytes | None,
    blob: bytes | None,
    key: str | None,
    fleet: str,
    expected: int | None,
    now: datetime,
    releases: frozenset[int] | None = None,
) -> NodeStatus:
    """What to show for one node, from its branch head's commit and `status.json` (`key`: the
    node's line in `trust/allowed_signers`, `ssh-ed25519 AAAA...`)."""
    if head is None:
        return judge(node, None, None, fleet=fleet, expected=expected, now=now)
    verdict = decide(node, head, raw_commit, blob, key)
    return judge(node, head, verdict, fleet=fleet, expected=expected, now=now, releases=releases)


def judge(
    node: str,
    head: str | None,
    verdict: Verdict | None,
    *,
    fleet: str,
    expected: int | None,
    now: datetime,
    releases: frozenset[int] | None = None,
) -> NodeStatus:
    """What to show for one node from the verdict on its head: the checks that depend on the
    time and on the main branch are made here, on every run."""
    if head is None or verdict is None:
        return NodeStatus(node, "unreported", expected=expected, problem="no status branch yet")
    problem, signer, doc = verdict.problem, verdict.signer, verdict.doc
    if doc is not None and problem is None:
        if doc["node"] != node:
            problem = f"{_where(node, head)}: node: got {doc['node']!r}, expected {node!r}"
        elif doc["fleet"] != fleet:
            problem = f"{_where(node, head)}: fleet: got {doc['fleet']!r}, expected {fleet!r}"
        elif releases is not None and doc["release"] is not None and doc["release"] not in releases:
            problem = (
                f"{_where(node, head)}: release: got {doc['release']}, a release that does not"
                " exist"
            )
    if doc is None:
        return NodeStatus(node, "unverified", expected=expected, head=head, problem=problem)
    observed = parse_timestamp(doc["observedAt"])
    age = (now - observed).total_seconds()
    shown = doc["state"]
    if problem is not None:
        shown = "unverified"
    elif age > stale_after(doc):
        shown = "stale"
        problem = (
            f"last report {format_timestamp(observed)}, {span(age)} ago; expected one within"
            f" {span(stale_after(doc))} (heartbeat + {STALE_POLLS} polls)"
        )
    return NodeStatus(
        node,
        shown,
        reported=doc["state"],
        release=doc["release"],
        target=(doc.get("target") or {}).get("release"),
        expected=expected,
        components=doc["components"],
        last_error=doc["lastError"],
        observed_at=doc["observedAt"],
        age_seconds=age,
        head=head,
        signer=signer,
        problem=problem,
        sequence=doc["sequence"],
        commit=doc.get("commit"),
        failed_releases=doc.get("failedReleases") or {},
    )


def _where(node: str, head: str) -> str:
    return f"{branch(node)}@{head[:12]}:{STATUS_FILE}"


def span(seconds: float) -> str:
    """A duration as people read it in a table: 45s, 12m, 3.5h, 2.1d."""
    whole = max(int(seconds), 0)
    if whole >= 86400:
        return f"{whole / 86400:.1f}d"
    if whole >= 3600:
        return f"{whole / 3600:.1f}h"
    if whole >= 60:
        return f"{whole // 60}m"
    return f"{whole}s"


def summarize(rows: Iterable[NodeStatus | Tally], expected: int | None) -> dict[str, Any]:
    """Counts per shown state and per release, and how many run what they should, healthy."""
    tallies = list(rows)
    by_state = Counter(r.shown for r in tallies)
    by_release = Counter(str(r.release) if r.release is not None else "none" for r in tallies)
    healthy = [r for r in tallies if r.healthy]
    return {
        "nodes": len(tallies),
        "expectedRelease": expected,
        "healthy": len(healthy),
        "onExpected": sum(1 for r in healthy if expected is None or r.release == expected),
        "byState": {s: by_state[s] for s in SHOWN_STATES if by_state[s]},
        "byRelease": dict(sorted(by_release.items(), key=lambda kv: _release_key(kv[0]))),
    }


def per_release(tallies: Iterable[Tally], releases: Mapping[int, str]) -> list[dict[str, Any]]:
    """For each release a node runs, targets or failed: how far its rollout got."""
    tallies = list(tallies)
    running = Counter(t.release for t in tallies if t.healthy)
    targeting = Counter(t.target for t in tallies if t.shown not in ("unverified", "unreported"))
    failed = Counter(t.failed for t in tallies if t.shown in FAILED)
    versions = sorted(
        {v for v in (*running, *targeting, *failed) if v is not None} | set(sorted(releases)[-1:]),
        reverse=True,
    )
    return [
        {
            "version": v,
            "commit": releases.get(v),
            "nodes": len(tallies),
            "converged": running[v],
            "targeting": targeting[v],
            "failed": failed[v],
        }
        for v in versions
    ]


# --- rows as text, and as the cache keeps them ---------------------------------------------

AGE = ', "ageSeconds": '


def row_of(status: NodeStatus, doc: Mapping[str, Any] | None) -> tuple[Row, str]:
    """The node's row (its age last, as the only part that moves with the clock), and the
    record that makes it again at a later time with `reuse`: "" for a row that cannot be
    made so (a stale row's problem names its age; a row with an age but no document)."""
    fields = status.as_json()
    age = fields.pop("ageSeconds")
    prefix = json.dumps(fields)[:-1] + AGE
    tally = status.tally()
    row = Row(status.node, prefix + ("null" if age is None else repr(age)) + "}", tally)
    if status.shown == "stale" or (age is not None and doc is None):
        return row, ""
    observed = "" if doc is None else repr(parse_timestamp(doc["observedAt"]).timestamp())
    # A row with a problem is never stale, whatever its age.
    limit = "" if doc is None or status.problem is not None else str(stale_after(doc))
    numbers = (_opt(tally.release), _opt(tally.target), _opt(tally.failed))
    return row, "\t".join((observed, limit, tally.shown, *numbers, prefix))


def reuse(node: str, record: str, now: float) -> Row | None:
    """The row a record makes at `now` (seconds since the epoch); None when the node has
    turned stale since, or the record is not one `row_of` writes."""
    fields = record.split("\t", 6)
    if len(fields) != 7:
        return None
    observed, limit, shown, release, target, failed, prefix = fields
    if not prefix.endswith(AGE):
        return None
    try:
        if observed:
            age = now - float(observed)
            if limit and age > float(limit):
                return None
            text = prefix + repr(age) + "}"
        else:
            text = prefix + "null}"
        tally = Tally(shown, _int(release), _int(target), _int(failed))
    except ValueError:
        return None
    return Row(node, text, tally)


def _opt(value: int | None) -> str:
    return "" if value is None else str(int(value))


def _int(text: str) -> int | None:
    return int(text) if text else None


def _release_key(name: str) -> int:
    return int(name) if name.isdigit() else -1


def render_table(rows: list[NodeStatus], summary: Mapping[str, Any]) -> str:
    """The text table: one line per node, then the counts."""
    header = ("NODE", "STATE", "RELEASE", "SHOULD RUN", "LAST REPORT", "COMPONENTS", "LAST ERROR")
    lines: list[tuple[str, ...]] = [header]
    for r in rows:
        components = ", ".join(
            f"{name}={c.get('artifact') or '-'}" for name, c in sorted(r.components.items())
        )
        error = r.problem if r.shown in ("unverified", "stale", "unreported") else None
        if error is None and r.last_error:
            error = f"release {r.last_error.get('release')}: {r.last_error.get('reason')}"
        lines.append(
            (
                r.node,
                r.shown,
                str(r.release) if r.release is not None else "-",
                str(r.expected) if r.expected is not None else "-",
                f"{span(r.age_seconds)} ago" if r.age_seconds is not None else "never",
                components or "-",
                _clip(error or "-", 100),
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header) - 1)]
    text = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in lines
    ]
    states = ", ".join(f"{n} {s}" for s, n in summary["byState"].items()) or "no nodes"
    releases = ", ".join(
        f"{'no release' if k == 'none' else f'release {k}'}: {v}"
        for k, v in summary["byRelease"].items()
    )
    text.append("")
    text.append(
        f"{summary['nodes']} nodes: {states}; {summary['healthy']} healthy"
        f" ({summary['onExpected']} on release {summary['expectedRelease']})"
    )
    text.append(f"by release: {releases or 'none'}")
    return "\n".join(text)


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."
